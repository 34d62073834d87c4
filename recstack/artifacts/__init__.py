"""Versioned model bundles (docs/DESIGN.md, "Artifacts")."""

from recstack.artifacts.bundle import (
    FORMAT_VERSION,
    Bundle,
    BundleError,
    load_bundle,
    save_bundle,
    write_current,
)

__all__ = ["FORMAT_VERSION", "Bundle", "BundleError", "load_bundle", "save_bundle", "write_current"]
