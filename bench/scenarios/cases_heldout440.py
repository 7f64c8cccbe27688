"""Held-out set 440 (``h440_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a hail-shaft stone-fall neural ODE (one tanh vector-field MLP shared by 40 Euler steps)
whose frame interval is read in deciseconds for centiseconds (dt 0.25 for 0.025: gradients grow
back through the steps), a carillon clapper-wear GELU regressor whose one debug step
backpropagates a loss weighted 1e5 (Adam's second moment is filled and the updates stall), a
river-bore celerity net that takes sqrt(g * depth) of a tide-gauge shard whose tare offset makes
depths negative (no clamp: NaN), a glassblower gather-grade classifier whose temperature is typed
0.0005 for 0.5 (softmax saturates), a peat-cutter turf-moisture MSE regressor fed one shard in
grams for kilograms (one corrupted batch), a pétanque boule-kiss BCE net whose resumed step
normalises the loss by the batch count over the wrong axis (one gradient burst), a hurdy-gurdy
trompette-buzz two-group regressor whose encoder warm-up lambda divides by 1e9 steps (a frozen
encoder), a sea-stack erosion ReLU classifier whose fc2 bias is initialised to -4 (its units
are dead and stay dead), a shakuhachi bore-pitch MSE regressor whose warm-up peak lr is typed 0.9
for 0.09 (past the stability limit) and a mud-volcano vent-temperature regressor whose
hand-written L2 penalty has its sign flipped (a slow climb).

Controls: a ski-jump landing-distance regressor (RMSprop at a small lr, clipping), a
lacemaker bobbin-pattern fp16 Conv1d classifier (GradScaler, AdamW under OneCycleLR, label
smoothing) and a chimney-sweep soot-load tied autoencoder with a Gaussian NLL head (SGD Nesterov,
ReduceLROnPlateau, accumulation, clipping).
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
    """The file's training loop; ``attach=False`` is a reference run outside the monitor."""
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


def _teacher(seed: int, d_in: int, d_out: int = 1):
    g = torch.Generator().manual_seed(seed + 7)
    w1 = torch.randn(d_in, 16, generator=g) / math.sqrt(d_in)
    w2 = torch.randn(16, d_out, generator=g) / 4.0
    return lambda x: torch.tanh(x @ w1) @ w2


def _regression(gen, batch, d_in, seed, noise=0.05):
    f = _teacher(seed, d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, f(x) + noise * torch.randn(batch, 1, generator=gen)


def _classes(gen, batch, d_in, k, seed, noise=0.3):
    f = _teacher(seed, d_in, k)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        logits = 4.0 * f(x) + noise * torch.randn(batch, k, generator=gen)
        yield x, logits.argmax(1)


class _Net(nn.Module):
    def __init__(self, d_in, hidden, d_out, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, d_out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x))


# -- faults ----------------------------------------------------------------------------------------


class _StoneFallODE(nn.Module):
    """A hailstone's (height, speed, drag, charge) state stepped by one shared vector field."""

    def __init__(self, dt: float, steps: int = 40):
        super().__init__()
        self.field = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4))
        nn.init.orthogonal_(self.field[0].weight, gain=3.0)
        nn.init.orthogonal_(self.field[2].weight, gain=3.0)
        self.dt = dt
        self.steps = steps

    def trajectory(self, h0):
        hs = [h0]
        h = h0
        for _ in range(self.steps):
            h = h + self.dt * self.field(h)
            hs.append(h)
        return hs

    def forward(self, h0):
        return torch.stack(self.trajectory(h0)[1:], 1)


def _stone_batches(gen, batch=32, steps=40):
    t = torch.arange(1, steps + 1) * 0.025
    while True:
        h0 = torch.randn(batch, 4, generator=gen) * 0.5
        k = 0.5 + torch.rand(batch, 1, generator=gen)
        z = h0[:, None, :] * torch.exp(-k[:, None, :] * t[None, :, None])
        z = z + 0.3 * torch.sin(3 * t)[None, :, None]
        yield h0, z


def _depth_ratio(model, h0, steps=40):
    h0 = h0.clone().requires_grad_(True)
    hs = model.trajectory(h0)
    for h in hs:
        h.retain_grad()
    hs[-1].pow(2).sum().backward()
    late = hs[-2].grad.norm()
    early = hs[0].grad.norm()
    model.zero_grad(set_to_none=True)
    return float(early / late.clamp_min(1e-12))


@scenario(
    family="hail_shaft_stone_fall_euler_ode_net",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("field", "field.0"),
    diverges=None,
    heldout=True,
    note="The frame interval of the fall-tower camera is read in deciseconds for centiseconds, "
    "so each (field initialised orthogonal, gain 3) of the 40 Euler steps of the shared vector field uses dt 0.25 for 0.025: the "
    "Jacobian product (I + dt J)^40 grows and dL/dh_0 dwarfs dL/dh_39; clipped, it does not "
    "blow up.",
)
def h440_hail_stone_fall_ode_dt_units(ctx):
    gen = seeded(4401)
    model = _StoneFallODE(dt=0.25)
    ref = _StoneFallODE(dt=0.025)
    ref.load_state_dict(model.state_dict())
    probe = torch.randn(32, 4, generator=torch.Generator().manual_seed(1)) * 0.5
    bad, good = _depth_ratio(model, probe), _depth_ratio(ref, probe)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    _loop(ctx, model, opt, _stone_batches(gen), 120, F.mse_loss, clip=1.0)
    ctx.check(f"dL/dh_0 over 100x dL/dh_39 at dt 0.25 ({bad:.3g})", bad > 100)
    ctx.check(f"under 10x at dt 0.025 ({good:.3g})", good < 10)
    ctx.check("finite (clipped, no blow-up)", _finite(ctx.losses))


@scenario(
    family="carillon_clapper_wear_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=40,
    note="A debug step at 40 backpropagates the wear loss with a leftover weight of 1e5 (set to "
    "test a loss-scaling path): one giant gradient fills Adam's second moment (beta2 0.9999), "
    "so the updates shrink to a trickle and the loss stalls above a clean run.",
)
def h440_carillon_clapper_debug_weight(ctx):
    def build():
        return _Net(10, 48, 1, act=nn.GELU)

    seeded(4402)
    model = build()
    ref = build()
    ref.load_state_dict(model.state_dict())

    def mk(m):
        return torch.optim.Adam(m.parameters(), lr=3e-3, betas=(0.9, 0.9999))

    opt, ropt = mk(model), mk(ref)
    moves = []

    def before(step):
        moves.append(model.head.weight.detach().clone())

    ref_losses = _loop(
        None,
        ref,
        ropt,
        _regression(torch.Generator().manual_seed(4402), 64, 10, 4402),
        200,
        F.mse_loss,
        attach=False,
    )
    losses = _loop(
        ctx,
        model,
        opt,
        _regression(torch.Generator().manual_seed(4402), 64, 10, 4402),
        200,
        F.mse_loss,
        before=before,
        backprop=lambda s, loss: loss * 1e5 if s == 40 else loss,
    )
    v = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
    rv = max(float(s["exp_avg_sq"].max()) for s in ropt.state.values())
    pre = _mean([_rel_change(moves[i], moves[i + 1]) for i in range(20, 39)])
    post = _mean([_rel_change(moves[i], moves[i + 1]) for i in range(100, 150)])
    ctx.check(f"second moment over 1e6x the reference's ({v / rv:.3g})", v > 1e6 * rv)
    ctx.check(f"updates after under 1/10 of before ({post / pre:.3g})", post < 0.1 * pre)
    ctx.check(
        "loss over the last 30 steps over 1.5x the reference's",
        _mean(losses[-30:]) > 1.5 * _mean(ref_losses[-30:]),
    )
    ctx.check("finite", _finite(losses))


class _Celerity(nn.Module):
    """Shallow-water wave speed sqrt(g h) of the gauge depth (no clamp)."""

    def forward(self, depth):
        return torch.sqrt(9.81 * depth)


class _BoreNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.celerity = _Celerity()
        self.fc1 = nn.Linear(7, 32)
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        c = self.celerity(x[:, :1])
        z = torch.cat([c, x[:, 1:]], 1)
        return self.head(F.relu(self.fc2(F.relu(self.fc1(z)))))


@scenario(
    family="river_bore_celerity_sqrt_depth_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("celerity",),
    diverges=90,
    heldout=True,
    onset=90,
    note="The bore arrival-time net takes sqrt(g * depth) of the tide-gauge depth with no clamp; "
    "the shard loaded at step 90 comes from a gauge whose tare offset was subtracted twice, so "
    "some depths are negative and sqrt returns NaN.",
)
def h440_river_bore_celerity_negative_depth(ctx):
    gen = seeded(4403)
    f = _teacher(4403, 7)

    def batches():
        while True:
            x = torch.randn(64, 7, generator=gen)
            x[:, 0] = 0.5 + 3.0 * torch.rand(64, generator=gen)
            yield x, f(x)

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:, 0] = x[:, 0] - 2.0
        return x, y

    model = _BoreNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    losses = _loop(ctx, model, opt, batches(), 150, F.huber_loss, alter=alter)
    ctx.check(f"first non-finite loss at step 90 ({_first_bad(losses)})", _first_bad(losses) == 90)
    ctx.check("finite before 90", _finite(losses[:90]))
    with torch.no_grad():
        out = model.celerity(torch.tensor([[-0.5]]))
    ctx.check("celerity of a negative depth is NaN", bool(torch.isnan(out).all()))


class _GatherGrader(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.fc1 = nn.Linear(12, 64)
        self.fc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 6)
        self.temperature = temperature

    def logits(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x)))))

    def forward(self, x):
        return self.logits(x) / self.temperature


@scenario(
    family="glassblower_gather_grade_temperature_silu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="The calibrated temperature is typed 0.0005 for 0.5: logits are divided by 0.0005, the "
    "softmax rounds the target probability to exactly 1.0 on most rows, and those rows stop "
    "giving any gradient.",
)
def h440_glassblower_gather_temperature_typo(ctx):
    gen = seeded(4404)
    model = _GatherGrader(0.0005)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    data = _classes(gen, 64, 12, 6, 4404)
    fracs, calm = [], []

    def after(step):
        if step >= 150:
            with torch.no_grad():
                x, y = probe
                fracs.append(collapsed_fraction(model(x), y))
                calm.append(collapsed_fraction(model.logits(x) / 0.5, y))

    probe = next(_classes(torch.Generator().manual_seed(9), 256, 12, 6, 4404))
    losses = _loop(ctx, model, opt, data, 180, F.cross_entropy, classifier=True, after=after)
    ctx.check(f"over half the rows exactly 1.0 ({_mean(fracs):.3g})", _mean(fracs) > 0.5)
    ctx.check(f"under 5% at temperature 0.5 ({_mean(calm):.3g})", _mean(calm) < 0.05)
    ctx.check("finite", _finite(losses))


@scenario(
    family="peat_cutter_turf_moisture_relu_regressor",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="One shard of turf-bank weighings at step 110 is logged in grams for kilograms (its "
    "targets and its wet-mass feature 1000x): one corrupted batch, a loss and gradient burst, "
    "clipped, and the run recovers.",
)
def h440_peat_turf_grams_shard(ctx):
    gen = seeded(4405)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0
            y = y * 1000.0
        return x, y

    model = _Net(9, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    losses = _loop(
        ctx, model, opt, _regression(gen, 64, 9, 4405), 220, F.mse_loss, alter=alter, clip=5.0
    )
    base = _median(losses[80:110])
    g = ctx.grad_norms
    ctx.check(
        f"loss at 110 over 1000x the median ({losses[110] / base:.3g})", losses[110] > 1000 * base
    )
    ctx.check("gradient at 110 over 50x the median", g[110] > 50 * _median(g[80:110]))
    ctx.check(
        "recovers: last 20 under 3x the pre-onset median",
        _finite(losses) and _mean(losses[-20:]) < 3 * base,
    )


@scenario(
    family="petanque_boule_kiss_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=130,
    note="The step resumed from a checkpoint at 130 normalises the summed BCE by the count of "
    "valid throws taken over the wrong axis (1 for 64): the backpropagated loss is 64x the "
    "logged mean for one step; the logged loss is ordinary and the run recovers.",
)
def h440_petanque_resume_normaliser(ctx):
    gen = seeded(4406)
    f = _teacher(4406, 8)

    def batches():
        while True:
            x = torch.randn(64, 8, generator=gen)
            yield x, (f(x) > 0).float()

    def backprop(step, loss):
        return loss * 64.0 if step == 130 else loss

    model = _Net(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    losses = _loop(
        ctx, model, opt, batches(), 220, F.binary_cross_entropy_with_logits, backprop=backprop
    )
    g = ctx.grad_norms
    ctx.check(
        f"gradient at 130 over 30x the median ({g[130] / _median(g[100:130]):.3g})",
        g[130] > 30 * _median(g[100:130]),
    )
    ctx.check("logged loss at 130 under 2x the median", losses[130] < 2 * _median(losses[100:130]))
    ctx.check(
        "finite and recovers",
        _finite(losses) and _mean(losses[-20:]) < 1.5 * _median(losses[100:130]),
    )


@scenario(
    family="hurdy_gurdy_trompette_buzz_two_group_huber_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A LambdaLR per group: the encoder's warm-up lambda divides the step by 1e9 steps (a "
    "warm-up given in samples, not steps), so fc1's learning rate stays ~0 and it is frozen "
    "while the rest trains.",
)
def h440_hurdy_gurdy_encoder_warmup_samples(ctx):
    gen = seeded(4407)
    model = _Net(10, 48, 1, act=nn.ReLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 0.03},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 0.03},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: min(1.0, s / 1e9), lambda s: min(1.0, (s + 1) / 20)]
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses = _loop(ctx, model, opt, _regression(gen, 64, 10, 4407), 200, F.huber_loss, sched=sched)
    r1, r2 = _rel_change(w1, model.fc1.weight), _rel_change(w2, model.fc2.weight)
    ctx.check(f"fc1 moves under 1e-4 of its norm ({r1:.3g})", r1 < 1e-4)
    ctx.check(f"fc2 moves over 10% ({r2:.3g})", r2 > 0.1)
    ctx.check("finite", _finite(losses))


@scenario(
    family="sea_stack_collapse_risk_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="fc2's bias is initialised with a copy-pasted constant_(-4.0) (meant for a gate's "
    "bias): all of its ReLUs never fire, get no gradient and stay dead, and the classifier "
    "stalls above a run with a zero bias.",
)
def h440_sea_stack_dead_bias_init(ctx):
    seeded(4408)
    model = _Net(10, 64, 4)
    ref = _Net(10, 64, 4)
    ref.load_state_dict(model.state_dict())
    nn.init.constant_(model.fc2.bias, -4.0)
    probe = next(_classes(torch.Generator().manual_seed(3), 512, 10, 4, 4408))
    with torch.no_grad():
        dead0 = dead_fraction(model.fc2(model.act1(model.fc1(probe[0]))))
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ropt = torch.optim.NAdam(ref.parameters(), lr=2e-3)
    ref_losses = _loop(
        None,
        ref,
        ropt,
        _classes(torch.Generator().manual_seed(4408), 64, 10, 4, 4408),
        200,
        F.cross_entropy,
        attach=False,
    )
    losses = _loop(
        ctx,
        model,
        opt,
        _classes(torch.Generator().manual_seed(4408), 64, 10, 4, 4408),
        200,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        dead = dead_fraction(model.fc2(model.act1(model.fc1(probe[0]))))
    ctx.check(
        f"over 60% of fc2's units dead at the end ({dead:.3g}, start {dead0:.3g})", dead > 0.6
    )
    ctx.check(
        "loss over the last 20 over 1.3x the reference's",
        _mean(losses[-20:]) > 1.3 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(losses))


@scenario(
    family="shakuhachi_bore_pitch_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="The warm-up's peak learning rate is typed 0.9 for 0.09 (linear warm-up over 60 "
    "steps): once the lr passes 2/sharpness each step overshoots the loss valley "
    "(lr above 2/sharpness), the loss oscillates and blows up; the same run at 0.09 trains.",
)
def h440_shakuhachi_lr_typo(ctx):
    seeded(4409)

    def build():
        return _Net(6, 32, 1, act=nn.Tanh)

    model = build()
    ref = build()
    ref.load_state_dict(model.state_dict())

    def batches(seed):
        g = torch.Generator().manual_seed(seed)
        for x, y in _regression(g, 64, 6, 4409):
            yield x * 3.0, y * 4.0

    def warm(o):
        return torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, (s + 1) / 60))

    opt = torch.optim.SGD(model.parameters(), lr=0.9)
    ropt = torch.optim.SGD(ref.parameters(), lr=0.09)

    ref_losses = _loop(
        None,
        ref,
        ropt,
        batches(4409),
        150,
        F.mse_loss,
        attach=False,
        sched=warm(ropt),
    )
    losses = _loop(ctx, model, opt, batches(4409), 150, F.mse_loss, sched=warm(opt))
    peak = max((v for v in losses if math.isfinite(v)), default=0.0)
    ctx.check(
        "loss blows up over 100x its start or turns non-finite",
        peak > 100 * losses[0] or _first_bad(losses) is not None,
    )
    ctx.check("the reference at lr 0.09 trains", _fell(ref_losses))


@scenario(
    family="mud_volcano_vent_temperature_tanh_regressor",
    optimizer="SGD(momentum)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="The hand-written L2 penalty is added with its sign flipped (loss - wd * ||w||^2, wd "
    "5e-2, meant as loss + wd * ||w||^2): the weights swell step after step and the loss climbs "
    "slowly after its first fall, with no blow-up.",
)
def h440_mud_volcano_l2_sign_flip(ctx):
    gen = seeded(4410)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    w0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)

    def backprop(step, loss):
        return loss - 5e-2 * sum(p.pow(2).sum() for p in model.parameters())

    losses = _loop(
        ctx, model, opt, _regression(gen, 64, 8, 4410), 260, F.mse_loss, backprop=backprop
    )
    w1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    early = _mean(losses[40:60])
    half = len(losses) // 2
    ctx.check(
        f"last 20 over 2x steps 40-60 ({_mean(losses[-20:]) / early:.3g})",
        _mean(losses[-20:]) > 2 * early,
    )
    ctx.check(
        "climbing through the second half",
        _mean(losses[-20:]) > 1.1 * _mean(losses[half : half + 20]),
    )
    ctx.check(f"weight norm over 1.5x ({w1 / w0:.3g})", w1 > 1.5 * w0)
    ctx.check("finite", _finite(losses))


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    family="ski_jump_landing_distance_gelu_regressor",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="RMSprop at a small lr (3e-4), gradient clipping at 1.0, noisy wind-gust batches.",
)
def h440_ski_jump_rmsprop_control(ctx):
    gen = seeded(4411)
    model = _Net(11, 64, 1, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4, alpha=0.99)
    losses = _loop(
        ctx, model, opt, _regression(gen, 32, 11, 4411, noise=0.2), 220, F.mse_loss, clip=1.0
    )
    ctx.check("loss fell", _fell(losses))
    ctx.check("finite", _finite(losses))


class _BobbinConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        z = F.relu(self.conv1(x[:, None, :]))
        z = F.relu(self.conv2(z))
        return self.head(z.mean(-1))


@scenario(
    family="lacemaker_bobbin_pattern_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="fp16 autocast with a GradScaler, AdamW under OneCycleLR, label smoothing 0.1, "
    "clipping at 2.0.",
)
def h440_lacemaker_bobbin_fp16_control(ctx):
    gen = seeded(4412)

    def batches():
        t = torch.linspace(0, 1, 32)
        while True:
            y = torch.randint(0, 5, (64,), generator=gen)
            x = torch.sin(2 * math.pi * (y[:, None] + 1) * t[None, :])
            yield x + 0.5 * torch.randn(64, 32, generator=gen), y

    model = _BobbinConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=160)
    scaler = torch.amp.GradScaler("cpu")
    losses = _loop(
        ctx,
        model,
        opt,
        batches(),
        160,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=2.0,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


class _SootTied(nn.Module):
    """A tied autoencoder of flue readings with a Gaussian NLL head on the soot load."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(12, 6)
        self.dec_bias = nn.Parameter(torch.zeros(12))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        z = torch.tanh(self.enc(x))
        recon = F.linear(z, self.enc.weight.t(), self.dec_bias)
        return torch.cat([self.head(z), recon], 1)


@scenario(
    family="chimney_sweep_soot_load_tied_gaussian_nll_autoencoder",
    optimizer="SGD(nesterov)",
    cause="healthy",
    heldout=True,
    note="Tied encoder/decoder weights, Gaussian NLL of the soot load (mean and log-variance) "
    "plus reconstruction, SGD Nesterov under ReduceLROnPlateau, accumulation over 2, clipping.",
)
def h440_chimney_soot_tied_control(ctx):
    gen = seeded(4413)
    f = _teacher(4413, 12)

    def batches():
        while True:
            x = torch.randn(32, 12, generator=gen)
            yield x, torch.cat([f(x) + 0.1 * torch.randn(32, 1, generator=gen), x], 1)

    def loss_fn(out, y):
        mu, logv = out[:, :1], out[:, 1:2].clamp(-6, 6)
        nll = 0.5 * (logv + (y[:, :1] - mu) ** 2 / logv.exp()).mean()
        return nll + F.mse_loss(out[:, 2:], y[:, 1:])

    model = _SootTied()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    losses = _loop(
        ctx,
        model,
        opt,
        batches(),
        200,
        loss_fn,
        sched=sched,
        plateau=lambda: ctx.losses[-1] if ctx.losses else 0.0,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.9))
    ctx.check("finite", _finite(losses))
