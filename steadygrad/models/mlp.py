"""A plain multilayer perceptron."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from steadygrad.core.checks import positive_int


class MLP(nn.Sequential):
    """Linear layers with an activation between them.

    Example:
        >>> import torch
        >>> model = MLP(64, [128, 128], 10)
        >>> model(torch.zeros(5, 64)).shape
        torch.Size([5, 10])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: type[nn.Module] = nn.ReLU,
    ) -> None:
        sizes = [positive_int("in_features", in_features)]
        sizes += [positive_int("hidden", h) for h in hidden]
        sizes.append(positive_int("out_features", out_features))
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(activation())
        super().__init__(*layers)
