"""Property tests of the store: any float and any Unicode name come back as they went in."""

import math
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import steadygrad
from steadygrad.store import RunStore

FLOATS = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True) | st.sampled_from(
    [1e300, -1e300, 5e-324, 2.0**-1074, math.nextafter(0.0, 1.0), 1.7976931348623157e308]
)
NAMES = st.text(min_size=1, max_size=40)  # any code point but lone surrogates
SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _same(a: float, b: float) -> bool:
    # NaN is NaN; SQLite keeps no sign on zero (documented), so -0.0 reads back as 0.0.
    return (math.isnan(a) and math.isnan(b)) or a == b


@SETTINGS
@given(
    values=st.dictionaries(NAMES, st.lists(FLOATS, min_size=1, max_size=6), min_size=1, max_size=6),
    run_name=NAMES,
    flush_every=st.integers(1, 4),
)
def test_any_float_and_name_round_trips(values, run_name, flush_every):
    steps = max(len(v) for v in values.values())
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(f"{tmp}/run", name=run_name, flush_every=flush_every)
        for step in range(steps):
            store.add_scalars(step, {n: v[step] for n, v in values.items() if step < len(v)})
        store.close()
        with steadygrad.load(f"{tmp}/run") as run:
            assert run.name == run_name
            assert run.names() == sorted(values)
            for name, written in values.items():
                got_steps, got = run.series(name)
                assert got_steps.tolist() == list(range(len(written)))
                assert all(_same(a, b) for a, b in zip(got.tolist(), written, strict=True))


@SETTINGS
@given(kind=NAMES, where=st.none() | NAMES, evidence=st.dictionaries(NAMES, FLOATS, max_size=4))
def test_findings_round_trip_with_any_text_and_float(kind, where, evidence):
    finding = steadygrad.Finding(kind, 3, where, evidence, "warning", [1, 2])
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(f"{tmp}/run")
        store.add_findings([finding])
        store.close()
        with steadygrad.load(f"{tmp}/run") as run:
            (got,) = run.findings()
    assert (got.kind, got.step, got.where, got.batch_ids) == (kind, 3, where, [1, 2])
    assert got.evidence.keys() == evidence.keys()
    assert all(_same(got.evidence[k], v) for k, v in evidence.items())


@settings(SETTINGS, max_examples=10)
@given(name=st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3))
def test_a_name_that_is_not_unicode_text_is_refused_clearly(name):
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(f"{tmp}/run")
        try:
            store.add_scalars(0, {name: 1.0})
        except ValueError as exc:
            assert "metric name" in str(exc) and "surrogate" in str(exc)
        else:
            raise AssertionError("a lone surrogate cannot be stored as text")
        finally:
            store.close()
