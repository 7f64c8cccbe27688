"""AdaBelief (Zhuang et al., NeurIPS 2020, arXiv 2010.07468): Adam whose second moment tracks
the *belief* ``(g - m)^2``, with the RAdam rectification of the reference code."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from steadygrad.core.checks import finite_float
from steadygrad.optim import _foreach
from steadygrad.optim._base import (
    KernelOptimizer,
    check_betas,
    check_bool,
    check_lr,
    check_non_negative,
)


def _adabelief_update(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    s: torch.Tensor,
    s_max: torch.Tensor | None,
    hp: torch.Tensor,
) -> None:
    decay, l2, b1, omb1, b2, omb2, eps, adaptive_size, bc2_sqrt, sgd_size = hp.unbind(0)
    pf = p.float()
    g = g.float() + l2 * pf
    pf = pf * decay
    m_new = m * b1 + g * omb1
    residual = g - m_new
    # eps is added into the state itself every step (reference behaviour).
    s_new = s * b2 + residual * residual * omb2 + eps
    if s_max is not None:
        s_new_max = torch.maximum(s_max, s_new)
        s_max.copy_(s_new_max)
        denom = torch.sqrt(s_new_max) / bc2_sqrt + eps
    else:
        denom = torch.sqrt(s_new) / bc2_sqrt + eps
    p.copy_(pf - adaptive_size * (m_new / denom) - sgd_size * m_new)
    m.copy_(m_new)
    s.copy_(s_new)


def adabelief_kernel(
    p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, s: torch.Tensor, hp: torch.Tensor
) -> None:
    """hp = (decay, l2, b1, 1-b1, b2, 1-b2, eps, adaptive_size, bc2_sqrt, sgd_size)."""
    _adabelief_update(p, g, m, s, None, hp)


def adabelief_amsgrad_kernel(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    s: torch.Tensor,
    s_max: torch.Tensor,
    hp: torch.Tensor,
) -> None:
    """As :func:`adabelief_kernel`, normalising by the running maximum of ``s``."""
    _adabelief_update(p, g, m, s, s_max, hp)


def _adabelief_foreach(p, g, m, s, s_max, hp) -> None:
    """The kernel on lists of tensors, in place, with fused ops (``lerp``, ``addcmul``,
    ``addcdiv``; ``sqrt(s)/c + eps`` as ``(sqrt(s) + eps*c)/c``): equal up to rounding."""
    decay, l2, b1, omb1, b2, omb2, eps, adaptive_size, bc2_sqrt, sgd_size = hp
    g = _foreach.with_l2(p, g, l2)
    torch._foreach_lerp_(m, g, omb1)
    residual = torch._foreach_sub(g, m)
    torch._foreach_mul_(s, b2)
    torch._foreach_addcmul_(s, residual, residual, value=omb2)
    torch._foreach_add_(s, eps)
    if s_max is not None:
        torch._foreach_maximum_(s_max, s)
    if decay != 1.0:  # multiplying by 1 changes nothing: skip the pass
        torch._foreach_mul_(p, decay)
    if adaptive_size != 0.0:
        denom = torch._foreach_sqrt(s if s_max is None else s_max)
        torch._foreach_add_(denom, eps * bc2_sqrt)
        torch._foreach_addcdiv_(p, m, denom, value=-adaptive_size * bc2_sqrt)
    if sgd_size != 0.0:
        torch._foreach_add_(p, m, alpha=-sgd_size)


def adabelief_foreach(p, g, m, s, hp) -> None:
    """:func:`adabelief_kernel` on lists of tensors, in place (same order of operations)."""
    _adabelief_foreach(p, g, m, s, None, hp)


def adabelief_amsgrad_foreach(p, g, m, s, s_max, hp) -> None:
    """:func:`adabelief_amsgrad_kernel` on lists of tensors, in place."""
    _adabelief_foreach(p, g, m, s, s_max, hp)


adabelief_kernel.foreach = adabelief_foreach  # type: ignore[attr-defined]
adabelief_amsgrad_kernel.foreach = adabelief_amsgrad_foreach  # type: ignore[attr-defined]


class AdaBelief(KernelOptimizer):
    """AdaBelief with the defaults of the authors' package (adabelief-pytorch 0.2).

    ``m = b1*m + (1-b1)*g``; ``s = b2*s + (1-b2)*(g-m)^2 + eps``. Non-rectified:
    ``p -= lr/(1-b1^t) * m / (sqrt(s)/sqrt(1-b2^t) + eps)``. Rectified (default, RAdam-style):
    while ``rho_t < 5`` the step is SGD with momentum (``degenerated_to_sgd``) or nothing, then
    ``p -= lr*r_t * m / (sqrt(s) + eps)``. Note ``eps`` is used inside the square root (through the
    state) and outside: the Adam-equivalent of ``eps=1e-16`` is about ``1e-8``.

    Weight decay: decoupled ``p *= 1 - lr*wd`` (default), ``p *= 1 - wd`` with ``fixed_decay``, or
    coupled L2 (``g += wd*p``) with ``decoupled_weight_decay=False``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = AdaBelief(model.parameters(), lr=1e-3, fused=False)
        >>> model(torch.ones(3, 4)).sum().backward()
        >>> opt.step()
    """

    _state_names = ("exp_avg", "exp_avg_var")
    _moment_names = ("exp_avg", "exp_avg_var", "max_exp_avg_var")
    _signed_states = frozenset({"exp_avg"})
    _supports_8bit = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-16,
        weight_decay: float = 0.0,
        *,
        decoupled_weight_decay: bool = True,
        fixed_decay: bool = False,
        rectify: bool = True,
        degenerated_to_sgd: bool = True,
        amsgrad: bool = False,
        fused: bool | None = None,
        foreach: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=check_lr(lr),
            betas=check_betas(betas, 2),
            eps=finite_float("eps", eps, low=0.0, low_open=True),
            weight_decay=check_non_negative("weight_decay", weight_decay),
            decoupled_weight_decay=check_bool("decoupled_weight_decay", decoupled_weight_decay),
            fixed_decay=check_bool("fixed_decay", fixed_decay),
            rectify=check_bool("rectify", rectify),
            degenerated_to_sgd=check_bool("degenerated_to_sgd", degenerated_to_sgd),
            amsgrad=check_bool("amsgrad", amsgrad),
        )
        super().__init__(params, defaults, fused=fused, foreach=foreach, state_bits=state_bits)

    def _step_group(self, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        b1, b2 = group["betas"]
        if group["decoupled_weight_decay"]:
            decay, l2 = (1.0 - wd) if group["fixed_decay"] else (1.0 - lr * wd), 0.0
        else:
            decay, l2 = 1.0, wd
        amsgrad = group["amsgrad"]
        for p in self._params_with_grad(group):
            state = self._init_state(p)
            state["step"] += 1
            t = state["step"]
            bc1, bc2 = 1.0 - b1**t, 1.0 - b2**t
            adaptive, bc2_sqrt, sgd = lr / bc1, math.sqrt(bc2), 0.0
            if group["rectify"]:
                rho_inf = 2.0 / (1.0 - b2) - 1.0
                rho_t = rho_inf - 2.0 * t * b2**t / bc2
                bc2_sqrt = 1.0
                if rho_t >= 5.0:
                    r = math.sqrt(
                        bc2
                        * (rho_t - 4)
                        / (rho_inf - 4)
                        * (rho_t - 2)
                        / rho_t
                        * rho_inf
                        / (rho_inf - 2)
                    )
                    adaptive = r / bc1 * lr
                elif group["degenerated_to_sgd"]:
                    adaptive, sgd = 0.0, 1.0 / bc1 * lr
                else:
                    adaptive = 0.0
            hp = (decay, l2, b1, 1.0 - b1, b2, 1.0 - b2, eps, adaptive, bc2_sqrt, sgd)
            if amsgrad:
                if "max_exp_avg_var" not in state:
                    self._reset_states(p, ["max_exp_avg_var"])
                self._run(adabelief_amsgrad_kernel, p, hp, names=self._moment_names)
            else:
                self._run(adabelief_kernel, p, hp)
