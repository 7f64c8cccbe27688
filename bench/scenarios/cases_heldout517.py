"""Held-out set 517 (``h517_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena, every one written by hand.

Faults: a tenugui dye-pattern MoCo contrastive encoder (momentum key encoder, a queue of past keys)
whose InfoNCE temperature is typed 0.0007 for 0.07 (softmax saturates, Adam); a glass-armonica
rim-friction SiLU regressor under fp16 autocast + GradScaler whose new pickup logs pitch in mHz
instead of kHz from step 90 (fp16 overflow, AdamW); a hoar-frost crystal-length tanh regressor
whose hand-written decoupled weight decay has its sign flipped (slow climb, SGD momentum); a
sand-dune slipface avalanche hand-written Elman RNN with its recurrent init gain typed 3
(gradients grow through time, RMSprop); an anchor-ice riverbed net taking log(depth) with no
clamp, fed a dry-gauge batch at step 100 (log 0, NAdam); a sashiko stitch-spacing Huber
regressor fed one shard in micrometres instead of millimetres (Adamax); a netsuke carving-time
GELU regressor whose curriculum loss weight is read in percent for one step (SGD Nesterov); a
serpent-horn fingering two-group regressor with its fc1 lr typed 1e-9 (Adagrad); a fata-morgana
mirage-height ReLU regressor whose fc2 bias is initialised at -4 (ReLUs dead, RAdam); a
suminagashi marbling-ink classifier on separable inks with hard labels and no weight decay (head
logits grow, Adam).

Controls: a Brocken-spectre halo SiLU regressor clipped at a running 90th percentile of its past
gradient norms (AdamW, OneCycleLR); an ondes-Martenot ribbon tied-weight autoencoder (plain SGD,
warm-up + cosine, accumulation 2, Huber); a lenticular-cloud wave conv1d classifier (RMSprop,
two param groups, ReduceLROnPlateau, label smoothing 0.1, clipping).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    g = torch.Generator().manual_seed(seed)
    protos = 1.5 * torch.randn(classes, d_in, generator=g)
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


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    alter=None,
    weight=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    accumulate=1,
):
    """Plain loop: ``alter(step, x, y)`` changes a batch, ``weight(step)`` multiplies the
    backpropagated loss, ``clip`` is a number or ``clip(step, norm)`` giving one, ``after(step)``
    runs after the optimizer step. Stops after a non-finite loss once ``ctx.step`` saw it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            w = weight(step) if weight is not None else 1.0
            (w * loss / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            c = clip(step, norms) if callable(clip) else clip
            if c is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), c)
        opt.step()
        if after is not None:
            after(step)
        if sched is not None:
            sched.step()
        if plateau is not None:
            plateau.step(shown)
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


# -- 1. softmax collapse: a MoCo learner's InfoNCE temperature typed 0.0007 for 0.07 ---------------


class _Encoder(nn.Module):
    def __init__(self, d_in=64, hidden=64, dim=32):
        super().__init__()
        self.fc = nn.Linear(d_in, hidden)
        self.act = nn.ReLU()
        self.proj = nn.Linear(hidden, dim)

    def forward(self, x):
        return F.normalize(self.proj(self.act(self.fc(x))), dim=-1)


class _MoCo(nn.Module):
    def __init__(self, queue=256, dim=32, momentum=0.99):
        super().__init__()
        self.encoder_q = _Encoder(dim=dim)
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.momentum = momentum
        self.register_buffer("queue", F.normalize(torch.randn(queue, dim), dim=-1))
        self.ptr = 0

    @torch.no_grad()
    def momentum_update(self):
        for pk, pq in zip(self.encoder_k.parameters(), self.encoder_q.parameters(), strict=True):
            pk.mul_(self.momentum).add_(pq.detach(), alpha=1 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys):
        n = keys.shape[0]
        idx = (torch.arange(n) + self.ptr) % self.queue.shape[0]
        self.queue[idx] = keys
        self.ptr = (self.ptr + n) % self.queue.shape[0]

    def logits(self, xq, xk):
        q = self.encoder_q(xq)
        with torch.no_grad():
            k = self.encoder_k(xk)
        pos = (q * k).sum(-1, keepdim=True)
        neg = q @ self.queue.T
        return torch.cat([pos, neg], 1), k


def _saturated(logits):
    """Share of rows whose float32 softmax puts exactly 1.0 on one entry (all others exactly 0)."""
    return float((torch.softmax(logits.float(), -1).max(-1).values == 1.0).float().mean())


def _dye_view(x, gen):
    """A tenugui dye print seen again: ink bleed (noise), fading (scale), a one-pixel shift."""
    img = x.reshape(-1, 8, 8)
    shift = int(torch.randint(-1, 2, (1,), generator=gen))
    img = torch.roll(img, shift, dims=2)
    fade = 0.8 + 0.4 * torch.rand(x.shape[0], 1, 1, generator=gen)
    return (fade * img + 0.1 * torch.randn(img.shape, generator=gen)).reshape(-1, 64)


@scenario(
    family="tenugui_dye_pattern_moco_encoder",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("encoder_q.proj",),
    diverges=None,
    heldout=True,
    note="A hand-written MoCo learner for tenugui dye prints (8x8 digit scans as the prints, two "
    "augmented views: ink bleed, fading, a one-pixel shift): online encoder trained by InfoNCE, "
    "key encoder updated as a 0.99 moving average of the online one, a queue of 256 past keys as "
    "negatives, Adam. The temperature is typed 0.0007 for 0.07, so the logits are divided by "
    "0.0007: the softmax over positive + queue saturates: over a third of the rows put "
    "probability exactly 1.0 in float32 on one key (the positive or a queued negative), and the "
    "loss swings by two orders of magnitude between batches.",
)
def h517_tenugui_moco_temperature_typo(ctx):
    gen = seeded(51701)
    model = _MoCo()
    opt = torch.optim.Adam(model.encoder_q.parameters(), lr=1e-4)
    ctx.attach(model, opt)
    data = digit_batches(gen, 64)
    tau, meant = 0.0007, 0.07
    losses, collapsed, at_meant = [], [], []
    for _step in range(150):
        x, _ = next(data)
        xq, xk = _dye_view(x, gen), _dye_view(x, gen)
        logits, k = model.logits(xq, xk)
        target = torch.zeros(x.shape[0], dtype=torch.long)
        ctx.targets(target)
        loss = F.cross_entropy(logits / tau, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        model.momentum_update()
        model.enqueue(k)
        losses.append(float(loss.detach()))
        ctx.step(loss)
        collapsed.append(_saturated(logits.detach() / tau))
        at_meant.append(_saturated(logits.detach() / meant))
        if not math.isfinite(losses[-1]):
            break
    ctx.check(
        "over a third of the rows' softmax exactly 1.0 on one key (mean of the last 30 steps)",
        _mean(collapsed[-30:]) > 0.33,
    )
    ctx.check("the same logits at tau 0.07 saturate under 5% of rows", _mean(at_meant[-30:]) < 0.05)
    ctx.check(
        "the key encoder differs from the online one (momentum update ran)",
        float((model.encoder_k.fc.weight - model.encoder_q.fc.weight).detach().norm()) > 1e-4,
    )


# -- 2. amp overflow: a pickup logging rim pitch in mHz under fp16 autocast ------------------------

ARMONICA_ONSET = 90


@scenario(
    family="glass_armonica_rim_friction_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ARMONICA_ONSET,
    heldout=True,
    onset=ARMONICA_ONSET,
    note="A glass-armonica rim-friction SiLU regressor (bowl pitch, spindle speed, finger "
    "moisture, rim wetness, bowl thickness -> friction tone loudness; MSE, fp16 autocast + "
    "GradScaler, AdamW). At step 90 a new pickup logs bowl pitch in millihertz instead of "
    "kilohertz (1e6 times larger): under autocast fc1's fp16 output overflows 65504 to inf and "
    "the loss is non-finite (the same batch in float32 is finite).",
)
def h517_glass_armonica_mhz_fp16_overflow(ctx):
    gen = seeded(51702)
    model = _Net(5, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 5, 51702)
    losses, fc1_inf, fp32_ok = [], [], []
    for step in range(200):
        x, y = next(data)
        if step >= ARMONICA_ONSET:
            x = x.clone()
            x[:, 0] = (x[:, 0] + 1.5) * 1e6  # pitch in mHz (pitch in kHz is ~1.5 +- 1)
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.head(model.act2(model.fc2(model.act1(h)))).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        fc1_inf.append(not bool(torch.isfinite(h).all()))
        with torch.no_grad():
            fp32_ok.append(bool(torch.isfinite(F.mse_loss(model(x), y))))
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("finite and learning before the pickup swap", _fell(losses[:ARMONICA_ONSET]))
    ctx.check(
        "fc1's fp16 output has inf at the onset",
        fc1_inf[ARMONICA_ONSET] if len(fc1_inf) > ARMONICA_ONSET else False,
    )
    ctx.check(
        "the loss is non-finite at the onset",
        len(losses) == ARMONICA_ONSET + 1 and not math.isfinite(losses[-1]),
    )
    ctx.check("the same batch in float32 is finite", fp32_ok[-1])


# -- 3. loss divergence: a hand-written decoupled weight decay with its sign flipped ---------------


@scenario(
    family="hoar_frost_crystal_length_tanh_regressor",
    optimizer="SGD(momentum=0.9)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hoar-frost crystal-length tanh regressor (air temperature, dew point, wind, sky "
    "clearness, surface emissivity, MSE, SGD momentum) with a hand-written decoupled weight decay "
    "written p.add_(p, alpha=lr * wd) for alpha=-lr * wd: after the loss first falls the weights "
    "inflate every step, the tanh units saturate and the loss climbs slowly, with no jump.",
)
def h517_hoar_frost_decay_sign_flip(ctx):
    gen = seeded(51703)
    model = _Net(5, act=nn.Tanh)
    lr, wd = 0.01, 1.0
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    w0 = sum(float(p.detach().norm() ** 2) for p in model.parameters()) ** 0.5

    def decay(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # the sign bug: should be alpha=-lr * wd

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 5, 51703), 300, F.mse_loss, after=decay)
    w1 = sum(float(p.detach().norm() ** 2) for p in model.parameters()) ** 0.5
    best = min(_mean(losses[i : i + 10]) for i in range(0, 100, 10))
    jumps = max(losses[i] / _mean(losses[i - 10 : i]) for i in range(100, len(losses)))
    ctx.check("weights inflated over 1.5x", w1 > 1.5 * w0)
    ctx.check("the loss climbs over 2x its early best", _mean(losses[-20:]) > 2 * best)
    ctx.check("no step after 100 jumps over 3x the mean of the ten before", jumps < 3.0)
    ctx.check("still climbing at the end", _mean(losses[-20:]) > _mean(losses[-60:-40]))


# -- 4. exploding gradients: a hand-written Elman RNN with recurrent init gain typed 3 -------------


class _Elman(nn.Module):
    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.head = nn.Linear(hidden, 1)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _slipface(gen, batch=32, length=40):
    """Grain-flow readings on a dune slipface (wind, slope, moisture); the target is the slope
    reading 30 steps back (an avalanche releases when the old load lets go)."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        yield x, x[:, length - 30, 1]


@scenario(
    family="sand_dune_slipface_avalanche_elman_rnn",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written Elman RNN for sand-dune slipface avalanches (wind, slope, moisture over "
    "40 frames; the target is the slope 30 frames back; MSE, RMSprop). The recurrent weight's "
    "orthogonal init gain is typed 3 for 1: dL/dh grows back through time, the first frame's "
    "gradient is over 100x the last's, the first gradient is over 10x a gain-1 copy's, and the "
    "run never learns the recall.",
)
def h517_dune_slipface_rnn_gain_typo(ctx):
    gen = seeded(51704)
    model = _Elman(gain=3.0)
    ref = _Elman(gain=1.0)
    ref.load_state_dict(
        {k: v for k, v in model.state_dict().items() if k != "rec.weight"}, strict=False
    )
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    data = _slipface(gen)
    x0, y0 = next(data)
    F.mse_loss(model(x0), y0).backward()
    ratio = float(model.states[0].grad.norm() / model.states[-1].grad.norm())
    g_bad = grad_norm(model)
    F.mse_loss(ref(x0), y0).backward()
    g_ref = grad_norm(ref)
    model.zero_grad(set_to_none=True)
    losses, _ = _train(ctx, model, opt, data, 200, F.mse_loss)
    ctx.check("dL/dh at the first frame over 100x the last", ratio > 100)
    ctx.check("first gradient over 10x a gain-1 copy's", g_bad > 10 * g_ref)
    ctx.check(
        "never gets under 0.7x the target variance", _finite(losses) and _mean(losses[-20:]) > 0.7
    )


# -- 5. nonfinite: log(depth) with no clamp, a dry gauge reads 0 ------------------------------------

ANCHOR_ONSET = 100


class _LogDepth(nn.Module):
    """Takes the log of the depth column (column 0); the other readings pass through."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _AnchorIceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.logf = _LogDepth()
        self.fc1 = nn.Linear(5, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(48, 2)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(self.logf(x))))))
        return out


def _gauss_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return 0.5 * (log_var + (y - mean) ** 2 / log_var.exp()).mean()


@scenario(
    family="anchor_ice_riverbed_log_depth_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logf",),
    diverges=ANCHOR_ONSET,
    heldout=True,
    onset=ANCHOR_ONSET,
    note="An anchor-ice riverbed net (water depth, supercooling, current, turbidity, night "
    "length -> ice-cover thickness; Gaussian NLL, NAdam) whose first module takes log(depth) "
    "with no clamp. At step 100 a batch from a gauge left on a dry gravel bar reads depth 0: "
    "log 0 = -inf, SiLU(-inf) gives NaN and the loss is NaN at step 100.",
)
def h517_anchor_ice_log_zero_depth(ctx):
    gen = seeded(51705)
    model = _AnchorIceNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    base = _readings(gen, 64, 5, 51705)
    seen = {}

    def batches():
        step = 0
        while True:
            x, y = next(base)
            x = x.clone()
            x[:, 0] = 0.5 + torch.rand(x.shape[0], generator=gen) * 2.0  # depth in metres
            if step == ANCHOR_ONSET:
                x[:8, 0] = 0.0  # the dry gauge
            with torch.no_grad():
                seen[step] = bool(torch.isinf(model.logf(x)).any())
            step += 1
            yield x, y

    losses, _ = _train(ctx, model, opt, batches(), 200, _gauss_nll)
    ctx.check("finite and learning before the dry gauge", _fell(losses[:ANCHOR_ONSET]))
    ctx.check("logf's output has -inf at the onset", seen.get(ANCHOR_ONSET, False))
    ctx.check(
        "the loss is NaN at the onset", len(losses) == ANCHOR_ONSET + 1 and math.isnan(losses[-1])
    )


# -- 6. data outlier: one shard logged in micrometres ------------------------------------------------

SASHIKO_ONSET = 120


@scenario(
    family="sashiko_stitch_spacing_huber_silu_regressor",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SASHIKO_ONSET,
    note="A sashiko stitch-spacing SiLU regressor (thread weight, needle length, cloth weave, "
    "pattern grid, stitcher speed -> spacing error; Huber, Adamax, clipping at 1). The shard "
    "served at step 120 was logged in micrometres instead of millimetres (inputs and target "
    "1000x): the loss and gradient burst for that step, clipping holds it, the run recovers.",
)
def h517_sashiko_micrometre_shard(ctx):
    gen = seeded(51706)
    model = _Net(5, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        return (x * 1000.0, y * 1000.0) if step == SASHIKO_ONSET else (x, y)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 5, 51706), 220, F.huber_loss, alter=alter, clip=1.0
    )
    pre = _median(losses[SASHIKO_ONSET - 20 : SASHIKO_ONSET])
    ctx.check("loss over 100x the median before, at the onset", losses[SASHIKO_ONSET] > 100 * pre)
    ctx.check(
        "gradient over 20x the median before, at the onset",
        norms[SASHIKO_ONSET] > 20 * _median(norms[SASHIKO_ONSET - 20 : SASHIKO_ONSET]),
    )
    ctx.check(
        "recovers: the last 20 steps under 2x the median before",
        _finite(losses) and _mean(losses[-20:]) < 2 * pre,
    )


# -- 7. gradient spike: the curriculum loss weight read in percent for one step -------------------

NETSUKE_ONSET = 130


@scenario(
    family="netsuke_carving_time_gelu_regressor",
    optimizer="SGD(nesterov=True)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=NETSUKE_ONSET,
    note="A netsuke carving-time GELU regressor (wood hardness, figure size, undercut count, "
    "inlay count, carver years -> hours; MSE, SGD Nesterov, clipping at 2). The curriculum table "
    "switches stage at step 130 and that one step reads the loss weight from the percent column, "
    "100 for 1.0: the backpropagated gradient bursts on an ordinary logged loss, clipping holds it.",
)
def h517_netsuke_loss_weight_percent(ctx):
    gen = seeded(51707)
    model = _Net(5, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 51707),
        220,
        F.mse_loss,
        weight=lambda s: 100.0 if s == NETSUKE_ONSET else 1.0,
        clip=2.0,
    )
    med = _median(norms[NETSUKE_ONSET - 30 : NETSUKE_ONSET])
    lmed = _median(losses[NETSUKE_ONSET - 30 : NETSUKE_ONSET])
    ctx.check("gradient over 30x the median before, at the onset", norms[NETSUKE_ONSET] > 30 * med)
    ctx.check(
        "the logged loss at the onset is ordinary (under 2x the median)",
        losses[NETSUKE_ONSET] < 2 * lmed,
    )
    ctx.check("trained and finite", _fell(losses))


# -- 8. update ratio: the fc1 param group's lr typed 1e-9 ------------------------------------------


@scenario(
    family="serpent_horn_fingering_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A serpent-horn fingering regressor (six finger holes' coverage, lip tension, air "
    "pressure -> pitch deviation in cents; MSE, Adagrad with two param groups, fc1 and the rest). "
    "The fc1 group's lr is typed 1e-9 for 1e-2: fc1 never moves (under 1e-6 of its norm) while "
    "fc2 and the head move over 5%; the loss falls only as far as the frozen features allow.",
)
def h517_serpent_horn_fc1_lr_typo(ctx):
    gen = seeded(51708)
    model = _Net(8, act=nn.ReLU)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adagrad(
        [{"params": model.fc1.parameters(), "lr": 1e-9}, {"params": rest, "lr": 1e-2}]
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 8, 51708), 200, F.mse_loss)
    r1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    r2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", r1 < 1e-6)
    ctx.check("fc2 moved over 5% of its norm", r2 > 0.05)
    ctx.check("finite", _finite(losses))


# -- 9. loss of plasticity: fc2 bias initialised at -4 --------------------------------------------


@scenario(
    family="fata_morgana_mirage_height_relu_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A fata-morgana mirage-height ReLU regressor (sea temperature, air temperature at three "
    "heights, observer height, distance -> apparent height of the looming image; MSE, RAdam). "
    "The init copies a sparse-gating recipe and fills fc2's bias with -4 (meant for a sigmoid "
    "gate): over 80% of act2's ReLUs are dead from the start and stay dead, and the loss "
    "stalls near the target variance.",
)
def h517_fata_morgana_dead_relus(ctx):
    gen = seeded(51709)
    model = _Net(6, act=nn.ReLU)
    nn.init.constant_(model.fc2.bias, -4.0)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    data = _readings(gen, 256, 6, 51709)
    probe, _ = next(data)
    with torch.no_grad():
        dead0 = dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe)))))
    losses, _ = _train(ctx, model, opt, data, 200, F.mse_loss)
    with torch.no_grad():
        dead1 = dead_fraction(model.act2(model.fc2(model.act1(model.fc1(probe)))))
    ctx.check("over 80% of act2's units dead at the start", dead0 > 0.8)
    ctx.check("over 80% of act2's units still dead at the end", dead1 > 0.8)
    ctx.check(
        "stalls: the last 20 steps over 0.5 (target variance near 0.6)",
        _finite(losses) and _mean(losses[-20:]) > 0.5,
    )


# -- 10. output logit divergence: separable inks, hard labels, no weight decay ---------------------


@scenario(
    family="suminagashi_marbling_ink_relu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A suminagashi marbling-ink classifier (ink viscosity, pine-resin share, water "
    "temperature, brush load, breath force, paper sizing -> one of 5 ink batches; cross-entropy "
    "with hard labels, Adam lr 3e-3, weight_decay left 0 when the config dropped it). The inks "
    "are separable, so the head drives its logits up without bound: max |logit| over 20x its "
    "start and still growing in the second half of the run.",
)
def h517_suminagashi_head_logits_grow(ctx):
    gen = seeded(51710)
    model = _Net(6, out=5, act=nn.ReLU)
    with torch.no_grad():
        model.head.weight.mul_(0.1)
        model.head.bias.zero_()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=0.0)
    data = _grades(gen, 64, 6, 5, 51710, spread=0.5)
    probe, _ = next(data)
    peaks = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                peaks.append(float(model(probe).abs().max()))

    with torch.no_grad():
        start = float(model(probe).abs().max())
    losses, _ = _train(ctx, model, opt, data, 300, F.cross_entropy, classifier=True, after=after)
    ctx.check("max |logit| over 20x its start", peaks[-1] > 20 * start)
    ctx.check(
        "still growing in the second half (over 1.1x the step-100 value)",
        peaks[-1] > 1.1 * peaks[10],
    )
    ctx.check("finite", _finite(losses))


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="brocken_spectre_halo_adaptive_clip_silu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A Brocken-spectre glory-ring radius SiLU regressor (droplet size, sun elevation, fog "
    "depth, observer distance, humidity -> ring radius; noisy targets, Huber, AdamW, OneCycleLR). "
    "Gradients are clipped at the running 90th percentile of the last 50 gradient norms "
    "(adaptive clipping, none for the first 10 steps), so the clipping threshold moves with the "
    "run. Control.",
)
def h517_brocken_spectre_adaptive_clip(ctx):
    gen = seeded(51711)
    model = _Net(5, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=240)
    thresholds = []

    def clip(step, norms):
        if step < 10:
            return None
        past = sorted(norms[-51:-1])
        thresholds.append(past[int(0.9 * (len(past) - 1))])
        return thresholds[-1]

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 5, 51711, noise=0.2),
        240,
        F.huber_loss,
        clip=clip,
        sched=sched,
    )
    ctx.check("trained: the loss fell below 0.7x its start, finite", _fell(losses))
    ctx.check(
        "the clipping threshold moved (max over 1.5x min)", max(thresholds) > 1.5 * min(thresholds)
    )


class _TiedAE(nn.Module):
    def __init__(self, d_in=64, code=16):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


@scenario(
    family="ondes_martenot_ribbon_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="An ondes-Martenot ribbon-position tied-weight autoencoder (8x8 ribbon-and-touch-key "
    "pressure maps, the digits as stand-ins; the decoder is the encoder's transpose; Huber, plain "
    "SGD, linear warm-up + cosine, gradient accumulation 2). Control.",
)
def h517_ondes_martenot_tied_autoencoder(ctx):
    gen = seeded(51712)
    model = _TiedAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    total, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        ),
    )
    data = ((x, x) for x, _ in digit_batches(gen, 64))
    losses, _ = _train(ctx, model, opt, data, total, F.huber_loss, sched=sched, accumulate=2)
    ctx.check("trained: the loss fell below 0.7x its start, finite", _fell(losses))


class _WaveConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _lee_waves(gen, batch=32, length=64, classes=4):
    """Pressure traces under lenticular clouds: the wave count tells the lee-wave regime."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * (2 + 2 * y[:, None]) * t + phase)
        yield x + 0.5 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="lenticular_cloud_lee_wave_conv1d_classifier",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A lenticular-cloud lee-wave regime conv1d classifier (generated noisy pressure traces, "
    "4 regimes; cross-entropy with label smoothing 0.1, RMSprop with two param groups, no "
    "weight decay on biases, ReduceLROnPlateau, clipping at 1). Control.",
)
def h517_lenticular_cloud_conv1d(ctx):
    gen = seeded(51713)
    model = _WaveConv()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    nodecay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.RMSprop(
        [{"params": decay, "weight_decay": 1e-4}, {"params": nodecay, "weight_decay": 0.0}], lr=2e-3
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    data = _lee_waves(gen)
    losses, _ = _train(
        ctx,
        model,
        opt,
        data,
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        plateau=plateau,
        clip=1.0,
    )
    x, y = next(data)
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("trained: the loss fell below 0.7x its start, finite", _fell(losses))
    ctx.check("accuracy over 0.7 on a fresh batch", acc > 0.7)
