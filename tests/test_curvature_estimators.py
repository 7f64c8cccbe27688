"""Spectral density, per-layer curvature, preconditioned sharpness, stability limits and the
guarantee that probes leave the model as they found it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_curvature_helpers import (  # noqa: F401
    SmallCNN,
    cnn_problem,
    dense_for,
    dense_hessian,
    mlp_problem,
    one_thread,
)
from torch import nn

from steadygrad.curvature import (
    adam_limit,
    hessian_frobenius_norm,
    hessian_trace,
    layerwise_curvature,
    preconditioned_sharpness,
    sharpness,
    spectral_density,
    stability_limits,
    stability_margin,
)


def rel(a, b):
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------- spectral density


def test_slq_density_matches_dense_eigenvalue_histogram():
    model, loss_fn, batch = cnn_problem()
    ev = torch.linalg.eigvalsh(dense_for("cnn")).numpy()
    sd = spectral_density(model, loss_fn, batch, draws=6, steps=30)
    assert sd.matvecs == 180
    assert np.allclose(sd.weights.sum(axis=1), 1.0)
    # Wasserstein-1 distance between the quadrature measure and the dense spectrum, via CDFs.
    t = np.linspace(ev[0] - 0.1, ev[-1] + 0.1, 2000)
    cdf_dense = np.searchsorted(ev, t, side="right") / ev.size
    cdf_slq = np.array([sd.cumulative(x) for x in t])
    w1 = np.trapezoid(np.abs(cdf_dense - cdf_slq), t)
    assert w1 < 0.03 * (ev[-1] - ev[0])
    # the smoothed density integrates to one and its histogram follows the dense one
    grid, dens = sd.density(grid=np.linspace(ev[0] - 0.2, ev[-1] + 0.2, 4000), variance=0.05**2)
    assert np.trapezoid(dens, grid) == pytest.approx(1.0, abs=1e-6)
    edges = np.linspace(ev[0] - 0.2, ev[-1] + 0.2, 9)
    hist_dense = np.histogram(ev, edges)[0] / ev.size
    hist_slq = [
        dens[(grid >= a) & (grid < b)].sum() * (grid[1] - grid[0])
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    assert np.abs(hist_dense - np.asarray(hist_slq)).max() < 0.1
    # extreme nodes converge to the extreme eigenvalues
    assert rel(sd.nodes.max(), ev[-1]) < 1e-3


# ---------------------------------------------------------------- per-layer


def test_layerwise_blocks_match_dense_diagonal_blocks():
    model, loss_fn, batch = mlp_problem()
    H = dense_for("mlp")
    out = layerwise_curvature(model, loss_fn, batch, tol=1e-9, trace_matvecs=400)
    sizes = {"0": 5 * 8 + 8, "2": 8 * 3 + 3}
    start = 0
    for block, size in sizes.items():
        Hbb = H[start : start + size, start : start + size]
        start += size
        assert rel(out.sharpness[block], torch.linalg.eigvalsh(Hbb)[-1].item()) < 1e-4
        est = out.trace[block]
        assert abs(est.value - torch.trace(Hbb).item()) < 4 * est.stderr
    per_param = layerwise_curvature(model, loss_fn, batch, blocks="parameter", trace_matvecs=0)
    assert set(per_param.sharpness) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert per_param.trace == {}


# ---------------------------------------------------------------- preconditioned


def _adam_steps(model, loss_fn, batch, steps=4, **kw):
    opt = torch.optim.Adam(model.parameters(), lr=0.01, **kw)
    for _ in range(steps):
        opt.zero_grad()
        loss_fn(model, batch).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def test_preconditioned_sharpness_is_top_eigenvalue_of_p_inverse_h():
    model, loss_fn, batch = mlp_problem()
    opt = _adam_steps(model, loss_fn, batch, betas=(0.9, 0.99), eps=1e-6)
    H = dense_hessian(model, loss_fn, batch)
    # Adam's denominator, written out from torch.optim.Adam's documented update
    p_diag = []
    for p in model.parameters():
        st = opt.state[p]
        t = float(st["step"])
        v_hat = st["exp_avg_sq"] / (1 - 0.99**t)
        p_diag.append(((1 - 0.9**t) * (v_hat.sqrt() + 1e-6)).reshape(-1))
    P = torch.cat(p_diag)
    want = np.linalg.eigvals((H / P[:, None]).numpy()).real.max()  # non-symmetric P^-1 H
    got = preconditioned_sharpness(model, loss_fn, batch, opt, tol=1e-9)
    assert rel(got.value, want) < 1e-4
    margin = stability_margin(model, loss_fn, batch, opt, tol=1e-9)
    assert rel(margin.preconditioned_sharpness, want) < 1e-4
    assert margin.limits.preconditioned_sharpness_limit == pytest.approx(38 / 0.01)
    assert margin.preconditioned_ratio == pytest.approx(want / 3800, rel=1e-4)
    metrics = margin.as_metrics()
    assert "preconditioned_sharpness" in metrics and "sharpness_limit" not in metrics


def test_preconditioned_needs_optimizer_state():
    model, loss_fn, batch = mlp_problem()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="exp_avg_sq"):
        preconditioned_sharpness(model, loss_fn, batch, opt)


def test_adam_limit_is_38_over_lr_at_beta1_09():
    p = nn.Parameter(torch.zeros(1))
    assert adam_limit(torch.optim.Adam([p], lr=0.002)) == pytest.approx(38 / 0.002)
    assert adam_limit(torch.optim.AdamW([p], lr=0.1, betas=(0.5, 0.9))) == pytest.approx(60.0)


# ---------------------------------------------------------------- limits against simulation


def _diverges(optimizer_factory, curvature, steps=3000):
    """Run the optimizer on 0.5 * a * x^2 and report whether |x| blew up."""
    x = nn.Parameter(torch.ones(1, dtype=torch.float64))
    opt = optimizer_factory([x])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * x**2).sum().backward()
        opt.step()
    return x.abs().item() > 1.0


@pytest.mark.parametrize(
    "kw",
    [
        dict(lr=0.01),
        dict(lr=0.01, momentum=0.9),
        dict(lr=0.01, momentum=0.9, nesterov=True),
        dict(lr=0.02, momentum=0.5, dampening=0.3),
        dict(lr=0.01, weight_decay=5.0),
    ],
)
def test_sgd_limits_match_quadratic_simulation(kw):
    def make(params):
        return torch.optim.SGD(params, **kw)

    limit = stability_limits(make([nn.Parameter(torch.zeros(1))])).sharpness_limit
    assert not _diverges(make, 0.98 * limit)
    assert _diverges(make, 1.02 * limit)


def test_limit_numbers_from_the_reference():
    def lim(**kw):
        return stability_limits(torch.optim.SGD([nn.Parameter(torch.zeros(1))], **kw))

    assert lim(lr=0.01).sharpness_limit == pytest.approx(200)
    assert lim(lr=0.01).trace_limit == pytest.approx(200)
    assert lim(lr=0.01, momentum=0.9).sharpness_limit == pytest.approx(380)
    assert lim(lr=0.01, momentum=0.9, nesterov=True).sharpness_limit == pytest.approx(135.7142857)


def test_unsupported_or_mixed_optimizers_are_errors():
    a, b = nn.Parameter(torch.zeros(1)), nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match="differ"):
        stability_limits(torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b]}], lr=0.01))
    with pytest.raises(TypeError, match="no stability limit"):
        stability_limits(torch.optim.Adagrad([a], lr=0.1))
    with pytest.raises(TypeError, match="optimizer"):
        stability_limits("sgd")


def test_stability_margin_for_gd_reports_ratio_to_two_over_lr():
    model, loss_fn, batch = mlp_problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ev = torch.linalg.eigvalsh(dense_for("mlp"))
    margin = stability_margin(model, loss_fn, batch, opt, trace=True, trace_matvecs=225, tol=1e-9)
    assert margin.limits.kind == "gd"
    assert rel(margin.sharpness, ev[-1].item()) < 1e-4
    assert margin.sharpness_ratio == pytest.approx(ev[-1].item() / 4.0, rel=1e-4)
    assert abs(margin.hessian_trace - ev.sum().item()) < 4 * margin.hessian_trace_stderr
    assert margin.as_metrics()["sharpness_limit"] == pytest.approx(4.0)
    assert margin.matvecs > 225


# ---------------------------------------------------------------- model state


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.cnn = SmallCNN().double()
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.cnn(x))


def test_probes_leave_model_state_untouched():
    torch.manual_seed(0)
    model = Noisy()
    model.train()
    model.cnn.fc.eval()  # a mixed mode must survive too
    x = torch.randn(16, 1, 6, 6, dtype=torch.float64)
    y = torch.randint(0, 4, (16,))
    batch = (x, y)

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opt.zero_grad()
    loss_fn(model, batch).backward()
    opt.step()
    model.cnn.conv.bias.grad = None  # some grads None, others set
    grads = {
        n: (p.grad, None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters()
    }
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    modes = {n: m.training for n, m in model.named_modules()}
    flags = [p.requires_grad for p in model.parameters()]

    a = sharpness(model, loss_fn, batch, k=2)
    b = sharpness(model, loss_fn, batch, k=2)
    assert torch.equal(a.eigenvalues, b.eigenvalues)  # dropout off: a deterministic Hessian
    hessian_trace(model, loss_fn, batch, matvecs=9)
    hessian_trace(model, loss_fn, batch, matvecs=9, engine="func")
    hessian_frobenius_norm(model, loss_fn, batch, matvecs=3, engine="double_backward")
    spectral_density(model, loss_fn, batch, draws=1, steps=5)
    layerwise_curvature(model, loss_fn, batch, trace_matvecs=2, tol=0.1)
    stability_margin(model, loss_fn, batch, opt, trace=True, trace_matvecs=6)

    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
        grad, value = grads[n]
        assert p.grad is grad, n
        if grad is not None:
            assert torch.equal(p.grad, value), n
    for n, buf in model.named_buffers():
        assert torch.equal(buf, buffers[n]), n
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.cnn.bn.track_running_stats


def test_probe_state_restored_after_an_error():
    model, loss_fn, batch = cnn_problem(train_bn=True)
    buffers = {n: b.clone() for n, b in model.named_buffers()}

    def failing(m, b):
        loss_fn(m, b)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sharpness(model, failing, batch)
    assert model.training and model.bn.track_running_stats
    for n, buf in model.named_buffers():
        assert torch.equal(buf, buffers[n])
