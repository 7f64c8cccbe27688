"""One optimizer group's learning rate set far apart from the rest (a typo in one group).

The Monitor records each group's members in the run config; the diagnosis names a group whose
rate stands 30x or more from every other group's, as info (a head meant to learn faster looks
the same), where its update ratios never went out of range."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import steadygrad
from steadygrad.core.metrics import PARAM_GROUPS


def _grouped_run(tmp_path, rates: list[float], body: int = 1, steps: int = 60):
    """A small classifier trained by Adam: its first ``body`` layers in one group, then one
    group per layer, at ``rates``. The run and its report."""
    torch.manual_seed(0)
    widths = [16] + [32] * (len(rates) + body - 2) + [4]
    layers = [nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    model = nn.Sequential(*[m for layer in layers[:-1] for m in (layer, nn.Tanh())], layers[-1])
    grouped = [layers[:body]] + [[layer] for layer in layers[body:]]
    groups = [
        {"params": [p for layer in group for p in layer.parameters()], "lr": lr}
        for group, lr in zip(grouped, rates, strict=True)
    ]
    opt = torch.optim.Adam(groups)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 16, generator=gen)
    y = (x[:, :4] @ torch.randn(4, 4, generator=gen)).argmax(dim=1)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        for _ in range(steps):
            idx = torch.randint(0, 256, (32,), generator=gen)
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
    run = steadygrad.load(tmp_path / "run")
    return run, steadygrad.diagnose(run)


def _set_apart(report):
    return [
        d
        for d in report.diagnoses
        if d.cause == "update_ratio_out_of_range" and "group" in d.evidence
    ]


def test_the_run_config_holds_each_groups_members(tmp_path):
    run, _ = _grouped_run(tmp_path, [1e-3, 1e-3, 1e-3], steps=3)
    assert run.config[PARAM_GROUPS] == {
        "lr/0": ["0.weight", "0.bias"],
        "lr/1": ["2.weight", "2.bias"],
        "lr/2": ["4.weight", "4.bias"],
    }


def test_a_head_group_at_100x_the_rest_is_named(tmp_path):
    # Trigger: the head's group typed 1e-1 for 1e-3. Adam moves each weight by about its rate,
    # so the head's updates are far larger relative to its weights than the body's. Two
    # groups, each alone: the odd one is the one whose updates stand further from 1e-3.
    run, report = _grouped_run(tmp_path, [1e-3, 1e-1], body=2)
    (found,) = _set_apart(report)
    # a layer's weights under Adam at 0.1, above any rate Adam trains layers at: a warning
    assert found.severity == "warning" and found.where == ["4"]
    assert found.evidence["group"] == "lr/1"
    assert found.evidence["lr"] == 0.1 and found.evidence["rest_lr"] == 1e-3
    assert "100x above" in found.summary
    # the update ratios quoted are the run's own: the head's median against the body's
    head = np.concatenate([run.series(f"update_ratio/4.{p}")[1] for p in ("weight", "bias")])
    moved = found.evidence["median_update_ratio"]
    assert moved["group"] == float(np.median(head[np.isfinite(head)]))
    assert moved["group"] > 10 * moved["rest"]
    assert report.diagnoses[0] is found  # nothing else: it is what the run shows first


def test_the_odd_one_of_two_groups_is_told_by_its_updates_not_its_size(tmp_path):
    # Trigger: the body's group (two layers) typed 1e-1, the head's (one layer) right at 1e-3,
    # as a GAN's discriminator and generator each get a group: the group holding most tensors
    # is the odd one here, and its updates, far above 1e-3 of its weights, say so.
    _, report = _grouped_run(tmp_path, [1e-1, 1e-3], body=2)
    (found,) = _set_apart(report)
    assert found.where == ["0", "2"] and "100x above" in found.summary


def test_a_group_100x_below_the_rest_is_named_too(tmp_path):
    # Trigger: a multiplier meant as 1e-2 pasted as 1e-4 on the first layer's group; the two
    # other groups share a rate, so the group alone is the odd one.
    _, report = _grouped_run(tmp_path, [1e-5, 1e-3, 1e-3])
    (found,) = _set_apart(report)
    assert found.where == ["0"] and "100x below" in found.summary


def _laddered(report):
    return [
        d
        for d in report.diagnoses
        if d.cause == "update_ratio_out_of_range" and "step_factor" in d.evidence
    ]


def test_rates_a_layer_wise_decay_spreads_are_not_named(tmp_path):
    # Control: a layer-wise decay of 0.5 over six groups spreads the rates 32x end to end, each
    # group next to one at twice or half its rate: no group stands alone, and no neighbours
    # stand further apart than a decay sets them.
    _, report = _grouped_run(tmp_path, [1e-3 * 0.5**k for k in range(5, -1, -1)])
    assert _set_apart(report) == [] and _laddered(report) == []


def test_a_layer_wise_decay_typed_an_order_of_magnitude_off_is_named(tmp_path):
    # Trigger (set 174's glue-cure regressor): a decay typed 0.05 for 0.95 over four groups,
    # each 20x below the next (1.25e-7 .. 1e-3 here, 8000x end to end). No group stands alone,
    # each has a neighbour 20x away; the two groups 400x and more below the fastest are named.
    _, report = _grouped_run(tmp_path, [1e-3 * 0.05**k for k in range(3, -1, -1)])
    (found,) = _laddered(report)
    assert found.severity == "info" and found.where == ["0", "2"]
    assert found.evidence["step_factor"] == pytest.approx(20.0)
    assert "400x or more slower" in found.summary


def test_a_head_at_ten_times_the_body_is_not_named(tmp_path):
    # Control: a head trained 10x faster than the body, a common fine-tuning choice.
    _, report = _grouped_run(tmp_path, [1e-3, 1e-3, 1e-2])
    assert _set_apart(report) == []
