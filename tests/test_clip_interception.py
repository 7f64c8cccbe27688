"""The gradient norm before clipping, read from the loop's own ``clip_grad_norm_`` with no user
code: the recorded value against the norm computed by hand before clipping in the same run,
what counts and what does not, the wrappers' removal, and the detectors that then see through
clipping (a spike it hid, a growth it flattened) next to clipped runs that stay healthy."""

import math

import pytest
import torch
from helpers import regression_batch, tiny_mlp
from torch import nn
from torch.nn.utils import clip_grad as clip_grad_module

import steadygrad
from steadygrad.core import Record
from steadygrad.diagnose.detectors.trends import GROWTH_BEGAN, GradientGrowth
from steadygrad.monitor import clipping


def _hand_norm(params, p=2.0):
    """The norm of all gradients as one vector, computed before anything clips them."""
    flat = torch.cat([q.grad.detach().double().flatten() for q in params if q.grad is not None])
    return torch.linalg.vector_norm(flat, p).item()


def _loop(mon, model, opt, steps, clip, scale=lambda t: 1.0):
    """Train ``steps`` steps (targets times ``scale(t)``), ``clip(model)`` between backward and
    step; the hand-computed pre-clip norms, one per step."""
    hand = []
    for t in range(steps):
        x, y = regression_batch(t)
        loss = nn.functional.mse_loss(model(x), y * scale(t))
        opt.zero_grad()
        loss.backward()
        hand.append(_hand_norm(list(model.parameters())))
        clip(model)
        opt.step()
        mon.step(loss)
    return hand


def _preclip(run_dir):
    steps, values = steadygrad.load(run_dir).series("grad_norm_preclip")
    return dict(zip(steps.tolist(), values.tolist(), strict=True))


@pytest.mark.parametrize(
    "clip",
    [
        lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5),  # a generator
        lambda m: nn.utils.clip_grad_norm_(parameters=list(m.parameters()), max_norm=0.5),
        lambda m: clip_grad_module.clip_grad_norm_(list(m.parameters()), 0.5),
    ],
    ids=["generator", "keywords", "clip_grad_module"],
)
def test_the_norm_before_clipping_is_recorded_as_computed_by_hand(tmp_path, clip):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        hand = _loop(mon, model, opt, 12, clip)
    recorded = _preclip(tmp_path / "run")
    assert sorted(recorded) == list(range(12))
    assert [recorded[t] for t in range(12)] == pytest.approx(hand, rel=1e-5)
    assert max(hand) > 0.5  # the clip did shrink some steps: post-clip norms differ
    post = dict(zip(*steadygrad.load(tmp_path / "run").series("grad_norm"), strict=True))
    assert post[int(max(range(12), key=hand.__getitem__))] == pytest.approx(0.5, rel=1e-4)


def test_the_infinity_norm_and_disjoint_clips_combine_as_one_vector(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first, rest = list(model.parameters())[:2], list(model.parameters())[2:]

    def two_groups(m):  # per-module clipping, as some seq2seq loops do
        torch.nn.utils.clip_grad_norm_(first, 0.3)
        torch.nn.utils.clip_grad_norm_(rest, 0.3)

    with steadygrad.watch(model, opt, tmp_path / "two", progress=False) as mon:
        hand = _loop(mon, model, opt, 5, two_groups)
    assert list(_preclip(tmp_path / "two").values()) == pytest.approx(hand, rel=1e-5)

    model, hand_inf = tiny_mlp(), []
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def inf_norm(m):
        hand_inf.append(_hand_norm(list(m.parameters()), math.inf))
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.01, math.inf)

    with steadygrad.watch(model, opt, tmp_path / "inf", progress=False) as mon:
        _loop(mon, model, opt, 5, inf_norm)
    assert list(_preclip(tmp_path / "inf").values()) == pytest.approx(hand_inf, rel=1e-6)


def test_a_second_clip_of_the_same_parameters_does_not_count(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def twice(m):  # the second call returns the already clipped norm
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.1)

    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        hand = _loop(mon, model, opt, 4, twice)
    assert list(_preclip(tmp_path / "run").values()) == pytest.approx(hand, rel=1e-5)


def test_nothing_is_recorded_without_a_clip_of_the_watched_parameters(tmp_path):
    model, other = tiny_mlp(), tiny_mlp(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        # another model's clip, and a total norm of weights (not gradients): neither is ours
        other(torch.ones(2, 6)).sum().backward()
        _loop(
            mon,
            model,
            opt,
            4,
            lambda m: (
                torch.nn.utils.clip_grad_norm_(other.parameters(), 0.1),
                torch.nn.utils.get_total_norm(list(m.parameters())),
            ),
        )
    assert "grad_norm_preclip" not in steadygrad.load(tmp_path / "run").names()


def test_get_total_norm_of_the_gradients_counts_and_the_argument_wins(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False) as mon:
        hand = []
        for t in range(4):  # torchtitan's way: the total norm first, then the clip with it
            x, y = regression_batch(t)
            loss = nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            hand.append(_hand_norm(list(model.parameters())))
            grads = [p.grad for p in model.parameters()]
            total = torch.nn.utils.get_total_norm(grads)
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), 0.1, total)
            opt.step()
            mon.step(loss, grad_norm_preclip=123.0 if t == 3 else None)
    recorded = list(_preclip(tmp_path / "run").values())
    assert recorded[:3] == pytest.approx(hand[:3], rel=1e-5)
    assert recorded[3] == 123.0  # what the loop passes outranks what was seen


def test_the_wrappers_come_off_with_the_last_monitor_and_a_failure_never_reaches_the_loop(
    tmp_path, monkeypatch
):
    originals = (torch.nn.utils.clip_grad_norm_, clip_grad_module.clip_grad_norm_)
    total = torch.nn.utils.get_total_norm
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = steadygrad.Monitor(model, opt, tmp_path / "a", progress=False)
    second = steadygrad.Monitor(model, opt, tmp_path / "b", progress=False)
    assert torch.nn.utils.clip_grad_norm_ is not originals[0]
    assert torch.nn.utils.clip_grad_norm_.__wrapped__ is originals[0]

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the watch")

    monkeypatch.setattr(clipping.ClipWatch, "saw", broken)
    model(torch.ones(3, 6)).sum().backward()
    expected = _hand_norm(list(model.parameters()))
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
    assert norm.item() == pytest.approx(expected, rel=1e-6)
    assert _hand_norm(list(model.parameters())) == pytest.approx(1e-3, rel=1e-3)  # clipped
    first.close()
    assert torch.nn.utils.clip_grad_norm_ is not originals[0]  # the second still watches
    second.close()
    assert (torch.nn.utils.clip_grad_norm_, clip_grad_module.clip_grad_norm_) == originals
    assert torch.nn.utils.get_total_norm is total


def test_torch_still_rejects_what_it_rejects_through_the_wrapper(tmp_path):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with steadygrad.watch(model, opt, tmp_path / "run", progress=False):
        with pytest.raises(TypeError):
            torch.nn.utils.clip_grad_norm_(3, 1.0)
        model(torch.ones(3, 6)).sum().backward()
        model[0].weight.grad[0, 0] = math.nan
        with pytest.raises(RuntimeError, match="non-finite"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, error_if_nonfinite=True)


def _spike_run(run_dir, spike_at):
    model = tiny_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    with steadygrad.watch(model, opt, run_dir, progress=False) as mon:
        hand = _loop(
            mon,
            model,
            opt,
            80,
            lambda m: torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5),
            scale=lambda t: 200.0 if t == spike_at else 1.0,
        )
    report = steadygrad.diagnose(steadygrad.load(run_dir))
    return hand, report


def test_a_spike_that_clipping_hid_is_found_and_a_clipped_healthy_run_stays_quiet(tmp_path):
    hand, report = _spike_run(tmp_path / "spike", spike_at=50)
    assert hand[50] > 50 * sorted(hand)[40]  # the spike is real, and far above the clip
    spikes = [f for f in steadygrad.load(tmp_path / "spike").findings() if f.step == 50]
    assert any(f.evidence.get("hidden_by_clipping") for f in spikes), spikes
    assert report.diagnoses and report.diagnoses[0].first_step == 50
    _, healthy = _spike_run(tmp_path / "healthy", spike_at=-1)
    assert not [d for d in healthy.diagnoses if d.severity != "info"]


def _records(pre, post=1.0, rise_from=10, steps=40):
    """A clipped run: the norm after clipping pinned at ``post``, before clipping flat then
    growing 1.3x a record from ``rise_from`` in ``w1`` first (``w2`` follows 5 records later),
    the loss rising with it."""
    out = []
    for t in range(steps):
        g1 = 1.3 ** max(0, t - rise_from)
        g2 = 1.3 ** max(0, t - rise_from - 5)
        total = math.hypot(g1, g2)
        values = {"grad_norm": min(total, post), "loss": 1.0 + 0.1 * max(0, t - rise_from)}
        shrink = min(1.0, post / total)
        values["grad_norm/w1"], values["grad_norm/w2"] = g1 * shrink, g2 * shrink
        if pre:
            values["grad_norm_preclip"] = total
        out.append(Record(t, values))
    return out


def test_growth_under_clipping_is_seen_through_the_norm_before_it():
    detector = GradientGrowth()
    found = [f for r in _records(pre=True) for f in detector.update(r)]
    assert found and found[0].where == "w1"
    assert found[0].evidence[GROWTH_BEGAN] < 10 + 7  # before w2 had grown as much
    # the same run without the norm before clipping: pinned at the clip, nothing to see
    detector = GradientGrowth()
    assert not [f for r in _records(pre=False) for f in detector.update(r)]
