"""Held-out set 508 (``h508_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a joggling siteswap transformer whose feed-forward layer is a mixture of experts routed by
a fixed hash of the token id, trained with AdamW weight_decay typed 0.0 and no QK-norm (attention
logits grow); an ornithopter flap-lift 12-layer ReLU regressor initialised with the uniform bound
used as a normal std (gradients grow through depth, clipped, SGD); a throwball release-distance GELU
regressor fed one shard in centimetres (Adamax); a birchbark-canoe gunwale-flex regressor whose
fc1 group lr is typed 3e-9 (NAdam); a fire-tower smoke-sighting Poisson net dividing sightings by
staffed hours with no guard (0/0 on a closed day, Adagrad); a hand-plane shaving-grade classifier
whose temperature is typed 0.004 for 4.0 (softmax collapse, RMSprop); a bed-race push-split
regressor whose resumed step keeps a static fp16 loss scale of 1024 (one gradient burst, SGD
momentum, clipped); a dugout-canoe burn-depth SiLU regressor whose L2 penalty is subtracted (a slow
climb, RAdam); a card-scraper burr-grade classifier whose prior bias log(0.01) is applied to every
layer (dead ReLUs, ASGD); a toboggan wax glide-time regressor whose resumed step uses a loss
weight of 1e5 (Adam's second moment poisoned, updates stall).

Controls: a fire-lookout haze-visibility BatchNorm conv1d classifier with its batch-norm layers
put in eval mode from step 150 (SGD momentum, warm-up + cosine); a smokejumper canopy-drift GELU
classifier under fp16 autocast + GradScaler (AdamW, OneCycleLR, label smoothing, clipping); a
trotline hook-set depth Huber regressor (SGD Nesterov, two param groups, ReduceLROnPlateau,
accumulation 2, clipping).
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


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    penalty=None,
):
    """The file's loop. ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``weight(step)`` multiplies the backpropagated loss; ``penalty()`` is added to it;
    ``after(step, loss)`` runs after the optimizer step. Stops after a non-finite loss once
    ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
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
            loss = loss_fn(model(x), y)
            w = weight(step) if weight is not None else 1.0
            total = w * loss + (penalty() if penalty is not None else 0.0)
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0, flip=0.0):
    """Readings scattered around one prototype per class (``flip``: share of noisy labels)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + spread * torch.randn(batch, d_in, generator=gen)
        if flip > 0:
            noisy = torch.rand(batch, generator=gen) < flip
            y = torch.where(noisy, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


# -- 1. attention logit growth: a hash-routed MoE transformer with weight decay typed 0.0 ---------


class _Attention(nn.Module):
    """Causal self-attention written out (no QK-norm); keeps the peak |q.k/sqrt(d)|."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = (m(x).reshape(b, t, h, -1).transpose(1, 2) for m in (self.q, self.k, self.v))
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        self.peak = float(logits.detach().abs().max())
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        y = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _HashMoE(nn.Module):
    """Feed-forward mixture of experts; each token goes to the expert fixed by a hash of its id
    (no learnt router)."""

    def __init__(self, dim, experts=4, hidden=64):
        super().__init__()
        self.n = experts
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(experts)
        )

    def route(self, idx):
        return (idx * 2654435761 + 97) % 1000003 % self.n

    def forward(self, x, idx):
        route = self.route(idx)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            out = out + (route == e).unsqueeze(-1).to(x.dtype) * expert(x)
        return out


class _MoEBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.moe = _HashMoE(dim)

    def forward(self, x, idx):
        x = x + self.attn(self.ln1(x))
        return x + self.moe(self.ln2(x), idx)


class _HashMoETransformer(nn.Module):
    def __init__(self, vocab=16, dim=32, layers=2, length=24):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.blocks = nn.ModuleList(_MoEBlock(dim) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x, idx)
        return self.head(self.ln_f(x))


def _siteswap_batches(gen, batch=32, length=24, vocab=16, throw=3):
    """Generated joggling juggle logs: each token is the ball caught at that beat; in a
    siteswap-3 pattern the ball caught at beat t was thrown at beat t-3 (target: that ball)."""
    while True:
        x = torch.randint(0, vocab, (batch, length), generator=gen)
        y = torch.full_like(x, -100)
        y[:, throw:] = x[:, :-throw]
        yield x, y


@scenario(
    family="joggling_siteswap_catch_hash_moe_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="Joggling (running while juggling) siteswap transformer, hand-written: pre-LN causal "
    "self-attention (no QK-norm) and a feed-forward mixture of 4 experts routed by a fixed hash "
    "of the token id (no learnt router), over generated catch sequences where the target is the "
    "ball thrown 3 beats earlier; cross-entropy, AdamW at lr 1e-2. The config's weight_decay is "
    "typed 0.0 for 0.1: nothing holds the query/key weights, they keep growing to sharpen the "
    "look-back and the attention logits q.k/sqrt(d) grow over 10x (to over 20).",
)
def h508_joggling_moe_decay_typo(ctx) -> None:
    gen = seeded(5081)
    model = _HashMoETransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)  # typed for 0.1
    qk0 = [b.attn.q.weight.detach().norm().item() for b in model.blocks]
    peaks = []

    def after(step, loss):
        peaks.append(max(b.attn.peak for b in model.blocks))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _siteswap_batches(gen),
        240,
        lambda out, y: F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)),
        after=after,
    )
    qk1 = [b.attn.q.weight.detach().norm().item() for b in model.blocks]
    ctx.check("the attention logits grew over 10x their start", max(peaks[-10:]) > 10 * peaks[0])
    ctx.check("the attention logits reached over 15", max(peaks[-10:]) > 15)
    ctx.check(
        "the query weights grew over 1.5x", max(b / a for a, b in zip(qk0, qk1, strict=True)) > 1.5
    )
    ctx.check("the loss fell (it learnt the look-back)", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))


# -- 2. exploding gradients: the uniform bound used as a normal std in a deep ReLU net ------------


class _DeepRelu(nn.Module):
    def __init__(self, d_in=8, width=64, depth=12):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1) + [1]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.pre: list[torch.Tensor] = []

    def forward(self, x):
        self.pre = []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            self.pre.append(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x.squeeze(-1)


@scenario(
    family="ornithopter_flap_lift_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Ornithopter flap-lift regressor (12-layer ReLU MLP on flap frequency, stroke angle, "
    "wing twist and airspeed features, MSE, plain SGD at lr 1e-3). The hand-written init draws "
    "each weight from a normal with std sqrt(6/fan_in), the uniform He bound used as a std (a "
    "gain sqrt(3) over He per layer): the backward signal grows layer by layer towards the input, "
    "dL/dz at layers.0 is hundreds of times the last layer's all run long; clipping at norm 1 "
    "keeps it from blowing up but the loss stays thousands of times the target's variance.",
)
def h508_ornithopter_init_bound(ctx) -> None:
    gen = seeded(5082)
    model = _DeepRelu()
    for layer in model.layers:
        nn.init.normal_(layer.weight, std=math.sqrt(6.0 / layer.in_features))  # bound, not std
        nn.init.zeros_(layer.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratio = []
    ctx.attach(model, opt)
    losses = []
    batches = _readings(gen, 64, 8, 5082)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        g = [float(z.grad.norm()) for z in model.pre]
        ratio.append(g[0] / g[-1])
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("dL/dz at layers.0 over 50x the last layer's at step 0", ratio[0] > 50)
    ctx.check("dL/dz at layers.0 still over 50x the last layer's at the end", ratio[-1] > 50)
    ctx.check("the loss stays over 1000x the target's variance", _mean(losses[-10:]) > 1000 * 0.6)
    ctx.check("finite", _finite(losses))


# -- 3. data outlier: one shard logged in centimetres -----------------------------------------------

THROWBALL_ONSET = 120


@scenario(
    family="throwball_release_distance_gelu_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=THROWBALL_ONSET,
    note="Throwball release-distance regressor (GELU MLP on arm speed, release height, grip "
    "spread and step length features, MSE, Adamax at 3e-3, clipping at 1). The shard read at step "
    "120 came from a court whose logger wrote centimetres instead of metres: that one batch's "
    "features are 100x too large, the loss and gradient jump, clipping holds the step and the run "
    "recovers.",
)
def h508_throwball_centimetre_shard(ctx) -> None:
    gen = seeded(5083)
    model = _Net(10, 64, 1, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        return (100.0 * x, y) if step == THROWBALL_ONSET else (x, y)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5083), 220, F.mse_loss, alter=alter, clip=1.0
    )
    k = THROWBALL_ONSET
    pre = _mean(losses[k - 20 : k])
    ctx.check("the loss at the bad shard over 100x the level before", losses[k] > 100 * pre)
    ctx.check(
        "the gradient at the bad shard over 20x the median",
        norms[k] > 20 * _median(norms[k - 40 : k]),
    )
    ctx.check("recovered (last 20 under 3x the level before)", _mean(losses[-20:]) < 3 * pre)
    ctx.check("finite", _finite(losses))


# -- 4. update ratio out of range: fc1 group lr typed 3e-9 ----------------------------------------


@scenario(
    family="birchbark_canoe_gunwale_flex_two_group_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Birchbark-canoe gunwale-flex regressor (ReLU MLP on bark thickness, rib spacing, "
    "thwart length and spruce-root lashing features, MSE, NAdam with two param groups). The "
    "trunk group (fc1) has its lr typed 3e-9 for 3e-3: fc1 stays at its random init (relative "
    "change under 1e-5) while the rest trains at 3e-3.",
)
def h508_birchbark_group_lr_typo(ctx) -> None:
    gen = seeded(5084)
    model = _Net(10, 64, 1)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.NAdam(
        [{"params": model.fc1.parameters(), "lr": 3e-9}, {"params": rest, "lr": 3e-3}]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5084), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-5 of its norm", _rel_change(model.fc1.weight, w1) < 1e-5)
    ctx.check("the head moved over 5% of its norm", _rel_change(model.head.weight, wh) > 0.05)
    ctx.check("finite", _finite(losses))


# -- 5. nonfinite: sightings divided by staffed hours, 0/0 on a closed day ------------------------

TOWER_ONSET = 100


class _SightingRate(nn.Module):
    """Smoke sightings per staffed hour (no guard on zero hours)."""

    def forward(self, counts, hours):
        return counts / hours


class _TowerNet(nn.Module):
    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.rate = _SightingRate()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        r = self.rate(x[:, 0], x[:, 1])
        z = torch.cat([r[:, None], x[:, 2:]], 1)
        return self.head(self.act1(self.fc1(z))).squeeze(-1)


def _tower_batches(gen, batch=64, seed=5085):
    g = torch.Generator().manual_seed(seed)
    w = 0.4 * torch.randn(5, generator=g)
    while True:
        hours = 4.0 + 8.0 * torch.rand(batch, generator=gen)
        counts = torch.poisson(hours * 0.3)
        weather = torch.randn(batch, 5, generator=gen)
        lam = torch.exp(0.3 + weather @ w + 0.5 * counts / hours)
        yield torch.cat([counts[:, None], hours[:, None], weather], 1), torch.poisson(lam)


@scenario(
    family="fire_tower_smoke_sighting_rate_poisson_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("rate",),
    diverges=TOWER_ONSET,
    heldout=True,
    onset=TOWER_ONSET,
    note="Fire-lookout-tower next-day smoke-report Poisson net (SiLU MLP on the sightings per "
    "staffed hour and five weather features, Poisson NLL on the log rate, Adagrad at 0.05). The "
    "rate module divides sightings by staffed hours with no guard: the batch at step 100 holds a "
    "day the tower was closed (0 sightings in 0 hours), 0/0 gives NaN in rate and the loss is "
    "NaN at step 100.",
)
def h508_fire_tower_zero_hours(ctx) -> None:
    gen = seeded(5085)
    model = _TowerNet(d_in=5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = {}

    def alter(step, x, y):
        if step == TOWER_ONSET:
            x = x.clone()
            x[3, 0], x[3, 1] = 0.0, 0.0  # a closed day
            seen["rate"] = bool(torch.isfinite(model.rate(x[:, 0], x[:, 1])).all())
        return x, y

    losses, _ = _train(
        ctx,
        model,
        opt,
        _tower_batches(gen),
        200,
        lambda out, y: F.poisson_nll_loss(out, y, log_input=True),
        alter=alter,
    )
    k = TOWER_ONSET
    ctx.check("finite before the closed day", _finite(losses[:k]))
    ctx.check("the loss is NaN at step 100", len(losses) > k and math.isnan(losses[k]))
    ctx.check("the rate module produced a non-finite value", seen.get("rate") is False)
    ctx.check("it trained before (loss fell)", _mean(losses[k - 10 : k]) < 0.9 * _mean(losses[:10]))


# -- 6. softmax collapse: temperature typed 0.004 for 4.0 ----------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="hand_plane_shaving_grade_temperature_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Hand-plane shaving-grade classifier (ReLU MLP on blade projection, mouth width, "
    "bed angle and shaving thickness features, 6 grades, cross-entropy, RMSprop at 1e-3). The "
    "softening temperature is typed 0.004 for 4.0: the logits are multiplied by 250, the "
    "softmax saturates and over half of the rows' target probability rounds to exactly 1.0.",
)
def h508_hand_plane_temperature_typo(ctx) -> None:
    gen = seeded(5086)
    model = _TempNet(12, 48, 6, temperature=0.004)  # typed for 4.0
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fracs, fracs_ok = [], []
    probe = _grades(torch.Generator().manual_seed(50860), 256, 12, 6, 5086)
    xp, yp = next(probe)

    def after(step, loss):
        with torch.no_grad():
            z = model.head(model.features(xp))
            fracs.append(collapsed_fraction(z / model.temperature, yp))
            fracs_ok.append(collapsed_fraction(z / 4.0, yp))

    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 5086),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over half the rows collapsed to probability 1.0", _mean(fracs[-10:]) > 0.5)
    ctx.check("with the intended temperature under 5% would", _mean(fracs_ok[-10:]) < 0.05)
    ctx.check("finite", _finite(losses))


# -- 7. gradient spike: a resumed step keeps the static fp16 loss scale ---------------------------

BEDRACE_ONSET = 140


@scenario(
    family="bed_race_push_split_time_relu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=BEDRACE_ONSET,
    note="Bed-race push-split regressor (ReLU MLP on pusher count, castor size, course gradient "
    "and bed mass features, MSE, SGD momentum 0.9 at 1e-2, clipping at norm 1). The first step "
    "after a resume at 140 goes through an old fp16 code path that multiplies the loss by a "
    "static loss scale of 1024 and never unscales: one gradient 1024x too large on an ordinary "
    "batch and logged loss; clipping holds the update and the run goes on.",
)
def h508_bed_race_static_scale(ctx) -> None:
    gen = seeded(5087)
    model = _Net(10, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def weight(step):
        return 1024.0 if step == BEDRACE_ONSET else 1.0

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5087), 240, F.mse_loss, weight=weight, clip=1.0
    )
    k = BEDRACE_ONSET
    pre = _mean(losses[k - 20 : k])
    others = norms[k - 40 : k] + norms[k + 1 : k + 40]
    ctx.check("the gradient at the resume over 100x the median", norms[k] > 100 * _median(others))
    ctx.check("the logged loss at the resume is ordinary (under 2x)", losses[k] < 2 * pre)
    ctx.check("no divergence afterwards (last 20 under 2x pre)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 8. loss divergence: the L2 penalty subtracted ------------------------------------------------


@scenario(
    family="dugout_canoe_burn_depth_silu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Dugout-canoe hull burn-depth regressor (SiLU MLP on log diameter, char time, adze "
    "passes and moisture features, MSE, RAdam at 1e-2). The hand-written L2 penalty is "
    "subtracted from the loss instead of added (a sign lost when the term moved to a 'reward' "
    "config): the weights inflate step by step and, once the fit is made, the data loss climbs "
    "slowly and keeps climbing, with no jump and no NaN.",
)
def h508_dugout_penalty_sign(ctx) -> None:
    gen = seeded(5088)
    model = _Net(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    wd = 0.05
    n0 = float(_params(model).norm())

    def penalty():
        return -wd * sum((p * p).sum() for n, p in model.named_parameters() if n.endswith("weight"))

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5088), 300, F.mse_loss, penalty=penalty
    )
    best = min(_mean(losses[i : i + 10]) for i in range(0, len(losses) - 10, 10))
    ctx.check("the weights inflated over 1.5x", float(_params(model).norm()) > 1.5 * n0)
    ctx.check("the loss climbed over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("it trained first (best under 0.5x the start)", best < 0.5 * _mean(losses[:10]))
    ctx.check("finite", _finite(losses))


# -- 9. loss of plasticity: the prior bias applied to every layer ---------------------------------


@scenario(
    family="card_scraper_burr_grade_prior_bias_relu_classifier",
    optimizer="ASGD",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Card-scraper burr-grade classifier (ReLU MLP on burnishing angle, pass count, steel "
    "hardness and shaving width features, 5 grades, cross-entropy, ASGD at 0.05). The init "
    "helper meant to set the head's prior bias log(0.01) = -4.6 loops over every Linear: fc1's "
    "pre-activations sit far below zero, nearly all act1 units are dead from the start, get no "
    "gradient and never learn; the loss stays near chance while the intended init learns.",
)
def h508_card_scraper_prior_bias(ctx) -> None:
    gen = seeded(5089)
    model = _Net(12, 48, 5)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, math.log(0.01))  # meant for the head only
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    xp, _ = next(_grades(torch.Generator().manual_seed(50890), 256, 12, 5, 5089))
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 12, 5, 5089), 200, F.cross_entropy, classifier=True
    )
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(xp)))
    # the intended init, same data, same optimizer
    seeded(5089)
    ref = _Net(12, 48, 5)
    nn.init.constant_(ref.head.bias, math.log(0.01))
    ropt = torch.optim.ASGD(ref.parameters(), lr=0.05)
    rb = _grades(torch.Generator().manual_seed(5089), 64, 12, 5, 5089)
    rl = []
    for _ in range(200):
        x, y = next(rb)
        loss = F.cross_entropy(ref(x), y)
        loss.backward()
        ropt.step()
        ropt.zero_grad()
        rl.append(float(loss.detach()))
    ctx.check("over 90% of act1's units dead at the end", dead > 0.9)
    ctx.check(
        "the loss stays near chance (last 10 over 0.8 ln 5)",
        _mean(losses[-10:]) > 0.8 * math.log(5),
    )
    ctx.check(
        "the intended init learns (last 10 under half of ours)",
        _mean(rl[-10:]) < 0.5 * _mean(losses[-10:]),
    )
    ctx.check("finite", _finite(losses))


# -- 10. Adam second moment poisoned: a resumed step reads a loss weight of 1e5 -------------------

TOBOGGAN_ONSET = 80


@scenario(
    family="toboggan_wax_glide_time_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=TOBOGGAN_ONSET,
    note="Toboggan wax glide-time regressor (GELU MLP on snow temperature, wax hardness, run "
    "length and slope features, MSE, Adam at 1e-3, beta2 0.999). The first step after a resume "
    "at 80 reads its loss weight from a config written in units of 1e-5 (1e5 for 1): one "
    "gradient 1e5x too large fills Adam's second moment, which then takes thousands of steps to decay; the "
    "updates afterwards are over 10x smaller and the loss stops improving.",
)
def h508_toboggan_loss_weight(ctx) -> None:
    gen = seeded(5090)
    model = _Net(10, 64, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    moves = []
    prev = {"p": _params(model)}

    def weight(step):
        return 1e5 if step == TOBOGGAN_ONSET else 1.0  # 1 in units of 1e-5

    def after(step, loss):
        now = _params(model)
        moves.append(float((now - prev["p"]).norm()))
        prev["p"] = now

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5090), 200, F.mse_loss, weight=weight, after=after
    )
    k = TOBOGGAN_ONSET
    ctx.check(
        "the gradient at the resume over 1000x the median",
        norms[k] > 1000 * _median(norms[k - 40 : k]),
    )
    ctx.check(
        "updates 40-100 steps later under 0.1x those before",
        _mean(moves[k + 40 : k + 100]) < 0.1 * _mean(moves[k - 30 : k]),
    )
    ctx.check(
        "the loss stops improving (last 20 over 0.8x the 20 before the resume)",
        _mean(losses[-20:]) > 0.8 * _mean(losses[k - 20 : k]),
    )
    ctx.check("finite", _finite(losses))


# -- controls -------------------------------------------------------------------------------------


class _HazeConv(nn.Module):
    """1-D conv net with batch norm over a sightline's light-intensity profile."""

    def __init__(self, classes=4, width=12):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x[:, None])))
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(h.mean(-1))


def _haze_batches(gen, batch=48, length=32, classes=4):
    """Intensity profiles whose decay rate and ripple depend on the haze class."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = (1.0 + y.float())[:, None]
        ripple = torch.sin(2 * math.pi * (2 + y.float())[:, None] * t)
        x = torch.exp(-rate * t) + 0.3 * ripple + 0.2 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="fire_lookout_haze_visibility_bn_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fire-lookout haze-visibility classifier (1-D conv net with two BatchNorm1d layers over "
    "a sightline's light-intensity profile, 4 haze classes, cross-entropy, SGD momentum 0.9 at "
    "0.05 with 20 warm-up steps then cosine, noisy profiles). From step 150 the batch-norm "
    "layers are put in eval mode (running statistics frozen) for the rest of training, as done "
    "before fine-tuning on small batches. Healthy.",
)
def h508_lookout_bn_frozen_control(ctx) -> None:
    gen = seeded(5091)
    model = _HazeConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    steps = 240
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * s / steps))
    )
    frozen = {}

    def before(step):
        if step >= 150:
            model.bn1.eval()
            model.bn2.eval()
            if step == 150:
                frozen["mean"] = model.bn1.running_mean.clone()

    losses, _ = _train(
        ctx,
        model,
        opt,
        _haze_batches(gen),
        steps,
        F.cross_entropy,
        classifier=True,
        before=before,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
    ctx.check(
        "bn statistics frozen from step 150",
        "mean" in frozen and torch.equal(frozen["mean"], model.bn1.running_mean),
    )
    ctx.check(
        "the loss after 150 no worse than before",
        _mean(losses[-20:]) < 1.2 * _mean(losses[130:150]),
    )


@scenario(
    family="smokejumper_canopy_drift_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Smokejumper canopy-drift classifier (GELU MLP on wind speed, exit altitude, canopy "
    "loading and spotter-streamer drift features, 5 drift bands, 10% noisy labels) under fp16 "
    "autocast with a torch.amp.GradScaler, AdamW at 3e-3 with OneCycleLR, label smoothing 0.1, "
    "clipping at norm 1 after unscaling. Healthy.",
)
def h508_smokejumper_fp16_control(ctx) -> None:
    gen = seeded(5092)
    model = _Net(12, 64, 5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _grades(gen, 64, 12, 5, 5092, spread=1.2, flip=0.1)
    losses = []
    for _ in range(steps):
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
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("the loss fell", _fell(losses, ratio=0.7))
    ctx.check("finite", _finite(losses))
    ctx.check("the loss scale stayed positive and finite", all(0 < s < 1e9 for s in ctx.scales))


@scenario(
    family="trotline_hook_set_depth_huber_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Trotline hook-set depth regressor (ReLU MLP on current speed, sinker weight, snood "
    "length and river-bed slope features, Huber loss, SGD Nesterov momentum 0.9, two param "
    "groups with the head at half the trunk's lr, ReduceLROnPlateau, gradient accumulation 2, "
    "clipping at norm 2). Healthy.",
)
def h508_trotline_huber_control(ctx) -> None:
    gen = seeded(5093)
    model = _Net(10, 64, 1)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.SGD(
        [{"params": trunk, "lr": 2e-2}, {"params": model.head.parameters(), "lr": 1e-2}],
        momentum=0.9,
        nesterov=True,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 5093, noise=0.1),
        220,
        F.huber_loss,
        after=after,
        clip=2.0,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
