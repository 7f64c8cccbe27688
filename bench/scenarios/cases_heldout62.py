"""Held-out scenarios, set 62 (``h62_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face AIMv2 vision encoder with a linear head (digits), LLaVA (CLIP vision
tower, projector, Llama text model) answering generated digit questions, Pixtral vision encoder
with a linear head (digits), OWL-ViT open-vocabulary detector on generated squares and MetaCLIP-2
contrastive on digits and generated captions (fp16 autocast, a control) from configs; in plain
PyTorch, robotics, control and imitation learning: an action-chunking transformer (ACT) with a
CVAE on generated routes (a control under fp16 autocast too), a diffusion policy on 2-D action
chunks (a control too), a deep learned state estimator (a Kalman filter's replacement over a
window of measurements) on a generated constant-velocity target (a control too), a visuomotor
policy with spatial-softmax keypoints, GAIL (policy and discriminator), implicit Q-learning on a
generated offline dataset, a learned dynamics model for MPC on a generated pendulum, an
inverse-dynamics model on generated arm transitions (fp16 autocast with a GradScaler).

Optimizers: AdamW, SGD with Nesterov momentum, plain SGD, Adamax, NAdam, RAdam, ASGD, Adam,
Adagrad, Adadelta, momentum SGD, and steadygrad.optim's Lion, AdEMAMix, Grams, StableSPAM and
SPAM.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    fit,
    grad_norm,
    scenario,
    seeded,
)

# -- shared pieces --------------------------------------------------------------------------------


def _finite(v: float) -> bool:
    return v == v and abs(v) != float("inf")


def _loop(ctx: Context, model: nn.Module, opt, steps: int, step_fn, *, clip=None, scaler=None):
    """A plain loop: ``step_fn(step)`` returns (the loss logged, the loss backpropagated)."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        logged, total = step_fn(step)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)


def _digit_images(gen: torch.Generator, batch: int, size: int = 16):
    """Digits upsampled to ``size`` x ``size`` (one channel)."""
    for x, y in digit_batches(gen, batch):
        yield F.interpolate(x.reshape(-1, 1, 8, 8), size=(size, size), mode="bilinear"), y


# -- ACT: action chunking with a CVAE ---------------------------------------------------------------


class _ActAttention(nn.Module):
    """Multi-head self-attention written by hand; ``scale`` multiplies q.k (None: 1/sqrt(d))."""

    def __init__(self, dim: int, heads: int, scale: float | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = scale if scale is not None else (dim // heads) ** -0.5
        self.last_logit_max = 0.0
        self.last_top_prob = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = (q @ k.transpose(-1, -2)) * self.scale
        att = logits.float().softmax(-1).to(v.dtype)
        self.last_logit_max = float(logits.detach().abs().max())
        self.last_top_prob = float(att.detach().float().max(-1).values.mean())
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class _ActBlock(nn.Module):
    def __init__(self, dim: int, heads: int, scale: float | None) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _ActAttention(dim, heads, scale)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ActPolicy(nn.Module):
    """ACT-style: a CVAE encoder reads the demonstrated chunk and writes a style latent z; the
    decoder attends over [z, route tokens, chunk queries] and regresses the K actions."""

    def __init__(self, k: int = 8, dim: int = 64, heads: int = 2, latent: int = 8, scale=None):
        super().__init__()
        self.k, self.latent = k, latent
        self.cvae_encoder = nn.Sequential(
            nn.Linear(2 * k + 2 * (k + 1), 128), nn.ReLU(), nn.Linear(128, 2 * latent)
        )
        self.latent_in = nn.Linear(latent, dim)
        self.route_in = nn.Linear(2, dim)
        self.route_pos = nn.Parameter(torch.randn(k + 1, dim))
        self.queries = nn.Parameter(torch.randn(k, dim))
        self.blocks = nn.ModuleList(_ActBlock(dim, heads, scale) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.action_head = nn.Linear(dim, 2)

    def forward(self, route: torch.Tensor, chunk: torch.Tensor | None = None):
        b = route.shape[0]
        if chunk is not None:
            stats = self.cvae_encoder(torch.cat([route.flatten(1), chunk.flatten(1)], 1))
            mu, logvar = stats.chunk(2, dim=1)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        else:
            mu = logvar = None
            z = torch.zeros(b, self.latent)
        tokens = torch.cat(
            [
                self.latent_in(z)[:, None],
                self.route_in(route) + self.route_pos,
                self.queries.expand(b, -1, -1),
            ],
            1,
        )
        for block in self.blocks:
            tokens = block(tokens)
        return self.action_head(self.ln_f(tokens[:, -self.k :])), mu, logvar


def _routes(gen: torch.Generator, batch: int = 32, k: int = 8):
    """A start point and K waypoints; the expert's chunk is the K steps between them."""
    while True:
        route = torch.rand(batch, k + 1, 2, generator=gen) * 2 - 1
        yield route, route[:, 1:] - route[:, :-1]


def _act_run(ctx: Context, scale, lr: float, steps: int, opt_name: str, amp: bool = False):
    gen = seeded(6201)
    model = ActPolicy(scale=scale)
    if opt_name == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    else:
        opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    data = _routes(gen)
    maxima: list[float] = []
    tops: list[float] = []

    def step_fn(step: int):
        route, chunk = next(data)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            pred, mu, logvar = model(route, chunk)
        recon = F.l1_loss(pred.float(), chunk)
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
        maxima.append(max(b.attn.last_logit_max for b in model.blocks))
        tops.append(model.blocks[0].attn.last_top_prob)
        loss = recon + 1e-3 * kl
        return loss, loss

    _loop(ctx, model, opt, steps, step_fn)
    return model, maxima, tops


@scenario(
    "h62_act_cvae_chunking",
    "adamw",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="hand-written attention without the 1/sqrt(d) scale, high LR: logits grow, saturate",
)
def h62_act_missing_scale_adamw(ctx: Context) -> None:
    """The decoder's attention was re-written by hand (to log attention maps) and the
    ``1/sqrt(d_head)`` factor was left out (``scale=1.0`` with d_head = 32); with AdamW at a
    high rate and no QK-norm the q.k logits grow step after step (from ~7 to thousands) and each
    query's attention goes one-hot early, on whatever token it first preferred: the policy never
    learns to route waypoints to chunk steps and the chunk loss stalls (the control learns)."""
    model, maxima, tops = _act_run(ctx, 1.0, 1e-2, 300, "adamw")
    early = sum(maxima[:10]) / 10
    late = sum(maxima[-10:]) / 10
    ctx.check("attention logits grew 10x", late > 10 * early)
    ctx.check("attention saturated (top prob > 0.95)", sum(tops[-10:]) / 10 > 0.95)
    ctx.check("chunk loss stalled above 0.5", sum(ctx.losses[-20:]) / 20 > 0.5)


@scenario(
    "h62_act_cvae_chunking",
    "adagrad",
    "healthy",
    heldout=True,
    note="the same ACT with the scale, under fp16 autocast",
)
def h62_act_healthy_amp_adagrad(ctx: Context) -> None:
    """The ACT policy with the 1/sqrt(d) attention scale, trained with Adagrad under fp16
    autocast: the chunk loss falls."""
    _act_run(ctx, None, 2e-2, 300, "adagrad", amp=True)
    first = sum(ctx.losses[:10]) / 10
    last = sum(ctx.losses[-10:]) / 10
    ctx.check("chunk loss fell by half", last < 0.5 * first)
    ctx.check("finite throughout", all(_finite(v) for v in ctx.losses))


# -- a diffusion policy on 2-D action chunks --------------------------------------------------------


class DiffusionPolicy(nn.Module):
    """A noise-prediction MLP for DDPM over an 8-step 2-D action chunk, conditioned on the
    observation (position, goal) and a sinusoidal timestep embedding."""

    def __init__(self, k: int = 8, hidden: int = 128) -> None:
        super().__init__()
        self.k = k
        self.obs_encoder = nn.Sequential(nn.Linear(4, 64), nn.SiLU())
        self.time_mlp = nn.Sequential(nn.Linear(32, 64), nn.SiLU())
        self.denoiser = nn.Sequential(
            nn.Linear(2 * k + 128, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * k),
        )

    def forward(self, noisy: torch.Tensor, obs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(16) / 16)
        ang = t[:, None].float() * freqs
        temb = torch.cat([ang.sin(), ang.cos()], 1)
        h = torch.cat([noisy.flatten(1), self.obs_encoder(obs), self.time_mlp(temb)], 1)
        return self.denoiser(h).reshape(-1, self.k, 2)


def _reach_chunks(gen: torch.Generator, batch: int = 64, k: int = 8):
    """Expert chunks of a point mass steering towards a goal (proportional control)."""
    while True:
        pos = torch.rand(batch, 2, generator=gen) * 2 - 1
        goal = torch.rand(batch, 2, generator=gen) * 2 - 1
        obs = torch.cat([pos, goal], 1)
        acts = []
        p = pos.clone()
        for _ in range(k):
            a = (0.4 * (goal - p)).clamp(-0.3, 0.3)
            acts.append(a)
            p = p + a
        yield obs, torch.stack(acts, 1) / 0.3


def _diffusion_run(ctx: Context, opt, model, steps: int, schedule):
    gen = seeded(6202)
    data = _reach_chunks(gen)
    betas = torch.linspace(1e-4, 0.2, 50)
    abar = torch.cumprod(1 - betas, 0)
    lrs: list[float] = []

    def step_fn(step: int):
        schedule(step)
        lrs.append(opt.param_groups[0]["lr"])
        obs, chunk = next(data)
        t = torch.randint(0, 50, (obs.shape[0],), generator=gen)
        noise = torch.randn(chunk.shape, generator=gen)
        a = abar[t][:, None, None]
        noisy = a.sqrt() * chunk + (1 - a).sqrt() * noise
        loss = F.mse_loss(model(noisy, obs, t), noise)
        return loss, loss

    _loop(ctx, model, opt, steps, step_fn)
    return lrs


@scenario(
    "h62_diffusion_policy_2d",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="ExponentialLR gamma typed 1.03 for 0.97: the LR climbs past 2/curvature",
)
def h62_diffusion_gamma_typo_nesterov(ctx: Context) -> None:
    """The per-step exponential decay was meant to be gamma = 0.97 and was typed 1.03: the
    learning rate of Nesterov SGD grows 3 % a step from a stable 0.05, crosses the stability
    limit of the denoiser's loss and the noise-prediction loss blows up."""
    model = DiffusionPolicy()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    base = 0.05

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = base * 1.03**step

    lrs = _diffusion_run(ctx, opt, model, 260, schedule)
    low = min(ctx.losses[:120])
    broke = next(
        (i for i, v in enumerate(ctx.losses) if not _finite(v) or v > 20 * max(low, 1e-3)), None
    )
    ctx.check("loss fell first (stable at the start)", low < 0.6 * ctx.losses[0])
    ctx.check("loss blew up after the LR climbed", broke is not None and broke > 40)
    ctx.check("LR at the break is >5x the start", broke is not None and lrs[broke] > 5 * base)


@scenario(
    "h62_diffusion_policy_2d",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="a stable rate with the decay the schedule meant (gamma 0.998)",
)
def h62_diffusion_healthy_momentum(ctx: Context) -> None:
    """The same diffusion policy with the decay the schedule meant: the loss falls."""
    model = DiffusionPolicy()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.3 * 0.998**step

    _diffusion_run(ctx, opt, model, 260, schedule)
    first = sum(ctx.losses[:10]) / 10
    last = sum(ctx.losses[-20:]) / 20
    ctx.check("denoising loss fell", last < 0.6 * first)
    ctx.check("finite throughout", all(_finite(v) for v in ctx.losses))


# -- a learned state estimator over a window of measurements -------------------------------------


class WindowEstimator(nn.Module):
    """Estimates (position, velocity) of a tracked target from its last 16 noisy position
    measurements with a deep ReLU MLP (a learned replacement of a Kalman filter's update)."""

    def __init__(self, depth: int = 8, width: int = 64, gain: float = math.sqrt(2.0)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = 16
        for _ in range(depth):
            lin = nn.Linear(d, width)
            nn.init.normal_(lin.weight, std=gain / math.sqrt(d))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
            d = width
        layers.append(nn.Linear(d, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def _tracks(gen: torch.Generator, batch: int = 64, length: int = 16):
    """A constant-velocity target seen through noisy position measurements."""
    while True:
        p0 = torch.rand(batch, 1, generator=gen) * 2 - 1
        v = (torch.rand(batch, 1, generator=gen) * 2 - 1) * 0.05
        pos = p0 + v * torch.arange(length)
        z = pos + 0.1 * torch.randn(batch, length, generator=gen)
        yield z, torch.cat([pos[:, -1:], 10 * v], 1)


@scenario(
    "h62_window_state_estimator",
    "sgd",
    "exploding_gradients",
    where="net.0",
    diverges="auto",
    heldout=True,
    note="He init with the ReLU gain applied twice (std 2/sqrt(fan_in)) through 8 layers",
)
def h62_estimator_double_gain_sgd(ctx: Context) -> None:
    """The init helper already folds in the ReLU gain sqrt(2) and the caller multiplied by it
    again: every layer of the 8-deep estimator amplifies by ~sqrt(2), so the output and the
    backpropagated gradients start ~16x too large; plain SGD's first updates grow the weights,
    which grows the gradients again, step after step, until the run overflows."""
    gen = seeded(6203)
    model = WindowEstimator(gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3)
    data = _tracks(gen)

    def step_fn(step: int):
        z, target = next(data)
        loss = F.mse_loss(model(z), target)
        return loss, loss

    _loop(ctx, model, opt, 40, step_fn)
    broke = next((i for i, v in enumerate(ctx.losses) if not _finite(v)), None)
    ctx.check("the run broke (non-finite loss)", broke is not None)
    g = ctx.grad_norms
    if broke is not None:
        rising = all(g[i + 1] > g[i] for i in range(broke - 3, broke - 1))
        ctx.check("gradient norm rose step after step before the break", rising)
        ctx.check("gradient norm grew >1000x from step 0", max(g[:broke]) > 1000 * g[0])


@scenario(
    "h62_window_state_estimator",
    "sg_spam",
    "healthy",
    heldout=True,
    note="He init as meant, SPAM",
)
def h62_estimator_healthy_spam(ctx: Context) -> None:
    """The estimator with the He init as meant, trained with SPAM: the loss falls."""
    gen = seeded(6204)
    model = WindowEstimator()
    opt = sgo.SPAM(model.parameters(), lr=1e-3)
    data = _tracks(gen)

    def step_fn(step: int):
        z, target = next(data)
        loss = F.mse_loss(model(z), target)
        return loss, loss

    _loop(ctx, model, opt, 150, step_fn)
    first = sum(ctx.losses[:10]) / 10
    last = sum(ctx.losses[-20:]) / 20
    ctx.check("estimation loss fell 5x", last < 0.2 * first)
    ctx.check("finite throughout", all(_finite(v) for v in ctx.losses))


# -- a visuomotor policy with spatial-softmax keypoints ---------------------------------------------


class SpatialSoftmax(nn.Module):
    """Per-channel soft-argmax over the feature map: (B, C, H, W) -> (B, 2C) keypoints."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = h.shape
        att = h.flatten(2).softmax(-1).reshape(b, c, hh, ww)
        ys = torch.linspace(-1, 1, hh)
        xs = torch.linspace(-1, 1, ww)
        kx = (att.sum(2) * xs).sum(-1)
        ky = (att.sum(3) * ys).sum(-1)
        return torch.cat([kx, ky], 1)


class VisuomotorPolicy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.keypoints = SpatialSoftmax()
        self.policy = nn.Sequential(nn.Linear(32 + 2, 64), nn.ReLU(), nn.Linear(64, 2))

    def features(self, img: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(img))))

    def forward(self, obs) -> torch.Tensor:
        img, goal = obs
        return self.policy(torch.cat([self.keypoints(self.features(img)), goal], 1))


def _dot_scenes(gen: torch.Generator, batch: int = 32, size: int = 16):
    """A camera image of the end effector (a bright blob) and a goal; the expert moves to it."""
    grid = torch.linspace(-1, 1, size)
    while True:
        p = torch.rand(batch, 2, generator=gen) * 1.6 - 0.8
        goal = torch.rand(batch, 2, generator=gen) * 1.6 - 0.8
        d2 = (grid[None, None, :] - p[:, 0, None, None]) ** 2 + (
            grid[None, :, None] - p[:, 1, None, None]
        ) ** 2
        img = torch.exp(-d2 / 0.02)[:, None] + 0.05 * torch.randn(
            batch, 1, size, size, generator=gen
        )
        yield (img, goal), goal - p


@scenario(
    "h62_visuomotor_spatial_softmax",
    "adamax",
    "loss_of_plasticity",
    where="conv2",
    diverges=None,
    heldout=True,
    onset=120,
    note="a warm restart typed lr=3 for 3e-3 over 6 steps kills conv2's ReLU channels",
)
def h62_visuomotor_restart_burst_adamax(ctx: Context) -> None:
    """A warm restart of the schedule at step 120 was meant to go back to 3e-3 and went to 3.0
    (the exponent dropped) for six steps before the decay caught it: Adamax moves every weight
    by up to 3 a step, conv2's channels are pushed negative everywhere and their ReLUs never fire
    again (a dead channel gets no gradient); the keypoints fall back to the image centre and
    the policy stops improving."""
    gen = seeded(6205)
    model = VisuomotorPolicy()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)

    data = _dot_scenes(gen)
    (probe, _), _ = next(_dot_scenes(torch.Generator().manual_seed(62)))
    dead_before: list[float] = []

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 3.0 if 120 <= step < 126 else 3e-3
        if step == 120:
            with torch.no_grad():
                dead_before.append(dead_fraction(model.features(probe)))

    fit(ctx, model, opt, data, 260, loss_fn=F.mse_loss, before=schedule, classifier=False)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe))
    ctx.check("loss had fallen before the burst", min(ctx.losses[100:120]) < 0.5 * ctx.losses[0])
    ctx.check("at most a quarter of conv2's channels dead before", dead_before[0] <= 0.25)
    ctx.check("half or more of conv2's channels dead after", dead >= 0.5)
    ctx.check(
        "loss stayed above its pre-burst level",
        sum(ctx.losses[-20:]) / 20 > 1.5 * sum(ctx.losses[100:120]) / 20,
    )


# -- GAIL: a policy and its discriminator ----------------------------------------------------------


class Gail(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.policy = nn.Sequential(nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 2), nn.Tanh())
        self.disc = nn.Sequential(
            nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
        )


@scenario(
    "h62_gail_discriminator",
    "nadam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="one step backpropagates the loss still multiplied by a stale 65536 loss scale",
)
def h62_gail_stale_loss_scale_nadam(ctx: Context) -> None:
    """After a resume at step 150 the first step's loss was still multiplied by the saved fp16
    loss scale (65536) with the unscale skipped: every gradient of that one step is 65536x.
    NAdam's second moment (beta2 = 0.999) takes 0.1 % of its square, which outweighs the normal
    squares for thousands of steps: afterwards every update is damped by orders of magnitude
    (the adversarial losses sit near their equilibrium throughout, so the loss shows nothing;
    the updates do)."""
    gen = seeded(6206)
    model = Gail()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    pol_params = list(model.policy.parameters())
    updates: list[float] = []

    def batch():
        s = torch.rand(128, 4, generator=gen) * 2 - 1
        expert = (0.5 * (s[:, 2:] - s[:, :2])).clamp(-0.5, 0.5) * 2
        return s, expert

    def step_fn(step: int):
        s, a_exp = batch()
        a_pol = model.policy(s)
        d_exp = model.disc(torch.cat([s, a_exp], 1))
        d_pol = model.disc(torch.cat([s, a_pol.detach()], 1))
        d_loss = F.binary_cross_entropy_with_logits(
            d_exp, torch.ones_like(d_exp)
        ) + F.binary_cross_entropy_with_logits(d_pol, torch.zeros_like(d_pol))
        g_logit = model.disc(torch.cat([s, a_pol], 1))
        g_loss = F.binary_cross_entropy_with_logits(g_logit, torch.ones_like(g_logit))
        # the policy's gradient only: the discriminator is held fixed for the generator's loss
        grads = torch.autograd.grad(g_loss, pol_params)
        for p, g in zip(pol_params, grads, strict=True):
            p.grad = g if p.grad is None else p.grad + g
        scale = 65536.0 if step == 150 else 1.0
        updates.append(0.0)
        return d_loss + g_loss.detach(), scale * d_loss

    ctx.attach(model, opt)
    for step in range(400):
        logged, total = step_fn(step)
        total.backward()
        for p in pol_params:  # the stale scale multiplied the whole loss, policy included
            if step == 150:
                p.grad.mul_(65536.0)
        ctx.grad_norms.append(grad_norm(model))
        prev = [p.detach().clone() for p in model.parameters()]
        opt.step()
        updates[-1] = float(
            torch.stack(
                [(p.detach() - q).norm() for p, q in zip(model.parameters(), prev, strict=True)]
            ).norm()
        )
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    pre = sorted(updates[100:150])[25]
    post = sorted(updates[170:400])[115]
    g = ctx.grad_norms
    ctx.check("gradient at 150 was >1000x the usual", g[150] > 1000 * sorted(g[100:150])[25])
    ctx.check("updates after the spike shrank >10x for 230 steps", post < 0.1 * pre)


# -- implicit Q-learning on a generated offline dataset --------------------------------------------


class Iql(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Sequential(
            nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )
        self.v = nn.Sequential(
            nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
        )
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)


def _offline_transitions(gen: torch.Generator, batch: int = 128):
    """A point mass pushed by a noisy behaviour policy; reward: minus the distance to a goal."""
    goal = torch.tensor([0.5, -0.3])
    while True:
        s = torch.rand(batch, 2, generator=gen) * 2 - 1
        a = (torch.rand(batch, 2, generator=gen) * 2 - 1) * 0.5
        s2 = (s + a).clamp(-1, 1)
        r = -1.0 - (s2 - goal).norm(dim=1, keepdim=True)  # a per-step cost plus the distance
        yield s, a, r, s2


@scenario(
    "h62_iql_offline_critic",
    "radam",
    "loss_spike",
    where=(),
    diverges=250,
    heldout=True,
    onset=250,
    note="the Polyak update never ran (tau shadowed to 0); the hard sync at 250 jumps the targets",
)
def h62_iql_hard_sync_radam(ctx: Context) -> None:
    """IQL's target critic was meant to track Q by Polyak averaging, but ``tau`` was shadowed
    by a 0 from the config, so the target stayed at its initialisation; at step 250 the
    periodic hard sync (kept "for safety") copied the trained Q into it at once: V's expectile
    targets jump by the whole value scale and the loss spikes, then V and Q re-fit and the
    loss comes back down."""
    gen = seeded(6207)
    model = Iql()
    opt = torch.optim.RAdam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    data = _offline_transitions(gen)
    tau = 0.0  # meant 0.005

    def step_fn(step: int):
        if step == 250:
            model.q_target.load_state_dict(model.q.state_dict())
        s, a, r, s2 = next(data)
        with torch.no_grad():
            tq = model.q_target(torch.cat([s, a], 1))
            target = r + 0.9 * model.v(s2)
        diff = tq - model.v(s)
        v_loss = (torch.where(diff > 0, 0.7, 0.3) * diff.pow(2)).mean()
        q_loss = F.mse_loss(model.q(torch.cat([s, a], 1)), target)
        loss = v_loss + q_loss
        return loss, loss

    ctx.attach(model, opt)
    for step in range(400):
        logged, total = step_fn(step)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for pt, p in zip(model.q_target.parameters(), model.q.parameters(), strict=True):
                pt.mul_(1 - tau).add_(tau * p)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    pre = max(ctx.losses[230:250])
    ctx.check("loss spiked at 250 (>5x the last 20 steps)", ctx.losses[250] > 5 * pre)
    ctx.check("loss came back (last 20 < 2x pre-spike)", sum(ctx.losses[-20:]) / 20 < 2 * pre)


# -- a learned dynamics model for MPC --------------------------------------------------------------


def _pendulum(gen: torch.Generator, batch: int = 128):
    """Transitions of a damped pendulum under random torques: (theta, omega, u) -> delta."""
    while True:
        th = (torch.rand(batch, 1, generator=gen) * 2 - 1) * math.pi
        om = (torch.rand(batch, 1, generator=gen) * 2 - 1) * 2
        u = (torch.rand(batch, 1, generator=gen) * 2 - 1) * 2
        dt = 0.1
        d_om = dt * (-9.8 * torch.sin(th) - 0.1 * om + u)
        d_th = dt * (om + d_om)
        yield torch.cat([torch.sin(th), torch.cos(th), om, u], 1), torch.cat([d_th, d_om], 1) * 5


@scenario(
    "h62_mpc_learned_dynamics",
    "asgd",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    onset=0,
    note="a hand-written L2 term with the wrong sign: the weights grow, the loss climbs slowly",
)
def h62_mpc_dynamics_l2_sign_asgd(ctx: Context) -> None:
    """The dynamics model's hand-written L2 regulariser was added with the wrong sign
    (``loss - wd * ||w||^2``): after the fit converges, the "penalty" keeps paying the
    optimizer to grow the weights, slowly at first and then faster, and the prediction loss
    MPC relies on climbs without limit."""
    gen = seeded(6208)
    model = nn.Sequential(
        nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)
    )
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    wd = 0.05
    norms: list[float] = []

    def l2_wrong_sign(step: int, loss: torch.Tensor) -> torch.Tensor:
        l2 = sum(p.pow(2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        norms.append(float(l2.detach()))
        return loss - wd * l2

    fit(
        ctx,
        model,
        opt,
        _pendulum(gen),
        400,
        loss_fn=F.mse_loss,
        extra_loss=l2_wrong_sign,
        classifier=False,
    )
    low = min(ctx.losses)
    at = ctx.losses.index(low)
    ctx.check("loss fell first", low < 0.3 * ctx.losses[0])
    ctx.check(
        "then climbed >5x from its minimum", sum(ctx.losses[-10:]) / 10 > 5 * low and at < 350
    )
    ctx.check("weight norm grew >3x", norms[-1] > 3 * norms[at])


# -- an inverse-dynamics model under fp16 autocast -------------------------------------------------


class InverseDynamics(nn.Module):
    """(q, qdot, measured qddot) of a 4-joint arm -> the joint torques that produced them."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(12, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.torque_head = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.torque_head(self.trunk(x))


def _arm_transitions(gen: torch.Generator, batch: int = 64):
    """Torques logged in mN.m (raw, up to ~1.2e5) with the joint states they produced."""
    inertia = torch.tensor([2.0, 1.5, 0.8, 0.3])
    while True:
        q = (torch.rand(batch, 4, generator=gen) * 2 - 1) * math.pi
        qd = torch.randn(batch, 4, generator=gen)
        tau = torch.randn(batch, 4, generator=gen) * 30.0  # N.m
        qdd = (tau - 5.0 * torch.sin(q) - 0.5 * qd) / inertia
        x = torch.cat([q, qd, qdd + 0.05 * torch.randn(batch, 4, generator=gen)], 1)
        yield x, tau * 1000.0  # mN.m


LR = 1e-2


@scenario(
    "h62_inverse_dynamics_arm",
    "adam",
    "amp_overflow",
    where="torque_head",
    diverges="auto",
    heldout=True,
    note="torque targets in raw mN.m under fp16 autocast: the head's outputs pass 65504",
)
def h62_invdyn_raw_torque_amp_adam(ctx: Context) -> None:
    """The torque labels were left in the logger's mN.m (up to ~1.2e5) instead of being
    standardised, and the model trains under fp16 autocast with a GradScaler: as the fit
    improves, the torque head's outputs grow towards the labels and the largest pass fp16's
    65504, so the head's activations come out inf, the loss is inf and the scaler skips every
    step from then on."""
    gen = seeded(6209)
    model = InverseDynamics()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    scaler = torch.amp.GradScaler("cpu")
    head_max: list[float] = []
    model.torque_head.register_forward_hook(
        lambda m, i, o: head_max.append(float(o.detach().float().abs().max()))
    )
    fit(
        ctx,
        model,
        opt,
        _arm_transitions(gen),
        300,
        loss_fn=F.mse_loss,
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    broke = next((i for i, v in enumerate(ctx.losses) if not _finite(v)), None)
    ctx.check("the loss went inf", broke is not None)
    if broke is not None:
        ctx.check("the head's fp16 output overflowed at the break", head_max[broke] == float("inf"))
        ctx.check("finite before the break", all(_finite(v) for v in ctx.losses[:broke]))
        ctx.check(
            "the head's outputs grew from <1e3 to >3e4 before",
            head_max[0] < 1e3 and max(head_max[:broke]) > 3e4,
        )
        ctx.check(
            "inf on most steps after",
            sum(not _finite(v) for v in ctx.losses[broke:]) > 0.8 * len(ctx.losses[broke:]),
        )


# -- Hugging Face models from configs --------------------------------------------------------------


class Aimv2Classifier(nn.Module):
    """An AIMv2 vision encoder (from a config) with mean pooling and a linear head."""

    def __init__(self, logit_temperature: float = 1.0, divide: bool = False) -> None:
        super().__init__()
        from transformers import Aimv2VisionConfig, Aimv2VisionModel

        config = Aimv2VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=1,
            image_size=16,
            patch_size=4,
        )
        self.backbone = Aimv2VisionModel(config)
        self.head = nn.Linear(32, 10)
        self.t = logit_temperature
        self.divide = divide

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.backbone(pixel_values=x).last_hidden_state.mean(1)
        logits = self.head(pooled)
        return logits / self.t if self.divide else logits * self.t


@scenario(
    "h62_hf_aimv2_digits",
    "sg_lion",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="a 0.05 logit multiplier applied as a division: logits 400x, softmax one-hot",
)
def h62_aimv2_temperature_divided_lion(ctx: Context) -> None:
    """The head's logit multiplier (0.05, to keep the early softmax soft) was applied as a
    division: the logits are 20x too large instead of 20x too small. Lion fits the training
    digits (a small fine-tuning set, many epochs) and the margins, multiplied by 20, saturate
    float32's softmax: most rows' target probability is exactly 1.0."""
    gen = seeded(6210)
    model = Aimv2Classifier(0.05, divide=True)
    opt = sgo.Lion(model.parameters(), lr=3e-3, fused=False)
    x, y = next(_digit_images(gen, 128))  # a small fine-tuning set, many epochs

    def epochs():
        while True:
            order = torch.randperm(128, generator=gen)
            for i in range(0, 128, 64):
                yield x[order[i : i + 64]], y[order[i : i + 64]]

    def cosine(step: int) -> None:
        opt.param_groups[0]["lr"] = 3e-4 + 0.5 * (3e-3 - 3e-4) * (
            1 + math.cos(math.pi * step / 800)
        )

    fit(ctx, model, opt, epochs(), 800, before=cosine)
    with torch.no_grad():
        logits = model(x)
    frac = collapsed_fraction(logits, y)
    ctx.check("most rows collapsed (p_target == 1.0)", frac >= 0.5)
    ctx.check("the loss fell near zero", sum(ctx.losses[-20:]) / 20 < 0.05)


class PixtralClassifier(nn.Module):
    """A Pixtral vision encoder (from a config; images packed in one sequence) with a head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import PixtralVisionConfig, PixtralVisionModel

        config = PixtralVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=1,
            image_size=16,
            patch_size=4,
            head_dim=16,
        )
        self.backbone = PixtralVisionModel(config)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        h = self.backbone(pixel_values=x, image_sizes=[(16, 16)] * b).last_hidden_state
        return self.head(h.reshape(b, 16, -1).mean(1))


@scenario(
    "h62_hf_pixtral_digits",
    "sg_grams",
    "update_ratio_out_of_range",
    where="backbone.patch_conv",
    diverges=None,
    heldout=True,
    onset=60,
    note="patch embedding frozen for warm-up, unfrozen at 60 but never in the optimizer",
)
def h62_pixtral_unfrozen_not_in_optimizer_grams(ctx: Context) -> None:
    """The patch embedding was frozen for a 60-step warm-up of the rest, and the optimizer was
    built from the parameters with ``requires_grad`` at that time; at step 60 the warm-up ends
    and the patch embedding is unfrozen, so it gets gradients from then on, but it was never in
    the optimizer: its update/weight ratio is 0 while every other layer trains."""
    gen = seeded(6211)
    model = PixtralClassifier()
    model.backbone.patch_conv.requires_grad_(False)
    opt = sgo.Grams([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    frozen_at: list[torch.Tensor] = []
    grads: list[float] = []

    w = model.backbone.patch_conv.weight

    def unfreeze(step: int) -> None:
        if step == 60:
            model.backbone.patch_conv.requires_grad_(True)
            w.register_hook(lambda g: grads.append(float(g.norm())))
            frozen_at.append(w.detach().clone())

    fit(ctx, model, opt, _digit_images(gen, 64), 160, before=unfreeze)
    ctx.check(
        "patch_conv unchanged after the unfreeze",
        torch.equal(frozen_at[0], model.backbone.patch_conv.weight.detach()),
    )
    ctx.check("patch_conv had gradients after the unfreeze", len(grads) >= 90 and min(grads) > 0)
    ctx.check("the rest trained (loss fell)", sum(ctx.losses[-10:]) < 0.9 * sum(ctx.losses[:10]))


def _tiny_llava():
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_channels=1,
        image_size=16,
        patch_size=4,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=63,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        image_seq_length=16,
        projector_hidden_act="gelu",
    )
    return LlavaForConditionalGeneration(config)


@scenario(
    "h62_hf_llava_digit_vqa",
    "sg_ademamix",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="z-loss added with the wrong sign: log Z of the LM head runs away",
)
def h62_llava_zloss_sign_ademamix(ctx: Context) -> None:
    """A z-loss (2e-2 * logsumexp^2 of the answer logits, to keep log Z near 0) was added with
    the wrong sign: the optimizer is paid to grow log Z, and it does, through the LM head and
    the final norm, faster and faster (the reward's gradient grows with log Z); the answer
    cross-entropy (what is logged) sees little of it at first, a shift common to every logit
    leaving the softmax unchanged, then climbs as the growing logits stop being a common
    shift."""
    gen = seeded(6212)
    model = _tiny_llava()
    opt = sgo.AdEMAMix(model.parameters(), lr=3e-3)
    data = _digit_images(gen, 32)
    question = torch.tensor([10, 11, 12])  # "which digit is it"
    log_z: list[float] = []

    def step_fn(step: int):
        x, y = next(data)
        b = x.shape[0]
        ids = torch.cat([torch.full((b, 16), 63), question.expand(b, -1)], 1)
        logits = model(input_ids=ids, pixel_values=x).logits[:, -1]
        lse = torch.logsumexp(logits.float(), -1)
        log_z.append(float(lse.detach().mean()))
        ce = F.cross_entropy(logits.float(), y)
        return ce, ce - 2e-2 * lse.pow(2).mean()

    _loop(ctx, model, opt, 250, step_fn)
    start = sum(log_z[:10]) / 10
    end = sum(log_z[-10:]) / 10
    ctx.check("log Z grew from ~4 to >10x", start < 6 and end > 10 * start)
    ctx.check(
        "the answer loss climbed at the end (>2x its minimum)",
        sum(ctx.losses[-5:]) / 5 > 2 * min(ctx.losses),
    )


class OwlDetector(nn.Module):
    """Per-image standardisation of the camera frame, then an OWL-ViT detector (from a
    config) queried with two fixed text prompts ("a square", "a ring")."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import OwlViTConfig, OwlViTForObjectDetection

        config = OwlViTConfig(
            text_config=dict(
                vocab_size=64,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=8,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=0,
            ),
            vision_config=dict(
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_channels=3,
                image_size=32,
                patch_size=8,
            ),
            projection_dim=32,
        )
        self.normalize = PerImageStandardize()
        self.detector = OwlViTForObjectDetection(config)
        self.register_buffer("queries", torch.tensor([[1, 5, 6, 2], [1, 7, 8, 2]]))

    def forward(self, img: torch.Tensor):
        b = img.shape[0]
        out = self.detector(
            input_ids=self.queries.repeat(b, 1),
            attention_mask=torch.ones(2 * b, 4, dtype=torch.long),
            pixel_values=self.normalize(img),
        )
        return out.logits, out.pred_boxes


class PerImageStandardize(nn.Module):
    """(x - mean) / std per image (no epsilon: the camera "never" sends a flat frame)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((1, 2, 3), keepdim=True)
        std = x.std((1, 2, 3), keepdim=True)
        return (x - mean) / std


def _square_scenes(gen: torch.Generator, batch: int = 6):
    """A bright square (class 0) on a noisy background; the target box in cxcywh."""
    while True:
        img = 0.3 + 0.1 * torch.rand(batch, 3, 32, 32, generator=gen)
        boxes = torch.zeros(batch, 4)
        for i in range(batch):
            s = int(torch.randint(6, 12, (1,), generator=gen))
            x0, y0 = (int(v) for v in torch.randint(0, 32 - s, (2,), generator=gen))
            img[i, :, y0 : y0 + s, x0 : x0 + s] = 1.0
            boxes[i] = torch.tensor([(x0 + s / 2) / 32, (y0 + s / 2) / 32, s / 32, s / 32])
        yield img, boxes


@scenario(
    "h62_hf_owlvit_detector",
    "sg_stablespam",
    "nonfinite",
    where="normalize",
    diverges=70,
    heldout=True,
    onset=70,
    note="a flat (dropped-out) camera frame: per-image std 0, 0/0 = NaN in the standardiser",
)
def h62_owlvit_flat_frame_stablespam(ctx: Context) -> None:
    """At step 70 the camera driver delivers one flat frame (every pixel the same grey, a
    dropped frame): the per-image standardisation has no epsilon, its std is 0 and 0/0 gives
    NaN in every pixel of that image; the NaN flows through the detector into the loss and,
    through the update, into every weight."""
    gen = seeded(6213)
    model = OwlDetector()
    opt = sgo.StableSPAM(model.parameters(), lr=1e-3)
    data = _square_scenes(gen)
    produced: list[bool] = []
    model.normalize.register_forward_hook(
        lambda m, i, o: produced.append(
            bool(torch.isfinite(i[0]).all() and not torch.isfinite(o).all())
        )
    )

    def step_fn(step: int):
        img, boxes = next(data)
        if step == 70:
            img = img.clone()
            img[3] = 0.5
        logits, pred = model(img)
        # the patch whose centre is nearest the box centre should say "a square" (query 0)
        centres = (torch.arange(4) + 0.5) / 4
        col = (boxes[:, :1] - centres).abs().argmin(1)
        row = (boxes[:, 1:2] - centres).abs().argmin(1)
        best = row * 4 + col
        target = torch.zeros_like(logits)
        target[torch.arange(len(best)), best, 0] = 1.0
        cls = F.binary_cross_entropy_with_logits(logits, target)
        box = F.l1_loss(pred[torch.arange(len(best)), best], boxes)
        loss = cls + box
        return loss, loss

    _loop(ctx, model, opt, 100, step_fn)
    finite = [_finite(v) for v in ctx.losses]
    ctx.check("finite until 70, not at 70", all(finite[:70]) and not finite[70])
    ctx.check(
        "the standardiser made the NaN from a finite input at 70",
        produced[70] and not any(produced[:70]),
    )
    ctx.check("loss fell before", sum(ctx.losses[50:70]) < 0.8 * sum(ctx.losses[:20]))


def _tiny_metaclip2():
    from transformers import MetaClip2Config, MetaClip2Model

    config = MetaClip2Config(
        text_config=dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=8,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_channels=1,
            image_size=16,
            patch_size=4,
        ),
        projection_dim=32,
    )
    return MetaClip2Model(config)


@scenario(
    "h62_hf_metaclip2_contrastive",
    "adadelta",
    "healthy",
    heldout=True,
    note="contrastive digits and generated captions under fp16 autocast",
)
def h62_metaclip2_healthy_amp_adadelta(ctx: Context) -> None:
    """MetaCLIP-2 (tiny, from a config) trained contrastively on digit images and captions
    ("a photo of the digit <d>", one image per digit in each batch of 10) under fp16
    autocast with Adadelta: the symmetric InfoNCE loss falls."""
    gen = seeded(6214)
    model = _tiny_metaclip2()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    xs, ys = next(_digit_images(gen, 1024))
    by_digit = [xs[ys == d] for d in range(10)]

    def step_fn(step: int):
        x = torch.stack(
            [
                by_digit[d][int(torch.randint(len(by_digit[d]), (1,), generator=gen))]
                for d in range(10)
            ]
        )
        ids = torch.stack([torch.tensor([1, 20, 21, 22, 30 + d, 2]) for d in range(10)])
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(input_ids=ids, pixel_values=x, attention_mask=torch.ones_like(ids))
        logits = out.logits_per_image.float()
        target = torch.arange(10)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
        return loss, loss

    _loop(ctx, model, opt, 200, step_fn)
    first = sum(ctx.losses[:10]) / 10
    last = sum(ctx.losses[-20:]) / 20
    ctx.check("contrastive loss fell by a third", last < 0.67 * first)
    ctx.check("finite throughout", all(_finite(v) for v in ctx.losses))
