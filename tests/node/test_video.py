"""VideoProvider: facts of real videos, the audio track transcribed in place, silent videos.

The tiny Whisper model (``tests/node/tiny_whisper.py``) turns speech into one fixed sentence, so
a section proves the audio track went through decoding, VAD and Whisper; a video without audio
must give its facts and no section at all, and must not even need a model.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from p8fs.errors import ConfigurationError, CorruptDocument, LimitExceeded
from p8fs.providers import Section
from p8fs_node.video import VideoProvider
from tests.fixtures.servers import corpus_path
from tests.node import conftest_media
from tests.node.conftest_media import media_context
from tests.node.tiny_whisper import TINY_WHISPER_TEXT

av = pytest.importorskip("av", reason="p8fs-node[media] is not installed")

# The shared fixtures, made visible to pytest in this module.
tiny_whisper_model = conftest_media.tiny_whisper_model
whisper_setting = conftest_media.whisper_setting


def extract(source: Path, model: Path | None, **options: object) -> tuple[list[Section], dict]:
    context = media_context(model, name=source.name, **options)
    sections = list(VideoProvider().extract(source, context))
    return sections, context.metadata


def make_silent_video(path: Path, seconds: int = 2, fps: int = 10) -> Path:
    """An MPEG-4 video with a video track only (PyAV's bundled encoder)."""
    import numpy as np

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.time_base = Fraction(1, fps)
        for index in range(seconds * fps):
            image = np.full((48, 64, 3), index * 4 % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_mp4_facts_and_transcribed_audio_track(tiny_whisper_model: Path) -> None:
    sections, meta = extract(corpus_path("video/autocut_test001.mp4"), tiny_whisper_model)
    assert meta["video_codec"] == "h264"
    assert meta["audio_codec"] == "aac"
    assert meta["duration"] == pytest.approx(10.26, abs=0.01)
    assert meta["resolution"] == "1920x1080"
    assert (meta["width"], meta["height"]) == (1920, 1080)
    assert meta["fps"] == pytest.approx(23.88, abs=0.05)
    assert (meta["sample_rate"], meta["channels"]) == (48000, 2)
    assert meta["has_audio"] is True and meta["has_video"] is True
    assert meta["decoded_duration"] == pytest.approx(10.26, abs=0.05)
    assert [s.text for s in sections] == [TINY_WHISPER_TEXT]
    assert 0.0 <= sections[0].metadata["start"] < sections[0].metadata["end"] <= 10.3


def test_webm_without_stream_durations(tiny_whisper_model: Path) -> None:
    sections, meta = extract(
        corpus_path("video/moviepy_big_buck_bunny_432_433.webm"), tiny_whisper_model
    )
    assert meta["container"] == "matroska,webm"
    assert (meta["video_codec"], meta["audio_codec"]) == ("vp8", "vorbis")
    assert meta["duration"] == pytest.approx(1.0, abs=0.01)
    assert meta["sample_rate"] == 44100
    assert meta["fps"] == pytest.approx(24.0)
    assert meta["decoded_duration"] == pytest.approx(1.0, abs=0.05)
    # Whatever VAD made of the music, nothing but real transcription may come out.
    assert all(s.text == TINY_WHISPER_TEXT for s in sections)


def test_video_without_audio_gives_facts_and_no_sections(
    whisper_setting: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # No model is configured at all: a silent video must not need one.
    video = make_silent_video(tmp_path / "silent.mp4")
    sections, meta = extract(video, None)
    assert sections == []
    assert meta["has_audio"] is False and meta["has_video"] is True
    assert meta["video_codec"] == "mpeg4"
    assert meta["resolution"] == "64x48"
    assert meta["fps"] == pytest.approx(10.0)
    assert meta["duration"] == pytest.approx(2.0, abs=0.2)
    assert "audio_codec" not in meta and "transcription" not in meta


def test_video_with_audio_and_no_model_names_the_setting(
    whisper_setting: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigurationError, match="P8FS_WHISPER_MODEL"):
        extract(corpus_path("video/autocut_test001.mp4"), None)


def test_file_object_source(tiny_whisper_model: Path) -> None:
    path = corpus_path("video/autocut_test001.mp4")
    context = media_context(tiny_whisper_model, name=path.name)
    with path.open("rb") as handle:
        sections = list(VideoProvider().extract(handle, context))
    assert [s.text for s in sections] == [TINY_WHISPER_TEXT]
    assert context.metadata["video_codec"] == "h264"


def test_duration_limit_applies_to_video(tiny_whisper_model: Path) -> None:
    with pytest.raises(LimitExceeded, match="max_duration_seconds"):
        extract(
            corpus_path("video/autocut_test001.mp4"), tiny_whisper_model, max_duration_seconds=5
        )


def test_truncated_video_is_corrupt_or_partial(tiny_whisper_model: Path, tmp_path: Path) -> None:
    data = corpus_path("video/autocut_test001.mp4").read_bytes()
    header_only = tmp_path / "header.mp4"
    header_only.write_bytes(data[:64])
    with pytest.raises(CorruptDocument, match="header"):
        extract(header_only, tiny_whisper_model)
