"""LinUCB / hybrid LinUCB arm state through a real Redis: save, load, a corrupted arm reset."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from recstack.exploration.linear_store import load_arms, save_arms
from recstack.exploration.linucb import HybridLinUCB, LinUCB
from recstack.features.keys import Keys
from recstack.redis_cluster import sync_from_url

D = 8


def _ids(n: int) -> list[str]:
    return [f"i{j}" for j in range(n)]


@pytest.mark.integration
@pytest.mark.parametrize("make", [lambda: LinUCB(D, seed=0), lambda: HybridLinUCB(D, seed=0)])
def test_state_round_trip_through_real_redis(make, redis_url: str, caplog) -> None:

    client = sync_from_url(redis_url)
    rng = np.random.default_rng(9)
    src, dst = make(), make()
    ids = _ids(6)
    ctx = rng.normal(size=(6, D))
    src.update_batch(ids * 3, np.tile(ctx, (3, 1)), rng.random(18))
    save_arms(client, src, ids, prefix="t:")
    client.hset(Keys("t:").linear_arm("i5", src.kind), "state", b"\x00" * 7)  # corrupt one arm
    with caplog.at_level(logging.WARNING, logger="recstack.exploration.linucb"):
        reset = load_arms(client, dst, [*ids, "never-stored"], prefix="t:")
    assert reset == ["i5"] and "i5" in caplog.text
    np.testing.assert_allclose(dst.score(ctx[:5], ids[:5]), src.score(ctx[:5], ids[:5]), rtol=1e-4, atol=1e-5)
    client.close()
