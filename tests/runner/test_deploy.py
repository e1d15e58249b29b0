"""The Kubernetes manifests: they parse, use known kinds, agree with the runner's tier table,
every command they run exists in the ``p8fs-run`` CLI (resolved through click, options too), and
what ``kubectl kustomize`` renders passes Kubernetes' and KEDA's own schemas, with the image named
once in kustomization.yaml (tests/image/ checks the built image's version against that tag)."""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from p8fs_runner.settings import RunnerSettings
from p8fs_runner.tiers import TIERS
from tests.fixtures.servers import REPO_ROOT, server_missing

K8S = REPO_ROOT / "deploy" / "k8s"

KNOWN_KINDS = {
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("batch/v1", "CronJob"),
    ("policy/v1", "PodDisruptionBudget"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}
#: Non-P8FS variables the manifests may set, and why.
OTHER_VARIABLES = {
    "TMPDIR",  # temporary files on the scratch volume
    "HOME",
    "XDG_CACHE_HOME",
    "DO_NOT_TRACK",  # unstructured's telemetry off
    "POD_NAME",  # the router's --worker-id
    "DREAMING_TENANT_ID",  # the dreaming CronJob's tenant argument
    "ANTHROPIC_API_KEY",
    "OPENAI_API_KEY",
}
METRICS_PORT = 9090


def manifest_files() -> list[Path]:
    files = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
    assert files, f"no manifests in {K8S}"
    return files


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in manifest_files():
        with path.open() as handle:
            for doc in yaml.safe_load_all(handle):
                if doc is not None:
                    docs.append((path.name, doc))
    return docs


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in documents() if d["kind"] == kind}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return doc["spec"]["template"]["spec"]


def workloads() -> list[tuple[str, dict[str, Any]]]:
    return [(n, d) for n, d in documents() if d["kind"] in ("Deployment", "CronJob")]


def argv(container: dict[str, Any]) -> list[str]:
    return [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]


# -- structure -----------------------------------------------------------------------------


def test_every_manifest_parses_with_known_kinds_and_names() -> None:
    seen = set()
    for filename, doc in documents():
        assert isinstance(doc, dict), filename
        pair = (doc.get("apiVersion"), doc.get("kind"))
        assert pair in KNOWN_KINDS, f"{filename}: unknown {pair}"
        if doc["kind"] == "Kustomization":
            continue
        name = doc["metadata"]["name"]
        assert (doc["kind"], name) not in seen, f"duplicate {doc['kind']} {name}"
        seen.add((doc["kind"], name))
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "p8fs", f"{filename}: {name}"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in manifest_files()} - {"kustomization.yaml"}


def test_deployment_selectors_match_their_pods() -> None:
    for name, doc in by_kind("Deployment").items():
        selector = doc["spec"]["selector"]["matchLabels"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name


def test_every_variable_is_a_p8fs_setting_or_a_known_other() -> None:
    settings_variables = set()
    for field_name, info in RunnerSettings.model_fields.items():
        settings_variables.add(f"P8FS_{field_name.upper()}")
        alias = info.validation_alias
        if alias is not None:
            choices = getattr(alias, "choices", [alias])
            settings_variables.update(str(c).upper() for c in choices)
    names: list[tuple[str, str]] = []
    for name, doc in by_kind("ConfigMap").items():
        names += [(name, key) for key in doc["data"]]
    for name, doc in workloads():
        for container in pod_spec(doc)["containers"]:
            names += [(name, env["name"]) for env in container.get("env", [])]
    assert names
    for where, variable in names:
        assert variable in settings_variables | OTHER_VARIABLES, f"{where}: unknown {variable}"
    config = by_kind("ConfigMap")["p8fs-config"]["data"]
    assert int(config["P8FS_METRICS_PORT"]) == METRICS_PORT
    assert config["P8FS_EMBED_SERVICES"] == "never"  # production never embeds


def test_no_secret_values_in_manifests() -> None:
    secret_fields = {
        f"P8FS_{n.upper()}"
        for n, info in RunnerSettings.model_fields.items()
        if "SecretStr" in str(info.annotation)
    }
    assert "P8FS_S3_SECRET_KEY" in secret_fields
    for _, doc in documents():
        if doc["kind"] == "ConfigMap":
            assert not secret_fields & set(doc["data"]), "secrets belong in p8fs-secrets"
    for name, doc in workloads():
        for container in pod_spec(doc)["containers"]:
            for env in container.get("env", []):
                assert env["name"] not in secret_fields or "valueFrom" in env, name
            refs = [e.get("secretRef", {}).get("name") for e in container.get("envFrom", [])]
            assert "p8fs-secrets" in refs, f"{name} does not read the p8fs-secrets Secret"


def test_workloads_are_locked_down() -> None:
    for name, doc in workloads():
        spec = pod_spec(doc)
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/scratch" in mounts, f"{name}: TMPDIR /scratch must be writable"
            assert "memory" in container["resources"]["limits"], name


def _probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


def test_long_running_services_have_health_and_readiness_probes() -> None:
    deployments = by_kind("Deployment")
    assert {"tiered-storage-router", "seaweedfs-grpc-subscriber"} <= deployments.keys()
    for name, doc in deployments.items():
        for container in pod_spec(doc)["containers"]:
            live, ready = container["livenessProbe"], container["readinessProbe"]
            assert live["httpGet"]["path"] == "/healthz", name
            assert ready["httpGet"]["path"] == "/readyz", name
            assert _probe_port(container, live) == METRICS_PORT, name
            assert _probe_port(container, ready) == METRICS_PORT, name


# -- agreement with the runner's tier table --------------------------------------------------

EXPECTED_SCALING = {"small": (2, 20), "medium": (0, None), "large": (0, None)}


@pytest.mark.parametrize("tier", sorted(TIERS))
def test_tier_workers_match_the_tier_table(tier: str) -> None:
    spec = TIERS[tier]
    deployment = by_kind("Deployment")[f"storage-worker-{tier}"]
    (container,) = pod_spec(deployment)["containers"]
    assert container["resources"]["limits"]["memory"] == spec.memory
    assert {"1400Mi": "small", "4Gi": "medium", "12Gi": "large"}[spec.memory] == tier
    args = argv(container)
    assert args[:3] == ["p8fs-run", "--tier", tier]
    grace = float(args[args.index("--grace") + 1]) if "--grace" in args else 25.0
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] > grace

    scaler = by_kind("ScaledObject")[f"storage-worker-{tier}-scaler"]
    assert scaler["spec"]["scaleTargetRef"]["name"] == f"storage-worker-{tier}"
    (trigger,) = scaler["spec"]["triggers"]
    assert trigger["type"] == "nats-jetstream"
    assert trigger["metadata"]["stream"] == spec.stream
    assert trigger["metadata"]["consumer"] == spec.durable
    assert trigger["metadata"]["natsServerMonitoringEndpoint"].endswith(":8222")
    low, high = EXPECTED_SCALING[tier]
    assert scaler["spec"]["minReplicaCount"] == low
    if high is not None:
        assert scaler["spec"]["maxReplicaCount"] == high
    assert scaler["spec"]["maxReplicaCount"] >= max(low, 1)
    assert deployment["spec"]["replicas"] == low


def test_every_scaler_targets_a_deployment() -> None:
    deployments = by_kind("Deployment")
    for name, scaler in by_kind("ScaledObject").items():
        assert scaler["spec"]["scaleTargetRef"]["name"] in deployments, name


# -- commands exist in the CLI ---------------------------------------------------------------


def resolve(command: click.Command, args: list[str], path: str) -> str:
    """Parse ``args`` the way click would, descending into sub-commands; raise on any unknown
    command or option. Returns the resolved command path."""
    ctx = command.make_context(path, list(args), resilient_parsing=False)
    if isinstance(command, click.Group):
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args (9.0: in args)
            warnings.simplefilter("ignore", DeprecationWarning)
            rest = [*ctx.protected_args, *ctx.args]
        if not rest:
            assert command.invoke_without_command, f"{path} needs a sub-command"
            return path
        name, *tail = rest
        sub = command.get_command(ctx, name)
        if sub is None:
            raise click.UsageError(f"{path} has no sub-command {name!r}")
        return resolve(sub, tail, f"{path} {name}")
    assert not ctx.args, f"{path}: unexpected arguments {ctx.args}"
    return path


def commands() -> list[tuple[str, list[str]]]:
    found = []
    for _, doc in workloads():
        for container in pod_spec(doc)["containers"]:
            found.append((f"{doc['kind']}/{doc['metadata']['name']}", argv(container)))
    return found


def test_every_workload_runs_p8fs_run() -> None:
    found = commands()
    assert len(found) == 7  # router, three tiers, bridge, two dreaming jobs
    for where, args in found:
        assert args and args[0] == "p8fs-run", f"{where}: {args}"


@pytest.mark.parametrize(("where", "args"), commands(), ids=[where for where, _ in commands()])
def test_every_command_exists_in_the_cli(where: str, args: list[str]) -> None:
    from p8fs_runner.cli import main

    resolved = resolve(main, args[1:], "p8fs-run")
    assert resolved.startswith("p8fs-run")


def test_the_resolver_rejects_what_click_rejects() -> None:
    from p8fs_runner.cli import main

    with pytest.raises(click.UsageError):
        resolve(main, ["no-such-verb"], "p8fs-run")
    with pytest.raises(click.UsageError):
        resolve(main, ["--tier", "huge"], "p8fs-run")
    with pytest.raises(click.UsageError):
        resolve(main, ["router", "--no-such-option"], "p8fs-run")
    assert resolve(main, ["--tier", "small"], "p8fs-run") == "p8fs-run"
    assert resolve(main, ["dlq", "list"], "p8fs-run") == "p8fs-run dlq list"


# -- the rendered manifests (kubectl kustomize) against the cluster's own schemas --------------

VALIDATE = REPO_ROOT / "deploy" / "validate.py"
KUSTOMIZATION = K8S / "kustomization.yaml"
#: The original system's image: it runs the original code, never p8fs.
ORIGINAL_IMAGE = "percolationlabs/p8fs-eco"
#: The workloads that read files (any type: routing is by size) get the full image.
FULL_IMAGE_WORKLOADS = {f"storage-worker-{tier}" for tier in TIERS if tier != "test"}
#: nats-jetstream trigger parameters KEDA 2.20 reads (kedacore/keda,
#: pkg/scalers/nats_jetstream_scaler.go, parseNATSJetStreamMetadata); the CRD types trigger
#: metadata as a free map of strings, so a misspelled key passes the schema and is ignored.
NATS_JETSTREAM_PARAMETERS = {
    "natsServerMonitoringEndpoint",
    "account",
    "stream",
    "consumer",
    "lagThreshold",
    "activationLagThreshold",
    "useHttps",
}


def _validator_module() -> Any:
    spec = importlib.util.spec_from_file_location("p8fs_deploy_validate", VALIDATE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def validate() -> Any:
    return _validator_module()


@pytest.fixture(scope="module")
def rendered(validate: Any) -> list[dict[str, Any]]:
    """``kubectl kustomize deploy/k8s``: what ``kubectl apply -k`` would send."""
    import shutil

    if shutil.which("kubectl") is None:
        server_missing("kubectl (Debian: apt-get install kubernetes-client; needs kustomize)")
    documents: list[dict[str, Any]] = validate.render(K8S)
    return documents


def _rendered_containers(documents: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for doc in documents:
        if doc["kind"] in ("Deployment", "CronJob"):
            for container in pod_spec(doc)["containers"] + pod_spec(doc).get("initContainers", []):
                found.append((doc["metadata"]["name"], container))
    return found


def test_rendered_manifests_match_kubernetes_and_keda_schemas(
    rendered: list[dict[str, Any]], validate: Any
) -> None:
    validator = validate.ManifestValidator()
    kinds = {(d["apiVersion"], d["kind"]) for d in rendered}
    assert ("keda.sh/v1alpha1", "ScaledObject") in kinds
    assert ("apps/v1", "Deployment") in kinds and ("batch/v1", "CronJob") in kinds
    assert len(rendered) == 12  # namespace, config, router, 3 workers, 3 scalers, bridge, 2 jobs
    problems = [p for doc in rendered for p in validator.errors(doc)]
    assert problems == []


def test_the_validator_rejects_unknown_kinds_and_misspelled_fields(
    rendered: list[dict[str, Any]], validate: Any
) -> None:
    import copy

    validator = validate.ManifestValidator()
    unknown = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledThing", "metadata": {"name": "x"}}
    (problem,) = validator.errors(unknown)
    assert "no schema for this kind" in problem
    (problem,) = validator.errors({**unknown, "apiVersion": "v1", "kind": "Frobnicator"})
    assert "no schema for this kind" in problem

    scaler = next(d for d in rendered if d["kind"] == "ScaledObject")
    misspelled = copy.deepcopy(scaler)
    misspelled["spec"]["minReplicaCont"] = misspelled["spec"].pop("minReplicaCount")
    assert any("'minReplicaCont' was unexpected" in p for p in validator.errors(misspelled))
    wrong_type = copy.deepcopy(scaler)
    wrong_type["spec"]["maxReplicaCount"] = "twenty"
    assert any("maxReplicaCount" in p for p in validator.errors(wrong_type))
    no_triggers = copy.deepcopy(scaler)
    del no_triggers["spec"]["triggers"]
    assert any("'triggers' is a required property" in p for p in validator.errors(no_triggers))

    deployment = copy.deepcopy(next(d for d in rendered if d["kind"] == "Deployment"))
    deployment["spec"]["replicas"] = "two"
    pod_spec(deployment)["containers"][0]["volumeMount"] = []
    problems = list(validator.errors(deployment))
    assert any("'volumeMount' was unexpected" in p for p in problems)
    assert any("spec.replicas" in p and "'two'" in p for p in problems)


def test_nats_jetstream_triggers_use_only_parameters_keda_reads(
    rendered: list[dict[str, Any]],
) -> None:
    triggers = [t for d in rendered if d["kind"] == "ScaledObject" for t in d["spec"]["triggers"]]
    assert len(triggers) == 3
    for trigger in triggers:
        assert set(trigger["metadata"]) <= NATS_JETSTREAM_PARAMETERS, trigger["metadata"]


# -- the image: one place names it, every workload runs it, the tag says which code ---------------


def kustomize_images() -> dict[str, dict[str, str]]:
    kustomization = yaml.safe_load(KUSTOMIZATION.read_text())
    return {entry["name"]: entry for entry in kustomization.get("images", [])}


def project_version() -> str:
    import tomllib

    with (REPO_ROOT / "packages" / "p8fs-runner" / "pyproject.toml").open("rb") as handle:
        return str(tomllib.load(handle)["project"]["version"])


def test_kustomization_names_both_images_with_the_project_version() -> None:
    images = kustomize_images()
    assert set(images) == {"p8fs-slim", "p8fs-full"}
    for target in ("slim", "full"):
        entry = images[f"p8fs-{target}"]
        assert entry["newTag"] == f"{project_version()}-{target}", entry
        assert ORIGINAL_IMAGE not in entry["newName"], entry
        assert "latest" not in entry["newTag"]
    # one repository, two tags
    assert images["p8fs-slim"]["newName"] == images["p8fs-full"]["newName"]


def test_manifests_name_the_image_only_through_kustomize() -> None:
    for name, doc in workloads():
        for container in pod_spec(doc)["containers"]:
            assert container["image"] in {"p8fs-slim", "p8fs-full"}, f"{name}: {container['image']}"
    for path in manifest_files():
        assert ORIGINAL_IMAGE not in path.read_text(), path.name


def test_every_rendered_container_runs_the_image_and_tag_of_kustomization(
    rendered: list[dict[str, Any]],
) -> None:
    images = kustomize_images()
    containers = _rendered_containers(rendered)
    assert len(containers) == 7
    for name, container in containers:
        target = "full" if name in FULL_IMAGE_WORKLOADS else "slim"
        entry = images[f"p8fs-{target}"]
        assert container["image"] == f"{entry['newName']}:{entry['newTag']}", name
        assert not container["image"].endswith(":latest"), name
        assert ORIGINAL_IMAGE not in container["image"], name


def test_config_sets_three_stream_replicas_for_the_cluster() -> None:
    config = by_kind("ConfigMap")["p8fs-config"]["data"]
    assert config["P8FS_NATS_REPLICAS"] == "3"
    assert config["TMPDIR"] == "/scratch" and config["P8FS_DATA_DIR"].startswith("/scratch/")
