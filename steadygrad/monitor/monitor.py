"""The Monitor: one line in a training loop, a flight recorder for the run.

It is the loop that asks the due signals for their values, moves all of a step's values to the
host in one transfer, and hands the resulting :class:`~steadygrad.core.Record` to the detectors,
the run store and any sinks. Everything it measures is a :class:`~steadygrad.core.Signal`: the
built-in ones (loss, learning rates, parameter statistics, activations, AMP scale) come first,
then the ones the user passes.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from steadygrad.core import Finding, Measurements, Record, RunInfo, Signal, Sink, Values
from steadygrad.core import checks as _checks
from steadygrad.core.metrics import (
    DEAD_UNITS,
    FINISHED_LATE,
    INPUT_RESIZED,
    LOOK_CLOSER,
    LOSS,
    NONFINITE_GRADS,
    NONFINITE_PARAMS,
    OBJECTIVE_CHANGED,
    OPTIMIZER_FAMILY,
    OPTIMIZER_REPLACED,
    PARAM_GROUPS,
    PARAMETER_COUNT,
    RECURRENT_MODULES,
    SCALAR_PARAMETERS,
)
from steadygrad.core.optimizer import (
    AVERAGES_ITERATES,
    FIRST_MOMENT_DECAY,
    SECOND_MOMENT_DECAY,
    averages_iterates,
    first_moment_decay,
    optimizer_family,
    second_moment_decay,
    unwrap_optimizer,
)
from steadygrad.core.signal import Staging
from steadygrad.diagnose.autopilot import Autopilot
from steadygrad.diagnose.detectors import Detector, default_detectors
from steadygrad.monitor.activations import ActivationSignal, builtin_recurrent
from steadygrad.monitor.attention_logits import AttentionLogitSignal
from steadygrad.monitor.clipping import ClipWatch
from steadygrad.monitor.dead_units import DeadUnitSignal
from steadygrad.monitor.distributed import NullStore, Reducer
from steadygrad.monitor.findings_log import LoggingSink
from steadygrad.monitor.input_size import InputSizeSignal
from steadygrad.monitor.intercept import InterceptingSignal
from steadygrad.monitor.output_layer import OutputLayerSignal
from steadygrad.monitor.output_logits import OutputHook
from steadygrad.monitor.outputs import CrossEntropyOutputSignal
from steadygrad.monitor.parameters import ParameterSignal
from steadygrad.monitor.plasticity import PlasticitySignal
from steadygrad.monitor.progress import ProgressLine
from steadygrad.monitor.state import (
    FORMAT,
    STATE_FILE,
    load_objects_state,
    load_state,
    objects_state,
    save_state,
)
from steadygrad.monitor.step import (
    AmpScaleSignal,
    LearningRateSignal,
    StepInputs,
    StepSignal,
    group_members,
)
from steadygrad.monitor.tasks import TaskRestarts
from steadygrad.monitor.update_curvature import UpdateCurvatureSignal
from steadygrad.nn.qk_norm import qk_norm_targets
from steadygrad.store.writer import RunStore, remove_run, resolve_run_dir

log = logging.getLogger("steadygrad")

# Models with more parameter tensors than this store their per-tensor series (gradient and
# weight norms, update ratios per tensor) every PER_TENSOR_STORE_EVERY recorded steps, and on
# steps with a finding or a non-finite value; global values are stored every step. Detectors and
# sinks still see every step's per-tensor values. (5,000 tensors write ~440 KB per step else.)
MANY_TENSORS = 1000
PER_TENSOR_STORE_EVERY = 50
# The mechanism signals visit every module call of a due step (tens of microseconds of Python
# each, whatever the module computes), so their default cadence stretches with the module
# count: every ACTIVATION_EVERY steps per MANY_MODULES modules begun (a 2,500-module model
# reads every 75 steps). Guard steps and closer looks after a finding still read at once.
ACTIVATION_EVERY = 25
MANY_MODULES = 1000
# Steps after a finding (or a reading a signal flags with ``LOOK_CLOSER``) at which the
# mechanism signals read, whatever their cadence: enough for a detector's patience of 3 readings.
CLOSER_LOOK = 3
# Recorded steps after a non-finite value that are finished at once, not deferred: the signals
# trace its origin from the live model and gradients of the step they describe.
SYNCHRONOUS_AFTER_NONFINITE = 10
# Set to 0 or 1: the default of Monitor(defer=...) (see there).
DEFER_ENV = "STEADYGRAD_DEFER"

# Set (to anything) in the test suite and the scenario bench: a failure inside the Monitor's own
# measurements raises there, as the bug it is; in a user's run it warns and the run carries on.
STRICT_ENV = "STEADYGRAD_STRICT"

ORDER_ERROR = (
    "steadygrad.Monitor: call mon.step(loss) after optimizer.step() (or after scaler.step() "
    "and scaler.update() with mixed precision), not before it. The update of a step can only "
    "be measured once the optimizer has applied it."
)

MICRO_BATCHES = (
    "mon.step was called before the optimizer's first step, and a backward pass ran after it: "
    "on every micro-batch of a gradient accumulation? The Monitor records each call as a step, "
    "those without an optimizer step as skipped ones; to record optimizer steps only, call "
    "mon.step(loss) once per optimizer step, after it."
)


# Recorded steps between checks that the model's parameters are still those attached to (one
# pass over them: a module assigned in place of one, a layer unfrozen, after attach).
MODEL_CHECK_EVERY = 100


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
        activation_every: measure leaf-module output RMS every this many steps; default 25,
            and 25 per 1,000 modules begun on bigger models (see ``MANY_MODULES``).
        signals: extra :class:`~steadygrad.core.Signal` objects (curvature probes, ...).
        mechanisms: also watch, every ``activation_every`` steps, what the diagnosis needs to
            name a mechanism: the output logits and softmax collapse at the loss
            (``F.cross_entropy``), attention logits (SDPA and ``nn.MultiheadAttention``) and dead
            ReLU units per layer. Those that do not apply to the model stay off (the run's
            config says which). A signal passed in ``signals`` that records the same metrics
            replaces the default one.
        detectors: the detectors to run; default :func:`default_detectors`.
        sinks: extra :class:`~steadygrad.core.Sink` objects fed every record live (TensorBoard,
            W&B, MLflow, ...); the run store is always written.
        progress: show a live status line; default: when stderr is a terminal.
        scaler: a ``torch.amp.GradScaler``, to record its scale.
        autopilot: recovery policies to apply (:class:`~steadygrad.Autopilot`); every action
            is written to the run store.
        defer: finish each recorded step at the next ``mon.step`` call, while the device runs
            that step: no synchronisation of a GPU at all (the step's values reach the host
            through pinned memory, behind the work queued before them). Findings and the
            Record then arrive one step late. Default: on when the model is on a GPU and no
            autopilot acts (the autopilot's decisions need the step's values at once); the
            environment variable ``STEADYGRAD_DEFER=0`` (or ``1``) changes the default.
            Steps after a non-finite value are finished at once, so its origin is traced.
        resume: continue the run already in ``run_dir`` (its steps go on from where it
            stopped, its detectors keep their history); a new run if there is none.
        overwrite: replace the run already in ``run_dir``. Without ``resume`` or
            ``overwrite``, an existing run is an error.

    The optimizer may be wrapped by accelerate (``AcceleratedOptimizer``) or Lightning
    (``LightningOptimizer``): the Monitor watches the optimizer inside. Findings of warning
    level and above are logged (logger ``steadygrad``), critical ones also warned.

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
        activation_every: int | None = None,
        signals: Iterable[Signal] = (),
        mechanisms: bool = True,
        detectors: Sequence[Detector] | None = None,
        sinks: Iterable[Sink] = (),
        flush_every: int = 100,
        flush_seconds: float = 5.0,
        progress: bool | None = None,
        scaler: Any = None,
        guard_steps: int = 3,
        autopilot: Autopilot | None = None,
        defer: bool | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.model = _checks.initialised("model", _checks.module("model", model))
        optimizer = unwrap_optimizer(optimizer)  # accelerate's and Lightning's wrappers
        self.optimizer = _checks.optimizer("optimizer", optimizer)
        if resume and overwrite:
            raise ValueError(
                "resume and overwrite exclude each other: continue the run, or replace it"
            )
        self.every = _checks.positive_int("every", every)
        self.parameters = ParameterSignal(update_every)
        if activation_every is None:
            modules = sum(1 for _ in self.model.modules())
            activation_every = ACTIVATION_EVERY * math.ceil(modules / MANY_MODULES)
        builtin = [
            StepSignal(),
            LearningRateSignal(),
            self.parameters,
            ActivationSignal(activation_every, guard_steps),
            UpdateCurvatureSignal(every=activation_every),
            OutputLayerSignal(),
            InputSizeSignal(),
        ]
        if scaler is not None:
            builtin.append(AmpScaleSignal(scaler))
        self.reducer = Reducer.for_process()  # None unless torch.distributed has >1 process
        if self.reducer is not None:
            builtin.append(self.reducer)
        writes = self.reducer is None or self.reducer.writes  # one process writes the run
        extra = _all_of("signals", signals, Signal)
        if mechanisms:
            builtin += _mechanism_signals(activation_every, extra)
        self.detectors = (
            default_detectors() if detectors is None else _all_of("detectors", detectors, Detector)
        )
        self._task_restarts = TaskRestarts(self.detectors)  # a new task: new baselines
        self.sinks = _all_of("sinks", sinks, Sink) if writes else []
        # always on: findings reach logging and warnings, each with what its kind means
        kinds = [k for d in self.detectors for k in d.emits]
        self.findings_log = LoggingSink(kinds=kinds) if writes else Sink()  # one process logs
        if autopilot is not None and not isinstance(autopilot, Autopilot):
            raise TypeError(f"autopilot must be an Autopilot, got {type(autopilot).__name__}")
        if autopilot is not None and autopilot.attached:
            autopilot.attach(self)  # raises the clear error before anything is hooked
        self.autopilot = autopilot
        self.scaler = scaler
        self.defer = _defers(defer, self.model, autopilot)
        self._pending: _Pending | None = None  # a step measured, finished at the next call
        self._staging = Staging()  # pinned memory the values of a GPU step are copied into
        self._in_step_until = -1  # after a non-finite value, steps are finished at once to here
        self.signals: list[Signal] = []
        self._core_signals = builtin[:3]  # the step, learning rates and parameter statistics
        if self.reducer is not None:  # switched off on one rank, the others would hang
            self._core_signals.append(self.reducer)
        for s in builtin + extra:
            s.attach(self)  # the parameter signal raises for a model without parameters
            self.signals.append(s)
        switched = {type(s).__name__: s.applies() for s in self.signals}
        run_config = {
            "model": type(model).__name__,
            "optimizer": type(optimizer).__name__,
            OPTIMIZER_FAMILY: optimizer_family(optimizer),
            SECOND_MOMENT_DECAY: second_moment_decay(optimizer),
            FIRST_MOMENT_DECAY: first_moment_decay(optimizer),
            AVERAGES_ITERATES: averages_iterates(optimizer),
            "add_qk_norm_applies": bool(qk_norm_targets(model)),
            RECURRENT_MODULES: builtin_recurrent(model),
            PARAM_GROUPS: group_members(self.optimizer, self.parameters.stats.named),
            PARAMETER_COUNT: sum(p.numel() for p in self.parameters.stats.params),
            SCALAR_PARAMETERS: [n for n, p in self.parameters.stats.named if p.numel() == 1],
            "every": self.every,
            "activation_every": activation_every,
            "signals": {k: "on" if v is True else f"off: {v}" for k, v in switched.items()},
            **dict(config or {}),
        }
        if run_dir is None:
            run_dir = Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        run_dir = resolve_run_dir(run_dir)
        if overwrite and writes:
            remove_run(run_dir)
            (run_dir / STATE_FILE).unlink(missing_ok=True)
        try:
            store = RunStore if writes else NullStore  # one process writes the run
            self.store = store(
                run_dir,
                name,
                run_config,
                flush_every=flush_every,
                flush_seconds=flush_seconds,
                resume=bool(resume),
            )
        except BaseException:  # e.g. an existing run: leave the model as it was given
            for s in self.signals:
                s.detach()
            raise
        self.run_dir = self.store.run_dir
        self.metrics = {m.name: m for s in self.signals for m in s.metrics}
        self.store.declare(self.metrics.values())
        many = len(self.parameters.stats.params) > MANY_TENSORS
        self._sparse_families = (
            {m.name for m in self.metrics.values() if m.per == "parameter"} if many else set()
        )
        info = RunInfo(self.store.name, self.run_dir, run_config, list(self.metrics.values()))
        self._to_sinks("open", info)
        self.findings: list[Finding] = []
        self._previous_ids: tuple[int | None, Any] = (None, None)  # the last step's batch ids
        self.actions: list[tuple[int, str, dict]] = []
        self.last_record: Record | None = None
        self.inputs: StepInputs | None = None
        self.step_count = 0
        self.closed = False
        self._optimizer_steps = 0  # optimizer steps since the last mon.step()
        self._optimizer_steps_total = 0
        self._unstepped_calls = 0  # mon.step() calls with finite gradients before any step
        self._warned: set[str] = set()
        self._closer_until = -1  # after a finding, the mechanism signals read every step to here
        self._closer: list[Signal] = []  # signals due at this step for that reason
        self._handles = self._hook_optimizer(optimizer)
        # another optimizer that steps the watched one's parameters (one rebuilt on resume):
        # seen by a process-wide hook, followed once the watched one stops stepping
        self._others: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._stepping_instead: weakref.ref | None = None
        self._global_hook = register_optimizer_step_pre_hook(self._any_optimizer_step)
        # the norm the loop's clip_grad_norm_ saw before clipping, if it clips
        self._clips = ClipWatch(self.parameters.stats.params)
        self.progress = ProgressLine(self.run_dir.name, enabled=progress if writes else False)
        if self.autopilot is not None:
            self.autopilot.attach(self)
        self._prepare(0)
        if self.store.resumed is True or (resume and not writes):
            saved = load_state(self.run_dir)  # the other processes read what the writer left
            if saved is not None:
                self.load_state_dict(saved)
            elif writes:  # it died before saving its state: go on after its last stored step
                last = self.store.last_step()
                self._restart_at(0 if last is None else last + 1)
                log.info("steadygrad: %s resumed at step %d", self.run_dir, self.step_count)
        atexit.register(self._at_exit)

    # -- the training loop's one call -----------------------------------------------------------
    def step(
        self,
        loss: torch.Tensor | float,
        batch_ids: Any = None,
        grad_norm_preclip: torch.Tensor | float | None = None,
    ) -> Record | None:
        """Close the current step: measure, detect, record. Returns the Record this call
        finished: this step's, or with ``defer`` the previous recorded step's (None on a call
        that finished none: the first, and steps not recorded because of ``every``).

        ``batch_ids``: the ids of the step's samples, kept with any finding at this step.
        ``grad_norm_preclip``: if you clip gradients, the norm before clipping (what
        ``clip_grad_norm_`` returns), so a spike that clipping hid is still seen. A call of
        ``torch.nn.utils.clip_grad_norm_`` on the model's parameters since the last
        ``mon.step`` gives it with no argument (see :mod:`steadygrad.monitor.clipping`).
        """
        self._check_open()
        landed = self._land()  # the step left pending: its copy is on the host by now
        clipped = self._clips.take()
        if grad_norm_preclip is None:
            grad_norm_preclip = clipped
        step = self.step_count
        if not self._optimizer_steps and self._stepping_instead is not None:
            self._follow(self._stepping_instead(), step)
        stepped = self._optimizer_steps > 0
        self._optimizer_steps = 0
        fresh = self.parameters.stats.gradients_since_last_look()
        if not stepped and fresh is False and step > 0:
            self._warn_once(
                "twice",
                "mon.step was called again with no backward pass and no optimizer step since "
                "the last call; this call is ignored (call mon.step once per training step)",
            )
            return landed
        if stepped and fresh is None and self.parameters.stats.has_no_gradients():
            self.parameters.zeroed_early = True  # from now on, read them before the update
            self._warn_once(
                "zero_grad",
                "mon.step found no gradients although the optimizer stepped: call "
                "optimizer.zero_grad() after mon.step(loss), not before it (this step's "
                "gradient metrics are missing; the next steps' are read before the update)",
            )
        if step % self.every:
            self.step_count += 1
            self._prepare(self.step_count)
            return landed
        preclip = (
            None if grad_norm_preclip is None else _scalar("grad_norm_preclip", grad_norm_preclip)
        )
        self.inputs = StepInputs(_scalar("loss", loss), preclip, stepped)
        try:
            if step and step % MODEL_CHECK_EVERY == 0 and "model_changed" not in self._warned:
                self._check_the_model(step)  # said once: no pass over the parameters after
            record = self._record(step, stepped, batch_ids)
            return landed if record is None else record
        except Exception as exc:
            if os.environ.get(STRICT_ENV):
                raise
            # our own failure never stops the training: this step goes unrecorded
            self._pending = None
            self._warn_once(
                "internal",
                f"the Monitor failed at step {step} ({exc!r}); that step is not recorded and "
                "the run carries on (please report this)",
            )
            self.step_count = step + 1
            with contextlib.suppress(Exception):
                self._prepare(self.step_count)
            return landed

    def _record(self, step: int, stepped: bool, batch_ids: Any) -> Record | None:
        """Measure the step ``step`` (a recorded one); judge and store it now, or, deferred,
        at the next call (None then)."""
        pending = self._measure(step, stepped, batch_ids)
        record = None
        if self._finishes_late(pending):
            self._pending = pending
        else:
            record = self._finish(pending)
        self.step_count += 1
        self._prepare(self.step_count)
        return record

    def _land(self) -> Record | None:
        """Finish the step left pending by a deferred call, if any (its Record)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        try:
            return self._finish(pending, late=True)
        except Exception as exc:
            if os.environ.get(STRICT_ENV):
                raise
            self._warn_once(
                "internal",
                f"the Monitor failed at step {pending.step} ({exc!r}); that step is not "
                "recorded and the run carries on (please report this)",
            )
            return None

    def _measure(self, step: int, stepped: bool, batch_ids: Any) -> _Pending:
        """Ask the due signals for the step's values and start moving them to the host."""
        due = [s for s in self.signals if s.due(step) or s in self._closer]
        for s in due:
            self._safely(
                s, "end", step
            )  # every capture stops before any signal runs its own passes
        out = Measurements()
        for s in due:
            self._safely(s, "measure", step, out)
        if self.autopilot is not None:  # its pending norms travel in the same transfer
            self.autopilot.measure(out)
        reduce = None if self.reducer is None else self.reducer.reduce  # over ranks
        out.send(reduce, self._staging)
        return _Pending(step, stepped, batch_ids, out, due, time.time())

    def _finishes_late(self, pending: _Pending) -> bool:
        """Whether the step may be finished at the next call: deferring, no non-finite value
        lately, and every due signal's ``finish`` unaffected by the next step's start."""
        step = pending.step
        if not self.defer or step <= self._in_step_until:
            return False
        after = step + 1
        return all(s.finishes_late(step, self._begins_at(s, after)) for s in pending.due)

    def _begins_at(self, signal: Signal, step: int) -> bool:
        """Whether ``_prepare(step)`` will call ``signal.begin`` (as decided before then)."""
        if step % self.every:
            return False
        closer = step <= self._closer_until and isinstance(signal, InterceptingSignal)
        return signal.due(step) or closer

    def _finish(self, pending: _Pending, late: bool = False) -> Record:
        """The step's values on the host: signals finish them, detectors judge, the store,
        the sinks and the progress line take the Record."""
        step, out = pending.step, pending.out
        record = Record(step=step, values=out.receive(), wall_time=pending.wall_time)
        if late:
            record.meta[FINISHED_LATE] = True
        if self.autopilot is not None:
            self.autopilot.received(out.raw(self.autopilot))
        for s in pending.due:
            if s in self.signals:
                self._safely(s, "finish", record, out.raw(s))
        healthy = _healthy(record)
        if not pending.stepped and self._optimizer_steps_total == 0 and healthy:
            self._unstepped_calls += 1
        if not healthy:  # the next steps are finished at once: their origin is traced
            self._in_step_until = self.step_count + SYNCHRONOUS_AFTER_NONFINITE
        if self.autopilot is not None and self.autopilot.settle(step, pending.stepped):
            record.meta["skipped_by"] = "autopilot"
        if pending.batch_ids is not None:
            record.meta["batch_ids"] = pending.batch_ids
        findings = self._detect(record, pending.batch_ids)
        if any(f.severity != "info" for f in findings) or record.meta.get(LOOK_CLOSER):
            self._closer_until = step + CLOSER_LOOK
        self.store.add_scalars(step, self._to_store(record, findings), record.wall_time)
        if findings:
            self.store.add_findings(findings)
        self._to_sinks("write", record, findings)
        self.progress.update(record, findings)
        if self.autopilot is not None:
            self.autopilot.after_step(record, findings)
        self.last_record = record
        return record

    def _to_store(self, record: Record, findings: list[Finding]) -> Mapping[str, float]:
        """The values stored for this step: all of them, but per-tensor series of a model with
        many tensors only on a cadence (see MANY_TENSORS) and where something happened."""
        families = self._sparse_families
        every = PER_TENSOR_STORE_EVERY * self.every
        if not families or record.step % every == 0 or findings or record.meta.get("nonfinite"):
            return record.values
        if isinstance(record.values, Values):
            return record.values.without(families)  # no per-member work
        return {
            k: v
            for k, v in record.values.items()
            if "/" not in k or k.split("/")[0] not in families
        }

    def _detect(self, record: Record, batch_ids: Any) -> list[Finding]:
        self._task_restarts.follow(self.detectors, record)
        if self._task_restarts.resized is not None:
            before, after = self._task_restarts.resized
            self.record_action(record.step, INPUT_RESIZED, {"from": int(before), "to": int(after)})
        findings: list[Finding] = []
        for detector in self.detectors:
            findings.extend(detector.update(record))
        findings = self._task_restarts.soften(findings, record.step)
        previous, self._previous_ids = self._previous_ids, (record.step, batch_ids)
        if findings and (batch_ids is not None or previous[1] is not None):
            # a finding judged one record late (a gradient spike, by the loss after it) keeps
            # the ids of the batch behind it; ids are read off the device only for a finding
            findings = [
                replace(
                    f, batch_ids=_plain_ids(previous[1] if f.step == previous[0] else batch_ids)
                )
                for f in findings
            ]
        self.findings.extend(findings)
        return findings

    def _prepare(self, step: int) -> None:
        """Set up the measurements of ``step`` before its forward pass."""
        self.parameters.stats.forget_cached_grad_norms()  # a cache never outlives its step
        self._closer = []
        if step % self.every:
            return
        if step <= self._closer_until:
            # Something was found: the mechanism signals read the next steps, not only at their
            # cadence, so a cause is measured (and confirmed) as it starts, not cadences late.
            self._closer = [
                s for s in self.signals if isinstance(s, InterceptingSignal) and not s.due(step)
            ]
        for s in self.signals:
            if s.due(step) or s in self._closer:
                self._safely(s, "begin", step)

    # -- what the autopilot may use (its narrow interface) --------------------------------------
    def gradient_norms(self) -> tuple[list[int], torch.Tensor]:
        """Before the update: indices of the parameters with a gradient, and each gradient's
        L2 norm (device tensor); the step's record reuses them."""
        return self.parameters.stats.grad_norms()

    def scale_gradients(self, index: list[int], factor: float | torch.Tensor) -> None:
        """Multiply the gradients of ``index`` by ``factor`` before the update (clipping)."""
        self.parameters.stats.scale_gradients(index, factor)

    def objective_changed(self, why: str = "", over: int = 0) -> None:
        """Say that the loss being minimised changes from the next step on (a curriculum's next
        stage, a new data mix, a task head or a loss term added, a new task): the loss and the
        gradient norm step to a new level there, so the detectors that judge them against the
        run's past start again from that step instead of reading the step as a spike or a
        divergence. Recorded in the run as an action (``objective_changed``). A run that
        records its tasks with :class:`steadygrad.continual.ContinualEvaluation` needs no call.

        ``over``: the change is gradual, over that many steps from the next one (a loss term's
        weight ramped in, a VAE's KL warm-up, sequences lengthened step by step): the loss and
        the gradient climb along the ramp by design, so until it ends a loss above its best or
        a gradient grown is told at info (evidence ``objective_ramp``), and the detectors start
        again where it ends. A loss that blows up (far beyond its scatter, then higher still)
        is warned whatever the ramp; so are spikes, non-finite values and the mechanisms.

        Example:
            >>> mon.objective_changed("curriculum stage 2")  # doctest: +SKIP
            >>> mon.objective_changed("KL warm-up", over=500)  # doctest: +SKIP
        """
        if not isinstance(why, str):
            raise TypeError(f"why must be a string, got {type(why).__name__}")
        over = _checks.non_negative_int("over", over)
        self._task_restarts.restart_at(self.step_count, over, why)
        detail: dict[str, Any] = {"why": why} if why else {}
        if over:
            detail["over"] = over
        self.record_action(self.step_count, OBJECTIVE_CHANGED, detail)

    def weights_replaced(self) -> None:
        """The weights were replaced (a rollback): the pending update measurement is void."""
        self.parameters.stats.discard_snapshot()

    def record_action(self, step: int, kind: str, detail: Mapping[str, Any]) -> None:
        """Write an action taken on the run (by the autopilot, or by you) to the store."""
        self.actions.append((step, kind, dict(detail)))
        self.store.add_action(step, kind, detail)
        self._to_sinks("action", step, kind, detail)
        self.progress.action(step, kind, detail)

    # -- before the update ----------------------------------------------------------------------
    def before_update(self) -> None:
        """The step's gradients are final and the update is next: every signal reads what the
        update is about to use, and the autopilot decides (clip, or skip). The optimizer's
        pre-step hook calls this; with ``optimizer.step(closure)`` it runs once the closure has
        returned (Lightning runs forward and backward there), before the update."""
        # Those watching the forward pass stop first: the others then read the gradients with
        # no torch-function mode routing each of their calls through Python.
        for s in sorted(self.signals, key=lambda s: not isinstance(s, InterceptingSignal)):
            self._safely(s, "before_update")
        if self.autopilot is not None:
            self.autopilot.before_update()

    # -- optimizer hooks ------------------------------------------------------------------------
    def _hook_optimizer(self, optimizer: torch.optim.Optimizer) -> list[Any]:
        return [
            optimizer.register_step_pre_hook(self._before_optimizer_step),
            optimizer.register_step_post_hook(self._after_optimizer_step),
        ]

    def _any_optimizer_step(self, optimizer, args, kwargs) -> None:
        """Every optimizer's pre-step (a process-wide hook): note one that is not the watched
        optimizer but steps its parameters. Nothing is followed while the watched one steps
        too (an optimizer wrapped by SAM or Lookahead steps inside it)."""
        if optimizer is self.optimizer:
            return
        overlaps = self._others.get(optimizer)
        if overlaps is None:
            watched = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
            overlaps = any(id(p) in watched for g in optimizer.param_groups for p in g["params"])
            self._others[optimizer] = overlaps
        if overlaps:
            self._stepping_instead = weakref.ref(optimizer)

    def _follow(self, optimizer: torch.optim.Optimizer | None, step: int) -> None:
        """The watched optimizer stopped stepping and ``optimizer`` steps its parameters: a new
        optimizer built mid-run (a resume that rebuilt it, a second stage). The Monitor watches
        it from now on, and the run records the replacement (its state starts from nothing)."""
        self._stepping_instead = None
        if optimizer is None:
            return
        old = type(self.optimizer).__name__
        for h in self._handles:
            h.remove()
        self.optimizer = optimizer
        self._handles = self._hook_optimizer(optimizer)
        self._others.pop(optimizer, None)
        self._optimizer_steps = 1  # it stepped in this step (the watched one's hooks did not see)
        for s in self.signals:
            replaced = getattr(s, "optimizer_replaced", None)
            if replaced is not None:
                self._safely(s, "optimizer_replaced")
        if self.autopilot is not None:
            self.autopilot.optimizer_replaced()
        self._warn_once(
            OPTIMIZER_REPLACED,
            f"a new {type(optimizer).__name__} steps the model's parameters since step {step} "
            f"(the {old} passed to the Monitor stopped stepping): the Monitor follows it",
        )
        self.record_action(
            step, OPTIMIZER_REPLACED, {"optimizer": type(optimizer).__name__, "was": old}
        )

    def _before_optimizer_step(self, optimizer, args, kwargs):
        if self._optimizer_steps_total == 0 and self._unstepped_calls:
            if not self.parameters.stats.gradients_changed():
                raise RuntimeError(ORDER_ERROR)  # it applies the gradients mon.step measured
            # a backward pass since mon.step: the call was a micro-batch's, not a wrong order
            self._warn_once("micro_batches", MICRO_BATCHES)
        # args holds the optimizer first, then step's own arguments
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self.before_update()
            return None
        # The closure computes this step's gradients inside optimizer.step: decide after it.
        done = False

        def closure_then_decide(*a: Any, **kw: Any):
            nonlocal done
            result = closure(*a, **kw)
            if not done:  # optimizers that call the closure again (LBFGS) decide once
                done = True
                self.before_update()
            return result

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_decide}
        return (args[0], closure_then_decide, *args[2:]), kwargs

    def _after_optimizer_step(self, optimizer, args, kwargs) -> None:
        self._optimizer_steps += 1
        self._optimizer_steps_total += 1
        if self.autopilot is not None:
            self.autopilot.after_update()  # a skipped update is undone here
        for s in list(self.signals):  # after the autopilot: a skipped update is no update
            self._safely(s, "after_update")

    def _safely(self, signal: Signal, method: str, *args: Any) -> None:
        """Run one signal's step; one that fails (a probe on NaN weights, a model it cannot
        read) is switched off with a warning: a measurement never stops the training."""
        try:
            getattr(signal, method)(*args)
        except Exception as exc:
            if signal in self._core_signals:  # a bug: seen in tests, never fatal to a run
                if os.environ.get(STRICT_ENV):
                    raise
                self._warn_once(
                    f"core:{type(signal).__name__}.{method}",
                    f"{type(signal).__name__}.{method} failed ({exc!r}); what it measures is "
                    "missing from this step's record (please report this)",
                )
                return
            self.signals.remove(signal)
            try:
                signal.detach()
            except Exception:  # noqa: BLE001 - it is being switched off anyway
                pass
            message = (
                f"steadygrad: signal {type(signal).__name__} failed in {method} ({exc!r}); "
                "it is switched off for the rest of the run"
            )
            log.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint must carry to continue this run: the step, the detectors' and
        signals' state, the autopilot's. Plain data (``torch.load(..., weights_only=True)``).

        Example:
            >>> torch.save({"model": model.state_dict(), "steadygrad": mon.state_dict()}, f)
            ... # doctest: +SKIP
        """
        self._land()  # a step left pending belongs to the checkpoint
        return {
            "format": FORMAT,
            "step": self.step_count,
            "detectors": objects_state(self.detectors),
            "signals": [{"type": type(s).__name__, "state": s.state_dict()} for s in self.signals],
            "autopilot": None if self.autopilot is None else self.autopilot.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a checkpoint's :meth:`state_dict`: the next step is the checkpoint's,
        and whatever the run recorded from that step on (after the checkpoint) is dropped."""
        self._check_open()
        step = _checks.non_negative_int("state['step']", state["step"])
        self._land()
        if state.get("detectors") is not None:
            load_objects_state(self.detectors, state["detectors"])
        for signal, saved in zip(self.signals, state.get("signals") or (), strict=False):
            if saved["type"] == type(signal).__name__ and saved["state"]:
                signal.load_state_dict(saved["state"])
        if self.autopilot is not None and state.get("autopilot"):
            self.autopilot.load_state_dict(state["autopilot"])
        self._restart_at(step)

    def _restart_at(self, step: int) -> None:
        for s in list(self.signals):
            if s.due(self.step_count):
                self._safely(s, "end", self.step_count)  # stop what was set up for that step
        self.store.discard_from(step)
        self.findings = [f for f in self.findings if f.step < step]
        self.step_count = step
        self._prepare(step)

    def _check_the_model(self, step: int) -> None:
        """Warn once when the model's parameters are no longer those the Monitor was attached
        to: it goes on measuring the tensors and modules it was given."""
        left, added = self.parameters.stats.changed_in(self.model)
        if not (left or added):
            return
        changes = []
        if left:
            more = f" and {len(left) - 3} more" if len(left) > 3 else ""
            changes.append(f"{', '.join(left[:3])}{more} no longer the model's")
        if added:
            changes.append(f"{added} trainable tensor(s) not watched")
        self._warn_once(
            "model_changed",
            f"by step {step} the model's parameters changed under the Monitor ("
            f"{'; '.join(changes)}: a module assigned in place of one, or a layer unfrozen, "
            "after attach); the Monitor measures what it was attached to: attach it once the "
            "model is final, or start a new Monitor",
        )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("steadygrad: %s", message)
            warnings.warn(f"steadygrad: {message}", RuntimeWarning, stacklevel=3)

    # -- sinks -----------------------------------------------------------------------------------
    def _to_sinks(self, method: str, *args: Any) -> None:
        if method != "close":  # the log needs no diagnosis: it is not worth one at close
            try:
                getattr(self.findings_log, method)(*args)
            except Exception as exc:  # e.g. warnings turned into errors: logged already
                log.debug("steadygrad: the findings log raised %r", exc)
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:  # a sink never stops the training it watches
                self.sinks.remove(sink)
                message = f"steadygrad: sink {type(sink).__name__} failed in {method} ({exc!r}); it is switched off"
                log.warning(message)
                warnings.warn(message, RuntimeWarning, stacklevel=3)

    # -- life cycle -------------------------------------------------------------------------------
    def close(self, status: str = "finished") -> None:
        """Remove every hook, flush, and mark the run ``status``. Idempotent."""
        if self.closed:
            return
        self._land()  # warns if it fails (raises under STEADYGRAD_STRICT: a bug to see)
        self.closed = True
        if self.autopilot is not None:
            self.autopilot.detach()
        for h in self._handles:
            h.remove()
        self._handles = []
        self._global_hook.remove()
        self._clips.close()
        for s in self.signals:
            s.detach()
        self.progress.close()
        try:
            if writes_run(self.store):
                save_state(self.run_dir, self.state_dict())  # what resume=True continues from
        except Exception as exc:  # the run itself is stored: resuming starts detectors afresh
            log.warning("steadygrad: could not save the monitor state in %s: %r", self.run_dir, exc)
        self._note_signals()
        self.store.close(status)
        if self.sinks:
            self._to_sinks("close", status, self._diagnosis())
        atexit.unregister(self._at_exit)

    def _note_signals(self) -> None:
        """Say in the run's config which signals measured and which stayed off, and why."""
        switched = {type(s).__name__: s.applies() for s in self.signals}
        notes = {k: "on" if v is True else f"off: {v}" for k, v in switched.items()}
        try:
            self.store.update_config({"signals": notes})
        except Exception as exc:  # the run's data matters more than this note
            log.warning("steadygrad: could not note the signals in the run's config: %r", exc)

    def _diagnosis(self) -> dict[str, Any] | None:
        from steadygrad.diagnose.diagnosis import diagnose

        try:
            return diagnose(self.run_dir).as_dict()
        except Exception as exc:  # the run is already stored; the sinks go without
            log.warning("steadygrad: could not diagnose %s for the sinks: %r", self.run_dir, exc)
            return None

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


def _mechanism_signals(every: int, given: list[Signal]) -> list[Signal]:
    """The default mechanism signals, less those whose metrics a given signal records.

    An output signal given without a ``module`` would only guess the head (the last Linear):
    the cross-entropy signal, which reads the logits where the loss takes them, stays on and the
    guess stands in only for a model that never calls ``F.cross_entropy``. Likewise a
    plasticity signal on every activation module leaves the ReLUs to the dead-unit signal.
    """
    cross_entropy = CrossEntropyOutputSignal(every)
    guessing = [s for s in given if isinstance(s, OutputHook) and s.guesses_module]
    for s in guessing:
        s.defer_to(cross_entropy)
    taken = {m.name for s in given if s not in guessing for m in s.metrics}
    for s in given:
        if isinstance(s, PlasticitySignal) and s.modules is None:  # every activation module
            s.leave_relus_to_the_default()
            taken.discard(DEAD_UNITS.name)
    # A dead layer stops learning at once: count dead units (a comparison per ReLU) twice as often.
    often = max(1, every // 2)
    defaults = [cross_entropy, AttentionLogitSignal(every), DeadUnitSignal(often)]
    return [s for s in defaults if not taken & {m.name for m in s.metrics}]


@dataclass
class _Pending:
    """A recorded step measured and on its way to the host, not yet finished."""

    step: int
    stepped: bool
    batch_ids: Any
    out: Measurements
    due: list[Signal]
    wall_time: float


def _defers(defer: bool | None, model: nn.Module, autopilot: Autopilot | None) -> bool:
    """Whether the Monitor finishes steps one call late (see ``Monitor(defer=...)``)."""
    if defer is not None and not isinstance(defer, bool):
        raise TypeError(f"defer must be True, False or None, got {defer!r}")
    if defer is None:
        env = os.environ.get(DEFER_ENV, "").strip()
        if env not in ("", "0", "1"):
            raise ValueError(f"{DEFER_ENV} must be 0 or 1, got {env!r}")
        on_gpu = any(p.device.type == "cuda" for p in model.parameters())
        return (bool(int(env)) if env else on_gpu) and autopilot is None
    if defer and autopilot is not None:
        raise ValueError(
            "defer=True and an autopilot exclude each other: the autopilot acts on each "
            "step's values before the next update (leave defer unset)"
        )
    return defer


def writes_run(store: Any) -> bool:
    """Whether this process writes the run (not a NullStore of another rank)."""
    return not isinstance(store, NullStore)


def _all_of(name: str, items: Iterable[Any], kind: type) -> list[Any]:
    items = list(items)
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(f"{name} must hold {kind.__name__} objects, got {type(item).__name__}")
    return items


def _scalar(name: str, value: Any) -> torch.Tensor:
    """A one-element real tensor from a tensor, a number, or a NumPy scalar."""
    if isinstance(value, np.ndarray | np.generic):
        value = torch.from_numpy(np.asarray(value))
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        if value.is_complex():
            raise TypeError(f"{name} must be real, got a complex {value.dtype} tensor")
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return torch.tensor(float(value), dtype=torch.float64)
        except OverflowError:
            raise ValueError(f"{name} is too large for a float: {value!r}") from None
    raise TypeError(f"{name} must be a tensor or a number, got {type(value).__name__}")


def _healthy(record: Record) -> bool:
    v = record.values
    return (
        math.isfinite(v.get(LOSS.name, math.nan))
        and not v.get(NONFINITE_GRADS.name)
        and not v.get(NONFINITE_PARAMS.name)
    )


def _plain_ids(batch_ids: Any) -> list[Any] | None:
    if batch_ids is None:
        return None
    if isinstance(batch_ids, torch.Tensor):
        return batch_ids.detach().cpu().reshape(-1).tolist()
    if isinstance(batch_ids, str | bytes):
        return [batch_ids]
    try:
        return [x.item() if isinstance(x, torch.Tensor) else x for x in batch_ids]
    except TypeError:
        return [batch_ids]
