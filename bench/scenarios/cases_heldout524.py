"""Held-out set 524 (``h524_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a heliograph flash-signal hand-written Elman RNN with recurrent orthogonal gain typed 2.5
(plain SGD); a snowmaking-gun wet-bulb regressor whose target normaliser's scale is shrunk in
place every step (drifting target, RMSprop); a pykrete crush-strength regressor under fp16
autocast + GradScaler fed a press reading in Pa instead of MPa (AdamW); a yak-polo pass-zone
classifier on separable zones with no weight decay (head logits grow, Adam); an oast-house
hop-drying ReZero residual regressor whose gate param group lr is typed 0 (SGD Nesterov); a
kintsugi lacquer-seam cure regressor whose loss is multiplied by a stale fp16 scale 65536 for one
step (Adam); an ice-volcano plume net that normalises the wind vector by its speed (0/0 on a
calm row, Adamax); a scrimshaw etch-depth tied-weight autoencoder fed one sample of 65535 sensor
glitches (Huber, ASGD); a limelight-burner glow BCE net whose loss weight is read as 100 for one
step (SGD momentum); a gong-chime mallet classifier dividing logits by a temperature typed 0.001
(NAdam).

Controls: a tatami weave-grade ReLU classifier at batch 1024 with lr 0.4 (SGD momentum, 5-step
warm-up, cosine); a cajon slap-tone conv1d classifier (Adam, OneCycleLR, label smoothing,
clipping, noisy labels); a sun-dog halo-brightness Gaussian-NLL net (fp16 autocast + GradScaler,
AdamW two param groups, ReduceLROnPlateau, accumulation 2, clipping).
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


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
    weight=None,
    after=None,
    clip=None,
    sched=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``weight(step)`` scales the
    backpropagated loss, ``after(step, loss)``. Stops after a non-finite loss once ``ctx.step``
    has seen it."""
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
        w = weight(step) if weight is not None else 1.0
        (w * loss).backward()
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


def _grades(gen, batch, d_in, classes, seed, spread=1.0, label_noise=0.0):
    """Readings scattered around one prototype per class (optionally some labels redrawn)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + spread * torch.randn(batch, d_in, generator=gen)
        if label_noise > 0:
            flip = torch.rand(batch, generator=gen) < label_noise
            y = torch.where(flip, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


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


# -- 1. exploding gradients: a heliograph Elman RNN with recurrent gain 2.5 ------------------------


class _ElmanCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)

    def forward(self, x, h):
        return torch.tanh(self.inp(x) + self.rec(h))


class _HeliographRNN(nn.Module):
    def __init__(self, gain, hidden=32):
        super().__init__()
        self.cell = _ElmanCell(3, hidden)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.cell.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.head.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _heliograph_batches(gen, batch, frames=36):
    """Mirror-flash frames (on/off, glare, haze); target: the share of flashes in the call sign
    sent over the first 6 frames."""
    while True:
        on = (torch.rand(batch, frames, generator=gen) < 0.4).float()
        glare = 0.2 * torch.randn(batch, frames, generator=gen)
        haze = 0.1 * torch.randn(batch, frames, generator=gen)
        yield torch.stack([on, glare, haze], -1), on[:, :6].mean(1) - 0.4


@scenario(
    family="heliograph_flash_signal_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.rec", "cell"),
    diverges=None,
    heldout=True,
    note="Heliograph call-sign reader, a hand-written Elman RNN over 36 mirror-flash frames "
    "(flash on/off, glare, haze; MSE, plain SGD lr 1e-3). The recurrent weight is initialised "
    "orthogonal with gain typed 2.5 for 1.0: the backward pass multiplies through the "
    "recurrence, dL/dh grows from the last frame back to the first and the gradient is far "
    "larger than a gain-1 model's.",
)
def h524_heliograph_rnn_gain_typo(ctx):
    gen = seeded(5241)
    model = _HeliographRNN(2.5)
    ref = _HeliographRNN(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x0, y0 = next(_heliograph_batches(torch.Generator().manual_seed(11), 64))
    F.mse_loss(ref(x0), y0).backward()
    ref_norm = grad_norm(ref)
    F.mse_loss(model(x0), y0).backward()
    first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
    first_norm = grad_norm(model)
    model.zero_grad(set_to_none=True)
    ratio = float(first / last)
    losses, norms = _loop(ctx, model, opt, _heliograph_batches(gen, 64), 120, F.mse_loss)
    ctx.check("dL/dh at the first frame over 100x the last", ratio > 100)
    ctx.check("first gradient over 10x a gain-1 model's", first_norm > 10 * ref_norm)
    ctx.check("gradients stay over 10x the gain-1 model's", _median(norms) > 10 * ref_norm)
    ctx.check("loss finite", _finite(losses))


# -- 2. loss divergence: a target normaliser shrunk in place every step --------------------------


@scenario(
    family="snowmaking_gun_wet_bulb_drifting_target_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Snowmaking-gun snow-quality regressor (SiLU MLP on wet-bulb temperature, air "
    "pressure, water flow, nozzle count and wind; MSE, RMSprop lr 1e-3). The target normaliser "
    "keeps a running scale meant to be an EMA (scale = 0.99 * scale + 0.01 * std) but is written "
    "scale *= 0.99 in place each step: the normalised targets drift upwards by 1% a step and the "
    "loss, after its first fall, climbs slowly with no jump.",
)
def h524_snowmaking_target_scale_drift(ctx):
    gen = seeded(5242)
    model = _Net(5, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    stats = {"scale": 1.0}
    data = _readings(gen, 64, 5, 52420)
    scales = []

    def alter(step, x, y):
        stats["scale"] *= 0.99  # bug: meant 0.99 * scale + 0.01 * batch std
        scales.append(stats["scale"])
        return x, y / stats["scale"]

    losses, _ = _loop(ctx, model, opt, data, 260, F.mse_loss, alter=alter)
    best = min(losses[:100])
    jumps = max(b / a for a, b in zip(losses[:-1], losses[1:], strict=True))
    ctx.check("target scale shrank over 5x", scales[-1] < 0.2)
    ctx.check("loss climbed over 3x its early best", _mean(losses[-10:]) > 3 * best)
    ctx.check("still climbing", _mean(losses[-10:]) > _mean(losses[-60:-50]))
    ctx.check("no step jumps over 3x", jumps < 3.0 and _finite(losses))


# -- 3. amp overflow: a press reading in Pa under fp16 autocast -----------------------------------

PYKRETE_ONSET = 100


@scenario(
    family="pykrete_block_crush_strength_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=PYKRETE_ONSET,
    heldout=True,
    onset=PYKRETE_ONSET,
    note="Pykrete block crush-strength regressor (GELU MLP on press load, sawdust fraction, "
    "freezing temperature, block age and density; MSE, fp16 autocast + GradScaler, AdamW). At "
    "step 100 a new press logger reports the load in Pa instead of MPa (about 2e5): under "
    "autocast the first layer's fp16 output overflows 65504 to inf and the loss is non-finite "
    "(the same batch in float32 is finite).",
)
def h524_pykrete_press_pascal_fp16(ctx):
    gen = seeded(5243)
    model = _Net(5, 64, 1, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 5, 52430)
    losses, fp32_ok, fc1_inf = [], [], []
    for step in range(170):
        x, y = next(data)
        if step >= PYKRETE_ONSET:
            x = x.clone()
            x[:, 0] = 2.0e5 + 3.0e4 * x[:, 0]
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == PYKRETE_ONSET:
            fc1_inf.append(not bool(torch.isfinite(h).all()))
            with torch.no_grad():
                fp32_ok.append(bool(torch.isfinite(model(x)).all()))
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
    o = PYKRETE_ONSET
    ctx.check("trained before the switch", _fell(losses[:o]))
    ctx.check("finite before the switch", _finite(losses[:o]))
    ctx.check("fp16 fc1 output overflowed at onset", bool(fc1_inf) and fc1_inf[0])
    ctx.check("the same batch is finite in float32", bool(fp32_ok) and fp32_ok[0])
    ctx.check("loss non-finite at onset", len(losses) == o + 1 and not math.isfinite(losses[-1]))


# -- 4. output logit divergence: separable pass zones, no weight decay ----------------------------


@scenario(
    family="yak_polo_pass_zone_relu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Yak-polo pass-zone classifier (ReLU MLP on rider speed, mallet angle, yak heading, "
    "ball spin and field slope, 6 zones, cross-entropy, Adam lr 2e-3). The zones are cleanly "
    "separable and the config's weight_decay is typed 0 with label smoothing left off: nothing "
    "bounds the head, whose logits keep growing long after every pass is classified.",
)
def h524_yak_polo_unbounded_logits(ctx):
    gen = seeded(5244)
    model = _Net(10, 48, 6)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=0.0)
    probe_x, _ = next(_grades(torch.Generator().manual_seed(3), 512, 10, 6, 52440, spread=0.3))
    sizes = {}

    def after(step, loss):
        if step in (0, 240, 299):
            with torch.no_grad():
                sizes[step] = float(model(probe_x).abs().mean())

    with torch.no_grad():
        start = float(model(probe_x).abs().mean())
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 6, 52440, spread=0.3),
        300,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("mean |logit| grew over 20x", sizes[299] > 20 * start)
    ctx.check("still growing over the last 60 steps", sizes[299] > 1.08 * sizes[240])
    ctx.check("loss near zero and finite", _mean(losses[-10:]) < 0.01 and _finite(losses))


# -- 5. update ratio: a ReZero residual net whose gate group lr is typed 0 ------------------------


class _ReZeroGate(nn.Module):
    """Scales a residual branch by a learnt scalar initialised at 0 (ReZero)."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, h):
        return self.alpha * h


class _ReZeroBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc_a = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc_b = nn.Linear(2 * dim, dim)
        self.gate = _ReZeroGate()

    def forward(self, x):
        return x + self.gate(self.fc_b(self.act(self.fc_a(x))))


class _OastReZero(nn.Module):
    def __init__(self, d_in, dim=32, depth=3):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(_ReZeroBlock(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h).squeeze(-1)


@scenario(
    family="oast_house_hop_drying_rezero_regressor",
    optimizer="SGD",
    cause="update_ratio_out_of_range",
    where=("blocks.0.gate", "blocks.1.gate", "blocks.2.gate"),
    diverges=None,
    heldout=True,
    note="Oast-house hop-drying moisture regressor, a hand-written ReZero residual network (3 "
    "blocks, each GELU branch scaled by a learnt scalar initialised at 0; MSE, SGD Nesterov "
    "momentum 0.9). The ReZero gates get their own param group whose lr is set from "
    "gate_lr_mult, typed 0 for 10: the gates never leave 0, so the branches receive no gradient "
    "either and only the input and head layers learn (a linear fit).",
)
def h524_oast_rezero_gate_lr_zero(ctx):
    gen = seeded(5245)
    model = _OastReZero(6)
    gates = [p for n, p in model.named_parameters() if n.endswith("alpha")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("alpha")]
    base = 0.02
    gate_lr_mult = 0  # meant 10
    opt = torch.optim.SGD(
        [{"params": rest, "lr": base}, {"params": gates, "lr": base * gate_lr_mult}],
        momentum=0.9,
        nesterov=True,
    )
    b0 = model.blocks[1].fc_a.weight.detach().clone()
    i0 = model.inp.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 52450), 200, F.mse_loss)
    ctx.check("every gate still exactly 0", all(float(g.detach().abs()) == 0.0 for g in gates))
    ctx.check(
        "branch weights moved under 1e-9", _rel_change(model.blocks[1].fc_a.weight, b0) < 1e-9
    )
    ctx.check("input layer moved over 5%", _rel_change(model.inp.weight, i0) > 0.05)
    ctx.check("the linear path still trained", _fell(losses, ratio=0.95))


# -- 6. adam second moment: a stale fp16 loss scale multiplied in for one step --------------------

KINTSUGI_ONSET = 100


@scenario(
    family="kintsugi_lacquer_seam_cure_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=KINTSUGI_ONSET,
    note="Kintsugi lacquer-seam cure-time regressor (SiLU MLP on muro humidity, temperature, "
    "seam width, lacquer age and gold-powder load; MSE, Adam lr 1e-3, beta2 0.999). Resuming "
    "at step 100 from an fp16 checkpoint, the saved loss scale 65536 is multiplied into the "
    "fp32 loss for that one step: one gradient about 6e4x the usual fills Adam's second "
    "moment, whose 0.999 decay keeps every later update tiny; the loss stalls where it was.",
)
def h524_kintsugi_stale_scale_once(ctx):
    gen = seeded(5246)
    model = _Net(5, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves, vs = [], []
    prev = {}

    def before(step):
        prev["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step, loss):
        moves.append(
            math.sqrt(
                sum(
                    float((p.detach() - q).pow(2).sum())
                    for p, q in zip(model.parameters(), prev["w"], strict=True)
                )
            )
        )
        vs.append(float(opt.state[model.fc2.weight]["exp_avg_sq"].sqrt().median()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 52460),
        220,
        F.mse_loss,
        before=before,
        after=after,
        weight=lambda s: 65536.0 if s == KINTSUGI_ONSET else 1.0,
    )
    o = KINTSUGI_ONSET
    ctx.check("gradient over 1e3x the median at onset", norms[o] > 1e3 * _median(norms[o - 30 : o]))
    ctx.check("fc2 median sqrt(v) over 30x after onset", vs[o + 5] > 30 * vs[o - 1])
    ctx.check(
        "updates 70-115 steps after under 0.2x those before",
        _mean(moves[o + 70 : o + 115]) < 0.2 * _mean(moves[o - 40 : o]),
    )
    ctx.check("loss finite", _finite(losses))


# -- 7. nonfinite: the wind vector divided by its speed on a calm row ------------------------------

ICEVOLC_ONSET = 110


class _UnitWind(nn.Module):
    """Turns the (u, v) wind vector into a unit direction (no eps)."""

    def forward(self, x):
        uv = x[:, :2]
        return torch.cat([uv / uv.norm(dim=1, keepdim=True), x[:, 2:]], 1)


class _IceVolcanoNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.unitwind = _UnitWind()
        self.body = _Net(6, 48, 1, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.unitwind(x))


@scenario(
    family="ice_volcano_plume_unit_wind_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("unitwind",),
    diverges=ICEVOLC_ONSET,
    heldout=True,
    onset=ICEVOLC_ONSET,
    note="Lake-shore ice-volcano plume-height net (a layer turning the wind vector into a unit "
    "direction, then a SiLU MLP with wave height, shelf thickness, air temperature and slush "
    "depth; MSE, Adamax). The direction is uv / |uv| with no eps; at step 110 a shard logged on "
    "a dead-calm morning has u = v = 0 in one row: 0/0 = NaN and the loss is NaN.",
)
def h524_ice_volcano_calm_wind_zero_div(ctx):
    gen = seeded(5247)
    model = _IceVolcanoNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    flags = []

    def alter(step, x, y):
        if step == ICEVOLC_ONSET:
            x = x.clone()
            x[5, :2] = 0.0
            with torch.no_grad():
                flags.append(not bool(torch.isfinite(model.unitwind(x)).all()))
        return x, y

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 52470), 170, F.mse_loss, alter=alter)
    o = ICEVOLC_ONSET
    ctx.check("trained before onset", _fell(losses[:o], ratio=0.8))
    ctx.check("unit-wind output non-finite at onset", bool(flags) and flags[0])
    ctx.check("loss NaN at onset", len(losses) == o + 1 and math.isnan(losses[-1]))


# -- 8. data outlier: one sample of 65535 sensor glitches in a tied autoencoder --------------------

SCRIM_ONSET = 120


class _TiedAutoencoder(nn.Module):
    """Encoder weights reused (transposed) by the decoder."""

    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.ReLU()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _etch_profiles(gen, batch, d_in=16):
    """Etch-depth profiles along a scrimshaw line: a few smooth stroke shapes plus noise."""
    t = torch.linspace(0, 1, d_in)
    basis = torch.stack([torch.sin(math.pi * t), torch.sin(2 * math.pi * t), t, 1 - t])
    while True:
        coef = torch.randn(batch, 4, generator=gen)
        x = coef @ basis + 0.05 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="scrimshaw_etch_depth_tied_autoencoder",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SCRIM_ONSET,
    note="Scrimshaw etch-depth profile autoencoder with tied weights (the decoder reuses the "
    "encoder matrix transposed; Huber loss, ASGD lr 0.05, clipping at norm 1). At step 120 one "
    "sample in the batch comes from a profilometer that wrote its overflow code 65535 in four "
    "positions: one batch with a huge loss and gradient; clipping holds it and the run recovers.",
)
def h524_scrimshaw_glitch_sample(ctx):
    gen = seeded(5248)
    model = _TiedAutoencoder()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == SCRIM_ONSET:
            x = x.clone()
            x[7, 3:7] = 65535.0
            return x, x
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _etch_profiles(gen, 64), 220, F.huber_loss, alter=alter, clip=1.0
    )
    o = SCRIM_ONSET
    pre = _median(losses[o - 30 : o])
    ctx.check("loss over 100x at onset", losses[o] > 100 * pre)
    ctx.check("gradient over 20x at onset", norms[o] > 20 * _median(norms[o - 30 : o]))
    ctx.check("recovers under 2x", _mean(losses[-20:]) < 2 * pre and _finite(losses))
    ctx.check("trained before onset", _fell(losses[:o]))


# -- 9. gradient spike: a loss weight read as 100 for one step ------------------------------------

LIME_ONSET = 140


@scenario(
    family="limelight_burner_glow_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=LIME_ONSET,
    note="Limelight-burner glow classifier (ReLU MLP on oxygen flow, hydrogen flow, quicklime "
    "cylinder age, nozzle gap and cylinder turn rate; bright enough or not, BCE with logits, SGD "
    "momentum 0.9, clipping at norm 1). At step 140 a config reload reads the loss weight "
    "'1.00' as 100 for one step: one gradient about 100x the usual on an ordinary logged loss; "
    "clipping holds the update and the run carries on.",
)
def h524_limelight_loss_weight_reload(ctx):
    gen = seeded(5249)
    model = _Net(5, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    base = _readings(gen, 64, 5, 52490, noise=0.1)

    def batches():
        while True:
            x, y = next(base)
            yield x, (y > 0.3).float()

    losses, norms = _loop(
        ctx,
        model,
        opt,
        batches(),
        220,
        F.binary_cross_entropy_with_logits,
        weight=lambda s: 100.0 if s == LIME_ONSET else 1.0,
        clip=1.0,
    )
    o = LIME_ONSET
    ctx.check("gradient over 30x the median at onset", norms[o] > 30 * _median(norms[o - 30 : o]))
    ctx.check("logged loss ordinary at onset", losses[o] < 3 * _median(losses[o - 30 : o]))
    ctx.check("trained and finite", _fell(losses))


# -- 10. softmax collapse: temperature typed 0.001 ----------------------------------------------


class _GongNet(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.body = _Net(12, 48, 7)
        self.temperature = temperature

    def forward(self, x):
        return self.body(x) / self.temperature


@scenario(
    family="gong_chime_strike_mallet_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("body.head",),
    diverges=None,
    heldout=True,
    note="Gong-chime mallet classifier (ReLU MLP on 12 strike-spectrum bands, 7 mallet types, "
    "cross-entropy, NAdam lr 1e-3). The softmax temperature is read from a config in "
    "milliseconds-per-unit and typed 0.001 for 1.0: logits divided by 0.001 saturate the softmax, "
    "most rows' probabilities round to exactly 1.0 and 0.0.",
)
def h524_gong_chime_temperature_typo(ctx):
    gen = seeded(52410)
    model = _GongNet(0.001)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 12, 7, 524100)
    losses, _ = _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    px, py = next(_grades(torch.Generator().manual_seed(5), 512, 12, 7, 524100))
    with torch.no_grad():
        p = torch.softmax(model(px), -1)
    exact_one = float((p.gather(1, py[:, None]) == 1.0).float().mean())
    max_one = float((p.max(1).values == 1.0).float().mean())
    ctx.check("over half the rows' target probability exactly 1.0", exact_one > 0.5)
    ctx.check("over 80% of rows with a probability exactly 1.0", max_one > 0.8)
    ctx.check("loss finite", _finite(losses))


# -- controls ----------------------------------------------------------------------------------


class _TatamiNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=8):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.fc1(x)))
        return self.head(F.relu(self.bn2(self.fc2(h))))


@scenario(
    family="tatami_weave_grade_large_batch_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tatami weave-grade classifier (ReLU MLP with BatchNorm on 20 rush-straw readings, 8 "
    "grades, "
    "cross-entropy) trained at batch 1024 with the linearly scaled lr 0.4 (0.1 per 256) under "
    "SGD momentum 0.9, a 5-step linear warm-up then cosine decay. Control.",
)
def h524_tatami_large_batch_control(ctx):
    gen = seeded(52411)
    model = _TatamiNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.4, momentum=0.9)
    steps, warm = 90, 5

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 1024, 20, 8, 524110, spread=1.6),
        steps,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    ctx.check("loss fell under 0.5x and finite", _fell(losses, k=5, ratio=0.5))


class _CajonConv(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.max_pool1d(h, 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _cajon_hits(gen, batch, n=64):
    """Cajon hits: bass (low, long), tone (mid), slap (high, short, noisy); 10% mislabelled."""
    t = torch.arange(n).float() / n
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        freq = torch.tensor([3.0, 8.0, 16.0])[y][:, None]
        decay = torch.tensor([2.0, 5.0, 10.0])[y][:, None]
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * freq * t + phase) * torch.exp(-decay * t)
        x = x + 0.3 * torch.randn(batch, n, generator=gen)
        flip = torch.rand(batch, generator=gen) < 0.1
        yield x, torch.where(flip, torch.randint(0, 3, (batch,), generator=gen), y)


@scenario(
    family="cajon_slap_tone_label_smoothing_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cajon hit classifier (bass, tone, slap) over 64-sample waveforms, a conv1d net with "
    "global average pooling; cross-entropy with label smoothing 0.1, Adam under OneCycleLR (max "
    "lr 1e-2), clipping at norm 1, noisy waveforms and 10% mislabelled hits. Control.",
)
def h524_cajon_onecycle_control(ctx):
    gen = seeded(52412)
    model = _CajonConv()
    steps = 160
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _cajon_hits(gen, 128),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell under 0.7x and finite", _fell(losses))


class _HaloNLL(nn.Module):
    """Predicts the mean and log-variance of a sun-dog's brightness."""

    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.fc2 = nn.Linear(48, 48)
        self.mean = nn.Linear(48, 1)
        self.logvar = nn.Linear(48, 1)

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return torch.cat([self.mean(h), self.logvar(h)], -1)


def _gaussian_nll(out, y):
    mean, logvar = out[:, 0], out[:, 1].clamp(-6, 6)
    return 0.5 * (logvar + (y - mean) ** 2 / logvar.exp()).mean()


@scenario(
    family="sun_dog_halo_brightness_fp16_gaussian_nll_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sun-dog halo-brightness net (GELU MLP on sun elevation, ice-crystal habit, cirrus "
    "cover, humidity and wind shear, predicting a mean and log-variance, Gaussian NLL) under "
    "fp16 autocast + GradScaler, AdamW with two param groups (no decay on biases), "
    "ReduceLROnPlateau, gradient accumulation over 2 micro-batches, clipping at norm 1. Control.",
)
def h524_sun_dog_fp16_nll_control(ctx):
    gen = seeded(52413)
    model = _HaloNLL(5)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 32, 5, 524130, noise=0.2)
    losses = []
    for _ in range(170):
        shown = 0.0
        for _ in range(2):
            x, y = next(data)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = _gaussian_nll(out.float(), y)
            scaler.scale(loss / 2).backward()
            shown += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        plateau.step(shown)
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
    early, late = _mean(losses[:10]), _mean(losses[-10:])
    ctx.check("NLL fell by over 0.5 nats and finite", late < early - 0.5 and _finite(losses))
    ctx.check("scaler scale stayed finite", _finite(ctx.scales))
