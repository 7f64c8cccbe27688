"""Lion (Chen et al., 2023, arXiv 2302.06675): the sign of an interpolated momentum."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from steadygrad.optim._base import KernelOptimizer, check_betas, check_lr, check_non_negative


def lion_kernel(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, hp: torch.Tensor) -> None:
    """hp = (lr, 1 - lr*wd, beta1, 1 - beta1, beta2, 1 - beta2)."""
    lr, decay, b1, one_minus_b1, b2, one_minus_b2 = hp.unbind(0)
    g = g.float()
    direction = torch.sign(m * b1 + g * one_minus_b1)
    p.copy_(p.float() * decay - lr * direction)
    m.copy_(m * b2 + g * one_minus_b2)


def lion_foreach(p, g, m, hp, *flags) -> None:
    """:func:`lion_kernel` on lists of tensors, in place, in five passes: the interpolations
    ``m*b + g*(1-b)`` as ``lerp`` (equal up to rounding)."""
    lr, decay, b1, one_minus_b1, b2, one_minus_b2 = hp
    direction = torch._foreach_lerp(m, g, one_minus_b1)
    torch._foreach_sign_(direction)
    if decay != 1.0:  # multiplying by 1 changes nothing: skip the pass
        torch._foreach_mul_(p, decay)
    torch._foreach_add_(p, direction, alpha=-lr)
    torch._foreach_lerp_(m, g, one_minus_b2)


lion_kernel.foreach = lion_foreach  # type: ignore[attr-defined]


class Lion(KernelOptimizer):
    """Lion: ``p <- p*(1 - lr*wd) - lr*sign(b1*m + (1-b1)*g)``, then ``m <- b2*m + (1-b2)*g``.

    One state tensor (half of Adam's). Weight decay is decoupled and scaled by ``lr`` (as in the
    paper, lion-pytorch's default and pytorch-optimizer). ``sign(0) = 0``.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = Lion(model.parameters(), lr=1e-4, weight_decay=1e-2, fused=False)
        >>> model(torch.ones(3, 4)).sum().backward()
        >>> opt.step()
    """

    _state_names = ("exp_avg",)

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        *,
        fused: bool | None = None,
        foreach: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=check_lr(lr),
            betas=check_betas(betas, 2),
            weight_decay=check_non_negative("weight_decay", weight_decay),
        )
        super().__init__(params, defaults, fused=fused, foreach=foreach)

    def _step_group(self, group: dict[str, Any]) -> None:
        lr, wd = group["lr"], group["weight_decay"]
        b1, b2 = group["betas"]
        for p in self._params_with_grad(group):
            state = self._init_state(p)
            state["step"] += 1
            hp = (lr, 1.0 - lr * wd, b1, 1.0 - b1, b2, 1.0 - b2)
            self._run(lion_kernel, p, hp)
