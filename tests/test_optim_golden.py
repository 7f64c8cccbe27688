"""SPAM and Stable-SPAM against golden trajectories from the authors' reference code.

The numbers in tests/golden/*.json were produced by running the authors' optimizer files on
the fixed problem below (see tests/golden/README.md); no code of theirs is in this repository.
The runs cross momentum resets, where pytorch-optimizer differs from the authors.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steadygrad import optim as so
from tests._optim_problem import trajectory

GOLDEN = Path(__file__).parent / "golden"


def _golden(name):
    data = json.loads((GOLDEN / f"{name}.json").read_text())
    steps = sorted(int(k) for k in data["trajectory"])
    return data, steps, torch.tensor([data["trajectory"][str(s)] for s in steps])


def _spam(cfg, fused):
    return lambda ps: so.SPAM(
        ps, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
        weight_decay=cfg["weight_decay"], threshold=cfg["threshold"],
        reset_interval=cfg["DeltaT"], warmup_steps=cfg["warmup_steps"],
        accumulation_steps=cfg["grad_accu_steps"], fused=fused,
    )  # fmt: skip


def _stable_spam(cfg, fused):
    return lambda ps: so.StableSPAM(
        ps, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
        weight_decay=cfg["weight_decay"], gamma1=cfg["gamma1"], gamma2=cfg["gamma2"],
        gamma3=cfg["gamma3"], total_steps=cfg["total_T"], eta_min=cfg["eta_min"],
        reset_interval=cfg["update_proj_gap"], fused=fused,
    )  # fmt: skip


CASES = {"spam": _spam, "stable_spam": _stable_spam, "stable_spam_scaled": _stable_spam}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_the_authors_reference_trajectory(name):
    data, steps, expected = _golden(name)
    problem = data["problem"]
    _, snaps = trajectory(
        CASES[name](data["config"], fused=False),
        problem["steps"],
        every=problem["every"],
        spike_at=problem["spike"]["step"],
        spike=problem["spike"]["factor"],
    )
    got = torch.stack([s.reshape(-1) for s in snaps])
    assert got.shape == expected.shape
    err = (got - expected).abs().max(dim=1).values
    assert err.max() <= 2e-5, dict(zip(steps, err.tolist(), strict=True))


def test_stable_spam_clean_reset_leaves_the_reference_trajectory():
    # the documented alternative really is different after the first reset (step 250)
    data, steps, expected = _golden("stable_spam")
    cfg = data["config"]
    make = lambda ps: so.StableSPAM(  # noqa: E731
        ps, lr=cfg["lr"], weight_decay=cfg["weight_decay"],
        reset_interval=cfg["update_proj_gap"], reset_mode="clean", fused=False,
    )  # fmt: skip
    _, snaps = trajectory(make, 600, every=25, spike_at=300)
    got = torch.stack([s.reshape(-1) for s in snaps])
    before = [i for i, s in enumerate(steps) if s < 250]
    after = [i for i, s in enumerate(steps) if s > 300]
    assert (got[before] - expected[before]).abs().max() <= 2e-5
    assert (got[after] - expected[after]).abs().max() > 1e-3
