"""Held-out set 249 (``h249_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a mahout command-call encoder-decoder whose cross-attention
lost its QK LayerNorm to a misspelt config key, an ostrich-egg incubator net whose psychrometric
feature takes the square root of a swapped wet/dry bulb difference, a tower-crane load-sway
regressor whose input-layer param group lr was typed 3e-7 for 3e-3, a croissant lamination
regressor fed one shard in tenths of a degree Fahrenheit, a wok-toss two-head net whose
hot-reloaded loss weights were read in percent for one step, a dogsled team-pace deep ReLU
regressor initialised with the uniform bound as a normal std, a tandoor naan-doneness cosine
classifier whose scale was typed 3000 for 30, a silkworm cocoon regressor whose calibration
gain compounds in place on the cached targets, a pretzel dough-tension tanh regressor whose
warm-up peak lr was typed 2.0 for 0.2, a harrow-disc clod ReLU regressor whose RAdam lr was read as 1.0 for 1e-3, and three
controls (a ferret burrow-occupancy BCE classifier with cosine annealing with warm restarts,
Nesterov SGD and clipping, a tile-grout cure Gaussian NLL net with OneCycleLR and accumulation,
a panpipe tube-pitch classifier under fp16 autocast with a GradScaler, label smoothing and
ReduceLROnPlateau).

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
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


class _Quiet:
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
    scale_loss=None,
    alter=None,
):
    """The file's loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)`` returns
    the loss that is backpropagated and logged, ``after(step)`` runs after the optimizer step;
    stops after logging a NaN loss."""
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
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            if scale_loss is not None:
                loss = scale_loss(step, loss)
            total = loss / accumulate
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
        if math.isnan(shown):
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


def _sharpness(model, loss_fn, batch, iters=15) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- mahout command calls: a cross-attention that lost its QK LayerNorm ---------------------------


class CrossAttention(nn.Module):
    """Multi-head attention of decoder queries over encoder memory, optional QK LayerNorm."""

    def __init__(self, dim, heads, qk_norm):
        super().__init__()
        self.heads = heads
        self.dh = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.dh) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.dh) if qk_norm else nn.Identity()
        self.last_logit = 0.0
        self.last_peak = 0.0

    def forward(self, x, mem):
        b, t, d = x.shape
        s = mem.shape[1]
        q = self.q_norm(self.q(x).reshape(b, t, self.heads, self.dh)).transpose(1, 2)
        k = self.k_norm(self.k(mem).reshape(b, s, self.heads, self.dh)).transpose(1, 2)
        v = self.v(mem).reshape(b, s, self.heads, self.dh).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.dh)
        att = logits.softmax(-1)
        self.last_logit = float(logits.detach().abs().max())
        self.last_peak = float(att.detach().max(-1).values.mean())
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.o(y)


class SelfBlock(nn.Module):
    def __init__(self, dim, heads, causal):
        super().__init__()
        self.causal = causal
        self.ln = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), 1) if self.causal else None
        h = self.ln(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.ff(self.ln_ff(x))


class DecoderLayer(nn.Module):
    def __init__(self, dim, heads, qk_norm):
        super().__init__()
        self.self_block = SelfBlock(dim, heads, causal=True)
        self.ln_cross = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads, qk_norm)

    def forward(self, x, mem):
        x = self.self_block(x)
        return x + self.cross(self.ln_cross(x), mem)


class CallTranscriber(nn.Module):
    """Encoder over a call's acoustic frames, decoder emitting command tokens."""

    def __init__(self, feat, vocab, dim=32, heads=2, length=8, qk_norm=True):
        super().__init__()
        self.src_in = nn.Linear(feat, dim)
        self.src_pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.encoder = SelfBlock(dim, heads, causal=False)
        self.tok = nn.Embedding(vocab + 1, dim)
        self.tgt_pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.decoder = DecoderLayer(dim, heads, qk_norm)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.bos = vocab

    def forward(self, batch):
        frames, tgt_in = batch
        mem = self.encoder(self.src_in(frames) + self.src_pos)
        x = self.tok(tgt_in) + self.tgt_pos
        return self.head(self.ln_f(self.decoder(x, mem)))


def _calls(gen, batch, vocab=12, feat=10, length=8, seed=3):
    """Frames of a mahout's spoken command sequence (one noisy prototype per command word);
    the transcript lists the words in reverse (the log is written last-word-first)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(vocab, feat, generator=g)
    while True:
        words = torch.randint(0, vocab, (batch, length), generator=gen)
        frames = protos[words] + 0.5 * torch.randn(batch, length, feat, generator=gen)
        tgt = words.flip(1)
        tgt_in = torch.cat([torch.full((batch, 1), vocab), tgt[:, :-1]], 1)
        yield (frames, tgt_in), tgt


@scenario(
    family="mahout_command_call_cross_attention_seq2seq",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("decoder.cross",),
    diverges=None,
    heldout=True,
    note="A hand-written encoder-decoder (src_in, encoder self-attention block, token embedding, decoder layer with causal self-attention and a hand-written multi-head cross-attention decoder.cross over the encoder memory, head) transcribing a mahout's spoken command calls (8 acoustic frames of 10 features) into command words in reverse order, Adam at 1e-2, cross-entropy. The config enables QK LayerNorm in the cross-attention with the key `qk_layernorm: true`, but the model reads `qk_norm` and defaults to False: the cross-attention runs without it at the learning rate tuned for the normed model. Nothing bounds q.k any more: the cross-attention logits q.k/sqrt(d) grow over 20x from the first steps (to about 70) and the attention rows sharpen (mean row peak over 0.85); the loss still falls and stays finite. The twin with the key spelt right keeps the logits under a third of that.",
)
def h249_mahout_cross_attention_no_qknorm(ctx: Context) -> None:
    steps = 200

    def run(c, qk_norm):
        gen = seeded(24901)
        model = CallTranscriber(10, 12, qk_norm=qk_norm)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        logits = []

        def watch(step, out, x, y):
            logits.append(model.decoder.cross.last_logit)

        def loss_fn(out, y):
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

        def batches():
            for (frames, tgt_in), tgt in _calls(gen, 32):
                c.targets(tgt.reshape(-1))
                yield (frames, tgt_in), tgt

        _train(c, model, opt, batches(), steps, loss_fn, watch=watch)
        return logits, model.decoder.cross.last_peak

    twin = _Quiet()
    twin_logits, _ = run(twin, qk_norm=True)
    logits, peak = run(ctx, qk_norm=False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell (the task is learnt)", _fell(ls, ratio=0.5))
    ctx.check(
        "the cross-attention's max logit grew over 20x",
        _mean(logits[-10:]) > 20 * _mean(logits[:5]),
    )
    ctx.check("the cross-attention rows are sharp (mean row peak over 0.85)", peak > 0.85)
    ctx.check(
        "the twin with QK LayerNorm ends with logits under 1/3 of it",
        _mean(twin_logits[-10:]) < _mean(logits[-10:]) / 3,
    )


# -- ostrich egg incubator: sqrt of a swapped wet/dry bulb difference -----------------------------

ONSET_EGG = 90


class Psychrometric(nn.Module):
    """The wet-bulb depression feature: sqrt(dry - wet), appended to the other readings."""

    def forward(self, x):
        dry, wet = x[:, 0], x[:, 1]
        return torch.cat([x[:, 2:], torch.sqrt(dry - wet)[:, None]], 1)


class HatchNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.deficit = Psychrometric()
        self.fc1 = nn.Linear(d_in - 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.deficit(x)))))
        return self.head(h).squeeze(-1)


def _incubator(gen, batch, swapped_from, seed=4):
    """Dry and wet bulb temperatures (degrees C, dry 36-37.5, wet 2-6 below it) and 8 other
    standardised readings of an ostrich-egg incubator; the target is the standardised hatch day.
    From ``swapped_from`` a new cabinet's logger writes the wet bulb in the dry column."""
    stream = _readings(gen, batch, 8, seed)
    step = 0
    while True:
        x, y = next(stream)
        dry = 36.0 + 1.5 * torch.rand(batch, generator=gen)
        wet = dry - 2.0 - 4.0 * torch.rand(batch, generator=gen)
        y = y + 0.3 * (dry - wet - 4.0)
        if step >= swapped_from:
            dry, wet = wet, dry
        step += 1
        yield torch.cat([dry[:, None], wet[:, None], x], 1), y


@scenario(
    family="ostrich_egg_incubator_hatch_day_psychrometric_net",
    optimizer="SGD(momentum=0.9)",
    cause="nonfinite",
    where=("deficit",),
    diverges=ONSET_EGG,
    heldout=True,
    onset=ONSET_EGG,
    note="A SiLU MLP (deficit, fc1, act1, fc2, act2, head) regressing an ostrich egg's hatch day from an incubator's dry and wet bulb temperatures and 8 standardised readings, SGD with momentum 0.9 at 1e-2, MSE. The deficit module computes the wet-bulb depression feature as torch.sqrt(dry - wet) with no clamp. From step 90 a new cabinet's logger writes the wet bulb in the dry column: dry - wet is negative, the sqrt returns NaN and the loss is NaN at step 90. The inputs themselves are finite, ordinary temperatures.",
)
def h249_ostrich_incubator_swapped_bulbs(ctx: Context) -> None:
    gen = seeded(24902)
    model = HatchNet(10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_EGG:
            with torch.no_grad():
                seen["x_finite"] = bool(torch.isfinite(x).all())
                seen["neg"] = float((x[:, 0] - x[:, 1] < 0).float().mean())
                seen["deficit_nan"] = bool(torch.isnan(model.deficit(x)).any())

    _train(ctx, model, opt, _incubator(gen, 64, ONSET_EGG), 120, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_EGG], ratio=0.6))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_EGG)
    ctx.check("the onset inputs are finite", seen.get("x_finite") is True)
    ctx.check("dry - wet is negative for the whole onset batch", seen.get("neg", 0.0) == 1.0)
    ctx.check("the deficit module outputs NaN at the onset", seen.get("deficit_nan") is True)


# -- tower crane: the input layer's param group lr typed 3e-7 for 3e-3 ----------------------------


@scenario(
    family="tower_crane_load_sway_damping_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the residual load sway of a tower crane after a slew from 16 standardised readings (jib radius, load mass, hoist length, slew rate, wind, ...), Adamax with three param groups (fc1, fc2, head) built from a per-layer lr table, Huber loss. The table's fc1 entry was typed 3e-7 for 3e-3: fc1's weights move by under 1e-4 of their norm over the run while fc2 and the head move by percents. The loss still falls on the random fc1 features and stays finite; nothing blows up.",
)
def h249_tower_crane_fc1_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, fc1_lr):
        gen = seeded(24903)
        model = Stack(16, hidden=48, act=nn.Tanh)
        table = {"fc1": fc1_lr, "fc2": 3e-3, "head": 3e-3}
        opt = torch.optim.Adamax(
            [{"params": getattr(model, n).parameters(), "lr": lr} for n, lr in table.items()]
        )
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
        _train(c, model, opt, _readings(gen, 64, 16, 9), steps, F.huber_loss)
        return {
            n: float((p.detach() - w0[n]).norm() / w0[n].norm())
            for n, p in model.named_parameters()
        }

    twin = _Quiet()
    twin_moved = run(twin, fc1_lr=3e-3)
    moved = run(ctx, fc1_lr=3e-7)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.8))
    ctx.check("fc1's weight moved under 1e-4 of its norm", moved["fc1.weight"] < 1e-4)
    ctx.check("fc2's weight moved over 1e-2 of its norm", moved["fc2.weight"] > 1e-2)
    ctx.check("the head's weight moved over 1e-2 of its norm", moved["head.weight"] > 1e-2)
    ctx.check(
        "fc1 moved under 1e-3 of what the intended table moves it",
        moved["fc1.weight"] < 1e-3 * twin_moved["fc1.weight"],
    )


# -- croissant lamination: one shard in tenths of a degree Fahrenheit -----------------------------

ONSET_CROISSANT = 120


@scenario(
    family="croissant_lamination_layer_count_regressor",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CROISSANT,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the visible layer count of a laminated croissant dough from 12 standardised readings (butter and dough temperatures, fold count, sheeter gap, rest time, ...), AdamW at 2e-3 with gradient clipping at 1.0, MSE. At step 120 one batch comes from a bakery's shard whose two temperature columns were exported raw in tenths of a degree Fahrenheit (values 500 to 700) and that skipped the standardiser: that one batch's loss and gradient norm jump over 20x; clipping keeps the step bounded and the run recovers; finite.",
)
def h249_croissant_fahrenheit_shard(ctx: Context) -> None:
    gen = seeded(24904)
    model = Stack(12, hidden=48, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    xs = {}

    def alter(step, x, y):
        if step == ONSET_CROISSANT:
            x = x.clone()
            x[:, :2] = 500.0 + 200.0 * torch.rand(x.shape[0], 2, generator=gen)
        xs[step] = float(x.abs().max())
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 11),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = ls[ONSET_CROISSANT - 20 : ONSET_CROISSANT]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_CROISSANT], ratio=0.5))
    ctx.check(
        "the onset batch's inputs are over 50x the usual max",
        xs[ONSET_CROISSANT] > 50 * _median([xs[s] for s in range(ONSET_CROISSANT)]),
    )
    ctx.check(
        "the loss at the onset over 20x the median before",
        ls[ONSET_CROISSANT] > 20 * _median(before),
    )
    ctx.check(
        "the gradient norm at the onset over 20x the median before",
        gn[ONSET_CROISSANT] > 20 * _median(gn[ONSET_CROISSANT - 20 : ONSET_CROISSANT]),
    )
    ctx.check(
        "the run recovers (last 10 under 2x the 20 before the onset)",
        _mean(ls[-10:]) < 2 * _mean(before),
    )


# -- wok toss: hot-reloaded loss weights read in percent for one step -----------------------------

ONSET_WOK = 110


class TwoHead(nn.Module):
    """A shared SiLU trunk (fc1, act1, fc2, act2) with a height head and a spill head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.height = nn.Linear(hidden, 1)
        self.spill = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return self.height(h).squeeze(-1), self.spill(h).squeeze(-1)


def _tosses(gen, batch, seed=13):
    stream = _readings(gen, batch, 10, seed)
    g = torch.Generator().manual_seed(seed + 1)
    u = torch.randn(10, generator=g)
    while True:
        x, h = next(stream)
        spill = ((x @ u) / math.sqrt(10) + 0.3 * torch.randn(batch, generator=gen) > 0.5).float()
        yield x, (h, spill)


@scenario(
    family="wok_toss_height_spill_two_head_net",
    optimizer="RMSprop",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_WOK,
    note="A SiLU two-head net (fc1, act1, fc2, act2, height, spill) predicting a wok toss's rice height (MSE) and whether rice spills (BCE with logits) from 10 standardised readings (wrist angle, pan mass, flame, fill, ...), RMSprop at 1e-3, loss weights 1.0 and 0.5. At step 110 the trainer hot-reloads its config and the loss weights come back from a dashboard that stores them in percent (100 and 50) for one step before the validation hook resets them: that step's loss and gradient are 100x. The batch is ordinary; finite.",
)
def h249_wok_toss_weights_percent(ctx: Context) -> None:
    gen = seeded(24905)
    model = TwoHead(10)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    xs = {}

    def loss_fn(out, y):
        return F.mse_loss(out[0], y[0]), F.binary_cross_entropy_with_logits(out[1], y[1])

    def scale_loss(step, parts):
        w = (100.0, 50.0) if step == ONSET_WOK else (1.0, 0.5)
        return w[0] * parts[0] + w[1] * parts[1]

    def watch(step, out, x, y):
        xs[step] = float(x.abs().max())

    _train(ctx, model, opt, _tosses(gen, 64), 200, loss_fn, scale_loss=scale_loss, watch=watch)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_WOK], ratio=0.8))
    ctx.check(
        "the gradient norm at the onset over 30x the median before",
        gn[ONSET_WOK] > 30 * _median(gn[ONSET_WOK - 20 : ONSET_WOK]),
    )
    ctx.check(
        "the onset batch is ordinary (max input under 1.5x the usual max)",
        xs[ONSET_WOK] < 1.5 * max(xs[s] for s in range(ONSET_WOK)),
    )
    ctx.check(
        "only the onset step spikes (next step's gradient under 5x the median)",
        gn[ONSET_WOK + 1] < 5 * _median(gn[ONSET_WOK - 20 : ONSET_WOK]),
    )


# -- dogsled team pace: the uniform bound used as a normal std through 12 ReLU layers -------------


class DeepPace(nn.Module):
    def __init__(self, d_in, hidden=32, depth=12, std_of_fan_in=None):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, 1)
        for m in [*self.layers, self.head]:
            nn.init.normal_(m.weight, std=std_of_fan_in(m.in_features))
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="dogsled_team_pace_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges="auto",
    heldout=True,
    note="A 12-layer ReLU MLP (layers.0 to layers.11, head) regressing a dogsled team's pace over a leg from 12 standardised readings (team size, trail hardness, temperature, load, ...), plain SGD at 1e-3, MSE. The hand-written init uses the He-uniform bound sqrt(6/fan_in) as the std of a normal init instead of sqrt(2/fan_in): every layer multiplies the signal and the backward gradient by about sqrt(3), the gradient at layers.0 is hundreds of times the head's, and the first steps blow the loss up. The twin with the right std trains.",
)
def h249_dogsled_pace_init_std(ctx: Context) -> None:
    steps = 80

    def run(c, std):
        gen = seeded(24906)
        model = DeepPace(12, std_of_fan_in=std)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        seen = {}
        c.attach(model, opt)
        stream = _readings(gen, 64, 12, 17)
        for step in range(steps):
            x, y = next(stream)
            outs = []
            h = x
            for layer in model.layers:
                z = layer(h)
                z.retain_grad()
                outs.append(z)
                h = F.relu(z)
            loss = F.mse_loss(model.head(h).squeeze(-1), y)
            loss.backward()
            if step == 0:
                seen["through_depth"] = float(outs[0].grad.norm() / outs[-1].grad.norm())
                seen["grad0"] = float(model.layers[0].weight.grad.norm())
            c.grad_norms.append(grad_norm(model))
            opt.step()
            c.step(loss.detach())
            opt.zero_grad(set_to_none=True)
            if math.isnan(float(loss)):
                break
        return seen

    twin = _Quiet()
    twin_seen = run(twin, lambda n: math.sqrt(2.0 / n))
    seen = run(ctx, lambda n: math.sqrt(6.0 / n))
    ls = ctx.losses
    ctx.check(
        "the backward signal grows over 100x from layers.11 to layers.0 at step 0",
        seen["through_depth"] > 100,
    )
    ctx.check(
        "layers.0's gradient at step 0 over 1000x the twin's",
        seen["grad0"] > 1000 * twin_seen["grad0"],
    )
    ctx.check(
        "the loss blows up (non-finite or over 1e6x its start)",
        not _finite(ls) or max(ls) > 1e6 * ls[0],
    )
    ctx.check("the twin with sqrt(2/fan_in) trains (finite, fell)", _fell(twin.losses, ratio=0.9))


# -- tandoor naan doneness: a cosine classifier's scale typed 3000 for 30 -------------------------


class CosineHead(nn.Module):
    """Scaled cosine similarity between normalised features and normalised class weights."""

    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class NaanNet(nn.Module):
    def __init__(self, d_in, classes, scale, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="tandoor_naan_doneness_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP with a scaled-cosine head (fc1, act1, fc2, act2, head) classifying a naan's doneness into 6 grades from 14 standardised readings of the tandoor (wall temperature, dough hydration, slap time, bubble count, ...), NAdam at 2e-3, cross-entropy. The cosine head's scale s, meant to be 30, was typed 3000: the logits span thousands, the float32 softmax rounds the predicted class to exactly 1.0 for most rows from the first steps, and the wrong rows get huge losses while the right ones get exactly zero gradient. Finite; no blow-up.",
)
def h249_tandoor_cosine_scale_typo(ctx: Context) -> None:
    steps = 150

    def run(c, scale):
        gen = seeded(24907)
        model = NaanNet(14, 6, scale)
        opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
        seen = {}

        def watch(step, out, x, y):
            seen["collapsed"] = collapsed_fraction(out.detach(), y)
            seen["saturated"] = float(
                (torch.softmax(out.detach().float(), -1).max(-1).values == 1.0).float().mean()
            )

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 14, 6, 19),
            steps,
            F.cross_entropy,
            classifier=True,
            watch=watch,
        )
        return seen

    twin = _Quiet()
    twin_seen = run(twin, 30.0)
    seen = run(ctx, 3000.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half the rows' softmax is exactly 1.0 at the end", seen["saturated"] > 0.5)
    ctx.check("over a third of the rows give the target exactly 1.0", seen["collapsed"] > 1 / 3)
    ctx.check("the twin with s=30 has under 5% saturated rows", twin_seen["saturated"] < 0.05)


# -- silkworm cocoons: label centring that accumulates without decay ------------------------------


@scenario(
    family="silkworm_cocoon_silk_length_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the reelable silk length of a cocoon (in hundreds of metres, around 3, centred by subtracting 3) from 10 standardised readings (cocoon mass, shell ratio, rearing temperature, mulberry quality, ...), Adagrad at 1e-2, MSE, batches drawn from a cached in-memory dataset. The dataset's sampler applies the reel meter's calibration gain 1.005 with `self.y.mul_(gain)` on the whole cached target tensor instead of returning `self.y[i] * gain`: the gain compounds on every draw and the targets drift upward by 0.5% a step. The loss falls, then climbs slowly and steadily to several times its low as Adagrad's shrinking steps fall behind; no spike, no NaN, no bad batch.",
)
def h249_silkworm_calibration_in_place(ctx: Context) -> None:
    steps = 260

    def run(c, buggy):
        gen = seeded(24908)
        model = Stack(10, hidden=48, act=nn.SiLU)
        opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
        x_all, y_all = next(_readings(gen, 2048, 10, 23))
        y_all = y_all + 3.0
        gain = 1.005

        def draws():
            while True:
                i = torch.randint(0, len(y_all), (64,), generator=gen)
                if buggy:
                    y_all.mul_(gain)
                    yield x_all[i], y_all[i] - 3.0
                else:
                    yield x_all[i], y_all[i] * gain - 3.0

        _train(c, model, opt, draws(), steps, F.mse_loss)
        return float(y_all.mean())

    twin = _Quiet()
    run(twin, buggy=False)
    y_end = run(ctx, buggy=True)
    ls = ctx.losses
    means = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    lo = min(means)
    at = means.index(lo)
    jumps = max(
        (b / max(a, 1e-8) for a, b in zip(means[at:-1], means[at + 1 :], strict=True)),
        default=99.0,
    )
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss first fell (low under 0.6x the start)", lo < 0.6 * means[0])
    ctx.check("the loss ends over 3x its low", means[-1] > 3 * lo)
    ctx.check("the climb is gradual (no 10-step mean over 2x the one before)", jumps < 2.0)
    ctx.check("the cached targets' mean drifted over 2x", y_end > 6.0)
    ctx.check(
        "the twin with the gain on the copy ends under 1/3 of it",
        _mean(twin.losses[-10:]) < means[-1] / 3,
    )


# -- pretzel dough tension: warm-up peak lr typed 2.0 for 0.2 -------------------------------------


@scenario(
    family="pretzel_dough_twist_tension_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the twist tension a pretzel dough strand holds from 10 standardised readings (hydration, lye bath time, strand length, proof time, ...), plain SGD, MSE, a linear warm-up over 40 steps to a peak lr meant to be 0.2 but typed 2.0. Partway through the warm-up lr x sharpness (the top Hessian eigenvalue, measured by power iteration) passes 2 and the loss blows up. The twin warming up to 0.2 trains.",
)
def h249_pretzel_warmup_peak_typo(ctx: Context) -> None:
    steps = 100

    def run(c, peak):
        gen = seeded(24909)
        model = Stack(10, hidden=32, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        probe = next(_readings(torch.Generator().manual_seed(5), 256, 10, 29))
        products = []

        def before(step):
            lr = peak * min(1.0, (step + 1) / 40)
            for g in opt.param_groups:
                g["lr"] = lr
            if step % 4 == 0:
                lam = _sharpness(model, F.mse_loss, probe)
                products.append((step, lr * lam))

        _train(c, model, opt, _readings(gen, 64, 10, 29), steps, F.mse_loss, before=before)
        return products

    twin = _Quiet()
    run(twin, 0.2)
    products = run(ctx, 2.0)
    ls = ctx.losses
    blown = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * ls[0]), None)
    crossed = next((s for s, p in products if math.isfinite(p) and p > 2.0), None)
    ctx.check("the loss blows up (non-finite or over 100x its start)", blown is not None)
    ctx.check(
        "lr x sharpness passed 2 before the blow-up",
        crossed is not None and blown is not None and crossed < blown,
    )
    ctx.check(
        "the loss fell before lr x sharpness passed 2",
        crossed is not None and min(ls[: max(crossed, 1)]) < ls[0],
    )
    ctx.check("the twin warming up to 0.2 trains (finite, fell)", _fell(twin.losses, ratio=0.6))


# -- harrow disc soil clods: RAdam lr read as 1.0 for 1e-3 kills the ReLUs ------------------------


@scenario(
    family="harrow_disc_soil_clod_relu_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the mean clod size a disc harrow leaves from 12 standardised readings (disc angle, gang spacing, speed, soil moisture, clay content, ...), RAdam, MSE. The lr is read from a sweep table's column of lr multipliers (1.0) instead of its lr column (1e-3): once RAdam's rectified steps start, the large steps push fc2's pre-activations negative for every input and over 60% of act2 units die (never positive on a 512-row probe, their fc2 rows get exactly zero gradient and stop learning); the loss stays finite, no blow-up, the few live units carry the fit.",
)
def h249_harrow_radam_lr_typo(ctx: Context) -> None:
    steps = 200
    probe = next(_readings(torch.Generator().manual_seed(7), 512, 12, 31))[0]

    def run(c, lr):
        gen = seeded(24910)
        model = Stack(12, hidden=48)
        opt = torch.optim.RAdam(model.parameters(), lr=lr)
        with torch.no_grad():
            d0 = dead_fraction(model.features(probe))
        _train(c, model, opt, _readings(gen, 64, 12, 31), steps, F.mse_loss)
        feats = model.features(probe)
        dead_units = (feats <= 0).all(0)
        probe_y = next(_readings(torch.Generator().manual_seed(7), 512, 12, 31))[1]
        F.mse_loss(model.head(feats).squeeze(-1), probe_y).backward()
        dead_grad = (
            float(model.fc2.weight.grad[dead_units].abs().max()) if dead_units.any() else 1.0
        )
        return d0, float(dead_units.float().mean()), dead_grad

    twin = _Quiet()
    _, twin_dead, _ = run(twin, 1e-3)
    d0, dead, dead_grad = run(ctx, 1.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of act2 units dead at init", d0 < 0.1)
    ctx.check("over 60% of act2 units dead at the end", dead > 0.6)
    ctx.check("the twin has under 20% dead", twin_dead < 0.2)
    ctx.check("the dead units' fc2 rows get exactly zero gradient", dead_grad == 0.0)


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="ferret_burrow_occupancy_bce_classifier",
    optimizer="SGD(nesterov)",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) predicting whether a ferret working a rabbit warren finds an occupied burrow from 12 standardised readings (burrow diameter, spoil freshness, time of day, ...), 10% flipped labels, BCE with logits, SGD with Nesterov momentum 0.9 at 0.05, cosine annealing with warm restarts (T_0=30, T_mult=2), gradient clipping at 2.0.",
)
def h249_ferret_burrow_warm_restarts(ctx: Context) -> None:
    gen = seeded(24911)
    model = Stack(12, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=30, T_mult=2, eta_min=1e-3
    )
    g = torch.Generator().manual_seed(37)
    u = torch.randn(12, generator=g)

    def burrows():
        stream = _readings(gen, 64, 12, 37)
        while True:
            x, r = next(stream)
            y = ((x @ u) / math.sqrt(12) + 0.5 * r > 0).float()
            flip = torch.rand(64, generator=gen) < 0.1
            yield x, torch.where(flip, 1 - y, y)

    lrs = []
    _train(
        ctx,
        model,
        opt,
        burrows(),
        210,
        F.binary_cross_entropy_with_logits,
        clip=2.0,
        sched=sched,
        after=lambda s: lrs.append(opt.param_groups[0]["lr"]),
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.8))
    ctx.check(
        "the schedule restarted (lr jumped back up)",
        any(b > 5 * a for a, b in zip(lrs[:-1], lrs[1:], strict=True)),
    )


class GaussianNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return self.mean(h).squeeze(-1), self.log_var(h).squeeze(-1).clamp(-8.0, 8.0)


@scenario(
    family="tile_grout_cure_strength_gaussian_nll_net",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a GELU net with mean and log-variance heads (fc1, act1, fc2, act2, mean, log_var) predicting a tile grout's 24-hour cure strength and its spread from 10 standardised readings (water ratio, latex additive, humidity, joint width, ...), heteroscedastic noise, Gaussian NLL (log-variance clamped), AdamW at 3e-3 with OneCycleLR, accumulation over 2 micro-batches.",
)
def h249_tile_grout_gaussian_nll(ctx: Context) -> None:
    gen = seeded(24912)
    model = GaussianNet(10)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)

    def grout():
        stream = _readings(gen, 32, 10, 41, noise=0.0)
        while True:
            x, y = next(stream)
            sd = 0.05 + 0.3 * torch.sigmoid(x[:, 0])
            yield x, y + sd * torch.randn(32, generator=gen)

    def loss_fn(out, y):
        mean, log_var = out
        return F.gaussian_nll_loss(mean.float(), y, log_var.float().exp())

    _train(ctx, model, opt, grout(), steps, loss_fn, sched=sched, accumulate=2)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the NLL fell by over 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)


@scenario(
    family="panpipe_tube_pitch_classifier_fp16",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying which of 8 pitches a panpipe tube sounds from 16 standardised readings (tube length, bore, wall thickness, stopper depth, ...), cross-entropy with label smoothing 0.1, Adam at 2e-3, fp16 autocast with a torch.amp.GradScaler, ReduceLROnPlateau (factor 0.5, patience 10).",
)
def h249_panpipe_pitch_fp16(ctx: Context) -> None:
    gen = seeded(24913)
    model = Stack(16, hidden=64, out=8, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)

    def loss_fn(out, y):
        return F.cross_entropy(out.float(), y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 8, 43),
        180,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, ratio=0.6))
    ctx.check(
        "the scaler never skipped more than a few steps",
        sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=True)) < 5,
    )
