"""Lua scripts of the Redis writers and readers, kept as ``.lua`` files next to their module
(package data, shipped in the wheel) and read once, when that module is imported."""

from __future__ import annotations

from importlib import resources


def load(package: str, *names: str) -> str:
    """The text of the ``.lua`` files ``names`` of ``package``, concatenated in order."""
    root = resources.files(package)
    return "".join(root.joinpath(name).read_text(encoding="utf-8") for name in names)
