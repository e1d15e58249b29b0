#!/usr/bin/env bash
# Build the p8fs image (Containerfile targets slim and full) without a container daemon, and
# without network access during the image build itself.
#
#   scripts/build_image.sh [--target slim|full|all] [--base local|IMAGE] [--prepare-only]
#
# 1. prepare the build context (default build/image, P8FS_IMAGE_CONTEXT): p8fs wheels from
#    `uv build`; every locked third-party dependency as a wheel (`uv export` + `pip wheel`,
#    cached by the lock's hash); the Debian packages tesseract needs (`apt-get download`, only
#    on a Debian host; without them the full target installs tesseract with apt-get at build).
# 2. --base local (the default when mmdebstrap is installed): a Debian bookworm base made by
#    `mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates`, imported
#    into buildah once and cached as a tar; otherwise BASE is an image name to pull
#    (python:3.11-slim-bookworm, what users get with a plain `podman build`/`docker build`).
# 3. `buildah bud --isolation chroot --storage-driver vfs` (no daemon, no cgroups needed),
#    tagging localhost/p8fs:<version>-<target>.
#
# Caches live outside the repository (P8FS_IMAGE_CACHE, default ~/.cache/p8fs-image), so a
# second run only rebuilds the p8fs wheels and the layers that use them.
# Prints one line per target: "image <name> built in <seconds> s, <size>".
set -euo pipefail
cd "$(dirname "$0")/.."

target=all
base=""
prepare_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --prepare-only) prepare_only=1; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
case "$target" in slim|full) targets=("$target") ;; all) targets=(slim full) ;;
  *) echo "--target must be slim, full or all" >&2; exit 2 ;; esac

cache="${P8FS_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/p8fs-image}"
context="${P8FS_IMAGE_CONTEXT:-build/image}"
name="${P8FS_IMAGE_NAME:-localhost/p8fs}"
buildah=(buildah --storage-driver "${STORAGE_DRIVER:-vfs}")
mkdir -p "$cache" "$context"
log() { printf '== %s\n' "$*" >&2; }

version="$(python3 -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' packages/p8fs-runner/pyproject.toml)"

# -- 1. the build context --------------------------------------------------------------------
log "p8fs wheels (uv build)"
rm -rf "$context/wheels" "$context/debs"
mkdir -p "$context/wheels" "$context/debs"
for package in p8fs-core p8fs-node p8fs-runner; do
  uv build --quiet --package "$package" --wheel --out-dir "$context/wheels"
done

log "wheelhouse (uv export + pip wheel, cached by uv.lock)"
constraints="$context/wheels/constraints.txt"
uv export --frozen --all-packages --all-extras --no-dev --no-hashes --no-emit-workspace \
  --no-header --quiet -o "$constraints"
uv_version="$(uv --version | awk '{print $2}')"
key="$( (cat "$constraints"; echo "uv==$uv_version") | sha256sum | cut -c1-16)"
wheelhouse="$cache/wheelhouse-$key"
if [ ! -f "$wheelhouse/.complete" ]; then
  rm -rf "$cache"/wheelhouse-*
  mkdir -p "$wheelhouse"
  # pip builds the few dependencies published only as sdists; the image build then never does.
  python3 -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$wheelhouse" \
    -r "$constraints" "uv==$uv_version" 2> >(grep -v "is ignored: it is neither" >&2)
  # pip chose by *this* interpreter's markers; the image's Python 3.11 may be another patch
  # release (Debian bookworm: 3.11.2) with other pins (soupsieve for < 3.11.5): add those too.
  python3 - "$constraints" >"$wheelhouse/other-pythons.txt" <<'PY'
import sys
from pip._vendor.packaging.markers import default_environment
from pip._vendor.packaging.requirements import Requirement

host = default_environment()
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line or line.startswith("-") or ";" not in line:
        continue
    req = Requirement(line)
    if req.marker is None or req.marker.evaluate(host):
        continue
    if any(req.marker.evaluate({**host, "python_full_version": f"3.11.{patch}"})
           for patch in range(0, 30)):
        print(f"{req.name}{req.specifier}")
PY
  if [ -s "$wheelhouse/other-pythons.txt" ]; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
      --python-version 3.11 --dest "$wheelhouse" -r "$wheelhouse/other-pythons.txt" \
      2> >(grep -v "is ignored: it is neither" >&2)
  fi
  touch "$wheelhouse/.complete"
fi
cp -l "$wheelhouse"/*.whl "$context/wheels/" 2>/dev/null || cp "$wheelhouse"/*.whl "$context/wheels/"

if command -v apt-get >/dev/null && [ -r /etc/debian_version ]; then
  log "Debian packages for OCR (tesseract)"
  # The whole dependency closure; the Containerfile installs only what the base lacks.
  mapfile -t debs < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances tesseract-ocr tesseract-ocr-eng \
    | grep -E '^[a-z0-9]' | sort -u)
  debs_cache="$cache/debs-$(printf '%s\n' "${debs[@]}" | sha256sum | cut -c1-16)"
  if [ ! -f "$debs_cache/.complete" ]; then
    rm -rf "$cache"/debs-*
    mkdir -p "$debs_cache"
    (cd "$debs_cache" && apt-get download -qq "${debs[@]}" >/dev/null)
    touch "$debs_cache/.complete"
  fi
  cp -l "$debs_cache"/*.deb "$context/debs/" 2>/dev/null || cp "$debs_cache"/*.deb "$context/debs/"
fi
if [ "$prepare_only" = 1 ]; then
  log "context ready in $context"
  exit 0
fi

# -- 2. the base -------------------------------------------------------------------------------
if [ -z "$base" ]; then
  if command -v mmdebstrap >/dev/null; then base=local; else base=python:3.11-slim-bookworm; fi
fi
if [ "$base" = local ]; then
  base_image="localhost/p8fs-base:bookworm"
  tar="$cache/base-bookworm.tar"
  if [ ! -f "$tar" ]; then
    log "base: mmdebstrap bookworm (about 30-90 s)"
    mmdebstrap --quiet --format=tar --variant=minbase \
      --include=python3,python3-venv,ca-certificates bookworm "$tar.partial"
    mv "$tar.partial" "$tar"
    "${buildah[@]}" rmi -f "$base_image" >/dev/null 2>&1 || true
  fi
  if ! "${buildah[@]}" inspect --type image "$base_image" >/dev/null 2>&1; then
    log "base: importing $tar as $base_image"
    container="$("${buildah[@]}" from scratch)"
    "${buildah[@]}" add --quiet "$container" "$tar" /
    "${buildah[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      "$container"
    "${buildah[@]}" commit --quiet --rm "$container" "$base_image" >/dev/null
  fi
  base="$base_image"
fi

# -- 3. the images -----------------------------------------------------------------------------
# vfs keeps a full copy of the filesystem for every layer, and each rebuild leaves the previous
# layers behind (they are the layer cache). Past P8FS_IMAGE_STORAGE_LIMIT_GB (default 40) the
# unused ones are pruned, at the price of one cold build.
graphroot="$("${buildah[@]}" info --format '{{.store.GraphRoot}}' 2>/dev/null || true)"
if [ -n "$graphroot" ] && [ -d "$graphroot" ]; then
  used_gb=$(( $(du -sk "$graphroot" 2>/dev/null | cut -f1) / 1024 / 1024 ))
  if [ "$used_gb" -gt "${P8FS_IMAGE_STORAGE_LIMIT_GB:-40}" ]; then
    log "image storage uses ${used_gb} GB: pruning unused layers"
    "${buildah[@]}" rmi --prune >/dev/null || true
  fi
fi
for t in "${targets[@]}"; do
  tag="$name:$version-$t"
  log "building $tag from $base"
  start=$(date +%s)
  "${buildah[@]}" bud --quiet --layers --isolation chroot --ulimit nofile=20000:20000 \
    --build-arg "BASE=$base" --build-arg "VERSION=$version" \
    --target "$t" -t "$tag" -f Containerfile "$context" >/dev/null
  seconds=$(( $(date +%s) - start ))
  size="$("${buildah[@]}" images --format '{{.Size}}' "$tag" | head -n1)"
  echo "image $tag built in $seconds s, $size"
done
