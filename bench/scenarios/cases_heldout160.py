"""Held-out set 160 (``h160_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: three hand-written transformers (a hand softmax over q.k,
``nn.MultiheadAttention`` and a weight-tied decoder-only language model through
``scaled_dot_product_attention``), a ResNet-style 2-D CNN with BatchNorm and skip connections, a
tanh RNN cell unrolled by hand, a two-head regressor, a Gaussian-NLL regressor, a 1-D conv net
under fp16 autocast with a GradScaler, an affine-coupling normalising flow, an actor-critic on
generated returns, a triplet-loss embedding net and plain MLPs.

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
    return s[len(s) // 2]


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


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
    sched=None,
    scaler=None,
    accumulate=1,
    watch=None,
    scale_loss=None,
    after=None,
):
    """The training loop: ``accumulate`` micro-batches a step, ``alter(step, x, y)`` changes a
    batch, ``before(step)`` runs first, ``watch(step, out, x, y)`` records, ``scale_loss(step,
    loss)`` changes the loss that is back-propagated, ``after(step)`` runs after the update."""
    probe_batch = next(batches)

    def probe_loss(m, b):
        return loss_fn(m(b[0]), b[1])

    ctx.attach(model, opt, probe=(probe_loss, probe_batch), scaler=scaler)
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


# -- yo-yo tricks: a hand-softmax transformer that lost its 1/sqrt(d) -----------------------------


class StringAttention(nn.Module):
    """Multi-head self-attention with a hand softmax over q.k scores; ``scale`` multiplies the
    scores. Records the largest |score| the softmax saw."""

    def __init__(self, dim, heads, scale):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = scale
        self.last_max = 0.0

    def forward(self, x):
        b, t, d = x.shape

        def split(z):
            return z.reshape(b, t, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = (q @ k.transpose(-1, -2)) * self.scale
        self.last_max = float(scores.detach().abs().amax())
        att = torch.softmax(scores, dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


class YoyoTrickNet(nn.Module):
    """Names the trick (trapeze, split the atom, brain twister, kwijibo) from 16 binned readings
    of string angle and hand position during a throw."""

    def __init__(self, levels=24, dim=32, length=16, tricks=4, heads=2, scale=None):
        super().__init__()
        self.level = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        hd = dim // heads
        self.attn = StringAttention(dim, heads, 1.0 / math.sqrt(hd) if scale is None else scale)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tricks)

    def forward(self, x):
        h = self.level(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.mlp(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _yoyo_throws(gen, batch, levels=24, length=16):
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        high = (x > 18).sum(1)
        low = (x < 5).sum(1)
        y = (x.argmax(1) < x.argmin(1)).long() * 2 + (high > low).long()
        yield x, y


@scenario(
    family="yoyo_trick_hand_attention_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with a hand softmax over q.k. When the attention was "
    "rewritten from scaled_dot_product_attention to a hand softmax (to log attention maps), "
    "the 1/sqrt(head_dim) factor was dropped (scale=1.0), and AdamW runs at lr 2e-2 with "
    "weight_decay 0: the q.k scores the softmax sees grow more than 10x over their first value, past 40.",
)
def h160_yoyo_trick_unscaled_scores(ctx: Context) -> None:
    gen = seeded(16001)
    model = YoyoTrickNet(scale=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _yoyo_throws(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention scores grew 10x", seen[-1] > 10 * seen[0])
    ctx.check("attention scores above 40", seen[-1] > 40)
    ctx.check("loss finite", _finite(ctx.losses))


# -- ice climbing: two judges' one-hot labels summed instead of averaged -------------------------


class AxePlacementNet(nn.Module):
    """Judges an ice-axe placement (holds, shears out, dinner-plates) from ten readings (ice
    temperature, pick angle, swing speed, ice thickness, ...) with one-vs-rest logits."""

    def __init__(self, inputs=10, hidden=48, outcomes=3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, outcomes)

    def forward(self, x):
        return self.head(self.body(x))


def _axe_placements(gen, batch, inputs=10, outcomes=3):
    w = torch.randn(inputs, outcomes, generator=torch.Generator().manual_seed(5))
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = (x @ w + 0.5 * torch.randn(batch, outcomes, generator=gen)).argmax(1)
        # the second judge disagrees on one placement in ten
        other = torch.randint(0, outcomes, (batch,), generator=gen)
        y2 = torch.where(torch.rand(batch, generator=gen) < 0.1, other, y)
        yield x, (y, y2)


@scenario(
    family="ice_climbing_axe_placement_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="One-vs-rest BCE-with-logits over three outcomes. The two judges' one-hot labels "
    "were merged by summing instead of averaging, so where they agree the target is 2.0: "
    "BCE against a target above 1 has no minimum (its gradient on that logit never drops "
    "below 1 in size), so with NAdam at lr 3e-3 the head's logits grow without bound (the "
    "logit norm grows more than 20x and is still growing at the end) while the loss runs "
    "negative.",
)
def h160_ice_climbing_summed_judges(ctx: Context) -> None:
    gen = seeded(16002)
    model = AxePlacementNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    norms = []

    def loss_fn(out, ys):
        y, y2 = ys
        target = F.one_hot(y, 3).float() + F.one_hot(y2, 3).float()
        return F.binary_cross_entropy_with_logits(out, target)

    batches = _axe_placements(gen, 64)

    def unpack(step, x, ys):
        ctx.targets(ys[0])
        return x, ys

    _train(
        ctx,
        model,
        opt,
        batches,
        220,
        loss_fn,
        alter=unpack,
        watch=lambda s, o, x, y: norms.append(float(o.detach().norm(dim=-1).mean())),
    )
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.3 * norms[-60])
    ctx.check("loss ran negative", ctx.losses[-1] < 0)


# -- fado guitar ornaments: a distillation temperature dividing the student's own logits ---------


class FadoOrnamentNet(nn.Module):
    """Names the ornament (trill, mordent, slide, vibrato, tremolo) in a phrase of 12 binned
    Portuguese-guitar notes, with ``nn.MultiheadAttention``."""

    def __init__(self, vocab=32, dim=32, length=12, ornaments=5, heads=4, temperature=1.0):
        super().__init__()
        self.note = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, ornaments)
        self.temperature = temperature

    def forward(self, x):
        h = self.note(x) + self.pos
        a = self.ln1(h)
        h = h + self.mha(a, a, a, need_weights=False)[0]
        h = h + self.ff(self.ln2(h))
        return self.head(h.mean(1)) / self.temperature


def _fado_phrases(gen, batch, vocab=32, length=12, ornaments=5):
    """Notes 5.. are plain; one ornament marker token (0..4) is planted in each phrase."""
    while True:
        x = torch.randint(ornaments, vocab, (batch, length), generator=gen)
        y = torch.randint(0, ornaments, (batch,), generator=gen)
        at = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), at] = y
        yield x, y


@scenario(
    family="fado_guitar_ornament_mha_transformer",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A one-block transformer through nn.MultiheadAttention. The model was built from the "
    "distillation config, whose temperature 0.02 (meant for the teacher's soft targets) "
    "divides the student's own logits in forward: once Adam (lr 5e-3) finds the planted "
    "ornament token, the float32 softmax rounds most targets' probabilities to exactly 1.0.",
)
def h160_fado_ornament_temperature(ctx: Context) -> None:
    gen = seeded(16003)
    model = FadoOrnamentNet(temperature=0.02)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    collapsed = []
    _train(
        ctx,
        model,
        opt,
        _fado_phrases(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: collapsed.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("half the targets' probabilities are exactly 1.0", _mean(collapsed[-20:]) > 0.5)
    ctx.check("few were at the start", collapsed[0] < 0.2)


# -- sailplane sink rate: CyclicLR with max_lr typed ten times too large --------------------------


class SinkRateNet(nn.Module):
    """Regresses a glider's sink rate from ten readings (airspeed, bank angle, flap setting,
    water ballast, ...)."""

    def __init__(self, inputs=10, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _polars(gen, batch, inputs=10):
    w = torch.randn(inputs, generator=torch.Generator().manual_seed(21)) / math.sqrt(inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = (
            0.8 * (x @ w) ** 2
            + 0.5 * torch.sin(2 * x[:, 0])
            + 0.1 * torch.randn(batch, generator=gen)
        )
        yield x, y


def _top_eigenvalue(model, loss_fn, batch, iters=20):
    """The largest Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(batch[0]), batch[1])
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="sailplane_sink_rate_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=22,
    note="A tanh MLP regressor, MSE, SGD momentum 0.9 under CyclicLR (triangular, step 100 up). "
    "max_lr was typed 0.8 for 0.08: as the cyclic rate climbs, lr times the loss's top "
    "Hessian eigenvalue (measured by power iteration in the run) passes the momentum-SGD "
    "stability limit 2(1+beta) around step 22 (lr about 0.17) and the loss then blows up.",
)
def h160_sailplane_cyclic_max_lr(ctx: Context) -> None:
    gen = seeded(16004)
    model = SinkRateNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    sched = torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=1e-3, max_lr=0.8, step_size_up=100, cycle_momentum=False
    )
    batches = _polars(gen, 128)
    fixed = next(_polars(torch.Generator().manual_seed(99), 512))
    lrs, edge = [], []

    def before(step):
        lr = opt.param_groups[0]["lr"]
        lrs.append(lr)
        if step % 2 == 0 and len(edge) < 40 and _finite(ctx.losses):
            lam = _top_eigenvalue(model, F.mse_loss, fixed)
            edge.append((step, lr * lam / (2 * (1 + 0.9))))

    _train(ctx, model, opt, batches, 160, F.mse_loss, sched=sched, before=before)
    crossed = next((s for s, r in edge if r > 1.0), None)
    losses = ctx.losses
    best = min(v for v in losses if math.isfinite(v))
    blew = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * best), None)
    ctx.check("lr x sharpness passed 2(1+beta)", crossed is not None)
    ctx.check("crossed near the written onset", crossed is not None and abs(crossed - 22) <= 6)
    ctx.check(
        "loss blew up 100x after the crossing",
        blew is not None and crossed is not None and blew > crossed,
    )
    ctx.check(
        "loss fell before the crossing",
        crossed is not None and min(losses[: crossed + 1]) < losses[0],
    )


# -- sea-cave blowhole: a recurrent matrix initialised at gain 2 --------------------------------


class BlowholeCell(nn.Module):
    """An Elman cell unrolled by hand: h' = tanh(inp(x) + rec(h))."""

    def __init__(self, inputs, hidden):
        super().__init__()
        self.inp = nn.Linear(inputs, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class BlowholeNet(nn.Module):
    """Forecasts a blowhole's spout pressure from 40 readings of incoming swell height,
    period and tide."""

    def __init__(self, inputs=3, hidden=48, gain=1.0):
        super().__init__()
        self.hidden = hidden
        self.cell = BlowholeCell(inputs, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _swells(gen, batch, length=40):
    while True:
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        t = torch.arange(length).float()
        height = torch.sin(0.4 * t + phase) + 0.3 * torch.randn(batch, length, generator=gen)
        period = 0.5 * torch.cos(0.1 * t + phase)
        tide = torch.rand(batch, 1, generator=gen).expand(batch, length)
        x = torch.stack([height, period, tide], -1)
        y = height[:, -5:].clamp(min=0).sum(1) * (0.5 + tide[:, 0])
        yield x, y


@scenario(
    family="sea_cave_blowhole_pressure_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.rec", "cell"),
    diverges="auto",
    heldout=True,
    note="A tanh Elman cell unrolled by hand over 40 swell readings, MSE, plain SGD lr 0.05 (at which the same cell at gain 1 trains). "
    "The init helper that sets the input projection's gain (2.0) was also applied to the "
    "recurrent matrix (orthogonal at gain 2 instead of 1): the recurrence is chaotic, the "
    "gradient reaching the first hidden state is over 100x the one at the last, and the "
    "updates blow the loss up by more than 1000x.",
)
def h160_blowhole_recurrent_gain(ctx: Context) -> None:
    gen = seeded(16051)
    model = BlowholeNet(gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    through = []

    def after(step):
        if step < 3:
            first, last = model.states[0].grad, model.states[-1].grad
            if first is not None and last is not None:
                through.append(float(first.norm() / (last.norm() + 1e-12)))

    _train(ctx, model, opt, _swells(gen, 32), 150, F.mse_loss, after=after)
    losses = ctx.losses
    best = min(v for v in losses if math.isfinite(v))
    ctx.check("gradient grew 100x back through time", bool(through) and max(through) > 100)
    ctx.check("loss blew up 1000x", _first_bad(losses) is not None or max(losses) > 1000 * best)
    ctx.check("and stayed up", _first_bad(losses) is not None or _mean(losses[-20:]) > 100 * best)


# -- wood lathe chatter: SGD's learning rate kept for RMSprop --------------------------------------


class LatheChatterNet(nn.Module):
    """Names the chatter (none, spiral, washboard, catch) from 16 spectral bins of tool-rest
    vibration while turning a bowl."""

    def __init__(self, bins=16, hidden=64, kinds=4):
        super().__init__()
        self.fc1 = nn.Linear(bins, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, kinds)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x))


def _chatter(gen, batch, bins=16, kinds=4):
    """Spectral magnitudes: non-negative."""
    centres = 3.0 + 1.5 * torch.randn(kinds, bins, generator=torch.Generator().manual_seed(31))
    while True:
        y = torch.randint(0, kinds, (batch,), generator=gen)
        yield (centres[y] + torch.randn(batch, bins, generator=gen)).clamp(min=0), y


@scenario(
    family="wood_lathe_chatter_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP classifier. The optimizer was switched from SGD to RMSprop but the config "
    "kept SGD's lr 0.2: RMSprop's first steps move every weight by about 10x the lr; the "
    "inputs (spectral magnitudes) are all non-negative, so once the weights are thrown "
    "negative over 80% of the first hidden layer's ReLUs (and many of the second's) never fire again on any input, the dead units "
    "get no gradient, and the classifier stalls well short of what the task allows.",
)
def h160_wood_lathe_rmsprop_sgd_lr(ctx: Context) -> None:
    gen = seeded(16006)
    model = LatheChatterNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=0.2)
    probe = next(_chatter(torch.Generator().manual_seed(77), 512))
    with torch.no_grad():
        dead0 = dead_fraction(model.act1(model.fc1(probe[0])))
    _train(ctx, model, opt, _chatter(gen, 64), 200, F.cross_entropy, classifier=True)
    with torch.no_grad():
        dead1 = dead_fraction(model.act1(model.fc1(probe[0])))
        acc = float((model(probe[0]).argmax(1) == probe[1]).float().mean())
    ctx.check("few units dead at the start", dead0 < 0.25)
    ctx.check("80% of the units dead at the end", dead1 > 0.8)
    ctx.check("the loss stalled: accuracy below 0.7", acc < 0.7)


# -- tatami weave defects: a ResNet whose head param group got the wrong key ----------------------


class WeaveBlock(nn.Module):
    """conv-BN-ReLU-conv-BN with an identity (or 1x1 conv + BN) skip."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class TatamiResNet(nn.Module):
    """Grades a 12x12 patch of igusa weave (sound, skipped weft, broken warp, stain)."""

    def __init__(self, width=12, classes=4):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.layer1 = WeaveBlock(width, width)
        self.layer2 = WeaveBlock(width, 2 * width, stride=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.relu(self.stem_bn(self.stem(x)))
        h = self.layer2(self.layer1(h))
        return self.head(h.mean((2, 3)))


def _weave_patches(gen, batch, size=12):
    i = torch.arange(size)
    plain = ((i[:, None] + i[None, :]) % 2).float()
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        x = plain.expand(batch, size, size).clone()
        r = torch.randint(1, size - 1, (batch,), generator=gen)
        for b in range(batch):
            if y[b] == 1:
                x[b, r[b]] = 1.0
            elif y[b] == 2:
                x[b, :, r[b]] = 0.0
            elif y[b] == 3:
                x[b, r[b] - 1 : r[b] + 2, r[b] - 1 : r[b] + 2] += 0.8
        x = x + 0.3 * torch.randn(batch, size, size, generator=gen)
        yield x[:, None], y


@scenario(
    family="tatami_weave_defect_resnet",
    optimizer="SGD",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ResNet-style 2-D CNN (BatchNorm, identity and 1x1-conv skips), label-smoothed "
    "cross-entropy, SGD Nesterov with three param groups: conv weights with weight decay "
    "5e-4, BatchNorm and biases without, and the new head. The head group's lr was filled "
    "from the config key 'head_eps' (5e-7) instead of 'head_lr' (0.05): over the whole "
    "run the head moves by under 1e-3 of its weights' size while the stem moves by over 10%, so "
    "the classifier stays near its random init and the loss falls only through the backbone.",
)
def h160_tatami_head_group_key(ctx: Context) -> None:
    gen = seeded(16007)
    model = TatamiResNet()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if name.startswith("head."):
            continue
        (no_decay if p.dim() == 1 else decay).append(p)
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": 5e-4},
            {"params": no_decay, "weight_decay": 0.0},
            {"params": model.head.parameters(), "lr": 5e-7, "weight_decay": 5e-4},
        ],
        lr=0.05,
        momentum=0.9,
        nesterov=True,
    )
    head0 = model.head.weight.detach().clone()
    stem0 = model.stem.weight.detach().clone()
    _train(
        ctx,
        model,
        opt,
        _weave_patches(gen, 32),
        120,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.05),
        classifier=True,
    )
    head_moved = float((model.head.weight.detach() - head0).norm() / head0.norm())
    stem_moved = float((model.stem.weight.detach() - stem0).norm() / stem0.norm())
    ctx.check("head moved under 1e-3 of its size", head_moved < 1e-3)
    ctx.check("stem moved over 0.1 of its size", stem_moved > 0.1)
    ctx.check("loss finite", _finite(ctx.losses))


# -- crossbow bolt drop: a unit conversion applied to the residual for one step -------------------


class BoltDropNet(nn.Module):
    """Regresses a bolt's drop (in metres) at the target from eight readings (draw weight,
    power stroke, bolt mass, range, wind, ...)."""

    def __init__(self, inputs=8, hidden=64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x):
        return self.net(x).squeeze(-1)


def _bolts(gen, batch, inputs=8):
    w = torch.randn(inputs, generator=torch.Generator().manual_seed(41)) / math.sqrt(inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = torch.tanh(x @ w) + 0.3 * x[:, 1] * x[:, 2] + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="crossbow_bolt_drop_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="A GELU MLP regressor, MSE, Adam (lr 1e-3, betas 0.9/0.999). At step 80 a config "
    "reload switched the report units to millimetres and the to_mm wrapper was applied to the "
    "residual inside the loss for that one step: the loss is 1e6x and its gradient over "
    "1e5x the usual. Adam's second moment keeps that square for thousands of steps (beta2 "
    "0.999), so every update afterwards is over 50x smaller than before and the loss "
    "stops falling.",
)
def h160_crossbow_mm_residual(ctx: Context) -> None:
    gen = seeded(16008)
    model = BoltDropNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves = []
    last = [_flat(model)]

    def loss_fn(out, y):
        return F.mse_loss(out, y)

    def scale_loss(step, loss):
        return loss * 1e6 if step == 80 else loss

    def after(step):
        now = _flat(model)
        moves.append(float((now - last[0]).norm()))
        last[0] = now

    _train(ctx, model, opt, _bolts(gen, 64), 220, loss_fn, scale_loss=scale_loss, after=after)
    g = ctx.grad_norms
    ctx.check("gradient 1e5x at step 80", g[80] > 1e5 * _median(g[40:80]))
    ctx.check("updates after are 50x smaller", _mean(moves[140:220]) < _mean(moves[40:80]) / 50)
    ctx.check(
        "loss stopped falling",
        _mean(ctx.losses[-20:]) > 0.8 * _mean(ctx.losses[100:120]),
    )


# -- beach volleyball serve speed: one shard recorded in millimetres ------------------------------


class ServeSpeedNet(nn.Module):
    """Regresses a jump serve's speed (in 100 km/h) from six readings (toss height, contact
    height, approach speed, jump height, arm swing, wind)."""

    def __init__(self, inputs=6, hidden=48):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.net(x)).squeeze(-1)


def _serves(gen, batch):
    base = torch.tensor([2.0, 2.9, 4.0, 0.7, 1.0, 0.0])
    spread = torch.tensor([0.5, 0.2, 0.8, 0.15, 0.2, 2.0])
    while True:
        x = base + spread * torch.randn(batch, 6, generator=gen)
        y = 0.3 * x[:, 1] + 0.1 * x[:, 2] + 0.5 * x[:, 3] - 0.02 * x[:, 5]
        yield x, y + 0.03 * torch.randn(batch, generator=gen)


@scenario(
    family="beach_volleyball_serve_speed_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="A ReLU MLP regressor, Huber loss, plain SGD lr 0.02 with clip_grad_norm_ 5. One "
    "tournament's shard, read at step 150, logged its heights (toss, contact, jump) in "
    "millimetres instead of metres: that batch's loss is over 20x the usual and its "
    "gradient (before clipping) over 50x; clipping bounds the update and the run recovers.",
)
def h160_beach_volleyball_mm_shard(ctx: Context) -> None:
    gen = seeded(16009)
    model = ServeSpeedNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)

    def alter(step, x, y):
        if step == 150:
            x = x.clone()
            x[:, [0, 1, 3]] *= 1000.0
        return x, y

    _train(ctx, model, opt, _serves(gen, 64), 260, F.smooth_l1_loss, alter=alter, clip=5.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss 20x at step 150", ls[150] > 20 * _median(ls[120:150]))
    ctx.check("gradient 50x at step 150", g[150] > 50 * _median(g[120:150]))
    ctx.check("recovered", _mean(ls[-20:]) < 2 * _mean(ls[130:150]) and _finite(ls))


# -- sled dog team: an auxiliary loss weight read in percent for one step --------------------------


class TeamPaceNet(nn.Module):
    """From twelve readings (trail temperature, snow depth, dog count, grade, ...) predicts a
    team's pace (one head) and whether the team will show fatigue on the next leg (another)."""

    def __init__(self, inputs=12, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.pace = nn.Linear(hidden, 1)
        self.fatigue = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.pace(h), self.fatigue(h)], -1)


def _legs(gen, batch, inputs=12):
    w = torch.randn(inputs, 2, generator=torch.Generator().manual_seed(51)) / math.sqrt(inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        z = x @ w
        pace = z[:, 0] + 0.1 * torch.randn(batch, generator=gen)
        tired = (z[:, 1] + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield x, torch.stack([pace, tired], -1)


@scenario(
    family="sled_dog_team_pace_two_head_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="A two-head net: pace (MSE) plus 0.3 x fatigue (BCE-with-logits), SGD momentum 0.9 "
    "lr 0.01. At step 100 the config was hot-reloaded and for that one step the fatigue "
    "weight was read in percent (30 for 0.3): the gradient is over 20x its usual size at "
    "that step only, and the run recovers.",
)
def h160_sled_dog_weight_percent(ctx: Context) -> None:
    gen = seeded(16010)
    model = TeamPaceNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    weight = {"step": 0}

    def before(step):
        weight["step"] = step

    def loss_fn(out, y):
        w = 30.0 if weight["step"] == 100 else 0.3
        main = F.mse_loss(out[:, 0], y[:, 0])
        aux = F.binary_cross_entropy_with_logits(out[:, 1], y[:, 1])
        return main + w * aux

    _train(ctx, model, opt, _legs(gen, 64), 220, loss_fn, before=before)
    weight["step"] = -1
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient 20x at step 100", g[100] > 20 * _median(g[80:100]))
    ctx.check("only that step", _median(g[101:120]) < 3 * _median(g[80:100]))
    ctx.check("recovered", _mean(ls[-20:]) < 1.2 * _mean(ls[80:100]) and _finite(ls))


# -- maelstrom current: a variance head that lost its softplus ------------------------------------


class CurrentNLLNet(nn.Module):
    """Predicts the mean and variance of the current speed in a tidal maelstrom from six
    readings (tide phase, range, wind, moon age, ...)."""

    def __init__(self, inputs=6, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.var_head.weight)
        nn.init.constant_(self.var_head.bias, 1.0)
        self.last_min_var = 1.0

    def forward(self, x):
        h = self.trunk(x)
        var = self.var_head(h)  # the F.softplus(...) + 1e-6 was lost in a refactor
        self.last_min_var = float(var.detach().min())
        return torch.cat([self.mean_head(h), var], -1)


DIVERGES_MAELSTROM = 121  # measured: the first NaN loss


def _gaussian_nll(out, y):
    mean, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + 0.5 * (y - mean) ** 2 / var).mean()


def _currents(gen, batch, inputs=6):
    w = torch.randn(inputs, generator=torch.Generator().manual_seed(61)) / math.sqrt(inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        noise = 0.02 + 0.5 * torch.sigmoid(3 * x[:, 1])
        yield x, torch.sin(x @ w * 2) + noise * torch.randn(batch, generator=gen)


@scenario(
    family="maelstrom_current_speed_nll_regressor",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("var_head",),
    diverges=DIVERGES_MAELSTROM,
    heldout=True,
    note="A heteroscedastic regressor trained by Gaussian NLL, Adagrad lr 2e-3 (the variance head zero-initialised with bias 1). The variance "
    "head's softplus (and its 1e-6 floor) was lost in a refactor, so the raw linear output "
    "is the variance: as the model learns the calm slack-water readings it pushes their "
    "variance down, an update carries one below zero, and log(var) makes the loss NaN.",
)
def h160_maelstrom_variance_no_softplus(ctx: Context) -> None:
    gen = seeded(16011)
    model = CurrentNLLNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-3)
    mins = []
    _train(
        ctx,
        model,
        opt,
        _currents(gen, 64),
        250,
        _gaussian_nll,
        watch=lambda s, o, x, y: mins.append(model.last_min_var),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss is NaN", bad is not None)
    ctx.check("at the written step", bad == DIVERGES_MAELSTROM)
    ctx.check("a variance was not positive there", bad is not None and mins[bad] <= 0)
    ctx.check("all variances positive at the start", mins[0] > 0)


# -- bandoneon bellows: a GradScaler whose growth interval was typed 1 ----------------------------


class BellowsConvNet(nn.Module):
    """Names the articulation (legato, staccato, bellows shake, accent) from 64 samples of
    bellows pressure, with a 1-D conv net."""

    def __init__(self, channels=16, kinds=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, padding=2)
        self.conv2 = nn.Conv1d(channels, 2 * channels, 5, padding=2)
        self.head = nn.Linear(2 * channels, kinds)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _bellows(gen, batch, length=64):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        x = torch.zeros(batch, length)
        x[y == 0] = 1.0
        x[y == 1] = (torch.sin(t / 2) > 0.5).float()
        x[y == 2] = torch.sin(1.5 * t)
        x[y == 3] = torch.exp(-((t - 20) ** 2) / 8) * 3
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="bandoneon_bellows_fp16_conv1d",
    optimizer="RAdam",
    cause="amp_overflow",
    where=(),
    diverges=None,
    heldout=True,
    note="A 1-D conv classifier under fp16 autocast with a torch.amp.GradScaler, RAdam lr 2e-3. "
    "The scaler's growth_interval was typed 1 (for 1000): the loss scale doubles after every "
    "clean step until the scaled fp16 gradients overflow to inf, halves, doubles again, so "
    "after the first climb over a third of the steps overflow and are skipped, to the end of "
    "the run.",
)
def h160_bandoneon_growth_interval(ctx: Context) -> None:
    gen = seeded(16012)
    model = BellowsConvNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1)
    _train(
        ctx,
        model,
        opt,
        _bellows(gen, 32),
        150,
        F.cross_entropy,
        classifier=True,
        scaler=scaler,
    )
    sc = ctx.scales
    skipped = [i for i in range(1, len(sc)) if sc[i] < sc[i - 1]]
    ctx.check("a third of the steps overflowed", len(skipped) > len(sc) / 3)
    ctx.check("overflows go on to the end", any(i > len(sc) - 10 for i in skipped))
    ctx.check("gradients were non-finite", not _finite(ctx.grad_norms))
    ctx.check("loss finite", _finite(ctx.losses))


# -- sign painter's lettering: a weight-tied decoder-only language model (control) ---------------


class BrushBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class LetteringLM(nn.Module):
    """A byte-level decoder-only language model for a sign painter's lettering notes; the
    output head shares the token embedding's weight."""

    def __init__(self, vocab=128, dim=48, heads=4, layers=2, context=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(BrushBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        for mod in self.modules():
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
                if getattr(mod, "bias", None) is not None:
                    nn.init.zeros_(mod.bias)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _lm_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="sign_painter_lettering_tied_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A decoder-only transformer LM through scaled_dot_product_attention with the head tied "
    "to the token embedding, on byte windows; AdamW (decay and no-decay param groups), "
    "linear warm-up then cosine decay, gradient accumulation over 2 micro-batches, "
    "clip_grad_norm_ 1.0.",
)
def h160_sign_painter_tied_lm_control(ctx: Context) -> None:
    gen = seeded(16013)
    model = LetteringLM()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
    )
    steps, warm = 150, 15

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    _train(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=32),
        steps,
        _lm_loss,
        sched=sched,
        clip=1.0,
        accumulate=2,
    )
    ctx.check("head tied to the embedding", model.head.weight is model.tok.weight)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))


# -- dandelion seed drift: an affine-coupling flow (control) ---------------------------------------


class Coupling(nn.Module):
    def __init__(self, flip, hidden=32):
        super().__init__()
        self.flip = flip
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        a, b = (x[:, 1:], x[:, :1]) if self.flip else (x[:, :1], x[:, 1:])
        s, t = self.net(a).chunk(2, -1)
        s = self.scale * torch.tanh(s)
        b = b * torch.exp(s) + t
        out = torch.cat([b, a], -1) if self.flip else torch.cat([a, b], -1)
        return out, s.sum(-1)


class SeedDriftFlow(nn.Module):
    """Density of where a dandelion's seeds land (downwind distance, crosswind offset)."""

    def __init__(self, layers=6):
        super().__init__()
        self.layers = nn.ModuleList(Coupling(i % 2 == 1) for i in range(layers))

    def forward(self, x):
        logdet = torch.zeros(x.shape[0])
        for layer in self.layers:
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet


def _flow_nll(out, _):
    z, logdet = out
    logp = -0.5 * (z**2).sum(-1) - math.log(2 * math.pi)
    return -(logp + logdet).mean()


def _seed_landings(gen, batch):
    while True:
        gust = torch.randn(batch, generator=gen)
        down = 1.0 + 0.8 * gust
        cross = 0.6 * gust**2 - 0.6 + 0.25 * torch.randn(batch, generator=gen)
        yield torch.stack([down, cross], -1), torch.zeros(batch)


@scenario(
    family="dandelion_seed_drift_coupling_flow",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="A RealNVP-style flow of six affine couplings (tanh-bounded log-scales) trained by "
    "log-likelihood on 2-D landing positions; Adamax lr 1e-2 with ReduceLROnPlateau.",
)
def h160_dandelion_flow_control(ctx: Context) -> None:
    gen = seeded(16014)
    model = SeedDriftFlow()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(ctx, model, opt, _seed_landings(gen, 128), 200, _flow_nll, sched=sched)
    ctx.check("NLL fell by 0.3 nats", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.3)
    ctx.check("loss finite", _finite(ctx.losses))


# -- dog agility: an actor-critic on generated returns (control) -----------------------------------


class HandlerCueNet(nn.Module):
    """Chooses the handler's cue (front cross, rear cross, blind cross, push) at each obstacle
    from eight course readings; a value head estimates the return to go."""

    def __init__(self, inputs=8, hidden=64, cues=4):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh())
        self.policy = nn.Linear(hidden, cues)
        self.value = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.policy(h), self.value(h).squeeze(-1)


@scenario(
    family="dog_agility_course_actor_critic",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="An advantage actor-critic over generated five-obstacle runs (the reward of a cue "
    "depends on the obstacle's readings, plus noise): policy-gradient loss + 0.5 x value "
    "MSE - 0.01 x entropy, RAdam lr 3e-3, clip_grad_norm_ 1.0.",
)
def h160_dog_agility_actor_critic_control(ctx: Context) -> None:
    gen = seeded(16015)
    model = HandlerCueNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    reward_w = torch.randn(8, 4, generator=torch.Generator().manual_seed(71))
    episodes, obstacles, gamma = 32, 5, 0.95
    ctx.attach(model, opt)
    mean_rewards, value_losses = [], []
    for _step in range(200):
        states = torch.randn(episodes, obstacles, 8, generator=gen)
        logits, values = model(states)
        dist = torch.distributions.Categorical(logits=logits)
        cues = dist.sample()
        best = (states @ reward_w).argmax(-1)
        rewards = (cues == best).float() + 0.2 * torch.randn(episodes, obstacles, generator=gen)
        returns = torch.zeros_like(rewards)
        running = torch.zeros(episodes)
        for t in reversed(range(obstacles)):
            running = rewards[:, t] + gamma * running
            returns[:, t] = running
        adv = (returns - values).detach()
        value_loss = F.mse_loss(values, returns)
        loss = -(dist.log_prob(cues) * adv).mean() + 0.5 * value_loss - 0.01 * dist.entropy().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        mean_rewards.append(float(rewards.mean()))
        value_losses.append(float(value_loss.detach()))
    ctx.check("reward rose", _mean(mean_rewards[-20:]) > _mean(mean_rewards[:20]) + 0.2)
    ctx.check("value loss stayed bounded", _mean(value_losses[-20:]) < 3 * _mean(value_losses[:20]))
    ctx.check("loss finite", _finite(ctx.losses))


# -- tartan setts: a triplet-loss embedding net (control) ------------------------------------------


class SettEmbedder(nn.Module):
    """Embeds a tartan sett (thread counts of 12 stripes, two readings each) on the unit sphere."""

    def __init__(self, inputs=24, hidden=64, dim=16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x):
        """(batch, 3, inputs) anchor/positive/negative triplets -> (batch, 3, dim), one shared net."""
        z = F.normalize(self.proj(self.net(x.reshape(-1, x.shape[-1]))), dim=-1)
        return z.reshape(*x.shape[:-1], -1)


def _sett_triplets(gen, batch, setts=40, inputs=24):
    protos = torch.randn(setts, inputs, generator=torch.Generator().manual_seed(81))
    while True:
        a = torch.randint(0, setts, (batch,), generator=gen)
        n = (a + torch.randint(1, setts, (batch,), generator=gen)) % setts

        def woven(idx):
            return protos[idx] + 0.5 * torch.randn(batch, inputs, generator=gen)

        yield torch.stack([woven(a), woven(a), woven(n)], 1), torch.zeros(batch)


def _triplet(out, _):
    return F.triplet_margin_loss(out[:, 0], out[:, 1], out[:, 2], margin=0.5)


@scenario(
    family="tartan_sett_triplet_embedder",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="A siamese ReLU MLP embedding setts on the unit sphere, triplet margin loss over noisy "
    "weavings of the same and of another sett; SGD Nesterov momentum 0.9 under OneCycleLR "
    "(max_lr 0.1).",
)
def h160_tartan_triplet_control(ctx: Context) -> None:
    gen = seeded(16016)
    model = SettEmbedder()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)

    _train(ctx, model, opt, _sett_triplets(gen, 64), 200, _triplet, sched=sched)
    ctx.check("triplet loss fell", _fell(ctx.losses, ratio=0.5))
