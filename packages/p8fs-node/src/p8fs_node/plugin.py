"""The p8fs-node plugin: registers this distribution's providers through the ``p8fs`` hooks.

Provider modules import only p8fs and the standard library at module level; each one imports
its heavy engine inside ``extract``. So registering every provider is cheap, and a provider whose
extra is missing is still listed (and names the extra when used).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from p8fs import hookimpl


@hookimpl
def p8fs_register_providers(register: Callable[[type[Any]], None]) -> None:
    from p8fs_node.audio import AudioProvider
    from p8fs_node.image import ImageProvider
    from p8fs_node.office import OfficeProvider
    from p8fs_node.pdf import PdfProvider
    from p8fs_node.video import VideoProvider

    for provider in (PdfProvider, OfficeProvider, AudioProvider, VideoProvider, ImageProvider):
        register(provider)
