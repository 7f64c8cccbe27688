"""The fast path (torch.compile of the same per-tensor kernel) follows the eager path.

Each optimizer compiles one variant here (float32, dynamic shapes), so this file costs a few
seconds of compilation per optimizer; inductor caches the result on disk for later runs.
"""

from __future__ import annotations

import pytest
import torch

from steadygrad import optim as so
from steadygrad.optim._base import compile_available

pytestmark = pytest.mark.skipif(not compile_available(), reason="torch.compile unavailable")


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    # The chunked compiled call is the same code for any chunk size; a chunk of 2 compiles in a
    # fraction of the time of the default 16, still mixes tensor sizes, and 5 tensors make the
    # last chunk padded.
    from steadygrad.optim import _base

    monkeypatch.setattr(_base, "CHUNK", 2)


FACTORIES = {
    "SPAM": lambda ps, f: so.SPAM(ps, lr=1e-2, weight_decay=1e-2, reset_interval=25,
                                  warmup_steps=5, accumulation_steps=3, fused=f),
    "StableSPAM": lambda ps, f: so.StableSPAM(ps, lr=1e-2, weight_decay=1e-2, reset_interval=25,
                                              total_steps=40, fused=f),
    "AdaBelief": lambda ps, f: so.AdaBelief(ps, lr=1e-2, weight_decay=1e-2, fused=f),
    "DiffGrad": lambda ps, f: so.DiffGrad(ps, lr=1e-2, weight_decay=1e-2, fused=f),
    "Lion": lambda ps, f: so.Lion(ps, lr=1e-2, weight_decay=1e-2, fused=f),
    "AdEMAMix": lambda ps, f: so.AdEMAMix(ps, lr=1e-2, weight_decay=1e-2, alpha=5.0,
                                          alpha_warmup=10, beta3_warmup=10, fused=f),
    "Grams": lambda ps, f: so.Grams(ps, lr=1e-2, weight_decay=1e-2, fused=f),
}  # fmt: skip


def _run(name, fused, steps=60):
    gen = torch.Generator().manual_seed(0)
    # several shapes and ranks, more than one chunk: one compiled variant must serve them all
    shapes = [(8, 6), (37,), (5, 3, 2), (64, 70), (9,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
    opt = FACTORIES[name](params, fused)
    for i in range(steps):
        for p in params:
            g = torch.randn(p.shape, generator=gen) * 0.1 + 0.05
            if i == 40:
                g.view(-1)[0] *= 1e3  # a spike for the clipping optimizers
            p.grad = g
        before = [p.grad.clone() for p in params]
        opt.step()
        assert all(torch.equal(p.grad, b) for p, b in zip(params, before, strict=True))
    return torch.cat([p.detach().reshape(-1) for p in params])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_compiled_path_follows_eager_path(name):
    eager = _run(name, False)
    fast = _run(name, True)
    start = _run(name, False, steps=0)
    assert (eager - start).abs().max() > 0.05  # the trajectory goes somewhere
    torch.testing.assert_close(fast, eager, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_changing_lr_does_not_recompile():
    from torch._dynamo.utils import counters

    p = torch.nn.Parameter(torch.randn(100))
    opt = so.Lion([p], lr=1e-3, fused=True)
    p.grad = torch.randn(100)
    opt.step()
    before = counters["stats"]["unique_graphs"]
    for i in range(5):
        opt.param_groups[0]["lr"] = 1e-3 * (i + 2)
        p.grad = torch.randn(100)
        opt.step()
    assert counters["stats"]["unique_graphs"] == before
