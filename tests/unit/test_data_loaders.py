"""Dataset adapters (MovieLens 100K / latest / 1M, generic CSV and Parquet) and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recstack.data import DataError, Dataset, describe, load_dataset
from recstack.data.schema import item_created_at
from tests.datasets import ML100K


def _write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_text(text, encoding=encoding)
    return path


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="MovieLens 100K not present")
def test_real_ml100k():
    ds = load_dataset(f"ml-100k:{ML100K}")
    assert len(ds.interactions) == 100_000
    assert ds.interactions["user_id"].nunique() == 943
    assert len(ds.items) == 1682
    first = ds.interactions.iloc[0]
    assert (first["user_id"], first["item_id"], first["timestamp"], first["rating"]) == (
        "196",
        "242",
        881250949,
        3.0,
    )
    assert set(ds.interactions["event_type"]) == {"rating"}
    toy = ds.items.set_index("item_id").loc["1"]
    assert toy["title"] == "Toy Story (1995)"
    assert toy["genres"] == ["Animation", "Children's", "Comedy"]
    assert ds.items["created_at"].dtype == "Int64"
    assert toy["created_at"] == 788918400  # release date 01-Jan-1995
    assert pd.isna(ds.items.set_index("item_id").loc["267", "created_at"])  # "unknown": no date
    assert ds.items["created_at"].notna().sum() == 1681
    info = describe(ds)
    assert info["users"] == 943 and info["items"] == 1682 and info["interactions"] == 100_000
    assert info["density"] == pytest.approx(100_000 / (943 * 1682))


def test_ml100k_layout(tmp_path):
    _write(tmp_path / "u.data", "1\t10\t4\t100\n2\t11\t5\t90\n1\t12\t3\t100\n")
    _write(tmp_path / "u.genre", "unknown|0\nAction|1\nComédie|2\n\n", encoding="latin-1")
    _write(
        tmp_path / "u.item",
        "10|Film à|01-Jan-1995||http://x|0|1|1\n11|B (1990)|||http://x|0|0|0\n",
        encoding="latin-1",
    )
    ds = load_dataset(f"ml-100k:{tmp_path}")
    assert item_created_at(ds.items) == {"10": 788918400}  # 11: empty release date -> missing
    assert ds.interactions["item_id"].tolist() == ["10", "11", "12"]  # file order kept
    items = ds.items.set_index("item_id")
    assert items.loc["10", "genres"] == ["Action", "Comédie"]
    assert items.loc["10", "title"] == "Film à"
    assert items.loc["11", "genres"] == []
    assert items.loc["12", "genres"] == []  # item missing from u.item: kept, no genres
    assert pd.isna(items.loc["12", "created_at"])


def test_ml100k_bad_release_date(tmp_path):
    _write(tmp_path / "u.data", "1\t10\t4\t100\n")
    _write(tmp_path / "u.item", "10|A|01-Jan-1995||x|0\n11|B|1995/01/01||x|1\n", encoding="latin-1")
    with pytest.raises(DataError, match=r"u.item: column 3 \(release date\) value '1995/01/01' at line 2"):
        load_dataset(f"ml-100k:{tmp_path}")


def test_movielens_csv_layout(tmp_path):
    _write(
        tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n"
    )
    _write(
        tmp_path / "movies.csv",
        'movieId,title,genres\n1,"Toy Story (1995)",Adventure|Animation\n'
        '3,"A, B (1999)",(no genres listed)\n',
    )
    ds = load_dataset(f"movielens:{tmp_path}")
    assert ds.interactions["rating"].tolist() == [4.0, 4.5]
    assert ds.interactions["event_type"].tolist() == ["rating", "rating"]
    items = ds.items.set_index("item_id")
    assert items.loc["1", "genres"] == ["Adventure", "Animation"]
    assert items.loc["3", "genres"] == []
    assert items.loc["3", "title"] == "A, B (1999)"
    # no date field in movies.csv: 1 January of the title's year (00:00 UTC)
    assert item_created_at(ds.items) == {"1": 788918400, "3": 915148800}


def test_movielens_dat_layout(tmp_path):
    _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    _write(
        tmp_path / "movies.dat",
        "1193::Vol au-dessus (1975)::Drama\n661::Pêche (1996)::Animation|Children's\n",
        encoding="latin-1",
    )
    ds = load_dataset(f"movielens:{tmp_path}")
    assert ds.interactions["item_id"].tolist() == ["1193", "661"]
    assert ds.interactions["timestamp"].tolist() == [978300760, 978302109]
    items = ds.items.set_index("item_id")
    assert items.loc["661", "genres"] == ["Animation", "Children's"]
    assert items.loc["661", "title"] == "Pêche (1996)"
    assert item_created_at(ds.items) == {"1193": 157766400, "661": 820454400}


def test_movielens_title_years_and_created_at_column(tmp_path):
    _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n")
    _write(
        tmp_path / "movies.csv",
        "movieId,title,genres,created_at\n"
        '1,"Toy Story (1995)",Animation,\n'  # no value: the title's year
        '2,"Heat (1995)",Crime,2000-06-01\n'  # a real field beats the title
        '3,"Series (2007-) ",Drama,\n'
        '4,"No year",Drama,\n'
        '5,"Year (1999) in the middle",Drama,\n',
    )
    created = item_created_at(load_dataset(f"movielens:{tmp_path}").items)
    assert created == {"1": 788918400, "2": 959817600, "3": 1167609600}


def test_movielens_dat_bad_line(tmp_path):
    _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3\n")
    with pytest.raises(DataError, match=r"ratings.dat: line 2 has 3"):
        load_dataset(f"movielens:{tmp_path}")


def test_movielens_dir_without_ratings(tmp_path):
    with pytest.raises(DataError, match="no ratings.csv or ratings.dat"):
        load_dataset(f"movielens:{tmp_path}")


def test_generic_csv_with_items(tmp_path):
    inter = _write(
        tmp_path / "events.csv",
        "user_id,item_id,timestamp,event_type,rating\n"
        "a,x,5,click,\nb,y,3,purchase,\na,x,5,click,\na,z,7,rating,2.5\n",
    )
    items = _write(tmp_path / "items.csv", "item_id,genres,title\nx,Shoes|Sport,Runner\ny,,Plain\n")
    ds = load_dataset(f"csv:{inter},{items}")
    df = ds.interactions
    assert len(df) == 4  # the duplicate row is kept
    assert df["event_type"].tolist() == ["click", "purchase", "click", "rating"]
    assert np.isnan(df["rating"].iloc[0]) and df["rating"].iloc[3] == 2.5
    assert df["timestamp"].dtype == np.int64
    cat = ds.items.set_index("item_id")
    assert cat.loc["x", "genres"] == ["Shoes", "Sport"]
    assert cat.loc["y", "genres"] == []
    assert cat.loc["z", "genres"] == [] and cat.loc["z", "title"] == ""  # not in items.csv: kept
    info = describe(ds)
    assert (info["users"], info["items"], info["catalog_items"], info["interactions"]) == (2, 3, 3, 4)
    assert info["density"] == pytest.approx(4 / 6)
    assert info["event_types"] == {"click": 2, "purchase": 1, "rating": 1}


def test_generic_csv_minimal_and_iso_timestamps(tmp_path):
    inter = _write(
        tmp_path / "i.csv",
        "item_id, user_id ,timestamp\n007,u1,2024-01-01T00:00:10Z\n8,u1,2024-01-01 00:00:20\n",
    )
    ds = load_dataset(f"csv:{inter}")
    assert ds.interactions["item_id"].tolist() == ["007", "8"]  # ids stay strings
    assert ds.interactions["timestamp"].tolist() == [1704067210, 1704067220]
    assert ds.interactions["event_type"].tolist() == ["interaction", "interaction"]
    assert sorted(ds.items["item_id"]) == ["007", "8"]


def test_parquet(tmp_path):
    path = tmp_path / "i.parquet"
    pd.DataFrame(
        {"user_id": ["1", "2"], "item_id": ["a", "b"], "timestamp": [3, 4], "rating": [1.0, 2.0]}
    ).to_parquet(path)
    ipath = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": ["a"], "genres": ["G1|G2"]}).to_parquet(ipath)
    ds = load_dataset(f"csv:{path},{ipath}")
    assert ds.interactions["event_type"].tolist() == ["rating", "rating"]
    assert ds.items.set_index("item_id").loc["a", "genres"] == ["G1", "G2"]
    assert item_created_at(ds.items) == {}
    pd.DataFrame(
        {
            "item_id": ["a", "b"],
            "created_at": pd.to_datetime(["2024-01-01T00:00:10Z", None], utc=True),
        }
    ).to_parquet(ipath)
    assert item_created_at(load_dataset(f"csv:{path},{ipath}").items) == {"a": 1704067210}
    pd.DataFrame({"item_id": ["a", "b"], "created_at": [5.9, np.nan]}).to_parquet(ipath)
    assert item_created_at(load_dataset(f"csv:{path},{ipath}").items) == {"a": 5}


def test_generic_csv_item_created_at(tmp_path):
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp\nu,a,10\nu,z,11\n")
    items = _write(
        tmp_path / "items.csv",
        "item_id,created_at\na,1700000000\nb, 2024-01-01 \nc,\nd,2024-01-01T00:00:10+01:00\ne,12.7\n",
    )
    ds = load_dataset(f"csv:{inter},{items}")
    assert ds.items["created_at"].dtype == "Int64"
    assert item_created_at(ds.items) == {"a": 1700000000, "b": 1704067200, "d": 1704063610, "e": 12}
    cat = ds.items.set_index("item_id")
    assert pd.isna(cat.loc["c", "created_at"]) and pd.isna(cat.loc["z", "created_at"])  # empty; added
    plain = load_dataset(f"csv:{inter}")  # no items file: the column exists, all missing
    assert plain.items["created_at"].isna().all() and item_created_at(plain.items) == {}


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("yesterday", "column 'created_at' value 'yesterday' at data row 1"),
        (
            "1700000000000",
            "column 'created_at' value '1700000000000' at data row 1 (0-based, header excluded) is beyond",
        ),
        ("inf", "column 'created_at' value 'inf' at data row 1"),
    ],
)
def test_generic_csv_bad_created_at(tmp_path, value, fragment):
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp\nu,a,10\n")
    items = _write(tmp_path / "items.csv", f"item_id,title,created_at\na,A,5\nb,B,{value}\n")
    with pytest.raises(DataError) as e:
        load_dataset(f"csv:{inter},{items}")
    assert "items.csv" in str(e.value) and fragment in str(e.value)


def test_item_created_at_without_the_column():
    items = pd.DataFrame({"item_id": ["a", "b"], "genres": [[], []], "title": ["", ""]})
    ds = Dataset("hand-made", pd.DataFrame(), items)
    assert item_created_at(ds.items) == {}
    with_floats = items.assign(created_at=[3.0, np.nan])  # a float column with NaN is read too
    assert item_created_at(with_floats) == {"a": 3}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("user_id,item_id\n1,2\n", "missing required column(s) ['timestamp']"),
        ("user,item_id,timestamp\n1,2,3\n", "missing required column(s) ['user_id']"),
        ("user_id,item_id,timestamp\n", "interactions table is empty"),
        (
            "user_id,item_id,timestamp\n1,2,3\n1,2,abc\n",
            "'timestamp' has a non-numeric value 'abc' at data row 1",
        ),
        ("user_id,item_id,timestamp\n1,2,soon\n", "'timestamp' value 'soon' at data row 0"),
        (
            "user_id,item_id,timestamp,rating\n1,2,3,5\n1,2,3,good\n",
            "'rating' has a non-numeric value 'good' at data row 1",
        ),
        ("user_id,item_id,timestamp\n1,2,3\n,2,3\n", "column 'user_id' is empty at data row 1"),
        ("user_id,item_id,timestamp\n1,2,3\n1,2,\n", "column 'timestamp' is empty at data row 1"),
    ],
)
def test_bad_interactions(tmp_path, content, fragment):
    path = _write(tmp_path / "bad.csv", content)
    with pytest.raises(DataError) as e:
        load_dataset(f"csv:{path}")
    assert fragment in str(e.value)
    assert "bad.csv" in str(e.value)


def test_items_without_item_id_column(tmp_path):
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp\n1,2,3\n")
    items = _write(tmp_path / "items.csv", "id,genres\n2,A\n")
    with pytest.raises(DataError, match=r"items.csv: missing required column 'item_id'"):
        load_dataset(f"csv:{inter},{items}")


def test_duplicate_items_keep_first(tmp_path):
    inter = _write(tmp_path / "i.csv", "user_id,item_id,timestamp\n1,2,3\n")
    items = _write(tmp_path / "items.csv", "item_id,genres\n2,A\n2,B\n")
    ds = load_dataset(f"csv:{inter},{items}")
    assert ds.items["genres"].tolist() == [["A"]]


@pytest.mark.parametrize("spec", ["csv:/nonexistent/x.csv", "ml-100k:/nonexistent", "csv:"])
def test_missing_files(spec):
    with pytest.raises(DataError, match="not found|needs a path"):
        load_dataset(spec)


def test_unknown_spec():
    with pytest.raises(DataError, match="unknown dataset spec 'foo:bar'"):
        load_dataset("foo:bar")
