"""Non-finite localisation: the producer module in the forward pass, the first poisoned gradient
in the backward pass, and mixed-precision overflow told apart from divergence."""

import math

import torch
from helpers import regression_batch, tiny_mlp
from torch import nn

import steadygrad


def _one_step(model, opt, mon, x=None, y=None):
    if x is None:
        x, y = regression_batch(0)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    record = mon.step(loss)
    opt.zero_grad()
    return record


def _findings(mon, kind):
    return [f for f in mon.findings if f.kind == kind]


def test_forward_producer_is_the_module_that_made_the_nan(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    # Module "2" (the middle Linear) produces NaN; "3" and "4" only pass it on.
    model[2].register_forward_hook(lambda m, a, out: out * float("nan"))
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    record = _one_step(model, opt, mon)
    assert record.meta["forward_origin"]["module"] == "2"
    finding = _findings(mon, "nonfinite")[0]
    assert finding.where == "2" and finding.severity == "critical"
    assert finding.step == 0
    mon.close()


class Inner(nn.Module):
    """A container whose own code (not a child) overflows to Inf between two children."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        h = self.a(x) * 1e39  # float32 overflow: Inf born in Inner's own code
        return self.b(h)


class TupleAndDict(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.pair = PairOut()
        self.head = DictOut()

    def forward(self, x):
        a, b = self.pair(x)
        return self.head(a + b)["y"] + self.inner(x)


class PairOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)

    def forward(self, x):
        h = self.lin(x)
        return h, h * 2


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 3)

    def forward(self, x):
        return {"y": self.lin(x), "aux": x}


def test_producer_is_the_container_whose_own_code_overflowed(tmp_path):
    model = TupleAndDict()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    record = _one_step(model, opt, mon)
    # inner.b received Inf (a propagator); Inner itself had a finite input and made it.
    assert record.meta["forward_origin"]["module"] == "inner"
    assert not math.isfinite(record.values["loss"])
    mon.close()


def test_tuple_and_dict_outputs_are_measured(tmp_path):
    model = TupleAndDict()
    model.inner = nn.Identity()
    model.forward = lambda x: model.head(sum(model.pair(x)))["y"]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", activation_every=1, progress=False)
    with torch.no_grad():
        model.pair.lin.weight[0, 0] = float("nan")  # the tuple-returning module's leaf
    record = _one_step(model, opt, mon)
    assert record.meta["forward_origin"]["module"] == "pair.lin"
    assert math.isnan(record.values["act_rms/pair.lin"])
    mon.close()


def test_backward_origin_is_the_first_poisoned_gradient(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    # The gradient flowing into layer 2's input turns NaN: the backward pass computes the
    # gradients of layer 2 first (finite), then of layer 0 (NaN), so "0.weight"/"0.bias" are
    # the first non-finite ones.
    model[2].register_full_backward_hook(lambda m, gin, gout: (gin[0] * float("nan"),))
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    record = _one_step(model, opt, mon)
    assert math.isfinite(record.values["loss"])
    origin = record.meta["backward_origin"]["parameter"]
    assert origin in ("0.weight", "0.bias")
    assert math.isfinite(record.values["grad_norm/2.weight"])
    assert record.values["nonfinite_grads"] == 6 * 16 + 16
    # A replay of the step, differentiated, names the module whose backward made the NaN:
    # module 2's gradient arrived finite at its output, and left it NaN for its input.
    finding = _findings(mon, "nonfinite")[0]
    assert finding.where == "2"
    assert finding.evidence["forward_origin"]["in_the_backward"].startswith("its outputs'")
    mon.close()


def test_guard_finds_the_producer_after_an_unhooked_nan_step(tmp_path, monkeypatch):
    """Where the step cannot be replayed, the guard measures the next steps."""
    from steadygrad.monitor.activations import ActivationSignal

    monkeypatch.setattr(ActivationSignal, "_replay", lambda self, record: None)
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", activation_every=1000, progress=False)
    broken = {"on": False}
    # From step 2 on, module "2" makes Inf (a persistent fault, e.g. an overflowing layer).
    model[2].register_forward_hook(lambda m, a, out: out * 1e39 if broken["on"] else out)
    records = []
    for i in range(4):
        broken["on"] = i >= 2
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if torch.isfinite(loss):  # the usual guard: never apply a non-finite update
            opt.step()
        records.append(mon.step(loss))
        opt.zero_grad()
    assert "forward_origin" not in records[2].meta  # step 2 was not hooked
    first = _findings(mon, "nonfinite")
    assert len(first) == 1 and first[0].step == 2
    assert records[3].meta["forward_origin"]["module"] == "2"  # step 3: the guard was on
    origin = _findings(mon, "nonfinite_origin")
    assert len(origin) == 1 and origin[0].where == "2" and origin[0].step == 3
    mon.close()


def test_input_nan_is_blamed_on_the_input(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", progress=False)
    x, y = regression_batch(0)
    x[0, 0] = float("nan")
    record = _one_step(model, opt, mon, x, y)
    assert record.meta["forward_origin"]["module"] == "<input>"
    assert record.meta["forward_origin"]["taken_in_by"] == "0"  # the first Linear took it in
    mon.close()


def _amp_loop(tmp_path, init_scale, poison_loss=False, steps=3, loss_factor=1.0):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", scaler=scaler, progress=False)
    before = [p.detach().clone() for p in model.parameters()]
    records = []
    for i in range(steps):
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y) * loss_factor
        if poison_loss and i == 1:
            loss = loss * float("nan")
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        records.append(mon.step(loss))
        opt.zero_grad()
    mon.close()
    return mon, records, before, model


def test_gradscaler_overflow_is_benign_not_divergence(tmp_path):
    # A scale of 1e38 on a loss of ~1e3 overflows the float32 gradients, as fp16 gradients
    # overflow in real mixed-precision runs: the scaler skips the step and lowers the scale.
    mon, records, before, model = _amp_loop(tmp_path, init_scale=1e38, loss_factor=1e3)
    assert records[0].meta.get("skipped") and records[0].values["optimizer_skipped"] == 1.0
    assert records[0].values["nonfinite_grads"] > 0
    kinds = [f.kind for f in mon.findings]
    assert "amp_overflow" in kinds and "nonfinite" not in kinds
    assert all(f.severity == "info" for f in mon.findings)
    run = steadygrad.load(tmp_path / "run")
    assert "amp_scale" in run.names()
    assert not math.isfinite(run.series("grad_norm")[1][0])  # stored as it was, not dropped


def test_gradscaler_control_without_overflow_has_no_findings(tmp_path):
    mon, records, _, _ = _amp_loop(tmp_path, init_scale=2.0**8)
    assert not mon.findings
    assert not any(r.meta.get("skipped") for r in records)


def test_real_divergence_under_gradscaler_is_still_critical(tmp_path):
    mon, records, _, _ = _amp_loop(tmp_path, init_scale=2.0**8, poison_loss=True)
    assert [f.kind for f in mon.findings if f.severity == "critical"] == ["nonfinite"]


def test_a_skipped_nan_step_is_replayed_and_its_producer_named_at_once(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", activation_every=1000, progress=False)
    broken = {"on": False}
    model[2].register_forward_hook(lambda m, a, out: out * 1e39 if broken["on"] else out)
    records = []
    for i in range(4):
        broken["on"] = i >= 2
        x, y = regression_batch(i)
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if torch.isfinite(loss):  # the user's guard: the weights stay clean
            opt.step()
        records.append(mon.step(loss))
        opt.zero_grad()
    assert records[2].meta["forward_origin"]["module"] == "2"
    assert records[2].meta["forward_origin"]["replayed"] is True
    first = _findings(mon, "nonfinite")
    assert len(first) == 1 and first[0].step == 2 and first[0].where == "2"
    mon.close()
