"""Small models and a dense-Hessian oracle shared by the curvature tests (independent of the code
under test: the dense matrix comes from torch.func.hessian over a flat parameter vector)."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from steadygrad.models import TinyGPT


def flat_loss(model, loss_fn, batch, names=None):
    """loss as a function of one flat vector over the named parameters (others held fixed)."""
    named = dict(model.named_parameters())
    names = list(named) if names is None else list(names)
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, b):
            return loss_fn(self.model, b)

    wrap = Wrap()

    def f(theta):
        parts = torch.split(theta, sizes)
        p = {"model." + n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        return functional_call(wrap, p, (batch,))

    theta0 = torch.cat([named[n].detach().reshape(-1) for n in names])
    return f, theta0


def dense_hessian(model, loss_fn, batch, names=None, plain_autograd=False):
    """Dense Hessian by torch.func.hessian, or by reverse-over-reverse autograd on a copy of the
    model (for models that mutate buffers in forward, e.g. BatchNorm in training mode)."""
    if plain_autograd:
        model = copy.deepcopy(model)
    f, theta0 = flat_loss(model, loss_fn, batch, names)
    with sdpa_kernel([SDPBackend.MATH]):
        if plain_autograd:
            H = torch.autograd.functional.hessian(f, theta0, vectorize=not buffers_change(model))
        else:
            H = torch.func.hessian(f)(theta0)
    return 0.5 * (H + H.T)


def buffers_change(model):
    return any(isinstance(m, nn.BatchNorm2d) and m.training for m in model.modules())


def mlp_problem(dtype=torch.float64, seed=0, n=64):
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype))
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    y = torch.randint(0, 3, (n,), generator=g)

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    return model, loss_fn, (x, y)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def cnn_problem(dtype=torch.float64, seed=0, train_bn=False):
    torch.manual_seed(seed)
    model = SmallCNN().to(dtype)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 1, 6, 6, generator=g, dtype=dtype)
    y = torch.randint(0, 4, (16,), generator=g)
    # non-trivial running statistics
    model.train()
    with torch.no_grad():
        model(x * 2 + 1)
    if not train_bn:
        model.eval()

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]), b[1])

    return model, loss_fn, (x, y)


def gpt_problem(dtype=torch.float64, seed=0):
    model = TinyGPT(vocab_size=7, n_layer=1, n_head=2, n_embd=4, block_size=6, seed=seed).to(dtype)
    with torch.no_grad():  # move away from the symmetric init so the spectrum is generic
        g = torch.Generator().manual_seed(seed + 1)
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=dtype))
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 7, (4, 6), generator=g)
    tgt = torch.randint(0, 7, (4, 6), generator=g)

    def loss_fn(m, b):
        return m.loss(b[0], b[1])

    return model, loss_fn, (idx, tgt)


@functools.cache
def dense_for(name: str, **kwargs) -> torch.Tensor:
    """The dense Hessian of a fresh problem (cached: problems are deterministic by seed)."""
    problem = {"mlp": mlp_problem, "cnn": cnn_problem, "gpt": gpt_problem}[name]
    model, loss_fn, batch = problem(**kwargs)
    # torch.func.hessian (jacfwd of jacrev under vmap) disagrees with reverse-over-reverse
    # autograd on TinyGPT by up to 0.29 in an entry (torch 2.13, CPU); the latter agrees with
    # row-by-row autograd, so it is the oracle there.
    return dense_hessian(model, loss_fn, batch, plain_autograd=name == "gpt").detach()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny products are dominated by thread overhead on a shared machine: use one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
