"""One batch unlike the data (inputs mis-scaled: millivolts for volts, raw power for log power)
is named a data outlier from the batch itself: the Monitor records the RMS of the floating-point
inputs of each step's first call into the model, every step, with no host synchronisation.

Oracle: the RMS computed by hand in the same run; the batch is planted, so the answer is known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import steadygrad
from steadygrad.core.metrics import INPUT_RMS


def _train(tmp_path, name, *, scale_at=None, jolt_at=None, steps=200, vary=1.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 4, generator=gen)
    by_hand = {}
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for step in range(steps):
            x = torch.randn(32, 16, generator=gen) * (vary ** (step % 3))
            y = (x @ w).argmax(1)
            if step == scale_at:
                x = x * 1000.0  # the batch that came from a pipeline in other units
            by_hand[step] = float(x.pow(2).mean().sqrt())
            if step == jolt_at:  # the weights knocked (a bad checkpoint merge): not the batch
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(torch.randn(p.shape, generator=gen))
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.load(tmp_path / name), by_hand


def test_the_input_rms_is_each_steps_batch(tmp_path):
    run, by_hand = _train(tmp_path, "rms", steps=30)
    steps, values = run.series(INPUT_RMS.name)
    assert list(steps) == list(range(30))
    assert values == pytest.approx([by_hand[s] for s in range(30)], rel=1e-5)


def test_token_ids_have_no_input_rms(tmp_path):
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(32, 50))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with steadygrad.watch(model, opt, tmp_path / "ids", progress=False) as mon:
        for _ in range(5):
            ids = torch.randint(0, 50, (8, 4))
            loss = nn.functional.cross_entropy(model(ids), ids[:, 0])
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    with pytest.raises(KeyError):
        steadygrad.load(tmp_path / "ids").series(INPUT_RMS.name)


def test_a_mis_scaled_batch_is_named_a_data_outlier_from_its_inputs(tmp_path):
    run, by_hand = _train(tmp_path, "outlier", scale_at=150)
    top = steadygrad.diagnose(run).diagnoses[0]
    assert top.cause == "data_outlier" and top.first_step == 150, top.summary
    usual = sorted(by_hand[s] for s in range(100, 150))[25]  # the median of the 50 before
    assert top.evidence["input_ratio"] == pytest.approx(by_hand[150] / usual, rel=0.05)


@pytest.mark.parametrize("case", ["jolt", "varied_scales"])
def test_a_spike_from_ordinary_batches_is_not_put_on_their_inputs(tmp_path, case):
    # Controls: weights knocked at one step make the loss spike on an ordinary batch; a run
    # whose batches come at three scales (x1, x3, x9) is healthy: neither is an input outlier
    args = {"jolt_at": 150} if case == "jolt" else {"vary": 3.0}
    run, _ = _train(tmp_path, case, **args)
    report = steadygrad.diagnose(run)
    assert not any("input_ratio" in d.evidence for d in report.diagnoses)
    if case == "jolt":
        assert any(f.kind == "loss_spike" for f in run.findings())  # the spike did happen
