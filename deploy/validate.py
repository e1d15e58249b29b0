"""Validate rendered Kubernetes manifests offline, against what the cluster would enforce.

    kubectl kustomize deploy/k8s | python deploy/validate.py -
    python deploy/validate.py deploy/k8s          (runs `kubectl kustomize` itself)

Every document must have a schema, or it is an error: a validator that skips kinds it does not
know proves nothing about them. Schemas (see deploy/schemas/*/SOURCE.md):

- core kinds (Deployment, CronJob, ConfigMap, Service, Namespace, ...): Kubernetes 1.32's JSON
  schemas, *strict* variant (unknown fields are errors, as with `kubectl apply
  --validate=strict`);
- KEDA kinds (ScaledObject, TriggerAuthentication): the `openAPIV3Schema` of KEDA 2.20's own
  CRDs, made strict the same way (every object without `additionalProperties` or
  `x-kubernetes-preserve-unknown-fields` rejects unknown fields, which is what the API server
  does for a CRD under strict field validation), with `metadata` checked as an ObjectMeta.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parent / "schemas"
KUBERNETES = SCHEMAS / "kubernetes" / "v1.32.0-local-strict"
CRDS = tuple(sorted((SCHEMAS / "keda").glob("*.yaml")))
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = {"$ref": f"{DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}


def kubernetes_schema_file(api_version: str, kind: str) -> Path:
    """The schema file of a core kind, named as in kubernetes-json-schema:
    ``<kind>-<group's first label>-<version>.json`` (no group for the core ``v1``)."""
    group, _, version = api_version.rpartition("/")
    parts = [kind.lower(), group.split(".")[0], version] if group else [kind.lower(), version]
    return KUBERNETES / ("-".join(parts) + ".json")


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 CRD schema in which every object rejects unknown fields."""
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for item in node:
                visit(item)

    visit(schema)
    return schema


def crd_schemas(paths: Iterable[Path] = CRDS) -> dict[tuple[str, str], dict[str, Any]]:
    """``(apiVersion, kind)`` -> strict schema, for every served version of every CRD."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in paths:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                if not version.get("served", True):
                    continue
                schema = strict(version["schema"]["openAPIV3Schema"])
                schema.setdefault("properties", {})["metadata"] = OBJECT_META
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                found[key] = schema
    return found


@dataclass
class ManifestValidator:
    """Validates documents; build once, call :meth:`errors` per document."""

    crds: dict[tuple[str, str], dict[str, Any]] = field(default_factory=crd_schemas)

    @cached_property
    def registry(self) -> Registry:
        definitions = json.loads((KUBERNETES / "_definitions.json").read_text())
        return Registry().with_resource(DEFINITIONS_ID, Resource.from_contents(definitions))

    def known_kinds(self) -> set[tuple[str, str]]:
        core = set()
        for path in KUBERNETES.glob("*.json"):
            if path.name.startswith("_"):
                continue
            schema = json.loads(path.read_text())
            for api_version in schema["properties"]["apiVersion"]["enum"]:
                for kind in schema["properties"]["kind"]["enum"]:
                    core.add((api_version, kind))
        return core | set(self.crds)

    def schema_for(self, api_version: str, kind: str) -> dict[str, Any] | None:
        if (api_version, kind) in self.crds:
            return self.crds[(api_version, kind)]
        path = kubernetes_schema_file(api_version, kind)
        if path.is_file():
            schema: dict[str, Any] = json.loads(path.read_text())
            return schema
        return None

    def errors(self, document: Any) -> Iterator[str]:
        """Every reason ``document`` would be refused (nothing when it is valid)."""
        if not isinstance(document, dict):
            yield f"not a mapping: {type(document).__name__}"
            return
        api_version, kind = document.get("apiVersion"), document.get("kind")
        name = (document.get("metadata") or {}).get("name", "?")
        where = f"{api_version}/{kind} {name}"
        if not isinstance(api_version, str) or not isinstance(kind, str):
            yield f"{where}: apiVersion and kind are required"
            return
        schema = self.schema_for(api_version, kind)
        if schema is None:
            yield (
                f"{where}: no schema for this kind (known: "
                f"{', '.join(sorted(f'{a}/{k}' for a, k in self.known_kinds()))})"
            )
            return
        validator = Draft202012Validator(schema, registry=self.registry)
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path)):
            path = ".".join(str(p) for p in error.absolute_path) or "(document)"
            yield f"{where}: {path}: {error.message}"


def render(directory: Path) -> list[Any]:
    """``kubectl kustomize DIRECTORY`` as a list of documents."""
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d is not None]


def main(argv: list[str]) -> int:
    source = argv[1] if len(argv) > 1 else str(Path(__file__).resolve().parent / "k8s")
    if source == "-":
        documents = [d for d in yaml.safe_load_all(sys.stdin) if d is not None]
    else:
        documents = render(Path(source))
    validator = ManifestValidator()
    problems = [problem for document in documents for problem in validator.errors(document)]
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(documents)} documents, {len(problems)} problems")
    return 1 if problems or not documents else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
