"""Dead units per layer, in any model: on due steps every ReLU call (``nn.ReLU``, ``F.relu``,
``torch.relu``; ``nn.ReLU6`` / ``F.relu6`` and any ``hardtanh`` clipped at 0 below; a
``hardswish``, whose slope is 0 below -3) is intercepted, and a unit of the layer that fed it
is dead when the ReLU never passes a positive value for it on the step's batch (Lu et al. 2019,
"Dying ReLU"; Dohare et al. 2024 count such units as lost plasticity), and the share of its
outputs the ReLU passes: a layer whose units are dying passes less and less of them long before
a unit is zero on every example. ``nn.RNN`` and ``nn.RNNCell`` with ``nonlinearity="relu"`` run
their ReLU inside torch's kernel: their output, the ReLU's, is read from a hook on the layer.

The layer is named as ``model.named_modules()`` spells it: the leaf module whose output the ReLU
received (``fc1``, ``bn2``), else the innermost module with children whose output it was (a
layer that computes its output itself around a child router), or the module whose forward was
running.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from steadygrad.core import Measurements
from steadygrad.core.metrics import (
    ACTIVATION_MODULES,
    DEAD_UNITS,
    RELU_ACTIVE,
    SATURATED,
    ZEROED_UNITS,
)
from steadygrad.monitor.intercept import InterceptingSignal
from steadygrad.monitor.intercept import _observe as observe_safely

# Inputs beyond which tanh and sigmoid have under 2% of their peak slope: |tanh x| > 0.99 and
# sigmoid outside [0.005, 0.995].
TANH_TAIL = 2.647
SIGMOID_TAIL = 5.293
# Where the hard variants' slopes are exactly 0: hardswish below -3 (a dead unit, as a ReLU's
# below 0; above 3 it is the identity), hardsigmoid outside [-3, 3] (saturated).
HARDSWISH_FLOOR = -3.0
HARDSIGMOID_TAIL = 3.0

log = logging.getLogger("steadygrad")

_CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm)
# Built-in recurrent layers whose ReLU runs inside torch's kernel, where no intercepted call
# shows it (``nn.RNN`` and ``nn.RNNCell`` with ``nonlinearity="relu"``): their output is the
# ReLU's, read from a hook on the layer.
_RELU_INSIDE = (nn.RNN, nn.RNNCell)


class DeadUnitSignal(InterceptingSignal):
    """``dead_units/<layer>``: the fraction of a layer's units whose ReLU output was zero for
    every example of the step (units: channels after a convolution or batch norm, else the last
    dimension); ``relu_active/<layer>``: the fraction of its ReLU outputs that were positive;
    ``zeroed_units/<layer>``: the fraction whose ReLU input was exactly zero throughout;
    ``saturated/<layer>``: the fraction of its tanh or sigmoid outputs in the flat tails (a
    saturated unit passes almost no gradient: an unscaled input, a weight grown too large).

    Example:
        >>> signal = DeadUnitSignal(every=25)   # on by default in the Monitor
    """

    metrics = (DEAD_UNITS, RELU_ACTIVE, ZEROED_UNITS, SATURATED)

    def __init__(self, every: int = 25) -> None:
        super().__init__(every)
        self._alive: dict[str, torch.Tensor] = {}
        self._fed: dict[str, torch.Tensor] = {}  # units whose input was not all zero
        self._active: dict[str, list[torch.Tensor]] = {}  # positive count, element count
        self._saturated: dict[str, list[Any]] = {}  # in-the-tails count, element count
        self._channel_first: set[str] = set()
        self._relu_inside: list[tuple[str, nn.Module]] = []
        self._applied_in: dict[str, str] = {}  # layer -> the activation module that read it
        self._noted = 0  # how many of those the run's config holds
        self.seen = False

    def attach(self, monitor: Any) -> None:
        super().attach(monitor)
        self._channel_first = {
            n for n, m in monitor.model.named_modules() if isinstance(m, _CHANNEL_FIRST)
        }
        self._relu_inside = [
            (n, m)
            for n, m in monitor.model.named_modules()
            if isinstance(m, _RELU_INSIDE) and getattr(m, "nonlinearity", None) == "relu"
        ]

    def applies(self) -> bool | str:
        return True if self.seen else "no ReLU, tanh or sigmoid call seen"

    def watched(self) -> dict[Callable, Callable]:
        tanh = functools.partial(self._observe_tails, tail=TANH_TAIL)
        sigmoid = functools.partial(self._observe_tails, tail=SIGMOID_TAIL)
        return {
            F.relu: self._observe,
            torch.relu: self._observe,
            F.relu_: self._observe,
            F.relu6: self._observe,
            F.hardtanh: self._observe_hardtanh,  # nn.ReLU6 is hardtanh(x, 0, 6)
            F.hardswish: functools.partial(self._observe, floor=HARDSWISH_FLOOR),
            F.hardsigmoid: functools.partial(self._observe_tails, tail=HARDSIGMOID_TAIL),
            **dict.fromkeys((torch.tanh, F.tanh, torch.Tensor.tanh), tanh),  # nn.Tanh
            **dict.fromkeys((torch.sigmoid, F.sigmoid, torch.Tensor.sigmoid), sigmoid),
        }

    def _observe_tails(self, args: tuple, kwargs: dict[str, Any], tail: float) -> None:
        """The share of a squashing function's inputs beyond ``tail`` either way, where its
        slope is under 2% of its peak."""
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
            return
        layer = (
            self.producer(x) or self.composer(x) or self._fed_by(x) or self.running() or "<root>"
        )
        count = (x.detach().abs() > tail).sum(dtype=torch.float32)
        applied_in = self.running_leaf()

        def add() -> None:
            self._note_module(layer, applied_in)
            total = self._saturated.get(layer)
            if total is None:
                self._saturated[layer] = [count, x.numel()]
            else:
                total[0], total[1] = total[0] + count, total[1] + x.numel()
            self.seen = True

        self._if_hidden(x, add)

    def _fed_by(self, x: torch.Tensor) -> str | None:
        """The layer of the running module whose units an activation computed in its forward
        from that layer's output holds (``relu(hh(h) + ih(x))``: ``hh``'s), when the units
        are its output's last dimension."""
        if not self.in_forward() or x.dim() > 3:
            return None  # outside the model, or channels (whose layer a width cannot tell)
        return self.feeding(x, self.running())

    def _if_hidden(self, x: torch.Tensor, add: Callable[[], None]) -> None:
        """``add()`` the reading of an activation applied to ``x``: at once inside the model's
        forward; applied outside it (by the training loop), only once the backward pass reaches
        ``x`` and only if a module of the model ran after the call, its output fed on into the
        model (a loop that composes the model's layers itself). An activation nothing ran after
        is the loss's own, on the model's output (a Dice loss's sigmoid, a hinge's ReLU): it
        has no hidden units, and a confident output sits in its tails."""
        if self.in_forward():
            add()
        elif x.requires_grad:
            calls = self.calls

            def reached(grad: torch.Tensor) -> None:
                try:
                    if self.calls > calls:
                        add()
                except Exception:  # noqa: BLE001 - a measurement never breaks the backward pass
                    pass

            x.register_hook(reached)

    def _observe_hardtanh(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """A hardtanh whose floor is 0 is a clipped ReLU: a unit below it gets no gradient."""
        floor = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        if floor == 0:
            self._observe(args[:1], kwargs)

    def begin(self, step: int) -> None:
        self._alive, self._fed, self._active, self._saturated = {}, {}, {}, {}
        super().begin(step)
        for name, module in self._relu_inside:  # taken off with the others' at _stop
            hook = torch.compiler.disable(functools.partial(self._observe_output, name))
            self._handles.append(module.register_forward_hook(hook))

    def _observe_output(self, layer: str, module: nn.Module, args: object, output: Any) -> None:
        """A recurrent layer's output (its hidden states, after the ReLU): a unit is alive
        where it is positive. Whether its ReLU's input was exactly zero is not seen here."""
        out = output[0] if isinstance(output, tuple) else output
        if isinstance(out, nn.utils.rnn.PackedSequence):
            out = out.data
        observe_safely(functools.partial(self._observe, layer=layer), (out,), {})

    def _observe(
        self, args: tuple, kwargs: dict[str, Any], floor: float = 0.0, layer: str | None = None
    ) -> None:
        """A unit is alive where its input passes ``floor``, below which the activation's
        slope is exactly 0 (a ReLU's 0, a hardswish's -3). ``layer``: the ReLU's output, of
        that layer, is given instead of its input."""
        x = args[0] if args else kwargs["input"]
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or not x.is_floating_point():
            return
        given = layer is not None
        layer = layer or self.producer(x)
        channel_first = layer in self._channel_first
        if layer is None and (layer := self.composer(x)) is not None:
            channel_first = x.dim() == 4  # a layer of its own making: NCHW, torch's convention
        layer = layer or self._fed_by(x) or self.running() or "<root>"
        dim = 1 if channel_first else x.dim() - 1
        units = x.detach().movedim(dim, 0).reshape(x.shape[dim], -1)  # one row per unit
        positive = (units > floor) | units.isnan()
        # a unit whose input is the same for every example takes no part either (a row pruned
        # to zero behind a mask: its bias alone); one value per unit says nothing of that
        varies = (units != units[:, :1]).any(dim=1) if units.shape[1] > 1 else True
        alive = positive.any(dim=1) & varies
        # an output of 0 may have had any input at or below 0: take every unit as fed
        fed = torch.ones_like(alive) if given else units.ne(0).any(dim=1)
        count = positive.sum(dtype=torch.float32)
        applied_in = None if given else self.running_leaf()

        def add() -> None:
            self._note_module(layer, applied_in)
            previous = self._alive.get(layer)
            if previous is not None and previous.shape != alive.shape:
                return  # the same layer fed ReLUs of another width: keep the first
            self._alive[layer] = alive if previous is None else previous | alive
            self._fed[layer] = fed if previous is None else self._fed[layer] | fed
            total = self._active.get(layer)
            if total is None:
                self._active[layer] = [count, float(positive.numel())]
            else:
                total[0], total[1] = total[0] + count, total[1] + positive.numel()
            self.seen = True

        self._if_hidden(x, add)

    def _note_module(self, layer: str, module: str | None) -> None:
        """Keep the activation module whose forward read ``layer``'s output, when it is
        another module than the layer (``act1`` after ``fc1``)."""
        if module is not None and module != layer:
            self._applied_in.setdefault(layer, module)

    def _note_modules(self) -> None:
        """Add the activation modules found since the last note to the run's config, where
        the diagnosis names them beside their layers."""
        if len(self._applied_in) == self._noted:
            return
        self._noted = len(self._applied_in)
        try:
            self.monitor.store.update_config({ACTIVATION_MODULES: dict(self._applied_in)})
        except Exception as exc:  # a note for the diagnosis, never worth the run
            log.warning("steadygrad: could not note the activation modules: %r", exc)

    def measure(self, step: int, out: Measurements) -> None:
        self._note_modules()
        if self._saturated:
            names = sorted(self._saturated)
            shares = torch.stack([self._saturated[n][0] / self._saturated[n][1] for n in names])
            out.put_many([SATURATED.key(n) for n in names], shares)
            self._saturated = {}
        if not self._alive:
            return
        names = sorted(self._alive)
        fractions = torch.stack([1.0 - self._alive[n].float().mean() for n in names])
        out.put_many([DEAD_UNITS.key(n) for n in names], fractions)
        active = torch.stack([self._active[n][0] / self._active[n][1] for n in names])
        out.put_many([RELU_ACTIVE.key(n) for n in names], active)
        zeroed = torch.stack([1.0 - self._fed[n].float().mean() for n in names])
        out.put_many([ZEROED_UNITS.key(n) for n in names], zeroed)
        self._alive, self._fed, self._active = {}, {}, {}
