"""Held-out set 450 (``h450_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: an assay-office hallmark-punch digit reader (a hand-written vision transformer over the
8x8 digits, 2x2 patches and a class token) whose AdamW lr is typed 3e-2 for 3e-4 with no
weight decay (the attention logits grow), a bell-rope sally-length Huber regressor fed one shard
in millimetres for metres (one corrupted batch), a sheep-shearing tally regressor whose restart
loads a checkpoint without the head's keys (strict=False, a one-off loss spike it recovers
from), a hay-rake windrow-width regressor whose hand-written decoupled weight decay multiplies
by (1 + lr * wd) for (1 - lr * wd) (a slow climb), a canal-lock fill-time Elman RNN whose
recurrent init gain is typed 3 for 1 (gradients grow back through time), a dry-stone-wall
batter log-share regressor that takes log(count / total) of an empty bin at step 120 (log 0,
a NaN loss), a pipe-organ reed-voicing two-group regressor whose body group's lr is typed 1e-9
for 1e-2 (frozen under Adagrad), a hurling-sliotar cosine classifier whose scale is typed 3000
for 30 (softmax saturates), a boomerang-return classifier fed raw logits to nll_loss (the head's
logits grow without bound) and a snow-avalanche runout regressor whose sum-loss is divided by the
previous tail batch's row count at the epoch boundary (one gradient burst).

Controls: a cormorant-fishing catch-digit vision transformer fine-tuned with layer-wise lr
decay, a frozen patch embedding and an EMA of the weights; an fp16 beekeeping-smoker multi-label
BCE net (GradScaler, Adam under OneCycleLR, clipping); a mangrove-tide Gaussian-NLL regressor
(SGD momentum with a linear warm-up then ReduceLROnPlateau, accumulation over 2).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, digit_batches, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


# -- a hand-written vision transformer over the 8x8 digits -----------------------------------------


class _Attention(nn.Module):
    """Multi-head self-attention written out, keeping the largest |q.k/sqrt(d)| it computed."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        self.max_logit = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _ViTBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class _DigitViT(nn.Module):
    """8x8 digits cut into sixteen 2x2 patches, a class token, learnt positions, pre-LN blocks."""

    def __init__(self, dim=32, heads=2, depth=2, classes=10):
        super().__init__()
        self.patch_embed = nn.Linear(4, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 17, dim))
        self.blocks = nn.ModuleList(_ViTBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        b = x.shape[0]
        p = x.reshape(b, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(b, 16, 4)
        z = torch.cat([self.cls_token.expand(b, -1, -1), self.patch_embed(p)], 1) + self.pos
        for block in self.blocks:
            z = block(z)
        return self.head(self.norm(z[:, 0]))


def _max_attn(model):
    return max(block.attn.max_logit for block in model.blocks)


# -- faults ----------------------------------------------------------------------------------------


HALLMARK_LR = 3e-2


@scenario(
    family="assay_hallmark_punch_digit_patch_vit",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Assay-office hallmark-punch digit reader (a hand-written vision transformer over "
    "the 8x8 digits: 2x2 patches, a class token, learnt positions, two pre-LN blocks, "
    "cross-entropy, AdamW). The lr is typed 3e-2 for 3e-4 and weight_decay left at 0, with no "
    "qk-norm: the query and key weights grow and the attention logits q.k/sqrt(d) climb far "
    "past those of the same model at 3e-4, the attention saturating.",
)
def h450_hallmark_punch_vit_attention(ctx) -> None:
    def run(lr, c, steps=150):
        gen = seeded(4501)
        model = _DigitViT()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        trace = []
        _loop(
            c,
            model,
            opt,
            digit_batches(gen, 64),
            steps,
            F.cross_entropy,
            classifier=True,
            after=lambda s: trace.append(_max_attn(model)),
            attach=c is not None,
        )
        return trace

    ref = run(3e-4, None)
    trace = run(HALLMARK_LR, ctx)
    early = _mean(trace[:5])
    ctx.check("max attention logit over 20x its first steps'", _mean(trace[-10:]) > 20 * early)
    ctx.check(
        "max attention logit over 5x the 3e-4 run's at the end",
        _mean(trace[-10:]) > 5 * _mean(ref[-10:]),
    )
    ctx.check("attention logits over 15 at the end", _mean(trace[-10:]) > 15)
    ctx.check("loss finite", _finite(ctx.losses))


SALLY_STEP = 110


@scenario(
    family="bell_rope_sally_length_huber_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SALLY_STEP,
    note="Bell-ringing rope sally-length regressor (ReLU MLP on tower and rope features, Huber, "
    "ASGD, clipping at 1). One shard exported at step 110 has its rope measurements in "
    "millimetres for metres: one corrupted batch, the loss and gradient jump for that step and "
    "the run recovers.",
)
def h450_bell_rope_mm_shard(ctx) -> None:
    gen = seeded(4502)
    model = _Net(8, 48, 1)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == SALLY_STEP:
            return x * 1000.0, y
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=452),
        200,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    before = _median(losses[SALLY_STEP - 20 : SALLY_STEP])
    ctx.check("loss at the shard over 50x the median before", losses[SALLY_STEP] > 50 * before)
    ctx.check(
        "gradient at the shard over 20x the median before",
        norms[SALLY_STEP] > 20 * _median(norms[SALLY_STEP - 20 : SALLY_STEP]),
    )
    ctx.check(
        "recovers: last 20 steps under 2x the median before", _mean(losses[-20:]) < 2 * before
    )
    ctx.check("finite throughout", _finite(losses))


SHEAR_RESTART = 140


@scenario(
    family="sheep_shearing_tally_restart_gelu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SHEAR_RESTART,
    note="Sheep-shearing daily-tally regressor (GELU MLP on shearer and flock features, MSE, "
    "NAdam). A pre-emption restart at step 140 loads a checkpoint saved without the head's keys "
    "with strict=False, so the head comes back freshly initialised: the loss jumps once and the "
    "run trains back down, with no bad batch, no gradient bug and no instability behind it.",
)
def h450_sheep_shearing_restart(ctx) -> None:
    gen = seeded(4503)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    fresh = copy.deepcopy(model.head.state_dict())

    def before(step):
        if step == SHEAR_RESTART:
            state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
            model.load_state_dict(state, strict=False)
            model.head.load_state_dict(fresh)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, seed=453, scale=3.0), 260, F.mse_loss, before=before
    )
    med = _median(losses[SHEAR_RESTART - 20 : SHEAR_RESTART])
    ctx.check("loss at the restart over 3x the median before", losses[SHEAR_RESTART] > 3 * med)
    ctx.check(
        "back under 2x within 80 steps",
        min(losses[SHEAR_RESTART + 1 : SHEAR_RESTART + 80]) < 2 * med,
    )
    ctx.check("finite throughout", _finite(losses))


HAY_WD = 0.1


@scenario(
    family="hay_rake_windrow_width_decay_sign_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Hay-rake windrow-width regressor (ReLU MLP on rake and crop features, MSE, plain SGD, "
    "clipping at 1). The hand-written decoupled weight decay after each step multiplies the weights by "
    "(1 + lr * wd) instead of (1 - lr * wd): the loss falls at first, then the weights inflate "
    "and the loss climbs slowly, with no spike, no NaN and no single bad step.",
)
def h450_hay_rake_decay_sign(ctx) -> None:
    gen = seeded(4504)
    model = _Net(10, 48, 1)
    lr = 0.05
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    start = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * HAY_WD)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, seed=454), 300, F.mse_loss, after=after, clip=1.0
    )
    end = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    low = min(losses)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over the last 20 steps over 3x its lowest", _mean(losses[-20:]) > 3 * low)
    ctx.check("the lowest loss comes in the first half", losses.index(low) < 150)
    ctx.check(
        "climbing through the second half", _mean(losses[-20:]) > 1.5 * _mean(losses[150:170])
    )
    ctx.check("weight norm over 2x its start", end > 2 * start)


class _Elman(nn.Module):
    """An Elman RNN written by hand, reading the lock's sensors step by step."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.hh.weight, gain=gain)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h = torch.tanh(self.ih(x[:, t]) + self.hh(h))
        return self.head(h).squeeze(-1)


def _lock_levels(gen, batch, steps=30):
    while True:
        x = torch.randn(batch, steps, 4, generator=gen)
        y = torch.tanh(x[:, :, 0].mean(1) * 2) + 0.5 * x[:, -5:, 1].mean(1)
        yield x, y


LOCK_GAIN = 3.0


@scenario(
    family="canal_lock_fill_time_elman_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("hh",),
    diverges=None,
    heldout=True,
    note="Canal-lock fill-time regressor (a hand-written Elman RNN over 30 sluice and level "
    "readings, MSE, RMSprop, clipping at 1). The orthogonal init of the recurrent weights is "
    "called with gain=3.0 typed for 1.0: the gradient grows back through time, the first "
    "reading's input gradient many times the last's.",
)
def h450_canal_lock_recurrent_gain(ctx) -> None:
    def build(gain):
        torch.manual_seed(4505)
        return _Elman(gain=gain)

    def through_time(m, x, y):
        x = x.clone().requires_grad_(True)
        m.zero_grad()
        F.mse_loss(m(x), y).backward()
        g = x.grad.norm(dim=(0, 2))
        m.zero_grad()
        return float(g[0] / g[-1].clamp_min(1e-12))

    gen = seeded(4505)
    batches = _lock_levels(gen, 64)
    x0, y0 = next(batches)
    ref = through_time(build(1.0), x0, y0)
    model = build(LOCK_GAIN)
    bad = through_time(model, x0, y0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    losses, norms = _loop(ctx, model, opt, batches, 120, F.mse_loss, clip=1.0)
    ctx.check("first reading's gradient over 20x the last's at gain 3", bad > 20)
    ctx.check("under 5x at gain 1", ref < 5)
    ctx.check("gradient norm over 10 in the first steps", _median(norms[:10]) > 10)
    ctx.check("loss finite", _finite(losses))


class _LogShare(nn.Module):
    """Turns stone-size counts into log shares, log(count / total), with no floor."""

    def forward(self, x):
        return torch.log(x / x.sum(-1, keepdim=True))


class _Batter(nn.Module):
    def __init__(self, bins=12, hidden=48):
        super().__init__()
        self.logshare = _LogShare()
        self.fc1 = nn.Linear(bins, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.logshare(x)))).squeeze(-1)


def _stone_counts(gen, batch, bins=12):
    while True:
        rate = 5 + 20 * torch.rand(batch, bins, generator=gen)
        counts = torch.poisson(rate, generator=gen) + 1.0
        share = counts / counts.sum(-1, keepdim=True)
        yield counts, 10 * (share[:, :4].sum(-1) - share[:, -4:].sum(-1))


BATTER_STEP = 120


@scenario(
    family="dry_stone_wall_batter_log_share_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("logshare",),
    diverges=BATTER_STEP,
    heldout=True,
    onset=BATTER_STEP,
    note="Dry-stone-wall batter regressor (SiLU MLP on log shares of stone-size counts, MSE, "
    "Adamax). The log-share layer takes log(count / total) with no floor; at step 120 a survey "
    "with an empty size bin arrives (a count of 0), log(0) = -inf in the input and the loss is "
    "NaN at that step.",
)
def h450_dry_stone_log_zero(ctx) -> None:
    gen = seeded(4506)
    model = _Batter()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == BATTER_STEP:
            x = x.clone()
            x[3, 5] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, _stone_counts(gen, 64), 200, F.mse_loss, alter=alter)
    ctx.check("finite before the empty bin", _finite(losses[:BATTER_STEP]))
    ctx.check(
        "loss non-finite at the empty bin",
        len(losses) > BATTER_STEP and not math.isfinite(losses[BATTER_STEP]),
    )
    ctx.check(
        "trained before it", _mean(losses[BATTER_STEP - 10 : BATTER_STEP]) < _mean(losses[:10])
    )


@scenario(
    family="pipe_organ_reed_voicing_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Pipe-organ reed-voicing regressor (ReLU MLP on tongue, shallot and wind-pressure "
    "features, MSE, Adagrad with two param groups). The body group's lr is typed 1e-9 for "
    "1e-2: fc1 and fc2 stay frozen at their init while only the head learns, the loss "
    "settling high.",
)
def h450_organ_reed_group_typo(ctx) -> None:
    gen = seeded(4507)
    model = _Net(10, 48, 1)
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adagrad(
        [{"params": body, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-2}]
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, seed=457), 200, F.mse_loss)
    moves = {n: _rel_change(start[n], p) for n, p in model.named_parameters()}
    ctx.check(
        "fc1 and fc2 weights move under 1e-6 of their norm",
        max(moves["fc1.weight"], moves["fc2.weight"]) < 1e-6,
    )
    ctx.check("the head moves over 10%", moves["head.weight"] > 0.1)
    ctx.check("loss finite", _finite(losses))


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, z):
        return self.scale * F.normalize(z, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _Sliotar(nn.Module):
    def __init__(self, d_in=12, classes=5, scale=30.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(64, 32)
        self.head = _CosineHead(32, classes, scale)

    def forward(self, x):
        return self.head(self.fc2(self.act(self.fc1(x))))


SLIOTAR_SCALE = 3000.0


@scenario(
    family="hurling_sliotar_strike_cosine_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Hurling sliotar strike-type classifier (ReLU MLP with a cosine-similarity head, "
    "cross-entropy, SGD momentum). The head's scale is typed 3000 for 30: the softmax saturates, "
    "most rows' target probability rounds to exactly 1.0 in float32 and the rest to 0.",
)
def h450_sliotar_cosine_scale(ctx) -> None:
    gen = seeded(4508)
    model = _Sliotar(scale=SLIOTAR_SCALE)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = _grades(gen, 64, 12, 5, seed=458)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
        model.head.scale = 30.0
        ref = model(x)
    ctx.check(
        "over half the rows' target probability exactly 1.0", collapsed_fraction(logits, y) > 0.5
    )
    ctx.check("under 5% at scale 30 on the same features", collapsed_fraction(ref, y) < 0.05)
    ctx.check("loss finite", _finite(losses))


@scenario(
    family="boomerang_return_flight_raw_nll_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Boomerang return-flight classifier (ReLU MLP on throw features, Adam). The raw "
    "logits are passed to F.nll_loss without a log_softmax: the 'loss' is minus the target "
    "logit, which the head can push down without bound, so the logits grow and grow and the "
    "loss goes ever more negative.",
)
def h450_boomerang_raw_nll(ctx) -> None:
    gen = seeded(4509)
    model = _Net(10, 48, 4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 10, 4, seed=459)
    trace = []
    x0, _ = next(batches)

    def after(step):
        with torch.no_grad():
            trace.append(float(model(x0).abs().max()))

    losses, _ = _loop(ctx, model, opt, batches, 200, F.nll_loss, classifier=True, after=after)
    ctx.check("max |logit| over 20x its start", trace[-1] > 20 * trace[0])
    ctx.check("still growing over the last 50 steps", trace[-1] > 1.3 * trace[-50])
    ctx.check("the 'loss' below -10", losses[-1] < -10)


AVALANCHE_BATCH = 128
AVALANCHE_STEP = 150


@scenario(
    family="snow_avalanche_runout_sum_loss_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=AVALANCHE_STEP,
    note="Snow-avalanche runout regressor (tanh MLP on slope and snowpack features, summed "
    "MSE divided by the row count, SGD Nesterov, clipping at 5). At the epoch boundary (step "
    "150) the divisor is read from the previous epoch's one-row tail batch instead of the "
    "current 128 rows: one step's gradient is 128x, on an ordinary batch, and the run recovers.",
)
def h450_avalanche_tail_divisor(ctx) -> None:
    gen = seeded(4510)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        rows = 1 if step == AVALANCHE_STEP else AVALANCHE_BATCH
        return loss * AVALANCHE_BATCH / rows

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, AVALANCHE_BATCH, 10, seed=460),
        220,
        F.mse_loss,
        backprop=backprop,
        clip=5.0,
    )
    med = _median(norms[AVALANCHE_STEP - 20 : AVALANCHE_STEP])
    lmed = _median(losses[AVALANCHE_STEP - 20 : AVALANCHE_STEP])
    ctx.check(
        "gradient at the boundary over 50x the median before", norms[AVALANCHE_STEP] > 50 * med
    )
    ctx.check(
        "the logged loss at the boundary ordinary (under 2x)", losses[AVALANCHE_STEP] < 2 * lmed
    )
    ctx.check("recovers: last 20 steps under 2x the median before", _mean(losses[-20:]) < 2 * lmed)
    ctx.check("finite throughout", _finite(losses))


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    family="cormorant_fishing_catch_digit_llrd_vit",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cormorant-fishing catch-tally digit reader (the hand-written vision transformer over "
    "8x8 digits, 2x2 patches, a class token), pre-trained on digits 0-4, then fine-tuned on all "
    "ten with layer-wise lr decay (0.6 per block down from the head), the patch embedding "
    "frozen (requires_grad False), AdamW with weight decay, label smoothing 0.1, clipping at 1 "
    "and an exponential moving average of the weights (decay 0.98). A control.",
)
def h450_cormorant_vit_llrd_ema(ctx) -> None:
    gen = seeded(4511)
    model = _DigitViT()
    pre = torch.optim.AdamW(model.parameters(), lr=2e-3)
    low = ((x[y < 5], y[y < 5]) for x, y in digit_batches(gen, 128))
    _loop(None, model, pre, low, 60, F.cross_entropy, attach=False)

    model.patch_embed.requires_grad_(False)
    base, decay = 4e-3, 0.6
    groups = [{"params": [*model.head.parameters(), *model.norm.parameters()], "lr": base}]
    for i, block in enumerate(reversed(model.blocks)):
        groups.append({"params": list(block.parameters()), "lr": base * decay ** (i + 1)})
    groups.append(
        {"params": [model.cls_token, model.pos], "lr": base * decay ** (len(model.blocks) + 1)}
    )
    opt = torch.optim.AdamW(groups, weight_decay=0.05)
    ema = copy.deepcopy(model).requires_grad_(False)
    frozen = model.patch_embed.weight.detach().clone()

    def after(step):
        with torch.no_grad():
            for e, p in zip(ema.parameters(), model.parameters(), strict=True):
                e.lerp_(p, 0.02)

    batches = digit_batches(gen, 64)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        after=after,
    )
    x, y = next(batches)
    with torch.no_grad():
        acc = float((ema(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("patch embedding unchanged", bool(torch.equal(frozen, model.patch_embed.weight)))
    ctx.check("the EMA model over 70% accurate", acc > 0.7)


def _smoke_cues(gen, batch, d_in=12, labels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield (
            x,
            (x @ w / math.sqrt(d_in) + 0.3 * torch.randn(batch, labels, generator=gen) > 0).float(),
        )


@scenario(
    family="beekeeping_smoker_calm_multilabel_fp16_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Beekeeping-smoker hive-calm multi-label net (ReLU MLP on fuel, puff and weather "
    "features, BCE with logits over four calm signs) trained in fp16 autocast with a "
    "GradScaler, Adam under OneCycleLR, clipping at 1. A control.",
)
def h450_beekeeping_smoker_fp16(ctx) -> None:
    gen = seeded(4512)
    model = _Net(12, 64, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _smoke_cues(gen, 64, seed=462),
        steps,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite throughout", _finite(losses))


class _GaussHead(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.Tanh()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act(self.fc1(x))
        return torch.cat([self.mean(h), self.log_var(h).clamp(-6, 6)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _tide_creek(gen, batch, d_in=8):
    g = torch.Generator().manual_seed(463)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        noise = (0.1 + 0.3 * torch.sigmoid(2 * x[:, 1])) * torch.randn(batch, generator=gen)
        yield x, torch.sin(x @ w * 2) + noise


@scenario(
    family="mangrove_creek_tide_stage_gaussian_nll_net",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Mangrove-creek tide-stage forecaster (tanh MLP with a mean and a clamped log-variance "
    "head, Gaussian NLL), SGD momentum with a 20-step linear warm-up, then ReduceLROnPlateau, "
    "accumulation over 2 micro-batches. A control.",
)
def h450_mangrove_tide_gaussian(ctx) -> None:
    gen = seeded(4513)
    model = _GaussHead()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    recent = []

    def before(step):
        if step < 20:
            for g in opt.param_groups:
                g["lr"] = 0.02 * (step + 1) / 20

    def after(step):
        recent.append(ctx.losses[-1])
        if step >= 20:
            plateau.step(_mean(recent[-10:]))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _tide_creek(gen, 32),
        220,
        _gauss_nll,
        before=before,
        after=after,
        accumulate=2,
    )
    ctx.check(
        "loss fell", _fell(losses, ratio=0.9) and _mean(losses[-10:]) < _mean(losses[:10]) - 0.3
    )
    ctx.check("finite throughout", _finite(losses))
