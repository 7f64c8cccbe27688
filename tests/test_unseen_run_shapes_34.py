"""Run shapes from the thirty-eighth session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import fitted, held_out_run, induced_or_skip, on_bench_path, steadygrad

from steadygrad.core import Record
from steadygrad.diagnose.detectors import GradientGrowth

on_bench_path()  # the scenarios' models and data


def _through_depth(findings):
    return [
        f
        for f in findings
        if f.kind == "gradient_growth" and f.evidence.get("through_depth") and f.step == 0
    ]


def test_gradients_growing_back_through_a_stack_are_warned_of_live_at_the_first_step(tmp_path):
    # Trigger: set 140's eight tanh layers initialised with std 1.0 (the chaotic phase). The
    # diagnosis after the run named the chain; live, the detector's model-wide test missed it
    # (the head's gradient, larger than the last hidden layer's, breaks the model-wide order).
    # Now the live warning comes at step 0, its ratio the stored gradients' own.
    ctx, _ = held_out_run(tmp_path, "h140_chainsaw_carving_init_std")
    induced_or_skip(ctx)
    found = _through_depth(ctx.monitor.findings)
    assert found and found[0].severity == "warning" and found[0].where == "body.0.weight"
    run = steadygrad.load(tmp_path / "h140_chainsaw_carving_init_std")
    first = {n: run.series(f"grad_norm/body.{n}.weight")[1][0] for n in (0, 14)}
    assert found[0].evidence["ratio"] == pytest.approx(first[0] / first[14], rel=1e-5)
    assert found[0].evidence["ratio"] >= 100


def _first_record(grads: dict[str, float]) -> list:
    values = {"grad_norm": 1.0, "param_norm": 10.0, "loss": 1.0}
    values |= {f"grad_norm/{tensor}": g for tensor, g in grads.items()}
    found = _through_depth(GradientGrowth().update(Record(0, values)))
    return [f for f in found if f.evidence.get("stack")]  # the model-wide order's test aside


def test_the_live_chain_is_the_rules_chain_five_like_layers_each_1_2x_the_next_and_30x():
    # Hand-computed, as the rule's test: body.0 .. body.5 at 3x a layer back (243x) with a
    # head larger than any of them is a chain; at 1.8x (19x) it is too short a rise; one layer
    # at 1.1x breaks it; tensors of different stacks do not chain.
    thrice = {f"body.{i}.weight": 0.01 * 3 ** (5 - i) for i in range(6)}
    found = _first_record({**thrice, "head.weight": 50.0})
    assert found and found[0].where == "body.0.weight" and found[0].evidence["layers"] == 6
    assert found[0].evidence["ratio"] == 3.0**5
    assert not _first_record({f"body.{i}.weight": 0.01 * 1.8 ** (5 - i) for i in range(6)})
    assert not _first_record(dict(thrice, **{"body.2.weight": 0.01 * 3**2 * 1.1}))
    mixed = {f"blocks.{i}.{'q' if i % 2 else 'v'}.weight": 0.01 * 3 ** (5 - i) for i in range(6)}
    assert not _first_record(mixed)


def test_a_loss_that_just_learnt_scatters_more_than_its_plateau_and_is_not_said_to_climb(
    tmp_path,
):
    # Control: set 143's healthy LSTM (OneCycleLR to 0.3, clipped): its loss fell from 0.69 to
    # about 0.1 by step 35 and then scattered 0.02-0.37 from batch to batch. The scatter was
    # read over the whole window (the flat plateau at 0.69 filling most of it) where the floor
    # was set early, and a median of 0.215 over 0.064 was said to climb away at step 46. The
    # last values' scatter is now read there too, as at a new floor.
    from steadygrad.diagnose.detectors.trends import LOCAL_NOISE, NOISE_Z

    ctx, report = held_out_run(tmp_path, "h143_didgeridoo_lstm_control")
    assert all(math.isfinite(v) for v in ctx.losses) and ctx.losses[-1] < ctx.losses[0] / 3
    assert not [f for f in ctx.monitor.findings if f.kind == "loss_divergence"]
    # hand check, at step 42 where the scatter was last read: the rise of the running median
    # (window 5) over its best stands above NOISE_Z times the scatter of the whole window and
    # below NOISE_Z times that of the last LOCAL_NOISE steps
    x = np.array(ctx.losses[:47])
    medians = [np.median(x[t - 4 : t + 1]) for t in range(4, 47)]
    rise = medians[-1] - min(medians)

    def spread(steps):
        return 1.4826 * np.median(np.abs(steps - np.median(steps))) / math.sqrt(2)

    steps = np.diff(x[:43])
    assert NOISE_Z * spread(steps) < rise < NOISE_Z * spread(steps[-LOCAL_NOISE:])


def test_a_loss_that_climbs_out_of_its_noise_early_is_still_said_to_climb():
    # Trigger kept: a loss falling 2.5 -> 1.0 with small scatter, then climbing steadily back
    # towards 2.0 within the first 64 values (below where it started): a divergence.
    from steadygrad.diagnose.detectors import LossDivergence

    gen = torch.Generator().manual_seed(0)
    noise = (0.02 * torch.randn(60, generator=gen)).tolist()
    losses = [2.5 - 0.05 * t + noise[t] for t in range(30)]
    losses += [1.0 + 0.04 * t + noise[30 + t] for t in range(30)]
    det = LossDivergence()
    found = [f for t, x in enumerate(losses) for f in det.update(Record(t, {"loss": x}))]
    assert found and found[0].severity == "warning" and 30 < found[0].step < 50


def test_logits_a_loss_term_pushes_up_at_every_reading_diverge_however_small_the_rise_yet(
    tmp_path,
):
    # Trigger: set 143's z-loss added with the wrong sign (-2e-2 * logsumexp^2). The loss's
    # gradient along the logits' common shift read -0.04 .. -0.17 at every reading (no loss of
    # the softmax alone moves it), log Z rose at each (1.76 -> 3.52), the run stopped at 90
    # steps, before the NaN: a rise of an eighth of the limit was asked for, and never came.
    ctx, report = held_out_run(tmp_path, "h143_cooper_zloss_sign")
    induced_or_skip(ctx)
    top = report.top
    assert top.cause == "output_logit_divergence" and top.where == ["head"]
    run = steadygrad.load(tmp_path / "h143_cooper_zloss_sign")
    _, shift = run.series("output_shift_gradient")
    _, lse = run.series("logit_lse_mean")
    assert (shift <= -1e-3).all() and (np.diff(lse) > 0).all()


def test_the_same_z_loss_with_its_right_sign_pushes_nothing_up(tmp_path):
    # Control: the same classifier, the z-loss added with its sign (+2e-2): the shift
    # gradient is positive (the term pulls the logits down) and nothing is said of them.
    from scenarios.cases_heldout143 import Regressor, _clusters
    from scenarios.common import seeded

    torch.manual_seed(0)
    model = Regressor(12, 64, act=torch.nn.ReLU, n_out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def loss_fn(out, y):
        ce = torch.nn.functional.cross_entropy(out, y)
        return ce + 2e-2 * torch.logsumexp(out, 1).pow(2).mean()

    ctx, report = fitted(
        tmp_path, model, opt, _clusters(seeded(14303), 12, 6, 64), 90, loss_fn=loss_fn
    )
    assert ctx.losses[-1] < ctx.losses[0]
    _, shift = steadygrad.load(tmp_path / "fitted").series("output_shift_gradient")
    assert (shift > 0).all()
    assert not [d for d in report.diagnoses if d.cause == "output_logit_divergence"]


def test_a_nan_the_loss_made_from_one_part_of_a_concatenated_output_is_placed_at_its_head(
    tmp_path,
):
    # Trigger: set 144's mean and variance heads concatenated, the variance clamped at 0 (not
    # at an epsilon): one sample's variance exactly 0 at step 80, log(0) in the loss. The walk
    # back from the output met the mean head a step before the variance head (the clamp in
    # between) and named it; the output is now read part by part, as the concatenation made it.
    ctx, report = held_out_run(tmp_path, "h144_sinkhole_variance_clamp_zero")
    induced_or_skip(ctx)
    nan = next(d for d in report.diagnoses if d.cause == "nonfinite")
    assert nan.where == ["var_head"] and "exact zero" in nan.summary


def test_the_parts_of_a_concatenation_are_its_modules_outputs_or_none():
    # Hand-built: the parts of cat([mean(h), clamp(var(h))]) are the two heads' outputs; a
    # concatenation with a part no module made (a constant column) is not split.
    from torch import nn

    from steadygrad.monitor.activations import ActivationHooks, _concatenated

    class Heads(nn.Module):
        def __init__(self, constant: bool) -> None:
            super().__init__()
            self.trunk, self.mean, self.var = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(8, 1)
            self.constant = constant

        def forward(self, x):
            h = torch.tanh(self.trunk(x))
            last = torch.ones(len(x), 1) if self.constant else self.var(h).clamp(min=0.0)
            return torch.cat([self.mean(h), last], 1)

    for constant in (False, True):
        model = Heads(constant)
        hooks = ActivationHooks(model)
        hooks.tracing = True
        hooks.install()
        out = model(torch.randn(5, 4))
        hooks.remove()
        parts = _concatenated(out, hooks.node_made_by, hooks.node_shape)
        if constant:
            assert parts is None
            continue
        assert [m for m, _ in parts] == ["mean", "var"]
        assert torch.equal(parts[0][1], out[:, :2].detach())
        assert torch.equal(parts[1][1], out[:, 2:].detach())
