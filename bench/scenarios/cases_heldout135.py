"""Held-out set 135 (``h135_``): hand-written field models on generated data (snowplow route
times, tugboat towline tension, forge temperature control, sheepdog herding paths, scuba air
use, ice-fishing bites, solar-sail attitude, hang-glider lift, Zamboni resurfacing, falconry
prey silhouettes) and Hugging Face vision-text dual encoder / vision encoder-decoder models
built from tiny configs (no download)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    MLP,
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    grad_norm,
    scenario,
    seeded,
)


def _regression(gen: torch.Generator, dim: int, batch: int = 32, noise: float = 0.05):
    """An endless stream of (features, target) for a smooth generated field relation."""
    w = torch.randn(dim, generator=gen)
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.sin(x @ w / math.sqrt(dim))[:, None] + 0.3 * x[:, :1]
        yield x, y + noise * torch.randn(batch, 1, generator=gen)


def _mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y)


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs) -> float:
    return sum(xs) / len(xs)


# -- snowplow route-time regressor ---------------------------------------------------------------


@scenario(
    "snowplow_route",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="warm-up ramps the LR to a peak far above 2/sharpness",
    onset=60,
)
def h135_snowplow_route_sgd(ctx: Context) -> None:
    gen = seeded(13501)
    model = MLP([8, 64, 64, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def warmup(step: int) -> None:  # linear warm-up to a peak of 2.0 (meant: 0.05)
        opt.param_groups[0]["lr"] = 0.01 + (2.0 - 0.01) * min(step / 100, 1.0)

    fit(ctx, model, opt, _regression(gen, 8), 140, loss_fn=_mse, before=warmup, classifier=False)
    early = ctx.losses[:40]
    ctx.check(
        "trained at a low LR first", _finite(early) and _mean(early[10:20]) < _mean(early[:5])
    )
    tail = ctx.losses[-10:]
    ctx.check("blew up at the peak LR", not _finite(tail) or min(tail) > 10 * min(early))


@scenario(
    "snowplow_route",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="momentum SGD, short warm-up, cosine decay",
)
def h135_snowplow_route_healthy(ctx: Context) -> None:
    gen = seeded(13502)
    model = MLP([8, 64, 64, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def schedule(step: int) -> None:
        warm = min((step + 1) / 20, 1.0)
        opt.param_groups[0]["lr"] = 0.02 * warm * 0.5 * (1 + math.cos(math.pi * step / 200))

    fit(ctx, model, opt, _regression(gen, 8), 200, loss_fn=_mse, before=schedule, classifier=False)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.6 * _mean(ctx.losses[:10]))


# -- tugboat towline-tension model ---------------------------------------------------------------


@scenario(
    "tugboat_towline",
    "adam",
    "data_outlier",
    heldout=True,
    note="a load-cell glitch writes readings x500 into four rows of one batch",
    onset=120,
)
def h135_tugboat_towline_adam(ctx: Context) -> None:
    gen = seeded(13503)
    model = MLP([10, 64, 64, 1])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 120:
            x = x.clone()
            x[:4] = 500.0 * torch.rand(4, x.shape[1], generator=torch.Generator().manual_seed(7))
        return x, y

    fit(ctx, model, opt, _regression(gen, 10), 200, loss_fn=_mse, alter=alter, classifier=False)
    before = ctx.losses[110:120]
    ctx.check("loss spiked on the glitch batch", ctx.losses[120] > 20 * max(before))
    ctx.check("finite", _finite(ctx.losses))


# -- forge temperature controller (recurrent) ----------------------------------------------------


class ForgeController(nn.Module):
    """Unrolls a linear-recurrent ReLU controller over the heat's sensor readings."""

    def __init__(self, hidden: int = 24) -> None:
        super().__init__()
        self.inp = nn.Linear(3, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(hidden, hidden))
            self.rec.weight.copy_(1.15 * q)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        for t in range(x.shape[1]):
            h = self.rec(h) + F.relu(self.inp(x[:, t]))
        return self.out(h)


def _heats(gen: torch.Generator, length, batch: int = 32):
    step = 0
    while True:
        t = length(step)
        x = 0.3 * torch.randn(batch, t, 3, generator=gen)
        yield x, x[:, -5:, :1].mean(1)
        step += 1


@scenario(
    "forge_temperature",
    "nesterov",
    "exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="recurrent gain 1.15; the curriculum switches from 6- to 70-step heats",
    onset=60,
)
def h135_forge_temperature_nesterov(ctx: Context) -> None:
    gen = seeded(13504)
    model = ForgeController()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batches = _heats(gen, lambda s: 6 if s < 61 else 70)  # +1: fit draws a probe batch first
    fit(ctx, model, opt, batches, 90, loss_fn=_mse, classifier=False)
    short = sorted(ctx.grad_norms[:60])[30]
    long = [g for g in ctx.grad_norms[60:] if math.isfinite(g)]
    ctx.check(
        "gradients exploded on long heats",
        len(long) < 30 or max(long) > 1000 * short,
    )


# -- sheepdog herding-path classifier (attention over the track) ---------------------------------


class HerdingAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.last_logits = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(x.shape[-1])
        self.last_logits = logits.detach()
        return torch.softmax(logits, -1) @ self.v(x)


class SheepdogNet(nn.Module):
    """Track points (x, y, speed, heading) -> which of four herding manoeuvres."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = HerdingAttention(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        h = h + self.attn(self.norm(h))
        return self.head(h.mean(1))


def _tracks(gen: torch.Generator, batch: int = 32, length: int = 12):
    proto = torch.randn(4, length, 4, generator=gen)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        yield proto[y] + 0.8 * torch.randn(batch, length, 4, generator=gen), y


@scenario(
    "sheepdog_herding",
    "adam",
    "attention_logit_growth",
    where=("attn",),
    heldout=True,
    note="query/key projections put in a param group with LR 0.3 (meant 3e-3)",
)
def h135_sheepdog_herding_adam(ctx: Context) -> None:
    gen = seeded(13505)
    model = SheepdogNet()
    qk = [*model.attn.q.parameters(), *model.attn.k.parameters()]
    rest = [p for p in model.parameters() if all(p is not r for r in qk)]
    opt = torch.optim.Adam([{"params": rest, "lr": 3e-3}, {"params": qk, "lr": 0.3}])
    fit(ctx, model, opt, _tracks(gen), 120)
    with torch.no_grad():
        x, _ = next(_tracks(seeded(13505)))
        model(x)
    end = float(model.attn.last_logits.abs().max())
    fresh = SheepdogNet()
    with torch.no_grad():
        fresh(x)
    start = float(fresh.attn.last_logits.abs().max())
    ctx.check("attention logits grew >30x", end > 30 * start)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "sheepdog_herding",
    "adam",
    "healthy",
    heldout=True,
    note="Adam with a linear warm-up",
)
def h135_sheepdog_herding_healthy(ctx: Context) -> None:
    gen = seeded(13506)
    model = SheepdogNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def warm(step: int) -> None:
        opt.param_groups[0]["lr"] = 3e-3 * min((step + 1) / 15, 1.0)

    fit(ctx, model, opt, _tracks(gen), 150, before=warm)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-15:]) < 0.6 * _mean(ctx.losses[:10]))


# -- scuba air-consumption forecaster ------------------------------------------------------------


class ScubaNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 64)
        self.fc2 = nn.Linear(64, 64)
        self.out = nn.Linear(64, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x))


def _dives(gen: torch.Generator, switch: int, batch: int = 32):
    wa, wb = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    step = 0
    while True:
        x = torch.randn(batch, 6, generator=gen)
        if step <= switch:  # first season logged in raw bar drops: large, offset targets
            y = 40.0 * torch.tanh(x @ wa / 2) - 200.0
        else:  # the new computers log normalised consumption on a new relation
            y = torch.tanh(x @ wb / 2)
        yield x, y[:, None]
        step += 1


@scenario(
    "scuba_air",
    "adagrad",
    "loss_of_plasticity",
    where=("fc2",),
    heldout=True,
    note="after the switch to large technical-dive targets the ReLUs of fc2 die",
    onset=100,
)
def h135_scuba_air_adagrad(ctx: Context) -> None:
    gen = seeded(13507)
    model = ScubaNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.3)
    fit(ctx, model, opt, _dives(gen, 100), 260, loss_fn=_mse, classifier=False)
    x = torch.randn(256, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dead = dead_fraction(F.relu(model.fc2(F.relu(model.fc1(x)))) - 1e-12)
    ctx.check("most fc2 units dead", dead > 0.5)
    fresh = ScubaNet()  # a fresh net on the new task, same optimizer and steps
    fopt = torch.optim.Adagrad(fresh.parameters(), lr=0.3)
    new = _dives(torch.Generator().manual_seed(13507), -1)
    fresh_losses = []
    for _ in range(160):
        x, y = next(new)
        loss = _mse(fresh(x), y)
        fopt.zero_grad()
        loss.backward()
        fopt.step()
        fresh_losses.append(float(loss))
    tail = ctx.losses[-30:]
    ctx.check(
        "learns the new task far worse than a fresh net",
        _finite(tail) and _mean(tail) > 3 * _mean(fresh_losses[-30:]),
    )


# -- ice-fishing bite predictor ------------------------------------------------------------------


class BiteNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.sonar = nn.Linear(12, 48)
        self.body = nn.Linear(48, 48)
        self.head = nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.body(F.gelu(self.sonar(x)))))


def _bites(gen: torch.Generator, batch: int = 64):
    w = torch.randn(12, generator=gen)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        yield x, ((x @ w + 0.5 * x[:, 0] * x[:, 1]) > 0).long()


@scenario(
    "ice_fishing_bite",
    "nadam",
    "adam_second_moment_poisoned",
    where=("sonar",),
    heldout=True,
    note="a per-layer gradient-scale hook misfires once: sonar grads x1e5 at step 60",
    onset=60,
)
def h135_ice_fishing_bite_nadam(ctx: Context) -> None:
    gen = seeded(13508)
    model = BiteNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    state = {"step": 0}

    def hook(g: torch.Tensor) -> torch.Tensor:
        return g * 1e5 if state["step"] == 60 else g

    model.sonar.weight.register_hook(hook)
    model.sonar.bias.register_hook(hook)
    v_before, moves = [], []

    def before(step: int) -> None:
        state["step"] = step
        if step == 60:
            v_before.append(float(opt.state[model.sonar.weight]["exp_avg_sq"].max()))
        moves.append(model.sonar.weight.detach().clone())

    fit(ctx, model, opt, _bites(gen), 160, before=before)
    v_after = float(opt.state[model.sonar.weight]["exp_avg_sq"].max())
    ctx.check("sonar second moment jumped >1e6x", v_after > 1e6 * v_before[0])
    early = float((moves[50] - moves[40]).norm())
    late = float((moves[-1] - moves[-11]).norm())
    ctx.check("sonar updates frozen after", late < 0.05 * early)


# -- solar-sail attitude model -------------------------------------------------------------------


class UnitNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)


class SailNet(nn.Module):
    """Sun vector + wheel rates -> attitude correction; the sun vector is normalised first."""

    def __init__(self) -> None:
        super().__init__()
        self.sun_norm = UnitNorm()
        self.body = MLP([6, 48, 48, 3], act=nn.Tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([self.sun_norm(x[:, :3]), x[:, 3:]], 1))


def _sail(gen: torch.Generator, batch: int = 32):
    while True:
        x = torch.randn(batch, 6, generator=gen)
        yield x, torch.cross(F.normalize(x[:, :3], dim=1), torch.tanh(x[:, 3:]), dim=1)


@scenario(
    "solar_sail_attitude",
    "asgd",
    "nonfinite",
    where=("sun_norm",),
    diverges=90,
    heldout=True,
    note="sun-sensor dropout gives an all-zero sun vector; 0/0 in the normaliser",
    onset=90,
)
def h135_solar_sail_attitude_asgd(ctx: Context) -> None:
    gen = seeded(13509)
    model = SailNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 90:
            x = x.clone()
            x[3, :3] = 0.0
        return x, y

    fit(ctx, model, opt, _sail(gen), 120, loss_fn=_mse, alter=alter, classifier=False)
    ctx.check("finite before the dropout", _finite(ctx.losses[:90]))
    ctx.check("NaN from step 90", not math.isfinite(ctx.losses[90]))
    ctx.check("weights poisoned", not all(torch.isfinite(p).all() for p in model.parameters()))


# -- hang-glider thermal-lift estimator ----------------------------------------------------------


@scenario(
    "hang_glider_lift",
    "radam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="the L2 penalty's sign is flipped: weights grow slowly and the loss climbs",
)
def h135_hang_glider_lift_radam(ctx: Context) -> None:
    gen = seeded(13510)
    model = MLP([7, 48, 48, 1], act=nn.Tanh)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    start = float(sum(p.detach().norm() ** 2 for p in model.parameters()))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - 0.5 * sum((p**2).sum() for p in model.parameters())

    fit(
        ctx,
        model,
        opt,
        _regression(gen, 7),
        400,
        loss_fn=_mse,
        extra_loss=penalty,
        classifier=False,
    )
    end = float(sum(p.detach().norm() ** 2 for p in model.parameters()))
    ctx.check("weights grew >5x", end > 5 * start)
    best = min(ctx.losses)
    tail = sorted(ctx.losses[-9:])[4]
    ctx.check("loss climbed", not math.isfinite(tail) or tail > max(2 * best, best + 1))


# -- Zamboni ice-resurfacing model (fp16 autocast with a GradScaler) -----------------------------


class ZamboniNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(8, 64)
        self.fc = nn.Linear(64, 64)
        self.out = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.fc(F.relu(self.fc_in(x)))))


@scenario(
    "zamboni_resurfacing",
    "sgd_mom",
    "amp_overflow",
    where=("fc_in",),
    diverges=60,
    heldout=True,
    note="the ice-depth gauges switch to micrometres: fc_in's fp16 output overflows",
    onset=60,
)
def h135_zamboni_resurfacing_sgd_mom(ctx: Context) -> None:
    gen = seeded(13511)
    model = ZamboniNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 60:
            x = x.clone()
            x[:, :2] = x[:, :2] * 1e6
            seen.setdefault("x", x)
        return x, y

    fit(
        ctx,
        model,
        opt,
        _regression(gen, 8),
        90,
        loss_fn=_mse,
        alter=alter,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    ctx.check("finite before", _finite(ctx.losses[:60]))
    ctx.check("fp16 loss overflowed after", not any(math.isfinite(v) for v in ctx.losses[60:]))
    ctx.check("scale collapsed", ctx.scales[-1] < 1e-3 * ctx.scales[59])
    with torch.no_grad():
        ctx.check("fp32 forward is finite", bool(torch.isfinite(model(seen["x"])).all()))


# -- falconry prey-silhouette classifier (8x8 digit silhouettes) ---------------------------------


class FalconryNet(nn.Module):
    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.body = MLP([64, 96, 96], act=nn.GELU)
        self.head = nn.Linear(96, 10)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.body(x))) / self.temperature


@scenario(
    "falconry_prey",
    "adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="a distillation temperature of 0.002 left in the training head",
)
def h135_falconry_prey_adamax(ctx: Context) -> None:
    gen = seeded(13512)
    model = FalconryNet(temperature=0.002)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    xs, ys = digits()
    xs, ys = xs[:320], ys[:320]  # the small labelled set of one falconry centre

    def batches():
        while True:
            idx = torch.randperm(320, generator=gen)[:64]
            yield xs[idx], ys[idx]

    fit(ctx, model, opt, batches(), 350)
    with torch.no_grad():
        frac = collapsed_fraction(model(xs), ys)
    ctx.check("most rows' softmax exactly 1.0", frac > 0.5)


# -- Hugging Face vision-text dual encoder (tiny ViT + BERT towers) ------------------------------


def _dual_encoder():
    from transformers import (
        BertConfig,
        VisionTextDualEncoderConfig,
        VisionTextDualEncoderModel,
        ViTConfig,
    )

    v = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    t = BertConfig(
        vocab_size=32,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    config = VisionTextDualEncoderConfig.from_vision_text_configs(
        v, t, projection_dim=16, logit_scale_init_value=1.0
    )
    return VisionTextDualEncoderModel(config)


def _captions(gen: torch.Generator, batch: int = 32):
    """Digit images with four-token captions naming the digit (word, numeral, colour)."""
    for x, y in digit_batches(gen, batch):
        yield x.reshape(-1, 1, 8, 8), torch.stack([y + 1, y + 11, y + 21, y + 1], 1)


def _run_dual(ctx: Context, model, opt, steps: int, before=None) -> None:
    ctx.attach(model, opt)
    batches = _captions(seeded(13599))
    for step in range(steps):
        px, ids = next(batches)
        if before is not None:
            before(step)
        loss = model(input_ids=ids, pixel_values=px, return_loss=True).loss
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "vision_text_dual_encoder",
    "adamw",
    "update_ratio_out_of_range",
    where=("visual_projection",),
    heldout=True,
    note="the image projection's param group got lr=1.0 (a typo for 1e-3)",
)
def h135_vision_text_dual_encoder_adamw(ctx: Context) -> None:
    seeded(13513)
    model = _dual_encoder()
    proj = list(model.visual_projection.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in proj)]
    opt = torch.optim.AdamW([{"params": rest, "lr": 1e-3}, {"params": proj, "lr": 1.0}])
    ratios, others = [], []
    prev = {}

    def before(step: int) -> None:
        w, o = model.visual_projection.weight, model.text_projection.weight
        if prev:
            ratios.append(float((w - prev["v"]).norm() / prev["v"].norm()))
            others.append(float((o - prev["t"]).norm() / prev["t"].norm()))
        prev["v"], prev["t"] = w.detach().clone(), o.detach().clone()

    _run_dual(ctx, model, opt, 60, before)
    ctx.check("projection update/weight ratio > 0.1", _mean(ratios[:20]) > 0.1)
    ctx.check("other layers' ratio small", _mean(others) < 0.02)


@scenario(
    "vision_text_dual_encoder",
    "adamw",
    "healthy",
    heldout=True,
    note="AdamW with warm-up and cosine decay",
)
def h135_vision_text_dual_encoder_healthy(ctx: Context) -> None:
    seeded(13514)
    model = _dual_encoder()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

    def schedule(step: int) -> None:
        warm = min((step + 1) / 10, 1.0)
        opt.param_groups[0]["lr"] = 1e-3 * warm * (0.55 + 0.45 * math.cos(math.pi * step / 160))

    _run_dual(ctx, model, opt, 160, schedule)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.8 * _mean(ctx.losses[:5]))


# -- Hugging Face vision encoder-decoder (tiny ViT encoder + GPT-2 decoder) ----------------------


def _encoder_decoder():
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
    )

    v = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    g = GPT2Config(
        vocab_size=32,
        n_positions=16,
        n_embd=32,
        n_layer=1,
        n_head=2,
        add_cross_attention=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(v, g)
    config.decoder_start_token_id = 0
    config.pad_token_id = 0
    return VisionEncoderDecoderModel(config=config)


def _read_outs(gen: torch.Generator, batch: int = 32):
    """Digit images read out as four tokens: digit, digit+1, digit+2, digit+3 (mod 10)."""
    for x, y in digit_batches(gen, batch):
        labels = 1 + (y[:, None] + torch.arange(4)) % 10
        yield x.reshape(-1, 1, 8, 8), labels


def _run_ed(ctx: Context, model, opt, steps: int, before=None) -> list[float]:
    ctx.attach(model, opt)
    batches = _read_outs(seeded(13598))
    peaks = []
    for step in range(steps):
        px, labels = next(batches)
        if before is not None:
            before(step)
        out = model(pixel_values=px, labels=labels)
        peaks.append(float(out.logits.detach().abs().max()))
        out.loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(out.loss)
        opt.zero_grad(set_to_none=True)
    return peaks


@scenario(
    "vision_encoder_decoder",
    "rmsprop",
    "output_logit_divergence",
    where=("decoder.lm_head",),
    diverges=None,
    heldout=True,
    note="the untied LM head's LR multiplier is 100x: its logits run away",
)
def h135_vision_encoder_decoder_rmsprop(ctx: Context) -> None:
    seeded(13515)
    model = _encoder_decoder()
    head = list(model.decoder.lm_head.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in head)]
    opt = torch.optim.RMSprop([{"params": rest, "lr": 5e-4}, {"params": head, "lr": 0.3}])
    peaks = _run_ed(ctx, model, opt, 80)
    ctx.check("logits grew >20x", max(peaks[-10:]) > 20 * peaks[0])
    ctx.check("loss stuck far above a healthy run's", _mean(ctx.losses[-10:]) > 2.0)


@scenario(
    "vision_encoder_decoder",
    "adam",
    "healthy",
    heldout=True,
    note="Adam with linear warm-up",
)
def h135_vision_encoder_decoder_healthy(ctx: Context) -> None:
    seeded(13516)
    model = _encoder_decoder()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def warm(step: int) -> None:
        opt.param_groups[0]["lr"] = 2e-3 * min((step + 1) / 10, 1.0)

    _run_ed(ctx, model, opt, 80, warm)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.6 * _mean(ctx.losses[:5]))
