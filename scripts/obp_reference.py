"""Reference OPE estimates from obp 0.5.7 on its bundled OBD sample (random and bts, campaign all).

The numbers in tests/unit/test_ope.py::OBP_REFERENCE come from this script. It runs in a
separate Python 3.10 venv, never in recstack's (obp pins old numpy / scikit-learn)::

    pip download obp==0.5.7 --no-deps --ignore-requires-python -d /tmp/obp
    tar xzf /tmp/obp/obp-0.5.7.tar.gz -C /tmp/obp
    python3.10 -m venv /tmp/obpenv
    /tmp/obpenv/bin/pip install numpy==1.23.5 scipy==1.9.3 pandas==1.5.2 scikit-learn==1.1.3 \
        tqdm "matplotlib<3.8" seaborn==0.11.2 pyyaml
    /tmp/obpenv/bin/pip install --no-deps obp==0.5.7
    /tmp/obpenv/bin/python scripts/obp_reference.py /tmp/obp/obp-0.5.7/obp/dataset/obd

obp imports torch only for its neural policy learners; an import-time stub stands in for it.
"""

import importlib.abc
import importlib.machinery
import json
import sys
import types
from pathlib import Path


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        if name[:1].islower():
            sub = _Stub(f"{self.__name__}.{name}")
            setattr(self, name, sub)
            return sub
        return type(name, (), {})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torch" or fullname.startswith("torch."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        m = _Stub(spec.name)
        m.__path__ = []
        return m

    def exec_module(self, module):
        pass


def main(root: Path) -> dict:
    """obp's estimates for the target policy and reward model of test_ope.py::_obd_target."""
    sys.meta_path.insert(0, _Finder())
    import numpy as np
    import obp
    from obp.dataset import OpenBanditDataset
    from obp.ope import (
        DoublyRobust,
        InverseProbabilityWeighting,
        ReplayMethod,
        SelfNormalizedInverseProbabilityWeighting,
    )

    out = {"obp_version": obp.__version__}
    for behavior in ("random", "bts"):
        ds = OpenBanditDataset(behavior_policy=behavior, campaign="all", data_path=root)
        fb = ds.obtain_batch_bandit_feedback()
        n, n_act, n_pos = fb["n_rounds"], ds.n_actions, ds.len_list
        aff = ds.data[[f"user-item_affinity_{a}" for a in range(n_act)]].values.astype(float)
        # target: softmax_a(5 * affinity[i, a] + bias[a, pos]), bias = 0.1 * ((7a + 3pos) % 11)
        bias = 0.1 * ((7 * np.arange(n_act)[:, None] + 3 * np.arange(n_pos)[None, :]) % 11)
        logits = 5.0 * aff[:, :, None] + bias[None, :, :]  # [n, A, L]
        logits -= logits.max(axis=1, keepdims=True)
        pi = np.exp(logits)
        pi /= pi.sum(axis=1, keepdims=True)
        det = np.zeros_like(pi)  # replay target: argmax of the same logits per position
        det[np.arange(n)[:, None], np.argmax(logits, axis=1), np.arange(n_pos)[None, :]] = 1.0
        # reward model: per (item, position) click mean shrunk to the global mean with weight 1
        g = fb["reward"].mean()
        clicks = np.zeros((n_act, n_pos))
        counts = np.zeros((n_act, n_pos))
        np.add.at(clicks, (fb["action"], fb["position"]), fb["reward"])
        np.add.at(counts, (fb["action"], fb["position"]), 1.0)
        q_hat = np.broadcast_to(((clicks + g) / (counts + 1.0))[None], (n, n_act, n_pos)).copy()
        kw = dict(reward=fb["reward"], action=fb["action"], position=fb["position"], pscore=fb["pscore"])
        ipw = InverseProbabilityWeighting()
        out[behavior] = {
            "n_rounds": int(n),
            "on_policy_mean_click": float(fb["reward"].mean()),
            "ipw": float(ipw.estimate_policy_value(action_dist=pi, **kw)),
            "snipw": float(
                SelfNormalizedInverseProbabilityWeighting().estimate_policy_value(action_dist=pi, **kw)
            ),
            "dr": float(
                DoublyRobust().estimate_policy_value(
                    action_dist=pi, estimated_rewards_by_reg_model=q_hat, **kw
                )
            ),
            "replay": float(
                ReplayMethod().estimate_policy_value(
                    action_dist=det, reward=fb["reward"], action=fb["action"], position=fb["position"]
                )
            ),
            "ipw_ci95_bootstrap": ipw.estimate_interval(
                action_dist=pi, n_bootstrap_samples=2000, random_state=0, **kw
            ),
        }
    return out


if __name__ == "__main__":
    json.dump(main(Path(sys.argv[1])), sys.stdout, indent=1, default=float)
    sys.stdout.write("\n")
