"""Fixtures of the hostile-input suite: the extraction sandbox and a tiny Whisper model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.sandbox import Sandbox


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """One child process for every sandboxed extraction of the session (imports paid once)."""
    with Sandbox() as box:
        yield box


@pytest.fixture(scope="session")
def whisper_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny CTranslate2 Whisper model (always hears one fixed sentence; built in ~0.2 s)."""
    pytest.importorskip("faster_whisper", reason="p8fs-node[audio] is not installed")
    from tests.node.tiny_whisper import build_tiny_whisper

    return build_tiny_whisper(tmp_path_factory.mktemp("tiny-whisper"))
