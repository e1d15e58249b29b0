"""The checked-in SeaweedFS filer stubs cannot drift: regenerating them from the committed
``filer.proto`` with the locked grpcio-tools gives the committed files byte for byte, the
proto is SeaweedFS's own, and the runner's ``grpcio``/``protobuf`` bounds admit no runtime the
generated code would refuse at import."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from tests.fixtures.servers import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gen_filer_stubs.py"
STUBS = REPO_ROOT / "packages" / "p8fs-runner" / "src" / "p8fs_runner" / "filer_pb"
RUNNER_PYPROJECT = REPO_ROOT / "packages" / "p8fs-runner" / "pyproject.toml"
#: Where the shared schema (the proto's provenance) sits beside the repository.
SHARED_PROTO = REPO_ROOT.parent / "shared" / "schemas" / "seaweedfs" / "filer.proto"


def _load_script() -> Any:
    """The generator script as a module (it is a script, not an importable package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_filer_stubs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_regenerating_the_stubs_gives_the_committed_files() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_fails_when_a_stub_is_edited(tmp_path: Path) -> None:
    """The drift check is not vacuous: a one-byte change in a committed stub is reported."""
    script = _load_script()
    fresh = tmp_path / "fresh"
    script.generate(STUBS / "filer.proto", script.current_source(), fresh)
    edited = tmp_path / "edited"
    shutil.copytree(fresh, edited)
    assert script.stale(fresh, edited) == []
    pb2 = edited / "filer_pb2.py"
    pb2.write_text(pb2.read_text().replace("DO NOT EDIT", "DO NOT EDlT", 1))
    problems = script.stale(fresh, edited)
    assert len(problems) == 1 and "filer_pb2.py" in problems[0]


def test_the_proto_is_seaweedfs_unmodified() -> None:
    if not SHARED_PROTO.exists():
        pytest.skip(f"the shared schema {SHARED_PROTO} is not beside this checkout")
    assert (STUBS / "filer.proto").read_bytes() == SHARED_PROTO.read_bytes()
    readme = (STUBS / "README.md").read_text()
    assert "cc8364a03ebf5cf9f8eab3315ded2000cd07fff6" in readme


def test_runner_bounds_admit_only_runtimes_the_stubs_accept() -> None:
    """``filer_pb2.py`` raises at import under a protobuf older than its gencode, and
    ``filer_pb2_grpc.py`` under a grpcio older than the grpcio-tools that wrote it."""
    script = _load_script()
    gencode, grpc_generated = script.gencode_versions(STUBS)
    dependencies = tomllib.loads(RUNNER_PYPROJECT.read_text())["project"]["dependencies"]
    requirements = {r.name: r for r in map(Requirement, dependencies)}
    for name, needed in (("protobuf", gencode), ("grpcio", grpc_generated)):
        floors = [Version(s.version) for s in requirements[name].specifier if s.operator == ">="]
        assert floors and max(floors) >= Version(needed), (
            f"p8fs-runner requires {requirements[name]}, but the generated stubs need "
            f"{name}>={needed}: raise the bound in {RUNNER_PYPROJECT.name}"
        )
    readme = (STUBS / "README.md").read_text()
    assert f"`protobuf>={gencode}`" in readme and f"`grpcio>={grpc_generated}`" in readme


def test_the_stubs_import_and_stay_out_of_a_plain_import() -> None:
    """The stubs load under the installed runtimes (no version error), and neither grpc nor
    protobuf is imported by ``import p8fs_runner.bridge`` (the CLI and workers stay light)."""
    code = (
        "import sys\n"
        "import p8fs_runner, p8fs_runner.bridge, p8fs_runner.filer_pb\n"
        "assert not [m for m in sys.modules if m.startswith(('grpc', 'google.protobuf'))]\n"
        "from p8fs_runner.filer_pb import filer_pb2, filer_pb2_grpc\n"
        "assert filer_pb2.SubscribeMetadataRequest(client_supports_idle_heartbeat=True)\n"
        "assert filer_pb2_grpc.SeaweedFilerStub\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
