"""Held-out set 328 (``h328_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena: a sheep-shearing blow-count GELU regressor whose loss-weight annealer returns
its step budget 1e6 as the weight for one step (Adam's second moment poisoned), a hoop-rolling
race-time SiLU regressor whose hand-written decoupled weight decay has its sign flipped (slow
loss climb), a spelunking rope-ascent 16-layer tanh MLP initialised orthogonally at gain 3.0
(gradients grow through depth), a birling log-speed residual dropout regressor fed one shard
logged in millimetres (one corrupted batch), an atlatl dart-wobble tanh regressor whose warm-up
peak is typed 3.0 for 0.3 (past 2/sharpness), a sinkhole throat-width net whose variance is
written m2 - mu**2 without a clamp (sqrt of a negative, NaN), a chimney-pot soot-fall two-group
ReLU regressor whose trunk warm-up lambda counts to 1e6 steps (trunk frozen), an oyster-shucking
knife-force Huber regressor whose resume branch multiplies one step's loss by the accumulation
count (one gradient burst), a hedge-laying stake-spacing SiLU regressor whose resume picks the
lexicographically last checkpoint (one loss spike), a semaphore arm-angle classifier given a
cosine head's scale 64 on a plain linear head (softmax saturates), and three controls (a
barrel-organ crank-tempo ReLU regressor with Adam, L2 in the loss and StepLR, a gong-strike
shimmer GELU Conv1d classifier with AdamW, OneCycleLR, label smoothing and clipping, a
frost-heave fence-post Gaussian NLL net with ASGD, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
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
    clip=None,
    sched=None,
    plateau=None,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, accumulate)``
    returns the micro-batch loss actually backpropagated, ``after(step)`` runs after the optimizer
    step, ``plateau()`` gives ReduceLROnPlateau its validation loss. Stops after a non-finite
    loss."""
    ctx.attach(model, opt)
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
            out = model(x)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss, accumulate) if backprop else loss / accumulate
            total.backward()
            shown += float(loss.detach()) / accumulate
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.5 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + 0.2 + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class (classes overlap a little)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- sheep shearing: the loss-weight annealer returns its step budget as the weight ---------------

ONSET_SH = 100


@scenario(
    family="sheep_shearing_blow_count_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SH,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a shearer's blow count per sheep from twelve standardised readings (fleece density, sheep weight, handpiece speed), Adam at 1e-3, MSE, 220 steps. A hand-written loss-weight annealer reloads its table at step 100 and, for that one step, returns its total-step budget (1e6) instead of the weight 1.0: the gradient of that one ordinary batch is a million times its size, it fills Adam's second moment, and for the rest of the run the per-step updates are a small fraction of what they were while the gradients are ordinary again; the loss stops improving.",
)
def h328_sheep_shearing_annealer_budget_as_weight(ctx: Context) -> None:
    gen = seeded(32801)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    prev = {"w": _flat(model)}

    def backprop(step, loss, acc):
        weight = 1e6 if step == ONSET_SH else 1.0  # the annealer's budget, not its weight
        return weight * loss / acc

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev["w"]).norm()))
        prev["w"] = now

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 32801),
        220,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    gn = ctx.grad_norms
    ctx.check(
        "the gradient at onset is over 1e4x its median before",
        gn[ONSET_SH] > 1e4 * _median(gn[ONSET_SH - 30 : ONSET_SH]),
    )
    ctx.check(
        "the gradients are ordinary again afterwards",
        _median(gn[ONSET_SH + 40 :]) < 5 * _median(gn[ONSET_SH - 30 : ONSET_SH]),
    )
    ctx.check(
        "updates 40+ steps after onset are under 1/20 of those before",
        _median(moves[ONSET_SH + 40 :]) < _median(moves[ONSET_SH - 30 : ONSET_SH]) / 20,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- hoop rolling: the hand-written decoupled weight decay grows the weights ----------------------

WD_HR = 6e-3


@scenario(
    family="hoop_rolling_race_time_silu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a hoop-and-stick race's finish time from ten standardised readings (hoop diameter, course camber, stick strokes), RAdam at 1e-3, MSE, 240 steps. The decoupled weight decay is applied by hand after each step and is written p.mul_(1 + wd) for p.mul_(1 - wd) (wd 6e-3 per step): every weight grows geometrically, the optimizer cannot keep up, and after an early fall the loss climbs steadily with no single jump.",
)
def h328_hoop_rolling_decay_sign_flip(ctx: Context) -> None:
    gen = seeded(32802)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    norms: list[float] = []

    def after(step):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n.endswith("weight"):
                    p.mul_(1 + WD_HR)  # meant 1 - WD_HR
        norms.append(float(_flat(model).norm()))

    _loop(ctx, model, opt, _readings(gen, 256, 10, 32802), 240, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(ls)
    at = ls.index(low)
    smooth = [_mean(ls[max(0, i - 4) : i + 1]) for i in range(len(ls))]
    jumps = [smooth[i + 1] - smooth[i] for i in range(len(ls) - 1)]
    climb = _mean(ls[-10:]) - low
    ctx.check("the weight norm more than doubles", norms[-1] > 2 * norms[0])
    ctx.check("the loss ends over 3x its low", _mean(ls[-10:]) > 3 * low)
    ctx.check("the low comes before the last third", at < 160)
    ctx.check(
        "no single step of the 5-step mean makes a fifth of the climb", max(jumps[at:]) < climb / 5
    )
    ctx.check("finite throughout", _finite(ls))


# -- spelunking: a deep tanh MLP initialised orthogonally at gain 3.0 -----------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            lin = nn.Linear(a, b)
            nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.net(x)).squeeze(-1)


@scenario(
    family="spelunking_rope_ascent_deep_tanh_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("net.0",),
    diverges=None,
    heldout=True,
    note="A hand-written 16-layer tanh MLP (net.0, net.2, ... net.30 Linear layers with tanh between, head) predicting a caver's single-rope ascent time from eight standardised readings (pitch depth, rope stretch, rebelays), SGD with momentum 0.9 at 1e-3, MSE, gradient clipping at 1.0, 150 steps. A shared init helper's orthogonal gain is typed 3.0 for the tanh gain 5/3 on every layer of net: the network is in the chaotic regime and the gradient grows layer by layer towards the input, so net.0's weight gradient is well over 20x the last hidden layer's; the clipped run barely learns.",
)
def h328_spelunking_orthogonal_gain_typo(ctx: Context) -> None:
    gen = seeded(32803)
    model = DeepTanh(8, 64, 16, gain=3.0)  # meant 5/3
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios: list[float] = []
    first, last = model.net[0], model.net[30]

    def after(step):
        ratios.append(float(first.weight.grad.norm() / (last.weight.grad.norm() + 1e-12)))

    _loop(ctx, model, opt, _readings(gen, 64, 8, 32803), 150, F.mse_loss, clip=1.0, after=after)
    ctx.check(
        "net.0's gradient is over 20x net.30's over the first 10 steps", _mean(ratios[:10]) > 20
    )
    ctx.check("and over 20x in the median over the run", _median(ratios) > 20)
    ctx.check(
        "the raw gradient norm is far above the clip",
        _median(ctx.grad_norms) > 10,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- birling: a residual dropout regressor fed one shard logged in millimetres --------------------


class ResBlock(nn.Module):
    def __init__(self, dim, p):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(dim, dim)

    def forward(self, x):
        return x + self.fc2(self.drop(self.act(self.fc1(x))))


class ResidualRegressor(nn.Module):
    """stem -> blocks.0..2 (Linear, ReLU, Dropout, Linear, skip) -> head."""

    def __init__(self, d_in, dim=48, depth=3, p=0.1):
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.blocks = nn.Sequential(*(ResBlock(dim, p) for _ in range(depth)))
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x))).squeeze(-1)


ONSET_BI = 120


@scenario(
    family="birling_log_speed_residual_dropout_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BI,
    note="A hand-written residual regressor (stem, three residual blocks blocks.N with fc1, ReLU, dropout 0.1, fc2 and a skip, head) predicting a birling (log-rolling) log's spin speed from ten standardised readings (log diameter, bark state, water temperature, roller weight), SGD with momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0, 220 steps. The batch at step 120 comes from a shard whose first three columns (the log's diameter and length readings) were logged in millimetres instead of metres, a thousand times their scale: that one batch's loss jumps by orders of magnitude, the clipped step disturbs the weights, and the run recovers on the ordinary batches after it.",
)
def h328_birling_millimetre_shard(ctx: Context) -> None:
    gen = seeded(32804)
    model = ResidualRegressor(10)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scale: list[float] = []

    def alter(step, x, y):
        if step == ONSET_BI:
            x = x.clone()
            x[:, :3] = x[:, :3] * 1000.0  # the shard in millimetres
        scale.append(float(x.abs().max()))
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 32804), 220, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    pre = _median(ls[ONSET_BI - 20 : ONSET_BI])
    ctx.check("the shard's inputs are over 100x the usual", scale[ONSET_BI] > 100 * _median(scale))
    ctx.check("the bad batch's loss is over 100x the steps before", ls[ONSET_BI] > 100 * pre)
    ctx.check("the run learned before the shard", pre < 0.6 * _mean(ls[:10]))
    ctx.check(
        "it recovers: the last 30 steps are under 2x the 20 before", _median(ls[-30:]) < 2 * pre
    )
    ctx.check("finite throughout", _finite(ls))


# -- atlatl: the warm-up peak typed 3.0 for 0.3 takes SGD past 2/sharpness ------------------------


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


WARM_AT = 200
PEAK_AT = 3.0  # meant 0.3


@scenario(
    family="atlatl_dart_wobble_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=18,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting an atlatl dart's flight wobble from eight standardised readings (dart length, spur height, throw speed), plain SGD, MSE, a linear warm-up over 200 steps. The warm-up's peak learning rate is typed 3.0 for 0.3: the top Hessian eigenvalue of the loss (power iteration every 5 steps) puts 2/sharpness under the learning rate from step 18, the loss starts to oscillate and then grows until it overflows to inf around step 67.",
)
def h328_atlatl_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(32805)
    model = Trunk(8, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_readings(torch.Generator().manual_seed(5), 256, 8, 32805))
    lams: dict[int, float] = {}
    lrs: list[float] = []

    def before(step):
        lr = PEAK_AT * min(1.0, (step + 1) / WARM_AT)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        if step % 5 == 0:
            lams[step] = _sharpness(model, F.mse_loss, probe)

    _loop(ctx, model, opt, _readings(gen, 64, 8, 32805), 200, F.mse_loss, before=before)
    ls = ctx.losses
    low = min(ls[:20])
    past = next(
        (s for s in range(len(lrs)) if lrs[s] > 2.0 / lams[max(k for k in lams if k <= s)]), None
    )
    blown = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("the loss fell early", low < 0.7 * ls[0])
    ctx.check(
        "lr passed 2/sharpness before the loss blew up",
        past is not None and blown is not None and past < blown,
    )
    ctx.check(
        "the loss blew up over 1e4x its early low",
        _first_bad(ls) is not None or max(ls) > 1e4 * low,
    )


# -- sinkhole: variance as m2 - mu**2 with no clamp -----------------------------------------------


class MomentNet(nn.Module):
    """trunk (fc1, act1, fc2, act2) -> mean head 'mu' and second-moment head 'moment2'; the
    variance is m2 - mu**2 and the std its square root (in 'spread')."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mu = nn.Linear(hidden, 1)
        self.moment2 = nn.Linear(hidden, 1)
        self.spread = Spread()
        nn.init.constant_(self.moment2.bias, 1.5)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        mu = self.mu(h).squeeze(-1)
        m2 = F.softplus(self.moment2(h).squeeze(-1))
        return torch.stack([mu, self.spread(m2, mu)], -1)


class Spread(nn.Module):
    def __init__(self):
        super().__init__()
        self.min_var = 0.0

    def forward(self, m2, mu):
        var = m2 - mu**2  # no clamp(min=eps)
        self.min_var = float(var.detach().min())
        return torch.sqrt(var)


def _gauss_nll(out, y):
    mu, std = out[:, 0], out[:, 1]
    return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()


@scenario(
    family="sinkhole_throat_width_moment_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("spread",),
    diverges=187,
    heldout=True,
    note="A hand-written moment-parameterised regressor (fc1, act1, fc2, act2, a mean head mu and a second-moment head moment2 through softplus, and 'spread' turning them into a standard deviation) predicting a cover-collapse sinkhole's throat width from nine standardised readings (overburden depth, water-table drop, rainfall), RMSprop at 1e-4, Gaussian negative log-likelihood, 300 steps planned. The variance is written m2 - mu**2 and its square root taken with no clamp(min=eps): as the likelihood squeezes the variance down, m2 falls below mu**2 for one row at step 187, the square root of a negative gives NaN and the loss is NaN from there.",
)
def h328_sinkhole_unclamped_variance(ctx: Context) -> None:
    gen = seeded(32806)
    model = MomentNet(9)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    mins: list[float] = []

    def watch(step, out, x, y):
        mins.append(model.spread.min_var)

    _loop(ctx, model, opt, _readings(gen, 64, 9, 32806, noise=0.1), 300, _gauss_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss turns NaN", bad is not None)
    ctx.check("at step 187, after training a while", bad == 187)
    ctx.check("where the variance m2 - mu**2 went negative", bad is not None and mins[bad] < 0)
    ctx.check("the variance was positive before", bad is not None and min(mins[:bad]) > 0)


# -- chimney pot: the trunk group's warm-up lambda counts to 1e6 steps ----------------------------


@scenario(
    family="chimney_pot_soot_fall_two_group_relu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the soot fall under a chimney pot from ten standardised readings (flue draught, fuel moisture, cowl type), Adagrad at 5e-2 with two parameter groups (trunk fc1 and fc2, head) under a LambdaLR warm-up, MSE, 200 steps. The trunk's warm-up lambda is min(1, step / warmup) with warmup read from the config's 'warmup_samples' (1e6) instead of 'warmup_steps' (100): the trunk's learning rate stays around 1e-5 of the base, fc1 and fc2 barely move while the head trains alone.",
)
def h328_chimney_pot_trunk_warmup_in_samples(ctx: Context) -> None:
    gen = seeded(32807)
    model = Trunk(10, 64)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad([{"params": trunk}, {"params": model.head.parameters()}], lr=5e-2)
    warm_trunk, warm_head = 1e6, 100  # trunk's read from warmup_samples
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        [lambda s: min(1.0, (s + 1) / warm_trunk), lambda s: min(1.0, (s + 1) / warm_head)],
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loop(ctx, model, opt, _readings(gen, 64, 10, 32807), 200, F.mse_loss, sched=sched)
    rel = {
        n: float((p.detach() - start[n]).norm() / start[n].norm())
        for n, p in model.named_parameters()
    }
    ctx.check("fc1.weight moved under 1e-3 of its norm", rel["fc1.weight"] < 1e-3)
    ctx.check("fc2.weight moved under 1e-3 of its norm", rel["fc2.weight"] < 1e-3)
    ctx.check("head.weight moved over 5% of its norm", rel["head.weight"] > 0.05)
    ctx.check("the head alone still lowers the loss, finite", _fell(ctx.losses))


# -- oyster shucking: the resume branch multiplies one step's loss by the accumulation count ------

ONSET_OY = 150
ACC_OY = 8


@scenario(
    family="oyster_shucking_knife_force_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_OY,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the knife force an oyster shucker needs at the hinge from ten standardised readings (shell size, hinge depth, water temperature), SGD with Nesterov momentum 0.9 at 2e-2, Huber loss, gradient accumulation over 8 micro-batches, clipping at 1.0, 240 steps. After a preemption the resume branch rebuilds the first accumulation step with loss * accumulate instead of loss / accumulate for step 150: on ordinary data that step's gradient is 64 times its usual size, clipped, and the run carries on normally.",
)
def h328_oyster_shucking_resume_accumulation_bug(ctx: Context) -> None:
    gen = seeded(32808)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def backprop(step, loss, acc):
        return loss * acc if step == ONSET_OY else loss / acc  # resume branch bug

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 16, 10, 32808),
        240,
        F.huber_loss,
        accumulate=ACC_OY,
        backprop=backprop,
        clip=1.0,
    )
    gn, ls = ctx.grad_norms, ctx.losses
    pre = _median(gn[ONSET_OY - 30 : ONSET_OY])
    ctx.check("the gradient at onset is over 30x its median before", gn[ONSET_OY] > 30 * pre)
    ctx.check(
        "the loss of that step is ordinary (no bad data)",
        ls[ONSET_OY] < 2 * _median(ls[ONSET_OY - 30 : ONSET_OY]),
    )
    ctx.check("the gradients are ordinary again after", _median(gn[ONSET_OY + 1 :]) < 3 * pre)
    ctx.check("the run trained and stays finite", _fell(ls))


# -- hedge laying: the resume picks the lexicographically last checkpoint -------------------------

ONSET_HL = 200


@scenario(
    family="hedge_laying_stake_spacing_silu_regressor",
    optimizer="Adamax",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HL,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a hedge-layer's stake spacing from ten standardised readings (pleacher thickness, hedge height, stem species), Adamax at 5e-4, MSE, 300 steps, checkpoints every 10 steps named ckpt_<step>. After a preemption at step 200 the job resumes the model weights from sorted(glob('ckpt_*'))[-1], a string sort that picks ckpt_90 over ckpt_190: the loss jumps back to what it was at step 90 (over 3x the steps before), the optimizer state is the current one, and the run trains back down within a few dozen steps.",
)
def h328_hedge_laying_lexicographic_checkpoint(ctx: Context) -> None:
    gen = seeded(32809)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-4)
    ckpts: dict[str, dict[str, torch.Tensor]] = {}
    picked: list[str] = []

    def after(step):
        if step % 10 == 0 and step < ONSET_HL:
            ckpts[f"ckpt_{step}"] = {k: v.clone() for k, v in model.state_dict().items()}

    def before(step):
        if step == ONSET_HL:
            name = sorted(ckpts)[-1]  # string sort: 'ckpt_90' > 'ckpt_190'
            picked.append(name)
            model.load_state_dict(ckpts[name])

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 32809), 300, F.mse_loss, before=before, after=after
    )
    ls = ctx.losses
    pre = _median(ls[ONSET_HL - 20 : ONSET_HL])
    ctx.check("the resume picked ckpt_90, not ckpt_190", picked == ["ckpt_90"])
    ctx.check("the loss at the resume is over 3x the 20 steps before", ls[ONSET_HL] > 3 * pre)
    ctx.check(
        "it recovers: the last 30 steps are under 1.5x the steps before",
        _median(ls[-30:]) < 1.5 * pre,
    )
    ctx.check("finite throughout", _finite(ls))


# -- semaphore: a cosine head's logit scale 64 on a plain linear head ----------------------------


class ScaledHead(nn.Module):
    def __init__(self, d_in, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, classes)
        self.scale = scale

    def forward(self, x):
        return self.scale * self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="semaphore_arm_angle_scaled_logit_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU classifier (fc1, act1, fc2, act2, head) reading a flag-semaphore signaller's two arm angles and flag positions (twelve standardised readings) into one of 16 letters, NAdam at 5e-3, cross-entropy, 260 steps. The logit scale s = 64 of an ArcFace-style cosine head from the recipe it was copied from is kept on a plain, unnormalised linear head: the logits are 64x too large, and the float32 softmax of a large share of the rows gives the target exactly 1.0 (the rest exactly 0) while the loss on the wrong rows is huge.",
)
def h328_semaphore_cosine_scale_on_linear_head(ctx: Context) -> None:
    gen = seeded(32810)
    model = ScaledHead(12, 16, scale=64.0)  # s belongs to a cosine head
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3)
    fracs: list[float] = []

    def watch(step, out, x, y):
        fracs.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 16, 32810, spread=0.6),
        260,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over a quarter of rows' softmax is exactly 1.0 late", _mean(fracs[-30:]) > 0.25)
    ctx.check("more than at the start", _mean(fracs[-30:]) > _mean(fracs[:5]) + 0.1)
    ctx.check("the loss is finite", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="barrel_organ_crank_tempo_l2_step_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting a street barrel-organ's tempo from the crank readings (ten standardised readings: crank speed, bellows pressure, pinned-barrel wear), Adam at 2e-3 with weight decay written as an L2 penalty 1e-4 * sum of squared weights added to the MSE loss, StepLR halving the rate every 80 steps, 240 steps.",
)
def h328_barrel_organ_control(ctx: Context) -> None:
    gen = seeded(32811)
    model = Trunk(10, 64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)

    def backprop(step, loss, acc):
        l2 = sum((p**2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return (loss + 1e-4 * l2) / acc

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 32811),
        240,
        F.mse_loss,
        backprop=backprop,
        sched=sched,
    )
    ctx.check("the loss fell below half its start, finite", _fell(ctx.losses, ratio=0.5))
    ctx.check("the step schedule ran", abs(opt.param_groups[0]["lr"] - 2e-3 / 8) < 1e-9)


def _strikes(gen, batch, classes, seed, length=48):
    """A struck gong's shimmer: two channels of decaying partials, one set of partials per
    gong class, random phase and noise."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.1 + 0.7 * torch.rand(classes, 2, generator=g)
    decay = 0.01 + 0.05 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 2, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase) * torch.exp(-decay[y][:, None, None] * t)
        yield x + 0.3 * torch.randn(batch, 2, length, generator=gen), y


class StrikeConv(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.act2 = nn.GELU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="gong_strike_shimmer_gelu_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GELU Conv1d classifier (conv1, act1, conv2, act2, mean pool, head) naming which of six gongs was struck from a two-channel recording of its shimmer, AdamW (weight decay 1e-2) under OneCycleLR to 5e-3, cross-entropy with label smoothing 0.1, gradient clipping at 1.0, 200 steps.",
)
def h328_gong_strike_control(ctx: Context) -> None:
    gen = seeded(32812)
    model = StrikeConv(6)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _strikes(gen, 64, 6, 32812),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell below 0.6x its start, finite", _fell(ctx.losses, ratio=0.6))


class HeaveNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        mu, raw = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).unbind(-1)
        return torch.stack([mu, F.softplus(raw) + 1e-4], -1)


def _heave_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


@scenario(
    family="frost_heave_fence_post_gaussian_nll_net",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written SiLU net (fc1, act1, fc2, act2, head giving a mean and a softplus variance with a floor) predicting how far frost heave lifts a fence post over a winter from nine standardised readings (soil silt content, frost depth, post depth), ASGD at 2e-2, Gaussian NLL on noisy targets, accumulation over 2 micro-batches, ReduceLROnPlateau on a held-out batch, gradient clipping at 1.0, 200 steps.",
)
def h328_frost_heave_control(ctx: Context) -> None:
    gen = seeded(32813)
    model = HeaveNet(9)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    val = next(_readings(torch.Generator().manual_seed(9), 256, 9, 32813, noise=0.2))

    def plateau():
        with torch.no_grad():
            model.eval()
            return float(_heave_nll(model(val[0]), val[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 9, 32813, noise=0.2),
        200,
        _heave_nll,
        accumulate=2,
        sched=sched,
        plateau=plateau,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the NLL fell by over 0.3 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.3)
