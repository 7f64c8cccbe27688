"""Held-out set 534 (``h534_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: water-gilding burnish-time regressor resumed without Adam/scheduler state (loss_spike);
tufa-tower growth regressor with its decoupled weight decay sign flipped (loss_divergence,
RMSprop); blowhole spout-height mixture-density network with log of a sum (nonfinite, AdamW);
moulin meltwater regressor fed pascals under fp16 autocast (amp_overflow, Adamax); cordwainer
welt-stitch regressor with a warm-up peak lr typed 10x (sharpness_above_limit, plain SGD); bandy
glide-distance regressor whose fc2 group lr is 0 from a config key typo
(update_ratio_out_of_range, NAdam); loess-bluff slump regressor with one core sample in raw units
(data_outlier, SGD momentum); firn close-off depth regressor with a loss-weight table entry typed
1000x (gradient_spike, ASGD); spinet jack IRNN with identity init scaled 1.1 (exploding_gradients,
SGD Nesterov); sun-cup depth-class classifier with temperature 0.001 (softmax_collapse, Adam).
Controls: ringette pass-zone classifier with FGSM examples in every batch (SGD Nesterov), fumarole
plume-lift Huber regressor (Adagrad, warm-up, clipping), sastrugi BCE classifier (RAdam, param
groups, accumulation, ReduceLROnPlateau).
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


# -- 5. sharpness above limit: learning rate typed 10x, plain SGD ---------------------------------


def _top_hessian_eig(model, loss_fn, x, y, iters=30):
    """Largest Hessian eigenvalue of loss_fn(model(x), y) by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    family="cordwainer_welt_stitch_tension_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=20,
    note="Cordwainer welt-stitch tension regressor (ReLU MLP on awl gauge, thread ply, wax "
    "weight, welt thickness, stitch pitch and leather moisture, MSE, plain SGD, linear warm-up "
    "over 100 steps). The config's peak lr reads 1.5 where the recipe says 0.15: lr times the "
    "top Hessian eigenvalue (power iteration every 10 steps) passes 2 at step 20, the loss "
    "oscillates, then grows and blows up near step 90; the intended peak stays under 2.",
)
def h534_cordwainer_lr_typed_tenfold(ctx):
    gen = seeded(5345)
    model = _Net(6, 48, 1, nn.ReLU)
    batches = _readings(gen, 64, 6, 53450)
    peak = 1.5  # meant 0.15
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    edge = []

    def before(step):
        for group in opt.param_groups:
            group["lr"] = peak * min((step + 1) / 100, 1.0)
        if step % 10 == 0 and step <= 60:
            x, y = next(probe)
            edge.append(opt.param_groups[0]["lr"] * _top_hessian_eig(model, F.mse_loss, x, y, 15))

    probe = _readings(torch.Generator().manual_seed(53451), 64, 6, 53450)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.mse_loss, before=before)
    crossed = next((10 * i for i, v in enumerate(edge) if v > 2), None)
    ctx.check(f"lr x sharpness under 2 at step 0 ({edge[0]:.2f})", edge[0] < 2)
    ctx.check(f"lr x sharpness first past 2 at step 20 ({crossed})", crossed == 20)
    ctx.check("intended peak 0.15 x sharpness at step 0 under 2", 0.15 * edge[0] / 0.015 < 2)
    big = max((v if math.isfinite(v) else float("inf")) for v in losses)
    ctx.check("loss blows up over 100x its first value", big > 100 * losses[0])


# -- 6. update ratio out of range: a param group frozen by a config key typo --------------------


@scenario(
    family="bandy_puck_glide_distance_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Bandy ball glide-distance regressor (ReLU MLP on ice temperature, strike "
    "speed, ball wear, wind and rink grooming age, Huber loss, NAdam with two param groups). The "
    "middle layer's group takes lr = base * cfg.get('fc2_lr_scale', 0.0), and the config spells "
    "the key 'fc2_lr_scael': fc2's learning rate is 0 the whole run, its weights never move, "
    "while fc1 and the head train and the loss still falls a little.",
)
def h534_bandy_group_lr_key_typo(ctx):
    gen = seeded(5346)
    model = _Net(5, 48, 1, nn.ReLU)
    cfg = {"lr": 3e-3, "fc2_lr_scael": 1.0}
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc2.")]
    opt = torch.optim.NAdam(
        [
            {"params": rest, "lr": cfg["lr"]},
            {"params": model.fc2.parameters(), "lr": cfg["lr"] * cfg.get("fc2_lr_scale", 0.0)},
        ]
    )
    fc2_0, fc1_0 = _flat(model.fc2), _flat(model.fc1)
    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 5, 53460), 200, lambda o, y: F.huber_loss(o, y)
    )
    ctx.check("fc2 moved under 1e-6 relative", _rel(_flat(model.fc2), fc2_0) < 1e-6)
    ctx.check("fc1 moved over 5% relative", _rel(_flat(model.fc1), fc1_0) > 0.05)
    ctx.check("fc2 received nonzero gradients", min(norms) > 0)
    ctx.check("finite", _finite(losses))


# -- 7. data outlier: one sample in raw units ---------------------------------------------------


@scenario(
    family="loess_bluff_slump_rate_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Loess-bluff slump-rate regressor (tanh MLP on pore pressure, slope angle, rainfall, "
    "clay fraction, root density and freeze-thaw count, MSE, SGD momentum 0.9, clipping at 5). "
    "One core sample in the shard read at step 100 has its pore pressure in pascals (x 2000 "
    "against the standardised column) and a target logged in mm instead of m: that batch's loss "
    "jumps over 20x and its gradient over 10x; the clip bounds the step and the run recovers.",
)
def h534_loess_core_sample_raw_units(ctx):
    gen = seeded(5347)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == 100:
            x, y = x.clone(), y.clone()
            x[7, 0] = 2000.0
            y[7] = y[7] * 1000.0 + 40.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53470), 200, F.mse_loss, alter=alter, clip=5.0
    )
    pre, pre_g = _median(losses[80:100]), _median(norms[80:100])
    ctx.check("loss at step 100 over 20x the median before", losses[100] > 20 * pre)
    ctx.check("gradient at step 100 over 10x the median before", norms[100] > 10 * pre_g)
    ctx.check("recovers: last 20 under 2x the median before", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 8. gradient spike: a loss-weight table entry typed 1000x -------------------------------------


@scenario(
    family="firn_air_bubble_close_off_depth_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Firn air-bubble close-off depth regressor (SiLU MLP on accumulation rate, surface "
    "temperature, density gradient, grain size and impurity load, MSE plus a smoothness term "
    "whose weight comes from a per-step table, ASGD, clipping at 1). The table's entry for step "
    "100 is typed 300.0 instead of 0.30: the backpropagated loss is 1000x the term for that one "
    "step, the gradient bursts over 50x while the logged data loss is ordinary; the clip "
    "bounds the step.",
)
def h534_firn_loss_weight_table_typo(ctx):
    gen = seeded(5348)
    model = _Net(5, 48, 1, nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    table = [0.3] * 200
    table[100] = 300.0  # meant 0.30

    def backprop(step, loss):
        smooth = sum(p.pow(2).sum() for n, p in model.named_parameters() if "weight" in n)
        return loss + table[step] * 0.1 * smooth

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 53480),
        200,
        F.mse_loss,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("gradient at step 100 over 50x its median", norms[100] > 50 * _median(norms[80:100]))
    ctx.check(
        "logged loss at step 100 under 1.5x its median", losses[100] < 1.5 * _median(losses[80:100])
    )
    ctx.check("finite", _finite(losses))
    ctx.check("trained", _fell(losses, ratio=0.9))


# -- 9. exploding gradients: IRNN with its identity init scaled 1.25 ------------------------------


class _IRNN(nn.Module):
    """h_t = relu(rec(h_{t-1}) + inp(x_t)); regression from the last state."""

    def __init__(self, d_in, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.rec(h) + self.inp(x[:, t]))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _pluck_batches(gen, batch, length):
    while True:
        x = 0.3 * torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh(x[:, -5:, 0].sum(1)) + 0.5 * x[:, -1, 1]
        yield x, y


@scenario(
    family="spinet_jack_pluck_force_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Spinet jack pluck-force sequence model (an IRNN: ReLU recurrent cell with identity "
    "init, over 50 samples of key velocity, quill bend and jack rail position, MSE, SGD "
    "Nesterov momentum 0.9, clipping at 1). The init multiplies the identity by 1.1 (a gain "
    "meant for the input weights): every step through time multiplies the backward signal by "
    "about 1.1, the state gradient at the first time step is over 50x the last's and the raw "
    "gradient norm is over 100x the clip; the clip keeps the run from blowing up, the loss "
    "starts in the hundreds and comes down slowly.",
)
def h534_spinet_irnn_identity_gain(ctx):
    gen = seeded(5349)
    model = _IRNN(3, 32, gain=1.1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ratio = {}

    def after(step, loss):
        if step == 0:
            first, last = model.states[0].grad, model.states[-1].grad
            ratio["r"] = float(first.norm() / last.norm())

    losses, norms = _loop(
        ctx, model, opt, _pluck_batches(gen, 32, 50), 150, F.mse_loss, after=after, clip=1.0
    )
    ctx.check(
        f"state gradient at t=0 over 50x the one at t=49 ({ratio.get('r', 0):.0f})",
        ratio.get("r", 0.0) > 50,
    )
    ctx.check("raw gradient norm at step 0 over 100x the clip", norms[0] > 100)
    ctx.check("finite", _finite(losses))


# -- 10. softmax collapse: temperature divided where it should multiply ---------------------------


class _TempClassifier(nn.Module):
    def __init__(self, d_in, classes, hidden=48, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def features(self, x):
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="sun_cup_snow_hollow_depth_class_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sun-cup snow-hollow depth-class classifier (ReLU MLP on insolation, dust load, air "
    "humidity, wind and snow density, 6 classes, cross-entropy, Adam). The head divides its "
    "logits by a temperature read as 0.001 (the distillation setting, meant for another job) "
    "instead of 1: the logits are 1000x, most rows' largest softmax probability rounds to "
    "exactly 1.0 in float32 (0 for the others) and the wrong rows' losses are huge.",
)
def h534_sun_cup_temperature_thousandth(ctx):
    gen = seeded(5350)
    model = _TempClassifier(5, 6, temperature=0.001)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 5, 6, 53500, spread=1.2)
    saturated = []

    def loss_fn(out, y):
        p = torch.softmax(out.detach(), -1)
        saturated.append(float((p.max(-1).values == 1.0).float().mean()))
        return F.cross_entropy(out, y)

    losses, _ = _loop(ctx, model, opt, batches, 150, loss_fn, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        p1 = torch.softmax(model.head(model.features(x)), -1)
    ctx.check(
        f"rows with max probability exactly 1.0, mean over the run ({_mean(saturated):.2f})",
        _mean(saturated) > 0.3,
    )
    ctx.check("at temperature 1 no row is exactly 1.0", bool((p1.max(-1).values < 1.0).all()))
    ctx.check("finite", _finite(losses))


# -- 11. control: FGSM adversarial training -------------------------------------------------------


@scenario(
    family="ringette_pass_zone_fgsm_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ringette pass-zone classifier (ReLU MLP on skater positions, stick angle, ring speed "
    "and defender gaps, 5 zones, cross-entropy with label smoothing 0.1, SGD Nesterov momentum, "
    "cosine schedule). Adversarial training: each batch is half clean readings, half FGSM "
    "examples (eps 0.4) made against the current weights, so the loss stays high and noisy "
    "and the adversarial half's loss stays well above the clean half's. Healthy control.",
)
def h534_ringette_fgsm_mixed_batches(ctx):
    gen = seeded(5351)
    model = _Net(8, 64, 5, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    batches = _grades(gen, 64, 8, 5, 53510, spread=1.0)
    ctx.attach(model, opt)
    losses, adv_gap = [], []
    for _ in range(200):
        x, y = next(batches)
        xa = x[:32].clone().requires_grad_(True)
        grad_x = torch.autograd.grad(F.cross_entropy(model(xa), y[:32]), xa)[0]
        x_adv = (xa + 0.4 * grad_x.sign()).detach()
        xb, yb = torch.cat([x_adv, x[32:]]), y
        ctx.targets(yb)
        out = model(xb)
        loss = F.cross_entropy(out, yb, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            adv_gap.append(
                float(F.cross_entropy(out[:32], yb[:32]) - F.cross_entropy(out[32:], yb[32:]))
            )
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell", _fell(losses, ratio=0.8))
    ctx.check("adversarial half's loss above the clean half's late", _mean(adv_gap[-20:]) > 0.1)
    ctx.check(f"clean accuracy over 0.8 ({acc:.2f})", acc > 0.8)
    ctx.check("finite", _finite(losses))


# -- 12. control: Huber, warm-up then decay, clipping, noisy batches ------------------------------


@scenario(
    family="fumarole_plume_lift_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fumarole plume-lift regressor (SiLU MLP on vent temperature, gas flux, wind speed, "
    "humidity, SO2 fraction and vent diameter, Huber loss, Adagrad with linear warm-up over 20 "
    "steps then step decay, gradient clipping at 1, noisy field readings). Healthy control.",
)
def h534_fumarole_adagrad_warmup_clip(ctx):
    gen = seeded(5352)
    model = _Net(6, 64, 1, nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / 20, 1.0) * (0.5 ** (s // 80))
    )
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 53520, noise=0.2),
        200,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))


# -- 13. control: BCE with label smoothing, accumulation, ReduceLROnPlateau -----------------------


class _Carve(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="sastrugi_wind_carve_bce_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sastrugi wind-carve classifier (does a ridge form: GELU/tanh MLP on wind speed, snow "
    "temperature, fetch, grain hardness and surface age, BCE with smoothed targets 0.05/0.95, "
    "RAdam with two param groups (head without weight decay), gradient accumulation over 2 "
    "micro-batches, ReduceLROnPlateau on the running loss). Healthy control.",
)
def h534_sastrugi_radam_accumulate_plateau(ctx):
    gen = seeded(5353)
    model = _Carve(5)
    g = torch.Generator().manual_seed(53530)
    w = torch.randn(5, generator=g)
    opt = torch.optim.RAdam(
        [
            {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "weight_decay": 1e-3},
            {"params": model.head.parameters(), "weight_decay": 0.0},
        ],
        lr=1e-2,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    losses = []
    for _ in range(200):
        total = 0.0
        for _micro in range(2):
            x = torch.randn(32, 5, generator=gen)
            y = ((x @ w + 0.5 * x[:, 0] * x[:, 1]) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x), 0.05 + 0.9 * y) / 2
            loss.backward()
            total = total + loss.detach()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
        sched.step(_mean(losses[-10:]))
    ctx.check("loss fell", _fell(losses, ratio=0.85))
    ctx.check("finite", _finite(losses))
