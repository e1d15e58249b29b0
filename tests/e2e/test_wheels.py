"""The built distributions, installed the way a user installs them.

``uv build --all-packages`` builds every workspace member's wheel and sdist; the wheels are then
installed into a *fresh* virtual environment (not editable, not the workspace's ``.venv``) with
``uv pip install --find-links <wheel folder> p8fs-node``, so p8fs-core must come from the wheel
folder and everything else from the package index, exactly as ``pip install`` would do it. Then
what a user tries first: import a provider and extract a corpus PDF, ``p8fs-run --help``, the
plugin listing, and that ``import p8fs`` is quick and light.

uv's cache makes the installs take seconds; building takes about ten.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.message import Message
from email.parser import Parser
from importlib.metadata import version as installed_version
from pathlib import Path

import pytest

import p8fs
from tests.fixtures.servers import REPO_ROOT, corpus_path, server_missing

pytestmark = pytest.mark.slow

#: Workspace members: distribution name → import package.
DISTRIBUTIONS = {
    "p8fs-core": "p8fs",
    "p8fs-node": "p8fs_node",
    "p8fs-runner": "p8fs_runner",
    "p8fs-subtitles": "p8fs_subtitles",
}
PYPROJECTS = {
    "p8fs-core": REPO_ROOT / "packages" / "p8fs-core" / "pyproject.toml",
    "p8fs-node": REPO_ROOT / "packages" / "p8fs-node" / "pyproject.toml",
    "p8fs-runner": REPO_ROOT / "packages" / "p8fs-runner" / "pyproject.toml",
    "p8fs-subtitles": REPO_ROOT / "plugins" / "p8fs-subtitles" / "pyproject.toml",
}
#: Libraries that must never be imported by ``import p8fs`` (they cost seconds or gigabytes).
HEAVY_MODULES = (
    "unstructured",
    "faster_whisper",
    "ctranslate2",
    "av",
    "instructor",
    "anthropic",
    "openai",
    "torch",
    "pypdfium2",
    "pdfminer",
    "spacy",
    "numpy",
    "sqlalchemy",
    "aiosqlite",
    "tiktoken",
    "nats",
    "pydantic",
)
IMPORT_BUDGET_SECONDS = 0.3


def _uv() -> list[str]:
    """The uv command (on PATH in CI, where the README's command installs it)."""
    found = shutil.which("uv")
    if found:
        return [found]
    try:
        import uv  # type: ignore[import-not-found]

        return [os.fspath(uv.find_uv_bin())]
    except ImportError:
        server_missing("the uv command (python3 -m pip install uv)")
        raise AssertionError("unreachable") from None


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything pointing at the workspace's virtual environment."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT")
        and not k.startswith("P8FS_")
    }
    env.update(extra)
    return env


def _run(
    command: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command,
        cwd=cwd,
        env=env or _clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result


@pytest.fixture(scope="module")
def dist_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels and sdists of every workspace member, built by ``uv build --all-packages``."""
    out = tmp_path_factory.mktemp("dist")
    _run(
        [*_uv(), "build", "--all-packages", "--no-build-logs", "-o", os.fspath(out)], cwd=REPO_ROOT
    )
    return out


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a new, empty virtual environment."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    _run(
        [
            *_uv(),
            "venv",
            "--quiet",
            "--python",
            f"{sys.version_info.major}.{sys.version_info.minor}",
            os.fspath(venv),
        ],
        cwd=venv.parent,
    )
    return venv / "bin" / "python"


def _pip_install(python: Path, dist_dir: Path, requirement: str) -> None:
    """``pip install <requirement>`` with the wheel folder as an extra place to find packages."""
    _run(
        [
            *_uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            os.fspath(python),
            "--find-links",
            os.fspath(dist_dir),
            requirement,
        ],
        cwd=dist_dir,
    )


def _wheel(dist_dir: Path, dist: str) -> Path:
    stem = dist.replace("-", "_")
    wheels = sorted(dist_dir.glob(f"{stem}-*.whl"))
    assert len(wheels) == 1, (
        f"expected one {dist} wheel in {sorted(p.name for p in dist_dir.iterdir())}"
    )
    return wheels[0]


def _metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(name).decode())


def _entry_points(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        name = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
        return zf.read(name).decode()


def _python(python: Path, code: str, cwd: Path, **env: str) -> str:
    return _run([os.fspath(python), "-c", code], cwd=cwd, env=_clean_env(**env)).stdout


# -- metadata ------------------------------------------------------------------------------------


def test_one_version_across_distributions_and_modules() -> None:
    """The shared version scheme: every pyproject, installed metadata and ``__version__`` agree."""
    import p8fs_subtitles

    import p8fs_node
    import p8fs_runner

    versions = {
        dist: tomllib.loads(path.read_text())["project"]["version"]
        for dist, path in PYPROJECTS.items()
    }
    assert set(versions.values()) == {p8fs.__version__}, versions
    for module in (p8fs_node, p8fs_runner, p8fs_subtitles):
        assert module.__version__ == p8fs.__version__, module.__name__
    for dist in DISTRIBUTIONS:
        assert installed_version(dist) == p8fs.__version__, dist
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text()
    assert f"## [{p8fs.__version__}]" in changelog, "CHANGELOG.md has no entry for this version"


def test_wheels_and_sdists_carry_complete_metadata(dist_dir: Path) -> None:
    for dist, package in DISTRIBUTIONS.items():
        wheel = _wheel(dist_dir, dist)
        meta = _metadata(wheel)
        assert meta["Name"] == dist and meta["Version"] == p8fs.__version__
        assert meta["License-Expression"] == "MIT", dist
        assert meta["Requires-Python"] == ">=3.11", dist
        assert meta["Description-Content-Type"] == "text/markdown", dist
        assert meta.get_payload().lstrip().startswith(f"# {dist}"), f"{dist}: README missing"
        assert "Typing :: Typed" in meta.get_all("Classifier", [])
        with zipfile.ZipFile(wheel) as zf:
            names = zf.namelist()
        assert f"{package}/py.typed" in names, f"{dist} wheel lacks py.typed"
        assert not [n for n in names if n.startswith(("tests/", "src/"))], f"{dist}: stray files"

        sdist = dist_dir / f"{dist.replace('-', '_')}-{p8fs.__version__}.tar.gz"
        assert sdist.exists(), f"no sdist for {dist}"
        import tarfile

        with tarfile.open(sdist) as tf:
            members = {m.name.split("/", 1)[1] for m in tf.getmembers() if "/" in m.name}
        assert {
            "pyproject.toml",
            "README.md",
            f"src/{package}/py.typed",
            f"src/{package}/__init__.py",
        } <= members, f"{dist} sdist incomplete"

    requires = {
        d: _metadata(_wheel(dist_dir, d)).get_all("Requires-Dist", []) for d in DISTRIBUTIONS
    }
    extras = {
        d: _metadata(_wheel(dist_dir, d)).get_all("Provides-Extra", []) for d in DISTRIBUTIONS
    }
    assert set(extras["p8fs-core"]) >= {"postgresql", "tidb", "s3", "agents"}
    assert set(extras["p8fs-node"]) >= {"office", "audio", "media", "ocr", "all"}
    assert any(r.startswith("p8fs-core") for r in requires["p8fs-node"])
    assert any(r.startswith("p8fs-core[") for r in requires["p8fs-runner"])
    assert any(r.startswith("p8fs-core") for r in requires["p8fs-subtitles"])
    # The core needs none of the heavy engines: they are the node's extras.
    core_required = [r for r in requires["p8fs-core"] if "extra ==" not in r]
    for heavy in (
        "unstructured",
        "faster-whisper",
        "instructor",
        "anthropic",
        "pypdfium2",
        "torch",
    ):
        assert not [r for r in core_required if r.startswith(heavy)], heavy

    assert "p8fs = p8fs.cli:main" in _entry_points(_wheel(dist_dir, "p8fs-core"))
    assert "node = p8fs_node.plugin" in _entry_points(_wheel(dist_dir, "p8fs-node"))
    runner_eps = _entry_points(_wheel(dist_dir, "p8fs-runner"))
    assert (
        "p8fs-run = p8fs_runner.cli:main" in runner_eps
        and "runner = p8fs_runner.plugin" in runner_eps
    )
    assert "subtitles = p8fs_subtitles.plugin" in _entry_points(_wheel(dist_dir, "p8fs-subtitles"))


# -- what a user does first ----------------------------------------------------------------------


def _assert_installed_from_wheel(python: Path, dist_dir: Path, dist: str, cwd: Path) -> None:
    """The installed files are the built wheel's (same hashes), not PyPI's or the workspace's."""
    with zipfile.ZipFile(_wheel(dist_dir, dist)) as zf:
        record_name = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        built = {
            line
            for line in zf.read(record_name).decode().splitlines()
            if line.endswith(tuple("0123456789")) and ".py," in line
        }
    installed = _python(
        python,
        (
            "import importlib.metadata as m, json, sys;"
            f"d = m.distribution({dist!r});"
            "print(json.dumps({'record': d.read_text('RECORD'), 'direct': d.read_text('direct_url.json'),"
            " 'location': str(d.locate_file(''))}))"
        ),
        cwd,
    )
    info = json.loads(installed)
    assert built and built <= set(info["record"].splitlines()), f"{dist} is not the built wheel"
    assert info["direct"] is None, (
        f"{dist} was installed from a direct URL / editable: {info['direct']}"
    )
    assert "site-packages" in info["location"]


def test_pip_install_p8fs_node_then_extract_a_corpus_pdf(
    dist_dir: Path, fresh_python: Path, tmp_path: Path
) -> None:
    _pip_install(fresh_python, dist_dir, f"p8fs-node=={p8fs.__version__}")
    for dist in ("p8fs-core", "p8fs-node"):
        _assert_installed_from_wheel(fresh_python, dist_dir, dist, tmp_path)

    pdf = corpus_path("pdf/spf_minimal-document.pdf")
    out = _python(
        fresh_python,
        (
            "import json, sys\n"
            "from p8fs_node import PdfProvider\n"
            "from p8fs.providers import ExtractContext\n"
            "context = ExtractContext(filename='doc.pdf')\n"
            f"sections = list(PdfProvider().extract({os.fspath(pdf)!r}, context))\n"
            "print(json.dumps({'texts': [s.text for s in sections],\n"
            "                  'pages': [s.metadata.get('page') for s in sections],\n"
            "                  'module': PdfProvider.__module__,\n"
            "                  'file': sys.modules['p8fs_node'].__file__}))\n"
        ),
        tmp_path,
    )
    result = json.loads(out)
    assert result["pages"] == [1]
    assert (
        result["texts"][0]
        .lstrip()
        .startswith("Lorem ipsum dolor sit amet, consetetur sadipscing elitr")
    )
    assert "site-packages" in result["file"] and os.fspath(REPO_ROOT) not in result["file"]

    # The CLI a user runs next: providers, with what is installed and what needs an extra.
    listed = _run(
        [os.fspath(fresh_python.parent / "p8fs"), "providers", "--json"],
        cwd=tmp_path,
        env=_clean_env(P8FS_DATA_DIR=os.fspath(tmp_path / "data")),
    )
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["pdf"]["installed"] is True and rows["pdf"]["plugin"] == "node"
    office = rows["office"]
    assert office["installed"] is False and office["install"] == "p8fs-node[office]"
    assert office["extra"] == "p8fs-node[office]" and office["missing"]
    table = _run(
        [os.fspath(fresh_python.parent / "p8fs"), "providers"],
        cwd=tmp_path,
        env=_clean_env(P8FS_DATA_DIR=os.fspath(tmp_path / "data"), COLUMNS="250"),
    )
    # The install hint survives the table (brackets are not eaten as markup).
    assert "pip install 'p8fs-node[office]'" in table.stdout


def test_pip_install_p8fs_runner_then_p8fs_run_help(
    dist_dir: Path, fresh_python: Path, tmp_path: Path
) -> None:
    _pip_install(fresh_python, dist_dir, f"p8fs-runner=={p8fs.__version__}")
    _assert_installed_from_wheel(fresh_python, dist_dir, "p8fs-runner", tmp_path)
    helped = _run([os.fspath(fresh_python.parent / "p8fs-run"), "--help"], cwd=tmp_path)
    assert "Usage: p8fs-run" in helped.stdout
    for verb in ("router", "worker", "bridge", "status", "dlq"):
        assert verb in helped.stdout
    version = _run([os.fspath(fresh_python.parent / "p8fs-run"), "--version"], cwd=tmp_path)
    assert p8fs.__version__ in version.stdout


def test_pip_install_the_subtitles_plugin_and_see_it_discovered(
    dist_dir: Path, fresh_python: Path, tmp_path: Path
) -> None:
    _pip_install(fresh_python, dist_dir, f"p8fs-subtitles=={p8fs.__version__}")
    _assert_installed_from_wheel(fresh_python, dist_dir, "p8fs-subtitles", tmp_path)
    listed = _run([os.fspath(fresh_python.parent / "p8fs"), "plugins", "--json"], cwd=tmp_path)
    rows = {row["name"]: row for row in json.loads(listed.stdout)["plugins"]}
    assert rows["subtitles"]["distribution"] == "p8fs-subtitles"
    assert rows["subtitles"]["version"] == p8fs.__version__
    assert rows["subtitles"]["providers"] == ["subtitles"]
    chosen = _python(
        fresh_python,
        (
            "from p8fs.plugins import get_registry\n"
            "from p8fs.pipeline import choose_provider\n"
            "r = get_registry()\n"
            "print(choose_provider(r, 'application/x-subrip', 'a.srt').name,"
            " choose_provider(r, 'text/vtt', 'a.vtt').name)\n"
        ),
        tmp_path,
    )
    assert chosen.split() == ["subtitles", "subtitles"]
    blocked = _python(
        fresh_python,
        (
            "from p8fs.plugins import get_registry\n"
            "from p8fs.pipeline import choose_provider\n"
            "print(choose_provider(get_registry(), 'application/x-subrip', 'a.srt').name)\n"
        ),
        tmp_path,
        P8FS_DISABLE_PLUGINS="subtitles",
    )
    assert blocked.strip() == "text"


_IMPORT_PROBE = """
import json, sys, time
started = time.perf_counter()
import p8fs
elapsed = time.perf_counter() - started
print(json.dumps({"seconds": elapsed, "modules": sorted(sys.modules), "file": p8fs.__file__}))
"""


def test_import_p8fs_is_fast_and_pulls_in_no_heavy_library(
    dist_dir: Path, fresh_python: Path, tmp_path: Path
) -> None:
    """The one wall-clock assertion the issue asks for: best of five fresh interpreters.

    Everything is installed first (node, runner, the plugin, and the agents extra), so nothing
    is light merely because it is absent.
    """
    _pip_install(fresh_python, dist_dir, f"p8fs-node=={p8fs.__version__}")
    _pip_install(fresh_python, dist_dir, f"p8fs-runner=={p8fs.__version__}")
    _pip_install(fresh_python, dist_dir, f"p8fs-subtitles=={p8fs.__version__}")
    _pip_install(fresh_python, dist_dir, f"p8fs-core[agents]=={p8fs.__version__}")
    runs = [json.loads(_python(fresh_python, _IMPORT_PROBE, tmp_path)) for _ in range(5)]
    assert "site-packages" in runs[0]["file"]
    heavy = sorted(
        {m.split(".", 1)[0] for run in runs for m in run["modules"]} & set(HEAVY_MODULES)
    )
    assert heavy == [], f"`import p8fs` imported {heavy}"
    best = min(run["seconds"] for run in runs)
    if best >= IMPORT_BUDGET_SECONDS:
        # Say what took the time (python -X importtime), so a regression is easy to find.
        profile = _run(
            [os.fspath(fresh_python), "-X", "importtime", "-c", "import p8fs"],
            cwd=tmp_path,
            env=_clean_env(),
        ).stderr
        slowest = sorted(profile.splitlines()[1:], key=lambda line: -int(line.split("|")[1]))[:15]
        pytest.fail(
            f"`import p8fs` took {best:.3f} s at best of 5 (budget "
            f"{IMPORT_BUDGET_SECONDS} s); slowest imports:\n" + "\n".join(slowest)
        )
