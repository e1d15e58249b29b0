"""Built-in embedders plugin: ``openai`` (OpenAI-compatible ``/v1/embeddings``) and ``local``
(a model folder, offline), registered through ``p8fs_register_embedders`` like anyone else's.

Registration imports only the classes; httpx, numpy and tokenizers load on first use.
"""

from __future__ import annotations

from collections.abc import Callable

from p8fs import hookimpl
from p8fs.embedders.local import LocalEmbedder
from p8fs.embedders.openai import OpenAIEmbedder
from p8fs.embedding import Embedder


@hookimpl
def p8fs_register_embedders(register: Callable[[type[Embedder]], None]) -> None:
    register(OpenAIEmbedder)
    register(LocalEmbedder)


__all__ = ["p8fs_register_embedders"]
