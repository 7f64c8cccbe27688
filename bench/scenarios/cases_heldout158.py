"""Held-out set 158 (``h158_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a tabular transformer with a CLS token and hand-written
attention, a bidirectional LSTM tagger, a dilated 1-D temporal convolutional network, a DeepSets
model with masked mean pooling, a small VAE, a ReLU recurrent net, a Gram-matrix 1-D conv net
under fp16 autocast, MLP regressors and classifiers, and controls with ``nn.MultiheadAttention``,
``scaled_dot_product_attention``, fp16 autocast with a GradScaler and Adadelta.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


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
    clip=None,
    clip_value=None,
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
    flat_targets=False,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    loss)`` changes the loss that is back-propagated, ``after(step)`` runs after the update. The
    loss shown is the one the run logs; it stops after a non-finite loss."""
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
                ctx.targets(y.reshape(-1) if flat_targets else y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
                loss = loss_fn(out, y) / accumulate
            if watch is not None:
                watch(step, out, x, y)
            back = loss if scale_loss is None else scale_loss(step, loss)
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
            shown += float(loss.detach().float())
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(shown)
            else:
                sched.step()
        if after is not None:
            after(step)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break


# -- maple syrup grading: a tabular CLS transformer whose attention temperature divides ---------


class SapAttention(nn.Module):
    """Multi-head self-attention with a hand softmax over q.k scores; ``temperature`` divides the
    scores (it should be sqrt(head_dim)). Records the largest logit it softmaxed."""

    def __init__(self, dim, heads, temperature):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.temperature = temperature
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (
            lin(x).reshape(b, t, self.heads, -1).transpose(1, 2) for lin in (self.q, self.k, self.v)
        )
        scores = q @ k.transpose(-1, -2) / self.temperature
        self.last_max = float(scores.detach().abs().amax())
        att = torch.exp(scores - scores.amax(-1, keepdim=True))
        att = att / att.sum(-1, keepdim=True)
        return self.out((att @ v).transpose(1, 2).reshape(b, t, d))


class SyrupBlock(nn.Module):
    def __init__(self, dim, heads, temperature):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SapAttention(dim, heads, temperature)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class SyrupGradeTransformer(nn.Module):
    """Each of 10 lab readings of a syrup batch (Brix, light transmittance, pH, ...) becomes a
    token (value times a per-feature vector plus a per-feature bias); a CLS token is prepended
    and its final state names one of four grades."""

    def __init__(self, features=10, dim=32, heads=2, grades=4, temperature=None):
        super().__init__()
        self.feat_w = nn.Parameter(torch.randn(features, dim) * 0.5)
        self.feat_b = nn.Parameter(torch.randn(features, dim) * 0.1)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        hd = dim // heads
        self.block = SyrupBlock(dim, heads, math.sqrt(hd) if temperature is None else temperature)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, grades)

    def forward(self, x):
        tok = x[:, :, None] * self.feat_w + self.feat_b
        h = torch.cat([self.cls.expand(len(x), -1, -1), tok], 1)
        h = self.block(h)
        return self.head(self.ln_f(h[:, 0]))


def _syrup(gen, batch, features=10):
    while True:
        x = torch.randn(batch, features, generator=gen)
        score = x[:, 0] * x[:, 1] + x[:, 2] - 0.5 * x[:, 3].abs()
        y = torch.bucketize(score, torch.tensor([-0.8, 0.0, 0.8]))
        yield x, y


@scenario(
    family="maple_syrup_grade_tabular_cls_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("block.attn",),
    diverges=None,
    heldout=True,
    note="A tabular transformer with a CLS token and a hand softmax over q.k scores. The config's "
    "'attn_temperature: 0.1' (meant as a multiplier on the scores) is used as the divisor in "
    "place of sqrt(head_dim), so the scores are 40x too large; AdamW at lr 3e-3 with weight "
    "decay 0: the q.k logits the softmax sees grow more than 5x, past 100.",
)
def h158_maple_syrup_attn_temperature_divisor(ctx: Context) -> None:
    gen = seeded(15801)
    model = SyrupGradeTransformer(temperature=0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _syrup(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.block.attn.last_max),
    )
    ctx.check("attention logits grew 5x", seen[-1] > 5 * _mean(seen[:5]))
    ctx.check("attention logits above 100", seen[-1] > 100)
    ctx.check("losses finite", _finite(ctx.losses))


# -- cormorant fishing: labels 1/2 binarised with > 0, every target is 1 ------------------------


class CatchNet(nn.Module):
    """Names a trained cormorant's dive outcome (nothing, small fish, large fish) from 14 dive
    readings."""

    def __init__(self, inputs=14, hidden=48, outcomes=3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, outcomes)

    def forward(self, x):
        return self.head(self.body(x))


def _dives(gen, batch, inputs=14):
    w = torch.randn(inputs, 3, generator=torch.Generator().manual_seed(58))
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = (x @ w + 0.5 * torch.randn(batch, 3, generator=gen)).argmax(1)
        yield x, y


def _soft_ce_no_log_softmax(logits, y, smoothing=0.1):
    """Label-smoothed cross-entropy as the port wrote it: the log_softmax is missing."""
    soft = F.one_hot(y, logits.shape[-1]).float() * (1 - smoothing) + smoothing / logits.shape[-1]
    return -(soft * logits).sum(-1).mean()


@scenario(
    family="cormorant_fishing_catch_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Label-smoothed cross-entropy (smoothing 0.1) was hand-written as "
    "-(soft_targets * logits).sum(-1).mean(): the log_softmax was left out, so the loss is "
    "linear in the logits and has no floor. With Adamax at lr 2e-2 the head's logits grow "
    "without bound (norm more than 20x, still growing at the end) while the loss runs negative.",
)
def h158_cormorant_soft_ce_no_log_softmax(ctx: Context) -> None:
    gen = seeded(15802)
    model = CatchNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-2)
    logits = []
    _train(
        ctx,
        model,
        opt,
        _dives(gen, 64),
        200,
        _soft_ce_no_log_softmax,
        classifier=True,
        watch=lambda s, o, x, y: logits.append(float(o.detach().norm(dim=-1).mean())),
    )
    ctx.check("logit norm grew 20x", logits[-1] > 20 * _mean(logits[:5]))
    ctx.check("logit norm still growing", logits[-1] > 1.2 * logits[-60])
    ctx.check("loss ran negative", ctx.losses[-1] < -10)


# -- dragonfly flight phases: a BiLSTM tagger whose logits are divided by 0.01 ------------------


class FlightPhaseTagger(nn.Module):
    """Tags every frame of a dragonfly's 6-axis wing-beat track as hover, dart, glide or perch;
    returns (batch * frames, phases) logits."""

    def __init__(self, inputs=6, hidden=32, phases=4, temperature=1.0):
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, phases)
        self.temperature = temperature

    def forward(self, x):
        h, _ = self.lstm(x)
        return (self.head(h) / self.temperature).reshape(-1, self.head.out_features)


def _flight(gen, batch, frames=24, phases=4, inputs=6):
    centres = torch.randn(phases, inputs, generator=torch.Generator().manual_seed(158))
    stay = 0.85
    while True:
        y = torch.empty(batch, frames, dtype=torch.long)
        y[:, 0] = torch.randint(0, phases, (batch,), generator=gen)
        for t in range(1, frames):
            move = torch.rand(batch, generator=gen) > stay
            jump = torch.randint(0, phases, (batch,), generator=gen)
            y[:, t] = torch.where(move, jump, y[:, t - 1])
        x = centres[y] + 0.3 * torch.randn(batch, frames, inputs, generator=gen)
        yield x, y


@scenario(
    family="dragonfly_flight_phase_bilstm_tagger",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A bidirectional LSTM tagger. The tagger was distilled from a teacher whose targets "
    "were sharpened with temperature 0.005; the same 'temperature: 0.005' config entry is read "
    "by the student, whose logits are divided by it. With NAdam at lr 3e-3 the frame-wise "
    "softmax saturates: more than a third of the frames give their target probability "
    "exactly 1.0 in float32.",
)
def h158_dragonfly_tagger_temperature(ctx: Context) -> None:
    gen = seeded(15803)
    model = FlightPhaseTagger(temperature=0.005)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    frac = []
    _train(
        ctx,
        model,
        opt,
        _flight(gen, 32),
        150,
        lambda o, y: F.cross_entropy(o, y.reshape(-1)),
        classifier=True,
        flat_targets=True,
        watch=lambda s, o, x, y: frac.append(collapsed_fraction(o.detach(), y.reshape(-1))),
    )
    ctx.check("under 10% collapsed at first", _mean(frac[:3]) < 0.1)
    ctx.check("over a third of the frames collapsed", _mean(frac[-10:]) > 1 / 3)


# -- glacier outburst floods: a dilated TCN under a OneCycleLR max_lr typed 10x ----------------


class CausalConv(nn.Module):
    def __init__(self, cin, cout, dilation):
        super().__init__()
        self.pad = 2 * dilation
        self.conv = nn.Conv1d(cin, cout, 3, dilation=dilation)

    def forward(self, x):
        return self.conv(F.pad(x, (self.pad, 0)))


class TemporalBlock(nn.Module):
    def __init__(self, channels, dilation):
        super().__init__()
        self.conv1 = CausalConv(channels, channels, dilation)
        self.conv2 = CausalConv(channels, channels, dilation)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class OutburstTCN(nn.Module):
    """Forecasts the next hour's meltwater discharge at every hour of a 64-hour record of
    discharge, lake level and air temperature, with dilations 1, 2, 4, 8."""

    def __init__(self, inputs=3, channels=24):
        super().__init__()
        self.inp = nn.Conv1d(inputs, channels, 1)
        self.blocks = nn.Sequential(*(TemporalBlock(channels, d) for d in (1, 2, 4, 8)))
        self.out = nn.Conv1d(channels, 1, 1)

    def forward(self, x):
        return self.out(self.blocks(self.inp(x))).squeeze(1)


def _meltwater(gen, batch, hours=64):
    while True:
        t = torch.arange(hours + 1, dtype=torch.float32)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        temp = torch.sin(2 * math.pi * t / 24 + phase) + 0.2 * torch.randn(
            batch, hours + 1, generator=gen
        )
        level = torch.cumsum(0.1 * temp.clamp(min=0), 1) / 4
        flow = 0.6 * torch.roll(temp, 3, 1).clamp(min=0) + 0.5 * level
        x = torch.stack([flow[:, :-1], level[:, :-1], temp[:, :-1]], 1)
        yield x, flow[:, 1:]


@scenario(
    family="glacier_outburst_dilated_tcn",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=20,
    note="A dilated causal TCN for discharge forecasting with plain SGD under OneCycleLR. "
    "max_lr was typed 2.0 for 0.2 (at 0.2 the run trains smoothly): the warm-up climbs past "
    "the 2/sharpness limit (a constant lr of 0.4 diverges within a few steps) around step 20 "
    "and the loss, which had fallen, blows up to non-finite in the 30s.",
)
def h158_glacier_tcn_onecycle_max_lr(ctx: Context) -> None:
    gen = seeded(15804)
    model = OutburstTCN()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2.0, total_steps=200, pct_start=0.4)
    lrs = []
    _train(
        ctx,
        model,
        opt,
        _meltwater(gen, 32),
        200,
        F.mse_loss,
        sched=sched,
        before=lambda s: lrs.append(opt.param_groups[0]["lr"]),
    )
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i] if math.isfinite(ls[i]) else math.inf)
    after = ls[low:]
    ctx.check("loss fell first", ls[low] < 0.5 * ls[0])
    ctx.check(
        "loss blew up after its low",
        not _finite(after) or max(after) > 100 * ls[low],
    )
    ctx.check("lr past 0.4 when it blew up", lrs[len(ls) - 1] > 0.4)
    side = OutburstTCN()
    side_opt = torch.optim.SGD(side.parameters(), lr=0.4)
    side_data, side_ls = _meltwater(seeded(15804), 32), []
    for _ in range(10):
        x, y = next(side_data)
        loss = F.mse_loss(side(x), y)
        side_opt.zero_grad()
        loss.backward()
        side_opt.step()
        side_ls.append(float(loss.detach()))
    ctx.check(
        "constant lr 0.4 is unstable", not _finite(side_ls) or max(side_ls) > 100 * side_ls[0]
    )


# -- lasso spin: a ReLU RNN whose recurrent weights were initialised at gain 1.4 ---------------


class LassoSpinRNN(nn.Module):
    """Regresses a lasso loop's spin rate from 60 frames of a wrist IMU (3 axes), with a
    hand-unrolled ReLU RNN cell."""

    def __init__(self, inputs=3, hidden=48, gain=1.0):
        super().__init__()
        self.cell = nn.RNNCell(inputs, hidden, nonlinearity="relu")
        nn.init.orthogonal_(self.cell.weight_hh, gain=gain)
        nn.init.zeros_(self.cell.bias_hh)
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.cell.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _lasso(gen, batch, frames=60):
    while True:
        rate = 0.5 + torch.rand(batch, generator=gen)
        t = torch.arange(frames, dtype=torch.float32)
        ang = rate[:, None] * t[None] + 6 * torch.rand(batch, 1, generator=gen)
        x = torch.stack([torch.sin(ang), torch.cos(ang), 0.3 * torch.randn_like(ang)], -1)
        yield x, rate


@scenario(
    family="lasso_loop_spin_relu_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    note="An IRNN-style ReLU RNN: the recipe's identity-like recurrent init (gain 1.0) was "
    "written nn.init.orthogonal_(weight_hh, gain=1.6), so the gradient grows back through the "
    "60 time steps (the loss gradient at the first frame's state is more than 100x that at "
    "the last) and SGD with momentum 0.9 at lr 1e-3 blows up within a few steps.",
)
def h158_lasso_rnn_recurrent_gain(ctx: Context) -> None:
    gen = seeded(15805)
    model = LassoSpinRNN(gain=1.6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratio = []

    def after(step):
        if step < 1:
            first, last = model.states[0].grad, model.states[-1].grad
            ratio.append(float(first.norm() / last.norm().clamp(min=1e-30)))

    _train(ctx, model, opt, _lasso(gen, 32), 150, F.mse_loss, after=after)
    ls = ctx.losses
    ctx.check("gradient 100x larger at the first frame", ratio[0] > 100)
    ctx.check("loss blew up", not _finite(ls) or max(ls) > 1e4 * ls[0])


# -- clog dance taps: RMSprop at the SGD recipe's lr kills the ReLUs ----------------------------


class TapNet(nn.Module):
    """Names the clog-dance tap (toe, heel, shuffle, stamp, brush) from 20 band levels in dB."""

    def __init__(self, inputs=20, hidden=64, taps=5):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, taps)

    def forward(self, x):
        return self.head(self.body(x))


def _taps(gen, batch, inputs=20, taps=5):
    centres = 2 * torch.randn(taps, inputs, generator=torch.Generator().manual_seed(15))
    while True:
        y = torch.randint(0, taps, (batch,), generator=gen)
        x = 30.0 + centres[y] + 1.5 * torch.randn(batch, inputs, generator=gen)
        yield x, y


@scenario(
    family="clog_dance_tap_relu_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("body.0", "body.1"),
    diverges=None,
    heldout=True,
    note="The band levels go in as raw dB (around 30, not standardised) and the optimizer was "
    "switched from SGD to RMSprop with the SGD recipe's lr 0.02 kept: RMSprop's first steps "
    "are about 10x its lr (its square average starts at 0), they drive the first hidden "
    "layer's ReLUs negative on every input (from about half off at init to over 90% dead) and "
    "the units never come back; the loss stalls at chance (ln 5).",
)
def h158_clog_dance_rmsprop_dead_relus(ctx: Context) -> None:
    gen = seeded(15806)
    model = TapNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.02)
    dead = []
    probe = next(_taps(seeded(99), 512))[0]

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.body[:2](probe)))

    with torch.no_grad():
        dead_at_init = dead_fraction(model.body[:2](probe))

    _train(ctx, model, opt, _taps(gen, 64), 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("under 60% dead at init", dead_at_init < 0.6)
    ctx.check("over 90% dead at the end", dead[-1] > 0.9)
    ctx.check("loss stalled near chance", _mean(ctx.losses[-20:]) > 0.9 * math.log(5))


# -- coral spawning spectra: a VAE whose encoder lr multiplier is 1 // 10 ------------------------


class SpawnVAE(nn.Module):
    """A small VAE of 32-band spectra of a reef camera during a spawning night."""

    def __init__(self, bands=32, hidden=48, latent=4):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(bands, hidden), nn.ReLU())
        self.to_mu = nn.Linear(hidden, latent)
        self.to_logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, bands))

    def forward(self, x):
        h = self.encoder(x)
        mu, logvar = self.to_mu(h), self.to_logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decoder(z), mu, logvar


def _vae_loss(out, x, beta=0.1):
    recon, mu, logvar = out
    rec = F.mse_loss(recon, x, reduction="none").sum(1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
    return rec + beta * kl


def _spectra(gen, batch, bands=32):
    basis = torch.randn(3, bands, generator=torch.Generator().manual_seed(1580))
    while True:
        z = torch.randn(batch, 3, generator=gen)
        x = torch.tanh(z @ basis) + 0.05 * torch.randn(batch, bands, generator=gen)
        yield x, x


@scenario(
    family="coral_spawning_spectrum_vae",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("encoder", "encoder.0", "to_mu", "to_logvar"),
    diverges=None,
    heldout=True,
    note="A VAE (reconstruction + 0.1 KL) with two Adagrad param groups. The encoder's lr "
    "multiplier was written 1 // 10 (meant 1 / 10), which is 0: the encoder and its mu/logvar "
    "heads never move (update ratio exactly 0) while the decoder trains.",
)
def h158_coral_vae_encoder_intdiv_lr(ctx: Context) -> None:
    gen = seeded(15807)
    model = SpawnVAE()
    base = 0.05
    enc = [*model.encoder.parameters(), *model.to_mu.parameters(), *model.to_logvar.parameters()]
    opt = torch.optim.Adagrad(
        [
            {"params": enc, "lr": base * (1 // 10)},
            {"params": model.decoder.parameters(), "lr": base},
        ]
    )
    enc0 = [p.detach().clone() for p in enc]
    dec0 = [p.detach().clone() for p in model.decoder.parameters()]
    _train(ctx, model, opt, _spectra(gen, 64), 200, _vae_loss)
    ctx.check("encoder never moved", all(torch.equal(a, p) for a, p in zip(enc0, enc, strict=True)))
    moved = sum(
        float((a - p.detach()).norm())
        for a, p in zip(dec0, model.decoder.parameters(), strict=True)
    )
    ctx.check("decoder moved", moved > 0.1)
    ctx.check("losses finite", _finite(ctx.losses))


# -- barrel organ pinning: the old static loss scale applied on a checkpoint step ---------------


class PinningNet(nn.Module):
    """Regresses the pin offset (in mm) along a barrel-organ cylinder from 16 tune readings."""

    def __init__(self, inputs=16, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.net(x)).squeeze(-1)


def _pins(gen, batch, inputs=16):
    w = torch.randn(inputs, generator=torch.Generator().manual_seed(816))
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = (
            torch.sin(x @ w / 4)
            + 0.3 * x[:, 0] * x[:, 1]
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield x, y


@scenario(
    family="barrel_organ_pinning_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="Adam with beta2 0.9999. The checkpoint step (step 60) still goes through the old "
    "fp16 path, which multiplies the loss by the static scale 2**16 and never unscales: one "
    "gradient 65536x too large fills the second moment: after a kick from the momentum that "
    "carries the spike, the updates (from step 110) are more than 20x smaller than before "
    "and the loss stops falling.",
)
def h158_barrel_organ_static_scale_checkpoint(ctx: Context) -> None:
    gen = seeded(15808)
    model = PinningNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.9999))
    sizes = []
    prev = {}

    def before(step):
        prev["p"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        sizes.append(
            sum(
                float((p.detach() - q).norm())
                for p, q in zip(model.parameters(), prev["p"], strict=True)
            )
        )

    _train(
        ctx,
        model,
        opt,
        _pins(gen, 64),
        200,
        F.mse_loss,
        before=before,
        after=after,
        scale_loss=lambda s, loss: loss * 2.0**16 if s == 60 else loss,
    )
    g = ctx.grad_norms
    ctx.check("gradient 1000x at step 60", g[60] > 1000 * _median(g[40:60]))
    ctx.check("updates 20x smaller from 110", _mean(sizes[110:]) < _mean(sizes[40:60]) / 20)
    ls = ctx.losses
    ctx.check("loss was falling before", _mean(ls[50:60]) < 0.8 * _mean(ls[:10]))
    ctx.check("loss stalls after", _mean(ls[-10:]) > 0.8 * _mean(ls[50:60]))


# -- salt pan evaporation: one logger batch with the -9999 missing-value code -------------------


class EvaporationNet(nn.Module):
    """Regresses a salt pan's daily evaporation from 8 weather-station readings."""

    def __init__(self, inputs=8, hidden=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.net(x)).squeeze(-1)


def _weather(gen, batch, inputs=8):
    w = torch.randn(inputs, generator=torch.Generator().manual_seed(808)) / 2
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = x @ w + 0.4 * torch.relu(x[:, 0]) + 0.1 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="salt_pan_evaporation_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="One station's file (the batch of step 90) keeps the logger's -9999 missing-value code "
    "in its wind column for a quarter of the rows (the loader masks NaN only). The loss of "
    "that step is over 1000x the usual and its gradient over 100x; clipping at 1.0 keeps the "
    "update bounded and the run recovers.",
)
def h158_salt_pan_missing_code_batch(ctx: Context) -> None:
    gen = seeded(15809)
    model = EvaporationNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[: len(x) // 4, 3] = -9999.0
        return x, y

    _train(ctx, model, opt, _weather(gen, 64), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss 1000x at step 90", ls[90] > 1000 * _median(ls[70:90]))
    ctx.check("gradient 100x at step 90", g[90] > 100 * _median(g[70:90]))
    ctx.check("recovered", _mean(ls[-10:]) < 3 * _median(ls[70:90]))


# -- hedge laying: an auxiliary loss weight looked up as 500 for one step -----------------------


class PleachingNet(nn.Module):
    """Two heads on a shared trunk: the pleacher's cut angle and the stake spacing, from 12
    hedge readings (stem girth, species code, slope, ...)."""

    def __init__(self, inputs=12, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh())
        self.angle = nn.Linear(hidden, 1)
        self.spacing = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.angle(h), self.spacing(h)], 1)


def _hedges(gen, batch, inputs=12):
    w = torch.randn(inputs, 2, generator=torch.Generator().manual_seed(1212)) / 3
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = torch.tanh(x @ w) + 0.05 * torch.randn(batch, 2, generator=gen)
        yield x, y


@scenario(
    family="hedge_laying_pleacher_two_head_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="The spacing head's loss weight comes from a per-step schedule table; the entry for "
    "step 120 was typed 500 for 0.5. The logged loss is the intended one (angle + 0.5 "
    "spacing), but the back-propagated loss that step carries weight 500: a single gradient "
    "burst over 100x the usual, with ASGD at lr 0.05.",
)
def h158_hedge_laying_aux_weight_typo(ctx: Context) -> None:
    gen = seeded(15810)
    model = PleachingNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    parts = {}

    def loss_fn(o, y):
        a = F.mse_loss(o[:, 0], y[:, 0])
        s = F.mse_loss(o[:, 1], y[:, 1])
        parts["a"], parts["s"] = a, s
        return a + 0.5 * s

    def scale_loss(step, loss):
        return parts["a"] + (500.0 if step == 120 else 0.5) * parts["s"]

    _train(ctx, model, opt, _hedges(gen, 64), 200, loss_fn, scale_loss=scale_loss)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient 100x at step 120", g[120] > 100 * _median(g[100:120]))
    ctx.check("logged loss normal at step 120", ls[120] < 3 * _median(ls[100:120]))
    ctx.check("losses finite", _finite(ls))


# -- meteorite strewn fields: masked mean pooling over a field with no fragments ----------------


class MaskedMeanPool(nn.Module):
    """Mean over the recovered fragments: sum of the masked features over the count."""

    def forward(self, h, mask):
        m = mask[..., None].to(h.dtype)
        return (h * m).sum(1) / m.sum(1)


class StrewnFieldSets(nn.Module):
    """DeepSets: each recovered fragment (east, north, log mass) goes through phi, a masked
    mean pools them, rho names the meteorite class (ordinary chondrite, iron, achondrite)."""

    def __init__(self, inputs=3, hidden=48, classes=3):
        super().__init__()
        self.phi = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.pool = MaskedMeanPool()
        self.rho = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x):
        pts, mask = x
        return self.rho(self.pool(self.phi(pts), mask))


def _fields(gen, batch, points=24):
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        spread = torch.tensor([1.0, 0.4, 2.0])[y]
        heavy = torch.tensor([0.0, 1.5, -0.5])[y]
        e = torch.randn(batch, points, generator=gen) * spread[:, None] * 2
        n = torch.randn(batch, points, generator=gen) * spread[:, None] / 2
        m = heavy[:, None] + 0.8 * torch.randn(batch, points, generator=gen)
        pts = torch.stack([e, n, m], -1)
        count = torch.randint(4, points + 1, (batch,), generator=gen)
        mask = torch.arange(points)[None] < count[:, None]
        yield (pts, mask), y


@scenario(
    family="meteorite_strewn_field_deepsets",
    optimizer="Adam",
    cause="nonfinite",
    where=("pool",),
    diverges=110,
    heldout=True,
    onset=110,
    note="A DeepSets classifier with a masked mean pool (sum over count, no clamp on the "
    "count). The survey shard of step 110 holds a field whose fragments were all filtered out "
    "by the mass cut-off (count 0): the pool computes 0/0, and the loss is NaN at step 110.",
)
def h158_meteorite_empty_field_mean_pool(ctx: Context) -> None:
    gen = seeded(15811)
    model = StrewnFieldSets()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    pooled_nan = {}

    def alter(step, x, y):
        pts, mask = x
        if step == 110:
            mask = mask.clone()
            mask[5] = False
        return (pts, mask), y

    def watch(step, o, x, y):
        if step >= 108:
            with torch.no_grad():
                pooled_nan[step] = bool(torch.isnan(model.pool(model.phi(x[0]), x[1])).any())

    _train(
        ctx,
        model,
        opt,
        _fields(gen, 32),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("first non-finite loss at step 110", _first_bad(ls) == 110)
    ctx.check("pool output NaN at 110, not at 109", pooled_nan.get(110) and not pooled_nan[109])
    ctx.check("loss fell before", _mean(ls[100:110]) < 0.8 * _mean(ls[:10]))


# -- basket weaving: a Gram-matrix texture net under fp16 autocast meets full-length scans ------


class GramPool(nn.Module):
    """Channel Gram matrix of a feature map (the division by length was left out)."""

    def forward(self, f):
        return (f @ f.transpose(1, 2)).flatten(1)


class WeaveTextureNet(nn.Module):
    """Names the weave (plain, twill, wicker) from a strand-tension scan along a basket (in
    newtons, not standardised)."""

    def __init__(self, channels=8, weaves=3):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, padding=2)
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2)
        self.gram = GramPool()
        self.norm = nn.LayerNorm(channels * channels)
        self.head = nn.Linear(channels * channels, weaves)
        self.gram_max = 0.0

    def forward(self, x):
        f = self.conv2(F.relu(self.conv1(x[:, None])))
        g = self.gram(f)
        self.gram_max = float(g.detach().float().abs().amax())
        return self.head(self.norm(g.float()))


def _scans(gen, batch, length):
    period = torch.tensor([4.0, 6.0, 9.0])
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        t = torch.arange(length, dtype=torch.float32)
        ph = 6 * torch.rand(batch, 1, generator=gen)
        x = 12 * torch.sin(2 * math.pi * t / period[y][:, None] + ph)
        yield x + 3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="basket_weave_texture_gram_conv1d",
    optimizer="SGD momentum",
    cause="amp_overflow",
    where=("gram",),
    diverges=80,
    heldout=True,
    onset=80,
    note="A 1-D conv net with a Gram-matrix pool, trained under fp16 autocast with a "
    "GradScaler. The Gram matrix sums over positions without dividing by the length; on 256-"
    "sample windows it fits fp16, but from step 80 the curriculum switches to full 8192-sample "
    "scans and the fp16 Gram overflows to inf, so the loss is non-finite at step 80.",
)
def h158_basket_weave_gram_fp16(ctx: Context) -> None:
    gen = seeded(15812)
    model = WeaveTextureNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    short, full = _scans(gen, 16, 256), _scans(gen, 16, 8192)

    def batches():
        step = 0
        while True:
            yield next(full if step >= 80 else short)
            step += 1

    grams = []
    _train(
        ctx,
        model,
        opt,
        batches(),
        150,
        F.cross_entropy,
        classifier=True,
        scaler=scaler,
        watch=lambda s, o, x, y: grams.append(model.gram_max),
    )
    ls = ctx.losses
    ctx.check("first non-finite loss at step 80", _first_bad(ls) == 80)
    ctx.check("fp16 Gram overflowed at step 80", math.isinf(grams[80]))
    ctx.check("Gram fit fp16 before", max(grams[:80]) < 65504)
    ctx.check("loss fell before", _mean(ls[70:80]) < 0.8 * _mean(ls[:10]))


# -- controls ------------------------------------------------------------------------------------


class BeatboxBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class BeatboxTransformer(nn.Module):
    """Names the beatbox sound (kick, snare, hi-hat, bass, click, lip roll) from 16 frames of 12
    spectral features."""

    def __init__(self, inputs=12, dim=32, heads=4, sounds=6, frames=16):
        super().__init__()
        self.inp = nn.Linear(inputs, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(frames, dim))
        self.blocks = nn.ModuleList(BeatboxBlock(dim, heads) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, sounds)

    def forward(self, x):
        h = self.inp(x) + self.pos
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln_f(h).mean(1))


def _beatbox(gen, batch, frames=16, inputs=12, sounds=6):
    g = torch.Generator().manual_seed(616)
    proto = torch.randn(sounds, frames, inputs, generator=g)
    while True:
        y = torch.randint(0, sounds, (batch,), generator=gen)
        shift = int(torch.randint(0, 4, (1,), generator=gen))
        x = torch.roll(proto[y], shift, 1) + 1.5 * torch.randn(batch, frames, inputs, generator=gen)
        yield x, y


@scenario(
    family="beatbox_sound_mha_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a two-block transformer through nn.MultiheadAttention, AdamW with weight "
    "decay 0.05 on matrices only (norms, biases and positions in a no-decay group), linear "
    "warm-up then cosine through LambdaLR, clipping at 1.0, label smoothing 0.1.",
)
def h158_beatbox_mha_control(ctx: Context) -> None:
    gen = seeded(15813)
    model = BeatboxTransformer()
    decay = [p for n, p in model.named_parameters() if p.dim() == 2 and n != "pos"]
    rest = [p for n, p in model.named_parameters() if not (p.dim() == 2 and n != "pos")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=2e-3,
    )
    steps, warm = 160, 20

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    _train(
        ctx,
        model,
        opt,
        _beatbox(gen, 48),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


class BeaconSDPAEncoder(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.ln2(x))


class BeaconRangeTransformer(nn.Module):
    """Estimates the distance to a buried avalanche transceiver from 20 readings of signal
    strength and the three antenna angles taken while the searcher walks."""

    def __init__(self, inputs=4, dim=32, heads=2, readings=20):
        super().__init__()
        self.inp = nn.Linear(inputs, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(readings, dim))
        self.enc = BeaconSDPAEncoder(dim, heads)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.enc(self.inp(x) + self.pos)
        return self.head(self.ln_f(h[:, -1])).squeeze(-1)


def _beacon(gen, batch, readings=20):
    while True:
        start = 5 + 30 * torch.rand(batch, 1, generator=gen)
        walk = torch.linspace(0, 1, readings)[None] * 4 * torch.rand(batch, 1, generator=gen)
        dist = (start - walk).clamp(min=1.0)
        strength = 3 - torch.log(dist) + 0.1 * torch.randn(batch, readings, generator=gen)
        ang = torch.randn(batch, readings, 3, generator=gen) * 0.3
        x = torch.cat([strength[..., None], ang], -1)
        yield x, dist[:, -1] / 10


@scenario(
    family="avalanche_beacon_range_sdpa_transformer",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a one-block transformer encoder through scaled_dot_product_attention "
    "regressing the distance (Huber), RAdam at lr 2e-3, clip_grad_value_ at 0.5 and "
    "ReduceLROnPlateau on the training loss.",
)
def h158_avalanche_beacon_sdpa_control(ctx: Context) -> None:
    gen = seeded(15814)
    model = BeaconRangeTransformer()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _beacon(gen, 64),
        200,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        sched=sched,
        clip_value=0.5,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


class FleeceNet(nn.Module):
    """Regresses a fleece's weight from 10 sheep measurements taken at the shearing board."""

    def __init__(self, inputs=10, hidden=48):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _fleeces(gen, batch, inputs=10):
    w = torch.randn(inputs, generator=torch.Generator().manual_seed(1010)) / 2
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        noise = 0.1 + 0.4 * torch.rand(1, generator=gen)
        y = x @ w + 0.5 * torch.sin(x[:, 0] * 2) + noise * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="sheep_shearing_fleece_weight_mlp",
    optimizer="Adadelta",
    cause="healthy",
    heldout=True,
    note="Control: an MLP with LayerNorm, Adadelta at lr 1.0, gradient accumulation over 2 "
    "micro-batches of noisy (batch-varying noise level) readings, MSE.",
)
def h158_sheep_shearing_adadelta_control(ctx: Context) -> None:
    gen = seeded(15815)
    model = FleeceNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    _train(ctx, model, opt, _fleeces(gen, 32), 200, F.mse_loss, accumulate=2)
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))


class MbiraNet(nn.Module):
    """Which of 8 mbira tines sound in a 128-sample envelope frame (multi-label)."""

    def __init__(self, tines=8, channels=32):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 7, padding=3)
        self.conv2 = nn.Conv1d(channels, channels, 5, padding=2, dilation=1)
        self.head = nn.Linear(channels, tines)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _mbira(gen, batch, tines=8, length=128):
    t = torch.arange(length, dtype=torch.float32)
    freqs = torch.linspace(0.05, 0.4, tines)
    waves = torch.sin(2 * math.pi * freqs[:, None] * t[None])
    while True:
        y = (torch.rand(batch, tines, generator=gen) < 0.3).float()
        x = y @ waves + 0.5 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="mbira_tine_fp16_conv1d",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="Control: a 1-D conv net for multi-label tine detection (BCE with logits) under fp16 "
    "autocast with a GradScaler, SGD Nesterov at lr 0.1 with CosineAnnealingLR.",
)
def h158_mbira_fp16_control(ctx: Context) -> None:
    gen = seeded(15816)
    model = MbiraNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _mbira(gen, 32),
        200,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        scaler=scaler,
    )
    ctx.check("loss fell by a quarter and stayed finite", _fell(ctx.losses, ratio=0.75))
