"""The CUDA paths, checked against the same computation on the CPU (skipped without a GPU).

CI has no GPU; these run on a lent GPU machine (``bench/gpu.py``'s call runs them too):
``PYTHONPATH=. python -m pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import steadygrad
from steadygrad import optim as so
from steadygrad.curvature import sharpness
from steadygrad.models import MLP, TinyGPT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

OPTIMIZERS = ("SPAM", "StableSPAM", "AdaBelief", "DiffGrad", "Lion", "AdEMAMix", "Grams")


def _monitored_run(
    device: str, run_dir, steps: int = 12, every: int = 1, autocast=False, defer=None
):
    model = TinyGPT(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=16).to(device)
    if not autocast:  # float64: the two devices then agree to rounding
        model.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    mon = steadygrad.Monitor(model, opt, run_dir, every=every, progress=False, defer=defer)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(64, (steps, 8, 17), generator=gen).to(device)
    for chunk in tokens:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model.loss(chunk[:, :-1], chunk[:, 1:])
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad(set_to_none=True)
    mon.close()
    return steadygrad.load(run_dir), mon


@pytest.mark.parametrize("defer", [None, False])
def test_monitor_on_cuda_records_what_the_cpu_computes(tmp_path, defer):
    """float64 on both devices: every series the default Monitor stores agrees to 1e-6, its
    steps finished one call late through pinned memory (the default on a GPU) or at once."""
    cpu, _ = _monitored_run("cpu", tmp_path / "cpu")
    gpu, mon = _monitored_run("cuda", tmp_path / "cuda", defer=defer)
    assert mon.defer is (defer is None)
    names = [n for n in cpu.names() if n != "step_time"]
    assert "loss" in names and "grad_norm" in names and any("/" in n for n in names)
    assert set(gpu.names()) >= set(names)
    compared = 0
    for name in names:
        s_cpu, v_cpu = cpu.series(name)
        s_gpu, v_gpu = gpu.series(name)
        np.testing.assert_array_equal(s_cpu, s_gpu, err_msg=name)
        # atol: a sum that is zero but for rounding (the logits' shift gradient) is noise
        np.testing.assert_allclose(v_gpu, v_cpu, rtol=1e-6, atol=1e-7, err_msg=name)
        compared += len(v_cpu)
    assert compared > 100


def test_monitor_under_bf16_autocast_records_finite_values(tmp_path):
    """STEADYGRAD_STRICT (conftest) turns a failure inside a signal into an exception."""
    run, mon = _monitored_run("cuda", tmp_path / "amp", autocast=True)
    steps, loss = run.series("loss")
    assert len(steps) == 12 and np.isfinite(loss).all()
    assert np.isfinite(run.series("grad_norm")[1]).all()
    assert not [f for f in mon.findings if f.severity != "info"]


def _syncs(fn) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.parametrize("defer", [None, False])
def test_a_monitored_cuda_step_never_synchronises_and_a_deferred_one_never_waits(tmp_path, defer):
    """CUDA's own sync debug mode, independent of the dispatch-mode count of
    ``test_host_syncs.py``: no monitored step synchronises (the transfer is a copy into pinned
    memory and a wait on its event, which the mode does not flag). Finished at once, a recorded
    step waits for the device; deferred (the default on a GPU), it returns with the device
    still busy: oracle, a 0.1 s sleep kernel queued before the step."""
    torch.manual_seed(0)
    model = MLP(16, [64, 64], 4).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    mon = steadygrad.Monitor(model, opt, tmp_path / "run", every=4, progress=False, defer=defer)
    x, y = torch.randn(64, 16, device="cuda"), torch.randint(4, (64,), device="cuda")

    def step() -> None:
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        mon.step(loss)
        opt.zero_grad(set_to_none=True)

    for _ in range(8):  # past the first-step bookkeeping
        step()
    counts = [_syncs(step) for _ in range(32)]
    # none of the Monitor's: the H200 saw one of torch's own (in torch/cuda/__init__.py) once
    # in 60 monitored steps, deferred or not; 8 recorded steps here would make 8
    assert sum(counts) <= 1, counts
    assert mon.step_count % 4 == 0  # the next step is recorded
    torch.cuda.synchronize()
    torch.cuda._sleep(int(2e8))
    step()
    busy = not torch.cuda.current_stream().query()
    mon.close()
    assert busy is mon.defer is (defer is None)
    assert list(steadygrad.load(tmp_path / "run").series("loss")[0]) == list(range(0, 41, 4))


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize("fused", [None, False])
def test_optimizer_on_cuda_matches_the_cpu_reference_loop(name, fused):
    """Six updates with fixed gradients: the CUDA paths (compiled by default, multi-tensor eager
    with ``fused=False``) land where the CPU's tensor-by-tensor reference loop does."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(33, 17), (17,), (256, 64), (5,)]
    start = [torch.randn(s, generator=gen) for s in shapes]
    grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(6)]

    def run(device, **kw):
        params = [nn.Parameter(p.clone().to(device)) for p in start]
        opt = getattr(so, name)(params, lr=1e-3, **kw)
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.to(device)
            opt.step()
        return [p.detach().cpu() for p in params]

    reference = run("cpu", fused=False, foreach=False)
    for got, want in zip(run("cuda", fused=fused), reference, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ["retained", "func", "double_backward"])
def test_sharpness_on_cuda_matches_the_dense_hessian(engine):
    torch.manual_seed(0)
    model = MLP(6, [12], 3).double()
    x, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(3, (40,))
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}

    def flat_loss(flat):
        chunks = flat.split([p.numel() for p in params.values()])
        shaped = {n: c.view_as(params[n]) for n, c in zip(names, chunks, strict=True)}
        out = torch.func.functional_call(model, shaped, (x,))
        return nn.functional.cross_entropy(out, y)

    flat = torch.cat([p.reshape(-1) for p in params.values()])
    dense = torch.autograd.functional.hessian(flat_loss, flat)
    want = torch.linalg.eigvalsh(dense).flip(0)[:3]
    cuda_model = model.cuda()
    batch = (x.cuda(), y.cuda())

    def loss_fn(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1])

    got = sharpness(cuda_model, loss_fn, batch, k=3, tol=1e-10, engine=engine)
    torch.testing.assert_close(got.eigenvalues.cpu(), want, rtol=1e-6, atol=1e-9)
