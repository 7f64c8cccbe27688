"""Hessian- and Gauss-Newton-vector products without forming the matrix.

Engines (``engine=``):

* ``"retained"`` (default): one forward and one gradient with ``create_graph=True``, then every
  product is a backward pass through that retained graph. Cheapest per product for a fixed batch.
* ``"func"``: ``torch.func`` forward-over-reverse (``jvp`` of ``grad`` through
  ``functional_call``); recomputes the forward each product but keeps no graph alive, and
  batches several vectors with ``vmap``.
* ``"double_backward"``: plain autograd, recomputing the gradient graph on every product; the
  fallback for models torch.func cannot trace.

All operators act on flat vectors of length ``objective.numel`` (parameters in ``named_parameters``
order) and count the products they perform in ``.matvecs``.

Example:
    >>> model = torch.nn.Linear(3, 1)
    >>> batch = (torch.randn(8, 3), torch.randn(8, 1))
    >>> loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
    >>> with hessian_operator(model, loss_fn, batch) as op:
    ...     hv = op.matvec(torch.ones(op.numel))
    >>> hv.shape, op.matvecs
    (torch.Size([4]), 1)
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import grad, jvp, vmap

from steadygrad.curvature.objective import Objective

ENGINES = ("retained", "func", "double_backward")


class CurvatureOperator:
    """Base: a symmetric linear map on flat parameter vectors, with a product counter."""

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self.numel = objective.numel
        self.dtype = objective.dtype
        self.device = objective.device
        self.matvecs = 0

    def __enter__(self) -> CurvatureOperator:
        self.objective.__enter__()
        try:
            self._setup()
        except BaseException:
            self.objective.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._teardown()
        self.objective.__exit__(*exc)

    def _setup(self) -> None:
        pass

    def _teardown(self) -> None:
        pass

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.matvecs += 1
        return self._matvec(v)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """Products with the rows of ``V`` (shape ``(m, n)``); ``m`` products are counted."""
        self.matvecs += V.shape[0]
        return self._matmat(V)

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._matvec(v) for v in V])


def _check_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError("loss_fn must return a scalar tensor")
    if not loss.requires_grad:
        raise ValueError("the loss does not depend on the probed parameters")
    if not bool(torch.isfinite(loss.detach())):
        raise ValueError(f"the loss is not finite ({float(loss.detach())})")
    return loss.reshape(())


def _checked_gradient(objective: Objective) -> torch.Tensor:
    """One plain gradient (no graph kept): validates the loss and seeds Lanczos' start vector."""
    leaves = objective.leaves()
    with torch.enable_grad():
        loss = _check_loss(objective.fn(leaves))
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return objective.flatten(grads)


class RetainedGraphHessian(CurvatureOperator):
    """H @ v by a backward pass through one retained gradient graph."""

    def __init__(self, objective: Objective, batched: bool = True) -> None:
        super().__init__(objective)
        self.batched = batched

    def _setup(self) -> None:
        self._leaves = self.objective.leaves()
        leaves = list(self._leaves.values())
        with torch.enable_grad():
            loss = _check_loss(self.objective.fn(self._leaves))
            grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        self.loss = loss.detach()
        self.gradient = self.objective.flatten([None if g is None else g.detach() for g in grads])
        # A gradient that does not depend on the parameters contributes zero rows.
        keep = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        if not keep:
            raise ValueError("the loss is linear in the probed parameters (the Hessian is zero)")
        self._outputs = [grads[i] for i in keep]
        self._keep = keep
        self._inputs = leaves

    def _teardown(self) -> None:
        self._outputs = self._inputs = self._leaves = None

    def _product(self, v: torch.Tensor, batched: bool) -> torch.Tensor:
        parts = self.objective.unflatten(v)
        with torch.enable_grad():
            hv = torch.autograd.grad(
                self._outputs,
                self._inputs,
                grad_outputs=[parts[i] for i in self._keep],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=batched,
            )
        lead = v.shape[:-1]
        return torch.cat(
            [
                torch.zeros(*lead, n, dtype=self.dtype, device=self.device)
                if h is None
                else h.reshape(*lead, n)
                for h, n in zip(hv, self.objective.sizes, strict=True)
            ],
            dim=-1,
        )

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._product(v, False)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        if self.batched and V.shape[0] > 1:
            try:
                return self._product(V, True)
            except RuntimeError:
                self.batched = False  # some op has no batching rule: loop instead
        return super()._matmat(V)

    def block_matvec(self, block: list[int], v: torch.Tensor) -> torch.Tensor:
        """H_bb @ v for the diagonal block of the parameters with indices ``block``.

        ``v`` is the flat vector of that block only; the same retained graph serves every block.
        """
        self.matvecs += 1
        sizes = [self.objective.sizes[i] for i in block]
        parts = torch.split(v, sizes)
        outputs, grad_outputs = [], []
        for part, i in zip(parts, block, strict=True):
            if i in self._keep:  # gradients of this block w.r.t. this block only
                outputs.append(self._outputs[self._keep.index(i)])
                grad_outputs.append(part.reshape(self.objective.shapes[i]))
        if not outputs:
            return torch.zeros_like(v)
        inputs = [self._inputs[i] for i in block]
        with torch.enable_grad():
            hv = torch.autograd.grad(
                outputs, inputs, grad_outputs=grad_outputs, retain_graph=True, allow_unused=True
            )
        return torch.cat(
            [
                torch.zeros(n, dtype=self.dtype, device=self.device) if h is None else h.reshape(-1)
                for h, n in zip(hv, sizes, strict=True)
            ]
        )


class FuncHessian(CurvatureOperator):
    """H @ v by torch.func forward-over-reverse: ``jvp(grad(f), (p,), (v,))``."""

    def _setup(self) -> None:
        primals = self.objective.primals()
        self.gradient = _checked_gradient(self.objective)
        self._primals = primals
        gradient = grad(self.objective.fn)

        def hvp(v: torch.Tensor) -> torch.Tensor:
            tangents = dict(zip(self.objective.names, self.objective.unflatten(v), strict=True))
            _, out = jvp(gradient, (self._primals,), (tangents,))
            return torch.cat([out[k].reshape(-1) for k in self.objective.names])

        self._hvp = hvp

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self._hvp(v)

    def _matmat(self, V: torch.Tensor) -> torch.Tensor:
        try:
            return vmap(self._hvp)(V)
        except RuntimeError:
            return super()._matmat(V)


class DoubleBackwardHessian(CurvatureOperator):
    """H @ v by autograd, rebuilding the gradient graph for every product."""

    def _setup(self) -> None:
        self.gradient = _checked_gradient(self.objective)

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        leaves = self.objective.leaves()
        inputs = list(leaves.values())
        with torch.enable_grad():
            loss = self.objective.fn(leaves)
            grads = torch.autograd.grad(loss, inputs, create_graph=True, allow_unused=True)
            pairs = [
                (g, p)
                for g, p in zip(grads, self.objective.unflatten(v), strict=True)
                if g is not None and g.requires_grad
            ]
            dot = sum((g * p).sum() for g, p in pairs)
            hv = torch.autograd.grad(dot, inputs, allow_unused=True)
        return self.objective.flatten(hv)


class GaussNewton(CurvatureOperator):
    """G @ v = J^T H_out J v, J the Jacobian of the model outputs, H_out the loss Hessian in them.

    Needs ``loss_fn`` to be an :class:`~steadygrad.curvature.objective.OutputLoss`. One forward
    pass is retained; ``J v`` is a double-backward product, ``J^T u`` a backward pass.
    """

    def _setup(self) -> None:
        if self.objective.forward_fn is None:
            raise TypeError("the GGN needs loss_fn to be an OutputLoss(forward_fn, output_loss_fn)")
        self._leaves = self.objective.leaves()
        self._inputs = list(self._leaves.values())
        with torch.enable_grad():
            out = self.objective.forward_fn(self._leaves)
            if not out.requires_grad:
                raise ValueError("the model outputs do not depend on the probed parameters")
            self._out = out
            self._dummy = torch.zeros_like(out, requires_grad=True)
            vjp = torch.autograd.grad(
                out, self._inputs, grad_outputs=self._dummy, create_graph=True, allow_unused=True
            )
            self._vjp = [g for g in vjp if g is not None]
            self._vjp_index = [i for i, g in enumerate(vjp) if g is not None]
            out_leaf = out.detach().requires_grad_(True)
            loss = _check_loss(self.objective.output_loss_fn(out_leaf))
            (g_out,) = torch.autograd.grad(loss, out_leaf, create_graph=True)
        self._out_leaf = out_leaf
        self._g_out = g_out

    def _teardown(self) -> None:
        self._out = self._dummy = self._vjp = self._g_out = self._out_leaf = None

    def _matvec(self, v: torch.Tensor) -> torch.Tensor:
        parts = self.objective.unflatten(v)
        with torch.enable_grad():
            (jv,) = torch.autograd.grad(
                self._vjp,
                self._dummy,
                grad_outputs=[parts[i] for i in self._vjp_index],
                retain_graph=True,
            )
            if self._g_out.requires_grad:
                (hjv,) = torch.autograd.grad(self._g_out, self._out_leaf, jv, retain_graph=True)
            else:  # loss linear in the outputs
                hjv = torch.zeros_like(jv)
            jt = torch.autograd.grad(
                self._out, self._inputs, hjv, retain_graph=True, allow_unused=True
            )
        return self.objective.flatten(jt)


def make_operator(
    objective: Objective, engine: str = "retained", curvature: str = "hessian"
) -> CurvatureOperator:
    """Build an operator on ``objective``; use it as a context manager."""
    if curvature not in ("hessian", "ggn"):
        raise ValueError(f"curvature must be 'hessian' or 'ggn', got {curvature!r}")
    if curvature == "ggn":
        return GaussNewton(objective)
    if engine == "retained":
        return RetainedGraphHessian(objective)
    if engine == "func":
        return FuncHessian(objective)
    if engine == "double_backward":
        return DoubleBackwardHessian(objective)
    raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")


def hessian_operator(
    model: Any,
    loss_fn: Any,
    batch: Any,
    *,
    params: Any = None,
    engine: str = "retained",
    curvature: str = "hessian",
    dropout: bool = False,
) -> CurvatureOperator:
    """An H @ v (or GGN @ v) operator for ``loss_fn(model, batch)``; use it with ``with``.

    The functional form is ``hessian_operator(f, params_dict, batch)`` with
    ``f(params_dict, batch)`` returning the scalar loss.
    """
    return make_operator(build_objective(model, loss_fn, batch, params, dropout), engine, curvature)


def build_objective(
    model: Any, loss_fn: Any, batch: Any, params: Any = None, dropout: bool = False
) -> Objective:
    """Module form ``(model, loss_fn, batch)`` or functional form ``(f, params_dict, batch)``."""
    if isinstance(model, torch.nn.Module):
        return Objective.from_module(model, loss_fn, batch, params, dropout)
    if callable(model) and hasattr(loss_fn, "keys"):
        return Objective.from_function(model, loss_fn, batch, params)
    raise TypeError(
        "expected (model: nn.Module, loss_fn(model, batch), batch) or "
        f"(f(params, batch), params: dict, batch); got model of type {type(model).__name__}"
    )


def rademacher(shape: tuple[int, ...], like: CurvatureOperator, generator: torch.Generator):
    """Random +-1 entries in the operator's dtype and device."""
    bits = torch.randint(0, 2, shape, generator=generator, device="cpu")
    return (bits * 2 - 1).to(dtype=like.dtype, device=like.device)


def as_generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen
