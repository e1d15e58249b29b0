"""Every hook p8fs offers, each documented here, where it is declared.

p8fs follows pytest (`_pytest/hookspec.py`) and simonw/llm (`llm/hookspecs.py`): the core is
small and everything else, built-ins included, arrives through these hooks. All hooks are
*registration* hooks: a plugin is handed a ``register`` callable (or the CLI group) and registers
classes. The core owns validation, duplicate detection, priority and lookup, and it calls these
hooks once, when the registry is built, never per file.

A plugin is any module with functions named like the specs below, decorated with
``p8fs.hookimpl``. Third-party distributions expose it through the ``p8fs`` entry-point group::

    [project.entry-points.p8fs]
    subtitles = "p8fs_subtitles.plugin"
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import click

    from p8fs.agents.base import Agent
    from p8fs.chunking import Chunker
    from p8fs.embedding import Embedder
    from p8fs.providers import ContentProvider

PROJECT_NAME = "p8fs"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def p8fs_register_providers(register: Callable[[type[ContentProvider]], None]) -> None:
    """Register content provider classes: what turns a file into text sections.

    Call ``register(ProviderClass)`` once per class. The class must subclass
    :class:`p8fs.providers.ContentProvider` and set ``name`` (unique across all plugins),
    ``mime_types`` and/or ``extensions`` (what it claims) and ``priority`` (higher wins when two
    providers claim the same MIME type or extension). Registering a class must not import the
    heavy library it wraps: set ``requires`` and ``extra`` instead, so a provider whose extra is
    not installed is still listed and fails with an install hint only when used.

    A class that fails validation, or whose name is taken, is reported with the plugin's name
    and skipped; the plugin's other registrations and other plugins are unaffected.
    """


@hookspec
def p8fs_register_chunkers(register: Callable[[type[Chunker]], None]) -> None:
    """Register chunker classes: what cuts a document's sections into stored chunks.

    Call ``register(ChunkerClass)`` with a subclass of :class:`p8fs.chunking.Chunker` that sets a
    unique ``name``. Chunkers are chosen by name (``P8FS_CHUNKER``, default ``"tokens"``; the
    agents use ``"records"`` to keep transcript segments whole). A chunker must never drop or
    rewrite characters: concatenating its chunks minus their overlaps gives back the input.
    """


@hookspec
def p8fs_register_agents(register: Callable[[type[Agent]], None]) -> None:
    """Register agent classes: pydantic models run through instructor against an LLM.

    Call ``register(AgentClass)`` with a subclass of :class:`p8fs.agents.Agent` (a pydantic
    model) whose docstring is the system prompt and whose fields are the typed output; the
    runtime calls its ``prepare_input``/``merge``/``postprocess``, so a bare pydantic model is
    refused. The agent is found by its class name and by its ``agent_aliases`` (for example
    ``"agentlets.moments.MomentBuilder"``, the name ``p8fs eval --agent-model`` accepts). Names
    are unique across all plugins.

    This hook is called on the first lookup of an agent, not when plugins load: import the
    agent classes inside the hook function, not at the top of the plugin module, so that
    commands and workers that run no agent never build their models.
    """


@hookspec
def p8fs_register_embedders(register: Callable[[type[Embedder]], None]) -> None:
    """Register embedder classes: what turns chunks and queries into vectors for semantic search.

    Call ``register(EmbedderClass)`` with a subclass of :class:`p8fs.embedding.Embedder` that
    sets a unique ``name`` and implements ``model_id`` and ``async embed(texts)``. The embedder
    in use is chosen by name with ``P8FS_EMBEDDER`` (built-ins: ``openai`` for any
    OpenAI-compatible ``/v1/embeddings`` server, ``local`` for a model folder on disk) and built
    by the class's ``from_settings(settings)``, which must neither connect nor load a model:
    that happens on the first ``embed``. Vectors are stored per chunk under ``model_id``, so
    vectors of two models are never compared. ``embed`` raises
    :class:`p8fs.embedding.EmbedderUnavailable` when its server or model cannot be reached (a
    worker then waits for it instead of failing files) and
    :class:`p8fs.embedding.EmbedderRefused` when the input itself is refused. An embedder must
    never download a model at run time.

    Like the agents hook, this one is called on the first embedder lookup, not when plugins
    load: import the embedder classes inside the hook function.
    """


@hookspec
def p8fs_register_commands(cli: click.Group) -> None:
    """Add commands to the ``p8fs`` command-line interface.

    ``cli`` is the root :class:`click.Group`; add commands with ``@cli.command()`` or
    ``cli.add_command(...)``. Called once when the CLI is built. This is how the runner brings the
    original system's ``python -m p8fs.cli router`` and ``storage-worker`` verbs into the core CLI
    without the core importing the runner.
    """
