from __future__ import annotations

from pathlib import Path

import pytest

from recstack.devstack.bundle import BundleMissingError, bundle_exists, ensure_bundle


def test_bundle_exists_needs_current_and_manifest(tmp_path: Path) -> None:
    assert not bundle_exists(tmp_path)
    (tmp_path / "CURRENT").write_text("v1\n")
    assert not bundle_exists(tmp_path)
    (tmp_path / "v1").mkdir()
    (tmp_path / "v1" / "manifest.json").write_text("{}")
    assert bundle_exists(tmp_path)
    assert ensure_bundle(tmp_path, train=False) is False


def test_ensure_bundle_without_training_names_the_command(tmp_path: Path) -> None:
    with pytest.raises(BundleMissingError, match=r"recstack train --data synthetic --out .*"):
        ensure_bundle(tmp_path / "artifacts", train=False)
