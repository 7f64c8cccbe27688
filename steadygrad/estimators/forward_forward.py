"""The Forward-Forward algorithm (Hinton 2022) for MLPs.

Each layer is trained on its own, with no backward pass between layers: its *goodness* (the mean
square of its ReLU activities) should be above a threshold ``theta`` for positive data (an
input with its true label embedded) and below it for negative data (the same input with a wrong
label). Layer ``l``'s loss is ``softplus(theta - g_pos) + softplus(g_neg - theta)`` and its
input is the previous layer's activity normalised to unit RMS (so goodness cannot pass
through) and detached. A label is predicted as the one whose embedding gives the most goodness
summed over layers.

The true gradient it is compared with is that of the same summed loss, backpropagated through
every layer (no detach): the last layer's update equals it; earlier layers miss the terms that
flow back from the layers above.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad.core.checks import finite_float, positive_int
from steadygrad.core.metric import Metric
from steadygrad.estimators.base import Batch, GradientEstimator

GOODNESS_POSITIVE = Metric(
    "ff_goodness_positive",
    "Forward-Forward: a layer's mean goodness on positive data",
    per="module",
    panel="ff_goodness",
)
GOODNESS_NEGATIVE = Metric(
    "ff_goodness_negative",
    "Forward-Forward: a layer's mean goodness on negative data",
    per="module",
    panel="ff_goodness",
)


def _unit_rms(h: torch.Tensor) -> torch.Tensor:
    return h / h.pow(2).mean(dim=1, keepdim=True).add(1e-8).sqrt()


class ForwardForwardMLP(nn.Module):
    """ReLU layers trained by goodness; ``model(x)`` returns each label's total goodness.

    Example:
        >>> model = ForwardForwardMLP(64, [32, 32], 10)
        >>> model(torch.randn(5, 64)).shape
        torch.Size([5, 10])
    """

    def __init__(self, in_features: int, hidden: list[int] | tuple[int, ...], classes: int) -> None:
        super().__init__()
        self.classes = positive_int("classes", classes)
        sizes = [positive_int("in_features", in_features) + self.classes]
        sizes += [positive_int("hidden", h) for h in hidden]
        if len(sizes) < 2:
            raise ValueError("hidden must name at least one layer")
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )

    def embed(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The input with ``labels`` appended one-hot."""
        return torch.cat([x, F.one_hot(labels, self.classes).to(x.dtype)], dim=1)

    def activities(self, z: torch.Tensor, local: bool = False) -> list[torch.Tensor]:
        """Every layer's ReLU activity; ``local=True`` detaches each layer's input."""
        out = []
        h = z
        for layer in self.layers:
            inp = _unit_rms(h)
            h = torch.relu(layer(inp.detach() if local else inp))
            out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = []
        for c in range(self.classes):
            labels = torch.full((len(x),), c, dtype=torch.long, device=x.device)
            hs = self.activities(self.embed(x, labels))
            scores.append(sum(goodness(h) for h in hs))
        return torch.stack(scores, dim=1)


def goodness(h: torch.Tensor) -> torch.Tensor:
    """Per example: the mean square of a layer's activity."""
    return h.pow(2).mean(dim=1)


class ForwardForward(GradientEstimator):
    """Layer-local Forward-Forward updates for a :class:`ForwardForwardMLP`.

    Negative data: each input with a label drawn uniformly among the wrong ones.
    Records ``ff_goodness_positive/<layer>`` and ``ff_goodness_negative/<layer>``.

    Example:
        >>> model = ForwardForwardMLP(4, [8], 3)
        >>> est = ForwardForward(model, seed=0)
        >>> loss = est.backward((torch.randn(6, 4), torch.randint(3, (6,))))
        >>> sorted(est.last)[:1]
        ['ff_goodness_negative/layers.0']
    """

    metrics = (GOODNESS_POSITIVE, GOODNESS_NEGATIVE)

    def __init__(self, model: ForwardForwardMLP, *, threshold: float = 1.0, seed: int = 0) -> None:
        if not isinstance(model, ForwardForwardMLP):
            raise TypeError(f"model must be a ForwardForwardMLP, got {type(model).__name__}")
        super().__init__(model, loss_fn=F.cross_entropy)  # loss_fn unused: goodness is the loss
        self.threshold = finite_float("threshold", threshold)
        self.generator = torch.Generator().manual_seed(seed)
        self._negative: torch.Tensor | None = None
        self.layer_names = [f"layers.{i}" for i in range(len(model.layers))]

    def prepare(self, batch: Batch) -> None:
        _, y = batch
        shift = torch.randint(1, self.model.classes, y.shape, generator=self.generator)
        self._negative = (y + shift.to(y.device)) % self.model.classes

    def _losses(self, batch: Batch, local: bool) -> tuple[list[torch.Tensor], list, list]:
        x, y = batch
        if self._negative is None or self._negative.shape != y.shape:
            self.prepare(batch)
        pos = self.model.activities(self.model.embed(x, y), local=local)
        neg = self.model.activities(self.model.embed(x, self._negative), local=local)
        losses, gp, gn = [], [], []
        for hp, hn in zip(pos, neg, strict=True):
            g_pos, g_neg = goodness(hp), goodness(hn)
            losses.append(
                (F.softplus(self.threshold - g_pos) + F.softplus(g_neg - self.threshold)).mean()
            )
            gp.append(g_pos.mean())
            gn.append(g_neg.mean())
        return losses, gp, gn

    def reference_loss(self, batch: Batch) -> torch.Tensor:
        return torch.stack(self._losses(batch, local=False)[0]).sum()

    def estimate(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.enable_grad():
            losses, gp, gn = self._losses(batch, local=True)
            total = torch.stack(losses).sum()
            # Inputs are detached: each layer's loss reaches only its own parameters.
            grads = torch.autograd.grad(total, self.params, allow_unused=True)
        for name, p_, n_ in zip(self.layer_names, gp, gn, strict=True):
            self.last[GOODNESS_POSITIVE.key(name)] = p_.detach()
            self.last[GOODNESS_NEGATIVE.key(name)] = n_.detach()
        update = [
            torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)
        ]
        return total.detach(), update
