"""Held-out set 417 (``h417_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a bell-foundry tuning-fork attention-pool classifier on Adam with lr typed 5e-2 for 5e-4
(q.k/sqrt(d) grows), a cider-orchard windfall-count SiLU regressor fed one orchard's shard in
grams for kilograms (one corrupted batch), a tightrope walker's pole-sway tanh regressor whose
hand-written decoupled weight decay has its sign flipped (slow climb), a falconer's hood-fit grade
GELU classifier whose loss replaced logsumexp with the mean of the logits (head logits grow),
a sextant moon-distance unit-vector net whose angular loss calls acos without a clamp (NaN),
a rowing-eight catch-timing ReLU BCE net whose accumulation divisor is multiplied in on one step
(a gradient burst), a saddle-tree panel two-group classifier with its trunk group's lr typed
1e-9 for 1e-2 (frozen trunk), a stalagmite drip-chemistry 16-layer tanh MLP initialised with
gain 3.0 for 1.0 (gradients grow through depth), a kite-line sag tanh regressor on plain SGD with
lr typed 2.0 for 0.2 (past 2/sharpness) and a pottery-kiln glaze-grade classifier with its
temperature typed 0.003 for 0.3 (softmax saturates).

Controls: a sommelier pairing pairwise margin ranker (MarginRankingLoss, AdamW, linear warm-up),
a fly-tying pattern ListNet ranker (softmax cross-entropy between score and relevance
distributions, Adam under OneCycleLR, clipping) and a steel-drum rim-tension fp16 SiLU Huber
regressor (autocast with GradScaler, SGD momentum, accumulation over 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


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


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    alter=None,
    backprop=None,
    inspect=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """Plain loop: ``alter(step, x, y)`` changes a batch, ``backprop(step, loss)`` returns what is
    backpropagated, ``inspect(step)`` sees the raw gradients, ``after(step)`` runs after the
    optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
            total = backprop(step, loss) if backprop is not None else loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- data ------------------------------------------------------------------------------------------


def _signal(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _classes(gen, batch, d_in, classes, seed, spread=1.0):
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    n = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / n for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / n for u in hv]
    return lam


# -- faults ----------------------------------------------------------------------------------------


def _partials(gen, batch, seed, length=12, d_in=6, classes=4):
    """Tuning-fork strike traces: one informative partial hidden at a random position."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.5 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = 0.5 * torch.randn(batch, length, d_in, generator=gen)
        pos = torch.randint(0, length, (batch,), generator=gen)
        x[torch.arange(batch), pos] += protos[y]
        yield x, y


class _AttnPool(nn.Module):
    def __init__(self, d_in=6, dim=32, classes=4):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.attn = _PoolAttention(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.attn(torch.tanh(self.embed(x))))


class _PoolAttention(nn.Module):
    """A learned query attends over the partials; no QK-norm."""

    def __init__(self, dim):
        super().__init__()
        self.query = nn.Parameter(0.1 * torch.randn(dim))
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dim = dim
        self.last_logits = None

    def forward(self, h):
        logits = (self.key(h) @ self.query) / math.sqrt(self.dim)
        self.last_logits = logits.detach()
        w = torch.softmax(logits, dim=-1)
        return (w[..., None] * self.value(h)).sum(1)


@scenario(
    family="bell_foundry_tuning_fork_partial_attention_pool_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Bell-foundry tuning-fork grader: a learned-query attention pool over 12 strike "
    "partials (no QK-norm) on Adam with lr typed 5e-2 for 5e-4. The query and key weights grow "
    "and the attention logits q.k/sqrt(d) grow with them until the pool attends one-hot.",
)
def h417_bell_foundry_attention_lr_typo(ctx) -> None:
    gen = seeded(4171)
    model = _AttnPool()
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)
    sizes, ent = [], []

    def after(step):
        lg = model.attn.last_logits
        sizes.append(float(lg.abs().max()))
        p = torch.softmax(lg, -1)
        ent.append(float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean()))

    _train(
        ctx, model, opt, _partials(gen, 64, 171), 300, F.cross_entropy, classifier=True, after=after
    )
    ctx.check("max q.k/sqrt(d) over 20x its start", _mean(sizes[-10:]) > 20 * _mean(sizes[:3]))
    ctx.check("max q.k/sqrt(d) over 20", _mean(sizes[-10:]) > 20)
    ctx.check("attention entropy under a fifth of its start", _mean(ent[-10:]) < 0.2 * ent[0])
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="cider_orchard_windfall_count_silu_regressor",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Cider-orchard windfall-weight regressor (SiLU MLP, SGD momentum, clipping at 5). One "
    "orchard's shard, met at step 120, logged the windfall in grams for kilograms: targets "
    "x1000 for that one batch. The loss and gradient burst, clipping limits the step, and the "
    "run recovers.",
)
def h417_cider_orchard_gram_shard(ctx) -> None:
    gen = seeded(4172)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 120 else (x, y)

    _train(ctx, model, opt, _signal(gen, 64, 10, 172), 220, F.mse_loss, alter=alter, clip=5.0)
    before = _median(ctx.losses[100:120])
    ctx.check("loss over 100x at step 120", ctx.losses[120] > 100 * before)
    ctx.check(
        "gradient over 20x at step 120", ctx.grad_norms[120] > 20 * _median(ctx.grad_norms[100:120])
    )
    ctx.check("recovers under 3x", _mean(ctx.losses[-10:]) < 3 * before)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="tightrope_walker_pole_sway_decay_sign_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Tightrope walker's pole-sway regressor (tanh MLP, Adamax) with hand-written decoupled "
    "weight decay p.mul_(1 + lr * wd) where 1 - lr * wd was meant. The weights inflate slowly "
    "and the loss, after falling, climbs steadily with no single jump.",
)
def h417_tightrope_pole_decay_sign(ctx) -> None:
    gen = seeded(4173)
    model = _Net(8, 48, 1, act=nn.Tanh)
    lr, wd = 2e-3, 5.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    norm0 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _train(ctx, model, opt, _signal(gen, 64, 8, 173), 300, F.mse_loss, after=after)
    norm1 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    w = [_mean(ctx.losses[i : i + 10]) for i in range(0, 300, 10)]
    low = min(w)
    ctx.check("weight norm over 2x", norm1 > 2 * norm0)
    ctx.check("loss climbs to over 2x its lowest 10-step mean", w[-1] > 2 * low)
    ctx.check(
        "no 10-step mean over 2.5x the one before",
        all(b < 2.5 * a for a, b in zip(w, w[1:], strict=False)),
    )
    ctx.check("finite", _finite(ctx.losses))


def _lost_lse_loss(logits, y):
    # the refactor replaced torch.logsumexp(logits, -1) with logits.mean(-1)
    return (logits.mean(-1) - logits.gather(1, y[:, None]).squeeze(1)).mean()


@scenario(
    family="falconer_hood_fit_grade_gelu_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Falconer's hood-fit grader (GELU MLP, 5 grades, RAdam). A hand-written cross-entropy "
    "was 'simplified' and its logsumexp replaced by the mean of the logits: mean - logit[target] "
    "is unbounded below, so the head's logits grow without bound.",
)
def h417_falconer_hood_lost_logsumexp(ctx) -> None:
    gen = seeded(4174)
    model = _Net(10, 48, 5, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    probe = next(_classes(torch.Generator().manual_seed(7), 256, 10, 5, seed=174))[0]
    sizes = []

    def after(step):
        with torch.no_grad():
            sizes.append(float(model(probe).abs().max()))

    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 5, 174),
        200,
        _lost_lse_loss,
        classifier=True,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("logits still growing", sizes[-1] > 1.2 * sizes[-40])
    ctx.check("'loss' below -10", ctx.losses[-1] < -10)
    ctx.check("finite", _finite(ctx.losses))


def _sights(gen, batch, d_in, seed):
    """Sextant readings and the unit direction of the star they point at."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, 3, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, F.normalize(torch.tanh(x @ w) + 0.3, dim=-1)


class _UnitNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return F.normalize(self.head(self.act1(self.fc1(x))), dim=-1)


def _angle_loss(pred, target):
    # missing .clamp(-1 + 1e-7, 1 - 1e-7) before acos
    return torch.acos((pred * target).sum(-1)).mean()


@scenario(
    family="sextant_moon_distance_unit_vector_acos_net",
    optimizer="Adam",
    cause="nonfinite",
    where=(),
    diverges=220,
    heldout=True,
    note="Sextant lunar-distance net predicting the star's unit direction, trained on the "
    "angular error acos(pred . target) without the clamp to (-1, 1). Once a prediction aligns "
    "with its target the dot product rounds past 1 or its acos gradient is inf, and NaN "
    "appears.",
)
def h417_sextant_acos_no_clamp(ctx) -> None:
    gen = seeded(4175)
    model = _UnitNet(6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    _train(ctx, model, opt, _sights(gen, 64, 6, 175), 300, _angle_loss)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss goes non-finite", bad is not None)
    ctx.check("finite for the first 10 steps", bad is None or bad > 10)


@scenario(
    family="rowing_eight_catch_timing_relu_bce_net",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="Rowing-eight catch-timing classifier (ReLU MLP, BCE with logits, SGD Nesterov, "
    "accumulation over 4, clipping at 1). At the epoch-end step 140 the accumulation branch "
    "multiplies the loss by the accumulation count instead of dividing, a 16x gradient burst on a "
    "clean batch with an ordinary logged loss.",
)
def h417_rowing_eight_accum_multiply(ctx) -> None:
    gen = seeded(4176)
    g = torch.Generator().manual_seed(176)
    w = torch.randn(10, generator=g)

    def batches():
        while True:
            x = torch.randn(32, 10, generator=gen)
            yield x, (x @ w / 3 + 0.3 * torch.randn(32, generator=gen) > 0).float()

    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9, nesterov=True)
    raw = []

    def backprop(step, loss):
        return loss * 4 if step == 140 else loss / 4

    _train(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        accumulate=4,
        clip=1.0,
        inspect=lambda s: raw.append(grad_norm(model)),
    )
    ctx.check("gradient over 10x at step 140", raw[140] > 10 * _median(raw[120:140]))
    ctx.check(
        "logged loss ordinary at step 140", ctx.losses[140] < 2 * _median(ctx.losses[120:140])
    )
    ctx.check("loss fell overall", _fell(ctx.losses))


@scenario(
    family="saddle_tree_panel_bearing_two_group_relu_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Saddle-tree panel-bearing classifier (ReLU MLP, Adagrad with two param groups): the "
    "trunk group's lr typed 1e-9 for 1e-2. fc1 receives gradients but barely moves while the "
    "head trains.",
)
def h417_saddle_tree_trunk_lr_typo(ctx) -> None:
    gen = seeded(4177)
    model = _Net(10, 48, 4)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": [*model.fc2.parameters(), *model.head.parameters()], "lr": 1e-2},
        ]
    )
    w1 = model.fc1.weight.detach().clone()
    wh = model.head.weight.detach().clone()
    gn = []
    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 4, 177, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        inspect=lambda s: gn.append(float(model.fc1.weight.grad.norm())),
    )
    r1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    rh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 moves under 1e-5 of its norm", r1 < 1e-5)
    ctx.check("fc1 receives gradients", _median(gn) > 1e-3)
    ctx.check("head moves over 5%", rh > 0.05)


class _Deep(nn.Module):
    def __init__(self, d_in, width=32, depth=16, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for m in self.layers:
            x = m(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = torch.tanh(x)
        return self.head(x).squeeze(-1)


def _depth_ratios(gain, steps, ctx=None):
    gen = seeded(4178)
    model = _Deep(8, gain=gain)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    ratios = []

    def inspect(step):
        ratios.append(
            float(model.outs[0].grad.norm() / model.outs[-1].grad.norm().clamp_min(1e-30))
        )

    if ctx is None:
        from scenarios.common import Context

        class _Quiet(Context):
            def attach(self, *a, **k):
                return None

            def step(self, loss):
                self.losses.append(float(loss))

        ctx = _Quiet("default", None)
    _train(ctx, model, opt, _signal(gen, 64, 8, 178), steps, F.mse_loss, inspect=inspect, clip=1.0)
    return ratios


@scenario(
    family="stalagmite_drip_chemistry_deep_tanh_mlp",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Stalagmite drip-chemistry regressor, a 16-layer tanh MLP initialised with std "
    "3.0 / sqrt(fan_in) (a gain typed 3.0 for 1.0): tanh layers in the chaotic regime, the "
    "gradient grows backwards through depth. RMSprop, clipped at 1.",
)
def h417_stalagmite_deep_tanh_gain(ctx) -> None:
    ratios = _depth_ratios(3.0, 150, ctx)
    base = _depth_ratios(1.0, 10)
    ctx.check("dL/d(layers.0) over 10x dL/d(layers.15) at the start", ratios[0] > 10)
    ctx.check("median over 10x", _median(ratios) > 10)
    ctx.check("under 5x at gain 1.0", base[0] < 5)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="kite_line_sag_catenary_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Kite-line sag regressor (tanh MLP, plain SGD) with lr typed 2.0 for 0.2: lr times the "
    "top Hessian eigenvalue passes 2 and the loss blows up.",
)
def h417_kite_line_lr_typo(ctx) -> None:
    gen = seeded(4179)
    model = _Net(8, 48, 1, act=nn.Tanh)
    lr = 2.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    xs, ys = next(_signal(torch.Generator().manual_seed(3), 256, 8, 179))
    s0 = _sharpness(model, F.mse_loss, xs, ys)
    sharp = []

    def inspect(step):
        if step < 30 and step % 5 == 0:
            sharp.append(_sharpness(model, F.mse_loss, xs, ys))

    _train(ctx, model, opt, _signal(gen, 64, 8, 179), 150, F.mse_loss, inspect=inspect)
    ctx.check("lr x sharpness past 2", lr * max([s0, *sharp]) > 2)
    ctx.check("0.2 x sharpness under 2 at the start", 0.2 * s0 < 2)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "the loss blows up", _first_bad(ctx.losses) is not None or max(finite) > 100 * ctx.losses[0]
    )


class _TempNet(_Net):
    def __init__(self, temperature):
        super().__init__(10, 48, 6, act=nn.ReLU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="pottery_kiln_glaze_grade_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Pottery-kiln glaze grader (ReLU MLP, 6 grades, NAdam) whose softmax temperature is "
    "typed 0.003 for 0.3: the logits are divided by 0.003 and most rows' float32 softmax rounds "
    "the target probability to exactly 1.",
)
def h417_pottery_kiln_temperature_typo(ctx) -> None:
    gen = seeded(4180)
    model = _TempNet(0.003)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    probe_x, probe_y = next(_classes(torch.Generator().manual_seed(11), 256, 10, 6, 180))
    fr, fr1 = [], []

    def after(step):
        with torch.no_grad():
            z = model(probe_x)
            fr.append(collapsed_fraction(z, probe_y))
            fr1.append(collapsed_fraction(z * 0.003 / 0.3, probe_y))

    _train(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 6, 180),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over half the rows' target probability exactly 1.0", _mean(fr[-30:]) > 0.5)
    ctx.check("under 5% at temperature 0.3 on the same logits", _mean(fr1[-30:]) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


def _pairs(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        a = torch.randn(batch, d_in, generator=gen)
        b = torch.randn(batch, d_in, generator=gen)
        diff = (a - b) @ w / math.sqrt(d_in) + 0.3 * torch.randn(batch, generator=gen)
        yield (a, b), torch.where(diff > 0, 1.0, -1.0)


class _PairScorer(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.score = _Net(d_in, 48, 1, act=nn.GELU)

    def forward(self, pair):
        a, b = pair
        return torch.stack([self.score(a), self.score(b)])


def _margin(out, y):
    return F.margin_ranking_loss(out[0], out[1], y, margin=0.5)


@scenario(
    family="sommelier_food_pairing_pairwise_margin_ranker",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sommelier food-pairing ranker: a GELU scorer trained on pairwise preferences with "
    "MarginRankingLoss (margin 0.5), AdamW with weight decay and a 30-step linear warm-up, "
    "noisy preferences. Control.",
)
def h417_sommelier_pairing_margin_control(ctx) -> None:
    gen = seeded(4181)
    model = _PairScorer(10)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    _train(ctx, model, opt, _pairs(gen, 64, 10, 181), 200, _margin, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))


def _lists(gen, batch, docs, d_in, seed):
    """Generated query-document lists with graded relevance 0..3."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, docs, d_in, generator=gen)
        rel = (x @ w + 0.3 * torch.randn(batch, docs, generator=gen)).clamp(-1.5, 1.5)
        yield x, torch.round(rel + 1.5)


class _ListNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))).squeeze(-1)


def _listnet(scores, rel):
    return -(torch.softmax(rel, -1) * torch.log_softmax(scores, -1)).sum(-1).mean()


@scenario(
    family="fly_tying_pattern_listnet_ranker",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fly-tying pattern ranker: a ListNet (softmax cross-entropy between score and "
    "relevance distributions over generated 10-pattern lists), Adam under OneCycleLR, "
    "clipping at 1. Control.",
)
def h417_fly_tying_listnet_control(ctx) -> None:
    gen = seeded(4182)
    model = _ListNet(8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    _train(ctx, model, opt, _lists(gen, 32, 10, 8, 182), 200, _listnet, sched=sched, clip=1.0)
    rel = next(_lists(torch.Generator().manual_seed(5), 256, 10, 8, 182))[1]
    floor = [float(_listnet(rel, rel))]
    ctx.check(
        "loss fell toward its floor",
        _mean(ctx.losses[-10:]) - floor[0] < 0.5 * (_mean(ctx.losses[:10]) - floor[0]),
    )
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="steel_drum_rim_tension_fp16_silu_huber_regressor",
    optimizer="SGD(momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Steel-drum rim-tension regressor (SiLU MLP, Huber) under fp16 autocast with a "
    "GradScaler, SGD momentum, accumulation over 2, clipping at 1, noisy readings. Control.",
)
def h417_steel_drum_fp16_control(ctx) -> None:
    gen = seeded(4183)
    model = _Net(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _signal(gen, 32, 10, 183, noise=0.2),
        200,
        F.huber_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))
