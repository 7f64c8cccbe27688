"""Run shapes from the twentieth session's held-out sets (73-75) and what they showed.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import steadygrad


class _Wrapper(torch.optim.Optimizer):
    """A Lookahead-like wrapper: a torch optimizer whose step runs an inner optimizer on the
    same parameters (so another optimizer steps them while the watched one steps too)."""

    def __init__(self, params) -> None:
        params = list(params)
        super().__init__(params, {"lr": 0.0})
        self.inner = torch.optim.RMSprop(params, lr=1e-2)

    def step(self, closure=None):
        return self.inner.step(closure)


def _rebuilt_run(path, shape: str):
    """A regressor trained 160 steps with RMSprop; ``rebuilt``: at step 100 the loop builds a
    new RMSprop (a resume that restored the weights only) and steps it from then on;
    ``gan``: a second model trained by its own optimizer in the same loop; ``wrapped``: the
    watched optimizer steps an inner one on the same parameters at every step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 1))
    other = nn.Linear(8, 1)
    opt = _Wrapper(model.parameters()) if shape == "wrapped" else None
    opt = opt or torch.optim.RMSprop(model.parameters(), lr=1e-2)
    other_opt = torch.optim.SGD(other.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    true_w = torch.randn(8, 1, generator=gen)
    losses = []
    with steadygrad.watch(model, opt, path, progress=False) as mon:
        for step in range(160):
            if step == 100 and shape == "rebuilt":
                opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
            x = torch.randn(64, 8, generator=gen)
            loss = nn.functional.mse_loss(model(x), torch.tanh(x @ true_w))
            loss.backward()
            opt.step()
            if shape == "gan":
                nn.functional.mse_loss(other(x), x[:, :1]).backward()
                other_opt.step()
                other_opt.zero_grad()
            mon.step(loss)
            opt.zero_grad()
            losses.append(loss.item())
    return losses, mon, steadygrad.load(path), steadygrad.diagnose(path)


@pytest.mark.parametrize("shape", ["rebuilt", "gan", "wrapped"])
def test_an_optimizer_rebuilt_mid_run_is_followed(tmp_path, shape, caplog):
    # Trigger: set 75's Qwen3-ASR resume built a new optimizer and never told the Monitor, which
    # went on watching the old one (no gradients, rates or updates read from then on). The
    # Monitor now sees the new one step the same parameters, follows it, and records it; the new
    # optimizer's fresh state is the restart that makes the loss jump.
    # Controls: a second optimizer on other parameters (a GAN's), and one stepped inside the
    # watched optimizer (a Lookahead-like wrapper), are never followed.
    losses, mon, run, report = _rebuilt_run(tmp_path / shape, shape)
    replaced = [a for a in run.actions() if a.kind == "optimizer_replaced"]
    if shape != "rebuilt":
        assert not replaced and mon.optimizer is not None
        assert "optimizer_restarted" not in run.names()
        return
    assert [a.step for a in replaced] == [100]
    logged = [r.getMessage() for r in caplog.records if "optimizer_replaced" in r.getMessage()]
    assert logged and not any("autopilot" in m for m in logged), logged  # the Monitor's doing
    assert type(mon.optimizer).__name__ == "RMSprop" and not mon.optimizer.state == {}
    restarted = run.series("optimizer_restarted")
    assert restarted[0].tolist() == [100] and restarted[1].tolist() == [100.0]
    steps, grads = run.series("grad_norm")
    assert steps[-1] == 159  # the gradients are still read after the rebuild
    assert max(losses[100:104]) > 10 * sorted(losses[80:100])[10]
    assert report.top.cause == "loss_spike", report.diagnoses
    assert report.top.evidence["optimizer_restarted_at"] == 100
    assert "autopilot_actions" not in [d.cause for d in report.diagnoses]  # not the autopilot's


def _spike_then_overshoot(path, overshoots: list[int]):
    """A run at loss ~0.1 with one loss spike at step 200 (back at once) and unstable-step
    findings at ``overshoots``."""
    from steadygrad.store import RunStore

    gen = torch.Generator().manual_seed(0)
    store = RunStore(path)
    for step in range(300):
        loss = 10.0 if step == 200 else 0.1 + 0.02 * float(torch.rand((), generator=gen))
        store.add_scalars(step, {"loss": loss})
    spike = {"loss": 10.0, "baseline": 0.11, "ratio": 90.0, "z": 200.0}
    found = [steadygrad.Finding("loss_spike", 200, None, {"spikes": 1, "first": spike}, "warning")]
    found += [
        steadygrad.Finding("unstable_steps", s, None, {"median_recent": 2.7, "limit": 1.5})
        for s in overshoots
    ]
    store.add_findings(found)
    store.close()
    return steadygrad.diagnose(path)


@pytest.mark.parametrize("overshoots", [[206], [206, 240]])
def test_one_burst_of_overshooting_after_a_loss_spike_is_its_aftermath(tmp_path, overshoots):
    # Trigger: set 73's SAM run, one batch of shifted labels at step 260 (loss 150x), then the
    # directional sharpness read above the limit for a few steps as the weights came back:
    # named "sharpness above the limit", the spike's own update was what overshot.
    # Control: overshooting that comes back later is the step size's own doing.
    report = _spike_then_overshoot(tmp_path / str(len(overshoots)), overshoots)
    sharp = next(d for d in report.diagnoses if d.cause == "sharpness_above_limit")
    if len(overshoots) == 1:
        assert report.top.cause != "sharpness_above_limit", report.diagnoses
        assert "loss spike at step 200" in sharp.why
    else:
        assert report.top.cause == "sharpness_above_limit", report.diagnoses


def test_the_sam_run_with_a_shard_of_shifted_labels_is_a_data_outlier(tmp_path):
    from helpers import held_out_run

    ctx, report = held_out_run(tmp_path, "h73_sam_shifted_label_shard")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    assert report.top.cause == "data_outlier" and report.top.first_step == 260, report.diagnoses


def test_a_poisoning_gradient_on_a_step_that_zeroed_early_is_still_read(tmp_path):
    # set 75's NODE net zeroes its gradients before mon.step; the one step whose loss scale
    # was not divided back (65536x, step 150) fell on an activation-hook step where nothing had
    # read the gradients before the update: it went unrecorded, and the Adamax it poisoned
    # unnamed. The gradients of such a loop are now read as the update is about to use them.
    from helpers import held_out_run

    ctx, report = held_out_run(tmp_path, "h75_node_unscale_skipped_adamax")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    steps, norms = steadygrad.load(tmp_path / "h75_node_unscale_skipped_adamax").series("grad_norm")
    assert 150 in steps.tolist() and norms[steps.tolist().index(150)] > 1000
    assert report.top.cause == "adam_second_moment_poisoned", report.diagnoses


def test_what_a_restarts_jolt_set_off_is_its_consequence(tmp_path):
    # set 74's hash-grid INR resumed at step 300 without Adagrad's state: the loss jumped
    # 10,000x and its gradients grew 200x for a few steps, and the closer look read the ReLU
    # layer's units as dying. Both were named before the restart that made them.
    from helpers import held_out_run

    ctx, report = held_out_run(tmp_path, "h74_hash_inr_adagrad_state_lost")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    assert report.top.cause == "loss_spike", report.diagnoses
    assert report.top.evidence["optimizer_restarted_at"] == 300
    for cause in ("exploding_gradients", "loss_of_plasticity"):
        d = next((d for d in report.diagnoses if d.cause == cause), None)
        assert d is None or "started again from nothing at step 300" in d.why, d


@pytest.mark.parametrize("first", [float("nan"), 0.01])
def test_a_tensor_not_yet_moved_from_zero_is_not_judged_too_large(first):
    # Trigger: Fixup's scalar biases start at zero behind zero-initialised layers: no gradient
    # at the first step, a first ratio of 0/0, then ratios near 1 as they leave zero (set 74's
    # Fixup ResNet). Control: a tensor whose first ratio was finite is judged as before.
    from steadygrad.core import Record
    from steadygrad.diagnose.detectors import UpdateRatioOutOfRange

    det = UpdateRatioOutOfRange()
    found = []
    for t, ratio in enumerate([first, 0.9, 0.95, 0.9, 0.97]):
        found += det.update(Record(10 * t, {"update_ratio/blocks.0.scale1": ratio}))
    assert bool(found) == (first == first), found


def test_a_zero_initialised_head_that_grew_is_no_runaway(tmp_path):
    # set 74's Fixup ResNet (last layer zero-initialised) with labels scrambled more and more
    # from step 120: its head grew 584x out of nothing, read as weights running away and the
    # logits diverging from step 1; the loss's slow climb is what happened.
    from helpers import held_out_run

    ctx, report = held_out_run(tmp_path, "h74_fixup_label_scramble_creep")
    assert ctx.checks and all(ctx.checks.values()), ctx.checks
    assert report.top.cause == "loss_divergence", report.diagnoses
