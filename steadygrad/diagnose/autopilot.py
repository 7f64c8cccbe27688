"""The autopilot: routine recoveries, applied by the Monitor, each one written to the run store.

Policies (each can be switched off):
  * ``skip_nonfinite``: an optimizer step whose gradients hold NaN/Inf is not taken.
  * ``rollback``: after a divergence (non-finite loss or weights, or a loss above
    ``divergence_ratio`` times the median of the recent healthy losses), the model and
    optimizer are restored from the last good snapshot and the learning rate is multiplied by
    ``lr_factor``.
  * ``spike_clipping``: after a gradient-norm spike, every later step clips the global gradient
    norm to ``clip_factor`` times its running median, before the optimizer sees it.

Snapshots are taken every ``snapshot_every`` healthy steps, in memory, or on disk under
``snapshot_dir`` (``torch.save``; they load with ``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from steadygrad.core.checks import finite_float, non_negative_int, positive_int
from steadygrad.diagnose.detectors.base import RobustBaseline

if TYPE_CHECKING:
    from steadygrad.core import Finding, Record


class MonitorLink(Protocol):
    """What the autopilot needs of the Monitor it is attached to, and nothing more."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_count: int

    def gradient_norms(self) -> tuple[list[int], torch.Tensor]:
        """Before the update: which parameters have a gradient, and each one's norm."""

    def scale_gradients(self, index: list[int], factor: float | torch.Tensor) -> None:
        """Multiply those gradients by ``factor`` before the update."""

    def weights_replaced(self) -> None:
        """Tell the Monitor the weights were replaced (a rollback)."""

    def record_action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        """Write an action to the run."""


class Autopilot:
    """Recovery policies for :class:`~steadygrad.Monitor` (``Monitor(..., autopilot=...)``).

    Example:
        >>> pilot = Autopilot(rollback=True, lr_factor=0.5, snapshot_every=50)
        >>> # mon = steadygrad.Monitor(model, optimizer, "runs/x", autopilot=pilot)
    """

    def __init__(
        self,
        *,
        skip_nonfinite: bool = True,
        rollback: bool = True,
        spike_clipping: bool = True,
        snapshot_every: int = 50,
        snapshot_dir: str | os.PathLike[str] | None = None,
        lr_factor: float = 0.5,
        divergence_ratio: float = 3.0,
        max_rollbacks: int = 5,
        clip_factor: float = 2.0,
        scheduler: Any = None,
    ) -> None:
        self.skip_nonfinite = bool(skip_nonfinite)
        self.rollback = bool(rollback)
        self.spike_clipping = bool(spike_clipping)
        self.snapshot_every = positive_int("snapshot_every", snapshot_every)
        self.snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
        self.lr_factor = finite_float("lr_factor", lr_factor, low=0.0, high=1.0, low_open=True)
        self.divergence_ratio = finite_float("divergence_ratio", divergence_ratio, low=1.0)
        self.max_rollbacks = non_negative_int("max_rollbacks", max_rollbacks)
        self.clip_factor = finite_float("clip_factor", clip_factor, low=0.0, low_open=True)
        self.scheduler = scheduler
        self.rollbacks = 0
        self.clipping_on = False
        self.snapshot_step: int | None = None
        self._snapshot: dict[str, Any] | None = None
        self._monitor: MonitorLink | None = None
        self._norm_median = RobustBaseline(window=64)
        self._healthy_loss = RobustBaseline(window=64)
        self.skipped_step: int | None = None
        self._patched: dict[str, Any] = {}

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, monitor: MonitorLink) -> None:
        """Wrap ``optimizer.step`` so an update can be skipped or clipped before it is applied."""
        self._monitor = monitor
        optimizer = monitor.optimizer
        # An LR scheduler may already have wrapped optimizer.step on the instance: keep it.
        self._patched = {"step": optimizer.__dict__["step"]} if "step" in optimizer.__dict__ else {}
        original = optimizer.step

        # wraps() keeps the marks an LR scheduler leaves on the step it wrapped.
        @functools.wraps(original)
        def guarded_step(*args: Any, **kwargs: Any):
            if self._before_update():
                return original(*args, **kwargs)
            return None

        optimizer.step = guarded_step
        if self.snapshot_dir is not None:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self._take_snapshot(step=0)

    def detach(self) -> None:
        if self._monitor is None:
            return
        optimizer = self._monitor.optimizer
        if self._patched:
            optimizer.step = self._patched["step"]
        else:
            del optimizer.step  # the class's step is visible again
        self._monitor = None

    # -- before each optimizer step ---------------------------------------------------------------
    def _before_update(self) -> bool:
        """Return False to skip this update."""
        if not (self.skip_nonfinite or self.clipping_on):
            return True
        mon = self._monitor
        index, grad_norms = mon.gradient_norms()  # the Monitor reuses these after the step
        if not index:
            return True
        norm = float(torch.linalg.vector_norm(grad_norms))  # one host read: decide now
        step = mon.step_count
        if not math.isfinite(norm):
            if self.skip_nonfinite:
                self.skipped_step = step
                self._act(step, "skip_update", {"grad_norm": norm})
                return False
            return True
        if self.clipping_on:
            limit = (
                self.clip_factor * self._norm_median.median()
                if len(self._norm_median)
                else math.inf
            )
            if norm > limit:
                mon.scale_gradients(index, limit / norm)
                self._act(step, "clip_gradient", {"grad_norm": norm, "clipped_to": limit})
                norm = limit
        self._norm_median.add(norm)
        return True

    # -- after each recorded step -----------------------------------------------------------------
    def after_step(self, record: Record, findings: list[Finding]) -> None:
        step = record.step
        kinds = {f.kind for f in findings}
        if self.spike_clipping and not self.clipping_on and "grad_norm_spike" in kinds:
            self.clipping_on = True
            self._act(step, "enable_spike_clipping", {"clip_factor": self.clip_factor})
        if not self.clipping_on and math.isfinite(record.values.get("grad_norm", math.nan)):
            self._norm_median.add(record.values["grad_norm"])
        if self.rollback and self._diverged(record, findings):
            if self.rollbacks < self.max_rollbacks and self._snapshot is not None:
                self._roll_back(step)
            return
        healthy = math.isfinite(record.values.get("loss", math.nan)) and not findings
        if healthy and step - (self.snapshot_step or 0) >= self.snapshot_every:
            self._take_snapshot(step)

    def _diverged(self, record: Record, findings: list[Finding]) -> bool:
        loss = record.values.get("loss", 0.0)
        if not math.isfinite(loss) or record.values.get("nonfinite_params"):
            return True
        base = self._healthy_loss
        if len(base) >= 8 and loss > self.divergence_ratio * abs(base.median()):
            return True
        if not findings:
            base.add(loss)
        return False

    # -- snapshots --------------------------------------------------------------------------------
    def _take_snapshot(self, step: int) -> None:
        mon = self._monitor
        state = {
            "step": step,
            "model": copy.deepcopy(mon.model.state_dict()),
            "optimizer": copy.deepcopy(mon.optimizer.state_dict()),
        }
        if self.snapshot_dir is not None:
            path = self.snapshot_dir / "last_good.pt"
            tmp = path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(path)  # atomic: a crash never leaves half a snapshot
            self._snapshot = {"path": str(path), "step": step}
        else:
            self._snapshot = state
        self.snapshot_step = step

    def load_snapshot(self) -> dict[str, Any]:
        """The last good state: ``{"step", "model", "optimizer"}``."""
        if self._snapshot is None:
            raise RuntimeError("no snapshot has been taken yet")
        if "path" in self._snapshot:
            return torch.load(self._snapshot["path"], weights_only=True)
        return self._snapshot

    def _roll_back(self, step: int) -> None:
        mon = self._monitor
        state = self.load_snapshot()
        old = [g["lr"] for g in mon.optimizer.param_groups]
        mon.model.load_state_dict(state["model"])
        mon.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        # Lower from the rate that diverged (not the snapshot's), so repeated rollbacks compound.
        for group, lr in zip(mon.optimizer.param_groups, old, strict=True):
            group["lr"] = lr * self.lr_factor
        if self.scheduler is not None and hasattr(self.scheduler, "base_lrs"):
            self.scheduler.base_lrs = [lr * self.lr_factor for lr in self.scheduler.base_lrs]
        self.rollbacks += 1
        mon.weights_replaced()
        self._act(
            step,
            "rollback",
            {
                "to_step": state["step"],
                "lr_before": old,
                "lr_after": [g["lr"] for g in mon.optimizer.param_groups],
            },
        )

    def _act(self, step: int, kind: str, detail: dict[str, Any]) -> None:
        self._monitor.record_action(step, kind, detail)
