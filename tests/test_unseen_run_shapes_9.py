"""Run shapes the thirteenth wave's runs showed, each a trigger and a control: a layer unfrozen
after the optimizer was built without it (gradients that nothing applies), next to a layer kept
frozen, a layer unfrozen and added to the optimizer, and a discriminator frozen at attach that
its own optimizer trains; units dead long before a sudden NaN; a NaN made in the loss from an
output that underflowed, next to a NaN target; a gradient norm that never came back; tanh units
saturated by an input column in the wrong unit, next to the same column in the right one; a
spike SPAM clipped, next to the same spike under Adam; gradients growing out of a flat start
while the loss fell, next to the same growth with the loss climbing."""

from __future__ import annotations

import pytest
import torch
from helpers import regression_batch
from torch import nn

import steadygrad


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _train(tmp_path, name, unfreeze_at=None, add_to_optimizer=False, steps=60):
    """The first layer frozen, the optimizer built over what requires a gradient; at
    ``unfreeze_at`` the layer is unfrozen (and, with ``add_to_optimizer``, given its own group).
    Returns the run's diagnosis and the first layer's weight change over the run."""
    model = _net()
    model[0].requires_grad_(False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    start = model[0].weight.detach().clone()
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for step in range(steps):
            if step == unfreeze_at:
                model[0].requires_grad_(True)
                if add_to_optimizer:
                    opt.add_param_group({"params": list(model[0].parameters())})
            x, y = regression_batch(step)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    moved = (model[0].weight.detach() - start).norm().item()
    return steadygrad.diagnose(tmp_path / name), moved


def test_a_layer_unfrozen_after_the_optimizer_was_built_is_named(tmp_path):
    report, moved = _train(tmp_path, "stray", unfreeze_at=20)
    assert moved == 0.0  # by construction: nothing trains it
    assert report.top.cause == "update_ratio_out_of_range", report.causes()
    assert set(report.top.where) == {"0.weight", "0.bias"}
    assert report.top.first_step >= 20
    finding = next(f for f in steadygrad.load(tmp_path / "stray").findings() if f.where)
    assert finding.evidence["direction"] == "not_in_optimizer"


def test_a_layer_kept_frozen_or_unfrozen_into_the_optimizer_is_not(tmp_path):
    kept, _ = _train(tmp_path, "kept")
    assert "update_ratio_out_of_range" not in kept.causes()
    added, moved = _train(tmp_path, "added", unfreeze_at=20, add_to_optimizer=True)
    assert moved > 0.0  # trained once it joined the optimizer
    assert "update_ratio_out_of_range" not in added.causes()


def test_a_discriminator_its_own_optimizer_trains_is_not_a_stray(tmp_path):
    torch.manual_seed(0)
    gen, disc = nn.Linear(4, 6), nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 1))
    both = nn.ModuleDict({"gen": gen, "disc": disc})
    opt_g = torch.optim.Adam(gen.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-3)
    disc.requires_grad_(False)  # frozen for the generator's step, as GAN loops toggle it
    data = torch.Generator().manual_seed(1)
    with steadygrad.watch(both, opt_g, tmp_path / "gan", progress=False) as mon:
        for _ in range(40):
            real = torch.randn(16, 6, generator=data) + 2.0
            fake = gen(torch.randn(16, 4, generator=data))
            disc.requires_grad_(True)
            d_loss = nn.functional.softplus(-disc(real)).mean()
            d_loss = d_loss + nn.functional.softplus(disc(fake.detach())).mean()
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()  # its gradients stay until its next step: seen at mon.step
            disc.requires_grad_(False)
            g_loss = nn.functional.softplus(-disc(fake)).mean()
            g_loss.backward()
            opt_g.step()
            mon.step(g_loss)
            opt_g.zero_grad()
    assert all(p.grad is not None for p in disc.parameters())
    found = steadygrad.load(tmp_path / "gan").findings()
    assert not [f for f in found if f.evidence.get("direction") == "not_in_optimizer"]


def test_units_dead_long_before_a_sudden_nan_do_not_explain_it(tmp_path):
    # a ReLU layer found dead at 24 and read again (unchanged) up to 168, the loss improving
    # all along; one bad sample makes a NaN at 170, its producer named on a replay: the run
    # was still learning when it broke, so the dead layer explains nothing of the break
    from helpers import diagnose_stored

    rows = [{"loss": 2.0 - 0.01 * t if t < 170 else float("nan")} for t in range(180)]
    dead = [
        ("loss_of_plasticity", s, "body.2", {"reason": "dying_units"}, "warning")
        for s in (24, 60, 120, 168)
    ]
    origin = {"module": "sigma_head", "replayed": True}
    nan = ("nonfinite", 170, "sigma_head", {"forward_origin": origin}, "critical")
    report = diagnose_stored(tmp_path, "sudden", rows, [*dead, nan])
    assert report.top.cause == "nonfinite" and report.top.where == ["sigma_head"]
    plasticity = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    assert plasticity.confidence == "low" and "non-finite value" in plasticity.why


class ScaleHead(nn.Module):
    """A positive scale as exp of a read-out (a mixture density net's sigma head, here the
    precision's parametrisation: exp(-a))."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 1)

    def forward(self, h):
        return torch.exp(-self.lin(h))


class GaussianRegressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 8), nn.ReLU())
        self.mean = nn.Linear(8, 1)
        self.scale = ScaleHead()
        with torch.no_grad():  # a large feature shrinks the scale
            self.scale.lin.weight.uniform_(0.1, 0.5)

    def forward(self, x):
        h = self.body(x)
        return self.mean(h), self.scale(h)


def _underflowing_input(model):
    """An input far out along the direction on which the scale falls fastest (to exactly 0 in
    float32): one sample logged in the wrong unit."""
    angles = torch.linspace(0, 2 * torch.pi, 17)[:-1]
    rays = 1e5 * torch.stack([angles.cos(), angles.sin()], 1)
    with torch.no_grad():
        far = rays[model.scale(model.body(rays)).argmin()]
        assert model.scale(model.body(far[None])).item() == 0.0
    return far


def _nll_run(tmp_path, name, bad):
    """A Gaussian negative log-likelihood ``log(sigma) + (y - mu)^2 / (2 sigma^2)``; at step 30,
    ``bad == "scale"``: one sample far out, on which the scale's read-out is far negative, so
    its exp underflows to exactly 0 and the loss divides by it; ``bad == "target"``: one target NaN."""
    torch.manual_seed(0)
    model = GaussianRegressor()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for step in range(40):
            x = torch.randn(16, 2, generator=gen)
            y = x.sum(1, keepdim=True)
            if step == 30 and bad == "scale":
                x[3] = _underflowing_input(model)
            if step == 30 and bad == "target":
                y[3] = float("nan")
            mu, sigma = model(x)
            loss = (torch.log(sigma) + (y - mu) ** 2 / (2 * sigma**2)).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return next(f for f in steadygrad.load(tmp_path / name).findings() if f.kind == "nonfinite")


def test_a_nan_made_in_the_loss_from_an_underflowed_output_names_that_output(tmp_path):
    found = _nll_run(tmp_path, "scale", bad="scale")
    assert found.step == 30 and found.where == "scale"
    origin = found.evidence["forward_origin"]
    assert origin["replayed"] and "exact zero" in origin["in_the_loss"]
    # a NaN target: the forward is finite and no output is at an edge: no module is blamed
    found = _nll_run(tmp_path, "target", bad="target")
    assert found.step == 30 and found.where is None
    assert "after the model's output" in found.evidence["forward_origin"]["note"]


@pytest.mark.parametrize("came_back", [True, False])
def test_a_gradient_norm_that_never_came_back_was_no_spike(tmp_path, came_back):
    # the gradient norm jumps 8x at step 50; it comes back at once (a spike), or rises on by
    # 5x a step with the loss until the run breaks (the first step of a runaway)
    from helpers import diagnose_stored

    def grad(t):
        if t < 50 or (came_back and t > 50):
            return 1.0
        return 8.0 * 5.0 ** (t - 50)

    rows = [
        {"loss": 1.0 if t < 50 or came_back else 1.0 * 3.0 ** (t - 49), "grad_norm": grad(t)}
        for t in range(60 if came_back else 57)
    ]
    spike = ("grad_norm_spike", 50, None, {"grad_norm": 8.0, "baseline": 1.0}, "warning")
    findings = [spike]
    if not came_back:
        findings.append(("loss_divergence", 52, None, {"ratio": 9.0}, "critical"))
    report = diagnose_stored(tmp_path, str(came_back), rows, findings)
    spiked = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert ("never came back" in spiked.why) is not came_back
    assert (report.top.cause == "gradient_spike") is came_back


def _tanh_regressor_run(tmp_path, name, scale):
    """A tanh MLP regressing sin of an angle; ``scale`` multiplies the angle column (in degrees,
    57x: the hidden tanh units sit in their flat tails and pass almost no gradient)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for _ in range(150):
            angle = torch.rand(64, 1, generator=gen) * 6.28 - 3.14
            x = torch.cat([angle * scale, torch.ones_like(angle)], 1)
            loss = nn.functional.mse_loss(model(x), torch.sin(angle))
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.diagnose(tmp_path / name), steadygrad.load(tmp_path / name)


def test_tanh_units_saturated_by_an_unscaled_input_are_lost_plasticity(tmp_path):
    report, run = _tanh_regressor_run(tmp_path, "degrees", scale=57.3)
    _, share = run.series("saturated/0")
    assert (share >= 0.9).mean() >= 0.5  # the case is the one built: mostly in the tails
    assert report.top.cause == "loss_of_plasticity" and report.top.where == [
        "0",
        "1",
    ]  # and its tanh
    found = next(f for f in run.findings() if f.kind == "loss_of_plasticity")
    assert found.evidence["reason"] == "saturated_units"
    report, run = _tanh_regressor_run(tmp_path, "radians", scale=1.0)
    assert run.series("saturated/0")[1].max() < 0.5
    assert not [d for d in report.diagnoses if d.severity != "info"]


@pytest.mark.parametrize("optimizer", ["Adam", "SPAM"])
def test_a_spike_that_spam_clipped_did_not_poison_its_moments(tmp_path, optimizer):
    # one step's gradients 1000x: Adam's second moment takes the spike's square and damps the
    # updates for hundreds of steps; SPAM clips the spike to sqrt(theta * v) first, so its v
    # rises at most 1 + theta * (1 - beta2) = 6x and the updates shrink to about 0.4 at most
    from steadygrad import optim as sgo

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3))
    make = {"Adam": torch.optim.Adam, "SPAM": sgo.SPAM}[optimizer]
    opt = make(model.parameters(), lr=1e-3)
    with steadygrad.watch(model, opt, tmp_path / optimizer, progress=False) as mon:
        for step in range(260):
            x, y = regression_batch(step % 32)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            if step == 120:
                for p in model.parameters():
                    p.grad.mul_(1000.0)
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    report = steadygrad.diagnose(tmp_path / optimizer)
    expected = "adam_second_moment_poisoned" if optimizer == "Adam" else "gradient_spike"
    assert report.top.cause == expected, report.causes()


@pytest.mark.parametrize("learned", [True, False])
def test_gradients_growing_out_of_a_flat_start_while_the_loss_fell_are_not_exploding(learned):
    # the gradient norm sits at 0.1 for the first records (a flat start) and grows 20x by
    # step 100; the loss falls from 1.4 to 0.5, then bounces back to 0.95 (half its progress
    # given back): a model that left its flat start; the control's loss climbs above 1.4
    from steadygrad.core import Record
    from steadygrad.diagnose.detectors.trends import GradientGrowth

    detector, found = GradientGrowth(), []
    for t in range(140):
        grad = 0.1 if t < 8 else 0.1 * 20.0 ** min(1.0, (t - 8) / 92)
        if learned:
            loss = 1.4 - 0.9 * min(t, 60) / 60 + (0.45 if t >= 80 else 0.0)
        else:
            loss = 1.4 + 0.01 * t
        found += detector.update(Record(t, {"grad_norm": grad, "loss": loss}))
    assert bool(found) is not learned
