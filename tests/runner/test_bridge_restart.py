"""The bridge across a filer restart, and without the ``weed`` binary.

A throwaway ``weed mini`` (started by the same code as the session fixture, so the restart does
not disturb other tests) is stopped and started again on the same data folder and the same
S3/filer ports while objects are uploaded before, during and after the outage. Every upload
must reach ``p8fs.storage.events`` exactly once, the bridge must come back by itself from its
checkpoint, and it logs the outage once, not once per retry.

The bridge command is also run as a real process with ``P8FS_WEED_BIN`` pointing nowhere and no
``weed`` on ``PATH``: it subscribes over gRPC, so it needs none.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from p8fs.errors import ConfigurationError
from p8fs_runner.embedded import EmbeddedNats, EmbeddedSeaweedFS
from p8fs_runner.events import EventType, parse_event
from p8fs_runner.settings import RunnerSettings
from tests.fixtures.servers import server_missing
from tests.runner.test_bridge import RunningBridge, _connect, stream_messages, wait_for

#: Objects uploaded in each phase: before the stop, racing the stop, while the filer is down,
#: after it is back.
PER_PHASE = 15


def _start_weed(data_dir: Path, **ports: Any) -> EmbeddedSeaweedFS:
    from p8fs_runner.embedded import EmbeddedServiceError, start_seaweedfs

    try:
        return start_seaweedfs(data_dir, **ports)
    except ConfigurationError as exc:
        server_missing(f"SeaweedFS weed ({exc})")
        raise
    except EmbeddedServiceError as exc:
        pytest.fail(f"weed is installed but failed to start: {exc}")


@pytest.fixture
def own_weed(tmp_path: Path) -> Iterator[list[EmbeddedSeaweedFS]]:
    """A throwaway ``weed mini`` this test may stop and restart; the list holds the current
    process (a restart appends the new one) and every one is stopped at the end."""
    servers = [_start_weed(tmp_path / "weed")]
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


def _settings(tmp_path: Path, nats: EmbeddedNats, weed: EmbeddedSeaweedFS) -> RunnerSettings:
    return RunnerSettings(
        _env_file=None,
        data_dir=tmp_path / "data",
        storage_provider="sqlite",
        nats_url=nats.address,
        nats_user=nats.user,
        nats_password=nats.password,
        seaweedfs_endpoint=weed.endpoint,
        seaweedfs_filer=weed.filer_address,
        s3_access_key=SecretStr(weed.access_key),
        s3_secret_key=SecretStr(weed.secret_key),
        metrics_port=0,
        bridge_path_prefix="/buckets/restart",
        bridge_start_ago=600.0,
    )


def _s3(weed: EmbeddedSeaweedFS) -> Any:
    import s3fs

    return s3fs.S3FileSystem(
        skip_instance_cache=True,
        use_listings_cache=False,
        config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 5},
        **weed.storage_options(),
    )


def _put_until_stored(fs: Any, path: str, body: bytes, deadline: float) -> int:
    """Upload, retrying while the server is down; returns the attempts it took."""
    attempts = 0
    while True:
        attempts += 1
        try:
            fs.pipe(path, body)
            return attempts
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.slow
async def test_filer_restart_under_uploads_loses_and_repeats_nothing(
    tmp_path: Path,
    nats_server: EmbeddedNats,
    own_weed: list[EmbeddedSeaweedFS],
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = own_weed[0]
    settings = _settings(tmp_path, nats_server, first)
    fs = _s3(first)
    fs.mkdir("restart")
    nc, js = await _connect(settings)
    caplog.set_level(logging.INFO, logger="p8fs_runner.bridge")
    uploaded: list[str] = []
    retried_uploads = 0

    # Uploads block while the filer is down: give them their own threads, so the default
    # executor stays free for restarting the filer.
    uploads = ThreadPoolExecutor(max_workers=PER_PHASE + 2, thread_name_prefix="upload")
    loop = asyncio.get_running_loop()

    async def put(key: str) -> None:
        nonlocal retried_uploads
        deadline = time.monotonic() + 90
        attempts = await loop.run_in_executor(
            uploads, _put_until_stored, fs, f"restart/{key}", key.encode(), deadline
        )
        retried_uploads += attempts > 1
        uploaded.append(key)

    async def upload(phase: str) -> None:
        """One after the other, as a client streaming files in."""
        for i in range(PER_PHASE):
            await put(f"{phase}-{i:03d}.txt")
            await asyncio.sleep(0.02)

    async def keys_published() -> set[str]:
        return {body.get("key", "") for _, body in await stream_messages(js)}

    try:
        async with RunningBridge(settings) as running:
            bridge = running.bridge
            assert bridge is not None
            await upload("before")

            async def before_seen() -> bool:
                return len(await keys_published()) == PER_PHASE

            await wait_for(before_seen)

            # Stop the filer (SIGTERM, as Kubernetes would) while a client is uploading (its
            # uploads race the stop), then upload more while it is down: those are refused and
            # retried until the restarted filer takes them.
            racing = asyncio.create_task(upload("racing"))
            await asyncio.sleep(0.2)
            await asyncio.to_thread(first.stop)
            stopped_at = time.monotonic()
            during = [asyncio.create_task(put(f"during-{i:03d}.txt")) for i in range(PER_PHASE)]

            async def lost() -> bool:
                return not bridge.following()

            await wait_for(lost, within=15)
            await asyncio.sleep(2.0)  # several resubscription attempts fail meanwhile
            second = await asyncio.to_thread(
                _start_weed,
                first.data_dir,
                access_key=first.access_key,
                secret_key=first.secret_key,
                s3_port=first.s3_port,
                filer_port=first.filer_port,
            )
            own_weed.append(second)
            back_at = time.monotonic()

            async def resubscribed() -> bool:
                return bridge.following()

            await wait_for(resubscribed, within=30)
            resubscribed_after = time.monotonic() - back_at
            await asyncio.gather(racing, *during)
            await upload("after")

            async def all_seen() -> bool:
                return len(await keys_published()) >= 4 * PER_PHASE

            await wait_for(all_seen, within=60)
            caught_up_after = time.monotonic() - back_at
            await asyncio.sleep(1.0)  # let anything that would be a duplicate arrive
        messages = await stream_messages(js)
        listing = sorted(p.rsplit("/", 1)[1] for p in await asyncio.to_thread(fs.ls, "restart"))
    finally:
        uploads.shutdown(wait=False, cancel_futures=True)
        await nc.close()

    events = [parse_event(body) for _, body in messages]
    assert all(e is not None for e in events)
    creates = Counter(e.key for e in events if e is not None and e.event_type is EventType.CREATE)
    # Every object published, once; nothing the filer holds is missing from the stream.
    assert sorted(creates) == sorted(uploaded) == listing
    assert set(creates.values()) == {1}, creates.most_common(3)
    # Each filer change at most once (an upload retried after a lost response may add a real
    # second change, an update, with its own filer time).
    changes = Counter((e.event_type, e.key, e.ts_ns) for e in events if e is not None)
    assert set(changes.values()) == {1}
    ids = [msg_id for msg_id, _ in messages]
    assert len(set(ids)) == len(ids)
    assert running.stats.subscriptions >= 2 and running.stats.outages == 1
    assert running.stats.invalid == 0
    assert retried_uploads >= PER_PHASE  # the "during" uploads really met a stopped filer
    # One warning when the stream was lost, one when it was back: not one per attempt.
    outage_logs = [
        r.getMessage()
        for r in caplog.records
        if r.name == "p8fs_runner.bridge" and r.levelno >= logging.WARNING
    ]
    assert len(outage_logs) == 2, outage_logs
    assert "ended" in outage_logs[0] and "again after" in outage_logs[1]
    assert running.stats.subscribe_attempts > 3  # retries happened, silently
    print(
        f"\nfiler down {back_at - stopped_at:.1f} s; bridge resubscribed "
        f"{resubscribed_after:.2f} s after the filer was back, all {len(uploaded)} objects "
        f"published {caught_up_after:.2f} s after; {retried_uploads} uploads needed retries; "
        f"{running.stats.subscribe_attempts} subscribe attempts"
    )


async def test_bridge_command_runs_without_the_weed_binary(
    tmp_path: Path,
    runner_settings: RunnerSettings,
    seaweedfs: EmbeddedSeaweedFS,
    s3fs_filesystem: Any,
    s3_bucket: str,
) -> None:
    """``p8fs-run bridge`` as a process, with ``P8FS_WEED_BIN`` naming a missing file (any
    lookup of ``weed`` would fail) and ``PATH`` without ``weed``: it publishes an upload and
    stops cleanly on SIGTERM."""
    nc, js = await _connect(runner_settings)
    assert runner_settings.nats_password is not None
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "P8FS_WEED_BIN": str(tmp_path / "no-weed-here"),
        "P8FS_EMBED_SERVICES": "never",
        "P8FS_DATA_DIR": str(tmp_path / "data"),
        "P8FS_NATS_URL": runner_settings.resolved_nats_url(),
        "P8FS_NATS_USER": runner_settings.nats_user or "",
        "P8FS_NATS_PASSWORD": runner_settings.nats_password.get_secret_value(),
        "P8FS_SEAWEEDFS_ENDPOINT": seaweedfs.endpoint,
        "P8FS_SEAWEEDFS_FILER": seaweedfs.filer_address,
        "P8FS_S3_ACCESS_KEY": seaweedfs.access_key,
        "P8FS_S3_SECRET_KEY": seaweedfs.secret_key,
        "P8FS_BRIDGE_PATH_PREFIX": f"/buckets/{s3_bucket}",
        "P8FS_BRIDGE_START_AGO": "600",
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    assert all(not (Path(d) / "weed").exists() for d in env["PATH"].split(":"))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p8fs_runner.cli",
        "bridge",
        "--metrics-port",
        "0",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.to_thread(s3fs_filesystem.pipe, f"{s3_bucket}/no-weed.txt", b"grpc only")

        async def published() -> bool:
            assert process.returncode is None, await process.communicate()
            return len(await stream_messages(js)) == 1

        await wait_for(published, within=60)
        messages = await stream_messages(js)
    finally:
        await nc.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        except TimeoutError:
            process.kill()
            raise
    assert [body["key"] for _, body in messages] == ["no-weed.txt"]
    assert process.returncode == 0, stderr.decode()
    assert b"weed" not in stderr.lower().replace(b"seaweedfs", b""), stderr.decode()
