"""Held-out set 222 (``h222_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before. Faults: a lake-effect snow-band 1-D U-Net (encoder-decoder
with skip connections) whose targets were left in linear radar reflectivity and overflow fp16
under autocast, a candlepin pinfall ReLU classifier fed unstandardised lane readings whose ReLUs
die, a wood-chopping split-time tanh regressor whose warm-up peak has a typo and carries plain
SGD past the 2/sharpness limit, a tower-bell clapper-wear regressor whose eval-style loss path
sums over the batch for one step and poisons AdamW's second moment, a distillery spirit-cut net
whose hand-rolled batch standardisation divides 0 by 0 on a shard with a dead thermocouple, a
spin-bowler drift regressor fed one shard of ball-tracking positions in millimetres, a conga
stroke conv1d classifier whose epoch-tail path sums its loss for one step, a neon-sign tube-bend
regressor whose fine-tuning `trunk_lr_mult: 0.0` froze its trunk, a sand-casting porosity deep
leaky-ReLU MLP initialised with a fixed std far above 1/sqrt(fan_in), and a stone-skimming
skip-count cosine classifier whose feature normalisation was switched off. Controls: an
ice-circle rotation GRU under ReduceLROnPlateau, a highland-fling step conv1d classifier with
OneCycleLR, accumulation and label smoothing, and a blood-rain dust-load Gaussian-NLL net under
fp16 autocast with a GradScaler.

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


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss,
    out, y)`` returns what is backpropagated, ``after(step)`` runs after the optimizer step;
    stops after logging a NaN loss."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total, out.float(), y)
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
        if math.isnan(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


def _rel_change(before: list[torch.Tensor], params) -> float:
    num = sum(float((p.detach() - b).norm() ** 2) for p, b in zip(params, before, strict=True))
    den = sum(float(b.norm() ** 2) for b in before)
    return math.sqrt(num / max(den, 1e-30))


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

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


# -- lake-effect snow band: a 1-D U-Net predicting linear reflectivity in fp16 --------------------


class SnowBandUNet(nn.Module):
    """A small 1-D U-Net over 64 radar gates: two encoder levels, a middle, two decoder levels
    that concatenate the encoder maps (skip connections), and a 1x1 output convolution."""

    def __init__(self, feat=3, width=16, z_mean=2.0e4, z_std=2.0e4):
        super().__init__()
        self.enc1 = nn.Conv1d(feat, width, 3, padding=1)
        self.enc2 = nn.Conv1d(width, 2 * width, 3, padding=1)
        self.mid = nn.Conv1d(2 * width, 2 * width, 3, padding=1)
        self.dec2 = nn.Conv1d(4 * width, width, 3, padding=1)
        self.dec1 = nn.Conv1d(2 * width, width, 3, padding=1)
        self.out = nn.Conv1d(width, 1, 1)
        self.z_mean, self.z_std = z_mean, z_std

    def forward(self, x):
        e1 = F.silu(self.enc1(x))
        e2 = F.silu(self.enc2(F.avg_pool1d(e1, 2)))
        m = F.silu(self.mid(F.avg_pool1d(e2, 2)))
        d2 = F.silu(self.dec2(torch.cat([F.interpolate(m, scale_factor=2.0), e2], 1)))
        d1 = F.silu(self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1)))
        # de-standardised inside the forward: under autocast this product is fp16
        return (self.out(d1) * self.z_std + self.z_mean).squeeze(1)


def _snow_bands(gen, batch, gates=64):
    """Three standardised profiles along 64 radar gates downwind of a lake (lake-air temperature
    difference, wind alignment, moisture) and the reflectivity of the snow band, in linear Z
    (mm^6 m^-3): 10 ** (dBZ / 10), about 100 to 1.3e5 for 20 to 51 dBZ."""
    pos = torch.linspace(0, 1, gates)
    while True:
        centre = torch.rand(batch, 1, generator=gen)
        width = 0.05 + 0.15 * torch.rand(batch, 1, generator=gen)
        strength = torch.rand(batch, 1, generator=gen)
        band = torch.exp(-(((pos - centre) / width) ** 2))
        x = torch.stack(
            [
                band * (1 + strength) + 0.1 * torch.randn(batch, gates, generator=gen),
                band + 0.1 * torch.randn(batch, gates, generator=gen),
                strength.expand(-1, gates) + 0.1 * torch.randn(batch, gates, generator=gen),
            ],
            1,
        )
        dbz = 20 + 31 * band * (0.4 + 0.6 * strength)
        yield x, 10 ** (dbz / 10)


def _z_mse(out, y):
    return F.mse_loss(out / 1.0e4, y / 1.0e4)


@scenario(
    family="lake_effect_snow_band_fp16_unet",
    optimizer="Adam",
    cause="amp_overflow",
    where=("out",),
    diverges=85,
    heldout=True,
    note="A 1-D U-Net (enc1, enc2, mid, dec2 and dec1 concatenating the encoder maps through skip connections, out) mapping 3 standardised profiles along 64 radar gates downwind of a lake to the snow band's reflectivity, Adam at 2e-3, MSE on Z / 1e4, fp16 autocast with a default torch.amp.GradScaler. The targets were left in linear Z (mm^6 m^-3, up to about 1.3e5) instead of dBZ and the forward de-standardises inside autocast (out * 2e4 + 2e4, an fp16 product): as the net learns the heavy bands its fp16 output passes 65504 and overflows to inf at step 85; from then on most batches overflow, the gradients are non-finite, the scaler skips and halves its scale every time (over 1000-fold down) and training has stopped.",
)
def h222_lake_effect_unet_linear_z_fp16(ctx: Context) -> None:
    gen = seeded(22201)
    model = SnowBandUNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    top = {}

    def watch(step, out, x, y):
        top[step] = float(out.detach().float().abs().max())

    _train(ctx, model, opt, _snow_bands(gen, 32), 150, _z_mse, watch=watch, scaler=scaler)
    ls, gn = ctx.losses, ctx.grad_norms
    bad = _first_bad(ls)
    ctx.check("loss first non-finite at the declared step", bad == 85)
    ctx.check(
        "fp16 output finite and below 65504 before it", max(top[s] for s in range(85)) < 65504
    )
    ctx.check(
        "fp16 output overflowed to inf at that step", bad is not None and top[bad] == math.inf
    )
    ctx.check(
        "over half of the gradients non-finite after it",
        sum(not math.isfinite(v) for v in gn[85:]) > 0.5 * len(gn[85:]),
    )
    ctx.check("loss scale fell over 1000-fold after it", ctx.scales[-1] < 1e-3 * ctx.scales[84])
    ctx.check(
        "loss finite and falling before it",
        _finite(ls[:85]) and _mean(ls[75:85]) < 0.2 * _mean(ls[:5]),
    )


# -- candlepin: pinfall classifier on unstandardised lane readings, its ReLUs die ------------------


def _candlepin(gen, batch, seed=2):
    """Ten raw readings of a candlepin delivery (entry board, ball speed in km/h, entry angle in
    degrees, lane oil in units, dead-wood count, ...) and the pinfall class (0-10)."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([20.0, 28.0, 4.0, 30.0, 1.0, 12.0, 60.0, 0.5, 8.0, 40.0])
    scale = torch.tensor([6.0, 4.0, 2.0, 10.0, 1.0, 3.0, 15.0, 0.3, 2.0, 12.0])
    w = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    while True:
        z = torch.randn(batch, 10, generator=gen)
        score = torch.tanh(z @ w / 3) * 4 + torch.sin(z @ v / 2) * 2 + 5
        y = (score + 0.5 * torch.randn(batch, generator=gen)).round().clamp(0, 10).long()
        yield mean + scale * z, y


@scenario(
    family="candlepin_bowling_pinfall_relu_classifier",
    optimizer="SGD (momentum)",
    cause="loss_of_plasticity",
    where=("act1", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying a candlepin delivery's pinfall (0-10) from 10 readings, SGD momentum 0.9 at 0.02, cross-entropy. The readings were fed in raw units (entry board, ball speed in km/h, lane oil, angles in degrees; the standardisation step was skipped): the first large updates push the ReLUs' pre-activations negative and they never come back: the share of act1 units dead on a fixed probe batch goes from under 25% at init to over 60%, act2 stays over 60% dead, and the loss stalls near 1.9 (log 11 = 2.4); finite.",
)
def h222_candlepin_raw_inputs_dead_relus(ctx: Context) -> None:
    gen = seeded(22202)
    model = Stack(10, hidden=64, out=11)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    dead = {}
    probe = next(_candlepin(torch.Generator().manual_seed(52), 512))

    def after(step):
        if step % 10 == 0 or step == 249:
            with torch.no_grad():
                h1 = model.act1(model.fc1(probe[0]))
                h2 = model.act2(model.fc2(h1))
            dead[step] = (dead_fraction(h1), dead_fraction(h2))

    _train(ctx, model, opt, _candlepin(gen, 64), 250, F.cross_entropy, classifier=True, after=after)
    ls = ctx.losses
    ctx.check("act1 under 25% dead at step 0", dead[0][0] < 0.25)
    ctx.check("act1 over 60% dead at the end", dead[249][0] > 0.6)
    ctx.check("act2 over 60% dead at the end", dead[249][1] > 0.6)
    ctx.check(
        "loss stalled after step 100 (no better than 0.9x)",
        _mean(ls[-20:]) > 0.9 * _mean(ls[100:120]),
    )
    ctx.check("loss stayed above 1.5", min(ls[100:]) > 1.5 and _finite(ls))


# -- wood chopping: a warm-up whose peak has a typo takes plain SGD past 2/sharpness -------------


def _top_eig(model, loss_fn, batch, iters=12):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(batch[0]), batch[1])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="wood_chopping_underhand_split_time_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=15,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) predicting an underhand wood-chopping split time (standardised) from 9 standardised readings, plain SGD, MSE, linear warm-up over 100 steps by LambdaLR. The warm-up peak was typed 2.0 for 0.2: lr x the top Hessian eigenvalue (power iteration on a fixed batch) passes 2 at step 15 while the lr is still rising, the loss starts to oscillate up, and it blows up past 1e6 and to inf near step 55.",
)
def h222_wood_chopping_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(22203)
    model = Stack(9, hidden=48, act=nn.Tanh)
    peak, warm = 2.0, 100  # meant 0.2
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    probe = next(_readings(torch.Generator().manual_seed(53), 256, 9, seed=3))
    edge = {}

    def before(step):
        if step < 45:
            edge[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, probe)

    _train(
        ctx, model, opt, _readings(gen, 64, 9, seed=3), 150, F.mse_loss, sched=sched, before=before
    )
    ls = ctx.losses
    ctx.check("lr x sharpness under 1 at step 0", edge[0] < 1)
    ctx.check("lr x sharpness under 2 before step 15", max(edge[s] for s in range(15)) < 2)
    ctx.check("lr x sharpness past 2 at step 15", edge[15] > 2)
    ctx.check("loss fell before it", _mean(ls[10:15]) < 0.3 * ls[0])
    ctx.check(
        "loss blew up past 1e4x its minimum after it",
        max(v if math.isfinite(v) else 1e30 for v in ls[15:]) > 1e4 * min(ls[:15]),
    )


# -- tower bell: an eval-style loss path sums over the batch once and poisons AdamW -----------------


@scenario(
    family="tower_bell_clapper_wear_gelu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) predicting the clapper wear at 8 tower bells (standardised) from 12 standardised readings, AdamW at 2e-3 (betas 0.9, 0.999), MSE on batches of 256. At step 80 the checkpoint step runs the loss through the evaluation path, which uses reduction='sum' (256 x 8 terms): one gradient about 1800x the usual. It fills Adam's second moment (exp_avg_sq up over 1e4x) and the updates afterwards are several times smaller than those of the same run without the bug; the loss, knocked up by the step, stays above that run's; finite.",
)
def h222_tower_bell_summed_loss_once(ctx: Context) -> None:
    gen = seeded(22204)
    model = Stack(12, hidden=64, out=8, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    moves, vmax = [], []
    prev = {}

    def scale_loss(step, total, out, y):
        if step == 80:  # the checkpoint step runs the eval loss: reduction="sum"
            return F.mse_loss(out, y, reduction="sum")
        return total

    def before(step):
        prev["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        moves.append(_rel_change(prev["w"], list(model.parameters())))
        vmax.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 256, 12, seed=4, outputs=8),
        220,
        F.mse_loss,
        scale_loss=scale_loss,
        before=before,
        after=after,
    )
    # the same run without the bug, for comparison
    seeded(22204)
    twin = Stack(12, hidden=64, out=8, act=nn.GELU)
    topt = torch.optim.AdamW(twin.parameters(), lr=2e-3, weight_decay=0.01)
    tgen = torch.Generator().manual_seed(22204)
    tdata = _readings(tgen, 256, 12, seed=4, outputs=8)
    tmoves, tlosses = [], []
    for _ in range(220):
        x, y = next(tdata)
        w0 = [p.detach().clone() for p in twin.parameters()]
        F.mse_loss(twin(x), y).backward()
        topt.step()
        topt.zero_grad()
        tmoves.append(_rel_change(w0, list(twin.parameters())))
        tlosses.append(float(F.mse_loss(twin(x), y).detach()))
    gn, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient at step 80 over 500x the median of steps 60-79", gn[80] > 500 * _median(gn[60:80])
    )
    ctx.check("Adam's largest second moment up over 1e4x at step 80", vmax[80] > 1e4 * vmax[79])
    ctx.check(
        "updates over steps 140-219 under 0.45x the unbugged run's",
        _mean(moves[140:]) < 0.45 * _mean(tmoves[140:]),
    )
    ctx.check(
        "updates identical to the unbugged run's before it",
        abs(_mean(moves[:80]) / _mean(tmoves[:80]) - 1) < 0.01,
    )
    ctx.check(
        "loss over steps 200-219 above the unbugged run's",
        _mean(ls[200:]) > 1.1 * _mean(tlosses[200:]),
    )
    ctx.check("finite", _finite(ls))


# -- distillery: hand-rolled batch standardisation divides 0 by 0 ---------------------------------


class BatchStandardize(nn.Module):
    """Standardises each reading over the batch (no eps: the readings 'always vary')."""

    def forward(self, x):
        return (x - x.mean(0)) / x.std(0)


class CutNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.norm = BatchStandardize()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.norm(x)))))).squeeze(-1)


def _still_runs(gen, batch, seed=5):
    """Eight raw pot-still readings (head temperature in C, condenser water temperature in C,
    ABV, flow in L/h, ...) and whether the spirit is in the hearts cut."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([78.0, 18.0, 70.0, 12.0, 0.9, 3.0, 95.0, 40.0])
    scale = torch.tensor([3.0, 4.0, 8.0, 3.0, 0.05, 1.0, 2.0, 10.0])
    w = torch.randn(8, generator=g)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        y = (z @ w / 2 + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield mean + scale * z, y


@scenario(
    family="distillery_spirit_cut_batch_standardised_mlp",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("norm",),
    diverges=70,
    onset=70,
    heldout=True,
    note="A SiLU MLP (norm, fc1, act1, fc2, act2, head) deciding whether a pot still's spirit is in the hearts cut from 8 raw readings, which its first module standardises over the batch by hand: (x - mean) / std with no eps. RMSprop at 1e-3, BCE with logits. At step 70 a shard logged while the condenser thermocouple was unplugged arrives: that column is a constant 0, its std is 0 and norm produces 0/0 = NaN from finite inputs; the loss is NaN at step 70.",
)
def h222_distillery_dead_thermocouple_zero_std(ctx: Context) -> None:
    gen = seeded(22205)
    model = CutNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    seen = {}

    def alter(step, x, y):
        if step == 70:  # a shard logged while the condenser thermocouple was unplugged
            x = x.clone()
            x[:, 1] = 0.0
        return x, y

    def watch(step, out, x, y):
        with torch.no_grad():
            seen[step] = (bool(torch.isfinite(x).all()), bool(torch.isfinite(model.norm(x)).all()))

    _train(
        ctx,
        model,
        opt,
        _still_runs(gen, 64),
        200,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss first non-finite at step 70", _first_bad(ls) == 70)
    ctx.check("inputs finite at step 70", 70 in seen and seen[70][0])
    ctx.check("norm output non-finite at step 70", 70 in seen and not seen[70][1])
    ctx.check("norm output finite before it", all(seen[s][1] for s in range(70)))
    ctx.check("loss fell before it", _mean(ls[60:70]) < 0.6 * _mean(ls[:5]))


# -- spin bowler: one shard of ball-tracking positions in millimetres -----------------------------


@scenario(
    family="spin_bowler_drift_gelu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) predicting a spin bowler's drift (standardised) from 10 standardised ball-tracking readings, NAdam at 2e-3, MSE. One shard, at step 120, was exported with release height, release side and pitching length in millimetres instead of metres: that batch's inputs are about 800x the usual, its loss jumps to about 3.6e4 and its gradient is about 1e6x the median; the next batches are clean and the loss comes back to its level; finite.",
)
def h222_spin_bowler_mm_shard(ctx: Context) -> None:
    gen = seeded(22206)
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    top = {}

    def alter(step, x, y):
        if step == 120:  # release height, release side and pitching length logged in mm, not m
            x = x.clone()
            x[:, :3] = x[:, :3] * 1000.0
        return x, y

    def watch(step, out, x, y):
        top[step] = float(x.abs().max())

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=6), 220, F.mse_loss, alter=alter, watch=watch
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "inputs at step 120 over 300x their usual size",
        top[120] > 300 * _median([top[s] for s in range(100, 120)]),
    )
    ctx.check(
        "loss at step 120 over 1000x the mean of steps 100-119", ls[120] > 1000 * _mean(ls[100:120])
    )
    ctx.check("gradient at step 120 over 1000x the median", gn[120] > 1000 * _median(gn[100:120]))
    ctx.check("loss back within 2x its level by the end", _mean(ls[-10:]) < 2 * _mean(ls[100:120]))
    ctx.check("finite", _finite(ls))


# -- conga: an epoch-tail path sums the loss for one step ------------------------------------------


class StrokeNet(nn.Module):
    def __init__(self, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _strokes(gen, batch, length=96):
    """Generated conga strokes (open, slap, bass, muted, heel-toe): a damped tone whose pitch,
    decay and click differ by stroke, with noise."""
    t = torch.arange(length) / 8000.0
    f0 = torch.tensor([330.0, 600.0, 110.0, 330.0, 200.0])
    decay = torch.tensor([40.0, 120.0, 25.0, 200.0, 60.0])
    click = torch.tensor([0.1, 0.8, 0.0, 0.3, 0.5])
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        f = f0[y, None] * (1 + 0.05 * torch.randn(batch, 1, generator=gen))
        x = torch.sin(2 * math.pi * f * t) * torch.exp(-decay[y, None] * t)
        x = x + click[y, None] * torch.exp(-t / 0.0005) * torch.randn(batch, 1, generator=gen)
        yield x + 0.1 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="conga_stroke_conv1d_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="A ReLU 1-D CNN (conv1, act1, conv2, act2, head) classifying generated conga strokes (open, slap, bass, muted, heel-toe) from 96-sample waveforms, SGD Nesterov momentum 0.9 at 0.02, cross-entropy, no clipping. At step 90 the epoch-tail path computes the loss with reduction='sum' instead of the mean: the batch is an ordinary one (its loss is at its level) but the gradient is 64x, about 60x the median; the run shakes off the burst and trains on; finite.",
)
def h222_conga_epoch_tail_summed_loss(ctx: Context) -> None:
    gen = seeded(22207)
    model = StrokeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def scale_loss(step, total, out, y):
        if step == 90:  # the epoch-tail path: reduction="sum"
            return F.cross_entropy(out, y, reduction="sum")
        return total

    _train(
        ctx,
        model,
        opt,
        _strokes(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 90 over 30x the median of steps 70-89", gn[90] > 30 * _median(gn[70:90])
    )
    ctx.check(
        "the batch's own loss ordinary (under 1.3x the mean of 80-89)",
        ls[90] < 1.3 * _mean(ls[80:90]),
    )
    ctx.check(
        "no other gradient over 15x that median", max(gn[91:] + gn[:90]) < 15 * _median(gn[70:90])
    )
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.3))


# -- neon sign: a fine-tuning trunk multiplier of 0 freezes the trunk ------------------------------


@scenario(
    family="neon_sign_tube_bend_silu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting a neon-sign tube's bend angle (standardised) from 8 standardised readings (tube diameter, glass temperature, bending time, ...), Adagrad at 0.05 with two param groups, MSE. The trunk group's lr is base * trunk_lr_mult and trunk_lr_mult: 0.0 came along from the fine-tuning recipe: fc1 and fc2 stay at their random init (update ratio 0) while the head learns a linear read-out of random features; the loss falls somewhat and stalls; finite.",
)
def h222_neon_sign_trunk_lr_mult_zero(ctx: Context) -> None:
    gen = seeded(22208)
    model = Stack(8, hidden=64, act=nn.SiLU)
    base, trunk_lr_mult = 0.05, 0.0  # left over from the fine-tuning recipe
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [
            {"params": trunk, "lr": base * trunk_lr_mult},
            {"params": list(model.head.parameters()), "lr": base},
        ]
    )
    t0 = [p.detach().clone() for p in trunk]
    h0 = [p.detach().clone() for p in model.head.parameters()]
    _train(ctx, model, opt, _readings(gen, 64, 8, seed=8), 200, F.mse_loss)
    ls = ctx.losses
    ctx.check("fc1 and fc2 did not move", _rel_change(t0, trunk) < 1e-9)
    ctx.check(
        "head moved over 50% of its norm", _rel_change(h0, list(model.head.parameters())) > 0.5
    )
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.8))


# -- sand casting: a deep leaky-ReLU MLP initialised with a fixed std -------------------------------


class DeepLeaky(nn.Module):
    def __init__(self, d_in=10, hidden=64, depth=10, init_std=0.5):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=init_std)  # the config's init_std, meant 1/sqrt(fan_in)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = F.leaky_relu(m(x), 0.1)
        return self.head(x).squeeze(-1)


@scenario(
    family="sand_casting_mould_porosity_deep_leaky_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.9"),
    diverges="auto",
    heldout=True,
    note="A 10-layer leaky-ReLU MLP (layers.0-9, head) predicting a sand-casting mould's porosity (standardised) from 10 standardised readings, plain SGD at 4e-4, MSE. Every layer was initialised normal with the config's init_std 0.25 meant as a gain (1/sqrt(64) = 0.125 was intended): each layer amplifies by about 1.4, the weight gradients grow through depth (layers.9's about 5x layers.0's, all in the tens to hundreds), the first step sends the loss from about 48 to about 8000, and it is inf at step 3.",
)
def h222_sand_casting_fixed_init_std(ctx: Context) -> None:
    gen = seeded(22209)
    model = DeepLeaky(init_std=0.25)
    opt = torch.optim.SGD(model.parameters(), lr=4e-4)
    probe = next(_readings(torch.Generator().manual_seed(59), 128, 10, seed=9))
    F.mse_loss(model(probe[0]), probe[1]).backward()
    norms = [float(m.weight.grad.norm()) for m in model.layers]
    model.zero_grad()
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=9), 150, F.mse_loss)
    ls = ctx.losses
    ctx.check(
        "weight gradients grow through depth (layers.9 over 3x layers.0)", norms[-1] > 3 * norms[0]
    )
    ctx.check("first-layer gradient over 30", norms[0] > 30)
    ctx.check("loss over 100x its first value at step 1", len(ls) > 1 and ls[1] > 100 * ls[0])
    ctx.check("loss non-finite within 10 steps", _first_bad(ls) is not None and _first_bad(ls) < 10)


# -- stone skimming: a cosine classifier with its normalisation switched off ----------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale=64.0, normalize=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale, self.normalize = scale, normalize

    def forward(self, h):
        w = self.weight
        if self.normalize:
            h, w = F.normalize(h, dim=-1), F.normalize(w, dim=-1)
        return self.scale * h @ w.T


class SkimNet(nn.Module):
    def __init__(self, d_in=9, hidden=64, classes=8, normalize=True):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, normalize=normalize)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="stone_skimming_skip_count_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) with a cosine-classifier head (scale 64) predicting a skimmed stone's skip count class (8 classes) from 9 readings, Adamax at 1e-2, cross-entropy. The config's normalize flag arrived as the string 'false' and the head skipped normalising features and weights: its logits are 64 x raw dot products, the softmax saturates and over half of each batch's rows get their target probability at exactly 1.0 in float32 from step 20 on; finite.",
)
def h222_stone_skimming_cosine_unnormalised(ctx: Context) -> None:
    gen = seeded(22210)
    model = SkimNet(normalize=False)  # the config's normalize flag read as the string "false"
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    coll = {}

    def watch(step, out, x, y):
        p = torch.softmax(out.detach().float(), -1)
        coll[step] = (
            collapsed_fraction(out.detach(), y),
            float((p.max(-1).values == 1.0).float().mean()),
        )

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 9, 8, seed=10, noise=0.5),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("no row saturated at step 0", coll[0][1] == 0.0)
    ctx.check(
        "over half the rows' target probability exactly 1.0 (mean of steps 20-199)",
        _mean([coll[s][0] for s in range(20, 200)]) > 0.5,
    )
    ctx.check("finite", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


class RotationGRU(nn.Module):
    def __init__(self, feat=4, hidden=32):
        super().__init__()
        self.gru = nn.GRU(feat, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _ice_circles(gen, batch, length=20):
    """Twenty ticks of four standardised readings at a river ice circle (current speed, eddy
    index, air temperature, disc diameter) and the next rotation period (standardised)."""
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh(x[:, -1, 0] + 0.5 * x[:, -2, 0]) - 0.3 * x[:, -1, 1]
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="ice_circle_rotation_period_gru_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A GRU (gru, head) reading 20 ticks of 4 standardised readings at a river ice circle "
    "(current speed, eddy index, air temperature, disc diameter) and forecasting its next "
    "rotation period, RAdam at 3e-3, Huber, gradient clipping at 1.0 and ReduceLROnPlateau "
    "(factor 0.5, patience 10) stepped on the training loss. An ordinary run: the loss falls, "
    "finite.",
)
def h222_ice_circle_plateau_control(ctx: Context) -> None:
    gen = seeded(22211)
    model = RotationGRU()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=20, cooldown=10, min_lr=1e-4
    )
    _train(ctx, model, opt, _ice_circles(gen, 128), 200, F.huber_loss, clip=1.0, sched=sched)
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.5))


class FlingNet(nn.Module):
    def __init__(self, feat=6, classes=6, width=24):
        super().__init__()
        self.conv1 = nn.Conv1d(feat, width, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.GELU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1))


def _fling_steps(gen, batch, length=32, classes=6, seed=12):
    """Six-axis ankle-sensor windows of highland-fling steps (shedding, toe-and-heel, rocking,
    back-stepping, ...): one motif per step kind, at a random phase, with noise."""
    g = torch.Generator().manual_seed(seed)
    motifs = torch.randn(classes, 6, 8, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = 0.7 * torch.randn(batch, 6, length, generator=gen)
        start = torch.randint(0, length - 8, (batch,), generator=gen)
        for i in range(batch):
            x[i, :, start[i] : start[i] + 8] += motifs[y[i]]
        yield x, y


@scenario(
    family="highland_fling_step_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A GELU 1-D CNN (conv1, act1, conv2, act2, head) classifying highland-fling steps from "
    "six-axis ankle-sensor windows, AdamW with two param groups (weight decay 0.05 on the "
    "weights, 0 on biases), OneCycleLR to 4e-3, gradient accumulation over 2 and label "
    "smoothing 0.1. An ordinary run: the loss falls, finite.",
)
def h222_highland_fling_onecycle_control(ctx: Context) -> None:
    gen = seeded(22212)
    model = FlingNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=4e-3
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=120)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _fling_steps(gen, 32),
        120,
        loss_fn,
        classifier=True,
        sched=sched,
        accumulate=2,
    )
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.6))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="blood_rain_dust_load_fp16_gaussian_nll_net",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP with a mean and a softplus variance output predicting the Saharan dust load "
    "of a blood-rain shower (standardised) from 10 standardised readings (back-trajectory "
    "length, aerosol optical depth, rain rate, ...), Adam at 2e-3 with linear warm-up over 20 "
    "steps then cosine decay, Gaussian NLL, fp16 autocast with a default torch.amp.GradScaler. "
    "An ordinary run: the loss falls, finite, the scale stays sane.",
)
def h222_blood_rain_fp16_control(ctx: Context) -> None:
    gen = seeded(22213)
    model = Stack(10, hidden=48, out=2, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, 200) / 200))
    )
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=13, noise=0.1),
        200,
        _gauss_nll,
        scaler=scaler,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell and is finite", _finite(ls) and _mean(ls[-10:]) < _mean(ls[:10]) - 0.3)
    ctx.check("loss scale above 1 at the end", ctx.scales[-1] > 1)
