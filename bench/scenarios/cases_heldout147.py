"""Held-out set 147 (``h147_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before, with three small hand-written transformers (a hand softmax
over q.k scores, ``scaled_dot_product_attention`` and ``nn.MultiheadAttention``) and a ReLU RNN.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs (a transformer with warm-up, AdamW and clipping, a conv net under fp16
autocast with a GradScaler, a full-batch Rprop regressor with a Huber loss, an LSTM with gradient
accumulation and ReduceLROnPlateau on noisy batches).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    alter=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    forward=None,
    watch=None,
):
    """Train with the monitor attached: ``accumulate`` micro-batches per step, ``alter(step, x,
    y)`` changes a batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records."""
    ctx.attach(model, opt, scaler=scaler)
    forward = forward or (lambda m, x: m(x))
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = forward(model, x)
            if watch is not None:
                watch(step, out, x, y)
            loss = loss_fn(out.float(), y) / accumulate
            if scaler is not None:
                scaler.scale(loss).backward()
            else:
                loss.backward()
            shown += float(loss.detach())
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
                sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break


# -- change ringing: a bell-order transformer whose attention lost its 1/sqrt(d) -----------------


class RingingAttention(nn.Module):
    """Single-head attention with a hand-written softmax over q.k scores."""

    def __init__(self, dim, scaled=True):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        for lin in (self.q, self.k):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        self.scale = 1.0 / math.sqrt(dim) if scaled else 1.0
        self.last_max = 0.0

    def forward(self, x):
        scores = self.q(x) @ self.k(x).transpose(1, 2) * self.scale
        self.last_max = float(scores.detach().abs().max())
        w = torch.exp(scores - scores.amax(-1, keepdim=True))
        return (w / w.sum(-1, keepdim=True)) @ self.v(x)


class ChangeRingingNet(nn.Module):
    """Reads a row of bell strikes after a query bell and names the place the query bell struck."""

    def __init__(self, bells=8, dim=32, scaled=True):
        super().__init__()
        self.bell = nn.Embedding(2 * bells, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(8, dim))
        self.ln = nn.LayerNorm(dim)
        self.attn = RingingAttention(dim, scaled)
        self.ln2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, bells - 1)

    def forward(self, x):
        h = self.bell(x) + self.pos
        h = h + self.attn(self.ln(h))
        return self.head(self.ln2(h[:, 0]))


def _rows(gen, batch, bells=8):
    """A query token (which bell?) then a row of the bells in struck order; the label is the
    place the queried bell struck in."""
    while True:
        rows = torch.argsort(torch.rand(batch, bells - 1, generator=gen), 1)
        place = torch.randint(0, bells - 1, (batch,), generator=gen)
        query = rows[torch.arange(batch), place] + bells
        yield torch.cat([query[:, None], rows], 1), place


@scenario(
    family="change_ringing_bell_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with a hand-written softmax over q.k scores. The attention "
    "was rewritten by hand and the 1/sqrt(d) factor left out, and its q/k projections sit in "
    "a param group with weight decay 0 and lr 3e-2 (typed for 3e-3; the group was meant for "
    "biases and norms only): the raw q.k scores grow from about 0.1 to over 100.",
)
def h147_change_ringing_qk_scale(ctx: Context) -> None:
    gen = seeded(14701)
    model = ChangeRingingNet(scaled=False)
    qk = [*model.attn.q.parameters(), *model.attn.k.parameters()]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": qk, "lr": 3e-2, "weight_decay": 0.0}, {"params": rest, "lr": 3e-3}],
        weight_decay=0.05,
    )
    seen = []
    _loop(
        ctx,
        model,
        opt,
        _rows(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 20x", seen[-1] > 20 * seen[0])
    ctx.check("attention logits above 50", seen[-1] > 50)


# -- sitar raga recogniser: nll_loss on the raw logits (the log_softmax was dropped) -------------


class RagaBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.ln2(x))


class SitarRagaNet(nn.Module):
    """Names the raga (6 classes) of a 24-note phrase of 12 swaras."""

    def __init__(self, notes=12, ragas=6, dim=32, length=24):
        super().__init__()
        self.note = nn.Embedding(notes, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.block = RagaBlock(dim, 2)
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, ragas)

    def forward(self, x):
        h = self.block(self.note(x) + self.pos)
        return self.head(self.ln_f(h.mean(1)))


def _phrases(gen, batch, notes=12, ragas=6, length=24):
    """Each raga is a Markov chain over the swaras with its own favoured steps."""
    trans = torch.softmax(3 * torch.randn(ragas, notes, notes, generator=gen), -1)
    while True:
        y = torch.randint(0, ragas, (batch,), generator=gen)
        x = torch.empty(batch, length, dtype=torch.long)
        x[:, 0] = torch.randint(0, notes, (batch,), generator=gen)
        for t in range(1, length):
            x[:, t] = torch.multinomial(trans[y, x[:, t - 1]], 1, generator=gen).squeeze(1)
        yield x, y


@scenario(
    family="sitar_raga_transformer",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A one-block transformer (scaled_dot_product_attention) classifying ragas. The loss "
    "was switched from cross_entropy to nll_loss to add class weights, and the log_softmax "
    "in front of it was forgotten: nll_loss on raw logits is -logit[target], unbounded below, "
    "so RAdam pushes the head's logits up without end and the 'loss' falls below zero.",
)
def h147_sitar_raga_raw_nll(ctx: Context) -> None:
    gen = seeded(14702)
    model = SitarRagaNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    seen = []
    _loop(
        ctx,
        model,
        opt,
        _phrases(gen, 32),
        250,
        F.nll_loss,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(float(o.detach().abs().max())),
    )
    ctx.check("head logits grew 20x", seen[-1] > 20 * seen[0])
    ctx.check("head logits still growing at the end", seen[-1] > 1.2 * seen[-50])
    ctx.check("the loss went below zero", ctx.losses[-1] < 0)


# -- hammer throw distance: plain SGD at lr 0.8 (typed for 0.08) ---------------------------------


class HammerThrowNet(nn.Module):
    """Predicts the throw distance from the turn speeds, release angle and wire length."""

    def __init__(self, n_in=12, width=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.body(x))


def _throws(gen, batch, n_in=12):
    w = torch.randn(n_in, 1, generator=gen) / math.sqrt(n_in)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = 2.0 * torch.tanh(x @ w) + 0.3 * (x[:, :1] * x[:, 1:2])
        yield x, y + 0.05 * torch.randn(batch, 1, generator=gen)


@scenario(
    family="hammer_throw_distance_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=36,
    note="Plain SGD on an MSE regressor with a linear warm-up over 80 steps to a peak learning "
    "rate typed 0.8 for 0.08. The loss falls while the rate is small; once the warm-up takes "
    "it past 2/sharpness (around 0.35) the loss oscillates and blows up.",
)
def h147_hammer_throw_lr_typo(ctx: Context) -> None:
    gen = seeded(14703)
    model = HammerThrowNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.8)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 80))
    _loop(ctx, model, opt, _throws(gen, 64), 150, F.mse_loss, sched=sched)
    ctx.check("the loss fell first (warm-up)", min(ctx.losses[:30]) < 0.3 * ctx.losses[0])
    ctx.check(
        "loss blew up (non-finite or 100x its start)",
        not _finite(ctx.losses) or max(ctx.losses) > 100 * ctx.losses[0],
    )


# -- fiddle vibrato: an IRNN whose identity recurrent init was scaled 1.1 ------------------------


class FiddleVibratoIRNN(nn.Module):
    """Unrolls a ReLU RNN cell over a 40-frame pitch trace and regresses the vibrato rate."""

    def __init__(self, hidden=32):
        super().__init__()
        self.cell = nn.RNNCell(2, hidden, nonlinearity="relu")
        self.head = nn.Linear(hidden, 1)
        self.states: list[torch.Tensor] = []

    def forward(self, x, keep=False):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if keep:
                h.retain_grad()
                self.states.append(h)
        return self.head(h)


def _vibrato(gen, batch, frames=40):
    t = torch.arange(frames, dtype=torch.float32)
    while True:
        rate = 0.1 + 0.3 * torch.rand(batch, 1, generator=gen)
        depth = 0.5 + torch.rand(batch, 1, generator=gen)
        pitch = depth * torch.sin(2 * math.pi * rate * t / 4)
        x = torch.stack([pitch, 0.05 * torch.randn(batch, frames, generator=gen)], -1)
        yield x, 10 * rate


@scenario(
    family="fiddle_vibrato_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell",),
    diverges="auto",
    heldout=True,
    note="A ReLU RNN (IRNN) over 40 frames, SGD with momentum 0.9 and an MSE loss. The IRNN "
    "init sets the recurrent weight to the identity times a 'gain' that was left at 1.25 from a "
    "sweep instead of 1.0: the gradient through time grows by about 1.1 per frame, the "
    "gradient at the first frame's state is over 20 times that at the last, and within a few "
    "SGD steps the loss blows up.",
)
def h147_fiddle_vibrato_irnn_gain(ctx: Context) -> None:
    gen = seeded(14704)
    model = FiddleVibratoIRNN()
    with torch.no_grad():
        model.cell.weight_hh.copy_(1.1 * torch.eye(model.cell.hidden_size))
        model.cell.bias_hh.zero_()
        model.cell.bias_ih.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    batches = _vibrato(gen, 32)
    x0, y0 = next(batches)
    F.mse_loss(model(x0, keep=True), y0).backward()
    first = float(model.states[0].grad.norm())
    last = float(model.states[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    _loop(ctx, model, opt, batches, 150, F.mse_loss)
    ctx.check("gradient at frame 0's state is 20x that at the last frame's", first > 20 * last)
    ctx.check(
        "loss blew up (non-finite or 100x its start)",
        not _finite(ctx.losses) or max(ctx.losses) > 100 * ctx.losses[0],
    )


# -- dressage test scorer: masked mean pooling divides by zero for a scratched entry --------------


class MaskedMeanPool(nn.Module):
    """Mean of the movement states over the non-padding positions (no clamp on the count)."""

    def forward(self, h, mask):
        m = mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)


class DressageScorer(nn.Module):
    """Scores a dressage test (percent / 10) from its sequence of judged movements."""

    def __init__(self, movements=20, marks=11, dim=32, length=16):
        super().__init__()
        self.move = nn.Embedding(movements, dim, padding_idx=0)
        self.mark = nn.Embedding(marks, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.attn = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.ln = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.pool = MaskedMeanPool()
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        moves, marks = x[..., 0], x[..., 1]
        h = self.move(moves) + self.mark(marks) + self.pos
        a, _ = self.attn(h, h, h, need_weights=False)
        h = self.ln(h + a)
        h = h + self.ff(h)
        return self.head(self.pool(h, moves != 0))


def _tests(gen, batch, length=16, movements=20):
    while True:
        n = torch.randint(8, length + 1, (batch,), generator=gen)
        keep = torch.arange(length)[None] < n[:, None]
        moves = torch.randint(1, movements, (batch, length), generator=gen) * keep
        marks = torch.randint(4, 11, (batch, length), generator=gen) * keep
        score = marks.float().sum(1, keepdim=True) / n[:, None]
        yield torch.stack([moves, marks], -1), score


@scenario(
    family="dressage_test_scorer_transformer",
    optimizer="SGD",
    cause="nonfinite",
    where=("pool",),
    diverges=90,
    onset=90,
    heldout=True,
    note="A transformer encoder (nn.MultiheadAttention) with masked mean pooling, SGD with "
    "Nesterov momentum and a Huber loss. At step 90 the batch holds a scratched entry whose "
    "test has no judged movements (all padding); the pooling divides the masked sum by the "
    "count with no clamp, 0/0 gives NaN, and the loss is NaN.",
)
def h147_dressage_scratched_entry(ctx: Context) -> None:
    gen = seeded(14705)
    model = DressageScorer()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def scratched(step, x, y):
        if step == 90:
            x = x.clone()
            x[3] = 0
        return x, y

    _loop(ctx, model, opt, _tests(gen, 32), 150, F.huber_loss, alter=scratched)
    ctx.check("finite before step 90", _finite(ctx.losses[:90]))
    ctx.check("loss is NaN at step 90", len(ctx.losses) == 91 and math.isnan(ctx.losses[90]))
    ctx.check("the loss fell before the fault", _mean(ctx.losses[80:90]) < 0.8 * ctx.losses[0])


# -- clarinet reed grader: a distillation temperature applied the wrong way round -----------------


class ClarinetReedGrader(nn.Module):
    """Grades a cane reed (5 strengths) from 16 flex and tip-thickness readings."""

    def __init__(self, n_in=16, width=48, grades=5, temperature=1.0):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, width))
        self.act = nn.Tanh()
        self.head = nn.Linear(width, grades)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act(self.body(x))) / self.temperature


def _clusters(gen, n_in, classes, batch, spread=1.0):
    centres = torch.randn(classes, n_in, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, n_in, generator=gen), y


@scenario(
    family="clarinet_reed_grader",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="An MLP trained with Adagrad and cross-entropy. The config's temperature 0.01 was "
    "meant for the soft targets of a later distillation run but the model divides its logits "
    "by it from the start: the float32 softmax rounds the target's probability to exactly 1.0 "
    "on most rows, which then give no gradient, while the misclassified rows give huge ones.",
)
def h147_clarinet_reed_temperature(ctx: Context) -> None:
    gen = seeded(14706)
    model = ClarinetReedGrader(temperature=0.01)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = []
    _loop(
        ctx,
        model,
        opt,
        _clusters(gen, 16, 5, 64, spread=1.2),
        150,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("under 10% of rows collapsed at the start", seen[0] < 0.1)
    ctx.check("over 60% of rows' softmax exactly 1.0 at its peak", max(seen) > 0.6)
    ctx.check("over 35% still collapsed over the last 30 steps", _mean(seen[-30:]) > 0.35)


# -- trombone slide position: Adamax at a learning rate typed 100x too large kills the ReLUs ------


class TromboneSlideNet(nn.Module):
    """Names the slide position (7) from the 24 harmonic amplitudes of a note."""

    def __init__(self, n_in=24, width=64, positions=7):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.head = nn.Linear(width, positions)

    def forward(self, x):
        return self.head(self.body(x))


@scenario(
    family="trombone_slide_position_mlp",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("body.2", "body.3"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP trained with Adamax; the learning rate was typed 0.5 for 0.005. Adamax "
    "moves every weight and bias by about the learning rate per step, the second layer's "
    "units are pushed negative on every input and die (two thirds of them for good), and the "
    "loss stays high.",
)
def h147_trombone_slide_dead_relu(ctx: Context) -> None:
    gen = seeded(14707)
    model = TromboneSlideNet()
    opt = torch.optim.Adamax(model.parameters(), lr=0.5)
    seen = []
    _loop(
        ctx,
        model,
        opt,
        _clusters(gen, 24, 7, 64, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(dead_fraction(model.body[:4](x).detach())),
    )
    ctx.check("under 10% of units dead at the start", seen[0] < 0.1)
    ctx.check(
        "over half the second layer's units dead all of the last 50 steps", min(seen[-50:]) > 0.5
    )
    ctx.check("loss stayed high", _mean(ctx.losses[-20:]) > 0.5)


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# -- monsoon onset forecaster: the encoder's param group got lr 1e-7 for 1e-3 ---------------------


class MonsoonOnsetNet(nn.Module):
    """Forecasts the monsoon onset day from 30 days of sea-surface, wind and humidity anomalies."""

    def __init__(self, n_in=30 * 3, width=64):
        super().__init__()
        self.encoder = nn.Linear(n_in, width)
        self.act = nn.GELU()
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.act(self.mix(self.act(self.encoder(x)))))


def _anomalies(gen, batch, n_in=90):
    w = torch.randn(n_in, 4, generator=gen) / math.sqrt(n_in)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        z = x @ w
        y = torch.tanh(z[:, :1]) + 0.5 * z[:, 1:2] * z[:, 2:3] - 0.3 * torch.sin(2 * z[:, 3:])
        yield x, y + 0.05 * torch.randn(batch, 1, generator=gen)


@scenario(
    family="monsoon_onset_forecaster",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("encoder",),
    diverges=None,
    heldout=True,
    note="NAdam with two param groups: a fine-tuning recipe gives the pretrained encoder its own "
    "learning rate, typed 1e-7 for 1e-3 in the config. The encoder's weights move by about a "
    "millionth of their size per step while the rest learn; the loss creeps down only through "
    "the upper layers.",
)
def h147_monsoon_encoder_lr_typo(ctx: Context) -> None:
    gen = seeded(14708)
    model = MonsoonOnsetNet()
    enc = list(model.encoder.parameters())
    ids = {id(p) for p in enc}
    opt = torch.optim.NAdam(
        [
            {"params": enc, "lr": 1e-7},
            {"params": [p for p in model.parameters() if id(p) not in ids], "lr": 1e-3},
        ]
    )
    w_enc = model.encoder.weight.detach().clone()
    w_mix = model.mix.weight.detach().clone()
    _loop(ctx, model, opt, _anomalies(gen, 64), 200, F.mse_loss)
    enc_move = float((model.encoder.weight.detach() - w_enc).norm() / w_enc.norm())
    mix_move = float((model.mix.weight.detach() - w_mix).norm() / w_mix.norm())
    ctx.check("encoder weights moved under 1e-3 of their norm in 200 steps", enc_move < 1e-3)
    ctx.check("the next layer moved 1000x more", mix_move > 1000 * enc_move)
    ctx.check("finite", _finite(ctx.losses))


# -- soap saponification: a one-step loss-weight bug poisons Adam's second moment -----------------


class SaponificationNet(nn.Module):
    """Regresses the cure hardness of a soap batch from its oil blend, lye ratio and water."""

    def __init__(self, n_in=14, width=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_in, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU()
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.body(x))


def _soap(gen, batch, n_in=14):
    w = torch.randn(n_in, 3, generator=gen) / math.sqrt(n_in)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        z = x @ w
        y = torch.sin(1.5 * z[:, :1]) + z[:, 1:2] * z[:, 2:3]
        yield x, y + 0.05 * torch.randn(batch, 1, generator=gen)


@scenario(
    family="soap_saponification_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="Adam (beta2 0.999) on an MSE regressor. A loss-weight schedule meant to bring in an "
    "auxiliary term at step 60 multiplies the main loss by 3e4 for that one step (the weight "
    "was read in the wrong unit): one giant gradient fills the second moment, which takes "
    "hundreds of steps to decay, and the updates afterwards are a hundredth of their size.",
)
def h147_soap_one_step_weight(ctx: Context) -> None:
    gen = seeded(14709)
    model = SaponificationNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    weight = {"w": 1.0}
    moves = []
    prev = {"p": _flat(model)}

    def before(step):
        weight["w"] = 3e4 if step == 60 else 1.0
        now = _flat(model)
        if step > 0:
            moves.append(float((now - prev["p"]).norm()))
        prev["p"] = now

    _loop(
        ctx,
        model,
        opt,
        _soap(gen, 64),
        200,
        lambda o, y: weight["w"] * F.mse_loss(o, y),
        before=before,
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 60 is 1000x the median before", g[60] > 1000 * sorted(g[:60])[30])
    # moves[k] is the update of step k
    ctx.check(
        "updates 30-100 steps after are under 1/20 of those before",
        _mean(moves[90:160]) < _mean(moves[30:60]) / 20,
    )
    ctx.check("finite", _finite(ctx.losses))


# -- vinegar acidity: one shard logged acetic acid in mg/L instead of g/L -------------------------


class VinegarAcidityNet(nn.Module):
    """Predicts a vinegar's acetic acid (g/L) from fermentation-day readings."""

    def __init__(self, n_in=18, width=48):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(n_in, width), nn.ELU(), nn.Linear(width, width))
        self.act = nn.ELU()
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.act(self.body(x)))


@scenario(
    family="vinegar_acidity_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="RMSprop on an MSE regressor. The batch at step 80 comes from a shard whose labels "
    "were logged in mg/L instead of g/L (1000x): that one batch's loss is a million times the "
    "others and its gradient dwarfs the rest; the run recovers afterwards.",
)
def h147_vinegar_mg_shard(ctx: Context) -> None:
    gen = seeded(14710)
    model = VinegarAcidityNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)

    def shard(step, x, y):
        return (x, y * 1000) if step == 80 else (x, y)

    w = torch.randn(18, 2, generator=gen) / math.sqrt(18)

    def readings():
        while True:
            x = torch.randn(64, 18, generator=gen)
            z = x @ w
            yield x, 5 + torch.tanh(z[:, :1]) + 0.5 * z[:, 1:] ** 2

    _loop(ctx, model, opt, readings(), 200, F.mse_loss, alter=shard)
    ls = ctx.losses
    before = sorted(ls[60:80])[10]
    ctx.check("loss at step 80 is 1000x the median before", ls[80] > 1000 * before)
    ctx.check(
        "gradient at step 80 is 100x the median before",
        ctx.grad_norms[80] > 100 * sorted(ctx.grad_norms[60:80])[10],
    )
    ctx.check("finite", _finite(ls))


# -- tanning: a hide-weight regressor sums patch masses into grams inside fp16 autocast ----------


class HideWeightNet(nn.Module):
    """Weighs a tanned hide: a patch net gives each of 48 patches' mass in kg, converted to grams
    and summed by a fixed all-ones linear layer."""

    def __init__(self, patches=48, width=32):
        super().__init__()
        self.patch = nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 1))
        self.pool = nn.Linear(patches, 1, bias=False)
        nn.init.ones_(self.pool.weight)
        self.pool.weight.requires_grad_(False)
        self.last_pool = torch.zeros(1)

    def forward(self, x):
        grams = 1000.0 * self.patch(x).squeeze(-1)
        out = self.pool(grams)
        self.last_pool = out.detach()
        return out


def _hides(gen, batch, patches=48):
    while True:
        thick = (
            0.5
            + torch.rand(batch, 1, generator=gen)
            + 0.1 * torch.rand(batch, patches, generator=gen)
        )
        area = 0.5 + torch.rand(batch, patches, generator=gen)
        fat = torch.rand(batch, patches, generator=gen)
        x = torch.stack([thick, area, fat], -1)
        y = 1000.0 * (thick * area * (1.0 - 0.2 * fat)).sum(1, keepdim=True)
        yield x, y


@scenario(
    family="tanned_hide_weight_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("pool",),
    diverges="auto",
    heldout=True,
    note="AdamW under fp16 autocast with a GradScaler. The labels are hide weights in grams "
    "(20-100 kg) and the model converts its patch masses to grams and sums them with a linear "
    "layer inside the autocast region: once it learns the heavy hides, their sums pass fp16's "
    "65504, the forward gives inf and the loss is inf (the GradScaler only skips the steps).",
)
def h147_tanned_hide_fp16_grams(ctx: Context) -> None:
    gen = seeded(14711)
    model = HideWeightNet()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    _loop(ctx, model, opt, _hides(gen, 32), 300, F.mse_loss, scaler=scaler)
    ls = ctx.losses
    ctx.check("finite for the first 20 steps", _finite(ls[:20]))
    ctx.check("the loss went inf", not _finite(ls))
    ctx.check("the fp16 pooled output holds inf", bool(torch.isinf(model.last_pool).any()))
    ctx.check("it is fp16", model.last_pool.dtype == torch.float16)


# -- cello intonation: the resume picked 'ckpt_5' over 'ckpt_120' (sorted as strings) -----------


class CelloIntonationNet(nn.Module):
    """Regresses a note's intonation error (cents) from finger position and string features."""

    def __init__(self, n_in=20, width=64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh()
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.body(x))


@scenario(
    family="cello_intonation_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Adam on an MSE regressor. The job is pre-empted and resumed at step 120; the resume "
    "code picks the 'latest' checkpoint by sorting file names as strings, so 'ckpt_5' wins "
    "over 'ckpt_120' and the weights of step 5 come back (the optimizer keeps its state). The "
    "loss jumps back to its early level and the run recovers; no gradient burst, no bad data.",
)
def h147_cello_resume_sorted_names(ctx: Context) -> None:
    gen = seeded(14712)
    model = CelloIntonationNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    saved = {}

    def before(step):
        if step == 5:
            saved["ckpt_5"] = {k: v.clone() for k, v in model.state_dict().items()}
        if step == 120:
            latest = sorted(["ckpt_5", "ckpt_120"])[-1]
            model.load_state_dict(saved[latest])

    _loop(ctx, model, opt, _throws(gen, 64, n_in=20), 260, F.mse_loss, before=before)
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[105:120])
    ctx.check("loss at step 120 is 3x the 15 steps before", ls[120] > 3 * pre)
    ctx.check("recovered: last 20 steps under 1.5x the level before", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check("no gradient burst: step 120 under 20x the median", g[120] < 20 * sorted(g)[130])


# -- healthy: an ocarina fingering LM, tied embeddings, warm-up + cosine, clipping, AdamW ---------


class OcarinaAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)
        w = torch.softmax(scores.masked_fill(causal, float("-inf")), -1)
        return self.proj((w @ v).transpose(1, 2).reshape(b, t, d))


class OcarinaFingeringLM(nn.Module):
    """Predicts the next fingering (16 hole patterns) of an ocarina tune; tied embeddings."""

    def __init__(self, vocab=16, dim=32, length=20):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        nn.init.normal_(self.emb.weight, std=0.1)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = OcarinaAttention(dim, 4)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, x):
        h = self.emb(x) + self.pos[: x.shape[1]]
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.ln_f(h) @ self.emb.weight.T


def _tunes(gen, batch, vocab=16, length=21):
    trans = torch.softmax(2.5 * torch.randn(vocab, vocab, generator=gen), -1)
    while True:
        x = torch.empty(batch, length, dtype=torch.long)
        x[:, 0] = torch.randint(0, vocab, (batch,), generator=gen)
        for t in range(1, length):
            x[:, t] = torch.multinomial(trans[x[:, t - 1]], 1, generator=gen).squeeze(1)
        yield x[:, :-1], x[:, 1:]


@scenario(
    family="ocarina_fingering_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A causal transformer (hand softmax over scaled q.k, tied embeddings) trained with "
    "AdamW, 20 warm-up steps then cosine decay, clipping at 1.0 and label smoothing 0.05.",
)
def h147_ocarina_lm_healthy(ctx: Context) -> None:
    gen = seeded(14713)
    model = OcarinaFingeringLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)

    def lr_at(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    _loop(
        ctx,
        model,
        opt,
        _tunes(gen, 32),
        200,
        lambda o, y: F.cross_entropy(o.reshape(-1, 16), y.reshape(-1), label_smoothing=0.05),
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses))


# -- healthy: a snare-drum stroke tagger, fp16 autocast + GradScaler, OneCycleLR, BCE ------------


class SnareStrokeCNN(nn.Module):
    """Tags which drums sound in a 128-sample clip (snare, kick, hi-hat: multi-label)."""

    def __init__(self, width=16, labels=3):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, stride=2)
        self.norm = nn.GroupNorm(4, width)
        self.head = nn.Linear(width, labels)

    def forward(self, x):
        h = F.relu(self.conv1(x.unsqueeze(1)))
        h = F.relu(self.norm(self.conv2(h)))
        return self.head(h.mean(-1))


def _clips(gen, batch, n=128):
    t = torch.arange(n, dtype=torch.float32)
    env = torch.exp(-t / 20)
    while True:
        y = (torch.rand(batch, 3, generator=gen) < 0.5).float()
        snare = torch.randn(batch, n, generator=gen) * env
        kick = torch.sin(2 * math.pi * 0.03 * t) * env
        hat = torch.sign(torch.sin(2 * math.pi * 0.4 * t)) * torch.exp(-t / 5)
        x = y[:, :1] * snare + y[:, 1:2] * kick + y[:, 2:] * hat
        yield x + 0.1 * torch.randn(batch, n, generator=gen), y


@scenario(
    family="snare_drum_stroke_cnn",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="A 1-d conv net with GroupNorm tagging drums (BCE with logits), SGD with Nesterov "
    "momentum and OneCycleLR, under fp16 autocast with a GradScaler.",
)
def h147_snare_fp16_healthy(ctx: Context) -> None:
    gen = seeded(14714)
    model = SnareStrokeCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=150)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _clips(gen, 32),
        150,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        scaler=scaler,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("the scaler kept a scale of at least 1", min(ctx.scales) >= 1.0)


# -- healthy: a xylophone bar tuner, full-batch Rprop with a Huber loss ---------------------------


class XylophoneBarTuner(nn.Module):
    """Predicts how much to undercut a rosewood bar (mm) from its length, width, depth and
    measured pitch error."""

    def __init__(self, n_in=6, width=32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(n_in, width), nn.Softplus(), nn.Linear(width, width), nn.Softplus()
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.body(x))


@scenario(
    family="xylophone_bar_tuning_regressor",
    optimizer="Rprop",
    cause="healthy",
    heldout=True,
    note="Full-batch Rprop (the same 256 bars every step, as Rprop needs) with a Huber loss.",
)
def h147_xylophone_rprop_healthy(ctx: Context) -> None:
    gen = seeded(14715)
    model = XylophoneBarTuner()
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    x = torch.randn(256, 6, generator=gen)
    y = 0.8 * x[:, :1] - 0.5 * x[:, 1:2] * x[:, 2:3] + torch.sin(x[:, 3:4]) + 0.3
    y = y + 0.05 * torch.randn(256, 1, generator=gen)

    def full_batch():
        while True:
            yield x, y

    _loop(ctx, model, opt, full_batch(), 150, F.huber_loss)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.3))


# -- healthy: a kazoo buzz LSTM, Gaussian NLL, accumulation, ReduceLROnPlateau, noisy batches -----


class KazooBuzzLSTM(nn.Module):
    """Predicts the buzz pitch (mean and variance) of a kazoo from 24 frames of lip pressure."""

    def __init__(self, hidden=32):
        super().__init__()
        self.lstm = nn.LSTM(2, hidden, batch_first=True)
        self.mean = nn.Linear(hidden, 1)
        self.spread = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        h = out[:, -1]
        return torch.cat([self.mean(h), F.softplus(self.spread(h)) + 1e-3], -1)


def _buzz(gen, batch, frames=24):
    t = torch.arange(frames, dtype=torch.float32)
    while True:
        p = 0.5 + torch.rand(batch, 1, generator=gen)
        f = 0.05 + 0.1 * torch.rand(batch, 1, generator=gen)
        pressure = p * (1 + 0.3 * torch.sin(2 * math.pi * f * t))
        x = torch.stack([pressure, 0.2 * torch.randn(batch, frames, generator=gen)], -1)
        noise = (0.05 + 0.3 * torch.rand(batch, 1, generator=gen)) * torch.randn(
            batch, 1, generator=gen
        )
        yield x, 3 * p + 10 * f + noise


@scenario(
    family="kazoo_buzz_lstm",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="An LSTM giving a Gaussian (mean, variance) trained on its negative log-likelihood "
    "with Adam, two micro-batches accumulated per step, ReduceLROnPlateau, noisy labels.",
)
def h147_kazoo_lstm_healthy(ctx: Context) -> None:
    gen = seeded(14716)
    model = KazooBuzzLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _loop(
        ctx,
        model,
        opt,
        _buzz(gen, 32),
        150,
        lambda o, y: F.gaussian_nll_loss(o[:, :1], y, o[:, 1:]),
        sched=sched,
        accumulate=2,
    )
    ctx.check(
        "loss fell", _finite(ctx.losses) and _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.5
    )
