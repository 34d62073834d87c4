"""Readers for MovieLens releases and the generic CSV / Parquet schema.

Every reader returns a :class:`Dataset` in the generic schema (see schema.py) and keeps the
source file's row order. Choices for imperfect input, applied by :func:`finalize`:

- duplicate interaction rows are kept: implicit feedback counts every row;
- an interaction whose item is missing from the items file is kept, and the item is added to the
  catalogue with no genres and an empty title (a warning is logged with the count);
- items without genres get an empty list; duplicate item rows keep the first (warning logged);
- item creation time (``created_at``, unix s, nullable ``Int64``; see schema.py): an optional
  ``created_at`` column of the items file (unix seconds or an ISO date / date-time, empty =
  unknown; anything else is a DataError naming file, row and column); MovieLens 100K takes u.item's
  release date ("01-Jan-1995", empty = unknown); the other MovieLens releases have no date field,
  so the year in the title, "Toy Story (1995)", is read as 1 January of that year, 00:00 UTC
  (a title without a year = unknown). Items added for interactions have no created_at.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from recstack.data.schema import CREATED_AT_DTYPE, DataError, Dataset

logger = logging.getLogger(__name__)

INTERACTION_REQUIRED = ("user_id", "item_id", "timestamp")
IMPLICIT_EVENT = "interaction"
# Latest accepted created_at (9999-12-31T23:59:59Z); larger values are usually milliseconds.
MAX_CREATED_AT = 253_402_300_799
TITLE_YEAR = re.compile(r"\((\d{4})(?:[-\u2013]\d{0,4})?\)\s*$")  # "Heat (1995)", "Show (2007-)"


def _require_file(path: Path, hint: str) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: file not found ({hint})")
    return path


def _read_table(path: Path, **kwargs) -> pd.DataFrame:
    """Read a CSV (or .parquet) file with every column as string."""
    _require_file(path, "check the path in the dataset spec")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        raise DataError(f"{path}: cannot be parsed as a table: {e}") from e


def _first_bad_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _id_column(df: pd.DataFrame, col: str, source: str) -> pd.Series:
    s = df[col]
    missing = s.isna().to_numpy()
    if missing.any():
        row = _first_bad_row(missing)
        raise DataError(f"{source}: column '{col}' is empty at data row {row} (0-based, header excluded)")
    if s.dtype != object:
        s = s.astype(str)
    return s.astype(str).str.strip().astype(object)


def _timestamp_column(s: pd.Series, source: str) -> np.ndarray:
    """Unix seconds as int64. Accepts integers, floats (floored) and ISO date-time strings."""
    empty = s.isna().to_numpy()
    if empty.any():
        raise DataError(f"{source}: column 'timestamp' is empty at data row {_first_bad_row(empty)}")
    if pd.api.types.is_datetime64_any_dtype(s):
        parsed = s
    else:
        num = pd.to_numeric(s, errors="coerce")
        if not num.isna().any():
            return np.floor(num.to_numpy(dtype=np.float64)).astype(np.int64)
        if num.notna().any():
            row = _first_bad_row(num.isna().to_numpy())
            raise DataError(
                f"{source}: column 'timestamp' has a non-numeric value {s.iloc[row]!r} at data row {row}; "
                "timestamps must be unix seconds or ISO date-times"
            )
        parsed = pd.to_datetime(s, errors="coerce", utc=True, format="mixed")
        if parsed.isna().any():
            row = _first_bad_row(parsed.isna().to_numpy())
            raise DataError(
                f"{source}: column 'timestamp' value {s.iloc[row]!r} at data row {row} is neither unix "
                "seconds nor an ISO date-time"
            )
    if getattr(parsed.dt, "tz", None) is None:
        parsed = parsed.dt.tz_localize("UTC")
    seconds = (parsed.dt.tz_convert("UTC") - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.to_numpy(dtype=np.int64)


def _missing_created_at(n: int) -> pd.Series:
    return pd.Series(pd.array([pd.NA] * n, dtype=CREATED_AT_DTYPE))


def created_at_column(s: pd.Series, source: str, column: str = "created_at") -> pd.Series:
    """Item creation times as a nullable ``Int64`` Series (unix s, ``pd.NA`` when empty).

    Each value may be unix seconds (integer or float, floored) or an ISO date / date-time (naive =
    UTC). Anything else raises DataError naming ``source``, the data row and ``column``.
    """
    s = s.reset_index(drop=True)
    n = len(s)
    if pd.api.types.is_datetime64_any_dtype(s):
        parsed = s.dt.tz_localize("UTC") if getattr(s.dt, "tz", None) is None else s.dt.tz_convert("UTC")
        seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
        return seconds.astype(CREATED_AT_DTYPE)
    missing = s.isna().to_numpy()
    if pd.api.types.is_string_dtype(s.dtype):  # text (object or str): blank = missing
        text = s.astype(object).where(~missing, "").astype(str).str.strip()
        missing = missing | (text == "").to_numpy()
        raw: pd.Series = text.where(~missing)
    else:
        text, raw = s.astype(str), s
    values = np.zeros(n, dtype=np.int64)
    num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    numeric = ~missing & np.isfinite(num)
    values[numeric] = np.floor(num[numeric]).clip(-MAX_CREATED_AT, MAX_CREATED_AT).astype(np.int64)
    rest = ~missing & ~numeric
    if rest.any():
        dates = pd.to_datetime(text[rest], errors="coerce", utc=True, format="mixed")
        bad = dates.isna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(rest)[np.flatnonzero(bad)[0]])
            raise DataError(
                f"{source}: column '{column}' value {s.iloc[row]!r} at data row {row} (0-based, header "
                "excluded) is neither unix seconds nor an ISO date; leave it empty when unknown"
            )
        values[rest] = ((dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).to_numpy(np.int64)
    too_big = numeric & (np.abs(num) > MAX_CREATED_AT)
    if too_big.any():
        row = _first_bad_row(too_big)
        raise DataError(
            f"{source}: column '{column}' value {s.iloc[row]!r} at data row {row} (0-based, header "
            "excluded) is beyond the year 9999; created_at must be unix seconds (not milliseconds)"
        )
    out = pd.array(values, dtype=CREATED_AT_DTYPE)
    out[missing] = pd.NA
    return pd.Series(out)


def title_year_created_at(titles: pd.Series) -> pd.Series:
    """1 January (00:00 UTC) of the year at the end of each title, "Heat (1995)"; pd.NA without one."""
    years = titles.fillna("").astype(str).str.extract(TITLE_YEAR, expand=False)
    stamps = pd.to_datetime(years, format="%Y", errors="coerce", utc=True)
    seconds = (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.astype(CREATED_AT_DTYPE).reset_index(drop=True)


def _rating_column(s: pd.Series, source: str) -> np.ndarray:
    num = pd.to_numeric(s, errors="coerce")
    bad = num.isna().to_numpy() & s.notna().to_numpy()
    if bad.any():
        row = _first_bad_row(bad)
        raise DataError(
            f"{source}: column 'rating' has a non-numeric value {s.iloc[row]!r} at data row {row}"
        )
    return num.to_numpy(dtype=np.float64)


def interactions_frame(df: pd.DataFrame, source: str, default_event: str = IMPLICIT_EVENT) -> pd.DataFrame:
    """Validate and convert a raw table to the generic interactions schema (row order kept)."""
    df = df.rename(columns=lambda c: str(c).strip())
    missing = [c for c in INTERACTION_REQUIRED if c not in df.columns]
    if missing:
        raise DataError(
            f"{source}: missing required column(s) {missing}; found {list(df.columns)}. "
            f"Interactions need columns {list(INTERACTION_REQUIRED)} (event_type and rating optional)"
        )
    if len(df) == 0:
        raise DataError(f"{source}: the interactions table is empty")
    rating = _rating_column(df["rating"], source) if "rating" in df.columns else np.full(len(df), np.nan)
    if "event_type" in df.columns:
        event = df["event_type"].astype(object).where(df["event_type"].notna(), default_event)
        event = event.astype(str).str.strip().to_numpy(dtype=object)
    else:
        event = np.full(len(df), "rating" if "rating" in df.columns else default_event, dtype=object)
    return pd.DataFrame(
        {
            "user_id": _id_column(df, "user_id", source).to_numpy(dtype=object),
            "item_id": _id_column(df, "item_id", source).to_numpy(dtype=object),
            "timestamp": _timestamp_column(df["timestamp"], source),
            "event_type": event,
            "rating": rating,
        }
    )


def split_genres(value: object, sep: str = "|") -> list[str]:
    """'A|B' -> ['A', 'B']; empty / NaN / '(no genres listed)' -> []."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, list | tuple | np.ndarray):
        return [str(g) for g in value]
    text = str(value).strip()
    if not text or text == "(no genres listed)":
        return []
    return [g.strip() for g in text.split(sep) if g.strip()]


def items_frame(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Validate and convert a raw items table to the generic items schema."""
    df = df.rename(columns=lambda c: str(c).strip())
    if "item_id" not in df.columns:
        raise DataError(f"{source}: missing required column 'item_id'; found {list(df.columns)}")
    ids = _id_column(df, "item_id", source)
    genres = df["genres"].map(split_genres) if "genres" in df.columns else pd.Series([[]] * len(df))
    title = df["title"].fillna("").astype(str) if "title" in df.columns else pd.Series([""] * len(df))
    if "created_at" in df.columns:
        created = created_at_column(df["created_at"], source)
    else:
        created = _missing_created_at(len(df))
    out = pd.DataFrame(
        {
            "item_id": ids.to_numpy(dtype=object),
            "genres": list(genres),
            "title": title.to_numpy(dtype=object),
            "created_at": created.array,
        }
    )
    dup = out["item_id"].duplicated().to_numpy()
    if dup.any():
        logger.warning(
            "%s: %d duplicate item_id rows (first at data row %d); keeping the first of each",
            source,
            int(dup.sum()),
            _first_bad_row(dup),
        )
        out = out[~dup].reset_index(drop=True)
    return out


def finalize(name: str, interactions: pd.DataFrame, items: pd.DataFrame | None) -> Dataset:
    """Add catalogue rows (no genres, empty title, no created_at) for interaction items missing
    from ``items``; add an all-missing ``created_at`` column when ``items`` has none."""
    if items is None:
        items = pd.DataFrame({"item_id": pd.Series([], dtype=object), "genres": [], "title": []})
    if "created_at" not in items.columns:
        items = items.assign(created_at=_missing_created_at(len(items)).array)
    seen = pd.unique(interactions["item_id"].to_numpy())
    known = set(items["item_id"])
    extra = [i for i in seen if i not in known]
    if extra:
        if len(known):
            logger.warning(
                "%s: %d interaction item(s) missing from the items file (e.g. %r); kept with no genres",
                name,
                len(extra),
                extra[0],
            )
        items = pd.concat(
            [
                items,
                pd.DataFrame(
                    {
                        "item_id": extra,
                        "genres": [[] for _ in extra],
                        "title": [""] * len(extra),
                        "created_at": _missing_created_at(len(extra)).array,
                    }
                ),
            ],
            ignore_index=True,
        )
    return Dataset(name=name, interactions=interactions.reset_index(drop=True), items=items)


def load_csv(interactions_path: str | Path, items_path: str | Path | None = None) -> Dataset:
    """Generic schema: interactions user_id,item_id,timestamp[,event_type][,rating];
    items item_id[,genres "A|B"][,title][,created_at (unix s or ISO date)]. CSV or Parquet."""
    ipath = Path(interactions_path)
    inter = interactions_frame(_read_table(ipath), str(ipath))
    items = None
    if items_path is not None:
        tpath = Path(items_path)
        items = items_frame(_read_table(tpath), str(tpath))
    return finalize(f"csv:{ipath.name}", inter, items)


def load_ml100k(directory: str | Path) -> Dataset:
    """MovieLens 100K: u.data (user item rating timestamp, tab), u.item (pipe, latin-1: id, title,
    release date "01-Jan-1995" -> created_at, video release, URL, 19 genre flags), u.genre (genre
    names)."""
    d = Path(directory)
    data = _require_file(d / "u.data", "expected the MovieLens 100K directory (u.data, u.item, u.genre)")
    raw = pd.read_csv(
        data, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"], dtype=str
    )
    inter = interactions_frame(raw.assign(event_type="rating"), str(data))
    items = None
    if (d / "u.item").is_file():
        genre_file = d / "u.genre"
        if genre_file.is_file():
            g = pd.read_csv(genre_file, sep="|", header=None, names=["name", "idx"], encoding="latin-1")
            g = g.dropna()
            names = [str(n) for n in g.sort_values("idx")["name"]]
        else:
            names = [f"genre{k}" for k in range(19)]
        cols = ["item_id", "title", "release", "video_release", "url", *[f"g{k}" for k in range(len(names))]]
        raw_items = pd.read_csv(
            d / "u.item",
            sep="|",
            header=None,
            names=cols,
            encoding="latin-1",
            dtype=str,
            keep_default_na=False,
        )
        flags = raw_items[[f"g{k}" for k in range(len(names))]].to_numpy() == "1"
        genres = [[names[k] for k in np.flatnonzero(row)] for row in flags]
        items = items_frame(
            pd.DataFrame(
                {
                    "item_id": raw_items["item_id"],
                    "title": raw_items["title"],
                    "genres": genres,
                    "created_at": _release_dates(raw_items["release"], str(d / "u.item")).array,
                }
            ),
            str(d / "u.item"),
        )
    return finalize("ml-100k", inter, items)


def _release_dates(s: pd.Series, source: str) -> pd.Series:
    """u.item release dates "01-Jan-1995" -> unix s (Int64); empty -> pd.NA; else DataError."""
    text = s.fillna("").astype(str).str.strip().reset_index(drop=True)
    stamps = pd.to_datetime(text, format="%d-%b-%Y", errors="coerce", utc=True)
    bad = (stamps.isna() & (text != "")).to_numpy()
    if bad.any():
        row = _first_bad_row(bad)
        raise DataError(
            f"{source}: column 3 (release date) value {text.iloc[row]!r} at line {row + 1} is not a "
            "date like 01-Jan-1995"
        )
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype(CREATED_AT_DTYPE)


def _with_title_years(items: pd.DataFrame) -> pd.DataFrame:
    """Fill missing created_at from the title's year (MovieLens files have no better field)."""
    years = title_year_created_at(items["title"])
    created = items["created_at"].reset_index(drop=True)
    return items.assign(created_at=created.fillna(years).astype(CREATED_AT_DTYPE).array)


def load_movielens(directory: str | Path) -> Dataset:
    """MovieLens latest / small / 20M / 25M (ratings.csv + movies.csv) or 1M / 10M (ratings.dat +
    movies.dat, '::' separated, latin-1). created_at = 1 January of the title's year, "(1995)",
    unless movies.csv has a ``created_at`` column."""
    d = Path(directory)
    if (d / "ratings.csv").is_file():
        raw = _read_table(d / "ratings.csv")
        raw = raw.rename(columns={"userId": "user_id", "movieId": "item_id"})
        inter = interactions_frame(raw.assign(event_type="rating"), str(d / "ratings.csv"))
        items = None
        if (d / "movies.csv").is_file():
            m = _read_table(d / "movies.csv").rename(columns={"movieId": "item_id"})
            items = _with_title_years(items_frame(m, str(d / "movies.csv")))
    elif (d / "ratings.dat").is_file():
        raw = _read_dat(d / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"])
        inter = interactions_frame(raw.assign(event_type="rating"), str(d / "ratings.dat"))
        items = None
        if (d / "movies.dat").is_file():
            items = _with_title_years(
                items_frame(
                    _read_dat(d / "movies.dat", ["item_id", "title", "genres"]), str(d / "movies.dat")
                )
            )
    else:
        raise DataError(
            f"{d}: no ratings.csv or ratings.dat found; expected a MovieLens directory "
            "(ml-latest-small / ml-25m: ratings.csv + movies.csv, ml-1m: ratings.dat + movies.dat); "
            "for MovieLens 100K use the spec ml-100k:DIR"
        )
    return finalize(f"movielens:{d.name}", inter, items)


def _read_dat(path: Path, names: list[str]) -> pd.DataFrame:
    """Read a '::'-separated MovieLens .dat file (latin-1)."""
    with open(path, encoding="latin-1") as f:
        rows = [line.rstrip("\r\n").split("::") for line in f if line.strip()]
    bad = [i for i, r in enumerate(rows) if len(r) != len(names)]
    if bad:
        raise DataError(
            f"{path}: line {bad[0] + 1} has {len(rows[bad[0]])} '::'-separated fields, expected {len(names)} "
            f"({'::'.join(names)})"
        )
    return pd.DataFrame(rows, columns=names, dtype=str)


def load_sequences(path: str | Path) -> Dataset:
    """Sequential-recommendation benchmark files: whitespace-separated ids, either one line per user,
    ``user item item ...`` (the ICLRec / CoSeRec layout), or one ``user item`` pair per line (the
    SASRec layout, a user's pairs in time order). A file whose lines all hold exactly two ids is read
    as pairs (one line per user with one item each means the same), any other as one user per line.
    Order is time: every interaction gets an ordinal timestamp, its position in the file.

    Blank lines are skipped. A line with a single id, or a user repeated on another line of a
    one-line-per-user file, is a DataError naming the line number.
    """
    p = _require_file(Path(path), "expected a sequence file: 'user item item ...' or 'user item' per line")
    users: list[str] = []
    items: list[str] = []
    first_line: dict[str, int] = {}
    repeated: tuple[int, str, int] | None = None  # (line, user, first line) of the first repeat
    longest = 0
    try:
        with open(p, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                ids = line.split()
                if not ids:
                    continue
                if len(ids) < 2:
                    raise DataError(
                        f"{p}: line {number} holds {len(ids)} id ({line.strip()[:60]!r}); expected "
                        "'user item item ...' or 'user item', separated by whitespace"
                    )
                first = first_line.setdefault(ids[0], number)
                if first != number and repeated is None:
                    repeated = (number, ids[0], first)
                longest = max(longest, len(ids))
                users.extend([ids[0]] * (len(ids) - 1))
                items.extend(ids[1:])
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not a UTF-8 text file ({e})") from e
    if not items:
        raise DataError(f"{p}: the file holds no interactions")
    if longest > 2 and repeated is not None:
        number, user, first = repeated
        raise DataError(
            f"{p}: line {number} repeats user {user!r} of line {first}; a file with lines of more than "
            "one item must hold each user's items on one line ('user item item ...')"
        )
    inter = pd.DataFrame(
        {
            "user_id": np.asarray(users, dtype=object),
            "item_id": np.asarray(items, dtype=object),
            "timestamp": np.arange(len(items), dtype=np.int64),
            "event_type": np.full(len(items), IMPLICIT_EVENT, dtype=object),
            "rating": np.full(len(items), np.nan),
        }
    )
    return finalize(f"seq:{p.name}", inter, None)
