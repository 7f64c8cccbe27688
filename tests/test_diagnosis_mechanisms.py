"""Diagnosis of the mechanisms behind instabilities, on real monitored runs built to show each
one (and a healthy control with every signal on, which must come out healthy)."""

import torch
from torch import nn

import steadygrad
from steadygrad.models import TinyGPT


class Classifier(nn.Module):
    def __init__(self, logit_scale=1.0, out_bias=0.0, hidden_bias=0.0):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(8, 32), nn.ReLU())
        self.head = nn.Linear(32, 5)
        with torch.no_grad():
            self.head.weight.mul_(logit_scale)
            self.head.bias.fill_(out_bias)
            self.body[0].bias.fill_(hidden_bias)

    def forward(self, x):
        return self.head(self.body(x))


def _classify(tmp_path, name, model, lr=0.05, steps=12, signals=(), groups=None, **kw):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 8, generator=g)
    y = torch.randint(0, 5, (128,), generator=g)
    opt = torch.optim.SGD(groups or model.parameters(), lr=lr)
    with steadygrad.watch(
        model, opt, tmp_path / name, signals=list(signals), progress=False, **kw
    ) as mon:
        for _ in range(steps):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            mon.step(loss)
            opt.zero_grad()
    return steadygrad.diagnose(tmp_path / name)


def _all_signals():
    return [
        steadygrad.OutputLogitSignal(module="head"),
        steadygrad.SoftmaxCollapseSignal(module="head"),
        steadygrad.PlasticitySignal(every=1, modules=["body.1"]),
    ]


def test_healthy_control_with_every_signal(tmp_path):
    report = _classify(tmp_path, "healthy", Classifier(), signals=_all_signals(), update_every=1)
    assert report.healthy and report.diagnoses == [], report.text()


def test_output_logit_divergence(tmp_path):
    # A log-partition far from zero (every logit near -40), as in a drifting output layer.
    report = _classify(tmp_path, "lse", Classifier(out_bias=-40.0), signals=_all_signals())
    assert report.top.cause == "output_logit_divergence", report.text()
    assert any("z_loss" in f.code for f in report.top.fixes)


def test_softmax_collapse(tmp_path):
    report = _classify(
        tmp_path,
        "collapse",
        Classifier(logit_scale=1e4),
        lr=0.0,
        signals=[steadygrad.SoftmaxCollapseSignal(module="head")],
    )
    assert report.top.cause == "softmax_collapse", report.text()
    assert any("stablemax" in f.code.lower() for f in report.top.fixes)


def test_loss_of_plasticity(tmp_path):
    report = _classify(
        tmp_path,
        "dead",
        Classifier(hidden_bias=-100.0),
        signals=[steadygrad.PlasticitySignal(every=1, modules=["body.1"])],
    )
    assert report.top.cause == "loss_of_plasticity", report.text()
    assert report.top.where == ["body.1"]


def test_frozen_layer_update_ratio(tmp_path):
    model = Classifier()
    groups = [{"params": model.body.parameters(), "lr": 0.0}, {"params": model.head.parameters()}]
    report = _classify(tmp_path, "frozen", model, groups=groups, update_every=1)
    assert report.top.cause == "update_ratio_out_of_range", report.text()
    assert report.top.where == ["body.0.weight"]  # biases start at 0: their ratio is not judged


def test_attention_logit_growth_from_growing_queries(tmp_path):
    torch.manual_seed(0)
    model = TinyGPT(n_layer=2, n_head=2, n_embd=32, block_size=16)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 256, (4, 16))
    signal = steadygrad.AttentionLogitSignal(every=1)
    with steadygrad.watch(model, opt, tmp_path / "attn", signals=[signal], progress=False) as mon:
        for _ in range(12):
            loss = model.loss(idx[:, :-1], idx[:, 1:])
            loss.backward()
            opt.step()
            with torch.no_grad():  # the queries of layer 1 grow, as in a runaway run
                model.h[1].attn.qkv.weight[:32].mul_(2.0)
            mon.step(loss)
            opt.zero_grad()
    report = steadygrad.diagnose(tmp_path / "attn")
    assert report.top.cause == "attention_logit_growth", report.text()
    assert report.top.where == ["h.1.attn"]
    assert any("qk_norm" in f.code for f in report.top.fixes)
