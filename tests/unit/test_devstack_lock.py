"""constraints.txt (the lock `make install` uses) pins every dependency of pyproject.toml, compatibly.

When this fails after adding a dependency: install it into .venv, then `make lock`.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not NAME==VERSION; regenerate it with `make lock`"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *project.get("optional-dependencies", {}).get("dev", [])]
    env = default_environment()
    parsed = [Requirement(r) for r in reqs]
    return [r for r in parsed if r.marker is None or r.marker.evaluate(env | {"extra": "dev"})]


def test_every_dependency_is_pinned_compatibly() -> None:
    pins = _pins()
    missing = [r.name for r in _requirements() if canonicalize_name(r.name) not in pins]
    assert not missing, f"not in constraints.txt: {missing}; install them into .venv and run `make lock`"
    wrong = [
        f"{r.name}: pinned {pins[canonicalize_name(r.name)]} but pyproject asks {r.specifier}"
        for r in _requirements()
        if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)
    ]
    assert not wrong, "; ".join(wrong)


def test_lock_pins_torch_without_local_label_and_not_recstack() -> None:
    pins = _pins()
    assert pins[canonicalize_name("torch")] == Version("2.13.0")
    assert "recstack" not in pins
