"""PyAV helpers shared by the audio and video providers: open, describe, decode to 16 kHz mono.

PyAV wheels bundle FFmpeg, so every container and codec FFmpeg knows (WAV, AIFF, MP3, AAC in
MP4, Vorbis or Opus in WebM/Ogg, FLAC ...) goes through the same three steps here. Decoding is a
generator of small blocks straight from FFmpeg's frames, so callers decide how much audio to hold;
nothing here ever materialises a whole file. ``av`` is imported inside the functions, keeping
provider registration free of FFmpeg's import cost.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from p8fs.errors import CorruptDocument, EmptyDocument
from p8fs.providers import ExtractContext, Source, source_name, source_path

if TYPE_CHECKING:
    import numpy as np
    from av.audio.stream import AudioStream
    from av.container import InputContainer

#: What Whisper listens to: 16 kHz mono.
SAMPLE_RATE = 16000


def open_container(source: Source) -> InputContainer:
    """Open ``source`` (path or seekable binary file object) for demuxing.

    FFmpeg's refusals (unknown format, garbage, truncated header) become
    :class:`CorruptDocument`; an empty file becomes :class:`EmptyDocument`.
    """
    import av

    path = source_path(source)
    if path is not None and path.is_file() and path.stat().st_size == 0:
        raise EmptyDocument(f"{path} is empty (0 bytes)")
    target: Any = os.fspath(path) if path is not None else source
    try:
        return av.open(target, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise CorruptDocument(
            f"{source_name(source)} is not a readable audio or video file: {exc}"
        ) from exc


def _seconds(value: int | None, time_base: Fraction | None) -> float | None:
    if value is None or time_base is None:
        return None
    return float(value * time_base)


def container_duration(container: InputContainer) -> float | None:
    """The declared duration in seconds: the container's, else the longest stream's, else None.

    A declaration is a claim, not a fact (a header may say days): limits are enforced again
    while decoding.
    """
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    durations = [_seconds(s.duration, s.time_base) for s in container.streams]
    known = [d for d in durations if d]
    return max(known) if known else None


def best_audio_stream(container: InputContainer) -> AudioStream | None:
    """The stream FFmpeg would pick for audio (the default or first), or None."""
    streams = container.streams.audio
    if not streams:
        return None
    best = container.streams.best("audio")
    return next((stream for stream in streams if stream is best), streams[0])


def require_decoder(stream: AudioStream, context: ExtractContext) -> None:
    """Refuse an audio stream FFmpeg has no decoder for (a damaged header can declare, say,
    4112 bits per sample): PyAV then gives it no codec context at all."""
    if stream.codec_context is None:
        raise CorruptDocument(
            f"{context.uri or context.filename or 'the file'}: its audio stream cannot be decoded "
            "(FFmpeg has no decoder for what its header declares: damaged or unsupported)"
        )


def media_facts(container: InputContainer) -> dict[str, Any]:
    """Document-level facts for ``files.metadata``: container, duration, codecs, resolution."""
    facts: dict[str, Any] = {
        "container": container.format.name,
        "duration": container_duration(container),
        "has_audio": bool(container.streams.audio),
        "has_video": bool(container.streams.video),
    }
    audio = best_audio_stream(container)
    if audio is not None and audio.codec_context is not None:
        ctx = audio.codec_context
        facts.update(
            audio_codec=ctx.name,
            sample_rate=ctx.sample_rate,
            channels=ctx.channels,
        )
    if container.streams.video:
        video = container.streams.video[0]
        vctx = video.codec_context
        rate = video.average_rate or video.guessed_rate
        facts.update(
            video_codec=vctx.name,
            width=vctx.width,
            height=vctx.height,
            resolution=f"{vctx.width}x{vctx.height}",
            fps=round(float(rate), 3) if rate else None,
        )
    return facts


def iter_pcm(
    container: InputContainer,
    stream: AudioStream,
    context: ExtractContext,
    sample_rate: int = SAMPLE_RATE,
    channel: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield ``stream`` decoded and resampled to mono float32 at ``sample_rate``, block by block.

    With ``channel`` (0-based) that one channel is kept instead of the mix of all channels,
    for recordings that put each speaker on a channel of their own.
    Blocks are as FFmpeg decodes them (a few thousand samples). A damaged packet is skipped and
    counted in a warning rather than losing the rest of the file; a stream from which nothing at
    all decodes is a :class:`CorruptDocument`. A mid-stream change of sample format or rate (it
    happens in concatenated MP3s) restarts the resampler instead of failing.
    """
    import av

    def new_resampler() -> av.AudioResampler:
        if channel is None:
            return av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        layout = stream.codec_context.layout
        return av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)

    def samples(out: Any) -> np.ndarray:
        array = out.to_ndarray()
        return array.reshape(-1) if channel is None else array[channel]

    resampler = new_resampler()
    decoded = 0
    damaged = 0
    last_error: Exception | None = None

    def resample(frame: Any) -> Iterator[np.ndarray]:
        nonlocal resampler
        try:
            outputs = resampler.resample(frame)
        except ValueError:  # frame layout/rate changed: drain the old resampler, start anew
            yield from (samples(out) for out in resampler.resample(None))
            resampler = new_resampler()
            outputs = resampler.resample(frame)
        for out in outputs:
            yield samples(out)

    try:
        for packet in container.demux(stream):
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                damaged += 1
                last_error = exc
                continue
            for frame in frames:
                for block in resample(frame):
                    decoded += block.size
                    yield block
    except av.error.FFmpegError as exc:  # demuxer gave up: truncated or garbage container
        damaged += 1
        last_error = exc
    for out in resampler.resample(None):
        block = samples(out)
        decoded += block.size
        yield block
    if decoded == 0 and last_error is not None:
        raise CorruptDocument(
            f"{context.uri or context.filename or 'the file'}: no audio could be decoded "
            f"({last_error})"
        )
    if damaged:
        context.warn(
            f"{damaged} damaged audio packet(s) skipped after {decoded / sample_rate:.1f} s "
            f"decoded (last error: {last_error})"
        )
