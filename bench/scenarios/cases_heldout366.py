"""Held-out set 366 (``h366_``): hand-written models of sports, trades and instruments not covered
before: a zurkhaneh meel-swing radial-basis-function regressor whose widths are stored as raw
variances with sqrt in forward (sqrt of a negative, NaN), a thoda arrow-flight tanh regressor whose
warm-up peak is typed 4e1 for 4e-1 (past 2/sharpness), a musangwe punch-force GELU regressor whose
loss weight is read in basis points for one step (Adam's second moment poisoned), a gittern
fret-action tanh regressor with a sign-flipped hand-written weight decay (a slow climb), an ostler
colic-risk ReLU BCE net fed one shard in grams (one corrupted batch), a fingerhakeln bout-length
GELU Huber regressor whose resumed step multiplies by the accumulation count (one gradient burst),
a dambe stance classifier whose trunk lr is scaled by batch // 256 (frozen), a knucklebones
toss-height ReLU regressor with RAdam lr typed 1.0 (dead ReLUs), a pachisi cowrie-throw cosine
classifier with temperature 1e-3 (softmax collapse), a bianzhong bell-tone 16-layer tanh MLP with
its init gain squared (gradients grow through depth), and three controls (a tahtib strike RBF
regressor with log-parameterised widths and Adam at a small rate, a hnefatafl Conv1d classifier
with SGD Nesterov, OneCycleLR and label smoothing, a laamb bout-length SiLU Huber regressor under
fp16 autocast with a GradScaler, AdamW and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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
    """The file's training loop. ``before(step)`` runs first and may return the number of
    micro-batches for the step, ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)``
    sees the forward pass, ``backprop(step, loss)`` returns the loss actually backpropagated
    (before the division by the accumulation count), ``after(step)`` runs after the optimizer step,
    ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)``
    sees the gradients before clipping. Stops after a non-finite loss (once ``ctx.step`` has seen
    it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        micro = accumulate
        if before is not None:
            got = before(step)
            if got is not None:
                micro = got
        model.train()
        shown = 0.0
        for _ in range(micro):
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
            total = backprop(step, loss) if backprop is not None else loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / micro
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
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _bumps(gen, batch, d_in, seed, noise=0.03):
    """Low-dimensional readings whose target is a sum of a few localised bumps (what an RBF
    network is for)."""
    g = torch.Generator().manual_seed(seed)
    centres = 1.2 * torch.randn(6, d_in, generator=g)
    widths = 0.4 + 0.5 * torch.rand(6, generator=g)
    amps = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        d2 = (x[:, None, :] - centres[None]).pow(2).sum(-1)
        y = (amps * torch.exp(-d2 / (2 * widths**2))).sum(-1)
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=48, channels=2):
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
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
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


# -- radial-basis-function networks -----------------------------------------------------------------


class LogWidthRBF(nn.Module):
    """Gaussian radial basis functions with learnable centres and log-parameterised widths."""

    def __init__(self, d_in, units, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.centres = nn.Parameter(torch.randn(units, d_in, generator=g))
        self.log_width = nn.Parameter(torch.full((units,), math.log(0.8)))

    def forward(self, x):
        d2 = (x[:, None, :] - self.centres[None]).pow(2).sum(-1)
        width = self.log_width.exp()
        return torch.exp(-d2 / (2 * width**2))


class VarianceRBF(nn.Module):
    """The same layer ported with the widths stored as raw variances and sqrt taken in forward
    (the recipe's exp/softplus left out): nothing keeps a variance positive."""

    def __init__(self, d_in, units, seed, var0=0.64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.centres = nn.Parameter(torch.randn(units, d_in, generator=g))
        self.var = nn.Parameter(torch.full((units,), var0))

    def forward(self, x):
        d = (x[:, None, :] - self.centres[None]).pow(2).sum(-1).sqrt()
        width = self.var.sqrt()  # meant: softplus(raw) or exp(log_width)
        return torch.exp(-0.5 * (d / width) ** 2)


class RBFNet(nn.Module):
    """rbf -> head: a radial-basis-function regressor."""

    def __init__(self, rbf, units):
        super().__init__()
        self.rbf = rbf
        self.head = nn.Linear(units, 1)

    def forward(self, x):
        return self.head(self.rbf(x)).squeeze(-1)


ZURKHANEH_DIV = 80


@scenario(
    family="zurkhaneh_meel_swing_sqrt_variance_rbf_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("rbf",),
    diverges=ZURKHANEH_DIV,
    heldout=True,
    note="A hand-written radial-basis-function network (rbf: 24 Gaussian units with learnable centres and widths, head) predicting the swing height of a zurkhaneh athlete's meel (Persian club) from three readings of grip, tempo and stance, RMSprop at 3e-2, MSE, 200 steps. The layer was ported from a recipe that keeps the widths positive through exp(log_width); the port stores raw variances and takes sqrt(var) in forward with no softplus or clamp. The loss falls as the units narrow onto the bumps, then a variance steps below zero, sqrt of a negative gives NaN in rbf, and the loss is NaN at step 80.",
)
def h366_zurkhaneh_rbf_sqrt_variance(ctx: Context) -> None:
    gen = seeded(36601)
    model = RBFNet(VarianceRBF(3, 24, 3661), 24)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-2)
    seen = {}

    def watch(step, out, x, y):
        seen["out"] = out.detach()
        seen["var"] = model.rbf.var.detach().clone()

    _loop(ctx, model, opt, _bumps(gen, 64, 3, 3662), 200, F.mse_loss, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is first non-finite at step {ZURKHANEH_DIV}", bad == ZURKHANEH_DIV)
    ctx.check(
        "a variance is below zero at the NaN step", bad is not None and float(seen["var"].min()) < 0
    )
    ctx.check("the output holds a NaN", bool(torch.isnan(seen["out"]).any()))
    ctx.check("the loss fell before the NaN", bad is not None and _fell(ctx.losses[:bad], k=5))


@scenario(
    family="tahtib_stick_strike_log_width_rbf_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written radial-basis-function network (rbf: 24 Gaussian units with learnable centres and log-parameterised widths, head) predicting the strike force of a tahtib stick-fighter from three readings, Adam at a small rate 3e-3, MSE, 240 steps. A control.",
)
def h366_tahtib_rbf_log_width(ctx: Context) -> None:
    gen = seeded(36602)
    model = RBFNet(LogWidthRBF(3, 24, 3663), 24)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    _loop(ctx, model, opt, _bumps(gen, 64, 3, 3664), 240, F.mse_loss)
    widths = model.rbf.log_width.detach().exp()
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check(
        "every width is positive and finite", bool((widths > 0).all() & widths.isfinite().all())
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- thoda: warm-up peak typed 10x (past 2/sharpness) -------------------------------------------------

THODA_DIV = 48


@scenario(
    family="thoda_arrow_flight_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the flight time of a Bhutanese thoda archer's arrow from ten readings of draw, release and wind, plain SGD with linear warm-up over 40 steps, MSE on batches of 256. The warm-up peak was typed 4e1 for 4e-1: lr x top Hessian eigenvalue (power iteration) is far under 2 at the start, passes 2 during warm-up, the loss oscillates, blows up past 100 around step 36 and overflows to inf at step 48.",
    onset=0,
)
def h366_thoda_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(36603)
    model = Trunk(10, 64, act=nn.Tanh)
    peak = 4e1  # meant: 4e-1
    opt = torch.optim.SGD(model.parameters(), lr=peak / 40)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 40))
    probe = next(_readings(torch.Generator().manual_seed(3), 256, 10, 3665))
    ratio = {}

    def before(step):
        if step % 5 == 0:
            ratio[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _loop(
        ctx, model, opt, _readings(gen, 256, 10, 3665), 200, F.mse_loss, before=before, sched=sched
    )
    bad = _first_bad(ctx.losses)
    early = [v for k, v in ratio.items() if k <= 5]
    ctx.check(f"the loss is first non-finite at step {THODA_DIV}", bad == THODA_DIV)
    ctx.check("lr x sharpness is under 2 at the start of warm-up", max(early) < 2.0)
    ctx.check("lr x sharpness passes 2 before the blow-up", max(ratio.values()) > 2.0)
    ctx.check("the loss fell first", _mean(ctx.losses[5:15]) < _mean(ctx.losses[:3]))


# -- musangwe: a loss weight in basis points for one step (Adam's second moment) --------------------


@scenario(
    family="musangwe_punch_force_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a musangwe fighter's punch force from twelve readings, Adam at 1e-3, MSE, 260 steps. The loss-weight schedule reads its weight in basis points on the switch step 100 (10000 for 1.0): one clean batch's gradient is over 1000x the usual, Adam's second moment fills with it, and 80-160 steps later the median per-weight update is under a tenth of what it was while the gradients are not smaller; the loss drifts up and recovers only slowly.",
    onset=100,
)
def h366_musangwe_loss_weight_basis_points(ctx: Context) -> None:
    gen = seeded(36604)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    upd, grads, prev = {}, {}, {}

    def weight(step):
        return 10000.0 if step == 100 else 1.0  # the switch step reads basis points: meant 1.0

    def inspect(step):
        grads[step] = ctx.grad_norms[-1]
        prev["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        d = torch.cat(
            [
                (p.detach() - w).abs().reshape(-1)
                for p, w in zip(model.parameters(), prev["w"], strict=True)
            ]
        )
        upd[step] = float(d.median())

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3666),
        260,
        F.mse_loss,
        backprop=lambda step, loss: weight(step) * loss,
        inspect=inspect,
        after=after,
    )
    before_g = _median([grads[s] for s in range(80, 100)])
    ctx.check(
        "the gradient at step 100 is over 1000x the median of the 20 before",
        grads[100] > 1000 * before_g,
    )
    ctx.check("the loss at step 100 is ordinary", ctx.losses[100] < 3 * _mean(ctx.losses[80:100]))
    ctx.check(
        "the median update 80-160 steps later is under a tenth of before",
        _mean([upd[s] for s in range(180, 260)]) < 0.1 * _mean([upd[s] for s in range(60, 100)]),
    )
    ctx.check(
        "the gradients 80-160 steps later are not smaller than before",
        _median([grads[s] for s in range(180, 260)]) > 0.5 * before_g,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- gittern: hand-written weight decay with its sign flipped (slow climb) ---------------------------


@scenario(
    family="gittern_fret_action_tanh_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the string action over a gittern's frets from ten readings of the neck and bridge, ASGD at 1e-2 with a hand-written decoupled weight decay 1.0 applied after each step as p *= (1 + lr * wd), its sign flipped (meant 1 - lr * wd), MSE on batches of 256, 280 steps. The weights grow over 2x, and the loss falls, then climbs slowly and steadily to over 3x its lowest 20-step mean, with no spike and no NaN.",
)
def h366_gittern_decay_sign(ctx: Context) -> None:
    gen = seeded(36605)
    model = Trunk(10, 64, act=nn.Tanh)
    lr, wd = 1e-2, 1.0
    opt = torch.optim.ASGD(model.parameters(), lr=lr)
    start = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant: 1 - lr * wd

    _loop(ctx, model, opt, _readings(gen, 256, 10, 3667), 280, F.mse_loss, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 20)]
    low = min(means)
    end = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the last 20 steps' loss is over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3.0 * low
    )
    ctx.check("the lowest 20-step mean comes in the first half", means.index(low) < len(means) // 2)
    ctx.check(
        "no step's loss is over 3x the mean of the 10 before it (a slow climb, no spike)",
        all(ls[i] < 3.0 * _mean(ls[i - 10 : i]) for i in range(10, len(ls))),
    )
    ctx.check("the weights' norm grew over 2x", end > 2.0 * start)


# -- ostler: one stable's shard in grams, unstandardised (one corrupted batch) -----------------------


@scenario(
    family="ostler_horse_colic_risk_relu_bce_net",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) giving an ostler's colic risk for a horse from twelve standardised readings of feed, hay, water, salt and work, BCE with logits, Adagrad at 2e-2, gradients clipped at 1.0, 240 steps. At step 120 one stable's shard arrives with feed, hay, water and salt in grams and never standardised (about 4000 for about 0): the loss and the gradient norm are over 20x the steps before, the clipped step recovers and the loss is back within 2x by step 160.",
    onset=120,
)
def h366_ostler_grams_shard(ctx: Context) -> None:
    gen = seeded(36606)
    model = Trunk(12, 64)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(3668)
    w = torch.randn(12, generator=g)

    def batches():
        for x, _ in _readings(gen, 64, 12, 3668):
            yield x, (x @ w / math.sqrt(12) + 0.3 * torch.randn(64, generator=gen) > 0).float()

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :4] = 4000.0 + 1500.0 * x[:, :4]  # feed, hay, water, salt in grams, raw
        return x, y

    _loop(
        ctx,
        model,
        opt,
        batches(),
        240,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 is over 20x the mean of the 20 before",
        ls[120] > 20 * _mean(ls[100:120]),
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median of the 20 before",
        gs[120] > 20 * _median(gs[100:120]),
    )
    ctx.check(
        "the loss is back under 2x its pre-shard level by step 160",
        _mean(ls[150:160]) < 2 * _mean(ls[100:120]),
    )
    ctx.check("the loss fell before the shard", _mean(ls[100:120]) < 0.8 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


# -- fingerhakeln: the resumed step accumulates 32 micro-batches without dividing -------------------


@scenario(
    family="fingerhakeln_pull_duration_gelu_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting how long a fingerhakeln (finger-pulling) bout lasts from ten readings, Huber loss, SGD Nesterov at 2e-2 with accumulation over 4 micro-batches, gradients clipped at 1.0, 260 steps. The resumed step 150 multiplies each micro-batch's loss by the accumulation count instead of dividing: on clean data the gradient is 16x the usual, over 10x the median of the 20 steps before, while the loss is ordinary; the clipped step leaves the run to go on.",
    onset=150,
)
def h366_fingerhakeln_resume_accumulation(ctx: Context) -> None:
    gen = seeded(36607)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    raw = {}

    def inspect(step):
        raw[step] = ctx.grad_norms[-1]

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3669),
        260,
        F.huber_loss,
        backprop=lambda step, loss: loss * 4 if step == 150 else loss / 4,  # resume: meant / 4
        accumulate=4,
        inspect=inspect,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 150 is over 10x the median of the 20 before",
        gs[150] > 10 * _median(gs[130:150]),
    )
    ctx.check("the loss at step 150 is ordinary (clean data)", ls[150] < 2 * _mean(ls[130:150]))
    ctx.check(
        "the loss is back under 2x its earlier level by step 170",
        _mean(ls[165:175]) < 2 * _mean(ls[130:150]),
    )
    ctx.check("the loss fell", _fell(ls[:150]))
    ctx.check("finite throughout", _finite(ls))


# -- dambe: the trunk group's lr scaled by batch // 256 (integer division, frozen) -------------------


@scenario(
    family="dambe_boxing_stance_two_group_relu_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying a dambe boxer's stance into six kinds from sixteen readings, NAdam in two param groups, cross-entropy, 200 steps. The trunk group's lr is scaled by batch // 256 (integer division) where batch / 256 was meant: with batch 64 it is 0, so fc1 and fc2 never move (under 1e-6 of their norm) while they get gradients and the head moves over 10% of its norm; the loss falls slowly on the frozen random features.",
)
def h366_dambe_trunk_lr_integer_division(ctx: Context) -> None:
    gen = seeded(36608)
    model = Trunk(16, 64, out=6)
    batch, base_lr = 64, 2e-3
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.NAdam(
        [
            {"params": trunk, "lr": base_lr * (batch // 256)},  # meant: batch / 256, 5e-4
            {"params": model.head.parameters(), "lr": base_lr},
        ]
    )
    start = {
        n: m.weight.detach().clone()
        for n, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
    }
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, batch, 16, 6, 3670, spread=1.4),
        200,
        F.cross_entropy,
        classifier=True,
    )
    moved = {n: _rel_change(w, getattr(model, n).weight) for n, w in start.items()}
    ctx.check("fc1 moved under 1e-6 of its norm", moved["fc1"] < 1e-6)
    ctx.check("fc2 moved under 1e-6 of its norm", moved["fc2"] < 1e-6)
    ctx.check("the head moved over 10% of its norm", moved["head"] > 0.1)
    ctx.check("the model got nonzero gradients every step", all(g > 0 for g in ctx.grad_norms))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- knucklebones: RAdam lr typed 1.0 for 1e-3 (the ReLUs die) ----------------------------------------


@scenario(
    family="knucklebones_toss_height_relu_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the toss height of a knucklebones throw from ten readings, RAdam with lr typed 1.0 for 1e-3, MSE, 220 steps. The first large updates drive fc2's pre-activations negative: over 90% of act2's units are never positive in each of the last 50 steps, and the loss stays above the targets' variance (nothing learnt), finite.",
)
def h366_knucklebones_radam_lr_typo(ctx: Context) -> None:
    gen = seeded(36609)
    model = Trunk(10, 64)
    opt = torch.optim.RAdam(model.parameters(), lr=1.0)  # meant: 1e-3
    dead, spread = [], []

    def watch(step, out, x, y):
        dead.append(_dead(model.features(x)))
        spread.append(float(y.var()))

    def heights():
        for x, y in _readings(gen, 64, 10, 3671):
            yield x, 1.5 + 0.4 * y

    _loop(ctx, model, opt, heights(), 220, F.mse_loss, watch=watch)
    ctx.check("under a tenth of act2's units are dead at step 0", dead[0] < 0.1)
    ctx.check(
        "over 90% of act2's units are dead in each of the last 50 steps", min(dead[-50:]) > 0.9
    )
    ctx.check(
        "the last 20 steps' loss is above the targets' variance (nothing learnt)",
        _mean(ctx.losses[-20:]) > _mean(spread[-20:]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pachisi: a cosine head's temperature typed 1e-3 for 1e-1 (softmax saturates) --------------------


class CosineHead(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d_in) / math.sqrt(d_in))
        self.temperature = temperature

    def forward(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T / self.temperature


class CosineNet(nn.Module):
    def __init__(self, d_in, classes, temperature, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, temperature)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="pachisi_cowrie_throw_cosine_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU net (fc1, act1, fc2, act2, head: a cosine classifier) reading a pachisi throw of cowries into seven outcomes from fourteen readings, AdamW at 1e-3, cross-entropy, 200 steps. The cosine head's temperature was typed 1e-3 for 1e-1, so the logits are cosines times 1000: the softmax saturates and over the last 20 steps over half the rows' target probability rounds to exactly 1.0 in float32.",
)
def h366_pachisi_temperature_typo(ctx: Context) -> None:
    gen = seeded(36610)
    model = CosineNet(14, 7, temperature=1e-3)  # meant: 1e-1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    collapsed = []

    def watch(step, out, x, y):
        p = torch.softmax(out.detach(), -1)
        collapsed.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 7, 3672, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under a tenth of the rows are collapsed at step 0", collapsed[0] < 0.1)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- bianzhong: init gain squared in a deep tanh MLP (gradients grow through depth) ------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.orthogonal_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)
        self.hs = []

    def forward(self, x):
        self.hs = []
        for layer in self.layers:
            x = torch.tanh(layer(x))
            if x.requires_grad:
                x.retain_grad()
            self.hs.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="bianzhong_bell_strike_tone_deep_tanh_mlp",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A hand-written 16-layer tanh MLP (layers.0 to layers.15, head) predicting the strike tone of a bianzhong bell from ten readings, Adamax at 2e-3, MSE, gradients clipped at 1.0, 150 steps. The orthogonal init's gain is calculate_gain('tanh') squared (applied twice, 2.78 for 1.67): the gradient at layers.0's output is over 20x that at layers.15's at the start and over 10x on average through the run, and the raw gradient norm stays over the clip threshold.",
)
def h366_bianzhong_gain_squared(ctx: Context) -> None:
    gen = seeded(36611)
    gain = nn.init.calculate_gain("tanh") ** 2  # meant: calculate_gain("tanh")
    model = DeepTanh(10, 48, 16, gain)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ratios = []

    def inspect(step):
        first, last = model.hs[0].grad, model.hs[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3673), 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check(
        "the gradient at layers.0's output is over 20x that at layers.15's at the start",
        ratios[0] > 20,
    )
    ctx.check("and over 10x on average through the run", _mean(ratios) > 10)
    ctx.check("the raw gradient norm is over the clip threshold", _median(ctx.grad_norms) > 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


class TraceConv(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool -> head over short multichannel traces."""

    def __init__(self, channels=2, width=16, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="hnefatafl_king_escape_relu_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, head) naming the king's escape route in hnefatafl from two-channel move traces, SGD Nesterov with weight decay under OneCycleLR (max 0.3), label smoothing 0.1, gradients clipped at 1.0, 200 steps. A control.",
)
def h366_hnefatafl_conv1d_onecycle(ctx: Context) -> None:
    gen = seeded(36612)
    model = TraceConv()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 3674),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="laamb_wrestling_bout_length_silu_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the length of a laamb (Senegalese wrestling) bout from twelve noisy readings, Huber loss, AdamW with a no-decay bias group, fp16 autocast with a torch.amp.GradScaler, accumulation over 2, ReduceLROnPlateau on a held-out batch, gradients clipped at 1.0, 180 steps. A control.",
)
def h366_laamb_fp16_plateau(ctx: Context) -> None:
    gen = seeded(36613)
    model = Trunk(12, 64, act=nn.SiLU)
    decay = [model.fc1.weight, model.fc2.weight, model.head.weight]
    no_decay = [model.fc1.bias, model.fc2.bias, model.head.bias]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    held = next(_readings(torch.Generator().manual_seed(7), 256, 12, 3675, noise=0.2))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 3675, noise=0.2),
        180,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the loss scale stayed above 1", min(ctx.scales) > 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))
