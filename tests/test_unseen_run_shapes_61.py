"""Run shapes from the sixty-first session.

Each change has a trigger (a held-out run it was found on) and a control that must still be
told apart."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import held_out_run

from steadygrad.core import Record
from steadygrad.diagnose.detectors.transformer import ASLEEP, GradientSpike
from steadygrad.diagnose.detectors.trends import LossDivergence
from steadygrad.store.run import load


def _stream(detector, rows: list[dict[str, float]]) -> list:
    return [f for step, values in enumerate(rows) for f in detector.update(Record(step, values))]


def _spikes(rows: list[dict[str, float]]) -> list[tuple[int, str, str]]:
    return [(f.step, f.where, f.severity) for f in _stream(GradientSpike(), rows)]


def _warned(tmp_path, name: str) -> list:
    """The warning-or-worse findings of a held-out run whose fault (or health) took."""
    ctx, _ = held_out_run(tmp_path, name)
    assert all(ctx.checks.values()), ctx.checks
    return [f for f in load(tmp_path / name).findings() if f.severity != "info"]


@pytest.mark.parametrize("woken", [0.05, 2.0])
def test_a_tensor_waking_from_far_below_the_step_is_no_spike(woken):
    # Trigger: set 664's HYV4 control (MLA's query down-projection): its gradient ~1e-5 of the
    # step's, then 0.05 of it at once, ~1000x its level: read as a critical spike, the run's
    # first warning. Asleep (under ASLEEP of the step) and still under a tenth of it, it is
    # waking up. Control: the same jump to where the tensor carries most of the step.
    rows = [{"grad_norm": 1.0, "grad_norm/fc.weight": 1.0, "grad_norm/q_a.weight": 5e-5}] * 16
    total = (1.0 + woken**2) ** 0.5  # the step's norm, as the monitor sums it
    rows = rows + [{"grad_norm": total, "grad_norm/fc.weight": 1.0, "grad_norm/q_a.weight": woken}]
    factor = woken / 5e-5  # the oracle: 1000x and 40000x the tensor's steady level
    assert factor**2 > 100 * 5000 and 5e-5 < ASLEEP  # critical by the factor alone; asleep
    severity = "info" if woken < 0.1 * total else "critical"
    assert _spikes(rows) == [(16, "q_a.weight", severity)]


def test_a_small_tensor_in_a_spike_of_the_whole_step_is_critical():
    # Control (set 104's WaveGrad: one raw batch spiked every tensor 10^6x, and the noise
    # embedding's, 1% of the step, then had its Adam moment poisoned): a small share of the
    # step, but awake, spiking past 100 theta is critical.
    rows = [{"grad_norm": 1.0, "grad_norm/fc.weight": 1.0, "grad_norm/emb.weight": 0.01}] * 16
    rows = rows + [{"grad_norm": 1e5, "grad_norm/fc.weight": 1e5, "grad_norm/emb.weight": 1e3}]
    assert 0.01 > ASLEEP and 1e3 < 0.1 * 1e5  # the oracle: awake, and a small share
    assert sorted(_spikes(rows)) == [(16, "emb.weight", "critical"), (16, "fc.weight", "critical")]


def test_the_hyv4_control_whose_query_projection_wakes_up_warns_of_nothing(tmp_path):
    name = "h664_hyv4_gather_unlikelihood"
    ctx, report = held_out_run(tmp_path, name)
    assert all(ctx.checks.values()), ctx.checks
    spikes = [f for f in load(tmp_path / name).findings() if f.kind == "gradient_spike"]
    assert spikes, "the waking projection is still recorded"
    assert all(f.severity == "info" for f in spikes), spikes
    assert "gradient_spike" not in report.causes() or report.top.severity == "info", report.text()


def _triangles(drift: float, seed: int = 0) -> tuple[list[float], list[dict[str, float]]]:
    """CyclicLR's triangle between 0.04 and 0.11 over 40 records, for 240; the loss falls to a
    floor of 0.04 times ``drift`` per record, rises 2.5x with the rate at each peak, and
    scatters 30% from batch to batch."""
    rng = np.random.default_rng(seed)
    losses, rates = [], []
    floor = 0.04
    for t in range(240):
        phase = 1 - abs((t % 40) - 20) / 20  # 0 at the trough, 1 at the peak
        rates.append({"lr/0": 0.04 + 0.07 * phase})
        floor *= drift
        base = max(0.6 * 0.97**t, floor)
        losses.append(base * (1 + 1.5 * phase**2) * (1 + 0.3 * rng.standard_normal() / 3))
    return losses, rates


def test_a_loss_that_climbs_with_a_cyclic_rate_is_read_where_the_rate_is_low(tmp_path):
    # Trigger: set 668's CyclicLR control: the loss rose 1.5-3x with the rate at each peak, and
    # the median of the last 32 losses, a bump in it, read as a divergence at the third. A rate
    # raised back to one already used, record by record, cycles: the loss is compared where
    # the rate is in the lower half of its range.
    warned = _warned(tmp_path, "h668_barchan_dune_cyclic_lr")
    assert warned == [], warned


def test_a_restart_to_a_new_rate_is_read_as_a_restart_not_held(tmp_path):
    # Control: set 676's SWA run: its rate annealed to 1e-4, then SWALR's first step to 0.03
    # (a restart, back within the range used) and 0.12 after. The restart's record starts the
    # levels again; holding it back as well left the next levels to a borderline few losses.
    warned = _warned(tmp_path, "h676_spoon_carving_swa_constant_lr")
    assert warned == [], warned


@pytest.mark.parametrize("drift", [1.0, 1.01, 1.015])
def test_a_loss_whose_floor_climbs_across_the_cycles_still_diverges(drift):
    # Control: the same kind of cycles, the floor under the loss climbing 1-1.5% a record
    # (11-35x over the run): read at the troughs, a divergence; with no climb, nothing
    losses, rates = _triangles(drift)
    assert max(losses[100:]) > 2 * min(losses[100:])  # the oracle: the peaks' bumps are there
    rows = [{"loss": x, **rate} for x, rate in zip(losses, rates, strict=True)]
    found = [f for f in _stream(LossDivergence(), rows) if f.severity != "info"]
    if drift == 1.0:
        assert found == []
    else:
        assert losses[-1] > 4 * min(losses)  # the oracle: the run ends 4x above its best
        assert found and found[0].kind == "loss_divergence"
