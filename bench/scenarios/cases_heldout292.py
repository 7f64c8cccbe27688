"""Held-out set 292 (``h292_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a spinet jack-voicing pre-norm transformer (final norm)
whose weight-decay filter also exempted the attention weights, a fusee-chain mainspring torque
GELU regressor whose loss is divided by a shard header's row count clamped at 1e-4 (Adam's
second moment poisoned), a sulky harness-race quarter-split fp16 MLP fed raw sensor units, a
marl-pit lime-content SiLU regressor whose hand-written weight decay has its sign flipped, a
lariat loop-reach Gaussian-NLL regressor whose sigma lost its softplus (log of a negative), a
tourbillon carriage rate-drift ReLU RNN whose identity recurrent init was rescaled by a gain, an
ooid shoal cortex-growth regressor fed one batch in micrometres, a chuckwagon barrel-turn MLP
whose stem lr exponent was mistyped, a gnomon shadow-hour cosine classifier scaled twice, a
horsehair bow-hank grip regressor whose ragged one-row batch is rescaled 64x, and three controls
(a sandbank-migration bf16 pre-norm transformer with clipping, a hame-strap wear fp16 classifier
with a GradScaler, and a drawknife shaving-horse tied-weight autoencoder).

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
    text_batches,
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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=None,
    accumulate=1,
    weight=None,
):
    """The file's loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a batch,
    ``after(step)`` runs after the optimizer step, ``weight(step)`` multiplies the
    backpropagated loss (the logged loss is unweighted); ``amp``: an autocast dtype or None;
    stops after logging a non-finite loss."""
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
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
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


# -- a hand-written pre-norm transformer with a final norm ----------------------------------------


class SelfAttention(nn.Module):
    def __init__(self, dim, heads, causal=False):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def _split(self, z):
        b, t, d = z.shape
        return z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)

    def logits(self, x):
        q, k = self._split(self.q(x)), self._split(self.k(x))
        return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])

    def forward(self, x):
        b, t, d = x.shape
        a = self.logits(x)
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool).triu(1)
            a = a.masked_fill(mask, float("-inf"))
        y = torch.softmax(a.float(), -1).to(x.dtype) @ self._split(self.v(x))
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class PreNormBlock(nn.Module):
    def __init__(self, dim, heads, causal=False):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, causal)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class PreNormTransformer(nn.Module):
    """Token and position embeddings, pre-norm blocks, a final LayerNorm (ln_f), a head."""

    def __init__(self, vocab, classes, dim=32, heads=2, layers=2, context=32, causal=False):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(PreNormBlock(dim, heads, causal) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def hidden(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx):
        return self.head(self.hidden(idx))


def _peak_logit(model, idx):
    with torch.no_grad():
        x = model.tok(idx) + model.pos(torch.arange(idx.shape[1]))
        peak = 0.0
        for block in model.blocks:
            peak = max(peak, float(block.attn.logits(block.ln1(x)).abs().max()))
            x = block(x)
    return peak


# -- spinet: the weight-decay filter exempted the attention weights too --------------------------

JACKS, SPINET_LEN = 16, 12


def _jack_rows(gen, batch):
    """A row of 11 jack readings (plectrum kinds 0..15) after a pointer token (16 + position):
    the voicing to set is the plectrum kind at the pointed position."""
    while True:
        kinds = torch.randint(0, JACKS, (batch, SPINET_LEN - 1), generator=gen)
        pos = torch.randint(0, SPINET_LEN - 1, (batch,), generator=gen)
        y = kinds[torch.arange(batch), pos]
        yield torch.cat([(JACKS + pos)[:, None], kinds], 1), y


@scenario(
    family="spinet_jack_plectrum_voicing_prenorm_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written pre-norm transformer (tok, pos, blocks.0-1 each ln1, attn, ln2, fc, out; a final LayerNorm ln_f; head) reading a spinet's row of 11 jack readings after a pointer token and naming the plectrum voicing at the pointed jack, cross-entropy, AdamW at 3e-3, 400 steps. The recipe meant weight decay 0.1 on every matrix and none on norms and biases, but the no-decay filter was written `'ln' in n or 'bias' in n or 'attn' in n` (the attention was to be exempted only in an ablation), so the q and k projections get no decay and, with no QK-norm, nothing bounds them: as the model learns to point at one jack, the peak attention logit q.k/sqrt(d) grows over 10x and past 10. Finite, no blow-up.",
)
def h292_spinet_attention_no_decay(ctx: Context) -> None:
    gen = seeded(29201)
    model = PreNormTransformer(JACKS + SPINET_LEN, JACKS, context=SPINET_LEN)
    no_decay = [p for n, p in model.named_parameters() if "ln" in n or "bias" in n or "attn" in n]
    decay = [
        p for n, p in model.named_parameters() if not ("ln" in n or "bias" in n or "attn" in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    probe = next(_jack_rows(torch.Generator().manual_seed(7), 256))[0]
    peaks = [_peak_logit(model, probe)]

    def after(step):
        if step % 20 == 19:
            peaks.append(_peak_logit(model, probe))

    _train(
        ctx,
        model,
        opt,
        _jack_rows(gen, 64),
        400,
        lambda out, y: F.cross_entropy(out[:, 0], y),
        classifier=True,
        after=after,
    )
    ctx.check("the peak attention logit grew over 10x", peaks[-1] > 10 * peaks[0])
    ctx.check("the peak attention logit passed 10", peaks[-1] > 10.0)
    ctx.check("the loss fell (the model learned to point)", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- fusee chain: the loss is divided by a shard header's row count, clamped at 1e-4 -------------

ONSET_FUSEE = 50


@scenario(
    family="fusee_chain_mainspring_torque_gelu_regressor",
    optimizer="NAdam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_FUSEE,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the torque a clock's fusee chain delivers from 10 standardised readings (mainspring wind, chain wear, cone turn, temperature), NAdam at 2e-3, MSE summed over the batch and divided by the row count read from each shard's header. One shard's header has its count field written as 0 and the loader guards it with clamp(min=1e-4): the batch at step 50 is divided by 1e-4 instead of 64, its gradient is 640,000x the usual. NAdam bounds that one step, but the gradient fills the second moment, which decays only as 0.999^t: for the rest of the run every update is over 10x smaller than before and the loss, still falling before step 50, stalls.",
)
def h292_fusee_header_count(ctx: Context) -> None:
    gen = seeded(29202)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
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
        _readings(gen, 64, 10, seed=2902),
        220,
        F.mse_loss,
        weight=lambda s: 64 / 1e-4 if s == ONSET_FUSEE else 1.0,
        after=after,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_FUSEE - 20 : ONSET_FUSEE])
    ctx.check("the gradient at step 50 is over 10,000x the usual", g[ONSET_FUSEE] > 1e4 * base)
    ctx.check(
        "updates after step 50 are over 10x smaller than before",
        _median(moves[ONSET_FUSEE + 10 : ONSET_FUSEE + 110])
        < 0.1 * _median(moves[ONSET_FUSEE - 20 : ONSET_FUSEE]),
    )
    ctx.check(
        "the loss fell before step 50 and stalls after it",
        _mean(ls[ONSET_FUSEE - 10 : ONSET_FUSEE]) < 0.8 * _mean(ls[:10])
        and _mean(ls[-20:]) > 0.8 * _mean(ls[ONSET_FUSEE + 1 : ONSET_FUSEE + 21]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- sulky: fp16 autocast on raw wheel-sensor units --------------------------------------------


def _sulky_laps(gen, batch):
    """Raw readings of a harness-race sulky: wheel pulses per furlong (~3000), hoof strike
    interval in microseconds (~4000), the rest standardised; target the quarter split (scaled)."""
    g = torch.Generator().manual_seed(2903)
    w = torch.randn(8, generator=g)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        raw = z.clone()
        raw[:, 0] = 3000 + 300 * z[:, 0]
        raw[:, 1] = 4000 + 400 * z[:, 1]
        yield raw, torch.tanh(z @ w / math.sqrt(8))


@scenario(
    family="sulky_harness_race_quarter_split_fp16_mlp",
    optimizer="SGD momentum",
    cause="amp_overflow",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting a harness-race trotter's quarter split from 8 sulky readings, trained under fp16 autocast with a torch.amp.GradScaler (initial scale 65536), SGD momentum 0.9 at 1e-3, MSE, clipping at 1.0 after unscale. The feature pipeline's standardisation step was skipped for the two sensor channels (wheel pulses per furlong near 3000 and hoof-strike interval in microseconds near 4000), so fc1's fp16 weight gradient (scaled output gradient times inputs in the thousands) overflows: step after step the scaler finds inf gradients, skips the step and halves the scale, which falls over 1000x before a step goes through.",
)
def h292_sulky_raw_sensor_fp16(ctx: Context) -> None:
    gen = seeded(29203)
    model = Stack(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    _train(
        ctx,
        model,
        opt,
        _sulky_laps(gen, 64),
        120,
        F.mse_loss,
        scaler=scaler,
        amp=torch.float16,
        clip=1.0,
    )
    skipped = sum(not math.isfinite(v) for v in ctx.grad_norms)
    ctx.check("the loss scale fell over 1000x", min(ctx.scales) < 65536.0 / 1000)
    ctx.check("at least 10 steps had inf gradients and were skipped", skipped >= 10)
    ctx.check("the loss itself stayed finite", _finite(ctx.losses))


# -- marl pit: the hand-written weight decay has its sign flipped ------------------------------


@scenario(
    family="marl_pit_lime_content_silu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the lime content of marl dug from a pit from 10 standardised readings (colour, fizz test, depth, clay fraction), plain SGD at 0.05, MSE. Weight decay is applied by hand after opt.step() as `p.mul_(1 + lr * wd)` (wd 0.08) where it should be `1 - lr * wd`: every step every weight matrix grows by 0.4%. The loss falls at first, then climbs slowly and steadily for the rest of the run while the weight norm keeps growing; no single step, batch or layer stands out.",
)
def h292_marl_decay_sign(ctx: Context) -> None:
    gen = seeded(29204)
    model = Stack(10, 64, act=nn.SiLU)
    lr, wd = 0.05, 0.08
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w0 = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1 + lr * wd)

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=2904), 300, F.mse_loss, after=after)
    ls = ctx.losses
    runs = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10)]
    low = min(range(len(runs)), key=runs.__getitem__)
    ctx.check("the loss fell first", runs[low] < 0.8 * runs[0])
    ctx.check("then climbed over 2x from its low", _mean(ls[-20:]) > 2 * runs[low])
    ctx.check(
        "the climb is steady (over the last 100 steps each 20-step window above the last)",
        all(b > a for a, b in zip(runs[-10::2], runs[-8::2], strict=False)),
    )
    ctx.check("the weight norm grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("finite throughout", _finite(ls))


# -- lariat: sigma lost its softplus, log of a negative ------------------------------------------


class Log(nn.Module):
    def forward(self, x):
        return torch.log(x)


class LariatNet(nn.Module):
    """A trunk and two heads: the mean loop reach and its spread sigma (as log_sigma)."""

    def __init__(self, d_in=8, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.mu_head = nn.Linear(hidden, 1)
        self.sigma_head = nn.Linear(hidden, 1)
        self.log_sigma = Log()
        nn.init.constant_(self.sigma_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        sigma = self.sigma_head(h)  # the softplus that kept it positive was dropped
        return torch.cat([self.mu_head(h), self.log_sigma(sigma), sigma], -1)


def _gauss_nll(out, y):
    mu, log_sigma, sigma = out[:, 0], out[:, 1], out[:, 2]
    return (log_sigma + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="lariat_loop_throw_reach_gaussian_nll_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_sigma", "sigma_head"),
    diverges=35,
    heldout=True,
    note="A ReLU trunk (fc1, act1, fc2, act2) with two heads, mu_head for how far a roper's lariat loop reaches and sigma_head for its spread, trained by the Gaussian negative log-likelihood log(sigma) + (y - mu)^2 / (2 sigma^2), RAdam at 1e-2, on 8 standardised readings (loop size, spoke length, swing speed, wind). The head was meant to output softplus(sigma_head(h)); a refactor moved the softplus into a helper that the new forward never calls, so sigma is the raw linear output (its bias starts at 1.0 so it starts positive) and log_sigma takes its log. The targets are precise, the likelihood pushes sigma down, and at step 35 one row's sigma crosses zero: log of a negative is NaN, the loss is NaN from that step.",
)
def h292_lariat_sigma_no_softplus(ctx: Context) -> None:
    gen = seeded(29205)
    model = LariatNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sig_min: list[float] = []

    def alter(step, x, y):
        with torch.no_grad():
            sig_min.append(float(model(x)[:, 2].min()))
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 8, seed=2905, noise=0.01), 300, _gauss_nll, alter=alter
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went NaN", bad is not None)
    ctx.check("finite before that", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check(
        "some row's sigma was <= 0 on the NaN step and none before",
        bad is not None and sig_min[bad] <= 0 and min(sig_min[:bad]) > 0,
    )


# -- tourbillon: the identity recurrent init was rescaled by the project's gain loop -------------


class ReluCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden)

    def forward(self, x, h):
        return F.relu(self.inp(x) + self.hh(h))


class TourbillonRNN(nn.Module):
    """An IRNN reading a watch's hourly rate log (4 readings an hour over 24 hours), regressing
    the rate drift of the tourbillon carriage over the next day."""

    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.hidden_size = hidden
        self.cell = ReluCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.eye_(self.cell.hh.weight)
        nn.init.zeros_(self.cell.hh.bias)
        nn.init.normal_(self.head.weight, std=0.01)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _rate_logs(gen, batch, steps=16):
    g = torch.Generator().manual_seed(2906)
    w = torch.randn(4, generator=g)
    while True:
        x = 0.3 * torch.randn(batch, steps, 4, generator=gen)
        y = torch.tanh((x.mean(1) @ w) * 2.0)
        yield x, y


@scenario(
    family="tourbillon_carriage_rate_drift_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.hh", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written IRNN (cell.inp, cell.hh with h = relu(inp(x_t) + hh(h)), head) reading a watch's rate log (16 readings of 4 channels: rate, amplitude, position, temperature) and regressing the tourbillon carriage's rate drift over the next day, plain SGD at 1e-3, MSE, clipping at 1.0. The recurrent weight is initialised to the identity as the IRNN recipe says, but the project's generic post-init loop then multiplies every Linear weight by calculate_gain('relu') = sqrt(2), the recurrent one included: the recurrence amplifies by about 1.41 per reading, and the gradient grows back through time, the state at the first reading getting over 20x the gradient of the last. The raw gradient norm stays over 100x the clip threshold for the whole run; clipping keeps the loss finite and it falls slowly from a bad start.",
)
def h292_tourbillon_irnn_gain(ctx: Context) -> None:
    gen = seeded(29206)
    model = TourbillonRNN()
    with torch.no_grad():  # the project's post-init loop: every Linear weight times the ReLU gain
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(nn.init.calculate_gain("relu"))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    through: list[float] = []

    def after(step):
        if step == 0:
            s = model.states
            if s[0].grad is not None and s[-1].grad is not None:
                through.append(float(s[0].grad.norm() / s[-1].grad.norm().clamp(min=1e-30)))

    _train(ctx, model, opt, _rate_logs(gen, 32), 150, F.mse_loss, after=after, clip=1.0)
    ctx.check(
        "the gradient at the first reading's state is over 20x the last's",
        bool(through) and through[0] > 20,
    )
    g = ctx.grad_norms
    ctx.check("the raw gradient norm stays over 100 (100x the clip) all run", min(g) > 100)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- ooid shoal: one batch from a scanner exporting micrometres ---------------------------------

ONSET_OOID = 120


@scenario(
    family="ooid_shoal_cortex_growth_relu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_OOID,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how fast the cortex of ooids grows on a carbonate shoal from 10 standardised readings (grain size in mm, water agitation, temperature, aragonite saturation), ASGD at 1e-2, MSE, clipping at 1.0. One thin-section scanner exported grain size in micrometres rather than millimetres and its file went in unconverted: the batch at step 120 carries five rows with a grain size about 1000x too large. The loss and gradient jump by orders of magnitude on that one batch, clipping bounds the step and the run recovers.",
)
def h292_ooid_micrometre_batch(ctx: Context) -> None:
    gen = seeded(29207)
    model = Stack(10, 64)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)

    def alter(step, x, y):
        if step == ONSET_OOID:
            x = x.clone()
            x[:5, 0] = 1000.0 * (x[:5, 0].abs() + 1.0)
        return x, y

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=2907), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_OOID - 20 : ONSET_OOID])
    ctx.check("the loss on the bad batch is over 1000x the usual", ls[ONSET_OOID] > 1000 * pre)
    ctx.check(
        "the gradient on the bad batch is over 100x the usual",
        g[ONSET_OOID] > 100 * _median(g[ONSET_OOID - 20 : ONSET_OOID]),
    )
    ctx.check("the run recovered", _mean(ls[-20:]) < 2.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- chuckwagon: the stem group's lr exponent was mistyped -------------------------------------


@scenario(
    family="chuckwagon_barrel_turn_time_param_group_mlp",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a chuckwagon team's figure-eight barrel-turn time from 12 standardised readings (outrider positions, wagon load, track softness, horse heart rates), Adagrad with two param groups: the stem (fc1) was to run at 5e-2 like the rest but its lr was typed `5e-7`. fc1 trains at a rate 100,000x too small: its update ratio |dW|/|W| stays below 1e-6 a step while fc2 and the head move by percents, and the loss falls as far as the upper layers can take it.",
)
def h292_chuckwagon_stem_lr_typo(ctx: Context) -> None:
    gen = seeded(29208)
    model = Stack(12, 64)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": 5e-7}, {"params": rest, "lr": 5e-2}]
    )
    fc1_0, fc2_0 = _flat(model.fc1), _flat(model.fc2)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=2908), 200, F.mse_loss)
    moved1 = float((_flat(model.fc1) - fc1_0).norm()) / float(fc1_0.norm())
    moved2 = float((_flat(model.fc2) - fc2_0).norm()) / float(fc2_0.norm())
    ctx.check("fc1 moved under 1e-4 of its norm over the whole run", moved1 < 1e-4)
    ctx.check("fc2 moved over 5% of its norm", moved2 > 0.05)
    ctx.check("the loss still fell", _fell(ctx.losses))


# -- gnomon: the cosine classifier's scale applied twice -----------------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class GnomonNet(nn.Module):
    def __init__(self, d_in=10, hidden=64, classes=12, scale=16.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="gnomon_shadow_hour_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2) with a cosine head (head: scale s times the cosine between the feature and each class weight) naming the hour (12 classes) from 10 readings of a garden sundial's gnomon shadow (length, angle, edge sharpness, season), Adamax at 2e-3. The head already multiplies by s = 16, and the loss wrapper copied from a CosFace recipe multiplies the logits by s again, so the softmax sees 256 x cosine: a cosine gap of 0.07 already makes exp(-17) vanish in float32, and as the features separate over half of the rows' softmax rounds the target class to exactly 1.0. Finite, no blow-up.",
)
def h292_gnomon_scale_twice(ctx: Context) -> None:
    gen = seeded(29209)
    model = GnomonNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    s = model.head.scale
    probe_x, probe_y = next(_kinds(torch.Generator().manual_seed(7), 512, 10, 12, seed=2909))
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 12, seed=2909),
        200,
        lambda out, y: F.cross_entropy(s * out, y),
        classifier=True,
    )
    with torch.no_grad():
        collapsed = collapsed_fraction(s * model(probe_x), probe_y)
        intended = collapsed_fraction(model(probe_x), probe_y)
    ctx.check("over half of the rows' softmax is exactly 1.0", collapsed > 0.5)
    ctx.check("with the scale applied once none would be", intended == 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- horsehair: a ragged one-row batch rescaled by batch / rows ----------------------------------

ONSET_HAIR = 90


@scenario(
    family="horsehair_bow_hank_rosin_grip_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HAIR,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how well a violin bow's horsehair hank grips the string after rosining from 10 standardised readings (hair count, rosin layers, humidity, hank tension), SGD Nesterov momentum 0.9 at 1e-2, MSE, clipping at 5.0. At the end of each epoch the loader yields the ragged remainder, and the loop rescales its loss by batch_size / len(batch) to 'keep the loss on the same scale'; at step 90 the remainder holds one row, so that one step backpropagates 64x a single row's loss: the gradient spikes over 30x the usual on an ordinary sample. The logged loss is the plain one and clipping bounds the step.",
)
def h292_horsehair_ragged_batch_rescale(ctx: Context) -> None:
    gen = seeded(29210)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        return (x[:1], y[:1]) if step == ONSET_HAIR else (x, y)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=2910),
        200,
        F.mse_loss,
        alter=alter,
        weight=lambda s: 64.0 if s == ONSET_HAIR else 1.0,
        clip=5.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at step 90 is over 30x the usual",
        g[ONSET_HAIR] > 30 * _median(g[ONSET_HAIR - 20 : ONSET_HAIR]),
    )
    ctx.check(
        "the logged loss at step 90 is not itself an outlier (under 10x the usual)",
        ls[ONSET_HAIR] < 10 * _mean(ls[ONSET_HAIR - 20 : ONSET_HAIR]),
    )
    ctx.check("the loss fell over the run", _fell(ls))
    ctx.check("finite throughout", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="sandbank_migration_tide_log_bf16_prenorm_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Healthy control: the file's hand-written pre-norm transformer (tok, pos, blocks.0-1, final LayerNorm ln_f, head), causal, as a next-symbol model over a byte-coded sandbank survey log (the standard library's text stands in for it), under bf16 autocast, AdamW at 3e-3 (weight decay 0.1 on matrices only), 20 warm-up steps then cosine decay, gradient clipping at 1.0, cross-entropy, 200 steps.",
)
def h292_sandbank_bf16_control(ctx: Context) -> None:
    gen = seeded(29211)
    model = PreNormTransformer(128, 128, context=32, causal=True)
    decay = [p for p in model.parameters() if p.dim() > 1]
    rest = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )
    dtypes: list[torch.dtype] = []

    def alter(step, x, y):
        if step == 0:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                dtypes.append(model(x[:1]).dtype)
        return x, y

    _train(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, 128),
        steps,
        lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
        alter=alter,
        amp=torch.bfloat16,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the forward ran in bf16", dtypes == [torch.bfloat16])
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="hame_strap_wear_grade_fp16_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) grading the wear of a draught horse's hame strap (5 grades) from 16 standardised readings (leather thickness, crack count, stitch gaps, buckle play), fp16 autocast with a torch.amp.GradScaler, SGD momentum 0.9 with OneCycleLR (max lr 0.1), label smoothing 0.1, gradient accumulation over 2 micro-batches, 150 steps.",
)
def h292_hame_fp16_control(ctx: Context) -> None:
    gen = seeded(29212)
    model = Stack(16, 64, out=5, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 16, 5, seed=2912),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


class TiedAutoencoder(nn.Module):
    """enc -> act -> code; the decoder reuses enc.weight transposed (tied), plus its own bias."""

    def __init__(self, d_in=12, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.T, self.dec_bias)


def _shavings(gen, batch):
    """12 readings of a drawknife stroke on a shaving horse, driven by 4 hidden factors, noisy."""
    g = torch.Generator().manual_seed(2913)
    mix = torch.randn(4, 12, generator=g) / 2
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = torch.tanh(z) @ mix + 0.05 * torch.randn(batch, 12, generator=gen)
        yield x, x


@scenario(
    family="drawknife_shaving_horse_stroke_tied_autoencoder",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Healthy control: a tied-weight autoencoder (enc with a tanh code of 6; the decoder is enc.weight transposed plus dec_bias) compressing 12 readings of a drawknife stroke on a shaving horse (blade angle, pull force, shaving thickness, grain run-out), RMSprop at 3e-3, Huber loss, ReduceLROnPlateau (patience 10, factor 0.5), clipping at 1.0, 250 steps.",
)
def h292_drawknife_tied_control(ctx: Context) -> None:
    gen = seeded(29213)
    model = TiedAutoencoder()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    _train(
        ctx,
        model,
        opt,
        _shavings(gen, 64),
        250,
        F.huber_loss,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
