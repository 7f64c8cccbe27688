"""Held-out set 305 (``h305_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a wave-buoy significant-wave-height net whose
H_s = 4 sqrt(m0) is guarded by torch.where (forward finite, backward NaN), a change-ringing
sequence-to-sequence model whose cross-attention scale was written dim ** 0.5 for dim ** -0.5
(attention logits grow), a shearing-shed fleece regressor fed one shed's unstandardised readings
(one bad batch), a clog-dance regressor whose trunk lr multiplier stayed 0 from a linear-probe
stage (frozen trunk), an oakum-seam 16-block residual ReLU regressor with unscaled He-initialised
branches (gradients grow through depth), a lacrosse shot regressor whose per-task loss weights
were resumed in percent for one step (one gradient spike), a pipe-organ reed-stop fp16 regressor
on targets in raw pascals (fp16 gradient overflow), a dry-stone-wall regressor whose hand-written
L2 has its sign flipped (slow climb of the loss), a bonsai-style classifier that kept a CLIP-style
logit scale of 100 without normalisation (softmax saturates), a cliff-diving tanh regressor whose
StepLR gamma is 10 (lr past 2/sharpness), and three controls (a sled-dog gait classifier with
warm-up and cosine decay to zero, a thatching-reed fp16 classifier with a GradScaler and
OneCycleLR, an ice-fishing catch regressor with ASGD, accumulation and ReduceLROnPlateau).

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
            e = e / torch.sqrt((torch.randn(batch, 1, 3, generator=gen) ** 2).mean(-1))
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


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration (Hessian-vector
    products)."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    model.zero_grad(set_to_none=True)
    return lam


# -- buoy: significant wave height 4 sqrt(m0) behind a torch.where guard -------------------------


class SignificantHeight(nn.Module):
    """H_s = 4 sqrt(m0), 'guarded' against a negative m0 with torch.where."""

    def forward(self, m0):
        return torch.where(m0 > 0, 4.0 * torch.sqrt(m0), torch.zeros_like(m0))


class WaveHeightNet(nn.Module):
    def __init__(self, d_in=10, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.m0_head = nn.Linear(hidden, 1)
        self.hs = SignificantHeight()
        with torch.no_grad():
            self.m0_head.weight.normal_(std=0.01)
            self.m0_head.bias.fill_(1.0)

    def m0(self, x):
        return self.m0_head(self.act1(self.fc1(x))).squeeze(-1)

    def forward(self, x):
        return self.hs(self.m0(x))


def _seas(gen, batch, seed):
    """10 standardised buoy readings (wind speed, fetch, duration, swell period, ...); target the
    significant wave height in metres, from calm (a few cm) to rough (about 4 m)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        m0 = torch.exp(1.2 * x @ w / math.sqrt(10) - 2.0)
        yield x, 4.0 * torch.sqrt(m0) * (1 + 0.05 * torch.randn(batch, generator=gen))


ONSET_BUOY = 68


@scenario(
    family="buoy_spectral_wave_height_where_sqrt_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("hs", "m0_head"),
    diverges=ONSET_BUOY + 1,
    heldout=True,
    onset=ONSET_BUOY,
    note="A SiLU net (fc1, act1, m0_head, hs) predicting a wave buoy's significant wave height in metres from 10 standardised readings (wind speed, fetch, duration, swell period, ...): m0_head gives the spectrum's zeroth moment m0 (a plain Linear, no softplus) and hs computes H_s = 4 sqrt(m0) behind a guard written as torch.where(m0 > 0, 4 * sqrt(m0), 0) to 'keep the forward finite'. Adam at 1e-3, Huber, 160 steps. Calm-sea rows (a few cm) pull m0 towards 0; at step 68 one row's m0 first goes negative: the forward pass stays finite (the where picks 0) but the backward pass multiplies the where's zero gradient by sqrt's derivative at a negative number (NaN), 0 * NaN = NaN, so the gradient is NaN and Adam writes NaN into every weight. From step 69 every output is NaN > 0 = False, i.e. 0: the logged loss stays finite while the model is dead.",
)
def h305_buoy_where_sqrt_backward_nan(ctx: Context) -> None:
    gen = seeded(30501)
    model = WaveHeightNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    min_m0: list[float] = []
    zeros: list[float] = []

    def watch(step, out, x, y):
        with torch.no_grad():
            min_m0.append(float(model.m0(x).min()))
            zeros.append(float((out == 0).float().mean()))

    _train(ctx, model, opt, _seas(gen, 64, seed=501), 160, F.huber_loss, watch=watch)
    ls, g = ctx.losses, ctx.grad_norms
    k = next((i for i, v in enumerate(min_m0) if v <= 0), None)
    ctx.check("a row's m0 first went below 0 at step 68", k == ONSET_BUOY)
    ctx.check("m0 was positive on every row before it", k is not None and k >= 1)
    ctx.check("the loss was finite up to and on that step", k is not None and _finite(ls[: k + 1]))
    ctx.check("the gradient on that step was not finite", k is not None and not math.isfinite(g[k]))
    ctx.check(
        "every weight of m0_head is NaN at the end", bool(torch.isnan(model.m0_head.weight).all())
    )
    ctx.check(
        "the loss stayed finite (the guard hides the NaN: every output is 0 from the next step)",
        _finite(ls) and k is not None and min(zeros[k + 1 :]) == 1.0,
    )


# -- change ringing: a hand-written seq2seq whose cross-attention multiplies by sqrt(d) ----------


class CrossAttention(nn.Module):
    """Single-head cross-attention from the decoder to the encoder memory. ``self.scale`` was
    written ``dim ** 0.5`` for ``dim ** -0.5``: logits are q.k * sqrt(d)."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim)
        self.scale = dim**0.5
        for m in (self.q, self.k):
            nn.init.normal_(m.weight, std=0.02)

    def logits(self, h, mem):
        return self.q(h) @ self.k(mem).transpose(1, 2) * self.scale

    def forward(self, h, mem):
        return self.o(torch.softmax(self.logits(h, mem), -1) @ self.v(mem))


class RingingSeq2Seq(nn.Module):
    """Encoder: bell + place embeddings and a GELU layer; decoder: previous bell + place
    embeddings, cross-attention to the encoder, a GELU layer, head over the bells."""

    def __init__(self, bells=8, dim=32):
        super().__init__()
        self.src_tok = nn.Embedding(bells, dim)
        self.src_pos = nn.Embedding(bells, dim)
        self.enc = nn.Linear(dim, dim)
        self.tgt_tok = nn.Embedding(bells + 1, dim)  # + BOS
        self.tgt_pos = nn.Embedding(bells, dim)
        self.cross = CrossAttention(dim)
        self.ff = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, bells)
        self.bells = bells

    def encode(self, src):
        pos = torch.arange(src.shape[1])
        return F.gelu(self.enc(self.src_tok(src) + self.src_pos(pos)))

    def decode_in(self, tgt):
        bos = torch.full((tgt.shape[0], 1), self.bells, dtype=torch.long)
        prev = torch.cat([bos, tgt[:, :-1]], 1)
        return self.tgt_tok(prev) + self.tgt_pos(torch.arange(tgt.shape[1]))

    def forward(self, pair):
        src, tgt = pair
        mem = self.encode(src)
        h = self.decode_in(tgt)
        h = h + self.cross(h, mem)
        return self.head(h + F.gelu(self.ff(h)))


def _rows(gen, batch, bells=8):
    """A row of 8 bells (a permutation) and the next row under the cross change 'x' (every
    adjacent pair swaps places); the decoder is teacher-forced with the next row."""
    swap = torch.arange(bells) ^ 1
    while True:
        src = torch.argsort(torch.rand(batch, bells, generator=gen), 1)
        tgt = src[:, swap]
        yield (src, tgt), tgt


def _seq_ce(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="change_ringing_method_cross_attention_seq2seq",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("cross",),
    diverges=None,
    heldout=True,
    note="A hand-written sequence-to-sequence model for change ringing: the encoder reads a row of 8 bells (bell and place embeddings, a GELU layer), the decoder is teacher-forced with the next row (previous bell and place embeddings), reads the encoder through single-head cross-attention (cross: q, k, v, o Linear) and a GELU layer, head over the 8 bells. The next row under the cross change 'x' swaps every adjacent pair, so each place must find exactly one source place. AdamW at 3e-3 (weight decay 0.01), cross-entropy over the bells, 200 steps. The attention's scale was written `dim ** 0.5` for `dim ** -0.5`, so the logits are q.k * sqrt(32) instead of q.k / sqrt(32), 32x too large and with 32x the gradient into q and k: the peak cross-attention logit grows over 20x from its small init and past 30 as the alignment sharpens. Finite, no blow-up.",
)
def h305_change_ringing_scale_exponent_typo(ctx: Context) -> None:
    gen = seeded(30502)
    model = RingingSeq2Seq()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    (src, tgt), _ = next(_rows(torch.Generator().manual_seed(7), 128))
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                mem = model.encode(src)
                peaks.append(float(model.cross.logits(model.decode_in(tgt), mem).abs().max()))

    _train(ctx, model, opt, _rows(gen, 64), 200, _seq_ce, after=after)
    ctx.check("the peak cross-attention logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak cross-attention logit passed 30", peaks[-1] > 30.0)
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- shearing shed: one shed's readings exported unstandardised ---------------------------------

ONSET_SHED = 110


@scenario(
    family="shearing_shed_fleece_tally_momentum_huber_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SHED,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a fleece's clean weight (standardised) from 12 standardised readings taken at the shearing board (body mass, staple length, micron, yolk, age, ...), SGD momentum 0.9 at 1e-2, Huber, clipping at 1.0, 220 steps. The batch of step 110 comes from one shed whose export skipped the standardiser: its readings are raw (kilograms, millimetres, microns: about 80 +- 30 instead of 0 +- 1). That one batch's loss and gradient are over 20x the usual; clipping bounds the step and the run is back to its previous loss within 30 steps.",
)
def h305_shearing_shed_raw_readings(ctx: Context) -> None:
    gen = seeded(30503)
    model = Stack(12, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scale: list[float] = []

    def alter(step, x, y):
        if step == ONSET_SHED:
            x = x * 30.0 + 80.0
        scale.append(float(x.abs().mean()))
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 12, seed=503), 220, F.huber_loss, alter=alter, clip=1.0
    )
    ls, g = ctx.losses, ctx.grad_norms
    before = _median(ls[ONSET_SHED - 20 : ONSET_SHED])
    ctx.check(
        "step 110's inputs are over 50x the usual scale", scale[ONSET_SHED] > 50 * _median(scale)
    )
    ctx.check("the loss at step 110 is over 20x the usual", ls[ONSET_SHED] > 20 * before)
    ctx.check(
        "the gradient at step 110 is over 20x the usual",
        g[ONSET_SHED] > 20 * _median(g[ONSET_SHED - 20 : ONSET_SHED]),
    )
    ctx.check(
        "the loss is back under 1.5x its previous level within 30 steps",
        _median(ls[ONSET_SHED + 20 : ONSET_SHED + 30]) < 1.5 * before,
    )
    ctx.check("the loss fell", _fell(ls))


# -- clog dance: the trunk's lr multiplier kept at 0 from a linear-probe stage ------------------


@scenario(
    family="clog_dance_heel_drop_frozen_trunk_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the loudness of a clog dancer's heel drop (standardised) from 10 standardised readings (clog sole hardness, board, dancer mass, drop height, ...), Adagrad, 200 steps, MSE. The optimizer is built from two param groups, the trunk (fc1, fc2) at base_lr * cfg['trunk_lr_mult'] and the head at base_lr 1e-2; the config was copied from a linear-probe stage and still says trunk_lr_mult: 0.0, so fc1 and fc2 never move (update/weight ratio 0) while the head trains; the loss ends over 1.3x above the same run with the trunk at the base rate.",
)
def h305_clog_dance_trunk_lr_mult_zero(ctx: Context) -> None:
    gen = seeded(30504)
    model = Stack(10, 64, act=nn.GELU)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    base_lr, cfg = 1e-2, {"trunk_lr_mult": 0.0}
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [
            {"params": trunk, "lr": base_lr * cfg["trunk_lr_mult"]},
            {"params": model.head.parameters(), "lr": base_lr},
        ]
    )
    w1, w2, wh = (_flat(m) for m in (model.fc1, model.fc2, model.head))
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=504), 200, F.mse_loss)
    ratio = [
        float((_flat(m) - w).norm() / w.norm())
        for m, w in ((model.fc1, w1), (model.fc2, w2), (model.head, wh))
    ]
    ctx.check("fc1 and fc2 moved under 1e-6 of their norm", max(ratio[:2]) < 1e-6)
    ctx.check("the head moved over 10% of its norm", ratio[2] > 0.1)
    twin = Stack(10, 64, act=nn.GELU)
    twin.load_state_dict(init)
    twin_ls = _plain_run(
        twin,
        torch.optim.Adagrad(twin.parameters(), lr=base_lr),
        _readings(torch.Generator().manual_seed(30504), 64, 10, seed=504),
        200,
        F.mse_loss,
    )
    ctx.check(
        "the loss ends over 1.3x above the run with the trunk trained",
        _mean(ctx.losses[-20:]) > 1.3 * _mean(twin_ls[-20:]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- oakum seam: a deep residual MLP whose branches keep the full He init -----------------------


class ResBlock(nn.Module):
    def __init__(self, width, fixup=False, depth=16):
        super().__init__()
        self.lin = nn.Linear(width, width)
        nn.init.kaiming_normal_(self.lin.weight, nonlinearity="relu")
        nn.init.zeros_(self.lin.bias)
        if fixup:
            with torch.no_grad():
                self.lin.weight.mul_(depth**-0.5)

    def forward(self, x):
        return x + self.lin(F.relu(x))


class SeamNet(nn.Module):
    def __init__(self, d_in=10, width=64, depth=16, fixup=False):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(ResBlock(width, fixup, depth) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        self.acts: list[torch.Tensor] = []

    def forward(self, x):
        x = self.inp(x)
        self.acts = []
        for b in self.blocks:
            x = b(x)
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="oakum_seam_deep_residual_relu_regressor",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("blocks.0", "blocks.1"),
    diverges=None,
    heldout=True,
    note="A 16-block residual ReLU MLP (inp, blocks.0 ... blocks.15 each x + lin(relu(x)), head) regressing how many hours a caulked oakum seam holds under a test head of water (standardised) from 10 standardised readings (seam width, oakum twist, pitch temperature, plank species, ...), RAdam at 1e-3, MSE, clipping at 1.0, 150 steps. Every branch keeps the full He init and nothing scales the residual branches down (no zero-init of the branch, no 1/sqrt(depth)): each block doubles the variance it passes on, so the gradient at the first block's output is over 20x the one at the last block's and the total gradient over 30x that of the twin with branches scaled by 1/sqrt(depth). Clipping keeps the run finite.",
)
def h305_oakum_seam_unscaled_residual_branches(ctx: Context) -> None:
    gen = seeded(30505)
    model = SeamNet()
    ref = SeamNet(fixup=True)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    x0, y0 = next(_readings(torch.Generator().manual_seed(5), 64, 10, seed=505))
    F.mse_loss(model(x0), y0).backward()
    depth_ratio = float(model.acts[0].grad.norm() / model.acts[-1].grad.norm())
    g_bad = grad_norm(model)
    model.zero_grad()
    F.mse_loss(ref(x0), y0).backward()
    g_ref = grad_norm(ref)
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=505), 150, F.mse_loss, clip=1.0)
    ctx.check("the first block's output gradient is over 20x the last's", depth_ratio > 20)
    ctx.check("the gradient is over 30x the scaled twin's", g_bad > 30 * g_ref)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- lacrosse: per-task loss weights resumed in percent for one step ---------------------------

ONSET_LAX = 90


@scenario(
    family="lacrosse_shot_speed_nesterov_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LAX,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing three things about a lacrosse shot (ball speed, release height, crease distance; standardised) from 12 standardised readings of the stick and the shooter, SGD Nesterov momentum 0.9 at 1e-2, MSE weighted per task, clipping at 1.0, 180 steps. The run is resumed at step 90 and the per-task loss weights are read from the checkpoint, which stored them in percent (100, 100, 100) until the config reload overwrites them after the first resumed step: step 90 backpropagates 100x the loss on an ordinary batch (the logged metric is the unweighted MSE), the gradient is 100x the usual for that one step, clipping bounds it and training goes on.",
)
def h305_lacrosse_task_weights_in_percent(ctx: Context) -> None:
    gen = seeded(30506)
    model = Stack(12, 64, out=3, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss):
        w = torch.full((3,), 100.0) if step == ONSET_LAX else torch.ones(3)
        return (((out - y) ** 2).mean(0) * w).mean()

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=506, outputs=3),
        180,
        F.mse_loss,
        clip=1.0,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_LAX - 20 : ONSET_LAX])
    ctx.check("the gradient at step 90 is over 50x the usual", g[ONSET_LAX] > 50 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_LAX + 1 : ONSET_LAX + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on step 90's batch is ordinary",
        ls[ONSET_LAX] < 2.0 * _mean(ls[ONSET_LAX - 10 : ONSET_LAX]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- pipe organ: reed-stop wind pressures in raw pascals under fp16 autocast --------------------


def _wind(gen, batch, seed):
    """8 standardised readings of a reed pipe (scale, shallot, tongue thickness, ...); target the
    wind pressure it speaks best at, in raw pascals (about 500 to 1300), not standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        yield (
            x,
            900.0
            + 250.0 * torch.tanh(x @ w / math.sqrt(8))
            + 10 * torch.randn(batch, generator=gen),
        )


@scenario(
    family="pipe_organ_reed_stop_fp16_adamax_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the wind pressure an organ reed pipe speaks best at from 8 standardised readings (scale, shallot opening, tongue thickness and curve), fp16 autocast with a torch.amp.GradScaler (init scale 65536), Adamax at 1e-2, MSE, clipping at 1.0 after unscale_, 150 steps. The voicer's table gives the pressures in raw pascals (500-1300) and the target normaliser was never fitted: the MSE's gradient at the head's fp16 output, about 2*900/64 per row times the loss scale, overflows fp16 (inf); the scaler skips the step and halves its scale again and again, over 30x down, before the scaled gradients fit.",
)
def h305_pipe_organ_raw_pascals(ctx: Context) -> None:
    gen = seeded(30507)
    model = Stack(8, 64, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    _train(
        ctx,
        model,
        opt,
        _wind(gen, 64, seed=507),
        150,
        F.mse_loss,
        amp=True,
        scaler=scaler,
        clip=1.0,
    )
    sc = ctx.scales
    skipped = sum(1 for a, b in zip([65536.0] + sc[:-1], sc, strict=False) if b < a)
    ctx.check("the loss scale fell over 30x", min(sc) < 65536.0 / 30)
    ctx.check("over 5 steps overflowed and were skipped", skipped > 5)
    ctx.check("the loss is finite (the overflow is in the fp16 gradient)", _finite(ctx.losses))


# -- dry-stone wall: hand-written L2 with its sign flipped --------------------------------------


@scenario(
    family="dry_stone_wall_coping_rmsprop_decay_sign_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how far a dry-stone wall's coping stones settle in a winter (standardised) from 10 standardised readings (batter, through-stone spacing, hearting fill, frost days, ...), RMSprop at 1e-3, MSE, 300 steps. The trainer adds L2 weight decay by hand before optimizer.step() and wrote `p.grad.sub_(p, alpha=wd)` for `p.grad.add_(p, alpha=wd)` (wd 0.3): every step pushes each weight away from zero, the weights grow steadily and the loss, after falling, climbs slowly to over 2x its low. Finite, no blow-up.",
)
def h305_dry_stone_wall_decay_sign(ctx: Context) -> None:
    gen = seeded(30508)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    wd = 0.3
    w0 = float(_flat(model).norm())
    orig_step = opt.step

    def step_with_decay(*a, **k):
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.sub_(p, alpha=wd)
        return orig_step(*a, **k)

    opt.step = step_with_decay
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=508), 300, F.mse_loss)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    ctx.check("the weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("the loss ends over 2x its low", _mean(ls[-10:]) > 2 * low)
    ctx.check("the loss fell first", low < 0.8 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


# -- bonsai: a distillation temperature applied as a multiplier ---------------------------------


@scenario(
    family="bonsai_style_form_nadam_logit_scale_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying a bonsai's style (formal upright, informal upright, slanting, cascade, semi-cascade, windswept) from 12 standardised measurements of trunk line, apex offset and branch placement, NAdam at 2e-3, cross-entropy, 200 steps. The head was ported from a CLIP-style recipe that multiplies cosine similarities by logit_scale = 100, but the port kept the multiplier and dropped the normalisation of features and class weights: the plain Linear logits are multiplied by 100 before the softmax, and over a quarter of the rows' float32 softmax gives the predicted class exactly 1.0 (the rest exactly 0), while the same logits without the multiplier saturate on no row.",
)
def h305_bonsai_logit_scale_unnormalised(ctx: Context) -> None:
    gen = seeded(30509)
    model = Stack(12, 64, out=6, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    T = 100.0
    frac: list[float] = []
    plain: list[float] = []

    def loss_fn(out, y):
        return F.cross_entropy(out * T, y)

    def watch(step, out, x, y):
        p = torch.softmax(out.detach() * T, -1)
        frac.append(float((p.max(-1).values == 1.0).float().mean()))
        plain.append(float((torch.softmax(out.detach(), -1).max(-1).values == 1.0).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 6, seed=509),
        200,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    ctx.check("over a quarter of rows' softmax is exactly 1.0 at the end", _mean(frac[-10:]) > 0.25)
    ctx.check("the same logits without the x100 saturate on no row", max(plain[-10:]) == 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cliff diving: StepLR with gamma typed 10 for 0.1 -------------------------------------------

ONSET_CLIFF = 100


@scenario(
    family="cliff_diving_board_steplr_gamma_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_CLIFF,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a cliff diver's entry angle (standardised) from 10 standardised readings (platform height, take-off speed, rotations, wind), plain SGD at 0.1, MSE, StepLR every 100 steps, 250 steps. The schedule was meant to decay 10x (gamma 0.1) and the config says gamma: 10: at step 100 the learning rate becomes 1.0, lr x sharpness (measured by power iteration on a fixed batch) goes from under 2 to over 2, and the loss blows up.",
)
def h305_cliff_diving_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(30510)
    model = Stack(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 10, seed=510))
    sharp: dict[int, float] = {}

    def before(step):
        if step == ONSET_CLIFF - 1:
            sharp[step] = _sharpness(model, F.mse_loss, probe)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=510),
        250,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    lam = sharp.get(ONSET_CLIFF - 1, float("nan"))
    ctx.check("lr x sharpness was under 2 before step 100", 0.1 * lam < 2)
    ctx.check("lr x sharpness is over 2 from step 100", 1.0 * lam > 2)
    ctx.check("the loss fell before step 100", _fell(ls[:ONSET_CLIFF]))
    bad = _first_bad(ls)
    ctx.check(
        "the loss blew up after step 100 (over 100x its level before, or non-finite)",
        bad is not None or max(ls[ONSET_CLIFF:]) > 100 * _mean(ls[ONSET_CLIFF - 10 : ONSET_CLIFF]),
    )


# -- controls ------------------------------------------------------------------------------------

STEPS_DOG, WARM_DOG = 240, 20


@scenario(
    family="sled_dog_gait_cosine_zero_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying a sled dog's gait (walk, trot, lope, gallop, pace) from 12 standardised harness-sensor readings, AdamW at 3e-3 with weight decay 0.05 on the Linear weights only (biases in a no-decay group), linear warm-up over 20 steps then cosine decay to exactly 0 at the last step (LambdaLR), label smoothing 0.1, clipping at 1.0, 240 steps. Trains normally.",
)
def h305_sled_dog_cosine_to_zero(ctx: Context) -> None:
    gen = seeded(30511)
    model = Stack(12, 64, out=5, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )

    def lam(s):
        if s < WARM_DOG:
            return (s + 1) / WARM_DOG
        t = (s - WARM_DOG) / (STEPS_DOG - 1 - WARM_DOG)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    lrs: list[float] = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=511),
        STEPS_DOG,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        before=before,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the learning rate decayed to 0 at the last step", lrs[-1] < 1e-9 and max(lrs) > 2e-3)


@scenario(
    family="thatch_bundle_grade_fp16_onecycle_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) grading a bundle of thatching reed (4 grades) from 10 standardised readings (length, butt diameter, moisture, leaf content, ...), fp16 autocast with a torch.amp.GradScaler (init scale 1024), Adam with OneCycleLR peaking at 5e-3, label smoothing 0.05, clipping at 1.0 after unscale_, 200 steps. Trains normally.",
)
def h305_thatch_bundle_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(30512)
    model = Stack(10, 64, out=4)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 4, seed=512),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss scale never fell below 256", min(ctx.scales) >= 256.0)


@scenario(
    family="ice_fishing_hole_catch_asgd_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the catch at an ice-fishing hole (standardised) from 10 standardised readings (ice thickness, depth, light, pressure trend, ...) with Student-t noise on the targets, ASGD at 5e-2, Huber, gradient accumulation over 2 micro-batches, clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 20), 300 steps. Trains normally.",
)
def h305_ice_fishing_asgd_plateau(ctx: Context) -> None:
    gen = seeded(30513)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=513, noise=0.1, heavy=True),
        300,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
