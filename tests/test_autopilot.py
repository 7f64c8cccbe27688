"""The autopilot: a run that diverges without it finishes with it, and nothing is corrupted."""

import math

import pytest
import torch
from helpers import no_hooks_left, regression_batch, tiny_mlp
from torch import nn

import steadygrad


def _diverging_run(tmp_path, name, autopilot=None, steps=80, check=None):
    """SGD with momentum at lr=2.0 on a small MLP: it diverges to NaN around step 30."""
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=2.0, momentum=0.9)
    mon = steadygrad.Monitor(model, opt, tmp_path / name, autopilot=autopilot, progress=False)
    for i in range(steps):
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
        if check is not None:
            check(i, model, opt, mon)
        opt.zero_grad()
    mon.close()
    return model, opt, mon


def test_without_autopilot_the_run_diverges(tmp_path):
    model, _, mon = _diverging_run(tmp_path, "plain")
    assert not all(torch.isfinite(p).all() for p in model.parameters())
    assert any(f.kind == "nonfinite" for f in mon.findings)


def test_with_autopilot_it_rolls_back_and_finishes(tmp_path):
    snapshots = tmp_path / "snapshots"
    pilot = steadygrad.Autopilot(snapshot_every=10, snapshot_dir=snapshots, lr_factor=0.5)
    verified = []

    def check(i, model, opt, mon):
        if not (mon.actions and mon.actions[-1][:2] == (i, "rollback")):
            return
        # Right after the rollback the state equals the snapshot on disk, exactly.
        snap = torch.load(snapshots / "last_good.pt", weights_only=True)
        for name, value in model.state_dict().items():
            assert torch.equal(value, snap["model"][name]), name
        state = opt.state_dict()["state"]
        for key, entry in snap["optimizer"]["state"].items():
            assert torch.equal(state[key]["momentum_buffer"], entry["momentum_buffer"])
        detail = mon.actions[-1][2]
        assert detail["to_step"] == snap["step"]
        assert detail["lr_after"] == [lr * 0.5 for lr in detail["lr_before"]]
        verified.append(i)

    model, opt, mon = _diverging_run(tmp_path, "pilot", pilot, check=check)
    assert verified, "no rollback happened"
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert opt.param_groups[0]["lr"] < 2.0
    run = steadygrad.load(tmp_path / "pilot")
    assert math.isfinite(run.series("loss")[1][-1])
    assert [a.kind for a in run.actions()].count("rollback") == len(verified)
    acted = next(d for d in steadygrad.diagnose(run).diagnoses if d.cause == "autopilot_actions")
    assert [r["step"] for r in acted.evidence["rollbacks"]] == verified
    assert "the run ended with loss" in acted.summary
    assert no_hooks_left(model, opt) and "step" not in opt.__dict__


def test_in_memory_snapshots_work_too(tmp_path):
    pilot = steadygrad.Autopilot(snapshot_every=10)
    model, _, mon = _diverging_run(tmp_path, "memory", pilot)
    assert pilot.rollbacks >= 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _poisoned_loop(tmp_path, name, autopilot, poison_at=(5,), scale=float("nan"), steps=12):
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    mon = steadygrad.Monitor(model, opt, tmp_path / name, autopilot=autopilot, progress=False)
    moved = []
    for i in range(steps):
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if i in poison_at:
            model[2].weight.grad.mul_(scale)
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        mon.step(loss)
        moved.append(
            max((p - b).abs().max().item() for p, b in zip(model.parameters(), before, strict=True))
        )
        opt.zero_grad()
    mon.close()
    return model, mon, moved


def test_skip_nonfinite_update(tmp_path):
    model, mon, moved = _poisoned_loop(tmp_path, "plain", None)
    assert not torch.isfinite(model[2].weight).all()
    pilot = steadygrad.Autopilot(rollback=False)
    model, mon, moved = _poisoned_loop(tmp_path, "pilot", pilot)
    assert moved[5] == 0.0 and moved[4] > 0 and moved[6] > 0  # only the poisoned step is skipped
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert [(s, k) for s, k, _ in mon.actions] == [(5, "skip_update")]
    # Skipped by the autopilot for a NaN gradient: a real non-finite event, not AMP's.
    assert [f.kind for f in mon.findings if f.step == 5] == ["nonfinite"]


def test_spike_clipping_switches_on_after_a_gradient_spike(tmp_path):
    pilot = steadygrad.Autopilot(rollback=False)
    model, mon, moved = _poisoned_loop(
        tmp_path, "spikes", pilot, poison_at=(30, 40), scale=1000.0, steps=45
    )
    kinds = [(s, k) for s, k, _ in mon.actions]
    # the spike at 30 is reported with the next record (judged by the loss after it)
    assert (31, "enable_spike_clipping") in kinds
    assert [f.step for f in mon.findings if f.kind == "grad_norm_spike"][0] == 30
    assert (40, "clip_gradient") in kinds
    clipped = [d for s, k, d in mon.actions if k == "clip_gradient" and s == 40][0]
    assert clipped["clipped_to"] < clipped["grad_norm"] / 100


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lr_factor": 0.0}, "lr_factor must be > 0"),
        ({"lr_factor": 1.5}, "lr_factor must be <= 1"),
        ({"snapshot_every": 0}, "snapshot_every must be an int >= 1"),
        ({"divergence_ratio": 0.5}, "divergence_ratio must be >= 1"),
    ],
)
def test_autopilot_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        steadygrad.Autopilot(**kwargs)


def test_monitor_rejects_a_wrong_autopilot(tmp_path):
    model = tiny_mlp()
    with pytest.raises(TypeError, match="autopilot must be an Autopilot"):
        steadygrad.Monitor(
            model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "r", autopilot="yes"
        )


def test_autopilot_keeps_an_lr_scheduler_working(tmp_path, recwarn):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    pilot = steadygrad.Autopilot(scheduler=schedule)
    with steadygrad.watch(model, opt, tmp_path / "run", autopilot=pilot, progress=False) as mon:
        for i in range(4):
            x, y = regression_batch(i)
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            mon.step(1.0)
            opt.zero_grad()
            schedule.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.025)
    assert not [w for w in recwarn if "lr_scheduler" in str(w.message)]


def test_recorded_norms_under_the_autopilot_are_those_of_the_applied_gradients(tmp_path):
    # The autopilot measures gradient norms before the update and the Monitor reuses them:
    # they must still equal the norms of the gradients the optimizer applied (after clipping).
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    pilot = steadygrad.Autopilot(rollback=False)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", autopilot=pilot, progress=False)
    for i in range(45):
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if i in (30, 40):
            model[2].weight.grad.mul_(1000.0)
        opt.step()
        expected = {n: torch.linalg.vector_norm(p.grad).item() for n, p in model.named_parameters()}
        record = mon.step(loss)
        opt.zero_grad()
        for name, value in expected.items():
            assert record.values[f"grad_norm/{name}"] == pytest.approx(value, rel=1e-5), (i, name)
    assert (40, "clip_gradient") in [(s, k) for s, k, _ in mon.actions]
    mon.close()
