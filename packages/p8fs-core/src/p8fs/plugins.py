"""The plugin manager: built-ins and ``p8fs`` entry points, loaded once, failures isolated.

Built-in plugins are ordinary plugin modules listed in :data:`DEFAULT_PLUGINS` and go through
exactly the same hooks as third-party ones (the simonw/llm pattern). Three environment variables
control loading:

``P8FS_LOAD_PLUGINS``
    Comma-separated allow-list of plugin names (entry-point names, or built-in module names).
    When set, nothing else is loaded, built-ins included. An empty value loads no plugins.
``P8FS_DISABLE_PLUGINS``
    Comma-separated block-list; applied after the allow-list.
``P8FS_TRACE_PLUGINS``
    Any non-empty value logs every hook call and its result (pluggy tracing) to stderr.

A plugin that fails to import, or whose hook raises, is recorded in :attr:`Plugins.failures` with
its name and the error, and skipped; the others load normally. Plugin modules are imported and
most registration hooks called at load; the hooks in :data:`DEFERRED_HOOKS` (the agents) run on
the first read of the registry they fill.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from p8fs import hookspecs
from p8fs.errors import PluginError
from p8fs.registry import RegistrationProblem, Registry

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "p8fs"

#: Built-in plugin modules, registered through the same hooks as everyone else's.
DEFAULT_PLUGINS: tuple[str, ...] = (
    "p8fs.builtin.text",
    "p8fs.builtin.chunkers",
    "p8fs.builtin.agents",
    "p8fs.builtin.embedders",
)

#: The registration hooks and the registry method each one feeds.
REGISTRATION_HOOKS: dict[str, str] = {
    "p8fs_register_providers": "add_provider",
    "p8fs_register_chunkers": "add_chunker",
    "p8fs_register_agents": "add_agent",
    "p8fs_register_embedders": "add_embedder",
}

#: Hooks called when their registry is first read instead of at load, with the registry each
#: fills. Registering an agent builds its pydantic models (about half of plugin loading), which
#: only agent commands and the LLM jobs use; the embedders' module defines pydantic models too,
#: used only when something embeds or searches. ``p8fs --help`` and a storage worker that does
#: not embed pay for neither.
DEFERRED_HOOKS: dict[str, str] = {
    "p8fs_register_agents": "agents",
    "p8fs_register_embedders": "embedders",
}


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """A loaded plugin: its name, where it comes from and its version."""

    name: str
    module: str
    distribution: str | None
    version: str | None
    builtin: bool


@dataclass(frozen=True, slots=True)
class PluginFailure:
    """A plugin that could not be loaded or whose hook raised."""

    name: str
    stage: str
    error: str


@dataclass
class Plugins:
    """The loaded plugin manager and the registry it filled."""

    manager: pluggy.PluginManager
    registry: Registry
    info: dict[str, PluginInfo] = field(default_factory=dict)
    #: Failures so far (a deferred hook adds its own when it runs); :attr:`failures` has all.
    load_failures: list[PluginFailure] = field(default_factory=list)

    @property
    def failures(self) -> list[PluginFailure]:
        """Every plugin failure, deferred hooks run first so that theirs are included."""
        self.registry.load_all()
        return self.load_failures

    @property
    def problems(self) -> list[RegistrationProblem]:
        """Every refused registration, deferred hooks run first."""
        self.registry.load_all()
        return self.registry.problems

    def registered_by(self, plugin: str) -> dict[str, list[str]]:
        """What one plugin registered, by kind (for ``p8fs plugins``)."""
        out: dict[str, list[str]] = {"providers": [], "chunkers": [], "agents": [], "embedders": []}
        for kind in out:
            for reg in getattr(self.registry, kind):
                if reg.plugin == plugin:
                    out[kind].append(reg.name)
        return out

    def add_commands(self, cli: Any) -> None:
        """Run ``p8fs_register_commands`` plugin by plugin, isolating failures."""
        self._call_each("p8fs_register_commands", lambda _name: {"cli": cli})

    # -- internals ----------------------------------------------------------------------
    def _call_each(self, hook_name: str, kwargs_for: Callable[[str], dict[str, Any]]) -> None:
        hook = getattr(self.manager.hook, hook_name)
        for impl in hook.get_hookimpls():
            plugin_name = impl.plugin_name
            others = [p for p in self.manager.get_plugins() if p is not impl.plugin]
            caller = self.manager.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                caller(**kwargs_for(plugin_name))
            except Exception as exc:  # a broken plugin must not take the others down
                log.warning("plugin %r failed in %s: %s", plugin_name, hook_name, exc)
                self.load_failures.append(PluginFailure(plugin_name, hook_name, _describe(exc)))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _split_env(name: str) -> list[str] | None:
    raw = os.environ.get(name)
    if raw is None:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def _wanted(name: str, allow: list[str] | None, block: list[str]) -> bool:
    if allow is not None and name not in allow:
        return False
    return name not in block


def _dist_version(module: ModuleType) -> tuple[str | None, str | None]:
    from importlib.metadata import packages_distributions, version

    top = module.__name__.split(".", 1)[0]
    dists = packages_distributions().get(top) or []
    for dist in dists:
        try:
            return dist, version(dist)
        except Exception:  # pragma: no cover - metadata oddities
            continue
    return None, None


def load_plugins() -> Plugins:
    """Build a fresh plugin manager and registry from built-ins and entry points.

    Most code wants :func:`get_plugins` (cached); tests that change the environment call this.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    if os.environ.get("P8FS_TRACE_PLUGINS"):
        manager.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        manager.enable_tracing()

    allow = _split_env("P8FS_LOAD_PLUGINS")
    block = _split_env("P8FS_DISABLE_PLUGINS") or []
    plugins = Plugins(manager=manager, registry=Registry())

    from p8fs import __version__

    for module_name in DEFAULT_PLUGINS:
        if not _wanted(module_name, allow, block):
            continue
        try:
            module = importlib.import_module(module_name)
            manager.register(module, name=module_name)
        except Exception as exc:
            plugins.load_failures.append(PluginFailure(module_name, "import", _describe(exc)))
            continue
        plugins.info[module_name] = PluginInfo(
            module_name, module_name, "p8fs-core", __version__, builtin=True
        )

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if not _wanted(ep.name, allow, block) or manager.has_plugin(ep.name):
            continue
        try:
            module = ep.load()
            manager.register(module, name=ep.name)
        except Exception as exc:
            log.warning("plugin %r could not be loaded: %s", ep.name, exc)
            plugins.load_failures.append(PluginFailure(ep.name, "import", _describe(exc)))
            continue
        dist = ep.dist.name if ep.dist is not None else None
        ver = ep.dist.version if ep.dist is not None else None
        if dist is None and isinstance(module, ModuleType):
            dist, ver = _dist_version(module)
        plugins.info[ep.name] = PluginInfo(ep.name, ep.value, dist, ver, builtin=False)

    registry = plugins.registry
    for hook_name, method in REGISTRATION_HOOKS.items():
        add = getattr(registry, method)

        def kwargs_for(
            plugin_name: str, add: Callable[..., None] = add, hook_name: str = hook_name
        ) -> dict[str, Any]:
            def register(cls: type[Any]) -> None:
                try:
                    add(cls, plugin_name)
                except PluginError as exc:
                    # Refuse this one class; the plugin's other registrations still count.
                    log.warning("%s", exc)
                    registry.problems.append(RegistrationProblem(plugin_name, hook_name, str(exc)))

            return {"register": register}

        deferred = DEFERRED_HOOKS.get(hook_name)
        if deferred is None:
            plugins._call_each(hook_name, kwargs_for)
        else:
            getattr(registry, deferred).defer(partial(plugins._call_each, hook_name, kwargs_for))
    return plugins


_cached: Plugins | None = None
_lock = threading.Lock()


def get_plugins() -> Plugins:
    """The process-wide plugins and registry, built on first use."""
    global _cached
    if _cached is None:
        with _lock:
            if _cached is None:
                _cached = load_plugins()
    return _cached


def get_registry() -> Registry:
    return get_plugins().registry


def reset_plugins() -> None:
    """Forget the cached plugins (tests that change ``P8FS_*PLUGINS`` variables)."""
    global _cached
    with _lock:
        _cached = None
