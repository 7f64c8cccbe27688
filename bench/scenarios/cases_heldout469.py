"""Held-out set 469 (``h469_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a Chapman-stick tapping attention classifier whose AdamW lr is typed 3e-2 for 3e-4 with
no weight decay (the attention logits grow), a lamian noodle-pull length regressor resumed at
step 150 with fc2 loaded from the stale step-10 checkpoint (a one-off loss spike, recovers), a bell-casting
pour-temperature regressor fed one shard whose targets are in raw degrees (one corrupted batch,
ASGD), a band-saw blade-wander Elman RNN whose recurrent init gain is typed 3 for 1 (gradients
grow back through time, clipped, RMSprop), a tar-lute fret-buzz tanh regressor whose warm-up
peak lr is typed 0.8 for 0.08 (full-batch SGD, lr * sharpness crosses 2, the loss blows up), a
cane-chair weave-tension net computing a cosine between strand readings with no eps (a blank
reading at step 100 gives 0/0, NaN, NAdam), a singing-dune boom-frequency two-group regressor
whose head lr is typed 1e-9 for 1e-2 (head frozen, Adagrad), a swordsmith quench-crack
classifier with a temperature of 0.005 left in (softmax saturates, RAdam), a crochet-hook yarn
tension Huber regressor whose loss-weight table reads 500 for 0.5 on one step (one gradient
burst, clipped, SGD Nesterov) and a tofu-press curd-firmness regressor whose hand-written weight
decay has its sign flipped (weights grow, the loss climbs slowly, SGD momentum).

Controls: a firework shell star-burst slot-attention autoencoder (iterative attention with a
softmax over slots, GRU updates, Chamfer set reconstruction; Adam, warm-up, clipping); a
bladesmith hamon-pattern BYOL encoder (EMA teacher whose momentum follows a cosine schedule from
0.99 to 1, AdamW); a miso koji-stage classifier under fp16 autocast with a GradScaler (SGD
momentum, OneCycleLR, label smoothing 0.1, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _params_norm(params) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in params))


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
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt)
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
            out = model(x)
            loss = loss_fn(out, y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
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


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration."""
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


# -- 1. attention logits: an AdamW lr typed 3e-2 for 3e-4 -------------------------------------------


class _Attention(nn.Module):
    """Multi-head self-attention written out, keeping the largest |q.k/sqrt(d)|."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            m(x).reshape(b, t, self.heads, -1).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        self.max_logit = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _TapReader(nn.Module):
    """Eight string-tap frames as tokens, mean-pooled after one pre-LN attention block."""

    def __init__(self, d_in=8, dim=32, heads=2, classes=5):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 8, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, classes)
        for m in (self.attn.q, self.attn.k):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        h = self.embed(x.reshape(-1, 8, 8)) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1))


def _tap_run(ctx, lr, attach):
    gen = seeded(4691)
    model = _TapReader()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    data = _grades(gen, 64, 64, 5, seed=4691, spread=1.2)
    logits = []
    losses, _ = _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.cross_entropy,
        classifier=True,
        after=lambda s: logits.append(model.attn.max_logit),
        attach=attach,
    )
    return losses, logits


@scenario(
    family="chapman_stick_tapping_row_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Chapman-stick tapping-technique classifier (eight string-sensor frames as tokens, one "
    "hand-written pre-LN attention block, mean pooling, cross-entropy). The AdamW lr is typed "
    "3e-2 for 3e-4 and weight decay left at 0: the query/key weights grow and the attention "
    "logits q.k/sqrt(d) grow many-fold.",
)
def h469_chapman_stick_attention_lr_typo(ctx) -> None:
    losses, logits = _tap_run(ctx, 3e-2, True)
    _, ref = _tap_run(ctx, 3e-4, False)
    ctx.check("finite", _finite(losses))
    ctx.check("max attention logit over 20x its first steps'", max(logits) > 20 * _mean(logits[:3]))
    ctx.check("max attention logit over 5x the 3e-4 run's", max(logits) > 5 * max(ref))


# -- 2. loss spike: resumed without Adam's state ----------------------------------------------------

LAMIAN_RESUME = 150


@scenario(
    family="lamian_noodle_pull_length_gelu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=LAMIAN_RESUME,
    note="Lamian noodle-pull length regressor (GELU MLP on dough hydration, rest time and fold "
    "count, MSE, Adam lr 3e-3). The job is resumed at step 150, but a checkpoint glob picks the "
    "step-10 file for fc2 while the other layers load the latest one: the loss jumps for a few "
    "steps and the run recovers within tens of steps.",
)
def h469_lamian_resume_stale_checkpoint(ctx) -> None:
    gen = seeded(4692)
    model = _Net(8, 64, 1, act=nn.GELU)
    data = _readings(gen, 64, 8, seed=4692)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    saved = {}

    def before(step):
        if step == 10:
            saved.update({k: v.clone() for k, v in model.fc2.state_dict().items()})
        if step == LAMIAN_RESUME:
            model.fc2.load_state_dict(saved)

    losses, _ = _loop(ctx, model, opt, data, 260, F.mse_loss, before=before)
    pre = _median(losses[LAMIAN_RESUME - 40 : LAMIAN_RESUME])
    spike = losses[LAMIAN_RESUME]
    ctx.check("finite", _finite(losses))
    ctx.check("loss over 5x its median at the resume", spike > 5 * pre)
    ctx.check("back under 2x of it by the end", _mean(losses[-40:]) < 2 * pre)
    ctx.check(
        "nothing like it before", max(losses[LAMIAN_RESUME - 40 : LAMIAN_RESUME]) < 0.5 * spike
    )


# -- 3. data outlier: one shard in raw degrees ------------------------------------------------------

BELL_SHARD = 120


@scenario(
    family="bell_casting_bronze_pour_temperature_relu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=BELL_SHARD,
    note="Bell-casting pour-temperature regressor (ReLU MLP on alloy tin fraction, mould "
    "moisture and furnace readings, MSE on standardised temperatures, ASGD). One shard at step "
    "120 was exported before standardisation: its targets are in tens of degrees, the loss and "
    "gradient jump for one batch and the run recovers.",
)
def h469_bell_casting_raw_degree_shard(ctx) -> None:
    gen = seeded(4693)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4693)
    opt = torch.optim.ASGD(model.parameters(), lr=0.03)

    def alter(step, x, y):
        if step == BELL_SHARD:
            return x, 8.0 * y + 10.0
        return x, y

    losses, norms = _loop(ctx, model, opt, data, 240, F.mse_loss, alter=alter)
    pre = _median(losses[BELL_SHARD - 30 : BELL_SHARD])
    ctx.check("finite", _finite(losses))
    ctx.check("loss over 20x at the shard", losses[BELL_SHARD] > 20 * pre)
    ctx.check(
        "gradient over 10x at the shard",
        norms[BELL_SHARD] > 10 * _median(norms[BELL_SHARD - 30 : BELL_SHARD]),
    )
    ctx.check("recovers", _mean(losses[-20:]) < 2 * pre)


# -- 4. exploding gradients: recurrent init gain typed 3 for 1 --------------------------------------


class _Elman(nn.Module):
    """A hand-written Elman RNN over blade-deflection frames, regressing the wander at the end."""

    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _saw_data(gen, batch=32, steps=24):
    while True:
        x = 0.3 * torch.randn(batch, steps, 4, generator=gen)
        y = x[:, :, 0].mean(1) * 3 + 0.5 * x[:, -4:, 1].sum(1)
        yield x, y


def _state_ratio(model, x, y):
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    first = float(model.states[0].grad.norm())
    last = float(model.states[-1].grad.norm())
    model.zero_grad()
    return first / max(last, 1e-12)


@scenario(
    family="band_saw_blade_wander_elman_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Band-saw blade-wander regressor (hand-written Elman RNN over 24 blade-deflection "
    "frames, MSE, RMSprop, clipping at 1). The recurrent weights are initialised orthogonal "
    "with gain 3 typed for 1: the gradient grows back through time, the first state's gradient "
    "is far larger than the last's; clipping keeps the run from breaking.",
)
def h469_band_saw_recurrent_gain_typo(ctx) -> None:
    gen = seeded(4694)
    model = _Elman(gain=3.0)
    data = _saw_data(gen)
    x0, y0 = next(data)
    ratio = _state_ratio(model, x0, y0)
    ref_ratio = _state_ratio(_Elman(gain=1.0), x0, y0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    losses, norms = _loop(ctx, model, opt, data, 120, F.mse_loss, clip=1.0)
    ctx.check("finite", _finite(losses))
    ctx.check("first state's gradient over 30x the last's", ratio > 30)
    ctx.check("under 3x at gain 1", ref_ratio < 3)
    ctx.check("the raw gradient norm is over 5x the clip", _median(norms) > 5.0)


# -- 5. sharpness: a warm-up peak typed 0.8 for 0.08 ------------------------------------------------

TAR_WARMUP = 60


@scenario(
    family="tar_lute_fret_buzz_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=20,
    note="Tar-lute fret-buzz regressor (tanh MLP on string gauge, action height and fret wear, "
    "MSE, full-batch SGD with a linear warm-up over 60 steps). The warm-up's peak lr is typed "
    "0.8 for 0.08: about step 20 of the warm-up lr * sharpness crosses 2, the loss oscillates "
    "and blows up.",
)
def h469_tar_lute_warmup_peak_typo(ctx) -> None:
    gen = seeded(4695)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4695)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    peak = 0.8
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / TAR_WARMUP))
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 5 == 0 and step <= TAR_WARMUP:
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 150, F.mse_loss, before=before, sched=sched)
    low = min(losses[:20])
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low), None)
    cross = next((s for s in sorted(sharp) if lrs[s] * sharp[s] > 2.0), None)
    ctx.check("lr * sharpness under 2 at step 15", lrs[15] * sharp[15] < 2.0)
    ctx.check("lr * sharpness over 2 later in the warm-up", cross is not None)
    ctx.check(
        "the loss blows up over 100x after the crossing",
        blow is not None and cross is not None and blow >= cross,
    )


# -- 6. nonfinite: a cosine with no eps --------------------------------------------------------------

CANE_BLANK = 100


class _Cosine(nn.Module):
    """Cosine between the warp and weft strand readings, written out with no eps."""

    def forward(self, a, b):
        return (a * b).sum(-1, keepdim=True) / (
            a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True)
        )


class _WeaveNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.bearing = _Cosine()
        self.fc1 = nn.Linear(9, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        c = self.bearing(x[:, :4], x[:, 4:])
        h = self.act2(self.fc2(self.act1(self.fc1(torch.cat([x, c], -1)))))
        return self.head(h).squeeze(-1)


@scenario(
    family="cane_chair_seat_weave_tension_silu_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("bearing",),
    diverges=CANE_BLANK,
    heldout=True,
    onset=CANE_BLANK,
    note="Cane-chair seat weave-tension regressor (SiLU MLP on warp and weft strand readings "
    "plus the cosine between them, MSE, NAdam). The cosine is written a.b / (|a| |b|) with no "
    "eps: at step 100 a blank strand reading (all zeros) arrives, 0/0 gives NaN and the loss "
    "is NaN at 100.",
)
def h469_cane_chair_cosine_no_eps(ctx) -> None:
    gen = seeded(4696)
    model = _WeaveNet()
    data = _readings(gen, 64, 8, seed=4696)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == CANE_BLANK:
            x = x.clone()
            x[7, :4] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss, alter=alter)
    ctx.check(
        "the loss is NaN at step 100", len(losses) == CANE_BLANK + 1 and math.isnan(losses[-1])
    )
    ctx.check("finite before it", _finite(losses[:CANE_BLANK]))
    ctx.check("trained before it", _mean(losses[90:100]) < 0.8 * _mean(losses[:10]))


# -- 7. update ratio: a head lr typed 1e-9 for 1e-3 -------------------------------------------------


@scenario(
    family="sand_dune_singing_boom_frequency_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Singing-dune boom-frequency regressor (ReLU MLP on grain size, slope angle and "
    "humidity, Huber loss, Adagrad with two param groups). The head's group lr is typed 1e-9 "
    "for 1e-2: the head receives gradients but does not move; the trunk trains alone.",
)
def h469_singing_dune_head_lr_typo(ctx) -> None:
    gen = seeded(4697)
    model = _Net(8, 48, 1)
    data = _readings(gen, 64, 8, seed=4697)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 1e-2}, {"params": model.head.parameters(), "lr": 1e-9}]
    )
    head0 = model.head.weight.detach().clone()
    fc10 = model.fc1.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, data, 200, F.smooth_l1_loss)
    head_move = float((model.head.weight.detach() - head0).norm() / head0.norm())
    fc1_move = float((model.fc1.weight.detach() - fc10).norm() / fc10.norm())
    ctx.check("finite", _finite(losses))
    ctx.check("the head moves under 1e-6 of its norm", head_move < 1e-6)
    ctx.check("fc1 moves over 5%", fc1_move > 0.05)


# -- 8. softmax collapse: a temperature 0.005 left in -----------------------------------------------


class _QuenchNet(_Net):
    def __init__(self, temperature):
        super().__init__(12, 48, 4, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="swordsmith_quench_crack_temperature_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Swordsmith quench-crack classifier (GELU MLP on blade thickness, clay-coat depth and "
    "quench-bath readings, cross-entropy, RAdam). A calibration temperature of 0.005 meant for "
    "an experiment is left in the forward: logits are multiplied by 200 and the softmax "
    "saturates, most rows' target probability rounds to exactly 1.0.",
)
def h469_swordsmith_temperature_left_in(ctx) -> None:
    gen = seeded(4698)
    model = _QuenchNet(0.005)
    data = _grades(gen, 64, 12, 4, seed=4698)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    losses, _ = _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    x, y = next(data)
    with torch.no_grad():
        raw = model.head(model.features(x))
    ctx.check("finite", _finite(losses))
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(raw / 0.005, y) > 0.5,
    )
    ctx.check("under 5% at temperature 1 on the same weights", collapsed_fraction(raw, y) < 0.05)


# -- 9. gradient spike: a loss weight typed 500 for 0.5 ---------------------------------------------

CROCHET_STEP = 140


@scenario(
    family="crochet_hook_yarn_tension_tanh_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CROCHET_STEP,
    note="Crochet-hook yarn-tension regressor (tanh MLP on hook size, yarn weight and stitch "
    "type, Huber loss, SGD Nesterov, clipping at 1). The curriculum's loss-weight table reads "
    "500 for 0.5 at step 140: the backpropagated loss is 1000x its usual weight for that step, "
    "one gradient burst; clipping bounds the step and the run recovers.",
)
def h469_crochet_loss_weight_typo(ctx) -> None:
    gen = seeded(4699)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 64, 8, seed=4699)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return (500.0 if step == CROCHET_STEP else 0.5) * loss

    losses, norms = _loop(ctx, model, opt, data, 220, F.smooth_l1_loss, backprop=backprop, clip=1.0)
    pre = norms[CROCHET_STEP - 30 : CROCHET_STEP]
    ctx.check("finite", _finite(losses))
    ctx.check("gradient over 50x the median at the step", norms[CROCHET_STEP] > 50 * _median(pre))
    ctx.check(
        "logged loss ordinary at the step",
        losses[CROCHET_STEP] < 3 * _median(losses[CROCHET_STEP - 30 : CROCHET_STEP]),
    )
    ctx.check(
        "recovers", _mean(losses[-20:]) < 2 * _median(losses[CROCHET_STEP - 30 : CROCHET_STEP])
    )


# -- 10. loss divergence: weight decay with its sign flipped ----------------------------------------


@scenario(
    family="tofu_press_curd_firmness_gelu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Tofu-press curd-firmness regressor (GELU MLP on coagulant dose, press time and soy "
    "milk temperature, MSE, SGD momentum). Weight decay is written by hand as grad += wd * p "
    "but the sign was flipped (grad -= wd * p): every weight grows a little each step and the "
    "loss climbs slowly after the first fit.",
)
def h469_tofu_press_weight_decay_sign(ctx) -> None:
    gen = seeded(46910)
    model = _Net(8, 48, 1, act=nn.GELU)
    data = _readings(gen, 64, 8, seed=46910)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    wd = 4e-2
    norm0 = _params_norm(model.parameters())

    def backprop(step, loss):
        return loss - 0.5 * wd * sum((p * p).sum() for p in model.parameters())

    losses, _ = _loop(ctx, model, opt, data, 300, F.mse_loss, backprop=backprop)
    low = min(losses)
    ctx.check("finite", _finite(losses))
    ctx.check("weights over 2x", _params_norm(model.parameters()) > 2 * norm0)
    ctx.check("the loss climbs over 3x its lowest", _mean(losses[-10:]) > 3 * low)
    ctx.check(
        "no single step over 5x the one before",
        all(b < 5 * a for a, b in zip(losses[20:], losses[21:], strict=False)),
    )


# -- 11. control: slot attention set reconstruction -------------------------------------------------


class _SlotAttention(nn.Module):
    """Slot attention (Locatello et al. 2020): softmax over slots, weighted mean, GRU update."""

    def __init__(self, dim=32, slots=4, iters=3):
        super().__init__()
        self.slots, self.iters, self.dim = slots, iters, dim
        self.mu = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.log_sigma = nn.Parameter(torch.full((1, 1, dim), -1.0))
        self.norm_in = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_mlp = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, inputs):
        b = inputs.shape[0]
        inputs = self.norm_in(inputs)
        k, v = self.k(inputs), self.v(inputs)
        slots = self.mu + self.log_sigma.exp() * torch.randn(b, self.slots, self.dim)
        for _ in range(self.iters):
            prev = slots
            q = self.q(self.norm_slots(slots))
            attn = torch.softmax(k @ q.transpose(1, 2) / math.sqrt(self.dim), dim=-1) + 1e-8
            attn = attn / attn.sum(1, keepdim=True)
            updates = attn.transpose(1, 2) @ v
            slots = self.gru(updates.reshape(-1, self.dim), prev.reshape(-1, self.dim))
            slots = slots.reshape(b, self.slots, self.dim)
            slots = slots + self.mlp(self.norm_mlp(slots))
        return slots


class _StarBurst(nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.slot_attn = _SlotAttention(dim)
        self.decoder = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 3))

    def forward(self, x):
        return self.decoder(self.slot_attn(self.encoder(x)))


def _chamfer(pred, target):
    d = torch.cdist(pred, target) ** 2
    return d.min(2).values.mean() + d.min(1).values.mean()


def _bursts(gen, batch=32, stars=4):
    """Each shell: four star clusters (x, y, brightness), one point per star."""
    while True:
        pts = torch.rand(batch, stars, 3, generator=gen) * 2 - 1
        yield pts, pts


@scenario(
    family="firework_shell_star_burst_slot_attention_autoencoder",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Firework shell star-burst set autoencoder (point encoder, hand-written slot attention "
    "with softmax competition over four slots and GRU updates over three iterations, a slot "
    "decoder, Chamfer reconstruction loss; Adam with a linear warm-up, clipping at 1). Control.",
)
def h469_firework_slot_attention_control(ctx) -> None:
    gen = seeded(46911)
    model = _StarBurst()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    losses, _ = _loop(ctx, model, opt, _bursts(gen), 200, _chamfer, clip=1.0, sched=sched)
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell under half", _mean(losses[-10:]) < 0.5 * _mean(losses[:10]))


# -- 12. control: BYOL with a cosine EMA momentum ---------------------------------------------------


class _Hamon(nn.Module):
    def __init__(self, d_in=24, dim=32, proj=16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.projector = nn.Sequential(
            nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(), nn.Linear(dim, proj)
        )
        self.predictor = nn.Sequential(
            nn.Linear(proj, dim), nn.BatchNorm1d(dim), nn.ReLU(), nn.Linear(dim, proj)
        )


def _byol(p, z):
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1).mean()


@scenario(
    family="bladesmith_hamon_pattern_byol_encoder",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bladesmith hamon-pattern encoder trained BYOL-style (online encoder, projector and "
    "predictor; a target encoder and projector updated as an exponential moving average whose "
    "momentum follows a cosine schedule from 0.99 to 1; two noisy, masked views of a hamon "
    "profile; symmetric cosine loss; AdamW with weight decay). Control.",
)
def h469_hamon_byol_cosine_ema_control(ctx) -> None:
    import copy

    gen = seeded(46912)
    online = _Hamon()
    target = copy.deepcopy(online)
    for p in target.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(46912)
    basis = torch.randn(6, 24, generator=g)
    steps = 200
    opt = torch.optim.AdamW(
        [
            *online.encoder.parameters(),
            *online.projector.parameters(),
            *online.predictor.parameters(),
        ],
        lr=2e-3,
        weight_decay=1e-2,
    )
    ctx.attach(online, opt)
    losses, taus = [], []

    def view(x):
        keep = (torch.rand(x.shape, generator=gen) > 0.2).float()
        return keep * x + 0.3 * torch.randn(x.shape, generator=gen)

    for step in range(steps):
        x = torch.randn(64, 6, generator=gen) @ basis
        v1, v2 = view(x), view(x)
        p1 = online.predictor(online.projector(online.encoder(v1)))
        p2 = online.predictor(online.projector(online.encoder(v2)))
        with torch.no_grad():
            z1 = target.projector(target.encoder(v1))
            z2 = target.projector(target.encoder(v2))
        loss = 0.5 * (_byol(p1, z2) + _byol(p2, z1))
        loss.backward()
        ctx.grad_norms.append(grad_norm(online))
        opt.step()
        tau = 1 - (1 - 0.99) * (math.cos(math.pi * step / steps) + 1) / 2
        taus.append(tau)
        with torch.no_grad():
            for name in ("encoder", "projector"):
                for pt, po in zip(
                    getattr(target, name).parameters(),
                    getattr(online, name).parameters(),
                    strict=True,
                ):
                    pt.mul_(tau).add_(po.detach(), alpha=1 - tau)
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell", _mean(losses[-10:]) < 0.8 * _mean(losses[:10]))
    ctx.check("momentum rose from 0.99 to 1", taus[0] < 0.9901 and taus[-1] > 0.9999)


# -- 13. control: fp16 autocast with a GradScaler ---------------------------------------------------


class _KojiNet(nn.Module):
    def __init__(self, d_in=16, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="miso_koji_ferment_stage_fp16_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Miso koji fermentation-stage classifier (ReLU MLP on temperature, humidity and "
    "colour readings of the koji bed; fp16 autocast with a torch.amp.GradScaler, SGD momentum "
    "under OneCycleLR, label smoothing 0.1, clipping at 1 after unscale). Control.",
)
def h469_miso_koji_fp16_control(ctx) -> None:
    gen = seeded(46913)
    model = _KojiNet()
    data = _grades(gen, 64, 16, 5, seed=46913, spread=1.3)
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    losses = []
    for _ in range(steps):
        x, y = next(data)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite", _finite(losses))
    ctx.check("loss fell under half", _mean(losses[-10:]) < 0.5 * _mean(losses[:10]))
