"""TensorGroups: per-tensor norms, copies and dot products of many tensors in few kernels,
checked against one torch reduction per tensor (the oracle), with chunks forced small and
stacking forced on however few the tensors."""

from __future__ import annotations

import pytest
import torch

from steadygrad.monitor import tensor_groups
from steadygrad.monitor.tensor_groups import TensorGroups


def _layout(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(3, 4)] * 7 + [(5,)] * 4 + [(), ()] + [(2, 3, 2)] + [(0,)] + [(70, 1000)]
    tensors = [torch.randn(s, generator=gen) for s in shapes]
    tensors.insert(3, torch.randn(3, 4, generator=gen).half())  # same shape, other dtype
    return tensors


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(tensor_groups, "CHUNK_NUMEL", 30)  # (3, 4) tensors: 2 per chunk
    monkeypatch.setattr(tensor_groups, "STACK_MIN_TENSORS", 0)


def test_groups_stack_small_tensors_of_one_kind_and_leave_the_rest():
    tensors = _layout()
    groups = TensorGroups(tensors)
    stacked = sorted(i for chunk in groups.chunks for i in chunk)
    for chunk in groups.chunks:  # one kind per chunk, at most CHUNK_NUMEL elements
        kinds = {(tensors[i].shape, tensors[i].dtype) for i in chunk}
        assert len(kinds) == 1 and sum(tensors[i].numel() for i in chunk) <= 30
    # lone shapes (the half tensor, (2, 3, 2)), the empty tensor and the large one stay single
    assert groups.singles == [3, 14, 15, 16]
    assert sorted(stacked + groups.singles) == list(range(17))


def test_few_tensors_are_reduced_unstacked_in_their_own_order(monkeypatch):
    monkeypatch.setattr(tensor_groups, "STACK_MIN_TENSORS", 128)
    tensors = _layout()
    groups = TensorGroups(tensors)
    assert groups.chunks == [] and groups.singles == list(range(17))
    expected = torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])
    torch.testing.assert_close(groups.norms(tensors), expected, rtol=1e-6, atol=0.0)
    same = [t.float() for t in tensors]  # one dtype: a single _foreach_norm, no reordering
    torch.testing.assert_close(TensorGroups(same).norms(same), expected, rtol=1e-6, atol=0.0)


def test_norms_match_one_norm_per_tensor():
    tensors = _layout()
    expected = torch.stack([torch.linalg.vector_norm(t.float()) for t in tensors])
    got = TensorGroups(tensors).norms(tensors)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0.0)


def test_copy_subtract_and_dots_match_per_tensor_arithmetic():
    before = _layout(0)
    groups = TensorGroups(before)
    held = groups.copy(before)
    after = [t + 0.5 * torch.ones_like(t) if t.numel() else t for t in before]
    for t, n in zip(before, after, strict=True):  # the copy does not follow later writes
        t.copy_(n)
    original = _layout(0)
    torch.testing.assert_close(groups.norms_of(held), groups.norms(original))
    groups.subtract_(held, after)  # held = original - after = -0.5 everywhere
    groups.negate_(held)
    diff = [(n - o).float() for n, o in zip(after, original, strict=True)]
    torch.testing.assert_close(
        groups.norms_of(held), torch.stack([torch.linalg.vector_norm(d) for d in diff])
    )
    grads = _layout(1)
    expected = torch.stack(
        [
            torch.dot(g.float().reshape(-1), d.reshape(-1)).double()
            for g, d in zip(grads, diff, strict=True)
        ]
    )
    torch.testing.assert_close(groups.dots(grads, held), expected, rtol=1e-5, atol=1e-6)


def test_a_layout_of_another_length_is_refused():
    tensors = _layout()
    with pytest.raises(ValueError, match="expected 17 tensors"):
        TensorGroups(tensors).norms(tensors[:-1])
