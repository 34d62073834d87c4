"""The stored format of linear-policy statistics (LinUCB, LinTS, hybrid LinUCB): float32 blocks
in a Redis hash.

A state hash has the fields ``format`` (``{kind}-v1``), ``dim``, ``n`` (update count) and ``state``
(the blocks, row-major, little-endian float32; LinUCB: A^{-1} then b; hybrid: A_a^{-1}, B_a, b_a;
the hybrid shared hash: A0 then b0). ``state_hash`` writes one, ``state_fields`` reads the common
fields back and ``decode_state`` validates the blocks, raising ``CorruptStateError`` (wrong length,
NaN/inf, a matrix that is not symmetric or has a non-positive diagonal). The stream's Lua scripts
(recstack/exploration/rewards_common.lua) read and write the same format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from recstack.exploration.base import CorruptStateError

STATE_DTYPE = np.dtype("<f4")
SYMMETRY_RTOL = 1e-3


def encode_state(*blocks: np.ndarray) -> bytes:
    """Concatenate arrays (row-major) as little-endian float32 bytes."""
    return b"".join(np.ascontiguousarray(x, dtype=STATE_DTYPE).tobytes() for x in blocks)


def decode_state(
    data: bytes, shapes: Sequence[tuple[int, ...]], symmetric: Sequence[int] = ()
) -> list[np.ndarray]:
    """Split float32 bytes into float64 arrays of ``shapes``; raise ``CorruptStateError`` when
    the length is wrong, a value is NaN/inf, a matrix listed in ``symmetric`` (block indices) is
    not symmetric or has a non-positive diagonal."""
    sizes = [int(np.prod(s)) for s in shapes]
    want = sum(sizes) * STATE_DTYPE.itemsize
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptStateError(f"state must be bytes, got {type(data).__name__}")
    if len(data) != want:
        raise CorruptStateError(f"state has {len(data)} bytes, expected {want} for blocks {list(shapes)}")
    flat = np.frombuffer(bytes(data), dtype=STATE_DTYPE).astype(np.float64)
    if not np.isfinite(flat).all():
        raise CorruptStateError("state contains NaN or inf")
    out: list[np.ndarray] = []
    start = 0
    for size, shape in zip(sizes, shapes, strict=True):
        out.append(flat[start : start + size].reshape(shape).copy())
        start += size
    for i in symmetric:
        m = out[i]
        scale = max(float(np.abs(m).max()), 1e-12)
        if np.abs(m - m.T).max() > SYMMETRY_RTOL * scale:
            raise CorruptStateError(f"state block {i} {m.shape} is not symmetric")
        if (np.diag(m) <= 0).any():
            raise CorruptStateError(f"state block {i} {m.shape} has a non-positive diagonal")
    return out


@dataclass(frozen=True)
class ArmState:
    """Sufficient statistics of one disjoint arm: A^{-1} [d, d], b [d], update count n."""

    ainv: np.ndarray
    b: np.ndarray
    n: int = 0

    def to_bytes(self) -> bytes:
        """A^{-1} (row-major) then b as little-endian float32."""
        return encode_state(self.ainv, self.b)

    @classmethod
    def from_bytes(cls, data: bytes, dim: int, n: int = 0) -> ArmState:
        """Inverse of ``to_bytes``; raises ``CorruptStateError`` (wrong length, NaN/inf,
        A^{-1} not symmetric or with a non-positive diagonal)."""
        ainv, b = decode_state(data, [(dim, dim), (dim,)], symmetric=[0])
        return cls(ainv, b, n)


def state_hash(kind: str, dim: int, n: int, *blocks: np.ndarray) -> dict[str, bytes]:
    """A Redis hash of serialised statistics: ``format`` ``{kind}-v1``, ``dim``, update count ``n``
    and ``state`` (the blocks as float32); ``state_fields`` reads it back."""
    return {
        "format": f"{kind}-v1".encode(),
        "dim": str(dim).encode(),
        "n": str(n).encode(),
        "state": encode_state(*blocks),
    }


def state_fields(mapping: Mapping[bytes | str, bytes | str], kind: str, dim: int) -> dict:
    """Decode the common hash fields (format, dim, n, state) and check format and dim."""
    m = {(k.decode() if isinstance(k, bytes) else k): v for k, v in mapping.items()}
    missing = {"format", "dim", "n", "state"} - m.keys()
    if missing:
        raise CorruptStateError(f"state hash lacks fields {sorted(missing)}")

    def text(v: bytes | str) -> str:
        return v.decode() if isinstance(v, bytes) else v

    if text(m["format"]) != f"{kind}-v1":
        raise CorruptStateError(f"state format is {text(m['format'])!r}, expected {kind}-v1")
    try:
        got_dim, n = int(text(m["dim"])), int(text(m["n"]))
    except ValueError as exc:
        raise CorruptStateError(f"dim/n are not integers: {exc}") from None
    if got_dim != dim:
        raise CorruptStateError(f"state has dim {got_dim}, the policy has {dim}")
    if n < 0:
        raise CorruptStateError(f"update count n is negative ({n})")
    if isinstance(m["state"], str):
        raise CorruptStateError("state was read as text: read bandit hashes with decode_responses=False")
    return {"state": m["state"], "n": n}
