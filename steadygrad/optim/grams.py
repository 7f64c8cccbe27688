"""Grams (Cao, Li, Song, 2024, arXiv 2412.17107): Adam's step size, the current gradient's sign."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from steadygrad.optim import _foreach
from steadygrad.optim._base import KernelOptimizer, check_betas, check_lr, check_non_negative


def grams_kernel(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor, hp: torch.Tensor
) -> None:
    """hp = (decay, b1, 1-b1, b2, 1-b2, eps, step_size)."""
    decay, b1, omb1, b2, omb2, eps, step_size = hp.unbind(0)
    g = g.float()
    pf = p.float() * decay
    m_new = m * b1 + g * omb1
    v_new = v * b2 + g * g * omb2
    update = torch.sign(g) * torch.abs(m_new) / (torch.sqrt(v_new) + eps)
    p.copy_(pf - step_size * update)
    m.copy_(m_new)
    v.copy_(v_new)


def grams_foreach(p, g, m, v, hp) -> None:
    """:func:`grams_kernel` on lists of tensors, in place: Adam's step ``u`` computed by the
    fused Adam pass into zeroed scratch, then ``p -= |u| * sign(g)``; equal up to rounding."""
    decay, b1, omb1, b2, omb2, eps, step_size = hp
    step = _foreach.scratch(g, 0)
    torch._foreach_zero_(step)
    _foreach.adam_step_(step, g, m, v, step_size, b1, b2, eps)  # step = -u
    torch._foreach_abs_(step)
    sign = torch._foreach_sign(g)  # one pass: beats a copy into scratch and sign_ in place
    if decay != 1.0:  # multiplying by 1 changes nothing: skip the pass
        torch._foreach_mul_(p, decay)
    torch._foreach_addcmul_(p, step, sign, value=-1.0)


grams_kernel.foreach = grams_foreach  # type: ignore[attr-defined]


class Grams(KernelOptimizer):
    """Grams as in the authors' package (grams-pytorch 0.0.2), without writing into ``p.grad``.

    Adam moments; ``p -= lr*sqrt(1-b2^t)/(1-b1^t) * sign(g)*|m| / (sqrt(v) + eps)`` ("efficient"
    eps placement, so eps is not bias-corrected); decoupled weight decay ``p -= lr*wd*p`` before
    the update. A coordinate whose current gradient is 0 does not move.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = Grams(model.parameters(), lr=1e-3, fused=False)
        >>> model(torch.ones(3, 4)).sum().backward()
        >>> opt.step()
    """

    _state_names = ("exp_avg", "exp_avg_sq")
    _signed_states = frozenset({"exp_avg"})
    _supports_8bit = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        fused: bool | None = None,
        foreach: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=check_lr(lr),
            betas=check_betas(betas, 2),
            eps=check_non_negative("eps", eps),
            weight_decay=check_non_negative("weight_decay", weight_decay),
        )
        super().__init__(params, defaults, fused=fused, foreach=foreach, state_bits=state_bits)

    def _step_group(self, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        b1, b2 = group["betas"]
        for p in self._params_with_grad(group):
            state = self._init_state(p)
            state["step"] += 1
            t = state["step"]
            step_size = lr * math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
            hp = (1.0 - lr * wd, b1, 1.0 - b1, b2, 1.0 - b2, eps, step_size)
            self._run(grams_kernel, p, hp)
