"""A model with many parameter tensors stores its per-tensor series on a cadence.

Global values are stored every step; per-tensor families (gradient and weight norm per tensor)
only every ``PER_TENSOR_STORE_EVERY`` steps and on steps where something happened, which keeps
the store's size per step bounded as models grow. Small models store everything every step.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import steadygrad
from steadygrad.monitor import monitor as monitor_module


def _layers(n_linear: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleList(nn.Linear(2, 2) for _ in range(n_linear))


def _train(tmp_path, n_linear: int, steps: int, nan_at: int | None = None):
    model = _layers(n_linear)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False, mechanisms=False)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    records = {}
    for step in range(steps):
        loss = sum(layer(x).square().mean() for layer in model)
        loss.backward()
        opt.step()
        given = float("nan") if step == nan_at else loss
        records[step] = (mon.step(given), model[3].weight.detach().norm().item())
        opt.zero_grad(set_to_none=True)
    mon.close()
    return steadygrad.load(tmp_path / "run"), records


def test_many_tensors_store_per_tensor_series_on_a_cadence(tmp_path, monkeypatch):
    monkeypatch.setattr(monitor_module, "PER_TENSOR_STORE_EVERY", 5)
    run, records = _train(tmp_path, 501, 12, nan_at=7)  # 1,002 tensors
    steps, _ = run.series("grad_norm")
    assert steps.tolist() == list(range(12))  # globals: every step
    steps, values = run.series("param_norm/3.weight")
    assert steps.tolist() == [0, 5, 7, 10]  # the cadence, and the non-finite step
    for step, value in zip(steps.tolist(), values.tolist(), strict=True):
        record, weight_norm = records[step]
        assert value == record.values["param_norm/3.weight"]
        assert math.isclose(value, weight_norm, rel_tol=1e-6)  # the norm, computed here
    # Detectors saw every step's per-tensor values: the record kept them.
    assert "grad_norm/3.weight" in records[3][0].values


def test_small_models_store_every_per_tensor_value(tmp_path, monkeypatch):
    monkeypatch.setattr(monitor_module, "PER_TENSOR_STORE_EVERY", 5)
    run, _ = _train(tmp_path, 500, 7)  # 1,000 tensors: at the threshold, not above it
    steps, _ = run.series("param_norm/3.weight")
    assert steps.tolist() == list(range(7))
