"""The Monitor's per-step signals against values computed independently in the test."""

import math

import pytest
import torch
from helpers import regression_batch, tiny_mlp
from torch import nn

import steadygrad


def test_grad_and_param_norms_equal_a_hand_computation(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    for i in range(3):
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        expected_grads = {
            n: torch.linalg.vector_norm(p.grad).item() for n, p in model.named_parameters()
        }
        total = torch.linalg.vector_norm(
            torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        )
        opt.step()
        expected_params = {
            n: torch.linalg.vector_norm(p).item() for n, p in model.named_parameters()
        }
        record = mon.step(loss)
        opt.zero_grad()
        assert record.values["loss"] == pytest.approx(loss.item(), rel=1e-6)
        assert record.values["grad_norm"] == pytest.approx(total.item(), rel=1e-5)
        for name in expected_grads:
            assert record.values[f"grad_norm/{name}"] == pytest.approx(
                expected_grads[name], rel=1e-5
            )
            assert record.values[f"param_norm/{name}"] == pytest.approx(
                expected_params[name], rel=1e-5
            )
        assert record.values["lr/0"] == 0.1
    mon.close()


def test_update_ratio_equals_the_measured_parameter_change(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", update_every=2, progress=False)
    for i in range(5):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        record = mon.step(loss)
        opt.zero_grad()
        ratios = record.family("update_ratio")
        if i % 2:
            assert not ratios
            continue
        for n, p in model.named_parameters():
            delta = torch.linalg.vector_norm(p.detach() - before[n]) / torch.linalg.vector_norm(
                before[n]
            )
            assert ratios[n] == pytest.approx(delta.item(), rel=1e-4)
    mon.close()


def test_activation_rms_of_every_leaf_module(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    outputs = {}
    # Independent capture: the test's own hooks, on a step the Monitor also measures.
    handles = [
        m.register_forward_hook(lambda mod, a, out, n=n: outputs.__setitem__(n, out.detach()))
        for n, m in model.named_modules()
        if n
    ]
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", activation_every=1, progress=False)
    x, y = regression_batch(0)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    record = mon.step(loss)
    for h in handles:
        h.remove()
    rms = record.family("act_rms")
    assert set(rms) == {"0", "1", "2", "3", "4"}
    for n, out in outputs.items():
        assert rms[n] == pytest.approx(out.pow(2).mean().sqrt().item(), rel=1e-5)
    mon.close()


def test_every_records_only_every_nth_step(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with steadygrad.watch(model, opt, tmp_path / "run", every=3, progress=False) as mon:
        for i in range(10):
            x, y = regression_batch(i)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    steps, loss = steadygrad.load(tmp_path / "run").series("loss")
    assert steps.tolist() == [0, 3, 6, 9]
    assert all(math.isfinite(v) for v in loss)


def test_unused_parameter_has_no_gradient_norm(tmp_path):
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = tiny_mlp()
            self.extra = nn.Linear(2, 2)  # never used in forward

        def forward(self, x):
            return self.net(x)

    model = WithUnused()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        x, y = regression_batch(0)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        record = mon.step(loss)
    assert "grad_norm/extra.weight" not in record.values
    assert "param_norm/extra.weight" in record.values
