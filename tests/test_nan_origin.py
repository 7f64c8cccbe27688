"""The module that produced a one-off, data-dependent NaN is named, even off the activation
cadence, with or without the autopilot; a module whose weights an earlier NaN update corrupted
is never blamed.

Oracle: the scenario plants the producer (a module that takes the log of one feature, which one
bad sample makes negative), so the true answer is known by construction."""

from __future__ import annotations

import torch
from torch import nn

import steadygrad
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


def _train(tmp_path, name, bad_step=7, **kwargs):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    with steadygrad.watch(
        model, opt, tmp_path / name, progress=False, activation_every=50, **kwargs
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
