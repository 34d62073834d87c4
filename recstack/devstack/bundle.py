"""Make sure a model bundle exists before the stack starts: train a small one when there is none."""

from __future__ import annotations

import logging
from pathlib import Path

from recstack.artifacts.layout import bundle_exists as layout_bundle_exists
from recstack.artifacts.layout import read_current

log = logging.getLogger(__name__)

SMALL_DATA_SPEC = "synthetic"


class BundleMissingError(RuntimeError):
    """No bundle at the artifacts path and training is unavailable or disabled."""


def bundle_exists(artifacts: Path) -> bool:
    """True when `artifacts/CURRENT` names a version directory holding a manifest.json."""
    return bool(read_current(artifacts)) and layout_bundle_exists(artifacts)


def train_small_bundle(artifacts: Path, data_spec: str = SMALL_DATA_SPEC) -> Path:
    """Train `TrainConfig.small()` on `data_spec` into `artifacts` (tqdm progress bars); returns its path."""
    try:
        from recstack.training import TrainConfig, train_bundle
    except ImportError as exc:
        raise BundleMissingError(
            f"cannot train a bundle: recstack.training has no train_bundle/TrainConfig ({exc}). "
            f"Train one with `recstack train --data {data_spec} --out {artifacts}` once training exists."
        ) from exc
    artifacts.mkdir(parents=True, exist_ok=True)
    log.info("training a small bundle on %s into %s", data_spec, artifacts)
    return Path(train_bundle(data_spec, artifacts, TrainConfig.small()))


def ensure_bundle(artifacts: Path, data_spec: str = SMALL_DATA_SPEC, train: bool = True) -> bool:
    """Train a small bundle into `artifacts` when none is there. Returns True when it trained one."""
    if bundle_exists(artifacts):
        return False
    if not train:
        raise BundleMissingError(
            f"no model bundle at {artifacts} (no CURRENT file). Create one with "
            f"`recstack train --data {data_spec} --out {artifacts}` or set RECSTACK_ARTIFACTS."
        )
    train_small_bundle(artifacts, data_spec)
    if not bundle_exists(artifacts):
        raise BundleMissingError(
            f"training finished but {artifacts} holds no CURRENT pointing at a manifest.json; "
            "check recstack.training.train_bundle's output layout against docs/DESIGN.md."
        )
    return True
