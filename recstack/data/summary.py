"""Dataset summary numbers."""

from __future__ import annotations

from recstack.data.schema import Dataset


def describe(dataset: Dataset) -> dict:
    """Users, items (distinct in interactions), catalogue size, interactions, density, event types."""
    inter = dataset.interactions
    n_users = int(inter["user_id"].nunique())
    n_items = int(inter["item_id"].nunique())
    n = len(inter)
    return {
        "name": dataset.name,
        "users": n_users,
        "items": n_items,
        "catalog_items": len(dataset.items),
        "interactions": n,
        "density": n / (n_users * n_items) if n_users and n_items else 0.0,
        "event_types": {str(k): int(v) for k, v in inter["event_type"].value_counts().items()},
        "genres": len({g for gs in dataset.items["genres"] for g in gs}),
    }
