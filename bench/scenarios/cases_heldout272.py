"""Held-out set 272 (``h272_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena: a bell-tower method-row decoder (learned absolute positions) whose attention
entropy regulariser was entered with the wrong sign, a cooper's hoop fire-bending Huber net
whose loss-logging hook backpropagates the loss in basis points once, a lighthouse lamp
fuel-burn net whose variance head lost its softplus, an alpaca halter-training net whose trunk
warm-up lambda was given 1e6 steps, an iceberg-calving deep ReLU net initialised with std
2.5/sqrt(fan_in), a kelp-harvest wet-weight net fed one shard in grams, a rodeo barrel-race
split classifier whose loss-weight table has one cell typed 80 for 0.8, a luge-track ice
temperature ReLU net whose MultiStepLR gamma was typed 10 for 0.1, a banjo drone-string
classifier trained at temperature 0.02, a harbour-seiche mode classifier whose label smoothing
was entered as -0.2, and three controls (a scriptorium character decoder with warm-up and
cosine decay, an aurora corona-form fp16 classifier with a GradScaler and OneCycleLR, a quarry
sett-splitting Huber regressor with gradient accumulation and ReduceLROnPlateau).

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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    weight=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``weight(step)``
    multiplies the backpropagated loss (bugs in the loss), ``after(step)`` runs after the
    optimizer step; ``amp``: fp16 autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        mult = (weight(step) if weight is not None else 1.0) / accumulate
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float() if amp else out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss * mult
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


def _traces(gen, batch, classes, seed, channels=2, length=32, noise=0.5):
    """Multi-channel traces: each class a different mix of frequencies, random phase and gain."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        gain = 0.5 + 1.5 * torch.rand(batch, 1, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield gain * (x + noise * torch.randn(batch, channels, length, generator=gen)), y


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


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _peak(model, probe):
    with torch.no_grad():
        return float(model(probe).abs().max())


# -- a hand-written decoder-only transformer with learned absolute positions ----------------------


class Attention(nn.Module):
    """Causal multi-head attention written out: keeps its last logits' peak and entropy."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.peak = 0.0
        self.entropy = torch.tensor(0.0)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = (
            m(x).reshape(b, t, h, -1).transpose(1, 2) for m in (self.query, self.key, self.value)
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        mask = torch.ones(t, t, dtype=torch.bool).tril()
        self.peak = float(logits.detach().masked_fill(~mask, 0).abs().max())
        att = torch.softmax(logits.masked_fill(~mask, float("-inf")), -1)
        self.entropy = -(att * torch.log(att.clamp_min(1e-12))).sum(-1)[..., 1:].mean()
        return self.out((att @ v).transpose(1, 2).reshape(b, t, d))


class Layer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class LearnedPosDecoder(nn.Module):
    """Token embedding plus a learned absolute position embedding, pre-LN layers, a head."""

    def __init__(self, vocab, dim=32, heads=2, layers=2, context=48):
        super().__init__()
        self.tokens = nn.Embedding(vocab, dim)
        self.positions = nn.Embedding(context, dim)
        self.layers = nn.ModuleList(Layer(dim, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, idx):
        x = self.tokens(idx) + self.positions(torch.arange(idx.shape[1]))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


def _seq_ce(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _method_rows(gen, batch, length=48, bells=6):
    """Change-ringing rows of plain hunt / plain bob on six bells from a random starting row:
    tokens 1..6 are bells, 0 ends a row."""
    x_swap = [(0, 1), (2, 3), (4, 5)]
    inner = [(1, 2), (3, 4)]
    while True:
        seqs = []
        for _ in range(batch):
            row = torch.randperm(bells, generator=gen).tolist()
            bob = bool(torch.rand(1, generator=gen) < 0.5)
            toks: list[int] = []
            k = 0
            while len(toks) < length + 1:
                toks += [r + 1 for r in row] + [0]
                if k % 2 == 0:
                    swaps = x_swap
                elif bob and k % 12 == 11:
                    swaps = [(2, 3), (4, 5)]
                else:
                    swaps = inner
                for a, c in swaps:
                    row[a], row[c] = row[c], row[a]
                k += 1
            off = int(torch.randint(0, 7, (1,), generator=gen))
            toks = (
                toks[off : off + length + 1]
                if off + length + 1 <= len(toks)
                else toks[: length + 1]
            )
            seqs.append(toks)
        s = torch.tensor(seqs)
        yield s[:, :-1], s[:, 1:]


# -- bell tower: the attention entropy regulariser was entered with the wrong sign ---------------


@scenario(
    family="bell_tower_method_row_learned_pos_decoder",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("layers.0.attn", "layers.1.attn"),
    diverges=None,
    heldout=True,
    note="A hand-written decoder-only transformer (token embedding plus a learned absolute position embedding 'positions', two pre-LN layers whose attention 'layers.i.attn' is written out with query/key/value/out projections, a head) learning change-ringing rows of plain hunt and plain bob on six bells from a random starting row, AdamW at 3e-3, cross-entropy. The recipe keeps attention from collapsing with an entropy bonus, loss - lam * mean attention entropy, and its config field 'attn_entropy_weight' is documented as a penalty; the run's config sets it to -0.5, so the loss adds +0.5 * entropy and training drives every head towards one-hot attention: the peak |q.k/sqrt(d)| grows over 5x past the twin with lam = +0.5 (and is still growing at the end) while the mean attention entropy falls under a quarter of the twin's. The language-model loss still falls; finite, no blow-up.",
)
def h272_bell_tower_entropy_bonus_sign(ctx: Context) -> None:
    def run(c, lam):
        gen = seeded(27201)
        model = LearnedPosDecoder(vocab=7, dim=32, heads=2, layers=2, context=48)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        peaks, ents, ce = [], [], []

        def loss_fn(logits, y):
            lm = _seq_ce(logits, y)
            ce.append(float(lm.detach()))
            ent = torch.stack([layer.attn.entropy for layer in model.layers]).mean()
            return lm - lam * ent

        def watch(step, out, x, y):
            peaks.append(max(layer.attn.peak for layer in model.layers))
            ents.append(
                float(torch.stack([layer.attn.entropy.detach() for layer in model.layers]).mean())
            )

        _loop(c, model, opt, _method_rows(gen, 16), 160, loss_fn, watch=watch)
        return peaks, ents, ce

    twin = _Twin()
    twin_peaks, twin_ents, _ = run(twin, 0.5)
    peaks, ents, ce = run(ctx, -0.5)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the peak attention logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check(
        "still growing over the last 80 steps", _mean(peaks[-5:]) > 1.2 * _mean(peaks[-85:-80])
    )
    ctx.check("over 5x the twin's peak at the end", _mean(peaks[-5:]) > 5 * _mean(twin_peaks[-5:]))
    ctx.check(
        "attention entropy under a quarter of the twin's",
        _mean(ents[-5:]) < 0.25 * _mean(twin_ents[-5:]),
    )
    ctx.check("the language-model loss still fell", _mean(ce[-10:]) < 0.8 * _mean(ce[:10]))


# -- cooper: the loss-logging hook backpropagates the loss in basis points once -------------------

ONSET_COOPER = 60


@scenario(
    family="cooper_hoop_fire_bending_huber_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_COOPER,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how far a cooper must drive an iron hoop down a fire-bent oak barrel from 10 standardised readings (stave moisture, fire time, bilge diameter, hoop width, ...), Adam at 2e-3, Huber loss. A logging hook added for the dashboard reports the loss in basis points at the first step of each new epoch and was written as loss = loss * 1e4 before loss.backward() rather than on a copy: at step 60 Adam receives one gradient about 1e4x the others (the batch is ordinary), which fills exp_avg_sq; with beta2 0.999 the median per-weight update 20-100 steps later is over 10x smaller than before and well under the twin's without the hook, and the loss stalls above the twin's. Finite, no blow-up.",
)
def h272_cooper_hoop_basis_point_logging(ctx: Context) -> None:
    def run(c, bug):
        gen = seeded(27202)
        model = Stack(10, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)
        moved, prev, xs = [], {}, []

        def before(step):
            prev["w"] = _flat(model)

        def after(step):
            moved.append(float((_flat(model) - prev["w"]).abs().median()))

        def watch(step, out, x, y):
            if step in (ONSET_COOPER - 1, ONSET_COOPER):
                xs.append(max(float(x.abs().max()), float(y.abs().max())))

        def weight(step):
            return 1e4 if bug and step == ONSET_COOPER else 1.0

        _loop(
            c,
            model,
            opt,
            _readings(gen, 96, 10, 41),
            200,
            F.huber_loss,
            weight=weight,
            before=before,
            after=after,
            watch=watch,
        )
        return moved, xs

    twin = _Twin()
    twin_moved, _ = run(twin, bug=False)
    moved, xs = run(ctx, bug=True)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(moved[ONSET_COOPER - 20 : ONSET_COOPER])
    late = moved[ONSET_COOPER + 20 : ONSET_COOPER + 100]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_COOPER], ratio=0.7))
    ctx.check(
        "the gradient at the onset over 1e3x the median before",
        gn[ONSET_COOPER] > 1e3 * _median(gn[ONSET_COOPER - 20 : ONSET_COOPER]),
    )
    ctx.check("the batches at the onset are ordinary (max |x|, |y| under 7)", max(xs) < 7)
    ctx.check(
        "median per-weight update 20-100 steps after the onset over 10x smaller than before",
        _median(late) < pre / 10,
    )
    ctx.check(
        "those updates under a fifth of the twin's",
        _median(late) < 0.2 * _median(twin_moved[ONSET_COOPER + 20 : ONSET_COOPER + 100]),
    )
    ctx.check(
        "the loss stalls: the twin ends under 0.8x of it",
        _mean(twin.losses[-10:]) < 0.8 * _mean(ls[-10:]),
    )


# -- lighthouse: the variance head lost its softplus ---------------------------------------------


class VarianceNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _gauss_nll_raw_var(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)).mean()


NAN_LIGHTHOUSE = 34


@scenario(
    family="lighthouse_lamp_fuel_burn_variance_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=NAN_LIGHTHOUSE,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2) with a mean head and a variance head forecasting a lighthouse lamp's paraffin burn per night from 8 standardised readings (wick height, mantle age, air temperature, wind, ...), NAdam at 1e-3, Gaussian NLL 0.5 * log(var) + (y - mu)^2 / (2 var). The variance head was refactored from log-variance to variance and lost its softplus (its bias is initialised to 1 so the variance starts positive); as the readings are nearly noiseless the NLL pushes the variance down and a step takes the head's output below zero: log of a negative variance gives NaN in the loss at step 34, with the batches ordinary.",
)
def h272_lighthouse_variance_without_softplus(ctx: Context) -> None:
    gen = seeded(27203)
    model = VarianceNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    low, xs = [], []

    def watch(step, out, x, y):
        low.append(float(out[:, 1].detach().min()))
        xs.append(float(x.abs().max()))

    _loop(
        ctx, model, opt, _readings(gen, 64, 8, 43, noise=0.02), 200, _gauss_nll_raw_var, watch=watch
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check(f"the loss is first non-finite at step {NAN_LIGHTHOUSE}", bad == NAN_LIGHTHOUSE)
    ctx.check("the variance head's output was positive at the start", low[0] > 0)
    ctx.check(
        "the variance head's output went below zero at that step", bad is not None and low[bad] < 0
    )
    ctx.check("the batches are ordinary (max |x| under 7)", max(xs) < 7)


# -- alpaca: the trunk warm-up lambda was given 1e6 steps ----------------------------------------

WARM_ALPACA = 50


@scenario(
    family="alpaca_halter_training_two_group_mlp",
    optimizer="SGD(nesterov)",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how many sessions a young alpaca needs to accept a halter from 12 standardised readings (age, temperament score, handler experience, herd size, ...), SGD with Nesterov momentum 0.9 at 0.05, MSE, two param groups (trunk fc1/fc2 and head) each with its own LambdaLR warm-up lambda min(1, step / warm). The trunk group's warm length was read from a config field in steps when it holds samples (1e6 for 50): its lr stays under 1e-5 of the head's for the whole run, the trunk's update/weight ratio is under 1e-5 per step and its weights move over 100x less than the twin's, while the head learns alone and the loss plateaus above the twin's. Finite, no blow-up.",
)
def h272_alpaca_trunk_warmup_in_samples(ctx: Context) -> None:
    def run(c, trunk_warm):
        gen = seeded(27204)
        model = Stack(12, hidden=48, act=nn.Tanh)
        trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
        opt = torch.optim.SGD(
            [{"params": trunk}, {"params": model.head.parameters()}],
            lr=0.05,
            momentum=0.9,
            nesterov=True,
        )
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt,
            [lambda s: min(1.0, (s + 1) / trunk_warm), lambda s: min(1.0, (s + 1) / WARM_ALPACA)],
        )
        w0 = torch.cat([p.detach().flatten() for p in trunk]).clone()
        h0 = model.head.weight.detach().clone()
        ratios = []

        def before(step):
            ratios.append(torch.cat([p.detach().flatten() for p in trunk]).clone())

        def after(step):
            now = torch.cat([p.detach().flatten() for p in trunk])
            ratios[-1] = float((now - ratios[-1]).norm() / now.norm())

        _loop(
            c,
            model,
            opt,
            _readings(gen, 64, 12, 47),
            200,
            F.mse_loss,
            sched=sched,
            before=before,
            after=after,
        )
        trunk_move = float(
            (torch.cat([p.detach().flatten() for p in trunk]) - w0).norm() / w0.norm()
        )
        head_move = float((model.head.weight.detach() - h0).norm() / h0.norm())
        return trunk_move, head_move, ratios

    twin = _Twin()
    twin_trunk, _, _ = run(twin, WARM_ALPACA)
    trunk_move, head_move, ratios = run(ctx, 1e6)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the trunk's update/weight ratio under 1e-5 every step", max(ratios) < 1e-5)
    ctx.check("the trunk moved over 100x less than the twin's", trunk_move < twin_trunk / 100)
    ctx.check("the head did move (relative change over 0.1)", head_move > 0.1)
    ctx.check(
        "the loss plateaus: the twin ends under 0.8x of it",
        _mean(twin.losses[-10:]) < 0.8 * _mean(ls[-10:]),
    )


# -- iceberg calving: a deep ReLU net initialised with std 2.5 / sqrt(fan_in) ---------------------


class DeepRelu(nn.Module):
    def __init__(self, d_in, width=48, depth=12, gain=2.5):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.blocks = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in [*self.blocks, self.head]:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
        self.hidden: list[torch.Tensor] = []

    def forward(self, x):
        self.hidden = []
        for m in self.blocks:
            x = F.relu(m(x))
            if x.requires_grad:
                x.retain_grad()
            self.hidden.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="iceberg_calving_volume_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("blocks.0",),
    diverges="auto",
    heldout=True,
    note="A 12-layer ReLU MLP ('blocks.0' .. 'blocks.11', a head) regressing the ice volume a tidewater glacier front calves in a day from 10 standardised readings (water temperature, tide, crevasse density, front height, ...), plain SGD at 1e-3, MSE. The init helper was meant to draw He weights with variance 2/fan_in and was written std = 2.5 / sqrt(fan_in): every layer multiplies the signal and the backpropagated gradient by about 1.77, so the gradient on the first hidden layer is over 300x the last one's and the first step's gradient norm is enormous; SGD's updates overshoot and the loss blows up within the first steps.",
)
def h272_iceberg_calving_init_gain(ctx: Context) -> None:
    gen = seeded(27205)
    model = DeepRelu(10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratio = []

    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 53)
    for step in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if step == 0:
            g = [float(h.grad.norm()) for h in model.hidden]
            ratio.append(g[0] / max(g[-1], 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("the gradient on the first hidden layer over 300x the last one's", ratio[0] > 300)
    ctx.check("the first step's gradient norm over 1e3", ctx.grad_norms[0] > 1e3)
    ctx.check(
        "the loss blew up (non-finite or over 1e6x its start)",
        (_first_bad(ls) is not None) or max(ls) > 1e6 * ls[0],
    )


# -- kelp harvest: one boat's shard logs the wet weight in grams ---------------------------------

ONSET_KELP = 90


@scenario(
    family="kelp_harvest_wet_weight_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KELP,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a kelp cutter's wet-weight haul per tide from 10 standardised readings (blade length, water temperature, swell, cut depth, ...), Adagrad at 0.05 with gradient clipping at 1.0, MSE. One boat's shard logs its targets in grams where every other shard uses standardised kilograms: the batch at step 90 has targets about 1e3 times the usual scale, its loss is over 1e4x the median before and its pre-clip gradient over 100x; clipping keeps the step bounded and the loss is back near its level within tens of steps. Finite, no divergence.",
)
def h272_kelp_harvest_shard_in_grams(ctx: Context) -> None:
    gen = seeded(27206)
    model = Stack(10, hidden=48)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = []

    def alter(step, x, y):
        if step == ONSET_KELP:
            y = y * 1000.0 + 2000.0
        seen.append(float(y.abs().max()))
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 59), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(ls[ONSET_KELP - 20 : ONSET_KELP])
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the batch at the onset has targets over 100x the usual",
        seen[ONSET_KELP] > 100 * _median(seen[:ONSET_KELP]),
    )
    ctx.check("its loss over 1e4x the median before", ls[ONSET_KELP] > 1e4 * before)
    ctx.check(
        "its pre-clip gradient over 100x the median before",
        gn[ONSET_KELP] > 100 * _median(gn[ONSET_KELP - 20 : ONSET_KELP]),
    )
    ctx.check(
        "recovered: the last 20 steps under 3x the level before", _mean(ls[-20:]) < 3 * before
    )


# -- rodeo: one cell of the loss-weight table typed 80 for 0.8 -----------------------------------

ONSET_RODEO = 120


@scenario(
    family="rodeo_barrel_race_split_classifier",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_RODEO,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which of 5 split-time bands a barrel-racing horse's run falls into from 14 standardised readings (turn radius, approach speed, ground firmness, horse age, ...), SGD with momentum 0.9 at 0.02, clipping at 2.0, cross-entropy. The loss is multiplied by a per-step weight read from a curriculum table exported from a spreadsheet; one cell, step 120, was typed 80 where 0.8 was meant, so that one step's gradient is 100x the usual (the batch is ordinary) before clipping bounds it; the run recovers. Finite, no divergence.",
)
def h272_rodeo_weight_table_typo(ctx: Context) -> None:
    gen = seeded(27207)
    model = Stack(14, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    xs = []

    def weight(step):
        return 80.0 if step == ONSET_RODEO else 0.8

    def watch(step, out, x, y):
        xs.append(float(x.abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 5, 61),
        220,
        F.cross_entropy,
        classifier=True,
        weight=weight,
        clip=2.0,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_RODEO]))
    ctx.check(
        "the gradient at the onset over 50x the median before",
        gn[ONSET_RODEO] > 50 * _median(gn[ONSET_RODEO - 20 : ONSET_RODEO]),
    )
    ctx.check("the batch at the onset is ordinary", xs[ONSET_RODEO] < 1.5 * max(xs[:ONSET_RODEO]))
    ctx.check(
        "the loss at the onset is ordinary (under 2x the median before)",
        ls[ONSET_RODEO] < 2 * _median(ls[ONSET_RODEO - 20 : ONSET_RODEO]),
    )
    ctx.check(
        "recovered: the last 20 steps under 1.5x the level before",
        _mean(ls[-20:]) < 1.5 * _mean(ls[ONSET_RODEO - 20 : ONSET_RODEO]),
    )


# -- luge track: the MultiStepLR gamma was typed 100 for 0.01 --------------------------------------

ONSET_LUGE = 60


@scenario(
    family="luge_track_ice_temperature_relu_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    onset=ONSET_LUGE,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a luge track's ice surface temperature on a curve from 12 standardised readings (air temperature, sun, refrigeration load, spray time, ...), RAdam at 3e-3, MSE, a MultiStepLR meant to cut the lr 100x at step 60 for a fine polish. gamma was typed 100 for 0.01: the lr jumps to 0.3 at step 60 and the large updates push the second layer's ReLUs negative on every input; over half of act2 is dead for the rest of the run and never revives (under a tenth before, and in the twin with 0.01). Finite, no blow-up.",
)
def h272_luge_track_gamma_typo(ctx: Context) -> None:
    def run(c, gamma):
        gen = seeded(27208)
        model = Stack(12, hidden=64)
        opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [ONSET_LUGE], gamma=gamma)
        probe = next(_readings(torch.Generator().manual_seed(5), 512, 12, 67))[0]
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _loop(c, model, opt, _readings(gen, 64, 12, 67), 220, F.mse_loss, sched=sched, after=after)
        return dead

    twin = _Twin()
    twin_dead = run(twin, 0.01)
    dead = run(ctx, 100.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under a tenth of act2 dead before the onset", dead[ONSET_LUGE - 1] < 0.1)
    ctx.check("over half of act2 dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("the twin keeps act2 under a tenth dead", max(twin_dead[-50:]) < 0.1)
    ctx.check(
        "the dead units stay dead (no recovery over the last 100 steps)",
        min(dead[-50:]) >= dead[-100] - 0.05,
    )


# -- banjo: the training temperature was typed 0.005 for 0.5 --------------------------------------


class DroneNet(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.GELU()
        self.head = nn.Linear(48, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="banjo_fifth_string_drone_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of 6 tunings a banjo's fifth-string drone is in from 16 standardised spectrum readings, Adamax at 2e-3, cross-entropy on head / T. The recipe sharpens the logits with a temperature T = 0.5; the config was typed 0.005: the softmax saturates, over half the training rows have a target probability of exactly 1.0 in float32 (under 5% in the twin with T = 0.5) and those rows give no gradient. Finite, no blow-up.",
)
def h272_banjo_drone_temperature_typo(ctx: Context) -> None:
    def run(c, temperature):
        gen = seeded(27209)
        model = DroneNet(16, 6, temperature)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        frac = []

        def watch(step, out, x, y):
            frac.append(collapsed_fraction(out.detach(), y))

        _loop(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 6, 71, noise=0.25),
            200,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return frac

    twin = _Twin()
    twin_frac = run(twin, 0.5)
    frac = run(ctx, 0.005)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check(
        "over half the rows saturated at exactly 1.0 over the last 20 steps",
        _mean(frac[-20:]) > 0.5,
    )
    ctx.check("none saturated at the start", frac[0] < 0.05)
    ctx.check("the twin saturates under 5%", _mean(twin_frac[-20:]) < 0.05)


# -- harbour seiche: label smoothing entered as -0.2 ---------------------------------------------


def _smoothed_ce(eps, classes):
    def loss(logits, y):
        target = F.one_hot(y, classes).float() * (1 - eps) + eps / classes
        return -(target * F.log_softmax(logits, -1)).sum(-1).mean()

    return loss


@scenario(
    family="seiche_harbour_mode_smoothing_classifier",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) naming which of 4 oscillation modes a harbour seiche is ringing in from 12 standardised tide-gauge readings, RMSprop at 1e-3, cross-entropy against hand-built label-smoothed targets (1 - eps) * onehot + eps / K. eps was entered as -0.2 (a sign slip in the sweep config): the targets of the wrong classes are negative, so the loss rewards pushing their log-probabilities to minus infinity and is unbounded below; the head's logits grow over 20x and are still growing at the end, the loss goes below zero, while the twin with +0.2 keeps them 5x smaller. Finite in the run's length, no blow-up.",
)
def h272_seiche_negative_smoothing(ctx: Context) -> None:
    def run(c, eps):
        gen = seeded(27210)
        model = Stack(12, hidden=48, out=4, act=nn.Tanh)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        probe = next(_kinds(torch.Generator().manual_seed(3), 512, 12, 4, 73))[0]
        peak = [_peak(model, probe)]

        def after(step):
            peak.append(_peak(model, probe))

        _loop(
            c,
            model,
            opt,
            _kinds(gen, 64, 12, 4, 73),
            200,
            _smoothed_ce(eps, 4),
            classifier=True,
            after=after,
        )
        return peak

    twin = _Twin()
    twin_peak = run(twin, 0.2)
    peak = run(ctx, -0.2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak |logit| grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("still growing over the last 50 steps", peak[-1] > 1.1 * peak[-50])
    ctx.check("the loss went below zero", ls[-1] < 0)
    ctx.check("the twin keeps the peak 5x smaller", twin_peak[-1] < peak[-1] / 5)


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="scriptorium_quill_char_decoder_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A control: the hand-written decoder-only transformer with learned absolute positions (two pre-LN layers, 32 wide) as a character model of a scriptorium's copy text (bytes of standard-library sources stand in), AdamW at 3e-3 with weight decay 0.05 on matrices only (param groups), a linear warm-up over 20 steps into cosine decay to a tenth, clipping at 1.0, cross-entropy. The loss falls and stays finite.",
)
def h272_scriptorium_cosine_warmup_lm(ctx: Context) -> None:
    gen = seeded(27211)
    model = LearnedPosDecoder(vocab=128, dim=32, heads=2, layers=2, context=32)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    steps, warm = 160, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        t = (s - warm) / (steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _loop(ctx, model, opt, text_batches(gen, 16, 32, 128), steps, _seq_ce, sched=sched, clip=1.0)
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell under 0.7x its start", _fell(ctx.losses, ratio=0.7))


class CoronaConv(nn.Module):
    def __init__(self, channels=2, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="aurora_corona_form_fp16_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A control: a ReLU Conv1d net (conv1, act1, conv2, act2, mean pool, head) naming which of 4 forms an auroral corona takes from two magnetometer traces, Adam under a OneCycleLR (max_lr 5e-3), fp16 autocast with a torch.amp.GradScaler (unscaled before clipping at 1.0), cross-entropy with label smoothing 0.05, noisy traces of random gain. The loss falls and stays finite.",
)
def h272_aurora_corona_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(27212)
    model = CoronaConv()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    steps = 120
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.05)

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 4, 79),
        steps,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell under 0.7x its start", _fell(ctx.losses, ratio=0.7))


@scenario(
    family="quarry_sett_splitting_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    heldout=True,
    note="A control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the force a quarryman's feathers and wedges need to split a granite sett from 10 standardised readings (grain direction, block size, hole spacing, ...), ASGD at 0.15, Huber loss, gradient accumulation over 4 noisy micro-batches of 16, ReduceLROnPlateau (factor 0.5, patience 10). The loss falls and stays finite.",
)
def h272_quarry_sett_accum_plateau(ctx: Context) -> None:
    gen = seeded(27213)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.15)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 16, 10, 83, noise=0.2),
        150,
        F.huber_loss,
        sched=sched,
        accumulate=4,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell under 0.7x its start", _fell(ctx.losses, ratio=0.7))
