"""Held-out set 499 (``h499_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a ballista bolt-range regressor trained under fp16 autocast with its ranges in raw
millimetres (fp16 overflow, Adam + GradScaler), a hornbeam pleaching regrowth regressor whose
evaluation hook swaps in the EMA weights and never swaps back (a one-off loss spike, NAdam), a
naled icing-thickness tanh regressor whose warm-up peak lr is typed 10x (past 2/sharpness, full
batch SGD), a tile-hanging batten-pitch regressor whose loss is left multiplied by 2**16 for one
resumed step (Adam's second moment poisoned), a cane-weaving strand-tension net standardising
each window with no epsilon (0/0 on a flat window, Adagrad), an eclipse shadow-band hand-written
convolutional LSTM fed one batch in raw ADC counts (AdamW), a hunting-horn mouthpiece-pitch
regressor whose loss weight is computed from a wrong valid-mask for one step (SGD Nesterov), an
ox-yoke draught-pull regressor whose layer-wise lr decay uses depth 10 for 1 (fc1 frozen,
RAdam), a bobbin-winder fault classifier with a CLIP-style logit scale initialised at 1/0.07
instead of log(1/0.07) (softmax collapse, Adamax) and a river-pothole grinding-depth 10-layer
ReLU MLP whose He gain is applied twice (exploding through depth, SGD momentum).

Controls: a dewpond seepage regressor fine-tuned from a backbone trained earlier in the script on
a related task (Adam, warm-up); a sailboat telltale flow-state classifier under fp16 autocast +
GradScaler (AdamW, OneCycleLR, label smoothing, clipping); a rain-barrel roof-runoff Huber
regressor (RMSprop, two param groups, ReduceLROnPlateau, accumulation 2, clipping).
"""

from __future__ import annotations

import copy
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
    weight=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's loop. ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``weight(step)`` multiplies the backpropagated loss (1 by default); ``after(step, loss)`` runs
    after the optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it.
    ``attach=False``: a reference run, nothing recorded."""
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
            w = weight(step) if weight is not None else 1.0
            (w * loss / accumulate).backward()
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


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


# -- 1. amp overflow: bolt ranges in raw millimetres under fp16 autocast ---------------------------

BALLISTA_DIVERGES = 98


@scenario(
    family="ballista_bolt_range_raw_mm_fp16_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=BALLISTA_DIVERGES,
    heldout=True,
    note="Ballista bolt-range regressor (ReLU MLP on torsion-skein twist, arm length, bolt mass "
    "and elevation features, MSE, Adam, fp16 autocast with a GradScaler). The ranges are left in "
    "the field sheet's millimetres (70 000 to 130 000, above fp16's 65504) instead of metres: as "
    "the head's fp16 output grows to fit them it overflows to inf, the loss is inf and the "
    "scaler skips step after step.",
)
def h499_ballista_fp16_raw_mm(ctx) -> None:
    gen = seeded(4991)
    model = _Net(8, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    g = torch.Generator().manual_seed(49910)
    w = torch.randn(8, generator=g)
    losses, scales, peaks = [], [], []
    for _step in range(220):
        x = torch.randn(64, 8, generator=gen)
        y = 1.0e5 * (1.0 + 0.3 * torch.tanh(x @ w / math.sqrt(8)))  # millimetres
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        peaks.append(float(out.detach().float().abs().max()))
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        scales.append(float(scaler.get_scale()))
        ctx.scales.append(scales[-1])
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if len(losses) > 20 and not any(math.isfinite(v) for v in losses[-20:]):
            break
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss became inf", first_bad is not None)
    ctx.check(
        "finite and falling before the overflow",
        first_bad is not None
        and first_bad > 10
        and _mean(losses[first_bad - 5 : first_bad]) < 0.7 * _mean(losses[:5]),
    )
    ctx.check("the head's fp16 output hit inf", any(math.isinf(v) for v in peaks))
    ctx.check("the scaler's scale fell over 1000x", min(scales) < scales[0] / 1000)
    ctx.check(f"the first inf is at step {BALLISTA_DIVERGES}", first_bad == BALLISTA_DIVERGES)


# -- 2. loss spike: the evaluation hook swaps in the EMA weights and never swaps back --------------

HORNBEAM_ONSET = 120


@scenario(
    family="hornbeam_pleach_regrowth_ema_swap_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=HORNBEAM_ONSET,
    note="Hornbeam pleaching regrowth regressor (SiLU MLP on cut height, stem girth, aspect and "
    "rainfall features, MSE, NAdam) keeping an EMA of its weights (decay 0.999). The evaluation "
    "hook at step 120 loads the EMA weights into the model to evaluate and forgets to load the "
    "training weights back: training goes on from the EMA, still close to the initial weights, "
    "so the loss jumps once and the run recovers. No gradient burst, no bad data.",
)
def h499_hornbeam_ema_swap(ctx) -> None:
    gen = seeded(4992)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ema = copy.deepcopy(model.state_dict())

    def before(step):
        if step == HORNBEAM_ONSET:
            model.load_state_dict(ema)  # evaluate with the EMA ... and never swap back

    def after(step, loss):
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(0.999).add_(v, alpha=0.001)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4992), 260, F.mse_loss, before=before, after=after
    )
    k = HORNBEAM_ONSET
    pre = _mean(losses[k - 20 : k])
    others = norms[k - 40 : k] + norms[k + 30 :]
    ctx.check("trained before the swap (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("the loss at the swap over 3x the 20 steps before", losses[k] > 3 * pre)
    ctx.check("recovered (last 20 under 1.5x the pre-swap level)", _mean(losses[-20:]) < 1.5 * pre)
    ctx.check("no gradient burst (under 10x the median elsewhere)", norms[k] < 10 * _median(others))
    ctx.check("finite", _finite(losses))


# -- 3. sharpness above the limit: warm-up peak lr typed 10x ----------------------------------------


def _sharpness(model, loss_fn, iters=12):
    """Top Hessian eigenvalue of the full-batch loss by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters()]
    loss = loss_fn()
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


@scenario(
    family="naled_icing_thickness_warmup_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Naled (river icing) thickness regressor (tanh MLP on air temperature, groundwater "
    "discharge, snow cover and slope features, 256 fixed surveys full-batch, MSE, plain SGD). "
    "The linear warm-up's peak lr is typed 10x the tuned one: as the warm-up passes 2/sharpness "
    "the full-batch loss starts to oscillate and then blows up.",
)
def h499_naled_warmup_peak(ctx) -> None:
    gen = seeded(4993)
    model = _Net(8, 32, 1, act=nn.Tanh)
    ref = copy.deepcopy(model)
    x, y = next(_readings(gen, 256, 8, 4993, noise=0.0))
    lam0 = _sharpness(model, lambda: F.mse_loss(model(x), y))
    tuned = 0.6 / lam0
    peak = 10 * tuned  # the typo
    warm = 120

    def run(net, top, attach):
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        if attach:
            ctx.attach(net, opt)
        losses, lrs, lams = [], [], []
        for step in range(240):
            lr = top * min(1.0, (step + 1) / warm)
            for g in opt.param_groups:
                g["lr"] = lr
            if attach and step % 10 == 0:
                lams.append((step, lr, _sharpness(net, lambda: F.mse_loss(net(x), y))))
            loss = F.mse_loss(net(x), y)
            loss.backward()
            if attach:
                ctx.grad_norms.append(grad_norm(net))
            opt.step()
            losses.append(float(loss.detach()))
            lrs.append(lr)
            if attach:
                ctx.step(loss)
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(losses[-1]) or losses[-1] > 1e6:
                break
        return losses, lams

    ref_losses, _ = run(ref, tuned, False)
    losses, lams = run(model, peak, True)
    best = min(losses)
    crossed = [s for s, lr, lam in lams if lr * lam > 2]
    ctx.check("at the tuned peak the run trains", _fell(ref_losses, ratio=0.5))
    ctx.check("lr * sharpness went over 2 during the warm-up", bool(crossed))
    ctx.check(
        "the loss blew up (over 100x its best) after lr * sharpness passed 2",
        bool(crossed) and max(losses[crossed[0] :]) > 100 * best,
    )
    ctx.check("it had trained first (best under 0.5x the start)", best < 0.5 * losses[0])


# -- 4. Adam's second moment poisoned: one resumed step left multiplied by 2**16 -------------------

TILE_ONSET = 80


@scenario(
    family="tile_hanging_batten_pitch_resume_loss_scale_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=TILE_ONSET,
    note="Tile-hanging batten-pitch regressor (tanh MLP on rafter length, tile gauge, headlap "
    "and roof pitch features, MSE, Adam betas (0.9, 0.999), no clipping). The run is resumed "
    "at step 80 from an fp16 checkpoint and the resume path scales the loss by the saved loss "
    "scale 2**16 without unscaling for that one step: one gradient 65536x too large fills Adam's "
    "second moment, and for the rest of the run the updates are tiny and the loss stalls.",
)
def h499_tile_hanging_resume_scale(ctx) -> None:
    seeded(4994)
    model = _Net(10, 48, 1, act=nn.Tanh)
    ref = copy.deepcopy(model)
    v_at: list[float] = []

    def run(net, bug, attach):
        opt = torch.optim.Adam(net.parameters(), lr=2e-3)
        moves = []
        prev = [p.detach().clone() for p in net.parameters()]

        def after(step, loss):
            if attach and step in (TILE_ONSET - 1, 239):
                sq = torch.cat([opt.state[p]["exp_avg_sq"].flatten() for p in net.parameters()])
                v_at.append(float(sq.sqrt().median()))
            now = [p.detach().clone() for p in net.parameters()]
            moves.append(
                float(sum((a - b).norm() ** 2 for a, b in zip(now, prev, strict=True)) ** 0.5)
            )
            prev[:] = now

        data = _readings(torch.Generator().manual_seed(49940), 64, 10, 4994)
        losses, norms = _train(
            ctx,
            net,
            opt,
            data,
            240,
            F.mse_loss,
            weight=(lambda s: 2.0**16 if bug and s == TILE_ONSET else 1.0),
            after=after,
            attach=attach,
        )
        return losses, norms, moves

    ref_losses, _, _ = run(ref, False, False)
    losses, norms, moves = run(model, True, True)
    k = TILE_ONSET
    ctx.check(
        "the gradient at the resumed step over 1e4x the median before",
        norms[k] > 1e4 * _median(norms[:k]),
    )
    ctx.check(
        "updates 30-100 steps later under 0.4x those before",
        _mean(moves[k + 30 : k + 100]) < 0.4 * _mean(moves[k - 30 : k]),
    )
    ctx.check(
        "Adam's median sqrt(v) over 100x its pre-resume value at the end",
        bool(v_at) and v_at[-1] > 100 * v_at[0],
    )
    ctx.check(
        "the loss stalled (last 30 over 1.5x the unpoisoned run's)",
        _mean(losses[-30:]) > 1.5 * _mean(ref_losses[-30:]),
    )
    ctx.check("finite, no blow-up", _finite(losses) and max(losses) < 10 * losses[0])


# -- 5. nonfinite: per-window standardisation with no epsilon --------------------------------------

CANE_STEP = 95


class _WindowNorm(nn.Module):
    def forward(self, x):
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)  # no eps


class _TensionNet(nn.Module):
    def __init__(self, window=32, hidden=40):
        super().__init__()
        self.norm = _WindowNorm()
        self.fc1 = nn.Linear(window + 1, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = torch.cat([self.norm(x), x.std(-1, keepdim=True)], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(z))))).squeeze(-1)


@scenario(
    family="cane_weaving_strand_tension_window_std_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("norm",),
    diverges=CANE_STEP,
    heldout=True,
    onset=CANE_STEP,
    note="Cane-weaving strand-tension net (ReLU MLP on a 32-sample load-cell window standardised "
    "per window as (x - mean) / std with no epsilon, MSE, Adagrad). At step 95 a strand goes "
    "slack, the load cell reads a constant and that window's std is 0: 0/0 gives NaN in the "
    "normaliser, the prediction and the loss are NaN at step 95.",
)
def h499_cane_weaving_flat_window(ctx) -> None:
    gen = seeded(4995)
    model = _TensionNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    t = torch.arange(32, dtype=torch.float32)

    def data():
        while True:
            amp = 0.5 + torch.rand(32, 1, generator=gen)
            freq = 0.2 + 0.3 * torch.rand(32, 1, generator=gen)
            x = 2.0 + amp * torch.sin(freq * t) + 0.05 * torch.randn(32, 32, generator=gen)
            yield x, amp.squeeze(-1) * 2 + freq.squeeze(-1)

    flat = {}

    def alter(step, x, y):
        if step == CANE_STEP:
            x = x.clone()
            x[5] = 2.0  # the slack strand: a constant reading
            flat["std"] = float(x[5].std())
            with torch.no_grad():
                flat["nan"] = bool(torch.isnan(model.norm(x)).any())
        return x, y

    losses, _ = _train(ctx, model, opt, data(), 200, F.mse_loss, alter=alter)
    first_bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss is NaN at step 95", first_bad == CANE_STEP and math.isnan(losses[-1]))
    ctx.check("finite and falling before", _fell(losses[:CANE_STEP], ratio=0.7))
    ctx.check("the window at 95 had std exactly 0", flat.get("std") == 0.0)
    ctx.check("the normaliser's output had NaN", flat.get("nan", False))


# -- 6. data outlier: a hand-written ConvLSTM fed one batch in raw ADC counts ----------------------

SHADOW_ONSET = 120


class _ConvLSTMCell(nn.Module):
    """LSTM over a 1-D grid: the four gates are one Conv1d over [input, hidden] channels."""

    def __init__(self, c_in, c_hid, k=5):
        super().__init__()
        self.c_hid = c_hid
        self.gates = nn.Conv1d(c_in + c_hid, 4 * c_hid, k, padding=k // 2)

    def forward(self, x, state):
        h, c = state
        i, f, g, o = self.gates(torch.cat([x, h], 1)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return h, c


class _ShadowBandNet(nn.Module):
    """Predicts the next frame of a moving pattern on a 1-D grid from the frames so far."""

    def __init__(self, c_hid=12):
        super().__init__()
        self.cell = _ConvLSTMCell(1, c_hid)
        self.head = nn.Conv1d(c_hid, 1, 3, padding=1)

    def forward(self, frames):  # (batch, time, grid)
        b, t, n = frames.shape
        h = frames.new_zeros(b, self.cell.c_hid, n)
        c = torch.zeros_like(h)
        outs = []
        for k in range(t):
            h, c = self.cell(frames[:, k, None], (h, c))
            outs.append(self.head(h)[:, 0])
        return torch.stack(outs, 1)


def _bands(gen, batch=16, frames=9, grid=24):
    """Bright bands drifting across a grid at a per-sequence speed, frames in [0, 1]."""
    pos = torch.arange(grid, dtype=torch.float32)
    tt = torch.arange(frames, dtype=torch.float32)
    while True:
        start = grid * torch.rand(batch, 1, 1, generator=gen)
        speed = torch.randint(-2, 3, (batch, 1, 1), generator=gen).float()
        width = 1.5 + torch.rand(batch, 1, 1, generator=gen)
        centre = (start + speed * tt[None, :, None]) % grid
        d = torch.minimum((pos - centre).abs(), grid - (pos - centre).abs())
        seq = torch.exp(-0.5 * (d / width) ** 2)
        seq = seq + 0.03 * torch.randn(seq.shape, generator=gen)
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="eclipse_shadow_band_drift_conv_lstm",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SHADOW_ONSET,
    note="Eclipse shadow-band drift model (hand-written convolutional LSTM: the four gates are "
    "one Conv1d over the input and hidden channels of a 24-cell photometer line; next-frame "
    "prediction of drifting bands, MSE, AdamW, clipping at 1). At step 120 one shard arrives "
    "in raw 12-bit ADC counts (x 4095) instead of normalised to [0, 1]: the loss and gradient "
    "spike for that batch, clipping bounds the step and the run recovers.",
)
def h499_shadow_band_raw_counts(ctx) -> None:
    gen = seeded(4996)
    model = _ShadowBandNet()
    opt = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.01)

    def alter(step, x, y):
        if step == SHADOW_ONSET:
            return x * 4095.0, y * 4095.0
        return x, y

    losses, norms = _train(ctx, model, opt, _bands(gen), 220, F.mse_loss, alter=alter, clip=1.0)
    k = SHADOW_ONSET
    others = norms[:k] + norms[k + 1 :]
    pre = _mean(losses[k - 20 : k])
    ctx.check("trained before the shard (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("the loss at 120 over 1000x the median", losses[k] > 1000 * _median(losses))
    ctx.check("the gradient at 120 over 20x the median", norms[k] > 20 * _median(others))
    ctx.check("recovered (last 20 under 1.5x the pre-shard level)", _mean(losses[-20:]) < 1.5 * pre)
    ctx.check("finite", _finite(losses))


# -- 7. gradient spike: a loss weight computed from the wrong valid mask for one step ---------------

HORN_ONSET = 110


@scenario(
    family="hunting_horn_mouthpiece_pitch_mask_weight_nesterov_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=HORN_ONSET,
    note="Hunting-horn mouthpiece pitch regressor (GELU MLP on cup depth, throat bore, rim width "
    "and backbore taper features, masked MSE reweighted by batch / n_valid, SGD Nesterov 0.9, "
    "clipping at 1). At step 110 the valid mask is built from the wrong column and counts one "
    "valid row, so that one step's loss is weighted 64x: one gradient burst that the data do not "
    "explain (the logged loss is ordinary), clipped, and the run goes on.",
)
def h499_hunting_horn_mask_weight(ctx) -> None:
    gen = seeded(4997)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def weight(step):
        n_valid = 1 if step == HORN_ONSET else 64  # the wrong mask column at 110
        return 64 / n_valid

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4997), 220, F.mse_loss, weight=weight, clip=1.0
    )
    k = HORN_ONSET
    ctx.check(
        "the gradient at 110 over 30x the median elsewhere",
        norms[k] > 30 * _median(norms[:k] + norms[k + 1 :]),
    )
    ctx.check(
        "the logged loss at 110 ordinary (under 2x the 20 before)",
        losses[k] < 2 * _mean(losses[k - 20 : k]),
    )
    ctx.check("trained, finite", _fell(losses, ratio=0.6))


# -- 8. update ratio: layer-wise lr decay with depth 10 for 1 --------------------------------------


@scenario(
    family="ox_yoke_draught_pull_llrd_depth_gelu_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Ox-yoke draught-pull regressor (GELU MLP on yoke width, bow angle, neck girth and load "
    "features, MSE, RAdam with layer-wise lr decay 0.01 ** depth per param group). fc1's depth "
    "is typed 10 for 1, so its lr is 1e-3 * 1e-20: fc1 never moves while the rest trains and "
    "the loss still falls.",
)
def h499_ox_yoke_llrd_depth(ctx) -> None:
    gen = seeded(4998)
    model = _Net(10, 48, 1, act=nn.GELU)
    depth = {"fc1": 10, "fc2": 0, "head": 0}  # fc1 meant to be 1
    opt = torch.optim.RAdam(
        [
            {"params": getattr(model, n).parameters(), "lr": 3e-3 * 0.01 ** depth[n]}
            for n in ("fc1", "fc2", "head")
        ]
    )
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4998), 220, F.mse_loss)
    ctx.check("fc1 moved under 1e-9 of its norm", _rel_change(model.fc1.weight, w1) < 1e-9)
    ctx.check("fc2 moved over 5% of its norm", _rel_change(model.fc2.weight, w2) > 0.05)
    ctx.check("the loss still fell (no blow-up)", _fell(losses))


# -- 9. softmax collapse: a CLIP-style logit scale initialised at 1/0.07, not log(1/0.07) -----------


class _CosineHead(nn.Module):
    def __init__(self, hidden, classes, log_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, hidden) * 0.1)
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos


class _WinderNet(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=5, log_scale=None):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        if log_scale is None:
            log_scale = math.log(1 / 0.07)
        self.head = _CosineHead(hidden, classes, log_scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="bobbin_winder_fault_logit_scale_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bobbin-winder fault classifier (GELU MLP on spindle speed, thread tension, traverse "
    "and vibration features, a CLIP-style cosine head with a learnt log logit scale, "
    "cross-entropy, Adamax). The log scale is initialised at 1/0.07 = 14.3 instead of "
    "log(1/0.07), so the logits are exp(14.3) = 1.6e6 times the cosines: the softmax "
    "saturates and most rows' target probability rounds to exactly 1.0.",
)
def h499_bobbin_winder_logit_scale(ctx) -> None:
    seeded(4999)
    model = _WinderNet(log_scale=1 / 0.07)
    ref = _WinderNet()
    state = {k: v for k, v in model.state_dict().items() if k != "head.log_scale"}
    ref.load_state_dict(state, strict=False)

    def run(net, attach):
        opt = torch.optim.Adamax(net.parameters(), lr=2e-3)
        data = _grades(torch.Generator().manual_seed(49990), 64, 12, 5, 4999)
        losses, _ = _train(
            ctx, net, opt, data, 200, F.cross_entropy, classifier=True, attach=attach
        )
        x, y = next(_grades(torch.Generator().manual_seed(49991), 256, 12, 5, 4999))
        with torch.no_grad():
            return losses, collapsed_fraction(net(x), y)

    _, ref_frac = run(ref, False)
    losses, frac = run(model, True)
    ctx.check("over half the rows' target probability exactly 1.0", frac > 0.5)
    ctx.check("under 5% with the scale at 1/0.07", ref_frac < 0.05)
    ctx.check("finite", _finite(losses))


# -- 10. exploding gradients: He gain applied twice in a 10-layer ReLU MLP -------------------------


class _DeepNet(nn.Module):
    def __init__(self, d_in=10, width=48, depth=10, extra_gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(a, width) for a in sizes)
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            lin.weight.data.mul_(extra_gain)
            nn.init.zeros_(lin.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for lin in self.layers:
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="river_pothole_grinding_depth_double_gain_deep_relu_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges="auto",
    heldout=True,
    note="River-pothole grinding-depth regressor (10-layer ReLU MLP on flow speed, grinder-stone "
    "size, rock hardness and flood-days features, MSE, SGD momentum 0.9, lr 2e-4). "
    "The init helper "
    "multiplies kaiming_normal_'s weights by calculate_gain('relu') again, so every layer "
    "doubles the signal's variance: the gradient grows through depth toward layers.0 and "
    "the loss blows up.",
)
def h499_river_pothole_double_gain(ctx) -> None:
    seeded(5000)
    model = _DeepNet(extra_gain=math.sqrt(2.0))
    ref = _DeepNet()

    def ratio(net):
        x, y = next(_readings(torch.Generator().manual_seed(50001), 256, 10, 5000))
        loss = F.mse_loss(net(x), y)
        loss.backward()
        r = float(net.outs[0].grad.norm() / net.outs[-1].grad.norm())
        net.zero_grad(set_to_none=True)
        return r

    r_bad, r_ref = ratio(model), ratio(ref)

    def run(net, attach):
        opt = torch.optim.SGD(net.parameters(), lr=2e-4, momentum=0.9)
        data = _readings(torch.Generator().manual_seed(50000), 64, 10, 5000)
        return _train(ctx, net, opt, data, 200, F.mse_loss, attach=attach)[0]

    ref_losses = run(ref, False)
    losses = run(model, True)
    ctx.check("dL/dz at layers.0 over 10x layers.9's", r_bad > 10)
    ctx.check("under 3x with the gain applied once", r_ref < 3)
    ctx.check(
        "the loss blew up (non-finite or over 100x its start)",
        not _finite(losses) or max(losses) > 100 * losses[0],
    )
    ctx.check("the once-gained run trains", _fell(ref_losses, ratio=0.7))


# -- 11. control: fine-tuned from a backbone trained earlier on a related task ---------------------


class _SeepNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _seepage(gen, batch, task, seed=5011):
    """Seepage of a dewpond (task 0) and, related, its night-time level drop (task 1)."""
    g = torch.Generator().manual_seed(seed)
    w, v, u = (torch.randn(10, generator=g) for _ in range(3))
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = torch.tanh(x @ w / 3) + 0.4 * torch.cos(x @ v / 3)
        if task == 1:
            y = 0.9 * y + 0.25 * torch.sin(x @ u / 3)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="dewpond_seepage_finetune_silu_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Dewpond night level-drop regressor (SiLU MLP, MSE, Adam) fine-tuned from a backbone "
    "trained earlier in the script on the related seepage-rate task: the new head starts from "
    "a copy of the seepage head, the loss starts low, rises a little while the head and "
    "backbone adapt under the warm-up, then settles. Control.",
)
def h499_dewpond_finetune_control(ctx) -> None:
    seeded(5011)
    base = _SeepNet()
    pre_opt = torch.optim.Adam(base.parameters(), lr=3e-3)
    pre_data = _seepage(torch.Generator().manual_seed(50110), 64, 0)
    _train(ctx, base, pre_opt, pre_data, 300, F.mse_loss, attach=False)
    model = _SeepNet()
    model.load_state_dict(base.state_dict())  # the new head is a copy of the seepage head
    scratch = _SeepNet()
    opt = torch.optim.Adam(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters()), "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 1e-2},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    data = _seepage(torch.Generator().manual_seed(50111), 64, 1)
    x0, y0 = next(_seepage(torch.Generator().manual_seed(50112), 256, 1))
    with torch.no_grad():
        scratch_loss = float(F.mse_loss(scratch(x0), y0))
    losses, _ = _train(ctx, model, opt, data, 200, F.mse_loss, sched=sched)
    start = _mean(losses[:5])
    ctx.check("starts low (under 0.5x a scratch model's loss)", start < 0.5 * scratch_loss)
    ctx.check(
        "rises a little (peak of the first 60 over 1.1x the start, under 3x)",
        1.1 * start < max(losses[:60]) < 3 * start,
    )
    ctx.check(
        "settles (last 20 under the early peak), finite",
        _finite(losses) and _mean(losses[-20:]) < max(losses[:60]),
    )


# -- 12. control: fp16 autocast + GradScaler, AdamW, OneCycleLR, label smoothing -------------------


@scenario(
    family="sailboat_telltale_flow_fp16_onecycle_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Sailboat telltale flow-state classifier (GELU MLP on telltale angles, flutter rate, "
    "apparent wind and heel features, 4 states, cross-entropy with label smoothing 0.1, AdamW, "
    "OneCycleLR, fp16 autocast with a GradScaler, clipping at 1 after unscaling). Control.",
)
def h499_telltale_fp16_control(ctx) -> None:
    gen = seeded(5012)
    model = _Net(12, 64, 4, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _grades(gen, 64, 12, 4, 5012, spread=1.4)
    losses = []
    for _ in range(steps):
        x, y = next(data)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained (last 10 under 0.6x the first 10), finite", _fell(losses, ratio=0.6))
    ctx.check("the scaler never skipped a step", min(ctx.scales) >= 2.0**12)


# -- 13. control: RMSprop, two param groups, ReduceLROnPlateau, accumulation, Huber ----------------


@scenario(
    family="rain_barrel_roof_runoff_plateau_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Rain-barrel roof-runoff regressor (ReLU MLP on rainfall intensity, roof area, "
    "gutter slope and downpipe diameter features, noisy readings, Huber loss, RMSprop with the "
    "head in its own group at a lower lr, ReduceLROnPlateau, gradient accumulation 2, clipping "
    "at 1). Control.",
)
def h499_rain_barrel_plateau_control(ctx) -> None:
    gen = seeded(5013)
    model = _Net(10, 48, 1)
    body = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RMSprop(
        [{"params": body, "lr": 1e-3}, {"params": model.head.parameters(), "lr": 5e-4}],
        alpha=0.95,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=25)

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 5013, noise=0.15),
        220,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        accumulate=2,
        clip=1.0,
        after=after,
    )
    ctx.check("trained (last 10 under 0.6x the first 10), finite", _fell(losses, ratio=0.6))
