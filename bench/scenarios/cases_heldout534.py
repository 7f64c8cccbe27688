"""Held-out set 534 (``h534_``), INCOMPLETE: 4 of the planned 10 faults, no controls yet; not
registered in ``scenarios/__init__.py`` and not in the README table.

Faults present: a water-gilding burnish-time SiLU regressor resumed at step 120 without its Adam
or scheduler state (a one-off loss spike it recovers from, Adam); a tufa-tower growth tanh
regressor whose hand-written decoupled weight decay has its sign flipped (weights grow, the loss
climbs slowly, RMSprop); a blowhole spout-height mixture-density network whose log-likelihood
takes log of a sum of densities with no logsumexp (a storm batch underflows to log 0, AdamW); a
moulin meltwater-discharge GELU regressor under fp16 autocast + GradScaler fed hydrostatic
pressure in pascals after a config change (Adamax).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


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
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step, loss)``. Stops after a non-finite
    loss once ``ctx.step`` has seen it."""
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
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
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


# -- 1. loss spike: resumed without the Adam state ------------------------------------------------


@scenario(
    family="gilding_water_gild_burnish_time_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Water-gilding burnish-time regressor (SiLU MLP on bole moisture, gesso thickness, leaf "
    "karat, room humidity, agate pressure and size age, MSE, Adam, linear lr decay from 1e-2). "
    "The job is resumed at step 120 from a checkpoint that restored the weights but neither the "
    "optimizer nor the scheduler state: Adam's moments restart from zero and the lr from its "
    "peak, the first bias-corrected updates are lr*sign(g) for every weight, the loss spikes "
    "once (over 3x) from an ordinary gradient and the run recovers.",
)
def h534_gilding_adam_state_lost_on_resume(ctx):
    gen = seeded(5341)
    model = _Net(6, 64, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(1.0 - s / 220, 0.01))

    def before(step):
        if step == 120:  # the resume: weights restored, optimizer and scheduler state not
            opt.state.clear()
            sched.last_epoch = 0
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"]

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53410), 220, F.mse_loss, before=before, sched=sched
    )
    pre = _median(losses[100:120])
    ctx.check(
        "loss within 6 steps of the resume over 3x the pre-resume median",
        max(losses[120:127]) > 3 * pre,
    )
    ctx.check(
        "gradient at the resume under 3x its median (no gradient burst)",
        norms[120] < 3 * _median(norms[100:120]),
    )
    ctx.check("recovers: last 20 under 1.5x the pre-resume median", _mean(losses[-20:]) < 1.5 * pre)
    ctx.check("finite", _finite(losses))


# -- 2. loss divergence: L2 penalty with its sign flipped -----------------------------------------


@scenario(
    family="tufa_tower_growth_rate_tanh_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Tufa-tower growth-rate regressor (tanh MLP on lake alkalinity, spring discharge, water "
    "temperature, CO2 degassing and calcium, MSE, RMSprop lr 2e-3). The hand-written decoupled weight "
    "decay (wd 4) is applied as p *= 1 + lr * wd instead of 1 - lr * wd: the weights grow "
    "geometrically, "
    "the net first fits and then the loss climbs slowly, with no jump, to several times its "
    "best.",
)
def h534_tufa_decay_sign_flipped(ctx):
    gen = seeded(5342)
    model = _Net(5, 48, 1, nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    w0 = float(_flat(model).norm())

    decay = [p for n, p in model.named_parameters() if "weight" in n]

    def after(step, loss):
        with torch.no_grad():  # decoupled decay, meant as p *= 1 - lr * wd
            for p in decay:
                p.mul_(1 + 2e-3 * 4.0)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 5, 53420), 260, F.mse_loss, after=after)
    smooth = [_mean(losses[i : i + 10]) for i in range(0, len(losses) - 9)]
    best = min(smooth)
    ctx.check("last 10 over 3x the best 10-step mean", smooth[-1] > 3 * best)
    ctx.check("climb happens after the best (fits first)", smooth.index(best) < len(smooth) - 60)
    ctx.check("weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("finite", _finite(losses))


# -- 3. nonfinite: mixture density network, log of a sum without logsumexp -----------------------


class _Mixture(nn.Module):
    """-log sum_k pi_k N(y; mu_k, sigma_k), written as log of a sum (no logsumexp)."""

    def forward(self, pi_logits, mu, log_sigma, y):
        pi = torch.softmax(pi_logits, -1)
        sigma = log_sigma.exp()
        z = (y[:, None] - mu) / sigma
        dens = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
        return -torch.log((pi * dens).sum(-1))


class _MDN(nn.Module):
    def __init__(self, d_in, hidden=48, k=3):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.pi = nn.Linear(hidden, k)
        self.mu = nn.Linear(hidden, k)
        self.log_sigma = nn.Linear(hidden, k)
        self.mixture = _Mixture()

    def forward(self, x):
        h = self.trunk(x)
        return self.pi(h), self.mu(h), self.log_sigma(h)

    def nll(self, x, y):
        return self.mixture(*self(x), y)


@scenario(
    family="blowhole_spout_height_mdn",
    optimizer="AdamW",
    cause="nonfinite",
    where=("mixture",),
    diverges=110,
    onset=110,
    heldout=True,
    note="Blowhole spout-height mixture-density network (tanh trunk, 3 Gaussian components, "
    "negative log-likelihood, AdamW). The likelihood is written as log(sum_k pi_k N_k) with no "
    "logsumexp: at step 110 a storm batch holds a few genuine spouts far above the fair-weather "
    "ones, every component's density underflows to exactly 0 in float32, log 0 = -inf and the "
    "loss is infinite at step 110.",
)
def h534_blowhole_mdn_log_of_sum(ctx):
    gen = seeded(5343)
    model = _MDN(4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    storm = {}

    def alter(step, x, y):
        if step == 110:
            y = y.clone()
            y[:4] += 40.0
            with torch.no_grad():
                pi_l, mu, ls = model(x)
                z = (y[:, None] - mu) / ls.exp()
                dens = torch.exp(-0.5 * z**2) / (ls.exp() * math.sqrt(2 * math.pi))
                mix = (torch.softmax(pi_l, -1) * dens).sum(-1)
                lse = -torch.logsumexp(
                    torch.log_softmax(pi_l, -1) - 0.5 * z**2 - ls - 0.5 * math.log(2 * math.pi),
                    -1,
                )
            storm["zero"] = bool((mix == 0).any())
            storm["lse_finite"] = bool(torch.isfinite(lse).all())
        return x, y

    ctx.attach(model, opt)
    losses = []
    batches = _readings(gen, 64, 4, 53430, noise=0.2)
    for step in range(200):
        x, y = alter(step, *next(batches))
        loss = model.nll(x, y).mean()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss first non-finite at step 110", first_bad == 110)
    ctx.check("loss fell before the storm", _mean(losses[100:110]) < _mean(losses[:10]) - 0.3)
    ctx.check("a storm sample's mixture density is exactly 0.0", storm.get("zero", False))
    ctx.check("the logsumexp form is finite on the same batch", storm.get("lse_finite", False))


# -- 4. amp overflow: pressure in pascals under fp16 autocast ------------------------------------


class _GeluNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="moulin_meltwater_discharge_fp16_gelu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Moulin meltwater-discharge regressor (GELU MLP on borehole water pressure, surface melt, "
    "air temperature, ice thickness and albedo, MSE, Adamax, fp16 autocast + GradScaler). At "
    "step 90 a config change skips the standardisation of the pressure column, which arrives in "
    "pascals (about 3e5): fc1's fp16 output passes 65504 and overflows to inf (finite in "
    "float32), the loss is non-finite at step 90.",
)
def h534_moulin_fp16_pressure_in_pascals(ctx):
    gen = seeded(5344)
    model = _GeluNet(5)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool(torch.isinf(o).any())))
    )
    losses, fc1_inf = [], []
    batches = _readings(gen, 64, 5, 53440)
    bad_x = None
    for step in range(160):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 0] = 3.0e5 + 2.0e4 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_inf.append(seen["fc1"][1])
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
    ctx.check("loss first non-finite at step 90", first_bad == 90)
    ctx.check("fc1's fp16 output has inf at step 90", len(fc1_inf) > 90 and fc1_inf[90])
    ctx.check("fc1 finite in fp16 before step 90", not any(fc1_inf[:90]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 90", _fell(losses[:90]))
