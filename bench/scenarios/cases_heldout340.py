"""Held-out set 340 (``h340_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a swiftlet nest-grade prototypical network trained in
episodes whose distance temperature is typed 0.01 for 1.0 (softmax saturates), a hacky-sack
kick-streak Huber regressor whose loss normaliser reads 1 for one batch (one gradient burst), a
toddy-tapper sap-yield Laplace NLL net whose scale head has no softplus (log of a negative, NaN),
a compass adjuster's deviation regressor whose hand-written L2 penalty is subtracted (slow
climb), a crampon front-point bite classifier whose trunk warm-up length is given in samples
for steps (trunk frozen), a coconut-climber climb-time regressor fed one shard of palm heights in
centimetres (one corrupted batch), a ginseng root-age 12-layer LeakyReLU MLP whose head's init
scale 1.5 is applied to every layer (gradients grow through depth), a tamahagane bloom-carbon
regressor whose OneCycleLR max_lr is typed 3.0 for 0.3 (past 2/sharpness), a barometer-maker
station-pressure fp16 regressor converting hPa to Pa inside the autocast region (overflow), a
tenmoku glaze-effect multi-label tagger trained on judges' vote counts for vote fractions (head
logits grow without bound), and three controls (a lustreware sheen-grade prototypical network
trained in episodes under warm-up and a cosine schedule; a wagasa parasol oil-paper drying
Conv1d classifier with RMSprop, OneCycleLR, label smoothing and clipping; a surfboard shaper's
rocker regressor under fp16 autocast with a GradScaler, accumulation and ReduceLROnPlateau).

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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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
    watch=None,
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
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
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


# -- episodes for the prototypical networks -------------------------------------------------------


def _episodes(gen, seed, classes=40, d_in=24, way=5, shot=5, query=8, spread=0.8):
    """Few-shot episodes over ``classes`` generated grades: each episode draws ``way`` grades,
    ``shot`` support and ``query`` query rows per grade. Yields ((support, query), labels) with
    support rows ordered grade by grade and query labels 0..way-1."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, d_in, generator=g)
    while True:
        picked = torch.randperm(classes, generator=gen)[:way]
        c = centres[picked]
        support = c[:, None] + spread * torch.randn(way, shot, d_in, generator=gen)
        qy = torch.arange(way).repeat_interleave(query)
        q = c[qy] + spread * torch.randn(way * query, d_in, generator=gen)
        yield (support.reshape(way * shot, d_in), q), qy


class SqDistLogits(nn.Module):
    """Logits of a prototypical network: minus the squared distance to each prototype, divided
    by a temperature."""

    def __init__(self, temperature):
        super().__init__()
        self.temperature = temperature

    def forward(self, q, protos):
        return -torch.cdist(q, protos).pow(2) / self.temperature


class ProtoNet(nn.Module):
    """An MLP encoder (encoder.0 Linear, encoder.1 ReLU, encoder.2 Linear) and a distance read-out
    (metric); the prototypes are the mean support embedding of each grade."""

    def __init__(self, d_in=24, hidden=64, emb=32, way=5, temperature=1.0):
        super().__init__()
        self.way = way
        self.encoder = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, emb))
        self.metric = SqDistLogits(temperature)

    def forward(self, episode):
        support, query = episode
        s = self.encoder(support)
        protos = s.reshape(self.way, -1, s.shape[-1]).mean(1)
        return self.metric(self.encoder(query), protos)


# -- swiftlet nests: the prototypical network's distance temperature is typed 0.01 for 1.0 -------


@scenario(
    family="swiftlet_nest_grade_prototypical_net",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("metric",),
    diverges=None,
    heldout=True,
    note="A hand-written prototypical network (encoder.0 Linear, encoder.1 ReLU, encoder.2 Linear, and a parameter-free distance read-out 'metric') grading edible swiftlet nests from 24 standardised readings (strand density, colour, feather count, ...), trained in 5-way 5-shot episodes drawn from 40 grades with 8 queries a grade, Adam at 1e-3, cross-entropy on the queries, 200 episodes. The read-out divides minus the squared distance to each prototype by a temperature that the config meant as 1.0 and that was typed 0.01: the logits reach the softmax 100x too large, so as the encoder separates the grades the softmax saturates and for most queries the target's float32 probability rounds to exactly 1.0 (the rest are confidently wrong); the loss stays finite.",
)
def h340_swiftlet_proto_temperature_typo(ctx: Context) -> None:
    gen = seeded(34001)
    model = ProtoNet(temperature=0.01)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    collapsed, peaks, last = [], [], {}

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        peaks.append(float((out.detach().max(1).values - out.detach().min(1).values).mean()))
        last["out"], last["y"] = out.detach(), y

    _loop(ctx, model, opt, _episodes(gen, 340), 200, F.cross_entropy, classifier=True, watch=watch)
    ctx.check(
        "at the intended temperature 1.0 the last episode's logits collapse under a tenth of rows",
        collapsed_fraction(last["out"] * 0.01, last["y"]) < 0.1,
    )
    ctx.check(
        "over half the queries' target probability is exactly 1.0 over the last 20 episodes",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("the mean logit range is over 100 late in the run", _mean(peaks[-20:]) > 100.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- hacky sack: the loss normaliser reads 1 for one batch ---------------------------------------


ONSET_HS = 140


@scenario(
    family="hacky_sack_kick_streak_gelu_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HS,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a hacky-sack circle's kick streak (standardised) from ten readings (players, footbag fill, wind, ...), SGD with Nesterov momentum 0.9 at 2e-2, Huber loss summed over rows and divided by the batch's row count, clipping at 5.0, 240 steps. The row count is read from the shard's manifest; the manifest of the batch trained at step 140 lists its 64 rows as one comma-joined entry, so len() gives 1 and that one step's loss is the sum over 64 rows, 64x the mean, on an ordinary batch: the gradient bursts far above the run's for one step, the clipped update knocks the fit a little, and the run carries on.",
)
def h340_hacky_sack_normaliser_one(ctx: Context) -> None:
    gen = seeded(34002)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        rows = 64
        manifest = [",".join(str(i) for i in range(rows))] if step == ONSET_HS else range(rows)
        return loss * rows / len(manifest)  # the loss is a mean; sum / count

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3402),
        240,
        F.huber_loss,
        backprop=backprop,
        clip=5.0,
    )
    pre = _median(ctx.grad_norms[ONSET_HS - 20 : ONSET_HS])
    ctx.check(
        "the gradient at the onset is over 30x the steps before",
        ctx.grad_norms[ONSET_HS] > 30 * pre,
    )
    ctx.check(
        "the onset batch's own loss is ordinary (within 3x of before)",
        ctx.losses[ONSET_HS] < 3 * _mean(ctx.losses[ONSET_HS - 10 : ONSET_HS]),
    )
    ctx.check(
        "the gradients afterwards are back within 5x of before",
        _median(ctx.grad_norms[ONSET_HS + 20 :]) < 5 * pre,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- toddy tapping: the Laplace scale head has no softplus ---------------------------------------


class SapNet(nn.Module):
    """A SiLU trunk with a location head and a scale head for a Laplace model of sap yield."""

    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.loc_head = nn.Linear(hidden, 1)
        self.scale_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.loc_head(h), self.scale_head(h)], -1)  # scale: no softplus


def _saps(gen, batch, seed):
    """Nine readings of a palm (height, spathe age, weather); next morning's sap, litres."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    lap = torch.distributions.Laplace(0.0, 0.03)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        y = 1.5 + 0.5 * torch.tanh(x @ w / 3.0) + lap.sample((batch,))
        yield x, y


def _laplace_nll(out, y):
    loc, scale = out[:, 0], out[:, 1]
    return (torch.log(2 * scale) + (y - loc).abs() / scale).mean()


DIV_TT = 105


@scenario(
    family="toddy_tapper_sap_yield_laplace_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("scale_head",),
    diverges=DIV_TT,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, loc_head, scale_head) modelling a toddy palm's next-morning sap yield as Laplace from nine readings (palm height, spathe age, weather), RAdam at 3e-3, Laplace negative log-likelihood, 250 steps planned, scale_head's bias started at 1.0. The scale is written scale_head(h) with no softplus or clamp: the yield's noise is about 0.03 L, the likelihood keeps pushing the scale down, one row's scale crosses zero and log(2 * scale) of a negative is NaN; the run stops there.",
)
def h340_toddy_scale_no_softplus(ctx: Context) -> None:
    gen = seeded(34003)
    model = SapNet()
    with torch.no_grad():
        model.scale_head.bias.fill_(1.0)
        model.scale_head.weight.mul_(0.1)
        model.loc_head.bias.fill_(1.5)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    low = []

    def watch(step, out, x, y):
        low.append(float(out.detach()[:, 1].min()))

    n = _loop(ctx, model, opt, _saps(gen, 64, 340), 250, _laplace_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the step it stops", bad == n - 1 and math.isnan(ctx.losses[-1]))
    ctx.check("a row's scale is at or below zero at that step", low[-1] <= 0.0)
    ctx.check("every scale was positive at step 0", low[0] > 0.0)
    ctx.check("the run stops at the declared step", bad == DIV_TT)


# -- compass adjusting: the hand-written L2 penalty is subtracted --------------------------------


def _deviations(gen, batch, seed):
    """A ship's heading (sin, cos) and six readings of her iron and trim; the compass deviation
    (standardised), a sum of semicircular and quadrantal terms."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(6, 4, generator=g) / math.sqrt(6)
    while True:
        th = 2 * math.pi * torch.rand(batch, generator=gen)
        iron = torch.randn(batch, 6, generator=gen)
        c = iron @ a
        dev = (
            (0.8 + 0.3 * c[:, 0]) * torch.sin(th)
            + (0.5 + 0.3 * c[:, 1]) * torch.cos(th)
            + 0.4 * c[:, 2] * torch.sin(2 * th)
            + 0.3 * c[:, 3] * torch.cos(2 * th)
        )
        x = torch.cat([torch.sin(th)[:, None], torch.cos(th)[:, None], iron], 1)
        yield x, dev + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="compass_adjuster_deviation_card_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a ship's compass deviation (standardised) from her heading and six readings of her iron and trim, the adjuster's deviation card, plain SGD at 2e-2, MSE plus a hand-written L2 penalty, 300 steps. The penalty's weight 0.2 was entered as -0.2 in the config ('decay is a negative term') and the script writes loss + l2 * sum(p^2), so it rewards weight growth (every weight is inflated by about 0.8% a step): the net fits at first, then the weights keep inflating, the tanh units saturate and the head scales up, and the loss climbs slowly and steadily from its minimum while staying finite.",
)
def h340_compass_l2_sign_flip(ctx: Context) -> None:
    gen = seeded(34004)
    model = Trunk(8, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)
    l2 = -0.2  # meant +0.2
    norms = []

    def backprop(step, loss):
        return loss + l2 * sum((p**2).sum() for p in model.parameters())

    def after(step):
        norms.append(float(sum((p.detach() ** 2).sum() for p in model.parameters()) ** 0.5))

    _loop(
        ctx,
        model,
        opt,
        _deviations(gen, 64, 340),
        300,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    low = min(_mean(ctx.losses[i : i + 10]) for i in range(0, 150, 10))
    ctx.check(
        "the last 20 steps' loss is over 2x the early minimum", _mean(ctx.losses[-20:]) > 2 * low
    )
    ctx.check(
        "the loss climbs steadily (steps 250-300 above 200-250)",
        _mean(ctx.losses[250:300]) > _mean(ctx.losses[200:250]),
    )
    ctx.check(
        "no step's loss is over 5x the median of the 20 before it (no spike)",
        all(ctx.losses[i] < 5 * _median(ctx.losses[i - 20 : i]) for i in range(40, 300)),
    )
    ctx.check("the weight norm grew over 2x", norms[-1] > 2 * norms[0])
    ctx.check("finite throughout", _finite(ctx.losses))


# -- crampons: the trunk warm-up length is given in samples, the scheduler counts steps -----------


@scenario(
    family="crampon_front_point_bite_two_group_classifier",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) grading a crampon front point's bite in ice (four grades) from twelve standardised readings (ice hardness, kick angle, point sharpness, ...), Adam with two parameter groups at 2e-3, cross-entropy, LambdaLR with one linear warm-up per group, 250 steps. The head group warms up over 20 steps; the trunk group's warm-up was written in samples (1,000,000) while the scheduler counts optimizer steps, so the trunk's rate stays below 2.5e-4 of its target all run: fc1 and fc2 barely move while the head trains, and the loss falls only as far as a read-out of the random features allows.",
)
def h340_crampon_warmup_in_samples(ctx: Context) -> None:
    gen = seeded(34005)
    model = Trunk(12, 64, out=4)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adam(
        [{"params": trunk}, {"params": model.head.parameters()}],
        lr=2e-3,
    )
    warmup = {"trunk": 1_000_000, "head": 20}  # trunk's meant 20 steps, written in samples
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [
            lambda s: min(1.0, (s + 1) / warmup["trunk"]),
            lambda s: min(1.0, (s + 1) / warmup["head"]),
        ],
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 4, 3405, spread=1.4),
        250,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    ctx.check(
        "fc1 and fc2 moved under 1e-3 of their norm over the run",
        max(_rel_change(w1, model.fc1.weight), _rel_change(w2, model.fc2.weight)) < 1e-3,
    )
    ctx.check("the head moved over 5% of its norm", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- coconut climbing: one shard's palm heights logged in centimetres -----------------------------


ONSET_CC = 120


@scenario(
    family="coconut_climber_climb_time_relu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CC,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting a coconut climber's time up a palm (standardised) from ten standardised readings (palm height, lean, bark, climber, ...), ASGD at 2e-2, MSE, clipping at 5.0, 240 steps. The shard loaded at step 120 came from a plantation that logs palm heights in centimetres and its standardisation was skipped, so in that one batch the height column (and the girth column beside it) is about 100x its usual scale: the loss and gradient jump far above the run's, the clipped update knocks the fit off, and ordinary batches afterwards bring the loss back down.",
)
def h340_coconut_centimetre_shard(ctx: Context) -> None:
    gen = seeded(34006)
    model = Trunk(10, 64)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)
    peaks = []

    def alter(step, x, y):
        if step == ONSET_CC:
            x = x.clone()
            x[:, :2] = 100.0 * (x[:, :2] + 3.0)
        peaks.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3406), 240, F.mse_loss, alter=alter, clip=5.0)
    pre_g = _median(ctx.grad_norms[ONSET_CC - 20 : ONSET_CC])
    pre_l = _mean(ctx.losses[ONSET_CC - 10 : ONSET_CC])
    ctx.check(
        "the onset batch's inputs are over 50x the usual",
        peaks[ONSET_CC] > 50 * _median(peaks[:ONSET_CC]),
    )
    ctx.check(
        "the gradient at the onset is over 20x the steps before",
        ctx.grad_norms[ONSET_CC] > 20 * pre_g,
    )
    ctx.check(
        "the loss at the onset is over 20x the steps before", ctx.losses[ONSET_CC] > 20 * pre_l
    )
    ctx.check(
        "the last 20 steps' loss is within 2x of before the onset",
        _mean(ctx.losses[-20:]) < 2 * pre_l,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- ginseng: the head's init scale is applied to every layer of a deep LeakyReLU MLP ------------


class RootAgeNet(nn.Module):
    """Twelve Linear layers (layers.0 ... layers.11, the last the head) with LeakyReLU between;
    records the activations' gradients for the depth check."""

    def __init__(self, d_in=10, hidden=48, depth=12, init_scale=1.0):
        super().__init__()
        sizes = [d_in] + [hidden] * (depth - 1) + [1]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.act = nn.LeakyReLU(0.01)
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.weight, a=0.01)
            layer.weight.data.mul_(init_scale)
            nn.init.zeros_(layer.bias)
        self.hs = []

    def forward(self, x):
        self.hs = []
        h = x
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if h.requires_grad:
                h.retain_grad()
            self.hs.append(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h.squeeze(-1)


@scenario(
    family="ginseng_root_age_deep_leaky_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A hand-written 12-layer LeakyReLU MLP (layers.0 ... layers.11, the last the head) estimating a wild ginseng root's age (standardised) from ten standardised readings (neck scars, root length, rings, ...), SGD with momentum 0.9 at 1e-3, MSE, clipping at 1.0, 200 steps. The init loop applies Kaiming-normal and then multiplies by config['init_scale'] = 1.5, an entry meant for the head only, to every layer: each layer amplifies by about 1.5, so the backpropagated gradient grows about 1.5x per layer towards the input (the gradient reaching layers.0's output is over 20x the head's), the pre-clip gradient norm is far above the clip throughout, and the loss starts in the ten-thousands and is still about 100 after 200 steps on a target of unit scale.",
)
def h340_ginseng_init_scale_every_layer(ctx: Context) -> None:
    gen = seeded(34007)
    model = RootAgeNet(init_scale=1.5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    batches = _readings(gen, 64, 10, 3407)
    ctx.attach(model, opt)
    for _step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = float(model.hs[0].grad.norm())
        last = float(model.hs[-1].grad.norm())
        ratios.append(first / max(last, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("the gradient at layers.0's output is over 20x the head's at step 0", ratios[0] > 20)
    ctx.check("and over 10x on average through the run", _mean(ratios) > 10)
    ctx.check(
        "the pre-clip gradient norm is over 10x the clip through the run",
        _median(ctx.grad_norms) > 10.0,
    )
    ctx.check("the loss starts over 100", ctx.losses[0] > 100.0)
    ctx.check("the last 20 steps' loss is still over 0.5", _mean(ctx.losses[-20:]) > 0.5)


# -- tamahagane: the OneCycleLR max_lr is typed 3.0 for 0.3 ---------------------------------------


def _top_eigenvalue(model, loss_fn, batch, iters=20):
    """The largest Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u**2).sum() for u in v))
    v = [u / norm for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        norm = torch.sqrt(sum((h**2).sum() for h in hv))
        v = [h / norm.clamp_min(1e-30) for h in hv]
    return lam


DIV_TH = 28


@scenario(
    family="tamahagane_bloom_carbon_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges=DIV_TH,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the carbon content of a tatara smelt's tamahagane bloom (standardised) from ten standardised readings (charcoal charge, iron sand, bellows rate, ...), plain SGD under OneCycleLR (momentum cycling off, 30% warm-up), MSE, 200 steps planned. max_lr was typed 3.0 for 0.3: as the one-cycle warm-up raises the rate, lr x the loss's top Hessian eigenvalue (power iteration on a fixed batch) passes 2, the loss starts to oscillate and then overflows to inf; the run stops there.",
)
def h340_tamahagane_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(34008)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=3.0, total_steps=200, pct_start=0.3, cycle_momentum=False
    )
    batches = _readings(gen, 64, 10, 3408)
    probe = next(batches)
    products = []

    def before(step):
        if step % 5 == 0:
            lam = _top_eigenvalue(model, F.mse_loss, probe)
            products.append((step, opt.param_groups[0]["lr"] * lam))

    n = _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    bad = _first_bad(ctx.losses)
    ctx.check("lr x top eigenvalue is under 1 at step 0", products[0][1] < 1.0)
    ctx.check(
        "lr x top eigenvalue passes 2 before the run breaks",
        any(p > 2.0 for s, p in products if bad is not None and s < bad),
    )
    ctx.check(
        "the loss fell first (step 10-20 below step 0-10)",
        _mean(ctx.losses[10:20]) < _mean(ctx.losses[:10]),
    )
    ctx.check("the loss is non-finite at the step it stops", bad == n - 1)
    ctx.check("the run stops at the declared step", bad == DIV_TH)


# -- barometer making: hPa converted to Pa inside the fp16 autocast region ------------------------


class StationBarometer(Trunk):
    """A GELU trunk predicting a station's pressure in hPa; the forward converts to pascals."""

    def forward(self, x):
        hpa = self.head(self.features(x)).squeeze(-1)
        return hpa * 100.0  # under autocast the product is fp16: over 655.04 hPa it is inf


def _stations(gen, batch, seed):
    """Ten standardised readings of a mountain station (altitude, temperature, capsule, ...);
    station pressure in Pa, about 480-720 hPa."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        hpa = 600.0 + 60.0 * torch.tanh(x @ w / math.sqrt(10)) - 25.0 * x[:, 0]
        yield x, 100.0 * (hpa + 0.5 * torch.randn(batch, generator=gen))


DIV_BM = 50


@scenario(
    family="barometer_maker_station_pressure_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=DIV_BM,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) calibrating a barometer maker's aneroid against mountain stations: it predicts the station pressure from ten standardised readings (altitude, temperature, capsule deflection, ...), Adam at 3e-3, fp16 autocast with a torch.amp.GradScaler (initial scale 2^10), 200 steps planned, MSE in hPa^2 (the pascal error divided by 1e4), head bias started at the 600 hPa mean. The reference log is in pascals and the forward converts the head's hPa to Pa (x 100) inside the autocast region, so the product is fp16: once the net learns the lower, denser stations (over 655.04 hPa) their Pa prediction overflows fp16's 65504 to inf and the loss is inf at that step (the same batch in fp32 is finite); the run stops there.",
)
def h340_barometer_fp16_pascal_overflow(ctx: Context) -> None:
    gen = seeded(34009)
    model = StationBarometer(10, 64, act=nn.GELU)
    with torch.no_grad():
        model.head.bias.fill_(600.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    last = {}

    def watch(step, out, x, y):
        last["x"] = x

    def loss_fn(out, y):
        return F.mse_loss(out, y) / 1e4

    n = _loop(
        ctx, model, opt, _stations(gen, 64, 340), 200, loss_fn, watch=watch, scaler=scaler, amp=True
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is inf at the step it stops", bad == n - 1 and math.isinf(ctx.losses[-1]))
    with torch.no_grad():
        fp32 = model(last["x"])
    ctx.check(
        "the same batch in fp32 is finite and its largest prediction is over 65504 Pa",
        bool(torch.isfinite(fp32).all()) and float(fp32.max()) > 65504.0,
    )
    ctx.check(
        "every loss before it was finite", _finite(ctx.losses[:-1]) and bad is not None and bad > 10
    )
    ctx.check("the run stops at the declared step", bad == DIV_BM)


# -- tenmoku glaze: the judges' vote counts are used as BCE targets -------------------------------


def _glazes(gen, batch, seed, judges=5):
    """Fourteen standardised kiln readings; six glaze effects (oil spot, hare's fur, crawling,
    pinholing, crazing, iridescence), each with the number of five judges who saw it."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(14, 6, generator=g)
    while True:
        x = torch.randn(batch, 14, generator=gen)
        p = torch.sigmoid(1.5 * (x @ w) / math.sqrt(14))
        votes = torch.binomial(torch.full_like(p, float(judges)), p)
        yield x, votes


@scenario(
    family="tenmoku_glaze_effect_multilabel_bce_tagger",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) tagging six effects of a tenmoku glaze firing (oil spot, hare's fur, crawling, pinholing, crazing, iridescence) from fourteen standardised kiln readings, multi-label BCE with logits, Adamax at 5e-3, 250 steps. The targets were meant as the share of five judges who saw each effect (votes / 5) and the loader passes the raw vote counts 0-5: for any target over 1 the BCE keeps falling as the logit grows, so the head's logits grow without bound (the loss goes below zero) while the tagger's ranking barely changes.",
)
def h340_tenmoku_vote_count_targets(ctx: Context) -> None:
    gen = seeded(34010)
    model = Trunk(14, 64, out=6, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    mags, tops = [], []

    def watch(step, out, x, y):
        mags.append(float(out.detach().abs().mean()))
        tops.append(float(y.max()))

    _loop(
        ctx,
        model,
        opt,
        _glazes(gen, 64, 340),
        250,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ctx.check("the targets go above 1 (vote counts)", min(tops) > 1.0)
    ctx.check("the head's mean |logit| grew over 20x", _mean(mags[-10:]) > 20 * _mean(mags[:5]))
    ctx.check(
        "and is still growing (last 50 steps above the 50 before)",
        _mean(mags[-50:]) > 1.2 * _mean(mags[-100:-50]),
    )
    ctx.check("the loss went below zero", _mean(ctx.losses[-10:]) < 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="lustreware_sheen_grade_episodic_prototypical_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written prototypical network (encoder.0 Linear, encoder.1 ReLU, encoder.2 Linear, a parameter-free squared-distance read-out at temperature 8.0) grading the sheen of reduction-fired lustreware from 24 standardised readings (reflectance, iridescence, silver/copper ratio, ...), trained in 5-way 5-shot episodes from 40 grades with 8 queries a grade, AdamW at 2e-3 with weight decay 0.01, a 20-episode linear warm-up then cosine decay (SequentialLR), clipping at 1.0, 200 episodes. An ordinary episodic run: the query loss falls and query accuracy rises.",
)
def h340_lustreware_episodic_cosine(ctx: Context) -> None:
    gen = seeded(34011)
    model = ProtoNet(temperature=8.0)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=20),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=180, eta_min=1e-5),
        ],
        milestones=[20],
    )
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _episodes(gen, 3411, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the query loss fell by over half", _fell(ctx.losses, 20, 0.5))
    ctx.check("query accuracy over 0.8 in the last 20 episodes", _mean(acc[-20:]) > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


class DryingConv(nn.Module):
    """A Conv1d classifier over a 32-sample trace of humidity and paper temperature."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _drying(gen, batch):
    """Three drying outcomes of a wagasa's oiled paper (even, tacky, cracked): traces differ in
    the decay rate of humidity and a temperature bump; noisy, a few labels flipped."""
    t = torch.linspace(0, 1, 32)
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        rate = torch.tensor([3.0, 1.2, 6.0])[y][:, None]
        bump = torch.tensor([0.0, 0.5, -0.5])[y][:, None]
        hum = torch.exp(-rate * t) + 0.25 * torch.randn(batch, 32, generator=gen)
        temp = bump * torch.sin(math.pi * t) + 0.25 * torch.randn(batch, 32, generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.05
        y = torch.where(flip, torch.randint(0, 3, (batch,), generator=gen), y)
        yield torch.stack([hum, temp], 1), y


@scenario(
    family="wagasa_parasol_oil_paper_drying_conv1d_classifier",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written ReLU Conv1d classifier (conv1, act1, conv2 stride 2, act2, mean pool, head) sorting a wagasa parasol maker's oiled-paper drying traces (humidity and paper temperature, 32 samples) into even, tacky and cracked, RMSprop under OneCycleLR (max_lr 3e-4), cross-entropy with label smoothing 0.1, clipping at 1.0, noisy traces and 5% flipped labels, 200 steps. An ordinary run: the loss falls and stays finite.",
)
def h340_wagasa_drying_rmsprop_onecycle(ctx: Context) -> None:
    gen = seeded(34012)
    model = DryingConv()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4, alpha=0.99)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-4, total_steps=200)
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _drying(gen, 64),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        watch=watch,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell by over a third", _fell(ctx.losses, 20, 0.67))
    ctx.check("accuracy over 0.8 in the last 20 steps", _mean(acc[-20:]) > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="surfboard_shaper_rocker_fp16_huber_regressor",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a surfboard shaper's tail rocker (standardised) from ten standardised readings of the blank and the surfer, NAdam at 2e-3, fp16 autocast with a torch.amp.GradScaler, accumulation over 2 micro-batches, Huber loss on noisy targets, ReduceLROnPlateau on a held-out batch's loss, 150 steps. An ordinary mixed-precision run: the loss falls, stays finite and the scale stays finite.",
)
def h340_surfboard_rocker_fp16_plateau(ctx: Context) -> None:
    gen = seeded(34013)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _readings(gen, 32, 10, 3413, noise=0.2)
    held = next(_readings(torch.Generator().manual_seed(3414), 256, 10, 3413, noise=0.2))

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        batches,
        150,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell by over half", _fell(ctx.losses, 10, 0.5))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check(
        "the loss scale stayed finite and positive", all(0 < s < float("inf") for s in ctx.scales)
    )
