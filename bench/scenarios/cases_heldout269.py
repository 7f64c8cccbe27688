"""Held-out set 269 (``h269_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a pump-track lap accelerometer U-Net denoiser whose decoder
param group's lr was typed 1e-9 for 1e-3, an adobe-brick cure-strength net resumed from the
worst checkpoint kept as the best, a bell-ringer's stroke-timing net taking the log of a missed
backstroke's zero duration, a sea-fog onset deep tanh MLP initialised with gain 3 for 1, a miso
vat net fed one shard with salinity in ppm, a clamp-kiln shrinkage net whose weight normaliser is
reset to 1 for one step, a thermal-soaring climb-rate net whose CyclicLR max_lr was typed 10x, a
carom-billiards shot classifier with an RMSprop lr typed 100x, a dry-tooling placement classifier
dividing its logits by a contrastive temperature, a dawn-chorus multilabel tagger that trains on
its -1 (not surveyed) labels, and three controls (a surf-ski stroke Conv1d classifier with SGD
momentum, weight decay and StepLR, a ninepin pin-fall Gaussian-NLL net with Adadelta, a kefir pH
regressor under fp16 autocast with a GradScaler).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


class _Twin:
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
    alter=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's loop. ``before(step)`` runs first; ``alter(step, x, y)`` changes a batch;
    ``watch(step, out, x, y)`` sees the forward pass; ``loss_fn(out, y, step)`` gives the loss
    that is backpropagated and logged; ``after(step)`` runs after the optimizer step. Stops
    after logging a non-finite loss."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float() if amp else out, y, step)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
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


def _plain(fn):
    """A loss of (out, y) as the loop's loss of (out, y, step)."""
    return lambda out, y, step: fn(out, y)


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
    """Readings scattered around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


def _traces(gen, batch, classes, seed, channels=3, length=32, noise=0.5):
    """Multi-channel traces: each class its own mix of frequencies, random phase and gain."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.9 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        gain = 0.5 + 2.0 * torch.rand(batch, 1, 1, generator=gen)
        x = torch.sin(freqs[y][:, :, None] * t + phase)
        yield gain * (x + noise * torch.randn(batch, channels, length, generator=gen)), y


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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


def _top_eig(model, x, y, iters=12):
    """Largest Hessian eigenvalue of the MSE on (x, y), by power iteration on Hessian-vector
    products."""
    params = list(model.parameters())
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        nv = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / nv for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- pump track: the decoder's param group lr typed 1e-9 ----------------------------------------


class UNet1d(nn.Module):
    """A two-level U-Net on 1-D traces: enc1/enc2 convs, mid, transposed-conv upsampling and
    decoder convs fed the skip connections, a 1x1 output conv."""

    def __init__(self, ch=1, width=8):
        super().__init__()
        self.enc1 = nn.Conv1d(ch, width, 5, padding=2)
        self.enc2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.mid = nn.Conv1d(2 * width, 2 * width, 3, padding=1)
        self.up2 = nn.ConvTranspose1d(2 * width, 2 * width, 2, stride=2)
        self.dec2 = nn.Conv1d(4 * width, 2 * width, 3, padding=1)
        self.up1 = nn.ConvTranspose1d(2 * width, width, 2, stride=2)
        self.dec1 = nn.Conv1d(2 * width, width, 3, padding=1)
        self.out = nn.Conv1d(width, ch, 1)

    def forward(self, x):
        e1 = F.relu(self.enc1(x))
        e2 = F.relu(self.enc2(F.avg_pool1d(e1, 2)))
        m = F.relu(self.mid(F.avg_pool1d(e2, 2)))
        d2 = F.relu(self.dec2(torch.cat([self.up2(m), e2], 1)))
        d1 = F.relu(self.dec1(torch.cat([self.up1(d2), e1], 1)))
        return self.out(d1)


def _laps(gen, batch, length=64, noise=0.4):
    """A pump-track lap's vertical acceleration: rollers as smooth bumps plus rider pumping,
    recorded with vibration noise; the target is the clean trace."""
    t = torch.linspace(0, 1, length)
    while True:
        n_bumps = 4
        centers = torch.rand(batch, n_bumps, 1, generator=gen)
        widths = 0.03 + 0.05 * torch.rand(batch, n_bumps, 1, generator=gen)
        heights = 0.5 + torch.rand(batch, n_bumps, 1, generator=gen)
        clean = (heights * torch.exp(-((t - centers) ** 2) / (2 * widths**2))).sum(1)
        freq = 2 + 4 * torch.rand(batch, 1, generator=gen)
        clean = clean + 0.3 * torch.sin(6.28 * freq * t)
        clean = clean[:, None]
        noisy = clean + noise * torch.randn(batch, 1, length, generator=gen)
        yield noisy, clean


@scenario(
    family="pumptrack_lap_accelerometer_unet1d_denoiser",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("up1", "dec1"),
    diverges=None,
    heldout=True,
    note="A hand-written 1-D U-Net (enc1, enc2, mid, up2 + dec2 fed enc2's skip, up1 + dec1 fed enc1's skip, out) denoising a pump-track rider's 64-sample vertical-acceleration trace of a lap (rollers and pumping under frame vibration), MSE against the clean trace, AdamW with weight decay 1e-2 in four param groups (encoder, middle, inner decoder, outer decoder) from a per-block lr table. The outer decoder's entry (up1, dec1) was typed 1e-9 for 1e-3: its per-step update is under 1e-6 of its weights while the other blocks move over 1e-4 per step, so up1 and dec1 stay at their initialisation for the whole run. The loss still falls through the other blocks (and ends above the twin with the intended table). Finite, no blow-up.",
)
def h269_pumptrack_unet_decoder_group_lr(ctx: Context) -> None:
    def run(c, outer_lr):
        gen = seeded(26901)
        model = UNet1d()
        groups = [
            {"params": [*model.enc1.parameters(), *model.enc2.parameters()], "lr": 1e-3},
            {"params": list(model.mid.parameters()), "lr": 1e-3},
            {"params": [*model.up2.parameters(), *model.dec2.parameters()], "lr": 1e-3},
            {
                "params": [
                    *model.up1.parameters(),
                    *model.dec1.parameters(),
                    *model.out.parameters(),
                ],
                "lr": outer_lr,
            },
        ]
        opt = torch.optim.AdamW(groups, weight_decay=1e-2)
        w0 = {n: _flat(getattr(model, n)) for n in ("enc1", "dec1", "up1")}
        ratios = {"enc1": [], "dec1": []}
        prev = {}

        def before(step):
            for n in ratios:
                prev[n] = _flat(getattr(model, n))

        def after(step):
            for n in ratios:
                now = _flat(getattr(model, n))
                ratios[n].append(float((now - prev[n]).norm() / prev[n].norm()))

        _train(c, model, opt, _laps(gen, 32), 200, _plain(F.mse_loss), before=before, after=after)
        moved = {n: float((_flat(getattr(model, n)) - w0[n]).norm() / w0[n].norm()) for n in w0}
        return ratios, moved

    twin = _Twin()
    run(twin, 1e-3)
    ratios, moved = run(ctx, 1e-9)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "dec1's median per-step update under 1e-6 of its weights", _median(ratios["dec1"]) < 1e-6
    )
    ctx.check(
        "enc1's median per-step update over 1e-4 of its weights", _median(ratios["enc1"]) > 1e-4
    )
    ctx.check(
        "dec1 and up1 moved under 1e-5 of their weights over the run",
        max(moved["dec1"], moved["up1"]) < 1e-5,
    )
    ctx.check("the loss still fell (other blocks train)", _fell(ls, ratio=0.7))
    ctx.check(
        "the twin with the intended lr ends lower", _mean(twin.losses[-10:]) < 0.9 * _mean(ls[-10:])
    )


# -- adobe brick: resumed from the "best" checkpoint kept with max for min ----------------------

ONSET_ADOBE = 120


@scenario(
    family="adobe_brick_cure_strength_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ADOBE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing an adobe brick's compressive strength after curing from 12 standardised readings (clay fraction, straw content, sand grading, drying days, humidity, ...), Adam at 2e-3, MSE. The job keeps a 'best' checkpoint every 10 steps by validation loss, but the callback was configured with mode='max', so 'best' holds the weights of its worst evaluation (step 0's). The job was preempted and resumed at step 120 from best.pt with Adam's current state: the model is back at its initial weights, the loss jumps about 3x on ordinary batches (the gradient under 3x its level) and the run recovers within about thirty steps. Finite, no blow-up.",
)
def h269_adobe_brick_resumed_from_worst_best(ctx: Context) -> None:
    gen = seeded(26902)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = _readings(torch.Generator().manual_seed(5), 256, 12, 43)
    val = next(data)
    best = {"loss": -math.inf, "state": None}
    xs = []

    def evaluate(step):
        if step % 10 == 0 and step < ONSET_ADOBE:
            with torch.no_grad():
                v = float(F.mse_loss(model(val[0]), val[1]))
            if v > best["loss"]:  # mode="max" for a loss
                best["loss"] = v
                best["state"] = copy.deepcopy(model.state_dict())
        if step == ONSET_ADOBE:
            model.load_state_dict(best["state"])

    def watch(step, out, x, y):
        if step in (ONSET_ADOBE - 1, ONSET_ADOBE):
            xs.append(max(float(x.abs().max()), float(y.abs().max())))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 128, 12, 43),
        220,
        _plain(F.mse_loss),
        before=evaluate,
        watch=watch,
    )
    ls = ctx.losses
    pre = _mean(ls[ONSET_ADOBE - 10 : ONSET_ADOBE])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_ADOBE], ratio=0.5))
    ctx.check("loss at the onset over 3x the ten steps before", ls[ONSET_ADOBE] > 3 * pre)
    ctx.check("the batches at the onset are ordinary (max |x|, |y| under 7)", max(xs) < 7)
    ctx.check(
        "recovered: 30-40 steps after the onset under 1.5x the pre-onset level",
        _mean(ls[ONSET_ADOBE + 30 : ONSET_ADOBE + 40]) < 1.5 * pre,
    )


# -- bell-ringer: log of a missed backstroke's zero duration -----------------------------------

ONSET_BELL = 90


class StrokeNet(nn.Module):
    """Log ratio of backstroke to handstroke durations (``ratio``) joined to the other readings,
    then a tanh MLP."""

    def __init__(self, d_other, hidden=48):
        super().__init__()
        self.ratio = LogRatio()
        self.fc1 = nn.Linear(d_other + 1, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        r = self.ratio(x[:, :2])
        h = torch.cat([r, x[:, 2:]], 1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


class LogRatio(nn.Module):
    def forward(self, d):
        return torch.log(d[:, 1:2] / d[:, 0:1])  # meant: clamp the backstroke to a floor first


def _strokes(gen, batch, d_other, seed):
    """Handstroke and backstroke durations in seconds (about 2.1 s) and other readings; the
    target is the ringer's next striking error (standardised)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_other, generator=g)
    while True:
        hand = 2.1 + 0.1 * torch.randn(batch, generator=gen)
        back = hand * torch.exp(0.05 * torch.randn(batch, generator=gen))
        other = torch.randn(batch, d_other, generator=gen)
        y = 8 * torch.log(back / hand) + torch.tanh(other @ w / math.sqrt(d_other))
        y = y + 0.05 * torch.randn(batch, generator=gen)
        yield torch.cat([hand[:, None], back[:, None], other], 1), y


@scenario(
    family="bellringer_handstroke_backstroke_log_ratio_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("ratio",),
    diverges=ONSET_BELL + 1,
    heldout=True,
    onset=ONSET_BELL,
    note="A change-ringing tower's practice logger: a module 'ratio' takes the log of the backstroke to handstroke duration ratio from a rope sensor, joined to 8 standardised readings (rope length, bell weight, ringer, method, ...), then a tanh MLP (fc1, act1, fc2, act2, head) regressing the ringer's next striking error, RAdam at 1e-3, MSE. The log was written without clamping the backstroke to a floor; at step 90 the sensor misses a backstroke pulse on one row and logs its duration as exactly 0, log(0) = -inf comes out of 'ratio'; fc1 turns it into +-inf, tanh saturates them so step 90's loss is still finite, but the backward pass through the saturated tanh gives inf * 0 = NaN gradients, the step writes NaN into the weights and the loss is NaN from step 91. Every other value in that batch is ordinary; finite before.",
)
def h269_bellringer_log_of_missed_backstroke(ctx: Context) -> None:
    gen = seeded(26903)
    model = StrokeNet(8)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    seen = {}

    def alter(step, x, y):
        if step == ONSET_BELL:
            x = x.clone()
            x[7, 1] = 0.0
        return x, y

    def watch(step, out, x, y):
        with torch.no_grad():
            r = model.ratio(x[:, :2])
        seen.setdefault("ratio_finite", []).append(bool(torch.isfinite(r).all()))
        if step == ONSET_BELL:
            seen["others"] = float(x[:, 2:].abs().max())
            seen["durations_min"] = float(x[torch.arange(len(x)) != 7, :2].min())

    _train(
        ctx, model, opt, _strokes(gen, 64, 8, 61), 150, _plain(F.mse_loss), alter=alter, watch=watch
    )
    ls = ctx.losses
    fin = seen["ratio_finite"]
    ctx.check("finite before the onset", _finite(ls[:ONSET_BELL]))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_BELL], ratio=0.7))
    ctx.check(
        "the loss is non-finite first the step after the onset", _first_bad(ls) == ONSET_BELL + 1
    )
    ctx.check(
        "the gradient is finite before the onset and non-finite at it",
        _finite(ctx.grad_norms[:ONSET_BELL]) and not math.isfinite(ctx.grad_norms[ONSET_BELL]),
    )
    ctx.check("ratio's output finite before the onset", all(fin[:ONSET_BELL]))
    ctx.check(
        "ratio's output non-finite at the onset", len(fin) > ONSET_BELL and not fin[ONSET_BELL]
    )
    ctx.check(
        "the rest of the batch is ordinary (other readings under 6, durations over 1.5 s)",
        seen.get("others", 99) < 6 and seen.get("durations_min", 0) > 1.5,
    )


# -- sea fog: a deep tanh MLP initialised with gain 3 for 1 --------------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width=32, depth=20, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


def _layer_grads(model):
    return [float(lin.weight.grad.norm()) for lin in model.layers]


@scenario(
    family="sea_fog_advection_onset_deep_tanh_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 20-layer tanh MLP (layers.0 .. layers.19, 32 wide, head) forecasting the hours to the onset of advection sea fog over a harbour from 10 standardised readings (sea-surface temperature, dew-point depression, wind fetch, inversion height, ...), SGD momentum 0.9 at lr 1e-3, MSE. The init helper draws each weight with std gain / sqrt(fan_in) and the gain was typed 3 for 1: the network sits in tanh's chaotic regime and the gradient grows layer by layer towards the input, layers.0's gradient over 50x layers.19's (the gain-1 twin's ratio is under 5) and the whole gradient norm many times the twin's.",
)
def h269_sea_fog_deep_tanh_init_gain(ctx: Context) -> None:
    def run(c, gain):
        gen = seeded(26904)
        model = DeepTanh(10, gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        _train(c, model, opt, _readings(gen, 128, 10, 19), 120, _plain(F.mse_loss))

    twin = _Twin()
    # per-layer gradients measured on the same batch at initialisation
    probe = next(_readings(torch.Generator().manual_seed(2), 256, 10, 19))
    ratios = {}
    for gain in (1.0, 3.0):
        seeded(26904)
        m = DeepTanh(10, gain=gain)
        F.mse_loss(m(probe[0]), probe[1]).backward()
        g = _layer_grads(m)
        ratios[gain] = g[0] / g[-1]
    run(twin, 1.0)
    run(ctx, 3.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("layers.0's gradient over 50x layers.19's at gain 3", ratios[3.0] > 50)
    ctx.check("the gain-1 twin's ratio under 5", ratios[1.0] < 5)
    ctx.check(
        "the gradient norm over the run over 5x the twin's (median)",
        _median(gn) > 5 * _median(twin.grad_norms),
    )


# -- miso vat: one shard logs salinity in ppm --------------------------------------------------

ONSET_MISO = 100


@scenario(
    family="miso_vat_ferment_salinity_huber_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_MISO,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a miso brewer's months-to-ripeness from 10 readings of a vat (salinity, koji ratio, soy moisture, cellar temperature, ...), standardised with the percent-based statistics, ASGD at 2e-2, Huber, clipping at 1.0. One shard, from a cellar whose refractometer exports salinity in ppm rather than percent, arrives as the batch at step 100: that column reads about 1e4 x its usual scale on every row, the loss is over 1e4x and the gradient over 1e5x their level for that step, clipping bounds the update and the run recovers on the following ordinary batches. Finite, no blow-up.",
)
def h269_miso_vat_salinity_ppm_shard(ctx: Context) -> None:
    gen = seeded(26905)
    model = Stack(10, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)
    xs = {}

    def alter(step, x, y):
        if step == ONSET_MISO:
            x = x.clone()
            salt_pct = 12.0 + 1.5 * x[:, 3]
            x[:, 3] = (salt_pct * 1e4 - 12.0) / 1.5  # ppm through the percent statistics
        xs[step] = float(x.abs().max())
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 128, 10, 29),
        220,
        _plain(lambda o, y: F.huber_loss(o, y, delta=1.0)),
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_MISO - 10 : ONSET_MISO])
    typical = _median([xs[s] for s in range(ONSET_MISO - 20, ONSET_MISO)])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the onset batch's inputs over 1e3x the usual max", xs[ONSET_MISO] > 1e3 * typical)
    ctx.check("loss at the onset over 100x the ten steps before", ls[ONSET_MISO] > 100 * pre)
    ctx.check(
        "gradient at the onset over 100x the median before",
        gn[ONSET_MISO] > 100 * _median(gn[ONSET_MISO - 20 : ONSET_MISO]),
    )
    ctx.check(
        "recovered: 30-40 steps after under 1.5x the pre-onset level",
        _mean(ls[ONSET_MISO + 30 : ONSET_MISO + 40]) < 1.5 * pre,
    )


# -- clamp kiln: the weight normaliser reset to 1 for one step ---------------------------------

ONSET_KILN = 110


def _kiln_loss(bug_step):
    def loss(out, y, step):
        w = y[:, 1]  # position weight in the clamp (0.5 .. 1.5)
        err = (out - y[:, 0]) ** 2
        norm = 1.0 if step == bug_step else w.sum()
        return (w * err).sum() / norm

    return loss


def _kiln(gen, batch, seed):
    for x, y in _readings(gen, batch, 12, seed):
        w = 0.5 + torch.rand(batch, generator=gen)
        yield x, torch.stack([y, w], 1)


@scenario(
    family="brickmaker_clamp_kiln_shrinkage_weighted_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KILN,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the firing shrinkage of a hand-moulded brick from 12 standardised readings of its place in a wood-fired clamp kiln (height in the stack, distance to a fire tunnel, clay batch, drying days, ...), SGD Nesterov (momentum 0.9) at 1e-2, clipping at 1.0, a weighted MSE sum(w * err^2) / sum(w) with each brick's position weight (0.5 .. 1.5). The trainer resets its normaliser to 1.0 after the epoch-end checkpoint and only sets it to sum(w) from the second batch on, so step 110 divides by 1 for about 128: the backpropagated (and logged) loss and the gradient are over 100x for that one step, on an ordinary batch; clipped, the run recovers. Finite, no blow-up.",
)
def h269_brickmaker_kiln_weight_normaliser_reset(ctx: Context) -> None:
    gen = seeded(26906)
    model = Stack(12, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    seen = {}

    def watch(step, out, x, y):
        if step in (ONSET_KILN - 1, ONSET_KILN):
            seen[step] = (float(x.abs().max()), float(F.mse_loss(out.detach(), y[:, 0])))

    _train(
        ctx,
        model,
        opt,
        _kiln(gen, 128, 53),
        220,
        _kiln_loss(ONSET_KILN),
        watch=watch,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_KILN - 10 : ONSET_KILN])
    ctx.check("finite throughout", _finite(ls))
    ctx.check("loss fell before the onset", _fell(ls[:ONSET_KILN], ratio=0.7))
    ctx.check(
        "gradient at the onset over 50x the median before",
        gn[ONSET_KILN] > 50 * _median(gn[ONSET_KILN - 20 : ONSET_KILN]),
    )
    ctx.check(
        "the onset batch is ordinary: max |x| under 7, unweighted MSE under 2x the step before",
        seen[ONSET_KILN][0] < 7 and seen[ONSET_KILN][1] < 2 * seen[ONSET_KILN - 1][1],
    )
    ctx.check(
        "the gradient is back under 3x its level 5 steps later",
        gn[ONSET_KILN + 5] < 3 * _median(gn[ONSET_KILN - 20 : ONSET_KILN]),
    )
    ctx.check(
        "recovered: 30-40 steps after under 1.5x the pre-onset level",
        _mean(ls[ONSET_KILN + 30 : ONSET_KILN + 40]) < 1.5 * pre,
    )


# -- thermal soaring: CyclicLR max_lr typed 10x ------------------------------------------------


class ClimbNet(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="thermal_soaring_climb_rate_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a glider pilot's climb rate in a thermal from 10 standardised readings (ground heating, lapse rate, bank angle, wind shear, cloud base, ...), plain SGD under a triangular CyclicLR from base_lr 0.01, MSE. max_lr was typed 1.5 for 0.15: the lr rises by about 0.015 a step and lr x the loss's top Hessian eigenvalue (power iteration on a fixed batch every 5 steps) is under 2 at first and crosses the 2/sharpness stability limit on the way up, after which the loss oscillates and blows up. The twin with max_lr 0.15 stays finite and trains. The batches are ordinary.",
)
def h269_thermal_soaring_cyclic_max_lr(ctx: Context) -> None:
    state = {}

    def run(c, max_lr, probe_eig):
        gen = seeded(26907)
        model = ClimbNet(10)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.CyclicLR(
            opt, base_lr=0.01, max_lr=max_lr, step_size_up=100, cycle_momentum=False
        )
        probe = next(_readings(torch.Generator().manual_seed(13), 256, 10, 83))
        products = {}

        def before(step):
            if probe_eig and step % 5 == 0 and "cross" not in state:
                products[step] = opt.param_groups[0]["lr"] * _top_eig(model, *probe)
                if products[step] > 2:
                    state["cross"] = step

        _train(
            c,
            model,
            opt,
            _readings(gen, 128, 10, 83),
            200,
            _plain(F.mse_loss),
            sched=sched,
            before=before,
        )
        return products

    twin = _Twin()
    run(twin, 0.15, False)
    products = run(ctx, 1.5, True)
    ls = ctx.losses
    cross = state.get("cross", 10**6)
    low = min(ls[: min(cross, len(ls))])
    bad = _first_bad(ls)
    ctx.check("lr x sharpness under 2 at the start", products.get(0, 99) < 2)
    ctx.check("lr x sharpness crossed 2", cross < len(ls))
    ctx.check(
        "the loss blew up after the crossing (non-finite or over 1e3x its low)",
        (bad is not None and bad > cross) or max(ls[min(cross, len(ls)) :] or [0]) > 1e3 * low,
    )
    ctx.check("finite before the crossing", _finite(ls[: min(cross, len(ls))]))
    ctx.check("the twin with max_lr 0.15 stays finite and trains", _fell(twin.losses, ratio=0.7))


# -- carom billiards: RMSprop lr typed 100x ----------------------------------------------------


@scenario(
    family="carom_billiards_shot_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) calling the shot a three-cushion carom player should play (6 kinds) from 16 standardised, noisy readings of the ball layout (distances, angles to the cushions, cue-ball spin room, ...), RMSprop, cross-entropy. The lr was typed 1e-1 for 1e-3: the first updates drive fc2's pre-activations negative for almost every input, over half of act2's units die (never positive on a probe batch) and stay dead through the last 50 steps, and the loss ends over 1.5x the twin's at 1e-3, whose act2 keeps nearly all its units alive. Finite.",
)
def h269_carom_billiards_rmsprop_lr_typo(ctx: Context) -> None:
    def run(c, lr):
        gen = seeded(26908)
        model = Stack(16, hidden=64, out=6)
        opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        probe = next(_kinds(torch.Generator().manual_seed(4), 512, 16, 6, 97, noise=1.5))[0]
        with torch.no_grad():
            dead = [dead_fraction(model.features(probe))]

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 16, 6, 97, noise=1.5),
            200,
            _plain(F.cross_entropy),
            classifier=True,
            after=after,
        )
        return dead

    twin = _Twin()
    twin_dead = run(twin, 1e-3)
    dead = run(ctx, 1e-1)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("act2 alive at initialisation (under 10% dead)", dead[0] < 0.1)
    ctx.check("over half of act2 dead through the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("the twin keeps act2 under 10% dead", max(twin_dead) < 0.1)
    ctx.check(
        "the loss ends over 1.5x the twin's", _mean(ls[-10:]) > 1.5 * _mean(twin.losses[-10:])
    )


# -- dry tooling: logits divided by a contrastive temperature ----------------------------------


class PlacementNet(nn.Module):
    def __init__(self, d_in, hidden=48, classes=5, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="dry_tooling_axe_placement_gelu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which of 5 placements (hook, torque, stein-pull, cam, pick) a dry-tooling climber's ice axe should use on a rock feature, from 14 standardised readings of the hold (edge depth, crack width, angle, rock friability, ...), Adagrad at 1e-2, cross-entropy. The config shared with the contrastive pre-training stage has temperature 0.01, and the classifier's forward divides the head's logits by it: the float32 softmax rounds the target probability to exactly 1.0 on over half of a probe batch's rows by the end (the twin at temperature 1 on none). Finite, no blow-up.",
)
def h269_dry_tooling_contrastive_temperature(ctx: Context) -> None:
    def run(c, temp):
        gen = seeded(26909)
        model = PlacementNet(14, temperature=temp)
        opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 14, 5, 101),
            200,
            _plain(F.cross_entropy),
            classifier=True,
        )
        px, py = next(_kinds(torch.Generator().manual_seed(6), 512, 14, 5, 101))
        with torch.no_grad():
            return collapsed_fraction(model(px), py)

    twin = _Twin()
    twin_frac = run(twin, 1.0)
    frac = run(ctx, 0.01)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("over half of the probe's rows softmax to exactly 1.0", frac > 0.5)
    ctx.check("the twin at temperature 1 under 5%", twin_frac < 0.05)


# -- dawn chorus: -1 (not surveyed) labels trained as targets ----------------------------------

SPECIES = 10


def _chorus(gen, batch, seed, d_sound=16, sites=4):
    """Sound features and a one-hot site; labels 1/0 for present/absent, -1 where the site's
    survey did not cover the species (to be masked)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_sound, SPECIES, generator=g)
    unsurveyed = torch.rand(sites, SPECIES, generator=g) < 0.3
    while True:
        sound = torch.randn(batch, d_sound, generator=gen)
        site = torch.randint(0, sites, (batch,), generator=gen)
        y = (
            (sound @ w) / math.sqrt(d_sound) + 0.3 * torch.randn(batch, SPECIES, generator=gen)
            > 0.3
        ).float()
        y = torch.where(unsurveyed[site], torch.full_like(y, -1.0), y)
        yield torch.cat([sound, F.one_hot(site, sites).float()], 1), y


def _masked_bce(mask):
    def loss(out, y, step):
        if mask:
            keep = y >= 0
            return F.binary_cross_entropy_with_logits(out[keep], y[keep])
        return F.binary_cross_entropy_with_logits(out, y)

    return loss


@scenario(
    family="birdsong_dawn_chorus_multilabel_tagger",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) tagging which of 10 bird species sing in a dawn-chorus recording from 16 standardised sound features and a one-hot survey site, multilabel BCE with logits, Adamax at 2e-3. The labels mark species a site's survey did not cover as -1, to be masked out; the mask was dropped, so BCE trains on target -1, whose term softplus(z) + z has no minimum: the head's logits for those (site, species) pairs are pushed down without bound, the peak |logit| on a probe grows over 20x and is still growing at the end, and the loss falls below zero. The twin with the mask keeps the logits many times smaller. Finite, no blow-up.",
)
def h269_birdsong_unmasked_missing_labels(ctx: Context) -> None:
    def run(c, mask):
        gen = seeded(26910)
        model = Stack(20, hidden=64, out=SPECIES, act=nn.SiLU)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        probe = next(_chorus(torch.Generator().manual_seed(8), 512, 113))[0]
        with torch.no_grad():
            peak = [float(model(probe).abs().max())]

        def after(step):
            with torch.no_grad():
                peak.append(float(model(probe).abs().max()))

        _train(c, model, opt, _chorus(gen, 64, 113), 250, _masked_bce(mask), after=after)
        return peak

    twin = _Twin()
    twin_peak = run(twin, True)
    peak = run(ctx, False)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's peak |logit| grew over 20x", peak[-1] > 20 * peak[0])
    ctx.check("the peak is still growing over the last 50 steps", peak[-1] > 1.2 * peak[-50])
    ctx.check("the loss went below zero", ls[-1] < 0)
    ctx.check("the masked twin keeps the peak 3x smaller", twin_peak[-1] < peak[-1] / 3)


# -- controls -----------------------------------------------------------------------------------


class StrokeConv(nn.Module):
    """Conv1d feature extractor (conv1, conv2 with BatchNorm) and a linear head."""

    def __init__(self, channels=3, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(width)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.relu(self.bn2(self.conv2(h)))
        return self.head(h.mean(-1))


@scenario(
    family="surf_ski_paddle_stroke_conv1d_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a Conv1d net with BatchNorm (conv1, bn1, conv2, bn2, head) classifying a surf-ski paddler's stroke phase pattern (4 kinds: catch-heavy, rotation, exit-late, choppy-water) from 32-sample 3-axis paddle-shaft accelerometer traces with random phase and gain, SGD momentum 0.9 at lr 0.05 with weight decay 5e-4 and a StepLR (x0.1 at step 120), cross-entropy. Trains normally.",
)
def h269_surf_ski_stroke_conv_control(ctx: Context) -> None:
    gen = seeded(26911)
    model = StrokeConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=120, gamma=0.1)
    _train(
        ctx,
        model,
        opt,
        _traces(gen, 64, 4, 127),
        200,
        _plain(F.cross_entropy),
        classifier=True,
        sched=sched,
    )
    model.eval()
    px, py = next(_traces(torch.Generator().manual_seed(9), 512, 4, 127))
    with torch.no_grad():
        acc = float((model(px).argmax(1) == py).float().mean())
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell under half its start", _fell(ls, ratio=0.5))
    ctx.check("probe accuracy over 0.6 (chance 0.25)", acc > 0.6)


class PinFallNet(nn.Module):
    """A SiLU trunk with a mean head and a log-variance head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], 1)


def _gauss_nll(out, y):
    mu, log_var = out[:, 0], out[:, 1].clamp(-8.0, 8.0)
    return 0.5 * (log_var + (y - mu) ** 2 / log_var.exp()).mean()


def _pins(gen, batch, seed):
    """Heteroscedastic target: noise grows with the lane-oil reading (column 0)."""
    for x, y in _readings(gen, batch, 9, seed, noise=0.0):
        sd = 0.1 + 0.3 * torch.sigmoid(2 * x[:, 0])
        yield x, y + sd * torch.randn(batch, generator=gen)


@scenario(
    family="ninepin_bowling_pin_fall_gaussian_nll_net",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a SiLU MLP (fc1, act1, fc2, act2) with a mean head and a log-variance head forecasting how many pins a ninepin bowler's throw fells (standardised) from 9 readings (lane oil, ball weight, approach speed, release point, ...), heteroscedastic noise, Gaussian NLL with the log-variance clamped, Adadelta at lr 1.0, clipping at 5.0, ReduceLROnPlateau (factor 0.5, patience 20). Trains normally.",
)
def h269_ninepin_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(26912)
    model = PinFallNet(9)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _pins(gen, 128, 131),
        250,
        _plain(_gauss_nll),
        clip=5.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the NLL fell by over 0.3 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.3)


class PhNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="kefir_grain_ferment_ph_fp16_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Healthy control: a GELU MLP (fc1, act1, fc2, act2, head) regressing a kefir batch's pH after 24 h from 11 standardised readings (grain-to-milk ratio, milk fat, room temperature, grain age, ...), Huber, AdamW (weight decay 1e-2) under a OneCycleLR (max_lr 3e-3), fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, clipping at 1.0 after unscaling. Trains normally.",
)
def h269_kefir_fp16_gradscaler_control(ctx: Context) -> None:
    gen = seeded(26913)
    model = PhNet(11)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 11, 137),
        steps,
        _plain(lambda o, y: F.huber_loss(o, y, delta=0.5)),
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell under half its start", _fell(ls, ratio=0.5))
    ctx.check("the loss scale never fell under 1024", min(ctx.scales) >= 1024)
