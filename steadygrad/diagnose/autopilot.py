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
``snapshot_dir`` (``torch.save``; they load with ``torch.load(..., weights_only=True)``). A
snapshot holds the model, the optimizer, and the LR scheduler's and the GradScaler's state when
they are given; a rollback restores them all. On disk the last two are kept (``last_good.pt``,
``previous_good.pt``), each written under a temporary name and renamed, so a kill never leaves
half a snapshot. Snapshot faults never stop training: a failed write keeps the previous
snapshots; a missing or unreadable snapshot at rollback time falls back to the previous one,
or the rollback is skipped; each is said (a warning and an action in the run).

An Autopilot serves one run at a time: attaching it to a second Monitor while the first is open
raises; attached again after that run closed, it starts afresh (no state carries over).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import os
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from steadygrad.core.checks import finite_float, non_negative_int, positive_int
from steadygrad.core.metrics import LOSS, NONFINITE_PARAMS
from steadygrad.diagnose.detectors.base import RobustBaseline
from steadygrad.diagnose.detectors.trends import SustainedLevel

if TYPE_CHECKING:
    from steadygrad.core import Finding, Record

log = logging.getLogger("steadygrad")

SNAPSHOT_FILES = ("last_good.pt", "previous_good.pt")  # newest first
TEMP_SUFFIX = ".tmp"


class MonitorLink(Protocol):
    """What the autopilot needs of the Monitor it is attached to, and nothing more."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step_count: int
    scaler: Any  # a torch.amp.GradScaler, or None

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
        self._monitor: MonitorLink | None = None
        self._patched: dict[str, Any] = {}
        self._reset()

    def _reset(self) -> None:
        """The state of one run: nothing of a previous run carries over."""
        self.rollbacks = 0
        self.clipping_on = False
        self.snapshot_step: int | None = None
        self._snapshot_tried = 0
        self._snapshot: dict[str, Any] | None = None
        self._norm_median = RobustBaseline(window=64)
        self._loss_level = SustainedLevel(window=3)
        self.skipped_step: int | None = None
        self._warned: set[str] = set()
        self._written = 0  # snapshots this run wrote to disk (older files are another run's)

    @property
    def attached(self) -> bool:
        """Whether this Autopilot is serving a run now (attached to an open Monitor)."""
        return self._monitor is not None

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, monitor: MonitorLink) -> None:
        """Wrap ``optimizer.step`` so an update can be skipped or clipped before it is applied.

        Raises ``RuntimeError`` if this Autopilot already serves another run: give each run its
        own Autopilot (its rollbacks, clipping and snapshots belong to that run)."""
        if self._monitor is not None:
            raise RuntimeError(
                "this Autopilot is already attached to a Monitor that is still open; give each "
                "run its own Autopilot (or close the first Monitor before reusing it)"
            )
        self._reset()
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
            try:
                self.snapshot_dir.mkdir(parents=True, exist_ok=True)
                _remove_stale_temps(self.snapshot_dir)
            except OSError as exc:
                self._warn("snapshot", f"cannot use the snapshot directory: {exc}")
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
        if healthy and step - self._snapshot_tried >= self.snapshot_every:
            self._take_snapshot(step)

    def _diverged(self, record: Record, findings: list[Finding]) -> bool:
        """Non-finite, or the loss's short running median ``divergence_ratio`` times above the
        best level it sustained (a slow climb counts: the level does not follow it)."""
        loss = record.values.get(LOSS.name, 0.0)
        if not math.isfinite(loss) or record.values.get(NONFINITE_PARAMS.name):
            return True
        level = self._loss_level
        level.add(loss, record.step)
        floor = abs(level.floor)
        ratio = self.divergence_ratio
        return math.isfinite(floor) and (level.current > ratio * floor or loss > ratio**2 * floor)

    # -- snapshots --------------------------------------------------------------------------------
    def _take_snapshot(self, step: int) -> None:
        """Keep the state of this healthy step; a fault keeps the previous snapshots."""
        mon = self._monitor
        self._snapshot_tried = step  # a failed one is tried again snapshot_every steps later
        try:
            state = {
                "step": step,
                "model": copy.deepcopy(mon.model.state_dict()),
                "optimizer": copy.deepcopy(mon.optimizer.state_dict()),
            }
            if self.scheduler is not None and hasattr(self.scheduler, "state_dict"):
                state["scheduler"] = copy.deepcopy(self.scheduler.state_dict())
            scaler = getattr(mon, "scaler", None)
            if scaler is not None and hasattr(scaler, "state_dict"):
                state["scaler"] = copy.deepcopy(scaler.state_dict())
            if self.snapshot_dir is not None:
                self._write_snapshot(state)
                self._written += 1
                self._snapshot = {"path": str(self.snapshot_dir / SNAPSHOT_FILES[0]), "step": step}
            else:
                self._snapshot = state
        except Exception as exc:  # disk full, out of memory, unpicklable state: never fatal
            kept = "the previous snapshot is kept" if self._snapshot else "no snapshot yet"
            self._warn("snapshot", f"could not take a snapshot at step {step} ({exc}); {kept}")
            return
        self.snapshot_step = step

    def _write_snapshot(self, state: dict[str, Any]) -> None:
        last, previous = (self.snapshot_dir / f for f in SNAPSHOT_FILES)
        temp = self.snapshot_dir / f".{last.name}.{socket.gethostname()}.{os.getpid()}{TEMP_SUFFIX}"
        try:
            torch.save(state, temp)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        if last.exists():
            os.replace(last, previous)  # the one before stays as a fallback
        os.replace(temp, last)  # atomic: a kill never leaves half a snapshot

    def load_snapshot(self) -> dict[str, Any]:
        """The last good state that can be read: ``{"step", "model", "optimizer"}`` (and
        ``"scheduler"``, ``"scaler"`` when given). On disk, an unreadable last snapshot falls
        back to the one before it; ``RuntimeError`` if none can be read."""
        if self._snapshot is None:
            raise RuntimeError("no snapshot has been taken yet")
        if "path" not in self._snapshot:
            return self._snapshot
        problems = []
        for name in SNAPSHOT_FILES[: self._written]:
            path = self.snapshot_dir / name
            try:
                state = torch.load(path, weights_only=True)
                if not {"step", "model", "optimizer"} <= set(state):
                    raise ValueError("it is not a steadygrad snapshot")
                return state
            except Exception as exc:  # missing, truncated, corrupt: try the one before
                problems.append(f"{path}: {exc}")
        raise RuntimeError("no readable snapshot: " + "; ".join(problems))

    def _roll_back(self, step: int) -> None:
        mon = self._monitor
        try:
            state = self.load_snapshot()
        except RuntimeError as exc:
            self._warn("rollback", f"could not roll back at step {step}: {exc}")
            self._act(step, "rollback_failed", {"reason": str(exc)})
            return
        if self.snapshot_dir is not None and state["step"] != self._snapshot["step"]:
            self._warn(
                "fallback",
                f"the last snapshot could not be read; rolled back to step {state['step']}",
            )
        old = [g["lr"] for g in mon.optimizer.param_groups]
        scheduler, scaler = self.scheduler, getattr(mon, "scaler", None)
        old_base = list(getattr(scheduler, "base_lrs", []))
        try:
            mon.model.load_state_dict(state["model"])
            mon.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
            if scheduler is not None and "scheduler" in state:
                scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
            if scaler is not None and state.get("scaler"):  # {} from a disabled scaler
                scaler.load_state_dict(copy.deepcopy(state["scaler"]))
        except Exception as exc:  # a snapshot that reads but does not fit this run
            self._warn("rollback", f"could not restore the snapshot at step {step}: {exc!r}")
            self._act(step, "rollback_failed", {"reason": repr(exc)})
            return
        # Lower from the rate that diverged (not the snapshot's), so repeated rollbacks compound.
        for group, lr in zip(mon.optimizer.param_groups, old, strict=True):
            group["lr"] = lr * self.lr_factor
        if old_base:
            scheduler.base_lrs = [lr * self.lr_factor for lr in old_base]
        self.rollbacks += 1
        self._loss_level.values.clear()  # the diverged losses are behind us
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

    def _warn(self, what: str, message: str) -> None:
        """Log every time; a Python warning once per kind of trouble and run."""
        message = f"steadygrad autopilot: {message}; training goes on"
        log.warning(message)
        if what not in self._warned:
            self._warned.add(what)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _act(self, step: int, kind: str, detail: dict[str, Any]) -> None:
        self._monitor.record_action(step, kind, detail)


def _remove_stale_temps(snapshot_dir: Path) -> None:
    """Remove temporary snapshot files whose writer (on this host) is gone."""
    from steadygrad.store.run import _writer_alive

    host = socket.gethostname()
    for temp in snapshot_dir.glob(f".*{TEMP_SUFFIX}"):
        owner_host, _, pid = temp.name[: -len(TEMP_SUFFIX)].rpartition(".")
        owner_host = owner_host.partition(".pt.")[2]
        if owner_host == host and pid.isdigit() and not _writer_alive(int(pid), host):
            with contextlib.suppress(OSError):
                temp.unlink()
