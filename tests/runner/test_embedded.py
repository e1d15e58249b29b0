"""Embedded nats-server and weed mini: credentials always, loopback only, clean start and stop,
and the embedded-defaults rule of ``ensure_services``."""

from __future__ import annotations

import json
import os
import stat
import urllib.error
import urllib.request
from pathlib import Path

import nats
import pytest
import s3fs
from nats.errors import Error as NatsError

from p8fs.errors import ConfigurationError
from p8fs_runner.embedded import (
    WEED_MIN_VOLUME_SLOTS,
    EmbeddedNats,
    EmbeddedSeaweedFS,
    EmbeddedServiceError,
    ServiceDefaults,
    ensure_services,
    free_port,
    free_weed_port,
    start_nats,
)
from p8fs_runner.settings import RunnerSettings
from tests.fixtures.servers import port_open


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(ip, port) of every TCP socket the process listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            if width == 8:
                ip = ".".join(str(int(hex_ip[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                ip = "ipv6:" + hex_ip
            found.add((ip, int(hex_port, 16)))
    return found


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


# -- NATS ---------------------------------------------------------------------------------


async def test_nats_requires_its_credentials(nats_server: EmbeddedNats) -> None:
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(nats_server.address, allow_reconnect=False, max_reconnect_attempts=0)
    with pytest.raises(NatsError, match="Authorization Violation"):
        await nats.connect(
            nats_server.address,
            user=nats_server.user,
            password="wrong",
            allow_reconnect=False,
            max_reconnect_attempts=0,
        )
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().account_info()
        assert info.streams == 0  # a fresh server per test
    finally:
        await nc.close()
    nc = await nats.connect(**nats_server.connect_options())
    await nc.close()


def test_nats_binds_loopback_only_and_keeps_secrets_off_the_command_line(
    nats_server: EmbeddedNats,
) -> None:
    addresses = listening_addresses(nats_server.pid)
    assert {port for _, port in addresses} == {nats_server.port, nats_server.monitor_port}
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}
    password = nats_server.password.get_secret_value() if nats_server.password else ""
    assert len(password) >= 24
    assert password not in cmdline(nats_server.pid)
    assert password not in repr(nats_server)
    config = nats_server.data_dir / "nats-server.conf"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert password not in nats_server.log_path.read_text()
    assert json.loads(config.read_text())["authorization"]["password"] == password


async def test_nats_token_and_chosen_port(tmp_path: Path) -> None:
    port = free_port()
    with start_nats(tmp_path, port=port, token="s3cr3t-token") as server:
        assert server.port == port and server.user is None
        with pytest.raises(NatsError, match="Authorization Violation"):
            await nats.connect(server.address, allow_reconnect=False, max_reconnect_attempts=0)
        nc = await nats.connect(server.url)
        await nc.close()
        nc = await nats.connect(**server.connect_options())
        await nc.close()
    assert server.process.poll() is not None
    assert not port_open("127.0.0.1", port)


def test_random_credentials_differ_between_servers(tmp_path: Path) -> None:
    with start_nats(tmp_path / "a") as a, start_nats(tmp_path / "b") as b:
        assert a.password is not None and b.password is not None
        assert a.password.get_secret_value() != b.password.get_secret_value()


def test_nats_start_failure_reports_its_log(tmp_path: Path, nats_server: EmbeddedNats) -> None:
    # The port is taken by the fixture's server: the new one must fail, quickly and clearly.
    with pytest.raises(EmbeddedServiceError) as caught:
        start_nats(tmp_path / "second", port=nats_server.port, timeout=10)
    message = str(caught.value)
    assert "nats-server" in message and "address already in use" in message
    assert str(tmp_path / "second" / "nats-server.log") in message


def test_nats_token_and_password_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        start_nats(tmp_path, token="t", password="p")


def test_stop_is_sigterm_then_sigkill(tmp_path: Path) -> None:
    server = start_nats(tmp_path)
    server.stop(timeout=5)
    assert server.process.returncode is not None
    server.stop()  # idempotent


# -- SeaweedFS ------------------------------------------------------------------------------


def test_weed_port_pairs_are_free_and_distinct() -> None:
    taken: set[int] = set()
    ports = [free_weed_port(taken) for _ in range(5)]
    assert len(set(ports)) == 5
    for port in ports:
        assert port + 10000 in taken and port + 10000 < 65536


def test_s3_refuses_anonymous_and_wrong_keys(
    seaweedfs: EmbeddedSeaweedFS, s3_bucket: str, s3fs_filesystem: s3fs.S3FileSystem
) -> None:
    s3fs_filesystem.pipe(f"{s3_bucket}/hello.txt", b"hello")
    assert s3fs_filesystem.cat(f"{s3_bucket}/hello.txt") == b"hello"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(f"{seaweedfs.endpoint}/{s3_bucket}/hello.txt", timeout=5)
    assert anonymous.value.code == 403
    options = seaweedfs.storage_options()
    options["secret"] = "not-the-secret"
    intruder = s3fs.S3FileSystem(skip_instance_cache=True, **options)
    with pytest.raises(PermissionError):
        intruder.cat(f"{s3_bucket}/hello.txt")


def test_weed_has_room_for_many_buckets(seaweedfs: EmbeddedSeaweedFS) -> None:
    """Each bucket (tenant) takes a volume of its own. weed mini's own count (free disk / 1 GiB)
    ran out after 77 buckets on an 80 GB disk and then refused every write to a new bucket,
    which failed a CI run half-way through the suite; the embedded server asks for at least
    WEED_MIN_VOLUME_SLOTS, and the master must report them."""
    with urllib.request.urlopen(
        f"http://{seaweedfs.host}:{seaweedfs.master_port}/dir/status", timeout=10
    ) as response:
        topology = json.load(response)["Topology"]
    assert topology["Max"] >= WEED_MIN_VOLUME_SLOTS


def test_weed_binds_loopback_only_and_keeps_secrets_off_the_command_line(
    seaweedfs: EmbeddedSeaweedFS,
) -> None:
    addresses = listening_addresses(seaweedfs.pid)
    assert addresses, "weed mini listens on something"
    assert {ip for ip, _ in addresses} == {"127.0.0.1"}
    ports = {port for _, port in addresses}
    assert {seaweedfs.s3_port, seaweedfs.filer_port, seaweedfs.filer_port + 10000} <= ports
    assert seaweedfs.secret_key not in cmdline(seaweedfs.pid)
    assert seaweedfs.secret_key not in repr(seaweedfs)
    config = seaweedfs.data_dir / "s3.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    logs = [seaweedfs.log_path, *sorted((seaweedfs.data_dir / "logs").glob("*"))]
    for log in logs:
        if log.is_file():
            assert seaweedfs.secret_key not in log.read_text(errors="replace"), log.name


# -- ensure_services -------------------------------------------------------------------------


def _free_defaults() -> ServiceDefaults:
    taken: set[int] = set()
    return ServiceDefaults(
        nats_port=free_port(),
        nats_monitor_port=free_port(),
        s3_port=free_weed_port(taken),
        filer_port=free_weed_port(taken),
    )


def _settings(tmp_path: Path, **values: object) -> RunnerSettings:
    return RunnerSettings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


def test_configured_services_are_never_embedded(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        nats_url="nats://broker.example:4222",
        seaweedfs_endpoint="http://s3.example:8333",
        embed_services="never",
    )
    with ensure_services(settings, defaults=_free_defaults()) as resolved:
        assert not resolved.embedded
        assert resolved.settings.nats_url == "nats://broker.example:4222"
        assert resolved.settings.seaweedfs_endpoint == "http://s3.example:8333"
        assert resolved.notes == []
        # Production: probes must be reachable by the kubelet and Prometheus.
        assert resolved.settings.metrics_host is None
    assert not (tmp_path / "embedded").exists()


def test_a_server_answering_on_the_default_is_used(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    defaults = ServiceDefaults(nats_port=nats_server.port, s3_port=free_weed_port())
    settings = _settings(tmp_path, seaweedfs_endpoint="http://s3.example:8333")
    with ensure_services(settings, defaults=defaults) as resolved:
        assert resolved.nats is None
        assert resolved.settings.nats_url == nats_server.address
        assert resolved.notes == [f"using the NATS server answering at {nats_server.address}"]
        # Development: the probe server stays on loopback too.
        assert resolved.settings.metrics_host == "127.0.0.1"


def test_nothing_configured_and_never_embed_is_an_error(tmp_path: Path) -> None:
    settings = _settings(tmp_path, embed_services="never")
    with (
        pytest.raises(ConfigurationError, match="P8FS_NATS_URL"),
        ensure_services(settings, defaults=_free_defaults()),
    ):
        pass


@pytest.mark.slow
async def test_nothing_configured_starts_both_and_a_second_runner_joins(tmp_path: Path) -> None:
    defaults = _free_defaults()
    with ensure_services(_settings(tmp_path), defaults=defaults) as first:
        assert first.nats is not None and first.seaweedfs is not None
        assert first.nats.port == defaults.nats_port
        assert first.seaweedfs.s3_port == defaults.s3_port
        assert first.data_dir == tmp_path / "embedded"
        assert any("started nats-server" in note for note in first.notes)
        assert any("started SeaweedFS" in note for note in first.notes)
        # The printed notes never carry a secret.
        secret = first.settings.s3_secret_key
        assert secret is not None
        assert all(secret.get_secret_value() not in note for note in first.notes)

        nc = await nats.connect(**first.settings.nats_connect_options())
        await nc.close()
        fs = s3fs.S3FileSystem(
            skip_instance_cache=True,
            key=first.settings.s3_access_key.get_secret_value(),  # type: ignore[union-attr]
            secret=secret.get_secret_value(),
            client_kwargs={"endpoint_url": first.settings.seaweedfs_endpoint},
        )
        fs.mkdir("embedded-check")
        fs.pipe("embedded-check/a.txt", b"a")

        # A runner in a second terminal finds them and their credentials.
        with ensure_services(_settings(tmp_path), defaults=defaults) as second:
            assert not second.embedded
            assert any("another runner embedded" in note for note in second.notes)
            nc = await nats.connect(**second.settings.nats_connect_options())
            await nc.close()
            assert second.settings.s3_secret_key == secret
            assert second.settings.seaweedfs_filer == first.seaweedfs.filer_address
    assert first.nats.process.poll() is not None
    assert first.seaweedfs.process.poll() is not None
    assert not (tmp_path / "embedded" / "services.json").exists()
    assert not port_open("127.0.0.1", defaults.nats_port)


async def test_probe_server_binds_the_configured_host() -> None:
    import socket

    from p8fs_runner.metrics import start_probe_server
    from tests.fixtures.servers import free_port

    port = free_port()
    server = await start_probe_server(None, port, "127.0.0.1")
    assert server is not None
    try:
        listening = {s.getsockname()[0] for s in server._server.sockets}  # type: ignore[union-attr]
        assert listening == {"127.0.0.1"}
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        await server.stop()
