"""The one Redis key table (docs/DESIGN.md) lists exactly the keys ``recstack/features/keys.py``
builds: a new key method without a row, or a row without a method, fails here."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from recstack.features.keys import Keys

ROOT = Path(__file__).resolve().parents[2]
# every Keys method, called the way the code calls it (the linear-state kinds spelled out)
CALLS: dict[str, list[tuple]] = {
    "linear_arm": [("{item}", "linucb"), ("{item}", "linucb-hybrid")],
    "linear_shared": [("linucb-hybrid",)],
}


def normalise(pattern: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", pattern.replace("\\|", "|"))


def key_patterns() -> set[str]:
    keys = Keys()
    out = set()
    for name, method in inspect.getmembers(keys, inspect.ismethod):
        if name.startswith("_") or name.endswith("_tag"):  # hash tags: parts of the keys below
            continue
        params = inspect.signature(method).parameters
        calls = CALLS.get(name) or [tuple(f"{{{p}}}" for p in params)]
        for args in calls:
            out.add(normalise(method(*args)))
    return out


def table_patterns() -> set[str]:
    text = (ROOT / "docs" / "DESIGN.md").read_text()
    section = text.split("Redis key schema", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {normalise(re.match(r"\| `([^`]+)`", row).group(1)) for row in rows}


def test_design_table_lists_every_key_of_keys_py() -> None:
    built, documented = key_patterns(), table_patterns()
    assert built - documented == set(), "keys built in keys.py without a row in docs/DESIGN.md"
    assert documented - built == set(), "rows in docs/DESIGN.md that keys.py does not build"


def test_the_writer_scripts_build_no_key() -> None:
    """Redis Cluster routes a script by its KEYS: the writer's scripts take every key from KEYS
    (no prefix argument to build one from; tests/integration/test_redis_cluster.py runs them on a
    cluster, where a key in another slot fails with CROSSSLOT)."""
    for name in ("writer_common.lua", "writer_user.lua", "writer_groups.lua"):
        lua = (ROOT / "recstack" / "features" / name).read_text()
        assert "prefix" not in lua, name
        code = [line for line in lua.splitlines() if not line.lstrip().startswith("--")]
        for line in code:
            assert "redis.call(" not in line or "'" + ":" not in line, (name, line)
