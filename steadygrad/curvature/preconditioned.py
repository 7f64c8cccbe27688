"""Preconditioned sharpness for Adam-family optimizers, from the optimizer's own state.

Adam's update is theta -= lr * m_t / P_t with the EMA first moment m_t and the diagonal
P_t = (1 - beta1^t) * (sqrt(v_t / (1 - beta2^t)) + eps) (bias corrections folded into P). With P
frozen, this is EMA momentum on the preconditioned problem, stable while
lambda_max(P^-1 H) < (2 + 2 beta1) / ((1 - beta1) lr) (Cohen et al. 2022, "Adaptive gradient
methods at the edge of stability": 38/lr at beta1 = 0.9). lambda_max(P^-1 H) is computed as the
top eigenvalue of the symmetric P^-1/2 H P^-1/2.
"""

from __future__ import annotations

from typing import Any

import torch

from steadygrad.curvature.hvp import CurvatureOperator


def adam_hyperparameters(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """lr, beta1, beta2, eps shared by all parameter groups (ValueError if they differ)."""
    keys = ("lr", "betas", "eps")
    seen = set()
    for group in optimizer.param_groups:
        if not all(k in group for k in keys):
            raise TypeError(
                f"{type(optimizer).__name__} is not Adam-like (needs lr, betas, eps in its groups)"
            )
        seen.add((float(group["lr"]), tuple(float(b) for b in group["betas"]), float(group["eps"])))
    if len(seen) != 1:
        raise ValueError("optimizer param groups differ in lr/betas/eps: one limit does not apply")
    lr, (beta1, beta2), eps = seen.pop()
    return {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps}


def adam_preconditioner(
    optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor], bias_correction: bool = True
) -> dict[str, torch.Tensor]:
    """The diagonal P of Adam's update for each probed parameter, from ``optimizer.state``."""
    hp = adam_hyperparameters(optimizer)
    amsgrad = {
        id(p): bool(g.get("amsgrad", False)) for g in optimizer.param_groups for p in g["params"]
    }
    out = {}
    for name, p in params.items():
        state = optimizer.state.get(p)
        if not state or "exp_avg_sq" not in state:
            raise ValueError(
                f"optimizer has no exp_avg_sq for parameter {name!r}: take an optimizer step first"
            )
        v = (
            state["max_exp_avg_sq"]
            if amsgrad.get(id(p)) and "max_exp_avg_sq" in state
            else state["exp_avg_sq"]
        )
        step = float(state["step"]) if "step" in state else 1.0
        if bias_correction:
            denom = (v / (1 - hp["beta2"] ** step)).sqrt() + hp["eps"]
            out[name] = (1 - hp["beta1"] ** step) * denom
        else:
            out[name] = v.sqrt() + hp["eps"]
    return out


def adam_limit(optimizer: torch.optim.Optimizer) -> float:
    """(2 + 2 beta1) / ((1 - beta1) lr): the adaptive edge-of-stability threshold."""
    hp = adam_hyperparameters(optimizer)
    return (2 + 2 * hp["beta1"]) / ((1 - hp["beta1"]) * hp["lr"])


class PreconditionedOperator:
    """v -> P^-1/2 H P^-1/2 v on top of a Hessian operator."""

    def __init__(self, op: CurvatureOperator, preconditioner: dict[str, torch.Tensor]) -> None:
        self.op = op
        self.objective = op.objective
        self.numel, self.dtype, self.device = op.numel, op.dtype, op.device
        d = [preconditioner[n].reshape(-1) for n in op.objective.names]
        self.scale = torch.cat(d).to(op.dtype).rsqrt()
        g = getattr(op, "gradient", None)
        # start vector for the preconditioned problem: the preconditioned gradient
        self.gradient = None if g is None else self.scale * g

    def matvec(self, v: Any) -> torch.Tensor:
        return self.scale * self.op.matvec(self.scale * v)
