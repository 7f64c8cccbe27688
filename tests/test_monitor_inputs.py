"""What the training loop hands the Monitor, right and wrong: low-precision gradients, repeated
or misordered calls, racing Monitors, GradScaler overflow episodes, and fuzzed arguments and
losses (each either recorded exactly or refused with an error naming the argument)."""

import math
import re
import tempfile
import warnings

import numpy as np
import pytest
import torch
from helpers import no_hooks_left, regression_batch, tiny_mlp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

import steadygrad


def _step(model, opt, mon, i=0):
    x, y = regression_batch(i)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_norms_accumulate_in_float32(tmp_path, dtype):
    model = nn.Linear(64, 64).to(dtype)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the weights stay as they are
    pilot = steadygrad.Autopilot(rollback=False)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", autopilot=pilot, progress=False)
    # Finite gradients whose norm is far above fp16's largest value (65504), and values that
    # bf16 cannot sum precisely (a bf16 result would be off by ~1e-4, relative).
    model.weight.grad = torch.full_like(model.weight, 30000.0 if dtype == torch.float16 else 1.0)
    model.bias.grad = torch.linspace(-3, 3, 64).to(dtype)
    expected = {n: p.grad.double().norm().item() for n, p in model.named_parameters()}
    weights = {n: p.detach().double().norm().item() for n, p in model.named_parameters()}
    opt.step()
    record = mon.step(1.0)
    mon.close()
    for name, value in expected.items():
        assert record.values[f"grad_norm/{name}"] == pytest.approx(value, rel=1e-5)
        assert record.values[f"param_norm/{name}"] == pytest.approx(weights[name], rel=1e-5)
    assert record.values["nonfinite_grads"] == 0.0
    assert [a for a in mon.actions if a[1] == "skip_update"] == []  # the update was applied


def test_calling_step_twice_records_no_phantom_skipped_step(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    with pytest.warns(RuntimeWarning, match="called again with no backward pass") as caught:
        for i in range(5):
            loss = _step(model, opt, mon, i)
            assert mon.step(loss) is not None
            assert mon.step(loss) is None  # the same step again: ignored
            opt.zero_grad()
    assert len([w for w in caught if "called again" in str(w.message)]) == 1
    mon.close()
    run = steadygrad.load(tmp_path / "run")
    assert run.num_steps == 5 and "optimizer_skipped" not in run.names()


def test_a_real_gradscaler_skip_is_still_a_skip(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", scaler=scaler, progress=False)
    x, y = regression_batch(0)
    loss = nn.functional.mse_loss(model(x), y) * 1e3
    scaler.scale(loss).backward()
    scaler.step(opt)  # overflows: the optimizer is not called
    scaler.update()
    record = mon.step(loss)
    mon.close()
    assert record.values["optimizer_skipped"] == 1.0


@pytest.mark.parametrize("on_accelerator", [True, False])
def test_zero_grad_before_step_warns_once_and_loses_one_step(tmp_path, monkeypatch, on_accelerator):
    """A loop that calls zero_grad before mon.step: where nothing read the gradients before
    the update (an accelerator's, whose activation signal makes no check there), warned once,
    at the first step, whose gradient is gone by the record; from then on the gradients are
    measured as the optimizer is about to apply them (checked against the norm computed by hand
    before the step). On a CPU model the activation signal reads them before every update (to
    keep clean weights for a replay): no step is lost, and there is nothing to warn of."""
    from steadygrad.monitor import activations

    monkeypatch.setattr(activations, "_on_accelerator", lambda model: on_accelerator)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(4):
            x, y = regression_batch(i)
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            by_hand = math.sqrt(sum(float(p.grad.double().norm()) ** 2 for p in model.parameters()))
            opt.step()
            opt.zero_grad()  # too early
            record = mon.step(loss)
            if i == 0 and on_accelerator:  # nothing measured them before the update
                assert "grad_norm" not in record.values
            else:
                assert record.values["grad_norm"] == pytest.approx(by_hand, rel=1e-6)
    mon.close()
    warned = [w for w in caught if "zero_grad" in str(w.message)]
    assert len(warned) == (1 if on_accelerator else 0)


def test_two_monitors_racing_for_one_directory_get_a_clear_error(tmp_path):
    model, other = tiny_mlp(), tiny_mlp(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    other_opt = torch.optim.SGD(other.parameters(), lr=0.05)
    first = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    with pytest.raises(FileExistsError, match=re.escape(str(tmp_path / "run")) + ".*already"):
        steadygrad.Monitor(other, other_opt, tmp_path / "run", progress=False)
    assert no_hooks_left(other, other_opt)  # the loser leaves its model as it was
    first.step(_step(model, opt, first))
    first.close()
    assert steadygrad.load(tmp_path / "run").num_steps == 1


def _amp_run(tmp_path, name, overflow_steps, steps):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=10**6)
    mon = steadygrad.Monitor(model, opt, tmp_path / name, scaler=scaler, progress=False)
    for i in range(steps):
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        boost = math.inf if i in overflow_steps else 1.0  # the scaled gradients overflow
        scaler.scale(loss * boost).backward()
        scaler.step(opt)
        scaler.update()
        mon.step(loss)
        opt.zero_grad()
    mon.close()
    return mon, steadygrad.diagnose(tmp_path / name)


def test_gradscaler_overflow_is_one_finding_per_episode(tmp_path):
    episodes = set(range(10, 14)) | {30} | set(range(40, 43))  # 3 episodes, 8 skipped steps
    mon, report = _amp_run(tmp_path, "amp", episodes, 60)
    assert [f.step for f in mon.findings if f.kind == "amp_overflow"] == [10, 30, 40]
    (amp,) = [d for d in report.diagnoses if d.cause == "amp_overflow"]
    assert amp.evidence["skipped_steps"] == 8 and amp.evidence["episodes"] == 3
    assert "benign" in amp.summary


def test_a_run_where_every_step_overflows_is_not_called_benign(tmp_path):
    mon, report = _amp_run(tmp_path, "stalled", set(range(40)), 40)
    assert [f.step for f in mon.findings if f.kind == "amp_overflow"] == [0]
    (amp,) = [d for d in report.diagnoses if d.cause == "amp_overflow"]
    assert amp.severity == "critical" and "not benign" in amp.summary
    assert amp.evidence["skipped_steps"] == 40 and not report.healthy


# -- fuzzing --------------------------------------------------------------------------------------
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
ANY = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=3)
    | st.complex_numbers()
    | st.lists(st.integers(), max_size=2)
)


def _refused_clearly(exc: Exception, argument: str) -> bool:
    return isinstance(exc, TypeError | ValueError) and argument in str(exc)


@pytest.fixture(scope="module")
def fuzz_monitor(tmp_path_factory):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    mon = steadygrad.Monitor(
        model, opt, tmp_path_factory.mktemp("fuzz") / "run", progress=False, detectors=[]
    )
    yield mon
    mon.close()


LOSSES = (
    ANY
    | st.floats(width=32).map(np.float32)
    | st.floats().map(np.array)
    | st.floats().map(lambda v: torch.tensor(v, dtype=torch.float64))
    | st.floats(width=16).map(lambda v: torch.tensor(v, dtype=torch.float16))
    | st.complex_numbers().map(torch.tensor)
    | st.lists(st.floats(), min_size=2, max_size=3).map(torch.tensor)
)


@FUZZ
@given(loss=LOSSES, preclip=st.none() | LOSSES)
@example(loss=10**400, preclip=None)
@example(loss=1e300, preclip=None)
@example(loss=np.float64(1e-300), preclip=None)
@example(loss=np.float32(2.5), preclip=np.array(3.0))
def test_step_records_any_real_scalar_exactly_and_refuses_the_rest(fuzz_monitor, loss, preclip):
    try:
        record = fuzz_monitor.step(loss, grad_norm_preclip=preclip)
    except Exception as exc:
        bad = [n for n, v in (("loss", loss), ("grad_norm_preclip", preclip)) if v is not None]
        bad = [n for n in bad if not _is_real_scalar(loss if n == "loss" else preclip)]
        if loss is None:
            bad.append("loss")
        assert any(_refused_clearly(exc, name) for name in bad), repr(exc)
        return
    assert _is_real_scalar(loss) and (preclip is None or _is_real_scalar(preclip))
    expected = float(np.float64(np.asarray(loss.double() if torch.is_tensor(loss) else loss)))
    got = record.values["loss"]
    assert got == expected or (math.isnan(got) and math.isnan(expected))  # float64, not float32


def _is_real_scalar(value) -> bool:
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int):
        return abs(value) < 2**1024 - 2**970  # beyond, no float holds it
    if isinstance(value, float | np.floating):
        return True
    if isinstance(value, np.ndarray | torch.Tensor):
        return (
            value.size == 1
            if isinstance(value, np.ndarray)
            else (value.numel() == 1 and not value.is_complex())
        )
    return False


MONITOR_ARGUMENTS = ("every", "update_every", "activation_every", "flush_every", "guard_steps")


@settings(FUZZ, max_examples=25)
@given(argument=st.sampled_from((*MONITOR_ARGUMENTS, "flush_seconds")), value=ANY)
def test_monitor_arguments_are_accepted_or_refused_by_name(argument, value):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            mon = steadygrad.Monitor(model, opt, f"{tmp}/run", progress=False, **{argument: value})
        except Exception as exc:
            assert _refused_clearly(exc, argument), repr(exc)
            assert no_hooks_left(model, opt)
            return
        mon.close()
    if argument == "flush_seconds":
        assert isinstance(value, int | float) and not isinstance(value, bool)
        assert math.isfinite(value) and value >= 0
    elif argument == "activation_every" and value is None:
        pass  # the default: 25 steps per 1,000 modules begun
    elif argument == "guard_steps":
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 0
    else:
        assert isinstance(value, int) and not isinstance(value, bool) and value >= 1


AUTOPILOT_ARGUMENTS = (
    "snapshot_every",
    "lr_factor",
    "divergence_ratio",
    "max_rollbacks",
    "clip_factor",
)


@settings(FUZZ, max_examples=100)
@given(argument=st.sampled_from(AUTOPILOT_ARGUMENTS), value=ANY)
def test_autopilot_arguments_are_accepted_or_refused_by_name(argument, value):
    try:
        steadygrad.Autopilot(**{argument: value})
    except Exception as exc:
        assert _refused_clearly(exc, argument), repr(exc)
        return
    assert isinstance(value, int | float) and not isinstance(value, bool)
    assert math.isfinite(value)


def test_zero_grad_before_step_on_a_nan_gradient_still_records_it(tmp_path):
    """The gradients were measured before the update, then set to None before ``mon.step``:
    counting their bad entries must not raise into the loop, and the NaN is still recorded."""
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(3):
            x, y = regression_batch(i)
            if i == 2:
                x = x * float("nan")
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)  # too early: the gradients are gone
            record = mon.step(loss)
    mon.close()
    assert record.values["nonfinite_grads"] >= 1
    assert record.meta.get("nonfinite") is True


def test_a_failure_inside_the_monitor_warns_and_the_run_carries_on(tmp_path, monkeypatch):
    """Outside the test suite (no STEADYGRAD_STRICT), a bug in the Monitor's own measurements
    (here: the parameter statistics fail at one step) costs that step's record, never the run."""
    monkeypatch.delenv("STEADYGRAD_STRICT")
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    finish = mon.parameters.finish

    def fails_once(record, raw):
        if record.step == 2:
            raise RuntimeError("injected")
        return finish(record, raw)

    monkeypatch.setattr(mon.parameters, "finish", fails_once)
    detect = mon._detect

    def detect_fails_at_4(record, ids):
        if record.step == 4:
            raise RuntimeError("injected in a detector")
        return detect(record, ids)

    monkeypatch.setattr(mon, "_detect", detect_fails_at_4)
    with pytest.warns(RuntimeWarning, match="injected") as caught:
        records = [mon.step(_step(model, opt, mon, i)) for i in range(6)]
        opt.zero_grad()
    mon.close()
    assert len([w for w in caught if "injected" in str(w.message)]) == 2
    assert records[4] is None and records[5] is not None and mon.step_count == 6
    assert "grad_norm" not in records[2].values and "grad_norm" in records[3].values
    assert steadygrad.load(tmp_path / "run").num_steps == 5  # every step but the failed one


def test_sparse_embedding_gradients_are_measured_like_dense_ones(tmp_path):
    # A recommender's sparse embeddings (SparseAdam), one too large to stack and one small,
    # and a dense head (Adam); indices repeat within a batch, so each sparse gradient holds a
    # row twice until coalesced. Oracle: the dense gradient's and weight's norms in the same run.
    torch.manual_seed(0)
    users, items = nn.Embedding(3000, 8, sparse=True), nn.Embedding(40, 8, sparse=True)
    head = nn.Linear(16, 1)
    model = nn.ModuleDict({"users": users, "goods": items, "head": head})
    sparse_opt = torch.optim.SparseAdam([users.weight, items.weight], lr=1e-2)
    dense_opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no part of the Monitor may fail on them
        mon = steadygrad.Monitor(model, dense_opt, tmp_path / "run", progress=False)
        for step in range(30):
            u, i = torch.randint(0, 30, (64,)), torch.randint(0, 40, (64,))
            rating = torch.randn(64, 1)
            pred = head(torch.cat([users(u), items(i)], 1))
            loss = nn.functional.mse_loss(pred, rating)
            loss.backward()
            if step == 20:  # one NaN entry in a row the batch touched
                users.weight.grad._values()[0, 3] = float("nan")
            expected = {
                n: p.grad.to_dense().double().norm().item() for n, p in model.named_parameters()
            }
            nan_entries = int(torch.isnan(users.weight.grad.coalesce().values()).sum())
            assert users.weight.grad.is_sparse and nan_entries == (step == 20)
            if step != 20:
                sparse_opt.step()
                dense_opt.step()
            weights = {n: p.detach().double().norm().item() for n, p in model.named_parameters()}
            record = mon.step(loss)
            for name, value in expected.items():
                got = record.values[f"grad_norm/{name}"]
                assert got == pytest.approx(value, rel=1e-5) or (math.isnan(got) and step == 20)
                assert record.values[f"param_norm/{name}"] == pytest.approx(weights[name])
            assert record.values["nonfinite_grads"] == nan_entries
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
        mon.close()
    ratios = steadygrad.Run(tmp_path / "run").series("update_ratio/users.weight")
    # the sparse updates are measured too: none at the step the optimizer skipped
    assert list(ratios[0]) == [0, 10, 20] and ratios[1][0] > 0 and ratios[1][1] > 0
    assert ratios[1][2] == 0.0


def test_a_layer_unfrozen_into_the_optimizer_mid_run_is_measured_from_then_on(tmp_path):
    # Gradual unfreezing: the body is frozen and left out of the optimizer at attach, then
    # unfrozen into a group of its own at step 30. Oracle: its norms, computed by hand in the
    # same run, from that step on; nothing recorded for it before; its updates measured too.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    model[0].requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with steadygrad.watch(model, opt, tmp_path / "run") as mon:
            for step in range(60):
                if step == 30:
                    model[0].requires_grad_(True)
                    opt.add_param_group({"params": list(model[0].parameters()), "lr": 1e-3})
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                grad = model[0].weight.grad
                expected = None if grad is None else grad.double().norm().item()
                opt.step()
                weight = model[0].weight.detach().double().norm().item()
                record = mon.step(loss)
                got = record.values.get("grad_norm/0.weight")
                assert (got is None) == (step < 30)
                if got is not None:
                    assert got == pytest.approx(expected, rel=1e-5)
                    assert record.values["param_norm/0.weight"] == pytest.approx(weight)
                opt.zero_grad()
    ratios = steadygrad.Run(tmp_path / "run").series("update_ratio/0.weight")
    # the update ratio from the next snapshot on (step 30's was taken before the group came)
    assert list(ratios[0]) == [40, 50] and np.all(ratios[1] > 0)
