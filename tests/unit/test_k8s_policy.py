"""The security and scale-out model of the rendered manifests (docs/operations.md, "Production deployment").

Pod hardening of every workload in every overlay, the NetworkPolicy graph (who may reach whom),
the Kafka principals' ACLs, the prod overlay's TLS/auth/Secret wiring and its autoscaling. The
tools-based checks (kubernetes-validate, CRD schemas, checkov) are in test_k8s_checks.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.test_devstack_k8s import K8S, OVERLAYS, by_kind, render

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
STAGES = {"retrieval": 50052, "ranking": 50053, "rerank": 50054, "bandit": 50055}
METRICS = {
    "gateway": 9101,
    "retrieval": 9102,
    "ranking": 9103,
    "rerank": 9104,
    "bandit": 9105,
    "feature-stream": 9106,
}
REDIS_CLIENTS = {"gateway", "bandit", "feature-stream"}
KAFKA_CLIENTS = {"gateway", "feature-stream"}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


@pytest.fixture(scope="module", params=[*OVERLAYS, "train-distributed"])
def target(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name = request.param
    return name, render(name, K8S) if name == "train-distributed" else render(name)


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


@pytest.fixture(scope="module")
def prod() -> list[dict[str, Any]]:
    return render("prod")


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in WORKLOAD_KINDS}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # the manifests use matchLabels only
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def test_every_container_is_hardened(target: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = target
    accounts = by_kind(docs, "ServiceAccount")
    assert workloads(docs), name
    for wname, workload in workloads(docs).items():
        spec = pod_spec(workload)
        # A dedicated ServiceAccount without an API token (none of these pods talks to the API server).
        assert spec["automountServiceAccountToken"] is False, wname
        account = accounts[spec["serviceAccountName"]]
        assert account["automountServiceAccountToken"] is False, wname
        pod_ctx = spec["securityContext"]
        assert pod_ctx["seccompProfile"] == {"type": "RuntimeDefault"}, wname
        assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] >= 10000, wname
        writable = {
            v["name"] for v in spec.get("volumes", []) if "emptyDir" in v or "persistentVolumeClaim" in v
        }
        for c in spec.get("initContainers", []) + spec["containers"]:
            ctx = c["securityContext"]
            assert ctx["allowPrivilegeEscalation"] is False, (wname, c["name"])
            assert ctx["readOnlyRootFilesystem"] is True, (wname, c["name"])
            assert ctx["capabilities"] == {"drop": ["ALL"]}, (wname, c["name"])
            assert ctx.get("privileged", False) is False, (wname, c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (wname, c["name"], kind)
            # Writes go to emptyDir or volume mounts only (the root filesystem is read-only).
            if wname != "redis":
                assert "/tmp" in {m["mountPath"] for m in c.get("volumeMounts", [])} or c["name"].startswith(
                    "wait"
                ), (wname, c["name"])
            assert (
                all(
                    m["name"] not in writable
                    or m.get("readOnly")
                    or m["mountPath"] in ("/tmp", "/data", "/artifacts")
                    for m in c.get("volumeMounts", [])
                )
                or c["name"] == "acl"
            ), (wname, c["name"])
        if workload["kind"] != "Job":
            for c in spec["containers"]:
                assert "livenessProbe" in c and "readinessProbe" in c, (wname, c["name"])


def test_network_policies_deny_by_default_and_open_only_the_call_graph(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    # (train-distributed is applied into an overlay's namespace and relies on its default-deny.)
    _, docs = overlay
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    pods = {n: pod_labels(w) for n, w in workloads(docs).items()}
    for wname, labels in pods.items():
        assert any(
            selects(p["spec"]["podSelector"], labels) for n, p in policies.items() if n != "default-deny"
        ), wname

    def ingress_peers(pod: str) -> list[tuple[dict[str, Any], set[int]]]:
        peers = []
        for policy in policies.values():
            spec = policy["spec"]
            if "Ingress" in spec["policyTypes"] and selects(spec["podSelector"], pods[pod]):
                for rule in spec.get("ingress", []):
                    ports = {p["port"] for p in rule.get("ports", [])}
                    peers.extend((peer, ports) for peer in rule["from"])
        return peers

    def pods_admitted(pod: str, port: int) -> set[str]:
        return {
            other
            for peer, ports in ingress_peers(pod)
            if port in ports and "podSelector" in peer and "namespaceSelector" not in peer
            for other, labels in pods.items()
            if selects(peer["podSelector"], labels)
        }

    prometheus = {"namespaceSelector": {"matchLabels": {"recstack.io/prometheus": "true"}}}
    callers = {"namespaceSelector": {"matchLabels": {"recstack.io/caller": "true"}}}
    # gateway: gRPC only from the callers' namespaces, metrics only from Prometheus
    assert ingress_peers("gateway") == [(callers, {50051}), (prometheus, {METRICS["gateway"]})]
    for stage, port in STAGES.items():
        assert pods_admitted(stage, port) == {"gateway"}, stage
        assert [p for p, _ in ingress_peers(stage) if "namespaceSelector" in p] == [prometheus], stage
        assert (prometheus, {METRICS[stage]}) in ingress_peers(stage)
    assert [p for p, _ in ingress_peers("feature-stream")] == [prometheus]
    assert pods_admitted("redis", 6379) == REDIS_CLIENTS
    assert {p for p, lab in pods.items() if lab.get("recstack.io/kafka-client") == "true"} == KAFKA_CLIENTS

    # Egress: every pod gets DNS; beyond that, only what each one calls.
    def egress_targets(pod: str) -> set[str]:
        found = set()
        for pname, policy in policies.items():
            spec = policy["spec"]
            if pname in ("allow-dns-egress", "allow-otlp-egress") or "Egress" not in spec["policyTypes"]:
                continue
            if selects(spec["podSelector"], pods[pod]):
                for rule in spec.get("egress", []):
                    assert rule.get("to"), (pname, "egress to anywhere")
                    for peer in rule["to"]:
                        sel = peer["podSelector"]["matchLabels"]
                        found.add(sel.get("app.kubernetes.io/name") or sel.get("strimzi.io/kind", "?"))
        return found

    assert egress_targets("gateway") == set(STAGES) | {"redis", "Kafka"}
    assert egress_targets("bandit") == {"redis"}
    assert egress_targets("feature-stream") == {"redis", "Kafka"}
    for pod in ("retrieval", "ranking", "rerank", "redis"):
        assert egress_targets(pod) == set(), pod
    dns = policies["allow-dns-egress"]["spec"]
    assert dns["podSelector"] == {} and {p["port"] for r in dns["egress"] for p in r["ports"]} == {53}
    # Kafka's listener admits only the client pods and the callers' namespaces (Strimzi writes the policy).
    for listener in next(iter(by_kind(docs, "Kafka").values()))["spec"]["kafka"]["listeners"]:
        peers = listener["networkPolicyPeers"]
        assert {"podSelector": {"matchLabels": {"recstack.io/kafka-client": "true"}}} in peers
        assert callers in peers


def test_prod_images_are_pinned_by_digest(prod: list[dict[str, Any]]) -> None:
    for wname, workload in workloads(prod).items():
        spec = pod_spec(workload)
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert DIGEST.search(c["image"]), (wname, c["image"])
            assert c["imagePullPolicy"] == "Always", (wname, c["name"])


def acl_ops(user: dict[str, Any], rtype: str, name: str) -> set[str]:
    ops: set[str] = set()
    for acl in user["spec"]["authorization"]["acls"]:
        assert "operation" not in acl  # removed in kafka.strimzi.io/v1: `operations` only
        res = acl["resource"]
        matches = (
            res["name"] == name
            if res.get("patternType", "literal") == "literal"
            else name.startswith(res["name"])
        )
        if res["type"] == rtype and matches and acl.get("type", "allow") == "allow":
            ops |= set(acl["operations"])
    return ops


def test_prod_kafka_principals_have_least_privilege(prod: list[dict[str, Any]]) -> None:
    config = by_kind(prod, "ConfigMap")["recstack-config"]["data"]
    events, dlq = config["RECSTACK_EVENTS_TOPIC"], config["RECSTACK_DEAD_LETTER_TOPIC"]
    users = by_kind(prod, "KafkaUser")
    writers = {n for n, u in users.items() if "Write" in acl_ops(u, "topic", events)}
    readers = {n for n, u in users.items() if acl_ops(u, "topic", events) & {"Read", "All"}}
    assert writers == {"recstack-events-producer", "recstack-gateway"}
    assert readers == {"recstack-feature-stream"}
    stream = users["recstack-feature-stream"]
    assert "Read" in acl_ops(stream, "group", "recstack-feature-stream")
    assert {n for n, u in users.items() if "Write" in acl_ops(u, "topic", dlq)} == {"recstack-feature-stream"}
    assert all(
        "All" not in acl_ops(u, t, n) for u in users.values() for t, n in [("topic", events), ("topic", dlq)]
    )
    assert all(u["spec"]["authentication"]["type"] == "scram-sha-512" for u in users.values())
    kafka = next(iter(by_kind(prod, "Kafka").values()))["spec"]["kafka"]
    assert kafka["authorization"]["type"] == "simple"
    (listener,) = kafka["listeners"]
    assert listener["tls"] is True and listener["authentication"]["type"] == "scram-sha-512"
    assert (
        config["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and config["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    )
    # Each Kafka client authenticates as its own KafkaUser, password from that user's Secret.
    deployments = by_kind(prod, "Deployment")
    for pod, user in (("gateway", "recstack-gateway"), ("feature-stream", "recstack-feature-stream")):
        env = {e["name"]: e for e in pod_spec(deployments[pod])["containers"][0]["env"]}
        assert env["KAFKA_SASL_USERNAME"]["value"] == user
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": user, "key": "password"}


def mounted_secrets(spec: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """mountPath -> Secret name for the container's Secret volumes."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    return {
        m["mountPath"]: volumes[m["name"]]["secret"]["secretName"]
        for m in container.get("volumeMounts", [])
        if "secret" in volumes.get(m["name"], {})  # not a volumeClaimTemplate's volume
    }


def test_prod_wires_tls_mtls_auth_and_redis_secrets(prod: list[dict[str, Any]]) -> None:
    config = by_kind(prod, "ConfigMap")["recstack-config"]["data"]
    assert config["RECSTACK_TLS_CERT"] == "/etc/recstack/tls/tls.crt"
    assert config["RECSTACK_TLS_KEY"] == "/etc/recstack/tls/tls.key"
    assert config["RECSTACK_TLS_CA"] == "/etc/recstack/tls/ca.crt"
    assert config["RECSTACK_REDIS_CA"] == "/etc/recstack/tls/ca.crt"
    deployments = by_kind(prod, "Deployment")
    for name in ("gateway", *STAGES):
        spec = pod_spec(deployments[name])
        (c,) = spec["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert mounted_secrets(spec, c)["/etc/recstack/tls"] == "recstack-tls", name
        # mTLS on the stages (only the gateway's certificate gets in); callers use API keys/JWTs.
        assert env["RECSTACK_TLS_CLIENT_AUTH"]["value"] == ("false" if name == "gateway" else "true"), name
    gateway_spec = pod_spec(deployments["gateway"])
    (gateway,) = gateway_spec["containers"]
    env = {e["name"]: e for e in gateway["env"]}
    assert env["RECSTACK_AUTH_MODE"]["value"] in {"api_key", "jwt"}
    auth_file = env.get("RECSTACK_API_KEYS_FILE") or env["RECSTACK_JWT_KEY_FILE"]
    assert mounted_secrets(gateway_spec, gateway)[auth_file["value"].rsplit("/", 1)[0]] == "recstack-auth"
    for name in REDIS_CLIENTS:
        (c,) = pod_spec(deployments[name])["containers"]
        env = {e["name"]: e for e in c["env"]}
        assert env["REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "recstack-redis", "key": "REDIS_URL"}
    redis = by_kind(prod, "StatefulSet")["redis"]
    extra = by_kind(prod, "ConfigMap")["redis-extra-conf"]["data"]["extra.conf"].split("\n")
    assert {"port 0", "tls-port 6379", "tls-cert-file /etc/redis/tls/tls.crt"} <= set(extra)
    (server,) = pod_spec(redis)["containers"]
    assert mounted_secrets(pod_spec(redis), server)["/etc/redis/tls"] == "recstack-tls"


def test_redis_requires_a_password_and_forbids_dangerous_commands(
    overlay: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = overlay
    conf = by_kind(docs, "ConfigMap")["redis-conf"]["data"]["redis.conf"].split("\n")
    assert "protected-mode yes" in conf and "aclfile /run/redis/users.acl" in conf
    spec = pod_spec(by_kind(docs, "StatefulSet")["redis"])
    (acl,) = spec["initContainers"]
    script = acl["command"][-1]
    assert "user default off" in script and "-@dangerous -@admin" in script and "#%s" in script
    assert mounted_secrets(spec, acl)["/etc/redis/secret"] == "recstack-redis"
    acl_volume = next(v for v in spec["volumes"] if v["name"] == "acl")
    assert acl_volume["emptyDir"]["medium"] == "Memory"  # the hashed password never touches a disk


def test_prod_scales_out(prod: list[dict[str, Any]]) -> None:
    config = by_kind(prod, "ConfigMap")["recstack-config"]["data"]
    deployments = by_kind(prod, "Deployment")
    hpas = by_kind(prod, "HorizontalPodAutoscaler")
    assert set(hpas) == {"gateway", *STAGES}
    for name, hpa in hpas.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert spec["minReplicas"] >= 2 and spec["maxReplicas"] > spec["minReplicas"]
        ((metric,),) = [spec["metrics"]]
        assert metric["resource"]["name"] == "cpu"
        assert "cpu" in pod_spec(deployments[name])["containers"][0]["resources"]["requests"]
    (scaled,) = by_kind(prod, "ScaledObject").values()
    assert (
        scaled["apiVersion"] == "keda.sh/v1alpha1"
        and scaled["spec"]["scaleTargetRef"]["name"] == "feature-stream"
    )
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == config["RECSTACK_EVENTS_TOPIC"]
    assert trigger["metadata"]["consumerGroup"] == "recstack-feature-stream"
    partitions = by_kind(prod, "KafkaTopic")[config["RECSTACK_EVENTS_TOPIC"]]["spec"]["partitions"]
    assert scaled["spec"]["maxReplicaCount"] <= partitions  # more consumers than partitions would idle
    auth = by_kind(prod, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    refs = {r["parameter"]: r["name"] for r in auth["spec"]["secretTargetRef"]}
    assert refs["password"] == "recstack-feature-stream"
    # Every Deployment keeps a pod through voluntary disruptions.
    pdbs = by_kind(prod, "PodDisruptionBudget")
    for name in deployments:
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}


def test_distributed_training_opens_only_worker_traffic_dns_and_https() -> None:
    docs = render("train-distributed", K8S)
    (job,) = by_kind(docs, "Job").values()
    (policy,) = by_kind(docs, "NetworkPolicy").values()
    spec = policy["spec"]
    labels = pod_labels(job)
    assert selects(spec["podSelector"], labels) and spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert [selects(peer["podSelector"], labels) for peer in ingress["from"]] == [True]
    ports = set()
    for rule in spec["egress"]:
        peers = rule.get("to", [])
        assert all("podSelector" in p for p in peers)  # other workers or kube-dns, no other pods
        ports |= {p["port"] for p in rule.get("ports", [])}
        if not peers:  # the only rule open to any address: HTTPS (a public dataset download)
            assert [p["port"] for p in rule["ports"]] == [443]
    assert ports == {53, 443}
