"""What kind of optimizer a run uses, decided in one place from what it computes, not its name."""

from __future__ import annotations

import sys
from typing import Any

FAMILIES = ("adam", "adaptive", "sign", "sgd", "momentum", "nesterov", "unknown")
# The families whose step is scaled per coordinate by a running square of the gradient.
PER_COORDINATE = ("adam", "adaptive")
# Families whose step is the gradient times the learning rate (and a momentum's sum of them).
GRADIENT_SCALED = ("sgd", "momentum", "nesterov")


def optimizer_family(optimizer: Any) -> str:
    """The optimizer's family, from its parameter groups' hyperparameters.

    - ``"adam"``: keeps a second moment (``betas`` and ``eps``): Adam, AdamW, SPAM, Stable-SPAM,
      AdaBelief, diffGrad, AdEMAMix, Grams, ...
    - ``"adaptive"``: ``eps`` without ``betas``: a per-coordinate step from an accumulated
      square of the gradient with no Adam momentum, such as RMSprop, Adagrad, Adadelta. (RMSprop
      has a ``momentum`` of its own; its step is still not SGD's.)
    - ``"sign"``: ``betas`` without ``eps``: a sign update such as Lion; and Rprop (``etas``
      and ``step_sizes``), whose step is the gradient's sign times a step size of its own.
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
    if "etas" in group and "step_sizes" in group:
        return "sign"  # Rprop: the gradient's sign times a step size of each weight's own
    if "eps" in group:
        return "adaptive"
    if "momentum" in group:
        if not group.get("momentum"):
            return "sgd"
        return "nesterov" if group.get("nesterov") else "momentum"
    return "unknown"


# The run config's key for :func:`second_moment_decay`.
SECOND_MOMENT_DECAY = "second_moment_decay"
# Optimizers whose running square is a plain average (or sum) of the squared gradient: one
# spike then damps their later steps only as much as that average still holds of it. Their
# parameter groups cannot tell them apart from those that keep a running max (Adamax, AMSGrad),
# a centred variance (AdaBelief, centred RMSprop: one spike is huge against a small variance)
# or a factored square (Adafactor), which one spike can damp far more; so the class decides.
PLAIN_SQUARE = (
    "Adam",
    "AdamW",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Adagrad",
    "Adadelta",
    "SPAM",
    "StableSPAM",
    "DiffGrad",
    "Grams",
    "AdEMAMix",
)


def second_moment_decay(optimizer: Any) -> float | None:
    """The share of its running square of the gradient an optimizer keeps at each step, from
    its first parameter group: Adam's ``beta2``, RMSprop's ``alpha``, Adadelta's ``rho``; 1.0
    for Adagrad, whose sum never forgets. None for an optimizer that keeps no plain average of
    the squared gradient (SGD, Lion; Adamax, AMSGrad, AdaBelief: see ``PLAIN_SQUARE``). It
    says how long one giant gradient can damp the steps after it.

    Example:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> second_moment_decay(torch.optim.Adam([p], betas=(0.9, 0.95)))
        0.95
        >>> second_moment_decay(torch.optim.Adagrad([p])), second_moment_decay(torch.optim.SGD([p]))
        (1.0, None)
    """
    optimizer = unwrap_optimizer(optimizer)
    group = (getattr(optimizer, "param_groups", None) or [{}])[0]
    plain = type(optimizer).__name__ in PLAIN_SQUARE
    if not plain or "eps" not in group or group.get("amsgrad") or group.get("centered"):
        return None
    if "betas" in group:
        return float(group["betas"][1])
    for key in ("alpha", "rho"):  # RMSprop, Adadelta
        if key in group:
            return float(group[key])
    return 1.0  # a per-coordinate step from eps alone: Adagrad's sum


# The run config's key for :func:`first_moment_decay`.
FIRST_MOMENT_DECAY = "first_moment_decay"


def first_moment_decay(optimizer: Any) -> float | None:
    """The share of its running average of the gradient (its momentum) an optimizer keeps at
    each step, from its first parameter group: Adam's and Lion's ``beta1``, SGD's or RMSprop's
    ``momentum``. None for one that keeps none (plain SGD, Adagrad, Rprop). A giant gradient
    goes on moving the weights for about ``1 / (1 - decay)`` steps after it.

    Example:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.zeros(1))
        >>> first_moment_decay(torch.optim.AdamW([p])), first_moment_decay(torch.optim.SGD([p]))
        (0.9, None)
        >>> first_moment_decay(torch.optim.SGD([p], lr=0.1, momentum=0.99))
        0.99
    """
    optimizer = unwrap_optimizer(optimizer)
    group = (getattr(optimizer, "param_groups", None) or [{}])[0]
    betas = group.get("betas")
    decay = betas[0] if isinstance(betas, (tuple, list)) and betas else group.get("momentum")
    if not isinstance(decay, (int, float)) or not 0 < decay < 1:
        return None
    return float(decay)


# The run config's key for :func:`averages_iterates`.
AVERAGES_ITERATES = "averages_iterates"


def averages_iterates(optimizer: Any) -> bool:
    """Whether the weights the model trains with are an average of the optimizer's iterates, as
    schedule-free optimizers keep them (Defazio et al. 2024; schedulefree's and
    pytorch-optimizer's, whose parameter groups carry the average's ``weight_sum``): those
    weights' steps shrink as the average grows, to about ``1 - beta1`` of the base step,
    whatever the gradient does.

    Example:
        >>> import torch
        >>> averages_iterates(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]))
        False
    """
    optimizer = unwrap_optimizer(optimizer)
    return any("weight_sum" in g for g in getattr(optimizer, "param_groups", None) or [])


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
