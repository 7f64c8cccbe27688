"""Detectors that work on whole per-tensor families as arrays must find what a per-tensor
loop over a plain dict finds. The oracle is SPAM's spike test written out here, one tensor at
a time, from its definition (GradientSpike's docstring)."""

from __future__ import annotations

import math

import numpy as np

from steadygrad.core import Family, Members, Record, Values
from steadygrad.diagnose.detectors import GradientSpike


def _reference(stream, theta=5000.0, beta=0.999, warmup=10):
    """(step, name, severity, spike_factor) of each spike, tensor by tensor."""
    state, found = {}, []
    for step, family in stream:
        for name, norm in family.items():
            if not math.isfinite(norm):
                continue
            v, count, in_spike = state.get(name, (0.0, 0, False))
            square = norm * norm
            if count >= warmup:
                v_hat = v / (1 - beta**count)
                spike = square > theta * v_hat
                if spike and not in_spike:
                    factor = norm / math.sqrt(v_hat) if v_hat > 0 else math.inf
                    severity = "critical" if factor * factor > 100 * theta else "warning"
                    found.append((step, name, severity, factor))
                in_spike = spike
                square = min(square, theta * v_hat)
            state[name] = (beta * v + (1 - beta) * square, count + 1, in_spike)
    return found


def _stream(steps=120, tensors=40, seed=0):
    rng = np.random.default_rng(seed)
    names = [f"layer{i}.weight" for i in range(tensors)]
    stream = []
    for step in range(steps):
        norms = rng.lognormal(0.0, 0.3, tensors)
        if step % 17 == 5:  # spikes of several sizes in a few tensors
            norms[rng.integers(0, tensors, 3)] *= rng.choice([50.0, 100.0, 2000.0])
        if step == 33:
            norms[4] = math.nan
        present = names if step % 30 < 20 else names[5:]  # tensors leave and come back
        stream.append((step, {n: float(norms[names.index(n)]) for n in present}))
    return stream


def _findings(detector, records):
    out = []
    for record in records:
        for f in detector.update(record):
            out.append((f.step, f.where, f.severity, f.evidence["spike_factor"]))
    return out


def test_gradient_spike_on_arrays_finds_what_the_per_tensor_loop_finds():
    stream = _stream()
    expected = _reference(stream)
    assert len(expected) >= 5  # the stream has spikes to find
    layouts: dict[tuple, Members] = {}
    as_arrays = []
    for step, family in stream:
        members = layouts.setdefault(tuple(family), Members("grad_norm", list(family)))
        values = Values(families=[Family(members, np.array(list(family.values())))])
        as_arrays.append(Record(step, values))
    as_dicts = [Record(step, {f"grad_norm/{n}": v for n, v in fam.items()}) for step, fam in stream]
    for records in (as_arrays, as_dicts):
        got = _findings(GradientSpike(), records)
        assert [g[:3] for g in got] == [e[:3] for e in expected]
        np.testing.assert_allclose([g[3] for g in got], [e[3] for e in expected], rtol=1e-12)
