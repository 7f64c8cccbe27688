"""Each optimizer trains the built-in MLP on scikit-learn's digits to a target test accuracy."""

from __future__ import annotations

import pytest
import torch

from steadygrad import optim as so
from steadygrad.data import load_digits
from steadygrad.models import MLP

pytest.importorskip("sklearn")

SETTINGS = {
    "SPAM": lambda ps: so.SPAM(ps, lr=1e-2, reset_interval=100, warmup_steps=20, fused=False),
    "StableSPAM": lambda ps: so.StableSPAM(ps, lr=1e-2, reset_interval=100, fused=False),
    "AdaBelief": lambda ps: so.AdaBelief(ps, lr=1e-2, fused=False),
    "DiffGrad": lambda ps: so.DiffGrad(ps, lr=1e-2, fused=False),
    "Lion": lambda ps: so.Lion(ps, lr=1e-3, weight_decay=1e-1, fused=False),
    "AdEMAMix": lambda ps: so.AdEMAMix(
        ps, lr=1e-2, alpha=5.0, alpha_warmup=100, beta3_warmup=100, fused=False
    ),
    "Grams": lambda ps: so.Grams(ps, lr=1e-2, fused=False),
}


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matmuls: extra threads only add contention on a shared machine
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_trains_mlp_on_digits(name, digits):
    x_train, y_train, x_test, y_test = digits
    torch.manual_seed(0)
    model = MLP(64, [64], 10)
    opt = SETTINGS[name](model.parameters())
    order = torch.Generator().manual_seed(0)
    for _ in range(12):  # epochs of 12 mini-batches: 144 steps
        perm = torch.randperm(len(x_train), generator=order)
        for idx in perm.split(128)[:12]:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx]).backward()
            opt.step()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy >= 0.92, accuracy
