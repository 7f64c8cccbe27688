"""Run shapes the fifteenth wave's held-out sets showed, each a trigger and a control: logits
masked out by the code (a first mention with no antecedent), a loss that squashes the model's
output, a GradScaler's start-up search for its scale, and updates too large for a while long
before a run broke."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import diagnose_stored
from torch import nn

import steadygrad
from steadygrad.monitor.output_logits import (
    choice_rows,
    live_logits,
    softmax_collapse_fraction,
)


def test_rows_with_every_other_candidate_masked_out_cannot_collapse():
    # row 0: a first mention, every antecedent masked with -1e4, only "none" (logit 0) left;
    # row 1: one antecedent 40 above "none" (collapsed in float32); row 2: a close call
    logits = torch.tensor([[-1e4, -1e4, 0.0], [40.0, -1e4, 0.0], [1.0, -1e4, 0.5]])
    assert live_logits(logits).tolist() == [
        [False, False, True],
        [True, False, True],
        [True, False, True],
    ]
    assert choice_rows(logits).tolist() == [False, True, True]
    targets = torch.tensor([2, 0, 0])
    # one collapsed row of the two that had a choice (the masked row counted before: 2 of 3)
    assert float(softmax_collapse_fraction(logits, targets)) == 0.5
    # control: a single -1e4 is a learnt logit (no fill repeats it), and -inf is always a mask
    learnt = torch.tensor([[-1e4, 0.0], [3.0, 1.0]])
    assert choice_rows(learnt).tolist() == [True, True]
    assert choice_rows(torch.tensor([[0.0, -math.inf], [1.0, 2.0]])).tolist() == [False, True]


class MentionRanker(nn.Module):
    """Scores each mention against the earlier ones (later ones masked with -1e4) and a fixed
    "no antecedent" logit 0: the first mention's row has that one candidate."""

    def __init__(self, mentions: int = 6) -> None:
        super().__init__()
        self.pair = nn.Linear(8, 1)
        self.register_buffer("earlier", torch.tril(torch.ones(mentions, mentions), -1).bool())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.pair(x[:, :, None] * x[:, None, :]).squeeze(-1)
        scores = scores.masked_fill(~self.earlier, -1e4)
        none = scores.new_zeros(*scores.shape[:-1], 1)
        return torch.cat([scores, none], -1).flatten(0, 1)


def test_a_masked_first_mention_is_no_softmax_collapse(tmp_path):
    torch.manual_seed(0)
    model = MentionRanker()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    for _ in range(40):
        x = torch.randn(16, 6, 8)
        index = torch.arange(6)
        earlier = (torch.rand(16, 6) * index).long()  # an antecedent before mention i
        # half the mentions, and every first one, have none (class 6)
        y = torch.where((torch.rand(16, 6) < 0.5) | (index == 0), 6, earlier)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y.flatten())
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    run = steadygrad.load(tmp_path / "run")
    collapse = run.series("softmax_collapse")[1]
    # every sixth row (the first mentions) is one-hot by construction: none of them counts
    assert len(collapse) and float(collapse.max()) == 0.0
    assert "softmax_collapse" not in steadygrad.diagnose(run).causes()
    # the logit statistics leave the fill out too: no logit of 1e4 was the model's
    assert float(run.series("output_logit_max")[1].max()) < 100.0


class Squasher(nn.Module):
    """A hidden tanh layer fed inputs 50x too large (saturated), or a healthy one."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain
        self.hidden, self.out = nn.Linear(4, 16), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.gain * x)))


@pytest.mark.parametrize("where", ["loss", "model"])
def test_a_sigmoid_the_loss_applies_to_the_output_is_no_saturated_layer(tmp_path, where):
    torch.manual_seed(0)
    gain = 1.0 if where == "loss" else 50.0
    model = Squasher(gain)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    mon = steadygrad.Monitor(model, opt, tmp_path / where, progress=False)
    for _ in range(30):
        x = torch.randn(64, 4)
        y = (x[:, :1] > 0).float()
        # a confident output squashed by the loss: its sigmoid sits in the tails
        p = torch.sigmoid(30.0 * model(x))
        loss = (1 - (2 * (p * y).sum() + 1) / (p.sum() + y.sum() + 1)).mean()
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    run = steadygrad.load(tmp_path / where)
    # the loss's sigmoid, outside the model's forward, is no layer (it was read as "<root>")
    assert "saturated/<root>" not in run.names()
    assert "loss_of_plasticity" not in steadygrad.diagnose(run).causes() or where == "model"
    saturated = float(run.series("saturated/hidden")[1].max())
    # control: the hidden layer's tanh, inside the forward, is read, saturated when fed 50x
    assert saturated > 0.9 if where == "model" else saturated < 0.5


def _scaled_run(tmp_path, name: str, reset_at: int | None):
    """fp16 autocast with a GradScaler starting at 2**16: the summed loss's gradients overflow
    float16 until the scale has been halved a few times; ``reset_at`` sets it back mid-run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1000)
    mon = steadygrad.Monitor(model, opt, tmp_path / name, progress=False)
    gen = torch.Generator().manual_seed(0)
    for step in range(60):
        x = torch.randn(64, 16, generator=gen)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = ((model(x).float() - 10 * x[:, :1]) ** 2).sum()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update(2.0**16 if step == reset_at else None)
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    run = steadygrad.load(tmp_path / name)
    skipped = run.series("optimizer_skipped")[0].tolist()
    return steadygrad.diagnose(run), skipped


def test_a_grad_scalers_start_up_search_is_no_overflow(tmp_path):
    report, skipped = _scaled_run(tmp_path, "search", reset_at=None)
    search = next(i for i, s in enumerate(skipped) if s != i)  # skips in a row from step 0
    assert search >= 4 and len(skipped) / 60 > 0.05  # counted whole, over the 5% of a warning
    amp = next(d for d in report.diagnoses if d.cause == "amp_overflow")
    assert amp.severity == "info" and amp.evidence["scale_search_steps"] == search
    assert "start-up search" in amp.summary
    # control: the scale set back to 2**16 mid-run overflows again, in the run's own steps
    report, skipped = _scaled_run(tmp_path, "reset", reset_at=30)
    assert sum(s > 30 for s in skipped) >= 4
    amp = next(d for d in report.diagnoses if d.cause == "amp_overflow")
    assert amp.severity == "warning"


@pytest.mark.parametrize("back", [True, False])
def test_updates_too_large_for_a_while_long_before_a_break_do_not_explain_it(tmp_path, back):
    # a decoder's value projection took steps of 0.35 of its weights around step 100, then 0.1;
    # the loss, best at step 104, climbed slowly (labels corrupted at a rising rate), found at 250
    rows = []
    for t in range(300):
        values = {"loss": 1.0 - 0.005 * t if t < 105 else 0.5 + 0.01 * (t - 105)}
        if t % 10 == 0:
            high = 80 <= t <= 110 or not back and t >= 80
            values["update_ratio/dec.v_proj.weight"] = 0.35 if high else 0.1
        rows.append(values)
    ratio = ("update_ratio_out_of_range", 100, "dec.v_proj.weight", {"direction": "too_large"})
    found = [
        (*ratio[:3], {**ratio[3], "update_ratio": 0.35, "high": 0.25}, "warning"),
        ("loss_divergence", 250, None, {"best_level": 0.5, "best_level_step": 104}, "critical"),
    ]
    report = diagnose_stored(tmp_path, str(back), rows, found)
    top = report.top.cause
    if back:  # in range from step 120 on: an episode the run got over long before it broke
        assert top == "loss_divergence"
        late = next(d for d in report.diagnoses if d.cause == "update_ratio_out_of_range")
        assert late.evidence["back_within_steps"] == 20 and "back to normal" in late.why
    else:  # control: still too large when the loss climbed
        assert top == "update_ratio_out_of_range"


class GlobalContext(nn.Module):
    """Sums a feature map (no mean) into a context vector: the float16 sum passes 65504 on
    pixels given as 0-255."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(h.sum((2, 3)))


class Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.context, self.head = (
            nn.Conv2d(1, 4, 3, padding=1),
            GlobalContext(),
            nn.Linear(4, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.context(torch.relu(self.conv(x))))


class LogScale(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


@pytest.mark.parametrize("fault", ["overflow", "log_zero"])
def test_a_forward_pass_that_overflows_float16_is_mixed_precision_not_a_plain_nan(tmp_path, fault):
    torch.manual_seed(0)
    model = nn.Sequential(LogScale(), Pooled()) if fault == "log_zero" else Pooled()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = steadygrad.Monitor(model, opt, tmp_path / fault, progress=False)
    for step in range(30):
        x = torch.rand(8, 1, 32, 32) + 0.5
        if step == 20:  # pixels as 0-255 (sum of 4096 of them: ~1e5), or a zero pixel
            x = x * 255 if fault == "overflow" else x.index_fill(2, torch.tensor([3]), 0.0)
        with torch.autocast("cpu", dtype=torch.float16):
            loss = model(x).float().pow(2).mean()
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    report = steadygrad.diagnose(tmp_path / fault)
    if fault == "overflow":  # the pooled sum is finite in float32: float16's range was passed
        assert report.top.cause == "amp_overflow" and report.top.first_step == 20
        assert report.top.where == ["context"]
        assert report.top.evidence["forward_origin"]["float16_overflow"] is True
    else:  # control: log(0) is -inf in float32 too, no overflow of float16's range
        assert report.top.cause == "nonfinite" and "amp_overflow" not in report.causes()
        assert report.top.where[0] == "0"
        assert "float16_overflow" not in report.top.evidence["forward_origin"]


@pytest.mark.parametrize("grown", ["in_the_explosion", "before_it"])
def test_weights_the_explosion_itself_grew_are_no_growth_everywhere(tmp_path, grown):
    # an IRNN whose gradients grow from step 183 and explode into a NaN at 251; the loss climbs
    # from 243 and breaks at 249. The last updates, of exploding gradients, grew every weight 1e7x
    tensors = ("emb.weight", "enc.weight_ih", "enc.weight_hh", "dec.weight", "out.weight")
    rows = []
    for t in range(252):
        loss = 4.0 - 1.8 * min(t, 214) / 214 if t < 243 else 2.2 * 3.0 ** (t - 242)
        grad = 1.0 if t < 183 else 1.0 * 1.05 ** (t - 183)
        if grown == "before_it":  # control: a decay of the wrong sign grew them all 4x first
            weight = 4.0 ** (t / 243)
        else:
            weight = 1.0 + 0.3 * t / 243 if t < 249 else 1e7
        values = {"loss": loss if t < 251 else math.nan, "grad_norm": grad}
        for name in tensors:
            values[f"grad_norm/{name}"] = grad / 2
            values[f"param_norm/{name}"] = weight
        rows.append(values)
    found = [
        (
            "gradient_growth",
            241,
            "dec.weight",
            {"started_at_step": 183, "growth": 42.0},
            "critical",
        ),
        ("loss_divergence", 243, None, {"best_level": 2.2, "best_level_step": 214}, "warning"),
        ("loss_divergence", 249, None, {"best_level": 2.2, "best_level_step": 214}, "critical"),
        ("nonfinite", 251, None, {"loss": math.nan}, "critical"),
    ]
    report = diagnose_stored(tmp_path, grown, rows, found)
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    if grown == "in_the_explosion":  # the weights as the loss began to climb: 1.3x
        assert report.top.cause == "exploding_gradients"
        assert "median_weight_growth" not in exploding.evidence
    else:
        assert "everywhere" in exploding.why and report.top.cause != "exploding_gradients"


@pytest.mark.parametrize("unfrozen", [False, True])
def test_a_gradient_left_over_from_pre_training_is_no_gradient_a_frozen_layer_gets(
    tmp_path, unfrozen
):
    # pre-train a model, leave its gradients in place, freeze all but the biases (BitFit) and
    # adapt those; control: the head is unfrozen after the optimizer was built without it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    nn.functional.mse_loss(model(x), y).backward()  # .grad stays on every tensor
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("bias"))
    opt = torch.optim.Adam([p for n, p in model.named_parameters() if n.endswith("bias")], 1e-2)
    mon = steadygrad.Monitor(model, opt, tmp_path / str(unfrozen), progress=False)
    if unfrozen:
        model[2].weight.requires_grad_(True)  # gets gradients, never trained
    for _ in range(20):
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    found = steadygrad.load(tmp_path / str(unfrozen)).findings()
    strays = {f.where for f in found if f.evidence.get("direction") == "not_in_optimizer"}
    assert strays == ({"2.weight"} if unfrozen else set())
