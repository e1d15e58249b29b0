"""p8fs-subtitles: SRT and WebVTT subtitles for p8fs, as a third-party plugin would add them.

Installing the distribution is all it takes: its ``p8fs`` entry point (``subtitles``) makes p8fs
register :class:`SubtitleProvider` for ``.srt`` and ``.vtt`` files.
"""

from __future__ import annotations

from p8fs_subtitles.cues import Cue, CueReader
from p8fs_subtitles.provider import SubtitleProvider

__version__ = "0.1.0"

__all__ = ["Cue", "CueReader", "SubtitleProvider", "__version__"]
