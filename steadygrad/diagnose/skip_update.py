"""Skipping one optimizer update without raising into the caller and without changing its code.

The decision is made in the optimizer's pre-step path, where cancelling the call is not an
option (a trainer's closure must still run, and ``optimizer.step`` must still return). So the
update runs and is made a no-op, in one of two ways:

- **on the device** (no host synchronisation), for optimizers that take a ``found_inf`` flag as
  ``torch.amp.GradScaler`` passes it (the fused Adam, AdamW, SGD and Adagrad): the flag is a
  0/1 device tensor, and the fused kernel multiplies the update away, step counts included;
- **on the host** for every other optimizer: once the host knows the step must be skipped, the
  parameters and optimizer state are copied (only on that step), the update runs, and both are
  put back exactly as they were.

Example:
    >>> import torch
    >>> p = torch.nn.Parameter(torch.ones(2))
    >>> opt = torch.optim.SGD([p], lr=0.1)
    >>> skip = UpdateSkipper(opt)
    >>> p.grad = torch.tensor([float("nan"), 1.0])
    >>> skip.arm_host()
    >>> opt.step()
    >>> skip.after_update()
    True
    >>> p.data
    tensor([1., 1.])
"""

from __future__ import annotations

import copy
from typing import Any

import torch


def supports_device_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` reads a ``found_inf`` device flag (fused torch optimizers)."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


class UpdateSkipper:
    """Makes the next update of ``optimizer`` a no-op once armed; :meth:`after_update` (from the
    optimizer's post-step hook) finishes the job, :meth:`reset` drops what an update that never
    ran left armed."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.device_side = supports_device_skip(optimizer)
        self._saved_params: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._saved_state: dict[Any, dict[str, Any] | None] | None = None
        self._flag_set = False

    # -- on the device -----------------------------------------------------------------------
    def arm_device(self, skip: torch.Tensor) -> None:
        """Skip the next update where ``skip`` (a 0-dim device tensor) is true; no sync."""
        flag = skip.detach().to(torch.float32).reshape(())
        existing = getattr(self.optimizer, "found_inf", None)
        if isinstance(existing, torch.Tensor):  # a GradScaler's own flag: keep it, add ours
            self.optimizer.found_inf = torch.maximum(existing, flag.to(existing.device))
        else:
            self.optimizer.found_inf = flag
            self._flag_set = True

    # -- on the host -------------------------------------------------------------------------
    def arm_host(self) -> None:
        """Skip the next update: copy what it will change, to put it back after."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self._saved_params = [(p, p.detach().clone()) for p in params]
        state = self.optimizer.state
        self._saved_state = {
            p: ({k: _copy(v) for k, v in state[p].items()} if p in state else None) for p in params
        }

    @property
    def armed(self) -> bool:
        return self._saved_params is not None or self._flag_set

    def after_update(self) -> bool:
        """Undo the update that just ran (host) or withdraw the flag (device). Returns whether
        anything was armed."""
        armed = self.armed
        if self._saved_params is not None:
            with torch.no_grad():
                for p, saved in self._saved_params:
                    p.copy_(saved)
            state = self.optimizer.state
            for p, saved in (self._saved_state or {}).items():
                if saved is None:
                    state.pop(p, None)  # the skipped update created it
                    continue
                now = state[p]
                for k in list(now):
                    if k not in saved:
                        del now[k]
                for k, v in saved.items():
                    old = now.get(k)
                    if (
                        isinstance(v, torch.Tensor)
                        and isinstance(old, torch.Tensor)
                        and (old.shape == v.shape)
                    ):
                        old.copy_(v)  # in place: whoever holds the tensor sees the old value
                    else:
                        now[k] = v
        self.reset()
        return armed

    def reset(self) -> None:
        """Forget what is armed (an update that did not run: e.g. a GradScaler overflow)."""
        if self._flag_set and hasattr(self.optimizer, "found_inf"):
            del self.optimizer.found_inf
        self._flag_set = False
        self._saved_params = None
        self._saved_state = None


def _copy(value: Any) -> Any:
    return value.detach().clone() if isinstance(value, torch.Tensor) else copy.deepcopy(value)
