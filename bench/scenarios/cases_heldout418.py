"""Held-out set 418 (``h418_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before.

Faults: an orchard hail-claim Tweedie ReLU net whose mean lost its exp link (0 ** -0.5 is inf and
0 * inf NaN), an ice-road truck axle-load fp16 regressor fed kilograms for tonnes (the head
overflows fp16), a dogsled harness-snap BCE net whose resumed step sums the loss (a gradient
burst), a geyser eruption-interval tanh regressor whose warm-up peak is typed 10x (past
2/sharpness), a sugar-bush sap-flow regressor fed one shard in millilitres (one corrupted batch), a
bell-ringer rope-sally two-group classifier whose trunk lr is typed 1e-9 (a frozen trunk), a
pearl-diver breath-hold ReLU regressor on RMSprop at 100x its lr (ReLUs die), a chimney-sweep
soot-grade classifier with its temperature typed 0.005 (softmax saturates), a salt-pan brine
evaporation regressor whose decoupled weight decay has its sign flipped (a slow climb) and a
stilt-walker sway 12-layer ReLU MLP initialised with std 2/sqrt(fan_in) (gradients grow through
depth).

Controls: a rock-pool limpet-count Poisson net with a clamped log link (Adam, ReduceLROnPlateau),
an ocarina fingering-note classifier (SGD Nesterov under OneCycleLR, label smoothing, clipping)
and a kiln firing-cone fp16 Huber regressor (GradScaler, AdamW, accumulation, clipping).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


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
    backprop=None,
    after=None,
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it). With ``attach=False`` it is a
    reference run: nothing is recorded in ``ctx``."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if attach:
            ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ----------------------------------------------------------------------------------------


def _regression(gen, dim, batch=64, noise=0.05, scale=1.0, offset=0.0):
    """Endless (x, y) batches of a smooth generated target (a fixed random tanh teacher)."""
    w1 = torch.randn(dim, 16, generator=gen) / math.sqrt(dim)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, offset + scale * y


def _classes(gen, dim, classes, batch=64, flip=0.0):
    """Endless (x, label) batches: the label is the argmax of a fixed random linear teacher."""
    w = torch.randn(dim, classes, generator=gen)
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = (x @ w).argmax(1)
        if flip > 0:
            noisy = torch.rand(batch, generator=gen) < flip
            y = torch.where(noisy, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


def _counts(gen, dim, batch=128, zero_share=0.0):
    """Endless claim-like count / amount batches: a log-linear rate, many rows exactly 0."""
    w = torch.randn(dim, generator=gen) * 0.4
    while True:
        x = torch.randn(batch, dim, generator=gen)
        rate = torch.exp(0.3 + x @ w)
        y = torch.poisson(rate, generator=gen)
        if zero_share > 0:
            y = torch.where(torch.rand(batch, generator=gen) < zero_share, 0.0, y)
        yield x, y[:, None]


class _Net(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, dim, hidden, out, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x))


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- faults --------------------------------------------------------------------------------------


def _tweedie(mu, y, p=1.5):
    """Tweedie deviance (1 < p < 2) without the y-only term, hand-written."""
    return (-y * mu.pow(1 - p) / (1 - p) + mu.pow(2 - p) / (2 - p)).mean()


class _HailClaimNet(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 32)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(32, 1)
        self.rate_act = nn.ReLU()  # was torch.exp (log link) before the refactor

    def forward(self, x):
        return self.rate_act(self.head(self.act1(self.fc1(x))))


@scenario(
    family="orchard_hail_claim_tweedie_relu_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("rate_act", "head"),
    diverges=13,
    heldout=True,
    note="Orchard hail-damage claim-amount model (SiLU MLP) trained with a hand-written Tweedie "
    "deviance (p = 1.5) on generated claims, 60% of policies with no claim. A refactor replaced "
    "the log link's exp with a ReLU 'to keep the mean positive': as soon as one row's mean is "
    "exactly 0, mu ** (1 - p) = 0 ** -0.5 is inf, times a zero claim is NaN, and the loss is NaN.",
)
def h418_orchard_hail_tweedie_relu_mean(ctx) -> None:
    gen = seeded(41801)
    model = _HailClaimNet(6)
    with torch.no_grad():
        model.head.bias.fill_(1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = _counts(gen, 6, zero_share=0.6)
    zero_rows = []

    def loss_fn(mu, y):
        if bool((mu == 0).any()):
            zero_rows.append(len(ctx.losses))
        return _tweedie(mu, y)

    losses = _loop(ctx, model, opt, batches, 200, loss_fn)
    bad = _first_bad(losses)
    ctx.check("the loss is non-finite", bad is not None)
    ctx.check(
        "a row's mean was exactly 0 at the non-finite step", bad is not None and bad in zero_rows
    )
    ctx.check("finite before that", bad is not None and _finite(losses[:bad]))


@scenario(
    family="ice_road_truck_axle_load_fp16_silu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=83,
    heldout=True,
    note="Ice-road weigh-station axle-load regressor (SiLU MLP) trained under fp16 autocast with "
    "a GradScaler; the scale-house export writes the load in kilograms where the model expects "
    "tonnes (12-90 t becomes 12000-90000 kg). As the head learns the scale its fp16 output passes "
    "65504 on the heaviest rigs, overflows to inf and the loss is non-finite.",
)
def h418_ice_road_axle_load_kilograms(ctx) -> None:
    gen = seeded(41802)
    model = _Net(5, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    scaler = torch.amp.GradScaler("cpu")
    batches = _regression(gen, 5, scale=30_000.0, offset=50_000.0, noise=0.1)
    fp32_peak = []

    def loss_fn(out, y):
        with torch.no_grad():
            fp32_peak.append(float(model(batch_x[0]).abs().max()))
        return F.mse_loss(out, y)

    batch_x = [None]

    def alter(step, x, y):
        batch_x[0] = x
        return x, y

    losses = _loop(ctx, model, opt, batches, 300, loss_fn, alter=alter, scaler=scaler, amp=True)
    bad = _first_bad(losses)
    ctx.check("the loss is non-finite under fp16", bad is not None)
    ctx.check(
        "the float32 forward is finite and past 65504 at that step",
        bad is not None and math.isfinite(fp32_peak[bad]) and fp32_peak[bad] > 65504,
    )
    ctx.check("finite before that", bad is not None and _finite(losses[:bad]))


@scenario(
    family="dogsled_harness_snap_accum_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Dogsled harness-snap risk net (ReLU MLP, BCE with logits, 5% noisy labels, SGD "
    "momentum, accumulation over 4, clipped at 1.0). The first step after a resume at step 100 "
    "goes through a branch that computes the loss with reduction='sum' and does not divide by "
    "the accumulation: one gradient 256x too large on an ordinary batch; clipping bounds it and "
    "the run recovers.",
)
def h418_dogsled_harness_resume_sum(ctx) -> None:
    gen = seeded(41803)
    model = _Net(8, 32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    raw = _classes(gen, 8, 2, flip=0.05)

    def batches():
        for x, y in raw:
            yield x, y[:, None].float()

    def backprop(step, loss):
        if step == 100:
            return loss * 64 * 4  # reduction='sum' over 64 rows, accumulation not divided out
        return loss

    losses = _loop(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        accumulate=4,
        clip=1.0,
    )
    g = ctx.grad_norms
    ctx.check(
        "gradient over 30x the median of the 20 steps before at step 100",
        g[100] > 30 * _median(g[80:100]),
    )
    ctx.check("the logged loss at step 100 is ordinary", losses[100] < 2 * _median(losses[80:100]))
    ctx.check(
        "recovers: finite, the last 20 steps under 1.5x the 20 before the burst",
        _finite(losses) and _mean(losses[-20:]) < 1.5 * _mean(losses[80:100]),
    )


@scenario(
    family="geyser_eruption_interval_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Geyser eruption-interval regressor (tanh MLP, plain SGD) with a linear warm-up over 40 "
    "steps to a peak typed 1.0 for 0.1. Partway through the warm-up lr x sharpness passes 2 and "
    "the loss blows up; at 0.1 it stays under 2.",
)
def h418_geyser_warmup_peak_typo(ctx) -> None:
    gen = seeded(41804)
    model = _Net(4, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = _regression(gen, 4, batch=128, scale=2.0)
    probe = next(batches)
    peak = 1.0
    lrs = []
    sharp = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / 40)
        for gr in opt.param_groups:
            gr["lr"] = lr
        lrs.append(lr)
        if step % 5 == 0:
            sharp[step] = _sharpness(model, F.mse_loss, *probe)

    losses = _loop(ctx, model, opt, batches, 150, F.mse_loss, before=before)
    low = min(v for v in losses if math.isfinite(v))
    blew = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("lr x sharpness under 2 at step 0", lrs[0] * sharp[0] < 2)
    ctx.check(
        "lr x sharpness past 2 before the blow-up",
        blew is not None and any(lrs[s] * v > 2 for s, v in sharp.items() if s <= blew),
    )
    cross = next((s for s, v in sharp.items() if lrs[s] * v > 2), None)
    ctx.check(
        "0.1 x sharpness under 2 at every probe up to the first crossing",
        cross is not None and all(0.1 * v < 2 for s, v in sharp.items() if s <= cross),
    )
    ctx.check("the loss blows up (over 100x its low or non-finite)", blew is not None)


@scenario(
    family="sugar_bush_tap_line_sap_flow_silu_regressor",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Sugar-bush tap-line sap-flow regressor (SiLU MLP, AdamW, clipped at 1.0). One sugar "
    "camp's shard, read at step 120, logs flow in millilitres where every other logs litres (x1000 "
    "targets): one batch's loss and gradient jump, clipping bounds the step and the run recovers.",
)
def h418_sugar_bush_millilitre_shard(ctx) -> None:
    gen = seeded(41805)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    batches = _regression(gen, 6, scale=1.5)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 120 else (x, y)

    losses = _loop(ctx, model, opt, batches, 220, F.mse_loss, alter=alter, clip=1.0)
    g = ctx.grad_norms
    ctx.check(
        "loss over 100x the median of the 20 steps before at step 120",
        losses[120] > 100 * _median(losses[100:120]),
    )
    ctx.check("gradient over 20x the median before at step 120", g[120] > 20 * _median(g[100:120]))
    ctx.check(
        "recovers: finite, the last 20 steps under 2x the 20 before the shard",
        _finite(losses) and _mean(losses[-20:]) < 2 * _mean(losses[100:120]),
    )


@scenario(
    family="bell_ringer_rope_sally_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Bell-ringer rope-sally catch classifier (ReLU MLP, 4 catch grades) with two Adagrad "
    "param groups, trunk (fc1) and head; the trunk's lr is typed 1e-9 for 1e-2, so fc1 receives "
    "gradients but never moves while fc2 and the head train.",
)
def h418_bell_ringer_trunk_lr_typo(ctx) -> None:
    gen = seeded(41806)
    model = _Net(10, 48, 4)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-2},
        ]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    g1 = []

    def inspect(step):
        g1.append(float(model.fc1.weight.grad.norm()))

    losses = _loop(
        ctx,
        model,
        opt,
        _classes(gen, 10, 4),
        200,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )
    moved1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    movedh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 moves under 1e-6 of its norm", moved1 < 1e-6)
    ctx.check("fc1 receives gradients", _median(g1) > 1e-4)
    ctx.check("the head moves over 5%", movedh > 0.05)
    ctx.check("finite", _finite(losses))


@scenario(
    family="pearl_diver_breath_hold_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Pearl-diver breath-hold time regressor (ReLU MLP) on RMSprop with lr typed 3e-2 for "
    "3e-4: the first large normalised steps push most of fc2's units negative on every input, "
    "act2's ReLUs die and stop learning.",
)
def h418_pearl_diver_rmsprop_lr_typo(ctx) -> None:
    dead = {}
    for lr, attach in ((3e-4, False), (3e-2, True)):
        gen = seeded(41807)
        model = _Net(6, 64, 1)
        opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        batches = _regression(gen, 6, scale=2.0, offset=1.0)
        fr = []

        def after(step, model=model, fr=fr):
            if step >= 150:
                with torch.no_grad():
                    fr.append(dead_fraction(model.features(torch.randn(256, 6))))

        _loop(ctx, model, opt, batches, 200, F.mse_loss, after=after, attach=attach)
        dead[lr] = _mean(fr)
    ctx.check("over 45% of act2's units dead over the last 50 steps", dead[3e-2] > 0.45)
    ctx.check("under 20% at 3e-4", dead[3e-4] < 0.2)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="chimney_sweep_soot_grade_temperature_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Chimney-sweep flue soot-grade classifier (GELU MLP, 5 grades) whose logits are divided "
    "by a temperature read from a config as 0.005 for 0.5: the softmax saturates, target "
    "probabilities round to exactly 1.0 in float32.",
)
def h418_chimney_sweep_temperature_typo(ctx) -> None:
    gen = seeded(41808)
    model = _Net(8, 48, 5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    temperature = 0.005
    fr, fr_ref = [], []
    last = {}

    def loss_fn(out, y):
        scaled = out / temperature
        last["logits"], last["y"] = out.detach(), y
        return F.cross_entropy(scaled, y)

    def after(step):
        if step >= 170:
            fr.append(collapsed_fraction(last["logits"] / temperature, last["y"]))
            fr_ref.append(collapsed_fraction(last["logits"] / 0.5, last["y"]))

    losses = _loop(ctx, model, opt, _classes(gen, 8, 5), 200, loss_fn, classifier=True, after=after)
    ctx.check(
        "over 40% of rows' target probability exactly 1.0 over the last 30 steps", _mean(fr) > 0.4
    )
    ctx.check("under 5% at temperature 0.5 on the same logits", _mean(fr_ref) < 0.05)
    ctx.check("no NaN", not any(math.isnan(v) for v in losses))


@scenario(
    family="salt_pan_brine_evaporation_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Salt-pan brine evaporation-rate regressor (tanh MLP, Adamax) with hand-written "
    "decoupled weight decay whose sign is flipped (p *= 1 + lr * wd for 1 - lr * wd): the "
    "weights inflate, the tanh units saturate and the loss climbs slowly with no single jump.",
)
def h418_salt_pan_decay_sign(ctx) -> None:
    gen = seeded(41809)
    model = _Net(5, 32, 1, act=nn.Tanh)
    lr, wd = 1e-2, 1.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    batches = _regression(gen, 5, scale=1.0)
    norm0 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses = _loop(ctx, model, opt, batches, 300, F.mse_loss, after=after)
    norm1 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    w = [_mean(losses[i : i + 20]) for i in range(0, len(losses) - 19, 10)]
    ctx.check("weight norm over 2x", norm1 > 2 * norm0)
    ctx.check("the last 20-step mean over 2x the lowest 20-step mean", w[-1] > 2 * min(w))
    ctx.check(
        "no 10-step window jumps over 2.5x the one before",
        all(b < 2.5 * a for a, b in zip(w[:-1], w[1:], strict=True)),
    )
    ctx.check("finite", _finite(losses))


class _DeepReLU(nn.Module):
    def __init__(self, dim, width, depth, std_fn):
        super().__init__()
        sizes = [dim] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.normal_(m.weight, std=std_fn(m.in_features))
            nn.init.zeros_(m.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for m in self.layers:
            x = m(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x)

    def ratio(self):
        return float(self.outs[0].grad.norm() / self.outs[-1].grad.norm().clamp_min(1e-12))


@scenario(
    family="stilt_walker_sway_deep_relu_mlp",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Stilt-walker sway regressor (12-layer ReLU MLP, no normalisation, clipped at 1.0, "
    "RAdam) initialised with std 2 / sqrt(fan_in) for sqrt(2 / fan_in): every layer multiplies "
    "the backward signal by about sqrt(2), so the gradient grows through depth, the first layer's "
    "output gradient over 20x the last's.",
)
def h418_stilt_walker_init_std(ctx) -> None:
    gen = seeded(41810)
    ref = _DeepReLU(6, 48, 12, lambda n: math.sqrt(2 / n))
    x0, y0 = next(_regression(gen, 6))
    F.mse_loss(ref(x0), y0).backward()
    ref_ratio = ref.ratio()
    gen = seeded(41810)
    model = _DeepReLU(6, 48, 12, lambda n: 2 / math.sqrt(n))
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ratios = []

    def inspect(step):
        ratios.append(model.ratio())

    losses = _loop(ctx, model, opt, _regression(gen, 6), 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("dL/d(layers.0 out) over 20x dL/d(layers.11 out) at the start", ratios[0] > 20)
    ctx.check("median ratio over the run over 10x", _median(ratios) > 10)
    ctx.check("under 5x at sqrt(2 / fan_in)", ref_ratio < 5)
    ctx.check("finite", _finite(losses))


# -- controls ------------------------------------------------------------------------------------


class _LimpetNet(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, 32)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(x))).clamp(-8.0, 8.0)  # log-rate, clamped


@scenario(
    family="rock_pool_limpet_count_clamped_log_poisson_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Rock-pool limpet-count model: a SiLU MLP predicting a log-rate clamped to [-8, 8], "
    "Poisson NLL exp(log_rate) - y * log_rate, Adam with ReduceLROnPlateau on a held-out batch "
    "(control).",
)
def h418_rock_pool_limpet_poisson(ctx) -> None:
    gen = seeded(41811)
    model = _LimpetNet(6)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _counts(gen, 6)
    held = next(batches)

    def nll(log_rate, y):
        return (log_rate.exp() - y * log_rate).mean()

    def plateau():
        with torch.no_grad():
            return float(nll(model(held[0]), held[1]))

    losses = _loop(ctx, model, opt, batches, 200, nll, sched=sched, plateau=plateau)
    ctx.check("trained: loss fell and finite", _fell(losses))


@scenario(
    family="ocarina_fingering_note_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ocarina fingering-to-note classifier (ReLU MLP, 8 notes, 5% noisy labels): SGD "
    "Nesterov with weight decay under OneCycleLR, label smoothing 0.1, clipping at 1.0 (control).",
)
def h418_ocarina_fingering_onecycle(ctx) -> None:
    gen = seeded(41812)
    model = _Net(12, 64, 8)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses = _loop(
        ctx,
        model,
        opt,
        _classes(gen, 12, 8, flip=0.05),
        200,
        loss_fn,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("trained: loss fell and finite", _fell(losses))


@scenario(
    family="kiln_firing_cone_bend_fp16_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kiln firing-cone bend-angle regressor (SiLU MLP, noisy readings) under fp16 autocast "
    "with a GradScaler, AdamW with a no-decay bias group, accumulation over 2, clipping at 1.0, "
    "Huber loss (control).",
)
def h418_kiln_cone_fp16_huber(ctx) -> None:
    gen = seeded(41813)
    model = _Net(6, 48, 1, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    scaler = torch.amp.GradScaler("cpu")
    losses = _loop(
        ctx,
        model,
        opt,
        _regression(gen, 6, scale=2.0, noise=0.2),
        150,
        F.huber_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("trained: loss fell and finite", _fell(losses))
