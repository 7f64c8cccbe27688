"""Held-out set 377 (``h377_``): hand-written models of trades, sports, instruments and natural
phenomena: a sea-breeze front advection Fourier neural operator whose hand-written decoupled
weight decay has its sign flipped (the loss climbs slowly), a cooper barrel-stave bend Gaussian
NLL net whose variance head lost its softplus (log of a negative variance, NaN), a hurdy-gurdy
wheel-rosin GELU regressor whose resumed step skips the unscale of a manual static loss scale
(Adam's second moment poisoned), a thatcher reed-bundle ReLU BCE net fed one shard in
millimetres instead of metres (one corrupted batch), a sumo tachiai deep tanh MLP with an init
gain typed 6.0 for 5/3 (gradients grow through depth), a farrier hoof-angle tanh regressor whose
warm-up peak is typed 4e0 for 4e-2 (past 2/sharpness), a tuba valve-slide two-group classifier
whose trunk lr is typed 1e-9 for 1e-3 (frozen), a rowing catch-timing SiLU Huber regressor whose
step-150 micro-batch loss uses reduction='sum' (one gradient burst), a zither fret-buzz GELU
classifier with a softmax temperature typed 5e-3 for 5e-1 (softmax collapse), a kelp-bed canopy
ReLU regressor with Adam lr typed 5e-1 for 5e-4 (dead ReLUs), and three controls (a permafrost
active-layer heat-equation FNO with 8 modes, LayerNorm between blocks, AdamW and cosine decay; a
bodhran tipper-stroke Conv1d classifier with SGD momentum, OneCycleLR, label smoothing and
clipping; an avalanche slab-depth SiLU Huber regressor under fp16 autocast with a GradScaler,
Adamax, a no-decay bias group, accumulation and ReduceLROnPlateau).

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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.5) -> bool:
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
    watch=None,
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """Training loop. ``alter(step, x, y)`` changes a batch; ``watch(step, out, x, y)`` sees the
    forward pass; ``backprop(step, micro, loss)`` returns the loss actually backpropagated (before
    the division by the accumulation count); ``after(step)`` runs after the optimizer step;
    ``plateau()`` gives a held-out loss for ReduceLROnPlateau. Stops after a non-finite loss once
    ``ctx.step`` has seen it."""
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
            out = out.float() if isinstance(out, torch.Tensor) else out
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, micro, loss) if backprop is not None else loss
            total = total / accumulate
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


# -- data --------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _binary(gen, batch, d_in, seed, flip=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = ((x @ w + 0.3 * torch.sin(2 * x[:, 0])) > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = 1.0 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=48, channels=2):
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


def _pde(gen, batch, n=64, kmax=10, nu=0.02, c=0.0, t_end=1.0):
    """Periodic 1-D advection-diffusion u_t + c u_x = nu u_xx on [0, 2 pi): random initial
    profiles (Fourier series with decaying amplitudes) and the exact solution at ``t_end``,
    computed in Fourier space. Inputs are (u0, grid) per point, targets u(t_end)."""
    x = torch.arange(n) * (2 * math.pi / n)
    k = torch.arange(1, kmax + 1, dtype=torch.float32)
    decay = torch.exp(-nu * k**2 * t_end)
    while True:
        a = torch.randn(batch, kmax, generator=gen) / k
        b = torch.randn(batch, kmax, generator=gen) / k
        arg0 = k[None, :, None] * x[None, None, :]
        u0 = (a[:, :, None] * torch.cos(arg0) + b[:, :, None] * torch.sin(arg0)).sum(1)
        arg1 = k[None, :, None] * (x[None, None, :] - c * t_end)
        u1 = (
            decay[None, :, None]
            * (a[:, :, None] * torch.cos(arg1) + b[:, :, None] * torch.sin(arg1))
        ).sum(1)
        grid = torch.sin(x)[None].expand(batch, n)
        yield torch.stack([u0, grid], -1), u1


# -- models ------------------------------------------------------------------------------------------


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


class SpectralConv1d(nn.Module):
    """Fourier layer: rfft, a learnt complex channel mix on the lowest ``modes`` frequencies
    (the rest truncated to zero), irfft."""

    def __init__(self, width, modes):
        super().__init__()
        self.modes = modes
        scale = 1.0 / (width * width)
        self.w_re = nn.Parameter(scale * torch.rand(width, width, modes))
        self.w_im = nn.Parameter(scale * torch.rand(width, width, modes))

    def forward(self, x):  # (batch, channels, points)
        n = x.shape[-1]
        xf = torch.fft.rfft(x)
        w = torch.complex(self.w_re, self.w_im)
        mixed = torch.einsum("bim,iom->bom", xf[:, :, : self.modes], w)
        out = torch.zeros(x.shape[0], w.shape[1], n // 2 + 1, dtype=xf.dtype)
        out[:, :, : self.modes] = mixed
        return torch.fft.irfft(out, n=n)


class FNOBlock(nn.Module):
    def __init__(self, width, modes):
        super().__init__()
        self.spectral = SpectralConv1d(width, modes)
        self.pointwise = nn.Conv1d(width, width, 1)

    def forward(self, h):  # (batch, points, channels)
        z = h.transpose(1, 2)
        return F.gelu(self.spectral(z) + self.pointwise(z)).transpose(1, 2)


class FNO1d(nn.Module):
    """lift -> [block -> LayerNorm] x depth -> proj1 -> GELU -> proj2."""

    def __init__(self, width=24, modes=8, depth=3, layer_norm=True):
        super().__init__()
        self.lift = nn.Linear(2, width)
        self.blocks = nn.ModuleList(FNOBlock(width, modes) for _ in range(depth))
        self.norms = nn.ModuleList(
            (nn.LayerNorm(width) if layer_norm else nn.Identity()) for _ in range(depth)
        )
        self.proj1 = nn.Linear(width, 64)
        self.proj2 = nn.Linear(64, 1)

    def forward(self, x):
        h = self.lift(x)
        for block, norm in zip(self.blocks, self.norms, strict=True):
            h = norm(block(h))
        return self.proj2(F.gelu(self.proj1(h))).squeeze(-1)


def _sharpness(model, loss_fn, x, y, iters=15) -> float:
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


# -- Fourier neural operators on generated 1-D PDE data ---------------------------------------------


@scenario(
    "permafrost_active_layer_heat_fno",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a hand-written Fourier neural operator (8 truncated modes, 3 spectral blocks, "
    "LayerNorm between blocks) mapping an active-layer temperature profile to its diffused "
    "profile under the periodic heat equation, MSE, AdamW at 3e-3 with weight decay 1e-4 and "
    "cosine decay over the run",
)
def h377_permafrost_heat_fno_control(ctx: Context) -> None:
    gen = seeded(37701)
    model = FNO1d(width=24, modes=8, depth=3, layer_norm=True)
    steps = 150
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    n = _loop(ctx, model, opt, _pde(gen, 32, nu=0.05), steps, F.mse_loss, sched=sched)
    ls = ctx.losses
    ctx.check("ran every step", n == steps)
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("loss fell below a fifth of its start", _mean(ls[-15:]) < 0.2 * _mean(ls[:5]))


@scenario(
    "sea_breeze_front_advection_fno",
    "Adam",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="a hand-written decoupled weight decay applied after Adam's step as "
    "p.mul_(1 + lr * wd) instead of p.mul_(1 - lr * wd) (wd 8) on an FNO of sea-breeze front "
    "advection-diffusion; the weights inflate a little every step, Adam cannot keep up and the "
    "loss climbs slowly after its minimum, with no jump and no NaN",
)
def h377_sea_breeze_fno_decay_sign(ctx: Context) -> None:
    gen = seeded(37702)
    model = FNO1d(width=20, modes=8, depth=2, layer_norm=False)
    lr, wd = 1e-3, 8.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the bug: the decay's sign

    n = _loop(ctx, model, opt, _pde(gen, 32, nu=0.03, c=1.0), 220, F.mse_loss, after=after)
    ls = ctx.losses
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    lowest = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19))
    jumps = max(b / max(a, 1e-12) for a, b in zip(ls[:-1], ls[1:], strict=True))
    ctx.check("ran every step", n == 220)
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("weights grew over 3x", w1 > 3 * w0)
    ctx.check("last 20-step mean over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * lowest)
    ctx.check("no step jumps the loss by 2x or more", jumps < 2.0)


# -- a distribution's NLL -----------------------------------------------------------------------------


class GaussNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> mean_head / var_head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        # the port dropped F.softplus(...) around the variance head
        return self.mean_head(h).squeeze(-1), self.var_head(h).squeeze(-1)


def _gauss_nll(out, y):
    mu, var = out
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


@scenario(
    "cooper_barrel_stave_bend_gaussian_nll_net",
    "RMSprop",
    "nonfinite",
    "var_head",
    "auto",
    heldout=True,
    note="a heteroscedastic Gaussian NLL regressor of barrel-stave bend; porting the model "
    "dropped the softplus around the variance head, so the variance is the raw linear output; "
    "as the fit tightens RMSprop pushes it below zero for some stave and log(var) is NaN",
)
def h377_cooper_stave_nll_no_softplus(ctx: Context) -> None:
    gen = seeded(37703)
    model = GaussNet(8)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    seen = {"nonpos": None}

    def watch(step, out, x, y):
        if seen["nonpos"] is None and bool((out[1].detach() <= 0).any()):
            seen["nonpos"] = step

    n = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 377030, noise=0.1), 300, _gauss_nll, watch=watch
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss non-finite before the end", bad is not None)
    ctx.check("loss finite for the first 20 steps", _finite(ls[:20]))
    ctx.check(
        "a variance was <= 0 at the non-finite step",
        seen["nonpos"] is not None and bad is not None and seen["nonpos"] == bad,
    )
    ctx.check("stopped at the non-finite step", bad is not None and n == bad + 1)


# -- Adam's second moment -----------------------------------------------------------------------------


@scenario(
    "hurdy_gurdy_wheel_rosin_gelu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=100,
    note="a manual mixed-precision recipe multiplies the loss by a static scale of 65536 and "
    "divides the gradients back before the step; the step resumed from a checkpoint at 100 "
    "skips the division, one gradient 65536x fills Adam's second moment and the per-weight "
    "updates afterwards shrink far below their size before while the gradients do not",
)
def h377_hurdy_gurdy_resume_unscale(ctx: Context) -> None:
    gen = seeded(37704)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scale = 65536.0
    onset = 100
    snap = {}
    moves = []

    def backprop(step, micro, loss):
        return loss * scale

    def before(step):
        snap["p"] = [p.detach().clone() for p in model.parameters()]

    def unscale():
        pass

    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 377040, noise=0.1)
    raw = []
    for step in range(260):
        before(step)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        backprop(step, 0, loss).backward()
        if step != onset:  # the resumed step skips the unscale
            for p in model.parameters():
                p.grad.div_(scale)
        ctx.grad_norms.append(grad_norm(model))
        raw.append(grad_norm(model) / (scale if step == onset else 1.0))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        moves.append(
            float(
                torch.cat(
                    [
                        (p.detach() - q).abs().flatten()
                        for p, q in zip(model.parameters(), snap["p"], strict=True)
                    ]
                ).median()
            )
        )
    unscale()
    g = ctx.grad_norms
    ls = ctx.losses
    ctx.check(
        "gradient at the onset over 1000x the median before", g[onset] > 1000 * _median(g[:onset])
    )
    ctx.check(
        "the onset batch is ordinary (loss under 2x the median before)",
        ls[onset] < 2 * _median(ls[50:onset]),
    )
    ctx.check(
        "median per-weight update 60-160 steps later under a tenth of before",
        _median(moves[onset + 60 : onset + 160]) < 0.1 * _median(moves[50:onset]),
    )
    ctx.check(
        "gradients afterwards not smaller than before",
        _median(raw[onset + 60 : onset + 160]) > 0.5 * _median(raw[50:onset]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- one bad shard ------------------------------------------------------------------------------------


@scenario(
    "thatcher_reed_bundle_relu_bce_net",
    "Adagrad",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=120,
    note="a ReLU BCE net of whether a water-reed bundle passes the thatcher's grading; one "
    "yard's shard at step 120 records its bundle lengths and girths in millimetres instead of "
    "metres (x1000 in four of the standardised columns); clipping at 1, the run recovers",
)
def h377_thatcher_reed_mm_shard(ctx: Context) -> None:
    gen = seeded(37705)
    model = Trunk(8, 48)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    onset = 120

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[:, :4] = x[:, :4] * 1000.0
        return x, y

    n = _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 8, 377050),
        220,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("ran every step", n == 220)
    ctx.check(
        "loss at the onset over 20x the median before", ls[onset] > 20 * _median(ls[80:onset])
    )
    ctx.check(
        "gradient at the onset over 20x the median before", g[onset] > 20 * _median(g[80:onset])
    )
    ctx.check(
        "recovers: last 30 steps under 2x the median before",
        _mean(ls[-30:]) < 2 * _median(ls[80:onset]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- gradients through depth --------------------------------------------------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
        self.head = nn.Linear(width, 1)
        self.acts: list[torch.Tensor] = []

    def forward(self, x):
        self.acts = []
        for lin in self.layers:
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.acts.append(x)
            x = torch.tanh(x)
        return self.head(x).squeeze(-1)


@scenario(
    "sumo_tachiai_push_deep_tanh_mlp",
    "Adamax",
    "exploding_gradients",
    "layers.0",
    None,
    heldout=True,
    note="a 12-layer tanh MLP of tachiai push force; the xavier init gain is read from a config "
    "typed 6.0 instead of 5/3 (calculate_gain('tanh')), the network sits in the chaotic regime "
    "and the backpropagated gradient grows layer by layer towards the input; clipping at 1 keeps "
    "the run finite",
)
def h377_sumo_tachiai_init_gain(ctx: Context) -> None:
    gen = seeded(37706)
    model = DeepTanh(10, 64, 12, gain=6.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ratios = []

    def inspect_ratio():
        first, last = model.acts[0].grad, model.acts[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, 377060)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        inspect_ratio()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient at layers.0 over 20x that at layers.11 at the start", ratios[0] > 20)
    ctx.check("over 10x on average through the run", _mean(ratios) > 10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- the stability limit ------------------------------------------------------------------------------


@scenario(
    "farrier_hoof_angle_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=15,
    note="linear warm-up over 200 steps to a peak lr typed 4e0 for 4e-2; lr x the top Hessian "
    "eigenvalue (power iteration) starts under 2 and passes 2 during the warm-up, after which "
    "plain SGD oscillates and the loss blows up",
)
def h377_farrier_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(37707)
    model = Trunk(8, 48, act=nn.Tanh)
    peak, warm = 4e0, 200
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_readings(torch.Generator().manual_seed(3770700), 256, 8, 377070))
    products = {}

    def before(step):
        lr = peak * (step + 1) / warm
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 5 == 0 and (
            not ctx.losses or math.isfinite(ctx.losses[-1]) and ctx.losses[-1] < 10
        ):
            products[step] = lr * _sharpness(model, F.mse_loss, *probe)

    n = _loop(ctx, model, opt, _readings(gen, 64, 8, 377070), 200, F.mse_loss, before=before)
    ls = ctx.losses
    crossed = [s for s, v in sorted(products.items()) if v > 2]
    ctx.check("lr x sharpness under 2 at the start", products[0] < 2)
    ctx.check("lr x sharpness passes 2 during the warm-up", bool(crossed))
    ctx.check(
        "loss blows up (non-finite or over 100x its lowest) after the crossing",
        bool(crossed)
        and (_first_bad(ls) is not None or max(ls[crossed[0] :]) > 100 * min(ls))
        and n <= 200,
    )


# -- a frozen trunk -----------------------------------------------------------------------------------


@scenario(
    "tuba_valve_slide_two_group_relu_classifier",
    "NAdam",
    "update_ratio_out_of_range",
    ("fc1", "fc2"),
    None,
    heldout=True,
    note="a ReLU classifier of tuba valve-slide tuning grades with two parameter groups; the "
    "trunk's lr is typed 1e-9 for 1e-3 (the head at 1e-3): fc1 and fc2 barely move while the "
    "head learns on random features",
)
def h377_tuba_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(37708)
    model = Trunk(12, 64, out=6)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.NAdam(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-3}]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    n = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 377080, spread=1.2),
        200,
        F.cross_entropy,
        classifier=True,
    )
    ctx.check("ran every step", n == 200)
    ctx.check("fc1 moved under 1e-5 of its norm", _rel_change(w1, model.fc1.weight) < 1e-5)
    ctx.check("fc2 moved under 1e-5 of its norm", _rel_change(w2, model.fc2.weight) < 1e-5)
    ctx.check("the head moved over 5% of its norm", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- one gradient burst -------------------------------------------------------------------------------


@scenario(
    "rowing_catch_timing_accum_silu_huber_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="SGD with Nesterov momentum, gradient accumulation over 4 micro-batches of 128; at step "
    "150 (the first step after an epoch-end validation) the first micro-batch's loss comes from "
    "the validation helper's criterion with reduction='sum', 128x its mean, on clean data; "
    "clipping at 1, the run recovers",
)
def h377_rowing_catch_sum_reduction(ctx: Context) -> None:
    gen = seeded(37709)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    onset = 150

    def backprop(step, micro, loss):
        if step == onset and micro == 0:
            return loss * 128  # F.huber_loss(..., reduction="sum") on a batch of 128
        return loss

    n = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 10, 377090, noise=0.1),
        240,
        F.huber_loss,
        backprop=backprop,
        accumulate=4,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("ran every step", n == 240)
    ctx.check(
        "gradient at the onset over 20x the median before", g[onset] > 20 * _median(g[100:onset])
    )
    ctx.check(
        "the onset batch is clean (loss under 2x the median before)",
        ls[onset] < 2 * _median(ls[100:onset]),
    )
    ctx.check(
        "recovers: last 30 steps under 1.5x the median before",
        _mean(ls[-30:]) < 1.5 * _median(ls[100:onset]),
    )
    ctx.check("loss fell from the start", _mean(ls[100:onset]) < 0.7 * _mean(ls[:10]))


# -- a saturated softmax ------------------------------------------------------------------------------


class TempClassifier(nn.Module):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


def _collapsed(logits, y):
    p = torch.softmax(logits.detach().float(), -1)
    return float((p.gather(1, y[:, None]) == 1.0).float().mean())


@scenario(
    "zither_fret_buzz_temperature_gelu_classifier",
    "RAdam",
    "softmax_collapse",
    "head",
    None,
    heldout=True,
    note="a GELU classifier of zither fret-buzz types whose softmax temperature is typed 5e-3 "
    "for 5e-1 in the config: the logits are 100x too large, the softmax saturates and many "
    "rows' target probability rounds to exactly 1.0 (over 30% late, none at the intended 5e-1)",
)
def h377_zither_temperature_typo(ctx: Context) -> None:
    gen = seeded(37710)
    model = TempClassifier(12, 64, 8, temperature=5e-3)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    shares = []

    def watch(step, out, x, y):
        shares.append(_collapsed(out, y))

    n = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 8, 377100, spread=0.6),
        300,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    with torch.no_grad():
        x, y = next(_grades(torch.Generator().manual_seed(1), 256, 12, 8, 377100, spread=0.6))
        intended = _collapsed(model(x) * 5e-3 / 5e-1, y)
    ctx.check("ran every step", n == 300)
    ctx.check(
        "late collapsed share over 5x the first 5 steps",
        _mean(shares[-50:]) > 5 * _mean(shares[:5]),
    )
    ctx.check(
        "over 30% of rows' target probability exactly 1.0 in the last 50 steps",
        _mean(shares[-50:]) > 0.3,
    )
    ctx.check("at the intended temperature under 5% collapse", intended < 0.05)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- dead units ---------------------------------------------------------------------------------------


def _dead(h):
    return float((h.detach() <= 0).all(0).float().mean())


@scenario(
    "kelp_bed_canopy_relu_regressor",
    "Adam",
    "loss_of_plasticity",
    ("act2", "fc2"),
    None,
    heldout=True,
    note="a ReLU regressor of kelp-bed canopy cover from buoy readings; Adam's lr is typed 5e-1 "
    "for 5e-4: the first large steps push the second layer's ReLUs negative on every input and "
    "they never come back; the loss stays near the targets' variance",
)
def h377_kelp_adam_lr_typo(ctx: Context) -> None:
    gen = seeded(37711)
    model = Trunk(10, 64)
    opt = torch.optim.Adam(model.parameters(), lr=5e-1)
    dead = []
    probe = next(_readings(torch.Generator().manual_seed(7), 512, 10, 377110))

    def after(step):
        with torch.no_grad():
            dead.append(_dead(model.features(probe[0])))

    n = _loop(ctx, model, opt, _readings(gen, 64, 10, 377110), 200, F.mse_loss, after=after)
    ls = ctx.losses
    var = float(probe[1].var())
    ctx.check("ran every step", n == 200)
    ctx.check("under 20% of act2 dead after the first step", dead[0] < 0.2)
    ctx.check("over 90% of act2's units dead for the last 50 steps", min(dead[-50:]) > 0.9)
    ctx.check("loss over 0.5x the targets' variance late", _mean(ls[-30:]) > 0.5 * var)
    ctx.check("loss finite throughout", _finite(ls))


# -- controls -----------------------------------------------------------------------------------------


class StrokeConv(nn.Module):
    def __init__(self, channels=2, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(F.max_pool1d(self.act1(self.conv1(x)), 2)))
        return self.head(h.mean(-1))


@scenario(
    "bodhran_tipper_stroke_conv1d_classifier",
    "SGD",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier of bodhran tipper strokes from contact-mic traces, "
    "SGD with momentum 0.9 under OneCycleLR (max_lr 0.3), label smoothing 0.1, clipping at 1",
)
def h377_bodhran_onecycle_control(ctx: Context) -> None:
    gen = seeded(37712)
    model = StrokeConv()
    steps = 200
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)
    n = _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 377120),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("ran every step", n == steps)
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("loss fell below 0.6x its start", _fell(ctx.losses, 15, 0.6))


@scenario(
    "avalanche_slab_depth_fp16_silu_huber_regressor",
    "Adamax",
    "healthy",
    heldout=True,
    note="control: a SiLU Huber regressor of avalanche slab depth under fp16 autocast with a "
    "GradScaler, Adamax with a no-decay group for biases, accumulation over 2, "
    "ReduceLROnPlateau on a held-out batch, clipping at 1",
)
def h377_avalanche_fp16_control(ctx: Context) -> None:
    gen = seeded(37713)
    model = Trunk(10, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.Adamax(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    held = next(_readings(torch.Generator().manual_seed(11), 256, 10, 377130, noise=0.1))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    n = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 377130, noise=0.1),
        200,
        F.huber_loss,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
        sched=sched,
        plateau=plateau,
    )
    ctx.check("ran every step", n == 200)
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("loss fell below half its start", _fell(ctx.losses, 15, 0.5))
