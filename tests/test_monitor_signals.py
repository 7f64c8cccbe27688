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


def test_activation_rms_after_an_in_place_relu_and_beside_another_model(tmp_path):
    """Each tensor's norm is measured once while its values stay as they were: the output a
    ReLU(inplace=True) changes is measured again, the input many modules read is not needed
    twice; a module of another model called in the step is not recorded."""
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(inplace=True), nn.Linear(8, 2))
    other = nn.Linear(2, 2)  # e.g. a target network run inside the step
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", activation_every=1, progress=False)
    x, y = regression_batch(0)
    x = x[:, :6]
    with torch.no_grad():  # the hand computation, before the step changes anything
        pre = model[0](x)
        post = torch.relu(pre)
        out = model[2](post)
    loss = nn.functional.mse_loss(model(x) + 0 * other(x[:, :2]).sum(), y[:, :2])
    loss.backward()
    opt.step()
    rms = mon.step(loss).family("act_rms")
    assert set(rms) == {"0", "1", "2"}  # none of the other model's
    assert rms["0"] == pytest.approx(pre.pow(2).mean().sqrt().item(), rel=1e-5)
    assert rms["1"] == pytest.approx(post.pow(2).mean().sqrt().item(), rel=1e-5)
    assert rms["1"] < rms["0"]  # the ReLU zeroed some: the cached norm was not reused
    assert rms["2"] == pytest.approx(out.pow(2).mean().sqrt().item(), rel=1e-5)
    mon.close()


def test_activation_cadence_stretches_with_the_module_count(tmp_path):
    """25 steps per 1,000 modules begun, unless given: a due step visits every module call."""
    opt_for = lambda m: torch.optim.SGD(m.parameters(), lr=0.01)  # noqa: E731
    small = tiny_mlp()
    big = nn.Sequential(*[nn.Identity() for _ in range(2400)], nn.Linear(4, 1))  # 2,402 modules
    cases = [(small, None, 25), (big, None, 75), (big, 10, 10)]
    for k, (model, given, expected) in enumerate(cases):
        kwargs = {} if given is None else {"activation_every": given}
        with steadygrad.watch(model, opt_for(model), tmp_path / f"r{k}", progress=False, **kwargs):
            pass
        config = steadygrad.load(tmp_path / f"r{k}").config
        assert config["activation_every"] == expected


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
