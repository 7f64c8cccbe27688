"""The "memorising" cause: low gradient coherence while the training loss falls (Chatterjee
2020), read from the opt-in GradientCoherenceProbe; random labels trigger it, real ones do not."""

from __future__ import annotations

import pytest
import torch

import steadygrad
from steadygrad.core.record import Record
from steadygrad.diagnose.detectors import Memorising, default_detectors
from steadygrad.diagnose.detectors.dynamics import MEMORISING
from steadygrad.dynamics.coherence import GRADIENT_COHERENCE, GradientCoherenceProbe
from steadygrad.models import MLP
from steadygrad.studies._monitored import cross_entropy, digits_subset, train_monitored


def _feed(det: Memorising, losses: list[float], coherence: float, every: int = 2) -> list:
    found = []
    for step, loss in enumerate(losses):
        values = {"loss": loss}
        if step % every == 0:
            values[GRADIENT_COHERENCE.name] = coherence
        found += det.update(Record(step, values))
    return found


def test_detector_fires_once_on_falling_loss_with_orthogonal_gradients():
    falling = [2.3 - 0.02 * i for i in range(40)]  # still far above 0.5 x 2.3 at the end
    found = _feed(Memorising(smoothing=0.0), falling, coherence=1.1)
    assert [f.kind for f in found] == [MEMORISING.name]  # one finding per episode
    ev = found[0].evidence
    assert ev["loss_now"] < 0.95 * ev["loss_then"] and len(ev["coherence"]) == 4


@pytest.mark.parametrize(
    ("losses", "coherence"),
    [
        ([2.3 - 0.02 * i for i in range(40)], 5.0),  # the gradients agree: learning a pattern
        ([2.3] * 40, 1.1),  # low coherence, but the loss is not falling
        ([0.5 * 0.97**i for i in range(40)], 0.8),  # nearly fitted: below half the start
    ],
)
def test_detector_stays_quiet_otherwise(losses, coherence):
    det = Memorising(smoothing=0.0)
    if losses[0] < 1:  # a run that started high and has already fitted most of the sample
        det.update(Record(-1, {"loss": 2.3}))
    assert _feed(det, losses, coherence) == []


def test_detector_checks_its_arguments():
    for bad in (dict(low=0), dict(patience=1), dict(min_fall=1.5), dict(loss_share=1.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Memorising(**bad)


def _digits_run(tmp_path, random_labels: bool):
    train, _ = digits_subset(512, random_labels=random_labels, seed=0)
    torch.manual_seed(0)
    model = MLP(64, [128, 128], 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = GradientCoherenceProbe(cross_entropy, (train[0][:128], train[1][:128]), every=25)
    return train_monitored(
        tmp_path / ("random" if random_labels else "real"),
        model,
        optimizer,
        train,
        steps=400,
        batch_size=32,
        signals=[probe],
        detectors=[*default_detectors(), Memorising()],
    )


def test_random_labels_are_diagnosed_as_memorising(tmp_path):
    run = _digits_run(tmp_path, random_labels=True)
    steps, coherence = run.series(GRADIENT_COHERENCE.key())
    assert coherence.max() < 2.0  # the per-example gradients never agree much
    report = steadygrad.diagnose(run)
    assert "memorising" in report.causes()
    (d,) = [d for d in report.diagnoses if d.cause == "memorising"]
    assert "Chatterjee" in d.reference and d.evidence["first"]["loss_now"] > 0.5 * 2.3


def test_real_labels_are_not_memorising(tmp_path):
    run = _digits_run(tmp_path, random_labels=False)
    _, coherence = run.series(GRADIENT_COHERENCE.key())
    assert coherence.max() > 2.0  # learnable data: the gradients agree while the loss falls
    assert [f for f in run.findings() if f.kind == MEMORISING.name] == []
    assert "memorising" not in steadygrad.diagnose(run).causes()


def test_memorising_detector_is_not_in_the_default_set():
    # the coherence probe is opt-in, and so is its detector
    assert not any(isinstance(d, Memorising) for d in default_detectors())
