"""Datasets: the generic schema, MovieLens and CSV adapters, the synthetic generator."""

from recstack.data.schema import DataError, Dataset, IdMap
from recstack.data.spec import load_dataset
from recstack.data.summary import describe
from recstack.data.synthetic import SyntheticConfig, generate

__all__ = ["DataError", "Dataset", "IdMap", "SyntheticConfig", "describe", "generate", "load_dataset"]
