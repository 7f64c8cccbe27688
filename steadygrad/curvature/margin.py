"""Stability limits for the optimizer at hand, and one report of values, limits and ratios.

Limits for the top Hessian eigenvalue (linear stability of a quadratic, PyTorch conventions):

* GD / SGD without momentum: 2 / lr;
* heavy-ball momentum beta (dampening d): (2 + 2 beta) / ((1 - d) lr);
* Nesterov momentum beta: (2 + 2 beta) / ((1 + 2 beta) lr);
* coupled L2 weight decay wd adds wd to every Hessian eigenvalue, so the limit on H drops by wd;
* Adam family: the preconditioned sharpness against (2 + 2 beta1) / ((1 - beta1) lr).

For SGD (no momentum) the trace limit 2 / lr is also reported next to the GD one, with
``trace=True``: a minimum that is linearly stable for SGD's noise (not only for its mean step)
has tr(H) <= 2 / lr (Wu, Ma, E 2018, "How SGD selects the global minima"; Wu and Su 2023, "The
implicit regularization of dynamical stability in SGD"), a bound on every eigenvalue together,
where GD bounds only the largest. That is the batch-size-1 form, at an interpolating minimum of
a square loss; with batch size B of n examples the noise term carries p = (n - B) / (B (n - 1))
(Mulayoff and Michaeli 2023) and the condition is about (1 - p) lambda_max + p tr(H) <= 2 / lr,
so compare ``hessian_trace_ratio`` with about B for small batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from steadygrad.core.checks import module as check_module
from steadygrad.core.checks import optimizer as check_optimizer
from steadygrad.core.metrics import HESSIAN_EIGENVALUE
from steadygrad.core.optimizer import optimizer_family
from steadygrad.curvature.eigensolver import SharpnessResult, run_eigensolver
from steadygrad.curvature.hvp import as_generator, build_objective, make_operator
from steadygrad.curvature.preconditioned import (
    PreconditionedOperator,
    adam_limit,
    adam_preconditioner,
)
from steadygrad.curvature.trace import trace_from_operator


@dataclass
class StabilityLimits:
    kind: str  # "gd", "heavy_ball", "nesterov", "adam"
    lr: float
    sharpness_limit: float | None
    trace_limit: float | None = None
    preconditioned_sharpness_limit: float | None = None


def _shared(optimizer: torch.optim.Optimizer, key: str, default: Any = 0.0) -> Any:
    values = {repr(g.get(key, default)) for g in optimizer.param_groups}
    if len(values) != 1:
        raise ValueError(
            f"optimizer param groups differ in {key!r}: one stability limit does not apply"
        )
    return optimizer.param_groups[0].get(key, default)


def stability_limits(optimizer: torch.optim.Optimizer) -> StabilityLimits:
    """The limits that apply to ``optimizer`` (all param groups must share the hyperparameters).

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> round(stability_limits(torch.optim.SGD([p], lr=0.01, momentum=0.9)).sharpness_limit, 6)
        380.0
    """
    check_optimizer("optimizer", optimizer)
    lr = float(_shared(optimizer, "lr"))
    if lr <= 0:
        raise ValueError(f"optimizer lr must be > 0 for a stability limit, got {lr}")
    family = optimizer_family(optimizer)
    if family == "adam":
        return StabilityLimits("adam", lr, None, None, adam_limit(optimizer))
    if family not in ("sgd", "momentum", "nesterov"):
        raise TypeError(
            f"no stability limit known for {type(optimizer).__name__}; "
            "supported: SGD (with or without momentum) and Adam-family optimizers"
        )
    beta = float(_shared(optimizer, "momentum"))
    damp = float(_shared(optimizer, "dampening"))
    nesterov = bool(_shared(optimizer, "nesterov", False))
    wd = float(_shared(optimizer, "weight_decay"))
    if beta == 0:
        kind, limit = "gd", 2 / lr
    elif nesterov:
        kind, limit = "nesterov", (2 + 2 * beta) / ((1 + 2 * beta) * lr)
    else:
        kind, limit = "heavy_ball", (2 + 2 * beta) / ((1 - damp) * lr)
    trace_limit = 2 / lr if beta == 0 else None
    return StabilityLimits(kind, lr, limit - wd, trace_limit)


def _ratio(value: float | None, limit: float | None) -> float | None:
    if value is None or limit is None:
        return None
    return value / limit if limit > 0 else math.inf


@dataclass
class StabilityMargin:
    """Measured curvature, the limits for this optimizer, and value / limit ratios (1 = edge)."""

    limits: StabilityLimits
    sharpness: float
    smallest_eigenvalue: float
    sharpness_ratio: float | None
    hessian_trace: float | None = None
    hessian_trace_stderr: float | None = None
    trace_ratio: float | None = None
    preconditioned_sharpness: float | None = None
    preconditioned_ratio: float | None = None
    matvecs: int = 0
    sharpness_result: SharpnessResult | None = field(default=None, repr=False)
    preconditioned_result: SharpnessResult | None = field(default=None, repr=False)

    def as_metrics(self) -> dict[str, float]:
        """Metric names for the run store (only those that apply to this optimizer)."""
        values: dict[str, float | None] = {
            "sharpness": self.sharpness,
            "sharpness_limit": self.limits.sharpness_limit,
            "sharpness_ratio": self.sharpness_ratio,
            "hessian_min_eigenvalue": self.smallest_eigenvalue,
            "hessian_trace": self.hessian_trace,
            "hessian_trace_limit": self.limits.trace_limit
            if self.hessian_trace is not None
            else None,
            "hessian_trace_ratio": self.trace_ratio,
            "preconditioned_sharpness": self.preconditioned_sharpness,
            "preconditioned_sharpness_limit": self.limits.preconditioned_sharpness_limit,
            "preconditioned_sharpness_ratio": self.preconditioned_ratio,
            "curvature_matvecs": float(self.matvecs),
        }
        if self.sharpness_result is not None:
            for i, ev in enumerate(self.sharpness_result.eigenvalues.tolist()[1:], start=2):
                values[HESSIAN_EIGENVALUE.key(i)] = ev
        return {k: float(v) for k, v in values.items() if v is not None}


def optimizer_parameters(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Names of the model's parameters that the optimizer updates (and that require grad)."""
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    names = [n for n, p in model.named_parameters() if id(p) in ids and p.requires_grad]
    if not names:
        raise ValueError("optimizer updates none of model's parameters")
    return names


def stability_margin(
    model: torch.nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    *,
    k: int = 1,
    trace: bool = False,
    trace_matvecs: int = 30,
    preconditioned: bool = True,
    tol: float = 1e-3,
    max_matvecs: int | None = None,
    warm_start: SharpnessResult | None = None,
    preconditioned_warm_start: SharpnessResult | None = None,
    engine: str = "retained",
    dropout: bool = False,
    seed: int | torch.Generator | None = 0,
) -> StabilityMargin:
    """Sharpness (and trace, preconditioned sharpness) against this optimizer's limits.

    All products share one operator (one retained gradient graph by default).

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> batch = (torch.randn(32, 4), torch.randn(32, 1))
        >>> loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> report = stability_margin(model, loss_fn, batch, sgd)
        >>> report.limits.sharpness_limit
        20.0
    """
    check_module("model", model)
    limits = stability_limits(optimizer)
    names = optimizer_parameters(model, optimizer)
    objective = build_objective(model, loss_fn, batch, names, dropout)
    gen = as_generator(0 if seed is None else seed)
    kw = dict(which="LA", method="lanczos", tol=tol, max_matvecs=max_matvecs, vectors=True)
    with make_operator(objective, engine) as op:
        sharp = run_eigensolver(op, k=k, warm_start=warm_start, seed=gen, **kw)
        margin = StabilityMargin(
            limits, sharp.value, sharp.smallest, _ratio(sharp.value, limits.sharpness_limit)
        )
        margin.sharpness_result = sharp
        if trace:
            est = trace_from_operator(op, "hutchinson", trace_matvecs, gen)
            margin.hessian_trace, margin.hessian_trace_stderr = est.value, est.stderr
            margin.trace_ratio = _ratio(est.value, limits.trace_limit)
        if limits.kind == "adam" and preconditioned:
            pre = PreconditionedOperator(op, adam_preconditioner(optimizer, objective.params))
            pres = run_eigensolver(
                pre, k=1, warm_start=preconditioned_warm_start, seed=gen, matvec=pre.matvec, **kw
            )
            margin.preconditioned_sharpness = pres.value
            margin.preconditioned_ratio = _ratio(pres.value, limits.preconditioned_sharpness_limit)
            margin.preconditioned_result = pres
        margin.matvecs = op.matvecs
    return margin


def preconditioned_sharpness(
    model: torch.nn.Module,
    loss_fn: Any,
    batch: Any,
    optimizer: torch.optim.Optimizer,
    k: int = 1,
    *,
    tol: float = 1e-3,
    max_matvecs: int | None = None,
    warm_start: SharpnessResult | None = None,
    bias_correction: bool = True,
    engine: str = "retained",
    dropout: bool = False,
    seed: int | torch.Generator | None = 0,
) -> SharpnessResult:
    """Top eigenvalues of P^-1 H for an Adam-family ``optimizer`` (P from its state).

    Compare with :func:`adam_limit` ``(2 + 2 beta1) / ((1 - beta1) lr)``.
    """
    names = optimizer_parameters(model, optimizer)
    objective = build_objective(model, loss_fn, batch, names, dropout)
    P = adam_preconditioner(optimizer, objective.params, bias_correction)
    with make_operator(objective, engine) as op:
        pre = PreconditionedOperator(op, P)
        return run_eigensolver(
            pre,
            k=k,
            which="LA",
            method="lanczos",
            tol=tol,
            max_matvecs=max_matvecs,
            warm_start=warm_start,
            seed=as_generator(0 if seed is None else seed),
            vectors=True,
            matvec=pre.matvec,
        )
