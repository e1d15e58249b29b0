"""Built-in embedders plugin: ``openai`` (OpenAI-compatible ``/v1/embeddings``) and ``local``
(a model folder, offline), registered through ``p8fs_register_embedders`` like anyone else's.

The hook runs on the first embedder lookup (p8fs.plugins.DEFERRED_HOOKS) and imports the classes
inside it, so a command or worker that never embeds does not import them; httpx, numpy and
tokenizers load on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from p8fs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    from p8fs.embedding import Embedder


@hookimpl
def p8fs_register_embedders(register: Callable[[type[Embedder]], None]) -> None:
    from p8fs.embedders.local import LocalEmbedder
    from p8fs.embedders.openai import OpenAIEmbedder

    register(OpenAIEmbedder)
    register(LocalEmbedder)


__all__ = ["p8fs_register_embedders"]
