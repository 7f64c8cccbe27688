"""Held-out set 445 (``h445_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: an evaporite salt-rake brine-depth fp16 ReLU regressor whose barometer column arrives in
pascals for bar (fc1 overflows float16), a tin-streaming cassiterite two-group regressor whose
fc1 group lr is typed 4e-9 for 4e-2 (a frozen first layer), a hurling sliotar-spin classifier
whose multi-class hinge loss lost its clamp (the head's logits grow without bound), a sgraffito
plaster-cure regressor whose fine-tuning callback re-initialises the head once (a one-off loss
spike), a geyser-basin pulse ReLU Elman RNN whose identity recurrent init is scaled 1.25 for 1.0
(gradients grow through time), a scything windrow-yield regressor fed one row with a stuck ADC
reading (one corrupted sample), a sugarhouse boil-time net that takes log of a pollen count with
no +1 (log 0), a plein-air easel-sway regressor whose warm-up lambda has no min(., 1) (the lr
climbs past 2/sharpness), a lacrosse pocket-depth regressor whose fc2 bias gets a gate init of -2.0
(its ReLUs die) and a sumi ink-stone grade cosine classifier whose scale is
applied twice (softmax saturates).

Controls: a sail-loft luff-flutter 1-D U-Net denoiser (AdamW under OneCycleLR, Huber,
clipping), a cooper's adze chime-cut classifier with gradual unfreezing (SGD Nesterov, label
smoothing, the trunk joins the optimizer at step 100) and a dulcimer hammer-felt fp16 multilabel
BCE net (GradScaler, Adam under ReduceLROnPlateau, accumulation over 2).
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
    after=None,
    clip=None,
    sched=None,
    plateau=False,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``after(step)`` after the optimizer step. Stops after a non-finite loss (once ``ctx.step``
    has seen it). With ``attach=False`` it is a reference run outside the monitor."""
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
            total = loss / accumulate
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
            if plateau:
                sched.step(shown)
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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


# -- faults ----------------------------------------------------------------------------------------

SALT_PA = 80


@scenario(
    family="evaporite_salt_rake_brine_fp16_relu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=SALT_PA,
    heldout=True,
    onset=SALT_PA,
    note="Evaporite salt-pan brine-depth regressor (ReLU MLP, MSE, AdamW, fp16 autocast with a "
    "GradScaler). From step 80 the weather-station shard writes the barometer column in pascals "
    "instead of bar (x1e5, no other change): fc1's float16 output passes 65504 on a batch whose "
    "float32 forward is finite, and the loss is non-finite at step 80.",
)
def h445_salt_rake_pascal_overflow(ctx) -> None:
    gen = seeded(4451)
    model = _Net(6, 32, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    def alter(step, x, y):
        if step >= SALT_PA:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1e5
            seen.setdefault("x", x.clone())
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, seed=451),
        160,
        F.mse_loss,
        alter=alter,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    x = seen.get("x")
    with torch.no_grad():
        f32 = model.fc1(x) if x is not None else torch.zeros(1)
        with torch.autocast("cpu", dtype=torch.float16):
            f16 = model.fc1(x) if x is not None else torch.zeros(1)
    ctx.check("loss finite before step 80", _finite(ls[:SALT_PA]))
    ctx.check("loss non-finite at step 80", len(ls) == SALT_PA + 1 and not math.isfinite(ls[-1]))
    ctx.check("fc1's float16 output has inf on the pascal batch", bool(torch.isinf(f16).any()))
    ctx.check("fc1's float32 output is finite on it", bool(torch.isfinite(f32).all()))
    ctx.check("float32 |fc1| max over 65504", float(f32.abs().max()) > 65504)


@scenario(
    family="tin_streaming_cassiterite_two_group_relu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Tin-streaming cassiterite-yield regressor (ReLU MLP, MSE, Adagrad with per-layer "
    "param groups read from a config). The fc1 entry is typed 4e-9 for 4e-2: fc1 stays at its "
    "initial weights (updates under 1e-7 of its norm a step) while fc2 and the head train at "
    "4e-2; the loss falls, only slower.",
)
def h445_tin_streaming_fc1_lr_typo(ctx) -> None:
    gen = seeded(4452)
    model = _Net(10, 48, 1)
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 4e-9},
            {"params": model.fc2.parameters(), "lr": 4e-2},
            {"params": model.head.parameters(), "lr": 4e-2},
        ]
    )
    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=452), 200, F.mse_loss)
    fc1 = _rel_change(w0["fc1.weight"], model.fc1.weight)
    fc2 = _rel_change(w0["fc2.weight"], model.fc2.weight)
    ctx.check("fc1 moved under 1e-5 of its norm over the run", fc1 < 1e-5)
    ctx.check("fc2 moved over 5% of its norm", fc2 > 0.05)
    ctx.check("loss fell", _fell(ctx.losses))


class _SpinNet(nn.Module):
    def __init__(self, d_in=12, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(48, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _hinge_no_clamp(z, y):
    """Crammer-Singer hinge as written: the clamp(min=0) is missing."""
    zy = z.gather(1, y[:, None]).squeeze(1)
    other = z.scatter(1, y[:, None], float("-inf")).max(1).values
    return (1.0 + other - zy).mean()


@scenario(
    family="hurling_sliotar_spin_unclamped_hinge_classifier",
    optimizer="SGD momentum",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Hurling sliotar spin-type classifier (ReLU MLP on high-speed-camera features, SGD "
    "momentum 0.9). The multi-class hinge loss is written 1 + max_other - z_y with the "
    ".clamp(min=0) missing: once a row is right the loss still pays for a wider margin, so the "
    "head's logits are pushed apart without bound and the 'loss' goes far below zero.",
)
def h445_sliotar_hinge_missing_clamp(ctx) -> None:
    gen = seeded(4453)
    model = _SpinNet()
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9)
    probe_x, _ = next(_grades(torch.Generator().manual_seed(9), 256, 12, 5, seed=453))
    mags = []

    def after(step):
        with torch.no_grad():
            mags.append(float(model(probe_x).abs().max()))

    with torch.no_grad():
        start = float(model(probe_x).abs().max())
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, seed=453),
        200,
        _hinge_no_clamp,
        classifier=True,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", mags[-1] > 20 * start)
    ctx.check("still growing over the last 50 steps", mags[-1] > 1.3 * mags[-50])
    ctx.check("'loss' below -10", ctx.losses[-1] < -10)
    ctx.check("finite", _finite(ctx.losses))


SGRAFFITO_RESET = 130


@scenario(
    family="sgraffito_plaster_cure_head_reset_gelu_regressor",
    optimizer="RAdam",
    cause="loss_spike",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=SGRAFFITO_RESET,
    note="Sgraffito plaster cure-time regressor (GELU MLP, MSE, RAdam). A fine-tuning callback "
    "meant for a new site, reset_head(), fires once at the epoch boundary at step 130 and "
    "re-initialises the head (optimizer state, data and lr unchanged): the loss jumps back up "
    "once and the run recovers within a few dozen steps.",
)
def h445_sgraffito_head_reset(ctx) -> None:
    gen = seeded(4454)
    model = _Net(8, 48, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)

    def before(step):
        if step == SGRAFFITO_RESET:
            with torch.no_grad():
                nn.init.normal_(model.head.weight, std=0.5)
                nn.init.normal_(model.head.bias, std=1.0)

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=454), 240, F.mse_loss, before=before)
    ls = ctx.losses
    pre = _median(ls[110:SGRAFFITO_RESET])
    ctx.check("loss at 130 over 3x the median of 110..129", ls[SGRAFFITO_RESET] > 3 * pre)
    ctx.check(
        "back under 2x within 60 steps",
        min(ls[SGRAFFITO_RESET + 1 : SGRAFFITO_RESET + 60]) < 2 * pre,
    )
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[110:SGRAFFITO_RESET]))
    ctx.check("finite", _finite(ls))


class _ReluElman(nn.Module):
    """A ReLU Elman cell written by hand, identity-initialised recurrence (IRNN)."""

    def __init__(self, d_in=3, hidden=32, scale=1.0):
        super().__init__()
        self.hidden = hidden
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        with torch.no_grad():
            self.rec.weight.copy_(scale * torch.eye(hidden))
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _geyser(gen, batch, steps=24):
    while True:
        x = 0.5 * torch.randn(batch, steps, 3, generator=gen)
        w = torch.exp(-0.15 * torch.arange(steps - 1, -1, -1).float())
        y = (x[:, :, 0] * w).sum(1) / 2 + 0.3 * x[:, -1, 1]
        yield x, y


@scenario(
    family="geyser_basin_pulse_relu_elman_rnn",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Geyser-basin pulse-height forecaster (hand-written ReLU Elman RNN over 24 "
    "seismometer readings, MSE, Adam, clipping at 1.0). The recurrent identity init is "
    "scaled by 1.25 (a config's init_scale meant for the input layer): the gradient "
    "dL/dh_t grows back through time, over 20x at t=0 what it is at the last step.",
)
def h445_geyser_irnn_scale(ctx) -> None:
    def time_ratio(scale):
        torch.manual_seed(4455)
        m = _ReluElman(scale=scale)
        x, y = next(_geyser(torch.Generator().manual_seed(55), 64))
        F.mse_loss(m(x), y).backward()
        return float(m.states[0].grad.norm() / m.states[-1].grad.norm().clamp_min(1e-12))

    good = time_ratio(1.0)
    bad = time_ratio(1.25)
    gen = seeded(4455)
    model = _ReluElman(scale=1.25)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _loop(ctx, model, opt, _geyser(gen, 64), 100, F.mse_loss, clip=1.0)
    ctx.check("dL/dh_0 over 20x dL/dh_23 at scale 1.25", bad > 20)
    ctx.check("under 5x at scale 1.0 on the same batch", good < 5)
    ctx.check("gradient norm before clipping over 10 at step 0", ctx.grad_norms[0] > 10)


SCYTHE_GLITCH = 100


@scenario(
    family="scything_windrow_yield_asgd_silu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SCYTHE_GLITCH,
    note="Scything windrow hay-yield regressor (SiLU MLP, MSE, ASGD, clipping at 2.0). One row "
    "of the batch at step 100 carries a stuck 16-bit ADC reading (32767 in a standardised "
    "moisture column) and its target logged as 32.767: the loss and gradient jump on that one "
    "batch, clipping keeps the step bounded and the run recovers.",
)
def h445_scything_stuck_adc(ctx) -> None:
    gen = seeded(4456)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=1e9)

    def alter(step, x, y):
        if step == SCYTHE_GLITCH:
            x, y = x.clone(), y.clone()
            x[5, 2] = 32767.0
            y[5] = 32.767
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=456), 220, F.mse_loss, alter=alter, clip=2.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _median(ls[80:SCYTHE_GLITCH])
    ctx.check("loss at 100 over 50x the median before", ls[SCYTHE_GLITCH] > 50 * pre)
    ctx.check(
        "gradient at 100 over 20x the median before",
        gn[SCYTHE_GLITCH] > 20 * _median(gn[80:SCYTHE_GLITCH]),
    )
    ctx.check("recovers", _mean(ls[-20:]) < 2 * pre)
    ctx.check("finite", _finite(ls))


class _LogFeatures(nn.Module):
    """log of the count columns, written without the +1."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :2]), x[:, 2:]], 1)


class _Sugarhouse(nn.Module):
    def __init__(self, d_in=7):
        super().__init__()
        self.logfeat = _LogFeatures()
        self.fc1 = nn.Linear(d_in, 40)
        self.act = nn.GELU()
        self.head = nn.Linear(40, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.logfeat(x)))).squeeze(-1)


SUGAR_CALM = 90


def _sugarhouse(gen, batch):
    while True:
        counts = torch.poisson(20 + 30 * torch.rand(batch, 2, generator=gen), generator=gen) + 1
        rest = torch.randn(batch, 5, generator=gen)
        y = 0.3 * torch.log(counts[:, 0]) - 0.2 * torch.log(counts[:, 1]) + 0.4 * rest[:, 0]
        yield torch.cat([counts, rest], 1), y


@scenario(
    family="maple_sugarhouse_boil_log_pollen_nadam_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logfeat",),
    diverges=SUGAR_CALM,
    heldout=True,
    onset=SUGAR_CALM,
    note="Maple sugarhouse boil-time regressor (GELU MLP, MSE, NAdam). The pollen-count and "
    "sap-drip columns are log-transformed as torch.log(x) with no +1; the first zero pollen "
    "count (a rainy morning) arrives at step 90: log 0 = -inf, the loss is non-finite at 90.",
)
def h445_sugarhouse_log_zero(ctx) -> None:
    gen = seeded(4457)
    model = _Sugarhouse()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == SUGAR_CALM:
            x = x.clone()
            x[3, 0] = 0.0
            seen["x"] = x
        return x, y

    _loop(ctx, model, opt, _sugarhouse(gen, 64), 160, F.mse_loss, alter=alter)
    ls = ctx.losses
    with torch.no_grad():
        feat = model.logfeat(seen["x"]) if "x" in seen else torch.zeros(1)
    ctx.check("loss finite before step 90", _finite(ls[:SUGAR_CALM]))
    ctx.check("loss non-finite at step 90", len(ls) == SUGAR_CALM + 1 and not math.isfinite(ls[-1]))
    ctx.check("logfeat gives -inf on the zero count", bool(torch.isneginf(feat).any()))


class _Easel(nn.Module):
    def __init__(self, d_in=8):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 32)
        self.act = nn.Tanh()
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.act(self.fc1(x))).squeeze(-1)


def _sharpness(model, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


EASEL_WARM = 10


@scenario(
    family="plein_air_easel_sway_warmup_unclamped_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Plein-air easel-sway regressor (tanh MLP on wind and leg-spread features, MSE, plain "
    "SGD under LambdaLR). The warm-up lambda is written (s + 1) / 10 with the min(., 1) missing: the "
    "lr keeps climbing linearly after step 10 (0.01 more each step), passes 2/sharpness and the loss blows up.",
)
def h445_easel_warmup_no_clamp(ctx) -> None:
    gen = seeded(4458)
    model = _Easel()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / EASEL_WARM)
    data = _readings(gen, 128, 8, seed=458)
    px, py = next(_readings(torch.Generator().manual_seed(58), 512, 8, seed=458))
    rec = {}

    def after(step):
        lr = opt.param_groups[0]["lr"]
        if "cross" not in rec and step % 5 == 0:
            lam = _sharpness(model, px, py)
            if lr * lam > 2.0:
                rec["cross"] = step
                rec["lam"] = lam
                rec["lr"] = lr

    _loop(ctx, model, opt, data, 300, F.mse_loss, after=after, sched=sched)
    ls = ctx.losses
    cross = rec.get("cross", len(ls))
    low = min(ls[:cross]) if cross > 0 else float("inf")
    ctx.check("lr x sharpness measured over 2 during the run", "cross" in rec)
    ctx.check("loss fell before crossing", _mean(ls[cross - 5 : cross]) < 0.6 * _mean(ls[:5]))
    ctx.check(
        "loss afterwards over 100x its lowest or non-finite",
        any((not math.isfinite(v)) or v > 100 * low for v in ls[cross:]),
    )


LAX_BIAS = -2.0


@scenario(
    family="lacrosse_stick_pocket_gate_bias_init_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Lacrosse stick pocket-depth regressor (ReLU MLP, MSE, Adamax). A shared init helper "
    "written for sigmoid gates sets fc2's bias to -2.0 (meant for a gate layer, applied by a "
    "name match to fc2): most of fc2's ReLUs are never positive, get no gradient and stay dead; "
    "the loss stays far above a correctly initialised run's.",
)
def h445_lacrosse_gate_bias_init(ctx) -> None:
    def run(attach):
        gen = seeded(4459)
        model = _Net(10, 64, 1)
        if attach:
            nn.init.constant_(model.fc2.bias, LAX_BIAS)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            _readings(gen, 64, 10, seed=459),
            200,
            F.mse_loss,
            attach=attach,
        )
        px, _ = next(_readings(torch.Generator().manual_seed(59), 512, 10, seed=459))
        with torch.no_grad():
            dead = dead_fraction(model.fc2(model.act1(model.fc1(px))))
        return losses, dead

    ref, ref_dead = run(False)
    ls, dead = run(True)
    ctx.check("over 70% of fc2's ReLUs dead on 512 rows", dead > 0.7)
    ctx.check("under 20% dead in the correct run", ref_dead < 0.2)
    ctx.check("loss over 2x the correct run's at the end", _mean(ls[-20:]) > 2 * _mean(ref[-20:]))
    ctx.check("finite", _finite(ls))


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, f):
        return self.scale * F.normalize(f, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _InkStone(nn.Module):
    def __init__(self, d_in=16, classes=6, scale=30.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(64, 32)
        self.head = _CosineHead(32, classes, scale)

    def forward(self, x):
        return self.head(self.fc2(self.act(self.fc1(x))))


SUMI_SCALE = 30.0


@scenario(
    family="sumi_ink_stone_grind_double_scale_cosine_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sumi ink-stone grind-grade cosine classifier (ReLU trunk, cosine head with scale 30, "
    "cross-entropy, RMSprop). The loss wrapper multiplies the logits by the scale a second time "
    "(the head already did): logits are cosines x 900, and float32 softmax rounds the target "
    "probability to exactly 1.0 on most rows.",
)
def h445_sumi_double_scale(ctx) -> None:
    gen = seeded(4460)
    model = _InkStone(scale=SUMI_SCALE)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def loss_fn(z, y):
        return F.cross_entropy(SUMI_SCALE * z, y)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, seed=460),
        150,
        loss_fn,
        classifier=True,
    )
    px, py = next(_grades(torch.Generator().manual_seed(60), 512, 16, 6, seed=460))
    with torch.no_grad():
        z = model(px)
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(SUMI_SCALE * z, py) > 0.5,
    )
    ctx.check("under 5% at the single scale on the same logits", collapsed_fraction(z, py) < 0.05)
    ctx.check("finite", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


class _UNet1d(nn.Module):
    """A 1-D U-Net: two down convolutions, a bottleneck, two up convolutions with skips."""

    def __init__(self, ch=16):
        super().__init__()
        self.enc1 = nn.Conv1d(1, ch, 5, padding=2)
        self.down1 = nn.Conv1d(ch, 2 * ch, 4, stride=2, padding=1)
        self.down2 = nn.Conv1d(2 * ch, 4 * ch, 4, stride=2, padding=1)
        self.mid = nn.Conv1d(4 * ch, 4 * ch, 3, padding=1)
        self.up2 = nn.ConvTranspose1d(4 * ch, 2 * ch, 4, stride=2, padding=1)
        self.dec2 = nn.Conv1d(4 * ch, 2 * ch, 3, padding=1)
        self.up1 = nn.ConvTranspose1d(2 * ch, ch, 4, stride=2, padding=1)
        self.dec1 = nn.Conv1d(2 * ch, ch, 3, padding=1)
        self.out = nn.Conv1d(ch, 1, 1)

    def forward(self, x):
        x = x[:, None]
        e1 = F.gelu(self.enc1(x))
        e2 = F.gelu(self.down1(e1))
        e3 = F.gelu(self.down2(e2))
        m = F.gelu(self.mid(e3))
        d2 = F.gelu(self.dec2(torch.cat([self.up2(m), e2], 1)))
        d1 = F.gelu(self.dec1(torch.cat([self.up1(d2), e1], 1)))
        return (x + self.out(d1))[:, 0]


def _luff(gen, batch, length=64):
    t = torch.arange(length).float()
    while True:
        f = 0.1 + 0.3 * torch.rand(batch, 2, generator=gen)
        a = torch.rand(batch, 2, generator=gen)
        ph = 6.28 * torch.rand(batch, 2, generator=gen)
        clean = (a[:, :, None] * torch.sin(f[:, :, None] * t + ph[:, :, None])).sum(1)
        yield clean + 0.3 * torch.randn(batch, length, generator=gen), clean


@scenario(
    family="sail_loft_luff_flutter_unet1d_denoiser",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Sail-loft luff-flutter denoiser: a hand-written 1-D U-Net (two strided down "
    "convolutions, transposed-convolution ups with skip concatenations, residual output) "
    "cleaning telltale accelerometer traces; Huber loss, AdamW under OneCycleLR, clipping at "
    "1.0. Control.",
)
def h445_luff_unet_control(ctx) -> None:
    gen = seeded(4461)
    model = _UNet1d()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=160)
    _loop(
        ctx,
        model,
        opt,
        _luff(gen, 32),
        160,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))


UNFREEZE = 100


@scenario(
    family="coopers_adze_chime_gradual_unfreeze_gelu_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="Cooper's adze chime-cut grade classifier (GELU MLP, cross-entropy with label "
    "smoothing 0.1, SGD Nesterov) fine-tuned with gradual unfreezing: fc1 and fc2 have "
    "requires_grad False for the first 100 steps, then are unfrozen and added to the optimizer "
    "as a second param group at a lower lr. Control.",
)
def h445_chime_gradual_unfreeze_control(ctx) -> None:
    gen = seeded(4462)
    model = _Net(12, 48, 5, act=nn.GELU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    for p in trunk:
        p.requires_grad_(False)
    w0 = model.fc1.weight.detach().clone()
    opt = torch.optim.SGD(model.head.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    mid = {}

    def before(step):
        if step == UNFREEZE:
            mid["w"] = model.fc1.weight.detach().clone()
            for p in trunk:
                p.requires_grad_(True)
            opt.add_param_group({"params": trunk, "lr": 0.01})

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, seed=462, spread=1.3),
        220,
        lambda z, y: F.cross_entropy(z, y, label_smoothing=0.1),
        classifier=True,
        before=before,
    )
    ctx.check("fc1 unchanged before 100", bool(torch.equal(mid.get("w", w0 + 1), w0)))
    ctx.check("fc1 moved after 100", _rel_change(w0, model.fc1.weight) > 1e-3)
    ctx.check("loss fell", _fell(ctx.losses))


class _Dulcimer(nn.Module):
    def __init__(self, d_in=14, labels=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.head = nn.Linear(48, labels)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _felt(gen, batch, d_in=14, labels=4, seed=463):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        logits = x @ w / math.sqrt(d_in) * 2.5
        y = (torch.rand(batch, labels, generator=gen) < torch.sigmoid(logits)).float()
        yield x, y


@scenario(
    family="dulcimer_hammer_felt_fp16_multilabel_bce_net",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Hammered-dulcimer hammer-felt wear tagger (four wear labels, SiLU MLP, BCE with "
    "logits, fp16 autocast with a GradScaler, Adam under ReduceLROnPlateau, accumulation over "
    "2, noisy labels sampled from a sigmoid). Control.",
)
def h445_dulcimer_fp16_control(ctx) -> None:
    gen = seeded(4463)
    model = _Dulcimer()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _felt(gen, 32),
        180,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        plateau=True,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.85))
    ctx.check("finite", _finite(ctx.losses))
