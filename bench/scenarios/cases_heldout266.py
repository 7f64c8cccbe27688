"""Held-out set 266 (``h266_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a klootschieten throw-set net whose spread feature,
switched on after warm-up, takes sqrt of 0 (NaN made in the backward pass), a saltpetre-works
nitre-yield regressor fed a shard with 9999 sentinels, a tarogato reed-register classifier whose
distillation logit_scale 1e-3 divides its logits, a fairy-chimney survey affine-coupling flow
whose third coupling's group lr was typed 3e-9, a rinkball pass-speed tanh regressor at a plain
SGD lr typed 0.6 for 0.06, a gravity-wave cloud-band tanh Elman net whose recurrent init gain was
typed 3 for 1, a bandurria tremolo-rate regressor whose loss weight is read in percent for one
step, a khomus overtone ReLU regressor whose OneCycleLR max_lr was typed 0.5 for 5e-3, a palant
strike-ranking scorer whose margin hinge lost its clamp, an inselberg exfoliation-rate regressor
whose hand-written decoupled weight decay has its sign flipped, and three controls (a
sprite-lightning altitude Gaussian-NLL net with clipping, a santur hammer-stroke Conv1d net under
OneCycleLR, a tesserae tied autoencoder under fp16 autocast with a GradScaler).

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
    divisor=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``divisor(step)`` is what
    each micro-batch loss is divided by (default ``accumulate``), ``after(step)`` runs after the
    optimizer step; ``amp``: fp16 autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        div = divisor(step) if divisor is not None else accumulate
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
            total = loss / div
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


class TraceNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> mean pool -> head over a multi-channel trace."""

    def __init__(self, channels, classes, width=16, act=nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = act()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = act()
        self.head = nn.Linear(width, classes)

    def features(self, x):
        return self.act2(self.conv2(self.act1(self.conv1(x))))

    def forward(self, x):
        return self.head(self.features(x).mean(-1))


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- klootschieten: pairwise spread of the throws enabled after warm-up, sqrt at 0 in backward ----

ONSET_KLOOT = 60


class ThrowSpread(nn.Module):
    """Mean pairwise Euclidean distance between the throws' embeddings, by hand (sqrt of the
    summed squares, the diagonal masked out with torch.where); zeros while disabled."""

    def __init__(self):
        super().__init__()
        self.enabled = False

    def forward(self, h):
        if not self.enabled:
            return h.new_zeros(h.shape[0], 1)
        diff = h[:, :, None, :] - h[:, None, :, :]
        dist = torch.sqrt((diff**2).sum(-1))
        n = h.shape[1]
        off = ~torch.eye(n, dtype=torch.bool)
        dist = torch.where(off, dist, torch.zeros_like(dist))
        return dist.sum((1, 2))[:, None] / (n * (n - 1))


class ThrowSetNet(nn.Module):
    """embed -> act -> (mean pool, spread) -> head over a set of throws."""

    def __init__(self, d_in=4, dim=24):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.act = nn.GELU()
        self.spread = ThrowSpread()
        self.head = nn.Linear(dim + 1, 1)

    def forward(self, x):
        h = self.act(self.embed(x))
        return self.head(torch.cat([h.mean(1), self.spread(h)], -1)).squeeze(-1)


def _throws(gen, batch, n=6, d_in=4):
    """A team's six throws down a country road (distance, lateral drift, wind, ball mass,
    standardised); the target is the team's standardised leg score."""
    while True:
        x = torch.randn(batch, n, d_in, generator=gen)
        y = x[:, :, 0].mean(1) - 0.5 * x[:, :, 1].abs().mean(1) + 0.2 * x[:, :, 2].mean(1)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="klootschieten_throw_set_spread_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("spread",),
    diverges=ONSET_KLOOT + 1,
    heldout=True,
    onset=ONSET_KLOOT,
    note="A hand-written set net (embed, act, spread, head) scoring a klootschieten (Frisian road-bowling) team's leg from its six throws, Adam at 3e-3, MSE. The config switches on the 'spread' feature after a 60-step warm-up: the mean pairwise distance between the throws' embeddings, written by hand as sqrt of the summed squared differences with the diagonal masked out by torch.where. The forward pass stays finite (the diagonal is sqrt(0) = 0 and masked), but the backward pass of sqrt at 0 is inf and 0 * inf = NaN: the gradient at step 60 is NaN, Adam writes NaN into every weight, and the loss is NaN from step 61.",
)
def h266_klootschieten_spread_sqrt_zero(ctx: Context) -> None:
    gen = seeded(26601)
    model = ThrowSetNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def before(step):
        model.spread.enabled = step >= ONSET_KLOOT

    _train(ctx, model, opt, _throws(gen, 64), 140, F.mse_loss, before=before)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite before the onset", _finite(ls[: ONSET_KLOOT + 1]))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_KLOOT], ratio=0.5))
    ctx.check("the gradient at the onset is non-finite", not math.isfinite(gn[ONSET_KLOOT]))
    ctx.check("the first non-finite loss is the step after", _first_bad(ls) == ONSET_KLOOT + 1)
    ctx.check(
        "the spread's weights upstream are NaN",
        bool(torch.isnan(model.embed.weight).any()),
    )


# -- saltpetre works: a shard whose missing readings were written as 9999 -------------------------

ONSET_SALT = 90


@scenario(
    family="saltpetre_nitre_bed_yield_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SALT,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the nitre yield of a saltpetre works' leaching bed from 10 standardised readings (bed age, urine dosing, lime content, humidity, turning count, ...), SGD momentum 0.9 at 1e-2, MSE, clipping at 5. The batch at step 90 comes from a shard whose logger wrote 9999 for missing readings and the loader standardised nothing of it: 16 of its 64 rows carry 9999 in three columns. The loss at that step is thousands of times its level; clipped, the step is bounded and the run recovers. Finite, no blow-up.",
)
def h266_saltpetre_sentinel_shard(ctx: Context) -> None:
    gen = seeded(26602)
    model = Stack(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_SALT:
            x = x.clone()
            x[:16, 2:5] = 9999.0
        seen[step] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 41), 200, F.mse_loss, clip=5.0, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_SALT - 20 : ONSET_SALT])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_SALT], ratio=0.6))
    ctx.check("the onset batch carries 9999", seen[ONSET_SALT] > 9000)
    ctx.check(
        "the batches around it are ordinary", max(seen[ONSET_SALT - 1], seen[ONSET_SALT + 1]) < 8
    )
    ctx.check("the loss at the onset is over 100x the median before", ls[ONSET_SALT] > 100 * pre)
    ctx.check(
        "the gradient norm at the onset is over 100x the median before",
        gn[ONSET_SALT] > 100 * _median(gn[ONSET_SALT - 20 : ONSET_SALT]),
    )
    ctx.check(
        "the loss is back under 3x its pre-onset level 50 steps later",
        _mean(ls[ONSET_SALT + 40 : ONSET_SALT + 50]) < 3 * pre,
    )


# -- tarogato: a distillation 'logit_scale' of 1e-3 used as a divisor ----------------------------


class RegisterNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head; the head's logits divided by ``temperature``."""

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
    family="tarogato_reed_register_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of 6 registers a tarogato player's reed is sounding in from 20 spectral readings, RAdam at 1e-3, cross-entropy. The config's logit_scale of 1e-3 (meant for the distillation soft targets, to be multiplied) is passed as the classifier's temperature and divides its logits: the logits are 1000x, the float32 softmax gives most training rows' target exactly 1.0 (and the others exactly 0) within a few dozen steps; the run with the intended temperature 1 saturates none. Finite.",
)
def h266_tarogato_temperature_divides(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(26603)
        model = RegisterNet(20, 6, temperature)
        opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
        probe = next(_kinds(torch.Generator().manual_seed(5), 512, 20, 6, 43))
        _train(c, model, opt, _kinds(gen, 64, 20, 6, 43), 150, F.cross_entropy, classifier=True)
        with torch.no_grad():
            return collapsed_fraction(model(probe[0]), probe[1])

    twin = _Quiet()
    twin_frac = run(twin, 1.0)
    frac = run(ctx, 1e-3)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("over half the probe rows give the target exactly 1.0", frac > 0.5)
    ctx.check("the intended temperature saturates under 5%", twin_frac < 0.05)


# -- fairy chimneys: a coupling flow whose third layer's group lr was typed 3e-9 -----------------


class Coupling(nn.Module):
    """Affine coupling: half the coordinates scale and shift by a net of the other half."""

    def __init__(self, dim, flip, hidden=32):
        super().__init__()
        self.flip = flip
        self.half = dim // 2
        self.net = nn.Sequential(
            nn.Linear(self.half, hidden), nn.Tanh(), nn.Linear(hidden, 2 * (dim - self.half))
        )

    def forward(self, x):
        a, b = x[:, : self.half], x[:, self.half :]
        if self.flip:
            b, a = x[:, : self.half], x[:, self.half :]
        s, t = self.net(a).chunk(2, -1)
        s = torch.tanh(s)
        b = b * torch.exp(s) + t
        out = torch.cat([b, a], -1) if self.flip else torch.cat([a, b], -1)
        return out, s.sum(-1)


class ChimneyFlow(nn.Module):
    """Four affine couplings c1..c4 to a standard normal; forward gives the per-sample NLL."""

    def __init__(self, dim=4):
        super().__init__()
        self.c1 = Coupling(dim, False)
        self.c2 = Coupling(dim, True)
        self.c3 = Coupling(dim, False)
        self.c4 = Coupling(dim, True)

    def forward(self, x):
        logdet = x.new_zeros(x.shape[0])
        for layer in (self.c1, self.c2, self.c3, self.c4):
            x, ld = layer(x)
            logdet = logdet + ld
        logp = -0.5 * (x**2).sum(-1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
        return -(logp + logdet)


def _chimneys(gen, batch):
    """Fairy-chimney (hoodoo) survey rows: shaft height, cap width, shaft girth, erosion rate,
    standardised; curved, skewed, dependent."""
    while True:
        z = torch.randn(batch, 4, generator=gen)
        h = z[:, 0]
        cap = 0.8 * torch.tanh(h) + 0.3 * z[:, 1]
        girth = 0.5 * h**2 - 0.5 + 0.3 * z[:, 2]
        ero = 0.6 * torch.sin(2 * cap) + 0.25 * z[:, 3]
        yield torch.stack([h, cap, girth, ero], -1), torch.zeros(batch)


@scenario(
    family="fairy_chimney_hoodoo_survey_coupling_flow",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("c3",),
    diverges=None,
    heldout=True,
    note="A hand-written affine-coupling normalising flow (c1..c4, each a tanh net giving scale and shift, log-determinant the sum of the scales) fitting the density of fairy-chimney (hoodoo) survey rows (shaft height, cap width, girth, erosion rate), Adam with one param group per coupling, negative log-likelihood. The per-layer lr list was typed [3e-3, 3e-3, 3e-9, 3e-3]: c3's updates are about a millionth of its weights' size, it stays at its initialisation while the other three couplings move and the NLL falls. Finite.",
)
def h266_fairy_chimney_flow_group_lr_typo(ctx: Context) -> None:
    gen = seeded(26604)
    model = ChimneyFlow()
    lrs = [3e-3, 3e-3, 3e-9, 3e-3]
    layers = [model.c1, model.c2, model.c3, model.c4]
    opt = torch.optim.Adam(
        [{"params": m.parameters(), "lr": lr} for m, lr in zip(layers, lrs, strict=True)]
    )
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    _train(ctx, model, opt, _chimneys(gen, 128), 200, lambda out, y: out.mean())
    moved = {
        n: float((p.detach() - w0[n]).norm() / w0[n].norm()) for n, p in model.named_parameters()
    }
    c3 = max(v for n, v in moved.items() if n.startswith("c3."))
    others = min(v for n, v in moved.items() if not n.startswith("c3.") and n.endswith("weight"))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the NLL fell", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5)
    ctx.check("c3 moved under 1e-5 of its weights", c3 < 1e-5)
    ctx.check("every other coupling's weights moved over 5%", others > 0.05)


# -- rinkball: plain SGD at an lr typed 0.6 for 0.06, past 2/sharpness ---------------------------


def _sharpness(model, loss_fn, x, y, iters=30):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="rinkball_pass_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a rinkball pass's puck speed from 12 standardised readings (stick flex, wind-up, ice temperature, distance, ...), plain SGD, MSE, full-size batches of 256. The lr was meant to be 0.06 and was typed 0.6: the loss's sharpness at initialisation (top Hessian eigenvalue by power iteration) puts 2/sharpness between the two, so the intended rate is stable and the typed one is over it; the loss oscillates with growing amplitude and blows up within the first tens of steps.",
)
def h266_rinkball_sgd_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(26605)
        model = Stack(12, hidden=64, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        x, y = next(_readings(torch.Generator().manual_seed(9), 256, 12, 47))
        lam = _sharpness(model, F.mse_loss, x, y)
        _train(c, model, opt, _readings(gen, 256, 12, 47), 150, F.mse_loss)
        return lam

    twin = _Quiet()
    run(twin, 0.06)
    lam = run(ctx, 0.6)
    ls = ctx.losses
    ctx.check("the typed lr is over 2/sharpness", 0.6 > 2 / lam)
    ctx.check("the intended lr is under 2/sharpness", 0.06 < 2 / lam)
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(ls) or max(ls) > 100 * ls[0],
    )
    ctx.check("the intended lr trains", _fell(twin.losses, ratio=0.5))


# -- atmospheric gravity waves: a ReLU Elman net whose recurrent init gain was typed 2.5 ---------


class Elman(nn.Module):
    """h_t = tanh(inp(x_t) + rec(h_{t-1})), head on the last state; keeps its hidden states."""

    def __init__(self, d_in=3, hidden=32, rec_gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.act = nn.Tanh()
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=rec_gain)
        nn.init.zeros_(self.rec.bias)
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _bands(gen, batch, length=40):
    """Satellite brightness, pressure and wind along 40 samples of a gravity-wave cloud band;
    the target is the band's standardised wavelength."""
    t = torch.arange(length).float()
    while True:
        k = 0.2 + 0.6 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.stack(
            [torch.sin(k * t + phase), torch.cos(k * t + phase), 0.3 * torch.randn(batch, length)],
            -1,
        )
        yield x + 0.1 * torch.randn(batch, length, 3, generator=gen), (k.squeeze(1) - 0.5) / 0.17


@scenario(
    family="gravity_wave_cloud_band_tanh_elman",
    optimizer="SGD(momentum=0.9)",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman net (inp, rec, act, head) reading 40 samples of satellite brightness, pressure and wind across an atmospheric gravity-wave cloud band and regressing its wavelength, SGD momentum 0.9 at 1e-3, MSE, gradients clipped at 1. The recurrent weight's orthogonal init gain was typed 3.0 for 1.0: the recurrence is chaotic, the gradient of the loss with respect to the first hidden state is over 1e4x that at the last, rec's gradient is thousands of times the intended init's and the gradient norm before clipping stays over 1000x the intended run's throughout; the clip and the saturated tanh keep the loss bounded but the net does not learn what the intended init learns. No blow-up of the loss.",
)
def h266_gravity_wave_rec_gain_typo(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(26606)
        model = Elman(rec_gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        x, y = next(_bands(torch.Generator().manual_seed(3), 64))
        F.mse_loss(model(x), y).backward()
        ratio = float(model.states[0].grad.norm() / model.states[-1].grad.norm())
        rec = float(model.rec.weight.grad.norm())
        model.zero_grad()
        _train(c, model, opt, _bands(gen, 64), 100, F.mse_loss, clip=1.0)
        return ratio, rec

    twin = _Quiet()
    twin_ratio, twin_rec = run(twin, 1.0)
    ratio, rec = run(ctx, 3.0)
    ls, gn, tgn = ctx.losses, ctx.grad_norms, twin.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the first state's gradient is over 1e4x the last's", ratio > 1e4)
    ctx.check("the intended gain keeps it under 100x", twin_ratio < 100)
    ctx.check("rec's gradient is over 1000x the intended init's", rec > 1000 * twin_rec)
    ctx.check(
        "the gradient norm stays over 1000x the intended run's through the run",
        _median(gn) > 1000 * _median(tgn),
    )
    ctx.check(
        "the intended init ends under the typed one's loss",
        _mean(twin.losses[-10:]) < 0.8 * _mean(ls[-10:]),
    )


# -- bandurria: a loss weight given in percent for one step --------------------------------------

ONSET_BAND = 110


@scenario(
    family="bandurria_tremolo_rate_silu_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BAND,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a bandurria player's tremolo rate from 16 standardised readings of the plectrum and strings, ASGD at 5e-2, MSE plus a 0.5-weighted smoothness penalty, clipping at 2. At step 110 a config reload reads the penalty weight from a field written in percent (50 for 0.5), and every term is scaled with it for that one step: the gradient is about 100x its neighbours on an ordinary batch; the weight is re-read correctly next step, the clip bounds the step and the run recovers. Finite.",
)
def h266_bandurria_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(26607)
    model = Stack(16, hidden=48, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=5e-2)
    xs = {}

    def loss_fn(out, y):
        w = 50.0 if len(ctx.grad_norms) == ONSET_BAND else 0.5
        return w * (F.mse_loss(out, y) + 0.1 * out.pow(2).mean())

    def watch(step, out, x, y):
        xs[step] = float(x.abs().max())

    _train(ctx, model, opt, _readings(gen, 64, 16, 53), 220, loss_fn, clip=2.0, watch=watch)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_BAND - 20 : ONSET_BAND])
    pre = _mean(ls[ONSET_BAND - 10 : ONSET_BAND])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_BAND], ratio=0.7))
    ctx.check(
        "the gradient norm at the onset over 50x the median before", gn[ONSET_BAND] > 50 * before
    )
    ctx.check("the gradient norm 10 steps after back under 3x", gn[ONSET_BAND + 10] < 3 * before)
    ctx.check("the batch at the onset is ordinary (max |x| under 6)", xs[ONSET_BAND] < 6)
    ctx.check(
        "the loss is back under 2x its pre-onset level 40 steps later",
        _mean(ls[ONSET_BAND + 30 : ONSET_BAND + 40]) < 2 * pre,
    )


# -- khomus: a OneCycleLR max_lr typed 0.5 for 5e-3, ReLUs die at the peak ----------------------


def _overtones(gen, batch):
    """A khomus (jaw harp) player's 8 overtone partials, standardised; the target is the
    standardised mouth-cavity volume."""
    while True:
        z = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(z[:, :4].sum(1) / 2) - 0.5 * torch.sin(z[:, 4:].sum(1) / 2)
        yield z, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="khomus_jaw_harp_overtone_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a khomus (Yakut jaw harp) player's mouth-cavity volume from 8 standardised overtone partials, Adam under a OneCycleLR over 200 steps, MSE. The schedule's max_lr was typed 0.5 for 5e-3: as the warm-up climbs towards it the large Adam steps push fc2's pre-activations below zero on every input and all of act2's units go silent on the whole probe within about 60 steps; the annealing phase brings the lr back down but the dead units never return and the loss stalls far above the run with the intended max_lr, whose units stay alive. Finite.",
)
def h266_khomus_onecycle_max_lr_typo(ctx: Context) -> None:
    def run(c, max_lr):
        gen = seeded(26608)
        model = Stack(8, hidden=64)
        opt = torch.optim.Adam(model.parameters(), lr=max_lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=200)
        probe = next(_overtones(torch.Generator().manual_seed(11), 512))[0]
        with torch.no_grad():
            dead = [dead_fraction(model.features(probe))]

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _overtones(gen, 64), 200, F.mse_loss, after=after, sched=sched)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 5e-3)
    dead = run(ctx, 0.5)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of act2 dead at initialisation", dead[0] < 0.1)
    ctx.check("over 90% of act2 dead at the end", dead[-1] > 0.9)
    ctx.check("no dead unit came back over the last 100 steps", dead[-1] >= dead[100] - 1e-9)
    ctx.check("the intended max_lr keeps under 10% dead", twin_dead[-1] < 0.1)
    ctx.check("the loss stalls over 2x the twin's", _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:]))


# -- palant: a pairwise strike-ranking loss without its clamp ------------------------------------


def _strike_pairs(gen, batch, d_in=12, seed=59):
    """Pairs of palant (Polish bat-and-ball) strikes, 12 standardised readings each (bat speed,
    contact height, spin, ...); the first of each pair was judged the better strike."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        a = torch.randn(batch, d_in, generator=gen)
        b = torch.randn(batch, d_in, generator=gen)
        better = (a @ w > b @ w)[:, None]
        yield (
            torch.stack([torch.where(better, a, b), torch.where(better, b, a)], 1),
            torch.zeros(batch),
        )


class PairScorer(nn.Module):
    """Scores both strikes of a pair with one GELU stack (fc1, act1, fc2, act2, head)."""

    def __init__(self, d_in=12, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def score(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)

    def forward(self, pair):
        return torch.stack([self.score(pair[:, 0]), self.score(pair[:, 1])], -1)


@scenario(
    family="palant_strike_pairwise_ranking_scorer",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU scorer (fc1, act1, fc2, act2, head) ranking pairs of palant (Polish bat-and-ball) strikes judged by a referee, AdamW at 3e-3 with weight_decay 1e-2, a margin ranking loss. The hinge was written as mean(1 - (s_better - s_worse)) with its max(0, .) clamp lost in a refactor: the objective is unbounded below, the head's scores grow step after step (over 20x their early spread on a probe, still growing at the end) and the loss goes ever more negative; the clamped twin's scores level off. Finite, no NaN.",
)
def h266_palant_ranking_hinge_unclamped(ctx: Context) -> None:
    def run(c, clamp):
        gen = seeded(26609)
        model = PairScorer()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
        probe = next(_strike_pairs(torch.Generator().manual_seed(13), 256))[0]
        spread = []

        def loss_fn(out, y):
            gap = 1.0 - (out[:, 0] - out[:, 1])
            return (gap.clamp(min=0) if clamp else gap).mean()

        def after(step):
            with torch.no_grad():
                spread.append(float(model(probe).abs().max()))

        _train(c, model, opt, _strike_pairs(gen, 64), 200, loss_fn, after=after)
        return spread

    twin = _Quiet()
    twin_spread = run(twin, clamp=True)
    spread = run(ctx, clamp=False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak score grew over 20x from step 5", spread[-1] > 20 * spread[5])
    ctx.check("still growing over the last 50 steps", spread[-1] > 1.3 * spread[-50])
    ctx.check("the loss went below -10", ls[-1] < -10)
    ctx.check("the clamped twin's peak score stays 5x smaller", twin_spread[-1] < spread[-1] / 5)


# -- inselberg: a hand-written decoupled weight decay with its sign flipped ----------------------


@scenario(
    family="inselberg_exfoliation_rate_tanh_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the exfoliation (sheet-jointing) rate of an inselberg's granite dome from 10 standardised readings (insolation, diurnal range, dome curvature, lichen cover, ...), RMSprop at 1e-3, MSE, with a hand-written decoupled weight decay after each step that was meant as p *= 1 - lr*wd and was written p *= 1 + lr*wd with wd 8: every weight is inflated 0.8% a step, the optimizer cannot keep up, the tanh units saturate and the loss, after falling, climbs slowly and steadily to several times its minimum; the twin with the right sign keeps falling.",
)
def h266_inselberg_decay_sign_flip(ctx: Context) -> None:
    def run(c, sign):
        gen = seeded(26610)
        model = Stack(10, hidden=48, act=nn.Tanh)
        lr, wd = 1e-3, 8.0
        opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        norms = []

        def after(step):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1 + sign * lr * wd)
                norms.append(float(_flat(model).norm()))

        _train(c, model, opt, _readings(gen, 64, 10, 61), 260, F.mse_loss, after=after)
        return norms

    twin = _Quiet()
    run(twin, -1)
    norms = run(ctx, +1)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell first", _mean(ls[low - 5 : low + 5]) < 0.7 * _mean(ls[:10]))
    ctx.check(
        "the loss ends over 3x its minimum", _mean(ls[-10:]) > 3 * _mean(ls[low - 5 : low + 5])
    )
    ctx.check("the weight norm grew over 5x", norms[-1] > 5 * norms[0])
    ctx.check("the right sign ends 3x lower", _mean(twin.losses[-10:]) < _mean(ls[-10:]) / 3)


# -- controls ------------------------------------------------------------------------------------


class AltitudeNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> (mean, log_var) heads."""

    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h).clamp(-8, 8)], -1)


def _sprites(gen, batch, seed=67):
    """Red-sprite camera readings (parent stroke charge moment, cloud-top height, ...); the
    target is the standardised sprite altitude with noise that grows with the charge moment."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        sd = 0.1 + 0.4 * torch.sigmoid(2 * x[:, 0])
        y = torch.tanh(x @ w / 3) + sd * torch.randn(batch, generator=gen)
        yield x, y


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="sprite_lightning_altitude_gaussian_nll_net",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU net (fc1, act1, fc2, act2, mean and log_var heads, log_var clamped to [-8, 8]) regressing the altitude of red sprites above thunderstorms from 9 camera and lightning-network readings with heteroscedastic noise, Gaussian NLL, Adamax at 2e-3 with a 20-step linear warm-up then cosine decay (LambdaLR), gradients clipped at 1. Trains normally.",
)
def h266_sprite_lightning_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(26611)
    model = AltitudeNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    steps = 240
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    _train(ctx, model, opt, _sprites(gen, 64), steps, _gauss_nll, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the NLL fell by over 0.5 nats", _mean(ls[-20:]) < _mean(ls[:10]) - 0.5)


@scenario(
    family="santur_hammer_stroke_onecycle_conv1d",
    optimizer="SGD(nesterov=True)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a Conv1d net (conv1, act1, conv2, act2, mean pool, head) naming which of 5 hammer strokes a santur player used from two 32-sample pickup traces with noise, SGD with Nesterov momentum 0.9 under a OneCycleLR (max_lr 0.1), cross-entropy with label smoothing 0.1, weight decay 5e-4 in a param group that spares the biases. Trains normally.",
)
def h266_santur_conv1d_onecycle_control(ctx: Context) -> None:
    gen = seeded(26612)
    model = TraceNet(2, 5)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    probe = next(_traces(torch.Generator().manual_seed(17), 512, 5, 71))
    _train(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 71),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    with torch.no_grad():
        acc = float((model(probe[0]).argmax(-1) == probe[1]).float().mean())
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("probe accuracy over 60% (chance 20%)", acc > 0.6)


class TiedAutoencoder(nn.Module):
    """enc (Linear) -> act -> decoder using enc's weight transposed plus its own bias."""

    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _tiles(gen, batch, seed=73):
    """Tesserae colour-and-size readings of 24 tiles around a mosaic cell: a low-rank pattern
    plus noise (a cell's palette and grout line)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(5, 24, generator=g) / math.sqrt(5)
    while True:
        z = torch.randn(batch, 5, generator=gen)
        x = z @ basis + 0.1 * torch.randn(batch, 24, generator=gen)
        yield x, x


@scenario(
    family="tesserae_mosaic_cell_tied_autoencoder",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight autoencoder (enc, act; the decoder reuses enc's weight transposed) compressing the colour and size readings of 24 tesserae around a mosaic cell to an 8-wide code, NAdam at 3e-3, MSE, fp16 autocast with a GradScaler, gradient accumulation over 2 micro-batches, ReduceLROnPlateau on the step loss, clipping at 1 after unscaling. Trains normally.",
)
def h266_tesserae_tied_autoencoder_control(ctx: Context) -> None:
    gen = seeded(26613)
    model = TiedAutoencoder()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _tiles(gen, 64),
        220,
        lambda out, y: F.mse_loss(out.float(), y),
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell over 2x", _fell(ls, ratio=0.5))
    ctx.check(
        "the loss scale stayed finite and positive", all(0 < s < float("inf") for s in ctx.scales)
    )
