"""The whole chain in one process over the real serving cores: its top k equals the offline
pipeline's (``recstack evaluate``'s lists and final scores) for sampled users of the same bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recstack.artifacts import load_bundle
from recstack.data import load_dataset
from recstack.evaluation import leave_one_out
from recstack.experiments.assignment import PipelineConfig
from recstack.features.types import UserFeatures
from recstack.serving.chain import Chain, RecommendState
from recstack.serving.inprocess import InProcessStages
from recstack.serving.reranker import Reranker
from recstack.serving.stages import build_stages
from recstack.training.bundle_eval import feature_length, pipeline_lists, stage_users
from recstack.training.examples import build_features

K = 10


class Store:
    def __init__(self, features: dict[str, UserFeatures]):
        self.features = features

    async def get_user_features(self, user_id: str) -> UserFeatures:
        return self.features[user_id]

    async def get_popular_scores(self, n: int, half_life_s: float) -> list[tuple[str, float]]:
        return []


class NoBandit:
    async def explore(self, *args, **kwargs):  # the variant below has no exploration slots
        raise AssertionError("the bandit must not run")


async def test_in_process_chain_top_k_equals_the_offline_pipeline(small_bundle: Path) -> None:
    bundle = load_bundle(small_bundle)
    split = leave_one_out(load_dataset(bundle.manifest["data_spec"]))
    feats = build_features(split, feature_length(bundle), bundle.genre_vocab)
    hist_len = np.asarray([len(s) for s in split.train_seqs]) + (split.valid_target > 0)
    # users whose whole history fits Redis' 50 recent items: online and offline exclude the same items
    users = np.flatnonzero((split.test_target > 0) & (hist_len <= 50))[:40]
    assert len(users) >= 20
    lists = pipeline_lists(bundle, split, feats, "test", 200, users=users)
    reranker = Reranker(bundle)
    _, user_features, _ = stage_users(split, feats, "test", users)
    stages = InProcessStages(bundle)
    chain = Chain(
        build_stages(
            Store({u.user_id: u for u in user_features}),
            stages.retrieval,
            stages.ranking,
            stages.rerank,
            NoBandit(),
            bundle.popularity,
            retrieval_timeout_s=30,
            ranking_timeout_s=30,
            rerank_timeout_s=30,
        )
    )
    pipeline = PipelineConfig(explore_slots=0)
    for k, uf in enumerate(user_features):
        state = RecommendState(
            request_id=f"r{k}", user_id=uf.user_id, k=K, known_user=True, pipeline=pipeline
        )
        await chain.run(state)
        assert state.stages_ran == ["features", "retrieval", "ranking", "rerank"], state.skipped
        scores = lists.scores[k]
        ranking = np.argsort(-scores["ranking"], kind="stable")  # the order the rerank stage receives
        final = reranker.final_scores({n: v[ranking] for n, v in scores.items()}, scores["ranking"][ranking])
        order = np.argsort(-final, kind="stable")
        ids = [bundle.item_map.ids[i - 1] for i in lists.candidates[k][ranking][order]]
        if state.candidates != ids[:K]:  # batches of other sizes round float32 sums differently:
            by_id = dict(zip(ids, final[order], strict=True))  # only near-ties may swap
            got = np.asarray([by_id[x] for x in state.candidates])
            assert np.all(np.diff(got) <= 1e-6) and got.min() >= final[order][K - 1] - 1e-6, uf.user_id
        np.testing.assert_allclose(state.scores, final[order][:K], atol=1e-5)


@pytest.mark.parametrize("stage", ["retrieval", "ranking", "rerank"])
async def test_in_process_stages_swap_bundles_together(small_bundle: Path, stage: str) -> None:
    bundle = load_bundle(small_bundle)
    stages = InProcessStages(bundle)
    cores = InProcessStages.build(bundle)
    stages.swap(cores, "v-next")
    assert stages.version == "v-next" and stages.cores[stage] is cores[stage]
