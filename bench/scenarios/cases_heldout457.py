"""Held-out set 457 (``h457_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a shochu-still distillate-strength tanh regressor whose LambdaLR warm-up is written
(step + 1) / 20 without the min(1, ...) (full-batch SGD; the lr climbs past 2 / sharpness and the
loss blows up), a torball pad-map row-token attention classifier whose AdamW lr is typed 5e-2
for 5e-4 with no weight decay (the attention logits grow), a kvass ferment-sugar Huber regressor
fed one shard with raw degrees and minutes (one corrupted batch, RAdam), a koumiss churn-acidity
regressor whose static 2**20 loss scale is not divided back for one step (one giant gradient
fills Adam's second moment, the training stalls), a rondador pan-pipe 12-layer tanh regressor
initialised with gain 4 typed for 1 (gradients grow back through depth, Adamax), a garum
brine-vat regressor taking sqrt(2 g h) of a re-zeroed gauge's negative head (NaN at step 140,
Adadelta), a soapstone-carving two-group regressor whose stem lr multiplier '0.1' is parsed by
int(float(...)) to 0 (fc1 frozen, RMSprop), a chicha mash-stage classifier with a distillation
temperature of 0.01 left in (softmax saturates, NAdam), a braggot gravity Huber regressor whose
loss-weight table is read off by one column for one step (a 300x gradient, SGD momentum) and a
tinsel foil-gauge Gaussian-NLL net whose fc2 biases are initialised to -3.0 for -0.03 (its ReLUs
dead for good, Adagrad).

Controls: a toji sake-label transliterator (a hand-written encoder-decoder transformer with
cross-attention, teacher forcing, label smoothing, AdamW under warm-up and cosine decay,
clipping); a pitch-boiler caulking-grade conv1d classifier under a SWATS-style optimizer (Adam,
then SGD momentum from a fixed step 100); an fp16 amazake koji multi-label BCE net (GradScaler,
Adam, accumulation over 2, clipping, ReduceLROnPlateau).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
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


def _params_norm(model):
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))


# -- 1. sharpness: a warm-up that never stops ------------------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


STILL_WARMUP = 20
STILL_LR = 0.2


@scenario(
    family="shochu_still_distillate_strength_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=STILL_WARMUP,
    note="Shochu pot-still distillate-strength regressor (tanh MLP on still temperature, "
    "mash and reflux features, MSE, plain full-batch SGD under a LambdaLR warm-up). The "
    "warm-up lambda is written (step + 1) / 20 without the min(1, ...): after step 20 the lr "
    "keeps climbing linearly past 0.2, crosses 2 / sharpness of the loss and the run goes "
    "unstable, the loss oscillating and blowing up.",
)
def h457_shochu_still_warmup_unbounded(ctx) -> None:
    gen = seeded(4571)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4571)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=STILL_LR)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / STILL_WARMUP)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 10 == 0:
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 250, F.mse_loss, before=before, sched=sched)
    low = min(v for v in losses if math.isfinite(v))
    low_at = losses.index(low)
    past = [s for s in sharp if lrs[s] * sharp[s] > 2.0]
    first_past = min(past) if past else None
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("lr * sharpness under 2 at step 10", lrs[10] * sharp[10] < 2.0)
    ctx.check(
        "lr * sharpness over 2 before the blow-up",
        first_past is not None and (blow is None or first_past < blow),
    )
    ctx.check("the loss blows up over 100x its lowest after it", blow is not None and blow > low_at)
    ctx.check("trained before it", low < 0.5 * losses[0])


# -- 2. attention logits: a row-token reader with an lr typo ---------------------------------------


class _Attention(nn.Module):
    """Multi-head attention written out (self- or cross-), keeping the largest |q.k/sqrt(d)|."""

    def __init__(self, dim, heads, causal=False):
        super().__init__()
        self.heads = heads
        self.causal = causal
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, x, memory=None, key_pad=None):
        memory = x if memory is None else memory
        b, t, d = x.shape
        s = memory.shape[1]
        q = self.q(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        k, v = self.kv(memory).split(d, -1)
        k = k.reshape(b, s, self.heads, -1).transpose(1, 2)
        v = v.reshape(b, s, self.heads, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        self.max_logit = float(logits.detach().abs().max())
        if self.causal:
            mask = torch.ones(t, s, dtype=torch.bool).triu(1)
            logits = logits.masked_fill(mask, float("-inf"))
        if key_pad is not None:
            logits = logits.masked_fill(key_pad[:, None, None, :], float("-inf"))
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _RowBlock(nn.Module):
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


class _RowReader(nn.Module):
    """Eight 8-wide rows of a tactile pad map as tokens, a learnt query token, pre-LN blocks."""

    def __init__(self, dim=32, heads=2, depth=2, classes=10):
        super().__init__()
        self.row_embed = nn.Linear(8, dim)
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 9, dim))
        self.blocks = nn.ModuleList(_RowBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        b = x.shape[0]
        z = torch.cat([self.query.expand(b, -1, -1), self.row_embed(x.reshape(b, 8, 8))], 1)
        z = z + self.pos
        for block in self.blocks:
            z = block(z)
        return self.head(self.norm(z[:, 0]))


TORBALL_LR = 5e-2


@scenario(
    family="torball_bell_ball_pad_row_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Torball bell-ball arrival-zone classifier (a hand-written transformer reading the "
    "eight rows of an 8x8 floor-pad pressure map as tokens with a learnt query token, two "
    "pre-LN blocks, cross-entropy, AdamW; the bundled 8x8 digits stand in for the maps). The lr "
    "is typed 5e-2 for 5e-4 with weight_decay 0 and no qk-norm: the query and key weights grow "
    "and the attention logits q.k/sqrt(d) climb far past those of the same model at 5e-4.",
)
def h457_torball_row_attention_lr(ctx) -> None:
    def run(lr, c, steps=150):
        gen = seeded(4572)
        model = _RowReader()
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
            after=lambda s: trace.append(max(b.attn.max_logit for b in model.blocks)),
            attach=c is not None,
        )
        return trace

    ref = run(TORBALL_LR / 100, None)
    trace = run(TORBALL_LR, ctx)
    early = _mean(trace[:5])
    ctx.check("max attention logit over 20x its first steps'", _mean(trace[-10:]) > 20 * early)
    ctx.check(
        "max attention logit over 5x the 5e-4 run's at the end",
        _mean(trace[-10:]) > 5 * _mean(ref[-10:]),
    )
    ctx.check("attention logits over 15 at the end", _mean(trace[-10:]) > 15)
    ctx.check("loss finite", _finite(ctx.losses))


# -- 3. a data outlier: one shard in the wrong units -----------------------------------------------


KVASS_STEP = 120


@scenario(
    family="kvass_rye_bread_ferment_sugar_huber_regressor",
    optimizer="RAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=KVASS_STEP,
    note="Kvass rye-bread fermentation residual-sugar regressor (ReLU MLP on crust roast, "
    "temperature, yeast and time features, Huber, RAdam). One logger shard read at step 120 "
    "has its temperature and time columns exported raw (degrees and minutes, not standardised):"
    " one corrupted batch, the loss and gradient jump for that step and the run recovers.",
)
def h457_kvass_raw_shard(ctx) -> None:
    gen = seeded(4573)
    model = _Net(8, 48, 1)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == KVASS_STEP:
            x = x.clone()
            x[:, 1] = 25.0 + 4.0 * x[:, 1]
            x[:, 3] = 600.0 + 120.0 * x[:, 3]
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=4573), 220, F.huber_loss, alter=alter
    )
    before = _median(losses[KVASS_STEP - 20 : KVASS_STEP])
    ctx.check("loss at the shard over 20x the median before", losses[KVASS_STEP] > 20 * before)
    ctx.check(
        "gradient at the shard over 10x the median before",
        norms[KVASS_STEP] > 10 * _median(norms[KVASS_STEP - 20 : KVASS_STEP]),
    )
    ctx.check(
        "recovers: last 20 steps under 2x the median before", _mean(losses[-20:]) < 2 * before
    )
    ctx.check("finite throughout", _finite(losses))


# -- 4. Adam's second moment poisoned by one unscaled step ----------------------------------------


KOUMISS_STEP = 80
KOUMISS_SCALE = 2.0**20


@scenario(
    family="koumiss_mare_milk_churn_acidity_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=KOUMISS_STEP,
    note="Koumiss churning acidity regressor (GELU MLP on milk, temperature and churn-stroke "
    "features, MSE, Adam, no clipping). The loop multiplies the loss by a static 2**20 loss "
    "scale for an fp16 path and divides the gradients back; at step 80 the fp16 path falls "
    "back to fp32 and the unscale is skipped for that one step: one gradient 2**20 times too "
    "large fills Adam's exp_avg_sq, and for the rest of the run every update is divided by it, "
    "the training stalling.",
)
def h457_koumiss_unscaled_step(ctx) -> None:
    def run(c, bug, steps=260):
        gen = seeded(4574)
        model = _Net(10, 64, 1, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves = []
        prev = [p.detach().clone() for p in model.parameters()]

        def backprop(step, loss):
            scaled = loss * KOUMISS_SCALE
            return scaled if (bug and step == KOUMISS_STEP) else scaled / KOUMISS_SCALE

        def after(step):
            now = [p.detach().clone() for p in model.parameters()]
            moves.append(
                math.sqrt(sum(float((a - b).norm() ** 2) for a, b in zip(now, prev, strict=True)))
            )
            prev[:] = now

        losses, norms = _loop(
            c,
            model,
            opt,
            _readings(gen, 64, 10, seed=4574, scale=2.0),
            steps,
            F.mse_loss,
            backprop=backprop,
            after=after,
            attach=c is not None,
        )
        return losses, norms, moves

    ref_losses, _, _ = run(None, False)
    losses, norms, moves = run(ctx, True)
    k = KOUMISS_STEP
    ctx.check(
        "gradient at the step over 1e4x the median before",
        norms[k] > 1e4 * _median(norms[k - 20 : k]),
    )
    ctx.check(
        "updates 40-140 steps after it under 1/20 of those before",
        _mean(moves[k + 40 : k + 140]) < _mean(moves[k - 20 : k]) / 20,
    )
    ctx.check(
        "the loss stalls: the last 20 steps over 1.5x the same run without the bug",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )
    ctx.check(
        "the loss still fell in the run without the bug after the step",
        _mean(ref_losses[-20:]) < 0.8 * _mean(ref_losses[k - 10 : k]),
    )
    ctx.check("finite throughout", _finite(losses))


# -- 5. exploding gradients through depth: an init gain typo ---------------------------------------


class _DeepTanh(nn.Module):
    """A deep tanh MLP; ``layers`` holds Linear and Tanh in turn (Linears at even indices)."""

    def __init__(self, d_in=10, width=64, depth=12, gain=1.0):
        super().__init__()
        mods = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
            mods += [lin, nn.Tanh()]
        self.layers = nn.Sequential(*mods)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.layers(x)).squeeze(-1)


RONDADOR_GAIN = 4.0


@scenario(
    family="rondador_pan_pipe_tuning_deep_tanh_regressor",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("layers.0", "layers.2"),
    diverges=None,
    heldout=True,
    note="Rondador pan-pipe tuning-offset regressor (a 12-layer tanh MLP on cane length, bore "
    "and node features, MSE, Adamax, clipping at 1). The init helper is called with gain=4.0 "
    "typed for 1.0 (std 4/sqrt(fan_in)): the net sits in the chaotic regime and the gradient "
    "grows layer by layer back towards the input, the first layer's many times the last's.",
)
def h457_rondador_init_gain(ctx) -> None:
    def build(gain):
        torch.manual_seed(4575)
        return _DeepTanh(gain=gain)

    def depth_ratio(m, x, y):
        m.zero_grad()
        F.mse_loss(m(x), y).backward()
        first = float(m.layers[0].weight.grad.norm())
        last = float(m.layers[22].weight.grad.norm())
        m.zero_grad()
        return first / max(last, 1e-12)

    gen = seeded(4575)
    batches = _readings(gen, 64, 10, seed=4575)
    x0, y0 = next(batches)
    ref = depth_ratio(build(1.0), x0, y0)
    model = build(RONDADOR_GAIN)
    bad = depth_ratio(model, x0, y0)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    losses, norms = _loop(ctx, model, opt, batches, 150, F.mse_loss, clip=1.0)
    ctx.check("first layer's gradient over 30x the last's at gain 4", bad > 30)
    ctx.check("under 3x at gain 1", ref < 3)
    ctx.check("loss finite", _finite(losses))


# -- 6. a NaN from sqrt of a negative reading ------------------------------------------------------


class _HeadSpeed(nn.Module):
    """Turns the brine head (the first column, metres) into an outflow speed sqrt(2 g h),
    with no clamp."""

    def forward(self, x):
        return torch.cat([torch.sqrt(2 * 9.81 * x[:, :1]), x[:, 1:]], -1)


class _Brine(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.speed = _HeadSpeed()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.ELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.speed(x)))).squeeze(-1)


def _brine_vats(gen, batch, d_in=8):
    g = torch.Generator().manual_seed(4576)
    w = torch.randn(d_in - 1, generator=g) / math.sqrt(d_in)
    while True:
        h = 0.2 + 1.5 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, d_in - 1, generator=gen)
        y = torch.sqrt(h[:, 0]) + torch.tanh(rest @ w)
        yield torch.cat([h, rest], -1), y


GARUM_STEP = 140


@scenario(
    family="garum_brine_vat_salinity_sqrt_regressor",
    optimizer="Adadelta",
    cause="nonfinite",
    where=("speed",),
    diverges=GARUM_STEP,
    heldout=True,
    onset=GARUM_STEP,
    note="Garum fish-sauce brine-vat salinity regressor (ELU MLP on vat features, the brine "
    "head turned into an outflow speed sqrt(2 g h) in a layer with no clamp, MSE, Adadelta). At "
    "step 140 a vat whose level gauge was re-zeroed reports a head of -0.05 m: sqrt of a "
    "negative is NaN and the loss is NaN at that step.",
)
def h457_garum_sqrt_negative(ctx) -> None:
    gen = seeded(4576)
    model = _Brine()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def alter(step, x, y):
        if step == GARUM_STEP:
            x = x.clone()
            x[7, 0] = -0.05
        return x, y

    losses, _ = _loop(ctx, model, opt, _brine_vats(gen, 64), 220, F.mse_loss, alter=alter)
    ctx.check("finite before the re-zeroed gauge", _finite(losses[:GARUM_STEP]))
    ctx.check(
        "loss non-finite at the re-zeroed gauge",
        len(losses) > GARUM_STEP and not math.isfinite(losses[GARUM_STEP]),
    )
    ctx.check(
        "trained before it", _mean(losses[GARUM_STEP - 10 : GARUM_STEP]) < 0.8 * _mean(losses[:10])
    )


# -- 7. a frozen stem: an lr multiplier parsed to 0 ------------------------------------------------


SOAP_STEM_MULT = "0.1"


@scenario(
    family="soapstone_carving_chisel_grade_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Soapstone-carving chisel-pressure regressor (ReLU MLP on stone hardness, grain and "
    "tool features, MSE, RMSprop with two param groups). The stem's lr multiplier is read from "
    "the config string '0.1' through int(float(...)), giving 0: fc1 never moves from its init "
    "while fc2 and the head train on top of it.",
)
def h457_soapstone_stem_multiplier(ctx) -> None:
    gen = seeded(4577)
    model = _Net(10, 48, 1)
    base = 1e-3
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": base * int(float(SOAP_STEM_MULT))},
            {"params": rest, "lr": base},
        ]
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, seed=4577), 200, F.mse_loss)
    moves = {n: _rel_change(start[n], p) for n, p in model.named_parameters()}
    ctx.check("fc1 weights move under 1e-9 of their norm", moves["fc1.weight"] < 1e-9)
    ctx.check(
        "fc2 and the head move over 5%", min(moves["fc2.weight"], moves["head.weight"]) > 0.05
    )
    ctx.check("loss finite", _finite(losses))


# -- 8. softmax collapse: a distillation temperature left in ---------------------------------------


class _StageNet(nn.Module):
    def __init__(self, d_in=12, classes=5, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(64, 32)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(32, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


CHICHA_T = 0.01


@scenario(
    family="chicha_maize_mash_ferment_stage_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Chicha maize-mash fermentation-stage classifier (SiLU MLP on sugar, pH, foam and "
    "temperature readings, cross-entropy, NAdam). The logits are divided by a temperature of "
    "0.01 copied from a distillation config for 1.0: the softmax saturates, most rows' target "
    "probability rounds to exactly 1.0 in float32 and the others' to 0.",
)
def h457_chicha_temperature(ctx) -> None:
    gen = seeded(4578)
    model = _StageNet(temperature=CHICHA_T)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 12, 5, seed=4578, spread=0.6)
    losses, _ = _loop(ctx, model, opt, batches, 220, F.cross_entropy, classifier=True)
    x, y = (torch.cat(z) for z in zip(*(next(batches) for _ in range(4)), strict=True))
    with torch.no_grad():
        logits = model(x)
        model.temperature = 1.0
        ref = model(x)
    ctx.check(
        "over half the rows' target probability exactly 1.0", collapsed_fraction(logits, y) > 0.5
    )
    ctx.check("under 5% at temperature 1 on the same weights", collapsed_fraction(ref, y) < 0.05)
    ctx.check("loss finite", _finite(losses))


# -- 9. a gradient spike: a loss-weight table read off by one column -------------------------------


BRAGGOT_STEP = 150
BRAGGOT_TABLE = {0: (1.0, 1.0), 150: (300.0, 1.0)}  # step -> (ramp-length steps, weight)


@scenario(
    family="braggot_honey_malt_gravity_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BRAGGOT_STEP,
    note="Braggot honey-and-malt final-gravity regressor (tanh MLP on honey, malt, yeast and "
    "temperature features, Huber, SGD momentum 0.9, clipping at 5). The loss-weight schedule "
    "is a table of (ramp length, weight) rows; at the row that starts at step 150 the loop reads "
    "the ramp-length column (300) as the weight for one step: one gradient 300x on an ordinary "
    "batch, clipped, and the run recovers.",
)
def h457_braggot_weight_column(ctx) -> None:
    gen = seeded(4579)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def backprop(step, loss):
        row = BRAGGOT_TABLE.get(step)
        weight = row[0] if row is not None else 1.0  # the bug: column 0 is the ramp length
        return loss * weight

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 10, seed=4579, scale=3.0),
        230,
        F.huber_loss,
        backprop=backprop,
        clip=5.0,
    )
    k = BRAGGOT_STEP
    med = _median(norms[k - 20 : k])
    lmed = _median(losses[k - 20 : k])
    ctx.check("gradient at the row over 50x the median before", norms[k] > 50 * med)
    ctx.check("the logged loss at the row ordinary (under 2x)", losses[k] < 2 * lmed)
    ctx.check("recovers: last 20 steps under 2x the median before", _mean(losses[-20:]) < 2 * lmed)
    ctx.check("finite throughout", _finite(losses))


# -- 10. dead ReLUs: an Adagrad lr typo ------------------------------------------------------------


class _GaussNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        h = self.features(x)
        return torch.cat([self.mean(h), self.log_var(h).clamp(-6, 6)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


TINSEL_BIAS = -3.0
TINSEL_REF_BIAS = -0.03


@scenario(
    family="tinsel_lametta_foil_gauge_gaussian_nll_net",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Tinsel (lametta) foil-gauge regressor (ReLU MLP with a mean and a clamped "
    "log-variance head on roller gap, tension and alloy features, Gaussian NLL, Adagrad). The "
    "init code sets the second layer's biases to -3.0 where the config meant -0.03 (a small "
    "sparsity prior): most of fc2's ReLUs are never positive, get no gradient and stay dead "
    "for the whole run, the net fitting far worse than with the intended init.",
)
def h457_tinsel_bias_init_dead_relus(ctx) -> None:
    def run(bias, c, steps=200):
        gen = seeded(4580)
        model = _GaussNet()
        nn.init.constant_(model.fc2.bias, bias)
        opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
        batches = _readings(gen, 64, 10, seed=4580, noise=0.2)
        probe, _ = next(batches)
        with torch.no_grad():
            start = dead_fraction(model.features(probe))
        losses, _ = _loop(c, model, opt, batches, steps, _gauss_nll, attach=c is not None)
        with torch.no_grad():
            end = dead_fraction(model.features(probe))
        return losses, start, end

    ref_losses, _, ref_end = run(TINSEL_REF_BIAS, None)
    losses, start, end = run(TINSEL_BIAS, ctx)
    ctx.check("over half of fc2's units dead at the end", end > 0.5)
    ctx.check("still as many dead as at init (none revive)", end >= start - 0.02)
    ctx.check("under 10% dead in the run with the intended -0.03", ref_end < 0.1)
    ctx.check(
        "the loss over the last 20 steps over 0.3 above the intended run's",
        _mean(losses[-20:]) > _mean(ref_losses[-20:]) + 0.3,
    )
    ctx.check("loss finite", _finite(losses))


# -- healthy controls ------------------------------------------------------------------------------


PAD, BOS, EOS = 0, 1, 2
_SRC_LETTERS = 14
# each source letter (3..16) becomes one or two target letters (3..12), like a romanisation
_TRANSLIT = {
    3 + i: ((3 + i % 10,) if i % 3 else (3 + i % 10, 3 + (i * 7) % 10)) for i in range(_SRC_LETTERS)
}


def _translit_batches(gen, batch, min_len=4, max_len=8):
    src_len, tgt_len = max_len + 1, 2 * max_len + 2
    while True:
        src = torch.full((batch, src_len), PAD)
        tgt = torch.full((batch, tgt_len), PAD)
        for b in range(batch):
            n = int(torch.randint(min_len, max_len + 1, (1,), generator=gen))
            word = torch.randint(3, 3 + _SRC_LETTERS, (n,), generator=gen).tolist()
            out = [BOS] + [t for c in word for t in _TRANSLIT[c]] + [EOS]
            src[b, :n] = torch.tensor(word)
            tgt[b, : len(out)] = torch.tensor(out)
        yield src, tgt


class _EncLayer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.self_attn = _Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x, pad):
        x = x + self.self_attn(self.ln1(x), key_pad=pad)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class _DecLayer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.self_attn = _Attention(dim, heads, causal=True)
        self.ln2 = nn.LayerNorm(dim)
        self.cross_attn = _Attention(dim, heads)
        self.ln3 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, y, memory, pad):
        y = y + self.self_attn(self.ln1(y))
        y = y + self.cross_attn(self.ln2(y), memory, key_pad=pad)
        return y + self.fc2(F.gelu(self.fc1(self.ln3(y))))


class _Transliterator(nn.Module):
    """A hand-written encoder-decoder transformer: source letters in, target letters out,
    cross-attention from each decoder layer onto the encoder's output, teacher forcing."""

    def __init__(self, src_vocab=3 + _SRC_LETTERS, tgt_vocab=13, dim=48, heads=4, layers=2):
        super().__init__()
        self.src_embed = nn.Embedding(src_vocab, dim)
        self.tgt_embed = nn.Embedding(tgt_vocab, dim)
        self.src_pos = nn.Parameter(0.02 * torch.randn(1, 32, dim))
        self.tgt_pos = nn.Parameter(0.02 * torch.randn(1, 32, dim))
        self.encoder = nn.ModuleList(_EncLayer(dim, heads) for _ in range(layers))
        self.enc_norm = nn.LayerNorm(dim)
        self.decoder = nn.ModuleList(_DecLayer(dim, heads) for _ in range(layers))
        self.dec_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tgt_vocab)

    def forward(self, pair):
        src, tgt_in = pair
        pad = src == PAD
        m = self.src_embed(src) + self.src_pos[:, : src.shape[1]]
        for layer in self.encoder:
            m = layer(m, pad)
        m = self.enc_norm(m)
        y = self.tgt_embed(tgt_in) + self.tgt_pos[:, : tgt_in.shape[1]]
        for layer in self.decoder:
            y = layer(y, m, pad)
        return self.head(self.dec_norm(y))


def _teacher_forced(batches):
    for src, tgt in batches:
        yield (src, tgt[:, :-1]), tgt[:, 1:]


def _seq_ce(logits, y):
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=PAD, label_smoothing=0.1
    )


@scenario(
    family="toji_sake_label_kana_transliteration_encoder_decoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Toji sake-brewery label transliterator (a hand-written encoder-decoder transformer: "
    "two pre-LN encoder layers, two decoder layers with causal self-attention and "
    "cross-attention onto the encoder, teacher forcing) mapping kana-like source letters to "
    "one or two romanised letters each, cross-entropy with padding ignored and label smoothing "
    "0.1, AdamW with a 30-step linear warm-up then cosine decay (LambdaLR), clipping at 1. A "
    "control.",
)
def h457_toji_transliteration_encdec(ctx) -> None:
    gen = seeded(4581)
    model = _Transliterator()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps, warm = 220, 30

    def schedule(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    batches = _teacher_forced(_translit_batches(gen, 32))
    losses, _ = _loop(ctx, model, opt, batches, steps, _seq_ce, clip=1.0, sched=sched)
    (src, tgt_in), y = next(batches)
    with torch.no_grad():
        pred = model((src, tgt_in)).argmax(-1)
    keep = y != PAD
    acc = float((pred[keep] == y[keep]).float().mean())
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("teacher-forced letter accuracy over 80%", acc > 0.8)


class _Swats(torch.optim.Optimizer):
    """Adam until ``switch_at`` steps, then SGD with momentum at a fixed lr (as SWATS does,
    with the switch step and the SGD lr fixed in advance instead of estimated)."""

    def __init__(self, params, lr=1e-3, sgd_lr=0.05, momentum=0.9, switch_at=100):
        super().__init__(params, dict(lr=lr, sgd_lr=sgd_lr, momentum=momentum))
        self.switch_at = switch_at
        self.steps = 0

    @torch.no_grad()
    def step(self, closure=None):
        self.steps += 1
        adam = self.steps <= self.switch_at
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if adam:
                    if not state:
                        state["m"] = torch.zeros_like(p)
                        state["v"] = torch.zeros_like(p)
                    state["m"].lerp_(p.grad, 0.1)
                    state["v"].lerp_(p.grad * p.grad, 0.001)
                    m_hat = state["m"] / (1 - 0.9**self.steps)
                    v_hat = state["v"] / (1 - 0.999**self.steps)
                    p.add_(m_hat / (v_hat.sqrt() + 1e-8), alpha=-group["lr"])
                else:
                    buf = state.setdefault("momentum_buffer", torch.zeros_like(p))
                    buf.mul_(group["momentum"]).add_(p.grad)
                    p.add_(buf, alpha=-group["sgd_lr"])
        return None


class _TraceConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _boil_traces(gen, batch, length=48, classes=4):
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = 0.5 + 0.5 * y.float()[:, None]
        temp = torch.tanh(3 * rate * t) + 0.15 * torch.randn(batch, length, generator=gen)
        bubble = torch.sin(2 * math.pi * (2 + y.float()[:, None]) * t)
        bubble = bubble + 0.3 * torch.randn(batch, length, generator=gen)
        yield torch.stack([temp, bubble], 1), y


SWATS_SWITCH = 100


@scenario(
    family="pitch_boiler_caulking_pitch_grade_swats_conv1d",
    optimizer="SWATS (Adam then SGD momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Shipwright's pitch-boiler caulking-grade classifier (a ReLU conv1d net over "
    "temperature and bubbling traces of the pot, cross-entropy), trained with a SWATS-style "
    "optimizer: Adam (lr 2e-3) for 100 steps, then SGD with momentum 0.9 at lr 0.02 from step "
    "100 on, the switch fixed in advance. A control.",
)
def h457_pitch_boiler_swats(ctx) -> None:
    gen = seeded(4582)
    model = _TraceConv()
    opt = _Swats(model.parameters(), lr=2e-3, sgd_lr=0.02, switch_at=SWATS_SWITCH)
    batches = _boil_traces(gen, 64)
    losses, _ = _loop(ctx, model, opt, batches, 220, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite throughout", _finite(losses))
    ctx.check(
        "no jump at the switch (10 steps after under 1.5x the 10 before)",
        _mean(losses[SWATS_SWITCH : SWATS_SWITCH + 10])
        < 1.5 * _mean(losses[SWATS_SWITCH - 10 : SWATS_SWITCH]),
    )
    ctx.check("over 80% accurate at the end", acc > 0.8)


def _koji_cues(gen, batch, d_in=12, labels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        noisy = x @ w / math.sqrt(d_in) + 0.3 * torch.randn(batch, labels, generator=gen)
        yield x, (noisy > 0).float()


@scenario(
    family="amazake_koji_rice_sweetness_multilabel_fp16_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Amazake koji-rice saccharification multi-label net (SiLU MLP on rice, koji and "
    "holding-temperature features, BCE with logits over three doneness signs), fp16 autocast "
    "with a GradScaler, Adam, accumulation over 2 micro-batches, clipping at 1 after "
    "unscaling, ReduceLROnPlateau on the running loss. A control.",
)
def h457_amazake_koji_fp16(ctx) -> None:
    gen = seeded(4583)
    model = _Net(12, 64, 3, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _koji_cues(gen, 32, seed=4583),
        200,
        F.binary_cross_entropy_with_logits,
        scaler=scaler,
        amp=True,
        clip=1.0,
        accumulate=2,
        sched=plateau,
        plateau=lambda: _mean(ctx.losses[-10:]) if ctx.losses else 1.0,
    )
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite throughout", _finite(losses))
