"""torch.optim behaviour every steadygrad optimizer must have (eager path)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from steadygrad import optim as so

# Small reset intervals so that round trips and groups cross SPAM/Stable-SPAM resets.
FACTORIES = {
    "SPAM": lambda ps, **kw: so.SPAM(
        ps, reset_interval=7, warmup_steps=3, accumulation_steps=2, **kw
    ),
    "StableSPAM": lambda ps, **kw: so.StableSPAM(ps, reset_interval=7, total_steps=20, **kw),
    "AdaBelief": lambda ps, **kw: so.AdaBelief(ps, **kw),
    "DiffGrad": lambda ps, **kw: so.DiffGrad(ps, **kw),
    "Lion": lambda ps, **kw: so.Lion(ps, **kw),
    "AdEMAMix": lambda ps, **kw: so.AdEMAMix(ps, alpha_warmup=5, beta3_warmup=5, **kw),
    "Grams": lambda ps, **kw: so.Grams(ps, **kw),
}  # fmt: skip
NAMES = sorted(FACTORIES)


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 3)).to(
        dtype
    )


def _batch(i):
    gen = torch.Generator().manual_seed(i)
    return torch.randn(6, 5, generator=gen), torch.randn(6, 3, generator=gen)


def _train(model, opt, steps, start=0):
    for i in range(start, start + steps):
        x, y = _batch(i)
        opt.zero_grad()
        ((model(x.to(next(model.parameters()).dtype)) - y) ** 2).mean().backward()
        opt.step()


def _flat(model):
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name", NAMES)
def test_step_never_writes_into_grad(name):
    model = _model()
    opt = FACTORIES[name](model.parameters(), lr=1e-2, weight_decay=1e-2, fused=False)
    for i in range(10):  # crosses a reset for SPAM / Stable-SPAM, and their clipping
        x, y = _batch(i)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        model[0].weight.grad[0, 0] += 1e3  # a spike that the clipping optimizers act on
        before = [p.grad.clone() for p in model.parameters()]
        opt.step()
        for p, g in zip(model.parameters(), before, strict=True):
            assert torch.equal(p.grad, g)


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_continues_the_trajectory_exactly(name):
    model = _model()
    opt = FACTORIES[name](model.parameters(), lr=1e-2, weight_decay=1e-2, fused=False)
    _train(model, opt, 5)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    _train(model, opt, 6, start=5)

    model2 = _model()
    model2.load_state_dict(saved_model)
    opt2 = FACTORIES[name](model2.parameters(), lr=1e-2, weight_decay=1e-2, fused=False)
    opt2.load_state_dict(saved_opt)
    _train(model2, opt2, 6, start=5)
    assert torch.equal(_flat(model), _flat(model2))


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_have_their_own_hyperparameters(name):
    # Group with lr=0 and no decay must not move; the other group must.
    model = _model()
    opt = FACTORIES[name](
        [
            {"params": model[0].parameters(), "lr": 0.0},
            {"params": model[2].parameters()},
        ],
        lr=1e-2,
        fused=False,
    )
    frozen = [p.detach().clone() for p in model[0].parameters()]
    moving = [p.detach().clone() for p in model[2].parameters()]
    _train(model, opt, 4)
    for p, q in zip(model[0].parameters(), frozen, strict=True):
        assert torch.equal(p.detach(), q)
    assert any(
        not torch.equal(p.detach(), q) for p, q in zip(model[2].parameters(), moving, strict=True)
    )


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_skipped_and_closure_is_called(name):
    model = _model()
    opt = FACTORIES[name](model.parameters(), lr=1e-2, fused=False)
    x, y = _batch(0)
    model[2].bias.requires_grad_(False)
    bias = model[2].bias.detach().clone()
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert calls == [1] and torch.is_tensor(loss) and math.isfinite(loss.item())
    assert torch.equal(model[2].bias.detach(), bias)
    assert model[2].bias not in opt.state
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_params_follow_the_float32_trajectory(name):
    ref, low = _model(), _model(torch.bfloat16)
    opt_ref = FACTORIES[name](ref.parameters(), lr=1e-2, fused=False)
    opt_low = FACTORIES[name](low.parameters(), lr=1e-2, fused=False)
    _train(ref, opt_ref, 8)
    _train(low, opt_low, 8)
    assert all(p.dtype == torch.bfloat16 for p in low.parameters())
    # float32 states for bf16 parameters (moments in bf16 would lose small updates)
    st = opt_low.state[low[0].weight]
    assert all(v.dtype == torch.float32 for v in st.values() if torch.is_tensor(v))
    moved = (_flat(ref) - _flat(_model())).abs().max()
    assert (_flat(ref) - _flat(low)).abs().max() < 0.1 * moved + 2e-2


@pytest.mark.parametrize("name", NAMES)
def test_sparse_and_complex_are_rejected(name):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = FACTORIES[name](emb.parameters(), fused=False)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    with pytest.raises(TypeError, match="complex"):
        FACTORIES[name]([torch.nn.Parameter(torch.zeros(3, dtype=torch.complex64))], fused=False)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"lr": -1e-3}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"weight_decay": float("inf")}, "weight_decay"),
        ({"fused": "yes"}, "fused"),
    ],
)
def test_invalid_hyperparameters_name_the_argument(name, kwargs, arg):
    with pytest.raises((ValueError, TypeError), match=arg):
        FACTORIES[name](_model().parameters(), **kwargs)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [1.0, -0.1, float("nan")])
def test_betas_outside_unit_interval_are_rejected(name, bad):
    n = 3 if name == "AdEMAMix" else 2
    betas = [0.9] * n
    betas[-1] = bad
    with pytest.raises(ValueError, match=rf"betas\[{n - 1}\]"):
        FACTORIES[name](_model().parameters(), betas=tuple(betas))


def test_without_torch_compile_the_default_falls_back_to_eager(monkeypatch):
    from steadygrad.optim import _base

    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(_base, "_COMPILE_WORKS", None)
    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(RuntimeWarning, match="fall back to the eager path"):
        assert not _base.compile_available()
    model = _model()
    opt = so.AdEMAMix(model.parameters(), lr=1e-2)  # fused=None
    ref_model = _model()
    ref = so.AdEMAMix(ref_model.parameters(), lr=1e-2, fused=False)
    _train(model, opt, 3)
    _train(ref_model, ref, 3)
    assert torch.equal(_flat(model), _flat(ref_model))
    with pytest.raises(RuntimeError, match="fused=True"):
        so.Lion(model.parameters(), fused=True)


def test_the_default_compiles_only_a_model_large_enough_to_pay_it_back(monkeypatch):
    # Compiling costs seconds once; on a small model the fused pass saves a fraction of a
    # millisecond per step: fused=None runs it eagerly there, and compiles from COMPILE_FROM
    # entries (counted again when a group is added). fused=True always compiles.
    from torch._dynamo.utils import counters

    from steadygrad.optim import _base

    monkeypatch.setattr(_base, "_COMPILE_WORKS", True)  # decided here, not by this machine
    model = _model()
    small = sum(p.numel() for p in model.parameters())
    assert small < _base.COMPILE_FROM
    opt = so.Lion(model.parameters(), lr=1e-3)  # fused=None
    cpu = torch.device("cpu")
    assert not opt._use_compiled(cpu)
    assert so.Lion(model.parameters(), lr=1e-3, fused=True)._use_compiled(cpu)
    frames = counters["stats"]["unique_graphs"]
    _train(model, opt, 3)
    assert counters["stats"]["unique_graphs"] == frames  # nothing was compiled
    big = torch.nn.Parameter(torch.zeros(_base.COMPILE_FROM - small))
    opt.add_param_group({"params": [big]})
    assert opt._use_compiled(cpu)  # the model has grown past the bound
    monkeypatch.setattr(_base, "COMPILE_FROM", small)
    assert so.Lion(_model().parameters(), lr=1e-3)._use_compiled(cpu)


def test_the_default_runs_the_multi_tensor_path_on_an_accelerator(monkeypatch):
    """Off the CPU, ``fused=None`` takes the multi-tensor eager path at any size (faster than
    the compiled one there: bench/gpu.py), uncut into cache blocks; ``fused=True`` compiles."""
    from steadygrad.optim import _base, _foreach

    monkeypatch.setattr(_base, "_COMPILE_WORKS", True)
    monkeypatch.setattr(_base, "COMPILE_FROM", 1)
    opt = so.Lion(_model().parameters(), lr=1e-3)
    assert opt._use_compiled(torch.device("cpu"))
    assert not opt._use_compiled(torch.device("meta"))
    assert so.Lion(_model().parameters(), lr=1e-3, fused=True)._use_compiled(torch.device("meta"))
    rows = [[torch.empty(n, device="meta")] * 3 for n in (5, 3 * _foreach.BLOCK_NUMEL, 7)]
    (block,) = _foreach.blocks(rows, split=True)  # one block, nothing cut
    assert [row[0].numel() for row in block] == [5, 3 * _foreach.BLOCK_NUMEL, 7]
    cpu_rows = [[torch.empty(n)] * 3 for n in (5, 3 * _foreach.BLOCK_NUMEL, 7)]
    sizes = [[row[0].numel() for row in b] for b in _foreach.blocks(cpu_rows, split=True)]
    assert sizes == [[_foreach.BLOCK_NUMEL]] * 3 + [[5, 7]]  # cut into cache-sized pieces
