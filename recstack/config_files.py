"""Files named by settings (certificates, keys files): read once at start-up, and every failure an
error of the caller's type that names the variable, e.g. ``RECSTACK_TLS_CA=/x: cannot read the
file (No such file or directory)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_setting_file(path: str, variable: str, error: type[Exception], unset_hint: str = "") -> bytes:
    """The bytes of ``path``; ``error`` naming ``variable`` when it is unset or unreadable."""
    if not path:
        raise error(f"{variable} is not set{unset_hint}")
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{variable}={path}: cannot read the file ({exc.strerror or exc})") from exc


def read_setting_yaml(path: str, variable: str, error: type[Exception]) -> Any:
    """The YAML (or JSON) document of ``path`` (None for an empty file); ``error`` naming
    ``variable`` when it is unset, unreadable or not YAML."""
    import yaml

    text = read_setting_file(path, variable, error).decode("utf-8", "replace")
    try:
        return yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as exc:
        raise error(f"{variable}={path}: not YAML/JSON ({exc})") from exc
