"""The audio provider: speech to time-stamped text with faster-whisper, in bounded windows.

An hour of 16 kHz float32 audio is 230 MB, and a day-long recording several gigabytes, so the
file is never decoded whole. PyAV's decoded blocks are gathered into windows of two minutes;
each window is cut where Silero VAD finds a pause (so no word is split between two windows, and
each window's transcription stands on its own), transcribed with VAD filtering, and its segments
are yielded with times shifted to their place in the file. Memory is bounded by the window
length whatever the file's length; a continuous stretch of speech with no pause is cut hard at
the window's end, which is counted in the file's metadata.

Options (``ExtractContext.options``): ``language`` (skip detection), ``whisper_model``
(overrides ``P8FS_WHISPER_MODEL``), ``device`` (``cpu``), ``compute_type`` (``int8``),
``beam_size`` (5), ``window_seconds`` (120), ``max_duration_seconds`` (24 h),
``split_channels`` (False: transcribe each channel of a multi-channel recording on its own, as
speaker ``channel N``, for calls recorded with one party per channel; the channels' sections
come one channel after the other).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from p8fs.errors import LimitExceeded
from p8fs.limits import extraction_limit
from p8fs.providers import ContentProvider, ExtractContext, Section, Source, source_path
from p8fs_node.media import (
    SAMPLE_RATE,
    best_audio_stream,
    container_duration,
    iter_pcm,
    media_facts,
    open_container,
    require_decoder,
)

if TYPE_CHECKING:
    import numpy as np
    from av.audio.stream import AudioStream
    from av.container import InputContainer
    from faster_whisper import WhisperModel

#: Two minutes (7.7 MB of samples): measured on 15 min of speech with tiny.en, 120 s windows
#: ran 1.2x as fast as faster-whisper on the whole file and 60 s windows 0.85x (each window
#: ends in a part-filled 30 s Whisper pass), at 456 vs 401 MB peak RSS; the whole file took
#: 923 MB (benchmarks/audio_throughput.py).
DEFAULT_WINDOW_SECONDS = 120.0
#: Smallest window accepted: below Whisper's own 30 s context windows only cost accuracy.
MIN_WINDOW_SECONDS = 5.0
#: The share of a window, at its end, searched for a pause to cut at ...
CUT_SEARCH_FRACTION = 1 / 3
#: ... but no more than this many seconds: VAD over the searched stretch is extra work.
CUT_SEARCH_MAX_SECONDS = 20.0
#: Shortest pause (seconds) worth cutting at.
MIN_CUT_PAUSE_SECONDS = 0.3


@dataclass
class WindowStats:
    """How a file was windowed; stored in ``files.metadata["transcription"]``.

    ``peak_buffer_samples`` is the most decoded audio held at once, the figure that proves
    memory does not grow with the file.
    """

    windows: int = 0
    hard_cuts: int = 0
    decoded_samples: int = 0
    peak_buffer_samples: int = 0


def iter_windows(
    blocks: Iterable[np.ndarray],
    window_samples: int,
    find_cut: Callable[[np.ndarray], int | None],
    stats: WindowStats,
    max_samples: float = math.inf,
) -> Iterator[tuple[int, np.ndarray]]:
    """Group decoded ``blocks`` into windows of at most ``window_samples``, yielding
    ``(offset_in_samples, window)``.

    When enough audio is pending, ``find_cut`` chooses where to end the window (an index into
    the first ``window_samples`` samples, or ``None`` for "no pause: cut at the end"); what
    follows the cut is carried into the next window. Raises :class:`LimitExceeded` as soon as
    the decoded audio passes ``max_samples``, whatever the container declared.
    """
    import numpy as np

    pending: list[np.ndarray] = []
    pending_samples = 0
    offset = 0
    for block in blocks:
        if not block.size:
            continue
        pending.append(block)
        pending_samples += block.size
        stats.decoded_samples += block.size
        stats.peak_buffer_samples = max(stats.peak_buffer_samples, pending_samples)
        if stats.decoded_samples > max_samples:
            raise LimitExceeded(
                f"the audio runs longer than the {max_samples / SAMPLE_RATE:.0f} s limit "
                "(option max_duration_seconds, setting P8FS_MAX_DURATION_SECONDS)",
                limit_seconds=max_samples / SAMPLE_RATE,
            )
        while pending_samples >= window_samples:
            buffer = np.concatenate(pending)
            cut = find_cut(buffer[:window_samples])
            if cut is None or cut <= 0:
                stats.hard_cuts += 1
                cut = window_samples
            stats.windows += 1
            yield offset, buffer[:cut]
            offset += cut
            rest = buffer[cut:].copy()  # a copy, so the whole buffer can be freed
            pending = [rest] if rest.size else []
            pending_samples = int(rest.size)
    if pending_samples:
        stats.windows += 1
        yield offset, np.concatenate(pending)


def find_pause(window: np.ndarray) -> int | None:
    """Where to end ``window``: the middle of the last pause in its final third (20 s at most).

    Returns ``len(window)`` when that final third holds no speech at all, and ``None`` when it
    is speech from end to end (the caller then cuts hard).
    """
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    searched = min(len(window) * CUT_SEARCH_FRACTION, CUT_SEARCH_MAX_SECONDS * SAMPLE_RATE)
    start = len(window) - int(searched)
    region = window[start:]
    options = VadOptions(min_silence_duration_ms=int(MIN_CUT_PAUSE_SECONDS * 1000), speech_pad_ms=0)
    speech = get_speech_timestamps(region, options)
    if not speech:
        return len(window)
    edges = [0, *(x for chunk in speech for x in (chunk["start"], chunk["end"])), len(region)]
    pauses = [
        (edges[i], edges[i + 1])
        for i in range(0, len(edges), 2)
        if edges[i + 1] - edges[i] >= MIN_CUT_PAUSE_SECONDS * SAMPLE_RATE
    ]
    if not pauses:
        return None
    begin, end = pauses[-1]
    return start + (begin + end) // 2


@dataclass(frozen=True)
class SpeakerTurn:
    start: float
    end: float
    speaker: str


def read_rttm(path: Path) -> list[SpeakerTurn]:
    """Speaker turns from an RTTM file (``SPEAKER <file> <chan> <start> <dur> ... <name> ...``)."""
    turns = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0] == "SPEAKER":
            try:
                start, duration = float(fields[3]), float(fields[4])
            except ValueError:
                continue
            turns.append(SpeakerTurn(start, start + duration, fields[7]))
    return turns


def speaker_at(turns: list[SpeakerTurn], start: float, end: float) -> str | None:
    """The speaker whose turns overlap ``[start, end]`` the most, if any does."""
    overlap: dict[str, float] = {}
    for turn in turns:
        shared = min(end, turn.end) - max(start, turn.start)
        if shared > 0:
            overlap[turn.speaker] = overlap.get(turn.speaker, 0.0) + shared
    return max(overlap, key=overlap.__getitem__) if overlap else None


def sidecar_turns(source: Source, context: ExtractContext) -> list[SpeakerTurn]:
    """Speaker turns from ``<name>.rttm`` beside a local source file, if there is one."""
    path = source_path(source)
    if path is None:
        return []
    rttm = path.with_suffix(".rttm")
    if not rttm.is_file():
        return []
    turns = read_rttm(rttm)
    if turns:
        context.metadata["speakers"] = sorted({t.speaker for t in turns})
        context.metadata["speaker_source"] = rttm.name
    return turns


def _option(context: ExtractContext, name: str, default: Any) -> Any:
    value = context.options.get(name)
    return default if value is None else value


def whisper_model_for(context: ExtractContext) -> WhisperModel:
    """The shared model named by the ``whisper_model`` option or ``P8FS_WHISPER_MODEL``."""
    from p8fs.settings import get_settings
    from p8fs_node.whisper import load_model, resolve_model

    setting = _option(context, "whisper_model", None) or get_settings().whisper_model
    path = resolve_model(setting)
    # The name as configured ("tiny.en", or the folder's name): never a full local path.
    context.metadata.setdefault("transcription", {})["model"] = Path(str(setting)).name
    return load_model(
        path,
        device=str(_option(context, "device", "cpu")),
        compute_type=str(_option(context, "compute_type", "int8")),
    )


def check_declared_duration(container: InputContainer, context: ExtractContext) -> float:
    """Refuse a file whose declared duration passes the limit; return the limit in seconds."""
    limit = float(extraction_limit(context.options, "max_duration_seconds"))
    declared = container_duration(container)
    if declared is not None and declared > limit:
        raise LimitExceeded(
            f"{context.uri or context.filename or 'the file'} declares {declared:.0f} s of "
            f"media, more than the {limit:.0f} s limit (option max_duration_seconds, setting "
            "P8FS_MAX_DURATION_SECONDS)",
            declared_seconds=declared,
            limit_seconds=limit,
        )
    return limit


def transcribe_stream(
    container: InputContainer,
    stream: AudioStream,
    context: ExtractContext,
    model: WhisperModel,
    limit_seconds: float,
    turns: list[SpeakerTurn] | None = None,
    channel: int | None = None,
) -> Iterator[Section]:
    """Transcribe one audio stream window by window, yielding a section per Whisper segment.

    Each section's ``start``/``end`` are seconds from the beginning of the stream; ``language``
    is what Whisper detected for that window (so a file that switches language mid-way is
    labelled per window). With ``channel``, only that channel is heard and sections carry
    ``channel`` (1-based) and, unless a sidecar names speakers, ``speaker="channel N"``.
    """
    window_seconds = max(
        MIN_WINDOW_SECONDS, float(_option(context, "window_seconds", DEFAULT_WINDOW_SECONDS))
    )
    language = _option(context, "language", None)
    beam_size = int(_option(context, "beam_size", 5))
    stats = WindowStats()
    languages: list[str] = []
    blocks = iter_pcm(container, stream, context, channel=channel)
    windows = iter_windows(
        blocks,
        int(window_seconds * SAMPLE_RATE),
        find_pause,
        stats,
        max_samples=limit_seconds * SAMPLE_RATE,
    )
    try:
        for offset, window in windows:
            context.check_deadline()
            at = offset / SAMPLE_RATE
            window_end = at + window.size / SAMPLE_RATE
            segments, info = model.transcribe(
                window,
                language=language,
                beam_size=beam_size,
                vad_filter=True,
            )
            for segment in segments:
                context.check_deadline()
                text = segment.text.strip()
                if not text:
                    continue
                # Whisper's last timestamp may overshoot the audio it was given.
                end = round(min(at + segment.end, window_end), 3)
                start = round(min(at + segment.start, end), 3)
                metadata: dict[str, Any] = {
                    "start": start,
                    "end": end,
                    "kind": "segment",
                    "language": info.language,
                }
                speaker = speaker_at(turns, start, end) if turns else None
                if channel is not None:
                    metadata["channel"] = channel + 1
                    speaker = speaker or f"channel {channel + 1}"
                if speaker is not None:
                    metadata["speaker"] = speaker
                if info.language not in languages:
                    languages.append(info.language)
                yield Section(text, metadata)
    finally:
        record = context.metadata.setdefault("transcription", {})
        for key, value in asdict(stats).items():  # summed over channels, when split
            previous = record.get(key, 0)
            record[key] = max(previous, value) if key == "peak_buffer_samples" else previous + value
        record["window_seconds"] = window_seconds
        if stats.decoded_samples:
            decoded = round(stats.decoded_samples / SAMPLE_RATE, 3)
            context.metadata["decoded_duration"] = max(
                decoded, context.metadata.get("decoded_duration", 0.0)
            )
            if context.metadata.get("duration") is None:
                context.metadata["duration"] = context.metadata["decoded_duration"]
        if languages:
            known = context.metadata.setdefault("languages", [])
            known.extend(lang for lang in languages if lang not in known)
            context.metadata.setdefault("language", languages[0])


def transcribe_audio(
    container: InputContainer,
    stream: AudioStream,
    context: ExtractContext,
    model: WhisperModel,
    limit_seconds: float,
    turns: list[SpeakerTurn] | None = None,
) -> Iterator[Section]:
    """Transcribe ``stream``: its mix, or each channel in turn with ``split_channels``.

    The entry point the audio and video providers share. Splitting decodes the file once per
    channel (seeking back to the start), so memory stays one window whatever the channel count.
    """
    channels = stream.codec_context.channels or 1
    if not _option(context, "split_channels", False) or channels < 2:
        yield from transcribe_stream(container, stream, context, model, limit_seconds, turns)
        return
    context.metadata["split_channels"] = True
    for channel in range(channels):
        if channel:
            container.seek(0)
        yield from transcribe_stream(
            container, stream, context, model, limit_seconds, turns, channel=channel
        )


class AudioProvider(ContentProvider):
    """Speech in any audio container or codec, as time-stamped transcript segments."""

    name = "audio"
    mime_types = (
        "audio/wav",
        "audio/x-wav",
        "audio/wave",
        "audio/vnd.wave",
        "audio/mpeg",
        "audio/mp3",
        "audio/aiff",
        "audio/x-aiff",
        "audio/flac",
        "audio/x-flac",
        "audio/ogg",
        "audio/opus",
        "audio/vorbis",
        "audio/mp4",
        "audio/x-m4a",
        "audio/aac",
        "audio/webm",
        "audio/x-matroska",
        "audio/amr",
        "audio/basic",
        "audio/x-ms-wma",
    )
    extensions = (
        ".wav",
        ".wave",
        ".mp3",
        ".aif",
        ".aiff",
        ".aifc",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".m4a",
        ".aac",
        ".weba",
        ".mka",
        ".amr",
        ".au",
        ".wma",
        ".caf",
    )
    requires: ClassVar[tuple[str, ...]] = ("faster_whisper", "av")
    extra = "p8fs-node[audio]"

    def extract(self, source: Source, context: ExtractContext) -> Iterator[Section]:
        self.ensure_available()
        container = open_container(source)
        try:
            context.metadata.update(media_facts(container))
            stream = best_audio_stream(container)
            if stream is None:
                context.warn("the file holds no audio stream: nothing to transcribe")
                return
            require_decoder(stream, context)
            # Before the model: refusing a file that claims days must not cost a model load.
            limit = check_declared_duration(container, context)
            model = whisper_model_for(context)
            turns = sidecar_turns(source, context)
            yield from transcribe_audio(container, stream, context, model, limit, turns)
        finally:
            container.close()
