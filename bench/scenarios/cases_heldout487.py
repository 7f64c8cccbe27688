"""Held-out set 487 (``h487_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a bodhran tipper-rebound tanh regressor whose warm-up lambda lost its min(1, .) so the
SGD rate keeps climbing past 2/sharpness; a caber-toss turn-angle regressor whose loss weight is
read in degrees for one step (one gradient burst, SGD Nesterov); a stave-church shingle tar-grade
classifier whose static loss scale of 2**16 is left un-unscaled for one step (Adam's second
moment poisoned, updates stall); a kulintang gong-pitch cosine classifier with its scale typed
1000 for 10 (softmax collapse, AdamW); a frazil-ice slush-depth Gaussian-NLL net whose variance
head lost its softplus (log of a negative variance, NaN, NAdam); a bog-oak moisture-grade
classifier fed one shard in raw sensor counts (RMSprop); a coracle paddle-stroke classifier
whose log-prior bias init (-3) is applied to fc2 instead of the head (dead ReLUs, Adamax); a
spoon-carving hook-knife regressor whose fc1 group lr is typed 1e-7 for 1e-2 (SGD momentum); a
salt-pan brine-crust regressor whose L2 penalty is subtracted (a slow climb, Adagrad); a pelota
fronton rebound-zone classifier whose z-loss is added with its sign flipped (head logits grow,
AdamW).

Controls: a semaphore flag-signal RWKV-style language model (token shift, learnt per-channel
decay, receptance gate, no softmax attention; AdamW, warm-up + cosine, clipping); a noctilucent
cloud ripple regressor at a constant high SGD rate (the loss oscillates around its plateau); a
tinsmith funnel-seam classifier (Adam, OneCycleLR, label smoothing, fp16 autocast with a
GradScaler, gradient accumulation 2).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _wnorm(module: nn.Module) -> float:
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in module.parameters()))


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    scaler=None,
    amp=False,
    attach=True,
):
    """``before(step)`` first, ``alter(step, x, y)`` changes a batch, ``backprop(step, loss)`` is
    the loss actually backpropagated, ``after(step, loss)`` runs after the optimizer step. Stops
    after a non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
    if attach:
        ctx.attach(model, opt, scaler=scaler) if scaler is not None else ctx.attach(model, opt)
    losses, norms = [], []
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
            if scaler is not None:
                scaler.scale(total / accumulate).backward()
            else:
                (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
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
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration (Hessian-vector products)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v)) + 1e-12
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return abs(lam)


# -- 1. sharpness above the limit: a warm-up lambda without its min(1, .) ---------------------------


@scenario(
    family="bodhran_tipper_rebound_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=10,
    note="Bodhran tipper-rebound regressor (tanh MLP on stroke angle, skin tension and grip "
    "features, full-batch MSE, plain SGD). The LambdaLR warm-up is written lambda s: s / 10 "
    "instead of min(1, s / 10): after step 10 the rate keeps climbing linearly, passes "
    "2/sharpness and the loss oscillates and blows up.",
)
def h487_bodhran_warmup_unbounded(ctx) -> None:
    gen = seeded(4871)
    model = _Net(8, 32, 1, act=nn.Tanh)
    x, y = next(_readings(gen, 256, 8, 4871))
    base = 0.1
    opt = torch.optim.SGD(model.parameters(), lr=base)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / 10)
    ratios = []

    def before(step):
        if step % 10 == 0 and step >= 10:
            lam = _sharpness(model, F.mse_loss, x, y)
            ratios.append((step, opt.param_groups[0]["lr"] * lam))

    def full():
        while True:
            yield x, y

    losses, _ = _train(ctx, model, opt, full(), 300, F.mse_loss, before=before, sched=sched)
    finite = [v for v in losses if math.isfinite(v)]
    low = min(finite)
    blew = (not _finite(losses)) or max(finite) > 1e3 * low
    ctx.check("trained during the warm-up (loss under 0.6x its start)", low < 0.6 * losses[0])
    ctx.check("lr x sharpness passed 2 before the blow-up", any(r > 2 for _, r in ratios))
    ctx.check("the loss blows up (NaN or over 1000x its best)", blew)
    ref = _Net(8, 32, 1, act=nn.Tanh)
    ropt = torch.optim.SGD(ref.parameters(), lr=base)
    rs = torch.optim.lr_scheduler.LambdaLR(ropt, lambda s: min(1.0, s / 10))
    rl, _ = _train(ctx, ref, ropt, full(), 150, F.mse_loss, sched=rs, attach=False)
    ctx.check("with min(1, s/10) the run trains and stays finite", _fell(rl, 5, 0.8))


# -- 2. gradient spike: a loss weight read in degrees for one step ---------------------------------


@scenario(
    family="caber_toss_turn_angle_nesterov_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Caber-toss turn-angle regressor (ReLU MLP on run-up speed, caber length and release "
    "features, MSE, SGD Nesterov, clipping at 5). A config reload at step 120 reads the loss "
    "weight in degrees (57.3) instead of radians (1.0) for that one step: a single gradient "
    "burst not coming from the data.",
)
def h487_caber_degree_weight(ctx) -> None:
    gen = seeded(4872)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    onset = 120

    def backprop(step, loss):
        return loss * (180 / math.pi if step == onset else 1.0)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4872), 220, F.mse_loss, backprop=backprop, clip=5.0
    )
    ctx.check(
        "the gradient at the onset is over 20x the median before",
        norms[onset] > 20 * _median(norms[:onset]),
    )
    ctx.check(
        "the batch loss at the onset is ordinary (under 2x the 10 before)",
        losses[onset] < 2 * _mean(losses[onset - 10 : onset]),
    )
    ctx.check("trained and stayed finite", _fell(losses))


# -- 3. Adam second moment poisoned: a static loss scale not unscaled for one step ------------------


@scenario(
    family="stave_church_shingle_tar_grade_classifier",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="Stave-church shingle tar-grade classifier (GELU MLP on tar colour, resin and weathering "
    "features, cross-entropy, Adam beta2 0.999). A static loss scale of 2**16 (kept from an fp16 "
    "recipe) is applied at step 60 while the unscale that follows it is skipped after a "
    "checkpoint reload: one gradient 65536x too large fills Adam's second moment and the updates "
    "stall for the rest of the run.",
)
def h487_stave_church_unscaled(ctx) -> None:
    gen = seeded(4873)
    model = _Net(12, 48, 6, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    onset = 60
    snaps, moves = [], []

    def backprop(step, loss):
        return loss * (2.0**16 if step == onset else 1.0)

    def before(step):
        snaps.append(_flat(model))

    def after(step, loss):
        moves.append(float((_flat(model) - snaps[-1]).norm()))

    losses, norms = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 4873, spread=1.6),
        220,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        before=before,
        after=after,
    )
    ctx.check(
        "the gradient at the onset is over 1e4x the median",
        norms[onset] > 1e4 * _median(norms[:onset]),
    )
    ctx.check(
        "the loss was still falling before the onset",
        _mean(losses[50:60]) < 0.9 * _mean(losses[:10]),
    )
    ctx.check(
        "updates after the onset stall (steps 120-220 under 0.05x steps 40-60)",
        _mean(moves[120:]) < 0.05 * _mean(moves[40:60]),
    )
    gen2 = seeded(4873)
    ref = _Net(12, 48, 6, act=nn.GELU)
    ropt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    rl, _ = _train(
        ctx,
        ref,
        ropt,
        _grades(gen2, 64, 12, 6, 4873, spread=1.6),
        220,
        F.cross_entropy,
        attach=False,
    )
    ctx.check(
        "the clean run ends lower (final loss under 0.8x the poisoned run's)",
        _mean(rl[-20:]) < 0.8 * _mean(losses[-20:]),
    )


# -- 4. softmax collapse: a cosine classifier's scale typed 1000 for 10 -----------------------------


class _CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class _GongNet(nn.Module):
    def __init__(self, d_in, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 32)
        self.head = _CosineHead(32, classes, scale)

    def forward(self, x):
        return self.head(self.fc2(self.act1(self.fc1(x))))


@scenario(
    family="kulintang_gong_pitch_temperature_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kulintang gong-pitch classifier (ReLU MLP into a cosine head on partial-frequency "
    "features, cross-entropy, AdamW). The cosine head's scale (inverse temperature) is typed "
    "1000 for 10: the softmax saturates, most rows' target probability rounds to exactly 1.0 in "
    "float32 and the misclassified rows carry huge losses.",
)
def h487_kulintang_scale_typo(ctx) -> None:
    gen = seeded(4874)
    model = _GongNet(16, 8, 1000.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    batches = _grades(gen, 64, 16, 8, 4874, spread=1.2)
    losses, _ = _train(ctx, model, opt, batches, 160, F.cross_entropy, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
        model.head.scale = 10.0
        fixed = collapsed_fraction(model(x), y)
    ctx.check("over half the rows' target probability is exactly 1.0", frac > 0.5)
    ctx.check("at the intended scale 10 no row is exactly 1.0", fixed == 0.0)
    ctx.check("the saturated loss stays large (last 20 mean over 1.0)", _mean(losses[-20:]) > 1.0)


# -- 5. nonfinite: a variance head without its softplus --------------------------------------------


class _SlushNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(48, 1)
        self.var_head = nn.Linear(48, 1)
        with torch.no_grad():
            self.var_head.bias.fill_(1.0)
        self.last_min_var = 1.0

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        var = self.var_head(h).squeeze(-1)  # meant: F.softplus(...) + 1e-6
        self.last_min_var = float(var.detach().min())
        return torch.stack([self.mean_head(h).squeeze(-1), var], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


H487_FRAZIL_NAN = 68


@scenario(
    family="frazil_ice_slush_depth_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=H487_FRAZIL_NAN,
    heldout=True,
    note="Frazil-ice slush-depth forecaster (SiLU MLP on water temperature, wind and flow "
    "features, Gaussian NLL, NAdam). The variance head's softplus was dropped in a refactor: "
    "as the predicted variance shrinks towards the small noise level, a step takes it below "
    "zero for some reading and log(var) gives NaN.",
)
def h487_frazil_variance_no_softplus(ctx) -> None:
    gen = seeded(4875)
    model = _SlushNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-4)
    mins = []

    def after(step, loss):
        mins.append(model.last_min_var)

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 8, 4875, noise=0.02), 200, _gauss_nll, after=after
    )
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check(f"the loss is NaN at step {H487_FRAZIL_NAN}", bad == H487_FRAZIL_NAN)
    ctx.check("the predicted variance is negative there", bad is not None and mins[bad] < 0)
    ctx.check(
        "finite and falling before", bad is not None and bad > 10 and losses[bad - 1] < losses[0]
    )


# -- 6. data outlier: one shard in raw sensor counts -----------------------------------------------


@scenario(
    family="bog_oak_moisture_grade_relu_classifier",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Bog-oak moisture-grade classifier (ReLU MLP on standardised moisture-meter and density "
    "readings, cross-entropy, RMSprop). The shard served at step 100 was exported in raw sensor "
    "counts (x1000) and skipped the standardisation: one corrupted batch.",
)
def h487_bog_oak_raw_counts(ctx) -> None:
    gen = seeded(4876)
    model = _Net(10, 48, 5)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    onset, seen = 100, {}

    def alter(step, x, y):
        if step == onset:
            x = x * 1000.0
            seen["max"] = float(x.abs().max())
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, 4876),
        220,
        F.cross_entropy,
        classifier=True,
        alter=alter,
    )
    ctx.check("the shard's inputs are over 100x the usual", seen.get("max", 0.0) > 100 * 5.0)
    ctx.check(
        "the loss at the onset is over 10x the median", losses[onset] > 10 * _median(losses[:onset])
    )
    ctx.check(
        "the gradient at the onset is over 20x the median",
        norms[onset] > 20 * _median(norms[:onset]),
    )
    ctx.check("finite throughout", _finite(losses))


# -- 7. loss of plasticity: a log-prior bias init applied to fc2 instead of the head ----------------


@scenario(
    family="coracle_paddle_stroke_dead_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Coracle paddle-stroke classifier (ReLU MLP on paddle angle, blade depth and hull yaw "
    "features, cross-entropy, Adamax). The rare-class log-prior bias init (-3) meant for the head "
    "is applied to fc2: almost all of fc2's ReLUs start dead and never come back, the loss stays "
    "near chance.",
)
def h487_coracle_bias_on_fc2(ctx) -> None:
    gen = seeded(4877)
    model = _Net(10, 48, 6)
    with torch.no_grad():
        model.fc2.bias.fill_(-3.0)  # meant: model.head.bias
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 10, 6, 4877)
    losses, _ = _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ctx.check("over 90% of fc2's units are dead at the end", dead > 0.9)
    ctx.check("the loss stays over 0.8x chance", _mean(losses[-20:]) > 0.8 * math.log(6))
    gen2 = seeded(4877)
    ref = _Net(10, 48, 6)
    ropt = torch.optim.Adamax(ref.parameters(), lr=2e-3)
    rl, _ = _train(
        ctx, ref, ropt, _grades(gen2, 64, 10, 6, 4877), 200, F.cross_entropy, attach=False
    )
    ctx.check(
        "with the bias on the head the run trains (under 0.6x chance)",
        _mean(rl[-20:]) < 0.6 * math.log(6),
    )


# -- 8. update ratio out of range: fc1's group lr typed 1e-7 --------------------------------------


@scenario(
    family="spoon_carving_hook_knife_two_group_regressor",
    optimizer="SGD (momentum)",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Spoon-carving hook-knife bowl-depth regressor (tanh MLP on knife sweep, grain angle "
    "and wood moisture, Huber loss, SGD momentum with two param groups). The fc1 group's lr is "
    "typed 1e-7 for 1e-2: fc1 is effectively frozen while the rest trains.",
)
def h487_spoon_carving_group_typo(ctx) -> None:
    gen = seeded(4878)
    model = _Net(10, 48, 1, act=nn.Tanh)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.SGD(
        [{"params": model.fc1.parameters(), "lr": 1e-7}, {"params": rest, "lr": 1e-2}],
        momentum=0.9,
    )
    f1, f2 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4878), 200, F.huber_loss)
    d1 = float((_flat(model.fc1) - f1).norm() / f1.norm())
    d2 = float((_flat(model.fc2) - f2).norm() / f2.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", d1 < 1e-5)
    ctx.check("fc2 moved over 1% of its norm", d2 > 0.01)
    ctx.check("no blow-up (finite, the loss fell)", _fell(losses, 10, 0.9))


# -- 9. loss divergence: the L2 penalty subtracted -------------------------------------------------


@scenario(
    family="salt_pan_brine_crust_l2_sign_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Salt-pan brine-crust thickness regressor (SiLU MLP on brine density, sun hours and "
    "wind, MSE, Adagrad). The hand-written L2 penalty is written loss - wd * sum(w**2) instead "
    "of +: the weights inflate a little every step and the fitted loss slowly climbs.",
)
def h487_salt_pan_l2_sign(ctx) -> None:
    gen = seeded(4879)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    wd = 1e-2

    def backprop(step, loss):
        return loss - wd * sum((p**2).sum() for p in model.parameters())

    w0 = _wnorm(model)
    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4879), 260, F.mse_loss, backprop=backprop
    )
    w1 = _wnorm(model)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 150, 5))
    ctx.check(
        "trained first (best 10-step mean under 0.7x the start)", best < 0.7 * _mean(losses[:10])
    )
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check("weights grew over 2x", w1 > 2 * w0)
    ctx.check("no NaN (a slow climb)", _finite(losses))


# -- 10. output logit divergence: a z-loss added with its sign flipped ------------------------------


@scenario(
    family="pelota_fronton_rebound_zone_zloss_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="Pelota fronton rebound-zone classifier (GELU MLP on ball speed, wall angle and spin, "
    "cross-entropy plus a z-loss, AdamW). The z-loss is written - 1e-2 * logsumexp**2: instead "
    "of keeping the head's logits near zero it pushes them up without bound and the "
    "cross-entropy blows up with them.",
)
def h487_pelota_zloss_sign(ctx) -> None:
    gen = seeded(48710)
    model = _Net(10, 48, 7, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batches = _grades(gen, 64, 10, 7, 48710)
    top = []

    def backprop(step, loss):
        x, _ = probe
        z = torch.logsumexp(model(x), -1)
        return loss - 1e-2 * (z**2).mean()

    probe = next(batches)

    def after(step, loss):
        with torch.no_grad():
            top.append(float(model(probe[0]).abs().max()))

    losses, _ = _train(
        ctx,
        model,
        opt,
        batches,
        240,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        after=after,
    )
    ctx.check("the max |logit| grew over 20x its start", top[-1] > 20 * top[0])
    ctx.check("the max |logit| is over 100", top[-1] > 100)
    ctx.check(
        "still climbing (last over 1.3x the value 60 steps earlier)", top[-1] > 1.3 * top[-61]
    )


# -- controls --------------------------------------------------------------------------------------


class _TimeMix(nn.Module):
    """RWKV-style time mixing: token shift, learnt per-channel decay, receptance gate."""

    def __init__(self, dim):
        super().__init__()
        self.mix_k = nn.Parameter(torch.full((dim,), 0.5))
        self.mix_v = nn.Parameter(torch.full((dim,), 0.5))
        self.mix_r = nn.Parameter(torch.full((dim,), 0.5))
        self.decay = nn.Parameter(torch.linspace(-2.0, 1.0, dim))
        self.bonus = nn.Parameter(torch.zeros(dim))
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=False)
        self.receptance = nn.Linear(dim, dim, bias=False)
        self.output = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        prev = F.pad(x, (0, 0, 1, -1))
        k = self.key(x * self.mix_k + prev * (1 - self.mix_k))
        v = self.value(x * self.mix_v + prev * (1 - self.mix_v))
        r = torch.sigmoid(self.receptance(x * self.mix_r + prev * (1 - self.mix_r)))
        w = torch.exp(-torch.exp(self.decay))
        a = torch.zeros_like(x[:, 0])
        b = torch.zeros_like(x[:, 0])
        outs = []
        for t in range(x.shape[1]):
            kt = k[:, t].clamp(max=20)
            e = torch.exp(self.bonus + kt)
            outs.append((a + e * v[:, t]) / (b + e))
            a = w * a + torch.exp(kt) * v[:, t]
            b = w * b + torch.exp(kt)
        return self.output(r * torch.stack(outs, 1))


class _ChannelMix(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.mix = nn.Parameter(torch.full((dim,), 0.5))
        self.fc = nn.Linear(dim, 2 * dim, bias=False)
        self.proj = nn.Linear(2 * dim, dim, bias=False)

    def forward(self, x):
        prev = F.pad(x, (0, 0, 1, -1))
        return self.proj(torch.relu(self.fc(x * self.mix + prev * (1 - self.mix))) ** 2)


class _RWKVBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.att = _TimeMix(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = _ChannelMix(dim)

    def forward(self, x):
        x = x + self.att(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class _FlagRWKV(nn.Module):
    def __init__(self, vocab=16, dim=32, layers=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_RWKVBlock(dim) for _ in range(layers))
        self.ln_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx):
        x = self.emb(idx)
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_out(x))


def _flag_signals(gen, batch=16, length=24, vocab=16):
    """Semaphore relays: each message repeats a short call-sign with an acknowledgement code."""
    while True:
        seqs = []
        for _ in range(batch):
            sign = torch.randint(2, vocab, (3,), generator=gen)
            ack = (sign.sum() % (vocab - 2) + 2).view(1)
            unit = torch.cat([torch.tensor([1]), sign, ack])
            seqs.append(unit.repeat(length // len(unit) + 2)[: length + 1])
        s = torch.stack(seqs)
        yield s[:, :-1], s[:, 1:]


def _lm_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="semaphore_flag_signal_rwkv_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Semaphore flag-signal language model, hand-written RWKV style (token shift, learnt "
    "per-channel decay, receptance gate, squared-ReLU channel mix, no softmax attention) over "
    "generated relay messages; AdamW, linear warm-up + cosine, clipping at 1. A healthy control.",
)
def h487_semaphore_rwkv_control(ctx) -> None:
    gen = seeded(48711)
    model = _FlagRWKV()
    opt = torch.optim.AdamW(model.parameters(), lr=8e-3, weight_decay=0.01)
    steps, warm = 160, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    losses, _ = _train(ctx, model, opt, _flag_signals(gen), steps, _lm_loss, clip=1.0, sched=sched)
    ctx.check("trained (last 10 under 0.6x the first 10)", _fell(losses, 10, 0.6))
    ctx.check("finite", _finite(losses))


@scenario(
    family="noctilucent_cloud_ripple_constant_lr_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Noctilucent-cloud ripple-wavelength regressor (ReLU MLP on mesopause temperature and "
    "gravity-wave features, MSE, plain SGD at a constant rate chosen high): the loss falls, then "
    "oscillates steadily around its plateau without growing. A healthy control.",
)
def h487_noctilucent_constant_lr_control(ctx) -> None:
    gen = seeded(48712)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.15)
    losses, _ = _train(ctx, model, opt, _readings(gen, 16, 10, 48712, noise=0.1), 260, F.mse_loss)
    late = losses[130:]
    mid, end = _mean(losses[130:195]), _mean(losses[195:])
    spread = math.sqrt(_mean([(v - _mean(late)) ** 2 for v in late])) / _mean(late)
    ctx.check(
        "trained (last 20 under 0.5x the first 10)", _mean(losses[-20:]) < 0.5 * _mean(losses[:10])
    )
    ctx.check("no growth on the plateau (last quarter under 1.3x the one before)", end < 1.3 * mid)
    ctx.check("the loss oscillates around the plateau (relative spread over 0.2)", spread > 0.2)
    ctx.check("finite", _finite(losses))


@scenario(
    family="tinsmith_funnel_seam_fp16_onecycle_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Tinsmith funnel-seam grade classifier (GELU MLP on solder temperature, seam overlap and "
    "sheet gauge); Adam, OneCycleLR, label smoothing 0.1, fp16 autocast with a GradScaler, "
    "gradient accumulation 2. A healthy control.",
)
def h487_tinsmith_amp_control(ctx) -> None:
    gen = seeded(48713)
    model = _Net(12, 48, 5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 32, 12, 5, 48713, spread=1.3),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        accumulate=2,
        scaler=scaler,
        amp=True,
    )
    ctx.check("trained (last 10 under 0.6x the first 10)", _fell(losses, 10, 0.6))
    ctx.check(
        "the loss scale stayed finite and positive", all(0 < s < math.inf for s in ctx.scales)
    )
