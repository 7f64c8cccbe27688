"""Loss-landscape slices along filter-normalised random directions (Li, Xu, Taylor, Studer,
Goldstein 2018, "Visualizing the loss landscape of neural nets").

A random Gaussian direction d is rescaled filter by filter (each output unit's row of a weight
tensor) to the norm of the same filter of the weights, so a step of size 1 moves every filter by
its own size: slices of networks with different weight scales become comparable. Biases and
other one-dimensional parameters get no direction by default (the paper's choice for biases and
BatchNorm parameters). The 1-D slice is L(theta + a d), the 2-D slice L(theta + a d1 + b d2),
evaluated through ``functional_call`` without touching the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metric import Metric
from steadygrad.curvature.objective import (
    _LossModule,
    _probe_state,
    check_finite_batch,
    select_parameters,
)
from steadygrad.dynamics._probe import DynamicsProbe

LOSS_LANDSCAPE_RISE = Metric(
    "loss_landscape_rise",
    "mean rise of the loss at distance `radius` along filter-normalised random directions",
    panel="loss_landscape",
)


@dataclass
class LandscapeSlice:
    """``coordinates`` are the step sizes along each direction; ``losses`` has shape
    ``(steps,)`` for a 1-D slice and ``(steps, steps)`` for a 2-D one (row: first direction)."""

    coordinates: np.ndarray
    losses: np.ndarray
    center_loss: float
    directions: tuple[dict[str, torch.Tensor], ...]

    @property
    def dims(self) -> int:
        return self.losses.ndim


def filter_normalized_direction(
    params: dict[str, torch.Tensor],
    generator: torch.Generator | None = None,
    *,
    include_biases: bool = False,
) -> dict[str, torch.Tensor]:
    """A random direction with each filter scaled to the norm of the weights' filter.

    A filter is one slice along the first (output) dimension of a parameter of 2 or more
    dimensions. One-dimensional parameters get zeros unless ``include_biases`` (then they are
    scaled as a whole).

    Example:
        >>> w = {"fc.weight": torch.ones(2, 3), "fc.bias": torch.ones(2)}
        >>> d = filter_normalized_direction(w, torch.Generator().manual_seed(0))
        >>> d["fc.weight"].norm(dim=1).tolist(), d["fc.bias"].tolist()
        ([1.7320..., 1.7320...], [0.0, 0.0])
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    out = {}
    for name, p in params.items():
        p = p.detach()
        if p.dim() <= 1 and not include_biases:
            out[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p)
        if p.dim() <= 1:
            d = d * p.norm() / d.norm().clamp_min(1e-12)
        else:
            rows, prow = d.reshape(d.shape[0], -1), p.reshape(p.shape[0], -1)
            scale = prow.norm(dim=1) / rows.norm(dim=1).clamp_min(1e-12)
            d = (rows * scale[:, None]).reshape(p.shape)
        out[name] = d
    return out


def _loss_at(wrapper: nn.Module, batch: Any, params: dict[str, torch.Tensor]) -> float:
    loss = functional_call(wrapper, {"model." + k: v for k, v in params.items()}, (batch,))
    return float(loss.detach())


def loss_landscape(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    *,
    dims: int = 1,
    radius: float = 1.0,
    steps: int = 21,
    directions: tuple[dict[str, torch.Tensor], ...] | None = None,
    include_biases: bool = False,
    seed: int = 0,
) -> LandscapeSlice:
    """The loss on a 1-D line or 2-D grid through the weights, ``steps`` points per axis in
    ``[-radius, radius]`` along filter-normalised random directions (or ``directions`` given).

    Cost: ``steps`` (1-D) or ``steps**2`` (2-D) forward passes, no gradients.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> batch = (torch.randn(32, 4), torch.randn(32, 1))
        >>> loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> s = loss_landscape(model, loss_fn, batch, steps=5)
        >>> s.losses.shape, bool(s.losses[2] == s.center_loss)
        ((5,), True)
    """
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}")
    radius = finite_float("radius", radius, low=0.0, low_open=True)
    steps = positive_int("steps", steps)
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    check_finite_batch(batch)
    theta = {k: v.detach() for k, v in select_parameters(model, None).items()}
    if directions is None:
        gen = torch.Generator().manual_seed(int(seed))
        directions = tuple(
            filter_normalized_direction(theta, gen, include_biases=include_biases)
            for _ in range(dims)
        )
    if len(directions) != dims:
        raise ValueError(f"directions must hold {dims} direction(s), got {len(directions)}")
    for d in directions:
        if set(d) != set(theta) or any(d[k].shape != theta[k].shape for k in theta):
            raise ValueError("each direction must have one tensor per parameter, of its shape")
    coords = np.linspace(-radius, radius, steps)
    if steps % 2 == 1:
        coords[steps // 2] = 0.0  # the centre exactly
    wrapper = _LossModule(model, loss_fn)
    with _probe_state(model, dropout=False), torch.no_grad():
        center = _loss_at(wrapper, batch, theta)
        if dims == 1:
            (d,) = directions
            losses = np.array(
                [_loss_at(wrapper, batch, {k: theta[k] + a * d[k] for k in theta}) for a in coords]
            )
        else:
            d1, d2 = directions
            losses = np.array(
                [
                    [
                        _loss_at(
                            wrapper, batch, {k: theta[k] + a * d1[k] + b * d2[k] for k in theta}
                        )
                        for b in coords
                    ]
                    for a in coords
                ]
            )
    return LandscapeSlice(coords, losses, center, tuple(directions))


def landscape_rise(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    *,
    radius: float = 0.5,
    directions: int = 4,
    seed: int = 0,
) -> float:
    """Mean of L(theta + r d) - L(theta) over ``directions`` filter-normalised directions and
    both signs of r: one number for how sharp the slices are at ``radius``."""
    directions = positive_int("directions", directions)
    rises = []
    for i in range(directions):
        s = loss_landscape(model, loss_fn, batch, radius=radius, steps=3, seed=seed + i)
        rises.append(float(s.losses[[0, 2]].mean() - s.center_loss))
    return float(np.mean(rises))


def plot_loss_landscape(
    slices: dict[str, LandscapeSlice], path: str | Path, title: str | None = None
) -> Path:
    """Draw 1-D slices as curves on one axis, 2-D slices as contour panels; write ``path``.

    Needs matplotlib (``pip install 'steadygrad[plots]'``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not slices:
        raise ValueError("slices is empty: nothing to draw")
    one = {k: s for k, s in slices.items() if s.dims == 1}
    two = {k: s for k, s in slices.items() if s.dims == 2}
    panels = (1 if one else 0) + len(two)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.8), squeeze=False)
    axes = list(axes[0])
    if one:
        ax = axes.pop(0)
        for label, s in one.items():
            ax.plot(s.coordinates, s.losses, label=label)
        ax.set_xlabel("step along a filter-normalised direction")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    for (label, s), ax in zip(two.items(), axes, strict=True):
        levels = np.geomspace(max(s.losses.min(), 1e-6), s.losses.max(), 15)
        cs = ax.contour(s.coordinates, s.coordinates, s.losses.T, levels=levels)
        ax.clabel(cs, fontsize=6, fmt="%.2g")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("direction 1")
        ax.set_ylabel("direction 2")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


class LossLandscapeProbe(DynamicsProbe):
    """The mean loss rise at ``radius`` along filter-normalised directions, in a Monitor.

    Records ``loss_landscape_rise``: 2 x ``directions`` forward passes per probe. The directions
    are drawn afresh from ``seed`` each time (same seed: the same random pattern, rescaled to the
    current weights).

    Example:
        >>> loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
        >>> probe = LossLandscapeProbe(loss_fn, (torch.randn(64, 8), torch.randint(0, 3, (64,))))
        >>> # Monitor(model, optimizer, run_dir, signals=[probe])
    """

    metrics = (LOSS_LANDSCAPE_RISE,)

    def __init__(
        self,
        loss_fn: Any,
        batch: Any,
        every: int = 100,
        *,
        radius: float = 0.5,
        directions: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(loss_fn, batch, every)
        self.radius = finite_float("radius", radius, low=0.0, low_open=True)
        self.directions = positive_int("directions", directions)
        self.seed = int(seed)

    def measure_model(self, model: nn.Module, batch: Any) -> dict[str, float]:
        rise = landscape_rise(
            model,
            self.loss_fn,
            batch,
            radius=self.radius,
            directions=self.directions,
            seed=self.seed,
        )
        return {LOSS_LANDSCAPE_RISE.key(): rise}
