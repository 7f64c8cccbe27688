"""Run shapes the ninth wave's held-out sets showed, each a trigger and a control: a feedback
weight multiplied step after step until the gradients through it explode at once, with no long
gradient growth before; weights the explosion itself moved; one tensor running away while a
few others merely grew; a one-off outlier the run got over long before it broke; logits
inflated at initialisation that hide a rise; updates that shrink with a decaying learning
rate, not with a poisoned second moment; tensors no gradient reaches past dead units; units
that die as the gradients explode; and a frozen layer against a spike nothing confirmed."""

from __future__ import annotations

import math

import pytest
from helpers import diagnose_stored

import steadygrad
from steadygrad.core import Record
from steadygrad.core.metrics import OUTPUT_CLASSES
from steadygrad.diagnose.detectors.transformer import OutputLogitDivergence
from steadygrad.diagnose.detectors.trends import GROWTH_BEGAN
from steadygrad.store import load

BREAK = 200


def _feedback_rows(feedback) -> list[dict]:
    """A recurrent model that learnt until step 100 and then stalled, its loss creeping up,
    with ``feedback(t)`` the norm of its feedback weight; the loss is non-finite from BREAK."""
    rows = []
    for t in range(BREAK + 10):
        loss = 2.0 - 0.01 * min(t, 100) + 0.001 * max(t - 100, 0) if t < BREAK else math.nan
        rows.append(
            {
                "loss": loss,
                "param_norm/cell.feedback.weight": feedback(t),
                "param_norm/cell.input.weight": 2.0,
                "param_norm/head.weight": 1.5,
            }
        )
    return rows


EXPLOSION = [
    ("loss_spike", BREAK - 3, None, {"ratio": 8.0}, "warning"),
    ("grad_norm_spike", BREAK - 2, None, {"ratio": 300.0}, "warning"),
    ("loss_divergence", BREAK - 1, None, {"ratio": 300.0}, "critical"),
    ("nonfinite", BREAK, "cell.input", {"loss": math.nan}, "critical"),
]


@pytest.mark.parametrize("feedback", ["runaway", "steady"])
def test_weights_that_ran_away_before_a_sudden_explosion_are_where_it_starts(tmp_path, feedback):
    # an LMU-style memory whose feedback weight a bug multiplies by 1.03 a step from step 60:
    # no gradient grew for long before the break, the gradients exploded at once when the
    # recurrence passed its stable range. Control: the feedback weight held still (the same
    # explosion out of nowhere has no runaway weight behind it)
    def norm(t):
        return 0.6 * math.exp(0.03 * max(t - 60, 0)) if feedback == "runaway" else 0.6

    report = diagnose_stored(tmp_path, feedback, _feedback_rows(norm), EXPLOSION)
    exploding = [d for d in report.diagnoses if d.cause == "exploding_gradients"]
    if feedback == "runaway":
        assert report.top is exploding[0]
        assert exploding[0].where[0] == "cell.feedback"
        assert exploding[0].first_step <= 80  # dated to where the growth began
    else:
        assert not exploding


@pytest.mark.parametrize("grown", ["by_the_explosion", "before_it"])
def test_weights_the_explosion_itself_moved_did_not_run_away(tmp_path, grown):
    # the feedback weight crept up by a tenth and was blown up 50x only by the explosion's own
    # updates in its last steps: those say nothing of what came before, and the gradient
    # growth is placed where its finding says. Control: a real runaway before the explosion
    def norm(t):
        if grown == "before_it":
            return 0.6 * math.exp(0.03 * max(t - 60, 0))
        creep = 0.6 * (1 + 0.1 * t / BREAK)
        return creep * (50.0 if t >= BREAK - 3 else 1.0)

    growth = ("gradient_growth", BREAK - 1, "cell.input.weight", {"growth": 40.0}, "warning")
    report = diagnose_stored(tmp_path, grown, _feedback_rows(norm), [*EXPLOSION, growth])
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    if grown == "by_the_explosion":
        assert "runaway_weights" not in exploding.evidence
        assert exploding.where[0] == "cell.input.weight"
    else:
        assert exploding.evidence["runaway_weights"]["parameter"] == "cell.feedback.weight"


@pytest.mark.parametrize("runaway", ["one", "most"])
def test_one_tensor_running_away_is_not_growth_everywhere(tmp_path, runaway):
    # an attentional factorisation machine whose embedding an L2 term of the wrong sign grows
    # 1.5% a step; the linear term grows too, out of a small start, slowing as it goes, and
    # the attention scorer rises as the run starts to go: the median tensor grew 2.5x, yet
    # only one ran away, and it is where the gradients explode. Control: most weight tensors
    # grew geometrically together (a decay of the wrong sign on all of them)
    rows = []
    for t in range(300):
        geometric = 2.0 * math.exp(0.015 * t)
        rows.append(
            {
                "loss": 0.7 - 0.05 * min(t, 230) / 230 if t < 272 else 0.7 + 0.2 * (t - 271),
                "param_norm/embed.weight": geometric,
                "param_norm/linear.weight": 0.01 + 0.1 * math.log1p(t),
                "param_norm/attn_score.weight": 0.5 + (0.05 * (t - 240) if t > 240 else 0.0),
                "param_norm/attn.weight": geometric if runaway == "most" else 1.5,
                "param_norm/p.weight": geometric if runaway == "most" else 0.55,
            }
        )
    growth = ("gradient_growth", 269, "attn.weight", {"growth": 50.0}, "warning")
    climb = ("loss_divergence", 275, None, {"ratio": 3.0}, "critical")
    report = diagnose_stored(tmp_path, runaway, rows, [growth, climb])
    exploding = next(d for d in report.diagnoses if d.cause == "exploding_gradients")
    if runaway == "one":
        assert report.top is exploding and exploding.where[0] == "embed"
    else:
        assert "runaway_share" in exploding.evidence
        assert exploding.confidence == "low"


@pytest.mark.parametrize("broke", [208, 120])
def test_an_outlier_the_run_got_over_does_not_explain_a_later_break(tmp_path, broke):
    # one batch at step 96 made the loss jump 2.7x, and the run was back to normal within 5
    # steps; the gradients of an IndRNN whose recurrent weights a bug nudges up then grew, and
    # the run broke at 208: the outlier does not explain that. Control: the break 24 steps
    # after the outlier, still in its aftermath
    rows = [{"loss": 2.0 if t != 96 else 5.4} for t in range(broke)]
    rows += [{"loss": 2.0 * 1.5**k} for k in range(1, 12)]
    growth = {"growth": 900.0, GROWTH_BEGAN: broke - 40}  # growing since, the finding says
    findings = [
        ("loss_spike", 96, None, {"loss": 5.4, "baseline": 2.0, "ratio": 2.7}, "warning"),
        ("grad_norm_spike", 96, None, {"ratio": 60.0}, "warning"),
        ("loss_divergence", broke, None, {"ratio": 20.0}, "critical"),
        ("gradient_growth", broke + 1, "rnn.u", growth, "critical"),
    ]
    report = diagnose_stored(tmp_path, str(broke), rows, findings)
    assert report.top.cause == ("exploding_gradients" if broke == 208 else "data_outlier")


def _logits(detector: OutputLogitDivergence, lse: list[float], loss: list[float]) -> list[int]:
    """Feed readings 25 steps apart (a 64-token vocabulary); the steps of the findings."""
    found = []
    for i, (z, value) in enumerate(zip(lse, loss, strict=True)):
        record = Record(25 * i, {"logit_lse_mean": z, "loss": value}, {OUTPUT_CLASSES: 64})
        found += [f.step for f in detector.update(record)]
    return found


@pytest.mark.parametrize("loss", ["stalled", "falling"])
def test_a_rise_hidden_under_logits_inflated_at_initialisation(loss):
    # a LongT5 whose untied head starts at log Z = 20.9 over 64 tokens (log 64 = 4.2), falls
    # to 4.6 as training starts, then a z-loss added with its sign flipped raises it 20% a
    # reading while the loss sits at a uniform guess's: the rise counts from log(classes),
    # not from the inflated start (which it passes only at 20.9 + 10). Control: the same rise
    # while the loss falls to a tenth (a classifier growing confident)
    lse = [20.9, 4.6, 4.6] + [4.6 * 1.2**k for k in range(1, 9)]
    first = [14.0, 4.3, 4.2]
    values = first + ([4.2] * 8 if loss == "stalled" else [4.2 * 0.7**k for k in range(1, 9)])
    found = _logits(OutputLogitDivergence(), lse, values)
    if loss == "stalled":
        assert found and found[0] <= 175  # log Z 13.7, far under the inflated start
    else:
        assert not found


@pytest.mark.parametrize("lr", ["constant", "decaying"])
def test_updates_that_shrink_with_a_decaying_learning_rate_are_not_poisoned(tmp_path, lr):
    # a gradient spike at 160 in an AdamW run; the updates 20 to 70 steps after it are a third
    # of those before, and the loss, falling until then, stalls. Under a constant learning rate
    # that is the spike's square in Adam's second moment; under a cosine decay that cut the rate
    # 3x over the same span it is the schedule (a healthy Qwen3-MoE's)
    rows = []
    for t in range(260):
        rate = 1e-3 if lr == "constant" else 1e-3 * 3.0 ** (-max(min(t, 210) - 130, 0) / 80)
        ratio = (0.01 if t < 160 else 0.0033) if lr == "constant" else 10.0 * rate
        loss = 2.5 - 0.005 * min(t, 160)
        rows.append({"loss": loss, "lr/0": rate, "update_ratio/w.weight": ratio})
    spike = ("grad_norm_spike", 160, None, {"ratio": 8.6}, "warning")
    diagnose_stored(tmp_path, lr, rows, [spike])
    run = load(tmp_path / lr)
    run.config["optimizer_family"] = "adam"  # as the Monitor records it
    poisoned = "adam_second_moment_poisoned" in steadygrad.diagnose(run).causes()
    assert poisoned == (lr == "constant")


@pytest.mark.parametrize("gradient", ["zero", "flowing"])
def test_tensors_no_gradient_reaches_stand_still_because_of_the_dead_units(tmp_path, gradient):
    # an Inception branch whose ReLU units a restored bias of -6 killed at step 120: from then
    # on no gradient reaches the branch's two convolutions, and at 240 their updates read as
    # frozen. The dead units are the cause. Control: the same two tensors frozen with their
    # gradients still flowing (their group's learning rate set to 0): a frozen layer
    branch = ["inc2.b3a.weight", "inc2.b3b.weight"]
    rows = []
    for t in range(260):
        row = {"loss": 2.3 - 2.0 * min(t, 220) / 220}
        for name in branch:
            row[f"grad_norm/{name}"] = 0.0 if gradient == "zero" and t >= 120 else 0.1
        rows.append(row)
    dead = ("loss_of_plasticity", 132, "inc2.b3b", {"dead_units": 1.0}, "warning")
    frozen = [
        ("update_ratio_out_of_range", 240, name, {"direction": "frozen"}, "warning")
        for name in branch
    ]
    report = diagnose_stored(tmp_path, gradient, rows, [dead, *frozen])
    expected = "loss_of_plasticity" if gradient == "zero" else "update_ratio_out_of_range"
    assert report.top.cause == expected


@pytest.mark.parametrize("dead_at", [204, 150])
def test_units_that_die_as_the_gradients_explode_are_its_casualties(tmp_path, dead_at):
    # an IndRNN whose recurrent weights a bug nudges up: its gradients grew from step 170, and
    # four steps before the explosion at 208 half of rnn2's units read dead, driven out of
    # range by what was exploding. Control: the units died 58 steps before, on their own
    rows = [{"loss": 2.0} for _ in range(208)] + [{"loss": 2.0 * 3.0**k} for k in range(1, 10)]
    growth = {"growth": 900.0, GROWTH_BEGAN: 170}
    findings = [
        ("loss_of_plasticity", dead_at, "rnn2", {"dead_units": 0.72}, "warning"),
        ("grad_norm_spike", 207, None, {"ratio": 187.0}, "warning"),
        ("loss_divergence", 208, None, {"ratio": 17.0}, "critical"),
        ("gradient_growth", 209, "rnn1.u", growth, "critical"),
    ]
    report = diagnose_stored(tmp_path, str(dead_at), rows, findings)
    plasticity = next(d for d in report.diagnoses if d.cause == "loss_of_plasticity")
    assert bool(plasticity.consequence_of) == (dead_at == 204)
    if dead_at == 204:
        assert report.top.cause == "exploding_gradients"


@pytest.mark.parametrize("stall", ["frozen", "dead"])
def test_a_frozen_layer_outranks_a_spike_nothing_confirmed(tmp_path, stall):
    # NLLB-MoE's experts of layer 1 sit in a group whose learning rate is 0: their updates are
    # 0 from step 20, while the rest of the model learns around them to step 199; at 113 a
    # gradient spike the run did not feel. The frozen layer is the fault. Control: half of a
    # layer's ReLU units read dead as the model learns on (a normal sight): the spike ranks first
    rows = [{"loss": 3.0 - 0.01 * t} for t in range(200)]
    if stall == "frozen":
        found = ("update_ratio_out_of_range", 20, "experts.0.fc1.weight", {"direction": "frozen"})
    else:
        found = ("loss_of_plasticity", 20, "ffn.fc1", {"dead_units": 0.55})
    spike = ("gradient_spike", 113, "encoder.v_proj.weight", {"spike_factor": 400.0}, "warning")
    report = diagnose_stored(tmp_path, stall, rows, [(*found, "warning"), spike])
    expected = "update_ratio_out_of_range" if stall == "frozen" else "gradient_spike"
    assert report.top.cause == expected
