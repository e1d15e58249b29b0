"""``p8fs eval``: run an agent over a file (or a folder of test cases) and score it.

The flags are the original system's::

    p8fs eval --agent-model agentlets.moments.MomentBuilder \\
        --file transcript_2025-01-13T09-00-00Z_input.json --model claude-sonnet-5-5 --format yaml

``--file`` may also be a folder of ``*_input.json`` files with sibling ``*_expected_moment.json``
files (the corpus layout): every case runs, a failing case (an input that is not valid JSON, a
model that never produced valid output) is reported with its error and the others go on, and the
scores table is printed. The exit status is non-zero when any case failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import click

from p8fs.errors import ConfigurationError, P8fsError

INPUT_SUFFIX = "_input.json"
EXPECTED_SUFFIX = "_expected_moment.json"


def _expected_for(path: Path) -> Path | None:
    if path.name.endswith(INPUT_SUFFIX):
        candidate = path.with_name(path.name[: -len(INPUT_SUFFIX)] + EXPECTED_SUFFIX)
        if candidate.exists():
            return candidate
    return None


def _read_input(agent: type[Any], path: Path) -> Any:
    """The agent's input from a file: transcripts for MomentBuilder, JSON or text otherwise."""
    from p8fs.agents.moments import MomentBuilder
    from p8fs.agents.transcripts import parse_json_text, read_transcript

    if issubclass(agent, MomentBuilder):
        return read_transcript(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        from p8fs.agents.errors import InvalidAgentInput

        raise InvalidAgentInput(f"{path} is not UTF-8 text", source=str(path)) from exc
    if path.suffix.lower() == ".json" or text.lstrip().startswith("{"):
        return parse_json_text(text, str(path))
    return text


def _render(results: dict[str, Any], fmt: str, single: bool) -> str:
    """YAML or JSON of one result, or of a mapping case → result for a folder."""
    data: Any
    if single:
        [data] = [r.model_dump(mode="json") for r in results.values()]
    else:
        data = {case: r.model_dump(mode="json") for case, r in results.items()}
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    import yaml

    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)


async def _run_cases(
    agent: type[Any], cases: list[Path], root: Path, options: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Exception]]:
    """Run every case in order; a case's failure is kept (its error object, for ``-v``)."""

    results: dict[str, Any] = {}
    failures: dict[str, Exception] = {}
    for path in cases:
        name = _case_name(path, root)
        try:
            data = _read_input(agent, path)
            results[name] = await agent.arun(data, **options)
        except ConfigurationError:
            raise  # the same for every case: stop at once with the message
        except P8fsError as exc:
            failures[name] = exc
    return results, failures


def _case_name(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path != root else path.name


def _details(exc: Exception) -> list[str]:
    """The ``-v`` lines of a failure: each attempt's error, then the last error in full."""
    details = getattr(exc, "details", {}) or {}
    lines = [f"  attempt {i}: {e}" for i, e in enumerate(details.get("attempt_errors") or [], 1)]
    if details.get("last_error"):
        lines.append("  last error in full:")
        lines += ["    " + line for line in str(details["last_error"]).splitlines()]
    return lines


def _quiet_libraries(verbose: bool) -> None:
    """instructor logs every failed attempt at ERROR on its own; the command reports failures
    itself (one line each, details with -v), so those lines are kept out unless asked for."""
    import logging

    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    else:
        logging.getLogger("instructor").setLevel(logging.CRITICAL)


@click.command("eval")
@click.option(
    "--agent-model",
    "agent_name",
    default="agentlets.moments.MomentBuilder",
    show_default=True,
    help="Agent to run, by class name or alias (see `p8fs plugins`).",
)
@click.option(
    "--file",
    "file_",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Input file (transcript JSON or text), or a folder of *_input.json test cases.",
)
@click.option(
    "--model",
    default=None,
    help="LLM, e.g. claude-sonnet-5-5 (default: P8FS_DEFAULT_MODEL) or openai/<name>.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Output format.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
    default=None,
    help="Write the output here instead of stdout ('-' is stdout).",
)
@click.option(
    "--expected",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Expected moment(s) JSON to score against (a folder --file finds its own).",
)
@click.option(
    "--scores",
    "scores_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the scores as JSON here.",
)
@click.option(
    "--max-retries", type=int, default=None, help="Re-asks after invalid output (default 2)."
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Log progress; show every attempt's error on failure."
)
def eval_command(
    agent_name: str,
    file_: Path,
    model: str | None,
    fmt: str,
    output: Path | None,
    expected: Path | None,
    scores_path: Path | None,
    max_retries: int | None,
    verbose: bool,
) -> None:
    """Run an agent over a transcript (or a folder of test cases) and print its output.

    With expected moments (--expected, or *_expected_moment.json beside each *_input.json), the
    output is scored: moment-type agreement, emotion/topic tag overlap (Jaccard), time overlap
    (IoU) and present-person precision/recall.
    """
    from p8fs.plugins import get_registry

    try:
        agent = get_registry().agents.get(agent_name)
    except P8fsError as exc:
        raise click.BadParameter(str(exc), param_hint="--agent-model") from exc

    folder = file_.is_dir()
    cases = _cases(file_, expected)
    root = file_ if folder else file_.parent
    pairs = _expected_files(agent, cases, root, expected, folder=folder)

    options: dict[str, Any] = {"model": model, "max_retries": max_retries}
    _quiet_libraries(verbose)
    try:
        results, failures = asyncio.run(_run_cases(agent, cases, root, options))
    except P8fsError as exc:
        raise click.ClickException(str(exc)) from exc
    if not folder and failures:
        [(name, error)] = failures.items()
        for line in _details(error) if verbose else []:
            click.echo(line, err=True)
        raise click.ClickException(str(error))

    to_stdout = _write_output(_render(results, fmt, single=not folder) if results else "", output)
    names = [_case_name(p, root) for p in cases]
    problems = {name: str(exc) for name, exc in failures.items()}
    if pairs:
        _report_scores(results, pairs, names, problems, scores_path, to_stdout=to_stdout)
    for name in names:
        if name in problems:
            click.echo(f"error: {name}: {problems[name]}", err=True)
            if verbose and name in failures:
                for line in _details(failures[name]):
                    click.echo(line, err=True)
    if problems:
        sys.exit(1)


def _cases(file_: Path, expected: Path | None) -> list[Path]:
    """The input files: ``file_`` itself, or every ``*_input.json`` under the folder."""
    if not file_.is_dir():
        return [file_]
    cases = sorted(file_.rglob("*" + INPUT_SUFFIX))
    if not cases:
        raise click.BadParameter(f"no *{INPUT_SUFFIX} files in {file_}", param_hint="--file")
    if expected is not None:
        raise click.BadParameter(
            "with a folder, expected files are found beside each input", param_hint="--expected"
        )
    return cases


def _expected_files(
    agent: type[Any], cases: list[Path], root: Path, expected: Path | None, *, folder: bool
) -> dict[str, Path]:
    """Case name -> expected moments file, wherever one exists (scoring is MomentBuilder's)."""
    from p8fs.agents.moments import MomentBuilder

    pairs: dict[str, Path] = {}
    for path in cases:
        name = str(path.relative_to(root)) if folder else path.name
        exp = expected if not folder else _expected_for(path)
        if exp is not None:
            pairs[name] = exp
    if pairs and not issubclass(agent, MomentBuilder):
        raise click.BadParameter(
            f"scoring is defined for MomentBuilder, not {agent.__name__}", param_hint="--expected"
        )
    return pairs


def _write_output(text: str, output: Path | None) -> bool:
    """Write the agents' output to ``output`` (stdout when unset or ``-``); True for stdout."""
    to_stdout = output is None or str(output) in ("-", "/dev/stdout")
    if to_stdout:
        if text:
            click.echo(text, nl=False)
    else:
        assert output is not None
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text, encoding="utf-8")
    return to_stdout


def _report_scores(
    results: dict[str, Any],
    pairs: dict[str, Path],
    names: list[str],
    problems: dict[str, str],
    scores_path: Path | None,
    *,
    to_stdout: bool,
) -> None:
    """Score every case that has an expected file; print the table, write ``--scores``.

    The table goes to stderr when the output is on stdout, so that the YAML/JSON there stays
    parseable. A case whose expected file is unusable joins ``problems``.
    """
    from rich.console import Console

    from p8fs.agents.scoring import mean_scores, score_case, score_table
    from p8fs.agents.transcripts import parse_json_text

    scores = []
    for name, exp_path in pairs.items():
        if name not in results:
            continue
        try:
            exp_data = parse_json_text(exp_path.read_text(encoding="utf-8"), str(exp_path))
            scores.append(score_case(name, results[name], exp_data))
        except (P8fsError, ValueError, TypeError) as exc:
            problems[name] = f"expected file {exp_path.name} unusable: {exc}"
    judged = [n for n in names if n in pairs or n in problems]
    width = max(100, max(len(n) for n in names) + 70)
    Console(stderr=to_stdout, width=width).print(score_table(scores, problems, order=judged))
    if scores_path is None:
        return
    scored = {s.case for s in scores}
    failed = [n for n in judged if n not in scored]
    scores_path.write_text(
        json.dumps(
            {
                "cases": [s.as_dict() for s in scores],
                "mean": mean_scores(scores, failed=len(failed)),
                "mean_scored": mean_scores(scores),
                "failed": len(failed),
                "failures": {n: problems.get(n, "no score") for n in failed},
            },
            indent=2,
        ),
        encoding="utf-8",
    )
