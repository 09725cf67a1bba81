"""checkov over every Terraform module and example, and over the chart's rendered manifests
(the Knative Service's pod spec as a Pod too, since checkov does not know the CRD), with the
repository's .checkov.yaml: no failed check, skips only there, each with its reason."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import chart
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / ".checkov.yaml"


def run_checkov(checkov: str, directory: Path, framework: str) -> list[dict]:
    out = subprocess.run(
        [checkov, "--config-file", str(CONFIG), "-d", str(directory), "--framework", framework, "-o", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    # checkov exits 1 when a check fails; its JSON report says which.
    assert out.returncode in (0, 1), f"checkov failed to run:\n{out.stderr[-3000:]}"
    report = json.loads(out.stdout)
    return report if isinstance(report, list) else [report]


def failures(reports: list[dict]) -> list[str]:
    return [
        f"{f['check_id']} {f['check_name']}: {f['resource']} ({f['file_path']}:{f['file_line_range']})"
        for r in reports
        for f in r["results"]["failed_checks"]
    ]


def test_every_skip_has_a_reason():
    lines = CONFIG.read_text(encoding="utf-8").splitlines()
    skips = [line for line in lines if re.match(r"\s*-\s*CKV", line)]
    assert skips, "no skips listed"
    for line in skips:
        assert re.match(r"\s*-\s*CKV2?_[A-Z0-9]+_\d+\s+#\s+\S.{20,}", line), f"skip without a one-line reason: {line}"
    listed = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["skip-check"]
    assert len(listed) == len(skips) == len(set(listed))


def test_terraform_modules_and_examples(checkov):
    reports = run_checkov(checkov, ROOT / "terraform", "terraform")
    assert failures(reports) == []
    summary = reports[0]["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["passed"] >= 80 and summary["resource_count"] >= 50


@pytest.fixture(scope="module")
def rendered_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    for name in chart.VALUE_SETS:
        objects = chart.render(chart.values(name))
        docs = list(objects)
        for obj in objects:
            if obj["apiVersion"].startswith("serving.knative.dev/"):
                docs.append(chart.as_pod(obj))
        (out / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    return out


def test_rendered_chart(checkov, rendered_dir):
    reports = run_checkov(checkov, rendered_dir, "kubernetes")
    assert failures(reports) == []
    summary = reports[0]["summary"]
    assert summary["parsing_errors"] == 0
    assert summary["passed"] >= 100
