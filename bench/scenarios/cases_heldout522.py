"""Held-out set 522 (``h522_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a caxixi-shaker rhythm FNet encoder (2-D Fourier token mixing) whose softmax-attention
pool gets the head's lr 3e-2 by a param-group copy (attention logits grow, Adam); a gannet-dive
entry-speed regressor taking sqrt(2 g h) of a predicted height with no clamp (NaN, plain SGD); a
winkle-picking bucket-weight Huber regressor fed one shard in grams (SGD momentum, clipped); a
carrageen-moss bleach-time regressor with a stale static loss scale 65536 left in for one step
(Adam's second moment poisoned, AdamW); a percebes-harvest site-embedding regressor whose
embedding group's warm-up length is typed 1e9 (frozen embedding, RMSprop); a capercaillie lek
call deep tanh classifier initialised with gain 4 (gradients grow through depth, RAdam); a
woodcock roding-count ReLU regressor started at Adagrad lr 2 with no warm-up (dead ReLUs); a
skein-geese formation cosine classifier whose scale is typed 3000 for 30 (softmax saturates,
NAdam); a dulse-harvest drying-yield regressor whose accumulation divides by 8 except one resumed
step that multiplies (gradient spike, SGD Nesterov); a cornhusk-doll braid-tension regressor under
fp16 autocast + GradScaler whose tension sensor switches to millinewtons (fp16 overflow, Adamax).

Controls: a shearwater foraging-trip classifier trained with DropConnect (Adam, label smoothing);
a salt-fingering staircase step-height Huber regressor (RMSprop, OneCycleLR, clipping, noisy
targets); a sea-urchin diver catch-grade 1-D CNN with tied stem weights (SGD Nesterov, warm-up +
cosine, accumulation 2, label smoothing).
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``weight(step)`` scales the
    backpropagated loss, ``after(step, loss)``. Stops after a non-finite loss once ``ctx.step``
    has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        w = weight(step) if weight is not None else 1.0
        (w * loss).backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
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


# -- 1. attention logit growth: an FNet encoder whose attention pool gets the head's lr ----------


class _FourierMix(nn.Module):
    """FNet token mixing: the real part of a 2-D FFT over (tokens, features)."""

    def forward(self, x):
        return torch.fft.fft2(x, dim=(-2, -1)).real


class _FNetLayer(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.mix = _FourierMix()
        self.ln1 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)
        self.ln2 = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.ln1(x + self.mix(x))
        return self.ln2(x + self.out(F.gelu(self.fc(x))))


class _AttentionPool(nn.Module):
    """One softmax-attention layer: a learned query attends over the tokens."""

    def __init__(self, dim):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.last_logits = None

    def forward(self, x):
        logits = self.key(x) @ self.query / math.sqrt(x.shape[-1])
        self.last_logits = logits.detach()
        att = torch.softmax(logits, -1)
        return (att.unsqueeze(-1) * self.value(x)).sum(1)


class _CaxixiFNet(nn.Module):
    def __init__(self, d_in=6, dim=32, layers=2, classes=4):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.layers = nn.ModuleList(_FNetLayer(dim) for _ in range(layers))
        self.pool = _AttentionPool(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        for layer in self.layers:
            h = layer(h)
        return self.head(self.pool(h))


def _caxixi_beats(gen, batch, length=16, classes=4):
    """Sequences of shaker beats (loudness, seed-rattle, tilt, wrist speed, gourd hit, accent):
    the pattern is named by the one accented beat's sound; the other beats are filler."""
    g = torch.Generator().manual_seed(52210)
    protos = 1.5 * torch.randn(classes, 5, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.randn(batch, length, 6, generator=gen)
        x[:, :, 5] = 0.0
        pos = torch.randint(0, length, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, pos, :5] = protos[y] + 0.3 * torch.randn(batch, 5, generator=gen)
        x[rows, pos, 5] = 1.0
        yield x, y


@scenario(
    family="caxixi_shaker_rhythm_fnet_attention_pool_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("pool",),
    diverges=None,
    heldout=True,
    note="Caxixi-shaker rhythm-pattern classifier: a hand-written FNet encoder (token mixing by "
    "the real part of a 2-D FFT, no attention) with one softmax-attention pooling layer (learned "
    "query, q.k/sqrt(d)) on top, cross-entropy, Adam. The param groups are built by copying the "
    "head's dict: the pool's query and key get lr 3e-2 with no weight decay instead of 3e-4; as "
    "the pool locks onto the accented beat its logits q.k/sqrt(d) grow without bound.",
)
def h522_caxixi_fnet_pool_lr_copy(ctx):
    gen = seeded(5221)
    model = _CaxixiFNet()
    pool = list(model.pool.parameters())
    pool_ids = {id(p) for p in pool}
    rest = [p for p in model.parameters() if id(p) not in pool_ids]
    opt = torch.optim.Adam([{"params": rest, "lr": 3e-3}, {"params": pool, "lr": 3e-2}])
    amax = []

    def after(step, loss):
        amax.append(float(model.pool.last_logits.abs().max()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _caxixi_beats(gen, 32),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("pool logits grew over 20x", _mean(amax[-10:]) > 20 * _mean(amax[:5]))
    ctx.check("pool logits over 15 at the end", _mean(amax[-10:]) > 15)
    ctx.check("finite", _finite(losses))


# -- 2. nonfinite: sqrt(2 g h) of a predicted dive height with no clamp -------------------------


class _Torricelli(nn.Module):
    """Entry speed from drop height: v = sqrt(2 g h) (no clamp on h)."""

    def forward(self, h):
        return torch.sqrt(2 * 9.81 * h)


class _GannetDive(nn.Module):
    def __init__(self, d_in=5, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.height = nn.Linear(hidden, 1)
        self.speed = _Torricelli()

    def forward(self, x):
        h = self.height(self.act1(self.fc1(x))).squeeze(-1)
        return self.speed(h)


GANNET_ONSET = 100


def _gannet_dives(gen, batch, seed=52220):
    """Sighting readings (wing fold angle, fish depth, wind, swell, light) and entry speed in
    m/s from a true drop height of 3-30 m; from step 100 a shallow-plunge colony joins."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, generator=g)
    step = 0
    while True:
        x = torch.randn(batch, 5, generator=gen)
        h = 16.0 + 8.0 * torch.tanh(x @ w / math.sqrt(5))
        if step >= GANNET_ONSET:
            x[: batch // 4, 1] = -3.0 + 0.3 * torch.randn(batch // 4, generator=gen)
            h[: batch // 4] = 0.05
        step += 1
        yield x, torch.sqrt(2 * 9.81 * h)


@scenario(
    family="gannet_dive_entry_speed_sqrt_physics_regressor",
    optimizer="SGD",
    cause="nonfinite",
    where=("speed",),
    diverges=106,
    heldout=True,
    onset=GANNET_ONSET,
    note="Gannet plunge-dive entry-speed regressor: a tanh MLP predicts the drop height and a "
    "physics layer turns it into speed with sqrt(2 g h), MSE on speed, plain SGD. The clamp "
    "h >= 0 was left out. From step 100 sightings from a shallow-plunge colony (heights near 0, "
    "fish depth far outside the range) join the batches: the predicted height goes negative on "
    "them and sqrt of a negative number makes the output and the loss NaN.",
)
def h522_gannet_dive_sqrt_no_clamp(ctx):
    gen = seeded(5222)
    model = _GannetDive()
    with torch.no_grad():
        model.height.bias.fill_(16.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    h_min = []
    model.speed.register_forward_pre_hook(lambda m, a: h_min.append(float(a[0].detach().min())))
    losses, _ = _loop(ctx, model, opt, _gannet_dives(gen, 32), 200, F.mse_loss)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("finite before onset", _finite(losses[:GANNET_ONSET]))
    ctx.check("trained before onset", _fell(losses[:GANNET_ONSET]))
    ctx.check("loss NaN at or after onset", first_bad is not None and first_bad >= GANNET_ONSET)
    ctx.check("NaN at step 106", first_bad == 106)
    ctx.check(
        "the NaN step's predicted height is negative",
        first_bad is not None and h_min[first_bad] < 0,
    )
    ctx.check("heights positive before it", first_bad is not None and min(h_min[:first_bad]) > 0)


# -- 3. data outlier: one shard of bucket weights in grams ---------------------------------------

WINKLE_ONSET = 120


@scenario(
    family="winkle_picking_bucket_weight_relu_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=WINKLE_ONSET,
    note="Winkle-picking bucket-weight regressor (ReLU MLP on tide height, rock cover, minutes "
    "on the shore, wrack depth, bucket tare; Huber loss, SGD momentum 0.9, clipping at 1). The "
    "shard read at step 120 comes from a landing station that logs bucket tare and bucket "
    "weight in grams instead of kilograms (x1000): one batch with a huge loss and gradient, clipped, "
    "and the run recovers.",
)
def h522_winkle_bucket_grams_shard(ctx):
    gen = seeded(5223)
    model = _Net(5, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def alter(step, x, y):
        if step != WINKLE_ONSET:
            return x, y
        x = x.clone()
        x[:, 4] = 1000.0 * (1.0 + 0.2 * x[:, 4])
        return x, y * 1000.0

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 52230),
        220,
        lambda o, t: F.huber_loss(o, t, delta=1.0),
        alter=alter,
        clip=1.0,
    )
    o = WINKLE_ONSET
    ctx.check(
        "loss over 100x the median at the shard", losses[o] > 100 * _median(losses[o - 20 : o])
    )
    ctx.check(
        "gradient over 20x the median at the shard", norms[o] > 20 * _median(norms[o - 20 : o])
    )
    ctx.check(
        "recovered (last 10 under 2x pre-shard)",
        _mean(losses[-10:]) < 2 * _mean(losses[o - 10 : o]),
    )
    ctx.check("trained before the shard", _fell(losses[:o]))


# -- 4. adam second moment: a stale static loss scale 65536 for one step ------------------------

CARRAGEEN_ONSET = 100


@scenario(
    family="carrageen_moss_bleach_time_silu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=CARRAGEEN_ONSET,
    note="Carrageen-moss sun-bleaching time regressor (SiLU MLP on sun hours, rain, frond "
    "thickness, turning count, salt rinse; MSE, AdamW lr 1e-3, beta2 0.999). A checkpoint "
    "resume at step 100 runs one step through an old fp16 code path that multiplies the fp32 "
    "loss by a static loss scale 65536 and never unscales: one gradient about 6e4x the usual "
    "fills AdamW's second moment and every later update is tiny; the loss stalls.",
)
def h522_carrageen_stale_loss_scale(ctx):
    gen = seeded(5224)
    model = _Net(5, 48, 1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    moves, vs, prev = [], [], {}

    def before(step):
        prev["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step, loss):
        moves.append(
            math.sqrt(
                sum(
                    float((p.detach() - q).pow(2).sum())
                    for p, q in zip(model.parameters(), prev["w"], strict=True)
                )
            )
        )
        vs.append(float(opt.state[model.fc1.weight]["exp_avg_sq"].sqrt().median()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 52240),
        220,
        F.mse_loss,
        before=before,
        after=after,
        weight=lambda s: 65536.0 if s == CARRAGEEN_ONSET else 1.0,
    )
    o = CARRAGEEN_ONSET
    ctx.check("gradient over 1e3x the median at onset", norms[o] > 1e3 * _median(norms[o - 30 : o]))
    ctx.check("fc1 median sqrt(v) over 30x after onset", vs[o + 5] > 30 * vs[o - 1])
    ctx.check(
        "updates after onset under 0.2x before",
        _mean(moves[o + 20 : o + 60]) < 0.2 * _mean(moves[o - 40 : o]),
    )
    ctx.check("finite", _finite(losses))


# -- 5. update ratio: the embedding group's warm-up length typed 1e9 -----------------------------


class _PercebesNet(nn.Module):
    def __init__(self, sites=24, dim=8, d_in=4, hidden=48):
        super().__init__()
        self.site = nn.Embedding(sites, dim)
        self.fc1 = nn.Linear(dim + d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        site, rest = x[:, 0].long(), x[:, 1:]
        h = torch.cat([self.site(site), rest], -1)
        return self.head(self.act1(self.fc1(h))).squeeze(-1)


def _percebes_catch(gen, batch, sites=24):
    """Percebes (gooseneck barnacle) catch per diver: rock site id, swell, tide, wind, minutes."""
    g = torch.Generator().manual_seed(52250)
    site_yield = torch.randn(sites, generator=g)
    w = torch.randn(4, generator=g)
    while True:
        s = torch.randint(0, sites, (batch,), generator=gen)
        r = torch.randn(batch, 4, generator=gen)
        y = site_yield[s] + 0.5 * torch.tanh(r @ w / 2) + 0.05 * torch.randn(batch, generator=gen)
        yield torch.cat([s[:, None].float(), r], 1), y


@scenario(
    family="percebes_harvest_site_embedding_relu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("site",),
    diverges=None,
    heldout=True,
    note="Percebes (gooseneck barnacle) catch regressor: a rock-site embedding concatenated "
    "with swell, tide, wind and minutes into a ReLU MLP, MSE, RMSprop in two param groups with "
    "a LambdaLR warm-up each. The embedding group's warm-up length is typed 1e9 steps for 1e3: "
    "its lr stays about 1e-12 for the whole run, the embedding never moves while the MLP learns.",
)
def h522_percebes_site_warmup_typo(ctx):
    gen = seeded(5225)
    model = _PercebesNet()
    rest = [p for n, p in model.named_parameters() if not n.startswith("site")]
    opt = torch.optim.RMSprop(
        [{"params": model.site.parameters(), "lr": 3e-3}, {"params": rest, "lr": 3e-3}]
    )
    warm = (1e9, 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s, w=w: min(1.0, (s + 1) / w) for w in warm]
    )
    e0 = model.site.weight.detach().clone()
    f0 = model.fc1.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _percebes_catch(gen, 64), 200, F.mse_loss, sched=sched)
    ctx.check("embedding moved under 1e-6 of its norm", _rel_change(model.site.weight, e0) < 1e-6)
    ctx.check("fc1 moved over 5%", _rel_change(model.fc1.weight, f0) > 0.05)
    ctx.check("the MLP still trained (loss under 0.95x)", _fell(losses, ratio=0.95))


# -- 6. exploding gradients: a deep tanh classifier initialised with gain 4 ---------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=64, depth=20, classes=5, gain=4.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, classes)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x)


@scenario(
    family="capercaillie_lek_call_deep_tanh_classifier",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Capercaillie lek-call phase classifier (click, double-click, drum-roll, pop, whetting "
    "from 8 acoustic features), a 20-layer tanh MLP, cross-entropy, RAdam. The init helper was "
    "called with gain 4 where tanh wants 5/3 ... 1: the network sits in the chaotic regime and "
    "the gradient grows layer by layer towards the input, the first layer's over 100x the last.",
)
def h522_capercaillie_deep_tanh_gain4(ctx):
    gen = seeded(5226)
    model = _DeepTanh()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ratios = []
    ctx.attach(model, opt)
    data = _grades(gen, 64, 8, 5, 52260)
    losses = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        ratios.append(
            float(model.layers[0].weight.grad.norm() / model.layers[-1].weight.grad.norm())
        )
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first layer's gradient over 100x the last at the start", _mean(ratios[:10]) > 100)
    ctx.check("still over 30x at the end", _mean(ratios[-10:]) > 30)
    ctx.check("finite", _finite(losses))


# -- 7. loss of plasticity: Adagrad lr 2 with no warm-up kills the ReLUs ------------------------


@scenario(
    family="woodcock_roding_flight_count_relu_regressor",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Woodcock roding-flight count regressor (ReLU MLP on dusk light, temperature, wind, "
    "ride width, moon phase; MSE, Adagrad). The lr is typed 2.0 for 2e-2 and there is no "
    "warm-up: the first Adagrad steps move every weight by about lr, push the second layer's "
    "pre-activations negative for every input and most of its ReLUs die; the loss stalls high.",
)
def h522_woodcock_adagrad_lr_typo(ctx):
    gen = seeded(5227)
    model = _Net(5, 48, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=2.0)
    probe = torch.randn(512, 5, generator=torch.Generator().manual_seed(52271))

    with torch.no_grad():
        dead = [dead_fraction(model.fc2(model.act1(model.fc1(probe))))]

    def after(step, loss):
        with torch.no_grad():
            dead.append(dead_fraction(model.fc2(model.act1(model.fc1(probe)))))

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 5, 52270), 200, F.mse_loss, after=after)
    ctx.check("over 60% of act2 dead at the end", dead[-1] > 0.6)
    ctx.check("under 20% dead at init", dead[0] < 0.2)
    ctx.check("finite", _finite(losses))


# -- 8. softmax collapse: a cosine classifier's scale typed 3000 for 30 --------------------------


class _CosineClassifier(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=6, scale=30.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.scale = scale

    def forward(self, x):
        f = F.normalize(self.act1(self.fc1(x)), dim=-1)
        w = F.normalize(self.head.weight, dim=-1)
        return self.scale * f @ w.T


@scenario(
    family="skein_geese_formation_cosine_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Skein-geese formation classifier (V, echelon, J, line, cluster, wedge from 10 radar "
    "track features), a ReLU encoder and a cosine-similarity head, cross-entropy, NAdam. The "
    "cosine scale is typed 3000 for 30: the logits span thousands, the softmax rounds to exact "
    "0/1 on most rows and the loss is driven only by a few wrong rows.",
)
def h522_skein_geese_cosine_scale_typo(ctx):
    gen = seeded(5228)
    model = _CosineClassifier(scale=3000.0)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    coll = []
    data = _grades(gen, 64, 10, 6, 52280, spread=1.2)
    ctx.attach(model, opt)
    losses = []
    for _step in range(150):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x)
        coll.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over half the rows saturated exactly", _mean(coll[-10:]) > 0.5)
    ctx.check("finite", _finite(losses))


# -- 9. gradient spike: accumulation multiplies by 8 for one resumed step -------------------------

DULSE_ONSET = 110
DULSE_ACCUM = 8


@scenario(
    family="dulse_harvest_drying_yield_gelu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=DULSE_ONSET,
    note="Dulse-harvest drying-yield regressor (GELU MLP on frond length, tide, wind, sun, rack "
    "height; MSE, SGD Nesterov momentum 0.9, gradient accumulation over 8 micro-batches, each "
    "loss divided by 8). After a resume at step 110 the resumed code path multiplies by the "
    "accumulation count instead of dividing for that one step: a gradient 64x the usual, the "
    "data is ordinary.",
)
def h522_dulse_accum_multiply_once(ctx):
    gen = seeded(5229)
    model = _Net(5, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    data = _readings(gen, 16, 5, 52290)
    losses, norms = [], []
    for step in range(200):
        total = 0.0
        for _ in range(DULSE_ACCUM):
            x, y = next(data)
            loss = F.mse_loss(model(x), y)
            w = DULSE_ACCUM if step == DULSE_ONSET else 1.0 / DULSE_ACCUM
            (w * loss).backward()
            total += float(loss.detach()) / DULSE_ACCUM
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    o = DULSE_ONSET
    ctx.check("gradient over 30x the median at onset", norms[o] > 30 * _median(norms[o - 20 : o]))
    ctx.check("logged loss ordinary at onset", losses[o] < 3 * _median(losses[o - 20 : o]))
    ctx.check("trained", _fell(losses[:o]))
    ctx.check("finite", _finite(losses))


# -- 10. amp overflow: braid tension logged in millinewtons under fp16 autocast --------------------

CORNHUSK_ONSET = 90


@scenario(
    family="cornhusk_doll_braid_tension_fp16_silu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=CORNHUSK_ONSET,
    heldout=True,
    onset=CORNHUSK_ONSET,
    note="Cornhusk-doll braid-quality regressor (SiLU MLP on husk moisture, braid tension, strand "
    "width, soak minutes, twist count; MSE, fp16 autocast + GradScaler, Adamax). At step 90 the "
    "tension gauge's firmware switches from newtons to millinewtons (about 1.2e5): under "
    "autocast fc1's fp16 output overflows 65504 to inf and the loss is non-finite (the same "
    "batch in float32 is finite).",
)
def h522_cornhusk_tension_millinewton_fp16(ctx):
    gen = seeded(52210)
    model = _Net(5, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 5, 52300)
    losses, fp32_ok, fc1_inf = [], [], []
    for step in range(150):
        x, y = next(data)
        if step >= CORNHUSK_ONSET:
            x = x.clone()
            x[:, 1] = 1.2e5 + 2.0e4 * x[:, 1]
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == CORNHUSK_ONSET:
            fc1_inf.append(not bool(torch.isfinite(h).all()))
            with torch.no_grad():
                fp32_ok.append(bool(torch.isfinite(model(x)).all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    o = CORNHUSK_ONSET
    ctx.check("trained before the switch", _fell(losses[:o]))
    ctx.check("fp16 fc1 output overflowed at onset", bool(fc1_inf) and fc1_inf[0])
    ctx.check("the same batch is finite in float32", bool(fp32_ok) and fp32_ok[0])
    ctx.check("loss non-finite at onset", len(losses) == o + 1 and not math.isfinite(losses[o]))


# -- controls --------------------------------------------------------------------------------------


class _DropConnectLinear(nn.Linear):
    """A Linear whose weights are dropped at random each training step (DropConnect)."""

    def __init__(self, a, b, p=0.3):
        super().__init__(a, b)
        self.p = p

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        mask = (torch.rand_like(self.weight) > self.p).float() / (1 - self.p)
        return F.linear(x, self.weight * mask, self.bias)


class _ShearwaterNet(nn.Module):
    def __init__(self, d_in=9, hidden=64, classes=5):
        super().__init__()
        self.fc1 = _DropConnectLinear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = _DropConnectLinear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="shearwater_foraging_trip_dropconnect_relu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: shearwater foraging-trip classifier (five trip kinds from nine GPS-logger "
    "features), a ReLU MLP whose two hidden layers use DropConnect (each weight dropped with "
    "p 0.3 every step), cross-entropy with label smoothing 0.1, Adam lr 2e-3 with 20 warm-up "
    "steps; the losses and gradients are noisier than usual but it trains.",
)
def h522_shearwater_dropconnect_control(ctx):
    gen = seeded(52211)
    model = _ShearwaterNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 9, 5, 52311, spread=1.3),
        250,
        lambda o, t: F.cross_entropy(o, t, label_smoothing=0.1),
        classifier=True,
        sched=sched,
    )
    model.eval()
    x, y = next(_grades(torch.Generator().manual_seed(1), 512, 9, 5, 52311, spread=1.3))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell", _fell(losses))
    ctx.check("held-out accuracy over 70%", acc > 0.7)


@scenario(
    family="salt_fingering_staircase_step_silu_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: salt-fingering thermohaline staircase step-height regressor (SiLU MLP on "
    "temperature and salinity gradients, density ratio, depth, shear, mixing; Huber loss), "
    "RMSprop under OneCycleLR (max lr 3e-3), gradient clipping at 1, noisy targets.",
)
def h522_salt_fingering_onecycle_control(ctx):
    gen = seeded(52212)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=220)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 52312, noise=0.2),
        220,
        lambda o, t: F.huber_loss(o, t, delta=0.5),
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite", _finite(losses))


class _UrchinConv(nn.Module):
    """A 1-D CNN over a dive's depth trace; the two stem convolutions share one weight (tied)."""

    def __init__(self, channels=3, width=16, classes=4):
        super().__init__()
        self.stem = nn.Conv1d(channels, width, 5, padding=2)
        self.mid = nn.Conv1d(width, width, 3, padding=1)
        self.mid2 = nn.Conv1d(width, width, 3, padding=1)
        self.mid2.weight = self.mid.weight  # tied
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = F.relu(self.mid(h)) + h
        h = F.relu(self.mid2(h)) + h
        return self.head(h.mean(-1))


def _urchin_dives(gen, batch, classes=4, length=32):
    """Dive traces (depth, water temperature, heart rate) whose shape marks the catch grade."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = (1 + y).float()[:, None]
        base = torch.sin(2 * math.pi * freq * t)
        x = torch.stack([base, base.roll(3, -1), 0.5 * base], 1)
        yield x + 0.5 * torch.randn(batch, 3, length, generator=gen), y


@scenario(
    family="sea_urchin_diver_catch_grade_tied_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: sea-urchin diver catch-grade classifier, a residual 1-D CNN over dive traces "
    "with two tied middle convolutions, cross-entropy with label smoothing 0.05, SGD Nesterov "
    "momentum 0.9, linear warm-up then cosine, gradient accumulation over 2 micro-batches.",
)
def h522_sea_urchin_tied_conv_control(ctx):
    gen = seeded(52213)
    model = _UrchinConv()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    total = 150

    def lr_at(s):
        if s < 15:
            return (s + 1) / 15
        return 0.5 * (1 + math.cos(math.pi * (s - 15) / (total - 15)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ctx.attach(model, opt)
    data = _urchin_dives(gen, 32)
    losses = []
    for _step in range(total):
        acc_loss = 0.0
        for _ in range(2):
            x, y = next(data)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
            (loss / 2).backward()
            acc_loss += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        losses.append(acc_loss)
        ctx.step(torch.tensor(acc_loss))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
