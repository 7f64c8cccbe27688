"""Held-out set 378 (``h378_``): hand-written models of sports, crafts, instruments and toys
not covered before: a rokkaku fighter-kite contrastive encoder whose CLIP-style logit_scale is
initialised to 1/0.07 instead of log(1/0.07) with no clamp (softmax collapse), a muay thai
clinch multi-label BCE net fed the judges' tally (0-3) instead of a 0/1 label (the head's logits
run away), a karate board-break ReLU regressor whose warm-restart multiplier is typed 100 for 1.0
(dead ReLUs), a greyhound trap-draw classifier whose head is replaced after the optimizer was
built (the head never moves), a husky sled-pull Gaussian-NLL net taking sqrt of a raw variance
(NaN), an aikido fall-impact regressor fed one shard in milli-g (one corrupted batch), a
kickboxing roundhouse-speed regressor whose epoch-end accumulation flush multiplies by the count
instead of dividing (one gradient burst), a 14-layer dholak loudness ReLU MLP with the ReLU gain
applied twice (gradients grow through depth), a jacks toss-height tanh regressor under OneCycleLR
with max_lr typed 1.0 for 0.01 (past 2/sharpness), a beyblade spin-decay fp16 Conv1d regressor
whose new firmware's traces skip the 1/1000 (fp16 overflow), and three controls (a gayageum
NT-Xent contrastive encoder with L2-normalised projections at temperature 0.5, a baguette
oven-spring fp16 Huber regressor, a contact-staff Conv1d classifier under OneCycleLR).

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
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated for a micro-batch (default ``loss / accumulate``), ``after(step)``
    runs after the optimizer step, ``plateau()`` gives the validation loss for a
    ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the gradients before clipping. Stops
    after a non-finite loss (once ``ctx.step`` has seen it); returns the number of steps run."""
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
            total = backprop(step, loss) if backprop is not None else loss / accumulate
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


# -- generated data -------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=40, channels=2, noise=0.3):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + noise * torch.randn(batch, channels, length, generator=gen), y


def _two_views(gen, batch, length=32):
    """Contrastive pairs: each row a random recording (a damped sum of three partials plus the
    player's own texture); two augmentations per row (gain, noise, a masked span). Returns a
    (2, batch, length) stack and the positive's index for each of 2*batch rows in the
    (2*batch, 2*batch - 1) off-diagonal similarity matrix."""
    t = torch.arange(length, dtype=torch.float32)
    n = 2 * batch
    pos = torch.cat([torch.arange(batch, n), torch.arange(0, batch)])
    rows = torch.arange(n)
    target = torch.where(pos > rows, pos - 1, pos)
    while True:
        f = 0.1 + 0.5 * torch.rand(batch, 3, 1, generator=gen)
        d = 8.0 + 30.0 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 3, 1, generator=gen)
        a = torch.rand(batch, 3, 1, generator=gen)
        clean = torch.exp(-t / d) * (a * torch.sin(f * t + ph)).sum(1)
        clean = clean + 0.5 * torch.randn(batch, length, generator=gen)
        views = []
        for _ in range(2):
            gain = 0.8 + 0.4 * torch.rand(batch, 1, generator=gen)
            v = gain * clean + 0.1 * torch.randn(batch, length, generator=gen)
            start = int(torch.randint(0, length - 3, (1,), generator=gen))
            v[:, start : start + 3] = 0.0
            views.append(v)
        yield torch.stack(views), target


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


# -- contrastive learners (NT-Xent over two augmentations) --------------------------------------


class SimilarityLogits(nn.Module):
    """L2-normalises the projections and returns the off-diagonal cosine similarities over the
    temperature: row i's classes are the other 2N - 1 projections, its positive the other view."""

    def __init__(self, temperature):
        super().__init__()
        self.temperature = temperature

    def forward(self, z):
        z = F.normalize(z, dim=-1)
        sim = z @ z.T / self.temperature
        n = sim.shape[0]
        keep = ~torch.eye(n, dtype=torch.bool)
        return sim[keep].reshape(n, n - 1)


class PairEncoder(nn.Module):
    """encoder (fc1 -> act1 -> fc2) -> proj (a two-layer projection) -> logits."""

    def __init__(self, length, temperature, hidden=64, dim=32, proj=16):
        super().__init__()
        self.fc1 = nn.Linear(length, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, proj))
        self.logits = SimilarityLogits(temperature)

    def forward(self, views):
        x = views.reshape(-1, views.shape[-1])
        return self.logits(self.proj(self.fc2(self.act1(self.fc1(x)))))


class ScaledSimilarityLogits(nn.Module):
    """CLIP-style: the temperature is learnt as ``logit_scale`` and logits are
    exp(logit_scale) * cosine similarity (off-diagonal, as in ``SimilarityLogits``)."""

    def __init__(self, init):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, z):
        z = F.normalize(z, dim=-1)
        sim = self.logit_scale.exp() * (z @ z.T)
        n = sim.shape[0]
        keep = ~torch.eye(n, dtype=torch.bool)
        return sim[keep].reshape(n, n - 1)


@scenario(
    "rokkaku_fighter_kite_manoeuvre_clip_scale_contrastive_encoder",
    "Adam",
    "softmax_collapse",
    "logits",
    None,
    heldout=True,
    note="a contrastive encoder of rokkaku kite line-tension recordings with a learnt CLIP-style "
    "temperature; the port initialises logit_scale to 1/0.07 instead of log(1/0.07) (and "
    "dropped the clamp at 100), so the cosine similarities are multiplied by exp(14.3), about "
    "1.6e6, and the softmax over the batch rounds most positives' probability to exactly 1.0",
)
def h378_rokkaku_logit_scale_init(ctx: Context) -> None:
    gen = seeded(37801)
    model = PairEncoder(32, 1.0)
    model.logits = ScaledSimilarityLogits(1 / 0.07)  # the bug: math.log(1 / 0.07)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    fractions, intended = [], []

    def watch(step, out, x, y):
        p = torch.softmax(out.detach(), -1).gather(1, y[:, None])
        fractions.append(float((p == 1.0).float().mean()))
        cos = out.detach() / model.logits.logit_scale.detach().exp()
        q = torch.softmax(cos / 0.07, -1).gather(1, y[:, None])
        intended.append(float((q == 1.0).float().mean()))

    _loop(ctx, model, opt, _two_views(gen, 32), 200, F.cross_entropy, classifier=True, watch=watch)
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "over half the rows' positive probability exactly 1.0 over the last 50 steps",
        _mean(fractions[-50:]) > 0.5,
    )
    ctx.check(
        "none exactly 1.0 with the same similarities at the intended scale 1/0.07",
        max(intended) == 0.0,
    )


@scenario(
    "gayageum_pluck_ntxent_encoder",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: an NT-Xent contrastive encoder of gayageum pluck recordings with L2-normalised "
    "projections and temperature 0.5, AdamW with a linear warm-up then cosine decay, clipping",
)
def h378_gayageum_ntxent_control(ctx: Context) -> None:
    gen = seeded(37802)
    model = PairEncoder(32, 0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    _loop(
        ctx,
        model,
        opt,
        _two_views(gen, 32),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained: the last 10 steps' loss under 0.8x the first 10", _fell(ctx.losses))


# -- the head's logits run away ----------------------------------------------------------------


def _tallies(gen, batch, d_in, seed, judges=3, labels=3):
    """Clinch readings and, per technique, how many of the judges scored it (0..judges)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        p = torch.sigmoid(2.5 * x @ w)
        votes = (torch.rand(batch, labels, judges, generator=gen) < p[..., None]).sum(-1)
        yield x, votes.float()


@scenario(
    "muay_thai_clinch_judge_tally_bce_net",
    "Adamax",
    "output_logit_divergence",
    "head",
    None,
    heldout=True,
    note="a multi-label BCE net of which clinch techniques score; the label column holds the "
    "judges' tally (0-3) and the binarisation (tally >= 2) was dropped when the loader was "
    "rewritten; for a tally of 2 or 3 BCE-with-logits falls without bound as the logit grows, "
    "so the head's logits run away and the loss goes negative",
)
def h378_muay_thai_tally_targets(ctx: Context) -> None:
    gen = seeded(37803)
    model = Trunk(12, 64, out=3, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    peaks = []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _tallies(gen, 64, 12, 378031),
        200,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite losses", _finite(ls))
    ctx.check("the head's largest logit over 20x its value at step 0", peaks[-1] > 20 * peaks[0])
    ctx.check(
        "still growing: the last 20 steps' largest logit over 1.3x the 20 before",
        _mean(peaks[-20:]) > 1.3 * _mean(peaks[-40:-20]),
    )
    ctx.check("the logged BCE went below 0 (impossible for 0/1 targets)", min(ls) < 0)


# -- dead ReLUs -----------------------------------------------------------------------------------


@scenario(
    "karate_board_break_force_relu_regressor",
    "RMSprop",
    "loss_of_plasticity",
    ("act2", "fc2"),
    None,
    heldout=True,
    onset=100,
    note="hand-written cosine schedule with warm restarts every 100 steps; the restart multiplier "
    "is typed 100 for 1.0, so at step 100 RMSprop's lr jumps from 1e-3 to 1e-1 and decays from "
    "there; the jump pushes the second layer's ReLUs negative on every input and they stay dead",
)
def h378_karate_restart_multiplier(ctx: Context) -> None:
    gen = seeded(37804)
    model = Trunk(8, 64)
    base, period, restart_mult = 1e-3, 100, 100.0  # the bug: 1.0
    opt = torch.optim.RMSprop(model.parameters(), lr=base)
    d2, var = [], []

    def before(step):
        cycle, pos = divmod(step, period)
        peak = base * (restart_mult if cycle > 0 else 1.0)
        for g in opt.param_groups:
            g["lr"] = 0.05 * peak + 0.95 * peak * 0.5 * (1 + math.cos(math.pi * pos / period))

    def watch(step, out, x, y):
        with torch.no_grad():
            d2.append(_dead(model.act2(model.fc2(model.act1(model.fc1(x))))))
            var.append(float(y.var()))

    onset = 100
    _loop(
        ctx, model, opt, _readings(gen, 128, 8, 378041), 220, F.mse_loss, before=before, watch=watch
    )
    ls = ctx.losses
    ctx.check("finite losses", _finite(ls))
    ctx.check("under 20% of act2's units dead before the restart", max(d2[:onset]) < 0.2)
    ctx.check("over 60% of act2's units dead on each of the last 50 steps", min(d2[-50:]) > 0.6)
    ctx.check(
        "the last 50 steps' loss over 2x the 20 before the restart",
        _mean(ls[-50:]) > 2 * _mean(ls[onset - 20 : onset]),
    )


# -- a head left out of the optimizer ------------------------------------------------------------


@scenario(
    "greyhound_trap_draw_finish_relu_classifier",
    "SGD",
    "update_ratio_out_of_range",
    "head",
    None,
    heldout=True,
    note="the script builds the optimizer, then swaps the 6-class head for a fresh 8-trap head "
    "(the track's trap count read after the optimizer was created); the new head's weights are "
    "in no parameter group, so they get gradients but never move while fc1 and fc2 learn",
)
def h378_greyhound_head_after_optimizer(ctx: Context) -> None:
    gen = seeded(37805)
    model = Trunk(14, 64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.head = nn.Linear(64, 8)  # the bug: replaced after the optimizer took the old head
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    got = []

    def inspect(step):
        got.append(model.head.weight.grad is not None and float(model.head.weight.grad.norm()) > 0)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 8, 378051, spread=1.5),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        inspect=inspect,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("the head had a nonzero gradient on every step", all(got))
    ctx.check("the head moved exactly 0", _rel_change(wh, model.head.weight) == 0.0)
    ctx.check(
        "fc1 and fc2 moved over 5% of their norm",
        min(_rel_change(w1, model.fc1.weight), _rel_change(w2, model.fc2.weight)) > 0.05,
    )


# -- sqrt of a negative ---------------------------------------------------------------------------


class SledNLL(nn.Module):
    """trunk -> mean and a raw variance; the std is sqrt(raw variance) with no softplus/clamp."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)
        self.std = StdFromVar()
        nn.init.constant_(self.var.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.stack([self.mean(h).squeeze(-1), self.std(self.var(h)).squeeze(-1)], -1)


class StdFromVar(nn.Module):
    def forward(self, v):
        return torch.sqrt(v)  # the bug: the recipe has F.softplus(v) + 1e-4 before the sqrt


def _gauss_nll(out, y):
    mu, std = out[:, 0], out[:, 1]
    return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()


@scenario(
    "husky_sled_team_pull_gaussian_nll_net",
    "NAdam",
    "nonfinite",
    "std",
    "auto",
    heldout=True,
    note="a Gaussian-NLL net of a husky team's harness pull; the port takes the std as "
    "sqrt(raw variance head) without the recipe's softplus; as the NLL shrinks the predicted "
    "variance towards the small residuals, a raw variance crosses 0 and sqrt of a negative "
    "is NaN",
)
def h378_husky_sqrt_raw_variance(ctx: Context) -> None:
    gen = seeded(37806)
    model = SledNLL(8)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-4)
    lowest = []

    def watch(step, out, x, y):
        with torch.no_grad():
            h = model.act2(model.fc2(model.act1(model.fc1(x))))
            lowest.append(float(model.var(h).min()))

    ran = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 378061, noise=0.02), 300, _gauss_nll, watch=watch
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at some step", bad is not None)
    ctx.check("finite for the first 30 steps", bad is not None and bad >= 30)
    ctx.check(
        "a raw variance is negative at the NaN step (sqrt of a negative)",
        bad is not None and lowest[bad] < 0,
    )
    ctx.check("the run stopped there", ran == (bad or 0) + 1)


# -- a bad shard -----------------------------------------------------------------------------------


@scenario(
    "aikido_ukemi_fall_impact_silu_huber_regressor",
    "Adagrad",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=130,
    note="one dojo's mat sensors log the impact in milli-g instead of g; the step-130 batch "
    "comes from that shard (targets x1000); loss and gradient jump, the gradient is clipped "
    "at 1 and the run recovers",
)
def h378_aikido_milli_g_shard(ctx: Context) -> None:
    gen = seeded(37807)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    onset = 130

    def alter(step, x, y):
        if step == onset:
            y = y * 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 378071),
        220,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "the step-130 loss over 20x the median before", ls[onset] > 20 * _median(ls[90:onset])
    )
    ctx.check(
        "the step-130 gradient over 20x the median before", gn[onset] > 20 * _median(gn[90:onset])
    )
    ctx.check(
        "recovered: the last 30 steps under 1.5x the 30 before the shard",
        _mean(ls[-30:]) < 1.5 * _mean(ls[onset - 30 : onset]),
    )


# -- one gradient burst ----------------------------------------------------------------------------


@scenario(
    "kickboxing_roundhouse_speed_accum_gelu_regressor",
    "RAdam",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="gradient accumulation over 8 micro-batches; the epoch-end flush path (step 150) "
    "multiplies each micro-batch loss by the accumulation count instead of dividing, so that "
    "step's gradient on clean data is 64x; clipped at 1, the run goes on",
)
def h378_kickbox_accum_multiply(ctx: Context) -> None:
    gen = seeded(37808)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    onset, accum = 150, 8

    def backprop(step, loss):
        return loss * accum if step == onset else loss / accum

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 378081),
        230,
        F.mse_loss,
        backprop=backprop,
        accumulate=accum,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ref = _median(gn[onset - 50 : onset])
    ctx.check("finite losses", _finite(ls))
    ctx.check("the step-150 gradient over 30x the median of the 50 before", gn[onset] > 30 * ref)
    ctx.check(
        "no gradient over 5x that median on any other step after 100",
        all(gn[i] < 5 * ref for i in range(100, len(gn)) if i != onset),
    )
    ctx.check(
        "the step-150 loss is ordinary (under 3x the median before)",
        ls[onset] < 3 * _median(ls[onset - 50 : onset]),
    )


# -- gradients grow through depth ------------------------------------------------------------------


class DeepRelu(nn.Module):
    def __init__(self, d_in, width, depth, extra_gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        with torch.no_grad():
            for lin in self.layers:
                nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
                lin.weight.mul_(extra_gain)
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
    "dholak_bol_loudness_deep_relu_mlp",
    "Adam",
    "exploding_gradients",
    "layers.0",
    None,
    heldout=True,
    note="a 14-layer ReLU MLP of dholak stroke loudness; the init calls kaiming_normal_ "
    "(which already includes the ReLU gain sqrt(2)) and then multiplies by "
    "calculate_gain('relu') again, so each layer amplifies by about sqrt(2) and the gradient "
    "grows layer by layer towards the input (clipped at 1)",
)
def h378_dholak_double_relu_gain(ctx: Context) -> None:
    gen = seeded(37809)
    model = DeepRelu(10, 48, 14, extra_gain=nn.init.calculate_gain("relu"))  # the bug: 1.0
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    ratios = []

    def inspect(step):
        first, last = model.outs[0].grad, model.outs[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 378091),
        150,
        F.huber_loss,
        clip=1.0,
        inspect=inspect,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "gradient at layers.0's output over 20x that at layers.13's at the start", ratios[0] > 20
    )
    ctx.check("over 10x on every step", min(ratios) > 10)
    ref = DeepRelu(10, 48, 14)
    x, y = next(_readings(torch.Generator().manual_seed(378092), 64, 10, 378091))
    F.huber_loss(ref(x), y).backward()
    ref_ratio = float(ref.outs[0].grad.norm() / ref.outs[-1].grad.norm())
    ctx.check("under 5x with the intended single gain", ref_ratio < 5)


# -- past the stability limit ----------------------------------------------------------------------


@scenario(
    "jacks_toss_height_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    note="plain SGD under OneCycleLR whose max_lr is typed 1.0 for 0.01; the warm-up carries "
    "lr x the top Hessian eigenvalue past 2 and the loss blows up",
)
def h378_jacks_onecycle_max_lr(ctx: Context) -> None:
    gen = seeded(37810)
    model = Trunk(8, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    steps = 300
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=steps)  # 0.01
    data = _readings(gen, 128, 8, 378101)
    px, py = next(data)
    products = []

    def before(step):
        if step % 10 == 0 and step <= 120:
            lr = opt.param_groups[0]["lr"]
            products.append((step, lr * _sharpness(model, F.mse_loss, px, py)))

    _loop(ctx, model, opt, data, steps, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    ctx.check("lr x sharpness under 2 at step 0", products[0][1] < 2)
    ctx.check("lr x sharpness past 2 during the warm-up", any(p > 2 for _, p in products))
    ctx.check(
        "the loss blows up: over 100x its step-0 value or non-finite",
        bad is not None or max(ls[:end]) > 100 * ls[0],
    )


# -- fp16 overflow under autocast ------------------------------------------------------------------


class SpinNet(nn.Module):
    """conv1 -> act1 -> energy (mean square over time, an fp16 op under autocast) -> fc -> head."""

    def __init__(self, channels=3, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.SiLU()
        self.energy = Energy()
        self.fc = nn.Linear(width, 32)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc(self.energy(self.act1(self.conv1(x)))))).squeeze(-1)


class Energy(nn.Module):
    def forward(self, h):
        return torch.log1p(h.pow(2).mean(-1))


def _spins(gen, batch, seed, length=48, channels=3):
    """Gyro traces of a spinning top (deg/s, about unit scale after the 1/1000 the loader
    applies) and the spin's remaining seconds."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        amp = 0.5 + torch.rand(batch, channels, generator=gen)
        f = 0.3 + 0.2 * torch.rand(batch, channels, 1, generator=gen)
        x = amp[:, :, None] * torch.sin(f * t) + 0.1 * torch.randn(
            batch, channels, length, generator=gen
        )
        y = torch.tanh((amp - 1.0) @ w) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    "beyblade_spin_decay_fp16_conv1d_regressor",
    "AdamW",
    "amp_overflow",
    "energy",
    "auto",
    heldout=True,
    onset=120,
    note="an fp16-autocast Conv1d regressor of a spinning top's remaining spin time with a "
    "GradScaler; from step 120 the files come from an updated gyro firmware that already logs "
    "deg/s, the loader's 1/1000 is not applied to them, the traces are 1000x and the "
    "mean-square energy of the conv features overflows fp16 to inf (the same batch is finite "
    "in float32)",
)
def h378_beyblade_fp16_energy_overflow(ctx: Context) -> None:
    gen = seeded(37811)
    model = SpinNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    onset = 120
    seen = {}

    def alter(step, x, y):
        if step >= onset:
            x = x * 1000.0
        if step == onset:
            with torch.no_grad():
                seen["fp32"] = bool(torch.isfinite(model(x)).all())
                with torch.autocast("cpu", dtype=torch.float16):
                    e = model.energy(model.act1(model.conv1(x)))
                seen["fp16_energy_inf"] = bool(torch.isinf(e).any())
        return x, y

    ran = _loop(
        ctx,
        model,
        opt,
        _spins(gen, 32, 378111),
        200,
        F.huber_loss,
        alter=alter,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("finite before step 120", _finite(ls[:onset]))
    ctx.check("the loss fell before step 120", _mean(ls[onset - 10 : onset]) < 0.8 * _mean(ls[:10]))
    ctx.check("the loss is non-finite at step 120", bad == onset)
    ctx.check("the fp16 energy has an inf at step 120", seen.get("fp16_energy_inf", False))
    ctx.check("the same batch is finite in float32", seen.get("fp32", False))
    ctx.check("the run stopped there", ran == onset + 1)


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    "baguette_oven_spring_fp16_silu_huber_regressor",
    "Adamax",
    "healthy",
    heldout=True,
    note="control: a SiLU Huber regressor of a baguette's oven spring from dough readings under "
    "fp16 autocast with a GradScaler, Adamax with a no-decay bias group, accumulation over 2, "
    "ReduceLROnPlateau on a held-out batch, clipping at 1",
)
def h378_baguette_fp16_control(ctx: Context) -> None:
    gen = seeded(37812)
    model = Trunk(9, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    plain = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.Adamax(
        [{"params": decay, "weight_decay": 1e-4}, {"params": plain, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    data = _readings(gen, 64, 9, 378121)
    vx, vy = next(data)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        data,
        150,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("trained: the last 10 steps' loss under 0.8x the first 10", _fell(ctx.losses))


class StaffConv(nn.Module):
    def __init__(self, channels, classes, width=16):
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
    "contact_staff_spin_phase_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier of contact-staff spin phases from wrist IMU traces, "
    "SGD with Nesterov momentum under OneCycleLR, label smoothing 0.1, clipping at 1, noisy "
    "traces",
)
def h378_contact_staff_onecycle_control(ctx: Context) -> None:
    gen = seeded(37813)
    model = StaffConv(3, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 378131, channels=3, noise=0.4),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained: the last 10 steps' loss under 0.8x the first 10", _fell(ctx.losses))
