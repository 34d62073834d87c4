"""Output shapes and scoring consistency of TwoTower, MultiTaskRanker / MMoERanker, NeuMF, BPRMF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstack.models.mf import BPRMF, BPRMFConfig
from recstack.models.multitask import MultiTaskConfig, TaskWeightError, build_ranker, combine
from recstack.models.ncf import NeuMF, NeuMFConfig
from recstack.models.two_tower import TwoTower, TwoTowerConfig

B, L, G, NU, NI = 4, 6, 3, 5, 9


@pytest.fixture
def inputs() -> tuple[torch.Tensor, ...]:
    torch.manual_seed(0)
    user = torch.tensor([0, 1, 2, 5])
    hist = torch.randint(0, NI + 1, (B, L))
    hist[0] = 0  # an empty history
    genre = torch.rand(B, G)
    item = torch.tensor([1, 4, 9, 2])
    return user, hist, genre, item


@pytest.mark.parametrize("pooling", ["mean", "attention"])
@pytest.mark.parametrize("normalize", [True, False])
def test_two_tower_shapes(inputs, pooling: str, normalize: bool) -> None:
    user, hist, genre, item = inputs
    m = TwoTower(TwoTowerConfig(NU, NI, G, dim=8, hidden=16, max_len=L, pooling=pooling, normalize=normalize))
    m.eval()
    u = m.user_embedding(user, hist, genre)
    v = m.item_embeddings()
    assert u.shape == (B, 8) and v.shape == (NI + 1, 8)
    if normalize:
        assert torch.allclose(u.norm(dim=-1), torch.ones(B), atol=1e-5)
    assert torch.allclose(m(user, hist, genre, item), (u * v[item]).sum(-1), atol=1e-6)


def test_two_tower_rejects_wrong_genre_matrix() -> None:
    with pytest.raises(ValueError, match="item_genres must have shape"):
        TwoTower(TwoTowerConfig(NU, NI, G), np.zeros((NI, G)))


@pytest.mark.parametrize("mmoe", [False, True])
def test_multitask_outputs_and_matrix_agree(inputs, mmoe: bool) -> None:
    user, hist, genre, item = inputs
    m = build_ranker(MultiTaskConfig(NU, NI, G, dim=8, max_len=L, bottom=(16, 8), tower=4, mmoe=mmoe))
    m.eval()
    out = m(user, item, hist, genre)
    assert set(out) == {"click", "like", "purchase"} and all(v.shape == (B,) for v in out.values())
    cands = torch.tensor([3, 1, 7])
    mat = m.score_matrix(user, hist, genre, cands)
    pair = m(
        user.repeat_interleave(3),
        cands.repeat(B),
        hist.repeat_interleave(3, 0),
        genre.repeat_interleave(3, 0),
    )
    grid = m.score_grid(user, hist, genre, cands.repeat(B, 1))
    for t in out:
        assert mat[t].shape == (B, 3) and grid[t].shape == (B, 3)
        assert torch.allclose(mat[t].reshape(-1), pair[t], atol=1e-5)
        assert torch.allclose(grid[t], mat[t], atol=1e-5)


def test_combine_default_and_errors() -> None:
    p = {"click": np.array([1.0, 0.0]), "like": np.array([0.0, 1.0]), "purchase": np.array([1.0, 1.0])}
    assert np.allclose(combine(p), [0.7, 0.5])
    assert np.allclose(combine(p, {"like": 1.0}), [0.0, 1.0])
    with pytest.raises(TaskWeightError, match="unknown task"):
        combine(p, {"share": 1.0})
    with pytest.raises(TaskWeightError, match="all zero"):
        combine(p, {"click": 0.0})


def test_neumf_and_bprmf(inputs) -> None:
    user, _, _, item = inputs
    n = NeuMF(NeuMFConfig(NU, NI, mf_dim=4, mlp_dims=(8, 4)))
    n.eval()
    assert n(user, item).shape == (B,)
    mat = n.score_matrix(user, torch.arange(NI + 1))
    assert mat.shape == (B, NI + 1)
    assert torch.allclose(mat[torch.arange(B), item], n(user, item), atol=1e-6)
    b = BPRMF(BPRMFConfig(NU, NI, dim=4))
    assert b.score_all(user).shape == (B, NI + 1)
    assert torch.allclose(b.score_all(user)[torch.arange(B), item], b(user, item), atol=1e-6)


def test_neumf_pretraining_from_mf_starts_at_the_mf_score(inputs) -> None:
    user, _, _, item = inputs
    mf = BPRMF(BPRMFConfig(NU, NI, dim=4))
    n = NeuMF(NeuMFConfig(NU, NI, mf_dim=4, mlp_dims=(8, 4), dropout=0.0))
    n.init_gmf_from(mf.user_emb.weight, mf.item_emb.weight, mlp_scale=0.0)
    assert torch.allclose(n(user, item), mf(user, item), atol=1e-6)
    with pytest.raises(ValueError, match="set mf_dim"):
        NeuMF(NeuMFConfig(NU, NI, mf_dim=8)).init_gmf_from(mf.user_emb.weight, mf.item_emb.weight)
