"""Stabilizing losses: z-loss (output-logit drift), StableMax cross-entropy (softmax collapse)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from steadygrad.core.checks import finite_float


def z_loss(logits: torch.Tensor, coef: float = 1e-4) -> torch.Tensor:
    """The auxiliary z-loss ``coef * mean(logsumexp(logits) ** 2)`` (PaLM; Wortsman et al. 2023).

    It pulls the log-partition ``log Z`` of the output logits towards 0, which stops the output
    logits from drifting to large negative values late in training. The mean is taken over every
    row (token) like the main cross-entropy; the paper does not state the reduction.
    ``logits`` has the classes on the last dimension.

    Example:
        >>> logits = torch.tensor([[0.0, 0.0]])
        >>> float(z_loss(logits, coef=1.0))  # (log 2) ** 2
        0.4804530143737793
    """
    coef = finite_float("coef", coef, low=0.0)
    if not isinstance(logits, torch.Tensor) or logits.dim() < 1:
        raise ValueError("logits must be a tensor with the classes on its last dimension")
    return coef * torch.logsumexp(logits, dim=-1).pow(2).mean()


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """StableMax's elementwise map: ``x + 1`` for ``x >= 0`` and ``1 / (1 - x)`` for ``x < 0``.

    Each branch gets its input clamped to its own domain so that the branch ``torch.where``
    discards cannot produce an infinite gradient (0 * inf would be NaN).

    Example:
        >>> stablemax_s(torch.tensor([-1.0, 0.0, 1.0]))
        tensor([0.5000, 1.0000, 2.0000])
    """
    positive = x.clamp(min=0.0) + 1.0
    negative = 1.0 / (1.0 - x.clamp(max=0.0))
    return torch.where(x >= 0, positive, negative)


def log_stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log(s(x_i) / sum_j s(x_j))``: the log-probabilities of StableMax (Prieto et al. 2025).

    Example:
        >>> log_stablemax(torch.zeros(1, 4)).exp()
        tensor([[0.2500, 0.2500, 0.2500, 0.2500]])
    """
    s = stablemax_s(logits)
    return torch.log(s) - torch.log(s.sum(dim=dim, keepdim=True))


def stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """StableMax probabilities ``s(x_i) / sum_j s(x_j)``: softmax with linear growth for x >= 0."""
    s = stablemax_s(logits)
    return s / s.sum(dim=dim, keepdim=True)


def stablemax_cross_entropy(
    logits: torch.Tensor,
    targets: torch.Tensor,
    reduction: str = "mean",
    dtype: torch.dtype | None = torch.float64,
) -> torch.Tensor:
    """Cross-entropy with StableMax in place of softmax: ``-log StableMax(logits)[target]``.

    Replaces softmax cross-entropy to avoid Softmax Collapse (the float rounding that zeroes the
    correct class's gradient). Like the authors' code, the loss is computed in float64 by default
    (``dtype=None`` keeps the logits' dtype); the result is cast back to the logits' dtype.
    ``logits`` is ``(N, C)`` (or ``(..., C)``, flattened), ``targets`` the class indices.

    Example:
        >>> round(float(stablemax_cross_entropy(torch.zeros(2, 113), torch.tensor([0, 5]))), 4)
        4.7274
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:-1])} (logits without the class "
            f"dimension), got {tuple(targets.shape)}"
        )
    work = logits if dtype is None else logits.to(dtype)
    logp = log_stablemax(work.reshape(-1, work.shape[-1]))
    loss = F.nll_loss(logp, targets.reshape(-1), reduction=reduction)
    if reduction == "none":
        loss = loss.reshape(targets.shape)
    return loss.to(logits.dtype)
