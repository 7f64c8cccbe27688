"""Held-out set 177 (``h177_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a glass-harmonica SiLU regressor fine-tuned with an L2-SP
penalty, a deep tanh net for pingo growth, a cosine classifier for bouzouki courses, a
talking-drum Gaussian NLL regressor with param groups, a fata-morgana profile regressor with a
hand-written standardiser, a cuica spectral net under fp16 autocast, an ultra-trail split-time
regressor, a bandy pass classifier with class-balanced weights, a sarangi tanh regressor under a
StepLR, a mouth-harp ReLU regressor with an activity penalty, and three controls (a GELU numeral
classifier under warm-up + cosine and clipping, an fp16 SiLU regressor, a tied autoencoder).

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
    digit_batches,
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
    alter=None,
    extra=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    stop_on_nan=True,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``extra(step, out, loss)`` returns what is actually
    back-propagated (the logged loss is ``loss_fn``'s), ``watch(step, out, x, y)`` records,
    ``accumulate`` micro-batches a step; stops after logging a NaN loss unless told not to."""
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
            loss = loss_fn(step, out.float(), y)
            total = extra(step, out, loss) if extra is not None else loss
            total = total / accumulate
            if watch is not None:
                watch(step, out, x, y)
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
        opt.zero_grad(set_to_none=True)
        if stop_on_nan and math.isnan(shown):
            break


def _plain(fn):
    """A loss of (out, y) as a loss of (step, out, y)."""
    return lambda step, out, y: fn(out, y)


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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- glass harmonica: an L2-SP penalty subtracted instead of added ---------------------------------

HARMONICA_ALPHA = 0.036


@scenario(
    family="glass_harmonica_rim_pitch_silu_mlp",
    optimizer="SGD(momentum)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) fine-tuned from its starting checkpoint to predict a "
    "glass harmonica bowl's rim pitch offset from 12 wetness, speed and thickness readings, "
    "SGD momentum 0.9 at 2e-2, MSE. The fine-tune adds an L2-SP penalty alpha * ||w - w0||^2 pulling the "
    "weights back to the checkpoint, but a refactor that turned a 'similarity reward' into a "
    "loss left it subtracted: the back-propagated objective is mse - alpha * ||w - w0||^2. "
    "The weights are pushed away from the checkpoint ever faster; the logged MSE falls for "
    "about 150 steps, then climbs slowly (3-4x) for the rest of the run, finite.",
)
def h177_harmonica_l2sp_sign_flipped(ctx: Context) -> None:
    gen = seeded(17601)
    model = Stack(12, hidden=64, act=nn.SiLU)
    anchor = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    drift = []

    def sp(step, out, loss):
        dist = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
        drift.append(float(dist.detach()))
        return loss - HARMONICA_ALPHA * dist

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=1), 300, _plain(F.mse_loss), extra=sp)
    ls = ctx.losses
    smooth = [_mean(ls[max(0, i - 4) : i + 5]) for i in range(len(ls))]
    low = min(range(len(ls)), key=smooth.__getitem__)
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("lowest stretch of the loss in the first 60%", low < 0.6 * len(ls))
    ctx.check(
        "logged MSE climbed 2.5x from its lowest stretch", _mean(ls[-10:]) > 2.5 * smooth[low]
    )
    ctx.check(
        "distance from the checkpoint grew 4x over the second half",
        drift[-1] > 4 * drift[len(drift) // 2],
    )


# -- pingo growth: a deep tanh net with a sigmoid network's init gain ------------------------------


class PingoNet(nn.Module):
    def __init__(self, d_in=16, width=48, depth=14, gain=4.0):
        super().__init__()
        dims = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.acts = nn.ModuleList(nn.Tanh() for _ in range(depth))
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin, act in zip(self.layers, self.acts, strict=True):
            x = act(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="pingo_mound_lift_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 14-layer tanh MLP (nn.Tanh modules) regressing a pingo's yearly lift from 16 "
    "permafrost and groundwater readings, plain SGD at 1e-3, MSE. The init was copied from a "
    "sigmoid network's config: xavier_normal_(gain=4.0) (Glorot's factor for sigmoid) on tanh "
    "layers, which puts the net in the chaotic regime: activations stay bounded but the "
    "backward pass multiplies the gradient by about 1.5 per layer, so the first layers' "
    "gradients are a hundred times the last layer's and stay so.",
)
def h177_pingo_sigmoid_gain_on_tanh(ctx: Context) -> None:
    gen = seeded(17602)
    model = PingoNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios = []
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 16, seed=2)
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / max(last, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ctx.check("first layer's gradient 100x the last hidden layer's at init", ratios[0] > 100)
    ctx.check("still 30x over the last 20 steps", _median(ratios[-20:]) > 30)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- bouzouki courses: a cosine classifier's scale typed 3e3 for 3e1 -------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, f):
        return self.scale * F.normalize(f, dim=-1) @ F.normalize(self.weight, dim=-1).T


class BouzoukiNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=8, scale=30.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="bouzouki_course_cosine_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (nn.GELU modules) with a cosine-similarity head naming which of 8 "
    "bouzouki courses a plucked note came from, AdamW at 1e-3, cross-entropy with label "
    "smoothing 0.1. The cosine head's scale s was typed 3e3 in the config for 3e1, so the "
    "logits span +-3000: the float32 softmax rounds the top class to exactly 1 and the others "
    "to exactly 0 for nearly every row from the first step; the loss is in the tens to "
    "hundreds throughout, finite.",
)
def h177_bouzouki_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(17603)
    model = BouzoukiNet(scale=3e3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    frac = []
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 8, seed=3),
        150,
        _plain(lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1)),
        classifier=True,
        watch=lambda s, o, x, y: frac.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("half the rows' target probability exactly 1.0 over the run", _mean(frac) > 0.5)
    ctx.check("loss above 10 over the last 20 steps", _mean(ctx.losses[-20:]) > 10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- talking drum: a warm-up lambda with floor division freezes the encoder ------------------------


class TalkingDrumNet(nn.Module):
    def __init__(self, d_in=14, hidden=48):
        super().__init__()
        self.enc1 = nn.Linear(d_in, hidden)
        self.enc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.tanh(self.enc2(torch.tanh(self.enc1(x))))
        return torch.cat([self.mean_head(h), F.softplus(self.var_head(h)) + 1e-4], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


DRUM_WARM = 500


@scenario(
    family="talking_drum_pitch_glide_nll_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("enc1", "enc2"),
    diverges=None,
    heldout=True,
    note="A tanh MLP with mean and variance heads predicting a talking drum's pitch glide "
    "from 14 armpit-squeeze and strike readings, Gaussian NLL, RMSprop with two param groups "
    "(encoder, heads) and a LambdaLR with one lambda per group. The encoder's warm-up lambda "
    "was written `min(1.0, step // 500)` for `step / 500`: integer division gives 0 for the "
    "first 500 steps, so the encoder's learning rate is exactly 0 for the whole run and only "
    "the heads learn.",
)
def h177_talking_drum_floor_division_warmup(ctx: Context) -> None:
    gen = seeded(17604)
    model = TalkingDrumNet()
    enc = [p for n, p in model.named_parameters() if n.startswith("enc")]
    heads = [p for n, p in model.named_parameters() if not n.startswith("enc")]
    opt = torch.optim.RMSprop([{"params": enc}, {"params": heads}], lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: min(1.0, s // DRUM_WARM), lambda s: 1.0]
    )
    start = [p.detach().clone() for p in enc]
    head_start = [p.detach().clone() for p in heads]
    _train(ctx, model, opt, _readings(gen, 64, 14, seed=4), 160, _plain(_gauss_nll), sched=sched)
    moved = max(float((p.detach() - s).abs().max()) for p, s in zip(enc, start, strict=True))
    head_moved = max(
        float((p.detach() - s).abs().max()) for p, s in zip(heads, head_start, strict=True)
    )
    ctx.check("encoder weights never moved", moved == 0.0)
    ctx.check("heads moved", head_moved > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- fata morgana: a one-pass variance with no clamp, sqrt of a negative ---------------------------


class ProfileNorm(nn.Module):
    """Per-profile standardisation written with the one-pass variance E[x^2] - E[x]^2."""

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - mean * mean
        self.last_var = var.detach()
        return (x - mean) / torch.sqrt(var)


class MirageNet(nn.Module):
    def __init__(self, heights=16, hidden=48):
        super().__init__()
        self.profile_norm = ProfileNorm()
        self.fc1 = nn.Linear(heights + 1, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        prof = self.profile_norm(x)
        level = (x.mean(-1, keepdim=True) - 288.0) / 5.0
        h = self.act2(self.fc2(self.act1(self.fc1(torch.cat([prof, level], -1)))))
        return self.head(h).squeeze(-1)


MIRAGE_DAWN = 70


def _profiles(gen, batch, heights=16):
    """Air temperatures (kelvin, logged at 0.01 K) at 16 mast heights over water with an
    inversion of random height and strength; the label is the mirage's apparent lift (scaled).
    At step 70 the batch holds eight profiles of a still, well-mixed dawn: isothermal to within
    a few millikelvin."""
    z = torch.linspace(0, 1, heights)
    step = 0
    while True:
        base = 280.0 + 15.0 * torch.rand(batch, 1, generator=gen)
        at = 0.2 + 0.6 * torch.rand(batch, 1, generator=gen)
        strength = 2.0 + 6.0 * torch.rand(batch, 1, generator=gen)
        x = base - 1.0 * z + strength * torch.sigmoid((z - at) * 12.0)
        x = x + 0.05 * torch.randn(batch, heights, generator=gen)
        y = (strength[:, 0] * (1.0 - at[:, 0]) - 2.5) / 1.5
        if step == MIRAGE_DAWN:
            x[:8] = 291.37 + 0.003 * torch.randn(8, heights, generator=gen)
            y[:8] = -1.7
        step += 1
        yield torch.round(x * 100) / 100, y


@scenario(
    family="fata_morgana_mirage_lift_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("profile_norm",),
    diverges=MIRAGE_DAWN,
    heldout=True,
    onset=MIRAGE_DAWN,
    note="A ReLU MLP predicting a fata morgana's apparent lift from air temperatures in kelvin "
    "(logged at 0.01 K) at 16 mast heights, Adamax, MSE. Each profile is standardised by a "
    "hand-written module that computes the variance in one pass as E[x^2] - E[x]^2 with no "
    "clamp and no epsilon. At about 290 K the squares are near 84000, where float32 resolves "
    "only 0.008; inversion profiles have variances of a kelvin squared or more, but the "
    "isothermal profiles of a still dawn (step 70) come out at zero or negative variance, the "
    "sqrt gives NaN (or 0/0) and the loss is NaN at that step.",
)
def h177_mirage_one_pass_variance(ctx: Context) -> None:
    gen = seeded(17605)
    model = MirageNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    low_var = []
    _train(
        ctx,
        model,
        opt,
        _profiles(gen, 64),
        120,
        _plain(F.mse_loss),
        watch=lambda s, o, x, y: low_var.append(float(model.profile_norm.last_var.min())),
    )
    at = MIRAGE_DAWN
    ctx.check("loss NaN first at the dawn profiles' step", _first_bad(ctx.losses) == at)
    ctx.check("one-pass variance <= 0 at that step", len(low_var) > at and low_var[at] <= 0.0)
    ctx.check("every variance above 0.1 before", min(low_var[:at]) > 0.1)
    ctx.check("loss fell before the dawn profiles", _fell(ctx.losses[:at]))


# -- cuica: a power spectrum squared in float16 under autocast -------------------------------------


class CuicaNet(nn.Module):
    def __init__(self, frame=64, hidden=64, classes=4):
        super().__init__()
        n = torch.arange(frame).float()
        k = torch.arange(frame // 2 + 1).float()[:, None]
        arg = 2 * math.pi * k * n / frame
        self.spectrum = nn.Linear(frame, 2 * (frame // 2 + 1), bias=False)
        self.spectrum.weight.data.copy_(torch.cat([torch.cos(arg), torch.sin(arg)]))
        self.spectrum.weight.requires_grad_(False)
        self.bins = frame // 2 + 1
        self.fc1 = nn.Linear(self.bins, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        s = self.spectrum(x)
        power = s[:, : self.bins] ** 2 + s[:, self.bins :] ** 2
        return self.head(self.act1(self.fc1(torch.log1p(power) - 5.0)))


CUICA_FESTIVAL = 60


def _cuica_frames(gen, batch, frame=64):
    """Microphone frames in pascals of four cuica strokes (a pitch per stroke, with noise);
    from step 60 the loader reaches the festival recordings, about 12x louder."""
    pitches = torch.tensor([3.0, 5.0, 8.0, 12.0])
    t = torch.arange(frame).float()
    step = 0
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        f = pitches[y][:, None] + 0.4 * torch.randn(batch, 1, generator=gen)
        ph = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + 1.5 * torch.rand(batch, 1, generator=gen)
        if step >= CUICA_FESTIVAL:
            amp = amp * 12.0
        x = amp * torch.sin(2 * math.pi * f * t / frame + ph)
        x = x + 0.3 * amp * torch.randn(batch, frame, generator=gen)
        step += 1
        yield x, y


@scenario(
    family="cuica_friction_drum_spectral_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("spectrum",),
    diverges=CUICA_FESTIVAL,
    heldout=True,
    onset=CUICA_FESTIVAL,
    note="A net naming a cuica stroke from a 64-sample microphone frame in pascals: a fixed DFT "
    "as a bias-free Linear (`spectrum`), power re^2 + im^2, log1p, a ReLU layer and a head; "
    "Adam, cross-entropy, fp16 autocast with a torch.amp.GradScaler. The DFT's output is "
    "float16 under autocast and the power is squared in float16: studio takes stay under "
    "65504, but from step 60 the loader reaches the festival recordings, 12x louder, whose "
    "power passes 65504 and is inf. Every step from then has a NaN loss; the scaler skips it "
    "and halves its scale again and again.",
)
def h177_cuica_fp16_power_spectrum(ctx: Context) -> None:
    gen = seeded(17606)
    model = CuicaNet()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    peak = []

    def watch(step, out, x, y):
        with torch.autocast("cpu", dtype=torch.float16):
            s = model.spectrum(x)
        peak.append(float((s.float() ** 2).max()))

    _train(
        ctx,
        model,
        opt,
        _cuica_frames(gen, 64),
        110,
        _plain(F.cross_entropy),
        classifier=True,
        scaler=scaler,
        watch=watch,
        stop_on_nan=False,
    )
    at = CUICA_FESTIVAL
    ctx.check("loss finite before the festival takes", _finite(ctx.losses[:at]))
    ctx.check("loss non-finite first at step 60", _first_bad(ctx.losses) == at)
    ctx.check(
        "squared DFT output past float16's max from step 60 only",
        min(peak[at:]) > 65504 > max(peak[:at]),
    )
    ctx.check(
        "scaler's scale fell 1000x after the onset", ctx.scales[-1] < ctx.scales[at - 1] / 1000
    )
    ctx.check("loss fell before the onset", _fell(ctx.losses[:at]))


# -- ultra trail: one split crossing midnight -----------------------------------------------------

TRAIL_MIDNIGHT = 90


@scenario(
    family="ultra_trail_aid_station_split_regressor",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=TRAIL_MIDNIGHT,
    note="A ReLU MLP predicting an ultra-trail runner's split between aid stations "
    "(standardised with the training set's mean and std) from 12 terrain, climb and runner "
    "readings, SGD momentum 0.9 at 1e-2, MSE. Splits are computed as arrival clock minus "
    "departure clock in seconds of the day; one night-section record in the batch at step 90 "
    "crosses midnight and comes out as about -84000 s, some 300 standard deviations below the "
    "mean. The loss and gradient spike at that step and the run recovers.",
)
def h177_trail_split_crosses_midnight(ctx: Context) -> None:
    gen = seeded(17607)
    model = Stack(12, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    mean_s, std_s = 2400.0, 280.0
    seen = []

    def alter(step, x, y):
        if step == TRAIL_MIDNIGHT:
            y = y.clone()
            y[5] = ((mean_s + std_s * y[5]) - 86400.0 - mean_s) / std_s
        seen.append(float(y.abs().max()))
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=7), 200, _plain(F.mse_loss), alter=alter)
    at = TRAIL_MIDNIGHT
    before = ctx.losses[at - 20 : at]
    ctx.check("a label 250 std out at the onset", seen[at] > 250)
    ctx.check("loss 100x the preceding median at the onset", ctx.losses[at] > 100 * _median(before))
    ctx.check(
        "gradient 30x the preceding median at the onset",
        ctx.grad_norms[at] > 30 * _median(ctx.grad_norms[at - 20 : at]),
    )
    ctx.check("recovered by the end", _mean(ctx.losses[-10:]) < 3 * _mean(before))
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- bandy passes: class-balanced weights from counts not yet loaded -----------------------------

BANDY_SHARD = 80
BANDY_CLASSES = 5


@scenario(
    family="bandy_ice_pass_type_classifier",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BANDY_SHARD,
    note="A ReLU MLP naming the type of a bandy pass from 18 stick and ball tracking readings, "
    "SGD Nesterov 0.9 at 1e-2, per-sample cross-entropy times a class-balanced weight "
    "seen_total / (classes * (count_c + 1)), averaged (reduction='none' then .mean(), so the "
    "weights are not renormalised). When the loader opens the second shard (step 80) the "
    "per-class counts are reset and reloaded from the shard's manifest only after its first "
    "batch, while seen_total is not: for that one step every weight is about 1000 instead of "
    "about 1 and the gradient bursts; the counts are right again from the next step.",
)
def h177_bandy_class_weights_reset(ctx: Context) -> None:
    gen = seeded(17608)
    model = Stack(18, hidden=64, out=BANDY_CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    counts = torch.zeros(BANDY_CLASSES)
    seen = [0.0]
    weights = []

    def loss_fn(step, out, y):
        c = torch.zeros(BANDY_CLASSES) if step == BANDY_SHARD else counts
        w = seen[0] / (BANDY_CLASSES * (c + 1.0)) if seen[0] else torch.ones(BANDY_CLASSES)
        weights.append(float(w.mean()))
        counts.add_(torch.bincount(y, minlength=BANDY_CLASSES).float())
        seen[0] += len(y)
        return (F.cross_entropy(out, y, reduction="none") * w[y]).mean()

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 18, BANDY_CLASSES, seed=8, noise=0.8),
        180,
        loss_fn,
        classifier=True,
    )
    at = BANDY_SHARD
    ctx.check(
        "class weights 100x their usual size at the onset", weights[at] > 100 * weights[at - 1]
    )
    ctx.check(
        "gradient 50x the preceding median at the onset",
        ctx.grad_norms[at] > 50 * _median(ctx.grad_norms[at - 20 : at]),
    )
    ctx.check("weights back to normal after", weights[at + 1] < 2 * weights[at - 1])
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- sarangi: a StepLR gamma typed 1e1 for 1e-1 ----------------------------------------------------

SARANGI_STEP = 80


@scenario(
    family="sarangi_bow_pressure_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=SARANGI_STEP,
    note="A tanh MLP (nn.Tanh modules) regressing a sarangi player's bow pressure from 10 "
    "string-vibration readings, plain SGD at 0.25, MSE. The StepLR decay was configured as "
    "`gamma: 1e1` for `1e-1`: at step 80 the learning rate is multiplied by 10 instead of "
    "divided, lr x sharpness goes from under 2 to far above it and the loss blows up.",
)
def h177_sarangi_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(17609)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.25)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=SARANGI_STEP, gamma=1e1)
    batches = _readings(gen, 64, 10, seed=9)
    probe = next(batches)
    edge = {}

    def before(step):
        if step == SARANGI_STEP:
            edge["lam"] = _sharpness(model, F.mse_loss, *probe)
            edge["lr"] = opt.param_groups[0]["lr"]

    _train(ctx, model, opt, batches, 160, _plain(F.mse_loss), sched=sched, before=before)
    at = SARANGI_STEP
    lam, lr = edge.get("lam", 0.0), edge.get("lr", 0.0)
    ctx.check("lr x sharpness under 2 before the jump", 0 < lr / 10 * lam < 2)
    ctx.check("lr x sharpness past 4 after the jump", lr * lam > 4)
    ctx.check("loss fell before the jump", _fell(ctx.losses[:at]))
    ctx.check(
        "loss 100x its pre-jump level after, or non-finite",
        not _finite(ctx.losses[at:])
        or max(ctx.losses[at:]) > 100 * _mean(ctx.losses[at - 10 : at]),
    )


# -- mouth harp: an activity L1 coefficient typed 1e0 for 1e-4 -------------------------------------


@scenario(
    family="mouth_harp_twang_decay_relu_mlp",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) predicting how fast a mouth harp's twang decays from 14 "
    "lamella and mouth-cavity readings, NAdam at 1e-2, MSE plus an L1 penalty on both hidden "
    "layers' activations (summed over units, averaged over the batch) meant to keep them "
    "sparse. The coefficient was typed `1e0` for `1e-4`: the penalty drives every "
    "pre-activation below zero, the ReLUs die for every input, their gradient is zero from "
    "then on and the net is stuck predicting a constant.",
)
def h177_mouth_harp_activity_l1_typo(ctx: Context) -> None:
    gen = seeded(17610)
    model = Stack(14, hidden=64)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    acts = {}
    dead = []
    model.act1.register_forward_hook(lambda m, i, o: acts.__setitem__("a1", o))
    model.act2.register_forward_hook(lambda m, i, o: acts.__setitem__("a2", o))

    def penalty(step, out, loss):
        dead.append(dead_fraction(acts["a2"].detach()))
        l1 = acts["a1"].abs().sum(-1).mean() + acts["a2"].abs().sum(-1).mean()
        return loss + 1e0 * l1

    _train(ctx, model, opt, _readings(gen, 64, 14, seed=10), 200, _plain(F.mse_loss), extra=penalty)
    ctx.check("few dead units at the start", dead[0] < 0.2)
    ctx.check("90% of fc2's units dead at the end", _mean(dead[-10:]) > 0.9)
    ctx.check(
        "loss at the end no lower than half the first steps'", not _fell(ctx.losses, ratio=0.5)
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


class NumeralNet(nn.Module):
    def __init__(self, hidden=96):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="milestone_numeral_carving_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (nn.GELU modules) reading carved milestone numerals (8x8 digits), AdamW "
    "with weight decay only on the weight matrices (two param groups), 20 warm-up steps then "
    "cosine decay by LambdaLR, clip_grad_norm_ at 1.0, cross-entropy with label smoothing 0.05.",
)
def h177_control_milestone_warmup_cosine(ctx: Context) -> None:
    gen = seeded(17611)
    model = NumeralNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps, warm = 200, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        steps,
        _plain(lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05)),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="gesso_panel_cure_fp16_silu_mlp",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) predicting a gesso panel ground's cure hardness "
    "(standardised) from 16 glue, chalk and humidity readings with noisy labels, fp16 autocast "
    "with a torch.amp.GradScaler, RAdam, Huber loss, gradient accumulation over 2 "
    "micro-batches, clip_grad_norm_ at 5 after unscaling, ReduceLROnPlateau.",
)
def h177_control_gesso_fp16(ctx: Context) -> None:
    gen = seeded(17612)
    model = Stack(16, hidden=64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 16, seed=12, noise=0.2),
        160,
        _plain(lambda o, y: F.huber_loss(o, y, delta=1.0)),
        clip=5.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class TiedAutoencoder(nn.Module):
    def __init__(self, d=64, hidden=24):
        super().__init__()
        self.enc = nn.Linear(d, hidden)
        self.act = nn.ReLU()
        self.dec_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        h = self.act(self.enc(x))
        return F.linear(h, self.enc.weight.T, self.dec_bias)


@scenario(
    family="paper_marbling_comb_tied_autoencoder",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="An autoencoder with tied weights (the decoder is the encoder's transpose) "
    "compressing 8x8 paper-marbling comb patterns (digit images), binary cross-entropy on the "
    "pixel intensities from logits, ASGD under OneCycleLR (cycle_momentum off).",
)
def h177_control_marbling_tied_ae(ctx: Context) -> None:
    gen = seeded(17613)
    model = TiedAutoencoder()
    opt = torch.optim.ASGD(model.parameters(), lr=0.1)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=steps, cycle_momentum=False
    )

    def pixels():
        for x, _ in digit_batches(gen, 64):
            yield x, x

    _train(
        ctx,
        model,
        opt,
        pixels(),
        steps,
        _plain(F.binary_cross_entropy_with_logits),
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("loss finite throughout", _finite(ctx.losses))
