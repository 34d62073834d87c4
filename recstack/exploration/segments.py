"""Thompson sampling per user segment: segment ids, how a request gets one, and the borrowed prior.

A variant's bandit spec may set ``segment_by`` (recstack/experiments/config.py):

- ``"none"`` (default): no segment, the global arms ``bandit:ts:{item}`` only;
- ``"attribute:NAME"``: the request's context attribute NAME; segment ``"NAME:VALUE"``;
- ``"top_genre"``: the user's highest real-time genre score; segment ``"genre:GENRE"`` (none when
  the user has no positive genre score).

Segment ids are 1..64 characters of ``[A-Za-z0-9_.:-]`` (they are part of Redis keys). The
gateway maps any other value to a safe id with ``safe_segment`` (invalid characters -> ``_`` plus a
short hash of the raw value, so distinct raw values stay distinct); an empty value means no
segment. Every segment value creates Redis arms without expiry: segment by low-cardinality
attributes only.

Borrowed prior (``segment_beta_params``). The stream stores every arm, global or per segment, as
``alpha``/``beta`` including the writer's Beta(1, 1) (``STORED_PRIOR``), so an arm's evidence is
``s = alpha - 1`` successes and ``f = beta - 1`` failures. A segment request draws item theta from

    Beta(a0 + s_seg, b0 + f_seg),   a0 = prior_alpha + c * s_global,  b0 = prior_beta + c * f_global,
    c = min(1, strength / (s_global + f_global))   (c = 0 without global evidence)

i.e. the cold-item prior plus the global evidence scaled down to at most ``strength``
pseudo-observations (``segment_prior_strength``; 0: independent segments). A segment without data
behaves like the global arm when the global arm has at most ``strength`` observations, and like
its mean with ``strength`` observations of weight otherwise; the segment's own data dominates as
soon as it has more than ``strength`` observations.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

# Segment ids are part of Redis keys, so their rule is defined with the keys (and used from here).
from recstack.features.keys import SEGMENT_CONTEXT_KEY, SEGMENT_MAX_LEN, is_valid_segment  # noqa: F401

STORED_PRIOR = (1.0, 1.0)
"""The Beta prior included in the stored alpha/beta of every arm (recstack/features/writer.py)."""

_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_.:\-]")
_ATTRIBUTE_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_HASH_LEN = 8
SEGMENT_BY_HELP = (
    "must be 'none', 'top_genre' or 'attribute:NAME' with NAME 1..64 characters of letters, "
    "digits, '_', '.', '-'"
)


def safe_segment(raw: str) -> str:
    """``raw`` as a segment id: unchanged when valid, "" (no segment) when empty, else every
    invalid character replaced by ``_`` and ``.`` + 8 hex digits of blake2b(raw) appended (the
    readable part cut to fit 64 characters). Never raises for a str."""
    if not raw:
        return ""
    if is_valid_segment(raw):
        return raw
    digest = hashlib.blake2b(raw.encode("utf-8", "surrogatepass"), digest_size=_HASH_LEN // 2).hexdigest()
    readable = _UNSAFE_RE.sub("_", raw)[: SEGMENT_MAX_LEN - _HASH_LEN - 1]
    return f"{readable}.{digest}"


def parse_segment_by(spec: str) -> str:
    """The canonical form of a ``segment_by`` value: "" (none), "top_genre" or "attribute:NAME".

    Accepts "" and "none" for no segmentation. Raises ValueError (``SEGMENT_BY_HELP``) otherwise."""
    if spec in ("", "none"):
        return ""
    if spec == "top_genre":
        return spec
    kind, sep, name = spec.partition(":")
    if kind == "attribute" and sep and _ATTRIBUTE_NAME_RE.fullmatch(name):
        return spec
    raise ValueError(f"{SEGMENT_BY_HELP}, got {spec!r}")


def top_genre(genre_scores: Mapping[str, float]) -> str:
    """The genre with the highest positive finite score (ties: the smallest name); "" when none."""
    best, best_score = "", 0.0
    for genre, score in genre_scores.items():
        if not genre or not math.isfinite(score) or score <= 0:
            continue
        if score > best_score or (score == best_score and genre < best):
            best, best_score = genre, score
    return best


def request_segment(segment_by: str, attributes: Mapping[str, str], genre_scores: Mapping[str, float]) -> str:
    """The segment id of one request ("" = no segment) for a canonical ``segment_by``
    (``parse_segment_by``): ``NAME:VALUE`` of the attribute, ``genre:GENRE`` of the user's top
    genre, mapped to a safe id. A missing or empty value gives no segment; never raises."""
    if segment_by == "top_genre":
        genre = top_genre(genre_scores)
        return safe_segment(f"genre:{genre}") if genre else ""
    if segment_by.startswith("attribute:"):
        name = segment_by[len("attribute:") :]
        value = attributes.get(name, "")
        return safe_segment(f"{name}:{value}") if value else ""
    return ""


def _evidence(arms: np.ndarray) -> np.ndarray:
    """Successes/failures [P, 2] of stored arms [P, 2] (NaN rows = no arm): stored minus the
    writer's Beta(1, 1), floored at 0; rows that are missing, non-finite or <= 0 count as none."""
    ok = (np.isfinite(arms) & (arms > 0)).all(axis=1)
    out = np.zeros_like(arms, dtype=np.float64)
    out[ok] = np.maximum(arms[ok] - np.asarray(STORED_PRIOR), 0.0)
    return out


def segment_beta_params(
    global_arms: np.ndarray,
    segment_arms: np.ndarray,
    prior: tuple[float, float],
    strength: float,
) -> tuple[np.ndarray, np.ndarray]:
    """(alpha [P], beta [P]) of the segment posteriors (module docstring formula).

    global_arms, segment_arms: stored (alpha, beta) [P, 2] per item, NaN where the item has no arm.
    prior: (prior_alpha, prior_beta) > 0, the cold-item prior; strength >= 0: the most
    pseudo-observations the global evidence contributes."""
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    glob = _evidence(np.asarray(global_arms, dtype=np.float64).reshape(-1, 2))
    seg = _evidence(np.asarray(segment_arms, dtype=np.float64).reshape(-1, 2))
    n = glob.sum(axis=1)
    scale = np.zeros_like(n)
    has = n > 0
    scale[has] = np.minimum(1.0, strength / n[has])
    alpha = prior[0] + scale * glob[:, 0] + seg[:, 0]
    beta = prior[1] + scale * glob[:, 1] + seg[:, 1]
    return alpha, beta


def stack_arms(items: Sequence[str], arms: Mapping[str, tuple[float, float]]) -> np.ndarray:
    """Stored (alpha, beta) [P, 2] of ``items`` from ``arms``; NaN rows for items without one."""
    nan = (math.nan, math.nan)
    get = arms.get
    return np.array([get(item) or nan for item in items], dtype=np.float64).reshape(len(items), 2)
