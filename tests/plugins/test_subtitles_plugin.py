"""The third-party ``p8fs-subtitles`` plugin, installed as a distribution like any user's plugin.

It is a workspace member, so it is installed (editable) in the test environment through its own
``p8fs`` entry point; ``tests/e2e/test_wheels.py`` installs its *wheel* in a fresh environment.
Discovery, listing, provider choice and blocking go through p8fs's real plugin manager and CLI;
the corpus's subtitle files go through ``p8fs.aingest`` into a real SQLite database.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import distribution
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import p8fs.plugins
from p8fs.database import Database
from p8fs.errors import CorruptDocument, LimitExceeded
from p8fs.pipeline import aingest, choose_provider
from p8fs.providers import ExtractContext, Section
from p8fs.settings import Settings
from p8fs.sniff import sniff_mime
from tests.fixtures.servers import corpus_path

TENANT = "subtitles-tenant"
PODCAST = "transcripts/podcastns_example.srt"
AUTOCUT = "video/autocut_test.srt"

VTT_SAMPLE = """WEBVTT - a meeting

STYLE
::cue { color: yellow }

NOTE this block is a comment
and spans two lines

intro
00:01.000 --> 00:04.500 align:start position:10%
<v Roger Bingham>We are in New York City &amp; it's <i>raining</i>

00:04.500 --> 00:06.000
<v.loud Neil deGrasse Tyson>Yes.

00:06.000 --> 01:00:07.250
and nobody tagged this one
"""


@pytest.fixture
def fresh_plugins() -> Iterator[None]:
    """Plugins loaded from the current environment variables, forgotten afterwards."""
    p8fs.plugins.reset_plugins()
    yield
    p8fs.plugins.reset_plugins()


def _extract(
    data: bytes | str, filename: str = "sample.srt"
) -> tuple[list[Section], ExtractContext]:
    from p8fs_subtitles import SubtitleProvider

    raw = data.encode("utf-8") if isinstance(data, str) else data
    context = ExtractContext(filename=filename, mime_type=sniff_mime(raw[:8192], filename))
    return list(SubtitleProvider().extract(io.BytesIO(raw), context)), context


def _p8fs_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the installed ``p8fs`` command as a user would."""
    command = [sys.executable, "-m", "p8fs.cli", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )


# -- discovery, listing, choice, blocking ----------------------------------------------------


def test_installed_distribution_declares_the_p8fs_entry_point() -> None:
    dist = distribution("p8fs-subtitles")
    points = [ep for ep in dist.entry_points if ep.group == "p8fs"]
    assert [(ep.name, ep.value) for ep in points] == [("subtitles", "p8fs_subtitles.plugin")]


def test_plugin_is_discovered_with_its_distribution_and_version(
    fresh_plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("P8FS_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("P8FS_LOAD_PLUGINS", raising=False)
    loaded = p8fs.plugins.load_plugins()
    info = loaded.info["subtitles"]
    assert not info.builtin
    assert info.distribution == "p8fs-subtitles"
    assert info.version == distribution("p8fs-subtitles").version
    assert loaded.registered_by("subtitles")["providers"] == ["subtitles"]
    assert not [f for f in loaded.failures if f.name == "subtitles"]


@pytest.mark.parametrize(
    ("relative", "mime"), [(PODCAST, "application/x-subrip"), (AUTOCUT, "application/x-subrip")]
)
def test_chosen_for_srt_over_the_text_fallback(
    fresh_plugins: None, relative: str, mime: str
) -> None:
    path = corpus_path(relative)
    registry = p8fs.plugins.load_plugins().registry
    sniffed = sniff_mime(path.read_bytes()[:8192], path.name)
    assert sniffed == mime
    chosen = choose_provider(registry, sniffed, path.name)
    assert chosen.name == "subtitles"
    # What makes the choice: it outranks the core text provider, which takes any unclaimed text.
    assert chosen.priority > registry.providers.get("text").priority


def test_chosen_for_vtt(fresh_plugins: None, tmp_path: Path) -> None:
    path = tmp_path / "meeting.vtt"
    path.write_text(VTT_SAMPLE, encoding="utf-8")
    registry = p8fs.plugins.load_plugins().registry
    sniffed = sniff_mime(path.read_bytes(), path.name)
    assert sniffed == "text/vtt"
    assert choose_provider(registry, sniffed, path.name).name == "subtitles"
    # The extension alone (a generic type from the bytes) finds it too.
    assert choose_provider(registry, "text/plain", "meeting.vtt").name == "subtitles"


def test_disable_plugins_blocks_it_and_text_takes_srt(
    fresh_plugins: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P8FS_DISABLE_PLUGINS", "subtitles")
    loaded = p8fs.plugins.load_plugins()
    assert "subtitles" not in loaded.info
    assert "subtitles" not in loaded.registry.providers
    chosen = choose_provider(loaded.registry, "application/x-subrip", "episode.srt")
    assert chosen.name == "text"


def test_p8fs_plugins_and_providers_commands_list_it() -> None:
    plugins = _p8fs_cli("plugins", "--json", env={"P8FS_DISABLE_PLUGINS": ""})
    assert plugins.returncode == 0, plugins.stderr
    rows = {row["name"]: row for row in json.loads(plugins.stdout)["plugins"]}
    assert rows["subtitles"]["distribution"] == "p8fs-subtitles"
    assert rows["subtitles"]["providers"] == ["subtitles"]
    assert rows["subtitles"]["builtin"] is False

    table = _p8fs_cli("plugins", env={"P8FS_DISABLE_PLUGINS": "", "COLUMNS": "200"})
    assert (
        table.returncode == 0 and "subtitles" in table.stdout and "p8fs-subtitles" in table.stdout
    )

    providers = _p8fs_cli("providers", "--json", env={"P8FS_DISABLE_PLUGINS": ""})
    assert providers.returncode == 0, providers.stderr
    by_name = {row["name"]: row for row in json.loads(providers.stdout)}
    row = by_name["subtitles"]
    assert row["mime_types"] == ["application/x-subrip", "text/vtt"]
    assert row["extensions"] == [".srt", ".vtt"]
    assert row["plugin"] == "subtitles" and row["installed"] is True
    assert row["priority"] > by_name["text"]["priority"]


def test_p8fs_plugins_command_honours_the_block_list() -> None:
    result = _p8fs_cli("plugins", "--json", env={"P8FS_DISABLE_PLUGINS": "subtitles"})
    assert result.returncode == 0, result.stderr
    names = [row["name"] for row in json.loads(result.stdout)["plugins"]]
    assert "subtitles" not in names and "p8fs.builtin.text" in names


# -- the corpus through p8fs.aingest ------------------------------------------------------------


@pytest.fixture
def ingest_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", chunk_tokens=64, chunk_overlap=8)


async def test_podcast_srt_through_aingest_keeps_times_and_speakers(
    fresh_plugins: None,
    sqlite_database: Database,
    ingest_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("P8FS_DISABLE_PLUGINS", raising=False)
    path = corpus_path(PODCAST)
    result = await aingest(str(path), TENANT, database=sqlite_database, settings=ingest_settings)
    assert result.provider == "subtitles" and result.chunks > 5 and not result.warnings
    stored = await sqlite_database.get_file(TENANT, result.file.id)
    assert stored is not None and stored.provider == "subtitles"
    assert stored.mime_type == "application/x-subrip"
    cue_count = path.read_text(encoding="utf-8").count("-->")
    assert stored.metadata["cues"] == cue_count and stored.metadata["format"] == "srt"

    chunks = await sqlite_database.list_resources(TENANT, file_id=stored.id)
    assert len(chunks) == result.chunks
    first = chunks[0]
    assert first.content.startswith("Travis: When you first get\nstarted in podcasting")
    assert first.metadata["start"] == pytest.approx(0.179)
    assert first.metadata["speakers"][0] == "Travis"
    for chunk in chunks:
        assert 0 <= chunk.metadata["start"] < chunk.metadata["end"]
    # Times only move forward through the chunks.
    starts = [c.metadata["start"] for c in chunks]
    assert starts == sorted(starts)
    speakers = {s for c in chunks for s in c.metadata.get("speakers", [])}
    assert speakers == {"Travis", "Sarah", "Gilon"}
    sarah = next(c for c in chunks if "Sarah: Creating good audio" in c.content)
    assert "Sarah" in sarah.metadata["speakers"]
    assert sarah.metadata["start"] <= 53.030 <= sarah.metadata["end"]
    # The last chunk ends where the last cue does.
    last_timing = [line for line in path.read_text(encoding="utf-8").splitlines() if "-->" in line][
        -1
    ]
    h, m, rest = last_timing.split("-->")[1].strip().split(":")
    assert chunks[-1].metadata["end"] == pytest.approx(
        int(h) * 3600 + int(m) * 60 + float(rest.replace(",", "."))
    )


async def test_bilingual_srt_through_aingest(
    fresh_plugins: None,
    sqlite_database: Database,
    ingest_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("P8FS_DISABLE_PLUGINS", raising=False)
    path = corpus_path(AUTOCUT)
    result = await aingest(str(path), TENANT, database=sqlite_database, settings=ingest_settings)
    assert result.provider == "subtitles"
    chunks = await sqlite_database.list_resources(TENANT, file_id=result.file.id)
    text = "".join(c.content[c.metadata["overlap"] :] for c in chunks)
    chinese = text.index("大家好")
    english = text.index("Hello, my name is AutoCut.")
    assert chinese < english
    assert chunks[0].metadata["start"] == 0.0
    assert chunks[-1].metadata["end"] == pytest.approx(10.26)
    assert result.file.metadata["cues"] == 2


async def test_blocked_plugin_leaves_srt_to_the_text_provider(
    fresh_plugins: None,
    sqlite_database: Database,
    ingest_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("P8FS_DISABLE_PLUGINS", "subtitles")
    result = await aingest(
        str(corpus_path(AUTOCUT)), TENANT, database=sqlite_database, settings=ingest_settings
    )
    assert result.provider == "text"
    chunks = await sqlite_database.list_resources(TENANT, file_id=result.file.id)
    assert "start" not in chunks[0].metadata
    assert "00:00:05,000 --> 00:00:10,260" in "".join(c.content for c in chunks)


# -- the parser on the cases the corpus does not cover -------------------------------------------


def test_webvtt_voices_markup_and_non_cue_blocks() -> None:
    sections, context = _extract(VTT_SAMPLE, "meeting.vtt")
    assert [s.text for s in sections] == [
        "We are in New York City & it's raining",
        "Yes.",
        "and nobody tagged this one",
    ]
    assert [s.metadata.get("speaker") for s in sections] == [
        "Roger Bingham",
        "Neil deGrasse Tyson",
        None,
    ]
    assert sections[0].metadata == {
        "kind": "cue",
        "index": 1,
        "start": 1.0,
        "end": 4.5,
        "speaker": "Roger Bingham",
        "cue_id": "intro",
    }
    assert sections[2].metadata["end"] == 3607.25
    assert context.metadata["format"] == "webvtt" and not context.warnings


def test_srt_speaker_is_carried_until_the_next_turn() -> None:
    srt = (
        "1\n00:00:01,000 --> 00:00:02,000\nAnna: Hello there\n\n"
        "2\n00:00:02,000 --> 00:00:03,000\nhow are you\n\n"
        "3\n00:00:03,000 --> 00:00:04,000\nBen Okri: Fine: thanks\n\n"
        "4\n00:00:04,000 --> 00:00:05,000\nand you?\n"
    )
    sections, _ = _extract(srt)
    assert [s.metadata["speaker"] for s in sections] == ["Anna", "Anna", "Ben Okri", "Ben Okri"]
    assert sections[0].text == "Anna: Hello there"  # the words are stored as written


def test_malformed_cues_are_skipped_with_warnings() -> None:
    srt = (
        "1\n00:00:01,000 --> 00:00:02,000\nfirst\n\n"
        "2\n00:00:99,000 --> 00:00:03,000\nimpossible seconds\n\n"
        "3\n00:00:05,000 --> 00:00:04,000\nends before it starts\n\n"
        "4\nno timing line here\nat all\n\n"
        "5\n00:00:06,000 --> 00:00:07,000\nlast\n"
    )
    sections, context = _extract(srt)
    assert [s.text for s in sections] == ["first", "last"]
    assert [s.metadata["index"] for s in sections] == [1, 2]
    assert len(context.warnings) == 3
    assert "line 6" in context.warnings[0] and "line 10" in context.warnings[1]
    assert "no timing line here" in context.warnings[2]
    assert context.metadata["skipped_blocks"] == 3


def test_missing_blank_line_between_cues_still_splits_them() -> None:
    srt = (
        "1\r\n00:00:01,000 --> 00:00:02,000\r\none\r\n2\r\n00:00:02,500 --> 00:00:03,000\r\ntwo\r\n"
    )
    sections, _ = _extract(srt)
    assert [(s.text, s.metadata["cue_id"], s.metadata["start"]) for s in sections] == [
        ("one", "1", 1.0),
        ("two", "2", 2.5),
    ]


@pytest.mark.parametrize(
    ("encoding", "detected"),
    [("utf-8-sig", "utf-8"), ("utf-16", "utf-16-le"), ("cp1252", "cp1252")],
)
def test_encodings_are_detected(encoding: str, detected: str) -> None:
    srt = "1\n00:00:01,000 --> 00:00:02,000\nCafé – déjà vu €\n"
    sections, context = _extract(srt.encode(encoding))
    assert [s.text for s in sections] == ["Café – déjà vu €"]
    assert context.metadata["encoding"] == detected


def test_nothing_readable_is_a_corrupt_document() -> None:
    with pytest.raises(CorruptDocument, match="no readable subtitle cue"):
        _extract("just some words\nwithout any timing\n")
    with pytest.raises(CorruptDocument, match="binary"):
        _extract(bytes(range(256)) * 8)


def test_a_cue_without_end_is_a_limit_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from p8fs_subtitles import cues

    monkeypatch.setattr(cues, "MAX_CUE_CHARS", 1000)
    with pytest.raises(LimitExceeded, match="longer than 1000 characters"):
        _extract("1\n00:00:01,000 --> 00:00:02,000\n" + "word\n" * 1000)


class _CountingStream(io.BytesIO):
    """A stream that remembers the largest single read (to prove the provider streams)."""

    largest_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.largest_read = max(self.largest_read, len(data))
        return data


def test_streams_cue_by_cue_instead_of_reading_the_file() -> None:
    from p8fs_subtitles import SubtitleProvider, provider

    cue = (
        "{n}\n00:{m:02d}:{s:02d},000 --> 00:{m:02d}:{s:02d},500\nline number {n} of a long file\n\n"
    )
    body = "".join(cue.format(n=n, m=(n // 60) % 60, s=n % 60) for n in range(1, 60_000))
    stream = _CountingStream(body.encode())
    sections = SubtitleProvider().extract(stream, ExtractContext(filename="long.srt"))
    first = next(sections)
    assert first.text == "line number 1 of a long file"
    # The first cue came out before the whole file had been read.
    assert stream.tell() < len(body) and stream.largest_read <= provider.DETECT_BYTES + 1
    assert sum(1 for _ in sections) == 59_998


@settings(max_examples=40, deadline=None)
@given(read_bytes=st.integers(1, 64), detect_bytes=st.integers(1, 64), crlf=st.booleans())
def test_read_boundaries_do_not_change_the_result(
    read_bytes: int, detect_bytes: int, crlf: bool
) -> None:
    from p8fs_subtitles import provider

    text = "1\n00:00:01,000 --> 00:00:02,000\nÉcoute: deux\nlignes\n\n2\n00:00:03,000 --> 00:00:04,000\n末尾\n"
    if crlf:
        text = text.replace("\n", "\r\n")
    expected, _ = _extract(text)
    saved = provider.READ_BYTES, provider.DETECT_BYTES
    provider.READ_BYTES, provider.DETECT_BYTES = read_bytes, detect_bytes
    try:
        got, context = _extract(text)
    finally:
        provider.READ_BYTES, provider.DETECT_BYTES = saved
    assert got == expected and not context.warnings
    assert [s.text for s in got] == ["Écoute: deux\nlignes", "末尾"]
