"""Run shapes from the sixtieth session: a cross-entropy whose class weights or label smoothing
put a target outside what a probability can be, so the loss has no minimum at finite logits.

Each change has a trigger (a held-out fault it was found on) and a control that must still be
told apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import induced_report, steadygrad
from torch import nn

from steadygrad.core import Record
from steadygrad.diagnose.detectors.trends import LossDivergence
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


def test_a_warm_up_whose_loss_jumped_and_came_back_is_a_catapult(tmp_path):
    # Controls, sets 641 and 644: a warm-up to a high peak, a OneCycle warm-up under fp16. The
    # loss climbed to 3-4x its best while the rate was still rising, then came all the way
    # back below that best on its own (the curvature fell to what the rate allows: a catapult,
    # Lewkowycz et al. 2020). Named a rate rising into a break, at warning; now at info
    for name in ("h641_hurling_sliotar_warmup_peak", "h644_enamel_kiln_fp16_onecycle"):
        report = induced_report(tmp_path, name)
        loss = steadygrad.load(tmp_path / name).series("loss")[1]
        jumped = int(np.argmax(loss[:60]))
        assert loss[jumped] > 3 * loss[:jumped].min() > loss[-10:].mean()  # the oracle, by hand
        assert report.healthy, report.text()
        assert "catapult" in report.top.summary


def test_a_warm_up_that_rose_into_a_blow_up_is_still_the_step_size(tmp_path):
    # Triggers, sets 647 and 653: a warm-up with no clamp at its peak, a peak typed 10x: the
    # loss blew up while the rate still rose, and never came back
    for name in ("h647_log_flume_warmup_no_clamp", "h653_kite_line_warmup_typo"):
        report = induced_report(tmp_path, name)
        assert report.top.cause == "sharpness_above_limit", report.text()
        assert report.top.severity != "info"
        assert "catapult" not in report.top.summary


def _soft_loss(kind: str, z, logp, y, classes: int):
    """The loss of one step: a soft cross-entropy written by hand against ``log_softmax``
    (smoothed below 0 or above it), or one of the terms of the probability that push an
    improbable class down too, as practice uses them on purpose."""
    if kind in ("smoothing below 0", "smoothing"):
        eps = -0.1 if kind == "smoothing below 0" else 0.1
        target = (1 - eps) * F.one_hot(y, classes) + eps / classes
        return -(target * logp).sum(-1).mean(), target
    entropy = -(logp.exp() * logp).sum(-1).mean()
    if kind == "entropy minimised":  # semi-supervised: sharpen the predictions
        return F.nll_loss(logp, y) + 0.3 * entropy, None
    if kind == "confidence penalty of the wrong sign":  # set 647's: bounded below by 0
        return F.cross_entropy(z, y) + 0.5 * entropy, None
    if kind == "unlikelihood":  # push a wrong candidate's probability down
        wrong = logp.exp().gather(1, ((y + 1) % classes)[:, None])
        return F.nll_loss(logp, y) - torch.log((1 - wrong).clamp_min(1e-6)).mean(), None
    # REINFORCE with an entropy bonus: a negative advantage pushes the sampled action down
    action = torch.distributions.Categorical(logits=z.detach()).sample()
    advantage = (action == y).float() - 0.5
    chosen = logp.gather(1, action[:, None]).squeeze(1)
    return -(advantage * chosen).mean() - 0.01 * entropy, None


@pytest.mark.parametrize(
    "kind",
    [
        "smoothing below 0",
        "smoothing",
        "entropy minimised",
        "confidence penalty of the wrong sign",
        "unlikelihood",
        "policy gradient",
    ],
)
def test_a_target_below_zero_is_read_from_the_gradient_in_the_log_probabilities(tmp_path, kind):
    # Trigger: a label smoothing typed -0.1 in a soft cross-entropy written by hand (sets 627,
    # 648, 658): its targets (oracle: built by hand) have entries below 0, and the loss pushes
    # those classes' log-probabilities down however improbable they get. Controls: terms of the
    # probability itself push an improbable class down too, but by at most p |log p| of their
    # scale, and a policy gradient's push comes alone in its row: none is read as a target
    torch.manual_seed(0)
    classes = 5
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, classes))
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    mix = torch.randn(12, classes)
    shares, target = [], None
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(300):
            x = torch.randn(64, 12)
            y = (x @ mix).argmax(1)
            z = model(x)
            loss, target = _soft_loss(kind, z, F.log_softmax(z, -1), y, classes)
            loss.backward()
            opt.step()
            opt.zero_grad()
            shares.append(mon.step(loss).values.get("output_targets_outside"))
    read = [s for s in shares if s is not None]
    assert read  # every due step read the gradient in the log-probabilities
    if kind == "smoothing below 0":
        assert (target < 0).any()
        assert max(read[-4:]) > 0.5  # on the rows the model is sure of, by the end
    else:
        assert max(read) == 0.0


def test_a_smoothing_typed_below_zero_by_hand_is_an_output_logit_divergence(tmp_path):
    # Set 648: soft targets (1 - eps) one_hot + eps / K with eps typed -0.1, against
    # log_softmax: the loss fell below 0 and the logits grew 40x, log Z only from 1.5 to 5:
    # named healthy. The targets below 0, read from the loss's gradient, now prove no minimum
    report = induced_report(tmp_path, "h648_sheepdog_negative_smoothing")
    assert report.top.cause == "output_logit_divergence", report.text()
    assert "outside what a probability can be" in report.top.summary


def _loss_findings(losses) -> list[tuple[int, str]]:
    detector = LossDivergence()
    return [
        (f.step, f.severity)
        for step, loss in enumerate(losses)
        for f in detector.update(Record(step, {"loss": loss}))
    ]


def test_a_loss_that_started_below_zero_diverges_only_by_blowing_up():
    # A policy gradient's surrogate (centred advantages times log-probabilities) starts near
    # or below 0 and drifts up as the advantages shrink: its level measures no progress. The
    # same drift one unit higher, a loss that started at 0.85, is a climb (the control), and a
    # surrogate that blows up still does
    rng = np.random.default_rng(0)
    drift = [-0.15] * 30 + list(-0.3 + 0.004 * np.arange(170) + rng.normal(0, 0.02, 170))
    assert _loss_findings(drift) == []
    assert [severity for _, severity in _loss_findings([x + 1.0 for x in drift])] == ["warning"]
    blow_up = [-0.1] * 30 + [-0.2] * 20 + [50.0, 500.0, float("inf")]
    assert _loss_findings(blow_up) == [(50, "critical")]


def test_a_policy_gradient_that_grows_sure_is_no_divergence(tmp_path):
    # Controls, sets 656 and 349: REINFORCE with an entropy bonus, its loss below 0 from the
    # first step (half the steps, in 656). Its loss drifted up from its lowest as the
    # advantages shrank (a loss divergence) and its policy's log Z rose from 1.6 to 8 as it grew
    # sure (an output-logit divergence: the loss, below zero, could not vouch for them)
    for name in ("h656_sheaf_toss_reinforce", "h349_crofter_gather_reinforce_control"):
        report = induced_report(tmp_path, name)
        assert steadygrad.load(tmp_path / name).series("loss")[1][0] <= 0  # the oracle
        assert report.healthy, report.text()
        run = steadygrad.load(tmp_path / name)
        kinds = {f.kind for f in run.findings() if f.severity != "info"}
        assert not kinds & {"loss_divergence", "output_logit_divergence"}, kinds


def test_logits_pushed_up_by_a_loss_below_zero_from_the_start_still_diverge(tmp_path):
    # Triggers: nll_loss given raw scores (its loss -score[y], below 0 from the first step)
    # and percent tags as binary targets: the loss's own push proves the growth unearned
    for name in ("h623_saltpan_crystal_nll_on_raw_logits", "h656_bobbin_lace_percent_targets"):
        report = induced_report(tmp_path, name)
        assert steadygrad.load(tmp_path / name).series("loss")[1][0] <= 0  # the oracle
        assert report.top.cause == "output_logit_divergence", report.text()


def test_a_frozen_teachers_logits_are_the_target_not_the_output(tmp_path):
    # Distillation from a sharp teacher (its logits 8x a rule's): log_softmax of the teacher's
    # logits, computed under no_grad, is the KL's target. Read as the model's output, their
    # size (max |logit| 80 at step 0) made the student's rows born wide, and a collapse on its
    # fit a warning (set 654's control). The oracle: the student's own largest logit, by hand
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 5))
    teacher = nn.Linear(12, 5)
    with torch.no_grad():
        teacher.weight.mul_(40.0)
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    x, y = torch.randn(64, 12), torch.arange(64) % 5
    with steadygrad.watch(student, opt, tmp_path / "run", progress=False) as mon:
        with torch.no_grad():
            t = teacher(x)
        s = student(x)
        kd = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True)
        loss = kd + F.cross_entropy(s, y)
        loss.backward()
        opt.step()
        record = mon.step(loss)
    assert t.abs().max() > 20 * s.detach().abs().max()
    assert record.values["output_logit_max"] == pytest.approx(s.detach().abs().max().item())
    assert record.meta["output_module"] == "2"


def test_a_distillation_from_a_sharp_teacher_is_healthy(tmp_path):
    report = induced_report(tmp_path, "h654_tarn_sharp_teacher_distill")
    assert report.healthy, report.text()


def test_growth_after_a_gradient_hundreds_of_times_its_steady_level_is_that_spikes(tmp_path):
    # Set 658: a loss weight of 300 for one step. The gradient norm went from a steady 0.4 to
    # 160 at that step (400x), 18.7 the next (under ONE_STEP_FALL's 10x fall), and the thrown
    # weights sent the loss to 198 and the gradient on up: named exploding gradients, from step
    # 83. No growth multiplies a gradient 100x in a step; the spike is named first now
    report = induced_report(tmp_path, "h658_bog_snorkel_loss_weight_step")
    grads = steadygrad.load(tmp_path / "h658_bog_snorkel_loss_weight_step").series("grad_norm")
    spike = int(np.argmax(grads[1][:82]))
    assert grads[1][spike] > 100 * np.median(grads[1][spike - 5 : spike])  # the oracle
    assert report.top.cause == "gradient_spike", report.text()


def test_gradients_grown_through_depth_are_still_an_explosion(tmp_path):
    # Controls: a ten-layer net initialised at std 1 (661) and a 14-layer tanh stack at 3x its
    # gain (666): their gradients grew through depth from the first step, no spike before
    for name in ("h661_tightrope_sway_std1_init", "h666_ophicleide_tanh_gain"):
        report = induced_report(tmp_path, name)
        assert report.top.cause == "exploding_gradients", report.text()
