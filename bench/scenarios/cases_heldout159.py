"""Held-out set 159 (``h159_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before (a transformer with a hand softmax over q.k, an encoder-decoder with
hand-written cross-attention, a graph network with hand-written message passing, a 2-D CNN with
GroupNorm, a mixture density network, 1-D conv nets, MLPs), transformers through
``nn.MultiheadAttention`` and ``scaled_dot_product_attention``, and two Hugging Face models
built offline from tiny configs (a DistilBERT classifier and a Llama causal LM).

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
    bert_batches,
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
    forward=None,
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
    """The training loop: ``accumulate`` micro-batches a step (``alter(step, micro, x, y)`` can
    change one), ``before(step)`` runs first, ``watch(step, out, x, y)`` records,
    ``scale_loss(step, loss)`` changes the loss that is back-propagated, ``after(step)`` runs
    after the update."""
    forward = forward or (lambda m, x: m(x))
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for micro in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, micro, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = forward(model, x)
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
        if math.isnan(shown):
            break


def _warm_cosine(warm: int, total: int):
    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(total - warm, 1)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def _no_decay_groups(model, lr, wd):
    decay, keep = [], []
    for name, p in model.named_parameters():
        (keep if p.dim() < 2 or "norm" in name or "ln" in name else decay).append(p)
    return [
        {"params": decay, "lr": lr, "weight_decay": wd},
        {"params": keep, "lr": lr, "weight_decay": 0.0},
    ]


# -- sheepdog trials: a hand softmax over q.k whose scale was left at 1.0 -----------------------


class WhistleAttention(nn.Module):
    """Self-attention written by hand: softmax over q.k^T times ``scale``; records the largest
    logit the softmax saw."""

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
        q, k, v = (
            f(x).reshape(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        logits = (q @ k.transpose(-1, -2)) * self.scale
        self.last_max = float(logits.detach().abs().amax())
        y = torch.softmax(logits, dim=-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class ShepherdWhistleNet(nn.Module):
    """Reads a shepherd's whistle as 10 pitch readings (binned to 24 levels) and names the
    command (come-bye, away, walk up, lie down)."""

    def __init__(self, levels=24, dim=32, length=10, commands=4, heads=2, scale=None):
        super().__init__()
        self.pitch = nn.Embedding(levels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = WhistleAttention(dim, heads, (dim // heads) ** -0.5 if scale is None else scale)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, commands)

    def forward(self, x):
        h = self.pitch(x) + self.pos
        h = h + self.attn(self.ln1(h))
        h = h + self.ff(self.ln2(h))
        return self.head(self.ln_f(h).mean(1))


def _whistles(gen, batch, levels=24, length=10):
    """Rising or falling overall, and whether the peak comes in the first half."""
    while True:
        x = torch.randint(0, levels, (batch, length), generator=gen)
        rising = (x[:, -3:].float().mean(1) > x[:, :3].float().mean(1)).long()
        early = (x.argmax(1) < length // 2).long()
        yield x, rising * 2 + early


@scenario(
    family="shepherd_whistle_command_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block transformer with attention written by hand (softmax over q.k^T times a "
    "scale). The config's 'attn_scale' was meant to be None (-> 1/sqrt(head_dim)) but the YAML "
    "had 'attn_scale: 1.0', and AdamW runs at lr 1e-2 with weight decay 0: the q.k logits the "
    "softmax sees grow more than 10x and past 40.",
)
def h159_shepherd_whistle_attn_scale(ctx: Context) -> None:
    gen = seeded(15901)
    model = ShepherdWhistleNet(scale=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    seen = []
    _train(
        ctx,
        model,
        opt,
        _whistles(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: seen.append(model.attn.last_max),
    )
    ctx.check("attention logits grew 10x", seen[-1] > 10 * _mean(seen[:5]))
    ctx.check("attention logits above 40", seen[-1] > 40)


# -- shot put: a multi-class margin loss written without its hinge -------------------------------


class ShotPutNet(nn.Module):
    """Names the technique (glide, rotational, spin-glide, standing) from 14 readings of a
    throw (release angle, release height, hip-shoulder separation, ...)."""

    def __init__(self, inputs=14, hidden=48, classes=4):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.body(x))


def _throws(gen, batch, inputs=14, classes=4):
    centres = torch.randn(classes, inputs, generator=torch.Generator().manual_seed(11))
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + 2.0 * torch.randn(batch, inputs, generator=gen), y


def _margin_no_hinge(logits, y):
    # meant: F.relu(1 - (target - best other)).mean(); the relu was dropped in a "cleanup"
    target = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return (1 - (target - others.amax(1))).mean()


@scenario(
    family="shot_put_technique_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A multi-class margin loss written as 1 - (target logit - best other logit) with the "
    "hinge (relu) dropped in a cleanup: the loss has no floor, so NAdam (lr 2e-3) keeps pushing "
    "the target logit up and the others down; the head's logit norm grows more than 20x and is "
    "still growing at the end while the loss runs ever more negative.",
)
def h159_shot_put_margin_no_hinge(ctx: Context) -> None:
    gen = seeded(15902)
    model = ShotPutNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    norms = []
    _train(
        ctx,
        model,
        opt,
        _throws(gen, 64),
        200,
        _margin_no_hinge,
        classifier=True,
        watch=lambda s, o, x, y: norms.append(float(o.detach().norm(dim=-1).mean())),
    )
    ctx.check("logit norm grew 20x", norms[-1] > 20 * _mean(norms[:5]))
    ctx.check("logit norm still growing", norms[-1] > 1.3 * norms[-50])
    ctx.check("the loss went negative", ctx.losses[-1] < -1.0)


# -- stained glass: a distillation temperature used as a divisor in the student's own loss -------


class LeadPatternNet(nn.Module):
    """A 2-D CNN with GroupNorm that names the lead-line pattern (horizontal, vertical, diagonal,
    cross) of a 12x12 stained-glass panel scan."""

    def __init__(self, classes=4, width=16, temperature=1.0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.gn1 = nn.GroupNorm(4, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.gn2 = nn.GroupNorm(4, width)
        self.head = nn.Linear(width, classes)
        self.temperature = temperature

    def forward(self, x):
        h = F.relu(self.gn1(self.conv1(x)))
        h = F.relu(self.gn2(self.conv2(F.max_pool2d(h, 2))))
        return self.head(h.mean((2, 3))) / self.temperature


def _panels(gen, batch, size=12):
    i = torch.arange(size)
    lines = [
        (i[:, None] % 4 == 0).expand(size, size),
        (i[None, :] % 4 == 0).expand(size, size),
        ((i[:, None] + i[None, :]) % 5 == 0),
        ((i[:, None] % 6 == 0) | (i[None, :] % 6 == 0)),
    ]
    lines = torch.stack([m.float() for m in lines])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        shift = torch.randint(0, 3, (batch,), generator=gen)
        x = torch.stack(
            [torch.roll(lines[c], int(s), dims=1) for c, s in zip(y, shift, strict=True)]
        )
        x = x + 0.25 * torch.randn(batch, size, size, generator=gen)
        yield x[:, None], y


@scenario(
    family="stained_glass_lead_pattern_gn_cnn",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GroupNorm 2-D CNN trained with RMSprop (lr 1e-3). The training script shared a "
    "config with a logit-adjustment job and the forward divides its logits by "
    "cfg.temperature, which that config sets to 1e-3 (its tau): the softmax saturates and "
    "almost all of the panels' target probabilities round to exactly 1.0 in float32.",
)
def h159_stained_glass_temperature_divisor(ctx: Context) -> None:
    gen = seeded(15903)
    model = LeadPatternNet(temperature=1e-3)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    frac = []
    _train(
        ctx,
        model,
        opt,
        _panels(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda s, o, x, y: frac.append(collapsed_fraction(o.detach(), y)),
    )
    ctx.check("over half the rows collapsed to p = 1.0", _mean(frac[-10:]) > 0.5)
    ctx.check("the collapsed share grew by 0.3 from the start", _mean(frac[-10:]) > frac[0] + 0.3)


# -- sand yachts: ExponentialLR with gamma typed 1.05 for 0.95 ----------------------------------


class SandYachtNet(nn.Module):
    """Regresses a sand yacht's speed (standardised) from 10 readings (wind speed and angle,
    sail trim, sand firmness, ...)."""

    def __init__(self, inputs=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(x))))).squeeze(-1)


def _yachts(gen, batch, inputs=10):
    w = torch.linspace(-1, 1, inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = torch.tanh(x @ w / 2) + 0.3 * x[:, 0] * x[:, 1]
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


def _top_eig(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = loss_fn(model(x), y)
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
    family="sand_yacht_speed_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=44,
    note="An MSE regressor trained with plain SGD from lr 0.05 under ExponentialLR, whose gamma "
    "was typed 1.05 instead of 0.95: the loss falls at first, then the growing learning rate "
    "passes 2/sharpness (measured by power iteration on a fixed batch; first at about step 44) "
    "and the loss blows up.",
)
def h159_sand_yacht_exponential_gamma(ctx: Context) -> None:
    gen = seeded(15904)
    model = SandYachtNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.05)
    probe = next(_yachts(torch.Generator().manual_seed(5), 256))
    crossed = []

    def before(step):
        if step % 4 == 0 and not crossed:
            lam = _top_eig(model, F.mse_loss, *probe)
            if opt.param_groups[0]["lr"] * lam > 2.0:
                crossed.append(step)

    _train(ctx, model, opt, _yachts(gen, 64), 150, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:40])
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("the loss fell first", low < 0.5 * ls[0])
    ctx.check("the loss blew up 100x above its low", blow is not None)
    ctx.check(
        "lr x sharpness passed 2 before the blow-up",
        bool(crossed) and blow is not None and crossed[0] < blow,
    )
    ctx.check("the run ended non-finite or huge", end < len(ls) or ls[-1] > 100 * low)


# -- dog-sled trails: sum aggregation meets the full race graph --------------------------------


class TrailRound(nn.Module):
    """One round of message passing: each checkpoint adds its own update and its neighbours'
    messages (``adj @ h``: a sum, since the adjacency is no longer row-normalised)."""

    def __init__(self, dim):
        super().__init__()
        self.msg = nn.Linear(dim, dim)
        self.upd = nn.Linear(dim, dim)

    def forward(self, h, adj):
        return F.relu(self.upd(h) + self.msg(adj @ h))


class DogSledTrailGNN(nn.Module):
    """Predicts the split time to each checkpoint of a sled-dog race trail (a graph of 12
    checkpoints) from six readings per checkpoint (elevation gain, snow depth, wind, ...)."""

    def __init__(self, inputs=6, dim=32, rounds=8):
        super().__init__()
        self.embed = nn.Linear(inputs, dim)
        self.rounds = nn.ModuleList(TrailRound(dim) for _ in range(rounds))
        self.readout = nn.Linear(dim, 1)

    def forward(self, batch):
        x, adj = batch
        h = self.embed(x)
        self.states = []
        for r in self.rounds:
            h = r(h, adj)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.readout(h).squeeze(-1)


def _trails(gen, batch, switch, nodes=12, inputs=6):
    """Trail graphs: the plain loop of checkpoints until ``switch``, then the full race graph
    with shortcuts and cut-offs (about three times the links per checkpoint)."""
    w = torch.linspace(-0.6, 0.9, inputs)
    ring = torch.eye(nodes).roll(1, 1) + torch.eye(nodes).roll(-1, 1)
    step = 0
    while True:
        p = 0.0 if step < switch else 0.3
        chords = (torch.rand(batch, nodes, nodes, generator=gen) < p).float()
        adj = ((ring + chords + chords.transpose(1, 2)) > 0).float() * (1 - torch.eye(nodes))
        x = torch.randn(batch, nodes, inputs, generator=gen)
        own = torch.tanh(x @ w)
        y = own + 0.5 * (adj / adj.sum(-1, keepdim=True) @ own[..., None]).squeeze(-1)
        step += 1
        yield (x, adj), y + 0.05 * torch.randn(batch, nodes, generator=gen)


@scenario(
    family="dog_sled_trail_network_gnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rounds.0", "rounds.0.msg"),
    diverges="auto",
    heldout=True,
    onset=80,
    note="Eight rounds of hand-written message passing (no normalisation, no residual), SGD "
    "momentum at lr 3e-3. A refactor replaced the mean aggregation with a plain sum (the "
    "adjacency lost its row normalisation); on the loop-only trails of the first 80 steps "
    "(two neighbours each) it trains, but when the curriculum moves to the full race graphs at "
    "step 80 each round multiplies the signal by the degree: the gradient at the first "
    "round's output is about 1000x that at the last round's, and the loss blows up at once.",
)
def h159_dog_sled_trail_sum_aggregation(ctx: Context) -> None:
    gen = seeded(15905)
    model = DogSledTrailGNN()
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9)
    ratio = []
    orig_step = opt.step

    def step_and_record(*a, **k):
        # the gradient reaching the first and the last round's output state on this step
        ratio.append(float(model.states[0].grad.norm() / model.states[-1].grad.norm()))
        return orig_step(*a, **k)

    opt.step = step_and_record
    _train(ctx, model, opt, _trails(gen, 32, 80), 150, F.mse_loss)
    ls = ctx.losses
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 1e3 * ls[79]), None)
    ctx.check("the loss fell over the first 80 steps", _mean(ls[70:80]) < 0.8 * _mean(ls[:10]))
    ctx.check("depth ratio of gradients under 5 before step 80", max(ratio[10:80]) < 5)
    ctx.check("depth ratio of gradients over 100 after", max(ratio[80:]) > 100)
    ctx.check("the loss blew up 1000x after step 80", blow is not None and blow >= 80)


# -- yurt felt: raw readings into Adagrad at a typo'd learning rate ------------------------------


class YurtFeltNet(nn.Module):
    """Regresses a yurt's heat loss (standardised) from raw readings: outside temperature in
    kelvin, wind speed, felt layers, stove wood per hour, door openings, humidity."""

    def __init__(self, inputs=6, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)

    def hidden1(self, x):
        return self.act1(self.fc1(x))


def _yurts(gen, batch):
    lo = torch.tensor([245.0, 0.0, 1.0, 0.5, 0.0, 20.0])
    hi = torch.tensor([285.0, 20.0, 4.0, 4.0, 12.0, 90.0])
    while True:
        u = torch.rand(batch, 6, generator=gen)
        x = lo + (hi - lo) * u
        y = (-1.2 * u[:, 0] + 0.9 * u[:, 1] - 0.8 * u[:, 2] + 0.5 * u[:, 3] * u[:, 4]) * 2
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="yurt_felt_heat_loss_regressor",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP fed raw readings (temperature in kelvin around 270, wind in m/s, ...) "
    "because the standardisation step was skipped for this site, trained with Adagrad at lr "
    "0.5 (typed for 0.05). The kelvin column already leaves about half the fc1 units off at "
    "init; the first large step pushes another quarter's pre-activations below zero for every "
    "input: about 73% of the fc1 units are dead from step 1 on and never come back, and the "
    "loss stalls.",
)
def h159_yurt_felt_raw_adagrad(ctx: Context) -> None:
    gen = seeded(15906)
    model = YurtFeltNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.5)
    probe = next(_yurts(torch.Generator().manual_seed(3), 512))[0]
    with torch.no_grad():
        start = dead_fraction(model.hidden1(probe))
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.hidden1(probe)))

    _train(ctx, model, opt, _yurts(gen, 64), 200, F.mse_loss, after=after)
    ctx.check("over half the fc1 units are dead at the end", dead[-1] > 0.5)
    ctx.check("they stayed dead for the last 100 steps", min(dead[100:]) > 0.5)
    ctx.check("the loss stayed finite", _finite(ctx.losses))
    ctx.check("the dead share rose by 0.2 from init", dead[-1] > start + 0.2)


# -- auctioneer chants: an encoder learning-rate key misspelt in the param groups ----------------


class ChantEncoderLayer(nn.Module):
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


class ChantEncoder(nn.Module):
    def __init__(self, vocab, dim, heads, length):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.layer = ChantEncoderLayer(dim, heads)
        self.ln = nn.LayerNorm(dim)

    def forward(self, src):
        return self.ln(self.layer(self.embed(src) + self.pos))


class CrossAttention(nn.Module):
    """Decoder-to-encoder attention written by hand: softmax(q.k^T / sqrt(d)) v."""

    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x, memory):
        q = self.q(x)
        k, v = self.kv(memory).chunk(2, dim=-1)
        w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        return self.o(w @ v)


class ChantDecoder(nn.Module):
    def __init__(self, vocab, dim, heads, length):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab + 1, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim)
        self.ln3 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tgt_in, memory):
        x = self.embed(tgt_in) + self.pos
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        x = x + self.cross(self.ln2(x), memory)
        x = x + self.ff(self.ln3(x))
        return self.head(self.ln_f(x))


class AuctioneerChantSeq2Seq(nn.Module):
    """Transcribes an auctioneer's chant (8 syllable tokens) into the bid sequence the clerk
    writes down (the filler syllables dropped, the number words mapped to digits)."""

    def __init__(self, vocab=20, dim=32, heads=2, length=8):
        super().__init__()
        self.vocab = vocab
        self.encoder = ChantEncoder(vocab, dim, heads, length)
        self.decoder = ChantDecoder(vocab, dim, heads, length)

    def forward(self, batch):
        src, tgt = batch
        bos = torch.full_like(tgt[:, :1], self.vocab)
        return self.decoder(torch.cat([bos, tgt[:, :-1]], 1), self.encoder(src))


def _chants(gen, batch, vocab=20, length=8):
    while True:
        src = torch.randint(0, vocab, (batch, length), generator=gen)
        tgt = (src.flip(1) * 3 + 1) % vocab
        yield (src, tgt), tgt


def _seq_ce(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="auctioneer_chant_seq2seq",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=(
        "encoder",
        "encoder.embed",
        "encoder.layer",
        "encoder.layer.qkv",
        "encoder.layer.proj",
        "encoder.layer.ff.0",
        "encoder.layer.ff.2",
    ),
    diverges=None,
    heldout=True,
    note="An encoder-decoder transformer (SDPA self-attention, hand-written cross-attention) "
    "trained with Adam in two param groups: the decoder at cfg['lr'] = 2e-3 and the encoder at "
    "cfg.get('encoder_lr', 0.0), a default meant for 'frozen unless set'. The YAML spells the "
    "key 'enocder_lr', so the encoder runs at lr 0 for the whole run: its weights never move "
    "although their gradients are non-zero, and only the decoder learns.",
)
def h159_auctioneer_encoder_lr_key(ctx: Context) -> None:
    gen = seeded(15907)
    model = AuctioneerChantSeq2Seq()
    cfg = {"lr": 2e-3, "enocder_lr": 2e-3}
    opt = torch.optim.Adam(
        [
            {"params": model.encoder.parameters(), "lr": cfg.get("encoder_lr", 0.0)},
            {"params": model.decoder.parameters(), "lr": cfg["lr"]},
        ]
    )
    enc0 = model.encoder.layer.qkv.weight.detach().clone()
    dec0 = model.decoder.head.weight.detach().clone()
    enc_grad = []
    orig_step = opt.step

    def step_and_record(*a, **k):
        enc_grad.append(float(model.encoder.layer.qkv.weight.grad.norm()))
        return orig_step(*a, **k)

    opt.step = step_and_record
    _train(ctx, model, opt, _chants(gen, 64), 200, _seq_ce, forward=lambda m, b: m(b))
    moved_enc = float((model.encoder.layer.qkv.weight.detach() - enc0).abs().max())
    moved_dec = float((model.decoder.head.weight.detach() - dec0).abs().max())
    ctx.check("the encoder never moved", moved_enc == 0.0)
    ctx.check("the decoder moved", moved_dec > 1e-2)
    ctx.check("the encoder's gradients were non-zero", min(enc_grad) > 0.0)
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- tree rings: a static loss scale left on the resume step ------------------------------------


class TreeRingNet(nn.Module):
    """Regresses the next 32 years' ring widths of a site (standardised) from 24 months of
    temperature and precipitation, through a small 1-D conv net."""

    def __init__(self, years=32, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(2, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.fc = nn.Linear(width * 24, 64)
        self.out = nn.Linear(64, years)

    def forward(self, x):
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.out(F.gelu(self.fc(h.flatten(1))))


def _rings(gen, batch, years=32):
    t = torch.linspace(0, 1, years)
    while True:
        x = torch.randn(batch, 2, 24, generator=gen)
        growth = torch.tanh(
            x[:, 0, 3:8].mean(1, keepdim=True) + x[:, 1, 10:16].mean(1, keepdim=True)
        )
        y = growth * torch.exp(-2 * t) + 0.3 * torch.sin(6 * t + x[:, 1, :1])
        yield x, y + 0.05 * torch.randn(batch, years, generator=gen)


@scenario(
    family="tree_ring_width_conv1d",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="Adam (lr 3e-3, beta2 0.999) on an MSE ring-width regressor. The run was resumed at "
    "step 60 from a checkpoint written by an older fp16 script, and the resume path applied "
    "that script's static loss scale (4096) to the first step's loss, without a GradScaler to "
    "undo it: one gradient about 4000x the others enters Adam's second moment, and for the "
    "rest of the run the typical update is over 10x smaller than before; the loss, knocked up "
    "by the first moment's share of it, creeps back only slowly.",
)
def h159_tree_ring_static_loss_scale(ctx: Context) -> None:
    gen = seeded(15908)
    model = TreeRingNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    moves = []
    prev = {}

    def before(step):
        prev["w"] = model.fc.weight.detach().clone()

    def after(step):
        moves.append(float((model.fc.weight.detach() - prev["w"]).abs().median()))

    _train(
        ctx,
        model,
        opt,
        _rings(gen, 64),
        200,
        F.mse_loss,
        before=before,
        after=after,
        scale_loss=lambda s, loss: loss * 4096.0 if s == 60 else loss,
    )
    g = ctx.grad_norms
    ctx.check("the gradient jumped 500x at step 60", g[60] > 500 * _mean(g[40:60]))
    ctx.check(
        "the median update is 10x smaller after", _mean(moves[100:150]) < 0.1 * _mean(moves[40:60])
    )
    ctx.check("the loss at step 60 was ordinary", ctx.losses[60] < 2 * _mean(ctx.losses[50:60]))
    ctx.check(
        "the loss stays above its level before step 60",
        _mean(ctx.losses[-10:]) > 2 * _mean(ctx.losses[50:60]),
    )


# -- sculling: one micro-batch from a shard logged in cm/s ---------------------------------------


class ScullingNet(nn.Module):
    """Regresses a single scull's speed over the next 500 m (standardised) from 10 readings
    (GPS boat speed, stroke rate, drive/recovery ratio, oar-lock force peak, ...)."""

    def __init__(self, inputs=10, hidden=64):
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


def _sculls(gen, batch, inputs=10):
    w = torch.linspace(1.0, -0.5, inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = 0.8 * x[:, 0] + 0.4 * torch.tanh(x @ w / 2) + 0.2 * x[:, 1] * x[:, 2]
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="sculling_boat_speed_regressor",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="A Huber-loss regressor trained with SGD Nesterov (lr 1e-2, momentum 0.9), gradients "
    "accumulated over 4 micro-batches a step. At step 150 one micro-batch comes from a club "
    "whose GPS unit logs boat speed in cm/s, not m/s, standardised with the other clubs' "
    "statistics: its speed column is 100x too large, that step's loss and gradient jump far "
    "above every other step, and the run recovers afterwards.",
)
def h159_sculling_cm_per_s_shard(ctx: Context) -> None:
    gen = seeded(15909)
    model = ScullingNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def alter(step, micro, x, y):
        if step == 150 and micro == 2:
            x = x.clone()
            x[:, 0] = x[:, 0] * 100.0
        return x, y

    _train(ctx, model, opt, _sculls(gen, 32), 250, F.huber_loss, alter=alter, accumulate=4)
    ls, g = ctx.losses, ctx.grad_norms
    before = sorted(ls[100:150])[25]
    ctx.check("the loss jumped 20x at the bad micro-batch", ls[150] > 20 * before)
    ctx.check("the gradient jumped 20x there", g[150] > 20 * _mean(g[130:150]))
    ctx.check("the run recovered", _finite(ls) and _mean(ls[-20:]) < 3 * before)


# -- Hugging Face DistilBERT: one accumulation step with a summed loss after a resume ------------


def _hf_distilbert(vocab=128, dim=32, layers=2, heads=2, labels=2):
    """A tiny Hugging Face DistilBERT classifier built from its config (no download)."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(
        vocab_size=vocab,
        dim=dim,
        n_layers=layers,
        n_heads=heads,
        hidden_dim=4 * dim,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        seq_classif_dropout=0.0,
        num_labels=labels,
    )
    return DistilBertForSequenceClassification(config)


@scenario(
    family="hf_distilbert_ewe_lot_ballot_cls",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="A tiny Hugging Face DistilBERT classifier (from its config) trained with SGD momentum "
    "(lr 0.05), gradients accumulated over 2 micro-batches with the loss divided by 2. On the "
    "first step after a resume (step 90) the restored loop took the criterion with "
    "reduction='sum' from the eval config and multiplied by the accumulation count instead of "
    "dividing: the batches and the reported loss are ordinary, but that one step's gradient is "
    "about 128x its neighbours'.",
)
def h159_hf_distilbert_resume_sum_loss(ctx: Context) -> None:
    gen = seeded(15910)
    model = _hf_distilbert()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    _train(
        ctx,
        model,
        opt,
        bert_batches(gen, 32),
        200,
        F.cross_entropy,
        classifier=True,
        forward=lambda m, x: m(input_ids=x).logits,
        accumulate=2,
        scale_loss=lambda s, loss: loss * 32 * 2 * 2 if s == 90 else loss,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("the gradient jumped 30x at step 90", g[90] > 30 * _mean(g[70:90]))
    ctx.check("the loss at step 90 was ordinary", ls[90] < 2 * _mean(ls[80:90]))
    ctx.check("the run went on finite", _finite(ls))


# -- ptarmigan moult: a mixture density head whose sigma lost its floor --------------------------


class PtarmiganMoultMDN(nn.Module):
    """A mixture density network (3 Gaussians) for the share of white plumage a rock
    ptarmigan shows, from day of year (sin, cos), altitude, temperature and snow cover: early
    and late moulters give a two-humped target."""

    def __init__(self, inputs=5, hidden=48, k=3):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.pi = nn.Linear(hidden, k)
        self.mu = nn.Linear(hidden, k)
        self.sigma = nn.Linear(hidden, k)
        nn.init.constant_(self.sigma.bias, 1.5)

    def forward(self, x):
        h = self.trunk(x)
        # was F.softplus(.) + 1e-3; the floor went missing when the head was refactored
        return self.pi(h), self.mu(h), F.relu(self.sigma(h))


def _mdn_nll(out, y):
    logit_pi, mu, sigma = out
    r = (y[:, None] - mu) / sigma
    logp = -torch.log(sigma) - 0.5 * r * r - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(F.log_softmax(logit_pi, -1) + logp, -1).mean()


def _moults(gen, batch):
    while True:
        day = torch.rand(batch, generator=gen) * 2 * math.pi
        alt, temp, snow = torch.randn(3, batch, generator=gen)
        x = torch.stack([day.sin(), day.cos(), alt, temp, snow], -1)
        late = torch.rand(batch, generator=gen) < 0.4
        base = torch.sigmoid(2 * day.cos() + 0.5 * snow - 0.3 * temp)
        y = torch.where(late, 0.6 * base, base) + 0.03 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="ptarmigan_moult_mixture_density",
    optimizer="Adamax",
    cause="nonfinite",
    where=("sigma",),
    diverges=59,
    heldout=True,
    note="A mixture density network whose sigma head lost its softplus + 1e-3 floor in a "
    "refactor (now relu of the linear output). As Adamax (lr 5e-4) sharpens the components, "
    "one component's sigma reaches exactly 0 for some bird: log 0 and 0/0 give a NaN loss "
    "(first at step 59).",
)
def h159_ptarmigan_sigma_no_floor(ctx: Context) -> None:
    gen = seeded(15911)
    model = PtarmiganMoultMDN()
    opt = torch.optim.Adamax(model.parameters(), lr=5e-4)
    low = []
    _train(
        ctx,
        model,
        opt,
        _moults(gen, 64),
        300,
        _mdn_nll,
        watch=lambda s, o, x, y: low.append(float(o[2].detach().min())),
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went NaN", bad is not None)
    ctx.check("a sigma was exactly 0 at that step", bad is not None and low[bad] == 0.0)
    ctx.check("the loss was finite for 20 steps first", bad is not None and bad >= 20)


# -- whitewater rafting: a hand-written log-sum-exp pool under fp16 autocast ---------------------


class RaftSurgeNet(nn.Module):
    """Forecasts the peak surge load (kN) on a raft's bow from 32 readings of the water level
    over a hydraulic: a 1-D conv, a per-reading score, and a soft maximum over time."""

    def __init__(self, width=16):
        super().__init__()
        self.conv = nn.Conv1d(1, width, 5, padding=2)
        self.score = nn.Conv1d(width, 1, 1)

    def forward(self, x):
        z = self.score(F.relu(self.conv(x[:, None]))).squeeze(1)
        # a hand-written soft maximum: log(sum(exp(z))) without subtracting the max first
        return torch.log(torch.exp(z).sum(-1))

    def scores(self, x):
        return self.score(F.relu(self.conv(x[:, None]))).squeeze(1)


def _surges(gen, batch, length=32):
    while True:
        x = torch.randn(batch, length, generator=gen).cumsum(-1) / 4
        yield x, 6.0 + 2.5 * x.amax(-1).clamp(min=0)


@scenario(
    family="whitewater_raft_surge_pooler",
    optimizer="Adam",
    cause="amp_overflow",
    where=("score",),
    diverges=59,
    heldout=True,
    onset=59,
    note="A surge-load forecaster trained under fp16 autocast with a GradScaler (Adam, lr "
    "3e-3). Its soft maximum over time is hand-written as log(sum(exp(z))) on the float16 "
    "output of the score conv, without subtracting the max first: the targets (kN) push z up "
    "until exp(z) summed over 32 readings passes 65504 and the loss is inf (first at step 59). "
    "From then on "
    "nearly every batch overflows, the GradScaler skips those steps and keeps halving its "
    "scale, and training stops making progress.",
)
def h159_whitewater_fp16_logsumexp(ctx: Context) -> None:
    gen = seeded(15912)
    model = RaftSurgeNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    over = []

    def watch(step, out, x, y):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
            over.append(bool(torch.isinf(torch.exp(model.scores(x)).sum(-1)).any()))

    _train(ctx, model, opt, _surges(gen, 64), 200, F.mse_loss, scaler=scaler, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went inf", bad is not None)
    ctx.check("the fp16 exp-sum overflowed at that step", bad is not None and over[bad])
    ctx.check("the scale fell a millionfold", ctx.scales[-1] < 1e-6 * ctx.scales[0])
    ctx.check(
        "most of the last 20 losses non-finite",
        sum(not math.isfinite(v) for v in ctx.losses[-20:]) > 10,
    )


# -- controls -------------------------------------------------------------------------------------


class GaitBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.ff(self.ln2(x))


class MushingGaitNet(nn.Module):
    """Names a sled-dog team's gait (walk, trot, lope, gallop, pace) from 16 readings of the
    gangline's tension and the sled's vertical acceleration, with nn.MultiheadAttention blocks
    and a CLS token."""

    def __init__(self, gaits=5, dim=32, heads=4, layers=2, length=16):
        super().__init__()
        self.embed = nn.Linear(2, dim)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(length + 1, dim))
        self.blocks = nn.ModuleList(GaitBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, gaits)

    def forward(self, x):
        h = torch.cat([self.cls.expand(len(x), -1, -1), self.embed(x)], 1) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h[:, 0]))


def _gaits(gen, batch, gaits=5, length=16):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, gaits, (batch,), generator=gen)
        freq = 0.4 + 0.25 * y.float()[:, None]
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        tension = torch.sin(freq * t + phase)
        accel = torch.sin(2 * freq * t + phase + 0.5 * (y[:, None] % 2))
        x = torch.stack([tension, accel], -1) + 0.3 * torch.randn(batch, length, 2, generator=gen)
        yield x, y


@scenario(
    family="mushing_team_gait_transformer",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a two-block transformer (nn.MultiheadAttention, CLS token) trained with AdamW "
    "in two param groups (weight decay 0.05, none on norms and biases), linear warm-up then "
    "cosine decay (LambdaLR), label smoothing 0.1 and clipping at 1.0.",
)
def h159_mushing_gait_control(ctx: Context) -> None:
    gen = seeded(15913)
    model = MushingGaitNet()
    opt = torch.optim.AdamW(_no_decay_groups(model, 2e-3, 0.05))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warm_cosine(20, 200))
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(-1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _gaits(gen, 64),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        watch=watch,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("accuracy above 0.6 at the end", _mean(acc[-10:]) > 0.6)


def _hf_llama(vocab=128, dim=32, layers=2, heads=2):
    """A tiny Hugging Face Llama causal LM built from its config (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


@scenario(
    family="hf_llama_ledger_byte_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tiny Hugging Face Llama causal LM (from its config: grouped-query "
    "attention, tied embeddings) on byte windows, AdamW (lr 3e-3, weight decay 0.01), warm-up "
    "then cosine decay, clipping at 1.0.",
)
def h159_hf_llama_byte_control(ctx: Context) -> None:
    gen = seeded(15914)
    model = _hf_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _warm_cosine(15, 150))

    def lm(logits, y):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    _train(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        150,
        lm,
        forward=lambda m, x: m(input_ids=x).logits,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses))


class HurdleAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class HurdleRhythmLM(nn.Module):
    """A causal LM over a hurdler's stride log (tokens: stride-length bins and hurdle marks),
    scaled_dot_product_attention with is_causal, tied input/output embeddings."""

    def __init__(self, vocab=24, dim=32, heads=2, length=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.attn = HurdleAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)

    def forward(self, idx):
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        x = x + self.attn(self.ln1(x))
        x = x + self.ff(self.ln2(x))
        return self.ln_f(x) @ self.tok.weight.T


def _strides(gen, batch, vocab=24, length=32):
    """Three strides between hurdles (bins drifting with fatigue), then the hurdle mark."""
    while True:
        base = torch.randint(4, 12, (batch, 1), generator=gen)
        i = torch.arange(length + 1)[None]
        drift = (i // 8) % 3
        seq = torch.where(i % 4 == 3, torch.full_like(i, vocab - 1), base + drift + (i % 4))
        noise = torch.rand(batch, length + 1, generator=gen) < 0.05
        seq = torch.where(
            noise, torch.randint(0, vocab - 1, (batch, length + 1), generator=gen), seq
        )
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="hurdle_stride_rhythm_lm",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a one-block causal transformer (scaled_dot_product_attention, tied "
    "embeddings) under fp16 autocast with a GradScaler, RAdam with a OneCycleLR schedule "
    "(max lr 5e-3), clipping at 1.0 after unscaling.",
)
def h159_hurdle_stride_control(ctx: Context) -> None:
    gen = seeded(15915)
    model = HurdleRhythmLM()
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def lm(logits, y):
        return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))

    _train(ctx, model, opt, _strides(gen, 32), 200, lm, clip=1.0, sched=sched, scaler=scaler)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the scale never collapsed", min(ctx.scales) > 1.0)


class TipiPoleNet(nn.Module):
    """Regresses the peak load on a tipi's lift pole (standardised) from 12 readings (wind
    gusts, cover tension, pole count, ground frost, ...): an MLP with LayerNorm."""

    def __init__(self, inputs=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.ln1 = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.ln2 = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.ln1(self.fc1(x)))
        h = F.silu(self.ln2(self.fc2(h)))
        return self.out(h).squeeze(-1)


def _poles(gen, batch, inputs=12):
    w = torch.linspace(-1, 1, inputs)
    while True:
        x = torch.randn(batch, inputs, generator=gen)
        y = torch.tanh(x @ w / 2) + 0.3 * x[:, 3] ** 2 - 0.3
        # gusty days: a fifth of the readings carry heavy-tailed noise
        noisy = torch.rand(batch, generator=gen) < 0.2
        y = y + torch.where(noisy, 0.5, 0.05) * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="tipi_lift_pole_load_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a LayerNorm MLP on noisy batches (a fifth of the targets with heavy noise), "
    "Huber loss, Adadelta (lr 1.0) with ReduceLROnPlateau, clipping at 5.0.",
)
def h159_tipi_pole_control(ctx: Context) -> None:
    gen = seeded(15916)
    model = TipiPoleNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(ctx, model, opt, _poles(gen, 64), 250, F.huber_loss, clip=5.0, sched=sched)
    ctx.check("the loss fell", _fell(ctx.losses, k=20, ratio=0.6))
