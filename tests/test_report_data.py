"""What the interactive report draws: envelopes that keep every spike, family grids, panels from
declarations (or family names), and marks only for real events."""

import math

import numpy as np
import torch
from helpers import tiny_mlp, train

import steadygrad
from steadygrad.report.data import run_data
from steadygrad.report.plots import real_event_steps
from steadygrad.store import RunStore
from steadygrad.store.query import envelope, family_grid, nonfinite_steps


def _store(path, steps, values_at):
    store = RunStore(path, name="hand", flush_every=10_000)
    for step in range(steps):
        store.add_scalars(step, values_at(step), wall=float(step))
    store.close("finished")
    return steadygrad.load(path)


def test_envelope_keeps_each_step_ranges_extremes_and_every_spike(tmp_path):
    rng = np.random.default_rng(0)
    n, bins = 20_000, 150
    values = 1.0 + 0.01 * rng.standard_normal(n)
    values[12_345] = 1e6  # one spike
    values[777] = -5.0  # one dip
    values[5_000] = math.nan  # not drawn: a gap
    run = _store(tmp_path / "r", n, lambda s: {"x": float(values[s])})
    steps, got = envelope(run, "x", bins)
    assert len(steps) <= 2 * bins and np.all(np.diff(steps) > 0)
    assert (12_345, 1e6) in zip(steps.tolist(), got.tolist(), strict=True)
    assert (777, -5.0) in zip(steps.tolist(), got.tolist(), strict=True)
    width = math.ceil(n / bins)
    for b in range(0, n // width):  # numpy oracle: min and max of each range, at their steps
        chunk = values[b * width : (b + 1) * width]
        inside = (steps >= b * width) & (steps < (b + 1) * width)
        assert set(got[inside]) == {np.nanmin(chunk), np.nanmax(chunk)}
    assert nonfinite_steps(run, "x")[0][0] == 5_000
    short_steps, short = envelope(run, "x", n)  # short enough: every finite point
    assert len(short) == n - 1


def test_family_grid_matches_numpy(tmp_path):
    rng = np.random.default_rng(1)
    n, members = 100, ("a", "b.weight", "c")
    table = rng.random((len(members), n))
    table[1, 40] = math.inf
    run = _store(
        tmp_path / "r",
        n,
        lambda s: (
            {f"fam/{m}": float(table[i, s]) for i, m in enumerate(members)}
            | {"fam": 1.0, "famous/x": 2.0}
        ),  # neither is a member of fam
    )
    width, bins = 7, math.ceil(n / 7)
    names, low, high, bad = family_grid(run, "fam", 0, width, bins)
    assert names == list(members)
    finite = np.where(np.isfinite(table), table, np.nan)
    padded = np.full((len(members), bins * width), np.nan)
    padded[:, :n] = finite
    cells = padded.reshape(len(members), bins, width)
    np.testing.assert_array_equal(low, np.nanmin(cells, axis=2))
    np.testing.assert_array_equal(high, np.nanmax(cells, axis=2))
    assert bad.sum() == 1 and bad[1, 40 // width] == 1


def test_panels_follow_declarations_and_fall_back_to_family_names(tmp_path):
    run = _store(
        tmp_path / "r",
        30,
        lambda s: (
            {"loss": 1.0 / (s + 1), "grad_norm": 1.0, "grad_norm/fc.weight": 0.5}
            | {"custom/a": 1.0, "custom/b": 2.0}  # undeclared, small: lines in panel "custom"
            | {f"wide/{i}": float(i + s) for i in range(20)}
        ),  # undeclared, large: a layer family
    )
    data = run_data(run, 0)
    panels = {s["key"]: (s["panel"], s["scale"]) for s in data["series"]}
    assert panels["loss"] == ("loss", "linear")
    assert panels["grad_norm"] == ("grad_norm", "log")  # declared per parameter, total, log
    assert panels["custom/a"] == ("custom", "linear")
    families = {f["family"]: f for f in data["families"]}
    assert set(families) == {"grad_norm", "wide"}
    assert families["wide"]["members"] == sorted(str(i) for i in range(20))


def test_zero_biases_give_undefined_update_ratios_not_events(tmp_path):
    """A zero-initialised bias has update ratio 0/0 at its first step: no mark on any plot."""
    model = tiny_mlp()
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                layer.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    train(model, opt, mon, 12)
    mon.close()
    run = steadygrad.load(tmp_path / "run")
    undefined = [
        n for n in run.names() if n.startswith("update_ratio/") and nonfinite_steps(run, n)
    ]
    assert any(n.endswith(".bias") for n in undefined)  # the 0/0 is really there...
    assert run_data(run, 0)["marks"] == []  # ... and it is not an event
    assert len(real_event_steps(run)) == 0
    assert run.findings() == []
