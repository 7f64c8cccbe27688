"""Held-out set 327 (``h327_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a bobbin-lace pricking-card classifier mixing convolutions
and an attention block whose q/k group's learning rate is typed 3e-2 for 3e-4 (attention logits
grow), a glass-furnace crown-temperature fp16 ReLU regressor fed a millikelvin column (fp16
overflow under autocast and a GradScaler), a curling-stone curl tanh MLP whose MultiStepLR gamma
is typed 10 for 0.1 (past 2/sharpness), a sheep-shearing blow-pattern ReLU classifier whose
RMSprop learning rate is typed 1e-1 for 1e-3 (ReLUs die), a cider-press yield ReLU regressor fed
one shard logged in millilitres (one corrupted batch), a kitesurf kiteloop hang-time SiLU Huber
regressor whose resume branch sums one step's loss (one gradient burst), a hailstone fall-speed
Gaussian NLL net whose variance lost its softplus (log of a negative, NaN), a dry-stone-wall
throughstone two-group regressor whose trunk lr is typed 1e-10 (trunk frozen), a bell-founder
hum-partial cosine classifier whose logit scale is initialised 1/0.07 instead of its log (softmax
saturates), a sprite-lightning altitude GELU regressor whose loss is multiplied by the epoch's
sample count for one step (Adam's second moment poisoned), and three controls (a tabla syahi
fp16 Conv1d classifier with a GradScaler and a cosine schedule, a hammer-throw turn GELU
classifier with OneCycleLR and label smoothing, a snowpack avalanche-depth Huber regressor with
ReduceLROnPlateau and accumulation).

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


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _moves(model: nn.Module, before: dict[str, torch.Tensor]) -> dict[str, float]:
    return {
        n: float((p.detach() - before[n]).norm() / (before[n].norm() + 1e-12))
        for n, p in model.named_parameters()
    }


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
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, accumulate)``
    returns the micro-batch loss actually backpropagated, ``after(step)`` runs after the optimizer
    step, ``plateau()`` returns the validation loss for a ReduceLROnPlateau ``sched``. Stops after
    a non-finite loss; returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
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
            total = backprop(step, loss, accumulate) if backprop else loss / accumulate
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
            return step
    return steps


def _gauges(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.5 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y - 0.3 + noise * torch.randn(batch, generator=gen)


def _sorts(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (classes overlap a little)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _waves(gen, batch, classes, seed, length=48, channels=2):
    """Short two-channel waveforms: each class has its own pair of frequencies and decay."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    decay = 0.01 + 0.05 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase) * torch.exp(-decay[y][:, None, None] * t)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.drop(self.features(x)))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, batch, iters=20):
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration on Hessian-vector
    products."""
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


# -- bobbin lace: a conv + attention classifier whose q/k group's lr is typed 3e-2 ----------------


class PatchAttention(nn.Module):
    """Hand-written single-block multi-head self-attention over the conv map's positions; keeps
    its largest pre-softmax logit q.k/sqrt(d)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, x):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = (
            m(x).reshape(b, t, self.heads, hd).transpose(1, 2) for m in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-2, -1) / math.sqrt(hd)
        self.peak = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class PrickingNet(nn.Module):
    """Two convolutions over the 8x8 pricking card, a 2x2 pool to 16 positions, a learned
    position embedding, one pre-LN attention block, mean pool, head."""

    def __init__(self, width=32, heads=2, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, width, 3, padding=1)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 16, width))
        self.ln1 = nn.LayerNorm(width)
        self.attn = PatchAttention(width, heads)
        self.ln2 = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        x = F.gelu(self.conv1(x))
        x = F.max_pool2d(F.gelu(self.conv2(x)), 2)
        h = x.flatten(2).transpose(1, 2) + self.pos
        h = h + self.attn(self.ln1(h))
        return self.head(self.ln2(h).mean(1))


@scenario(
    family="bobbin_lace_pinhole_conv_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written vision model mixing convolutions and attention (conv1, conv2, 2x2 pool to 16 positions, learned position embedding, one pre-LN multi-head self-attention block 'attn' with q, k, v, proj, mean pool, head) classifying bobbin-lace pricking cards (scikit-learn's 8x8 digits read as pinhole patterns), AdamW with two parameter groups, cross-entropy, 200 steps. The q/k group is meant to train at 3e-4 (a tenth of the base 3e-3) and is typed 3e-2 with weight decay 0: q and k grow and the largest pre-softmax logit q.k/sqrt(d) grows by well over an order of magnitude while the loss stays finite.",
)
def h327_bobbin_lace_qk_lr_typo(ctx: Context) -> None:
    gen = seeded(32701)
    model = PrickingNet()
    qk = [p for n, p in model.named_parameters() if n.startswith(("attn.q.", "attn.k."))]
    rest = [p for n, p in model.named_parameters() if not n.startswith(("attn.q.", "attn.k."))]
    opt = torch.optim.AdamW(
        [
            {"params": qk, "lr": 3e-2, "weight_decay": 0.0},  # meant 3e-4
            {"params": rest, "weight_decay": 1e-2},
        ],
        lr=3e-3,
    )
    peaks = []
    qk_norm0 = float(model.attn.q.weight.detach().norm() * model.attn.k.weight.detach().norm())

    def watch(step, out, x, y):
        peaks.append(model.attn.peak)

    _loop(
        ctx, model, opt, digit_batches(gen, 64), 200, F.cross_entropy, classifier=True, watch=watch
    )
    qk_norm = float(model.attn.q.weight.detach().norm() * model.attn.k.weight.detach().norm())
    ctx.check(
        "the peak attention logit grows over 20x from step 0", _mean(peaks[-20:]) > 20 * peaks[0]
    )
    ctx.check("it stays over 20x for the last 100 steps", min(peaks[-100:]) > 20 * peaks[0])
    ctx.check("|W_q| x |W_k| grew over 4x", qk_norm > 4 * qk_norm0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- glass furnace: the crown thermocouple switches to millikelvin under fp16 autocast ------------

ONSET_GF = 80


@scenario(
    family="glass_furnace_crown_temperature_fp16_relu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_GF,
    heldout=True,
    onset=ONSET_GF,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting a glass furnace's crown temperature drift from eight standardised sensor readings, fp16 autocast with a torch.amp.GradScaler, Adam, MSE, 160 steps. At step 80 the crown thermocouple's logger is swapped for one whose firmware reports millikelvin, and the preprocessing passes that column through raw (about 1.6e6 instead of a standardised value): fc1's fp16 output passes 65504 and becomes inf, the loss is inf/NaN at step 80 while the same batch is finite in float32, and the GradScaler skips the step and cuts its scale.",
)
def h327_glass_furnace_millikelvin_fp16(ctx: Context) -> None:
    gen = seeded(32702)
    model = Trunk(8, 64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    def alter(step, x, y):
        if step >= ONSET_GF:
            x = x.clone()
            x[:, 0] = 1.6e6 + 2e4 * x[:, 0]  # millikelvin, unstandardised
        return x, y

    def watch(step, out, x, y):
        if step == ONSET_GF:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
                seen["fc1_half"] = float(model.fc1(x).float().abs().max())
            with torch.no_grad():
                seen["fp32_loss"] = float(F.mse_loss(model(x), y))

    stop = _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 8, 32702),
        160,
        F.mse_loss,
        alter=alter,
        watch=watch,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    ctx.check("the loss fell before the onset", _mean(ls[60:80]) < 0.8 * _mean(ls[:10]))
    ctx.check("finite before the onset", _finite(ls[:ONSET_GF]))
    ctx.check(
        "the loss is non-finite at the onset", stop == ONSET_GF and _first_bad(ls) == ONSET_GF
    )
    ctx.check(
        "fc1's fp16 output overflows (inf) at the onset",
        not math.isfinite(seen.get("fc1_half", 0.0)),
    )
    ctx.check(
        "the same batch is finite in float32", math.isfinite(seen.get("fp32_loss", float("nan")))
    )
    ctx.check("the GradScaler cut its scale", ctx.scales[-1] < ctx.scales[-2])


# -- curling: a MultiStepLR gamma typed 10 for 0.1 takes SGD past 2/sharpness ---------------------

ONSET_CU = 60


@scenario(
    family="curling_stone_sweep_curl_tanh_mlp",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_CU,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a curling stone's curl from six sweeping and release readings, plain SGD at 0.05, MSE, a MultiStepLR schedule with milestones at steps 60 and 120 whose gamma is typed 10.0 for 0.1: at step 60 the learning rate becomes 0.5, past the 2/sharpness stability limit (top Hessian eigenvalue measured by power iteration every 5 steps), the loss oscillates and grows geometrically, then overflows.",
)
def h327_curling_multistep_gamma_typo(ctx: Context) -> None:
    gen = seeded(32703)
    model = Trunk(6, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[60, 120], gamma=10.0)  # 0.1
    probe = next(_gauges(torch.Generator().manual_seed(7), 256, 6, 32703))
    lams, lrs = {}, []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 5 == 0:
            lams[step] = _sharpness(model, F.mse_loss, probe)

    _loop(ctx, model, opt, _gauges(gen, 64, 6, 32703), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:ONSET_CU])
    past = next(
        (s for s in range(len(lrs)) if lrs[s] > 2.0 / lams[max(k for k in lams if k <= s)]), None
    )
    blown = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("the loss fell while the learning rate was under 2/sharpness", low < 0.5 * ls[0])
    ctx.check(
        "the learning rate passed 2/sharpness at the milestone, before the loss blew up",
        past is not None and past >= ONSET_CU and blown is not None and past < blown,
    )
    ctx.check(
        "the loss blew up over 1e6x its low", _first_bad(ls) is not None or max(ls) > 1e6 * low
    )


# -- sheep shearing: RMSprop's lr typed 1e-1 for 1e-3 kills the ReLUs -----------------------------


@scenario(
    family="sheep_shearing_blow_count_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying a shearer's blow pattern into six classes from sixteen raw handpiece readings (positive, about 3 on average, not centred), RMSprop, cross-entropy, 240 steps. The learning rate is typed 1e-1 for 1e-3: the first large normalised steps push fc1's pre-activations negative for every input, most of act1's ReLUs die within a few steps and stay dead, and the loss stalls far above what the same model reaches at 1e-3.",
)
def h327_sheep_shearing_rmsprop_lr_typo(ctx: Context) -> None:
    gen = seeded(32704)
    model = Trunk(16, 64, out=6)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)  # meant 1e-3
    probe = next(_sorts(torch.Generator().manual_seed(5), 512, 16, 6, 32704))[0] + 3.0
    dead = []

    def measure():
        with torch.no_grad():
            dead.append(dead_fraction(model.act1(model.fc1(probe))))

    def before(step):
        if step == 0:
            measure()

    def alter(step, x, y):
        return x + 3.0, y  # raw readings, about 3 on average

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 16, 6, 32704),
        240,
        F.cross_entropy,
        classifier=True,
        before=before,
        alter=alter,
        after=lambda step: measure(),
    )
    ctx.check("under a fifth of act1's units dead before training", dead[0] < 0.2)
    ctx.check("over 80% of act1's units dead for the last 50 steps", min(dead[-50:]) > 0.8)
    ctx.check("the loss stays above 0.3 (chance is 1.79)", _mean(ctx.losses[-20:]) > 0.3)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cider press: one shard's juice yield logged in millilitres -----------------------------------

ONSET_CP = 110


@scenario(
    family="cider_press_pomace_yield_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CP,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting a cider press's juice yield (litres, standardised) from ten pomace readings, SGD with momentum 0.9, MSE, gradient clipping at 1.0, 220 steps. The batch at step 110 comes from one press's shard whose yield column was logged in millilitres, so its targets are a thousand times their scale: that batch's loss jumps by orders of magnitude, the clipped step disturbs the weights, and the run recovers on the ordinary batches after it.",
)
def h327_cider_press_millilitre_shard(ctx: Context) -> None:
    gen = seeded(32705)
    model = Trunk(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scale = []

    def alter(step, x, y):
        if step == ONSET_CP:
            y = y * 1000.0  # the shard in millilitres
        scale.append(float(y.abs().max()))
        return x, y

    _loop(ctx, model, opt, _gauges(gen, 64, 10, 32705), 220, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    pre = _median(ls[ONSET_CP - 20 : ONSET_CP])
    ctx.check(
        "the shard's targets are over 100x the usual scale", scale[ONSET_CP] > 100 * _median(scale)
    )
    ctx.check("the loss of the bad batch is over 1000x the steps before", ls[ONSET_CP] > 1000 * pre)
    ctx.check("the run recovers within 100 steps", _mean(ls[-10:]) < 2.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- kitesurf: a resume path sums one step's Huber loss instead of averaging ----------------------

ONSET_KS = 130


@scenario(
    family="kitesurf_kiteloop_hang_time_silu_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_KS,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a kiteloop's hang time from twelve standardised readings (wind, kite angle, board speed), SGD with Nesterov momentum 0.9, Huber loss, gradient clipping at 1.0, 240 steps. On step 130, the first step after a resume from a checkpoint, the resume branch builds its loss with reduction='sum' instead of 'mean', so that one ordinary batch's backpropagated loss (and gradient) is 64x: a single gradient burst that does not come from the data, clipped, after which the run carries on.",
)
def h327_kitesurf_resume_sum_reduction(ctx: Context) -> None:
    gen = seeded(32706)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    state = {}

    def watch(step, out, x, y):
        state["out"], state["y"] = out, y

    def backprop(step, loss, accumulate):
        if step == ONSET_KS:  # the resume branch: reduction='sum'
            return F.huber_loss(state["out"], state["y"], reduction="sum") / accumulate
        return loss / accumulate

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 12, 32706),
        240,
        F.huber_loss,
        watch=watch,
        backprop=backprop,
        clip=1.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("the gradient at onset is over 30x the median", g[ONSET_KS] > 30 * _median(g))
    ctx.check(
        "the batch at onset is ordinary (loss under 3x the steps before)",
        ls[ONSET_KS] < 3 * _median(ls[ONSET_KS - 20 : ONSET_KS]),
    )
    ctx.check(
        "the run carries on (late loss under 2x the loss before onset)",
        _mean(ls[-10:]) < 2 * _median(ls[ONSET_KS - 20 : ONSET_KS]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- hailstone: the variance head written 1 + raw instead of softplus ------------------------------


class FallSpeedNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head (mean, variance)."""

    def __init__(self, d_in=6, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 2)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        var = 1.0 + out[:, 1]  # meant F.softplus(out[:, 1]) + 1e-6
        return torch.stack([out[:, 0], var], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


@scenario(
    family="hailstone_fall_speed_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("head",),
    diverges=77,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a hailstone's terminal fall speed with its uncertainty (Gaussian NLL) from six radar and size readings, RAdam, 200 steps. The variance is written var = 1 + head[1] instead of softplus(head[1]) + eps (the bias starts at 0, so var starts near 1): the NLL pushes the variance down as the fit improves, one row's variance crosses zero and log(var) of a negative number makes the loss NaN.",
)
def h327_hailstone_variance_without_softplus(ctx: Context) -> None:
    gen = seeded(32707)
    model = FallSpeedNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    mins = []

    def watch(step, out, x, y):
        mins.append(float(out[:, 1].detach().min()))

    stop = _loop(
        ctx, model, opt, _gauges(gen, 64, 6, 32707, noise=0.02), 200, _gauss_nll, watch=watch
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is NaN at the recorded step", bad is not None and bad == stop)
    ctx.check("finite before it", bad is not None and _finite(ls[:bad]))
    ctx.check("a variance is at or below zero at that step", bad is not None and mins[bad] <= 0.0)
    ctx.check("every variance was positive at the start", mins[0] > 0.0)


# -- dry-stone wall: the trunk group's lr typed 1e-10 for 1e-2 ------------------------------------


@scenario(
    family="dry_stone_wall_throughstone_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the load a dry-stone wall's throughstone carries from eight standardised readings (batter, course height, stone size), Adagrad with two parameter groups, MSE, 200 steps. The trunk group (fc1, fc2) is meant to train at 1e-2 like the head and its lr is typed 1e-10: fc1 and fc2 barely move relative to their weights while the head trains, and the loss falls only as far as a linear read-out of the random features allows.",
)
def h327_dry_stone_wall_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(32708)
    model = Trunk(8, 64, act=nn.GELU)
    trunk = [p for n, p in model.named_parameters() if n.startswith(("fc1.", "fc2."))]
    opt = torch.optim.Adagrad(
        [
            {"params": trunk, "lr": 1e-10},  # meant 1e-2
            {"params": model.head.parameters()},
        ],
        lr=1e-2,
    )
    start = _snapshot(model)
    _loop(ctx, model, opt, _gauges(gen, 64, 8, 32708), 200, F.mse_loss)
    mv = _moves(model, start)
    ctx.check(
        "fc1 and fc2 moved under 1e-6 of their norm", max(mv["fc1.weight"], mv["fc2.weight"]) < 1e-6
    )
    ctx.check("the head moved over 5% of its norm", mv["head.weight"] > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- bell founder: the cosine classifier's logit scale initialised as 1/0.07 instead of its log ---


class HumPartialNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> cosine head with a learned logit scale (CLIP style)."""

    def __init__(self, d_in=12, hidden=64, classes=8):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(1 / 0.07))  # meant math.log(1 / 0.07)

    def forward(self, x):
        h = F.normalize(self.act2(self.fc2(self.act1(self.fc1(x)))), dim=-1)
        w = F.normalize(self.head.weight, dim=-1)
        return self.log_scale.exp().clamp(max=100.0) * h @ w.T


@scenario(
    family="bell_founder_hum_partial_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP with a CLIP-style cosine head (fc1, act1, fc2, act2, head, a learned logit scale) classifying a cast bell's hum-partial tuning into eight classes from twelve strike-tone readings, Adamax, cross-entropy, 200 steps. The logit-scale parameter is initialised to 1/0.07 instead of log(1/0.07) and then exp'd and clamped at 100 as in CLIP, so the cosine logits are multiplied by 100 from the start: the float32 softmax rounds the target's probability to exactly 1.0 for a large share of the rows.",
)
def h327_bell_founder_logit_scale_init(ctx: Context) -> None:
    gen = seeded(32709)
    model = HumPartialNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    frac = []

    def watch(step, out, x, y):
        frac.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 12, 8, 32709),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "the logit scale sits at the clamp (100)", float(model.log_scale.detach().exp()) >= 100.0
    )
    ctx.check("over a quarter of rows' softmax is exactly 1.0 late", _mean(frac[-20:]) > 0.25)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sprite lightning: a loss multiplied by the epoch's sample count for one step ------------------

ONSET_SL = 100


@scenario(
    family="sprite_lightning_altitude_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SL,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a red sprite's top altitude from ten standardised radio readings, Adam with betas (0.9, 0.999), MSE, 240 steps. At step 100, the epoch boundary, a logging helper that rescales the loss to a per-epoch sum is applied to the backpropagated loss: it is multiplied by the epoch's sample count (2**20) instead of only the logged value. One gradient about 1e6 times the usual fills Adam's second moment; with beta2 0.999 every update afterwards is far smaller although the gradients are back to normal, and the loss stalls.",
)
def h327_sprite_lightning_epoch_sum_once(ctx: Context) -> None:
    gen = seeded(32710)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    moves, prev = [], {}

    def backprop(step, loss, accumulate):
        weight = float(2**20) if step == ONSET_SL else 1.0
        return weight * loss / accumulate

    def before(step):
        prev.update(_snapshot(model))

    def after(step):
        moves.append(
            math.sqrt(
                sum(float(((p.detach() - prev[n]) ** 2).sum()) for n, p in model.named_parameters())
            )
        )

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 10, 32710),
        240,
        F.mse_loss,
        backprop=backprop,
        before=before,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check("the gradient at onset is over 1000x the median", g[ONSET_SL] > 1000 * _median(g))
    ctx.check(
        "the gradients after onset are of the usual order (under 10x those before)",
        _median(g[ONSET_SL + 60 :]) < 10 * _median(g[ONSET_SL - 30 : ONSET_SL]),
    )
    ctx.check(
        "updates 60 steps on are under 1/20 of those before",
        _median(moves[ONSET_SL + 60 :]) < _median(moves[ONSET_SL - 30 : ONSET_SL]) / 20,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


class SyahiConv(nn.Module):
    """conv1 -> GELU -> conv2 -> GELU -> global average pool -> head."""

    def __init__(self, channels=2, width=32, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, stride=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="tabla_syahi_layer_fp16_gelu_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A hand-written GELU Conv1d classifier (conv1, conv2, pool, head) telling six tabla syahi-layer builds apart from two-channel strike waveforms, fp16 autocast with a torch.amp.GradScaler, AdamW with weight decay, a cosine schedule (CosineAnnealingLR), gradient clipping at 1.0 after unscaling, cross-entropy, 200 steps. A healthy control.",
)
def h327_tabla_syahi_fp16_cosine(ctx: Context) -> None:
    gen = seeded(32711)
    model = SyahiConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        _waves(gen, 32, 6, 32711),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss scale stayed finite and positive", all(0 < s < 1e30 for s in ctx.scales))


@scenario(
    family="hammer_throw_turn_count_gelu_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) classifying a hammer thrower's turn pattern (five classes) from fourteen standardised foot-contact readings, SGD with Nesterov momentum 0.9 and weight decay, OneCycleLR to 0.1, label smoothing 0.1, gradient clipping at 1.0, 200 steps. A healthy control.",
)
def h327_hammer_throw_onecycle_smoothing(ctx: Context) -> None:
    gen = seeded(32712)
    model = Trunk(14, 64, out=5, act=nn.GELU)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 14, 5, 32712),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="snowpack_avalanche_depth_huber_regressor",
    optimizer="RMSprop",
    cause="healthy",
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting an avalanche's fracture depth from nine standardised snowpack readings with noisy targets, RMSprop, Huber loss, accumulation over 2 micro-batches, ReduceLROnPlateau on a held-out batch's loss, gradient clipping at 1.0, 150 steps. A healthy control.",
)
def h327_snowpack_plateau_accumulation(ctx: Context) -> None:
    gen = seeded(32713)
    model = Trunk(9, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    val = next(_gauges(torch.Generator().manual_seed(9), 256, 9, 32713, noise=0.2))

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(F.huber_loss(model(val[0]), val[1]))

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 32, 9, 32713, noise=0.2),
        150,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
