"""The autopilot: routine recoveries, applied by the Monitor, each one written to the run store.

Policies (each can be switched off):
  * ``skip_nonfinite``: an optimizer step whose gradients hold NaN/Inf is not taken.
  * ``rollback``: after a divergence (non-finite loss or weights, or a loss above
    ``divergence_ratio`` times the best level it sustained), the model and optimizer are
    restored from the last good snapshot and the learning rate is multiplied by ``lr_factor``,
    in the scheduler's future too. At most ``max_rollbacks`` within ``rollback_window`` steps:
    a run that keeps diverging after that is not rolled back again (a logged message says so).
    A step the autopilot skipped is not rolled back: its update never reached the weights.
  * ``spike_clipping``: after a gradient-norm spike, every later step clips the global gradient
    norm to ``clip_factor`` times its running median, before the optimizer sees it.

**Acting before the update, inside any trainer.** The Monitor calls :meth:`Autopilot.before_update`
in the optimizer's pre-step path once the step's gradients are final (after a trainer's closure
has run its forward and backward, see :class:`~steadygrad.Monitor`). Nothing is patched and
nothing raises into the caller: the update always runs, and a skipped one is made a no-op
(:mod:`steadygrad.diagnose.skip_update`): on the device, without a host synchronisation, for
optimizers that take a ``found_inf`` flag (the fused torch optimizers); otherwise by restoring
the parameters and optimizer state after it, decided with one host read of the gradient norm.
Clipping multiplies the gradients by a device factor. Actions are written when the step is
recorded, from values that reach the host with the step's one transfer.

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
import logging
import math
import os
import pickle
import socket
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from steadygrad.core.checks import finite_float, non_negative_int, positive_int
from steadygrad.core.metrics import LOSS, NONFINITE_PARAMS
from steadygrad.diagnose.detectors.base import RobustBaseline
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE
from steadygrad.diagnose.detectors.trends import SustainedLevel
from steadygrad.diagnose.lr_backoff import back_off_learning_rate, keep_rates
from steadygrad.diagnose.skip_update import UpdateSkipper

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

    Args:
        scheduler: the LR scheduler (or a list of them) that snapshots keep and a back-off
            lowers too; the trainer callbacks fill in the trainer's own.
        rollback_window, max_rollbacks: at most this many rollbacks within this many steps.
        sync: how a skip is decided. ``None`` (default): on the device when the optimizer
            takes a ``found_inf`` flag (fused torch optimizers), else with one host read per
            step; ``True``: always with the host read.

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
        rollback_window: int = 500,
        clip_factor: float = 2.0,
        scheduler: Any = None,
        sync: bool | None = None,
    ) -> None:
        self.skip_nonfinite = bool(skip_nonfinite)
        self.rollback = bool(rollback)
        self.spike_clipping = bool(spike_clipping)
        self.snapshot_every = positive_int("snapshot_every", snapshot_every)
        self.snapshot_dir = None if snapshot_dir is None else Path(snapshot_dir)
        self.lr_factor = finite_float("lr_factor", lr_factor, low=0.0, high=1.0, low_open=True)
        self.divergence_ratio = finite_float("divergence_ratio", divergence_ratio, low=1.0)
        self.max_rollbacks = non_negative_int("max_rollbacks", max_rollbacks)
        self.rollback_window = positive_int("rollback_window", rollback_window)
        self.clip_factor = finite_float("clip_factor", clip_factor, low=0.0, low_open=True)
        if sync is not None and not isinstance(sync, bool):
            raise TypeError(f"sync must be None, True or False, got {sync!r}")
        self.sync = sync
        self.scheduler = scheduler
        self._monitor: MonitorLink | None = None
        self._skipper: UpdateSkipper | None = None
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
        self.rollback_steps: list[int] = []
        self.rollback_stopped = False
        self.lr_scale = 1.0  # the product of every back-off so far
        self._fresh_snapshot_due = False
        # decisions made before updates, settled when a step is recorded: (step, norm, limit)
        self._pending: list[tuple[int, torch.Tensor | float, float | None]] = []
        self._pending_host: list[float] | None = None  # their norms, from the step's transfer

    @property
    def schedulers(self) -> list[Any]:
        if self.scheduler is None:
            return []
        if isinstance(self.scheduler, list | tuple):
            return list(self.scheduler)
        return [self.scheduler]

    @property
    def attached(self) -> bool:
        """Whether this Autopilot is serving a run now (attached to an open Monitor)."""
        return self._monitor is not None

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, monitor: MonitorLink) -> None:
        """Get ready to act on ``monitor``'s optimizer (nothing is patched: the Monitor calls
        :meth:`before_update` and :meth:`after_update` from the optimizer's step hooks).

        Raises ``RuntimeError`` if this Autopilot already serves another run: give each run its
        own Autopilot (its rollbacks, clipping and snapshots belong to that run)."""
        if self._monitor is not None:
            raise RuntimeError(
                "this Autopilot is already attached to a Monitor that is still open; give each "
                "run its own Autopilot (or close the first Monitor before reusing it)"
            )
        self._reset()
        self._monitor = monitor
        self._skipper = UpdateSkipper(monitor.optimizer)
        if self.sync:
            self._skipper.device_side = False
        if self.snapshot_dir is not None:
            try:
                self.snapshot_dir.mkdir(parents=True, exist_ok=True)
                _remove_stale_temps(self.snapshot_dir)
            except OSError as exc:
                self._warn("snapshot", f"cannot use the snapshot directory: {exc}")
        self._take_snapshot(step=monitor.step_count)

    def detach(self) -> None:
        if self._skipper is not None:
            self._skipper.reset()
        self._monitor = None

    def optimizer_replaced(self) -> None:
        """The Monitor follows a new optimizer: skip its updates from now on."""
        self._skipper.reset()
        self._skipper = UpdateSkipper(self._monitor.optimizer)
        if self.sync:
            self._skipper.device_side = False

    # -- before each optimizer update ---------------------------------------------------------
    def before_update(self) -> None:
        """Decide on the gradients about to be applied: clip them, or make the update a no-op."""
        mon, skipper = self._monitor, self._skipper
        skipper.reset()  # what an update that never ran (a GradScaler overflow) left armed
        step = mon.step_count
        if self._fresh_snapshot_due:  # resumed: the state a trainer restored is in place now
            self._fresh_snapshot_due = False
            self._take_snapshot(step)
        if not (self.skip_nonfinite or self.spike_clipping):
            return
        index, grad_norms = mon.gradient_norms()  # the Monitor reuses these after the step
        if not index:
            return
        norm = torch.linalg.vector_norm(grad_norms)
        limit = None
        if self.clipping_on and len(self._norm_median):
            limit = self.clip_factor * self._norm_median.median()
            factor = torch.clamp(limit / norm, max=1.0)
            factor = torch.where(torch.isfinite(norm), factor, torch.ones_like(factor))
            mon.scale_gradients(index, factor)  # a device factor: no host read
        decided: torch.Tensor | float = norm
        if self.skip_nonfinite:
            if skipper.device_side:
                skipper.arm_device(~torch.isfinite(norm))
            else:
                decided = float(norm)  # the one host read of this path
                if not math.isfinite(decided):
                    skipper.arm_host()
        self._pending.append((step, decided, limit))

    def after_update(self) -> None:
        """From the optimizer's post-step hook: undo a skipped update / withdraw the flag."""
        if self._skipper is not None:
            self._skipper.after_update()

    # -- when a step is recorded ----------------------------------------------------------------
    def measure(self, out: Any) -> None:
        """Put the device norms of the pending decisions into the step's transfer
        (a :class:`~steadygrad.core.Measurements`), so settling them reads nothing more."""
        self._pending_host = None
        tensors = [n for _, n, _ in self._pending if isinstance(n, torch.Tensor)]
        if tensors:
            out.stash(self, torch.stack([t.detach().float().reshape(()) for t in tensors]))

    def received(self, norms: list[float]) -> None:
        """The stashed norms as host floats, after the step's transfer."""
        self._pending_host = list(norms)

    def settle(self, step: int, stepped: bool = True) -> bool:
        """Write the actions decided before the updates since the last recorded step (their
        norms reach the host now, after the step's transfer). Returns whether the autopilot
        skipped the update of ``step``."""
        self._skipper.reset()
        pending, self._pending = self._pending, []
        if not pending:
            return False
        tensors = [n for _, n, _ in pending if isinstance(n, torch.Tensor)]
        received, self._pending_host = self._pending_host, None
        if received is not None and len(received) == len(tensors):
            host = iter(received)  # they came with the step's one transfer
        else:
            host = iter(torch.stack([t.float() for t in tensors]).tolist() if tensors else ())
        skipped_now = False
        for at, norm, limit in pending:
            value = next(host) if isinstance(norm, torch.Tensor) else norm
            if not math.isfinite(value):
                # An update the optimizer did not run (a GradScaler overflow) was not ours.
                if self.skip_nonfinite and (stepped or at != step):
                    self.skipped_step = at
                    skipped_now = skipped_now or at == step
                    self._act(at, "skip_update", {"grad_norm": value})
                continue
            if limit is not None and value > limit:
                self._act(at, "clip_gradient", {"grad_norm": value, "clipped_to": limit})
                value = limit
            self._norm_median.add(value)
        return skipped_now

    # -- after each recorded step -----------------------------------------------------------------
    def after_step(self, record: Record, findings: list[Finding]) -> None:
        step = record.step
        kinds = {f.kind for f in findings}
        if self.spike_clipping and not self.clipping_on and GRAD_NORM_SPIKE in kinds:
            self.clipping_on = True
            self._act(step, "enable_spike_clipping", {"clip_factor": self.clip_factor})
        if self.rollback and self._diverged(record, findings):
            weights_ok = not record.values.get(NONFINITE_PARAMS.name)
            if self.skipped_step == step and weights_ok:
                return  # the update never reached the weights: nothing to roll back
            self._roll_back_if_allowed(step)
            return
        healthy = math.isfinite(record.values.get(LOSS.name, math.nan)) and not findings
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
            schedulers = [s.state_dict() for s in self.schedulers if hasattr(s, "state_dict")]
            if schedulers:
                state["scheduler"] = copy.deepcopy(schedulers)
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

    def _roll_back_if_allowed(self, step: int) -> None:
        if self.rollback_stopped or self._snapshot is None:
            return
        recent = [s for s in self.rollback_steps if step - s < self.rollback_window]
        if len(recent) >= self.max_rollbacks:
            self.rollback_stopped = True
            message = (
                f"steadygrad autopilot: the run diverged again at step {step} after "
                f"{len(recent)} rollbacks within {self.rollback_window} steps; rollback is "
                "switched off for the rest of the run (a cause that rolling back and a lower "
                "learning rate do not remove: see the diagnosis)"
            )
            log.warning(message)
            self._act(
                step,
                "rollback_stopped",
                {"rollbacks": len(recent), "window": self.rollback_window},
            )
            return
        self._roll_back(step)

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
        old = [float(g["lr"]) for g in mon.optimizer.param_groups]
        schedulers = [s for s in self.schedulers if hasattr(s, "state_dict")]
        scaler = getattr(mon, "scaler", None)
        restore_rates = keep_rates(mon.optimizer, self.schedulers)
        try:
            mon.model.load_state_dict(state["model"])
            mon.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
            for scheduler, saved in zip(schedulers, state.get("scheduler") or (), strict=False):
                scheduler.load_state_dict(copy.deepcopy(saved))  # back where the snapshot was
            if scaler is not None and state.get("scaler"):  # {} from a disabled scaler
                scaler.load_state_dict(copy.deepcopy(state["scaler"]))
        except Exception as exc:  # a snapshot that reads but does not fit this run
            self._warn("rollback", f"could not restore the snapshot at step {step}: {exc!r}")
            self._act(step, "rollback_failed", {"reason": repr(exc)})
            return
        # Lower from the rates that diverged (not the snapshot's), so repeated rollbacks
        # compound, and in the schedulers' future too, so their next step does not undo it.
        restore_rates()
        new = back_off_learning_rate(mon.optimizer, self.schedulers, self.lr_factor)
        self.lr_scale *= self.lr_factor
        self.rollbacks += 1
        self.rollback_steps.append(step)
        self._loss_level.values.clear()  # the diverged losses are behind us
        mon.weights_replaced()
        self._act(step, "rollback", {"to_step": state["step"], "lr_before": old, "lr_after": new})

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint carries: counters, switches and baselines (plain data). The
        snapshot is not carried: after a resume the checkpoint's weights are the good state."""
        return {
            "rollbacks": self.rollbacks,
            "rollback_steps": list(self.rollback_steps),
            "rollback_stopped": self.rollback_stopped,
            "lr_scale": self.lr_scale,
            "clipping_on": self.clipping_on,
            "skipped_step": self.skipped_step,
            "baselines": pickle.dumps((self._norm_median, self._loss_level)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rollbacks = int(state["rollbacks"])
        self.rollback_steps = [int(s) for s in state["rollback_steps"]]
        self.rollback_stopped = bool(state["rollback_stopped"])
        self.lr_scale = float(state["lr_scale"])
        self.clipping_on = bool(state["clipping_on"])
        self.skipped_step = state["skipped_step"]
        self._norm_median, self._loss_level = pickle.loads(state["baselines"])
        self._snapshot, self.snapshot_step, self._pending = None, None, []
        self._pending_host = None
        self._fresh_snapshot_due = True  # before the next update, from the restored state

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
