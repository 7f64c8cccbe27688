"""Held-out set 540 (``h540_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: chinook-arch cloud-gap regressor resumed with Adam state and cosine schedule reset
(loss_spike, Adam); gong-chime decay VQ-VAE whose codebook group lr is typed 2e-9
(update_ratio_out_of_range, AdamW); sapodilla latex-yield Gaussian NLL head whose variance has an
offset instead of a softplus (nonfinite, RMSprop); axe-throwing spin regressor fed pascals under
fp16 autocast (amp_overflow, Adamax); cirque-glacier melt-pulse RNN with recurrent init gain typed
1.4 (exploding_gradients, SGD momentum); farrier clinch-nail regressor with one reading in raw
units (data_outlier, SGD Nesterov); sugar-maple sap-run regressor with a loss-weight entry typed
500 (gradient_spike, SGD); obsidian flake cosine classifier with scale typed 3000
(softmax_collapse, RAdam); kelp-canopy drift regressor with OneCycleLR max_lr typed 10x
(sharpness_above_limit, SGD); hide-tanning liquor-strength regressor with its L2 penalty's
sign flipped (loss_divergence, Adagrad).
Controls: coxless-four stroke residual MLP with drop-path 0.5 and gradient checkpointing (AdamW,
warm-up + cosine, clipping; its batch loss jumps around), morris-dance stick-call classifier
(NAdam, param groups, accumulation, label smoothing, ReduceLROnPlateau), noctilucent-cloud height
Huber regressor (Adadelta, StepLR, clipping, noisy readings).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from scenarios.common import collapsed_fraction, digit_batches, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


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
    scaler=None,
    amp=False,
):
    """Attach, then train; stops after a non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt, scaler=scaler) if scaler is not None else ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            out = model(x)
        loss = loss_fn(out.float(), y)
        total = backprop(step, loss) if backprop is not None else loss
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
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


class _Reg(nn.Module):
    """fc1 -> act -> fc2 -> act -> out, one output."""

    def __init__(self, d_in, hidden, act=nn.SiLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.out = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _top_hessian(model, loss_fn, x, y, iters=15) -> float:
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "chinook_arch_cloud_gap_silu_regressor",
    "Adam",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="resumed at step 150 from a checkpoint whose optimizer and scheduler state were not "
    "loaded (wrong key): Adam's moments start from zero and the cosine schedule restarts at its "
    "peak lr; the loss jumps once, then the run settles again",
)
def h540_chinook_arch_resume_reset(ctx):
    gen = seeded(5401)
    model = _Reg(12, 48)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150, eta_min=2e-4)

    def before(step):
        if step == 150:
            opt.state.clear()
            sched.last_epoch = 0
            for g in opt.param_groups:
                g["lr"] = 2e-2

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 12, 41), 240, F.mse_loss, before=before, sched=sched
    )
    pre = _median(losses[130:150])
    ctx.check("finite throughout", _finite(losses))
    ctx.check(
        "loss over 3x its pre-resume level right after step 150", max(losses[150:160]) > 3 * pre
    )
    ctx.check("recovers to under 2x the pre-resume level", _mean(losses[-10:]) < 2 * pre)


class _VQVAE(nn.Module):
    def __init__(self, d=32, z=6, codes=24):
        super().__init__()
        self.enc1 = nn.Linear(d, 64)
        self.enc2 = nn.Linear(64, z)
        self.codebook = nn.Embedding(codes, z)
        self.dec1 = nn.Linear(z, 64)
        self.dec2 = nn.Linear(64, d)
        self.commit = 0.0

    def forward(self, x):
        ze = self.enc2(F.gelu(self.enc1(x)))
        idx = torch.cdist(ze, self.codebook.weight).argmin(1)
        zq = self.codebook(idx)
        self.commit = F.mse_loss(zq, ze.detach()) + 0.25 * F.mse_loss(ze, zq.detach())
        st = ze + (zq - ze).detach()  # straight-through
        return self.dec2(F.gelu(self.dec1(st)))


def _chimes(gen, batch, d=32):
    t = torch.arange(d, dtype=torch.float32)
    while True:
        f = 0.2 + 0.8 * torch.rand(batch, 1, generator=gen)
        a = 0.05 + 0.2 * torch.rand(batch, 1, generator=gen)
        x = torch.exp(-a * t) * torch.sin(f * t) + 0.02 * torch.randn(batch, d, generator=gen)
        yield x, x


@scenario(
    "gong_chime_decay_vqvae",
    "AdamW",
    "update_ratio_out_of_range",
    where=("codebook",),
    diverges=None,
    heldout=True,
    note="VQ-VAE with a straight-through codebook; the codebook's param group reads lr 2e-9 "
    "from a config typed 2e-9 for 2e-3: the codebook never moves while the encoder and decoder "
    "train, the loss still falls",
)
def h540_gong_chime_codebook_frozen(ctx):
    gen = seeded(5402)
    model = _VQVAE()
    with torch.no_grad():
        model.codebook.weight.normal_(0, 0.5)
    others = [p for n, p in model.named_parameters() if not n.startswith("codebook")]
    opt = torch.optim.AdamW(
        [
            {"params": others, "lr": 2e-3},
            {"params": model.codebook.parameters(), "lr": 2e-9, "weight_decay": 0.0},
        ],
        weight_decay=1e-2,
    )
    cb0, enc0 = _flat(model.codebook), _flat(model.enc2)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _chimes(gen, 64),
        200,
        F.mse_loss,
        backprop=lambda s, loss: loss + model.commit,
    )
    ctx.check("codebook moved under 1e-5 relative", _rel(_flat(model.codebook), cb0) < 1e-5)
    ctx.check("encoder moved over 5% relative", _rel(_flat(model.enc2), enc0) > 0.05)
    ctx.check("loss fell anyway", _fell(losses, ratio=0.9))


class _GaussHead(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        self.var_min = 1.0

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        # bug: an offset where a softplus (or clamp) belongs
        var = self.var_head(h) + 1.0
        self.var_min = float(var.detach().min())
        return torch.cat([self.mean_head(h), var], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * (torch.log(var) + (y - mu) ** 2 / var)).mean()


@scenario(
    "sapodilla_tapping_latex_gaussian_nll_regressor",
    "RMSprop",
    "nonfinite",
    where=("var_head",),
    diverges=54,
    heldout=True,
    note="heteroscedastic Gaussian NLL whose variance is var_head(h) + 1.0 with no softplus or "
    "clamp: as the fit sharpens the predicted variance crosses zero and log(var) is NaN",
)
def h540_sapodilla_variance_unclamped(ctx):
    gen = seeded(5403)
    model = _GaussHead(10, 32)
    opt = torch.optim.RMSprop(model.parameters(), lr=4e-4)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 43, noise=0.02), 300, _gauss_nll)
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("loss is NaN at some step", bad is not None)
    ctx.check("finite for the first 30 steps", bad is not None and bad > 30)
    ctx.check("the NaN step's batch had a non-positive variance", model.var_min <= 0)


class _AxeReg(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, 1)
        self.fp16_peak = 0.0
        self.fp32_finite = True

    def forward(self, x):
        h = self.fc1(x)
        self.fp16_peak = float(h.detach().float().abs().max())
        with torch.autocast("cpu", enabled=False):
            self.fp32_finite = bool(torch.isfinite(self.fc1(x.float())).all())
        return self.fc2(F.gelu(self.norm(h))).squeeze(-1)


@scenario(
    "axe_throwing_spin_fp16_gelu_regressor",
    "Adamax",
    "amp_overflow",
    where=("fc1",),
    diverges=80,
    heldout=True,
    onset=80,
    note="fp16 autocast + GradScaler; from step 80 a new loader reads the grip-pressure channel "
    "in pascals instead of bar (x1e5): fc1's fp16 output overflows to inf, the LayerNorm turns it "
    "into NaN; the same matmul in float32 is finite",
)
def h540_axe_throwing_pascals_fp16(ctx):
    gen = seeded(5404)
    model = _AxeReg(8, 32)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    seen = {}

    def alter(step, x, y):
        if step >= 80:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1e5
        return x, y

    def after(step, loss):
        seen[step] = (model.fp16_peak, model.fp32_finite)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 44),
        160,
        F.mse_loss,
        alter=alter,
        after=after,
        scaler=scaler,
        amp=True,
    )
    ctx.check("finite and falling before step 80", _finite(losses[:80]) and losses[79] < losses[0])
    ctx.check("loss non-finite at step 80", len(losses) > 80 and not math.isfinite(losses[80]))
    ctx.check("fc1's fp16 output overflowed at step 80", 80 in seen and math.isinf(seen[80][0]))
    ctx.check("the same fc1 output is finite in float32", 80 in seen and seen[80][1])


class _Elman(nn.Module):
    """ReLU Elman cell unrolled by hand (states kept for the check)."""

    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _melt_pulses(gen, batch, length=40, d=3):
    while True:
        x = torch.randn(batch, length, d, generator=gen)
        yield x, 0.5 * x[:, :5, 0].mean(1) + 0.5 * x[:, -5:, 1].mean(1)


@scenario(
    "cirque_glacier_melt_pulse_orthogonal_rnn",
    "SGD momentum",
    "exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="ReLU Elman RNN over 40 days whose recurrent weight is orthogonal with gain typed 1.4 "
    "for 1.0: the state gradient grows back through time and the run blows up within steps",
)
def h540_cirque_glacier_rnn_gain(ctx):
    gen = seeded(5405)
    model = _Elman(3, 32, gain=1.4)
    opt = torch.optim.SGD(model.parameters(), lr=3e-4, momentum=0.9)
    ratios = []

    def after(step, loss):
        if step == 0 and model.states[0].grad is not None:
            ratios.append(float(model.states[0].grad.norm() / model.states[-1].grad.norm()))

    losses, norms = _loop(ctx, model, opt, _melt_pulses(gen, 32), 150, F.mse_loss, after=after)
    ctx.check("state gradient at t=0 over 20x the last's", bool(ratios) and ratios[0] > 20)
    ctx.check("loss non-finite within 10 steps", not _finite(losses) and len(losses) <= 10)


@scenario(
    "farrier_clinch_nail_tanh_regressor",
    "SGD Nesterov",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="one hoof reading at step 100 logged in raw encoder counts (x4000) instead of degrees: "
    "the batch loss jumps over 20x, clipping keeps the step bounded and the run recovers",
)
def h540_farrier_raw_counts_sample(ctx):
    gen = seeded(5406)
    model = _Reg(10, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            x[3] = x[3] * 4000.0
            y = y.clone()
            y[3] = y[3] * 40.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 32, 10, 46), 200, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _median(losses[80:100])
    ctx.check("batch loss at step 100 over 20x the median before", losses[100] > 20 * pre)
    ctx.check(
        "gradient at step 100 over 10x the median before", norms[100] > 10 * _median(norms[80:100])
    )
    ctx.check("recovers to under 2x the level before", _mean(losses[-10:]) < 2 * pre)


@scenario(
    "sugar_maple_sap_run_silu_regressor",
    "SGD",
    "gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="a per-tap loss-weight table with one entry typed 500 for 0.5; the tap comes up at "
    "step 120: the backpropagated loss is 1000x, the gradient bursts, the logged loss is ordinary",
)
def h540_sugar_maple_loss_weight_typo(ctx):
    gen = seeded(5407)
    model = _Reg(9, 40)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = {s: 1.0 for s in range(200)}
    weights[120] = 500.0 / 0.5

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 9, 47),
        200,
        F.mse_loss,
        backprop=lambda s, loss: weights[s] * loss,
        clip=2.0,
    )
    pre = _median(norms[100:120])
    ctx.check("gradient at step 120 over 50x the median before", norms[120] > 50 * pre)
    ctx.check(
        "logged loss at 120 under 2x the median before", losses[120] < 2 * _median(losses[100:120])
    )
    ctx.check("finite and trained", _fell(losses))


class _CosineClf(nn.Module):
    def __init__(self, d_in, hidden, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes, bias=False)
        self.scale = scale

    def forward(self, x):
        h = F.gelu(self.fc2(F.gelu(self.fc1(x))))
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.head.weight, dim=-1).T


@scenario(
    "obsidian_knapping_flake_cosine_classifier",
    "RAdam",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="cosine-similarity classifier whose scale is typed 3000 for 30: softmax saturates, "
    "most rows' target probability rounds to exactly 1.0 in float32",
)
def h540_obsidian_cosine_scale_typo(ctx):
    gen = seeded(5408)
    model = _CosineClf(16, 48, 6, scale=3000.0)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 16, 6, 48)
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        x, y = next(batches)
        frac = collapsed_fraction(model(x), y)
    ctx.check("over half the rows' target probability is exactly 1.0", frac > 0.5)
    ctx.check("loss finite", _finite(losses))


@scenario(
    "kelp_canopy_drift_onecycle_relu_regressor",
    "SGD",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="OneCycleLR with max_lr typed 3.0 for 0.3: as the warm-up climbs, lr x sharpness "
    "passes 2 and the loss blows up",
)
def h540_kelp_canopy_onecycle_typo(ctx):
    gen = seeded(5409)
    model = _Reg(8, 32, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3.0, total_steps=200, pct_start=0.3)
    batches = _readings(gen, 64, 8, 49)
    probe = next(_readings(torch.Generator().manual_seed(1), 256, 8, 49))
    products = []

    def before(step):
        if step % 5 == 0:
            lam = _top_hessian(model, F.mse_loss, *probe)
            products.append((step, opt.param_groups[0]["lr"] * lam))

    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100), len(losses))
    ctx.check("lr x sharpness under 2 at the start", products[0][1] < 2)
    ctx.check(
        "lr x sharpness over 2 before the blow-up", any(p > 2 for s, p in products if s < bad)
    )
    ctx.check("loss blew up (over 100 or non-finite)", bad < len(losses) or max(losses) > 100)


@scenario(
    "hide_tanning_liquor_strength_relu_regressor",
    "Adagrad",
    "loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-rolled L2 penalty added to the gradients with its sign flipped (grad -= wd * p): "
    "the weights grow a little every step and the loss, after falling, climbs slowly",
)
def h540_hide_tanning_decay_sign(ctx):
    gen = seeded(5410)
    model = _Reg(10, 48, act=nn.ReLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    w0 = float(_flat(model).norm())

    def backprop(step, loss):
        penalty = sum((p * p).sum() for p in model.parameters())
        return loss - 0.5 * WD * penalty  # bug: should be +

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 50), 250, F.mse_loss, backprop=backprop
    )
    best = min(losses)
    ctx.check("weights over 2x their initial norm", float(_flat(model).norm()) > 2 * w0)
    ctx.check("loss climbs to over 3x its best", _mean(losses[-10:]) > 3 * best)
    ctx.check("the best came after step 10 (it trained first)", losses.index(best) > 10)


WD = 0.04


# -- healthy controls ------------------------------------------------------------------------------


class _DropPathBlock(nn.Module):
    def __init__(self, dim, drop):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)
        self.drop = drop

    def branch(self, x):
        return self.out(F.gelu(self.fc(self.norm(x))))

    def forward(self, x):
        y = checkpoint(self.branch, x, use_reentrant=False) if self.training else self.branch(x)
        if self.training and self.drop > 0:
            keep = (torch.rand(x.shape[0], 1) > self.drop).float() / (1 - self.drop)
            y = y * keep
        return x + y


class _StrokeNet(nn.Module):
    def __init__(self, d_in, dim, classes, depth, drop):
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(_DropPathBlock(dim, drop) for _ in range(depth))
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


@scenario(
    "coxless_four_stroke_droppath_resmlp",
    "AdamW",
    "healthy",
    heldout=True,
    note="residual MLP with stochastic depth 0.5 per block and gradient checkpointing, warm-up "
    "then cosine, clipping, label smoothing: the batch loss jumps around from step to step "
    "because whole blocks are dropped, but the run is healthy",
)
def h540_coxless_four_droppath_control(ctx):
    gen = seeded(5411)
    model = _StrokeNet(24, 32, 7, depth=4, drop=0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, 200) / 200))
    )
    batches = _grades(gen, 48, 24, 7, 51, spread=1.6)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    model.eval()
    with torch.no_grad():
        x, y = next(batches)
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell and stayed finite", _fell(losses))
    ctx.check("eval accuracy over 0.8", acc > 0.8)


@scenario(
    "morris_dance_stick_call_gelu_classifier",
    "NAdam",
    "healthy",
    heldout=True,
    note="two param groups (no decay on biases), accumulation over 2 micro-batches, label "
    "smoothing, ReduceLROnPlateau on the epoch loss",
)
def h540_morris_dance_control(ctx):
    gen = seeded(5412)
    model = nn.Sequential(
        nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32), nn.GELU(), nn.Linear(32, 10)
    )
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.NAdam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": rest, "weight_decay": 0.0}], lr=2e-3
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=3)
    batches = digit_batches(gen, 32)
    ctx.attach(model, opt)
    losses = []
    for step in range(150):
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            plateau.step(_mean(losses[-10:]))
    ctx.check("loss fell and stayed finite", _fell(losses, ratio=0.5))


@scenario(
    "noctilucent_cloud_height_huber_regressor",
    "Adadelta",
    "healthy",
    heldout=True,
    note="Huber loss on noisy readings, Adadelta, StepLR, gradient clipping",
)
def h540_noctilucent_cloud_control(ctx):
    gen = seeded(5413)
    model = _Reg(12, 48)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 53, noise=0.2),
        200,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell and stayed finite", _fell(losses))
