"""Independent (learning-rate-decoupled) weight decay, Wortsman et al. 2023 §3.2.2.

PyTorch's AdamW shrinks weights by ``lr * weight_decay`` per step, so changing the learning rate
also changes the regularisation. Independent decay shrinks by ``s_t * weight_decay`` where ``s_t``
is only the schedule factor (current lr / peak lr): the decay no longer moves with the peak LR.
Defaults from the paper: independent ``1e-4`` (vs coupled ``0.1``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from steadygrad.core.checks import finite_float, non_negative_int
from steadygrad.core.checks import optimizer as check_optimizer
from steadygrad.nn._wrapped import WrappedOptimizer


@torch.no_grad()
def decay_weights_(
    params: Iterable[torch.Tensor], weight_decay: float, schedule: float = 1.0
) -> None:
    """Shrink every tensor in place: ``p *= 1 - schedule * weight_decay`` (no learning rate).

    Example:
        >>> w = torch.ones(3)
        >>> decay_weights_([w], weight_decay=0.1)
        >>> w
        tensor([0.9000, 0.9000, 0.9000])
    """
    weight_decay = finite_float("weight_decay", weight_decay, low=0.0)
    schedule = finite_float("schedule", schedule, low=0.0)
    factor = 1.0 - schedule * weight_decay
    for p in params:
        p.mul_(factor)


class IndependentWeightDecay(WrappedOptimizer):
    """Wrap an optimizer (built with ``weight_decay=0``) and add lr-independent decay.

    Before each wrapped step every parameter is shrunk by ``s_t * weight_decay`` with
    ``s_t = group lr / peak lr``, the peak lr being each group's lr when the wrapper is built
    (pass ``peak_lr`` to override), so warm-up and decay schedules scale the decay as in the
    paper while the peak LR does not. Parameters with fewer than ``min_dim`` dimensions (biases,
    norm scales) are not decayed, the common practice.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = IndependentWeightDecay(torch.optim.Adam(model.parameters(), lr=1e-3), 1e-4)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        weight_decay: float = 1e-4,
        peak_lr: float | None = None,
        min_dim: int = 2,
    ) -> None:
        check_optimizer("optimizer", optimizer)
        self.weight_decay = finite_float("weight_decay", weight_decay, low=0.0, high=1.0)
        for group in optimizer.param_groups:
            if group.get("weight_decay", 0.0):
                raise ValueError(
                    "the wrapped optimizer must have weight_decay=0: its own decay is coupled to "
                    "the learning rate, which this wrapper replaces"
                )
        self.peak_lrs = [
            finite_float(
                "peak_lr",
                peak_lr if peak_lr is not None else float(g["lr"]),
                low=0.0,
                low_open=True,
            )
            for g in optimizer.param_groups
        ]
        self.min_dim = non_negative_int("min_dim", min_dim)
        super().__init__(optimizer)

    def before_step(self) -> None:
        for group, peak in zip(self.param_groups, self.peak_lrs, strict=True):
            params = [p for p in group["params"] if p.dim() >= self.min_dim]
            decay_weights_(params, self.weight_decay, schedule=float(group["lr"]) / peak)
