"""``p8fs-run`` and the seed's verbs in the core CLI, run against a real nats-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from p8fs_runner.cli import EXIT_NO_TOPOLOGY, EXIT_SERVICES, main

if TYPE_CHECKING:
    from p8fs_runner.settings import RunnerSettings


def runner_env(settings: RunnerSettings) -> dict[str, str]:
    """The environment a deployed runner would get for these test services."""
    assert settings.nats_password is not None and settings.s3_access_key and settings.s3_secret_key
    return {
        "P8FS_NATS_URL": settings.resolved_nats_url(),
        "P8FS_NATS_USER": settings.nats_user or "",
        "P8FS_NATS_PASSWORD": settings.nats_password.get_secret_value(),
        "P8FS_SEAWEEDFS_ENDPOINT": settings.seaweedfs_endpoint or "",
        "P8FS_S3_ACCESS_KEY": settings.s3_access_key.get_secret_value(),
        "P8FS_S3_SECRET_KEY": settings.s3_secret_key.get_secret_value(),
        "P8FS_DATA_DIR": str(settings.data_dir),
        "P8FS_STORAGE_PROVIDER": "sqlite",
        "P8FS_METRICS_PORT": "0",
    }


def test_a_worker_without_its_consumer_exits_with_the_command_to_run(
    runner_settings: RunnerSettings,
) -> None:
    result = CliRunner().invoke(main, ["--tier", "small"], env=runner_env(runner_settings))
    assert result.exit_code == EXIT_NO_TOPOLOGY, result.output
    assert (
        "consumer small-workers on stream P8FS_STORAGE_EVENTS_SMALL not found: "
        "run `p8fs-run router` first"
    ) in result.output
    # The same through the `worker` verb.
    result = CliRunner().invoke(
        main, ["worker", "--tier", "large"], env=runner_env(runner_settings)
    )
    assert result.exit_code == EXIT_NO_TOPOLOGY
    assert "consumer large-workers on stream P8FS_STORAGE_EVENTS_LARGE not found" in result.output


def test_router_setup_then_status_shows_every_queue(runner_settings: RunnerSettings) -> None:
    env = runner_env(runner_settings)
    cli = CliRunner()
    setup = cli.invoke(main, ["router", "--setup-only"], env=env)
    assert setup.exit_code == 0, setup.output  # its one summary line: see the test below

    status = cli.invoke(main, ["status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    rows = {q["queue"]: q for q in data["queues"]}
    assert set(rows) == {"router", "small", "medium", "large", "test"}
    assert all(q["stream_exists"] and q["consumer_exists"] for q in rows.values())
    assert rows["small"]["durable"] == "small-workers" and rows["small"]["pending"] == 0
    assert data["dead_letters"] == 0

    table = cli.invoke(main, ["status"], env=env)
    assert table.exit_code == 0
    for name in ("P8FS_STORAGE_EVENTS_SMALL", "medium-workers", "test-workers", "dead-letter"):
        assert name in table.output


def test_status_counts_pending_messages(runner_settings: RunnerSettings) -> None:
    import asyncio

    from p8fs_runner import tiers
    from p8fs_runner.connection import connect_nats

    env = runner_env(runner_settings)
    assert CliRunner().invoke(main, ["router", "--setup-only"], env=env).exit_code == 0

    async def publish() -> None:
        nc = await connect_nats(runner_settings)
        for i in range(3):
            await nc.jetstream().publish(tiers.MEDIUM.subject, f'{{"n": {i}}}'.encode())
        await nc.close()

    asyncio.run(publish())
    data = json.loads(CliRunner().invoke(main, ["status", "--json"], env=env).output)
    medium = next(q for q in data["queues"] if q["queue"] == "medium")
    assert (medium["messages"], medium["pending"], medium["ack_pending"]) == (3, 3, 0)


def test_dlq_commands(runner_settings: RunnerSettings) -> None:
    env = runner_env(runner_settings)
    cli = CliRunner()
    assert cli.invoke(main, ["router", "--setup-only"], env=env).exit_code == 0
    listed = cli.invoke(main, ["dlq", "list", "--json"], env=env)
    assert listed.exit_code == 0 and listed.output == ""
    usage = cli.invoke(main, ["dlq", "replay"], env=env)
    assert usage.exit_code == 2 and "--all" in usage.output
    missing = cli.invoke(main, ["dlq", "replay", "42"], env=env)
    assert missing.exit_code == 1 and "no dead letter with sequence 42" in missing.output


def test_an_unreachable_nats_is_a_clear_error(tmp_path: pytest.TempPathFactory) -> None:
    from tests.fixtures.servers import free_port

    env = {
        "P8FS_NATS_URL": f"nats://127.0.0.1:{free_port()}",
        "P8FS_SEAWEEDFS_ENDPOINT": "http://127.0.0.1:1",
        "P8FS_DATA_DIR": str(tmp_path),
        "P8FS_METRICS_PORT": "0",
    }
    result = CliRunner().invoke(main, ["status"], env=env)
    assert result.exit_code == EXIT_SERVICES
    assert "cannot connect to NATS at nats://127.0.0.1:" in result.output


def test_the_seed_verbs_exist_in_the_core_cli() -> None:
    from p8fs.cli import main as core_main

    cli = CliRunner()
    worker = cli.invoke(core_main, ["storage-worker", "--help"])
    assert worker.exit_code == 0, worker.output
    assert "--send-sample" in worker.output and "--tier" in worker.output
    router = cli.invoke(core_main, ["router", "--help"])
    assert router.exit_code == 0 and "--worker-id" in router.output


def test_dreaming_is_delegated_to_the_agents_worker() -> None:
    result = CliRunner().invoke(main, ["dreaming", "process", "--help"])
    assert result.exit_code == 0, result.output
    # Options only the agents' own group has: the arguments really reached it.
    assert "--tenant-id" in result.output and "--completion" in result.output


def test_tier_options_and_sub_commands_do_not_mix() -> None:
    result = CliRunner().invoke(main, ["--tier", "small", "status"])
    assert result.exit_code == 2 and "without a sub-command" in result.output


def _run_cli(settings: RunnerSettings, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m p8fs_runner ARGS`` in a process of its own: what a user's terminal shows
    (stdout and stderr, with the CLI's own logging set-up)."""
    return subprocess.run(
        [sys.executable, "-m", "p8fs_runner", *args],
        env={**os.environ, **runner_env(settings)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_setting_up_twice_says_one_line_and_then_up_to_date(runner_settings: RunnerSettings) -> None:
    first = _run_cli(runner_settings, "router", "--setup-only")
    second = _run_cli(runner_settings, "router", "--setup-only")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    first_lines = [line for line in first.stderr.splitlines() if "topology" in line]
    second_lines = [line for line in second.stderr.splitlines() if "topology" in line]
    assert len(first_lines) == 1 and "streams created" in first_lines[0], first.stderr
    assert len(second_lines) == 1 and "up to date" in second_lines[0], second.stderr
    assert "streams updated" not in second.stderr


def test_quick_commands_print_no_connection_chatter(runner_settings: RunnerSettings) -> None:
    assert _run_cli(runner_settings, "router", "--setup-only").returncode == 0
    for command in (["status"], ["dlq", "list"]):
        done = _run_cli(runner_settings, *command)
        assert done.returncode == 0, done.stderr
        assert "disconnected from NATS" not in done.stdout + done.stderr, command
        assert " INFO " not in done.stderr, (command, done.stderr)


async def test_the_router_logs_each_invalid_event_it_dead_letters(
    runner_settings: RunnerSettings, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    from p8fs_runner.connection import connect_nats
    from p8fs_runner.service import serve_router

    assert _run_cli(runner_settings, "router", "--setup-only").returncode == 0
    nc = await connect_nats(runner_settings)
    try:
        await nc.jetstream().publish("p8fs.storage.events", b"{not json")
    finally:
        await nc.close()
    stop = asyncio.Event()
    caplog.set_level("ERROR", logger="p8fs_runner.router")
    task = asyncio.create_task(serve_router(runner_settings, stop, metrics_port=0))
    for _ in range(200):
        if any("dead-lettered an invalid storage event" in r.message for r in caplog.records):
            break
        await asyncio.sleep(0.05)
    stop.set()
    run = await task
    assert run.stats.invalid == 1
    [record] = [r for r in caplog.records if "invalid storage event" in r.message]
    assert "P8FS_STORAGE_EVENTS seq 1" in record.message and record.levelname == "ERROR"
