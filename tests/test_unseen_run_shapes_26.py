"""Run shapes from the thirtieth session (held-out set 104's misses).

Each change has a trigger that fails on the code before it and a control that must not move."""

from __future__ import annotations

import pytest
from helpers import diagnose_stored, induced_report

from steadygrad.core.optimizer import SECOND_MOMENT_DECAY

ADAM = {"optimizer": "Adam", "optimizer_family": "adam", SECOND_MOMENT_DECAY: 0.999}
HIT = ("cond.weight", "block.weight", "embed.weight")  # the tensors the spike hit


def _spiked_rows(embed_after: float, control_after: float) -> list[dict]:
    """Set 104's WaveGrad vocoder, by hand: Adam at a constant rate, the loss at 0.2 until one
    batch at step 120 (conditioning in raw int16 power, the inputs' RMS 3e3x: its loss 9e4,
    its gradient 1e7x the usual), back the next step. Update ratios every 10 steps: the conditioning and block
    tensors keep their pace after it; the noise-level embedding (a scalar input's, whose own
    gradient is tiny next to the spike's share of it) falls to ``embed_after`` of its size;
    the tensor the spike missed to ``control_after``."""
    rows = []
    for t in range(320):
        row = {
            "loss": 9e4 if t == 120 else 0.2,
            "grad_norm": 2e5 if t == 120 else 0.02,
            "lr/0": 2e-3,
            "input_rms": 3e3 if t == 120 else 1.0,  # the raw int16 power came in
        }
        if t % 10 == 0:
            after = t > 120
            row["update_ratio/cond.weight"] = row["update_ratio/block.weight"] = 1e-3
            row["update_ratio/embed.weight"] = 7e-4 * (embed_after if after else 1.0)
            row["update_ratio/out.bias"] = 2e-3 * (control_after if after else 1.0)
        rows.append(row)
    return rows


def _spike_findings(hit: tuple[str, ...]) -> list[tuple]:
    findings = [
        ("loss_spike", 120, None, {"loss": 9e4, "baseline": 0.2, "ratio": 4.5e5}, "warning"),
        ("grad_norm_spike", 120, None, {"grad_norm": 2e5, "ratio": 1e7}, "warning"),
    ]
    for tensor in hit:
        evidence = {"grad_norm": 1e3, "running_rms": 1e-4, "spike_factor": 1e7}
        findings.append(("gradient_spike", 120, tensor, evidence, "critical"))
    return findings


@pytest.mark.parametrize(
    "shape", ["stopped", "slowed", "not hit", "all slowed"], ids=lambda s: s.replace(" ", "_")
)
def test_a_spike_that_stopped_one_of_the_tensors_it_hit_poisoned_its_moment(tmp_path, shape):
    # Trigger: the spike hit three tensors; two kept their pace, the third's updates fell to 3%
    # and stayed there (its running square took the spike's square): the median over the three
    # hid it, and the batch was named alone (set 104's WaveGrad, its embedding then read as a
    # frozen layer 170 steps later). Controls: that tensor only slowed (to 30%: training's own
    # slowing, no poisoning); it stopped but the spike had not hit it; it stopped and so did
    # the tensor the spike missed (the whole run slowed: nothing the spike did).
    embed_after = 0.3 if shape == "slowed" else 0.03
    control_after = 0.03 if shape == "all slowed" else 1.0
    hit = HIT[:2] if shape == "not hit" else HIT
    rows = _spiked_rows(embed_after, control_after)
    report = diagnose_stored(tmp_path, "run", rows, _spike_findings(hit), config=ADAM)
    causes = report.causes()
    if shape != "stopped":
        assert "adam_second_moment_poisoned" not in causes
        return
    assert report.top.cause == "adam_second_moment_poisoned"
    assert report.top.where == ["embed.weight"] and report.top.first_step == 120
    assert "shrank to 3%" in report.top.summary  # read once the spike's momentum passed
    assert causes.index("data_outlier") == 1  # the batch set it off; the harm stayed


def test_the_real_wavegrad_run_names_the_poisoned_moment(tmp_path):
    # The real run (set 104's scenario, one-line attach): one batch of raw int16 power at step
    # 120; the noise-level embedding's updates then fell ten-thousandfold and stayed there.
    report = induced_report(tmp_path, "h104_wavegrad_poisoned_moment")
    assert report.top.cause == "adam_second_moment_poisoned"
    assert report.top.first_step == 120
    assert any(w.startswith("noise_embed.0") for w in report.top.where)


@pytest.mark.parametrize("layer", ["lm_head.weight", "body.weight"])
def test_logits_drifting_with_their_heads_updates_too_large_name_its_rate(tmp_path, layer):
    # Trigger: set 104's LFM2 head trained at a rate of 1.0: its update ratio out of range
    # from step 20, its logits drifting from step 23; the logit diagnosis told only of a
    # z-loss. It now says the head's updates drive the drift. Control: the updates too large
    # on another layer say nothing of the head's rate.
    rows = [{"loss": 4.0 - 0.002 * t, "logit_lse_mean": 4.0 + 0.2 * t} for t in range(120)]
    too_large = {"direction": "too_large", "update_ratio": 0.36, "high": 0.25}
    drift = {"logit_lse_mean": 25.0, "initial": 4.2, "drift": 20.8, "lse_limit": 20.0}
    findings = [
        ("update_ratio_out_of_range", 20, layer, too_large, "warning"),
        ("output_logit_divergence", 23, "lm_head", drift, "warning"),
    ]
    report = diagnose_stored(tmp_path, "run", rows, findings, config=ADAM)
    logits = next(d for d in report.diagnoses if d.cause == "output_logit_divergence")
    said = "its learning rate drives the drift" in logits.summary
    assert said == (layer == "lm_head.weight")
    if said:
        assert "from step 20 (update ratio 0.36)" in logits.summary


def _two_groups(fast: list[str], rate: float, family: str = "adam", attention: bool = False):
    """A run in two optimizer groups, the second (``fast``) at ``rate``, the first at 1e-3;
    both move their weights about 0.7% per update (a fast group's weights grow to match)."""
    slow = ["head.weight", "head.bias"]
    rows = []
    for t in range(200):
        row = {"loss": 2.0 - 0.005 * t, "lr/0": 1e-3, "lr/1": rate}
        if t % 10 == 0:
            for name in slow + fast:
                row[f"update_ratio/{name}"] = 0.007
        rows.append(row)
    config = {
        "optimizer": "AdamW" if family == "adam" else "SGD",
        "optimizer_family": family,
        "param_groups": {"lr/0": slow, "lr/1": fast},
    }
    findings = []
    if attention:
        growth = {"attention_logit_max": 60.0, "initial": 3.0}
        findings.append(("attention_logit_growth", 40, "blocks.0.attn", growth, "warning"))
    return rows, findings, config


BACKBONE = ["backbone.conv1.weight", "backbone.conv1.bias", "backbone.conv2.weight"]


@pytest.mark.parametrize(
    "shape", ["backbone", "sgd", "below", "free"], ids=["typo", "sgd", "below_ceiling", "log_z"]
)
def test_an_adam_group_run_far_above_any_rate_adam_trains_layers_at_is_a_typo(tmp_path, shape):
    # Trigger: set 105's Deformable DETR, its backbone's AdamW rate typed 0.1 (meant 1e-4):
    # 100x the rest, and its update ratios as ordinary as the head's (its weights grew): the
    # head was taken for the odd group, and the note was "nothing is wrong if meant". Adam moves
    # each weight by about its rate per step: no layer is trained with it at 0.1. Controls: the
    # same rates under SGD (whose step scales with the gradient); a group 30x above the rest at
    # 0.03; a free parameter (a GFlowNet's log Z, trained at 0.1 by its recipe).
    fast = ["log_z"] if shape == "free" else BACKBONE
    rate = 0.03 if shape == "below" else 0.1
    family = "momentum" if shape == "sgd" else "adam"
    rows, findings, config = _two_groups(fast, rate, family)
    report = diagnose_stored(tmp_path, "run", rows, findings, config=config)
    rate_found = next(d for d in report.diagnoses if d.cause == "update_ratio_out_of_range")
    if shape != "backbone":
        assert rate_found.severity == "info"
        return
    assert report.top is rate_found and rate_found.severity == "warning"
    assert rate_found.where == ["backbone.conv1", "backbone.conv2"]
    assert "trains at learning rate 0.1, 100x above the 0.001 of the rest" in rate_found.summary


@pytest.mark.parametrize("attention", [True, False], ids=["growth_found", "no_growth"])
def test_a_rate_that_drives_its_own_attention_growth_ranks_below_it(tmp_path, attention):
    # Trigger: query/key projections in a group at 0.3 under AdamW, and the attention logits
    # of that layer growing from step 40: the growth is what threatens the run; the rate ranks
    # right below it, said to drive it (set 104's RADIO and eight other qk-rate runs, whose
    # rate was info before: raising it must not put it above the growth). Control: with no
    # growth found, the rate is the top cause.
    fast = ["blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"]
    rows, findings, config = _two_groups(fast, 0.3, attention=attention)
    report = diagnose_stored(tmp_path, "run", rows, findings, config=config)
    causes = report.causes()
    if not attention:
        assert report.top.cause == "update_ratio_out_of_range"
        return
    assert causes[:2] == ["attention_logit_growth", "update_ratio_out_of_range"]
    rate = report.diagnoses[1]
    assert "it drives the attention logit growth found in blocks.0.attn" in rate.why


@pytest.mark.parametrize(
    ("name", "cause"),
    [
        ("h105_ddetr_backbone_lr_typo", "update_ratio_out_of_range"),
        ("h104_lfm2_vl_lm_head", "output_logit_divergence"),
    ],
)
def test_the_real_rate_typos_are_named(tmp_path, name, cause):
    # The real runs (sets 104 and 105, one-line attach): the backbone at AdamW 0.1 is named by
    # its rate; the LFM2 head at NAdam 1.0 by its logits' drift, its rate right below.
    report = induced_report(tmp_path, name)
    assert report.top.cause == cause
    if cause == "output_logit_divergence":
        assert report.causes()[1] == "update_ratio_out_of_range"


def _bursting_rows(bursts: list[float]) -> list[dict]:
    """A loss near 0.08 and a gradient norm near 8 for 60 steps, then gradient bursts of the
    given sizes every six steps (the loss jumping with each and coming back), the last
    followed by a NaN two steps on (set 105's EGNN, its coordinates summed without a mean)."""
    rows = [{"loss": 0.08 + 0.01 * (t % 3), "grad_norm": 8.0 + (t % 4)} for t in range(60)]
    for size in bursts:
        rows.append({"loss": 3.0, "grad_norm": size})
        rows += [{"loss": 0.3, "grad_norm": 20.0} for _ in range(5)]
    rows = rows[:-4]
    rows += [{"loss": float("nan"), "grad_norm": float("nan")} for _ in range(3)]
    return rows


@pytest.mark.parametrize("sizes", ["growing", "shrinking"])
def test_gradient_bursts_each_larger_than_the_last_into_a_nan_are_an_explosion(tmp_path, sizes):
    # Trigger: three bursts of the gradient norm (1e3, 1.3e3, 3e5), each larger than the one
    # before, the last two steps before a NaN: gradients exploding in bursts in a net with no
    # recurrence; it was named "gradient spikes" (a one-off event) before. Control: the same
    # bursts largest first do not grow, and say nothing of an explosion in bursts.
    bursts = [1e3, 1.3e3, 3e5] if sizes == "growing" else [3e5, 1.3e3, 1e3]
    rows = _bursting_rows(bursts)
    nan_at = next(t for t, r in enumerate(rows) if r["loss"] != r["loss"])
    findings = [("nonfinite", nan_at, None, {"loss": float("nan")}, "critical")]
    for t, row in enumerate(rows):
        if row["grad_norm"] >= 1e3:
            evidence = {"grad_norm": row["grad_norm"], "spike_factor": row["grad_norm"] / 9}
            findings.append(("gradient_spike", t, "coord.weight", evidence, "warning"))
    report = diagnose_stored(tmp_path, sizes, rows, findings, config=ADAM)
    explosion = [d for d in report.diagnoses if d.cause == "exploding_gradients"]
    in_bursts = [d for d in explosion if "bursts, each larger than the last" in d.summary]
    if sizes == "shrinking":
        assert in_bursts == []
        return
    assert report.top is in_bursts[0]
    assert report.top.first_step == 60 and report.top.where == ["coord.weight"]
