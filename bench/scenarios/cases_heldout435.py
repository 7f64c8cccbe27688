"""Held-out set 435 (``h435_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: an egg-rolling hill-distance tanh regressor whose ExponentialLR gamma is typed 1.05 for
0.95 (the lr climbs past 2/sharpness), a well-dressing petal-board attention classifier whose
scores are multiplied by sqrt(d) instead of divided (attention logits grow), a longsword-dance
step-timing ReLU regressor on Adam with lr typed 5e-2 for 5e-4 (ReLUs die), a bed-racing course-
time regressor fed one shard with the bed weight in grams for kilograms (one corrupted batch), a
bladder-pipe reed-pressure Gaussian NLL net taking sqrt of a variance head with no clamp (NaN), a
snipe-drumming display fp16 classifier whose frame Gram is summed in fp16 before dividing by the
frame count and overflows when the window grows, a fan-vault rib-thrust two-group regressor whose
head lr is typed 2e-9 for 2e-3 (a frozen head), a spale-basket weave-grade cosine classifier with
scale typed 640 for 64 (softmax saturates), a gimp-braid tension regressor whose last-batch path
backpropagates a sum instead of a mean for one step (one gradient burst) and a horn-lantern
leaf-thickness regressor whose augmentation rescales the cached targets in place every step (a
drifting target, slow climb of the loss).

Controls: a bittern-boom onset detector (dilated residual temporal conv with gated activations and
skip connections summed into a per-frame BCE head, Adam under OneCycleLR, clipping), an elk-bugle
call-length regressor with weight normalisation (RAdam, StepLR, Huber) and a grouse-lek display
classifier (SGD Nesterov, label smoothing, accumulation, ReduceLROnPlateau, noisy labels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


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
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """``before(step)`` runs first, ``alter(step, x, y)`` changes a batch, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss, once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if attach:
            ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0, flip=0.0):
    """Readings scattered around one prototype per class, ``flip`` of the labels random."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + spread * torch.randn(batch, d_in, generator=gen)
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, torch.randint(0, classes, (batch,), generator=gen), y)


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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    n = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / n for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / n for u in hv]
    return lam


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="egg_rolling_hill_distance_exp_lr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Easter egg-rolling hill-distance regressor (tanh MLP, MSE, full 256-row batches, plain "
    "SGD) under an ExponentialLR whose gamma was typed 1.05 for 0.95: the lr grows 5% a step "
    "instead of decaying, lr x sharpness passes 2 and the loss blows up.",
)
def h435_egg_rolling_exp_gamma(ctx) -> None:
    gen = seeded(4351)
    model = _Net(8, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.05)  # typed for 0.95
    data = _readings(gen, 256, 8, seed=351)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, seed=351))
    edge = []

    def before(step):
        if step % 5 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            lr = opt.param_groups[0]["lr"]
            edge.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

    _loop(ctx, model, opt, data, 160, F.mse_loss, before=before, sched=sched)
    ctx.check("lr x sharpness under 2 at step 0", edge[0][1] < 2)
    ctx.check("lr x sharpness past 2 later", any(v > 2 for _, v in edge[1:]))
    ok = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "loss blows up over 100x its lowest",
        max(ok) > 100 * min(ok) or _first_bad(ctx.losses) is not None,
    )
    ctx.check("loss fell first", min(ok[:60]) < 0.7 * _mean(ok[:5]))


class _PetalAttention(nn.Module):
    def __init__(self, dim, bug=True):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        for lin in (self.q, self.k):
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        # the bug: multiplies by sqrt(d) where it should divide
        self.scale = math.sqrt(dim) if bug else 1.0 / math.sqrt(dim)
        self.last_logits = None

    def forward(self, x):
        s = self.q(x) @ self.k(x).transpose(1, 2) * self.scale
        self.last_logits = s.detach()
        return torch.softmax(s, -1) @ self.v(x)


class _PetalBoard(nn.Module):
    """Reads a well-dressing board as 16 petal patches, one attention layer, mean-pooled."""

    def __init__(self, d_in=6, dim=32, classes=5, bug=True):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.attn = _PetalAttention(dim, bug)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        h = self.norm(h + self.attn(h))
        return self.head(h.mean(1))


def _boards(gen, batch, seed, patches=16, d_in=6, classes=5):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.randn(batch, patches, d_in, generator=gen)
        at = torch.randint(0, patches, (batch,), generator=gen)
        x[torch.arange(batch), at] += 2.0 * protos[y]  # one painted patch carries the motif
        yield x, y


@scenario(
    family="well_dressing_petal_board_attention_classifier",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Well-dressing petal-board classifier (one hand-written self-attention layer over 16 "
    "petal patches, mean-pooled, cross-entropy, AdamW without weight decay) whose scores are "
    "computed as q.k * sqrt(d) instead of q.k / sqrt(d): the attention logits start 32x too "
    "large and keep growing as q and k grow, the attention rows saturate.",
)
def h435_well_dressing_sqrt_scale(ctx) -> None:
    gen = seeded(4352)
    model = _PetalBoard()
    model_start = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    probe = next(_boards(torch.Generator().manual_seed(5), 128, seed=352))
    peaks = []

    def logit_peak():
        with torch.no_grad():
            model(probe[0])
        return float(model.attn.last_logits.abs().amax())

    start = logit_peak()

    def after(step):
        if step % 10 == 0:
            peaks.append(logit_peak())

    _loop(
        ctx,
        model,
        opt,
        _boards(gen, 32, seed=352),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    end = logit_peak()
    ref = _PetalBoard(bug=False)
    ref.load_state_dict(model_start)
    _loop(
        None,
        ref,
        torch.optim.AdamW(ref.parameters(), lr=3e-3, weight_decay=0.0),
        _boards(torch.Generator().manual_seed(4352), 32, seed=352),
        200,
        F.cross_entropy,
        attach=False,
    )
    with torch.no_grad():
        ref(probe[0])
    ref_end = float(ref.attn.last_logits.abs().amax())
    ctx.check("max |attention logit| over 8x its start", end > 8 * start)
    ctx.check("max over the last 100 steps over 8x the start", min(peaks[-10:]) > 8 * start)
    ctx.check("over 2x the 1/sqrt(d) run's at the end", end > 2 * ref_end)
    ctx.check("over 20 in absolute value at the end", end > 20)
    ctx.check("finite", _finite(ctx.losses))


class _Deep(nn.Module):
    def __init__(self, d_in, width=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)

    def hidden(self, x):
        h1 = F.relu(self.fc1(x))
        h2 = F.relu(self.fc2(h1))
        h3 = F.relu(self.fc3(h2))
        return h1, h2, h3

    def forward(self, x):
        return self.head(self.hidden(x)[-1]).squeeze(-1)


@scenario(
    family="longsword_dance_step_timing_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "fc3"),
    diverges=None,
    heldout=True,
    note="Longsword-dance step-timing regressor (three ReLU layers, MSE, Adam) with the lr typed "
    "5e-2 for 5e-4: the first large updates push most of fc2's and fc3's units negative on every "
    "input, they never fire again and the fit stalls above the 5e-4 run's.",
)
def h435_longsword_dance_lr_typo(ctx) -> None:
    gen = seeded(4353)
    model = _Deep(10)
    ref = _Deep(10)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)  # typed for 5e-4
    probe = next(_readings(torch.Generator().manual_seed(3), 512, 10, seed=353))

    def dead(m):
        with torch.no_grad():
            return [dead_fraction(h) for h in m.hidden(probe[0])]

    start = dead(model)
    fracs = []
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=353),
        200,
        F.mse_loss,
        after=lambda s: fracs.append(dead(model)) if s % 10 == 0 else None,
    )
    ref_losses = _loop(
        None,
        ref,
        torch.optim.Adam(ref.parameters(), lr=5e-4),
        _readings(torch.Generator().manual_seed(4353), 64, 10, seed=353),
        200,
        F.mse_loss,
        attach=False,
    )
    end = dead(model)
    ctx.check("under 20% of fc2/fc3 units dead at the start", max(start[1:]) < 0.2)
    ctx.check("over half of fc2 or fc3 units dead at the end", max(end[1:]) > 0.5)
    ctx.check("dead through the last 100 steps", min(max(f[1:]) for f in fracs[-10:]) > 0.4)
    ctx.check(
        "final loss over 1.5x the 5e-4 run's",
        _mean(ctx.losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="bed_racing_course_time_grams_shard_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Bed-racing course-time regressor (ReLU MLP, MSE, Adagrad, clipping at 2) on standardised "
    "team readings. The batch at step 100 comes from one race's shard that exports the bed "
    "weight in grams instead of kilograms before standardising: that column is about 1000x "
    "too large for one batch, the loss and gradient jump and the run recovers.",
)
def h435_bed_racing_grams_shard(ctx) -> None:
    gen = seeded(4354)
    model = _Net(8, 48, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    seen = {}

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0  # the grams shard
        seen[step] = float(x.abs().amax())
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=354), 200, F.mse_loss, alter=alter, clip=2.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "batch 100's inputs over 100x the usual max",
        seen[100] > 100 * _median([seen[s] for s in range(60, 100)]),
    )
    ctx.check("loss at 100 over 50x the median of 60..99", ls[100] > 50 * _median(ls[60:100]))
    ctx.check("gradient at 100 over 20x the median of 60..99", gn[100] > 20 * _median(gn[60:100]))
    ctx.check(
        "recovers: last 20 under 1.5x the pre-onset level",
        _mean(ls[-20:]) < 1.5 * _mean(ls[80:100]),
    )
    ctx.check("trained", _fell(ls))


class _ReedPressure(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 2.0)
        self.last_var = None

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        var = self.var_head(h).squeeze(-1)  # no softplus, no clamp
        self.last_var = var.detach()
        return torch.stack([self.mean_head(h).squeeze(-1), torch.sqrt(var)], -1)


def _gauss_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="bladder_pipe_reed_pressure_sqrt_variance_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("var_head",),
    diverges=73,
    heldout=True,
    note="Bladder-pipe reed-pressure regressor with a Gaussian NLL head (GELU MLP, Adam) whose "
    "sigma is torch.sqrt of the raw variance head, the softplus/clamp left out: the NLL pushes "
    "the variance down as the fit improves, one row's variance crosses zero, sqrt gives NaN "
    "and the loss is NaN.",
)
def h435_bladder_pipe_sqrt_var(ctx) -> None:
    gen = seeded(4355)
    model = _ReedPressure()
    opt = torch.optim.Adam(model.parameters(), lr=4e-4)
    negs = []

    def after(step):
        negs.append(float((model.last_var < 0).float().mean()))

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=355), 300, _gauss_nll, after=after)
    bad = _first_bad(ctx.losses)
    ctx.check("loss NaN at step 73", bad == 73)
    ctx.check("loss finite before", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("a negative variance at the NaN step", bad is not None and negs[bad] > 0)
    ctx.check("no negative variance before", bad is not None and max(negs[:bad]) == 0)
    ctx.check("fit improved first", bad is not None and min(ctx.losses[:bad]) < ctx.losses[0] - 0.2)


class _FrameGram(nn.Module):
    """Mean frame-by-frame channel Gram: the sum is taken (in the autocast dtype) before the
    division by the frame count."""

    def forward(self, h):
        g = h.transpose(1, 2) @ h  # (B, C, C), summed over frames
        return g / h.shape[1]


class _DrumDisplay(nn.Module):
    def __init__(self, ch=2, width=12, classes=3):
        super().__init__()
        self.conv = nn.Conv1d(ch, width, 5, padding=2)
        self.energy = _FrameGram()
        self.head = nn.Linear(width * width, classes)

    def forward(self, x):
        h = F.relu(self.conv(x)).transpose(1, 2)  # (B, T, C)
        g = self.energy(h)
        return self.head(torch.log1p(g.float().clamp_min(0)).flatten(1))


def _drumming(gen, batch, frames, seed, amp=40.0):
    """Two-channel microphone traces (in raw pascal-scale units) of three display kinds."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.2 + 0.6 * torch.rand(3, 2, generator=g)
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        t = torch.arange(frames, dtype=torch.float32)
        phase = 6.28 * torch.rand(batch, 2, 1, generator=gen)
        x = torch.sin(freqs[y][..., None] * t + phase)
        yield amp * (x + 0.3 * torch.randn(batch, 2, frames, generator=gen)), y


@scenario(
    family="snipe_drumming_display_fp16_frame_gram_net",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("energy",),
    diverges=80,
    heldout=True,
    onset=80,
    note="Snipe-drumming display classifier (Conv1d, a frame-by-frame channel Gram, "
    "cross-entropy, AdamW, fp16 autocast with a GradScaler) whose Gram sums over frames in fp16 "
    "before dividing by the frame count. At step 80 the curriculum lengthens the windows from "
    "32 to 512 frames: the fp16 sum passes 65504, the Gram is inf and the loss non-finite.",
)
def h435_snipe_drumming_gram_overflow(ctx) -> None:
    gen = seeded(4356)
    model = _DrumDisplay()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    short = _drumming(gen, 32, 32, seed=356)
    long = _drumming(gen, 32, 512, seed=356)

    class _Curriculum:
        step = 0

        def __next__(self):
            return next(short if self.step < 80 else long)

    cur = _Curriculum()

    def before(step):
        cur.step = step

    _loop(
        ctx,
        model,
        opt,
        cur,
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        scaler=scaler,
        amp=True,
    )
    bad = _first_bad(ctx.losses)
    x, y = next(_drumming(torch.Generator().manual_seed(1), 32, 512, seed=356))
    with torch.no_grad():
        full = F.cross_entropy(model(x), y)
        with torch.autocast("cpu", dtype=torch.float16):
            h = F.relu(model.conv(x)).transpose(1, 2)
            g16 = model.energy(h)
    ctx.check("loss first non-finite at step 80", bad == 80)
    ctx.check("finite and falling before", _finite(ctx.losses[:80]) and _fell(ctx.losses[:80]))
    ctx.check("the fp16 Gram on 512 frames has inf", bool(torch.isinf(g16).any()))
    ctx.check("the same model in fp32 gives a finite loss", bool(torch.isfinite(full)))


@scenario(
    family="fan_vault_rib_thrust_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Fan-vault rib-thrust regressor (SiLU MLP, MSE, Adamax with two param groups) whose "
    "head group's lr is typed 2e-9 for 2e-3: the head receives gradients but moves under 1e-4 "
    "of its norm over the run while the trunk learns at 2e-3.",
)
def h435_fan_vault_head_lr_typo(ctx) -> None:
    gen = seeded(4357)
    model = _Net(8, 48, 1, act=nn.SiLU)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adamax(
        [
            {"params": trunk, "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 2e-9},  # typed for 2e-3
        ]
    )
    head0 = model.head.weight.detach().clone()
    fc10 = model.fc1.weight.detach().clone()
    head_grads = []

    def hook(grad):
        head_grads.append(float(grad.norm()))
        return grad

    model.head.weight.register_hook(hook)
    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=357), 200, F.mse_loss)
    ctx.check("head moved under 1e-4 of its norm", _rel_change(head0, model.head.weight) < 1e-4)
    ctx.check("while receiving gradients", _median(head_grads) > 1e-3)
    ctx.check("fc1 moved over 5% of its norm", _rel_change(fc10, model.fc1.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _WeaveGrader(nn.Module):
    def __init__(self, d_in=12, hidden=48, classes=6, scale=100.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = _CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.fc2(F.gelu(self.fc1(x))))


@scenario(
    family="spale_basket_weave_grade_scaled_cosine_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Spale-basket weave-grade classifier (GELU MLP, a cosine head, cross-entropy, RMSprop) "
    "whose cosine scale is typed 100 for 10: the logits span up to 200, the target's float32 "
    "softmax probability rounds to exactly 1.0 on most rows and those rows give no gradient.",
)
def h435_spale_basket_scale_typo(ctx) -> None:
    gen = seeded(4358)
    model = _WeaveGrader(scale=100.0)  # typed for 10
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    probe = next(_grades(torch.Generator().manual_seed(9), 256, 12, 6, seed=358, spread=0.8))
    fracs = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                fracs.append(collapsed_fraction(model(probe[0]), probe[1]))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, seed=358, spread=0.8),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    with torch.no_grad():
        logits = model(probe[0])
        at10 = collapsed_fraction(logits / 10.0, probe[1])
    ctx.check("over half the rows collapsed over the last 50 steps", min(fracs[-5:]) > 0.5)
    ctx.check("under 5% at scale 10 on the same logits", at10 < 0.05)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="gimp_braid_tension_sum_reduction_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Gimp-braid tension regressor (tanh MLP, MSE, SGD momentum 0.9, clipping at 1). At step "
    "120 the end-of-epoch batch goes through a second code path that backpropagates "
    "F.mse_loss(..., reduction='sum') while logging the mean: one step's gradient is 64x on an "
    "ordinary logged loss; clipping bounds the update and the run recovers.",
)
def h435_gimp_braid_sum_reduction(ctx) -> None:
    gen = seeded(4359)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def backprop(step, loss):
        return loss * 64 if step == 120 else loss  # sum over the 64 rows, not the mean

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=359),
        200,
        F.mse_loss,
        backprop=backprop,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at 120 over 30x the median of 80..119", gn[120] > 30 * _median(gn[80:120]))
    ctx.check(
        "logged loss at 120 ordinary (under 2x the median)", ls[120] < 2 * _median(ls[80:120])
    )
    ctx.check(
        "recovers: last 20 under 1.3x the pre-onset level",
        _mean(ls[-20:]) < 1.3 * _mean(ls[100:120]),
    )
    ctx.check("trained", _fell(ls))


@scenario(
    family="horn_lantern_leaf_thickness_drifting_target_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Horn-lantern leaf-thickness regressor (SiLU MLP, MSE, NAdam) on a cached set of 512 "
    "rows whose augmentation rescales the targets in place (ys.mul_(1.012)) instead of on a "
    "copy: the cached targets drift 1.2% a step, the model falls further behind and the loss "
    "slowly climbs.",
)
def h435_horn_lantern_inplace_target(ctx) -> None:
    gen = seeded(4360)
    xs, ys = next(_readings(gen, 512, 8, seed=360))
    ys = ys.clone()

    def batches():
        while True:
            idx = torch.randint(0, 512, (64,), generator=gen)
            ys.mul_(1.012)  # meant as y = y * jitter on a copy
            yield xs[idx], ys[idx].clone()

    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    y0 = float(ys.abs().mean())
    _loop(ctx, model, opt, batches(), 250, F.mse_loss)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10))
    ctx.check("targets over 10x their start scale", float(ys.abs().mean()) > 10 * y0)
    ctx.check("loss over the last 20 steps over 3x its lowest", _mean(ls[-20:]) > 3 * low)
    ctx.check("loss climbs through the second half", _mean(ls[-20:]) > 1.5 * _mean(ls[120:140]))
    ctx.check("loss fell first", low < 0.7 * _mean(ls[:10]))
    ctx.check("finite", _finite(ls))


# -- healthy controls ------------------------------------------------------------------------------


class _GatedBlock(nn.Module):
    def __init__(self, ch, dilation):
        super().__init__()
        self.filt = nn.Conv1d(ch, ch, 2, dilation=dilation)
        self.gate = nn.Conv1d(ch, ch, 2, dilation=dilation)
        self.res = nn.Conv1d(ch, ch, 1)
        self.skip = nn.Conv1d(ch, ch, 1)
        self.pad = dilation

    def forward(self, x):
        h = F.pad(x, (self.pad, 0))  # causal
        z = torch.tanh(self.filt(h)) * torch.sigmoid(self.gate(h))
        return x + self.res(z), self.skip(z)


class _OnsetTCN(nn.Module):
    """Dilated residual temporal model: gated blocks, skips summed into a per-frame BCE head."""

    def __init__(self, ch_in=2, ch=16, dilations=(1, 2, 4, 8, 16)):
        super().__init__()
        self.inp = nn.Conv1d(ch_in, ch, 1)
        self.blocks = nn.ModuleList(_GatedBlock(ch, d) for d in dilations)
        self.post = nn.Conv1d(ch, ch, 1)
        self.head = nn.Conv1d(ch, 1, 1)

    def forward(self, x):
        h = self.inp(x)
        total = 0
        for block in self.blocks:
            h, s = block(h)
            total = total + s
        return self.head(F.relu(self.post(F.relu(total)))).squeeze(1)


def _booms(gen, batch, frames=128):
    """Marsh recordings (envelope and low band) with bittern booms; label 1 on onset frames."""
    while True:
        x = 0.3 * torch.randn(batch, 2, frames, generator=gen)
        y = torch.zeros(batch, frames)
        for b in range(batch):
            n = int(torch.randint(1, 4, (1,), generator=gen))
            for t0 in torch.randint(5, frames - 20, (n,), generator=gen).tolist():
                t = torch.arange(frames - t0, dtype=torch.float32)
                x[b, 0, t0:] += 1.5 * torch.exp(-t / 8.0)
                x[b, 1, t0:] += torch.sin(0.5 * t) * torch.exp(-t / 12.0)
                y[b, t0] = 1.0
        yield x, y


@scenario(
    family="bittern_boom_onset_gated_dilated_tcn",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bittern-boom onset detector: a hand-written dilated residual temporal conv (dilations "
    "1..16, tanh x sigmoid gated activations, 1x1 residual and skip convs, skips summed into a "
    "per-frame BCE head with pos_weight), Adam under OneCycleLR, clipping at 1. Control.",
)
def h435_bittern_boom_tcn(ctx) -> None:
    gen = seeded(4361)
    model = _OnsetTCN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    pos = torch.tensor(20.0)

    def loss_fn(out, y):
        return F.binary_cross_entropy_with_logits(out, y, pos_weight=pos)

    _loop(ctx, model, opt, _booms(gen, 16), steps, loss_fn, clip=1.0, sched=sched)
    x, y = next(_booms(torch.Generator().manual_seed(2), 64))
    with torch.no_grad():
        p = torch.sigmoid(model(x))
    hit = float(p[y == 1].mean())
    miss = float(p[y == 0].mean())
    ctx.check("trained: loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("onset frames scored over 3x the others", hit > 3 * miss)
    ctx.check("finite", _finite(ctx.losses))


class _WNRegressor(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        wn = torch.nn.utils.parametrizations.weight_norm
        self.fc1 = wn(nn.Linear(d_in, hidden))
        self.fc2 = wn(nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.silu(self.fc2(F.silu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="elk_bugle_call_length_weightnorm_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Elk-bugle call-length regressor: SiLU MLP with weight normalisation on its hidden "
    "layers, Huber loss on noisy field readings, RAdam under StepLR (halving every 60 steps). "
    "Control.",
)
def h435_elk_bugle_weightnorm(ctx) -> None:
    gen = seeded(4362)
    model = _WNRegressor()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=362, noise=0.15),
        200,
        F.huber_loss,
        sched=sched,
    )
    ctx.check("trained: loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("lr halved three times", abs(opt.param_groups[0]["lr"] - 3e-3 / 8) < 1e-9)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="grouse_lek_display_label_smoothing_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Grouse-lek display classifier (ReLU MLP, cross-entropy with label smoothing 0.1 on 10% "
    "noisy labels, SGD Nesterov momentum 0.9 with weight decay, accumulation over 2, "
    "ReduceLROnPlateau on a held-out batch). Control.",
)
def h435_grouse_lek_smoothing(ctx) -> None:
    gen = seeded(4363)
    model = _Net(10, 48, 5)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_grades(torch.Generator().manual_seed(6), 256, 10, 5, seed=363, spread=1.2))

    def plateau():
        with torch.no_grad():
            return float(F.cross_entropy(model(held[0]), held[1]))

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 32, 10, 5, seed=363, spread=1.2, flip=0.1),
        150,
        loss_fn,
        classifier=True,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    with torch.no_grad():
        acc = float((model(held[0]).argmax(-1) == held[1]).float().mean())
    ctx.check("trained: loss fell", _fell(ctx.losses))
    ctx.check("held-out accuracy over 80%", acc > 0.8)
    ctx.check("finite", _finite(ctx.losses))
