"""Held-out set 307 (``h307_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a gyrocopter rotor spin-up regressor built on a GRU cell
written with explicit gates whose recurrent weights were initialised with std 1 (gradients grow
through time), a hydromel fermentation log-normal NLL net whose sigma link is a bare ReLU with
the epsilon dropped (log 0, NaN), a woodstove flue-gas fp16 regressor trained on targets in raw
kelvin (fp16 gradient overflow), an oyster-spat settlement regressor resumed with the optimizer's
state silently not loaded (a one-off loss spike), a pump-track lap-time regressor whose
curriculum weight table returns a percentage for one step (one gradient spike), a skate-blade
hollow-grind regressor fed one shard logged in micrometres (one bad batch), a bouldering dyno
reach classifier whose trunk learning rate was typed 1e-9 (a frozen trunk), a tempeh
incubation tanh regressor whose StepLR gamma was typed 10 for 0.1 (learning rate past the
stability limit), a sugarbush sap-run ReLU classifier with Adagrad's lr typed 1.0 for 0.01 (dead
ReLUs), a wind-turbine icing regressor whose L2 term is subtracted (a slow climb of the loss),
and three controls (a yogurt set-stage bf16 classifier with warm-up and cosine decay, a rennet
curd-firmness Huber regressor with OneCycleLR and clipping, a palm-wine tapping tied
autoencoder with accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=None,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``after(step)`` runs after the optimizer step; ``backprop(step, out, y, loss)``
    returns the loss actually backpropagated; ``amp`` is an autocast dtype or None. Stops after a
    non-finite loss. Returns the step it stopped at."""
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
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            total = backprop(step, out, y, loss) if backprop is not None else loss
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
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05, outputs=1, heavy=False):
    """Standardised readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        e = torch.randn(batch, outputs, generator=gen)
        if heavy:  # Student-t with 3 degrees of freedom
            e = e / torch.sqrt((torch.randn(batch, 1, 3, generator=gen) ** 2).mean(-1))
        y = y + noise * e
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


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


# -- gyrocopter: a GRU cell written with explicit gates, recurrent weights at std 1 -------------


class GateGRUCell(nn.Module):
    """z = sigmoid(x Wz + h Uz), r = sigmoid(x Wr + h Ur), n = tanh(x Wn + r * (h Un)),
    h' = (1 - z) * n + z * h; x2h holds W (3 gates), h2h holds U (3 gates)."""

    def __init__(self, d_in, hidden, recurrent_std=None):
        super().__init__()
        self.hidden = hidden
        self.x2h = nn.Linear(d_in, 3 * hidden)
        self.h2h = nn.Linear(hidden, 3 * hidden)
        std = recurrent_std if recurrent_std is not None else 1.0 / math.sqrt(hidden)
        nn.init.normal_(self.h2h.weight, std=std)
        nn.init.zeros_(self.h2h.bias)

    def forward(self, x, h):
        xz, xr, xn = self.x2h(x).chunk(3, -1)
        hz, hr, hn = self.h2h(h).chunk(3, -1)
        z = torch.sigmoid(xz + hz)
        r = torch.sigmoid(xr + hr)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h


class RotorNet(nn.Module):
    def __init__(self, d_in=4, hidden=48, recurrent_std=None):
        super().__init__()
        self.cell = GateGRUCell(d_in, hidden, recurrent_std)
        self.head = nn.Linear(hidden, 1)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.cell.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _spinups(gen, batch, frames=40, d_in=4):
    """40 frames of 4 standardised readings (airspeed, stick pitch, rotor tilt, wind); the rotor's
    final rpm (standardised) follows the airspeed pushed through the disc over the whole run."""
    while True:
        x = torch.randn(batch, frames, d_in, generator=gen)
        drive = (x[:, :, 0] + 0.5 * x[:, :, 2]).cumsum(1)[:, -1] / math.sqrt(frames)
        y = torch.tanh(drive) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="gyrocopter_rotor_spinup_gate_gru_cell_regressor",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("cell", "cell.h2h"),
    diverges=None,
    heldout=True,
    note="A hand-written GRU cell with explicit gates (cell.x2h and cell.h2h Linear holding the update, reset and candidate gates; h' = (1-z) n + z h) unrolled over 40 frames of 4 standardised readings of a gyrocopter's take-off roll (airspeed, stick pitch, rotor tilt, wind), head on the last state regressing the rotor's final rpm (standardised). RMSprop at 1e-3, MSE, 150 steps. The init helper was copied from a script that used normal_(std=1.0) for embeddings and applied to the recurrent weights (meant: std 1/sqrt(hidden) = 0.14): the recurrence runs in the chaotic regime, and the loss gradient with respect to the first frame's state is over 20x that at the last frame's state (gradients grow backwards through time) throughout the run; the loss does not come down like a healthy init's.",
)
def h307_gyrocopter_gru_recurrent_std_one(ctx: Context) -> None:
    gen = seeded(30701)
    model = RotorNet(recurrent_std=1.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ratios: list[float] = []
    ctx.attach(model, opt)
    batches = _spinups(gen, 32)
    for step in range(150):
        x, y = next(batches)
        out = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        if step % 10 == 0:
            first = float(model.states[0].grad.norm())
            last = float(model.states[-1].grad.norm())
            ratios.append(first / max(last, 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("the first state's gradient is over 20x the last's at step 0", ratios[0] > 20)
    ctx.check(
        "the first state's gradient is over 20x the last's on most checks",
        sum(r > 20 for r in ratios) > len(ratios) / 2,
    )
    healthy = RotorNet()
    x, y = next(_spinups(torch.Generator().manual_seed(7), 32))
    F.mse_loss(healthy(x), y).backward()
    h_ratio = float(healthy.states[0].grad.norm()) / float(healthy.states[-1].grad.norm())
    ctx.check("a 1/sqrt(hidden) init's ratio is far smaller", h_ratio * 10 < ratios[0])


# -- hydromel: log-normal NLL with a bare ReLU sigma link ---------------------------------------


class FermentNet(nn.Module):
    """fc1 -> act1 -> (mu_head: mean of log days to dryness, sigma_head -> sigma_link: its
    spread)."""

    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.mu_head = nn.Linear(hidden, 1)
        self.sigma_head = nn.Linear(hidden, 1)
        self.sigma_link = nn.ReLU()  # meant: softplus(.) + 1e-4, the epsilon dropped in a refactor
        with torch.no_grad():
            self.sigma_head.weight.mul_(0.1)
            self.sigma_head.bias.fill_(0.5)

    def forward(self, x):
        h = self.act1(self.fc1(x))
        return torch.cat([self.mu_head(h), self.sigma_link(self.sigma_head(h))], -1)


def _lognormal_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + (torch.log(y) - mu) ** 2 / (2 * sigma**2)).mean()


def _musts(gen, batch, seed):
    """8 standardised readings of a mead must (honey gravity, yeast pitch, nutrient, temperature,
    pH) and the days until the gravity stops dropping: log-normal, spread 0.05 in the log."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        logd = 2.5 + 0.4 * torch.tanh(x @ w / math.sqrt(8))
        yield x, torch.exp(logd + 0.05 * torch.randn(batch, generator=gen))


@scenario(
    family="hydromel_fermentation_days_lognormal_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("sigma_link", "sigma_head"),
    diverges=47,
    heldout=True,
    note="A SiLU net (fc1, act1, mu_head, sigma_head through sigma_link) predicting how many days a hydromel (mead) must ferments before its gravity stops dropping, as a log-normal, from 8 standardised readings (honey gravity, yeast pitch, nutrient, temperature, pH); Adam at 1e-2, the log-normal NLL written by hand (log sigma + (log y - mu)^2 / 2 sigma^2), 300 steps. A refactor turned `softplus(s) + 1e-4` into a bare nn.ReLU: the true spread is small (0.05), the fit drives sigma_head's output down, and once one row's pre-activation crosses 0 its sigma is exactly 0: log 0 is -inf and 0/0 or x/0 follows, so the loss is NaN (or inf) from that step.",
)
def h307_hydromel_relu_sigma_link(ctx: Context) -> None:
    gen = seeded(30702)
    model = FermentNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    zeros: list[int] = []

    def alter(step, x, y):
        with torch.no_grad():
            zeros.append(int((model(x)[:, 1] == 0).sum()))
        return x, y

    stop = _train(ctx, model, opt, _musts(gen, 64, seed=702), 300, _lognormal_nll, alter=alter)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite at some step", bad is not None)
    ctx.check("the run stopped at the first non-finite loss", bad == stop)
    ctx.check("the first non-finite loss is at step 47", bad == 47)
    ctx.check("a row's sigma was exactly 0 at that step", bad is not None and zeros[bad] > 0)
    ctx.check("the loss fell before it", bad is not None and _fell(ctx.losses[:bad], k=5))


# -- woodstove: flue-gas temperatures in raw kelvin under fp16 autocast --------------------------


def _flue(gen, batch, seed):
    """10 standardised readings of a woodstove (air-wash setting, log moisture, load, draft) and
    the flue-gas temperature in kelvin (420-780): the target normaliser was never fitted."""
    base = _readings(gen, batch, 10, seed=seed, noise=0.05)
    while True:
        x, y = next(base)
        yield x, 600.0 + 120.0 * y


@scenario(
    family="woodstove_flue_gas_kelvin_fp16_relu_regressor",
    optimizer="SGD momentum",
    cause="amp_overflow",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a woodstove's flue-gas temperature from 10 standardised readings (air-wash setting, log moisture, load, draft), fp16 autocast with a torch.amp.GradScaler (init scale 65536), SGD momentum 0.9 at 1e-3, MSE, clipping at 1.0 after unscale_, 150 steps. The targets come in raw kelvin (420-780) because the target normaliser's fit() was skipped when the config switched datasets: the MSE's gradient at the head's fp16 output, about 2*600/32 per row times the loss scale, overflows fp16; the scaler skips step after step and halves its scale, over 30x down, before the scaled gradients fit.",
)
def h307_woodstove_raw_kelvin_fp16(ctx: Context) -> None:
    gen = seeded(30703)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    _train(
        ctx,
        model,
        opt,
        _flue(gen, 32, seed=703),
        150,
        F.mse_loss,
        scaler=scaler,
        amp=torch.float16,
        clip=1.0,
    )
    sc = ctx.scales
    skipped = sum(1 for a, b in zip([65536.0] + sc[:-1], sc, strict=False) if b < a)
    ctx.check("the loss scale fell over 30x", min(sc) < 65536.0 / 30)
    ctx.check("over 4 steps skipped for inf/NaN gradients", skipped > 4)
    ctx.check("the logged loss stayed finite", _finite(ctx.losses))


# -- oyster spat: resumed with the optimizer's state silently not loaded ------------------------

ONSET_SPAT = 120


@scenario(
    family="oyster_spat_settlement_density_gelu_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SPAT,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing oyster-spat settlement density on a cultch bag (standardised) from 12 standardised readings (water temperature, salinity, tide, larval count, shell age), AdamW at 1e-2 (weight decay 0.01), MSE, 260 steps. The job is pre-empted and resumed at step 120: the model's weights load, but the optimizer's state_dict is loaded inside a try/except that swallows a key mismatch, so AdamW starts again with empty moments and a step count of 0. Its first bias-corrected steps move every weight by about the full learning rate, the loss jumps over 3x on an ordinary batch with an ordinary gradient, and the run recovers within some tens of steps.",
)
def h307_oyster_spat_resume_no_opt_state(ctx: Context) -> None:
    gen = seeded(30704)
    model = Stack(12, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)

    def before(step):
        if step == ONSET_SPAT:
            opt.state.clear()

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=704, noise=0.05),
        260,
        F.mse_loss,
        before=before,
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_SPAT - 10 : ONSET_SPAT])
    peak = max(ls[ONSET_SPAT : ONSET_SPAT + 5])
    ctx.check("the loss jumped over 3x within 5 steps of the resume", peak > 3 * pre)
    ctx.check(
        "the gradient on the resume step is ordinary",
        g[ONSET_SPAT] < 3 * _median(g[ONSET_SPAT - 20 : ONSET_SPAT]),
    )
    ctx.check("the loss recovered", _mean(ls[-10:]) < 1.5 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- pump track: a curriculum weight table returns a percentage for one step ---------------------

ONSET_PUMP = 90


@scenario(
    family="pump_track_lap_time_nesterov_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PUMP,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a BMX pump-track lap time (standardised) from 10 standardised readings (roller spacing, berm angle, rider mass, pump cadence), SGD Nesterov momentum 0.9 at 1e-2, MSE, clipping at 1.0, 180 steps. The loss weight comes from a curriculum table keyed by epoch; the entry for the epoch that starts at step 90 was written as a percentage (100) where every other entry is a fraction (1.0), so step 90 backpropagates 100x the loss on an ordinary batch (the logged loss is unweighted and ordinary). Clipping bounds the step and the run goes on training.",
)
def h307_pump_track_percent_loss_weight(ctx: Context) -> None:
    gen = seeded(30705)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss):
        return loss * (100.0 if step == ONSET_PUMP else 1.0)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=705),
        180,
        F.mse_loss,
        clip=1.0,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_PUMP - 20 : ONSET_PUMP])
    ctx.check("the gradient at step 90 is over 50x the usual", g[ONSET_PUMP] > 50 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_PUMP + 1 : ONSET_PUMP + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on step 90's batch is ordinary",
        ls[ONSET_PUMP] < 2.0 * _mean(ls[ONSET_PUMP - 10 : ONSET_PUMP]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- skate blade: one shard's hollow depths logged in micrometres ------------------------------

ONSET_SKATE = 110


@scenario(
    family="skate_blade_hollow_grind_depth_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SKATE,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the hollow depth an ice-skate sharpener's pass leaves in the blade (standardised) from 10 standardised readings (wheel radius of hollow, blade steel, pass speed, dressing age), plain SGD at 2e-2, MSE, clipping at 1.0, 220 steps. One shop's export logged the depth in micrometres instead of millimetres; its rows land in the batch of step 110 (8 of 64 rows with targets 1000x), so that one batch's loss is enormous; clipping bounds the step and the run recovers.",
)
def h307_skate_blade_micrometre_shard(ctx: Context) -> None:
    gen = seeded(30706)
    model = Stack(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2)

    def alter(step, x, y):
        if step == ONSET_SKATE:
            y = y.clone()
            y[:8] = y[:8] * 1000.0
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=706),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_SKATE - 10 : ONSET_SKATE])
    ctx.check("the loss on step 110's batch is over 100x the usual", ls[ONSET_SKATE] > 100 * pre)
    ctx.check(
        "the gradient at step 110 is over 20x the usual",
        g[ONSET_SKATE] > 20 * _median(g[ONSET_SKATE - 20 : ONSET_SKATE]),
    )
    ctx.check("the loss recovered", _mean(ls[-10:]) < 1.5 * pre)
    ctx.check("the loss fell", _fell(ls[:ONSET_SKATE]))


# -- bouldering: the trunk's learning rate typed 1e-9 ------------------------------------------


@scenario(
    family="bouldering_dyno_catch_two_group_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying how a climber's dyno on a boulder problem ends (5 kinds: stuck, one-hand catch, swing-off, short, overshoot) from 12 standardised readings (hold spacing, wall angle, crouch depth, push speed), Adamax with two param groups (trunk fc1 and fc2, head), cross-entropy, 200 steps. The trunk's lr was meant to be 1e-3 (head 1e-2) but was typed 1e-9 in the YAML: the trunk's weights move by under 1e-5 of their norm over the whole run while the head trains alone on random features.",
)
def h307_bouldering_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(30707)
    model = Stack(12, 64, out=5)
    opt = torch.optim.Adamax(
        [
            {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": 1e-9},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    trunk0 = torch.cat([_flat(model.fc1), _flat(model.fc2)])
    head0 = _flat(model.head)
    _train(ctx, model, opt, _kinds(gen, 64, 12, 5, seed=707), 200, F.cross_entropy, classifier=True)
    trunk1 = torch.cat([_flat(model.fc1), _flat(model.fc2)])
    rel_trunk = float((trunk1 - trunk0).norm() / trunk0.norm())
    rel_head = float((_flat(model.head) - head0).norm() / head0.norm())
    ctx.check("the trunk moved by under 1e-5 of its norm", rel_trunk < 1e-5)
    ctx.check("the head moved by over 10% of its norm", rel_head > 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- tempeh: StepLR gamma typed 10 for 0.1 -----------------------------------------------------


def _sharpness(model, x, y, iters=20):
    """Top Hessian eigenvalue of the MSE on (x, y) by power iteration."""
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((a * a).sum() for a in v))
        v = [a / norm for a in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="tempeh_incubation_core_temperature_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=60,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the core temperature a tempeh incubation tray reaches at 24 h (standardised) from 10 standardised readings (bean moisture, starter dose, tray depth, room temperature), plain SGD at 0.05, MSE, 200 steps, with a StepLR every 60 steps whose gamma was typed 10 for 0.1: the learning rate goes up 10x at step 60 and again at step 120, lr x sharpness crosses 2, and the loss blows up.",
)
def h307_tempeh_steplr_gamma_ten(ctx: Context) -> None:
    gen = seeded(30708)
    model = Stack(10, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)
    px, py = next(_readings(torch.Generator().manual_seed(8), 256, 10, seed=708))
    sharp: dict[int, float] = {}

    def before(step):
        if step % 5 == 0:
            sharp[step] = opt.param_groups[0]["lr"] * _sharpness(model, px, py)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=708),
        200,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    low = min(ls[:60])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    crossed = [s for s, v in sorted(sharp.items()) if v > 2.0]
    ctx.check(
        "lr x sharpness was under 2 before step 60", max(sharp[s] for s in sharp if s < 60) < 2
    )
    ctx.check("the loss blew up (over 100x its low or non-finite)", blow is not None)
    ctx.check(
        "lr x sharpness passed 2 before the blow-up",
        bool(crossed) and blow is not None and crossed[0] <= blow,
    )
    ctx.check("lr x sharpness first passed 2 at step 60", bool(crossed) and crossed[0] == 60)
    ctx.check("the loss fell before step 60", _fell(ls[:60], k=5))


# -- sugarbush: Adagrad's lr typed 1.0 for 0.01 -------------------------------------------------


def _dead(h: torch.Tensor) -> float:
    return float((h <= 0).all(0).float().mean())


def _sap_days(gen, batch, seed):
    """12 readings of a sugarbush day as the logger writes them (night low and day high in
    Fahrenheit, snowpack in cm, ...: around 30, spread about 8) and the sap run (4 kinds)."""
    base = _kinds(gen, batch, 12, 4, seed=seed)
    while True:
        x, y = next(base)
        yield 30.0 + 8.0 * x, y


@scenario(
    family="sugarbush_sap_run_day_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying a sugarbush day's sap run (4 kinds: none, light, good, heavy) from 12 logger readings in their own units (night low and day high in Fahrenheit, snowpack in cm, tap age, sunshine: values around 30), Adagrad, cross-entropy, 200 steps. The lr was meant to be 1e-2 and was typed 1.0: Adagrad's first steps move every weight and bias by about the full lr, on inputs of size 30, and most of fc2's ReLUs are pushed negative on every input; dead, they get no gradient and never come back (over 80% of fc2's units dead from step 50 on).",
)
def h307_sugarbush_adagrad_lr_one(ctx: Context) -> None:
    gen = seeded(30709)
    model = Stack(12, 64, out=4)
    fresh = Stack(12, 64, out=4)
    opt = torch.optim.Adagrad(model.parameters(), lr=1.0)
    probe = next(_sap_days(torch.Generator().manual_seed(9), 512, seed=709))[0]
    dead: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                dead.append(_dead(model.features(probe)))

    _train(
        ctx,
        model,
        opt,
        _sap_days(gen, 64, seed=709),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    with torch.no_grad():
        d0 = _dead(fresh.features(probe))
    ctx.check("over 80% of fc2's units dead from step 50 on", min(dead[5:]) > 0.8)
    ctx.check("an untrained init has far fewer dead", d0 < min(dead[5:]) - 0.2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- wind turbine: the L2 term subtracted ------------------------------------------------------


@scenario(
    family="wind_turbine_blade_icing_power_deficit_silu_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the power a wind turbine loses to blade icing (standardised) from 10 standardised readings (air temperature, humidity, wind speed, rotor speed, pitch), NAdam at 3e-3, MSE plus an explicit L2 penalty 1e-2 * sum(w^2) over the weights, 300 steps. A merge turned `loss + l2` into `loss - l2`: the penalty rewards large weights, which grow steadily; the loss falls at first and then climbs slowly, its 30-step mean to over 3x its low (each 30-step mean under 3x the one before), finite, with no single event.",
)
def h307_wind_turbine_l2_sign_flip(ctx: Context) -> None:
    gen = seeded(30710)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    w0 = float(torch.sqrt(sum((w.detach() ** 2).sum() for w in weights)))

    def backprop(step, out, y, loss):
        return loss - L2_WIND * sum((w**2).sum() for w in weights)

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=710), 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    w1 = float(torch.sqrt(sum((w.detach() ** 2).sum() for w in weights)))
    means = [_mean(ls[i : i + 30]) for i in range(0, len(ls), 30)]
    ctx.check("the loss fell first (30-step means)", min(means) < 0.7 * means[0])
    ctx.check("the 30-step mean loss climbed to over 3x its low", means[-1] > 3 * min(means))
    ctx.check(
        "the climb is slow: each 30-step mean under 3x the one before",
        all(b < 3 * a for a, b in zip(means, means[1:], strict=False)),
    )
    ctx.check("the weights grew over 2x", w1 > 2 * w0)
    ctx.check("finite throughout", _finite(ls))


L2_WIND = 1e-2


# -- controls -----------------------------------------------------------------------------------


class SetStageNet(nn.Module):
    """A GELU classifier with LayerNorm: fc1 -> norm1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in=12, hidden=64, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm1 = nn.LayerNorm(hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.norm1(self.fc1(x))))))


@scenario(
    family="yogurt_set_stage_bf16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU classifier with a LayerNorm (fc1, norm1, act1, fc2, act2, head) telling a yogurt batch's set stage (5 kinds: liquid, early gel, set, over-set, whey-off) from 12 standardised readings (pH, temperature, culture dose, milk solids, viscosity), bf16 autocast, AdamW at 3e-3 (weight decay 0.05 on the weights, none on biases and the norm: two param groups), a LambdaLR with linear warm-up over 25 steps then cosine decay to 220, label smoothing 0.1, clipping at 1.0, 220 steps.",
)
def h307_yogurt_bf16_warmup_cosine(ctx: Context) -> None:
    gen = seeded(30711)
    model = SetStageNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    rest = [
        p for n, p in model.named_parameters() if not (n.endswith("weight") and "norm" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )

    def shape(s):
        if s < 25:
            return (s + 1) / 25
        return 0.5 * (1 + math.cos(math.pi * (s - 25) / 195))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, seed=711, noise=0.45),
        220,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
        amp=torch.bfloat16,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="rennet_curd_set_firmness_onecycle_huber_regressor",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the firmness of a cheesemaker's curd at cutting time (standardised) from 10 standardised readings (rennet dose, milk temperature, calcium chloride, acidity, stirring), noisy Student-t targets, SGD Nesterov momentum 0.9 with OneCycleLR (peak 5e-2), Huber loss, clipping at 1.0, batches of 32, 250 steps.",
)
def h307_rennet_onecycle_huber(ctx: Context) -> None:
    gen = seeded(30712)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-2, total_steps=250)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=712, noise=0.2, heavy=True),
        250,
        nn.HuberLoss(),
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, k=20, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


class TiedAutoencoder(nn.Module):
    """enc (Linear) -> act -> bottleneck, decoded with enc's weight transposed (tied) plus
    dec_bias."""

    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _tappings(gen, batch, seed, d_in=16, rank=4):
    """16 standardised readings of a palm-wine tapping (sap flow at 8 hours, sugar, yeast,
    temperature...) lying near a 4-dimensional manifold, reconstructed by the autoencoder."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(rank, d_in, generator=g) / math.sqrt(rank)
    while True:
        z = torch.randn(batch, rank, generator=gen)
        x = torch.tanh(z) @ mix + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="palm_wine_tapping_tied_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight autoencoder (enc Linear 16 -> 6, tanh, decoded with enc.weight transposed plus dec_bias) compressing 16 standardised readings of a palm-wine tapping (sap flow, sugar, yeast, temperature over the day), RAdam at 1e-2, MSE reconstruction, accumulation over 2 micro-batches, ReduceLROnPlateau (factor 0.5, patience 15), 200 steps.",
)
def h307_palm_wine_tied_autoencoder(ctx: Context) -> None:
    gen = seeded(30713)
    model = TiedAutoencoder()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _tappings(gen, 32, seed=713),
        200,
        F.mse_loss,
        sched=sched,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.8))
    ctx.check("finite throughout", _finite(ctx.losses))
