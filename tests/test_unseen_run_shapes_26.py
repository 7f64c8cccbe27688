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
    batch at step 120 (conditioning in raw int16 power: its loss 9e4, its gradient 1e7x the
    usual), back the next step. Update ratios every 10 steps: the conditioning and block
    tensors keep their pace after it; the noise-level embedding (a scalar input's, whose own
    gradient is tiny next to the spike's share of it) falls to ``embed_after`` of its size;
    the tensor the spike missed to ``control_after``."""
    rows = []
    for t in range(320):
        row = {
            "loss": 9e4 if t == 120 else 0.2,
            "grad_norm": 2e5 if t == 120 else 0.02,
            "lr/0": 2e-3,
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
