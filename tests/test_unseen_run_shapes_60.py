"""Run shapes from the sixtieth session: a cross-entropy whose class weights or label smoothing
put a target outside what a probability can be, so the loss has no minimum at finite logits.

Each change has a trigger (a held-out fault it was found on) and a control that must still be
told apart."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import induced_report, steadygrad
from torch import nn

from steadygrad.monitor.outputs import _rows_outside


def _unbounded_rows(z, y, weight, smoothing, reduction) -> torch.Tensor:
    """The oracle: the rows whose logits can lower PyTorch's own loss without end, found by
    driving each of the row's logits to -M and to +M (M = 40, then 80) and seeing the loss
    keep falling. A bounded direction has saturated by M = 40 (its change is below e^-40)."""
    z = z.double()
    w = None if weight is None else weight.double()

    def loss(x):
        return F.cross_entropy(x, y, weight=w, label_smoothing=smoothing, reduction=reduction)

    rows = []
    for i in range(z.shape[0]):
        falls = False
        for c in range(z.shape[1]):
            for sign in (-1.0, 1.0):
                far, farther = z.clone(), z.clone()
                far[i, c], farther[i, c] = sign * 40, sign * 80
                falls = falls or float(loss(far) - loss(farther)) > 1e-6
        rows.append(falls)
    return torch.tensor(rows)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize(
    ("weight", "smoothing"),
    [
        (None, 0.1),  # the ordinary smoothing: none
        ([0.5, 1.0, 2.0, 1.5], 0.0),  # inverse frequencies: none
        ([0.3, -0.2, -0.6, -1.3], 0.0),  # log(freq) + 1, the minus sign lost: mixed signs
        ([-0.3, -0.2, -0.6, -1.3], 0.0),  # all below 0: the mean's ratio cancels the sign
        ([0.3, -0.2, -0.6, -1.3], 0.1),  # mixed, smoothed: the other classes' entries too
        ([0.3, 0.2, -0.6, 1.3], 0.1),  # one class below 0, smoothed: every row has an entry
    ],
)
def test_the_rows_with_a_target_below_zero_are_those_the_loss_has_no_minimum_on(
    weight, smoothing, reduction
):
    torch.manual_seed(0)
    z, y = torch.randn(12, 4), torch.arange(12) % 4
    keep = torch.ones(12, dtype=torch.bool)
    w = None if weight is None else torch.tensor(weight)
    outside = _rows_outside(y, keep, 4, w, smoothing, reduction)
    expected = _unbounded_rows(z, y, w, smoothing, reduction)
    assert outside["outside"].item() == expected.sum().item()
    assert outside["targets"].item() == 12


def _recorded_outside(tmp_path, **loss_kwargs) -> list[float]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(32, 6), torch.arange(32) % 4
    read = []
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(2):
            loss = F.cross_entropy(model(x), y, **loss_kwargs)
            loss.backward()
            opt.step()
            opt.zero_grad()
            read.append(mon.step(loss).values.get("output_targets_outside"))
    return read


def test_a_cross_entropys_weights_and_smoothing_are_read_from_the_call(tmp_path):
    # The share of rows outside is read from F.cross_entropy's own arguments, with no user code
    # (oracle: the rows by hand: class 0's weight is the only one whose sign differs from the
    # weights' sum, which the mean divides by)
    weight = torch.tensor([0.3, -0.2, -0.6, -1.3])
    assert _recorded_outside(tmp_path / "a", weight=weight)[0] == pytest.approx(8 / 32)
    # a smoothing typed below 0 PyTorch drops silently (the loss is then bounded, as the oracle
    # above finds): a plain call, which records nothing about its targets
    assert _recorded_outside(tmp_path / "b", label_smoothing=-0.1)[0] is None
    # controls: positive weights and an ordinary smoothing put no target outside
    ordinary = torch.tensor([0.5, 1.0, 2.0, 1.5])
    assert _recorded_outside(tmp_path / "c", weight=ordinary, label_smoothing=0.1)[0] == 0.0
    assert _recorded_outside(tmp_path / "d")[0] is None


def test_class_weights_that_lost_their_minus_sign_are_an_output_logit_divergence(tmp_path):
    # Set 651: class weights meant as -log(freq), typed log(freq) + 1: class 0's weight is
    # positive, the rest negative, so under the mean's ratio class 0's rows have a target of
    # the wrong sign and the loss falls without end as their logits run off. The logits grew
    # only to 7 (log Z from 1.6 to 2.5): too little for a drift by size alone. It was named
    # healthy; now the targets outside prove the loss has no minimum
    report = induced_report(tmp_path, "h651_bonsai_cut_negative_class_weight")
    assert report.top.cause == "output_logit_divergence", report.text()
    assert list(report.top.where) == ["head"]
    assert "outside what a probability can be" in report.top.summary
