"""Run shapes from the fifty-first session.

Each change has a trigger (a held-out scenario it was found on, or a loop written here) and a
control that must not move."""

from __future__ import annotations

import math

from steadygrad.core import Record
from steadygrad.diagnose.detectors import GradientGrowth


def _explosion_after(losses_before: list[float], after: float = 1.5e-3) -> list:
    """Five quiet records with ``losses_before``, then a gradient 1000x the others whose
    update threw the weights 10x, after which the tensor gets no gradient at all (its units
    saturated) and the loss stands at ``after``."""
    det = GradientGrowth()
    grads = [1.0] * 5 + [1000.0] + [0.0] * 6
    losses = losses_before + losses_before[-1:] + [after] * 6
    found = []
    for step, (grad, loss) in enumerate(zip(grads, losses, strict=True)):
        values = {
            "grad_norm": max(grad, 1e-9),
            "grad_norm/w": grad,
            "param_norm": 40.0 if step >= 5 else 4.0,
            "loss": loss,
        }
        meta = {"optimizer_family": "sgd"} if step == 0 else {}
        found += det.update(Record(step, values, meta=meta))
    return found


def test_a_nan_loss_before_an_explosion_does_not_forget_the_lowest_loss():
    # Trigger: the lowest loss so far (0.5) was forgotten at a NaN loss, and the loss after the
    # explosion (1.5e-3) then read as under a thousandth of the 2.0 after it: "the task was
    # solved", and the explosion dropped. Against 0.5 it is not.
    found = _explosion_after([1.0, 0.5, math.nan, 2.0, 2.0])
    assert [(f.kind, f.step, f.where) for f in found] == [("gradient_growth", 5, "w")]
    # Control: the same run without the NaN reads the same.
    found = _explosion_after([1.0, 0.5, 0.6, 2.0, 2.0])
    assert [(f.kind, f.step, f.where) for f in found] == [("gradient_growth", 5, "w")]


def test_an_explosion_after_which_the_loss_fell_under_a_thousandth_of_its_lowest_is_none():
    # Control: a loss that fell from its lowest, 0.5, to 2e-4 (under a thousandth of it), a NaN
    # on the way, went to its floor with the gradient: the step solved the task.
    assert _explosion_after([1.0, 0.5, math.nan, 2.0, 2.0], after=2e-4) == []
