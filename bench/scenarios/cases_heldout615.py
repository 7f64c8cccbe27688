"""Held-out set 615 (``h615_``): 10 faults over 10 causes and 3 healthy controls, 13 families.

Every model is hand-written; data are generated (or scikit-learn's bundled digits). Each fault is
induced the way it happens in practice and checked in the run itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import Context, digit_batches, grad_norm, scenario, seeded

# -- shared helpers --------------------------------------------------------------------------------


def _regression(gen: torch.Generator, n_in: int, batch: int = 64, noise: float = 0.05):
    """Endless batches of a smooth generated regression task (y = sum of sines of projections)."""
    w = torch.randn(n_in, 4, generator=gen) / math.sqrt(n_in)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w).sum(1, keepdim=True) + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int, k: int, batch: int = 64):
    """Endless batches of a generated k-class task (nearest of k random prototypes)."""
    protos = torch.randn(k, n_in, generator=gen)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        x = protos[y] + 0.8 * torch.randn(batch, n_in, generator=gen)
        yield x, y


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module] = nn.SiLU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _median(xs) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


# -- a Swin-style windowed attention model over generated images -----------------------------------


def _stripe_images(gen: torch.Generator, batch: int = 32, size: int = 16):
    """Generated 16x16 images: oriented stripes of 4 orientations plus noise; label = orientation."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    angles = torch.tensor([0.0, 0.25, 0.5, 0.75]) * math.pi
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        a = angles[y][:, None, None]
        phase = 2 * math.pi * torch.rand(batch, 1, 1, generator=gen)
        img = torch.sin(0.9 * (xx * torch.cos(a) + yy * torch.sin(a)) + phase)
        img = img + 0.3 * torch.randn(batch, size, size, generator=gen)
        yield img[:, None], y


class _WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, scale: float) -> None:
        super().__init__()
        self.heads, self.window, self.scale = heads, window, scale
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.last_logit_max = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (b, h, w, d) -> windows of window x window tokens
        b, h, w, d = x.shape
        s = self.window
        win = x.reshape(b, h // s, s, w // s, s, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, s * s, d)
        q, k, v = self.qkv(win).split(d, dim=-1)
        q, k, v = (z.reshape(z.shape[0], s * s, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = (q @ k.transpose(-2, -1)) * self.scale
        self.last_logit_max = float(logits.detach().abs().max())
        out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(-1, s * s, d)
        out = self.proj(out)
        out = out.reshape(b, h // s, w // s, s, s, d).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(b, h, w, d)


class _SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, shift: int, scale: float) -> None:
        super().__init__()
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, heads, window, scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, (-self.shift, -self.shift), dims=(1, 2))
        y = self.attn(y)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class _Swin(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, window: int = 4, scale: float | None = None):
        super().__init__()
        scale = scale if scale is not None else (dim // heads) ** -0.5
        self.patch = nn.Conv2d(1, dim, 2, stride=2)  # 16x16 -> 8x8 tokens
        self.block0 = _SwinBlock(dim, heads, window, 0, scale)
        self.block1 = _SwinBlock(dim, heads, window, window // 2, scale)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).permute(0, 2, 3, 1)
        x = self.block1(self.block0(x))
        return self.head(self.norm(x).mean((1, 2)))


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "bobbin_lace_pricking_shifted_window_attention",
    "AdamW",
    "attention_logit_growth",
    ("block0.attn", "block1.attn"),
    None,
    heldout=True,
    note="Swin-style local-window attention (4x4 windows, second block shifted by 2) over "
    "generated stripe images; the attention scale is written head_dim**0.5 instead of "
    "head_dim**-0.5 (a dropped minus sign) and qkv is excluded from weight decay, so q.k logits "
    "grow through training; AdamW lr 3e-3",
)
def h615_bobbin_lace_pricking(ctx: Context) -> None:
    gen = seeded(6151)
    model = _Swin(scale=16**0.5)
    decay = [p for n, p in model.named_parameters() if "qkv" not in n]
    nodecay = [p for n, p in model.named_parameters() if "qkv" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": nodecay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    ctx.attach(model, opt)
    batches = _stripe_images(gen)
    maxes = []
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        maxes.append(max(model.block0.attn.last_logit_max, model.block1.attn.last_logit_max))
        if not math.isfinite(float(loss)):
            break
    ctx.check("attention logit max grew over 2.5x", maxes[-1] > 2.5 * maxes[0])
    ctx.check("attention logit max over 50 at the end", maxes[-1] > 50)


@scenario(
    "apiary_brood_frame_humidity_sqrt_regressor",
    "RMSprop",
    "nonfinite",
    ("sqrt_feat",),
    80,
    heldout=True,
    onset=80,
    note="the model computes sqrt(frame humidity - dew offset) as an input feature without a "
    "clamp; from step 80 a sensor batch reads below the dew offset (negative argument), sqrt "
    "gives NaN, the loss is NaN at step 80; RMSprop, Gaussian NLL",
)
def h615_apiary_brood_frame(ctx: Context) -> None:
    gen = seeded(6152)

    class SqrtFeat(nn.Module):
        def forward(self, h: torch.Tensor) -> torch.Tensor:
            return torch.sqrt(h - 0.1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sqrt_feat = SqrtFeat()
            self.body = _Net(7, 32, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.sqrt_feat(x[:, :1])
            return self.body(torch.cat([f, x[:, 1:]], 1))

    model = Net()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen, 6)
    nan_step = None
    for step in range(120):
        x, y = next(batches)
        hum = 0.5 + 0.3 * torch.rand(len(x), 1, generator=gen)
        if step >= 80:
            hum[:8] = 0.02  # dead sensor reads under the dew offset
        out = model(torch.cat([hum, x], 1))
        mu, log_sigma = out[:, :1], out[:, 1:]
        loss = (log_sigma + 0.5 * ((y - mu) / log_sigma.exp()) ** 2).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            nan_step = step
            break
    ctx.check("loss finite before step 80", _finite(ctx.losses[:80]))
    ctx.check("loss is NaN at step 80", nan_step == 80)


@scenario(
    "rowing_oarlock_catch_angle_deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    ("layers.0",),
    None,
    heldout=True,
    note="10-deep ReLU MLP initialised with std 1.5*sqrt(2/fan_in) (a stray gain 1.5 left on "
    "kaiming init); the backward signal grows through depth, the gradient at layer 0's "
    "pre-activations over 10x the last hidden layer's; clipping at 1.0 keeps the loss finite; "
    "SGD momentum 0.9, MSE",
)
def h615_rowing_oarlock(ctx: Context) -> None:
    gen = seeded(6153)

    class Deep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            sizes = [8] + [48] * 10
            self.layers = nn.ModuleList(
                nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
            )
            self.head = nn.Linear(48, 1)
            self.pre: list[torch.Tensor] = []
            for m in self.layers:
                nn.init.normal_(m.weight, std=1.5 * math.sqrt(2.0 / m.in_features))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.pre = []
            for m in self.layers:
                h = m(x)
                if h.requires_grad:
                    h.retain_grad()
                self.pre.append(h)
                x = torch.relu(h)
            return self.head(x)

    model = Deep()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen, 8)
    ratios = []
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0 = float(model.pre[0].grad.norm())
        g9 = float(model.pre[9].grad.norm())
        ratios.append(g0 / max(g9, 1e-12))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "backward signal at layer 0 over 10x the last hidden layer's", _median(ratios[:20]) > 10
    )
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "kite_surf_bar_pressure_param_group_regressor",
    "SGD Nesterov",
    "update_ratio_out_of_range",
    ("fc2",),
    None,
    heldout=True,
    note="three param groups (fc1, fc2, head); fc2's lr typed 1e-9 where 1e-2 was meant, fc2's "
    "weights never move while the other layers train; SGD Nesterov momentum 0.9, Huber",
)
def h615_kite_surf_bar(ctx: Context) -> None:
    gen = seeded(6154)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(
        [
            {"params": model.fc1.parameters(), "lr": 1e-2},
            {"params": model.fc2.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ],
        lr=1e-2,
        momentum=0.9,
        nesterov=True,
    )
    ctx.attach(model, opt)
    w0 = model.fc2.weight.detach().clone()
    f0 = model.fc1.weight.detach().clone()
    batches = _regression(gen, 10)
    for _ in range(150):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    moved2 = float((model.fc2.weight - w0).norm() / w0.norm())
    moved1 = float((model.fc1.weight - f0).norm() / f0.norm())
    ctx.check("fc2 moved under 1e-6 of its norm", moved2 < 1e-6)
    ctx.check("fc1 moved over 1e-2 of its norm", moved1 > 1e-2)
    ctx.check("loss fell", _median(ctx.losses[-20:]) < _median(ctx.losses[:10]))


@scenario(
    "harpsichord_quill_pluck_force_huber_regressor",
    "Adamax",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=100,
    note="one shard at step 100 logged the pluck force in millinewtons instead of newtons "
    "(inputs and targets 1000x); the loss jumps over 20x, the gradient over 10x; clipping at "
    "1.0; the run recovers; Adamax, Huber",
)
def h615_harpsichord_quill(ctx: Context) -> None:
    gen = seeded(6155)
    model = _Net(8, 48, 1, nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen, 8)
    raw = []
    for step in range(160):
        x, y = next(batches)
        if step == 100:
            x, y = x * 1000.0, y * 1000.0
        loss = F.huber_loss(model(x), y)
        loss.backward()
        raw.append(grad_norm(model))
        ctx.grad_norms.append(raw[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    base = _median(ctx.losses[80:100])
    ctx.check("loss at step 100 over 20x its recent median", ctx.losses[100] > 20 * base)
    ctx.check(
        "gradient at step 100 over 10x its recent median", raw[100] > 10 * _median(raw[80:100])
    )
    ctx.check("recovered by the end", _median(ctx.losses[-20:]) < 3 * base)


@scenario(
    "falconry_stoop_speed_accumulated_regressor",
    "NAdam",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=90,
    note="4-micro-batch accumulation; at step 90 a resumed run's loss weight is read as 200 "
    "instead of 1/4 for one step (a checkpoint key mix-up), so that update's gradient is ~800x; "
    "no clipping; the logged loss is the ordinary one; NAdam, MSE",
)
def h615_falconry_stoop(ctx: Context) -> None:
    gen = seeded(6156)
    model = _Net(6, 32, 1, nn.Tanh)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _regression(gen, 6, batch=16)
    raw = []
    for step in range(150):
        scale = 200.0 if step == 90 else 0.25
        logged = torch.zeros(())
        for _ in range(4):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            (loss * scale).backward()
            logged = logged + loss.detach() / 4
        raw.append(grad_norm(model))
        ctx.grad_norms.append(raw[-1])
        opt.step()
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "gradient at step 90 over 100x its recent median", raw[90] > 100 * _median(raw[70:90])
    )
    ctx.check("logged loss finite", _finite(ctx.losses))


@scenario(
    "blacksmith_quench_hardness_tanh_regressor",
    "Adam",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="hand-written decoupled weight decay applied as p += lr*wd*p (sign flipped) with "
    "wd 3.0; the weights inflate and the loss climbs slowly to over 2x its best with no jump; "
    "Adam, MSE",
)
def h615_blacksmith_quench(ctx: Context) -> None:
    gen = seeded(6157)
    model = _Net(8, 48, 1, nn.Tanh)
    lr, wd = 3e-3, 3.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    w0 = float(sum(p.norm() ** 2 for p in model.parameters()) ** 0.5)
    batches = _regression(gen, 8)
    for _ in range(250):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # meant: alpha=-lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = float(sum(p.norm() ** 2 for p in model.parameters()) ** 0.5)
    best = min(_median(ctx.losses[i : i + 10]) for i in range(0, 240, 10))
    jumps = [b / max(a, 1e-9) for a, b in zip(ctx.losses[:-1], ctx.losses[1:], strict=False)]
    ctx.check("weights over 2x", w1 > 2 * w0)
    ctx.check("loss climbs to over 2x its best", _median(ctx.losses[-10:]) > 2 * best)
    ctx.check("no single-step jump over 5x", max(jumps) < 5)


@scenario(
    "yodel_larynx_flip_temperature_gelu_classifier",
    "RAdam",
    "softmax_collapse",
    ("head",),
    None,
    heldout=True,
    note="the softmax temperature is configured as temp_cs=2 (a centiseconds-style field) and "
    "read as 0.02 instead of 2.0, logits divided by 0.02; over 40% of rows' top probability rounds to "
    "exactly 1.0 in float32; RAdam, cross-entropy on digits",
)
def h615_yodel_register(ctx: Context) -> None:
    gen = seeded(6158)
    model = _Net(64, 64, 10, nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    temp = 0.02
    fracs = []
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temp
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        fracs.append(float((logits.detach().softmax(-1).max(-1).values == 1.0).float().mean()))
    ctx.check("over 40% of rows' top probability exactly 1.0", max(fracs[-20:]) > 0.4)


@scenario(
    "curling_stone_sweep_confidence_classifier",
    "Adagrad",
    "output_logit_divergence",
    ("head",),
    None,
    heldout=True,
    note="a confidence penalty beta*entropy meant to be added to the loss is subtracted "
    "(beta typed -1.0 for 1.0), rewarding low entropy; the head's logits grow without bound "
    "(over 20x and still growing); Adagrad, cross-entropy",
)
def h615_curling_stone_sweep(ctx: Context) -> None:
    gen = seeded(6159)
    model = _Net(12, 48, 6, nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.2)
    ctx.attach(model, opt)
    batches = _classes(gen, 12, 6)
    beta = -1.0
    mags = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        ce = F.cross_entropy(logits, y)
        p = logits.softmax(-1)
        ent = -(p * logits.log_softmax(-1)).sum(-1).mean()
        (ce + beta * ent).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(ce)
        opt.zero_grad(set_to_none=True)
        mags.append(float(logits.detach().abs().mean()))
    ctx.check("head logit magnitude over 20x", mags[-1] > 20 * mags[0])
    ctx.check("still growing at the end", mags[-1] > 1.2 * mags[-50])


@scenario(
    "luthier_bracing_tap_tone_sgd_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    note="SGD lr typed 2.5 for 0.025 on a tap-tone regressor; the step is past 2/sharpness and "
    "the loss oscillates and blows up; plain SGD, MSE",
)
def h615_luthier_bracing(ctx: Context) -> None:
    gen = seeded(61510)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2.5)
    ctx.attach(model, opt)
    batches = _regression(gen, 8)
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    peak = max((v if math.isfinite(v) else float("inf")) for v in ctx.losses)
    ctx.check("loss blows up over 100x its start", peak > 100 * ctx.losses[0])


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    "pumice_raft_drift_augmented_classifier",
    "AdamW",
    "healthy",
    (),
    None,
    heldout=True,
    note="alarming-looking control: the augmentation (input noise and random feature dropout) "
    "is made much stronger at step 120 as a planned curriculum stage; the loss steps up and is "
    "then learnt; AdamW, label smoothing 0.1, warm-up then cosine, clipping",
)
def h615_pumice_raft_drift(ctx: Context) -> None:
    gen = seeded(61511)
    model = _Net(16, 64, 5, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    steps = 260
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            min(1.0, (s + 1) / 20) * (0.2 + 0.4 * (1 + math.cos(math.pi * min(s, steps) / steps)))
        ),
    )
    ctx.attach(model, opt)
    batches = _classes(gen, 16, 5)
    for step in range(steps):
        x, y = next(batches)
        noise, drop = (0.1, 0.0) if step < 120 else (0.8, 0.15)
        x = x + noise * torch.randn(x.shape, generator=gen)
        x = x * (torch.rand(x.shape, generator=gen) >= drop).float()
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = _median(ctx.losses[100:120])
    after = _median(ctx.losses[120:130])
    ctx.check("loss fell before step 120", before < 0.7 * _median(ctx.losses[:10]))
    ctx.check("loss stepped up at 120", after > 1.3 * before)
    learnt = min(_median(ctx.losses[i : i + 10]) for i in range(140, 250, 10))
    ctx.check("stronger augmentation then learnt", learnt < 0.85 * after)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "snowshoe_hare_track_gait_swin_control",
    "SGD momentum",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: a small Swin-style shifted-window classifier on generated stripe images "
    "with the correct head_dim**-0.5 scale; SGD momentum 0.9, OneCycleLR, 2-micro-batch "
    "accumulation, clipping at 1.0",
)
def h615_snowshoe_hare_track(ctx: Context) -> None:
    gen = seeded(61512)
    model = _Swin()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 100
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    ctx.attach(model, opt)
    batches = _stripe_images(gen, batch=16)
    for _ in range(steps):
        logged = torch.zeros(())
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            (loss / 2).backward()
            logged = logged + loss.detach() / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.7 * _median(ctx.losses[:10]))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "geyser_eruption_interval_gaussian_nll_control",
    "ASGD",
    "healthy",
    (),
    None,
    heldout=True,
    note="control: a Gaussian-NLL interval regressor with a clamped log-sigma, noisy batches "
    "(heteroscedastic noise), ASGD with two param groups (head at half the lr), "
    "ReduceLROnPlateau, clipping at 5.0",
)
def h615_geyser_eruption(ctx: Context) -> None:
    gen = seeded(61513)
    model = _Net(6, 48, 2, nn.SiLU)
    opt = torch.optim.ASGD(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters())},
            {"params": model.head.parameters(), "lr": 0.05},
        ],
        lr=0.1,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = _regression(gen, 6)
    for _ in range(200):
        x, y = next(batches)
        y = y + 0.2 * x[:, :1].abs() * torch.randn(y.shape, generator=gen)
        out = model(x)
        mu, log_sigma = out[:, :1], out[:, 1:].clamp(-5, 5)
        loss = (log_sigma + 0.5 * ((y - mu) / log_sigma.exp()) ** 2).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _median(ctx.losses[-20:]) < _median(ctx.losses[:10]) - 0.3)
    ctx.check("finite", _finite(ctx.losses))
