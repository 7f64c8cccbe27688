"""Held-out set 567 (``h567_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: pump-organ bellows-leak BCE classifier whose accumulation normaliser divides by 1e-3 for
one step (gradient_spike, SGD Nesterov); yo-yo string-twist ReLU classifier with Adagrad lr typed
1.5 (loss_of_plasticity, Adagrad); glazier putty-cure crack-count Poisson net whose log-cure-hours
feature meets a pane logged at 0 hours (nonfinite, RAdam); dutar fret gut-tie Huber regressor whose
layer-wise lr decay uses the parameter index for the depth (update_ratio_out_of_range, AdamW, param
groups); kanun mandal-lever pitch regressor fed one batch with two levers in cents instead of
semitones (data_outlier, Adamax); snowkite bar-pressure regressor with its hand-written decoupled
weight decay sign flipped (loss_divergence, ASGD); juggling-club spin-count deep ReLU classifier
initialised with gain 1.45 per layer (exploding_gradients, SGD momentum); hula-hoop orbit-period
tanh regressor whose StepLR gamma is typed 10 instead of 0.1 (sharpness_above_limit, plain SGD);
drystone-waller hearting-volume regressor whose manual loss scale is not undone for one step
(adam_second_moment_poisoned, Adam); double-dutch turn-rate regressor fed turn rate in
milli-rpm under fp16 autocast (amp_overflow, NAdam, GradScaler).
Controls: footbag circle next-kicker pointer network (Adam, warm-up + cosine, clipping, label
smoothing); sheng reed-chord classifier whose head is re-initialised at step 120 as planned with a
fresh warm-up (loss jumps to chance then falls, alarming-looking, RMSprop); unicycle idle-sway
SiLU Huber regressor (RAdam, OneCycleLR, accumulation 2, clipping, noisy targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import digits, grad_norm, scenario, seeded


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
    alter=None,
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt, scaler=scaler)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _digit_stream(gen, batch=64):
    x, y = digits()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


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


def _top_eig(model, loss_fn, x, y, iters=12):
    """Largest Hessian eigenvalue of loss_fn(model(x), y), power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. gradient spike: accumulation normaliser divides by 1e-3 for one step ---------------------


def _leak_batches(gen, batch, d_in, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, (x @ w + 0.3 * torch.randn(batch, generator=gen) > 0).float()


@scenario(
    family="pump_organ_bellows_leak_gelu_bce_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Pump-organ bellows-leak detector (GELU MLP on reservoir pressure, pedal rate, stop "
    "count, wind-chest drop and reed-cell readings, BCE with logits, SGD Nesterov, clipping at "
    "1, two micro-batches accumulated). At step 100 the accumulation counter is reset before the "
    "division, so the normaliser max(count, 1e-3) divides that step's loss by 1e-3 instead of 2: "
    "the backpropagated gradient is about 1000x for one step while the logged loss is ordinary; "
    "clipping holds the update and the run carries on.",
)
def h567_pump_organ_accum_divisor(ctx):
    gen = seeded(5671)
    model = _Net(10, hidden=48, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    batches = _leak_batches(gen, 64, 10, 56710)

    def backprop(step, loss):
        return loss / (1e-3 if step == 100 else 1.0)

    losses, norms = _train(
        ctx,
        model,
        opt,
        batches,
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    base = _median(norms[85:100])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient over 100x at step 100", norms[100] > 100 * base)
    ctx.check("logged loss ordinary at step 100", losses[100] < 2 * _median(losses[85:100]))
    ctx.check("gradient back to normal after", max(norms[102:]) < 10 * base)
    ctx.check("trained", _fell(losses))


# -- 2. loss of plasticity: Adagrad lr typed 1.5 --------------------------------------------------


@scenario(
    family="yoyo_string_twist_state_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Yo-yo string-twist state classifier (ReLU MLP on an 8x8 grid of string-tension "
    "readings along the string, ten twist states; cross-entropy, Adagrad). The lr is typed 1.5 "
    "instead of 0.015: the first large steps push most of the second layer's ReLUs negative on "
    "every input, they never come back, and the run goes on with a fraction of its units.",
)
def h567_yoyo_adagrad_lr_typo(ctx):
    gen = seeded(5672)
    model = _Net(64, hidden=64, out=10)
    opt = torch.optim.Adagrad(model.parameters(), lr=1.5)
    xs, _ = digits()

    def dead():
        with torch.no_grad():
            h = model.act2(model.fc2(model.act1(model.fc1(xs))))
        return (h <= 0).all(0)

    seen = {"init": dead()}

    def after(step, loss):
        if step == 60:
            seen[step] = dead()

    losses, _ = _train(
        ctx, model, opt, _digit_stream(gen), 200, F.cross_entropy, classifier=True, after=after
    )
    end = dead()
    ctx.check("under 10% of act2 dead at init", float(seen["init"].float().mean()) < 0.1)
    ctx.check("over 40% of act2 dead at the end", float(end.float().mean()) > 0.4)
    ctx.check("units dead at step 60 still dead", bool(end[seen[60]].all()) and seen[60].any())
    ctx.check("finite throughout", _finite(losses))


# -- 3. nonfinite: log of cure hours, a pane logged at 0 hours ------------------------------------


class _PuttyCrackNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logcure = _LogFeature()
        self.fc1 = nn.Linear(6, 48)
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        x = torch.cat([self.logcure(x[:, :1]), x[:, 1:]], 1)
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x))))).squeeze(-1)


class _LogFeature(nn.Module):
    def forward(self, x):
        return torch.log(x)


def _putty_batches(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = 0.4 * torch.randn(5, generator=g)
    while True:
        hours = 1.0 + 47.0 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 5, generator=gen)
        rate = torch.exp(0.5 - 0.3 * torch.log(hours[:, 0]) + rest @ w)
        yield torch.cat([hours, rest], 1), torch.poisson(rate, generator=gen)


@scenario(
    family="glazier_putty_cure_crack_count_poisson_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("logcure",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Glazier putty-cure crack-count model (ReLU MLP on log cure hours, linseed share, "
    "whiting grade, bead depth, sash exposure and temperature; Poisson NLL on log rate, RAdam). "
    "The log-cure-hours feature has no clamp; at step 80 a pane glazed that morning is logged "
    "with 0 cure hours, log(0) = -inf goes through fc1 and the loss is non-finite at step 80.",
)
def h567_glazier_putty_log_zero_hours(ctx):
    gen = seeded(5673)
    model = _PuttyCrackNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    seen = []
    model.logcure.register_forward_hook(
        lambda m, i, o: seen.append(bool((~torch.isfinite(o)).any()))
    )

    def alter(step, x, y):
        if step == 80:
            x = x.clone()
            x[3, 0] = 0.0
        return x, y

    losses, _ = _train(
        ctx, model, opt, _putty_batches(gen, 64, 56730), 160, F.poisson_nll_loss, alter=alter
    )
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 80", first_bad == 80)
    ctx.check("logcure output non-finite at step 80", len(seen) > 80 and seen[80])
    ctx.check("logcure finite before step 80", not any(seen[:80]))
    ctx.check("trained before step 80", _mean(losses[70:80]) < 0.8 * _mean(losses[:5]))


# -- 4. update ratio out of range: layer-wise decay with the parameter index as depth -------------


@scenario(
    family="dutar_fret_gut_tie_position_huber_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Dutar fret gut-tie position regressor (SiLU MLP on string length, scale, tie "
    "thickness, neck taper and tuning readings, Huber, AdamW with param groups). The layer-wise "
    "lr decay 0.1 ** depth uses the index of the parameter in named_parameters counted from the "
    "head, not the layer depth: fc1's weight gets lr 1e-3 * 0.1 ** 5 and its bias 0.1 ** 4, so "
    "fc1's updates are about 1e-5 of its weights while the upper layers train normally.",
)
def h567_dutar_layer_decay_index(ctx):
    gen = seeded(5674)
    model = _Net(8, hidden=48, act=nn.SiLU)
    named = list(model.named_parameters())
    groups = []
    for i, (_, p) in enumerate(named):
        depth = len(named) - 1 - i  # the bug: parameter index, not layer depth
        groups.append({"params": [p], "lr": 1e-3 * 0.1**depth})
    opt = torch.optim.AdamW(groups, lr=1e-3, weight_decay=0.01)
    fc1_0, head_0 = _flat(model.fc1), _flat(model.head)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 8, 56740), 200, F.huber_loss)
    fc1_rel = float((_flat(model.fc1) - fc1_0).norm() / fc1_0.norm())
    head_rel = float((_flat(model.head) - head_0).norm() / head_0.norm())
    ctx.check("fc1 moved under 1e-3 relative", fc1_rel < 1e-3)
    ctx.check("head moved over 5% relative", head_rel > 0.05)
    ctx.check("fc1 lr under 1e-6", max(g["lr"] for g in opt.param_groups[:2]) < 1e-6)
    ctx.check("finite throughout", _finite(losses))


# -- 5. data outlier: two mandal levers logged in cents ------------------------------------------


@scenario(
    family="kanun_mandal_lever_pitch_shift_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Kanun mandal-lever pitch-shift regressor (tanh MLP on lever position, course, "
    "bridge height, string gauge, skin tension and room humidity, predicting the shift in "
    "semitones; MSE, Adamax, clipping at 1). At step 110 one batch comes from a luthier's "
    "sheet that logs two levers' shift in cents (x100, input and target): loss and gradient "
    "jump for that batch, clipping holds the update, the run recovers.",
)
def h567_kanun_levers_in_cents(ctx):
    gen = seeded(5675)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def alter(step, x, y):
        if step != 110:
            return x, y
        x, y = x.clone(), y.clone()
        x[:2, 0] *= 100.0
        y[:2] *= 100.0
        return x, y

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 6, 56750), 220, F.mse_loss, alter=alter, clip=1.0
    )
    base = _median(losses[95:110])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over 100x at step 110", losses[110] > 100 * base)
    ctx.check("gradient over 20x at step 110", norms[110] > 20 * _median(norms[95:110]))
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * _mean(losses[95:110]))
    ctx.check("only one bad step", max(losses[112:]) < 10 * base)
    ctx.check("trained before step 110", _mean(losses[100:110]) < 0.7 * _mean(losses[:10]))


# -- 6. loss divergence: decoupled weight decay with its sign flipped -----------------------------


@scenario(
    family="snowkite_bar_pressure_asgd_tanh_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Snowkite bar-pressure regressor (tanh MLP on wind speed, gust factor, line length, "
    "kite area, snow friction and rider mass; MSE, ASGD). The hand-written decoupled weight "
    "decay after each step is p.mul_(1 + lr * wd) instead of 1 - lr * wd (lr 0.01, wd 1.0): the weights grow "
    "steadily, the loss falls first and then climbs slowly with no single jump.",
)
def h567_snowkite_decay_sign(ctx):
    gen = seeded(5676)
    model = _Net(6, hidden=48, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    w0 = float(_flat(model).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.01 * 1.0)

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 6, 56760), 260, F.mse_loss, after=after)
    best = min(losses[:120])
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    jumps = [b / a for a, b in zip(smooth[:-1], smooth[1:], strict=False) if a > 0]
    ctx.check("weights over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 2.5x its best", _mean(losses[-10:]) > 2.5 * best)
    ctx.check("no 10-step mean over 2x the one before", max(jumps) < 2.0)
    ctx.check("fell first", best < 0.7 * _mean(losses[:5]))
    ctx.check("finite throughout", _finite(losses))


# -- 7. exploding gradients: deep ReLU stack initialised with gain 1.45 ---------------------------


class _ClubSpinNet(nn.Module):
    def __init__(self, depth=12, width=64, gain=1.45):
        super().__init__()
        self.depth = depth
        layers = []
        d = 64
        for _ in range(depth):
            lin = nn.Linear(d, width)
            nn.init.normal_(lin.weight, std=gain * math.sqrt(2.0 / d))
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.ReLU()]
            d = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        return self.head(self.body(x))


@scenario(
    family="juggling_club_spin_count_deep_relu_classifier",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("body.0",),
    diverges="auto",
    heldout=True,
    note="Juggling-club spin-count classifier (twelve-layer ReLU MLP on an 8x8 grid of club "
    "gyroscope readings, ten spin counts; cross-entropy, SGD momentum). The init helper "
    "multiplies He's std by a gain of 1.45 meant for a different activation: every layer "
    "multiplies the backward signal by about 1.45, the first layer's gradient is over 20x the "
    "last's, and the run blows up.",
)
def h567_juggling_club_init_gain(ctx):
    gen = seeded(5677)
    model = _ClubSpinNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    outs = {}
    for name in ("0", str(2 * (model.depth - 1))):
        model.body.get_submodule(name).register_full_backward_hook(
            lambda m, gi, go, name=name: outs.setdefault(name, float(go[0].norm())) and None
        )
    losses, _ = _train(ctx, model, opt, _digit_stream(gen), 150, F.cross_entropy, classifier=True)
    ok = [v for v in losses if math.isfinite(v)]
    first, last = outs.get("0", 0.0), outs.get(str(2 * (model.depth - 1)), 1.0)
    ctx.check("first layer's output gradient over 20x the last's at step 0", first > 20 * last)
    ctx.check("loss blows up", not _finite(losses) or max(ok) > 20 * min(ok))


# -- 8. sharpness above limit: StepLR gamma typed 10 ---------------------------------------------


@scenario(
    family="hula_hoop_orbit_period_steplr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=60,
    heldout=True,
    note="Hula-hoop orbit-period regressor (tanh MLP on hoop diameter, mass, hip amplitude, "
    "tilt, rider height and spin rate; MSE, plain SGD). The StepLR meant to cut the lr by 10 "
    "every 60 steps has gamma typed 10: at step 60 the lr jumps from 0.05 to 0.5, lr x the top "
    "Hessian eigenvalue (measured in the run by power iteration) passes 2 and the loss blows up.",
)
def h567_hula_hoop_steplr_gamma(ctx):
    gen = seeded(5678)
    model = _Net(6, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    batches = _readings(gen, 128, 6, 56780)
    probe = next(batches)
    crossed = []

    def after(step, loss):
        if step % 3 == 0 and math.isfinite(loss) and loss < 1e3:
            eig = _top_eig(model, F.mse_loss, *probe)
            if opt.param_groups[0]["lr"] * eig > 2.0:
                crossed.append(step)

    losses, _ = _train(ctx, model, opt, batches, 150, F.mse_loss, after=after, sched=sched)
    ok = [v for v in losses if math.isfinite(v)]
    first_big = next(
        (i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * min(ok)), None
    )
    ctx.check("lr x sharpness past 2 in the run", bool(crossed))
    ctx.check("not past 2 before step 59", bool(crossed) and crossed[0] >= 59)
    ctx.check("loss blows up", first_big is not None)
    ctx.check(
        "crossed before the blow-up",
        bool(crossed) and first_big is not None and crossed[0] <= first_big,
    )
    ctx.check("trained first", _mean(ok[50:60]) < 0.7 * _mean(ok[:5]))


# -- 9. adam second moment poisoned: manual loss scale not undone --------------------------------


@scenario(
    family="drystone_waller_hearting_volume_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Drystone waller's hearting-volume regressor (SiLU MLP on wall height, batter, "
    "through-stone spacing, face-stone size, course count and stone type; MSE, Adam). A manual "
    "static loss scale of 65536 is applied before backward and not divided out for step 100: "
    "the gradient is over 1000x for one step, Adam's second moment fills with it and the "
    "updates afterwards are over 10x smaller; the loss stalls.",
)
def h567_drystone_scale_not_undone(ctx):
    gen = seeded(5679)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    prev = [_flat(model)]
    moves = []

    def backprop(step, loss):
        return loss * (65536.0 if step == 100 else 1.0)

    def after(step, loss):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 56790),
        240,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    ctx.check("gradient over 1000x at step 100", norms[100] > 1000 * _median(norms[85:100]))
    ctx.check(
        "updates over 10x smaller from step 180", _mean(moves[180:240]) * 10 < _mean(moves[85:100])
    )
    ctx.check("loss stalls above its late level", min(losses[105:]) > 0.5 * _mean(losses[90:100]))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("trained before step 100", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))


# -- 10. amp overflow: turn rate in milli-rpm under fp16 autocast ---------------------------------


@scenario(
    family="double_dutch_turn_rate_fp16_gelu_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=70,
    onset=70,
    heldout=True,
    note="Double-dutch rope-turn regressor (GELU MLP on turner rate, rope length, arc height, "
    "jumper cadence, entry angle and rope mass, predicting misses per minute; MSE, NAdam, fp16 "
    "autocast + GradScaler). From step 70 the new handle sensor logs turn rate in milli-rpm "
    "(about 2e5) instead of the standardised column: fc1 runs in fp16, whose range ends at "
    "65504, its output is non-finite (the same batch is finite in float32) and the loss is "
    "non-finite at step 70.",
)
def h567_double_dutch_milli_rpm(ctx):
    gen = seeded(56710)
    model = _Net(6, hidden=64, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    batches = _readings(gen, 64, 6, 567100)
    losses, fc1_bad, bad_x = [], [], None
    for step in range(120):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = 2.0e5 + 2.0e4 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 70", first_bad == 70)
    ctx.check("fc1's fp16 output non-finite at step 70", len(fc1_bad) > 70 and fc1_bad[70])
    ctx.check("fc1 finite before step 70", not any(fc1_bad[:70]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 70", _mean(losses[60:70]) < 0.7 * _mean(losses[:10]))


# -- controls --------------------------------------------------------------------------------------


class _KickPointer(nn.Module):
    """Pointer network: encodes each player in the circle, attends from the kicker's query;
    the attention logits over the input positions are the output."""

    def __init__(self, d_in=5, dim=32):
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(d_in, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.ctx_proj = nn.Linear(dim, dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.dim = dim

    def forward(self, x):
        h = self.enc(x)
        c = torch.relu(self.ctx_proj(h.mean(1)))
        q = self.query(c)[:, None]
        k = self.key(h)
        return (q * k).sum(-1) / math.sqrt(self.dim)


def _circle_batches(gen, batch=64, players=8, seed=567110):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, generator=g)
    while True:
        x = torch.randn(batch, players, 5, generator=gen)
        score = x @ w + 0.3 * torch.randn(batch, players, generator=gen)
        yield x, score.argmax(1)


@scenario(
    family="footbag_circle_next_kicker_pointer_net",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Footbag circle next-kicker pointer network (each of 8 players encoded from stance "
    "angle, facing, distance, stamina and last touch; a query from the pooled circle attends "
    "over the players and the attention logits over input positions are the output; "
    "cross-entropy with label smoothing 0.05, Adam, linear warm-up + cosine, clipping at 1).",
)
def h567_footbag_pointer_control(ctx):
    gen = seeded(56711)
    model = _KickPointer()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    total = 220
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)),
    )
    accs = []

    def loss_fn(out, y):
        accs.append(float((out.argmax(1) == y).float().mean()))
        return F.cross_entropy(out, y, label_smoothing=0.05)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _circle_batches(gen),
        total,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained", _fell(losses))
    ctx.check("points at the right player over 60%", _mean(accs[-20:]) > 0.6)


@scenario(
    family="sheng_pipe_reed_chord_head_reset_classifier",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="Sheng pipe reed-chord classifier (ReLU MLP on an 8x8 grid of reed pressure "
    "readings, ten chords; cross-entropy, RMSprop, linear warm-up). As planned for a relabelled "
    "chord set, at step 120 the head is re-initialised (small normal weights, zero bias, its "
    "optimizer state dropped) and a fresh 20-step warm-up starts: the loss jumps up to chance "
    "(ln 10) and falls again. Alarming-looking, healthy.",
)
def h567_sheng_head_reset_control(ctx):
    gen = seeded(56712)
    model = _Net(64, hidden=64, out=10)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    base = 1e-3

    def before(step):
        if step == 120:
            with torch.no_grad():
                nn.init.normal_(model.head.weight, std=1e-3)
                nn.init.zeros_(model.head.bias)
            for p in model.head.parameters():
                opt.state.pop(p, None)
        s = step if step < 120 else step - 120
        opt.param_groups[0]["lr"] = base * min(1.0, (s + 1) / 20)

    losses, _ = _train(
        ctx, model, opt, _digit_stream(gen), 240, F.cross_entropy, classifier=True, before=before
    )
    ctx.check("trained before the reset", _mean(losses[110:120]) < 0.3 * _mean(losses[:5]))
    ctx.check("jumps to chance at step 120", losses[120] > 0.9 * math.log(10))
    ctx.check("falls again", _mean(losses[-10:]) < 0.3 * losses[120])
    ctx.check("finite throughout", _finite(losses))


@scenario(
    family="unicycle_idle_sway_onecycle_silu_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Unicycle idle-sway regressor (SiLU MLP on crank angle, pedal force, seat height, "
    "wheel size, tyre pressure and rider lean, predicting sway amplitude; Huber, RAdam, "
    "OneCycleLR, two micro-batches accumulated, clipping at 1, noisy targets).",
)
def h567_unicycle_onecycle_control(ctx):
    gen = seeded(56713)
    model = _Net(6, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    steps = 180
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    batches = _readings(gen, 32, 6, 567130, noise=0.3)
    ctx.attach(model, opt)
    losses = []
    for _ in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y)
            (loss / 2).backward()
            logged += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(logged)
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ctx.check("trained", _fell(losses, ratio=0.8))
