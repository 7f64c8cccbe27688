"""Held-out set 209 (``h209_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a zipline trolley-speed tanh regressor whose linear warm-up lost
its ``min(1, ...)`` clamp, a woodturning bowl-catch ReLU classifier at an RMSprop rate typed
5e-2 for 5e-4, a crevasse snow-bridge deep ReLU MLP initialised with std 2/sqrt(fan_in), a
supercell hail-size residual LayerNorm MLP fed one shard in millimetres, a pogo-stick
bounce-height Gaussian-NLL net whose sigma is a bare sqrt, a lorimer bit-fit two-group MLP whose
encoder rate was typed 1e-9, a broom-squire bristle-bind regressor with an L2 penalty of the
wrong sign, a sandboard run-time MLP whose resume path multiplies by the accumulation count, a
diabolo trick classifier with a z-loss of the wrong sign, a jianzi kick classifier
dividing its logits by a contrastive temperature, and three controls (a fire-breathing
flame-length Huber MLP on heavy-tailed targets, a pumpkin weigh-off fp16 classifier, a thimble
knurl-defect 1-D CNN).

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
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
    extra=None,
    aux=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass; ``scale_loss(step, loss)``
    returns what is backpropagated of a micro-batch; ``extra(model)`` is added to the
    backpropagated loss (not to the logged one), and so is ``aux(out)``; stops after logging a NaN loss."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, loss)
            if extra is not None:
                total = total + extra(model) / accumulate
            if aux is not None:
                total = total + aux(out.float()) / accumulate
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


def _kinds(gen, batch, d_in, classes, seed, noise=0.35, flip=0.0):
    """Readings around one prototype per class, overlapping; ``flip`` of the labels redrawn."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        if flip:
            redraw = torch.rand(batch, generator=gen) < flip
            y = torch.where(redraw, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


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


# -- zipline: a linear warm-up that lost its min(1, ...) ------------------------------------------


@scenario(
    family="zipline_trolley_arrival_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting a zipline trolley's arrival speed at the "
    "landing platform (standardised) from 8 standardised readings (cable sag, rider mass, "
    "wind, pulley wear, ...), plain SGD at a peak of 0.1, MSE, and a LambdaLR linear "
    "warm-up over 20 steps written `lambda s: (s + 1) / 20` with the `min(1, ...)` dropped: "
    "after step 20 the rate keeps climbing linearly instead of holding; lr x sharpness passes "
    "2, the stability limit, and the loss blows up.",
)
def h209_zipline_warmup_no_clamp(ctx: Context) -> None:
    gen = seeded(20901)
    model = Stack(8, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 20)
    probe = next(_readings(torch.Generator().manual_seed(91), 256, 8, seed=1))
    prod = {}

    def before(step):
        if step % 10 == 0 and step <= 200:
            prod[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _train(
        ctx, model, opt, _readings(gen, 64, 8, seed=1), 220, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    bad = [v if math.isfinite(v) else 1e30 for v in ls]
    blow = next((i for i, v in enumerate(bad) if v > 50 * _mean(ls[30:40])), None)
    ctx.check("lr x sharpness below 1 at step 20", prod[20] < 1)
    ctx.check("loss fell over the warm-up", _fell(ls[:40], ratio=0.7))
    ctx.check("loss past 50x its step-30-40 level later", blow is not None)
    crossed = [s for s, v in prod.items() if v > 2]
    ctx.check(
        "lr x sharpness past 2 before the blow-up",
        bool(crossed) and blow is not None and min(crossed) < blow,
    )


# -- woodturning: an RMSprop rate typed 5e-2 for 5e-4 kills the ReLUs -----------------------------


def _lathe(gen, batch, seed):
    """Fourteen raw lathe readings (spindle rpm in hundreds, tool-rest gap, bevel angle, ...,
    all positive) around one profile per catch kind (6 kinds)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1 + 2 * torch.rand(6, 14, generator=g)
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        x = (protos[y] * (1 + 0.3 * torch.randn(batch, 14, generator=gen))).clamp_min(0)
        yield x, y


@scenario(
    family="woodturning_bowl_catch_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying a woodturner's bowl-gouge catch "
    "(6 kinds: none, dig-in, skate, ...) from 14 raw positive lathe readings, RMSprop, cross-entropy. The "
    "config's `lr: 5e-2` was meant as 5e-4: RMSprop's first steps move every weight by about "
    "the rate, fc1's units are pushed below zero on every reading, never fire again and get "
    "no gradient; the dead share of fc1 goes from near 0 to most of the layer and the loss "
    "stays high; finite.",
)
def h209_woodturning_rmsprop_lr_typo(ctx: Context) -> None:
    gen = seeded(20902)
    model = Stack(14, hidden=64, out=6)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-2)
    probe_x, _ = next(_lathe(torch.Generator().manual_seed(92), 512, seed=2))
    dead = []

    def before(step):
        if step in (0, 149):
            with torch.no_grad():
                dead.append(dead_fraction(model.act1(model.fc1(probe_x))))

    _train(
        ctx,
        model,
        opt,
        _lathe(gen, 64, seed=2),
        150,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ctx.check("under 20% of fc1 units dead at step 0", dead[0] < 0.2)
    ctx.check("over 60% of fc1 units dead at the end", dead[1] > 0.6)
    ctx.check("loss above 0.8 over the last 20 steps", _mean(ctx.losses[-20:]) > 0.8)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- crevasse: a deep ReLU MLP initialised with std 2/sqrt(fan_in) --------------------------------


class DeepProbe(nn.Module):
    """``depth`` Linear+ReLU blocks (blocks.0 ... ) and a head."""

    def __init__(self, d_in, width, depth, std_num):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.blocks = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in [*self.blocks, self.head]:
            nn.init.normal_(lin.weight, std=std_num / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.blocks:
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="crevasse_snow_bridge_load_deep_relu_mlp",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("blocks.0",),
    diverges="auto",
    heldout=True,
    note="A 14-block ReLU MLP (blocks.0 ... blocks.13, head) estimating a crevasse snow "
    "bridge's safe load (standardised) from 10 standardised probe readings, SGD with momentum "
    "0.9 at 1e-4, MSE. The hand-written He init reads `std=2 / sqrt(fan_in)` for "
    "`sqrt(2 / fan_in)`: each block multiplies the signal by about 1.4, so the gradient grows "
    "about 1.4x per block on its way back (the gradient at blocks.0's output is over 30x "
    "that at the last block's) and the forward signal as much, and the first updates throw the run off: the loss blows up.",
)
def h209_crevasse_init_gain_typo(ctx: Context) -> None:
    gen = seeded(20903)
    model = DeepProbe(10, 48, 14, 2.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ratio = {}

    def before(step):
        if step == 0:
            x, y = next(_readings(torch.Generator().manual_seed(93), 128, 10, seed=3))
            outs = []
            h = x
            for lin in model.blocks:
                h = lin(h)
                h.retain_grad()
                outs.append(h)
                h = F.relu(h)
            F.mse_loss(model.head(h).squeeze(-1), y).backward()
            ratio["g"] = float(outs[0].grad.norm()) / max(float(outs[-1].grad.norm()), 1e-30)
            model.zero_grad()

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=3), 120, F.mse_loss, before=before)
    ls = ctx.losses
    bad = [v if math.isfinite(v) else 1e30 for v in ls]
    ctx.check(
        "gradient at blocks.0 output over 30x that at the last block's at step 0", ratio["g"] > 30
    )
    ctx.check("loss past 100x its first value", max(bad) > 100 * ls[0])


# -- supercell: a residual LayerNorm MLP fed one shard in millimetres -----------------------------


class ResBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, h):
        return h + self.out(F.gelu(self.fc(self.norm(h))))


class ResMLP(nn.Module):
    def __init__(self, d_in, dim=48, depth=3, out=1):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(ResBlock(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        out = self.head(self.norm(h))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


@scenario(
    family="supercell_hail_diameter_residual_layernorm_mlp",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A pre-LN residual MLP (inp, blocks.0-2 with LayerNorm, norm, head) predicting hail "
    "diameter under a supercell (in cm, standardised) from 12 standardised radar readings, "
    "AdamW, MSE. One shard of spotter reports came in millimetres, not centimetres: the batch "
    "at step 120 has targets 10x too large, its loss is hundreds of times the others; the run "
    "recovers afterwards.",
)
def h209_supercell_mm_shard(ctx: Context) -> None:
    gen = seeded(20904)
    model = ResMLP(12)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def alter(step, x, y):
        if step == 120:
            return x, 10 * (y + 1.5)
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=4), 220, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check(
        "loss at step 120 over 100x the median of steps 100-119",
        ls[120] > 100 * _median(ls[100:120]),
    )
    ctx.check("loss fell before the shard", _fell(ls[:120], ratio=0.5))
    ctx.check(
        "loss back under 3x its pre-shard level at the end",
        _mean(ls[-20:]) < 3 * _mean(ls[100:120]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- pogo stick: a Gaussian NLL whose sigma is a bare sqrt ----------------------------------------


class BareSqrt(nn.Module):
    """sigma = sqrt(v): the port dropped the softplus that kept v positive."""

    def forward(self, v):
        return torch.sqrt(v)


class BounceNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mu = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)
        self.sigma = BareSqrt()
        nn.init.constant_(self.var.bias, 1.0)
        nn.init.normal_(self.var.weight, std=0.01)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mu(h), self.sigma(self.var(h))], -1)


def _gauss_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="pogo_stick_bounce_height_gaussian_nll_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("sigma",),
    diverges=11,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, a mean head mu and a variance head var, then sigma) predicting "
    "a pogo-stick bounce height and its spread (standardised) from 9 readings (spring "
    "preload, rider mass, surface, ...), Adamax, Gaussian NLL. The port computes "
    "`sigma = sqrt(var(h))` with the softplus dropped: the NLL drives the variance head down "
    "towards the small noise level, it overshoots below zero for some sample and sqrt of a "
    "negative gives NaN: the loss is NaN at step 11.",
)
def h209_pogo_bare_sqrt_sigma(ctx: Context) -> None:
    gen = seeded(20905)
    model = BounceNet()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    neg = {}

    def watch(step, out, x, y):
        if step not in neg and bool(torch.isnan(out[:, 1]).any()):
            neg[step] = True

    _train(ctx, model, opt, _readings(gen, 64, 9, seed=5), 200, _gauss_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss first NaN at step 11", bad == 11)
    ctx.check("sigma NaN at the step the loss first is", bad is not None and bad in neg)
    ctx.check("loss finite and falling before", bad is not None and bad > 10 and _fell(ls[:bad]))


# -- lorimer: an encoder group whose rate was typed 1e-9 ------------------------------------------


class BitFitter(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=5):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.encoder(x))


@scenario(
    family="lorimer_bit_mouth_size_two_group_mlp",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("encoder", "encoder.0", "encoder.2"),
    diverges=None,
    heldout=True,
    note="A two-part MLP (encoder.0, encoder.2, head) choosing a lorimer's bit mouth size "
    "(5 sizes) from 12 standardised measurements of a horse's mouth, Adagrad with two param "
    "groups, cross-entropy. The encoder group's rate reads `1e-9` where `1e-2` was meant "
    "(the head's is 1e-2): the encoder's weights move by about 1e-9 per step, "
    "effectively frozen at init, while only the head learns; the loss falls slowly and "
    "stays above what the run reaches otherwise; finite.",
)
def h209_lorimer_encoder_rate_typo(ctx: Context) -> None:
    gen = seeded(20906)
    model = BitFitter()
    opt = torch.optim.Adagrad(
        [
            {"params": model.encoder.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    enc0 = [p.detach().clone() for p in model.encoder.parameters()]
    head0 = [p.detach().clone() for p in model.head.parameters()]
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=6, noise=0.5),
        200,
        F.cross_entropy,
        classifier=True,
    )
    enc = max(
        float((p.detach() - s).abs().max())
        for p, s in zip(model.encoder.parameters(), enc0, strict=True)
    )
    head = max(
        float((p.detach() - s).abs().max())
        for p, s in zip(model.head.parameters(), head0, strict=True)
    )
    ctx.check("encoder weights moved under 1e-6 in 200 steps", enc < 1e-6)
    ctx.check("head weights moved over 0.05", head > 0.05)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- broom squire: an L2 penalty with the wrong sign ----------------------------------------------


@scenario(
    family="broom_squire_bristle_bind_strength_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting how well a broom squire's besom binding holds "
    "(pull-out force, standardised) from 10 standardised readings (birch twig count, wire "
    "turns, ...), plain SGD at 0.05, MSE, and a hand-written L2 penalty added as "
    "`loss - wd * sum(p**2)` with wd 0.1 (the sign flipped in a refactor): the weights grow "
    "a little every step, the fit first improves then the logged loss climbs slowly.",
)
def h209_broom_l2_sign_bug(ctx: Context) -> None:
    gen = seeded(20907)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    norms = []

    def before(step):
        if step in (0, 249):
            norms.append(
                float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
            )

    def extra(m):
        return -0.1 * sum((p**2).sum() for p in m.parameters())

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=7),
        250,
        F.mse_loss,
        before=before,
        extra=extra,
    )
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i] if math.isfinite(ls[i]) else 1e30)
    ctx.check("weight norm grew over 3x", norms[1] > 3 * norms[0])
    ctx.check("loss over the last 20 steps above 4x its lowest", _mean(ls[-20:]) > 4 * ls[low])
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("lowest loss before step 150", low < 150)


# -- sandboard: a resume path that multiplies by the accumulation count ---------------------------


@scenario(
    family="sandboard_dune_run_time_accum_relu_mlp",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting a sandboard run time down a dune "
    "(standardised) from 10 readings (slope, grain size, wax, ...), ASGD, MSE, gradients "
    "accumulated over 8 micro-batches. The run is resumed from a checkpoint at step 150 and "
    "the resume path's first step scales each micro-batch loss by `* accum` instead of "
    "`/ accum`: that one gradient is 64x the others; the rest of the run is normal.",
)
def h209_sandboard_resume_accum_bug(ctx: Context) -> None:
    gen = seeded(20908)
    model = Stack(10, hidden=48)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)

    def scale_loss(step, loss):
        return loss * 8 if step == 150 else loss / 8

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 8, 10, seed=8),
        240,
        F.mse_loss,
        accumulate=8,
        scale_loss=scale_loss,
    )
    gn = ctx.grad_norms
    ctx.check(
        "gradient at step 150 over 30x the median of steps 130-149",
        gn[150] > 30 * _median(gn[130:150]),
    )
    ctx.check(
        "gradient back under 3x that median by step 170", max(gn[170:]) < 3 * _median(gn[130:150])
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("loss fell over the run", _fell(ctx.losses[:150]))


# -- diabolo: a z-loss added with the wrong sign ---------------------------------------------------


@scenario(
    family="diabolo_trick_family_gelu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) naming a diabolo trick family (6 families) from 16 "
    "standardised stick-and-string readings, Adam at 3e-3, cross-entropy plus the PaLM "
    "z-loss meant to keep logsumexp(logits) near 0; it was added as `- 1e-3 * lse**2` (the "
    "sign flipped when the term moved into a helper). It rewards large logits without "
    "bound: the head's logits grow over 20x from step 5 and keep growing; the logged "
    "cross-entropy first falls, then climbs past 100x its low as the logits swamp it.",
)
def h209_diabolo_zloss_sign_bug(ctx: Context) -> None:
    gen = seeded(20909)
    model = Stack(16, hidden=48, out=6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    probe_x, _ = next(_kinds(torch.Generator().manual_seed(99), 256, 16, 6, seed=9, noise=0.25))
    size = {}

    def before(step):
        if step in (5, 200, 299):
            with torch.no_grad():
                size[step] = float(model(probe_x).abs().max(-1).values.mean())

    def aux(out):
        return -1e-3 * (torch.logsumexp(out, -1) ** 2).mean()

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=9, noise=0.25),
        300,
        F.cross_entropy,
        classifier=True,
        before=before,
        aux=aux,
    )
    ctx.check("head logits over 20x their step-5 size at the end", size[299] > 20 * size[5])
    ctx.check("head logits still growing over the last 100 steps", size[299] > 1.3 * size[200])
    ls = [v if math.isfinite(v) else 1e30 for v in ctx.losses]
    ctx.check("cross-entropy late past 100x its low", max(ls[100:]) > 100 * min(ls[:100]))


# -- jianzi: logits divided by a contrastive temperature -----------------------------------------


class KickNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=7, temperature=0.01):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x))))) / self.temperature


@scenario(
    family="jianzi_shuttlecock_kick_relu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) naming a jianzi (shuttlecock) kick (7 kinds) from 12 "
    "standardised foot-tracker readings, NAdam, cross-entropy. The classifier reuses the "
    "config of the team's contrastive pretraining and divides its logits by its "
    "`temperature: 0.01`: the logits are 100x, the float32 softmax gives most targets "
    "exactly 1.0 and the saturated rows give no gradient.",
)
def h209_jianzi_contrastive_temperature(ctx: Context) -> None:
    gen = seeded(20910)
    model = KickNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    probe = next(_kinds(torch.Generator().manual_seed(910), 512, 12, 7, seed=10))
    frac = {}

    def before(step):
        if step in (0, 199):
            with torch.no_grad():
                frac[step] = collapsed_fraction(model(probe[0]), probe[1])

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 7, seed=10),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ctx.check("over half the probe rows give the target exactly 1.0 at the end", frac[199] > 0.5)
    ctx.check("collapsed share grew from step 0", frac[199] > frac[0])
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


def _flames(gen, batch, seed):
    """Ten standardised readings (fuel volume, breath pressure, wind, ...) and a flame length
    with Student-t (df 1.5) gusts on top: heavy-tailed targets."""
    base = _readings(gen, batch, 10, seed=seed, noise=0.0)
    t = torch.distributions.StudentT(1.5)
    while True:
        x, y = next(base)
        yield x, y + 0.2 * t.sample((batch,))


@scenario(
    family="fire_breathing_flame_length_huber_silu_mlp",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP (fc1, fc2, head) predicting a fire-breather's flame length from "
    "10 standardised readings, targets with Student-t (df 1.5) gusts (some targets past 10), "
    "Huber loss (delta 1), RAdam with a OneCycleLR schedule and gradient clipping at 1.",
)
def h209_fire_breathing_heavy_tail_huber(ctx: Context) -> None:
    gen = seeded(20911)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    seen = []

    def watch(step, out, x, y):
        seen.append(float(y.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _flames(gen, 64, seed=11),
        200,
        nn.HuberLoss(delta=1.0),
        watch=watch,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(ctx.losses, k=20, ratio=0.8))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("some targets past 10 (heavy tails)", max(seen) > 10)


@scenario(
    family="pumpkin_weighoff_class_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP (fc1, fc2, head) placing a giant pumpkin in its weigh-off class "
    "(8 classes) from 14 standardised measurements (over-the-top, circumference, ...), fp16 "
    "autocast with a GradScaler, AdamW with weight decay, label smoothing 0.1, gradients "
    "accumulated over 2 micro-batches.",
)
def h209_pumpkin_fp16_label_smoothing(ctx: Context) -> None:
    gen = seeded(20912)
    model = Stack(14, hidden=64, out=8, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 14, 8, seed=12, noise=0.5),
        150,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        classifier=True,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("grad scale finite and positive", all(0 < v < math.inf for v in ctx.scales))


class KnurlNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(8)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(16)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x[:, None])))
        h = F.relu(self.bn2(self.conv2(F.max_pool1d(h, 2))))
        return self.head(h.mean(-1))


def _knurls(gen, batch, flip=0.1):
    """A 64-sample profilometer trace across a thimble's knurling: a periodic dimple pattern
    whose pitch and depth depend on the defect kind (4 kinds), with noise and a random
    phase; ``flip`` of the labels wrong (inspectors disagree)."""
    t = torch.arange(64.0)
    pitch = torch.tensor([4.0, 5.0, 6.5, 8.0])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        x = torch.sin(2 * math.pi * t / pitch[y, None] + phase)
        x = x + 0.4 * torch.randn(batch, 64, generator=gen)
        wrong = torch.rand(batch, generator=gen) < flip
        y = torch.where(wrong, torch.randint(0, 4, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="thimble_knurl_defect_bn_conv1d",
    optimizer="SGD(nesterov)",
    cause="healthy",
    heldout=True,
    note="Control: a 1-D CNN with BatchNorm (conv1, bn1, conv2, bn2, head) classifying a "
    "thimble's knurling defect (4 kinds) from a 64-sample profilometer trace, 10% of the "
    "labels wrong, SGD with Nesterov momentum 0.9 and weight decay, ReduceLROnPlateau.",
)
def h209_thimble_conv1d_plateau(ctx: Context) -> None:
    gen = seeded(20913)
    model = KnurlNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _train(ctx, model, opt, _knurls(gen, 32), 150, F.cross_entropy, classifier=True, sched=sched)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("loss finite throughout", _finite(ctx.losses))
