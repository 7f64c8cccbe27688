"""Held-out set 246 (``h246_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a stucco-render crack tied autoencoder whose resume loads a
stale checkpoint, a tar-kiln yield regressor whose static loss scale is not undone on the first
step after a resume, an armourer's mail-ring defect deep CNN (no BatchNorm) initialised with the
uniform bound as a normal std, a gyil key-pitch cosine classifier whose log-scale was initialised
at 16 for log(16), a rammed-earth wall-strength tanh regressor whose StepLR gamma lost its minus
sign, an eel-trap catch-weight regressor fed one logger's temperatures in millikelvin, a dodgeball
catch BCE tagger whose epoch-wrap batch is summed, a mudbrick drying-time net that takes the log of
a rain gauge reading 0 mm, a cairn stone-balance classifier run with Adagrad at 0.5 for 0.05, a
valiha string-tension MLP whose layer-wise lr decay was typed 0.1 for 0.9, and three controls (a
kanjira stroke classifier on noisy labels with label smoothing, a kobza fret conv1d classifier
with NAdam and ReduceLROnPlateau, a calcio-storico scrum Gaussian-NLL net under fp16 autocast
with a GradScaler).

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
    dead_fraction,
    digit_batches,
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
    alter=None,
    watch=None,
    scale_loss=None,
    unscale=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)`` returns
    what is backpropagated, ``unscale(step)`` runs on the gradients before the norm is taken,
    ``after(step)`` runs after the optimizer step; stops after logging a NaN/inf loss."""
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
            loss = loss_fn(out.float(), y)
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
        if unscale is not None:
            unscale(step)
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


# -- stucco render: the resume loads a stale checkpoint --------------------------------------------

ONSET_STUCCO = 120


class TiedRenderAE(nn.Module):
    """A tied autoencoder of 16 crack-gauge readings on a stucco render: ``enc`` (Linear 16->6),
    ``act`` (tanh), the decoder uses ``enc.weight.T`` with its own bias ``dec_bias``."""

    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _render_gauges(gen, batch, seed=1):
    """Sixteen crack-gauge readings on a render panel, driven by six hidden factors (moisture,
    temperature, lime ratio, ...), with a little noise; reconstructed as themselves."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(6, 16, generator=g) / math.sqrt(6)
    while True:
        z = torch.randn(batch, 6, generator=gen)
        x = z @ mix + 0.05 * torch.randn(batch, 16, generator=gen)
        yield x, x


@scenario(
    family="stucco_render_crack_tied_autoencoder",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=ONSET_STUCCO,
    heldout=True,
    note="A tied autoencoder (enc: Linear 16->6, act: tanh, decoder enc.weight.T + dec_bias) of 16 crack-gauge readings on a stucco render panel, AdamW at 3e-3, MSE reconstruction. The job checkpoints every 10 steps, but the `latest` link was only written after the first save, so when the job is pre-empted and resumes at step 120 it reloads the weights saved after step 0 (the optimizer state and data stream carry on). The loss jumps back to over 3x its level of the 10 steps before, with a gradient under 10x its median and ordinary inputs, and the run recovers: by the end it is back within 1.5x of its pre-resume level; finite.",
)
def h246_stucco_render_stale_checkpoint(ctx: Context) -> None:
    steps = 220
    gen = seeded(24601)
    model = TiedRenderAE()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    saved = {}
    peaks = []

    def after(step):
        if step == 0:
            saved.update({k: v.clone() for k, v in model.state_dict().items()})

    def before(step):
        if step == ONSET_STUCCO:
            model.load_state_dict(saved)

    def watch(step, out, x, y):
        peaks.append(float(x.abs().max()))

    _train(ctx, model, opt, _render_gauges(gen, 64), steps, F.mse_loss,
           before=before, after=after, watch=watch)  # fmt: skip
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_STUCCO - 10 : ONSET_STUCCO])
    ctx.check("loss at the resume over 3x the 10 steps before", ls[ONSET_STUCCO] > 3 * pre)
    ctx.check(
        "no gradient burst: under 10x its median at the resume",
        gn[ONSET_STUCCO] < 10 * _median(gn[ONSET_STUCCO - 20 : ONSET_STUCCO]),
    )
    ctx.check(
        "inputs ordinary at the resume",
        peaks[ONSET_STUCCO] < 2 * _median(peaks[:ONSET_STUCCO]),
    )
    ctx.check("recovers within 1.5x of the pre-resume level", _mean(ls[-10:]) < 1.5 * pre)
    ctx.check("finite", _finite(ls))


# -- tar kiln: the static loss scale is not undone on the first step after a resume ---------------

ONSET_TAR = 60
LOSS_SCALE = 2.0**15


def _kiln_burns(gen, batch, seed=2):
    """Ten standardised readings of a pine-tar kiln burn (wood moisture, stack height, draught,
    burn hours, ...) and the tar yield, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="tar_kiln_yield_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=ONSET_TAR,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a pine-tar kiln's yield from 10 standardised readings (wood moisture, stack height, draught, burn hours, ...), Adam at 1e-3 (betas 0.9, 0.999), MSE. Left over from an fp16 port, the loss is multiplied by a static scale 2**15 before backward and the gradients divided by it after; the divide is guarded by `if step > resume_step`, so on the first step after the resume at step 60 the gradients stay 32768x. That one giant gradient fills Adam's second moment: the update norm over the following 150 steps is under a tenth of what it was before, the loss stops improving and ends over 1.5x where the run without the bug ends; finite, no blow-up.",
)
def h246_tar_kiln_static_loss_scale_resume(ctx: Context) -> None:
    steps = 220

    def run(c, bug):
        gen = seeded(24602)
        model = Stack(10, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        moves = []
        last = [torch.cat([p.detach().flatten() for p in model.parameters()])]

        def unscale(step):
            if bug and step == ONSET_TAR:  # resume_step == 60: `step > resume_step` is False
                return
            for p in model.parameters():
                if p.grad is not None:
                    p.grad /= LOSS_SCALE

        def after(step):
            now = torch.cat([p.detach().flatten() for p in model.parameters()])
            moves.append(float((now - last[0]).norm()))
            last[0] = now

        _train(c, model, opt, _kiln_burns(gen, 64), steps, F.mse_loss,
               scale_loss=lambda s, loss: loss * LOSS_SCALE, unscale=unscale, after=after)  # fmt: skip
        return moves

    twin = _Quiet()
    run(twin, bug=False)
    moves = run(ctx, bug=True)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 1000x its median before",
        gn[ONSET_TAR] > 1000 * _median(gn[ONSET_TAR - 20 : ONSET_TAR]),
    )
    ctx.check(
        "updates after the onset under 0.1x those before",
        _mean(moves[ONSET_TAR + 20 :]) < 0.1 * _mean(moves[ONSET_TAR - 30 : ONSET_TAR]),
    )
    ctx.check(
        "loss ends over 1.5x the bug-free run's",
        _mean(ls[-10:]) > 1.5 * _mean(twin.losses[-10:]),
    )
    ctx.check("bug-free run trains", _fell(twin.losses, ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- armourer: mail-ring defect deep CNN without BatchNorm, init std = uniform bound --------------


class MailRingNet(nn.Module):
    """Ten 3x3 conv layers (``convs.0`` ... ``convs.9``, 16 channels, ReLU, no normalisation)
    over an 8x8 patch of riveted mail, then ``head`` (Linear) naming one of ten ring defects."""

    def __init__(self, depth=10, width=16, classes=10, gain=1.0):
        super().__init__()
        chans = [1] + [width] * depth
        self.convs = nn.ModuleList(
            nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:], strict=True)
        )
        self.head = nn.Linear(width * 16, classes)
        for conv in self.convs:
            fan_in = conv.in_channels * 9
            nn.init.normal_(conv.weight, 0.0, gain * math.sqrt(2.0 / fan_in))
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.acts = []

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        self.acts = []
        for conv in self.convs:
            x = F.relu(conv(x))
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
        return self.head(F.avg_pool2d(x, 2).flatten(1))


@scenario(
    family="armourer_mail_ring_defect_deep_cnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=tuple(f"convs.{i}" for i in range(10)),
    diverges="auto",
    heldout=True,
    note="A ten-layer plain CNN without BatchNorm (convs.0 ... convs.9, 3x3, 16 channels, ReLU; head Linear) naming one of ten defects of riveted mail from 8x8 patches (scikit-learn digits), SGD momentum 0.9 at 0.01, cross-entropy. The init helper was meant to draw He-normal weights, std sqrt(2/fan_in), but was written with the He-uniform bound sqrt(6/fan_in) as the std: every layer gains sqrt(3). The gradient of the loss with respect to each layer's output grows by about that factor per layer going down: at the first step with a gradient (the head is zero-initialised) it is over 100x larger at convs.0 than at convs.9 (under 5x with the intended init), and the loss blows up to over 100x its start or NaN within the first steps. With the intended init the loss falls.",
)
def h246_armourer_mail_ring_uniform_bound_init(ctx: Context) -> None:
    steps = 80

    def run(c, gain):
        gen = seeded(24603)
        model = MailRingNet(gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        growth = []

        def unscale(step):
            acts = model.acts
            if acts[-1].grad is not None and float(acts[-1].grad.norm()) > 0:
                growth.append(float(acts[0].grad.norm() / (acts[-1].grad.norm() + 1e-30)))

        _train(c, model, opt, digit_batches(gen, 64), steps, F.cross_entropy,
               classifier=True, unscale=unscale)  # fmt: skip
        return growth

    twin = _Quiet()
    twin_growth = run(twin, gain=1.0)
    growth = run(ctx, gain=math.sqrt(3.0))
    ls = ctx.losses
    ctx.check(
        "at the first nonzero gradient (the head starts at zero) it grows over 100x from convs.9 down to convs.0",
        growth[0] > 100,
    )
    ctx.check("with the intended init it grows under 5x", twin_growth[0] < 5)
    ctx.check(
        "loss blows up to over 100x its start or NaN",
        any(not math.isfinite(v) or v > 100 * ls[0] for v in ls),
    )
    ctx.check("with the intended init the loss falls", _fell(twin.losses, ratio=0.7))


# -- gyil: cosine classifier whose log-scale was initialised at 16 for log(16) ---------------------


class GyilKeyNet(nn.Module):
    """A ReLU trunk (fc1, fc2) and a cosine ``head`` with a learnable log-scale: logits are
    exp(log_scale) * cos(feature, class weight)."""

    def __init__(self, d_in=20, hidden=64, classes=8, log_scale=2.772588722239781):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, log_scale)

    def forward(self, x):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


class CosineHead(nn.Module):
    def __init__(self, dim, classes, log_scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale)))

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).t()
        return self.log_scale.exp() * cos


@scenario(
    family="gyil_key_pitch_cosine_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU trunk (fc1, fc2) and a cosine head with a learnable log-scale, naming which of 8 gyil keys was struck from 20 standardised readings of the strike (spectral centroid, gourd buzz, decay, ...), RMSprop at 1e-3, cross-entropy. The log-scale was meant to start at log(16) but was initialised with 16.0, so the logits are e^16 (about 9e6) times the cosines: the float32 softmax rounds the target's probability to exactly 1 (or its rivals' to 0) for over half the rows from the start, and the wrong rows carry losses in the millions; finite. With log(16) no row saturates.",
)
def h246_gyil_cosine_log_scale_init(ctx: Context) -> None:
    steps = 150

    def run(c, log_scale):
        gen = seeded(24604)
        model = GyilKeyNet(log_scale=log_scale)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        coll = []

        def watch(step, out, x, y):
            coll.append(collapsed_fraction(out.detach(), y))

        _train(c, model, opt, _kinds(gen, 64, 20, 8, seed=4), steps, F.cross_entropy,
               classifier=True, watch=watch)  # fmt: skip
        return coll

    twin = _Quiet()
    twin_coll = run(twin, math.log(16.0))
    coll = run(ctx, 16.0)
    ctx.check("over half the rows saturate (p == 1.0) on average", _mean(coll) > 0.5)
    ctx.check("no row saturates with log(16)", max(twin_coll) == 0.0)
    ctx.check("with log(16) the loss falls", _fell(twin.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))


# -- rammed earth: StepLR gamma lost its minus sign ----------------------------------------------

ONSET_EARTH = 60
EARTH_LR = 0.15


def _earth_walls(gen, batch, seed=5):
    """Twelve standardised readings of a rammed-earth wall panel (clay fraction, moisture at
    ramming, lift height, stabiliser, ...) and its crushing strength, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="rammed_earth_wall_strength_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=ONSET_EARTH,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a rammed-earth wall panel's crushing strength from 12 standardised readings (clay fraction, ramming moisture, lift height, stabiliser, ...), plain SGD at 0.15, StepLR every 60 steps, MSE. The config's gamma was written 1e1 for 1e-1: at step 60 the rate goes up 10x instead of down. lr times the loss's top Hessian eigenvalue on a fixed batch (power iteration every 5 steps) is under 2 before and passes 2 at step 60; the loss oscillates and blows up to over 100x its low or NaN. With gamma 1e-1 lr x sharpness stays under 2 and the loss falls.",
)
def h246_rammed_earth_steplr_gamma_sign(ctx: Context) -> None:
    steps = 150
    probe = next(_earth_walls(torch.Generator().manual_seed(98), 256))

    def run(c, gamma):
        gen = seeded(24605)
        model = Stack(12, hidden=64, act=nn.Tanh)
        opt = torch.optim.SGD(model.parameters(), lr=EARTH_LR)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=ONSET_EARTH, gamma=gamma)
        lrs, sharp = [], {}

        def before(step):
            lrs.append(opt.param_groups[0]["lr"])
            if step % 5 == 0 and step <= ONSET_EARTH + 10:
                sharp[step] = _sharpness(model, F.mse_loss, probe)

        _train(c, model, opt, _earth_walls(gen, 64), steps, F.mse_loss,
               before=before, sched=sched)  # fmt: skip
        return lrs, sharp

    twin = _Quiet()
    twin_lrs, twin_sharp = run(twin, 1e-1)
    lrs, sharp = run(ctx, 1e1)
    ls = ctx.losses
    over = [s for s, lam in sharp.items() if lrs[s] * lam > 2]
    low = min(ls[:ONSET_EARTH])
    ctx.check("lr x sharpness first past 2 at the onset", bool(over) and over[0] == ONSET_EARTH)
    ctx.check(
        "loss blows up to over 100x its low after the onset",
        any(not math.isfinite(v) or v > 100 * low for v in ls[ONSET_EARTH:]),
    )
    ctx.check("loss fell before the onset", _mean(ls[50:60]) < 0.8 * _mean(ls[:5]))
    ctx.check(
        "with gamma 1e-1 lr x sharpness stays under 2",
        max(twin_lrs[s] * lam for s, lam in twin_sharp.items()) < 2,
    )
    ctx.check("with gamma 1e-1 the loss falls", _fell(twin.losses, ratio=0.5))


# -- eel trap: one logger's water temperatures in millikelvin -------------------------------------

ONSET_EEL = 100


def _eel_traps(gen, batch, seed=6):
    """Ten standardised readings of a night's eel-trap set (water temperature, moon phase, flow,
    turbidity, ...) and the catch weight, standardised. At the onset one weir logger's shard
    arrives with its temperature column in millikelvin, unstandardised (about 2.8e5)."""
    for i, (x, y) in enumerate(_readings(gen, batch, 10, seed, noise=0.05)):
        if i == ONSET_EEL:
            x = x.clone()
            x[:, 0] = 283150.0 + 1000.0 * x[:, 0]
        yield x, y


@scenario(
    family="eel_trap_catch_weight_relu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=ONSET_EEL,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing an eel-trap night's catch weight from 10 standardised readings (water temperature, moon phase, flow, turbidity, ...), ASGD at 0.01, gradient clipping at norm 1, MSE. At step 100 one weir logger's shard arrives with its water-temperature column in raw millikelvin (about 2.8e5) instead of standardised: that batch's inputs are over 1e4x the usual, its loss over 1000x the steps before and its gradient over 100x its median; clipping bounds the step, and the run recovers to within 3x of its pre-onset loss by the end; finite.",
)
def h246_eel_trap_millikelvin_shard(ctx: Context) -> None:
    steps = 200
    gen = seeded(24606)
    model = Stack(10, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    peaks = []

    def watch(step, out, x, y):
        peaks.append(float(x.abs().max()))

    _train(ctx, model, opt, _eel_traps(gen, 64), steps, F.mse_loss, watch=watch, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_EEL - 10 : ONSET_EEL])
    ctx.check(
        "inputs at the onset over 1e4x the usual",
        peaks[ONSET_EEL] > 1e4 * _median(peaks[:ONSET_EEL]),
    )
    ctx.check("loss at the onset over 1000x the 10 steps before", ls[ONSET_EEL] > 1000 * pre)
    ctx.check(
        "gradient at the onset over 100x its median",
        gn[ONSET_EEL] > 100 * _median(gn[ONSET_EEL - 20 : ONSET_EEL]),
    )
    ctx.check("recovers within 3x of the pre-onset loss", _mean(ls[-10:]) < 3 * pre)
    ctx.check("finite", _finite(ls))


# -- dodgeball: the epoch-wrap batch's loss is summed ---------------------------------------------

ONSET_DODGE = 90


def _throws(gen, batch, seed=7):
    """Fourteen standardised readings of a dodgeball throw (release speed, spin, distance, the
    target's stance, ...) and four tags (caught, dodged, blocked, out of court)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(14, 4, generator=g)
    while True:
        x = torch.randn(batch, 14, generator=gen)
        logits = 1.5 * x @ w / math.sqrt(14)
        yield x, (torch.rand(batch, 4, generator=gen) < torch.sigmoid(logits)).float()


@scenario(
    family="dodgeball_throw_outcome_bce_tagger",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=ONSET_DODGE,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head of 4) tagging a dodgeball throw (caught, dodged, blocked, out of court) from 14 standardised readings (release speed, spin, distance, stance, ...), SGD momentum 0.9 at 0.05, gradient clipping at norm 1, BCE with logits. The sampler's epoch-wrap batch (tail of one shuffle plus head of the next) goes through a separate code path that computes the loss with reduction='sum'; the one wrap in this run comes at step 90, so that step's gradient is 256x (64 rows x 4 tags) the usual, over 50x its median, while the loss itself (logged as a mean) is ordinary; clipping bounds the step, the run carries on; finite.",
)
def h246_dodgeball_epoch_wrap_sum(ctx: Context) -> None:
    steps = 180
    gen = seeded(24607)
    model = Stack(14, hidden=64, out=4, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def scale_loss(step, loss):
        return loss * 64 * 4 if step == ONSET_DODGE else loss

    _train(ctx, model, opt, _throws(gen, 64), steps, F.binary_cross_entropy_with_logits,
           scale_loss=scale_loss, clip=1.0)  # fmt: skip
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 50x its median",
        gn[ONSET_DODGE] > 50 * _median(gn[ONSET_DODGE - 20 : ONSET_DODGE]),
    )
    ctx.check(
        "loss at the onset ordinary (under 1.5x the 10 steps before)",
        ls[ONSET_DODGE] < 1.5 * _mean(ls[ONSET_DODGE - 10 : ONSET_DODGE]),
    )
    ctx.check("loss fell", _fell(ls, ratio=0.9))
    ctx.check("finite", _finite(ls))


# -- mudbrick: the log of a rain gauge reading 0 mm ----------------------------------------------

ONSET_MUD = 120


class LogRain(nn.Module):
    """Replaces the rain column (0) by its log, as the drying model wants rain on a log scale."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class MudbrickNet(nn.Module):
    """``log_rain`` then a SiLU MLP (fc1, act1, fc2, act2, head) of a mudbrick's drying days."""

    def __init__(self, d_in=8, hidden=64):
        super().__init__()
        self.log_rain = LogRain()
        self.body = Stack(d_in, hidden, act=nn.SiLU)

    def forward(self, x):
        return self.body(self.log_rain(x))


def _brick_days(gen, batch, seed=8):
    """Rain in mm over the drying week (a gamma-like positive draw in the wet-season shards; the
    first dry-season shard, at the onset, has rainless weeks read as exactly 0.0) and seven
    standardised readings (clay, straw fraction, sun hours, ...); drying days, standardised."""
    for i, (x, y) in enumerate(_readings(gen, batch, 8, seed, noise=0.05)):
        rain = torch.exp(0.8 * x[:, 0] + 1.0)
        if i >= ONSET_MUD:
            rain = torch.where(x[:, 0] < -0.5, torch.zeros_like(rain), rain)
        yield torch.cat([rain[:, None], x[:, 1:]], 1), y


@scenario(
    family="mudbrick_drying_days_log_rain_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("log_rain",),
    diverges=ONSET_MUD,
    onset=ONSET_MUD,
    heldout=True,
    note="A module log_rain (log of the weekly rain column) then a SiLU MLP (body.fc1, body.act1, body.fc2, body.act2, body.head) regressing how many days a mudbrick batch takes to dry from rain in mm and 7 standardised readings (clay, straw fraction, sun hours, ...), Adamax at 2e-3, Huber loss. The wet-season shards always had rain; the first dry-season shard, at step 120, has rainless weeks logged as exactly 0.0 mm, and log_rain has no clamp or log1p: log(0) = -inf, the forward gives -inf/NaN and the loss is non-finite at step 120 (finite before).",
)
def h246_mudbrick_log_zero_rain(ctx: Context) -> None:
    steps = 160
    gen = seeded(24608)
    model = MudbrickNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    infs = []

    def watch(step, out, x, y):
        infs.append(bool(torch.isinf(model.log_rain(x)).any()))

    _train(ctx, model, opt, _brick_days(gen, 64), steps, F.huber_loss, watch=watch)
    ls = ctx.losses
    ctx.check(
        "log_rain gives -inf first at the onset",
        infs.index(True) == ONSET_MUD if any(infs) else False,
    )
    ctx.check("loss first non-finite at the onset", _first_bad(ls) == ONSET_MUD)
    ctx.check(
        "loss fell before the onset", _mean(ls[ONSET_MUD - 10 : ONSET_MUD]) < 0.8 * _mean(ls[:10])
    )


# -- cairn: Adagrad at 0.5 for 0.05 --------------------------------------------------------------


def _cairns(gen, batch, seed=9):
    """Sixteen non-negative readings of a stacked cairn (stone masses in kg/10, contact
    widths, wind, lean, ...) around one prototype per balance state, and the state (6)."""
    for x, y in _kinds(gen, batch, 16, 6, seed, noise=0.8):
        yield F.softplus(x), y


@scenario(
    family="cairn_stone_balance_relu_classifier",
    optimizer="Adagrad",
    cause="loss_of_plasticity",
    where=("act1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming which of 6 balance states a stacked cairn is in from 16 non-negative readings (stone masses, contact angles, wind, lean, ...), Adagrad, cross-entropy. The lr was typed 0.5 for 0.05: Adagrad's first steps move every weight by about the lr, fc1's pre-activations are pushed negative and over half of act1's ReLU units never fire on a probe batch of 2048 by step 20 (about a quarter after the first step), and none comes back; the loss stalls over 1.5x that of the intended lr; finite. With 0.05 under a tenth die.",
)
def h246_cairn_adagrad_lr_typo(ctx: Context) -> None:
    steps = 200
    probe = next(_cairns(torch.Generator().manual_seed(97), 2048))[0]

    def run(c, lr):
        gen = seeded(24609)
        model = Stack(16, hidden=64, out=6)
        opt = torch.optim.Adagrad(model.parameters(), lr=lr)
        dead = []

        def after(step):
            with torch.no_grad():
                dead.append(dead_fraction(model.act1(model.fc1(probe))))

        _train(c, model, opt, _cairns(gen, 64), steps, F.cross_entropy,
               classifier=True, after=after)  # fmt: skip
        return dead

    twin = _Quiet()
    twin_dead = run(twin, 0.05)
    dead = run(ctx, 0.5)
    ls = ctx.losses
    ctx.check("over half of act1 dead by step 20", dead[20] > 0.5)
    ctx.check("none comes back: still over half dead at the end", dead[-1] > 0.5)
    ctx.check("with 0.05 under a tenth die", max(twin_dead) < 0.1)
    ctx.check(
        "loss ends over 1.5x the intended lr's", _mean(ls[-10:]) > 1.5 * _mean(twin.losses[-10:])
    )
    ctx.check("finite", _finite(ls))


# -- valiha: layer-wise lr decay typed 0.1 for 0.9 -----------------------------------------------


class ValihaNet(nn.Module):
    """Four GELU layers (fc1 ... fc4) and a ``head`` estimating a valiha string's tension."""

    def __init__(self, d_in=12, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.fc4 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        for fc in (self.fc1, self.fc2, self.fc3, self.fc4):
            x = F.gelu(fc(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="valiha_string_tension_llrd_mlp",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1 ... fc4, head) estimating the tension of a valiha (tube zither) string from 12 standardised readings (string gauge, bridge position, bamboo diameter, plucked pitch, ...), RAdam at 2e-3 with layer-wise lr decay in param groups (head at the base rate, each layer below it times decay), MSE. The decay was typed 0.1 for 0.9: fc1 runs at 1e-4 and fc2 at 1e-3 of the base rate, their update-to-weight ratios stay over 100x below the head's, they barely move from their init, and the loss hardly falls (it never goes over 3x its first), ending over 1.3x the intended decay's; finite, no blow-up.",
)
def h246_valiha_llrd_decay_typo(ctx: Context) -> None:
    steps = 220

    def run(c, decay):
        gen = seeded(24610)
        model = ValihaNet()
        names = ["fc1", "fc2", "fc3", "fc4", "head"]
        groups = [
            {"params": getattr(model, n).parameters(), "lr": 2e-3 * decay ** (4 - i)}
            for i, n in enumerate(names)
        ]
        opt = torch.optim.RAdam(groups, lr=2e-3)
        ratios = {n: [] for n in names}
        last = {n: getattr(model, n).weight.detach().clone() for n in names}

        def after(step):
            for n in names:
                w = getattr(model, n).weight.detach()
                ratios[n].append(float((w - last[n]).norm() / w.norm()))
                last[n] = w.clone()

        _train(
            c, model, opt, _readings(gen, 64, 12, 10, noise=0.05), steps, F.mse_loss, after=after
        )
        return {n: _mean(v[10:]) for n, v in ratios.items()}

    twin = _Quiet()
    run(twin, 0.9)
    r = run(ctx, 0.1)
    ls = ctx.losses
    ctx.check("fc1's update ratio over 100x below the head's", r["fc1"] * 100 < r["head"])
    ctx.check("fc2's update ratio over 100x below the head's", r["fc2"] * 100 < r["head"])
    ctx.check(
        "loss ends over 1.3x the intended decay's", _mean(ls[-10:]) > 1.3 * _mean(twin.losses[-10:])
    )
    ctx.check("no blow-up: loss stays under 3x its first", max(ls) < 3 * ls[0])
    ctx.check("finite", _finite(ls))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="kanjira_stroke_noisy_label_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) naming which of 7 kanjira strokes was played from 18 standardised readings (contact point, jingle decay, pitch bend, ...); 20% of the labels were mis-annotated at random, so label smoothing 0.1 is used, AdamW at a OneCycleLR peak of 3e-3, weight decay 0.01, clipping at norm 1. Trains normally: the loss falls, clean held-out accuracy over 0.7; finite.",
)
def h246_kanjira_noisy_labels_control(ctx: Context) -> None:
    steps = 200
    gen = seeded(24611)
    model = Stack(18, hidden=64, out=7, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)

    def noisy(gen, batch):
        for x, y in _kinds(gen, batch, 18, 7, seed=11, noise=0.6):
            flip = torch.rand(batch, generator=gen) < 0.2
            yield x, torch.where(flip, torch.randint(0, 7, (batch,), generator=gen), y)

    _train(ctx, model, opt, noisy(gen, 64), steps, nn.CrossEntropyLoss(label_smoothing=0.1),
           classifier=True, sched=sched, clip=1.0)  # fmt: skip
    xt, yt = next(_kinds(torch.Generator().manual_seed(96), 1024, 18, 7, seed=11, noise=0.6))
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.8))
    ctx.check("clean held-out accuracy over 0.7", acc > 0.7)
    ctx.check("finite", _finite(ctx.losses))


class KobzaFretNet(nn.Module):
    """Conv1d (``conv1``, ``conv2``, ReLU, max-pool) over a 64-sample pluck and a ``head``."""

    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16 * 16, classes)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        x = F.max_pool1d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def _plucks(gen, batch, classes=6):
    """A 64-sample kobza pluck: a decaying tone whose frequency says the fret, plus noise."""
    t = torch.arange(64) / 64
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        f = 3.0 + 2.0 * y[:, None].float()
        x = torch.sin(2 * math.pi * f * t + phase) * torch.exp(-2 * t)
        yield x + 0.3 * torch.randn(batch, 64, generator=gen), y


@scenario(
    family="kobza_fret_pluck_conv1d_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a conv1d net (conv1, conv2, head) naming which of 6 kobza frets was plucked from a 64-sample noisy decaying tone, NAdam at 2e-3, ReduceLROnPlateau (patience 10, factor 0.5) on the training loss, gradient accumulation over 2 micro-batches of 32, cross-entropy. Trains normally: the loss falls to under half its start; finite.",
)
def h246_kobza_fret_conv1d_control(ctx: Context) -> None:
    steps = 150
    gen = seeded(24612)
    model = KobzaFretNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    _train(ctx, model, opt, _plucks(gen, 32), steps, F.cross_entropy,
           classifier=True, sched=sched, accumulate=2)  # fmt: skip
    ctx.check("loss fell to under half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))


class ScrumNet(nn.Module):
    """A SiLU trunk (fc1, fc2) with ``mean_head`` and ``var_head`` (softplus variance)."""

    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean_head(h), F.softplus(self.var_head(h)) + 1e-3], 1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


@scenario(
    family="calcio_storico_scrum_push_gaussian_nll_fp16_net",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU net (fc1, fc2, mean_head, var_head) predicting the push distance of a calcio-storico scrum and its uncertainty from 12 standardised readings (players engaged, mass, ground, fatigue, ...) with heteroscedastic noise, Gaussian NLL, SGD Nesterov (momentum 0.9) with a 20-step linear warm-up to 0.01 then cosine decay, clipping at norm 1, under fp16 autocast with a GradScaler. Trains normally: the loss falls, finite, the scale never collapses.",
)
def h246_calcio_storico_fp16_gaussian_nll_control(ctx: Context) -> None:
    steps = 200
    gen = seeded(24613)
    model = ScrumNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )
    scaler = torch.amp.GradScaler("cpu")

    def pushes(gen, batch):
        for x, y in _readings(gen, batch, 12, 13, noise=0.05):
            yield x, y + (0.1 + 0.3 * x[:, 1].abs()) * torch.randn(batch, generator=gen)

    _train(ctx, model, opt, pushes(gen, 64), steps, _gauss_nll,
           sched=sched, clip=1.0, scaler=scaler, amp=True)  # fmt: skip
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.3)
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("scale stays at or above 1", min(ctx.scales) >= 1.0)
