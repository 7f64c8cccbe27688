"""Small shared pieces for the tests: a tiny model and a training loop that records a run."""

from __future__ import annotations

import torch
from torch import nn

import steadygrad


def tiny_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)
    )


def regression_batch(seed: int = 0, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)


def train(model, optimizer, mon, steps, batch_fn=regression_batch, before_step=None):
    """A plain loop: forward, backward, optimizer.step(), mon.step(loss), zero_grad."""
    records = []
    for i in range(steps):
        x, y = batch_fn(i)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if before_step is not None:
            before_step(i)
        optimizer.step()
        records.append(mon.step(loss))
        optimizer.zero_grad(set_to_none=True)
    return records


def no_hooks_left(model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks or m._backward_hooks:
            return False
    for p in model.parameters():
        if getattr(p, "_post_accumulate_grad_hooks", None):
            return False
    return not (optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks)


__all__ = ["no_hooks_left", "regression_batch", "steadygrad", "tiny_mlp", "train"]
