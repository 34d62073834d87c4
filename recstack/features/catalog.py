"""Item genres for the feature writer, read from the model bundle's catalog.json.

Only ``catalog.json`` is read (no torch, no model weights), so the stream worker stays light:
``<artifacts>/CURRENT`` names the version directory, ``<artifacts>/<version>/catalog.json`` holds
``{"item_ids": [...], "genres": {item_id: [genre, ...]}, ...}``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


class CatalogError(ValueError):
    """The catalogue could not be read; the message names the file and how to create it."""


def resolve_version_dir(artifacts: str | Path) -> Path:
    """Directory of the current bundle: ``artifacts/<CURRENT>``, or artifacts itself if it is a bundle."""
    root = Path(artifacts)
    if (root / "catalog.json").is_file():
        return root
    current = root / "CURRENT"
    if not current.is_file():
        raise CatalogError(
            f"{current} not found; create a bundle with `recstack train --data synthetic --out {root}`"
        )
    version = current.read_text().strip()
    if not version:
        raise CatalogError(f"{current} is empty; it must name a version directory under {root}")
    return root / version


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
        version_dir = resolve_version_dir(artifacts)
        path = version_dir / "catalog.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CatalogError(
                f"{path} not found; the bundle is incomplete, re-run `recstack train --out {artifacts}`"
            ) from exc
        except json.JSONDecodeError as exc:
            raise CatalogError(f"{path} is not valid JSON: {exc}") from exc
        genres = data.get("genres") if isinstance(data, dict) else None
        if not isinstance(genres, dict):
            raise CatalogError(f"{path} has no 'genres' object (item_id -> [genre, ...])")
        return cls.from_genres(genres, version=version_dir.name)

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
