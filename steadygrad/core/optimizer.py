"""What kind of optimizer a run uses, decided in one place from what it computes, not its name."""

from __future__ import annotations

from typing import Any

FAMILIES = ("adam", "sign", "sgd", "momentum", "nesterov", "unknown")


def optimizer_family(optimizer: Any) -> str:
    """The optimizer's family, from its parameter groups' hyperparameters.

    - ``"adam"``: keeps a second moment (``betas`` and ``eps``): Adam, AdamW, SPAM, Stable-SPAM,
      AdaBelief, diffGrad, AdEMAMix, Grams, ...
    - ``"sign"``: ``betas`` without ``eps``: a sign update such as Lion.
    - ``"sgd"``, ``"momentum"``, ``"nesterov"``: SGD without momentum, heavy-ball, Nesterov.
    - ``"unknown"`` otherwise.

    Wrappers (OrthoGrad, accelerate's and Lightning's) expose their inner groups, so they are
    judged by what they wrap.

    Example:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> optimizer_family(torch.optim.AdamW([p])), optimizer_family(torch.optim.SGD([p], lr=0.1))
        ('adam', 'sgd')
    """
    groups = getattr(optimizer, "param_groups", None) or [{}]
    group = groups[0]
    if "betas" in group:
        return "adam" if "eps" in group else "sign"
    if "momentum" in group:
        if not group.get("momentum"):
            return "sgd"
        return "nesterov" if group.get("nesterov") else "momentum"
    return "unknown"
