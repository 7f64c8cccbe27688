"""The autopilot: routine recoveries, applied by the Monitor, each one written to the run store.

Policies (each can be switched off):
  * ``skip_nonfinite``: an optimizer step whose gradients hold NaN/Inf is not taken.
  * ``rollback``: after a divergence (non-finite loss or weights, or a loss above
    ``divergence_ratio`` times the median of the recent healthy losses), the model and
    optimizer are restored from the last good snapshot and the learning rate is multiplied by
    ``lr_factor``, in the scheduler's future too. At most ``max_rollbacks`` within
    ``rollback_window`` steps: a run that keeps diverging after that is not rolled back again
    (a logged message says so). A step the autopilot skipped is not rolled back: its update
    never reached the weights.
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
``snapshot_dir`` (``torch.save``; they load with ``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import copy
import logging
import math
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from steadygrad.core.checks import finite_float, non_negative_int, positive_int
from steadygrad.core.metrics import LOSS, NONFINITE_PARAMS
from steadygrad.diagnose.detectors.base import RobustBaseline
from steadygrad.diagnose.detectors.training import GRAD_NORM_SPIKE
from steadygrad.diagnose.detectors.trends import SustainedLevel
from steadygrad.diagnose.lr_backoff import back_off_learning_rate
from steadygrad.diagnose.skip_update import UpdateSkipper

if TYPE_CHECKING:
    from steadygrad.core import Finding, Record

logger = logging.getLogger("steadygrad")


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

    Args:
        scheduler: the LR scheduler (or a list of them) whose future rates a back-off must
            lower too; the trainer callbacks fill in the trainer's own.
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
        self.rollbacks = 0
        self.rollback_steps: list[int] = []
        self.rollback_stopped = False
        self.lr_scale = 1.0  # the product of every back-off so far
        self.clipping_on = False
        self.snapshot_step: int | None = None
        self.skipped_step: int | None = None
        self._snapshot: dict[str, Any] | None = None
        self._monitor: MonitorLink | None = None
        self._skipper: UpdateSkipper | None = None
        self._norm_median = RobustBaseline(window=64)
        self._loss_level = SustainedLevel(window=3)
        # decisions made before updates, settled when a step is recorded: (step, norm, limit)
        self._pending: list[tuple[int, torch.Tensor | float, float | None]] = []

    @property
    def schedulers(self) -> list[Any]:
        if self.scheduler is None:
            return []
        if isinstance(self.scheduler, list | tuple):
            return list(self.scheduler)
        return [self.scheduler]

    # -- wiring ----------------------------------------------------------------------------------
    def attach(self, monitor: MonitorLink) -> None:
        """Get ready to act on ``monitor``'s optimizer (nothing is patched)."""
        self._monitor = monitor
        self._skipper = UpdateSkipper(monitor.optimizer)
        if self.sync:
            self._skipper.device_side = False
        if self.snapshot_dir is not None:
            self.snapshot_dir.mkdir(parents=True, exist_ok=True)

    def detach(self) -> None:
        if self._skipper is not None:
            self._skipper.reset()
        self._monitor = None

    # -- before each optimizer update ---------------------------------------------------------
    def before_update(self) -> None:
        """Decide on the gradients about to be applied: clip them, or make the update a no-op."""
        mon, skipper = self._monitor, self._skipper
        skipper.reset()  # what an update that never ran (a GradScaler overflow) left armed
        step = mon.step_count
        if self.rollback and self._snapshot is None:
            self._take_snapshot(step)  # the state before the first update we watch
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
    def settle(self, step: int, stepped: bool = True) -> bool:
        """Write the actions decided before the updates since the last recorded step (their
        norms reach the host now, after the step's transfer). Returns whether the autopilot
        skipped the update of ``step``."""
        self._skipper.reset()
        pending, self._pending = self._pending, []
        if not pending:
            return False
        tensors = [n for _, n, _ in pending if isinstance(n, torch.Tensor)]
        host = iter(torch.stack([t.float() for t in tensors]).tolist()) if tensors else iter(())
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
        if self.rollback and healthy and step - (self.snapshot_step or 0) >= self.snapshot_every:
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
            logger.warning(message)
            self._act(
                step,
                "rollback_stopped",
                {"rollbacks": len(recent), "window": self.rollback_window},
            )
            return
        self._roll_back(step)

    def _roll_back(self, step: int) -> None:
        mon = self._monitor
        optimizer = mon.optimizer
        state = self.load_snapshot()
        old = [float(g["lr"]) for g in optimizer.param_groups]
        # The schedule goes on from where it is: only weights and optimizer moments go back.
        rates = [
            {k: v for k, v in g.items() if k == "lr" or k.endswith("_lr")}
            for g in optimizer.param_groups
        ]
        mon.model.load_state_dict(state["model"])
        optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        for group, kept in zip(optimizer.param_groups, rates, strict=True):
            group.update(kept)
        # Lower from the rate that diverged, so repeated rollbacks compound, and in the
        # schedulers' future too, so the next scheduler step does not undo it.
        new = back_off_learning_rate(optimizer, self.schedulers, self.lr_factor)
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

    def _act(self, step: int, kind: str, detail: dict[str, Any]) -> None:
        self._monitor.record_action(step, kind, detail)
