"""Item genres for the feature writer, read from the model bundle's catalog.json.

Only ``catalog.json`` is read (no torch, no model weights), so the stream worker stays light:
``<artifacts>/CURRENT`` names the version directory, ``<artifacts>/<version>/catalog.json`` holds
``{"item_ids": [...], "genres": {item_id: [genre, ...]}, ...}``; recstack/artifacts/layout.py
resolves and reads it (``CatalogError`` is the layout's).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from recstack.artifacts.layout import CatalogError, read_catalog, resolve_catalog_dir

__all__ = ["CatalogError", "ItemCatalog", "load_catalog_or_empty"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ItemCatalog:
    """item_id -> genres. Unknown items have no genres. ``version`` is the bundle version ('' if none)."""

    genres: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    version: str = ""

    @classmethod
    def from_genres(cls, genres: Mapping[str, Sequence[str]], version: str = "") -> ItemCatalog:
        return cls({str(k): tuple(v) for k, v in genres.items()}, version)

    @classmethod
    def from_artifacts(cls, artifacts: str | Path) -> ItemCatalog:
        """Read the current bundle's catalog.json. Raises CatalogError when missing or malformed."""
        version_dir = resolve_catalog_dir(artifacts)
        return cls.from_genres(read_catalog(version_dir)["genres"], version=version_dir.name)

    def genres_of(self, item_id: str) -> tuple[str, ...]:
        return self.genres.get(item_id, ())

    def __len__(self) -> int:
        return len(self.genres)


def load_catalog_or_empty(artifacts: str | Path) -> ItemCatalog:
    """The current catalogue, or an empty one (with a warning) when no bundle exists yet."""
    try:
        return ItemCatalog.from_artifacts(artifacts)
    except CatalogError as exc:
        log.warning("no item genres, genre scores will not be updated: %s", exc)
        return ItemCatalog()
