"""The loss's gradient along the output logits' common shift (``output_shift_gradient``).

A loss of the softmax alone (cross-entropy, label smoothing, focal loss, a distillation through
``log_softmax``) cannot see a shift added to every logit of a row: its gradient sums to zero
over the classes. A z-loss can: it holds the logits down (positive), and with its sign flipped
it rewards raising them (negative), which is what drives their log-partition up in the
collection's "z-loss of the wrong sign" scenarios, whatever the loss does meanwhile."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import held_out_run, induced_or_skip
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.core.metrics import LOGIT_LSE_MEAN, LOSS, OUTPUT_SHIFT_GRADIENT
from steadygrad.diagnose.detectors import OutputLogitDivergence

V = 24


class _LM(nn.Module):
    """Embedding, one hidden layer, a head; ``biased``: a free bias added after the head (as
    BART's ``final_logits_bias``), so the logits are no module's output."""

    def __init__(self, biased: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, 32)
        self.hidden = nn.Linear(32, 32)
        self.head = nn.Linear(32, V)
        self.bias = nn.Parameter(torch.zeros(V)) if biased else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(torch.relu(self.hidden(self.embed(x))))
        return logits if self.bias is None else logits + self.bias


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(step)
    x = torch.randint(0, V, (16, 9), generator=g)
    return x, (3 * x + 1) % V  # a fixed map the model can learn


def _loss(kind: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss as a user's loop computes it: the loss function gets a float copy, shifted and
    flattened, as Hugging Face's causal-LM loss does; a z-loss, if any, reads the logits the
    model returned."""
    flat = logits.float()[:, :-1].reshape(-1, V)
    target = y[:, 1:].reshape(-1)
    if kind == "smoothing":
        return F.cross_entropy(flat, target, label_smoothing=0.1)
    if kind == "focal":
        logp = flat.log_softmax(-1).gather(1, target[:, None])
        return (-((1 - logp.exp()) ** 2) * logp).mean()
    if kind == "distil":
        teacher = torch.full_like(flat, 1.0 / V)
        return F.kl_div(flat.log_softmax(-1), teacher, reduction="batchmean")
    ce = F.cross_entropy(flat, target)
    coef = {"ce": 0.0, "z_loss": 1e-2, "z_loss_flipped": -1e-2, "weak": -2e-3}[kind]
    return ce + coef * logits.logsumexp(-1).pow(2).mean()


def _shift_at_step_0(tmp_path, kind: str, biased: bool = False) -> tuple[float, float]:
    """(recorded, computed here from the logits' own gradient) at the first, due, step."""
    model = _LM(biased)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with steadygrad.Monitor(model, opt, tmp_path / kind) as mon:
        x, y = _batch(0)
        logits = model(x)
        logits.retain_grad()
        _loss(kind, logits, y).backward()
        opt.step()
        mon.step(float(_loss(kind, logits.detach(), y)))
    g = logits.grad.double()
    _, recorded = steadygrad.load(tmp_path / kind).series(OUTPUT_SHIFT_GRADIENT.name)
    return float(recorded[0]), float(g.sum() / g.abs().sum())


@pytest.mark.parametrize("kind, biased", [("z_loss", False), ("z_loss_flipped", False),
                                          ("z_loss_flipped", True)])  # fmt: skip
def test_the_recorded_shift_gradient_is_the_logits_own(tmp_path, kind, biased):
    # Oracle: the gradient autograd left on the logits the model returned, every use's (the
    # loss function's float copy and the z-loss beside it), summed and over its size; with
    # the logits a bias added after the head, the tensor the loss function's input views.
    recorded, oracle = _shift_at_step_0(tmp_path, kind, biased)
    assert recorded == pytest.approx(oracle, rel=1e-4)
    assert (recorded < -1e-3) if kind == "z_loss_flipped" else (recorded > 1e-3)


@pytest.mark.parametrize("kind", ["ce", "smoothing", "focal", "distil"])
def test_a_loss_of_the_softmax_alone_reads_no_shift(tmp_path, kind):
    recorded, oracle = _shift_at_step_0(tmp_path, kind)
    assert abs(oracle) < 1e-6
    assert abs(recorded) < 1e-6


def _readings(shift: float, last_loss: float, first_loss: float = 3.2) -> list:
    """Log Z rising 0.6 nats a reading (3.2 to 6.8 over seven readings) while the loss falls
    from ``first_loss`` to ``last_loss``: a drift the loss alone would vouch for."""
    det = OutputLogitDivergence()
    found = []
    for i in range(7):
        loss = first_loss * (last_loss / first_loss) ** (i / 6)
        values = {LOGIT_LSE_MEAN.name: 3.2 + 0.6 * i, LOSS.name: loss}
        values[OUTPUT_SHIFT_GRADIENT.name] = shift
        found += det.update(Record(25 * i, values))
    return found


@pytest.mark.parametrize(
    "shift, last_loss, first_loss, fires",
    [
        (-0.02, 0.5, 3.2, True),  # the loss rewards larger logits: the rise is its doing
        (-0.5, 0.5, 3.2, True),
        (-0.02, 1e-5, 3.2, True),  # read while the loss was large enough, however far it fell
        (0.0, 0.5, 3.2, False),  # cross-entropy alone: a classifier growing confident
        (-2e-4, 0.5, 3.2, False),  # within what float32 rounding could read
        (0.02, 0.5, 3.2, False),  # a z-loss holding them down
        (-0.02, 1e-5, 5e-4, False),  # a loss this small: rounding is as large as its gradient
    ],
)
def test_logits_a_loss_term_pushes_up_diverge_however_the_loss_falls(
    shift, last_loss, first_loss, fires
):
    found = _readings(shift, last_loss, first_loss)
    assert bool(found) == fires
    if fires:
        assert found[0].evidence[OUTPUT_SHIFT_GRADIENT.name] == shift


def _train(tmp_path, kind: str, steps: int = 250):
    model = _LM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    with steadygrad.Monitor(model, opt, tmp_path / kind) as mon:
        for step in range(steps):
            x, y = _batch(step)
            logits = model(x)
            loss = _loss(kind, logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
    run = steadygrad.load(tmp_path / kind)
    return run, steadygrad.diagnose(run)


def test_a_z_loss_with_its_sign_flipped_is_named_though_the_loss_falls(tmp_path):
    # Trigger: a weak z-loss of the wrong sign (-2e-3) raises the log-partition by 3 to 5
    # nats while the loss falls by a third: too little for the old detector's bars (a quarter
    # of the limit, 5 nats, kept for six readings), so it named nothing.
    run, report = _train(tmp_path, "weak")
    _, lse = run.series(LOGIT_LSE_MEAN.name)
    _, loss = run.series(LOSS.name)
    assert 3 < lse[-1] - lse.min() < 5 and loss[-1] < 0.7 * loss[0]  # the shape described
    top = report.top
    assert (top.cause, top.where) == ("output_logit_divergence", ["head"])
    assert "pushes every logit up" in top.summary
    assert any("sign" in fix.action for fix in top.fixes)


@pytest.mark.parametrize("kind", ["ce", "z_loss"])
def test_logits_no_term_pushes_up_are_not_named(tmp_path, kind):
    run, report = _train(tmp_path, kind)
    assert all(d.cause != "output_logit_divergence" for d in report.diagnoses)
    assert not [f for f in run.findings() if f.severity != "info"]


def test_the_clvp_decoder_whose_z_loss_sign_flipped_is_named_first(tmp_path):
    # Set 78's CLVP decoder under Lion: the loss diverged at the end and was named first,
    # though the z-loss pushed every logit up from the start.
    ctx, report = held_out_run(tmp_path, "h78_clvp_zloss_wrong_sign_lion")
    induced_or_skip(ctx)
    assert report.top.cause == "output_logit_divergence"
    assert report.top.first_step is not None and report.top.first_step <= 50
    assert math.isfinite(report.top.evidence[OUTPUT_SHIFT_GRADIENT.name])


class _TwoHeads(nn.Module):
    """One linear output per token whose first column is a value head's, the rest the logits
    (as an actor-critic's shared output): the value's loss has a gradient in that column only."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(V, 32)
        self.out = nn.Linear(32, 1 + V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.embed(x)))


@pytest.mark.parametrize("take", ["narrow_negative", "narrow_positive", "index"])
def test_logits_sliced_from_a_shared_output_read_their_own_shift(tmp_path, take):
    # Oracle: the gradient autograd left on the sliced logits. Cross-entropy alone sums to zero
    # over each row, whichever way the classes were taken from the (batch, tokens, 1 + V)
    # output; the value head's column, which the whole output's gradient holds, is not read.
    # (``narrow(-1, ...)`` saves its dimension unsigned, -1 as 2**64 - 1.)
    model = _TwoHeads()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = _batch(0)
    with steadygrad.Monitor(model, opt, tmp_path / take) as mon:
        out = model(x)
        logits = {
            "narrow_negative": lambda: out.narrow(-1, 1, V),
            "narrow_positive": lambda: out.narrow(2, 1, V),
            "index": lambda: out[..., 1:],
        }[take]()
        logits.retain_grad()
        value_loss = (out[..., 0] - 5.0).pow(2).mean()
        loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1)) + value_loss
        loss.backward()
        opt.step()
        mon.step(float(loss))
    g = logits.grad.double()
    _, recorded = steadygrad.load(tmp_path / take).series(OUTPUT_SHIFT_GRADIENT.name)
    assert abs(float(g.sum() / g.abs().sum())) < 1e-6
    assert abs(float(recorded[0])) < 1e-6
