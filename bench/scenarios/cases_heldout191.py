"""Held-out set 191 (``h191_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a capoeira roda attention net trained with no weight decay
at a high rate, a red-sprite photometer net with a log-energy feature squared in float16, a
woodcarving gouge-mark GroupNorm CNN whose trunk rate multiplier is read through int(), a frazil
ice accretion regressor on a bootstrapped target whose discount was typed 1.05 for 0.95, a
javelin release regressor whose MultiStepLR gamma was typed 10 for 0.1, a trapeze swing Elman
RNN with a recurrent init std copied from a 6-unit prototype, a wind-chime net with a
hand-written standard deviation, a camel-racing speed regressor fed one track's heats timed in
minutes, a snowshoe gait ReLU classifier handed the SGD rate under RMSprop, a cave-dive hazard
multi-label net with label smoothing of the wrong sign, and three controls (a canyoning
rope-drag GELU MLP with weight decay and StepLR, a bugle-call tied attention LM, a turf-cutting
fp16 moisture regressor).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, grad_norm, scenario, seeded


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


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    stop_on_nan=True,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` records after the forward
    pass, ``after(step)`` after the optimizer step; ``accumulate`` micro-batches a step; stops
    after logging a NaN loss unless told not to."""
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
        if stop_on_nan and math.isnan(shown):
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


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


# -- capoeira: a roda call net at a high rate with no weight decay and no qk normalisation --------


class RodaAttention(nn.Module):
    """Single-head self-attention by hand: logits q.k / sqrt(d), softmax over the moves."""

    def __init__(self, dim=32):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.dim = dim
        self.last_logits = None

    def forward(self, h):
        logits = self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(self.dim)
        self.last_logits = logits.detach()
        return self.o(torch.softmax(logits, -1) @ self.v(h))


class RodaNet(nn.Module):
    def __init__(self, d_in=10, dim=32, classes=8):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.act = nn.GELU()
        self.attn = RodaAttention(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.act(self.embed(x))
        return self.head((h + self.attn(h)).mean(1))


def _roda(gen, batch, length=16):
    """Sixteen moves of a capoeira game (one of 8 moves one-hot, a tempo reading, and the
    berimbau's accent loudness); the label is the move played on the loudest accent."""
    while True:
        accent = torch.rand(batch, length, generator=gen)
        loud = torch.randint(0, length, (batch, 1), generator=gen)
        accent = accent.scatter(1, loud, 1.6 + 0.4 * torch.rand(batch, 1, generator=gen))
        move = torch.randint(0, 8, (batch, length), generator=gen)
        tempo = torch.rand(batch, length, 1, generator=gen)
        x = torch.cat([F.one_hot(move, 8).float(), tempo, accent[..., None]], -1)
        yield x + 0.05 * torch.randn(x.shape, generator=gen), move.gather(1, loud).squeeze(1)


@scenario(
    family="capoeira_roda_accent_attention_net",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A capoeira roda logger naming the move (8 classes) played on the berimbau's loudest "
    "accent among 16: a GELU embedding, one hand-written self-attention module (q/k/v/o "
    "Linears, logits q.k/sqrt(d), no query/key normalisation), a residual, mean pooling and a "
    "head, cross-entropy with label smoothing 0.05, clean labels. AdamW at 2e-2 with "
    "weight_decay=0.0 (the recipe's 0.1 left out of the config): to point every position ever "
    "more sharply at the loudest accent the q and k weights grow, and the largest attention "
    "logit grows from about 1 at step 5 to past 100 by step 50 and stays there, the attention "
    "one-hot; the head's logits stay small (smoothing bounds them) and the loss finite.",
)
def h191_capoeira_attention_no_weight_decay(ctx: Context) -> None:
    gen = seeded(19101)
    model = RodaNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    top, peak, head = [], [], []

    def watch(step, out, x, y):
        lg = model.attn.last_logits
        top.append(float(lg.abs().amax(dim=(1, 2)).mean()))
        peak.append(float(torch.softmax(lg, -1).amax(-1).mean()))
        head.append(float(out.detach().abs().amax()))

    _train(
        ctx,
        model,
        opt,
        _roda(gen, 64),
        250,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        watch=watch,
    )
    ctx.check("largest attention logit grew 20x from step 5", _mean(top[-10:]) > 20 * top[5])
    ctx.check("largest attention logit above 100 over the last 100 steps", min(top[-100:]) > 100)
    ctx.check("attention one-hot (top weight > 0.99) at the end", _mean(peak[-10:]) > 0.99)
    ctx.check("head logits stay below 10 at the end", max(head[-10:]) < 10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- red sprites: a log-energy feature squared in float16 under autocast --------------------------


class EnergyFeature(nn.Module):
    """Appends the log mean energy of the hidden readings: log1p(mean(h * h)), computed in the
    dtype h comes in (float16 under autocast)."""

    def __init__(self):
        super().__init__()
        self.last_peak = 0.0

    def forward(self, h):
        self.last_peak = float(h.detach().float().abs().max())
        energy = (h * h).mean(-1, keepdim=True)
        return torch.cat([h, torch.log1p(energy)], -1)


class SpriteNet(nn.Module):
    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.energy = EnergyFeature()
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden + 1, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act1(self.energy(self.fc1(x)))
        return self.head(self.act2(self.fc2(h))).squeeze(-1)


def _photometer(gen, batch, seed, storm_from=None, storm_rows=6):
    """Twelve photometer channels in kilo-counts (about 2 to 8 on an ordinary night), and the
    standardised altitude of the luminous top; from ``storm_from`` a few rows per batch come from
    nights with sprites over a thunderstorm, a few hundred times brighter."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    step = 0
    while True:
        x = 2 + 6 * torch.rand(batch, 12, generator=gen)
        if storm_from is not None and step >= storm_from:
            x[:storm_rows] *= 150 + 150 * torch.rand(storm_rows, 1, generator=gen)
        lx = torch.log(x)
        y = torch.tanh((lx - lx.mean(-1, keepdim=True)) @ w / 2) + 0.3 * (lx.mean(-1) - 1.5)
        step += 1
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="red_sprite_photometer_fp16_gelu_mlp",
    optimizer="Adam",
    cause="amp_overflow",
    where=("energy",),
    diverges=80,
    onset=80,
    heldout=True,
    note="A GELU MLP estimating the altitude of a red sprite's luminous top from 12 photometer "
    "channels in kilo-counts, Adam at 1e-3, Huber loss, fp16 autocast with a "
    "torch.amp.GradScaler. An `energy` module appends log1p(mean(h * h)) of fc1's output, "
    "computed in float16 under autocast. On ordinary nights |h| is below 10; from step 80 the "
    "storm season's sprite nights (a few rows per batch, a few hundred times brighter) put |h| "
    "past 256, so h * h overflows 65504 to inf, fc2 turns inf into NaN, the loss is NaN from "
    "step 80 on, every step is skipped and the scaler halves its scale each step; the fp32 "
    "weights stay finite.",
)
def h191_red_sprite_fp16_energy_overflow(ctx: Context) -> None:
    gen = seeded(19102)
    model = SpriteNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    peak = []
    _train(
        ctx,
        model,
        opt,
        _photometer(gen, 64, seed=2, storm_from=80),
        130,
        F.huber_loss,
        scaler=scaler,
        watch=lambda s, o, x, y: peak.append(model.energy.last_peak),
        stop_on_nan=False,
    )
    onset = 80
    ctx.check("loss finite before step 80", _finite(ctx.losses[:onset]))
    ctx.check("loss fell before step 80", _fell(ctx.losses[:onset]))
    ctx.check("first non-finite loss at step 80", _first_bad(ctx.losses) == onset)
    ctx.check("fc1 output below 256 before step 80", max(peak[:onset]) < 256)
    ctx.check("fc1 output past 256 (its square past 65504) from step 80", min(peak[onset:]) > 256)
    ctx.check(
        "scaler scale fell 2**30-fold after step 80",
        ctx.scales[-1] < ctx.scales[onset - 1] / 2**30,
    )
    ctx.check(
        "weights still finite", all(bool(torch.isfinite(p).all()) for p in model.parameters())
    )


# -- woodcarving: the trunk's rate multiplier read through int() freezes the convs ---------------


class GougeNet(nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, 16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.gn2 = nn.GroupNorm(8, 32)
        self.head = nn.Linear(32 * 9, classes)

    def forward(self, x):
        h = F.relu(self.gn1(self.conv1(x)))
        h = F.relu(self.gn2(self.conv2(F.max_pool2d(h, 2))))
        return self.head(F.adaptive_avg_pool2d(h, 3).flatten(1))


def _gouge_marks(gen, batch, seed, classes=6, noise=1.0):
    """12x12 depth maps of a carved surface, one smooth cut profile per tool (V-tool, U-gouges
    of three sweeps, a veiner, a flat chisel), shifted by up to 2 pixels, noisy."""
    g = torch.Generator().manual_seed(seed)
    protos = F.avg_pool2d(torch.randn(classes, 1, 16, 16, generator=g), 3, 1, 1) * 3
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
        x = protos[y][:, :, dy : dy + 12, dx : dx + 12]
        yield x + noise * torch.randn(x.shape, generator=gen), y


@scenario(
    family="woodcarving_gouge_mark_gn_cnn",
    optimizer="SGD(momentum)",
    cause="update_ratio_out_of_range",
    where=("conv1", "gn1", "conv2", "gn2"),
    diverges=None,
    heldout=True,
    note="A 2-D CNN (two Conv2d + GroupNorm + ReLU stages, a Linear head) naming which of 6 "
    "carving tools cut a 12x12 depth map of a wooden surface, SGD with momentum 0.9 at 0.02, "
    "cross-entropy, two param groups: the trunk at base * trunk_lr_mult and the head at base. "
    "The config's trunk_lr_mult of 0.1 comes in as the string '0.1' and the loader passes it "
    "through int(float(...)), which is 0: conv1, gn1, conv2 and gn2 get a learning rate of "
    "exactly 0 and never move while the head learns on random conv features.",
)
def h191_woodcarving_trunk_mult_int(ctx: Context) -> None:
    gen = seeded(19103)
    model = GougeNet()
    cfg = {"lr": "0.02", "trunk_lr_mult": "0.1"}
    base = float(cfg["lr"])
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.SGD(
        [
            {"params": trunk, "lr": base * int(float(cfg["trunk_lr_mult"]))},
            {"params": model.head.parameters(), "lr": base},
        ],
        lr=base,
        momentum=0.9,
    )
    trunk0, head0 = _snapshot(trunk), _snapshot(list(model.head.parameters()))
    _train(
        ctx,
        model,
        opt,
        _gouge_marks(gen, 32, seed=3),
        150,
        F.cross_entropy,
        classifier=True,
    )
    ctx.check("trunk learning rate is exactly 0", opt.param_groups[0]["lr"] == 0.0)
    ctx.check("conv1, gn1, conv2, gn2 never moved", _moved(trunk, trunk0) == 0.0)
    ctx.check("head moved", _moved(list(model.head.parameters()), head0) > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- frazil ice: a bootstrapped season-total target with its discount typed 1.05 for 0.95 --------


def _river_days(gen, batch, seed):
    """Ten standardised river readings today (supercooling, wind, turbulence, ...), today's
    slush accretion, and tomorrow's readings (today's plus a small change): y packs
    (accretion, tomorrow's readings)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        r = 0.3 + 0.5 * torch.tanh(x @ w / 3) + 0.05 * torch.randn(batch, generator=gen)
        nxt = 0.9 * x + 0.3 * torch.randn(batch, 10, generator=gen)
        yield x, torch.cat([r[:, None], nxt], 1)


@scenario(
    family="frazil_ice_season_accretion_silu_mlp",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) estimating the frazil-ice slush still to accrete under a "
    "river over the season from 10 standardised readings, trained on a bootstrapped target: "
    "today's accretion + discount * the model's own (detached) estimate for tomorrow's "
    "readings, NAdam at 3e-4, MSE. The discount was typed 1.05 for 0.95, so the target has no "
    "fixed point: each estimate chases a target 5% above itself, the estimates drift upward "
    "and the loss, flat for the first hundred steps, climbs slowly and steadily for the rest "
    "of the run to about 20x; finite, no single event.",
)
def h191_frazil_discount_above_one(ctx: Context) -> None:
    gen = seeded(19104)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-4)
    discount = 1.05
    level = []

    def td_loss(out, y):
        with torch.no_grad():
            target = y[:, 0] + discount * model(y[:, 1:])
        level.append(float(out.detach().mean()))
        return F.mse_loss(out, target)

    _train(ctx, model, opt, _river_days(gen, 64, seed=4), 300, td_loss)
    ls = ctx.losses
    windows = [_mean(ls[i : i + 50]) for i in range(0, 300, 50)]
    ctx.check("loss at the end 10x its first steps", _mean(ls[-10:]) > 10 * _mean(ls[:10]))
    ctx.check(
        "each 50-step mean above the last from step 100",
        all(b > a for a, b in zip(windows[1:], windows[2:], strict=False)),
    )
    ctx.check(
        "no step's loss 10x the one before",
        all(b < 10 * a for a, b in zip(ls, ls[1:], strict=False)),
    )
    ctx.check("mean estimate drifted above 5", _mean(level[-10:]) > 5)
    ctx.check("loss finite throughout", _finite(ls))


# -- javelin: a MultiStepLR gamma typed 10 for 0.1 -------------------------------------------------


@scenario(
    family="javelin_release_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing a javelin throw's distance (standardised) from "
    "8 release readings (speed, angle, angle of attack, height, ...), plain SGD at 0.08, MSE, "
    "a MultiStepLR meant to divide the rate by 10 at step 80. Its gamma was typed 10 for 0.1: "
    "at step 80 the rate jumps to 0.8 while the loss's sharpness is about 8, so lr x sharpness "
    "goes from about 0.6 to about 6, past the stability limit of 2, and the loss blows up "
    "within ten steps of step 80.",
)
def h191_javelin_multistep_gamma_typo(ctx: Context) -> None:
    gen = seeded(19105)
    model = Stack(8, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80], gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(55), 256, 8, seed=5))
    sharp, lrs = {}, {}

    def before(step):
        if step in (70, 79):
            sharp[step] = _sharpness(model, F.mse_loss, *probe)
            lrs[step] = opt.param_groups[0]["lr"]

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=5),
        140,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("lr x sharpness below 1 before step 80", lrs[70] * sharp[70] < 1)
    ctx.check("rate x sharpness past 2 from step 80", 0.8 * sharp[79] > 2)
    ctx.check("rate is 0.8 after step 80", abs(opt.param_groups[0]["lr"] - 0.8) < 1e-9)
    ctx.check("loss fell before step 80", _fell(ls[:80], ratio=0.5))
    late = [v if math.isfinite(v) else 1e30 for v in ls[80:]]
    ctx.check("loss past 20x its pre-80 level after step 80", max(late) > 20 * _mean(ls[60:80]))


# -- trapeze: a recurrent init std copied from a 6-unit prototype -------------------------------


class ElmanCell(nn.Module):
    """h' = tanh(W_ih x + W_hh h), written by hand."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden)

    def forward(self, x, h):
        return torch.tanh(self.ih(x) + self.hh(h))


class SwingRNN(nn.Module):
    def __init__(self, d_in=3, hidden=48, init_std=0.4):
        super().__init__()
        self.cell = ElmanCell(d_in, hidden)
        nn.init.normal_(self.cell.hh.weight, std=init_std)
        self.head = nn.Linear(hidden, 1)
        self.hidden = hidden
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _swings(gen, batch, length=30):
    """A trapeze flyer's swing: rope angle, angular velocity and grip force per beat; the label
    is the (standardised) peak height of the release."""
    while True:
        amp = torch.rand(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        t = torch.arange(length) * 0.4
        angle = amp * torch.sin(t + phase)
        vel = amp * torch.cos(t + phase)
        grip = 0.5 + 0.1 * torch.randn(batch, length, generator=gen)
        x = torch.stack([angle, vel, grip], -1)
        yield x, 2 * amp.squeeze(1) - 1 + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="trapeze_swing_release_elman_rnn",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("cell", "cell.hh"),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (cell.ih and cell.hh Linears) reading 30 beats of a "
    "trapeze swing (rope angle, angular velocity, grip force) and regressing the peak height "
    "of the release, SGD with Nesterov momentum 0.9 at 1e-3, MSE, no clipping. The recurrent "
    "init std of 0.4 was copied from a 6-unit prototype (where it is about 1/sqrt(6)) into a "
    "48-unit cell: the recurrent matrix's spectral radius is about 2.8, the recurrence is "
    "chaotic and the gradient grows back through the 30 beats by three orders of magnitude: the "
    "first gradients are hundreds of times their later size and throw the weights out of the "
    "chaotic regime; the run then trains, finite.",
)
def h191_trapeze_recurrent_init_std(ctx: Context) -> None:
    gen = seeded(19106)
    model = SwingRNN()
    radius = float(torch.linalg.eigvals(model.cell.hh.weight.detach()).abs().max())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ratio = []

    def after(step):
        s = model.states
        ratio.append(float(s[0].grad.norm() / s[-1].grad.norm().clamp_min(1e-30)))

    _train(ctx, model, opt, _swings(gen, 32), 150, F.mse_loss, after=after)
    g = ctx.grad_norms
    ctx.check("recurrent spectral radius above 2", radius > 2)
    ctx.check("gradient at beat 0 is 1000x the one at beat 29 at step 0", ratio[0] > 1e3)
    ctx.check("first gradient norm 100x the later median", g[0] > 100 * _median(g[20:]))
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- wind chimes: a hand-written standard deviation that goes negative on a still window ---------


class Spread(nn.Module):
    """Per-channel spread over time: sqrt(E[h^2] - E[h]^2), by hand, with no clamp."""

    def forward(self, h):
        var = (h * h).mean(1) - h.mean(1) ** 2
        self.last_min = float(var.detach().min())
        return torch.sqrt(var)


class ChimeNet(nn.Module):
    def __init__(self, d_in=4, dim=32, classes=5):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.spread = Spread()
        self.fc = nn.Linear(2 * dim, dim)
        self.act = nn.GELU()
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        z = torch.cat([h.mean(1), self.spread(h)], -1)
        return self.head(self.act(self.fc(z)))


def _chime_windows(gen, batch, seed, length=16, still_at=None):
    """Sixteen readings of a wind-chime logger (strike rate, clapper swing, two accelerometer
    axes); the label is the Beaufort band (5 classes). From ``still_at`` on, one row of a batch
    is a still window: the logger repeats its last reading when the anemometer stalls."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(5, 4, generator=g)
    step = 0
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        scale = 0.3 + 0.3 * y.float()[:, None, None]
        x = protos[y][:, None, :] + scale * torch.randn(batch, length, 4, generator=gen)
        if still_at is not None and step == still_at:
            x[0] = torch.tensor([0.3, 0.7, 1.3, 0.1])
            y[0] = 0
        step += 1
        yield x, y


@scenario(
    family="wind_chime_beaufort_spread_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("spread",),
    diverges=70,
    onset=70,
    heldout=True,
    note="A wind-chime logger net naming the Beaufort band (5 classes) from 16 readings of "
    "strike rate, clapper swing and two accelerometer axes: a Linear embedding, a `spread` "
    "module computing each channel's standard deviation over time by hand as "
    "sqrt(E[h^2] - E[h]^2) with no clamp, a GELU layer and a head, Adagrad at 5e-2, "
    "cross-entropy. At step 70 the batch holds a still window (the anemometer stalled and the "
    "logger repeated its last reading 16 times): the variance is zero up to float32 rounding, "
    "negative for some channels, sqrt gives NaN and the loss is NaN at step 70.",
)
def h191_wind_chime_negative_variance(ctx: Context) -> None:
    gen = seeded(19107)
    model = ChimeNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    low = []
    _train(
        ctx,
        model,
        opt,
        _chime_windows(gen, 64, seed=7, still_at=70),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: low.append(model.spread.last_min),
    )
    ctx.check("loss finite before step 70", _finite(ctx.losses[:70]))
    ctx.check("loss fell before step 70", _fell(ctx.losses[:70]))
    ctx.check("smallest variance above 1e-3 before step 70", min(low[:70]) > 1e-3)
    ctx.check("a variance below 0 at step 70", len(low) > 70 and low[70] < 0)
    ctx.check("first non-finite loss at step 70", _first_bad(ctx.losses) == 70)


# -- camel racing: one track's heats timed in minutes -------------------------------------------


@scenario(
    family="camel_racing_lap_speed_relu_mlp",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) regressing a racing camel's lap speed, standardised as "
    "(m/s - 10) / 2, from 8 standardised readings (heart rate, track going, robot-jockey "
    "weight, ...), ASGD at 1e-2, MSE. At step 90 the batch holds 8 heats from one track whose "
    "lap times were exported in minutes instead of seconds: their speeds come out 60x, "
    "standardised targets near 300 instead of near 0, one batch with a loss and gradient "
    "thousands of times the usual; the weights are knocked off, the loss spikes and the run "
    "recovers; finite.",
)
def h191_camel_racing_minutes_batch(ctx: Context) -> None:
    gen = seeded(19108)
    model = Stack(8, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    onset = 90

    def alter(step, x, y):
        if step == onset:
            y = y.clone()
            mps = 10 + 2 * y[:8]
            y[:8] = (60 * mps - 10) / 2
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=8), 200, F.mse_loss, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 90 1000x the median before", ls[onset] > 1e3 * _median(ls[60:onset]))
    ctx.check("gradient at step 90 100x the median before", g[onset] > 100 * _median(g[60:onset]))
    ctx.check(
        "loss after 91 back within 3x of the level before",
        _mean(ls[-20:]) < 3 * _mean(ls[70:onset]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- snowshoe: RMSprop handed the SGD baseline's rate kills the ReLUs -----------------------------


@scenario(
    family="snowshoe_gait_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head with nn.ReLU modules) naming one of 6 snowshoe "
    "gait patterns from 16 IMU magnitudes (positive, about 3 each), cross-entropy. The optimizer was switched "
    "from the SGD baseline to RMSprop and kept the baseline's rate of 5e-2: RMSprop's first "
    "updates are about lr / sqrt(1 - alpha) = 10x lr per weight, fc1's biases and weights are "
    "thrown far negative on these all-positive inputs, over 90% of act1's units never fire "
    "again on any input, and the loss stalls above 1 (a working run at 1e-3 reaches about "
    "0.3); finite.",
)
def h191_snowshoe_rmsprop_sgd_rate(ctx: Context) -> None:
    gen = seeded(19109)
    model = Stack(16, hidden=64, out=6)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-2)
    probe = next(_kinds(torch.Generator().manual_seed(99), 512, 16, 6, seed=9, noise=1.0))[0] + 3

    def dead_now():
        with torch.no_grad():
            return dead_fraction(model.act1(model.fc1(probe)))

    dead0, dead = dead_now(), []

    def magnitudes(gen):
        for x, y in _kinds(gen, 64, 16, 6, seed=9, noise=1.0):
            yield x + 3, y

    _train(
        ctx,
        model,
        opt,
        magnitudes(gen),
        150,
        F.cross_entropy,
        classifier=True,
        after=lambda step: dead.append(dead_now()),
    )
    ctx.check("act1 under 20% dead before training", dead0 < 0.2)
    ctx.check("90% of act1's units dead from step 20", min(dead[20:]) > 0.9)
    ctx.check("loss over the last 20 steps above 1", _mean(ctx.losses[-20:]) > 1.0)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- cave diving: label smoothing typed with the wrong sign ---------------------------------------


def _dive_logs(gen, batch, seed, hazards=6):
    """Twelve standardised dive-log readings; multi-label hazards (silt-out, restriction,
    halocline, current, low visibility, line break) from a sparse linear rule."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, hazards, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        y = ((x @ w) / 2 + 0.5 * torch.randn(batch, hazards, generator=gen) > 0.8).float()
        yield x, y


@scenario(
    family="cave_dive_hazard_multilabel_mlp",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) tagging 6 hazards of a cave dive (silt-out, restriction, "
    "halocline, ...) from 12 standardised dive-log readings, Adamax at 5e-3, BCE with logits on "
    "smoothed targets t * (1 - eps) + eps / 2. The config's eps was typed -0.1 for 0.1: the "
    "targets become 1.05 and -0.05, outside [0, 1], BCE has no finite minimiser, and the "
    "head's logits run off step after step (the loss going below zero as they do); finite.",
)
def h191_cave_dive_negative_smoothing(ctx: Context) -> None:
    gen = seeded(19110)
    model = Stack(12, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    eps = -0.1
    size = []

    def loss_fn(out, y):
        return F.binary_cross_entropy_with_logits(out, y * (1 - eps) + eps / 2)

    _train(
        ctx,
        model,
        opt,
        _dive_logs(gen, 64, seed=10),
        250,
        loss_fn,
        watch=lambda s, o, x, y: size.append(float(o.detach().abs().mean())),
    )
    ctx.check("mean |logit| grew 10x from step 20", _mean(size[-10:]) > 10 * size[20])
    ctx.check(
        "still growing over the last 100 steps", _mean(size[-10:]) > 1.5 * _mean(size[-110:-100])
    )
    ctx.check("loss below 0 at the end", _mean(ctx.losses[-10:]) < 0)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="canyoning_rope_drag_gelu_mlp",
    optimizer="SGD(momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GELU MLP regressing the drag on a canyoning rope pulled through an anchor "
    "from 10 standardised readings (wet rope, angle, edge, rope length, ...), SGD with momentum "
    "0.9 at 0.05 and weight decay 5e-4, a StepLR dividing the rate by 3 every 60 steps, Huber "
    "loss, noisy labels. An ordinary run.",
)
def h191_canyoning_weight_decay_steplr(ctx: Context) -> None:
    gen = seeded(19111)
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=1 / 3)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=11, noise=0.2),
        200,
        F.huber_loss,
        sched=sched,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class BugleAttention(nn.Module):
    """Causal multi-head self-attention by hand."""

    def __init__(self, dim, heads):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        w = torch.softmax(logits.masked_fill(mask, float("-inf")), -1)
        return self.proj((w @ v).transpose(1, 2).reshape(b, t, d))


class BugleBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = BugleAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class BugleLM(nn.Module):
    def __init__(self, vocab=15, dim=32, heads=4, layers=2, context=24):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(context, dim) * 0.02)
        self.blocks = nn.ModuleList(BugleBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok.weight
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                nn.init.zeros_(mod.bias)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _bugle_calls(gen, batch, length=24, seed=12):
    """Bugle calls as tokens: five notes of the harmonic series times three lengths, drawn
    phrase by phrase from a fixed set of calls' phrases (a Markov chain over phrases)."""
    g = torch.Generator().manual_seed(seed)
    phrases = torch.randint(0, 15, (10, 4), generator=g)
    follow = torch.randint(0, 10, (10, 2), generator=g)
    while True:
        rows = []
        for _ in range(batch):
            p = int(torch.randint(0, 10, (1,), generator=gen))
            seq = []
            while len(seq) < length + 1:
                seq += phrases[p].tolist()
                p = int(follow[p, int(torch.randint(0, 2, (1,), generator=gen))])
            rows.append(seq[: length + 1])
        win = torch.tensor(rows)
        yield win[:, :-1], win[:, 1:]


@scenario(
    family="bugle_call_tied_attention_lm",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A two-block pre-LN decoder (hand-written causal attention, GELU MLPs, "
    "LayerNorm) with lm_head tied to the token embedding, predicting the next note of bugle "
    "calls (15 note-length tokens), RAdam at 1e-2, a 20-step linear warm-up then cosine decay "
    "(LambdaLR), clip_grad_norm_ at 1.0, cross-entropy with label smoothing 0.1. An ordinary "
    "run.",
)
def h191_bugle_call_tied_lm(ctx: Context) -> None:
    gen = seeded(19112)
    model = BugleLM()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    steps, warm = 150, 20

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _bugle_calls(gen, 16),
        steps,
        loss_fn,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("lm_head tied to the embedding", model.lm_head.weight is model.tok.weight)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="turf_cutting_moisture_fp16_silu_mlp",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A SiLU MLP regressing the moisture of hand-cut turf sods from 10 "
    "standardised readings (bog depth, drying days, wind, ...), Adadelta at 1.0, Huber loss, "
    "fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, "
    "clip_grad_norm_ at 1.0 on the unscaled gradients, ReduceLROnPlateau. An ordinary run.",
)
def h191_turf_cutting_fp16_accumulate(ctx: Context) -> None:
    gen = seeded(19113)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=13, noise=0.1),
        200,
        F.huber_loss,
        sched=sched,
        scaler=scaler,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("scaler scale stayed at or above 1024", min(ctx.scales) >= 1024)
