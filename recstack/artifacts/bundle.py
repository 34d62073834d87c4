"""Versioned model bundles: save, load, and the atomically replaced CURRENT pointer.

The layout and the torch-free readers (CURRENT, manifest, catalogue, users, item genres) are
recstack/artifacts/layout.py; this module adds writing bundles and loading their torch models.
Weights are read with safetensors (no pickle). ``catalog["created_at"]`` = ``{item_id: unix s}``
for the catalogue items with a known creation time (the gateway's freshness metric); bundles
written before it have no such key and load as {}.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

import recstack
from recstack.artifacts.layout import (
    CATALOG,
    CREATE_HINT,
    FORMAT_VERSION,
    MANIFEST,
    METRICS,
    REQUIRED_FILES,
    USERS,
    BundleError,
    ItemGenres,
    read_json,
    read_manifest,
    read_users,
    resolve_version_dir,
)
from recstack.artifacts.registry import build_model, model_spec
from recstack.data.schema import IdMap

logger = logging.getLogger(__name__)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, sort_keys=False, default=float))


def write_current(root: Path, version: str) -> None:
    """Point ``root/CURRENT`` at ``version`` atomically (temp file in the same dir + os.replace)."""
    fd, tmp = tempfile.mkstemp(prefix=".CURRENT.", dir=root)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(version + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / "CURRENT")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def catalog_dict(
    item_ids: list[str],
    item_genres: Mapping[str, list[str]],
    titles: Mapping[str, str],
    genre_vocab: list[str],
    popularity: list[str],
    created_at: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """The content of catalog.json (see the module docstring)."""
    return {
        "item_ids": list(item_ids),
        "genres": {i: list(item_genres.get(i, [])) for i in item_ids},
        "titles": {i: titles.get(i, "") for i in item_ids},
        "genre_vocab": list(genre_vocab),
        "popularity": list(popularity),
        "created_at": {i: int(created_at[i]) for i in item_ids if i in (created_at or {})},
    }


def save_bundle(
    out_dir: Path,
    *,
    models: dict[str, torch.nn.Module],
    item_ids: list[str],
    item_genres: dict[str, list[str]],
    titles: dict[str, str],
    genre_vocab: list[str],
    popularity: list[str],
    user_ids: list[str],
    metrics: dict[str, Any],
    data_spec: str,
    serving: dict[str, Any] | None = None,
    created_at: Mapping[str, int] | None = None,
    update_current: bool = True,
    indexes: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write a new version directory under ``out_dir`` (and point CURRENT at it); return its path.

    ``models``: name -> module (classes known to :mod:`recstack.artifacts.registry`);
    ``serving``: settings the serving cores read (e.g. ``{"rerank": {"blend": 0.6}}``);
    ``indexes``: trained FAISS indexes of retrieval sources (``index-<source>.faiss``);
    ``training``: how the bundle was trained (profile, parameters, how each model stopped, warnings);
    ``created_at``: item id -> creation time (unix s); catalog.json keeps the entries of
    ``item_ids`` (items without one are left out).
    The version directory is written under a temporary name and renamed when complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    version = f"{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    tmp = out_dir / f".tmp-{version}"
    tmp.mkdir()
    try:
        manifest_models = {}
        for name, module in models.items():
            spec = model_spec(module)
            state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
            save_file(state, str(tmp / f"{name}.safetensors"))
            os.chmod(tmp / f"{name}.safetensors", 0o644)
            _write_json(tmp / f"{name}.json", spec)
            manifest_models[name] = {
                "class": spec["class"],
                "weights": f"{name}.safetensors",
                "config": f"{name}.json",
                "parameters": int(sum(p.numel() for p in module.parameters())),
            }
        _write_json(
            tmp / CATALOG,
            catalog_dict(item_ids, item_genres, titles, genre_vocab, popularity, created_at),
        )
        _write_json(tmp / USERS, {"user_ids": list(user_ids)})
        for name, index in (indexes or {}).items():
            import faiss

            faiss.write_index(index, str(tmp / f"index-{name}.faiss"))
        _write_json(tmp / METRICS, metrics)
        _write_json(
            tmp / MANIFEST,
            {
                "format": FORMAT_VERSION,
                "version": version,
                "created_at": now.isoformat(),
                "recstack_version": recstack.__version__,
                "data_spec": data_spec,
                "models": manifest_models,
                "serving": serving or {},
                "training": dict(training or {}),
            },
        )
        final = out_dir / version
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if update_current:
        write_current(out_dir, version)
    logger.info("wrote bundle %s", final)
    return final


def _created_at_map(raw: Any, path: Path) -> dict[str, int]:
    """catalog.json ``created_at`` as {item: int}; a non-map or non-numeric entries are dropped
    with a warning (the field only feeds a metric, so a bad value must not stop a bundle loading)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        logger.warning("%s: catalog.json 'created_at' is not a map; ignored", path)
        return {}
    out: dict[str, int] = {}
    for item, ts in raw.items():
        number = isinstance(ts, int | float) and not isinstance(ts, bool)
        if number and (math.isfinite(ts) if isinstance(ts, float) else True) and abs(ts) < 2**62:
            out[str(item)] = int(ts)
    if len(out) != len(raw):
        logger.warning(
            "%s: %d catalog.json 'created_at' entries are not unix seconds; ignored",
            path,
            len(raw) - len(out),
        )
    return out


@dataclass
class Bundle:
    """A loaded bundle. ``model(name)`` builds and caches the module (eval mode)."""

    path: Path | None  # None: an in-memory bundle (see in_memory)
    manifest: dict
    catalog: dict
    user_ids: list[str]
    metrics: dict
    item_map: IdMap = field(init=False)
    user_map: IdMap = field(init=False)
    item_genres: ItemGenres = field(init=False)

    def __post_init__(self) -> None:
        self.item_map = IdMap(self.catalog["item_ids"])
        self.user_map = IdMap(self.user_ids)
        self.item_genres = ItemGenres.from_catalog(self.catalog)
        self._created_at = _created_at_map(self.catalog.get("created_at"), self.path)
        self._models: dict[str, torch.nn.Module] = {}
        self._indexes: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def in_memory(
        cls,
        models: Mapping[str, torch.nn.Module],
        catalog: dict,
        user_ids: list[str],
        serving: Mapping[str, Any] | None = None,
        version: str = "in-memory",
        indexes: Mapping[str, Any] | None = None,
    ) -> Bundle:
        """A bundle over modules held in memory (training evaluates the serving cores on the models
        it has just trained, before anything is written). The modules are used as they are."""
        manifest = {
            "format": FORMAT_VERSION,
            "version": version,
            "models": {n: {"class": type(m).__name__} for n, m in models.items()},
            "serving": dict(serving or {}),
        }
        bundle = cls(path=None, manifest=manifest, catalog=catalog, user_ids=list(user_ids), metrics={})
        for name, module in models.items():
            bundle._models[name] = module.eval()
        bundle._indexes = dict(indexes or {})
        return bundle

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def genre_vocab(self) -> list[str]:
        return list(self.catalog.get("genre_vocab", []))

    @property
    def popularity(self) -> list[str]:
        return list(self.catalog.get("popularity", []))

    @property
    def created_at(self) -> dict[str, int]:
        """Item id -> creation time (unix s) from catalog.json; {} for bundles without the field."""
        return dict(self._created_at)

    @property
    def model_names(self) -> list[str]:
        return list(self.manifest.get("models", {}))

    @property
    def configs(self) -> dict[str, Any]:
        """Model name -> ``{"class", "config"}``, plus the manifest's serving settings (e.g. "rerank")."""
        out: dict[str, Any] = dict(self.manifest.get("serving", {}))
        for name in self.model_names:
            out[name] = (
                model_spec(self._models[name]) if self.path is None else read_json(self.path / f"{name}.json")
            )
        return out

    def index(self, source: str) -> Any:
        """The trained FAISS index of retrieval source ``source`` recorded in
        ``serving.retrieval.index``, or None (the source is searched exactly)."""
        spec = (self.manifest.get("serving", {}).get("retrieval", {}).get("index") or {}).get(source)
        if not spec or spec.get("kind") == "exact":
            return None
        if source in self._indexes:
            return self._indexes[source]
        if self.path is None:
            return None
        import faiss

        path = self.path / f"index-{source}.faiss"
        if not path.is_file():
            raise BundleError(
                f"bundle file {path} is missing (serving.retrieval.index names it); {CREATE_HINT}"
            )
        index = faiss.read_index(str(path))
        if spec.get("kind") == "ivf":
            faiss.extract_index_ivf(index).nprobe = int(spec["nprobe"])
        self._indexes[source] = index
        return index

    def model(self, name: str) -> torch.nn.Module:
        """The module ``name`` built from its config with its weights (weights-only), eval mode.

        Raises KeyError when the bundle has no such model.
        """
        with self._lock:
            if name not in self._models:
                if name not in self.manifest.get("models", {}):
                    raise KeyError(
                        f"bundle {self.version} has no model {name!r}; it holds {self.model_names}"
                    )
                spec = read_json(self.path / f"{name}.json")
                wpath = self.path / f"{name}.safetensors"
                if not wpath.is_file():
                    raise BundleError(f"bundle file {wpath} is missing; {CREATE_HINT}")
                module = build_model(spec)
                module.load_state_dict(load_file(str(wpath)))
                module.eval()
                self._models[name] = module
            return self._models[name]


def load_bundle(path: Path | str) -> Bundle:
    """Load the bundle at ``path`` (an artifacts root with CURRENT, or a version directory)."""
    vdir = resolve_version_dir(Path(path))
    for name in REQUIRED_FILES:
        if not (vdir / name).is_file():
            raise BundleError(f"bundle file {vdir / name} is missing; {CREATE_HINT}")
    return Bundle(
        path=vdir,
        manifest=read_manifest(vdir),
        catalog=read_json(vdir / CATALOG),
        user_ids=read_users(vdir),
        metrics=read_json(vdir / METRICS),
    )
