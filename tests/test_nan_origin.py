"""The module that produced a one-off, data-dependent NaN is named, even off the activation
cadence, with or without the autopilot; a module whose weights an earlier NaN update corrupted
is never blamed.

Oracle: the scenario plants the producer (a module that takes the log of one feature, which one
bad sample makes negative), so the true answer is known by construction."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import steadygrad
from steadygrad.core.forward_hooks import computes, observers_silenced
from steadygrad.monitor import activations


class LogFeature(nn.Module):
    """log of the first input feature (positive in the data): NaN for one bad sample."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        LogFeature(),
        nn.Linear(4, 8),
        nn.Dropout(0.1),
        nn.Sequential(nn.Linear(8, 8), nn.Tanh()),
        nn.Linear(8, 3),
    )


def _batch(gen, bad=False):
    x = torch.rand(16, 4, generator=gen) + 0.1
    if bad:
        x[3, 0] = -1.0  # one sample: log of a negative number
    return x


def _train(tmp_path, name, bad_step=7, model=None, every=50, **kwargs):
    model = model if model is not None else _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    with steadygrad.watch(
        model, opt, tmp_path / name, progress=False, activation_every=every, **kwargs
    ) as mon:
        for step in range(12):
            x = _batch(gen, bad=step == bad_step)
            loss = nn.functional.cross_entropy(model(x), torch.randint(0, 3, (16,), generator=gen))
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.load(tmp_path / name)


def _first_nonfinite(run):
    return next(f for f in run.findings() if f.kind == "nonfinite")


def test_a_one_off_nan_off_the_cadence_is_traced_to_its_producer(tmp_path):
    run = _train(tmp_path, "plain")
    first = _first_nonfinite(run)
    assert first.step == 7
    assert first.where == "0"  # LogFeature, by construction
    assert first.evidence["forward_origin"]["replayed"] is True
    report = steadygrad.diagnose(run)
    assert report.top.cause == "nonfinite" and "0" in report.top.where


def test_with_the_autopilot_skipping_the_step_the_producer_is_still_named(tmp_path):
    run = _train(tmp_path, "pilot", autopilot=steadygrad.Autopilot(rollback=False))
    first = _first_nonfinite(run)
    assert first.where == "0"
    assert any(a.kind == "skip_update" for a in run.actions())


def test_the_replay_leaves_the_model_and_random_state_as_training_left_them(tmp_path):
    """The same run with the producer search on and off ends with identical weights."""
    weights = {}
    for name, replay in (("on", True), ("off", False)):
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(1)
        torch.manual_seed(5)
        mon = steadygrad.Monitor(model, opt, tmp_path / name, progress=False, activation_every=50)
        if not replay:
            mon.signals[3]._replay = lambda record: None
        for step in range(4):
            x = _batch(gen, bad=step == 2)
            loss = nn.functional.cross_entropy(model(x), torch.randint(0, 3, (16,), generator=gen))
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
        mon.close()
        weights[name] = [p.detach().clone() for p in model.parameters()]
        weights[name + "_rng"] = torch.rand(3)
    for a, b in zip(weights["on"], weights["off"], strict=True):
        assert torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    assert torch.equal(weights["on_rng"], weights["off_rng"])


def test_a_module_with_corrupted_weights_is_never_blamed(tmp_path, monkeypatch):
    """Where the pre-update check is off (on an accelerator without the autopilot), the guard
    runs on the next steps, after the NaN update corrupted every weight: no module is blamed."""
    monkeypatch.setattr(activations, "_on_accelerator", lambda model: True)
    run = _train(tmp_path, "guard")
    nonfinite = [f for f in run.findings() if f.kind in ("nonfinite", "nonfinite_origin")]
    origins = [
        f.evidence.get("forward_origin") for f in nonfinite if "forward_origin" in f.evidence
    ]
    assert origins and all(o["module"] is None for o in origins)
    assert "cannot be known" in origins[0]["note"]


class TaggerWithScorer(nn.Module):
    """An encoder the loop calls as the model, and a scorer the loss calls itself (as a CRF
    layer is): the scorer takes the log of its first input column, NaN for one bad sample."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 8), nn.Tanh())
        self.scorer = nn.Sequential(LogFeature(), nn.Linear(8, 3))

    def forward(self, x):
        return self.encoder(x)


def _train_parts(tmp_path, name, through_forward):
    torch.manual_seed(0)
    model = TaggerWithScorer()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    with steadygrad.watch(model, opt, tmp_path / name, progress=False, activation_every=50) as mon:
        for step in range(12):
            x = torch.rand(16, 4, generator=gen) + 0.1
            # the encoder's output for one sample made negative in its first column on step 7
            features = (model(x) if through_forward else model.encoder(x)) + 1.5  # positive
            if step == 7:
                features = features - 3.0 * (torch.arange(16) == 3).float()[:, None]
            logits = model.scorer(features)
            y = torch.randint(0, 3, (16,), generator=gen)
            loss = nn.functional.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.load(tmp_path / name)


def test_a_nan_born_in_a_part_the_loss_calls_is_traced_to_that_part(tmp_path):
    for through_forward in (True, False):  # model(x) then its scorer, or only its parts
        run = _train_parts(tmp_path, f"parts-{through_forward}", through_forward)
        first = _first_nonfinite(run)
        assert first.step == 7
        assert first.where == "scorer.0", first.evidence  # LogFeature inside the scorer
        assert first.evidence["forward_origin"]["replayed"] is True


def test_an_fp16_overflow_under_autocast_is_replayed_under_autocast(tmp_path):
    # one sample 1e4 times too large: the first layer's fp16 output overflows (above 65504);
    # in float32 the same forward is finite, so a replay must autocast as the step did
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].weight.abs_().add_(0.5)  # a large positive input overflows in fp16
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    with steadygrad.watch(model, opt, tmp_path / "amp", progress=False) as mon:
        for step in range(12):
            x = torch.rand(16, 4, generator=gen)
            if step == 7:
                x[3] = (
                    6e4  # representable in fp16 (up to 65504); times 4 weights above 0.5 it is not
                )
            with torch.autocast("cpu", dtype=torch.float16):
                logits = model(x)
            y = torch.randint(0, 3, (16,), generator=gen)
            loss = nn.functional.cross_entropy(logits.float(), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    first = _first_nonfinite(steadygrad.load(tmp_path / "amp"))
    assert first.step == 7 and first.where == "0"
    assert first.evidence["forward_origin"]["replayed"] is True


def test_a_large_fp16_output_whose_norm_overflows_is_no_producer(tmp_path):
    # the first layer's fp16 outputs are ~3e3: finite, but their sum of squares passes 65504;
    # the head's outputs then pass 65504 themselves: the head made the inf, not the trunk
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.Linear(64, 2))
    with torch.no_grad():
        model[0].weight.fill_(1e3)
        model[0].bias.zero_()
        model[1].weight.fill_(0.2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-12)
    gen = torch.Generator().manual_seed(1)
    with steadygrad.watch(model, opt, tmp_path / "wide", progress=False) as mon:
        for step in range(12):
            x = torch.rand(16, 4, generator=gen) * (3.0 if step == 7 else 0.5)
            with torch.autocast("cpu", dtype=torch.float16):
                trunk = model[0](x)
                out = model[1](trunk)
            if step == 7:  # the oracle: what the scenario claims, in the same run
                assert bool(torch.isfinite(trunk).all()) and not bool(torch.isfinite(out).all())
                assert not torch.isfinite(torch.linalg.vector_norm(trunk))  # in fp16 itself
            loss = out.float().mean() * 1e-6  # gradients far inside fp16
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    first = _first_nonfinite(steadygrad.load(tmp_path / "wide"))
    assert first.step == 7 and first.where == "1", first.evidence
    assert first.evidence["forward_origin"]["float16_overflow"] is True


class _Exp(nn.Module):
    def forward(self, x):
        return torch.exp(x)


@pytest.mark.parametrize("fits_float32", [True, False])
def test_an_fp16_overflow_on_a_hooked_step_is_told_from_one_float32_cannot_hold(
    tmp_path, fits_float32
):
    # the overflow falls on step 25, the activation cadence: the step's own hooks find the
    # producer, and only computing it again in float32 tells float16's range (exp(20) = 4.9e8)
    # from an exp no float holds (exp(200))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), _Exp(), nn.Linear(4, 3))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    big = 20.0 if fits_float32 else 200.0
    with steadygrad.watch(model, opt, tmp_path / "hooked", progress=False) as mon:
        for step in range(30):
            x = torch.rand(16, 4, generator=gen)
            with torch.autocast("cpu", dtype=torch.float16):
                h = model[0](x)
                if step == 25:
                    h = h + big
                    # the oracle, in the same run: float16 overflows; float32 holds exp(20) only
                    assert not bool(torch.isfinite(torch.exp(h)).all())
                    wide = torch.exp(h.float())
                    assert bool(torch.isfinite(wide).all()) is fits_float32
                logits = model[2](model[1](h))
            loss = nn.functional.cross_entropy(logits.float(), torch.zeros(16, dtype=torch.long))
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    run = steadygrad.load(tmp_path / "hooked")
    first = _first_nonfinite(run)
    assert first.step == 25 and first.where == "1", first.evidence
    origin = first.evidence["forward_origin"]
    assert "replayed" not in origin  # the step's own hooks named it
    assert origin.get("float16_overflow", False) is fits_float32
    top = steadygrad.diagnose(run).diagnoses[0]
    assert top.cause == ("amp_overflow" if fits_float32 else "nonfinite") and top.where == ["1"]


def test_the_replays_run_the_models_own_hooks_and_never_the_users(tmp_path, monkeypatch):
    """The NaN replay and the unused-parameter check re-run the step's forward: a hook of the
    user's that records each forward must see exactly the forwards training ran, while torch's
    own pruning mask (a forward pre-hook) still shapes the replayed model."""
    model = _model()
    prune.l1_unstructured(model[1], "weight", amount=0.25)  # torch's pre-hook computes weight
    model[0].spare = nn.Linear(4, 4)  # never called: the unused-parameter check re-runs a forward
    seen = []
    model.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    model[3].register_forward_pre_hook(lambda module, args: seen.append("inner"))
    rerun = []  # the unused-parameter check's forwards (a spy: they leave no other trace)
    outputs = activations.ActivationSignal._outputs
    monkeypatch.setattr(
        activations.ActivationSignal, "_outputs", lambda s: rerun.append(1) or outputs(s)
    )
    run = _train(tmp_path, "hooks", model=model)
    assert seen == [torch.Size([16, 3]) if i % 2 else "inner" for i in range(24)]
    first = _first_nonfinite(run)
    assert first.where == "0" and first.evidence["forward_origin"]["replayed"] is True
    assert len(rerun) >= 2  # the check re-ran the forward, as it was and nudged


def test_hooks_are_silenced_by_origin_and_put_back_in_order():
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    prune.random_unstructured(layer, "weight", amount=0.5)
    seen = []
    user = layer.register_forward_hook(lambda m, a, out: seen.append("user"))
    layer.register_forward_pre_hook(lambda m, a: seen.append("pre"))
    order = [list(layer._forward_pre_hooks), list(layer._forward_hooks)]
    x = torch.ones(1, 3)
    with observers_silenced(layer):
        with torch.no_grad():
            layer.weight_orig.mul_(2.0)
        # the pruning pre-hook ran: the weight is rebuilt from the doubled one, masked
        oracle = nn.functional.linear(x, layer.weight_orig * layer.weight_mask, layer.bias)
        assert torch.equal(layer(x), oracle)
        user.remove()  # a handle still reaches the hook it made
    assert seen == []
    assert list(layer._forward_pre_hooks) == order[0]  # in their order
    assert list(layer._forward_hooks) == []  # the user's, removed inside, stays removed
    layer(x)
    assert seen == ["pre"]
    lazy = nn.LazyLinear(2)
    with observers_silenced(lazy):
        lazy(x)  # the lazy module's one-off initialising hook removes itself inside
    assert not lazy._forward_pre_hooks and lazy.weight.shape == (2, 3)
    assert computes(prune.Identity()) and not computes(observers_silenced)


class _Keeper:
    def __call__(self, module, args, out):
        self.out = out


def _store(box, module, args, out):
    box.append(out)


def test_a_users_hook_runs_in_a_replay_only_if_it_can_return_a_value():
    kept = {}
    assert computes(lambda m, a, out: out * 2)  # rewrites the output
    assert computes(lambda m, a, out: out.clamp_(-1, 1))  # a call that may return a tensor
    assert not computes(lambda m, a, out: kept.update(last=out))
    assert not computes(lambda m, a, out: kept.__setitem__("last", out.dtype))  # set 534's
    assert computes(lambda m, a, out: kept.setdefault("last", out))  # returns the value
    assert not computes(_Keeper()) and not computes(functools.partial(_store, []))

    def guarded(module, args, out):
        if out is None:
            return
        return out.relu()

    assert computes(guarded)


class _Forward(nn.Module):
    """Two Linears and an operation of the model's own forward (outside any module) that the
    bad sample makes non-finite: ``where`` says which (see the tests below)."""

    def __init__(self, where):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.head, self.where = nn.Linear(4, 8), nn.Linear(8, 3), where

    def forward(self, x):
        valid = (x[:, :1] > 0).float()  # the reading's sign: 0 for the bad sample only
        if self.where == "before":  # a log of the raw reading, before any module
            x = torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)
        h = self.inp(x)
        if self.where == "between":  # normalised by the valid count, between the modules
            h = h / valid
        out = self.head(h)
        return out / valid if self.where == "after" else out


@pytest.mark.parametrize(
    ("where", "module", "taken_in_by"),
    [("before", "<root>", "inp"), ("between", "inp", None), ("after", "head", None)],
)
def test_a_nan_an_operation_outside_any_module_made_is_placed_at_the_nearest_module(
    tmp_path, where, module, taken_in_by
):
    # Sets 110, 113, 120 and 124: a NaN that no module's forward made (a per-clip
    # standardisation of a silent clip, a log of a zero reading, a unit conversion after the
    # head) was placed at "<root>", the model. Placed instead at the module that took it in (made
    # before any module), or at the module from whose finite output the operation made it.
    # Oracle: the bad sample's operation, by construction; each variant's NaN checked here.
    model = _Forward(where)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        assert bool(torch.isfinite(model(_batch(gen))).all())
        assert not bool(torch.isfinite(model(_batch(gen, bad=True))).all())
    run = _train(tmp_path, where, model=model)
    origin = _first_nonfinite(run).evidence["forward_origin"]
    assert origin["module"] == module and origin.get("taken_in_by") == taken_in_by
    if where != "before":
        assert origin["between"] == ("head" if where == "between" else "the model's output")
    report = steadygrad.diagnose(run)
    assert report.top.cause == "nonfinite" and (taken_in_by or module) in report.top.where


@pytest.mark.parametrize("every", [7, 50])
def test_a_nan_made_after_the_head_on_a_hooked_step_is_placed_at_the_head(tmp_path, every):
    # Set 132's string-tension model takes the log of its head's output in its own forward; a
    # zero reading made it -inf on a step the activation hooks ran (every 7: step 7 is theirs).
    # That pass walked no graph and said "<root>"; the replay off the cadence (every 50) placed
    # it. Both now place it at the head, from whose finite output the log made it.
    run = _train(tmp_path, f"every{every}", model=_Forward("after"), every=every)
    first = _first_nonfinite(run)
    assert first.step == 7
    origin = first.evidence["forward_origin"]
    assert origin["module"] == "head" and origin["between"] == "the model's output"
    assert bool(origin.get("replayed")) == (every == 50)  # the hooked pass placed it itself


class _MeanAndScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 8)
        self.mean = nn.Linear(8, 1)
        self.scale = nn.Linear(8, 1)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.mean(h).squeeze(-1), nn.functional.softplus(self.scale(h)).squeeze(-1) + 0.1


def test_a_nan_target_under_a_loss_of_two_outputs_names_neither(tmp_path):
    # Control for reading the step's own outputs: a Gaussian NLL over a mean and a softplus
    # scale (never out of range), one target NaN at step 7. Neither output holds a value the
    # loss cannot take: no module is named, and the loss or its targets are.
    torch.manual_seed(0)
    model = _MeanAndScale()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(1)
    with steadygrad.watch(model, opt, tmp_path / "targets", progress=False) as mon:
        for step in range(12):
            x = torch.randn(16, 4, generator=gen)
            y = x.sum(1)
            if step == 7:
                y[3] = float("nan")
            mu, sigma = model(x)
            loss = (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    first = _first_nonfinite(steadygrad.load(tmp_path / "targets"))
    assert first.step == 7 and not first.where
    assert "in the loss or its targets" in first.evidence["forward_origin"]["note"]
