"""Curvature probes inside a real Monitor: sharpness against 2/lr on the run's time axis, the
finding, the diagnosis and the report."""

import pytest
import torch

import steadygrad
from steadygrad.data import load_digits
from steadygrad.models import MLP, TinyGPT
from steadygrad.report import write_html


def _digits_batch():
    x, y, _, _ = load_digits()
    return x[:300], torch.nn.functional.one_hot(y[:300], 10).float()


def _mse(model, batch):
    return 0.5 * ((model(batch[0]) - batch[1]) ** 2).sum(1).mean()


def _gd(tmp_path, name, lr, steps=240):
    batch = _digits_batch()
    torch.manual_seed(0)
    model = MLP(64, [64, 64], 10, activation=torch.nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    probe = steadygrad.SharpnessProbe(_mse, batch, every=20)
    with steadygrad.watch(model, opt, tmp_path / name, signals=[probe], progress=False) as mon:
        for _ in range(steps):
            loss = _mse(model, batch)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.load(tmp_path / name)


def test_full_batch_gd_reaches_2_over_lr_and_is_diagnosed(tmp_path):
    run = _gd(tmp_path, "eos", lr=0.4)
    steps, sharp = run.series("sharpness")
    _, limit = run.series("sharpness_limit")
    assert steps.tolist() == list(range(0, 240, 20))
    assert limit == pytest.approx([2 / 0.4] * len(limit))
    assert sharp[0] < 0.8 * limit[0] and sharp[-3:].mean() == pytest.approx(5.0, rel=0.2)
    assert any(f.kind == "sharpness_above_limit" for f in run.findings())
    report = steadygrad.diagnose(run)
    assert report.top.cause == "sharpness_above_limit", report.text()
    page = write_html(run, tmp_path / "eos.html").read_text()
    # the report draws sharpness and its limit (dashed) in one panel, as the run declares
    assert '"key":"sharpness","panel":"sharpness"' in page
    assert '"key":"sharpness_limit","panel":"sharpness","scale":"linear","limit":true' in page


def test_small_step_stays_below_the_limit_with_its_margin(tmp_path):
    run = _gd(tmp_path, "calm", lr=0.05, steps=100)
    report = steadygrad.diagnose(run)
    assert report.healthy and report.diagnoses == []
    assert 0 < report.margins["sharpness / limit"] < 0.5


def test_a_probe_is_not_captured_by_the_attention_signal(tmp_path):
    idx = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(0))
    batch = (idx[:, :-1], idx[:, 1:])

    def loss_fn(model, b):
        return model.loss(*b)

    def run(name, with_probe):
        torch.manual_seed(0)
        model = TinyGPT(n_layer=1, n_head=2, n_embd=16, block_size=16)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        # The probe's batch holds two more sequences: captured, they would raise the maximum.
        signals = [steadygrad.AttentionLogitSignal(every=1)]
        if with_probe:
            signals.insert(0, steadygrad.SharpnessProbe(loss_fn, batch, every=1, max_matvecs=3))
        with steadygrad.watch(model, opt, tmp_path / name, signals=signals, progress=False) as mon:
            loss = model.loss(idx[:2, :-1], idx[:2, 1:])  # training batch: 2 sequences
            loss.backward()
            opt.step()
            record = mon.step(loss)
        return record.values["attn_logit_max/h.0.attn"]

    assert run("with", True) == run("without", False)
