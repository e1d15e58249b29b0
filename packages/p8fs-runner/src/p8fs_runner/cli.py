"""``p8fs-run``: the router, the tier workers, the self-test and the operator's queue tools.

Everything heavy is imported inside the command that needs it: a worker must have its first
fetch on the wire within a second of starting, and ``p8fs-run --help`` must be instant.

    p8fs-run router                         create streams/consumers, then route by size
    p8fs-run --tier small                   a small-tier worker (same as: worker --tier small)
    p8fs-run --tier small --send-sample F   the self-test (upload, publish, process, verify)
    p8fs-run status                         queues, lag, redeliveries, dead letters
    p8fs-run dlq list | dlq replay ...      inspect and retry dead letters
    p8fs-run bridge                         SeaweedFS filer events -> p8fs.storage.events
    p8fs-run dreaming process ...           the dreaming job (the core's ``p8fs dreaming`` group)

Every runner command is defined here. The seed's verbs that the runner adds to the core CLI
(``p8fs router``, ``p8fs storage-worker``) are listed in :data:`CORE_COMMANDS`, which the
runner's plugin registers through ``p8fs_register_commands``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from p8fs.cli.jobs import dreaming
from p8fs.errors import ConfigurationError, P8fsError

if TYPE_CHECKING:  # pragma: no cover
    from p8fs_runner.settings import RunnerSettings

T = TypeVar("T")

TIER_CHOICES = ("small", "medium", "large", "test")

#: Exit codes: 1 processing failed, 2 the topology is missing (run the router), 3 unreachable
#: or misconfigured services.
EXIT_FAILED = 1
EXIT_NO_TOPOLOGY = 2
EXIT_SERVICES = 3


class RunnerCliError(click.ClickException):
    """A clear one-line error with a specific exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _configure_logging(verbose: int) -> None:
    import logging

    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("nats").setLevel(max(level, logging.WARNING))


def _settings() -> RunnerSettings:
    from p8fs_runner.settings import RunnerSettings

    return RunnerSettings()


@contextmanager
def _services(embed: bool = True) -> Iterator[RunnerSettings]:
    """Resolved settings: configured services, or (``embed``) embedded ones started here.

    The commands that run a service (worker, router, bridge, self-test) are the ones that may
    embed; they first check that TMPDIR and P8FS_DATA_DIR are writable (see ``scratch``)."""

    settings = _settings()
    if embed:
        from p8fs_runner.scratch import check_scratch

        try:
            check_scratch(settings.data_dir)
        except ConfigurationError as exc:
            raise RunnerCliError(str(exc), EXIT_SERVICES) from exc
    from p8fs_runner.connection import import_nats_fast

    import_nats_fast(settings.nats_url)
    if not embed:
        if settings.nats_url is None:
            settings = settings.model_copy(update={"embed_services": "never"})
    from p8fs_runner.embedded import ensure_services

    try:
        with ensure_services(settings) as resolved:
            for note in resolved.notes:
                click.echo(f"ℹ️  {note}", err=True)
            yield resolved.settings
    except ConfigurationError as exc:
        raise RunnerCliError(str(exc), EXIT_SERVICES) from exc
    except P8fsError as exc:
        if type(exc).__name__ == "EmbeddedServiceError":
            raise RunnerCliError(str(exc), EXIT_SERVICES) from exc
        raise


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a service coroutine, turning the runner's typed errors into clear exits."""
    from p8fs_runner.connection import NatsUnavailable
    from p8fs_runner.topology import ConsumerNotFound, TopologyError

    try:
        return asyncio.run(coro)
    except ConsumerNotFound as exc:
        raise RunnerCliError(str(exc), EXIT_NO_TOPOLOGY) from exc
    except (NatsUnavailable, ConfigurationError) as exc:
        raise RunnerCliError(str(exc), EXIT_SERVICES) from exc
    except TopologyError as exc:
        raise RunnerCliError(str(exc), EXIT_NO_TOPOLOGY) from exc
    except P8fsError as exc:
        raise RunnerCliError(str(exc), EXIT_FAILED) from exc


def _with_signals(
    factory: Callable[[asyncio.Event], Coroutine[Any, Any, T]],
) -> Coroutine[Any, Any, T]:
    async def main() -> T:
        from p8fs_runner.service import install_stop_signals

        stop = asyncio.Event()
        restore = install_stop_signals(stop)
        try:
            return await factory(stop)
        finally:
            restore()

    return main()


# -- commands -------------------------------------------------------------------------------


def run_worker(tier: str, *, grace: float, metrics_port: int | None, embed: bool = True) -> None:
    """``p8fs-run --tier T`` and ``p8fs-run worker --tier T``."""
    with _services(embed) as settings:
        from p8fs_runner.service import serve_worker

        try:
            spec = settings.queue(tier)
        except ConfigurationError as exc:
            raise RunnerCliError(str(exc), EXIT_SERVICES) from exc
        stats = _run(
            _with_signals(
                lambda stop: serve_worker(
                    settings, spec, stop, grace=grace, metrics_port=metrics_port
                )
            )
        )
    click.echo(
        f"worker {tier} stopped: {stats.acked} processed, {stats.nakked} retried, "
        f"{stats.dead_lettered} dead-lettered, {stats.interrupted} handed back",
        err=True,
    )


def run_selftest_command(tier: str, sample: Path) -> None:
    """``--send-sample FILE``: the seed's three-step self-test."""
    with _services(embed=True) as settings:
        from p8fs_runner.selftest import run_selftest

        result = _run(run_selftest(settings, sample, tier=tier, echo=click.echo))
    if not result.ok:
        sys.exit(EXIT_FAILED)


tier_option = click.option(
    "--tier",
    type=click.Choice(TIER_CHOICES),
    help="Worker tier: small (< 100 MiB), medium (< 1 GiB), large, or test (the self-test queue).",
)
grace_option = click.option(
    "--grace",
    type=float,
    default=25.0,
    show_default=True,
    help="Seconds files in progress may take to finish after SIGTERM before they are handed back.",
)
metrics_option = click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Port of /metrics, /healthz, /readyz (default P8FS_METRICS_PORT, 9090; 0 = off).",
)


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@tier_option
@click.option(
    "--send-sample",
    "send_sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Self-test: upload FILE, publish its event to the TEST queue, process it, verify.",
)
@grace_option
@metrics_option
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name="p8fs-runner", prog_name="p8fs-run")
@click.pass_context
def main(
    ctx: click.Context,
    tier: str | None,
    send_sample: Path | None,
    grace: float,
    metrics_port: int | None,
    verbose: int,
) -> None:
    """Run p8fs routers and workers on NATS JetStream."""
    _configure_logging(verbose)
    if ctx.invoked_subcommand is not None:
        if tier or send_sample:
            raise click.UsageError("--tier/--send-sample go without a sub-command")
        return
    if send_sample is not None:
        run_selftest_command(tier or "small", send_sample)
        return
    if tier is None:
        click.echo(ctx.get_help())
        return
    run_worker(tier, grace=grace, metrics_port=metrics_port)


@main.command()
@click.option(
    "--worker-id", default=None, help="A name for this replica in logs (the seed's flag)."
)
@click.option("--setup-only", is_flag=True, help="Create/update streams and consumers, then exit.")
@metrics_option
def router(worker_id: str | None, setup_only: bool, metrics_port: int | None) -> None:
    """Create or update the streams and consumers, then route events to tiers by size."""
    import logging

    if worker_id:
        logging.getLogger("p8fs_runner").info("router replica %s", worker_id)
    with _services(embed=True) as settings:
        from p8fs_runner.service import serve_router

        try:
            queues = settings.queues()
        except ConfigurationError as exc:
            raise RunnerCliError(str(exc), EXIT_SERVICES) from exc
        run = _run(
            _with_signals(
                lambda stop: serve_router(
                    settings, stop, queues=queues, setup_only=setup_only, metrics_port=metrics_port
                )
            )
        )
    # The topology's summary was logged once by ensure_topology (INFO, shown by default).
    if not setup_only:
        click.echo(
            f"router stopped: routed {run.stats.routed}, invalid {run.stats.invalid}", err=True
        )


@main.command()
@click.option(
    "--tier", type=click.Choice(TIER_CHOICES), required=True, help="The tier queue to consume."
)
@grace_option
@metrics_option
def worker(tier: str, grace: float, metrics_port: int | None) -> None:
    """Process one tier's queue until SIGTERM/SIGINT (binds to the router's consumer)."""
    run_worker(tier, grace=grace, metrics_port=metrics_port)


def _console() -> Any:
    """A rich console; piped output gets a wide fixed width instead of 80 truncated columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=200)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def status(as_json: bool) -> None:
    """Streams, consumers, pending/ack-pending/redelivered per tier, and dead letters."""
    import json

    async def collect() -> Any:
        from p8fs_runner.connection import connect_nats
        from p8fs_runner.status import collect_status

        nc = await connect_nats(settings, name="p8fs-status")
        try:
            return await collect_status(nc.jetstream())
        finally:
            await nc.close()

    with _services(embed=False) as settings:
        result = _run(collect())
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    from p8fs_runner.status import render_status

    render_status(result, _console())


@main.group()
def dlq() -> None:
    """Inspect and replay dead-lettered events (P8FS_STORAGE_EVENTS_DLQ)."""


@dlq.command("list")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines instead of a table.")
def dlq_list(limit: int, as_json: bool) -> None:
    """List dead letters with their queue, reason and deliveries."""
    import json

    async def collect() -> Any:
        from p8fs_runner.connection import connect_nats
        from p8fs_runner.dlq import list_dead_letters

        nc = await connect_nats(settings, name="p8fs-dlq")
        try:
            return await list_dead_letters(nc.jetstream(), limit=limit)
        finally:
            await nc.close()

    with _services(embed=False) as settings:
        letters = _run(collect())
    if as_json:
        for letter in letters:
            click.echo(json.dumps(letter.to_dict()))
        return
    from rich.table import Table

    table = Table(title=f"dead letters ({len(letters)})", title_justify="left")
    for column in ("seq", "queue", "code", "deliveries", "failed at", "uri", "reason"):
        table.add_column(column)
    for letter in letters:
        shown = letter.to_dict()  # secrets of the event masked
        table.add_row(
            str(letter.seq),
            letter.queue,
            letter.code,
            str(letter.deliveries),
            letter.failed_at[:19],
            shown["uri"],
            shown["reason"],
        )
    _console().print(table)


@dlq.command("replay")
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.argument("seqs", nargs=-1, type=int)
def dlq_replay(replay_all: bool, seqs: tuple[int, ...]) -> None:
    """Republish dead letters to p8fs.storage.events (test ones to the test queue) and remove
    them from the dead-letter stream."""
    if replay_all == bool(seqs):
        raise click.UsageError("give either --all or one or more sequence numbers")

    async def replay() -> Any:
        from p8fs_runner.connection import connect_nats
        from p8fs_runner.dlq import replay as do_replay

        nc = await connect_nats(settings, name="p8fs-dlq")
        try:
            return await do_replay(nc.jetstream(), None if replay_all else list(seqs))
        finally:
            await nc.close()

    with _services(embed=False) as settings:
        try:
            done = _run(replay())
        except LookupError as exc:
            raise RunnerCliError(str(exc)) from exc
    from p8fs_runner.dlq import replay_subject

    for letter in done:
        click.echo(
            f"replayed #{letter.seq} ({letter.uri or letter.queue}) to {replay_subject(letter)}"
        )
    click.echo(f"{len(done)} dead letter(s) replayed")


main.add_command(dreaming, "dreaming")


@main.command()
@metrics_option
def bridge(metrics_port: int | None) -> None:
    """Follow the SeaweedFS filer and publish storage events to p8fs.storage.events."""
    try:
        from p8fs_runner.bridge import run_bridge
    except ImportError as exc:
        raise RunnerCliError(f"the SeaweedFS bridge is not available: {exc}") from exc
    with _services(embed=True) as settings:
        _run(_with_signals(lambda stop: run_bridge(settings, stop=stop, metrics_port=metrics_port)))


@click.command("storage-worker")
@click.option(
    "--tier",
    type=click.Choice(TIER_CHOICES),
    default="small",
    show_default=True,
    help="Worker tier: small (< 100 MiB), medium (< 1 GiB), large, or test.",
)
@click.option(
    "--send-sample",
    "send_sample",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Self-test: upload FILE, publish its event to the TEST queue, process it, verify.",
)
@click.option("--grace", type=float, default=25.0, show_default=True)
def storage_worker(tier: str, send_sample: Path | None, grace: float) -> None:
    """Process a tier's storage events (the seed's storage worker), or run the self-test."""
    _configure_logging(0)
    if send_sample is not None:
        run_selftest_command(tier, send_sample)
    else:
        run_worker(tier, grace=grace, metrics_port=None)


#: The seed's ``python -m p8fs.cli router`` and ``storage-worker`` verbs: the commands the runner
#: adds to the core ``p8fs`` CLI, by name. They run exactly what ``p8fs-run router`` and
#: ``p8fs-run --tier T [--send-sample FILE]`` run.
CORE_COMMANDS: dict[str, click.Command] = {"router": router, "storage-worker": storage_worker}


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="p8fs-run")
