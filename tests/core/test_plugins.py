"""The plugin manager and registries: discovery, controls, isolation, validation, lookup."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from p8fs.errors import PluginError, UnsupportedContent
from p8fs.plugins import DEFAULT_PLUGINS, load_plugins
from p8fs.providers import ContentProvider
from p8fs.registry import Registry

from .plugin_dist import make_plugin_dist

GOOD_PLUGIN = """
from p8fs import hookimpl
from p8fs.providers import ContentProvider, Section

class FancyProvider(ContentProvider):
    name = "fancy"
    mime_types = ("text/x-fancy",)
    extensions = (".fancy",)
    priority = 5
    def extract(self, source, context):
        yield Section("fancy")

class TextClash(ContentProvider):
    name = "text"  # taken by the built-in text provider
    extensions = (".clash",)
    def extract(self, source, context):
        yield Section("clash")

@hookimpl
def p8fs_register_providers(register):
    register(FancyProvider)
    register(TextClash)


from p8fs.chunking import Chunk, Chunker
from typing import ClassVar
import click

class LineChunker(Chunker):
    name = "lines"
    def chunk(self, sections):
        for i, section in enumerate(sections):
            yield Chunk(section.text, i, 1)

@hookimpl
def p8fs_register_chunkers(register):
    register(LineChunker)

@hookimpl
def p8fs_register_agents(register):
    # Imported inside the hook, which runs on the first agent lookup.
    from p8fs.agents import Agent

    class Haiku(Agent):
        "Write a haiku about the input."
        agent_aliases: ClassVar[tuple[str, ...]] = ("agentlets.poems.Haiku",)
        lines: list[str]

    register(Haiku)

@hookimpl
def p8fs_register_commands(cli):
    @cli.command(name="fancy-hello")
    def hello():
        click.echo("hello from fancy")
"""

BROKEN_IMPORT = "raise RuntimeError('boom at import')\n"

BROKEN_HOOK = """
from p8fs import hookimpl

@hookimpl
def p8fs_register_providers(register):
    raise ValueError('boom in hook')

@hookimpl
def p8fs_register_agents(register):
    raise ValueError('boom in the agents hook')
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Three installed plugin distributions: a good one, one that fails to import, one whose hook raises."""
    root = make_plugin_dist(
        tmp_path / "site",
        "p8fs-fancy",
        "1.2.3",
        {"fancy": "fancy_plugin", "broken-import": "broken_import_plugin", "broken-hook": "broken_hook_plugin"},
        {"fancy_plugin": GOOD_PLUGIN, "broken_import_plugin": BROKEN_IMPORT, "broken_hook_plugin": BROKEN_HOOK},
    )
    monkeypatch.syspath_prepend(str(root))
    for var in ("P8FS_LOAD_PLUGINS", "P8FS_DISABLE_PLUGINS", "P8FS_TRACE_PLUGINS"):
        monkeypatch.delenv(var, raising=False)
    yield root
    for mod in ("fancy_plugin", "broken_import_plugin", "broken_hook_plugin"):
        sys.modules.pop(mod, None)


def test_builtins_register_through_the_same_hooks() -> None:
    plugins = load_plugins()
    assert set(DEFAULT_PLUGINS) <= set(plugins.info)
    assert plugins.registry.providers.registration("text").plugin == "p8fs.builtin.text"
    assert all(info.builtin for name, info in plugins.info.items() if name in DEFAULT_PLUGINS)


def test_entry_point_plugin_is_discovered_with_version(third_party: Path) -> None:
    plugins = load_plugins()
    assert plugins.info["fancy"].version == "1.2.3"
    assert plugins.info["fancy"].distribution == "p8fs-fancy"
    assert "fancy" in plugins.registry.providers
    assert plugins.registered_by("fancy")["providers"] == ["fancy"]
    assert plugins.registry.provider_for("text/x-fancy", None).__name__ == "FancyProvider"


def test_broken_plugins_are_reported_by_name_and_skipped(third_party: Path) -> None:
    plugins = load_plugins()
    failures = {f.name: f for f in plugins.failures if f.stage != "p8fs_register_agents"}
    assert failures["broken-import"].stage == "import"
    assert "boom at import" in failures["broken-import"].error
    assert failures["broken-hook"].stage == "p8fs_register_providers"
    assert "boom in hook" in failures["broken-hook"].error
    # The deferred agents hook ran when failures were asked for; its failure is listed too.
    [agents_failure] = [f for f in plugins.failures if f.stage == "p8fs_register_agents"]
    assert agents_failure.name == "broken-hook" and "boom in the agents" in agents_failure.error
    assert "MomentBuilder" in plugins.registry.agents
    # The others still loaded and registered.
    assert "fancy" in plugins.registry.providers
    assert "text" in plugins.registry.providers


def test_duplicate_name_is_refused_naming_both_plugins(third_party: Path) -> None:
    plugins = load_plugins()
    clash = [p for p in plugins.problems if p.plugin == "fancy"]
    assert len(clash) == 1
    assert "'text'" in clash[0].message and "p8fs.builtin.text" in clash[0].message
    # The built-in keeps its name; the clashing class never became reachable by extension.
    assert plugins.registry.providers.get("text").__name__ == "TextProvider"
    assert plugins.registry.providers_for_extension(".clash") == []


def test_allow_list_loads_only_named_plugins(third_party: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P8FS_LOAD_PLUGINS", "fancy,p8fs.builtin.chunkers")
    plugins = load_plugins()
    assert set(plugins.info) == {"fancy", "p8fs.builtin.chunkers"}
    assert plugins.registry.providers_for_extension(".txt") == []
    # Without the built-in text provider, the third-party TextClash may now take the name.
    assert plugins.registry.providers.registration("text").plugin == "fancy"


def test_block_list_disables_a_plugin(third_party: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P8FS_DISABLE_PLUGINS", "fancy,broken-import")
    plugins = load_plugins()
    assert "fancy" not in plugins.info
    assert "fancy" not in plugins.registry.providers
    assert "broken-import" not in {f.name for f in plugins.failures}


def test_trace_logs_every_hook_call(third_party: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("P8FS_TRACE_PLUGINS", "1")
    load_plugins()
    err = capsys.readouterr().err
    # One traced call per plugin implementing the hook, each with its result.
    assert err.count("finish p8fs_register_providers") >= 2
    assert "register:" in err


class _P(ContentProvider):
    name = "p"
    mime_types = ("application/x-p",)
    extensions = (".p",)

    def extract(self, source, context):  # type: ignore[no-untyped-def]
        yield from ()


def _provider(name: str, mimes: tuple[str, ...], exts: tuple[str, ...], priority: int = 0,
              requires: tuple[str, ...] = ()) -> type[ContentProvider]:
    return type(name, (_P,), {"name": name, "mime_types": mimes, "extensions": exts,
                              "priority": priority, "requires": requires})


def test_registry_validates_provider_classes() -> None:
    registry = Registry()
    with pytest.raises(PluginError, match="must subclass"):
        registry.add_provider(dict, "x")  # type: ignore[arg-type]
    with pytest.raises(PluginError, match="claims no"):
        registry.add_provider(_provider("none", (), ()), "x")
    with pytest.raises(PluginError, match="lower case"):
        registry.add_provider(_provider("upper", ("Text/Plain",), ()), "x")
    with pytest.raises(PluginError, match="start with"):
        registry.add_provider(_provider("noext", (), ("pdf",)), "x")

    class Abstract(ContentProvider):
        name = "abstract"
        extensions = (".a",)

    with pytest.raises(PluginError, match="does not implement: extract"):
        registry.add_provider(Abstract, "x")


def test_registry_lookup_priority_mime_then_extension() -> None:
    registry = Registry()
    low = _provider("low", ("application/x-doc",), (".doc",), priority=1)
    high = _provider("high", ("application/x-doc",), (), priority=10)
    registry.add_provider(low, "a")
    registry.add_provider(high, "b")
    assert registry.provider_for("application/x-doc", ".doc") is high
    assert registry.provider_for("application/unknown", ".doc") is low
    assert registry.provider_for("APPLICATION/X-DOC; charset=x", None) is high
    with pytest.raises(UnsupportedContent, match="no provider"):
        registry.provider_for("application/unknown", ".zzz")


def test_registry_prefers_an_installed_provider_over_a_missing_extra() -> None:
    registry = Registry()
    fancy = _provider("fancy", ("text/markdown",), (), priority=50, requires=("module_that_is_not_installed",))
    plain = _provider("plain", ("text/markdown",), (), priority=0)
    registry.add_provider(fancy, "a")
    registry.add_provider(plain, "b")
    assert registry.provider_for("text/markdown", None) is plain
    only_missing = Registry()
    only_missing.add_provider(fancy, "a")
    # Nothing installed: the best provider is still returned, so using it names its extra.
    assert only_missing.provider_for("text/markdown", None) is fancy


def test_missing_extra_fails_with_install_hint() -> None:
    cls = _provider("needy", ("application/x-needy",), (), requires=("module_that_is_not_installed",))
    cls.extra = "p8fs-node[office]"
    from p8fs.errors import ProviderUnavailable

    with pytest.raises(ProviderUnavailable, match=r"install p8fs-node\[office\]"):
        cls().ensure_available()


def test_p8fs_register_chunkers_and_p8fs_register_agents_from_a_third_party(third_party: Path) -> None:
    plugins = load_plugins()
    assert plugins.registry.chunkers.registration("lines").plugin == "fancy"
    assert plugins.registry.agents.get("agentlets.poems.Haiku").__name__ == "Haiku"
    assert plugins.registered_by("fancy") == {"providers": ["fancy"], "chunkers": ["lines"],
                                              "agents": ["Haiku"], "embedders": []}


def test_p8fs_register_commands_adds_a_cli_verb(third_party: Path) -> None:
    from click.testing import CliRunner

    import p8fs.plugins
    from p8fs.cli import main

    p8fs.plugins.reset_plugins()
    try:
        result = CliRunner().invoke(main, ["fancy-hello"])
        assert result.exit_code == 0, result.output
        assert "hello from fancy" in result.output
        listed = CliRunner().invoke(main, ["plugins", "--json"])
        assert '"fancy"' in listed.output and '"1.2.3"' in listed.output
    finally:
        p8fs.plugins.reset_plugins()


def test_agent_without_docstring_is_refused() -> None:
    from p8fs.agents import Agent

    class Silent(Agent):
        x: int

    Silent.__doc__ = None
    registry = Registry()
    with pytest.raises(PluginError, match="docstring"):
        registry.add_agent(Silent, "x")


def test_an_agent_must_subclass_agent() -> None:
    """The runtime calls prepare_input/merge/postprocess: a bare pydantic model cannot run, so
    it is refused when registered, not when `p8fs eval` first tries it."""
    from pydantic import BaseModel

    class Bare(BaseModel):
        "Write a poem."

        x: int

    with pytest.raises(PluginError, match=r"must subclass p8fs\.agents\.base\.Agent"):
        Registry().add_agent(Bare, "x")  # type: ignore[arg-type]


_DEFERRAL_PROBE = """
import json, sys
from p8fs.plugins import get_plugins, get_registry
stages = {}
from p8fs.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
built = lambda: ["p8fs.agents.moments" in sys.modules, "p8fs.embedding" in sys.modules]
stages["help"] = built()
registry = get_registry()
registry.provider_for("text/plain", ".txt")
stages["worker"] = built()
stages["found"] = registry.agents.get("agentlets.moments.MomentBuilder").__name__
stages["after"] = "p8fs.agents.moments" in sys.modules
print(json.dumps(stages))
"""


def test_agent_registration_runs_on_the_first_agent_lookup() -> None:
    """`p8fs --help` and a worker's registry (providers) build no agent model and import no
    embedder; the first agent lookup registers the agents. A fresh interpreter: this one has imported the agents already."""
    import json
    import subprocess

    done = subprocess.run(
        [sys.executable, "-c", _DEFERRAL_PROBE], capture_output=True, text=True, check=True
    )
    stages = json.loads(done.stdout.strip().splitlines()[-1])
    assert stages == {
        "help": [False, False],  # [agents built, embedders imported]
        "worker": [False, False],
        "found": "MomentBuilder",
        "after": True,
    }


def test_a_deferred_fill_runs_once_and_may_read_its_own_registry() -> None:
    registry = Registry()
    calls = []

    def fill() -> None:
        calls.append(len(registry.agents))  # a re-entrant read sees what is there, no loop
        from p8fs.agents import MomentBuilder

        registry.add_agent(MomentBuilder, "late")

    registry.agents.defer(fill)
    assert calls == []
    assert registry.agents.names() == ["MomentBuilder"]
    assert "agentlets.moments.MomentBuilder" in registry.agents
    assert calls == [0]
