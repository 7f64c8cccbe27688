"""Held-out scenarios, set 101 (``h101_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing and records the losses).

Families: Hugging Face Idefics2 (tiny Idefics2 vision tower, perceiver resampler and Mistral
text model) answering which digit an upsampled 8x8 digit shows, SAM-HQ (mask decoding of a
generated scene from a point prompt; control) and a DINOv2-with-registers classifier (control),
all from tiny configs; hand-written: U-ViT (a diffusion transformer with long skips) on digits,
a VP score SDE on generated 2-D points (a fault and a control), latent diffusion (a small
autoencoder plus a transformer denoiser on its latents, fp16 autocast with a GradScaler), NICE
(additive coupling flow) on digits, an E-Branchformer ASR encoder (parallel attention / cgMLP
branches) on generated speech-like frames, MixMatch semi-supervised on digits, a neural
cellular automaton growing a generated emblem, a modern Hopfield layer retrieving stored
patterns, a Gumbel-softmax categorical VAE.

Optimizers: Adam, AdamW, SGD (plain, momentum, Nesterov), RMSprop, Adagrad, NAdam, RAdam,
Adamax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import digit_batches, digits, scenario, seeded

# -- shared pieces ------------------------------------------------------------------------------


def _note(ctx, key: str, value) -> None:
    """Keep a measured number with the run (for reading a result; no check depends on it)."""
    ctx.__dict__.setdefault("notes", {})[key] = value


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _med(xs) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _digit_images(x: torch.Tensor, size: int = 16) -> torch.Tensor:
    """8x8 digits in [0, 1] -> normalised 3-channel images of ``size`` pixels."""
    img = F.interpolate(x.reshape(-1, 1, 8, 8), size=(size, size), mode="bilinear")
    return ((img - 0.5) / 0.5).expand(-1, 3, -1, -1).contiguous()


IMAGE_TOKEN = 63


def _vqa(x: torch.Tensor, y: torch.Tensor, image_tokens: int):
    """input ids [image tokens, 'which digit is it ?', answer] with the loss on the answer only."""
    b = len(y)
    prompt = torch.tensor([5, 6, 7, 8])
    ids = torch.cat(
        [torch.full((b, image_tokens), IMAGE_TOKEN), prompt.expand(b, -1), (10 + y)[:, None]], 1
    )
    labels = torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]
    return ids, labels


# -- U-ViT: a diffusion transformer with long skips on digits -----------------------------------


class _UAttn(nn.Module):
    """Multi-head self-attention written out, keeping the largest logit it saw."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        self.max_logit = float(logits.detach().abs().max())
        y = logits.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _UBlock(nn.Module):
    def __init__(self, dim: int, heads: int, skip: bool = False) -> None:
        super().__init__()
        self.skip = nn.Linear(2 * dim, dim) if skip else None
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _UAttn(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip is not None:
            x = self.skip(torch.cat([x, skip], -1))
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class UViT(nn.Module):
    """U-ViT (Bao et al. 2023): time as a token, 2x2 patches of an 8x8 digit, shallow blocks
    joined to deep ones by long skip connections; predicts the noise."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.patch = nn.Linear(4, dim)
        self.time = nn.Sequential(nn.Linear(16, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.pos = nn.Parameter(torch.randn(17, dim) * 0.02)
        self.in_blocks = nn.ModuleList(_UBlock(dim, heads) for _ in range(2))
        self.mid = _UBlock(dim, heads)
        self.out_blocks = nn.ModuleList(_UBlock(dim, heads, skip=True) for _ in range(2))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        p = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        freqs = torch.exp(torch.arange(8) * (-math.log(1000.0) / 8))
        temb = torch.cat(
            [torch.sin(t[:, None] * 1000 * freqs), torch.cos(t[:, None] * 1000 * freqs)], 1
        )
        h = torch.cat([self.time(temb)[:, None], self.patch(p)], 1) + self.pos
        skips = []
        for blk in self.in_blocks:
            h = blk(h)
            skips.append(h)
        h = self.mid(h)
        for blk in self.out_blocks:
            h = blk(h, skips.pop())
        out = self.head(self.norm(h))[:, 1:]
        return out.reshape(b, 4, 4, 2, 2).permute(0, 1, 3, 2, 4).reshape(b, 64)


def _uvit_loss(model: UViT, x0: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    x0 = x0 * 2 - 1
    t = torch.rand(len(x0), generator=gen)
    ab = torch.cos(t * math.pi / 2) ** 2
    eps = torch.randn(x0.shape, generator=gen)
    xt = ab.sqrt()[:, None] * x0 + (1 - ab).sqrt()[:, None] * eps
    return F.mse_loss(model(xt, t), eps)


@scenario(
    "h101_uvit_digits",
    "adamw",
    "attention_logit_growth",
    where="mid.attn",
    diverges=None,
    heldout=True,
    note="the middle block's qkv sits in a param group with a 20x learning rate and no decay",
)
def h101_uvit_mid_attention_logits_grow(ctx):
    gen = seeded(10101)
    model = UViT()
    qkv = list(model.mid.attn.qkv.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in qkv)]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qkv, "lr": 1e-2, "weight_decay": 0.0}], lr=5e-4
    )
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    trace = []
    for _ in range(300):
        x, _ = next(batches)
        loss = _uvit_loss(model, x, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        trace.append(model.mid.attn.max_logit)
    start, end = trace[0], trace[-1]
    others = max(b.attn.max_logit for b in [*model.in_blocks, *model.out_blocks])
    _note(ctx, "mid_logit", ([round(v, 1) for v in trace[::25]], others))
    ctx.check("the middle block's attention logits grew 10x", end >= 10 * start)
    ctx.check("and beyond the other blocks'", end >= 5 * others)


# -- a VP score SDE on generated 2-D points ------------------------------------------------------


def _ring(gen: torch.Generator, n: int) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=gen).float() * (2 * math.pi / 8)
    centres = 2.0 * torch.stack([torch.cos(k), torch.sin(k)], 1)
    return centres + 0.1 * torch.randn(n, 2, generator=gen)


class ScoreNet(nn.Module):
    """s(x, sigma) conditioned on log sigma (the noise-level conditioning of NCSN / EDM)."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.inp = nn.Linear(2, hidden)
        self.time_embed = nn.Linear(1, hidden)
        self.act = nn.SiLU()
        self.body = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.act2 = nn.SiLU()
        self.out = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        h = self.act(self.inp(x) + self.time_embed(log_sigma[:, None]))
        return self.out(self.act2(self.body(h) + h))


def _vp_std(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VP SDE with beta(t) = 0.1 + 19.9 t: the marginal mean factor and std at t."""
    log_mean = -0.25 * t**2 * 19.9 - 0.5 * t * 0.1
    return log_mean.exp(), (1 - (2 * log_mean).exp()).sqrt()


def _sde_loss(model: ScoreNet, x0: torch.Tensor, t: torch.Tensor, gen: torch.Generator):
    mean, std = _vp_std(t)
    z = torch.randn(x0.shape, generator=gen)
    xt = mean[:, None] * x0 + std[:, None] * z
    score = model(xt, std.log())
    return ((std[:, None] * score + z) ** 2).sum(1).mean()


@scenario(
    "h101_vp_score_sde_points",
    "adamax",
    "nonfinite",
    where="time_embed",
    diverges=160,
    heldout=True,
    onset=160,
    note="time sampling switched to a stratified linspace(0, 1) that includes t = 0: std 0, "
    "log std = -inf enters the noise-level embedding",
)
def h101_vp_sde_t_zero_log_sigma(ctx):
    gen = seeded(10103)
    model = ScoreNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for step in range(240):
        x0 = _ring(gen, 128)
        if step < 160:
            t = 1e-3 + (1 - 1e-3) * torch.rand(128, generator=gen)
        else:  # "low-discrepancy" sampling: evenly spaced times, endpoints included
            t = torch.linspace(0, 1, 128)[torch.randperm(128, generator=gen)]
        loss = _sde_loss(model, x0, t, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        if step == 160:
            with torch.no_grad():
                emb = model.time_embed(_vp_std(t)[1].log()[:, None])
            ctx.check(
                "the noise-level embedding went non-finite at t = 0", not emb.isfinite().all()
            )
    ctx.check("loss finite before the switch", _finite(ctx.losses[:160]))
    ctx.check(
        "loss fell before the switch", _med(ctx.losses[140:160]) < 0.8 * _med(ctx.losses[:20])
    )
    ctx.check("loss non-finite from the switch", not math.isfinite(ctx.losses[160]))


@scenario("h101_vp_score_sde_points", "adamax", "healthy", heldout=True)
def h101_vp_sde_healthy(ctx):
    gen = seeded(10104)
    model = ScoreNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for _ in range(240):
        x0 = _ring(gen, 128)
        t = 1e-3 + (1 - 1e-3) * torch.rand(128, generator=gen)
        loss = _sde_loss(model, x0, t, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("loss stayed finite", _finite(ctx.losses))
    ctx.check("score-matching loss fell", _med(ctx.losses[-20:]) < 0.8 * _med(ctx.losses[:20]))


# -- NICE: additive coupling flow on digits ------------------------------------------------------


class _Coupling(nn.Module):
    def __init__(self, dim: int, hidden: int, parity: int) -> None:
        super().__init__()
        self.parity = parity
        half = dim // 2
        self.m = nn.Sequential(
            nn.Linear(half, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, half),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, self.parity :: 2], x[:, 1 - self.parity :: 2]
        out = torch.empty_like(x)
        out[:, self.parity :: 2] = a
        out[:, 1 - self.parity :: 2] = b + self.m(a)
        return out


class NICE(nn.Module):
    """Dinh et al. 2014: four additive couplings and a diagonal scaling, Gaussian prior."""

    def __init__(self, dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.couplings = nn.ModuleList(_Coupling(dim, hidden, i % 2) for i in range(4))
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per dimension (nats)."""
        for c in self.couplings:
            x = c(x)
        y = x * self.log_scale.exp()
        log_prior = -0.5 * (y**2).sum(1) - 0.5 * y.shape[1] * math.log(2 * math.pi)
        return -(log_prior + self.log_scale.sum()).mean() / x.shape[1]


def _dequantised(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return (x * 16 + torch.rand(x.shape, generator=gen)) / 17 * 4 - 2


@scenario(
    "h101_nice_digits",
    "sgd_nesterov",
    "data_outlier",
    diverges=151,
    heldout=True,
    onset=150,
    note="one batch from a shard stored as raw 0..255 intensities, not rescaled: its Gaussian-"
    "prior gradient throws the flow's scaling off, the next batch's loss is astronomical",
)
def h101_nice_raw_intensity_batch(ctx):
    gen = seeded(10105)
    model = NICE()
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for step in range(260):
        x, _ = next(batches)
        x = _dequantised(x, gen)
        if step == 150:
            x = (x + 2) / 4 * 255  # the raw shard
        loss = model(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    L = ctx.losses
    _note(ctx, "around", L[148:156])
    ctx.check("the raw batch's loss is 20x the usual", L[150] > 20 * _med(L[130:150]))
    after = [v if math.isfinite(v) else 1e9 for v in L[160:]]
    ctx.check("the next batch's loss blew up", not L[151] < 100 * _med(L[130:150]))
    ctx.check("the flow never came back", _med(after) > 3 * _med(L[130:150]))


# -- MixMatch semi-supervised on digits ----------------------------------------------------------


class _MixMatchNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A one-pixel random shift of the 8x8 image plus pixel noise."""
    img = x.reshape(-1, 8, 8)
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    img = torch.roll(img, shifts=(dy, dx), dims=(1, 2))
    return (img.reshape(-1, 64) + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def _mixmatch_step(model, xl, yl, xu, gen, lam_u: float = 25.0, T: float = 0.5, alpha=0.75):
    """One MixMatch loss (Berthelot et al. 2019): K = 2 guesses, sharpening, MixUp."""
    with torch.no_grad():
        p = sum(model(_augment(xu, gen)).softmax(1) for _ in range(2)) / 2
        p = p ** (1 / T)
        q = p / p.sum(1, keepdim=True)
    xl_a, xu_a = _augment(xl, gen), _augment(xu, gen)
    all_x = torch.cat([xl_a, xu_a])
    all_p = torch.cat([F.one_hot(yl, 10).float(), q])
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    lam = max(lam, 1 - lam)
    perm = torch.randperm(len(all_x), generator=gen)
    mx = lam * all_x + (1 - lam) * all_x[perm]
    mp = lam * all_p + (1 - lam) * all_p[perm]
    hidden = model.net[:4](mx)
    logits = model.net[4](hidden)
    n = len(xl)
    lx = -(mp[:n] * logits[:n].log_softmax(1)).sum(1).mean()
    lu = ((logits[n:].softmax(1) - mp[n:]) ** 2).mean()
    return lx, lu, hidden


def _mixmatch_data(gen):
    x, y = digits()
    order = torch.randperm(len(y), generator=gen)
    lab, unl = order[:200], order[200:]
    return x[lab], y[lab], x[unl]


def _mixmatch_run(ctx, seed: int, steps: int, sparsity_from: int | None):
    gen = seeded(seed)
    torch.manual_seed(seed)
    model = _MixMatchNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    xl_all, yl_all, xu_all = _mixmatch_data(gen)
    dead, accs = [], []
    for step in range(steps):
        il = torch.randint(0, len(yl_all), (64,), generator=gen)
        iu = torch.randint(0, len(xu_all), (64,), generator=gen)
        ctx.targets(yl_all[il])
        lx, lu, hidden = _mixmatch_step(model, xl_all[il], yl_all[il], xu_all[iu], gen)
        ramp_u = min(step / 40, 1.0)
        loss = lx + 25.0 * ramp_u * lu
        total = loss
        if sparsity_from is not None and step >= sparsity_from:
            # an L1 activity penalty on the second hidden layer, switched on with a weight
            # meant for a sum over units (mean taken instead: 128x too strong)
            total = loss + 0.3 * hidden.abs().sum(1).mean()
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        ctx.step(loss)
        with torch.no_grad():
            h = model.net[:4](xl_all)
            acc = float((model(xl_all).argmax(1) == yl_all).float().mean())
        dead.append(float((h <= 0).all(0).float().mean()))
        accs.append(acc)
    return model, dead, accs


@scenario(
    "h101_mixmatch_digits",
    "adam",
    "loss_of_plasticity",
    where="net.2",
    diverges="auto",
    heldout=True,
    onset=160,
    note="an activity penalty on the second hidden layer switched on at step 160 with a weight "
    "far too large: its ReLU units are pushed below zero for every input and stay dead",
)
def h101_mixmatch_activity_penalty_kills_units(ctx):
    _, dead, accs = _mixmatch_run(ctx, 10106, 340, sparsity_from=160)
    _note(ctx, "dead", [round(v, 2) for v in dead[::20]])
    _note(ctx, "acc", [round(v, 2) for v in accs[::20]])
    ctx.check("it was learning before", accs[159] > 0.6 and dead[159] < 0.3)
    ctx.check("most of net.2's units dead after", dead[-1] > 0.7)
    ctx.check("and it unlearned", accs[-1] < 0.5 * accs[159])


# -- a Gumbel-softmax categorical VAE on digits --------------------------------------------------


class GumbelVAE(nn.Module):
    """Jang et al. 2017: 8 categorical latents of 10 classes, relaxed with Gumbel-softmax."""

    def __init__(self, latents: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.latents, self.classes = latents, classes
        self.encoder = nn.Sequential(
            nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, latents * classes)
        )
        self.decoder = nn.Sequential(
            nn.Linear(latents * classes, 128), nn.ReLU(), nn.Linear(128, 64)
        )

    def forward(self, x: torch.Tensor, tau: float, gen: torch.Generator) -> torch.Tensor:
        logits = self.encoder(x).reshape(-1, self.latents, self.classes)
        u = torch.rand(logits.shape, generator=gen).clamp(1e-9, 1 - 1e-9)
        z = ((logits - torch.log(-torch.log(u))) / tau).softmax(-1)
        recon = F.binary_cross_entropy_with_logits(
            self.decoder(z.flatten(1)), x, reduction="none"
        ).sum(1)
        q = logits.softmax(-1)
        kl = (q * (q.clamp_min(1e-10).log() + math.log(self.classes))).sum((1, 2))
        return (recon + kl).mean()


def _tau(step: int) -> float:
    """Temperature annealing, exp(-3e-3 step) floored at 0.5, recomputed per 'epoch' of 28."""
    epoch = step // 28
    return max(0.5, math.exp(-3e-3 * 28 * epoch))


@scenario(
    "h101_gumbel_softmax_cat_vae",
    "rmsprop",
    "gradient_spike",
    where="encoder",
    diverges=None,
    heldout=True,
    onset=140,
    note="at one epoch boundary the annealing schedule hands out tau = 3e-3 (a unit "
    "mix-up, milli-tau): the relaxed samples' gradient through the encoder logits scales with 1/tau",
)
def h101_gumbel_vae_tau_glitch(ctx):
    gen = seeded(10107)
    model = GumbelVAE()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    enc = []
    for step in range(280):
        x, _ = next(batches)
        tau = 3e-3 if step == 140 else _tau(step)
        loss = model(x, tau, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        enc.append(float(torch.cat([p.grad.flatten() for p in model.encoder.parameters()]).norm()))
        opt.step()
        ctx.step(loss)
    L = ctx.losses
    _note(ctx, "enc_grad", (enc[135:145], _med(enc[100:140])))
    ctx.check("the encoder's gradient spiked 15x", enc[140] > 15 * _med(enc[100:140]))
    ctx.check("the loss did not spike with it", L[140] < 1.5 * _med(L[120:140]))
    ctx.check("training went on", _finite(L) and _med(L[-20:]) < _med(L[:20]))


# -- a modern Hopfield layer retrieving stored patterns ------------------------------------------


class HopfieldRetrieval(nn.Module):
    """Ramsauer et al. 2020: one update xi' = softmax(beta xi K^T) V with learned stored
    patterns; retrieves the clean pattern behind a corrupted query."""

    def __init__(self, dim: int = 32, memories: int = 16) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.keys = nn.Parameter(torch.randn(memories, dim) * 0.3)
        self.values = nn.Parameter(torch.randn(memories, dim) * 0.3)
        self.beta = nn.Parameter(torch.tensor(1.0 / math.sqrt(dim)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attn = (self.beta * self.query(x) @ self.keys.T).softmax(-1)
        return attn @ self.values


def _hopfield_batch(protos: torch.Tensor, gen: torch.Generator, n: int = 64):
    idx = torch.randint(0, len(protos), (n,), generator=gen)
    clean = protos[idx]
    flip = torch.rand(clean.shape, generator=gen) < 0.2
    noisy = torch.where(flip, -clean, clean) + 0.1 * torch.randn(clean.shape, generator=gen)
    return noisy, clean


def _top_hessian_eig(model: nn.Module, loss_fn, iters: int = 30) -> float:
    """Largest eigenvalue of the loss Hessian by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        hv = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v, strict=True)), params)
        eig = float(sum((h * u).sum() for h, u in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    "h101_modern_hopfield_retrieval",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=150,
    note="the step schedule multiplies the learning rate by 8 at step 150 (meant to divide): "
    "lr times the Hessian's top eigenvalue passes 2",
)
def h101_hopfield_lr_step_up(ctx):
    gen = seeded(10108)
    protos = torch.sign(torch.randn(16, 32, generator=gen))
    model = HopfieldRetrieval()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    fixed = _hopfield_batch(protos, gen, 256)

    def sq_err(out, y):
        return ((out - y) ** 2).sum(1).mean()

    eig = 0.0
    for step in range(300):
        if step == 150:
            eig = _top_hessian_eig(model, lambda: sq_err(model(fixed[0]), fixed[1]))
            for g in opt.param_groups:
                g["lr"] *= 8
        x, y = _hopfield_batch(protos, gen)
        loss = sq_err(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    L = ctx.losses
    _note(ctx, "eig", eig)
    ctx.check("below the stability edge before", 0.05 * eig < 2)
    ctx.check("above it after", 0.4 * eig > 2)
    ctx.check("it was learning", _med(L[130:150]) < 0.7 * _med(L[:10]))
    after = [v if math.isfinite(v) else 1e9 for v in L[-30:]]
    ctx.check("the loss climbed after the step-up", _med(after) > 1.4 * _med(L[130:150]))


# -- a neural cellular automaton growing a generated pattern -------------------------------------


class GrowingNCA(nn.Module):
    """Mordvintsev et al. 2020: fixed Sobel perception, a 1x1-conv update rule and stochastic
    cell updates, unrolled from a single seed cell (no alive masking)."""

    def __init__(self, channels: int = 12, hidden: int = 64) -> None:
        super().__init__()
        self.channels = channels
        ident = torch.tensor([[0, 0, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.float32)
        sobel = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float32) / 8
        kernels = torch.stack([ident, sobel, sobel.T])[:, None].repeat(channels, 1, 1, 1)
        self.register_buffer("kernels", kernels)
        self.update = nn.Sequential(
            nn.Conv2d(3 * channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
        )
        nn.init.zeros_(self.update[2].weight)
        nn.init.zeros_(self.update[2].bias)

    def forward(self, state: torch.Tensor, steps: int, gen: torch.Generator) -> torch.Tensor:
        for _ in range(steps):
            perceived = F.conv2d(state, self.kernels, padding=1, groups=self.channels)
            fire = (torch.rand(state[:, :1].shape, generator=gen) < 0.5).float()
            state = state + self.update(perceived) * fire
        return state


def _nca_target(size: int = 16) -> torch.Tensor:
    """A generated RGBA emblem: a red disc inside a blue ring."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2).sqrt()
    disc, ring = (r < 3.5).float(), ((r >= 4.5) & (r < 6.5)).float()
    rgba = torch.stack([disc, 0.3 * disc, ring, ((disc + ring) > 0).float()])
    return rgba[None]


def _nca_seed(batch: int, channels: int = 12, size: int = 16) -> torch.Tensor:
    s = torch.zeros(batch, channels, size, size)
    s[:, 3:, size // 2, size // 2] = 1.0
    return s


@scenario(
    "h101_nca_grow_emblem",
    "adagrad",
    "exploding_gradients",
    where="update",
    diverges=None,
    heldout=True,
    onset=120,
    note="the curriculum lengthens the rollout from 20 to 64 steps at step 120 with no per-"
    "parameter gradient normalisation: the gradient through the unrolled update rule explodes",
)
def h101_nca_long_rollout_grad_explodes(ctx):
    gen = seeded(10109)
    model = GrowingNCA()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    target = _nca_target()
    norms = []
    for step in range(200):
        steps = 20 if step < 120 else 64
        out = model(_nca_seed(4), steps, gen)
        loss = F.mse_loss(out[:, :4], target.expand(4, -1, -1, -1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()))
        opt.step()
        ctx.step(loss)
    L = ctx.losses
    _note(ctx, "grad", ([round(v, 3) for v in norms[::10]], max(norms[120:])))
    ctx.check("it was learning", _med(L[100:120]) < 0.8 * _med(L[:10]))
    ctx.check("the gradient grew 50x after", max(norms[120:]) > 50 * _med(norms[100:120]))


# -- an E-Branchformer ASR encoder on generated speech-like frames -------------------------------


class _CgMLP(nn.Module):
    """Convolutional gating MLP: project up, split, gate one half by a depthwise conv of the
    other (normalised), project down."""

    def __init__(self, dim: int, hidden: int, kernel: int = 7) -> None:
        super().__init__()
        self.up = nn.Linear(dim, hidden)
        self.norm = nn.LayerNorm(hidden // 2)
        self.conv = nn.Conv1d(
            hidden // 2, hidden // 2, kernel, padding=kernel // 2, groups=hidden // 2
        )
        self.down = nn.Linear(hidden // 2, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = F.gelu(self.up(x)).chunk(2, -1)
        b = self.conv(self.norm(b).transpose(1, 2)).transpose(1, 2)
        return self.down(a * b)


class _EBranchBlock(nn.Module):
    """Kim et al. 2022: macaron FFNs around parallel self-attention and cgMLP branches merged
    by a depthwise conv over their concatenation."""

    def __init__(self, dim: int = 48, heads: int = 4) -> None:
        super().__init__()
        self.ff1 = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim)
        )
        self.ln_attn = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_cg = nn.LayerNorm(dim)
        self.cgmlp = _CgMLP(dim, 4 * dim)
        self.merge_conv = nn.Conv1d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim)
        self.merge = nn.Linear(2 * dim, dim)
        self.ff2 = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim)
        )
        self.ln_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        h = self.ln_attn(x)
        g = self.attn(h, h, h, need_weights=False)[0]
        c = self.cgmlp(self.ln_cg(x))
        both = torch.cat([g, c], -1)
        both = both + self.merge_conv(both.transpose(1, 2)).transpose(1, 2)
        x = x + self.merge(both)
        x = x + 0.5 * self.ff2(x)
        return self.ln_out(x)


class EBranchformerASR(nn.Module):
    def __init__(self, feats: int = 20, dim: int = 48, phones: int = 12, layers: int = 2) -> None:
        super().__init__()
        self.inp = nn.Linear(feats, dim)
        self.pos = nn.Parameter(torch.randn(64, dim) * 0.02)
        self.blocks = nn.ModuleList(_EBranchBlock(dim) for _ in range(layers))
        self.head = nn.Linear(dim, phones)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + self.pos[: x.shape[1]]
        for blk in self.blocks:
            h = blk(h)
        return self.head(h)


def _speech_batches(gen: torch.Generator, batch: int = 16, frames: int = 32, phones: int = 12):
    """Frames of 20 'filterbank' features: each phone a spectral template held 3-6 frames,
    blurred across the boundary, with noise; the label is the phone of each frame."""
    templates = torch.randn(phones, 20, generator=gen)
    while True:
        labels = torch.empty(batch, frames, dtype=torch.long)
        for i in range(batch):
            t = 0
            while t < frames:
                n = int(torch.randint(3, 7, (1,), generator=gen))
                labels[i, t : t + n] = int(torch.randint(0, phones, (1,), generator=gen))
                t += n
        x = templates[labels]
        x = 0.6 * x + 0.2 * torch.roll(x, 1, 1) + 0.2 * torch.roll(x, -1, 1)
        yield x + 1.0 * torch.randn(x.shape, generator=gen), labels


def _frame_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    "h101_ebranchformer_asr",
    "radam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="linear warm-up over 150 steps to a peak learning rate of 0.6 (meant 6e-3), then "
    "held: the loss falls during the warm-up and then climbs back slowly",
)
def h101_ebranchformer_warmup_peak_too_high(ctx):
    gen = seeded(10110)
    model = EBranchformerASR()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-2)
    batches = _speech_batches(gen)
    ctx.attach(model, opt)
    for step in range(260):
        for g in opt.param_groups:
            g["lr"] = 0.6 * min(1.0, (step + 1) / 150)
        x, y = next(batches)
        loss = _frame_ce(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    L = [v if math.isfinite(v) else 1e9 for v in ctx.losses]
    best = min(range(len(L) - 10), key=lambda i: _med(L[i : i + 10]))
    _note(ctx, "best", (best, _med(L[best : best + 10]), _med(L[-20:])))
    b = _med(L[best : best + 10])
    ctx.check("it learned first", b < 0.6 * _med(L[:10]))
    ctx.check("then climbed back 5x", _med(L[-20:]) > 5 * b)
    up = next(i for i in range(best, len(L)) if L[i] > 2 * b)
    peak = max(range(up, len(L)), key=lambda i: L[i])
    _note(ctx, "climb", (up, peak))
    ctx.check("a climb over 10+ steps, not one jump", peak - up >= 10)


# -- latent diffusion: a small autoencoder plus a transformer denoiser on its latents ------------


class _AutoEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(64, 128), nn.SiLU(), nn.Linear(128, 32))
        self.dec = nn.Sequential(nn.Linear(32, 128), nn.SiLU(), nn.Linear(128, 64))


class _ExpAttention(nn.Module):
    """Self-attention with the softmax written out as exp / sum (no max subtraction): fine in
    float32, but exp overflows float16 once a logit passes 11.1."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.overflowed = False
        self.max_logit = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2)  # ported without the 1 / sqrt(head dim)
        e = logits.exp()
        self.overflowed = bool(torch.isinf(e).any())
        self.max_logit = float(logits.detach().float().max())
        y = (e / e.sum(-1, keepdim=True)) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _DenoiserBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _ExpAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class LatentDenoiser(nn.Module):
    """A small DiT-like denoiser over the autoencoder's 32 latents read as 8 tokens of 4."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.tok = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(8, dim) * 0.02)
        self.time = nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.blocks = nn.ModuleList(_DenoiserBlock(dim, heads) for _ in range(2))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 4)

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.tok(z.reshape(-1, 8, 4)) + self.pos + self.time(t[:, None])[:, None]
        for blk in self.blocks:
            h = blk(h)
        return self.out(self.norm(h)).reshape(-1, 32)


def _pretrained_autoencoder(gen: torch.Generator) -> tuple[_AutoEncoder, float]:
    """Stage one of latent diffusion, done before the run: the autoencoder and the latents'
    scale factor (1 / their std)."""
    ae = _AutoEncoder()
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    batches = digit_batches(gen, 128)
    for _ in range(150):
        x, _ = next(batches)
        loss = F.mse_loss(ae.dec(ae.enc(x)), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        scale = 1.0 / float(ae.enc(digits()[0]).std())
    return ae.requires_grad_(False), scale


def _latent_diffusion(ctx, seed: int, steps: int, lr: float):
    gen = seeded(seed)
    ae, scale = _pretrained_autoencoder(gen)
    model = LatentDenoiser()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = digit_batches(gen, 64)
    first_overflow, scales = None, []
    for step in range(steps):
        x, _ = next(batches)
        with torch.no_grad():
            z0 = ae.enc(x) * scale
        t = torch.rand(len(x), generator=gen)
        ab = torch.cos(t * math.pi / 2) ** 2
        eps = torch.randn(z0.shape, generator=gen)
        zt = ab.sqrt()[:, None] * z0 + (1 - ab).sqrt()[:, None] * eps
        with torch.autocast("cpu", dtype=torch.float16):
            pred = model(zt, t)
        loss = F.mse_loss(pred.float(), eps)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        ctx.step(loss)
        scales.append(float(scaler.get_scale()))
        hit = [i for i, b in enumerate(model.blocks) if b.attn.overflowed]
        if hit and first_overflow is None:
            first_overflow = (step, hit)
    with torch.no_grad():  # the same model in float32 on the last batch
        fp32_finite = bool(model(zt, t).isfinite().all())
    return model, first_overflow, scales, fp32_finite


@scenario(
    "h101_latent_diffusion_digits",
    "nadam",
    "amp_overflow",
    where="blocks.0.attn",
    diverges=4,
    heldout=True,
    note="attention ported without 1/sqrt(head dim) and with a hand-written exp/sum softmax, "
    "under fp16 autocast: a logit passes 11.1 within a few steps, exp overflows on every step "
    "after, the GradScaler skips them all and its scale collapses (float32 stays finite)",
)
def h101_latent_diffusion_fp16_exp_overflow(ctx):
    model, first, scales, fp32_finite = _latent_diffusion(ctx, 10111, 200, lr=1e-2)
    _note(ctx, "first_overflow", first)
    _note(ctx, "scales", scales[::20])
    ctx.check("fp16 exp overflowed in blocks.0.attn first", first is not None and first[1] == [0])
    ctx.check(
        "the loss was finite until it did", _finite(ctx.losses[: first[0]]) if first else False
    )
    after = [math.isfinite(v) for v in ctx.losses[first[0] :]] if first else [True]
    ctx.check("nearly every step after was skipped", sum(after) < 0.05 * len(after))
    ctx.check("the scale collapsed", scales[-1] < 1e-6)
    ctx.check("the same model is finite in float32", fp32_finite)


# -- a Hugging Face image-text model answering which digit an image shows ------------------------


def _idefics2():
    from transformers import Idefics2Config, Idefics2ForConditionalGeneration, MistralConfig

    config = Idefics2Config(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=16,
            patch_size=4,
        ),
        perceiver_config=dict(
            hidden_size=32,
            resampler_n_latents=4,
            resampler_depth=1,
            resampler_n_heads=2,
            resampler_head_dim=16,
            num_key_value_heads=2,
        ),
        text_config=MistralConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            pad_token_id=0,
        ),
        image_token_id=IMAGE_TOKEN,
    )
    return Idefics2ForConditionalGeneration(config), 4  # the resampler's 4 latents


def _vlm_forward(kind: str, model, x: torch.Tensor, y: torch.Tensor, tokens: int):
    ids, labels = _vqa(x, y, tokens)
    pixels = _digit_images(x)
    if kind == "idefics2":
        return model(input_ids=ids, pixel_values=pixels[:, None], labels=labels).loss
    return model(input_ids=ids, pixel_values=pixels, labels=labels).loss


def _vlm_run(ctx, kind, model, tokens, opt, steps, gen, loss_scale=None, after_step=None):
    ctx.attach(model, opt)
    batches = digit_batches(gen, 32)
    for step in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = _vlm_forward(kind, model, x, y, tokens)
        opt.zero_grad(set_to_none=True)
        (loss * (loss_scale(step) if loss_scale is not None else 1.0)).backward()
        opt.step()
        ctx.step(loss)
        if after_step is not None:
            after_step(step)


@scenario(
    "h101_hf_idefics2_digit_vqa",
    "adamw",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=100,
    note="at step 100 a leftover manual loss scale (x 65536, from an fp16 recipe whose unscale "
    "was removed) multiplies one backward: the giant gradient fills AdamW's second moment in "
    "every module and the updates stall for hundreds of steps",
)
def h101_idefics2_stray_loss_scale_poisons_adam(ctx):
    gen = seeded(10114)
    model, tokens = _idefics2()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    patch = model.model.vision_model.embeddings.patch_embedding.weight
    moves, v_mean = [], []
    prev = patch.detach().clone()

    def loss_scale(step):
        return 65536.0 if step == 100 else 1.0

    def after_step(step):
        nonlocal prev
        moves.append(float((patch.detach() - prev).norm()))
        prev = patch.detach().clone()
        v_mean.append(float(opt.state[patch]["exp_avg_sq"].mean()))

    _vlm_run(ctx, "idefics2", model, tokens, opt, 260, gen, loss_scale, after_step)
    L = ctx.losses
    _note(ctx, "v", (v_mean[99], v_mean[100], v_mean[-1]))
    _note(ctx, "moves", (_med(moves[80:100]), _med(moves[110:130]), _med(moves[-20:])))
    ctx.check("one giant gradient filled v", v_mean[100] > 1e4 * v_mean[99])
    ctx.check(
        "the patch embedding's updates stalled", _med(moves[-40:]) < 0.1 * _med(moves[80:100])
    )
    ctx.check("the loss did not blow up", _finite(L) and _med(L[-20:]) < 2 * _med(L[80:100]))
    ctx.check("nor improve any more", _med(L[-20:]) > 0.95 * _med(L[80:100]))


# -- SAM-HQ mask decoding and a DINOv2-with-registers classifier (controls) ---------------------


def _scene_batches(gen: torch.Generator, batch: int = 8, size: int = 64):
    """Generated scenes: a bright disc and a dim square on noise; the prompt is a point inside
    the disc, the target its mask at the decoder's 32x32 resolution."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        imgs, masks, points = [], [], []
        for _ in range(batch):
            cx, cy = (float(v) for v in torch.randint(16, 48, (2,), generator=gen))
            r = float(torch.randint(6, 12, (1,), generator=gen))
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).float()
            sx, sy = (int(v) for v in torch.randint(0, 52, (2,), generator=gen))
            square = torch.zeros(size, size)
            square[sy : sy + 12, sx : sx + 12] = 0.5
            img = torch.maximum(disc, square) + 0.1 * torch.randn(size, size, generator=gen)
            imgs.append(img.expand(3, -1, -1))
            masks.append(F.avg_pool2d(disc[None], 2)[0] > 0.5)
            points.append(torch.tensor([cx, cy]))
        yield torch.stack(imgs), torch.stack(masks).float(), torch.stack(points)


@scenario("h101_hf_sam_hq_scenes", "sgd_mom", "healthy", heldout=True)
def h101_sam_hq_point_prompt_healthy(ctx):
    from transformers import SamHQConfig, SamHQModel

    gen = seeded(10115)
    config = SamHQConfig(
        vision_config=dict(
            hidden_size=32,
            output_channels=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=64,
            patch_size=8,
            mlp_dim=64,
            window_size=0,
            global_attn_indexes=[1],
            num_pos_feats=8,
            mlp_ratio=2.0,
        ),
        prompt_encoder_config=dict(
            hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4
        ),
        mask_decoder_config=dict(
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_dim=32,
            iou_head_hidden_dim=16,
            vit_dim=32,
        ),
    )
    model = SamHQModel(config)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ctx.attach(model, opt)
    batches = _scene_batches(gen)
    for _ in range(150):
        img, mask, pt = next(batches)
        out = model(
            pixel_values=img,
            input_points=pt[:, None, None],
            input_labels=torch.ones(len(pt), 1, 1, dtype=torch.long),
            multimask_output=False,
        )
        logits = out.pred_masks[:, 0, 0]
        loss = F.binary_cross_entropy_with_logits(logits, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("loss stayed finite", _finite(ctx.losses))
    ctx.check("mask loss fell", _med(ctx.losses[-20:]) < 0.7 * _med(ctx.losses[:10]))


@scenario("h101_hf_dinov2_registers_digits", "adam", "healthy", heldout=True)
def h101_dinov2_registers_healthy(ctx):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification

    gen = seeded(10116)
    config = Dinov2WithRegistersConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=16,
        patch_size=4,
        num_register_tokens=2,
        num_labels=10,
    )
    model = Dinov2WithRegistersForImageClassification(config)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(pixel_values=_digit_images(x)).logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("loss stayed finite", _finite(ctx.losses))
    ctx.check("loss fell", _med(ctx.losses[-20:]) < 0.7 * _med(ctx.losses[:10]))
