"""Scores of MomentBuilder output against an expected moment (``p8fs eval --expected``).

Four measures, each in [0, 1], per test case and averaged over a folder of cases:

* **type agreement** — share of expected moments whose matched output moment has the same
  ``moment_type``;
* **tag overlap** — Jaccard index of emotion tags and of topic tags (case, spaces and
  underscores folded, so ``Sprint Progress`` equals ``sprint-progress``);
* **time overlap** — intersection over union of the matched moments' time ranges;
* **present persons** — precision and recall of the people named (by fingerprint id, else user
  id, else label) over the whole case.

Expected moments are matched to output moments one to one, best time overlap first; an expected
moment without a partner scores zero. The corpus writes present persons three ways (a list of
``{id, name, comment}``, a list of ``PresentPerson``, a dict keyed by fingerprint); all are read.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from p8fs.agents.moments import MomentBuilder
from p8fs.agents.transcripts import as_utc

SCORE_FIELDS: tuple[str, ...] = (
    "type_agreement",
    "emotion_jaccard",
    "topic_jaccard",
    "time_iou",
    "person_precision",
    "person_recall",
)


@dataclass
class CaseScore:
    """How one output compares with its expected moment(s)."""

    case: str
    expected_moments: int
    predicted_moments: int
    type_agreement: float
    emotion_jaccard: float
    topic_jaccard: float
    time_iou: float
    person_precision: float
    person_recall: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Moment:
    moment_type: str | None
    emotions: set[str]
    topics: set[str]
    start: datetime | None
    end: datetime | None
    persons: set[str]


def normalise_tag(tag: str) -> str:
    return re.sub(r"[\s_]+", "-", tag.strip().casefold())


def _person_keys(persons: Any) -> set[str]:
    if isinstance(persons, dict):
        persons = [
            {"fingerprint_id": key, **(value if isinstance(value, dict) else {})}
            for key, value in persons.items()
        ]
    keys = set()
    for person in persons or []:
        if isinstance(person, str):
            key = person
        elif isinstance(person, dict):
            key = (
                person.get("fingerprint_id")
                or person.get("id")
                or person.get("user_id")
                or person.get("user_label")
                or person.get("name")
                or ""
            )
        else:
            key = (
                getattr(person, "fingerprint_id", None)
                or getattr(person, "user_id", None)
                or getattr(person, "user_label", None)
                or ""
            )
        if key:
            keys.add(str(key).casefold())
    return keys


def _stamp(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    return as_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))


def _moment(data: dict[str, Any]) -> _Moment:
    return _Moment(
        moment_type=(data.get("moment_type") or None),
        emotions={normalise_tag(t) for t in data.get("emotion_tags") or []},
        topics={normalise_tag(t) for t in data.get("topic_tags") or []},
        start=_stamp(data.get("resource_timestamp")),
        end=_stamp(data.get("resource_ends_timestamp")),
        persons=_person_keys(data.get("present_persons")),
    )


def expected_moments(expected: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
    """An expected file's moments: ``{"moments": [...]}``, a list, or one moment object."""
    if isinstance(expected, list):
        return [dict(m) for m in expected]
    if "moments" in expected and isinstance(expected["moments"], list):
        return [dict(m) for m in expected["moments"]]
    return [dict(expected)]


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def time_iou(a: _Moment, b: _Moment) -> float:
    if a.start is None or a.end is None or b.start is None or b.end is None:
        return 0.0
    inter = (min(a.end, b.end) - max(a.start, b.start)).total_seconds()
    union = (max(a.end, b.end) - min(a.start, b.start)).total_seconds()
    if union <= 0:
        return 1.0 if a.start == b.start and a.end == b.end else 0.0
    return max(inter, 0.0) / union


def score_case(
    case: str, predicted: MomentBuilder | dict[str, Any], expected: dict[str, Any] | list[Any]
) -> CaseScore:
    """Score one output against its expected moment(s)."""
    if isinstance(predicted, MomentBuilder):
        predicted_data = [m.model_dump(mode="json") for m in predicted.moments]
    else:
        predicted_data = expected_moments(predicted)
    preds = [_moment(m) for m in predicted_data]
    exps = [_moment(m) for m in expected_moments(expected)]

    # One-to-one matching, best time overlap first (type agreement breaks ties).
    candidates = sorted(
        (
            (time_iou(e, p), e.moment_type == p.moment_type, ei, pi)
            for ei, e in enumerate(exps)
            for pi, p in enumerate(preds)
        ),
        reverse=True,
    )
    pairs: dict[int, int] = {}
    used: set[int] = set()
    for _iou, _same, ei, pi in candidates:
        if ei not in pairs and pi not in used:
            pairs[ei] = pi
            used.add(pi)

    n = len(exps) or 1
    type_ok = emo = top = iou = 0.0
    for ei, e in enumerate(exps):
        if ei not in pairs:
            continue
        p = preds[pairs[ei]]
        type_ok += float(e.moment_type == p.moment_type)
        emo += jaccard(e.emotions, p.emotions)
        top += jaccard(e.topics, p.topics)
        iou += time_iou(e, p)

    exp_people = set().union(*(e.persons for e in exps)) if exps else set()
    pred_people = set().union(*(p.persons for p in preds)) if preds else set()
    hit = len(exp_people & pred_people)
    precision = hit / len(pred_people) if pred_people else (1.0 if not exp_people else 0.0)
    recall = hit / len(exp_people) if exp_people else 1.0
    return CaseScore(
        case=case,
        expected_moments=len(exps),
        predicted_moments=len(preds),
        type_agreement=type_ok / n,
        emotion_jaccard=emo / n,
        topic_jaccard=top / n,
        time_iou=iou / n,
        person_precision=precision,
        person_recall=recall,
    )


def mean_scores(scores: list[CaseScore], failed: int = 0) -> dict[str, float]:
    """The average of each measure over the cases; ``failed`` cases (no output) count as 0,
    so a model that fails often cannot look good by being scored only where it worked."""
    total = len(scores) + failed
    if not total:
        return dict.fromkeys(SCORE_FIELDS, 0.0)
    return {f: sum(getattr(s, f) for s in scores) / total for f in SCORE_FIELDS}


def score_table(
    scores: list[CaseScore],
    failures: dict[str, str] | None = None,
    *,
    order: list[str] | None = None,
) -> Any:
    """A rich table: one row per case in input order (``order``), failed cases marked where
    they fall (their errors are printed apart), then the mean over *every* case with failures
    counted as 0, and how many failed."""
    from rich.table import Table

    failures = failures or {}
    by_case = {s.case: s for s in scores}
    order = order or [*by_case, *(c for c in failures if c not in by_case)]
    table = Table(title="MomentBuilder eval", show_lines=False)
    table.add_column("case", no_wrap=True)
    table.add_column("moments exp/got", justify="right")
    for label in ("type", "emotion J", "topic J", "time IoU", "person P", "person R"):
        table.add_column(label, justify="right")
    for case in order:
        s = by_case.get(case)
        if s is None:
            table.add_row(case, "[red]failed[/red]", *("-" for _ in SCORE_FIELDS))
            continue
        table.add_row(
            s.case,
            f"{s.expected_moments}/{s.predicted_moments}",
            *(f"{getattr(s, f):.2f}" for f in SCORE_FIELDS),
        )
    failed = sum(1 for case in order if case not in by_case)
    if order:
        means = mean_scores(scores, failed=failed)
        table.add_section()
        label = f"mean of {len(order)}" + (f" ({failed} failed, as 0)" if failed else "")
        table.add_row(label, "", *(f"{means[f]:.2f}" for f in SCORE_FIELDS), style="bold")
    return table
