"""Held-out set 386 (``h386_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before: a harness-racing sulky-gait
Siamese embedder trained with a triplet margin loss on generated classes whose hand-written
Euclidean distance has no clamp and whose positive sampler falls back to the anchor itself from
step 60 (sqrt's backward 0/0, NaN), a slackline highline-sway ReLU regressor whose second-phase
NAdam rate is typed 1e-1 for 1e-3 (act2's ReLUs die), a mudflat tidal-creek tanh regressor whose
StepLR gamma is typed 2.0 for 0.5 (the rate doubles past 2/sharpness), a letterpress platen
ink-spread Huber regressor resumed at step 120 without its Adamax state (one loss spike), a
hang-drum decay ReLU RNN whose recurrent weights take gain 2.0 for sqrt(2) (gradients grow through
time), a kayak-surf wave-pocket Conv1d classifier fed one shard with -9999 sentinels (one corrupted
batch), a korfball multi-label BCE tagger whose step-150 masked loss is divided by a stale valid
count of 1 (one gradient burst), a sitar sympathetic-string classifier whose layer-wise rate decay
is typed 0.0 for 0.8 (fc1 and fc2 frozen), a snow-roller Gaussian-NLL net whose step-100
validation hook leaks a summed 8192-row gradient into AdamW (second moment poisoned), a dowsing-rod
tanh regressor whose hand-written L2 penalty has its sign flipped (the loss climbs slowly), and
three controls (a shakuhachi breath-tone Siamese embedder with L2-normalised embeddings, a margin
of 0.2 and semi-hard mining, a clog-dancing Conv1d classifier under fp16 autocast with a
GradScaler and Adagrad, and a steelpan tied-weight autoencoder under OneCycleLR).

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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


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
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (before the division by the accumulation count), ``after(step)``
    runs after the optimizer step, ``plateau()`` gives the validation loss for a
    ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the gradients before clipping. Stops after
    a non-finite loss (once ``ctx.step`` has seen it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
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
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Readings labelled by a hidden linear rule with a little label noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=40, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- Siamese metric learners on generated classes --------------------------------------------------


class Encoder(nn.Module):
    def __init__(self, d_in=16, hidden=64, dim=16):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.proj(self.act2(self.fc2(self.act1(self.fc1(x)))))


class EuclidDist(nn.Module):
    """Row-wise Euclidean distance written by hand: sqrt(sum((a - b)^2)); ``eps`` clamps the sum
    before the square root (0 leaves it unclamped)."""

    def __init__(self, eps=0.0):
        super().__init__()
        self.eps = eps

    def forward(self, a, b):
        s = ((a - b) ** 2).sum(-1)
        if self.eps > 0:
            s = s.clamp_min(self.eps)
        return torch.sqrt(s)


class Siamese(nn.Module):
    """One shared encoder for anchor, positive and negative, and a distance module."""

    def __init__(self, d_in=16, dim=16, normalise=False, eps=0.0):
        super().__init__()
        self.encoder = Encoder(d_in, 64, dim)
        self.dist = EuclidDist(eps)
        self.normalise = normalise

    def forward(self, x):
        z = self.encoder(x)
        return F.normalize(z, dim=-1) if self.normalise else z


def _protos(classes, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(classes, d_in, generator=g)


def _recall_at_1(model, protos, gen, per_class=8, spread=1.0):
    """Nearest-neighbour (leave-one-out) accuracy of the embedding on fresh samples."""
    c, d = protos.shape
    y = torch.arange(c).repeat_interleave(per_class)
    x = protos[y] + spread * torch.randn(len(y), d, generator=gen)
    with torch.no_grad():
        z = model(x)
        dm = torch.cdist(z, z)
        dm.fill_diagonal_(float("inf"))
        return float((y[dm.argmin(1)] == y).float().mean())


@scenario(
    "harness_racing_sulky_gait_siamese_triplet_net",
    "Adam",
    "nonfinite",
    "dist",
    61,
    heldout=True,
    onset=60,
    note="a Siamese gait embedder trained with a triplet margin loss whose Euclidean distance is "
    "written by hand as sqrt(sum((a - b)^2)) with no clamp; from step 60 a shard of trotters "
    "with a single recording joins, and the positive sampler's fallback returns the anchor "
    "itself, so d(anchor, positive) is exactly 0 and sqrt's backward gives 0/0 = NaN gradients; "
    "Adam writes NaN into the weights and the loss is NaN from step 61",
)
def h386_harness_racing_self_positive(ctx: Context) -> None:
    gen = seeded(38601)
    classes, d_in, onset, margin = 12, 16, 60, 1.0
    protos = _protos(classes, d_in, 386011)
    model = Siamese(d_in, 16)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    zero_rows, bad_grads = [], []
    for step in range(200):
        ya = torch.randint(0, classes, (48,), generator=gen)
        yn = (ya + torch.randint(1, classes, (48,), generator=gen)) % classes
        xa = protos[ya] + torch.randn(48, d_in, generator=gen)
        xp = protos[ya] + torch.randn(48, d_in, generator=gen)
        xn = protos[yn] + torch.randn(48, d_in, generator=gen)
        if step >= onset:  # single-recording trotters: the fallback positive is the anchor
            xp = xp.clone()
            xp[:4] = xa[:4]
        za, zp, zn = model(xa), model(xp), model(xn)
        d_ap, d_an = model.dist(za, zp), model.dist(za, zn)
        zero_rows.append(int((d_ap.detach() == 0).sum()))
        loss = F.relu(d_ap - d_an + margin).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        bad_grads.append(not all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("the loss finite up to step 60", _finite(ls[: onset + 1]))
    ctx.check("the loss fell before the onset", _mean(ls[50:onset]) < 0.7 * _mean(ls[:10]))
    ctx.check("no zero anchor-positive distance before step 60", sum(zero_rows[:onset]) == 0)
    ctx.check("rows with d(anchor, positive) exactly 0 at step 60", zero_rows[onset] > 0)
    ctx.check(
        "gradients finite before step 60 and non-finite at step 60",
        not any(bad_grads[:onset]) and bad_grads[onset],
    )
    ctx.check("the loss first non-finite at step 61", _first_bad(ls) == onset + 1)


def _pk_batch(protos, gen, p=8, k=4, spread=1.0):
    """P classes with K samples each (the usual batch for online triplet mining)."""
    c, d = protos.shape
    cls = torch.randperm(c, generator=gen)[:p]
    y = cls.repeat_interleave(k)
    return protos[y] + spread * torch.randn(len(y), d, generator=gen), y


def _semihard_triplet(z, y, dist, margin):
    """Online semi-hard mining on Euclidean distances computed by hand: for every
    anchor-positive pair, the closest negative farther than the positive and within the
    margin; the hardest negative farther than the positive where none is semi-hard."""
    n = len(y)
    dm = dist(z[:, None, :], z[None, :, :])
    same = y[:, None] == y[None, :]
    eye = torch.eye(n, dtype=torch.bool)
    ai, pi = torch.nonzero(same & ~eye, as_tuple=True)
    d_ap = dm[ai, pi]
    d_an_all = dm[ai]
    neg = ~same[ai]
    farther = neg & (d_an_all > d_ap[:, None])
    semi = farther & (d_an_all < d_ap[:, None] + margin)
    big = torch.full_like(d_an_all, float("inf"))
    pick_semi = torch.where(semi, d_an_all, big).min(1).values
    pick_far = torch.where(farther, d_an_all, big).min(1).values
    pick_any = torch.where(neg, d_an_all, big).min(1).values
    d_an = torch.where(
        torch.isfinite(pick_semi),
        pick_semi,
        torch.where(torch.isfinite(pick_far), pick_far, pick_any),
    )
    return F.relu(d_ap - d_an + margin).mean(), float(semi.any(1).float().mean())


@scenario(
    "shakuhachi_breath_tone_semihard_triplet_embedder",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a Siamese breath-tone embedder with L2-normalised embeddings, Euclidean "
    "distances computed by hand (clamped before the square root), a triplet margin of 0.2 with "
    "online semi-hard mining over P x K batches, AdamW with a linear warm-up into cosine decay, "
    "clipping at 1",
)
def h386_shakuhachi_semihard_control(ctx: Context) -> None:
    gen = seeded(38602)
    classes, d_in, steps, warm = 16, 16, 200, 20
    protos = _protos(classes, d_in, 386021)
    model = Siamese(d_in, 16, normalise=True, eps=1e-12)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))),
    )
    before = _recall_at_1(model, protos, torch.Generator().manual_seed(386022))
    ctx.attach(model, opt)
    semis = []
    for _ in range(steps):
        x, y = _pk_batch(protos, gen)
        loss, semi = _semihard_triplet(model(x), y, model.dist, 0.2)
        semis.append(semi)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    after = _recall_at_1(model, protos, torch.Generator().manual_seed(386022))
    ctx.check("the loss finite and fell under 0.6x", _fell(ctx.losses, ratio=0.6))
    ctx.check("nearest-neighbour accuracy rose and is over 0.8", after > before and after > 0.8)
    ctx.check("semi-hard negatives found for most pairs early on", _mean(semis[:20]) > 0.3)


# -- dead units ------------------------------------------------------------------------------------


@scenario(
    "slackline_highline_sway_relu_regressor",
    "NAdam",
    "loss_of_plasticity",
    ("fc2", "act2"),
    None,
    heldout=True,
    onset=100,
    note="a two-phase schedule: the second (fine) phase's rate is typed 1e-1 where 1e-3 was "
    "meant; the first NAdam updates of the phase push fc2's pre-activations negative for every "
    "input, most of act2's ReLUs die and the sway regressor stops improving (the loss stays "
    "finite and flat near the target's variance)",
)
def h386_slackline_phase_lr_typo(ctx: Context) -> None:
    gen = seeded(38603)
    model = Trunk(10, 64)
    onset = 100
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    data = _readings(gen, 128, 10, 386031)
    x_val, y_val = next(data)
    dead, val = [], []

    def before(step):
        if step == onset:
            for g in opt.param_groups:
                g["lr"] = 1e-1  # the bug: 1e-3

    def after(step):
        with torch.no_grad():
            dead.append(_dead(model.features(x_val)))
            val.append(float(F.mse_loss(model(x_val), y_val)))

    _loop(ctx, model, opt, data, 220, F.mse_loss, before=before, after=after)
    ls = ctx.losses
    ctx.check("finite losses", _finite(ls))
    ctx.check("under 20% of act2's units dead just before step 100", dead[onset - 1] < 0.2)
    ctx.check("over 60% dead over the last 50 steps", min(dead[-50:]) > 0.6)
    ctx.check(
        "the held-out loss of the last 20 steps over 2x that just before step 100",
        _mean(val[-20:]) > 2 * val[onset - 1],
    )
    ctx.check(
        "stops improving: the last 20 steps' loss not under 0.8x that of steps 150-169",
        _mean(ls[-20:]) > 0.8 * _mean(ls[150:170]),
    )
    ctx.check("no blow-up: the last 50 steps' loss under 2x the first", max(ls[-50:]) < 2 * ls[0])


# -- sharpness -------------------------------------------------------------------------------------


@scenario(
    "mudflat_tidal_creek_velocity_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=30,
    note="a StepLR meant to halve the rate every 30 steps is built with gamma=2.0 (the decay "
    "factor typed as its inverse), so the rate doubles at step 30, 60, 90...; lr x the top "
    "Hessian eigenvalue passes 2 and the loss oscillates and blows up (plain SGD)",
)
def h386_mudflat_steplr_gamma(ctx: Context) -> None:
    gen = seeded(38604)
    model = Trunk(8, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=2.0)  # the bug: 0.5
    data = _readings(gen, 128, 8, 386041)
    px, py = next(data)
    seen = []

    def before(step):
        if step % 5 == 0:
            lr = opt.param_groups[0]["lr"]
            seen.append((step, lr, _sharpness(model, F.mse_loss, px, py)))

    _loop(ctx, model, opt, data, 260, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    s0 = [s for s in seen if s[0] == 30][0]
    ctx.check("lr x sharpness under 2 at step 30", s0[1] * s0[2] < 2)
    crossed = [s for s in seen if math.isfinite(s[2]) and s[1] * s[2] > 2]
    ctx.check("lr x sharpness past 2 later in the run", bool(crossed) and crossed[0][0] > 30)
    ctx.check("the loss fell first", _mean(ls[20:30]) < 0.7 * _mean(ls[:5]))
    ctx.check(
        "the loss then blows up to over 100x its lowest value or non-finite",
        not _finite(ls) or max(ls) > 100 * min(ls),
    )


# -- a one-off loss spike --------------------------------------------------------------------------


@scenario(
    "letterpress_platen_ink_spread_huber_regressor",
    "Adamax",
    "loss_spike",
    (),
    None,
    heldout=True,
    onset=120,
    note="the job is resumed from a checkpoint at step 120: the weights are loaded but the "
    "resume code rebuilds Adamax without loading its state, so the first step after resume is "
    "a full-rate sign step in every coordinate; the loss jumps once on ordinary data with "
    "ordinary gradients and the run recovers",
)
def h386_letterpress_resume_fresh_optimizer(ctx: Context) -> None:
    gen = seeded(38605)
    model = Trunk(10, 64, act=nn.GELU)
    lr, onset = 2e-2, 120
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    seen = []

    def before(step):
        if step == onset:  # resume: the model's state_dict restored, the optimizer's not
            opt.state.clear()
        seen.append(len(opt.state))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 386051, noise=0.2),
        240,
        F.huber_loss,
        before=before,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    base = _median(ls[100:onset])
    ctx.check("finite losses", _finite(ls))
    ctx.check("the optimizer state empty at step 120 only", seen.count(0) == 2 and seen[onset] == 0)
    ctx.check("the loss at step 120 ordinary (under 1.5x steps 100-119)", ls[onset] < 1.5 * base)
    ctx.check(
        "the gradient at step 120 ordinary (under 2x the median of steps 100-119)",
        gs[onset] < 2 * _median(gs[100:onset]),
    )
    ctx.check(
        "the loss at step 121 or 122 over 3x the median of steps 100-119",
        max(ls[onset + 1 : onset + 3]) > 3 * base,
    )
    ctx.check(
        "recovers: mean loss of the last 30 steps under 1.5x that of steps 90-119",
        _mean(ls[-30:]) < 1.5 * _mean(ls[90:onset]),
    )


# -- gradients growing through time ----------------------------------------------------------------


class IRNN(nn.Module):
    """A hand-written ReLU recurrent regressor: h_t = relu(ih(x_t) + hh(h_{t-1}))."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.hh.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hh.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.ih(x[:, t]) + self.hh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _decays(gen, batch, length=24, d_in=4, seed=0):
    """Struck-tone envelopes: the target is the decay rate behind the noisy samples."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        rate = 0.05 + 0.25 * torch.rand(batch, generator=gen)
        env = torch.exp(-rate[:, None] * t)
        x = env[:, :, None] * mix + 0.05 * torch.randn(batch, length, d_in, generator=gen)
        yield x, (rate - 0.175) / 0.07


@scenario(
    "hang_drum_tone_field_decay_irnn_regressor",
    "RMSprop",
    "exploding_gradients",
    "hh",
    None,
    heldout=True,
    note="the recurrent weights of a hand-written ReLU RNN are initialised orthogonal with "
    "gain=2.0, He's variance factor passed as a standard-deviation gain (sqrt(2) was meant); "
    "each step back through time amplifies the gradient, so it grows towards the first steps "
    "(clipped at 1, RMSprop)",
)
def h386_hang_drum_recurrent_gain(ctx: Context) -> None:
    gen = seeded(38606)
    model = IRNN(4, 32, gain=2.0)  # the bug: gain=math.sqrt(2)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ratios = []

    def inspect(step):
        first, last = model.states[0].grad, model.states[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(
        ctx,
        model,
        opt,
        _decays(gen, 64, seed=386061),
        150,
        F.mse_loss,
        clip=1.0,
        inspect=inspect,
    )
    ref = IRNN(4, 32, gain=math.sqrt(2))
    x, y = next(_decays(seeded(38607), 64, seed=386061))
    F.mse_loss(ref(x), y).backward()
    ref_ratio = float(ref.states[0].grad.norm() / ref.states[-1].grad.norm().clamp_min(1e-30))
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "the gradient at the first state over 100x that at the last at the start", ratios[0] > 100
    )
    ctx.check("and over 20x on the median of the last 50 steps", _median(ratios[-50:]) > 20)
    ctx.check("under 10x with the intended gain sqrt(2)", ref_ratio < 10)


# -- one bad shard ---------------------------------------------------------------------------------


class WaveConv(nn.Module):
    def __init__(self, channels=2, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    "kayak_surf_wave_pocket_conv1d_classifier",
    "SGD",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=110,
    note="one buoy's shard at step 110 marks its dropped samples with the logger's -9999 "
    "sentinel instead of NaN-and-mask; a dozen traces carry -9999 in a stretch of readings, the "
    "loss and gradient jump for that one batch, clipping at 1 keeps it bounded and the run "
    "recovers (SGD momentum)",
)
def h386_kayak_surf_sentinel_shard(ctx: Context) -> None:
    gen = seeded(38608)
    model = WaveConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    onset = 110
    extreme = []

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:12, :, 10:18] = -9999.0
        extreme.append(float(x.abs().max()))
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 386081),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "the sentinel only in step 110's batch",
        [i for i, v in enumerate(extreme) if v > 100] == [onset],
    )
    ctx.check(
        "loss at step 110 over 20x the median of steps 90-109",
        ls[onset] > 20 * _median(ls[90:onset]),
    )
    ctx.check(
        "gradient at step 110 over 20x the median of steps 90-109",
        gs[onset] > 20 * _median(gs[90:onset]),
    )
    ctx.check(
        "recovers: mean loss of the last 30 steps under 1.5x that of steps 80-109",
        _mean(ls[-30:]) < 1.5 * _mean(ls[80:onset]),
    )


# -- one gradient burst ----------------------------------------------------------------------------


def _tags(gen, batch, d_in, tags, seed, missing=0.15):
    """Multi-label readings with some labels missing (mask 0)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, tags, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.3 * torch.randn(batch, tags, generator=gen) > 0).float()
        mask = (torch.rand(batch, tags, generator=gen) > missing).float()
        yield x, torch.stack([y, mask], 0)


@scenario(
    "korfball_shot_tag_masked_bce_tagger",
    "ASGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="a multi-label shot tagger with missing labels: the masked BCE sum is divided by the "
    "count of valid labels, which a helper caches per epoch; at step 150 (the epoch rollover) "
    "the cache still holds the last partial batch's count of 1, so that step's backpropagated "
    "loss is several hundred times too large on ordinary data (the logged mean is right); "
    "clipped at 1, the run recovers (ASGD)",
)
def h386_korfball_valid_count_cache(ctx: Context) -> None:
    gen = seeded(38609)
    model = Trunk(12, 48, out=6, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.5)
    onset = 150

    def loss_fn(out, ym):
        y, mask = ym[0], ym[1]
        per = F.binary_cross_entropy_with_logits(out, y, reduction="none") * mask
        return per.sum() / mask.sum()

    last = {}

    def backprop(step, loss):
        if step == onset:  # the bug: the sum divided by the cached count 1, not mask.sum()
            return loss * last["mask"].sum() / 1.0
        return loss

    data = _tags(gen, 64, 12, 6, 386091)

    def alter(step, x, ym):
        last["mask"] = ym[1]
        return x, ym

    _loop(ctx, model, opt, data, 260, loss_fn, alter=alter, backprop=backprop, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "gradient at step 150 over 100x the median of steps 130-149",
        gs[onset] > 100 * _median(gs[130:onset]),
    )
    ctx.check(
        "the logged loss at step 150 ordinary (under 1.5x the median of steps 130-149)",
        ls[onset] < 1.5 * _median(ls[130:onset]),
    )
    ctx.check(
        "recovers: mean loss of the last 30 steps under 1.5x that of steps 120-149",
        _mean(ls[-30:]) < 1.5 * _mean(ls[120:onset]),
    )
    ctx.check("the loss fell before the onset", _mean(ls[130:onset]) < 0.8 * _mean(ls[:10]))


# -- frozen layers ---------------------------------------------------------------------------------


@scenario(
    "sitar_sympathetic_string_llrd_classifier",
    "RAdam",
    "update_ratio_out_of_range",
    ("fc1", "fc2"),
    None,
    heldout=True,
    note="layer-wise rate decay: each layer's group gets base_lr * decay ** depth_from_top, with "
    "decay typed 0.0 for 0.8; the head keeps the base rate (0.0 ** 0 = 1) but fc2 and fc1 get a "
    "rate of exactly 0 and never move while the head learns on frozen random features (RAdam)",
)
def h386_sitar_llrd_zero_decay(ctx: Context) -> None:
    gen = seeded(38610)
    model = Trunk(16, 64, out=7)
    base, decay = 2e-3, 0.0  # the bug: 0.8
    groups = [
        {"params": model.head.parameters(), "lr": base * decay**0},
        {"params": model.fc2.parameters(), "lr": base * decay**1},
        {"params": model.fc1.parameters(), "lr": base * decay**2},
    ]
    opt = torch.optim.RAdam(groups, lr=base)
    w = {n: getattr(model, n).weight.detach().clone() for n in ("fc1", "fc2", "head")}
    g_low = []

    def inspect(step):
        g_low.append(min(float(model.fc1.weight.grad.norm()), float(model.fc2.weight.grad.norm())))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 7, 386101, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("fc1 moves under 1e-7 of its norm", _rel_change(w["fc1"], model.fc1.weight) < 1e-7)
    ctx.check("fc2 moves under 1e-7 of its norm", _rel_change(w["fc2"], model.fc2.weight) < 1e-7)
    ctx.check(
        "the head moves over 5% of its norm", _rel_change(w["head"], model.head.weight) > 0.05
    )
    ctx.check("fc1 and fc2 receive non-zero gradients every step", min(g_low) > 0)


# -- Adam's second moment --------------------------------------------------------------------------


class MeanLogVar(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _gauss_nll(out, y, reduction="mean"):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp().clamp_min(1e-4), reduction=reduction)


@scenario(
    "snow_roller_formation_gaussian_nll_net",
    "AdamW",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=100,
    note="a validation hook at step 100 computes the Gaussian NLL over 8192 held-out rows with "
    "reduction='sum' and calls backward on it (it was meant for a gradient-norm log) without "
    "zero_grad and outside no_grad; the leaked gradient, thousands of times the training one, "
    "reaches AdamW with the ordinary batch, fills the second moment and shrinks the updates "
    "for the rest of the run",
)
def h386_snow_roller_leaked_eval_grad(ctx: Context) -> None:
    gen = seeded(38611)
    model = MeanLogVar(12)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    onset = 100
    xv, yv = next(_readings(seeded(38612), 8192, 12, 386111))
    ups: list[float] = []
    grads: list[float] = []
    prev = {}

    def backprop(step, loss):
        if step == onset:
            _gauss_nll(model(xv), yv, reduction="sum").backward()  # the leak
        return loss

    def inspect(step):
        grads.append(ctx.grad_norms[-1])
        prev.clear()
        prev.update({n: p.detach().clone() for n, p in model.named_parameters()})

    def after(step):
        rel = [
            float(((p.detach() - prev[n]).abs() / prev[n].abs().clamp_min(1e-8)).median())
            for n, p in model.named_parameters()
            if p.dim() == 2
        ]
        ups.append(_median(rel))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 386112),
        260,
        _gauss_nll,
        backprop=backprop,
        inspect=inspect,
        after=after,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "the gradient at step 100 over 1000x the median of steps 80-99",
        grads[onset] > 1000 * _median(grads[80:onset]),
    )
    ctx.check(
        "the loss at step 100 ordinary (under 2x the median of steps 80-99, or within 1 nat)",
        ctx.losses[onset] < 2 * _median(ctx.losses[80:onset])
        or ctx.losses[onset] < _median(ctx.losses[80:onset]) + 1.0,
    )
    ctx.check(
        "median per-weight update over steps 120-200 under a tenth of steps 80-99",
        _median(ups[120:200]) < 0.1 * _median(ups[80:onset]),
    )
    ctx.check(
        "while the gradients are not smaller (median over steps 120-200 over 0.5x steps 80-99)",
        _median(grads[120:200]) > 0.5 * _median(grads[80:onset]),
    )


# -- a slow climb ----------------------------------------------------------------------------------


@scenario(
    "dowsing_rod_dip_angle_tanh_regressor",
    "SGD",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="the L2 penalty is added to the loss by hand as mse - wd * sum(w^2) (the sign dropped "
    "when the term was moved from a config into code); SGD Nesterov inflates the weights every "
    "step, the tanh units saturate and the logged MSE climbs slowly with no spike",
)
def h386_dowsing_l2_sign(ctx: Context) -> None:
    gen = seeded(38613)
    model = Trunk(10, 48, act=nn.Tanh)
    wd = 0.3
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, nesterov=True)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def backprop(step, loss):
        l2 = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - wd * l2  # the bug: + wd * l2

    _loop(ctx, model, opt, _readings(gen, 64, 10, 386131), 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    windows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10)]
    ctx.check("the loss finite throughout", _finite(ls))
    ctx.check("the weights' norm over 2x its start", w1 > 2 * w0)
    ctx.check(
        "the loss over the last 20 steps over 3x its lowest 20-step mean",
        _mean(ls[-20:]) > 3 * min(windows),
    )
    ctx.check(
        "a gradual climb: no 20-step window's mean over 2x the window before it",
        all(_mean(ls[i : i + 20]) < 2 * _mean(ls[i - 20 : i]) for i in range(40, len(ls) - 19, 20)),
    )


# -- controls --------------------------------------------------------------------------------------


@scenario(
    "clog_dancing_step_tap_fp16_conv1d_classifier",
    "Adagrad",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier of shoe-tap traces under fp16 autocast with a "
    "GradScaler, Adagrad at 0.05 with gradient accumulation over 2, label smoothing 0.05, "
    "clipping at 1",
)
def h386_clog_dancing_control(ctx: Context) -> None:
    gen = seeded(38614)
    model = WaveConv(2, 5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 386141),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.05),
        classifier=True,
        clip=1.0,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    x, y = next(_traces(seeded(38615), 256, 5, 386141))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("the loss fell under 0.7x", _fell(ctx.losses, ratio=0.7))
    ctx.check("held-out accuracy over 60%", acc > 0.6)
    ctx.check("the scaler's scale stayed finite and positive", all(s > 0 for s in ctx.scales))


class TiedAutoencoder(nn.Module):
    """The decoder reuses the encoder's weight transposed (tied weights) with its own bias."""

    def __init__(self, d_in=64, code=24):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.act = nn.Sigmoid()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return self.act(self.encoder(x)) @ self.encoder.weight + self.dec_bias


def _digit_rows(gen, batch):
    x, _ = digits()
    while True:
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch + 1, batch):
            xb = x[order[i : i + batch]]
            yield xb, xb


@scenario(
    "steelpan_note_tuning_tied_autoencoder",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a tied-weight sigmoid autoencoder of 8x8 note-pad hammer maps (scikit-learn "
    "digits), SGD Nesterov under OneCycleLR (max_lr 0.5), MSE, accumulation over 2, clipping "
    "at 1",
)
def h386_steelpan_tied_ae_control(ctx: Context) -> None:
    gen = seeded(38616)
    model = TiedAutoencoder()
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _digit_rows(gen, 64),
        steps,
        F.mse_loss,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("the loss fell under 0.5x", _fell(ctx.losses, ratio=0.5))
    ctx.check(
        "the decoder really is the encoder's transpose (one weight tensor)",
        sum(1 for _ in model.parameters()) == 3,
    )
