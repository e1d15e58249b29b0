"""The self-test end to end (upload to SeaweedFS, TEST queue, process, verify), the SIGTERM of a
worker process mid-file, and the metrics/probe endpoints."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from click.testing import CliRunner

from p8fs_runner import tiers
from p8fs_runner.cli import main
from tests.fixtures.servers import REPO_ROOT, corpus_path
from tests.runner.test_cli import runner_env

if TYPE_CHECKING:
    from p8fs_runner.settings import RunnerSettings


def test_send_sample_runs_the_three_steps_on_the_test_queue(
    runner_settings: RunnerSettings,
) -> None:
    sample = corpus_path("pdf/spf_minimal-document.pdf")
    env = runner_env(runner_settings)
    result = CliRunner().invoke(main, ["--tier", "small", "--send-sample", str(sample)], env=env)
    out = result.output
    assert result.exit_code == 0, out
    size = sample.stat().st_size
    for line in (
        "📤 Step 1: Uploading spf_minimal-document.pdf to SeaweedFS...",
        "✅ Uploaded to: test/spf_minimal-document.pdf",
        f"   Size: {size:,} bytes",
        "📨 Step 2: Publishing test event to NATS...",
        "✅ Published to: p8fs.storage.events.test",
        "⚙️  Step 3: Processing event from queue...",
        "✅ Received message from queue",
        "✅ Successfully processed spf_minimal-document.pdf",
        "📊 Verify in database:",
        "WHERE tenant_id = 'tenant-test'",
        "spf_minimal-document_chunk_0",
    ):
        assert line in out, f"missing {line!r} in:\n{out}"
    assert "Created 1 chunks in" in out or "Created " in out

    async def check() -> None:
        from p8fs.database import Database
        from p8fs_runner.connection import connect_nats

        db = Database.from_settings(runner_settings)
        try:
            [stored] = await db.list_files("tenant-test")
            assert stored.uri == "s3://tenant-test/test/spf_minimal-document.pdf"
            resources = await db.list_resources("tenant-test", file_id=stored.id)
            assert resources and "Lorem ipsum" in resources[0].content
        finally:
            await db.dispose()
        nc = await connect_nats(runner_settings)
        js = nc.jetstream()
        try:
            # Only the TEST queue was touched: no production stream even exists.
            test = await js.consumer_info(tiers.TEST.stream, tiers.TEST.durable)
            assert (test.num_pending, test.num_ack_pending, test.delivered.stream_seq) == (0, 0, 1)
            for spec in tiers.TIERS.values():
                names = [s.config.name for s in await js.streams_info()]
                assert spec.stream not in names
        finally:
            await nc.close()

    asyncio.run(check())


#: What must never appear in the self-test's output: a logged error, a traceback, or an asyncio
#: task whose exception nobody retrieved (the README's first command must print none of them).
DIRTY_OUTPUT = ("ERROR", "Traceback", "Task exception", "Exception ignored", "Unclosed")


def test_send_sample_output_is_clean_in_a_fresh_process(runner_settings: RunnerSettings) -> None:
    """The README's command, as a user runs it: a fresh ``p8fs-run`` process (the garbage
    collector, imports and loop shutdown behave as in real use, unlike the in-process runner
    above) sends the README's sample. Its output must have no error line and no traceback; the
    upload's S3 client used to be closed on the wrong loop, printing "Task exception was never
    retrieved ... attached to a different loop" between step 2 and step 3."""
    sample = corpus_path("p8fs_sample_data/content/Sample.pdf")
    env = {k: v for k, v in os.environ.items() if not k.startswith("P8FS_")}
    env.update(runner_env(runner_settings))
    env["PYTHONWARNINGS"] = "default::ResourceWarning"  # unclosed sockets and files, too
    result = subprocess.run(
        [sys.executable, "-m", "p8fs_runner", "--tier", "small", "--send-sample", str(sample)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "✅ Successfully processed Sample.pdf" in output, output
    dirty = [line for line in output.splitlines() if any(m in line for m in DIRTY_OUTPUT)]
    assert dirty == [], output


def _worker_process(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``p8fs-run worker --tier small`` in its own process, with the test providers registered."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.runner.providers_for_tests",
            "worker",
            "--tier",
            "small",
            "--grace",
            "1",
        ],
        cwd=REPO_ROOT,
        env={**os.environ, **env, "P8FS_TEST_PROVIDER_LOG": str(log)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def test_sigterm_mid_file_hands_the_file_back_at_once(
    runner_settings: RunnerSettings, s3_bucket: str, s3fs_filesystem: object, tmp_path: Path
) -> None:
    env = runner_env(runner_settings)
    assert CliRunner().invoke(main, ["router", "--setup-only"], env=env).exit_code == 0
    with s3fs_filesystem.open(f"{s3_bucket}/slow/sigterm.slow", "wb") as handle:  # type: ignore[attr-defined]
        handle.write(b"sleep=60\nthis file is still being read when the pod is stopped")
    log = tmp_path / "calls.log"

    async def scenario() -> tuple[int, bytes, int]:
        from p8fs_runner.connection import connect_nats

        nc = await connect_nats(runner_settings)
        js = nc.jetstream()
        await js.publish(
            tiers.SMALL.subject,
            json.dumps(
                {
                    "event_type": "create",
                    "path": f"/buckets/{s3_bucket}/slow/sigterm.slow",
                    "size": 60,
                }
            ).encode(),
        )
        worker = _worker_process(env, log)
        try:
            for _ in range(600):  # until the provider is running on the file
                if log.exists() and log.read_text().strip():
                    break
                await asyncio.sleep(0.05)
            assert log.read_text().strip(), "the worker never started the file"
            worker.send_signal(signal.SIGTERM)
            output, _ = await asyncio.to_thread(worker.communicate, timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
        # Handed back with a nak: deliverable right now although the ack wait is 60 s.
        sub = await js.pull_subscribe_bind(durable=tiers.SMALL.durable, stream=tiers.SMALL.stream)
        [again] = await sub.fetch(1, timeout=2)
        await again.term()
        await nc.close()
        return worker.returncode, output, again.metadata.num_delivered

    code, output, delivered = asyncio.run(scenario())
    assert code == 0, output.decode(errors="replace")
    assert b"SIGTERM received: stopping" in output
    assert b"1 handed back" in output
    assert delivered == 2


async def test_probe_server_serves_metrics_health_and_readiness() -> None:
    from p8fs_runner import metrics
    from tests.fixtures.servers import free_port

    ready = {"ok": False}

    async def is_ready() -> bool:
        return ready["ok"]

    metrics.PROCESSED.labels("small").inc()
    server = await metrics.start_probe_server(is_ready, free_port())
    assert server is not None and server.port

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    try:
        status, body = await asyncio.to_thread(get, "/metrics")
        assert status == 200
        assert 'p8fs_files_processed_total{tier="small"}' in body
        for name in (
            "p8fs_files_failed_total",
            "p8fs_bytes_processed_total",
            "p8fs_processing_seconds",
        ):
            assert f"# TYPE {name}" in body
        assert await asyncio.to_thread(get, "/healthz") == (200, "ok\n")
        assert await asyncio.to_thread(get, "/readyz") == (503, "not ready\n")
        ready["ok"] = True
        assert await asyncio.to_thread(get, "/readyz") == (200, "ready\n")
        assert (await asyncio.to_thread(get, "/nope"))[0] == 404
    finally:
        await server.stop()
    assert await metrics.start_probe_server(is_ready, 0) is None  # 0 = off
