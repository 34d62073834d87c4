"""Where a model bundle's files are and how to read the ones that need no torch.

Layout (docs/DESIGN.md)::

    artifacts/
      CURRENT                  one line: the version directory name (atomic replace)
      <version>/manifest.json  {"format", "version", "created_at", "recstack_version", "data_spec",
                                "models", "serving"}
      <version>/catalog.json   {"item_ids", "genres", "titles", "genre_vocab", "popularity",
                                "created_at"}
      <version>/users.json     {"user_ids": [...]}
      <version>/<model>.safetensors + <model>.json ({"class", "config"})
      <version>/metrics.json

``catalog["item_ids"][i - 1]`` is the id of item index i and ``users.json["user_ids"][u - 1]`` the
id of user index u (index 0 = padding / unknown).

Every reader resolves ``CURRENT`` and reads these files here: the model loader
(recstack/artifacts/bundle.py, which adds the torch side), the stream's item genres
(recstack/features/catalog.py), the bandit's context features (recstack/exploration/context.py),
the reload watchers, the dev stack. Imports numpy only (no torch), so light processes can use it.
Errors are ``BundleError`` (what is missing and the command that creates a bundle);
``CatalogError`` is the one for the catalogue.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
CURRENT = "CURRENT"
MANIFEST = "manifest.json"
CATALOG = "catalog.json"
USERS = "users.json"
METRICS = "metrics.json"
REQUIRED_FILES = (MANIFEST, CATALOG, USERS, METRICS)
CREATE_HINT = "`recstack train --data synthetic --out artifacts` creates one"


class BundleError(RuntimeError):
    """A bundle is missing, incomplete or unreadable; the message names the file and how to fix it."""


class NoBundleError(BundleError):
    """No bundle at all: the directory has no ``CURRENT`` (and is no version directory)."""


class CatalogError(BundleError, ValueError):
    """The bundle's catalogue could not be read; the message names the file and how to create it."""


def read_current(root: str | Path) -> str:
    """The version ``root/CURRENT`` names ("" when there is no CURRENT file or it is empty)."""
    current = Path(root) / CURRENT
    return current.read_text().strip() if current.is_file() else ""


def resolve_version_dir(path: str | Path) -> Path:
    """The version directory of ``path``: ``path`` itself when it is one (it holds a manifest.json,
    or a catalog.json: the minimal bundle of the stream), else ``path/<CURRENT>``.

    Raises ``NoBundleError`` without CURRENT, ``BundleError`` when CURRENT does not name an
    existing version directory."""
    root = Path(path)
    if (root / MANIFEST).is_file() or (root / CATALOG).is_file():
        return root
    current = root / CURRENT
    if not current.is_file():
        missing = "" if root.is_dir() else " (directory missing)"
        raise NoBundleError(
            f"no model bundle at {root}{missing}: CURRENT is missing ({current} not found); {CREATE_HINT}"
        )
    version = current.read_text().strip()
    if not version or "/" in version or version.startswith("."):
        raise BundleError(f"{current} holds {version!r}, not a version directory name; {CREATE_HINT}")
    vdir = root / version
    if not vdir.is_dir():
        raise BundleError(f"{current} points at {vdir}, which is missing; {CREATE_HINT}")
    return vdir


def bundle_exists(path: str | Path) -> bool:
    """True when ``path`` resolves to a version directory holding a manifest.json."""
    try:
        return (resolve_version_dir(path) / MANIFEST).is_file()
    except BundleError:
        return False


def read_json(path: str | Path) -> Any:
    """One bundle file as JSON; ``BundleError`` when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"bundle file {path} is missing; {CREATE_HINT}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"bundle file {path} is not valid JSON ({exc}); retrain: {CREATE_HINT}") from exc


def read_manifest(vdir: str | Path) -> dict:
    """manifest.json of a version directory, its integer ``format`` checked against
    ``FORMAT_VERSION`` (a newer bundle than this recstack reads is a ``BundleError``)."""
    path = Path(vdir) / MANIFEST
    manifest = read_json(path)
    fmt = manifest.get("format") if isinstance(manifest, dict) else None
    if not isinstance(fmt, int):
        raise BundleError(f"{path} has no integer 'format'; {CREATE_HINT}")
    if fmt > FORMAT_VERSION:
        import recstack

        raise BundleError(
            f"bundle {Path(vdir)} has format {fmt}, newer than this recstack {recstack.__version__} reads "
            f"(format {FORMAT_VERSION}); upgrade recstack or retrain the bundle with this version"
        )
    return manifest


def resolve_catalog_dir(path: str | Path) -> Path:
    """``resolve_version_dir`` for the readers of the catalogue: its errors are ``CatalogError``."""
    try:
        return resolve_version_dir(path)
    except BundleError as exc:
        raise CatalogError(str(exc)) from exc


def read_catalog(path: str | Path) -> dict:
    """catalog.json of the bundle at ``path`` (an artifacts root with CURRENT, or a version
    directory), its ``genres`` checked to be {item_id: [genre, ...]}. Raises ``CatalogError``."""
    catalog_path = resolve_catalog_dir(path) / CATALOG
    try:
        data = read_json(catalog_path)
    except BundleError as exc:
        raise CatalogError(str(exc)) from exc
    genres = data.get("genres") if isinstance(data, dict) else None
    if not isinstance(genres, dict) or not all(isinstance(g, list) for g in genres.values()):
        raise CatalogError(f"{catalog_path} has no 'genres' object (item_id -> [genre, ...])")
    return data


def catalog_genres(catalog: dict) -> dict[str, list[str]]:
    """item id -> genres of a catalogue (``read_catalog``), as strings."""
    return {str(k): [str(g) for g in v] for k, v in (catalog.get("genres") or {}).items()}


def genre_vocab(catalog: dict) -> list[str]:
    """The catalogue's genre vocabulary (its ``genre_vocab``, else the sorted genres of its items)."""
    vocab = catalog.get("genre_vocab") or sorted({g for gs in catalog_genres(catalog).values() for g in gs})
    if not isinstance(vocab, list):
        raise CatalogError("catalog.json: 'genre_vocab' must be a list of genres")
    return [str(g) for g in vocab]


def read_users(vdir: str | Path) -> list[str]:
    """The user ids of users.json, as stored (user index u is ``ids[u - 1]``)."""
    path = Path(vdir) / USERS
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("user_ids"), list):
        raise BundleError(f"{path} has no 'user_ids' list; {CREATE_HINT}")
    return list(data["user_ids"])


@dataclass
class ItemGenres:
    """Genre multi-hot of every item index: ``matrix`` float32 [n_items + 1, G] (row 0 = padding)."""

    genre_vocab: list[str]
    matrix: np.ndarray

    @classmethod
    def from_lists(
        cls, item_genres: Sequence[Sequence[str]], genre_vocab: Sequence[str] | None = None
    ) -> ItemGenres:
        """Build from per-index genre lists (``item_genres[0]`` is padding and ignored)."""
        vocab = (
            list(genre_vocab) if genre_vocab is not None else sorted({g for gs in item_genres for g in gs})
        )
        col = {g: j for j, g in enumerate(vocab)}
        m = np.zeros((len(item_genres), len(vocab)), dtype=np.float32)
        for i, gs in enumerate(item_genres):
            if i == 0:
                continue
            for g in gs:
                j = col.get(g)
                if j is not None:
                    m[i, j] = 1.0
        return cls(genre_vocab=vocab, matrix=m)

    @classmethod
    def from_catalog(cls, catalog: dict) -> ItemGenres:
        """The item genres of a catalogue, by item index (``item_ids[i - 1]`` is index i)."""
        genres = catalog.get("genres", {})
        lists = [[]] + [genres.get(i, []) for i in catalog["item_ids"]]
        return cls.from_lists(lists, list(catalog.get("genre_vocab", [])))

    @property
    def n_genres(self) -> int:
        return len(self.genre_vocab)
