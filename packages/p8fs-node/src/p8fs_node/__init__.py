"""p8fs-node: content providers for p8fs (PDF, office, HTML, Markdown, EPUB, audio, video).

``from p8fs_node import PdfProvider`` works without importing any other provider's engine.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "PdfProvider": "p8fs_node.pdf",
    "OfficeProvider": "p8fs_node.office",
    "AudioProvider": "p8fs_node.audio",
    "VideoProvider": "p8fs_node.video",
    "ImageProvider": "p8fs_node.image",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'p8fs_node' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
