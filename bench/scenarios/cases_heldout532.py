"""Held-out set 532 (``h532_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a zellige tile-cut regressor whose trunk param group lr is typed 1e-9 (RMSprop); a
katajjaq throat-song breath forecaster, a dilated causal TCN, fed one recording in raw int16 PCM
(Adam); a qajaq roll-recovery Elman RNN with its recurrent weights initialised at gain 2.0 (SGD
momentum); an alkali-fly dive-duration regressor whose StepLR gamma is typed 10 for 0.1 (plain
SGD); a tufa-tower growth regressor taking the log of spring discharge with no clamp (NAdam); a
horseback-archery score regressor under fp16 autocast + GradScaler fed track distance in
millimetres (AdamW); a plique-a-jour firing-defect classifier whose temperature is typed 0.01 for
1.0 (SGD momentum); a tambour-beading hook-tension Huber regressor whose resumed step applies a
leftover static loss scale (clipped, SGD Nesterov); a cloisonne wire solder-flow regressor with a
debug loss multiplier left in for one step (Adam); an ice-sailing runner-chatter ReLU regressor
whose hand-written weight decay has its sign flipped (Adagrad).

Controls: an ulu maika stone-lane classifier with SGDR warm restarts (SGD momentum, label
smoothing; the loss jumps at every restart); a laze-plume acid-reach Huber regressor (RAdam,
OneCycleLR, clipping, accumulation 2); a vog-haze multilabel BCE net (fp16 autocast + GradScaler,
Adamax, two param groups, ReduceLROnPlateau).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    loss once ``ctx.step`` has seen it. Returns the losses and the pre-clip gradient norms."""
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / n for t in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [t.detach() for t in hv]
    return lam


# -- 1. update ratio out of range: the trunk group's lr typed 1e-9 -------------------------------


@scenario(
    family="zellige_tile_cut_angle_gelu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Zellige mosaic tile-cut angle regressor (GELU MLP on glaze thickness, clay moisture, "
    "hammer weight, chisel angle, tile size and kiln batch, MSE, RMSprop with two param groups). "
    "The trunk group's lr is typed 1e-9 for 1e-3 in the config: fc1 and fc2 receive updates about "
    "1e-9 of their weights every step and never move, only the head learns.",
)
def h532_zellige_trunk_lr_typo(ctx):
    gen = seeded(5321)
    model = _Net(6, 48, 1, act=nn.GELU)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.RMSprop(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-3}]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    ratios = []

    def after(step, loss):
        ratios.append(float((model.fc1.weight.detach() - prev[0]).norm() / prev[0].norm()))
        prev[0] = model.fc1.weight.detach().clone()

    prev = [w1.clone()]
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 53210), 200, F.mse_loss, after=after)

    def rel(a, b):
        return float((a.detach() - b).norm() / b.norm())

    ctx.check("fc1 per-step update under 1e-6 of its weight", max(ratios) < 1e-6)
    ctx.check(
        "fc1 and fc2 moved under 1e-5 over the run",
        rel(model.fc1.weight, w1) < 1e-5 and rel(model.fc2.weight, w2) < 1e-5,
    )
    ctx.check("head moved over 5%", rel(model.head.weight, wh) > 0.05)
    ctx.check("finite", _finite(losses))


# -- 2. data outlier: a dilated causal TCN fed one recording in raw int16 PCM --------------------

KATAJJAQ_ONSET = 120


class _CausalConv(nn.Module):
    def __init__(self, c_in, c_out, kernel, dilation):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)

    def forward(self, x):
        return self.conv(F.pad(x, (self.pad, 0)))


class _TCNBlock(nn.Module):
    def __init__(self, channels, dilation):
        super().__init__()
        self.conv1 = _CausalConv(channels, channels, 3, dilation)
        self.conv2 = _CausalConv(channels, channels, 3, dilation)

    def forward(self, x):
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class _TCN(nn.Module):
    def __init__(self, channels=16, dilations=(1, 2, 4, 8)):
        super().__init__()
        self.inp = nn.Conv1d(1, channels, 1)
        self.blocks = nn.ModuleList(_TCNBlock(channels, d) for d in dilations)
        self.head = nn.Conv1d(channels, 1, 1)

    def forward(self, x):
        h = self.inp(x[:, None, :])
        for block in self.blocks:
            h = block(h)
        return self.head(h)[:, 0, :]


def _breaths(gen, batch, length=48):
    """Throat-song amplitude traces: two pulsing partials with random rates and phases, target
    the next sample."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        f1 = 0.15 + 0.1 * torch.rand(batch, 1, generator=gen)
        f2 = 0.4 + 0.2 * torch.rand(batch, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 2, generator=gen)
        s = 0.6 * torch.sin(f1 * t + ph[:, :1]) + 0.3 * torch.sin(f2 * t + ph[:, 1:])
        s = s + 0.03 * torch.randn(batch, length + 1, generator=gen)
        yield s[:, :-1], s[:, 1:]


@scenario(
    family="katajjaq_throat_song_breath_tcn",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=KATAJJAQ_ONSET,
    note="Katajjaq (Inuit throat-singing game) breath-pulse forecaster: a temporal convolutional "
    "network with dilated causal convolutions (dilations 1, 2, 4, 8) predicting the next "
    "amplitude sample, MSE, Adam. At step 120 one recording of the batch comes from a shard "
    "exported as raw int16 PCM (amplitudes times 32767) instead of floats in [-1, 1]: the loss and "
    "gradient burst on that batch and the run recovers.",
)
def h532_katajjaq_tcn_int16_recording(ctx):
    gen = seeded(5322)
    model = _TCN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == KATAJJAQ_ONSET:
            x, y = x.clone(), y.clone()
            x[3] *= 32767.0
            y[3] *= 32767.0
        return x, y

    losses, norms = _loop(ctx, model, opt, _breaths(gen, 32), 220, F.mse_loss, alter=alter)
    pre = losses[KATAJJAQ_ONSET - 20 : KATAJJAQ_ONSET]
    ctx.check(
        "loss at onset over 1000x the median before", losses[KATAJJAQ_ONSET] > 1e3 * _median(pre)
    )
    ctx.check(
        "gradient at onset over 100x the median before",
        norms[KATAJJAQ_ONSET] > 100 * _median(norms[KATAJJAQ_ONSET - 20 : KATAJJAQ_ONSET]),
    )
    ctx.check(
        "recovers: last 20 under 5x the 20 before onset", _mean(losses[-20:]) < 5 * _mean(pre)
    )
    ctx.check("trained before onset", _mean(pre) < 0.5 * _mean(losses[:10]))
    ctx.check("finite", _finite(losses))


# -- 3. exploding gradients: recurrent weights initialised at gain 2.0 ---------------------------


class _RollRNN(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=2.0):
        super().__init__()
        self.rnn = nn.RNN(d_in, hidden, batch_first=True, nonlinearity="tanh")
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _strokes(gen, batch, length=40, d_in=4):
    while True:
        x = 0.3 * torch.randn(batch, length, d_in, generator=gen)
        y = torch.tanh(x[:, :, 0].mean(1) * 3 + x[:, -5:, 1].sum(1))
        yield x, y


@scenario(
    family="qajaq_roll_recovery_time_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="Greenland qajaq roll-recovery time regressor (tanh Elman RNN over 40 samples of paddle "
    "angle, hip torque, hull heel and sweep speed, MSE, SGD momentum 0.9). The recurrent weights "
    "are initialised orthogonal with gain 2.0 (the ReLU variance factor pasted in as the gain): "
    "the net sits in the chaotic regime and the gradient grows backwards through time, the first time step's input gradient hundreds of "
    "times the last's, and the gradient norm is huge for a unit-scale loss.",
)
def h532_qajaq_rnn_recurrent_gain(ctx):
    gen = seeded(5323)
    model = _RollRNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ctx.attach(model, opt)
    data = _strokes(gen, 32)
    losses, norms, ratios, hh = [], [], [], []
    for _step in range(150):
        x, y = next(data)
        x = x.requires_grad_(True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        gx = x.grad.norm(dim=(0, 2))
        ratios.append(float(gx[0] / gx[-1].clamp_min(1e-30)))
        hh.append(float(model.rnn.weight_hh_l0.grad.norm() / model.head.weight.grad.norm()))
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check(
        "first step's input gradient over 100x the last's at start", _median(ratios[:10]) > 100
    )
    ctx.check("recurrent weight's gradient over 30x the head's", _median(hh) > 30)
    ctx.check("median gradient norm over 30 on a unit-scale loss", _median(norms) > 30)
    ctx.check("finite", _finite(losses))


# -- 4. sharpness above limit: StepLR gamma typed 10 for 0.1 -------------------------------------

ALKALI_STEP = 60


@scenario(
    family="alkali_fly_dive_duration_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ALKALI_STEP,
    note="Mono Lake alkali-fly dive-duration regressor (SiLU MLP on water salinity, temperature, "
    "fly body hair density, dive depth, wind and algae mat cover, MSE, plain SGD lr 0.05). The "
    "StepLR decay is typed gamma=10 for gamma=0.1: at step 60 the lr jumps tenfold, the next "
    "jump takes lr x sharpness past 2, the loss oscillates and blows up.",
)
def h532_alkali_fly_steplr_gamma_typo(ctx):
    gen = seeded(5324)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ALKALI_STEP, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 6, 53240))
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 10 == 0:
            sharp[step] = _top_hessian_eig(model, F.mse_loss, *probe)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53240), 240, F.mse_loss, before=before, sched=sched
    )
    finite = [i for i, v in enumerate(losses) if math.isfinite(v) and v < 1e3]
    last = max(k for k in sharp if k <= finite[-1] and math.isfinite(sharp[k]))
    ctx.check(
        "lr x sharpness under 2 before onset", lrs[ALKALI_STEP - 10] * sharp[ALKALI_STEP - 10] < 2
    )
    ctx.check("lr x sharpness over 2 before the blow-up", lrs[last] * sharp[last] > 2)
    ctx.check("trained before onset", _mean(losses[50:60]) < 0.7 * _mean(losses[:10]))
    ctx.check(
        "loss blew up (non-finite or over 100x its best)",
        not _finite(losses) or max(losses) > 100 * min(losses),
    )


# -- 5. nonfinite: log of spring discharge with no clamp -----------------------------------------

TUFA_ONSET = 80


class _LogColumn(nn.Module):
    """Replaces the first column (spring discharge, L/s) by its log."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], dim=1)


class _TufaNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.logq = _LogColumn()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.relu(self.fc1(self.logq(x)))
        return self.head(F.relu(self.fc2(h))).squeeze(-1)


def _springs(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, generator=g)
    while True:
        logq = 0.8 * torch.randn(batch, 1, generator=gen)
        rest = torch.randn(batch, 5, generator=gen)
        y = torch.tanh(0.8 * logq[:, 0] + rest @ w / 3) + 0.05 * torch.randn(batch, generator=gen)
        yield torch.cat([torch.exp(logq), rest], 1), y


@scenario(
    family="tufa_tower_growth_rate_log_discharge_regressor",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logq",),
    diverges=TUFA_ONSET,
    heldout=True,
    onset=TUFA_ONSET,
    note="Tufa-tower growth-rate regressor (ReLU MLP on the log of spring discharge, calcium, "
    "carbonate, lake level, water temperature and pH, MSE, NAdam). The log feature is taken "
    "with no clamp or epsilon: at step 80 a survey of a dried-up spring reports discharge 0.0, "
    "log(0) = -inf enters fc1, -inf and +inf cancel to NaN and the loss is NaN.",
)
def h532_tufa_log_zero_discharge(ctx):
    gen = seeded(5325)
    model = _TufaNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    inf_out = {}

    def hook(module, inp, out):
        inf_out[len(inf_out)] = (bool(torch.isfinite(inp[0]).all()), bool(torch.isinf(out).any()))

    model.logq.register_forward_hook(hook)

    def alter(step, x, y):
        if step == TUFA_ONSET:
            x = x.clone()
            x[7, 0] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, _springs(gen, 64, 53250), 160, F.mse_loss, alter=alter)
    ctx.check("finite before onset", _finite(losses[:TUFA_ONSET]))
    ctx.check(
        "loss non-finite at onset",
        len(losses) > TUFA_ONSET and not math.isfinite(losses[TUFA_ONSET]),
    )
    ctx.check(
        "logq's input finite, its output -inf at onset",
        inf_out.get(TUFA_ONSET, (False, False)) == (True, True),
    )
    ctx.check("trained before onset", _mean(losses[70:80]) < 0.7 * _mean(losses[:10]))


# -- 6. amp overflow: track distance in millimetres under fp16 autocast --------------------------

ARCHERY_ONSET = 90


@scenario(
    family="horseback_archery_target_score_fp16_relu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ARCHERY_ONSET,
    heldout=True,
    onset=ARCHERY_ONSET,
    note="Horseback-archery target-score regressor (ReLU MLP on track distance, gallop speed, "
    "draw weight, arrow mass, crosswind and rider height, MSE, fp16 autocast + GradScaler, AdamW). "
    "From step 90 a new competition's sheets give the track distance in millimetres (about "
    "90000) instead of metres: under autocast the first layer's fp16 output overflows 65504 to "
    "inf and the loss is non-finite (the same batch in float32 is finite).",
)
def h532_horseback_archery_mm_fp16(ctx):
    gen = seeded(5326)
    model = _Net(6, 64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 6, 53260)
    losses, fp32_ok, fc1_bad = [], [], []
    for step in range(160):
        x, y = next(data)
        x = x.clone()
        x[:, 0] = 0.09 + 0.01 * x[:, 0]  # track distance in km, about 0.09 (90 m): column 0
        x[:, 0] = (x[:, 0] - 0.09) / 0.01  # standardised as the pipeline does
        if step >= ARCHERY_ONSET:
            x[:, 0] = 9e4 + 1e3 * x[:, 0]  # the new sheets: millimetres, not standardised
        with torch.autocast("cpu", dtype=torch.float16):
            h1 = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h1)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == ARCHERY_ONSET:
            fc1_bad.append(not bool(torch.isfinite(h1).all()))
            with torch.no_grad():
                fp32_ok.append(bool(torch.isfinite(F.mse_loss(model(x), y))))
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
    ctx.check("finite before onset", _finite(losses[:ARCHERY_ONSET]))
    ctx.check("trained before onset", _mean(losses[80:90]) < 0.7 * _mean(losses[:10]))
    ctx.check("fc1's fp16 output non-finite at onset", fc1_bad == [True])
    ctx.check("same batch finite in float32", fp32_ok == [True])
    ctx.check(
        "loss non-finite at onset",
        len(losses) == ARCHERY_ONSET + 1 and not math.isfinite(losses[-1]),
    )


# -- 7. softmax collapse: temperature typed 0.01 for 1.0 -----------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="plique_a_jour_enamel_firing_defect_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Plique-a-jour enamel firing-defect classifier (ReLU MLP on kiln temperature, firing "
    "time, cell width, enamel grain size, frit mix and wire height, five defect classes, "
    "cross-entropy, SGD momentum). The softmax temperature is typed 0.01 for 1.0: the logits "
    "are scaled 100x, most rows' softmax rounds the target probability to exactly 1.0 in "
    "float32 and the wrong rows get huge, saturated losses.",
)
def h532_plique_temperature_typo(ctx):
    gen = seeded(5327)
    model = _TempNet(8, 64, 5, temperature=0.01)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 8, 5, 53270), 160, F.cross_entropy, classifier=True
    )
    px, py = next(_grades(torch.Generator().manual_seed(9), 512, 8, 5, 53270))
    with torch.no_grad():
        logits = model(px)
    ctx.check(
        "over half the rows' target probability exactly 1.0", collapsed_fraction(logits, py) > 0.5
    )
    ctx.check(
        "at temperature 1.0 under 5% would be",
        collapsed_fraction(logits * model.temperature, py) < 0.05,
    )
    ctx.check("finite", _finite(losses))


# -- 8. gradient spike: a leftover static loss scale on the resumed step -------------------------

TAMBOUR_ONSET = 120


@scenario(
    family="tambour_beading_hook_tension_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=TAMBOUR_ONSET,
    note="Tambour-beading (Luneville hook embroidery) thread-tension regressor (GELU MLP on hook "
    "size, bead weight, stitch length, frame tautness, thread gauge and hand speed, Huber loss, "
    "SGD Nesterov, gradient clipping at 1.0). The run is resumed at step 120 from a checkpoint "
    "of an earlier fp16 run: the resume path multiplies that step's loss by the saved static "
    "loss scale 1024 before backward and never unscales, one gradient about 1000x the usual; "
    "the logged loss is ordinary and clipping bounds the step.",
)
def h532_tambour_resume_loss_scale(ctx):
    gen = seeded(5328)
    model = _Net(6, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * 1024.0 if step == TAMBOUR_ONSET else loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 53280),
        220,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    pre = norms[TAMBOUR_ONSET - 20 : TAMBOUR_ONSET]
    ctx.check(
        "pre-clip gradient at onset over 100x the median before",
        norms[TAMBOUR_ONSET] > 100 * _median(pre),
    )
    ctx.check(
        "logged loss at onset ordinary (under 3x the median before)",
        losses[TAMBOUR_ONSET] < 3 * _median(losses[TAMBOUR_ONSET - 20 : TAMBOUR_ONSET]),
    )
    ctx.check("trained", _fell(losses))
    ctx.check("finite", _finite(losses))


# -- 9. Adam second moment poisoned: a debug loss multiplier left in for one step ----------------

CLOISONNE_ONSET = 100


@scenario(
    family="cloisonne_wire_solder_flow_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=("fc1", "fc2", "head"),
    diverges=None,
    heldout=True,
    onset=CLOISONNE_ONSET,
    note="Cloisonne wire solder-flow regressor (SiLU MLP on wire gauge, flux amount, kiln "
    "temperature, dwell time, silver purity and base thickness, MSE, Adam beta2 0.999). A debug "
    "line `if step == 100: loss = loss * 1e5` (to check gradients reach fc1) is left in: one "
    "gradient 1e5x the usual fills the second moment, sqrt(v) stays tens of times larger for "
    "hundreds of steps and the updates afterwards shrink to a fraction of their size.",
)
def h532_cloisonne_debug_loss_multiplier(ctx):
    gen = seeded(5329)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    sqrt_v, upd = [], []
    prev = [model.fc1.weight.detach().clone()]

    def backprop(step, loss):
        return loss * 1e5 if step == CLOISONNE_ONSET else loss

    def after(step, loss):
        w = model.fc1.weight.detach()
        upd.append(float((w - prev[0]).norm()))
        prev[0] = w.clone()
        sqrt_v.append(float(opt.state[model.fc1.weight]["exp_avg_sq"].sqrt().median()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 53290),
        200,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    o = CLOISONNE_ONSET
    ctx.check(
        "gradient at onset over 1e4x the median before", norms[o] > 1e4 * _median(norms[o - 20 : o])
    )
    ctx.check(
        "fc1's median sqrt(v) over 30x after onset",
        _median(sqrt_v[o + 30 : o + 70]) > 30 * sqrt_v[o - 1],
    )
    ctx.check(
        "fc1's updates after under 0.2x those before",
        _mean(upd[o + 30 : o + 70]) < 0.2 * _mean(upd[o - 30 : o]),
    )
    ctx.check("finite", _finite(losses))


# -- 10. loss divergence: a hand-written weight decay with its sign flipped ----------------------

ICE_DECAY = 0.004


@scenario(
    family="ice_sailing_runner_chatter_relu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Ice-sailing (DN iceboat) runner-chatter amplitude regressor (ReLU MLP on ice thickness, "
    "ice temperature, runner edge angle, plank stiffness, boat speed and wind, MSE, Adagrad lr "
    "0.05). Decoupled weight decay is hand-written after the step as `w.mul_(1 + wd)` instead "
    "of `w.mul_(1 - wd)`: every weight matrix grows 0.4% a step, Adagrad's shrinking steps "
    "cannot keep up and the loss climbs slowly after its early fall, without blowing up.",
)
def h532_ice_sailing_decay_sign_bug(ctx):
    gen = seeded(5330)
    model = _Net(6, 64, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    mats = [m.weight for m in (model.fc1, model.fc2, model.head)]
    norm0 = float(torch.stack([w.detach().norm() for w in mats]).norm())

    def after(step, loss):
        with torch.no_grad():
            for w in mats:
                w.mul_(1 + ICE_DECAY)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 53300), 300, F.mse_loss, after=after)
    norm1 = float(torch.stack([w.detach().norm() for w in mats]).norm())
    best = min(range(len(losses)), key=lambda i: _mean(losses[max(0, i - 5) : i + 5]))
    ctx.check("weight norm grew over 2x", norm1 > 2 * norm0)
    ctx.check(
        "loss fell first (best window under 0.7x the start)",
        _mean(losses[max(0, best - 5) : best + 5]) < 0.7 * _mean(losses[:10]),
    )
    ctx.check(
        "last 20 over 3x the best window",
        _mean(losses[-20:]) > 3 * _mean(losses[max(0, best - 5) : best + 5]),
    )
    ctx.check(
        "finite, no blow-up (under 100x the start)",
        _finite(losses) and max(losses) < 100 * _mean(losses[:10]),
    )


# -- controls -------------------------------------------------------------------------------------

ULU_CYCLE = 50


@scenario(
    family="ulu_maika_stone_lane_outcome_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ulu maika (Hawaiian stone bowling) lane-outcome classifier (ReLU MLP on stone mass, "
    "diameter, release speed, lane slope, surface roughness and spin, six outcomes, "
    "cross-entropy with label smoothing 0.1, SGD momentum lr 0.1, noisy readings). SGDR: "
    "CosineAnnealingWarmRestarts with a 50-step cycle; the lr jumps back to its peak at steps "
    "50, 100 and 150 and the loss jumps with it before falling again. Healthy.",
)
def h532_ulu_maika_sgdr_control(ctx):
    gen = seeded(5331)
    model = _Net(10, 64, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=ULU_CYCLE, eta_min=1e-4)
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 6, 53310, spread=1.6),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        before=before,
        sched=sched,
    )
    ctx.check(
        "lr back at its peak at each restart, near eta_min just before",
        all(abs(lrs[k] - 0.1) < 1e-9 and lrs[k - 1] < 0.005 for k in (50, 100, 150)),
    )
    ctx.check("trained", _fell(losses))
    ctx.check("finite", _finite(losses))


@scenario(
    family="laze_plume_acid_reach_gelu_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Laze plume (lava meeting the sea) acid-reach regressor (GELU MLP on lava flux, sea "
    "temperature, wind speed and direction, humidity and surf height, Huber loss, RAdam, "
    "OneCycleLR, gradient clipping at 1.0, gradient accumulation over 2 micro-batches, noisy "
    "targets). Healthy.",
)
def h532_laze_plume_onecycle_control(ctx):
    gen = seeded(5332)
    model = _Net(6, 48, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    ctx.attach(model, opt)
    data = _readings(gen, 32, 6, 53320, noise=0.2)
    losses = []
    for _step in range(steps):
        total = 0.0
        for _micro in range(2):
            x, y = next(data)
            loss = F.huber_loss(model(x), y)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("trained", _fell(losses))
    ctx.check("finite", _finite(losses))


class _VogNet(nn.Module):
    def __init__(self, d_in=8, hidden=48, labels=4):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head = nn.Linear(hidden, labels)

    def forward(self, x):
        return self.head(self.trunk(x))


def _vog(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 4, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        p = torch.sigmoid(1.5 * x @ w / math.sqrt(8))
        yield x, (torch.rand(batch, 4, generator=gen) < p).float()


@scenario(
    family="vog_haze_sulfate_alert_fp16_multilabel_net",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Vog (volcanic smog) sulfate-alert multilabel net (SiLU MLP on SO2 emission, trade-wind "
    "speed, humidity, sunlight, inversion height and three station readings, four alert labels, "
    "BCE with logits, fp16 autocast + GradScaler, Adamax with two param groups (head at half the "
    "trunk's lr), ReduceLROnPlateau on the loss). Healthy.",
)
def h532_vog_haze_fp16_control(ctx):
    gen = seeded(5333)
    model = _VogNet()
    opt = torch.optim.Adamax(
        [
            {"params": model.trunk.parameters(), "lr": 4e-3},
            {"params": model.head.parameters(), "lr": 2e-3},
        ]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _vog(gen, 64, 53330)
    losses = []
    for _step in range(180):
        x, y = next(data)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.binary_cross_entropy_with_logits(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        plateau.step(float(loss.detach()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained", _fell(losses, ratio=0.85))
    ctx.check("finite", _finite(losses))
    ctx.check("loss scale finite and positive", all(0 < s < float("inf") for s in ctx.scales))
