"""Run shapes from the sixty-second session.

Each change has a trigger (a held-out run it was found on) and a control that must still be
told apart."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import held_out_run

from steadygrad.core import Record
from steadygrad.diagnose.detectors import OutputLogitDivergence
from steadygrad.diagnose.detectors.training import GradNormSpikeDetector
from steadygrad.store.run import load


def _logits_rising_on_a_fit(gave_back: float) -> list:
    """A contrastive head whose log Z climbs 10 -> 80 over 300 steps (read every 25) while its
    loss falls from 7 to a fit at 0.05, scattering by a factor of 1.6 batch to batch; from step
    150 the loss's level rises by ``gave_back`` of what it had learnt."""
    detector, found = OutputLogitDivergence(), []
    scatter = np.random.default_rng(0).lognormal(0.0, 0.5, size=300)
    for t in range(300):
        level = 0.05 + 6.95 * math.exp(-t / 15)
        if t >= 150:
            level += gave_back * 6.95 * (t - 150) / 150
        loss = level * scatter[t]
        values = {"loss": loss, **({"logit_lse_mean": 10 + 70 * t / 300} if t % 25 == 0 else {})}
        found += detector.update(Record(t, values))
    return found


@pytest.mark.parametrize("gave_back", [0.0, 0.5])
def test_logits_rising_on_a_noisy_fit_are_no_divergence_until_the_loss_gives_back(gave_back):
    # Trigger: set 671's CLIP-style control: a learnt logit scale climbs to its clamp while the
    # loss fits (1% of its first value) and scatters ~1.6x between batches; one 5-step median 1.2x
    # the best (itself the lowest of many noisy medians) read as the loss turning worse, and
    # the climb as a divergence. Worse means giving back a tenth of what was learnt. Control:
    # the same climb once the loss gives back half of it.
    found = _logits_rising_on_a_fit(gave_back)
    if gave_back:
        assert found and found[0].step > 150, found
    else:
        assert found == []


def test_a_learnt_logit_scale_climbing_to_its_clamp_on_a_fit_warns_nothing(tmp_path):
    name = "h671_rope_walk_clip_scale_to_clamp"
    ctx, report = held_out_run(tmp_path, name)
    assert all(ctx.checks.values()), ctx.checks
    assert [f for f in load(tmp_path / name).findings() if f.severity != "info"] == []
    assert report.top is None or report.top.severity == "info"


def _norm_spikes(burst_every: int | None) -> list:
    """A gradient norm that grows 10x over 80 records (0.04 to 0.4) scattering 1.5x about its
    level, as a model learning its way out of a flat start; at record 80 one norm 10x the level
    (27x the window's median), and the loss after it felt it. ``burst_every``: a norm of 8x the
    level every so many records besides (a bursty recurrence's ordinary steps)."""
    scatter = np.random.default_rng(1).lognormal(0.0, 0.4, size=81)
    detector, found = GradNormSpikeDetector(), []
    for t in range(82):
        level = 0.04 * 10 ** (min(t, 80) / 80)
        norm = level * (10.0 if t == 80 else 1.0 if t > 80 else scatter[t])
        if burst_every and t < 80 and t % burst_every == 0:
            norm = 8 * level
        loss = 0.8 if t == 81 else 0.5
        found += detector.update(Record(t, {"grad_norm": norm, "loss": loss}))
    return [(f.step, f.severity) for f in found if f.kind == "grad_norm_spike"]


@pytest.mark.parametrize("burst_every", [None, 6])
def test_a_gradient_far_above_everything_its_window_saw_is_a_spike(burst_every):
    # Trigger: sets 683 and 687: a loss weighted 100x for one step, a masked loss divided by
    # one sequence's frames: the gradient 35-75x its median, yet only 5 robust z-scores in log
    # space in runs whose norms scatter and climb over the window; no step of the window came
    # within a fifth of it. Control: the same jump in a run whose ordinary steps burst to 8x
    # (a recurrence): within reach of its window's largest, it is no spike.
    spikes = _norm_spikes(burst_every)
    at_the_jump = [spike for spike in spikes if spike[0] == 80]
    assert at_the_jump == ([] if burst_every else [(80, "warning")])


@pytest.mark.parametrize(
    "name", ["h683_nunchaku_loss_weight_percent", "h687_tidal_bore_mask_denominator"]
)
def test_a_one_step_gradient_burst_in_a_scattering_run_is_named(tmp_path, name):
    ctx, report = held_out_run(tmp_path, name)
    assert all(ctx.checks.values()), ctx.checks
    assert report.top.cause == "gradient_spike"
