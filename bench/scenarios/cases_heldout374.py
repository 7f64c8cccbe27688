"""Held-out set 374 (``h374_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a nixtamal lime-steep Gaussian-RBF Kolmogorov-Arnold network
whose tanh between its two KAN layers was dropped in a port and whose normalised basis divides by
its sum with no epsilon (an input far off the grid, a subnormal sum, inf and NaN), a cork-oak bark-strip 16-layer ReLU MLP
initialised orthogonal with gain 2 for sqrt(2) (gradients grow through depth), a trepang dive-depth
SiLU regressor resumed with strict=False after its head was renamed (a one-off loss spike), a
maple-sugaring sap-run classifier fed one shard in Fahrenheit (one corrupted batch), a
sign-writing brush-stroke classifier whose backbone unfreeze step is read in epochs (frozen), a
dust-storm visibility tanh regressor whose StepLR gamma is typed 10 for 0.1 (past 2/sharpness), a
cricket seam-wobble GELU Huber regressor whose resumed step multiplies by the accumulation count
(one gradient burst), a chestnut-roast split-time SiLU regressor with a decoupled weight decay
whose sign is flipped (a slow climb), a pachinko pin-path cosine classifier whose CLIP-style
logit scale is stored as 1/0.07 instead of log(1/0.07) (softmax collapse), a snow-groomer tiller
depth ReLU regressor whose warm-restart peak is typed 5e-1 for 5e-3 (dead ReLUs), and three
controls (a wok-hei sear-time Gaussian-RBF KAN with tanh-squashed inputs and Adam, a snooker
cushion-contact Conv1d classifier with SGD Nesterov, OneCycleLR, label smoothing and clipping, a
cheese-press whey-flow SiLU Huber regressor under fp16 autocast with a GradScaler, AdamW,
accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


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
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated (by default the loss over the accumulation count), ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step,
    ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a
    non-finite loss (once ``ctx.step`` has seen it); returns the number of steps run."""
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
            total = backprop(step, loss) if backprop is not None else loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
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


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, offset=0.0):
    """Standardised readings and a smooth nonlinear target (times ``scale`` plus ``offset``)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, scale * y + offset


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=40, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- Kolmogorov-Arnold networks ----------------------------------------------------------------------


class RBFKANLayer(nn.Module):
    """A KAN layer: on every edge (i -> o) a learnable univariate function
    phi_oi(x) = sum_g c_oig * B_g(x) + w_oi * silu(x), with B_g Gaussian radial bases on a fixed
    grid over [-1, 1]. ``normalise`` divides the bases by their sum (a partition of unity), with
    ``eps`` added to the sum."""

    def __init__(self, d_in, d_out, grid=8, normalise=False, eps=1e-6):
        super().__init__()
        self.register_buffer("centres", torch.linspace(-1.0, 1.0, grid))
        self.width = 2.0 / (grid - 1)
        self.coef = nn.Parameter(0.1 * torch.randn(d_out, d_in, grid))
        self.base = nn.Parameter(torch.randn(d_out, d_in) / math.sqrt(d_in))
        self.normalise = normalise
        self.eps = eps
        self.last_in = None
        self.last_sum = None

    def forward(self, x):
        self.last_in = x.detach()
        b = torch.exp(-(((x[..., None] - self.centres) / self.width) ** 2))
        if self.normalise:
            s = b.sum(-1, keepdim=True)
            self.last_sum = s.detach()
            b = b / (s + self.eps)
        spline = torch.einsum("big,oig->bo", b, self.coef)
        return spline + F.silu(x) @ self.base.T


class KAN(nn.Module):
    """tanh(x) -> layer1 -> tanh -> layer2 (one output): tanh squashes each layer's inputs
    into the grid; ``squash_hidden=False`` leaves layer2's inputs as they come."""

    def __init__(self, d_in, hidden, grid=8, squash_hidden=True, normalise=False, eps=1e-6):
        super().__init__()
        self.layer1 = RBFKANLayer(d_in, hidden, grid, normalise, eps)
        self.layer2 = RBFKANLayer(hidden, 1, grid, normalise, eps)
        self.squash_hidden = squash_hidden
        self.hidden = None

    def forward(self, x):
        h = self.layer1(torch.tanh(x))
        if self.squash_hidden:
            h = torch.tanh(h)
        if h.requires_grad:
            h.retain_grad()
        self.hidden = h
        return self.layer2(h).squeeze(-1)


@scenario(
    "nixtamal_steep_pericarp_rbf_kan",
    "NAdam",
    "nonfinite",
    "layer2",
    77,
    heldout=True,
    note="a Gaussian-RBF Kolmogorov-Arnold network whose bases are normalised by their sum; the "
    "port from the reference code dropped the tanh that keeps layer2's inputs inside the [-1, 1] "
    "grid and the epsilon in the division; as layer1's outputs grow to fit lime-cook times of about 60 "
    "minutes, an input of layer2 lands so far off the grid that every basis underflows and the "
    "sum divided by is subnormal: layer2's backward through b / sum overflows to inf and NaN at "
    "step 77 (loss still finite), the weights turn NaN and the loss is NaN at step 78",
)
def h374_nixtamal_kan_zero_over_zero(ctx: Context) -> None:
    gen = seeded(37401)
    model = KAN(6, 8, squash_hidden=False, normalise=True, eps=0.0)  # the bug: True, 1e-6
    with torch.no_grad():
        model.layer1.coef.mul_(0.1)
    opt = torch.optim.NAdam(model.parameters(), lr=4e-3)
    reach, least, fixed, grads_ok = [], [], {}, []

    def watch(step, out, x, y):
        reach.append(float(model.layer2.last_in.abs().max()))
        least.append(float(model.layer2.last_sum.min()))
        if least[-1] < 1e-30:  # the same step with the epsilon restored
            kept = model.hidden
            model.layer2.eps = 1e-6
            loss = F.mse_loss(model(x), y)
            g = torch.autograd.grad(loss, list(model.parameters()))
            fixed[step] = all(bool(t.isfinite().all()) for t in g)
            model.layer2.eps = 0.0
            model.hidden = kept

    def inspect(step):
        params_ok = all(bool(p.grad.isfinite().all()) for p in model.parameters())
        grads_ok.append((params_ok, bool(model.hidden.grad.isfinite().all())))

    ran = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 374011, scale=15.0, offset=60.0),
        300,
        F.mse_loss,
        watch=watch,
        inspect=inspect,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    k = next((i for i, (ok, _) in enumerate(grads_ok) if not ok), None)
    ctx.check("the loss non-finite at the last step run", bad is not None and bad == ran - 1)
    ctx.check("the loss finite for the first 60 steps", bad is not None and bad >= 60)
    ctx.check(
        "the gradients non-finite first at the step before, on a finite loss",
        k is not None and k == bad - 1 and math.isfinite(ls[k]),
    )
    ctx.check(
        "there the gradient at layer2's input is non-finite (layer2's backward made it)",
        k is not None and not grads_ok[k][1],
    )
    ctx.check(
        "at that step an input of layer2 lies over 3.5 (2.5 off the grid's end)",
        k is not None and reach[k] > 3.5,
    )
    ctx.check("and a row's basis sum underflowed under 1e-37", k is not None and least[k] < 1e-37)
    ctx.check(
        "the same step's gradient with the epsilon restored is finite",
        k is not None and fixed.get(k, False) is True,
    )


@scenario(
    "wok_hei_sear_time_rbf_kan",
    "Adam",
    "healthy",
    heldout=True,
    note="control: a Gaussian-RBF Kolmogorov-Arnold network (learnable univariate functions on "
    "every edge plus a SiLU base), inputs and hidden values squashed into the grid with tanh, "
    "Adam at 3e-3 with cosine decay, clipping at 1",
)
def h374_wok_hei_kan_control(ctx: Context) -> None:
    gen = seeded(37402)
    model = KAN(6, 8)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 250
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    _loop(ctx, model, opt, _readings(gen, 64, 6, 374021), steps, F.mse_loss, clip=1.0, sched=sched)
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("the loss fell under 0.5x its start", _fell(ctx.losses, ratio=0.5))


# -- depth ----------------------------------------------------------------------------------------


class DeepReLU(nn.Module):
    def __init__(self, d_in, width, depth, gain=None):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        if gain is not None:
            for lin in self.layers:
                nn.init.orthogonal_(lin.weight, gain=gain)
                nn.init.zeros_(lin.bias)
        self.outs = []

    def forward(self, x):
        h = F.relu(self.inp(x))
        self.outs = []
        for lin in self.layers:
            h = lin(h)
            if h.requires_grad:
                h.retain_grad()
            self.outs.append(h)
            h = F.relu(h)
        return self.head(h).squeeze(-1)


@scenario(
    "cork_oak_bark_strip_deep_relu_mlp",
    "SGD",
    "exploding_gradients",
    "layers.0",
    None,
    heldout=True,
    note="the 16 hidden ReLU layers are initialised orthogonal with gain=2.0, the config's "
    "'relu_gain: 2' meant as the variance factor (gain sqrt(2)); each layer amplifies the "
    "backward signal by about sqrt(2) and the gradient grows layer by layer towards the input "
    "(SGD with momentum, clipped at 1, so nothing overflows)",
)
def h374_cork_oak_gain_two_init(ctx: Context) -> None:
    gen = seeded(37403)
    model = DeepReLU(10, 64, 16, gain=2.0)  # the bug: gain=math.sqrt(2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    def inspect(step):
        first, last = model.outs[0].grad, model.outs[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 374031), 150, F.mse_loss, clip=1.0, inspect=inspect
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "gradient at layers.0's output over 20x that at layers.15's at the start", ratios[0] > 20
    )
    ctx.check("and over 10x on the median of the last 50 steps", _median(ratios[-50:]) > 10)


# -- a loss spike ----------------------------------------------------------------------------------


@scenario(
    "trepang_dive_depth_silu_regressor",
    "Adam",
    "loss_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="the job is preempted and resumed at step 150 into a freshly built model with "
    "load_state_dict(strict=False); a refactor renamed the output layer from 'out' to 'head', so "
    "the checkpoint's head weights are silently skipped and the head keeps its fresh init while "
    "the trunk and Adam's state are restored: the loss jumps on an ordinary batch and the run "
    "recovers within a few dozen steps",
)
def h374_trepang_resume_skipped_head(ctx: Context) -> None:
    gen = seeded(37404)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    onset = 150
    ordinary = {}

    def alter(step, x, y):
        if step == onset:
            with torch.no_grad():  # the same batch under the weights before the resume
                ordinary["loss"] = float(F.mse_loss(model(x), y))
            saved = {k: v.clone() for k, v in model.state_dict().items()}
            ckpt = {(("out." + k[5:]) if k.startswith("head.") else k): v for k, v in saved.items()}
            fresh = Trunk(10, 64, act=nn.SiLU)
            with torch.no_grad():
                model.head.weight.copy_(fresh.head.weight)
                model.head.bias.copy_(fresh.head.bias)
            model.load_state_dict(ckpt, strict=False)  # the bug: 'out.*' keys skipped
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 374041), 260, F.mse_loss, alter=alter)
    ls = ctx.losses
    pre = _median(ls[onset - 50 : onset])
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "the loss at the resume over 5x its median of the 50 steps before", ls[onset] > 5 * pre
    )
    ctx.check(
        "the same batch under the weights before the resume ordinary (under 2x that median)",
        ordinary["loss"] < 2 * pre,
    )
    ctx.check(
        "the run recovers (last 30 steps under 1.5x the median before)",
        _mean(ls[-30:]) < 1.5 * pre,
    )


# -- a corrupted shard ---------------------------------------------------------------------------------


@scenario(
    "sugaring_sap_run_day_relu_classifier",
    "Adagrad",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=120,
    note="the sap-run classifier reads standardised overnight and daytime temperatures; one "
    "sugarbush's shard (step 120) was exported in degrees Fahrenheit by a US logger and skipped "
    "the standardisation, so its temperature columns are near 30-60 instead of about 0; the "
    "loss and gradient jump on that batch, clipping holds, and the run recovers",
)
def h374_sugaring_fahrenheit_shard(ctx: Context) -> None:
    gen = seeded(37405)
    model = Trunk(8, 64, out=4)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    onset = 120

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, :4] = 45.0 + 15.0 * x[:, :4]  # raw Fahrenheit, not standardised
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 8, 4, 374051),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    pre_l, pre_g = _median(ls[onset - 40 : onset]), _median(gs[onset - 40 : onset])
    ctx.check("finite losses", _finite(ls))
    ctx.check("the loss at the shard over 20x its median before", ls[onset] > 20 * pre_l)
    ctx.check("the gradient at the shard over 20x its median before", gs[onset] > 20 * pre_g)
    ctx.check(
        "the run recovers (last 30 steps under 2x the median before, or under 0.1)",
        _mean(ls[-30:]) < max(2 * pre_l, 0.1),
    )


# -- a frozen backbone -------------------------------------------------------------------------------------


@scenario(
    "sign_writing_brush_stroke_two_group_classifier",
    "RMSprop",
    "update_ratio_out_of_range",
    ("fc1", "fc2"),
    None,
    heldout=True,
    note="the backbone (fc1, fc2) is kept frozen by a LambdaLR factor of 0 until the config's "
    "'unfreeze_at: 100', meant in steps, which the trainer multiplies by the steps per epoch "
    "(28), so the backbone's lr stays exactly 0 for the whole 200-step run while the head trains",
)
def h374_sign_writing_unfreeze_in_epochs(ctx: Context) -> None:
    gen = seeded(37406)
    model = Trunk(12, 64, out=6)
    backbone = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.RMSprop(
        [{"params": backbone, "lr": 1e-3}, {"params": model.head.parameters(), "lr": 1e-3}]
    )
    unfreeze_at = 100 * 28  # the bug: 100 (steps), multiplied by the steps per epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 0.0 if s < unfreeze_at else 1.0, lambda s: 1.0]
    )
    w0 = {n: m.weight.detach().clone() for n, m in (("fc1", model.fc1), ("fc2", model.fc2))}
    h0 = model.head.weight.detach().clone()
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 374061, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "fc1 and fc2 moved under 1e-6 of their norm",
        max(_rel_change(w0["fc1"], model.fc1.weight), _rel_change(w0["fc2"], model.fc2.weight))
        < 1e-6,
    )
    ctx.check("the head moved over 5% of its norm", _rel_change(h0, model.head.weight) > 0.05)


# -- sharpness -------------------------------------------------------------------------------------


@scenario(
    "dust_storm_visibility_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=60,
    note="StepLR with step_size 60 and gamma typed 10 for 0.1: the lr rises tenfold at step 60 "
    "and again at 120 instead of decaying; lr x the top Hessian eigenvalue is under 2 at the "
    "start and passes 2 after a rise, after which the loss oscillates and blows up (plain SGD)",
)
def h374_dust_storm_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(37407)
    model = Trunk(8, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=10.0)  # the bug: 0.1
    data = _readings(gen, 128, 8, 374071)
    px, py = next(data)
    seen = []

    def before(step):
        if step % 10 == 0:
            seen.append((step, opt.param_groups[0]["lr"], _sharpness(model, F.mse_loss, px, py)))

    _loop(ctx, model, opt, data, 180, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    s0 = seen[0]
    ctx.check("lr x sharpness under 2 at the start", s0[1] * s0[2] < 2)
    crossed = [s for s in seen if math.isfinite(s[2]) and s[1] * s[2] > 2]
    ctx.check("lr x sharpness past 2 after a rise", bool(crossed) and crossed[0][0] >= 60)
    ctx.check(
        "the loss then blows up to over 100x its lowest value or non-finite",
        not _finite(ls) or max(ls) > 100 * min(ls),
    )


# -- a gradient burst -------------------------------------------------------------------------------------


@scenario(
    "cricket_seam_wobble_gelu_huber_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="accumulation over 8 micro-batches, each loss divided by 8; the resume path at step 150 "
    "rebuilds the loss scaling as loss * accum instead of loss / accum, so one step's gradient on "
    "clean data is 64x too large (SGD Nesterov, clipped at 1, the run carries on)",
)
def h374_cricket_seam_accum_multiply(ctx: Context) -> None:
    gen = seeded(37408)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    onset, accum = 150, 8

    def backprop(step, loss):
        return loss * accum if step == onset else loss / accum  # the bug at the resumed step

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 374081),
        240,
        F.huber_loss,
        backprop=backprop,
        accumulate=accum,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("finite losses", _finite(ls))
    ctx.check(
        "the gradient at step 150 over 20x its median before",
        gs[onset] > 20 * _median(gs[onset - 50 : onset]),
    )
    ctx.check(
        "the loss at step 150 ordinary (under 2x its median before)",
        ls[onset] < 2 * _median(ls[onset - 50 : onset]),
    )


# -- a slow climb ---------------------------------------------------------------------------------------


@scenario(
    "chestnut_roast_split_time_silu_regressor",
    "Adamax",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="a hand-written decoupled weight decay applied after each Adamax step as "
    "p *= 1 + lr * wd (the sign typed + for -); the weights grow a little every step and the "
    "loss climbs slowly with no spike and no other mechanism",
)
def h374_chestnut_decay_sign_flip(ctx: Context) -> None:
    gen = seeded(37409)
    model = Trunk(8, 64, act=nn.SiLU)
    lr, wd = 2e-3, 2.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    w0 = sum(float(p.detach().norm()) for p in model.parameters())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the bug: 1 - lr * wd

    _loop(ctx, model, opt, _readings(gen, 64, 8, 374091), 300, F.mse_loss, after=after)
    ls = ctx.losses
    w1 = sum(float(p.detach().norm()) for p in model.parameters())
    windows = [_mean(ls[i : i + 30]) for i in range(0, len(ls) - 29, 10)]
    ctx.check("finite losses", _finite(ls))
    ctx.check("the weights' norm over 2x its start", w1 > 2 * w0)
    ctx.check(
        "the loss over the last 30 steps over 3x its lowest 30-step mean",
        _mean(ls[-30:]) > 3 * min(windows),
    )
    ctx.check(
        "a gradual climb: no 30-step window's mean over 2x the window before it",
        all(_mean(ls[i : i + 30]) < 2 * _mean(ls[i - 30 : i]) for i in range(30, len(ls) - 29, 30)),
    )


# -- softmax collapse -------------------------------------------------------------------------------------


class CosineHead(nn.Module):
    """CLIP-style cosine classifier: exp(logit_scale) * cos(feature, class prototype)."""

    def __init__(self, d, classes, logit_scale):
        super().__init__()
        self.protos = nn.Parameter(torch.randn(classes, d) / math.sqrt(d))
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def cosines(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.protos, dim=-1).T

    def forward(self, h):
        return self.logit_scale.exp() * self.cosines(h)


class CosineNet(nn.Module):
    def __init__(self, d_in, hidden, classes, logit_scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = CosineHead(hidden, classes, logit_scale)

    def features(self, x):
        return self.fc2(self.act1(self.fc1(x)))

    def forward(self, x):
        return self.head(self.features(x))


@scenario(
    "pachinko_pin_path_cosine_classifier",
    "AdamW",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="the CLIP-style logit scale is stored as a log and exponentiated in the forward pass, "
    "but it is initialised with 1/0.07 instead of log(1/0.07); the scale is exp(14.3), about "
    "1.6e6, and the softmax saturates so most rows' target probability rounds to exactly 1.0",
)
def h374_pachinko_logit_scale_not_log(ctx: Context) -> None:
    gen = seeded(37410)
    model = CosineNet(10, 64, 5, logit_scale=1 / 0.07)  # the bug: math.log(1 / 0.07)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    late, intended = [], []

    def watch(step, out, x, y):
        if step >= 100:
            p = torch.softmax(out.detach(), -1).gather(1, y[:, None])
            late.append(float((p == 1.0).float().mean()))
            with torch.no_grad():
                q = torch.softmax(model.head.cosines(model.features(x)) / 0.07, -1)
            intended.append(float((q.gather(1, y[:, None]) == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, 374101),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check(
        "over half the rows' target probability exactly 1.0 after step 100", _mean(late) > 0.5
    )
    ctx.check("under 5% of them at the intended scale 1/0.07", _mean(intended) < 0.05)


# -- dead units -----------------------------------------------------------------------------------------


@scenario(
    "snow_groom_tiller_depth_relu_regressor",
    "RAdam",
    "loss_of_plasticity",
    ("fc2", "act2"),
    None,
    heldout=True,
    onset=100,
    note="a hand-written warm restart at step 100 sets the lr to the config's restart peak, typed "
    "5e-1 for 5e-3; the large RAdam steps push fc2's pre-activations negative for every input, "
    "most of act2's ReLUs die at once and never come back; the survivors refit the loss",
)
def h374_snow_groom_restart_peak_typo(ctx: Context) -> None:
    gen = seeded(37411)
    model = Trunk(10, 64)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    onset, peak, base, cycle = 100, 5e-1, 5e-3, 100  # the bug: peak 5e-3
    dead, masks = [], []

    def before(step):
        top = base if step < onset else peak
        t = (step % cycle) / cycle
        for g in opt.param_groups:
            g["lr"] = 0.5 * top * (1 + math.cos(math.pi * t))

    def watch(step, out, x, y):
        with torch.no_grad():
            h = model.features(x)
        dead.append(_dead(h))
        masks.append((h <= 0).all(0))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 10, 374111),
        260,
        F.mse_loss,
        before=before,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite losses", _finite(ls))
    ctx.check("under 30% of act2's units dead just before the restart", dead[onset - 1] < 0.3)
    ctx.check("over 60% of act2's units dead for the last 50 steps", min(dead[-50:]) > 0.6)
    early, last = masks[onset + 20], masks[-1]
    ctx.check(
        "they stay dead: over 95% of the units dead 20 steps after the restart are dead at the end",
        bool(early.any()) and float((early & last).sum() / early.sum()) > 0.95,
    )
    ctx.check(
        "the loss within 10 steps of the restart over 3x its mean before",
        max(ls[onset : onset + 10]) > 3 * _mean(ls[onset - 30 : onset]),
    )


# -- controls ----------------------------------------------------------------------------------------


class StrokeConv(nn.Module):
    def __init__(self, channels=2, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    "snooker_cushion_contact_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier of cue-ball cushion contacts from accelerometer "
    "traces, SGD Nesterov momentum under OneCycleLR, label smoothing 0.1, clipping at 1",
)
def h374_snooker_onecycle_control(ctx: Context) -> None:
    gen = seeded(37412)
    model = StrokeConv()
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 374121),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("the loss fell under 0.6x its start", _fell(ctx.losses, ratio=0.6))


@scenario(
    "cheese_press_whey_flow_silu_huber_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a SiLU Huber regressor of whey flow under fp16 autocast with a GradScaler, "
    "AdamW with a no-decay group for biases, accumulation over 2, ReduceLROnPlateau on a "
    "held-out batch, clipping at 1",
)
def h374_cheese_press_fp16_control(ctx: Context) -> None:
    gen = seeded(37413)
    model = Trunk(10, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    data = _readings(gen, 32, 10, 374131)
    vx, vy = next(data)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("finite losses", _finite(ctx.losses))
    ctx.check("the loss fell under 0.6x its start", _fell(ctx.losses, ratio=0.6))
