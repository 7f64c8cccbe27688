"""A batch whose shape changes and holds: a sequence-length warm-up, a batch-size ramp.

A character model's loss summed over its tokens doubles when its sequences double from 16 to 32
at step 100, though every token is predicted as well as before; read against the run's past,
that is a climb. The Monitor reads the elements passed to the model's forward each step
(``input_size``): a settled size that changed and held starts the detectors again, recorded as
the action ``input_resized``. An epoch's partial last batch, and sizes that vary batch to batch
(bucketing), change nothing.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import steadygrad
from steadygrad.core.metrics import INPUT_RESIZED, INPUT_SIZE
from steadygrad.diagnose.detectors.trends import LOSS_DIVERGENCE
from steadygrad.monitor.tasks import SHAPE_HELD, SHAPE_SETTLED, InputShape

VOCAB, DOUBLED_AT, BATCH = 12, 100, 8


class _CharModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, 32)
        self.mix = nn.Sequential(nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, VOCAB))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mix(self.embed(tokens))


def _sequences(length: int, draw: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Counting sequences mod VOCAB from random starts, a token in ten replaced by noise: the
    next token is learnable, up to the noise."""
    start = torch.randint(0, VOCAB, (BATCH, 1), generator=draw)
    tokens = (start + torch.arange(length + 1)) % VOCAB
    noisy = torch.rand(tokens.shape, generator=draw) < 0.1
    tokens = torch.where(noisy, torch.randint(0, VOCAB, tokens.shape, generator=draw), tokens)
    return tokens[:, :-1], tokens[:, 1:]


def _train(run_dir, lengths, broken_at: int | None = None):
    """Adam on the summed loss, the sequence length of each step from ``lengths(step)``;
    ``broken_at``: the rate raised 3000x there. The closed Monitor and the losses."""
    torch.manual_seed(0)
    model = _CharModel()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mon = steadygrad.Monitor(model, opt, run_dir, progress=False)
    draw = torch.Generator().manual_seed(0)
    losses = []
    for step in range(220):
        if step == broken_at:
            opt.param_groups[0]["lr"] = 30.0
        tokens, targets = _sequences(lengths(step), draw)
        logits = model(tokens)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1), reduction="sum")
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad()
        losses.append(float(loss))
    mon.close()
    return mon, losses


def _doubling(step: int) -> int:
    return 16 if step < DOUBLED_AT else 32


def _warned(mon) -> list:
    return [f for f in mon.findings if f.severity != "info"]


def test_sequences_doubled_at_a_stroke_are_no_climb(tmp_path):
    mon, losses = _train(tmp_path, _doubling)
    before = torch.tensor(losses[DOUBLED_AT - 20 : DOUBLED_AT]).median()
    assert torch.tensor(losses[DOUBLED_AT : DOUBLED_AT + 20]).median() > 1.7 * before
    assert _warned(mon) == []
    run = steadygrad.load(tmp_path)
    held = DOUBLED_AT + SHAPE_HELD - 1  # the third record at the new size
    assert [(a.step, a.kind, a.detail) for a in run.actions()] == [
        (held, INPUT_RESIZED, {"from": BATCH * 16, "to": BATCH * 32})
    ]
    steps, sizes = run.series(INPUT_SIZE.name)
    assert sizes[steps == DOUBLED_AT - 1][0] == BATCH * 16
    assert sizes[steps == DOUBLED_AT][0] == BATCH * 32


def test_without_the_shape_the_same_doubling_reads_as_a_climb(tmp_path, monkeypatch):
    # Control: the monitor's own reading taken away (a loop that feeds the model through a
    # wrapper the hook does not see would look like this): the doubled loss is a climb again.
    monkeypatch.setattr("steadygrad.monitor.input_size._elements", lambda args, kwargs: 0)
    mon, _ = _train(tmp_path, _doubling)
    assert LOSS_DIVERGENCE in [f.kind for f in _warned(mon)]


@pytest.mark.parametrize("broken_at", [60, 160])
def test_a_blow_up_is_warned_before_and_after_the_batch_changed(tmp_path, broken_at):
    mon, losses = _train(tmp_path, _doubling, broken_at=broken_at)
    assert max(losses[broken_at:]) > 5 * losses[broken_at - 1]
    assert any(broken_at <= f.step <= broken_at + 5 for f in _warned(mon))


def test_an_epochs_partial_batch_changes_nothing(tmp_path):
    # every 50th step a shorter last batch: one record at another size, then back
    mon, _ = _train(tmp_path, lambda step: 9 if step % 50 == 49 else 16)
    assert steadygrad.load(tmp_path).actions() == []


def test_the_shape_is_read_as_settled_then_held():
    shape = InputShape()
    assert [shape.changed(256.0) for _ in range(SHAPE_SETTLED)] == [None] * SHAPE_SETTLED
    assert shape.changed(128.0) is None and shape.changed(256.0) is None  # a partial batch
    assert [shape.changed(512.0) for _ in range(SHAPE_HELD)][-1] == (256.0, 512.0)
    # sizes that vary from batch to batch (bucketing) never settle: nothing to change from
    bucketed = InputShape()
    sizes = [256.0, 256.0, 256.0, 384.0, 384.0, 384.0, 512.0, 512.0, 512.0] * 10
    assert [bucketed.changed(s) for s in sizes] == [None] * len(sizes)
