"""Run shapes from the thirty-sixth session (held-out set 131's misses).

Each change has a trigger (the held-out scenario it was found on, run here with the one-line
attach: its fault is by construction) and a control that must not move."""

from __future__ import annotations

import math

import torch
from helpers import held_out_run, induced_or_skip, steadygrad


def test_activations_amplified_layer_after_layer_name_the_initialisation(tmp_path):
    # Trigger: eight ReLU convolutions initialised at 2.2x the He scale. At step 0 each
    # layer's output RMS is about 2x the one before (1.6, 3.3, 7.2, 14, 27, 62, 163, 239 on
    # an input of RMS 0.54) and the gradient is 19x the norm of all the weights; the first
    # SGD step throws the run (loss 27 -> 7,295 -> NaN). No layer reaches the 1e4x of a
    # single-layer test: the chain is the evidence, and it names where it starts.
    ctx, report = held_out_run(tmp_path, "h131_typewriter_jam_hot_init")
    induced_or_skip(ctx)
    top = report.top
    assert top.cause == "exploding_gradients" and top.first_step == 0
    assert "convs.0" in top.where
    assert "each of convs.0 .. convs.6 (7 layers) at least 1.5x the output before it" in (
        top.summary
    )


def test_the_same_layers_at_the_he_scale_explode_nothing(tmp_path):
    # Control: the same eight convolutions at the He scale keep the signal's RMS through the
    # layers; the same SGD run trains, and nothing is said to explode from the start.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from scenarios.cases_heldout131 import KeyJam, _keystroke_batches
    from scenarios.common import Context, fit, seeded

    torch.manual_seed(0)
    ctx = Context("default", tmp_path / "he")
    model = KeyJam(depth=8, gain=math.sqrt(2))
    fit(ctx, model, torch.optim.SGD(model.parameters(), lr=0.01), _keystroke_batches(seeded(7)), 40)
    ctx.monitor.close()
    assert all(math.isfinite(v) for v in ctx.losses)
    report = steadygrad.diagnose(tmp_path / "he")
    assert not any(d.cause == "exploding_gradients" for d in report.diagnoses)


def test_a_chain_is_layers_in_a_row_each_amplifying_the_one_before():
    # Hand-computed: input RMS 1; the chain must be CHAIN (5) layers in a row, each >= 1.5x
    # the output before it, and end >= 100x the input.
    from steadygrad.diagnose.rules import _amplified_layer_by_layer

    grow = [(2.0**i * 3.2, f"net.{i}") for i in range(6)]  # 3.2 .. 102: x2 a layer
    assert _amplified_layer_by_layer(grow, 1.0) == [f"net.{i}" for i in range(6)]
    # read in the model's order (net.10 after net.9), not the names' string order
    many = [(1.5**i, f"net.{i}") for i in range(13)]  # 1.5^12 = 130
    assert _amplified_layer_by_layer(many, 1.0) == [f"net.{i}" for i in range(13)]
    # one layer at 1.4x breaks the chain into two of four
    broken = [(v, f"net.{i}") for i, v in enumerate([5, 10, 20, 40, 56, 112, 224, 448])]
    assert _amplified_layer_by_layer(broken, 1.0) == []
    # a chain that ends below 100x the input; one layer large by design (a temperature)
    assert _amplified_layer_by_layer(grow, 2.0) == []
    spike = [(1.0, "net.0"), (1.1, "net.1"), (900.0, "net.2"), (1.0, "net.3"), (1.2, "net.4")]
    assert _amplified_layer_by_layer(spike, 1.0) == []
