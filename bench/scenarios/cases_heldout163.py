"""Held-out set 163 (``h163_``): hand-written models of crafts, sports, instruments and
natural phenomena not covered before: three hand-written transformers (a hand softmax over q.k,
``scaled_dot_product_attention``, and an ``nn.TransformerEncoder`` of
``nn.TransformerEncoderLayer``), a PointNet over generated point clouds, a SwiGLU regressor, a
hand-unrolled ReLU RNN, a SimCLR-style InfoNCE encoder with a temperature, 1-D conv nets (one
under fp16 autocast with a GradScaler) and plain MLPs.

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
    return s[len(s) // 2]


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
    watch=None,
    back=None,
    log_back=True,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    unscale=None,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``back(step, loss)``
    is the loss that is back-propagated (the plain loss when None; logged unless ``log_back`` is
    False, then the plain loss is), ``unscale(step)``
    runs between the backward passes and the update, ``after(step)`` runs after the update."""
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
            total = loss if back is None else back(step, loss)
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float((total if log_back else loss / accumulate).detach())
        if unscale is not None:
            unscale(step)
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
                sched.step(shown)
            else:
                sched.step()
        if after is not None:
            after(step)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
            break


# -- shamisen bachi strokes: a hand softmax whose 1/sqrt(d) moved onto the values ---------------


class BachiAttention(nn.Module):
    """Multi-head self-attention written by hand (softmax over q.k); records the largest |q.k|
    logit the softmax saw."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.scale = (dim // heads) ** -0.5
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        # a refactor "to save a multiply on the bigger tensor" moved the scale onto v
        scores = q @ k.transpose(-1, -2)
        v = v * self.scale
        with torch.no_grad():
            self.last_max = float(scores.abs().amax())
        y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class BachiStrokeNet(nn.Module):
    """Names the bachi (plectrum) stroke of a shamisen (sukui, hajiki, uchi, suri) from 16 binned
    readings of the string's attack envelope."""

    def __init__(self, levels=24, dim=32, length=16, strokes=4, heads=4):
        super().__init__()
        self.embed = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = BachiAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, strokes)

    def forward(self, x):
        h = self.embed(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _bachi(gen, batch, levels=24, length=16):
    """The stroke depends on where the envelope peaks (first or second half) and on whether the
    decay after the peak is long."""
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        late = (x.argmax(1) >= length // 2).long()
        long_decay = (x[:, -4:].float().mean(1) > levels / 2).long()
        yield x, late * 2 + long_decay


@scenario(
    family="shamisen_bachi_stroke_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block pre-LN transformer with a hand-written softmax over q.k. A refactor moved "
    "the 1/sqrt(head_dim) factor from the scores onto the values, so the softmax sees raw q.k; "
    "AdamW runs at lr 1e-2 with weight decay 0: the attention logits grow more than 10x, past "
    "40, while the classification itself trains.",
)
def h163_shamisen_scale_on_values(ctx: Context) -> None:
    gen = seeded(16301)
    model = BachiStrokeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _bachi(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 40", seen[-1] > 40)
    ctx.check("the run stayed finite", _finite(ctx.losses))


# -- snow crystal habits: a confidence bonus written on raw logits ------------------------------


class SnowCrystalNet(nn.Module):
    """Names a snow crystal's habit (plate, column, needle, dendrite, sector plate) from eight
    standardised cloud-chamber readings (temperature, supersaturation, fall speed, ...)."""

    def __init__(self, inputs=8, hidden=48, habits=5):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, habits)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))


def _crystals(gen, batch, inputs=8, habits=5):
    centres = torch.randn(habits, inputs, generator=torch.Generator().manual_seed(163))
    while True:
        y = torch.randint(0, habits, (batch,), generator=gen)
        yield centres[y] + 1.5 * torch.randn(batch, inputs, generator=gen), y


@scenario(
    family="snow_crystal_habit_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Cross-entropy plus a 'confidence bonus' (entropy-minimisation style) meant to be "
    "0.2 x the mean max log-probability, but written as 0.2 x logits.max(1).mean() on the raw "
    "logits: that term has no floor, so under NAdam (lr 3e-3) the head's logits grow without "
    "bound (the logit norm grows more than 20x and is still growing at the end) and the "
    "logged loss runs negative.",
)
def h163_snow_crystal_logit_bonus(ctx: Context) -> None:
    gen = seeded(16302)
    model = SnowCrystalNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    norms = []

    seen = {}

    def back(step, loss):
        return loss - 0.2 * seen["out"].max(1).values.mean()

    def watch(step, out, x, y):
        seen["out"] = out
        norms.append(float(out.detach().norm(dim=-1).mean()))

    _train(
        ctx,
        model,
        opt,
        _crystals(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        back=back,
    )
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.2 * norms[-50])
    ctx.check("the logged loss ran negative", ctx.losses[-1] < 0)


# -- rip currents: an output temperature of 1e-4 in an SDPA transformer -------------------------


class SurfAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class RipCurrentNet(nn.Module):
    """Rates rip-current risk (low, moderate, high) from 12 hourly wave-buoy readings (height,
    period, direction, tide level)."""

    def __init__(self, features=4, dim=32, length=12, levels=3, heads=2, temperature=1.0):
        super().__init__()
        self.inp = nn.Linear(features, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SurfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, levels)
        self.temperature = temperature

    def forward(self, x):
        h = self.inp(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1)) / self.temperature


def _buoy(gen, batch, length=12):
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        energy = (x[:, :, 0] + 0.5 * x[:, :, 1]).mean(1) * 2 - 0.5 * x[:, -3:, 3].mean(1)
        y = (energy > -0.4).long() + (energy > 0.4).long()
        yield x, y


@scenario(
    family="rip_current_risk_transformer",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A one-block transformer through scaled_dot_product_attention whose forward divides the "
    "head's logits by a temperature. The shared config's 'temperature: 1e-4' (meant for a "
    "sampling step elsewhere) was read for this classifier, so the logits are 10000x their "
    "scale: under Adam at lr 1e-3 the float32 softmax of over 80% of rows is exactly 1 for "
    "one class and 0 for the rest, right or wrong.",
)
def h163_rip_current_temperature(ctx: Context) -> None:
    gen = seeded(16303)
    model = RipCurrentNet(temperature=1e-4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    frac, sat = [], []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))
        p = torch.softmax(out.detach().float(), dim=-1)
        sat.append(float((p.amax(-1) == 1.0).float().mean()))

    _train(ctx, model, opt, _buoy(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch)
    ctx.check("over 80% of rows saturated to p=1", _mean(sat[-20:]) > 0.8)
    ctx.check("over 40% of targets at exactly p=1", _mean(frac[-20:]) > 0.4)
    ctx.check("the run stayed finite", _finite(ctx.losses))


# -- sundog halos: OneCycleLR's max_lr typed 10x ------------------------------------------------


class HaloNet(nn.Module):
    """Regresses a sundog's brightness from seven standardised readings (sun elevation, crystal
    tilt spread, cirrus optical depth, ...)."""

    def __init__(self, inputs=7, hidden=48):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)).squeeze(-1)


def _halo(gen, batch, inputs=7):
    w = torch.linspace(-1.0, 1.0, inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = (
            torch.tanh(x @ w / 2)
            + 0.4 * torch.sin(x[:, 0] * x[:, 2])
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield x, y


def _top_eig(model, x, y, iters=12):
    """Largest Hessian eigenvalue of the MSE loss on (x, y) by power iteration."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="sundog_halo_brightness_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=13,
    note="Plain SGD with OneCycleLR (cycle_momentum off) whose max_lr was typed 2.0 for 0.2. "
    "The learning rate climbs through the warm-up phase and at step 13 passes 2/sharpness of "
    "the MSE loss (lr x top Hessian eigenvalue, measured on a copy by power iteration, is 0.44 "
    "at the start; the intended peak of 0.2 would have stayed near 1), after which the loss "
    "oscillates and blows up.",
)
def h163_sundog_onecycle_max_lr(ctx: Context) -> None:
    gen = seeded(16304)
    model = HaloNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2.0, total_steps=200, pct_start=0.3, cycle_momentum=False
    )
    probe_x, probe_y = next(_halo(torch.Generator().manual_seed(1), 256))
    lrs, ratio = [], []

    def before(step):
        lr = opt.param_groups[0]["lr"]
        lrs.append(lr)
        if step < 60:
            copy = HaloNet()
            copy.load_state_dict(model.state_dict())
            ratio.append((step, lr * _top_eig(copy, probe_x, probe_y)))

    _train(ctx, model, opt, _halo(gen, 64), 200, F.mse_loss, sched=sched, before=before)
    ls = ctx.losses
    fin = [v if math.isfinite(v) else 1e30 for v in ls]
    low = min(fin[:40])
    ctx.check("the loss fell first", low < 0.5 * ls[0])
    ctx.check("then blew up 100x", max(fin) > 100 * low)
    crossing = next((s for s, r in ratio if r > 2), None)
    ctx.check("lr x sharpness below 2 at the start", ratio[0][1] < 2)
    ctx.check(
        "lr x sharpness passed 2 before the blow-up",
        crossing is not None and crossing < len(ls) and fin[crossing] < 2 * ls[0],
    )


# -- noctilucent clouds: an IRNN's identity init scaled 1.3 -------------------------------------


class NoctilucentRNN(nn.Module):
    """A ReLU RNN unrolled by hand over 40 nightly frames of a mesospheric cloud camera (six
    bands) that forecasts tomorrow's brightness in each band."""

    def __init__(self, bands=6, hidden=48, gain=1.0):
        super().__init__()
        self.w_in = nn.Linear(bands, hidden)
        self.w_rec = nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            self.w_rec.weight.copy_(gain * torch.eye(hidden))
        self.head = nn.Linear(hidden, bands)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.w_rec.in_features)
        for t in range(x.shape[1]):
            h = F.relu(self.w_in(x[:, t]) + self.w_rec(h))
        return self.head(h)


def _nlc(gen, batch, bands=6, length=40):
    t = torch.arange(length + 1).float()
    while True:
        phase = 6.28 * torch.rand(batch, bands, 1, generator=gen)
        period = 8.0 + 8.0 * torch.rand(batch, bands, 1, generator=gen)
        sig = 0.4 * torch.sin(6.28 * t / period + phase)
        sig = sig + 0.05 * torch.randn(sig.shape, generator=gen)
        yield sig[:, :, :-1].transpose(1, 2), sig[:, :, -1]


@scenario(
    family="noctilucent_cloud_brightness_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("w_rec",),
    diverges="auto",
    heldout=True,
    note="An IRNN (ReLU RNN with identity recurrent init) unrolled by hand over 40 frames; the "
    "init multiplied the identity by 1.05 (the 'init_gain' key meant for the input layer), so "
    "the ReLU state and the gradient back through time grow at every step (the first state's "
    "gradient is several times the last's). SGD with momentum (lr 1e-3) and MSE: the gradient "
    "is in the thousands from the start and the loss blows up by many orders of magnitude "
    "within a few steps.",
)
def h163_noctilucent_irnn_gain(ctx: Context) -> None:
    gen = seeded(16305)
    model = NoctilucentRNN(gain=1.05)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    # on a copy (nothing attached): the gradient reaching each hidden state of the first batch
    copy = NoctilucentRNN()
    copy.load_state_dict(model.state_dict())
    x0, y0 = next(_nlc(torch.Generator().manual_seed(5), 32))
    h, states = torch.zeros(32, 48), []
    for t in range(x0.shape[1]):
        h = F.relu(copy.w_in(x0[:, t]) + copy.w_rec(h))
        h.retain_grad()
        states.append(h)
    F.mse_loss(copy.head(h), y0).backward()
    through_time = float(states[0].grad.norm() / states[-1].grad.norm())
    _train(ctx, model, opt, _nlc(gen, 32), 150, F.mse_loss)
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    fin = [v if math.isfinite(v) else 1e30 for v in ctx.losses]
    ctx.check("the gradient grows 3x back through time", through_time > 3)
    ctx.check("the gradient is over 1000 at the start", g[0] > 1000)
    ctx.check("the loss blew up 1e6x", max(fin) > 1e6 * fin[0])


# -- leather stamps: RMSprop lr typed 1e-1 for 1e-3 kills the first ReLU layer -----------------


class StampNumeralNet(nn.Module):
    """Reads the serial numeral a leatherworker hand-stamped into a strap from an 8x8 scan of
    the impression (scikit-learn's digits stand in for the scans)."""

    def __init__(self, inputs=64, hidden=64, numerals=10):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.out = nn.Linear(hidden, numerals)

    def forward(self, x):
        return self.out(self.relu2(self.fc2(self.relu1(self.fc1(x)))))


@scenario(
    family="leather_stamp_numeral_reader",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "relu1"),
    diverges=None,
    heldout=True,
    note="A two-layer ReLU MLP classifier on non-negative 8x8 scans, RMSprop with lr typed "
    "1e-1 for 1e-3: RMSprop's first normalised steps drive most first-layer units' "
    "pre-activations negative on every input, over 80% of relu1 never fires again and the "
    "loss stalls above 1 where the same model at lr 1e-3 reaches about 0.2.",
)
def h163_leather_stamp_dead_relus(ctx: Context) -> None:
    gen = seeded(16306)
    model = StampNumeralNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)
    acts = {}
    model.relu1.register_forward_hook(lambda m, i, o: acts.__setitem__("h", o.detach()))
    dead = []
    _train(
        ctx,
        model,
        opt,
        digit_batches(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: dead.append(dead_fraction(acts["h"])),
    )
    ctx.check("over 80% of relu1 units died", _mean(dead[-10:]) > 0.8)
    ctx.check("few were dead at the start", dead[0] < 0.3)
    ctx.check("the loss stalled above 1", _mean(ctx.losses[-20:]) > 1.0)


# -- scree rocks: a PointNet whose point encoder was frozen by a fine-tuning config ------------


class ScreePointNet(nn.Module):
    """A PointNet: a shared per-point MLP, a max-pool over the points, and a head that names the
    shape of a scree fragment (blocky, platy, elongated, rounded) from a 3-D scan."""

    def __init__(self, hidden=64, shapes=4):
        super().__init__()
        self.point_mlp = nn.Sequential(
            nn.Linear(3, 32), nn.ReLU(), nn.Linear(32, hidden), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, shapes))

    def forward(self, pts):
        return self.head(self.point_mlp(pts).max(dim=1).values)


def _rotation(gen, n):
    q = torch.randn(n, 3, 3, generator=gen)
    return torch.linalg.qr(q).Q


def _scree(gen, batch, points=64):
    axes = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.25], [1.6, 0.4, 0.4], [1.0, 1.0, 1.0]])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        d = torch.randn(batch, points, 3, generator=gen)
        sphere = d / d.norm(dim=-1, keepdim=True)
        cube = sphere / sphere.abs().amax(-1, keepdim=True)
        surf = torch.where((y == 3)[:, None, None], sphere, cube)
        size = 0.7 + 0.6 * torch.rand(batch, 1, 1, generator=gen)
        pts = surf * axes[y][:, None, :] * size
        pts = pts @ _rotation(gen, batch)
        yield pts + 0.03 * torch.randn(pts.shape, generator=gen), y


@scenario(
    family="scree_fragment_pointnet",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("point_mlp", "point_mlp.0", "point_mlp.2"),
    diverges=None,
    heldout=True,
    note="Adam with two param groups; the point encoder's group carries 'lr: 0.0' from a "
    "fine-tuning config that froze a pretrained encoder, but here the encoder is freshly "
    "initialised: the shared per-point MLP never moves (update/weight ratio exactly 0) while "
    "the head trains on random max-pooled features and the loss stays near 1.3 (the same "
    "model with the encoder at lr 2e-3 reaches about 0.5).",
)
def h163_scree_pointnet_frozen_encoder(ctx: Context) -> None:
    gen = seeded(16307)
    model = ScreePointNet()
    opt = torch.optim.Adam(
        [
            {"params": model.point_mlp.parameters(), "lr": 0.0},
            {"params": model.head.parameters()},
        ],
        lr=2e-3,
    )
    w0 = model.point_mlp[2].weight.detach().clone()
    h0 = model.head[0].weight.detach().clone()
    _train(ctx, model, opt, _scree(gen, 32), 200, F.cross_entropy, classifier=True)
    moved = float((model.point_mlp[2].weight.detach() - w0).norm() / w0.norm())
    head_moved = float((model.head[0].weight.detach() - h0).norm() / h0.norm())
    ctx.check("the encoder never moved", moved == 0.0)
    ctx.check("the loss stayed above 1", _mean(ctx.losses[-20:]) > 1.0)
    ctx.check("the head moved over 10%", head_moved > 0.1)
    ctx.check("the run stayed finite", _finite(ctx.losses))


# -- koto bridges: one step's loss weight read from the wrong column ---------------------------


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class KotoBridgeNet(nn.Module):
    """Regresses where each of a koto's 13 movable bridges (ji) should sit for a tuning, from ten
    readings (string gauge, tension, target pitch class, humidity, ...)."""

    def __init__(self, inputs=10, dim=48, strings=13):
        super().__init__()
        self.inp = nn.Linear(inputs, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp1 = SwiGLU(dim, 96)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp2 = SwiGLU(dim, 96)
        self.out = nn.Linear(dim, strings)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.mlp1(self.norm1(h))
        h = h + self.mlp2(self.norm2(h))
        return self.out(h)


def _koto(gen, batch, inputs=10, strings=13):
    w = torch.randn(inputs, strings, generator=torch.Generator().manual_seed(1630)) / 3
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        yield (
            x,
            torch.tanh(x @ w)
            + 0.2 * x[:, :1] * x[:, 1:2]
            + 0.02 * torch.randn(batch, strings, generator=gen),
        )


@scenario(
    family="koto_bridge_swiglu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=70,
    note="A pre-LN SwiGLU regressor under Adam (lr 2e-3, beta2 0.999). The per-step loss weight "
    "comes from a curriculum table; at step 70 the lookup was off by one column and read the "
    "table's sample count (20000) instead of the weight (1.0): one gradient 20000x the others "
    "fills Adam's second moment; after the first moment's share of it has knocked the loss up, "
    "the typical update for the rest of the run is over 10x smaller than before and the loss "
    "creeps back only slowly, staying well above its level before step 70.",
)
def h163_koto_curriculum_weight_column(ctx: Context) -> None:
    gen = seeded(16308)
    model = KotoBridgeNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    moves, prev = [], {}

    def before(step):
        prev["w"] = model.mlp2.up.weight.detach().clone()

    def after(step):
        moves.append(float((model.mlp2.up.weight.detach() - prev["w"]).abs().median()))

    _train(
        ctx,
        model,
        opt,
        _koto(gen, 64),
        220,
        F.mse_loss,
        before=before,
        after=after,
        back=lambda s, loss: loss * (20000.0 if s == 70 else 1.0),
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("the gradient jumped 1000x at step 70", g[70] > 1000 * _mean(g[50:70]))
    ctx.check(
        "the median update is 10x smaller after", _mean(moves[120:160]) < 0.1 * _mean(moves[50:70])
    )
    ctx.check(
        "the loss stays above its level before step 70", _mean(ls[-10:]) > 2 * _mean(ls[60:70])
    )


# -- pearl divers: one shard logged dive times in seconds ---------------------------------------


class DiveTimeNet(nn.Module):
    """Predicts a breath-hold pearl diver's bottom time (minutes) from nine readings (depth,
    water temperature, years diving, the previous dive's surface interval, ...)."""

    def __init__(self, inputs=9, hidden=48):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.body(x)).squeeze(-1)


def _dives(gen, batch, inputs=9):
    w = torch.linspace(-0.6, 0.6, inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        yield x, 1.8 + 0.5 * torch.tanh(x @ w) + 0.1 * torch.randn(batch, generator=gen)


@scenario(
    family="pearl_diver_bottom_time_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="An MSE regressor under SGD with momentum (lr 5e-3). The shard read at step 110 came "
    "from a dive computer that logs bottom time in seconds instead of minutes: that one batch's "
    "targets are 60x too large, the loss and the gradient jump far above every other step, "
    "and the run recovers afterwards.",
)
def h163_pearl_diver_seconds_shard(ctx: Context) -> None:
    gen = seeded(16309)
    model = DiveTimeNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 60.0) if step == 110 else (x, y)

    _train(ctx, model, opt, _dives(gen, 64), 250, F.mse_loss, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    before = _median(ls[80:110])
    ctx.check("the loss jumped 100x at the bad shard", ls[110] > 100 * before)
    ctx.check("the gradient jumped 30x there", g[110] > 30 * _mean(g[90:110]))
    ctx.check("the run recovered", _finite(ls) and _mean(ls[-20:]) < 3 * before)


# -- alphorn partials: a static loss scale not undone for one step -----------------------------


class AlphornPartialNet(nn.Module):
    """Names which natural partial (2nd to 7th) an alphorn player is sounding from a 32-bin
    spectrum."""

    def __init__(self, bins=32, hidden=64, partials=6):
        super().__init__()
        self.fc1 = nn.Linear(bins, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, partials)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def _alphorn(gen, batch, bins=32, partials=6):
    f = torch.arange(bins).float()
    while True:
        y = torch.randint(0, partials, (batch,), generator=gen)
        centre = 3.0 + 4.0 * y.float()[:, None] + 0.8 * torch.randn(batch, 1, generator=gen)
        x = torch.exp(-((f - centre) ** 2) / 4.0) + 0.3 * torch.randn(batch, bins, generator=gen)
        yield x, y


@scenario(
    family="alphorn_partial_classifier",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="Cross-entropy with gradient accumulation over 4 micro-batches and a static loss "
    "scale of 128 kept from an old fp16 config (the loss is multiplied by 128 for backward and "
    "the gradients divided by 128 before the step). At step 90, the first step after a "
    "checkpoint resume, the resume path skipped the unscale: that step's gradient is 128x its "
    "neighbours while the batch and the logged loss are ordinary; SGD Nesterov (lr 5e-2) "
    "takes the jolt (the loss jumps over the next steps) and recovers.",
)
def h163_alphorn_unscale_skipped(ctx: Context) -> None:
    gen = seeded(16310)
    model = AlphornPartialNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    scale = 128.0

    def back(step, loss):
        return loss * scale

    def unscale(step):
        if step != 90:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(scale)

    _train(
        ctx,
        model,
        opt,
        _alphorn(gen, 32),
        200,
        F.cross_entropy,
        classifier=True,
        back=back,
        log_back=False,
        unscale=unscale,
        accumulate=4,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("the gradient jumped 50x at step 90", g[90] > 50 * _mean(g[70:90]))
    ctx.check("the loss at step 90 was ordinary", ls[90] < 2 * _mean(ls[80:90]))
    ctx.check(
        "the run went on finite and recovered",
        _finite(ls) and _mean(ls[-10:]) < _mean(ls[80:90]) * 1.5,
    )


# -- mayfly hatches: a log of a ReLU'd rate ----------------------------------------------------


class RateHead(nn.Module):
    """The log-rate of a Poisson count: written as log(relu(linear)) 'to keep the rate
    non-negative'."""

    def __init__(self, hidden):
        super().__init__()
        self.lin = nn.Linear(hidden, 1)
        nn.init.constant_(self.lin.bias, 3.0)

    def forward(self, h):
        return torch.log(F.relu(self.lin(h))).squeeze(-1)


class MayflyHatchNet(nn.Module):
    """Forecasts the count of mayfly duns emerging on a river stretch in an hour from seven
    standardised readings (water temperature, degree-days, flow, light, ...)."""

    def __init__(self, inputs=7, hidden=32):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh())
        self.rate = RateHead(hidden)

    def forward(self, x):
        return self.rate(self.trunk(x))


def _hatches(gen, batch, inputs=7):
    w = torch.tensor([0.8, 0.5, -0.4, 0.3, 0.0, -0.2, 0.1])
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        lam = torch.exp(1.2 + x @ w)
        yield x, torch.poisson(lam, generator=gen)


def _poisson_nll(log_rate, y):
    return (torch.exp(log_rate) - y * log_rate).mean()


@scenario(
    family="mayfly_hatch_count_poisson",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("rate",),
    diverges=49,
    heldout=True,
    onset=49,
    note="A Poisson count regressor whose rate head computes log(relu(linear)) to 'keep the "
    "rate non-negative'. Under Adagrad (lr 1e-2) the head's pre-activation for some reach "
    "drops to <= 0 at step 49: log(0) = -inf, and the Poisson NLL and the gradients turn NaN at "
    "that step.",
)
def h163_mayfly_log_of_relu(ctx: Context) -> None:
    gen = seeded(16311)
    model = MayflyHatchNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    _train(ctx, model, opt, _hatches(gen, 64), 200, _poisson_nll)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss turned non-finite", bad is not None)
    ctx.check(
        "the loss was finite and falling first",
        bad is not None and bad > 10 and ctx.losses[bad - 1] < ctx.losses[0],
    )


# -- anagama kilns: firing energy in raw kilojoules under fp16 autocast -------------------------


class KilnEnergyNet(nn.Module):
    """Predicts the energy (kJ) a wood-fired anagama kiln takes for a firing from eight standardised
    readings (chamber volume, ware load, wood moisture, stoke interval, ...)."""

    def __init__(self, inputs=8, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.energy = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.energy(F.relu(self.fc2(F.relu(self.fc1(x))))).squeeze(-1)


def _firings(gen, batch, inputs=8):
    w = torch.linspace(0.3, -0.2, inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        yield x, 52000.0 + 15000.0 * torch.tanh(x @ w) + 6000.0 * x[:, 0].abs()


@scenario(
    family="anagama_kiln_firing_energy_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("energy",),
    diverges=68,
    heldout=True,
    note="An MSE regressor under fp16 autocast with a GradScaler whose target is the firing "
    "energy in raw kilojoules (around 40000-90000, never standardised). The weight gradients "
    "of that loss overflow fp16 from the first step: the scaler skips the first 17 steps and "
    "drives its scale below 1, and keeps skipping as the error grows. AdamW (lr 5e-2) still "
    "raises the output towards the targets, and at step 68 the head's fp16 output passes "
    "65504: the forward pass overflows to inf, nearly every step is skipped from then on, the "
    "scale collapses towards 0 and the loss stays inf.",
)
def h163_anagama_kilojoules_fp16(ctx: Context) -> None:
    gen = seeded(16312)
    model = KilnEnergyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-2)
    scaler = torch.amp.GradScaler("cpu")
    overflowed = []
    _train(
        ctx,
        model,
        opt,
        _firings(gen, 64),
        200,
        F.mse_loss,
        scaler=scaler,
        watch=lambda s, o, x, y: overflowed.append(bool(torch.isinf(o).any())),
    )
    ls, sc = ctx.losses, ctx.scales
    bad = _first_bad(ls)
    ctx.check("the fp16 output itself was inf there", bad is not None and overflowed[bad])
    ctx.check("the loss went non-finite", bad is not None)
    ctx.check("finite for the first 20 steps", bad is not None and bad > 20)
    ctx.check(
        "mostly non-finite after",
        bad is not None and sum(not math.isfinite(v) for v in ls[bad:]) > 0.6 * len(ls[bad:]),
    )
    ctx.check("the scale fell below 1 before step 30", bool(sc) and min(sc[:30]) < 1)
    ctx.check("the scale fell 1000x from its peak", bool(sc) and sc[-1] < max(sc) / 1000)


# ================================ healthy controls ==============================================


# -- cave bats: a SimCLR-style InfoNCE encoder of echolocation calls --------------------------


class BatCallEncoder(nn.Module):
    """A 1-D conv encoder of a 48-sample echolocation call with a projection head."""

    def __init__(self, width=16, dim=32, proj=16):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(1, width, 5, padding=2),
            nn.GELU(),
            nn.Conv1d(width, 2 * width, 5, padding=2, stride=2),
            nn.GELU(),
        )
        self.fc = nn.Linear(2 * width, dim)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, proj))

    def forward(self, x):
        h = self.conv(x[:, None]).mean(-1)
        return self.proj(self.fc(h))


def _bat_calls(gen, batch, length=48):
    t = torch.linspace(0, 1, length)
    while True:
        f0 = 4 + 8 * torch.rand(batch, 1, generator=gen)
        sweep = -6 * torch.rand(batch, 1, generator=gen)
        call = torch.sin(6.28 * (f0 * t + sweep * t * t))

        def view(call=call):
            shift = int(torch.randint(-3, 4, (1,), generator=gen))
            amp = 0.7 + 0.6 * torch.rand(batch, 1, generator=gen)
            v = torch.roll(call, shift, dims=1) * amp
            return v + 0.15 * torch.randn(batch, length, generator=gen)

        yield view(), view()


def _info_nce(z1, z2, temperature):
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.T / temperature
    n = z1.shape[0]
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target), sim, target


class _PairModel(nn.Module):
    """Wraps the encoder so the loop sees model((v1, v2)) -> (z1, z2) stacked."""

    def __init__(self):
        super().__init__()
        self.encoder = BatCallEncoder()

    def forward(self, views):
        return torch.stack([self.encoder(views[0]), self.encoder(views[1])])


@scenario(
    family="cave_bat_call_infonce_encoder",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="A SimCLR-style (NT-Xent) contrastive encoder of bat echolocation calls: two augmented "
    "views (time shift, gain, noise), temperature 0.1, Adamax lr 1e-2 with a cosine schedule. "
    "Healthy: the loss falls and the positive view is the top match for about half the rows "
    "(chance is 1 in 127).",
)
def h163_cave_bat_infonce_control(ctx: Context) -> None:
    gen = seeded(16313)
    model = _PairModel()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    acc = []

    def batches():
        for v1, v2 in _bat_calls(gen, 64):
            yield (v1, v2), None

    def loss_fn(z, _):
        loss, sim, target = _info_nce(z[0], z[1], 0.1)
        acc.append(float((sim.argmax(1) == target).float().mean()))
        return loss

    _train(ctx, model, opt, batches(), 200, loss_fn, sched=sched)
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("the positive is the top match for over 30% of rows", _mean(acc[-10:]) > 0.3)


# -- tug of war: an nn.TransformerEncoder sequence classifier --------------------------------


class TugOfWarNet(nn.Module):
    """Names the pull's outcome (left wins, right wins, no result) from 20 readings of the two
    teams' rope-tension sensors, through an nn.TransformerEncoder."""

    def __init__(self, features=2, dim=32, length=20, outcomes=3):
        super().__init__()
        self.inp = nn.Linear(features, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        layer = nn.TransformerEncoderLayer(
            dim, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, outcomes)

    def forward(self, x):
        return self.head(self.encoder(self.inp(x) + self.pos).mean(1))


def _pulls(gen, batch, length=20):
    while True:
        x = torch.randn(batch, length, 2, generator=gen)
        margin = (x[:, -8:, 0] - x[:, -8:, 1]).mean(1)
        y = torch.where(margin > 0.35, 0, torch.where(margin < -0.35, 1, 2))
        yield x, y


@scenario(
    family="tug_of_war_pull_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="An nn.TransformerEncoder (two pre-LN nn.TransformerEncoderLayer, batch_first) sequence "
    "classifier, cross-entropy with label smoothing 0.1, AdamW (lr 2e-3, weight decay 0.01) "
    "with a 20-step LambdaLR warm-up, gradient clipping at 1.0. Healthy.",
)
def h163_tug_of_war_control(ctx: Context) -> None:
    gen = seeded(16314)
    model = TugOfWarNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    acc = []

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _pulls(gen, 64),
        200,
        loss_fn,
        classifier=True,
        sched=sched,
        clip=1.0,
        watch=lambda s, o, x, y: acc.append(float((o.argmax(1) == y).float().mean())),
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("accuracy above 0.7", _mean(acc[-20:]) > 0.7)


# -- salterns: heavy-tailed readings, Huber, RAdam with ReduceLROnPlateau -----------------------


class SalternNet(nn.Module):
    """Regresses the day's salt crystallised (standardised kg per square metre) in a solar
    saltern's crystallising pond from nine readings (brine density, wind, sun hours, humidity,
    ...)."""

    def __init__(self, inputs=9, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.LayerNorm(hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _saltern(gen, batch, inputs=9):
    w = torch.linspace(0.7, -0.3, inputs)
    t = torch.distributions.StudentT(3.0)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        noise = t.sample((batch,)) * 0.2
        yield x, 2.0 * torch.tanh(x @ w / 2) + 0.5 * x[:, 1] * x[:, 4] + noise


@scenario(
    family="saltern_brine_crystallisation_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A LayerNorm SiLU MLP on readings with Student-t (3 d.o.f.) noise, Huber loss, RAdam "
    "(lr 3e-3) with ReduceLROnPlateau, gradient accumulation over 2 micro-batches and "
    "clipping at 5. Healthy.",
)
def h163_saltern_control(ctx: Context) -> None:
    gen = seeded(16315)
    model = SalternNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _saltern(gen, 64),
        200,
        F.huber_loss,
        sched=sched,
        accumulate=2,
        clip=5.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))


# -- curragh rowing: a 1-D conv net under fp16 autocast, OneCycleLR, SGD Nesterov --------------


class OarStrokeNet(nn.Module):
    """Flags a 'caught crab' (a fouled oar stroke) from 32 samples of an oarlock accelerometer
    on a curragh; a 1-D conv net with one logit for BCE."""

    def __init__(self, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(h))
        return self.head(h.amax(-1)).squeeze(-1)


def _strokes(gen, batch, length=32):
    t = torch.linspace(0, 1, length)
    while True:
        y = (torch.rand(batch, generator=gen) < 0.4).float()
        where = 0.3 + 0.4 * torch.rand(batch, 1, generator=gen)
        stroke = torch.sin(3.14 * t)[None].repeat(batch, 1)
        jolt = -2.0 * torch.exp(-((t - where) ** 2) / 0.002) * y[:, None]
        yield stroke + jolt + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="curragh_oar_stroke_cnn1d",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="A 1-D conv net with BCE-with-logits under fp16 autocast and a GradScaler, SGD "
    "Nesterov (momentum 0.9) with OneCycleLR (max_lr 0.05). Healthy: the loss scale stays at "
    "or above 1.",
)
def h163_curragh_fp16_control(ctx: Context) -> None:
    gen = seeded(16316)
    model = OarStrokeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _strokes(gen, 64),
        200,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        scaler=scaler,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the scale stayed above 1", min(ctx.scales) >= 1.0)
