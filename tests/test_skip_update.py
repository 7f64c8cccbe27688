"""Skipping an update exactly (host and device paths) and a learning-rate back-off that lasts.

Oracle: a twin model and optimizer that simply never ran the skipped step; after the skip and
more healthy steps, both must agree bit for bit. For the back-off, the scheduler's own
closed form times the factor.
"""

from __future__ import annotations

import pytest
import torch

from steadygrad.diagnose.lr_backoff import back_off_learning_rate
from steadygrad.diagnose.skip_update import UpdateSkipper, supports_device_skip


def model_and_optimizer(kind: str):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    if kind == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    elif kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-3)
    elif kind == "fused_adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=True)
    else:
        raise ValueError(kind)
    return model, opt


def backward(model, seed, poison=False):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 4, generator=g), torch.randn(16, 2, generator=g)
    if poison:
        x[0, 0] = float("nan")
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


@pytest.mark.parametrize("kind", ["adamw", "sgd", "fused_adamw"])
@pytest.mark.parametrize("skip_at", [0, 3])  # the very first step (no state yet) or a later one
def test_a_skipped_update_leaves_no_trace(kind, skip_at):
    model, opt = model_and_optimizer(kind)
    twin, twin_opt = model_and_optimizer(kind)
    skipper = UpdateSkipper(opt)
    assert skipper.device_side == (kind == "fused_adamw")
    for step in range(6):
        if step == skip_at:
            backward(model, 100, poison=True)
            if skipper.device_side:
                norm = torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in model.parameters()])
                )
                skipper.arm_device(~torch.isfinite(norm))
            else:
                skipper.arm_host()
            opt.step()
            assert skipper.after_update()
            assert not hasattr(opt, "found_inf")
            assert same(model, twin)
            continue
        for m, o in ((model, opt), (twin, twin_opt)):
            backward(m, step)
            if m is model and skipper.device_side:  # a healthy step through the flag path
                skipper.arm_device(torch.tensor(False))
            o.step()
            if m is model:
                skipper.after_update()
        assert same(model, twin), f"step {step}"
    state = opt.state[next(model.parameters())]
    twin_state = twin_opt.state[next(twin.parameters())]
    for key, value in twin_state.items():
        assert torch.equal(torch.as_tensor(state[key]), torch.as_tensor(value)), key


def test_a_scalers_flag_is_kept_and_combined():
    model, opt = model_and_optimizer("fused_adamw")
    assert supports_device_skip(opt) and not supports_device_skip(torch.optim.SGD([torch.zeros(1)]))
    opt.found_inf = torch.tensor(1.0)  # what a GradScaler sets before its step
    skipper = UpdateSkipper(opt)
    skipper.arm_device(torch.tensor(False))
    assert opt.found_inf.item() == 1.0  # the scaler's skip stands
    skipper.after_update()
    assert hasattr(opt, "found_inf")  # the scaler removes its own flag, not us


def test_reset_drops_an_update_that_never_ran():
    model, opt = model_and_optimizer("sgd")
    skipper = UpdateSkipper(opt)
    skipper.arm_host()
    skipper.reset()
    assert not skipper.armed and not skipper.after_update()


def test_back_off_lasts_through_lambda_lr_and_sequential_schedulers():
    def build(factor):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.2)
        warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 4)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
        seq = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[3])
        return opt, seq

    ref_opt, ref = build(1.0)
    opt, sched = build(0.5)
    rates, ref_rates = [], []
    for step in range(10):
        if step == 2:
            back_off_learning_rate(opt, [sched], 0.5)
        rates.append(opt.param_groups[0]["lr"])
        ref_rates.append(ref_opt.param_groups[0]["lr"])
        for o, s in ((opt, sched), (ref_opt, ref)):
            o.step()
            s.step()
    assert rates[:2] == ref_rates[:2]
    assert rates[2:] == pytest.approx([0.5 * r for r in ref_rates[2:]], rel=1e-12)


def test_back_off_lasts_through_one_cycle():
    def build():
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([p], lr=0.1)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=20)

    (opt, sched), (ref_opt, ref) = build(), build()
    back_off_learning_rate(opt, [sched], 0.25)
    for _ in range(8):
        for o, s in ((opt, sched), (ref_opt, ref)):
            o.step()
            s.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25 * ref_opt.param_groups[0]["lr"])
