"""Fixtures of the e2e tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture
def bundle_copy(small_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session bundle (a run must not touch the shared one)."""
    dest = tmp_path / "artifacts"
    shutil.copytree(small_bundle, dest)
    return dest
