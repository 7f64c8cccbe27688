"""The autopilot never harms the run: one autopilot per run with no state carried over, snapshot
faults (a failed write, a corrupt or missing snapshot) fall back or are skipped and said, and a
snapshot holds the LR scheduler's and the GradScaler's state, which a rollback restores."""

import os
import shutil
import socket
import warnings

import pytest
import torch
from helpers import no_hooks_left, regression_batch, tiny_mlp
from torch import nn

import steadygrad


def _loop(mon, model, opt, steps, before_record=None, scaler=None, scheduler=None, after=None):
    """Train ``steps`` steps; ``before_record(i)`` runs after the update, before mon.step;
    ``after(i)`` right after mon.step."""
    for i in range(steps):
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        if before_record is not None:
            before_record(i)
        mon.step(loss)
        if after is not None:
            after(i)
        opt.zero_grad()
        if scheduler is not None:
            scheduler.step()


def _poison_weights(model):
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")


def _rollbacks(mon):
    return [(s, d) for s, k, d in mon.actions if k == "rollback"]


def test_an_autopilot_serves_one_run_at_a_time_and_starts_afresh(tmp_path):
    pilot = steadygrad.Autopilot(snapshot_every=5)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = steadygrad.Monitor(model, opt, tmp_path / "a", autopilot=pilot, progress=False)
    _loop(first, model, opt, 12, lambda i: i == 8 and _poison_weights(model))
    assert pilot.rollbacks == 1 and opt.param_groups[0]["lr"] == pytest.approx(0.025)

    other, other_opt = tiny_mlp(1), None
    other_opt = torch.optim.SGD(other.parameters(), lr=0.05)
    with pytest.raises(RuntimeError, match="already attached to a Monitor that is still open"):
        steadygrad.Monitor(other, other_opt, tmp_path / "b", autopilot=pilot, progress=False)
    assert no_hooks_left(other, other_opt) and not (tmp_path / "b").exists()
    first.close()

    # Reused for the next run (as in a sweep): nothing of the first run carries over.
    healthy = steadygrad.Monitor(other, other_opt, tmp_path / "c", autopilot=pilot, progress=False)
    assert (pilot.rollbacks, pilot.clipping_on, pilot.snapshot_step) == (0, False, 0)
    _loop(healthy, other, other_opt, 20)
    healthy.close()
    assert healthy.actions == [] and other_opt.param_groups[0]["lr"] == 0.05


def test_a_failed_snapshot_write_keeps_the_previous_snapshot(tmp_path, caplog):
    snapshots = tmp_path / "snapshots"
    pilot = steadygrad.Autopilot(snapshot_every=5, snapshot_dir=snapshots)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", autopilot=pilot, progress=False)
    kept = {}

    def fault(i):
        if i == 6:  # a directory where the next snapshot's temporary file must go: writes fail
            temp = f".last_good.pt.{socket.gethostname()}.{os.getpid()}.tmp"
            (snapshots / temp).mkdir()
            kept.update(torch.load(snapshots / "last_good.pt", weights_only=True))
        if i == 17:
            _poison_weights(model)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _loop(mon, model, opt, 20, fault)  # snapshots at 10 and 15 fail: training goes on
    mon.close()
    snapshot_warnings = [w for w in caught if "could not take a snapshot" in str(w.message)]
    assert len(snapshot_warnings) == 1  # once, though two writes failed
    assert sum("could not take a snapshot" in r.getMessage() for r in caplog.records) == 2
    (step, detail), *_ = _rollbacks(mon)
    assert step == 17 and detail["to_step"] == kept["step"] == 5
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_corrupt_last_snapshot_falls_back_to_the_one_before(tmp_path):
    snapshots = tmp_path / "snapshots"
    pilot = steadygrad.Autopilot(snapshot_every=5, snapshot_dir=snapshots)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", autopilot=pilot, progress=False)
    previous = {}

    def corrupt(i):
        if i == 17:
            previous.update(torch.load(snapshots / "previous_good.pt", weights_only=True))
            last = snapshots / "last_good.pt"
            os.truncate(last, last.stat().st_size // 2)  # e.g. a disk that filled mid-write
            _poison_weights(model)

    def check(i):
        if i == 17:  # right after the rollback: exactly the state of the snapshot before
            for name, value in model.state_dict().items():
                assert torch.equal(value, previous["model"][name]), name

    with pytest.warns(RuntimeWarning, match="the last snapshot could not be read"):
        _loop(mon, model, opt, 20, corrupt, after=check)
    mon.close()
    (step, detail), *_ = _rollbacks(mon)
    assert (step, detail["to_step"], previous["step"]) == (17, 10, 10)


def test_no_readable_snapshot_skips_the_rollback_and_says_so(tmp_path):
    snapshots = tmp_path / "snapshots"
    pilot = steadygrad.Autopilot(snapshot_every=5, snapshot_dir=snapshots, skip_nonfinite=True)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", autopilot=pilot, progress=False)

    def lose_them(i):
        if i == 12:
            shutil.rmtree(snapshots)
            _poison_weights(model)

    with pytest.warns(RuntimeWarning, match="could not roll back at step 12: no readable"):
        _loop(mon, model, opt, 15, lose_them)  # no exception: the run goes on
    mon.close()
    failed = [(s, d) for s, k, d in mon.actions if k == "rollback_failed"]
    assert failed and failed[0][0] == 12 and "last_good.pt" in failed[0][1]["reason"]
    assert steadygrad.load(tmp_path / "run").status == "finished"


@pytest.mark.parametrize("on_disk", [False, True])
def test_rollback_restores_the_lr_scheduler_and_the_grad_scaler(tmp_path, on_disk):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=100)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    pilot = steadygrad.Autopilot(
        snapshot_every=5,
        scheduler=scheduler,
        lr_factor=0.5,
        snapshot_dir=tmp_path / "snapshots" if on_disk else None,
    )
    mon = steadygrad.Monitor(
        model, opt, tmp_path / "run", autopilot=pilot, scaler=scaler, progress=False
    )
    seen = {}

    def poison(i):
        if i == 13:
            seen["base_lrs_before"] = list(scheduler.base_lrs)
            _poison_weights(model)

    def look(i):  # right after mon.step: at 10 the snapshot was just taken, at 13 restored
        if i in (10, 13):
            seen[i] = (scheduler.last_epoch, scaler.state_dict(), list(scheduler.base_lrs))

    _loop(mon, model, opt, 14, poison, scaler=scaler, scheduler=scheduler, after=look)
    mon.close()
    (step, detail), *_ = _rollbacks(mon)
    assert (step, detail["to_step"]) == (13, 10)
    (epoch, scaler_state, _), (epoch_after, scaler_after, base_lrs_after) = seen[10], seen[13]
    assert epoch == 10 and epoch_after == 10  # the schedule is back where the snapshot was
    assert scaler_after == scaler_state and scaler_state["_growth_tracker"] > 0
    assert base_lrs_after == [lr * 0.5 for lr in seen["base_lrs_before"]]


def test_a_killed_snapshot_write_leaves_no_temporary_file_behind(tmp_path):
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    host = socket.gethostname()
    stale = snapshots / f".last_good.pt.{host}.999999999.tmp"  # its writer (pid) is gone
    stale.write_bytes(b"half a snapshot")
    alive = snapshots / f".last_good.pt.{host}.{os.getpid()}.tmp.keep"  # not ours to remove
    alive.write_bytes(b"")
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pilot = steadygrad.Autopilot(snapshot_dir=snapshots)
    steadygrad.Monitor(model, opt, tmp_path / "run", autopilot=pilot, progress=False).close()
    assert sorted(p.name for p in snapshots.iterdir()) == [alive.name, "last_good.pt"]
