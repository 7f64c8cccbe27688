"""Held-out set 289 (``h289_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a fly-tying pattern recommender with attention over an
angler's history whose QK-norm flag was misspelt in the config, a glassblower glory-hole
reheat GELU regressor whose resume step reads the loss weight from the fp16 loss-scale field
(Adam's second moment poisoned), a wet-cooper stave-bevel two-group regressor whose trunk lr key
was misspelt (lr 0), a fog-signal audible-range regressor fed one station's batch with -9999
sentinels, a tip-up flag masked-pool net dividing by the count of valid readings (0/0), a
pipe-organ wind-chest pressure MLP under fp16 autocast fed ADC counts, a hailstone growth-layer
deep tanh MLP initialised at std 1, a sheepdog whistle-command classifier whose temperature was
written in percent, a horseshoe forge-weld strength regressor whose last-batch branch sums the
loss, a lacrosse pocket-shot ReLU classifier whose Adagrad lr was typed 1.0, and three controls
(a reindeer-joik rhythm conv1d classifier with Adam and clipping at 0.1, a bobbin-lace pricking
GELU classifier under fp16 autocast with a GradScaler, a mudpot bubble-interval Huber regressor
with SGD Nesterov and ReduceLROnPlateau).

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
    alter=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    weight=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step, ``weight(step)`` multiplies the backpropagated loss (the logged loss is
    the unweighted one); ``amp``: fp16 autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight(step) if weight is not None else 1.0
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
            total = w * loss / accumulate
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


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


# -- fly-tying recommender: the QK-norm flag misspelt, attention over the history unbounded -----

ITEMS, STYLES, HIST = 60, 6, 10


class HistoryAttention(nn.Module):
    """Target-aware attention over the angler's history (DIN-style): the candidate pattern is
    the query, the tied patterns of the history are keys and values."""

    def __init__(self, dim, qk_norm=False):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.qk_norm = qk_norm
        self.dim = dim
        for lin in (self.q, self.k):
            nn.init.normal_(lin.weight, std=0.02)

    def logits(self, cand, hist):
        q, k = self.q(cand)[:, None], self.k(hist)
        if self.qk_norm:
            q, k = F.normalize(q, dim=-1) * 4.0, F.normalize(k, dim=-1) * 4.0
        return (q * k).sum(-1) / math.sqrt(self.dim)

    def forward(self, cand, hist):
        att = torch.softmax(self.logits(cand, hist), -1)
        return (att[..., None] * self.v(hist)).sum(1)


class FlyTyingRecommender(nn.Module):
    def __init__(self, dim=32, qk_norm=False):
        super().__init__()
        self.item = nn.Embedding(ITEMS, dim)
        self.attn = HistoryAttention(dim, qk_norm)
        self.fc = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, batch):
        cand, hist = self.item(batch[:, 0]), self.item(batch[:, 1:])
        user = self.attn(cand, hist)
        return self.head(F.relu(self.fc(torch.cat([user, cand], -1)))).squeeze(-1)


def _angler_history(gen, batch):
    """Column 0 the candidate pattern, then 10 patterns the angler tied; the angler ties the
    candidate (label 1) when a pattern of the same style (id % 6) is in the history."""
    while True:
        cand = torch.randint(0, ITEMS, (batch,), generator=gen)
        other = torch.randint(1, STYLES, (batch, HIST), generator=gen)
        hist = (cand[:, None] % STYLES + other) % STYLES
        hist = hist + STYLES * torch.randint(0, ITEMS // STYLES, (batch, HIST), generator=gen)
        y = torch.rand(batch, generator=gen) < 0.5
        pos = torch.randint(0, HIST, (batch,), generator=gen)
        match = cand % STYLES + STYLES * torch.randint(0, ITEMS // STYLES, (batch,), generator=gen)
        rows = torch.arange(batch)
        hist[rows, pos] = torch.where(y, match, hist[rows, pos])
        yield torch.cat([cand[:, None], hist], 1), y.float()


@scenario(
    family="fly_tying_pattern_history_attention_recommender",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written recommender (item embedding, attn = target-aware attention over the 10 fly patterns an angler tied last, with the candidate pattern as the query; fc, head) predicting whether the angler will tie a candidate pattern, BCE with logits, 400 steps, AdamW at 1e-2 with weight decay 0. The model was meant to run with QK-norm (q and k L2-normalised and scaled by 4, which bounds |q.k/sqrt(d)| at 16/sqrt(32), under 3), but the experiment config spelt the flag `qknorm` and the builder read `qk_norm` with a default of False, so the attention runs unnormalised: nothing bounds q.k/sqrt(d) and the peak attention logit (q and k initialised at std 0.02) grows over 20x and past 4, above anything the flag would have allowed. Finite, no blow-up.",
)
def h289_fly_tying_history_attention(ctx: Context) -> None:
    gen = seeded(28901)
    model = FlyTyingRecommender(qk_norm=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    peaks: list[float] = []
    probe = next(_angler_history(torch.Generator().manual_seed(7), 256))[0]

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                cand, hist = model.item(probe[:, 0]), model.item(probe[:, 1:])
                peaks.append(float(model.attn.logits(cand, hist).abs().max()))

    _train(
        ctx,
        model,
        opt,
        _angler_history(gen, 64),
        400,
        F.binary_cross_entropy_with_logits,
        after=after,
    )
    ctx.check("the peak attention logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak attention logit passed 4, above the QK-norm bound", peaks[-1] > 4.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- glassblower: the resume step reads the loss weight from the fp16 loss-scale field ----------

ONSET_GLASS = 40


@scenario(
    family="glassblower_glory_hole_reheat_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GLASS,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing how long a glass gather needs in the glory hole from 10 standardised readings (gather mass, glass colour, furnace and glory-hole temperature), Adam at 1e-3 (betas 0.9, 0.999), MSE, no clipping. The run resumes from a checkpoint at step 40 and the resume code reads the loss weight from the checkpoint's `scale` field, which holds the GradScaler's fp16 loss scale (65536) of an earlier mixed-precision run: that one step backpropagates the loss times 65536 on an ordinary batch. The step itself is bounded (Adam normalises it), but the one gradient over 10,000x the usual fills Adam's second moment, which decays only as 0.999^t: for the rest of the run every update is over 10x smaller than before and the loss, still falling fast before the resume, stalls.",
)
def h289_glassblower_resume_loss_scale(ctx: Context) -> None:
    gen = seeded(28902)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    prev = [_flat(model)]

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=902),
        200,
        F.mse_loss,
        weight=lambda s: 65536.0 if s == ONSET_GLASS else 1.0,
        after=after,
    )
    g = ctx.grad_norms
    base = _median(g[ONSET_GLASS - 20 : ONSET_GLASS])
    ctx.check(
        "the gradient at the resume step is over 10,000x the usual", g[ONSET_GLASS] > 1e4 * base
    )
    before_moves = _median(moves[ONSET_GLASS - 20 : ONSET_GLASS])
    ctx.check(
        "updates after the resume are over 10x smaller than before",
        _median(moves[ONSET_GLASS + 10 : ONSET_GLASS + 110]) < 0.1 * before_moves,
    )
    ls = ctx.losses
    ctx.check(
        "the loss falls before the resume and stalls after it",
        _mean(ls[ONSET_GLASS - 10 : ONSET_GLASS]) < 0.8 * _mean(ls[:10])
        and _mean(ls[-20:]) > 0.8 * _mean(ls[ONSET_GLASS + 1 : ONSET_GLASS + 21]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- stave bevel: the trunk lr key was misspelt, the group trains at lr 0 -----------------------


@scenario(
    family="wet_cooper_stave_bevel_two_group_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the bevel angle a wet cooper planes on a stave from 12 standardised readings (stave width, head diameter, bilge, wood moisture), RMSprop at 3e-3 with two param groups: the trunk (fc1) at cfg.get('trunk_lr', 0.0), the rest at 3e-3, MSE. The config spelt the key `trunk_LR`, so the trunk group silently gets lr 0.0: fc1 never moves from its random init (its update ratio |dW|/|W| is exactly 0 every step) while fc2 and the head train. The loss still falls as far as the upper layers can take it.",
)
def h289_stave_bevel_trunk_lr_key(ctx: Context) -> None:
    gen = seeded(28903)
    model = Stack(12, 64)
    cfg = {"trunk_LR": 3e-3, "lr": 3e-3}
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": cfg.get("trunk_lr", 0.0)},
            {"params": rest, "lr": cfg["lr"]},
        ],
        lr=cfg["lr"],
    )
    fc1_0, fc2_0 = _flat(model.fc1), _flat(model.fc2)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=903), 200, F.mse_loss)
    ctx.check("fc1 never moved", float((_flat(model.fc1) - fc1_0).abs().max()) == 0.0)
    ctx.check(
        "fc2 moved over 1% of its norm",
        float((_flat(model.fc2) - fc2_0).norm()) > 0.01 * float(fc2_0.norm()),
    )
    ctx.check("the loss still fell", _fell(ctx.losses))


# -- fog signal: one station's batch carries -9999 sentinels ------------------------------------

ONSET_FOG = 110


@scenario(
    family="fog_signal_diaphone_audible_range_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_FOG,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how far a lighthouse fog-signal diaphone is heard from 10 standardised readings (humidity, wind, air temperature gradient, sea state), SGD momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0. One coastal station's export wrote missing readings as the sentinel -9999 instead of NaN and the loader's dropna never saw them: the batch at step 110 carries six such rows with two readings at -9999. The loss and gradient jump by orders of magnitude on that one batch, clipping bounds the step and the run recovers.",
)
def h289_fog_signal_sentinel_batch(ctx: Context) -> None:
    gen = seeded(28904)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_FOG:
            x = x.clone()
            x[:6, 3] = -9999.0
            x[:6, 7] = -9999.0
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=904), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_FOG - 20 : ONSET_FOG])
    ctx.check("the loss on the bad batch is over 1000x the usual", ls[ONSET_FOG] > 1000 * pre)
    ctx.check(
        "the gradient on the bad batch is over 100x the usual",
        g[ONSET_FOG] > 100 * _median(g[ONSET_FOG - 20 : ONSET_FOG]),
    )
    ctx.check("the run recovered", _mean(ls[-20:]) < 2.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- tip-up flags: the masked pool divides by the count of valid readings -----------------------

ONSET_TIP = 70


class MaskedPool(nn.Module):
    """Mean over the valid time steps of each sample: sum(h * mask) / mask.sum()."""

    def forward(self, h, mask):
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


class TipUpNet(nn.Module):
    """Per-step encoder of (line tension, flag angle, water temperature) readings, a masked mean
    pool over time, a head naming the strike kind (none, nibble, run, snag)."""

    def __init__(self, d_in=3, dim=32, classes=4):
        super().__init__()
        self.enc = nn.Linear(d_in, dim)
        self.act = nn.SiLU()
        self.pool = MaskedPool()
        self.head = nn.Linear(dim, classes)

    def forward(self, batch):
        x, mask = batch[..., :-1], batch[..., -1]
        return self.head(self.pool(self.act(self.enc(x)), mask))


def _tip_up(gen, batch, steps=16, classes=4):
    g = torch.Generator().manual_seed(905)
    protos = torch.randn(classes, 3, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y][:, None] + 0.8 * torch.randn(batch, steps, 3, generator=gen)
        mask = (torch.rand(batch, steps, generator=gen) > 0.3).float()
        mask[:, 0] = 1.0
        yield torch.cat([x, mask[..., None]], -1), y


@scenario(
    family="ice_fishing_tip_up_flag_masked_pool_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("pool",),
    diverges=ONSET_TIP,
    heldout=True,
    onset=ONSET_TIP,
    note="A hand-written net (enc, act, pool = a masked mean over time, head) naming the strike kind on an ice-fishing tip-up from 16 readings of line tension, flag angle and water temperature with a validity mask, NAdam at 2e-3, cross-entropy. The pool divides the masked sum by mask.sum() with no clamp; the loader always kept at least one valid reading until a tip-up whose sensor froze over delivered a window with every reading flagged invalid at step 70: 0/0 in the pool gives NaN for that sample, and the loss is NaN from step 70.",
)
def h289_tip_up_masked_pool_zero_count(ctx: Context) -> None:
    gen = seeded(28905)
    model = TipUpNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == ONSET_TIP:
            x = x.clone()
            x[5, :, -1] = 0.0
        return x, y

    _train(ctx, model, opt, _tip_up(gen, 64), 150, F.cross_entropy, alter=alter, classifier=True)
    ls = ctx.losses
    ctx.check("finite before the frozen sensor", _finite(ls[:ONSET_TIP]))
    ctx.check("the loss is NaN at step 70", len(ls) > ONSET_TIP and math.isnan(ls[ONSET_TIP]))
    ctx.check("the loss fell before", _mean(ls[ONSET_TIP - 10 : ONSET_TIP]) < 0.9 * _mean(ls[:10]))


# -- wind chest: ADC counts under fp16 autocast -------------------------------------------------


@scenario(
    family="pipe_organ_wind_chest_pressure_fp16_mlp",
    optimizer="SGD Nesterov",
    cause="amp_overflow",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a pipe organ's wind-chest pressure from 8 manometer and bellows readings, SGD Nesterov momentum 0.9 at 1e-3, MSE, clipping at 1.0, fp16 autocast with a torch.amp.GradScaler (initial scale 65536). The loader was switched to a new acquisition card and no longer divides the readings by the ADC full scale, so the inputs arrive as raw counts in the thousands: the forward pass still fits in fp16, but the first layer's weight gradient (counts times upstream gradient summed over the batch) overflows fp16 at every scale the GradScaler tries, so it skips step after step and halves its scale down by over 1000x.",
)
def h289_wind_chest_adc_counts_fp16(ctx: Context) -> None:
    gen = seeded(28906)
    model = Stack(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)

    def alter(step, x, y):
        return x * 2500.0, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=906),
        120,
        F.mse_loss,
        alter=alter,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    sc = ctx.scales
    skipped = sum(1 for a, b in zip(sc[:-1], sc[1:], strict=False) if b < a) + (sc[0] < 65536.0)
    ctx.check("the GradScaler's scale fell over 1000x", min(sc) < 65536.0 / 1000)
    ctx.check("over 15 steps skipped for overflow", skipped > 15)
    ctx.check("the logged loss stayed finite", _finite(ctx.losses))


# -- hailstone layers: a deep tanh MLP initialised at std 1 ------------------------------------


class HailDeep(nn.Module):
    def __init__(self, d_in=10, width=64, depth=10):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=1.0)  # meant: std=1.0 / math.sqrt(fan_in)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="hailstone_growth_ring_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 10-layer tanh MLP (layers.0 .. layers.9, head) regressing a hailstone's final diameter from 10 standardised radar and sounding readings (updraft speed, liquid water content, freezing level), plain SGD at 1e-3, MSE, clipping at 5.0. The init helper was meant to draw each weight at std 1/sqrt(fan_in) but the division was dropped, so every layer is drawn at std 1: the net sits deep in the chaotic regime and the gradient grows layer by layer towards the input, the first layer's over 30x the last layer's. Clipping keeps the run finite but it barely learns.",
)
def h289_hailstone_deep_tanh_init(ctx: Context) -> None:
    gen = seeded(28907)
    model = HailDeep()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios: list[float] = []

    batches = _readings(gen, 64, 10, seed=907)
    ctx.attach(model, opt)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / max(last, 1e-12))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the first layer's gradient is over 30x the last layer's", _median(ratios) > 30)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sheepdog whistles: the temperature written in percent --------------------------------------


class WhistleNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=6, temperature=1.0):
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
    family="sheepdog_whistle_command_tempered_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU classifier (fc1, act1, fc2, act2, head, logits divided by a temperature) naming which of 6 shepherd's whistle commands (come-bye, away, walk up, lie down, that'll do, look back) a 16-band whistle spectrum carries, Adamax at 2e-3, cross-entropy. The config gives the temperature as `temperature_pct: 1` (meaning 1.0) and the loader divides by 100, so the head's logits are divided by 0.01: they are 100x what the linear layer gives and the float32 softmax rounds most rows' target probability to exactly 1.0, whose gradient is exactly zero.",
)
def h289_sheepdog_whistle_temperature_pct(ctx: Context) -> None:
    gen = seeded(28908)
    model = WhistleNet(temperature=1 / 100)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fractions: list[float] = []

    def watch(step, out, x, y):
        fractions.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=908),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over a third of the rows' softmax is exactly 1.0", _mean(fractions[-20:]) > 1 / 3)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- horseshoe forge weld: the last-batch branch sums the loss ----------------------------------

ONSET_WELD = 96  # the epoch's last batch: 6144 welds in batches of 64 -> step 95 ends epoch 0


@scenario(
    family="horseshoe_forge_weld_strength_silu_regressor",
    optimizer="RAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_WELD,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the strength of a farrier's forge weld on a bar shoe from 10 standardised readings (heat colour, hammer blows, flux, bar section), RAdam at 3e-3, MSE, clipping at 1.0. The loop has a separate branch for the last, possibly partial, batch of each epoch, copied from an old script that used F.mse_loss(..., reduction='sum'): on step 96, an ordinary batch of 64, the loss is summed instead of averaged and the gradient is 64x the usual. Clipping bounds the step and the run goes on; nothing in the data is wrong.",
)
def h289_horseshoe_weld_sum_reduction(ctx: Context) -> None:
    gen = seeded(28909)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=909),
        200,
        F.mse_loss,
        weight=lambda s: 64.0 if s == ONSET_WELD else 1.0,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    base = _median(g[ONSET_WELD - 20 : ONSET_WELD])
    ctx.check("the gradient at step 96 is over 30x the usual", g[ONSET_WELD] > 30 * base)
    ctx.check(
        "the batch at step 96 is ordinary",
        ls[ONSET_WELD] < 2.0 * _mean(ls[ONSET_WELD - 10 : ONSET_WELD]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- lacrosse pocket: Adagrad lr typed 1.0 for 0.01 ---------------------------------------------


@scenario(
    family="lacrosse_pocket_shot_kind_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, fc2, act2, head) naming a lacrosse shot (overhand, sidearm, underhand, behind-the-back, bounce) from 12 stick-sensor readings in their raw positive units (pocket depth, whip, release speed; not standardised), Adagrad, cross-entropy. The lr was typed 1.0 for 0.01: Adagrad's first steps move every parameter by about the lr, and with all-positive inputs every weight of a unit moves the same way, so most of fc1's ReLU units are pushed below zero on every input (over three quarters dead at the end, under a quarter at init); they get no gradient and never come back, and the loss stalls well above what the net can reach.",
)
def h289_lacrosse_pocket_adagrad_lr(ctx: Context) -> None:
    gen = seeded(28910)
    model = Stack(12, 64, out=5)
    opt = torch.optim.Adagrad(model.parameters(), lr=1.0)
    probe = next(_kinds(torch.Generator().manual_seed(3), 512, 12, 5, seed=910, noise=0.6))[0] + 3

    def alter(step, x, y):
        return x + 3.0, y  # raw positive units, not standardised

    def dead():
        with torch.no_grad():
            return float((model.act1(model.fc1(probe)) <= 0).all(0).float().mean())

    start = dead()
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=910, noise=0.6),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
    )
    end = dead()
    ctx.check("under a quarter of fc1's units dead at init", start < 0.25)
    ctx.check("over three quarters of fc1's units dead at the end", end > 0.75)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls -----------------------------------------------------------------------------------


class JoikConv(nn.Module):
    """Conv1d over a 32-step onset-strength envelope: conv1, act1, conv2, act2, mean pool, head."""

    def __init__(self, channels=16, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _joik(gen, batch, length=32, classes=4):
    """Envelopes pulsing at one of 4 periods with random phase and noise."""
    t = torch.arange(length).float()
    periods = torch.tensor([3.0, 4.0, 6.0, 8.0])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        x = torch.cos(2 * math.pi * t / periods[y][:, None] + phase)
        yield x + 0.5 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="reindeer_joik_pulse_rhythm_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a Conv1d classifier (conv1, act1, conv2, act2, mean pool, head) naming which of 4 pulse rhythms a Sámi reindeer joik's 32-step onset envelope follows, Adam at 3e-3 with a 20-step linear warm-up (LambdaLR), cross-entropy, gradient clipping at a small norm (0.1) every step, noisy envelopes. An ordinary run.",
)
def h289_joik_rhythm_small_clip(ctx: Context) -> None:
    gen = seeded(28911)
    model = JoikConv()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    _train(
        ctx,
        model,
        opt,
        _joik(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        clip=0.1,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="bobbin_lace_pricking_ground_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a GELU classifier (fc1, act1, fc2, act2, head) naming which of 6 lace grounds (torchon, Valenciennes, Mechlin, point, kat stitch, rose) a bobbin-lace pricking's 20 hole-spacing features come from, AdamW at 3e-3 with weight decay 0.05 on weights only (two param groups), OneCycleLR, label smoothing 0.1, gradient accumulation over 2, clipping at 1.0, fp16 autocast with a torch.amp.GradScaler. An ordinary run.",
)
def h289_bobbin_lace_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(28912)
    model = Stack(20, 64, out=6, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 20, 6, seed=912, noise=0.8),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


def _mudpot(gen, batch, d_in=8):
    """Heavy-tailed bubble intervals: a smooth target plus Student-t noise."""
    g = torch.Generator().manual_seed(913)
    w = torch.randn(d_in, generator=g)
    t = torch.distributions.StudentT(2.5)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        noise = t.sample((batch,)) * 0.1
        yield x, torch.tanh(x @ w / math.sqrt(d_in)) + noise


@scenario(
    family="mudpot_bubble_interval_huber_regressor",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="Control: a tanh MLP (fc1, act1, fc2, act2, head) regressing the interval between bubbles of a geothermal mudpot from 8 standardised readings (ground temperature, gas flux, rain), SGD Nesterov momentum 0.9 at 2e-2, Huber loss (delta 1) on heavy-tailed Student-t targets, ReduceLROnPlateau, clipping at 1.0. An ordinary run.",
)
def h289_mudpot_huber_plateau(ctx: Context) -> None:
    gen = seeded(28913)
    model = Stack(8, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(ctx, model, opt, _mudpot(gen, 64), 250, F.huber_loss, clip=1.0, sched=sched)
    ctx.check("the loss fell", _fell(ctx.losses, k=20, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
