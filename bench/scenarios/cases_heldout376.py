"""Held-out set 376 (``h376_``): hand-written models of sports, trades, instruments and natural
phenomena not covered before: a pakhawaj syahi stroke-decay MAML regressor whose inner rate is
typed 4e-1 for 4e-2 over five inner steps (gradients grow through the unrolled inner loop), a
kitewing gust-lift tanh regressor whose warm-up peak is typed 4e0 for 4e-2 (past 2/sharpness), a
tricking cork-rotation SiLU Huber regressor whose curriculum loss weight is given in percent at
the stage switch (one gradient burst), a dune-bashing slip-angle ReLU regressor whose fc2 bias init
of +0.1 is applied as -1.5 (dead ReLUs under Adagrad), a dholak tension-ring Gaussian NLL net whose variance head lost its
softplus in a port (log of a negative variance, NaN), an ironworker rebar-tie GELU BCE net fed one
shard in millimetres (one corrupted batch), a nagara kettle-stroke classifier whose trunk thaw is
keyed to an epoch counter that never advances (frozen trunk), a padbol wall-rebound classifier
whose temperature decay is typed 0.95 for 0.9995 (softmax collapse), a yubi-lakrosse pass
tanh regressor whose L2 penalty is subtracted (slow climb), a tombak finger-roll SiLU regressor
whose resumed step skips the unscale of a manual loss scale (Adam's second moment poisoned), and
three controls (a ball-badminton shuttle-drift MAML regressor with an inner rate of 0.01, one
inner step and a clipped outer update, a flageolet fingering Conv1d classifier with SGD Nesterov,
OneCycleLR, label smoothing and clipping, a saw-filer tooth-set SiLU Huber regressor under fp16
autocast with a GradScaler, AdamW, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

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


def _dead(h: torch.Tensor) -> float:
    return float((h.detach() <= 0).all(0).float().mean())


def _flat(model: nn.Module, names: tuple[str, ...]) -> torch.Tensor:
    mods = dict(model.named_modules())
    return torch.cat([p.detach().reshape(-1) for n in names for p in mods[n].parameters()]).clone()


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    forward=None,
    before=None,
    alter=None,
    backprop=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's loop: ``before(step)``, ``alter(step, x, y)``, ``watch(step, out, x, y)``,
    ``backprop(step, loss)`` (the loss actually backpropagated, before the division by the
    accumulation count), ``after(step)`` after the optimizer step, ``plateau()`` for a
    ReduceLROnPlateau ``sched``. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    forward = forward or (lambda m, x: m(x))
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
                out = forward(model, x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.5 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _binary(gen, batch, d_in, seed, flip=0.05):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.3 * torch.sin(2 * x[:, 0]) > 0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


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


# -- MAML on generated stroke-decay tasks ----------------------------------------------------------


class DecayNet(nn.Module):
    """time since the stroke -> fc1 -> act1 -> fc2 -> act2 -> head (the partial's amplitude)."""

    def __init__(self, hidden=40):
        super().__init__()
        self.fc1 = nn.Linear(1, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, t):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(t)))))


def _decay_tasks(gen, tasks, shots):
    """Each task one drum: a damped partial a * exp(-t / tau) * sin(w t + phi) sampled at t in
    [0, 5]; support and query sets of ``shots`` points each."""
    while True:
        a = 0.5 + 2.0 * torch.rand(tasks, 1, 1, generator=gen)
        tau = 1.0 + 3.0 * torch.rand(tasks, 1, 1, generator=gen)
        w = 1.0 + 1.5 * torch.rand(tasks, 1, 1, generator=gen)
        phi = 3.14 * torch.rand(tasks, 1, 1, generator=gen)
        t = 5.0 * torch.rand(tasks, 2 * shots, 1, generator=gen)
        y = a * torch.exp(-t / tau) * torch.sin(w * t + phi)
        yield t[:, :shots], y[:, :shots], t[:, shots:], y[:, shots:]


def _adapt(model, params, t, y, inner_lr, inner_steps):
    """Inner SGD steps on one task's support set, kept differentiable (create_graph=True).
    Returns the adapted parameters and the support loss before each inner step."""
    seen = []
    for _ in range(inner_steps):
        loss = F.mse_loss(functional_call(model, params, (t,)), y)
        seen.append(float(loss.detach()))
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
    seen.append(float(F.mse_loss(functional_call(model, params, (t,)), y).detach()))
    return params, seen


def _meta_loss(model, batch, inner_lr, inner_steps):
    ts, ys, tq, yq = batch
    params = dict(model.named_parameters())
    total, inner = 0.0, []
    for i in range(ts.shape[0]):
        fast, seen = _adapt(model, params, ts[i], ys[i], inner_lr, inner_steps)
        total = total + F.mse_loss(functional_call(model, fast, (tq[i],)), yq[i])
        inner.append(seen)
    return total / ts.shape[0], inner


def _layer_grads(model) -> dict[str, float]:
    return {
        n: float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters()])))
        for n, m in model.named_children()
        if any(True for _ in m.parameters())
    }


def _maml(ctx, model, opt, gen, steps, inner_lr, inner_steps, clip=None, tasks=4, shots=10):
    batches = _decay_tasks(gen, tasks, shots)
    ctx.attach(model, opt)
    layer_hist, inner_hist = [], []
    for _ in range(steps):
        loss, inner = _meta_loss(model, next(batches), inner_lr, inner_steps)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        layer_hist.append(_layer_grads(model))
        inner_hist.append(inner)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    return layer_hist, inner_hist


@scenario(
    "pakhawaj_syahi_decay_maml_regressor",
    "Adam",
    "exploding_gradients",
    ("fc2", "fc1"),
    "auto",
    heldout=True,
    note="MAML over generated drum-stroke decay tasks with five inner SGD steps differentiated "
    "through (create_graph=True); the config's inner rate is typed 4e-1 for 4e-2, past the "
    "inner loss's stability limit, so each unrolled inner step multiplies the meta-gradient "
    "(through I - lr H) and the outer gradient grows by orders of magnitude until the meta-loss "
    "blows up; no clipping on the outer update",
)
def h376_pakhawaj_maml_inner_lr(ctx: Context) -> None:
    gen = seeded(37601)
    model = DecayNet()
    # the gradient the intended config would give at the same init, as a yardstick
    probe_batch = next(_decay_tasks(torch.Generator().manual_seed(5), 4, 10))
    loss_ok, _ = _meta_loss(model, probe_batch, 4e-2, 5)
    intended = torch.autograd.grad(loss_ok, list(model.parameters()))
    intended = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in intended])))
    loss_bad, _ = _meta_loss(model, probe_batch, 4e-1, 5)
    typo = torch.autograd.grad(loss_bad, list(model.parameters()))
    typo = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in typo])))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    layer_hist, inner_hist = _maml(ctx, model, opt, gen, 120, 4e-1, 5)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("the meta-gradient at init over 20x the intended inner rate's", typo > 20 * intended)
    ctx.check(
        "the support loss grows through the inner steps (last over 10x the first) on step 0",
        _mean([s[-1] for s in inner_hist[0]]) > 10 * _mean([s[0] for s in inner_hist[0]]),
    )
    first = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 1e4), None)
    ctx.check("the meta-loss blows up (non-finite or over 1e4)", first is not None)
    ctx.check(
        "the outer gradient's median over the run over 1000x the intended config's at init",
        _median([g if math.isfinite(g) else float("inf") for g in gs]) > 1000 * intended,
    )
    early = layer_hist[0]
    ctx.check("fc2's outer gradient the largest at step 0", max(early, key=early.get) == "fc2")


@scenario(
    "ball_badminton_shuttle_drift_maml_regressor",
    "Adam",
    "healthy",
    (),
    None,
    heldout=True,
    note="MAML over generated shuttle-drift decay tasks: inner rate 0.01, one inner SGD step "
    "differentiated through (create_graph=True), Adam on the outer update with gradient clipping "
    "at 1.0",
)
def h376_ball_badminton_maml_control(ctx: Context) -> None:
    gen = seeded(37602)
    model = DecayNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    _, inner_hist = _maml(ctx, model, opt, gen, 200, 0.01, 1, clip=1.0)
    ls = ctx.losses
    ctx.check("the meta-loss finite throughout", _finite(ls))
    ctx.check("the meta-loss fell (last 20 under 0.8x the first 20)", _fell(ls, 20, 0.8))
    ctx.check("the outer gradients stayed bounded", max(ctx.grad_norms) < 1e3)


# -- sharpness: a warm-up peak typo --------------------------------------------------------------


@scenario(
    "kitewing_gust_lift_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    note="plain SGD with a linear warm-up over 150 steps to a peak typed 4e0 for 4e-2; the rate "
    "passes 2 / (top Hessian eigenvalue) during the warm-up and the loss blows up",
)
def h376_kitewing_warmup_peak(ctx: Context) -> None:
    gen = seeded(37603)
    model = Trunk(10, 48, act=nn.Tanh)
    peak = 4e0  # the typo: 4e-2
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = _readings(gen, 128, 10, 376031)
    probe = next(_readings(torch.Generator().manual_seed(3), 256, 10, 376031))
    products = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / 150)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 5 == 0 and step <= 100:
            products[step] = lr * _sharpness(model, F.mse_loss, *probe)

    _train(ctx, model, opt, batches, 200, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at the start", products[0] < 2)
    crossed = [s for s, v in products.items() if math.isfinite(v) and v > 2]
    ctx.check("lr x sharpness past 2 during the warm-up", bool(crossed))
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * ls[0]), None)
    ctx.check("the loss blows up (non-finite or over 100x its start)", blow is not None)
    ctx.check("the crossing comes before the blow-up", bool(crossed) and min(crossed) < (blow or 0))


# -- gradient spike: a loss weight given in percent ------------------------------------------------


@scenario(
    "tricking_cork_rotation_silu_huber_regressor",
    "SGD",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="SGD with momentum, accumulation over 4, clipping at 1.0; at the curriculum's stage "
    "switch (step 150) the stage loss weight is read from the new stage's YAML in percent (100) "
    "and used without the / 100 for that step before the trainer reloads the config, so one "
    "step's gradient is 100x on clean data",
)
def h376_tricking_stage_weight_percent(ctx: Context) -> None:
    gen = seeded(37604)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    batches = _readings(gen, 64, 12, 376041)

    def backprop(step, loss):
        weight = 100.0 if step == 150 else 1.0  # the bug: 100 / 100
        return weight * loss

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=1.0)

    _train(ctx, model, opt, batches, 250, loss_fn, backprop=backprop, clip=1.0, accumulate=4)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 150 over 30x the median of steps 100-149",
        gs[150] > 30 * _median(gs[100:150]),
    )
    ctx.check(
        "the logged loss at step 150 ordinary (under 2x the mean of 140-149)",
        ls[150] < 2 * _mean(ls[140:150]),
    )
    ctx.check(
        "the loss finite and recovered (last 20 under 1.5x steps 130-149)",
        _finite(ls) and _mean(ls[-20:]) < 1.5 * _mean(ls[130:150]),
    )


# -- loss of plasticity: Adagrad at a rate typed 100x -----------------------------------------------


@scenario(
    "dune_bashing_slip_angle_relu_regressor",
    "Adagrad",
    "loss_of_plasticity",
    ("act2", "fc2"),
    None,
    heldout=True,
    note="the init config's small positive bias for fc2 (+0.1, against dead ReLUs) is applied "
    "as -1.5 by a helper that reads the field with the wrong sign and units; most of act2's "
    "ReLUs are never positive, get no gradient and never recover under Adagrad; the loss "
    "stays high without blowing up",
)
def h376_dune_bashing_bias_init_dead(ctx: Context) -> None:
    gen = seeded(37605)
    model = Trunk(8, 64)
    with torch.no_grad():
        model.fc2.bias.fill_(-1.5)  # the bug: +0.1 per the init config, sign and scale lost
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    batches = _readings(gen, 128, 8, 376051)
    dead = []

    ever = torch.zeros(64, dtype=torch.bool)

    def watch(step, out, x, y):
        with torch.no_grad():
            h = model.features(x)
            dead.append(_dead(h))
            ever.logical_or_((h > 0).any(0))

    w0 = model.fc2.weight.detach().clone()
    _train(ctx, model, opt, batches, 200, F.mse_loss, watch=watch)
    ls = ctx.losses
    never = ~ever
    moved = (model.fc2.weight.detach() - w0)[never].norm() / w0[never].norm().clamp_min(1e-12)
    ctx.check("act2 over 60% dead at step 0", dead[0] > 0.6)
    ctx.check("over 60% of act2's units dead over each of the last 50 steps", min(dead[-50:]) > 0.6)
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the units never positive in training (some) kept their incoming weights (under 1e-6)",
        bool(never.any()) and float(moved) < 1e-6,
    )


# -- nonfinite: a variance head without its softplus ----------------------------------------------


class TensionNLL(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        var = self.var_head(h)  # the port dropped F.softplus(...) + 1e-6 here
        return torch.cat([self.mean_head(h), var], -1)


@scenario(
    "dholak_tension_ring_gaussian_nll_net",
    "NAdam",
    "nonfinite",
    ("var_head",),
    12,
    heldout=True,
    note="a Gaussian NLL net for the pitch of a dholak's tension rings whose variance head lost "
    "its softplus in a port from another framework; as the fit tightens some predicted "
    "variance crosses zero, log of a negative variance is NaN and the loss is NaN",
)
def h376_dholak_variance_no_softplus(ctx: Context) -> None:
    gen = seeded(37606)
    model = TensionNLL(8)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    batches = _readings(gen, 64, 8, 376061, noise=0.02)
    low = []

    def loss_fn(out, y):
        mu, var = out[:, 0], out[:, 1]
        return 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()

    def watch(step, out, x, y):
        low.append(float(out[:, 1].detach().min()))

    n = _train(ctx, model, opt, batches, 300, loss_fn, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss is non-finite at the last step run", bad is not None and bad == n - 1)
    ctx.check("the loss finite for the first 10 steps", _finite(ls[:10]))
    ctx.check(
        "a predicted variance is not positive at the NaN step", bad is not None and low[bad] <= 0
    )
    ctx.check("every predicted variance positive at step 0", low[0] > 0)


# -- data outlier: one shard in millimetres ---------------------------------------------------------


@scenario(
    "ironworker_rebar_tie_gelu_bce_net",
    "Adamax",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=120,
    note="a BCE net for whether a rebar tie holds; one site's shard at step 120 logged bar "
    "spacing and cover in millimetres instead of standardised metres (x1000 on three columns); "
    "the loss and gradient jump, clipping at 1.0 keeps it bounded and the run recovers",
)
def h376_ironworker_mm_shard(ctx: Context) -> None:
    gen = seeded(37607)
    model = Trunk(10, 48, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    batches = _binary(gen, 64, 10, 376071)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :3] = x[:, :3] * 1000.0
        return x, y

    _train(ctx, model, opt, batches, 250, F.binary_cross_entropy_with_logits, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 over 20x the mean of 100-119", ls[120] > 20 * _mean(ls[100:120])
    )
    ctx.check(
        "the gradient at step 120 over 20x the median of 100-119",
        gs[120] > 20 * _median(gs[100:120]),
    )
    ctx.check(
        "the loss recovers (last 20 under 1.5x the mean of 100-119)",
        _finite(ls) and _mean(ls[-20:]) < 1.5 * _mean(ls[100:120]),
    )


# -- update ratio: a trunk thaw keyed to epochs ----------------------------------------------------


@scenario(
    "nagara_kettle_stroke_two_group_classifier",
    "AdamW",
    "update_ratio_out_of_range",
    ("fc1", "fc2"),
    None,
    heldout=True,
    note="AdamW with a trunk group and a head group and a LambdaLR that keeps the trunk at 0 "
    "until 'thaw step 20'; the lambda is handed the epoch counter (which advances every 1000 "
    "steps) instead of the step, so fc1 and fc2 stay frozen at lr 0 for the whole run while "
    "the head trains",
)
def h376_nagara_trunk_never_thaws(ctx: Context) -> None:
    gen = seeded(37608)
    model = Trunk(16, 64, out=6)
    opt = torch.optim.AdamW(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters()), "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 2e-3},
        ],
        weight_decay=0.01,
    )
    state = {"epoch": 0, "step": 0}
    thaw = 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda _: 0.0 if state["epoch"] < thaw else 1.0, lambda _: 1.0]
    )  # the bug: state["epoch"] for state["step"]

    def after(step):
        state["step"] = step + 1
        state["epoch"] = (step + 1) // 1000

    trunk0, head0 = _flat(model, ("fc1", "fc2")), _flat(model, ("head",))
    batches = _classes(gen, 64, 16, 6, 376081, spread=1.6)
    _train(
        ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, sched=sched, after=after
    )
    trunk = float((_flat(model, ("fc1", "fc2")) - trunk0).norm() / trunk0.norm())
    head = float((_flat(model, ("head",)) - head0).norm() / head0.norm())
    ctx.check("fc1 and fc2 moved under 1e-7 of their norm", trunk < 1e-7)
    ctx.check("the head moved over 5% of its norm", head > 0.05)
    ctx.check("the loss finite", _finite(ctx.losses))


# -- softmax collapse: a temperature decay typo ----------------------------------------------------


@scenario(
    "padbol_wall_rebound_zone_gelu_classifier",
    "RAdam",
    "softmax_collapse",
    ("head",),
    None,
    heldout=True,
    note="the logits are divided by a temperature annealed per step as 0.95 ** step (typed for "
    "0.9995 ** step); by step 100 the temperature is under 0.01 and the softmax saturates: "
    "most rows' target probability is exactly 1.0 in float32",
)
def h376_padbol_temperature_decay(ctx: Context) -> None:
    gen = seeded(37609)
    model = Trunk(12, 64, out=8, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = _classes(gen, 64, 12, 8, 376091, spread=0.8)
    decay = 0.95  # the typo: 0.9995
    temp = {"t": 1.0}
    collapsed = []

    def before(step):
        temp["t"] = max(decay**step, 1e-6)

    def forward(m, x):
        return m(x) / temp["t"]

    def watch(step, out, x, y):
        p = torch.softmax(out.detach(), -1)
        collapsed.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))

    _train(
        ctx,
        model,
        opt,
        batches,
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        forward=forward,
        watch=watch,
    )
    ctx.check("under 5% of rows collapsed over the first 10 steps", max(collapsed[:10]) < 0.05)
    ctx.check(
        "over half the rows' target probability exactly 1.0 over the last 50 steps",
        _mean(collapsed[-50:]) > 0.5,
    )


# -- loss divergence: an L2 penalty subtracted -------------------------------------------------------


@scenario(
    "yubi_lakrosse_pass_distance_tanh_regressor",
    "RMSprop",
    "loss_divergence",
    (),
    None,
    heldout=True,
    note="a hand-written L2 penalty is subtracted from the loss instead of added (wd 0.3); "
    "RMSprop grows the weights steadily, the tanh units saturate and the loss climbs slowly "
    "with no spike",
)
def h376_yubi_lakrosse_l2_sign(ctx: Context) -> None:
    gen = seeded(37610)
    model = Trunk(10, 48, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 10, 376101)
    wd = 0.3
    norm0 = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())

    def backprop(step, loss):
        l2 = sum((p * p).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - wd * l2  # the bug: + wd * l2

    _train(ctx, model, opt, batches, 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    norm = float(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).norm())
    windows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10)]
    ctx.check("the weights grew over 2x", norm > 2 * norm0)
    ctx.check(
        "the loss over the last 20 steps over 3x its lowest 20-step mean",
        _mean(ls[-20:]) > 3 * min(windows),
    )
    ctx.check(
        "no single step jumps over 3x the step before",
        all(b < 3 * a for a, b in zip(ls, ls[1:], strict=False)),
    )
    ctx.check("the loss finite", _finite(ls))


# -- Adam's second moment poisoned: a loss scale left on ----------------------------------------


@scenario(
    "tombak_finger_roll_silu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    None,
    heldout=True,
    onset=100,
    note="a manual static loss scale of 65536 (from an fp16 recipe) is applied to an fp32 run; "
    "the resumed step 100 skips the division by it, so one gradient is 65536x, fills Adam's "
    "second moment and the updates stall for many steps afterwards",
)
def h376_tombak_unscale_skipped(ctx: Context) -> None:
    gen = seeded(37611)
    model = Trunk(8, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 8, 376111)
    scale = 65536.0
    moves, grads = [], []
    prev = {"w": None}

    def backprop(step, loss):
        return loss * scale

    def before(step):
        prev["w"] = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()

    def after(step):
        w = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        moves.append(float((w - prev["w"]).abs().median()))

    orig_step = opt.step
    count = {"n": 0}

    def step_with_unscale(*a, **k):
        if count["n"] != 100:  # the resumed step 100 skips this
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(scale)
        grads.append(grad_norm(model))
        count["n"] += 1
        return orig_step(*a, **k)

    opt.step = step_with_unscale
    _train(ctx, model, opt, batches, 260, F.mse_loss, backprop=backprop, before=before, after=after)
    ls = ctx.losses
    ctx.check(
        "the gradient Adam saw at step 100 over 1000x the median of 80-99",
        grads[100] > 1000 * _median(grads[80:100]),
    )
    ctx.check(
        "the median per-weight update 20-100 steps later under a tenth of 60-99's",
        _median(moves[120:200]) < 0.1 * _median(moves[60:100]),
    )
    ctx.check(
        "the gradients 120-200 not smaller than 60-99's / 2",
        _median(grads[120:200]) > 0.5 * _median(grads[60:100]),
    )
    ctx.check("the loss finite", _finite(ls))


# -- controls --------------------------------------------------------------------------------------


class FingerConv(nn.Module):
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
    "flageolet_fingering_conv1d_classifier",
    "SGD",
    "healthy",
    (),
    None,
    heldout=True,
    note="SGD with Nesterov momentum under OneCycleLR (max 0.3), label smoothing 0.1, "
    "gradient clipping at 1.0",
)
def h376_flageolet_onecycle_control(ctx: Context) -> None:
    gen = seeded(37612)
    model = FingerConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, nesterov=True)
    steps = 250
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=steps)
    batches = _traces(gen, 32, 5, 376121)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(ctx, model, opt, batches, steps, loss_fn, classifier=True, sched=sched, clip=1.0)
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check("the loss fell (last 20 under 0.7x the first 20)", _fell(ctx.losses, 20, 0.7))


@scenario(
    "sawfiler_tooth_set_silu_huber_regressor",
    "AdamW",
    "healthy",
    (),
    None,
    heldout=True,
    note="AdamW with a no-decay group for biases, fp16 autocast with a GradScaler, accumulation "
    "over 2, ReduceLROnPlateau on a held-out batch, gradient clipping at 1.0",
)
def h376_sawfiler_amp_control(ctx: Context) -> None:
    gen = seeded(37613)
    model = Trunk(10, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    batches = _readings(gen, 64, 10, 376131)
    hx, hy = next(_readings(torch.Generator().manual_seed(6), 256, 10, 376131))

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=1.0)

    def plateau():
        with torch.no_grad():
            return float(loss_fn(model(hx), hy))

    _train(
        ctx,
        model,
        opt,
        batches,
        200,
        loss_fn,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check("the loss fell (last 20 under 0.7x the first 20)", _fell(ctx.losses, 20, 0.7))
