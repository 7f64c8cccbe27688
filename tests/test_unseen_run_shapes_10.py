"""Run shapes the fourteenth wave's held-out sets showed, each a trigger and a control: a
recurrence written as a loop over a cell, where the gradients explode, told apart from the
modules a loop merely calls at every step (an input projection, a decoder reading each state)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import diagnose_stored
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.core.metrics import RECURRENT_MODULES
from steadygrad.diagnose.detectors import GradientGrowth
from steadygrad.monitor.activations import ActivationHooks


class LoopedRNN(nn.Module):
    """h_t = tanh(inp(x_t) + cell(h_{t-1})), a decoder reading each state, and an encoder a
    siamese branch calls on two inputs: only ``cell`` is fed its own output."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.cell, self.decoder = nn.Linear(3, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.enc = nn.Linear(3, 8)
        self.gru = nn.GRU(8, 8, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], 8)
        outs = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.cell(h))
            outs.append(self.decoder(h))
        pair = self.enc(x[:, 0]) - self.enc(x[:, 1])
        seq, _ = self.gru(torch.stack([h, pair], 1))
        return torch.stack(outs, 1).sum() + seq.sum()


def test_a_recurrence_is_read_from_the_graph_not_from_how_often_a_module_is_called():
    model, x = LoopedRNN(), torch.randn(4, 6, 3)
    hooks = ActivationHooks(model)
    hooks.install()
    model(x)
    counts = {m: sum(c.module == m for c in hooks.calls) for m in ("inp", "cell", "decoder")}
    assert counts == {"inp": 6, "cell": 6, "decoder": 6}  # all three called at every step
    assert hooks.recurrent() == ["gru", "cell"]  # the built-in layer, and the fed-back cell
    hooks.remove()
    # control: without a graph (no_grad) nothing tells a recurrence apart; only built-ins stay
    hooks.install()
    with torch.no_grad():
        model(x)
    assert hooks.recurrent() == ["gru"]
    hooks.remove()
    # a rollout feeding the model its own output: the whole model is the loop, no part of it is
    # singled out (the built-in layer stays)
    hooks.install()
    out = model(x)
    model(x + out)
    assert hooks.recurrent() == ["gru"]
    hooks.remove()


def test_the_run_config_lists_the_recurrence_the_forward_made(tmp_path):
    torch.manual_seed(0)
    model = LoopedRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(3):
            loss = 1e-4 * model(torch.randn(4, 6, 3)) ** 2
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    assert steadygrad.load(tmp_path / "run").config[RECURRENT_MODULES] == ["gru", "cell"]
    # control: a feed-forward model lists none
    mlp = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(mlp.parameters(), lr=1e-3)
    with steadygrad.watch(mlp, opt, tmp_path / "mlp", progress=False) as mon:
        loss = mlp(torch.randn(4, 3)).pow(2).mean()
        loss.backward()
        opt.step()
        mon.step(loss)
    assert steadygrad.load(tmp_path / "mlp").config[RECURRENT_MODULES] == []


def _growth_rows() -> list[dict[str, float]]:
    """The input projection's small gradient leaves its level a few records before the cell's
    (its floor is noisier), then both grow 1.3x a record through the recurrence while the loss
    climbs."""
    rng = np.random.default_rng(0)
    rows = []
    for t in range(60):
        cell = 1.0 if t < 25 else 1.3 ** (t - 25)
        inp = 0.05 * (1.0 if t < 20 else 1.3 ** (t - 20)) * math.exp(0.1 * rng.standard_normal())
        loss = 1.0 if t < 25 else 1.0 + 0.2 * (t - 25)
        rows.append(
            {
                "loss": loss,
                "grad_norm": math.hypot(cell, inp),
                "grad_norm/inp.weight": inp,
                "grad_norm/cell.weight": cell,
            }
        )
    return rows


@pytest.mark.parametrize("recurrent", [["cell"], []])
def test_growth_through_a_recurrence_is_placed_there(recurrent):
    detector, found = GradientGrowth(), []
    for step, values in enumerate(_growth_rows()):
        meta = {RECURRENT_MODULES: recurrent} if step % 25 == 0 else {}
        found += detector.update(Record(step, values, meta=meta))
    assert found
    # with the recurrence known, it is where the gradients explode; without it (a feed-forward
    # net), the tensor that left its level first is where the growth starts, as before
    assert found[0].where == ("cell.weight" if recurrent else "inp.weight")


@pytest.mark.parametrize("recurrent", [["rnn"], []])
def test_a_first_gradient_explosion_is_placed_in_the_recurrence(recurrent):
    # a first gradient 1000x the next under SGD, whose update moved every weight by its size:
    # with nothing before it to stand above, the largest gradient was the embedding's
    norms = [(2000.0, 300.0), (2.0, 0.3)]
    detector, found = GradientGrowth(), []
    for step, (embed, rnn) in enumerate(norms + [(2.0, 0.3)] * 8):
        values = {
            "loss": 5.0 if step < 2 else 9.0,
            "grad_norm": math.hypot(embed, rnn),
            "grad_norm/embed.weight": embed,
            "grad_norm/rnn.weight_hh_l0": rnn,
            "param_norm": 10.0 * (1 + step),
            "update_ratio/embed.weight": 1.5 if step == 0 else 0.01,
        }
        meta = {"optimizer_family": "sgd", RECURRENT_MODULES: recurrent} if step == 0 else {}
        found += detector.update(Record(step, values, meta=meta))
    assert found and found[0].step == 0
    assert found[0].where == ("rnn.weight_hh_l0" if recurrent else "embed.weight")


@pytest.mark.parametrize("recurrent", [["rcl.rec"], []])
def test_a_spike_that_compounds_into_nan_starts_in_the_recurrence(tmp_path, recurrent):
    # a looped convolution's recurrent gain above 1: the loss and the head's gradient spike
    # first, every gradient explodes through the recurrence a step later, then the loss is NaN
    rows = [{"loss": 1.0 - 0.001 * t} for t in range(20)]
    rows += [{"loss": 2.0}, {"loss": 40.0}, {"loss": float("nan")}]
    spikes = [
        ("grad_norm_spike", 20, None, {"ratio": 500.0}, "warning"),
        ("gradient_spike", 20, "head.weight", {"spike_factor": 900.0}, "critical"),
        # the recurrence's weight spikes on the next step, as the forward's blow-up compounds
        ("gradient_spike", 21, "rcl.rec.weight", {"spike_factor": 3e11}, "critical"),
        ("nonfinite", 22, None, {"loss": float("nan")}, "critical"),
    ]
    config = {RECURRENT_MODULES: recurrent}
    report = diagnose_stored(tmp_path, "run", rows, spikes, config=config)
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    assert exploding.where[0] == ("rcl.rec.weight" if recurrent else "head.weight")


def _lm_losses(spike: float | None, seed: int = 0) -> list[float]:
    """A byte-level LM's batch losses falling from 7.3 to about 5.0 nats (noise 0.1), with one
    batch of ``spike`` nats at step 150."""
    rng = np.random.default_rng(seed)
    losses = [5.0 + 2.3 * math.exp(-t / 40) + 0.1 * rng.standard_normal() for t in range(220)]
    if spike is not None:
        losses[150] = spike
    return losses


def _near_zero_losses(spike: float | None, seed: int = 0) -> list[float]:
    """A preference loss from log 2 to about zero within ten steps, with rare hard batches (a
    few of 0.002-0.07) and one of ``spike`` at step 127."""
    rng = np.random.default_rng(seed)
    losses = [0.693 * math.exp(-t / 1.5) for t in range(200)]
    for t in rng.choice(np.arange(20, 200), 12, replace=False):
        losses[t] += float(rng.choice([0.002, 0.0005, 0.07, 0.09]))
    if spike is not None:
        losses[127] = spike
    return losses


@pytest.mark.parametrize(
    ("losses", "spiked"),
    [
        # one batch of random bytes sends the LM above where it started: more than all it
        # learnt, a spike (a loss spike of 0.75x its level of 5 nats was asked before)
        (_lm_losses(8.8), True),
        (_lm_losses(None), False),  # control: the same run without the batch
        # control: a loss trained to ~0 from log 2 sees a batch of 0.24, a third of its
        # progress: one of the hard batches such a loss has, of no consequence (the median of
        # its first three losses, 0.35, used to stand for its start)
        (_near_zero_losses(0.24), False),
        (_near_zero_losses(1.5), True),  # a batch twice the loss it started from is one
    ],
)
def test_a_loss_spike_is_judged_against_the_progress_made(losses, spiked):
    detector = steadygrad.LossSpikeDetector()
    found = [f for t, loss in enumerate(losses) for f in detector.update(Record(t, {"loss": loss}))]
    assert bool(found) is spiked


class Codec(nn.Module):
    """An encoder and a decoder the loop calls one after the other, and a quantiser it skips
    (trained as a continuous autoencoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Linear(8, 16), nn.Linear(16, 8)
        self.quantizer = nn.Linear(16, 16)


@pytest.mark.parametrize("autocast", [True, False])
def test_a_part_never_called_is_dead_code_also_under_autocast(tmp_path, autocast):
    # the decoder is fed the encoder's bfloat16 output: re-running it without the step's
    # autocast failed, and the quantiser's zero gradients were then called a frozen layer
    torch.manual_seed(0)
    model, x = Codec(), torch.randn(32, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(30):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = (model.decoder(model.encoder(x)).float() - x).pow(2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    found = steadygrad.load(tmp_path / "run").findings()
    ratios = [f for f in found if f.kind == "update_ratio_out_of_range"]
    assert {f.where for f in ratios} == {"quantizer.weight", "quantizer.bias"}
    assert all(f.evidence["direction"] == "unused" and f.severity == "info" for f in ratios)


@pytest.mark.parametrize("gradient", ["flickers", "flows"])
def test_layers_the_dead_units_cut_off_are_not_frozen_layers(tmp_path, gradient):
    # ReLU units dead from initialisation (a bias set to -2 for -0.2): no gradient reaches the
    # layer at the readings of its update ratio, though a unit flickers alive between them
    rows = []
    for t in range(120):
        values = {"loss": 3.0 - 0.004 * t}
        flicker = 1e-3 if t % 10 in (3, 7) else 0.0
        values["grad_norm/mlp.fc1.weight"] = flicker if gradient == "flickers" else 0.02
        if t % 10 == 0:
            values["update_ratio/mlp.fc1.weight"] = 0.0
            values["dead_units/mlp.fc1"] = 1.0
        rows.append(values)
    dead = ("loss_of_plasticity", 10, "mlp.fc1", {"reason": "dead_units"}, "warning")
    frozen = ("update_ratio_out_of_range", 30, "mlp.fc1.weight", {"direction": "frozen"}, "warning")
    report = diagnose_stored(tmp_path, gradient, rows, [dead, frozen])
    ratio = next(d for d in report.diagnoses if d.cause == "update_ratio_out_of_range")
    if gradient == "flickers":
        assert report.top.cause == "loss_of_plasticity"
        assert "cut it off" in ratio.why
    else:  # a gradient that reaches a layer its optimizer does not move: frozen
        assert "cut it off" not in (ratio.why or "")


@pytest.mark.parametrize("shape", ["swapped", "batch", "batch_under_sgd"])
def test_a_loss_spike_the_weights_made_is_no_bad_batch(tmp_path, shape):
    # an LM's weights swapped for their moving average at step 150 and never swapped back: the
    # loss jumps 1.5x and comes down slowly, and the weights' norm moved 100x its usual step.
    # Controls: one bad batch (the weights' norm as usual); one bad batch under SGD, whose
    # giant gradient moved the weights (a gradient spike at the same step)
    rng = np.random.default_rng(0)
    rows, norm = [], 16.0
    for t in range(260):
        norm += 0.008 if not (t == 150 and shape != "batch") else -0.9
        loss = 3.0 + 0.05 * rng.standard_normal()
        if t == 150:
            loss = 4.75
        elif shape == "swapped" and t > 150:
            loss += 1.7 * math.exp(-(t - 150) / 15)
        rows.append({"loss": loss, "param_norm": norm})
    spikes = [("loss_spike", 150, None, {"loss": 4.75, "baseline": 3.0, "ratio": 1.58}, "warning")]
    if shape == "batch_under_sgd":
        spikes.append(("grad_norm_spike", 150, None, {"ratio": 60.0}, "warning"))
    report = diagnose_stored(tmp_path, shape, rows, spikes)
    assert report.top.cause == ("loss_spike" if shape == "swapped" else "data_outlier")
    spike = next(d for d in report.diagnoses if d.cause == "loss_spike")
    assert ("weights_replaced_at" in spike.evidence) is (shape == "swapped")
