"""Contract tests of the sequential models: shapes, one scoring path, causality, input checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recstack.models.bert4rec import BERT4Rec, BERT4RecConfig
from recstack.models.gru4rec import GRU4Rec, GRU4RecConfig
from recstack.models.sasrec import SASRec, SASRecConfig
from recstack.models.sequential_common import PAD_SCORE, Dropout, as_history_tensor, attention_mask

N_ITEMS = 25
MAX_LEN = 8


def make(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "sasrec":
        model = SASRec(SASRecConfig(n_items=N_ITEMS, max_len=MAX_LEN, dim=16, n_layers=2, n_heads=2))
    elif name == "gru4rec":
        model = GRU4Rec(GRU4RecConfig(n_items=N_ITEMS, max_len=MAX_LEN, dim=16, hidden=24))
    else:
        model = BERT4Rec(BERT4RecConfig(n_items=N_ITEMS, max_len=MAX_LEN, dim=16, n_layers=2, n_heads=2))
    return model.eval()


MODELS = ["sasrec", "gru4rec", "bert4rec"]


def histories() -> torch.Tensor:
    return torch.tensor(
        [
            [0, 0, 0, 0, 0, 3, 4, 5],
            [1, 2, 3, 4, 5, 6, 7, 8],
            [0, 0, 0, 0, 0, 0, 0, 25],
        ]
    )


@pytest.mark.parametrize("name", MODELS)
def test_score_shapes_and_padding_column(name: str) -> None:
    model = make(name)
    with torch.no_grad():
        scores = model.score_all(histories())
        cands = model.score_candidates(histories(), torch.tensor([[1, 2, 0], [3, 4, 5], [25, 24, 23]]))
    assert scores.shape == (3, N_ITEMS + 1)
    assert torch.isfinite(scores).all()
    assert (scores[:, 0] == PAD_SCORE).all()
    assert cands.shape == (3, 3)
    assert cands[0, 2] == PAD_SCORE


@pytest.mark.parametrize("name", MODELS)
def test_score_candidates_equals_score_all(name: str) -> None:
    """One scoring path: candidate scores are the corresponding columns of score_all."""
    model = make(name)
    cands = torch.tensor([[5, 1, 9, 25], [2, 2, 7, 3], [11, 12, 13, 14]])
    with torch.no_grad():
        full = model.score_all(histories())
        part = model.score_candidates(histories(), cands)
    torch.testing.assert_close(part, full.gather(1, cands), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_history_length_is_adapted(name: str) -> None:
    """Shorter histories are left-padded, longer ones keep their newest max_len items."""
    model = make(name)
    short = torch.tensor([[3, 4, 5]])
    long = torch.tensor([[9, 9, 9, 9, 1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(model.score_all(short), model.score_all(histories()[:1]))
        torch.testing.assert_close(model.score_all(long), model.score_all(histories()[1:2]))
    assert as_history_tensor(np.array([[1, 2]]), N_ITEMS, 4).tolist() == [[0, 0, 1, 2]]


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_causality(name: str) -> None:
    """Changing later items never changes the hidden states of earlier positions."""
    model = make(name)
    a = torch.tensor([[0, 0, 4, 7, 1, 9, 12, 3]])
    b = a.clone()
    b[0, 5:] = torch.tensor([20, 21, 22])
    with torch.no_grad():
        ha, hb = model.encode(a), model.encode(b)
    torch.testing.assert_close(ha[:, :5], hb[:, :5])
    assert not torch.allclose(ha[:, 5:], hb[:, 5:])


def test_bert4rec_is_bidirectional_and_predicts_at_appended_mask() -> None:
    model = make("bert4rec")
    a = torch.tensor([[0, 0, 4, 7, 1, 9, 12, 3]])
    b = a.clone()
    b[0, 6] = 20
    with torch.no_grad():
        ha, hb = model.encode(a), model.encode(b)
        rep = model.represent(a)
        tokens = torch.tensor([[0, 4, 7, 1, 9, 12, 3, model.mask_token]])
        torch.testing.assert_close(rep, model.encode(tokens)[:, -1])
    assert not torch.allclose(ha[:, 3], hb[:, 3])  # an earlier position sees a later item


def test_attention_mask_never_empties_a_row() -> None:
    tokens = torch.tensor([[0, 0, 3, 4]])
    causal = attention_mask(tokens, causal=True)[0, 0]
    assert causal.any(dim=1).all()
    assert causal.tolist() == [
        [True, False, False, False],
        [False, True, False, False],
        [False, False, True, False],
        [False, False, True, True],
    ]


@pytest.mark.parametrize("name", MODELS)
def test_bad_input_is_rejected(name: str) -> None:
    model = make(name)
    with pytest.raises(ValueError, match="outside 0..25"):
        model.score_all(torch.tensor([[0, 1, 26]]))
    with pytest.raises(ValueError, match=r"shape \(B, L\)"):
        model.score_all(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="integer"):
        model.score_all(torch.tensor([[0.5, 1.0]]))
    with pytest.raises(ValueError, match="candidates"):
        model.score_candidates(histories(), torch.tensor([[1, 99], [1, 2], [1, 2]]))


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="dropout"):
        SASRec(SASRecConfig(n_items=5, dropout=1.5))
    with pytest.raises(ValueError, match="attn_dropout"):
        SASRec(SASRecConfig(n_items=5, attn_dropout=-0.1))
    with pytest.raises(ValueError, match="divisible"):
        SASRec(SASRecConfig(n_items=5, dim=10, n_heads=3))
    with pytest.raises(ValueError, match="max_len >= 2"):
        BERT4Rec(BERT4RecConfig(n_items=5, max_len=1))
    with pytest.raises(ValueError, match="positive"):
        GRU4Rec(GRU4RecConfig(n_items=0))


def test_dropout_is_inverted_and_off_in_eval() -> None:
    torch.manual_seed(0)
    drop = Dropout(0.25)
    x = torch.ones(200, 500)
    y = drop(x)
    assert abs(float((y == 0).float().mean()) - 0.25) < 0.01
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.75))
    assert abs(float(y.mean()) - 1.0) < 0.02
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)


@pytest.mark.parametrize("name", MODELS)
def test_bundle_round_trip(name: str, tmp_path: Path) -> None:
    """Config (JSON) + safetensors weights rebuild a model that scores identically."""
    import json

    from safetensors.torch import load_file, save_file

    from recstack.artifacts.registry import build_model, model_spec

    model = make(name)
    spec = json.loads(json.dumps(model_spec(model)))
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    rebuilt = build_model(spec)
    rebuilt.load_state_dict(load_file(str(tmp_path / "w.safetensors")))
    rebuilt.eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.score_all(histories()), model.score_all(histories()))
