"""The vocabulary holds together: every name that crosses a module is declared once, and
everything that reads a name reads a declared one.

Oracles: the declarations themselves (``Signal.metrics``, ``Detector.emits``/``reads``,
``Rule.kinds``), a real monitored run's stored names, and Python's own name resolution for the
fixes a diagnosis prints.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import pkgutil

import pytest
import torch

import steadygrad
from steadygrad.core import Metric, Signal, declaration_of
from steadygrad.diagnose.detectors import Detector, default_detectors
from steadygrad.diagnose.rules import RULES


def _import_everything() -> None:
    for info in pkgutil.walk_packages(steadygrad.__path__, "steadygrad."):
        if info.name.endswith("__main__"):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError as exc:  # an optional extra that is not installed
            if "steadygrad" in str(exc):
                raise


def _subclasses(cls: type) -> list[type]:
    found, todo = [], [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


@pytest.fixture(scope="module")
def declared() -> dict[str, Metric]:
    _import_everything()
    metrics: dict[str, Metric] = {}
    for signal in _subclasses(Signal):
        for m in signal.metrics:
            assert metrics.setdefault(m.name, m) == m, f"{m.name} is declared twice, differently"
    return metrics


def test_every_kind_a_rule_reads_is_emitted_by_a_detector():
    _import_everything()
    emitted = {k for d in _subclasses(Detector) for k in d.emits}
    for rule in RULES:
        missing = set(rule.kinds) - emitted
        assert not missing, f"rule {rule.cause} reads kinds no detector emits: {missing}"


def test_every_default_detector_declares_what_it_reads_and_emits():
    for detector in default_detectors():
        assert detector.emits, f"{type(detector).__name__} declares no finding kind"
        assert detector.reads, f"{type(detector).__name__} declares no metric it reads"
        assert detector.kind in detector.emits


def test_every_series_a_detector_or_the_report_reads_is_declared_by_a_signal(declared):
    from steadygrad.report import html

    readers = [(d.__name__, m) for d in _subclasses(Detector) for m in d.reads]
    readers += [("report", m) for m in html.READS]
    for reader, metric in readers:
        assert declared.get(metric.name) == metric, f"{reader} reads undeclared {metric.name}"


def test_a_rule_that_reads_an_undeclared_kind_is_caught(tmp_path):
    from steadygrad.diagnose.detectors.training import LOSS_SPIKE, NONFINITE
    from steadygrad.diagnose.rules import Rule, RunFacts

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with steadygrad.watch(model, opt, tmp_path / "r", progress=False) as mon:
        model(torch.ones(1, 2)).sum().backward()
        opt.step()
        mon.step(1.0)
    sloppy = Rule("x", 1, "info", "-", (), lambda facts: facts.of(NONFINITE), (LOSS_SPIKE,))
    with pytest.raises(LookupError, match="did not declare"):
        sloppy.apply(RunFacts(steadygrad.load(tmp_path / "r")))


def test_every_metric_of_a_monitored_run_is_declared(tmp_path):
    """A TinyGPT run with every opt-in signal: each stored name has a declaration, kept with
    the run, that owns it (the log-partition among them)."""
    from steadygrad.data import TextData
    from steadygrad.models import TinyGPT

    torch.manual_seed(0)
    data = TextData.from_stdlib()
    model = TinyGPT(vocab_size=data.vocab_size, n_layer=1, n_embd=32, n_head=2, block_size=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = data.batch(4, 16)
    probe = steadygrad.SharpnessProbe(lambda m, b: m.loss(*b), (x, y), every=2, max_matvecs=4)
    signals = [
        steadygrad.AttentionLogitSignal(),
        steadygrad.OutputLogitSignal(module="lm_head"),
        steadygrad.SoftmaxCollapseSignal(module="lm_head"),
        steadygrad.PlasticitySignal(),
        probe,
    ]
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    run_dir = tmp_path / "run"
    with steadygrad.watch(
        model, opt, run_dir, signals=signals, activation_every=1, progress=False, scaler=scaler
    ) as mon:
        for _ in range(4):
            loss = model.loss(x, y)
            loss.backward()
            opt.step()
            mon.step(loss, grad_norm_preclip=torch.tensor(1.0))
            opt.zero_grad()
    run = steadygrad.load(run_dir)
    metrics = run.metrics()
    names = run.names()
    assert "logit_lse_mean" in names
    undeclared = [n for n in names if declaration_of(n, metrics) is None]
    assert not undeclared, f"stored but not declared: {undeclared}"


FREE_NAMES = {
    "model",
    "optimizer",
    "loss",
    "logits",
    "targets",
    "q",
    "k",
    "head_dim",
    "total_steps",
    "ids",
    "run_dir",
    "mon",
    "scheduler",
    "group",
}


def _resolves(code: str) -> list[str]:
    """Names and attribute chains in ``code`` that do not resolve after ``import steadygrad``."""
    tree = ast.parse(code)
    bound = {
        t.id
        for node in ast.walk(tree)
        for t in ast.walk(node)
        if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)
    }
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            chain, base = [], node
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in ("steadygrad", "torch"):
                obj = {"steadygrad": steadygrad, "torch": torch}[base.id]
                for attr in reversed(chain):
                    if not hasattr(obj, attr):
                        bad.append(f"{base.id}.{'.'.join(reversed(chain))}")
                        break
                    obj = getattr(obj, attr)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            known = node.id in ("steadygrad", "torch") or node.id in FREE_NAMES
            if not (known or node.id in bound or hasattr(builtins, node.id)):
                bad.append(node.id)
    return bad


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.cause)
def test_every_printed_fix_resolves_after_import_steadygrad(rule):
    for fix in rule.fixes:
        assert not _resolves(fix.code), f"{rule.cause}: {fix.code!r} does not resolve"


def test_the_qk_norm_fixes_run_as_printed():
    """The fix offered for a TinyGPT-style model runs on it; the one for other attention runs
    on q and k of that attention's shape."""
    from steadygrad.diagnose import rules
    from steadygrad.models import TinyGPT

    patch = next(f for f in rules.RULES[0].fixes if "add_qk_norm" in f.code)
    inline = next(f for f in rules.RULES[0].fixes if "QKNorm(head_dim)" in f.code)
    model = TinyGPT(n_layer=2, n_embd=32, n_head=4)
    exec(patch.code, {"steadygrad": steadygrad, "model": model})
    assert not steadygrad.nn.qk_norm_targets(model)
    space = {"steadygrad": steadygrad, "head_dim": 8, "q": torch.randn(2, 4, 5, 8)}
    space["k"] = torch.randn(2, 4, 5, 8)
    exec(inline.code, space)
    assert space["q"].shape == (2, 4, 5, 8)
