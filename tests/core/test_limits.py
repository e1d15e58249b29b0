"""The safety limits have one definition (``p8fs.limits``): the settings take their defaults
from it, providers fall back to it, and no module keeps a copy that could drift."""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import fields
from pathlib import Path

import pytest

from p8fs.limits import DEFAULT_LIMITS, ExtractionLimits, extraction_limit
from p8fs.settings import Settings

LIMIT_NAMES = [field.name for field in fields(ExtractionLimits)]


def test_settings_defaults_are_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LIMIT_NAMES:
        monkeypatch.delenv(f"P8FS_{name.upper()}", raising=False)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.extraction_limits() == DEFAULT_LIMITS.as_options()
    assert set(Settings.model_fields) >= set(LIMIT_NAMES)


def test_a_setting_reaches_the_providers_as_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P8FS_MAX_PAGES", "7")
    options = Settings(_env_file=None).extraction_limits()  # type: ignore[call-arg]
    assert extraction_limit(options, "max_pages") == 7


@pytest.mark.parametrize("name", LIMIT_NAMES)
def test_an_option_wins_and_an_unset_one_never_disables_the_limit(name: str) -> None:
    default = getattr(DEFAULT_LIMITS, name)
    assert extraction_limit({}, name) == default  # type: ignore[arg-type]
    assert extraction_limit({name: None}, name) == default  # type: ignore[arg-type]
    assert extraction_limit({name: 3}, name) == 3  # type: ignore[arg-type]


def _module_constants(path: Path) -> set[str]:
    """Names bound by module-level assignments."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AnnAssign)
            else []
        )
        names.update(target.id for target in targets if isinstance(target, ast.Name))
    return names


@pytest.mark.parametrize("package", ["p8fs", "p8fs_node", "p8fs_runner"])
def test_no_module_keeps_its_own_copy_of_a_limit(package: str) -> None:
    """A constant named after a limit (``DEFAULT_MAX_PAGES``, ``MAX_COMPRESSION_RATIO``...) outside
    ``p8fs.limits`` is a second definition: changing the limit would leave it behind."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    copies = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "limits.py" and package == "p8fs":
            continue
        for constant in _module_constants(path):
            if any(name.upper() in constant for name in LIMIT_NAMES):
                copies.append(f"{path.relative_to(root.parent)}: {constant}")
    assert copies == []
