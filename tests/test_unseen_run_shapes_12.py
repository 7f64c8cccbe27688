"""Run shapes the sixteenth wave's held-out sets showed, each a trigger and a control: a gradient
spike too small to have damped an optimizer's steps as much as they shrank."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import diagnose_stored

import steadygrad
from steadygrad.core import Finding
from steadygrad.core.optimizer import SECOND_MOMENT_DECAY, second_moment_decay
from steadygrad.diagnose.rules import MOMENTUM_MEMORY, _strongest_damping
from steadygrad.optim import SPAM, AdaBelief, Lion

OPTIMIZERS = {  # beta1 = 0: the first moment forgets the spike at once, the square is measured
    "adam": lambda p: torch.optim.Adam([p], lr=1e-3, betas=(0.0, 0.999), eps=1e-12),
    "adam_beta2_0.95": lambda p: torch.optim.Adam([p], lr=1e-3, betas=(0.0, 0.95), eps=1e-12),
    "rmsprop": lambda p: torch.optim.RMSprop([p], lr=1e-3, alpha=0.99, eps=1e-12),
    "adagrad": lambda p: torch.optim.Adagrad([p], lr=1e-3, eps=1e-12),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize(("ratio", "step"), [(13.0, 21), (300.0, 79)])
def test_the_damping_bound_is_what_the_optimizer_does_to_a_spread_spike(name, ratio, step):
    # Oracle: the real optimizer, run with and without one spike `ratio` times the gradient at
    # `step`, every coordinate alike; the step size where the rule reads it, over the one
    # without the spike.
    k = MOMENTUM_MEMORY + 25

    def step_size(spike: bool) -> float:
        p = torch.nn.Parameter(torch.ones(4, dtype=torch.float64))
        opt = OPTIMIZERS[name](p)
        for i in range(step + k + 1):
            before = p.detach().clone()
            p.grad = torch.full_like(p, 0.5 * (ratio if spike and i == step else 1.0))
            opt.step()
        return float((p.detach() - before).norm())

    decay = second_moment_decay(OPTIMIZERS[name](torch.nn.Parameter(torch.zeros(1))))
    spike = Finding("grad_norm_spike", step, None, {"ratio": ratio}, "warning")
    bound = _strongest_damping(SimpleNamespace(second_moment_decay=decay), spike)
    assert bound == pytest.approx(step_size(True) / step_size(False), rel=1e-6)


def test_only_a_plain_average_of_the_squared_gradient_has_a_decay():
    p = torch.nn.Parameter(torch.zeros(1))
    assert second_moment_decay(torch.optim.AdamW([p])) == 0.999
    assert second_moment_decay(torch.optim.Adadelta([p])) == 0.9
    assert second_moment_decay(SPAM([p], lr=1e-3)) == 0.999
    # a max (Adamax, AMSGrad) or a centred variance (AdaBelief, centred RMSprop) can be damped
    # far more by one spike; SGD and Lion keep no square at all
    for opt in (
        torch.optim.Adamax([p]),
        torch.optim.Adam([p], amsgrad=True),
        torch.optim.RMSprop([p], centered=True),
        AdaBelief([p], lr=1e-3),
        torch.optim.SGD([p], lr=0.1),
        Lion([p], lr=1e-4),
    ):
        assert second_moment_decay(opt) is None, type(opt).__name__


def test_the_monitor_records_the_decay(tmp_path):
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.RMSprop(model.parameters(), alpha=0.95)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        loss = model(torch.ones(3, 2)).pow(2).mean()
        loss.backward()
        opt.step()
        mon.step(loss)
    assert steadygrad.load(tmp_path / "run").config[SECOND_MOMENT_DECAY] == 0.95


@pytest.mark.parametrize("ratio", [13.0, 1000.0])
def test_a_spike_too_small_to_damp_rmsprop_that_much_did_not_poison_it(tmp_path, ratio):
    # A healthy MobileViT under RMSprop: a 13x spike at step 22, and the updates 20-70 steps
    # later are 1/50 of those before, as RMSprop's uncorrected square fills up and the loss
    # falls. Spread over every coordinate the spike could damp them to 0.56 at most there: the
    # shrink is not its doing. Trigger: a 1000x spike, which can damp them to 0.008.
    rows = []
    for t in range(160):
        row = {"loss": 2.3 - t / 160}
        if t % 5 == 0:
            row["update_ratio/conv.weight"] = 0.05 if t < 22 else 0.001
        rows.append(row)
    spike = ("grad_norm_spike", 22, None, {"ratio": ratio}, "warning")
    config = {"optimizer": "RMSprop", "optimizer_family": "adaptive", SECOND_MOMENT_DECAY: 0.99}
    report = diagnose_stored(tmp_path, str(ratio), rows, [spike], config=config)
    assert ("adam_second_moment_poisoned" in report.causes()) is (ratio > 100)
