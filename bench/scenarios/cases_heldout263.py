"""Held-out set 263 (``h263_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a whistler-wave dispersion deep residual tanh MLP whose
branch init std was typed 1.0 for 1/sqrt(fan_in), a sferic-burst filterbank net whose band
power (sum of squares) runs in fp16 under autocast and overflows, a tanbur fret-intonation
regressor whose body param group was given a lr typed 3e-9 for 3e-4, a pileus-cloud stage
classifier whose temperature divides its logits by 0.02, a gunsmith's bore-wear Gaussian-NLL
net whose variance head lost its softplus, a blokart lap-speed Huber regressor fed one batch
with the wind column logged in cm/s, an arborist rope-friction ReLU regressor at an Adam lr typed
5e-2 for 5e-4, a BASE-jump exit-point classifier trained with F.nll_loss on raw logits, a
thermocline-depth regressor whose hand-written weight decay has its sign flipped, an airglow
brightness regressor whose warm-up peak was typed 2.0 for 0.2, and three controls (a
strombolian burst-interval residual MLP with SGDR, a landspout radar-signature Conv1d classifier
with OneCycleLR and accumulation, a pahoehoe lava-toe texture tied autoencoder with BCE).

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


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    amp=False,
    accumulate=1,
    alter=None,
    extra=None,
    stop=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``extra(step, loss)`` is
    the loss actually backpropagated, ``after(step)`` runs after the optimizer step; ``amp``:
    fp16 autocast; stops after logging a non-finite loss when ``stop``."""
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
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = extra(step, loss) if extra is not None else loss
            total = total / accumulate
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
        if stop and not math.isfinite(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


def _traces(gen, batch, classes, seed, channels=2, length=32, noise=0.6):
    """Multi-channel traces: each class a different mix of frequencies, random phase, noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield x + noise * torch.randn(batch, channels, length, generator=gen), y


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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


# -- whistler waves: deep residual tanh MLP, branch init std typed 1.0 ---------------------------


class ResTanh(nn.Module):
    """inp -> blocks.0..blocks.N-1 (each nn.Sequential(Linear, Tanh), residual) -> head."""

    def __init__(self, d_in, std, width=64, depth=16):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for block in self.blocks:
            nn.init.normal_(block[0].weight, std=std)
            nn.init.zeros_(block[0].bias)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h).squeeze(-1)


@scenario(
    family="whistler_wave_dispersion_deep_residual_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("inp", "blocks.0", "blocks.1", "blocks.2"),
    diverges=None,
    heldout=True,
    note="A deep residual MLP (inp, blocks.0-blocks.15 each an nn.Sequential of Linear and Tanh added to the stream, head) regressing the dispersion of a VLF whistler wave (how the tone of a lightning whistler falls) from 10 standardised receiver readings (frequency sweep, amplitude, time of night, L-shell, ...), plain SGD at 1e-3, MSE. The init helper was meant to draw the branch weights with std 1/sqrt(fan_in) and std=1.0 was typed: each branch's Jacobian has gain about 8, the backward pass multiplies the gradient by about that through every block, and the gradient reaching blocks.0 and inp is hundreds of times larger than at the last block (the twin with the intended std: about 2x); the total gradient norm is over 30x the twin's throughout. The tanh branches keep the loss finite, no blow-up.",
)
def h263_whistler_residual_init_std_typo(ctx: Context) -> None:
    def run(c, std):
        gen = seeded(26301)
        model = ResTanh(10, std)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        ratio = []
        batches = _readings(gen, 64, 10, 51)
        c.attach(model, opt)
        for _ in range(120):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            first = model.blocks[0][0].weight.grad.norm()
            ratio.append(float(first / model.blocks[-1][0].weight.grad.norm()))
            c.grad_norms.append(grad_norm(model))
            opt.step()
            c.step(loss.detach())
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss.detach())):
                break
        return ratio

    twin = _Quiet()
    twin_ratio = run(twin, 1 / math.sqrt(64))
    ratio = run(ctx, 1.0)
    ls = ctx.losses
    ctx.check("blocks.0's gradient over 100x the last block's at step 0", ratio[0] > 100)
    ctx.check("still over 100x at the end", ratio[-1] > 100)
    ctx.check("with the intended std the ratio is under 10", twin_ratio[0] < 10)
    ctx.check(
        "the gradient norm over 30x the twin's through the run",
        _median(ctx.grad_norms) > 30 * _median(twin.grad_norms),
    )
    ctx.check("finite throughout", _finite(ls))


# -- sferics: band power summed in fp16 under autocast -------------------------------------------


class BandPower(nn.Module):
    """Sum of squares over time of each band (the fp32 upcast before it was left out)."""

    def forward(self, z):
        return (z * z).sum(-1)


class SfericNet(nn.Module):
    """filt (Conv1d filterbank) -> power (sum of squares) -> log: one log band power a band."""

    def __init__(self, bands=6, taps=9):
        super().__init__()
        self.filt = nn.Conv1d(1, bands, taps, padding=taps // 2, bias=False)
        self.power = BandPower()

    def forward(self, x):
        return torch.log(self.power(self.filt(x)).float() + 1e-3)


def _sferics(gen, batch, seed, length=128, bands=6, taps=9, gain=8.0):
    """Sferic bursts (damped tones of random pitch and amplitude, noise) and the log band powers
    a calibrated filterbank gives them."""
    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(bands, 1, taps, generator=g)
    ref = gain * ref / ref.norm(dim=-1, keepdim=True)
    t = torch.arange(length).float()
    while True:
        f = 0.2 + 1.2 * torch.rand(batch, 1, 1, generator=gen)
        amp = 2.0 + 18.0 * torch.rand(batch, 1, 1, generator=gen)
        t0 = 30 * torch.rand(batch, 1, 1, generator=gen)
        env = torch.exp(-((t - t0).clamp_min(0)) / 30.0) * (t >= t0)
        x = amp * env * torch.sin(f * t) + 0.1 * torch.randn(batch, 1, length, generator=gen)
        y = torch.log((F.conv1d(x, ref, padding=taps // 2) ** 2).sum(-1) + 1e-3)
        yield x, y


ONSET_SFERIC = 133


@scenario(
    family="sferic_burst_band_power_fp16_filterbank_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("power",),
    diverges=ONSET_SFERIC,
    heldout=True,
    onset=ONSET_SFERIC,
    note="A learned Conv1d filterbank (filt) whose band powers (power: the sum of squares over time) are regressed in log space onto the catalogue band powers of lightning sferics (radio bursts of distant strokes) recorded by a VLF receiver, Adam at 1e-2, MSE, fp16 autocast with a torch.amp.GradScaler. The band-power module was meant to upcast to fp32 before squaring and summing and the upcast was left out: as the filter gains grow towards the catalogue's, the strongest bursts' band power passes 65504 at step 133 and overflows to inf in fp16, the loss is inf, the scaler skips the step and halves its scale, and as the gains keep growing from the batches that still fit, more and more steps overflow until nearly every step is skipped and the scale collapses. The fp32 twin trains. The batches are ordinary.",
)
def h263_sferic_band_power_fp16_no_upcast(ctx: Context) -> None:
    def run(c, amp):
        gen = seeded(26302)
        model = SfericNet()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if amp else None
        info = {"inf_powers": 0}

        def watch(step, out, x, y):
            if not torch.isfinite(out).all():
                info["inf_powers"] += 1
                info.setdefault("first", step)

        _train(
            c,
            model,
            opt,
            _sferics(gen, 32, 71),
            200,
            F.mse_loss,
            scaler=scaler,
            amp=amp,
            watch=watch,
            stop=False,
        )
        return info

    twin = _Quiet()
    run(twin, amp=False)
    info = run(ctx, amp=True)
    ls, sc = ctx.losses, ctx.scales
    bad = _first_bad(ls)
    ctx.check("the band power overflowed to inf in fp16", info["inf_powers"] > 0)
    ctx.check("the loss is first non-finite at step 133", bad == ONSET_SFERIC)
    ctx.check("where the band power first overflowed", info.get("first") == ONSET_SFERIC)
    ctx.check(
        "finite and falling before the overflow", bad is not None and bad > 20 and _fell(ls[:bad])
    )
    ctx.check(
        "over half of the last 50 steps overflow", sum(not math.isfinite(v) for v in ls[-50:]) > 25
    )
    ctx.check("the scale fell over 1000x from its start", sc[-1] < 1024.0 / 1000)
    ctx.check("the fp32 twin stays finite and trains", _fell(twin.losses, ratio=0.2))


# -- tanbur: the body's param-group lr typed 3e-9 for 3e-4 ---------------------------------------


@scenario(
    family="tanbur_fret_intonation_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing how far a tanbur's tied gut fret sits from true intonation (cents) from 12 standardised readings (fret position, string gauge, neck relief, humidity, string tension, ...), RMSprop with two param groups (body: fc1 and fc2; head), MSE. The body's lr was meant to be 3e-4 and was typed 3e-9: fc1 and fc2 barely move (their relative update per step about 1e-8 against about 1e-3 for the head), only the head learns, and the loss stays well above the twin with the intended rate. Finite, no blow-up.",
)
def h263_tanbur_body_group_lr_typo(ctx: Context) -> None:
    def run(c, body_lr):
        gen = seeded(26303)
        model = Stack(12, hidden=64, act=nn.GELU)
        body = [p for n, p in model.named_parameters() if not n.startswith("head")]
        opt = torch.optim.RMSprop(
            [
                {"params": body, "lr": body_lr},
                {"params": model.head.parameters(), "lr": 3e-4},
            ],
            alpha=0.99,
        )
        w0 = {n: _flat(getattr(model, n)) for n in ("fc1", "fc2", "head")}
        _train(c, model, opt, _readings(gen, 64, 12, 53), 200, F.mse_loss)
        return {n: float((_flat(getattr(model, n)) - w).norm() / w.norm()) for n, w in w0.items()}

    twin = _Quiet()
    twin_moved = run(twin, 3e-4)
    moved = run(ctx, 3e-9)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1 and fc2 moved under 1e-5 of their norm", max(moved["fc1"], moved["fc2"]) < 1e-5)
    ctx.check("the head moved over 1e-2 of its norm", moved["head"] > 1e-2)
    ctx.check("the twin's fc1 moved over 1e-2", twin_moved["fc1"] > 1e-2)
    ctx.check(
        "the twin ends under 0.6x this run's loss",
        _mean(twin.losses[-20:]) < 0.6 * _mean(ls[-20:]),
    )


# -- pileus cloud: a temperature of 0.02 divides the classifier's logits -------------------------


class PileusNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, the logits divided by a temperature."""

    def __init__(self, d_in, classes, temperature, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="pileus_cap_cloud_stage_temperature_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying the stage of a pileus (cap cloud over a growing cumulus: forming, smooth, draped, iridescent, absorbed, torn) from 16 standardised readings (updraft speed, humidity above the tower, cap thickness, ...), AdamW at 1e-3, cross-entropy. The config's temperature was meant to be 1.0 (a calibration knob) and was set to 0.005, which divides the head's logits: the margins are 200x, the float32 softmax gives the target exactly 1.0 on most rows within tens of steps, and the rest of the rows carry huge losses; the twin at temperature 1 never saturates. Finite.",
)
def h263_pileus_temperature_divides_logits(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(26304)
        model = PileusNet(16, 6, temperature)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
        probe = next(_kinds(torch.Generator().manual_seed(9), 256, 16, 6, 57))
        frac = []

        def after(step):
            with torch.no_grad():
                frac.append(collapsed_fraction(model(probe[0]), probe[1]))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 6, 57),
            150,
            F.cross_entropy,
            classifier=True,
            after=after,
        )
        return frac

    twin = _Quiet()
    twin_frac = run(twin, 1.0)
    frac = run(ctx, 0.005)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of rows saturated at step 0", frac[0] < 0.1)
    ctx.check("over half the rows' softmax exactly 1.0 at the end", frac[-1] > 0.5)
    ctx.check("the twin never saturates a row", max(twin_frac) == 0.0)


# -- gunsmith: the variance head lost its softplus -----------------------------------------------


class BoreNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> mean head and var head (softplus meant on var)."""

    def __init__(self, d_in, softplus, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)
        self.softplus = softplus
        nn.init.constant_(self.var.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        v = self.var(h)
        v = F.softplus(v) + 1e-4 if self.softplus else v
        return torch.cat([self.mean(h), v], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * (torch.log(var) + (y - mu) ** 2 / var)).mean()


ONSET_BORE = 28


@scenario(
    family="gunsmith_barrel_bore_wear_gaussian_nll_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("var",),
    diverges=ONSET_BORE,
    heldout=True,
    onset=ONSET_BORE,
    note="A tanh MLP (fc1, act1, fc2, act2) with a mean head and a variance head (var) predicting a Gaussian over the bore wear a gunsmith measures in a rifle barrel after a string of shots from 9 standardised readings (round count, powder charge, bullet jacket, cleaning interval, barrel steel, ...), Gaussian negative log-likelihood 0.5 (log var + (y - mu)^2 / var), Adamax at 1e-3, the var bias started at 1. The softplus that was meant to keep the variance positive was left out of the var head: as the variance is pushed down towards the small measurement noise, one row's raw variance reaches 0 or below at step 28, log of a non-positive number gives NaN/-inf in the loss and the gradient. The batch is ordinary; the twin with the softplus stays finite.",
)
def h263_gunsmith_variance_head_no_softplus(ctx: Context) -> None:
    seen = {}

    def run(c, softplus):
        gen = seeded(26305)
        model = BoreNet(9, softplus)
        opt = torch.optim.Adamax(model.parameters(), lr=1e-3)

        def watch(step, out, x, y):
            if not softplus and "step" not in seen and bool((out[:, 1] <= 0).any()):
                seen["step"] = step
                seen["x_max"] = float(x.abs().max())

        _train(c, model, opt, _readings(gen, 64, 9, 59, noise=0.05), 200, _gauss_nll, watch=watch)

    twin = _Quiet()
    run(twin, softplus=True)
    run(ctx, softplus=False)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is non-finite first at step 28", bad == ONSET_BORE)
    ctx.check("finite and falling before", bad is not None and _fell(ls[:bad], k=5))
    ctx.check("the var head went non-positive at that step", seen.get("step") == ONSET_BORE)
    ctx.check("the batch is ordinary (|x| under 6)", seen.get("x_max", 99.0) < 6)
    ctx.check("the softplus twin stays finite", _finite(twin.losses) and len(twin.losses) == 200)


# -- blokart: one batch with the wind column logged in cm/s --------------------------------------

ONSET_KART = 90


@scenario(
    family="blokart_lap_speed_huber_regressor",
    optimizer="SGD(nesterov=True)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KART,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a blokart (compact land-sailing kart) racer's lap speed from 10 standardised readings (wind speed, wind angle, sail size, pilot weight, track surface, ...), SGD with Nesterov momentum 0.9 at 1e-2, Huber loss, clipping at 1. At step 90 one batch comes from a beach-meeting logger whose wind column was written in cm/s instead of m/s and was never standardised: that column is about 100x its usual scale on that one batch, the gradient norm is hundreds of times the steps before; clipped, the run recovers. Finite.",
)
def h263_blokart_wind_column_in_cm(ctx: Context) -> None:
    gen = seeded(26306)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_KART:
            x = x.clone()
            x[:, 0] = 100.0 * (x[:, 0] * 2.0 + 6.0)
            seen["x_max"] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 61), 200, F.huber_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_KART - 20 : ONSET_KART])
    pre = _mean(ls[ONSET_KART - 10 : ONSET_KART])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the onset", _fell(ls[:ONSET_KART], ratio=0.6))
    ctx.check("the onset batch has |x| over 100", seen.get("x_max", 0.0) > 100)
    ctx.check("the gradient at the onset over 50x the median before", gn[ONSET_KART] > 50 * before)
    ctx.check("the loss at the onset over 20x the level before", ls[ONSET_KART] > 20 * pre)
    ctx.check(
        "back under 2x the pre-onset loss 50 steps later",
        _mean(ls[ONSET_KART + 40 : ONSET_KART + 50]) < 2 * pre,
    )


# -- arborist: Adam lr typed 5e-2 for 5e-4, ReLUs die --------------------------------------------


@scenario(
    family="arborist_rope_friction_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the friction heat on an arborist's climbing line through a friction saver from 12 standardised readings (rope diameter, load, descent speed, bark type, wraps, ...), Adam, MSE. The lr was meant to be 5e-4 and was typed 5e-2: the first large updates push fc2's pre-activations negative for most inputs, over 80% of act2's units never fire again on a probe batch for the rest of the run, where the twin at the intended rate loses none; the few survivors still fit the target. Finite, no blow-up.",
)
def h263_arborist_adam_lr_typo_dead_relus(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(26307)
        model = Stack(12, hidden=64, act=nn.ReLU)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        probe = next(_readings(torch.Generator().manual_seed(5), 512, 12, 67))[0]
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _readings(gen, 64, 12, 67), 200, F.mse_loss, after=after)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 5e-4)
    dead = run(ctx, 5e-2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of act2 dead after the first step", dead[0] < 0.1)
    ctx.check("over half of act2 dead at the end", dead[-1] > 0.5)
    ctx.check("still over half dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("the twin keeps over 90% alive", max(twin_dead) < 0.1)
    ctx.check("the same units dead at step 100 and at the end", dead[99] > 0.5 and dead[-1] > 0.5)


# -- BASE jump: F.nll_loss on raw logits (log_softmax forgotten) ---------------------------------


class ExitNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head (raw logits)."""

    def __init__(self, d_in, classes, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="base_jump_exit_point_classifier",
    optimizer="Adagrad",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) choosing which of 5 exit points on a cliff a BASE jumper should use from 14 standardised readings (wind at the edge, wind below, rock overhang, landing-zone size, jumper experience, ...), Adagrad at 5e-2. The loss was meant to be F.nll_loss(F.log_softmax(logits)) and the log_softmax was forgotten: F.nll_loss on the raw logits is -logit[target], unbounded below, and the head's logits grow step after step without bound (over 20x their start on a fixed probe, to the hundreds) while the loss falls far below zero; with the log_softmax the logits stay an order smaller. Finite.",
)
def h263_base_jump_nll_on_raw_logits(ctx: Context) -> None:
    def run(c, log_softmax):
        gen = seeded(26308)
        model = ExitNet(14, 5)
        opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
        probe = next(_kinds(torch.Generator().manual_seed(3), 256, 14, 5, 73))[0]
        peak = []

        def loss_fn(out, y):
            return F.nll_loss(F.log_softmax(out, -1) if log_softmax else out, y)

        def after(step):
            with torch.no_grad():
                peak.append(float(model(probe).abs().max()))

        _train(
            c, model, opt, _kinds(gen, 64, 14, 5, 73), 200, loss_fn, classifier=True, after=after
        )
        return peak

    twin = _Quiet()
    twin_peak = run(twin, True)
    peak = run(ctx, False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the peak head logit grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak head logit is over 100 at the end", peak[-1] > 100)
    ctx.check("still growing over the last 50 steps", peak[-1] > 1.3 * peak[-50])
    ctx.check("the twin's peak logit stays 5x smaller", max(twin_peak) < peak[-1] / 5)


# -- thermocline: hand-written weight decay with its sign flipped --------------------------------


@scenario(
    family="thermocline_depth_tanh_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the depth of a lake's summer thermocline from 10 standardised readings (surface temperature, wind fetch, days since ice-out, water clarity, ...), SGD with momentum 0.9 at 1e-2, MSE. The loop applies a hand-written decoupled weight decay after each step, meant as p *= (1 - lr * wd) and written p *= (1 + lr * wd) with wd 0.8: the weights grow geometrically in every direction the data does not pin (the norm about 8x over the run), and after falling for a few tens of steps the loss climbs slowly, with bumps, to several times its minimum while the twin with the intended sign keeps it low. Finite, no blow-up.",
)
def h263_thermocline_weight_decay_sign(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(26309)
        model = Stack(10, hidden=64, act=nn.ReLU)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
        norms = []

        def after(step):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + sign * 1e-2 * 0.8)
            norms.append(float(_flat(model).norm()))

        _train(c, model, opt, _readings(gen, 64, 10, 79), 300, F.mse_loss, after=after)
        return norms

    twin = _Quiet()
    run(twin, -1.0)
    norms = run(ctx, 1.0)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10, 10))
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell over the first 30 steps", _mean(ls[20:30]) < 0.7 * _mean(ls[:10]))
    ctx.check("it ends over 3x its lowest 10-step mean", _mean(ls[-10:]) > 3 * low)
    ctx.check(
        "the climb is steady (each 60-step mean from step 60 above the last)",
        all(_mean(ls[i : i + 60]) < _mean(ls[i + 60 : i + 120]) for i in range(60, 180, 60)),
    )
    ctx.check("the weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check(
        "the twin ends under 0.3x this run's loss", _mean(twin.losses[-10:]) < 0.3 * _mean(ls[-10:])
    )


# -- airglow: the warm-up peak typed 2.0 for 0.2 -------------------------------------------------


def _sharpness(model, x, y, iters=20):
    """Top Hessian eigenvalue of the MSE on (x, y) by power iteration."""
    params = list(model.parameters())
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


ONSET_GLOW = 25


@scenario(
    family="airglow_layer_brightness_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_GLOW,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the brightness of the night sky's airglow layer (the green oxygen line) from 8 standardised readings (solar flux, time since dusk, geomagnetic index, season, gravity-wave activity, ...), plain SGD with a LambdaLR linear warm-up over 100 steps, MSE. The warm-up's peak lr was meant to be 0.2 and was typed 2.0: by step 25 the rising lr times the loss's top Hessian eigenvalue (measured by power iteration on a fixed probe) passes 2, the loss starts to oscillate and grow and then blows up to inf around step 55; the twin with the intended peak stays under the limit and trains.",
)
def h263_airglow_warmup_peak_typo(ctx: Context) -> None:
    def run(c, peak):
        gen = seeded(26310)
        model = Stack(8, hidden=64, act=nn.SiLU)
        opt = torch.optim.SGD(model.parameters(), lr=peak)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
        probe = next(_readings(torch.Generator().manual_seed(11), 256, 8, 83))
        edge = []

        def before(step):
            if step % 5 == 0:
                lr = opt.param_groups[0]["lr"]
                edge.append((step, lr * _sharpness(model, *probe)))

        _train(
            c, model, opt, _readings(gen, 64, 8, 83), 160, F.mse_loss, before=before, sched=sched
        )
        return edge

    twin = _Quiet()
    twin_edge = run(twin, 0.2)
    edge = run(ctx, 2.0)
    ls = ctx.losses
    first = next((s for s, e in edge if e > 2), None)
    bad = _first_bad(ls)
    finite = ls[:bad] if bad is not None else ls
    ctx.check("lr x sharpness first over 2 at step 25", first == ONSET_GLOW)
    ctx.check("the loss fell before the crossing", _fell(ls[:ONSET_GLOW], k=5, ratio=0.3))
    ctx.check(
        "the loss becomes non-finite after the crossing", bad is not None and bad > ONSET_GLOW
    )
    ctx.check("it climbed over 30x its minimum before that", max(finite) > 30 * min(finite))
    ctx.check("the twin's lr x sharpness stays under 2", max(e for _, e in twin_edge) < 2)
    ctx.check("the twin trains, finite", _fell(twin.losses, ratio=0.2))


# -- healthy: strombolian bursts, deep residual MLP with nn.Sequential blocks and SGDR -----------


class ResMLP(nn.Module):
    """inp -> blocks.0..blocks.7 (each nn.Sequential(LayerNorm, Linear, GELU, Linear), residual)
    -> norm -> head."""

    def __init__(self, d_in, width=48, depth=8):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.LayerNorm(width),
                nn.Linear(width, 2 * width),
                nn.GELU(),
                nn.Linear(2 * width, width),
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, 1)
        for block in self.blocks:
            nn.init.normal_(block[3].weight, std=0.02 / math.sqrt(depth))
            nn.init.zeros_(block[3].bias)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(self.norm(h)).squeeze(-1)


@scenario(
    family="strombolian_burst_interval_residual_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a deep residual MLP (inp, blocks.0-blocks.7 each an nn.Sequential of LayerNorm, Linear, GELU, Linear added to the stream with small-init output layers, norm, head) regressing the interval to the next strombolian burst at a volcano's summit vent from 12 standardised readings (tremor amplitude, SO2 flux, infrasound, tilt, ...), SGD with momentum 0.9 at 5e-2 and weight decay 1e-4, CosineAnnealingWarmRestarts (SGDR, T_0=40, T_mult=2), Huber loss, clipping at 1. Trains normally through its warm restarts.",
)
def h263_strombolian_residual_sgdr_control(ctx: Context) -> None:
    gen = seeded(26311)
    model = ResMLP(12)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=40, T_mult=2)
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 89),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        before=before,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell over 3x", _fell(ls, ratio=0.33))
    ctx.check(
        "the lr restarted at step 40 and 120", lrs[40] > 10 * lrs[39] and lrs[120] > 10 * lrs[119]
    )


# -- healthy: landspout radar signatures, Conv1d, OneCycleLR, accumulation -----------------------


class TraceNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> mean pool -> head over a multi-channel trace."""

    def __init__(self, channels, classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1))


@scenario(
    family="landspout_radar_signature_conv1d_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a ReLU Conv1d net (conv1, act1, conv2, act2, mean pool, head) classifying 5 kinds of Doppler-radar velocity traces across a landspout's parent storm (3 channels: radial velocity, reflectivity, spectrum width; noisy, random phase), NAdam at up to 4e-3 with OneCycleLR, gradient accumulation over 2 micro-batches, cross-entropy with label smoothing 0.1, clipping at 1. Trains normally.",
)
def h263_landspout_conv1d_onecycle_control(ctx: Context) -> None:
    gen = seeded(26312)
    model = TraceNet(3, 5)
    opt = torch.optim.NAdam(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=150)
    probe = next(_traces(torch.Generator().manual_seed(13), 512, 5, 97, channels=3))

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 97, channels=3),
        150,
        loss_fn,
        classifier=True,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    with torch.no_grad():
        acc = float((model(probe[0]).argmax(-1) == probe[1]).float().mean())
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.7))
    ctx.check("probe accuracy over 60% (chance 20%)", acc > 0.6)


# -- healthy: pahoehoe lava toes, tied autoencoder, BCE ------------------------------------------


class TiedAE(nn.Module):
    """enc (Linear) -> act -> decoder tied to enc.weight (transposed) plus its own bias."""

    def __init__(self, d_in, code=24):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.SiLU()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _toes(gen, batch, seed, side=8, kinds=6, flip=0.05):
    """8x8 binary texture patches of pahoehoe surfaces: a few ropy/toe/slabby templates with
    some cells flipped."""
    g = torch.Generator().manual_seed(seed)
    templates = (torch.rand(kinds, side, side, generator=g) < 0.4).float()
    while True:
        k = torch.randint(0, kinds, (batch,), generator=gen)
        x = templates[k]
        noise = (torch.rand(batch, side, side, generator=gen) < flip).float()
        x = (x + noise) % 2
        x = x.flatten(1)
        yield x, x


@scenario(
    family="pahoehoe_lava_toe_texture_tied_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: an autoencoder with its decoder tied to the encoder's weight (enc, act, decoder = enc.weight transposed plus a bias) reconstructing 8x8 binary texture patches of pahoehoe lava surfaces (ropy, toes, slabby templates, 5% of cells flipped) as logits, binary cross-entropy with logits, RAdam at 1e-2, ReduceLROnPlateau (factor 0.5, patience 10). Trains normally.",
)
def h263_pahoehoe_tied_autoencoder_control(ctx: Context) -> None:
    gen = seeded(26313)
    model = TiedAE(64)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _train(
        ctx, model, opt, _toes(gen, 64, 101), 200, F.binary_cross_entropy_with_logits, sched=sched
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.6))
    probe = next(_toes(torch.Generator().manual_seed(17), 256, 101))[0]
    with torch.no_grad():
        acc = float(((model(probe) > 0).float() == probe).float().mean())
    ctx.check("over 85% of probe cells reconstructed", acc > 0.85)
