"""Held-out set 403 (``h403_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a furnace-glass gather-viscosity Gaussian net whose std module takes sqrt of the raw head
after its clamp was dropped (sqrt of a negative), a mosaic-tesserae cut-angle regressor fed one
cutter's shard in raw micrometre units (one corrupted batch), a quarry-saw blade-wear classifier
whose trunk param group has lr typed 1e-9 for 1e-2 (a frozen layer), a tabla bol-stroke classifier
trained with nll_loss on raw logits (the head's logits grow without bound), a fjord katabatic-gust
classifier whose temperature is typed 1e-3 for 1.0 (softmax saturates), a raku crackle regressor
whose hand-written decoupled weight decay has its sign flipped (a slow climb), a sculling
oar-catch BCE tagger whose accumulation bug skips the division for one resumed step (one
gradient burst), a quoits ring regressor whose StepLR gamma is typed 10 for 0.1 (the rate
passes 2/sharpness), a shinty caman-swing ReLU regressor with Adam lr typed 1e-1 for 1e-3 (units
die) and a cricket-bat knock-in deep tanh MLP initialised with gain 3 (gradients grow through
depth).

Controls: a semaphore flag-signal bidirectional LSTM tagger (gates written out, padding masked
out of the loss, clipping, Adam), a hang-drum tone-field Conv1d classifier (SGD momentum under
OneCycleLR, label smoothing, clipping) and a sand-yacht mast-rake regressor (fp16 autocast with a
GradScaler, AdamW with a no-decay group, ReduceLROnPlateau, Huber loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs):
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
    alter=None,
    backprop=None,
    inspect=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """Training loop: ``alter(step, x, y)`` changes a batch, ``backprop(step, loss)`` gives the
    loss backpropagated, ``inspect(step)`` sees gradients before clipping, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it."""
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


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.1 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _MLP(nn.Module):
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
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
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


# -- nonfinite: sqrt of the raw variance head ------------------------------------------------------


class _StdRoot(nn.Module):
    """std = sqrt(v). The clamp (v.clamp_min(1e-6)) was removed when the head was 'cleaned up'."""

    def forward(self, v):
        return torch.sqrt(v)


class _GatherNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        self.std_root = _StdRoot()
        nn.init.constant_(self.var_head.bias, 2.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        self.last_var = self.var_head(h).squeeze(-1)
        return self.mean_head(h).squeeze(-1), self.std_root(self.last_var)


def _gaussian_nll(out, y):
    mu, std = out
    return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()


@scenario(
    family="furnace_glass_gather_sqrt_std_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("std_root",),
    diverges=33,
    heldout=True,
    note="Glass-furnace gather-viscosity regressor with a Gaussian NLL; the std module computes "
    "sqrt(v) of the raw variance head after its clamp_min(1e-6) was removed. The readings are "
    "precise (noise 0.05), so the variance head is driven towards 0, a row crosses below 0 and "
    "sqrt of a negative gives NaN: the loss is NaN from that step. NAdam.",
)
def h403_furnace_glass_gather_sqrt_std(ctx):
    gen = seeded(4031)
    model = _GatherNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def after(step):
        seen[step] = float(model.last_var.detach().min())

    n = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 4031, noise=0.05), 200, _gaussian_nll, after=after
    )
    bad = _first_bad(ctx.losses)
    ctx.check("loss is NaN at some step", bad is not None)
    ctx.check(
        "the raw variance is negative at the NaN step", bad is not None and seen.get(bad, 1.0) < 0
    )
    ctx.check("finite for the first 10 steps", _finite(ctx.losses[:10]))
    ctx.check("run stopped at the NaN", n == (bad or -2) + 1)


# -- data_outlier: one cutter's shard in micrometres -----------------------------------------------


@scenario(
    family="mosaic_tesserae_cut_angle_silu_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Mosaic tesserae cut-angle regressor; at step 120 the loader reads one cutter's shard "
    "whose gauge readings were logged in micrometres instead of millimetres (features x1000 for "
    "three columns). Loss and gradient jump over 20x for that batch; clipping keeps the step "
    "bounded and the run recovers. SGD momentum, clipping at 1.",
)
def h403_mosaic_tesserae_cut_angle(ctx):
    gen = seeded(4032)
    model = _MLP(10, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :3] = x[:, :3] * 1000.0
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 4032), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 120 over 20x the median before", ls[120] > 20 * _median(ls[100:120]))
    ctx.check(
        "gradient at step 120 over 20x the median before", gs[120] > 20 * _median(gs[100:120])
    )
    ctx.check(
        "recovers: last 20 steps under 2x the 20 before the shard",
        _mean(ls[-20:]) < 2 * _mean(ls[100:120]),
    )
    ctx.check("finite", _finite(ls))


# -- update_ratio_out_of_range: trunk group lr typed 1e-9 ------------------------------------------


@scenario(
    family="quarry_saw_blade_wear_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Quarry wire-saw blade-wear classifier with two param groups; the trunk group's lr is "
    "typed 1e-9 for 1e-2 in the config, so fc1 moves under 1e-5 of its norm over the run while "
    "it receives ordinary gradients; fc2 and the head (lr 1e-2) train and the loss falls a "
    "little. Adagrad.",
)
def h403_quarry_saw_blade_wear(ctx):
    gen = seeded(4033)
    model = _MLP(12, 64, out=5)
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

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 4033, spread=1.6),
        200,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )
    r1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    rh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", r1 < 1e-5)
    ctx.check("fc1 receives gradients (median norm over 1e-3)", _median(g1) > 1e-3)
    ctx.check("head moved over 5% of its norm", rh > 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- output_logit_divergence: nll_loss on raw logits -----------------------------------------------


class _StrokeNet(nn.Module):
    def __init__(self, d_in=16, hidden=48, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="tabla_bol_stroke_raw_nll_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tabla bol-stroke classifier; the log_softmax was moved into the inference wrapper and "
    "training kept F.nll_loss on the raw head output, so the loss is just -logit[target], "
    "unbounded below: the head's logits grow without bound (max |logit| over 20x its start) and "
    "the 'loss' goes below -10. AdamW.",
)
def h403_tabla_bol_stroke(ctx):
    gen = seeded(4034)
    model = _StrokeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    peak = []

    def after(step):
        with torch.no_grad():
            peak.append(float(model(probe).abs().max()))

    probe = next(_grades(torch.Generator().manual_seed(9), 128, 16, 6, 4034))[0]
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 4034),
        200,
        F.nll_loss,
        classifier=True,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", peak[-1] > 20 * peak[0])
    ctx.check("still growing over the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the 'loss' below -10", ctx.losses[-1] < -10)


# -- softmax_collapse: temperature typed 1e-3 ------------------------------------------------------


class _GustNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=4, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def logits(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def forward(self, x):
        return self.logits(x) / self.temperature


@scenario(
    family="fjord_katabatic_gust_temperature_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Fjord katabatic-gust class classifier with a temperature-scaled softmax; the config's "
    "temperature is typed 1e-3 for 1.0, so the logits are multiplied by 1000 and the softmax "
    "saturates: over half the rows' target probability is exactly 1.0 in float32 over the last "
    "30 steps, against under 5% at temperature 1 on the same logits. RAdam.",
)
def h403_fjord_katabatic_gust(ctx):
    gen = seeded(4035)
    model = _GustNet(temperature=1e-3)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    bad, good = [], []

    def after(step):
        if step >= 170:
            with torch.no_grad():
                raw = model.logits(last["x"])
            bad.append(collapsed_fraction(raw / model.temperature, last["y"]))
            good.append(collapsed_fraction(raw, last["y"]))

    last = {}

    def alter(step, x, y):
        last["x"], last["y"] = x, y
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 4, 4035, spread=1.4),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        after=after,
    )
    ctx.check("over half the target probabilities exactly 1.0 (last 30 steps)", _mean(bad) > 0.5)
    ctx.check("under 5% at temperature 1 on the same logits", _mean(good) < 0.05)


# -- loss_divergence: decoupled weight decay with its sign flipped ---------------------------------


@scenario(
    family="pottery_raku_crackle_decay_sign_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Raku-firing crackle-density regressor; a hand-written decoupled weight decay applies "
    "p *= (1 + lr * wd) for (1 - lr * wd), so the weights grow steadily (over 2x) and the loss "
    "climbs slowly to over 3x its lowest 20-step mean with no 2x jump between steps, finite. "
    "Adamax.",
)
def h403_pottery_raku_crackle(ctx):
    gen = seeded(4036)
    model = _MLP(8, 48, act=nn.Tanh)
    lr, wd = 2e-3, 4.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    n0 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1 + lr * wd)

    _loop(ctx, model, opt, _readings(gen, 64, 8, 4036), 260, F.mse_loss, after=after)
    ls = ctx.losses
    n1 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    lows = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 20))
    ctx.check("weights over 2x their start", n1 > 2 * n0)
    ctx.check("last 20 steps over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * lows)
    ctx.check(
        "no step over 2x the mean of the 10 before it (after step 40)",
        all(ls[i] < 2 * _mean(ls[i - 10 : i]) for i in range(40, len(ls))),
    )
    ctx.check("finite", _finite(ls))


# -- gradient_spike: one resumed step backpropagates the summed loss -------------------------------


def _catches(gen, batch, d_in, tags, seed):
    """Oar-catch sensor windows and multilabel fault tags by hidden rules, 5% of tags noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, tags, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.3 * torch.sin(2 * x[:, :tags]) > 0.1).float()
        noisy = torch.rand(batch, tags, generator=gen) < 0.05
        yield x, torch.where(noisy, 1 - y, y)


@scenario(
    family="sculling_oar_catch_accum_bce_tagger",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="Sculling oar-catch fault tagger (8 BCE tags) with accumulation over 2; the run resumed "
    "at step 140 builds its first step's loss with reduction='sum' (the resume path's loss "
    "helper) while the logged loss stays the mean, so that one clean batch backpropagates 256x "
    "the gradient: over 30x the median norm with an ordinary logged loss. Clipped at 1, "
    "recovers. SGD Nesterov.",
)
def h403_sculling_oar_catch(ctx):
    gen = seeded(4037)
    model = _MLP(12, 48, out=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        if step == 140:
            return loss * (32 * 8)  # reduction='sum' over 32 rows x 8 tags, not divided
        return loss / 2

    _loop(
        ctx,
        model,
        opt,
        _catches(gen, 32, 12, 8, 4037),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
        accumulate=2,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 140 over 30x the median before", gs[140] > 30 * _median(gs[110:140])
    )
    ctx.check(
        "logged loss at step 140 ordinary (under 1.5x the median before)",
        ls[140] < 1.5 * _median(ls[110:140]),
    )
    ctx.check(
        "recovers: last 20 steps under 1.5x the 20 before",
        _mean(ls[-20:]) < 1.5 * _mean(ls[120:140]),
    )
    ctx.check("finite", _finite(ls))


# -- sharpness_above_limit: StepLR gamma typed 10 for 0.1 ------------------------------------------


@scenario(
    family="quoits_pin_ring_steplr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="Quoits ring-distance tanh regressor under plain SGD with StepLR(step_size=60); gamma "
    "is typed 10 for 0.1, so at step 60 the rate goes from 0.05 to 0.5 and then 5: lr x top "
    "Hessian eigenvalue (power iteration) is under 2 at step 0 and past 2 after the step-up, "
    "and the loss blows up.",
)
def h403_quoits_pin_ring(ctx):
    gen = seeded(4038)
    model = _MLP(8, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 8, 4038))
    lam = {}

    def inspect(step):
        if step in (0, 59, 60, 119, 120):
            lam[step] = (opt.param_groups[0]["lr"], _sharpness(model, F.mse_loss, *probe))

    _loop(
        ctx, model, opt, _readings(gen, 64, 8, 4038), 200, F.mse_loss, inspect=inspect, sched=sched
    )
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 0", lam[0][0] * lam[0][1] < 2)
    ctx.check(
        "lr x sharpness past 2 after the step-up",
        any(lr * s > 2 for k, (lr, s) in lam.items() if k >= 60),
    )
    ctx.check("loss falls before the step-up", _mean(ls[50:60]) < 0.8 * _mean(ls[:10]))
    ctx.check(
        "loss blows up (over 10x its step-59 value, or non-finite)",
        not _finite(ls) or max(ls[60:]) > 10 * ls[59],
    )


# -- loss_of_plasticity: Adam lr typed 1e-1 for 1e-3 -----------------------------------------------


def _dead(model, x):
    with torch.no_grad():
        h1 = model.act1(model.fc1(x))
        h2 = model.act2(model.fc2(h1))
    return float((h1 <= 0).all(0).float().mean()), float((h2 <= 0).all(0).float().mean())


@scenario(
    family="shinty_caman_swing_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Shinty caman swing-speed ReLU regressor; Adam's lr is typed 1e-1 for 1e-3, the first "
    "large updates push most of act2's units negative on every input and they never recover: "
    "over 60% of act2's units dead over the last 50 steps against under 20% for the same run "
    "at 1e-3.",
)
def h403_shinty_caman_swing(ctx):
    gen = seeded(4039)
    probe = next(_readings(torch.Generator().manual_seed(6), 256, 10, 4039))[0]
    ref = _MLP(10, 64)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    ref_gen = torch.Generator().manual_seed(4039)
    ref_data = _readings(ref_gen, 64, 10, 4039)
    for _ in range(200):
        x, y = next(ref_data)
        ref_opt.zero_grad()
        F.mse_loss(ref(x), y).backward()
        ref_opt.step()
    ref_dead = _dead(ref, probe)[1]
    torch.manual_seed(4039)
    model = _MLP(10, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-1)
    dead = []

    def after(step):
        if step >= 150:
            dead.append(_dead(model, probe)[1])

    _loop(ctx, model, opt, _readings(gen, 64, 10, 4039), 200, F.mse_loss, after=after)
    ctx.check("over 60% of act2's units dead over the last 50 steps", _mean(dead) > 0.6)
    ctx.check("under 20% dead at lr 1e-3", ref_dead < 0.2)
    ctx.check("finite", _finite(ctx.losses))


# -- exploding_gradients: deep tanh MLP with init gain 3 -------------------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=32, depth=14, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for layer in self.layers:
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = torch.tanh(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    a, b = model.outs[0].grad, model.outs[-1].grad
    return float(a.norm() / b.norm().clamp_min(1e-12))


@scenario(
    family="cricket_bat_knock_in_deep_tanh_mlp",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Cricket-bat knock-in rebound regressor, a 14-layer tanh MLP whose init std is typed "
    "3.0 / sqrt(fan_in) for 1.0 / sqrt(fan_in): the backward pass grows through depth, "
    "dL/d(layers.0 output) over 20x dL/d(layers.13 output) at the start and a median over 10x "
    "through the run, against under 5x at gain 1.0. Clipped at 1, RMSprop.",
)
def h403_cricket_bat_knock_in(ctx):
    gen = seeded(4040)
    x0, y0 = next(_readings(torch.Generator().manual_seed(7), 128, 8, 4040))
    ref = _DeepTanh(gain=1.0)
    F.mse_loss(ref(x0), y0).backward()
    ref_ratio = _depth_ratio(ref)
    torch.manual_seed(4040)
    model = _DeepTanh(gain=3.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    ratios = []

    def inspect(step):
        ratios.append(_depth_ratio(model))

    _loop(ctx, model, opt, _readings(gen, 64, 8, 4040), 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("depth ratio over 20x at the start", ratios[0] > 20)
    ctx.check("median depth ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at gain 1.0", ref_ratio < 5)
    ctx.check("finite", _finite(ctx.losses))


# -- control: hand-written bidirectional LSTM tagger, padding masked ------------------------------


class _LSTMDir(nn.Module):
    """One direction of an LSTM with its gates written out."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(d_in, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden, bias=False)
        with torch.no_grad():
            self.ih.bias[hidden : 2 * hidden].fill_(1.0)  # forget-gate bias 1

    def forward(self, x, mask, reverse=False):
        b, t, _ = x.shape
        h = x.new_zeros(b, self.hidden)
        c = x.new_zeros(b, self.hidden)
        pre = self.ih(x)
        outs = [None] * t
        order = range(t - 1, -1, -1) if reverse else range(t)
        for s in order:
            z = pre[:, s] + self.hh(h)
            i, f, g, o = z.chunk(4, dim=-1)
            i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
            c_new = f * c + i * torch.tanh(g)
            h_new = o * torch.tanh(c_new)
            m = mask[:, s, None]
            c = torch.where(m, c_new, c)  # padding leaves the state alone
            h = torch.where(m, h_new, h)
            outs[s] = h_new * m
        return torch.stack(outs, 1)


class _BiTagger(nn.Module):
    def __init__(self, vocab=20, dim=16, hidden=24, tags=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim, padding_idx=0)
        self.fwd = _LSTMDir(dim, hidden)
        self.bwd = _LSTMDir(dim, hidden)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, tokens):
        mask = tokens != 0
        e = self.emb(tokens)
        h = torch.cat([self.fwd(e, mask), self.bwd(e, mask, reverse=True)], -1)
        return self.head(h)


def _signals(gen, batch, length=14, vocab=20):
    """Flag-signal token runs of length 5..14, padded with 0; each token's tag compares its
    neighbours (previous < next: 0, previous > next: 1, equal or at an edge: 2), -100 on pads."""
    while True:
        lens = torch.randint(5, length + 1, (batch,), generator=gen)
        tok = torch.randint(1, vocab, (batch, length), generator=gen)
        pos = torch.arange(length)[None]
        mask = pos < lens[:, None]
        tok = torch.where(mask, tok, 0)
        prev = torch.cat([torch.zeros(batch, 1, dtype=torch.long), tok[:, :-1]], 1)
        nxt = torch.cat([tok[:, 1:], torch.zeros(batch, 1, dtype=torch.long)], 1)
        edge = (pos == 0) | (pos == lens[:, None] - 1)
        tag = torch.where(prev < nxt, 0, torch.where(prev > nxt, 1, 2))
        tag = torch.where(edge, 2, tag)
        yield tok, torch.where(mask, tag, -100)


def _tag_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)


@scenario(
    family="semaphore_flag_signal_bilstm_tagger",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Semaphore flag-signal tagger: a hand-written bidirectional LSTM (gates written out, "
    "forward and backward passes concatenated) over generated token runs of varying length, "
    "each token tagged by comparing its two neighbours; padding is masked out of the loss "
    "(ignore_index) and out of the recurrences, clipping at 1, Adam. Control.",
)
def h403_semaphore_flag_signal(ctx):
    gen = seeded(4041)
    model = _BiTagger()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    _loop(ctx, model, opt, _signals(gen, 32), 150, _tag_loss, clip=1.0)
    x, y = next(_signals(torch.Generator().manual_seed(8), 256))
    with torch.no_grad():
        pred = model(x).argmax(-1)
    keep = y != -100
    acc = float((pred[keep] == y[keep]).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("held-out token accuracy over 0.8", acc > 0.8)
    ctx.check("finite", _finite(ctx.losses))


# -- control: Conv1d classifier, SGD momentum under OneCycleLR ------------------------------------


def _tones(gen, batch, classes, seed, length=48):
    """Tone-field strikes: each class a decaying partial pair at its own frequencies, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, 2, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 2, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.03 * torch.randn(batch, 2, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40)
        yield x + 0.3 * torch.randn(batch, 2, length, generator=gen), y


class _ToneNet(nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 24, 5, padding=2)
        self.head = nn.Linear(24, classes)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x)).mean(-1)
        return self.head(x)


@scenario(
    family="hang_drum_tone_field_conv1d_classifier",
    optimizer="SGD(momentum=0.9)",
    cause="healthy",
    heldout=True,
    note="Hang-drum tone-field strike classifier (ReLU Conv1d): SGD momentum with weight decay "
    "under OneCycleLR (max_lr 0.3), label smoothing 0.1, clipping at 1. Control.",
)
def h403_hang_drum_tone_field(ctx):
    gen = seeded(4042)
    model = _ToneNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _tones(gen, 48, 6, 4042),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))


# -- control: fp16 autocast with a GradScaler, Huber regressor ------------------------------------


@scenario(
    family="sand_yacht_mast_rake_fp16_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Sand-yacht mast-rake regressor (SiLU): fp16 autocast with a GradScaler, AdamW with a "
    "no-decay bias group, accumulation over 2, ReduceLROnPlateau on a held-out batch, clipping "
    "at 1, Huber loss. Control.",
)
def h403_sand_yacht_mast_rake(ctx):
    gen = seeded(4043)
    model = _MLP(10, 48, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    held = next(_readings(torch.Generator().manual_seed(10), 256, 10, 4043))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1], delta=0.5))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 4043),
        150,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("held-out loss under 0.05", plateau() < 0.05)
