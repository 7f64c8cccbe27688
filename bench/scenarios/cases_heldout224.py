"""Held-out set 224 (``h224_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a fistball attack-type cosine classifier whose learnt logit
scale was initialised with the scale itself as its log, a fleur-de-sel harvest regressor fed
one shard with the brine salinity in raw g/L instead of standardised, a beach-cusp spacing Gaussian-NLL net taking the square root of an
unclamped variance head, a sumo kimarite classifier whose raw logits go into nll_loss with no
log_softmax, an ice-disc rotation IRNN whose identity recurrence was initialised with a
gain, a clinker-plank lap grader whose stem param group kept a linear-probe learning rate, an
ophicleide key-leak detector whose masked loss lost its normaliser for one batch, a sun-dog
halo brightness regressor whose loader applies the flat-field gain in place every epoch, a
roundnet serve-speed regressor whose warm-up lambda never stops climbing, an ice-cutter block
weight regressor whose epoch-end logging backpropagated a summed full-pool loss, and three
controls (an ulama hip-strike classifier with label smoothing and mixup under Adamax and
OneCycleLR, a Saharan-dust optical-depth regressor on noisy batches with clipping, RMSprop and
ReduceLROnPlateau, a horn-carver spoon tied-weight autoencoder under fp16 autocast with a
GradScaler, accumulation and warm-up + cosine).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import itertools
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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _rel_change(params, before) -> float:
    num = sum(float((p.detach() - b).norm() ** 2) for p, b in zip(params, before, strict=True))
    den = sum(float(b.norm() ** 2) for b in before)
    return math.sqrt(num / max(den, 1e-30))


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss,
    out, y)`` returns what is backpropagated, ``after(step)`` runs after the optimizer step;
    stops after logging a NaN loss."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total, out, y)
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
        if math.isnan(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping as ``noise`` grows."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * torch.randn(batch, d_in, generator=gen)
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


# -- fistball: a cosine classifier whose learnt logit scale lost its clamp -------------------------


class CosineHead(nn.Module):
    """Cosine similarity to one learnt prototype per class, times a learnt scale exp(logit_scale).
    ``init_scale`` is the scale (1 / 0.07 in the config); it was stored as the log-scale."""

    def __init__(self, dim, classes, init_scale=1 / 0.07):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.logit_scale = nn.Parameter(torch.tensor(init_scale))  # meant: math.log(init_scale)

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.logit_scale.exp() * cos


class AttackNet(nn.Module):
    def __init__(self, d_in=10, hidden=48, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = CosineHead(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _attacks(gen, batch, seed=1):
    """Ten standardised readings of a fistball attack (contact height, arm speed, ball spin,
    distance to the line, ...) and its type (6 kinds of hit)."""
    return _kinds(gen, batch, 10, 6, seed, noise=0.8)


@scenario(
    family="fistball_attack_type_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2) with a cosine-similarity head (head: one learnt prototype per class times a learnt logit scale exp(head.logit_scale), CLIP's recipe) naming a fistball attack's type (6 kinds) from 10 standardised readings (contact height, arm speed, spin, ...), Adamax at 2e-3, cross-entropy. The config's init_scale = 1/0.07 is the scale itself, but it was stored in the log-scale parameter: the learnt scale starts at exp(14.3) = 1.6e6 instead of 14.3. Every row's float32 softmax rounds to exactly 1.0 for its top class from step 0 (over 90% of rows to the end), misclassified rows cost about 1e5 (the loss is about 3e5 at step 0 and still thousands at the end), and Adamax's bounded steps move the log scale by only about 0.03 over the run, so the scale stays over 1e5; finite.",
)
def h224_fistball_logit_scale_init(ctx: Context) -> None:
    gen = seeded(22401)
    model = AttackNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    saturated, scales, acc = {}, {}, {}

    def watch(step, out, x, y):
        p = torch.softmax(out.detach().float(), -1)
        saturated[step] = float((p.max(-1).values == 1.0).float().mean())
        scales[step] = float(model.head.logit_scale.detach().exp())
        acc[step] = float((out.argmax(-1) == y).float().mean())

    _train(ctx, model, opt, _attacks(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch)
    ls = ctx.losses
    ctx.check("over 95% of rows have a probability of exactly 1.0 at step 0", saturated[0] > 0.95)
    ctx.check(
        "over 90% of rows still saturated over the last 50 steps",
        _mean([saturated[s] for s in range(150, 200)]) > 0.9,
    )
    ctx.check("learnt scale still over 1e5 at the end", scales[199] > 1e5)
    ctx.check("mean loss over 100 in the first 10 steps", _mean(ls[:10]) > 100)
    ctx.check("finite", _finite(ls))


# -- fleur de sel: one shard with the brine salinity in g/L ---------------------------------------


def _harvests(gen, batch, seed=2):
    """Eight standardised readings of a salt pan (brine salinity, air temperature, wind, sun
    hours, ...) and the day's fleur-de-sel yield (standardised)."""
    return _readings(gen, batch, 8, seed, noise=0.1)


@scenario(
    family="fleur_de_sel_harvest_yield_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting a salt pan's daily fleur-de-sel yield (standardised) from 8 standardised readings (brine salinity, air temperature, wind, sun hours, ...), RMSprop at 1e-3, Huber loss. The batch at step 130 comes from the shard logged by a newly installed refractometer, whose salinity column was written in raw g/L (around 250) and never standardised: its inputs are about 100x their usual maximum, the loss jumps about 45x and the gradient over 1000x for that one step, then the ordinary batches bring the loss back to its level; finite.",
)
def h224_fleur_de_sel_salinity_units_shard(ctx: Context) -> None:
    gen = seeded(22402)
    model = Stack(8, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    top = {}

    def alter(step, x, y):
        if step == 130:  # the shard from the new refractometer: salinity in g/L, not standardised
            x = x.clone()
            x[:, 0] = 250.0 + 30.0 * x[:, 0]
        top[step] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _harvests(gen, 64), 240, F.huber_loss, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "inputs at step 130 over 50x their usual maximum",
        top[130] > 50 * _median([top[s] for s in range(120, 130)]),
    )
    ctx.check(
        "loss at step 130 over 20x the median of steps 110-129", ls[130] > 20 * _median(ls[110:130])
    )
    ctx.check(
        "gradient at step 130 over 20x the median before", gn[130] > 20 * _median(gn[100:130])
    )
    ctx.check("loss fell before the shard", _mean(ls[110:130]) < 0.5 * _mean(ls[:5]))
    ctx.check(
        "loss back within 2x its pre-shard level (steps 200-240)",
        _mean(ls[200:]) < 2 * _mean(ls[110:130]),
    )
    ctx.check("finite", _finite(ls))


# -- beach cusps: a Gaussian NLL taking the square root of an unclamped variance -------------------


class Sqrt(nn.Module):
    def forward(self, v):
        return torch.sqrt(v)


class CuspNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)  # meant to be followed by a softplus
        self.spread = Sqrt()
        with torch.no_grad():
            self.var_head.bias.fill_(1.0)
            self.var_head.weight.mul_(0.1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.spread(self.var_head(h))], -1)


def _cusps(gen, batch, seed=3):
    """Six standardised readings of a beach (wave period, wave height, sand grain size, slope,
    ...) and the beach-cusp spacing (standardised), noisier on steep beaches."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        mu = torch.tanh(x @ w / math.sqrt(6))
        sd = 0.05 + 0.3 * torch.sigmoid(2 * x[:, 3])
        yield x, mu + sd * torch.randn(batch, generator=gen)


def _gauss_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="beach_cusp_spacing_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("spread", "var_head"),
    diverges=35,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2) with a mean head (mean_head) and a variance head (var_head) whose output goes through a square root (spread, a module calling torch.sqrt) to give the standard deviation of a Gaussian NLL, predicting the spacing of beach cusps (standardised) from 6 standardised beach readings (wave period, wave height, grain size, slope, ...), NAdam at 1e-3. The variance head was meant to end in a softplus and has no clamp: as the NLL shrinks the predicted variance where the spacing is regular, var_head's output crosses zero for a sample at step 35, the sqrt returns NaN there and the loss is NaN at step 35 (finite and falling before).",
)
def h224_beach_cusp_sqrt_unclamped_variance(ctx: Context) -> None:
    gen = seeded(22403)
    model = CuspNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    low = {}

    def watch(step, out, x, y):
        with torch.no_grad():
            low[step] = float(model.var_head(model.act2(model.fc2(model.act1(model.fc1(x))))).min())

    _train(ctx, model, opt, _cusps(gen, 64), 300, _gauss_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss NaN at the declared step", bad == 35)
    ctx.check("variance head output negative at that step", bad is not None and low[bad] < 0)
    ctx.check(
        "variance head output positive and loss finite before",
        bad is not None and min(low[s] for s in range(bad)) > 0 and _finite(ls[:bad]),
    )
    ctx.check("loss fell before it", bad is not None and _fell(ls[:bad], ratio=0.7))


# -- sumo: a kimarite classifier whose head sits outside weight decay ------------------------------


def _bouts(gen, batch, seed=4):
    """Sixteen standardised readings of a sumo bout (tachiai speed, belt grip, mass difference,
    ring position, ...) and the winning technique (12 kimarite), well separated."""
    return _kinds(gen, batch, 16, 12, seed, noise=0.25)


@scenario(
    family="sumo_kimarite_relu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming the winning technique of a sumo bout (12 kimarite) from 16 standardised readings (tachiai speed, belt grip, mass difference, ring position, ...), Adam at 1e-3. The head ends in a Linear and the loss is F.nll_loss, which expects log-probabilities; the log_softmax was never applied. The loss -mean(logit of the target) is unbounded below, so the head's logits grow without bound: the largest logit goes from about 0.3 to over 1600 in 250 steps and is still growing (over 1.5x in the last 100 steps), the loss falls steadily to about -760 (no NaN, no upward blow-up), and the predictions are useless.",
)
def h224_sumo_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(22404)
    model = Stack(16, 64, out=12)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    top = {}

    def watch(step, out, x, y):
        top[step] = float(out.detach().abs().max())

    # the head ends in a Linear and the loss is nll_loss, which expects log-probabilities
    _train(ctx, model, opt, _bouts(gen, 64), 250, F.nll_loss, classifier=True, watch=watch)
    ls = ctx.losses
    ctx.check("largest logit grew over 100x from step 5 to the end", top[249] > 100 * top[5])
    ctx.check("largest logit still growing over the last 100 steps", top[249] > 1.5 * top[149])
    ctx.check("loss below -100 at the end (unbounded below)", _mean(ls[-10:]) < -100)
    ctx.check("finite", _finite(ls))


# -- ice disc: an IRNN whose identity recurrence was initialised with a gain -----------------------


class SpinIRNN(nn.Module):
    def __init__(self, feat=3, hidden=48, gain=1.25):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))  # Le et al.: the identity, gain 1
            self.rec.bias.zero_()
            self.inp.weight.mul_(0.1)
            self.inp.bias.zero_()
            self.head.weight.mul_(0.1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _eddies(gen, batch, length=32, seed=5):
    """Three standardised readings per minute of a river eddy (current speed, water
    temperature, ice cover) and the ice disc's rotation rate (standardised), set by the mean
    current."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        yield x, torch.tanh(x[:, :, 0].mean(1) * 2) + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="ice_disc_rotation_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU recurrent net in the IRNN style (inp, rec, act, head) reading 32 minutes of 3 standardised readings of a river eddy (current speed, water temperature, ice cover) and predicting the rotation rate of the ice disc turning in it, plain SGD at 1e-3, MSE. Le et al. initialise the recurrent weight to the identity; the port passed gain=1.25 to it: states and gradients grow through time (the gradient at the first state is about 670x that at the last at init), the first gradient is about 4000, the first step sends the loss from 15 to about 2e22, and it is inf at step 3 and NaN after.",
)
def h224_ice_disc_irnn_gain(ctx: Context) -> None:
    gen = seeded(22405)
    model = SpinIRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    probe = next(_eddies(torch.Generator().manual_seed(55), 128))
    loss = F.mse_loss(model(probe[0]), probe[1])
    loss.backward()
    ratio = float(model.states[0].grad.norm() / model.states[-1].grad.norm())
    model.zero_grad()
    _train(ctx, model, opt, _eddies(gen, 32), 120, F.mse_loss)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at the first state over 100x that at the last at init", ratio > 100)
    ctx.check("first gradient norm over 1000", gn[0] > 1000)
    ctx.check(
        "loss past 100x its first value",
        max(v if math.isfinite(v) else 1e30 for v in ls) > 100 * ls[0],
    )
    ctx.check("loss non-finite within 10 steps", _first_bad(ls) is not None and _first_bad(ls) < 10)


# -- clinker: a lap grader whose stem group kept the linear-probe learning rate --------------------


def _laps(gen, batch, seed=6):
    """Twelve standardised readings of a clinker-built boat's plank lap (bevel angle, rivet
    spacing, moisture, overlap width, ...) and its grade (5 grades)."""
    return _kinds(gen, batch, 12, 5, seed, noise=1.0)


@scenario(
    family="clinker_plank_lap_grade_classifier",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading the plank laps of a clinker-built boat (5 grades) from 12 standardised readings (bevel angle, rivet spacing, moisture, overlap width, ...), RAdam at 2e-3 with one param group per layer, cross-entropy. The fc1 group still carries lr=1e-9 from the linear-probe config the groups were copied from: fc1 moves about 4e-8 of its norm over the run while the head moves about 100% of its own, fc1 is in effect frozen at its random init and the loss falls only slowly (1.6 to 0.4 over 200 steps); finite.",
)
def h224_clinker_stem_probe_lr(ctx: Context) -> None:
    gen = seeded(22406)
    model = Stack(12, 64, out=5, act=nn.GELU)
    opt = torch.optim.RAdam(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},  # left from the linear-probe config
            {"params": model.fc2.parameters()},
            {"params": model.head.parameters()},
        ],
        lr=2e-3,
    )
    w1, w2 = _snapshot(model.fc1.parameters()), _snapshot(model.head.parameters())
    _train(ctx, model, opt, _laps(gen, 64), 200, F.cross_entropy, classifier=True)
    ls = ctx.losses
    r1, r2 = (
        _rel_change(list(model.fc1.parameters()), w1),
        _rel_change(list(model.head.parameters()), w2),
    )
    ctx.check("fc1 moved under 1e-6 of its norm over the run", r1 < 1e-6)
    ctx.check("head moved over 5% of its norm", r2 > 0.05)
    ctx.check("loss fell", _fell(ls, ratio=0.8))
    ctx.check("finite", _finite(ls))


# -- ophicleide: a masked loss that lost its normaliser for one batch ------------------------------


def _keys(gen, batch, seed=7):
    """Ten standardised readings of an ophicleide key (pad seating, spring force, air flow past
    the cup, ...) and whether it leaks."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        yield x, ((x @ w) / 3 + 0.3 * torch.randn(batch, generator=gen) > 0).float()


@scenario(
    family="ophicleide_key_leak_bce_mlp",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) telling whether an ophicleide key leaks from 10 standardised readings (pad seating, spring force, air flow past the cup, ...), SGD momentum 0.9 at 0.02, BCE with logits, batches of 128. The loss is (bce * mask).sum() / mask.sum(); at step 110 a batch came without a mask, the fallback mask's sum was 1 and the batch's mean became its sum: that step's gradient is 128x too large (about 120x the median gradient before). Momentum carries the kick for a few steps, the loss rises to about 1.8 and comes back to its pre-onset level within about 70 steps; finite.",
)
def h224_ophicleide_lost_mask_normaliser(ctx: Context) -> None:
    gen = seeded(22407)
    model = Stack(10, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def scale_loss(step, total, out, y):
        # (bce * mask).sum() / mask.sum(): at step 110 the batch came with no mask, the
        # fallback mask.sum() was 1, and the batch's mean became its sum
        return total * 128 if step == 110 else total

    _train(
        ctx,
        model,
        opt,
        _keys(gen, 128),
        220,
        F.binary_cross_entropy_with_logits,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 110 over 50x the median before", gn[110] > 50 * _median(gn[80:110]))
    ctx.check(
        "gradient back under 3x that median by step 130",
        _median(gn[130:150]) < 3 * _median(gn[80:110]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:110], ratio=0.6))
    ctx.check(
        "loss back within 1.5x its pre-onset level (steps 180-220)",
        _mean(ls[180:]) < 1.5 * _mean(ls[90:110]),
    )
    ctx.check("finite", _finite(ls))


# -- sun dog: a loader that applies the flat-field gain in place every epoch -----------------------


class HaloLoader:
    """A cached pool of 512 halo photographs (eight standardised readings: sun elevation, ice
    crystal density, humidity, ...) and the sun dog's brightness. The flat-field gain correction was
    meant to run once at load; it sits in ``__iter__`` and works in place on the cache."""

    def __init__(self, gen, batch, seed=8, gain=1.05):
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(8, generator=g)
        self.x = torch.randn(512, 8, generator=gen)
        self.y = torch.tanh(self.x @ w / math.sqrt(8)) + 0.05 * torch.randn(512, generator=gen)
        self.gen, self.batch, self.gain, self.epochs = gen, batch, gain, 0

    def __iter__(self):
        while True:
            self.y *= self.gain  # flat-field gain, re-applied to the cache every epoch
            self.epochs += 1
            order = torch.randperm(512, generator=self.gen)
            for i in range(0, 512, self.batch):
                idx = order[i : i + self.batch]
                yield self.x[idx], self.y[idx].clone()


@scenario(
    family="sun_dog_halo_brightness_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting the brightness of a sun dog (standardised) from 8 standardised readings (sun elevation, ice crystal density, humidity, ...), a cached pool of 512 photographs, Adagrad at 4e-3, MSE. The camera's flat-field gain correction (x1.05) was meant to run once at load; it sits in the loader's __iter__ and multiplies the cached targets in place at every epoch (every 8 steps): the targets drift up about 1.05x an epoch while Adagrad's step keeps shrinking, and after falling for about 50 steps the loss climbs slowly (never doubling between 10-step windows) to about 8x its lowest by step 300; finite.",
)
def h224_sun_dog_inplace_flat_field(ctx: Context) -> None:
    gen = seeded(22408)
    model = Stack(8, 48, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.004)
    loader = HaloLoader(gen, 64)
    _train(ctx, model, opt, iter(loader), 300, F.mse_loss)
    ls = ctx.losses
    ctx.check("loss fell over the first 40 steps", _mean(ls[30:40]) < 0.7 * _mean(ls[:5]))
    ctx.check(
        "loss at the end over 3x its lowest 10-step mean",
        _mean(ls[-10:]) > 3 * min(_mean(ls[i : i + 10]) for i in range(0, 290)),
    )
    ctx.check(
        "climb is slow: no 10-step mean over 2x the one before",
        all(_mean(ls[i + 10 : i + 20]) < 2 * _mean(ls[i : i + 10]) for i in range(40, 280, 10)),
    )
    ctx.check("finite", _finite(ls))


# -- roundnet: a warm-up lambda that never stops climbing ------------------------------------------


def _serves(gen, batch, seed=9):
    """Eight standardised readings of a roundnet serve (racket-arm speed, toss height, contact
    angle, ...) and the ball's speed off the net (standardised)."""
    return _readings(gen, batch, 8, seed, noise=0.05)


def _top_eigenvalue(model, x, y, iters=20):
    """Largest Hessian eigenvalue of the MSE on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="roundnet_serve_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=35,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) predicting a roundnet serve's ball speed (standardised) from 8 standardised readings (arm speed, toss height, contact angle, ...), plain SGD at a peak of 0.15, MSE, a LambdaLR warm-up of 20 steps written as (step + 1) / warm without the min(1, ...): the learning rate keeps climbing linearly past its peak (0.75 by step 100). The largest Hessian eigenvalue (power iteration on a fixed batch) is about 7.5: lr x sharpness is about 1.8 at step 30 and 2.3 at step 40 (onset 35); the loss first hovers, then oscillates up from step 60, passes 1000x its lowest and is NaN at step 108.",
)
def h224_roundnet_warmup_never_stops(ctx: Context) -> None:
    gen = seeded(22409)
    model = Stack(8, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.15)
    warm = 20
    # meant: min(1.0, (step + 1) / warm)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: (step + 1) / warm)
    probe = next(_serves(torch.Generator().manual_seed(59), 256))
    sharp, lrs = {}, {}

    def before(step):
        lrs[step] = opt.param_groups[0]["lr"]
        if step % 10 == 0 and all(
            math.isfinite(float(p.detach().abs().max())) for p in model.parameters()
        ):
            sharp[step] = _top_eigenvalue(model, *probe)

    _train(ctx, model, opt, _serves(gen, 64), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("lr x sharpness under 2 at step 30", lrs[30] * sharp[30] < 2)
    ctx.check("lr x sharpness over 2 at step 40", lrs[40] * sharp[40] > 2)
    ctx.check(
        "loss finite and fell before step 40",
        _finite(ls[:40]) and _mean(ls[30:40]) < 0.2 * _mean(ls[:5]),
    )
    ctx.check(
        "loss past 1000x its lowest, then non-finite",
        bad is not None and max(v for v in ls[:bad]) > 1000 * min(ls[:bad]),
    )


# -- ice cutter: the epoch-end logging backpropagated a summed full-pool loss ----------------------


class BlockPool:
    """A pool of 4096 harvested ice blocks (eight standardised readings: saw depth, ice
    thickness, air temperature, ...) and the block weight (standardised)."""

    def __init__(self, gen, seed=10):
        batches = _readings(gen, 4096, 8, seed, noise=0.05)
        self.x, self.y = next(batches)
        self.gen = gen

    def batches(self, batch):
        while True:
            idx = torch.randint(0, 4096, (batch,), generator=self.gen)
            yield self.x[idx], self.y[idx]


@scenario(
    family="ice_cutter_block_weight_silu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=30,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting the weight of a harvested ice block (standardised) from 8 standardised readings (saw depth, ice thickness, air temperature, ...), AdamW at 2e-3, MSE, batches of 64 from a pool of 4096 blocks. At step 30 the epoch-end logging computed the pool's summed loss (reduction='sum' over 4096 blocks) with autograd on, and it was added to the step's loss before backward: one gradient about 4000x the median fills Adam's second moment. Afterwards the updates are about 3% of those before and the loss stays at its step-30 level to the end, while the same run without the bug (same batches) ends about 40% lower; finite.",
)
def h224_ice_cutter_logged_pool_loss(ctx: Context) -> None:
    gen = seeded(22410)
    model = Stack(8, 64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    pool = BlockPool(gen)
    params = list(model.parameters())
    moves, prev = {}, {}

    def before(step):
        prev["w"] = _snapshot(params)

    def after(step):
        moves[step] = _mean(
            [float((p.detach() - w).abs().mean()) for p, w in zip(params, prev["w"], strict=True)]
        )

    def scale_loss(step, total, out, y):
        if step == 30:  # epoch-end logging: the pool's summed loss, with autograd on
            return total + F.mse_loss(model(pool.x), pool.y, reduction="sum")
        return total

    _train(
        ctx,
        model,
        opt,
        pool.batches(64),
        260,
        F.mse_loss,
        before=before,
        after=after,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    # the same run, same batches, without the logging bug (not monitored)
    gen = seeded(22410)
    twin = Stack(8, 64, act=nn.SiLU)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=2e-3, weight_decay=1e-4)
    twin_pool = BlockPool(gen)
    twin_ls = []
    for x, y in itertools.islice(twin_pool.batches(64), 260):
        loss = F.mse_loss(twin(x), y)
        twin_opt.zero_grad()
        loss.backward()
        twin_opt.step()
        twin_ls.append(float(loss.detach()))
    before_move = _mean([moves[s] for s in range(15, 30)])
    after_move = _mean([moves[s] for s in range(50, 260)])
    ctx.check(
        "gradient at step 30 over 1000x the median before", gn[30] > 1000 * _median(gn[10:30])
    )
    ctx.check("updates after the onset under 25% of those before", after_move < 0.25 * before_move)
    ctx.check("loss fell before the onset", _fell(ls[:30], k=5, ratio=0.7))
    ctx.check(
        "loss stalls: steps 240-260 no lower than 0.8x steps 35-55",
        _mean(ls[240:]) > 0.8 * _mean(ls[35:55]),
    )
    ctx.check(
        "the same run without the bug ends under 0.75x this one (steps 220-260)",
        _mean(twin_ls[220:]) < 0.75 * _mean(ls[220:]),
    )
    ctx.check("finite", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


def _strikes(gen, batch, seed=11):
    """Fourteen standardised readings of an ulama hip strike (hip speed, ball height, player
    lean, ...) and its outcome (7 kinds), overlapping."""
    return _kinds(gen, batch, 14, 7, seed, noise=1.2)


@scenario(
    family="ulama_hip_strike_mixup_classifier",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) naming the outcome of an ulama hip strike (7 kinds, overlapping) from 14 standardised readings (hip speed, ball height, lean, ...), Adamax with OneCycleLR (peak 1e-2, 240 steps), mixup with Beta(0.4, 0.4) and cross-entropy with label smoothing 0.1 on both mixed targets. The noisy mixed loss falls and held-out accuracy goes from about 0.11 to about 0.95; finite.",
)
def h224_ulama_mixup_smoothing_control(ctx: Context) -> None:
    gen = seeded(22411)
    model = Stack(14, 64, out=7, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    steps = 240
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    beta = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4))
    mix = {}

    def alter(step, x, y):
        lam = float(beta.sample())
        perm = torch.randperm(len(y), generator=gen)
        mix["lam"], mix["other"] = lam, y[perm]
        return lam * x + (1 - lam) * x[perm], y

    def loss_fn(out, y):
        lam = mix["lam"]
        return lam * F.cross_entropy(out, y, label_smoothing=0.1) + (1 - lam) * F.cross_entropy(
            out, mix["other"], label_smoothing=0.1
        )

    probe = next(_strikes(torch.Generator().manual_seed(61), 512))
    with torch.no_grad():
        acc0 = float((model(probe[0]).argmax(-1) == probe[1]).float().mean())
    _train(
        ctx,
        model,
        opt,
        _strikes(gen, 64),
        steps,
        loss_fn,
        classifier=True,
        alter=alter,
        sched=sched,
    )
    ls = ctx.losses
    with torch.no_grad():
        acc = float((model(probe[0]).argmax(-1) == probe[1]).float().mean())
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.8))
    ctx.check("held-out accuracy over 0.6 and up from the start", acc > 0.6 and acc > acc0 + 0.3)
    ctx.check("finite", _finite(ls))


def _dust(gen, batch, seed=12):
    """Ten standardised readings of a Saharan dust outbreak (surface wind, boundary-layer depth,
    soil moisture, ...) and the aerosol optical depth (standardised); a tenth of the
    photometer readings are cloud-contaminated."""
    readings = _readings(gen, batch, 10, seed, noise=0.1)
    while True:
        x, y = next(readings)
        cloudy = torch.rand(batch, generator=gen) < 0.1
        yield x, torch.where(cloudy, y + 0.8 * torch.randn(batch, generator=gen).abs(), y)


@scenario(
    family="saharan_dust_optical_depth_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) predicting the aerosol optical depth of a Saharan dust outbreak (standardised) from 10 standardised readings (surface wind, boundary-layer depth, soil moisture, ...), a tenth of the photometer targets cloud-contaminated (biased up, heavy noise), RMSprop with momentum 0.5 at 2e-3, gradient clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 40, floor 2e-4), MSE. Noisy batches, the loss falls; finite.",
)
def h224_saharan_dust_plateau_control(ctx: Context) -> None:
    gen = seeded(22412)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3, alpha=0.99, momentum=0.5)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=40, min_lr=2e-4)
    _train(ctx, model, opt, _dust(gen, 64), 240, F.mse_loss, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.6))
    ctx.check("finite", _finite(ls))


class SpoonAE(nn.Module):
    """A tied-weight autoencoder: the decoder uses the encoder's weight transposed."""

    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _spoons(gen, batch, seed=13):
    """24 standardised thickness readings along a carved horn spoon, on a low-dimensional
    manifold (the carver's few gestures) plus gauge noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(5, 24, generator=g) / math.sqrt(5)
    while True:
        z = torch.randn(batch, 5, generator=gen)
        x = torch.tanh(z) @ basis + 0.05 * torch.randn(batch, 24, generator=gen)
        yield x, x


@scenario(
    family="horn_carver_spoon_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight autoencoder (enc, act; the decoder uses enc.weight transposed and its own bias) reconstructing 24 standardised thickness readings along a carved horn spoon that lie near a 5-dimensional manifold, Adam at 3e-3, warm-up of 20 steps then cosine (LambdaLR), gradient accumulation over 2 micro-batches, fp16 autocast with a default torch.amp.GradScaler, MSE. The loss falls about 7x and the scaler skips no step; finite.",
)
def h224_horn_spoon_fp16_control(ctx: Context) -> None:
    gen = seeded(22413)
    model = SpoonAE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps, warm = 200, 20

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _spoons(gen, 32),
        steps,
        F.mse_loss,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ls = ctx.losses
    skipped = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("loss fell", _fell(ls, k=10, ratio=0.5))
    ctx.check("under 5% of steps skipped by the scaler", skipped < 0.05 * steps)
    ctx.check("finite", _finite(ls))
