"""Input larger than the context: split by the records chunker, every part sent, results merged.

The original merged multi-chunk input by keeping the last chunk's answer. Here a small context
setting forces three calls; the test checks that every record went to exactly one call, whole,
and that the merged result holds what *every* call found (moments in time order with
overlapping duplicates joined; dream lists unioned and de-duplicated, then one final call for
the executive summary).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from p8fs.agents import DreamModel, MomentBuilder, UserData
from p8fs.agents.config import resolve_llm
from p8fs.agents.runtime import plan_parts, prompt_overhead
from p8fs.models import Resource, Session
from p8fs.tokens import count_tokens
from tests.fixtures.llm import FakeLLMServer, RecordedRequest

START = datetime(2025, 1, 20, 9, 0, tzinfo=UTC)
SEGMENT = re.compile(r"^\[(\S+) \+([\d.]+)s\] (\w+) \((speaker_\d)\): (.*)$", re.MULTILINE)
SPEAKERS = [
    {
        "speaker_id": f"speaker_{i}",
        "fingerprint_id": f"fp_{n}",
        "user_id": f"u_{n}",
        "user_label": n,
    }
    for i, n in enumerate(["Ana", "Ben", "Cy"])
]


def transcript(segments: int = 9) -> dict[str, Any]:
    """A transcript whose segments are all about the same size (so packing is predictable)."""
    segs = []
    for i in range(segments):
        speaker = SPEAKERS[i % 3] if i < 6 else SPEAKERS[0]
        words = " ".join(f"item{i}word{j}" for j in range(40))
        segs.append(
            {
                "timestamp": (START + timedelta(seconds=60 * i)).isoformat().replace("+00:00", "Z"),
                "speaker_id": speaker["speaker_id"],
                "speaker_label": speaker["user_label"],
                "text": f"Segment {i}: {words}",
                "duration_seconds": 50,
            }
        )
    return {
        "transcript_id": "long_meeting",
        "source_uri": "s3://bucket/long.wav",
        "start_timestamp": START.isoformat().replace("+00:00", "Z"),
        "end_timestamp": (START + timedelta(seconds=60 * segments))
        .isoformat()
        .replace("+00:00", "Z"),
        "segments": segs,
        "speakers": SPEAKERS,
        "environment": {"location": "office", "background_sounds": "hum"},
    }


def context_for(cls: type[Any], data: Any, per_chunk: int) -> int:
    """A context that fits ``per_chunk`` of the (equal) records after the prompt, not one more."""
    agent_input = cls.prepare_input(data)
    config = resolve_llm()
    overhead = prompt_overhead(cls, agent_input, config)
    per_record = max(count_tokens(r.text + "\n\n") for r in agent_input.records)
    return overhead + per_chunk * per_record + per_record // 2


def moments_reply(request: RecordedRequest) -> dict[str, Any]:
    """Like a model would: one moment per part; parts 1-2 a meeting, part 3 a solo reflection.

    Each moment starts a little before the part's first segment (context the model inferred),
    so neighbouring parts' moments overlap in time. The final summary call gets a summary that
    says which moments and partial summaries it was shown.
    """
    if request.forced_tool == "MomentsSummary":
        names = re.findall(r"^- name: (.*)$", request.user_text, re.MULTILINE)
        partials = re.findall(r"^- (Part from segment \d+\.)$", request.user_text, re.MULTILINE)
        return {"analysis_summary": f"FINAL over {names} from {len(partials)} parts"}
    segs = SEGMENT.findall(request.user_text)
    first = datetime.fromisoformat(segs[0][0].replace("Z", "+00:00"))
    last = datetime.fromisoformat(segs[-1][0].replace("Z", "+00:00")) + timedelta(
        seconds=float(segs[-1][1])
    )
    start = max(first - timedelta(seconds=30), START)
    index = int(re.search(r"Segment (\d+):", request.user_text).group(1))  # type: ignore[union-attr]
    solo = index >= 6
    people = sorted({s[3] for s in segs})
    persons = [
        {"fingerprint_id": sp["fingerprint_id"], "user_label": sp["user_label"]}
        for sp in SPEAKERS
        if sp["speaker_id"] in people
    ]
    return {
        "moments": [
            {
                "name": "Evening reflection" if solo else "Planning meeting",
                "content": f"Part starting at segment {index}.",
                "resource_timestamp": start.isoformat(),
                "resource_ends_timestamp": last.isoformat(),
                "moment_type": "reflection" if solo else "meeting",
                "emotion_tags": ["calm"] if solo else ["focused", f"part{index}"],
                "topic_tags": [f"segment-{index}"],
                "present_persons": persons,
            }
        ],
        "analysis_summary": f"Part from segment {index}.",
        "total_moments": 1,
    }


async def test_moments_three_chunks_merged_in_time_order(llm_server: FakeLLMServer) -> None:
    data = transcript()
    context = context_for(MomentBuilder, data, per_chunk=3)
    agent_input = MomentBuilder.prepare_input(data)
    assert len(plan_parts(MomentBuilder, agent_input, resolve_llm(context_tokens=context))) == 3
    llm_server.responder = moments_reply

    result = await MomentBuilder.arun(data, context_tokens=context)

    requests = llm_server.message_requests()
    assert [r.forced_tool for r in requests] == ["MomentBuilder"] * 3 + ["MomentsSummary"]
    # Every segment went to exactly one call, whole, and every call carries the header.
    sent: list[str] = []
    parts = requests[:3]
    for request in sorted(parts, key=lambda r: SEGMENT.findall(r.user_text)[0][0]):
        assert "transcript_id: long_meeting" in request.user_text
        assert re.search(r"part \d of 3", request.user_text)
        sent.extend(s[4] for s in SEGMENT.findall(request.user_text))
    assert sent == [s["text"] for s in data["segments"]]

    # Parts 1 and 2 (same meeting, overlapping) joined; part 3's reflection kept apart.
    assert [m.moment_type for m in result.moments] == ["meeting", "reflection"]
    meeting, reflection = result.moments
    assert meeting.start == START
    assert meeting.end == START + timedelta(seconds=60 * 5 + 50)
    assert meeting.topic_tags == ["segment-0", "segment-3"]
    assert {p.user_label for p in meeting.present_persons} == {"Ana", "Ben", "Cy"}
    assert reflection.start == START + timedelta(seconds=60 * 6 - 30)
    assert reflection.end == START + timedelta(seconds=60 * 8 + 50)
    assert result.total_moments == 2
    # One final call wrote the summary over the merged moments and the parts' summaries, as
    # DreamModel's executive summary is written.
    assert result.analysis_summary == (
        "FINAL over ['Planning meeting', 'Evening reflection'] from 3 parts"
    )
    # Filled from the transcript where the model left it out.
    assert meeting.uri == "s3://bucket/long.wav" and meeting.location == "office"


def user_data() -> UserData:
    resources = []
    for i in range(6):
        filler = " ".join(f"doc{i}w{j}" for j in range(60))
        resources.append(
            Resource(
                tenant_id="tenant-dream",
                file_id=f"file-{i}",
                name=f"note_{i}",
                content=f"GOAL: learn topic {i}. FEAR: losing track of project {i % 2}. {filler}",
                ordinal=0,
                uri=f"s3://tenant-dream/notes/{i}.md",
            )
        )
    return UserData(tenant_id="tenant-dream", resources=resources)


def dream_reply(request: RecordedRequest) -> dict[str, Any]:
    if request.forced_tool == "ExecutiveSummary":
        goals = re.findall(r"goal: (learn topic \d|Ship Project Alpha)", request.user_text)
        return {
            "executive_summary": f"FINAL over {len(goals)} goals",
            "key_themes": ["learning"],
        }
    assert request.forced_tool == "DreamModel"
    indexes = [int(x) for x in re.findall(r"GOAL: learn topic (\d)", request.user_text)]
    fears = sorted({int(x) for x in re.findall(r"project (\d)\.", request.user_text)})
    return {
        "executive_summary": f"part with {indexes}",
        "key_themes": ["learning", "Projects"],
        "goals": [
            {"goal": f"learn topic {i}", "category": "learning", "priority": "medium"}
            for i in indexes
        ]
        # Every part sees the same big goal, spelt differently: one after the merge.
        + [
            {
                "goal": "Ship  project ALPHA" if indexes[0] else "Ship Project Alpha",
                "category": "career",
                "priority": "High",
            }
        ],
        "fears": [{"fear": f"losing track of project {f}"} for f in fears],
        "metrics": {
            "total_documents_analyzed": len(indexes),
            "confidence_score": 0.5 + 0.1 * len(indexes),
            "data_completeness": 0.5,
        },
    }


async def test_dream_chunks_unioned_then_one_summary_call(llm_server: FakeLLMServer) -> None:
    data = user_data()
    context = context_for(DreamModel, data, per_chunk=2)
    llm_server.responder = dream_reply

    result = await DreamModel.arun(data, context_tokens=context)

    requests = llm_server.message_requests()
    tools = [r.forced_tool for r in requests]
    assert tools.count("DreamModel") == 3
    assert tools[-1] == "ExecutiveSummary" and tools.count("ExecutiveSummary") == 1
    assert requests[-1].tool_schema["title"] == "ExecutiveSummary"

    goals = [g.goal for g in result.goals]
    assert sorted(g for g in goals if g.startswith("learn")) == [
        f"learn topic {i}" for i in range(6)
    ]
    assert [g for g in goals if "alpha" in g.lower()] == ["Ship Project Alpha"]
    assert result.goals[goals.index("Ship Project Alpha")].priority == "high"
    assert sorted(f.fear for f in result.fears) == [
        "losing track of project 0",
        "losing track of project 1",
    ]
    assert result.key_themes[:2] == ["learning", "Projects"]
    # The final call saw the merged findings (all 7 goals) and wrote the summary.
    assert result.executive_summary == "FINAL over 7 goals"
    assert result.user_id == "tenant-dream"
    assert result.metrics.total_documents_analyzed == 6
    assert 0.5 < result.metrics.confidence_score < 1.0


async def test_dream_single_call_has_no_summary_call(llm_server: FakeLLMServer) -> None:
    llm_server.responder = dream_reply
    session = Session(
        tenant_id="tenant-dream",
        name="chat",
        messages=[{"role": "user", "content": "GOAL: learn topic 9. I worry about project 1."}],
    )
    result = await DreamModel.arun(UserData(tenant_id="tenant-dream", sessions=[session]))
    [request] = llm_server.message_requests()
    assert request.forced_tool == "DreamModel"
    assert "user: GOAL: learn topic 9." in request.user_text
    assert [g.goal for g in result.goals] == ["learn topic 9", "Ship  project ALPHA"]
    assert result.executive_summary == "part with [9]"


def test_context_too_small_names_the_setting() -> None:
    from p8fs.errors import ConfigurationError

    agent_input = MomentBuilder.prepare_input(transcript(2))
    with pytest.raises(ConfigurationError, match="P8FS_LLM_CONTEXT_TOKENS"):
        plan_parts(
            MomentBuilder,
            agent_input,
            resolve_llm("claude-sonnet-5-5", require_key=False, context_tokens=300),
        )
