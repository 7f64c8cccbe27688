"""Held-out scenarios, set 96 (``h96_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, so that each scenario's own checks
hold or its healthy control trains normally).

Families: Hugging Face BLIP-2 Q-Former, InstructBLIP Q-Former, FLAVA text model and FLAVA image
model built from tiny configs; hand-written physics / chemistry / engineering models: a Fourier
neural operator on generated 1-D Burgers data, a physics-informed network for a 2-D Poisson
problem, a Hamiltonian neural network on a generated pendulum, a graph network simulator for
particles, a DimeNet-style directional message-passing net on generated molecules, a Lagrangian
neural network, a convolutional surrogate for a heat-sink temperature field, a transformer for
generated crystal property regression and a neural SDE with an Euler-Maruyama solver.

Optimizers: Lion, Adamax, AdamW, SGD with momentum, NAdam, plain SGD, ASGD, RAdam (decoupled
weight decay), Adam, RMSprop, Grams, AdEMAMix, StableSPAM, Adagrad, DiffGrad and SPAM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    digit_batches,
    digits,
    fit,
    scenario,
    seeded,
)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def _finite(xs: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in xs]


# -- Hugging Face models from configs ---------------------------------------------------------


class QFormerDigits(nn.Module):
    """Learned query tokens cross-attend to the 8 rows of a digit (a Q-Former as in BLIP-2)."""

    def __init__(self, kind: str = "blip2", queries: int = 4, dim: int = 32) -> None:
        super().__init__()
        import transformers as T

        cfg_cls, model_cls = {
            "blip2": (T.Blip2QFormerConfig, T.Blip2QFormerModel),
            "instructblip": (T.InstructBlipQFormerConfig, T.InstructBlipQFormerModel),
        }[kind]
        cfg = cfg_cls(
            hidden_size=dim,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=2 * dim,
            encoder_hidden_size=8,
            vocab_size=32,
            max_position_embeddings=16,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.kind = kind
        self.qformer = model_cls(cfg)
        self.queries = nn.Parameter(0.02 * torch.randn(1, queries, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, 8, 8)
        q = self.queries.expand(rows.shape[0], -1, -1)
        kwargs = {}
        if self.kind == "instructblip":  # a fixed 4-token instruction ("classify this digit")
            kwargs["input_ids"] = torch.tensor([[1, 5, 9, 2]]).expand(rows.shape[0], -1)
        out = self.qformer(query_embeds=q, encoder_hidden_states=rows, **kwargs).last_hidden_state
        return self.head(out[:, : q.shape[1]].mean(1))


class FlavaTextClassifier(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        from transformers import FlavaTextConfig, FlavaTextModel

        cfg = FlavaTextConfig(
            vocab_size=128,
            hidden_size=dim,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=2 * dim,
            max_position_embeddings=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.flava = FlavaTextModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flava(input_ids=x).last_hidden_state[:, 0])


class FlavaImageClassifier(nn.Module):
    def __init__(self, dim: int = 32, temperature: float = 1.0) -> None:
        super().__init__()
        from transformers import FlavaImageConfig, FlavaImageModel

        cfg = FlavaImageConfig(
            hidden_size=dim,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=2 * dim,
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        self.flava = FlavaImageModel(cfg, add_pooling_layer=False)
        self.head = nn.Linear(dim, 10)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.flava(pixel_values=x.reshape(-1, 1, 8, 8)).last_hidden_state
        return self.head(h[:, 0]) / self.temperature


@scenario(
    "h96_hf_blip2_qformer_digit_rows",
    "sg_stablespam",
    "healthy",
    heldout=True,
    note="BLIP-2 Q-Former (1 layer, hidden 32), 4 learned queries over digit rows",
)
def h96_healthy_blip2_qformer_stablespam(ctx: Context) -> None:
    from steadygrad.optim import StableSPAM

    gen = seeded(9601)
    model = QFormerDigits("blip2")
    opt = StableSPAM(model.parameters(), lr=5e-3, total_steps=300)
    fit(ctx, model, opt, digit_batches(gen), 300)
    ctx.check("loss went down", _median(ctx.losses[-20:]) < 0.5 * ctx.losses[0])
    ctx.check("finite", all(_finite(ctx.losses)))


@scenario(
    "h96_hf_instructblip_qformer_digit_rows",
    "adagrad",
    "healthy",
    heldout=True,
    note="InstructBLIP Q-Former (1 layer, hidden 32) with Adagrad",
)
def h96_healthy_instructblip_qformer_adagrad(ctx: Context) -> None:
    gen = seeded(9602)
    model = QFormerDigits("instructblip")
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    fit(ctx, model, opt, digit_batches(gen), 240)
    ctx.check("loss went down", _median(ctx.losses[-20:]) < 0.5 * ctx.losses[0])
    ctx.check("finite", all(_finite(ctx.losses)))


@scenario(
    "h96_hf_flava_text_cls_zloss",
    "adamax",
    "output_logit_divergence",
    where="head",
    diverges=None,
    heldout=True,
    onset=100,
    note="z-loss switched on at step 100 with the wrong sign: the head's log Z is rewarded",
)
def h96_flava_text_zloss_wrong_sign(ctx: Context) -> None:
    gen = seeded(9603)
    model = FlavaTextClassifier()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    logz: list[float] = []
    batches = bert_batches(gen, batch=32, length=16)
    ctx.attach(model, opt)
    for step in range(320):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        lz = torch.logsumexp(logits, -1)
        logz.append(float(lz.detach().mean()))
        total = loss
        if step >= 100:  # the auxiliary z-loss, sign flipped (`loss -= w * z**2`)
            total = loss - 1e-2 * (lz**2).mean()
        total.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("log Z under 5 before step 100", max(logz[:100]) < 5)
    ctx.check("log Z drifted above 25", logz[-1] > 25 and logz[-1] > logz[150] + 10)


@scenario(
    "h96_hf_flava_image_digits_memorise",
    "adamw",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="FLAVA image tower on 32 fixed digits, logits divided by a temperature of 0.03 "
    "copied from a contrastive config, AdamW with a pre-training recipe's betas (0.9, 0.95) "
    "and no weight decay, trained far past fitting",
)
def h96_flava_image_softmax_collapse(ctx: Context) -> None:
    gen = seeded(9604)
    x_all, y_all = digits()
    idx = torch.randperm(len(y_all), generator=gen)[:32]
    xs, ys = x_all[idx], y_all[idx]

    def batches():
        while True:
            yield xs, ys

    model = FlavaImageClassifier(temperature=0.03)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.0)
    fit(ctx, model, opt, batches(), 600)
    with torch.no_grad():
        frac = collapsed_fraction(model(xs), ys)
    ctx.check("over 40% of the training rows exactly one-hot in float32", frac > 0.4)
    ctx.check("training loss under 1e-3", _median(ctx.losses[-20:]) < 1e-3)


# -- a transformer for crystal property regression -------------------------------------------


def crystal_batches(gen: torch.Generator, batch: int = 32, atoms: int = 8, elements: int = 6):
    """Generated 'crystals': element types and fractional coordinates of a unit cell; the
    property is a pair-interaction energy with periodic (minimum-image) distances."""
    inter = torch.randn(elements, elements, generator=gen)
    inter = 0.5 * (inter + inter.T)
    while True:
        z = torch.randint(0, elements, (batch, atoms), generator=gen)
        frac = torch.rand(batch, atoms, 3, generator=gen)
        d = frac[:, :, None] - frac[:, None]
        d = d - d.round()
        r = d.norm(dim=-1) + torch.eye(atoms)
        e = inter[z[:, :, None], z[:, None]] * torch.exp(-3 * r) * (1 - torch.eye(atoms))
        yield (z, frac), e.sum((1, 2))[:, None]


class UnscaledAttention(nn.Module):
    """Multi-head self-attention written by hand; the 1/sqrt(d_head) scale was left out."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.max_logit = 0.0
        self.entropy = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-1, -2)  # no / math.sqrt(d // self.heads)
        att = logits.softmax(-1)
        self.max_logit = float(logits.detach().abs().max())
        self.entropy = float(-(att * att.clamp_min(1e-30).log()).sum(-1).mean().detach())
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


class CrystalBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = UnscaledAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CrystalTransformer(nn.Module):
    def __init__(self, elements: int = 6, dim: int = 32, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.species = nn.Embedding(elements, dim)
        self.coords = nn.Linear(6, dim)
        self.blocks = nn.ModuleList(CrystalBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, inp) -> torch.Tensor:
        z, frac = inp
        ang = 2 * math.pi * frac
        x = self.species(z) + self.coords(torch.cat([ang.sin(), ang.cos()], -1))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x).mean(1))


@scenario(
    "h96_crystal_transformer_formation_energy",
    "sg_lion",
    "attention_logit_growth",
    where="blocks.0.attn",
    diverges=None,
    heldout=True,
    note="hand-written attention without the 1/sqrt(d) scale, Lion at a too-high LR",
)
def h96_crystal_attn_unscaled_lion(ctx: Context) -> None:
    from steadygrad.optim import Lion

    gen = seeded(9605)
    model = CrystalTransformer()
    opt = Lion(model.parameters(), lr=3e-3)
    attn = model.blocks[0].attn
    logits: list[float] = []
    ents: list[float] = []

    def before(step: int) -> None:
        if step > 0:
            logits.append(attn.max_logit)
            ents.append(attn.entropy)

    fit(
        ctx,
        model,
        opt,
        crystal_batches(gen),
        300,
        loss_fn=F.mse_loss,
        classifier=False,
        before=before,
    )
    ctx.check(
        "max attention logit grew over 10x and past 50",
        logits[-1] > 10 * logits[0] and logits[-1] > 50,
    )
    ctx.check("attention entropy collapsed below a quarter", ents[-1] < 0.25 * ents[0])


# -- Fourier neural operator on generated 1-D Burgers data ------------------------------------


def burgers_data(gen: torch.Generator, n: int = 512, grid: int = 64, nu: float = 0.1):
    """Random smooth periodic initial states u0 and u(t=1) of viscous Burgers (explicit FD)."""
    x = torch.linspace(0, 2 * math.pi, grid + 1)[:-1]
    u = torch.zeros(n, grid)
    for kk in range(1, 5):
        a = 0.4 * torch.randn(n, 1, generator=gen) / kk
        ph = 2 * math.pi * torch.rand(n, 1, generator=gen)
        u = u + a * torch.sin(kk * x + ph)
    u0 = u.clone()
    dx, dt = x[1] - x[0], 0.002
    for _ in range(500):
        ux = (torch.roll(u, -1, 1) - torch.roll(u, 1, 1)) / (2 * dx)
        uxx = (torch.roll(u, -1, 1) - 2 * u + torch.roll(u, 1, 1)) / dx**2
        u = u + dt * (-u * ux + nu * uxx)
    return u0, u


def burgers_batches(gen: torch.Generator, u0: torch.Tensor, u1: torch.Tensor, batch: int = 32):
    while True:
        idx = torch.randint(0, len(u0), (batch,), generator=gen)
        yield u0[idx], u1[idx]


class SpectralConv1d(nn.Module):
    def __init__(self, width: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        scale = 1 / (width * width)
        self.w_re = nn.Parameter(scale * torch.rand(width, width, modes))
        self.w_im = nn.Parameter(scale * torch.rand(width, width, modes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, c, n)
        xf = torch.fft.rfft(x)
        w = torch.complex(self.w_re, self.w_im)
        out = torch.zeros_like(xf)
        out[:, :, : self.modes] = torch.einsum("bim,iom->bom", xf[:, :, : self.modes], w)
        return torch.fft.irfft(out, n=x.shape[-1])


class FNOLayer(nn.Module):
    def __init__(self, width: int, modes: int) -> None:
        super().__init__()
        self.spectral = SpectralConv1d(width, modes)
        self.pointwise = nn.Conv1d(width, width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.spectral(x) + self.pointwise(x))


class FNO1d(nn.Module):
    def __init__(self, width: int = 24, modes: int = 12, layers: int = 3) -> None:
        super().__init__()
        self.lift = nn.Linear(2, width)
        self.layers = nn.ModuleList(FNOLayer(width, modes) for _ in range(layers))
        self.proj = nn.Sequential(nn.Linear(width, 64), nn.GELU(), nn.Linear(64, 1))

    def forward(self, u0: torch.Tensor) -> torch.Tensor:
        grid = torch.linspace(0, 1, u0.shape[-1]).expand_as(u0)
        h = self.lift(torch.stack([u0, grid], -1)).transpose(1, 2)
        for layer in self.layers:
            h = layer(h)
        return self.proj(h.transpose(1, 2)).squeeze(-1)


@scenario(
    "h96_fno_burgers_1d",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up to lr=2.0 (meant 2e-2: a typo in the config) with momentum 0.9",
)
def h96_fno_burgers_warmup_typo(ctx: Context) -> None:
    gen = seeded(9606)
    u0, u1 = burgers_data(gen)
    model = FNO1d()
    peak, warm = 2.0, 300
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = peak * min(1.0, (step + 1) / warm)

    fit(
        ctx,
        model,
        opt,
        burgers_batches(gen, u0, u1),
        300,
        loss_fn=F.mse_loss,
        classifier=False,
        before=before,
    )
    fin = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check("loss went down during the early warm-up", min(fin[:60]) < 0.5 * fin[0])
    ctx.check(
        "loss blew up (100x its minimum, or non-finite)",
        not all(_finite(ctx.losses)) or max(fin) > 100 * min(fin),
    )


@scenario(
    "h96_fno_burgers_1d",
    "sg_ademamix",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=260,
    note="evaluation at step 260 swaps in 'EMA' weights that were never updated and never "
    "swaps back: the model jumps back to its initial weights",
)
def h96_fno_burgers_stale_ema_swap(ctx: Context) -> None:
    from steadygrad.optim import AdEMAMix

    gen = seeded(9607)
    u0, u1 = burgers_data(gen)
    model = FNO1d()
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}  # update() never called
    opt = AdEMAMix(model.parameters(), lr=2e-3)

    def before(step: int) -> None:
        if step == 260:
            model.load_state_dict(ema)

    fit(
        ctx,
        model,
        opt,
        burgers_batches(gen, u0, u1),
        400,
        loss_fn=F.mse_loss,
        classifier=False,
        before=before,
    )
    pre = _median(ctx.losses[230:260])
    ctx.check("loss jumped over 5x at step 260", ctx.losses[260] > 5 * pre)
    ctx.check("finite throughout", all(_finite(ctx.losses)))


# -- physics-informed network for a 2-D Poisson problem ---------------------------------------


class PoissonPINN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
        )

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        return self.net(xy)


def poisson_loss(model: nn.Module, gen: torch.Generator, side: float) -> torch.Tensor:
    """-Laplace(u) = f on [0, side]^2 with exact u = (x^2 + y^2) / side^2 + x*y / side^2."""
    xy = (side * torch.rand(256, 2, generator=gen)).requires_grad_(True)
    u = model(xy)
    du = torch.autograd.grad(u.sum(), xy, create_graph=True)[0]
    lap = sum(torch.autograd.grad(du[:, i].sum(), xy, create_graph=True)[0][:, i] for i in range(2))
    f = -4.0 / side**2
    pde = (-lap - f).pow(2).mean()
    t = torch.rand(64, 1, generator=gen) * side
    zero, full = torch.zeros_like(t), torch.full_like(t, side)
    b = torch.cat([torch.cat(p, 1) for p in ((t, zero), (t, full), (zero, t), (full, t))])
    exact = (b.pow(2).sum(1, keepdim=True) + b.prod(1, keepdim=True)) / side**2
    return pde + 10 * (model(b) - exact).pow(2).mean()


def _pinn_loop(ctx: Context, model: nn.Module, opt, gen, side: float, steps: int) -> None:
    ctx.attach(model, opt)
    for _ in range(steps):
        loss = poisson_loss(model, gen, side)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "h96_pinn_poisson_2d",
    "sg_diffgrad",
    "healthy",
    heldout=True,
    note="PINN with coordinates in [0, 1]; second derivatives by autograd",
)
def h96_healthy_pinn_poisson_diffgrad(ctx: Context) -> None:
    from steadygrad.optim import DiffGrad

    gen = seeded(9608)
    model = PoissonPINN()
    _pinn_loop(ctx, model, DiffGrad(model.parameters(), lr=3e-3), gen, 1.0, 400)
    ctx.check("loss went down 10x", _median(ctx.losses[-20:]) < 0.1 * ctx.losses[0])
    ctx.check("finite", all(_finite(ctx.losses)))


@scenario(
    "h96_pinn_poisson_2d",
    "asgd",
    "loss_of_plasticity",
    where="net.0",
    diverges=None,
    heldout=True,
    note="plate coordinates fed in millimetres (0..100) without normalising: the first tanh "
    "layer saturates and its units stop learning",
)
def h96_pinn_poisson_saturated_mm_coords(ctx: Context) -> None:
    gen = seeded(9609)
    model = PoissonPINN()
    opt = torch.optim.ASGD(model.parameters(), lr=5e-3)
    _pinn_loop(ctx, model, opt, gen, 100.0, 400)
    with torch.no_grad():
        pre = model.net[0](100.0 * torch.rand(1024, 2, generator=gen))
    ctx.check(
        "over 85% of first-layer (unit, point) pairs saturated (|pre-tanh| > 3)",
        float((pre.abs() > 3).float().mean()) > 0.85,
    )
    ctx.check(
        "mean tanh slope of the first layer under 0.05", float((1 - pre.tanh() ** 2).mean()) < 0.05
    )
    ctx.check(
        "loss plateaued from step 100 on",
        _median(ctx.losses[-100:]) > 0.5 * _median(ctx.losses[100:150]),
    )


# -- Hamiltonian neural network on a generated pendulum ---------------------------------------


def pendulum_batches(gen: torch.Generator, batch: int = 128):
    """(q, p) states of a pendulum (H = p^2/2 + 1 - cos q) and their time derivatives."""
    while True:
        q = (torch.rand(batch, generator=gen) * 2 - 1) * 2.5
        p = (torch.rand(batch, generator=gen) * 2 - 1) * 2.0
        dq, dp = p, -torch.sin(q)
        dq = dq + 0.01 * torch.randn(batch, generator=gen)
        dp = dp + 0.01 * torch.randn(batch, generator=gen)
        yield torch.stack([q, p], 1), torch.stack([dq, dp], 1)


class HNN(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            state = state.requires_grad_(True) if not state.requires_grad else state
            h = self.net(state).sum()
            dh = torch.autograd.grad(h, state, create_graph=True)[0]
        return torch.stack([dh[:, 1], -dh[:, 0]], 1)  # symplectic gradient


@scenario(
    "h96_hnn_pendulum",
    "radam",
    "update_ratio_out_of_range",
    where="net.2",
    diverges=None,
    heldout=True,
    note="per-group decoupled weight decay of the hidden layer typed as 2e2 instead of 2e-4",
)
def h96_hnn_hidden_weight_decay_typo(ctx: Context) -> None:
    gen = seeded(9610)
    model = HNN()
    hidden = model.net[2]
    rest = [p for n, p in model.named_parameters() if not n.startswith("net.2.")]
    opt = torch.optim.RAdam(
        [
            {"params": rest, "weight_decay": 5e-5},
            {"params": list(hidden.parameters()), "weight_decay": 200.0},
        ],
        lr=2e-3,
        decoupled_weight_decay=True,
    )
    w0 = float(hidden.weight.detach().norm())
    o0 = float(model.net[4].weight.detach().norm())
    fit(ctx, model, opt, pendulum_batches(gen), 300, loss_fn=F.mse_loss, classifier=False)
    ctx.check("hidden weight norm shrank over 10x", float(hidden.weight.norm()) < w0 / 10)
    ctx.check("output layer weight not shrunk", float(model.net[4].weight.norm()) > 0.5 * o0)
    ctx.check("finite", all(_finite(ctx.losses)))


# -- Lagrangian neural network ----------------------------------------------------------------


class LNN(nn.Module):
    """L(q, qdot) by an MLP; qddot from the Euler-Lagrange equation by autograd (1-D)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, width),
            nn.Softplus(),
            nn.Linear(width, width),
            nn.Softplus(),
            nn.Linear(width, 1),
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            s = state.detach().requires_grad_(True)
            lag = self.net(s).sum()
            g = torch.autograd.grad(lag, s, create_graph=True)[0]
            dl_dq, dl_dv = g[:, 0], g[:, 1]
            hv = torch.autograd.grad(dl_dv.sum(), s, create_graph=True)[0]
            d2_vq, d2_vv = hv[:, 0], hv[:, 1]
        qdd = (dl_dq - d2_vq * s[:, 1]) / (d2_vv.abs() + 1e-2)
        return qdd[:, None]


def lnn_batches(gen: torch.Generator, batch: int = 128):
    """(q, qdot) of a pendulum and its acceleration -sin q."""
    while True:
        q = (torch.rand(batch, generator=gen) * 2 - 1) * 2.5
        v = (torch.rand(batch, generator=gen) * 2 - 1) * 2.0
        yield torch.stack([q, v], 1), -torch.sin(q)[:, None]


@scenario(
    "h96_lagrangian_nn_pendulum",
    "sg_grams",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=240,
    note="one logged trajectory at step 240 has angles and velocities in degrees",
)
def h96_lnn_degrees_batch(ctx: Context) -> None:
    from steadygrad.optim import Grams

    gen = seeded(9611)
    model = LNN()
    opt = Grams(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 240:
            x = x * (180 / math.pi)
        return x, y

    fit(ctx, model, opt, lnn_batches(gen), 360, loss_fn=F.mse_loss, classifier=False, alter=alter)
    pre = _median(ctx.losses[200:240])
    ctx.check("loss spike over 10x at the degree batch", ctx.losses[240] > 10 * pre)
    ctx.check("finite throughout", all(_finite(ctx.losses)))


# -- neural SDE with an Euler-Maruyama solver -------------------------------------------------


class SqrtDiffusion(nn.Module):
    """g(x) = sqrt(a x + b): the variance head is a plain Linear (no softplus)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1)
        nn.init.constant_(self.lin.bias, 1.0)
        nn.init.constant_(self.lin.weight, 0.1)
        self.first_nan_step: int | None = None
        self.step = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sqrt(self.lin(x))
        if self.first_nan_step is None and torch.isnan(g).any() and torch.isfinite(x).all():
            self.first_nan_step = self.step
        return g


class NeuralSDE(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.drift = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1))
        self.diffusion = SqrtDiffusion()

    def forward(self, x0: torch.Tensor, noise: torch.Tensor, dt: float) -> torch.Tensor:
        xs, x = [], x0
        for t in range(noise.shape[1]):
            x = x + self.drift(x) * dt + self.diffusion(x) * math.sqrt(dt) * noise[:, t]
            xs.append(x)
        return torch.stack(xs, 1)


@scenario(
    "h96_neural_sde_ou_process",
    "nadam",
    "nonfinite",
    where="diffusion",
    diverges="auto",
    heldout=True,
    note="Euler-Maruyama rollouts matched to OU path moments; the diffusion takes sqrt of an "
    "unconstrained Linear, which goes negative as the learned noise level shrinks",
)
def h96_neural_sde_sqrt_negative_variance(ctx: Context) -> None:
    gen = seeded(9612)
    model = NeuralSDE()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    steps_t, dt, theta, sigma = 20, 0.05, 1.5, 0.1
    ctx.attach(model, opt)
    after = 0
    for step in range(300):
        x0 = torch.randn(128, 1, generator=gen)
        # data: OU paths dx = -theta x dt + sigma dW
        xd, paths = x0, []
        for _ in range(steps_t):
            xd = xd - theta * xd * dt + sigma * math.sqrt(dt) * torch.randn(128, 1, generator=gen)
            paths.append(xd)
        data = torch.stack(paths, 1)
        model.diffusion.step = step
        sim = model(x0, torch.randn(128, steps_t, 1, generator=gen), dt)
        inc_d, inc_s = data.diff(dim=1), sim.diff(dim=1)
        loss = (
            (sim.mean(0) - data.mean(0)).pow(2).mean()
            + (inc_s.std(0) - inc_d.std(0)).pow(2).mean() * 100
            + (sim - data).pow(2).mean()
        )
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            after += 1
            if after > 10:
                break
    first_bad = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("loss became NaN", first_bad is not None)
    ctx.check(
        "the first NaN came out of the diffusion's sqrt on finite inputs",
        model.diffusion.first_nan_step is not None and model.diffusion.first_nan_step == first_bad,
    )
    ctx.check("finite for a while before", first_bad is not None and first_bad > 20)


# -- convolutional surrogate for a heat-sink temperature field --------------------------------


def heatsink_batches(gen: torch.Generator, batch: int = 16, n: int = 16):
    """Power maps of chips on a plate and fin masks -> steady temperature rise (smoothed)."""
    kern = torch.ones(1, 1, 5, 5) / 25
    while True:
        power = torch.zeros(batch, 1, n, n)
        for _ in range(3):
            i = torch.randint(2, n - 4, (batch,), generator=gen)
            j = torch.randint(2, n - 4, (batch,), generator=gen)
            w = torch.rand(batch, generator=gen)
            for b in range(batch):
                power[b, 0, i[b] : i[b] + 3, j[b] : j[b] + 3] += w[b]
        fins = (torch.rand(batch, 1, 1, n, generator=gen) < 0.4).float().expand(-1, -1, n, -1)
        t = power
        for _ in range(4):
            t = F.conv2d(F.pad(t, (2, 2, 2, 2), mode="replicate"), kern)
        t = 3 * t * (1 - 0.3 * fins)
        yield torch.cat([power, fins], 1), t


class HeatSinkCNN(nn.Module):
    def __init__(self, width: int = 16, depth: int = 10, gain: float = 1.0) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(2 if i == 0 else width, width, 3, padding=1) for i in range(depth)
        )
        self.out = nn.Conv2d(width, 1, 1)
        for c in self.convs:
            nn.init.kaiming_normal_(c.weight, nonlinearity="relu")
            c.weight.data.mul_(gain)
            nn.init.zeros_(c.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c in self.convs:
            x = F.relu(c(x))
        return self.out(x)


@scenario(
    "h96_heatsink_cnn_surrogate",
    "sgd",
    "exploding_gradients",
    where="convs.9",
    diverges="auto",
    heldout=True,
    note="10 plain conv layers (no normalisation) regress absolute temperatures in kelvin "
    "(~300 K, targets not normalised): the gradient grows step by step until overflow",
)
def h96_heatsink_deep_plain_sgd(ctx: Context) -> None:
    gen = seeded(9613)
    model = HeatSinkCNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-5)
    per_layer: list[list[float]] = []
    orig_zero = opt.zero_grad

    def zero_grad(set_to_none: bool = True) -> None:  # per-layer gradient norms, then zero
        per_layer.append([float(c.weight.grad.norm()) for c in model.convs])
        orig_zero(set_to_none=set_to_none)

    opt.zero_grad = zero_grad  # type: ignore[method-assign]

    def kelvin(step: int, x: torch.Tensor, y: torch.Tensor):
        return x, y + 300.0  # ambient 300 K plus the rise

    fit(
        ctx,
        model,
        opt,
        heatsink_batches(gen),
        160,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=kelvin,
    )
    g = ctx.grad_norms
    low = min(range(60), key=lambda i: g[i])
    ctx.check(
        "gradient norm grew over 10x from its low, over 20+ steps, then overflowed",
        max(v for v in g if math.isfinite(v)) > 10 * g[low] and not all(_finite(g + ctx.losses)),
    )
    first_big = next(i for i, v in enumerate(g) if not math.isfinite(v) or v > 10 * g[low])
    ctx.check("the growth took over 20 steps", first_big - low > 20)
    mid = per_layer[low:first_big]
    ctx.check(
        "convs.9 has the largest conv gradient during the build-up",
        sum(row.index(max(row)) == 9 for row in mid) > 0.7 * len(mid),
    )


# -- DimeNet-style directional message passing on generated molecules -------------------------


def molecule_batches(gen: torch.Generator, batch: int = 32, atoms: int = 5):
    """Random 3-D conformers (min distance 0.9) with a Morse pair + angle-bending energy."""
    while True:
        pos = torch.randn(batch, atoms, 3, generator=gen) * 1.1
        d = (pos[:, :, None] - pos[:, None]).norm(dim=-1) + 10 * torch.eye(atoms)
        bad = d.min(-1).values.min(-1).values < 0.9
        pos[bad] = pos[bad] * 1.6
        r = (pos[:, :, None] - pos[:, None]).norm(dim=-1)
        off = 1 - torch.eye(atoms)
        morse = ((1 - torch.exp(-1.5 * (r - 1.5))) ** 2 - 1) * off
        vec = pos[:, :, None] - pos[:, None]  # vec[b, j, i] = pos_j - pos_i
        unit = vec / (r[..., None] + torch.eye(atoms)[..., None])
        cos = torch.einsum("bjic,bkic->bijk", unit, unit)
        w = torch.exp(-r)  # angles weighted by closeness
        ang = ((cos + 0.33) ** 2) * w[:, :, :, None].transpose(1, 2) * w[:, None]
        ang = ang * off[None, :, :, None] * off[None, :, None, :]
        e = 0.5 * morse.sum((1, 2)) + 0.5 * ang.sum((1, 2, 3))
        yield pos, e[:, None] / atoms


class DimeNetLite(nn.Module):
    """Edge messages m_ji updated from m_kj with a distance (Bessel) and angle (cos l*theta)
    basis, as in DimeNet; energies summed over atoms."""

    def __init__(self, dim: int = 32, nrbf: int = 6, nsbf: int = 4, cutoff: float = 5.0) -> None:
        super().__init__()
        self.nrbf, self.nsbf, self.cutoff = nrbf, nsbf, cutoff
        self.rbf_lin = nn.Linear(nrbf, dim)
        self.edge_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU())
        self.sbf_lin = nn.Linear(nsbf * nrbf, dim)
        self.msg = nn.Linear(dim, dim)
        self.update = nn.Sequential(nn.Linear(dim, dim), nn.SiLU())
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        b, n, _ = pos.shape
        eye = torch.eye(n)
        vec = pos[:, :, None] - pos[:, None]
        r = vec.norm(dim=-1) + eye
        k = torch.arange(1, self.nrbf + 1) * math.pi / self.cutoff
        rbf = torch.sin(k * r[..., None]) / r[..., None]  # (b, j, i, nrbf)
        m = self.edge_mlp(self.rbf_lin(rbf)) * (1 - eye)[..., None]
        unit = vec / r[..., None]
        cos = torch.einsum("bjic,bkjc->bkji", unit, -unit).clamp(-1, 1)  # angle k-j-i at j
        theta = torch.arccos(cos * 0.999999)
        lbasis = torch.cos(theta[..., None] * torch.arange(self.nsbf))  # (b, k, j, i, nsbf)
        sbf = (lbasis[..., :, None] * rbf[:, :, :, None, None, :]).flatten(-2)
        mask = (1 - eye)[None, :, :, None] * (1 - eye)[None, None] * (1 - eye)[None, :, None]
        w = self.sbf_lin(sbf) * mask[..., None]
        agg = (w * self.msg(m)[:, :, :, None]).sum(1)  # sum over k: (b, j, i, dim)
        m = m + self.update(agg) * (1 - eye)[..., None]
        atom = m.sum(1)  # messages into atom i
        return self.out(atom).sum(1) / n


@scenario(
    "h96_dimenet_directional_molecules",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="resume at step 150 re-enables a static fp16 loss scale (2**16) for one backward "
    "without unscaling: one 65536x gradient fills Adam's second moments",
)
def h96_dimenet_static_loss_scale_once(ctx: Context) -> None:
    gen = seeded(9614)
    model = DimeNetLite()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    moves: list[float] = []
    prev = [p.detach().clone() for p in model.parameters()]

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 150 else loss

    def before(step: int) -> None:
        if step > 0:
            moves.append(
                float(
                    sum(
                        (p.detach() - q).norm() ** 2
                        for p, q in zip(model.parameters(), prev, strict=True)
                    )
                    ** 0.5
                )
            )
            for p, q in zip(model.parameters(), prev, strict=True):
                q.copy_(p.detach())

    fit(
        ctx,
        model,
        opt,
        molecule_batches(gen),
        340,
        loss_fn=F.mse_loss,
        classifier=False,
        extra_loss=extra,
        before=before,
    )
    ctx.check(
        "the scaled step's gradient was over 10000x the median",
        ctx.grad_norms[150] > 1e4 * _median(ctx.grad_norms[:150]),
    )
    per_grad = [m / max(g, 1e-30) for m, g in zip(moves, ctx.grad_norms, strict=False)]
    ctx.check(
        "update per unit gradient over 20x smaller long after the spike",
        _median(per_grad[250:330]) < _median(per_grad[100:149]) / 20,
    )
    ctx.check(
        "loss never gets back to its pre-spike level",
        _median(ctx.losses[320:]) > _median(ctx.losses[140:150]),
    )
    ctx.check("finite", all(_finite(ctx.losses)))


# -- graph network simulator for particles ----------------------------------------------------


def particle_batches(gen: torch.Generator, batch: int = 16, n: int = 12, collide_at=None):
    """Frames of 2-D particles (position, velocity) -> acceleration: gravity, drag and a soft
    contact repulsion between particles closer than 0.3."""
    step = 0
    while True:
        grid = torch.stack(torch.meshgrid(torch.arange(4.0), torch.arange(3.0), indexing="ij"), -1)
        pos = 0.2 * grid.reshape(1, n, 2) + 0.06 * torch.rand(batch, n, 2, generator=gen)
        vel = 0.3 * torch.randn(batch, n, 2, generator=gen)
        if collide_at is not None and step == collide_at:
            # a genuine frame mid-collision: two particles 0.004 apart
            pos[0, 1] = pos[0, 0] + torch.tensor([0.004, 0.0])
        d = pos[:, :, None] - pos[:, None]
        r = d.norm(dim=-1) + torch.eye(n)
        push = (0.3 - r).clamp_min(0) * (1 - torch.eye(n))
        acc = (20 * push[..., None] * d / r[..., None]).sum(2)
        acc = acc + torch.tensor([0.0, -1.0]) - 0.5 * vel
        step += 1
        yield torch.cat([pos, vel], -1), acc


class Repulsion(nn.Module):
    """A physics prior: learned contact force k * (r0 / r)^6 along the pair direction."""

    def __init__(self) -> None:
        super().__init__()
        self.log_k = nn.Parameter(torch.tensor(-3.0))
        self.log_r0 = nn.Parameter(torch.tensor(math.log(0.1)))

    def forward(self, d: torch.Tensor, r: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mag = self.log_k.exp() * (self.log_r0.exp() / r) ** 6 * mask
        return (mag[..., None] * d / r[..., None]).sum(2)


class GNS(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.node_encoder = nn.Sequential(nn.Linear(2, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.edge_encoder = nn.Sequential(nn.Linear(3, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.processor = nn.Sequential(nn.Linear(3 * dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.decoder = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, 2))
        self.repulsion = Repulsion()

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        pos, vel = state[..., :2], state[..., 2:]
        n = pos.shape[1]
        d = pos[:, :, None] - pos[:, None]
        r = d.norm(dim=-1) + torch.eye(n)
        mask = ((r < 0.3) & ~torch.eye(n, dtype=torch.bool)).float()
        h = self.node_encoder(vel)
        e = self.edge_encoder(torch.cat([d / 0.3, r[..., None] / 0.3], -1))
        hi = h[:, :, None].expand(-1, -1, n, -1)
        hj = h[:, None].expand(-1, n, -1, -1)
        msg = self.processor(torch.cat([hi, hj, e], -1)) * mask[..., None]
        agg = msg.sum(2)
        return self.decoder(torch.cat([h, agg], -1)) + self.repulsion(d, r, mask)


def _gns_loss(pred: torch.Tensor, acc: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(pred, acc)


@scenario(
    "h96_gns_particles_2d",
    "rmsprop",
    "gradient_spike",
    where="repulsion",
    diverges=None,
    heldout=True,
    onset=220,
    note="a genuine collision frame (two particles 0.004 apart) at step 220: the learned "
    "(r0/r)^6 contact prior gives a one-off gradient spike in its parameters",
)
def h96_gns_collision_repulsion_spike(ctx: Context) -> None:
    gen = seeded(9615)
    model = GNS()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    rep: list[float] = []
    orig_zero = opt.zero_grad

    def zero_grad(set_to_none: bool = True) -> None:
        rep.append(float(torch.stack([p.grad.norm() for p in model.repulsion.parameters()]).norm()))
        orig_zero(set_to_none=set_to_none)

    opt.zero_grad = zero_grad  # type: ignore[method-assign]
    fit(
        ctx,
        model,
        opt,
        particle_batches(gen, collide_at=221),
        400,
        loss_fn=_gns_loss,
        classifier=False,
    )
    others = [g for i, g in enumerate(ctx.grad_norms) if i != 220]
    ctx.check(
        "gradient norm at step 220 over 100x the median",
        ctx.grad_norms[220] > 100 * _median(others),
    )
    ctx.check("the spike sits in the repulsion prior", rep[220] > 0.9 * ctx.grad_norms[220])
    ctx.check(
        "one-off: next steps back near the median",
        max(ctx.grad_norms[225:240]) < 20 * _median(others),
    )
    ctx.check("finite", all(_finite(ctx.losses)))


@scenario(
    "h96_gns_particles_2d",
    "sg_spam",
    "healthy",
    heldout=True,
    note="the same graph network simulator, no collision frame",
)
def h96_healthy_gns_spam(ctx: Context) -> None:
    from steadygrad.optim import SPAM

    gen = seeded(9616)
    model = GNS()
    opt = SPAM(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, particle_batches(gen), 300, loss_fn=_gns_loss, classifier=False)
    ctx.check("loss went down", _median(ctx.losses[-20:]) < 0.5 * ctx.losses[0])
    ctx.check("finite", all(_finite(ctx.losses)))
