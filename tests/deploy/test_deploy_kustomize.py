"""k8s/: every overlay renders with `kubectl kustomize`, every object validates offline (built-in kinds
against the Kubernetes schemas of kubernetes-validate, custom resources against the CRD schemas
vendored in tests/deploy/schemas/crds), and the rendered objects keep the contracts and the hardening
rules (probes, resources, restricted security context, autoscaling capped by partitions, ...)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from deploytools import ALERTS_FILE, K8S, OVERLAYS, SCHEMAS, kustomize, read_contracts, tool

pytestmark = pytest.mark.skipif(
    tool("kubectl") is None, reason="kubectl is not installed: cannot render the kustomizations"
)

# Oldest and newest Kubernetes the manifests are checked against.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())

CRD_FILES = {
    ("keda.sh", "ScaledObject"): "keda.sh_scaledobjects.yaml",
    ("keda.sh", "TriggerAuthentication"): "keda.sh_triggerauthentications.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com", "PrometheusRule"): "monitoring.coreos.com_prometheusrules.yaml",
}

# ECOM_KAFKA_SASL_MECHANISM -> the `sasl` value of KEDA's kafka scaler.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}

# Objects that the overlay deliberately expects to exist already in the cluster (documented in its
# kustomization.yaml and docs/deployment.md): name -> kind. Triton's admin key is never in the repository.
EXTERNAL = {
    "prod-gpu": {("Secret", "ecom-kafka-credentials"), ("Secret", "ecom-triton-admin")},
    "dev-cpu": {("Secret", "ecom-triton-admin")},
}

# The one container allowed a writable root file system: the development Kafka (its start script
# writes server.properties into the image); it is still non-root with no capabilities.
WRITABLE_ROOT_ALLOWED = {("dev-cpu", "kafka")}


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(K8S / "overlays" / overlay))


def objects(overlay: str, kind: str) -> list[dict[str, Any]]:
    return [o for o in render(overlay) if o["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects(overlay, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind} {name}, found {len(found)}"
    return found[0]


def config(overlay: str) -> dict[str, str]:
    maps = [o for o in objects(overlay, "ConfigMap") if o["metadata"]["name"].startswith("ecom-config")]
    assert len(maps) == 1
    data: dict[str, str] = maps[0]["data"]
    return data


@cache
def crd_validator(group: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    crd = yaml.safe_load((SCHEMAS / "crds" / CRD_FILES[(group, kind)]).read_text())
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema = served["schema"]["openAPIV3Schema"]
            return jsonschema.Draft7Validator(schema)
    raise AssertionError(f"the vendored {kind} CRD has no version {version}")


def workloads(overlay: str) -> list[dict[str, Any]]:
    return [o for o in render(overlay) if o["kind"] in ("Deployment", "StatefulSet")]


def test_there_are_the_two_overlays() -> None:
    assert {"dev-cpu", "prod-gpu"} <= set(OVERLAYS)


def test_the_base_renders_too() -> None:
    kinds = {o["kind"] for o in kustomize(K8S / "base")}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "PodMonitor"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay: str) -> None:
    failures = []
    for obj in render(overlay):
        group, _, version = obj["apiVersion"].rpartition("/")
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if (group, obj["kind"]) in CRD_FILES:
            errors = list(crd_validator(group, obj["kind"], version).iter_errors(obj))
            failures += [f"{name}: {'.'.join(map(str, e.path))}: {e.message}" for e in errors]
            continue
        for k8s_version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, k8s_version, strict=True)
            except kubernetes_validate.ValidationError as e:
                failures.append(f"{name} (k8s {k8s_version}): {'.'.join(map(str, e.path))}: {e.message}")
            except kubernetes_validate.utils.SchemaNotFoundError:
                failures.append(
                    f"{name}: no schema for {obj['apiVersion']} {obj['kind']}: nothing validates it"
                )
    assert not failures, "\n".join(failures)


def test_validation_is_not_vacuous() -> None:
    """A misspelt field in a Deployment and a wrong type in a ScaledObject are both caught."""
    deployment = dict(one("dev-cpu", "Deployment", "ecom-worker"))
    deployment["spec"] = {**deployment["spec"], "replica": 2}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)
    scaled = dict(one("dev-cpu", "ScaledObject", "ecom-worker"))
    scaled["spec"] = {**scaled["spec"], "maxReplicaCount": "four"}
    assert list(crd_validator("keda.sh", "ScaledObject", "v1alpha1").iter_errors(scaled))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_requests_limits_and_restricted_security(overlay: str) -> None:
    for workload in workloads(overlay):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        pod_security = pod["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, f"{name} needs no API token"
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{overlay} {name}/{container['name']}"
            resources = container["resources"]
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(section, {})), f"{where}: {section}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            assert not security["capabilities"].get("add"), where
            assert security.get("privileged") is not True, where
            if (overlay, name) not in WRITABLE_ROOT_ALLOWED:
                assert security["readOnlyRootFilesystem"] is True, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_namespaces_enforce_the_restricted_pod_security_standard(overlay: str) -> None:
    namespaces = objects(overlay, "Namespace")
    assert len(namespaces) == 1
    namespace = namespaces[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in render(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace["metadata"]["name"], obj["metadata"]["name"]


def probe_path(container: dict[str, Any], probe: str) -> tuple[str, int]:
    get = container[probe]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == port)
    return get["path"], port


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_probes_config_secrets_and_writable_dirs(overlay: str) -> None:
    worker = one(overlay, "Deployment", "ecom-worker")
    pod = worker["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "worker")
    assert container["args"] == ["worker"]
    assert probe_path(container, "livenessProbe") == ("/livez", 6066)
    assert probe_path(container, "readinessProbe") == ("/readyz", 6066)
    assert probe_path(container, "startupProbe") == ("/livez", 6066)
    sources = {("configMap" if "configMapRef" in s else "secret"): s for s in container["envFrom"]}
    assert sources["configMap"]["configMapRef"]["name"].startswith("ecom-config")
    assert sources["secret"]["secretRef"]["name"].startswith("ecom-kafka-credentials")
    assert not sources["secret"]["secretRef"].get("optional"), "a missing Secret must stop the pod"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in ("/tmp", "/var/lib/ecom"):  # the image's WORKDIR, where Faust keeps its data dir
        assert "emptyDir" in volumes[mounts[path]], f"{path} must be a writable emptyDir"
    # Topics exist before the worker consumes: an init container runs create-topics with the same
    # image and settings.
    init = pod["initContainers"][0]
    assert init["args"] == ["create-topics"]
    assert init["image"] == container["image"]
    assert init["envFrom"] == container["envFrom"]
    assert pod["terminationGracePeriodSeconds"] >= 30


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_ones_the_service_reads(overlay: str) -> None:
    from streams.settings import Settings

    known = {f"ECOM_{name.upper()}" for name in Settings.model_fields}
    data = config(overlay)
    assert set(data) <= known, f"unknown settings: {sorted(set(data) - known)}"
    secret_keys = {"ECOM_KAFKA_SASL_USERNAME", "ECOM_KAFKA_SASL_PASSWORD"}
    assert not secret_keys & set(data), "credentials belong in the Secret, not the ConfigMap"
    fake_secret = {"kafka_sasl_username": "u", "kafka_sasl_password": "p"}
    settings = Settings(**{k.removeprefix("ECOM_").lower(): v for k, v in data.items()}, **fake_secret)
    assert settings.web_port == 6066
    assert settings.triton_grpc_url == "triton:8001"


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * factor
    return float(quantity) / (1024 * 1024)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_worker_tables_live_in_rocksdb_on_a_writable_volume_with_standbys(overlay: str) -> None:
    from streams.settings import Settings

    data = config(overlay)
    fake_secret = {"kafka_sasl_username": "u", "kafka_sasl_password": "p"}
    settings = Settings(**{k.removeprefix("ECOM_").lower(): v for k, v in data.items()}, **fake_secret)
    assert settings.table_store == "rocksdb://"
    worker = one(overlay, "Deployment", "ecom-worker")
    pod = worker["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "worker")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The data directory lies on a mounted emptyDir (the root file system is read-only).
    assert settings.data_dir is not None and settings.data_dir.startswith("/")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    mount = next((m for m in mounts if settings.data_dir.startswith(m.rstrip("/") + "/")), None)
    assert mount is not None, f"{settings.data_dir} is on no mounted volume"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[mount])
    assert "emptyDir" in volume and not volume["emptyDir"].get("medium"), "on disk, not in memory"
    assert mebibytes(volume["emptyDir"]["sizeLimit"]) >= 1024
    # Two workers or more: each users partition has a warm standby copy on another worker.
    scaled = one(overlay, "ScaledObject", "ecom-worker")
    most = max(int(scaled["spec"]["maxReplicaCount"]), int(worker["spec"].get("replicas", 1)))
    if most >= 2:
        assert settings.table_standby_replicas == 1
    # RocksDB's cache and memtables fit in the limit beside the Python process (~300 MB measured).
    limit = mebibytes(container["resources"]["limits"]["memory"])
    assert limit >= settings.table_cache_mb + 512, f"{limit} MiB for a {settings.table_cache_mb} MB cache"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_probes_ports_and_hardware(overlay: str) -> None:
    triton = one(overlay, "Deployment", "triton")
    pod = triton["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # Liveness: /v2/health/live, and a dead Python stub of the model (which Triton never restarts) found
    # by a real inference; tests/faults/test_triton_faults.py runs this script against a real Triton.
    liveness = container["livenessProbe"]["exec"]["command"]
    assert liveness[:2] == ["python3", "-c"]
    assert all(part in liveness[2] for part in ("localhost:8000", "/v2/health/live", "Stub process"))
    # The model's readiness, not the server's: that is false while a version loads (docs/rollout.md).
    assert probe_path(container, "readinessProbe") == ("/v2/models/ecom_fusion/ready", 8000)
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    args = container["args"]
    for flag in ("--http-port=8000", "--grpc-port=8001", "--metrics-port=8002", "--load-model=ecom_fusion"):
        assert flag in args
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/dev/shm"} <= mounts
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    if overlay.endswith("gpu"):
        assert gpus == "1" and container["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert "--model-config-name=gpu" in args and "--allow-gpu-metrics=true" in args
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert gpus is None
        assert not any(a.startswith("--model-config-name") for a in args), "CPU uses the default config"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_the_pods_on_the_contract_ports(overlay: str) -> None:
    expected = {
        "ecom-worker": {"http-metrics": 6066},
        "triton": {"http": 8000, "grpc": 8001, "metrics": 8002},
    }
    for name, ports in expected.items():
        service = one(overlay, "Service", name)
        assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == ports
        selected = [w for w in workloads(overlay) if selects(service["spec"]["selector"], w)]
        assert len(selected) == 1, f"Service {name} selects {len(selected)} workloads"
    config_map = config(overlay)
    host, port = config_map["ECOM_TRITON_GRPC_URL"].split(":")
    assert (host, int(port)) == ("triton", expected["triton"]["grpc"])


def selects(selector: dict[str, str], workload: dict[str, Any]) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_disruption_budgets_and_pod_monitors_select_the_workloads(overlay: str) -> None:
    for deployment in ("ecom-worker", "triton"):
        workload = one(overlay, "Deployment", deployment)
        budgets = [
            p
            for p in objects(overlay, "PodDisruptionBudget")
            if selects(p["spec"]["selector"]["matchLabels"], workload)
        ]
        assert len(budgets) == 1, f"{deployment} needs one PodDisruptionBudget"
        monitors = [
            m
            for m in objects(overlay, "PodMonitor")
            if selects(m["spec"]["selector"]["matchLabels"], workload)
        ]
        assert len(monitors) == 1, f"{deployment} needs one PodMonitor"
        port_names = {
            p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c["ports"]
        }
        for endpoint in monitors[0]["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in port_names
            assert endpoint["path"] == "/metrics"
        # The alert rules and dashboard use job="ecom-worker" / "ecom-triton": the job label comes from
        # the pod label named by jobLabel.
        job = workload["spec"]["template"]["metadata"]["labels"][monitors[0]["spec"]["jobLabel"]]
        assert job == {"ecom-worker": "ecom-worker", "triton": "ecom-triton"}[deployment]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_on_lag_is_capped_by_partitions(overlay: str) -> None:
    scaled = one(overlay, "ScaledObject", "ecom-worker")
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == one(overlay, "Deployment", "ecom-worker")["metadata"]["name"]
    data = config(overlay)
    partitions = int(data["ECOM_PARTITIONS"])
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    from streams.settings import Settings

    settings = Settings(
        kafka_bootstrap=data["ECOM_KAFKA_BOOTSTRAP"], kafka_sasl_username="u", kafka_sasl_password="p"
    )
    prefix = data.get("ECOM_TOPIC_PREFIX", "")
    topics = []
    for trigger in spec["triggers"]:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["bootstrapServers"].split(",") == settings.bootstrap_servers
        assert meta["consumerGroup"] == data["ECOM_APP_ID"]
        assert meta["allowIdleConsumers"] == "false"
        topics.append(meta["topic"])
        if data["ECOM_KAFKA_SECURITY_PROTOCOL"].startswith("SASL"):
            auth = one(overlay, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"username", "password"}
            assert meta["sasl"] == KEDA_SASL[data["ECOM_KAFKA_SASL_MECHANISM"]]
            assert meta["tls"] == (
                "enable" if data["ECOM_KAFKA_SECURITY_PROTOCOL"].endswith("SSL") else "disable"
            )
    assert sorted(topics) == sorted(prefix + t for t in read_contracts().input_topics)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_deny_by_default_and_open_what_is_needed(overlay: str) -> None:
    policies = {p["metadata"]["name"]: p["spec"] for p in objects(overlay, "NetworkPolicy")}
    deny = policies["default-deny-all"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert not deny.get("ingress") and not deny.get("egress")
    triton_in = policies["ecom-triton"]["ingress"]
    from_workers = [
        rule for rule in triton_in
        if any(peer.get("podSelector", {}).get("matchLabels") == {"app.kubernetes.io/name": "ecom-worker"}
               for peer in rule["from"])
    ]  # fmt: skip
    assert any(p["port"] == 8001 for rule in from_workers for p in rule["ports"])
    worker_out = policies["ecom-worker"]["egress"]
    assert any(p["port"] == 8001 for rule in worker_out for p in rule.get("ports", []))
    kafka_port = int(config(overlay)["ECOM_KAFKA_BOOTSTRAP"].rsplit(":", 1)[1])
    assert any(
        p["port"] <= kafka_port <= p.get("endPort", p["port"])
        for rule in worker_out
        for p in rule.get("ports", [])
    ), "workers cannot reach the Kafka port"
    scrape_ports = {p["port"] for rule in policies["ecom-worker"]["ingress"] for p in rule["ports"]}
    assert 6066 in scrape_ports


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_rule_equals_the_compose_alerts(overlay: str) -> None:
    rule = one(overlay, "PrometheusRule", "ecom-enrichment")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS_FILE.read_text())["groups"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay: str) -> None:
    present = {(o["kind"], o["metadata"]["name"]) for o in render(overlay)}
    present |= EXTERNAL.get(overlay, set())
    for workload in workloads(overlay):
        pod = workload["spec"]["template"]["spec"]
        if "serviceAccountName" in pod:
            assert ("ServiceAccount", pod["serviceAccountName"]) in present
        for container in pod.get("initContainers", []) + pod["containers"]:
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    assert ("ConfigMap", source["configMapRef"]["name"]) in present
                if "secretRef" in source:
                    assert ("Secret", source["secretRef"]["name"]) in present, source
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ("Secret", ref["name"]) in present, variable


def test_images_differ_per_overlay_only_by_tag_or_registry() -> None:
    for overlay in OVERLAYS:
        images = {c["image"] for w in workloads(overlay) for c in w["spec"]["template"]["spec"]["containers"]}
        for image in images:
            tag = image.rsplit(":", 1)[-1]
            assert ":" in image and tag != "latest", f"{overlay}: {image} needs a pinned tag"


def test_kustomizations_list_only_existing_files() -> None:
    for kustomization in K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        for entry in data.get("resources", []):
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry}"
        for patch in data.get("patches", []):
            if "path" in patch:
                assert (kustomization.parent / patch["path"]).is_file()


def test_every_manifest_file_is_used() -> None:
    used: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        used |= {(kustomization.parent / e).resolve() for e in data.get("resources", [])}
        used |= {(kustomization.parent / p["path"]).resolve() for p in data.get("patches", []) if "path" in p}
    for manifest in K8S.rglob("*.yaml"):
        if manifest.name != "kustomization.yaml":
            assert manifest.resolve() in used, f"{manifest} is not listed in any kustomization"
