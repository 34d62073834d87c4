"""Sequence files (seq:PATH) and the ml-100k fetch into the cache (served locally, never the network)."""

from __future__ import annotations

import http.server
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from recstack.data import DataError, load_dataset
from recstack.data.fetch import ML100K_FILES
from recstack.evaluation import leave_one_out
from tests.datasets import ML100K

BEAUTY = ML100K.parent / "amazon-beauty" / "Beauty.txt"


def test_one_line_per_user_layout(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("1 10 11 12\n2 11 13\n\n3 12 10 11 13\n")
    ds = load_dataset(f"seq:{path}")
    inter = ds.interactions
    assert inter["user_id"].tolist() == ["1"] * 3 + ["2"] * 2 + ["3"] * 4
    assert inter["item_id"].tolist() == ["10", "11", "12", "11", "13", "12", "10", "11", "13"]
    assert inter["timestamp"].tolist() == list(range(9))  # ordinal: file order is time
    split = leave_one_out(ds)
    ids = split.item_map.ids
    assert ids[split.test_target[split.user_map.get("3")] - 1] == "13"
    assert ids[split.valid_target[split.user_map.get("3")] - 1] == "11"
    assert sorted(ds.items["item_id"]) == ["10", "11", "12", "13"]


def test_pair_per_line_layout(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a x\nb y\na y\na z\nb x\n")
    ds = load_dataset(f"seq:{path}")
    by_user = ds.interactions.groupby("user_id")["item_id"].apply(list).to_dict()
    assert by_user == {"a": ["x", "y", "z"], "b": ["y", "x"]}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 10 11\n2\n", "line 2 holds 1 id"),
        ("1 10 11\n2 12 13\n1 14 15\n", "line 3 repeats user '1' of line 1"),
        ("1 10\n2 11\n1 12 13\n", "line 3 repeats user '1' of line 1"),
        ("1,10,11\n", "line 1 holds 1 id"),
        ("\n\n", "holds no interactions"),
    ],
)
def test_bad_lines_are_refused_with_the_line_number(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        load_dataset(f"seq:{path}")


def test_missing_sequence_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_dataset(f"seq:{tmp_path / 'none.txt'}")


@pytest.mark.skipif(not BEAUTY.is_file(), reason="Amazon Beauty not present")
def test_real_beauty_file():
    ds = load_dataset(f"seq:{BEAUTY}")
    assert len(ds.interactions) == 198_502
    assert ds.interactions["user_id"].nunique() == 22_363
    assert ds.interactions["item_id"].nunique() == 12_101


# --- ml-100k fetch -------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Path, str]]:
    """(directory, base URL) of a local HTTP server over a fresh directory."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _zip(path: Path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(f"ml-100k/{name}", data)


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="MovieLens 100K not present")
def test_ml100k_is_fetched_verified_and_cached(served, tmp_path, monkeypatch):
    root, base = served
    _zip(root / "ml-100k.zip", {n: (ML100K / n).read_bytes() for n in ML100K_FILES})
    monkeypatch.setenv("RECSTACK_DATA_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RECSTACK_ML100K_URL", f"{base}/ml-100k.zip")
    ds = load_dataset("ml-100k")
    assert len(ds.interactions) == 100_000
    assert (tmp_path / "cache" / "ml-100k" / "u.data").is_file()
    (root / "ml-100k.zip").unlink()  # second load: from the cache, no download
    assert len(load_dataset("ml-100k:").interactions) == 100_000


def test_ml100k_archive_with_wrong_checksum_is_refused(served, tmp_path, monkeypatch):
    root, base = served
    _zip(root / "ml-100k.zip", {n: b"1\t2\t3\t4\n" for n in ML100K_FILES})
    monkeypatch.setenv("RECSTACK_DATA_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RECSTACK_ML100K_URL", f"{base}/ml-100k.zip")
    with pytest.raises(DataError, match="u.data has sha256"):
        load_dataset("ml-100k")
    assert not (tmp_path / "cache" / "ml-100k").exists()


def test_ml100k_unreachable_names_both_ways(served, tmp_path, monkeypatch):
    _, base = served
    monkeypatch.setenv("RECSTACK_DATA_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("RECSTACK_ML100K_URL", f"{base}/missing.zip")  # 404
    with pytest.raises(DataError) as info:
        load_dataset("ml-100k")
    assert "ml-100k:DIR" in str(info.value) and "fetches it" in str(info.value)
