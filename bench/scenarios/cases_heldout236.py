"""Held-out set 236 (``h236_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a pigeon-racing homing-velocity regressor fed one loft's
clock shard in seconds where minutes were meant, a millwright millstone-dress tanh regressor whose
OneCycleLR max_lr was typed 2.5 for 0.25, a papermaking sheet-formation depthwise-separable CNN
started at lr 0.3 for 3e-3 whose pointwise ReLUs die, a darbuka stroke conv1d under fp16 autocast
whose GradScaler growth interval was typed 1 for 2000, a cheese-affineur rind-ripeness Laplace-NLL
net whose scale head lost its softplus (log of a negative scale), a horse-logging skid-pull GRU
regressor whose recurrent cell's param group got lr 3e-9 for 3e-4, an anchor-ice build-up Elman RNN
whose recurrent init gain was typed 2.5 for 1, a pit-sawyer kerf-drift GELU regressor whose one
replay step sums a batch's losses, an elephant-polo shot-type classifier trained with nll_loss on
raw logits, an organ-pipe voicing SiLU regressor whose resume step skips a static loss scale's
unscale under Adam with beta2 0.9999, and three controls (a cello wolf-tone Gaussian-NLL net, an
osier rod-grade label-smoothed classifier, a fog-horn signal tied autoencoder).

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
    amp=False,
    accumulate=1,
    scale_loss=None,
    alter=None,
    unscale=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``unscale(step)`` runs between backward and the optimizer
    step, ``after(step)`` runs after the optimizer step; ``amp``: fp16 autocast; stops after
    logging a NaN loss."""
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
            loss = loss_fn(out.float() if torch.is_tensor(out) else out, y)
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


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# -- pigeon racing: one loft's results exported in raw metres per minute ---------------------------


def _homing(gen, batch, seed=1):
    """Ten standardised readings of a racing pigeon's release (distance, wind along the line of
    flight, release temperature, bird's age, ...) and its homing velocity, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="pigeon_racing_homing_velocity_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=140,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a racing pigeon's homing velocity from 10 standardised readings (race distance, wind along the line of flight, release temperature, ...), Adam at 1e-3, MSE, gradient norm clipped at 1. The batch at step 140 comes from one loft whose results file was exported without the standardisation step, so its targets are raw velocities in metres per minute (around 1000-1500) instead of standard units: that batch's loss is over 1e4x the usual and its gradient hundreds of times the usual; clipping keeps the step to the usual size and the loss is back at its level within a few dozen steps; finite.",
)
def h236_pigeon_racing_raw_velocity_loft(ctx: Context) -> None:
    gen = seeded(23601)
    onset = 140
    model = Stack(10, hidden=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sizes = []

    def alter(step, x, y):
        if step == onset:
            y = 1250.0 + 150.0 * y  # metres per minute, never standardised
        sizes.append(float(y.abs().max()))
        return x, y

    _train(ctx, model, opt, _homing(gen, 64), 260, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("targets at the onset over 100x the usual", sizes[onset] > 100 * _median(sizes))
    ctx.check(
        "loss at the onset over 1e4x the median before", ls[onset] > 1e4 * _median(ls[110:140])
    )
    ctx.check(
        "gradient at the onset over 100x the median before", gn[onset] > 100 * _median(gn[110:140])
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check(
        "loss back within 2x its level (steps 220-260)", _mean(ls[220:]) < 2 * _mean(ls[120:140])
    )
    ctx.check("finite", _finite(ls))


# -- millwright: a OneCycleLR max_lr typed 2.5 for 0.25 -------------------------------------------


def _dress(gen, batch, seed=2):
    """Twelve standardised readings of a dressed millstone (furrow depth, land width, harp
    count, stone speed, ...) and the flour's fineness, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="millwright_millstone_dress_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=72,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing flour fineness from 12 standardised readings of a dressed millstone (furrow depth, land width, harp count, stone speed, ...), plain SGD, MSE, under a OneCycleLR (no momentum cycling, 1000 steps, warm-up over the first 30%) whose max_lr was typed 2.5 for 0.25. The warm-up raises the rate from 0.1 towards 2.5; lr x sharpness (power iteration on a fixed batch) is about 0.4 at the start and passes 2 at about step 72, and the loss, which had been falling, rises and oscillates at the edge and blows up to inf within about 40 steps.",
)
def h236_millwright_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(23602)
    onset = 72
    model = Stack(12, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2.5, total_steps=1000, pct_start=0.3, cycle_momentum=False
    )
    probe = next(_dress(torch.Generator().manual_seed(4646), 256))
    record = {}

    def before(step):
        if step <= 150 and step % 2 == 0:
            lr = opt.param_groups[0]["lr"]
            record[step] = lr * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _dress(gen, 64), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(v for v in ls[:onset] if math.isfinite(v))
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    crossed = next((s for s in sorted(record) if record[s] > 2), None)
    ctx.check("loss fell before the onset", _fell(ls[:onset], k=5, ratio=0.7))
    ctx.check("lr x sharpness under 2 at the start", record[0] < 2)
    ctx.check(
        "lr x sharpness first over 2 within 6 steps of the onset",
        crossed is not None and abs(crossed - onset) <= 6,
    )
    ctx.check(
        "loss blows up (100x its low) within 40 steps after the onset",
        broke is not None and onset < broke < onset + 40,
    )


# -- papermaking: a depthwise-separable CNN started at lr 0.3 for 3e-3 ----------------------------


class DSConv(nn.Module):
    """A depthwise 3x3 convolution followed by a pointwise 1x1 convolution and a ReLU."""

    def __init__(self, c_in, c_out, stride=1):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, stride=stride, padding=1, groups=c_in)
        self.pointwise = nn.Conv2d(c_in, c_out, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.pointwise(self.depthwise(x)))


class SheetNet(nn.Module):
    def __init__(self, classes=5, width=16):
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.block1 = DSConv(width, 2 * width, stride=2)
        self.block2 = DSConv(2 * width, 4 * width, stride=2)
        self.head = nn.Linear(4 * width, classes)

    def features(self, x):
        return self.block2(self.block1(F.relu(self.stem(x))))

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def _sheets(gen, batch, classes=5):
    """16x16 transmitted-light scans of handmade paper: the mould's laid and chain lines, wove
    texture or a watermark patch, one kind per mould (five moulds), with fibre noise."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    freqs = torch.tensor([0.6, 1.2, 0.9, 1.6, 0.4])
    angles = torch.tensor([0.0, 0.0, 1.57, 0.8, 2.3])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = freqs[y][:, None, None] * (1 + 0.1 * torch.randn(batch, 1, 1, generator=gen))
        a = angles[y][:, None, None] + 0.15 * torch.randn(batch, 1, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, 1, generator=gen)
        img = torch.sin(f * (xx * torch.cos(a) + yy * torch.sin(a)) + ph)
        img = img + 0.8 * torch.randn(batch, 16, 16, generator=gen)
        yield img.unsqueeze(1), y


@scenario(
    family="papermaking_sheet_formation_dsconv_classifier",
    optimizer="AdamW",
    cause="loss_of_plasticity",
    where=("block2.pointwise",),
    diverges=None,
    heldout=True,
    note="A depthwise-separable CNN (stem 3x3 conv; block1 and block2 each a depthwise 3x3 conv, a pointwise 1x1 conv and a ReLU; global average pool; head) naming which of five moulds formed a sheet of handmade paper from a 16x16 transmitted-light scan (laid and chain lines, wove texture, ...), AdamW, cross-entropy. The rate was typed 0.3 for 3e-3: the first few AdamW steps move every weight by about 0.3, block2's pointwise convolution is thrown negative and its ReLU channels stop firing: all of them dead on the batch from step 40 on (a third at init, about a fifth with the intended rate), and they never come back; the loss stays near chance (log 5) while the same run at 3e-3 learns; finite.",
)
def h236_papermaking_dsconv_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, lr):
        gen = seeded(23603)
        model = SheetNet()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
        dead = {}

        def watch(step, out, x, y):
            with torch.no_grad():
                h1 = model.block1(F.relu(model.stem(x)))
                dead[step] = (dead_fraction(h1), dead_fraction(model.block2(h1)))

        _train(
            c, model, opt, _sheets(gen, 64), steps, F.cross_entropy, classifier=True, watch=watch
        )
        return dead

    twin = _Quiet()
    twin_dead = run(twin, lr=3e-3)  # the intended rate, for the checks only
    dead = run(ctx, lr=0.3)
    ls = ctx.losses
    late = [dead[s][1] for s in range(40, steps)]
    ctx.check("under half of block2's channels dead at the start", dead[0][1] < 0.5)
    ctx.check("over 95% of block2's channels dead at every step from 40 on", min(late) > 0.95)
    ctx.check(
        "with the intended rate under 30% dead (steps 150-200)",
        _mean([twin_dead[s][1] for s in range(150, steps)]) < 0.3,
    )
    ctx.check("loss near chance at the end (over 0.9 log 5)", _mean(ls[-20:]) > 0.9 * math.log(5))
    ctx.check(
        "the intended rate learns (loss under half of log 5 at the end)",
        _mean(twin.losses[-20:]) < 0.5 * math.log(5),
    )
    ctx.check("finite", _finite(ls))


# -- darbuka: a GradScaler whose growth interval was typed 1 for 2000 ----------------------------


class StrokeConv(nn.Module):
    def __init__(self, classes=4, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 9, padding=4)
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x.unsqueeze(1)))
        h = F.max_pool1d(h, 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _darbuka(gen, batch, length=128, classes=4):
    """A darbuka's contact-mic signal, 128 samples: doum (low, long), tek (high, short), ka
    (high, damped) and slap (broadband burst), with room noise."""
    t = torch.arange(length, dtype=torch.float32)
    pitch = torch.tensor([0.12, 0.45, 0.5, 0.3])
    decay = torch.tensor([0.02, 0.08, 0.15, 0.05])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = pitch[y][:, None] * (1 + 0.1 * torch.randn(batch, 1, generator=gen))
        d = decay[y][:, None]
        start = torch.randint(0, 24, (batch, 1), generator=gen).float()
        tt = (t - start).clamp(min=0)
        sig = torch.sin(f * tt * 6.28) * torch.exp(-d * tt) * (t >= start)
        burst = (
            (y == 3)[:, None]
            * 0.8
            * torch.randn(batch, length, generator=gen)
            * torch.exp(-0.1 * tt)
        )
        yield sig + burst + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="darbuka_stroke_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("head", "conv1"),
    diverges=None,
    heldout=True,
    note="A conv1d classifier (conv1, conv2, mean pool, head) naming a darbuka stroke (doum, tek, ka, slap) from 128 samples of a contact-mic signal, AdamW at 2e-3, cross-entropy, fp16 autocast with a torch.amp.GradScaler whose growth_interval was typed 1 for 2000. The scale doubles after every good step, so within a few steps the scaled loss's fp16 gradients overflow to inf in the fp16 backward on about every other step (the head's gradient, its bias's fp16 sum over the batch first, on almost every such step, conv1's bias on a few): the scaler skips that step and halves the scale, then doubles it again. About half of all steps are skipped for the rest of the run; the loss still falls, but slower than with the intended interval; finite.",
)
def h236_darbuka_scaler_growth_interval_typo(ctx: Context) -> None:
    steps = 160

    def run(c, interval):
        gen = seeded(23604)
        model = StrokeConv()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
        scaler = torch.amp.GradScaler("cpu", growth_interval=interval)
        skipped, head_inf, conv1_inf = [], [], []

        def unscale(step):
            for m, into in ((model.head, head_inf), (model.conv1, conv1_inf)):
                into.append(not all(bool(torch.isfinite(p.grad).all()) for p in m.parameters()))
            skipped.append(sum(v.item() for v in scaler._found_inf_per_device(opt).values()) > 0)

        _train(
            c,
            model,
            opt,
            _darbuka(gen, 32),
            steps,
            F.cross_entropy,
            classifier=True,
            scaler=scaler,
            amp=True,
            unscale=unscale,
        )
        return skipped, head_inf, conv1_inf

    twin = _Quiet()
    twin_skipped, _, _ = run(twin, interval=2000)  # the intended interval, for the checks only
    skipped, head_inf, conv1_inf = run(ctx, interval=1)
    on_skips = [(h, c) for h, c, s in zip(head_inf, conv1_inf, skipped, strict=True) if s]
    ls = ctx.losses
    ctx.check("over 40% of steps 20-160 skipped on an fp16 overflow", _mean(skipped[20:]) > 0.4)
    ctx.check(
        "the head's or conv1's gradient is inf on every skipped step",
        bool(on_skips) and all(h or c for h, c in on_skips),
    )
    ctx.check(
        "the head's gradient is inf on over 90% of skipped steps",
        _mean([float(h) for h, _ in on_skips]) > 0.9,
    )
    ctx.check("the scale never settles (it halves and doubles)", len(set(ctx.scales[-20:])) >= 2)
    ctx.check("with the intended interval under 5% skipped", _mean(twin_skipped) < 0.05)
    ctx.check("loss fell", _fell(ls, ratio=0.9))
    ctx.check(
        "loss at the end over the intended interval's",
        _mean(ls[-20:]) > 1.05 * _mean(twin.losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- cheese affineur: a Laplace scale head that lost its softplus ---------------------------------


class RindNet(nn.Module):
    """A SiLU trunk with two heads: the ripeness score's location and its Laplace scale."""

    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.loc = nn.Linear(hidden, 1)
        self.scale = nn.Linear(hidden, 1)
        nn.init.constant_(self.scale.bias, 1.0)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.loc(h), self.scale(h)], -1)  # softplus on the scale was dropped


def _laplace_nll(out, y):
    loc, b = out[:, 0], out[:, 1]
    return (torch.log(2 * b) + (y - loc).abs() / b).mean()


def _rinds(gen, batch, seed=5):
    """Twelve standardised readings of a cheese in the cave (rind colour, humidity, days
    turned, tap tone, ...) and the affineur's ripeness score, standardised, with noise that
    depends on the readings."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    v = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        mean = torch.tanh(x @ w / math.sqrt(12))
        spread = 0.05 + 0.3 * torch.sigmoid(x @ v / math.sqrt(12))
        noise = torch.distributions.Laplace(0.0, 1.0).sample((batch,))
        yield x, mean + spread * noise


@scenario(
    family="cheese_affineur_rind_ripeness_laplace_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("scale",),
    diverges=34,
    heldout=True,
    note="A SiLU MLP (fc1, fc2) with two linear heads (loc, scale) regressing an affineur's ripeness score for a cheese in the cave from 12 standardised readings (rind colour, humidity, days turned, ...), NAdam at 1e-3, Laplace NLL log(2b) + |y - loc| / b. The softplus on the scale head's output was dropped in a refactor (no clamp either), the scale starts near 1 and the NLL pulls it down towards the small true spreads; at step 34 one sample's scale crosses 0 and log(2b) of a negative is NaN: the loss is NaN at that step and the run stops.",
)
def h236_cheese_affineur_scale_no_softplus(ctx: Context) -> None:
    gen = seeded(23605)
    model = RindNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    seen = {}

    def watch(step, out, x, y):
        if "bad" not in seen and not math.isfinite(float(_laplace_nll(out.detach().float(), y))):
            seen["bad"] = step
            seen["min_scale"] = float(out[:, 1].detach().min())
            seen["loc_finite"] = bool(torch.isfinite(out[:, 0]).all())

    _train(ctx, model, opt, _rinds(gen, 64), 300, _laplace_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes NaN at step 34", bad == 34 and math.isnan(ls[bad]))
    ctx.check("a scale at or below 0 at that step", seen.get("min_scale", 1.0) <= 0.0)
    ctx.check("the location head still finite at that step", seen.get("loc_finite") is True)
    ctx.check("the loss first went bad at that step", seen.get("bad") == bad)
    ctx.check(
        "loss fell and was finite before", bad is not None and bad > 30 and _fell(ls[:bad], k=10)
    )


# -- horse logging: a GRU cell's param group got 3e-9 for 3e-4 -----------------------------------


class SkidGRU(nn.Module):
    """A hand-unrolled GRU cell over a skid's force trace, a head on the last state."""

    def __init__(self, d_in=3, hidden=32):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.cell = nn.GRUCell(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        for t in range(x.shape[1]):
            h = self.cell(torch.tanh(self.inp(x[:, t])), h)
        return self.head(h).squeeze(-1)


def _skids(gen, batch, length=20, seed=6):
    """A horse-logging skid: 20 readings of the trace chain's force, the slope and the ground
    (three channels), and the log's travel time to the landing, standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, length, 3, generator=gen).cumsum(1) / 3
        y = torch.tanh(x[:, -5:] @ w).mean(1) + 0.5 * torch.tanh(x[:, :, 0].mean(1))
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="horse_logging_skid_time_gru_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="A GRU regressor (inp, a hand-unrolled GRUCell cell, head) predicting a horse-logging skid's travel time to the landing from 20 steps of chain force, slope and ground readings, RMSprop with one param group per module: inp and head at 3e-4, the recurrent cell meant at 3e-4 typed 3e-9. The cell's weights barely move (relative update per step over 1000x smaller than the head's), the loss falls only as far as the input projection and head alone can take it and ends well above the same run with the intended rate; finite.",
)
def h236_horse_logging_cell_group_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, cell_lr):
        gen = seeded(23606)
        model = SkidGRU()
        opt = torch.optim.RMSprop(
            [
                {"params": model.inp.parameters(), "lr": 3e-4},
                {"params": model.cell.parameters(), "lr": cell_lr},
                {"params": model.head.parameters(), "lr": 3e-4},
            ]
        )
        ratios = {"cell": [], "head": []}
        prev = {}

        def weight(name):
            m = getattr(model, name)
            return m.weight_hh if name == "cell" else m.weight

        def before(step):
            for name in ratios:
                prev[name] = weight(name).detach().clone()

        def after(step):
            for name in ratios:
                w = weight(name).detach()
                ratios[name].append(float((w - prev[name]).norm() / w.norm()))

        _train(c, model, opt, _skids(gen, 32), steps, F.mse_loss, before=before, after=after)
        return ratios

    twin = _Quiet()
    run(twin, cell_lr=3e-4)  # the intended rate, for the checks only
    ratios = run(ctx, cell_lr=3e-9)
    ls = ctx.losses
    head = _median(ratios["head"])
    ctx.check(
        "the cell's relative update under 1/1000 of the head's",
        _median(ratios["cell"]) < head / 1000,
    )
    ctx.check("the head's relative update over 1e-4 per step", head > 1e-4)
    ctx.check(
        "loss at the end over 1.5x that of the intended rate",
        _mean(ls[-30:]) > 1.5 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- anchor ice: an Elman RNN whose recurrent init gain was typed 2.5 for 1 -----------------------


class AnchorIceRNN(nn.Module):
    """A hand-written Elman RNN: h = tanh(inp(x_t) + rec(h)), a head on the last state."""

    def __init__(self, d_in=4, hidden=48, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
        return self.head(h).squeeze(-1)


def _river(gen, batch, length=40, seed=7):
    """Forty hourly readings of a river reach in winter (water temperature, air temperature,
    wind, cloud cover) and the anchor-ice build-up on the bed by dawn, standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh((x[:, -8:] @ w).mean(1)) + 0.3 * x[:, :, 1].mean(1)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="anchor_ice_buildup_elman_rnn",
    optimizer="SGD (Nesterov)",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written Elman RNN (inp, rec: h = tanh(inp(x_t) + rec(h)), head on the last state) regressing the anchor-ice build-up on a river bed by dawn from 40 hourly readings (water and air temperature, wind, cloud cover), SGD Nesterov at 0.1 with momentum 0.9, MSE, no clipping. The recurrent weight's orthogonal init gain was typed 2.5 for 1: back-propagated through 40 steps the gradient grows through time (the gradient reaching the first steps' hidden states far larger than the last's), the rec weight's gradient is hundreds of times that of the intended init, and within a few dozen steps the loss blows up (the same run with gain 1 trains).",
)
def h236_anchor_ice_recurrent_gain_typo(ctx: Context) -> None:
    gen = seeded(23607)
    model = AnchorIceRNN(gain=2.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    seen = {}
    batches = _river(gen, 32)
    probe = next(_river(torch.Generator().manual_seed(4747), 32))

    def through_time(m):
        x, y = probe
        hs = []
        h = torch.zeros(x.shape[0], m.rec.out_features)
        for t in range(x.shape[1]):
            h = torch.tanh(m.inp(x[:, t]) + m.rec(h))
            h.retain_grad()
            hs.append(h)
        F.mse_loss(m.head(h).squeeze(-1), y).backward()
        out = [float(v.grad.norm()) for v in hs], float(m.rec.weight.grad.norm())
        m.zero_grad()
        return out

    seen["bad"], seen["bad_rec"] = through_time(model)
    torch.manual_seed(23607)
    seen["good"], seen["good_rec"] = through_time(AnchorIceRNN(gain=1.0))
    _train(ctx, model, opt, batches, 150, F.mse_loss)
    ls = ctx.losses
    twin = _Quiet()
    gen = seeded(23607)
    fixed = AnchorIceRNN(gain=1.0)  # the intended init, for the checks only
    opt = torch.optim.SGD(fixed.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    _train(twin, fixed, opt, _river(gen, 32), 150, F.mse_loss)
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * ls[0]), None)
    ctx.check(
        "gradient on the first hidden state over 100x that on the last",
        seen["bad"][0] > 100 * seen["bad"][-1],
    )
    ctx.check(
        "with the intended gain it shrinks back through time", seen["good"][0] < seen["good"][-1]
    )
    ctx.check(
        "rec's gradient over 100x that of the intended init",
        seen["bad_rec"] > 100 * seen["good_rec"],
    )
    ctx.check(
        "loss blows up (non-finite or 100x) within 60 steps", broke is not None and broke < 60
    )
    ctx.check("with the intended gain the loss falls, finite", _fell(twin.losses, ratio=0.5))


# -- pit sawyer: a hard-example replay step whose loss helper sums over the batch ----------------


def _kerf(gen, batch, seed=8):
    """Ten standardised readings of a pit-saw stroke (log diameter, saw set, tooth pitch, the
    top sawyer's stroke rate, ...) and the kerf's drift from the chalk line, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="pit_sawyer_kerf_drift_gelu_regressor",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the drift of a pit saw's kerf from the chalk line from 10 standardised readings (log diameter, saw set, tooth pitch, stroke rate, ...), SGD at 0.02 with momentum 0.9, MSE, gradient accumulation over 2 micro-batches of 128. At step 110 the loop runs its hard-example replay, whose loss helper was written with reduction='sum' (the main loop's is the mean): the replayed micro-batches are ordinary, but that one step's gradient is 128x the usual. The step and the momentum it leaves throw the weights off, the loss jumps for a few steps and the run recovers; finite.",
)
def h236_pit_sawyer_replay_sum_reduction(ctx: Context) -> None:
    gen = seeded(23608)
    onset, micro = 110, 128
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def scale_loss(step, total):
        return total * micro if step == onset else total  # the replay helper sums

    _train(
        ctx,
        model,
        opt,
        _kerf(gen, micro),
        240,
        F.mse_loss,
        accumulate=2,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 60x the median before", gn[onset] > 60 * _median(gn[90:110])
    )
    ctx.check(
        "loss at the onset within 2x its level (the batch is ordinary)",
        ls[onset] < 2 * _mean(ls[95:110]),
    )
    ctx.check(
        "loss after the kick over 2x its level before", max(ls[111:120]) > 2 * _mean(ls[95:110])
    )
    ctx.check(
        "loss back within 1.5x its level (steps 200-240)", _mean(ls[200:]) < 1.5 * _mean(ls[95:110])
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- elephant polo: nll_loss fed raw logits ---------------------------------------------------------


def _shots(gen, batch, seed=9):
    """Sixteen standardised readings of an elephant-polo shot (mallet angle, elephant's pace,
    ball lie, rider's reach, ...) and the shot kind (six: drive, cut, pull, tap, near-side,
    off-side)."""
    return _kinds(gen, batch, 16, 6, seed, noise=0.5)


@scenario(
    family="elephant_polo_shot_type_raw_nll_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming an elephant-polo shot (drive, cut, pull, tap, near-side, off-side) from 16 standardised readings, Adamax at 2e-3. The loss is F.nll_loss on the head's raw logits (the log_softmax was left out when the head was rewritten), so it is minus the target's raw logit: nothing bounds it, the head pushes the target logits up and the others down without end (logit size over 20x its early value, still growing), and the loss falls through 0 and keeps falling; finite over the run.",
)
def h236_elephant_polo_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(23609)
    model = Stack(16, hidden=64, out=6)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sizes, acc = {}, {}

    def watch(step, out, x, y):
        sizes[step] = float(out.detach().abs().max(1).values.mean())
        acc[step] = float((out.detach().argmax(1) == y).float().mean())

    _train(ctx, model, opt, _shots(gen, 64), 260, F.nll_loss, classifier=True, watch=watch)
    ls = ctx.losses
    early = _mean([sizes[s] for s in range(5, 15)])
    late = _mean([sizes[s] for s in range(240, 260)])
    ctx.check("head logits grew over 20x from steps 5-15 to the end", late > 20 * early)
    ctx.check(
        "head logits still growing at the end",
        late > 1.1 * _mean([sizes[s] for s in range(200, 220)]),
    )
    ctx.check("loss below -20 at the end", _mean(ls[-10:]) < -20)
    ctx.check("finite", _finite(ls))


# -- organ voicing: a static loss scale left undivided on resume, under Adam with beta2 0.9999 ----


def _voicing(gen, batch, seed=10):
    """Twelve standardised measurements of an organ flue pipe being voiced (cut-up height, flue
    width, languid nicks, wind pressure, ...) and the pipe's speech onset time, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="organ_pipe_voicing_onset_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a flue pipe's speech onset time from 12 standardised voicing measurements (cut-up height, flue width, languid nicks, wind pressure, ...), Adam at 2e-3 with betas (0.9, 0.9999) from a transformer recipe, MSE, and a static loss scale of 65536 kept from an fp16 recipe (loss x 65536 backward, gradients / 65536 before the step). The first step after resuming at step 80 goes through a path that skips the division, so that one gradient is 65536x the usual: Adam's normalisation bounds the steps it takes (the first moment carries the weights off for a dozen steps and the loss rises from about 0.15 to 0.25-0.35), but the squared gradient fills the second moment, which with beta2 0.9999 decays over thousands of steps. From 20 steps after the onset every update is tens of times smaller than before and the loss stalls where it was thrown, ending about twice the same run without the bug; finite.",
)
def h236_organ_voicing_resume_unscale_beta2(ctx: Context) -> None:
    steps, onset, loss_scale = 240, 80, 65536.0

    def run(c, bug):
        gen = seeded(23610)
        model = Stack(12, hidden=64, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.9999))
        moves = []
        prev = {}

        def before(step):
            prev["w"] = _weights(model)

        def after(step):
            moves.append(float((_weights(model) - prev["w"]).norm()))

        def unscale(step):
            if bug and step == onset:  # the resume path calls opt.step() directly
                return
            for p in model.parameters():
                p.grad.div_(loss_scale)

        _train(
            c,
            model,
            opt,
            _voicing(gen, 64),
            steps,
            F.mse_loss,
            before=before,
            after=after,
            scale_loss=lambda step, total: total * loss_scale,
            unscale=unscale,
        )
        return moves

    twin = _Quiet()
    run(twin, bug=False)
    moves = run(ctx, bug=True)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 1000x the median before",
        gn[onset] > 1000 * _median(gn[60:80]),
    )
    ctx.check(
        "updates from 20 steps after the onset under 1/20 of those before",
        _median(moves[onset + 20 :]) < _median(moves[60:80]) / 20,
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.6))
    ctx.check(
        "loss stalls: at the end over 0.8x its level at the onset",
        _mean(ls[-20:]) > 0.8 * _mean(ls[70:80]),
    )
    ctx.check(
        "loss at the end over 1.8x that of the run without the bug",
        _mean(ls[-20:]) > 1.8 * _mean(twin.losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


class WolfNet(nn.Module):
    """A SiLU trunk with a Gaussian head: the mean and (through a softplus) the variance."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), F.softplus(self.var(h)) + 1e-4], -1)


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


def _wolf(gen, batch, seed=11):
    """Ten standardised readings of a cello note (string, position, bow speed, bow pressure,
    body resonance frequency, ...) and the strength of the wolf tone's beating, standardised,
    with a spread that depends on how close the note is to the body resonance."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        spread = 0.05 + 0.4 * torch.sigmoid(2 * x @ v / math.sqrt(10))
        y = torch.tanh(x @ w / math.sqrt(10)) + spread * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="cello_wolf_tone_gaussian_nll_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, fc2) with a Gaussian NLL head (mean; var through a softplus plus 1e-4) regressing the strength of a cello's wolf-tone beating from 10 standardised readings (string, position, bow speed, bow pressure, body resonance, ...) with a spread that depends on the readings, AdamW at up to 3e-3 under a OneCycleLR (250 steps), weight decay 1e-2, gradient norm clipped at 1, F.gaussian_nll_loss. Trains normally: the NLL falls below 0 and the predicted spreads follow the true ones.",
)
def h236_cello_wolf_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(23611)
    steps = 250
    model = WolfNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    _train(ctx, model, opt, _wolf(gen, 64), steps, _gaussian_nll, clip=1.0, sched=sched)
    ls = ctx.losses
    x, y = next(_wolf(torch.Generator().manual_seed(4848), 512))
    with torch.no_grad():
        out = model(x)
    err = (y - out[:, 0]).abs()
    small = out[:, 1] < out[:, 1].median()
    ctx.check("loss fell below 0", _mean(ls[-20:]) < 0 < _mean(ls[:10]))
    ctx.check(
        "rows with a smaller predicted variance have smaller errors",
        float(err[small].mean()) < 0.8 * float(err[~small].mean()),
    )
    ctx.check("finite", _finite(ls))


class OsierNet(nn.Module):
    def __init__(self, d_in=14, hidden=64, classes=5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = F.gelu(self.norm(self.fc1(x)))
        return self.head(F.gelu(self.fc2(h)))


def _rods(gen, batch, seed=12):
    """Fourteen standardised measurements of a willow (osier) rod for basketry (length, butt
    diameter, taper, bark colour, pliancy, ...) and the grade the withy-cutter gave it (five
    grades); a tenth of the grades are mislabelled (different cutters)."""
    base = _kinds(gen, batch, 14, 5, seed, noise=0.5)
    while True:
        x, y = next(base)
        flip = torch.rand(batch, generator=gen) < 0.1
        y = torch.where(flip, torch.randint(0, 5, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="osier_rod_grade_label_smoothing_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP with a LayerNorm (fc1, norm, fc2, head) grading willow (osier) rods for basketry into five grades from 14 standardised measurements (length, butt diameter, taper, pliancy, ...), a tenth of the labels flipped, Adagrad at 0.05 with two param groups (weight decay 1e-4 on the weights, none on the biases and the norm), cross-entropy with label smoothing 0.1, gradient norm clipped at 2. Trains normally: the loss falls and the accuracy rises well above chance.",
)
def h236_osier_rod_label_smoothing_control(ctx: Context) -> None:
    gen = seeded(23612)
    model = OsierNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
    opt = torch.optim.Adagrad(
        [{"params": decay, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}], lr=0.05
    )
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.detach().argmax(1) == y).float().mean()))

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(ctx, model, opt, _rods(gen, 64), 200, loss_fn, classifier=True, watch=watch, clip=2.0)
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("accuracy over 0.6 at the end (chance 0.2)", _mean(acc[-20:]) > 0.6)
    ctx.check("finite", _finite(ls))


class FogHornAE(nn.Module):
    """A tied-weight autoencoder: the decoder uses the encoder's weight transposed."""

    def __init__(self, d_in=24, code=6):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        z = torch.tanh(self.encoder(x))
        return F.linear(z, self.encoder.weight.t(), self.dec_bias)


def _horns(gen, batch, seed=13):
    """Twenty-four band energies of a fog horn's signal recorded along a coast (a diaphone's
    grunt, its pitch, the band's echo off the cliffs), driven by a few hidden factors, with
    recorder noise."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(5, 24, generator=g) / math.sqrt(5)
    while True:
        z = torch.randn(batch, 5, generator=gen)
        x = z @ mix + 0.1 * torch.randn(batch, 24, generator=gen)
        yield x, x


@scenario(
    family="fog_horn_band_energy_tied_autoencoder",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tied-weight autoencoder (encoder: Linear 24 -> 6 and tanh; the decoder uses encoder.weight transposed plus its own bias) of 24 band energies of a fog horn's signal along a coast, SGD at 0.05 with momentum 0.9, MSE, gradient accumulation over 2 micro-batches, ReduceLROnPlateau (patience 10, factor 0.5). Trains normally: the reconstruction error falls well below the signal's variance.",
)
def h236_fog_horn_tied_autoencoder_control(ctx: Context) -> None:
    gen = seeded(23613)
    model = FogHornAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    _train(ctx, model, opt, _horns(gen, 32), 200, F.mse_loss, accumulate=2, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell by over half", _fell(ls, ratio=0.5))
    x, _ = next(_horns(torch.Generator().manual_seed(4949), 512))
    variance = float(x.var(0).mean())
    ctx.check(
        "reconstruction error under 0.5 of the signal's variance", _mean(ls[-20:]) < 0.5 * variance
    )
    ctx.check("finite", _finite(ls))
