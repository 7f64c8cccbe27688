"""Run shapes from the twenty-seventh session's re-reading of stored runs (sets 5-98) and its
held-out sets 99-101.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from helpers import diagnose_stored, induced_report
from torch import nn

import steadygrad


def test_units_dead_before_a_run_went_non_finite_are_not_its_cause(tmp_path):
    # Trigger: set 51's mixture-density network, whose sigma head's exp overflows at step ~170
    # as its negative log-likelihood keeps falling; half of its body's ReLU units read dead from
    # step 24. Dead units output zeros: they make no NaN, the overflow does.
    report = induced_report(tmp_path, "h51_mdn_sigma_exp_overflow")
    assert report.diagnoses[0].cause == "nonfinite"
    dead = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    assert "non-finite value" in dead.consequence_of


@pytest.mark.parametrize("ends", ["nan", "stuck"])
def test_units_killed_by_a_burst_stay_its_harm_unless_the_run_went_non_finite(tmp_path, ends):
    # a rate burst at step 120 kills a layer's ReLU units (read at 121) and throws the loss up;
    # the control's loss stays up, the units dead (the harm that stayed); the trigger's weights
    # then grow into a NaN at 170: dead units made none of it
    rows = [{"loss": 2.0 - 0.01 * t} for t in range(120)]
    rows += [{"loss": 3.0 + (0.2 * t if ends == "nan" else 0.0)} for t in range(50)]
    findings = [
        ("loss_of_plasticity", 121, "fc2", {"dead_units": 0.9}, "warning"),
        ("loss_divergence", 122, None, {"ratio": 3.0}, "critical"),
    ]
    if ends == "nan":
        rows.append({"loss": float("nan")})
        findings.append(("nonfinite", 170, None, {"nonfinite_params": 12}, "critical"))
    report = diagnose_stored(tmp_path, ends, rows, findings)
    dead = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    assert bool(dead.consequence_of) == (ends == "nan")
    assert (report.top.cause == "loss_of_plasticity") == (ends == "stuck")


@pytest.mark.parametrize("after", ["back", "high"])
def test_updates_too_large_for_one_reading_long_before_a_break_do_not_explain_it(tmp_path, after):
    # Trigger: set 55's looped transformer under SGD: its head's updates read 0.42 of its norm
    # at step 40 (limit 0.25), then 0.03-0.2 to step 190; at 195 its gradients explode into a
    # NaN, and every ratio read after is NaN. Those are the break's: the head was back in range
    # 150 steps before it. Control: the head's updates stay too large up to the break.
    rows = []
    for t in range(250):
        row = {"loss": 2.0 - 0.005 * t if t < 196 else float("nan")}
        if t % 10 == 0:
            back = 0.05 if after == "back" else 0.4
            row["update_ratio/head.weight"] = (
                0.002 if t < 40 else 0.42 if t == 40 else back if t < 196 else float("nan")
            )
        rows.append(row)
    large = {"direction": "too_large", "update_ratio": 0.42, "high": 0.25}
    findings = [
        ("update_ratio_out_of_range", 40, "head.weight", large, "warning"),
        ("gradient_growth", 195, "fc2.weight", {"growth": 500.0}, "critical"),
        ("nonfinite", 196, None, {"nonfinite_params": 40}, "critical"),
    ]
    report = diagnose_stored(tmp_path, after, rows, findings)
    expected = "exploding_gradients" if after == "back" else "update_ratio_out_of_range"
    assert report.top.cause == expected


class _CountNet(nn.Module):
    """A log-rate regressor whose caller exponentiates its output (a Poisson log link)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)

    def log_rate(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x)).squeeze(-1)


@pytest.mark.parametrize("bad", ["exp", "target"])
def test_a_log_rate_whose_exp_overflows_float16_names_its_head(tmp_path, bad):
    # Trigger: set 98's Poisson count net under fp16 autocast, the rate exp(log-rate) taken in
    # the caller's code: once a log-rate passes log(65504) = 11.09 the rate is inf, the loss
    # too, and every module's output is finite: the head whose output the exp overflowed is
    # named. Control: a count of NaN in the targets makes the loss NaN; no output is to blame.
    torch.manual_seed(0)
    model = _CountNet()
    with torch.no_grad():
        model.head.bias.fill_(10.0 if bad == "exp" else 1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    scaler = torch.amp.GradScaler("cpu")
    gen = torch.Generator().manual_seed(1)
    rates = []
    with steadygrad.watch(model, opt, tmp_path / bad, scaler=scaler, progress=False) as mon:
        for step in range(30):
            x = torch.randn(32, 4, generator=gen)
            y = torch.full((32,), 2e5)
            if bad == "target" and step == 20:
                y[3] = float("nan")
            with torch.autocast("cpu", dtype=torch.float16):
                rate = torch.exp(model.log_rate(x))
            loss = (rate.float() - y * torch.log(rate.float())).mean()
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            mon.step(loss)
            opt.zero_grad()
            rates.append(rate.dtype == torch.float16 and bool(torch.isinf(rate).any()))
    assert any(rates) == (bad == "exp")  # the oracle: the fp16 exp overflowed, or never did
    found = [f for f in steadygrad.load(tmp_path / bad).findings() if f.kind == "nonfinite"]
    origin = found[0].evidence["forward_origin"]
    assert origin["module"] == ("head" if bad == "exp" else None)


class _KeywordBlock(nn.Module):
    """A layer called with keywords only, as Hugging Face's decoder layers are."""

    def __init__(self, broken: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)
        self.broken = broken

    def forward(self, *, hidden_states: torch.Tensor) -> torch.Tensor:
        out = self.fc(hidden_states)
        return out.log() if self.broken else out  # log of negatives: NaN from finite values


class _KeywordNet(nn.Module):
    def __init__(self, broken: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.block = _KeywordBlock(broken)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(hidden_states=self.embed(x)))


@pytest.mark.parametrize("nan_in", ["input", "block"])
def test_a_nan_in_the_batch_is_placed_where_it_came_in(tmp_path, nan_in):
    # Trigger: set 98's Fuyu, whose NaN pixel went through its patch embedding into decoder
    # layers called with keywords only (no input a hook sees): the first of them was named its
    # producer. A NaN in the batch is placed at the module that took it in. Control: a layer
    # called with keywords that makes the NaN itself from finite values is still named.
    torch.manual_seed(0)
    model = _KeywordNet(broken=nan_in == "block")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    with steadygrad.watch(model, opt, tmp_path / nan_in, progress=False) as mon:
        for step in range(12):
            x = torch.randn(16, 4, generator=gen)
            if nan_in == "input" and step == 10:
                x[2, 1] = float("nan")
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            if not torch.isfinite(loss):
                break
    report = steadygrad.diagnose(tmp_path / nan_in)
    nonfinite = next(d for d in report.diagnoses if d.cause == "nonfinite")
    assert nonfinite.where == (["embed"] if nan_in == "input" else ["block"])


class _TwoHeads(nn.Module):
    """A trunk with a head the loss reads and a second head whose output is returned too (a
    score head, a duration predictor); with ``detached`` the second head's output is fed back,
    detached, into what the first reads (a frozen layer)."""

    def __init__(self, detached: bool) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(8, 32), nn.Tanh())
        self.score_head = nn.Linear(32, 32)
        self.head = nn.Linear(32, 4)
        self.detached = detached

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        score = self.score_head(h)
        if self.detached:
            h = h + score.detach()
        return self.head(h), score


@pytest.mark.parametrize("detached", [False, True])
def test_a_head_whose_output_the_loss_never_reads_is_dead_code_not_a_frozen_layer(
    tmp_path, detached
):
    # Trigger: set 101's SAM-HQ and set 100's VITS controls return heads their losses never
    # read (an IoU score head, a duration predictor): no gradient, and a nudge changes the
    # model's output, so they read as frozen layers. A nudge that changes no output the loss
    # was computed from is dead code. Control: the same head's output fed back detached.
    torch.manual_seed(0)
    model = _TwoHeads(detached)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    with steadygrad.watch(model, opt, tmp_path / str(detached), progress=False) as mon:
        for _ in range(40):
            x = torch.randn(32, 8, generator=gen)
            logits, _ = model(x)
            loss = nn.functional.cross_entropy(logits, (x[:, 0] > 0).long())
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    assert model.score_head.weight.grad is None  # the oracle: no gradient ever reached it
    found = steadygrad.load(tmp_path / str(detached)).findings()
    head = {(f.where, f.severity, f.evidence.get("direction")) for f in found if f.where}
    if detached:
        assert ("score_head.weight", "warning", "frozen") in head
    else:
        assert head >= {
            ("score_head.weight", "info", "unused"),
            ("score_head.bias", "info", "unused"),
        }
        assert not [f for f in found if f.severity != "info"]


@pytest.mark.parametrize("level", [1e-16, 1e-3])
def test_a_spike_of_a_gradient_below_float32s_resolution_of_the_step_is_rounding(level):
    # Trigger: set 101's SAM-HQ control and set 99's ZoeDepth: a LayerNorm weight whose
    # gradient cancels to ~1e-16 rose to ~1e-12, 10^4 times its level, while the step's
    # gradient was ~1: read as critical spikes, the first things named. A share of the step's
    # gradient under float32's epsilon (2^-23) is rounding residue. Control: a tensor at 1e-3
    # of the step that rises 10^4 times carries a tenth of it: critical.
    from steadygrad.core import Record
    from steadygrad.diagnose.detectors.transformer import GradientSpike

    detector = GradientSpike()
    found = []
    for step in range(30):
        norm = level * (1e4 if step == 25 else 1.0 + 0.1 * (step % 3))
        record = Record(step, {"grad_norm": 1.0, "grad_norm/norm.weight": norm})
        found += detector.update(record)
    assert [f.step for f in found] == [25]  # the oracle: one spike, 10^4 times its level
    assert found[0].evidence["spike_factor"] > 5e3
    assert found[0].severity == ("info" if level == 1e-16 else "critical")


class _LayerDropNet(nn.Module):
    """Blocks skipped at random in training by NumPy's generator (Hugging Face's LayerDrop in
    VITS), and a score head whose output the loss never reads."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(4))
        self.inp, self.head, self.score_head = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.inp(x))
        for block in self.blocks:
            if self.training and np.random.uniform(0, 1) < 0.3:
                continue
            h = h + torch.tanh(block(h))
        return self.head(h), self.score_head(h)


def _layer_drop_losses(tmp_path, watched: bool) -> list[float]:
    torch.manual_seed(0)
    np.random.seed(0)
    model = _LayerDropNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    losses = []
    with contextlib.ExitStack() as stack:
        mon = (
            stack.enter_context(steadygrad.watch(model, opt, tmp_path, progress=False))
            if watched
            else None
        )
        for _ in range(30):
            x = torch.randn(32, 8, generator=gen)
            loss = nn.functional.cross_entropy(model(x)[0], (x[:, 0] > 0).long())
            loss.backward()
            opt.step()
            if mon is not None:
                mon.step(loss)
            opt.zero_grad()
            losses.append(float(loss))
    return losses


def test_a_watched_run_draws_what_it_would_unwatched_from_numpy_too(tmp_path):
    # Trigger: set 100's VITS control, whose text encoder skips layers by np.random (LayerDrop):
    # the check for unused tensors re-ran the forward, which drew from NumPy's generator; the
    # re-runs skipped other layers than the step had (the score head it tested read as changing
    # the output, a frozen layer), and the training after drew other numbers than unwatched.
    # Oracle: the same run unwatched.
    assert _layer_drop_losses(tmp_path / "watched", True) == _layer_drop_losses(tmp_path, False)
    found = steadygrad.load(tmp_path / "watched").findings()
    head = {(f.where, f.evidence.get("direction")) for f in found if f.where}
    assert ("score_head.weight", "unused") in head
    assert not [f for f in found if f.severity != "info"]


@pytest.mark.parametrize("grew_in", ["head", "body"])
def test_a_group_set_apart_whose_tensors_alone_grew_into_the_break_is_the_cause(tmp_path, grew_in):
    # Trigger: set 100's SpanBERT, whose span-boundary head sits in an optimizer group at 100x
    # the body's rate: its gradients grew from step 49 and the run broke at 206. The group's
    # rate was named only as info (a head may be meant to learn faster), the growth first. When
    # the run broke with gradients growing in that group alone, its rate is the cause.
    # Control: the same groups, the growth in a body tensor: the explosion stays first.
    head, body = ["head.0.weight", "head.0.bias"], ["body.0.weight", "body.0.bias"]
    rows = [
        {"loss": 2.0 - 0.002 * t if t < 200 else 2.0 * 1.5 ** (t - 199), "lr/0": 1e-3, "lr/1": 0.1}
        for t in range(215)
    ]
    grown = "head.0.weight" if grew_in == "head" else "body.0.weight"
    findings = [
        ("gradient_growth", 205, grown, {"growth": 400.0, "started_at_step": 60}, "critical"),
        ("loss_divergence", 206, None, {"ratio": 3.0}, "critical"),
    ]
    config = {"param_groups": {"lr/0": body, "lr/1": head}}
    report = diagnose_stored(tmp_path, grew_in, rows, findings, config=config)
    expected = "update_ratio_out_of_range" if grew_in == "head" else "exploding_gradients"
    assert report.top.cause == expected
    apart = next(d for d in report.diagnoses if d.cause == "update_ratio_out_of_range")
    assert apart.severity == ("warning" if grew_in == "head" else "info")
