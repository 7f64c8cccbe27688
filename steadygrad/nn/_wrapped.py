"""An optimizer that wraps another: it shares the wrapped one's groups and state, and does its
own work on the parameters just before each wrapped step."""

from __future__ import annotations

from collections.abc import Callable

import torch

from steadygrad.core.checks import optimizer as check_optimizer


class WrappedOptimizer(torch.optim.Optimizer):
    """Subclasses implement :meth:`before_step`; everything else goes to the wrapped optimizer."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.base = check_optimizer("optimizer", optimizer)
        super().__init__([{"params": [torch.zeros(1)]}], {})
        # Share, do not copy: schedulers and the user see one set of groups and one state.
        self.param_groups = self.base.param_groups
        self.state = self.base.state
        self.defaults = self.base.defaults

    def before_step(self) -> None:
        raise NotImplementedError

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.before_step()
        self.base.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.base.load_state_dict(state_dict)
        self.param_groups = self.base.param_groups
        self.state = self.base.state
