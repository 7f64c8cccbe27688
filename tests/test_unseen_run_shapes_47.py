"""Run shapes from the forty-seventh session.

Each change has a trigger (a run built to show it, or a held-out scenario it was found on) and a
control that must not move."""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from helpers import diagnose_stored, held_out_run, induced_or_skip, steadygrad
from torch import nn

from steadygrad.core.metrics import ACTIVATION_MODULES


class DyingNet(nn.Module):
    """A layer whose ReLU runs in an activation module (``act1``) or as a function."""

    def __init__(self, module_relu: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = nn.Linear(8, 32)
        self.act1 = nn.ReLU() if module_relu else None
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.head(self.act1(h) if self.act1 is not None else F.relu(h))


def _killed_at(tmp_path, model: nn.Module, step: int = 40, steps: int = 150):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 8, generator=g), torch.randint(0, 5, (128,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for t in range(steps):
            if t == step:
                with torch.no_grad():  # a bad re-initialisation: every unit of fc1 dies
                    model.fc1.bias.fill_(-100.0)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.load(tmp_path / "run").config, steadygrad.diagnose(tmp_path / "run")


@pytest.mark.parametrize("module_relu", [True, False])
def test_dead_units_are_named_at_their_layer_and_the_activation_module_that_read_them(
    tmp_path, module_relu
):
    # Trigger: fc1's units all dead from step 40, their ReLU an nn.ReLU module: the layer is
    # named first, then the module the user sees them dead at (held-out truths name either).
    # Control: the same ReLU called as a function has no module of its own: the layer alone.
    model = DyingNet(module_relu)
    config, report = _killed_at(tmp_path, model)
    with torch.no_grad():  # the oracle: no unit of fc1 passes its ReLU any more
        assert (model.fc1(torch.randn(128, 8)) <= 0).all()
    top = report.top
    assert top.cause == "loss_of_plasticity"
    if module_relu:
        assert config[ACTIVATION_MODULES] == {"fc1": "act1"}
        assert top.where == ["fc1", "act1"]
        assert top.evidence["activation_modules"] == {"fc1": "act1"}
    else:
        assert ACTIVATION_MODULES not in config
        assert top.where == ["fc1"]


def test_a_scale_parameter_on_the_logits_is_named_with_the_layer_that_makes_them(tmp_path):
    # Trigger: set 241's cosine classifier, logits = exp(logit_scale) x cos(features, class
    # directions), its learnable scale initialised at 10 instead of log(10): rows collapse from
    # the first step. The scale sets their size; the head (whose weight the class directions
    # are, used as a function) makes them: both are named, the scale first.
    ctx, report = held_out_run(tmp_path, "h241_silk_reel_logit_scale_not_logged")
    induced_or_skip(ctx)
    assert report.top.cause == "softmax_collapse"
    assert report.top.where == ["logit_scale", "head"]


def test_a_collapse_made_by_a_module_names_that_module_alone(tmp_path):
    # Control: a plain head whose weights are 1e4 times too large: the head makes the logits
    # and sets their size; nothing else is named.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 5))
    with torch.no_grad():
        model[2].weight.mul_(1e4)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 8, generator=g), torch.randint(0, 5, (128,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(12):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    with torch.no_grad():  # the oracle: most rows' softmax rounds to exactly one class
        assert (F.softmax(model(x), -1).max(-1).values == 1.0).float().mean() > 0.5
    report = steadygrad.diagnose(tmp_path / "run")
    assert report.top.cause == "softmax_collapse"
    assert report.top.where == ["2"]


class Heading(nn.Module):
    """The angle of a predicted direction from the x axis, with no clamp of its cosine."""

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return torch.acos(v[:, 0] / v.norm(dim=-1))


class AngleNet(nn.Module):
    def __init__(self, in_module: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 16)
        self.head = nn.Linear(16, 2)
        self.heading = Heading() if in_module else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.head(torch.tanh(self.fc(x)))
        return self.heading(v) if self.heading is not None else torch.acos(v[:, 0] / v.norm(dim=-1))


def _angles(tmp_path, model: nn.Module, pruned_at: int = 5, **kwargs):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=g), torch.rand(32, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False, **kwargs) as mon:
        for t in range(pruned_at + 2):
            if t == pruned_at:
                with torch.no_grad():  # a pruning bug zeroes the direction's second component
                    model.head.weight[1].zero_()
                    model.head.bias[1].zero_()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            if not torch.isfinite(loss):
                break
    return loss, steadygrad.diagnose(tmp_path / "run")


@pytest.mark.parametrize("activation_every", [25, 1])
def test_a_gradient_made_non_finite_by_a_modules_backward_names_that_module(
    tmp_path, activation_every
):
    # Trigger: the direction's second component is pruned to zero, so its cosine is exactly
    # +-1, where acos's derivative is infinite: the loss is finite, the gradient is not. The
    # parameter whose gradient went bad first (head.bias) is a victim; a replay of the step,
    # differentiated, names the module whose backward made it, on a hooked step or off one.
    u = torch.tensor([1.0, -1.0], requires_grad=True)
    (du,) = torch.autograd.grad(torch.acos(u).sum(), u)
    assert torch.isinf(du).all()  # the oracle: acos' is -1/sqrt(1 - u^2), infinite at +-1
    loss, report = _angles(tmp_path, AngleNet(), activation_every=activation_every)
    found = next(d for d in report.diagnoses if d.cause == "nonfinite")
    assert found.first_step == 5
    assert found.where == ["heading"]
    assert "made in heading's backward" in found.summary


def test_a_gradient_made_non_finite_outside_any_module_names_the_output_it_reached(tmp_path):
    # Control: the same acos written in the model's own forward, outside any module: the
    # first non-finite gradient reached head's output, made after it.
    _, report = _angles(tmp_path, AngleNet(in_module=False))
    found = next(d for d in report.diagnoses if d.cause == "nonfinite")
    assert found.first_step == 5
    assert found.where == ["head"]
    assert "outside any module" in found.summary


class GammaNet(nn.Module):
    """Shape and rate heads of a Gamma likelihood; the rate's softplus was left out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(4, 16)
        self.shape = nn.Linear(16, 1)
        self.rate = nn.Linear(16, 1)
        with torch.no_grad():
            self.rate.bias.fill_(5.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        return torch.cat([F.softplus(self.shape(h)) + 1e-3, self.rate(h)], -1)


def _gamma_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    k, r = out[:, 0], out[:, 1]
    return -(k * torch.log(r) + (k - 1) * torch.log(y) - r * y - torch.lgamma(k)).mean()


@pytest.mark.parametrize("step", [25, 24])
def test_a_nan_the_loss_made_on_a_hooked_step_names_the_output_it_came_from(tmp_path, step):
    # Trigger: the rate's bias drops so that one sample's raw rate is negative at step 25, a
    # step the activation hooks read: every module's output is finite, log(rate) is NaN. The
    # weights were copied before the NaN update there too, and a replay names the rate head.
    # Control: the same at step 24, off the cadence.
    model = GammaNet()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.rand(64, generator=g) + 0.5
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for t in range(step + 1):
            if t == step:
                with torch.no_grad():  # the lowest raw rate goes just below zero
                    h = torch.tanh(model.fc(x))
                    model.rate.bias -= model.rate(h).min() + 1e-3
            loss = _gamma_nll(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    assert torch.isnan(loss)
    found = next(
        d for d in steadygrad.diagnose(tmp_path / "run").diagnoses if d.cause == "nonfinite"
    )
    assert found.first_step == step
    assert found.where == ["rate"]
    assert "negative" in found.summary


def test_a_benign_overflow_names_the_gradients_that_overflowed_first(tmp_path, monkeypatch):
    # Trigger: set 236's conv classifier whose GradScaler growth_interval was typed 1 for 2000:
    # the scale doubles after every good step, and about every other step the scaled fp16
    # gradient overflows, the head's first in the backward pass (its bias's sum over the batch
    # on almost every such step): the head's tensors are named, the most frequent first. The
    # scaler's skipped steps are never differentiated again to find where their gradient went
    # non-finite: the scale did it, on half the run's steps.
    from steadygrad.monitor.backward_origin import GradientTrace

    traced = []
    differentiate = GradientTrace.differentiate
    monkeypatch.setattr(
        GradientTrace,
        "differentiate",
        lambda self, *a: traced.append(1) or differentiate(self, *a),
    )
    ctx, report = held_out_run(tmp_path, "h236_darbuka_scaler_growth_interval_typo")
    assert traced == []
    induced_or_skip(ctx)
    found = next(d for d in report.diagnoses if d.cause == "amp_overflow")
    assert found.where and all(w.startswith("head.") for w in found.where)
    assert "overflowed first: head." in found.summary


def test_overflow_episodes_with_no_tensor_named_name_none(tmp_path):
    # Control: episodes whose step recorded no first non-finite gradient (an older run, or a
    # loss that overflowed itself) leave the place empty rather than guess one.
    rows = [{"loss": 1.0 - 0.001 * t, "optimizer_skipped": float(t in (5, 9))} for t in range(60)]
    ev = {"nonfinite_grads": 3.0, "grad_norm": math.inf}
    report = diagnose_stored(
        tmp_path,
        "amp",
        rows,
        [("amp_overflow", 5, None, ev, "info"), ("amp_overflow", 9, None, ev, "info")],
    )
    found = next(d for d in report.diagnoses if d.cause == "amp_overflow")
    assert found.where == []


def test_a_signal_amplified_into_its_largest_layer_names_the_layers_that_amplified_it(tmp_path):
    # Trigger: set 252's conv stack whose He init left the channels out of the fan-in: each
    # conv multiplies the signal (its output's RMS 3x to 4x the one before, from convs.0 to
    # convs.7, 2.4e4x the input's) and the gradient on its way back: every conv of the chain
    # is named, from the first, not only the largest.
    ctx, report = held_out_run(tmp_path, "h252_hydrothermal_plume_conv_init")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients"
    assert report.top.where == [f"convs.{i}" for i in range(8)]


def test_a_stacks_input_layer_carries_the_gradient_its_chain_exploded(tmp_path):
    # Trigger: set 250's tanh stack whose init gain was typed 4 for 1: each layer's weight
    # gradient stands above the next one's from layers.11 back to layers.1; layers.0 takes the
    # input, narrower, so its norm is below layers.1's yet 40x layers.11's: it is named too.
    ctx, report = held_out_run(tmp_path, "h250_ostrich_egg_init_gain_typo")
    induced_or_skip(ctx)
    assert report.top.cause == "exploding_gradients"
    assert report.top.where == [f"layers.{i}" for i in range(12)]


def test_a_loss_multiplied_for_one_step_is_a_gradient_spike_not_a_batch(tmp_path):
    # Trigger: set 257's tagger whose epoch-tail batch came with an extra leading dimension,
    # so its hand-written sum()/len(y) divided by 1 instead of 96: the loss and the gradient
    # jumped about 100x together on an ordinary batch. A batch's error moves the loss faster
    # than the gradient (a squared error's by the square); one number multiplying the loss
    # moves both alike: the gradient spike is named, not a bad batch.
    ctx, report = held_out_run(tmp_path, "h257_lapta_tail_batch_len_bug")
    induced_or_skip(ctx)
    losses, grads = ctx.losses, ctx.grad_norms
    loss_jump = losses[120] / statistics.median(losses[100:120])
    grad_jump = grads[120] / statistics.median(grads[100:120])
    assert loss_jump >= 10 and grad_jump >= 0.5 * loss_jump  # the oracle, from the run
    assert report.top.cause == "gradient_spike" and report.top.first_step == 120
    assert "data_outlier" not in report.causes()


def test_a_batch_whose_inputs_were_mis_scaled_is_still_the_datas(tmp_path):
    # Control: set 162's weir regressor, one shard's crest head in millimetres: the loss and
    # the gradient jumped by like factors too (a Huber loss is linear in the error), but the
    # batch's inputs stood hundreds of times their usual RMS: the batch is named.
    ctx, report = held_out_run(tmp_path, "h162_weir_head_millimetre_shard")
    induced_or_skip(ctx)
    assert report.top.cause == "data_outlier" and report.top.first_step == 120


def test_a_loss_falling_without_bound_through_batch_noise_is_a_divergence(tmp_path):
    # Trigger: set 261's multi-class hinge without its clamp: the loss falls from 3.9 to about
    # -2.5e5 over 200 steps, the head's outputs growing 50x, each batch's loss swinging by 15%
    # of its size: its last ten steps' median stood above the ten before by that noise alone,
    # though far below the losses 30 steps back. Oracle: the quarters' medians, from the run.
    ctx, report = held_out_run(tmp_path, "h261_seal_carving_hinge_no_clamp")
    induced_or_skip(ctx)
    quarters = [statistics.median(q) for q in (ctx.losses[i * 50 : i * 50 + 50] for i in range(4))]
    assert all(b < a for a, b in zip(quarters, quarters[1:], strict=False)) and quarters[-1] < -1e4
    assert report.top.cause == "output_logit_divergence" and report.top.where == ["head"]


def test_a_likelihood_that_starts_near_zero_and_fits_its_noise_below_it_is_healthy(tmp_path):
    # Control: set 226's Gaussian likelihood under fp16: its loss starts at 0.05 and ends near
    # -1 nat as the variance head fits the noise, the head's outputs growing as it does: ten
    # times the first loss's size below zero is nothing here; a fall without bound goes ten
    # nats below at least.
    ctx, report = held_out_run(tmp_path, "h226_ice_circle_fp16_control")
    induced_or_skip(ctx)
    assert min(ctx.losses) > -10
    assert report.healthy, report.text()


@pytest.mark.parametrize("teacher", ["raw logits", "probabilities"])
def test_soft_targets_below_zero_are_read_as_a_loss_with_no_minimum(tmp_path, teacher):
    # Trigger: distillation whose soft targets are the teacher's raw logits (zero-mean, half of
    # them negative): -sum_c t_c log p_c falls without end as a class of negative target goes
    # to probability 0. The share of negative targets is read from the loss call (oracle: the
    # count by hand). Control: the teacher's softmax, a distribution: nothing below 0.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 6))
    teacher_net = nn.Linear(8, 6)
    x = torch.randn(64, 8)
    with torch.no_grad():
        raw = teacher_net(x)
    soft = raw if teacher == "raw logits" else raw.softmax(-1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False, activation_every=1) as mon:
        loss = F.cross_entropy(model(x), soft)
        loss.backward()
        opt.step()
        record = mon.step(loss)
    assert record.values["output_targets_outside"] == pytest.approx(
        (soft < 0).float().mean().item()
    )
    if teacher == "raw logits":
        assert 0.3 < record.values["output_targets_outside"] < 0.7
    else:
        assert record.values["output_targets_outside"] == 0.0


def test_distillation_on_a_teachers_raw_logits_is_an_output_logit_divergence(tmp_path):
    # Trigger: set 260's distilled classifier, its soft targets the teacher's raw logits: the
    # head's logits grow without end, rows collapsing on the way; the targets prove the push,
    # so the divergence is the cause and the collapse its consequence.
    ctx, report = held_out_run(tmp_path, "h260_ikebana_distill_raw_teacher_logits")
    induced_or_skip(ctx)
    assert report.top.cause == "output_logit_divergence" and report.top.where == ["head"]


class TwoHeads(nn.Module):
    """A regression column and five class logits, returned as one tensor."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(8, 16)
        self.value = nn.Linear(16, 1)
        self.kind = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.fc(x))
        return torch.cat([self.value(h), self.kind(h)], 1)


@pytest.mark.parametrize("z_loss_sign", [0.0, -1.0])
def test_logits_sliced_from_a_shared_output_have_their_own_shift_read(tmp_path, z_loss_sign):
    # Trigger: the class logits are out[:, 1:] of an output whose first column an MSE trains:
    # the whole output's gradient holds the MSE's too, which moved the logits' "common shift"
    # though cross-entropy's rows sum to zero. Read at the slice, the shift is the logits'
    # alone: 0 (oracle: the loss's gradient in the slice, by autograd). Control: a z-loss of the
    # wrong sign on the same logits still reads as a push (negative), as the oracle has it.
    model = TwoHeads()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=g), torch.randn(32, generator=g) * 5
    k = torch.randint(0, 5, (32,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    def loss_of(out):
        logits = out[:, 1:]
        zl = z_loss_sign * 1e-2 * torch.logsumexp(logits, -1).pow(2).mean()
        return F.mse_loss(out[:, 0], y) + F.cross_entropy(logits, k) + zl

    with steadygrad.watch(model, opt, tmp_path / "run", progress=False, activation_every=1) as mon:
        out = model(x)
        loss = loss_of(out)
        loss.backward()
        opt.step()
        record = mon.step(loss)
    out = model(x).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss_of(out), out)
    expected = (grad[:, 1:].sum() / grad[:, 1:].abs().sum()).item()
    assert record.values["output_shift_gradient"] == pytest.approx(expected, abs=1e-5)
    if z_loss_sign == 0.0:
        assert abs(record.values["output_shift_gradient"]) < 1e-5
    else:
        assert record.values["output_shift_gradient"] < -1e-3


def test_a_gradient_leap_just_before_a_nan_at_an_edge_is_the_nans_approach(tmp_path):
    # Trigger: set 262's Gaussian likelihood whose variance head lost its softplus: three steps
    # before the loss's log of a negative variance is NaN, one sample's variance near zero made
    # the gradient leap 140x (d log v / dv = 1/v) on an ordinary loss. The NaN is the cause,
    # named at the head whose output crossed zero; the leap is its approach.
    ctx, report = held_out_run(tmp_path, "h262_shotput_variance_without_softplus")
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite" and report.top.where == ["var_head"]
    spike = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert "var_head's output" in spike.consequence_of


def test_a_stream_whose_harder_batches_recur_or_go_unfelt_ends_healthy(tmp_path):
    # Trigger: set 262's regressor whose every 40th batch carries 10x the noise: three spikes
    # flagged, the second one's update unfelt (a hard batch) and so unlike the others in size
    # that no spacing fits it alone; the others recur every 40. Each is a batch the stream
    # holds: the report is healthy (the first flag, live, came before any recurrence showed).
    ctx, report = held_out_run(tmp_path, "h262_serac_recurring_hard_batch_control")
    induced_or_skip(ctx)
    assert report.healthy, report.text()
    spike = next(d for d in report.diagnoses if d.cause == "loss_spike")
    assert spike.severity == "info" and spike.evidence["recurs_every"] == 40


class PoolNet(nn.Module):
    """Frames pooled by a softmax written by hand (no max subtracted): ``w * h`` takes both the
    score's exp and the frames' features, made by two modules."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.frame = nn.Linear(5, 16)
        self.act = nn.GELU()
        self.score = nn.Linear(16, 1)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.frame(x))
        w = torch.exp(self.score(h).squeeze(-1))
        w = w / w.sum(1, keepdim=True)
        return self.head((w.unsqueeze(-1) * h).sum(1)).squeeze(-1)


@pytest.mark.parametrize("checked", [True, False])
def test_a_nan_made_outside_any_module_names_the_operation_and_the_output_it_took(
    tmp_path, monkeypatch, checked
):
    # Trigger: the score's bias set to 100 at step 3: exp(score) overflows float32 to inf, and
    # inf / inf is NaN before the head takes it in. The product that carried it took both
    # act's output and the exp's; a replay checked operation by operation names exp, made from
    # score's finite output (oracle: the same forward, by hand). Control: without the check,
    # the module hooks alone name act, the module nearest the head's input in the graph.
    if not checked:
        from steadygrad.monitor.activations import ActivationSignal

        monkeypatch.setattr(ActivationSignal, "_operation_behind", lambda self, call: {})
    model = PoolNet()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 12, 5, generator=g), torch.randn(8, generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for t in range(4):
            if t == 3:
                with torch.no_grad():
                    model.score.bias.fill_(100.0)
                    s = model.score(model.act(model.frame(x))).squeeze(-1)
                    assert torch.isfinite(s).all() and torch.isinf(torch.exp(s)).any()
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    found = next(
        d for d in steadygrad.diagnose(tmp_path / "run").diagnoses if d.cause == "nonfinite"
    )
    assert found.first_step == 3 and found.where == (["score"] if checked else ["act"])
    if checked:
        assert "outside any module (exp), before head" in found.summary


def test_rows_collapsing_as_a_loss_without_minimum_grows_the_logits_are_its_consequence(tmp_path):
    # Trigger: set 276's classifier trained on cross-entropy plus a multi-class hinge that lost
    # its clamp: the loss falls below zero without end (to about -2900) as the head's logits
    # grow a thousandfold, and rows collapse on the way. The drift is the cause, dated to the
    # loss's fall; the collapse is what the growing logits do. (The hinge's gradient sums to
    # zero over a row: no push on the logits' common shift is there to read.)
    ctx, report = held_out_run(tmp_path, "h276_wayang_hinge_clamp_dropped")
    induced_or_skip(ctx)
    assert min(ctx.losses) < -100
    assert report.top.cause == "output_logit_divergence" and report.top.where == ["head"]
    collapse = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
    assert "without bound" in collapse.consequence_of
