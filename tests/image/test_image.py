"""The built image, run as Kubernetes runs it (uid 10001, read-only root, /scratch writable):
what each target can read, the self-test, a router and a worker from the image storing real
corpus files in PostgreSQL, the version the manifests' tag promises, and a clear error when
/scratch is missing. See conftest.py for how the image is built and entered."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from tests.fixtures.servers import REPO_ROOT, corpus_path, free_port
from tests.image.conftest import UID, ImageRoot, project_version

if TYPE_CHECKING:
    from p8fs_runner.embedded import EmbeddedNats, EmbeddedSeaweedFS

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

#: What every target must read, and what only the full target may.
SLIM_PROVIDERS = {"pdf", "text"}
FULL_ONLY_PROVIDERS = {"audio", "video", "image", "office"}


def providers(root: ImageRoot, tmp_path: Path) -> dict[str, dict[str, Any]]:
    result = root.run(["p8fs", "providers", "--json"], scratch=tmp_path / "scratch")
    assert result.returncode == 0, result.stderr
    return {p["name"]: p for p in json.loads(result.stdout)}


# -- what the image is --------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["slim", "full"])
def test_the_image_reports_the_version_its_manifest_tag_names(
    images: dict[str, ImageRoot], target: str, tmp_path: Path
) -> None:
    root = images[target]
    labels = root.config.get("Labels") or {}
    assert isinstance(labels, dict)
    assert labels["org.opencontainers.image.version"] == project_version()
    assert labels["io.p8fs.target"] == target
    for command, prog in ((["p8fs", "--version"], "p8fs"), (["p8fs-run", "--version"], "p8fs-run")):
        result = root.run(command, scratch=tmp_path / "scratch")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"{prog}, version {project_version()}"
    # the tag kustomization.yaml gives this target is <the version inside>-<target>
    kustomization = yaml.safe_load((REPO_ROOT / "deploy/k8s/kustomization.yaml").read_text())
    (entry,) = [i for i in kustomization["images"] if i["name"] == f"p8fs-{target}"]
    assert entry["newTag"] == f"{labels['org.opencontainers.image.version']}-{target}"


@pytest.mark.parametrize("target", ["slim", "full"])
def test_the_image_runs_as_non_root_without_build_tools_on_a_read_only_root(
    images: dict[str, ImageRoot], target: str, tmp_path: Path
) -> None:
    root = images[target]
    assert root.config.get("User") == f"{UID}:{UID}"
    probe = "\n".join(
        [
            "import importlib.util, os, shutil, tempfile",
            "print(os.getuid(), os.getgid())",
            "print([t for t in ('gcc', 'cc', 'make', 'uv', 'pip', 'pip3') if shutil.which(t)])",
            "print(importlib.util.find_spec('pip') is not None)",
            "print(tempfile.gettempdir())",
            "open('/scratch/written', 'w').write('ok')",
            "try:",
            "    open('/opt/p8fs/written', 'w')",
            "except OSError as exc:",
            "    print(exc.errno)",
        ]
    )
    result = root.run(["python3", "-c", probe], scratch=tmp_path / "scratch")
    assert result.returncode == 0, result.stderr
    uid_gid, tools, has_pip, tmp, errno = result.stdout.split("\n")[:5]
    assert uid_gid == f"{UID} {UID}"
    assert tools == "[]"  # no compiler, no uv, no pip in the final stage
    assert has_pip == "False"
    assert tmp == "/scratch"
    assert errno == "30"  # EROFS: the root is read-only
    assert (tmp_path / "scratch" / "written").read_text() == "ok"


def test_slim_reads_pdf_and_text_only_and_full_reads_everything(
    images: dict[str, ImageRoot], tmp_path: Path
) -> None:
    slim = providers(images["slim"], tmp_path)
    full = providers(images["full"], tmp_path)
    for name in SLIM_PROVIDERS:
        assert slim[name]["installed"] and full[name]["installed"], name
    for name in FULL_ONLY_PROVIDERS:
        assert not slim[name]["installed"], f"slim should not have {name}"
        assert slim[name]["install"], name  # says which extra to install
        assert full[name]["installed"], f"full lacks {name}: {full[name]['missing']}"
    # OCR: available in full only, with Debian's tesseract program (the more accurate engine)
    ocr = (
        "import shutil, p8fs_node.ocr as o; "
        "print(o.ocr_unavailable_reason()); print(shutil.which('tesseract'))"
    )
    slim_ocr = images["slim"].run(["python3", "-c", ocr], scratch=tmp_path / "s1")
    full_ocr = images["full"].run(["python3", "-c", ocr], scratch=tmp_path / "s2")
    slim_reason, slim_tesseract = slim_ocr.stdout.strip().split("\n")
    full_reason, full_tesseract = full_ocr.stdout.strip().split("\n")
    assert slim_reason != "None" and slim_tesseract == "None", slim_ocr
    assert full_reason == "None", full_ocr
    assert full_tesseract == "/usr/bin/tesseract", full_ocr


def test_cold_start_of_the_cli_in_the_image(
    images: dict[str, ImageRoot], tmp_path: Path, record_property: Any
) -> None:
    """`p8fs-run --help` must stay instant: nothing heavy imported, bytecode precompiled (on a
    read-only root a missing .pyc would be recompiled by every process)."""
    for target, root in images.items():
        times = []
        for _ in range(3):
            start = time.perf_counter()
            result = root.run(["p8fs-run", "--help"], scratch=tmp_path / target)
            times.append(time.perf_counter() - start)
            assert result.returncode == 0 and "router" in result.stdout, result.stderr
        record_property(f"cold_start_help_{target}_s", round(min(times), 3))
        print(f"p8fs-run --help in {target}: best {min(times):.2f} s, first {times[0]:.2f} s")
        assert min(times) < 3.0, times


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["--tier", "small"], ["router"]], ids=["worker", "router"])
def test_without_the_scratch_volume_the_runner_names_tmpdir(
    images: dict[str, ImageRoot], command: list[str]
) -> None:
    """No emptyDir at /scratch: the read-only root's own /scratch is all there is."""
    result = images["slim"].run(["p8fs-run", *command], scratch=None, timeout=60)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "TMPDIR=/scratch cannot hold temporary files: it is not writable by uid 10001" in (
        result.stderr
    )
    assert "Read-only file system" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_scratch_volume_the_user_cannot_write_names_tmpdir(
    images: dict[str, ImageRoot], tmp_path: Path
) -> None:
    """The emptyDir is mounted but owned by root (no fsGroup): same clear error."""
    scratch = tmp_path / "scratch"
    (scratch / "root-only").mkdir(parents=True)
    (scratch / "root-only").chmod(0o755)  # owned by root: uid 10001 cannot write
    result = images["slim"].run(
        ["p8fs-run", "--tier", "small"],
        scratch=scratch,
        env={"TMPDIR": "/scratch/root-only"},
        timeout=60,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "TMPDIR=/scratch/root-only cannot hold temporary files: it is not writable" in (
        result.stderr
    )
    assert "Permission denied" in result.stderr


# -- running the services -------------------------------------------------------------------------


def test_the_self_test_runs_in_the_slim_image_with_embedded_services(
    images: dict[str, ImageRoot], tmp_path: Path
) -> None:
    sample = corpus_path("pdf/spf_minimal-document.pdf")
    result = images["slim"].run(
        ["p8fs-run", "--tier", "small", "--send-sample", f"/scratch/in/{sample.name}"],
        scratch=tmp_path / "scratch",
        inputs=sample.parent,
        env={"P8FS_METRICS_PORT": "0"},
        # the embedded weed puts its gRPC unix sockets in /tmp whatever TMPDIR says: a pod
        # that runs the self-test needs an emptyDir at /tmp as well (production never embeds)
        tmp=tmp_path / "tmp",
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"✅ Successfully processed {sample.name}" in out
    assert "spf_minimal-document_chunk_0" in out
    # the embedded nats-server and weed kept their data on the scratch volume
    assert (tmp_path / "scratch" / "p8fs" / "embedded").is_dir()


#: Corpus files the worker must store, with a phrase each must yield (from MANIFEST.tsv).
CORPUS = {
    "pdf/spf_minimal-document.pdf": "Lorem ipsum dolor sit amet",
    "pdf/spf_multicolumn.pdf": "Two-Column Document",
    "docs/unst_handbook-1p.docx": "US Trustee Handbook",
    "docs/unst_fake-html-cp1252.html": "Der Preis betrug 15,50 €",
    "docs/unst_codeblock.md": "<to>Tove</to>",
    "pdf/unst_loremipsum-flat.pdf": "Lorem ipsum",  # image only: OCR with tesseract
}


def _wait_ready(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> float:
    """Seconds until ``/readyz`` answers 200 (fails with the log if the process exits)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
                if reply.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            pytest.fail(f"did not stop on SIGTERM:\n{log.read_text()[-3000:]}")
    assert process.returncode == 0, log.read_text()[-3000:]


@pytest.mark.postgresql
def test_bridge_router_and_worker_from_the_image_store_corpus_files_in_postgresql(
    images: dict[str, ImageRoot],
    tmp_path: Path,
    nats_server: EmbeddedNats,
    seaweedfs: EmbeddedSeaweedFS,
    s3fs_filesystem: Any,
    s3_bucket: str,
    pg_url: str,
    record_property: Any,
) -> None:
    """The production path, every process from the image: files uploaded to SeaweedFS's S3
    gateway -> the bridge (slim, filer gRPC) -> the router (slim) -> a small-tier worker (full)
    -> rows in PostgreSQL, with each file's text."""
    from p8fs.database import Database

    assert nats_server.password is not None
    env = {
        "P8FS_NATS_URL": nats_server.address,
        "P8FS_NATS_USER": nats_server.user,
        "P8FS_NATS_PASSWORD": nats_server.password.get_secret_value(),
        "P8FS_SEAWEEDFS_ENDPOINT": seaweedfs.endpoint,
        "P8FS_SEAWEEDFS_FILER": seaweedfs.filer_address,
        "P8FS_S3_ACCESS_KEY": seaweedfs.access_key,
        "P8FS_S3_SECRET_KEY": seaweedfs.secret_key,
        "P8FS_STORAGE_PROVIDER": "postgresql",
        "P8FS_DATABASE_URL": pg_url,
        "P8FS_EMBED_SERVICES": "never",
        # the session's weed mini is shared: follow only this test's bucket
        "P8FS_BRIDGE_PATH_PREFIX": f"/buckets/{s3_bucket}",
    }
    processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(target: str, name: str, command: list[str]) -> float:
        port, log = free_port(), tmp_path / f"{name}.log"
        process = images[target].popen(
            command,
            scratch=tmp_path / f"{name}-scratch",
            log=log,
            env={**env, "P8FS_METRICS_PORT": str(port)},
        )
        processes.append((process, log))
        return _wait_ready(port, process, log, 60)

    async def stored() -> dict[str, str]:
        async with Database(pg_url) as db:
            found = {}
            for row in await db.list_files(s3_bucket):
                chunks = await db.list_resources(s3_bucket, file_id=row.id)
                found[row.uri] = "\n".join(c.content for c in chunks)
            return found

    worker_log = tmp_path / "worker.log"
    try:
        start("slim", "router", ["p8fs-run", "router", "--worker-id", "image-router"])
        start("slim", "bridge", ["p8fs-run", "bridge"])
        ready_after = start("full", "worker", ["p8fs-run", "--tier", "small", "--grace", "10"])
        record_property("worker_ready_s", round(ready_after, 2))
        print(f"small worker from the full image ready in {ready_after:.2f} s")

        uris = {}
        for relative, phrase in CORPUS.items():
            source = corpus_path(relative)
            key = f"corpus/{uuid.uuid4().hex[:6]}-{source.name}"
            s3fs_filesystem.put_file(str(source), f"{s3_bucket}/{key}")
            uris[f"s3://{s3_bucket}/{key}"] = phrase

        deadline = time.monotonic() + 240
        texts: dict[str, str] = {}
        while time.monotonic() < deadline and len(texts) < len(uris):
            time.sleep(1)
            texts = asyncio.run(stored())
        logs = "\n".join(f"== {log.name}\n{log.read_text()[-3000:]}" for _, log in processes)
        assert set(texts) == set(uris), f"stored {sorted(texts)} of {sorted(uris)}:\n{logs}"
        for uri, phrase in uris.items():
            assert phrase in texts[uri], (uri, texts[uri][:300])
    finally:
        for process, log in reversed(processes):
            _stop(process, log)
    assert "Traceback" not in worker_log.read_text()
