"""The video provider: a video's facts, and its audio track transcribed like any audio file.

The audio track is demuxed and decoded straight from the video container, window by window,
through the audio provider's transcription; it is never transcoded to a new file and never held
whole. A video without an audio track yields its facts (codecs, resolution, frame rate,
duration) and no sections: no placeholder text is ever stored as content. The Whisper model is
only loaded when there is audio to transcribe, so silent videos need no model at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from p8fs.providers import ContentProvider, ExtractContext, Section, Source
from p8fs_node.audio import (
    check_declared_duration,
    sidecar_turns,
    transcribe_audio,
    whisper_model_for,
)
from p8fs_node.media import best_audio_stream, media_facts, open_container, require_decoder


class VideoProvider(ContentProvider):
    """Video containers: duration, codecs, resolution and frame rate; speech as segments."""

    name = "video"
    mime_types = (
        "video/mp4",
        "video/quicktime",
        "video/webm",
        "video/x-matroska",
        "video/x-msvideo",
        "video/mpeg",
        "video/ogg",
        "video/3gpp",
        "video/3gpp2",
        "video/x-flv",
        "video/x-ms-wmv",
        "video/mp2t",
        "video/x-m4v",
    )
    extensions = (
        ".mp4",
        ".m4v",
        ".mov",
        ".webm",
        ".mkv",
        ".avi",
        ".mpeg",
        ".mpg",
        ".ogv",
        ".3gp",
        ".3g2",
        ".flv",
        ".wmv",
        ".ts",
        ".mts",
        ".m2ts",
    )
    #: Facts need only PyAV; transcribing the audio track needs faster-whisper as well, which
    #: is checked when a video actually has audio.
    requires: ClassVar[tuple[str, ...]] = ("av",)
    extra = "p8fs-node[media]"

    def extract(self, source: Source, context: ExtractContext) -> Iterator[Section]:
        self.ensure_available()
        container = open_container(source)
        try:
            context.metadata.update(media_facts(container))
            limit = check_declared_duration(container, context)
            stream = best_audio_stream(container)
            if stream is None:
                return
            require_decoder(stream, context)
            from p8fs_node.audio import AudioProvider

            AudioProvider().ensure_available()
            model = whisper_model_for(context)
            turns = sidecar_turns(source, context)
            yield from transcribe_audio(container, stream, context, model, limit, turns)
        finally:
            container.close()
