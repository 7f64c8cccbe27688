"""Run lifecycle (resume, overwrite, state in a checkpoint), the learning rate actually used, and
an autopilot that acts before the update in any closure order and never loops."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from helpers import no_hooks_left, regression_batch, tiny_mlp
from torch import nn

import steadygrad
from steadygrad.diagnose.detectors.training import LOSS_SPIKE


def loop(mon, model, opt, steps, start=0, loss_scale=None, scheduler=None, poison=()):
    for i in range(start, start + steps):
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        if loss_scale and i in loss_scale:
            loss = loss * loss_scale[i]
        loss.backward()
        if i in poison:
            model[0].weight.grad.fill_(float("nan"))
        opt.step()
        if scheduler is not None:
            scheduler.step()  # the usual order: before mon.step
        mon.step(loss)
        opt.zero_grad()


def test_an_existing_run_needs_resume_or_overwrite(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with steadygrad.Monitor(model, opt, tmp_path, progress=False) as mon:
        loop(mon, model, opt, 5)
    with pytest.raises(FileExistsError, match="resume=True.*overwrite=True"):
        steadygrad.Monitor(model, opt, tmp_path, progress=False)
    assert no_hooks_left(model, opt)  # the failed Monitor left the model as it was
    with pytest.raises(ValueError, match="resume and overwrite"):
        steadygrad.Monitor(model, opt, tmp_path, resume=True, overwrite=True)
    with steadygrad.Monitor(model, opt, tmp_path, overwrite=True, progress=False) as mon:
        loop(mon, model, opt, 2)
    steps, _ = steadygrad.load(tmp_path).series("loss")
    assert list(steps) == [0, 1]


def test_resume_continues_the_steps_and_the_detectors(tmp_path):
    """A spike right after resuming is caught only if the detectors kept their history: a fresh
    loss-spike detector stays quiet for its first 20 steps."""
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with steadygrad.Monitor(model, opt, tmp_path / "a", progress=False) as mon:
        loop(mon, model, opt, 30)
    with steadygrad.Monitor(model, opt, tmp_path / "a", resume=True, progress=False) as mon:
        assert mon.step_count == 30
        loop(mon, model, opt, 3, start=30, loss_scale={30: 100.0})
        spikes = [f.step for f in mon.findings if f.kind == LOSS_SPIKE]
    assert spikes == [30]
    run = steadygrad.load(tmp_path / "a")
    steps, _ = run.series("loss")
    assert list(steps) == list(range(33)) and run.status == "finished"
    assert [f.step for f in run.findings() if f.kind == LOSS_SPIKE] == [30]

    # the control: the same spike in a fresh run at step 0 of its own is not caught
    with steadygrad.Monitor(model, opt, tmp_path / "b", progress=False) as fresh:
        loop(fresh, model, opt, 3, start=30, loss_scale={30: 100.0})
        assert not [f for f in fresh.findings if f.kind == LOSS_SPIKE]


def test_state_dict_carries_the_run_into_a_checkpoint(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pilot = steadygrad.Autopilot(rollback=False)
    mon = steadygrad.Monitor(model, opt, tmp_path, autopilot=pilot, progress=False)
    loop(mon, model, opt, 25, poison=(12,))
    checkpoint = {"model": model.state_dict(), "steadygrad": mon.state_dict()}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    loop(mon, model, opt, 5, start=25)  # steps 25..29, then the job is killed
    mon.close("crashed")

    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model.load_state_dict(saved["model"])
    pilot2 = steadygrad.Autopilot(rollback=False)
    mon = steadygrad.Monitor(model, opt, tmp_path, autopilot=pilot2, resume=True, progress=False)
    mon.load_state_dict(saved["steadygrad"])
    assert mon.step_count == 25 and pilot2.skipped_step == 12
    loop(mon, model, opt, 3, start=25, loss_scale={25: 100.0})
    mon.close()
    run = steadygrad.load(tmp_path)
    steps, _ = run.series("loss")
    assert list(steps) == list(range(28))  # 25..29 of the dead process were dropped
    assert [f.step for f in run.findings() if f.kind == LOSS_SPIKE] == [25]
    # the autopilot's baselines went on too: the gradient spike at 25 switches clipping on (at
    # 26: the loss stepped up with it, and only the next loss says one batch, not a new stage)
    assert [(a.step, a.kind) for a in run.actions()] == [
        (12, "skip_update"),
        (26, "enable_spike_clipping"),
    ]


def test_the_recorded_learning_rate_is_the_one_the_update_used(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    with steadygrad.Monitor(model, opt, tmp_path, progress=False) as mon:
        loop(mon, model, opt, 6, scheduler=sched)
    _, lr = steadygrad.load(tmp_path).series("lr/0")
    assert list(lr) == pytest.approx([0.1 / (1 + k) for k in range(6)], rel=1e-12)


def test_the_autopilot_decides_after_a_closure_ran_the_backward(tmp_path):
    """``optimizer.step(closure)`` runs forward and backward inside the step (Lightning, LBFGS
    style): the decision must see this step's gradients, and skipping must not stop the call."""
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    pilot = steadygrad.Autopilot(rollback=False)
    mon = steadygrad.Monitor(model, opt, tmp_path, autopilot=pilot, progress=False)
    moved, closure_ran = [], []
    for i in range(8):
        x, y = regression_batch(i)
        if i == 5:
            x = x * float("nan")  # a bad batch, seen only inside the closure

        def closure(x=x, y=y, i=i):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            closure_ran.append(i)
            return loss

        before = [p.detach().clone() for p in model.parameters()]
        loss = opt.step(closure)
        mon.step(loss)
        moved.append(
            max((p - b).abs().max().item() for p, b in zip(model.parameters(), before, strict=True))
        )
    mon.close()
    assert closure_ran == list(range(8))
    assert moved[5] == 0.0 and all(m > 0 for k, m in enumerate(moved) if k != 5)
    assert [(s, k) for s, k, _ in mon.actions] == [(5, "skip_update")]
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_skipped_step_is_not_rolled_back(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pilot = steadygrad.Autopilot(snapshot_every=5)
    with steadygrad.Monitor(model, opt, tmp_path, autopilot=pilot, progress=False) as mon:
        loop(mon, model, opt, 20, loss_scale={9: float("nan")}, poison=(9,))
    assert [(s, k) for s, k, _ in mon.actions] == [(9, "skip_update")]
    assert pilot.rollbacks == 0


def test_rollback_is_bounded_and_then_stops_with_a_message(tmp_path, caplog):
    """A run whose weights are poisoned again and again: rolling back cannot help, so after
    ``max_rollbacks`` within the window the autopilot stops, says so, and the loop finishes."""
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pilot = steadygrad.Autopilot(snapshot_every=3, max_rollbacks=2, rollback_window=100)
    mon = steadygrad.Monitor(model, opt, tmp_path, autopilot=pilot, progress=False)
    with caplog.at_level(logging.WARNING, logger="steadygrad"):
        for i in range(30):
            x, y = regression_batch(i)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            if i >= 10:
                with torch.no_grad():
                    model[2].weight.mul_(float("inf"))  # weights go bad after every update
            mon.step(loss)
            opt.zero_grad()
    mon.close()
    kinds = [k for _, k, _ in mon.actions]
    assert kinds.count("rollback") == 2 and kinds.count("rollback_stopped") == 1
    stopped = kinds.index("rollback_stopped")
    assert "rollback" not in kinds[stopped:]  # and never again
    assert "rollback is switched off" in caplog.text


def test_lr_backoff_survives_the_scheduler(tmp_path):
    """A rollback at step 6 to the snapshot of step 4 puts the schedule back where it was then
    (two scheduler steps back) and halves the rate: every later rate is half the scheduler's
    own closed form at its position, so the scheduler's next steps do not undo the back-off."""
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    pilot = steadygrad.Autopilot(snapshot_every=2, lr_factor=0.5, scheduler=sched)
    mon = steadygrad.Monitor(model, opt, tmp_path, autopilot=pilot, progress=False)
    for i in range(12):
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        if i == 6:
            with torch.no_grad():
                model[2].weight.fill_(float("nan"))  # a divergence: rolled back
        sched.step()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    [(step, kind, detail)] = mon.actions
    assert (step, kind, detail["to_step"]) == (6, "rollback", 4)
    assert detail["lr_after"] == pytest.approx([0.5 * lr for lr in detail["lr_before"]])
    _, lr = steadygrad.load(tmp_path).series("lr/0")
    want = [0.1 / (1 + k) for k in range(7)]  # as scheduled
    want.append(0.5 * 0.1 / 8)  # step 7: the rate that diverged, halved
    want += [0.5 * 0.1 / (1 + k - 2) for k in range(8, 12)]  # the schedule, two steps back
    assert list(lr) == pytest.approx(want, rel=1e-12)
    assert all(math.isfinite(x) for x in steadygrad.load(tmp_path).series("loss")[1][7:])


def test_resume_without_a_saved_state_goes_on_after_the_last_stored_step(tmp_path):
    from steadygrad.monitor.state import STATE_FILE

    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = steadygrad.Monitor(model, opt, tmp_path, progress=False)
    loop(mon, model, opt, 7)
    mon.close("crashed")
    (tmp_path / STATE_FILE).unlink()  # as if killed before it could save its state
    with steadygrad.Monitor(model, opt, tmp_path, resume=True, progress=False) as mon:
        assert mon.step_count == 7
        loop(mon, model, opt, 2, start=7)
    steps, _ = steadygrad.load(tmp_path).series("loss")
    assert list(steps) == list(range(9))


@pytest.mark.parametrize("sync", [None, True])
def test_fused_optimizer_skips_on_the_device_unless_sync_is_asked(tmp_path, sync):
    model = tiny_mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    pilot = steadygrad.Autopilot(rollback=False, sync=sync)
    with steadygrad.Monitor(model, opt, tmp_path, autopilot=pilot, progress=False) as mon:
        loop(mon, model, opt, 4)
        before = [p.detach().clone() for p in model.parameters()]
        step_before = opt.state[model[0].weight]["step"].clone()
        loop(mon, model, opt, 1, start=4, poison=(4,))
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
        assert torch.equal(opt.state[model[0].weight]["step"], step_before)
        loop(mon, model, opt, 2, start=5)
    assert pilot._skipper.device_side == (sync is None)
    assert [(s, k) for s, k, _ in mon.actions] == [(4, "skip_update")]
    with pytest.raises(TypeError, match="sync must be None, True or False"):
        steadygrad.Autopilot(sync="yes")
