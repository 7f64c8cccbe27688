"""What kind of optimizer a run uses, decided in one place from what it computes, not its name."""

from __future__ import annotations

import sys
from typing import Any

FAMILIES = ("adam", "adaptive", "sign", "sgd", "momentum", "nesterov", "unknown")
# The families whose step is scaled per coordinate by a running square of the gradient.
PER_COORDINATE = ("adam", "adaptive")


def optimizer_family(optimizer: Any) -> str:
    """The optimizer's family, from its parameter groups' hyperparameters.

    - ``"adam"``: keeps a second moment (``betas`` and ``eps``): Adam, AdamW, SPAM, Stable-SPAM,
      AdaBelief, diffGrad, AdEMAMix, Grams, ...
    - ``"adaptive"``: ``eps`` without ``betas``: a per-coordinate step from an accumulated
      square of the gradient with no Adam momentum, such as RMSprop, Adagrad, Adadelta. (RMSprop
      has a ``momentum`` of its own; its step is still not SGD's.)
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
        >>> optimizer_family(torch.optim.RMSprop([p]))
        'adaptive'
    """
    groups = getattr(optimizer, "param_groups", None) or [{}]
    group = groups[0]
    if "betas" in group:
        return "adam" if "eps" in group else "sign"
    if "eps" in group:
        return "adaptive"
    if "momentum" in group:
        if not group.get("momentum"):
            return "sgd"
        return "nesterov" if group.get("nesterov") else "momentum"
    return "unknown"


# The wrappers training stacks hand out instead of the optimizer: (module, class, inner attribute).
# They are not optimizers with step hooks of their own; the Monitor hooks what they wrap.
_WRAPPERS = (
    ("accelerate.optimizer", "AcceleratedOptimizer", "optimizer"),
    ("lightning.pytorch.core.optimizer", "LightningOptimizer", "_optimizer"),
    ("pytorch_lightning.core.optimizer", "LightningOptimizer", "_optimizer"),
)


def unwrap_optimizer(optimizer: Any) -> Any:
    """The optimizer inside accelerate's ``AcceleratedOptimizer`` and Lightning's
    ``LightningOptimizer`` (nested wrappers too); any other object is returned as it is.

    A wrapper's class is only looked up when its package is already imported: an object of that
    class cannot exist otherwise, so this never imports accelerate or Lightning.

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> unwrap_optimizer(opt) is opt
        True
    """
    for _ in range(8):  # wrappers nest a few levels at most
        for module, name, inner in _WRAPPERS:
            cls = getattr(sys.modules.get(module), name, None)
            if cls is not None and isinstance(optimizer, cls):
                optimizer = getattr(optimizer, inner)
                break
        else:
            return optimizer
    return optimizer
