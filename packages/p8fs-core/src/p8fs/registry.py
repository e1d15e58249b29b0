"""Registries: what plugins registered, validated, de-duplicated and indexed for lookup.

The plugin hooks are called once to fill a :class:`Registry`; from then on lookups are plain
dictionary reads, so no hook ever sits on the hot path of processing a file. A kind of class may
be filled on its first read instead of at start (:meth:`NamedRegistry.defer`): the agents are,
because building their pydantic models costs more than a command or a worker that never runs an
agent should pay.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from p8fs.errors import PluginError, UnsupportedContent

if TYPE_CHECKING:  # pragma: no cover
    from p8fs.agents.base import Agent

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Registration(Generic[T]):
    """One registered class and the plugin that registered it."""

    name: str
    cls: type[T]
    plugin: str


@dataclass(frozen=True, slots=True)
class RegistrationProblem:
    """Something a plugin tried to register and the registry refused, with why."""

    plugin: str
    kind: str
    message: str


class NamedRegistry(Generic[T]):
    """Classes of one kind, unique by name, remembering which plugin registered each.

    ``base`` returns the class every registration must subclass; it is called on the first
    registration, so that building an empty registry imports no kind's module.
    """

    def __init__(
        self,
        kind: str,
        base: Callable[[], type[T]] | None,
        validate: Callable[[type[T]], None],
    ):
        self.kind = kind
        self._base = base
        self._validate = validate
        self._items: dict[str, Registration[T]] = {}
        self._aliases: dict[str, str] = {}
        self._fill: Callable[[], None] | None = None
        self._filling = False
        self._lock = threading.RLock()

    def defer(self, fill: Callable[[], None]) -> None:
        """Call ``fill`` (which registers this kind's classes) on the first read, not now."""
        self._fill = fill

    def load(self) -> None:
        """Run a deferred fill now (once; concurrent readers wait for it to finish)."""
        if self._fill is None:
            return
        with self._lock:  # re-entrant: a fill that reads this registry sees what it added so far
            fill = self._fill
            if fill is None or self._filling:
                return
            self._filling = True
            try:
                fill()
            finally:
                self._fill, self._filling = None, False

    def add(self, cls: type[T], plugin: str, *, aliases: Iterable[str] = ()) -> Registration[T]:
        """Validate and add ``cls``; raise :class:`PluginError` (naming both plugins) on conflict."""
        if not inspect.isclass(cls):
            raise PluginError(f"{plugin}: {self.kind} registration must be a class, got {cls!r}")
        base = self._base() if self._base is not None else None
        if base is not None and not issubclass(cls, base):
            raise PluginError(
                f"{plugin}: {cls.__qualname__} must subclass {base.__module__}."
                f"{base.__qualname__} to be registered as a {self.kind}"
            )
        self._validate(cls)
        name = self.name_of(cls)
        aliases = tuple(aliases)
        for key in (name, *aliases):
            owner = self._items.get(key) or self._items.get(self._aliases.get(key, ""))
            if owner is not None:
                raise PluginError(
                    f"{plugin}: {self.kind} name {key!r} is already registered by plugin "
                    f"{owner.plugin!r} ({owner.cls.__module__}.{owner.cls.__qualname__})"
                )
        registration = Registration(name=name, cls=cls, plugin=plugin)
        self._items[name] = registration
        for alias in aliases:
            self._aliases[alias] = name
        return registration

    @staticmethod
    def name_of(cls: type[Any]) -> str:
        name = getattr(cls, "name", None)
        return name if isinstance(name, str) else cls.__name__

    def get(self, name: str) -> type[T]:
        self.load()
        key = self._aliases.get(name, name)
        try:
            return self._items[key].cls
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise PluginError(f"no {self.kind} named {name!r} (registered: {known})") from None

    def registration(self, name: str) -> Registration[T]:
        self.load()
        return self._items[self._aliases.get(name, name)]

    def __contains__(self, name: object) -> bool:
        self.load()
        return isinstance(name, str) and (name in self._items or name in self._aliases)

    def __iter__(self) -> Iterator[Registration[T]]:
        self.load()
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        self.load()
        return len(self._items)

    def names(self) -> list[str]:
        self.load()
        return sorted(self._items)


def _validate_provider(cls: type[Any]) -> None:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"provider {cls.__qualname__} must set a non-empty string `name`")
    mime_types = getattr(cls, "mime_types", ())
    extensions = getattr(cls, "extensions", ())
    if not mime_types and not extensions:
        raise PluginError(f"provider {name!r} claims no `mime_types` and no `extensions`")
    for mime in mime_types:
        if not isinstance(mime, str) or "/" not in mime or mime != mime.lower():
            raise PluginError(
                f"provider {name!r}: MIME type {mime!r} must look like 'type/sub' in lower case"
            )
    for ext in extensions:
        if not isinstance(ext, str) or not ext.startswith(".") or ext != ext.lower():
            raise PluginError(
                f"provider {name!r}: extension {ext!r} must be lower case and start with '.'"
            )
    if not isinstance(getattr(cls, "priority", 0), int):
        raise PluginError(f"provider {name!r}: `priority` must be an int")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise PluginError(f"provider {name!r} does not implement: {missing}")


def _validate_chunker(cls: type[Any]) -> None:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"chunker {cls.__qualname__} must set a non-empty string `name`")
    if inspect.isabstract(cls):
        raise PluginError(f"chunker {name!r} is abstract")


def _validate_agent(cls: type[Any]) -> None:
    if not (cls.__doc__ or "").strip():
        raise PluginError(f"agent {cls.__qualname__} needs a docstring: it is the system prompt")


def _validate_embedder(cls: type[Any]) -> None:
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise PluginError(f"embedder {cls.__qualname__} must set a non-empty string `name`")
    if inspect.isabstract(cls):
        missing = ", ".join(sorted(getattr(cls, "__abstractmethods__", ())))
        raise PluginError(f"embedder {name!r} does not implement: {missing}")


@dataclass
class Registry:
    """Everything the loaded plugins registered, plus what was refused and why."""

    providers: NamedRegistry[Any] = field(
        default_factory=lambda: NamedRegistry("provider", _provider_base, _validate_provider)
    )
    chunkers: NamedRegistry[Any] = field(
        default_factory=lambda: NamedRegistry("chunker", _chunker_base, _validate_chunker)
    )
    agents: NamedRegistry[Agent] = field(
        default_factory=lambda: NamedRegistry("agent", _agent_base, _validate_agent)
    )
    embedders: NamedRegistry[Any] = field(
        default_factory=lambda: NamedRegistry("embedder", _embedder_base, _validate_embedder)
    )
    problems: list[RegistrationProblem] = field(default_factory=list)
    _by_mime: dict[str, list[Registration[Any]]] = field(default_factory=dict)
    _by_ext: dict[str, list[Registration[Any]]] = field(default_factory=dict)
    _instances: dict[str, Any] = field(default_factory=dict)
    _available: dict[str, bool] = field(default_factory=dict)

    # -- registration -------------------------------------------------------------------
    def add_provider(self, cls: type[Any], plugin: str) -> None:
        reg = self.providers.add(cls, plugin)
        for mime in cls.mime_types:
            self._index(self._by_mime, mime, reg)
        for ext in cls.extensions:
            self._index(self._by_ext, ext, reg)

    def add_chunker(self, cls: type[Any], plugin: str) -> None:
        self.chunkers.add(cls, plugin)

    def add_agent(self, cls: type[Agent], plugin: str) -> None:
        self.agents.add(cls, plugin, aliases=getattr(cls, "agent_aliases", ()))

    def add_embedder(self, cls: type[Any], plugin: str) -> None:
        self.embedders.add(cls, plugin)

    @staticmethod
    def _index(index: dict[str, list[Registration[Any]]], key: str, reg: Registration[Any]) -> None:
        bucket = index.setdefault(key, [])
        bucket.append(reg)
        # Highest priority first; ties keep registration order (built-ins register first).
        bucket.sort(key=lambda r: -int(r.cls.priority))

    def load_all(self) -> None:
        """Run every deferred fill (listing everything, e.g. ``p8fs plugins``)."""
        for kind in (self.providers, self.chunkers, self.agents, self.embedders):
            kind.load()

    # -- lookup -------------------------------------------------------------------------
    def providers_for_mime(self, mime_type: str) -> list[type[Any]]:
        self.providers.load()
        mime = mime_type.split(";", 1)[0].strip().lower()
        return [r.cls for r in self._by_mime.get(mime, [])]

    def providers_for_extension(self, extension: str) -> list[type[Any]]:
        self.providers.load()
        ext = extension.lower()
        if ext and not ext.startswith("."):
            ext = "." + ext
        return [r.cls for r in self._by_ext.get(ext, [])]

    def provider_for(self, mime_type: str | None, extension: str | None) -> type[Any]:
        """The best provider class for a MIME type, else for an extension.

        Raises :class:`UnsupportedContent` naming both when nothing claims either.
        """
        for found in (
            self.providers_for_mime(mime_type) if mime_type else [],
            self.providers_for_extension(extension) if extension else [],
        ):
            if found:
                # An installed provider beats a higher-priority one whose extra is missing; if
                # none is installed, the best one is returned so its use names the extra.
                return next((cls for cls in found if self.is_available(cls)), found[0])
        raise UnsupportedContent(
            f"no provider for MIME type {mime_type or 'unknown'!s} or extension "
            f"{extension or '(none)'!s}; `p8fs providers` lists what is installed",
            mime_type=mime_type,
            extension=extension,
        )

    def is_available(self, cls: type[Any]) -> bool:
        """Whether a provider's requirements import here (cached: it cannot change in-process)."""
        name = cls.name
        ok = self._available.get(name)
        if ok is None:
            ok = self._available[name] = bool(cls.is_available())
        return ok

    def provider_instance(self, cls_or_name: type[Any] | str) -> Any:
        """The one shared instance of a provider (models are loaded once per process)."""
        cls = self.providers.get(cls_or_name) if isinstance(cls_or_name, str) else cls_or_name
        name = cls.name
        inst = self._instances.get(name)
        if inst is None:
            inst = self._instances[name] = cls()
        return inst


def _provider_base() -> type[Any]:
    from p8fs.providers import ContentProvider

    return ContentProvider


def _chunker_base() -> type[Any]:
    from p8fs.chunking import Chunker

    return Chunker


def _agent_base() -> type[Agent]:
    from p8fs.agents.base import Agent

    return Agent


def _embedder_base() -> type[Any]:
    from p8fs.embedding import Embedder

    return Embedder
