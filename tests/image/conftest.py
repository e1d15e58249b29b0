"""The p8fs image, built for real (scripts/build_image.sh: buildah, no daemon) and run the way
Kubernetes runs it: as uid 10001, on a read-only root filesystem, with a writable /scratch.

``podman run`` does not work on these machines (cgroups), and ``buildah run`` cannot make the
root read-only, so each command runs in its own mount namespace (``unshare --mount``): the
container's root filesystem (``buildah mount``) is bind-mounted onto itself read-only, /proc and
/dev are bound in, a host directory owned by 10001 is mounted at /scratch (an emptyDir is a
directory on the node's disk too), and ``chroot --userspec=10001:10001`` starts the command with
exactly the image's configured environment plus the test's variables. The network namespace is
the host's, so the image reaches the tests' loopback NATS, SeaweedFS and PostgreSQL.

Building: once per session, unless ``P8FS_IMAGE_PREBUILT=1`` says the images named
``localhost/p8fs:<version>-<target>`` were just built (``.ci/run`` builds them first, so the
build's time shows in its log). Missing tools skip locally and fail in CI (``server_missing``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.servers import REPO_ROOT, server_missing

BUILDAH = ("buildah", "--storage-driver", os.environ.get("STORAGE_DRIVER", "vfs"))
IMAGE_NAME = os.environ.get("P8FS_IMAGE_NAME", "localhost/p8fs")
TARGETS = ("slim", "full")
UID = 10001

#: Runs in the new mount namespace: $1 rootfs, $2 scratch dir or "", $3 read-only bind source
#: or "" (mounted at /scratch/in), $4 a directory for /tmp or "", then the command. ``exec`` keeps the pid that of the command,
#: so a test's SIGTERM reaches p8fs-run itself.
_ENTER = r"""
set -eu
root=$1 scratch=$2 inputs=$3 tmp=$4
shift 4
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount --rbind /proc "$root/proc"
mount --rbind /dev "$root/dev"
if [ -n "$scratch" ]; then
  mount --bind "$scratch" "$root/scratch"
  if [ -n "$inputs" ]; then mount --bind -o ro "$inputs" "$root/scratch/in"; fi
fi
if [ -n "$tmp" ]; then mount --bind "$tmp" "$root/tmp"; fi
exec chroot --userspec=10001:10001 "$root" "$@"
"""


def project_version() -> str:
    with (REPO_ROOT / "packages" / "p8fs-runner" / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def image_tag(target: str) -> str:
    return f"{IMAGE_NAME}:{project_version()}-{target}"


def _buildah(*args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [*BUILDAH, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"buildah {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout.strip()


@dataclass
class ImageRoot:
    """A container of one image target, its root filesystem mounted on the host."""

    target: str
    tag: str
    container: str
    rootfs: Path
    config: dict[str, object]

    def env(self, extra: Mapping[str, str] | None = None) -> list[str]:
        """The image's own environment (its ENV lines) with ``extra`` on top, as NAME=VALUE."""
        merged: dict[str, str] = {}
        for item in self.config.get("Env") or []:  # type: ignore[union-attr]
            name, _, value = str(item).partition("=")
            merged[name] = value
        merged.update(extra or {})
        return [f"{k}={v}" for k, v in merged.items()]

    def argv(
        self,
        command: Sequence[str],
        *,
        scratch: Path | None,
        inputs: Path | None = None,
        env: Mapping[str, str] | None = None,
        tmp: Path | None = None,
    ) -> list[str]:
        """The host command that runs ``command`` in this image (see the module docstring)."""
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
            os.chown(scratch, UID, UID)
            scratch.chmod(0o770)
            if inputs is not None:
                (scratch / "in").mkdir(exist_ok=True)
        if tmp is not None:
            tmp.mkdir(parents=True, exist_ok=True)
            tmp.chmod(0o1777)
        return [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            _ENTER,
            "enter",
            str(self.rootfs),
            str(scratch or ""),
            str(inputs or ""),
            str(tmp or ""),
            "/usr/bin/env",
            "-i",
            *self.env(env),
            *command,
        ]

    def run(
        self,
        command: Sequence[str],
        *,
        scratch: Path | None,
        inputs: Path | None = None,
        env: Mapping[str, str] | None = None,
        tmp: Path | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(command, scratch=scratch, inputs=inputs, env=env, tmp=tmp),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(
        self,
        command: Sequence[str],
        *,
        scratch: Path | None,
        log: Path,
        inputs: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        handle = log.open("wb")
        try:
            return subprocess.Popen(
                self.argv(command, scratch=scratch, inputs=inputs, env=env),
                stdout=handle,
                stderr=subprocess.STDOUT,
            )
        finally:
            handle.close()


def _require_tools() -> None:
    for tool in ("buildah", "mmdebstrap", "unshare", "chroot", "uv"):
        if shutil.which(tool) is None:
            server_missing(
                f"{tool} (the image tests build with buildah and a mmdebstrap base: "
                "apt-get install buildah mmdebstrap)"
            )


@pytest.fixture(scope="session")
def built_images() -> dict[str, str]:
    """Both targets built (or, with P8FS_IMAGE_PREBUILT=1, found): target -> tag."""
    _require_tools()
    tags = {target: image_tag(target) for target in TARGETS}
    prebuilt = os.environ.get("P8FS_IMAGE_PREBUILT", "").lower() in ("1", "true", "yes")
    if not prebuilt:
        result = subprocess.run(
            [str(REPO_ROOT / "scripts" / "build_image.sh"), "--target", "all"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=3000,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"scripts/build_image.sh failed:\n{result.stderr[-4000:]}")
    for target, tag in tags.items():
        try:
            _buildah("inspect", "--type", "image", tag)
        except RuntimeError as exc:
            pytest.fail(f"image {tag} ({target}) is missing: {exc}")
    return tags


def _mounted(target: str, tag: str) -> ImageRoot:
    # buildah 1.28 (Debian bookworm) has no `json` template function: parse the whole record
    config = json.loads(_buildah("inspect", "--type", "image", tag))["OCIv1"]["config"]
    container = _buildah("from", "--pull-never", tag)
    try:
        rootfs = Path(_buildah("mount", container))
    except RuntimeError:
        subprocess.run([*BUILDAH, "rm", container], capture_output=True, check=False)
        raise
    return ImageRoot(target, tag, container, rootfs, config)


@pytest.fixture(scope="session")
def images(built_images: dict[str, str]) -> Iterator[dict[str, ImageRoot]]:
    """One mounted container per target for the session (each command gets its own
    namespace and /scratch; the root is never written)."""
    roots: dict[str, ImageRoot] = {}
    try:
        for target, tag in built_images.items():
            roots[target] = _mounted(target, tag)
        yield roots
    finally:
        for root in roots.values():
            subprocess.run([*BUILDAH, "umount", root.container], capture_output=True, check=False)
            subprocess.run([*BUILDAH, "rm", root.container], capture_output=True, check=False)
