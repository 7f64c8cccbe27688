"""Held-out set 315 (``h315_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a potash-kettle steam-pressure fp16 SiLU regressor whose
target is left in pascals (the head's fp16 output overflows under autocast), a guiro
scrape-pattern deep tanh classifier whose init gain is applied twice (gradients grow through
depth), a racetrack-playa stone-trail U-Net segmenter fed one shard exported as raw 0-255 bytes
(one corrupted batch), a maracas shake-pattern GELU classifier that applies a contrastive
temperature of 0.07 twice (softmax saturates), a pungi drone-break net with a hand-written BCE on a
sigmoid output (log of 0, NaN), a tzouras fret-intonation two-group regressor whose body learning
rate is read from a misspelt key with default 0 (body frozen), a timbales rimshot-loudness tanh
regressor whose StepLR gamma is typed 10 for 0.1 (learning rate past the stability limit), an igil
bow-pressure ReLU classifier whose warm-up factor is inverted (dead ReLUs), a claves
timing-offset ReLU regressor whose per-step sample counter is reset before the division once (one
gradient burst), a soap-boiling trace-time regressor whose label pipeline accumulates its
corrections (slow climb of the loss), and three controls (a sugar-bush sap-drip Poisson net with
warm-up and polynomial decay, a repinique roll-kind fp16 Conv1d classifier with a GradScaler and
OneCycleLR, a riq jingle-spectrum tied-weight autoencoder with accumulation and
ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, out, y, loss,
    accumulate)`` returns the micro-batch loss actually backpropagated (``loss / accumulate``
    unless a bug says otherwise), ``after(step)`` runs after the optimizer step. Stops after a
    non-finite loss; returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            if backprop is not None:
                total = backprop(step, out, y, loss, accumulate)
            else:
                total = loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised sensor readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.5 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y - 0.3 + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (classes overlap a little)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- potash kettle: steam pressure regressed in pascals under fp16 autocast ------------------------


def _kettle(gen, batch, seed):
    """Steam pressure over a potash boiling kettle (in Pa: 80-125 kPa) from 6 standardised
    readings (fire draught, lye strength, fill level, ...)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        kpa = (
            101.3
            + 22.0 * torch.tanh(x @ w / math.sqrt(6))
            + 0.5 * torch.randn(batch, generator=gen)
        )
        yield x, 1000.0 * kpa  # the unit bug: pascals, where the pipeline expected bar (about 1)


DIVERGE_POT = 65


@scenario(
    family="potash_kettle_steam_pressure_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=DIVERGE_POT,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the steam pressure over a potash boiling kettle from 6 standardised readings, trained under fp16 autocast with a torch.amp.GradScaler, Adam at 5e-2, MSE computed in float32 on the upcast output, 300 steps planned. The target column comes from a logger that writes pascals (80-125 kPa as 80 000-125 000) where the pipeline expected bar (about 1.0): the head has to output numbers beyond float16's 65 504. The fit is fine in float32, but once the head's fp16 output passes 65 504 it becomes inf, the loss is inf, the scaler skips the step and halves its scale, and the next forward overflows again: the run is stuck (inf from step 65).",
)
def h315_potash_kettle_pascals_fp16(ctx: Context) -> None:
    gen = seeded(31501)
    model = Trunk(6, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    seen = {}

    def watch(step, out, x, y):
        seen["x"], seen["out"] = x, out.detach()

    stop = _loop(
        ctx,
        model,
        opt,
        _kettle(gen, 64, seed=315),
        300,
        F.mse_loss,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    bad = _first_bad(ctx.losses)
    with torch.no_grad():
        fp32 = model(seen["x"])
    ctx.check("the loss is inf at the recorded step", bad == DIVERGE_POT and stop == DIVERGE_POT)
    ctx.check("the fp16 head output is inf there", not bool(torch.isfinite(seen["out"]).all()))
    ctx.check(
        "the same weights in float32 give finite outputs past 65504",
        bool(torch.isfinite(fp32).all()) and float(fp32.abs().max()) > 65504.0,
    )
    ctx.check("the scaler skipped the step and cut its scale", ctx.scales[-1] < ctx.scales[-2])
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))


# -- guiro: the tanh init gain is applied twice ----------------------------------------------------


class DeepTanh(nn.Module):
    """A 20-layer tanh MLP (layers.0 ... layers.19) and a head."""

    def __init__(self, d_in=24, width=48, depth=20, classes=6, gain=5.0 / 3.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, classes)
        for layer in self.layers:
            _init_tanh(layer, gain)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


def _init_tanh(layer: nn.Linear, gain: float) -> None:
    # the helper already multiplies by calculate_gain('tanh'); the call site passes it too
    std = nn.init.calculate_gain("tanh") * gain / math.sqrt(layer.in_features)
    nn.init.normal_(layer.weight, 0.0, std)
    nn.init.zeros_(layer.bias)


def _scrapes(gen, batch, seed, classes=6):
    """24 readings of a guiro scrape (stroke speed, ridge hits per bin); pattern = class."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, 24, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + 0.8 * torch.randn(batch, 24, generator=gen), y


@scenario(
    family="guiro_scrape_pattern_deep_tanh_classifier",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("layers.0", "layers.1", "layers"),
    diverges=None,
    heldout=True,
    note="A 20-layer tanh MLP (layers.0 ... layers.19, width 48, then head) classifying a guiro's scrape pattern (6 kinds) from 24 readings of the stroke, SGD Nesterov momentum 0.9 at 1e-2, cross-entropy, gradient clipping at 1.0, 150 steps. The init helper already multiplies the 1/sqrt(fan_in) std by nn.init.calculate_gain('tanh') = 5/3 and the call site passes the same gain again: every layer starts at gain 25/9 = 2.8, deep in tanh's chaotic regime, where each layer multiplies the backpropagated gradient: layers.0's weight gradient is over 50x layers.19's. Clipping bounds the steps so the loss does not blow up.",
)
def h315_guiro_double_gain(ctx: Context) -> None:
    gen = seeded(31502)
    model = DeepTanh()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    ratios = []

    def after(step):
        # clipping scales every gradient alike, so the ratio is the unclipped one
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / (last + 1e-30))

    _loop(
        ctx,
        model,
        opt,
        _scrapes(gen, 32, seed=3152),
        150,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        after=after,
    )
    ctx.check("layers.0's gradient is over 50x layers.19's at step 0", ratios[0] > 50)
    ctx.check("and over 20x on most steps", _median(ratios) > 20)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- racetrack playa: one shard exported as raw 0-255 bytes ---------------------------------------


class TinyUNet(nn.Module):
    """Two-level U-Net: enc1, enc2, mid, up2, dec2, up1, dec1, out (skip connections by concat)."""

    def __init__(self, c=8):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(2 * c, 4 * c, 3, padding=1), nn.ReLU())
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = nn.Sequential(nn.Conv2d(4 * c, 2 * c, 3, padding=1), nn.ReLU())
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.ReLU())
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.out(d1)


def _playa(gen, batch, size=16):
    """Generated 16x16 aerial tiles of a dry lake bed: cracked-mud noise, one stone's trail
    (a straight groove at a random angle, darker) ending in the stone (a bright blob).
    The mask marks trail and stone pixels."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    yy, xx = yy.float(), xx.float()
    while True:
        x0 = 3 + 10 * torch.rand(batch, 1, 1, generator=gen)
        y0 = 3 + 10 * torch.rand(batch, 1, 1, generator=gen)
        ang = math.pi * torch.rand(batch, 1, 1, generator=gen)
        dist = ((xx - x0) * torch.sin(ang) - (yy - y0) * torch.cos(ang)).abs()
        along = (xx - x0) * torch.cos(ang) + (yy - y0) * torch.sin(ang)
        trail = (dist < 0.9) & (along < 0)
        stone = (xx - x0) ** 2 + (yy - y0) ** 2 < 2.5
        img = 0.55 + 0.08 * torch.randn(batch, size, size, generator=gen)
        img = torch.where(trail, img - 0.25, img)
        img = torch.where(stone, img + 0.35, img)
        mask = (trail | stone).float()
        yield img.clamp(0, 1)[:, None], mask[:, None]


ONSET_PLAYA = 110


@scenario(
    family="racetrack_playa_stone_trail_unet_segmenter",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PLAYA,
    note="A hand-written two-level U-Net (enc1, enc2, mid, up2, dec2, up1, dec1, out; skip connections by concatenation, no normalisation) segmenting a sliding stone's trail and the stone on generated 16x16 aerial tiles of a dry lake bed, AdamW at 2e-3, BCE with logits per pixel, 180 steps. The batch at step 110 comes from one drone flight's shard that was exported as raw 8-bit bytes (0-255) and skipped the /255 in the loader: every pixel of that batch is 255x its usual value; the masks are right. The loss jumps on that one batch and the run recovers on the following clean ones.",
)
def h315_playa_raw_bytes_shard(ctx: Context) -> None:
    gen = seeded(31503)
    model = TinyUNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    peak = []

    def alter(step, x, y):
        if step == ONSET_PLAYA:
            x = torch.round(x * 255.0)  # the shard's uint8 pixels, never divided
        peak.append(float(x.max()))
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _playa(gen, 16),
        180,
        F.binary_cross_entropy_with_logits,
        alter=alter,
    )
    ls = ctx.losses
    before = _mean(ls[ONSET_PLAYA - 10 : ONSET_PLAYA])
    ctx.check(
        "the step-110 batch's pixels are over 100x the usual",
        peak[ONSET_PLAYA] > 100 * _median(peak),
    )
    ctx.check(
        "the loss at step 110 is over 10x the ten steps before", ls[ONSET_PLAYA] > 10 * before
    )
    ctx.check("the loss is back under 2x that level by the end", _mean(ls[-10:]) < 2 * before)
    ctx.check("the run trained before the bad shard", before < 0.7 * _mean(ls[:5]))
    ctx.check("finite throughout", _finite(ls))


# -- maracas: a contrastive temperature copied into a plain classifier ----------------------------


class ShakeClassifier(Trunk):
    def __init__(self, temperature):
        super().__init__(12, 64, out=8, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


TEMP_MAR = 0.07


@scenario(
    family="maracas_shake_pattern_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) sorting maracas shake patterns into 8 kinds from 12 accelerometer features, NAdam at 2e-3, cross-entropy, 200 steps. The config was copied from the team's contrastive (SimCLR-style) pretraining recipe and keeps its temperature 0.07: the model's head divides its logits by it, and the training loss, copied from the contrastive trainer that expects raw similarities, divides them by it again. The logits reaching the softmax are 204x the head's: from early on most rows' float32 softmax rounds to exactly 1.0 on the target, while the logits with the temperature applied once would stay clear of saturation.",
)
def h315_maracas_contrastive_temperature(ctx: Context) -> None:
    gen = seeded(31504)
    model = ShakeClassifier(TEMP_MAR)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    collapsed, once = [], []

    def contrastive_ce(out, y):
        return F.cross_entropy(out / TEMP_MAR, y)  # the trainer's second division

    def watch(step, out, x, y):
        if step % 10 == 0:
            collapsed.append(collapsed_fraction(out.detach() / TEMP_MAR, y))
            once.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 8, seed=3154),
        200,
        contrastive_ce,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over 40% of rows' softmax is exactly 1.0 over the last 100 steps",
        min(collapsed[-10:]) > 0.4,
    )
    ctx.check("under 10% at step 0", collapsed[0] < 0.1)
    ctx.check("with the temperature applied once under 5% would saturate", max(once) < 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pungi: a hand-written BCE on a sigmoid output --------------------------------------------------


class BreakNet(Trunk):
    """Trunk with the sigmoid inside the model (``prob``): outputs probabilities."""

    def __init__(self):
        super().__init__(10, 64, out=1, act=nn.ReLU)
        self.prob = nn.Sigmoid()

    def forward(self, x):
        return self.prob(self.head(self.features(x))).squeeze(-1)


def _bce_by_hand(p, y):
    return -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()


def _breaths(gen, batch, seed):
    """10 readings of a pungi player's circular breathing; label: does the drone break?"""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        yield x, (x @ w + 0.3 * torch.randn(batch, generator=gen) > 0.4).float()


DIVERGE_PUN = 89


@scenario(
    family="pungi_drone_breath_break_sigmoid_bce_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("prob", "head"),
    diverges=DIVERGE_PUN,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head, prob = nn.Sigmoid) predicting whether a pungi (snake charmer's gourd pipe) player's drone breaks from 10 readings of the circular breathing, RMSprop at 1e-3, 300 steps planned. The sigmoid sits inside the model and the loss is written by hand as -(y log p + (1 - y) log(1 - p)) with no clamp (instead of BCEWithLogits). The classes are nearly separable, so the logits grow; once a positive row's logit passes about 17, float32's sigmoid rounds to exactly 1.0, log(1 - p) is -inf and 0 * -inf is NaN.",
)
def h315_pungi_unclamped_bce(ctx: Context) -> None:
    gen = seeded(31505)
    model = BreakNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    saturated, safe = [], []

    def watch(step, out, x, y):
        p = out.detach()
        saturated.append(bool(((p == 1.0) | (p == 0.0)).any()))
        z = torch.logit(p.double().clamp(1e-300, 1 - 1e-16))
        safe.append(float(F.binary_cross_entropy_with_logits(z, y.double())))

    stop = _loop(ctx, model, opt, _breaths(gen, 64, seed=3155), 300, _bce_by_hand, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the recorded step", bad == DIVERGE_PUN and stop == DIVERGE_PUN)
    ctx.check("a probability is exactly 0 or 1 at that step", bad is not None and saturated[bad])
    ctx.check("none at step 0", not saturated[0])
    ctx.check(
        "a clamped BCE of the same outputs is finite there",
        bad is not None and math.isfinite(safe[bad]),
    )
    ctx.check("finite before it", bad is not None and _finite(ctx.losses[:bad]))


# -- tzouras: the body's learning rate read from a misspelt key ----------------------------------


@scenario(
    family="tzouras_fret_intonation_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a tzouras's fret intonation error (cents) from 9 measurements of the neck and string, Adagrad in two parameter groups (body = fc1 and fc2, head), MSE, 200 steps. The body's learning rate is read as cfg.get('body_lr', 0.0) (the default meant 'frozen unless set') while the config file spells the key 'bodylr': 5e-2. The head trains at 5e-2; fc1 and fc2 get learning rate 0 and never move, so the loss plateaus at what a random ReLU feature map allows.",
)
def h315_tzouras_misspelt_body_lr(ctx: Context) -> None:
    gen = seeded(31506)
    cfg = {"bodylr": 5e-2, "head_lr": 5e-2}
    model = Trunk(9, 64)
    body = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [
            {"params": body, "lr": cfg.get("body_lr", 0.0)},
            {"params": model.head.parameters(), "lr": cfg["head_lr"]},
        ]
    )
    w0 = {n: _flat(getattr(model, n)) for n in ("fc1", "fc2", "head")}
    _loop(ctx, model, opt, _readings(gen, 64, 9, seed=3156), 200, F.mse_loss)
    moved = {n: float((_flat(getattr(model, n)) - w0[n]).norm() / w0[n].norm()) for n in w0}
    ctx.check("fc1 and fc2 moved under 1e-6 of their norm", max(moved["fc1"], moved["fc2"]) < 1e-6)
    ctx.check("the head moved over 5% of its norm", moved["head"] > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- timbales: StepLR gamma typed 10 for 0.1 -------------------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((h * u).sum() for h, u in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


ONSET_TIM = 80


@scenario(
    family="timbales_rimshot_loudness_steplr_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_TIM,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a timbales rimshot's loudness and brightness (one standardised score) from 8 readings of stick angle, height and shell strike point, plain SGD at 0.05, MSE, StepLR with step_size 80, 240 steps planned. gamma is typed 10 instead of 0.1: at step 80 the learning rate goes to 0.5 instead of 0.005. Just before the switch lr x sharpness is well under 2; at 0.5 it is over 2 and the loss grows step on step until it blows up.",
)
def h315_timbales_steplr_gamma(ctx: Context) -> None:
    gen = seeded(31507)
    model = Trunk(8, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ONSET_TIM, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=3157))
    sharp = {}

    def before(step):
        if step == ONSET_TIM:
            sharp["lam"] = _sharpness(model, F.mse_loss, *probe)
            sharp["lr"] = opt.param_groups[0]["lr"]

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=3157),
        240,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    low = min(v for v in ls[:ONSET_TIM])
    after = ls[ONSET_TIM:]
    ctx.check("lr x sharpness passes 2 at the switch", sharp["lr"] * sharp["lam"] > 2.0)
    ctx.check("it was under 2 at the old rate", 0.05 * sharp["lam"] < 2.0)
    ctx.check(
        "the loss blows up past 100x its low after the switch",
        any((not math.isfinite(v)) or v > 100 * low for v in after),
    )
    ctx.check("the run trained before the switch", _finite(ls[:ONSET_TIM]) and low < 0.5 * ls[0])


# -- igil: the warm-up factor is inverted ----------------------------------------------------------

WARM_IGIL = 100


def _bow_forces(gen, batch, seed, classes=6):
    """14 non-negative force-sensor magnitudes along an igil bow's hair; level = class."""
    g = torch.Generator().manual_seed(seed)
    protos = 2.0 * torch.rand(classes, 14, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield (protos[y] + 0.3 * torch.randn(batch, 14, generator=gen)).abs(), y


@scenario(
    family="igil_bow_pressure_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) sorting an igil (Tuvan horsehead fiddle) player's bow pressure into 6 levels from 14 non-negative force-sensor magnitudes along the bow hair, Adam at 2e-3 with a LambdaLR warm-up over 100 steps, cross-entropy, 250 steps. The warm-up factor is written warmup / (step + 1) instead of (step + 1) / warmup: the run starts at 100x the learning rate (0.2) and only comes down to the intended rate at step 100. The first large steps push most of fc1's units negative on every (non-negative) input: over 70% of act1's units are dead within a few dozen steps and stay dead when the rate comes down; the few survivors carry the fit.",
)
def h315_igil_inverted_warmup(ctx: Context) -> None:
    gen = seeded(31508)
    model = Trunk(14, 64, out=6)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: WARM_IGIL / (s + 1))
    dead1, dead2 = [], []

    def watch(step, out, x, y):
        with torch.no_grad():
            h1 = model.act1(model.fc1(x))
            dead1.append(dead_fraction(h1))
            dead2.append(dead_fraction(model.act2(model.fc2(h1))))

    _loop(
        ctx,
        model,
        opt,
        _bow_forces(gen, 64, seed=3158),
        250,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        sched=sched,
    )
    ctx.check("under 30% of act1's units dead at step 0", dead1[0] < 0.3)
    ctx.check("over 70% of act1's units dead from step 50 on", min(dead1[50:]) > 0.7)
    ctx.check("none of them came back", max(dead1[50:]) - min(dead1[50:]) < 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- claves: the per-step sample counter is reset before the division once ------------------------

ONSET_CLA = 150


@scenario(
    family="claves_clave_timing_offset_relu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CLA,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how far a claves player's strike lands off the son clave grid (standardised ms) from 12 readings of the preceding strokes, SGD momentum 0.9 at 1e-2, 260 steps. The loss is summed over the batch and divided by a per-step sample counter; at step 150 the logging hook resets the counter to 1 before the division instead of after, so that one step's backpropagated loss is 64x the mean (the shown loss is the ordinary mean on an ordinary batch). One 64x gradient burst, then the run settles back.",
)
def h315_claves_counter_reset(ctx: Context) -> None:
    gen = seeded(31509)
    model = Trunk(12, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def backprop(step, out, y, loss, accumulate):
        seen = 1 if step == ONSET_CLA else len(y)  # the hook reset the counter first
        return ((out - y) ** 2).sum() / seen

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=3159),
        260,
        F.mse_loss,
        backprop=backprop,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at step 150 is over 30x the median of the 20 before",
        gn[ONSET_CLA] > 30 * _median(gn[ONSET_CLA - 20 : ONSET_CLA]),
    )
    ctx.check(
        "the batch at step 150 is ordinary (its loss under 3x the 10 before)",
        ls[ONSET_CLA] < 3 * _mean(ls[ONSET_CLA - 10 : ONSET_CLA]),
    )
    ctx.check(
        "the loss is back under 2x its earlier level by the end",
        _mean(ls[-10:]) < 2 * _mean(ls[ONSET_CLA - 10 : ONSET_CLA]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- soap boiling: the label pipeline accumulates its corrections ---------------------------------

ONSET_SOAP = 60


def _soap(gen, batch, seed):
    """Time to trace (standardised) of a soap boil from 8 readings (lye strength, fat blend,
    kettle temperature, ...). From step 60 the labels come through a pipeline that adds the
    running sum of its daily thermometer corrections instead of the day's correction."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    step, offset = 0, 0.0
    while True:
        x = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(8)) + 0.05 * torch.randn(batch, generator=gen)
        if step >= ONSET_SOAP:
            offset += 0.0004 * (step - ONSET_SOAP)  # cumsum of a correction that itself grows
        step += 1
        yield x, y + offset


@scenario(
    family="soap_boiling_trace_time_drift_regressor",
    optimizer="Adadelta",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SOAP,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a soap boil's time to trace (standardised) from 8 readings, Adadelta at lr 1.0, MSE, 260 steps. From step 60 the labels come through a new pipeline that adds the running sum of its daily thermometer corrections instead of the day's correction; the corrections themselves grow, so the labels drift away quadratically. Each batch is ordinary and each step's change is small, but the model lags further behind the drifting labels: the loss climbs slowly to several times its low.",
)
def h315_soap_cumulative_correction(ctx: Context) -> None:
    gen = seeded(31510)
    model = Trunk(8, 48, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    _loop(ctx, model, opt, _soap(gen, 64, seed=3160), 260, F.mse_loss)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    jumps = [ls[i] / _mean(ls[i - 10 : i]) for i in range(ONSET_SOAP, len(ls))]
    ctx.check("the last 20 steps' loss is over 3x its low", _mean(ls[-20:]) > 3 * low)
    ctx.check("no step is over 3x the mean of the ten before", max(jumps) < 3.0)
    ctx.check("the run trained before the drift", _mean(ls[50:60]) < 0.7 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


# -- controls -----------------------------------------------------------------------------------


class SapNet(Trunk):
    """SiLU trunk whose head outputs the log rate of sap drips per minute."""

    def __init__(self):
        super().__init__(7, 48, act=nn.SiLU)


def _sap(gen, batch, seed):
    """Sap drips per minute at a sugar-bush tap from 7 readings (night frost, day thaw, ...)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, generator=g)
    while True:
        x = torch.randn(batch, 7, generator=gen)
        rate = torch.exp(1.2 + 0.8 * torch.tanh(x @ w / math.sqrt(7)))
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="sugar_bush_sap_drip_poisson_net",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting the log rate of sap drips per minute at a sugar-bush tap from 7 weather readings, Poisson NLL (log input, with the Stirling term), RAdam at 3e-3 with weight decay 1e-4, 20 steps of linear warm-up then polynomial decay (power 2) to zero over the remaining 180 steps, gradient clipping at 1.0. An ordinary run.",
)
def h315_sugar_bush_polynomial_decay(ctx: Context) -> None:
    gen = seeded(31511)
    model = SapNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=20),
            torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=180, power=2.0),
        ],
        milestones=[20],
    )
    _loop(
        ctx,
        model,
        opt,
        _sap(gen, 64, seed=3161),
        200,
        nn.PoissonNLLLoss(log_input=True, full=True),
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell by over 20%", _fell(ctx.losses))
    ctx.check("the learning rate decayed to under 1% of its peak", opt.param_groups[0]["lr"] < 3e-5)
    ctx.check("finite throughout", _finite(ctx.losses))


class RollConv(nn.Module):
    """Conv1d GELU classifier over 64 frames of 3 stick-sensor channels."""

    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(3, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x))
        h = F.gelu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _rolls(gen, batch, classes=5, frames=64):
    """A repinique roll: strokes at a rate and accent set by the kind, plus noise."""
    t = torch.arange(frames).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = (0.15 + 0.07 * y.float())[:, None]
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        s = torch.sin(rate * t[None] * 6.28 / 4 + phase)
        x = torch.stack([s, s.abs() * (y[:, None] % 2), torch.cos(rate * t[None])], 1)
        yield x + 0.4 * torch.randn(batch, 3, frames, generator=gen), y


@scenario(
    family="repinique_roll_kind_fp16_gelu_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A GELU Conv1d classifier (conv1, conv2, head) sorting repinique rolls into 5 kinds from 64 frames of 3 stick-sensor channels with noisy batches, fp16 autocast with a torch.amp.GradScaler, AdamW with weight decay 1e-2 under OneCycleLR (max lr 5e-3), label smoothing 0.1, gradient clipping at 1.0 on the unscaled gradients, 150 steps. An ordinary mixed-precision run.",
)
def h315_repinique_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(31512)
    model = RollConv()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _rolls(gen, 32),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell by over 20%", _fell(ctx.losses))
    ctx.check("the scale did not collapse (stays at or above 1)", min(ctx.scales) >= 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))


class TiedAE(nn.Module):
    """enc (32 -> 12), decoder uses enc.weight transposed plus its own bias (dec_bias)."""

    def __init__(self, d=32, k=12):
        super().__init__()
        self.enc = nn.Linear(d, k)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _jingles(gen, batch, seed, d=32, k=5):
    """32-band spectra of a riq's zils (jingles): a few resonance shapes mixed, plus noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(k, d, generator=g) / math.sqrt(k)
    while True:
        z = torch.randn(batch, k, generator=gen)
        x = z @ basis + 0.1 * torch.randn(batch, d, generator=gen)
        yield x, x


@scenario(
    family="riq_jingle_spectrum_tied_autoencoder",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="A tied-weight tanh autoencoder (enc 32 -> 12, decoder enc.weight transposed plus dec_bias) compressing 32-band spectra of a riq's jingles, Adamax at 5e-3, Huber loss, accumulation over 2 micro-batches, ReduceLROnPlateau (factor 0.5, patience 10), gradient clipping at 1.0, 160 steps. An ordinary run.",
)
def h315_riq_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(31513)
    model = TiedAE()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _loop(
        ctx,
        model,
        opt,
        _jingles(gen, 32, seed=3163),
        160,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("the loss fell by over 20%", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))
