"""Held-out set 279 (``h279_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a gatka stick-parry transformer whose query tokens cross-attend to
a memory of the opponent's strikes, with the attention scale multiplied where it should divide;
an inkle-loom warp-tension ReLU regressor whose Nesterov lr was typed 0.4 for 0.004; a drover's
day-distance regressor fed one station's shard logged in metres; a lagori stack-rebuild BCE
classifier whose resume restores an fp16 loss scale of 1024 into an fp32 run for one step; an
elve-flash detector whose hand-written photometer standardisation lost its eps and meets a
saturated channel; a brazier radiant-heat net taking a Stefan-Boltzmann fourth power in fp16
under autocast; a shingle-riving split-thickness tanh regressor whose warm-up lambda lost its
min(1, .); a kalaripayattu form-score 12-layer tanh MLP initialised with std 1.0 for
1/sqrt(fan_in); a tablet-weaving pattern classifier whose staged unfreeze raises the wrong param
group; a gundog retrieve-grade classifier whose temperature was typed 0.01 for 1.0; and three
controls (a pysanka dye-uptake Gaussian-NLL net under fp16 autocast with a GradScaler and
gradient accumulation, a cutting-horse cow-work Huber regressor with RMSprop and
ReduceLROnPlateau, a damascene inlay tied-weight autoencoder with warm-up and cosine decay).

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
    dead_fraction,
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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    alter=None,
    scale_loss=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step, ``scale_loss(step)`` multiplies the backpropagated loss; ``amp``: fp16
    autocast; stops after logging a non-finite loss."""
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
            total = loss / accumulate
            if scale_loss is not None:
                total = total * scale_loss(step)
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


# -- gatka: the cross-attention scale multiplies where it should divide ---------------------------


class StrikeCrossAttention(nn.Module):
    """Query tokens attend to a memory of encoded strikes (multi-head, q from the queries, k and v
    from the memory)."""

    def __init__(self, dim, heads, scale_bug):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim)
        # meant: self.head_dim ** -0.5; the minus sign was lost when the line was re-typed
        self.scale = self.head_dim**0.5 if scale_bug else self.head_dim**-0.5

    def split(self, z):
        b, t, _ = z.shape
        return z.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)

    def logits(self, queries, memory):
        q, k = self.split(self.q(queries)), self.split(self.k(memory))
        return q @ k.transpose(-1, -2) * self.scale

    def forward(self, queries, memory):
        att = torch.softmax(self.logits(queries, memory), -1)
        y = att @ self.split(self.v(memory))
        b, h, t, d = y.shape
        return self.o(y.transpose(1, 2).reshape(b, t, h * d))


class GatkaParryNet(nn.Module):
    """Memory: the opponent's strike sequence (token + position embeddings, memory_enc); two
    learned query tokens cross-attend to it (cross_attn), pass a norm and feed-forward block,
    and the head names the parry from the two query outputs."""

    def __init__(self, vocab=24, length=12, dim=32, heads=2, classes=6, scale_bug=False):
        super().__init__()
        self.strike_tok = nn.Embedding(vocab, dim)
        self.strike_pos = nn.Embedding(length, dim)
        self.memory_enc = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.queries = nn.Parameter(0.02 * torch.randn(2, dim))
        self.ln_q = nn.LayerNorm(dim)
        self.cross_attn = StrikeCrossAttention(dim, heads, scale_bug)
        self.ln_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(2 * dim, classes)
        for lin in (self.cross_attn.q, self.cross_attn.k):
            nn.init.normal_(lin.weight, std=0.02)

    def memory(self, idx):
        x = self.strike_tok(idx) + self.strike_pos(torch.arange(idx.shape[1]))
        return x + self.memory_enc(x)

    def forward(self, idx):
        mem = self.memory(idx)
        q = self.queries.expand(idx.shape[0], -1, -1)
        h = q + self.cross_attn(self.ln_q(q), mem)
        h = h + self.ff(self.ln_ff(h))
        return self.head(h.flatten(1))


def _strikes(gen, batch, length=12, classes=6):
    """Strike-token sequences (1..17) with one telling strike (18..23) at a random place: the
    parry class is the telling strike's identity."""
    while True:
        x = torch.randint(1, 18, (batch, length), generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        pos = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), pos] = 18 + y
        yield x, y


@scenario(
    family="gatka_stick_parry_cross_attention_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("cross_attn",),
    diverges=None,
    heldout=True,
    note="A hand-written transformer naming which of 6 parries a gatka stick fighter should use: the opponent's 12-strike sequence is embedded (strike_tok, strike_pos) and encoded (memory_enc) into a memory; two learned query tokens cross-attend to it (cross_attn, 2 heads of 16, q from the queries, k and v from the memory), then a LayerNorm + feed-forward block and the head; AdamW at 5e-3 (weight decay 0.01), cross-entropy. In cross_attn the scale was re-typed as head_dim ** 0.5 where head_dim ** -0.5 was meant, so q.k is multiplied by 4 instead of divided by 4 (16x too large): sharpening the attention onto the telling strike keeps paying and nothing bounds it, so the attention logits (q and k at std 0.02, peak about 1 at the start) grow over 20x to a peak over 30 where the softmax is one-hot; the twin with the right scale keeps the peak over 3x smaller. Finite, no blow-up.",
)
def h279_gatka_cross_attention_scale_inverted(ctx: Context) -> None:
    def run(c, scale_bug):
        gen = seeded(27901)
        model = GatkaParryNet(scale_bug=scale_bug)
        opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=0.01)
        probe = next(_strikes(torch.Generator().manual_seed(7), 256))[0]

        def peak_now():
            with torch.no_grad():
                q = model.ln_q(model.queries.expand(probe.shape[0], -1, -1))
                return float(model.cross_attn.logits(q, model.memory(probe)).abs().max())

        peaks = [peak_now()]

        def after(step):
            peaks.append(peak_now())

        _train(c, model, opt, _strikes(gen, 64), 250, F.cross_entropy, classifier=True, after=after)
        return peaks

    twin = _Twin()
    twin_peaks = run(twin, False)
    peaks = run(ctx, True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the attention logits' peak grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak ends over 30 (softmax near one-hot)", peaks[-1] > 30)
    ctx.check(
        "the twin with the right scale keeps the peak 3x smaller", twin_peaks[-1] < peaks[-1] / 3
    )
    ctx.check("the loss fell", _fell(ls, ratio=0.5))


# -- inkle loom: the Nesterov lr was typed 0.4 for 0.004 -----------------------------------------


@scenario(
    family="inkle_loom_warp_tension_relu_regressor",
    optimizer="SGD Nesterov",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the warp tension an inkle-loom weaver should set from 10 standardised readings (yarn count, band width, heddle spacing, shed angle, ...), SGD with Nesterov momentum 0.9, MSE. The lr was typed 0.4 for 0.004: the first large steps push most of fc2's pre-activations negative on every input and act2's units die for good (over half of them never positive on a probe batch by the end, the twin at 0.004 keeps under a tenth dead); the dead units never get a gradient again and the loss stays well above the twin's. Finite, no blow-up.",
)
def h279_inkle_loom_lr_typo_dead_relu(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(27902)
        model = Stack(10, hidden=64)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
        probe = next(_readings(torch.Generator().manual_seed(3), 512, 10, 29))[0]
        dead = []

        def after(step):
            if step % 10 == 9:
                with torch.no_grad():
                    dead.append(dead_fraction(model.features(probe)))

        _train(c, model, opt, _readings(gen, 64, 10, 29), 200, F.mse_loss, after=after)
        return dead

    twin = _Twin()
    twin_dead = run(twin, 0.004)
    dead = run(ctx, 0.4)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half of act2 is dead at the end", dead[-1] > 0.5)
    ctx.check("and stayed dead over the last 100 steps", min(dead[-10:]) > 0.5)
    ctx.check("the twin keeps under a tenth dead", twin_dead[-1] < 0.1)
    ctx.check(
        "the loss ends over 2x the twin's",
        _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:]),
    )


# -- drover: one station's shard logged in metres ------------------------------------------------

ONSET_DROVER = 120


@scenario(
    family="drover_cattle_drive_day_distance_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_DROVER,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how far a drover's mob of cattle walks in a day from 8 standardised readings (distance to the next water, feed, heat, mob size, ...), SGD momentum 0.9 at 1e-2, MSE, clipping at 1.0. One station's shard logged the two distance columns in metres instead of standardised kilometres; its batch arrives at step 120 with those columns about 1e3 for every row: the loss jumps over 100x and the gradient is over 100x the median before clipping; the next batches are ordinary and the run recovers within 50 steps. Finite, no blow-up.",
)
def h279_drover_shard_in_metres(ctx: Context) -> None:
    gen = seeded(27903)
    model = Stack(8, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_DROVER:
            x = x.clone()
            x[:, :2] = 1000.0 * (1.5 + x[:, :2].abs())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 8, 31), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(ls[ONSET_DROVER - 30 : ONSET_DROVER])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss jumped over 100x at step 120", ls[ONSET_DROVER] > 100 * before)
    ctx.check(
        "the gradient was over 100x the median before clipping",
        gn[ONSET_DROVER] > 100 * _median(gn[ONSET_DROVER - 30 : ONSET_DROVER]),
    )
    ctx.check(
        "the run recovered within 50 steps (under 2x the level before)",
        _mean(ls[ONSET_DROVER + 50 : ONSET_DROVER + 70]) < 2 * before,
    )
    ctx.check("the loss fell before the shard", _fell(ls[:ONSET_DROVER], ratio=0.5))


# -- lagori: the resume restores an fp16 loss scale into an fp32 run -----------------------------

ONSET_LAGORI = 150


def _lagori(gen, batch, seed):
    """Binary outcome (the stack is rebuilt before the seeker tags the team) from 12 readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    v = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        z = x @ w / math.sqrt(12) + 0.8 * torch.sin(x @ v / math.sqrt(12) * 2)
        yield x, (z + 0.3 * torch.randn(batch, generator=gen) > 0).float()


@scenario(
    family="lagori_stack_rebuild_bce_silu_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LAGORI,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting whether a lagori team rebuilds the stone stack before being tagged, from 12 standardised readings (throw distance, stack height, seeker positions, ...), plain SGD at 0.1, BCE with logits, clipping at 1.0. After a pre-emption the run resumes at step 150 from a checkpoint written by an earlier fp16 run: the resume code restores its loss-scale multiplier (1024) and the loss of that step is multiplied by it with no scaler to undo it (the next step the fp32 path resets it to 1): the batch is ordinary (its loss is as usual) but the gradient is about 1024x for one step; clipping bounds the update and the run carries on. Finite, no blow-up.",
)
def h279_lagori_resumed_loss_scale(ctx: Context) -> None:
    gen = seeded(27904)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def scale_loss(step):
        return 1024.0 if step == ONSET_LAGORI else 1.0

    _train(
        ctx,
        model,
        opt,
        _lagori(gen, 64, 37),
        240,
        F.binary_cross_entropy_with_logits,
        clip=1.0,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(ls[ONSET_LAGORI - 30 : ONSET_LAGORI])
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the gradient at step 150 is over 100x the median before",
        gn[ONSET_LAGORI] > 100 * _median(gn[ONSET_LAGORI - 30 : ONSET_LAGORI]),
    )
    ctx.check(
        "the batch itself is ordinary (loss under 2x the median)", ls[ONSET_LAGORI] < 2 * before
    )
    ctx.check(
        "the gradient is back to ordinary the next step (under 5x the median)",
        gn[ONSET_LAGORI + 1] < 5 * _median(gn[ONSET_LAGORI - 30 : ONSET_LAGORI]),
    )
    ctx.check(
        "the run carried on (last 30 steps under 1.5x the level before)",
        _mean(ls[-30:]) < 1.5 * before,
    )
    ctx.check("the loss fell", _fell(ls[:ONSET_LAGORI], ratio=0.8))


# -- elve: the photometer standardisation lost its eps -------------------------------------------

ONSET_ELVE = 90


class PhotometerNorm(nn.Module):
    """Standardises each photometer channel over the batch (written by hand, no eps)."""

    def forward(self, x):
        mean = x.mean(0, keepdim=True)
        var = ((x - mean) ** 2).mean(0, keepdim=True)
        # was (x - mean) / torch.sqrt(var + 1e-5); the eps went in a "cleanup"
        return (x - mean) / torch.sqrt(var)


class ElveDetector(nn.Module):
    def __init__(self, channels=16, hidden=48):
        super().__init__()
        self.norm = PhotometerNorm()
        self.fc1 = nn.Linear(channels, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.norm(x)))))).squeeze(-1)


def _photometer(gen, batch, seed):
    """16 photometer channels in raw counts (hundreds to thousands), elve present or not."""
    g = torch.Generator().manual_seed(seed)
    ring = torch.rand(16, generator=g)
    while True:
        y = (torch.rand(batch, generator=gen) < 0.4).float()
        base = 800 + 200 * torch.randn(batch, 16, generator=gen)
        flash = 600 * y[:, None] * ring * (0.5 + torch.rand(batch, 1, generator=gen))
        yield base + flash, y


@scenario(
    family="elve_flash_photometer_norm_bce_detector",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges=ONSET_ELVE,
    heldout=True,
    onset=ONSET_ELVE,
    note="A GELU MLP detecting elves (ring-shaped flashes above thunderstorms) in 16 photometer channels in raw counts: norm (a hand-written batch standardisation (x - mean) / sqrt(var)), fc1, act1, fc2, act2, head; NAdam at 2e-3, BCE with logits. The standardisation's eps was removed in a cleanup; at step 90 one channel's photometer is saturated and reads its ceiling 4095 for the whole batch, so that channel's variance is exactly 0 and norm computes 0/0 = NaN for it, the logits and the loss are NaN at step 90. Finite before.",
)
def h279_elve_photometer_norm_no_eps(ctx: Context) -> None:
    gen = seeded(27905)
    model = ElveDetector()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_ELVE:
            x = x.clone()
            x[:, 5] = 4095.0
            seen["var"] = float(((x[:, 5] - x[:, 5].mean()) ** 2).mean())
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_ELVE:
            with torch.no_grad():
                seen["norm_nan"] = bool(torch.isnan(model.norm(x)[:, 5]).all())

    _train(
        ctx,
        model,
        opt,
        _photometer(gen, 64, 43),
        160,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite before step 90", _finite(ls[:ONSET_ELVE]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_ELVE], ratio=0.7))
    ctx.check("the loss is NaN first at step 90", _first_bad(ls) == ONSET_ELVE)
    ctx.check("the saturated channel's variance is exactly 0", seen.get("var", 1.0) == 0.0)
    ctx.check("norm gives NaN for that channel", seen.get("norm_nan", False))


# -- brazier: a Stefan-Boltzmann fourth power taken in fp16 under autocast -----------------------

ONSET_BRAZIER = 130


class FourthPower(nn.Module):
    """Radiance from the learned temperature proxies: T^4 (Stefan-Boltzmann), as two squares."""

    def forward(self, t):
        t2 = t * t
        return t2 * t2


class BrazierHeatNet(nn.Module):
    def __init__(self, d_in=10, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.radiance = FourthPower()
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.norm(self.radiance(self.fc1(x)))
        return self.head(self.act(self.fc2(h))).squeeze(-1)


def _brazier(gen, batch, seed):
    """Charcoal mass, airflow, bowl geometry ... in their logged units (a few units), and the
    log radiant heat at a metre."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = 3.0 * torch.randn(batch, 10, generator=gen)
        y = torch.log1p((x @ w / 3.0) ** 2 / 10.0)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="brazier_charcoal_radiant_heat_fp16_fourth_power_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("radiance",),
    diverges=ONSET_BRAZIER,
    heldout=True,
    onset=ONSET_BRAZIER,
    note="A regressor of the radiant heat a charcoal brazier gives off at a metre (log heat) from 10 readings kept in their logged units (charcoal mass, airflow, bowl diameter, ...): fc1 projects them to temperature proxies, radiance raises them to the fourth power (Stefan-Boltzmann, written as two squares), norm (LayerNorm), fc2, act, head; Adam at 1e-3, MSE, trained under fp16 autocast with a torch.amp.GradScaler. Under autocast fc1's output is fp16 and the elementwise products stay fp16; for the usual batches the proxies stay under 16 and the fourth powers under 65504, but at step 130 a batch from a fully lit brazier (readings about 5x the usual, physically valid, an ordinary loss in fp32) pushes the proxies past 16 and their fourth powers overflow to inf; the LayerNorm turns that into NaN and the loss is NaN at step 130. The fp32 twin on the same data stays finite.",
)
def h279_brazier_fp16_fourth_power(ctx: Context) -> None:
    def run(c, amp):
        gen = seeded(27906)
        model = BrazierHeatNet()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cpu") if amp else None
        seen = {"peaks": []}

        def alter(step, x, y):
            if step == ONSET_BRAZIER:
                x = 5.0 * x
            return x, y

        def watch(step, out, x, y):
            if not amp:
                return
            with torch.no_grad():
                seen["peaks"].append(float(model.fc1(x).abs().max()))
                if step == ONSET_BRAZIER:
                    with torch.autocast("cpu", dtype=torch.float16):
                        seen["inf"] = bool(torch.isinf(model.radiance(model.fc1(x))).any())
                    seen["fp32_loss"] = float(F.mse_loss(model(x), y))

        _train(
            c,
            model,
            opt,
            _brazier(gen, 64, 47),
            200,
            F.mse_loss,
            scaler=scaler,
            amp=amp,
            alter=alter,
            watch=watch,
        )
        return seen

    twin = _Twin()
    run(twin, False)
    seen = run(ctx, True)
    ls = ctx.losses
    peaks = seen["peaks"]
    ctx.check("finite before the lit batch", _finite(ls[:ONSET_BRAZIER]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_BRAZIER], ratio=0.7))
    ctx.check("the loss is non-finite at step 130", _first_bad(ls) == ONSET_BRAZIER)
    ctx.check("the proxies stayed under 16 before", max(peaks[:ONSET_BRAZIER]) < 16)
    ctx.check(
        "and passed 16 on the lit batch", len(peaks) > ONSET_BRAZIER and peaks[ONSET_BRAZIER] > 16
    )
    ctx.check("the fp16 fourth power overflowed to inf", seen.get("inf", False))
    ctx.check(
        "in fp32 the same batch gives an ordinary loss (under 5x the median)",
        seen.get("fp32_loss", math.inf) < 5 * _median(ls[ONSET_BRAZIER - 30 : ONSET_BRAZIER]),
    )
    ctx.check("the fp32 twin stays finite", _finite(twin.losses) and len(twin.losses) == 200)


# -- shingle riving: the warm-up lambda lost its min(1, .) ---------------------------------------


def _top_eig(model, x, y, iters=12):
    """Largest Hessian eigenvalue of the MSE on (x, y), by power iteration."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="shingle_riving_split_thickness_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the thickness of an oak shingle a river splits off with a froe from 8 standardised readings (bolt diameter, grain run-out, moisture, froe angle, ...), plain SGD with base lr 0.1, MSE, a LambdaLR linear warm-up over 20 steps. The warm-up lambda was written step / 20 and lost its min(1, .): the lr never stops at 0.1 and keeps climbing linearly (0.005 more every step); the loss falls while lr x sharpness (the top Hessian eigenvalue, measured by power iteration every 10 steps) stays under 2; the rising lr takes lr x sharpness past 2 around step 90, the run hovers at the edge with growing oscillations and blows up around step 160. The twin with min(1, step / 20) trains normally.",
)
def h279_shingle_riving_warmup_without_cap(ctx: Context) -> None:
    def run(c, capped):
        gen = seeded(27907)
        model = Stack(8, hidden=32, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        if capped:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 20)
        px, py = next(_readings(torch.Generator().manual_seed(9), 512, 8, 53))
        seen = {"lr_sharp": []}

        def before(step):
            if step % 10 == 0 and c is not None:
                lam = _top_eig(model, px, py)
                seen["lr_sharp"].append((step, opt.param_groups[0]["lr"] * lam))

        _train(
            c, model, opt, _readings(gen, 64, 8, 53), 250, F.mse_loss, before=before, sched=sched
        )
        return seen

    twin = _Twin()
    run(twin, True)
    seen = run(ctx, False)
    ls = ctx.losses
    finite = [v for v in ls if math.isfinite(v)]
    low = min(finite[:150])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    cross = next((s for s, r in seen["lr_sharp"] if r > 2), None)
    ctx.check("the loss first fell to under half its start", low < 0.5 * _mean(ls[:5]))
    ctx.check("the run blows up (NaN or over 100x its low)", blow is not None)
    ctx.check(
        "lr x sharpness crossed 2 before the blow-up",
        cross is not None and blow is not None and cross <= blow,
    )
    ctx.check("lr x sharpness was under 2 early on", seen["lr_sharp"][0][1] < 2)
    ctx.check("the capped twin trains normally", _fell(twin.losses, ratio=0.5))


# -- kalaripayattu: init std typed 1.0 for 1/sqrt(fan_in) ----------------------------------------


class DeepTanh(nn.Module):
    """12 Linear + tanh layers (layers.0 .. layers.11) and a linear head."""

    def __init__(self, d_in=16, width=48, depth=12, std=None):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(
                lin.weight, std=std if std is not None else 1 / math.sqrt(lin.in_features)
            )
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="kalaripayattu_form_score_deep_tanh_mlp",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (layers.0 .. layers.11, width 48, then head) regressing a judge's score for a kalaripayattu form (meippayattu) from 16 standardised motion-capture summaries, Adamax at 2e-3, MSE, clipping at 1.0. The init helper was called with std=1.0 where std=1/sqrt(fan_in) was meant (a gain of about 7 on the 48-wide layers): the network sits deep in the chaotic phase, the backpropagated gradient grows layer by layer towards the input, so layers.0's weight gradient is over 30x the last hidden layer's (the twin with 1/sqrt(fan_in) keeps the ratio under 3), and the saturated tanh stack fits the scores far worse than the twin. Clipping keeps it finite; no blow-up.",
)
def h279_kalaripayattu_init_std_one(ctx: Context) -> None:
    def run(c, std):
        gen = seeded(27908)
        model = DeepTanh(std=std)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        ratios = []

        x0, y0 = next(_readings(torch.Generator().manual_seed(11), 256, 16, 59))
        F.mse_loss(model(x0), y0).backward()
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / last)
        model.zero_grad(set_to_none=True)
        _train(c, model, opt, _readings(gen, 64, 16, 59), 200, F.mse_loss, clip=1.0)
        return ratios

    twin = _Twin()
    twin_ratios = run(twin, None)
    ratios = run(ctx, 1.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("layers.0's gradient is over 30x the last hidden layer's", ratios[0] > 30)
    ctx.check("the twin keeps the ratio under 3", twin_ratios[0] < 3)
    ctx.check(
        "the loss ends over 2x the twin's",
        _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:]),
    )


# -- tablet weaving: the staged unfreeze raises the wrong param group ----------------------------

UNFREEZE_TABLET = 20


@scenario(
    family="tablet_weaving_pattern_two_group_classifier",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    onset=UNFREEZE_TABLET,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming which of 8 tablet-weaving patterns (threaded-in, double-face, ...) a band was woven in from 16 standardised card-turn statistics; Adam with two param groups (trunk fc1 and fc2, and head) at 3e-3, cross-entropy with label smoothing 0.1. The recipe trains the head alone for 20 steps (trunk group lr 0) and then unfreezes the trunk; the unfreeze callback sets param_groups[1]['lr'] (the head, already at 3e-3) where param_groups[0] was meant after the groups' order changed, so the trunk stays at lr 0 for the whole run: fc1 and fc2 never move (update ratio exactly 0), only the head learns on random features, and the loss ends well above the twin whose trunk unfreezes. Finite, no blow-up.",
)
def h279_tablet_weaving_unfreeze_wrong_group(ctx: Context) -> None:
    def run(c, group):
        gen = seeded(27909)
        model = Stack(16, hidden=64, out=8)
        trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
        opt = torch.optim.Adam(
            [{"params": trunk, "lr": 0.0}, {"params": model.head.parameters(), "lr": 3e-3}]
        )
        seen = {}

        def before(step):
            if step == UNFREEZE_TABLET:
                opt.param_groups[group]["lr"] = 3e-3
                seen["trunk"] = _flat(nn.ModuleList([model.fc1, model.fc2]))
                seen["head"] = _flat(model.head)

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 8, 61, noise=0.6),
            200,
            nn.CrossEntropyLoss(label_smoothing=0.1),
            classifier=True,
            before=before,
        )
        seen["trunk_moved"] = float(
            (_flat(nn.ModuleList([model.fc1, model.fc2])) - seen["trunk"]).norm()
        )
        seen["head_moved"] = float((_flat(model.head) - seen["head"]).norm())
        return seen

    twin = _Twin()
    run(twin, 0)
    seen = run(ctx, 1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1 and fc2 never moved after the unfreeze step", seen["trunk_moved"] == 0.0)
    ctx.check("the head did move", seen["head_moved"] > 0.1)
    ctx.check(
        "the loss ends over 1.3x the twin's",
        _mean(ls[-20:]) > 1.3 * _mean(twin.losses[-20:]),
    )


# -- gundog: the temperature was typed 0.01 for 1.0 ----------------------------------------------


class TemperedHead(nn.Module):
    def __init__(self, d_in, hidden, classes, temperature):
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
    family="gundog_retrieve_grade_tempered_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head, logits divided by a temperature) grading a gundog's retrieve at a field trial (5 grades) from 14 standardised readings (marking, pace, delivery to hand, mouth, ...), RAdam at 1e-3, cross-entropy. The temperature in the config was typed 0.01 for 1.0 (copied from a distillation run's sharpening setting): the logits are 100x, and once the head separates the grades the float32 softmax rounds the target's probability to exactly 1.0 on over a quarter of the probe rows (the twin at 1.0 has none), so those rows give no gradient at all. Finite, no blow-up.",
)
def h279_gundog_temperature_typo(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(27910)
        model = TemperedHead(14, 64, 5, temperature)
        opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
        px, py = next(_kinds(torch.Generator().manual_seed(13), 512, 14, 5, 67))
        _train(c, model, opt, _kinds(gen, 64, 14, 5, 67), 200, F.cross_entropy, classifier=True)
        with torch.no_grad():
            return collapsed_fraction(model(px), py)

    twin = _Twin()
    twin_frac = run(twin, 1.0)
    frac = run(ctx, 0.01)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over a quarter of the probe rows' target probability is exactly 1.0", frac > 0.25)
    ctx.check("the twin has under 5% such rows", twin_frac < 0.05)


# -- controls ------------------------------------------------------------------------------------


class DyeUptakeNet(nn.Module):
    """Shared SiLU trunk with a mean head and a log-variance head."""

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.log_var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.log_var_head(h)], -1)


def _gaussian_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-8.0, 8.0)
    return F.gaussian_nll_loss(mean, y, log_var.exp())


def _dye_bath(gen, batch, seed):
    """Dye uptake of a wax-resist egg from 10 readings, with noise that grows with one reading
    (a heteroscedastic target)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        noise = 0.05 + 0.3 * torch.sigmoid(2 * x[:, 0])
        y = torch.tanh(x @ w / math.sqrt(10)) + noise * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="pysanka_dye_bath_uptake_fp16_gaussian_nll_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU net with a mean head and a log-variance head predicting how much dye a wax-resist pysanka egg takes up in a bath from 10 standardised readings (dye age, bath temperature, shell porosity, dip time, ...), Gaussian NLL (log-variance clamped to [-8, 8]), AdamW at 3e-3 with OneCycleLR, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 4 micro-batches of 32, clipping at 1.0 after unscale. Trains normally.",
)
def h279_pysanka_fp16_accumulation_control(ctx: Context) -> None:
    gen = seeded(27911)
    model = DyeUptakeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=150)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _dye_bath(gen, 32, 71),
        150,
        _gaussian_nll,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=4,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the NLL fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check(
        "the loss scale stayed finite and positive", all(0 < s < math.inf for s in ctx.scales)
    )


@scenario(
    family="cutting_horse_cow_work_score_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) regressing a cutting-horse judge's cow-work score from 8 standardised readings (stop, turn, eye appeal, cow pressure, ...) on noisy batches (label noise 0.2), RMSprop at 3e-3, Huber loss (delta 1.0), clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 40, min_lr 1e-5) on the training loss. Trains normally.",
)
def h279_cutting_horse_rmsprop_plateau_control(ctx: Context) -> None:
    gen = seeded(27912)
    model = Stack(8, hidden=64, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=40, min_lr=1e-5)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 73, noise=0.2),
        220,
        nn.HuberLoss(delta=1.0),
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell to under 60% of its start", _fell(ls, ratio=0.6))


class TiedInlayAutoencoder(nn.Module):
    """Encoder Linear; the decoder reuses the encoder's weight transposed (tied), own bias."""

    def __init__(self, d_in=32, code=10):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.decoder_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.encoder(x)), self.encoder.weight.t(), self.decoder_bias)


def _inlay(gen, batch, seed):
    """32-cell gold-wire inlay patterns: mixtures of 6 motifs plus noise (reconstruct them)."""
    g = torch.Generator().manual_seed(seed)
    motifs = torch.randn(6, 32, generator=g) / 2
    while True:
        mix = torch.randn(batch, 6, generator=gen)
        x = mix @ motifs + 0.05 * torch.randn(batch, 32, generator=gen)
        yield x, x


@scenario(
    family="damascene_inlay_pattern_tied_autoencoder",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight tanh autoencoder (encoder Linear 32->10, act, the decoder reusing encoder.weight transposed with its own bias) reconstructing 32-cell damascene gold-inlay patterns (mixtures of 6 motifs plus noise), Adagrad at 0.05, MSE, LambdaLR with a 20-step linear warm-up then cosine decay. Trains normally.",
)
def h279_damascene_tied_autoencoder_control(ctx: Context) -> None:
    gen = seeded(27913)
    model = TiedInlayAutoencoder()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    total, warm = 200, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _train(ctx, model, opt, _inlay(gen, 64, 79), total, F.mse_loss, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the reconstruction error fell to under half its start", _fell(ls, ratio=0.5))
