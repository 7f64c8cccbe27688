"""Run shapes from the twenty-first session's held-out sets (76-78) and what they showed.

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.core.metrics import OPTIMIZER_FAMILY
from steadygrad.diagnose.detectors import UpdateRatioOutOfRange


@pytest.mark.parametrize(
    "family, rate, grad, frozen",
    [
        ("sgd", 0.3, 1e-6, False),  # 0.3 * 1e-6 / 30 = 1e-8: under the bar, asked by SGD itself
        ("momentum", 0.3, 5e-8, False),  # even a momentum's 100x asks only 5e-8
        ("sgd", 0.3, 1e-3, True),  # SGD asks 1e-5, nothing moved: frozen by a setting
        ("momentum", 0.3, 1e-6, True),  # with a momentum's gain it may ask 1e-6
        ("adam", 0.3, 1e-6, True),  # Adam's step does not shrink with the gradient
    ],
)
def test_a_step_too_small_for_its_weights_is_no_frozen_layer(family, rate, grad, frozen):
    # Trigger: set 76's Griffin block under SGD, whose input gate was shut: the gradient of its
    # decay parameter (norm 30) was 1e-6, and 0.3 times that moves no float32 weight of it:
    # its update ratio read exactly 0, "frozen". The other tensors' gradients (1e-6 of their
    # weights) keep it above the relative test's 1e-3 share. Controls: a rate and gradient
    # that ask a visible step, and optimizers whose step does not scale with the gradient.
    det = UpdateRatioOutOfRange()
    found = []
    for t in range(4):
        values = {"lr/0": rate, "update_ratio/gate.lam": 0.0, "grad_norm/gate.lam": grad}
        values["param_norm/gate.lam"] = 30.0
        for i in range(5):
            values.update({f"update_ratio/fc{i}.weight": 1e-3, f"param_norm/fc{i}.weight": 1.0})
            values[f"grad_norm/fc{i}.weight"] = 1e-6
        meta = {OPTIMIZER_FAMILY: family} if t == 0 else {}
        found += det.update(Record(10 * t, values, meta=meta))
    (finding,) = found
    assert finding.where == "gate.lam"
    assert (finding.severity, finding.evidence["direction"]) == (
        ("warning", "frozen") if frozen else ("info", "vanishing")
    )


class _Experts(nn.Module):
    """A top-1 mixture of four experts; ``starved``: the router is fixed (not trained) with
    biases that send every token to expert 2 or 3, so experts 0 and 1 never see one."""

    def __init__(self, starved: bool) -> None:
        super().__init__()
        self.router = nn.Linear(16, 4)
        self.experts = nn.ModuleList(nn.Linear(16, 16) for _ in range(4))
        if starved:
            with torch.no_grad():
                self.router.weight.mul_(0.01)
                self.router.bias.copy_(torch.tensor([-5.0, -5.0, 0.0, 0.0]))
            self.router.requires_grad_(False)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.router(x).argmax(-1)
        out = torch.zeros_like(x)
        for i, expert in enumerate(self.experts):
            picked = choice == i
            if picked.any():
                out[picked] = torch.relu(expert(x[picked]))
        return self.head(out + x)


class _Stack(nn.Module):
    """Residual blocks each with an output and a residual projection, the last block's
    residual unused (as in WaveNet and N-BEATS): dead code in a member that learns."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"out": nn.Linear(16, 16), "res": nn.Linear(16, 16)}) for _ in range(3)
        )
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = 0.0
        for block in self.blocks:
            skip = skip + torch.tanh(block["out"](x))
            x = x + torch.tanh(block["res"](x))  # the last block's x is never used
        return self.head(skip)


@pytest.mark.parametrize("shape", ["starved", "balanced", "last_residual"])
def test_a_list_member_no_input_ever_reached_lost_its_plasticity(tmp_path, shape):
    # Trigger: set 76's upcycled MoE, whose router sent every token to two of four experts
    # from the first step: the other two never got a gradient, found "unused" (dead code,
    # info) and nothing more. Controls: a trained router that uses every expert, and a stack
    # whose last residual projection is unused while the rest of its block learns.
    torch.manual_seed(0)
    model = _Stack() if shape == "last_residual" else _Experts(starved=shape == "starved")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(16, 1, generator=gen)
    experts_used = set()
    with steadygrad.watch(model, opt, tmp_path, progress=False) as mon:
        for _ in range(120):
            x = torch.randn(64, 16, generator=gen)
            if shape != "last_residual":
                experts_used |= set(model.router(x).argmax(-1).tolist())
            loss = nn.functional.mse_loss(model(x), torch.tanh(x @ target))
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    report = steadygrad.diagnose(tmp_path)
    plastic = [d for d in report.diagnoses if d.cause == "loss_of_plasticity"]
    if shape == "starved":
        assert experts_used == {2, 3}  # the fault happened: experts 0 and 1 got no token
        assert report.diagnoses[0].cause == "loss_of_plasticity", report.diagnoses
        assert sorted(report.diagnoses[0].where) == ["experts.0", "experts.1"]
    else:
        assert shape == "last_residual" or experts_used == {0, 1, 2, 3}
        assert not plastic, plastic


@pytest.mark.parametrize("masked", [1, 0])
def test_a_single_action_masked_with_minus_1e9_is_a_fill_not_a_logit(tmp_path, masked):
    # Trigger: set 78's GFlowNet masks the moves off its grid with -1e9 before log_softmax; in
    # a batch where one position sits at the edge that fill is held by one entry, and it was
    # read as a learnt logit: the mean logit "moved" by millions and the output logits were
    # called diverging in a run whose policy trained well. Control: no mask at all.
    torch.manual_seed(0)
    policy = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    off_grid = torch.zeros(16, 3, dtype=torch.bool)
    off_grid[0, 2] = bool(masked)
    with steadygrad.watch(policy, opt, tmp_path, progress=False) as mon:
        for step in range(120):
            x = torch.randn(16, 8, generator=gen)
            target = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
            logits = policy(x)
            if step >= 10:  # the first position of the batch may not take action 2
                logits = logits.masked_fill(off_grid, -1e9)
            loss = nn.functional.nll_loss(torch.log_softmax(logits, -1), target)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    run = steadygrad.load(tmp_path)
    steps, largest = run.series("output_logit_max")
    assert len(steps) >= 4 and largest.max() < 100.0, largest  # the fill is no logit
    kinds = {f.kind for f in run.findings() if f.severity != "info"}
    assert "output_logit_divergence" not in kinds, kinds
    assert loss.item() < 0.6


@pytest.mark.parametrize("shape", ["lone", "recurrent", "grew_into_it"])
def test_a_lone_burst_that_wrecked_the_weights_is_a_spike(tmp_path, shape):
    # Trigger: set 77's spatial transformer, whose localisation net's gradient normaliser was
    # re-initialised on a resume at step 180: its gradient jumped 1500x at one step out of a
    # steady level, the update wrecked the weights and the loss stalled, and it was named
    # exploding gradients. Controls: the same burst in a model with a recurrence (an
    # explosion through time, as in an RNN) and a gradient that grew into the burst.
    from helpers import diagnose_stored

    rows = []
    for t in range(260):
        grad = 1.5 + 0.2 * math.sin(t)
        if shape == "grew_into_it" and 170 <= t < 180:
            grad = 1.5 * 2.0 ** (t - 169)
        rows.append({"loss": 2.3 - 1.5 * min(t, 180) / 180 if t <= 180 else 2.3, "grad_norm": grad})
    rows[180]["grad_norm"] = 2300.0
    for t in range(181, 260):
        rows[t]["grad_norm"] = 0.3
    findings = [
        ("gradient_growth", 180, "loc.0.bias", {"grad_norm": 2300.0, "next_grad_norm": 0.3,
                                                "ratio": 7667.0, "wrecked_weights": True},
         "critical"),
        ("gradient_spike", 180, "loc.0.weight", {"grad_norm": 12.2, "running_rms": 1.7e-4,
                                                 "spike_factor": 7e4, "theta": 5000.0},
         "warning"),
        ("gradient_spike", 180, "loc.0.weight", {"grad_norm": 12.2, "running_rms": 1.7e-4,
                                                 "spike_factor": 7e4, "theta": 5000.0},
         "critical"),
    ]  # fmt: skip
    config = {"recurrent_modules": ["rnn"] if shape == "recurrent" else []}
    report = diagnose_stored(tmp_path, shape, rows, findings, config)
    expected = "gradient_spike" if shape == "lone" else "exploding_gradients"
    assert report.top.cause == expected, report.text()
