"""``p8fs plugins`` and ``p8fs providers``: what is installed and what it registered."""

from __future__ import annotations

import json
from typing import Any

import click


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """List loaded plugins with their versions and what each registered."""
    from rich.console import Console
    from rich.table import Table

    from p8fs.plugins import get_plugins

    loaded = get_plugins()
    rows: list[dict[str, Any]] = []
    for name, info in loaded.info.items():
        rows.append(
            {
                "name": name,
                "distribution": info.distribution,
                "version": info.version,
                "builtin": info.builtin,
                **loaded.registered_by(name),
            }
        )
    failures = [{"name": f.name, "stage": f.stage, "error": f.error} for f in loaded.failures]
    problems = [{"plugin": p.plugin, "hook": p.kind, "error": p.message} for p in loaded.problems]
    if as_json:
        click.echo(
            json.dumps({"plugins": rows, "failures": failures, "problems": problems}, indent=2)
        )
        return
    console = Console()
    table = Table(title="p8fs plugins")
    for column in ("plugin", "distribution", "version", "providers", "chunkers", "agents"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"] + (" (built-in)" if row["builtin"] else ""),
            row["distribution"] or "-",
            row["version"] or "-",
            ", ".join(row["providers"]) or "-",
            ", ".join(row["chunkers"]) or "-",
            ", ".join(row["agents"]) or "-",
        )
    console.print(table)
    for f in failures:
        console.print(f"[red]plugin {f['name']!r} failed ({f['stage']}): {f['error']}")
    for p in problems:
        console.print(f"[yellow]plugin {p['plugin']!r}: {p['error']}")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def providers(as_json: bool) -> None:
    """List every content provider: MIME types, extensions, priority, plugin, installed or not."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from p8fs.plugins import get_registry

    registry = get_registry()
    rows: list[dict[str, Any]] = []
    for reg in sorted(registry.providers, key=lambda r: r.name):
        cls = reg.cls
        missing = cls.missing_requirements()
        rows.append(
            {
                "name": reg.name,
                "mime_types": list(cls.mime_types),
                "extensions": list(cls.extensions),
                "priority": cls.priority,
                "plugin": reg.plugin,
                "requires": list(cls.requires),
                "extra": cls.extra,
                "installed": not missing,
                "missing": missing,
                "install": None if not missing else (cls.extra or ", ".join(missing)),
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="p8fs providers")
    for column in (
        "provider",
        "MIME types",
        "extensions",
        "priority",
        "plugin",
        "extra",
        "installed",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["name"],
            "\n".join(row["mime_types"]),
            " ".join(row["extensions"]),
            str(row["priority"]),
            row["plugin"],
            escape(row["extra"] or "-"),
            # escape: "p8fs-node[office]" would otherwise be read as Rich markup and vanish.
            "yes" if row["installed"] else f"[red]no: pip install '{escape(row['install'])}'",
        )
    Console().print(table)
    missing = sum(1 for row in rows if not row["installed"])
    if missing:
        Console().print(
            f"{missing} provider(s) need an extra: they are listed, and a file they claim fails "
            "with the install hint until it is installed."
        )
