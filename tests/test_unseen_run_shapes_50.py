"""Run shapes from the fiftieth session.

Each change has a trigger (a held-out scenario it was found on, or a loop written here) and a
control that must not move."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import held_out_run, induced_or_skip, steadygrad
from torch import nn

from steadygrad.core import Record
from steadygrad.core.metrics import LOGIT_LSE_MEAN, OUTPUT_SHIFT_GRADIENT
from steadygrad.diagnose.detectors import GradientGrowth, GradNormSpikeDetector


def _causes(report) -> list[str]:
    return [d.cause for d in report.diagnoses]


class _Classifier(nn.Module):
    def __init__(self, classes: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _hand_written_ce(logits: torch.Tensor, y: torch.Tensor, lse: str) -> torch.Tensor:
    picked = logits.gather(1, y[:, None]).squeeze(1)
    partition = {
        "function": lambda: torch.logsumexp(logits, dim=-1),
        "method": lambda: logits.logsumexp(1),
        "tuple_dim": lambda: torch.logsumexp(logits, dim=(1,)),
        "detached_after": lambda: logits.logsumexp(-1).detach(),
        "detached_before": lambda: torch.logsumexp(logits.detach(), -1),
    }[lse]()
    return (partition - picked).mean()


def _first_step(tmp_path, lse: str) -> tuple[float, float, float, float]:
    """(recorded log-partition, its hand computation, recorded shift gradient, the logits' own
    gradient's shift over its size) at the first, due, step of a hand-written cross-entropy."""
    model = _Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 10, generator=g) * 3, torch.randint(0, 6, (32,), generator=g)
    with steadygrad.Monitor(model, opt, tmp_path / lse) as mon:
        logits = model(x)
        logits.retain_grad()
        loss = _hand_written_ce(logits, y, lse)
        loss.backward()
        opt.step()
        mon.step(float(loss))
    run = steadygrad.load(tmp_path / lse)
    grad = logits.grad.double()
    return (
        float(run.series(LOGIT_LSE_MEAN.name)[1][0]),
        float(logits.detach().double().logsumexp(-1).mean()),
        float(run.series(OUTPUT_SHIFT_GRADIENT.name)[1][0]),
        float(grad.sum() / grad.abs().sum()),
    )


@pytest.mark.parametrize(
    "lse", ["function", "method", "tuple_dim", "detached_after", "detached_before"]
)
def test_a_cross_entropy_written_with_logsumexp_reads_its_logits(tmp_path, lse):
    # Oracle: the logits' log-partition computed here, and the gradient autograd left on the
    # logits (cross-entropy's sums to zero over each row; with the log-partition detached only
    # the picked logit is pushed, all along their common shift: -1), whether the logsumexp was
    # taken of the logits or of a detached copy of them.
    recorded, computed, shift, oracle = _first_step(tmp_path, lse)
    assert recorded == pytest.approx(computed, rel=1e-5)
    assert shift == pytest.approx(oracle, abs=1e-6)
    assert shift == pytest.approx(-1.0 if lse.startswith("detached") else 0.0, abs=1e-6)


class _Router(nn.Module):
    """A router whose z-loss (a logsumexp of its scores) is taken inside the forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.router = nn.Linear(10, 4)
        self.out = nn.Linear(10, 1)
        self.z_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.router(x)
        self.z_loss = scores.logsumexp(-1).pow(2).mean()
        return self.out(x) * scores.softmax(-1)[:, :1]


class _Mixture(nn.Module):
    """A mixture of three equally weighted components whose means a layer predicts: its
    likelihood's logsumexp is over each component's log-density, no layer's raw scores."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.means = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.means(x)


@pytest.mark.parametrize("model_kind", ["router", "mixture"])
def test_a_logsumexp_that_is_no_output_is_not_read_as_logits(tmp_path, model_kind):
    # Control: a logsumexp inside the forward (a router's z-loss) or over a mixture's
    # log-likelihoods in the loss: no output-logit statistic is recorded at all.
    model = _Router() if model_kind == "router" else _Mixture()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    with steadygrad.Monitor(model, opt, tmp_path / model_kind) as mon:
        for _ in range(3):
            x, y = torch.randn(32, 10, generator=g), torch.randn(32, 1, generator=g)
            if model_kind == "router":
                loss = (model(x) - y).pow(2).mean() + 1e-3 * model.z_loss
            else:
                log_density = -0.5 * (y - model(x)).pow(2) - math.log(3)
                loss = -torch.logsumexp(log_density, -1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(float(loss))
    assert LOGIT_LSE_MEAN.name not in steadygrad.load(tmp_path / model_kind).names()


@pytest.mark.parametrize(
    "name", ["h353_ratcatcher_detached_logsumexp", "h369_zardozi_detached_logsumexp"]
)
def test_a_cross_entropy_with_its_logsumexp_detached_names_the_logits(tmp_path, name):
    # Trigger: the hand-written cross-entropy's log-partition is detached ("to save memory",
    # "for stability"): only the picked logit is pushed, nothing pulls the others down, and
    # the head's logits climb without bound.
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    top = report.top
    assert top.cause == "output_logit_divergence"
    assert top.where == ["head"]


def test_a_cross_entropy_written_with_logsumexp_trains_quietly(tmp_path):
    # Control: the same hand-written cross-entropy with its log-partition kept, on a
    # classifier that learns: no warning, no diagnosis.
    model = _Classifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(6, 10, generator=g) * 2
    with steadygrad.Monitor(model, opt, tmp_path / "run") as mon:
        for _ in range(200):
            y = torch.randint(0, 6, (64,), generator=g)
            x = centres[y] + torch.randn(64, 10, generator=g)
            loss = _hand_written_ce(model(x), y, "method")
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(float(loss))
    run = steadygrad.load(tmp_path / "run")
    assert LOGIT_LSE_MEAN.name in run.names()
    assert float(loss) < 0.5
    assert not run.findings()
    assert not steadygrad.diagnose(tmp_path / "run").diagnoses


def _first_step_then(losses_after: list[float], first_loss: float = 0.83) -> list:
    """A first step under plain SGD whose update was as large as the weights (update ratio
    1.5) with a gradient of 2, after which the gradient fell 10^4-fold, and the losses after."""
    det = GradientGrowth()
    first = {"grad_norm": 2.0, "grad_norm/w": 2.0, "update_ratio/w": 1.5, "param_norm": 4.0}
    rows = [{**first, "loss": first_loss}]
    rows += [{"grad_norm": 1e-4, "grad_norm/w": 1e-4, "param_norm": 9.0, "loss": x}
             for x in losses_after]  # fmt: skip
    found = []
    for step, values in enumerate(rows):
        meta = {"optimizer_family": "sgd"} if step == 0 else {}
        found += det.update(Record(step, values, meta=meta))
    return found


def test_a_first_step_after_which_the_loss_stalls_wrecked_the_weights():
    # Trigger: the update as large as the weights, the gradient gone, the loss stuck where it
    # was: the weights were thrown where nothing is learnt.
    found = _first_step_then([0.8, 0.8, 0.81, 0.8, 0.8, 0.8, 0.8])
    assert [(f.kind, f.step, f.severity) for f in found] == [("gradient_growth", 0, "critical")]


def test_a_first_step_that_took_the_loss_to_zero_wrecked_nothing():
    # Control: the same step took the loss from 0.83 to under a thousandth of it (well
    # separated classes, a sigmoid saturated at the right answers): the gradient vanished
    # with the loss, the step solved the task.
    assert _first_step_then([1e-5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]) == []


def test_a_nan_the_loss_makes_from_a_probability_rounded_to_one_is_named_there(tmp_path):
    # Trigger: a hand-written binary cross-entropy with no clamp on a Sigmoid's output; the
    # first step saturates it at the right answers (the loss to 0) and a probability rounds
    # to exactly 1: (1 - y) * log(1 - p) is 0 * -inf. The NaN is the loss's, made at that edge.
    name = "h373_geyser_unclamped_bce"
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    top = report.top
    assert top.cause == "nonfinite"
    assert top.where == ["prob"]
    assert "exactly 1 in a probability" in top.summary
    assert "exploding_gradients" not in _causes(report)


class _QNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(6, 32), nn.ReLU())
        self.q = nn.Linear(32, 4)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.q(self.body(s))


@pytest.mark.parametrize("penalty_first", [False, True])
def test_a_logsumexp_over_values_a_regression_loss_fits_is_not_read_as_logits(
    tmp_path, penalty_first
):
    # Control: conservative Q-learning's penalty, logsumexp(q) - q[a], beside the TD loss that
    # fits q[a] to its targets: Q-values have a size of their own (the returns), their
    # log-partition is no softmax's; whichever term the loop computes first, none is read.
    model = _QNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(3)
    with steadygrad.Monitor(model, opt, tmp_path / "cql") as mon:
        for _ in range(3):
            s, a = torch.randn(32, 6, generator=g), torch.randint(0, 4, (32, 1), generator=g)
            target = 5.0 + torch.randn(32, 1, generator=g)
            q = model(s)
            q_taken = q.gather(1, a)
            if penalty_first:
                penalty = (torch.logsumexp(q, 1) - q_taken.squeeze(1)).mean()
                loss = penalty + torch.nn.functional.mse_loss(q_taken, target)
            else:
                td = torch.nn.functional.mse_loss(q_taken, target)
                loss = td + (torch.logsumexp(q, 1) - q_taken.squeeze(1)).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(float(loss))
    assert LOGIT_LSE_MEAN.name not in steadygrad.load(tmp_path / "cql").names()


@pytest.mark.parametrize("name", ["h42_cql_healthy_radam"])
def test_a_conservative_q_learner_stays_quiet(tmp_path, name):
    # Control: a healthy CQL run whose Q-values rise to the returns they learn.
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert not report.diagnoses


class _VarianceNLL(nn.Module):
    """A Gaussian NLL holding its learnt variance itself (no softplus, no clamp)."""

    def __init__(self) -> None:
        super().__init__()
        self.var = nn.Parameter(torch.tensor(1.0))

    def forward(self, mean: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 0.5 * (torch.log(self.var) + (y - mean).pow(2) / self.var).mean()


class _Regressor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 1)
        self.nll = _VarianceNLL()  # called by the loop, outside forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_a_nan_a_loss_module_makes_is_placed_there_though_its_update_moved_it_back(tmp_path):
    # Trigger: the variance crossed zero (-1e-3), log of it is NaN; its gradient, 1/var, is
    # finite and large, and the update moves it back above zero. Replayed with the moved
    # variance the loss would be finite: the module is replayed as it was before the update.
    model = _Regressor()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(4)
    crossed = {}
    with steadygrad.Monitor(model, opt, tmp_path / "run") as mon:
        for step in range(30):
            x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
            if step == 20:
                with torch.no_grad():
                    model.nll.var.fill_(-1e-3)
            loss = model.nll(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(float(loss))
            if not torch.isfinite(loss):
                crossed["after"] = float(model.nll.var)
                break
    assert crossed["after"] > 0  # the oracle: the update took it back across zero
    nan = [f for f in steadygrad.load(tmp_path / "run").findings() if f.kind == "nonfinite"]
    origin = nan[0].evidence["forward_origin"]
    assert nan[0].step == 20
    assert origin["module"] == "nll"
    assert "nll's own as before it" in origin["weights"]


def test_a_loss_module_whose_variance_crossed_zero_is_named(tmp_path):
    name = "h370_tiler_raw_variance_log"
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite"
    assert report.top.where == ["nll"]


class _Edge(nn.Module):
    """``sqrt(h^2)``, its epsilon left out: its derivative at an exact zero is 0/0."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(h * h)


class _TwoViews(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 16)
        self.act = nn.Tanh()
        self.edge = _Edge()
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.edge(self.act(self.fc(x))))


def test_a_nan_gradient_one_forward_of_two_made_is_placed_at_its_module(tmp_path):
    # Trigger: the loop runs the model twice a step (two views, both in the loss); at step 10
    # the second view's edge meets exact zeros (a row of inputs all zero through a layer whose
    # bias was just reset), where its backward makes 0/0; the first view's, shifted, does not.
    # The second's backward runs first: the first's outputs, whose gradients arrive later, do
    # not hide that the second's edge took a finite gradient and gave a NaN one.
    model = _TwoViews()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(5)
    with steadygrad.Monitor(model, opt, tmp_path / "run") as mon:
        for step in range(12):
            x, y = torch.randn(16, 4, generator=g), torch.randn(16, 1, generator=g)
            if step == 10:
                x[0] = 0.0
                with torch.no_grad():
                    model.fc.bias.zero_()
            first, second = model(x + 0.01), model(x)
            loss = F.mse_loss(first, y) + F.mse_loss(second, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(float(loss))
    nan = [f for f in steadygrad.load(tmp_path / "run").findings() if f.kind == "nonfinite"]
    assert nan[0].step == 10 and math.isfinite(nan[0].evidence["loss"])
    origin = nan[0].evidence["forward_origin"]
    assert origin["module"] == "edge"
    assert "its outputs' gradients were finite" in origin["in_the_backward"]


def test_a_basis_sum_that_underflowed_in_the_second_layer_is_placed_there(tmp_path):
    # The held-out run: a Kolmogorov-Arnold network normalises its bases by their sum with no
    # epsilon; the loop runs the model a second time that step (its own check), and the
    # second layer's backward is where the gradient went non-finite.
    name = "h374_nixtamal_kan_zero_over_zero"
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite"
    assert report.top.where == ["layer2"]


def test_logits_a_learnt_scale_multiplies_a_millionfold_are_a_collapse_not_an_explosion(tmp_path):
    # Trigger: CLIP's logit scale initialised as 1/0.07 where its log was meant: the module
    # that applies it (after the projection, the last layer with a weight matrix) multiplies
    # the similarities by exp(14.3), and the softmax over them is one-hot from the first step.
    # A module that makes the logits the loss reads is no hidden layer amplifying the signal.
    name = "h378_rokkaku_logit_scale_init"
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert report.top.cause == "softmax_collapse"
    assert report.top.where == ["logits"]
    assert "exploding_gradients" not in _causes(report)


class _Distance(nn.Module):
    """A Euclidean distance written by hand, no epsilon: sqrt's derivative at 0 is infinite."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(((a - b) ** 2).sum(-1))


class _Siamese(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        self.dist = _Distance()  # called by the loop, on two of the model's outputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


def test_a_nan_gradient_a_module_makes_from_two_outputs_the_loop_fed_it_is_placed_there(tmp_path):
    # Trigger: a triplet loss whose positive falls back to the anchor itself at step 8: the
    # distance is exactly 0 and sqrt's backward is 0/0, while the loss stays finite. The loop
    # called the distance module on the encoder's outputs: replayed, it takes the replay's
    # outputs (the step's own graph is spent), and the trace finds it.
    model = _Siamese()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(6)
    with steadygrad.Monitor(model, opt, tmp_path / "run") as mon:
        for step in range(10):
            a, p, n = (torch.randn(16, 8, generator=g) for _ in range(3))
            if step == 8:
                p[:2] = a[:2]
            za, zp, zn = model(a), model(p), model(n)
            loss = F.relu(model.dist(za, zp) - model.dist(za, zn) + 1.0).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(float(loss))
    nan = [f for f in steadygrad.load(tmp_path / "run").findings() if f.kind == "nonfinite"]
    assert nan[0].step == 8 and math.isfinite(nan[0].evidence["loss"])
    assert nan[0].evidence["forward_origin"]["module"] == "dist"


def test_a_triplet_distance_at_zero_is_named_at_the_distance_module(tmp_path):
    name = "h386_harness_racing_self_positive"
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite"
    assert report.top.where == ["dist"]


def _spike_after_fitting(spike: float) -> list:
    """Gradient norms of 1.0 over the first steps, settling to 0.05 as the loss falls from 1.5
    to 0.01, then one step at ``spike`` whose loss rises to 0.15 (a hard batch)."""
    det, found = GradNormSpikeDetector(), []
    for step in range(130):
        norm = 1.0 if step < 20 else 0.05 * (1 + 0.1 * math.sin(step))
        loss = 1.5 * math.exp(-step / 10) + 0.01
        if step == 124:
            norm, loss = spike, 0.15
        found += det.update(Record(step, {"grad_norm": norm, "loss": loss}))
    return [(f.step, f.severity) for f in found]


def test_a_spike_as_large_as_the_opening_gradients_is_no_warning():
    # Control: a fitted classifier meets a hard batch: its gradient is 19x the settled level,
    # yet no larger than the median of those the run began with and trained through.
    assert _spike_after_fitting(0.95) == [(124, "info")]


def test_a_spike_past_the_opening_gradients_is_a_warning():
    # Trigger: the same step with a gradient five times those the run began with.
    assert _spike_after_fitting(5.0) == [(124, "warning")]


def test_a_loss_thrown_up_by_its_first_steps_is_scaled_from_its_first_value():
    # Oracle by hand: a loss at 0.7 before any update, thrown to 21 and 408 by the first
    # steps (a rate typed high), back to a best of 0.3. Its progress is counted from 0.7:
    # scale max(0.3, (0.7 - 0.3) / 4) = 0.3, so 0.4 is a tenth of it above its best (stalled);
    # from the median of its thrown first values (21) the scale would be 5.2, and nothing
    # short of 0.82 would read as stalled.
    from steadygrad.diagnose.detectors.trends import SustainedLevel, loss_stalled

    level = SustainedLevel()
    for x in [0.7, 21.0, 408.0, 244.0, 22.0, 4.5, 0.3, 0.3, 0.3, 0.3, 0.3]:
        level.add(x)
    assert level.first == 0.7 and level.start == 21.0 and level.floor == pytest.approx(0.3)
    assert level.scale() == pytest.approx(0.3)
    for x in [0.4, 0.4, 0.4]:
        level.add(x)
    assert loss_stalled(level, noise_z=0.0)


def test_a_loss_that_started_high_keeps_its_progress_as_its_scale():
    # Control: a loss falling from 5 to 0.1 with no throw: scale (5 - 0.1) / 4 as before.
    from steadygrad.diagnose.detectors.trends import SustainedLevel

    level = SustainedLevel()
    for x in [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1, 0.1, 0.1]:
        level.add(x)
    assert level.scale() == pytest.approx((4.0 - 0.1) / 4)


def _dead_layer_readings(losses_after: list[float]) -> list:
    """A layer 70% dead from its second reading on (10% at its first, a reading every ten
    steps); the loss stalls above an early best as they die, then ``losses_after``."""
    from steadygrad.diagnose.detectors import PlasticityLoss

    det, found, step = PlasticityLoss(), [], 0
    losses = [1.0, 0.5, 0.5, 0.5, 0.5] + [0.9] * 25 + losses_after
    for i, loss in enumerate(losses):
        values = {"loss": loss}
        if i % 10 == 9:
            values["dead_units/fc2"] = 0.1 if i < 10 else 0.7
        found += det.update(Record(step, values))
        step += 1
    return [(f.step, f.severity) for f in found]


def test_dead_units_are_found_again_where_the_loss_stalls_after_learning_past_them():
    # Trigger: found as the loss stalls; the loss then learns on to a new best with them
    # still dead, and stalls again: a second finding, where they cost it.
    found = _dead_layer_readings([0.3] * 30 + [0.6] * 30)
    assert found == [(29, "warning"), (69, "warning")]


def test_dead_units_are_not_found_again_while_the_loss_keeps_improving():
    # Control: the loss goes on improving to the end: no second finding.
    assert _dead_layer_readings([0.3] * 30 + [0.2] * 30) == [(29, "warning")]


@pytest.mark.parametrize(
    "name",
    [
        # the first steps threw the loss to 400 and back: its scale is counted from 0.69
        "h382_cricket_swing_dead_relus",
        # units killed early; the loss learnt on past them, then stalled with them dead
        "h385_pleacher_cut_sgd_lr_typo_dead_relu",
        "h379_pewter_rmsprop_lr_typo",
    ],
)
def test_units_a_rate_typed_high_killed_are_named_where_the_loss_stalls(tmp_path, name):
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert report.top.cause == "loss_of_plasticity"
    assert "act2" in report.top.where or "fc2" in report.top.where


def test_of_two_heads_at_zero_the_one_that_crossed_it_is_named(tmp_path):
    # Trigger: a mean head and a variance head stacked into one output; at the NaN step the
    # mean head holds 6 negatives in 64 (a signed quantity), the variance head 1 (it crossed
    # zero, its log is NaN): the variance head is named.
    name = "h382_pinch_pot_unclamped_variance"
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite"
    assert report.top.where == ["var_head"]


def test_two_heads_as_near_zero_as_each_other_are_left_unplaced():
    # Control: shares at zero's edge within 5x of each other tell nothing apart.
    from steadygrad.monitor.activations import _fewest_crossed

    close = [("mean", "3 negative", 3 / 64), ("var", "1 negative", 1 / 64)]
    assert _fewest_crossed(close) == close
    apart = [("mean", "6 negative", 6 / 64), ("var", "1 negative", 1 / 64)]
    assert _fewest_crossed(apart) == [apart[1]]


def _frozen_layer_readings(losses_after: list[float]) -> list:
    """A tensor that never moves (update ratio 0) beside one that does; the loss stalls above
    an early best, then ``losses_after``."""
    from steadygrad.diagnose.detectors import UpdateRatioOutOfRange

    det, found = UpdateRatioOutOfRange(), []
    losses = [1.0, 0.5, 0.5, 0.5, 0.5] + [0.9] * 25 + losses_after
    for step, loss in enumerate(losses):
        values = {"loss": loss, "update_ratio/enc.weight": 0.0, "update_ratio/head.weight": 1e-3}
        found += det.update(Record(step, values))
    return [(f.step, f.where, f.severity) for f in found]


def test_a_frozen_layer_is_found_again_where_the_loss_stalls_after_learning_past_it():
    # Trigger: found frozen at once; the head learns on to a new best and the loss stalls
    # again with the layer still frozen: a second finding, where the frozen layer costs it.
    found = _frozen_layer_readings([0.3] * 30 + [0.6] * 30)
    assert found == [(2, "enc.weight", "warning"), (62, "enc.weight", "warning")]


def test_a_frozen_layer_is_not_found_again_while_the_loss_keeps_improving():
    # Control: the loss improves to the end: the frozen layer is found once.
    assert [s for s, _, _ in _frozen_layer_readings([0.3] * 30 + [0.2] * 30)] == [2]


def test_a_recurrence_clipped_hard_all_run_far_over_its_loss_exploded_through_time(tmp_path):
    # Trigger: a GRU language model with its recurrent weights at std 1 (for 1/sqrt(48)),
    # clipped at 1 every step from gradients of 30-230: under the weights' norm (85), so the
    # old bar (10x the weights) never saw it, but 20x its loss in a known recurrence.
    name = "h395_flag_hoist_gru_recurrent_init"
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    top = report.top
    assert top.cause == "exploding_gradients" and top.where == ["cell"]
    assert top.evidence["over_loss"] >= 10 and top.evidence["clipped_share"] >= 0.9


def test_a_recurrence_clipped_gently_near_its_loss_is_quiet(tmp_path):
    # Control: the GRU language model with its hidden state detached between chunks and a
    # clip at 0.5: its gradient stands near its loss; no diagnosis.
    name = "h395_heliograph_gru_lm_control"
    ctx, report = held_out_run(tmp_path, name)
    induced_or_skip(ctx)
    assert not report.diagnoses
