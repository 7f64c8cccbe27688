"""Held-out set 287 (``h287_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a tadelakt burnish-stage cosine classifier whose learnable logit
scale lost its clamp, a gigantic-jet charge-moment deep tanh MLP initialised at std 1, a sagger
kiln radiance regressor whose fourth-power zone sum overflows fp16 once glaze firings start, a
rushwork seat-weave regressor whose remainder batch backpropagates a summed loss, a parquetry
glue-line regressor fed one batch of moisture-meter sentinels, a sea-spray aerosol Gaussian-NLL
net whose whitecap log lost its clamp, a bone-carving blank classifier whose trunk lr was typed
3e-9, a hurdle-maker rod-grade classifier whose temperature was read in percent, a shelf-cloud
gust-arrival regressor with a sign-flipped hand-rolled weight decay, a tidal-race current regressor whose
StepLR gamma was typed 10, and three controls (a stonemason banker chisel-mark classifier with a
focal loss, a sett-making split classifier under fp16 autocast with a GradScaler, a saw-doctor
tension regressor with Huber, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


class _Quiet:
    """A context for a bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    weight=None,
    extra=None,
):
    """The file's loop. ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` after the forward pass, ``after(step)`` after the optimizer step,
    ``weight(step)`` multiplies the backpropagated loss, ``extra(model)`` is added to it (the
    logged loss is the plain batch loss); stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight(step) if weight is not None else 1.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = w * loss / accumulate
            if extra is not None:
                total = total + extra(model) / accumulate
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
            break


def _gauges(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(1.3 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activations as modules."""

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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _top_eig(model, loss_fn, x, y, iters=15):
    """Largest Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((h * u).sum()) for h, u in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- tadelakt: the learnable logit scale lost its clamp ------------------------------------------


class ScaledCosineHead(nn.Module):
    """CLIP-style head: exp(logit_scale) * cos(features, class weights)."""

    def __init__(self, dim, classes):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, h):
        # meant: self.logit_scale.clamp(max=math.log(100.0)).exp()
        scale = self.logit_scale.exp()
        return scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class TadelaktNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, emb=2, classes=16):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, emb)
        self.head = ScaledCosineHead(emb, classes)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="tadelakt_plaster_burnish_stage_cosine_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2 to a 2-d embedding) with a CLIP-style cosine head (head: a learnable logit_scale, initialised at 0 so the scale starts at 1, times the cosine of the embedding and 16 class directions) naming which of 16 burnishing passes a tadelakt plaster wall is at from 12 standardised readings (surface moisture, gloss, stone pressure, black-soap uptake), Adam at 3e-2, cross-entropy. The scale was meant to be clamped at 100 as in CLIP (logit_scale.clamp(max=log 100)), but the clamp was lost when the head was rewritten: with 16 classes packed on a circle the loss keeps paying for a larger scale, and the head's logits grow over 20x from the start and are still growing at the end. Finite, no blow-up.",
)
def h287_tadelakt_logit_scale_unclamped(ctx: Context) -> None:
    gen = seeded(28701)
    model = TadelaktNet()
    with torch.no_grad():
        model.head.logit_scale.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    probe = next(_grades(torch.Generator().manual_seed(3), 256, 12, 16, 71, spread=0.3))[0]

    def peak():
        with torch.no_grad():
            return float(model(probe).abs().max())

    peaks = [peak()]
    _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 16, 71, spread=0.3),
        300,
        F.cross_entropy,
        classifier=True,
        after=lambda step: peaks.append(peak()),
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak kept growing over the last 100 steps", peaks[-1] > 1.2 * peaks[-100])
    ctx.check("the loss fell", _fell(ls, ratio=0.3))


# -- gigantic jet: a deep tanh MLP initialised at std 1 ------------------------------------------

DEPTH_JET = 16


class JetNet(nn.Module):
    def __init__(self, d_in=10, width=32, depth=DEPTH_JET, std=None):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        if std is not None:
            for lin in self.layers:
                nn.init.normal_(lin.weight, std=std)
        else:
            for lin in self.layers:
                nn.init.xavier_normal_(lin.weight, gain=5 / 3 / 1.6)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        for lin in self.layers:
            h = torch.tanh(lin(h))
        return self.head(h).squeeze(-1)


def _layer_grads(model):
    return [float(lin.weight.grad.norm()) for lin in model.layers]


@scenario(
    family="gigantic_jet_charge_moment_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "inp"),
    diverges=None,
    heldout=True,
    note="A 16-layer tanh MLP without normalisation (inp, layers.0 .. layers.15, head) regressing the charge moment of a gigantic jet from 10 standardised sferic and radar readings, plain SGD at 1e-3, MSE. Its init helper draws every hidden weight at std 1.0 (a unit-variance setting copied from an embedding config) instead of about 1/sqrt(32): the tanh stack sits deep in the chaotic regime and the backward pass multiplies the gradient up at each layer, so layers.0's gradient is over 100x layers.15's (the properly initialised twin's ratio is near 1); the loss barely moves while the twin's falls. Bounded by tanh, so no blow-up.",
)
def h287_gigantic_jet_unit_std_init(ctx: Context) -> None:
    gen = seeded(28702)
    model = JetNet(std=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    ratios = []

    def record(step):
        if step < 5:
            g = _layer_grads(model)
            ratios.append(g[0] / max(g[-1], 1e-12))

    _train(ctx, model, opt, _gauges(gen, 64, 10, 41), 200, F.mse_loss, after=record)
    twin = _Quiet()
    seeded(28702)
    tgen = torch.Generator().manual_seed(28702)
    tmodel = JetNet()
    topt = torch.optim.SGD(tmodel.parameters(), lr=1e-3)
    tratios = []

    def trecord(step):
        if step < 5:
            g = _layer_grads(tmodel)
            tratios.append(g[0] / max(g[-1], 1e-12))

    _train(twin, tmodel, topt, _gauges(tgen, 64, 10, 41), 5, F.mse_loss, after=trecord)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("layers.0's gradient is over 100x layers.15's", _median(ratios) > 100)
    ctx.check(
        "that ratio is over 30x the twin's with a proper init",
        _median(ratios) > 30 * _median(tratios),
    )
    ctx.check("the loss did not fall by half", not _fell(ls, ratio=0.5))


# -- sagger kiln: the fourth-power zone sum overflows fp16 once glaze firings start --------------

ONSET_KILN = 120


class SaggerNet(nn.Module):
    """Zone temperatures (hundreds of degrees C) -> calibrated zones -> T^4 radiance summed by
    ``radiance`` -> with 6 other readings through fc1 -> act1 -> head."""

    def __init__(self, zones=4, others=6, hidden=32):
        super().__init__()
        self.zones = nn.Linear(zones, zones)
        self.radiance = nn.Linear(zones, 8)
        self.fc1 = nn.Linear(8 + others, hidden)
        self.act1 = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.zones.weight.copy_(torch.eye(zones))
            self.zones.bias.zero_()
            nn.init.uniform_(self.radiance.weight, 0.5, 1.0)
            self.radiance.bias.zero_()
        self.n_zones = zones

    def forward(self, x):
        t = self.zones(x[:, : self.n_zones])
        r = self.radiance(t.pow(4)) / 1e4
        return self.head(self.act1(self.fc1(torch.cat([r, x[:, self.n_zones :]], 1)))).squeeze(-1)


def _firings(gen, batch, onset, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    step = 0
    while True:
        lo, hi = (6.0, 9.5) if step < onset else (12.2, 13.2)
        t = lo + (hi - lo) * torch.rand(batch, 4, generator=gen)
        o = torch.randn(batch, 6, generator=gen)
        y = torch.tanh(t.pow(4).sum(1) / 4e4 - 0.5) + 0.3 * torch.tanh(o @ w / 2)
        yield torch.cat([t, o], 1), y
        step += 1


@scenario(
    family="sagger_kiln_firing_radiance_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("radiance",),
    diverges=ONSET_KILN,
    heldout=True,
    onset=ONSET_KILN,
    note="A sagger-kiln firing-outcome regressor (zones: a calibration Linear over 4 zone thermocouples read in hundreds of degrees C; radiance: a Linear summing the zones' T^4 radiant terms; fc1, act1, head over that and 6 other readings), trained under fp16 autocast with a torch.amp.GradScaler, AdamW at 1e-3, MSE. It was developed on bisque firings (600-950 C, T^4 at most about 8000 per zone, a radiance sum near 25000, inside fp16's 65504); from step 120 the log switches to stoneware glaze firings at 1220-1320 C, each zone's T^4 is near 28000 and the radiance Linear's fp16 output overflows to inf: the loss is inf at step 120. The same model in fp32 gives a finite output on that batch; nothing else is wrong.",
)
def h287_sagger_kiln_glaze_fp16_overflow(ctx: Context) -> None:
    gen = seeded(28703)
    model = SaggerNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    def alter(step, x, y):
        if step == ONSET_KILN:
            seen["x"] = x.clone()
        return x, y

    _train(
        ctx,
        model,
        opt,
        _firings(gen, 64, ONSET_KILN, 43),
        200,
        F.mse_loss,
        alter=alter,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    out = {}
    hook = model.radiance.register_forward_hook(lambda m, i, o: out.__setitem__("r", o))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        model(seen["x"])
    half = out["r"]
    with torch.no_grad():
        full = model(seen["x"])
    hook.remove()
    ctx.check("finite before the glaze firings", _finite(ls[:ONSET_KILN]))
    ctx.check("the loss fell on the bisque firings", _fell(ls[:ONSET_KILN], ratio=0.5))
    ctx.check(
        "the loss is non-finite at step 120",
        len(ls) == ONSET_KILN + 1 and not math.isfinite(ls[ONSET_KILN]),
    )
    ctx.check(
        "radiance's fp16 output holds inf",
        half.dtype == torch.float16 and bool(torch.isinf(half).any()),
    )
    ctx.check("the same batch in fp32 gives a finite output", bool(torch.isfinite(full).all()))


# -- rushwork: the remainder batch backpropagates a summed loss ----------------------------------

ONSET_RUSH = 140


@scenario(
    family="rushwork_chair_seat_weave_tension_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_RUSH,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the weave tension of a rush chair seat from 10 standardised readings (rush moisture, twist count, rail spacing), SGD Nesterov momentum 0.9 at 1e-2, MSE, clipping at 5. The epoch's remainder batch goes through a code path copied from an older trainer that backpropagates the summed loss (reduction='sum') instead of the mean, while the logger records the batch mean: at step 140 an ordinary batch's gradient is 64x too large. The logged loss is ordinary, the gradient norm jumps over 30x, clipping bounds the step and the run recovers.",
)
def h287_rushwork_remainder_summed_loss(ctx: Context) -> None:
    gen = seeded(28704)
    model = Trunk(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    _train(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 10, 44),
        220,
        F.mse_loss,
        clip=5.0,
        weight=lambda step: 64.0 if step == ONSET_RUSH else 1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    before_g = _median(gs[ONSET_RUSH - 20 : ONSET_RUSH])
    before_l = _median(ls[ONSET_RUSH - 20 : ONSET_RUSH])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the spike", _fell(ls[:ONSET_RUSH], ratio=0.5))
    ctx.check(
        "the gradient at step 140 is over 30x the median before", gs[ONSET_RUSH] > 30 * before_g
    )
    ctx.check("the logged loss at step 140 is ordinary (under 2x)", ls[ONSET_RUSH] < 2 * before_l)
    ctx.check(
        "the loss recovered by the end",
        _mean(ls[-20:]) < 2 * _mean(ls[ONSET_RUSH - 20 : ONSET_RUSH]),
    )


# -- parquetry: one batch of moisture-meter sentinels --------------------------------------------

ONSET_PARQ = 110


@scenario(
    family="parquetry_glue_line_shear_silu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PARQ,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the glue-line shear strength of parquetry blocks from 8 standardised readings (wood moisture, glue spread, press time, room humidity), SGD momentum 0.9 at 5e-3, MSE, clipping at 1. One workshop's moisture meter writes 9999 for 'no reading' and its export was not filtered: the batch at step 110 carries six rows whose moisture column, standardised with the usual mean and spread, is about 2000 standard deviations out. The loss and gradient jump by orders of magnitude on that batch; clipping bounds the step and the run recovers.",
)
def h287_parquetry_moisture_sentinel_rows(ctx: Context) -> None:
    gen = seeded(28705)
    model = Trunk(8, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_PARQ:
            x = x.clone()
            x[:6, 2] = (9999.0 - 10.0) / 5.0
        return x, y

    _train(ctx, model, opt, _gauges(gen, 64, 8, 45), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    before = ls[ONSET_PARQ - 20 : ONSET_PARQ]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the bad batch", _fell(ls[:ONSET_PARQ], ratio=0.6))
    ctx.check(
        "the loss at step 110 is over 50x the median before", ls[ONSET_PARQ] > 50 * _median(before)
    )
    ctx.check(
        "the gradient at step 110 is over 20x the median before",
        gs[ONSET_PARQ] > 20 * _median(gs[ONSET_PARQ - 20 : ONSET_PARQ]),
    )
    ctx.check("the loss recovered by the end (under 2x)", _mean(ls[-20:]) < 2 * _mean(before))


# -- sea spray: the whitecap log lost its clamp --------------------------------------------------

ONSET_SPRAY = 130
U_THRESHOLD = 3.7


class WhitecapLog(nn.Module):
    """log whitecap coverage, Monahan-style: exponent * log(U10 - 3.7)."""

    def __init__(self):
        super().__init__()
        self.exponent = nn.Parameter(torch.tensor(3.41))

    def forward(self, u):
        # meant: torch.log((u - U_THRESHOLD).clamp_min(1e-3))
        return self.exponent * torch.log(u - U_THRESHOLD)


class SprayNet(nn.Module):
    def __init__(self, others=6, hidden=48):
        super().__init__()
        self.whitecap = WhitecapLog()
        self.fc1 = nn.Linear(1 + others, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        w = self.whitecap(x[:, :1]) / 10.0
        return self.head(self.act2(self.fc2(self.act1(self.fc1(torch.cat([w, x[:, 1:]], 1))))))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].clamp(-6, 6).exp())


def _buoys(gen, batch, onset, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    step = 0
    while True:
        u = 4.5 + 13.5 * torch.rand(batch, 1, generator=gen)
        if step == onset:
            u[:3] = 1.0 + 2.5 * torch.rand(3, 1, generator=gen)
        o = torch.randn(batch, 6, generator=gen)
        y = 0.4 * torch.log(u[:, 0] - 3.0) + 0.5 * torch.tanh(o @ w / 2)
        yield torch.cat([u, o], 1), y + 0.1 * torch.randn(batch, generator=gen)
        step += 1


@scenario(
    family="sea_spray_aerosol_flux_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("whitecap",),
    diverges=ONSET_SPRAY,
    heldout=True,
    onset=ONSET_SPRAY,
    note="A sea-spray aerosol flux net (whitecap: Monahan-style log whitecap coverage, a learnable exponent times log(U10 - 3.7); fc1, act1, fc2, act2, head giving a mean and a log-variance) trained by Gaussian NLL on buoy records (wind speed in m/s plus 6 standardised readings), RAdam at 3e-3. The log was meant to be taken of (U10 - 3.7).clamp_min(1e-3), but the clamp was left out because the training buoys were all on windy days; at step 130 a calm-day buoy's records (U10 of 1 to 3.5 m/s) enter a batch, log of a negative number is NaN in whitecap, and the loss is NaN at step 130.",
)
def h287_sea_spray_whitecap_log_unclamped(ctx: Context) -> None:
    gen = seeded(28706)
    model = SprayNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_SPRAY:
            seen["x"] = x.clone()
        return x, y

    _train(ctx, model, opt, _buoys(gen, 64, ONSET_SPRAY, 46), 200, _gauss_nll, alter=alter)
    ls = ctx.losses
    with torch.no_grad():
        w = model.whitecap(seen["x"][:, :1])
    ctx.check("finite before the calm buoy", _finite(ls[:ONSET_SPRAY]))
    ctx.check("the loss fell before", _fell(ls[:ONSET_SPRAY], ratio=0.7))
    ctx.check(
        "the loss is NaN at step 130", len(ls) == ONSET_SPRAY + 1 and math.isnan(ls[ONSET_SPRAY])
    )
    ctx.check("whitecap's output holds NaN on that batch", bool(torch.isnan(w).any()))


# -- bone carving: the trunk lr was typed 3e-9 ---------------------------------------------------


@scenario(
    family="bone_carving_blank_grade_two_group_classifier",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading bone-carving blanks into 6 grades from 14 standardised readings (density, marrow-cavity width, crack count, polish response), NAdam with two param groups, the trunk (fc1, fc2) and the head. The trunk's lr was typed 3e-9 for 3e-3 in the config: fc1's and fc2's per-step update is under 1e-6 of their weights while the head (lr 3e-3) trains on frozen random features; the loss falls only part of the way a twin with the intended rate reaches.",
)
def h287_bone_carving_trunk_lr_typo(ctx: Context) -> None:
    def build(trunk_lr):
        model = Trunk(14, hidden=48, out=6)
        opt = torch.optim.NAdam(
            [
                {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": trunk_lr},
                {"params": model.head.parameters(), "lr": 3e-3},
            ]
        )
        return model, opt

    gen = seeded(28707)
    model, opt = build(3e-9)
    ratios = {"fc1": [], "head": []}
    prev = {"fc1": _flat(model.fc1), "head": _flat(model.head)}

    def after(step):
        for name in ("fc1", "head"):
            now = _flat(getattr(model, name))
            ratios[name].append(float((now - prev[name]).norm() / now.norm()))
            prev[name] = now

    _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 47, spread=1.2),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    twin = _Quiet()
    seeded(28707)
    tmodel, topt = build(3e-3)
    tgen = torch.Generator().manual_seed(28707)
    _train(twin, tmodel, topt, _grades(tgen, 64, 14, 6, 47, spread=1.2), 200, F.cross_entropy)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1's update ratio is under 1e-6", _median(ratios["fc1"]) < 1e-6)
    ctx.check("the head's update ratio is over 1e-4", _median(ratios["head"]) > 1e-4)
    ctx.check(
        "the twin with lr 3e-3 ends under 0.7x this run's loss",
        _mean(twin.losses[-20:]) < 0.7 * _mean(ls[-20:]),
    )


# -- hurdle maker: the temperature was read in percent -------------------------------------------

TEMP_HURDLE = 0.005


class HurdleNet(Trunk):
    def __init__(self):
        super().__init__(10, hidden=48, out=6, act=nn.GELU)

    def forward(self, x):
        return (
            self.head(self.features(x)) / TEMP_HURDLE
        )  # config "temperature: 0.5" read as percent


@scenario(
    family="hurdle_maker_hazel_rod_grade_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) grading hazel rods for wattle hurdles into 6 grades from 10 standardised readings (diameter, taper, straightness, bark moisture), Adamax at 2e-3, cross-entropy on head logits divided by a temperature. The config's 'temperature: 0.5' went through a helper that reads percentages, so the logits are divided by 0.005: they are hundreds wide and over a third of the rows' float32 softmax gives the target exactly 1.0. Finite, no blow-up.",
)
def h287_hurdle_rod_temperature_in_percent(ctx: Context) -> None:
    gen = seeded(28708)
    model = HurdleNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fractions = []
    _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 6, 48, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        watch=lambda step, out, x, y: fractions.append(collapsed_fraction(out.detach(), y)),
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "over a third of the rows' softmax is exactly 1.0 late on", _mean(fractions[-50:]) > 0.33
    )
    ctx.check("rows were not collapsed at the start", fractions[0] < _mean(fractions[-50:]))


# -- shelf cloud: the hand-rolled L2 has its sign flipped ----------------------------------------

DECAY_SHELF = 6e-3


@scenario(
    family="shelf_cloud_gust_front_arrival_gelu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing how many minutes ahead of the rain a shelf cloud's gust front arrives from 9 standardised radar and surface readings, RMSprop at 1e-3, MSE, and a hand-rolled decoupled weight decay on the weight matrices after each step, written p.mul_(1 + 6e-3) for p.mul_(1 - 6e-3) (the sign flipped in a refactor). The data loss falls at first; then every weight matrix grows 0.6% a step, faster than the optimizer can undo, the weights keep growing and the logged MSE climbs slowly and steadily, its 20-step mean to over 2x its low, with no single jump and no blow-up.",
)
def h287_shelf_cloud_decay_sign_flipped(ctx: Context) -> None:
    gen = seeded(28709)
    model = Trunk(9, hidden=48, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    norm0 = float(_flat(model).norm())

    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]

    def decoupled_decay(step):
        with torch.no_grad():
            for p in weights:
                p.mul_(1 + DECAY_SHELF)  # meant p.mul_(1 - DECAY_SHELF)

    _train(ctx, model, opt, _gauges(gen, 64, 9, 49), 300, F.mse_loss, after=decoupled_decay)
    ls = ctx.losses
    windows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    low_at = min(range(len(windows)), key=lambda i: windows[i])
    jumps = max(b / max(a, 1e-12) for a, b in zip(ls[:-1], ls[1:], strict=False))
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell first", windows[low_at] < 0.6 * windows[0])
    ctx.check("the 20-step mean climbed to over 2x its low", windows[-1] > 2 * windows[low_at])
    ctx.check("no single step jumped over 3x", jumps < 3)
    ctx.check("the weights grew over 1.5x", float(_flat(model).norm()) > 1.5 * norm0)


# -- tidal race: the StepLR gamma was typed 10 ---------------------------------------------------

STEP_TIDE = 80


@scenario(
    family="tidal_race_current_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=STEP_TIDE,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the peak current speed of a tidal race from 8 standardised readings (tidal range, moon phase, wind against tide, channel depth), plain SGD at 0.05, MSE, StepLR with step_size 80. The decay factor was typed gamma=10 for 0.1: at step 80 the rate rises tenfold to 0.5 instead of falling and the measured lr x top Hessian eigenvalue crosses the 2/sharpness stability limit (the loss jumps and oscillates); at step 160 it rises again to 5.0 and the loss blows up to inf. Nothing is wrong with the data or the init.",
)
def h287_tidal_race_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(28710)
    model = Trunk(8, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_TIDE, gamma=10.0)
    px, py = next(_gauges(torch.Generator().manual_seed(8), 256, 8, 50))
    products: dict[int, float] = {}

    def before(step):
        if step % 5 == 0 and step <= 2 * STEP_TIDE:
            products[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, px, py)

    _train(ctx, model, opt, _gauges(gen, 64, 8, 50), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:STEP_TIDE])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    crossed = next((s for s in sorted(products) if products[s] > 2.0), None)
    ctx.check("the loss fell before step 80", _fell(ls[:STEP_TIDE], ratio=0.6))
    ctx.check(
        "lr x sharpness was under 2 before step 80",
        max(products[s] for s in products if s < STEP_TIDE) < 2.0,
    )
    ctx.check("lr x sharpness crossed 2 from step 80", crossed is not None and crossed >= STEP_TIDE)
    ctx.check(
        "the loss blew up (over 100x its low) after the crossing",
        blow is not None and crossed is not None and blow >= crossed,
    )


# -- controls ------------------------------------------------------------------------------------


def _focal(logits, y, gamma=2.0):
    logp = F.log_softmax(logits, -1).gather(1, y[:, None]).squeeze(1)
    return (-((1 - logp.exp()) ** gamma) * logp).mean()


def _imbalanced(gen, batch, d_in, classes, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    probs = torch.tensor([0.4, 0.2, 0.12, 0.1, 0.08, 0.05, 0.03, 0.02])
    while True:
        y = torch.multinomial(probs, batch, replacement=True, generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


@scenario(
    family="stonemason_banker_chisel_mark_focal_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) naming which of 8 chisel finishes (boasted, tooled, punched, drafted, ...) a stonemason's banker-work block carries from 16 standardised surface-profile readings, classes imbalanced from 40% to 2%; focal loss (gamma 2), AdamW with two param groups (weight decay 0.05 on weights, none on biases), OneCycleLR to 5e-3, clipping at 1. It trains normally.",
)
def h287_stonemason_banker_focal_control(ctx: Context) -> None:
    gen = seeded(28711)
    model = Trunk(16, hidden=64, out=8, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=5e-3
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _imbalanced(gen, 64, 16, 8, 51),
        200,
        _focal,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    px, py = next(_imbalanced(torch.Generator().manual_seed(9), 512, 16, 8, 51))
    with torch.no_grad():
        acc = float((model(px).argmax(1) == py).float().mean())
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("accuracy over 0.7 on a fresh batch", acc > 0.7)


@scenario(
    family="sett_making_granite_split_fp16_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) predicting which of 5 ways a granite block splits under the sett maker's plug and feathers from 12 standardised readings (grain direction, rift, hardway, moisture), trained under fp16 autocast with a torch.amp.GradScaler, Adam at 2e-3 with a 20-step linear warm-up and cosine decay (LambdaLR), cross-entropy with label smoothing 0.1, clipping at 1 after unscaling. It trains normally.",
)
def h287_sett_making_fp16_control(ctx: Context) -> None:
    gen = seeded(28712)
    model = Trunk(12, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def factor(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / 180))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 52, spread=1.1),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("the loss scale stayed above 1", min(ctx.scales) > 1.0)


def _saw_readings(gen, batch, seed):
    base = _gauges(gen, batch, 10, seed, noise=0.0)
    while True:
        x, y = next(base)
        t = torch.distributions.StudentT(2.5).sample((batch,))
        yield x, y + 0.1 * t


@scenario(
    family="saw_doctor_blade_tension_ring_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) regressing the tension a saw doctor's hammering leaves in a circular saw blade from 10 standardised readings (hammer blows by ring, blade gauge, rim speed), Student-t noisy targets, Huber loss, Adagrad at 5e-2, gradient accumulation over 4 micro-batches, ReduceLROnPlateau on the loss, clipping at 1. It trains normally.",
)
def h287_saw_doctor_huber_control(ctx: Context) -> None:
    gen = seeded(28713)
    model = Trunk(10, hidden=48)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _saw_readings(gen, 32, 53),
        150,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=1.0,
        sched=sched,
        accumulate=4,
    )
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss fell by half", _fell(ctx.losses, ratio=0.5))
