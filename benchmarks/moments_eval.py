"""MomentBuilder over the corpus moment samples, scored, beside a no-LLM baseline.

With ``ANTHROPIC_API_KEY`` set (and optionally ``ANTHROPIC_BASE_URL``, ``--model``), every
``*_input.json`` of ``transcripts/p8fs_moment_samples`` runs through MomentBuilder exactly as
``p8fs eval`` runs it, and the score table is printed: moment-type agreement, emotion/topic tag
Jaccard, time IoU, present-person precision/recall, plus seconds per transcript.

The peer it is read against is a baseline that uses no model at all: one moment spanning the
whole recording, typed ``meeting`` when two or more people speak and ``reflection`` otherwise,
with every listed speaker present and no tags. What MomentBuilder adds is the difference between
the two tables (the baseline gets time and people right by construction; types and tags are
where a model must earn its keep). The baseline always runs; without a configured model (no
key, no ``P8FS_LLM_BASE_URL``) the model run is skipped with a message and the exit status is 0.

Any configured model runs: Anthropic (``ANTHROPIC_API_KEY``), OpenAI (``--model openai/...``),
or a local OpenAI-compatible server (``P8FS_LLM_BASE_URL``, a bare ``--model`` name). With
``--llama`` the benchmark starts the project's llama.cpp test server itself (SmolLM2-135M, from
the side venv ``scripts/llama_server_env.sh`` builds) and runs against it. Failures count as 0 in
the means (a model cannot look good by being scored only where it worked). Beside the scores, a
cost table gives, for the model and the floor, latency per transcript and, per call the server
answered (re-asks, split parts and final summary calls included), latency and the prompt and
completion tokens of the server's ``usage``; ``--structured-output`` picks the mode.

Run: ``uv run --all-packages --all-extras python benchmarks/moments_eval.py [--model M] [--llama]``.
Corpus location: ``P8FS_CORPUS_DIR`` (default: ``../shared/corpus`` beside the repository).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = "transcripts/p8fs_moment_samples"


def corpus_dir() -> Path:
    return Path(os.environ.get("P8FS_CORPUS_DIR", REPO_ROOT.parent / "shared" / "corpus"))


def baseline(transcript: Any) -> dict[str, Any]:
    """The no-model peer: the whole recording as one moment with everyone in it."""
    start, end = transcript.bounds()
    speakers = {s.speaker_id for s in transcript.segments}
    return {
        "moments": [
            {
                "moment_type": "meeting" if len(speakers) >= 2 else "reflection",
                "resource_timestamp": start.isoformat() if start else None,
                "resource_ends_timestamp": end.isoformat() if end else None,
                "emotion_tags": [],
                "topic_tags": [],
                "present_persons": [s.model_dump() for s in transcript.speakers],
            }
        ]
    }


async def run(model: str | None, with_model: bool, limit: int | None = None) -> int:
    from rich.console import Console
    from rich.table import Table

    from p8fs.agents import MomentBuilder, read_transcript
    from p8fs.agents.runtime import USAGE, UsageMeter
    from p8fs.agents.scoring import mean_scores, score_case, score_table
    from p8fs.errors import ConfigurationError, P8fsError

    meter = UsageMeter()
    USAGE.set(meter)

    console = Console(width=170)
    mode = os.environ.get("P8FS_LLM_STRUCTURED_OUTPUT", "auto")
    label = f"{model or 'default model'}, structured output {mode}"
    root = corpus_dir() / SAMPLES
    if not root.is_dir():
        console.print(f"corpus samples not found at {root} (set P8FS_CORPUS_DIR)")
        return 0
    cases = sorted(root.rglob("*_input.json"))
    if limit:
        # Every n-th case, so a slow local model still sees each tenant's transcripts.
        step = max(1, len(cases) // limit)
        cases = cases[::step][:limit]
    names = [str(p.relative_to(root)) for p in cases]
    base_scores, model_scores = [], []
    failures: dict[str, str] = {}
    model_failures: dict[str, str] = {}
    base_seconds: list[float] = []
    seconds: list[float] = []
    for path in cases:
        name = str(path.relative_to(root))
        expected = json.loads(
            path.with_name(path.name.replace("_input.json", "_expected_moment.json")).read_text()
        )
        try:
            transcript = read_transcript(path)
        except P8fsError as exc:
            failures[name] = str(exc)
            continue
        started = time.perf_counter()
        floor = baseline(transcript)
        base_seconds.append(time.perf_counter() - started)
        base_scores.append(score_case(name, floor, expected))
        if not with_model:
            continue
        started = time.perf_counter()
        try:
            result = await MomentBuilder.arun(transcript, model=model)
        except ConfigurationError:
            raise
        except P8fsError as exc:
            model_failures[name] = str(exc)
            continue
        finally:
            seconds.append(time.perf_counter() - started)  # failed runs cost time too
        model_scores.append(score_case(name, result, expected))

    table = score_table(base_scores, failures, order=names)
    table.title = "baseline (no model): whole recording, all speakers, no tags"
    console.print(table)
    for name, error in failures.items():
        console.print(f"failed: {name}: {error}", markup=False)
    if not with_model:
        console.print(
            "No model is configured (ANTHROPIC_API_KEY, OPENAI_API_KEY or P8FS_LLM_BASE_URL): "
            "MomentBuilder was not run."
        )
        console.print(cost_table(base_seconds, None, [], [], label))
        return 0
    all_failures = {**failures, **model_failures}
    table = score_table(model_scores, all_failures, order=names)
    table.title = f"MomentBuilder ({model or 'default model'})"
    table.caption = f"structured output: {mode}"
    console.print(table)
    for name, error in model_failures.items():
        console.print(f"model failed: {name}: {error}", markup=False)
    # Means over the transcripts both could read; a model failure scores 0 there.
    readable = len(base_scores)
    base = mean_scores(base_scores)
    got = mean_scores(model_scores, failed=readable - len(model_scores))
    summary = Table(title="means over every readable transcript (a model failure scores 0)")
    summary.add_column("")
    for key in base:
        summary.add_column(key, justify="right")
    summary.add_column("failures", justify="right")
    summary.add_row("baseline", *(f"{base[k]:.2f}" for k in base), str(len(failures)))
    summary.add_row(label, *(f"{got[k]:.2f}" for k in base), str(len(model_failures)))
    summary.add_row("difference", *(f"{got[k] - base[k]:+.2f}" for k in base), "")
    console.print(summary)
    console.print(
        "MomentBuilder minus baseline: "
        + ", ".join(f"{key} {got[key] - base[key]:+.2f}" for key in base)
    )
    console.print(cost_table(base_seconds, seconds, meter.calls, model_scores, label))
    return 0


def cost_table(
    base_seconds: list[float],
    seconds: list[float] | None,
    calls: list[Any],
    model_scores: list[Any],
    label: str,
) -> Any:
    """Latency and tokens: per transcript, and per answered call as the server counted them
    (every HTTP request: re-asks, split parts and final summary calls included)."""
    from rich.table import Table

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else 0.0

    table = Table(title="cost: latency and tokens (the baseline makes no model call)")
    for column in (
        "",
        "transcripts",
        "s per transcript (median)",
        "calls",
        "calls per transcript",
        "s per call (median / max)",
        "prompt tokens per call",
        "completion tokens per call",
        "completion tokens/s",
    ):
        table.add_column(column, justify="right" if column else "left")
    table.add_row(
        "baseline",
        str(len(base_seconds)),
        f"{median(base_seconds):.4f}",
        "0",
        "0",
        "-",
        "0",
        "0",
        "-",
    )
    if seconds is not None:
        prompt = [c.prompt_tokens for c in calls if c.prompt_tokens is not None]
        completion = [c.completion_tokens for c in calls if c.completion_tokens is not None]
        per_call = [c.seconds for c in calls]
        busy = sum(per_call)
        table.add_row(
            label,
            str(len(seconds)),
            f"{median(seconds):.1f}",
            str(len(calls)),
            f"{len(calls) / max(len(seconds), 1):.1f}",
            f"{median(per_call):.1f} / {max(per_call, default=0.0):.1f}",
            f"{statistics.mean(prompt):.0f}" if prompt else "-",
            f"{statistics.mean(completion):.0f}" if completion else "-",
            f"{sum(completion) / busy:.1f}" if completion and busy else "-",
        )
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="LLM (default P8FS_DEFAULT_MODEL)")
    parser.add_argument(
        "--limit", type=int, default=None, help="score only N transcripts (spread over the corpus)"
    )
    parser.add_argument(
        "--structured-output",
        choices=["auto", "tools", "json_schema", "grammar", "json", "md_json"],
        default=None,
        help="P8FS_LLM_STRUCTURED_OUTPUT for this run",
    )
    parser.add_argument(
        "--llama",
        action="store_true",
        help="start the llama.cpp test server (scripts/llama_server_env.sh) and run against it",
    )
    args = parser.parse_args()
    if args.structured_output:
        os.environ["P8FS_LLM_STRUCTURED_OUTPUT"] = args.structured_output
    if args.llama:
        return run_on_llama(args.model, args.limit)
    with_model = bool(
        os.environ.get("ANTHROPIC_API_KEY")
        or os.environ.get("P8FS_ANTHROPIC_API_KEY")
        or os.environ.get("P8FS_LLM_BASE_URL")
    )
    if args.model and args.model.startswith("openai/"):
        with_model = bool(
            os.environ.get("OPENAI_API_KEY")
            or os.environ.get("P8FS_LLM_BASE_URL")
            or os.environ.get("OPENAI_BASE_URL")
        )
    return asyncio.run(run(args.model, with_model, args.limit))


def run_on_llama(model: str | None, limit: int | None = None) -> int:
    """Start the llama.cpp server of the tests, point P8FS_LLM_BASE_URL at it, run, stop it."""
    import tempfile

    sys.path.insert(0, str(REPO_ROOT))
    from tests.fixtures.llama_server import start_llama_server, stop_llama_server

    with tempfile.TemporaryDirectory(prefix="p8fs-llama-") as tmp:
        server = start_llama_server(Path(tmp))
        if server is None:
            print("the llama.cpp server venv is not built: run scripts/llama_server_env.sh")
            return 1
        os.environ["P8FS_LLM_BASE_URL"] = server.base_url
        print(f"llama.cpp server ready in {server.started_in:.1f} s at {server.base_url}")
        try:
            return asyncio.run(run(model or "smollm2-135m-instruct", True, limit))
        finally:
            stop_llama_server(server)


if __name__ == "__main__":
    sys.exit(main())
