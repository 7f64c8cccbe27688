"""Held-out set 248 (``h248_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a lava-tube lavacicle ReLU RNN whose IRNN identity init was
multiplied by the ReLU gain, a ploughing-match furrow classifier whose temperature is applied in
the forward and again in the loss, a mountain-wave lee-rotor GELU MLP fed one high mast's static
pressures raw in pascals under fp16 autocast, a cuju kick-height regressor resumed without its
NAdam state, an icon painter's pigment-share regressor taking 0/0 on pigment-free tiles, a
bark-tanning regressor whose unfreeze sets the head's param group instead of the trunk's, an
ostrich-racing sprint regressor fed one batch with the timing gate's -9999 code, a bo-taoshi
pole-fall BCE MLP whose epoch-end batch is summed, a flax-scutching tanh regressor whose warm-up
lambda lost its min(), a gold-beating leaf regressor whose in-place target jitter compounds every
epoch, and three controls (a river ice-jam LN-GRU written by hand with a Gaussian NLL, a
volcanic-bomb mass Huber regressor with heavy-tailed targets, a yabusame strike-zone classifier
under fp16 autocast with OneCycleLR, label smoothing and accumulation).

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
    collapsed_fraction,
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

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
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; ``amp`` is the
    autocast dtype (None: float32); stops after logging a NaN loss."""
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
                ctx.targets(y if not isinstance(y, tuple) else y[1])
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
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


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


class GeluNet(nn.Module):
    """fc1 -> act1 (GELU) -> fc2 -> act2 (GELU) -> head."""

    def __init__(self, d_in, hidden=48, out=1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- lava tube lavacicle: IRNN identity init multiplied by the ReLU gain --------------------------


class LavaRNN(nn.Module):
    """A hand-written ReLU RNN: h_t = relu(inp(x_t) + rec(h_{t-1})), a head on the last state."""

    def __init__(self, d_in=5, hidden=32, rec_gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(rec_gain * torch.eye(hidden))
        self.hidden = hidden
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _drip_sequences(gen, batch, length=30):
    """Five standardised readings per minute of a lava-tube roof (roof temperature, drip rate,
    draught speed, gas temperature, glaze thickness) over ``length`` minutes, and the length the
    lavacicle grows by in the next minute."""
    while True:
        x = torch.randn(batch, length, 5, generator=gen)
        decay = 0.8 ** torch.arange(length - 1, -1, -1).float()
        y = torch.tanh((x[:, :, 1] * decay).sum(1) / 2.5 - 0.4 * x[:, -1, 0])
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="lava_tube_lavacicle_cooling_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU RNN (inp, rec, head) reading 30 minutes of a lava-tube roof (roof temperature, drip rate, draught, gas temperature, glaze thickness) and regressing the lavacicle growth in the next minute, plain SGD at 1e-4, MSE. The recurrent matrix is given the IRNN identity init, but the project's init helper multiplies every weight init by nn.init.calculate_gain('relu'), so rec starts at sqrt(2) times the identity: the positive hidden state and the gradient through time grow by about 1.4 per minute; at step 0 the gradient at the first minute's state is thousands of times that at the last, the loss is already huge and blows up.",
)
def h248_lava_tube_irnn_relu_gain(ctx: Context) -> None:
    gen = seeded(24801)
    model = LavaRNN(rec_gain=nn.init.calculate_gain("relu"))
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    ratio = {}
    batches = _drip_sequences(gen, 32)
    ctx.attach(model, opt)
    for step in range(100):
        x, y = next(batches)
        out = model(x)
        loss = F.mse_loss(out, y)
        loss.backward()
        if step == 0:
            first = model.states[0].grad.norm()
            last = model.states[-1].grad.norm()
            ratio["t"] = float(first / max(float(last), 1e-30))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    twin = LavaRNN(rec_gain=1.0)
    with torch.no_grad():
        twin_loss = float(F.mse_loss(twin(x), y))
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at the first minute over 1000x that at the last (step 0)",
        ratio.get("t", 0.0) > 1000,
    )
    ctx.check(
        "the loss blew up (over 1000x its start, or non-finite)",
        not _finite(ls) or max(ls) > 1000 * ls[0],
    )
    ctx.check(
        "the gradient norm grew over 100x",
        not _finite(gn) or max(gn) > 100 * gn[0],
    )
    ctx.check("the identity init without the gain gives a loss under 1e3", twin_loss < 1e3)


# -- ploughing match: the temperature applied twice ----------------------------------------------

TEMP_FURROW = 0.05


class FurrowNet(nn.Module):
    """fc1 -> act1 (ReLU) -> fc2 -> act2 -> head; the logits divided by ``temperature``."""

    def __init__(self, d_in, classes, temperature, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="ploughing_match_furrow_grade_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, fc2, act2, head) grading a ploughing-match furrow (6 judges' grades) from 18 standardised readings of the plough and the cut (depth, crown height, furrow-wall angle, straightness, ...), Adam at 1e-3, cross-entropy. The sharpening temperature 0.05 is applied in the model's forward (logits / T) and, after a refactor, again in the training loss (F.cross_entropy(out / T, y)): the softmax sees logits 400x the raw head output where 20x was meant; within a few dozen steps the float32 softmax rounds nearly every target probability to exactly 1, those rows give no gradient. Applied once, the probabilities stay short of 1. Finite, no blow-up.",
)
def h248_ploughing_temperature_twice(ctx: Context) -> None:
    probe = next(_kinds(torch.Generator().manual_seed(3), 512, 18, 6, 201))

    def run(c, twice):
        gen = seeded(24802)
        model = FurrowNet(18, 6, TEMP_FURROW)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        extra = TEMP_FURROW if twice else 1.0
        fr = []

        def after(step):
            with torch.no_grad():
                fr.append(collapsed_fraction(model(probe[0]) / extra, probe[1]))

        def loss_fn(out, y):
            return F.cross_entropy(out / extra, y)

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 18, 6, 201),
            160,
            loss_fn,
            classifier=True,
            after=after,
        )
        return fr

    twin = _Quiet()
    twin_fr = run(twin, False)
    fr = run(ctx, True)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of probe rows saturated after step 0", fr[0] < 0.1)
    ctx.check("over 80% of the probe rows saturate to exactly 1 at the end", fr[-1] > 0.8)
    ctx.check("over 80% saturated over the last 40 steps", min(fr[-40:]) > 0.8)
    ctx.check("applied once, the temperature saturates under 10%", twin_fr[-1] < 0.1)


# -- mountain wave lee rotor: a mast's static pressure in pascals under fp16 autocast ------------

ONSET_ROTOR = 90


def _rotor_readings(gen, batch, pascals_from, seed=202):
    """Sixteen standardised readings of a lee-wave mast (ten static-pressure ports, wind speed
    and direction, temperatures) and the rotor's peak downdraught. From ``pascals_from`` a new
    mast at 4000 m reports its ten static-pressure ports raw in pascals (about 61000 Pa)."""
    stream = _readings(gen, batch, 16, seed, noise=0.05)
    step = 0
    while True:
        x, y = next(stream)
        if step >= pascals_from:
            x = x.clone()
            x[:, :10] = (61000.0 + 1500.0 * x[:, :10]).clamp(50000.0, 65000.0)
        step += 1
        yield x, y


@scenario(
    family="mountain_wave_lee_rotor_pressure_fp16_mlp",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_ROTOR,
    heldout=True,
    onset=ONSET_ROTOR,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the peak downdraught of a mountain-wave lee rotor from 16 readings of a mast (ten static-pressure ports, wind, temperatures), AdamW at 2e-3, MSE, fp16 autocast with a torch.amp.GradScaler. From step 90 a new high mast (4000 m) joins and its ten pressure ports arrive raw in pascals (about 61000 Pa, each under fp16's 65504), because its station file lacks the hPa-anomaly conversion. fc1's fp16 matmul sums ten such readings past 65504: its output holds inf under autocast, the prediction is non-finite and the loss NaN at step 90, while the same batch in float32 gives a finite output.",
)
def h248_lee_rotor_pascals_fp16(ctx: Context) -> None:
    gen = seeded(24803)
    model = GeluNet(16, hidden=64)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_ROTOR:
            seen["x_max"] = float(x.abs().max())
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(model(x.float())).all())
                seen["x_fp16_finite"] = bool(torch.isfinite(x.half()).all())
                with torch.autocast("cpu", dtype=torch.float16):
                    seen["fc1_finite"] = bool(torch.isfinite(model.fc1(x)).all())
                seen["out_finite"] = bool(torch.isfinite(out).all())

    def loss_fn(out, y):
        return F.mse_loss(out.float(), y)

    _train(
        ctx,
        model,
        opt,
        _rotor_readings(gen, 64, pascals_from=ONSET_ROTOR),
        120,
        loss_fn,
        watch=watch,
        scaler=scaler,
        amp=torch.float16,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_ROTOR], ratio=0.5))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_ROTOR)
    ctx.check("inputs at the onset in pascals (max over 40000)", seen.get("x_max", 0.0) > 40000)
    ctx.check("the onset inputs are finite in fp16", seen.get("x_fp16_finite") is True)
    ctx.check("fc1's fp16 output overflows at the onset", seen.get("fc1_finite") is False)
    ctx.check("the fp16 prediction is non-finite at the onset", seen.get("out_finite") is False)
    ctx.check("the same batch in float32 gives a finite output", seen.get("fp32_finite") is True)


# -- cuju: a resume that reloads the weights but not NAdam's state -------------------------------

ONSET_CUJU = 150


@scenario(
    family="cuju_kick_height_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CUJU,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the height a cuju ball reaches from 12 standardised readings of the kick (foot speed, contact point, ball pressure, ...), NAdam at 1e-2, MSE. At step 150 the job is pre-empted and resumed: the resume loads the model's state_dict but the optimizer's load is skipped by a mistyped checkpoint key, so NAdam restarts with empty moments (opt.state cleared) at the same learning rate. Its first updates are a full lr in nearly every coordinate along a few noisy batches: the loss jumps several-fold and the run recovers within a few dozen steps. The batches and the gradient norm are ordinary, the lr is unchanged; finite.",
)
def h248_cuju_resume_without_optimizer_state(ctx: Context) -> None:
    gen = seeded(24804)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    seen = {}

    def before(step):
        if step == ONSET_CUJU:
            seen["lr"] = opt.param_groups[0]["lr"]
            opt.state.clear()

    def watch(step, out, x, y):
        if ONSET_CUJU - 1 <= step <= ONSET_CUJU + 5:
            seen["x_max"] = max(seen.get("x_max", 0.0), float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 204, noise=0.05),
        260,
        F.mse_loss,
        before=before,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_CUJU - 20 : ONSET_CUJU])
    peak = max(ls[ONSET_CUJU : ONSET_CUJU + 10])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_CUJU], ratio=0.3))
    ctx.check("the loss jumps over 4x its pre-onset mean within 10 steps", peak > 4 * pre)
    ctx.check(
        "the gradient norm at the onset under 3x its median before",
        gn[ONSET_CUJU] < 3 * _median(gn[ONSET_CUJU - 20 : ONSET_CUJU]),
    )
    ctx.check("the lr is unchanged at the resume", seen.get("lr") == 1e-2)
    ctx.check("the batches around the onset are ordinary (max |x| under 6)", seen["x_max"] < 6)
    ctx.check(
        "the loss recovered within 60 steps (under 2x its pre-onset level)",
        _mean(ls[ONSET_CUJU + 50 : ONSET_CUJU + 60]) < 2 * pre,
    )


# -- icon painter: pigment shares as x / x.sum() over a blank record ----------------------------

ONSET_ICON = 100


class PigmentShare(nn.Module):
    """Each pigment's share of the mulled batch: grams / total grams (no guard for 0 / 0)."""

    def forward(self, g):
        return g / g.sum(1, keepdim=True)


class IconNet(nn.Module):
    def __init__(self, pigments=6, extra=4, hidden=32):
        super().__init__()
        self.pigments = pigments
        self.share = PigmentShare()
        self.fc1 = nn.Linear(pigments + extra, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = torch.cat([self.share(x[:, : self.pigments]) * 4.0, x[:, self.pigments :]], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


def _pigment_batches(gen, batch, blank_at, seed=205):
    """Grams of six pigments mulled into an egg-tempera batch for an icon, four standardised
    readings (egg-yolk ratio, water, mulling time, panel gesso), and the paint's covering power.
    At step ``blank_at`` the batch holds the workshop's medium-only test tiles: no pigment."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    step = 0
    while True:
        grams = torch.rand(batch, 6, generator=gen) * 5.0
        e = torch.randn(batch, 4, generator=gen)
        share = grams / grams.sum(1, keepdim=True)
        y = torch.tanh(torch.cat([4 * share - 0.67, e], 1) @ w / math.sqrt(10))
        if step == blank_at:
            grams[:3] = 0.0
        step += 1
        yield torch.cat([grams, e], 1), y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="icon_painter_pigment_share_regressor",
    optimizer="Adamax",
    cause="nonfinite",
    where=("share",),
    diverges=ONSET_ICON,
    heldout=True,
    onset=ONSET_ICON,
    note="An egg-tempera covering-power regressor for an icon painter's workshop: a `share` module turning the grams of six pigments into shares (grams / grams.sum(), no guard), then a SiLU MLP (fc1, act1, fc2, act2, head), Adamax at 2e-3, MSE. At step 100 the batch holds three medium-only test tiles with no pigment (all six grams 0, valid records): share computes 0/0 = NaN on those rows, the prediction and the loss are NaN at step 100 and the NaN gradient ruins the weights.",
)
def h248_icon_pigment_share_zero_over_zero(ctx: Context) -> None:
    gen = seeded(24805)
    model = IconNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def watch(step, out, x, y):
        if step == ONSET_ICON:
            with torch.no_grad():
                g = x[:, :6]
                seen["zero_rows"] = int((g.sum(1) == 0).sum())
                seen["share_nan"] = bool(torch.isnan(model.share(g)).any())
                seen["x_finite"] = bool(torch.isfinite(x).all())

    _train(
        ctx,
        model,
        opt,
        _pigment_batches(gen, 64, blank_at=ONSET_ICON),
        130,
        F.mse_loss,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_ICON], ratio=0.7))
    ctx.check("loss non-finite first at the onset", _first_bad(ls) == ONSET_ICON)
    ctx.check("the onset batch is finite", seen.get("x_finite") is True)
    ctx.check("the onset batch holds pigment-free rows", seen.get("zero_rows", 0) > 0)
    ctx.check("share produces NaN at the onset", seen.get("share_nan") is True)


# -- bark tanning: the unfreeze sets the wrong param group's lr ----------------------------------

ONSET_BARK = 30


class TanPitNet(nn.Module):
    """A trunk (Linear, ReLU, Linear, ReLU) and a head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="bark_tanning_pit_frozen_trunk_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("trunk", "trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    onset=ONSET_BARK,
    note="An oak-bark tan-pit regressor (trunk: Linear, ReLU, Linear, ReLU; head) predicting the days a hide needs in the pits from 12 standardised readings (liquor strength, bark age, pit temperature, hide thickness, ...), Adam with two param groups: group 0 the head at 2e-3, group 1 the trunk at lr 0 for a 30-step head warm-up. The unfreeze at step 30 sets opt.param_groups[0]['lr'] = 2e-3 (the head's group) where it meant param_groups[1]: the trunk stays at lr 0 for the whole run and its weights never move, while the head learns on random features; the loss falls a little, finite, no blow-up.",
)
def h248_bark_tanning_unfreeze_wrong_group(ctx: Context) -> None:
    steps = 200

    def run(c, group):
        gen = seeded(24806)
        model = TanPitNet(12)
        opt = torch.optim.Adam(
            [
                {"params": model.head.parameters(), "lr": 2e-3},
                {"params": model.trunk.parameters(), "lr": 0.0},
            ]
        )
        w0 = {n: p.detach().clone() for n, p in model.named_parameters()}

        def before(step):
            if step == ONSET_BARK:
                opt.param_groups[group]["lr"] = 2e-3

        _train(c, model, opt, _readings(gen, 64, 12, 206), steps, F.mse_loss, before=before)
        return {
            n: float((p.detach() - w0[n]).norm() / w0[n].norm())
            for n, p in model.named_parameters()
        }

    twin = _Quiet()
    twin_moved = run(twin, group=1)
    moved = run(ctx, group=0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("trunk.0's weight never moved", moved["trunk.0.weight"] == 0.0)
    ctx.check("trunk.2's weight never moved", moved["trunk.2.weight"] == 0.0)
    ctx.check("the head's weight moved over 1e-2 of its norm", moved["head.weight"] > 1e-2)
    ctx.check(
        "the intended unfreeze moves trunk.0 over 1e-2 of its norm",
        twin_moved["trunk.0.weight"] > 1e-2,
    )
    ctx.check(
        "the intended unfreeze ends under 0.8x this run's loss",
        _mean(twin.losses[-20:]) < 0.8 * _mean(ls[-20:]),
    )


# -- ostrich racing: the timing gate's missing-value code in one batch ---------------------------

ONSET_OSTRICH = 110


@scenario(
    family="ostrich_racing_sprint_speed_regressor",
    optimizer="SGD(nesterov=True)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_OSTRICH,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing an ostrich's sprint speed from 14 standardised readings (stride length, cadence, jockey mass, track firmness, gate split times, ...), SGD with Nesterov momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0. One batch at step 110 comes from a meeting whose timing gates failed: the two split-time columns hold the gate's missing-value code -9999, which the loader does not filter. The loss on that batch is thousands of times the usual and the gradient norm is hundreds of times the median; clipping bounds the update, and the run recovers.",
)
def h248_ostrich_gate_missing_code(ctx: Context) -> None:
    gen = seeded(24807)
    model = Stack(14, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_OSTRICH:
            x = x.clone()
            x[:, 8:10] = -9999.0
            seen["x_max"] = float(x.abs().max())
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 14, 207),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_OSTRICH - 10 : ONSET_OSTRICH])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_OSTRICH], ratio=0.5))
    ctx.check("the onset batch holds the -9999 code", seen.get("x_max", 0.0) >= 9999)
    ctx.check("the loss at the onset over 100x the pre-onset mean", ls[ONSET_OSTRICH] > 100 * pre)
    ctx.check(
        "the gradient norm at the onset over 100x its median before",
        gn[ONSET_OSTRICH] > 100 * _median(gn[ONSET_OSTRICH - 20 : ONSET_OSTRICH]),
    )
    ctx.check(
        "the loss recovered within 50 steps (under 2x its pre-onset level)",
        _mean(ls[ONSET_OSTRICH + 40 : ONSET_OSTRICH + 50]) < 2 * pre,
    )


# -- bo-taoshi: the epoch's last batch goes through a summed BCE ----------------------------------

ONSET_BOTAOSHI = 100


def _pole_batches(gen, batch, seed=208):
    """Sixteen standardised readings of a bo-taoshi attack (attackers on the pole, defenders'
    ring depth, pole tilt rate, ...) and whether the pole falls past 30 degrees."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=g)
    while True:
        x = torch.randn(batch, 16, generator=gen)
        p = torch.sigmoid(2.0 * x @ w / math.sqrt(16) + 0.8 * x[:, 0] * x[:, 1])
        yield x, (torch.rand(batch, generator=gen) < p).float()


@scenario(
    family="bo_taoshi_pole_fall_bce_mlp",
    optimizer="SGD(momentum=0.9)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BOTAOSHI,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting whether the pole falls in a bo-taoshi attack from 16 standardised readings, SGD with momentum 0.9 at 2e-2, BCE with logits. The epoch's last batch (step 100) goes through a second code path, written for logging, whose criterion was built as BCEWithLogitsLoss(reduction='sum'): that one step's gradient is 64x (the batch size) that of the steps around it. The batch itself is ordinary; the loss jumps after the step and the run recovers; finite.",
)
def h248_bo_taoshi_summed_last_batch(ctx: Context) -> None:
    gen = seeded(24808)
    model = Stack(16, hidden=48)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    xs = []

    def scale_loss(step, total):
        return total * 64 if step == ONSET_BOTAOSHI else total  # sum over 64 rows, not the mean

    def watch(step, out, x, y):
        if step in (ONSET_BOTAOSHI - 1, ONSET_BOTAOSHI):
            xs.append(float(x.abs().max()))

    _train(
        ctx,
        model,
        opt,
        _pole_batches(gen, 64),
        200,
        F.binary_cross_entropy_with_logits,
        scale_loss=scale_loss,
        watch=watch,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before = _median(gn[ONSET_BOTAOSHI - 20 : ONSET_BOTAOSHI])
    pre = _mean(ls[ONSET_BOTAOSHI - 10 : ONSET_BOTAOSHI])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_BOTAOSHI], ratio=0.85))
    ctx.check(
        "the gradient norm at the onset over 30x the median before",
        gn[ONSET_BOTAOSHI] > 30 * before,
    )
    ctx.check(
        "the gradient norm 30 steps later back under 5x", gn[ONSET_BOTAOSHI + 30] < 5 * before
    )
    ctx.check("the batches at the onset are ordinary (max |x| under 6)", max(xs) < 6)
    ctx.check(
        "the loss rose over 1.5x right after the onset",
        max(ls[ONSET_BOTAOSHI + 1 : ONSET_BOTAOSHI + 6]) > 1.5 * pre,
    )
    ctx.check(
        "the loss recovered within 60 steps (under 1.3x its pre-onset level)",
        _mean(ls[ONSET_BOTAOSHI + 50 : ONSET_BOTAOSHI + 60]) < 1.3 * pre,
    )


# -- flax scutching: a warm-up lambda without its min() -------------------------------------------

WARMUP_FLAX = 20


@scenario(
    family="flax_scutching_fibre_yield_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=WARMUP_FLAX,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the line-fibre yield of scutching retted flax from 10 standardised readings (retting days, stem diameter, moisture, blade speed, ...), plain SGD at a peak of 0.1, MSE, a LambdaLR warm-up over 20 steps written lambda s: s / 20 where min(1, s / 20) was meant: after the warm-up the rate keeps climbing linearly (0.5 by step 100), lr x top Hessian eigenvalue passes 2, the loss oscillates and blows up.",
)
def h248_flax_scutching_warmup_without_min(ctx: Context) -> None:
    gen = seeded(24809)
    model = Stack(10, hidden=48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / WARMUP_FLAX)
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 10, 209))
    seen = {"prod": []}

    def before(step):
        if step >= WARMUP_FLAX and step % 10 == 0:
            lr = opt.param_groups[0]["lr"]
            seen["prod"].append((step, lr * _sharpness(model, F.mse_loss, probe)))

    _train(
        ctx, model, opt, _readings(gen, 64, 10, 209), 200, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    prods = dict(seen["prod"])
    cross = next((s for s, v in seen["prod"] if v > 2), None)
    ctx.check("loss fell during the warm-up and after it", _fell(ls[: WARMUP_FLAX + 20], ratio=0.7))
    ctx.check("lr x sharpness under 2 at the end of warm-up", prods[WARMUP_FLAX] < 2)
    ctx.check("lr x sharpness passes 2 later", cross is not None)
    ctx.check(
        "the loss blew up after it passed 2 (over 100x, or non-finite)",
        cross is not None
        and (not _finite(ls[cross:]) or max(ls[cross:]) > 100 * _mean(ls[cross - 10 : cross])),
    )


# -- gold beating: an in-place target jitter compounds every epoch ------------------------------


def _leaf_epochs(gen, batch, cached, grow, seed=210):
    """Twelve standardised readings of a goldbeater's session (hammer weight, blows per minute,
    cutch packet age, gold carat, ...) and the leaf thickness, standardised; a cached set of
    ``cached`` batches served epoch after epoch, the stored targets multiplied by ``grow`` in
    place at every epoch (the bug: a 'jitter' meant for a copy)."""
    stream = _readings(gen, batch * cached, 12, seed, noise=0.05)
    x, y = next(stream)
    sizes = []
    while True:
        for i in range(cached):
            yield x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch].clone()
        y.mul_(grow)
        sizes.append(float(y.std()))


@scenario(
    family="gold_beating_leaf_thinness_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the thickness of gold leaf after a goldbeater's session from 12 standardised readings (hammer weight, blows per minute, cutch packet age, carat, ...), RMSprop at 1e-3, MSE, on a cached set of 8 batches served epoch after epoch. A per-epoch target augmentation meant to scale a copy of the targets by a random factor near 1 was written y.mul_(1.04) on the cached tensor: the stored targets grow 4% every epoch (every 8 steps) and the model keeps chasing them; the loss first falls, then climbs slowly and steadily to several times its low. No spike, no bad batch, no NaN.",
)
def h248_gold_beating_compounding_target(ctx: Context) -> None:
    steps = 280

    def run(c, grow):
        gen = seeded(24810)
        model = Stack(12, hidden=48, act=nn.SiLU)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        scale = []

        def watch(step, out, x, y):
            scale.append(float(y.abs().mean()))

        _train(c, model, opt, _leaf_epochs(gen, 64, 8, grow), steps, F.mse_loss, watch=watch)
        return scale

    twin = _Quiet()
    run(twin, 1.0)
    scale = run(ctx, 1.04)
    ls = ctx.losses
    lo = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9))
    at = min(range(0, len(ls) - 9), key=lambda i: _mean(ls[i : i + 10]))
    means = [_mean(ls[i : i + 10]) for i in range(at, len(ls) - 9, 10)]
    jumps = max(
        (b / max(a, 1e-8) for a, b in zip(means[:-1], means[1:], strict=True)), default=99.0
    )
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss first fell (low under 0.6x the start)", lo < 0.6 * _mean(ls[:10]))
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * lo)
    ctx.check("the climb is gradual (no 10-step mean over 2x the one before)", jumps < 2.0)
    ctx.check("the targets grew over 3x", scale[-1] > 3 * scale[0])
    ctx.check(
        "the twin without the in-place jitter ends under 1/3 of it",
        _mean(twin.losses[-10:]) < _mean(ls[-10:]) / 3,
    )


# -- healthy controls -----------------------------------------------------------------------------


class LNGRUCell(nn.Module):
    """A GRU cell with layer normalisation written by hand (Ba et al. 2016): the input and
    recurrent pre-activations of the three gates are layer-normalised separately."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.wx = nn.Linear(d_in, 3 * hidden)
        self.uh = nn.Linear(hidden, 3 * hidden, bias=False)
        self.ln_x = nn.LayerNorm(3 * hidden)
        self.ln_h = nn.LayerNorm(3 * hidden)
        self.hidden = hidden

    def forward(self, x, h):
        gx = self.ln_x(self.wx(x)).chunk(3, -1)
        gh = self.ln_h(self.uh(h)).chunk(3, -1)
        r = torch.sigmoid(gx[0] + gh[0])
        z = torch.sigmoid(gx[1] + gh[1])
        n = torch.tanh(gx[2] + r * gh[2])
        return (1 - z) * n + z * h


class IceJamNet(nn.Module):
    """The LN-GRU over the hours, a head giving the mean and log-variance of the next stage."""

    def __init__(self, d_in=6, hidden=32):
        super().__init__()
        self.cell = LNGRUCell(d_in, hidden)
        self.head = nn.Linear(hidden, 2)
        self.hidden = hidden

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h)


def _stage_sequences(gen, batch, length=24):
    """Six standardised readings per hour at a river gauge under an ice jam (stage, air
    temperature, ice thickness, upstream flow, ...) and the stage six hours on, with a noise
    that grows with the upstream flow."""
    while True:
        x = torch.randn(batch, length, 6, generator=gen)
        decay = 0.85 ** torch.arange(length - 1, -1, -1).float()
        mean = torch.tanh((x[:, :, 3] * decay).sum(1) / 2.5) + 0.5 * x[:, -1, 0]
        sd = 0.1 + 0.2 * torch.sigmoid(x[:, -1, 3])
        yield x, mean + sd * torch.randn(batch, generator=gen)


@scenario(
    family="river_ice_jam_stage_ln_gru_forecaster",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GRU with layer normalisation written by hand (cell.wx, cell.uh, cell.ln_x, cell.ln_h; head) reading 24 hours of a river gauge under an ice jam and forecasting the stage six hours on as a Gaussian (mean and log-variance, Gaussian NLL), Adam at 3e-3 with a linear warm-up then cosine (LambdaLR), gradient clipping at 1.0. Trains normally.",
)
def h248_ice_jam_ln_gru_control(ctx: Context) -> None:
    gen = seeded(24811)
    steps = 150
    model = IceJamNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def lam(step):
        if step < 15:
            return (step + 1) / 15
        return 0.1 + 0.45 * (1 + math.cos(math.pi * (step - 15) / (steps - 15)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)

    def loss_fn(out, y):
        return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())

    _train(ctx, model, opt, _stage_sequences(gen, 32), steps, loss_fn, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell by over 0.5 nats", _mean(ls[-15:]) < _mean(ls[:15]) - 0.5)


def _bomb_masses(gen, batch, seed=212):
    """Ten standardised readings of a Strombolian blast (infrasound amplitude, vent
    temperature, gas flux, ...) and the log-mass of the largest volcanic bomb thrown; the
    masses are heavy-tailed (Student-t with 2 degrees of freedom around the trend)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    t = torch.distributions.StudentT(2.0)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(10)) + 0.5 * torch.sin(x[:, 1])
        yield x, y + 0.3 * t.sample((batch,))


@scenario(
    family="volcanic_bomb_ejecta_mass_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control with heavy-tailed targets: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the log-mass of the largest bomb of a Strombolian blast from 10 standardised readings, targets with Student-t (2 degrees of freedom) scatter (occasional targets 10+ from the trend), Huber loss (delta 1), Adagrad at 5e-2 with StepLR (halved every 80 steps). Trains normally; the occasional large residuals are part of the data.",
)
def h248_volcanic_bomb_heavy_tail_control(ctx: Context) -> None:
    gen = seeded(24812)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    targets = []
    gp = torch.Generator().manual_seed(6)
    px = torch.randn(1024, 10, generator=gp)
    g = torch.Generator().manual_seed(212)
    w = torch.randn(10, generator=g)
    clean = torch.tanh(px @ w / math.sqrt(10)) + 0.5 * torch.sin(px[:, 1])
    with torch.no_grad():
        err0 = float(F.mse_loss(model(px), clean))

    def watch(step, out, x, y):
        targets.append(float((y - y.median()).abs().max()))

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=1.0)

    _train(ctx, model, opt, _bomb_masses(gen, 64), 240, loss_fn, sched=sched, watch=watch)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    with torch.no_grad():
        err = float(F.mse_loss(model(px), clean))
    ctx.check(
        "loss fell (median of the last 30 under the first 30)", _median(ls[-30:]) < _median(ls[:30])
    )
    ctx.check("the error against the clean trend fell under 0.3x", err < 0.3 * err0)
    ctx.check("the targets are heavy-tailed (some batch has a residual over 8)", max(targets) > 8)


@scenario(
    family="yabusame_target_hit_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) classifying where a yabusame archer's arrow strikes the board (5 zones, off included) from 20 standardised readings of the gallop and the draw (horse speed, release angle, draw length, ...), AdamW under OneCycleLR (max_lr 4e-3), cross-entropy with label smoothing 0.1 on 10% mislabelled shots, gradient accumulation over 2, fp16 autocast with a torch.amp.GradScaler. Trains normally.",
)
def h248_yabusame_fp16_onecycle_control(ctx: Context) -> None:
    gen = seeded(24813)
    steps = 160
    model = GeluNet(20, hidden=64, out=5)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=steps, pct_start=0.3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    stream = _kinds(gen, 64, 20, 5, 213)

    def noisy():
        while True:
            x, y = next(stream)
            flip = torch.rand(len(y), generator=gen) < 0.1
            yield x, torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)

    def loss_fn(out, y):
        return F.cross_entropy(out.float(), y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        noisy(),
        steps,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
        accumulate=2,
    )
    ls = ctx.losses
    x, y = next(_kinds(torch.Generator().manual_seed(4), 1024, 20, 5, 213))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("held-out accuracy over 0.6", acc > 0.6)
    ctx.check("the loss scale stayed finite", all(math.isfinite(s) and s > 0 for s in ctx.scales))
