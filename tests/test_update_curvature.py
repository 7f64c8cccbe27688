"""The directional sharpness ratio against a dense Hessian: (1 - r)/2 = λ_u / (2/lr) for GD.

Oracle: ``torch.autograd.functional.hessian`` of the full-batch loss, and the update the
optimizer actually made."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import hessian
from torch.nn.utils import parameters_to_vector

import steadygrad


def _loss_of(model, x, y):
    return lambda: torch.nn.functional.mse_loss(model(x), y)


def _dense(model, x, y):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = parameters_to_vector(model.parameters()).detach()

    def f(v):
        params, k = {}, 0
        for name, shape in zip(names, shapes, strict=True):
            params[name] = v[k : k + shape.numel()].view(shape)
            k += shape.numel()
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, params, (x,)), y)

    return hessian(f, flat)


@pytest.mark.parametrize("model_kind", ["linear", "tanh_mlp"])
def test_ratio_equals_rayleigh_quotient_along_the_update(tmp_path, model_kind):
    torch.manual_seed(0)
    x, y = torch.randn(64, 5, dtype=torch.float64), torch.randn(64, 1, dtype=torch.float64)
    if model_kind == "linear":
        model = torch.nn.Linear(5, 1).double()
    else:
        model = torch.nn.Sequential(
            torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)
        ).double()
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    expected, got = [], []
    with steadygrad.watch(model, opt, tmp_path / model_kind, progress=False) as mon:
        for _ in range(6):
            loss = _loss_of(model, x, y)()
            loss.backward()
            before = parameters_to_vector(model.parameters()).detach().clone()
            h = _dense(model, x, y)  # the Hessian where the step starts
            opt.step()
            u = parameters_to_vector(model.parameters()).detach() - before
            expected.append(float(u @ h @ u / (u @ u)) / (2 / lr))
            record = mon.step(loss)
            got.append(record.values.get("directional_sharpness_ratio"))
            opt.zero_grad()
    # the value recorded at step t describes the update of step t-1
    got = got[1:]
    expected = expected[:-1]
    tol = 1e-9 if model_kind == "linear" else 0.05  # exact on a quadratic, Taylor otherwise
    assert got == pytest.approx(expected, rel=tol)


def test_above_the_limit_the_ratio_exceeds_one_and_below_it_does_not(tmp_path):
    """GD on a quadratic with top eigenvalue λ: lr above 2/λ gives ratios above 1 (the run
    diverges), lr at half the limit ratios below 1."""
    torch.manual_seed(1)
    x = torch.randn(128, 4, dtype=torch.float64) * torch.tensor([3.0, 1.0, 1.0, 0.5]).double()
    y = torch.randn(128, 1, dtype=torch.float64)
    top = float(torch.linalg.eigvalsh(2 * x.T @ x / 128).max())
    for factor, above in ((1.3, True), (0.5, False)):
        model = torch.nn.Linear(4, 1, bias=False).double()
        opt = torch.optim.SGD(model.parameters(), lr=factor * 2 / top)
        ratios = []
        run_dir = tmp_path / f"f{factor}"
        with steadygrad.watch(model, opt, run_dir, progress=False, activation_every=1) as mon:
            for _ in range(25):
                loss = _loss_of(model, x, y)()
                loss.backward()
                opt.step()
                ratios.append(mon.step(loss).values.get("directional_sharpness_ratio"))
                opt.zero_grad()
        late = [r for r in ratios[15:] if r is not None]
        assert late
        assert all(r > 1 for r in late) if above else all(r < 1 for r in late)


def test_readings_every_step_once_the_loss_climbs_and_only_on_cadence_before(tmp_path):
    """GD on a quadratic at half its stability limit, then (step 60) at 1.5x: the smoothed loss
    climbs, and the ratio is read at every step from then on, each reading above 1 (the step
    size is why); before, only on the cadence."""
    torch.manual_seed(1)
    x = torch.randn(128, 4, dtype=torch.float64) * torch.tensor([3.0, 1.0, 1.0, 0.5]).double()
    y = torch.randn(128, 1, dtype=torch.float64)
    top = float(torch.linalg.eigvalsh(2 * x.T @ x / 128).max())
    model = torch.nn.Linear(4, 1, bias=False).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5 * 2 / top)
    read, losses = [], []
    with steadygrad.watch(model, opt, tmp_path / "r", progress=False, activation_every=25) as mon:
        for step in range(90):
            if step == 60:  # the rate jumps past the limit; a small kick seeds the top direction
                opt.param_groups[0]["lr"] = 1.5 * 2 / top
                with torch.no_grad():
                    model.weight.add_(1e-3 * torch.randn_like(model.weight))
            loss = _loss_of(model, x, y)()
            loss.backward()
            opt.step()
            record = mon.step(loss)
            losses.append(float(loss))
            if "directional_sharpness_ratio" in record.values:
                read.append((step, record.values["directional_sharpness_ratio"]))
            opt.zero_grad()
    steps = [s for s, _ in read]
    assert [s for s in steps if 12 < s < 60] == [26, 51]  # the cadence while the loss falls
    rising = next(s for s in range(61, 90) if losses[s] > 1.5 * min(losses[:60]))
    late = [(s, r) for s, r in read if s > rising + 3]
    assert [s for s, _ in late] == list(range(rising + 4, 90))
    assert all(r > 1 for _, r in late)
