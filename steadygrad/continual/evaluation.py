"""ContinualEvaluation: every N steps, accuracy and loss on fixed held-out subsets of each task.

It runs its own forward passes after the step (no grad, in eval mode, the model's mode restored),
after the Monitor and the other signals have stopped capturing, so it never shows up in their
measurements and never touches the gradients the optimizer uses. Its values reach the host in
the step's one transfer; min-ACC, WC-ACC and the gaps are derived there (:meth:`finish`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from steadygrad.continual.metrics import (
    CONTINUAL_METRICS,
    MIN_ACCURACY,
    STABILITY_GAP,
    TASK,
    TASK_ACCURACY,
    TASK_LOSS,
    WORST_CASE_ACCURACY,
    WorstCaseScores,
)
from steadygrad.core.checks import positive_int
from steadygrad.core.signal import Measurements, Signal

if TYPE_CHECKING:
    from steadygrad.core.record import Record

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ContinualEvaluation(Signal):
    """Per-task held-out accuracy and loss on a cadence, task switches, min-ACC and WC-ACC.

    Args:
        tasks: ``{name: (inputs, labels)}``, each task's held-out set, in task order.
        every: evaluate every this many steps (and at the first step of every new task).
        subset: evaluate on this many fixed examples per task (drawn once with ``seed``).
        loss_fn: ``loss_fn(logits, labels)``, the mean loss (default cross-entropy).
        schedule: ``{first_step: task_name}`` instead of calling :meth:`start_task`.
        seed: seed of the subset draw.

    Records ``task`` (index of the task being trained), ``task_accuracy/<task>`` and
    ``task_loss/<task>`` for every task trained so far, ``min_accuracy`` (min-ACC),
    ``worst_case_accuracy`` (WC-ACC) and ``stability_gap/<task>`` (an earlier task's accuracy
    at the last switch minus its accuracy now).

    Example:
        >>> evaluator = ContinualEvaluation({"0-4": (x_a, y_a), "5-9": (x_b, y_b)}, every=5)
        ... # doctest: +SKIP
        >>> mon = steadygrad.Monitor(model, optimizer, signals=[evaluator])  # doctest: +SKIP
        >>> evaluator.start_task("0-4")   # then train on task 0-4, call mon.step(loss) ...
        ... # doctest: +SKIP
    """

    metrics = CONTINUAL_METRICS

    def __init__(
        self,
        tasks: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        every: int = 10,
        *,
        subset: int = 256,
        loss_fn: LossFn = F.cross_entropy,
        schedule: Mapping[int, str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(every)
        if not isinstance(tasks, Mapping) or not tasks:
            raise TypeError("tasks must be a non-empty mapping {name: (inputs, labels)}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.subset = positive_int("subset", subset)
        self.loss_fn = loss_fn
        generator = torch.Generator().manual_seed(seed)
        self.tasks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, data in tasks.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(
                    f"tasks: a task name must be a non-empty str without '/': {name!r}"
                )
            if not (isinstance(data, tuple | list) and len(data) == 2):
                raise TypeError(f"tasks[{name!r}] must be a pair (inputs, labels)")
            x, y = data
            if len(x) != len(y) or len(x) == 0:
                raise ValueError(
                    f"tasks[{name!r}]: inputs and labels must be non-empty, same length"
                )
            keep = torch.randperm(len(x), generator=generator)[: self.subset]
            self.tasks[name] = (x[keep], y[keep])
        self.schedule: dict[int, str] = {}
        for start, name in sorted((schedule or {}).items()):
            self._check_task(name)
            self.schedule[int(start)] = name
        self.current: str | None = None
        self.seen: list[str] = []
        self.scores = WorstCaseScores()
        self._pending_switch = False
        self._at_switch: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._placed: torch.device | None = None

    def _check_task(self, name: str) -> None:
        if name not in self.tasks:
            raise ValueError(f"unknown task {name!r}; tasks are {list(self.tasks)}")

    def start_task(self, name: str) -> None:
        """Say that training moves on to task ``name`` from the next step on (a task switch)."""
        self._check_task(name)
        if name == self.current:
            return
        self.current = name
        if name not in self.seen:
            self.seen.append(name)
        self._pending_switch = True
        self._at_switch = dict(self._last)  # the earlier tasks' accuracies just before it

    def _follow_schedule(self, step: int) -> None:
        due = [name for start, name in self.schedule.items() if start <= step]
        if due and due[-1] != self.current:
            self.start_task(due[-1])

    def due(self, step: int) -> bool:
        self._follow_schedule(step)
        return self._pending_switch or super().due(step)

    def measure(self, step: int, out: Measurements) -> None:
        if self.monitor is None:
            raise RuntimeError("ContinualEvaluation.measure called before attach(monitor)")
        self._follow_schedule(step)
        if self.current is None:
            return  # no task started yet: nothing to say
        self._pending_switch = False
        accuracy, loss = self._evaluate(self.monitor.model)  # device tensors, no sync here
        out.put(TASK.name, float(self.seen.index(self.current)))
        out.put_many([TASK_ACCURACY.key(n) for n in self.seen], accuracy)
        out.put_many([TASK_LOSS.key(n) for n in self.seen], loss)

    def finish(self, record: Record, raw: Sequence[float] = ()) -> None:
        """On the host, from this step's accuracies: the gaps, min-ACC and WC-ACC."""
        if self.current is None or TASK.name not in record.values:
            return
        accuracy = {n: record.values[TASK_ACCURACY.key(n)] for n in self.seen}
        for name in self.seen:
            if name != self.current and name in self._at_switch:
                record.values[STABILITY_GAP.key(name)] = self._at_switch[name] - accuracy[name]
        self.scores.update(self.current, accuracy)
        min_acc = self.scores.min_accuracy()
        if math.isfinite(min_acc):
            record.values[MIN_ACCURACY.name] = min_acc
        record.values[WORST_CASE_ACCURACY.name] = self.scores.worst_case_accuracy(
            self.current, accuracy[self.current]
        )
        self._last = accuracy

    def evaluate(self, model: torch.nn.Module) -> tuple[dict[str, float], dict[str, float]]:
        """Accuracy and mean loss of ``model`` on the held-out subset of every task seen so far,
        as host numbers (one transfer); the model's train/eval mode is restored.

        Example:
            >>> accuracy, loss = evaluator.evaluate(model)  # doctest: +SKIP
        """
        accuracy, loss = self._evaluate(model)
        acc, los = accuracy.tolist(), loss.tolist()
        return dict(zip(self.seen, acc, strict=True)), dict(zip(self.seen, los, strict=True))

    def _evaluate(self, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(model.parameters()).device
        if self._placed != device:
            self.tasks = {n: (x.to(device), y.to(device)) for n, (x, y) in self.tasks.items()}
            self._placed = device
        was_training = model.training
        model.eval()
        accuracy, loss = [], []
        try:
            with torch.no_grad():
                for name in self.seen:
                    x, y = self.tasks[name]
                    logits = model(x)
                    accuracy.append((logits.argmax(dim=-1) == y).float().mean())
                    loss.append(self.loss_fn(logits, y).float())
        finally:
            model.train(was_training)
        return torch.stack(accuracy), torch.stack(loss)

    def state_dict(self) -> dict[str, Any]:
        return {
            "current": self.current,
            "seen": list(self.seen),
            "minimum": dict(self.scores.minimum),
            "trained": list(self.scores.trained),
            "at_switch": dict(self._at_switch),
            "last": dict(self._last),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.current = state["current"]
        self.seen = list(state["seen"])
        self.scores.minimum = dict(state["minimum"])
        self.scores.trained = list(state["trained"])
        self._at_switch = dict(state["at_switch"])
        self._last = dict(state["last"])
