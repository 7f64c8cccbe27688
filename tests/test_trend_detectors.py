"""Detectors of build-ups: each has a scenario that must trigger it and a healthy control that
must not (streams made by hand here, and real monitored runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steadygrad
from steadygrad.core import Record
from steadygrad.diagnose.detectors import GradientGrowth, LossDivergence, UnstableSteps


def _stream(detector, rows):
    return [f for step, values in enumerate(rows) for f in detector.update(Record(step, values))]


def _noisy_decay(n=300, seed=0, noise=0.05):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    return (2.0 + 3.0 * np.exp(-t / 60)) * (1 + noise * rng.standard_normal(n))


def test_a_slow_climb_from_2_5_to_11_is_seen_early():
    rng = np.random.default_rng(0)
    falling = np.linspace(3.0, 2.5, 50)
    climbing = np.linspace(2.5, 11.0, 150)
    losses = np.concatenate([falling, climbing]) * (1 + 0.02 * rng.standard_normal(200))
    found = _stream(LossDivergence(), [{"loss": float(x)} for x in losses])
    warning = next(f for f in found if f.severity == "warning")
    critical = next(f for f in found if f.severity == "critical")
    # warned once the level was 50% up (about 3.75, i.e. ~step 72), long before 3x (~step 140)
    assert 55 <= warning.step <= 90 and critical.step > warning.step + 40
    assert warning.evidence["best_level"] == pytest.approx(2.5, rel=0.05)


@pytest.mark.parametrize("seed", range(5))
def test_loss_divergence_control_noisy_decreasing_and_plateau(seed):
    rows = [{"loss": float(x)} for x in _noisy_decay(seed=seed, noise=0.1)]
    assert _stream(LossDivergence(), rows) == []
    plateau = 2.0 * (1 + 0.15 * np.random.default_rng(seed).standard_normal(300))
    assert _stream(LossDivergence(), [{"loss": float(x)} for x in plateau]) == []


def _noisy_batches(seed, climb):
    """A regressor's batch losses: a fast fall from 0.77 to 0.07, then a level that climbs by
    ``climb`` over 260 steps (a weight-decay sign bug), each batch scattered +-60% around it."""
    t = np.arange(300)
    level = np.where(t < 40, 0.07 + 0.7 * np.exp(-t / 5), 0.07 + climb * (t - 40) / 260)
    return level * np.random.default_rng(seed).chisquare(6, 300) / 6


def test_a_slow_climb_in_noisy_batches_is_read_over_a_long_median():
    # Trigger (set 145's weight-decay sign bug): the level triples over 260 steps, but each
    # batch scatters so much that a running median of five never leaves the scatter in four of
    # six seeds; the median of the last 32, five times steadier, climbs out of its own. Control:
    # the same scatter about a level that stays.
    found = [
        _stream(LossDivergence(), [{"loss": x} for x in _noisy_batches(s, 0.14)]) for s in range(6)
    ]
    assert all(found)
    slow = [f[0] for f in found if f[0].evidence.get("window") == 32]
    assert len(slow) >= 3 and all(
        f.evidence["best_level"] < 0.1 < f.evidence["loss_median"] for f in slow
    )
    for seed in range(6):
        assert _stream(LossDivergence(), [{"loss": x} for x in _noisy_batches(seed, 0.0)]) == []


def _one_example_losses(seed, n=1500):
    """SGD with a batch of one near an interpolating minimum: each step's loss is one example's
    squared error, a chi-square(1) scatter around a falling level (values 100x apart)."""
    rng = np.random.default_rng(seed)
    level = 0.003 + 0.1 * np.exp(-np.arange(n) / 100)
    return level * rng.chisquare(1, n)


def test_a_batch_of_one_is_no_divergence_and_a_real_climb_in_it_still_is():
    # Control: ten heavy-tailed healthy runs of 1,500 steps. Before the sustained level learnt
    # the series' scatter they gave hundreds of critical findings; now at most a few in all.
    found = []
    for seed in range(10):
        losses = _one_example_losses(seed)
        rows = [{"loss": float(x), "grad_norm": 3 * float(np.sqrt(x))} for x in losses]
        found += _stream(LossDivergence(), rows) + _stream(GradientGrowth(), rows)
    assert len(found) <= 6  # 5 measured; 503 before
    # Trigger: the same scatter around a level that climbs 30x from step 800 is found.
    losses = _one_example_losses(0)
    losses[800:] *= np.geomspace(1, 30, 700)
    climb = _stream(LossDivergence(), [{"loss": float(x)} for x in losses])
    assert climb and 800 < climb[0].step < 1100


def test_gradient_growth_names_the_tensor_where_it_starts():
    rows = []
    for t in range(60):
        deep = 1.0 if t < 20 else 1.25 ** (t - 20)  # grows first
        shallow = 1.0 if t < 30 else 1.25 ** (t - 30)  # follows ten steps later
        rows.append(
            {
                "grad_norm/head.weight": 0.5,
                "grad_norm/rnn.weight_hh": deep,
                "grad_norm/embed.weight": shallow,
                "grad_norm": float(np.sqrt(0.25 + deep**2 + shallow**2)),
            }
        )
    found = _stream(GradientGrowth(), rows)
    assert found and found[0].where == "rnn.weight_hh"
    assert found[0].evidence["started_at_step"] < 30


@pytest.mark.parametrize("seed", range(5))
def test_gradient_growth_control_bursty_healthy_norms(seed):
    """Healthy transformer-like gradient norms: lognormal noise with 3-5x bursts."""
    rng = np.random.default_rng(seed)
    norms = np.exp(0.3 * rng.standard_normal(400))
    bursts = rng.choice(400, 20, replace=False)
    norms[bursts] *= rng.uniform(3, 5, 20)
    rows = [{"grad_norm": float(g), "grad_norm/w": float(g)} for g in norms]
    assert _stream(GradientGrowth(), rows) == []
    spikes = steadygrad.GradNormSpikeDetector()
    assert _stream(spikes, rows) == []


def _vanished_then_back(back_to: float, seed: int = 0) -> list[dict]:
    """A policy-gradient-like run: the gradient norm sustained near 0.5, then vanished (the
    policy collapsed: every sample the same, a centred reward of 0) to rounding level, then
    a knock brings it back to ``back_to``; the loss stalls, and climbs if it explodes."""
    rng = np.random.default_rng(seed)
    norms = np.concatenate([np.full(50, 0.5), np.full(30, 1e-8), np.full(40, back_to)])
    norms = norms * np.exp(0.2 * rng.standard_normal(len(norms)))
    # a centred surrogate: falls below 0 as the policy learns, 0 once it collapsed
    losses = 0.01 * rng.standard_normal(len(norms))
    losses[:50] -= np.linspace(0.0, 0.4, 50)
    losses[80:] += 0.01 * np.arange(40) * (back_to > 1)  # an explosion hurts the loss
    return [{"grad_norm": float(g), "loss": float(x)} for g, x in zip(norms, losses, strict=True)]


def test_a_gradient_that_vanished_and_came_back_is_no_explosion_but_one_past_its_old_level_is():
    # Control: back to its usual size (0.5) after vanishing to 1e-8, a 5e7-fold "growth"
    # from the best level, was read as exploding gradients (h106_disk_corrupted_reward).
    assert _stream(GradientGrowth(), _vanished_then_back(0.5)) == []
    # Trigger: back and 100x past the level it held before it vanished.
    found = _stream(GradientGrowth(), _vanished_then_back(50.0))
    assert found and found[0].step >= 80
    assert found[0].evidence["best_level"] == pytest.approx(0.6, rel=0.3)
    assert found[0].evidence["growth"] == pytest.approx(80, rel=0.4)


def _quadratic_run(tmp_path, factor, steps=40):
    torch.manual_seed(1)
    x = torch.randn(128, 4, dtype=torch.float64) * torch.tensor([3.0, 1.0, 1.0, 0.5]).double()
    y = torch.randn(128, 1, dtype=torch.float64)
    top = float(torch.linalg.eigvalsh(2 * x.T @ x / 128).max())
    model = torch.nn.Linear(4, 1, bias=False).double()
    opt = torch.optim.SGD(model.parameters(), lr=factor * 2 / top)
    run_dir = tmp_path / f"lr{factor}"
    with steadygrad.watch(model, opt, run_dir, progress=False) as mon:
        for _ in range(steps):
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.load(run_dir)


def test_steps_above_the_limit_are_named_before_the_loss_blows_up(tmp_path):
    run = _quadratic_run(tmp_path, factor=1.6)
    unstable = [f for f in run.findings() if f.kind == "unstable_steps"]
    assert unstable and unstable[0].step < 10
    report = steadygrad.diagnose(run)
    assert report.top.cause == "sharpness_above_limit"
    assert report.top.confidence in ("high", "medium")


def test_unstable_steps_control_below_and_at_the_limit(tmp_path):
    for factor in (0.5, 0.95):
        run = _quadratic_run(tmp_path, factor=factor)
        assert not [f for f in run.findings() if f.severity != "info"], factor
        assert steadygrad.diagnose(run).healthy


def test_unstable_steps_fires_once_per_episode():
    rows = [{"directional_sharpness_ratio": r} for r in [0.5, 2, 2, 2, 2, 0.5] * 3]
    found = _stream(UnstableSteps(window=5), rows)
    assert len(found) == 1


class _Picker(torch.nn.Module):
    """A tanh RNN over 1-channel traces with a linear head (set 113's seismic picker)."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.rnn = torch.nn.RNN(1, 32, batch_first=True)
        torch.nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        self.head = torch.nn.Linear(32, 8)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("gain", [1.6, 1.0])
def test_one_explosion_that_multiplied_the_weights_is_found_though_the_loss_never_fell(
    tmp_path, gain
):
    # Trigger: recurrent weights initialised with gain 1.6 under SGD with Nesterov momentum:
    # the second gradient is ~1e6x the first, its update multiplies the weights' norm ~1e4-fold
    # and saturates the recurrence (its gradients are exactly 0 from then on). The loss never
    # learnt, so it never "stalled" below a better level, and the explosion went unreported.
    # Control: gain 1.0, the same run otherwise: no explosion.
    torch.manual_seed(1)
    model = _Picker(gain)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    gen = torch.Generator().manual_seed(1)
    with steadygrad.watch(model, opt, tmp_path / str(gain), progress=False) as mon:
        for _ in range(40):
            x = torch.randn(16, 80, 1, generator=gen)
            y = torch.randint(0, 8, (16,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            mon.step(loss)
    run = steadygrad.load(tmp_path / str(gain))
    growth = [f for f in run.findings() if f.kind == "gradient_growth"]
    weights = run.series("param_norm")[1]
    if gain > 1:
        assert weights.max() > 1e3 * weights[0]  # the explosion happened
        assert growth and growth[0].severity == "critical" and growth[0].step <= 2
        assert growth[0].where == "rnn.weight_hh_l0"
        assert steadygrad.diagnose(run).top.cause == "exploding_gradients"
    else:
        # no explosion: the weights grow as SGD fits (2x to 2.3x, by the CPU's kernels), not
        # a thousandfold
        assert weights.max() < 10 * weights[0] and growth == []
