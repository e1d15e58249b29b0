"""``p8fs search QUERY`` and ``p8fs embed``: find stored chunks; backfill their vectors."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import click


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


@click.command()
@click.argument("query")
@click.option("--tenant-id", required=True, help="Tenant whose chunks are searched.")
@click.option("-k", "--k", "k", default=10, show_default=True, type=click.IntRange(1, 1000),
              help="Results to return.")
@click.option("--mode", type=click.Choice(["keyword", "semantic", "hybrid"]), default="keyword",
              show_default=True,
              help="keyword needs no model; semantic and hybrid need P8FS_EMBEDDER.")
@click.option("--uri-prefix", default=None, help="Only files whose URI starts with this.")
@click.option("--mime-type", "mime_types", multiple=True,
              help="Only files of this MIME type (repeatable; 'audio/*' for a family).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (one JSON list).")
def search(query: str, tenant_id: str, k: int, mode: str, uri_prefix: str | None,
           mime_types: tuple[str, ...], as_json: bool) -> None:
    """Search a tenant's stored chunks for QUERY."""
    from p8fs.errors import P8fsError
    from p8fs.retrieval import asearch

    try:
        hits = asyncio.run(asearch(query, tenant_id, k=k, mode=mode, uri_prefix=uri_prefix,
                                   mime_type=list(mime_types) or None))
    except P8fsError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps([h.model_dump(mode="json") for h in hits], indent=2,
                              ensure_ascii=False))
        return
    if not hits:
        click.echo("no results")
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    for rank, hit in enumerate(hits, start=1):
        where = f"chunk {hit.ordinal}"
        if hit.page is not None:
            where += f", page {hit.page}"
        if hit.start_seconds is not None:
            end = f"-{hit.end_seconds:.1f}" if hit.end_seconds is not None else ""
            where += f", {hit.start_seconds:.1f}{end} s"
        console.print(f"[bold]{rank}. {escape(hit.file_name)}[/bold] ({where})  "
                      f"score {hit.score:.4g}")
        console.print(f"   [dim]{escape(hit.uri)}[/dim]")
        snippet = escape(hit.snippet).replace("**", "\x00")
        parts = snippet.split("\x00")
        marked = "".join(f"[bold yellow]{p}[/bold yellow]" if i % 2 else p
                         for i, p in enumerate(parts))
        console.print(f"   {marked}")


@click.command()
@click.option("--tenant-id", required=True, help="Tenant whose chunks are embedded.")
@click.option("--batch-size", type=click.IntRange(1, 2048), default=None,
              help="Chunks per embedding request (default P8FS_EMBEDDING_BATCH_SIZE).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def embed(tenant_id: str, batch_size: int | None, as_json: bool) -> None:
    """Embed the tenant's chunks that have no vector of the configured model yet (backfill).

    Chunks whose text and model already have a vector are skipped, so running it again costs
    only reads. Workers embed new files themselves when P8FS_EMBEDDER is set.
    """
    from p8fs.errors import P8fsError

    try:
        stats = asyncio.run(_embed(tenant_id, batch_size))
    except P8fsError as exc:
        _fail(exc)
        return
    if as_json:
        click.echo(json.dumps(stats))
    else:
        click.echo(
            f"model {stats['model']}: embedded {stats['embedded']}, unchanged {stats['skipped']}, "
            f"changed meanwhile {stats['stale']} ({stats['batches']} batches, "
            f"{stats['seconds']} s)"
        )


async def _embed(tenant_id: str, batch_size: int | None) -> dict[str, Any]:
    from p8fs.database import Database
    from p8fs.embedding import create_embedder, embed_pending, require_embedder
    from p8fs.settings import get_settings

    settings = get_settings()
    embedder = require_embedder(create_embedder(settings))
    database = Database.from_settings(settings)
    try:
        await database.init_schema()
        stats = await embed_pending(database, embedder, tenant_id,
                                    batch_size=batch_size or settings.embedding_batch_size)
        return {"model": embedder.model_id, **stats.as_dict()}
    finally:
        await embedder.aclose()
        await database.dispose()
