"""The Monitor under torch.distributed: 2 CPU processes with gloo, started from the test.

Oracles, computed in the workers by other means than the Monitor: each rank's own gradient by
autograd on the unwrapped module, the gradients DDP applied read from ``.grad``, FSDP2's whole
gradients gathered by DTensor's ``full_tensor()``, each rank's loss, and whether the weights
moved. The Monitor's run (written by rank 0 alone) must agree with them.
"""

from __future__ import annotations

import json
import math
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import steadygrad
from steadygrad.diagnose.detectors import RankSpikeDetector
from steadygrad.monitor.distributed import Reducer

sys.path.insert(0, str(Path(__file__).parent))
import _distributed_workers as workers  # noqa: E402

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)


def _train(tmp_path: Path, kind: str) -> tuple[steadygrad.Run, list[dict]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(workers.run, args=(2, port, str(tmp_path), kind), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    return steadygrad.load(tmp_path / "run"), ranks


def _series(run: steadygrad.Run, name: str) -> np.ndarray:
    steps, values = run.series(name)
    assert list(steps) == list(range(workers.STEPS))
    return values


def _check_common(run: steadygrad.Run, ranks: list[dict], tmp_path: Path) -> steadygrad.Finding:
    """What DDP and FSDP2 share; returns the non-finite finding."""
    nan = workers.NAN_STEP
    # Exactly one run: rank 0 wrote it, rank 1 wrote nothing.
    assert sorted(p.name for p in tmp_path.rglob("run.db")) == ["run.db"]
    assert run.status == "finished"
    # The loss is the mean of the ranks' losses; each rank's is kept.
    losses = np.array([r["losses"] for r in ranks])
    np.testing.assert_allclose(_series(run, "loss"), losses.mean(axis=0), rtol=1e-6)
    for r in range(2):
        np.testing.assert_allclose(_series(run, f"loss/{r}"), losses[r], rtol=1e-6)
    # The gradient norm is of the gradients applied.
    applied = np.array(ranks[0]["applied_norm"])
    np.testing.assert_allclose(ranks[1]["applied_norm"], applied, rtol=1e-6)
    grad_norm = _series(run, "grad_norm")
    healthy = [s for s in range(workers.STEPS) if s != nan]
    np.testing.assert_allclose(grad_norm[healthy], applied[healthy], rtol=1e-5)
    assert math.isnan(grad_norm[nan])
    # The autopilot skipped the non-finite step on both ranks, and only that one; training
    # went on, and the two replicas hold the same weights.
    for r in ranks:
        assert r["skipped"] == [s == nan for s in range(workers.STEPS)]
        assert np.isfinite(np.concatenate([np.ravel(w) for w in r["w"][-1]])).all()
    for a, b in zip(ranks[0]["w"][-1], ranks[1]["w"][-1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert [(a.step, a.kind) for a in run.actions()] == [(nan, "skip_update")]
    # A spike in rank 1's own loss is found at its step and named with the rank; rank 0's
    # series, which did not spike, raise nothing.
    spikes = [f for f in run.findings() if f.kind == "rank_spike"]
    assert spikes and {f.step for f in spikes} == {workers.SPIKE_STEP}
    assert {f.evidence["rank"] for f in spikes} == {1}
    assert "loss/1" in {f.evidence["series"] for f in spikes}
    # The finding names the step and rank 1.
    found = [f for f in run.findings() if f.kind == "nonfinite"]
    assert [f.step for f in found] == [nan]
    return found[0]


def test_ddp_records_the_global_mean_loss_the_applied_norms_and_names_the_rank(tmp_path):
    run, ranks = _train(tmp_path, "ddp")
    finding = _check_common(run, ranks, tmp_path)
    nan = workers.NAN_STEP
    # By hand: the average of the ranks' own gradients, and its norm.
    for step in range(workers.STEPS):
        local = [[np.array(g) for g in r["local_grads"][step]] for r in ranks]
        mean = [(a + b) / 2 for a, b in zip(*local, strict=True)]
        by_hand = math.sqrt(sum(float((g**2).sum()) for g in mean))
        if step != nan:
            assert _series(run, "grad_norm")[step] == pytest.approx(by_hand, rel=1e-5)
        # Each rank's own gradient norm, seen before DDP averaged it.
        for r in range(2):
            own = math.sqrt(sum(float((g**2).sum()) for g in local[r]))
            value = _series(run, f"grad_norm_local/{r}")[step]
            if r == 1 and step == nan:
                assert math.isnan(value)
            else:
                assert value == pytest.approx(own, rel=1e-5)
    # The inputs' RMS is over both ranks' batches: the root of their mean squares' mean.
    input_ms = np.array([r["input_ms"] for r in ranks])
    np.testing.assert_allclose(_series(run, "input_rms"), np.sqrt(input_ms.mean(0)), rtol=1e-5)
    # The NaN came from rank 1 alone, in the first layer's weight gradient.
    assert _series(run, "nonfinite_grads/0")[nan] == 0
    assert _series(run, "nonfinite_grads/1")[nan] == 32  # every entry of the 8x4 weight
    origin = finding.evidence["backward_origin"]
    assert origin["rank"] == 1
    assert origin["parameter"] == "module.0.weight" and origin["module"] == "module.0"
    assert finding.where == "module.0.weight"
    # The spike is named with the parameter holding rank 1's largest gradient at that step.
    names = {"module.0.weight", "module.0.bias", "module.2.weight", "module.2.bias"}
    spike = next(f for f in run.findings() if f.kind == "rank_spike")
    assert spike.where in names
    # One collective per recorded step (a SUM over one vector) under DDP.
    assert ranks[0]["collectives"] == ranks[1]["collectives"] == workers.STEPS


def test_fsdp2_norms_come_from_the_shards_and_the_nan_is_named_by_rank_and_module(tmp_path):
    run, ranks = _train(tmp_path, "fsdp")
    finding = _check_common(run, ranks, tmp_path)
    nan = workers.NAN_STEP
    # Weight norms of the whole tensors, from the shards.
    np.testing.assert_allclose(_series(run, "param_norm"), ranks[0]["param_norm"], rtol=1e-5)
    # Rank 1's first layer produced the NaN in the forward pass: every gradient entry went
    # non-finite (8*4 + 8 + 2*8 + 2 = 58), counted over both ranks' shards.
    assert math.isnan(_series(run, "loss/1")[nan]) and math.isfinite(_series(run, "loss/0")[nan])
    assert _series(run, "nonfinite_grads")[nan] == 58
    origin = finding.evidence["forward_origin"]
    assert origin["rank"] == 1 and origin["module"] == "0"
    assert finding.where == "0"
    # Under FSDP2, per step: the transfer, the gradient norms (the autopilot asks before the
    # update), the weight norms, the two slopes of the update-curvature signal; now and then
    # the update ratios and the non-finite counts. The same on both ranks, or one would hang.
    assert ranks[0]["collectives"] == ranks[1]["collectives"] <= 6 * workers.STEPS


def test_without_a_process_group_there_is_no_reducer(tmp_path):
    assert Reducer.for_process() is None
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with steadygrad.watch(model, optimizer, tmp_path / "run", progress=False) as mon:
        assert mon.reducer is None


def _record(step: int, **values: float) -> steadygrad.Record:
    return steadygrad.Record(step=step, values=values)


def test_rank_spike_detector_names_the_rank_that_spiked_and_stays_quiet_otherwise():
    detector = RankSpikeDetector(warmup=5)
    noise = [1.0, 1.1, 0.9, 1.05, 0.95, 1.0, 1.02]
    healthy = [
        _record(s, **{"loss": x, "loss/0": x, "loss/1": 2 - x, "grad_norm_local/1": 0.5 * x})
        for s, x in enumerate(noise)
    ]
    assert [f for r in healthy for f in detector.update(r)] == []  # the healthy control
    spike = _record(7, **{"loss": 3.0, "loss/0": 1.0, "loss/1": 5.0, "grad_norm_local/1": 4.0})
    spike.meta["largest_local_grad"] = {1: "fc.weight"}
    found = detector.update(spike)
    assert {(f.evidence["rank"], f.evidence["series"]) for f in found} == {
        (1, "loss/1"),
        (1, "grad_norm_local/1"),
    }
    assert {f.where for f in found} == {"fc.weight"} and {f.step for f in found} == {7}
    # A single-process run has no per-rank series: nothing to watch.
    assert RankSpikeDetector(warmup=1).update(_record(0, loss=1e9)) == []
