"""Held-out set 430 (``h430_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a shoeing-anvil ring-decay 10-layer ReLU MLP initialised with gain 3 for sqrt(2) (gradients
grow through depth), a cooper's barrel-stave bend two-group regressor whose trunk lr is typed 1e-9
for 1e-2 (a frozen trunk), a bodhran skin-tension BCE net fed labels encoded 1/2 for 0/1 (the
head's logits grow without bound), a saddle-tree flex regressor resumed from a checkpoint without
its optimizer state (a one-off loss spike it recovers from), a barometric-tide net that takes the
log of raw pressure-change readings with no offset (log 0 on a calm reading), a cheesemaker
curd-set time regressor fed one dairy's shard in seconds for minutes (one corrupted batch), a
lightning strike-distance classifier whose epoch-end batch sums the loss instead of averaging (one
gradient burst), a sextant sight-error regressor whose hand-written decoupled decay multiplies by
(1 + lr * wd) (a slow climb), a felt-hat brim-shrink ReLU regressor on RMSprop with lr typed
3e-2 for 3e-4 (ReLUs die) and a carillon clapper cosine classifier whose scale is typed 640 for 16
(softmax saturates).

Controls: a yodel register-break tagger (learnt absolute position embeddings, a small transformer
encoder, per-token softmax, dropout on the embeddings, AdamW under OneCycleLR), a snowplough
blade-load Huber regressor (RMSprop, ReduceLROnPlateau, accumulation, clipping) and a waterspout
funnel-width Gaussian-NLL net (SGD momentum, linear warm-up then cosine, noisy batches).
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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor (ctx is None)."""
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


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.cos(2 * x[:, 2]) - 0.2 > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


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


def _ref_run(model, opt, batches, steps, loss_fn, **kw):
    return _loop(None, model, opt, batches, steps, loss_fn, attach=False, **kw)


# -- faults ----------------------------------------------------------------------------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for lin in self.layers:
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


@scenario(
    "shoeing_anvil_ring_deep_relu_mlp",
    "SGD(momentum=0.9)",
    "exploding_gradients",
    where=("layers.0",),
    heldout=True,
    note="a 10-layer ReLU MLP for an anvil's ring decay, He init with the gain typed 3 for "
    "sqrt(2): the backward signal grows about (3/sqrt(2))^2/2 per layer, so dL/d(layers.0 "
    "output) is orders of magnitude above dL/d(layers.9 output); clipped at 1, MSE",
)
def h430_anvil_ring_exploding(ctx):
    gen = seeded(4301)
    model = _Deep(12, 48, 10, 3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ratios = []

    def after(step):
        if model.outs and model.outs[0].grad is not None:
            a = model.outs[0].grad.norm()
            b = model.outs[-1].grad.norm().clamp_min(1e-30)
            ratios.append(float(a / b))

    losses = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 4301), 80, F.mse_loss, after=after, clip=1.0
    )
    ref = _Deep(12, 48, 10, math.sqrt(2))
    x, y = next(_readings(torch.Generator().manual_seed(1), 64, 12, 4301))
    F.mse_loss(ref(x), y).backward()
    ref_ratio = float(ref.outs[0].grad.norm() / ref.outs[-1].grad.norm())
    ctx.check("dL/d(layers.0) over 50x dL/d(layers.9) at the start", ratios[0] > 50)
    ctx.check("and in median over the run", _median(ratios) > 50)
    ctx.check("under 5x with gain sqrt(2)", ref_ratio < 5)
    ctx.check("losses finite", _finite(losses))


class _Stave(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    "coopers_barrel_stave_bend_two_group_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("trunk.0", "trunk.2", "trunk"),
    heldout=True,
    note="a cooper's stave-bend regressor with two param groups, the trunk's lr typed 1e-9 for "
    "1e-2: the trunk receives gradients but its weights move under 1e-5 of their norm over the "
    "run while the head trains; MSE",
)
def h430_stave_frozen_trunk(ctx):
    gen = seeded(4302)
    model = _Stave(10)
    opt = torch.optim.Adagrad(
        [
            {"params": model.trunk.parameters(), "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    gn = []

    def after(step):
        g = model.trunk[0].weight.grad
        gn.append(0.0 if g is None else float(g.norm()))

    losses = _loop(ctx, model, opt, _readings(gen, 64, 10, 4302), 150, F.mse_loss, after=after)
    ctx.check("trunk.0 moves under 1e-5 of its norm", _rel_change(w0, model.trunk[0].weight) < 1e-5)
    ctx.check("while receiving gradients", min(gn) > 1e-4)
    ctx.check("the head moves over 10%", _rel_change(h0, model.head.weight) > 0.1)
    ctx.check("losses finite", _finite(losses))


@scenario(
    "bodhran_skin_tension_shifted_label_bce_net",
    "Adam",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="a bodhran skin 'too slack' BCE net whose labels come from a 1-based column (1/2 for "
    "0/1) straight into binary_cross_entropy_with_logits, which does not check the range: with "
    "target 2 the loss softplus(z) - 2z falls without bound as z grows, so the head's logits grow "
    "without bound and the loss goes negative",
)
def h430_bodhran_shifted_labels(ctx):
    gen = seeded(4303)
    model = _Net(10, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    peak = []

    def alter(step, x, y):
        return x, y + 1.0

    def after(step):
        with torch.no_grad():
            peak.append(float(model(probe).abs().max()))

    probe = next(_binary(torch.Generator().manual_seed(7), 128, 10, 4303))[0]
    with torch.no_grad():
        start = float(model(probe).abs().max())
    losses = _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 10, 4303),
        200,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", peak[-1] > 20 * start)
    ctx.check("still growing in the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the loss below -5", losses[-1] < -5)


class _Saddle(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    "saddle_tree_flex_resumed_regressor",
    "AdamW",
    "loss_spike",
    where=(),
    heldout=True,
    onset=120,
    note="a saddle-tree flex regressor resumed at step 120 from a checkpoint whose optimizer "
    "state was not loaded (opt.state cleared): AdamW restarts with empty moments at the full lr "
    "with no warm-up, its first steps move every weight by about lr, the loss jumps several-fold "
    "for a few steps on an ordinary gradient and the run recovers; MSE",
)
def h430_saddle_resume_spike(ctx):
    gen = seeded(4304)
    model = _Saddle(12)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)

    def before(step):
        if step == 120:
            opt.state.clear()

    losses = _loop(ctx, model, opt, _readings(gen, 64, 12, 4304), 220, F.mse_loss, before=before)
    pre = _mean(losses[100:120])
    post = max(losses[120:130])
    gn = ctx.grad_norms
    ctx.check("loss over 3x its pre-resume level just after step 120", post > 3 * pre)
    ctx.check("gradient at step 120 under 3x the median before", gn[120] < 3 * _median(gn[60:120]))
    ctx.check("recovers: last 20 under 1.5x the pre-resume level", _mean(losses[-20:]) < 1.5 * pre)
    ctx.check("losses finite", _finite(losses))


class _LogFeature(nn.Module):
    """log of the raw readings (no offset: the bug)."""

    def forward(self, x):
        return torch.log(x)


class _Tide(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(d_in, 32)
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        h = F.gelu(self.fc1(self.logfeat(x)))
        return self.head(F.gelu(self.fc2(h))).squeeze(-1)


def _pressure(gen, batch, d_in, seed):
    """Positive absolute pressure-change readings and a tide-height target."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.rand(batch, d_in, generator=gen) * 4 + 0.05
        y = torch.tanh(torch.log(x) @ w) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    "barometric_tide_log_pressure_net",
    "Adam",
    "nonfinite",
    where=("logfeat",),
    diverges=90,
    heldout=True,
    onset=90,
    note="a barometric-tide height net that feeds log(readings) with no offset or clamp: at step "
    "90 a calm station reports a pressure change of exactly 0, log 0 = -inf, the first layer "
    "turns it into inf/NaN and the loss is NaN at step 90; MSE",
)
def h430_tide_log_zero(ctx):
    gen = seeded(4305)
    model = _Tide(8)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[5, 3] = 0.0
        return x, y

    losses = _loop(ctx, model, opt, _pressure(gen, 64, 8, 4305), 150, F.mse_loss, alter=alter)
    ctx.check("loss finite before step 90", _finite(losses[:90]))
    ctx.check("loss non-finite at step 90", _first_bad(losses) == 90)
    ctx.check("the loss fell before", _fell(losses[:90]))


@scenario(
    "cheesemaker_curd_set_time_regressor",
    "SGD",
    "data_outlier",
    where=(),
    heldout=True,
    onset=110,
    note="a cheesemaker's curd-set time regressor whose batch at step 110 comes from a dairy's "
    "shard logged in seconds instead of minutes (targets 60x): the loss jumps over 100x and "
    "the gradient over 20x for that batch, clipping at 1 keeps the run, it recovers; MSE",
)
def h430_curd_units_shard(ctx):
    gen = seeded(4306)
    model = _Net(10, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)

    def alter(step, x, y):
        return (x, y * 60.0) if step == 110 else (x, y)

    losses = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4306), 200, F.mse_loss, alter=alter, clip=1.0
    )
    gn = ctx.grad_norms
    ctx.check("loss over 100x at step 110", losses[110] > 100 * _median(losses[90:110]))
    ctx.check("gradient over 20x at step 110", gn[110] > 20 * _median(gn[90:110]))
    ctx.check("recovers", _mean(losses[-20:]) < 2 * _mean(losses[90:110]))
    ctx.check("losses finite", _finite(losses))


@scenario(
    "lightning_strike_distance_nesterov_classifier",
    "SGD(momentum=0.9, nesterov=True)",
    "gradient_spike",
    where=(),
    heldout=True,
    onset=100,
    note="a lightning strike-distance band classifier whose epoch-end batch (step 100) goes "
    "through a 'weighted' path that sums the per-sample losses instead of averaging: the "
    "logged mean loss is ordinary but the gradient is 64x for that one step; clipped at 1, "
    "cross-entropy",
)
def h430_lightning_sum_reduction(ctx):
    gen = seeded(4307)
    model = _Net(12, hidden=48, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 64 if step == 100 else loss

    losses = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 4307, spread=1.6),
        180,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        clip=1.0,
    )
    gn = ctx.grad_norms
    ctx.check("gradient over 30x the median at step 100", gn[100] > 30 * _median(gn[80:100]))
    ctx.check("logged loss at step 100 under 2x", losses[100] < 2 * _median(losses[80:100]))
    ctx.check("the loss fell and is finite", _fell(losses))


@scenario(
    "sextant_sight_error_decay_bug_regressor",
    "Adamax",
    "loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a sextant sight-error regressor with a hand-written decoupled weight decay applied "
    "after each step as p *= (1 + lr * wd) instead of (1 - lr * wd): the weights grow a little "
    "each step and the loss, after falling, climbs slowly; Huber",
)
def h430_sextant_decay_sign(ctx):
    gen = seeded(4308)
    model = _Net(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    wd = 2.5
    n0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 4e-3 * wd)

    losses = _loop(ctx, model, opt, _readings(gen, 64, 10, 4308), 200, F.huber_loss, after=after)
    n1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    lo = min(losses)
    ctx.check("loss over the last 20 over 3x its lowest", _mean(losses[-20:]) > 3 * lo)
    ctx.check("climbing through the second half", _mean(losses[-20:]) > _mean(losses[100:120]))
    ctx.check("weight norm over 2x", n1 > 2 * n0)
    ctx.check("losses finite", _finite(losses))


def _felt_run(ctx, lr, attach):
    gen = seeded(4309)
    model = _Net(10, hidden=64)
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    probe = next(_readings(torch.Generator().manual_seed(3), 256, 10, 4309, scale=3.0))[0]
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.fc2(model.act1(model.fc1(probe)))))

    losses = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4309, scale=3.0),
        160,
        F.mse_loss,
        after=after,
        attach=attach,
    )
    return losses, dead


@scenario(
    "felt_hat_brim_shrink_relu_regressor",
    "RMSprop",
    "loss_of_plasticity",
    where=("fc2", "act2"),
    heldout=True,
    note="a felt-hat brim-shrink ReLU regressor on RMSprop with the lr typed 3e-2 for "
    "3e-4: the first large updates push most of fc2's units negative on every input, act2's "
    "ReLUs die and stay dead; MSE",
)
def h430_felt_hat_dead_relus(ctx):
    losses, dead = _felt_run(ctx, 3e-2, True)
    _, ref_dead = _felt_run(None, 3e-4, False)
    ctx.check("over 45% of act2's units dead over the last 50 steps", min(dead[-50:]) > 0.45)
    ctx.check("under 20% at lr 3e-4", max(ref_dead[-50:]) < 0.2)
    ctx.check("losses finite", _finite(losses))


class _Cosine(nn.Module):
    def __init__(self, d_in, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 32)
        self.head = nn.Linear(32, classes, bias=False)
        self.scale = scale

    def forward(self, x):
        h = F.normalize(self.fc2(F.relu(self.fc1(x))), dim=-1)
        return self.scale * F.linear(h, F.normalize(self.head.weight, dim=-1))


@scenario(
    "carillon_clapper_cosine_classifier",
    "SGD(momentum=0.9)",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="a carillon clapper-wear cosine classifier whose logit scale s is typed 640 for 16: "
    "the cosine logits span +-640, the float32 softmax rounds the target's probability to "
    "exactly 1.0 on most rows and those rows stop giving any gradient; cross-entropy",
)
def h430_carillon_cosine_scale(ctx):
    gen = seeded(4310)
    model = _Cosine(12, 6, 640.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(5), 256, 12, 6, 4310))
    frac, ref = [], []

    def after(step):
        with torch.no_grad():
            logits = model(probe_x)
            frac.append(collapsed_fraction(logits, probe_y))
            ref.append(collapsed_fraction(logits * 16.0 / 640.0, probe_y))

    losses = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 4310),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over half the rows at p=1.0 over the last 30 steps", min(frac[-30:]) > 0.5)
    ctx.check("under 5% at s=16 on the same cosines", max(ref[-30:]) < 0.05)
    ctx.check("losses finite", _finite(losses))


# -- healthy controls ------------------------------------------------------------------------------


def _yodel_batches(gen, batch, length, vocab):
    """Pitch tokens; tag each as a break down, a hold or a break up against the previous one."""
    while True:
        steps = torch.randint(-3, 4, (batch, length), generator=gen)
        x = (torch.randint(0, vocab, (batch, 1), generator=gen) + steps.cumsum(1)) % vocab
        prev = torch.cat([x[:, :1], x[:, :-1]], 1)
        y = torch.sign(x - prev) + 1
        yield x, y.reshape(-1)


class _EncoderLayer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _Tagger(nn.Module):
    """Learnt absolute position embeddings, a small encoder, a per-token softmax head."""

    def __init__(self, vocab, context, dim=32, heads=2, layers=2, tags=3):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.emb_drop = nn.Dropout(0.1)
        self.layers = nn.ModuleList(_EncoderLayer(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tags)

    def forward(self, idx):
        x = self.emb_drop(self.tok(idx) + self.pos(torch.arange(idx.shape[1])))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln_f(x)).reshape(-1, self.head.out_features)


@scenario(
    "yodel_register_break_learnt_pos_tagger",
    "AdamW",
    "healthy",
    where=(),
    heldout=True,
    note="control: a yodel register-break tagger (each pitch token tagged down/hold/up against "
    "the previous one): learnt absolute position embeddings, dropout 0.1 on the embeddings, two "
    "pre-LN encoder layers, per-token softmax, AdamW with weight decay under OneCycleLR, label "
    "smoothing 0.05, clipping at 1",
)
def h430_yodel_tagger_control(ctx):
    gen = seeded(4311)
    model = _Tagger(24, 20)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    steps = 300
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.05)

    losses = _loop(
        ctx,
        model,
        opt,
        _yodel_batches(gen, 32, 20, 24),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    model.eval()
    x, y = next(_yodel_batches(torch.Generator().manual_seed(9), 128, 20, 24))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("the loss fell and is finite", _fell(losses, ratio=0.6))
    ctx.check("tags over 80% right on a fresh batch", acc > 0.8)


class _Blade(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x))))).squeeze(-1)


@scenario(
    "snowplough_blade_load_huber_regressor",
    "RMSprop",
    "healthy",
    where=(),
    heldout=True,
    note="control: a snowplough blade-load SiLU regressor, Huber loss, RMSprop, accumulation over "
    "2, ReduceLROnPlateau on a held-out batch, clipping at 1, noisy targets",
)
def h430_snowplough_control(ctx):
    gen = seeded(4312)
    model = _Blade(10)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    hx, hy = next(_readings(torch.Generator().manual_seed(11), 256, 10, 4312, noise=0.1))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(hx), hy))

    losses = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 4312, noise=0.1),
        160,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("the loss fell and is finite", _fell(losses, ratio=0.5))


class _Funnel(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 48)
        self.mean = nn.Linear(48, 1)
        self.log_var = nn.Linear(48, 1)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h).clamp(-8, 8)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    "waterspout_funnel_width_gaussian_nll_net",
    "SGD(momentum=0.9)",
    "healthy",
    where=(),
    heldout=True,
    note="control: a waterspout funnel-width net predicting a mean and a clamped log-variance, "
    "Gaussian NLL, SGD momentum with a linear warm-up over 20 steps then cosine decay, noisy "
    "batches (noise 0.2), clipping at 5",
)
def h430_waterspout_control(ctx):
    gen = seeded(4313)
    model = _Funnel(10)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    steps = 200

    def lam(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    losses = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 4313, noise=0.2),
        steps,
        _gauss_nll,
        clip=5.0,
        sched=sched,
    )
    ctx.check(
        "the loss fell and is finite",
        _finite(losses) and _mean(losses[-10:]) < _mean(losses[:10]) - 0.3,
    )
