"""Fixtures shared by the audio and video tests (imported by them; not a conftest plugin).

The tiny Whisper model is built once per session (about 0.2 s) in a temporary folder; see
``tests/node/tiny_whisper.py`` for why it transcribes any speech to one fixed sentence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p8fs.providers import ExtractContext
from p8fs.settings import get_settings
from tests.node.tiny_whisper import build_tiny_whisper


@pytest.fixture(scope="session")
def tiny_whisper_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CTranslate2 Whisper model folder that always hears ``TINY_WHISPER_TEXT``."""
    pytest.importorskip("faster_whisper", reason="p8fs-node[audio] is not installed")
    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))


@pytest.fixture
def whisper_setting(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """A clean ``P8FS_WHISPER_MODEL`` (unset) with the settings cache cleared around the test."""
    monkeypatch.delenv("P8FS_WHISPER_MODEL", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def media_context(model: Path | str | None, name: str = "", **options: Any) -> ExtractContext:
    """An extraction context naming the Whisper model through the per-call option."""
    if model is not None:
        options["whisper_model"] = str(model)
    return ExtractContext(uri=name, filename=name, options=options)
