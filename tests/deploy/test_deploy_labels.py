"""k8s/: what the rendered manifests say about ownership: the recommended `app.kubernetes.io/*` labels on
every object, selectors that never include a label that changes, and no replica count where KEDA owns
it (a `kubectl apply` would otherwise reset the autoscaler's choice on every deploy)."""

from __future__ import annotations

from typing import Any

import pytest
from deploytools import K8S, OVERLAYS, kustomize, tool

pytestmark = pytest.mark.skipif(tool("kubectl") is None, reason="kubectl (kustomize) is not installed")

RECOMMENDED = ("name", "instance", "component", "part-of", "version", "managed-by")
# Labels whose value changes between deployments or releases: never in an (immutable) selector.
CHANGING = {"app.kubernetes.io/instance", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"}


def rendered(overlay: str) -> list[dict[str, Any]]:
    return kustomize(K8S / "overlays" / overlay)


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    template = doc.get("spec", {}).get("template") if isinstance(doc.get("spec"), dict) else None
    return [template] if isinstance(template, dict) else []


def selectors(doc: dict[str, Any]) -> list[dict[str, str]]:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return []
    found: list[dict[str, str]] = []
    if doc["kind"] == "Service":
        found.append(spec.get("selector") or {})
    for key in ("selector", "podSelector"):
        value = spec.get(key)
        if isinstance(value, dict) and "matchLabels" in value:
            found.append(value["matchLabels"])
    for rule in (*spec.get("ingress", []), *spec.get("egress", [])):
        for peer in (*rule.get("from", []), *rule.get("to", [])):
            if "podSelector" in peer:
                found.append(peer["podSelector"].get("matchLabels") or {})
    return found


def missing_labels(labels: dict[str, str]) -> list[str]:
    return [k for k in RECOMMENDED if not labels.get(f"app.kubernetes.io/{k}")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_and_pod_carries_the_recommended_labels(overlay: str) -> None:
    docs = rendered(overlay)
    for doc in docs:
        where = f"{overlay}: {doc['kind']} {doc['metadata']['name']}"
        assert missing_labels(doc["metadata"].get("labels") or {}) == [], where
        for template in pod_templates(doc):
            assert missing_labels(template["metadata"].get("labels") or {}) == [], f"{where} pod template"
    values = {k: {d["metadata"]["labels"][f"app.kubernetes.io/{k}"] for d in docs} for k in RECOMMENDED}
    assert values["part-of"] == {"ecom-enrichment"} and values["managed-by"] == {"kustomize"}
    assert len(values["instance"]) == 1 and len(values["version"]) == 1, "one deployment, one release"


def test_instances_differ_between_overlays() -> None:
    instances = {
        overlay: {d["metadata"]["labels"]["app.kubernetes.io/instance"] for d in rendered(overlay)}
        for overlay in OVERLAYS
    }
    assert len({frozenset(v) for v in instances.values()}) == len(OVERLAYS), instances


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_version_label_is_the_worker_image_tag(overlay: str) -> None:
    docs = rendered(overlay)
    [worker] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "ecom-worker"]
    image = worker["spec"]["template"]["spec"]["containers"][0]["image"]
    assert worker["metadata"]["labels"]["app.kubernetes.io/version"] == image.rsplit(":", 1)[1]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_use_only_labels_that_never_change(overlay: str) -> None:
    for doc in rendered(overlay):
        for selector in selectors(doc):
            assert not CHANGING & set(selector), f"{doc['kind']} {doc['metadata']['name']}: {selector}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_replica_count_where_keda_scales(overlay: str) -> None:
    docs = rendered(overlay)
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    assert scaled, "the workers are autoscaled"
    for obj in scaled:
        target = obj["spec"]["scaleTargetRef"]
        kind = target.get("kind", "Deployment")
        [workload] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == target["name"]]
        assert "replicas" not in workload["spec"], (
            f"{overlay}: {kind} {target['name']} sets spec.replicas, which KEDA owns "
            f"(minReplicaCount {obj['spec'].get('minReplicaCount', 1)} is the floor)"
        )


def test_the_checks_are_not_vacuous() -> None:
    assert missing_labels({"app.kubernetes.io/name": "x"}) == [k for k in RECOMMENDED if k != "name"]
    policy = {
        "kind": "NetworkPolicy",
        "spec": {
            "podSelector": {"matchLabels": {"a": "1"}},
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"b": "2"}}}]}],
        },
    }
    assert selectors(policy) == [{"a": "1"}, {"b": "2"}]
