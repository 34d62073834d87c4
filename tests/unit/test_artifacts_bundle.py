"""Bundle save/load round trip, CURRENT pointer, clear errors for missing files and newer formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from recstack.artifacts import FORMAT_VERSION, BundleError, load_bundle
from recstack.models.multitask import MMoERanker
from tests.helpers import make_bundle


def test_round_trip(tmp_path: Path) -> None:
    vdir = make_bundle(tmp_path)
    assert (tmp_path / "CURRENT").read_text().strip() == vdir.name
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["format"] == FORMAT_VERSION and manifest["data_spec"] == "synthetic"
    assert set(manifest["models"]) == {"two_tower", "multitask", "ncf"}
    b = load_bundle(tmp_path)
    assert b.version == vdir.name and b.path == vdir
    assert b.item_map.index(["i1", "i8", "nope"]).tolist() == [1, 8, 0]
    assert b.user_map.get("u3") == 3 and b.genre_vocab == ["A", "B"]
    assert b.popularity[0] == "i8" and b.configs["rerank"] == {"blend": 0.5}
    assert b.configs["multitask"]["class"] == "MMoERanker"
    assert b.item_genres.matrix[2].tolist() == [1.0, 1.0] and b.item_genres.matrix[1].tolist() == [1.0, 0.0]
    tt = b.model("two_tower")
    assert not tt.training and b.model("two_tower") is tt  # cached
    torch.manual_seed(0)
    fresh = make_bundle(tmp_path / "again")
    again = load_bundle(fresh)
    u, h, g = torch.tensor([1, 0]), torch.tensor([[0, 0, 0, 1, 2], [0] * 5]), torch.rand(2, 2)
    assert torch.allclose(tt.user_embedding(u, h, g), again.model("two_tower").user_embedding(u, h, g))
    assert isinstance(b.model("multitask"), MMoERanker)
    with pytest.raises(KeyError, match="no model 'sasrec'"):
        b.model("sasrec")


def test_load_version_dir_directly_and_current_moves(tmp_path: Path) -> None:
    first = make_bundle(tmp_path)
    second = make_bundle(tmp_path)
    assert first != second
    assert load_bundle(tmp_path).version == second.name
    assert load_bundle(first).version == first.name


def test_missing_bundle_names_the_file_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(
        BundleError, match=r"CURRENT is missing.*recstack train --data synthetic --out artifacts"
    ):
        load_bundle(tmp_path)
    vdir = make_bundle(tmp_path)
    (vdir / "catalog.json").unlink()
    with pytest.raises(BundleError, match=r"catalog\.json is missing.*recstack train"):
        load_bundle(tmp_path)


def test_missing_weights_file(tmp_path: Path) -> None:
    vdir = make_bundle(tmp_path)
    (vdir / "ncf.safetensors").unlink()
    with pytest.raises(BundleError, match=r"ncf\.safetensors is missing"):
        load_bundle(tmp_path).model("ncf")


def test_newer_format_is_refused(tmp_path: Path) -> None:
    vdir = make_bundle(tmp_path)
    manifest = json.loads((vdir / "manifest.json").read_text())
    manifest["format"] = FORMAT_VERSION + 1
    (vdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=f"format {FORMAT_VERSION + 1}, newer than"):
        load_bundle(tmp_path)


def test_catalog_created_at(tmp_path: Path) -> None:
    vdir = make_bundle(tmp_path, created_at={"i1": 1_700_000_000, "i3": 1_600_000_000, "other": 5})
    catalog = json.loads((vdir / "catalog.json").read_text())
    assert catalog["created_at"] == {"i1": 1_700_000_000, "i3": 1_600_000_000}  # catalogue items only
    b = load_bundle(tmp_path)
    assert b.created_at == {"i1": 1_700_000_000, "i3": 1_600_000_000}
    assert load_bundle(make_bundle(tmp_path / "none")).created_at == {}  # no dates: empty map


def test_old_bundle_without_created_at_still_loads(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    vdir = make_bundle(tmp_path, created_at={"i1": 1})
    catalog = json.loads((vdir / "catalog.json").read_text())
    del catalog["created_at"]  # written before the field existed
    (vdir / "catalog.json").write_text(json.dumps(catalog))
    b = load_bundle(tmp_path)
    assert b.created_at == {} and b.popularity[0] == "i8"
    catalog["created_at"] = {"i1": 10.7, "i2": "2024-01-01", "i3": None, "i4": True, "i5": 10**400}
    (vdir / "catalog.json").write_text(json.dumps(catalog))
    assert load_bundle(tmp_path).created_at == {"i1": 10}  # the rest are not unix seconds: left out
    assert "4 catalog.json 'created_at' entries are not unix seconds" in caplog.text
    catalog["created_at"] = ["i1"]
    (vdir / "catalog.json").write_text(json.dumps(catalog))
    assert load_bundle(tmp_path).created_at == {}
