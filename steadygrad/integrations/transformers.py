"""steadygrad for the Hugging Face ``Trainer``: one callback, no other code.

Example:
    >>> from steadygrad.integrations.transformers import SteadygradCallback   # doctest: +SKIP
    >>> trainer = Trainer(model, args, train_dataset=data,                     # doctest: +SKIP
    ...                   callbacks=[SteadygradCallback()])
    >>> trainer.train()   # the run is in <output_dir>/steadygrad                # doctest: +SKIP

What the callback gets right, reading the Trainer as it runs:

- **the loss of the optimizer step**: the sum of what ``Trainer.training_step`` returned for the
  step's micro-batches, which is how the Trainer builds its logged loss (each micro-batch loss
  is already divided by the accumulation steps, or normalised by the step's token count). A
  NaN is kept: the Trainer's ``logging_nan_inf_filter`` hides it from its own log only.
- **the pre-clip gradient norm** when ``max_grad_norm > 0``: what the Trainer's clipping
  (``accelerator.clip_grad_norm_``) returned, as ``grad_norm_preclip``; ``grad_norm`` is the
  norm of the gradient the optimizer applied.
- **the learning rate used**: the step is recorded in ``on_optimizer_step``, after the update
  and before the scheduler steps and the gradients are zeroed.
- **mixed precision**: bf16 needs nothing; with fp16 the Trainer's GradScaler is watched (its
  scale is recorded, and a step it skipped is an ``amp_overflow``, not a divergence).
- **one writer**: every process runs the Monitor (under torch.distributed it reduces what it
  records over the processes), and one process writes the run.
- **the autopilot** (``autopilot=steadygrad.Autopilot()``) decides in the optimizer's pre-step
  path, after the Trainer's clipping; a skipped update never raises into the Trainer, and a
  learning-rate back-off lowers the Trainer's scheduler too, so its next step keeps it.
- **checkpoints**: each Trainer checkpoint gets the run's state (``steadygrad_monitor.pt``);
  ``trainer.train(resume_from_checkpoint=...)`` continues the run from that step.
- **the Trainer's own loggers**: with ``report_to`` naming ``tensorboard``, ``wandb`` or
  ``mlflow``, the steadygrad scalars, findings and diagnosis go into the same TensorBoard
  writer, W&B run or MLflow run (unless ``sinks=`` already holds a sink of that kind, or
  ``trainer_logger=False``).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from steadygrad.core.finding import Finding
from steadygrad.core.signal import Signal
from steadygrad.core.sink import Sink
from steadygrad.integrations._common import (
    CallbackSettings,
    StepLoss,
    run_dir_or_default,
    watched_optimizer,
)
from steadygrad.integrations._logger_sinks import (
    add_logger_sinks,
    guarded,
    mlflow_sink,
    tensorboard_sink,
    wandb_sink,
)
from steadygrad.monitor.monitor import Monitor

_NAME = "steadygrad.integrations.transformers.SteadygradCallback"
STATE_NAME = "steadygrad_monitor.pt"  # the Monitor's state, inside each Trainer checkpoint


class SteadygradCallback(CallbackSettings, TrainerCallback):
    """Records a Hugging Face ``Trainer`` run with :class:`steadygrad.Monitor`.

    Args:
        run_dir: where the run goes; default ``<args.output_dir>/steadygrad``.
        trainer_logger: also write into the Trainer's ``TensorBoardCallback``,
            ``WandbCallback`` or ``MLflowCallback`` (``report_to``; default ``True``), on the
            process that writes the run.
        every, signals, detectors, autopilot, sinks and any other keyword: the Monitor's
            options (:class:`steadygrad.Monitor`), checked when the callback is built.

    Example:
        >>> cb = SteadygradCallback("runs/gpt2", every=1)   # doctest: +SKIP
        >>> Trainer(model, args, train_dataset=data, callbacks=[cb]).train()   # doctest: +SKIP
        >>> steadygrad.load("runs/gpt2").series("loss")   # doctest: +SKIP
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str] | None = None,
        *,
        every: int = 1,
        signals: Iterable[Signal] = (),
        detectors: Any = None,
        autopilot: Any = None,
        progress: bool = False,
        trainer_logger: bool = True,
        **options: Any,
    ) -> None:
        options = dict(
            every=every,
            signals=tuple(signals),
            detectors=detectors,
            autopilot=autopilot,
            progress=progress,  # the Trainer shows its own tqdm bar
            **options,
        )
        self._settle(_NAME, run_dir, trainer_logger, options)
        self.monitor: Monitor | None = None
        self._trainer: Trainer | None = None
        self._loss = StepLoss()
        self._preclip: Any = None
        self._unpatch: list[tuple[object, str]] = []
        self._tensorboard: tuple[Any, Any] | None = None  # (TensorBoardCallback, its writer)

    # -- start and end ------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        trainer, trainer_locals = _calling_trainer()
        options = dict(self.options)
        autopilot = options.get("autopilot")
        if autopilot is not None and args.world_size > 1:
            raise ValueError(
                f"{_NAME}: autopilot= under {args.world_size} processes is not supported yet "
                "(every process must take the same decisions and keep the same snapshots)"
            )
        optimizer = watched_optimizer(_NAME, trainer.optimizer or optimizer)
        run_dir = run_dir_or_default(self.run_dir, args.output_dir)
        scaler = getattr(trainer.accelerator, "scaler", None)
        if scaler is not None and options.get("scaler") is None:
            options["scaler"] = scaler
        if autopilot is not None and autopilot.scheduler is None:
            autopilot.scheduler = trainer.lr_scheduler  # so a back-off outlives its next step
        if self.trainer_logger and state.is_world_process_zero:
            # the reporting callbacks come first in the list: their on_train_begin has run
            add_logger_sinks(options, self._logger_sinks(trainer.callback_handler.callbacks))
        saved = None
        if state.global_step > 0:  # the Trainer resumed from a checkpoint: so does the run
            options.update(resume=True, overwrite=False)
            checkpoint = trainer_locals.get("resume_from_checkpoint")
            path = Path(checkpoint) / STATE_NAME if isinstance(checkpoint, str | Path) else None
            if path is not None and path.exists():
                saved = torch.load(path, weights_only=True)
        self.monitor = Monitor(
            trainer.model if model is None else model, optimizer, run_dir, **options
        )
        if saved is not None:
            self.monitor.load_state_dict(saved)
        elif state.global_step > 0:
            self.monitor.load_state_dict({"step": state.global_step})
        self._trainer = trainer
        self._patch(trainer, args)

    def on_save(self, args, state, control, **kwargs):
        # The Trainer has just written checkpoint-<global_step>: the run's state goes with it.
        if self.monitor is None or not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if checkpoint.is_dir():
            torch.save(self.monitor.state_dict(), checkpoint / STATE_NAME)

    def on_train_end(self, args, state, control, **kwargs):
        self._close("finished")

    # -- each optimizer step ------------------------------------------------------------------
    def on_optimizer_step(self, args, state, control, **kwargs):
        # After optimizer.step(), before the scheduler steps and the gradients are zeroed.
        mon = self.monitor
        if mon is None:
            return
        loss = self._loss.take()
        preclip, self._preclip = self._preclip, None
        if loss is None:
            return  # no micro-batch returned a loss (a custom training_step)
        mon.step(loss, grad_norm_preclip=preclip)

    # -- reading the Trainer ------------------------------------------------------------------
    def _patch(self, trainer: Trainer, args: Any) -> None:
        """Wrap, on this Trainer only, the two calls whose results callbacks never receive."""
        training_step = trainer.training_step
        loss = self._loss

        def recorded_training_step(*a: Any, **kw: Any):
            out = training_step(*a, **kw)
            loss.add(out)
            return out

        self._set(trainer, "training_step", recorded_training_step)

        accelerator = trainer.accelerator
        clip = accelerator.clip_grad_norm_
        clips = args.max_grad_norm is not None and args.max_grad_norm > 0

        def recorded_clip(parameters, max_norm, *a: Any, **kw: Any):
            total = clip(parameters, max_norm, *a, **kw)
            if clips and math.isfinite(float(max_norm)):
                self._preclip = total  # clip_grad_norm_ returns the norm before clipping
            return total

        self._set(accelerator, "clip_grad_norm_", recorded_clip)

    def _logger_sinks(self, callbacks: Iterable[Any]) -> list[Sink]:
        """A sink into each reporting callback's writer or run that steadygrad can write to."""
        from transformers.integrations import MLflowCallback, TensorBoardCallback, WandbCallback

        sinks: list[Sink] = []
        for cb in callbacks:
            if isinstance(cb, TensorBoardCallback) and cb.tb_writer is not None:
                sinks += guarded("TensorBoardCallback", lambda w=cb.tb_writer: tensorboard_sink(w))
                self._tensorboard = (cb, cb.tb_writer)
            elif isinstance(cb, WandbCallback) and getattr(cb, "_initialized", False):
                sinks += guarded("WandbCallback", lambda c=cb: wandb_sink(c._wandb.run))
            elif isinstance(cb, MLflowCallback) and getattr(cb, "_initialized", False):
                sinks += guarded("MLflowCallback", lambda c=cb: _mlflow_run_sink(c))
        return sinks

    def _set(self, owner: object, name: str, value: Any) -> None:
        self._unpatch.append((owner, name))
        setattr(owner, name, value)

    def _close(self, status: str) -> None:
        for owner, name in self._unpatch:
            owner.__dict__.pop(name, None)  # the class's method is visible again
        self._unpatch = []
        if self.monitor is not None:
            self.monitor.close(status)
        if self._tensorboard is not None:
            callback, writer = self._tensorboard
            if callback.tb_writer is not writer:
                # its callback closed it first (it comes earlier in the list); the diagnosis
                # written since reopened it
                writer.close()
            self._tensorboard = None
        self._trainer = None

    @property
    def findings(self) -> list[Finding]:
        """The findings so far."""
        return [] if self.monitor is None else list(self.monitor.findings)


def _mlflow_run_sink(callback: Any) -> Sink | None:
    run = callback._ml_flow.active_run()
    return None if run is None else mlflow_sink(run.info.run_id)


def _calling_trainer() -> tuple[Trainer, dict[str, Any]]:
    """The Trainer whose callback handler is calling us, and the local variables of its training
    loop: callbacks are not handed the Trainer, but it is on the stack, a few frames up."""
    frame = sys._getframe(1)
    for _ in range(32):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, Trainer):
            return owner, dict(frame.f_locals)
        frame = frame.f_back
    raise TypeError(
        f"{_NAME} must be run by a transformers.Trainer (pass it in Trainer(callbacks=[...]))"
    )
