"""Held-out set 335 (``h335_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before.

Faults: a bishop's-ring halo-radius 14-layer tanh MLP initialised with ``normal_(std=1.0)``
(gradients grow through depth), a cork-stripping bark-thickness SiLU regressor whose StepLR gamma
is typed 10 for 0.1 (past 2/sharpness), a grease-ice slick residual BatchNorm CNN on generated
images fed one shard of raw uint8 frames (a corrupted batch), a wild-rice knocking yield GELU
regressor whose resume re-creates the head after loading the checkpoint (a one-off loss spike), a
turpentine-still yield tanh regressor whose hand-written decoupled weight decay has its sign
flipped (a slow climb), a chicle-tapping latex-flow Poisson net whose identity-link rate has no
clamp (log of a negative, NaN), an airship mooring-line pull regressor that converts kN to N
inside the fp16 autocast region (fp16 overflow), a figure-skating jump-type classifier whose
softmax temperature is typed 0.002 for 0.2 (softmax saturates), a rake-maker tine-spacing
regressor whose trunk param group's lr is typed 3e-9 for 3e-3 (trunk frozen), and a sundew
tentacle-closure BCE net whose accumulation tail branch multiplies instead of dividing for one
step (one gradient burst).

Controls: a ball-ice size BatchNorm CNN (train/eval modes, MultiStepLR), a naval-stores gum-dip
Huber regressor (Adagrad, accumulation, ReduceLROnPlateau, clipping), a highland-games hammer
swing Conv1d classifier (Adam, OneCycleLR, label smoothing, fp16 autocast with a GradScaler).

Each fault is induced the way it happens in practice and checked with ``ctx.check``.
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


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


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
    watch=None,
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, micro, loss)`` returns the
    loss actually backpropagated (default ``loss / accumulate``), ``after(step)`` runs after the
    optimizer step, ``plateau()`` feeds a ReduceLROnPlateau ``sched``. Stops after a non-finite
    loss (once ``ctx.step`` has seen it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for micro in range(accumulate):
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
            if backprop is not None:
                total = backprop(step, micro, loss)
            else:
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
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, shift=0.0):
    """Standardised readings and a smooth nonlinear target (about unit scale, then scaled)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, shift + scale * y


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _textures(gen, batch, classes, seed, size=16):
    """Generated grey-level images in [0, 1]: each class a grating of its own orientation and
    frequency, random phase, plus noise."""
    g = torch.Generator().manual_seed(seed)
    angle = math.pi * torch.rand(classes, generator=g)
    freq = 0.5 + 1.2 * torch.rand(classes, generator=g)
    r = torch.arange(size, dtype=torch.float32)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, 1, generator=gen)
        a, f = angle[y][:, None, None], freq[y][:, None, None]
        img = 0.5 + 0.35 * torch.sin(f * (xx * torch.cos(a) + yy * torch.sin(a)) + phase)
        img = img + 0.15 * torch.randn(batch, size, size, generator=gen)
        yield img.clamp(0, 1)[:, None], y


def _tones(gen, batch, classes, seed, length=48, channels=3):
    """Short decaying multi-channel traces: each class has its own partials and decay."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.2 + 0.7 * torch.rand(classes, channels, generator=g)
    decay = 0.01 + 0.06 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase) * torch.exp(-decay[y][:, None, None] * t)
        yield x + 0.4 * torch.randn(batch, channels, length, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


def _sharpness(model, loss_fn, batch, iters=20):
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
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- bishop's ring: a 14-layer tanh MLP initialised with normal_(std=1.0) ------------------------


class HaloNet(nn.Module):
    """A deep tanh MLP (layers.0 ... layers.13, head) predicting a bishop's ring halo radius."""

    def __init__(self, d_in=10, width=64, depth=14):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight)  # meant std=gain/sqrt(fan_in); the default std is 1.0
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="bishops_ring_halo_radius_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A hand-written 14-layer tanh MLP (layers.0-13, width 64, head) predicting the angular radius of a bishop's ring around the sun after a volcanic eruption from ten standardised aerosol and sun-photometer readings, plain SGD at 0.01, MSE, 150 steps. The init loop calls nn.init.normal_(layer.weight) meaning std=gain/sqrt(fan_in) but leaves the default std=1.0, eight times too wide for width 64: the net sits deep in tanh's chaotic regime and the backward pass multiplies the gradient at every layer, so layers.0's gradient is hundreds of times layers.13's from the first step; the lower layers thrash and the loss does not settle.",
)
def h335_bishops_ring_unit_normal_init(ctx: Context) -> None:
    gen = seeded(33501)
    model = HaloNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ratios = []

    def after(step):
        g0 = float(model.layers[0].weight.grad.norm())
        g13 = float(model.layers[13].weight.grad.norm())
        ratios.append(g0 / max(g13, 1e-12))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3351), 150, F.mse_loss, after=after)
    ctx.check("layers.0's gradient is over 100x layers.13's at step 0", ratios[0] > 100)
    ctx.check("and still over 30x on median over the run", _median(ratios) > 30)
    ctx.check("the loss does not fall by half", not _fell(ctx.losses, 10, 0.5))


# -- cork stripping: StepLR gamma typed 10 for 0.1 ------------------------------------------------

GAMMA_CK = 10.0  # meant 0.1
STEP_CK = 70


@scenario(
    family="cork_stripping_bark_thickness_silu_regressor",
    optimizer="SGD momentum",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=STEP_CK,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the thickness of a cork oak's bark at stripping from eight standardised readings (tree age, years since the last harvest, rainfall, trunk girth), SGD momentum 0.9 at 0.1, MSE, 200 steps with a StepLR meant to decay the lr tenfold at step 70. Its gamma is typed 10 for 0.1: at step 70 the lr jumps to 1.0, past momentum SGD's stability limit 2(1+beta)/sharpness (top Hessian eigenvalue by power iteration), and the loss oscillates and grows geometrically until it blows up.",
)
def h335_cork_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(33502)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_CK, gamma=GAMMA_CK)
    probe = next(_readings(torch.Generator().manual_seed(33529), 256, 8, 3352))
    marks = []

    def before(step):
        if step % 5 == 0 or step == STEP_CK:
            lam = _sharpness(model, F.mse_loss, probe)
            lr = opt.param_groups[0]["lr"]
            marks.append((step, lr, lam, lr > 2 * (1 + 0.9) / max(lam, 1e-12)))

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3352), 200, F.mse_loss, before=before, sched=sched)
    over = [s for s, _, _, o in marks if o]
    ctx.check("the lr passes 2(1+beta)/sharpness", bool(over))
    ctx.check("first at the declared onset (the StepLR step)", bool(over) and over[0] == STEP_CK)
    ls = ctx.losses
    ctx.check("the loss fell before the onset", _fell(ls[:STEP_CK], 10, 0.6))
    ctx.check(
        "then blows up over 1e3x its pre-onset level or goes non-finite",
        _first_bad(ls) is not None or max(ls[STEP_CK:]) > 1e3 * _mean(ls[STEP_CK - 10 : STEP_CK]),
    )


# -- grease ice: a residual BatchNorm CNN fed one shard of raw uint8 frames -----------------------


class ResBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class SlickResNet(nn.Module):
    """stem (conv + BN), two residual blocks, a strided block, global pool, head."""

    def __init__(self, classes=5, ch=16):
        super().__init__()
        self.stem = nn.Conv2d(1, ch, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(ch)
        self.block1 = ResBlock(ch)
        self.down = nn.Conv2d(ch, 2 * ch, 3, stride=2, padding=1, bias=False)
        self.down_bn = nn.BatchNorm2d(2 * ch)
        self.block2 = ResBlock(2 * ch)
        self.head = nn.Linear(2 * ch, classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.block1(x)
        x = self.block2(F.relu(self.down_bn(self.down(x))))
        return self.head(x.mean((2, 3)))


ONSET_GI = 90


@scenario(
    family="grease_ice_slick_residual_bn_cnn",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GI,
    note="A hand-written residual CNN with BatchNorm (stem + stem_bn, block1, a strided down + down_bn, block2, global pool, head) classifying 16x16 generated greyscale frames of a freezing sea surface into five grease-ice slick textures, SGD Nesterov (momentum 0.9) at 0.05, cross-entropy, batch 32, 160 steps. At step 90 one shard comes from a camera whose export skipped the /255 normalisation: 12 of the batch's 32 frames are raw 0-255 values. BatchNorm's batch statistics are swamped by them, the loss jumps over 3x for that step and the gradient bursts; the run recovers on clean batches.",
)
def h335_grease_ice_raw_uint8_shard(ctx: Context) -> None:
    gen = seeded(33503)
    model = SlickResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == ONSET_GI:
            x = x.clone()
            x[:12] = torch.round(x[:12] * 255.0)
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _textures(gen, 32, 5, 3353),
        160,
        F.cross_entropy,
        classifier=True,
        alter=alter,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    before_l = _median(ls[ONSET_GI - 20 : ONSET_GI])
    ctx.check("the loss trained down before the shard", _fell(ls[:ONSET_GI], 10, 0.5))
    ctx.check("the loss at the shard is over 3x the median before it", ls[ONSET_GI] > 3 * before_l)
    ctx.check(
        "the gradient at the shard is over 5x the median before it",
        gs[ONSET_GI] > 5 * _median(gs[ONSET_GI - 20 : ONSET_GI]),
    )
    ctx.check(
        "the run recovers (last 10 under 2x the pre-shard median)", _mean(ls[-10:]) < 2 * before_l
    )


# -- wild rice: the resume re-initialises the head after loading the checkpoint -------------------


class RiceNet(Trunk):
    def init_head(self):
        """Meant to run once, when the model is built, before any checkpoint is loaded."""
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)


ONSET_WR = 120


@scenario(
    family="wild_rice_knocking_yield_gelu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=ONSET_WR,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the green-rice yield of a canoe's knocking pass through a wild-rice bed from ten standardised readings (stand density, water depth, days since the first ripe heads, wind), Adam at 3e-3, MSE, 220 steps. The job is pre-empted and resumes at step 120; the resume code loads the checkpoint into the rebuilt model and only then calls model.init_head(), which was meant to run before the load: the head's weights are reset to a fresh init (the trunk and the optimizer state are restored). The loss jumps back to its starting level for that step and Adam re-fits the head within a few dozen steps: a one-off loss spike the run recovers from.",
)
def h335_wild_rice_resume_head_reinit(ctx: Context) -> None:
    gen = seeded(33504)
    model = RiceNet(10, 64, act=nn.GELU)
    model.init_head()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    moved = {}

    def before(step):
        if step == ONSET_WR:
            ckpt = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(ckpt)
            model.init_head()  # the bug: after the load
            moved["head"] = float((model.head.weight.detach() - ckpt["head.weight"]).norm())
            moved["ref"] = float(ckpt["head.weight"].norm())

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3354), 220, F.mse_loss, before=before)
    ls = ctx.losses
    base = _median(ls[ONSET_WR - 20 : ONSET_WR])
    ctx.check(
        "the head's weights changed by over half their norm at the resume",
        moved["head"] > 0.5 * moved["ref"],
    )
    ctx.check("the loss trained down before the resume", _fell(ls[:ONSET_WR], 10, 0.3))
    ctx.check("the loss at the resume is over 4x the median before it", ls[ONSET_WR] > 4 * base)
    ctx.check(
        "it is back under 2x that median within 40 steps",
        min(ls[ONSET_WR + 1 : ONSET_WR + 40]) < 2 * base and _mean(ls[-10:]) < 2 * base,
    )


# -- turpentine still: hand-written decoupled weight decay with its sign flipped ------------------

WD_TP = 4.0  # and applied with the wrong sign


@scenario(
    family="turpentine_still_yield_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the spirits-of-turpentine yield of a copper still's run from eight standardised readings (gum grade, water ratio, fire temperature, run time), Adamax at 2e-3, MSE, 300 steps. The training script applies decoupled weight decay to the weight matrices by hand after optimizer.step(), written p.add_(p, alpha=lr * wd) instead of alpha=-lr * wd: every step multiplies the weights by 1 + lr*wd instead of shrinking them. Adamax's bounded steps hold the fit at first, then the weights outgrow them, the tanh units saturate and the head's scale inflates: the loss falls, then climbs slowly and steadily for the rest of the run without a single spike.",
)
def h335_turpentine_decay_sign_flip(ctx: Context) -> None:
    gen = seeded(33505)
    model = Trunk(8, 64, act=nn.Tanh)
    lr = 2e-3
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    decayed = [p for n, p in model.named_parameters() if n.endswith("weight")]
    w0 = float(torch.cat([p.detach().flatten() for p in decayed]).norm())
    norms = []

    def after(step):
        with torch.no_grad():
            for p in decayed:
                p.add_(p, alpha=lr * WD_TP)  # meant alpha=-lr * WD_TP
        norms.append(float(torch.cat([p.detach().flatten() for p in decayed]).norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3355), 300, F.mse_loss, after=after)
    ls = ctx.losses
    k = 10
    smooth = [_mean(ls[i : i + k]) for i in range(0, len(ls) - k + 1, k)]
    low = min(range(len(smooth)), key=smooth.__getitem__)
    ctx.check("the weights' norm grew over 2x", norms[-1] > 2 * w0)
    ctx.check("the smoothed loss reached its low before the run's middle", low * k < 150)
    ctx.check("and ends over 3x that low", smooth[-1] > 3 * smooth[low])
    ctx.check(
        "climbing slowly: no step over 3x the one before it after the low",
        all(b < 3 * a for a, b in zip(ls[low * k :], ls[low * k + 1 :], strict=False)),
    )
    ctx.check("all finite", _finite(ls))


# -- chicle tapping: a Poisson rate with an identity link and no clamp ----------------------------


DIV_CH = 124


class LatexNet(Trunk):
    """Predicts the rate of latex drips per minute from a zapote tree's zig-zag cut."""

    def forward(self, x):
        return self.head(self.features(x)).squeeze(-1)  # identity link: meant softplus(...) + eps


def _drips(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        rate = torch.exp(0.9 * torch.tanh(x @ w / math.sqrt(8)) + 0.5 * x[:, 1] - 0.3)
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(rate, y):
    return (rate - y * torch.log(rate) + torch.lgamma(y + 1)).mean()


@scenario(
    family="chicle_tapping_latex_drip_poisson_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("head",),
    diverges=DIV_CH,
    heldout=True,
    onset=DIV_CH,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the drip count a chiclero collects per minute from a zapote tree's zig-zag cut from eight standardised readings (trunk girth, rain the night before, cut depth, hour), Poisson NLL written by hand (rate - y log rate), RMSprop at 1e-4, 200 steps, head bias started at 2 drips. The rate comes straight from the head (identity link): the softplus and its clamp were left out. Early rates are all positive, but as the net learns the low-yield trees their predicted rate drifts below zero and log(rate) of a negative number is NaN: the loss is NaN at that step and the run stops.",
)
def h335_chicle_unclamped_poisson_rate(ctx: Context) -> None:
    gen = seeded(33506)
    model = LatexNet(8, 64)
    with torch.no_grad():
        model.head.bias.fill_(2.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    lows = []

    def watch(step, out, x, y):
        lows.append(float(out.detach().min()))

    n = _loop(ctx, model, opt, _drips(gen, 64, 3356), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the step it stops", bad == n - 1 and math.isnan(ctx.losses[-1]))
    ctx.check("a predicted rate is negative at that step", lows[-1] < 0)
    ctx.check("every rate was positive at the start", min(lows[:10]) > 0)
    ctx.check("the run stops at the declared step", bad == DIV_CH)


# -- airship mooring: kN converted to N inside the fp16 autocast region ---------------------------


DIV_AS = 135


class MooringNet(Trunk):
    """Predicts the mooring-line pull in kN; the forward reports newtons for the mast's log."""

    def forward(self, x):
        kn = self.head(self.features(x)).squeeze(-1)
        return kn * 1000.0  # under autocast this is fp16: over 65.504 kN it is inf


def _moorings(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        kn = 44.0 + 12.0 * torch.tanh(x @ w / math.sqrt(8)) + 5.0 * x[:, 0]
        yield x, 1000.0 * (kn + 0.5 * torch.randn(batch, generator=gen))


@scenario(
    family="airship_mooring_line_pull_fp16_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("head",),
    diverges=DIV_AS,
    heldout=True,
    onset=DIV_AS,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the pull on an airship's mooring line at the mast from eight standardised readings (gust speed, envelope temperature, ballast, heading offset), NAdam at 3e-3, fp16 autocast with a torch.amp.GradScaler (initial scale 2^10), MSE in kN^2, 200 steps, head bias started at 44 kN. The head predicts kilonewtons and the forward converts to newtons for the mast's log (kn * 1000) inside the autocast region, so the product is fp16: once the net learns the strongest gusts (over 65.504 kN) their prediction overflows fp16's 65504 to inf and the loss is inf at that step (the same batch in fp32 is finite); the run stops there.",
)
def h335_airship_kn_to_newton_fp16(ctx: Context) -> None:
    gen = seeded(33507)
    model = MooringNet(8, 64, act=nn.GELU)
    with torch.no_grad():
        model.head.bias.fill_(44.0)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    last = {}

    def watch(step, out, x, y):
        last["x"] = x

    def loss_fn(out, y):
        return F.mse_loss(out, y) / 1e6

    n = _loop(
        ctx,
        model,
        opt,
        _moorings(gen, 64, 3357),
        200,
        loss_fn,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is inf at the step it stops", bad == n - 1 and math.isinf(ctx.losses[-1]))
    with torch.no_grad():
        fp32 = model(last["x"])
    ctx.check(
        "the same batch in fp32 is finite with a prediction over 65504 N",
        bool(torch.isfinite(fp32).all()) and float(fp32.max()) > 65504.0,
    )
    ctx.check(
        "every loss before was finite", bad is not None and bad > 10 and _finite(ctx.losses[:-1])
    )
    ctx.check("the run stops at the declared step", bad == DIV_AS)


# -- figure skating: the softmax temperature typed 0.002 for 0.2 ----------------------------------

TEMP_FS = 0.002  # meant 0.2


class JumpNet(Trunk):
    """Classifies a figure-skating jump (axel, lutz, flip, loop, salchow, toe loop)."""

    def forward(self, x):
        return self.head(self.features(x)) / TEMP_FS


@scenario(
    family="figure_skating_jump_type_tempered_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying a figure skater's jump into six types (axel, lutz, flip, loop, salchow, toe loop) from twelve standardised boot-sensor readings (take-off edge, toe-pick force, rotation rate, air time), AdamW at 1e-3 with weight decay 0.01, cross-entropy, 160 steps. The logits are divided by a temperature meant to be 0.2 and typed 0.002: the scaled logits are hundreds apart, so the float32 softmax rounds to exactly 1.0 for the top class and exactly 0 for the rest for most rows from the first step; the correctly classified rows' gradient is exactly zero and the misclassified rows' loss is in the hundreds.",
)
def h335_figure_skating_temperature_typo(ctx: Context) -> None:
    gen = seeded(33508)
    model = JumpNet(12, 64, out=6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    saturated, collapsed, meant = [], [], []

    def watch(step, out, x, y):
        p = torch.softmax(out.detach(), -1)
        saturated.append(float((p.max(-1).values == 1.0).float().mean()))
        collapsed.append(collapsed_fraction(out.detach(), y))
        meant.append(
            float(
                (torch.softmax(out.detach() * TEMP_FS / 0.2, -1).max(-1).values == 1.0)
                .float()
                .mean()
            )
        )

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 3358, spread=1.2),
        160,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows have a top probability of exactly 1.0 at step 0", saturated[0] > 0.5
    )
    ctx.check(
        "over half the rows give the target exactly 1.0 at the end", _mean(collapsed[-10:]) > 0.5
    )
    ctx.check("with the meant temperature no row would saturate", max(meant) < 0.05)
    ctx.check("the misclassified rows keep the loss high", _mean(ctx.losses[-10:]) > 1.0)


# -- rake maker: the trunk param group's lr typed 3e-9 for 3e-3 -----------------------------------


@scenario(
    family="rake_maker_tine_spacing_two_group_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the ideal tine spacing of a wooden hay rake from ten standardised readings (hay type, ash-stave moisture, head length, the raker's height), RAdam with two parameter groups, MSE, 200 steps. The trunk group (fc1, fc2) is meant to train at 3e-3 and is typed 3e-9 while the head group trains at 3e-3: the trunk's update-to-weight ratio is about 1e-9, its weights move by under a millionth of their norm over the run, and only the head fits the frozen random features (the loss falls a little and stalls).",
)
def h335_rake_maker_trunk_group_lr_typo(ctx: Context) -> None:
    gen = seeded(33509)
    model = Trunk(10, 64, act=nn.SiLU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RAdam(
        [{"params": trunk, "lr": 3e-9}, {"params": model.head.parameters(), "lr": 3e-3}]
    )
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3359), 200, F.mse_loss)

    def rel(name):
        p = dict(model.named_parameters())[name].detach()
        return float((p - w0[name]).norm() / w0[name].norm())

    ctx.check(
        "fc1 and fc2 moved under 1e-5 of their norm",
        max(rel("fc1.weight"), rel("fc2.weight")) < 1e-5,
    )
    ctx.check("the head moved over 20% of its norm", rel("head.weight") > 0.2)
    ctx.check("finite", _finite(ctx.losses))


# -- sundew: the accumulation tail branch multiplies instead of dividing for one step -------------

ACC_SD = 6
ONSET_SD = 110


@scenario(
    family="sundew_tentacle_closure_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SD,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting whether a sundew leaf's tentacles close over prey within ten minutes from ten standardised readings (prey mass, movement, temperature, humidity, leaf age), plain SGD at 0.05, BCE with logits, gradient accumulation over 6 micro-batches, 200 steps. The step at the end of the first pass over the data (step 110) goes through a separate tail branch that writes loss * accum instead of loss / accum: that one step's gradient and update are 36x the usual; the run carries on and recovers without a lasting trace.",
)
def h335_sundew_accum_tail_multiplies(ctx: Context) -> None:
    gen = seeded(33510)
    model = Trunk(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    raw = _readings(gen, 32, 10, 33510)

    def batches():
        for x, y in raw:
            yield x, (y > 0.0).float()

    def backprop(step, micro, loss):
        if step == ONSET_SD:
            return loss * ACC_SD  # meant loss / ACC_SD
        return loss / ACC_SD

    prev = [torch.cat([p.detach().flatten() for p in model.parameters()])]
    moves = []

    def after(step):
        now = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    _loop(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        accumulate=ACC_SD,
        after=after,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    base = _median(gs[ONSET_SD - 20 : ONSET_SD])
    ctx.check("the gradient at the onset is over 20x the median before", gs[ONSET_SD] > 20 * base)
    ctx.check("the loss trained down before", _fell(ls[:ONSET_SD], 10, 0.7))
    ctx.check(
        "the weights' update at the onset is over 20x the median update before",
        moves[ONSET_SD] > 20 * _median(moves[ONSET_SD - 20 : ONSET_SD]),
    )
    ctx.check(
        "it recovers (last 10 under 1.3x the median before)",
        _mean(ls[-10:]) < 1.3 * _median(ls[ONSET_SD - 20 : ONSET_SD]),
    )


# -- controls -------------------------------------------------------------------------------------


class BallIceNet(nn.Module):
    """conv1 + bn1, conv2 + bn2, pool, head: sizes ball-ice stones from a shoreline frame."""

    def __init__(self, classes=4, ch=12):
        super().__init__()
        self.conv1 = nn.Conv2d(1, ch, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch)
        self.conv2 = nn.Conv2d(ch, 2 * ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * ch)
        self.head = nn.Linear(2 * ch * 16, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


@scenario(
    family="ball_ice_shoreline_size_bn_cnn",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Control: a hand-written BatchNorm CNN (conv1 + bn1, conv2 + bn2, pooling, head) sorting 16x16 generated frames of a lake shoreline's ball ice into four size classes, SGD momentum 0.9 at 0.05 with weight decay 5e-4, a MultiStepLR (x0.1 at steps 80 and 130), cross-entropy, batch 32, 160 steps; every 20 steps it switches to eval mode (running BatchNorm statistics) to score a held-out batch, then back to train mode.",
)
def h335_ball_ice_bn_multistep(ctx: Context) -> None:
    gen = seeded(33511)
    model = BallIceNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80, 130], gamma=0.1)
    held = next(_textures(torch.Generator().manual_seed(33591), 256, 4, 3361))
    accs = []

    def after(step):
        if step % 20 == 19:
            model.eval()
            with torch.no_grad():
                accs.append(float((model(held[0]).argmax(-1) == held[1]).float().mean()))
            model.train()

    _loop(
        ctx,
        model,
        opt,
        _textures(gen, 32, 4, 3361),
        160,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        after=after,
    )
    ctx.check("the loss fell and stayed finite", _fell(ctx.losses, 10, 0.5))
    ctx.check("held-out accuracy in eval mode over 0.8 at the end", accs[-1] > 0.8)
    ctx.check("the lr was decayed twice", abs(opt.param_groups[0]["lr"] - 0.05 * 0.01) < 1e-9)


@scenario(
    family="naval_stores_gum_dip_yield_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Control: a hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the barrels of crude gum dipped from a longleaf pine stand per streaking round from ten standardised noisy readings (streak height, acid spray, faces per tree, weather), Adagrad at 0.05, Huber loss (delta 0.5), gradient accumulation over 2 micro-batches, gradient clipping at 1.0, a ReduceLROnPlateau on a held-out batch's loss (patience 15, factor 0.5), 200 steps.",
)
def h335_naval_stores_adagrad_plateau(ctx: Context) -> None:
    gen = seeded(33512)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    held = next(_readings(torch.Generator().manual_seed(33592), 256, 10, 3362, noise=0.2))

    def huber(out, y):
        return F.huber_loss(out, y, delta=0.5)

    def plateau():
        with torch.no_grad():
            return float(huber(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 3362, noise=0.2),
        200,
        huber,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("the loss fell and stayed finite", _fell(ctx.losses, 10, 0.6))
    ctx.check("the held-out loss is under half its start", plateau() < 0.5 * ctx.losses[0])


class HammerSwingNet(nn.Module):
    """conv1, conv2 (ReLU, stride), pool, head over three-axis wire-handle accelerometer traces."""

    def __init__(self, classes=5, ch=16):
        super().__init__()
        self.conv1 = nn.Conv1d(3, ch, 5, padding=2)
        self.conv2 = nn.Conv1d(ch, 2 * ch, 5, stride=2, padding=2)
        self.head = nn.Linear(2 * ch, classes)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(x.mean(-1))


@scenario(
    family="highland_games_hammer_swing_fp16_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a hand-written Conv1d classifier (conv1, conv2, pooling, head) telling five Highland-games hammer-throw wind-up styles apart from three-axis accelerometer traces in the hammer's handle, Adam with a OneCycleLR (max 2e-2), cross-entropy with label smoothing 0.1, fp16 autocast with a torch.amp.GradScaler, 150 steps.",
)
def h335_highland_hammer_onecycle_amp(ctx: Context) -> None:
    gen = seeded(33513)
    model = HammerSwingNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    hits = []

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    def watch(step, out, x, y):
        hits.append(float((out.detach().argmax(-1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _tones(gen, 32, 5, 3363),
        150,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        watch=watch,
    )
    ctx.check("the loss fell and stayed finite", _fell(ctx.losses, 10, 0.6))
    ctx.check("training accuracy over 0.8 at the end", _mean(hits[-10:]) > 0.8)
