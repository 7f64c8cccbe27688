"""The fixed problem the optimizer tests share (the reference's cross-check setup): one 8x6
float32 parameter, seeded gradients N(0.05, 0.1^2), optionally a planted spike."""

from __future__ import annotations

from collections.abc import Callable

import torch


def gradients(steps: int, seed: int = 0, spike_at: int | None = None, spike: float = 1e3):
    gen = torch.Generator().manual_seed(seed)
    for i in range(1, steps + 1):
        g = torch.randn(8, 6, generator=gen) * 0.1 + 0.05
        if spike_at == i:
            g[0, 0] *= spike
        yield g


def initial_param() -> torch.Tensor:
    return torch.randn(8, 6, generator=torch.Generator().manual_seed(123))


def trajectory(
    make: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer],
    steps: int,
    every: int = 0,
    **grad_kw,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``steps`` steps; return the final parameter and snapshots every ``every`` steps."""
    p = torch.nn.Parameter(initial_param())
    opt = make([p])
    snaps = []
    for i, g in enumerate(gradients(steps, **grad_kw), start=1):
        p.grad = g.clone()
        opt.step()
        if every and i % every == 0:
            snaps.append(p.detach().clone())
    return p.detach().clone(), snaps
