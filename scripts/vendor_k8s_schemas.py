"""Copy the Kubernetes JSON schemas the manifests need out of a kubernetes-validate wheel.

Usage: python scripts/vendor_k8s_schemas.py kubernetes_validate-1.32.0-py3-none-any.whl

Why vendored: the manifest validator (deploy/validate.py) must run offline and must not
depend on a 16 MB package for a dozen schemas. The kind files are copied byte for byte from the
wheel's ``v1.32.0-local-strict`` set (strict: every object rejects unknown fields, as
``kubectl apply --validate=strict`` does); ``_definitions.json`` keeps only the definitions
those kinds reach through ``$ref`` (each one unchanged), which cuts it from 1.3 MB.
"""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

SET = "v1.32.0-local-strict"
PREFIX = f"kubernetes_validate/kubernetes-json-schema/{SET}/"
#: The core kinds p8fs manifests use or may reasonably add (anything else is rejected).
KINDS = (
    "namespace-v1.json",
    "configmap-v1.json",
    "secret-v1.json",
    "service-v1.json",
    "serviceaccount-v1.json",
    "deployment-apps-v1.json",
    "cronjob-batch-v1.json",
    "job-batch-v1.json",
    "poddisruptionbudget-policy-v1.json",
)
OUT = Path(__file__).resolve().parent.parent / "deploy" / "schemas" / "kubernetes" / SET
#: Kind files refer to ``/api/_definitions.json#/$defs/NAME``, definitions to ``#/$defs/NAME``.
DEFS_REF = "#/$defs/"


def refs(node: Any) -> set[str]:
    """Every definition name ``node`` refers to."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and DEFS_REF in value:
                found.add(value.split(DEFS_REF, 1)[1])
            else:
                found |= refs(value)
    elif isinstance(node, list):
        for item in node:
            found |= refs(item)
    return found


def main(wheel: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        definitions = json.loads(archive.read(PREFIX + "_definitions.json"))
        wanted: set[str] = set()
        for name in KINDS:
            data = archive.read(PREFIX + name)
            (OUT / name).write_bytes(data)
            wanted |= refs(json.loads(data))
    defs = definitions["$defs"]
    todo, kept = list(wanted), set()
    while todo:
        name = todo.pop()
        if name in kept:
            continue
        kept.add(name)
        todo.extend(refs(defs[name]) - kept)
    pruned = {**definitions, "$defs": {k: defs[k] for k in sorted(kept)}}
    (OUT / "_definitions.json").write_text(json.dumps(pruned, indent=1) + "\n")
    print(f"{len(KINDS)} kinds, {len(kept)} of {len(defs)} definitions -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
