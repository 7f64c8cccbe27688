"""Properties from the papers, checked against formulas written out in the tests."""

from __future__ import annotations

import math

import pytest
import torch

from steadygrad import optim as so
from tests._optim_problem import gradients, initial_param, trajectory


def test_lion_with_decoupled_decay_ends_inside_the_box():
    lam, lr = 0.5, 0.1
    x = torch.nn.Parameter(torch.full((20,), 40.0) * torch.linspace(-1, 1, 20))
    opt = so.Lion([x], lr=lr, weight_decay=lam, fused=False)
    for _ in range(400):
        x.grad = (x.detach() - 100.0).clone()  # pulls every coordinate far out of the box
        opt.step()
    assert x.abs().max().item() <= (1 / lam) * (1 + 1e-5)
    assert x.abs().max().item() >= 0.9 / lam  # and it is pressed against the wall


def test_spam_clips_a_planted_spike_to_its_threshold():
    b1, b2, theta = 0.9, 0.999, 5000.0
    p = torch.nn.Parameter(initial_param())
    opt = so.SPAM([p], lr=1e-3, betas=(b1, b2), threshold=theta, fused=False)
    for i, g in enumerate(gradients(40, spike_at=40), start=1):
        m_prev = opt.state[p]["exp_avg"].clone() if i > 1 else None
        v_prev = opt.state[p]["exp_avg_sq"].clone() if i > 1 else None
        p.grad = g
        opt.step()
    assert g[0, 0].abs() > 30  # the spike is there
    clipped = torch.where(g * g > theta * v_prev, torch.sign(g) * torch.sqrt(theta * v_prev), g)
    assert clipped[0, 0].abs() < g[0, 0].abs() / 3  # and the rule really clips it
    assert (clipped != g).sum() == 1  # nothing else
    expected_m = b1 * m_prev + (1 - b1) * clipped
    expected_v = b2 * v_prev + (1 - b2) * clipped**2
    torch.testing.assert_close(opt.state[p]["exp_avg"], expected_m, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], expected_v, rtol=1e-6, atol=1e-12)


def test_spam_resets_moments_on_schedule_with_warmup_and_unreset_counter():
    b1, b2, eps, lr, interval = 0.9, 0.999, 1e-6, 1e-2, 50
    p = torch.nn.Parameter(initial_param())
    opt = so.SPAM([p], lr=lr, reset_interval=interval, warmup_steps=10, fused=False)
    for g in gradients(interval):
        before = p.detach().clone()
        p.grad = g
        opt.step()
    # step `interval` is a reset step: moments restart from zero, t keeps counting
    m, v = (1 - b1) * g, (1 - b2) * g * g
    torch.testing.assert_close(opt.state[p]["exp_avg"], m)
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], v)
    t = interval
    warm = 0.01  # first step of the cosine warm-up: 1 - 0.99 * (1 + cos 0) / 2
    step = lr * warm * math.sqrt(1 - b2**t) / (1 - b1**t)
    expected = before - step * m / (v.sqrt() + eps)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-7)


def test_spam_warmup_factor_matches_torch_cosine_annealing():
    n, interval = 12, 40
    dummy = torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([dummy], lr=0.99)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(sgd, T_max=n + 1)
    for k in range(n):
        expected = 1.0 - sgd.param_groups[0]["lr"]
        got = so.spam_warmup_factor(interval + k, interval, n)
        assert got == pytest.approx(expected, abs=1e-9)
        sgd.step()
        sched.step()
    assert so.spam_warmup_factor(interval + n, interval, n) == 1.0
    assert so.spam_warmup_factor(interval - 1, interval, n) == 1.0


def test_ademamix_with_alpha_zero_is_adamw():
    fused = False
    kw = dict(lr=1e-2, weight_decay=1e-2, eps=1e-8)
    ours, _ = trajectory(
        lambda ps: so.AdEMAMix(ps, betas=(0.9, 0.999, 0.9999), alpha=0.0, fused=fused, **kw), 200
    )
    adamw, _ = trajectory(lambda ps: torch.optim.AdamW(ps, betas=(0.9, 0.999), **kw), 200)
    torch.testing.assert_close(ours, adamw, rtol=0, atol=3e-5)


def test_beta3_schedule_interpolates_the_half_life_linearly():
    b1, b3, T = 0.9, 0.9999, 1000

    def half_life(b):
        return math.log(0.5) / math.log(b)

    for t in (0, 1, 10, 250, 500, 999, 1000, 2000):
        a = min(t / T, 1.0)
        expected = (1 - a) * half_life(b1) + a * half_life(b3)
        assert half_life(so.beta3_schedule(t, b1, b3, T)) == pytest.approx(expected, rel=1e-9)
    assert so.beta3_schedule(5, b1, b3, None) == b3


def test_beta3_schedule_holds_beta3_past_its_warmup_whatever_the_betas():
    # the map past its warm-up (t/T > 1) overflowed for betas near 0 (the optimizer fuzz test
    # drew beta1 = 8e-32, beta3 = 9e-49, T = 1, and raised "math range error" at step 3)
    assert so.beta3_schedule(3, 8.3e-32, 9.3e-49, 1) == 9.3e-49
    assert so.beta3_schedule(2000, 0.9, 0.9999, 1000) == 0.9999


def test_alpha_schedule_is_linear_then_flat():
    assert [so.alpha_schedule(t, 8.0, 4) for t in (0, 1, 2, 4, 9)] == [0.0, 2.0, 4.0, 8.0, 8.0]
    assert so.alpha_schedule(3, 8.0, None) == 8.0


def test_stable_spam_reference_reset_reuses_old_moments_for_one_step():
    kw = dict(lr=1e-2, reset_interval=20, fused=False)
    ref = torch.nn.Parameter(initial_param())
    clean = torch.nn.Parameter(initial_param())
    o_ref = so.StableSPAM([ref], **kw)
    o_clean = so.StableSPAM([clean], reset_mode="clean", **kw)
    for i, g in enumerate(gradients(20), start=1):
        ref.grad, clean.grad = g, g.clone()
        o_ref.step()
        o_clean.step()
        if i < 20:
            assert torch.equal(ref, clean)
    # reference: old moments served the reset step, then were zeroed
    assert torch.count_nonzero(o_ref.state[ref]["exp_avg"]) == 0
    assert torch.count_nonzero(o_clean.state[clean]["exp_avg"]) > 0
    assert o_ref.state[ref]["step"] == o_clean.state[clean]["step"] == 1
    assert not torch.equal(ref, clean)


def test_stable_spam_scale_is_the_unclamped_cosine():
    assert so.stable_spam_scale(0, 100, 0.5) == 1.0
    assert so.stable_spam_scale(101, 100, 0.5) == pytest.approx(0.5)
    assert so.stable_spam_scale(202, 100, 0.5) == pytest.approx(1.0)  # periodic, as the reference


@pytest.mark.parametrize("guard", [False, True])
def test_spam_zero_variance_coordinates_freeze_unless_guarded(guard):
    # A coordinate with no gradient since the last reset has v == 0; the reference clips its
    # first gradient to sqrt(theta * 0) = 0, so it never moves until the next reset.
    p = torch.nn.Parameter(torch.zeros(2))
    opt = so.SPAM([p], lr=1e-2, guard_zero_variance=guard, fused=False)
    for step in range(1, 61):
        p.grad = torch.tensor([0.1, 0.1 if step >= 31 else 0.0])
        opt.step()
    assert p[0].item() != 0.0
    if guard:
        assert p[1].item() < -1e-2
    else:
        assert p[1].item() == 0.0
