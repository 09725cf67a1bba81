"""Rendering helm/realm offline through helm-python-sdk (Helm's own Go library, no binary)."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm/realm"
NAMESPACE = "realm"
RELEASE = "demo"

# The value sets every test renders: the defaults, a GPU Deployment with everything switched
# on, and a Knative Service with Eventing triggers (helm/realm/ci/*.yaml).
VALUE_SETS = {
    "default": None,
    "gpu": CHART / "ci/gpu-values.yaml",
    "knative": CHART / "ci/knative-values.yaml",
}


def default_manifest() -> str:
    return helm.Chart.load(str(CHART)).values["function"]["manifest"]


def values(name: str) -> dict:
    path = VALUE_SETS[name]
    return yaml.safe_load(path.read_text(encoding="utf-8")) if path else {}


def lint(name: str) -> dict:
    return helm.lint(str(CHART), values(name), strict=True, namespace=NAMESPACE)


def render(vals: dict) -> list[dict]:
    """Every object the chart renders for these values."""
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(vals, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if not path.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("metadata", {}).setdefault("annotations", {})
                doc["metadata"]["annotations"].pop("__template__", None)
                objects.append(doc)
    return objects


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_spec(obj: dict) -> dict:
    """The pod spec of a Deployment or a Knative Service."""
    return obj["spec"]["template"]["spec"]


def as_pod(obj: dict) -> dict:
    """A Pod holding a workload's pod spec, so that Kubernetes' own Pod schema and checkov's
    pod checks see what a CRD (the Knative Service) would run."""
    spec = yaml.safe_load(yaml.safe_dump(pod_spec(obj)))
    if obj["apiVersion"].startswith("serving.knative.dev/"):
        # Knative's defaulting webhook sets probe ports to the container port.
        for c in spec["containers"]:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                get = c.get(probe, {}).get("httpGet")
                if get is not None and "port" not in get:
                    get["port"] = c["ports"][0]["containerPort"]
    for knative_only in ("containerConcurrency", "timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds"):
        spec.pop(knative_only, None)
    meta = obj["spec"]["template"].get("metadata", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"].get("namespace", NAMESPACE), "labels": meta.get("labels", {}), "annotations": meta.get("annotations", {})},
        "spec": spec,
    }
