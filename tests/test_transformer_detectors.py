"""Each detector on synthetic Record streams: a scenario that must trigger it, a healthy control."""

import math
import random

import pytest

from steadygrad.core.record import Record
from steadygrad.diagnose.detectors.transformer import (
    AttentionLogitGrowth,
    GradientSpike,
    OutputLogitDivergence,
    PlasticityLoss,
    SoftmaxCollapse,
    UpdateRatioOutOfRange,
)


def run(detector, series):
    findings = []
    for step, values in enumerate(series):
        findings += detector.update(Record(step, values))
    return findings


def test_attention_logit_growth_fires_on_geometric_growth_not_on_noisy_plateau():
    rng = random.Random(0)
    growing = [
        {"attn_logit_max/h.0.attn": 3.0 * 1.15**s, "attn_logit_max/h.1.attn": 3.0}
        for s in range(40)
    ]
    findings = run(AttentionLogitGrowth(), growing)
    assert [f.where for f in findings] == ["h.0.attn"]
    first = findings[0]
    # the warning level is 100, where Megatron's qk-clip and MuonClip cap the logits
    assert AttentionLogitGrowth().threshold == 100
    crossing = next(s for s in range(40) if 3.0 * 1.15**s >= 100)
    assert first.step == crossing and first.severity == "warning"
    assert first.evidence["growth_factor"] == pytest.approx(1.15**crossing)
    # Healthy: large but flat logits with noise (e.g. a QK-norm model) never fire.
    plateau = [{"attn_logit_max/h.0.attn": 60 + rng.uniform(-5, 5)} for _ in range(200)]
    assert run(AttentionLogitGrowth(), plateau) == []
    # Healthy: one-hot attention learnt slowly, the largest logit climbing noisily from 20 to
    # 70 (a PatchTST on a periodic series): below where production trainers intervene
    learnt = [{"attn_logit_max/h.0.attn": (20 + s / 4) * rng.uniform(0.8, 1.2)} for s in range(200)]
    assert run(AttentionLogitGrowth(), learnt) == []
    assert run(AttentionLogitGrowth(threshold=50), learnt)  # what the old level of 50 said


def test_attention_logit_growth_critical_value_and_rearm():
    series = [{"attn_logit_max/a": v} for v in (5.0, 2000.0, 3000.0, 5.0, 6.0, float("nan"))]
    findings = run(AttentionLogitGrowth(), series)
    assert [(f.step, f.severity) for f in findings] == [(1, "critical"), (5, "critical")]


def test_output_logit_divergence_fires_on_drifting_log_partition_only():
    drifting = [{"logit_lse_mean": 5.5 - 1.0 * s, "output_logit_max": 3.0 * s} for s in range(40)]
    findings = run(OutputLogitDivergence(lse_limit=20, patience=3), drifting)
    # early warning: 10 nats (lse_limit / 2) below the start, and falling, at s = 10; one
    # finding for the whole episode (the sustained test at -20 from s = 26 does not repeat it)
    assert len(findings) == 1 and findings[0].step == 10
    assert findings[0].evidence["drift"] == -10.0
    assert findings[0].evidence["output_logit_max"] == 30.0
    healthy = [{"logit_lse_mean": 5.5 * math.exp(-s / 10)} for s in range(100)]
    assert run(OutputLogitDivergence(), healthy) == []
    # a confident, healthy classifier: log Z climbs towards its largest logit (30 nats)
    confident = [{"logit_lse_mean": 2.3 + 28 * (1 - math.exp(-s / 30))} for s in range(200)]
    assert run(OutputLogitDivergence(), confident) == []


def test_a_compounding_rise_of_log_z_with_no_better_loss_is_an_early_warning():
    # A z-loss with its sign flipped from reading 4 (as in an LM read every 25 steps): log Z's
    # rises double at each reading while the loss stays where it was. Found at the third
    # compounding rise, with the drift still 4.4 nats (4.5 over the last three rises).
    lse = [4.86, 4.52, 4.61, 4.77, 4.93, 6.35, 9.29, 14.88, 24.9]
    rows = [{"logit_lse_mean": v, "loss": 4.87 if t == 0 else 2.7} for t, v in enumerate(lse)]
    (found, *_) = run(OutputLogitDivergence(), rows)
    assert found.step == 6 and found.evidence["drift"] == pytest.approx(9.29 - 4.86)
    # the same log Z with a loss that fell below half: confidence earned, no finding
    earned = [{**r, "loss": 4.87 if t == 0 else 1.2} for t, r in enumerate(rows)]
    assert run(OutputLogitDivergence(), earned[:7]) == []
    # a healthy LM: log Z dips, then creeps up by steady steps (not compounding)
    creep = [{"logit_lse_mean": 4.5 + 0.4 * t, "loss": 2.7} for t in range(12)]
    assert run(OutputLogitDivergence(), creep[:11]) == []
    # a 4-class classifier growing confident (log Z +2.4, compounding) whose loss then climbs
    # back under label noise: too small a rise to be a runaway
    confident = [(1.45, 1.40), (1.61, 0.91), (2.42, 0.41), (3.85, 0.81)]
    rows = [{"logit_lse_mean": z, "loss": loss} for z, loss in confident]
    assert run(OutputLogitDivergence(), rows) == []


def test_softmax_collapse_detector():
    collapsing = [{"softmax_collapse": min(1.0, s / 20)} for s in range(40)]
    findings = run(SoftmaxCollapse(fraction=0.5, patience=3), collapsing)
    assert [f.step for f in findings] == [12]
    assert run(SoftmaxCollapse(), [{"softmax_collapse": 0.01}] * 50) == []


def noisy_grad_norms(steps, seed=0):
    rng = random.Random(seed)
    return [
        {"grad_norm/fc.weight": rng.uniform(0.5, 1.5), "grad_norm/fc.bias": rng.uniform(0.1, 0.3)}
        for _ in range(steps)
    ]


def test_gradient_spike_detects_planted_1000x_gradient_with_its_factor():
    series = noisy_grad_norms(100)
    baseline = series[60]["grad_norm/fc.weight"]
    series[60]["grad_norm/fc.weight"] = 1000 * baseline
    findings = run(GradientSpike(), series)
    assert [(f.step, f.where) for f in findings] == [(60, "fc.weight")]
    # spike factor against the running RMS of U(0.5, 1.5) norms (RMS = sqrt(13/12))
    assert findings[0].evidence["spike_factor"] == pytest.approx(
        1000 * baseline / math.sqrt(13 / 12), rel=0.15
    )
    assert findings[0].severity == "critical"


def test_gradient_spike_quiet_on_noise_and_on_slow_growth():
    assert run(GradientSpike(), noisy_grad_norms(500, seed=1)) == []
    growing = [{"grad_norm/w": 1.02**s} for s in range(300)]  # 380x over the run, smoothly
    assert run(GradientSpike(), growing) == []


def test_plasticity_loss_on_dying_units_and_rank_collapse_with_healthy_control():
    dying = [{"dead_units/mlp.act": s / 10, "effective_rank/mlp.act": 30 - s} for s in range(20)]
    findings = run(PlasticityLoss(dead_fraction=0.5, rank_drop=0.5, patience=2), dying)
    # dead >= 0.5 from s = 5 (fires at 6); rank <= 15 = half of 30 from s = 15 (fires at 16)
    got = [(f.step, f.where, f.evidence["reason"]) for f in findings]
    assert got == [(6, "mlp.act", "dead_units"), (16, "mlp.act", "rank_collapse")]
    healthy = [
        {"dead_units/mlp.act": 0.05, "effective_rank/mlp.act": 28 + (s % 3)} for s in range(50)
    ]
    assert run(PlasticityLoss(), healthy) == []


def test_plasticity_sees_units_dying_while_the_loss_climbs_not_a_net_growing_sparse():
    # Trigger: bn2 passes 50% of its outputs, then fewer and fewer (its shift drifts down) while
    # the loss climbs back: found once the share is a quarter of its start, long before any unit
    # is zero on every example (dead_units stays 0).
    steps = range(0, 240, 12)
    share = [0.5 if t < 60 else 0.5 * 0.7 ** ((t - 60) / 12) for t in steps]
    loss = [2.0 * 0.97**t if t < 60 else 0.35 + 0.01 * (t - 60) for t in steps]
    rows = [
        {"loss": lo, "relu_active/bn2": a, "dead_units/bn2": 0.0}
        for lo, a in zip(loss, share, strict=True)
    ]
    found = run(PlasticityLoss(), rows)
    first_below = next(i for i, a in enumerate(share) if a <= 0.25 * 0.5)
    assert [(f.where, f.evidence["reason"]) for f in found] == [("bn2", "dying_units")]
    assert found[0].step == first_below + 1  # two records in a row (patience 2)
    # Control: the same four-fold fall in the share while the loss keeps falling (networks grow
    # sparse as they train: Li et al. 2023's "lazy neurons").
    falling = [
        {"loss": 2.0 * 0.99**t, "relu_active/fc": a} for t, a in zip(steps, share, strict=True)
    ]
    assert run(PlasticityLoss(), falling) == []


def _units_killed(jump_at: int, dead_after: float) -> list[dict]:
    """Readings of a layer's dead share: none dead until reading ``jump_at``, ``dead_after``
    from it on (set 105's MiDaS: a warm restart's peak 400x too high for four steps killed a
    third of the decoder's units); the loss falls, then stalls above its best once they die."""
    return [
        {
            "dead_units/dec": 0.0 if i < jump_at else dead_after,
            "loss": 1.0 * 0.9**i if i < jump_at else 0.9**jump_at * 3,
        }
        for i in range(16)
    ]


def test_units_killed_at_a_stroke_are_lost_capacity_short_of_half_the_layer():
    # Trigger: a third of the units dead from one reading to the next, and staying dead, with
    # the loss stalled above its best: below the 50% that marks a layer grown sparse, so it
    # went unseen and the learning-rate glitch was named alone.
    found = run(PlasticityLoss(), _units_killed(7, 1 / 3))
    # info as the units die (the loss not yet read as stalled), a warning the reading after
    assert [(f.step, f.where, f.severity) for f in found] == [
        (8, "dec", "info"),
        (9, "dec", "warning"),
    ]
    assert found[0].evidence["dead_before"] == 0.0
    # Controls: the same share dead from the first readings on (training settling, or inputs
    # that leave units idle); a fifth killed at a stroke.
    assert run(PlasticityLoss(), _units_killed(1, 1 / 3)) == []
    assert run(PlasticityLoss(), _units_killed(7, 0.2)) == []
    # Control: a third read dead once, none at the next reading (a noisy reading, as set 110's
    # NeuCodec adapter swings), then a slow rise to 40% later: no stroke kept them dead.
    swinging = _units_killed(7, 1 / 3)
    for i, dead in zip(range(8, 16), [0.0, 0.0, 0.0, 0.0, 0.1, 0.2, 0.35, 0.4], strict=True):
        swinging[i]["dead_units/dec"] = dead
    assert run(PlasticityLoss(), swinging) == []


def test_plasticity_rank_collapse_fires_at_half_of_best():
    series = [{"effective_rank/f": r} for r in (40, 38, 30, 21, 19, 18, 17)]
    findings = run(PlasticityLoss(rank_drop=0.5, patience=2), series)
    assert [(f.step, f.evidence["reason"]) for f in findings] == [(5, "rank_collapse")]
    assert findings[0].evidence["best_rank"] == 40


def test_update_ratio_too_large_and_frozen_with_healthy_control():
    series = [
        {
            "update_ratio/a.weight": 0.01 if s < 10 else 0.6,
            "update_ratio/b.weight": 1e-3,
            "update_ratio/c.weight": 0.0 if s >= 20 else 1e-3,
            "update_ratio/d.bias": math.inf,
        }
        for s in range(30)
    ]
    findings = run(UpdateRatioOutOfRange(patience=3), series)
    got = [(f.step, f.where, f.evidence["direction"]) for f in findings]
    assert got == [(12, "a.weight", "too_large"), (22, "c.weight", "frozen")]
    healthy = [
        {"update_ratio/a.weight": 10 ** random.Random(s).uniform(-4, -1.5)} for s in range(200)
    ]
    assert run(UpdateRatioOutOfRange(), healthy) == []


def test_detector_arguments_are_checked():
    with pytest.raises(ValueError, match="threshold"):
        AttentionLogitGrowth(threshold=-1)
    with pytest.raises(ValueError, match="theta"):
        GradientSpike(theta=0.5)
    with pytest.raises(TypeError, match="patience"):
        SoftmaxCollapse(patience=1.5)
    with pytest.raises(ValueError, match="low"):
        UpdateRatioOutOfRange(high=0.1, low=0.2)


def test_attention_logit_growth_warns_early_on_compounding_growth_not_on_learning():
    # Readings every 25 steps (and extra ones after a finding). Compounding: q/k weights grow by
    # a factor each step, so the logit doubles every reading; it is warned at 70 (past the
    # logits a learnt alignment needs, half the threshold), a reading before it reaches 100,
    # where the level test alone would first see it.
    def readings(values, extra_after=None):
        out = []
        for i, v in enumerate(values):
            out.append((25 * i, v))
            if extra_after == i:
                out += [(25 * i + 1, v * 0.8), (25 * i + 2, v * 1.1)]
        return [Record(s, {"attn_logit_max/l.1.attn": v}) for s, v in out]

    compounding = [0.05, 0.12, 0.7, 1.0, 1.86, 3.5, 8.2, 15.9, 33.4, 70.0, 140.0]
    detector = AttentionLogitGrowth()
    found = [f for r in readings(compounding, extra_after=5) for f in detector.update(r)]
    assert [(f.step, f.severity) for f in found] == [(225, "warning")]
    assert found[0].evidence["early"] and found[0].evidence["doubling_steps"] == pytest.approx(
        25 * math.log(2) / math.log(70.0 / 33.4)
    )
    # the level test alone: first at 100 (step 250)
    level_only = AttentionLogitGrowth()
    level_only.EARLY_RATIO = math.inf
    late = [f for r in readings(compounding) for f in level_only.update(r)]
    assert [f.step for f in late] == [250]
    # Learning from a small initialisation: fast at first, slowing (a PatchTST's layer 1)
    learning = [0.04, 0.38, 2.1, 7.3, 16.6, 15.8, 26.3, 28.2, 25.2, 27.7, 48.4, 58.7]
    assert [f for r in readings(learning) for f in AttentionLogitGrowth().update(r)] == []
    # A Hugging Face BART's cross-attention from its 0.02 initialisation (set 165's control):
    # x1.8, x2.9, x2.3, x2.1, x1.8 a reading, 0.09 to 41 and level from there; each rate near
    # the one before, but slowing from its fastest, and warned at 11 before (a false alarm)
    bart = [0.09, 0.9, 1.66, 4.73, 11.02, 23.33, 41.45, 39.42]
    assert [f for r in readings(bart) for f in AttentionLogitGrowth().update(r)] == []
    # A tied chess-move language model's second block (set 186's control): x1.3, x2.3, x1.9 to
    # 39 at step 125, then 45, 55 and level: its sharpest heads learnt, warned at 39 before
    chess = [1.2, 4.0, 6.39, 8.57, 19.9, 38.6, 45.2, 54.6, 52.0, 51.2, 50.1]
    assert [f for r in readings(chess) for f in AttentionLogitGrowth().update(r)] == []


def _cadenced(series: dict[str, list[float]], every: int = 25) -> list:
    """One AttentionLogitGrowth's findings over readings ``every`` steps apart."""
    detector, n = AttentionLogitGrowth(), len(next(iter(series.values())))
    records = [Record(every * i, {k: v[i] for k, v in series.items()}) for i in range(n)]
    return [f for r in records for f in detector.update(r)]


def test_attention_logit_growth_counts_a_reading_as_growing_only_above_the_one_before():
    # Trigger of the change: a Gemma layer jumps from 92 to 400 in its first steps, dips to 296
    # and comes back to 374 (held-out set 128): above its lagging running average three times,
    # but no growth past the level it had reached. Control: the same values rising each time.
    key = "attn_logit_max/l.1.attn"
    dip = _cadenced({key: [92.0, 400.0, 296.0, 374.0, 380.0]})
    assert dip == []
    found = _cadenced({key: [92.0, 296.0, 374.0, 400.0, 410.0]})
    assert [(f.step, f.evidence["rising_records"]) for f in found] == [(75, 3)]


def test_attention_logit_growth_early_warning_needs_a_rate_that_never_slows():
    # Trigger: learning out of a tiny initialisation (a LLaVA text tower, set 124): x4.3, x1.4,
    # x3.0 over the last four readings; the last rate is as fast as the first but the middle one
    # slowed to a fifth of it: not compounding. Control: x3.0, x2.8, x3.0 at every reading.
    key = "attn_logit_max/l.0.attn"
    stalled = [0.14, 0.3, 4.0, 17.0, 23.2, 69.4]  # the LLaVA's readings, doubled
    assert _cadenced({key: stalled}) == []
    steady = [0.14, 0.3, 2.6, 7.8, 21.8, 65.4]
    found = _cadenced({key: steady})
    assert [(f.step, f.evidence.get("early")) for f in found] == [(125, True)]


def test_attention_collapse_needs_rows_that_became_one_hot():
    # Trigger: a Diffusion-Gemma layer (unscaled q.k over normalised q and k) has 64% of its
    # rows one-hot before training and 84-90% after, at logits of 430-500 that hold level: the
    # architecture's attention, not a collapse. Control: rows one-hot from none at the start.
    logits = [82.0, 429.0, 428.0, 425.0, 427.0, 426.0]
    born = {"attn_logit_max/l.1.attn": logits, "attn_saturated/l.1.attn": [0.64] + [0.88] * 5}
    assert _cadenced(born) == []
    became = {"attn_logit_max/l.1.attn": logits, "attn_saturated/l.1.attn": [0.0] + [0.88] * 5}
    found = _cadenced(became)
    assert [(f.step, f.evidence["attn_saturated"]) for f in found] == [(50, 0.88)]


def test_attention_collapse_held_at_two_readings_is_named():
    # Trigger: set 149's SDPA ported with scale=1.0 (not 1/sqrt(d)): the largest logit 6.6 ->
    # 99 over 175 steps, its rows one-hot 0 -> 57% and 61% at its last two readings (the run
    # ended before a third): said healthy when three readings were wanted. Control: one
    # reading's batch saturated, the next back under half: no state, no finding.
    logits = [6.6, 20.6, 20.8, 24.0, 43.3, 69.4, 90.6, 99.4]
    held = [0.0, 0.09, 0.15, 0.19, 0.28, 0.47, 0.57, 0.61]
    key = "attn_logit_max/attn"
    found = _cadenced({key: logits, "attn_saturated/attn": held})
    assert [(f.step, f.where) for f in found] == [(175, "attn")]
    once = held[:6] + [0.57, 0.45]
    assert _cadenced({key: logits, "attn_saturated/attn": once}) == []
