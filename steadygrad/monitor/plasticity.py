"""Loss-of-plasticity signals (Dohare et al. 2024): dead units and the effective rank of features.

A unit is dead on a batch when its output is never positive (a ReLU that outputs 0 for every
example; for GELU/SiLU/LeakyReLU/ELU a positive output means a positive input, so the same test
applies). The effective rank (Roy & Vetterli 2007) of the ``examples x features`` matrix is
``exp(-sum_k p_k log p_k)`` with ``p_k = sigma_k / sum_j sigma_j``: 1 for rank-one features, the
number of features for a flat spectrum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from steadygrad.core.checks import positive_int
from steadygrad.core.metrics import DEAD_UNITS, EFFECTIVE_RANK
from steadygrad.core.signal import Signal, Value

if TYPE_CHECKING:
    from steadygrad.monitor.monitor import Monitor

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Mish)


@torch.no_grad()
def effective_rank(features: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli's effective rank of a 2-D ``examples x features`` matrix (0-d tensor).

    Example:
        >>> round(float(effective_rank(torch.eye(4))), 4)
        4.0
    """
    if features.dim() != 2:
        raise ValueError(f"features must be 2-D (examples, features), got {features.dim()}-D")
    sigma = torch.linalg.svdvals(features.float())
    total = sigma.sum()
    if total <= 0:
        return torch.zeros((), device=features.device)
    p = sigma / total
    entropy = -(p * torch.log(p.clamp(min=torch.finfo(p.dtype).tiny))).sum()  # 0 log 0 := 0
    return torch.exp(entropy)


class PlasticitySignal(Signal):
    """``dead_units/<module>`` and ``effective_rank/<module>`` for activation modules.

    ``modules`` names the modules whose outputs are the features (default: every ReLU, ReLU6,
    GELU, SiLU, LeakyReLU, ELU and Mish module). Units are the last dimension of the output;
    a unit is dead when it is never positive on any row of any forward call of the due step.
    The effective rank uses the first call's first ``max_rows`` rows (an SVD: keep a cadence).

    Example:
        >>> signal = PlasticitySignal(every=100)
    """

    metrics = (DEAD_UNITS, EFFECTIVE_RANK)

    def __init__(
        self, every: int = 100, modules: Sequence[str] | None = None, max_rows: int = 1024
    ) -> None:
        super().__init__(every)
        if isinstance(modules, str):
            raise TypeError("modules must be a sequence of module names, not a single string")
        self.modules = None if modules is None else list(modules)
        self.max_rows = positive_int("max_rows", max_rows)
        self._targets: dict[str, nn.Module] = {}
        self._handles: list = []
        self._alive: dict[str, torch.Tensor] = {}
        self._rank: dict[str, torch.Tensor] = {}
        self._relus_counted_elsewhere = False

    def leave_relus_to_the_default(self) -> None:
        """Count no dead units at ``nn.ReLU`` modules: the Monitor's default dead-unit signal
        counts them at every ReLU call (functional ones too) and names the layer that fed them.
        Effective ranks, and dead units at other activations, stay here."""
        self._relus_counted_elsewhere = True

    def attach(self, monitor: Monitor) -> None:
        super().attach(monitor)
        named = dict(monitor.model.named_modules())
        if self.modules is None:
            self._targets = {n: m for n, m in named.items() if isinstance(m, ACTIVATIONS)}
        else:
            missing = sorted(set(self.modules) - set(named))
            if missing:
                raise ValueError(f"modules not found in the model: {missing}")
            self._targets = {n: named[n] for n in self.modules}

    def begin(self, step: int) -> None:
        self._remove()
        self._alive, self._rank = {}, {}
        for name, mod in self._targets.items():
            hook = torch.compiler.disable(self._hook_for(name))  # see monitor.intercept
            self._handles.append(mod.register_forward_hook(hook))

    def _hook_for(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: object, output: object) -> None:
            if not isinstance(output, torch.Tensor) or output.dim() < 1:
                return
            with torch.no_grad():
                feats = output.detach().reshape(-1, output.shape[-1])
                alive = (feats > 0).any(dim=0)
                previous = self._alive.get(name)
                self._alive[name] = alive if previous is None else previous | alive
                if name not in self._rank:
                    try:
                        self._rank[name] = effective_rank(feats[: self.max_rows])
                    except RuntimeError:  # non-finite features: no rank, and never an error
                        self._rank[name] = torch.full((), math.nan)  # in the user's forward

        return hook

    def collect(self, step: int) -> Mapping[str, Value]:
        self._remove()
        values: dict[str, Value] = {}
        for name, alive in self._alive.items():
            if not (self._relus_counted_elsewhere and isinstance(self._targets[name], nn.ReLU)):
                values[DEAD_UNITS.key(name)] = 1.0 - alive.float().mean()
            values[EFFECTIVE_RANK.key(name)] = self._rank[name]
        self._alive, self._rank = {}, {}
        return values

    def end(self, step: int) -> None:
        self._remove()

    def detach(self) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
