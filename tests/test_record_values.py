"""A step's values with per-module families held as arrays (Values, Members, Measurements):
every read must give what the same values in a plain dict give (the oracle)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steadygrad.core import Family, Measurements, Members, Record, Values


def _both():
    grads = Members("grad_norm", ["a.weight", "a.bias", "b.weight"])
    values = Values(
        {"loss": 2.0, "act_rms/a": 0.5}, [Family(grads, np.array([1.0, math.nan, 3.0]))]
    )
    plain = {"loss": 2.0, "act_rms/a": 0.5, "grad_norm/a.weight": 1.0}
    plain |= {"grad_norm/a.bias": math.nan, "grad_norm/b.weight": 3.0}
    return values, plain


def test_values_read_like_the_plain_dict():
    values, plain = _both()
    assert list(values) == list(plain) and len(values) == len(plain)
    assert list(values.keys()) == list(plain.keys())
    for (k, v), (pk, pv) in zip(values.items(), plain.items(), strict=True):
        assert k == pk and (v == pv or (math.isnan(v) and math.isnan(pv)))
    assert values["grad_norm/b.weight"] == 3.0 and values.get("grad_norm/c") is None
    assert "grad_norm/a.bias" in values and "grad_norm/zzz" not in values
    with pytest.raises(KeyError):
        values["grad_norm/zzz"]
    assert values.keys() - {"loss"} == plain.keys() - {"loss"}


def test_values_write_and_delete_members():
    values, plain = _both()
    values["grad_norm/a.weight"] = 10.0  # into the array
    values["grad_norm"] = 4.0  # a new scalar
    del values["grad_norm/b.weight"]
    plain["grad_norm/a.weight"], plain["grad_norm"] = 10.0, 4.0
    del plain["grad_norm/b.weight"]
    assert sorted(values) == sorted(plain)
    assert values["grad_norm/a.weight"] == 10.0 and values["grad_norm"] == 4.0


def test_without_drops_families_and_their_loose_members():
    values, _ = _both()
    values["update_ratio/a.weight"] = 0.1
    kept = values.without({"grad_norm", "update_ratio"})
    assert dict(kept) == {"loss": 2.0, "act_rms/a": 0.5}


def test_record_families_are_the_same_from_arrays_and_from_a_dict():
    values, plain = _both()
    for record in (Record(1, values), Record(1, plain)):
        grads = record.family("grad_norm")
        assert list(grads) == ["a.weight", "a.bias", "b.weight"]
        names, array = record.family_array("grad_norm")
        assert names == ("a.weight", "a.bias", "b.weight")
        np.testing.assert_array_equal(array, [1.0, math.nan, 3.0])
        assert record.family("act_rms") == {"a": 0.5}
        assert set(record.families()) == {"grad_norm", "act_rms"}


def test_measurements_deliver_a_family_as_one_array():
    out = Measurements()
    out.put("loss", torch.tensor(1.5))
    members = Members("param_norm", ["w", "b"])
    out.put_family(members, torch.tensor([3.0, 4.0]))
    out.put("lr/0", 0.1)
    values = out.to_host()
    assert dict(values) == {"loss": 1.5, "lr/0": 0.1, "param_norm/w": 3.0, "param_norm/b": 4.0}
    family = values.families["param_norm"]
    assert family.members is members and family.values.dtype == np.float64
    with pytest.raises(ValueError, match="2 members"):
        out.put_family(members, torch.zeros(3))


def test_a_reduce_sees_every_member_labelled():
    seen = {}

    def reduce(labels, vector):
        seen["labels"] = labels
        return vector * 2

    out = Measurements()
    out.put_family(Members("grad_norm", ["w", "b"]), torch.tensor([1.0, 2.0]))
    out.put("lr/0", 0.5)
    values = out.to_host(reduce)
    assert seen["labels"] == ["grad_norm/w", "grad_norm/b", "lr/0"]
    assert dict(values) == {"lr/0": 1.0, "grad_norm/w": 2.0, "grad_norm/b": 4.0}
