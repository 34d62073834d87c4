"""Fetch public datasets into a local cache, with checksums.

``ml-100k`` without a directory downloads GroupLens' official archive once into
``$RECSTACK_DATA_HOME`` (default ``~/.cache/recstack/datasets``) and checks the sha256 of every
file the loader reads (u.data, u.item, u.genre) before it is used. ``RECSTACK_ML100K_URL``
replaces the download address (a mirror; the tests serve a local archive). Without network the
error names both ways to provide the data.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from recstack.data.schema import DataError

logger = logging.getLogger(__name__)

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# sha256 of the files of GroupLens' ml-100k.zip that load_ml100k reads.
ML100K_FILES = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
}
DOWNLOAD_TIMEOUT_S = 60.0


def data_home() -> Path:
    """The dataset cache directory: ``$RECSTACK_DATA_HOME`` or ``~/.cache/recstack/datasets``."""
    home = os.environ.get("RECSTACK_DATA_HOME")
    return Path(home) if home else Path.home() / ".cache" / "recstack" / "datasets"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(directory: Path, checksums: dict[str, str]) -> bool:
    return all((directory / n).is_file() and sha256_file(directory / n) == s for n, s in checksums.items())


def ml100k_dir() -> Path:
    """A verified MovieLens 100K directory in the cache, downloading the archive when needed."""
    target = data_home() / "ml-100k"
    if _verified(target, ML100K_FILES):
        return target
    url = os.environ.get("RECSTACK_ML100K_URL") or ML100K_URL
    how = (
        "pass the directory of an unpacked copy as --data ml-100k:DIR (u.data, u.item, u.genre from "
        f"{ML100K_URL}), or allow this machine to reach {url} so that the spec 'ml-100k' fetches it "
        f"into {target.parent} (RECSTACK_DATA_HOME)"
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".ml-100k-") as tmp:
        archive = Path(tmp) / "ml-100k.zip"
        logger.info("downloading MovieLens 100K from %s", url)
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as reply, open(archive, "wb") as f:
                shutil.copyfileobj(reply, f)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise DataError(
                f"MovieLens 100K is not available: downloading {url} failed ({exc}); {how}"
            ) from exc
        unpacked = Path(tmp) / "unpacked"
        try:
            with zipfile.ZipFile(archive) as z:
                for name in ML100K_FILES:
                    member = next((m for m in z.namelist() if m.rsplit("/", 1)[-1] == name), None)
                    if member is None:
                        raise DataError(f"{url}: the archive holds no {name}; {how}")
                    unpacked.mkdir(exist_ok=True)
                    (unpacked / name).write_bytes(z.read(member))
        except zipfile.BadZipFile as exc:
            raise DataError(f"{url}: not a zip archive ({exc}); {how}") from exc
        for name, expected in ML100K_FILES.items():
            got = sha256_file(unpacked / name)
            if got != expected:
                raise DataError(
                    f"{url}: {name} has sha256 {got}, expected {expected} (a damaged or different "
                    f"archive); {how}"
                )
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    logger.info("MovieLens 100K verified and cached in %s", target)
    return target
