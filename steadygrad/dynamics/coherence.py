"""Gradient coherence (Chatterjee 2020; Chatterjee and Zielinski 2022): do the examples agree?

For per-example gradients g_1..g_m of a sample, the m-coherence is

    ||sum_i g_i||^2 / sum_i ||g_i||^2  in [0, m],

the sample coherence alpha_m = ||E g||^2 / E||g||^2 over its orthogonal limit 1/m: about how many
examples of the sample a small step along one example's gradient also helps. 1 means the
gradients are mutually orthogonal, m that they are identical. Real labels give high coherence
while the loss falls; random labels stay near 1, and coherence falls as a network starts to
memorise. The per-layer version uses each module's own parameters (the whole-network value is an
average of the layers' values weighted by their share of sum_i ||g_i||^2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steadygrad.core.checks import positive_int
from steadygrad.core.metric import Metric
from steadygrad.dynamics._probe import DynamicsProbe
from steadygrad.dynamics.per_example import per_example_gradients

GRADIENT_COHERENCE = Metric(
    "gradient_coherence",
    "m-coherence ||sum g_i||^2 / sum ||g_i||^2 of per-example gradients (1 = orthogonal, "
    "m = identical; bare name: whole network, per module: its own parameters)",
    per="module",
    total=True,
    scale="log",
    panel="gradient_coherence",
)
COHERENCE_EXAMPLES = Metric(
    "coherence_examples",
    "examples m in the coherence sample (the m-coherence's maximum)",
    unit="count",
    panel="gradient_coherence",
)


@dataclass
class Coherence:
    """``value`` is the m-coherence (1 orthogonal .. ``examples`` identical); ``alpha`` =
    value / examples is the sample coherence in [0, 1]; ``per_module`` holds each module's."""

    value: float
    examples: int
    per_module: dict[str, float] = field(default_factory=dict)

    @property
    def alpha(self) -> float:
        return self.value / self.examples


def coherence_from_gradients(grads: Mapping[str, torch.Tensor], examples: int) -> Coherence:
    """Coherence of per-example gradients ``{name: (examples, *shape)}``, with per-module values."""
    # Reductions run in the gradients' own dtype (pairwise summation); only the per-parameter
    # scalars are accumulated in float64, so no float64 copy of the (examples x n) block is made.
    sum_sq = {k: float(g.sum(0).double().pow(2).sum()) for k, g in grads.items()}
    squares = {k: float(g.pow(2).sum().double()) for k, g in grads.items()}
    modules: dict[str, list[str]] = {}
    for name in grads:
        modules.setdefault(name.rpartition(".")[0] or name, []).append(name)

    def ratio(names: list[str]) -> float:
        denom = sum(squares[n] for n in names)
        return sum(sum_sq[n] for n in names) / denom if denom > 0 else 0.0

    per_module = {mod: ratio(names) for mod, names in modules.items()}
    return Coherence(ratio(list(grads)), examples, per_module)


def gradient_coherence(
    model: nn.Module,
    loss_fn: Any,
    batch: Any,
    *,
    params: Any = None,
    chunk_size: int | None = None,
) -> Coherence:
    """The m-coherence of the per-example gradients of ``loss_fn`` over ``batch``.

    One per-example gradient pass (``torch.func.vmap`` of ``grad``) over the batch.

    Example:
        >>> model = torch.nn.Linear(4, 1)
        >>> batch = (torch.randn(16, 4), torch.randn(16, 1))
        >>> loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> c = gradient_coherence(model, loss_fn, batch)
        >>> 0 <= c.value <= 16, sorted(c.per_module)
        (True, ['bias', 'weight'])
    """
    g = per_example_gradients(model, loss_fn, batch, params=params, chunk_size=chunk_size)
    return coherence_from_gradients(g.grads, g.examples)


class GradientCoherenceProbe(DynamicsProbe):
    """Gradient coherence on a held batch every ``every`` steps, in a Monitor.

    Records ``gradient_coherence`` (whole network), ``gradient_coherence/<module>`` (with
    ``per_layer=True``) and ``coherence_examples``.

    Example:
        >>> loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1])
        >>> probe = GradientCoherenceProbe(loss_fn, (torch.randn(64, 8), torch.randint(0, 3, (64,))))
        >>> # Monitor(model, optimizer, run_dir, signals=[probe])
    """

    metrics = (GRADIENT_COHERENCE, COHERENCE_EXAMPLES)

    def __init__(
        self,
        loss_fn: Any,
        batch: Any,
        every: int = 50,
        *,
        per_layer: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__(loss_fn, batch, every)
        self.per_layer = bool(per_layer)
        self.chunk_size = None if chunk_size is None else positive_int("chunk_size", chunk_size)

    def measure_model(self, model: nn.Module, batch: Any) -> dict[str, float]:
        c = gradient_coherence(model, self.loss_fn, batch, chunk_size=self.chunk_size)
        values = {GRADIENT_COHERENCE.key(): c.value, COHERENCE_EXAMPLES.key(): float(c.examples)}
        if self.per_layer:
            values.update({GRADIENT_COHERENCE.key(k): v for k, v in c.per_module.items()})
        return values
