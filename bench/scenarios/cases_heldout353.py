"""Held-out set 353 (``h353_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before. Faults: a spurtle porridge-viscosity deep equilibrium
regressor whose mixing layer is initialised at gain 3.0 for 0.3 (gradients grow back through the
unrolled iterations), a sistrum jingle-decay Gaussian NLL net whose scale is sqrt(1 + raw) with
no softplus (sqrt of a negative, NaN), a temari thread-tension regressor whose hand-written
weight decay has its sign flipped (a slow climb), a langspil bowing classifier whose fc2 lr is
looked up under a misspelt key with default 0 (frozen), a pall-mall stroke regressor fed one
shard in feet (one corrupted batch), a jeu de paume chase regressor whose resumed step sums the
loss over the batch (one gradient burst), a maul-and-wedge split-force regressor whose lr was
scaled by the linear scaling rule (past 2/sharpness), an Eton fives classifier whose OneCycleLR
max_lr is typed 3e-1 (ReLUs die), a paddleball cosine classifier whose inverse temperature is
read as its reciprocal (softmax saturates), a ratcatcher's classifier whose cross-entropy
detaches its normaliser (logits grow). Controls: a link boy's torch-flame deep equilibrium
regressor with a damped iteration and spectral normalisation (AdamW, warm-up then cosine), a
beigoma wobble Conv1d classifier (SGD Nesterov, OneCycleLR, label smoothing), a pug-mill
moisture Huber regressor (Adadelta, fp16 autocast with a GradScaler, ReduceLROnPlateau).

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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the
    gradients before clipping. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
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


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


# -- northumbrian smallpipes: the muP q/k multiplier is width_mult for 1 / width_mult ------------


# -- spurtle porridge stir: a deep-equilibrium layer initialised at gain 3.0 for 0.3 ----------------


class FixedPointLayer(nn.Module):
    """f(z, x) = tanh(mix(z) + inject(x)), iterated to a fixed point."""

    def __init__(self, d_in, dim):
        super().__init__()
        self.inject = nn.Linear(d_in, dim)
        self.mix = nn.Linear(dim, dim, bias=False)

    def forward(self, z, u):
        return torch.tanh(self.mix(z) + u)


class DEQRegressor(nn.Module):
    """A deep equilibrium regressor: z_{k+1} = (1 - damping) z_k + damping f(z_k, x), iterated
    ``iters`` times from z_0 = 0, the backward through the unrolled iterations. Keeps the
    iterates (with their gradients when ``keep``) and the last residual |z_K - z_{K-1}|/|z_K|."""

    def __init__(self, d_in, dim=32, iters=30, damping=1.0):
        super().__init__()
        self.cell = FixedPointLayer(d_in, dim)
        self.head = nn.Linear(dim, 1)
        self.iters = iters
        self.damping = damping
        self.keep = False
        self.zs = []
        self.residual = 0.0

    def forward(self, x):
        u = self.cell.inject(x)
        z = torch.zeros(x.shape[0], self.cell.mix.in_features)
        self.zs = []
        prev = z
        for _ in range(self.iters):
            prev = z
            z = (1.0 - self.damping) * z + self.damping * self.cell(z, u)
            if self.keep and z.requires_grad:
                z.retain_grad()
                self.zs.append(z)
        self.residual = float((z - prev).detach().norm() / z.detach().norm().clamp_min(1e-12))
        return self.head(z).squeeze(-1)


@scenario(
    family="spurtle_porridge_stir_viscosity_deq_regressor",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("cell", "cell.mix"),
    diverges=None,
    heldout=True,
    note="A hand-written deep equilibrium model (cell: inject and mix, z <- tanh(mix(z) + inject(x)) iterated 30 times from zero, the backward through the unrolled iterations; head) predicting the viscosity of porridge stirred with a spurtle (standardised) from ten readings of the oats, water, heat and stirring, Adagrad at 0.05, MSE, clipping at 1.0, 150 steps. The config's init_gain for cell.mix holds 3.0 where a contraction of 0.3 was meant (the decimal point dropped): mix.weight is drawn with std 3.0/sqrt(dim), its spectral radius is about 3, the iteration is no contraction (it never settles to a fixed point) and the gradient grows backwards through the unrolled iterations: the gradient at the first iterate is over 20x that at the last at the start of the run and stays over 10x through it. The loss stays finite (tanh bounds the state).",
)
def h353_spurtle_deq_init_gain_decimal(ctx: Context) -> None:
    gen = seeded(35301)
    model = DEQRegressor(10, 32, iters=30)
    init_gain = 3.0  # meant: 0.3
    nn.init.normal_(model.cell.mix.weight, std=init_gain / math.sqrt(32))
    model.keep = True
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ratios = []
    residuals = []

    def inspect(step):
        first, last = model.zs[0].grad, model.zs[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-12)))
        residuals.append(model.residual)

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3531), 150, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check(
        "the gradient at the first iterate is over 20x that at the last over the first 10 steps",
        _median(ratios[:10]) > 20.0,
    )
    ctx.check("the ratio stays over 10x through the last 50 steps", _median(ratios[-50:]) > 10.0)
    ctx.check("the iteration does not settle (last residual over 1e-2)", _median(residuals) > 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sistrum jingle decay: the Gaussian NLL's scale is sqrt(1 + raw) with no softplus -------------


class SqrtScale(nn.Module):
    """Turns the variance head's output into a standard deviation: sqrt(1 + raw) (the softplus
    was left out). Keeps the smallest argument of the sqrt."""

    def __init__(self):
        super().__init__()
        self.lowest = 0.0

    def forward(self, raw):
        var = 1.0 + raw
        self.lowest = float(var.detach().min())
        return torch.sqrt(var)


class JingleDecayNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        self.scale = SqrtScale()

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.stack(
            [self.mean_head(h).squeeze(-1), self.scale(self.var_head(h).squeeze(-1))], -1
        )


def _gauss_nll(out, y):
    mu, sd = out[..., 0], out[..., 1]
    return (torch.log(sd) + 0.5 * ((y - mu) / sd) ** 2).mean()


SISTRUM_NAN = 37


@scenario(
    family="sistrum_rattle_jingle_decay_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("scale", "var_head"),
    diverges=SISTRUM_NAN,
    heldout=True,
    note="A hand-written SiLU net (fc1, act1, fc2, act2, mean_head, var_head, scale) predicting the decay time of a sistrum's jingles (standardised) from eight readings of the frame, rods and shake, with a Gaussian negative log-likelihood (log sd + (y - mu)^2 / 2 sd^2), RAdam at 1e-2, 200 steps planned. The scale module computes sd = sqrt(1 + raw) where softplus(raw) was meant: the variance starts near 1, the NLL drives it down as the mean fits, the argument of the sqrt passes below zero for some sample and sqrt of a negative number gives NaN: the loss is NaN from the step the smallest argument first goes negative.",
)
def h353_sistrum_sqrt_without_softplus(ctx: Context) -> None:
    gen = seeded(35302)
    model = JingleDecayNet(8)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    lowest = []

    def watch(step, out, x, y):
        lowest.append(model.scale.lowest)

    ran = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 3532, noise=0.1), 200, _gauss_nll, watch=watch
    )
    bad = _first_bad(ctx.losses)
    ctx.check(f"the loss is NaN at step {SISTRUM_NAN}", bad == SISTRUM_NAN)
    ctx.check(
        "the sqrt's argument is negative at that step and was positive before",
        bad is not None and lowest[bad] < 0.0 and min(lowest[:bad]) > 0.0,
    )
    ctx.check("the run stopped at the NaN", ran == SISTRUM_NAN + 1)
    ctx.check("the loss fell before the NaN", bad is not None and _fell(ctx.losses[:bad], 5, 0.9))


# -- temari thread wrapping: hand-written decoupled weight decay with its sign flipped ------------

LR_WD = (5e-3, 1.6)


@scenario(
    family="temari_ball_thread_wrap_tension_decay_sign_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the thread tension a temari ball maker reaches on a wrap (standardised) from ten readings of the core, thread and winding, ASGD at 5e-3, MSE, 260 steps. Decoupled weight decay is applied by hand to the weight matrices after each step, and its sign is flipped (p *= 1 + lr * wd for 1 - lr * wd, wd 1.6): every weight matrix is inflated by 0.8% a step, the gradient holds the fit at first, then the growth wins, the tanh units saturate and the loss climbs slowly and steadily to many times its lowest, with no single jump and no NaN.",
)
def h353_temari_decay_sign_flipped(ctx: Context) -> None:
    gen = seeded(35303)
    model = Trunk(10, 64, act=nn.Tanh)
    lr, wd = LR_WD
    opt = torch.optim.ASGD(model.parameters(), lr=lr)
    start = float(_flat(model).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1.0 + lr * wd)  # meant: 1 - lr * wd

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3533), 260, F.mse_loss, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 20)]
    low = min(means)
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the last 20 steps' loss is over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3.0 * low
    )
    ctx.check("the lowest 20-step mean comes in the first half", means.index(low) < len(means) // 2)
    ctx.check(
        "no step's loss is over 3x the mean of the 10 before it (a slow climb, no spike)",
        all(ls[i] < 3.0 * _mean(ls[i - 10 : i]) for i in range(10, len(ls))),
    )
    ctx.check("the weights grew over 3x", float(_flat(model).norm()) > 3.0 * start)


# -- langspil drone string: fc2's lr looked up under a misspelt key, default 0 --------------------


@scenario(
    family="langspil_drone_string_bowing_two_group_classifier",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU classifier (fc1, act1, fc2, act2, head) naming which of six bowing styles a langspil player uses from sixteen readings of the drone strings, RMSprop with a parameter group per layer whose lr is looked up in the config with cfg.get(name, 0.0); the config spells fc2's key 'lr_fc_2' where the code asks for 'lr_fc2', so fc2 trains at lr 0 while fc1 and head train at 1e-3, cross-entropy, 200 steps. fc2 never moves (its relative change is under 1e-6) while fc1 and the head move over 1% and the loss still falls through them.",
)
def h353_langspil_lr_key_typo(ctx: Context) -> None:
    gen = seeded(35304)
    model = Trunk(16, 64, out=6)
    cfg = {"lr_fc1": 1e-3, "lr_fc_2": 1e-3, "lr_head": 1e-3}
    groups = [
        {"params": list(getattr(model, n).parameters()), "lr": cfg.get(f"lr_{n}", 0.0)}
        for n in ("fc1", "fc2", "head")
    ]
    opt = torch.optim.RMSprop(groups, lr=1e-3)
    w0 = {n: getattr(model, n).weight.detach().clone() for n in ("fc1", "fc2", "head")}
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 3534, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
    )
    moved = {n: _rel_change(w0[n], getattr(model, n).weight) for n in w0}
    ctx.check("fc2 moved under 1e-6 of its norm", moved["fc2"] < 1e-6)
    ctx.check("fc1 and the head moved over 1%", moved["fc1"] > 0.01 and moved["head"] > 0.01)
    ctx.check("the loss fell", _fell(ctx.losses))


# -- pall mall: one club's shard logged in feet and not standardised -----------------------------

PALL_ONSET = 120


@scenario(
    family="pall_mall_mallet_stroke_distance_silu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=PALL_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how far a pall-mall mallet stroke sends the ball (standardised) from ten readings of the swing, mallet and alley, SGD with momentum 0.9 at 1e-2, MSE, clipping at 1.0, 240 steps. One club's shard, logged in feet and never standardised (readings around 25x the others), arrives as the batch at step 120: the loss and the gradient jump over 20x on that one batch; clipping limits the step and the run recovers to its earlier loss.",
)
def h353_pall_mall_feet_shard(ctx: Context) -> None:
    gen = seeded(35305)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        return (x * 25.0 + 8.0, y) if step == PALL_ONSET else (x, y)

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3535), 240, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 is over 20x the median of steps 100-119",
        ls[PALL_ONSET] > 20.0 * _median(ls[100:PALL_ONSET]),
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median of steps 100-119",
        g[PALL_ONSET] > 20.0 * _median(g[100:PALL_ONSET]),
    )
    ctx.check(
        "the last 20 steps' loss is under 2x that of steps 100-119",
        _mean(ls[-20:]) < 2.0 * _mean(ls[100:PALL_ONSET]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- jeu de paume: the resumed step's loss is a sum over the batch ---------------------------------

PAUME_ONSET = 150


@scenario(
    family="jeu_de_paume_chase_mark_gelu_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=PAUME_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting where a real-tennis (jeu de paume) chase is marked on the floor (standardised) from twelve readings of the stroke and the ball's second bounce, SGD Nesterov (momentum 0.9) at 2e-2, Huber loss, clipping at 1.0, 260 steps. The run resumes at step 150 and the resume path builds its loss function before the config is read, with reduction='sum' for 'mean': that one clean batch of 64 gives a gradient over 30x the usual (the loss itself is ordinary); clipping limits the step and the run recovers.",
)
def h353_jeu_de_paume_resume_sum_reduction(ctx: Context) -> None:
    gen = seeded(35306)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def loss_fn(out, y):
        return F.huber_loss(out, y)

    def backprop(step, loss):
        if step == PAUME_ONSET:
            return loss * 64  # the loss the resumed trainer builds: reduction='sum' on 64 rows
        return loss

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3536),
        260,
        loss_fn,
        backprop=backprop,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 150 is over 30x the median of steps 130-149",
        g[PAUME_ONSET] > 30.0 * _median(g[130:PAUME_ONSET]),
    )
    ctx.check(
        "the loss at step 150 is ordinary (under 3x the median of steps 130-149)",
        ls[PAUME_ONSET] < 3.0 * _median(ls[130:PAUME_ONSET]),
    )
    ctx.check(
        "the last 20 steps' loss is under 2x that of steps 130-149",
        _mean(ls[-20:]) < 2.0 * _mean(ls[130:PAUME_ONSET]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- maul and wedge: lr scaled linearly from batch 32 to 1024 for plain SGD -----------------------

MAUL_WARMUP = 40


@scenario(
    family="maul_wedge_log_split_force_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the force a maul and wedge need to split a log (standardised) from ten readings of the round's species, diameter, moisture and knots, plain SGD, MSE, 200 steps planned, batch 1024. The lr tuned at batch 32 (0.05) was scaled by the linear scaling rule to 1.6 for batch 1024, with a linear warm-up over 40 steps: this model's loss is far too sharp for that (lr x the top Hessian eigenvalue, measured by power iteration on Hessian-vector products, passes 2 during the warm-up), the iterates oscillate with growing amplitude and the loss blows up.",
)
def h353_maul_linear_scaling_rule(ctx: Context) -> None:
    gen = seeded(35307)
    model = Trunk(10, 64, act=nn.Tanh)
    peak = 0.05 * 1024 / 32
    opt = torch.optim.SGD(model.parameters(), lr=peak / MAUL_WARMUP)
    probe = next(_readings(torch.Generator().manual_seed(3577), 256, 10, 3537))
    products = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / MAUL_WARMUP)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 5 == 0 and step <= 60:
            products[step] = lr * _sharpness(model, F.mse_loss, *probe)

    _loop(ctx, model, opt, _readings(gen, 1024, 10, 3537), 200, F.mse_loss, before=before)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("lr x sharpness is under 2 at step 0", products[0] < 2.0)
    ctx.check(
        "lr x sharpness passes 2 before the loss blows up",
        any(v > 2.0 and (bad is None or s < bad) for s, v in products.items()),
    )
    ctx.check(
        "the loss blows up (non-finite or over 1000x its start)",
        bad is not None or max(ls) > 1000.0 * ls[0],
    )


# -- eton fives: OneCycleLR's max_lr typed 3e-1 for 3e-3 under NAdam -------------------------------


@scenario(
    family="eton_fives_buttress_bounce_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU classifier (fc1, act1, fc2, act2, head) naming which of five ways an Eton fives ball comes off the buttress from sixteen readings of the shot, NAdam under OneCycleLR whose max_lr was typed 3e-1 for 3e-3, cross-entropy, 240 steps. The huge steps around the peak of the cycle push most of fc2's units to negative pre-activations on every input; they never come back when the lr anneals: over half of act2's units are dead through the last 50 steps and the loss stays far above what the task allows.",
)
def h353_eton_fives_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(35308)
    model = Trunk(16, 64, out=5)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-1, total_steps=240)  # meant 3e-3
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(_dead(model.fc2(model.act1(model.fc1(x)))))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 3538, spread=1.5),
        240,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        sched=sched,
    )
    ctx.check("under 10% of act2's units are dead over the first 5 steps", max(dead[:5]) < 0.1)
    ctx.check("over half of act2's units are dead through the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check(
        "the last 20 steps' loss is over 0.5x chance (log 5)",
        _mean(ctx.losses[-20:]) > 0.5 * math.log(5),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- paddleball: a cosine classifier's inverse temperature read as its temperature ----------------


class CosineHead(nn.Module):
    """logits = cos(w_c, h) / temperature."""

    def __init__(self, dim, classes, temperature):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.temperature = temperature

    def forward(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T / self.temperature


class RallyShotNamer(nn.Module):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = CosineHead(hidden, classes, temperature)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="paddleball_rally_shot_cosine_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU net with a cosine classifier head (fc1, act1, fc2, act2, head: cos(w_c, h) / temperature) naming which of six shots a paddleball player plays from fourteen readings of the paddle and the rally, Adamax at 2e-3, cross-entropy, 220 steps. The config gives inv_temperature: 500 and the code reads it as the temperature's reciprocal twice over (temperature = 1 / 500 where 1 / 16 was meant): the logits span +-500, and once the classes separate the softmax of most rows rounds the target probability to exactly 1.0 in float32 (over half the rows late in the run).",
)
def h353_paddleball_inverse_temperature(ctx: Context) -> None:
    gen = seeded(35309)
    model = RallyShotNamer(14, 64, 6, temperature=1.0 / 500)  # meant: 1 / 16
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 6, 3539, spread=1.0),
        220,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check(
        "the collapsed share rose by over 0.3 from the first 5 steps",
        _mean(collapsed[-20:]) > _mean(collapsed[:5]) + 0.3,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- ratcatcher: the hand-written cross-entropy detaches its normaliser ----------------------------


def _detached_ce(logits, y):
    lse = torch.logsumexp(logits.detach(), -1)  # detached "to save memory"
    return (lse - logits.gather(1, y[:, None]).squeeze(1)).mean()


@scenario(
    family="ratcatcher_terrier_catch_detached_lse_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU classifier (fc1, act1, fc2, act2, head) naming which of five quarry a ratcatcher's terrier catches from twelve readings of the run, Adam at 2e-3, 220 steps. The hand-written cross-entropy computes logsumexp on logits.detach() 'to save memory': its value is right but its gradient only pushes the target logit up and nothing pulls any logit down, so the head's logits grow without bound (the peak logit over 20x its start and still growing at the end) while the reported loss looks ordinary.",
)
def h353_ratcatcher_detached_logsumexp(ctx: Context) -> None:
    gen = seeded(35310)
    model = Trunk(12, 64, out=5)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    peaks = []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 3540, spread=1.2),
        220,
        _detached_ce,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "the peak logit over the last 10 steps is over 20x that of the first 5",
        _mean(peaks[-10:]) > 20.0 * _mean(peaks[:5]),
    )
    ctx.check(
        "the peak logit still grows (last 10 over 1.2x steps 160-169)",
        _mean(peaks[-10:]) > 1.2 * _mean(peaks[160:170]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="link_boy_torch_flame_height_spectral_deq_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written deep equilibrium regressor (cell: inject and mix, z <- 0.5 z + 0.5 tanh(mix(z) + inject(x)), a damped fixed-point iteration run 25 times, the backward through the unrolled iterations, mix under spectral normalisation so the map is a contraction; head) predicting a link boy's torch flame height (standardised) from ten readings of the pitch, tow and wind, AdamW at 3e-3 with weight decay 0.01, linear warm-up over 20 steps then cosine decay, clipping at 1.0, MSE, 200 steps.",
)
def h353_link_boy_spectral_deq_control(ctx: Context) -> None:
    gen = seeded(35311)
    model = DEQRegressor(10, 32, iters=25, damping=0.5)
    torch.nn.utils.parametrizations.spectral_norm(model.cell.mix)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    total, warm = 200, 20

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / (total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    residuals = []

    def watch(step, out, x, y):
        residuals.append(model.residual)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3541),
        total,
        F.mse_loss,
        sched=sched,
        clip=1.0,
        watch=watch,
    )
    ctx.check("the loss fell (last 10 under 0.5x the first 10)", _fell(ctx.losses, 10, 0.5))
    ctx.check("the iteration settles (last residual under 1e-3)", max(residuals[-20:]) < 1e-3)
    ctx.check("finite throughout", _finite(ctx.losses))


class WobbleConv(nn.Module):
    def __init__(self, classes=4, channels=3, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _wobbles(gen, batch, classes=4, length=48):
    """Three-axis traces of a spinning beigoma top: each class precesses at its own rate."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float()
        phase = 6.28 * torch.rand(batch, 3, 1, generator=gen)
        x = torch.sin(freq[:, None, None] * t + phase)
        yield x + 0.4 * torch.randn(batch, 3, length, generator=gen), y


@scenario(
    family="beigoma_spinning_top_wobble_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, head over the time-averaged channels) naming which of four precession regimes a beigoma spinning top is in from a 48-sample three-axis wobble trace with noise, SGD Nesterov (momentum 0.9) under OneCycleLR to 0.1, cross-entropy with label smoothing 0.1, clipping at 2.0, 200 steps.",
)
def h353_beigoma_conv1d_onecycle_control(ctx: Context) -> None:
    gen = seeded(35312)
    model = WobbleConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _wobbles(gen, 32),
        200,
        loss_fn,
        classifier=True,
        sched=sched,
        clip=2.0,
    )
    ctx.check("the loss fell (last 10 under 0.7x the first 10)", _fell(ctx.losses, 10, 0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="pug_mill_clay_extrusion_moisture_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the moisture of clay leaving a pug mill (standardised) from twelve readings of the auger, vacuum and feed, with noisy targets, Adadelta at lr 1.0, Huber loss under fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, clipping at 1.0 after unscaling, ReduceLROnPlateau on a held-out batch, 200 steps.",
)
def h353_pug_mill_fp16_adadelta_control(ctx: Context) -> None:
    gen = seeded(35313)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    held = next(_readings(torch.Generator().manual_seed(3599), 256, 12, 3543, noise=0.2))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 3543, noise=0.2),
        200,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell (last 10 under 0.7x the first 10)", _fell(ctx.losses, 10, 0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the scaler's scale stayed finite and positive", min(ctx.scales) > 0.0)
