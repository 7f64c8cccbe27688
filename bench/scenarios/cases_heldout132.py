"""Held-out set 132 (``h132_``): two Hugging Face PP-OCR recogniser trunks (v6 tiny, v5 mobile)
from configs on upscaled digits, and hand-written models of new fields on generated data."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, digits, scenario, seeded

HF = "hf_"


def _digit_images(gen: torch.Generator, batch: int, height: int = 72, width: int = 48):
    """Digits upscaled to a 3-channel text-line crop, the way an OCR trunk reads them."""
    x, y = digits()
    while True:
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        img = x[idx].reshape(-1, 1, 8, 8)
        img = F.interpolate(img, size=(height, width), mode="bilinear", align_corners=False)
        yield img.expand(-1, 3, -1, -1).contiguous(), y[idx]


class OcrReader(nn.Module):
    """A PP-OCR recogniser trunk from a config, mean-pooled, with a linear digit head."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        import transformers as T

        if kind == "v6_tiny":
            self.trunk = T.PPOCRV6TinyRecModel(T.PPOCRV6TinyRecConfig())
        else:
            self.trunk = T.PPOCRV5MobileRecModel(T.PPOCRV5MobileRecConfig())
        self.head = nn.Linear(384, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(pixel_values=x).last_hidden_state
        return self.head(h.mean(dim=(2, 3)))


def _finite(losses: list[float]) -> bool:
    return all(math.isfinite(v) for v in losses)


def _mean(v: list[float]) -> float:
    return sum(v) / max(len(v), 1)


def _train_reader(ctx: Context, model, opt, gen, steps, alter=None, sched=None, batch=12):
    ctx.attach(model, opt)
    stream = _digit_images(gen, batch)
    for step in range(steps):
        x, y = next(stream)
        if alter is not None:
            x, y = alter(step, x, y)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        ctx.step(loss)


# -- Hugging Face PP-OCR trunks ----------------------------------------------------------------


@scenario(
    HF + "ppocr_v6_tiny_digit_reader",
    "adam",
    "data_outlier",
    diverges=None,
    heldout=True,
    note="at step 32 one batch comes from a mis-joined export: inverted scans, labels shifted by 3",
    onset=32,
)
def h132_ppocr_v6_tiny_misjoined_batch(ctx: Context) -> None:
    gen = seeded(13201)
    model = OcrReader("v6_tiny")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        return (1.0 - x, (y + 3) % 10) if step == 32 else (x, y)

    _train_reader(ctx, model, opt, gen, 40, alter=alter)
    before = _mean(ctx.losses[26:32])
    ctx.check("the mis-joined batch's loss jumps", ctx.losses[32] > 1.8 * before)
    ctx.check("the run stays finite", _finite(ctx.losses))


@scenario(
    HF + "ppocr_v6_tiny_digit_reader",
    "adam",
    "healthy",
    heldout=True,
    note="Adam with warmup and cosine decay, normal batch noise",
)
def h132_ppocr_v6_tiny_healthy(ctx: Context) -> None:
    gen = seeded(13202)
    model = OcrReader("v6_tiny")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps = 30
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 5) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    _train_reader(ctx, model, opt, gen, steps, sched=sched)
    ctx.check("loss fell", _mean(ctx.losses[-6:]) < _mean(ctx.losses[:6]))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    HF + "ppocr_v5_mobile_digit_reader",
    "adamw",
    "update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the new digit head is put in a param group with lr 0.3 (a fine-tuning config typo)",
    onset=0,
)
def h132_ppocr_v5_mobile_head_lr_typo(ctx: Context) -> None:
    gen = seeded(13203)
    model = OcrReader("v5_mobile")
    opt = torch.optim.AdamW(
        [
            {"params": model.trunk.parameters(), "lr": 3e-4},
            {"params": model.head.parameters(), "lr": 0.3},
        ],
        weight_decay=0.01,
    )
    ratios: list[float] = []
    ctx.attach(model, opt)
    stream = _digit_images(gen, 8)
    for _ in range(20):
        x, y = next(stream)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        w0 = model.head.weight.detach().clone()
        opt.step()
        ratios.append(float((model.head.weight.detach() - w0).norm() / w0.norm()))
        ctx.step(loss)
    ctx.check(
        "head update/weight ratio above 0.05 on most steps", sum(r > 0.05 for r in ratios) > 10
    )
    ctx.check("the run stays finite", _finite(ctx.losses))


# -- hand-written models ------------------------------------------------------------------------


class FurnaceRNN(nn.Module):
    """A linear thermal-state recurrence over a furnace's temperature trace, then a readout."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(3, hidden)
        self.cell = nn.Linear(hidden, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(hidden, hidden))
            self.cell.weight.copy_(1.1 * q)  # an orthogonal recurrence scaled to radius 1.1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.cell.in_features)
        for t in range(x.shape[1]):
            h = self.cell(h) + self.inp(x[:, t])
        return self.out(h).squeeze(-1) / math.sqrt(x.shape[1])


def _furnace_batch(gen, batch=32, length=24):
    t = torch.linspace(0, 1, length)
    phase = torch.rand(batch, 1, generator=gen) * 6
    temp = torch.sin(6 * t + phase) + 0.1 * torch.randn(batch, length, generator=gen)
    gas = torch.cos(3 * t + phase)
    x = torch.stack([temp, gas, torch.ones_like(temp)], -1)
    return x, temp[:, -1] - 0.5 * gas[:, -1]


@scenario(
    "glassblowing_furnace_controller",
    "sgd_momentum",
    "exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    onset=20,
    note="linear recurrence of spectral radius 1.1; the curriculum lengthens traces from 24 to 96 readings at step 20, no clipping",
)
def h132_glassblowing_furnace_long_traces(ctx: Context) -> None:
    gen = seeded(13204)
    model = FurnaceRNN()
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    ctx.attach(model, opt)
    for step in range(40):
        x, y = _furnace_batch(gen, length=24 if step < 20 else 96)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(
            float(torch.stack([p.grad.norm() for p in model.parameters()]).norm())
        )
        opt.step()
        ctx.step(loss)
    before = max(ctx.grad_norms[:20])
    after = [g for g in ctx.grad_norms[20:] if math.isfinite(g)]
    ctx.check(
        "finite and tame before the longer traces", _finite(ctx.losses[:20]) and before < 1000
    )
    ctx.check(
        "gradient norm jumps over 100x once traces lengthen",
        not _finite(ctx.grad_norms[20:]) or max(after) > 100 * before,
    )


class LanternAttention(nn.Module):
    """Attends over a lantern's burner readings with a learnt sharpness (log temperature)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.attn = nn.Linear(dim, 2 * dim)
        self.log_temp = nn.Parameter(torch.zeros(()))
        self.out = nn.Linear(dim, 1)
        self.last_logits = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        q, k = self.attn(h).chunk(2, -1)
        logits = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]) * self.log_temp.exp()
        self.last_logits = logits.detach()
        return self.out(torch.softmax(logits, -1) @ h).mean(1).squeeze(-1)


def _lantern_batch(gen, batch=32, length=10):
    x = torch.randn(batch, length, 4, generator=gen)
    return x, (x[..., 0].max(1).values - 0.3 * x[..., 1].mean(1))


@scenario(
    "paper_lantern_lift_estimator",
    "nesterov",
    "attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="the attention's learnt log-temperature shares the trunk's high lr and climbs",
)
def h132_paper_lantern_temperature_runaway(ctx: Context) -> None:
    gen = seeded(13205)
    model = LanternAttention()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    first = None
    for _ in range(80):
        x, y = _lantern_batch(gen)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
        if first is None:
            first = float(model.last_logits.abs().max())
    last = float(model.last_logits.abs().max())
    ctx.check("attention logits grew more than 10x", last > 10 * first)
    ctx.check("finite", _finite(ctx.losses))


def _tab_batch(gen, batch, feats, fn):
    x = torch.randn(batch, feats, generator=gen)
    return x, fn(x)


class Net(nn.Module):
    def __init__(self, feats: int, hidden: int, out: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(feats, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.mid(F.relu(self.hidden(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _geyser_label(x):
    return (x[:, 0] + 0.5 * x[:, 1] - x[:, 2] > 0).long() + (x[:, 3] > 1.0).long()


@scenario(
    "geyser_eruption_forecaster",
    "rprop",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Rprop on full batches of separable eruption classes: the unnormalised head's logits run away",
)
def h132_geyser_rprop_logit_runaway(ctx: Context) -> None:
    gen = seeded(13206)
    model = Net(6, 32, 3)
    opt = torch.optim.Rprop(model.parameters(), lr=0.01, step_sizes=(1e-6, 5.0))
    x, y = _tab_batch(gen, 256, 6, _geyser_label)
    ctx.attach(model, opt)
    first = float(model(x).detach().abs().max())
    for _ in range(60):
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    last = float(model(x).detach().abs().max())
    ctx.check("output logits grew past 50 and 20x their start", last > 50 and last > 20 * first)


@scenario(
    "geyser_eruption_forecaster",
    "sgd",
    "healthy",
    heldout=True,
    note="plain SGD on noisy minibatches, step decay",
)
def h132_geyser_sgd_healthy(ctx: Context) -> None:
    gen = seeded(13207)
    model = Net(6, 32, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 40, 0.5)
    ctx.attach(model, opt)
    for _ in range(100):
        x, y = _tab_batch(gen, 32, 6, _geyser_label)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.8 * _mean(ctx.losses[:10]))
    ctx.check("finite", _finite(ctx.losses))


def _route_time(x):
    return 2.0 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] * x[:, 3]


@scenario(
    "rickshaw_route_time_regressor",
    "asgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="a hand-rolled weight decay with its sign flipped grows the weights 4% a step from step 30",
    onset=30,
)
def h132_rickshaw_flipped_weight_decay(ctx: Context) -> None:
    gen = seeded(13208)
    model = Net(5, 32, 1)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    for step in range(150):
        x, y = _tab_batch(gen, 32, 5, _route_time)
        loss = F.mse_loss(model(x).squeeze(-1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= 30:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.04)  # meant p.mul_(1 - 0.04)
        ctx.step(loss)
    lo = min(ctx.losses[:30])
    ctx.check("loss climbs far above its low", not _finite(ctx.losses) or ctx.losses[-1] > 100 * lo)


class TensionModel(nn.Module):
    """Predicts a string's log tension from strain gauges: log of a positive stiffness."""

    def __init__(self) -> None:
        super().__init__()
        self.gauge = nn.Linear(4, 16)
        self.tension = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stiffness = F.relu(self.tension(torch.tanh(self.gauge(x)))).squeeze(-1)
        return torch.log(stiffness * x[:, 0].abs())


@scenario(
    "puppet_string_tension_model",
    "adam",
    "nonfinite",
    where=("tension",),
    diverges=25,
    heldout=True,
    note="at step 25 a slack string reads exactly zero strain: log(0) gives -inf, then NaN",
    onset=25,
)
def h132_puppet_slack_string_log_zero(ctx: Context) -> None:
    gen = seeded(13209)
    model = TensionModel()
    with torch.no_grad():
        model.tension.bias.fill_(1.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    for step in range(40):
        x = torch.rand(32, 4, generator=gen) + 0.5
        if step == 25:
            x[:4, 0] = 0.0
        y = torch.log(x[:, 0] * (1 + x[:, 1]))
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("finite before the slack reading", _finite(ctx.losses[:25]))
    ctx.check("non-finite from step 25", not math.isfinite(ctx.losses[25]))


def _tile_label(x):
    return x[:, :3].argmax(1) * 2 + (x[:, 3] > 0).long()


class TileNet(Net):
    """Colour classifier whose head multiplies its logits by a fixed scale of 2000."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2000.0 * self.head(self.features(x))


@scenario(
    "mosaic_tile_colour_classifier",
    "adagrad",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="logit scale of 2000 on the head: float32 softmax gives the target exactly 1",
)
def h132_mosaic_tile_logit_scale(ctx: Context) -> None:
    gen = seeded(13210)
    model = TileNet(6, 32, 6)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    for _ in range(60):
        x, y = _tab_batch(gen, 64, 6, _tile_label)
        ctx.targets(y)
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("over 40% of rows collapsed", collapsed_fraction(out.detach(), y) > 0.4)


@scenario(
    "mosaic_tile_colour_classifier",
    "radam",
    "healthy",
    heldout=True,
    note="RAdam, unscaled head, noisy minibatches",
)
def h132_mosaic_tile_radam_healthy(ctx: Context) -> None:
    gen = seeded(13211)
    model = Net(6, 32, 6)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    for _ in range(100):
        x, y = _tab_batch(gen, 32, 6, _tile_label)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.7 * _mean(ctx.losses[:10]))
    ctx.check("finite", _finite(ctx.losses))


def _note_label(x):
    return (x[:, 0] * x[:, 1] > 0).long() * 2 + (x[:, 2] > 0).long()


@scenario(
    "perfume_note_classifier",
    "nadam",
    "loss_of_plasticity",
    where=("hidden", "mid"),
    diverges=None,
    heldout=True,
    note="a new blend task every 40 steps at NAdam lr 0.05: the ReLU units die and stop learning",
)
def h132_perfume_note_dead_units(ctx: Context) -> None:
    gen = seeded(13212)
    model = Net(8, 48, 4)
    opt = torch.optim.NAdam(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    for step in range(160):
        task = step // 40
        perm = torch.randperm(8, generator=torch.Generator().manual_seed(task))
        x = torch.randn(32, 8, generator=gen)
        y = _note_label(x[:, perm])
        x = x + 1.5
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.step(loss)
    probe = torch.randn(256, 8, generator=gen) + 1.5
    dead = dead_fraction(F.relu(model.mid(F.relu(model.hidden(probe)))).detach())
    ctx.check("over half the units are dead", dead > 0.5)
    ctx.check(
        "the last task is hardly learnt",
        _mean(ctx.losses[150:160]) > 0.85 * _mean(ctx.losses[120:130]),
    )


def _shadow_angle(x):
    return 30.0 * torch.tanh(x[:, 0]) + 10.0 * x[:, 1] * x[:, 2]


@scenario(
    "sundial_shadow_angle_regressor",
    "adam",
    "adam_second_moment_poisoned",
    where=("head",),
    diverges=None,
    heldout=True,
    note="at step 25 one reading is logged in micro-degrees (x1e6): one giant gradient fills "
    "the head's second moment and its updates stall for hundreds of steps",
    onset=25,
)
def h132_sundial_microdegree_reading(ctx: Context) -> None:
    gen = seeded(13213)
    model = Net(4, 32, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    moves: list[float] = []
    v_head: list[float] = []
    for step in range(110):
        x, y = _tab_batch(gen, 32, 4, _shadow_angle)
        if step == 25:
            y[0] = y[0] * 1e6
        loss = F.mse_loss(model(x).squeeze(-1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        b0 = model.head.bias.detach().clone()
        opt.step()
        moves.append(float((model.head.bias.detach() - b0).abs().sum()))
        if step in (24, 26):
            v_head.append(float(opt.state[model.head.bias]["exp_avg_sq"].max()))
        ctx.step(loss)
    ctx.check("the head's second moment jumps over 1e6x", v_head[1] > 1e6 * v_head[0])
    ctx.check(
        "head bias updates shrink over 10x after the giant gradient",
        _mean(moves[70:110]) < 0.1 * _mean(moves[15:25]),
    )
    ctx.check(
        "the loss stalls near its pre-fault level",
        _mean(ctx.losses[80:110]) > 0.5 * _mean(ctx.losses[15:25]),
    )


@scenario(
    "sundial_shadow_angle_regressor",
    "rmsprop",
    "healthy",
    heldout=True,
    note="RMSprop with exponential decay on noisy readings",
)
def h132_sundial_rmsprop_healthy(ctx: Context) -> None:
    gen = seeded(13214)
    model = Net(4, 32, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, 0.99)
    ctx.attach(model, opt)
    for _ in range(120):
        x, y = _tab_batch(gen, 32, 4, _shadow_angle)
        y = y + 0.5 * torch.randn(y.shape, generator=gen)
        loss = F.mse_loss(model(x).squeeze(-1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:10]))
    ctx.check("finite", _finite(ctx.losses))


class PitchNet(nn.Module):
    """Blade-pitch regressor whose gust features are standardised over the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.pitch = nn.Linear(5, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pitch(x)
        h = (h - h.mean(0)) / (h.std(0) + 1e-8)
        return self.head(torch.tanh(h)).squeeze(-1)


@scenario(
    "windmill_blade_pitch_controller",
    "adamax",
    "gradient_spike",
    where=("pitch",),
    diverges=None,
    heldout=True,
    note="at step 30 a stuck anemometer sends one batch of near-identical readings: the batch "
    "standardisation divides by ~1e-5 and the pitch layer's gradient spikes",
    onset=30,
)
def h132_windmill_stuck_anemometer(ctx: Context) -> None:
    gen = seeded(13215)
    model = PitchNet()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    for step in range(70):
        x = torch.randn(32, 5, generator=gen)
        if step == 30:
            x = x[:1].expand(32, -1) + 1e-5 * torch.randn(32, 5, generator=gen)
        y = torch.tanh(x[:, 0] - x[:, 1]) + 0.3 * x[:, 2]
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(float(model.pitch.weight.grad.norm()))
        opt.step()
        ctx.step(loss)
    g = ctx.grad_norms
    typical = sorted(g[:30])[15]
    ctx.check("pitch gradient spikes over 50x at step 30", g[30] > 50 * typical)
    ctx.check("finite throughout", _finite(ctx.losses))


class DroneNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inlet = nn.Linear(6, 32)
        self.body = nn.Linear(32, 32)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.body(F.gelu(self.inlet(x))))).squeeze(-1)


def _drone_batches(gen, raw_from: int):
    step = 0
    while True:
        x = torch.randn(32, 6, generator=gen)
        y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]
        if step >= raw_from:
            x = x * 2000.0  # the new recorder's bag-pressure channel arrives in raw counts
        step += 1
        yield x, y


@scenario(
    "bagpipe_drone_tuning_model",
    "adam",
    "amp_overflow",
    where=("inlet",),
    diverges=None,
    heldout=True,
    note="fp16 autocast with a GradScaler; from step 25 the inputs come unnormalised and the "
    "inlet's fp16 weight gradients overflow until the scale has collapsed",
    onset=25,
)
def h132_bagpipe_raw_pressure_fp16(ctx: Context) -> None:
    from scenarios.common import fit

    gen = seeded(13216)
    model = DroneNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=10)

    fit(
        ctx,
        model,
        opt,
        _drone_batches(gen, 26),
        60,
        loss_fn=F.mse_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    ctx.check(
        "loss scale fell over 1000x after the raw inputs", ctx.scales[-1] < 1e-3 * ctx.scales[24]
    )
    ctx.check(
        "over 10 steps from 25 on skipped for inf/NaN gradients",
        sum(not math.isfinite(g) for g in ctx.grad_norms[25:]) > 10,
    )
    ctx.check("the loss stays finite", _finite(ctx.losses))
