"""Gradient clipping a user calls between ``backward()`` and ``optimizer.step()``.

- :func:`clip_grad_norm`: global-norm clipping that returns the pre-clip norm as a tensor and
  never moves a value to the host (no ``.item()``, no Python branch on a tensor).
- :func:`adaptive_clip_grad`: unit-wise adaptive gradient clipping (AGC, Brock et al. 2021).
- :class:`SpikeClipper` / :func:`clip_spikes`: spike-aware clipping against a running second
  moment (SPAM, Huang et al. 2025).

Each one changes only the gradients it is given (``SpikeClipper`` also updates its own running
second moment); parameters and optimizer state are untouched.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from steadygrad.core.checks import finite_float, non_negative_int

Params = torch.Tensor | Iterable[torch.Tensor]


def _grads(parameters: Params, name: str = "parameters") -> list[torch.Tensor]:
    """The ``.grad`` of each parameter that has one."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    params = list(parameters)
    for p in params:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name} must hold tensors, got {type(p).__name__}")
    return [p.grad for p in params if p.grad is not None]


def _norm_type(value: object) -> float:
    if isinstance(value, float) and value == float("inf"):
        return value
    return finite_float("norm_type", value, low=0.0, low_open=True)


def clip_grad_norm(parameters: Params, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Scale all gradients together so their global norm is at most ``max_norm``.

    The scale is ``min(1, max_norm / (norm + 1e-6))``, computed on the gradients' device and
    applied unconditionally, exactly as ``torch.nn.utils.clip_grad_norm_`` does, so the results
    match it. Nothing waits for the device: the returned pre-clip norm is a 0-dim tensor to log
    or check later. A non-finite norm is not an error here (that check would synchronise): it
    turns finite gradients into zeros and non-finite ones into NaN, so check the returned norm.

    Example:
        >>> w = torch.nn.Parameter(torch.ones(4))
        >>> w.grad = torch.full((4,), 3.0)
        >>> clip_grad_norm([w], max_norm=1.0)
        tensor(6.)
        >>> round(float(w.grad.norm()), 4)
        1.0
    """
    max_norm = finite_float("max_norm", max_norm, low=0.0, low_open=True)
    norm_type = _norm_type(norm_type)
    grads = _grads(parameters)
    if not grads:
        return torch.tensor(0.0)
    device = grads[0].device
    by_device: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        by_device.setdefault((g.device, g.dtype), []).append(g)
    norms = []
    for group in by_device.values():
        norms.extend(n.to(device) for n in torch._foreach_norm(group, norm_type))
    total_norm = torch.linalg.vector_norm(torch.stack(norms), norm_type)
    scale = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    for (dev, _), group in by_device.items():
        torch._foreach_mul_(group, scale.to(dev))
    return total_norm


def _unit_norm(x: torch.Tensor) -> torch.Tensor:
    """Norm per output unit: over all dims but the first (rows of a Linear weight, filters of a
    conv); a vector or scalar is one unit."""
    if x.dim() <= 1:
        return torch.linalg.vector_norm(x)
    return torch.linalg.vector_norm(x, dim=tuple(range(1, x.dim())), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad(parameters: Params, clipping: float = 0.01, eps: float = 1e-3) -> None:
    """Unit-wise adaptive gradient clipping (AGC; Brock et al. 2021, arXiv 2102.06171).

    For each unit ``i`` (a row of a weight matrix, an output filter of a conv, a whole bias or
    gain vector), the gradient is rescaled so that
    ``||g_i|| / max(||w_i||, eps) <= clipping``; units under the limit are left as they are.
    The paper advises not clipping the final classifier layer: leave it out of ``parameters``.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
        >>> w.grad = torch.tensor([[1.0, 0.0], [0.0, 0.001]])
        >>> adaptive_clip_grad([w], clipping=0.1)
        >>> w.grad  # row 0: ||g|| = 1 > 0.1 * 5, scaled to 0.5; row 1 is under its limit
        tensor([[0.5000, 0.0000],
                [0.0000, 0.0010]])
    """
    clipping = finite_float("clipping", clipping, low=0.0, low_open=True)
    eps = finite_float("eps", eps, low=0.0)
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    for p in parameters:
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"parameters must hold tensors, got {type(p).__name__}")
        if p.grad is None:
            continue
        norm = _unit_norm(p.detach())
        # eps as a tensor: a float beyond the dtype's range becomes inf instead of raising
        max_norm = torch.clamp(norm, min=norm.new_tensor(eps)) * clipping
        grad_norm = _unit_norm(p.grad)
        scale = torch.where(grad_norm > max_norm, max_norm / grad_norm.clamp_min(1e-6), 1.0)
        p.grad.mul_(scale.to(p.grad.dtype))


@torch.no_grad()
def clip_spikes(grad: torch.Tensor, second_moment: torch.Tensor, theta: float) -> torch.Tensor:
    """Clip, in place, entries of ``grad`` with ``grad**2 > theta * second_moment`` to
    ``sign(grad) * sqrt(theta * second_moment)``; return how many were clipped (a 0-dim tensor).

    Entries whose ``second_moment`` is exactly 0 are left alone (SPAM would zero them, which
    freezes a coordinate that has never had a gradient).

    Example:
        >>> g = torch.tensor([1.0, -100.0])
        >>> clip_spikes(g, torch.tensor([1.0, 1.0]), theta=25.0)
        tensor(1)
        >>> g
        tensor([ 1., -5.])
    """
    if grad.shape != second_moment.shape:
        raise ValueError(
            f"second_moment must have the shape of grad {tuple(grad.shape)}, "
            f"got {tuple(second_moment.shape)}"
        )
    threshold = theta * second_moment
    spikes = (grad * grad > threshold) & (second_moment > 0)
    grad.copy_(torch.where(spikes, torch.sign(grad) * threshold.sqrt(), grad))
    return spikes.sum()


class SpikeClipper:
    """Spike-aware gradient clipping (SPAM, Huang et al. 2025, arXiv 2501.06842), for any loop.

    Keeps its own running second moment ``v = beta2 * v + (1 - beta2) * g**2`` per parameter
    (of the clipped gradients, as SPAM's Adam moment is). Each call clips, in place, entries
    with ``g**2 > theta * v_prev`` to ``sign(g) * sqrt(theta * v_prev)`` and then updates ``v``.
    For the first ``warmup_steps`` calls it only accumulates ``v``. As in SPAM, ``v`` is not
    bias-corrected by default (``theta=5000`` assumes that); ``bias_correction=True`` divides
    it by ``1 - beta2**t`` so the threshold is the same at every step.

    Example:
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> clipper = SpikeClipper([w], theta=5000.0, warmup_steps=2)
        >>> for scale in (1.0, 1.0, 1000.0):
        ...     w.grad = torch.full((3,), scale)
        ...     clipped = clipper.clip()
        >>> int(clipped), round(float(w.grad[0]), 2)
        (3, 3.16)
    """

    def __init__(
        self,
        parameters: Params,
        theta: float = 5000.0,
        beta2: float = 0.999,
        warmup_steps: int = 20,
        bias_correction: bool = False,
    ) -> None:
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        self.params = list(parameters)
        if not self.params:
            raise ValueError("parameters must not be empty")
        for p in self.params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(f"parameters must hold tensors, got {type(p).__name__}")
        self.theta = finite_float("theta", theta, low=0.0, low_open=True)
        self.beta2 = finite_float("beta2", beta2, low=0.0, high=1.0, high_open=True)
        self.warmup_steps = non_negative_int("warmup_steps", warmup_steps)
        if not isinstance(bias_correction, bool):
            raise TypeError(f"bias_correction must be a bool, got {bias_correction!r}")
        self.bias_correction = bias_correction
        self.steps = 0
        self.second_moments: list[torch.Tensor | None] = [None] * len(self.params)

    @torch.no_grad()
    def clip(self) -> torch.Tensor:
        """Clip the current gradients; return the number of clipped entries (0-dim tensor)."""
        self.steps += 1
        counts = []
        for i, p in enumerate(self.params):
            g = p.grad
            if g is None:
                continue
            v = self.second_moments[i]
            if v is None:
                v = self.second_moments[i] = torch.zeros_like(
                    g, memory_format=torch.preserve_format
                )
            if self.steps > max(self.warmup_steps, 1):  # v is all zeros at step 1
                reference = v
                if self.bias_correction:
                    reference = v / (1.0 - self.beta2 ** (self.steps - 1))
                counts.append(clip_spikes(g, reference, self.theta))
            v.mul_(self.beta2).addcmul_(g, g, value=1.0 - self.beta2)
        if not counts:
            return torch.tensor(0)
        return torch.stack([c.to(counts[0].device) for c in counts]).sum()

    __call__ = clip

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "second_moments": list(self.second_moments)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        moments = state["second_moments"]
        if len(moments) != len(self.params):
            raise ValueError(
                f"state has {len(moments)} second moments, the clipper {len(self.params)} params"
            )
        self.steps = int(state["steps"])
        self.second_moments = [None if m is None else m.clone() for m in moments]
