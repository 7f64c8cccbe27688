"""Held-out scenarios, set 88 (``h88_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face CLIPSeg, OWL-ViT, MetaCLIP 2 and X-CLIP vision encoders on upsampled
digits and a CLAP audio encoder on generated tone spectrograms (all from tiny configs), a
Fourier-feature coordinate MLP fitting a generated image, a volume renderer on generated 1-D
rays, a physics-informed heat-equation solver, a leapfrog integrator net with a learned force,
a differentiable sorting network, a graph-attention traffic forecaster on a generated road
graph, an E(n)-invariant point-cloud classifier, a VAE on generated molecular fingerprints, a
Kalman-net hybrid filter on generated tracks, an MPC policy trained by imitation and a continuous
normalising flow with a Hutchinson trace.

Optimizers: AdamW, Lion, NAdam, Adadelta, Grams, Adam, RMSprop, SGD with momentum, SGD,
AdaBelief, ASGD, RAdam, StableSPAM, Adagrad, AdEMAMix, Adamax.
"""

from __future__ import annotations

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
    ramp,
    scenario,
    seeded,
)


def _loop(ctx: Context, model: nn.Module, opt, steps: int, step_fn, *, before=None) -> None:
    """``step_fn(step)`` returns (loss to record, loss to backpropagate)."""
    ctx.attach(model, opt)
    for step in range(steps):
        if before is not None:
            before(step)
        loss, total = step_fn(step)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# -- Hugging Face encoders (tiny configs, no download) -------------------------------------------


class HFImageClassifier(nn.Module):
    """A Hugging Face vision encoder on 8x8 digits upsampled to 16x16 RGB, plus a linear head."""

    def __init__(self, enc: nn.Module, dim: int, classes: int = 10) -> None:
        super().__init__()
        self.enc = enc
        self.head = nn.Linear(dim, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear", align_corners=False)
        img = (img - 0.3) / 0.4
        return self.enc(pixel_values=img.expand(-1, 3, -1, -1)).pooler_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _clip_like_kwargs(dim: int = 32) -> dict:
    return dict(
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=4,
        attention_dropout=0.0,
    )


@scenario(
    "h88_hf_clipseg_vision_digits",
    "adamw",
    "attention_logit_growth",
    where="enc.encoder.layers.0.self_attn",
    diverges=None,
    heldout=True,
    note="a port of the attention drops the 1/sqrt(d) scale; high LR, no weight decay",
    onset=0,
)
def h88_clipseg_unscaled_attention(ctx: Context) -> None:
    """A CLIPSeg vision encoder whose attention was re-implemented for a fused kernel and lost
    its 1/sqrt(head_dim) scale (scale = 1.0), trained with AdamW at a high LR and no weight
    decay: the query/key weights grow and the pre-softmax logits run away."""
    from transformers import CLIPSegVisionConfig, CLIPSegVisionModel

    gen = seeded(8801)
    enc = CLIPSegVisionModel(CLIPSegVisionConfig(**_clip_like_kwargs()))
    model = HFImageClassifier(enc, 32)
    attn = enc.encoder.layers[0].self_attn
    attn.scale = 1.0  # the bug
    seen: dict[str, torch.Tensor] = {}
    attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o.detach()))
    attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o.detach()))
    maxlogit: list[float] = []
    entropy: list[float] = []

    def record(step: int) -> None:
        if "q" in seen:
            b, t, d = seen["q"].shape
            q = seen["q"].reshape(b, t, 2, d // 2).transpose(1, 2)
            k = seen["k"].reshape(b, t, 2, d // 2).transpose(1, 2)
            logits = q @ k.transpose(-1, -2)  # the scale the bug uses: 1.0
            p = logits.softmax(-1)
            maxlogit.append(float(logits.abs().max()))
            entropy.append(float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean()))

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    fit(ctx, model, opt, digit_batches(gen, 64), 300, before=record)
    ctx.check("attention logits grew over 10x", maxlogit[-1] > 10 * maxlogit[0])
    ctx.check("attention entropy collapsed below a quarter", entropy[-1] < 0.25 * entropy[0])


@scenario(
    "h88_hf_owlvit_vision_digits",
    "sg_lion",
    "output_logit_divergence",
    where="head",
    diverges=None,
    heldout=True,
    note="z-loss added with the wrong sign when switched on at step 120",
    onset=120,
)
def h88_owlvit_zloss_wrong_sign(ctx: Context) -> None:
    """An OWL-ViT vision encoder with a digit head trained with Lion; at step 120 a z-loss
    (to keep log Z near 0) is switched on, but with the sign flipped: it rewards a large log Z,
    and the head's log-partition climbs steadily."""
    from transformers import OwlViTVisionConfig, OwlViTVisionModel

    gen = seeded(8802)
    enc = OwlViTVisionModel(OwlViTVisionConfig(**_clip_like_kwargs()))
    model = HFImageClassifier(enc, 32)
    opt = sgo.Lion(model.parameters(), lr=1e-3)
    batches = digit_batches(gen, 64)
    log_z: list[float] = []

    def step_fn(step: int):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        lse = torch.logsumexp(logits, -1)
        log_z.append(float(lse.detach().mean()))
        loss = F.cross_entropy(logits, y)
        if step >= 120:
            return loss, loss - 1e-2 * lse.pow(2).mean()  # the sign typo (meant +1e-2)
        return loss, loss

    _loop(ctx, model, opt, 320, step_fn)
    before = max(log_z[100:120])
    ctx.check("log Z climbed by over 5 after the z-loss came on", log_z[-1] > before + 5)
    ctx.check("and was still climbing at the end", log_z[-1] > log_z[-60] + 1)


@scenario(
    "h88_hf_metaclip2_vision_digits",
    "nadam",
    "update_ratio_out_of_range",
    where="head",
    diverges=None,
    heldout=True,
    note="per-group LR typo: head lr 1e-1 instead of 1e-3",
    onset=0,
)
def h88_metaclip2_head_lr_typo(ctx: Context) -> None:
    """A MetaCLIP 2 vision encoder fine-tuned with NAdam in two parameter groups; the head's
    group got lr=1e-1 (meant 1e-3), so each of its steps moves its weights by about their own
    size while the encoder moves by a fraction of a percent."""
    from transformers import MetaClip2VisionConfig, MetaClip2VisionModel

    gen = seeded(8803)
    enc = MetaClip2VisionModel(MetaClip2VisionConfig(**_clip_like_kwargs()))
    model = HFImageClassifier(enc, 32)
    opt = torch.optim.NAdam(
        [
            {"params": model.enc.parameters(), "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 1e-1},
        ]
    )
    ratios: dict[str, list[float]] = {"head": [], "enc": []}
    prev: dict[str, torch.Tensor] = {}
    watched = {"head": model.head.weight, "enc": enc.encoder.layers[0].mlp.fc1.weight}

    def before(step: int) -> None:
        for k, p in watched.items():
            if k in prev:
                ratios[k].append(float((p.detach() - prev[k]).norm() / p.detach().norm()))
            prev[k] = p.detach().clone()

    fit(ctx, model, opt, digit_batches(gen, 64), 250, before=before)
    med = {k: sorted(v)[len(v) // 2] for k, v in ratios.items()}
    ctx.check("head update/weight ratio above 0.05", med["head"] > 0.05)
    ctx.check("encoder update/weight ratio below 0.01", med["enc"] < 0.01)


@scenario("h88_hf_xclip_vision_digits", "adadelta", "healthy", heldout=True)
def h88_xclip_digits_healthy(ctx: Context) -> None:
    from transformers import XCLIPVisionConfig, XCLIPVisionModel

    gen = seeded(8804)
    cfg = XCLIPVisionConfig(
        **_clip_like_kwargs(),
        num_frames=1,
        mit_hidden_size=32,
        mit_intermediate_size=64,
        mit_num_hidden_layers=1,
        mit_num_attention_heads=2,
    )
    model = HFImageClassifier(XCLIPVisionModel(cfg), 32)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, digit_batches(gen, 64), 250)
    ctx.check("loss went down", sum(ctx.losses[-20:]) < 0.5 * sum(ctx.losses[:20]))


def tone_batches(gen: torch.Generator, batch: int = 32, classes: int = 6, bins: int = 32):
    """Log-mel-like 32x32 spectrograms of a tone whose pitch band gives the class, in noise."""
    mel = torch.arange(float(bins))
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        centre = 4 + 4.5 * y.float() + 0.5 * torch.randn(batch, generator=gen)
        band = torch.exp(-0.5 * ((mel[None] - centre[:, None]) / 1.0) ** 2)  # (b, mel)
        env = torch.rand(batch, bins, generator=gen).cumsum(1) / (bins / 2)  # a slow onset
        spec = env.clamp(max=1.0)[:, :, None] * band[:, None, :]
        spec = spec + 0.3 * torch.randn(batch, bins, bins, generator=gen)
        yield spec[:, None], y


class ClapClassifier(nn.Module):
    def __init__(self, enc: nn.Module, dim: int, classes: int = 6) -> None:
        super().__init__()
        self.enc = enc
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(input_features=x).pooler_output)


@scenario("h88_hf_clap_audio_tones", "sg_grams", "healthy", heldout=True)
def h88_clap_tones_healthy(ctx: Context) -> None:
    from transformers import ClapAudioConfig, ClapAudioModel

    gen = seeded(8805)
    cfg = ClapAudioConfig(
        hidden_size=32,
        depths=[1, 1],
        num_attention_heads=[2, 2],
        patch_embeds_hidden_size=16,
        spec_size=32,
        window_size=4,
        num_mel_bins=32,
        patch_stride=[4, 4],
        patch_size=4,
        enable_fusion=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    model = ClapClassifier(ClapAudioModel(cfg), 32)
    opt = sgo.Grams(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, tone_batches(gen), 200)
    ctx.check("loss went down", sum(ctx.losses[-20:]) < 0.5 * sum(ctx.losses[:20]))


# -- science and control, hand-written ------------------------------------------------------------


def _image(n: int = 32) -> torch.Tensor:
    """A generated grey image: two Gaussian blobs and a ring on a gradient."""
    g = torch.linspace(-1, 1, n)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    img = 0.3 * (xx + 1) / 2
    img = img + torch.exp(-((xx - 0.4) ** 2 + (yy + 0.3) ** 2) / 0.05)
    img = img + 0.7 * torch.exp(-((xx + 0.5) ** 2 + (yy - 0.4) ** 2) / 0.02)
    img = img + 0.5 * torch.exp(-(((xx**2 + yy**2).sqrt() - 0.6) ** 2) / 0.005)
    return img


class FourierFeatureMLP(nn.Module):
    def __init__(self, features: int = 64, scale: float = 6.0, width: int = 64) -> None:
        super().__init__()
        self.register_buffer("B", scale * torch.randn(2, features))
        self.net = nn.Sequential(
            nn.Linear(2 * features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, 1),
        )

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        proj = 2 * math.pi * xy @ self.B
        return self.net(torch.cat([proj.sin(), proj.cos()], -1)).squeeze(-1)


@scenario(
    "h88_fourier_feature_image_fit",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="one step's loss left multiplied by a 65536 loss scale (no unscale); beta2=0.9999",
    onset=120,
)
def h88_fourier_image_unscaled_step(ctx: Context) -> None:
    """A Fourier-feature MLP fitting a generated image with Adam (beta2=0.9999, as in NeRF-style
    set-ups). At step 120 a leftover fp16 loss-scale path multiplies the loss by 65536 without
    unscaling the gradients: one gigantic gradient fills every second moment, and for the rest
    of the run the steps are tiny and the fit stalls."""
    gen = seeded(8806)
    n = 48
    img = _image(n)
    model = FourierFeatureMLP(scale=10.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4, betas=(0.9, 0.9999))
    moves: list[float] = []
    prev = [p.detach().clone() for p in model.parameters()]

    def step_fn(step: int):
        nonlocal prev
        cur = [p.detach().clone() for p in model.parameters()]
        moves.append(float(sum((a - b).norm() ** 2 for a, b in zip(cur, prev, strict=True)) ** 0.5))
        prev = cur
        idx = torch.randint(0, n * n, (256,), generator=gen)
        xy = torch.stack([idx // n, idx % n], -1).float() / (n - 1)
        loss = F.mse_loss(model(xy), img.reshape(-1)[idx])
        return loss, loss * 65536.0 if step == 120 else loss

    _loop(ctx, model, opt, 450, step_fn)
    before = sum(moves[80:120]) / 40
    after = sum(moves[160:300]) / 140
    ctx.check("parameter steps shrank 10x after the step-120 gradient", after < before / 10)
    ctx.check("the loss was falling before", ctx.losses[119] < 0.7 * ctx.losses[0])
    late = sum(ctx.losses[-25:]) / 25
    ctx.check("no progress in the 300 steps after", late > 0.7 * sum(ctx.losses[95:120]) / 25)


class RayField(nn.Module):
    """Density (ReLU, as in NeRF) and colour at a sample point (t along the ray, ray height)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())
        self.sigma = nn.Linear(width, 1)
        self.rgb = nn.Linear(width, 1)

    def forward(self, pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(pts)
        return F.relu(self.sigma(h)).squeeze(-1), torch.sigmoid(self.rgb(h)).squeeze(-1)


class VolumeRender(nn.Module):
    """Alpha compositing along the ray; expected depth normalised by the accumulated weight
    (no epsilon: a ray whose density is exactly zero everywhere gives 0/0)."""

    def forward(self, sigma: torch.Tensor, rgb: torch.Tensor, t: torch.Tensor):
        delta = t[1] - t[0]
        alpha = 1 - torch.exp(-sigma * delta * 10)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
        w = trans * alpha
        acc = w.sum(1)
        colour = (w * rgb).sum(1)
        depth = (w * t).sum(1) / acc
        return colour, depth, acc


class Renderer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.field = RayField()
        self.render = VolumeRender()

    def forward(self, heights: torch.Tensor, t: torch.Tensor):
        pts = torch.stack(
            [t[None].expand(len(heights), -1), heights[:, None].expand(-1, len(t))], -1
        )
        sigma, rgb = self.field(pts)
        return self.render(sigma, rgb, t)


def _rays(heights: torch.Tensor):
    """A disc of radius 0.5 centred at t=0.6 on 1-D rays at given heights: first-hit depth,
    colour by height; rays above the disc see nothing (colour 0, no depth)."""
    hit = heights.abs() < 0.5
    depth = torch.where(hit, 0.6 - (0.25 - heights.clamp(-0.5, 0.5) ** 2).sqrt(), 0.0)
    colour = torch.where(hit, 0.5 + 0.8 * heights, 0.0)
    return colour, depth, hit.float()


@scenario(
    "h88_volume_render_1d_rays",
    "rmsprop",
    "nonfinite",
    where="render",
    diverges="auto",
    heldout=True,
    note="depth = sum(w t) / sum(w) without eps; empty rays join the batches at step 150",
    onset=150,
)
def h88_volume_render_empty_ray(ctx: Context) -> None:
    """A volume renderer (density + colour field, alpha compositing) fitted to generated 1-D
    rays through a disc with RMSprop. At first the sampler only draws rays that hit the disc;
    from step 150 it draws the whole frame, and the field learns zero density in the empty
    region: a ray whose ReLU density is zero everywhere makes the depth normalisation 0/0."""
    gen = seeded(8807)
    model = Renderer()
    t = torch.linspace(0.0, 1.2, 48)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    first_bad: dict[str, int] = {}

    def watch(name: str):
        def hook(m, i, o):
            outs = o if isinstance(o, tuple) else (o,)
            if any(not torch.isfinite(z).all() for z in outs) and name not in first_bad:
                first_bad[name] = len(ctx.losses)

        return hook

    model.field.register_forward_hook(watch("field"))
    model.render.register_forward_hook(watch("render"))

    def step_fn(step: int):
        span = 0.45 if step < 150 else 1.0
        heights = (torch.rand(128, generator=gen) * 2 - 1) * span
        colour, depth, hit = _rays(heights)
        c, d, _ = model(heights, t)
        loss = F.mse_loss(c, colour) + (hit * (d - depth) ** 2).mean()
        return loss, loss

    _loop(ctx, model, opt, 400, step_fn)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite for the first 150 steps", all(finite[:150]))
    ctx.check("the loss went NaN after the empty rays came", not all(finite))
    ctx.check(
        "the first non-finite value came out of the renderer, not the field",
        "render" in first_bad and first_bad.get("field", 10**9) > first_bad["render"],
    )


class HeatPINN(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 1)
        )

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        return self.net(xt).squeeze(-1)


def _heat_loss(model: HeatPINN, gen: torch.Generator, alpha: float = 0.1) -> torch.Tensor:
    xt = torch.rand(128, 2, generator=gen).requires_grad_(True)
    u = model(xt)
    du = torch.autograd.grad(u.sum(), xt, create_graph=True)[0]
    u_xx = torch.autograd.grad(du[:, 0].sum(), xt, create_graph=True)[0][:, 0]
    residual = du[:, 1] - alpha * u_xx
    x0 = torch.rand(64, generator=gen)
    ic = model(torch.stack([x0, torch.zeros_like(x0)], -1)) - torch.sin(math.pi * x0)
    tb = torch.rand(32, generator=gen)
    bc = torch.cat(
        [
            model(torch.stack([torch.zeros_like(tb), tb], -1)),
            model(torch.stack([torch.ones_like(tb), tb], -1)),
        ]
    )
    return residual.pow(2).mean() + ic.pow(2).mean() + bc.pow(2).mean()


@scenario(
    "h88_pinn_heat_equation_1d",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="warm-up ramps to lr 3.0 (meant 3e-2); onset where it passes 3e-2",
    onset=130,
)
def h88_pinn_heat_warmup_typo(ctx: Context) -> None:
    """A physics-informed network for u_t = 0.1 u_xx on [0,1] with sin(pi x) initial data and
    zero boundaries, SGD with momentum and a geometric warm-up whose end value has a typo
    (3.0 instead of 3e-2): once the LR passes the curvature limit the loss oscillates and
    blows up."""
    gen = seeded(8808)
    model = HeatPINN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    lrs: list[float] = []

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = ramp(step, 1e-3, 3.0, 300)
        lrs.append(opt.param_groups[0]["lr"])

    _loop(ctx, model, opt, 320, lambda s: (lambda l: (l, l))(_heat_loss(model, gen)), before=before)
    onset = next(i for i, v in enumerate(lrs) if v > 3e-2)
    ctx.check("onset as declared", abs(onset - 130) <= 3)
    fin = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check("trained first", min(ctx.losses[:onset]) < 0.5 * ctx.losses[0])
    ctx.check(
        "blew up after the LR passed its intended end",
        len(fin) < len(ctx.losses) or max(fin[onset:]) > 100 * min(fin[:onset]),
    )


class LeapfrogNet(nn.Module):
    """Rolls out q'' = force(q) with the leapfrog (velocity Verlet) integrator."""

    def __init__(self, dt: float, width: int = 32) -> None:
        super().__init__()
        self.dt = dt
        self.force = nn.Sequential(nn.Linear(1, width), nn.Tanh(), nn.Linear(width, 1))

    def forward(self, q: torch.Tensor, p: torch.Tensor, steps: int) -> torch.Tensor:
        out = []
        f = self.force(q)
        for _ in range(steps):
            p = p + 0.5 * self.dt * f
            q = q + self.dt * p
            f = self.force(q)
            p = p + 0.5 * self.dt * f
            out.append(q)
        return torch.cat(out, -1)


@scenario(
    "h88_leapfrog_force_net",
    "sgd",
    "exploding_gradients",
    where=("force", "force.0", "force.2"),
    diverges="auto",
    heldout=True,
    note="30-step leapfrog rollout at the logging step dt=0.45, default init, no clipping",
    onset=0,
)
def h88_leapfrog_coarse_dt(ctx: Context) -> None:
    """A symplectic (leapfrog) integrator whose force is a small net, fitted to trajectories of
    a stiff spring (k=25) logged at dt=0.45 and integrated at that same coarse step, no
    clipping: the unrolled 30-step map of the untrained force field is already expanding, and
    plain SGD makes it more so; the gradient through the rollout grows step after step."""
    gen = seeded(8809)
    dt, k, horizon = 0.45, 25.0, 30
    model = LeapfrogNet(dt)
    opt = torch.optim.SGD(model.parameters(), lr=2e-3)
    times = dt * torch.arange(1, horizon + 1)

    def step_fn(step: int):
        amp = torch.rand(64, 1, generator=gen) + 0.2
        phase = torch.rand(64, 1, generator=gen) * 2 * math.pi
        w = math.sqrt(k)
        q0, p0 = amp * torch.cos(phase), -amp * w * torch.sin(phase)
        target = amp * torch.cos(w * times[None] + phase)
        pred = model(q0, p0, horizon)
        loss = F.mse_loss(pred, target)
        return loss, loss

    _loop(ctx, model, opt, 300, step_fn)
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    ctx.check("gradient norm grew over 1000x", max(g) > 1000 * g[0] or len(g) < len(ctx.grad_norms))
    with torch.no_grad():
        q = model(torch.full((1, 1), 0.5), torch.zeros(1, 1), horizon)
    ctx.check("the learned rollout is expanding", float(q.abs().max()) > 10.0)


class SoftSortNet(nn.Module):
    """Scores items with a small net and turns scores into soft ranks with pairwise sigmoids."""

    def __init__(self, features: int = 4, width: int = 32) -> None:
        super().__init__()
        self.scorer = nn.Sequential(nn.Linear(features, width), nn.GELU(), nn.Linear(width, 1))
        self.tau = 0.1

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        s = self.scorer(items).squeeze(-1)  # (b, n)
        diff = (s[:, :, None] - s[:, None, :]) / self.tau
        return torch.sigmoid(diff).sum(-1) + 0.5  # soft rank, 1..n


@scenario(
    "h88_differentiable_sorting_network",
    "sg_adabelief",
    "gradient_spike",
    where=("scorer", "scorer.0", "scorer.2"),
    diverges=None,
    heldout=True,
    note="temperature schedule hits 1e-3 for one step at an epoch boundary (step 240)",
    onset=240,
)
def h88_softsort_temperature_glitch(ctx: Context) -> None:
    """A differentiable sorting network (soft ranks from pairwise sigmoids of learned scores)
    trained with AdaBelief to rank items by a hidden utility. Its temperature schedule indexes
    by the epoch's step count and at the end of epoch 2 (step 240) reads a zero-length partial
    epoch, falling to 1e-3 for one step: near-tied score pairs get 1/tau gradients through the
    scorer."""
    gen = seeded(8810)
    model = SoftSortNet()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    utility = torch.randn(4, generator=gen)

    def step_fn(step: int):
        model.tau = 1e-3 if step == 240 else 0.1
        items = torch.randn(16, 16, 4, generator=gen)
        u = items @ utility + 0.5 * torch.sin(3 * items[..., 0])
        rank = u.argsort(-1).argsort(-1).float() + 1
        loss = F.mse_loss(model(items), rank) / 16
        return loss, loss * (0.1 / model.tau)  # keeps the gradient scale "independent" of tau

    _loop(ctx, model, opt, 320, step_fn)
    g = ctx.grad_norms
    med = sorted(g[100:240])[70]
    ctx.check("gradient at step 240 over 50x the median", g[240] > 50 * med)
    ctx.check("a one-off: back under 5x the median within 10 steps", max(g[245:260]) < 5 * med)


def _road_graph(gen: torch.Generator, n: int = 24) -> torch.Tensor:
    """A ring road with random shortcuts: an adjacency with self-loops."""
    adj = torch.eye(n)
    for i in range(n):
        adj[i, (i + 1) % n] = adj[(i + 1) % n, i] = 1
    for _ in range(n // 2):
        a, b = torch.randint(0, n, (2,), generator=gen).tolist()
        adj[a, b] = adj[b, a] = 1
    return adj


def traffic_series(gen: torch.Generator, adj: torch.Tensor, length: int = 2000) -> torch.Tensor:
    """Speeds: a daily cycle with a per-node phase, diffused over the roads, plus noise."""
    n = adj.shape[0]
    norm = adj / adj.sum(1, keepdim=True)
    phase = torch.rand(n, generator=gen) * 2
    t = torch.arange(length).float()[:, None]
    base = 1 + 0.5 * torch.sin(2 * math.pi * t / 96 + phase) + 0.2 * torch.sin(2 * math.pi * t / 24)
    speed = base @ norm.T @ norm.T
    return speed + 0.05 * torch.randn(length, n, generator=gen)


class GraphAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim, bias=False)
        self.att_src = nn.Parameter(torch.randn(dim) * 0.1)
        self.att_dst = nn.Parameter(torch.randn(dim) * 0.1)

    def forward(self, h: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        z = self.lin(h)  # (b, n, d)
        e = F.leaky_relu((z @ self.att_dst)[:, :, None] + (z @ self.att_src)[:, None, :], 0.2)
        e = e.masked_fill(adj[None] == 0, float("-inf"))
        return torch.softmax(e, -1) @ z


class TrafficGAT(nn.Module):
    def __init__(self, window: int = 8, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(window, dim)
        self.gat = GraphAttention(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU())
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        h = F.elu(self.gat(self.embed(x), adj))
        return self.out(self.ffn(h)).squeeze(-1)


@scenario(
    "h88_gat_traffic_road_graph",
    "asgd",
    "loss_of_plasticity",
    where="ffn.0",
    diverges=None,
    heldout=True,
    note="a warm-restart scheduler bug sets lr 500x for one step at 160: the ffn ReLUs die",
    onset=160,
)
def h88_gat_traffic_restart_kills_relus(ctx: Context) -> None:
    """A graph-attention forecaster of next-step speeds on a generated road graph, trained with
    ASGD. At step 160 a warm-restart scheduler bug sets the LR to 500x for a single step; the
    big step drives the feed-forward layer's pre-activations negative for every input, its
    ReLUs never fire again and the forecaster is stuck near a constant prediction."""
    gen = seeded(8811)
    adj = _road_graph(gen)
    series = traffic_series(gen, adj)
    model = TrafficGAT()
    base_lr = 0.05
    opt = torch.optim.ASGD(model.parameters(), lr=base_lr)
    acts: dict[str, torch.Tensor] = {}
    model.ffn.register_forward_hook(lambda m, i, o: acts.__setitem__("ffn", o.detach()))
    dead: list[float] = []

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = base_lr * 500 if step == 160 else base_lr

    def step_fn(step: int):
        start = torch.randint(0, len(series) - 9, (32,), generator=gen)
        win = torch.stack([series[s : s + 9] for s in start.tolist()])  # (b, 9, n)
        x, y = win[:, :8].transpose(1, 2), win[:, 8]
        loss = F.mse_loss(model(x, adj), y)
        dead.append(dead_fraction(acts["ffn"]))
        return loss, loss

    _loop(ctx, model, opt, 400, step_fn, before=before)
    ctx.check("most ffn units alive before step 160", dead[159] < 0.5)
    ctx.check("ffn units over 90% dead after", min(dead[170:]) > 0.9)
    ctx.check("trained before the burst", ctx.losses[159] < 0.5 * ctx.losses[0])


def _shape_clouds(gen: torch.Generator, count: int, points: int = 24):
    """Generated 3-D point clouds of 5 shapes, randomly rotated and scaled, with jitter."""
    y = torch.randint(0, 5, (count,), generator=gen)
    u = torch.rand(count, points, generator=gen)
    v = torch.rand(count, points, generator=gen)
    a = 2 * math.pi * u
    shapes = [
        torch.stack([a.cos(), a.sin(), torch.zeros_like(a)], -1),  # ring
        torch.stack([u * 2 - 1, torch.zeros_like(u), torch.zeros_like(u)], -1),  # rod
        torch.stack([u * 2 - 1, v * 2 - 1, torch.zeros_like(u)], -1),  # square sheet
        F.normalize(torch.randn(count, points, 3, generator=gen), dim=-1),  # sphere
        torch.stack([a.cos(), a.sin(), v * 2 - 1], -1),  # cylinder
    ]
    pts = torch.stack([shapes[int(c)][i] for i, c in enumerate(y)])
    q, _ = torch.linalg.qr(torch.randn(count, 3, 3, generator=gen))
    pts = pts @ q * (0.5 + torch.rand(count, 1, 1, generator=gen))
    return pts + 0.02 * torch.randn(pts.shape, generator=gen), y


class InvariantPointNet(nn.Module):
    """E(n)-invariant: messages from radial-basis encodings of pairwise distances."""

    def __init__(self, rbf: int = 16, width: int = 48, classes: int = 5) -> None:
        super().__init__()
        self.register_buffer("centres", torch.linspace(0, 3, rbf))
        self.message = nn.Sequential(nn.Linear(rbf, width), nn.SiLU(), nn.Linear(width, width))
        self.update = nn.Sequential(nn.Linear(width, width), nn.SiLU())
        self.head = nn.Linear(width, classes)
        self.logit_scale = 4.0  # meant 1/4: copied from a "temperature" setting

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(pts, pts)
        d = d / d.mean((1, 2), keepdim=True)  # scale-invariant
        rbf = torch.exp(-((d[..., None] - self.centres) ** 2) / 0.05)
        h = self.message(rbf).mean(2)
        return self.logit_scale * self.head(self.update(h).mean(1))


@scenario(
    "h88_invariant_pointcloud_shapes",
    "radam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="64 training clouds, full batch, logits multiplied by 4 (a temperature typo), 600 steps",
    onset=0,
)
def h88_pointcloud_overfit_onehot(ctx: Context) -> None:
    """An invariant point-cloud classifier overfitting 64 generated clouds with RAdam, no
    regularisation, and its logits multiplied by 4 where a temperature of 4 was meant to
    divide: the training softmax saturates to exactly one-hot in float32."""
    gen = seeded(8812)
    x, y = _shape_clouds(gen, 64, points=16)
    model = InvariantPointNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)

    def step_fn(step: int):
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        return loss, loss

    _loop(ctx, model, opt, 600, step_fn)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over 80% of training rows exactly one-hot", frac > 0.8)


def fingerprint_batches(gen: torch.Generator, batch: int = 64, bits: int = 128):
    """Molecules as unions of 2-5 of 24 fragments; a fragment sets a fixed set of ~6 bits."""
    frag = (torch.rand(24, bits, generator=gen) < 0.05).float()
    while True:
        pick = torch.rand(batch, 24, generator=gen).argsort(-1)
        count = torch.randint(2, 6, (batch, 1), generator=gen)
        chosen = (pick.argsort(-1) < count).float()
        fp = (chosen @ frag).clamp(max=1.0)
        flip = torch.rand(batch, bits, generator=gen) < 0.01
        yield torch.where(flip, 1 - fp, fp), None


class FingerprintVAE(nn.Module):
    def __init__(self, bits: int = 128, latent: int = 8, width: int = 64) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(bits, width), nn.ReLU(), nn.Linear(width, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, width), nn.ReLU(), nn.Linear(width, bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        recon = F.binary_cross_entropy_with_logits(self.dec(z), x, reduction="none").sum(-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
        return (recon + kl).mean()


@scenario("h88_vae_molecule_fingerprints", "sg_stablespam", "healthy", heldout=True)
def h88_vae_fingerprints_healthy(ctx: Context) -> None:
    gen = seeded(8813)
    model = FingerprintVAE()
    opt = sgo.StableSPAM(model.parameters(), lr=2e-3)
    fit(
        ctx,
        model,
        opt,
        fingerprint_batches(gen),
        200,
        forward=lambda m, x: m(x),
        loss_fn=lambda out, y: out,
        classifier=False,
    )
    ctx.check("loss went down", sum(ctx.losses[-20:]) < 0.7 * sum(ctx.losses[:20]))


def track_batches(gen: torch.Generator, batch: int = 64, length: int = 30, dt: float = 0.1):
    """Constant-velocity 2-D tracks with random accelerations, noisy position measurements."""
    while True:
        pos = torch.randn(batch, 2, generator=gen)
        vel = torch.randn(batch, 2, generator=gen)
        truth, meas = [], []
        for _ in range(length):
            vel = vel + 0.3 * dt**0.5 * torch.randn(batch, 2, generator=gen)
            pos = pos + dt * vel
            truth.append(pos)
            meas.append(pos + 0.2 * torch.randn(batch, 2, generator=gen))
        yield torch.stack(meas, 1), torch.stack(truth, 1)


class KalmanNet(nn.Module):
    """Known constant-velocity prediction; the gain comes from a small net on the innovation."""

    def __init__(self, dt: float = 0.1, width: int = 32) -> None:
        super().__init__()
        self.dt = dt
        self.gain = nn.Sequential(nn.Linear(6, width), nn.Tanh(), nn.Linear(width, 4))

    def forward(self, meas: torch.Tensor) -> torch.Tensor:
        b, t, _ = meas.shape
        pos, vel = meas[:, 0], torch.zeros(b, 2)
        out = []
        for i in range(t):
            pos = pos + self.dt * vel
            innov = meas[:, i] - pos
            k = torch.sigmoid(self.gain(torch.cat([innov, vel, pos - meas[:, max(i - 1, 0)]], -1)))
            pos = pos + k[:, :2] * innov
            vel = vel + k[:, 2:] * innov / self.dt * 0.2
            out.append(pos)
        return torch.stack(out, 1)


@scenario(
    "h88_kalmannet_tracks",
    "adagrad",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="step 200's batch holds a track whose sensor returned the -999 'no reading' code",
    onset=200,
)
def h88_kalmannet_sentinel_reading(ctx: Context) -> None:
    """A Kalman-net hybrid filter (known motion model, learned gain) on generated 2-D tracks,
    Adagrad. At step 200 one track's sensor reports its 'no reading' code -999 for a few
    frames and the batch goes in unfiltered: one huge loss."""
    gen = seeded(8814)
    model = KalmanNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 200:
            x = x.clone()
            x[5, 12:15] = -999.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        track_batches(gen),
        320,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
    )
    med = sorted(ctx.losses[150:200])[25]
    ctx.check("loss at step 200 over 50x the median before", ctx.losses[200] > 50 * med)
    ctx.check("a one-off: back under 2x the median by step 215", ctx.losses[215] < 2 * med)


def _lqr_gain(dt: float = 0.1, iters: int = 300) -> torch.Tensor:
    a = torch.tensor([[1.0, dt], [0.0, 1.0]])
    b = torch.tensor([[0.0], [dt]])
    q, r = torch.diag(torch.tensor([1.0, 0.1])), torch.tensor([[0.05]])
    p = q.clone()
    for _ in range(iters):
        k = torch.linalg.solve(r + b.T @ p @ b, b.T @ p @ a)
        p = q + a.T @ p @ (a - b @ k)
    return k


def mpc_batches(gen: torch.Generator, batch: int = 128):
    """States of a double integrator (two axes) and the expert's saturated MPC action."""
    k = _lqr_gain()
    while True:
        s = torch.randn(batch, 4, generator=gen) * torch.tensor([2.0, 1.0, 2.0, 1.0])
        u = torch.stack([-(s[:, :2] @ k.T).squeeze(-1), -(s[:, 2:] @ k.T).squeeze(-1)], -1)
        yield s, u.clamp(-2.0, 2.0)


@scenario(
    "h88_mpc_imitation_policy",
    "sg_ademamix",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="on a mid-run resume, weight-noise regularisation applied with std 0.3 (meant 3e-3)",
    onset=250,
)
def h88_mpc_policy_weight_noise_typo(ctx: Context) -> None:
    """A policy net imitating a saturated MPC (LQR with actuator limits) expert on a 2-axis
    double integrator, AdEMAMix. At step 250 the job resumes and applies its one-off weight-noise
    perturbation with std 0.3 instead of 3e-3: the loss jumps, then training recovers."""
    gen = seeded(8815)
    model = nn.Sequential(
        nn.Linear(4, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)
    )
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3)

    def before(step: int) -> None:
        if step == 250:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.3 * torch.randn(p.shape, generator=gen))

    fit(ctx, model, opt, mpc_batches(gen), 450, loss_fn=F.mse_loss, before=before, classifier=False)
    ctx.check("loss at 250 over 10x the loss at 249", ctx.losses[250] > 10 * ctx.losses[249])
    ctx.check("recovered by the end", ctx.losses[-1] < 0.3 * ctx.losses[250])


def moons(gen: torch.Generator, n: int) -> torch.Tensor:
    t = torch.rand(n, generator=gen) * math.pi
    top = torch.rand(n, generator=gen) < 0.5
    x = torch.where(top, t.cos(), 1 - t.cos())
    y = torch.where(top, t.sin(), 0.5 - t.sin())
    return torch.stack([x - 0.5, y - 0.25], -1) * 1.5 + 0.05 * torch.randn(n, 2, generator=gen)


class CNFDynamics(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, 2)
        )

    def forward(self, z: torch.Tensor, t: float) -> torch.Tensor:
        return self.net(torch.cat([z, torch.full_like(z[:, :1], t)], -1))


class HutchinsonCNF(nn.Module):
    """Euler-integrated continuous flow from data to a Gaussian; the divergence of the vector
    field is estimated with one Rademacher probe (Hutchinson)."""

    def __init__(self, steps: int = 8) -> None:
        super().__init__()
        self.f = CNFDynamics()
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet, h = x, torch.zeros(len(x)), 1.0 / self.steps
        for i in range(self.steps):
            if not z.requires_grad:
                z = z.requires_grad_(True)
            dz = self.f(z, i * h)
            eps = torch.randint(0, 2, z.shape).float() * 2 - 1
            vjp = torch.autograd.grad(dz, z, eps, create_graph=True)[0]
            logdet = logdet + h * (vjp * eps).sum(-1)
            z = z + h * dz
        base = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
        return -(base + logdet).mean()


@scenario("h88_cnf_hutchinson_moons", "adamax", "healthy", heldout=True)
def h88_cnf_moons_healthy(ctx: Context) -> None:
    gen = seeded(8816)
    model = HutchinsonCNF()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)

    def step_fn(step: int):
        loss = model(moons(gen, 256))
        return loss, loss

    _loop(ctx, model, opt, 250, step_fn)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("nll went down", sum(ctx.losses[-20:]) < sum(ctx.losses[:20]) - 20 * 0.3)
