"""Per-block (block-diagonal) sharpness and trace in one call.

Every block's top eigenvalue is that of its diagonal Hessian block H_bb, computed by Lanczos with
products H_bb v through ONE retained gradient graph shared by all blocks. Block traces come from
the same Rademacher probes of the full Hessian: sum over i in b of z_i (H z)_i has mean tr(H_bb).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from steadygrad.core.checks import non_negative_int, positive_int
from steadygrad.curvature.eigensolver import SharpnessResult, run_eigensolver
from steadygrad.curvature.hvp import RetainedGraphHessian, as_generator, build_objective, rademacher
from steadygrad.curvature.trace import Estimate


@dataclass
class LayerwiseCurvature:
    """``sharpness[block]``, ``trace[block]`` (or empty), the full results, and total products."""

    sharpness: dict[str, float]
    trace: dict[str, Estimate]
    results: dict[str, SharpnessResult]
    matvecs: int


class _BlockView:
    """A view of one diagonal block of a retained-graph operator, for the eigensolver."""

    def __init__(self, op: RetainedGraphHessian, block: list[int]) -> None:
        self.op = op
        self.block = block
        self.numel = sum(op.objective.sizes[i] for i in block)
        self.dtype, self.device = op.dtype, op.device
        self.names = tuple(op.objective.names[i] for i in block)
        slices = op.objective.block_slices({"b": list(self.names)})["b"]
        self.gradient = torch.cat([op.gradient[s] for s in slices])

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.op.block_matvec(self.block, v)


def _blocks(names: tuple[str, ...], blocks: Any) -> dict[str, list[int]]:
    index = {n: i for i, n in enumerate(names)}
    if blocks == "parameter":
        return {n: [i] for n, i in index.items()}
    if blocks == "module":
        out: dict[str, list[int]] = {}
        for n, i in index.items():
            out.setdefault(n.rsplit(".", 1)[0] if "." in n else n, []).append(i)
        return out
    if isinstance(blocks, Mapping):
        out = {}
        for block, members in blocks.items():
            ids = []
            for member in members:
                if member not in index:
                    raise ValueError(f"blocks[{block!r}] names unknown parameter {member!r}")
                ids.append(index[member])
            out[str(block)] = ids
        return out
    raise ValueError("blocks must be 'module', 'parameter' or a {block: [param names]} mapping")


def layerwise_curvature(
    model: Any,
    loss_fn: Any,
    batch: Any,
    *,
    blocks: Any = "module",
    k: int = 1,
    tol: float = 1e-3,
    max_matvecs: int | None = None,
    trace_matvecs: int = 30,
    params: Any = None,
    dropout: bool = False,
    seed: int | torch.Generator | None = 0,
) -> LayerwiseCurvature:
    """Sharpness of each diagonal Hessian block and (if ``trace_matvecs > 0``) its trace.

    ``blocks="module"`` groups parameters by the module that owns them (``fc.weight`` and
    ``fc.bias`` form block ``fc``); ``"parameter"`` makes one block per tensor.

    Example:
        >>> nn = torch.nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> batch = (torch.randn(32, 4), torch.randn(32, 1))
        >>> loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> sorted(layerwise_curvature(model, loss_fn, batch).sharpness)
        ['0', '2']
    """
    positive_int("k", k)
    trace_matvecs = non_negative_int("trace_matvecs", trace_matvecs)
    objective = build_objective(model, loss_fn, batch, params, dropout)
    groups = _blocks(objective.names, blocks)
    gen = as_generator(seed)
    results: dict[str, SharpnessResult] = {}
    traces: dict[str, Estimate] = {}
    with RetainedGraphHessian(objective) as op:
        for name, block in groups.items():
            view = _BlockView(op, block)
            if k > view.numel:
                raise ValueError(f"k={k} is larger than block {name!r} ({view.numel} parameters)")
            results[name] = run_eigensolver(
                view,
                k=k,
                which="LA",
                method="lanczos",
                tol=tol,
                max_matvecs=max_matvecs,
                warm_start=None,
                seed=gen,
                vectors=False,
                matvec=view.matvec,
                names=view.names,
            )
        if trace_matvecs:
            Z = rademacher((trace_matvecs, op.numel), op, gen)
            samples = Z * torch.stack([op.matvec(z) for z in Z])
            slices = objective.block_slices(
                {b: [objective.names[i] for i in ids] for b, ids in groups.items()}
            )
            for name, parts in slices.items():
                per_probe = sum(samples[:, s].sum(dim=1) for s in parts).double()
                stderr = (
                    float(per_probe.std(unbiased=True)) / math.sqrt(trace_matvecs)
                    if trace_matvecs > 1
                    else math.inf
                )
                traces[name] = Estimate(
                    float(per_probe.mean()), stderr, trace_matvecs, "hutchinson"
                )
        total = op.matvecs
    return LayerwiseCurvature({b: r.value for b, r in results.items()}, traces, results, total)
