"""Held-out set 380 (``h380_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before: a tatting-shuttle picot-pattern restricted Boltzmann machine trained
with CD-1 whose free energy uses a hand-written log(1 + exp(x)) on raw 0-16 intensities (exp
overflows, NaN), an eskimo-roll recovery-time tanh regressor with a hand-written decoupled weight
decay whose sign is flipped (the loss climbs slowly), a circular-breathing drone-pressure tanh
regressor whose warm-up lambda has lost its min(1, .) clamp (the rate keeps rising past
2/sharpness), a cooper barrel-stave Gaussian-NLL net whose resumed step skips the unscale of a
static loss scale (Adam's second moment poisoned), a sea-fret visibility deep ReLU MLP initialised
with a leaky-ReLU gain of 1.6 on top of He init (gradients grow through depth), a swift-nest
fledging BCE net fed one shard of wing lengths in micrometres (one corrupted batch), a petanque
carreau-roll Huber regressor whose step-150 micro-batch loss is summed by an eval helper (one
gradient burst), an aurora corona two-group classifier whose fc1 lr is typed 4e-9 for 4e-3 (frozen),
a kumiko lattice-joint GELU classifier whose softmax temperature is typed 1e-3 for 1e0 (softmax
collapse), a sandboarding dune-run ReLU regressor with Adam's lr typed 3e-1 for 3e-4 (dead ReLUs),
and three controls (a bargello needlepoint motif RBM with CD-1, a small rate and weight decay, a
sumo tachiai Conv1d classifier with SGD Nesterov, OneCycleLR, label smoothing and clipping, and a
hot-air-balloon envelope SiLU Huber regressor under fp16 autocast with a GradScaler, AdamW,
accumulation and ReduceLROnPlateau).

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


# -- restricted Boltzmann machines on binarised digits ---------------------------------------------


class NaiveSoftplus(nn.Module):
    """log(1 + exp(x)) written out by hand (overflows to inf once x passes about 88)."""

    def forward(self, x):
        return torch.log(1 + torch.exp(x))


class RBM(nn.Module):
    """Bernoulli-Bernoulli RBM with tied weights: ``hidden`` holds W (hidden x visible) and the
    hidden bias, ``v_bias`` the visible bias; the visible side reuses W transposed."""

    def __init__(self, visible=64, hidden=48, softplus=None):
        super().__init__()
        self.hidden = nn.Linear(visible, hidden)
        self.v_bias = nn.Parameter(torch.zeros(visible))
        self.softplus = softplus if softplus is not None else nn.Softplus()
        nn.init.normal_(self.hidden.weight, std=0.01)
        nn.init.zeros_(self.hidden.bias)

    def free_energy(self, v):
        return -(v @ self.v_bias) - self.softplus(self.hidden(v)).sum(1)

    def gibbs(self, v, gen, k=1):
        for _ in range(k):
            ph = torch.sigmoid(self.hidden(v))
            h = torch.bernoulli(ph, generator=gen)
            pv = torch.sigmoid(h @ self.hidden.weight + self.v_bias)
            v = torch.bernoulli(pv, generator=gen)
        return v

    def reconstruction_error(self, v):
        ph = torch.sigmoid(self.hidden(v))
        pv = torch.sigmoid(ph @ self.hidden.weight + self.v_bias)
        return float(((pv - v) ** 2).mean())


def _binary_digits(gen, batch, raw=False):
    """Binarised 8x8 digits; ``raw`` gives the 0-16 intensities unscaled and unbinarised."""
    x, _ = digits()
    xb = 16 * x if raw else (x > 0.4).float()
    while True:
        order = torch.randperm(len(xb), generator=gen)
        for i in range(0, len(xb) - batch + 1, batch):
            yield xb[order[i : i + batch]]


def _cd(ctx, rbm, opt, gen, steps, batch=64, record=None, raw=False):
    """Contrastive divergence CD-1: the surrogate loss is the mean free energy of the data minus
    that of the Gibbs samples (detached). Stops after a non-finite loss."""
    data = _binary_digits(gen, batch, raw)
    ctx.attach(rbm, opt)
    for step in range(steps):
        v = next(data)
        with torch.no_grad():
            vk = rbm.gibbs(v, gen)
        loss = rbm.free_energy(v).mean() - rbm.free_energy(vk).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(rbm))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if record is not None:
            record(step, v)
        if not math.isfinite(float(loss.detach())):
            return step + 1
    return steps


@scenario(
    "tatting_shuttle_picot_pattern_rbm",
    "SGD",
    "nonfinite",
    "softplus",
    48,
    heldout=True,
    note="the free energy's softplus is written by hand as log(1 + exp(x)) instead of "
    "F.softplus, and the loader's binarise flag is off so the visible units get the raw 0-16 "
    "intensities; CD-1 with SGD momentum grows the weights until a hidden unit's pre-activation "
    "on the data passes about 88, exp overflows to inf, the free energy is -inf and the "
    "gradient inf/inf = NaN",
)
def h380_tatting_rbm_naive_softplus(ctx: Context) -> None:
    gen = seeded(38001)
    rbm = RBM(64, 48, softplus=NaiveSoftplus())
    opt = torch.optim.SGD(rbm.parameters(), lr=3e-4, momentum=0.5)
    peaks = []

    def record(step, v):
        with torch.no_grad():
            peaks.append(float(rbm.hidden(v).max()))

    _cd(ctx, rbm, opt, gen, 300, record=record, raw=True)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the surrogate loss is non-finite at some step", bad is not None)
    ctx.check("finite for the first 20 steps, non-finite at step 48", bad == 48)
    finite_peaks = [p for p in peaks[: (bad or len(peaks))] if math.isfinite(p)]
    ctx.check(
        "a hidden pre-activation past 80 (near exp's float32 overflow) just before",
        bool(finite_peaks) and max(finite_peaks) > 80,
    )
    with torch.no_grad():
        x = torch.tensor([100.0])
        ctx.check(
            "the hand-written softplus gives inf where F.softplus is finite",
            not math.isfinite(float(rbm.softplus(x))) and math.isfinite(float(F.softplus(x))),
        )


@scenario(
    "bargello_needlepoint_motif_rbm",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a Bernoulli RBM on binarised motifs trained with CD-1, SGD momentum 0.5 at a "
    "small rate 0.01 and weight decay 1e-4, F.softplus in the free energy",
)
def h380_bargello_rbm_control(ctx: Context) -> None:
    gen = seeded(38002)
    rbm = RBM(64, 48)
    opt = torch.optim.SGD(rbm.parameters(), lr=0.01, momentum=0.5, weight_decay=1e-4)
    errs = []

    def record(step, v):
        with torch.no_grad():
            errs.append(rbm.reconstruction_error(v))

    _cd(ctx, rbm, opt, gen, 250, record=record)
    ctx.check("the surrogate loss finite", _finite(ctx.losses))
    ctx.check(
        "reconstruction error of the last 20 steps under 0.7x that of the first 5",
        _mean(errs[-20:]) < 0.7 * _mean(errs[:5]),
    )
    ctx.check(
        "weights stay small (max |W| under 5)", float(rbm.hidden.weight.detach().abs().max()) < 5
    )


# -- a slow climb -----------------------------------------------------------------------------------


@scenario(
    "eskimo_roll_recovery_time_tanh_regressor",
    "Adam",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="a hand-written decoupled weight decay after Adam's step writes p.add_(p, alpha=lr * wd) "
    "for alpha=-lr * wd; every step inflates the weights by 1 + lr * wd, the tanh units saturate "
    "and the loss climbs slowly with no spike",
)
def h380_eskimo_roll_decay_sign(ctx: Context) -> None:
    gen = seeded(38003)
    model = Trunk(10, 48, act=nn.Tanh)
    lr, wd = 2e-3, 4.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # the bug: alpha=-lr * wd

    _loop(ctx, model, opt, _readings(gen, 64, 10, 380031), 300, F.mse_loss, after=after)
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


# -- sharpness -------------------------------------------------------------------------------------


@scenario(
    "circular_breathing_drone_pressure_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=10,
    note="the LambdaLR warm-up lambda is written (step + 1) / warmup without its min(1, .) "
    "clamp, so after the 10-step warm-up to 0.05 the rate keeps rising linearly; lr x the top "
    "Hessian eigenvalue passes 2 and the loss oscillates and blows up (plain SGD, no clipping)",
)
def h380_circular_breathing_unclamped_warmup(ctx: Context) -> None:
    gen = seeded(38004)
    model = Trunk(8, 48, act=nn.Tanh)
    warm = 10
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm)  # min(1, .) lost
    data = _readings(gen, 128, 8, 380041)
    px, py = next(data)
    seen = []

    def before(step):
        if step % 5 == 0:
            lr = opt.param_groups[0]["lr"]
            seen.append((step, lr, _sharpness(model, F.mse_loss, px, py)))

    _loop(ctx, model, opt, data, 250, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    s0 = [s for s in seen if s[0] >= warm][0]
    ctx.check("lr x sharpness under 2 when the warm-up should have ended", s0[1] * s0[2] < 2)
    crossed = [s for s in seen if math.isfinite(s[2]) and s[1] * s[2] > 2]
    ctx.check("lr x sharpness past 2 later in the run", bool(crossed) and crossed[0][0] > warm)
    ctx.check(
        "the loss then blows up to over 100x its lowest value or non-finite",
        not _finite(ls) or max(ls) > 100 * min(ls),
    )


# -- Adam's second moment ---------------------------------------------------------------------------


class MeanVar(nn.Module):
    """Trunk with two outputs: the mean and the log-variance of a Gaussian."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp().clamp_min(1e-4))


@scenario(
    "cooper_barrel_stave_bend_gaussian_nll_net",
    "AdamW",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=100,
    note="a manual static loss scale of 32768 multiplies the Gaussian NLL and the gradients are "
    "divided by it before the step; the resume-from-checkpoint path at step 100 skips the "
    "division once, so one clean batch's gradient reaches AdamW 32768x too large, fills the "
    "second moment and shrinks the updates for the rest of the run",
)
def h380_cooper_stave_skipped_unscale(ctx: Context) -> None:
    gen = seeded(38005)
    model = MeanVar(12)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    scale, onset = 32768.0, 100
    ups: list[float] = []
    grads: list[float] = []
    prev = {}

    def backprop(step, loss):
        return loss * scale

    def inspect(step):
        for p in model.parameters():
            if step != onset:
                p.grad.div_(scale)
        ctx.grad_norms[-1] = grad_norm(model)
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
        _readings(gen, 64, 12, 380051),
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
        "the loss at step 100 ordinary (under 2x the median of steps 80-99)",
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


# -- depth ----------------------------------------------------------------------------------------


class DeepReLU(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / width))
            nn.init.zeros_(lin.bias)
        self.outs = []

    def forward(self, x):
        h = F.relu(self.inp(x))
        self.outs = []
        for lin in self.layers:
            h = lin(h)
            if h.requires_grad:
                h.retain_grad()
            self.outs.append(h)
            h = F.relu(h)
        return self.head(h).squeeze(-1)


@scenario(
    "sea_fret_visibility_deep_relu_mlp",
    "Adagrad",
    "exploding_gradients",
    "layers.0",
    None,
    heldout=True,
    note="the 12 hidden ReLU layers take He init times a gain of 1.6 copied from a leaky-ReLU "
    "config; every layer amplifies the backward signal by about 1.6, so the gradient grows "
    "layer by layer towards the input (clipped at 1, nothing overflows)",
)
def h380_sea_fret_gain_init(ctx: Context) -> None:
    gen = seeded(38006)
    model = DeepReLU(10, 48, 12, gain=1.6)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-3)
    ratios = []

    def inspect(step):
        first, last = model.outs[0].grad, model.outs[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 380061),
        150,
        F.mse_loss,
        clip=1.0,
        inspect=inspect,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "gradient at layers.0's output over 20x that at layers.11's at the start", ratios[0] > 20
    )
    ctx.check("and over 10x on the median of the last 50 steps", _median(ratios[-50:]) > 10)


# -- one bad shard ----------------------------------------------------------------------------------


@scenario(
    "swift_nest_fledging_bce_net",
    "RMSprop",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=120,
    note="one colony's shard at step 120 logs wing length and mass in micrometres and milligrams "
    "instead of standardised millimetres and grams (x1000 in four columns); the loss and "
    "gradient jump for that one batch, clipping at 1 keeps it bounded and the run recovers",
)
def h380_swift_nest_micrometre_shard(ctx: Context) -> None:
    gen = seeded(38007)
    model = Trunk(10, 48)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    onset = 120

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, :4] = x[:, :4] * 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 10, 380071),
        240,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "loss at step 120 over 20x the median of steps 100-119",
        ls[onset] > 20 * _median(ls[100:onset]),
    )
    ctx.check(
        "gradient at step 120 over 20x the median of steps 100-119",
        gs[onset] > 20 * _median(gs[100:onset]),
    )
    ctx.check(
        "recovers: mean loss of the last 30 steps under 1.5x that of steps 90-119",
        _mean(ls[-30:]) < 1.5 * _mean(ls[90:onset]),
    )


# -- one gradient burst -----------------------------------------------------------------------------


@scenario(
    "petanque_carreau_roll_huber_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="gradient accumulation over 4 micro-batches; at step 150 (an epoch end) the loss comes "
    "from an eval helper built with reduction='sum' over the batch of 64, so that step's "
    "gradient is about 64x too large on perfectly ordinary data; clipped at 1, the run recovers "
    "(SGD Nesterov)",
)
def h380_petanque_sum_reduction_step(ctx: Context) -> None:
    gen = seeded(38008)
    model = Trunk(10, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    onset = 150

    def backprop(step, loss):
        if step == onset:
            return loss * 64  # the eval helper's reduction='sum' over a batch of 64
        return loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 380081),
        260,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
        accumulate=4,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "gradient at step 150 over 20x the median of steps 130-149",
        gs[onset] > 20 * _median(gs[130:onset]),
    )
    ctx.check(
        "the loss at step 150 ordinary (under 2x the median of steps 130-149)",
        ls[onset] < 2 * _median(ls[130:onset]),
    )
    ctx.check(
        "recovers: mean loss of the last 30 steps under 1.5x that of steps 120-149",
        _mean(ls[-30:]) < 1.5 * _mean(ls[120:onset]),
    )


# -- a frozen layer ---------------------------------------------------------------------------------


@scenario(
    "aurora_borealis_corona_two_group_classifier",
    "Adamax",
    "update_ratio_out_of_range",
    "fc1",
    None,
    heldout=True,
    note="two param groups: fc1 (the magnetometer embedding) at its own rate typed 4e-9 for "
    "4e-3, the rest at 2e-3; fc1 barely moves while the other layers learn (Adamax)",
)
def h380_aurora_fc1_lr_typo(ctx: Context) -> None:
    gen = seeded(38009)
    model = Trunk(16, 64, out=6)
    fc1_ids = {id(p) for p in model.fc1.parameters()}
    rest = [p for p in model.parameters() if id(p) not in fc1_ids]
    opt = torch.optim.Adamax(
        [{"params": model.fc1.parameters(), "lr": 4e-9}, {"params": rest}],  # the bug: 4e-3
        lr=2e-3,
    )
    w_fc1 = model.fc1.weight.detach().clone()
    w_head = model.head.weight.detach().clone()
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 380091, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(w_fc1, model.fc1.weight) < 1e-5)
    ctx.check("the head moves over 5% of its norm", _rel_change(w_head, model.head.weight) > 0.05)


# -- softmax saturation -----------------------------------------------------------------------------


class TempClassifier(Trunk):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, out=classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    "kumiko_lattice_joint_grade_gelu_classifier",
    "RAdam",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="the logits are divided by a softmax temperature typed 1e-3 for 1e0; the scaled "
    "logits are so large that most rows' target probability rounds to exactly 1.0 in float32 "
    "and those rows stop giving any gradient (RAdam)",
)
def h380_kumiko_temperature_typo(ctx: Context) -> None:
    gen = seeded(38010)
    model = TempClassifier(12, 48, 5, temperature=1e-3)  # the bug: 1e0
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    shares = []

    def watch(step, out, x, y):
        p = torch.softmax(out.detach().float(), dim=-1)
        shares.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 380101),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ref = TempClassifier(12, 48, 5, temperature=1.0)
    x, y = next(_grades(seeded(38011), 256, 12, 5, 380101))
    with torch.no_grad():
        p_ref = torch.softmax(ref(x), -1).gather(1, y[:, None])
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "over half the rows' target probability exactly 1.0 over the last 50 steps",
        _mean(shares[-50:]) > 0.5,
    )
    ctx.check(
        "none exactly 1.0 at the intended temperature", float((p_ref == 1.0).float().mean()) == 0
    )


# -- dead units -------------------------------------------------------------------------------------


@scenario(
    "sandboarding_dune_run_speed_relu_regressor",
    "Adam",
    "loss_of_plasticity",
    ("fc2", "act2"),
    None,
    heldout=True,
    note="Adam's lr is typed 3e-1 for 3e-4; the first large updates push fc2's pre-activations "
    "negative for every input, most of act2's ReLUs die and the regressor stops improving",
)
def h380_sandboarding_adam_lr_typo(ctx: Context) -> None:
    gen = seeded(38012)
    model = Trunk(10, 64)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=3e-1)  # the bug: 3e-4
    data = _readings(gen, 128, 10, 380121)
    x_val, y_val = next(data)
    with torch.no_grad():
        dead = [_dead(model.features(x_val))]

    def after(step):
        with torch.no_grad():
            dead.append(_dead(model.features(x_val)))

    _loop(ctx, model, opt, data, 200, F.mse_loss, after=after)
    ls = ctx.losses
    ctx.check("finite losses", _finite(ls))
    ctx.check("over 60% of act2's units dead over the last 50 steps", min(dead[-50:]) > 0.6)
    ctx.check("under 20% dead before the first step", dead[0] < 0.2)
    ref = Trunk(10, 64)
    ref.load_state_dict(init)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=3e-4)
    ref_data = _readings(seeded(38012), 128, 10, 380121)
    for _ in range(200):
        x, y = next(ref_data)
        ref_loss = F.mse_loss(ref(x), y)
        ref_opt.zero_grad()
        ref_loss.backward()
        ref_opt.step()
    with torch.no_grad():
        ref_val = float(F.mse_loss(ref(x_val), y_val))
        val = float(F.mse_loss(model(x_val), y_val))
    ctx.check("the held-out loss over 2x that at the intended lr 3e-4", val > 2 * ref_val)


# -- controls ---------------------------------------------------------------------------------------


class StrokeConv(nn.Module):
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
    "sumo_tachiai_charge_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier of tachiai charge traces, SGD Nesterov under "
    "OneCycleLR (max_lr 0.2), label smoothing 0.1, clipping at 1",
)
def h380_sumo_tachiai_control(ctx: Context) -> None:
    gen = seeded(38013)
    model = StrokeConv()
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 380131),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    x, y = next(_traces(seeded(38014), 256, 5, 380131))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("the loss fell under 0.7x", _fell(ctx.losses, ratio=0.7))
    ctx.check("held-out accuracy over 60%", acc > 0.6)


@scenario(
    "hot_air_balloon_envelope_temp_silu_huber_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a SiLU Huber regressor of envelope temperature, AdamW with a no-decay bias "
    "group, fp16 autocast with a GradScaler, accumulation over 2, ReduceLROnPlateau on a "
    "held-out batch, clipping at 1",
)
def h380_hot_air_balloon_control(ctx: Context) -> None:
    gen = seeded(38015)
    model = Trunk(10, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    data = _readings(gen, 64, 10, 380151)
    xv, yv = next(_readings(seeded(38016), 256, 10, 380151))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(xv), yv))

    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell under 0.5x", _fell(ctx.losses, ratio=0.5))
    ctx.check("the scaler's scale stayed finite and positive", all(s > 0 for s in ctx.scales))
