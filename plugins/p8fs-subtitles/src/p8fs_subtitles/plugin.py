"""The module the ``p8fs`` entry point names: it registers the subtitles provider.

Keep plugin modules this small and cheap to import: p8fs imports every installed plugin when it
builds its registry, and a worker pays for that at start-up.
"""

from __future__ import annotations

from collections.abc import Callable

from p8fs import hookimpl
from p8fs.providers import ContentProvider
from p8fs_subtitles.provider import SubtitleProvider


@hookimpl
def p8fs_register_providers(register: Callable[[type[ContentProvider]], None]) -> None:
    register(SubtitleProvider)


__all__ = ["p8fs_register_providers"]
