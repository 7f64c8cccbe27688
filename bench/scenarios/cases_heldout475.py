"""Held-out set 475 (``h475_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a shoji lattice glue-set tanh regressor whose MultiStepLR gamma is typed 10 for 0.1
(full-batch SGD; lr * sharpness crosses 2 and the loss blows up), a curling broom-sweep
ten-layer tanh regressor with a xavier gain typed 3 for 1 (gradients grow through depth,
clipped, RMSprop), a yodel echo-delay ReLU regressor fed one shard in milliseconds (Adagrad), a
mangrove pneumatophore two-group regressor whose stem lr is typed 1e-9 for 1e-3 (Adamax), a
snowshoe hare-track depth regressor whose target offset is accumulated each step (a drifting
target, SGD momentum), a sundial noon-mark Huber regressor whose loss uses reduction='sum' on one
resume step (SGD Nesterov, clipped), a tatami rush dye-fade regressor whose loss is left in mm^2
for m^2 once (x1e6, Adam's second moment poisoned), a salt-pan brine log-ratio net with no clamp
before log (log 0 on a dry pan, NAdam), a sheepdog whistle-command BCE tagger fed {-1, +1} labels
(the head's logits grow without bound, AdamW) and a harpsichord quill-pluck regressor resumed
once from a stale checkpoint (a one-off loss spike that recovers, RAdam).

Controls: an aurora-oval energy-based model trained by noise-contrastive estimation against a
known Gaussian noise (Adam, warm-up, clipping); a didgeridoo drone-pitch SiLU regressor at a very
small learning rate (plain SGD, the loss falls slowly but steadily); a luthier soundboard
tap-tone classifier (AdamW param groups, OneCycleLR, accumulation over 2, label smoothing,
clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _run(
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
    accumulate=1,
):
    """Training loop: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)`` (the loss
    actually backpropagated), ``after(step)``. Stops after a non-finite loss (once logged)."""
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
            total = backprop(step, loss) if backprop is not None else loss
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
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
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
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


def _snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def _moved(model, before):
    return math.sqrt(
        sum(
            float((p.detach() - b).norm() ** 2)
            for p, b in zip(model.parameters(), before, strict=True)
        )
    )


# -- 1. sharpness: a MultiStepLR gamma typed 10 for 0.1 ---------------------------------------------


@scenario(
    family="shoji_lattice_glue_set_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=40,
    note="Shoji lattice glue-set time regressor (tanh MLP on glue, humidity and joint features, "
    "MSE, full-batch SGD with a MultiStepLR decay at step 40). The decay factor gamma is typed 10 "
    "for 0.1: at step 40 the lr jumps tenfold instead of dropping, lr * sharpness crosses 2 and "
    "the loss oscillates and blows up.",
)
def h475_shoji_gamma_typo(ctx) -> None:
    gen = seeded(4751)
    model = _Net(8, 48, 1, act=nn.Tanh)
    x, y = next(_readings(gen, 256, 8, seed=4751))
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[40], gamma=10.0)
    prod = {}

    def before(step):
        if step in (35, 41):
            prod[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, x, y)

    losses, _ = _run(ctx, model, opt, fixed, 120, F.mse_loss, before=before, sched=sched)
    ctx.check("lr * sharpness under 2 before the milestone", prod.get(35, 9.0) < 2.0)
    ctx.check("lr * sharpness over 2 after the milestone", prod.get(41, 0.0) > 2.0)
    best = min(v for v in losses if math.isfinite(v))
    ctx.check(
        "the loss blows up over 100x its lowest after step 40",
        any((not math.isfinite(v)) or v > 100 * best for v in losses[40:]),
    )


# -- 2. exploding gradients: xavier gain typed 3 ----------------------------------------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="curling_broom_sweep_friction_deep_relu_regressor",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="Curling broom-sweep friction regressor (ten ReLU layers on broom pressure, stroke rate "
    "and ice readings, MSE, RMSprop, clipping at 1). The He-init std is multiplied by a gain "
    "typed 1.6 for 1.0: every layer amplifies the backward pass by about 1.6, the first layers' "
    "gradients are far larger than the last's and the pre-clip gradient norm is huge.",
)
def h475_curling_gain_typo(ctx) -> None:
    gen = seeded(4752)
    model = _Deep(12, 48, 10, gain=1.6)
    ref = _Deep(12, 48, 10, gain=1.0)
    data = _readings(gen, 64, 12, seed=4752)
    x0, y0 = next(data)

    def ratio(m):
        """Backward-pass gradient at layers.0's output over that at layers.9's output."""
        outs = []

        def keep(mod, inp, out):
            out.retain_grad()
            outs.append(out)

        hooks = [lin.register_forward_hook(keep) for lin in (m.layers[0], m.layers[9])]
        F.mse_loss(m(x0), y0).backward()
        for h in hooks:
            h.remove()
        r = float(outs[0].grad.norm() / outs[1].grad.norm())
        m.zero_grad()
        return r

    r_bad, r_ref = ratio(model), ratio(ref)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    losses, norms = _run(ctx, model, opt, data, 150, F.mse_loss, clip=1.0)
    ctx.check(
        "the backward gradient at layers.0 over 10x that at layers.9 (gain 1.6)", r_bad > 10.0
    )
    ctx.check("under 3x at gain 1", r_ref < 3.0)
    ctx.check("pre-clip gradient norm over 5x the clip", _median(norms[:20]) > 5.0)
    ctx.check("losses finite", _finite(losses))


# -- 3. data outlier: one shard in milliseconds -----------------------------------------------------


@scenario(
    family="yodel_echo_delay_relu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Yodel echo-delay regressor (ReLU MLP on valley width, wall angle and call pitch, "
    "predicting the echo delay in seconds, MSE, Adagrad). One shard written by an older logger "
    "stores the delay in milliseconds: the batch at step 120 has targets 1000x too large; the "
    "loss and gradient jump for that step and the run recovers.",
)
def h475_yodel_ms_shard(ctx) -> None:
    gen = seeded(4753)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4753)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 120 else (x, y)

    losses, norms = _run(ctx, model, opt, data, 220, F.mse_loss, alter=alter)
    ctx.check("loss at 120 over 20x the steps before", losses[120] > 20 * _mean(losses[110:120]))
    ctx.check("gradient at 120 over 10x the median", norms[120] > 10 * _median(norms[100:120]))
    ctx.check(
        "recovers: last 20 under 3x pre-shard", _mean(losses[-20:]) < 3 * _mean(losses[100:120])
    )
    ctx.check("finite", _finite(losses))


# -- 4. update ratio: the stem lr typed 1e-9 for 1e-3 -----------------------------------------------


@scenario(
    family="mangrove_pneumatophore_count_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Mangrove pneumatophore density regressor (ReLU MLP on tide, salinity and sediment "
    "readings, Huber, Adamax with two param groups). The stem group's lr is typed 1e-9 for 1e-3: "
    "fc1 receives gradients but its weights practically never move, while fc2 and the head train.",
)
def h475_mangrove_stem_lr(ctx) -> None:
    gen = seeded(4754)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4754)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 3e-3},
        ]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    g1 = []
    losses, _ = _run(
        ctx,
        model,
        opt,
        data,
        200,
        F.huber_loss,
        after=lambda s: g1.append(float(model.fc1.weight.grad.norm())),
    )
    r1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    rh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", r1 < 1e-5)
    ctx.check("head moved over 5% of its norm", rh > 0.05)
    ctx.check("fc1 received gradients", _median(g1) > 1e-4)
    ctx.check("finite", _finite(losses))


# -- 5. loss divergence: a drifting target offset ---------------------------------------------------


@scenario(
    family="snowshoe_hare_track_depth_silu_regressor",
    optimizer="SGD (momentum)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="Snowshoe-hare track-depth regressor (SiLU MLP on snow density, temperature and gait "
    "features, MSE, SGD momentum). The depth calibration offset is meant to be set once, but the "
    "loader adds it again every step from step 60 (offset += 0.04 in the batch loop, applied along the sign of the slope reading): the target "
    "drifts away and the loss climbs slowly with no blow-up.",
)
def h475_snowshoe_drifting_target(ctx) -> None:
    gen = seeded(4755)
    model = _Net(10, 48, 1, act=nn.SiLU)
    data = _readings(gen, 64, 10, seed=4755)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    offset = [0.0]

    def alter(step, x, y):
        if step >= 60:
            offset[0] += 0.04
        return x, y + offset[0] * torch.sign(x[:, 0])

    losses, _ = _run(ctx, model, opt, data, 240, F.mse_loss, alter=alter)
    best = min(losses[:60])
    ctx.check("loss fell before the drift", losses[59] < 0.8 * losses[0] or best < 0.8 * losses[0])
    ctx.check("last 20 over 3x the best", _mean(losses[-20:]) > 3 * best)
    ctx.check(
        "climbs: each 60-step window above the one before",
        all(_mean(losses[a + 60 : a + 120]) > _mean(losses[a : a + 60]) for a in (60, 120)),
    )
    ctx.check("finite", _finite(losses))


# -- 6. gradient spike: reduction='sum' on one resume step ------------------------------------------


@scenario(
    family="sundial_noon_mark_shadow_gelu_huber_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Sundial noon-mark shadow-length regressor (GELU MLP on latitude, date and gnomon "
    "features, Huber, SGD Nesterov, clipping at 1). On the step after a resume (step 100) the loss "
    "is rebuilt with reduction='sum' instead of 'mean': the backpropagated loss is 128x the logged "
    "one, one gradient burst not from the data, clipped; the run goes on normally.",
)
def h475_sundial_sum_reduction(ctx) -> None:
    gen = seeded(4756)
    model = _Net(10, 48, 1, act=nn.GELU)
    data = _readings(gen, 128, 10, seed=4756)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    xs = []

    def alter(step, x, y):
        xs.append((x, y))
        return x, y

    def backprop(step, loss):
        if step == 100:
            x, y = xs[-1]
            return F.huber_loss(model(x), y, reduction="sum")
        return loss

    losses, norms = _run(
        ctx, model, opt, data, 200, F.huber_loss, alter=alter, backprop=backprop, clip=1.0
    )
    ctx.check("gradient at 100 over 50x the median", norms[100] > 50 * _median(norms[80:100]))
    ctx.check("the logged loss at 100 ordinary", losses[100] < 2 * _mean(losses[90:100]))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * _mean(losses[80:100]))
    ctx.check("finite", _finite(losses))


# -- 7. adam second moment: a loss in mm^2 once ------------------------------------------------------


@scenario(
    family="tatami_rush_dye_fade_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="Tatami rush dye-fade regressor (GELU MLP on sun exposure, humidity and dye lot, MSE, "
    "Adam). A unit helper converts the fade area to mm^2 for m^2 on the evaluation-aligned step "
    "80 and multiplies the loss by 1e6: one giant gradient fills Adam's second moment and the "
    "updates stall for many steps afterwards.",
)
def h475_tatami_mm2_loss(ctx) -> None:
    gen = seeded(4757)
    model = _Net(10, 48, 1, act=nn.GELU)
    data = _readings(gen, 64, 10, seed=4757)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, prev = [], [_snapshot(model)]

    def after(step):
        moves.append(_moved(model, prev[0]))
        prev[0] = _snapshot(model)

    losses, norms = _run(
        ctx,
        model,
        opt,
        data,
        200,
        F.mse_loss,
        backprop=lambda s, l: l * 1e6 if s == 80 else l,
        after=after,
    )
    ctx.check("gradient at 80 over 1e4x the median", norms[80] > 1e4 * _median(norms[60:80]))
    ctx.check(
        "updates 40-110 steps later under 1/10 of those before",
        _mean(moves[120:190]) < 0.1 * _mean(moves[50:80]),
    )
    ctx.check("finite", _finite(losses))


# -- 8. nonfinite: log of a dry pan ---------------------------------------------------------------


class _LogRatio(nn.Module):
    """log(brine / fresh) features: the clamp before the log was left out."""

    def forward(self, x):
        return torch.log(x[:, :4] / x[:, 4:8])


class _Brine(nn.Module):
    def __init__(self):
        super().__init__()
        self.logfeat = _LogRatio()
        self.fc1 = nn.Linear(8, 32)
        self.act = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        z = torch.cat([self.logfeat(x), x[:, 8:]], 1)
        return self.head(self.act(self.fc1(z))).squeeze(-1)


def _brine(gen, batch, dry_at):
    g = torch.Generator().manual_seed(4758)
    w = torch.randn(8, generator=g)
    step = 0
    while True:
        x = torch.rand(batch, 12, generator=gen) * 2 + 0.1
        y = torch.tanh(torch.cat([torch.log(x[:, :4] / x[:, 4:8]), x[:, 8:]], 1) @ w / 3)
        if step == dry_at:
            x[3, 1] = 0.0  # a dry pan: no brine in the gauge
        step += 1
        yield x, y


@scenario(
    family="saltpan_brine_evaporation_log_ratio_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=110,
    heldout=True,
    onset=110,
    note="Salt-pan brine evaporation net (log concentration ratios into a SiLU MLP, MSE, NAdam). "
    "The clamp before the log was dropped in a refactor: at step 110 a dry pan reports zero brine, "
    "log(0) = -inf, and the loss is non-finite at 110.",
)
def h475_saltpan_log_zero(ctx) -> None:
    gen = seeded(4758)
    model = _Brine()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    losses, _ = _run(ctx, model, opt, _brine(gen, 64, 110), 160, F.mse_loss)
    ctx.check("the loss non-finite at 110", len(losses) == 111 and not math.isfinite(losses[110]))
    ctx.check("finite before", _finite(losses[:110]))
    ctx.check("loss fell before", _fell(losses[:110]))


# -- 9. output logits: {-1, +1} labels into BCE ------------------------------------------------------


@scenario(
    family="sheepdog_whistle_command_pm1_bce_tagger",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sheepdog whistle-command tagger (ReLU MLP on whistle pitch-contour features, six "
    "commands as multi-label BCE with logits, AdamW). The labels come from an SVM pipeline "
    "encoded {-1, +1} instead of {0, 1}: negatives have target -1, BCE has no minimum and the "
    "head's logits are pushed down without bound; the loss goes below 0.",
)
def h475_sheepdog_pm1_labels(ctx) -> None:
    gen = seeded(4759)
    model = _Net(16, 48, 6)
    data = _grades(gen, 64, 16, 6, seed=4759)

    def labels(it):
        for x, y in it:
            yield x, F.one_hot(y, 6).float() * 2 - 1

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    x0, _ = next(data)
    with torch.no_grad():
        start = float(model(x0).abs().mean())
    mags = []

    def after(step):
        if step % 20 == 0:
            with torch.no_grad():
                mags.append(float(model(x0).abs().mean()))

    losses, _ = _run(
        ctx, model, opt, labels(data), 200, F.binary_cross_entropy_with_logits, after=after
    )
    ctx.check("head mean |logit| over 20x its start", mags[-1] > 20 * start)
    ctx.check("still climbing", mags[-1] > 1.2 * mags[-3])
    ctx.check("loss below 0", losses[-1] < 0)


# -- 10. loss spike: resumed once from a stale checkpoint --------------------------------------------


@scenario(
    family="harpsichord_quill_pluck_force_relu_regressor",
    optimizer="RAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Harpsichord quill pluck-force regressor (ReLU MLP on quill length, voicing angle and "
    "jack travel, MSE, RAdam). After a preemption at step 150 the job reloads the weights from "
    "the first checkpoint (step 10) instead of the latest, keeping the optimizer state: the loss "
    "jumps back up once and the run recovers within tens of steps.",
)
def h475_harpsichord_stale_resume(ctx) -> None:
    gen = seeded(4760)
    model = _Net(10, 48, 1)
    data = _readings(gen, 64, 10, seed=4760)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ckpt = {}

    def before(step):
        if step == 10:
            ckpt["w"] = {k: v.clone() for k, v in model.state_dict().items()}
        if step == 150:
            model.load_state_dict(ckpt["w"])

    losses, _ = _run(ctx, model, opt, data, 260, F.mse_loss, before=before)
    ctx.check("loss at 150 over 3x the steps before", losses[150] > 3 * _mean(losses[140:150]))
    ctx.check(
        "recovers: last 20 under 1.5x pre-spike", _mean(losses[-20:]) < 1.5 * _mean(losses[130:150])
    )
    ctx.check("finite", _finite(losses))


# -- controls -------------------------------------------------------------------------------------


class _Energy(nn.Module):
    """E(x) for 2-d auroral-oval positions, with a learnt log-partition estimate."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(2, 64)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.SiLU()
        self.energy = nn.Linear(64, 1)
        self.log_z = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return self.energy(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


_NOISE_STD = 2.0


def _noise_logq(x):
    return -0.5 * (x / _NOISE_STD).pow(2).sum(1) - 2 * math.log(_NOISE_STD) - math.log(2 * math.pi)


def _aurora(gen, batch):
    """Points on a noisy oval (the auroral oval around the magnetic pole), and noise samples."""
    while True:
        t = torch.rand(batch, generator=gen) * 2 * math.pi
        r = 1.5 + 0.1 * torch.randn(batch, generator=gen)
        data = torch.stack([1.2 * r * torch.cos(t), 0.8 * r * torch.sin(t) + 0.3], 1)
        noise = _NOISE_STD * torch.randn(batch, 2, generator=gen)
        yield torch.cat([data, noise]), torch.cat([torch.ones(batch), torch.zeros(batch)])


@scenario(
    family="aurora_oval_position_nce_energy_net",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Aurora-oval energy-based model (SiLU energy net on 2-d oval positions) trained by "
    "noise-contrastive estimation against a known Gaussian noise N(0, 2^2 I): the logit is "
    "-E(x) - log Z - log q(x), BCE between data and noise, Adam with a linear warm-up and "
    "clipping at 5. Healthy control.",
)
def h475_aurora_nce_control(ctx) -> None:
    gen = seeded(4761)
    model = _Energy()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))

    def nce(energy, y):
        return F.binary_cross_entropy_with_logits(-energy - model.log_z - _noise_logq(xs[-1]), y)

    xs = []

    def alter(step, x, y):
        xs.append(x)
        return x, y

    losses, _ = _run(
        ctx, model, opt, _aurora(gen, 128), 250, nce, alter=alter, clip=5.0, sched=sched
    )
    ctx.check("loss fell", _fell(losses, ratio=0.7))
    ctx.check("finite", _finite(losses))
    with torch.no_grad():
        x, y = next(_aurora(gen, 512))
        logit = -model(x) - model.log_z - _noise_logq(x)
        acc = float(((logit > 0).float() == y).float().mean())
    ctx.check("tells data from noise over 75%", acc > 0.75)


@scenario(
    family="didgeridoo_drone_pitch_slow_silu_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Didgeridoo drone-pitch regressor (SiLU MLP on bore length, flare and lip-buzz features, "
    "MSE, plain SGD at a very small lr 2e-3): the loss falls slowly but steadily. Healthy control.",
)
def h475_didgeridoo_small_lr_control(ctx) -> None:
    gen = seeded(4762)
    model = _Net(10, 48, 1, act=nn.SiLU)
    data = _readings(gen, 64, 10, seed=4762)
    opt = torch.optim.SGD(model.parameters(), lr=2e-3)
    losses, _ = _run(ctx, model, opt, data, 300, F.mse_loss)
    windows = [_mean(losses[a : a + 60]) for a in range(0, 300, 60)]
    ctx.check(
        "every 60-step window below the one before",
        all(b < a for a, b in zip(windows, windows[1:], strict=False)),
    )
    ctx.check("slow: the last window still over 30% of the first", windows[-1] > 0.3 * windows[0])
    ctx.check("fell", windows[-1] < 0.95 * windows[0])
    ctx.check("finite", _finite(losses))


@scenario(
    family="luthier_soundboard_tap_tone_onecycle_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Luthier soundboard tap-tone grade classifier (GELU MLP on tap-tone spectrum features, "
    "five grades, cross-entropy with label smoothing 0.1, AdamW with no decay on biases, "
    "OneCycleLR, accumulation over 2, clipping at 1). Healthy control.",
)
def h475_luthier_onecycle_control(ctx) -> None:
    gen = seeded(4763)
    model = _Net(16, 64, 5, act=nn.GELU)
    data = _grades(gen, 32, 16, 5, seed=4763, spread=1.5)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    losses, _ = _run(
        ctx,
        model,
        opt,
        data,
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
