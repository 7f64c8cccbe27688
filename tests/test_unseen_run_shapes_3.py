"""Run shapes the nineteenth and twentieth held-out sets (and the eighteenth's open misses)
showed, each a trigger and a control: a loss that scatters far more once learnt than on the
plateau before it, findings confirmed over a streak of cadenced readings, a layer that died twice,
a softmax collapse that spread the logits, a tensor growing out of a small start, a cosine head
settled at its bound, and a segmentation head whose logits reach the loss channels-last."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import diagnose_stored
from torch import nn

import steadygrad
from steadygrad.core import Record
from steadygrad.diagnose.detectors import (
    OutputLogitDivergence,
    PlasticityLoss,
    UpdateRatioOutOfRange,
)
from steadygrad.diagnose.detectors.trends import SustainedLevel


@pytest.mark.parametrize("plateau_noise", [0.005, 0.05])
def test_the_noise_at_a_new_best_level_is_read_over_the_last_values_too(plateau_noise):
    # a classifier's loss sits still on a plateau, then learns and scatters widely batch to
    # batch: its noise where it set its best level is the scatter there, not the plateau's
    # (the loss-divergence alarm reads it so: a divergence must stand out of it)
    rng = np.random.default_rng(0)
    plateau = 0.69 + plateau_noise * rng.standard_normal(60)
    learnt = np.clip(0.1 + 0.05 * rng.standard_normal(16), 0.01, None)
    learnt[0], learnt[-1] = 0.0, -1.0  # the first new best level, and one 15 values on
    values = np.array([*plateau, *learnt])
    level, whole = SustainedLevel(window=1, local=16), SustainedLevel(window=1)
    for t, x in enumerate(values):
        level.add(float(x), t)
        whole.add(float(x), t)

    def spread(values):  # the oracle: 1.4826 x the MAD of the steps, over sqrt(2)
        steps = np.diff(values)
        return 1.4826 * np.median(np.abs(steps - np.median(steps))) / np.sqrt(2)

    window, local = spread(values[-64:]), spread(values[-17:])
    assert level.floor_step == 75
    assert level.noise() == pytest.approx(max(window, local))
    assert whole.noise() == pytest.approx(window)  # the gates' reading: the whole window
    if plateau_noise < 0.01:  # the quiet plateau fills most of the window: the local one counts
        assert window < 0.5 * local and level.noise() == pytest.approx(local)


def test_a_finding_confirmed_over_a_streak_reports_the_reading_before_the_streak(tmp_path):
    # dead units read every 12 steps; the reading at 58 (after a break at 57) already shows the
    # layer silent and the one at 59 confirms it: the units may have died any time after 48
    det = PlasticityLoss()
    layer = "relu_active/stage1.act"
    readings = {0: 0.50, 12: 0.49, 24: 0.48, 36: 0.52, 48: 0.54, 58: 0.005, 59: 0.0}
    found = []
    for step in range(60):
        values = {"loss": 0.4 if step < 52 else 2.3}
        if step in readings:
            values[layer] = readings[step]
        found += det.update(Record(step, values))
    assert [(f.step, f.evidence["previous_reading"]) for f in found] == [(59, 48)]
    # and the diagnosis: read from the first reading after the break, so it may have come first
    rows = [{"loss": 0.4 if t < 52 else 2.3} for t in range(80)]
    broke = ("loss_divergence", 57, None, {"ratio": 5.0}, "critical")
    died = ("loss_of_plasticity", 59, "stage1.act", found[0].evidence, "warning")
    report = diagnose_stored(tmp_path, "dead", rows, [broke, died])
    assert report.top.cause == "loss_of_plasticity"


@pytest.mark.parametrize("died_again", [True, False])
def test_a_layer_that_died_again_as_learning_stopped_is_judged_from_then(tmp_path, died_again):
    # half a layer died at 48 and the loss kept improving to 115; at 156 the rest died, the
    # loss climbed from 191, and the gradients grew from 297: the second death explains it.
    # Without it, the gradients found growing as the climb began (197) do: the loss learnt
    # past the first death (gradients found growing long into a climb grew with it instead)
    rows = [{"loss": 2.0 - 0.008 * t if t <= 115 else 1.08 + 0.004 * (t - 115)} for t in range(400)]
    half = ("loss_of_plasticity", 48, "trunk.2", {"reason": "dead_units"}, "warning")
    rest = ("loss_of_plasticity", 156, "trunk.2", {"reason": "dying_units"}, "warning")
    climb = ("loss_divergence", 191, None, {"ratio": 1.8}, "warning")
    grew = (
        "gradient_growth",
        297 if died_again else 197,
        "trunk.0.weight",
        {"growth": 26.0},
        "critical",
    )
    findings = [half, rest, climb, grew] if died_again else [half, climb, grew]
    report = diagnose_stored(tmp_path, str(died_again), rows, findings)
    assert report.top.cause == ("loss_of_plasticity" if died_again else "exploding_gradients")


@pytest.mark.parametrize("collapse_from", [50, 300])
def test_a_softmax_collapse_under_way_explains_the_logits_it_spread(tmp_path, collapse_from):
    # logits divided by a small temperature: the collapse's streak of readings began at 50 and
    # was confirmed at 76, the logits' log-partition drift at 75; a z-loss with its sign flipped
    # drifts the logits long before any row collapses (the control)
    rows = [{"loss": 1.0 - 0.001 * t} for t in range(400)]
    confirmed = collapse_from + 26
    logits = ("output_logit_divergence", 75, "head", {"drift": 30.0}, "warning")
    collapse = (
        "softmax_collapse",
        confirmed,
        "head",
        {"softmax_collapse": 0.2, "streak_began": collapse_from, "previous_reading": 25},
        "warning",
    )
    report = diagnose_stored(tmp_path, str(collapse_from), rows, [logits, collapse])
    top = "softmax_collapse" if collapse_from < 75 else "output_logit_divergence"
    assert report.top.cause == top


@pytest.mark.parametrize("ratios", [[0.55, 0.45, 0.38, 0.3, 0.28], [0.3, 0.32, 0.3, 0.31, 0.3]])
def test_a_large_update_ratio_that_falls_at_each_reading_is_a_tensor_growing(ratios):
    # a learnt attention query vector starts tiny: the optimizer's steps are large against it
    # until it has grown, and its ratio falls at each reading; one that holds is too large
    det = UpdateRatioOutOfRange()
    found = [
        f
        for t, r in enumerate(ratios)
        for f in det.update(Record(t, {"update_ratio/attn.context.weight": r}))
    ]
    assert (found == []) is (ratios[0] > ratios[-1] * 1.5)


@pytest.mark.parametrize("settled", [True, False])
def test_a_cosine_head_settled_at_its_bound_is_no_logit_divergence(settled):
    # ArcFace logits are 30 x a cosine: they move to -30 as the classes separate, and stay;
    # logits that keep falling (the control) are the divergence Wortsman et al. describe
    det = OutputLogitDivergence()
    lse = [9.8, -19.3, -27.1, -26.5, -26.4, -26.4, -26.4, -26.3]
    mean = [-1.1, -22.5, -29.5, -29.62, -29.63, -29.64, -29.64, -29.65]
    top = [24.5, 29.2, 29.93, 29.99, 29.99, 30.0, 30.0, 30.0]  # the largest |logit|
    if not settled:
        lse = lse[:3] + [-30.0 - 4 * k for k in range(5)]
        mean = mean[:3] + [-32.0 - 4 * k for k in range(5)]
        top = top[:3] + [34.0 + 4 * k for k in range(5)]
    found = []
    for k, (z, m, t) in enumerate(zip(lse, mean, top, strict=True)):
        loss = 24.0 / (1 + 10 * k)
        values = {"logit_lse_mean": z, "output_logit_mean": m, "output_logit_max": t, "loss": loss}
        found += det.update(Record(25 * k, values))
    assert (found == []) is settled


class _Segmenter(nn.Module):
    """A conv net whose 1x1 conv head gives a quarter-size map of 3 classes, upsampled to the
    labels before the loss (as SegFormer's decode head does)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.down = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.head = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.head(torch.relu(self.down(self.body(x))))


@pytest.mark.parametrize("rows", [True, False])
def test_a_segmentation_heads_logits_are_placed_at_the_head(tmp_path, rows):
    # the loss takes the logits upsampled, divided by a temperature and (``rows``) moved
    # channels-last and flattened: no module output them, yet they come from ``head``
    torch.manual_seed(0)
    model = _Segmenter()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4, 16, 16))
    heads = set()
    with steadygrad.watch(model, opt, tmp_path / str(rows), progress=False) as mon:
        for _ in range(3):
            up = nn.functional.interpolate(model(x), size=(16, 16), mode="bilinear") / 0.02
            if rows:
                loss = nn.functional.cross_entropy(
                    up.permute(0, 2, 3, 1).reshape(-1, 3), y.view(-1)
                )
            else:
                loss = nn.functional.cross_entropy(up, y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
            if "logit_lse_mean" in mon.last_record.values:
                heads.add(mon.last_record.meta.get("output_module"))
    assert heads == {"head"}


@pytest.mark.parametrize("outlier", [True, False])
def test_units_killed_by_an_outlier_batchs_knock_are_its_consequence(tmp_path, outlier):
    # a scan in millimetres among metres: the loss jumps 560x at 130 and the step it gives
    # kills two layers' units (read at 133); without the batch, units that died as the loss
    # broke (first read just after it) may have come first
    after = [56.0, 9.0, 4.0, 2.5, 1.8, 1.4, 1.2, 1.1] + [1.0] * 60
    loss = [0.93] * 130 + ([521.0] if outlier else [3.0]) + after
    rows = [{"loss": x} for x in loss]
    findings = [
        ("loss_divergence", 132, None, {"ratio": 69.0}, "critical"),
        ("loss_of_plasticity", 133, "head.0", {"previous_reading": 131}, "warning"),
    ]
    if outlier:
        spike = {"loss": 521.0, "baseline": 0.93, "ratio": 560.0}
        findings.append(("loss_spike", 130, None, spike, "warning"))
    report = diagnose_stored(tmp_path, str(outlier), rows, findings)
    assert report.top.cause == ("data_outlier" if outlier else "loss_of_plasticity")


@pytest.mark.parametrize(
    "readings, fires",
    [
        # few-shot episodes of 25 queries: the share swings, but most readings are collapsed
        ([0.0, 0.0, 0.12, 0.28, 0.08, 0.28, 0.0, 0.2], True),
        # a collapsed reading now and then, on a healthy run: never most of them
        ([0.0, 0.12, 0.0, 0.0, 0.15, 0.0, 0.02, 0.11, 0.0], False),
    ],
)
def test_a_softmax_collapse_read_on_small_batches_counts_most_readings(readings, fires):
    from steadygrad.diagnose.detectors import SoftmaxCollapse

    det = SoftmaxCollapse()
    found = [
        f
        for k, share in enumerate(readings)
        for f in det.update(Record(25 * k, {"softmax_collapse": share}))
    ]
    assert bool(found) is fires
    if fires:  # the third collapsed reading of five, dated from the first of them
        assert [(f.step, f.evidence["streak_began"]) for f in found] == [(125, 50)]
