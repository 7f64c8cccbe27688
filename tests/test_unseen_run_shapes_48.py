"""Run shapes from the forty-eighth session.

Each change has a trigger (a run built to show it, or a held-out scenario it was found on) and a
control that must not move."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import diagnose_stored, held_out_run, induced_or_skip, steadygrad
from torch import nn

from steadygrad.core.metrics import INPUT_LAYER


class Backwards(nn.Module):
    """Modules declared in the opposite order to the one the forward runs them in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(16, 3)
        self.act = nn.ReLU()
        self.body = nn.Linear(16, 16)
        self.stem = nn.Linear(6, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.body(self.act(self.stem(x)))))


def test_the_layer_that_reads_the_batch_is_noted_in_the_order_the_forward_ran(tmp_path):
    # Trigger: stem reads the batch though it is declared last; the oracle is a hook of our own
    # on every module, recording the first module holding weights whose forward received x.
    model = Backwards()
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    fed = []
    handles = [
        m.register_forward_hook(lambda m, a, o, n=n: fed.append(n) if a[0] is x else None)
        for n, m in model.named_modules()
        if n and next(m.parameters(recurse=False), None) is not None
    ]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(3):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    for h in handles:
        h.remove()
    assert fed[0] == "stem"
    assert steadygrad.load(tmp_path / "run").config[INPUT_LAYER] == fed[0]


def test_an_overflow_of_raw_inputs_is_placed_at_the_layer_that_reads_them(tmp_path):
    # Trigger: set 296's fp16 regressor fed pressures in raw kPa (RMS near 50 where standardised
    # features sit near 1): the scaled gradients overflow float16, the head's first in the
    # backward pass, but what made them too large entered at fc1, which reads the inputs.
    # (The control, set 236's standardised images overflowing under a scale that doubles
    # every step, keeps naming the head alone: test_unseen_run_shapes_47.)
    ctx, report = held_out_run(tmp_path, "h296_balloon_raw_kpa_fp16")
    induced_or_skip(ctx)
    found = next(d for d in report.diagnoses if d.cause == "amp_overflow")
    inputs = steadygrad.load(tmp_path / "h296_balloon_raw_kpa_fp16").series("input_rms")[1]
    assert found.where[0] == "fc1"
    assert found.evidence["input_rms"] == pytest.approx(statistics.median(inputs.tolist()))
    assert found.evidence["input_rms"] > 10
    assert "read by fc1" in found.summary


def test_gradients_clipping_held_down_all_run_are_named_an_explosion(tmp_path):
    # Trigger: set 292's IRNN whose identity recurrence a post-init loop multiplied by
    # sqrt(2): the raw gradient stands hundreds of times the clip at every step, and the loss
    # falls on clipped steps alone; nothing grows, nothing spikes, so no other rule sees it.
    ctx, report = held_out_run(tmp_path, "h292_tourbillon_irnn_gain")
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / "h292_tourbillon_irnn_gain")
    pre, post, weights = (
        run.series(n)[1] for n in ("grad_norm_preclip", "grad_norm", "param_norm")
    )
    top = report.top
    assert top.cause == "exploding_gradients"
    assert top.where == ["cell.hh"]
    assert top.evidence["of_weights"] == pytest.approx(statistics.median((pre / weights).tolist()))
    assert top.evidence["clipped_share"] == pytest.approx(float(((pre / post) >= 10).mean()))


def _clipped_regression(tmp_path, max_norm: float):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    x = torch.randn(256, 8)
    y = x[:, :1] - 0.5 * x[:, 1:2]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(150):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.load(tmp_path / "run"), steadygrad.diagnose(tmp_path / "run")


def test_a_clip_threshold_far_below_a_healthy_gradient_is_no_explosion(tmp_path):
    # Control: a healthy regressor clipped at 1e-3, far below its gradient: clipping shrinks
    # it tenfold or more at every step, but the gradient stands under the weights' norm.
    run, report = _clipped_regression(tmp_path, 1e-3)
    pre, post = run.series("grad_norm_preclip")[1], run.series("grad_norm")[1]
    assert ((pre / post) >= 10).mean() >= 0.9  # held down at nearly every step, as the trigger
    assert (pre < run.series("param_norm")[1]).all()
    assert run.series("loss")[1][-1] < run.series("loss")[1][0]
    assert "exploding_gradients" not in [d.cause for d in report.diagnoses]


def _copied(tmp_path, run, name: str, change: dict):
    """The stored run written again, each series in ``change`` replaced by a constant."""
    from steadygrad.store import RunStore

    store = RunStore(tmp_path / name, config=dict(run.config))
    for step, values in _by_step(run):
        store.add_scalars(step, {k: change.get(k, v) for k, v in values.items()})
    store.add_findings(run.findings())
    store.close()
    return steadygrad.diagnose(tmp_path / name)


def _by_step(run):
    steps: dict[int, dict] = {}
    for step, name, value, _ in run.rows():
        steps.setdefault(step, {})[name] = value
    return sorted(steps.items())


def test_rows_collapsed_by_a_recurrent_state_amplified_from_the_start_are_its_consequence(
    tmp_path,
):
    # Trigger: set 284's ReLU recurrence initialised at 5/3 the identity: its state stands
    # about 100x the inputs' RMS from step 0, the head's logits as large, and rows collapse
    # from the first reading: the explosion through time is named first, the collapse its
    # consequence. Control: the same run with the recurrent state held at 0.9 (a bounded
    # state, as a tanh cell's): its large gradient hands the head no large inputs, and the
    # collapse is no longer put down to it.
    ctx, report = held_out_run(tmp_path, "h284_lusheng_identity_times_tanh_gain")
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / "h284_lusheng_identity_times_tanh_gain")
    state, inputs = run.series("act_rms/cell.hh")[1][0], run.series("input_rms")[1][0]
    assert state >= 10 * inputs
    assert report.top.cause == "exploding_gradients"
    collapse = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
    assert "exploded through time" in collapse.why
    bounded = _copied(tmp_path, run, "bounded", {"act_rms/cell.hh": 0.9})
    collapse = next(d for d in bounded.diagnoses if d.cause == "softmax_collapse")
    assert "exploded" not in collapse.why


def _edge_run(tmp_path, name: str, spiked: list[str]):
    """A stored run: loss and gradient spikes at step 26 in the tensors ``spiked``, then at
    step 38 a NaN the loss made from shape_head's output, which held a negative value."""
    rows = [{"loss": 2.5 + 0.1 * (t % 3), "grad_norm": 2.0 + 0.2 * (t % 4)} for t in range(38)] + [
        {"loss": math.nan, "grad_norm": math.nan}
    ]
    rows[26] = {"loss": 9745.0, "grad_norm": 7.5e5}
    origin = {
        "module": "shape_head",
        "in_the_loss": "its output held 1 negative value(s) among positive ones",
    }
    spike = {"spike_factor": 3000.0, "grad_norm": 6e5, "running_rms": 200.0, "theta": 5000.0}
    findings = [("loss_spike", 26, None, {"factor": 3630.0}, "warning")]
    findings += [("gradient_spike", 26, t, spike, "critical") for t in spiked]
    findings += [("nonfinite", 38, "shape_head", {"forward_origin": origin}, "critical")]
    return diagnose_stored(tmp_path, name, rows, findings)


def test_a_spike_in_the_module_whose_output_later_crossed_an_edge_is_the_nans_approach(tmp_path):
    # Trigger: set 303's Weibull shape left unconstrained: as one row's shape neared 0, the
    # loss (-log k) and shape_head's gradient leapt together at step 26, and 12 steps later
    # log k of a negative shape was NaN. The spike is the edge's approach: the NaN is named.
    # Control: the same shape with the spike only in fc1, a module that made no NaN: a spike
    # of its own, 12 steps before, as before this change.
    report = _edge_run(tmp_path, "edge", ["fc1.weight", "shape_head.weight"])
    assert report.top.cause == "nonfinite"
    spike = next(d for d in report.diagnoses if d.cause == "gradient_spike")
    assert "the NaN's approach" in spike.why
    other = _edge_run(tmp_path, "elsewhere", ["fc1.weight"])
    spike = next(d for d in other.diagnoses if d.cause == "gradient_spike")
    assert "approach" not in spike.why


def test_the_nans_approach_is_found_on_the_live_run(tmp_path):
    ctx, report = held_out_run(tmp_path, "h303_sandboarding_identity_shape_link")
    induced_or_skip(ctx)
    assert report.top.cause == "nonfinite"
    assert "shape_head" in report.top.where


def test_updates_frozen_by_a_schedule_after_the_loss_settled_are_no_warning(tmp_path):
    # Trigger: set 297's control, ReduceLROnPlateau (factor 0.5, patience 10) on a noisy Huber
    # regression: the loss settled within the first quarter of the run, the schedule halved
    # the rate 17 times as it should, and the updates fell under 1e-7 of the weights: the
    # frozen reading is the schedule letting the run settle, info.
    ctx, report = held_out_run(tmp_path, "h297_marram_huber_control")
    run = steadygrad.load(tmp_path / "h297_marram_huber_control")
    rates = run.series("lr/0")[1]
    assert rates.max() / rates[-1] > 1e4
    assert all(d.severity == "info" for d in report.diagnoses)
    frozen = [f for f in run.findings() if f.kind == "update_ratio_out_of_range"]
    assert frozen and all(f.severity == "info" for f in frozen)  # no warning while it ran
    ratio = next(d for d in report.diagnoses if d.cause == "update_ratio_out_of_range")
    assert ratio.severity == "info" and ratio.evidence["rate_cut"] >= 100


def test_updates_frozen_by_a_schedule_cutting_while_the_loss_still_fell_are_a_warning(tmp_path):
    # Control: ReduceLROnPlateau in mode "max" on a loss (the mode meant for an accuracy):
    # it cuts the rate every few steps while the loss is still falling fast, and the run
    # freezes far above where it was going: the frozen layers stay a warning.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    x = torch.randn(256, 8)
    y = torch.sin(x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.3, patience=3)
    losses = []
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(200):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            sched.step(loss.item())
            losses.append(loss.item())
    assert opt.param_groups[0]["lr"] < 0.05 / 1e4  # cut to nothing
    assert losses[-1] > 0.5 * losses[0]  # frozen far above a fit
    report = steadygrad.diagnose(tmp_path / "run")
    ratio = next(d for d in report.diagnoses if d.cause == "update_ratio_out_of_range")
    assert ratio.severity == "warning"


def _tanh_stack(gain: float) -> nn.Module:
    torch.manual_seed(0)
    layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(12))
    for layer in layers:
        nn.init.xavier_normal_(layer.weight, gain=gain)
        nn.init.zeros_(layer.bias)

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp, self.layers, self.head = nn.Linear(8, 64), layers, nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.tanh(self.inp(x))
            for layer in self.layers:
                h = torch.tanh(layer(h))
            return self.head(h)

    return Stack()


def _first_gradients(tmp_path, name: str, gain: float):
    model = _tanh_stack(gain)
    x = torch.randn(128, 8)
    y = x[:, :1] * x[:, 1:2]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for _ in range(60):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    run = steadygrad.load(tmp_path / name)
    grads = [run.series(f"grad_norm/layers.{i}.weight")[1][0] for i in range(12)]
    return grads, steadygrad.diagnose(tmp_path / name)


def test_gradients_rising_back_through_a_deep_stack_layer_by_layer_are_an_explosion(tmp_path):
    # Trigger: set 300's twelve tanh layers initialised with the variance gain (5/3)^2 where
    # xavier_normal_ takes the standard deviation's: each layer multiplies the gradient on its
    # way back by about 1.3, under the 1.2x-every-layer chain at some layers, 10x and more over
    # the stack, rising almost at every layer. Control: the same stack at the tanh gain 5/3
    # keeps its layers' gradients within a few times of each other: no explosion.
    grads, report = _first_gradients(tmp_path, "chaotic", (5 / 3) ** 2)
    # the oracle: the stored first gradients, by hand: 10x and more, under the 30x of a chain
    assert 10 * grads[-1] <= max(grads) < 30 * grads[-1]
    assert report.top.cause == "exploding_gradients"
    assert "layers.0" in report.top.where
    grads, report = _first_gradients(tmp_path, "ordered", 5 / 3)
    assert max(grads) < 10 * grads[-1]
    assert "exploding_gradients" not in [d.cause for d in report.diagnoses]


def test_a_spike_in_adams_first_steps_that_stalled_its_updates_poisoned_the_second_moment(
    tmp_path,
):
    # Trigger: set 303's resume path steps Adam at step 20 before dividing out a static loss
    # scale of 4096: the updates then shrink over ten times and stay there. Its span before the
    # spike is Adam's own first steps, whose updates shrink on their own (2-3x): the drop is
    # read that much milder, and is still poisoning.
    ctx, report = held_out_run(tmp_path, "h303_octobass_unscale_skipped")
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / "h303_octobass_unscale_skipped")
    steps, ratios = run.series("update_ratio/fc1.weight")
    before = statistics.median(ratios[(steps > 0) & (steps < 20)].tolist())
    after = statistics.median(ratios[(steps > 40) & (steps <= 90)].tolist())
    assert after < 0.15 * before  # the oracle: the stored updates, by hand
    assert report.top.cause == "adam_second_moment_poisoned"
    assert report.top.first_step == 20


def _adam_with_an_early_spike(tmp_path, name: str, factor: float):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    x = torch.randn(256, 10)
    y = x[:, :1] - x[:, 1:2] * x[:, 2:3]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for t in range(200):
            loss = F.mse_loss(model(x), y)
            (loss * (factor if t == 15 else 1.0)).backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.diagnose(tmp_path / name)


def test_a_spike_in_adams_first_steps_it_shrugged_off_is_no_poisoning(tmp_path):
    # Control: a gradient 100x the usual at step 15 raises Adam's running square about 11x,
    # its updates about 3x smaller: what its first steps shrink by on their own; not named a
    # poisoned second moment (the same run with the scale of 4096 is).
    causes = [d.cause for d in _adam_with_an_early_spike(tmp_path, "mild", 100.0).diagnoses]
    assert "adam_second_moment_poisoned" not in causes
    report = _adam_with_an_early_spike(tmp_path, "scaled", 4096.0)
    assert report.top.cause == "adam_second_moment_poisoned"


def test_gradients_made_large_by_targets_in_raw_units_are_no_explosion(tmp_path):
    # Control: the trigger's shape (clipped hundreds of times at every step, the gradient far
    # above the weights' norm) made by targets in raw units (x 1000) on a healthy regressor:
    # the gradient stands under the loss it is the slope of, no network amplified it.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    x = torch.randn(256, 8)
    y = 1000.0 * (x[:, :1] - 0.5 * x[:, 1:2])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(150):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    run = steadygrad.load(tmp_path / "run")
    pre, post = run.series("grad_norm_preclip")[1], run.series("grad_norm")[1]
    weights, losses = run.series("param_norm")[1], run.series("loss")[1]
    assert ((pre / post) >= 10).mean() >= 0.9 and (pre >= 10 * weights).mean() >= 0.9
    assert statistics.median(pre.tolist()) < statistics.median(losses.tolist())
    report = steadygrad.diagnose(tmp_path / "run")
    assert "exploding_gradients" not in [d.cause for d in report.diagnoses]


def test_a_head_reset_on_resume_under_adam_is_weights_replaced_not_a_bad_batch(tmp_path):
    # Trigger: set 298's resume with strict=False left the renamed head at a fresh init: the
    # loss jumps to chance for one step, and the gradient of that step spikes with it. Under
    # AdamW no gradient moves a weight more than a few times the rate: the head's norm fell
    # by far more than any step moves it, so the weights were replaced, not moved by a batch.
    ctx, report = held_out_run(tmp_path, "h298_limner_resume_head_reinit")
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / "h298_limner_resume_head_reinit")
    steps, norms = run.series("param_norm/head.weight")
    ratio_steps, ratios = run.series("update_ratio/head.weight")
    typical = statistics.median(
        (ratios * norms[ratio_steps])[(ratio_steps < 150) & (ratio_steps > 0)].tolist()
    )
    assert abs(norms[150] - norms[149]) >= 30 * typical  # the oracle, from the stored norms
    assert report.top.cause == "loss_spike"
    assert report.top.evidence["weights_replaced_at"] == [150]


def test_a_bad_batch_under_adam_is_still_a_bad_batch(tmp_path):
    # Control: one batch with targets 1000x too large at step 100 under Adam: the gradient
    # spikes, and Adam's bounded step moves the weights no further than its steps do: no
    # replacement, a data outlier.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for t in range(200):
            x = torch.randn(64, 8, generator=g)
            y = x[:, :1] - 0.5 * x[:, 1:2]
            if t == 100:
                y = 1000.0 * y
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    report = steadygrad.diagnose(tmp_path / "run")
    assert report.top.cause == "data_outlier"
    assert report.top.first_step == 100


def test_units_killed_by_the_first_updates_outrank_logits_the_same_jolt_threw(tmp_path):
    # Trigger: set 304's RMSprop rate typed 1e-1 for 1e-3: the first updates throw the loss
    # 250x; the logits read next drifted (from the reading before the jolt, in range), and
    # over half of fc2's units died. The run came back to where it started and no further:
    # the dead units are what it kept, the drift was the jolt's.
    ctx, report = held_out_run(tmp_path, "h304_kelp_burn_rmsprop_lr_typo")
    induced_or_skip(ctx)
    losses = steadygrad.load(tmp_path / "h304_kelp_burn_rmsprop_lr_typo").series("loss")[1]
    assert losses[1] > 100 * losses[0] and losses[-10:].mean() > 0.9 * losses[0]
    assert report.top.cause == "loss_of_plasticity"
    drift = next(d for d in report.diagnoses if d.cause == "output_logit_divergence")
    assert "the climb threw them" in drift.why


def test_units_killed_in_a_jolt_the_run_then_learnt_far_past_still_lead(tmp_path):
    # Set 307's Adagrad at lr 1: the first updates throw the loss and kill units, and the run
    # then learns far below where it started (5.0 to about 0.5). They lead (session 49): they
    # stayed dead in a run that never broke. Since session 50 they are found again where the
    # loss stalled after learning past them, and judged from there (they cost it then).
    ctx, report = held_out_run(tmp_path, "h307_sugarbush_adagrad_lr_one")
    induced_or_skip(ctx)
    losses = steadygrad.load(tmp_path / "h307_sugarbush_adagrad_lr_one").series("loss")[1]
    assert losses[-10:].mean() < 0.5 * losses[0]
    dead = report.top
    assert dead.cause == "loss_of_plasticity" and "stayed dead" in dead.summary
    assert "output_logit_divergence" in [d.cause for d in report.diagnoses[1:]]


class NormedStack(nn.Module):
    """Ten leaky-ReLU layers at a given init gain, then a LayerNorm before the head."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(
            *(m for i in range(10) for m in (nn.Linear(12 if i == 0 else 48, 48), nn.LeakyReLU()))
        )
        for layer in self.net[::2]:
            nn.init.normal_(layer.weight, std=gain / layer.in_features**0.5)
        self.norm, self.head = nn.LayerNorm(48), nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.net(x)))


def _normed_run(tmp_path, name: str, gain: float):
    model = NormedStack(gain)
    x = torch.randn(128, 12)
    y = x[:, :1] * x[:, 1:2]
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for _ in range(80):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    run = steadygrad.load(tmp_path / name)
    outputs = [run.series(f"act_rms/net.{2 * i}")[1][0] for i in range(10)]
    return outputs, steadygrad.diagnose(tmp_path / name)


def test_a_long_chain_of_layers_amplifying_the_signal_is_an_explosion_behind_a_norm(tmp_path):
    # Trigger: set 317's ten leaky-ReLU layers at twice the He gain, a LayerNorm before the
    # head: each layer doubles the signal (and the backward signal through it), the norm
    # rescales what reaches the loss, and the weights' gradient stays small. Control: the same
    # stack at the He gain keeps the signal's scale layer to layer: no chain, no explosion.
    outputs, report = _normed_run(tmp_path, "doubled", 2 * 2**0.5)
    assert all(b >= 1.2 * a for a, b in zip(outputs, outputs[1:], strict=False))  # the oracle
    assert outputs[-1] >= 30 * outputs[0]
    assert report.top.cause == "exploding_gradients"
    assert "net.0" in report.top.where
    outputs, report = _normed_run(tmp_path, "he", 2**0.5)
    assert outputs[-1] < 30 * outputs[0]
    assert "exploding_gradients" not in [d.cause for d in report.diagnoses]


def test_gradients_grown_with_weights_multiplied_every_step_are_their_consequence(tmp_path):
    # Trigger: set 316's hand-written decoupled weight decay with its sign flipped: every
    # weight is multiplied by the same factor each step (the norm of all of them grows at one
    # steady rate), the loss climbs, and the gradients grow with the weights they flow
    # through: the climb and its weights are named, the gradients' growth is their consequence.
    # (The control, gradients growing through depth with weights that do not, is above.)
    ctx, report = held_out_run(tmp_path, "h316_salt_pan_decay_sign")
    induced_or_skip(ctx)
    norms = steadygrad.load(tmp_path / "h316_salt_pan_decay_sign").series("param_norm")[1]
    assert norms[-1] > 3 * norms[0]
    assert report.top.cause == "loss_divergence"
    growth = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert "multiplies them every step" in growth.why


def test_most_of_a_layer_killed_in_a_raise_that_passed_is_named_though_the_loss_came_back(
    tmp_path,
):
    # Trigger: set 312's warm restart whose peak was typed 1e-1 for 1e-3: in the jolt, about
    # 80% of fc2's units die and stay dead; the loss comes back as the schedule carries the
    # rate down, but the layer's capacity does not: the dead units are named, set off by the
    # raise. Control: an ordinary warm restart (SGDR at a sane peak) kills no layer.
    ctx, report = held_out_run(tmp_path, "h312_arrowsmith_restart_peak")
    induced_or_skip(ctx)
    dead = steadygrad.load(tmp_path / "h312_arrowsmith_restart_peak").series("dead_units/fc2")
    assert dead[1][dead[0] < 100].max() < 0.1 and dead[1][-1] > 0.5  # the oracle, stored
    assert report.top.cause == "loss_of_plasticity"
    assert "fc2" in report.top.where and "stayed dead" in report.top.summary


def test_an_ordinary_warm_restart_kills_no_layer(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=100)
    g = torch.Generator().manual_seed(2)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(250):
            x = torch.randn(64, 10, generator=g)
            loss = F.mse_loss(model(x), x[:, :1] * x[:, 1:2])
            loss.backward()
            opt.step()
            sched.step()
            mon.step(loss)
            opt.zero_grad()
    report = steadygrad.diagnose(tmp_path / "run")
    assert all(d.severity == "info" for d in report.diagnoses)


def test_a_first_gradient_far_above_its_loss_in_a_recurrence_exploded_before_any_update(
    tmp_path,
):
    # Trigger: set 324's ReLU IRNN at 1.2 times the identity: at step 0, before any update,
    # the gradient stands 100x the loss it is the slope of, the recurrent matrix's above the
    # output layer's (the input projection, applied at every step, shares it); the first
    # update then throws the loss 1e12x. The explosion through time is named, the first
    # updates' break is its consequence. (Controls: targets in raw units make a gradient no
    # larger than its loss, above; a step size far above the limit with an ordinary first
    # gradient stays the first updates' own, test_unseen_run_shapes_28.)
    ctx, report = held_out_run(tmp_path, "h324_nail_violin_irnn_gain")
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / "h324_nail_violin_irnn_gain")
    assert run.series("grad_norm")[1][0] >= 10 * run.series("loss")[1][0]
    assert report.top.cause == "exploding_gradients" and report.top.where == ["rec"]
    broke = next(d for d in report.diagnoses if d.cause == "sharpness_above_limit")
    assert "before any step size could be judged" in broke.why


def test_units_dying_as_a_decay_of_the_wrong_sign_grows_every_weight_are_its_consequence(
    tmp_path,
):
    # Trigger: set 319's hand-written decay with its sign flipped grows every weight 1.8% a
    # step; late in the run units die as their inputs grow: the climb and the multiplied
    # weights are named, the dead units are their consequence.
    ctx, report = held_out_run(tmp_path, "h319_tinplate_decay_sign")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_divergence"
    dead = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    assert "units die as the weights grow" in dead.why


class GatedCell(nn.Module):
    """An LSTM with its gates written out (wx, wh), reading 40 steps, a head on the last state."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.wx, self.wh, self.head = nn.Linear(3, 64), nn.Linear(16, 64), nn.Linear(16, 1)
        for block in self.wh.weight.detach().split(16):
            nn.init.orthogonal_(block, gain=gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = c = x.new_zeros(x.shape[0], 16)
        for t in range(x.shape[1]):
            i, f, g, o = (self.wx(x[:, t]) + self.wh(h)).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h)


def _gated_run(tmp_path, name: str, gain: float):
    model = GatedCell(gain)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(32, 40, 3, generator=g)
    y = 0.3 * x[:, -5:, :1].mean(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for _ in range(60):
            loss = F.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    run = steadygrad.load(tmp_path / name)
    return run, steadygrad.diagnose(tmp_path / name)


def test_a_hand_written_lstm_at_a_recurrent_gain_typed_ten_times_exploded_at_init(tmp_path):
    # Trigger: set 325's hand-written LSTM whose recurrent blocks were initialised orthogonal
    # at gain 6.0 for 0.6: the recurrent gradient stands over 30x the output layer's and the
    # whole gradient hundreds of times the loss, though under the (inflated) weights' norm.
    # Control: the same cell at gain 0.6 keeps its gradient near its loss: no explosion.
    run, report = _gated_run(tmp_path, "typo", 6.0)
    grads, loss = run.series("grad_norm")[1], run.series("loss")[1]
    wh, head = run.series("grad_norm/wh.weight")[1], run.series("grad_norm/head.weight")[1]
    assert wh[0] >= 30 * head[0] and grads[0] >= 50 * loss[0]  # the oracle, as stored
    assert report.top.cause == "exploding_gradients" and report.top.where == ["wh"]
    run, report = _gated_run(tmp_path, "meant", 0.6)
    assert run.series("grad_norm")[1][0] < 50 * run.series("loss")[1][0]
    assert "exploding_gradients" not in [d.cause for d in report.diagnoses]


def _layer_decay_run(tmp_path, name: str, decay: float):
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(4))
    head = nn.Linear(16, 1)
    model = nn.ModuleDict({"blocks": blocks, "head": head})
    groups = [{"params": head.parameters(), "lr": 1e-2}]  # the head's group built first
    groups += [
        {"params": b.parameters(), "lr": 1e-2 * decay ** (4 - i)} for i, b in enumerate(blocks)
    ]
    opt = torch.optim.Adam(groups)
    x = torch.randn(128, 16)
    y = x[:, :1] * x[:, 1:2]
    with steadygrad.watch(model, opt, tmp_path / name, progress=False) as mon:
        for _ in range(80):
            h = x
            for b in blocks:
                h = b(h)
            loss = F.mse_loss(head(h), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.diagnose(tmp_path / name)


def test_a_layer_wise_decay_typed_ten_times_too_steep_is_read_whatever_the_groups_order(
    tmp_path,
):
    # Trigger: set 331's layer-wise decay typed 0.08 for 0.8, the head's group built first:
    # in the groups' order the rates fall from the head's, then rise block by block; in the
    # rates' own order each group stands 12.5x below the next: the blocks far below the head
    # are named (info: a decay meant that steep is no fault). Control: the decay at 0.8.
    report = _layer_decay_run(tmp_path, "typo", 0.08)
    ladder = next(d for d in report.diagnoses if d.cause == "update_ratio_out_of_range")
    assert "about 12.5x apart" in ladder.summary
    assert "blocks.0.0" in ladder.where and "head" not in ladder.where
    report = _layer_decay_run(tmp_path, "meant", 0.8)
    assert "update_ratio_out_of_range" not in [d.cause for d in report.diagnoses]


def test_a_climb_the_weights_replaced_between_steps_began_is_no_rising_rates(tmp_path):
    # Trigger: set 325's resume sorted its checkpoints as text and loaded step 50's weights at
    # step 170, while a long warm-up was still raising the rate: the loss jumped 3x and came
    # back. The weights' norm moved far more than a step moves it: the replacement made the
    # climb, not the rising rate (the rate rising into a climb on weights no one replaced stays
    # the cause: test_unseen_run_shapes_8, _36, _39).
    ctx, report = held_out_run(tmp_path, "h325_soap_making_lexicographic_resume")
    induced_or_skip(ctx)
    assert report.top.cause == "loss_spike"
    rising = next(d for d in report.diagnoses if d.cause == "sharpness_above_limit")
    assert "replaced between steps" in rising.why


def test_a_sequentials_input_layer_carries_the_explosion_whatever_its_index(tmp_path):
    # Trigger: set 314's sixteen tanh layers in an nn.Sequential (Linear at 0, 2, 4 ...): the
    # gradient rises back to layers.2 and layers.0, reading the input at another width, carries
    # 34x the last layer's: the input layer is named first (its index is 0, the next layer's 2).
    ctx, report = held_out_run(tmp_path, "h314_xun_init_scale_as_gain")
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / "h314_xun_init_scale_as_gain")
    first, last = (run.series(f"grad_norm/layers.{i}.weight")[1][0] for i in (0, 30))
    assert first >= 30 * last  # the oracle, as stored
    assert report.top.cause == "exploding_gradients" and report.top.where[0] == "layers.0"


def test_every_layer_whose_units_mostly_died_is_named(tmp_path):
    # Trigger: set 311's dilated conv net with Adam's rate typed 1000x: conv2 and conv3 both
    # lose over 80% of their units for good, the warning read on conv2: both are named now.
    # (Control: one layer dying alone names that layer alone, test_unseen_run_shapes_47.)
    ctx, report = held_out_run(tmp_path, "h311_nilometer_adam_lr_typo")
    induced_or_skip(ctx)
    run = steadygrad.load(tmp_path / "h311_nilometer_adam_lr_typo")
    assert all(run.series(f"dead_units/{c}")[1][-1] > 0.5 for c in ("conv2", "conv3"))
    assert run.series("dead_units/conv1")[1][-1] < 0.5
    top = report.top
    assert top.cause == "loss_of_plasticity"
    assert {"conv2", "conv3"} <= set(top.where) and "conv1" not in top.where


def test_a_loss_that_fell_without_bound_into_its_break_is_read_up_to_it(tmp_path):
    # Trigger: set 339's nll_loss on raw logits (the log_softmax forgotten): the loss falls
    # below zero faster every step, to -6e29, and breaks at -inf. Read up to the break, the
    # fall is found (it was left unread in a run that broke): the gradient bursts into the
    # break grew with the logits it drove, and no "plain steps past 2/sharpness after the loss
    # had fallen" is claimed for a loss with no minimum. (Controls: a fall in a run that did
    # not break, test_unseen_run_shapes_47; a positive loss that fell and then blew up under
    # plain steps past the limit, test_unseen_run_shapes_28.)
    ctx, report = held_out_run(tmp_path, "h339_stilt_walking_nll_on_raw_logits")
    induced_or_skip(ctx)
    losses = steadygrad.load(tmp_path / "h339_stilt_walking_nll_on_raw_logits").series("loss")[1]
    finite = losses[np.isfinite(losses)]
    assert finite[-1] == finite.min() < -1e6  # falling into the break, by hand
    causes = {d.cause: d for d in report.diagnoses}
    assert "without bound" in causes["exploding_gradients"].why
    assert "without bound" in causes["gradient_spike"].why
    assert "sharpness_above_limit" not in causes
    # a loss with no minimum drives every weight its gradient reaches: the NaN fc2 made at the
    # end is no harm kept out of the head's reach
    assert report.top.cause == "output_logit_divergence"
