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
        if name.startswith("_"):
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


def test_lua_builds_the_offsets_key_of_keys_py() -> None:
    lua = (ROOT / "recstack" / "features" / "writer_apply.lua").read_text()
    assert f"prefix .. '{Keys().stream_offsets()}'" in lua
