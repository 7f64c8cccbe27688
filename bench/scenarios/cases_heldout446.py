"""Held-out set 446 (``h446_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before. See each scenario's note."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
    With ``attach=False`` it is a reference run outside the monitor (ctx is None)."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
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
        if attach:
            ctx.grad_norms.append(grad_norm(model))
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
    return losses


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


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


# -- a decoder-only LM with rotary embeddings over an auctioneer's chant grammar ------------------

_WORDS = ["<s>", "lot", "bid", "now", "do", "i", "hear", "going", "once", "twice", "sold"]
_NUMS = [f"n{i}" for i in range(12)]
_VOCAB = _WORDS + _NUMS


def _chant(gen):
    """One lot: 'lot N bid A (now B | do i hear B)* going once going twice sold', rising bids."""
    tok = _VOCAB.index
    lot = int(torch.randint(0, 12, (1,), generator=gen))
    bid = int(torch.randint(0, 4, (1,), generator=gen))
    out = [tok("<s>"), tok("lot"), tok(_NUMS[lot]), tok("bid"), tok(_NUMS[bid])]
    rounds = int(torch.randint(1, 4, (1,), generator=gen))
    for _ in range(rounds):
        bid = min(bid + 1 + int(torch.randint(0, 2, (1,), generator=gen)), 11)
        if float(torch.rand(1, generator=gen)) < 0.5:
            out += [tok("now"), tok(_NUMS[bid])]
        else:
            out += [tok("do"), tok("i"), tok("hear"), tok(_NUMS[bid])]
    out += [tok("going"), tok("once"), tok("going"), tok("twice"), tok("sold")]
    return out


def _chant_batches(gen, batch=16, length=32):
    stream: list[int] = []
    while True:
        rows = []
        for _ in range(batch):
            while len(stream) < length + 1:
                stream += _chant(gen)
            rows.append(stream[: length + 1])
            stream = stream[length + 1 :]
        win = torch.tensor(rows)
        yield win[:, :-1], win[:, 1:]


def _rotate(x, cos, sin):
    a, b = x[..., ::2], x[..., 1::2]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2)


class _RotaryAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.max_logit = 0.0

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = (
            m(x).reshape(b, t, self.heads, hd).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        freq = 1.0 / (10000 ** (torch.arange(0, hd, 2).float() / hd))
        ang = torch.arange(t).float()[:, None] * freq[None]
        q, k = _rotate(q, ang.cos(), ang.sin()), _rotate(k, ang.cos(), ang.sin())
        logits = q @ k.transpose(-1, -2) / math.sqrt(hd)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        self.max_logit = float(logits.detach().masked_fill(mask, 0.0).abs().max())
        att = logits.masked_fill(mask, float("-inf")).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class _ChantBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _RotaryAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _ChantLM(nn.Module):
    def __init__(self, vocab=23, dim=32, heads=2, layers=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_ChantBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok.weight  # tied
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx):
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _lm_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


CHANT_LR = 3e-2


def _chant_run(ctx, lr, steps=150):
    gen = seeded(4461)
    batches = _chant_batches(gen)
    model = _ChantLM()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.95))
    if ctx is not None:
        ctx.attach(model, opt)
    trace, losses = [], []
    for _ in range(steps):
        x, y = next(batches)
        loss = _lm_loss(model(x), y)
        loss.backward()
        opt.step()
        if ctx is not None:
            ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        trace.append(max(b.attn.max_logit for b in model.blocks))
        losses.append(float(loss.detach()))
        if not math.isfinite(float(loss)):
            break
    return trace, losses


def _readings(gen, batch, d_in, seed, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="livestock_auction_chant_rotary_decoder_lm",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Livestock-auction chant LM: a hand-written decoder-only transformer with rotary "
    "position embeddings and a tied head over token streams from a small auctioneer grammar "
    "(lot N bid A, now B / do i hear B, going once going twice sold), AdamW. The config's lr is "
    "typed 3e-2 for 3e-4, with no warm-up and no QK normalisation: q and k grow and the "
    "attention logits q.k/sqrt(d) grow far past those of the run at 3e-4.",
)
def h446_auction_chant_attention_logit_growth(ctx):
    trace, _ = _chant_run(ctx, CHANT_LR)
    ref, _ = _chant_run(None, 3e-4)
    ctx.check("max attention logit over 10x its start", max(trace[-10:]) > 10 * trace[0])
    ctx.check("max attention logit over 5x the 3e-4 run's", max(trace[-10:]) > 5 * max(ref[-10:]))
    ctx.check("still rising over the second half", _mean(trace[-20:]) > _mean(trace[70:90]))


@scenario(
    family="bowyer_stave_grade_temperature_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bowyer's stave-grade classifier (GELU MLP on grain, ring-count and moisture features, "
    "cross-entropy, RAdam). The softmax temperature is typed 0.004 for 0.4: the logits are "
    "divided by 0.004 and the softmax saturates, target probabilities rounding to exactly 1.0.",
)
def h446_bowyer_stave_softmax_collapse(ctx):
    gen = seeded(4462)
    model = _Net(12, 64, 5, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    temp = 0.004
    batches = _grades(gen, 64, 12, 5, seed=4462, spread=1.2)
    ctx.attach(model, opt)
    frac, ref = [], []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        raw = model(x)
        loss = F.cross_entropy(raw / temp, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        frac.append(collapsed_fraction(raw.detach() / temp, y))
        ref.append(collapsed_fraction(raw.detach() / 0.4, y))
    ctx.check("over half the rows saturate to exactly 1.0 (last 30)", _mean(frac[-30:]) > 0.5)
    ctx.check("under 5% at 0.4 on the same logits", _mean(ref[-30:]) < 0.05)
    ctx.check("loss finite", _finite(ctx.losses))


SPIKE_AT = 120


@scenario(
    family="hammer_throw_release_collate_len_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SPIKE_AT,
    note="Hammer-throw distance regressor (tanh MLP on release angle, speed and height, summed "
    "squared error divided by the batch length, plain SGD, clipping at 5). At step 120 the "
    "loader hands the batch collated as a list of one tensor and the code divides by len(batch) "
    "= 1 for 64: one gradient 64x, on an ordinary logged (mean) loss; the run recovers.",
)
def h446_hammer_throw_gradient_spike(ctx):
    gen = seeded(4463)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = _readings(gen, 64, 8, seed=4463)

    def backprop(step, loss):
        n = 1 if step == SPIKE_AT else 64
        return loss * 64 / n

    _loop(ctx, model, opt, batches, 220, F.mse_loss, backprop=backprop, clip=5.0)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient at onset over 30x the median before", g[SPIKE_AT] > 30 * _median(g[60:SPIKE_AT])
    )
    ctx.check(
        "logged loss at onset ordinary (under 2x)", ls[SPIKE_AT] < 2 * _median(ls[100:SPIKE_AT])
    )
    ctx.check(
        "recovers (last 20 under 2x the median before)",
        _mean(ls[-20:]) < 2 * _median(ls[100:SPIKE_AT]),
    )


@scenario(
    family="bog_snorkel_lap_time_inplace_target_drift_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Bog-snorkelling lap-time regressor (SiLU MLP, MSE, Adam). The cached lap-time tensor "
    "is converted seconds-to-minutes-and-back in place on every pass (a view mutated with "
    "mul_), leaving it 12% larger each epoch: the target drifts and the loss climbs slowly.",
)
def h446_bog_snorkel_loss_divergence(ctx):
    gen = seeded(4464)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    src = _readings(gen, 512, 8, seed=4464)
    X, Y = next(src)
    start = float(Y.abs().mean())

    def batches():
        while True:
            for i in range(0, 512, 64):
                yb = Y[i : i + 64]
                yb.mul_(1.12)
                yield X[i : i + 64], yb.clone()

    _loop(ctx, model, opt, batches(), 240, F.mse_loss)
    ls = ctx.losses
    ctx.check("loss over the last 20 over 3x its lowest", _mean(ls[-20:]) > 3 * min(ls))
    ctx.check("climbing through the second half", _mean(ls[-20:]) > _mean(ls[120:140]))
    ctx.check("target scale drifted over 3x", float(Y.abs().mean()) > 3 * start)
    ctx.check("finite", _finite(ls))


NAN_AT = 90


class _RowNorm(nn.Module):
    def forward(self, x):
        return x / x.norm(dim=-1, keepdim=True)


class _BellowsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.rownorm = _RowNorm()
        self.fc1 = nn.Linear(10, 48)
        self.fc2 = nn.Linear(48, 1)

    def forward(self, x):
        return self.fc2(F.silu(self.fc1(self.rownorm(x)))).squeeze(-1)


@scenario(
    family="forge_bellows_draught_row_norm_silu_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("rownorm",),
    diverges=NAN_AT,
    heldout=True,
    onset=NAN_AT,
    note="Forge-bellows draught regressor (SiLU MLP on ten pressure-gauge readings, each row "
    "divided by its norm with no epsilon, MSE, NAdam). At step 90 a blocked bellows reads 0 on "
    "every gauge: 0/0 in the row normalisation, the loss NaN at step 90.",
)
def h446_forge_bellows_nonfinite(ctx):
    gen = seeded(4465)
    model = _BellowsNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _readings(gen, 32, 10, seed=4465)

    def alter(step, x, y):
        if step == NAN_AT:
            x = x.clone()
            x[3] = 0.0
        return x, y

    _loop(ctx, model, opt, batches, 160, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("finite before the blocked gauge", _finite(ls[:NAN_AT]))
    ctx.check("loss NaN at step 90", _first_bad(ls) == NAN_AT)


OUTLIER_AT = 110


@scenario(
    family="sled_dog_checkpoint_split_shard_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=OUTLIER_AT,
    note="Sled-dog checkpoint split-time regressor (ReLU MLP, MSE, SGD momentum 0.9, clipping "
    "at 1). One checkpoint's shard at step 110 logs its splits in seconds for minutes (60x the "
    "targets): one corrupted batch, the loss and gradient spike, the run recovers.",
)
def h446_sled_dog_data_outlier(ctx):
    gen = seeded(4466)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = _readings(gen, 64, 8, seed=4466)

    def alter(step, x, y):
        return (x, 60.0 * y) if step == OUTLIER_AT else (x, y)

    _loop(ctx, model, opt, batches, 220, F.mse_loss, alter=alter, clip=1.0)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "loss at onset over 100x the median before",
        ls[OUTLIER_AT] > 100 * _median(ls[60:OUTLIER_AT]),
    )
    ctx.check("gradient at onset over 20x", g[OUTLIER_AT] > 20 * _median(g[60:OUTLIER_AT]))
    ctx.check("recovers", _mean(ls[-20:]) < 2 * _median(ls[60:OUTLIER_AT]))


class _Curragh(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(10, 48)
        self.act = nn.ReLU()
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(self.act(self.trunk(x))).squeeze(-1)


@scenario(
    family="curragh_rowing_stroke_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("trunk",),
    diverges=None,
    heldout=True,
    note="Curragh rowing stroke-power regressor (ReLU MLP in two param groups, MSE, Adagrad). "
    "The trunk group's lr is typed 1e-9 for 1e-2: the trunk receives gradients but barely "
    "moves while the head trains.",
)
def h446_curragh_update_ratio(ctx):
    gen = seeded(4467)
    model = _Curragh()
    opt = torch.optim.Adagrad(
        [
            {"params": model.trunk.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = _readings(gen, 64, 10, seed=4467)
    _loop(ctx, model, opt, batches, 150, F.mse_loss)
    moved = {n: _rel_change(before[n], p) for n, p in model.named_parameters()}
    ctx.check("trunk moves under 1e-5 of its norm", moved["trunk.weight"] < 1e-5)
    ctx.check("head moves over 5%", moved["head.weight"] > 0.05)
    ctx.check("finite", _finite(ctx.losses))


class _IRNN(nn.Module):
    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.inp = nn.Linear(d_in, hidden)
        self.cell = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.cell.weight.copy_(gain * torch.eye(hidden))
            self.cell.bias.zero_()
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.cell(h))
            h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _drips(gen, batch, length=30):
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        y = 0.5 * x[:, -5:, 0].mean(1) + 0.3 * torch.tanh(x[:, :, 1].mean(1))
        yield x, y


def _irnn_ratio(gain, steps, ctx=None):
    gen = seeded(4468)
    model = _IRNN(gain=gain)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    if ctx is not None:
        ctx.attach(model, opt)
    batches = _drips(gen, 32)
    ratios = []
    for _ in range(steps):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = float(model.states[0].grad.norm())
        last = float(model.states[-1].grad.norm()) + 1e-12
        ratios.append(first / last)
        if ctx is not None:
            ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ctx is not None:
            ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    return ratios


@scenario(
    family="stalagmite_drip_interval_irnn_gain_regressor",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="Stalagmite drip-interval regressor: a hand-written ReLU RNN (IRNN) over 30 drip "
    "readings, MSE, RMSprop, clipping at 1. The recurrent matrix's identity init is scaled by "
    "the config's rec_gain read as 1.25 for 0.95: gradients grow back through time, "
    "dL/dh_0 far larger than dL/dh_29.",
)
def h446_stalagmite_exploding_gradients(ctx):
    ratios = _irnn_ratio(1.25, 120, ctx)
    ref = _irnn_ratio(0.95, 20)
    ctx.check("dL/dh_0 over 100x dL/dh_29 at the start", ratios[0] > 100)
    ctx.check("median ratio over 20x", _median(ratios) > 20)
    ctx.check("under 5x at gain 0.95", ref[0] < 5)


@scenario(
    family="lobster_creel_haul_weight_dead_bias_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Lobster-creel haul-weight regressor (ReLU MLP, MSE, Adamax). fc2's biases are "
    "initialised to -3.0, copied from a sparse gating layer's config: fc2's ReLUs are dead "
    "from the start and stay dead, the loss stays far above a zero-bias run's.",
)
def h446_lobster_creel_plasticity(ctx):
    def run(bias, c):
        gen = seeded(4469)
        model = _Net(8, 48, 1)
        with torch.no_grad():
            model.fc2.bias.fill_(bias)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        batches = _readings(gen, 64, 8, seed=4469)
        ls = _loop(c, model, opt, batches, 150, F.mse_loss, attach=c is not None)
        x, _ = next(batches)
        return ls, dead_fraction(model.features(x).detach())

    ls, dead = run(-3.0, ctx)
    ref_ls, ref_dead = run(0.0, None)
    ctx.check("over 80% of fc2's units dead at the end", dead > 0.8)
    ctx.check("under 20% dead with zero bias", ref_dead < 0.2)
    ctx.check("loss over 1.5x the reference's", _mean(ls[-20:]) > 1.5 * _mean(ref_ls[-20:]))


@scenario(
    family="dry_stone_wall_course_csv_label_bce_net",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Dry-stone wall course-stability classifier (ReLU MLP, BCE with logits, SGD Nesterov). "
    "The CSV codes stable/unstable as 1/2 and the labels are not remapped to 0/1: with a "
    "target of 2 the loss falls without bound as the logit grows, the head's logits diverge.",
)
def h446_dry_stone_output_logit(ctx):
    gen = seeded(4470)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    g = torch.Generator().manual_seed(4470)
    w = torch.randn(8, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 8, generator=gen)
            yield x, 1.0 + (x @ w > 0).float()

    trace = []

    def after(step):
        with torch.no_grad():
            trace.append(float(model(probe).abs().max()))

    probe = torch.randn(64, 8, generator=g)
    trace0 = float(model(probe).abs().max())
    _loop(ctx, model, opt, batches(), 150, F.binary_cross_entropy_with_logits, after=after)
    ctx.check("max |logit| over 20x its start", trace[-1] > 20 * trace0)
    ctx.check("still growing", trace[-1] > 1.2 * trace[100])
    ctx.check("the 'loss' below -5", ctx.losses[-1] < -5)


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    family="erratic_boulder_travel_full_batch_eos_tanh_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Glacial-erratic boulder travel-distance regressor (tanh MLP, MSE) trained by "
    "full-batch gradient descent at the edge of stability (Cohen et al. 2021): the lr is set so "
    "the loss is non-monotone step to step but falls over the run. Control.",
)
def h446_erratic_boulder_eos_healthy(ctx):
    gen = seeded(4471)
    model = _Net(6, 64, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=EOS_LR)
    X, Y = next(_readings(gen, 256, 6, seed=4471))

    def batches():
        while True:
            yield X, Y

    _loop(ctx, model, opt, batches(), 250, F.mse_loss)
    ls = ctx.losses
    ups = sum(1 for a, b in zip(ls[:-1], ls[1:], strict=False) if b > a)
    ctx.check("loss fell under half", _mean(ls[-10:]) < 0.5 * ls[0])
    ctx.check("non-monotone: 10+ step-to-step rises", ups >= 10)
    ctx.check("finite", _finite(ls))


EOS_LR = 0.3


class _Cajon(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x)), 2)
        return self.head(F.relu(self.conv2(x)).mean(-1))


def _slaps(gen, batch, classes=4, length=48):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        width = 1.0 + y.float()
        centre = 24 + 4 * torch.randn(batch, generator=gen)
        pulse = torch.exp(-0.5 * ((t - centre[:, None]) / width[:, None]) ** 2)
        x = 0.3 * torch.randn(batch, 2, length, generator=gen)
        x[:, 0] += 2 * pulse
        x[:, 1] += pulse * torch.sin(t * (0.5 + 0.3 * y[:, None]))
        yield x, y


@scenario(
    family="cajon_slap_tone_fp16_onecycle_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cajón slap/bass/tip/ghost tone classifier (ReLU Conv1d on a contact-mic trace, fp16 "
    "autocast with GradScaler, AdamW under OneCycleLR, label smoothing 0.1, clipping at 1). "
    "Control.",
)
def h446_cajon_fp16_healthy(ctx):
    gen = seeded(4472)
    model = _Cajon()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _slaps(gen, 32),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="sourdough_starter_rise_asgd_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sourdough starter rise-height regressor (SiLU MLP on flour, hydration and temperature "
    "features, Huber loss, ASGD under ReduceLROnPlateau, accumulation over 2, noisy batches). "
    "Control.",
)
def h446_sourdough_asgd_healthy(ctx):
    gen = seeded(4473)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _readings(gen, 32, 8, seed=4473, noise=0.2)
    _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        F.huber_loss,
        sched=sched,
        plateau=lambda: ctx.losses[-1] if ctx.losses else 1.0,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("finite", _finite(ctx.losses))
