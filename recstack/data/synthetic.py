"""A synthetic interaction log with real structure, the default data for demo and tests.

The generative story:

- every item has 1..``max_genres_per_item`` genres and a popularity drawn from a power law
  (``popularity_exponent``; the most popular item is ~n_items**a times the least popular);
- every user has a Dirichlet genre taste (``taste_concentration``: small = focused users);
- a user's log is a sequence of sessions. Each session has a focus genre drawn from the current
  taste, and the taste drifts between sessions towards a fresh Dirichlet draw (``drift``), so the
  order of a user's items carries signal (recent items predict the next ones better than old ones);
- every viewed item goes through a funnel view -> click -> like / purchase (and optionally an
  explicit rating) whose probabilities grow with the match between the user's taste and the item's
  genres.

Timestamps are strictly increasing per user; the returned log is ordered by timestamp over all
users (ties keep user order), like an event log.

Item creation times (``items["created_at"]``, unix s, ``Int64``, never missing) are drawn after the
log, from their own random stream (so the interactions are those of a generator without them):
an item's created_at is uniform over ``[start_time, first interaction - 1]``; an item nobody
interacted with gets one uniform over ``[start_time, last timestamp of the log]``. Every item
therefore exists before its first event, and items first seen late in the log are recent ("new").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from recstack.data.schema import CREATED_AT_DTYPE, DataError, Dataset

logger = logging.getLogger(__name__)

GENRE_NAMES = (
    "Action",
    "Comedy",
    "Drama",
    "Thriller",
    "Romance",
    "Sci-Fi",
    "Horror",
    "Documentary",
    "Animation",
    "Adventure",
    "Fantasy",
    "Crime",
    "Mystery",
    "Musical",
    "War",
    "Western",
    "Family",
    "History",
    "Sport",
    "Biography",
)

EVENT_TYPES = ("view", "click", "like", "purchase", "rating")


@dataclass
class SyntheticConfig:
    """Parameters of :func:`generate`. Defaults give ~12k events in well under a second."""

    n_users: int = 300
    n_items: int = 400
    n_genres: int = 12
    events_per_user: float = 40.0  # mean number of event rows per user (all event types)
    min_events_per_user: int = 5
    max_genres_per_item: int = 3
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity
    taste_concentration: float = 0.3  # Dirichlet concentration of user tastes
    drift: float = 0.25  # share of the taste replaced between two sessions
    genre_affinity: float = 6.0  # strength of taste match in item choice
    session_length: float = 6.0  # mean number of views per session
    revisit: float = 0.05  # weight of an already viewed item relative to a new one (0 = never again)
    with_ratings: bool = True  # emit explicit "rating" events after some clicks
    start_time: int = 1_600_000_000
    seed: int = 0

    def validate(self) -> None:
        """Raise DataError naming the first invalid field."""
        positive = ("n_users", "n_items", "n_genres", "events_per_user", "session_length")
        for name in positive:
            if getattr(self, name) <= 0:
                raise DataError(f"synthetic: {name} must be > 0, got {getattr(self, name)!r}")
        if self.min_events_per_user < 1:
            raise DataError(f"synthetic: min_events_per_user must be >= 1, got {self.min_events_per_user}")
        if not 1 <= self.max_genres_per_item <= self.n_genres:
            raise DataError(
                f"synthetic: max_genres_per_item must be in 1..n_genres={self.n_genres}, "
                f"got {self.max_genres_per_item}"
            )
        if not 0.0 <= self.drift <= 1.0:
            raise DataError(f"synthetic: drift must be in [0, 1], got {self.drift}")
        if not 0.0 <= self.revisit <= 1.0:
            raise DataError(f"synthetic: revisit must be in [0, 1], got {self.revisit}")
        if self.taste_concentration <= 0 or self.popularity_exponent < 0:
            raise DataError("synthetic: taste_concentration must be > 0 and popularity_exponent >= 0")

    @classmethod
    def field_types(cls) -> dict[str, type]:
        """Field name -> Python type, used to parse ``synthetic:key=value`` specs."""
        return {f.name: type(getattr(cls(), f.name)) for f in fields(cls)}


def genre_names(n: int) -> list[str]:
    """Readable genre names; beyond the built-in list, "Genre21", "Genre22", ..."""
    return [GENRE_NAMES[g] if g < len(GENRE_NAMES) else f"Genre{g + 1}" for g in range(n)]


def _make_items(cfg: SyntheticConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list]:
    """Returns popularity [n_items], genre matrix [n_items, G] (rows sum to 1), genre lists."""
    g = cfg.n_genres
    genre_weight = rng.dirichlet(np.full(g, 2.0))  # some genres are more common than others
    n_genres_per_item = rng.integers(1, cfg.max_genres_per_item + 1, size=cfg.n_items)
    genre_matrix = np.zeros((cfg.n_items, g))
    genre_lists: list[list[int]] = []
    for i in range(cfg.n_items):
        chosen = np.sort(rng.choice(g, size=n_genres_per_item[i], replace=False, p=genre_weight))
        genre_matrix[i, chosen] = 1.0 / len(chosen)
        genre_lists.append(chosen.tolist())
    ranks = rng.permutation(cfg.n_items) + 1
    popularity = ranks.astype(np.float64) ** -cfg.popularity_exponent
    return popularity / popularity.sum(), genre_matrix, genre_lists


def _user_log(
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    popularity: np.ndarray,
    genre_matrix: np.ndarray,
    n_rows: int,
) -> tuple[list[int], list[int], list[str], list[float]]:
    """One user's events: (item index, time offset in s, event type, rating) lists in time order."""
    g = cfg.n_genres
    taste = rng.dirichlet(np.full(g, cfg.taste_concentration))
    log_pop = np.log(popularity)
    items: list[int] = []
    offsets: list[int] = []
    types: list[str] = []
    ratings: list[float] = []
    t = 0
    seen_weight = np.ones(cfg.n_items)
    while len(items) < n_rows:
        focus = rng.choice(g, p=taste)
        session_taste = 0.5 * taste + 0.5 * np.eye(g)[focus]
        match = genre_matrix @ session_taste  # [n_items] in [0, 1]
        logits = log_pop + cfg.genre_affinity * match / max(match.max(), 1e-9)
        p = np.exp(logits - logits.max()) * seen_weight
        n_views = 1 + rng.poisson(cfg.session_length - 1) if cfg.session_length > 1 else 1
        n_views = min(n_views, int(np.count_nonzero(p)))
        viewed = rng.choice(cfg.n_items, size=n_views, replace=False, p=p / p.sum())
        seen_weight[viewed] = cfg.revisit
        if not seen_weight.any():
            seen_weight[:] = 1.0  # the user has seen everything: start over
        user_match = genre_matrix[viewed] @ taste / max(taste.max(), 1e-9)  # [n_views] in [0, 1]
        draws = rng.random((n_views, 4))
        for j, item in enumerate(viewed):
            m = float(user_match[j])
            t += int(rng.integers(20, 600))
            items.append(int(item)), offsets.append(t), types.append("view"), ratings.append(np.nan)
            if draws[j, 0] >= 0.15 + 0.55 * m:
                continue
            t += int(rng.integers(2, 60))
            items.append(int(item)), offsets.append(t), types.append("click"), ratings.append(np.nan)
            if draws[j, 1] < 0.05 + 0.45 * m:
                t += int(rng.integers(2, 60))
                items.append(int(item)), offsets.append(t), types.append("like"), ratings.append(np.nan)
            if draws[j, 2] < 0.02 + 0.25 * m:
                t += int(rng.integers(10, 300))
                items.append(int(item)), offsets.append(t), types.append("purchase"), ratings.append(np.nan)
            if cfg.with_ratings and draws[j, 3] < 0.2:
                t += int(rng.integers(10, 300))
                stars = float(np.clip(np.rint(1.0 + 4.0 * m + rng.normal(0.0, 0.7)), 1, 5))
                items.append(int(item)), offsets.append(t), types.append("rating"), ratings.append(stars)
        t += int(rng.integers(3_600, 5 * 86_400))  # gap between sessions
        fresh = rng.dirichlet(np.full(g, cfg.taste_concentration))
        taste = (1.0 - cfg.drift) * taste + cfg.drift * fresh
    return items[:n_rows], offsets[:n_rows], types[:n_rows], ratings[:n_rows]


def _created_at(cfg: SyntheticConfig, interactions: pd.DataFrame) -> np.ndarray:
    """Creation time per item (int64 unix s): before its first interaction (module docstring)."""
    rng = np.random.default_rng((cfg.seed, 1))  # a stream of its own: the log does not change
    first = interactions.groupby("item_id", sort=False)["timestamp"].min()
    end = int(interactions["timestamp"].max()) if len(interactions) else cfg.start_time
    ids = [f"i{i + 1}" for i in range(cfg.n_items)]
    upper = first.reindex(ids).to_numpy(dtype=np.float64) - 1  # last second before the first event
    upper = np.where(np.isnan(upper), end, upper)
    upper = np.maximum(upper, cfg.start_time)
    return cfg.start_time + np.floor(rng.random(cfg.n_items) * (upper - cfg.start_time + 1)).astype(np.int64)


def generate(cfg: SyntheticConfig | None = None) -> Dataset:
    """Generate a synthetic Dataset; deterministic given ``cfg.seed``."""
    cfg = cfg or SyntheticConfig()
    cfg.validate()
    rng = np.random.default_rng(cfg.seed)
    popularity, genre_matrix, genre_lists = _make_items(cfg, rng)
    names = genre_names(cfg.n_genres)
    shape = 2.0
    n_rows = np.maximum(
        cfg.min_events_per_user, np.rint(rng.gamma(shape, cfg.events_per_user / shape, size=cfg.n_users))
    ).astype(int)
    starts = cfg.start_time + rng.integers(0, 30 * 86_400, size=cfg.n_users)
    users, items, stamps, types, ratings = [], [], [], [], []
    for u in range(cfg.n_users):
        it, off, ty, ra = _user_log(cfg, rng, popularity, genre_matrix, int(n_rows[u]))
        users.extend([f"u{u + 1}"] * len(it))
        items.extend(f"i{i + 1}" for i in it)
        stamps.extend(int(starts[u]) + o for o in off)
        types.extend(ty)
        ratings.extend(ra)
    interactions = pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype=object),
            "item_id": pd.Series(items, dtype=object),
            "timestamp": np.asarray(stamps, dtype=np.int64),
            "event_type": pd.Series(types, dtype=object),
            "rating": np.asarray(ratings, dtype=np.float64),
        }
    )
    order = np.argsort(interactions["timestamp"].to_numpy(), kind="stable")
    interactions = interactions.iloc[order].reset_index(drop=True)
    items_df = pd.DataFrame(
        {
            "item_id": [f"i{i + 1}" for i in range(cfg.n_items)],
            "genres": [[names[g] for g in gl] for gl in genre_lists],
            "title": [f"{names[gl[0]]} title {i + 1}" for i, gl in enumerate(genre_lists)],
            "created_at": pd.array(_created_at(cfg, interactions), dtype=CREATED_AT_DTYPE),
        }
    )
    logger.debug(
        "synthetic dataset: %d users, %d items, %d events", cfg.n_users, cfg.n_items, len(interactions)
    )
    return Dataset(name=f"synthetic(seed={cfg.seed})", interactions=interactions, items=items_df)
