"""Secrets never leak: a run that fails in every way it can, then a scan of everything it left.

The run (one per module, against real nats-server, weed mini, SQLite, PostgreSQL, MariaDB and the
local LLM server) fails with:

* a wrong S3 secret key (transient, retried, then dead-lettered), in-process and in a real
  ``p8fs-run -vv worker`` process;
* a wrong MariaDB password in ``P8FS_DATABASE_URL`` (configuration error) and an unreachable
  PostgreSQL whose URL carries a password (transient), through the worker, ``aingest``,
  ``p8fs db init`` and ``p8fs process``;
* a wrong NATS password (settings field and inline in the URL) for ``p8fs-run status``, ``dlq
  list`` and ``connect_nats``;
* an LLM key sent to a server answering 401 and then 500, for the dreaming worker in-process and
  through ``p8fs-run dreaming process``;
* an encrypted PDF whose (wrong) password rides in the event metadata, and a corrupt PDF.

Evidence collected: every log record at DEBUG in this process (a root handler, as caplog would),
stdout and stderr of every CLI command, every ``errors`` and ``jobs`` row, every dead letter
(headers and payload), the text and traceback of every exception the run raised, and the
``repr`` of the settings and clients holding the secrets. Each secret is a distinctive random
string (``S3CRET-<uuid>`` ...), plus the real credentials of the test servers, which the
successful parts used. One exception, on purpose: an event's own ``metadata.password`` (a
document password) stays in the dead letter's *payload*, which is the original event byte for
byte so that ``dlq replay`` can restore it; every rendering of a dead letter masks it.

Also here: embedded services refuse anonymous clients and never bind beyond loopback (beside
``tests/runner/test_embedded.py``), the NATS creds-file/NKey option works against a real server,
and the probe server binds loopback when services are embedded.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import SecretStr

from p8fs.database import Database
from p8fs.models import Session
from p8fs_runner import tiers
from tests.fixtures.llm import FakeLLMServer, HTTPFailure
from tests.fixtures.servers import corpus_path

if TYPE_CHECKING:
    from p8fs_runner.embedded import EmbeddedNats, EmbeddedSeaweedFS
    from p8fs_runner.settings import RunnerSettings

TENANT = "t-security"
#: Short retries so transient failures are dead-lettered within seconds.
FAST = tiers.SMALL.with_overrides(backoff=(1.0,), max_deliver=2, batch=4, concurrency=2)
TEST_OVERRIDES = json.dumps({"test": {"backoff": [1.0], "max_deliver": 2}})


def _secret(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class Evidence:
    """Everything the run left behind, by kind, as (source, text) pairs."""

    logs: list[tuple[str, str]] = field(default_factory=list)
    cli: list[tuple[str, str]] = field(default_factory=list)
    errors_rows: list[tuple[str, str]] = field(default_factory=list)
    jobs_rows: list[tuple[str, str]] = field(default_factory=list)
    dead_letter_headers: list[tuple[str, str]] = field(default_factory=list)
    dead_letter_payloads: list[tuple[str, str]] = field(default_factory=list)
    exceptions: list[tuple[str, str]] = field(default_factory=list)
    reprs: list[tuple[str, str]] = field(default_factory=list)
    #: name -> value of every secret of the run.
    secrets: dict[str, str] = field(default_factory=dict)
    #: Facts proving each failure really happened (checked by test_the_run_failed_in_every_way).
    facts: dict[str, Any] = field(default_factory=dict)
    scans: int = 0

    def leaks(self, kind: str, *, skip: tuple[str, ...] = ()) -> list[str]:
        found = []
        for source, text in getattr(self, kind):
            for name, value in self.secrets.items():
                if name in skip:
                    continue
                self.scans += 1
                at = text.find(value)
                if at >= 0:
                    context = text[max(0, at - 120) : at + len(value) + 40].replace("\n", "⏎")
                    found.append(f"{name} in {source}: …{context}…")
        return found


class _Collect(logging.Handler):
    """Every record of every logger, formatted with its traceback (what any log sink gets)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append(self.format(record))
        except Exception as exc:  # a record that cannot format is evidence too
            self.records.append(f"unformattable record {record.msg!r}: {exc}")


@contextlib.contextmanager
def capture_all_logging() -> Iterator[_Collect]:
    handler = _Collect()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mariadb_wrong_password_url(password: str) -> str:
    from tests.fixtures.db import server_url

    return server_url("mariadb").set(password=password).render_as_string(hide_password=False)


def _pg_unreachable_url(password: str) -> str:
    return f"postgresql+asyncpg://p8fs:{password}@127.0.0.1:{closed_port()}/p8fs"


def clean_env(**values: str) -> dict[str, str]:
    """The machine's environment without any p8fs/LLM variable, plus ``values``."""
    prefixes = ("P8FS_", "ANTHROPIC_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(values)
    return env


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Stage:
    nats: EmbeddedNats
    weed: EmbeddedSeaweedFS
    root: Path
    sqlite_url: str
    llm: FakeLLMServer
    evidence: Evidence

    def runner_settings(self, **changes: Any) -> RunnerSettings:
        from p8fs_runner.settings import RunnerSettings

        values: dict[str, Any] = dict(
            data_dir=self.root / "data",
            database_url=self.sqlite_url,
            nats_url=self.nats.address,
            nats_user=self.nats.user,
            nats_password=self.nats.password,
            seaweedfs_endpoint=self.weed.endpoint,
            s3_access_key=SecretStr(self.weed.access_key),
            s3_secret_key=SecretStr(self.weed.secret_key),
            metrics_port=0,
        )
        values.update(changes)
        return RunnerSettings(_env_file=None, **values)  # type: ignore[call-arg]

    def base_env(self, **values: str) -> dict[str, str]:
        settings = {
            "P8FS_NATS_URL": self.nats.url,  # the real password inline: it must not print
            "P8FS_SEAWEEDFS_ENDPOINT": self.weed.endpoint,
            "P8FS_S3_ACCESS_KEY": self.weed.access_key,
            "P8FS_S3_SECRET_KEY": self.weed.secret_key,
            "P8FS_DATABASE_URL": self.sqlite_url,
            "P8FS_DATA_DIR": str(self.root / "data"),
            "P8FS_METRICS_PORT": "0",
            "P8FS_TIER_OVERRIDES": TEST_OVERRIDES,
        }
        return clean_env(**{**settings, **values})

    def exception(self, source: str, exc: BaseException) -> None:
        self.evidence.exceptions.append(
            (source, f"{exc}\n{exc!r}\n" + "".join(traceback.format_exception(exc)))
        )

    async def cli(self, name: str, argv: list[str], env: dict[str, str]) -> int:
        """Run ``python argv`` (a CLI of ours) to its end; its whole output is evidence."""
        t0 = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable, *argv, env=env, cwd=self.root,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            out, _ = await asyncio.wait_for(process.communicate(), 90)
        except TimeoutError:
            process.kill()
            out, _ = await process.communicate()
        code = process.returncode if process.returncode is not None else -1
        self.evidence.cli.append((f"{name} (exit {code})", out.decode(errors="replace")))
        self.evidence.facts.setdefault("cli_exit", {})[name] = code
        self.evidence.facts.setdefault("timing", {})[name] = round(time.monotonic() - t0, 1)
        return code


async def _publish(js: Any, subject: str, key: str, size: int, **extra: Any) -> None:
    event = {"event_type": "create", "path": f"/buckets/{TENANT}/{key}", "size": size, **extra}
    await js.publish(subject, json.dumps(event).encode())


async def _work(js: Any, settings: Any, database: Database, until: int, limit: float = 20) -> Any:
    """One in-process worker on FAST until ``until`` messages are settled for good."""
    from p8fs_runner.processing import PipelineProcessor
    from p8fs_runner.topology import bind_consumer
    from p8fs_runner.worker import Worker

    processor = PipelineProcessor(database, settings, process="storage-worker-small")
    worker = Worker(js, FAST, processor, errors=database.record_error, jobs=database.upsert_job)
    sub = await bind_consumer(js, FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(sub, stop, fetch_timeout=0.3))
    end = time.monotonic() + limit
    while time.monotonic() < end and not task.done():
        if worker.stats.acked + worker.stats.dead_lettered >= until:
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task
    await sub.unsubscribe()
    return worker.stats


async def _in_process(stage: Stage, files: dict[str, bytes]) -> None:
    """The failures inside one Python process (logging captured by the caller)."""
    from p8fs.errors import P8fsError
    from p8fs.jobs.dreaming import DreamingWorker
    from p8fs.pipeline import aingest
    from p8fs.settings import Settings
    from p8fs_runner.connection import connect_nats
    from p8fs_runner.topology import ensure_topology

    ev, secrets = stage.evidence, stage.evidence.secrets
    good = stage.runner_settings()
    # What a worker does before its first message (first-use imports would otherwise stall the
    # loop past the 1 s ack wait): S3 client, tokenizer, plugins, and the PDF provider.
    from p8fs.storage import storage_options_from_settings
    from p8fs_runner.service import warm_up

    await warm_up(storage_options_from_settings(good), good.token_encoding)
    await asyncio.to_thread(importlib.import_module, "pypdfium2")
    db = Database(stage.sqlite_url)
    await db.init_schema()
    nc = await connect_nats(good)
    js = nc.jetstream()
    await ensure_topology(js, (tiers.ROUTER, FAST))
    try:
        # 1. encrypted PDF with the wrong password in its event, and a corrupt PDF.
        await _publish(
            js, FAST.subject, "enc.pdf", len(files["enc.pdf"]),
            metadata={"password": secrets["PDF password (wrong)"]},
        )  # fmt: skip
        await _publish(js, FAST.subject, "corrupt.pdf", len(files["corrupt.pdf"]))
        stats = await _work(js, good, db, until=2)
        ev.facts["permanent"] = sorted(f.code for f in stats.failures)

        # 2. the wrong S3 secret key: transient, retried once, then dead-lettered.
        wrong_s3 = stage.runner_settings(s3_secret_key=SecretStr(secrets["S3 secret (wrong)"]))
        await _publish(js, FAST.subject, "ok.txt", len(files["ok.txt"]))
        stats = await _work(js, wrong_s3, db, until=1)
        ev.facts["wrong_s3"] = [(f.code, f.permanent) for f in stats.failures]
        ev.reprs.append(("RunnerSettings with a wrong S3 secret", repr(wrong_s3) + str(wrong_s3)))

        # 3. a database refusing its password (MariaDB), and 4. one that is unreachable.
        for label, url in (
            ("mariadb", _mariadb_wrong_password_url(secrets["DB password (MariaDB, wrong)"])),
            ("pg-down", _pg_unreachable_url(secrets["DB password (PostgreSQL, unreachable)"])),
        ):
            broken = Database(url)
            ev.reprs.append((f"Database {label}", repr(broken) + broken.safe_url))
            await _publish(js, FAST.subject, "ok.txt", len(files["ok.txt"]))
            settings = stage.runner_settings(database_url=url)
            stats = await _work(js, settings, broken, until=1)
            ev.facts[f"db_{label}"] = [(f.code, f.permanent) for f in stats.failures]
            try:
                await aingest(
                    str(stage.root / "files" / "ok.txt"), TENANT, database=broken, settings=settings
                )
            except P8fsError as exc:
                stage.exception(f"aingest with the {label} database", exc)
            await broken.dispose()

        # 5. NATS with a wrong password (field) and a wrong password inline in the URL.
        for label, settings in (
            ("field", stage.runner_settings(nats_password=secrets["NATS password (wrong)"])),
            (
                "url",
                stage.runner_settings(
                    nats_url=stage.nats.address.replace(
                        "nats://", f"nats://p8fs:{secrets['NATS password in URL (wrong)']}@"
                    ),
                    nats_user=None,
                    nats_password=None,
                ),
            ),
        ):
            ev.reprs.append((f"RunnerSettings NATS {label}", repr(settings) + str(settings)))
            try:
                await connect_nats(settings)
            except P8fsError as exc:
                stage.exception(f"connect_nats with a wrong password ({label})", exc)
                ev.facts.setdefault("nats_refused", []).append(str(exc))

        # 6. the LLM key against a server answering 401, then 500 (after the SDK's retries).
        await db.upsert_session(
            Session(
                tenant_id=TENANT,
                name="chat",
                messages=[{"role": "user", "content": "plan the week"}],
            )
        )
        llm_settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            data_dir=stage.root / "data",
            anthropic_api_key=SecretStr(secrets["LLM API key"]),
        )
        ev.reprs.append(("Settings with the LLM key", repr(llm_settings) + str(llm_settings)))
        worker = DreamingWorker(db, settings=llm_settings)
        ev.reprs.append(("LLMConfig", repr(worker.config()) + str(worker.config())))
        for status in (401, 500):
            stage.llm.responder = lambda _request, s=status: HTTPFailure(
                s, message=f"scripted {s} for this key"
            )
            job = await worker.process_direct(TENANT)
            ev.facts.setdefault("llm_jobs", []).append(job.status.value)

        from p8fs_runner.dlq import count

        ev.facts["dead_letters_in_process"] = await count(js)
    finally:
        await nc.close()
        await db.dispose()


async def _worker_process(
    stage: Stage, env: dict[str, str], name: str, until_letters: int, until_output: str | None = None
) -> None:
    """A real ``p8fs-run -vv worker --tier test`` until the DLQ holds ``until_letters`` (or its
    output shows ``until_output``), then SIGTERM (or until it exits by itself)."""
    from p8fs_runner.connection import connect_nats
    from p8fs_runner.dlq import count

    t0 = time.monotonic()
    out = stage.root / f"{name}.out"
    with open(out, "wb") as sink:  # noqa: ASYNC230 - opened once, handed to the child
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "p8fs_runner", "-vv", "worker", "--tier", "test",
            env=env, cwd=stage.root, stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip
    nc = await connect_nats(stage.runner_settings())
    try:
        end = time.monotonic() + 45
        while time.monotonic() < end and process.returncode is None:
            if await count(nc.jetstream()) >= until_letters:
                break
            if until_output is not None and until_output in out.read_text(errors="replace"):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.2)
    finally:
        await nc.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
    stage.evidence.facts.setdefault("timing", {})[name] = round(time.monotonic() - t0, 1)
    text = out.read_text(errors="replace")
    stage.evidence.cli.append((f"{name} (exit {process.returncode})", text))
    stage.evidence.facts.setdefault("cli_exit", {})[name] = process.returncode


async def _subprocesses(stage: Stage, files: dict[str, bytes]) -> None:
    from p8fs_runner.connection import connect_nats
    from p8fs_runner.dlq import count, list_dead_letters

    secrets = stage.evidence.secrets
    env = stage.base_env()
    setup = ["-m", "p8fs_runner", "router", "--setup-only"]
    assert await stage.cli("p8fs-run router --setup-only", setup, env) == 0

    nc = await connect_nats(stage.runner_settings())
    js = nc.jetstream()
    try:
        before = await count(js)
        await _publish(
            js, tiers.TEST.subject, "enc.pdf", len(files["enc.pdf"]),
            metadata={"password": secrets["PDF password (wrong)"]},
        )  # fmt: skip
        await _publish(js, tiers.TEST.subject, "ok.txt", len(files["ok.txt"]))
        # A worker process whose S3 secret is wrong: S3 refuses its credentials, which is an
        # outage, not a fault of the files: it pauses (saying why) and dead-letters nothing.
        wrong_s3 = stage.base_env(P8FS_S3_SECRET_KEY=secrets["S3 secret (wrong)"])
        await _worker_process(
            stage, wrong_s3, "p8fs-run -vv worker (wrong S3 secret)", 10_000, "pausing the test"
        )
        stage.evidence.facts["worker_process_letters"] = await count(js) - before

        # A worker process whose database is unreachable (a password in its URL).
        await _publish(js, tiers.TEST.subject, "ok.txt", len(files["ok.txt"]))
        pg_down = stage.base_env(
            P8FS_DATABASE_URL=_pg_unreachable_url(secrets["DB password (PostgreSQL, unreachable)"])
        )
        # It stays up, retrying its set-up until the database is back (a restart must not
        # kill workers): stop it once it has said so, with the password masked.
        await _worker_process(
            stage, pg_down, "p8fs-run -vv worker (database down)", 10_000, "set-up failed"
        )

        for letter in await list_dead_letters(js):
            headers = {k: v for k, v in letter.to_dict().items() if k != "event"}
            stage.evidence.dead_letter_headers.append(
                (f"dead letter #{letter.seq}", json.dumps(headers))
            )
            stage.evidence.dead_letter_payloads.append(
                (f"dead letter #{letter.seq} payload", letter.data.decode(errors="replace"))
            )
            stage.evidence.cli.append(
                (f"DeadLetter.to_dict #{letter.seq}", json.dumps(letter.to_dict()))
            )
        stage.evidence.facts["dead_letters"] = sorted(
            (letter.queue, letter.code) for letter in await list_dead_letters(js)
        )
    finally:
        await nc.close()

    runner, core = ["-m", "p8fs_runner"], ["-m", "p8fs.cli"]
    wrong_field = stage.base_env(
        P8FS_NATS_URL=stage.nats.address,
        P8FS_NATS_USER=stage.nats.user or "p8fs",
        P8FS_NATS_PASSWORD=secrets["NATS password (wrong)"],
    )
    wrong_url = stage.base_env(
        P8FS_NATS_URL=stage.nats.address.replace(
            "nats://", f"nats://p8fs:{secrets['NATS password in URL (wrong)']}@"
        )
    )
    mariadb = stage.base_env(
        P8FS_DATABASE_URL=_mariadb_wrong_password_url(secrets["DB password (MariaDB, wrong)"])
    )
    pg_down = stage.base_env(
        P8FS_DATABASE_URL=_pg_unreachable_url(secrets["DB password (PostgreSQL, unreachable)"])
    )
    llm_env = stage.base_env(
        ANTHROPIC_API_KEY=secrets["LLM API key"],
        ANTHROPIC_BASE_URL=stage.llm.url,
        P8FS_LLM_SDK_MAX_RETRIES="1",
    )
    stage.llm.responder = lambda _request: HTTPFailure(401, message="invalid x-api-key")
    folder = str(stage.root / "files")
    pdf_password = secrets["PDF password (wrong)"]
    commands: list[tuple[str, list[str], dict[str, str]]] = [
        ("p8fs-run status", [*runner, "status"], env),
        ("p8fs-run dlq list", [*runner, "dlq", "list"], env),
        ("p8fs-run dlq list --json", [*runner, "dlq", "list", "--json"], env),
        ("p8fs-run status (wrong NATS password)", [*runner, "status"], wrong_field),
        ("p8fs-run -vv dlq list (wrong NATS password in URL)", [*runner, "-vv", "dlq", "list"], wrong_url),
        ("p8fs db init (MariaDB, wrong password)", [*core, "db", "init"], mariadb),
        ("p8fs -vv db init (PostgreSQL unreachable)", [*core, "-vv", "db", "init"], pg_down),
        (
            "p8fs -vv process (wrong PDF password, corrupt PDF)",
            [*core, "-vv", "process", "--tenant-id", TENANT, "--password", pdf_password, folder],
            env,
        ),
        ("p8fs -vv process (PostgreSQL unreachable)", [*core, "-vv", "process", folder], pg_down),
        (
            "p8fs-run dreaming process (LLM answers 401)",
            [*runner, "-vv", "dreaming", "process", "--tenant-id", TENANT],
            llm_env,
        ),
    ]  # fmt: skip
    # Independent commands, three at a time (their start-up is mostly waiting on imports).
    limit = asyncio.Semaphore(3)

    async def one(name: str, argv: list[str], command_env: dict[str, str]) -> None:
        async with limit:
            await stage.cli(name, argv, command_env)

    await asyncio.gather(*(one(*command) for command in commands))


@pytest.fixture(scope="module")
def evidence(
    module_nats_server: EmbeddedNats,
    seaweedfs: EmbeddedSeaweedFS,
    tmp_path_factory: pytest.TempPathFactory,
) -> Evidence:
    import s3fs

    root = tmp_path_factory.mktemp("security")
    ev = Evidence()
    ev.secrets = {
        "S3 secret (wrong)": _secret("S3CRET"),
        "DB password (MariaDB, wrong)": _secret("DBPW"),
        "DB password (PostgreSQL, unreachable)": _secret("DBDOWN"),
        "NATS password (wrong)": _secret("NATSPW"),
        "NATS password in URL (wrong)": _secret("NATSURLPW"),
        "LLM API key": "sk-ant-" + _secret("LLMKEY"),
        "PDF password (wrong)": _secret("PDFPW"),
        # The real credentials, used by every part that succeeded.
        "S3 secret (real)": seaweedfs.secret_key,
        "NATS password (real)": module_nats_server.password.get_secret_value(),  # type: ignore[union-attr]
    }
    encrypted = corpus_path("pdf/spf_libreoffice-writer-password.pdf").read_bytes()
    files = {
        "enc.pdf": encrypted,
        "corrupt.pdf": b"%PDF-1.7\n1 0 obj <</Type /Catalog" + os.urandom(2048),
        "ok.txt": b"An ordinary note that only a broken setting keeps from being stored.\n",
    }
    (root / "files").mkdir()
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **seaweedfs.storage_options())
    if not fs.exists(TENANT):
        fs.mkdir(TENANT)
    for name, data in files.items():
        (root / "files" / name).write_bytes(data)
        fs.pipe(f"{TENANT}/{name}", data)

    llm = FakeLLMServer().start()
    stage = Stage(
        nats=module_nats_server,
        weed=seaweedfs,
        root=root,
        sqlite_url=f"sqlite+aiosqlite:///{root / 'p8fs.db'}",
        llm=llm,
        evidence=ev,
    )
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("ANTHROPIC_BASE_URL", llm.url)
            mp.setenv("P8FS_LLM_SDK_MAX_RETRIES", "1")
            for name in ("ANTHROPIC_API_KEY", "P8FS_ANTHROPIC_API_KEY", "P8FS_LLM_BASE_URL"):
                mp.delenv(name, raising=False)
            t0 = time.monotonic()
            with capture_all_logging() as logs:
                asyncio.run(_in_process(stage, files))
            ev.facts.setdefault("timing", {})["in-process"] = round(time.monotonic() - t0, 1)
            asyncio.run(_subprocesses(stage, files))
        ev.logs = [(f"log record {i}", text) for i, text in enumerate(logs.records)]

        async def rows() -> None:
            async with Database(stage.sqlite_url) as db:
                ev.errors_rows = [
                    (f"errors row {r.process}", r.model_dump_json())
                    for r in await db.list_errors(limit=10_000)
                ]
                ev.jobs_rows = [
                    (f"jobs row {j.job_type}", j.model_dump_json())
                    for j in await db.list_jobs(limit=10_000)
                ]

        asyncio.run(rows())
        # The SDK sends the key as ``authorization: Bearer`` (anthropic 2.x) or ``x-api-key``.
        ev.facts["llm_keys_seen"] = {
            r.headers.get("x-api-key") or r.headers.get("authorization", "").removeprefix("Bearer ")
            for r in llm.requests
            if r.method == "POST"
        }
    finally:
        llm.stop()
    return ev


# -- what the run must prove ----------------------------------------------------------------------


def test_the_run_failed_in_every_way(evidence: Evidence) -> None:
    """The scan below is only worth something if each secret was really used and refused."""
    facts = evidence.facts
    # (Sets: under load a first delivery may be redelivered before its heartbeat goes out.)
    assert set(facts["permanent"]) == {"corrupt", "encrypted"}
    assert set(facts["wrong_s3"]) == {("transient", False), ("transient", True)}
    assert set(facts["db_mariadb"]) == {("configuration", True)}
    assert {code for code, _ in facts["db_pg-down"]} == {"transient"}
    # A wrong NATS password fails at once and says so (not a timeout after the deadline).
    assert len(facts["nats_refused"]) == 2
    assert all("refused our credentials" in text for text in facts["nats_refused"])
    for name, text in evidence.cli:
        if "wrong NATS password" in name:
            assert "refused our credentials" in text, text[-500:]
    assert facts["llm_jobs"] == ["FAILED", "FAILED"]
    # The key reached the LLM server (in-process and through the CLI): it was sent, and refused.
    assert facts["llm_keys_seen"] == {evidence.secrets["LLM API key"]}
    assert facts["worker_process_letters"] == 0
    paused = dict(evidence.cli)["p8fs-run -vv worker (wrong S3 secret) (exit 0)"]
    assert "pausing the test worker: S3" in paused and "P8FS_S3_SECRET_KEY" in paused, paused[-800:]
    assert facts["dead_letters_in_process"] == 5
    codes = dict.fromkeys(code for _, code in facts["dead_letters"])
    assert {"encrypted", "corrupt", "transient", "configuration"} <= set(codes)
    exits = facts["cli_exit"]
    assert exits["p8fs-run status"] == 0 and exits["p8fs-run dlq list --json"] == 0
    assert exits["p8fs-run -vv worker (wrong S3 secret)"] == 0  # stopped by SIGTERM, cleanly
    assert exits["p8fs-run -vv worker (database down)"] == 0  # waited for the database; SIGTERM
    [db_down] = [t for n, t in evidence.cli if n.startswith("p8fs-run -vv worker (database down)")]
    assert "pausing the test worker: set-up failed: database postgresql+asyncpg://p8fs:***@" in db_down
    for name, code in exits.items():
        if "worker (wrong S3" in name or "worker (database down)" in name:
            continue
        if "wrong" in name or "unreachable" in name or "401" in name or "down" in name:
            assert code != 0, name
    # A database that fails under `p8fs process` is one clear line, not a traceback.
    [pg_down] = [t for n, t in evidence.cli if n.startswith("p8fs -vv process (PostgreSQL")]
    assert "Traceback" not in pg_down
    assert pg_down.rstrip().splitlines()[-1].startswith("Error: database postgresql+asyncpg://")
    # Evidence of every kind was collected.
    for kind in ("logs", "cli", "errors_rows", "jobs_rows", "dead_letter_headers", "exceptions"):
        assert getattr(evidence, kind), kind
    assert len(evidence.errors_rows) >= 8


def test_no_secret_in_logs(evidence: Evidence) -> None:
    assert evidence.leaks("logs") == []


def test_no_secret_in_errors_and_jobs_rows(evidence: Evidence) -> None:
    assert evidence.leaks("errors_rows") + evidence.leaks("jobs_rows") == []


def test_no_secret_in_dead_letters(evidence: Evidence) -> None:
    assert evidence.leaks("dead_letter_headers") == []
    # The payload is the original event (replayable byte for byte): only the document
    # password its sender put in it may be there; no credential of ours ever is.
    assert evidence.leaks("dead_letter_payloads", skip=("PDF password (wrong)",)) == []
    assert any(
        evidence.secrets["PDF password (wrong)"] in t for _, t in evidence.dead_letter_payloads
    )


def test_no_secret_in_cli_output(evidence: Evidence) -> None:
    assert evidence.leaks("cli") == []


def test_no_secret_in_exceptions_or_reprs(evidence: Evidence) -> None:
    assert evidence.leaks("exceptions") + evidence.leaks("reprs") == []


# -- the rules themselves (fast, no servers) --------------------------------------------------------


def test_redaction_rules() -> None:
    from p8fs.redaction import is_secret_key, redact_mapping, redact_text, redact_url

    assert redact_url("nats://u:pw@h:4222/x") == "nats://u:***@h:4222/x"
    assert redact_url("nats://tok@h:4222") == "nats://***@h:4222"
    assert redact_url("http://h:8333/bucket") == "http://h:8333/bucket"
    text = "to postgresql+asyncpg://app:s3cr%40t@db/x and mysql+aiomysql://root:pw@h/y failed"
    assert redact_text(text) == (
        "to postgresql+asyncpg://app:***@db/x and mysql+aiomysql://root:***@h/y failed"
    )
    assert redact_text("key=ABCDEFGH, a=b", ["ABCDEFGH", "b"]) == "key=***, a=b"  # "b": too short
    for name in ("password", "x-amz-meta-password", "api_key", "s3SecretKey", "token", "Creds"):
        assert is_secret_key(name), name
    for name in ("token_count", "keyword", "uri", "monkey_business", "size"):
        assert not is_secret_key(name), name
    event = {"metadata": {"password": "pw1", "lang": "en"}, "items": [{"token": "t0k3n"}]}
    assert redact_mapping(event) == {
        "metadata": {"password": "***", "lang": "en"},
        "items": [{"token": "***"}],
    }


def test_dead_letter_rendering_masks_event_secrets() -> None:
    import base64

    from p8fs_runner.dlq import DeadLetter

    password = _secret("DOCPW")
    canonical = {
        "event_type": "create",
        "path": "/buckets/acme/a.pdf",
        "key": "a.pdf",
        "metadata": {"password": password},
    }
    filer = {
        "directory": "/buckets/acme",
        "eventNotification": {
            "newEntry": {
                "name": "a.pdf",
                "extended": {"x-amz-meta-password": base64.b64encode(password.encode()).decode()},
            }
        },
    }
    for event in (canonical, filer):
        letter = DeadLetter(
            seq=1, subject="p8fs.storage.dlq.small", queue="small",
            reason=f"the password {password} is wrong", code="encrypted", deliveries=1,
            failed_at="", tenant_id="acme", uri="s3://acme/a.pdf",
            source_stream="S", source_seq=1, data=json.dumps(event).encode(),
        )  # fmt: skip
        shown = json.dumps(letter.to_dict())
        assert password not in shown
        assert base64.b64encode(password.encode()).decode() not in shown
        assert "a.pdf" in shown  # the object key is not a secret
        assert json.loads(letter.data) == event  # the payload itself is untouched (replay)


def test_settings_and_llm_config_reprs_hide_secrets() -> None:
    from p8fs.agents.config import resolve_llm
    from p8fs.settings import Settings
    from p8fs_runner.settings import RunnerSettings

    db_pw, nats_pw, key = _secret("DBPW"), _secret("NATSPW"), _secret("sk-ant")
    settings = RunnerSettings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=f"postgresql+asyncpg://app:{db_pw}@db:5432/p8fs",
        nats_url=f"nats://p8fs:{nats_pw}@broker:4222",
        anthropic_api_key=key,
    )
    shown = repr(settings) + str(settings)
    assert db_pw not in shown and nats_pw not in shown and key not in shown
    assert "postgresql+asyncpg://app:***@db:5432/p8fs" in shown
    config = resolve_llm(None, settings=Settings(_env_file=None, anthropic_api_key=key))  # type: ignore[call-arg]
    assert config.api_key == key and key not in repr(config)


# -- embedded services ------------------------------------------------------------------------------


async def test_ensure_services_embeds_nats_on_loopback_with_credentials(tmp_path: Path) -> None:
    """The runner's own embedding path (not only ``start_nats``): loopback only, anonymous and
    wrong-password clients refused, a fresh random password, none of it printed."""
    import nats
    from nats.errors import Error as NatsError

    from p8fs_runner.embedded import ServiceDefaults, ensure_services
    from p8fs_runner.settings import RunnerSettings
    from tests.runner.test_embedded import cmdline, listening_addresses

    settings = RunnerSettings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=tmp_path,
        seaweedfs_endpoint="http://127.0.0.1:1",  # configured: only NATS is embedded
    )
    defaults = ServiceDefaults(nats_port=closed_port(), nats_monitor_port=closed_port())
    with ensure_services(settings, defaults=defaults) as resolved:
        server = resolved.nats
        assert server is not None and resolved.seaweedfs is None
        assert {ip for ip, _ in listening_addresses(server.pid)} == {"127.0.0.1"}
        password = resolved.settings.nats_password
        assert password is not None and len(password.get_secret_value()) >= 24
        assert password.get_secret_value() not in cmdline(server.pid)
        assert all(password.get_secret_value() not in note for note in resolved.notes)
        for anonymous in ({}, {"user": "p8fs", "password": "guess"}):
            with pytest.raises(NatsError, match="Authorization Violation"):
                await nats.connect(
                    server.address, allow_reconnect=False, max_reconnect_attempts=0, **anonymous
                )
        nc = await nats.connect(**resolved.settings.nats_connect_options())
        await nc.close()
