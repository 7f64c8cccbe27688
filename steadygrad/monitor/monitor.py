"""The Monitor: one line in a training loop, a flight recorder for the run.

Per recorded step it measures the loss, the learning rates, the gradient and weight norm of every
parameter, on a cadence the update-to-weight ratios and every leaf module's output RMS, plus
whatever extra :class:`~steadygrad.monitor.signals.Signal` objects it was given; all of a step's
values reach the host in one transfer. It hands one :class:`Record` per step to the detectors and
to the run store.
"""

from __future__ import annotations

import atexit
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from steadygrad.core import checks as _checks
from steadygrad.diagnose.detectors.base import Detector
from steadygrad.diagnose.detectors.training import default_detectors
from steadygrad.core.finding import Finding
from steadygrad.monitor.activations import ActivationHooks
from steadygrad.monitor.parameters import ParameterStats
from steadygrad.monitor.progress import ProgressLine
from steadygrad.core.record import Record
from steadygrad.core.signal import Signal
from steadygrad.store.writer import RunStore, resolve_run_dir

if TYPE_CHECKING:
    from steadygrad.diagnose.autopilot import Autopilot

ORDER_ERROR = (
    "steadygrad.Monitor: call mon.step(loss) after optimizer.step() (or after scaler.step() "
    "and scaler.update() with mixed precision), not before it. The update of a step can only "
    "be measured once the optimizer has applied it."
)


class Monitor:
    """Records a training run and watches it for instabilities.

    Call ``mon.step(loss)`` once per training step, **after** ``optimizer.step()``. Calling it
    before ``optimizer.step()`` raises a clear error at the first optimizer step.

    Args:
        model: the model being trained (it is not changed; hooks are removed by ``close()``).
        optimizer: its optimizer (step hooks tell a skipped step from a taken one).
        run_dir: directory for the run database; default ``runs/<date-time>``.
        every: record every ``every``-th step (1 = every step).
        update_every: measure update-to-weight ratios every this many steps.
        activation_every: measure leaf-module output RMS every this many steps.
        signals: extra :class:`Signal` objects (attention logits, curvature probes, ...).
        detectors: the detectors to run; default :func:`default_detectors`.
        progress: show a live status line; default: when stderr is a terminal.
        scaler: a ``torch.amp.GradScaler``, to record its scale.
        autopilot: recovery policies to apply (:class:`~steadygrad.Autopilot`); every action
            is written to the run store.

    Example:
        >>> mon = steadygrad.Monitor(model, optimizer, run_dir="runs/exp1")   # doctest: +SKIP
        >>> for x, y in batches:                                              # doctest: +SKIP
        ...     loss = loss_fn(model(x), y)
        ...     loss.backward()
        ...     optimizer.step()
        ...     mon.step(loss)
        ...     optimizer.zero_grad()
        >>> mon.close()                                                       # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        every: int = 1,
        name: str | None = None,
        config: Mapping[str, Any] | None = None,
        update_every: int = 10,
        activation_every: int = 25,
        signals: Iterable[Signal] = (),
        detectors: Sequence[Detector] | None = None,
        flush_every: int = 100,
        flush_seconds: float = 5.0,
        progress: bool | None = None,
        scaler: Any = None,
        guard_steps: int = 3,
        autopilot: Autopilot | None = None,
    ) -> None:
        self.model = _checks.module("model", model)
        self.optimizer = _checks.optimizer("optimizer", optimizer)
        self.every = _checks.positive_int("every", every)
        self.update_every = _checks.positive_int("update_every", update_every)
        self.activation_every = _checks.positive_int("activation_every", activation_every)
        self.guard_steps = _checks.non_negative_int("guard_steps", guard_steps)
        self.signals = list(signals)
        for s in self.signals:
            if not isinstance(s, Signal):
                raise TypeError(f"signals must hold Signal objects, got {type(s).__name__}")
        self.detectors = default_detectors() if detectors is None else list(detectors)
        for d in self.detectors:
            if not isinstance(d, Detector):
                raise TypeError(f"detectors must hold Detector objects, got {type(d).__name__}")
        self.params = ParameterStats(model)  # raises for a model without trainable parameters
        if run_dir is None:
            run_dir = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        run_dir = resolve_run_dir(run_dir)
        self.scaler = scaler
        self.activations = ActivationHooks(model)
        run_config = {
            "model": type(model).__name__,
            "optimizer": type(optimizer).__name__,
            "parameters": sum(p.numel() for p in self.params.params),
            "every": self.every,
            **dict(config or {}),
        }
        self.store = RunStore(
            run_dir, name, run_config, flush_every=flush_every, flush_seconds=flush_seconds
        )
        self.run_dir = self.store.run_dir
        from steadygrad.diagnose.autopilot import Autopilot  # the autopilot imports monitor parts

        if autopilot is not None and not isinstance(autopilot, Autopilot):
            raise TypeError(f"autopilot must be an Autopilot, got {type(autopilot).__name__}")
        self.autopilot = autopilot
        self.findings: list[Finding] = []
        self.actions: list[tuple[int, str, dict]] = []
        self.last_record: Record | None = None
        self.step_count = 0
        self.closed = False
        self._optimizer_steps = 0  # optimizer steps since the last mon.step()
        self._optimizer_steps_total = 0
        self._unstepped_calls = (
            0  # mon.step() calls with finite gradients before any optimizer step
        )
        self._guard_left = 0
        self._last_wall = time.perf_counter()
        self._handles = [
            optimizer.register_step_pre_hook(self._before_optimizer_step),
            optimizer.register_step_post_hook(self._after_optimizer_step),
        ]
        self._backward_hooks = self.params.trace_backward_order()
        for s in self.signals:
            s.attach(self)
        self.progress = ProgressLine(self.store.path.parent.name, enabled=progress)
        if self.autopilot is not None:
            self.autopilot.attach(self)
        self._prepare(0)
        atexit.register(self._at_exit)

    # -- the training loop's one call -----------------------------------------------------------
    def step(
        self,
        loss: torch.Tensor | float,
        batch_ids: Any = None,
        grad_norm_preclip: torch.Tensor | float | None = None,
    ) -> Record | None:
        """Close the current step: measure, detect, record. Returns the Record (None on steps
        that are not recorded because of ``every``).

        ``batch_ids``: the ids of the step's samples, kept with any finding at this step.
        ``grad_norm_preclip``: if you clip gradients, the norm before clipping (what
        ``clip_grad_norm_`` returns), so a spike that clipping hid is still seen.
        """
        self._check_open()
        step = self.step_count
        stepped = self._optimizer_steps
        self._optimizer_steps = 0
        if step % self.every:
            self.step_count += 1
            self._prepare(self.step_count)
            return None
        record = self._measure(step, _loss_tensor(loss), stepped == 0, grad_norm_preclip)
        if self.autopilot is not None and self.autopilot.skipped_step == step:
            record.meta["skipped_by"] = "autopilot"
        if batch_ids is not None:
            record.meta["batch_ids"] = batch_ids
        if self._backward_hooks and self.params.backward_order:
            for h in self._backward_hooks:
                h.remove()
            self._backward_hooks = []
        findings = self._detect(record, batch_ids)
        self.store.add_scalars(step, record.values, record.wall_time)
        if findings:
            self.store.add_findings(findings)
        self.progress.update(record, findings)
        if self.autopilot is not None:
            self.autopilot.after_step(record, findings)
        self.last_record = record
        self.step_count += 1
        self._prepare(self.step_count)
        return record

    def _measure(
        self, step: int, loss: torch.Tensor, skipped: bool, preclip: torch.Tensor | float | None
    ) -> Record:
        ps = self.params
        hooked = self.activations.installed
        self.activations.remove()
        grad_index, norms = ps.norms()
        parts: list[torch.Tensor] = [loss.detach().reshape(1).float(), norms]
        measure_update = ps.has_snapshot
        if measure_update:
            parts.append(ps.update_ratios())
        act = self.activations.tensor() if hooked else None
        if act is not None:
            parts.append(act)
        extra_names: list[str] = []
        host_values: dict[str, float] = {}
        due = [s for s in self.signals if s.due(step)]
        for s in due:
            s.end(step)
        for s in due:
            for name, value in s.collect(step).items():
                if isinstance(value, torch.Tensor):
                    extra_names.append(name)
                    parts.append(value.detach().reshape(1).float())
                else:
                    host_values[name] = float(value)
        if preclip is not None:
            extra_names.append("grad_norm_preclip")
            parts.append(_loss_tensor(preclip).detach().reshape(1).float().to(parts[0].device))
        scale = getattr(self.scaler, "_scale", None)
        if isinstance(scale, torch.Tensor):
            extra_names.append("amp_scale")
            parts.append(scale.detach().reshape(1).float())

        flat = _to_host(parts)  # the step's one transfer

        values: dict[str, float] = {"loss": flat[0]}
        meta: dict[str, Any] = {}
        k = 1
        names = ps.names
        bad_grads = []
        if grad_index:
            gn = flat[k : k + len(grad_index)]
            k += len(grad_index)
            values["grad_norm"] = math.sqrt(math.fsum(x * x for x in gn))
            for i, x in zip(grad_index, gn, strict=True):
                values[ps.keys["grad_norm"][i]] = x
                if not math.isfinite(x):
                    bad_grads.append(i)
        pn = flat[k : k + len(names)]
        k += len(names)
        values["param_norm"] = math.sqrt(math.fsum(x * x for x in pn))
        bad_params = [i for i, x in enumerate(pn) if not math.isfinite(x)]
        values.update(zip(ps.keys["param_norm"], pn, strict=True))
        if measure_update:
            values.update(zip(ps.keys["update_ratio"], flat[k : k + len(names)], strict=True))
            k += len(names)
        if act is not None:
            n_act = act.numel()
            rms, origin = self.activations.read(flat[k : k + n_act])
            k += n_act
            values.update(rms)
            if origin is not None:
                meta["forward_origin"] = origin
        for name, x in zip(extra_names, flat[k:], strict=True):
            values[name] = x
        values.update(host_values)
        for i, group in enumerate(self.optimizer.param_groups):
            values[f"lr/{group.get('name', i)}"] = float(group["lr"])

        # Unhealthy steps only: count the bad values and find where they were born.
        loss_bad = not math.isfinite(values["loss"])
        values["nonfinite_grads"] = float(sum(ps.nonfinite_counts(bad_grads))) if bad_grads else 0.0
        values["nonfinite_params"] = (
            float(sum(_count_nonfinite(ps.params[i]) for i in bad_params)) if bad_params else 0.0
        )
        if bad_grads and not loss_bad:
            first = ps.first_in_backward(bad_grads)
            meta["backward_origin"] = {
                "parameter": names[first],
                "grad_norm": values[f"grad_norm/{names[first]}"],
            }
        if bad_params:
            meta["nonfinite_parameters"] = [names[i] for i in bad_params]
        unhealthy = loss_bad or bad_grads or bad_params
        if unhealthy and not hooked:
            self._guard_left = self.guard_steps  # localise the producer on the next steps
        elif hooked and "forward_origin" in meta:
            self._guard_left = 0

        if skipped:
            if self._optimizer_steps_total == 0 and not unhealthy:
                self._unstepped_calls += 1
            values["optimizer_skipped"] = 1.0
            meta["skipped"] = True
        now = time.perf_counter()
        values["step_time"] = now - self._last_wall
        self._last_wall = now
        return Record(step=step, values=values, meta=meta, wall_time=time.time())

    def _detect(self, record: Record, batch_ids: Any) -> list[Finding]:
        findings: list[Finding] = []
        for detector in self.detectors:
            findings.extend(detector.update(record))
        if findings and batch_ids is not None:
            ids = _plain_ids(batch_ids)
            findings = [_with_ids(f, ids) for f in findings]
        self.findings.extend(findings)
        return findings

    def _prepare(self, step: int) -> None:
        """Set up the measurements of ``step`` before its forward pass."""
        self.params.forget_cached_grad_norms()  # a cache never outlives its step
        if step % self.every:
            return
        guard = self._guard_left > 0
        if guard:
            self._guard_left -= 1
        if guard or step % self.activation_every == 0:
            self.activations.install()
        if step % self.update_every == 0:
            self.params.take_snapshot()
        for s in self.signals:
            if s.due(step):
                s.begin(step)

    def record_action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        """Write an action taken on the run (by the autopilot, or by you) to the store."""
        self.actions.append((step, kind, dict(detail)))
        self.store.add_action(step, kind, detail)
        self.progress.action(step, kind, detail)

    # -- optimizer hooks ------------------------------------------------------------------------
    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        if self._optimizer_steps_total == 0 and self._unstepped_calls:
            raise RuntimeError(ORDER_ERROR)

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        self._optimizer_steps += 1
        self._optimizer_steps_total += 1

    # -- life cycle -------------------------------------------------------------------------------
    def close(self, status: str = "finished") -> None:
        """Remove every hook, flush, and mark the run ``status``. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self.autopilot is not None:
            self.autopilot.detach()
        for h in self._handles + self._backward_hooks:
            h.remove()
        self._handles, self._backward_hooks = [], []
        self.activations.remove()
        for s in self.signals:
            s.detach()
        self.progress.close()
        self.store.close(status)
        atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        # The interpreter is exiting with the monitor still open: keep what was measured.
        self.close("interrupted")

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this Monitor is closed; create a new one to record another run")

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close("finished")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.close("interrupted")
        else:
            self.close("crashed")


@contextmanager
def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    run_dir: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Iterator[Monitor]:
    """A :class:`Monitor` as a context manager: hooks removed and the run closed on exit.

    Example:
        >>> with steadygrad.watch(model, optimizer, "runs/exp1") as mon:   # doctest: +SKIP
        ...     for x, y in batches:
        ...         loss = loss_fn(model(x), y); loss.backward()
        ...         optimizer.step(); mon.step(loss); optimizer.zero_grad()
    """
    monitor = Monitor(model, optimizer, run_dir, **kwargs)
    with monitor:
        yield monitor


def _loss_tensor(loss: torch.Tensor | float) -> torch.Tensor:
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"loss must be a scalar, got a tensor of shape {tuple(loss.shape)}")
        return loss
    if isinstance(loss, int | float) and not isinstance(loss, bool):
        return torch.tensor(float(loss))
    raise TypeError(f"loss must be a tensor or a number, got {type(loss).__name__}")


def _to_host(parts: list[torch.Tensor]) -> list[float]:
    """Concatenate and move to the host: one transfer per device (one in the usual case)."""
    devices = {p.device for p in parts}
    if len(devices) == 1:
        return torch.cat(parts).tolist()
    return torch.cat([p.cpu() for p in parts]).tolist()


def _count_nonfinite(t: torch.Tensor) -> int:
    return int((~torch.isfinite(t.detach())).sum())


def _plain_ids(batch_ids: Any) -> list[Any]:
    if isinstance(batch_ids, torch.Tensor):
        return batch_ids.detach().cpu().reshape(-1).tolist()
    if isinstance(batch_ids, str | bytes):
        return [batch_ids]
    try:
        return [x.item() if isinstance(x, torch.Tensor) else x for x in batch_ids]
    except TypeError:
        return [batch_ids]


def _with_ids(finding: Finding, ids: list[Any]) -> Finding:
    from dataclasses import replace

    return replace(finding, batch_ids=ids)
