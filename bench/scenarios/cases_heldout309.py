"""Held-out set 309 (``h309_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a setar dastgah-mode transformer encoder classifier with a
[CLS] token trained at an MLP's learning rate with no warm-up and no QK norm (attention logits
grow), a celadon glaze-crackle tanh regressor whose ExponentialLR gamma was typed 1.03 for 0.97
(learning rate past the stability limit), a beeswax foundation-cell regressor whose trunk param
group has lr and weight_decay swapped (trunk barely moves), a stromatolite lamina-growth GELU
regressor whose inverse-progress loss weight lacks its + 1 (one giant gradient poisons Adam's
second moment), a mezzotint rocker burr-depth regressor whose checkpoint path skips the static
loss-scale division once (one gradient spike), a kok-boru carcass-pull regressor fed one shard
with speeds in mm/s (a bad batch), a gold-granulation fusing-time Gaussian net whose variance is
computed as E[t^2] - E[t]^2 without a clamp (log of a negative, NaN), a rattan steam-bending fp16
regressor trained on raw grams-force (fp16 gradient overflow), a cavaquinho strum-pattern ReLU
classifier trained by RMSprop at an SGD learning rate (dead ReLUs), a baglama fret-glide ReLU
Elman RNN whose recurrent identity init got the input gain 1.25 (gradients grow through time),
and three controls (a bodging chair-leg GELU regressor with layer-wise learning-rate decay across
param groups, a repousse chasing-punch fp16 GELU classifier with a GradScaler, OneCycleLR and
label smoothing, a booming-sand hum-pitch Huber regressor with Adamax, accumulation and
ReduceLROnPlateau).

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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``after(step)`` runs after the
    optimizer step; ``backprop(step, out, y, loss)`` returns the loss actually backpropagated
    (the logged loss unless a bug says otherwise); stops after a non-finite loss. Returns the
    step it stopped at."""
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
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, out, y, loss) if backprop is not None else loss
            total = total / accumulate
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
            return step
    return steps


def _plain_run(model, opt, batches, steps, loss_fn) -> list[float]:
    """The same loop without the monitor or the bug: the run as it should have gone."""
    out = []
    for _ in range(steps):
        x, y = next(batches)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(float(loss.detach()))
    return out


def _readings(gen, batch, d_in, seed, noise=0.05, outputs=1, heavy=False):
    """Standardised readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        e = torch.randn(batch, outputs, generator=gen)
        if heavy:  # Student-t with 3 degrees of freedom
            e = e / torch.sqrt((torch.randn(batch, outputs, 3, generator=gen) ** 2).mean(-1))
        y = y + noise * e
        yield x, (y.squeeze(-1) if outputs == 1 else y)


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


def _top_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        v = [h / (norm + 1e-12) for h in hv]
    return abs(lam)


# -- setar: a [CLS] transformer encoder at an MLP's learning rate, no warm-up, no QK norm -------


class SelfAttention(nn.Module):
    """Multi-head self-attention written by hand: logits q.k/sqrt(d_head), no QK norm."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.d_head = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def logits(self, h):
        b, t, d = h.shape
        q = self.q(h).reshape(b, t, self.heads, self.d_head).transpose(1, 2)
        k = self.k(h).reshape(b, t, self.heads, self.d_head).transpose(1, 2)
        return q @ k.transpose(-1, -2) / math.sqrt(self.d_head)

    def forward(self, h):
        b, t, d = h.shape
        v = self.v(h).reshape(b, t, self.heads, self.d_head).transpose(1, 2)
        y = torch.softmax(self.logits(h), -1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class EncoderLayer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)

    def forward(self, h):
        h = h + self.attn(self.ln1(h))
        return h + self.ff2(F.gelu(self.ff1(self.ln2(h))))


class DastgahEncoder(nn.Module):
    """Frames -> Linear embedding, a learned [CLS] token in front, learned positions, pre-LN
    encoder layers, a final LayerNorm and a head on the [CLS] position."""

    def __init__(self, d_in=8, dim=32, heads=2, layers=2, frames=12, classes=7):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, frames + 1, dim))
        self.layers = nn.ModuleList(EncoderLayer(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.pos, std=0.02)

    def tokens(self, x):
        h = self.embed(x)
        return torch.cat([self.cls.expand(len(x), -1, -1), h], 1) + self.pos

    def forward(self, x):
        h = self.tokens(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.ln_f(h[:, 0]))

    @torch.no_grad()
    def peak_logits(self, x):
        h, peaks = self.tokens(x), []
        for layer in self.layers:
            peaks.append(float(layer.attn.logits(layer.ln1(h)).abs().max()))
            h = layer(h)
        return peaks


def _phrases(gen, batch, frames=12, d_in=8, classes=7):
    """12 frames of 8 readings of a setar phrase (pitch, plucking force, fret, drone, ...); one
    frame carries the cadence (reading 0 at +3) and the dastgah is written in that frame only."""
    while True:
        x = torch.randn(batch, frames, d_in, generator=gen)
        pos = torch.randint(0, frames, (batch,), generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, pos, 0] = 3.0
        x[rows, pos, 1 + y] += 2.5
        yield x, y


@scenario(
    family="setar_dastgah_mode_cls_encoder",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("layers.0.attn", "layers.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written transformer encoder classifier of which dastgah (Persian modal system, 7 kinds) a setar phrase is in, from 12 frames of 8 standardised readings: embed (Linear), a learned [CLS] token in front, learned positions, two pre-LN encoder layers (layers.0, layers.1: ln1, attn = hand-written 2-head self-attention with q, k, v, o Linears and logits q.k/sqrt(d_head), no QK layer norm, ln2, GELU feed-forward), ln_f and a head on the [CLS] position; weights initialised with std 0.02. The dastgah is written only in the one cadence frame, so the [CLS] query must find that frame's key. The config was copied from the MLP baseline: AdamW at 1e-2 with no warm-up (the usual transformer recipe is 1e-3 with warm-up) and the default weight decay 0.01; cross-entropy, 250 steps. With nothing bounding q.k the peak attention logit grows over 20x from its init and past 10 (the known high-lr attention-logit growth that QK layer norm fixes). Finite, no blow-up.",
)
def h309_setar_cls_encoder_logit_growth(ctx: Context) -> None:
    gen = seeded(30901)
    model = DastgahEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    probe = next(_phrases(torch.Generator().manual_seed(9), 128))[0]
    peaks: list[list[float]] = [model.peak_logits(probe)]

    def after(step):
        if step % 10 == 9:
            peaks.append(model.peak_logits(probe))

    _train(ctx, model, opt, _phrases(gen, 64), 250, F.cross_entropy, classifier=True, after=after)
    first, last = max(peaks[0]), max(peaks[-1])
    ctx.check("the peak attention logit grew over 20x", last > 20 * first)
    ctx.check("the peak attention logit passed 10", last > 10.0)
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- celadon: ExponentialLR gamma typed 1.03 for 0.97 -----------------------------------------


@scenario(
    family="celadon_glaze_crackle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the crackle density of a celadon glaze after firing (standardised) from 10 standardised readings (glaze thickness, silica/alumina ratio, cooling rate, kiln atmosphere, body clay), plain SGD at 0.02, MSE, 200 steps. The schedule was meant to be ExponentialLR(gamma=0.97) but gamma was typed 1.03: the learning rate grows 3% a step, passes 2/sharpness (measured by power iteration on Hessian-vector products every 10 steps) and the loss blows up. The data are ordinary throughout.",
)
def h309_celadon_gamma_typo(ctx: Context) -> None:
    gen = seeded(30902)
    model = Stack(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.03)
    px, py = next(_readings(torch.Generator().manual_seed(7), 256, 10, seed=309))
    edge: list[tuple[int, float]] = []

    def after(step):
        if step % 10 == 0 and all(
            math.isfinite(float(p.detach().sum())) for p in model.parameters()
        ):
            lr = opt.param_groups[0]["lr"]
            edge.append((step, lr * _top_eig(model, F.mse_loss, px, py)))

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=309), 200, F.mse_loss, sched=sched, after=after
    )
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    blow = _first_bad(ls)
    ctx.check("the loss fell first", _mean(ls[20:30]) < 0.8 * _mean(ls[:5]))
    ctx.check("the loss blew up to non-finite", blow is not None)
    ctx.check(
        "the loss passed 1000x its low before that",
        max(v for v in ls if math.isfinite(v)) > 1000 * low,
    )
    crossed = next((s for s, e in edge if e > 2.0), None)
    ctx.check(
        "lr x sharpness passed 2 before the blow-up",
        crossed is not None and blow is not None and crossed <= blow,
    )


# -- beeswax: the trunk group's lr and weight_decay swapped ------------------------------------


@scenario(
    family="beeswax_foundation_cell_relu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the cell size bees draw on a beeswax foundation sheet (standardised) from 12 standardised readings (sheet thickness, wax temperature, embossing depth, colony strength, nectar flow), Adagrad, MSE, 250 steps, two param groups: the trunk (fc1, fc2) meant at lr 0.05 with weight decay 1e-6, the head at lr 0.05. The group dicts were built from a tuple unpacked in the wrong order, so the trunk group got lr 1e-6 and weight_decay 0.05: fc1 and fc2 move under 1e-5 of their norm per step against over 1e-3 for the head; the loss still falls a little (the head fits the random features). No blow-up.",
)
def h309_beeswax_trunk_lr_swapped(ctx: Context) -> None:
    gen = seeded(30903)
    model = Stack(12, 64)
    lr, wd = 0.05, 1e-6
    trunk_wd, trunk_lr = lr, wd  # the bug: unpacked as (weight_decay, lr) from (lr, wd)
    opt = torch.optim.Adagrad(
        [
            {
                "params": [*model.fc1.parameters(), *model.fc2.parameters()],
                "lr": trunk_lr,
                "weight_decay": trunk_wd,
            },
            {"params": model.head.parameters(), "lr": lr},
        ]
    )
    rel = {"fc1": [], "fc2": [], "head": []}
    prev = {k: _flat(getattr(model, k)) for k in rel}

    def after(step):
        for k in rel:
            cur = _flat(getattr(model, k))
            rel[k].append(float((cur - prev[k]).norm() / prev[k].norm()))
            prev[k] = cur

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=3093), 250, F.mse_loss, after=after)
    ctx.check("fc1 moves under 1e-5 of its norm per step", _mean(rel["fc1"]) < 1e-5)
    ctx.check("fc2 moves under 1e-5 of its norm per step", _mean(rel["fc2"]) < 1e-5)
    ctx.check("the head moves over 1e-3 of its norm per step", _mean(rel["head"]) > 1e-3)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- stromatolite: an inverse-progress loss weight without its + 1 -----------------------------

ONSET_STROM = 40


@scenario(
    family="stromatolite_lamina_growth_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_STROM,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the yearly lamina thickness of a living stromatolite (standardised) from 10 standardised readings (water depth, salinity, light, sediment supply, microbial mat cover), Adam at 1e-3, MSE, 250 steps. From step 40 a second curriculum phase weights the loss by 1 / max(steps into the phase, 1e-4), meant as 1 / (steps into the phase + 1): on the phase's first step the weight is 1e4 and Adam sees one gradient 1e4x the usual on ordinary data. Its second moment keeps that square for thousands of steps (beta2 0.999): from 30 steps after it on the updates are under a twentieth of those before and the loss stalls over 1.3x above where the same run without the bug ends.",
)
def h309_stromatolite_phase_weight(ctx: Context) -> None:
    gen = seeded(30904)
    model = Stack(10, 64, act=nn.GELU)
    model_0 = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    prev = [_flat(model)]

    def after(step):
        cur = _flat(model)
        moves.append(float((cur - prev[0]).norm()))
        prev[0] = cur

    def backprop(step, out, y, loss):
        if step < ONSET_STROM:
            return loss
        return loss / max(step - ONSET_STROM, 1e-4)  # meant: (step - ONSET_STROM + 1)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=3094),
        250,
        F.mse_loss,
        after=after,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at step 40 is over 1000x the usual",
        g[ONSET_STROM] > 1000 * _median(g[ONSET_STROM - 20 : ONSET_STROM]),
    )
    ctx.check(
        "the updates from 30 steps after it on are under a twentieth of those before",
        _mean(moves[ONSET_STROM + 30 :]) < _mean(moves[5:ONSET_STROM]) / 20,
    )
    twin = Stack(10, 64, act=nn.GELU)
    twin.load_state_dict(model_0)
    twin_ls = _plain_run(
        twin,
        torch.optim.Adam(twin.parameters(), lr=1e-3),
        _readings(torch.Generator().manual_seed(30904), 64, 10, seed=3094),
        250,
        F.mse_loss,
    )
    ctx.check(
        "the loss stalled: the last 20 steps over 1.3x those of the same run without the bug",
        _mean(ls[-20:]) > 1.3 * _mean(twin_ls[-20:]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- mezzotint: the checkpoint path skips the static loss-scale division once -----------------

ONSET_MEZZO, SCALE_MEZZO = 90, 256.0


@scenario(
    family="mezzotint_rocker_burr_depth_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MEZZO,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the burr depth a mezzotint rocker raises on a copper plate (standardised) from 10 standardised readings (rocker tooth count, rocking angle, pressure, passes, plate hardness), SGD Nesterov momentum 0.9 at 1e-2, MSE, clipping at 1.0, 180 steps. The trainer multiplies the loss by a static scale of 256 (kept from an fp16 recipe though the run is fp32) and divides the gradients by it before clipping; the checkpoint save at step 90 sets the trainer's `unscaled` flag so the division is skipped for that one step: step 90's gradient is 256x the usual on ordinary data. Clipping bounds the step and the run goes on training.",
)
def h309_mezzotint_unscale_skipped(ctx: Context) -> None:
    gen = seeded(30905)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss):
        return loss * SCALE_MEZZO if step == ONSET_MEZZO else loss

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=3095),
        180,
        F.mse_loss,
        clip=1.0,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_MEZZO - 20 : ONSET_MEZZO])
    ctx.check("the gradient at step 90 is over 100x the usual", g[ONSET_MEZZO] > 100 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_MEZZO + 1 : ONSET_MEZZO + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on step 90's batch is ordinary",
        ls[ONSET_MEZZO] < 2.0 * _mean(ls[ONSET_MEZZO - 10 : ONSET_MEZZO]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- kok-boru: one shard's speeds logged in mm/s -----------------------------------------------

ONSET_KOK = 100


@scenario(
    family="kok_boru_carcass_pull_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KOK,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the pull force on the goat carcass in a kok-boru (Central Asian horseback game) tussle (standardised) from 10 readings (horse speed, rider weight, grip height, lean angle, ...) standardised with the training set's statistics, SGD momentum 0.9 at 1e-2, Huber loss, clipping at 1.0, 200 steps. One match's GPS unit logged speed in mm/s instead of m/s, and its 8 rows reach the batch of step 100 with column 0 1000x too large: that step's loss and gradient are huge; clipping bounds the step and the run recovers on the following ordinary batches.",
)
def h309_kok_boru_speed_units(ctx: Context) -> None:
    gen = seeded(30906)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_KOK:
            x = x.clone()
            x[:8, 0] = x[:8, 0] * 1000.0 + 4000.0
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=3096), 200, F.huber_loss, clip=1.0, alter=alter
    )
    g, ls = ctx.grad_norms, ctx.losses
    before = _mean(ls[ONSET_KOK - 10 : ONSET_KOK])
    ctx.check("the loss on step 100's batch is over 10x the usual", ls[ONSET_KOK] > 10 * before)
    ctx.check(
        "the gradient at step 100 is over 20x the usual",
        g[ONSET_KOK] > 20 * _median(g[ONSET_KOK - 20 : ONSET_KOK]),
    )
    ctx.check(
        "the run recovers: the last 20 steps under 1.5x before the bad batch",
        _mean(ls[-20:]) < 1.5 * before,
    )
    ctx.check("finite throughout", _finite(ls))


# -- gold granulation: a variance computed from moments without a clamp ----------------------


class FusingNet(nn.Module):
    """SiLU trunk and a head giving the mean and the second moment of the fusing time."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _moment_nll(out, y):
    mu, m2 = out[:, 0], F.softplus(out[:, 1])
    var = m2 - mu**2  # the bug: no clamp, E[t^2] - E[t]^2 can go negative
    return (0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)).mean()


@scenario(
    family="gold_granulation_fusing_time_moment_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("head",),
    diverges=46,
    heldout=True,
    note="A SiLU net (fc1, act1, fc2, act2, head with two outputs) giving a Gaussian over the time gold granules take to fuse to a sheet in granulation (jewellery; in units of a reference time, mean about 1.5) from 10 standardised readings (granule size, copper salt load, torch distance, flux, sheet thickness), RAdam at 3e-3, Gaussian NLL, 200 steps. The head was written to predict the mean and the second moment (softplus) and the loss takes the variance as E[t^2] - E[t]^2 without a clamp: as the mean grows towards the targets the second moment lags, a row's variance goes negative, log of a negative gives NaN and the run stops there (NaN at step 46).",
)
def h309_granulation_moment_variance(ctx: Context) -> None:
    gen = seeded(30907)
    model = FusingNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def batches():
        for x, y in _readings(gen, 64, 10, seed=3097, noise=0.1):
            yield x, 1.5 + 0.4 * y

    low_var: list[float] = []

    def watch(step, out, x, y):
        low_var.append(float((F.softplus(out[:, 1]) - out[:, 0] ** 2).min()))

    stop = _train(ctx, model, opt, batches(), 200, _moment_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check(
        "a row's variance went negative at the NaN step", bad is not None and low_var[bad] < 0
    )
    ctx.check("every variance was positive at the start", low_var[0] > 0)
    ctx.check("the loss is NaN at some step", bad is not None)
    ctx.check(
        "the run trained before it", bad is not None and bad > 10 and _finite(ctx.losses[:bad])
    )
    ctx.check("the run stopped at the NaN", bad is not None and stop == bad)


# -- rattan: steam-bending targets in raw grams-force under fp16 ------------------------------


@scenario(
    family="rattan_steam_bend_force_fp16_gelu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) under fp16 autocast with a torch.amp.GradScaler, regressing the force needed to bend a steamed rattan cane to a furniture former from 8 standardised readings (cane diameter, steaming time, moisture, node spacing, former radius), NAdam at 1e-3, MSE, 150 steps. The targets were left in raw grams-force (about 20,000 +/- 3,000) instead of standardised: the head's output gradient, times the loss scale, overflows fp16 on step after step, the scaler skips those steps and halves its scale over and over (down over 1000x) and the loss stays huge.",
)
def h309_rattan_raw_grams_force(ctx: Context) -> None:
    gen = seeded(30908)
    model = Stack(8, 64, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")

    def batches():
        for x, y in _readings(gen, 64, 8, seed=3098):
            yield x, 20000.0 + 3000.0 * y

    _train(ctx, model, opt, batches(), 150, F.mse_loss, scaler=scaler, amp=True)
    sc = ctx.scales
    drops = sum(1 for a, b in zip([65536.0, *sc[:-1]], sc, strict=True) if b < a)
    ctx.check("the loss scale fell over 1000x", min(sc) < 65536.0 / 1000)
    ctx.check("the scaler skipped over 10 steps for overflow", drops > 10)
    ctx.check("the loss stayed huge (over 1e6)", _mean(ctx.losses[-10:]) > 1e6)


# -- cavaquinho: RMSprop at the SGD config's learning rate ------------------------------------


@scenario(
    family="cavaquinho_strum_pattern_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying which of 6 strum patterns a cavaquinho player uses from 12 standardised readings of a bar (stroke timing, direction, accent, muting), cross-entropy, 250 steps. The optimizer was switched from SGD to RMSprop (momentum 0.9) but the SGD config's lr 0.02 was kept (RMSprop's usual is 1e-3); the bars are noisy (classes overlap). The normalised steps, a hundred times too large, throw fc2's pre-activations negative for every input: over half of fc2's ReLU units (act2) are dead over the last 100 steps (under a tenth at init), they get no gradient and never come back, and the loss stays near chance.",
)
def h309_cavaquinho_rmsprop_sgd_lr(ctx: Context) -> None:
    gen = seeded(30909)
    model = Stack(12, 64, out=6)
    opt = torch.optim.RMSprop(model.parameters(), lr=0.02, momentum=0.9)
    probe = next(_kinds(torch.Generator().manual_seed(11), 512, 12, 6, seed=3099, noise=0.9))[0]
    dead: list[float] = []

    def watch_dead():
        with torch.no_grad():
            dead.append(float((model.features(probe) <= 0).all(0).float().mean()))

    watch_dead()

    def after(step):
        if step % 10 == 9:
            watch_dead()

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 6, seed=3099, noise=0.9),
        250,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("under a tenth of act2's units dead at the start", dead[0] < 0.1)
    ctx.check("over half of act2's units dead over the last 100 steps", min(dead[-10:]) > 0.5)
    ctx.check("the loss stays near chance (last 20 steps over 1.0)", _mean(ctx.losses[-20:]) > 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- baglama: the recurrent identity init given the input gain -------------------------------


class GlideRNN(nn.Module):
    """A hand-written ReLU Elman cell (cell.ih, cell.hh) over the frames and a linear head."""

    def __init__(self, d_in=4, hidden=32, classes=4, hh_gain=1.25):
        super().__init__()
        self.cell = nn.Module()
        self.cell.ih = nn.Linear(d_in, hidden)
        self.cell.hh = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, classes)
        with torch.no_grad():
            self.cell.hh.weight.copy_(hh_gain * torch.eye(hidden))  # IRNN: meant gain 1.0
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(len(x), self.cell.hh.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.cell.ih(x[:, t]) + self.cell.hh(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _glides(gen, batch, frames=24, d_in=4, classes=4):
    """24 frames of 4 readings of a baglama fret glide (pitch, finger pressure, pick, fret);
    the glide kind sets the pitch slope over the frames."""
    slopes = torch.tensor([-0.1, -0.03, 0.03, 0.1])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        t = torch.arange(frames, dtype=torch.float32)
        x = 0.5 * torch.randn(batch, frames, d_in, generator=gen)
        x[:, :, 0] += slopes[y][:, None] * (t - frames / 2)
        yield x, y


@scenario(
    family="baglama_fret_glide_relu_elman_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("cell.hh", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Elman RNN (cell.ih, cell.hh, head) classifying which of 4 fret glides a baglama (saz) player makes from 24 frames of 4 readings, SGD momentum 0.9 at 1e-3, cross-entropy, clipping at 5, 150 steps. The IRNN recipe initialises the recurrent matrix to the identity, but the init helper passed the config's `init_gain` (1.25, meant for the input projection) to it too: cell.hh starts at 1.25 I, so the backward pass multiplies the gradient by up to 1.25 per frame and the first frame's state gradient is over 20x the last frame's.",
)
def h309_baglama_irnn_gain(ctx: Context) -> None:
    gen = seeded(30910)
    model = GlideRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios: list[float] = []

    def after(step):
        st = model.states
        if st[0].grad is not None and st[-1].grad is not None:
            ratios.append(float(st[0].grad.norm() / (st[-1].grad.norm() + 1e-30)))

    _train(
        ctx,
        model,
        opt,
        _glides(gen, 64),
        150,
        F.cross_entropy,
        classifier=True,
        clip=5.0,
        after=after,
    )
    ctx.check("the first state's gradient over 20x the last's at the start", ratios[0] > 20)
    ctx.check("over 20x on most steps", sum(r > 20 for r in ratios) > 0.5 * len(ratios))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ----------------------------------------------------------------------------------


class TurnedLegNet(nn.Module):
    """Five Linear + GELU blocks (blocks.0 .. blocks.4) and a linear head."""

    def __init__(self, d_in=10, width=64, depth=5):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in if i == 0 else width, width), nn.GELU())
            for i in range(depth)
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="bodging_chair_leg_llrd_gelu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A five-block GELU MLP (blocks.0 .. blocks.4, head) regressing how far a green-wood chair leg turned on a bodger's pole lathe warps while seasoning (standardised) from 10 standardised readings (wood species, moisture, diameter, grain run-out, drying days), AdamW with layer-wise learning-rate decay across param groups (head at 3e-3, each block below 0.8x the one above, blocks.0 at about 1e-3; weight decay 0.01 on weights, 0 on biases), linear warm-up over 20 steps then cosine decay, MSE, clipping at 1.0, 250 steps. Trains normally.",
)
def h309_bodging_llrd_control(ctx: Context) -> None:
    gen = seeded(30911)
    model = TurnedLegNet()
    base, decay, steps = 3e-3, 0.8, 250
    layers = [*model.blocks, model.head]
    groups = []
    for depth_from_top, layer in enumerate(reversed(layers)):
        lr = base * decay**depth_from_top
        for name, p in layer.named_parameters():
            groups.append(
                {"params": [p], "lr": lr, "weight_decay": 0.0 if name.endswith("bias") else 0.01}
            )
    opt = torch.optim.AdamW(groups)

    def lam(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=3101), steps, F.mse_loss, clip=1.0, sched=sched
    )
    ctx.check("the loss fell to under half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="repousse_chasing_punch_fp16_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GELU MLP (fc1, act1, fc2, act2, head) under fp16 autocast with a torch.amp.GradScaler classifying which of 5 chasing punches (liner, planisher, matting, doming, tracer) a repousse metalsmith used from 12 standardised readings of the dent (depth, width, texture, edge sharpness), Adam with OneCycleLR (max 3e-3), cross-entropy with label smoothing 0.1, clipping at 1.0 after unscaling, 200 steps. Trains normally.",
)
def h309_repousse_fp16_control(ctx: Context) -> None:
    gen = seeded(30912)
    model = Stack(12, 64, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    probe_x, probe_y = next(_kinds(torch.Generator().manual_seed(13), 512, 12, 5, seed=3102))
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=3102),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    with torch.no_grad():
        acc = float((model(probe_x).argmax(1) == probe_y).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("accuracy on held-out dents over 0.7", acc > 0.7)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="booming_sand_hum_pitch_silu_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A SiLU MLP (fc1, act1, fc2, act2, head) regressing the pitch of the hum a booming sand dune gives off in an avalanche (standardised) from 10 standardised readings (grain size, grain roundness, slipface angle, surface moisture, wind), targets with Student-t noise, Huber loss, Adamax at 2e-3, gradient accumulation over 2 micro-batches, clipping at 1.0, ReduceLROnPlateau, 200 steps. Trains normally.",
)
def h309_booming_sand_control(ctx: Context) -> None:
    gen = seeded(30913)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=3103, noise=0.2, heavy=True),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
