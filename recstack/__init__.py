"""recstack: a real-time recommender stack."""

__version__ = "0.1.0"
