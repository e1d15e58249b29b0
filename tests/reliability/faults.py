"""Fault injection against real services: databases a test may stop, a NATS server it may
restart, an S3 endpoint it may cut off, and runner processes it may kill.

Everything here starts real programs on free loopback ports and cleans up after itself:

* :class:`ThrowawayPostgres` and :class:`ThrowawayMariaDB` -- a private database server in a
  temporary folder (``initdb`` + ``pg_ctl``; ``mariadb-install-db`` + ``mariadbd``), because a
  test that stops the database must never stop the machine's shared one;
* :class:`RestartableNats` -- the embedded ``nats-server``, stopped and started again on the same
  port, with the same credentials and the same JetStream store (its messages must survive);
* :class:`PausableProxy` -- a TCP proxy in front of the S3 port; ``pause()`` refuses new
  connections and cuts the open ones, which is deterministic where killing ``weed`` is not
  (it takes seconds to come back, and not always on the same volume); with
  :class:`DropJetStreamAcks` as its filter, in front of NATS, it lets everything through but a
  client's acknowledgements (a process that "dies between publish and ack", every time);
* :class:`RunnerProcess` -- ``python -m p8fs_runner router|worker --tier T`` as a child process
  with its own metrics port, so a test can see that it holds a file (``p8fs_in_flight``) before
  it SIGKILLs it.

The binaries' locations are read from the environment (``P8FS_TEST_PG_BIN``) or found on the
machine; a missing one skips locally and fails in CI (:func:`tests.fixtures.servers.server_missing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.fixtures.servers import REPO_ROOT, free_port, port_open, server_missing

# -- helpers ----------------------------------------------------------------------------------


def _wait_for(predicate: Any, *, timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:.0f}s")
        time.sleep(interval)


def _service_user(name: str) -> pwd.struct_passwd | None:
    """The account a database server must run as when we are root (they refuse root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(name)
    except KeyError:
        server_missing(f"the {name!r} system account (database servers refuse to run as root)")
        raise


def _private_dir(prefix: str, owner: pwd.struct_passwd | None) -> Path:
    """A fresh folder in the system temporary directory, owned by ``owner``.

    Not under pytest's ``tmp_path``: its parents are private to the current user, so a server
    running as ``postgres`` or ``mysql`` could not reach it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)
    return path


def _as(user: pwd.struct_passwd | None, argv: list[str]) -> list[str]:
    if user is None:
        return argv
    return ["runuser", "-u", user.pw_name, "--", *argv]


# -- PostgreSQL -------------------------------------------------------------------------------


def _pg_bin_dir() -> Path:
    configured = os.environ.get("P8FS_TEST_PG_BIN")
    candidates = [Path(configured)] if configured else []
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).parent)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_ctl").exists():
            return candidate
    server_missing("PostgreSQL's initdb and pg_ctl (set P8FS_TEST_PG_BIN to their folder)")
    raise AssertionError("unreachable")


@dataclass
class ThrowawayPostgres:
    """A PostgreSQL cluster of its own (trust auth, loopback only) that a test may stop."""

    root: Path
    port: int
    bin_dir: Path
    user: pwd.struct_passwd | None
    database: str = "p8fs"
    stops: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _pg_ctl(self, *args: str, timeout: float = 60) -> None:
        argv = _as(self.user, [str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args])
        subprocess.run(argv, check=True, capture_output=True, timeout=timeout)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        self._pg_ctl("-w", "-l", str(self.root / "server.log"), "-o", options, "start")
        _wait_for(lambda: port_open("127.0.0.1", self.port), timeout=30, what="PostgreSQL up")

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, like a crashed or restarted server."""
        self._pg_ctl("-m", "fast", "-w", "stop")
        self.stops += 1

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[ThrowawayPostgres]:
        bin_dir = _pg_bin_dir()
        user = _service_user("postgres")
        root = _private_dir("p8fs-pg-", user)
        server = cls(root=root, port=free_port(), bin_dir=bin_dir, user=user)
        try:
            init = [str(bin_dir / "initdb"), "-D", str(server.data_dir), "--auth=trust"]
            subprocess.run(
                _as(user, [*init, "-U", "postgres", "--no-sync", "-E", "UTF8"]),
                check=True,
                capture_output=True,
                timeout=120,
            )
            server.start()
            subprocess.run(
                [
                    str(bin_dir / "psql"),
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(server.port),
                    "-U",
                    "postgres",
                    "-c",
                    f"CREATE DATABASE {server.database}",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            yield server
        finally:
            with contextlib.suppress(Exception):
                if server.running():
                    server._pg_ctl("-m", "immediate", "-w", "stop")
            shutil.rmtree(root, ignore_errors=True)


# -- MariaDB ----------------------------------------------------------------------------------


@dataclass
class ThrowawayMariaDB:
    """A MariaDB server of its own (root without password, loopback only) that a test may stop."""

    root: Path
    port: int
    user: pwd.struct_passwd | None
    database: str = "p8fs"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    stops: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    @property
    def url(self) -> str:
        return f"mysql+aiomysql://root@127.0.0.1:{self.port}/{self.database}?charset=utf8mb4"

    def start(self) -> None:
        binary = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        argv = [
            binary,
            "--no-defaults",
            f"--datadir={self.data_dir}",
            f"--socket={self.socket}",
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            "--collation-server=utf8mb4_bin",
            "--character-set-server=utf8mb4",
            "--innodb-flush-log-at-trx-commit=0",
            "--skip-log-bin",
            "--max-connections=300",
        ]
        if self.user is not None:
            argv.append(f"--user={self.user.pw_name}")
        log = open(self.root / "server.log", "ab")
        try:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        process = self.process
        _wait_for(
            lambda: process.poll() is not None or port_open("127.0.0.1", self.port),
            timeout=60,
            what="MariaDB up",
        )
        if process.poll() is not None:
            raise RuntimeError(
                f"mariadbd exited with {process.returncode}: "
                + (self.root / "server.log").read_text(errors="replace")[-2000:]
            )

    def stop(self) -> None:
        """SIGTERM and wait: open connections are cut."""
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=60)
        self.stops += 1

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @classmethod
    @contextlib.contextmanager
    def started(cls) -> Iterator[ThrowawayMariaDB]:
        install = shutil.which("mariadb-install-db")
        client = shutil.which("mariadb")
        if (
            install is None
            or client is None
            or not (shutil.which("mariadbd") or Path("/usr/sbin/mariadbd").exists())
        ):
            server_missing("MariaDB's mariadb-install-db, mariadbd and mariadb client")
        assert install is not None and client is not None
        user = _service_user("mysql")
        root = _private_dir("p8fs-mariadb-", user)
        server = cls(root=root, port=free_port(), user=user)
        try:
            argv = [
                install,
                "--no-defaults",
                f"--datadir={server.data_dir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]
            if user is not None:
                argv.append(f"--user={user.pw_name}")
            subprocess.run(argv, check=True, capture_output=True, timeout=180)
            server.start()
            subprocess.run(
                [
                    client,
                    "--no-defaults",
                    f"--socket={server.socket}",
                    "-u",
                    "root",
                    "-e",
                    f"CREATE DATABASE {server.database} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
                ],
                check=True,
                capture_output=True,
                timeout=30,
            )
            yield server
        finally:
            if server.process is not None and server.process.poll() is None:
                server.process.kill()
                server.process.wait(timeout=30)
            shutil.rmtree(root, ignore_errors=True)


# -- NATS -------------------------------------------------------------------------------------


class RestartableNats:
    """The embedded nats-server, restartable on the same port, credentials and store."""

    def __init__(self, data_dir: Path) -> None:
        from p8fs.errors import ConfigurationError
        from p8fs_runner.embedded import EmbeddedServiceError, start_nats

        self._start = start_nats
        try:
            self.server = start_nats(data_dir)
        except ConfigurationError as exc:
            server_missing(f"nats-server ({exc})")
            raise
        except EmbeddedServiceError as exc:  # pragma: no cover - an installed server that fails
            raise AssertionError(f"nats-server failed to start: {exc}") from exc
        self.restarts = 0

    @property
    def address(self) -> str:
        return self.server.address

    def restart(self, down_for: float = 0.0) -> None:
        """SIGTERM (JetStream flushes its store), stay down ``down_for`` s, start again."""
        old = self.server
        old.stop()
        time.sleep(down_for)
        self.server = self._start(
            old.data_dir,
            port=old.port,
            monitor_port=old.monitor_port,
            user=old.user,
            password=old.password.get_secret_value() if old.password else None,
        )
        self.restarts += 1

    def stop(self) -> None:
        self.server.stop()


# -- a pausable TCP proxy ---------------------------------------------------------------------


class StreamFilter(Protocol):
    """Rewrites one direction of a proxied connection, chunk by chunk."""

    def feed(self, data: bytes) -> bytes: ...


class DropJetStreamAcks:
    """Parses a NATS client's protocol stream and drops every acknowledgement it sends.

    Acks (and naks, heartbeats, terms) are ``PUB``/``HPUB`` messages to ``$JS.ACK.<stream>...``.
    Dropping them while everything else passes -- publishes, their PubAcks, pull requests --
    puts a process exactly where a crash between "the tier stream confirmed the publish" and
    "the source was acked" would leave it, every time, instead of hoping a SIGKILL lands in a
    window of microseconds.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self.dropped = 0

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        while True:
            end = self._buffer.find(b"\r\n")
            if end < 0:
                break
            line = self._buffer[:end]
            op = line.split(b" ", 1)[0].upper()
            if op in (b"PUB", b"HPUB"):
                size = int(line.rsplit(b" ", 1)[1])
                frame_end = end + 2 + size + 2
                if len(self._buffer) < frame_end:
                    break  # wait for the rest of the payload
                frame = self._buffer[:frame_end]
                subject = line.split(b" ")[1]
                if subject.startswith(b"$JS.ACK."):
                    self.dropped += 1
                else:
                    out += frame
                self._buffer = self._buffer[frame_end:]
            else:
                out += self._buffer[: end + 2]
                self._buffer = self._buffer[end + 2 :]
        return bytes(out)


class PausableProxy:
    """Forwards ``127.0.0.1:port`` to a target; ``pause()`` makes the target unreachable.

    Paused, the listening socket is closed (new connections are refused at once, as from a
    host that is down) and every open connection is reset (a client's keep-alive pool must not
    slip through). ``resume()`` listens again on the same port. Runs its own event loop in a
    thread, so it works under sync and async tests alike.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        port: int | None = None,
        *,
        upstream_filter: Callable[[], StreamFilter] | None = None,
    ) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        #: Makes one filter per connection for the client-to-target bytes (None: copy as is).
        self.upstream_filter = upstream_filter
        self.filters: list[StreamFilter] = []
        self.pauses = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="p8fs-proxy", daemon=True
        )
        self._thread.start()
        self.resume()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream_filter: StreamFilter | None = None,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if stream_filter is not None:
                    data = stream_filter.feed(data)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            target_r, target_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        pair = {client_w, target_w}
        self._writers |= pair
        try:
            up = self.upstream_filter() if self.upstream_filter is not None else None
            if up is not None:
                self.filters.append(up)
            await asyncio.gather(self._pipe(client_r, target_w, up), self._pipe(target_r, client_w))
        finally:
            self._writers -= pair

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def pause(self) -> None:
        self._call(self._cut())
        self.pauses += 1

    def resume(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self._call(self._listen())
                return
            except OSError:  # the port is in TIME_WAIT or briefly taken: retry
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def close(self) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


# -- runner processes -------------------------------------------------------------------------

_METRIC_LINE = re.compile(
    r"^(?P<name>[a-zA-Z0-9_:]+)\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+-]+)$", re.M
)


class RunnerProcess:
    """``python -m p8fs_runner ARGS`` with its own metrics port and log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.metrics_port = free_port()
        self.log_path = log_dir / f"{name}.log"
        handle = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "p8fs_runner",
                    *args,
                    "--metrics-port",
                    str(self.metrics_port),
                ],
                cwd=REPO_ROOT,
                env={**os.environ, **env},
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        finally:
            handle.close()

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def metrics(self) -> dict[str, float]:
        """``name{labels}`` -> value from the process's ``/metrics`` ({} if it does not answer)."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2
            ) as response:
                text = response.read().decode()
        except OSError:
            return {}
        return {
            f"{m['name']}{{{m['labels']}}}": float(m["value"]) for m in _METRIC_LINE.finditer(text)
        }

    def in_flight(self) -> float:
        """Files this process is processing right now (``p8fs_in_flight``, all tiers)."""
        return sum(v for k, v in self.metrics().items() if k.startswith("p8fs_in_flight{"))

    def kill(self) -> None:
        """SIGKILL: no grace, no nak, no flush -- what an OOM kill or a lost node does."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return int(self.process.returncode)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def runner_env(
    nats: Any,
    *,
    data_dir: Path,
    s3_endpoint: str,
    s3_access_key: str = "",
    s3_secret_key: str = "",
    database_url: str | None = None,
    tier_overrides: dict[str, dict[str, Any]] | None = None,
) -> dict[str, str]:
    """The environment a deployed router or worker would get for these test services.

    ``nats`` is an :class:`~p8fs_runner.embedded.EmbeddedNats`. Embedding is forbidden
    (``P8FS_EMBED_SERVICES=never``): a mistake here must fail, not start private servers.
    """
    import json

    env = {
        "P8FS_NATS_URL": nats.address,
        "P8FS_NATS_USER": nats.user or "",
        "P8FS_NATS_PASSWORD": nats.password.get_secret_value() if nats.password else "",
        "P8FS_NATS_MONITOR_URL": nats.monitor_url,
        "P8FS_SEAWEEDFS_ENDPOINT": s3_endpoint,
        "P8FS_S3_ACCESS_KEY": s3_access_key,
        "P8FS_S3_SECRET_KEY": s3_secret_key,
        "P8FS_DATA_DIR": str(data_dir),
        "P8FS_EMBED_SERVICES": "never",
        "P8FS_TIER_OVERRIDES": json.dumps(tier_overrides or {}),
    }
    if database_url is not None:
        env["P8FS_DATABASE_URL"] = database_url
    return env


def grant_s3_identity(seaweedfs: Any, name: str, access_key: str, secret_key: str) -> None:
    """Give a running SeaweedFS a new S3 identity (read and list), as an operator rotating
    credentials would: ``weed shell`` ``s3.configure -apply``. The S3 gateway accepts it at
    once, without a restart (measured; editing the ``-s3.config`` file is not re-read)."""
    from p8fs_runner.embedded import weed_binary

    command = (
        f"s3.configure -user={name} -access_key={access_key} -secret_key={secret_key} "
        "-actions=Read,List -apply\n"
    )
    done = subprocess.run(
        [
            str(weed_binary()),
            "shell",
            f"-master={seaweedfs.host}:{seaweedfs.master_port}",
            f"-filer={seaweedfs.filer_address}",
        ],
        input=command.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    if access_key.encode() not in done.stdout:
        raise AssertionError(
            f"weed shell s3.configure failed ({done.returncode}): "
            f"{done.stdout.decode(errors='replace')[-500:]}{done.stderr.decode(errors='replace')[-500:]}"
        )
