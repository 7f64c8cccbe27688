"""Held-out set 301 (``h301_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a sheepdog-trial outrun-time Huber regressor fed one
handler's trial in milliseconds (data outlier), a pole-vault pole-bend tanh regressor whose
warm-up peak was typed 100x too large (past 2/sharpness, blow-up), an ice-axe pick-seat
classifier trained on a multi-class hinge loss written without its clamp (head logits grow), a
bell-tuning lathe-chatter ReLU Conv1d classifier with an Adamax lr typo (channels die), an
avalanche debris-runout Gaussian-NLL net whose loss misses its replica averaging for one step
(gradient spike), a lighthouse fog-signal net with a hand-written window norm and no epsilon
(0/0, NaN), a didgeridoo back-pressure Elman RNN with an over-scaled recurrent init (gradients
grow through time), a lampwork bead two-group Adadelta regressor whose trunk lr took the eps
value (update ratio), a sourdough-starter rise regressor with a hand-written weight decay of
the wrong sign (slow climb), a canoe-slalom gate-time GELU regressor with a one-step loss in
squared centiseconds (Adam's second moment poisoned), and three controls (a snowshoe-track
tied denoising autoencoder with SGD Nesterov and cosine warm restarts, a bobsled push-start fp16
GELU classifier with a GradScaler, OneCycleLR, label smoothing and AdamW param groups, a hail-pad
dent Huber regressor with RMSprop, accumulation, clipping and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, digits, grad_norm, scenario, seeded


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """This file's training loop: ``before(step)``, ``alter(step, x, y)`` on the batch,
    ``weight(step)`` the factor on the backpropagated loss (1 unless a bug says otherwise),
    ``after(step)`` after the optimizer step. Stops after a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight(step) if weight is not None else 1.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = w * loss / accumulate
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


def _readings(gen, batch, d_in, seed, noise=0.05, heavy=False):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(1.3 * x @ v / math.sqrt(d_in))
        e = torch.randn(batch, generator=gen)
        if heavy:  # Student-t with 3 degrees of freedom
            e = e / torch.sqrt((torch.randn(batch, 3, generator=gen) ** 2).mean(1))
        yield x, y + noise * e


def _kinds(gen, batch, d_in, classes, seed, noise=0.4):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * torch.randn(batch, d_in, generator=gen) * math.sqrt(d_in) / 3
        yield x, y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activations as modules."""

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


# -- sheepdog trial: one handler's outrun times logged in milliseconds ---------------------------

ONSET_SHEEPDOG = 100


@scenario(
    family="sheepdog_outrun_lift_time_huber_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SHEEPDOG,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the outrun-and-lift time of a sheepdog-trial run (standardised, in seconds) from 10 standardised readings (course length, wind, flock size, dog age), SGD momentum 0.9 at 1e-2, Huber loss (delta 1), clipping at 1.0, 200 steps. One handler's score sheets were exported by a different timing app in milliseconds and that shard lands in the batch at step 100: 8 of its 64 rows have targets 1000x too large. The loss on that batch is hundreds of times the usual (Huber caps each row's gradient, clipping bounds the step) and the run recovers within a few steps.",
)
def h301_sheepdog_millisecond_shard(ctx: Context) -> None:
    gen = seeded(30101)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_SHEEPDOG:
            y = y.clone()
            y[:8] = y[:8] * 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=3011),
        200,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        alter=alter,
        clip=1.0,
    )
    ls = ctx.losses
    k = ONSET_SHEEPDOG
    ctx.check(
        "the loss on the bad shard is over 50x the usual", ls[k] > 50 * _median(ls[k - 20 : k])
    )
    ctx.check("the loss on the bad shard is over 100x the step before's", ls[k] > 100 * ls[k - 1])
    ctx.check(
        "the loss is back to normal within 20 steps",
        _mean(ls[k + 10 : k + 20]) < 2 * _mean(ls[k - 10 : k]),
    )
    ctx.check("the loss fell overall", _fell(ls))


# -- pole vault: warm-up peak typed 100x too large, past the 2/sharpness limit --------------------


def _sharpness(model, loss_fn, x, y, iters=12):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters()]
    loss = loss_fn(model(x), y)
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
    family="pole_vault_pole_bend_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=44,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a vaulting pole's peak bend (chord shortening, standardised) from 8 standardised readings (run-up speed, grip height, pole stiffness, takeoff angle), plain SGD, MSE, a linear warm-up over 400 steps to cfg['peak_lr'] (a long run's schedule), 160 steps. The peak was typed 3.0 for 0.03, so the warm-up climbs 100x too fast: at about step 44 (lr near 0.33) lr x (top Hessian eigenvalue, about 6) crosses 2; the run hovers at the edge of stability for a while as the sharpness gives way, the lr keeps rising, the iterates oscillate along the sharpest direction with growing amplitude and near step 100 the loss blows up.",
)
def h301_pole_vault_warmup_peak(ctx: Context) -> None:
    gen = seeded(30102)
    model = Stack(8, 32, act=nn.Tanh)
    peak, warm = 3.0, 400
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    px, py = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=3012))
    products: list[tuple[int, float]] = []

    def before(step):
        if step % 4 == 0:
            lr = opt.param_groups[0]["lr"]
            products.append((step, lr * _sharpness(model, F.mse_loss, px, py)))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=3012),
        160,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    low = min(ls[:end])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    crossed = next((s for s, p in products if p > 2.0), None)
    ctx.check("lr x sharpness was under 2 at the start", products[0][1] < 2.0)
    ctx.check("lr x sharpness crossed 2", crossed is not None)
    ctx.check(
        "the loss blew up (over 100x its low, or non-finite) after the crossing",
        blow is not None and crossed is not None and blow > crossed,
    )
    ctx.check("the loss fell before the crossing", crossed is not None and low < 0.5 * ls[0])


# -- ice axe: a multi-class hinge loss written without its clamp ---------------------------------


def _hinge_no_clamp(s, y):
    """Crammer-Singer hinge as written: 1 + max_{j != y} s_j - s_y, the max(0, .) left out."""
    true = s.gather(1, y[:, None]).squeeze(1)
    other = s.masked_fill(F.one_hot(y, s.shape[1]).bool(), float("-inf")).amax(1)
    return (1.0 + other - true).mean()


@scenario(
    family="ice_axe_pick_seat_hinge_gelu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying how an ice-climbing axe's pick seated (clean, shattered, skated, hooked, too shallow; 5 kinds) from 12 standardised readings (swing speed, ice temperature, pick angle, impact sound), Adam at 3e-3, 240 steps, a hand-written multi-class hinge loss `1 + max_{j!=y} s_j - s_y` with its `clamp(min=0)` left out. Once a row is classified with margin the loss still rewards widening it, linearly and without limit: the head's logits grow over 20x and keep growing to the end, the loss goes negative and keeps falling.",
)
def h301_ice_axe_unclamped_hinge(ctx: Context) -> None:
    gen = seeded(30103)
    model = Stack(12, 64, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    probe = next(_kinds(torch.Generator().manual_seed(11), 256, 12, 5, seed=3013))[0]
    scale: list[float] = []

    def after(step):
        with torch.no_grad():
            scale.append(float(model(probe).abs().mean()))

    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=3013),
        240,
        _hinge_no_clamp,
        classifier=True,
        after=after,
    )
    ls = ctx.losses
    ctx.check("the head's mean |logit| grew over 20x", scale[-1] > 20 * scale[0])
    ctx.check(
        "the head's logits were still growing in the last quarter",
        scale[-1] > 1.2 * scale[len(scale) * 3 // 4],
    )
    ctx.check("the loss went negative", ls[-1] < 0.0)
    ctx.check("finite throughout", _finite(ls))


# -- bell tuning lathe: Adamax lr typed 0.3 for 3e-3, the conv channels die ----------------------


class ChatterNet(nn.Module):
    """Conv1d over 32 samples of a tuning lathe's tool vibration (2 channels: radial, tangential)."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def features(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x))))

    def forward(self, x):
        return self.head(self.features(x).mean(-1))


def _chatter(gen, batch, seed, classes=4):
    g = torch.Generator().manual_seed(seed)
    freqs = 0.5 + 2.5 * torch.rand(classes, 2, generator=g)
    t = torch.arange(32).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 2, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t / 3 + phase)
        yield x + 0.4 * torch.randn(batch, 2, 32, generator=gen), y


def _dead_channels(a):
    return float((a <= 0).all(-1).all(0).float().mean())


@scenario(
    family="bell_tuning_lathe_chatter_relu_conv1d_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("conv2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU Conv1d net (conv1, act1, conv2, act2, mean-pool, head) classifying the chatter mode of a bell-founder's tuning lathe (4 kinds) from 32 samples of radial and tangential tool vibration, Adamax, cross-entropy, 200 steps. cfg['lr'] was typed 0.3 for 3e-3: Adamax's normalised steps of ~0.3 per weight in the first steps push most of conv2's channels negative at every position on every input, after which their gradient is exactly 0 and they never come back; the net trains on (poorly) with what is left.",
)
def h301_bell_lathe_adamax_lr(ctx: Context) -> None:
    gen = seeded(30104)
    model = ChatterNet()
    opt = torch.optim.Adamax(model.parameters(), lr=0.3)
    probe = next(_chatter(torch.Generator().manual_seed(13), 256, seed=3014))[0]
    dead: list[float] = []

    def measure():
        with torch.no_grad():
            dead.append(_dead_channels(model.features(probe)))

    measure()
    _loop(
        ctx,
        model,
        opt,
        _chatter(gen, 64, seed=3014),
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda s: measure(),
    )
    ctx.check("under 10% of conv2's channels dead at the start", dead[0] < 0.1)
    ctx.check("over half of conv2's channels dead at the end", dead[-1] > 0.5)
    ctx.check("over half dead at every step from 50 on", min(dead[50:]) > 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- avalanche runout: the replica averaging skipped for one step after an elastic restart -------

ONSET_AVALANCHE, WORLD = 80, 64


class RunoutNet(nn.Module):
    """SiLU trunk with a mean head and a softplus scale head (Gaussian NLL)."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mu = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mu(h), F.softplus(self.var(h)) + 1e-3], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


@scenario(
    family="avalanche_debris_runout_gaussian_nll_net",
    optimizer="RAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_AVALANCHE,
    note="A SiLU net (fc1, act1, fc2, act2, heads mu and var) giving a Gaussian over an avalanche's debris runout distance (standardised) from 10 standardised readings (slope angle, snow depth, release area, temperature), RAdam at 3e-3, Gaussian NLL, clipping at 1.0, 180 steps. The job scales its per-replica loss by world_size and relies on the averaging hook to divide the summed gradients back; after an elastic restart at step 80 the hook is re-registered one step late, so that step backpropagates 64x the usual gradient on an ordinary batch. Clipping bounds the step and the run trains on.",
)
def h301_avalanche_missing_average(ctx: Context) -> None:
    gen = seeded(30105)
    model = RunoutNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=3015, noise=0.2),
        180,
        _gauss_nll,
        weight=lambda s: float(WORLD) if s == ONSET_AVALANCHE else 1.0,
        clip=1.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    k = ONSET_AVALANCHE
    base = _median(g[k - 20 : k])
    ctx.check("the gradient at step 80 is over 30x the usual", g[k] > 30 * base)
    ctx.check("the gradient is back to normal after it", _median(g[k + 1 : k + 21]) < 3 * base)
    ctx.check(
        "the loss on step 80's batch is ordinary",
        abs(ls[k] - _mean(ls[k - 10 : k])) < 1.0 + 0.5 * abs(_mean(ls[k - 10 : k])),
    )
    ctx.check("the loss fell", _mean(ls[-10:]) < _mean(ls[:10]) - 0.3 and _finite(ls))


# -- lighthouse fog signal: a hand-written window norm without epsilon, a stuck barometer --------

ONSET_FOG = 90


class WindowNorm(nn.Module):
    """Standardises each window of readings, written by hand: no epsilon."""

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - mean * mean
        return (x - mean) / torch.sqrt(var)


class FogNet(nn.Module):
    def __init__(self, length=16, hidden=48):
        super().__init__()
        self.norm = WindowNorm()
        self.fc1 = nn.Linear(length + 1, hidden)
        self.act1 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = torch.cat([self.norm(x), x.mean(-1, keepdim=True)], -1)
        return self.head(self.act1(self.fc1(z))).squeeze(-1)


def _pressure_windows(gen, batch, seed, length=16):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(length, generator=g)
    while True:
        level = 0.5 * torch.randn(batch, 1, generator=gen)
        trend = torch.randn(batch, 1, generator=gen)
        x = (
            level
            + trend * torch.linspace(-1, 1, length)
            + 0.3 * torch.randn(batch, length, generator=gen)
        )
        xs = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)
        y = (torch.sigmoid(2 * xs @ w / math.sqrt(length)) > 0.5).float()
        yield x, y


@scenario(
    family="lighthouse_fog_signal_window_norm_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=ONSET_FOG,
    heldout=True,
    onset=ONSET_FOG,
    note="A lighthouse keeper's fog-signal net: 16 barometer readings per window, standardised per window by a hand-written WindowNorm ((x - mean) / sqrt(E[x^2] - mean^2), no epsilon), then fc1, act1 (GELU), head, a BCE-with-logits on whether the fog signal was sounded, NAdam at 3e-3, 160 steps. At step 90 one station's barometer needle sticks and its window reads the same value 16 times: the variance is exactly 0, the norm computes 0/0 and its output is NaN, the loss is NaN at step 90.",
)
def h301_lighthouse_stuck_barometer(ctx: Context) -> None:
    gen = seeded(30106)
    model = FogNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    seen: dict[str, int] = {}

    def hook(mod, inp, out):
        if torch.isfinite(inp[0]).all() and not torch.isfinite(out).all():
            seen.setdefault("norm", len(ctx.losses))

    model.norm.register_forward_hook(hook)

    def alter(step, x, y):
        if step == ONSET_FOG:
            x = x.clone()
            x[3] = 0.75
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _pressure_windows(gen, 64, seed=3016),
        160,
        F.binary_cross_entropy_with_logits,
        alter=alter,
    )
    ls = ctx.losses
    ctx.check("finite before step 90", _finite(ls[:ONSET_FOG]))
    ctx.check(
        "the loss is NaN at step 90", _first_bad(ls) == ONSET_FOG and math.isnan(ls[ONSET_FOG])
    )
    ctx.check("the norm turned finite input into NaN at step 90", seen.get("norm") == ONSET_FOG)
    ctx.check("the loss fell before", _mean(ls[ONSET_FOG - 10 : ONSET_FOG]) < 0.9 * _mean(ls[:10]))


# -- didgeridoo: the Elman cell's recurrent init drawn at std 1 for 1/sqrt(hidden) ---------------


class ElmanCell(nn.Module):
    def __init__(self, d_in, hidden, rec_std):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            self.rec.weight.normal_(0.0, rec_std)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class BackPressureRNN(nn.Module):
    def __init__(self, d_in=3, hidden=32, rec_std=1.0):
        super().__init__()
        self.hidden = hidden
        self.cell = ElmanCell(d_in, hidden, rec_std)
        self.head = nn.Linear(hidden, 1)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _breath(gen, batch, seed, length=30):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        decay = 0.85 ** torch.arange(length - 1, -1, -1).float()
        y = torch.tanh((x @ w * decay).sum(1) / 2)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="didgeridoo_back_pressure_elman_rnn",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("cell.rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (cell.inp, cell.rec, head) reading 30 steps of a didgeridoo player's lip, cheek and flow readings and regressing the mouthpiece back-pressure at the end, Adagrad at 2e-2, MSE, 150 steps. The recurrent init was written `normal_(0, 1.0)` where `normal_(0, 1 / sqrt(hidden))` was meant: the recurrent matrix's spectral radius is about sqrt(32) ~ 5.7, the dynamics are chaotic and the gradient grows backwards through time: the gradient at the first state is over 20x the one at the last, and the raw gradient norm is over 10x that of the correctly initialised twin.",
)
def h301_didgeridoo_rec_init(ctx: Context) -> None:
    gen = seeded(30107)
    model = BackPressureRNN(rec_std=1.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    ratios: list[float] = []

    def after(step):
        if step % 10 == 0:
            s = model.states
            if s[0].grad is not None and s[-1].grad is not None:
                ratios.append(float(s[0].grad.norm() / (s[-1].grad.norm() + 1e-12)))

    _loop(ctx, model, opt, _breath(gen, 32, seed=3017), 150, F.mse_loss, after=after)
    twin = BackPressureRNN(rec_std=1.0 / math.sqrt(32))
    x, y = next(_breath(torch.Generator().manual_seed(3), 32, seed=3017))
    F.mse_loss(twin(x), y).backward()
    g_twin = grad_norm(twin)
    ctx.check("the first state's gradient is over 20x the last's (median)", _median(ratios) > 20)
    ctx.check(
        "the raw gradient is over 10x the twin's at the start",
        _median(ctx.grad_norms[:10]) > 10 * g_twin,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- lampwork bead: the trunk group's lr took the eps value --------------------------------------


@scenario(
    family="lampwork_bead_annealing_two_group_regressor",
    optimizer="Adadelta",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the residual stress of a lampworked glass bead after annealing from 10 standardised readings (mandrel temperature, flame time, kiln ramp, bead mass), Adadelta with two param groups, MSE, 200 steps. The group dicts were built from a config table and the trunk's 'lr' was read from the 'eps' column: 1e-6 where 1.0 was meant, so fc1 and fc2 move by under 1e-6 of their norm per step (under 1e-4 over the whole run) while the head trains at 1.0. The loss falls only as far as the head alone can take it.",
)
def h301_lampwork_trunk_lr_eps(ctx: Context) -> None:
    gen = seeded(30108)
    model = Stack(10, 64)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adadelta(
        [{"params": trunk, "lr": 1e-6}, {"params": model.head.parameters(), "lr": 1.0}],
        eps=1e-6,
    )
    w0 = {n: _flat(getattr(model, n)) for n in ("fc1", "fc2", "head")}
    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=3018), 200, F.mse_loss)
    moved = {n: float((_flat(getattr(model, n)) - w0[n]).norm() / w0[n].norm()) for n in w0}
    ctx.check("fc1 moved under 1e-4 of its norm", moved["fc1"] < 1e-4)
    ctx.check("fc2 moved under 1e-4 of its norm", moved["fc2"] < 1e-4)
    ctx.check("the head moved over 1e-2 of its norm", moved["head"] > 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sourdough starter: a hand-written weight decay with its sign flipped -----------------------

LR_SOUR, WD_SOUR, STEPS_SOUR = 5e-3, 0.8, 300


@scenario(
    family="sourdough_starter_peak_rise_asgd_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how high a sourdough starter rises at its peak (standardised) from 10 standardised readings (hydration, flour ash, room temperature, feed ratio), ASGD at 5e-3, MSE, 300 steps, with weight decay written by hand after optimizer.step() as `torch._foreach_add_(params, params, alpha=lr * wd)` where `alpha=-lr * wd` was meant (wd 0.8). Every weight is inflated by 0.4% a step, the gradient only pulls back along what the data sees: the loss falls for a few dozen steps, then climbs slowly and steadily to several times its low, finite, nothing else wrong.",
)
def h301_sourdough_decay_sign(ctx: Context) -> None:
    gen = seeded(30109)
    model = Stack(10, 64, act=nn.SiLU)
    lr, wd = LR_SOUR, WD_SOUR
    opt = torch.optim.ASGD(model.parameters(), lr=lr)
    params = list(model.parameters())

    def after(step):
        with torch.no_grad():
            torch._foreach_add_(params, params, alpha=lr * wd)

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=3019), STEPS_SOUR, F.mse_loss, after=after)
    ls = ctx.losses
    best = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * best)
    ctx.check(
        "the climb is slow: no 10-step mean over 2x the one before",
        all(
            _mean(ls[i + 10 : i + 20]) < 2 * _mean(ls[i : i + 10])
            for i in range(0, len(ls) - 19, 10)
        ),
    )
    ctx.check("finite throughout", _finite(ls))


# -- canoe slalom: one step's loss in squared centiseconds, summed -------------------------------

ONSET_CANOE = 60


@scenario(
    family="canoe_slalom_upstream_gate_gelu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CANOE,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the time a canoe-slalom paddler loses at an upstream gate (standardised) from 10 standardised readings (current speed, gate offset, approach angle, stroke rate), AdamW at 3e-3 (betas 0.9, 0.999), MSE, 240 steps. At step 60 a results-import check ran the loss through the race-office helper, which converts to centiseconds before squaring and sums over the batch: that step's backpropagated loss is 1e4 x 64 = 640,000x the usual on an ordinary batch. The one giant gradient fills Adam's second moment, which decays with beta2 = 0.999 over about a thousand steps; the normalised step taken on it and the momentum after it knock the loss up to about 4x, and the updates afterwards are over 10x smaller, so the loss stays stuck there instead of training back down.",
)
def h301_canoe_centisecond_loss(ctx: Context) -> None:
    gen = seeded(30110)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    last = [_flat(model)]
    upd: list[float] = []

    def after(step):
        w = _flat(model)
        upd.append(float((w - last[0]).norm()))
        last[0] = w

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=3020, noise=0.1),
        240,
        F.mse_loss,
        weight=lambda s: 1e4 * 64 if s == ONSET_CANOE else 1.0,
        after=after,
    )
    g, ls = ctx.grad_norms, ctx.losses
    k = ONSET_CANOE
    ctx.check(
        "the gradient at step 60 is over 1000x the usual", g[k] > 1000 * _median(g[k - 20 : k])
    )
    ctx.check(
        "the updates after it are over 10x smaller than before",
        _median(upd[k + 20 : k + 80]) < 0.1 * _median(upd[k - 20 : k]),
    )
    ctx.check(
        "the loss stalls: it falls under 15% in the 150 steps after",
        _mean(ls[-10:]) > 0.85 * _mean(ls[k + 5 : k + 15]),
    )
    ctx.check("the loss was falling before", _mean(ls[k - 10 : k]) < 0.8 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class TiedDenoiser(nn.Module):
    """64 -> 32 -> 8 bottleneck, decoder tied to the encoder's weights."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Linear(64, 32)
        self.enc2 = nn.Linear(32, 8)
        self.dec2_bias = nn.Parameter(torch.zeros(32))
        self.dec1_bias = nn.Parameter(torch.zeros(64))

    def forward(self, x):
        z = torch.tanh(self.enc2(torch.tanh(self.enc1(x))))
        h = torch.tanh(F.linear(z, self.enc2.weight.T, self.dec2_bias))
        return F.linear(h, self.enc1.weight.T, self.dec1_bias)


def _tracks(gen, batch):
    """Snowshoe track impressions as 8x8 depth maps (the bundled digits), a noisy copy in."""
    x, _ = digits()
    while True:
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        clean = x[idx]
        yield clean + 0.2 * torch.randn(clean.shape, generator=gen), clean


@scenario(
    family="snowshoe_track_tied_denoising_autoencoder",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight denoising autoencoder (enc1 64->32, enc2 32->8 bottleneck, decoder uses the transposed encoder weights) cleaning 8x8 depth maps of snowshoe tracks in snow (the bundled digits as maps) from noisy copies, SGD Nesterov momentum 0.9 at 0.05, CosineAnnealingWarmRestarts (T_0 60, T_mult 2), clipping at 1.0, MSE, 260 steps.",
)
def h301_snowshoe_denoiser_control(ctx: Context) -> None:
    gen = seeded(30111)
    model = TiedDenoiser()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=60, T_mult=2)
    _loop(ctx, model, opt, _tracks(gen, 64), 260, F.mse_loss, sched=sched, clip=1.0)
    ls = ctx.losses
    ctx.check("the loss fell (median)", _median(ls[-30:]) < 0.8 * _median(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


@scenario(
    family="bobsled_push_start_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying a bobsled crew's push-start technique (6 kinds) from 16 standardised readings (split times, spike force, load timing), fp16 autocast with a torch.amp.GradScaler, AdamW param groups (no decay on biases), OneCycleLR to 5e-3, label smoothing 0.1, clipping at 1.0, 200 steps.",
)
def h301_bobsled_fp16_control(ctx: Context) -> None:
    gen = seeded(30112)
    model = Stack(16, 64, out=6, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=5e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=3022),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("the loss fell", _fell(ls, ratio=0.6))
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the scale never fell below 1", min(ctx.scales) >= 1.0)


@scenario(
    family="hail_pad_dent_depth_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tanh MLP (fc1, act1, fc2, act2, head) regressing the dent depth a hailstone leaves in a foam hail pad (standardised) from 10 standardised readings (radar reflectivity, updraft, freezing level, fall speed), heavy-tailed Student-t targets, Huber loss, RMSprop at 1e-3, accumulation over 2 micro-batches, clipping at 1.0, ReduceLROnPlateau, 200 steps.",
)
def h301_hail_pad_control(ctx: Context) -> None:
    gen = seeded(30113)
    model = Stack(10, 64, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=3023, noise=0.2, heavy=True),
        200,
        F.huber_loss,
        sched=sched,
        clip=1.0,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("the loss fell (median)", _median(ls[-30:]) < 0.8 * _median(ls[:10]))
    ctx.check("finite throughout", _finite(ls))
