"""Held-out set 592 (``h592_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: bodhran tipper-stroke classifier whose logit scale is typed 500 for 5.00
(softmax_collapse, Adamax); hurling sliotar-strike regressor whose resumed step multiplies the
loss by a stale fp16 loss scale of 1024 (gradient_spike, SGD momentum, clipping); eel fyke-net
catch Poisson-NLL net whose in-model log(catch / effort) feature meets a zero-catch night
(nonfinite, RAdam); trampoline bed-spring Huber regressor fed one shard in millimetres
(data_outlier, NAdam, clipping); kayak roll-recovery regressor with SGD lr typed 3.0 for 0.03
(sharpness_above_limit, plain SGD); mbira tine-buzz ReLU RNN whose recurrent init gain is 1.7
(exploding_gradients, SGD Nesterov); cooperage barrel-toast regressor whose fc1 group lr is typed
1e-10 (update_ratio_out_of_range, AdamW, param groups); sandbar migration regressor whose gauge
datum drifts in the label pipeline (loss_divergence, RMSprop); timber-frame peg-draw regressor
whose fc2 bias is initialised at -2 (a gate-bias copy-paste) (loss_of_plasticity, ASGD);
pole-vault plant BCE tagger whose label smoothing has its sign flipped (targets outside [0, 1])
(output_logit_divergence, Adam).
Controls: glacier moulin discharge classifier with 1-8 micro-batches per step, loss averaged
over samples (alarming-looking, AdamW, warm-up + cosine, label smoothing, clipping); bobbin-lace
pricking-motif capsule network (primary capsules, routing-by-agreement, generated images, Adam,
OneCycleLR); geyser eruption-interval Gaussian-NLL net (Adagrad, ReduceLROnPlateau, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.7):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, k, seed, spread=1.5, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = spread * torch.randn(k, d_in, generator=g)
    while True:
        y = torch.randint(0, k, (batch,), generator=gen)
        yield protos[y] + noise * torch.randn(batch, d_in, generator=gen), y


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
    clip=None,
    sched=None,
    plateau=None,
    after=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
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
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, loss, x, y) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(losses[-1])
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step, out.detach(), y)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


# -- faults ---------------------------------------------------------------------------------------


class _ScaledClassifier(nn.Module):
    def __init__(self, d_in, k, logit_scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(48, k)
        self.logit_scale = logit_scale

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) * self.logit_scale


@scenario(
    "bodhran_tipper_stroke_logit_scale_typo_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="the config's logit_scale is typed 500 for 5.00 (a dropped decimal point), so the head's "
    "logits are multiplied by 500: the float32 softmax rounds most rows' target probability "
    "to exactly 1.0 and those rows stop giving gradient",
)
def h592_bodhran_tipper_stroke_logit_scale_typo_classifier(ctx):
    gen = seeded(5921)
    model = _ScaledClassifier(12, 6, logit_scale=500.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def after(step, out, y):
        seen["collapsed"] = collapsed_fraction(out, y)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 6, 5921),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over 40% of rows' target probability is exactly 1.0", seen["collapsed"] > 0.4)
    ctx.check("losses finite", _finite(losses))


@scenario(
    "hurling_sliotar_strike_resumed_scale_regressor",
    "SGD momentum",
    "gradient_spike",
    heldout=True,
    onset=120,
    note="the run resumes at step 120 from a checkpoint written by an fp16 run; the resume code "
    "restores that run's loss scale (1024) into the loss multiplier for one step before the "
    "fp32 path resets it, so that step's gradient is ~1000x; the logged loss is the ordinary "
    "one, and clipping at 5 keeps the update in check",
)
def h592_hurling_sliotar_strike_resumed_scale_regressor(ctx):
    gen = seeded(5922)
    model = _Net(10, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

    def backprop(step, loss, x, y):
        return loss * (1024.0 if step == 120 else 1.0)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 5922), 220, F.mse_loss, backprop=backprop, clip=5.0
    )
    ctx.check(
        "gradient at step 120 over 50x the median before", norms[120] > 50 * _median(norms[100:120])
    )
    ctx.check(
        "logged loss at step 120 ordinary (under 3x)", losses[120] < 3 * _mean(losses[110:120])
    )
    ctx.check("loss fell and stayed finite", _fell(losses))


class _LogRatio(nn.Module):
    """log(catch / effort) for the first column pair: the feature the fishers asked for."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1] / x[:, 1:2]), x[:, 2:]], 1)


class _FykeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logratio = _LogRatio()
        self.fc1 = nn.Linear(6, 32)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.logratio(x)))).squeeze(-1)


def _fyke_batches(gen, batch=48):
    w = torch.tensor([0.4, -0.3, 0.2, 0.1, -0.2, 0.3])
    while True:
        catch = 1.0 + 20 * torch.rand(batch, 1, generator=gen)
        effort = 1.0 + 5 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 5, generator=gen)
        feats = torch.cat([torch.log(catch / effort), rest], 1)
        rate = torch.exp(0.5 + feats @ w)
        y = torch.poisson(rate, generator=gen)
        yield torch.cat([catch, effort, rest], 1), y


@scenario(
    "eel_fyke_net_catch_log_ratio_poisson_net",
    "RAdam",
    "nonfinite",
    where=("logratio",),
    diverges=90,
    heldout=True,
    onset=90,
    note="the model computes log(catch / effort) in its first module with no clamp or epsilon; the "
    "batch at step 90 holds a zero-catch night from a new river, log(0) = -inf flows into fc1 "
    "and the Poisson NLL is NaN",
)
def h592_eel_fyke_net_catch_log_ratio_poisson_net(ctx):
    gen = seeded(5923)
    model = _FykeNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    seen = {}
    model.logratio.register_forward_hook(
        lambda m, i, o: seen.__setitem__("inf", bool(torch.isinf(o).any()))
    )
    infs = []

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:5, 0] = 0.0
        return x, y

    def after(step, out, y):
        infs.append(seen["inf"])

    def poisson(out, y):
        return F.poisson_nll_loss(out, y, log_input=True)

    losses, _ = _loop(ctx, model, opt, _fyke_batches(gen), 150, poisson, alter=alter, after=after)
    ctx.check("loss finite before step 90", _finite(losses[:90]))
    ctx.check("loss non-finite at step 90", len(losses) == 91 and not math.isfinite(losses[90]))
    ctx.check("logratio output infinite at step 90, never before", infs[-1] and not any(infs[:-1]))


@scenario(
    "trampoline_bed_spring_rebound_huber_regressor",
    "NAdam",
    "data_outlier",
    heldout=True,
    onset=130,
    note="one shard of spring-extension readings was exported in millimetres instead of metres "
    "(x1000); its batch lands at step 130, the Huber loss and the gradient jump, clipping at "
    "1.0 holds the update and the run recovers",
)
def h592_trampoline_bed_spring_rebound_huber_regressor(ctx):
    gen = seeded(5924)
    model = _Net(8, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == 130 else (x, y)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 5924),
        220,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    ctx.check(
        "loss at step 130 over 20x the 10 steps before", losses[130] > 20 * _mean(losses[120:130])
    )
    ctx.check(
        "gradient at step 130 over 10x the median before", norms[130] > 10 * _median(norms[100:130])
    )
    ctx.check(
        "recovered: last 20 steps under 2x the pre-onset level",
        _mean(losses[-20:]) < 2 * _mean(losses[110:130]),
    )
    ctx.check("losses finite", _finite(losses))


def _top_eig(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    "kayak_roll_recovery_lr_typo_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=6,
    note="the launch script passes --lr 3.0 where 0.03 was meant; a 60-step linear warm-up takes "
    "lr x top Hessian eigenvalue (measured at step 0) past 2 at step 6; the MSE wobbles, "
    "then blows up as the warm-up keeps climbing",
)
def h592_kayak_roll_recovery_lr_typo_regressor(ctx):
    gen = seeded(5925)
    model = _Net(10, hidden=32)
    lr = 3.0
    batches = _readings(gen, 64, 10, 5925)
    x0, y0 = next(batches)
    sharp = _top_eig(model, F.mse_loss, x0, y0)
    opt = torch.optim.SGD(model.parameters(), lr=lr / 60)

    def before(step):
        for group in opt.param_groups:
            group["lr"] = lr * min(step + 1, 60) / 60

    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss, before=before)
    ctx.check("lr at step 6 x initial sharpness over 2", lr * 7 / 60 * sharp > 2.0)
    ctx.check("lr at step 5 x initial sharpness under 2", lr * 6 / 60 * sharp < 2.0)
    ctx.check("loss fell during the early warm-up", _mean(losses[5:10]) < losses[0])
    ctx.check(
        "loss blew up (over 100x its start, or non-finite)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )


class _TineRNN(nn.Module):
    def __init__(self, gain):
        super().__init__()
        self.cell = nn.RNNCell(4, 32, nonlinearity="relu")
        self.head = nn.Linear(32, 3)
        nn.init.orthogonal_(self.cell.weight_hh, gain=gain)

    def forward(self, x):
        h = torch.zeros(x.shape[0], 32)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            self.states.append(h)
        return self.head(h)


def _tine_batches(gen, batch=32, t=24):
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        time = torch.linspace(0, 1, t)
        decay = torch.tensor([1.0, 3.0, 8.0])[y]
        env = torch.exp(-decay[:, None] * time[None])
        x = torch.stack([env, env * torch.sin(20 * time), env**2, torch.ones_like(env)], -1)
        yield x + 0.05 * torch.randn(batch, t, 4, generator=gen), y


@scenario(
    "mbira_tine_buzz_decay_relu_rnn",
    "SGD Nesterov",
    "exploding_gradients",
    where=("cell",),
    heldout=True,
    note="the recurrent weights are initialised orthogonal with gain 1.7 (a value copied from a "
    "feed-forward kaiming recipe) in a ReLU RNN: the forward state and the backward signal grow "
    "through the 24 time steps, the first updates are huge and knock the cell into a state "
    "it never learns from",
)
def h592_mbira_tine_buzz_decay_relu_rnn(ctx):
    gen = seeded(5926)
    model = _TineRNN(gain=1.7)
    batches = _tine_batches(gen)
    x0, y0 = next(batches)
    out = model(x0)
    for h in model.states:
        h.retain_grad()
    F.cross_entropy(out, y0).backward()
    ratio = float(model.states[0].grad.norm() / model.states[-1].grad.norm().clamp_min(1e-12))
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    losses, norms = _loop(ctx, model, opt, batches, 100, F.cross_entropy, classifier=True)
    ctx.check("dL/dh at t=0 over 20x that at the last step", ratio > 20)
    ctx.check(
        "first gradient over 100x the median of the last 50", norms[0] > 100 * _median(norms[-50:])
    )
    ctx.check("never learns: last 20 steps above 0.9 ln 3", _mean(losses[-20:]) > 0.9 * math.log(3))
    ctx.check("losses finite", _finite(losses))


@scenario(
    "cooperage_barrel_toast_frozen_group_regressor",
    "AdamW",
    "update_ratio_out_of_range",
    where=("fc1",),
    heldout=True,
    note="the param-group config gives fc1 lr 1e-10 (typed for 1e-3, a leftover of a 'freeze the "
    "stem' experiment); fc1's updates are ~1e-9 of its weights and it never moves while the "
    "rest trains",
)
def h592_cooperage_barrel_toast_frozen_group_regressor(ctx):
    gen = seeded(5927)
    model = _Net(12, act=nn.SiLU)
    opt = torch.optim.AdamW(
        [
            {"params": model.fc1.parameters(), "lr": 1e-10},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    fc1_0, fc2_0 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 12, 5927), 160, F.huber_loss)
    d1 = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    d2 = float((_flat(model.fc2) - fc2_0).norm() / fc2_0.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", d1 < 1e-6)
    ctx.check("fc2 moved over 1e-2 of its norm", d2 > 1e-2)
    ctx.check("losses finite", _finite(losses))


@scenario(
    "sandbar_migration_drifting_gauge_regressor",
    "RMSprop",
    "loss_divergence",
    heldout=True,
    onset=60,
    note="from step 60 the label pipeline adds the gauge datum correction once more on every "
    "reload, so the target drifts upwards a little each step: the loss climbs slowly with no "
    "jump and no other mechanism",
)
def h592_sandbar_migration_drifting_gauge_regressor(ctx):
    gen = seeded(5928)
    model = _Net(8, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)

    def alter(step, x, y):
        return x, y + 0.025 * max(step - 60, 0) * (1 + 0.5 * x[:, 0])

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 5928), 260, F.mse_loss, alter=alter)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 60, 10))
    jumps = max(losses[i + 1] / max(losses[i], 1e-9) for i in range(len(losses) - 1))
    ctx.check("last 20 steps over 3x the best pre-onset level", _mean(losses[-20:]) > 3 * best)
    ctx.check("no single-step jump over 3x", jumps < 3.0)
    ctx.check("losses finite", _finite(losses))


@scenario(
    "timber_frame_peg_draw_dead_bias_relu_regressor",
    "ASGD",
    "loss_of_plasticity",
    where=("fc2", "act2"),
    heldout=True,
    note="fc2's bias is initialised with nn.init.constant_(-2.0), a line copy-pasted from a gated "
    "block's gate-bias init; most of act2's ReLUs are never positive, get no gradient and "
    "stay dead, so the net trains on a fraction of its width",
)
def h592_timber_frame_peg_draw_dead_bias_relu_regressor(ctx):
    gen = seeded(5929)
    model = _Net(10, hidden=64)
    nn.init.constant_(model.fc2.bias, -2.0)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    batches = _readings(gen, 128, 10, 5929)
    x0, _ = next(batches)
    with torch.no_grad():
        dead0 = dead_fraction(model.features(x0))
    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss)
    with torch.no_grad():
        dead1 = dead_fraction(model.features(x0))
    ctx.check("over 60% of act2's units dead at the start", dead0 > 0.6)
    ctx.check("over 60% still dead at the end", dead1 > 0.6)
    ctx.check("losses finite", _finite(losses))


@scenario(
    "pole_vault_plant_smoothing_sign_bce_tagger",
    "Adam",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="the hand-written label smoothing writes y * (1 + eps) - eps / 2 instead of "
    "y * (1 - eps) + eps / 2 (eps 0.2), so the BCE targets are 1.1 and -0.1: the optimum logit "
    "is infinite and the head's logits grow without bound while the loss falls below zero",
)
def h592_pole_vault_plant_smoothing_sign_bce_tagger(ctx):
    gen = seeded(5930)
    model = _Net(10, out=4, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(5930)
    w = torch.randn(10, 4, generator=g)

    def tags():
        while True:
            x = torch.randn(64, 10, generator=gen)
            yield x, (x @ w > 0).float()

    eps = 0.2
    mags = []

    def bce(out, y):
        return F.binary_cross_entropy_with_logits(out, y * (1 + eps) - eps / 2)

    def after(step, out, y):
        mags.append(float(out.abs().mean()))

    losses, _ = _loop(ctx, model, opt, tags(), 250, bce, after=after)
    ctx.check("head logits' mean magnitude grew over 20x", mags[-1] > 20 * mags[0])
    ctx.check("still growing over the last 50 steps (over 1.3x)", mags[-1] > 1.3 * mags[-50])
    ctx.check("losses finite", _finite(losses))


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "glacier_moulin_discharge_variable_accum_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="healthy, alarming-looking: each optimizer step accumulates a varying number of "
    "micro-batches (1 to 8, set by how many meltwater logger files arrived), each micro-batch "
    "loss weighted by its share of the step's samples so the loss is the correct mean; the "
    "gradient norm's noise jumps with the accumulation count; warm-up + cosine, label "
    "smoothing 0.05, clipping at 1.0",
)
def h592_glacier_moulin_discharge_variable_accum_classifier(ctx):
    gen = seeded(5931)
    model = _Net(14, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = 160
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 15) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    batches = _classes(gen, 16, 14, 5, 5931, spread=0.6)
    ctx.attach(model, opt)
    losses, norms, counts = [], [], []
    for _ in range(steps):
        k = int(torch.randint(1, 9, (1,), generator=gen))
        micro = [next(batches) for _ in range(k)]
        total = sum(len(y) for _, y in micro)
        step_loss = torch.zeros(())
        for x, y in micro:
            ctx.targets(y)
            part = F.cross_entropy(model(x), y, label_smoothing=0.05) * (len(y) / total)
            part.backward()
            step_loss = step_loss + part.detach()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(step_loss))
        ctx.step(step_loss)
        sched.step()
        opt.zero_grad(set_to_none=True)
        counts.append(k)
    few = [n for n, k in zip(norms[40:], counts[40:], strict=True) if k <= 2]
    many = [n for n, k in zip(norms[40:], counts[40:], strict=True) if k >= 7]
    ctx.check("loss fell and stayed finite", _fell(losses, ratio=0.6))
    ctx.check("accumulation count spans 1 to 8", min(counts) == 1 and max(counts) == 8)
    ctx.check(
        "gradient norm larger with 1-2 micro-batches than with 7-8 (noise varies)",
        bool(few) and bool(many) and _median(few) > 1.2 * _median(many),
    )


def _squash(s, dim=-1):
    n2 = (s * s).sum(dim, keepdim=True)
    return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)


class _DigitCaps(nn.Module):
    def __init__(self, n_in, d_in, n_out, d_out, iters=3):
        super().__init__()
        self.weight = nn.Parameter(0.05 * torch.randn(n_in, n_out, d_out, d_in))
        self.iters = iters

    def forward(self, u):
        u_hat = torch.einsum("iodk,bik->biod", self.weight, u)
        b = torch.zeros(u_hat.shape[:3])
        for it in range(self.iters):
            c = torch.softmax(b, dim=2)
            v = _squash((c[..., None] * u_hat).sum(1))
            if it < self.iters - 1:
                b = b + (u_hat * v[:, None]).sum(-1)
        return v


class _CapsNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.primary = nn.Conv2d(16, 8 * 4, 3, stride=2, padding=1)
        self.digit = _DigitCaps(8 * 36, 4, classes, 8)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        p = self.primary(h)
        b = p.shape[0]
        u = _squash(p.reshape(b, 8, 4, 36).permute(0, 1, 3, 2).reshape(b, 8 * 36, 4))
        return self.digit(u).norm(dim=-1)


def _motif_images(gen, batch=32, size=12):
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        img = torch.zeros(batch, 1, size, size)
        r = torch.randint(2, size - 2, (batch,), generator=gen)
        c = torch.randint(2, size - 2, (batch,), generator=gen)
        for i in range(batch):
            ri, ci, k = int(r[i]), int(c[i]), int(y[i])
            if k == 0:
                img[i, 0, ri, ci - 2 : ci + 3] = 1.0
            elif k == 1:
                img[i, 0, ri - 2 : ri + 3, ci] = 1.0
            elif k == 2:
                for d in range(-2, 3):
                    img[i, 0, ri + d, ci + d] = 1.0
            else:
                img[i, 0, ri - 1 : ri + 2, ci - 1 : ci + 2] = 1.0
                img[i, 0, ri, ci] = 0.0
        yield img + 0.1 * torch.randn(img.shape, generator=gen), y


def _margin_loss(lengths, y):
    t = F.one_hot(y, lengths.shape[1]).float()
    loss = t * F.relu(0.9 - lengths) ** 2 + 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return loss.sum(1).mean()


@scenario(
    "bobbin_lace_pricking_motif_capsule_router",
    "Adam",
    "healthy",
    heldout=True,
    note="healthy: a capsule network (conv stem, 8x36 primary capsules of 4 dims, class capsules "
    "of 8 dims, three iterations of routing-by-agreement) on generated 12x12 lace-pricking "
    "motifs, margin loss, Adam with OneCycleLR",
)
def h592_bobbin_lace_pricking_motif_capsule_router(ctx):
    gen = seeded(5932)
    model = _CapsNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=150)
    acc = []

    def after(step, out, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _motif_images(gen),
        150,
        _margin_loss,
        classifier=True,
        sched=sched,
        after=after,
    )
    ctx.check("loss fell and stayed finite", _fell(losses, ratio=0.5))
    ctx.check("accuracy over the last 20 steps above 0.8", _mean(acc[-20:]) > 0.8)


@scenario(
    "geyser_eruption_interval_gaussian_nll_net",
    "Adagrad",
    "healthy",
    heldout=True,
    note="healthy: a Gaussian-NLL net (mean and softplus variance heads) for eruption intervals "
    "with heteroscedastic noise, Adagrad, ReduceLROnPlateau, clipping at 2.0",
)
def h592_geyser_eruption_interval_gaussian_nll_net(ctx):
    gen = seeded(5933)
    model = _Net(9, out=2, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    base = _readings(gen, 64, 9, 5933, noise=0.0)

    def batches():
        while True:
            x, y = next(base)
            sd = 0.05 + 0.3 * torch.sigmoid(2 * x[:, 1])
            yield x, y + sd * torch.randn(len(y), generator=gen)

    def nll(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-4)

    losses, _ = _loop(ctx, model, opt, batches(), 220, nll, clip=2.0, plateau=plateau)
    ctx.check(
        "loss fell by over 0.5 nats and stayed finite",
        _finite(losses) and _mean(losses[-20:]) < _mean(losses[:10]) - 0.5,
    )
