"""Build throwaway installed distributions (a ``.dist-info`` folder with entry points) on sys.path.

This is how a pip-installed third-party plugin looks to ``importlib.metadata``, so the plugin
manager's real discovery path runs without installing anything into the environment.
"""

from __future__ import annotations

import textwrap
from pathlib import Path


def make_plugin_dist(root: Path, dist: str, version: str, entry_points: dict[str, str],
                     modules: dict[str, str]) -> Path:
    """Write modules and a dist-info declaring ``entry_points`` (name -> "module") in group p8fs."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "\n".join(f"{name} = {target}" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[p8fs]\n{lines}\n")
    (info / "top_level.txt").write_text("\n".join(modules) + "\n")
    return root
