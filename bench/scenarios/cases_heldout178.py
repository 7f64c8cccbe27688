"""Held-out set 178 (``h178_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a needle-ice heave Gaussian NLL regressor with an RMSNorm
written without epsilon, a St Elmo's fire corona detector with a focal-loss prior bias applied to
every layer, a hurling sliotar carry regressor with gradient accumulation and a gradient-noise
probe that forgets to zero its gradients, a pumice-raft drift regressor fed one decimal-comma
shard, a penitente ice-spike GRU with a recurrent init std missing its 1/sqrt(hidden), a crumhorn
reed-pressure tanh MLP whose learning rate is linearly scaled twice, a canoe-polo possession
LSTM whose param-group map still names the renamed recurrent layer, a brinicle growth regressor
under fp16 autocast fed pressures in pascals, a qanun pluck 1-D conv pitch tracker whose
accumulation tail sums its loss, a sackbut slide-phrase attention classifier at an SGD recipe's
learning rate, and three controls (a Hardanger-fiddle drone GRU classifier with label smoothing,
an fp16 urushi lacquer-cure regressor with accumulation, a tambour-stitch 1-D conv tagger).

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
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
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
    before=None,
    alter=None,
    after_backward=None,
    watch=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
):
    """The file's training loop: ``accumulate`` micro-batches a step, the logged loss is the
    micro-batches' mean; ``before(step)`` runs first, ``alter(step, x, y)`` changes a batch,
    ``after_backward(step)`` runs between the last backward and the optimizer step,
    ``watch(step, out, x, y)`` records; stops after logging a NaN loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        logged = 0.0
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
            if scaler is not None:
                scaler.scale(loss / accumulate).backward()
            else:
                (loss / accumulate).backward()
            logged += float(loss.detach()) / accumulate
        if after_backward is not None:
            after_backward(step)
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
                sched.step(logged)
            else:
                sched.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
        if math.isnan(logged):
            break


def _gauges(gen, batch, d_in, seed, noise=0.05):
    """Standardised gauge readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        s = x @ w / math.sqrt(d_in)
        y = torch.tanh(s) + 0.5 * torch.cos(1.3 * x @ v / math.sqrt(d_in)) - 0.3
        yield x, y + noise * torch.randn(batch, generator=gen)


def _tracks(gen, batch, length, d_in, seed, classes=None, noise=0.3):
    """Sequences of readings: a drifting latent seen through a random projection, with a
    regression target (the latent's end value) or a class (which third it ends in)."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(2, d_in, generator=g)
    while True:
        steps = 0.25 * torch.randn(batch, length, 2, generator=gen)
        latent = steps.cumsum(1)
        x = latent @ proj + noise * torch.randn(batch, length, d_in, generator=gen)
        end = latent[:, -1, 0] - 0.5 * latent[:, -1, 1]
        if classes is None:
            yield x, end
        else:
            yield x, torch.bucketize(end, torch.tensor([-0.6, 0.6]))


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=30) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
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


# -- needle ice: an RMSNorm written without epsilon meets the zero-padded tail batch ---------------


class RMSNormNoEps(nn.Module):
    """x / rms(x) * gain, written from the paper's formula without the epsilon."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.finite = True

    def forward(self, x):
        out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True)) * self.weight
        self.finite = bool(torch.isfinite(out).all())
        return out


class NeedleIceNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.norm_in = RMSNormNoEps(d_in)
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.norm_in(x)))))
        return self.mean_head(h).squeeze(-1), F.softplus(self.var_head(h)).squeeze(-1) + 1e-4


NEEDLE_FULL = 90  # full batches in an epoch of 5800 nights; the 91st holds 40 and 24 pads


@scenario(
    family="needle_ice_heave_rmsnorm_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("norm_in",),
    diverges=NEEDLE_FULL,
    heldout=True,
    onset=NEEDLE_FULL,
    note="A SiLU MLP with mean and variance heads predicting overnight needle-ice heave of a "
    "trail surface from 10 soil-temperature, moisture and radiation readings, Gaussian NLL "
    "masked per row, Adamax at 2e-3. The input layer is an RMSNorm written from the paper's "
    "formula as x * rsqrt(mean(x^2)) * g, without the epsilon. The loader keeps a fixed "
    "batch shape by padding the epoch's short last batch (40 of 64 nights) with zero rows "
    "that the loss masks out; at step 90 the padded rows reach the norm: rsqrt(0) = inf, "
    "0 * inf = NaN, and the masked sum (NaN * 0 = NaN) makes the loss NaN.",
)
def h178_needle_ice_rmsnorm_no_eps(ctx: Context) -> None:
    gen = seeded(17801)
    model = NeedleIceNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    source = _gauges(gen, 5800, 10, seed=1)
    xs, ys = next(source)

    def epoch():
        while True:
            order = torch.randperm(len(ys), generator=gen)
            for i in range(0, len(ys), 64):
                idx = order[i : i + 64]
                pad = 64 - len(idx)
                x = torch.cat([xs[idx], torch.zeros(pad, 10)])
                y = torch.cat([ys[idx], torch.zeros(pad)])
                mask = torch.cat([torch.ones(len(idx)), torch.zeros(pad)])
                yield x, y, mask

    batches = epoch()
    finite_norm, padded = [], []
    ctx.attach(model, opt)
    for _ in range(140):
        x, y, mask = next(batches)
        padded.append(int((mask == 0).sum()))
        mu, var = model(x)
        finite_norm.append(model.norm_in.finite)
        nll = 0.5 * (torch.log(var) + (y - mu) ** 2 / var)
        loss = (nll * mask).sum() / mask.sum()
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 90", _finite(ls[:NEEDLE_FULL]) and len(ls) > NEEDLE_FULL)
    ctx.check("first non-finite loss at step 90", _first_bad(ls) == NEEDLE_FULL)
    ctx.check("batch 90 carried zero-padded rows", padded[NEEDLE_FULL] > 0)
    ctx.check(
        "norm_in's output first non-finite at step 90",
        all(finite_norm[:NEEDLE_FULL]) and not finite_norm[NEEDLE_FULL],
    )
    ctx.check(
        "loss fell by half a nat before the padded batch", _mean(ls[80:90]) < _mean(ls[:10]) - 0.5
    )


# -- St Elmo's fire: a focal-loss prior bias applied to every Linear ------------------------------

ELMO_PRIOR = 0.01


@scenario(
    family="st_elmos_fire_corona_detector",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("fc1", "act1", "fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) flagging St Elmo's fire on a ship's mast from 16 "
    "field-mill, humidity and wind readings, BCE with logits, Adagrad at 5e-2. The recipe "
    "initialises the output bias to the rare-event prior, -log((1 - pi) / pi) with pi = 0.01 "
    "(the focal-loss trick), but the helper was applied with model.apply to every nn.Linear: "
    "both hidden layers get bias -4.6, eight standard deviations below their pre-activations, "
    "so every hidden ReLU is off for every reading from the first step, passes no gradient, "
    "and never comes back; only the head's bias learns the base rate.",
)
def h178_st_elmo_prior_bias_everywhere(ctx: Context) -> None:
    gen = seeded(17802)
    model = Stack(16, hidden=64, act=nn.ReLU)

    def prior_init(m):
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, -math.log((1 - ELMO_PRIOR) / ELMO_PRIOR))

    model.apply(prior_init)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(16, generator=g)

    def readings():
        while True:
            x = torch.randn(64, 16, generator=gen)
            p = torch.sigmoid(2.5 * x @ w / 4 + 0.8 * x[:, 0] * x[:, 1] - 2.0)
            yield x, (torch.rand(64, generator=gen) < p).float()

    start = model.fc1.weight.detach().clone()
    dead1, dead2, pos = [], [], []

    def watch(step, out, x, y):
        with torch.no_grad():
            h1 = model.act1(model.fc1(x))
            dead1.append(dead_fraction(h1))
            dead2.append(dead_fraction(model.act2(model.fc2(h1))))
        pos.append(float(y.mean()))

    _loop(ctx, model, opt, readings(), 200, F.binary_cross_entropy_with_logits, watch=watch)
    rate = _mean(pos)
    base = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    ctx.check("every fc1 unit dead at the first step", dead1[0] == 1.0)
    ctx.check("every fc1 and fc2 unit still dead at the end", dead1[-1] == 1.0 and dead2[-1] == 1.0)
    ctx.check(
        "fc1's weights never moved", float((model.fc1.weight.detach() - start).abs().max()) == 0.0
    )
    ctx.check("loss stuck at the base rate's entropy", _mean(ctx.losses[-30:]) > 0.95 * base)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- hurling: a gradient-noise-scale probe that forgets to zero its gradients ----------------------

HURLING_PROBE = 100


@scenario(
    family="hurling_sliotar_carry_regressor",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=HURLING_PROBE,
    note="A tanh MLP (nn.Tanh modules) predicting how far a struck sliotar carries from 10 "
    "hurley-speed, strike-angle and wind readings, MSE, SGD Nesterov (momentum 0.9) at 2e-2, "
    "gradient accumulation over 4 micro-batches of 16. At step 100 a gradient-noise-scale "
    "probe (McCandlish et al.) runs once between the step's last backward and "
    "optimizer.step(): it calls backward on 64 micro-batches of 2 samples to measure small-"
    "batch gradient norms, and its model.zero_grad() was commented out while debugging, so "
    "the step applies the sum of 64 extra gradients: one burst, then training goes on.",
)
def h178_hurling_gns_probe_no_zero_grad(ctx: Context) -> None:
    gen = seeded(17803)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    batches = _gauges(gen, 16, 10, seed=3)
    small = _gauges(gen, 2, 10, seed=3)
    probe_norms = []

    def gns_probe(step):
        if step != HURLING_PROBE:
            return
        for _ in range(64):
            x, y = next(small)
            F.mse_loss(model(x), y).backward()
            probe_norms.append(grad_norm(model))
        # model.zero_grad()  # commented out while debugging the probe

    _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        F.mse_loss,
        accumulate=4,
        after_backward=gns_probe,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    before = _median(gn[HURLING_PROBE - 20 : HURLING_PROBE])
    ctx.check(
        "gradient norm at step 100 over 20x the 20 steps before", gn[HURLING_PROBE] > 20 * before
    )
    ctx.check(
        "a single burst: step 100's gradient 5x any of the next 10",
        gn[HURLING_PROBE] > 5 * max(gn[HURLING_PROBE + 1 : HURLING_PROBE + 11]),
    )
    ctx.check(
        "gradient norm back under 2x by steps 120-140",
        _median(gn[HURLING_PROBE + 20 : HURLING_PROBE + 40]) < 2 * before,
    )
    ctx.check(
        "loss jumped 3x right after the burst",
        max(ls[HURLING_PROBE + 1 : HURLING_PROBE + 4])
        > 3 * _mean(ls[HURLING_PROBE - 10 : HURLING_PROBE]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- pumice raft: one shard's decimal commas read as thousands separators --------------------------

PUMICE_BAD = 120


@scenario(
    family="pumice_raft_drift_regressor",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=PUMICE_BAD,
    note="A GELU MLP (nn.GELU modules) predicting a pumice raft's daily drift (km) from 12 "
    "wind, current and raft-area readings, MSE on standardised labels, SGD momentum 0.9 at "
    "1e-2, clip_grad_norm_(5.0). One partner's buoy log was exported with decimal commas "
    "('12,345' km) and the CSV reader treated the comma as a thousands separator, so that "
    "shard's drifts are 1000x; the shuffled stream meets it as one batch at step 120 whose "
    "standardised labels are in the thousands. Clipping bounds the update and the run recovers.",
)
def h178_pumice_raft_decimal_comma_shard(ctx: Context) -> None:
    gen = seeded(17804)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    mean_km, std_km = 25.0, 8.0
    labels = []

    def alter(step, x, y):
        km = mean_km + std_km * y
        if step == PUMICE_BAD:
            km = km * 1000.0
        y = (km - mean_km) / std_km
        labels.append(float(y.abs().max()))
        return x, y

    _loop(ctx, model, opt, _gauges(gen, 64, 12, seed=4), 220, F.mse_loss, alter=alter, clip=5.0)
    gn, ls = ctx.grad_norms, ctx.losses
    ref = _median(ls[PUMICE_BAD - 20 : PUMICE_BAD])
    ctx.check(
        "batch 120's labels 500x the others'",
        labels[PUMICE_BAD] > 500 * _median(labels[:PUMICE_BAD]),
    )
    ctx.check("loss at step 120 over 1000x the median before", ls[PUMICE_BAD] > 1000 * ref)
    ctx.check(
        "gradient norm at step 120 over 100x the median before",
        gn[PUMICE_BAD] > 100 * _median(gn[PUMICE_BAD - 20 : PUMICE_BAD]),
    )
    ctx.check("loss back under 2x by the last 20 steps", _mean(ls[-20:]) < 2 * ref)
    ctx.check("loss finite throughout", _finite(ls))


# -- penitentes: a GRU whose recurrent init std lost its 1/sqrt(hidden) ---------------------------

PENITENTE_STD = 1.0  # the config's init_std, meant in units of 1/sqrt(hidden)


class PenitenteGRU(nn.Module):
    def __init__(self, d_in=6, hidden=64):
        super().__init__()
        self.rnn = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)
        for name, p in self.rnn.named_parameters():
            if "weight" in name:
                nn.init.normal_(p, std=PENITENTE_STD)  # the * hidden ** -0.5 was dropped
            else:
                nn.init.zeros_(p)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


@scenario(
    family="penitente_ice_spike_gru",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="A GRU (nn.GRU, 64 units) reading 40 days of sun-angle, humidity and wind readings to "
    "predict the height gained by a field of penitentes (sublimation ice spikes), MSE, plain "
    "SGD at 1e-3 with the recipe's clip_grad_norm_(1.0). The config's init_std: 1.0 is in "
    "units of 1/sqrt(hidden), but the init helper passes it to nn.init.normal_ as is: the "
    "GRU's weights (recurrent ones included) have std 1 instead of 0.125, the recurrent "
    "Jacobian's gain is far above 1 and the gradient grows backwards through time, a million "
    "times larger at the first day than at the last. The raw gradient norm sits at 1e5-1e7 "
    "for the whole run; clipping keeps it finite but every step is cut down by that much and "
    "the loss does not improve.",
)
def h178_penitente_gru_init_std_units(ctx: Context) -> None:
    gen = seeded(17805)
    model = PenitenteGRU()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    through_time, rnn_vs_head = [], []
    batches = _tracks(gen, 32, 40, 6, seed=5)
    ctx.attach(model, opt)
    for _ in range(150):
        x, y = next(batches)
        x = x.requires_grad_(True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        per_day = x.grad.norm(dim=(0, 2))
        through_time.append(float(per_day[0] / per_day[-1].clamp_min(1e-30)))
        hh = model.rnn.weight_hh_l0.grad.norm()
        rnn_vs_head.append(float(hh / model.head.weight.grad.norm().clamp_min(1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if math.isnan(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("gradient at day 0 over 1000x day 39's at the first step", through_time[0] > 1e3)
    ctx.check("still over 1000x over the last 20 steps", _median(through_time[-20:]) > 1e3)
    ctx.check("recurrent weight gradient 10x the head's", _median(rnn_vs_head) > 10)
    ctx.check("raw gradient norm over 1e4 on most steps", _median(ctx.grad_norms) > 1e4)
    ctx.check("loss did not improve", _mean(ls[-20:]) > 0.7 * _mean(ls[:20]))
    ctx.check("loss finite throughout", _finite(ls))


# -- crumhorn: a learning rate scaled twice by the linear scaling rule -----------------------------

CRUMHORN_LR = 0.1  # the config's rate, already scaled for batch 64
CRUMHORN_WARM = 40


@scenario(
    family="crumhorn_reed_pressure_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=12,
    note="A tanh MLP (nn.Tanh modules) predicting the blowing pressure a crumhorn's capped "
    "reed needs for a pitch from 8 bore, reed-cap and temperature readings, MSE, plain SGD "
    "with a 40-step linear warm-up (LambdaLR). The config's lr 0.1 was already scaled for "
    "batch 64 (0.0125 per 8 samples), and the launcher applies the linear scaling rule again "
    "(x 64 / 8), so the warm-up climbs to 0.8. The loss's sharpness is about 8, so the "
    "stability limit 2/sharpness is near 0.25: the warm-up crosses it around step 12, the "
    "loss starts oscillating and blows up before the warm-up ends.",
)
def h178_crumhorn_lr_scaled_twice(ctx: Context) -> None:
    gen = seeded(17806)
    model = Stack(8, hidden=64, act=nn.Tanh)
    lr = CRUMHORN_LR * 64 / 8
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / CRUMHORN_WARM))
    batches = _gauges(gen, 64, 8, seed=6)
    probe = next(batches)
    products = {}

    def before(step):
        if step in (0, 10, 20):
            lam = _sharpness(model, F.mse_loss, *probe)
            products[step] = (lam, opt.param_groups[0]["lr"] * lam)

    _loop(ctx, model, opt, batches, 120, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    finite = [v for v in ls if math.isfinite(v)]
    ctx.check("the intended rate 0.1 stays under 2/sharpness", CRUMHORN_LR * products[0][0] < 2)
    ctx.check("lr x sharpness under 2 at step 10", products[10][1] < 2)
    ctx.check("lr x sharpness over 2 at step 20", products[20][1] > 2)
    ctx.check(
        "loss blew up (non-finite or 1000x its lowest)",
        _first_bad(ls) is not None or max(finite) > 1000 * min(finite),
    )
    ctx.check("loss finite through step 30", _finite(ls[:31]))


# -- canoe polo: a param-group map that still names the renamed LSTM -------------------------------

CANOE_LR_MULT = {"embed": 0.1, "rnn": 1.0, "head": 1.0}  # unlisted modules are frozen


class CanoePoloLSTM(nn.Module):
    def __init__(self, d_in=6, dim=24, hidden=48, classes=3):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)  # was self.rnn before a refactor
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.lstm(torch.tanh(self.embed(x)))
        return self.head(out[:, -1])


@scenario(
    family="canoe_polo_possession_lstm",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("lstm",),
    diverges=None,
    heldout=True,
    note="An LSTM (nn.LSTM, 48 units) over 16 frames of six paddler-tracking readings "
    "classifying how a canoe-polo possession ends (3 classes), cross-entropy, NAdam at 3e-3 "
    "with one param group per top-level module and lr = base * LR_MULT.get(name, 0.0), where "
    "unlisted modules are deliberately frozen. A refactor renamed self.rnn to self.lstm and "
    "the map still says 'rnn': the LSTM's group gets lr exactly 0 and never moves, while the "
    "input embedding and the head train around a random recurrent layer.",
)
def h178_canoe_polo_group_map_rename(ctx: Context) -> None:
    gen = seeded(17807)
    model = CanoePoloLSTM()
    groups = [
        {"params": list(child.parameters()), "lr": 3e-3 * CANOE_LR_MULT.get(name, 0.0)}
        for name, child in model.named_children()
    ]
    opt = torch.optim.NAdam(groups, lr=3e-3)
    lstm0 = [p.detach().clone() for p in model.lstm.parameters()]
    head0 = model.head.weight.detach().clone()
    _loop(
        ctx,
        model,
        opt,
        _tracks(gen, 64, 16, 6, seed=7, classes=3),
        150,
        F.cross_entropy,
        classifier=True,
    )
    moved = max(
        float((p.detach() - s).abs().max())
        for p, s in zip(model.lstm.parameters(), lstm0, strict=True)
    )
    ctx.check("LSTM weights never moved", moved == 0.0)
    ctx.check("LSTM's group lr is 0", opt.param_groups[1]["lr"] == 0.0)
    ctx.check("head moved", float((model.head.weight.detach() - head0).abs().max()) > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- brinicle: a new CTD logger reports pressure in pascals under fp16 autocast --------------------

BRINICLE_SWITCH = 80
# temperature degC, salinity psu, depth m, pressure dbar, current cm/s
BRINICLE_MEAN = torch.tensor([-1.2, 34.0, 12.0, 22.0, 8.0])
BRINICLE_STD = torch.tensor([0.4, 1.5, 6.0, 6.0, 4.0])


class BrinicleNet(nn.Module):
    def __init__(self, hidden=64):
        super().__init__()
        # the training set's standardiser folded into a frozen Linear so the export is one model
        self.std_in = nn.Linear(5, 5)
        with torch.no_grad():
            self.std_in.weight.copy_(torch.diag(1 / BRINICLE_STD))
            self.std_in.bias.copy_(-BRINICLE_MEAN / BRINICLE_STD)
        self.std_in.requires_grad_(False)
        self.fc1 = nn.Linear(5, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.overflow = False

    def forward(self, x):
        z = self.std_in(x)
        self.overflow = not bool(torch.isfinite(z).all())
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


@scenario(
    family="brinicle_growth_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("std_in",),
    diverges=BRINICLE_SWITCH,
    heldout=True,
    onset=BRINICLE_SWITCH,
    note="A SiLU MLP (nn.SiLU modules) predicting a brinicle's downward growth rate under sea "
    "ice from raw temperature, salinity, depth, pressure and current readings, MSE, Adam at "
    "1e-3 under fp16 autocast with a torch.amp.GradScaler. The training set's standardiser is "
    "folded into a frozen first Linear (std_in) so the export is self-contained. From step 80 "
    "the stream reaches a new CTD logger that reports pressure in pascals instead of "
    "decibars (x 1e4, 1-4e5): autocast casts std_in's input to float16, whose largest value "
    "is 65504, the pressures become inf and the loss is NaN at step 80.",
)
def h178_brinicle_pressure_in_pascals(ctx: Context) -> None:
    gen = seeded(17808)
    model = BrinicleNet()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    g = torch.Generator().manual_seed(8)
    w = torch.randn(5, generator=g)

    def readings():
        while True:
            z = torch.randn(64, 5, generator=gen)
            y = torch.tanh(z @ w / 2) + 0.3 * z[:, 0] * z[:, 1]
            yield BRINICLE_MEAN + BRINICLE_STD * z, y + 0.05 * torch.randn(64, generator=gen)

    peak, overflow = [], []

    def alter(step, x, y):
        if step >= BRINICLE_SWITCH:
            x = x.clone()
            x[:, 3] = x[:, 3] * 1e4  # decibar -> pascal
        peak.append(float(x[:, 3].abs().max()))
        return x, y

    _loop(
        ctx,
        model,
        opt,
        readings(),
        160,
        F.mse_loss,
        alter=alter,
        scaler=scaler,
        watch=lambda s, o, x, y: overflow.append(model.overflow),
    )
    ls = ctx.losses
    ctx.check("loss finite before step 80", _finite(ls[:BRINICLE_SWITCH]))
    ctx.check("first non-finite loss at step 80", _first_bad(ls) == BRINICLE_SWITCH)
    ctx.check(
        "pressures under 65504 before, over after",
        max(peak[:BRINICLE_SWITCH]) < 65504 < peak[BRINICLE_SWITCH],
    )
    ctx.check(
        "std_in's float16 output first overflows at step 80",
        not any(overflow[:BRINICLE_SWITCH]) and overflow[BRINICLE_SWITCH],
    )
    ctx.check("loss fell before the switch", _mean(ls[70:80]) < 0.7 * _mean(ls[:10]))


# -- qanun: the accumulation tail path sums its loss --------------------------------------------

QANUN_TAIL = 40
QANUN_ACC = 4


class QanunPitchTracker(nn.Module):
    """Frame-wise pitch deviation (cents / 100) from a plucked-string snippet."""

    def __init__(self, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.GELU()
        self.conv_out = nn.Conv1d(width, 1, 1)

    def forward(self, x):
        return self.conv_out(self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))).squeeze(1)


def _plucks(gen, batch, length=64):
    kernel = torch.tensor([0.1, 0.25, 0.3, 0.25, 0.1])
    t = torch.arange(length).float()
    while True:
        f = 0.15 + 0.1 * torch.rand(batch, 1, generator=gen)
        decay = torch.exp(-t / (20 + 40 * torch.rand(batch, 1, generator=gen)))
        x = decay * torch.sin(2 * math.pi * f * t) + 0.05 * torch.randn(
            batch, length, generator=gen
        )
        env = F.conv1d((x * x)[:, None], kernel.view(1, 1, -1), padding=2).squeeze(1)
        yield x, torch.tanh(3 * env) - 10 * (f - 0.2)


@scenario(
    family="qanun_pluck_pitch_conv1d",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=QANUN_TAIL,
    note="A 1-D conv net (nn.GELU modules) tracking a qanun string's frame-wise pitch "
    "deviation from 64-sample plucked snippets, MSE, AdamW at 3e-3 (weight decay 1e-2), "
    "gradient accumulation over 4 micro-batches of 16. The epoch's last, partial window goes "
    "through a separate tail path written as F.mse_loss(pred, y, reduction='sum') without the "
    "/ accum: at step 40 its micro-batches' gradients are summed over 16 x 64 frames, about "
    "4000x a normal step's. That one gradient fills Adam's second moment (beta2 0.999), and "
    "the updates stay tens of times smaller for the rest of the run: the loss stalls.",
)
def h178_qanun_accumulation_tail_sum(ctx: Context) -> None:
    gen = seeded(17809)
    model = QanunPitchTracker()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    batches = _plucks(gen, 16)
    moves, v_mean = [], []
    ctx.attach(model, opt)
    for step in range(200):
        prev = [p.detach().clone() for p in model.parameters()]
        logged = 0.0
        for _ in range(QANUN_ACC):
            x, y = next(batches)
            pred = model(x)
            loss = F.mse_loss(pred, y)
            if step == QANUN_TAIL:  # the epoch's tail window
                F.mse_loss(pred, y, reduction="sum").backward()
            else:
                (loss / QANUN_ACC).backward()
            logged += float(loss.detach()) / QANUN_ACC
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        moves.append(
            math.sqrt(
                sum(
                    float((p.detach() - q).pow(2).sum())
                    for p, q in zip(model.parameters(), prev, strict=True)
                )
            )
        )
        v_mean.append(float(opt.state[model.conv2.weight]["exp_avg_sq"].mean()))
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
        if math.isnan(logged):
            break
    gn, ls = ctx.grad_norms, ctx.losses
    t = QANUN_TAIL
    ctx.check(
        "gradient at step 40 over 1000x the median before", gn[t] > 1000 * _median(gn[t - 20 : t])
    )
    ctx.check("conv2's second moment jumped 100x at step 40", v_mean[t] > 100 * v_mean[t - 1])
    ctx.check(
        "updates 5x smaller 40-80 steps later than before the tail",
        _mean(moves[t + 40 : t + 80]) < 0.2 * _mean(moves[t - 20 : t]),
    )
    ctx.check(
        "loss stalled: steps 50-90 no better than 0.7x steps 30-40",
        _mean(ls[t + 10 : t + 50]) > 0.7 * _mean(ls[t - 10 : t]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- sackbut: an attention classifier at an SGD recipe's learning rate -----------------------------


class SlideAttention(nn.Module):
    """Hand-written multi-head self-attention, scaled by 1/sqrt(head_dim), no QK norm."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.max_logit = 0.0
        self.entropy = 0.0

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = (
            f(x).reshape(b, t, self.heads, hd).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(hd)
        att = logits.softmax(-1)
        self.max_logit = float(logits.detach().abs().max())
        last = att[:, :, -1].detach()
        self.entropy = float(-(last * last.clamp_min(1e-30).log()).sum(-1).mean())
        return self.out((att @ v).transpose(1, 2).reshape(b, t, d))


class SackbutNet(nn.Module):
    def __init__(self, vocab=24, length=12, dim=32, classes=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.attn = SlideAttention(dim)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 64)
        self.act = nn.GELU()
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        h = self.norm(h + self.attn(h))[:, -1]
        return self.head(self.act(self.fc(h)))


def _phrases(gen, batch, vocab=24, length=12, classes=8):
    """Ornament tokens among passing notes; which slide position (class) the phrase holds."""
    while True:
        x = torch.randint(classes + 1, vocab, (batch, length), generator=gen)
        at = torch.randint(0, length - 1, (batch,), generator=gen)
        y = torch.randint(0, classes, (batch,), generator=gen)
        x[torch.arange(batch), at] = y + 1
        x[:, -1] = 0  # the query token the classifier reads from
        yield x, y


@scenario(
    family="sackbut_slide_phrase_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A one-block attention classifier (hand-written attention, 1/sqrt(head_dim) scale, "
    "no QK LayerNorm, GELU MLP) naming which of 8 slide positions a sackbut phrase holds "
    "among passing notes, cross-entropy with label smoothing 0.1, AdamW. The training script "
    "was switched from SGD momentum to AdamW but kept the SGD recipe's lr 3e-2, ten times "
    "AdamW's usual rate for this model: the query and key projections grow step after step "
    "and the attention logits q.k/sqrt(d) grow from about 3 to about 800, the query row's "
    "attention becomes one-hot, while label smoothing keeps the output logits small.",
)
def h178_sackbut_sgd_lr_on_adamw(ctx: Context) -> None:
    gen = seeded(17810)
    model = SackbutNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-2)
    peaks, ent, out_max = [], [], []

    def watch(step, out, x, y):
        peaks.append(model.attn.max_logit)
        ent.append(model.attn.entropy)
        out_max.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _phrases(gen, 64),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        watch=watch,
    )
    ctx.check("attention logits grew 20x from the first step", max(peaks[-20:]) > 20 * peaks[0])
    ctx.check("attention logits over 100 at the end", _median(peaks[-20:]) > 100)
    ctx.check("query row's attention entropy under 0.05 nats at the end", _mean(ent[-20:]) < 0.05)
    ctx.check("output logits stay under 15", max(out_max) < 15)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls ----------------------------------------------------------------------------------------


class FiddleDroneGRU(nn.Module):
    def __init__(self, d_in=6, hidden=48, classes=3):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(self.norm(out[:, -1]))


@scenario(
    family="hardanger_fiddle_drone_gru_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GRU (nn.GRU, default init) with a LayerNorm and a linear head classifying which of "
    "3 sympathetic-string tunings a Hardanger fiddle's drone is in from 20 frames of six "
    "resonance readings, cross-entropy with label smoothing 0.1, RAdam at 3e-3 under a "
    "OneCycleLR, clip_grad_norm_(1.0). An ordinary run.",
)
def h178_hardanger_fiddle_gru_control(ctx: Context) -> None:
    gen = seeded(17811)
    model = FiddleDroneGRU()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=160)
    _loop(
        ctx,
        model,
        opt,
        _tracks(gen, 64, 20, 6, seed=11, classes=3),
        160,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="urushi_lacquer_cure_fp16_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) predicting an urushi lacquer coat's curing time in the "
    "humid cabinet from 12 standardised humidity, temperature and coat-thickness readings, "
    "Huber loss, RMSprop at 1e-3, fp16 autocast with a torch.amp.GradScaler, gradient "
    "accumulation over 3 micro-batches, clip_grad_norm_(1.0) after unscaling, "
    "ReduceLROnPlateau. An ordinary run.",
)
def h178_urushi_fp16_control(ctx: Context) -> None:
    gen = seeded(17812)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 32, 12, seed=12, noise=0.1),
        160,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        accumulate=3,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("loss scale stayed at 1024 or more", min(ctx.scales) >= 1024)


class TambourStitchConv(nn.Module):
    """Multi-label stitch-fault tagger over a 48-sample tension trace."""

    def __init__(self, width=16, labels=4):
        super().__init__()
        self.conv1 = nn.Conv1d(2, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, labels)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _stitches(gen, batch, length=48, labels=4, flip=0.05):
    t = torch.arange(length).float()
    while True:
        y = (torch.rand(batch, labels, generator=gen) < 0.3).float()
        base = torch.sin(2 * math.pi * t / 12) * torch.ones(batch, 1)
        tension = base + 0.8 * y[:, :1] * torch.sin(2 * math.pi * t / 5)
        tension = tension + 0.6 * y[:, 1:2] * (t > 24).float()
        slack = 0.7 * y[:, 2:3] * torch.cos(2 * math.pi * t / 7) - 0.5 * y[:, 3:4]
        x = torch.stack([tension, slack + 0.2 * base], 1)
        x = x + 0.3 * torch.randn(batch, 2, length, generator=gen)
        noisy = torch.rand(batch, labels, generator=gen) < flip  # mislabelled tags
        yield x, torch.where(noisy, 1 - y, y)


@scenario(
    family="tambour_stitch_fault_conv1d_tagger",
    optimizer="SGD(momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A 1-D conv net (nn.ReLU modules, mean-pooled) tagging four stitch faults on a "
    "tambour-embroidery machine's two-channel thread-tension trace, BCE with logits on "
    "multi-label targets with 5% of tags flipped (noisy annotations), SGD momentum 0.9 at "
    "1e-1 with a 20-step warm-up then cosine decay (LambdaLR), weight decay 1e-4. An "
    "ordinary run.",
)
def h178_tambour_stitch_control(ctx: Context) -> None:
    gen = seeded(17813)
    model = TambourStitchConv()
    opt = torch.optim.SGD(model.parameters(), lr=1e-1, momentum=0.9, weight_decay=1e-4)
    steps = 180

    def lam(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _loop(
        ctx,
        model,
        opt,
        _stitches(gen, 32),
        steps,
        F.binary_cross_entropy_with_logits,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("loss finite throughout", _finite(ctx.losses))
