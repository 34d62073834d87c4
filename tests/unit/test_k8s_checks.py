"""Every rendered overlay passes kubernetes-validate --strict, the CRD schemas and checkov.

The tools live in .venv-tools and deploy/schemas/node_modules (`make tools`, part of `make
install`): checkov pins packages that clash with constraints.txt. Missing tools fail the test in
CI and skip it elsewhere. checkov must report 0 failed checks; a check may only be skipped by a
`checkov.io/skipN: CKV_K8S_xx=reason` annotation in the manifests, with a reason.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.test_devstack_k8s import K8S, OVERLAYS, by_kind, render

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".venv-tools" / "bin"
SCHEMAS = ROOT / "deploy" / "schemas"
TARGETS = [*OVERLAYS, "train-distributed"]


def _need_tools() -> None:
    missing = [
        str(p) for p in (TOOLS / "checkov", TOOLS / "python", SCHEMAS / "node_modules") if not p.exists()
    ]
    if not shutil.which("node"):
        missing.append("node")
    if missing:
        message = f"manifest tools missing ({', '.join(missing)}): run `make tools`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _render(name: str) -> list[dict[str, Any]]:
    return render(name, K8S) if name == "train-distributed" else render(name)


def _write(tmp_path: Path, name: str, docs: list[dict[str, Any]]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return path


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TOOLS / "python"), str(ROOT / "scripts" / "k8s_validate.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def checkov(path: Path) -> dict[str, Any]:
    done = subprocess.run(
        # --skip-download: no calls to the vendor's API (offline CI; guidelines are not needed)
        [
            str(TOOLS / "checkov"),
            "--framework",
            "kubernetes",
            "--skip-download",
            "-f",
            str(path),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert done.stdout.strip(), done.stderr
    report = json.loads(done.stdout)
    (report,) = report if isinstance(report, list) else [report]
    return report


@pytest.mark.parametrize("name", TARGETS)
def test_rendered_manifests_validate_strictly(name: str, tmp_path: Path) -> None:
    _need_tools()
    docs = _render(name)
    done = validate(_write(tmp_path, name, docs))
    assert done.returncode == 0, done.stdout + done.stderr
    passed = [line for line in done.stdout.splitlines() if line.startswith("PASS ")]
    assert len(passed) == len(docs), done.stdout  # every resource checked, none without a schema
    custom = [d for d in docs if d["apiVersion"].startswith(("kafka.strimzi.io/", "keda.sh/"))]
    assert sum("[CRD schema]" in line for line in passed) == len(custom)


def test_validation_rejects_bad_builtin_and_custom_resources(tmp_path: Path) -> None:
    _need_tools()
    docs = render("prod")
    broken = copy.deepcopy(docs)
    deployment = next(d for d in broken if d["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}  # typo: unknown field
    user = next(d for d in broken if d["kind"] == "KafkaUser")
    user["spec"]["authorization"]["acls"][0]["operation"] = "Write"  # v1beta2 field, removed in v1
    kafka = next(d for d in broken if d["kind"] == "Kafka")
    kafka["spec"]["kafka"]["authorization"]["type"] = "simplest"  # not an allowed value
    scaled = next(d for d in broken if d["kind"] == "ScaledObject")
    scaled["spec"]["minReplicas"] = 1  # HPA spelling; KEDA's is minReplicaCount
    broken.append({"apiVersion": "kafka.strimzi.io/v1", "kind": "KafkaWidget", "metadata": {"name": "x"}})
    done = validate(_write(tmp_path, "broken", broken))
    assert done.returncode == 1
    failures = [line for line in done.stdout.splitlines() if line.startswith("FAIL ")]
    assert len(failures) == 5, done.stdout
    report = "\n".join(failures)
    for needle in ("securityContex", "/operation", "authorization", "/spec/minReplicas", "KafkaWidget"):
        assert needle in report, (needle, report)


@pytest.mark.parametrize("name", TARGETS)
def test_checkov_reports_no_failed_check(name: str, tmp_path: Path) -> None:
    _need_tools()
    report = checkov(_write(tmp_path, name, _render(name)))
    results = report["results"]
    failed = [(r["check_id"], r["resource"]) for r in results["failed_checks"]]
    assert failed == [], failed
    assert report["summary"]["passed"] > 50
    # Every skip comes from an annotation in the manifests and says why.
    for skipped in results["skipped_checks"]:
        comment = skipped["check_result"].get("suppress_comment", "")
        assert len(comment) > 20, (skipped["check_id"], skipped["resource"], comment)


def test_checkov_fails_a_weakened_manifest(tmp_path: Path) -> None:
    _need_tools()
    docs = render("prod")
    gateway = by_kind(docs, "Deployment")["gateway"]
    spec = gateway["spec"]["template"]["spec"]
    spec["automountServiceAccountToken"] = True
    del spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"]
    docs = [d for d in docs if d["kind"] != "NetworkPolicy"]
    failed = {r["check_id"] for r in checkov(_write(tmp_path, "weak", docs))["results"]["failed_checks"]}
    assert {"CKV_K8S_38", "CKV_K8S_22", "CKV2_K8S_6"} <= failed, failed
