"""Run shapes from the thirty-eighth session.

Each change has a trigger (a held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import fitted, held_out_run, induced_or_skip, on_bench_path, steadygrad

from steadygrad.core import Record
from steadygrad.diagnose.detectors import GradientGrowth

on_bench_path()  # the scenarios' models and data


def _through_depth(findings):
    return [
        f
        for f in findings
        if f.kind == "gradient_growth" and f.evidence.get("through_depth") and f.step == 0
    ]


def test_gradients_growing_back_through_a_stack_are_warned_of_live_at_the_first_step(tmp_path):
    # Trigger: set 140's eight tanh layers initialised with std 1.0 (the chaotic phase). The
    # diagnosis after the run named the chain; live, the detector's model-wide test missed it
    # (the head's gradient, larger than the last hidden layer's, breaks the model-wide order).
    # Now the live warning comes at step 0, its ratio the stored gradients' own.
    ctx, _ = held_out_run(tmp_path, "h140_chainsaw_carving_init_std")
    induced_or_skip(ctx)
    found = _through_depth(ctx.monitor.findings)
    assert found and found[0].severity == "warning" and found[0].where == "body.0.weight"
    run = steadygrad.load(tmp_path / "h140_chainsaw_carving_init_std")
    first = {n: run.series(f"grad_norm/body.{n}.weight")[1][0] for n in (0, 14)}
    assert found[0].evidence["ratio"] == pytest.approx(first[0] / first[14], rel=1e-5)
    assert found[0].evidence["ratio"] >= 100


def test_the_same_stack_at_pytorchs_default_init_is_warned_of_nothing_live(tmp_path):
    # Control: the same layers at PyTorch's default init keep their gradients within a few
    # times of each other.
    from scenarios.cases_heldout140 import DeepTanh, _tabular
    from scenarios.common import seeded

    torch.manual_seed(0)
    model = DeepTanh(10, 64, 8)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    batches = _tabular(seeded(14005), 10, 64)
    huber = torch.nn.functional.huber_loss
    ctx, _ = fitted(tmp_path, model, opt, batches, 30, loss_fn=huber, classifier=False)
    assert all(math.isfinite(v) for v in ctx.losses)
    assert not _through_depth(ctx.monitor.findings)


def _first_record(grads: dict[str, float]) -> list:
    values = {"grad_norm": 1.0, "param_norm": 10.0, "loss": 1.0}
    values |= {f"grad_norm/{tensor}": g for tensor, g in grads.items()}
    found = _through_depth(GradientGrowth().update(Record(0, values)))
    return [f for f in found if f.evidence.get("stack")]  # the model-wide order's test aside


def test_the_live_chain_is_the_rules_chain_five_like_layers_each_1_5x_the_next_and_100x():
    # Hand-computed, as the rule's test: body.0 .. body.5 at 3x a layer back (243x) with a
    # head larger than any of them is a chain; at 2x (32x) it is too short a rise; one layer
    # at 1.4x breaks it; tensors of different stacks do not chain.
    thrice = {f"body.{i}.weight": 0.01 * 3 ** (5 - i) for i in range(6)}
    found = _first_record({**thrice, "head.weight": 50.0})
    assert found and found[0].where == "body.0.weight" and found[0].evidence["layers"] == 6
    assert found[0].evidence["ratio"] == 3.0**5
    assert not _first_record({f"body.{i}.weight": 0.01 * 2 ** (5 - i) for i in range(6)})
    assert not _first_record(dict(thrice, **{"body.2.weight": 0.01 * 3**2 * 1.4}))
    mixed = {f"blocks.{i}.{'q' if i % 2 else 'v'}.weight": 0.01 * 3 ** (5 - i) for i in range(6)}
    assert not _first_record(mixed)
