"""``p8fs eval`` over the corpus moment samples, against the local Anthropic-speaking server.

Every ``*_input.json`` of the corpus goes through the command, the one published with invalid
JSON included. The server answers each transcript with a *perturbed* copy of its expected moment
(another type, a topic dropped, an emotion added, half the time range, a person missing), so the
scores the command prints can be checked against values computed here by hand.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from p8fs.cli import main
from tests.fixtures.llm import FakeLLMServer, RecordedRequest, corpus_moment_reply
from tests.fixtures.servers import REPO_ROOT, corpus_path

SAMPLES = "transcripts/p8fs_moment_samples"
STANDUP = "tenant_1/transcript_2025-01-13T09-00-00Z"
BROKEN = "tenant_2/transcript_2025-01-15T20-00-00Z"


def _stamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def perturb(expected: dict[str, Any]) -> dict[str, Any]:
    """The expected moment with known, measurable mistakes."""
    reply = corpus_moment_reply(expected)
    moment = reply["moments"][0]
    start, end = _stamp(expected["resource_timestamp"]), _stamp(expected["resource_ends_timestamp"])
    half = math.floor((end - start).total_seconds() / 2)
    moment["moment_type"] = "observation"
    moment["topic_tags"] = expected["topic_tags"][:-1]
    moment["emotion_tags"] = [*expected["emotion_tags"], "tired"]
    moment["resource_ends_timestamp"] = datetime.fromtimestamp(
        start.timestamp() + half, start.tzinfo
    ).isoformat()
    moment["present_persons"] = moment["present_persons"][1:]
    return reply


def hand_scores(expected: dict[str, Any]) -> dict[str, float]:
    """What the scores of :func:`perturb`'s output must be, computed independently."""
    start, end = _stamp(expected["resource_timestamp"]), _stamp(expected["resource_ends_timestamp"])
    seconds = (end - start).total_seconds()
    topics = {t.lower() for t in expected["topic_tags"]}
    emotions = {t.lower() for t in expected["emotion_tags"]}
    people = len(expected["present_persons"])
    return {
        "type_agreement": 1.0 if expected["moment_type"] == "observation" else 0.0,
        "topic_jaccard": (len(topics) - 1) / len(topics),
        "emotion_jaccard": 1.0 if "tired" in emotions else len(emotions) / (len(emotions) + 1),
        "time_iou": math.floor(seconds / 2) / seconds,
        "person_precision": 1.0 if people > 1 else 0.0,
        "person_recall": (people - 1) / people,
    }


@pytest.fixture
def samples() -> Path:
    return corpus_path(SAMPLES)


@pytest.fixture
def expected_by_transcript(samples: Path) -> dict[str, dict[str, Any]]:
    """transcript_id → expected moment, for every input that parses."""
    out = {}
    for path in sorted(samples.rglob("*_input.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        expected = path.with_name(path.name.replace("_input.json", "_expected_moment.json"))
        out[data["transcript_id"]] = json.loads(expected.read_text())
    return out


def answer_from_corpus(table: dict[str, dict[str, Any]], transform: Any) -> Any:
    def respond(request: RecordedRequest) -> dict[str, Any]:
        match = re.search(r"^transcript_id: (\S+)$", request.user_text, re.MULTILINE)
        assert match, "the transcript header must name the transcript"
        return transform(table[match.group(1)])

    return respond


def run_eval(*args: str) -> Any:
    return CliRunner().invoke(main, ["eval", *args], catch_exceptions=False)


def test_single_transcript_yaml_as_the_seed_shows(
    llm_server: FakeLLMServer, samples: Path, expected_by_transcript
) -> None:
    llm_server.responder = answer_from_corpus(expected_by_transcript, corpus_moment_reply)
    result = run_eval(
        "--agent-model",
        "agentlets.moments.MomentBuilder",
        "--file",
        str(samples / f"{STANDUP}_input.json"),
        "--model",
        "claude-sonnet-5-5",
        "--format",
        "yaml",
    )
    assert result.exit_code == 0, result.output
    out = yaml.safe_load(result.stdout)
    [moment] = out["moments"]
    assert moment["moment_type"] == "meeting"
    assert moment["resource_timestamp"] == "2025-01-13T09:00:00Z"
    assert [p["fingerprint_id"] for p in moment["present_persons"]] == [
        "fp_alex_t1",
        "fp_jordan_t1",
        "fp_sam_t1",
    ]
    [request] = llm_server.message_requests()
    assert request.body is not None and request.body["model"] == "claude-sonnet-5-5"


def test_json_to_file_scored_against_expected(
    llm_server: FakeLLMServer, samples: Path, expected_by_transcript, tmp_path: Path
) -> None:
    llm_server.responder = answer_from_corpus(expected_by_transcript, perturb)
    out, scores = tmp_path / "out" / "moments.json", tmp_path / "scores.json"
    expected_file = samples / f"{STANDUP}_expected_moment.json"
    result = run_eval(
        "--file",
        str(samples / f"{STANDUP}_input.json"),
        "--format",
        "json",
        "-o",
        str(out),
        "--expected",
        str(expected_file),
        "--scores",
        str(scores),
    )
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    assert written["moments"][0]["moment_type"] == "observation"
    assert "MomentBuilder eval" in result.stdout  # the table (stdout is free: output went to -o)
    got = json.loads(scores.read_text())["cases"][0]
    want = hand_scores(json.loads(expected_file.read_text()))
    for key, value in want.items():
        assert got[key] == pytest.approx(value), key


def test_invalid_json_input_is_a_clear_error(llm_server: FakeLLMServer, samples: Path) -> None:
    result = run_eval("--file", str(samples / f"{BROKEN}_input.json"))
    assert result.exit_code != 0
    assert "invalid JSON at line 78 column 20" in result.output
    assert "transcript_2025-01-15T20-00-00Z_input.json" in result.output
    assert llm_server.message_requests() == []


def test_the_whole_corpus_folder(
    llm_server: FakeLLMServer, samples: Path, expected_by_transcript, tmp_path: Path
) -> None:
    llm_server.responder = answer_from_corpus(expected_by_transcript, perturb)
    scores_file, out = tmp_path / "scores.json", tmp_path / "all.yaml"
    result = run_eval(
        "--agent-model",
        "agentlets.moments.MomentBuilder",
        "--file",
        str(samples),
        "--format",
        "yaml",
        "-o",
        str(out),
        "--scores",
        str(scores_file),
    )
    inputs = sorted(samples.rglob("*_input.json"))
    broken = [p for p in inputs if p.name.startswith("transcript_") and _invalid(p)]
    assert broken, "the corpus publishes at least one invalid input"
    # A failed case makes the exit status non-zero; the others still ran and were scored.
    assert result.exit_code == 1
    report = json.loads(scores_file.read_text())
    assert set(report["failures"]) == {str(p.relative_to(samples)) for p in broken}
    for message in report["failures"].values():
        assert re.search(r"invalid JSON at line \d+ column \d+", message)
    outputs = yaml.safe_load(out.read_text())
    assert len(outputs) == len(inputs) - len(broken) == len(report["cases"])
    assert len(llm_server.message_requests()) == len(outputs)

    # Every case's scores equal the hand-computed ones, and so does the mean.
    by_case = {c["case"]: c for c in report["cases"]}
    totals: dict[str, float] = {}
    for path in inputs:
        if path in broken:
            continue
        expected = json.loads(
            path.with_name(path.name.replace("_input.json", "_expected_moment.json")).read_text()
        )
        want = hand_scores(expected)
        got = by_case[str(path.relative_to(samples))]
        for key, value in want.items():
            assert got[key] == pytest.approx(value), (path.name, key)
            totals[key] = totals.get(key, 0.0) + value
    # The mean counts every case, a failed one as 0; mean_scored is over the scored ones.
    for key, total in totals.items():
        assert report["mean_scored"][key] == pytest.approx(total / len(by_case)), key
        assert report["mean"][key] == pytest.approx(total / len(inputs)), key
    assert report["failed"] == len(broken)
    # The corpus has several moment types, so type agreement is neither all nor nothing.
    assert 0 < report["mean"]["type_agreement"] < 1
    assert "error:" in result.stderr and "line 78 column 20" in result.stderr

    # The table (on stdout: the result went to a file) lists every case in input order, each
    # on one line, the failed one where it falls, and a mean of all of them.
    rows = [line for line in result.stdout.splitlines() if "_input.json" in line]
    names = [str(p.relative_to(samples)) for p in inputs]
    assert [next(n for n in names if n in row) for row in rows] == names
    [failed_row] = [row for row in rows if "failed" in row]
    assert str(broken[0].relative_to(samples)) in failed_row
    assert f"mean of {len(inputs)} ({len(broken)} failed, as 0)" in result.stdout


def test_output_on_stdout_keeps_the_table_off_it(
    llm_server: FakeLLMServer, samples: Path, expected_by_transcript
) -> None:
    """``-o -``: the YAML on stdout parses; the table goes to stderr."""
    llm_server.responder = answer_from_corpus(expected_by_transcript, corpus_moment_reply)
    result = run_eval("--file", str(samples / "tenant_1"), "-o", "-", "--format", "json")
    assert result.exit_code == 0, result.stderr
    outputs = json.loads(result.stdout)
    assert set(outputs) == {str(p.name) for p in (samples / "tenant_1").glob("*_input.json")}
    assert "mean of" in result.stderr and "mean of" not in result.stdout


def test_model_failure_is_one_line_with_the_last_error(
    llm_server: FakeLLMServer, samples: Path
) -> None:
    """Output that never validates: one line naming the *last* attempt's error, no instructor
    ERROR lines, no raw dump; -v adds every attempt's error."""

    def bad(request: RecordedRequest) -> dict[str, Any]:
        attempt = sum(1 for r in llm_server.message_requests())
        return {"moments": [{"name": f"attempt {attempt}"}], "analysis_summary": "x"}

    llm_server.responder = bad
    case = str(samples / f"{STANDUP}_input.json")
    result = run_eval("--file", case, "--max-retries", "1")
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "did not validate after 2 attempt(s); last error: moments.0" in lines[0]
    assert "failed_attempts" not in result.output and "ERROR" not in result.output
    assert "attempt 1" not in result.output

    verbose = run_eval("--file", case, "--max-retries", "1", "-v")
    assert verbose.exit_code == 1
    assert "attempt 1:" in verbose.stderr and "attempt 2:" in verbose.stderr


def test_unknown_agent_is_a_usage_error(samples: Path) -> None:
    result = run_eval("--agent-model", "agentlets.nope.Nope", "--file", str(samples))
    assert result.exit_code == 2
    assert "no agent named 'agentlets.nope.Nope'" in result.output


def test_python_m_p8fs_cli_eval(
    llm_server: FakeLLMServer, samples: Path, expected_by_transcript
) -> None:
    """The seed's exact command line, as a subprocess."""
    llm_server.responder = answer_from_corpus(expected_by_transcript, corpus_moment_reply)
    env = dict(os.environ)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "p8fs.cli",
            "eval",
            "--agent-model",
            "agentlets.moments.MomentBuilder",
            "--file",
            str(samples / f"{STANDUP}_input.json"),
            "--model",
            "claude-sonnet-5-5",
            "--format",
            "yaml",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "moment_type: meeting" in proc.stdout
    assert "emotion_tags:" in proc.stdout


def _invalid(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except json.JSONDecodeError:
        return True
    return False


async def test_benchmark_scores_the_model_against_the_baseline(
    llm_server: FakeLLMServer, expected_by_transcript, capsys: pytest.CaptureFixture[str]
) -> None:
    """benchmarks/moments_eval.py with a key: both tables, computed over the whole corpus."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "moments_eval", REPO_ROOT / "benchmarks" / "moments_eval.py"
    )
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    llm_server.responder = answer_from_corpus(expected_by_transcript, corpus_moment_reply)

    assert await bench.run(None, with_model=True) == 0

    out = capsys.readouterr().out
    assert "baseline (no model)" in out and "MomentBuilder (default model)" in out
    # Echoing the expected moments scores 1.00 on every measure; the baseline does not.
    model_mean = re.search(r"MomentBuilder minus baseline: (.*)", out)
    assert model_mean, out
    deltas = dict(part.split(" ") for part in model_mean.group(1).split(", "))
    assert float(deltas["topic_jaccard"]) > 0.9  # the baseline has no tags at all
    assert float(deltas["time_iou"]) == 0.0  # both cover the recording exactly
    assert "line 78 column 20" in out
    assert len(llm_server.message_requests()) == len(expected_by_transcript)


def test_eval_runs_other_agents_from_json(llm_server: FakeLLMServer, tmp_path: Path) -> None:
    """Any registered agent: DreamModel over a JSON file of sessions and resources."""
    data = {
        "tenant_id": "eval-user",
        "sessions": [
            {
                "tenant_id": "eval-user",
                "name": "chat",
                "messages": [{"role": "user", "content": "I want to run a marathon in May."}],
            }
        ],
    }
    source = tmp_path / "user.json"
    source.write_text(json.dumps(data))

    def reply(request: RecordedRequest) -> dict[str, Any]:
        assert "user: I want to run a marathon in May." in request.user_text
        return {
            "goals": [{"goal": "Run a marathon in May", "category": "health", "priority": "high"}]
        }

    llm_server.responder = reply
    result = run_eval(
        "--agent-model", "agentlets.dreaming.DreamModel", "--file", str(source), "--format", "json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["goals"] == [
        {"goal": "Run a marathon in May", "category": "health", "priority": "high"}
    ]
    assert out["user_id"] == "eval-user"

    broken = tmp_path / "broken.json"
    broken.write_text('{"tenant_id": "x",\n  "sessions": [}\n')
    failed = run_eval("--agent-model", "agentlets.dreaming.DreamModel", "--file", str(broken))
    assert failed.exit_code == 1
    assert "invalid JSON at line 2 column 16" in failed.output
