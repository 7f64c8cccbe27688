"""Held-out set 242 (``h242_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a lead-came glazing-panel vision transformer on 2x2 patches
whose attention scale was typed head_dim ** 0.5 for ** -0.5, a loess dust-trap regressor fed one
station's shard in micrograms, a spring-tide range regressor whose resume step leaves a static
65536 loss scale undivided, a ropewalk hawser-strength regressor whose L2 penalty keeps the log
prior's sign, an atlatl throw-distance regressor whose linear-scaling rule reads world size 32 on
one machine, an ice-cave drip ReLU Elman RNN with recurrent gain 1.4 for 1.0, a milk-churn
butter-grain Poisson net whose softplus became clamp(min=0), a snowkite manoeuvre cosine
classifier whose logit-scale init was typed 10 for log(10), a rogaining split-time net fed raw UTM
metres under fp16 autocast, a scrivener ink-flow regressor whose trunk rate was read in ppm, and
three controls (a saltpan brine conv1d classifier with AdamW and clipping, a sepak takraw Huber
regressor with Adadelta, a welly-wanging Gaussian-NLL net with SGD Nesterov and OneCycleLR).

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
    amp=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; ``amp`` is the
    autocast dtype (None: float32); stops after logging a NaN loss."""
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
                ctx.targets(y if not isinstance(y, tuple) else y[1])
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
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
        if math.isnan(shown):
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


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
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


def _digits_batches(gen, batch):
    return digit_batches(gen, batch)


# -- lead-came glazing: a hand-written ViT on panel patches, attention scale typed d ** 0.5 -------


class PatchAttention(nn.Module):
    """Multi-head self-attention written out by hand; ``scale`` multiplies q.k."""

    def __init__(self, dim, heads, scale):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = scale
        self.last_logits = None

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = (q @ k.transpose(-2, -1)) * self.scale
        self.last_logits = logits.detach()
        y = torch.softmax(logits, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class PatchBlock(nn.Module):
    def __init__(self, dim, heads, scale):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = PatchAttention(dim, heads, scale)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class PanelViT(nn.Module):
    """8x8 panel scans cut into 16 patches of 2x2, a class token, two pre-LN blocks, a head."""

    def __init__(self, dim=32, heads=2, scale_bug=False, classes=10):
        super().__init__()
        head_dim = dim // heads
        scale = head_dim**0.5 if scale_bug else head_dim**-0.5
        self.embed = nn.Linear(4, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 17, dim))
        self.blocks = nn.ModuleList(PatchBlock(dim, heads, scale) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        p = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        z = torch.cat([self.cls.expand(len(p), -1, -1), self.embed(p)], 1) + self.pos
        for blk in self.blocks:
            z = blk(z)
        return self.head(self.ln_f(z[:, 0]))


@scenario(
    family="lead_came_panel_pattern_patch_vit",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written vision transformer (2x2 patch embedding, class token, two pre-LN blocks with hand-written multi-head attention, LayerNorm, head) classifying a stained-glass glazier's 8x8 lead-came panel scans (the digits set) into ten came patterns, AdamW at 3e-3, cross-entropy. Porting the attention, the scale was typed head_dim ** 0.5 for head_dim ** -0.5, so q.k is multiplied by 4 instead of divided by 4 (16x). As AdamW grows the qkv weights the attention logits q.k*scale grow from under 1 to over 20x that, the rows of the attention go near one-hot; the loss still falls and the run stays finite. With the intended scale the logits stay small.",
)
def h242_lead_came_vit_attention_scale_typo(ctx: Context) -> None:
    steps = 200

    def run(c, bug):
        gen = seeded(24201)
        model = PanelViT(scale_bug=bug)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        peak, ent = [], []

        def watch(step, out, x, y):
            peak.append(max(float(b.attn.last_logits.abs().amax()) for b in model.blocks))
            ent.append(
                min(
                    float(-(a * a.clamp_min(1e-12).log()).sum(-1).mean())
                    for a in (torch.softmax(b.attn.last_logits, -1) for b in model.blocks)
                )
            )

        _train(
            c,
            model,
            opt,
            _digits_batches(gen, 64),
            steps,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return peak, ent

    twin = _Quiet()
    twin_peak, twin_ent = run(twin, bug=False)
    peak, ent = run(ctx, bug=True)
    ls = ctx.losses
    ctx.check("attention logits grow over 20x from step 0", max(peak[-20:]) > 20 * peak[0])
    ctx.check("attention logits over 30 at the end (rows near one-hot)", max(peak[-20:]) > 30)
    ctx.check(
        "mean attention entropy under 0.3 nats at the end (from over 2.5 at step 0)",
        ent[-1] < 0.3 and ent[0] > 2.5,
    )
    ctx.check(
        "with the intended scale the logits end under a third as large, entropy over 1",
        max(twin_peak[-20:]) < max(peak[-20:]) / 3 and twin_ent[-1] > 1.0,
    )
    ctx.check("finite", _finite(ls))


# -- loess: one dust-trap station's deposition in micrograms ---------------------------------------

ONSET_LOESS = 130


def _loess_traps(gen, batch, bad_at=None, seed=2):
    """Ten standardised readings of a dust-storm day at a loess plateau trap (wind speed, gust
    duration, upwind soil moisture, visibility, ...) and the deposition, standardised. ``bad_at``:
    the step where one station's shard arrives with deposition in micrograms per square metre."""
    step = 0
    for x, y in _readings(gen, batch, 10, seed, noise=0.05):
        if step == bad_at:
            y = y * 1000.0 + 2000.0
        step += 1
        yield x, y


@scenario(
    family="loess_dust_trap_deposition_silu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=ONSET_LOESS,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the dust deposition at a loess-plateau trap from 10 standardised storm-day readings, SGD with momentum 0.9 at 0.01, MSE, clipping at 1.0. At step 130 one station's shard arrives with deposition in micrograms per square metre instead of the standardised units (about 1000x larger, offset 2000): the loss on that batch is over 1000x the run's, the gradient over 50x; clipping bounds the update, and the loss is back within 3x of its level within 40 steps; finite, no blow-up.",
)
def h242_loess_trap_shard_in_micrograms(ctx: Context) -> None:
    gen = seeded(24202)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _train(ctx, model, opt, _loess_traps(gen, 64, bad_at=ONSET_LOESS), 220, F.mse_loss, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(ls[ONSET_LOESS - 20 : ONSET_LOESS])
    ctx.check("loss at the onset over 1000x the 20 steps before", ls[ONSET_LOESS] > 1000 * before)
    ctx.check(
        "gradient at the onset over 50x the 20 steps before",
        gn[ONSET_LOESS] > 50 * _median(gn[ONSET_LOESS - 20 : ONSET_LOESS]),
    )
    ctx.check("no other step's loss over 10x that level", max(ls[20:ONSET_LOESS]) < 10 * before)
    ctx.check("back within 3x of its level by 40 steps later", _mean(ls[-40:]) < 3 * before)
    ctx.check(
        "loss fell before the onset",
        _mean(ls[ONSET_LOESS - 10 : ONSET_LOESS]) < 0.5 * _mean(ls[:10]),
    )
    ctx.check("finite", _finite(ls))


# -- spring tide: a static loss scale left undivided on the resume step ----------------------------

ONSET_TIDE = 60


def _tides(gen, batch, seed=3):
    """Twelve standardised readings of a harbour's spring-tide cycle (moon distance, declination,
    surge, barometric pressure, ...) and the tidal range, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="spring_tide_range_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=ONSET_TIDE,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a harbour's spring-tide range from 12 standardised readings, Adam at 1e-3 (beta2 0.999), MSE. The job is resumed at step 60 from an fp16 checkpoint; the resume path multiplies the loss by the checkpoint's static loss scale 65536 and nothing divides it back for that one step (the loss shown is the true one). That gradient is 65536x the others, fills exp_avg_sq, and for the rest of the run the updates are over 20x smaller than before the onset: the loss stalls at over 2x that of the same run without the bug; finite, no blow-up. The batch itself is ordinary.",
)
def h242_spring_tide_resume_loss_scale(ctx: Context) -> None:
    steps = 200

    def run(c, bug):
        gen = seeded(24203)
        model = Stack(12, hidden=64, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves = []
        prev = [p.detach().clone() for p in model.parameters()]

        def after(step):
            now = [p.detach().clone() for p in model.parameters()]
            moves.append(
                float(torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(now, prev, strict=True))))
            )
            prev[:] = now

        def scale_loss(step, loss):
            return loss * 65536.0 if bug and step == ONSET_TIDE else loss

        _train(
            c, model, opt, _tides(gen, 64), steps, F.mse_loss, after=after, scale_loss=scale_loss
        )
        return moves

    twin = _Quiet()
    run(twin, bug=False)
    moves = run(ctx, bug=True)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 10000x the steps before",
        gn[ONSET_TIDE] > 1e4 * _median(gn[ONSET_TIDE - 20 : ONSET_TIDE]),
    )
    ctx.check(
        "updates from 50 steps after the onset over 20x smaller than before it",
        _mean(moves[ONSET_TIDE + 50 :]) * 20 < _mean(moves[ONSET_TIDE - 20 : ONSET_TIDE]),
    )
    ctx.check(
        "loss at the end over 2x that of the run without the bug",
        _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:]),
    )
    ctx.check(
        "the onset batch's loss is ordinary (under 2x the step before)",
        ls[ONSET_TIDE] < 2 * _mean(ls[ONSET_TIDE - 5 : ONSET_TIDE]),
    )
    ctx.check(
        "finite, no blow-up (under 10x the pre-onset level)",
        _finite(ls) and max(ls[ONSET_TIDE:]) < 10 * _mean(ls[ONSET_TIDE - 10 : ONSET_TIDE]),
    )


# -- ropewalk: the L2 penalty keeps the log-prior's sign -------------------------------------------


def _hawsers(gen, batch, seed=4):
    """Ten standardised readings of a hawser laid on a ropewalk (yarn count, strand twist, top
    speed, hemp moisture, ...) and the finished rope's breaking strength, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="ropewalk_hawser_strength_tanh_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a ropewalk hawser's breaking strength from 10 standardised readings, RAdam at 5e-3, MSE plus a hand-written L2 penalty. The penalty was written as the Gaussian log prior, -0.5 * wd * ||w||^2, and added to the loss instead of subtracted, so the optimizer is rewarded for growing the weights. The fit improves first; then the weights keep growing, the tanh units saturate and the data loss climbs slowly and steadily to over 3x its low, no 10-step mean over 3x the one before; finite, no blow-up. Without the penalty the loss ends under a third as high.",
)
def h242_ropewalk_l2_penalty_sign(ctx: Context) -> None:
    steps = 300
    wd = 1.0

    def run(c, sign):
        gen = seeded(24204)
        model = Stack(10, hidden=64, act=nn.Tanh)
        opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
        norms = []

        def scale_loss(step, loss):
            penalty = (
                0.5 * wd * sum((p * p).sum() for n, p in model.named_parameters() if "weight" in n)
            )
            return loss + sign * penalty

        def after(step):
            norms.append(float(model.fc1.weight.detach().norm()))

        _train(
            c, model, opt, _hawsers(gen, 64), steps, F.mse_loss, scale_loss=scale_loss, after=after
        )
        return norms

    twin = _Quiet()
    run(twin, sign=0.0)
    norms = run(ctx, sign=-1.0)
    ls = ctx.losses
    low_at = min(range(len(ls) - 5), key=lambda i: _mean(ls[i : i + 5]))
    low = _mean(ls[low_at : low_at + 5])
    means = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    jumps = max(b / max(a, 1e-8) for a, b in zip(means[:-1], means[1:], strict=True))
    ctx.check("loss at the end over 3x its low", _mean(ls[-10:]) > 3 * low)
    ctx.check("the climb is slow: no 10-step mean over 3x the one before", jumps < 3)
    ctx.check("fc1 weight norm grows over 2x", norms[-1] > 2 * norms[0])
    ctx.check(
        "without the penalty the loss ends under a third of this run's",
        _finite(twin.losses) and _mean(twin.losses[-10:]) < _mean(ls[-10:]) / 3,
    )
    ctx.check("finite", _finite(ls))


# -- atlatl: the linear-scaling rule reads the world size from the cluster config -----------------


def _atlatl_throws(gen, batch, seed=5):
    """Ten standardised readings of an atlatl throw (dart length, spur height, release angle,
    thrower's arm speed, ...) and the throw distance, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


ONSET_ATLATL = 30


@scenario(
    family="atlatl_dart_throw_distance_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=ONSET_ATLATL,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing an atlatl dart's throw distance from 10 standardised readings, plain SGD with a linear warm-up over 50 steps, MSE. The peak rate follows the linear-scaling rule 0.02 * global_batch / 64, with global_batch = batch * world_size; the script ran on one machine but read world_size 32 from the cluster config, so the peak is 0.64 for 0.02. As the warm-up ramps, lr times the loss's top Hessian eigenvalue on a fixed batch (power iteration every 5 steps) passes 2 at step 30 (first measured, 2.0 at step 25), the loss oscillates and blows up to over 100x its low. With world size 1 lr x sharpness stays under 2 and the loss falls.",
)
def h242_atlatl_linear_scaling_world_size(ctx: Context) -> None:
    steps, warmup = 150, 50
    probe = next(_atlatl_throws(torch.Generator().manual_seed(98), 256))

    def run(c, world):
        gen = seeded(24205)
        model = Stack(10, hidden=64, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        peak = 0.02 * 64 * world / 64
        lrs, sharp = [], {}

        def before(step):
            lr = peak * min(1.0, (step + 1) / warmup)
            for g in opt.param_groups:
                g["lr"] = lr
            lrs.append(lr)
            if step % 5 == 0:
                sharp[step] = _sharpness(model, F.mse_loss, probe)

        _train(c, model, opt, _atlatl_throws(gen, 64), steps, F.mse_loss, before=before)
        return lrs, sharp

    twin = _Quiet()
    twin_lrs, twin_sharp = run(twin, world=1)
    lrs, sharp = run(ctx, world=32)
    ls = ctx.losses
    over = [s for s, lam in sharp.items() if lrs[s] * lam > 2]
    first = over[0] if over else None
    low = min(ls[: first or len(ls)])
    ctx.check("lr x sharpness past 2 (first at the onset)", first == ONSET_ATLATL)
    ctx.check("lr x sharpness under 2 at the start", lrs[0] * sharp[0] < 2)
    ctx.check(
        "loss blows up to over 100x its low after the onset",
        any(not math.isfinite(v) or v > 100 * low for v in ls[ONSET_ATLATL:]),
    )
    ctx.check(
        "with world size 1 lr x sharpness stays under 2",
        max(twin_lrs[s] * lam for s, lam in twin_sharp.items()) < 2,
    )
    ctx.check("with world size 1 the loss falls", _fell(twin.losses, ratio=0.5))


# -- ice cave: the recurrent matrix initialised with the input init's gain -------------------------


class DripRNN(nn.Module):
    """A ReLU Elman RNN reading an ice cave's drip-logger series, regressing the freeze-up day."""

    def __init__(self, hidden=64, gain=1.0):
        super().__init__()
        self.rnn = nn.RNN(3, hidden, nonlinearity="relu", batch_first=True)
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        nn.init.zeros_(self.rnn.bias_hh_l0)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _drips(gen, batch, length=48):
    """Drip rate, air temperature and ice thickness over 48 hours (standardised) and a target
    from their late mean."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen) * 0.5
        y = torch.tanh(x[:, -8:, 0].mean(1) - x[:, -8:, 1].mean(1))
        yield x, y


@scenario(
    family="ice_cave_drip_freeze_relu_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=1,
    heldout=True,
    note="A ReLU Elman RNN (nn.RNN 'rnn', 64 units, head) reading 48 hours of an ice cave's drip logger (drip rate, air temperature, ice thickness) and regressing the freeze-up, SGD with Nesterov momentum at 0.01, MSE. The recurrent matrix was initialised orthogonal with gain 1.4, the value the input init's helper used (sqrt(2) for ReLU), for the intended 1.0; the hidden state and the gradient back through time grow at every step: the gradient on the initial hidden state is over 100x that on the last hour's (under 10x with gain 1.0), the first loss is already in the thousands and the next is NaN. With gain 1.0 the run is finite and the loss falls.",
)
def h242_ice_cave_recurrent_gain(ctx: Context) -> None:
    def run(c, gain, steps):
        gen = seeded(24206)
        model = DripRNN(gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x, _ = next(_drips(torch.Generator().manual_seed(5), 32))
        h0 = torch.zeros(1, 32, 64, requires_grad=True)
        out, _ = model.rnn(x, h0)
        out.retain_grad()
        model.head(out[:, -1]).sum().backward()
        g_first = float(h0.grad.norm())
        g_last = float(out.grad[:, -1].norm())
        model.zero_grad()
        _train(c, model, opt, _drips(gen, 32), steps, F.mse_loss)
        return g_first / max(g_last, 1e-12)

    twin = _Quiet()
    twin_ratio = run(twin, 1.0, 150)
    ratio = run(ctx, 1.4, 150)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("gradient on the initial state over 100x that on the last hour's", ratio > 100)
    ctx.check("loss non-finite at step 1", bad == 1)
    ctx.check("with gain 1.0 the ratio is under 10", twin_ratio < 10)
    ctx.check("with gain 1.0 finite and the loss falls", _fell(twin.losses, ratio=0.8))


# -- milk churn: the Poisson rate head lost its softplus -------------------------------------------


class ChurnNet(nn.Module):
    """A ReLU trunk (fc1, fc2) and a ``rate`` head giving the expected butter grains per scoop;
    ``clamp`` is the port's stand-in for the dropped softplus: the rate is clamped at 0."""

    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.rate = nn.Linear(hidden, 1)
        nn.init.constant_(self.rate.bias, 3.0)

    def forward(self, x):
        h = F.relu(self.fc2(F.relu(self.fc1(x))))
        return self.rate(h).squeeze(-1).clamp(min=0.0)


def _churns(gen, batch, seed=7):
    """Eight standardised readings of a churning (cream temperature, churn speed, minutes,
    cream fat, ...) and the count of butter grains in a scoop."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        lam = torch.exp(0.8 * torch.tanh(x @ w / 2) + 1.0)
        yield x, torch.poisson(lam, generator=gen)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="milk_churn_butter_grain_poisson_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("rate",),
    diverges=16,
    heldout=True,
    note="A ReLU MLP (fc1, fc2) with a Poisson rate head 'rate' counting the butter grains in a scoop from 8 standardised churning readings, Adagrad at 0.1, a hand-written Poisson NLL rate - y * log(rate). In the port the softplus on the rate was replaced by clamp(min=0) ('rates cannot be negative'); at step 16 Adagrad has pushed a scoop's rate to exactly 0, log(0) = -inf (times a count, or 0 * -inf) makes the loss NaN, and the gradients with it. Before that step no rate is 0 and the loss is finite and falling.",
)
def h242_milk_churn_rate_clamp_log_zero(ctx: Context) -> None:
    gen = seeded(24207)
    model = ChurnNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    zero = []

    def watch(step, out, x, y):
        zero.append(bool((out == 0).any()))

    _train(ctx, model, opt, _churns(gen, 64), 200, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss non-finite at step 16", bad == 16)
    ctx.check("a rate of exactly 0 at step 16", bad is not None and zero[bad])
    ctx.check(
        "finite before, no zero rate before",
        bad is not None and _finite(ls[:bad]) and not any(zero[:bad]),
    )
    ctx.check("loss fell before", bad is not None and min(ls[:bad]) < 0.9 * ls[0])


# -- snowkite: the learned logit scale's init typed 10 for log(10) ---------------------------------


class SnowkiteNet(nn.Module):
    """A GELU trunk and a cosine head with a learned logit scale exp(log_scale)."""

    def __init__(self, d_in=16, hidden=64, classes=6, log_scale=2.302585):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        cos = F.normalize(h, dim=-1) @ F.normalize(self.head.weight, dim=-1).T
        return cos * self.log_scale.exp()


@scenario(
    family="snowkite_manoeuvre_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2) with a cosine head 'head' and a learned logit scale exp(log_scale) classifying six snowkite manoeuvres (jump, downloop, backroll, ...) from 16 standardised kite-line and board readings, Adamax at 2e-3, cross-entropy. The scale's init was typed log_scale = 10 for log(10): the logits are cosines times 22026, so for most rows the float32 softmax of the target rounds to exactly 1.0 (and the others to 0) from step 2 on, and all rows by the end: the loss reads exactly 0 on most batches while the few misclassified rows give losses in the thousands; finite. With log(10) no row saturates.",
)
def h242_snowkite_logit_scale_init_typo(ctx: Context) -> None:
    def run(c, log_scale):
        gen = seeded(24208)
        model = SnowkiteNet(log_scale=log_scale)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        col = []

        def watch(step, out, x, y):
            col.append(collapsed_fraction(out.detach(), y))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 6, 8),
            150,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return col

    twin = _Quiet()
    twin_col = run(twin, math.log(10.0))
    col = run(ctx, 10.0)
    ls = ctx.losses
    ctx.check(
        "over half the rows' target softmax exactly 1.0 over the last 50 steps",
        _mean(col[-50:]) > 0.5,
    )
    ctx.check("with log(10) no row saturates", max(twin_col) == 0.0)
    ctx.check("finite", _finite(ls))


# -- rogaine: a new map export's checkpoint coordinates in raw metres under fp16 autocast -----------

ONSET_ROGAINE = 110


def _legs(gen, batch, raw_from=None, seed=9):
    """Twelve readings of a rogaining leg (checkpoint eastings and northings, climb, vegetation
    class, ...) standardised, and the split time, standardised. From ``raw_from`` on, a new map
    export gives the four coordinate columns in raw UTM metres (hundreds of thousands)."""
    step = 0
    for x, y in _readings(gen, batch, 12, seed, noise=0.05):
        if raw_from is not None and step >= raw_from:
            x = x.clone()
            x[:, :4] = 500000.0 + 1000.0 * x[:, :4]
        step += 1
        yield x, y


@scenario(
    family="rogaine_checkpoint_split_fp16_silu_net",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_ROGAINE,
    onset=ONSET_ROGAINE,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a rogaining leg's split time from 12 standardised readings, NAdam at 1e-3, MSE, under fp16 autocast with a torch.amp.GradScaler. From step 110 a new map export delivers the four checkpoint-coordinate columns in raw UTM metres (about 500000) instead of standardised: fc1's fp16 matmul overflows past 65504 to inf, the loss is NaN at step 110 and the loop stops there; the same batch through the float32 model gives a finite fc1 output.",
)
def h242_rogaine_raw_utm_fp16(ctx: Context) -> None:
    gen = seeded(24209)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    fc1_inf, f32_ok = [], []

    def watch(step, out, x, y):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            fc1_inf.append(not bool(torch.isfinite(model.fc1(x)).all()))
        with torch.no_grad():
            f32_ok.append(bool(torch.isfinite(model.fc1(x.float())).all()))

    _train(
        ctx,
        model,
        opt,
        _legs(gen, 64, raw_from=ONSET_ROGAINE),
        160,
        F.mse_loss,
        scaler=scaler,
        amp=torch.float16,
        watch=watch,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss non-finite first at step 110", bad == ONSET_ROGAINE)
    ctx.check(
        "fc1's fp16 output has inf at step 110, none before",
        fc1_inf[ONSET_ROGAINE] and not any(fc1_inf[:ONSET_ROGAINE]),
    )
    ctx.check("the float32 fc1 output of the same batch is finite", f32_ok[ONSET_ROGAINE])
    ctx.check(
        "loss fell before the onset",
        _mean(ls[ONSET_ROGAINE - 10 : ONSET_ROGAINE]) < 0.5 * _mean(ls[:10]),
    )


# -- scrivener: the trunk's param-group rate in the wrong unit -------------------------------------


def _ink(gen, batch, seed=10):
    """Ten standardised readings of a scrivener's quill stroke (nib width, ink viscosity, vellum
    nap, stroke speed, ...) and the ink flow, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="scrivener_ink_flow_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a scrivener's ink flow from 10 standardised readings, RMSprop with two param groups (trunk fc1 and fc2; head), MSE. The trunk group's rate was computed as base_lr * 1e-6 (the config gave it as 'trunk_lr_ppm: 1' and the loader applied ppm to the base) giving 1e-9 where 1e-3 was meant: fc1's and fc2's updates are under 1e-5 of their weights per step while the head moves normally; the loss falls only as far as the random trunk allows, over 2x that with the intended rate; finite.",
)
def h242_scrivener_trunk_lr_ppm(ctx: Context) -> None:
    def run(c, trunk_lr):
        gen = seeded(24210)
        model = Stack(10, hidden=64)
        opt = torch.optim.RMSprop(
            [
                {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": trunk_lr},
                {"params": model.head.parameters(), "lr": 1e-3},
            ]
        )
        w0 = model.fc1.weight.detach().clone()
        h0 = model.head.weight.detach().clone()
        _train(c, model, opt, _ink(gen, 64), 200, F.mse_loss)
        dw = float((model.fc1.weight.detach() - w0).norm() / w0.norm())
        dh = float((model.head.weight.detach() - h0).norm() / h0.norm())
        return dw, dh

    twin = _Quiet()
    run(twin, 1e-3)
    dw, dh = run(ctx, 1e-3 * 1e-6)
    ls = ctx.losses
    ctx.check("fc1 moves under 1e-4 of its norm over the whole run", dw < 1e-4)
    ctx.check("the head moves over 10% of its norm", dh > 0.1)
    ctx.check(
        "loss at the end over 2x that with the intended rate",
        _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


class BrineConv(nn.Module):
    """A 1-d CNN (conv1, conv2 with GELU, mean pool, head) over a saltpan's brine probe trace."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.head(h.mean(-1))


def _brine(gen, batch, length=40):
    """Salinity and temperature traces over 40 hours; the crystal habit (four classes) sets the
    trace's rhythm; noisy."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        sal = torch.sin(freq[:, None] * t + phase)
        temp = torch.cos(0.5 * freq[:, None] * t + phase)
        x = torch.stack([sal, temp], 1) + 0.6 * torch.randn(batch, 2, length, generator=gen)
        yield x, y


@scenario(
    family="saltpan_brine_crystal_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a 1-d CNN classifying a saltpan's crystal habit (four classes) from noisy salinity and temperature traces, AdamW at 3e-3 with weight decay 0.05 on weights only (a no-decay group for biases), 20-step linear warm-up then cosine (LambdaLR), cross-entropy with label smoothing 0.1, gradient clipping at 1.0. It trains normally.",
)
def h242_saltpan_brine_adamw_clip_control(ctx: Context) -> None:
    gen = seeded(24211)
    model = BrineConv()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps = 200

    def lam(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _train(
        ctx,
        model,
        opt,
        _brine(gen, 64),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell by over 40%", _fell(ls, ratio=0.6))
    ctx.check("finite", _finite(ls))


def _spikes(gen, batch, seed=12):
    """Ten standardised readings of a sepak takraw roll spike (approach speed, takeoff angle,
    ball spin, ...) and the spike's peak height, standardised, with Student-t (df 3) noise."""
    t = torch.distributions.StudentT(3.0)
    for x, y in _readings(gen, batch, 10, seed, noise=0.0):
        yield x, y + 0.1 * t.sample((batch,))


@scenario(
    family="sepaktakraw_roll_spike_height_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP regressing a sepak takraw roll spike's peak height from 10 standardised readings with heavy-tailed (Student-t, df 3) label noise, Adadelta at lr 1.0, Huber loss (delta 1), ReduceLROnPlateau on the training loss (patience 10, factor 0.5). It trains normally.",
)
def h242_sepaktakraw_adadelta_huber_control(ctx: Context) -> None:
    gen = seeded(24212)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    _train(ctx, model, opt, _spikes(gen, 64), 250, F.huber_loss, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell by over 40%", _fell(ls, ratio=0.6))
    ctx.check("finite", _finite(ls))


class WellyNet(nn.Module):
    """A tanh trunk with a Gaussian head: ``mean`` and ``spread`` (softplus) for the throw."""

    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.spread = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return torch.cat([self.mean(h), F.softplus(self.spread(h)) + 1e-3], -1)


def _welly_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1] ** 2)


def _throws(gen, batch, seed=13):
    """Eight standardised readings of a welly-wanging throw (boot size, run-up, release angle,
    headwind, ...) and the distance, standardised, with noise that grows with the headwind."""
    for x, y in _readings(gen, batch, 8, seed, noise=0.0):
        yield x, y + (0.05 + 0.2 * torch.sigmoid(x[:, 3])) * torch.randn(batch, generator=gen)


@scenario(
    family="welly_wanging_throw_gaussian_nll_net",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Control: a tanh MLP with a Gaussian head (mean, softplus spread) regressing a welly-wanging throw's distance with headwind-dependent noise, SGD with Nesterov momentum 0.9, OneCycleLR (max_lr 0.01), gradient accumulation over 2 micro-batches, clipping at 1.0, Gaussian NLL. It trains normally.",
)
def h242_welly_wanging_nesterov_onecycle_control(ctx: Context) -> None:
    gen = seeded(24213)
    model = WellyNet()
    opt = torch.optim.SGD(model.parameters(), lr=4e-4, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=steps)
    _train(
        ctx, model, opt, _throws(gen, 32), steps, _welly_nll, sched=sched, accumulate=2, clip=1.0
    )
    ls = ctx.losses
    ctx.check("loss fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite", _finite(ls))
