"""Held-out set 217 (``h217_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a rubber-tapping latex-yield tanh regressor whose
MultiStepLR gamma was typed 10 for 0.1, a bamboo-scaffold lashing 8-layer ReLU regressor
initialised with std 0.5 for 0.05 (every step clipped), a pool-cue break-speed regressor fed one
row holding the radar gun's missing-value sentinel 9999, a net-mending knot-strength Huber
regressor whose first step after evaluation keeps the eval criterion's sum reduction, a matcha
whisk froth classifier whose encoder param group has a rate typed 3e-8 for 3e-3, an ice-volcano
spout-count Poisson net (functional activations) whose rate is torch.relu with no floor, a
wood-carving chatter ReLU classifier whose rare-class prior bias was written into every Linear,
an oyster-shucking hinge classifier dividing its own logits by a distillation temperature of
0.01, a nacreous-cloud regressor whose hand-written weight decay has its sign flipped, a
lithophone pitch classifier whose z-loss has its sign flipped, and three controls (a musical-saw
residual regressor with a linear warm-up, cosine decay and clipping, a log-driving jam-risk
classifier with Nesterov, label smoothing, ReduceLROnPlateau and noisy labels, an incense-stick
burn-time regressor under fp16 autocast with a GradScaler and gradient accumulation).

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

LR_RUBBER = 0.08
DIV_ICE = 63


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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` after the
    optimizer step; ``scale_loss(step, loss)`` returns what is backpropagated; stops after
    logging a NaN loss."""
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
                total = scale_loss(step, total)
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
        if after is not None:
            after(step)
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


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
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


# -- rubber tapping: a MultiStepLR whose gamma was typed 10 for 0.1 --------------------------------


@scenario(
    family="rubber_tapping_latex_yield_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the latex yield of a rubber tree's tapping "
    "cut (standardised) from 10 standardised readings (cut angle, bark thickness, dawn "
    "temperature, ...), plain SGD, MSE, and a MultiStepLR meant to divide the rate by 10 at "
    "step 80, with `gamma: 10` typed for 0.1. At step 80 the rate jumps tenfold; lr x "
    "sharpness goes from about 0.55 to about 5.5, past 2, the stability limit, and the loss "
    "blows up within a few steps (non-finite by step 100).",
)
def h217_rubber_tapping_gamma_typo(ctx: Context) -> None:
    gen = seeded(21701)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=LR_RUBBER)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80], gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(71), 256, 10, seed=1))
    prod = {}

    def before(step):
        if step in (40, 78, 80):
            prod[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _train(
        ctx, model, opt, _readings(gen, 64, 10, seed=1), 160, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    ctx.check(
        "lr x sharpness below 1 before the milestone (steps 40, 78)", max(prod[40], prod[78]) < 1
    )
    ctx.check("lr x sharpness past 2 at step 80", prod[80] > 2)
    ctx.check("loss fell before the onset", _fell(ls[:80], ratio=0.6))
    late = [v if math.isfinite(v) else 1e30 for v in ls[80:]]
    ctx.check("loss past 20x its pre-onset level after the onset", max(late) > 20 * min(ls[:80]))


# -- bamboo scaffold: an init std typed 0.5 for 0.05 on a deep ReLU stack --------------------------


class Lashing(nn.Module):
    """A deep ReLU stack ``layers.0 .. layers.{depth-1}`` and a head, initialised N(0, std)."""

    def __init__(self, d_in=12, width=64, depth=8, std=0.05):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        with torch.no_grad():
            for lin in [*self.layers, self.head]:
                lin.weight.normal_(0.0, std)
                lin.bias.zero_()
        self.inputs = []

    def forward(self, x):
        self.inputs = []
        for lin in self.layers:
            if x.requires_grad:
                x.retain_grad()
            self.inputs.append(x)
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="bamboo_scaffold_lashing_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.1", "layers.2"),
    diverges=None,
    heldout=True,
    note="An 8-layer hand-written ReLU stack (layers.0..7, head) predicting the load a "
    "rattan lashing on a bamboo scaffold holds (standardised) from 12 standardised readings "
    "(pole diameter, lashing turns, wetness, ...), SGD with Nesterov momentum, MSE. The init "
    "config's `init_std: 0.5` was meant as 0.05 (He for width 64 is 0.18): each layer "
    "multiplies the signal, and its gradient on the way back, by about 2.8, so the gradient "
    "reaching the first layers is hundreds of times larger than at the last; the output "
    "starts thousands of times too large and the gradient norm is in the tens of millions. "
    "Clipping at 1 keeps the run finite, but every step is clipped and after 150 steps the "
    "loss is still tens of thousands; no blow-up.",
)
def h217_bamboo_scaffold_init_std_typo(ctx: Context) -> None:
    gen = seeded(21702)
    model = Lashing(std=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(72), 256, 12, seed=2))
    ratio = {}

    def depth_ratio(net):
        x = probe_x.clone().requires_grad_(True)
        F.mse_loss(net(x), probe_y).backward()
        first = float(net.inputs[1].grad.norm())
        last = float(net.inputs[-1].grad.norm())
        g0 = float(net.layers[0].weight.grad.norm())
        net.zero_grad(set_to_none=True)
        return first / max(last, 1e-30), g0

    ratio["deep"], g_bad = depth_ratio(model)
    torch.manual_seed(0)
    sane = Lashing(std=math.sqrt(2 / 64))
    ratio["sane"], g_ok = depth_ratio(sane)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=2), 150, F.mse_loss, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "backprop signal grows over 100x from layer 7's input to layer 1's",
        ratio["deep"] > 100,
    )
    ctx.check("layers.0 gradient over 100x that of a He-initialised copy", g_bad > 100 * g_ok)
    ctx.check("gradient norm over 1000x the clip threshold on every step", min(gn) > 1000)
    ctx.check("loss still over 1000 at the end (targets of unit scale)", _mean(ls[-20:]) > 1000)
    ctx.check("finite", _finite(ls))


# -- pool cue: one break recorded with the radar gun's missing-value sentinel 9999 -----------------


@scenario(
    family="pool_cue_break_speed_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting the cue-ball speed of a pool break "
    "(standardised) from 8 standardised readings (cue weight, bridge length, stance, tip "
    "hardness, ...), ASGD, MSE, gradient clipping at 5. The batch of step 100 holds one break "
    "whose radar reading was logged as the gun's missing-value sentinel 9999 and never "
    "filtered: that one row's loss and gradient are thousands of times the others; clipping "
    "bounds the step and the run recovers; finite.",
)
def h217_pool_cue_sentinel_row(ctx: Context) -> None:
    gen = seeded(21703)
    model = Stack(8, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            x[17, 3] = 9999.0
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=3), 200, F.mse_loss, alter=alter, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 100 over 50x the median before", gn[100] > 50 * _median(gn[:100]))
    ctx.check("loss at step 100 over 50x the median before", ls[100] > 50 * _median(ls[80:100]))
    ctx.check("loss fell before the onset", _fell(ls[:100], ratio=0.7))
    ctx.check(
        "loss back under 2x its pre-onset level by the end",
        _mean(ls[-20:]) < 2 * _mean(ls[80:100]),
    )
    ctx.check("finite", _finite(ls))


# -- net mending: the first step after evaluation keeps the eval criterion's sum reduction ---------


@scenario(
    family="net_mending_knot_strength_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the breaking strength of a mended sheet-bend "
    "knot in a fishing net (standardised) from 12 standardised readings (twine gauge, mesh "
    "size, wetness, ...), SGD with momentum 0.9, Huber loss. The evaluation pass at step 100 "
    "swaps in a `reduction='sum'` criterion to total the validation loss and the first "
    "training step after it reuses that criterion: one gradient 64x the usual (batch 64), "
    "from no change in the data. Momentum carries the burst a few steps, then the run "
    "recovers; finite.",
)
def h217_net_mending_eval_sum_criterion(ctx: Context) -> None:
    gen = seeded(21704)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def scale_loss(step, total):
        return total * 64 if step == 100 else total

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=4),
        200,
        F.huber_loss,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 100 over 30x the median before", gn[100] > 30 * _median(gn[80:100]))
    ctx.check(
        "loss of the step-100 batch itself ordinary (under 2x the median before)",
        ls[100] < 2 * _median(ls[80:100]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:100], ratio=0.7))
    ctx.check("finite", _finite(ls))


# -- matcha: the encoder's param group at a rate typed 3e-8 for 3e-3 -------------------------------


class Whisk(nn.Module):
    def __init__(self, d_in=14, hidden=64, classes=4):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU()
        )
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.encoder(x))


@scenario(
    family="matcha_whisk_froth_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("encoder", "encoder.0", "encoder.2"),
    diverges=None,
    heldout=True,
    note="A GELU encoder (encoder.0, encoder.2) and a head grading the froth of a bowl of "
    "whisked matcha (4 grades) from 14 standardised readings (whisk strokes per second, "
    "water temperature, powder mass, ...), AdamW with two param groups, cross-entropy. The "
    "encoder group's `lr: 3e-8` was typed for 3e-3: its updates are some 1e-7 of its weights "
    "every step, the encoder does not move and the head learns on random features; the loss "
    "still falls (the head alone fits part of the task) and stays finite.",
)
def h217_matcha_encoder_lr_exponent(ctx: Context) -> None:
    gen = seeded(21705)
    model = Whisk()
    opt = torch.optim.AdamW(
        [
            {"params": model.encoder.parameters(), "lr": 3e-8},
            {"params": model.head.parameters(), "lr": 3e-3},
        ],
        weight_decay=1e-2,
    )
    enc, head = list(model.encoder.parameters()), list(model.head.parameters())
    enc0, head0 = _snapshot(enc), _snapshot(head)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 4, seed=5, noise=0.9),
        200,
        F.cross_entropy,
        classifier=True,
    )
    ls = ctx.losses
    rel_enc = _moved(enc, enc0) / max(float(p.detach().abs().max()) for p in enc)
    rel_head = _moved(head, head0) / max(float(p.detach().abs().max()) for p in head)
    ctx.check("encoder moved under 1e-4 of its largest weight", rel_enc < 1e-4)
    ctx.check("head moved over 10% of its largest weight", rel_head > 0.1)
    ctx.check("finite", _finite(ls))


# -- ice volcano: a Poisson rate from torch.relu with no floor -------------------------------------


class SpoutNet(nn.Module):
    """Functional activations: F.silu, F.gelu in forward, a rate from torch.relu."""

    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.head.bias.fill_(1.5)

    def forward(self, x):
        h = F.silu(self.fc1(x))
        h = F.gelu(self.fc2(h))
        return torch.relu(self.head(h)).squeeze(-1)  # the bug: no floor (softplus or + eps)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate)).mean()


def _spouts(gen, batch, d_in=9, seed=6):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        lam = torch.exp(0.9 * x @ w / math.sqrt(d_in) - 0.3)
        yield x, torch.poisson(lam, generator=gen)


@scenario(
    family="ice_volcano_spout_count_poisson_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("head",),
    diverges=DIV_ICE,
    heldout=True,
    note="A net with functional activations (F.silu, F.gelu in forward) counting the spouts "
    "per hour of a shoreline ice volcano on a frozen lake from 9 standardised readings (wave "
    "height, ice-shelf thickness, wind, ...), RMSprop, a hand-written Poisson NLL "
    "rate - y log(rate). The rate is torch.relu of the head with no floor (the recipe has "
    "softplus): quiet rows push their rate down until one reaches exactly 0, log(0) is -inf "
    "and the loss is NaN at that step.",
)
def h217_ice_volcano_relu_rate_log_zero(ctx: Context) -> None:
    gen = seeded(21706)
    model = SpoutNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-4)
    low = {}

    def watch(step, out, x, y):
        low[step] = float(out.detach().min())

    _train(ctx, model, opt, _spouts(gen, 64), 200, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss non-finite at the declared step", bad == DIV_ICE)
    ctx.check("a rate exactly 0 at that step", bad is not None and low[bad] == 0.0)
    ctx.check("all rates positive for the first 10 steps", min(low[s] for s in range(10)) > 0)
    ctx.check("loss finite and falling before", bad is not None and _fell(ls[:bad], ratio=0.9))


# -- wood carving: a focal-loss prior bias written into every Linear -------------------------------


@scenario(
    family="wood_carving_gouge_chatter_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1", "act1", "fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) flagging chatter marks from a carving "
    "gouge (a rare class) from 16 standardised readings (bevel angle, grain direction, "
    "stroke speed, ...), Adagrad, BCE with logits. The recipe initialises the head's bias to "
    "the rare-class prior, -log((1 - 0.01) / 0.01) = -4.6; the port's init loop writes it "
    "into every Linear's bias, so every fc1 and fc2 unit sits below zero on every sample, "
    "gets no gradient and never fires: the hidden layers are dead throughout and only the "
    "head's bias learns; the loss stays at the base rate; finite.",
)
def h217_wood_carving_prior_bias_everywhere(ctx: Context) -> None:
    gen = seeded(21707)
    model = Stack(16, hidden=64)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.bias.fill_(-math.log((1 - 0.01) / 0.01))
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)

    def chatter(gen, batch):
        g = torch.Generator().manual_seed(7)
        w = torch.randn(16, generator=g)
        while True:
            x = torch.randn(batch, 16, generator=gen)
            y = ((x @ w) / 4 + 0.3 * torch.randn(batch, generator=gen) > 1.2).float()
            yield x, y

    probe_x, probe_y = next(chatter(torch.Generator().manual_seed(77), 1024))
    fc1_0 = _snapshot(model.fc1.parameters())
    _train(ctx, model, opt, chatter(gen, 64), 200, F.binary_cross_entropy_with_logits)
    with torch.no_grad():
        dead1 = dead_fraction(model.act1(model.fc1(probe_x)))
        dead2 = dead_fraction(model.features(probe_x))
        pos = float(probe_y.mean())
    base = -(pos * math.log(pos) + (1 - pos) * math.log(1 - pos))
    ls = ctx.losses
    ctx.check("over 90% of fc1 units dead at the end", dead1 > 0.9)
    ctx.check("over 90% of fc2 units dead at the end", dead2 > 0.9)
    ctx.check("fc1 never moved", _moved(model.fc1.parameters(), fc1_0) == 0.0)
    ctx.check(
        "loss ends no lower than 0.9x the base-rate entropy",
        _mean(ls[-20:]) > 0.9 * base,
    )
    ctx.check("finite", _finite(ls))


# -- oyster shucking: the distillation temperature divides the student's own logits ----------------


class Hinge(nn.Module):
    def __init__(self, d_in=12, hidden=64, classes=5, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="oyster_shucking_hinge_pop_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) classifying how an oyster's hinge gives under the "
    "shucking knife (5 kinds) from 12 standardised readings (knife twist torque, shell "
    "length, ...), RAdam, cross-entropy. The distillation recipe sharpens the teacher with "
    "`temperature: 0.01`; the port divides the student's own training logits by it: logits "
    "100x, and within a few steps the float32 softmax rounds to exactly 1 on the target for "
    "over half of the rows (0 for every other class) and stays so; the loss is finite.",
)
def h217_oyster_shucking_student_temperature(ctx: Context) -> None:
    gen = seeded(21708)
    model = Hinge(temperature=0.01)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    frac = {}

    def watch(step, out, x, y):
        frac[step] = collapsed_fraction(out.detach(), y)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=8, noise=0.5),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    late = _mean([frac[s] for s in range(180, 200)])
    ctx.check("under 5% of rows collapsed at step 0", frac[0] < 0.05)
    ctx.check("over 50% of rows' softmax exactly 1.0 on the target at the end", late > 0.5)
    ctx.check("finite", _finite(ls))


# -- nacreous cloud: a hand-written decoupled weight decay with its sign flipped -------------------


@scenario(
    family="nacreous_cloud_iridescence_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting the iridescence brightness of a nacreous "
    "(polar stratospheric) cloud (standardised) from 10 standardised readings (stratosphere "
    "temperature, sun elevation, ...), Adam, MSE, and a hand-written decoupled weight decay "
    "after each step, `p.mul_(1 - wd)` with wd 1e-2, whose sign was flipped "
    "(`p.mul_(1 + wd)`): the weights inflate by 1% every step and Adam's bounded steps cannot "
    "hold them; the loss falls to about 0.07 by step 60, then climbs slowly and steadily, "
    "past its starting value near step 180 and past 100 by step 300; finite.",
)
def h217_nacreous_cloud_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(21709)
    model = Stack(10, hidden=64)
    wd = 1e-2
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    norms = {}

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + wd)  # the bug: the recipe has 1 - wd
            norms[step] = float(
                torch.linalg.vector_norm(torch.cat([p.flatten() for p in model.parameters()]))
            )

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=9), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: ls[i])
    ctx.check("weight norm grew over 3x", norms[299] > 3 * norms[0])
    ctx.check("loss low point in the first half", low < 150)
    ctx.check("last 20 losses over 100x the low point", _mean(ls[-20:]) > 100 * ls[low])
    ctx.check(
        "the climb is steady (mean of steps 200-219 over that of 150-169, last 20 over both)",
        _mean(ls[150:170]) < _mean(ls[200:220]) < _mean(ls[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- lithophone: a z-loss whose sign was flipped --------------------------------------------------


@scenario(
    family="lithophone_stone_pitch_classifier",
    optimizer="NAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) naming the pitch class of a struck lithophone stone "
    "(8 classes) from 16 standardised readings (slab length, thickness, rock density, ...), "
    "NAdam, cross-entropy plus a z-loss on log-sum-exp of the logits whose sign was flipped "
    "(`ce - 1e-3 * z ** 2`): the loss rewards ever larger logits, and after the fit the "
    "head's largest logit grows from under 1 to over 50 in 200 steps, faster and faster; the "
    "logged loss drifts below zero; finite.",
)
def h217_lithophone_zloss_sign(ctx: Context) -> None:
    gen = seeded(21710)
    model = Stack(16, hidden=64, out=8)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    size = {}

    def loss_fn(out, y):
        z = torch.logsumexp(out, dim=-1)
        return F.cross_entropy(out, y) - 1e-3 * (z**2).mean()  # the bug: + 1e-3

    def watch(step, out, x, y):
        size[step] = float(out.detach().abs().max())

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 8, seed=10, noise=0.7),
        200,
        loss_fn,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("largest logit grew over 50x", max(size.values()) > 50 * size[0])
    ctx.check(
        "growth accelerates: largest logit of the last 20 steps over 2x that at step 150",
        max(size[s] for s in range(180, 200)) > 2 * size[150],
    )
    ctx.check("logged loss below zero at the end", _mean(ls[-10:]) < 0)
    ctx.check("finite", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class SawNet(nn.Module):
    """A residual MLP: inp, two pre-norm blocks (blocks.i.norm, .fc1, .fc2), head."""

    def __init__(self, d_in=8, dim=48):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "norm": nn.LayerNorm(dim),
                    "fc1": nn.Linear(dim, 2 * dim),
                    "fc2": nn.Linear(2 * dim, dim),
                }
            )
            for _ in range(2)
        )
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = h + b["fc2"](F.gelu(b["fc1"](b["norm"](h))))
        return self.head(h).squeeze(-1)


@scenario(
    family="musical_saw_bend_pitch_residual_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A pre-norm residual GELU MLP predicting the pitch of a bowed musical saw "
    "(standardised) from 8 standardised readings (bend radius, bow pressure, blade length, "
    "...), AdamW with weight decay, a linear warm-up over 30 steps then cosine decay, "
    "clipping at 1, Huber loss, noisy readings. Healthy.",
)
def h217_musical_saw_linear_warmup(ctx: Context) -> None:
    gen = seeded(21711)
    model = SawNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)

    def shape(s):
        if s < 30:
            return (s + 1) / 30
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 30) / 170))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    lrs = {}

    def before(step):
        lrs[step] = opt.param_groups[0]["lr"]

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=11, noise=0.2),
        200,
        F.huber_loss,
        before=before,
        sched=sched,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("rate rose over the warm-up", lrs[0] < 0.1 * lrs[29])
    ctx.check("loss fell to under half and is finite", _fell(ls, ratio=0.5))


@scenario(
    family="log_driving_jam_risk_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) rating the jam risk of a river log drive (5 levels) "
    "from 14 standardised readings (river flow, log count, bend sharpness, ...), SGD with "
    "Nesterov momentum, label smoothing 0.1, ReduceLROnPlateau, 10% noisy labels. Healthy.",
)
def h217_log_driving_plateau_smoothing(ctx: Context) -> None:
    gen = seeded(21712)
    model = Stack(14, hidden=64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=3e-2, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    batches = _kinds(gen, 64, 14, 5, seed=12, noise=0.8)

    def alter(step, x, y):
        flip = torch.rand(len(y), generator=gen) < 0.1
        return x, torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)

    _train(
        ctx,
        model,
        opt,
        batches,
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        alter=alter,
    )
    ls = ctx.losses
    tx, ty = next(_kinds(torch.Generator().manual_seed(712), 512, 14, 5, seed=12, noise=0.8))
    with torch.no_grad():
        acc = float((model(tx).argmax(-1) == ty).float().mean())
    ctx.check("loss fell and is finite", _fell(ls, ratio=0.6))
    ctx.check("held-out accuracy over 70%", acc > 0.7)


class Stick(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.norm(self.fc1(x)))
        return self.head(F.silu(self.fc2(h))).squeeze(-1)


@scenario(
    family="incense_stick_burn_time_fp16_regressor",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP with a LayerNorm predicting how long a stick of incense burns "
    "(standardised) from 10 standardised readings (stick diameter, resin share, draught, "
    "...), Adam, MSE, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over "
    "2 micro-batches. Healthy.",
)
def h217_incense_fp16_accumulation(ctx: Context) -> None:
    gen = seeded(21713)
    model = Stick()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=13, noise=0.1),
        150,
        F.mse_loss,
        scaler=scaler,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss fell to under half and is finite", _fell(ls, ratio=0.5))
    ctx.check("loss scale finite and at least 1 at the end", 1.0 <= ctx.scales[-1] < float("inf"))
