"""Held-out set 282 (``h282_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a silambam staff-strike attention classifier whose logit
soft-cap sits in the eval branch only, a land-sailing run-speed tanh regressor whose warm-up
LambdaLR lost its min(1, .), a marine-snow flux SiLU regressor fed one sediment-trap shard in
milligrams, a rushlight pith burn-time GELU regressor whose loader rescales the cached target
table in place, a bagana lyre-mode classifier whose temperature was typed 0.002 for 2.0, a
calf-roping tie-time regressor whose trunk group took a fine-tuning preset's lr multiplier, a
thundersnow field-mill net whose window std is sqrt(E[x^2] - E[x]^2), a rommelpot friction-drum
pulse regressor whose resume step reads the loss weight in percent, a gustnado spin-up
recurrent cell initialised with recurrent gain 3, a bokh bout RankNet scorer whose logsigmoid
was lost in a refactor, and three controls (a whiting-event carbonate regressor on heavy-tailed
targets with a Huber loss, a yubi-lakpi play two-tower retriever with in-batch negatives and a
tied encoder, a pehlwani hold classifier under fp16 autocast with a GradScaler).

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


class _Twin:
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
    alter=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=None,
    accumulate=1,
    weight=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step, ``weight(step)`` multiplies the backpropagated loss (the logged loss is
    the unweighted one); ``amp``: an autocast dtype; stops after logging a non-finite loss."""
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
            with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
                out = model(x)
            out = out.float() if amp is not None else out
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


def _top_eig(model, loss_fn, x, y, iters=15):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((h * u).sum()) for h, u in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- silambam: the attention logit soft-cap sits in the eval branch only -------------------------

SOFTCAP = 20.0


class StrikeAttention(nn.Module):
    """Single-head attention with a tanh soft-cap on q.k/sqrt(d) (Gemma-style)."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.dim = dim

    def logits(self, x):
        return self.q(x) @ self.k(x).transpose(1, 2) / math.sqrt(self.dim)

    def forward(self, x):
        att = self.logits(x)
        if not self.training:  # meant to be unconditional: the cap landed in the eval branch
            att = SOFTCAP * torch.tanh(att / SOFTCAP)
        return torch.softmax(att, -1) @ self.v(x)


class SilambamNet(nn.Module):
    def __init__(self, vocab=26, length=14, dim=32, classes=7):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = StrikeAttention(dim)
        self.head = nn.Linear(dim, classes)
        for lin in (self.attn.q, self.attn.k, self.attn.v):
            nn.init.normal_(lin.weight, std=0.02)

    def embed(self, idx):
        return self.tok(idx) + self.pos(torch.arange(idx.shape[1]))

    def forward(self, idx):
        return self.head(self.attn(self.embed(idx))[:, 0])


def _strikes(gen, batch, length=14, classes=7):
    """Staff-strike token sequences: position 0 is a query token, one combination token
    (19..25) sits somewhere among ordinary strikes (1..18); the class is the combination."""
    while True:
        x = torch.randint(1, 19, (batch, length), generator=gen)
        x[:, 0] = 0
        y = torch.randint(0, classes, (batch,), generator=gen)
        pos = torch.randint(1, length, (batch,), generator=gen)
        x[torch.arange(batch), pos] = 19 + y
        yield x, y


@scenario(
    family="silambam_staff_strike_softcap_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-layer attention classifier (tok and pos embeddings, attn with q, k, v projections, head) naming which of 7 silambam staff combinations a 14-strike sequence contains (the combination token sits at a random place; the query position must find it), AdamW at 1e-2 with weight decay 0.01, cross-entropy. The attention was meant to soft-cap q.k/sqrt(d) at 20 (20 * tanh(s / 20)), but the cap was written inside an `if not self.training` branch meant for an inference fast path, so it never applies while training: nothing bounds q.k/sqrt(d), sharpening the attention keeps paying, and the peak attention logit (q and k initialised at std 0.02, about 0.1 at the start) grows over 20x and past the cap value 20 the config intended. Finite, no blow-up.",
)
def h282_silambam_softcap_only_in_eval(ctx: Context) -> None:
    gen = seeded(28201)
    model = SilambamNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    probe = next(_strikes(torch.Generator().manual_seed(5), 256))[0]

    def peak_now():
        with torch.no_grad():
            return float(model.attn.logits(model.embed(probe)).abs().max())

    peaks = [peak_now()]
    _train(
        ctx,
        model,
        opt,
        _strikes(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        after=lambda step: peaks.append(peak_now()),
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the attention logits' peak grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak passed the intended cap of 20", peaks[-1] > SOFTCAP)
    ctx.check("the peak stayed past the cap over the last 100 steps", min(peaks[-100:]) > SOFTCAP)
    ctx.check("the loss fell", _fell(ls, ratio=0.5))


# -- land sailing: the warm-up LambdaLR lost its min(1, .) ---------------------------------------

WARM_LAND = 10


@scenario(
    family="land_sailing_run_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=WARM_LAND,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a land yacht's run speed from 8 standardised readings (wind speed and angle, sail trim, wheel load), plain SGD with base lr 0.05, MSE, and a linear warm-up over 10 steps by LambdaLR. The warm-up factor was written lambda s: (s + 1) / 10, having lost its min(1, .): after step 10 the rate keeps rising linearly instead of holding at 0.05, and the measured lr x top Hessian eigenvalue crosses the 2/sharpness stability limit; the loss then blows up. Nothing is wrong with the data or the init.",
)
def h282_land_sailing_warmup_without_cap(ctx: Context) -> None:
    gen = seeded(28202)
    model = Stack(8, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / WARM_LAND)
    px, py = next(_readings(torch.Generator().manual_seed(7), 256, 8, 31))
    products: dict[int, float] = {}

    def before(step):
        if step % 5 == 0:
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _top_eig(model, F.mse_loss, px, py)

    _train(ctx, model, opt, _readings(gen, 64, 8, 31), 300, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[: WARM_LAND + 40])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    crossed = next((s for s in sorted(products) if products[s] > 2.0), None)
    ctx.check("the loss fell during the warm-up", _fell(ls[: WARM_LAND + 20]))
    ctx.check("lr x sharpness was under 2 at the end of the warm-up", products[WARM_LAND] < 2.0)
    ctx.check(
        "lr x sharpness crossed 2 after the warm-up", crossed is not None and crossed > WARM_LAND
    )
    ctx.check(
        "the loss blew up (over 100x its low) after the crossing",
        blow is not None and crossed is not None and blow >= crossed,
    )


# -- marine snow: one sediment-trap shard logged in milligrams -----------------------------------

ONSET_SNOW = 100


@scenario(
    family="marine_snow_flux_silu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SNOW,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the marine-snow particle flux at depth from 10 standardised sediment-trap and CTD readings, SGD momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0. One trap's shard was exported with its three mass columns in milligrams instead of grams and the standardisation (fitted on the other shards) leaves them about 1000 standard deviations out: the batch at step 100 carries eight such rows. The loss and the gradient jump by orders of magnitude on that one batch, clipping bounds the step and the run recovers within a few dozen steps.",
)
def h282_marine_snow_shard_in_milligrams(ctx: Context) -> None:
    gen = seeded(28203)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_SNOW:
            x = x.clone()
            x[:8, :3] = 1000.0 * x[:8, :3] + 1000.0
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 33), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    before = ls[ONSET_SNOW - 20 : ONSET_SNOW]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the shard", _fell(ls[:ONSET_SNOW], ratio=0.5))
    ctx.check(
        "the loss at step 100 is over 50x the median before", ls[ONSET_SNOW] > 50 * _median(before)
    )
    ctx.check(
        "the gradient at step 100 is over 20x the median before",
        gs[ONSET_SNOW] > 20 * _median(gs[ONSET_SNOW - 20 : ONSET_SNOW]),
    )
    ctx.check(
        "the loss recovered by the end (under 2x its level before)",
        _mean(ls[-20:]) < 2 * _mean(before),
    )


# -- rushlight: the loader rescales the cached target table in place -----------------------------

EPOCH_RUSH = 8


@scenario(
    family="rushlight_pith_burn_time_gelu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing how long a rushlight burns from 8 standardised readings of the rush pith and the tallow coat, Adagrad at 1e-2, MSE, on a cached table of 512 rushes read in 8 batches an epoch. The loader applies a tallow-density correction (x1.03) meant for a copy of each batch's targets, but writes it into the cached target table in place (table[idx] *= 1.03), so every epoch the targets drift 3% further from what the readings explain. The loss falls at first, then climbs slowly and steadily as the targets drift, its 20-step mean to over 2x its low; no single step jumps, and nothing blows up.",
)
def h282_rushlight_target_table_rescaled_in_place(ctx: Context) -> None:
    gen = seeded(28204)
    x_all, y_all = next(_readings(torch.Generator().manual_seed(9), 512, 8, 35))
    table = y_all.clone() + 1.0
    start_scale = float(table.abs().mean())

    def batches():
        while True:
            order = torch.randperm(512, generator=gen)
            for i in range(EPOCH_RUSH):
                idx = order[i * 64 : (i + 1) * 64]
                table[idx] *= 1.03  # meant for a copy: y = table[idx] * 1.03
                yield x_all[idx], table[idx]

    model = Stack(8, hidden=48, act=nn.GELU)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    _train(ctx, model, opt, batches(), 320, F.mse_loss)
    ls = ctx.losses
    windows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    low_at = min(range(len(windows)), key=lambda i: windows[i])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell first", _fell(ls[:40], k=5, ratio=0.5))
    ctx.check(
        "the targets really drifted (mean scale over 3x)",
        float(table.abs().mean()) > 3 * start_scale,
    )
    ctx.check("the 20-step mean loss ends over 2x its low", windows[-1] > 2 * windows[low_at])
    ctx.check("the low is in the first half", low_at < len(ls) // 2)
    ctx.check(
        "the climb is slow (no step over 3x the mean of the 10 before)",
        all(ls[i] < 3 * _mean(ls[i - 10 : i]) for i in range(low_at + 10, len(ls))),
    )


# -- bagana: the temperature was typed 0.002 for 2.0 ---------------------------------------------


class TemperedHead(nn.Module):
    def __init__(self, d, classes, temperature):
        super().__init__()
        self.fc = nn.Linear(d, classes)
        self.temperature = temperature

    def forward(self, h):
        return self.fc(h) / self.temperature


class BaganaNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=5, temperature=2.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = TemperedHead(hidden, classes, temperature)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="bagana_lyre_mode_tempered_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU classifier (fc1, act1, fc2, act2, head = a linear layer divided by a temperature) naming which of 5 modes an Ethiopian bagana lyre piece is played in from 12 spectral features, Adamax at 2e-3, cross-entropy. The head's temperature (meant to be 2.0, a softened head) was typed 0.002 in the config: the logits are 500x what the linear layer gives, the float32 softmax rounds most rows' target probability to exactly 1.0 (and the rest's to 0), and the gradient of those rows is exactly zero. The twin with temperature 2.0 has no such row.",
)
def h282_bagana_temperature_typo(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(28205)
        model = BaganaNet(temperature=temperature)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        _train(c, model, opt, _kinds(gen, 64, 12, 5, 37), 150, F.cross_entropy, classifier=True)
        px, py = next(_kinds(torch.Generator().manual_seed(3), 512, 12, 5, 37))
        with torch.no_grad():
            return collapsed_fraction(model(px), py)

    twin = _Twin()
    twin_frac = run(twin, 2.0)
    frac = run(ctx, 0.002)
    ctx.check("over a third of probe rows give the target exactly 1.0", frac > 1 / 3)
    ctx.check("the twin with temperature 2.0 has under 1% such rows", twin_frac < 0.01)
    ctx.check("the twin trained", _fell(twin.losses, ratio=0.5))


# -- calf roping: the trunk group took a fine-tuning preset's lr multiplier ----------------------


@scenario(
    family="calf_roping_tie_time_two_group_regressor",
    optimizer="SGD Nesterov",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a tie-down roper's tie time from 10 standardised readings (horse speed, rope length, calf weight, dismount), SGD Nesterov momentum 0.9 with two param groups: the trunk (fc1) at base lr x trunk multiplier, the rest at base lr 2e-2, MSE. The trunk multiplier was copied from the fine-tuning preset (1e-5, meant to barely move a pretrained trunk) into this from-scratch run, so fc1 is effectively frozen at its random init: its per-step update ratio |dW|/|W| stays under 1e-6 while fc2's is over 1e-4. The loss still falls (the upper layers fit what they can) but fc1 never moves.",
)
def h282_calf_roping_trunk_lr_preset(ctx: Context) -> None:
    gen = seeded(28206)
    model = Stack(10, hidden=48, act=nn.ReLU)
    base = 2e-2
    trunk = list(model.fc1.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.SGD(
        [{"params": trunk, "lr": base * 1e-5}, {"params": rest, "lr": base}],
        lr=base,
        momentum=0.9,
        nesterov=True,
    )
    ratios: dict[str, list[float]] = {"fc1": [], "fc2": []}
    prev = {"fc1": model.fc1.weight.detach().clone(), "fc2": model.fc2.weight.detach().clone()}

    def after(step):
        for name in ("fc1", "fc2"):
            w = getattr(model, name).weight.detach()
            ratios[name].append(float((w - prev[name]).norm() / w.norm()))
            prev[name] = w.clone()

    _train(ctx, model, opt, _readings(gen, 64, 10, 39), 200, F.mse_loss, after=after)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1's median update ratio is under 1e-6", _median(ratios["fc1"]) < 1e-6)
    ctx.check("fc2's median update ratio is over 1e-4", _median(ratios["fc2"]) > 1e-4)
    ctx.check("the loss fell", _fell(ls, ratio=0.8))


# -- thundersnow: the window std is sqrt(E[x^2] - E[x]^2) ----------------------------------------

ONSET_THUNDER = 90


class WindowStats(nn.Module):
    """Mean and standard deviation of each row's field-mill window, one-pass formula."""

    def __init__(self):
        super().__init__()
        self.last_min_var = math.inf

    def forward(self, x):
        mean = x.mean(-1)
        var = (x * x).mean(-1) - mean * mean  # one pass, no clamp: cancels at a large baseline
        self.last_min_var = float(var.detach().min())
        return torch.stack([(mean - 3000.0) / 1000.0, var.sqrt() / 100.0], -1)


class ThundersnowNet(nn.Module):
    def __init__(self, d_other=6, hidden=32):
        super().__init__()
        self.stats = WindowStats()
        self.fc1 = nn.Linear(2 + d_other, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        window, other = x[:, :16], x[:, 16:]
        h = torch.cat([self.stats(window), other], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _field_mill(gen, batch, seed):
    """16 field-mill samples (V/m, baseline near 3000) and 6 standardised weather readings;
    the target is a log flash rate driven by the field's swing and the weather."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        base = 3000.0 + 500.0 * torch.randn(batch, 1, generator=gen)
        swing = 50.0 + 150.0 * torch.rand(batch, 1, generator=gen)
        window = base + swing * torch.randn(batch, 16, generator=gen)
        other = torch.randn(batch, 6, generator=gen)
        y = 0.01 * (swing.squeeze(1) - 125.0) + torch.tanh(other @ w / 2.5)
        yield torch.cat([window, other], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="thundersnow_field_mill_window_std_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("stats",),
    diverges=ONSET_THUNDER,
    heldout=True,
    onset=ONSET_THUNDER,
    note="A SiLU net forecasting the log lightning-flash rate of a thundersnow cell from a 16-sample window of an electric field mill (V/m, baseline near 3000) and 6 standardised weather readings: stats computes each window's mean and standard deviation, fc1, act1, fc2, act2, head; NAdam at 2e-3, MSE. The std is written in one pass, sqrt(E[x^2] - E[x]^2), with no clamp: at a 3000 V/m baseline the two terms are about 9e6 and cancel in float32. At step 90 the mill's rotor icing up makes it read a flat field (the same value give or take 0.01 V/m) across the batch's windows, the cancelled variance comes out negative, sqrt gives NaN and the loss is NaN at step 90.",
)
def h282_thundersnow_one_pass_std(ctx: Context) -> None:
    gen = seeded(28207)
    model = ThundersnowNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_THUNDER:
            x = x.clone()
            level = 3000.0 + 200.0 * torch.rand(x.shape[0], 1, generator=gen)
            x[:, :16] = level + 0.01 * torch.randn(x.shape[0], 16, generator=gen)
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_THUNDER:
            seen["min_var"] = model.stats.last_min_var

    _train(ctx, model, opt, _field_mill(gen, 64, 41), 160, F.mse_loss, alter=alter, watch=watch)
    ls = ctx.losses
    ctx.check("finite before step 90", _finite(ls[:ONSET_THUNDER]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_THUNDER], ratio=0.7))
    ctx.check("the one-pass variance came out negative", seen.get("min_var", 0.0) < 0.0)
    ctx.check("the loss is non-finite at step 90", _first_bad(ls) == ONSET_THUNDER)


# -- rommelpot: the resume step reads the loss weight in percent ---------------------------------

ONSET_ROMMEL = 140


@scenario(
    family="rommelpot_friction_drum_pulse_silu_regressor",
    optimizer="RAdam",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ROMMEL,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the pulse rate of a rommelpot friction drum from 10 standardised readings (stick pressure, membrane tension, pot volume), RAdam at 3e-3, MSE, gradient clipping at 1.0. After a pre-emption the job resumes at step 140 and, for that first step, rebuilds the loss weight from the old config format, which stored it in percent: the backpropagated loss is 100 x MSE on an ordinary batch (the logged loss is ordinary). The gradient norm is about 100x its median for that one step, clipping bounds the update, the weight is back to 1.0 from step 141 and the run carries on.",
)
def h282_rommelpot_resume_loss_weight_percent(ctx: Context) -> None:
    gen = seeded(28208)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 43),
        240,
        F.mse_loss,
        clip=1.0,
        weight=lambda step: 100.0 if step == ONSET_ROMMEL else 1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    before = ls[ONSET_ROMMEL - 20 : ONSET_ROMMEL]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the resume", _fell(ls[:ONSET_ROMMEL], ratio=0.5))
    ctx.check(
        "the gradient at step 140 is over 50x the median of the 20 before",
        gs[ONSET_ROMMEL] > 50 * _median(gs[ONSET_ROMMEL - 20 : ONSET_ROMMEL]),
    )
    ctx.check(
        "the batch was ordinary (loss under 3x the median before)",
        ls[ONSET_ROMMEL] < 3 * _median(before),
    )
    ctx.check(
        "the loss is back under 2x its level before by the end", _mean(ls[-20:]) < 2 * _mean(before)
    )


# -- gustnado: the recurrent weights were initialised with gain 3 --------------------------------


class SpinCell(nn.Module):
    """h_t = tanh(inp(x_t) + rec(h_{t-1})), written out by hand."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)


class GustnadoNet(nn.Module):
    def __init__(self, d_in=4, hidden=48, rec_gain=1.0):
        super().__init__()
        self.cell = SpinCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.rec.weight, gain=rec_gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.cell.inp(x[:, t]) + self.cell.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _gust_series(gen, batch, steps=40):
    """Anemometer series (4 channels) along a gust front; the target is the spin-up, a decayed
    sum of the shear over the whole window."""
    decay = 0.93 ** torch.arange(steps - 1, -1, -1).float()
    while True:
        x = torch.randn(batch, steps, 4, generator=gen)
        shear = x[:, :, 0] * x[:, :, 1]
        y = (shear * decay).sum(1) / 3.0
        yield x, y


@scenario(
    family="gustnado_vortex_spin_up_recurrent_cell_regressor",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("cell.rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh recurrent cell (cell.inp, cell.rec) reading 40 steps of 4-channel anemometer data along a gust front, head on the last state, regressing a gustnado's spin-up; RMSprop at 1e-3, MSE, gradient clipping at 1.0. The recurrent weight was meant to be orthogonal with gain 1.0 but the init helper was called with the input layer's gain 3.0: the recurrence is in its chaotic phase and the gradient grows backwards through time, the loss gradient on the first hidden state is over 30x the one on the last state, the pre-clip gradient norm stays far over the clip and the loss stalls where the gain-1 twin learns.",
)
def h282_gustnado_recurrent_gain_three(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(28209)
        model = GustnadoNet(rec_gain=gain)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        ratios = []

        def after(step):
            first, last = model.states[0].grad, model.states[-1].grad
            if first is not None and last is not None:
                ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

        _train(c, model, opt, _gust_series(gen, 32), 150, F.mse_loss, clip=1.0, after=after)
        return ratios

    twin = _Twin()
    run(twin, 1.0)
    ratios = run(ctx, 3.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient on the first state is over 30x the one on the last (median)",
        _median(ratios) > 30,
    )
    ctx.check(
        "the pre-clip gradient norm stays over the clip (median over 10)",
        _median(ctx.grad_norms) > 10,
    )
    ctx.check(
        "the gain-1 twin ends with a loss under 0.7x this run's",
        _mean(twin.losses[-20:]) < 0.7 * _mean(ls[-20:]),
    )


# -- bokh: the RankNet loss lost its logsigmoid in a refactor ------------------------------------


def _bouts(gen, batch, seed, d_in=10):
    """Pairs of wrestlers' readings (grip, stance, weight, record) and which one won: the
    winner has the higher latent strength."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        a = torch.randn(batch, d_in, generator=gen)
        b = torch.randn(batch, d_in, generator=gen)
        first_won = (torch.tanh(a @ w / 3) - torch.tanh(b @ w / 3)) > 0
        winner = torch.where(first_won[:, None], a, b)
        loser = torch.where(first_won[:, None], b, a)
        yield torch.stack([winner, loser], 1), torch.ones(batch)


class BoutScorer(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def score(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)

    def forward(self, pair):
        return self.score(pair[:, 0]) - self.score(pair[:, 1])


def _ranknet(margin, y):
    return -F.logsigmoid(margin).mean()


def _ranknet_refactored(margin, y):
    # the refactor inlined -logsigmoid(m) as -m "for speed": unbounded below
    return -margin.mean()


@scenario(
    family="bokh_bout_ranknet_scorer",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU scorer (fc1, act1, fc2, act2, head) for Mongolian bokh wrestlers trained pairwise on past bouts (RankNet: the winner's score minus the loser's should be large), Adam at 1e-3. A refactor inlined the pairwise loss -logsigmoid(s_w - s_l) as -(s_w - s_l): the objective is unbounded below and rewards ever larger score gaps even on pairs ranked right, so the head's scores grow without bound, over 20x in the run and still growing at the end, while the twin with the logsigmoid keeps them over 5x smaller. No NaN within the run.",
)
def h282_bokh_ranknet_logsigmoid_dropped(ctx: Context) -> None:
    def run(c, loss_fn):
        gen = seeded(28210)
        model = BoutScorer()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        probe = torch.randn(256, 10, generator=torch.Generator().manual_seed(11))

        def scale():
            with torch.no_grad():
                return float(model.score(probe).abs().mean())

        scales = [scale()]
        _train(
            c, model, opt, _bouts(gen, 64, 45), 240, loss_fn, after=lambda s: scales.append(scale())
        )
        return scales

    twin = _Twin()
    twin_scales = run(twin, _ranknet)
    scales = run(ctx, _ranknet_refactored)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the head's mean |score| grew over 20x", scales[-1] > 20 * scales[0])
    ctx.check("and was still growing over the last 60 steps", scales[-1] > 1.3 * scales[-61])
    ctx.check(
        "the logsigmoid twin keeps the scores over 5x smaller", twin_scales[-1] < scales[-1] / 5
    )


# -- controls ------------------------------------------------------------------------------------


class ResidualNet(nn.Module):
    """fc_in -> LayerNorm residual SiLU block -> head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc_in = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.fc_in(x)
        h = h + self.fc2(self.act(self.fc1(self.norm(h))))
        return self.head(h).squeeze(-1)


def _heavy_tailed(gen, batch, seed, d_in=9):
    """Readings and a smooth target plus Student-t (2 degrees of freedom) noise: most rows are
    close, a few are far off (ordinary whiting-event surveys)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / 3) + 0.5 * torch.sin(x @ v / 2)
        z = torch.randn(batch, generator=gen)
        chi = torch.randn(batch, 2, generator=gen).pow(2).sum(1)
        noise = z / torch.sqrt(chi / 2)  # Student-t with 2 degrees of freedom
        yield x, y + 0.2 * noise


@scenario(
    family="whiting_event_carbonate_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a LayerNorm residual SiLU regressor (fc_in, norm, fc1, act, fc2, head) of the carbonate mass precipitated in a lake whiting event from 9 standardised water readings; the targets carry heavy-tailed Student-t (2 dof) survey noise, so a few rows per batch are far off. Huber loss (delta 0.5), AdamW at 3e-3 with two param groups (weight decay 0.05 on weights, none on biases and the LayerNorm), 20-step linear warm-up then cosine decay by LambdaLR, gradient clipping at 1.0. It trains normally.",
)
def h282_whiting_event_heavy_tailed_huber(ctx: Context) -> None:
    gen = seeded(28211)
    model = ResidualNet(9)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    rest = [
        p for n, p in model.named_parameters() if not (n.endswith("weight") and "norm" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps = 240

    def factor(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    seen_y = []

    def watch(step, out, x, y):
        seen_y.append(y.detach())

    _train(
        ctx,
        model,
        opt,
        _heavy_tailed(gen, 64, 47),
        steps,
        lambda out, y: F.huber_loss(out, y, delta=0.5),
        sched=sched,
        clip=1.0,
        watch=watch,
    )
    ys = torch.cat(seen_y)
    q1, q3 = torch.quantile(ys, 0.25), torch.quantile(ys, 0.75)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, k=20, ratio=0.7))
    ctx.check(
        "the targets are heavy-tailed (farthest over 10 IQRs from the median)",
        float((ys - ys.median()).abs().max() / (q3 - q1)) > 10,
    )


class PlayTower(nn.Module):
    """One tower: the shared encoder (tied between the two towers) and its own projection."""

    def __init__(self, encoder, hidden, dim):
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return F.normalize(self.proj(self.encoder(x)), dim=-1)


class PlayRetriever(nn.Module):
    def __init__(self, d_in=12, hidden=64, dim=32):
        super().__init__()
        shared = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.query = PlayTower(shared, hidden, dim)
        self.item = PlayTower(shared, hidden, dim)

    def forward(self, pair):
        return self.query(pair[:, 0]) @ self.item(pair[:, 1]).T / 0.1


def _plays(gen, batch, seed, d_in=12, latent=6):
    """A yubi-lakpi team's field description (query) and the play it ran (item): two noisy views
    of the same latent play."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(latent, d_in, generator=g)
    b = torch.randn(latent, d_in, generator=g)
    while True:
        z = torch.randn(batch, latent, generator=gen)
        q = z @ a + 0.3 * torch.randn(batch, d_in, generator=gen)
        i = z @ b + 0.3 * torch.randn(batch, d_in, generator=gen)
        yield torch.stack([q, i], 1), torch.arange(batch)


@scenario(
    family="yubi_lakpi_play_two_tower_retriever",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a two-tower retriever matching a yubi-lakpi team's field description to the play it ran, trained with in-batch negatives (InfoNCE over the 64x64 similarity matrix, the diagonal is the positive, temperature 0.1): both towers share one GELU encoder (tied weights) with their own projections, Adam at 2e-3, ReduceLROnPlateau, clipping at 1.0. It trains normally and retrieves the right play for most held-out queries.",
)
def h282_yubi_lakpi_in_batch_negatives(ctx: Context) -> None:
    gen = seeded(28212)
    model = PlayRetriever()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _plays(gen, 64, 49),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    pair, target = next(_plays(torch.Generator().manual_seed(13), 64, 49))
    with torch.no_grad():
        recall = float((model(pair).argmax(1) == target).float().mean())
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.5))
    ctx.check("recall@1 over 64 held-out candidates is over 0.5", recall > 0.5)


@scenario(
    family="pehlwani_akhara_hold_fp16_gelu_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="Control: a GELU classifier (fc1, act1, fc2, act2, head) naming which of 6 holds a pehlwani wrestler in the akhara is attempting from 14 standardised body-sensor features, trained under fp16 autocast with a torch.amp.GradScaler, SGD Nesterov momentum 0.9, OneCycleLR to 0.05, label smoothing 0.1, gradient accumulation over 2 micro-batches, clipping at 1.0 after unscaling. It trains normally.",
)
def h282_pehlwani_fp16_onecycle_control(ctx: Context) -> None:
    gen = seeded(28213)
    model = Stack(14, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 14, 6, 51),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
        scaler=scaler,
        amp=torch.float16,
        accumulate=2,
    )
    px, py = next(_kinds(torch.Generator().manual_seed(15), 512, 14, 6, 51))
    with torch.no_grad():
        acc = float((model(px).argmax(1) == py).float().mean())
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.6))
    ctx.check("held-out accuracy over 0.6", acc > 0.6)
    ctx.check("the scale stayed finite", _finite(ctx.scales))
