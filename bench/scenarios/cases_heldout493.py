"""Held-out set 493 (``h493_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a drum-major mace-signal mixture-of-depths transformer at an AdamW lr typed 3e-2 for
3e-4 (attention logits grow), a veneer-press glue-line Huber regressor whose resumed loss weight
is 200 for one step (one gradient burst, SGD Nesterov), a baton-twirl catch ReLU classifier at an
RMSprop lr typed 5e-1 for 5e-3 (dead ReLUs), a rock-balancing stack-height regressor fed one
shard in millimetres (Adamax), a glass-harp rim-spread net taking sqrt(E[x^2] - E[x]^2) of a stuck
sensor (NaN, NAdam), a rock-arch span 12-layer ReLU MLP initialised with gain 5 for 2 (exploding,
SGD), a lantern-making wick-flame regressor whose layer-wise lr decay exponent is typed 10x
(fc1 frozen, Adagrad), a tent-pegging lance-strike classifier whose temperature is read in
percent (softmax collapse, SGD momentum), an upper-tangent-arc brightness regressor whose
hand-rolled weight decay has its sign flipped (slow climb, ASGD) and a sword-forging quench-warp
regressor whose loss weight is read 1e5 for one step (Adam's second moment poisoned, Adam).

Controls: a step-dancing tap-pattern GELU classifier warmed up from 1e-6 over 100 steps (Adam),
a rain-stick pebble-fall Conv1d classifier under fp16 autocast + GradScaler (AdamW, OneCycleLR,
label smoothing, clipping), a pelota-vasca wall-rebound Gaussian-NLL net (RAdam, two param
groups, ReduceLROnPlateau, accumulation 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``backprop(step, loss)`` is the loss actually backpropagated (before the division by
    ``accumulate``), ``after(step, loss)`` runs after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(shown)
            else:
                sched.step()
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


# -- 1. attention logit growth: a mixture-of-depths transformer at an lr typed 100x ---------------


class _RoutedAttention(nn.Module):
    """Causal attention over the routed tokens (in their original order); keeps its max logit."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, x, pos):
        b, t, d = x.shape
        q, k, v = (
            f(x).reshape(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        self.max_logit = float(logits.detach().abs().max())
        future = pos[:, None, :, None] < pos[:, None, None, :]
        att = logits.masked_fill(future, float("-inf")).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class _MoDBlock(nn.Module):
    """A learnt router picks the top half of the tokens; only they pass through the block (their
    update gated by the router's sigmoid), the rest skip it unchanged."""

    def __init__(self, dim, heads, capacity=0.5):
        super().__init__()
        self.capacity = capacity
        self.router = nn.Linear(dim, 1)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _RoutedAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        scores = self.router(x).squeeze(-1)
        k = max(1, int(self.capacity * t))
        pos = scores.topk(k, dim=1).indices.sort(dim=1).values
        sel = x.gather(1, pos[..., None].expand(b, k, d))
        h = sel + self.attn(self.ln1(sel), pos)
        h = h + self.out(F.gelu(self.fc(self.ln2(h))))
        gate = torch.sigmoid(scores.gather(1, pos))[..., None]
        return x.scatter_add(1, pos[..., None].expand(b, k, d), gate * (h - sel))


class _MoDTransformer(nn.Module):
    def __init__(self, vocab=16, dim=32, heads=2, layers=2, context=24):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(_MoDBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _mace_signals(gen, batch=32, half=12, vocab=16):
    """Mace-signal sequences: a random call of ``half`` signals, then the band repeats it."""
    while True:
        call = torch.randint(0, vocab, (batch, half), generator=gen)
        seq = torch.cat([call, call], 1)
        yield seq[:, :-1], seq[:, 1:]


def _lm(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="drum_major_mace_signal_mixture_of_depths_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Drum-major mace-signal model: a hand-written mixture-of-depths transformer (each block's "
    "learnt router sends only the top half of the tokens through attention and MLP, the rest "
    "skip it) trained as a causal LM on generated signal calls that the band repeats. The AdamW "
    "lr is typed 3e-2 for 3e-4 with no warm-up and no QK norm: the query/key weights grow and "
    "the attention logits q.k/sqrt(d) grow far past their start.",
)
def h493_drum_major_mod_attention(ctx) -> None:
    gen = seeded(4931)
    model = _MoDTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.0)
    peaks = []

    def after(step, loss):
        peaks.append(max(b.attn.max_logit for b in model.blocks))

    losses, _ = _train(ctx, model, opt, _mace_signals(gen), 200, _lm, classifier=False, after=after)
    start = _mean(peaks[:5])
    ctx.check("max |q.k/sqrt(d)| over 20x its start", max(peaks[-20:]) > 20 * start)
    ctx.check("max |q.k/sqrt(d)| over 50 at the end", max(peaks[-20:]) > 50)
    ctx.check("the loss stayed finite", _finite(losses))


# -- 2. gradient spike: a resumed loss weight of 200 for one step ----------------------------------

VENEER_ONSET = 110


@scenario(
    family="veneer_press_glue_line_silu_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=VENEER_ONSET,
    note="Veneer-press glue-line strength regressor (SiLU MLP on press temperature, clamp "
    "pressure, glue spread and open time, Huber loss, SGD Nesterov, clipping at 1). After a "
    "restart at step 110 the loss weight is restored from a checkpoint field that held the "
    "logging scale 200 instead of 1.0, for that one step: the gradient bursts, the data are "
    "ordinary, clipping caps the step and the run recovers.",
)
def h493_veneer_press_loss_weight(ctx) -> None:
    gen = seeded(4932)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (200.0 if step == VENEER_ONSET else 1.0)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 4932),
        220,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    med = _median(norms[VENEER_ONSET - 40 : VENEER_ONSET])
    ctx.check("the gradient at the onset is over 50x the median", norms[VENEER_ONSET] > 50 * med)
    ctx.check(
        "the logged loss at the onset is ordinary (under 2x the step before)",
        losses[VENEER_ONSET] < 2 * _mean(losses[VENEER_ONSET - 5 : VENEER_ONSET]),
    )
    ctx.check(
        "the run recovers (last 20 under 1.5x the 20 before the onset)",
        _mean(losses[-20:]) < 1.5 * _mean(losses[VENEER_ONSET - 20 : VENEER_ONSET]),
    )
    ctx.check("it trained (finite, fell)", _fell(losses))


# -- 3. loss of plasticity: an RMSprop lr typed 5e-1 for 5e-3 --------------------------------------


def _magnitudes(gen, batch, seed):
    """Non-negative readings (rates, heights, angles from vertical) around class prototypes."""
    for x, y in _grades(gen, batch, 12, 6, seed):
        yield x.abs(), y


@scenario(
    family="baton_twirl_catch_outcome_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Baton-twirling catch-outcome classifier (ReLU MLP on spin rate, toss height, release "
    "angle and hand-position magnitudes, all non-negative, cross-entropy, RMSprop). The lr is typed 3e-1 for 3e-3: "
    "the first big updates push fc1's pre-activations negative for every input, its ReLUs die "
    "and stop learning (most of fc2 follows), and the loss sits near chance.",
)
def h493_baton_twirl_dead_relu(ctx) -> None:
    gen = seeded(4933)
    model = _Net(12, 48, 6)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-1)
    losses, _ = _train(
        ctx, model, opt, _magnitudes(gen, 64, 4933), 200, F.cross_entropy, classifier=True
    )
    x, _ = next(_magnitudes(torch.Generator().manual_seed(1), 512, 4933))
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(x)))
    ctx.check("over 80% of fc1's units dead", dead > 0.8)
    ctx.check("the loss is near chance (over 0.8 ln 6)", _mean(losses[-20:]) > 0.8 * math.log(6))
    ctx.check("no NaN", _finite(losses))


# -- 4. data outlier: one shard in millimetres -----------------------------------------------------

STACK_ONSET = 120


@scenario(
    family="rock_balancing_stack_height_silu_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=STACK_ONSET,
    note="Rock-balancing stack-height regressor (SiLU MLP on stone masses, contact areas and "
    "tilt features, MSE, Adamax, clipping at 5). One shard, at step 120, came from a logger that "
    "writes the stack heights in millimetres instead of metres: that batch's loss and gradient "
    "jump, and the run recovers once it has passed.",
)
def h493_rock_balancing_mm_shard(ctx) -> None:
    gen = seeded(4934)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == STACK_ONSET else (x, y)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4934), 240, F.mse_loss, alter=alter, clip=5.0
    )
    before = losses[STACK_ONSET - 20 : STACK_ONSET]
    ctx.check(
        "the loss at the bad shard over 1000x the median",
        losses[STACK_ONSET] > 1000 * _median(before),
    )
    ctx.check(
        "the gradient at the bad shard over 20x the median",
        norms[STACK_ONSET] > 20 * _median(norms[STACK_ONSET - 20 : STACK_ONSET]),
    )
    ctx.check(
        "the run recovers (last 20 under 2x the 20 before)", _mean(losses[-20:]) < 2 * _mean(before)
    )
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: sqrt(E[x^2] - E[x]^2) of a stuck sensor -----------------------------------------

GLASS_ONSET = 90


class _RimSpread(nn.Module):
    """The spread of the rim-microphone readings, as sqrt(E[x^2] - E[x]^2) with no clamp."""

    def forward(self, x):
        self.var = (x * x).mean(1) - x.mean(1) ** 2
        return torch.sqrt(self.var)[:, None]


class _GlassHarpNet(nn.Module):
    def __init__(self, d_in=12, hidden=32):
        super().__init__()
        self.spread = _RimSpread()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.cat([x, self.spread(x)], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


@scenario(
    family="glass_harp_rim_tone_sqrt_spread_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("spread",),
    diverges=GLASS_ONSET,
    heldout=True,
    onset=GLASS_ONSET,
    note="Glass-harp rim-tone loudness regressor (SiLU MLP on 12 rim-microphone readings plus "
    "their spread, MSE, NAdam). The spread is computed as sqrt(E[x^2] - E[x]^2) with no clamp; at "
    "step 90 the microphones stick at their floor value 0.1, the variance rounds to a tiny "
    "negative number in float32 and sqrt returns NaN: the loss is NaN at step 90.",
)
def h493_glass_harp_sqrt_negative(ctx) -> None:
    gen = seeded(4935)
    model = _GlassHarpNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == GLASS_ONSET:
            x = x.clone()
            x[:8] = 0.1  # stuck microphones read their floor value
        return x, y

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 12, 4935), 200, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the variance went negative", float(model.spread.var.min()) < 0)
    ctx.check("the loss is NaN at step 90", first_bad == GLASS_ONSET and math.isnan(losses[-1]))
    ctx.check("finite and falling before", _fell(losses[:GLASS_ONSET]))


# -- 6. exploding gradients: a 12-layer ReLU MLP initialised with gain 5 for 2 ---------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in=10, width=32, depth=12, gain2=5.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=math.sqrt(gain2 / lin.in_features))
            nn.init.zeros_(lin.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for lin in self.layers:
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="rock_arch_span_load_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="Rock-arch span-load regressor (12-layer ReLU MLP on span, thickness, rock type and "
    "weathering features, MSE, plain SGD at lr 1e-4). The He init is written with variance "
    "5/fan_in for 2/fan_in: each layer multiplies the signal by about 1.6 both ways, the "
    "gradient at the first layer's output is over 30x the last's and within a few steps the "
    "loss blows up to NaN (a 150-step run that ends at step 3).",
)
def h493_rock_arch_init_gain(ctx) -> None:
    gen = seeded(4936)
    model = _DeepNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    ratios = []
    batches = _readings(gen, 64, 10, 4936)
    ctx.attach(model, opt)
    losses = []
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g0 = float(model.outs[0].grad.norm())
        g1 = float(model.outs[-1].grad.norm())
        ratios.append(g0 / max(g1, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("dL/dz at layers.0 over 30x the last layer's", ratios[0] > 30)
    ctx.check(
        "the loss blows up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * _mean(losses[:3]),
    )


# -- 7. update ratio: a layer-wise lr decay exponent typed 10x ------------------------------------


@scenario(
    family="lantern_making_wick_flame_llrd_relu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Lantern-making wick-flame height regressor (ReLU MLP on wick width, oil viscosity, "
    "chimney draft and wick trim, MSE, Adagrad with layer-wise lr decay). The decay 0.25 is "
    "raised to depth * 10 instead of depth: fc1's group gets lr 0.05 * 0.25**20 (about 5e-14), "
    "so fc1 never moves while fc2 and the head train and the loss still falls.",
)
def h493_lantern_llrd_exponent(ctx) -> None:
    gen = seeded(4937)
    model = _Net(10, 48, 1)
    lr, decay = 0.05, 0.25
    groups = [
        {"params": model.fc1.parameters(), "lr": lr * decay ** (2 * 10)},  # depth 2, typo * 10
        {"params": model.fc2.parameters(), "lr": lr * decay**1},
        {"params": model.head.parameters(), "lr": lr},
    ]
    opt = torch.optim.Adagrad(groups, lr=lr)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4937), 200, F.mse_loss)
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    d2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", d1 < 1e-6)
    ctx.check("fc2 moved over 5% of its norm", d2 > 0.05)
    ctx.check("the loss still fell", _fell(losses))


# -- 8. softmax collapse: a temperature read in percent --------------------------------------------


class _LanceNet(_Net):
    def __init__(self, temperature):
        super().__init__(14, 48, 5, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="tentpegging_lance_strike_temperature_gelu_classifier",
    optimizer="SGD momentum",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tent-pegging lance-strike classifier (GELU MLP on horse speed, lance angle and peg "
    "approach features, five strike classes, cross-entropy, SGD momentum). The config gives the "
    "softmax temperature as 1 (percent) and the loader reads it as 0.01: logits are multiplied "
    "by 100 and most rows' float32 softmax rounds the target probability to exactly 1.0.",
)
def h493_tentpegging_temperature(ctx) -> None:
    gen = seeded(4938)
    model = _LanceNet(0.01)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 14, 5, 4938), 150, F.cross_entropy, classifier=True
    )
    x, y = next(_grades(torch.Generator().manual_seed(2), 512, 14, 5, 4938))
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows' target probability is exactly 1.0", frac > 0.5)
    ctx.check("no NaN", _finite(losses))


# -- 9. loss divergence: a hand-rolled weight decay with its sign flipped --------------------------


@scenario(
    family="upper_tangent_arc_brightness_decay_sign_tanh_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Upper-tangent-arc brightness regressor (tanh MLP on sun elevation, ice-crystal "
    "habit and cirrus optical-depth features, MSE, ASGD). The hand-rolled decoupled weight decay "
    "after each step is written p.mul_(1 + lr * wd) for p.mul_(1 - lr * wd): after fitting, the "
    "weights inflate and the loss climbs slowly, with no jump.",
)
def h493_upper_tangent_decay_sign(ctx) -> None:
    gen = seeded(4939)
    model = _Net(10, 48, 1, act=nn.Tanh)
    lr, wd = 0.02, 1.0
    opt = torch.optim.ASGD(model.parameters(), lr=lr)
    n0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the sign bug

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4939), 240, F.mse_loss, after=after)
    n1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    best = min(_mean(losses[i : i + 10]) for i in range(0, 120, 5))
    ctx.check("trained first (best under 0.7x the start)", best < 0.7 * _mean(losses[:10]))
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("the weights grew over 1.5x", n1 > 1.5 * n0)
    ctx.check(
        "no jump (no step over 3x the one before)",
        all(b < 3 * a for a, b in zip(losses[20:-1], losses[21:], strict=False)),
    )
    ctx.check("finite", _finite(losses))


# -- 10. adam second moment poisoned: a loss weight read 1e6 for one step --------------------------

SWORD_ONSET = 60


@scenario(
    family="sword_forging_quench_warp_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=SWORD_ONSET,
    note="Sword-forging quench-warp regressor (tanh MLP on blade length, clay-coat thickness, "
    "quench temperature and steel carbon, MSE, Adam). At step 60 the loss weight is read from a "
    "curriculum table in the wrong unit, 1e6 instead of 1, for one step: the gradient fills "
    "Adam's second moment, which with beta2 0.999 stays huge: that step knocks the fit back and "
    "the updates after are tiny, so the loss stalls there instead of recovering.",
)
def h493_sword_forging_adam_v(ctx) -> None:
    gen = seeded(4940)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ups = []
    prev = {}

    def before(step):
        prev["w"] = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()

    def after(step, loss):
        w = torch.cat([p.detach().flatten() for p in model.parameters()])
        ups.append(float((w - prev["w"]).norm()))

    def backprop(step, loss):
        return loss * (1e6 if step == SWORD_ONSET else 1.0)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4940),
        200,
        F.mse_loss,
        before=before,
        after=after,
        backprop=backprop,
    )
    ctx.check(
        "the gradient at the onset over 1e4x the median",
        norms[SWORD_ONSET] > 1e4 * _median(norms[SWORD_ONSET - 20 : SWORD_ONSET]),
    )
    ctx.check(
        "updates 30-120 steps after are under 0.1x those before",
        _mean(ups[SWORD_ONSET + 30 : SWORD_ONSET + 120])
        < 0.1 * _mean(ups[SWORD_ONSET - 30 : SWORD_ONSET]),
    )
    ctx.check(
        "the loss was falling before the onset",
        _mean(losses[SWORD_ONSET - 10 : SWORD_ONSET]) < 0.8 * _mean(losses[:10]),
    )
    ctx.check(
        "the loss stalls (last 10 over 0.8x the 10 after the onset)",
        _mean(losses[-10:]) > 0.8 * _mean(losses[SWORD_ONSET + 1 : SWORD_ONSET + 11]),
    )
    ctx.check("finite", _finite(losses))


# -- 11. healthy: a warm-up from 1e-6 over 100 steps -----------------------------------------------


@scenario(
    family="step_dancing_tap_pattern_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Step-dancing tap-pattern classifier (GELU MLP on heel/toe tap timings and loudness, "
    "six step classes, cross-entropy, Adam). The lr warms up geometrically from 1e-6 to 3e-3 "
    "over 100 steps, then decays on a cosine: the loss barely moves for the first 50 steps, "
    "then falls.",
)
def h493_step_dancing_slow_warmup(ctx) -> None:
    gen = seeded(4941)
    model = _Net(16, 48, 6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    total = 240

    def factor(s):
        if s < 100:
            return math.exp(math.log(1e-6 / 3e-3) * (1 - s / 100))
        return 0.5 * (1 + math.cos(math.pi * (s - 100) / (total - 100)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 4941, spread=1.5),
        total,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    ctx.check(
        "the loss barely moves over the first 50 steps (under 5%)",
        abs(_mean(losses[45:50]) - _mean(losses[:5])) < 0.05 * _mean(losses[:5]),
    )
    ctx.check("it trained (last 10 under 0.5x the first 10)", _fell(losses, ratio=0.5))


# -- 12. healthy: fp16 autocast + GradScaler Conv1d classifier -------------------------------------


class _PebbleNet(nn.Module):
    def __init__(self, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, dilation=1)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _pebble_falls(gen, batch=32, length=64, classes=4):
    """Rain-stick recordings: pebble clicks at a class-dependent rate and decay, in noise."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = 0.08 + 0.08 * y.float()
        clicks = (torch.rand(batch, length, generator=gen) < rate[:, None]).float()
        env = torch.exp(-t / (20 + 10 * y.float()[:, None]))
        yield clicks * env + 0.1 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="rain_stick_pebble_fall_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Rain-stick pebble-fall classifier (ReLU Conv1d on generated click recordings, four "
    "cactus-spine densities, cross-entropy with label smoothing 0.1, AdamW, OneCycleLR, fp16 "
    "autocast with a GradScaler, clipping at 1).",
)
def h493_rain_stick_fp16(ctx) -> None:
    gen = seeded(4942)
    model = _PebbleNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _pebble_falls(gen)
    losses, scales = [], []
    for _step in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        scales.append(float(scaler.get_scale()))
        ctx.scales.append(scales[-1])
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("it trained (last 10 under 0.7x the first 10, finite)", _fell(losses))
    ctx.check("the scaler's scale never fell below 1/16 of its start", min(scales) >= 2.0**6)


# -- 13. healthy: Gaussian NLL, two param groups, ReduceLROnPlateau, accumulation 2 ---------------


class _ReboundNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp(), eps=1e-4)


@scenario(
    family="pelota_vasca_wall_rebound_gaussian_nll_net",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Pelota-vasca wall-rebound distance net (SiLU MLP with mean and log-variance heads on "
    "ball speed, spin and wall-zone features, Gaussian NLL, RAdam with the trunk and heads in "
    "two param groups, ReduceLROnPlateau, gradient accumulation 2, clipping at 5).",
)
def h493_pelota_vasca_gaussian_nll(ctx) -> None:
    gen = seeded(4943)
    model = _ReboundNet()
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    heads = list(model.mean.parameters()) + list(model.log_var.parameters())
    opt = torch.optim.RAdam([{"params": trunk, "lr": 1e-2}, {"params": heads, "lr": 5e-3}])
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=40)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 9, 4943, noise=0.2),
        200,
        _gauss_nll,
        sched=sched,
        accumulate=2,
        clip=5.0,
    )
    ctx.check("finite", _finite(losses))
    ctx.check(
        "it trained (last 10 at least 0.5 nats under the first 10)",
        _mean(losses[-10:]) < _mean(losses[:10]) - 0.5,
    )
