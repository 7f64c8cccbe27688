"""diffGrad (Dubey et al., IEEE TNNLS 2019, arXiv 1909.11015): Adam damped by the change of the
gradient, ``xi = sigmoid(|g_prev - g|)``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from steadygrad.optim import _foreach
from steadygrad.optim._base import (
    KernelOptimizer,
    check_betas,
    check_bool,
    check_lr,
    check_non_negative,
)


def diffgrad_kernel(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    g_prev: torch.Tensor,
    hp: torch.Tensor,
) -> None:
    """hp = (decay, l2, b1, 1-b1, b2, 1-b2, eps, step_size)."""
    decay, l2, b1, omb1, b2, omb2, eps, step_size = hp.unbind(0)
    pf = p.float()
    g = g.float() + l2 * pf
    pf = pf * decay
    m_new = m * b1 + g * omb1
    v_new = v * b2 + g * g * omb2
    friction = torch.sigmoid(torch.abs(g_prev - g))
    p.copy_(pf - step_size * (m_new * friction / (torch.sqrt(v_new) + eps)))
    m.copy_(m_new)
    v.copy_(v_new)
    g_prev.copy_(g)  # a copy: the paper's code kept a reference, making xi == 0.5 forever


def diffgrad_foreach(p, g, m, v, g_prev, hp) -> None:
    """:func:`diffgrad_kernel` on lists of tensors, in place: Adam's step ``u`` by the fused
    Adam pass into zeroed scratch, then ``p -= sigmoid(|g_prev - g|) * u``; equal to the kernel
    up to rounding."""
    decay, l2, b1, omb1, b2, omb2, eps, step_size = hp
    g = _foreach.with_l2(p, g, l2)  # scratch slot 0
    step = _foreach.scratch(g, 1)
    torch._foreach_zero_(step)
    _foreach.adam_step_(step, g, m, v, step_size, b1, b2, eps)  # step = -u
    # the friction is made in g_prev's own memory (it is overwritten by g below anyway): no
    # new tensors, no scratch to fill
    torch._foreach_sub_(g_prev, g)
    torch._foreach_abs_(g_prev)
    torch._foreach_sigmoid_(g_prev)
    if decay != 1.0:  # multiplying by 1 changes nothing: skip the pass
        torch._foreach_mul_(p, decay)
    torch._foreach_addcmul_(p, step, g_prev)
    torch._foreach_copy_(g_prev, g)


diffgrad_kernel.foreach = diffgrad_foreach  # type: ignore[attr-defined]


class DiffGrad(KernelOptimizer):
    """diffGrad as in the authors' ``diffGrad_v2`` (the fixed version, which copies ``g_prev``).

    ``m, v`` as in Adam; ``xi = sigmoid(|g_prev - g|)`` (``g_prev`` starts at 0);
    ``p -= lr*sqrt(1-b2^t)/(1-b1^t) * xi*m / (sqrt(v) + eps)``. Weight decay is coupled L2 by
    default (``g += wd*p``, as the reference; the stored ``g_prev`` includes it); pass
    ``decoupled_weight_decay=True`` for ``p *= 1 - lr*wd``. Note: for small gradient changes
    ``xi ~ 0.5``, so diffGrad behaves like Adam at about half the learning rate.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = DiffGrad(model.parameters(), lr=1e-3, fused=False)
        >>> model(torch.ones(3, 4)).sum().backward()
        >>> opt.step()
    """

    _state_names = ("exp_avg", "exp_avg_sq", "previous_grad")
    _signed_states = frozenset({"exp_avg", "previous_grad"})
    _supports_8bit = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = False,
        fused: bool | None = None,
        foreach: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=check_lr(lr),
            betas=check_betas(betas, 2),
            eps=check_non_negative("eps", eps),
            weight_decay=check_non_negative("weight_decay", weight_decay),
            decoupled_weight_decay=check_bool("decoupled_weight_decay", decoupled_weight_decay),
        )
        super().__init__(params, defaults, fused=fused, foreach=foreach, state_bits=state_bits)

    def _step_group(self, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        b1, b2 = group["betas"]
        decay, l2 = (1.0 - lr * wd, 0.0) if group["decoupled_weight_decay"] else (1.0, wd)
        for p in self._params_with_grad(group):
            state = self._init_state(p)
            state["step"] += 1
            t = state["step"]
            step_size = lr * math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
            hp = (decay, l2, b1, 1.0 - b1, b2, 1.0 - b2, eps, step_size)
            self._run(diffgrad_kernel, p, hp)
