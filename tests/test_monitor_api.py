"""The Monitor's contract: clear errors for bad input, both call orders handled, no hooks left."""

import pytest
import torch
from helpers import no_hooks_left, regression_batch, tiny_mlp, train
from torch import nn

import steadygrad
from steadygrad.monitor.monitor import ORDER_ERROR


def _opt(model):
    return torch.optim.SGD(model.parameters(), lr=0.01)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"every": 0}, ValueError, "every must be an int >= 1"),
        ({"every": 1.5}, TypeError, "every must be an int"),
        ({"update_every": -1}, ValueError, "update_every must be an int >= 1"),
        ({"activation_every": "3"}, TypeError, "activation_every must be an int"),
        ({"signals": [object()]}, TypeError, "signals must hold Signal objects"),
        ({"detectors": [3]}, TypeError, "detectors must hold Detector objects"),
        ({"flush_every": 0}, ValueError, "flush_every must be an int >= 1"),
    ],
)
def test_bad_arguments_are_named(tmp_path, kwargs, error, match):
    model = tiny_mlp()
    with pytest.raises(error, match=match):
        steadygrad.Monitor(model, _opt(model), tmp_path / "run", progress=False, **kwargs)


def test_wrong_types_and_empty_model(tmp_path):
    model = tiny_mlp()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        steadygrad.Monitor("model", _opt(model), tmp_path / "a")
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        steadygrad.Monitor(model, None, tmp_path / "b")
    frozen = nn.Sequential(nn.ReLU())
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        steadygrad.Monitor(frozen, _opt(model), tmp_path / "c")


def test_a_lazy_model_is_refused_until_its_dry_run_then_watched(tmp_path):
    # Before: a LazyLinear's uninitialised weight raised PyTorch's own error deep in attach.
    lazy = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 1))
    opt = torch.optim.SGD(lazy.parameters(), lr=0.1)  # legal before the dry run
    with pytest.raises(ValueError, match=r"model has parameters a lazy module .*0\.weight"):
        steadygrad.Monitor(lazy, opt, tmp_path / "d", progress=False)
    assert not list((tmp_path / "d").glob("*"))  # refused before anything was written
    lazy(torch.randn(2, 3))  # the dry run shapes it
    mon = steadygrad.Monitor(lazy, opt, tmp_path / "d", progress=False)
    train(lazy, opt, mon, 3, batch_fn=lambda seed: (torch.randn(8, 3), torch.randn(8, 1)))
    mon.close()
    assert list(steadygrad.load(tmp_path / "d").series("grad_norm/0.weight")[0]) == [0, 1, 2]


def test_run_dir_that_is_a_file(tmp_path):
    model = tiny_mlp()
    path = tmp_path / "file.txt"
    path.write_text("not a directory")
    with pytest.raises(ValueError, match="run_dir must be a directory"):
        steadygrad.Monitor(model, _opt(model), path)
    assert path.read_text() == "not a directory"  # nothing lost


def test_bad_loss_values(tmp_path):
    model = tiny_mlp()
    with steadygrad.watch(model, _opt(model), tmp_path / "run", progress=False) as mon:
        with pytest.raises(ValueError, match="loss must be a scalar"):
            mon.step(torch.ones(3))
        with pytest.raises(TypeError, match="loss must be a tensor or a number"):
            mon.step("1.0")


def test_close_removes_every_hook(tmp_path):
    model = tiny_mlp()
    opt = _opt(model)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", activation_every=1, progress=False)
    train(model, opt, mon, 3)
    mon.close()
    assert no_hooks_left(model, opt)
    mon.close()  # idempotent
    with pytest.raises(RuntimeError, match="Monitor is closed"):
        mon.step(1.0)


def test_context_manager_removes_hooks_even_after_an_error(tmp_path):
    model = tiny_mlp()
    opt = _opt(model)
    with pytest.raises(ZeroDivisionError), steadygrad.watch(model, opt, tmp_path / "run") as mon:
        train(model, opt, mon, 2)
        raise ZeroDivisionError
    assert no_hooks_left(model, opt)


def test_calling_step_before_optimizer_step_fails_clearly(tmp_path):
    model = tiny_mlp()
    opt = _opt(model)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    x, y = regression_batch(0)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    mon.step(loss)  # wrong order: before optimizer.step()
    with pytest.raises(RuntimeError) as info:
        opt.step()
    assert str(info.value) == ORDER_ERROR
    mon.close()


def test_a_step_on_every_micro_batch_warns_and_records_the_skipped_ones(tmp_path):
    """mon.step on each micro-batch of an accumulation over 2 (a backward pass runs between the
    first call and the optimizer's first step, so it is no wrong order): the run carries on, the
    calls without an optimizer step are recorded as skipped, and no layer reads as frozen."""
    model = tiny_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    with pytest.warns(RuntimeWarning, match="every micro-batch of a gradient accumulation"):
        for i in range(60):
            x, y = regression_batch(i)
            (nn.functional.mse_loss(model(x), y) / 2).backward()
            if i % 2:
                opt.step()
                opt.zero_grad(set_to_none=True)
            mon.step(nn.functional.mse_loss(model(x), y))
    mon.close()
    run = steadygrad.load(tmp_path / "run")
    steps, skipped = run.series("optimizer_skipped")
    assert sorted(steps.tolist()) == list(range(0, 60, 2))  # the calls before each step
    assert (skipped == 1).all()
    assert not [f for f in run.findings() if f.kind == "update_ratio_out_of_range"]


def test_a_plain_float_loss_and_a_float_every_step(tmp_path):
    model = tiny_mlp()
    opt = _opt(model)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        x, y = regression_batch(0)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        record = mon.step(loss.item())
    assert record.values["loss"] == pytest.approx(loss.item())


def test_custom_signal_values_reach_the_store(tmp_path):
    class WeightMax(steadygrad.Signal):
        def __init__(self):
            super().__init__(every=2)
            self.begun = []

        def begin(self, step):
            self.begun.append(step)

        def collect(self, step):
            return {
                "weight_max": max(p.abs().max() for p in self.monitor.model.parameters()),
                "host_value": 1.5,
            }

    model = tiny_mlp()
    opt = _opt(model)
    signal = WeightMax()
    with steadygrad.watch(model, opt, tmp_path / "run", signals=[signal], progress=False) as mon:
        train(model, opt, mon, 5)
    run = steadygrad.load(tmp_path / "run")
    steps, values = run.series("weight_max")
    assert steps.tolist() == [0, 2, 4] and signal.begun == [0, 2, 4, 6][: len(signal.begun)]
    expected = max(p.abs().max().item() for p in model.parameters())
    assert values[-1] == pytest.approx(expected)
    assert run.series("host_value")[1].tolist() == [1.5, 1.5, 1.5]


def test_progress_line_can_be_switched_on_and_off(tmp_path, capsys):
    # Findings never depend on the status line: they are logged and warned (see
    # test_findings_visible.py); the line itself only shows the step, loss and findings count.
    model = tiny_mlp()
    opt = _opt(model)
    with steadygrad.watch(model, opt, tmp_path / "on", progress=True) as mon:
        train(model, opt, mon, 3)
    err = capsys.readouterr().err
    assert "on" in err and "loss" in err and "findings 0" in err
    model = tiny_mlp()
    opt = _opt(model)
    with steadygrad.watch(model, opt, tmp_path / "off", progress=False) as mon:
        train(model, opt, mon, 2)
    assert capsys.readouterr().err == ""
