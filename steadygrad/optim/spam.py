"""SPAM (Huang et al., ICLR 2025, arXiv 2501.06842): Adam with periodic momentum resets,
spike-aware clipping against the second moment, and a cosine warm-up after each reset."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from steadygrad.core.checks import non_negative_int, positive_int
from steadygrad.optim import _foreach
from steadygrad.optim._base import (
    KernelOptimizer,
    check_betas,
    check_bool,
    check_lr,
    check_non_negative,
)


def spam_warmup_factor(step: int, reset_interval: int, warmup_steps: int) -> float:
    """Step-size factor ``s_k`` of the 1-based step ``step``: cosine from 0.01 up to 1 over
    ``warmup_steps`` steps after each reset (``k = step mod reset_interval``), 1 before the first.

    Example:
        >>> round(spam_warmup_factor(500, reset_interval=500, warmup_steps=150), 6)  # reset
        0.01
        >>> spam_warmup_factor(499, reset_interval=500, warmup_steps=150)
        1.0
    """
    if step < reset_interval:
        return 1.0
    k = step % reset_interval
    if k >= warmup_steps:
        return 1.0
    return 1.0 - 0.99 * (1.0 + math.cos(math.pi * k / (warmup_steps + 1))) / 2.0


def spam_kernel(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    hp: torch.Tensor,
    clip: bool,
    guard_zero_variance: bool,
) -> None:
    """hp = (b1, 1-b1, b2, 1-b2, threshold, step_size, eps, lr*wd)."""
    b1, omb1, b2, omb2, threshold, step_size, eps, lr_wd = hp.unbind(0)
    g = g.float()
    if clip:
        # Spike-aware clipping against the previous second moment; the sign is kept.
        limit = v * threshold
        spike = g * g > limit
        if guard_zero_variance:
            spike = spike & (v > 0)
        g = torch.where(spike, torch.sign(g) * torch.sqrt(limit), g)
    m_new = m * b1 + g * omb1
    v_new = v * b2 + g * g * omb2
    pf = p.float() - step_size * (m_new / (torch.sqrt(v_new) + eps))
    p.copy_(pf - lr_wd * pf)  # decoupled decay after the update, with the un-warmed lr
    m.copy_(m_new)
    v.copy_(v_new)


def spam_foreach(p, g, m, v, hp, clip: bool, guard_zero_variance: bool) -> None:
    """:func:`spam_kernel` on lists of tensors, in place (same order of operations)."""
    b1, omb1, b2, omb2, threshold, step_size, eps, lr_wd = hp
    if clip and not guard_zero_variance:
        # g^2 > threshold * v exactly where |g| > sqrt(threshold * v), and sign(g) times that
        # bound is the clamp to it: two multi-tensor ops instead of a where per tensor
        bound = torch._foreach_sqrt(torch._foreach_mul(v, threshold))
        g = torch._foreach_minimum(g, bound)
        torch._foreach_maximum_(g, torch._foreach_neg(bound))
    elif clip:
        limit = torch._foreach_mul(v, threshold)
        spike = [a > b for a, b in zip(torch._foreach_mul(g, g), limit, strict=True)]
        spike = [s & (x > 0) for s, x in zip(spike, v, strict=True)]
        capped = torch._foreach_sign(g)
        torch._foreach_mul_(capped, torch._foreach_sqrt(limit))
        g = [torch.where(s, c, x) for s, c, x in zip(spike, capped, g, strict=True)]
    _foreach.ema_(m, b1, g, omb1)
    _foreach.ema_sq_(v, b2, g, omb2)
    denom = torch._foreach_sqrt(v)
    torch._foreach_add_(denom, eps)
    update = torch._foreach_div(m, denom)
    torch._foreach_mul_(update, step_size)
    torch._foreach_sub_(p, update)
    torch._foreach_sub_(p, torch._foreach_mul(p, lr_wd))


spam_kernel.foreach = spam_foreach  # type: ignore[attr-defined]


class SPAM(KernelOptimizer):
    """SPAM as in the authors' reference code (dense momentum; sparse masks are not implemented).

    Per step ``T`` (1-based): if ``T % reset_interval == 0`` the moments are zeroed (the Adam
    step counter is *not*, as in the reference); unless within ``accumulation_steps`` of a reset,
    entries with ``g^2 > threshold * v`` become ``sign(g)*sqrt(threshold*v)``; then Adam with
    ``p -= lr * s_k * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)`` where ``s_k`` is
    :func:`spam_warmup_factor`; finally ``p -= lr*wd*p``.

    Quirk kept by default: a coordinate whose ``v`` is exactly 0 while clipping is active (no
    gradient since the last reset) is clipped to 0 and stays frozen until the next reset.
    ``guard_zero_variance=True`` exempts such coordinates from clipping.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = SPAM(model.parameters(), lr=1e-3, fused=False)
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
        threshold: float = 5000.0,
        reset_interval: int = 500,
        warmup_steps: int = 150,
        accumulation_steps: int = 20,
        correct_bias: bool = True,
        guard_zero_variance: bool = False,
        fused: bool | None = None,
        foreach: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        defaults = dict(
            lr=check_lr(lr),
            betas=check_betas(betas, 2),
            eps=check_non_negative("eps", eps),
            weight_decay=check_non_negative("weight_decay", weight_decay),
            threshold=check_non_negative("threshold", threshold),
            reset_interval=positive_int("reset_interval", reset_interval),
            warmup_steps=non_negative_int("warmup_steps", warmup_steps),
            accumulation_steps=non_negative_int("accumulation_steps", accumulation_steps),
            correct_bias=check_bool("correct_bias", correct_bias),
            guard_zero_variance=check_bool("guard_zero_variance", guard_zero_variance),
        )
        super().__init__(params, defaults, fused=fused, foreach=foreach, state_bits=state_bits)
        for group in self.param_groups:
            group.setdefault("total_steps", 0)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.param_groups[-1].setdefault("total_steps", 0)

    def _step_group(self, group: dict[str, Any]) -> None:
        group["total_steps"] += 1
        T = group["total_steps"]
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        b1, b2 = group["betas"]
        interval, n_accu = group["reset_interval"], group["accumulation_steps"]
        reset = T % interval == 0
        clip = group["threshold"] != 0 and T >= n_accu and T % interval >= n_accu
        scale = spam_warmup_factor(T, interval, group["warmup_steps"])
        for p in self._params_with_grad(group):
            state = self._init_state(p)
            if reset:
                self._reset_states(p, self._state_names)
            state["step"] += 1
            t = state["step"]
            step_size = lr
            if group["correct_bias"]:
                step_size *= math.sqrt(1.0 - b2**t) / (1.0 - b1**t)
            hp = (b1, 1.0 - b1, b2, 1.0 - b2, group["threshold"], step_size * scale, eps, lr * wd)
            self._run(spam_kernel, p, hp, clip, group["guard_zero_variance"])
