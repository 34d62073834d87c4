"""Versioned model bundles (docs/DESIGN.md, "Artifacts").

``recstack.artifacts.layout`` (the layout and its torch-free readers) imports no torch; the
names of ``recstack.artifacts.bundle`` (writing bundles, loading their models: torch) are
imported from it when first used, so that importing the layout stays light.
"""

from __future__ import annotations

from typing import Any

from recstack.artifacts.layout import FORMAT_VERSION, BundleError

__all__ = ["FORMAT_VERSION", "Bundle", "BundleError", "load_bundle", "save_bundle", "write_current"]

_BUNDLE_NAMES = {"Bundle", "load_bundle", "save_bundle", "write_current"}


def __getattr__(name: str) -> Any:
    if name in _BUNDLE_NAMES:
        from recstack.artifacts import bundle

        return getattr(bundle, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
