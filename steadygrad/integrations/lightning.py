"""steadygrad for ``lightning.Trainer``: one callback, no other code.

Example:
    >>> from steadygrad.integrations.lightning import SteadygradCallback    # doctest: +SKIP
    >>> trainer = lightning.Trainer(max_steps=1000, callbacks=[SteadygradCallback()])  # doctest: +SKIP
    >>> trainer.fit(module, loader)   # the run is in <default_root_dir>/steadygrad   # doctest: +SKIP

Lightning runs forward and backward inside ``optimizer.step(closure)``, so what the optimizer's
own pre-step hook sees is the previous step's gradients. The callback reads the step where
Lightning shows it complete instead:

- ``on_before_optimizer_step`` runs after the closure (forward and backward of the last
  micro-batch), after AMP unscaling and before gradient clipping: the gradient of the step
  about to be applied. The pre-clip norm is taken there (on the device) when the Trainer clips.
- ``on_train_batch_end`` gets each micro-batch's loss as Lightning accumulates it
  (``training_step``'s loss divided by ``accumulate_grad_batches``); their sum over the
  accumulation window is the step's loss. The step is recorded there, once per optimizer step
  (the gradients are zeroed only when the next window starts).
- the learning rate recorded is the one the update used: the Monitor reads it in the
  optimizer's pre-step path, before Lightning steps a per-step scheduler.
- mixed precision: bf16 needs nothing; with fp16 the precision plugin's GradScaler is watched.
- one writer: every process runs the Monitor (under torch.distributed it reduces what it
  records over the processes), and one process writes the run.
- the autopilot decides once the closure has returned (the Monitor wraps the closure in the
  optimizer's pre-step hook), before the update; a skipped update runs as a no-op, so
  Lightning's closure always runs and nothing raises. A learning-rate back-off lowers the
  configured schedulers too.
- checkpoints carry the run (the callback's ``state_dict``); ``fit(ckpt_path=...)`` continues
  it from that step.
- the Trainer's own loggers get the run too: with a ``TensorBoardLogger``, ``WandbLogger`` or
  ``MLFlowLogger`` the steadygrad scalars, findings and diagnosis go into that logger's run
  (unless ``sinks=`` already holds a sink of that kind, or ``trainer_logger=False``).

Manual optimization (``automatic_optimization = False``: a GAN's two optimizers, a step taken
every few batches) works too. The Monitor watches one optimizer (``optimizer=``, its index in
``configure_optimizers``; needed when there are several). A step is recorded at the end of each
batch in which that optimizer stepped; its loss is what ``manual_backward`` propagated since the
previous optimizer step of any optimizer (the discriminator's loss is not the generator's; the
losses of a window accumulated by hand add up), and its gradients are read before the update,
as a module zeroes them right after ``opt.step()``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from lightning.pytorch import Callback

from steadygrad.core.checks import lazy_parameters, non_negative_int
from steadygrad.core.finding import Finding
from steadygrad.core.optimizer import unwrap_optimizer
from steadygrad.core.signal import Signal
from steadygrad.core.sink import Sink
from steadygrad.integrations._common import (
    CallbackSettings,
    StepLoss,
    global_grad_norm,
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

_NAME = "steadygrad.integrations.lightning.SteadygradCallback"


class SteadygradCallback(CallbackSettings, Callback):
    """Records a ``lightning.Trainer`` run with :class:`steadygrad.Monitor`.

    Args:
        run_dir: where the run goes; default ``<trainer.default_root_dir>/steadygrad``.
        trainer_logger: also write into the Trainer's ``TensorBoardLogger``, ``WandbLogger``
            or ``MLFlowLogger`` (default ``True``), on the process that writes the run.
        optimizer: which of ``configure_optimizers``' optimizers the Monitor watches (its
            index); needed when there are several (manual optimization).
        every, signals, detectors, autopilot, sinks and any other keyword: the Monitor's
            options (:class:`steadygrad.Monitor`), checked when the callback is built.

    Example:
        >>> cb = SteadygradCallback("runs/lit", every=1)     # doctest: +SKIP
        >>> lightning.Trainer(callbacks=[cb], accumulate_grad_batches=2).fit(module, loader)
        ... # doctest: +SKIP
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
        optimizer: int | None = None,
        **options: Any,
    ) -> None:
        options = dict(
            every=every,
            signals=tuple(signals),
            detectors=detectors,
            autopilot=autopilot,
            progress=progress,  # Lightning shows its own progress bar
            **options,
        )
        self._settle(_NAME, run_dir, trainer_logger, options)
        if optimizer is not None:
            non_negative_int("optimizer", optimizer)
        self.optimizer_index = optimizer
        self.monitor: Monitor | None = None
        self._resume_state: dict[str, Any] | None = None
        self._loss = StepLoss()
        self._stepping = False
        self._preclip: torch.Tensor | None = None
        self._manual = False
        self._watched: torch.optim.Optimizer | None = None
        self._step_loss: torch.Tensor | None = None  # manual: the loss of the watched step
        self._lazy = False  # the module had lazy parameters at fit start: attach deferred

    # -- start and end ------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self._manual = not pl_module.automatic_optimization
        self._watched = watched_optimizer(_NAME, self._choose(trainer.optimizers))
        self._lazy = bool(lazy_parameters(pl_module))
        if not self._lazy:
            self._attach(trainer, pl_module)
        # else: lazy modules take their shapes from the first forward pass; attached once the
        # first batch's backward is done (see on_before_optimizer_step)

    def _attach(self, trainer, pl_module) -> None:
        optimizer = self._watched
        options = dict(self.options)
        autopilot = options.get("autopilot")
        if autopilot is not None and trainer.world_size > 1:
            raise ValueError(
                f"{_NAME}: autopilot= under {trainer.world_size} processes is not supported yet "
                "(every process must take the same decisions and keep the same snapshots)"
            )
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None and options.get("scaler") is None:
            options["scaler"] = scaler
        if autopilot is not None and autopilot.scheduler is None:
            # so a back-off outlives the next scheduler step
            autopilot.scheduler = [c.scheduler for c in trainer.lr_scheduler_configs]
        if self._resume_state is not None or trainer.ckpt_path is not None:
            options.update(resume=True, overwrite=False)  # the Trainer resumes: so does the run
        if self.trainer_logger and trainer.is_global_zero:
            add_logger_sinks(options, _logger_sinks(trainer.loggers))
        run_dir = run_dir_or_default(self.run_dir, trainer.default_root_dir)
        self.monitor = Monitor(pl_module, optimizer, run_dir, **options)
        if self._manual:  # modules zero the gradients right after opt.step(): read them before
            self.monitor.parameters.zeroed_early = True
        if self._resume_state is not None:
            self.monitor.load_state_dict(self._resume_state)
            self._resume_state = None

    def _choose(self, optimizers: list[Any]) -> Any:
        """The optimizer to watch: ``optimizer=``'s, or the only one."""
        index = self.optimizer_index
        if index is None:
            if len(optimizers) != 1:
                raise ValueError(
                    f"{_NAME} watches one optimizer and configure_optimizers returned "
                    f"{len(optimizers)}: pass optimizer=<index> to choose it"
                )
            index = 0
        if index >= len(optimizers):
            raise ValueError(
                f"optimizer={index}, but configure_optimizers returned {len(optimizers)} "
                "optimizer(s)"
            )
        return optimizers[index]

    # -- checkpoints: Lightning saves and restores a callback's state_dict ----------------------
    def state_dict(self) -> dict[str, Any]:
        return {} if self.monitor is None else {"monitor": self.monitor.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("monitor")
        if saved is None:
            return
        if self.monitor is not None:  # a strategy that restores after on_fit_start
            self.monitor.load_state_dict(saved)
        else:
            self._resume_state = saved

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close("finished")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close("interrupted" if isinstance(exception, KeyboardInterrupt) else "crashed")

    # -- each optimizer step ------------------------------------------------------------------
    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if self._manual:  # what manual_backward propagates: the loss of the coming step
            self._loss.add(_unscaled(loss, getattr(trainer.precision_plugin, "scaler", None)))

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        # After the closure's backward (and AMP unscaling), before clipping and the update.
        if self.monitor is None and self._lazy and not lazy_parameters(pl_module):
            self._lazy = False
            self._attach(trainer, pl_module)
        if self.monitor is None:
            return
        if self._manual:
            # the losses since the last step of any optimizer were this one's
            loss = self._loss.take()
            if unwrap_optimizer(optimizer) is not self._watched:
                return
            self._step_loss = loss
        self._stepping = True
        if trainer.gradient_clip_val:
            self._preclip = global_grad_norm(self.monitor.model.parameters())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.monitor is None:
            return
        if self._manual:
            if self._stepping:
                self._stepping = False
                loss, self._step_loss = self._step_loss, None
                if loss is not None:
                    self.monitor.step(loss)
            return
        self._loss.add(_loss_of(outputs))
        if not self._stepping:
            return  # a micro-batch inside the accumulation window
        self._stepping = False
        loss = self._loss.take()
        preclip, self._preclip = self._preclip, None
        if loss is None:
            return  # training_step returned None: Lightning skipped the backward
        self.monitor.step(loss, grad_norm_preclip=preclip)

    def _close(self, status: str) -> None:
        if self.monitor is not None and not self.monitor.closed:
            self.monitor.close(status)

    @property
    def findings(self) -> list[Finding]:
        """The findings so far."""
        return [] if self.monitor is None else list(self.monitor.findings)


def _logger_sinks(loggers: Iterable[Any]) -> list[Sink]:
    """A sink into each of the Trainer's loggers that steadygrad can write to."""
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger

    sinks: list[Sink] = []
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            sinks += guarded("TensorBoardLogger", lambda lg=logger: tensorboard_sink(lg.experiment))
        elif isinstance(logger, WandbLogger):
            sinks += guarded("WandbLogger", lambda lg=logger: wandb_sink(lg.experiment))
        elif isinstance(logger, MLFlowLogger):
            sinks += guarded("MLFlowLogger", lambda lg=logger: mlflow_sink(lg.run_id))
    return sinks


def _unscaled(loss: Any, scaler: Any) -> Any:
    """The loss as the module computed it: fp16's GradScaler has already multiplied what the
    backward hooks see by its scale (divided on the device: no host synchronisation)."""
    scale = getattr(scaler, "_scale", None)
    if isinstance(loss, torch.Tensor) and isinstance(scale, torch.Tensor):
        return loss.detach() / scale.to(loss.device)
    return loss


def _loss_of(outputs: Any) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    return outputs
