"""Schedules vs closed forms written out here, and vs pytorch-optimizer's WSD where they agree."""

import math

import pytest
import torch

from steadygrad.optim.schedules import WarmupCosine, WarmupStableDecay


def _optimizer(lr: float = 2.0) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(scheduler: torch.optim.lr_scheduler.LRScheduler, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


SHAPES = {
    "linear": lambda q: 1 - q,
    "cosine": lambda q: (1 + math.cos(math.pi * q)) / 2,
    "1-sqrt": lambda q: 1 - math.sqrt(q),
    "1-square": lambda q: 1 - q * q,
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.25])
def test_wsd_matches_closed_form(shape, min_lr_ratio):
    warmup, stable, decay, peak = 4, 3, 5, 2.0
    got = _lrs(WarmupStableDecay(_optimizer(peak), warmup, stable, decay, shape, min_lr_ratio), 16)
    expected = []
    for s in range(16):
        if s < 4:
            m = s / 4
        elif s < 7:
            m = 1.0
        elif s < 12:
            m = min_lr_ratio + (1 - min_lr_ratio) * SHAPES[shape]((s - 7) / 5)
        else:
            m = min_lr_ratio
        expected.append(peak * m)
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt"])
def test_wsd_is_continuous_at_the_end_of_the_cooldown(shape):
    sched = WarmupStableDecay(_optimizer(1.0), 10, 10, 1000, shape, min_lr_ratio=0.3)
    lrs = _lrs(sched, 1100)
    steps = [abs(b - a) for a, b in zip(lrs[20:], lrs[21:], strict=False)]
    assert max(steps) < 0.04  # the steepest (1-sqrt) first step is 0.7 * sqrt(1/1000) = 0.022
    assert lrs[1019] == pytest.approx(0.3 + 0.7 * SHAPES[shape](999 / 1000))
    assert lrs[1020:] == pytest.approx([0.3] * 80)


def _pytorch_optimizer_wsd():
    module = pytest.importorskip("pytorch_optimizer.lr_scheduler.wsd")
    return module.get_wsd_schedule


@pytest.mark.parametrize("shape", ["linear", "cosine", "1-sqrt", "1-square"])
def test_wsd_agrees_with_pytorch_optimizer_without_min_lr(shape):
    get_wsd_schedule = _pytorch_optimizer_wsd()
    ours = _lrs(WarmupStableDecay(_optimizer(), 5, 7, 11, shape), 30)
    theirs = _lrs(get_wsd_schedule(_optimizer(), 5, 7, 11, cooldown_type=shape), 30)
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_wsd_cosine_agrees_with_pytorch_optimizer_with_min_lr():
    get_wsd_schedule = _pytorch_optimizer_wsd()
    ours = _lrs(WarmupStableDecay(_optimizer(), 5, 7, 11, "cosine", 0.2), 30)
    theirs = _lrs(get_wsd_schedule(_optimizer(), 5, 7, 11, 0.2, cooldown_type="cosine"), 30)
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_pytorch_optimizer_linear_wsd_jumps_where_ours_is_continuous():
    get_wsd_schedule = _pytorch_optimizer_wsd()
    ours = _lrs(WarmupStableDecay(_optimizer(1.0), 0, 0, 10, "linear", 0.5), 12)
    theirs = _lrs(get_wsd_schedule(_optimizer(1.0), 0, 0, 10, 0.5, cooldown_type="linear"), 12)
    assert theirs[9] == pytest.approx(0.1) and theirs[10] == pytest.approx(0.5)  # 0.1 -> 0.5
    assert ours[9] == pytest.approx(0.55) and ours[10] == pytest.approx(0.5)


def test_warmup_cosine_matches_closed_form():
    peak, warmup, total, floor = 3.0, 5, 25, 0.1
    got = _lrs(WarmupCosine(_optimizer(peak), warmup, total, floor), 30)
    expected = [
        peak
        * (
            s / 5
            if s < 5
            else floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(s - 5, 20) / 20))
        )
        for s in range(30)
    ]
    assert got == pytest.approx(expected, abs=1e-12)


def test_scheduler_state_dict_resumes_the_same_schedule():
    first = WarmupStableDecay(_optimizer(), 3, 2, 6, "1-sqrt", 0.1)
    _lrs(first, 7)
    second = WarmupStableDecay(_optimizer(), 3, 2, 6, "1-sqrt", 0.1)
    second.load_state_dict(first.state_dict())
    assert _lrs(second, 5) == pytest.approx(_lrs(first, 5))


def test_per_group_base_lrs_are_each_scaled():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}])
    sched = WarmupCosine(opt, 2, 10)
    opt.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx([0.5, 0.05])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"decay_shape": "exp"}, ValueError, "decay_shape"),
        ({"min_lr_ratio": 1.5}, ValueError, "min_lr_ratio"),
        ({"min_lr_ratio": float("nan")}, ValueError, "min_lr_ratio"),
        ({"warmup_steps": -1}, ValueError, "warmup_steps"),
        ({"decay_steps": 0}, ValueError, "decay_steps"),
        ({"stable_steps": 2.5}, TypeError, "stable_steps"),
        ({"last_epoch": -2}, ValueError, "last_epoch"),
    ],
)
def test_wsd_rejects_bad_arguments(kwargs, error, match):
    args = {"warmup_steps": 1, "stable_steps": 1, "decay_steps": 1} | kwargs
    with pytest.raises(error, match=match):
        WarmupStableDecay(_optimizer(), **args)


def test_warmup_cosine_rejects_bad_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        WarmupCosine(_optimizer(), warmup_steps=10, total_steps=10)
    with pytest.raises(TypeError, match="optimizer"):
        WarmupCosine(torch.nn.Linear(1, 1), warmup_steps=1, total_steps=10)
