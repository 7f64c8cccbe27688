"""Held-out set 296 (``h296_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a Gaelic-handball rally classifier reading a learned
memory bank by attention with the memory excluded from weight decay and its keys never
normalised (attention logits grow), a tam-tam swell-decay SiLU regressor whose epoch-end flush
multiplies the accumulated loss by the micro-batch count (one gradient spike), a flour-mill
stone-dress ReLU classifier whose warm-up peak was typed 3e-1 (ReLUs die), a saltmaker brine-pan
yield regressor whose hand-written weight decay has its sign flipped (slow climb), a spider-silk
dew-bead IRNN whose identity recurrent init was scaled 1.3 (gradients grow through time), a
musette bellows-leak Poisson net with a ReLU rate and a hand-written log (log 0, NaN), a hot-air
balloon envelope-temperature fp16 MLP fed raw kPa pressures (fp16 overflow), a sabre
parry-kind cosine classifier whose logit scale was exponentiated twice (softmax collapse), a
marimba bar-tuning two-group regressor whose trunk lr was typed 3e-8 (update ratio), a lutherie
tap-tone Huber regressor fed one shard in millimetres (data outlier), and three controls (a
cobweb dew-sag classifier with dropout, evaluation passes and early stopping, a peal-board
fp16 GELU classifier with a GradScaler, OneCycleLR, label smoothing and accumulation, a
spikeball rim-bounce Huber regressor with RMSprop, clipping and ReduceLROnPlateau).

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
    scale_of=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``after(step)`` runs after the
    optimizer step; ``scale_of(step)`` is the factor the summed micro-batch losses are
    multiplied by (1/accumulate unless a bug says otherwise); stops after a non-finite loss.
    Returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        f = scale_of(step) if scale_of is not None else 1.0 / accumulate
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
            total = f * loss
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


def _readings(gen, batch, d_in, seed, noise=0.05, heavy=False):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        e = torch.randn(batch, generator=gen)
        if heavy:  # Student-t with 3 degrees of freedom
            e = e / torch.sqrt((torch.randn(batch, 3, generator=gen) ** 2).mean(1))
        yield x, y + noise * e


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules (and optional dropout)."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU, p_drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.drop1 = nn.Dropout(p_drop)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.drop2 = nn.Dropout(p_drop)
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.drop2(self.act2(self.fc2(self.drop1(self.act1(self.fc1(x))))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- Gaelic handball: a memory bank read by attention, its keys unnormalised and undecayed -------


class MemoryBank(nn.Module):
    """A learned bank of rally patterns (keys and values) read by attention: the rally encoding
    is the query, q.k/sqrt(d) the logits over the slots."""

    def __init__(self, dim, slots, normalize_keys=False):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.keys = nn.Parameter(0.02 * torch.randn(slots, dim))
        self.values = nn.Parameter(0.02 * torch.randn(slots, dim))
        self.normalize_keys = normalize_keys
        self.dim = dim
        nn.init.normal_(self.q.weight, std=0.02)

    def logits(self, h):
        q, k = self.q(h), self.keys
        if self.normalize_keys:
            q, k = F.normalize(q, dim=-1) * 3.0, F.normalize(k, dim=-1) * 3.0
        return q @ k.T / math.sqrt(self.dim)

    def forward(self, h):
        return torch.softmax(self.logits(h), -1) @ self.values


class RallyNet(nn.Module):
    def __init__(self, d_in=12, dim=32, slots=16, classes=8):
        super().__init__()
        self.enc = nn.Linear(d_in, dim)
        self.memory = MemoryBank(dim, slots)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return self.head(torch.cat([h, self.memory(h)], -1))


@scenario(
    family="gaelic_handball_rally_memory_bank_attention_net",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("memory",),
    diverges=None,
    heldout=True,
    note="A hand-written classifier of the next shot in a Gaelic-handball rally (kill, ceiling, pass, butt, ...; 8 kinds) from 12 standardised readings of the rally so far: enc (Linear + tanh), memory = a learned bank of 16 rally-pattern slots (keys, values) read by attention with the encoded rally as the query (q.k/sqrt(d)), head over [rally, read]. AdamW at 1e-2, cross-entropy, 300 steps. The bank was meant to be read with normalised keys (normalize_keys) and to be decayed like every other weight, but the builder's default left normalize_keys False and the param-group code, copied from an embedding recipe, put every `memory.` parameter in the no-decay group, so the bank and its query run unnormalised with weight decay 0 and nothing bounds q.k: the peak attention logit over the slots grows over 20x from its small init and past 5. Finite, no blow-up.",
)
def h296_gaelic_handball_memory_bank(ctx: Context) -> None:
    gen = seeded(29601)
    model = RallyNet()
    mem = list(model.memory.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("memory.")]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.01}, {"params": mem, "weight_decay": 0.0}], lr=1e-2
    )
    probe = next(_kinds(torch.Generator().manual_seed(5), 256, 12, 8, seed=601))[0]
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                h = torch.tanh(model.enc(probe))
                peaks.append(float(model.memory.logits(h).abs().max()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 8, seed=601),
        300,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("the peak attention logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak attention logit passed 5", peaks[-1] > 5.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- tam-tam: the epoch-end flush multiplies the accumulated loss by the micro-batch count -------

ONSET_TAM, ACC_TAM = 70, 8


@scenario(
    family="tam_tam_swell_decay_accum_silu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_TAM,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how long a struck tam-tam's swell takes to decay from 10 standardised readings (mallet weight, strike position, plate diameter and thickness), SGD momentum 0.9 at 5e-3, MSE, gradient accumulation over 8 micro-batches, clipping at 1.0, 160 steps. The epoch ends at step 70 and the flush branch for the last accumulation window was written `loss * accum_steps` where the regular path does `loss / accum_steps`: that one step backpropagates 64x the usual gradient on ordinary data. Clipping bounds the step and the run goes on training.",
)
def h296_tam_tam_accumulation_flush(ctx: Context) -> None:
    gen = seeded(29602)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=602),
        160,
        F.mse_loss,
        accumulate=ACC_TAM,
        clip=1.0,
        scale_of=lambda s: float(ACC_TAM) if s == ONSET_TAM else 1.0 / ACC_TAM,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_TAM - 20 : ONSET_TAM])
    ctx.check("the gradient at the flush step is over 30x the usual", g[ONSET_TAM] > 30 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_TAM + 1 : ONSET_TAM + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on the flush step's batch is ordinary",
        ls[ONSET_TAM] < 2.0 * _mean(ls[ONSET_TAM - 10 : ONSET_TAM]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- flour mill: the warm-up peak typed 3e-1, the ReLUs die ------------------------------------


@scenario(
    family="flour_mill_stone_dress_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    onset=10,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying which dressing pattern a miller's millstone needs (6 kinds) from 16 standardised readings (flour fineness, stone temperature, furrow depth, run speed), NAdam, cross-entropy, 240 steps, a linear warm-up over 20 steps to cfg['peak_lr']. The peak was typed 3e-1 for 3e-3: as the warm-up passes about 0.1, the huge normalised steps push most of fc2's units negative on every input and they never come back (their gradient is exactly 0): over half of fc2 is dead for the rest of the run, from step 60 to the end, and the net trains on with what is left.",
)
def h296_flour_mill_warmup_peak(ctx: Context) -> None:
    gen = seeded(29603)
    model = Stack(16, 64, out=6)
    peak = 3e-1
    opt = torch.optim.NAdam(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    probe = next(_kinds(torch.Generator().manual_seed(9), 512, 16, 6, seed=603))[0]
    dead: list[float] = []

    def after(step):
        with torch.no_grad():
            a = model.act2(model.fc2(model.act1(model.fc1(probe))))
            dead.append(float((a <= 0).all(0).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=603),
        240,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        after=after,
    )
    ls = ctx.losses
    ctx.check("under 10% of fc2's units dead at the start", dead[0] < 0.1)
    ctx.check("over half of fc2's units dead at the end", dead[-1] > 0.5)
    ctx.check(
        "over half of fc2's units dead at every step from 60 on",
        min(dead[60:]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ls))


# -- saltmaker: the hand-written weight decay has its sign flipped ------------------------------


@scenario(
    family="saltmaker_brine_pan_yield_silu_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a saltmaker's evaporating-pan yield from 10 standardised readings (brine strength, fire temperature, air humidity, pan depth), plain SGD at 1e-2, MSE, 300 steps, with decoupled weight decay written by hand after optimizer.step(): `p.mul_(1 + lr * wd)` where `1 - lr * wd` was meant (wd 0.4). Each step inflates every weight by 0.4%, the gradient pulls back only along the directions the data sees: the loss falls for a few dozen steps and then climbs slowly and steadily, well above its best, with nothing else wrong.",
)
def h296_saltmaker_decay_sign(ctx: Context) -> None:
    gen = seeded(29604)
    model = Stack(10, 64, act=nn.SiLU)
    lr, wd = 1e-2, 0.4
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=604), 300, F.mse_loss, after=after)
    ls = ctx.losses
    best = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    ctx.check("the loss ends over 3x its best", _mean(ls[-10:]) > 3 * best)
    ctx.check(
        "the climb is slow: no 10-step mean over 2x the one before",
        all(
            _mean(ls[i + 10 : i + 20]) < 2 * _mean(ls[i : i + 10])
            for i in range(0, len(ls) - 19, 10)
        ),
    )
    ctx.check("finite throughout", _finite(ls))


# -- spider silk: the IRNN's identity recurrent init scaled 1.3 ---------------------------------


class IRNNCell(nn.Module):
    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.rec.bias.zero_()
            self.inp.weight.mul_(0.1)
            self.inp.bias.zero_()

    def forward(self, x, h):
        return F.relu(self.inp(x) + self.rec(h))


class DewBeadIRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=1.0):
        super().__init__()
        self.cell = IRNNCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _dew_frames(gen, batch, steps=20):
    """20 frames of (humidity, temperature drop, wind, thread sag); target: bead count, scaled."""
    while True:
        x = torch.randn(batch, steps, 4, generator=gen)
        y = torch.tanh(x[:, -10:, 0].mean(1) - 0.5 * x[:, -10:, 2].mean(1))
        yield x, y


@scenario(
    family="spider_silk_dew_bead_irnn",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("cell.rec", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written IRNN (cell = ReLU Elman cell with inp and rec Linear layers, rec initialised to the identity as in Le et al. 2015; head on the last state) reading 20 frames of humidity, temperature drop, wind and thread sag to regress how many dew beads form along an orb-weaver's silk thread, Adagrad at 1e-2, MSE, 120 steps. The config's `rec_gain: 1.3` (meant for an orthogonal init elsewhere) was applied to the identity: the recurrent map multiplies the state by 1.3 per frame, so the gradient reaching the first hidden state is over 20x the one at the last state and the total gradient is over 30x a gain-1 model's.",
)
def h296_spider_silk_irnn_gain(ctx: Context) -> None:
    gen = seeded(29605)
    model = DewBeadIRNN(gain=1.3)
    ref = DewBeadIRNN(gain=1.0)
    ref.load_state_dict(
        {k: v for k, v in model.state_dict().items() if "rec.weight" not in k}, strict=False
    )
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    x0, y0 = next(_dew_frames(torch.Generator().manual_seed(3), 64))
    F.mse_loss(model(x0), y0).backward()
    ratio0 = float(model.states[0].grad.norm() / model.states[-1].grad.norm())
    g_bad = grad_norm(model)
    model.zero_grad()
    F.mse_loss(ref(x0), y0).backward()
    g_ref = grad_norm(ref)
    _train(ctx, model, opt, _dew_frames(gen, 64), 120, F.mse_loss)
    ctx.check("the first state's gradient is over 20x the last's", ratio0 > 20)
    ctx.check("the gradient is over 30x a gain-1 model's", g_bad > 30 * g_ref)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- musette bellows: a ReLU rate and a hand-written Poisson log-likelihood ---------------------


class BellowsNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)
        self.rate = nn.ReLU()
        with torch.no_grad():
            self.head.bias.fill_(1.0)

    def forward(self, x):
        return self.rate(self.head(self.act1(self.fc1(x)))).squeeze(-1)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


def _leaks(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        lam = torch.exp(0.8 * x @ w / math.sqrt(8) - 0.5)
        yield x, torch.poisson(lam, generator=gen)


@scenario(
    family="musette_bellows_leak_poisson_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("rate", "head"),
    diverges=58,
    heldout=True,
    note="A tanh net (fc1, act1, head, rate = ReLU) predicting how many air leaks a musette's bellows shows per test from 8 standardised readings (leather age, fold count, humidity, pressure), Adam at 1e-3, the Poisson NLL written by hand as rate - y*log(rate), 200 steps. The rate goes through a ReLU instead of softplus/exp and the loss has no clamp: rows with zero leaks push their rate down until the ReLU outputs exactly 0, log(0) = -inf, y*log(0) gives 0*(-inf) = NaN (or +inf for y > 0) and the loss is NaN from that step.",
)
def h296_musette_relu_rate_log(ctx: Context) -> None:
    gen = seeded(29606)
    model = BellowsNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    zeros: list[int] = []

    def watch(step, out, x, y):
        zeros.append(int((out == 0).sum()))

    _train(ctx, model, opt, _leaks(gen, 64, seed=606), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went NaN/inf", bad is not None)
    ctx.check("a rate was exactly 0 on that step", bad is not None and zeros[bad] > 0)
    ctx.check(
        "the loss was finite before it",
        bad is not None and _finite(ctx.losses[:bad]) and bad >= 1,
    )


# -- hot-air balloon: raw kPa envelope pressures under fp16 autocast ---------------------------


def _envelope(gen, batch, seed, raw=True):
    """8 readings: two pressures (kPa, ~101), six standardised; target: envelope temperature."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(z @ w / math.sqrt(8))
        x = z.clone()
        x[:, :2] = 101.3 + 2.0 * z[:, :2]
        if not raw:
            x[:, :2] = (x[:, :2] - 101.3) / 2.0
        yield x, y


@scenario(
    family="hot_air_ballooning_envelope_fp16_mlp",
    optimizer="SGD Nesterov",
    cause="amp_overflow",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a hot-air balloon's envelope temperature from 8 readings (ambient and envelope pressure, burner duty, altitude rate, load, ...), fp16 autocast with a torch.amp.GradScaler (init scale 65536), SGD Nesterov momentum 0.9 at 1e-3, MSE, clipping at 1.0 after unscale_, 150 steps. The flight logger's new firmware reports the two pressures raw in kPa (~101) where the pipeline expects them standardised, and nobody re-ran the normaliser: under the 65536 loss scale, fc1's weight gradient (a 100x input times the scaled upstream gradient) overflows fp16, the scaler skips the step and halves its scale again and again, over 100x down, before the scaled gradients fit; the run then trains at a scale of about 128.",
)
def h296_balloon_raw_kpa_fp16(ctx: Context) -> None:
    gen = seeded(29607)
    model = Stack(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    _train(
        ctx,
        model,
        opt,
        _envelope(gen, 64, seed=607),
        150,
        F.mse_loss,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    sc = ctx.scales
    skipped = sum(1 for a, b in zip([65536.0] + sc[:-1], sc, strict=False) if b < a)
    ctx.check("the loss scale fell over 100x", min(sc) < 65536.0 / 100)
    ctx.check("over 5 steps skipped for inf/NaN gradients", skipped > 5)
    ctx.check(
        "the gradient overflowed: non-finite unscaled norms",
        any(not math.isfinite(v) for v in ctx.grad_norms),
    )


# -- sabre: the cosine head's logit scale exponentiated twice ----------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, log_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)), requires_grad=False)

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos


class ParryNet(nn.Module):
    def __init__(self, d_in=14, hidden=48, classes=8, log_scale=2.659):  # log(1 / 0.07)
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, log_scale)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="sabre_parry_kind_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU net (fc1, act1, fc2, head = cosine classifier with a fixed logit scale stored as its log, CLIP-style) classifying which parry a sabre fencer makes (prime to octave, 8 kinds) from 14 standardised blade-and-wrist readings, Adamax at 2e-3, cross-entropy, 200 steps. The config already held the scale 1/0.07 = 14.3, and the builder passed it as log_scale, so the head multiplies the cosines by exp(14.3), about 1.6 million: as soon as the features separate, the float32 softmax of most rows gives the target exactly 1.0 (and the rest exactly 0), the loss of those rows is exactly 0 and only the misclassified ones, with enormous losses, still move the net.",
)
def h296_sabre_parry_double_exp(ctx: Context) -> None:
    gen = seeded(29608)
    model = ParryNet(log_scale=1 / 0.07)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fracs: list[float] = []

    def watch(step, out, x, y):
        fracs.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 8, seed=608),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over a third of rows' softmax exactly 1.0 at the end", _mean(fracs[-20:]) > 0.33)
    ctx.check("the head's scale is over a million", float(model.head.log_scale.exp()) > 1e6)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- marimba: the trunk lr typed 3e-8 ------------------------------------------------------------


@scenario(
    family="marimba_bar_tuning_two_group_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how much wood a marimba maker must take from a rosewood bar's arch to reach pitch, from 12 standardised readings (bar length, thickness, density, measured fundamental and overtones), RAdam, MSE, 200 steps, two param groups: the trunk (fc1) and the rest. The trunk's lr was typed 3e-8 for 3e-3 in the sweep config: fc1's updates are about 1e-8 of its weights, it effectively never moves, while fc2 and the head train at 3e-3 and the loss falls as far as they can take it.",
)
def h296_marimba_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(29609)
    model = Stack(12, 64, act=nn.Tanh)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.RAdam(
        [{"params": model.fc1.parameters(), "lr": 3e-8}, {"params": rest, "lr": 3e-3}]
    )
    fc1_0, fc2_0 = _flat(model.fc1), _flat(model.fc2)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=609), 200, F.mse_loss)
    moved1 = float((_flat(model.fc1) - fc1_0).norm()) / float(fc1_0.norm())
    moved2 = float((_flat(model.fc2) - fc2_0).norm()) / float(fc2_0.norm())
    ctx.check("fc1 moved under 1e-4 of its norm", moved1 < 1e-4)
    ctx.check("fc2 moved over 1% of its norm", moved2 > 0.01)
    ctx.check("the loss still fell", _fell(ctx.losses))


# -- lutherie: one shard's plate thickness in millimetres ---------------------------------------

ONSET_LUTH = 90


@scenario(
    family="lutherie_top_plate_tap_tone_huber_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LUTH,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a guitar top plate's tap-tone frequency (standardised) from 10 readings (plate thickness in metres, spruce density, stiffness along and across the grain, brace height), ASGD at 1e-2, Huber loss (delta 1), clipping at 1.0, 200 steps. One luthier's shard, read at step 90, recorded thickness and brace height in millimetres: the batch's two columns are 1000x too large. The loss and the gradient jump on that one batch, clipping bounds the step, and the run recovers.",
)
def h296_lutherie_millimetre_shard(ctx: Context) -> None:
    gen = seeded(29610)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)

    def alter(step, x, y):
        if step == ONSET_LUTH:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0
            x[:, 4] = x[:, 4] * 1000.0
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=610),
        200,
        nn.HuberLoss(delta=1.0),
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_LUTH - 20 : ONSET_LUTH])
    ctx.check("the loss on the bad batch is over 50x the usual", ls[ONSET_LUTH] > 50 * pre)
    ctx.check(
        "the gradient on the bad batch is over 20x the usual",
        g[ONSET_LUTH] > 20 * _median(g[ONSET_LUTH - 20 : ONSET_LUTH]),
    )
    ctx.check("the run recovered", _mean(ls[-20:]) < 2.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- controls -----------------------------------------------------------------------------------


@scenario(
    family="cobweb_dew_sag_dropout_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP with dropout 0.2 (fc1, act1, drop1, fc2, act2, drop2, head) classifying how far a dew-laden cobweb sags (5 bands) from 12 standardised readings (dew point, thread count, span, wind), Adam at 2e-3, cross-entropy. Every 20 steps an evaluation pass (model.eval(), no_grad) on a fixed validation set; early stopping with patience 4 evaluations keeps the best validation loss, up to 300 steps.",
)
def h296_cobweb_dew_early_stopping(ctx: Context) -> None:
    gen = seeded(29611)
    model = Stack(12, 64, out=5, p_drop=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    xv, yv = next(_kinds(torch.Generator().manual_seed(11), 512, 12, 5, seed=611, noise=0.5))
    batches = _kinds(gen, 64, 12, 5, seed=611, noise=0.5)
    ctx.attach(model, opt)
    vals: list[float] = []
    best, waited = float("inf"), 0
    for step in range(300):
        model.train()
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 20 == 19:
            model.eval()
            with torch.no_grad():
                v = float(F.cross_entropy(model(xv), yv))
            vals.append(v)
            if v < best - 1e-3:
                best, waited = v, 0
            else:
                waited += 1
                if waited >= 4:
                    break
    ctx.check("trained at least 60 steps", len(ctx.losses) >= 60)
    ctx.check("the training loss fell", _fell(ctx.losses))
    ctx.check("the validation loss fell below half its first value", best < 0.5 * vals[0])


@scenario(
    family="peal_board_ringing_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying which change-ringing method a band rang (6 kinds) from 16 standardised striking readings, fp16 autocast with a torch.amp.GradScaler, AdamW in two param groups (weights with decay 0.05, biases without), OneCycleLR to 3e-3, label smoothing 0.1, accumulation over 2 micro-batches, clipping at 1.0 after unscale_, 200 steps.",
)
def h296_peal_board_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(29612)
    model = Stack(16, 64, out=6, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 16, 6, seed=612, noise=0.5),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the loss scale stayed above 1000", min(ctx.scales) > 1000)


@scenario(
    family="spikeball_rim_bounce_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tanh MLP (fc1, act1, fc2, act2, head) regressing how high a roundnet ball bounces off the rim from 10 standardised readings (strike speed, angle, net tension, spin), noisy targets (Student-t noise), RMSprop at 1e-3, Huber loss, clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 15), 250 steps.",
)
def h296_spikeball_rim_plateau(ctx: Context) -> None:
    gen = seeded(29613)
    model = Stack(10, 64, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=613, noise=0.2, heavy=True),
        250,
        nn.HuberLoss(),
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
