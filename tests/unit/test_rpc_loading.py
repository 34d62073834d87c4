"""Loading a core from a bundle at start and hot-swapping it when CURRENT moves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from recstack.artifacts import write_current
from recstack.rpc.loading import BundleReloader, load_core
from recstack.rpc.server import StartupError


def write_version(root: Path, version: str, items: list[str]) -> None:
    vdir = root / version
    vdir.mkdir(parents=True)
    files = {
        "manifest.json": {"format": 1, "version": version, "models": {}},
        "catalog.json": {"item_ids": items, "genres": {}, "genre_vocab": [], "popularity": items},
        "users.json": {"user_ids": ["u1"]},
        "metrics.json": {},
    }
    for name, obj in files.items():
        (vdir / name).write_text(json.dumps(obj))


class Core:
    def __init__(self, bundle: Any):
        self.items = list(bundle.catalog["item_ids"])


def test_load_core_and_missing_bundle(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="recstack train --data synthetic --out artifacts"):
        load_core(tmp_path / "nothing", Core)
    write_version(tmp_path, "v1", ["a"])
    write_current(tmp_path, "v1")
    core, version = load_core(tmp_path, Core)
    assert core.items == ["a"] and version == "v1"


async def test_reloader_swaps_on_new_current_and_survives_a_broken_bundle(tmp_path: Path) -> None:
    write_version(tmp_path, "v1", ["a"])
    write_current(tmp_path, "v1")
    applied: list[tuple[list[str], str]] = []
    reloader = BundleReloader(tmp_path, Core, lambda core, v: applied.append((core.items, v)))
    assert not await reloader.check()  # nothing new

    write_version(tmp_path, "v2", ["a", "b"])
    write_current(tmp_path, "v2")
    assert await reloader.check()
    assert applied == [(["a", "b"], "v2")]

    (tmp_path / "v3").mkdir()  # no manifest: broken
    write_current(tmp_path, "v3")
    assert not await reloader.check()
    assert len(applied) == 1  # the v2 core stays


def test_load_core_warms_the_core_up_before_it_serves(tmp_path: Path) -> None:
    class Warm(Core):
        warmed = 0

        def warm_up(self) -> None:
            Warm.warmed += 1

    write_version(tmp_path, "v1", ["a", "b"])
    write_current(tmp_path, "v1")
    load_core(tmp_path, Warm)
    assert Warm.warmed == 1
    load_core(tmp_path, lambda bundle: {"x": Warm(bundle), "y": Warm(bundle)})  # cores of in-process stages
    assert Warm.warmed == 3
