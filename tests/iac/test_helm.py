"""The helm/realm chart: strict lint and offline rendering through helm-python-sdk (Helm's
library), rendered objects validated with kubernetes-validate --strict against the oldest and
newest Kubernetes the chart supports, and the container contract checked in what renders."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import chart
import helm_python as helm
import kubernetes_validate
import pytest
import yaml

SETS = list(chart.VALUE_SETS)
CORE_KINDS = {"ConfigMap", "Secret", "ServiceAccount", "Deployment", "Service", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"}
KUBE_VERSIONS = ["1.27.0", "1.37.0"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: chart.render(chart.values(name)) for name in SETS}


@pytest.mark.parametrize("name", SETS)
def test_lint_strict_is_clean(name):
    report = chart.lint(name)
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    # Strict: warnings count as errors; the only info-level note is the missing icon.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_helm_library_is_the_one_expected():
    assert helm.helm_sdk_version().startswith("v4.")


@pytest.mark.parametrize("name", SETS)
def test_core_objects_validate_strictly(name, rendered, tmp_path):
    objects = [o for o in rendered[name] if o["kind"] in CORE_KINDS]
    assert objects
    files = []
    for i, obj in enumerate(objects):
        path = tmp_path / f"{i:02d}-{obj['kind'].lower()}.yaml"
        path.write_text(yaml.safe_dump(obj))
        files.append(str(path))
    cli = Path(sys.executable).parent / "kubernetes-validate"
    for version in KUBE_VERSIONS:
        out = subprocess.run([str(cli), "--strict", "--quiet", "-k", version, *files], capture_output=True, text=True)
        assert out.returncode == 0, f"kubernetes {version}:\n{out.stdout}{out.stderr}"


@pytest.mark.parametrize("name", SETS)
def test_pod_specs_validate_strictly(name, rendered):
    """The pod spec of each workload, the Knative Service's included, as a core/v1 Pod."""
    workloads = [o for o in rendered[name] if o["kind"] in ("Deployment", "Service") and "template" in o.get("spec", {})]
    assert len(workloads) == 1
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(chart.as_pod(workloads[0]), version, strict=True)


def test_default_is_a_deployment_with_its_companions(rendered):
    objects = rendered["default"]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["ConfigMap", "ServiceAccount", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"])
    for obj in objects:
        assert obj["metadata"]["namespace"] == chart.NAMESPACE


@pytest.mark.parametrize("name", ["default", "gpu"])
def test_container_contract(name, rendered):
    objects = rendered[name]
    deploy = chart.one(objects, "Deployment")
    spec = chart.pod_spec(deploy)
    c = spec["containers"][0]
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert c["startupProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["REALM_FUNCTION"] == "/etc/realm/realm.yaml"
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/etc/realm"] == "manifest"
    manifest = chart.values(name).get("function", {}).get("manifest") or chart.default_manifest()
    cm = chart.one(objects, "ConfigMap")
    assert yaml.safe_load(cm["data"]["realm.yaml"]) == yaml.safe_load(manifest)
    # A changed manifest rolls the pods.
    digest = hashlib.sha256(manifest.encode()).hexdigest()
    assert deploy["spec"]["template"]["metadata"]["annotations"]["realm.dev/manifest-sha256"] == digest
    # Non-root, read-only root filesystem, no privilege escalation, nothing added.
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001
    for container in spec["containers"] + spec.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}


def test_scaling_comes_from_the_manifest(rendered):
    hpa = chart.one(rendered["default"], "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    hpa = chart.one(rendered["gpu"], "HorizontalPodAutoscaler")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 8)
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Pods"]["pods"]["metric"]["name"] == "realm_num_requests_waiting"
    assert metrics["Resource"]["resource"]["name"] == "cpu"


def test_gpu_values(rendered):
    objects = rendered["gpu"]
    spec = chart.pod_spec(chart.one(objects, "Deployment"))
    c = spec["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    # The init container fetches the s3:// model into the shared volume; REALM_MODEL names it.
    init = spec["initContainers"][0]
    assert init["args"][:2] == ["copyto", ":s3:models/smollm2-135m-instruct-q4_1.gguf"]
    assert init["args"][-1] == "/models/smollm2-135m-instruct-q4_1.gguf"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["REALM_MODEL"] == "/models/smollm2-135m-instruct-q4_1.gguf"
    # API keys: a Secret mounted as a file, never an environment variable.
    assert env["REALM_API_KEYS_FILE"] == "/etc/realm-keys/keys" and "REALM_API_KEYS" not in env
    secret = chart.one(objects, "Secret")
    assert base64.b64decode(secret["data"]["keys"]).decode() == "test-key-1\ntest-key-2"
    assert chart.one(objects, "Ingress")["spec"]["rules"][0]["host"] == "realm.example.com"
    sm = chart.one(objects, "ServiceMonitor")
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    assert chart.one(objects, "ServiceAccount")["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]


def test_knative_values(rendered):
    objects = rendered["knative"]
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == ["ConfigMap", "Service", "ServiceAccount", "Trigger", "Trigger"]
    ksvc = chart.one(objects, "Service")
    assert ksvc["apiVersion"] == "serving.knative.dev/v1"
    tpl = ksvc["spec"]["template"]
    ann = tpl["metadata"]["annotations"]
    assert ann["autoscaling.knative.dev/min-scale"] == "0"
    assert ann["autoscaling.knative.dev/max-scale"] == "4"
    assert ann["serving.knative.dev/progress-deadline"] == "15m"
    assert tpl["spec"]["containerConcurrency"] == 1
    c = tpl["spec"]["containers"][0]
    assert c["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
    # Knative forbids probe ports; it holds traffic on readiness instead of a startup probe.
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/health"}
    assert "startupProbe" not in c
    triggers = chart.by_kind(objects, "Trigger")
    assert sorted(t["spec"]["filter"]["attributes"]["type"] for t in triggers) == ["dev.realm.batch.v1.requested", "google.cloud.storage.object.v1.finalized"]
    for t in triggers:
        assert t["spec"]["subscriber"]["uri"] == "/events"
        assert t["spec"]["subscriber"]["ref"]["name"] == ksvc["metadata"]["name"]


def test_schema_rejects_unknown_and_mistyped_values():
    loaded = helm.Chart.load(str(chart.CHART))
    loaded.validate_schema({})
    for bad in (
        {"bogus": 1},
        {"image": {"repository": "r", "tag": "t", "pullPolicy": "Sometimes"}},
        {"knative": {"enabled": "yes"}},
        {"autoscaling": {"minReplicas": 0}},
        {"apiKeys": {"keys": ["a,b"]}},
        {"securityContext": {"runAsNonRoot": False}},
    ):
        with pytest.raises(helm.HelmError):
            loaded.validate_schema(bad)


@pytest.mark.parametrize(
    "manifest, message",
    [
        ("name: Bad_Name\nmodel: {uri: default}\n", "is not a DNS label"),
        ("name: ok\n", "model.uri is missing"),
        ("name: ok\nmodel: {uri: default}\nscaling: {min_instances: 5, max_instances: 2}\n", "is above scaling.max_instances"),
        ("name: [unclosed\n", "not YAML"),
    ],
)
def test_broken_manifests_fail_the_render(manifest, message):
    with pytest.raises(helm.HelmError) as err:
        chart.render({"function": {"manifest": manifest}})
    assert message in str(err.value)


def test_the_repositorys_functions_render(root):
    for fn in ("chat", "batch"):
        text = (root / f"functions/{fn}/realm.yaml").read_text(encoding="utf-8")
        objects = chart.render({"function": {"manifest": text}, "knative": {"enabled": fn == "batch", "eventing": {"enabled": True}}})
        assert objects
