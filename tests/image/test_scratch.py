"""A missing or unwritable scratch directory is one clear error naming the setting, at start.

Run here on the host through the real ``p8fs-run`` entry point; tests/image/test_image.py
repeats it inside the image as the non-root user on a read-only root without the volume.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from p8fs.errors import ConfigurationError
from p8fs_runner.cli import EXIT_SERVICES
from p8fs_runner.scratch import check_scratch


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p8fs_runner", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "args", [["--tier", "small"], ["router"], ["bridge"]], ids=["worker", "router", "bridge"]
)
def test_missing_tmpdir_stops_every_service_naming_the_setting(
    tmp_path: Path, args: list[str]
) -> None:
    missing = tmp_path / "scratch"
    result = run_cli(*args, env={"TMPDIR": str(missing), "P8FS_DATA_DIR": str(tmp_path / "d")})
    assert result.returncode == EXIT_SERVICES, result.stderr
    assert f"TMPDIR={missing} cannot hold temporary files: it does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d").exists()  # stopped before anything started


def test_unusable_data_dir_names_p8fs_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_cli(
        "--tier", "small", env={"TMPDIR": str(tmp_path), "P8FS_DATA_DIR": str(blocker / "p8fs")}
    )
    assert result.returncode == EXIT_SERVICES, result.stderr
    assert f"P8FS_DATA_DIR={blocker / 'p8fs'} is not usable: it cannot be created" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_scratch_accepts_writable_and_refuses_files(tmp_path: Path) -> None:
    check_scratch(tmp_path / "data", {"TMPDIR": str(tmp_path)})
    assert (tmp_path / "data").is_dir()  # created
    assert list(tmp_path.glob(".p8fs-write-check-*")) == []  # probe removed
    not_a_dir = tmp_path / "f"
    not_a_dir.write_text("x")
    with pytest.raises(ConfigurationError, match="it is not a directory") as info:
        check_scratch(tmp_path / "data", {"TMPDIR": str(not_a_dir)})
    assert info.value.details["setting"] == "TMPDIR"
