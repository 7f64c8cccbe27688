"""AdEMAMix (Pagliardini, Ablin, Grangier, ICLR 2025, arXiv 2409.03137): Adam plus a slow EMA of
the gradient, with optional warm-ups of its weight ``alpha`` and its decay ``beta3``."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.optim import _foreach
from steadygrad.optim._base import KernelOptimizer, check_betas, check_lr, check_non_negative


def alpha_schedule(step: int, alpha: float, warmup: int | None) -> float:
    """``min(step*alpha/warmup, alpha)``: linear warm-up of the slow EMA's weight from 0.

    Example:
        >>> alpha_schedule(50, alpha=8.0, warmup=100)
        4.0
    """
    if warmup is None:
        return alpha
    return min(step * alpha / warmup, alpha)


def beta3_schedule(step: int, beta1: float, beta3: float, warmup: int | None) -> float:
    """Warm-up of the slow EMA's decay: the *half-life* grows linearly from beta1's to beta3's.

    ``b3(t) = min(exp(ln b1 * ln b3 / ((1 - t/T) ln b3 + (t/T) ln b1)), b3)``; the authors' code
    writes the same map through half-lives (with a 1e-8 inside the logarithm).

    Example:
        >>> round(beta3_schedule(0, beta1=0.9, beta3=0.9999, warmup=100), 6)
        0.9
    """
    if warmup is None:
        return beta3
    if step >= warmup:
        return beta3  # the warm-up is over (past it, the map overflows for betas near 0)
    a = step / warmup
    if beta3 == 0.0:
        return 0.0
    if beta1 == 0.0:  # ln(b1) = -inf: the limit of the formula is b3^(1/a)
        return 0.0 if a == 0.0 else min(beta3 ** (1.0 / a), beta3)
    log1, log3 = math.log(beta1), math.log(beta3)
    return min(math.exp(log1 * log3 / ((1.0 - a) * log3 + a * log1)), beta3)


def ademamix_kernel(
    p: torch.Tensor,
    g: torch.Tensor,
    m1: torch.Tensor,
    m2: torch.Tensor,
    nu: torch.Tensor,
    hp: torch.Tensor,
) -> None:
    """hp = (lr, wd, b1, 1-b1, b2, 1-b2, b3, 1-b3, alpha, bc1, bc2_sqrt, eps)."""
    lr, wd, b1, omb1, b2, omb2, b3, omb3, alpha, bc1, bc2_sqrt, eps = hp.unbind(0)
    g = g.float()
    pf = p.float()
    m1_new = m1 * b1 + g * omb1
    m2_new = m2 * b3 + g * omb3
    nu_new = nu * b2 + g * g * omb2
    denom = torch.sqrt(nu_new) / bc2_sqrt + eps
    update = (m1_new / bc1 + alpha * m2_new) / denom + wd * pf
    p.copy_(pf - lr * update)
    m1.copy_(m1_new)
    m2.copy_(m2_new)
    nu.copy_(nu_new)


def ademamix_foreach(p, g, m1, m2, nu, hp) -> None:
    """:func:`ademamix_kernel` on lists of tensors, in place, in two passes of torch's fused Adam
    kernel: the first updates ``m1`` and ``nu`` and takes Adam's step, the second updates ``m2``
    and adds its term with ``nu`` held (the bias corrections moved into the scalars); equal up
    to rounding."""
    lr, wd, b1, omb1, b2, omb2, b3, omb3, alpha, bc1, bc2_sqrt, eps = hp
    # (m1/bc1 + alpha*m2) / (sqrt(nu)/bc2_sqrt + eps)
    #   = (m1 + alpha*bc1*m2) / (sqrt(nu) + eps*bc2_sqrt) * bc2_sqrt/bc1
    if wd != 0.0:  # p - lr*(u + wd*p) = p*(1 - lr*wd) - lr*u
        torch._foreach_mul_(p, 1.0 - lr * wd)
    step = lr * bc2_sqrt / bc1
    _foreach.adam_step_(p, g, m1, nu, step, b1, b2, eps * bc2_sqrt)
    _foreach.adam_step_(p, g, m2, nu, step * alpha * bc1, b3, None, eps * bc2_sqrt)


ademamix_kernel.foreach = ademamix_foreach  # type: ignore[attr-defined]


class AdEMAMix(KernelOptimizer):
    """AdEMAMix with the defaults of Apple's PyTorch reference (alpha 2; no warm-ups).

    ``m1 = b1*m1 + (1-b1)*g``; ``m2 = b3(t)*m2 + (1-b3(t))*g`` (not bias-corrected);
    ``nu = b2*nu + (1-b2)*g^2``;
    ``p -= lr * [(m1/(1-b1^t) + alpha(t)*m2) / (sqrt(nu)/sqrt(1-b2^t) + eps) + wd*p]``.
    ``alpha_warmup`` / ``beta3_warmup`` (steps) switch on :func:`alpha_schedule` and
    :func:`beta3_schedule` (the paper sets both to the total number of steps). With
    ``alpha=0`` this is exactly AdamW.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = AdEMAMix(model.parameters(), lr=1e-3, alpha=8.0, fused=False)
        >>> model(torch.ones(3, 4)).sum().backward()
        >>> opt.step()
    """

    _state_names = ("exp_avg_fast", "exp_avg_slow", "exp_avg_sq")
    _signed_states = frozenset({"exp_avg_fast", "exp_avg_slow"})
    _supports_8bit = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
        alpha: float = 2.0,
        alpha_warmup: int | None = None,
        beta3_warmup: int | None = None,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        fused: bool | None = None,
        foreach: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=check_lr(lr),
            betas=check_betas(betas, 3),
            alpha=finite_float("alpha", alpha, low=0.0),
            alpha_warmup=None
            if alpha_warmup is None
            else positive_int("alpha_warmup", alpha_warmup),
            beta3_warmup=None
            if beta3_warmup is None
            else positive_int("beta3_warmup", beta3_warmup),
            eps=check_non_negative("eps", eps),
            weight_decay=check_non_negative("weight_decay", weight_decay),
        )
        super().__init__(params, defaults, fused=fused, foreach=foreach, state_bits=state_bits)

    def _step_group(self, group: dict[str, Any]) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        b1, b2, b3 = group["betas"]
        for p in self._params_with_grad(group):
            state = self._init_state(p)
            state["step"] += 1
            t = state["step"]
            alpha = alpha_schedule(t, group["alpha"], group["alpha_warmup"])
            b3_t = beta3_schedule(t, b1, b3, group["beta3_warmup"])
            bc1, bc2_sqrt = 1.0 - b1**t, math.sqrt(1.0 - b2**t)
            hp = (lr, wd, b1, 1.0 - b1, b2, 1.0 - b2, b3_t, 1.0 - b3_t, alpha, bc1, bc2_sqrt, eps)
            self._run(ademamix_kernel, p, hp)
