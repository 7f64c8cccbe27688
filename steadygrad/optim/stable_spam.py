"""Stable-SPAM (Huang et al., ICML 2025, arXiv 2502.17055): Adam on a gradient that is first
spike-clipped against a running max (AdaClip) and rescaled to a running norm (AdaGN), with
periodic momentum resets."""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import partial
from typing import Any

import torch

from steadygrad.core.checks import finite_float, non_negative_int, positive_int
from steadygrad.optim import _foreach
from steadygrad.optim._base import KernelOptimizer, check_betas, check_lr, check_non_negative

RESET_MODES = ("reference", "clean")


def stable_spam_scale(step: int, total_steps: int | None, eta_min: float) -> float:
    """The cosine factor on beta1 and gamma1: from 1 down to ``eta_min`` over ``total_steps``,
    computed in closed form and *not* clamped afterwards (as in the reference: it is periodic).

    Example:
        >>> stable_spam_scale(5, None, 0.5)
        1.0
    """
    if total_steps is None:
        return 1.0
    return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * step / (total_steps + 1))) / 2.0


def _once(scalar: Any) -> Any:
    """``scalar`` (a per-tensor factor), computed once per tensor when compiled.

    Inductor inlines a scalar expression into the loop over entries that uses it and, unsure
    whether the loop's stores alias its inputs, evaluates it again for every vector of entries;
    a chain of divisions and square roots there cost more than the memory traffic (the AdaGN
    factor alone: 2x the whole update on CPU). A reduction is always computed first, once: the
    max of the value with itself is the value, exactly."""
    if isinstance(scalar, torch.Tensor):
        return torch.stack((scalar, scalar)).amax()
    return scalar  # a TensorList of the multi-tensor path: nothing to hoist


def stable_spam_kernel(
    p: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    max_ema: torch.Tensor,
    norm_ema: torch.Tensor,
    norm_sq_ema: torch.Tensor,
    hp: torch.Tensor,
) -> None:
    """hp = (decay, g3, 1-g3, bc3, g1, 1-g1, bc_g1, g2, 1-g2, bc_g2, eps, b1, 1-b1, b2, 1-b2,
    bc2_sqrt, step_size); ``max_ema``, ``norm_ema``, ``norm_sq_ema`` hold one value each."""
    (decay, g3, omg3, bc3, g1, omg1, bc_g1, g2, omg2, bc_g2, eps, b1, omb1, b2, omb2, bc2_sqrt,
     step_size) = hp.unbind(0)  # fmt: skip
    g = g.float()
    pf = p.float() * decay
    # AdaClip: entries above the bias-corrected EMA of max|g| are rescaled by that/max|g|.
    g_abs = torch.abs(g)
    g_max = torch.amax(g_abs)
    max_ema_new = max_ema * g3 + omg3 * g_max
    limit = max_ema_new / bc3
    g = torch.where(g_abs > limit, g * _once(limit / g_max), g)
    # AdaGN: rescale the whole tensor to the ratio of EMAs of its norm and squared norm.
    norm = torch.linalg.vector_norm(g)
    norm_ema_new = norm_ema * g1 + omg1 * norm
    norm_sq_ema_new = norm_sq_ema * g2 + omg2 * norm * norm
    ratio = (norm_ema_new / bc_g1) / (torch.sqrt(norm_sq_ema_new / bc_g2) + eps)
    g = g * _once(torch.where(norm > 0, ratio / norm, 1.0))
    m_new = m * b1 + g * omb1
    v_new = v * b2 + g * g * omb2
    # step_size * m / (sqrt(v)/bc2_sqrt + eps), with bc2_sqrt moved out of the per-entry work
    p.copy_(pf - (step_size * bc2_sqrt) * (m_new / (torch.sqrt(v_new) + eps * bc2_sqrt)))
    m.copy_(m_new)
    v.copy_(v_new)
    max_ema.copy_(max_ema_new)
    norm_ema.copy_(norm_ema_new)
    norm_sq_ema.copy_(norm_sq_ema_new)


# its float32 norm makes inductor's code depend on the size class (see _base._size_classes)
stable_spam_kernel.float32_sum = True  # type: ignore[attr-defined]
# its max and norm are over the whole tensor: the multi-tensor path must not cut it into blocks
stable_spam_kernel.reduces = True  # type: ignore[attr-defined]


def stable_spam_foreach(p, g, m, v, max_ema, norm_ema, norm_sq_ema, hp) -> None:
    """:func:`stable_spam_kernel` on lists of whole tensors.

    The per-tensor scalars (max, norm, the three EMAs) are computed for all tensors at once in
    small vectors; the element-wise work runs block by block in two passes (the norm of the
    clipped gradient, then the update), each entry's clip and rescale folded into one multiply.
    On the CPU (where reading a scalar costs no device synchronisation) a tensor whose max
    ``|g|`` is within its limit skips the clipping ops: nothing of it is clipped. Rounding
    differs from the kernel's in the last bits (``g * (limit / max)`` for ``g / max * limit``,
    a blocked norm, fused multiply-adds), never in what is computed."""
    (decay, g3, omg3, bc3, g1, omg1, bc_g1, g2, omg2, bc_g2, eps, b1, omb1, b2, omb2, bc2_sqrt,
     step_size) = hp  # fmt: skip
    n = len(p)
    cpu = g[0].device.type == "cpu"
    # max |g| exactly, as max(max g, -min g): an infinity norm costs ~30x a min/max pass on CPU
    bounds = torch.stack([torch.stack(torch.aminmax(t)) for t in g]).float()
    g_max = torch.maximum(bounds[:, 1], -bounds[:, 0])
    max_ema_new = torch.stack(max_ema) * g3 + omg3 * g_max
    limit = max_ema_new / bc3
    clip_factor = limit / g_max  # only used where |g| > limit, hence g_max > 0
    blocks, owners = _pieces_of(p, g, m, v)
    index = torch.tensor(owners, dtype=torch.long, device=g_max.device)

    def per_piece(values: torch.Tensor) -> list:
        # Python floats on the CPU (the foreach ops' fast scalar lists), 0-d tensors elsewhere
        values = values[index]
        return values.tolist() if cpu else list(values.unbind(0))

    limits, factors = per_piece(limit), per_piece(clip_factor)
    clips = per_piece(g_max > limit) if cpu else [True] * len(owners)
    masks, squares, k = [], [], 0
    for block in blocks:
        gp = [row[1] for row in block]
        mask, clipped = [], []
        for x, lim, fac, clip in zip(gp, limits[k:], factors[k:], clips[k:], strict=False):
            if clip:
                above = torch.abs(x) > lim
                mask.append(above)
                clipped.append(torch.where(above, x * fac, x))
            else:
                mask.append(None)
                clipped.append(x)
        squares += torch._foreach_norm(clipped)
        masks.append(mask)
        k += len(gp)
    piece_sq = torch.stack(squares).float() ** 2
    norm_sq = torch.zeros(n, dtype=torch.float32, device=g_max.device)
    norm = torch.sqrt(norm_sq.index_add_(0, index, piece_sq))
    norm_ema_new = torch.stack(norm_ema) * g1 + omg1 * norm
    norm_sq_ema_new = torch.stack(norm_sq_ema) * g2 + omg2 * norm * norm
    ratio = (norm_ema_new / bc_g1) / (torch.sqrt(norm_sq_ema_new / bc_g2) + eps)
    rescale = torch.where(norm > 0, ratio / norm, torch.ones_like(norm))
    # entries above the limit: g * clip_factor * rescale; the others: g * rescale
    above, below = per_piece(clip_factor * rescale), per_piece(rescale)
    k = 0
    for block, mask in zip(blocks, masks, strict=True):
        pp, gp, mp, vp = ([row[j] for row in block] for j in range(4))
        gc = list(_foreach.copy_to_scratch(gp, 0))  # a list of our own: entries get replaced
        torch._foreach_mul_(gc, below[k : k + len(gp)])
        for j, (x, hi) in enumerate(zip(gp, above[k:], strict=False)):
            if mask[j] is not None:
                gc[j] = torch.where(mask[j], x * hi, gc[j])
        k += len(gp)
        if decay != 1.0:  # multiplying by 1 changes nothing: skip the pass
            torch._foreach_mul_(pp, decay)
        # p*decay - step_size * m / (sqrt(v)/bc2_sqrt + eps), with bc2_sqrt moved out
        _foreach.adam_step_(pp, gc, mp, vp, step_size * bc2_sqrt, b1, b2, eps * bc2_sqrt)
    torch._foreach_copy_(max_ema, max_ema_new.unbind(0))
    torch._foreach_copy_(norm_ema, norm_ema_new.unbind(0))
    torch._foreach_copy_(norm_sq_ema, norm_sq_ema_new.unbind(0))


def _pieces_of(p, g, m, v) -> tuple[list[list[list[torch.Tensor]]], list[int]]:
    """Flat pieces of at most ``block_numel`` entries of every tensor (whole tensors off the
    CPU), packed into blocks of about that many entries (rows ``[p, g, m, v]``), and the tensor
    index of every piece."""
    size = _foreach.block_numel(p[0].device)
    blocks, current, filled, owners = [], [], 0, []
    for i, row in enumerate(zip(p, g, m, v, strict=True)):
        flat = [t.view(-1) for t in row]
        numel = flat[0].numel()
        for start in range(0, numel, size):
            piece = flat if numel <= size else [t[start : start + size] for t in flat]
            if current and filled + piece[0].numel() > size:
                blocks.append(current)
                current, filled = [], 0
            current.append(piece)
            filled += piece[0].numel()
            owners.append(i)
    if current:
        blocks.append(current)
    return blocks, owners


stable_spam_kernel.foreach = stable_spam_foreach  # type: ignore[attr-defined]


class StableSPAM(KernelOptimizer):
    """Stable-SPAM as in the authors' reference code.

    Per step ``S`` and tensor (with its own counter ``t``): decoupled decay ``p *= 1 - lr*wd``;
    AdaClip (``T = g3*T + (1-g3)*max|g|``, entries with ``|g| > T/(1-g3^t)`` scaled by
    ``(T/(1-g3^t))/max|g|``); AdaGN (EMAs of ``||g||`` with ``gamma1*scale`` and of ``||g||^2``
    with ``gamma2``, ``g <- g/||g|| * n_m_hat/(sqrt(n_v_hat)+eps)``); a momentum reset every
    ``reset_interval`` steps (``t`` back to 1); Adam with ``beta1*scale`` and the "hat" eps form.
    ``scale`` is :func:`stable_spam_scale` (1 unless ``total_steps`` is given).

    ``reset_mode="reference"`` (default) reproduces the reference's reset step: the *old*
    moments are updated and used once more with the bias corrections of ``t=1`` (a step ~0.32x
    Adam's), and the zeroed moments take over at the next step. ``reset_mode="clean"`` zeroes the
    moments before the update (a fresh Adam step, as pytorch-optimizer does).
    The counter ``t`` also drives AdaClip's and AdaGN's bias corrections (as in the reference),
    so clipping is effectively off for a while after each reset.

    Example:
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = StableSPAM(model.parameters(), lr=1e-3, fused=False)
        >>> model(torch.ones(3, 4)).sum().backward()
        >>> opt.step()
    """

    # its momentum resets set each tensor's step count back to 1: a restart by design
    restarts_state = True
    _state_names = ("exp_avg", "exp_avg_sq", "grad_max_ema", "grad_norm_ema", "grad_norm_sq_ema")
    _moment_names = ("exp_avg", "exp_avg_sq")
    _signed_states = frozenset({"exp_avg"})
    _supports_8bit = True

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        *,
        gamma1: float = 0.7,
        gamma2: float = 0.9,
        gamma3: float = 0.999,
        total_steps: int | None = None,
        eta_min: float = 0.5,
        reset_interval: int = 1000,
        reset_mode: str = "reference",
        fused: bool | None = None,
        foreach: bool | None = None,
        state_bits: int = 32,
    ) -> None:
        if reset_mode not in RESET_MODES:
            raise ValueError(f"reset_mode must be one of {RESET_MODES}, got {reset_mode!r}")
        defaults = dict(
            lr=check_lr(lr),
            betas=check_betas(betas, 2),
            eps=check_non_negative("eps", eps),
            weight_decay=check_non_negative("weight_decay", weight_decay),
            gamma1=finite_float("gamma1", gamma1, low=0.0, high=1.0, high_open=True),
            gamma2=finite_float("gamma2", gamma2, low=0.0, high=1.0, high_open=True),
            gamma3=finite_float("gamma3", gamma3, low=0.0, high=1.0, high_open=True),
            total_steps=None if total_steps is None else positive_int("total_steps", total_steps),
            eta_min=finite_float("eta_min", eta_min, low=0.0, high=1.0),
            reset_interval=non_negative_int("reset_interval", reset_interval),
            reset_mode=reset_mode,
        )
        super().__init__(params, defaults, fused=fused, foreach=foreach, state_bits=state_bits)
        for group in self.param_groups:
            group.setdefault("total_steps_done", 0)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        self.param_groups[-1].setdefault("total_steps_done", 0)

    def _zeros(self, name: str, p: torch.Tensor) -> torch.Tensor:
        if name in ("grad_max_ema", "grad_norm_ema", "grad_norm_sq_ema"):
            return torch.zeros((), dtype=torch.float32, device=p.device)
        return super()._zeros(name, p)

    def _step_group(self, group: dict[str, Any]) -> None:
        group["total_steps_done"] += 1
        S = group["total_steps_done"]
        scale = stable_spam_scale(S, group["total_steps"], group["eta_min"])
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        b1, b2 = group["betas"]
        b1 = b1 * scale
        g1 = group["gamma1"] * scale
        g2, g3 = group["gamma2"], group["gamma3"]
        gap = group["reset_interval"]
        reset = gap != 0 and S % gap == 0
        clean = group["reset_mode"] == "clean"
        for p in self._params_with_grad(group):
            state = self._init_state(p)
            state["step"] += 1
            t_norm = state["step"]  # AdaClip/AdaGN use the counter before a reset
            if reset:
                state["step"] = 1
                if clean:
                    self._reset_states(p, self._moment_names)
            t = state["step"]
            hp = (
                1.0 - lr * wd,
                g3, 1.0 - g3, 1.0 - g3**t_norm,
                g1, 1.0 - g1, 1.0 - g1**t_norm,
                g2, 1.0 - g2, 1.0 - g2**t_norm,
                eps,
                b1, 1.0 - b1, b2, 1.0 - b2,
                math.sqrt(1.0 - b2**t), lr / (1.0 - b1**t),
            )  # fmt: skip
            # Reference quirk: the old moments serve the reset step; fresh ones start next step.
            after = (
                partial(self._reset_states, p, self._moment_names) if reset and not clean else None
            )
            self._run(stable_spam_kernel, p, hp, after=after)
