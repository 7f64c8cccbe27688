"""Held-out set 489 (``h489_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a raku-glaze crawl-defect multilabel net whose targets are built with ``>= 0`` instead of
``> 0`` (every label 1, the head's logits grow without bound, Adam), a farrier shoe-fit ReLU
regressor whose rare-event bias prior of -2.5 is applied to every Linear (dead ReLUs, RMSprop), a
geyser-basin tremor-energy net whose squared-amplitude sum runs in fp16 under autocast and
overflows once a louder season of recordings arrives (AdamW, GradScaler), a fly-shop lure
click-through factorisation machine whose loss weight is multiplied by 100 for one step by an
epoch-boundary bug (SGD momentum), a santoor bridge-tuning two-group regressor whose unfreeze
step is typed 20000 for 200 (frozen group, NAdam + LambdaLR), an auroral-station masked-mean set
net dividing by a zero count with no clamp (0/0, Adamax), a pelota wall-zone classifier fed one
batch in raw millimetres (Adagrad), a glass-lampworking bead-size regressor at an SGD lr typed 0.9
for 0.09 (past 2/sharpness), a ikebana-style classifier whose temperature is read in percent
(softmax collapse, RAdam) and a telegraph-key fist ReLU RNN whose identity recurrent init is
scaled 1.1 (exploding gradients through time, SGD Nesterov).

Controls: a chandlery order hashed EmbeddingBag net with sparse features (Adagrad); a
calving-iceberg acoustic Conv1d classifier (AdamW, warm-up + cosine, label smoothing, clipping); a
sculling split-time Huber regressor (SGD Nesterov, OneCycleLR, gradient accumulation 2, clipping).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    accumulate=1,
    attach=True,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``backprop(step, loss)`` is the loss actually backpropagated, ``after(step, loss)`` runs after
    the optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it. With
    ``attach=False`` it is a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
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
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- 1. output logit divergence: multilabel targets built with >= 0 -------------------------------


def _glaze_batches(gen, batch=64, d_in=12, labels=6, seed=4891):
    """Kiln readings and defect counts per glaze defect (crawl, pinhole, shiver, ...)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        counts = torch.poisson(torch.exp(x @ w - 0.5), generator=gen)
        yield x, counts


@scenario(
    family="raku_glaze_crawl_defect_multilabel_bce_relu_net",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Raku-glaze defect tagger (ReLU MLP on kiln atmosphere, reduction time and glaze "
    "thickness readings, six defect labels, BCE with logits, Adam). The targets are built from "
    "the defect counts with counts >= 0 instead of counts > 0, so every label of every firing is "
    "1: the loss keeps rewarding larger logits and the head's outputs grow without bound.",
)
def h489_raku_glaze_all_ones(ctx) -> None:
    seeded(4891)
    model = _Net(12, 48, 6)
    probe_x, _ = next(_glaze_batches(torch.Generator().manual_seed(1), 256))

    def run(net, bug, attach):
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        mx = []

        def alter(step, x, counts):
            return x, ((counts >= 0) if bug else (counts > 0)).float()

        def after(step, loss):
            with torch.no_grad():
                mx.append(float(net(probe_x).abs().max()))

        g = torch.Generator().manual_seed(48910)
        losses, _ = _train(
            ctx,
            net,
            opt,
            _glaze_batches(g),
            220,
            F.binary_cross_entropy_with_logits,
            alter=alter,
            after=after,
            attach=attach,
        )
        return losses, mx

    with torch.no_grad():
        start = float(model(probe_x).abs().max())
    torch.manual_seed(48911)
    _, ref = run(_Net(12, 48, 6), False, False)
    losses, mx = run(model, True, True)
    ctx.check("with counts > 0 the logits stay under 10", max(ref) < 10)
    ctx.check("max |logit| over 20x its start", mx[-1] > 20 * start)
    ctx.check("max |logit| over 15 at the end", mx[-1] > 15)
    ctx.check("still rising over the last 100 steps", mx[-1] > 1.05 * mx[119])
    ctx.check("no NaN", _finite(losses))


# -- 2. loss of plasticity: a rare-event bias prior applied to every Linear -----------------------


@scenario(
    family="farrier_shoe_fit_gap_dead_bias_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Farrier shoe-fit gap regressor (ReLU MLP on hoof length, wall angle, heel height and "
    "shoe size readings, MSE, RMSprop). An init helper meant to set the head's bias to a prior "
    "of -2.5 loops over every nn.Linear: almost all fc1 units start below zero on every input, "
    "the fc2 units after them too, and they never come back, so the net cannot learn.",
)
def h489_farrier_bias_prior_everywhere(ctx) -> None:
    seeded(4892)

    def make(bug):
        net = _Net(10, 64, 1)
        for m in net.modules():
            if isinstance(m, nn.Linear) and (bug or m is net.head):
                nn.init.constant_(m.bias, -2.5 if bug else 0.0)
        return net

    model = make(True)
    probe_x, _ = next(_readings(torch.Generator().manual_seed(2), 512, 10, 4892))

    def run(net, attach):
        opt = torch.optim.RMSprop(net.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(48920)
        losses, _ = _train(
            ctx, net, opt, _readings(g, 64, 10, 4892), 200, F.mse_loss, attach=attach
        )
        return losses

    torch.manual_seed(48921)
    ref_net = make(False)
    ref = run(ref_net, False)
    losses = run(model, True)
    with torch.no_grad():
        dead1 = dead_fraction(model.act1(model.fc1(probe_x)))
        dead2 = dead_fraction(model.features(probe_x))
        ref_dead = dead_fraction(ref_net.act1(ref_net.fc1(probe_x)))
    ctx.check("over 80% of fc1's units dead at the end", dead1 > 0.8)
    ctx.check("over 80% of fc2's units dead at the end", dead2 > 0.8)
    ctx.check("with the prior on the head only, under 30% dead", ref_dead < 0.3)
    ctx.check("the reference trains (loss under 0.5x its start)", _fell(ref, ratio=0.5))
    ctx.check(
        "the faulty run ends over 2x the reference's loss",
        _mean(losses[-10:]) > 2 * _mean(ref[-10:]),
    )
    ctx.check("no NaN", _finite(losses))


# -- 3. amp overflow: a squared-amplitude sum in fp16 under autocast -------------------------------

GEYSER_STEP = 120


class _Energy(nn.Module):
    """Log of the summed squared filter outputs: computed in the autocast dtype."""

    def forward(self, h):
        return torch.log1p((h * h).sum(-1, keepdim=True))


class _TremorNet(nn.Module):
    def __init__(self, d_in=64, filters=128):
        super().__init__()
        self.front = nn.Linear(d_in, filters)
        self.energy = _Energy()
        self.fc = nn.Linear(filters + 1, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        h = self.front(x)
        z = torch.cat([torch.tanh(h), self.energy(h)], -1)
        return self.head(F.silu(self.fc(z))).squeeze(-1)


def _tremor_batches(gen, batch=32, d_in=64, loud_from=None):
    """Geyser-basin seismometer windows; the target is the log loudness (in fp32)."""
    step = 0
    while True:
        amp = 0.5 + 1.5 * torch.rand(batch, 1, generator=gen)
        if loud_from is not None and step >= loud_from:
            amp = amp * 40.0
        x = amp * torch.randn(batch, d_in, generator=gen)
        y = torch.log(x.pow(2).mean(-1))
        step += 1
        yield x, y


@scenario(
    family="geyser_basin_tremor_energy_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("energy",),
    diverges=GEYSER_STEP,
    heldout=True,
    onset=GEYSER_STEP,
    note="Geyser-basin tremor-loudness regressor (a filter bank Linear, a log-energy feature "
    "log1p(sum h^2) and a SiLU head, MSE, AdamW, fp16 autocast with a GradScaler). The energy "
    "sum runs in fp16 under autocast: with the quiet recordings it stays under 65504, but from "
    "step 120 the louder eruption season arrives (valid data, 40x the amplitude) and the sum "
    "overflows to inf; the same run in fp32 stays finite.",
)
def h489_geyser_energy_fp16(ctx) -> None:
    seeded(4893)
    model = _TremorNet()

    def run(net, amp, attach):
        opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-2)
        scaler = torch.amp.GradScaler("cpu", enabled=amp)
        if attach:
            ctx.attach(net, opt, scaler=scaler)
        g = torch.Generator().manual_seed(48930)
        batches = _tremor_batches(g, loud_from=GEYSER_STEP)
        losses, infs = [], []
        for _step in range(200):
            x, y = next(batches)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                h = net.front(x)
                infs.append(bool(torch.isinf(net.energy(h)).any()))
                out = net(x)
            loss = F.mse_loss(out.float(), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            if attach:
                ctx.grad_norms.append(grad_norm(net))
            scaler.step(opt)
            scaler.update()
            losses.append(float(loss.detach()))
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
                ctx.step(loss)
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(losses[-1]):
                break
        return losses, infs

    torch.manual_seed(48931)
    ref_net = _TremorNet()
    ref_net.load_state_dict(model.state_dict())
    ref, _ = run(ref_net, False, False)
    losses, infs = run(model, True, True)
    ctx.check("in fp32 the same run stays finite through the loud season", _finite(ref))
    ctx.check("finite and training before the loud season", _fell(losses[:GEYSER_STEP]))
    ctx.check("no fp16 inf in the energy before the onset", not any(infs[:GEYSER_STEP]))
    ctx.check("the fp16 energy is inf at the onset", len(infs) > GEYSER_STEP and infs[GEYSER_STEP])
    ctx.check(
        "the loss is non-finite at the onset",
        len(losses) == GEYSER_STEP + 1 and not math.isfinite(losses[-1]),
    )


# -- 4. gradient spike: a factorisation machine's loss weight x100 for one step -------------------

FLY_STEP = 150
FLY_FIELDS = (24, 60, 12, 40, 8, 30)


class _FMClick(nn.Module):
    """Factorisation machine with a small deep part over categorical fields (one table)."""

    def __init__(self, fields=FLY_FIELDS, dim=8):
        super().__init__()
        self.register_buffer("offsets", torch.tensor([0, *list(fields)[:-1]]).cumsum(0))
        n = sum(fields)
        self.emb = nn.Embedding(n, dim)
        self.lin = nn.Embedding(n, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        self.deep = nn.Sequential(nn.Linear(len(fields) * dim, 32), nn.ReLU(), nn.Linear(32, 1))
        nn.init.normal_(self.emb.weight, std=0.05)
        nn.init.zeros_(self.lin.weight)

    def forward(self, cats):
        idx = cats + self.offsets
        v = self.emb(idx)
        pair = 0.5 * (v.sum(1).pow(2) - v.pow(2).sum(1)).sum(-1)
        first = self.lin(idx).sum((1, 2))
        return self.bias + first + pair + self.deep(v.flatten(1)).squeeze(-1)


def _click_batches(gen, batch=128, fields=FLY_FIELDS, seed=4894):
    """Lure-shop impressions: lure, pattern, hook size, region, month, angler tier; a click."""
    g = torch.Generator().manual_seed(seed)
    tables = [0.8 * torch.randn(n, 4, generator=g) for n in fields]
    first = [0.5 * torch.randn(n, generator=g) for n in fields]
    while True:
        cats = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in fields], 1)
        vs = torch.stack([tables[f][cats[:, f]] for f in range(len(fields))], 1)
        logit = sum(first[f][cats[:, f]] for f in range(len(fields)))
        logit = logit + 0.5 * (vs.sum(1).pow(2) - vs.pow(2).sum(1)).sum(-1) / 2 - 1.0
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield cats, y


@scenario(
    family="fly_shop_lure_click_factorisation_machine",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FLY_STEP,
    note="Fly-shop lure click-through model (a hand-written factorisation machine: one embedding "
    "table over six generated categorical fields, first-order weights, pairwise interactions and "
    "a small deep part, BCE with logits, SGD momentum, clipping at 5). A loss-weight schedule keyed on the epoch "
    "boundary reads the warm-up weight table off by one and multiplies the loss by 100 for the "
    "single step 150: one gradient burst with nothing wrong in the data, and the run recovers.",
)
def h489_fly_shop_fm_weight(ctx) -> None:
    gen = seeded(4894)
    model = _FMClick()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    def backprop(step, loss):
        return loss * (100.0 if step == FLY_STEP else 1.0)

    losses, norms = _train(
        ctx,
        model,
        opt,
        _click_batches(gen),
        260,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=5.0,
    )
    before = norms[FLY_STEP - 40 : FLY_STEP]
    ctx.check("gradient over 50x the median at the onset", norms[FLY_STEP] > 50 * _median(before))
    ctx.check(
        "the batch loss at the onset is ordinary",
        losses[FLY_STEP] < 1.5 * _mean(losses[FLY_STEP - 10 : FLY_STEP]),
    )
    ctx.check(
        "trained before the onset",
        _mean(losses[FLY_STEP - 10 : FLY_STEP]) < 0.9 * _mean(losses[:10]),
    )
    ctx.check(
        "the loss jumps after the burst",
        max(losses[FLY_STEP + 1 : FLY_STEP + 6]) > 1.5 * _mean(losses[FLY_STEP - 10 : FLY_STEP]),
    )
    ctx.check(
        "recovers (last 10 under 1.2x before the onset)",
        _mean(losses[-10:]) < 1.2 * _mean(losses[FLY_STEP - 10 : FLY_STEP]),
    )
    ctx.check("no NaN", _finite(losses))


# -- 5. update ratio out of range: an unfreeze step typed 20000 for 200 ----------------------------

SANTOOR_STEP = 200


@scenario(
    family="santoor_bridge_tuning_two_group_tanh_huber_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    onset=SANTOOR_STEP,
    note="Santoor bridge-tuning regressor (tanh MLP on string-course, bridge position and "
    "temperature readings, Huber loss, NAdam with two param groups and a LambdaLR). The input "
    "layer is meant to stay frozen for 200 steps while the rest settles and then unfreeze, but "
    "the unfreeze step is typed 20000: from step 200 on fc1's updates stay exactly zero.",
)
def h489_santoor_unfreeze_typo(ctx) -> None:
    gen = seeded(4895)
    model = _Net(10, 48, 1, act=nn.Tanh)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.NAdam(
        [{"params": model.fc1.parameters(), "lr": 3e-3}, {"params": rest, "lr": 3e-3}]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 0.0 if s < 20000 else 1.0, lambda s: 1.0]
    )
    fc1_0 = model.fc1.weight.detach().clone()
    fc2_0 = model.fc2.weight.detach().clone()
    snap = {}

    def after(step, loss):
        if step == SANTOOR_STEP:
            snap["fc1"] = model.fc1.weight.detach().clone()

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4895), 280, F.huber_loss, sched=sched, after=after
    )
    moved1 = float((model.fc1.weight - fc1_0).norm() / fc1_0.norm())
    late1 = float((model.fc1.weight - snap["fc1"]).norm() / fc1_0.norm())
    moved2 = float((model.fc2.weight - fc2_0).norm() / fc2_0.norm())
    ctx.check("fc1 moved under 1e-7 of its norm over the run", moved1 < 1e-7)
    ctx.check("fc1 still frozen after the intended unfreeze", late1 < 1e-7)
    ctx.check("fc2 moved over 5% of its norm", moved2 > 0.05)
    ctx.check("finite", _finite(losses))


# -- 6. nonfinite: a masked mean over stations with no clamp on the count --------------------------

AURORA_STEP = 130


class _MaskedMean(nn.Module):
    def forward(self, h, mask):
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


class _StationSet(nn.Module):
    """Encodes each magnetometer station's reading, averages the online ones, predicts Kp."""

    def __init__(self, d_in=5, hidden=32):
        super().__init__()
        self.enc = nn.Linear(d_in, hidden)
        self.pool = _MaskedMean()
        self.fc = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.relu(self.enc(x[..., :-1]))
        z = self.pool(h, x[..., -1])
        return self.head(F.relu(self.fc(z))).squeeze(-1)


def _station_batches(gen, batch=32, stations=12, d_in=5, outage_at=None, seed=4896):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    step = 0
    while True:
        x = torch.randn(batch, stations, d_in, generator=gen)
        mask = (torch.rand(batch, stations, generator=gen) < 0.7).float()
        mask[:, 0] = 1.0
        if outage_at is not None and step == outage_at:
            mask[5] = 0.0  # every station of one night offline
        y = ((torch.tanh(x @ w) * mask).sum(1) / mask.sum(1).clamp(min=1)) * 3
        step += 1
        yield torch.cat([x, mask[..., None]], -1), y


@scenario(
    family="auroral_station_kp_masked_mean_set_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("pool",),
    diverges=AURORA_STEP,
    heldout=True,
    onset=AURORA_STEP,
    note="Auroral-activity (Kp) set net over magnetometer stations (per-station ReLU encoder, a "
    "masked mean over the online stations, MSE, Adamax). The masked mean divides by the number "
    "of online stations with no clamp(min=1): at step 130 a night with every station offline "
    "gives 0/0 = NaN in the pooling and the loss is NaN.",
)
def h489_aurora_masked_mean_zero(ctx) -> None:
    gen = seeded(4896)
    model = _StationSet()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    counts = []

    def alter(step, x, y):
        counts.append(float(x[..., -1].sum(1).min()))
        return x, y

    losses, _ = _train(
        ctx, model, opt, _station_batches(gen, outage_at=AURORA_STEP), 200, F.mse_loss, alter=alter
    )
    ctx.check("finite before the outage", _finite(losses[:AURORA_STEP]))
    ctx.check("trained before the outage", _fell(losses[:AURORA_STEP]))
    ctx.check("a sample with zero online stations at the onset", counts[AURORA_STEP] == 0.0)
    ctx.check(
        "the loss is NaN at step 130",
        len(losses) == AURORA_STEP + 1 and math.isnan(losses[AURORA_STEP]),
    )


# -- 7. data outlier: one batch of wall-zone readings in raw millimetres ---------------------------

PELOTA_STEP = 100


@scenario(
    family="basque_pelota_wall_zone_asgd_relu_classifier",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=PELOTA_STEP,
    note="Basque pelota wall-zone classifier (ReLU MLP on ball speed, spin and impact "
    "position readings, five zones, cross-entropy, ASGD, clipping at 5). One shard was exported "
    "before the metres conversion: the batch at step 100 comes in raw millimetres (1000x); the "
    "loss and gradient jump for that batch and the run recovers.",
)
def h489_pelota_millimetre_shard(ctx) -> None:
    gen = seeded(4897)
    model = _Net(12, 48, 5)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    scale = []

    def alter(step, x, y):
        if step == PELOTA_STEP:
            x = x * 1000.0
        scale.append(float(x.abs().max()))
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 4897, spread=1.5),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=5.0,
    )
    pre = losses[PELOTA_STEP - 20 : PELOTA_STEP]
    ctx.check(
        "inputs over 100x at the onset", scale[PELOTA_STEP] > 100 * _median(scale[:PELOTA_STEP])
    )
    ctx.check("loss over 10x at the onset", losses[PELOTA_STEP] > 10 * _mean(pre))
    ctx.check(
        "gradient over 20x the median at the onset",
        norms[PELOTA_STEP] > 20 * _median(norms[PELOTA_STEP - 20 : PELOTA_STEP]),
    )
    ctx.check("recovers (last 10 under 1.5x before)", _mean(losses[-10:]) < 1.5 * _mean(pre))
    ctx.check("no NaN", _finite(losses))


# -- 8. sharpness above the limit: an SGD lr typed 0.9 for 0.09 ----------------------------------


def _top_eig(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="lampwork_glass_bead_diameter_sgd_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Lampwork glass-bead diameter regressor (tanh MLP on mandrel speed, gather time and "
    "torch-flame readings, MSE, plain SGD, linear warm-up over 100 steps). The peak lr is typed "
    "0.9 for 0.09: once the warm-up takes lr times the top Hessian eigenvalue past 2, the loss "
    "oscillates with growing amplitude and blows up.",
)
def h489_lampwork_sgd_lr_typo(ctx) -> None:
    seeded(4898)
    model = _Net(10, 48, 1, act=nn.Tanh)
    probe = next(_readings(torch.Generator().manual_seed(3), 256, 10, 4898))
    lam = _top_eig(model, F.mse_loss, *probe)

    def run(net, lr, attach):
        opt = torch.optim.SGD(net.parameters(), lr=lr)

        def before(step):  # linear warm-up to the peak over 100 steps
            opt.param_groups[0]["lr"] = lr * min(1.0, (step + 1) / 100)

        g = torch.Generator().manual_seed(48980)
        losses, _ = _train(
            ctx,
            net,
            opt,
            _readings(g, 64, 10, 4898),
            200,
            F.mse_loss,
            before=before,
            attach=attach,
        )
        return losses

    torch.manual_seed(48981)
    ref_net = _Net(10, 48, 1, act=nn.Tanh)
    ref_net.load_state_dict(model.state_dict())
    ref = run(ref_net, 0.09, False)
    losses = run(model, 0.9, True)
    ctx.check("at the intended lr 0.09 the run trains", _fell(ref))
    ctx.check("peak lr x top Hessian eigenvalue (at init) over 2", 0.9 * lam > 2)
    ctx.check("trains first, during the warm-up", min(losses[:40]) < 0.7 * _mean(losses[:5]))
    ctx.check(
        "the loss blows up (over 100x its start, or non-finite)",
        not _finite(losses) or max(losses) > 100 * _mean(losses[:5]),
    )


# -- 9. softmax collapse: a temperature read in percent -------------------------------------------


class _TempNet(_Net):
    def __init__(self, temperature):
        super().__init__(16, 48, 6, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="ikebana_arrangement_style_percent_temperature_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Ikebana arrangement-style classifier (GELU MLP on stem angle, vessel and branch "
    "ratio features, six schools, cross-entropy, RAdam). The config gives the softmax "
    "temperature as '0.5 %' and the loader keeps the percent: logits are divided by 0.005, and "
    "most rows' target probability rounds to exactly 1.0 in float32.",
)
def h489_ikebana_percent_temperature(ctx) -> None:
    seeded(4899)
    model = _TempNet(0.005)
    probe_x, probe_y = next(_grades(torch.Generator().manual_seed(4), 256, 16, 6, 4899))

    def run(net, attach):
        opt = torch.optim.RAdam(net.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(48990)
        return _train(
            ctx,
            net,
            opt,
            _grades(g, 64, 16, 6, 4899),
            150,
            F.cross_entropy,
            classifier=True,
            attach=attach,
        )[0]

    torch.manual_seed(48991)
    ref_net = _TempNet(0.5)
    ref_net.load_state_dict(model.state_dict())
    run(ref_net, False)
    losses = run(model, True)
    with torch.no_grad():
        frac = collapsed_fraction(model(probe_x), probe_y)
        ref_frac = collapsed_fraction(ref_net(probe_x), probe_y)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("at temperature 0.5 under 5% of rows", ref_frac < 0.05)
    ctx.check("no NaN", _finite(losses))


# -- 10. exploding gradients: an identity recurrent init scaled 1.1 --------------------------------


class _KeyRNN(nn.Module):
    """A hand-written ReLU RNN over telegraph-key contact readings; classifies the operator."""

    def __init__(self, d_in=4, hidden=32, classes=4, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, classes)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
        self.h0 = None

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features, requires_grad=True)
        self.h0 = h
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
        self.hT = h
        return self.head(h)


def _key_batches(gen, batch=32, length=30, classes=4, seed=48910):
    g = torch.Generator().manual_seed(seed)
    styles = 0.5 * torch.randn(classes, 4, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = styles[y][:, None, :] + 0.5 * torch.randn(batch, length, 4, generator=gen)
        yield x, y


@scenario(
    family="telegraph_key_operator_fist_identity_relu_rnn",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="Telegraph-key operator ('fist') classifier (a hand-written ReLU RNN over 30 steps of "
    "key contact readings, identity recurrent init, cross-entropy, SGD Nesterov). The identity "
    "init's gain is set to 1.1 instead of 1.0: the gradient grows back through time step after "
    "step, and the loss blows up.",
)
def h489_telegraph_identity_gain(ctx) -> None:
    seeded(48911)
    model = _KeyRNN(gain=1.1)
    x, y = next(_key_batches(torch.Generator().manual_seed(5)))

    def ratio(net):
        out = net(x)
        gh0, ghT = torch.autograd.grad(F.cross_entropy(out, y), [net.h0, net.hT])
        return float(gh0.norm() / ghT.norm().clamp(min=1e-12))

    torch.manual_seed(48912)
    ref_ratio = ratio(_KeyRNN(gain=1.0))
    r = ratio(model)
    ref_net = _KeyRNN(gain=1.0)

    def run(net, attach):
        opt = torch.optim.SGD(net.parameters(), lr=1.5e-4, momentum=0.9, nesterov=True)
        g = torch.Generator().manual_seed(48913)
        return _train(
            ctx, net, opt, _key_batches(g), 200, F.cross_entropy, classifier=True, attach=attach
        )[0]

    ref = run(ref_net, False)
    losses = run(model, True)
    ctx.check("the gradient at h_0 over 10x the one at h_T", r > 10)
    ctx.check("at gain 1.0 under 3x", ref_ratio < 3)
    ctx.check("at gain 1.0 the run trains, finite", _fell(ref, ratio=0.5))
    ctx.check(
        "the loss blows up (over 100x its start, then non-finite)",
        not _finite(losses) and max(v for v in losses if math.isfinite(v)) > 100 * losses[0],
    )


# -- controls --------------------------------------------------------------------------------------


class _OrderBag(nn.Module):
    """Hashed item ids of a chandlery order, averaged by an EmbeddingBag, then a small MLP."""

    def __init__(self, rows=4000, dim=16):
        super().__init__()
        self.bag = nn.EmbeddingBag(rows, dim, mode="mean")
        self.fc = nn.Linear(dim, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, ids):
        return self.head(F.relu(self.fc(self.bag(ids)))).squeeze(-1)


def _order_batches(gen, batch=32, rows=4000, items=5, seed=48920):
    g = torch.Generator().manual_seed(seed)
    worth = torch.randn(rows, generator=g)
    zipf = 1.0 / torch.arange(1, rows + 1).float() ** 0.8
    while True:
        ids = torch.multinomial(zipf, batch * items, replacement=True, generator=gen)
        ids = ids.reshape(batch, items)
        yield ids, worth[ids].mean(1) * 2


@scenario(
    family="chandlery_order_hashed_embedding_bag_regressor",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Ship-chandlery order-value regressor (4000 hashed item rows in an EmbeddingBag, mean "
    "of five items per order drawn from a Zipf catalogue, a small ReLU MLP, MSE, Adagrad): "
    "sparse features, most embedding rows get no gradient on most steps. Control.",
)
def h489_chandlery_sparse_bag(ctx) -> None:
    gen = seeded(48920)
    model = _OrderBag()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    idle = []

    def after(step, loss):
        idle.append(float((model.bag.weight.grad.abs().sum(1) == 0).float().mean()))

    losses, _ = _train(ctx, model, opt, _order_batches(gen), 250, F.mse_loss, after=after)
    ctx.check("trained (loss under 0.7x its start)", _fell(losses))
    ctx.check("over 90% of rows get no gradient on a typical step", _median(idle) > 0.9)
    ctx.check("finite", _finite(losses))


class _CalvingNet(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _calving_batches(gen, batch=32, length=64, classes=4):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.25 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq[:, None] * t + phase) + 0.6 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="iceberg_calving_hydrophone_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Iceberg-calving hydrophone classifier (ReLU Conv1d on noisy tone windows, four event "
    "kinds, cross-entropy with label smoothing 0.1, AdamW, linear warm-up 20 steps then cosine, "
    "clipping at 1). Control.",
)
def h489_calving_conv1d_control(ctx) -> None:
    gen = seeded(48921)
    model = _CalvingNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    total = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (total - 20)))
        ),
    )

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _calving_batches(gen),
        total,
        loss_fn,
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("trained (loss under 0.7x its start)", _fell(losses))
    ctx.check("finite", _finite(losses))


@scenario(
    family="sculling_split_time_onecycle_silu_huber_regressor",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="Sculling 500 m split-time regressor (SiLU MLP on stroke rate, catch angle and drive "
    "length readings, Huber loss, SGD Nesterov, OneCycleLR, gradient accumulation 2, clipping "
    "at 1). Control.",
)
def h489_sculling_onecycle_control(ctx) -> None:
    gen = seeded(48922)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=220)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 48922, noise=0.2),
        220,
        F.huber_loss,
        sched=sched,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("trained (loss under 0.7x its start)", _fell(losses))
    ctx.check("finite", _finite(losses))
