"""Run shapes from the fifty-second session.

Each change has a trigger (a held-out scenario it was found on, or a loop written here) and a
control that must not move."""

from __future__ import annotations

import pytest
import torch
from helpers import diagnose_stored, induced_report, steadygrad

from steadygrad.core import Record
from steadygrad.diagnose.detectors import AttentionLogitGrowth
from steadygrad.diagnose.detectors.training import NEW_STAGE

# (step, share of rows one-hot, largest logit) of set 427's attention layer, read every 25
# steps: its rate typed 100x, every row one-hot from step 75 and the logits on to 35-41
COLLAPSED = [(0, 0.0, 0.0), (25, 0.0, 6.9), (50, 0.42, 9.7), (75, 0.91, 15.4), (100, 0.88, 19.2),
             (125, 0.98, 17.3), (150, 0.92, 18.5), (175, 0.98, 34.9), (200, 1.0, 41.0),
             (225, 1.0, 36.9)]  # fmt: skip
# and set 215's healthy encoder (gradient clipping, a schedule): half its rows one-hot at
# logits near 20, the sharpest a healthy layer of the collection held half its rows one-hot at
ALIGNED = [(0, 0.0, 3.2), (25, 0.0, 3.6), (50, 0.22, 11.3), (75, 0.48, 20.8), (100, 0.51, 19.8),
           (125, 0.5, 21.9), (150, 0.52, 18.2), (175, 0.53, 21.0)]  # fmt: skip


@pytest.mark.parametrize("readings", [COLLAPSED, ALIGNED])
def test_attention_one_hot_at_three_times_an_alignments_gap_is_entropy_collapse(readings):
    # Trigger: every row one-hot, held, while the largest logit stood at 35-41: three times and
    # more the gap of 8-10 a one-hot row over a few dozen keys needs (the old bar, half the
    # cap of 100, left it quiet). Control: half the rows one-hot at logits near 20: nothing
    detector, found = AttentionLogitGrowth(), []
    for step, share, largest in readings:
        values = {"attn_logit_max/attn": largest, "attn_saturated/attn": share}
        found += detector.update(Record(step, values))
    if readings is COLLAPSED:
        assert [(f.step, f.where, f.severity) for f in found] == [(200, "attn", "warning")]
        assert found[0].evidence["attn_saturated"] == 1.0
    else:
        assert found == []


@pytest.mark.parametrize(
    "name", ["h435_well_dressing_sqrt_scale", "h303_launeddas_attention_no_qk_norm"]
)
def test_attention_scores_scaled_up_saturate_below_half_the_cap(tmp_path, name):
    # Set 435's scores multiplied by sqrt(d) where they should be divided, set 303's encoder
    # with its q/k norm left out: a layer holds most of its rows one-hot at logits of 30-60,
    # never near the cap of 100; named, at the attention layer
    report = induced_report(tmp_path, name)
    assert report.top.cause == "attention_logit_growth"
    assert any("attn" in where for where in report.top.where)


@pytest.mark.parametrize("learnt", [False, True])
def test_rows_collapsed_on_a_model_whose_units_died_are_its_one_answer(tmp_path, learnt):
    # A rate typed 10x: fc2's units die at step 17, the head's bias grows until its one answer
    # is one-hot, and a tenth of the rows (those of that class) collapse from step 18 while the
    # loss stands at chance (1.61, where it began). Trigger: the units named, the collapse
    # their consequence. Control: the same findings while the loss fell to a tenth of where it
    # began: a fit, whose rows collapse on their own
    rows = []
    for t in range(120):
        loss = 1.61 * (0.1 if learnt and t > 10 else 1.0) + 0.01 * (t % 3)
        rows.append({"loss": loss, "softmax_collapse": 0.11 if t >= 18 else 0.0})
    findings = [
        ("loss_of_plasticity", 17, "fc2", {"reason": "dead_units", "dead_units": 0.67}, "warning"),
        ("softmax_collapse", 20, "head", {"softmax_collapse": 0.11, "streak_began": 18}, "warning"),
    ]
    report = diagnose_stored(tmp_path, str(learnt), rows, findings)
    collapse = next(d for d in report.diagnoses if d.cause == "softmax_collapse")
    if learnt:
        assert not collapse.consequence_of
    else:
        assert report.top.cause == "loss_of_plasticity"
        assert "67% of fc2's units were dead by step 17" in collapse.consequence_of


@pytest.mark.parametrize(
    "name, cause",
    [
        ("h447_beekeeper_lr_typo_dead_units", "loss_of_plasticity"),
        ("h450_sheep_shearing_restart", "loss_spike"),
        ("h138_pp_formulanet_sum_reduction_spike", "gradient_spike"),
    ],
)
def test_what_the_spike_and_the_collapse_came_of(tmp_path, name, cause):
    # Set 447: a rate typed 10x killed fc2's units and the head's one answer collapsed a tenth
    # of the rows: the units. Set 450: a restart that left the head at a fresh init; its
    # gradient spiked with the loss at the step the weights were put in place: the loss spike.
    # Control, set 138: one step's summed loss under Adam, no loss spike with it: the
    # gradient spike, though the weights' norm moved further than Adam's step bound
    assert induced_report(tmp_path, name).top.cause == cause


def _two_tasks(tmp_path, recorded: bool | str, broken_at: int | None = None):
    """Digits 0-4 for 150 steps, then 5-9, under the Monitor's defaults, with or without
    :class:`ContinualEvaluation` recording the task (``"announced"``: the loop calls
    ``mon.objective_changed`` at the switch instead); the learning rate raised 1000x at
    ``broken_at`` if given. The warning-or-worse findings of the run."""
    import torch.nn.functional as F
    from torch import nn

    from steadygrad.continual.evaluation import ContinualEvaluation
    from steadygrad.data.digits import load_digits

    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = load_digits()
    first, second = y_train < 5, y_train >= 5
    tasks = {
        "0-4": (x_test[y_test < 5], y_test[y_test < 5]),
        "5-9": (x_test[y_test >= 5], y_test[y_test >= 5]),
    }
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    evaluation = ContinualEvaluation(tasks, every=10, schedule={0: "0-4", 150: "5-9"})
    signals = [evaluation] if recorded is True else []
    mon = steadygrad.Monitor(model, opt, tmp_path / str(recorded), progress=False, signals=signals)
    draw = torch.Generator().manual_seed(0)
    for step in range(300):
        if step == broken_at:
            opt.param_groups[0]["lr"] = 3.0
        if step == 150 and recorded == "announced":
            mon.objective_changed("digits 5-9")
        x, y = (
            (x_train[first], y_train[first]) if step < 150 else (x_train[second], y_train[second])
        )
        rows = torch.randint(0, len(x), (32,), generator=draw)
        loss = F.cross_entropy(model(x[rows]), y[rows])
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    return [f for f in mon.findings if f.severity != "info"]


@pytest.mark.parametrize("recorded", [False, True, "announced"])
def test_a_new_task_starts_the_loss_and_gradient_baselines_again(tmp_path, recorded):
    # Digits 0-4, then 5-9 from step 150: the loss steps 270x at the switch and the gradient
    # with it, a new objective. With ContinualEvaluation recording the task, or the loop saying
    # so with mon.objective_changed, the detectors start again there: nothing to warn of.
    # Unrecorded (it used to read as a spike, a growth and a climb), the loss's step up after an
    # ordinary update, held and then learnt, is read as a new stage of the data (the
    # fifty-fifth session's StageWatch): told at info, nothing to warn of either
    warned = _two_tasks(tmp_path, recorded)
    assert warned == []
    if not recorded:
        told = steadygrad.load(tmp_path / "False").findings()
        assert [(f.kind, f.step) for f in told if f.evidence.get(NEW_STAGE)] == [
            ("loss_spike", 150)
        ]


def test_a_divergence_within_a_task_is_still_warned(tmp_path):
    # Control: the task recorded, and Adam's rate raised 1000x at step 220, within task 5-9:
    # warned after the rate was raised
    warned = _two_tasks(tmp_path, recorded=True, broken_at=220)
    assert warned and min(f.step for f in warned) >= 220


def test_an_announced_objective_is_the_monitors_record_not_an_intervention(tmp_path):
    # mon.objective_changed writes an action at the step it starts from, which the diagnosis
    # does not take for the autopilot's; a reason that is not a string is refused by name
    _two_tasks(tmp_path, "announced")
    run = steadygrad.load(tmp_path / "announced")
    assert [(a.step, a.kind, a.detail) for a in run.actions()] == [
        (150, "objective_changed", {"why": "digits 5-9"})
    ]
    assert "autopilot_actions" not in steadygrad.diagnose(run).causes()
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with steadygrad.Monitor(model, opt, tmp_path / "bad", progress=False) as mon:
        with pytest.raises(TypeError, match="why must be a string"):
            mon.objective_changed(3)


@pytest.mark.parametrize("swap", ["in_place", "add_param_group"])
def test_a_module_assigned_after_attach_is_said_once(tmp_path, swap):
    # Set 460's fine-tune: at step 120 the loop assigns model.head = nn.Linear(...) and puts
    # its parameters in the optimizer's group in place of the old head's (as many tensors: the
    # Monitor, which follows an optimizer that takes on more, goes on reading the old head,
    # frozen and unreached). Trigger: one warning by step 200 naming the old head's tensors and
    # the two new ones not watched. Control: the new head given with add_param_group, which
    # the Monitor follows: no such warning
    import warnings

    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU())
    model.head = nn.Linear(16, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
        for step in range(220):
            if step == 120:
                model.head = nn.Linear(16, 3)
                if swap == "in_place":
                    opt.param_groups[0]["params"][-2:] = list(model.head.parameters())
                else:
                    opt.add_param_group({"params": model.head.parameters()})
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
        mon.close()
    said = [str(w.message) for w in caught if "changed under the Monitor" in str(w.message)]
    if swap == "in_place":
        assert len(said) == 1 and "by step 200" in said[0]
        assert "head.weight, head.bias no longer the model's" in said[0]
        assert "2 trainable tensor(s) not watched" in said[0]
    else:
        assert said == []
