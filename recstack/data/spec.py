"""Dataset specs: one string names a dataset for the CLI, training and tests.

synthetic                      the default synthetic generator
synthetic:n_users=50,seed=3    with SyntheticConfig fields overridden (typed)
ml-100k[:DIR]                  MovieLens 100K (u.data, u.item, u.genre); no DIR: fetched into a cache
movielens:DIR                  MovieLens latest/small/20M/25M (csv) or 1M/10M (dat)
csv:INTERACTIONS[,ITEMS]       generic schema, CSV or Parquet
seq:PATH                       sequence file: 'user item item ...' or 'user item' per line
"""

from __future__ import annotations

from dataclasses import replace

from recstack.data.loaders import load_csv, load_ml100k, load_movielens, load_sequences
from recstack.data.schema import DataError, Dataset
from recstack.data.synthetic import SyntheticConfig, generate

SPEC_HELP = "synthetic[:key=value,...], ml-100k[:DIR], movielens:DIR, csv:INTERACTIONS[,ITEMS] or seq:PATH"


def _parse_value(key: str, text: str, kind: type) -> object:
    if kind is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise DataError(f"synthetic spec: {key}={text!r} is not a boolean (use true/false)")
    try:
        return kind(text)
    except ValueError as e:
        raise DataError(f"synthetic spec: {key}={text!r} is not a valid {kind.__name__}") from e


def synthetic_config(args: str) -> SyntheticConfig:
    """Parse 'n_users=50,seed=3' into a SyntheticConfig."""
    types = SyntheticConfig.field_types()
    overrides: dict[str, object] = {}
    for part in filter(None, (p.strip() for p in args.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep:
            raise DataError(f"synthetic spec: {part!r} is not key=value")
        if key not in types:
            raise DataError(f"synthetic spec: unknown key {key!r}; known keys: {', '.join(types)}")
        overrides[key] = _parse_value(key, value, types[key])
    return replace(SyntheticConfig(), **overrides)


def load_dataset(spec: str) -> Dataset:
    """Load the dataset named by ``spec`` (see the module docstring)."""
    kind, _, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "synthetic":
        return generate(synthetic_config(arg))
    if kind in ("ml-100k", "ml100k"):
        if not arg.strip():
            from recstack.data.fetch import ml100k_dir

            return load_ml100k(ml100k_dir())
        return load_ml100k(arg)
    if not arg:
        raise DataError(f"dataset spec {spec!r} needs a path after ':'; expected {SPEC_HELP}")
    if kind == "movielens":
        return load_movielens(arg)
    if kind in ("seq", "sequences"):
        return load_sequences(arg)
    if kind in ("csv", "parquet"):
        inter, _, items = arg.partition(",")
        return load_csv(inter, items or None)
    raise DataError(f"unknown dataset spec {spec!r}; expected {SPEC_HELP}")
