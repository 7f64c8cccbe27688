"""Held-out set 303 (``h303_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a launeddas drone-phrase classifier whose hand-written
self-attention over the phrase's frames has no QK norm and no weight decay (attention logits
grow), a motoball shot regressor whose evaluation helper leaves the shared criterion sum-reduced
for one training step (one gradient spike), an octobass string-tension regressor whose
resume path skipped the static loss-scale division for one step (Adam's second moment
poisoned), a heckelphone reed-voicing deep ReLU regressor initialised with std 2/sqrt(fan_in)
(gradients grow through depth), a sandboarding ride-length Weibull net whose shape link was left
as the identity (log of a negative shape, NaN), a koncovka overtone-pitch fp16 regressor trained
on targets in raw hertz (fp16 gradient overflow), a landsail tack-outcome ReLU classifier whose
focal-loss prior bias was applied to every Linear (dead ReLUs), a tamburica tremolo FiLM
regressor whose FiLM generator's staged unfreeze is counted in samples (never updated), a jug-band
instrument-tag net whose multi-hot targets count duplicated tags (head logits grow without
bound), a wok-racing corner-time regressor whose warm-up lambda returns s + 1 (learning rate past
the stability limit), and three controls (a coal-carrying race-time regressor with batch 4 and
SGD momentum, a sompoton chord hypernetwork classifier with warm-up and cosine decay, a skibob
run-time fp16 Huber regressor with a GradScaler, accumulation and ReduceLROnPlateau).

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


# -- launeddas: hand-written frame attention with no QK norm and no weight decay ---------------


class FrameAttention(nn.Module):
    """Single-head self-attention over a phrase's frames: logits q.k/sqrt(d)."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.dim = dim
        for m in (self.q, self.k, self.v):
            nn.init.normal_(m.weight, std=0.02)

    def logits(self, h):
        return self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(self.dim)

    def forward(self, h):
        return torch.softmax(self.logits(h), -1) @ self.v(h)


class DronePhraseNet(nn.Module):
    def __init__(self, d_in=8, dim=32, classes=6):
        super().__init__()
        self.enc = nn.Linear(d_in, dim)
        self.attn = FrameAttention(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return self.head((h + self.attn(h)).mean(1))


def _phrases(gen, batch, frames=12, d_in=8, classes=6):
    """12 frames of 8 readings (breath pressure, reed buzz, fingering, ...); one frame carries
    the accent (reading 0 at +3) and the ornament class is written in that frame only."""
    while True:
        x = torch.randn(batch, frames, d_in, generator=gen)
        pos = torch.randint(0, frames, (batch,), generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, pos, 0] = 3.0
        x[rows, pos, 1 + y] += 2.5
        yield x, y


@scenario(
    family="launeddas_drone_phrase_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written classifier of which ornament a launeddas (Sardinian triple-pipe) player puts on a drone phrase (6 kinds) from 12 frames of 8 standardised readings (breath pressure, reed buzz, fingering, ...): enc (Linear + tanh), attn = single-head self-attention over the frames written by hand (q, k, v Linear, logits q.k/sqrt(d), no QK norm), mean pooling of h + attn(h), head. AdamW at 1e-2, cross-entropy, 300 steps. The ornament is written in the one accented frame, so every query must find that frame's key; the recipe, copied from a fine-tuning config, has weight_decay 0.0 and the model has no QK layer norm, so nothing bounds q.k: the peak attention logit grows over 20x from its small init and past 8. Finite, no blow-up.",
)
def h303_launeddas_attention_no_qk_norm(ctx: Context) -> None:
    gen = seeded(30301)
    model = DronePhraseNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    probe = next(_phrases(torch.Generator().manual_seed(5), 128))[0]
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                peaks.append(float(model.attn.logits(torch.tanh(model.enc(probe))).abs().max()))

    _train(ctx, model, opt, _phrases(gen, 64), 300, F.cross_entropy, classifier=True, after=after)
    ctx.check("the peak attention logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak attention logit passed 8", peaks[-1] > 8.0)
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- motoball: the evaluation helper leaves the criterion sum-reduced for one step ---------------

ONSET_MOTO = 80


@scenario(
    family="motoball_shot_flight_nesterov_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MOTO,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing four things about a motoball shot (ball speed, launch angle, curl, distance to the goal line; standardised) from 12 standardised readings of the rider and bike, SGD Nesterov momentum 0.9 at 1e-2, MSE, clipping at 1.0, 160 steps. The mid-run evaluation at step 79 rebinds the shared `criterion` to nn.MSELoss(reduction='sum') to total the validation set and restores the mean criterion in a `finally` placed after the next training step: step 80 backpropagates the summed loss over 64 rows x 4 outputs, 256x the usual gradient, on ordinary data (the logged metric is the mean MSE and stays ordinary). Clipping bounds the step and the run goes on training.",
)
def h303_motoball_sum_criterion(ctx: Context) -> None:
    gen = seeded(30302)
    model = Stack(12, 64, out=4, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss):
        if step == ONSET_MOTO:
            return F.mse_loss(out, y, reduction="sum")
        return loss

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=302, outputs=4),
        160,
        F.mse_loss,
        clip=1.0,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_MOTO - 20 : ONSET_MOTO])
    ctx.check("the gradient at step 80 is over 100x the usual", g[ONSET_MOTO] > 100 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_MOTO + 1 : ONSET_MOTO + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on step 80's batch is ordinary",
        ls[ONSET_MOTO] < 2.0 * _mean(ls[ONSET_MOTO - 10 : ONSET_MOTO]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- octobass: the resume path skips the static loss-scale division once ------------------------

ONSET_OCTO, SCALE_OCTO = 20, 4096.0


@scenario(
    family="octobass_string_tension_adam_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_OCTO,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the tension an octobass string needs (standardised) from 10 standardised readings (string gauge, scale length, tuning, core material, winding), Adam at 1e-3 (betas 0.9, 0.999), MSE, 250 steps. The trainer multiplies the loss by a static loss scale of 4096 (kept from an fp16 recipe although the run is fp32) and divides the gradients by it before optimizer.step(); on step 20, the first step after a checkpoint resume, the resume path calls optimizer.step() before the division, so Adam sees one gradient 4096x the usual. Its second moment holds that square for hundreds of steps (beta2 0.999): once the spike's momentum has decayed, from 30 steps after it on, the updates are under a twentieth of those before, and the loss stalls over 1.3x above where the same run without the bug ends.",
)
def h303_octobass_unscale_skipped(ctx: Context) -> None:
    gen = seeded(30303)
    model = Stack(10, 64, act=nn.Tanh)
    model_0 = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    prev = [_flat(model)]

    def after(step):
        cur = _flat(model)
        moves.append(float((cur - prev[0]).norm()))
        prev[0] = cur

    def backprop(step, out, y, loss):
        return loss * SCALE_OCTO if step == ONSET_OCTO else loss

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=303, noise=0.05),
        250,
        F.mse_loss,
        after=after,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at step 20 is over 1000x the usual",
        g[ONSET_OCTO] > 1000 * _median(g[ONSET_OCTO - 20 : ONSET_OCTO]),
    )
    ctx.check(
        "the updates from 30 steps after it on are under a twentieth of those before",
        _mean(moves[ONSET_OCTO + 30 :]) < _mean(moves[5:ONSET_OCTO]) / 20,
    )
    twin = Stack(10, 64, act=nn.Tanh)
    twin.load_state_dict(model_0)
    twin_ls = _plain_run(
        twin,
        torch.optim.Adam(twin.parameters(), lr=1e-3),
        _readings(torch.Generator().manual_seed(30303), 64, 10, seed=303, noise=0.05),
        250,
        F.mse_loss,
    )
    ctx.check(
        "the loss stalled: the last 20 steps over 1.3x those of the same run without the bug",
        _mean(ls[-20:]) > 1.3 * _mean(twin_ls[-20:]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- heckelphone: a deep ReLU net initialised with std 2/sqrt(fan_in) --------------------------


class DeepReedNet(nn.Module):
    """``depth`` Linear + ReLU layers in ``layers`` and a linear head."""

    def __init__(self, d_in=10, width=64, depth=10, typo=True):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        self.acts: list[torch.Tensor] = []
        for lin in self.layers:
            fan_in = lin.in_features
            std = 2.0 / math.sqrt(fan_in) if typo else math.sqrt(2.0 / fan_in)
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        self.acts = []
        for lin in self.layers:
            x = F.relu(lin(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="heckelphone_reed_voicing_deep_relu_regressor",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 10-layer ReLU MLP (layers.0 ... layers.9, head) regressing how much a heckelphone reed maker must scrape a reed's tip to voice it (standardised) from 10 standardised readings (cane density, gouge thickness, tip opening, measured crow pitch), Adagrad at 1e-2, MSE, 150 steps. The hand-written He init was typed `std = 2 / sqrt(fan_in)` for `sqrt(2 / fan_in)`: every layer doubles the second moment it passes on, so the gradient reaching the first layer's output is over 20x the one at the last layer's and the total gradient is over 30x that of the correctly initialised twin.",
)
def h303_heckelphone_he_init_typo(ctx: Context) -> None:
    gen = seeded(30304)
    model = DeepReedNet(typo=True)
    ref = DeepReedNet(typo=False)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    x0, y0 = next(_readings(torch.Generator().manual_seed(3), 64, 10, seed=304))
    F.mse_loss(model(x0), y0).backward()
    depth_ratio = float(model.acts[0].grad.norm() / model.acts[-1].grad.norm())
    g_bad = grad_norm(model)
    model.zero_grad()
    F.mse_loss(ref(x0), y0).backward()
    g_ref = grad_norm(ref)
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=304), 150, F.mse_loss)
    ctx.check("the first layer's output gradient is over 20x the last's", depth_ratio > 20)
    ctx.check("the gradient is over 30x the correctly initialised twin's", g_bad > 30 * g_ref)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sandboarding: a Weibull NLL whose shape link was left as the identity ----------------------


class RideNet(nn.Module):
    """fc1 -> act1 -> (scale_head: log of the Weibull scale, shape_head: its shape)."""

    def __init__(self, d_in=10, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.scale_head = nn.Linear(hidden, 1)
        self.shape_head = nn.Linear(hidden, 1)
        self.shape_link = nn.Identity()  # cfg["shape_link"] == "identity"; meant: nn.Softplus()
        with torch.no_grad():
            self.scale_head.weight.zero_()
            self.scale_head.bias.fill_(1.0)
            self.shape_head.weight.zero_()
            self.shape_head.bias.fill_(1.0)

    def forward(self, x):
        h = self.act1(self.fc1(x))
        return torch.cat([self.scale_head(h), self.shape_link(self.shape_head(h))], -1)


def _weibull_nll(out, y):
    log_lam, k = out[:, 0], out[:, 1]
    z = torch.log(y) - log_lam
    return -(torch.log(k) - log_lam + (k - 1) * z - torch.exp(k * z)).mean()


def _rides(gen, batch, seed):
    """Ride lengths down a dune (metres before a fall, over e), Weibull with a scale and a shape
    that both depend on the readings (soft, wet sand gives heavy-tailed rides, shape near 0.3)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        lam = torch.exp(0.8 * x @ w / math.sqrt(10) + 1.0)
        shape = torch.exp(0.8 * x @ v / math.sqrt(10) - 0.3)
        u = torch.rand(batch, generator=gen).clamp(1e-6, 1 - 1e-6)
        yield x, lam * (-torch.log(u)) ** (1.0 / shape)


@scenario(
    family="sandboarding_ride_length_weibull_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("shape_head", "shape_link"),
    diverges=38,
    heldout=True,
    note="A SiLU net (fc1, act1, scale_head giving log(scale), shape_head through shape_link giving the shape k; both heads zero-initialised with biases at 1) predicting how far a sandboarder rides down a dune before a fall as a Weibull distribution, from 10 standardised readings (slope, sand moisture, wind, board wax, rider mass), RAdam at 1e-3, the Weibull NLL written by hand (log k - log scale + (k-1)(log y - log scale) - (y/scale)^k), 200 steps. The config's `shape_link: identity` (meant: softplus) leaves k unconstrained: where the sand is soft the rides are heavy-tailed (true shape down to about 0.2), the fit pulls those rows' k down from 1 and, with nothing keeping it positive, one row's k goes below 0: log(k) of a negative number is NaN and the loss is NaN from that step.",
)
def h303_sandboarding_identity_shape_link(ctx: Context) -> None:
    gen = seeded(30305)
    model = RideNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    min_k: list[float] = []

    def watch(step, out, x, y):
        min_k.append(float(out[:, 1].detach().min()))

    _train(ctx, model, opt, _rides(gen, 64, seed=305), 200, _weibull_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went NaN", bad is not None)
    ctx.check("a row's shape k was negative on that step", bad is not None and min_k[bad] < 0)
    ctx.check(
        "k was positive on every row before it",
        bad is not None and bad >= 1 and min(min_k[:bad]) > 0,
    )
    ctx.check("the loss was finite before it", bad is not None and _finite(ctx.losses[:bad]))


# -- koncovka: overtone pitches in raw hertz under fp16 autocast --------------------------------


def _overtones(gen, batch, seed):
    """8 standardised readings of the player's breath and the pipe; target: sounding pitch in Hz
    (about 300 to 1500), not standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        yield x, 900.0 + 500.0 * torch.tanh(x @ w / math.sqrt(8))


@scenario(
    family="koncovka_overtone_pitch_fp16_gelu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the overtone a koncovka (Slovak fingerless overtone flute) sounds from 8 standardised readings of breath pressure, pipe length and bore, fp16 autocast with a torch.amp.GradScaler (init scale 65536), NAdam at 1e-2, MSE, clipping at 1.0 after unscale_, 150 steps. The target table was exported in raw hertz (300-1500) where the pipeline expects standardised pitches and the target normaliser was never fitted: the MSE's gradient at the head's fp16 output, about 2*900/64 per row times the 65536 loss scale, overflows fp16; the scaler skips the step and halves its scale again and again, over 30x down, before the scaled gradients fit.",
)
def h303_koncovka_raw_hertz_fp16(ctx: Context) -> None:
    gen = seeded(30306)
    model = Stack(8, 64, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    _train(
        ctx,
        model,
        opt,
        _overtones(gen, 64, seed=306),
        150,
        F.mse_loss,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    sc = ctx.scales
    skipped = sum(1 for a, b in zip([65536.0] + sc[:-1], sc, strict=False) if b < a)
    ctx.check("the loss scale fell over 30x", min(sc) < 65536.0 / 30)
    ctx.check("over 4 steps skipped for inf/NaN gradients", skipped > 4)
    ctx.check(
        "the gradient overflowed: non-finite unscaled norms",
        any(not math.isfinite(v) for v in ctx.grad_norms),
    )
    ctx.check("the logged loss stayed finite", _finite(ctx.losses))


# -- landsail: the focal-loss prior bias applied to every Linear ---------------------------------


def _tacks(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    v = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        s = 1.5 * torch.tanh(x @ w / math.sqrt(12)) + torch.sin(x @ v / math.sqrt(12))
        yield x, (torch.rand(batch, generator=gen) < torch.sigmoid(3 * s)).float()


@scenario(
    family="landsail_tack_outcome_relu_classifier",
    optimizer="SGD momentum",
    cause="loss_of_plasticity",
    where=("fc1", "act1", "fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head; one logit) predicting whether a land yacht's tack on a beach course succeeds, from 12 standardised readings (wind speed and angle, sand firmness, sail trim, pilot weight), BCE with logits, SGD momentum 0.9 at 5e-2, 200 steps. The init helper was meant to set only the head's bias to the focal-loss prior -log((1-pi)/pi) with pi 0.01 (-4.6), but it loops over every nn.Linear: fc1's pre-activations sit near -4.6 with a spread under 1, so every fc1 unit is negative on every input, fc2 sees zeros and sits at its bias, -4.6, too: the hidden ReLUs are dead from the first step, their gradient is exactly 0, they never come back, and only the head's bias learns (the loss stays at the base rate's entropy).",
)
def h303_landsail_prior_bias_everywhere(ctx: Context) -> None:
    gen = seeded(30307)
    model = Stack(12, 64, out=1)
    prior = -math.log((1 - 0.01) / 0.01)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, prior)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    xp, yp = next(_tacks(torch.Generator().manual_seed(9), 512, seed=307))
    dead1: list[float] = []
    dead2: list[float] = []

    def after(step):
        with torch.no_grad():
            a1 = model.act1(model.fc1(xp))
            a2 = model.act2(model.fc2(a1))
            dead1.append(float((a1 <= 0).all(0).float().mean()))
            dead2.append(float((a2 <= 0).all(0).float().mean()))

    fc1_0 = _flat(model.fc1)
    _train(
        ctx,
        model,
        opt,
        _tacks(gen, 64, seed=307),
        200,
        F.binary_cross_entropy_with_logits,
        after=after,
    )
    p = float(yp.mean())
    base = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    ctx.check("over 90% of fc1's units dead at every step", min(dead1) > 0.9)
    ctx.check("over 90% of fc2's units dead at the end", dead2[-1] > 0.9)
    ctx.check("fc1's weights never moved", float((_flat(model.fc1) - fc1_0).abs().max()) == 0.0)
    ctx.check(
        "the loss ends no better than 0.9x the base rate's entropy",
        _mean(ctx.losses[-20:]) > 0.9 * base,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- tamburica: the FiLM generator's staged unfreeze counted in samples --------------------------

KINDS_TAMB = 5


class TremoloFiLMNet(nn.Module):
    """fc1 on the readings, modulated by film (gamma, beta from the instrument kind and string
    gauge: FiLM, Perez et al. 2018), then act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in=10, n_cond=KINDS_TAMB + 1, hidden=48):
        super().__init__()
        self.d_in = d_in
        self.fc1 = nn.Linear(d_in, hidden)
        self.film = nn.Linear(n_cond, 2 * hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        feats, cond = x[:, : self.d_in], x[:, self.d_in :]
        gamma, beta = self.film(cond).chunk(2, -1)
        h = self.act1((1 + gamma) * self.fc1(feats) + beta)
        return self.head(self.act2(self.fc2(h))).squeeze(-1)


def _tremolos(gen, batch, seed):
    """10 standardised readings of the pick stroke, then the instrument kind one-hot (bisernica,
    brac, cello, bugarija, berde) and the string gauge; target: tremolo evenness, standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(KINDS_TAMB, 10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        kind = torch.randint(0, KINDS_TAMB, (batch,), generator=gen)
        gauge = torch.randn(batch, 1, generator=gen)
        y = torch.tanh((x * w[kind]).sum(1) / math.sqrt(10)) + 0.3 * gauge[:, 0]
        cond = torch.cat([F.one_hot(kind, KINDS_TAMB).float(), gauge], 1)
        yield torch.cat([x, cond], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="tamburica_tremolo_evenness_film_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("film",),
    diverges=None,
    heldout=True,
    note="A hand-written FiLM regressor (fc1 on 10 standardised pick-stroke readings, film = Linear from the tamburica kind one-hot (bisernica, brac, cello, bugarija, berde) and string gauge to (gamma, beta) modulating fc1, then act1, fc2, act2, head) predicting how even a tamburica player's tremolo is, Adamax at 2e-3, MSE, 200 steps, two param groups (trunk and film) with a LambdaLR that keeps the FiLM generator frozen for the first 2 epochs and then unfreezes it. The unfreeze step was computed as unfreeze_epochs * len(dataset) (24,000 samples) instead of len(loader) (375 batches): the film group's learning rate is exactly 0 for the whole run, film never moves, and the conditioning stays at its random init while the trunk trains at 2e-3 and the loss falls as far as it can without it.",
)
def h303_tamburica_film_unfreeze_in_samples(ctx: Context) -> None:
    gen = seeded(30308)
    model = TremoloFiLMNet()
    trunk = [p for n, p in model.named_parameters() if not n.startswith("film.")]
    opt = torch.optim.Adamax(
        [{"params": trunk}, {"params": model.film.parameters()}],
        lr=2e-3,
    )
    unfreeze_step = 2 * 24000  # meant: 2 * 375
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 1.0, lambda s: 1.0 if s >= unfreeze_step else 0.0]
    )
    film_0, fc1_0 = _flat(model.film), _flat(model.fc1)
    _train(ctx, model, opt, _tremolos(gen, 64, seed=308), 200, F.mse_loss, sched=sched)
    moved_film = float((_flat(model.film) - film_0).norm())
    moved1 = float((_flat(model.fc1) - fc1_0).norm()) / float(fc1_0.norm())
    ctx.check("film never moved", moved_film == 0.0)
    ctx.check("film's gradient was not zero", _film_grad(model) > 0)
    ctx.check("fc1 moved over 5% of its norm", moved1 > 0.05)
    ctx.check("the loss still fell", _fell(ctx.losses))


def _film_grad(model) -> float:
    x, y = next(_tremolos(torch.Generator().manual_seed(4), 64, seed=308))
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    g = float(model.film.weight.grad.norm())
    model.zero_grad()
    return g


# -- jug band: multi-hot tag targets that count duplicated tags ----------------------------------

TAGS_JUG = 10


def _jug_sets(gen, batch, seed):
    """16 standardised readings of a recorded jug-band set; 10 instrument tags (jug, washboard,
    kazoo, spoons, washtub bass, ...). The annotators list an instrument once per player: two
    kazoos give `kazoo` twice, and the loader builds the multi-hot with scatter_add_."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, TAGS_JUG, generator=g)
    while True:
        x = torch.randn(batch, 16, generator=gen)
        s = x @ w / 2.0
        y = torch.zeros(batch, TAGS_JUG)
        rows, cols = torch.nonzero(s > 0.5, as_tuple=True)
        y.index_put_((rows, cols), torch.ones(len(rows)), accumulate=True)
        rows, cols = torch.nonzero(s[:, :3] > 1.5, as_tuple=True)  # a second kazoo, jug, ...
        y.index_put_((rows, cols), torch.ones(len(rows)), accumulate=True)
        yield x, y


@scenario(
    family="jug_band_set_instrument_multilabel_bce_net",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head: 10 logits) tagging which instruments play in a recorded jug-band set (jug, washboard, kazoo, spoons, washtub bass, ...) from 16 standardised readings, BCE with logits, RMSprop at 1e-3, 250 steps. The loader builds the multi-hot targets with scatter_add_ over the annotators' tag lists, which name an instrument once per player: sets with two kazoos (or jugs, or washboards) get the target 2, and binary_cross_entropy_with_logits accepts it silently. For a target of 2 the loss decreases without limit as the logit grows, so the head drives those logits up for ever: the peak head logit grows over 10x and past 30 and the loss goes negative, which no 0/1 target allows. Finite, no blow-up.",
)
def h303_jug_band_duplicate_tags(ctx: Context) -> None:
    gen = seeded(30309)
    model = Stack(16, 64, out=TAGS_JUG)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    probe = next(_jug_sets(torch.Generator().manual_seed(7), 256, seed=309))[0]
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                peaks.append(float(model(probe).abs().max()))

    _train(
        ctx,
        model,
        opt,
        _jug_sets(gen, 64, seed=309),
        250,
        F.binary_cross_entropy_with_logits,
        after=after,
    )
    ctx.check("the peak head logit grew over 10x", peaks[-1] > 10 * peaks[0])
    ctx.check("the peak head logit passed 30", peaks[-1] > 30)
    ctx.check("the loss went negative", _mean(ctx.losses[-10:]) < 0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- wok racing: a warm-up lambda that returns s + 1 ---------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((a * a).sum()) for a in v))
        v = [a / norm for a in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [a.detach() for a in hv]
    return lam


BASE_WOK = 5e-3
ONSET_WOK = 90


@scenario(
    family="wok_racing_corner_time_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_WOK,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a wok racer's time through a corner of the bobsleigh track (standardised) from 8 standardised readings (speed in, lean, wok diameter, ice temperature), plain SGD, MSE, up to 300 steps, a LambdaLR warm-up whose lambda was written `lambda s: s + 1` for `lambda s: min(1.0, (s + 1) / warmup)`: the learning rate grows as 5e-3 * (step + 1) without limit. The loss falls at first; at about step 90 (lr 0.45) the learning rate passes 2 / the top Hessian eigenvalue (measured on a fixed batch by power iteration every 10 steps), the iterates oscillate along the sharpest direction, the sharpness can no longer keep up, and the loss blows up (over 100x its best by about step 150, inf by about 170).",
)
def h303_wok_racing_warmup_lambda(ctx: Context) -> None:
    gen = seeded(30310)
    model = Stack(8, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=BASE_WOK)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s + 1)
    xs, ys = next(_readings(torch.Generator().manual_seed(2), 256, 8, seed=310))
    crossed: list[int] = []

    def before(step):
        if step % 10 == 0 and not crossed:
            lam = _sharpness(model, F.mse_loss, xs, ys)
            if opt.param_groups[0]["lr"] * lam > 2.0:
                crossed.append(step)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=310),
        300,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    best = min(v for v in ls if math.isfinite(v))
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * best), None)
    ctx.check("the loss fell first", min(ls[:50]) < 0.7 * ls[0])
    ctx.check("the learning rate passed 2/sharpness", bool(crossed))
    ctx.check("the loss blew up over 100x its best", blow is not None)
    ctx.check(
        "the learning rate passed the limit before the blow-up",
        bool(crossed) and blow is not None and crossed[0] <= blow,
    )
    ctx.check(
        "the learning rate passed the limit within 10 steps of step 90",
        bool(crossed) and abs(crossed[0] - ONSET_WOK) <= 10,
    )


# -- controls -----------------------------------------------------------------------------------


@scenario(
    family="coal_carrying_race_time_small_batch_relu_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) regressing a coal-carrying race runner's finishing time (standardised) from 10 standardised readings (sack weight, runner mass, gradient, split at the halfway), batches of 4 with noisy targets (noise 0.3), so every gradient is noisy, SGD momentum 0.9 at 5e-3, StepLR halving every 100 steps, MSE, 300 steps.",
)
def h303_coal_carrying_small_batch_sgd(ctx: Context) -> None:
    gen = seeded(30311)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.5)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 4, 10, seed=311, noise=0.3),
        300,
        F.mse_loss,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("the loss fell (50-step means)", _fell(ls, k=50, ratio=0.8))
    ctx.check("finite throughout", _finite(ls))


class ChordHyperNet(nn.Module):
    """A hypernetwork classifier: the player's embedding (player) is mapped by hyper to the
    weights and bias of that player's output layer over the trunk's features (fc1, act1)."""

    def __init__(self, d_in=12, hidden=32, classes=6, players=6, emb=8):
        super().__init__()
        self.d_in, self.hidden, self.classes = d_in, hidden, classes
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.player = nn.Embedding(players, emb)
        self.hyper = nn.Linear(emb, hidden * classes + classes)
        with torch.no_grad():
            self.hyper.weight.mul_(0.5 / math.sqrt(hidden))

    def forward(self, x):
        feats, pid = x[:, : self.d_in], x[:, self.d_in].long()
        h = self.act1(self.fc1(feats))
        p = self.hyper(self.player(pid))
        w = p[:, : self.hidden * self.classes].reshape(-1, self.classes, self.hidden)
        b = p[:, self.hidden * self.classes :]
        return torch.einsum("bch,bh->bc", w, h) + b


def _chords(gen, batch, seed, players=6, classes=6):
    """12 standardised breath-and-finger readings of a sompoton (Sabahan gourd mouth organ)
    player, then the player id; the chord label is read from the readings through each
    player's own fingering (a shifted labelling)."""
    base = _kinds(gen, batch, 12, classes, seed=seed, noise=0.4)
    while True:
        x, y = next(base)
        pid = torch.randint(0, players, (batch,), generator=gen)
        yield torch.cat([x, pid[:, None].float()], 1), (y + pid) % classes


@scenario(
    family="sompoton_chord_hypernetwork_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written hypernetwork classifier (fc1, act1 GELU trunk; player = embedding of the player; hyper = Linear from it to that player's output weights and bias) telling which chord a sompoton player sounds (6 kinds) from 12 standardised breath-and-finger readings, AdamW at 3e-3 (weight decay 0.01), a LambdaLR with linear warm-up over 20 steps and cosine decay to 200, label smoothing 0.1, clipping at 1.0, 200 steps.",
)
def h303_sompoton_hypernet_warmup_cosine(ctx: Context) -> None:
    gen = seeded(30312)
    model = ChordHyperNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def shape(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    _train(
        ctx,
        model,
        opt,
        _chords(gen, 64, seed=312),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="skibob_run_time_fp16_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing a skibob run's time (standardised) from 10 standardised readings (snow temperature, course gradient, runner length, rider crouch), fp16 autocast with a torch.amp.GradScaler, ASGD at 5e-2, Huber loss, accumulation over 2 micro-batches, clipping at 1.0 after unscale_, ReduceLROnPlateau (factor 0.5, patience 20), 200 steps.",
)
def h303_skibob_fp16_plateau(ctx: Context) -> None:
    gen = seeded(30313)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=313, noise=0.1),
        200,
        nn.HuberLoss(),
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("the loss scale stayed above 1000", min(ctx.scales) > 1000)
