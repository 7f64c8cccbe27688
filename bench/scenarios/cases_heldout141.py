"""Held-out set 141 (``h141_``): Hugging Face PatchTSMixer (forecaster) and XLM-RoBERTa (masked
LM with the output projection tied to the word embeddings) from tiny configs, and hand-written
models of trades, crafts, sports and natural phenomena not covered before.

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs of the same kinds of models (OneCycleLR with clipping, warm-up with
gradient accumulation, label smoothing with ReduceLROnPlateau, StepLR on noisy batches).
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
    grad_norm,
    scenario,
    seeded,
    text_batches,
)

# -- shared pieces ---------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _tabular(gen: torch.Generator, n_in: int, batch: int, noise: float = 0.05, scale: float = 1.0):
    """Endless batches of a smooth nonlinear target of ``n_in`` generated features."""
    w = torch.randn(n_in, 1, generator=gen)
    v = torch.randn(n_in, 1, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(n_in)) + 0.5 * torch.sin(x @ v / math.sqrt(n_in))
        yield x, scale * (y + noise * torch.randn(batch, 1, generator=gen))


def _clusters(gen: torch.Generator, n_in: int, classes: int, batch: int, spread: float = 1.0):
    """Endless batches of Gaussian class clusters (overlapping when ``spread`` is large)."""
    centres = torch.randn(classes, n_in, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield centres[y] + spread * torch.randn(batch, n_in, generator=gen), y


class Regressor(nn.Module):
    """Features -> ``body`` (Linear/activation stack) -> ``head``."""

    def __init__(self, n_in: int, width: int, depth: int = 2, act=nn.Tanh, n_out: int = 1):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(n_in if i == 0 else width, width), act()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _train(
    ctx: Context,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    scale=None,
    clip=None,
    sched=None,
    after=None,
):
    """A plain loop: ``before(step)`` for injected bugs, ``alter(step, x, y)`` for bad batches,
    ``scale(step)`` multiplies the backpropagated loss, ``after(step)`` runs after the update."""
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if before is not None:
            before(step)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        total = loss * scale(step) if scale is not None else loss
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if after is not None:
            after(step)
        if sched is not None:
            sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break


# -- epee lunge classifier: the loader serves one batch forever, the head's logits run away ----


class Classifier(Regressor):
    def __init__(self, n_in: int, width: int, classes: int):
        super().__init__(n_in, width, depth=2, act=nn.ReLU, n_out=classes)


@scenario(
    family="epee_lunge_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A data-loader bug: `next(iter(loader))` is called every step, so the same 32 lunges "
    "are served forever; Adam (no weight decay) fits them exactly and cross-entropy keeps "
    "pushing the margins: the head's logits grow without bound.",
)
def h141_epee_lunge_logit_runaway(ctx: Context) -> None:
    gen = seeded(14101)
    model = Classifier(12, 48, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x0, y0 = next(_clusters(gen, 12, 5, 32, spread=1.5))
    peaks: list[float] = []

    def fixed():
        while True:
            yield x0, y0

    def loss_fn(logits, y):
        peaks.append(float(logits.detach().abs().max()))
        return F.cross_entropy(logits, y)

    _train(ctx, model, opt, fixed(), 250, loss_fn, classifier=True)
    ctx.check("head logits grew 20x (max |logit| end vs step 0)", peaks[-1] > 20 * peaks[0])
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("the fixed batch is memorised (loss < 1e-3)", ctx.losses[-1] < 1e-3)


# -- luge run-time regressor: one unscaled gradient poisons Adam's second moment ------------------


@scenario(
    family="luge_run_time_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="A hand-rolled static loss scale (x65536) is not unscaled for the first step after a "
    "checkpoint resume at step 80: one gradient 65536x too large. Adam's step is bounded so "
    "nothing breaks, but with beta2=0.9999 the squared gradient stays in v for thousands of "
    "steps and every later update is tiny: training stalls.",
)
def h141_luge_unscaled_resume_step(ctx: Context) -> None:
    gen = seeded(14102)
    model = Regressor(8, 48, depth=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))
    onset = 80
    moves: list[float] = []
    vmax: list[float] = []
    prev = [p.detach().clone() for p in model.parameters()]

    def after(step):
        cur = [p.detach() for p in model.parameters()]
        moves.append(sum(float((c - q).abs().sum()) for c, q in zip(cur, prev, strict=True)))
        for q, c in zip(prev, cur, strict=True):
            q.copy_(c)
        vmax.append(max(float(opt.state[p]["exp_avg_sq"].max()) for p in model.parameters()))

    _train(
        ctx,
        model,
        opt,
        _tabular(gen, 8, 64),
        200,
        F.mse_loss,
        scale=lambda s: 65536.0 if s == onset else 1.0,
        after=after,
    )
    g = ctx.grad_norms
    ctx.check("gradient 1000x the median at the onset", g[onset] > 1000 * _median(g[:onset]))
    ctx.check("Adam's max v grew 1e6x at the onset", vmax[onset] > 1e6 * vmax[onset - 1])
    ctx.check(
        "update per unit gradient 40+ steps after the onset < 10% of that before",
        _mean(
            [
                m / gn
                for m, gn in zip(
                    moves[onset + 40 : onset + 110], g[onset + 40 : onset + 110], strict=True
                )
            ]
        )
        < 0.1
        * _mean(
            [m / gn for m, gn in zip(moves[onset - 30 : onset], g[onset - 30 : onset], strict=True)]
        ),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- mud-pot bubble-interval model: mean and variance heads, log of an unconstrained variance ----


class MudPot(nn.Module):
    def __init__(self, n_in: int = 6, width: int = 32, softplus: bool = False):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(n_in, width), nn.Tanh(), nn.Linear(width, width))
        self.act = nn.Tanh()
        self.mean_head = nn.Linear(width, 1)
        self.var_head = nn.Linear(width, 1)
        self.softplus = softplus
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act(self.trunk(x))
        var = self.var_head(h)
        if self.softplus:
            var = F.softplus(var) + 1e-4
        return self.mean_head(h), var


def _gauss_nll(out, y):
    mu, var = out
    return (0.5 * torch.log(var) + (y - mu) ** 2 / (2 * var)).mean()


MUD_POT_NAN_STEP = 84


@scenario(
    family="mud_pot_bubble_interval_model",
    optimizer="AdamW",
    cause="nonfinite",
    where=("var_head",),
    diverges=MUD_POT_NAN_STEP,
    heldout=True,
    note="The Gaussian NLL is written by hand from a mean and a variance output; the softplus "
    "on the variance head was dropped in a refactor. As the intervals get well predicted the "
    "NLL drives the raw variance down through zero and log(var) of a negative is NaN.",
)
def h141_mud_pot_raw_variance_log(ctx: Context) -> None:
    gen = seeded(14103)
    model = MudPot()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    low: list[float] = []

    def loss_fn(out, y):
        low.append(float(out[1].detach().min()))
        return _gauss_nll(out, y)

    _train(ctx, model, opt, _tabular(gen, 6, 64, noise=0.02), 300, loss_fn)
    k = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check(f"loss NaN first at step {MUD_POT_NAN_STEP}", k == MUD_POT_NAN_STEP)
    ctx.check("raw variance <= 0 at the NaN step", k is not None and low[k] <= 0.0)
    ctx.check("variance positive at the start", low[0] > 0.0)


@scenario(
    family="mud_pot_bubble_interval_model",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: the same mean/variance model with softplus(var)+1e-4, the NLL by hand, "
    "AdamW with OneCycleLR and gradient clipping at 1.0.",
)
def h141_mud_pot_softplus_control(ctx: Context) -> None:
    gen = seeded(14104)
    model = MudPot(softplus=True)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    _train(ctx, model, opt, _tabular(gen, 6, 64, noise=0.1), 200, _gauss_nll, clip=1.0, sched=sched)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses) and ctx.losses[-1] < 0.0)


# -- hurdy-gurdy drone classifier: a temperature read in percent ---------------------------------


class Hurdy(Classifier):
    def __init__(self, temperature: float = 1.0):
        super().__init__(16, 48, 8)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / self.temperature


@scenario(
    family="hurdy_gurdy_drone_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="The softmax temperature 0.5 is read from a config field documented in percent and "
    "divided by 100: logits are divided by 0.005. The float32 softmax rounds to exactly 0/1 "
    "on most rows.",
)
def h141_hurdy_gurdy_temperature_percent(ctx: Context) -> None:
    gen = seeded(14105)
    model = Hurdy(temperature=0.5 / 100)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    fracs: list[float] = []

    def loss_fn(logits, y):
        fracs.append(collapsed_fraction(logits.detach(), y))
        return F.cross_entropy(logits, y)

    _train(ctx, model, opt, _clusters(gen, 16, 8, 64, spread=0.8), 150, loss_fn, classifier=True)
    ctx.check("target prob exactly 1.0 on > 30% of rows (last 20 steps)", _mean(fracs[-20:]) > 0.3)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="hurdy_gurdy_drone_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Control: temperature 1, label smoothing 0.1, SGD with Nesterov momentum and "
    "ReduceLROnPlateau.",
)
def h141_hurdy_gurdy_smoothing_control(ctx: Context) -> None:
    gen = seeded(14106)
    model = Hurdy()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _clusters(gen, 16, 8, 64, spread=1.0)
    ctx.attach(model, opt)
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        opt.step()
        sched.step(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses, ratio=0.5))


# -- climbing hold-sequence attention: q.k logits grow with no QK-norm ---------------------------


class HoldAttention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.dim = dim
        self.peak = 0.0

    def forward(self, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        s = self.q(query) @ self.k(keys).transpose(1, 2) / math.sqrt(self.dim)
        self.peak = float(s.detach().abs().max())
        return torch.softmax(s, -1) @ self.v(keys)


class ClimbingRoute(nn.Module):
    """A route is 12 holds (type, crux flag); classify the type of the crux hold."""

    def __init__(self, types: int = 10, dim: int = 32, length: int = 12):
        super().__init__()
        self.hold = nn.Embedding(types, dim)
        self.flag = nn.Embedding(2, dim)
        self.pos = nn.Embedding(length, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.attn = HoldAttention(dim)
        self.head = nn.Linear(dim, types)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        holds, flags = x[..., 0], x[..., 1]
        h = self.hold(holds) + self.flag(flags) + self.pos(torch.arange(holds.shape[1]))
        out = self.attn(self.cls.expand(len(h), 1, -1), h)
        return self.head(out[:, 0])


def _routes(gen: torch.Generator, batch: int = 64, types: int = 10, length: int = 12):
    while True:
        holds = torch.randint(0, types, (batch, length), generator=gen)
        crux = torch.randint(0, length, (batch,), generator=gen)
        flags = F.one_hot(crux, length)
        yield torch.stack([holds, flags], -1), holds.gather(1, crux[:, None])[:, 0]


@scenario(
    family="climbing_route_crux_attention",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="An attention read-out with no QK-norm trained with lr 1e-2 copied from the MLP "
    "baseline and no weight decay: once the crux hold is found the q and k weights keep "
    "growing and the attention logits q.k/sqrt(d) grow without bound.",
)
def h141_climbing_crux_qk_growth(ctx: Context) -> None:
    gen = seeded(14107)
    model = ClimbingRoute()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    peaks: list[float] = []

    def loss_fn(logits, y):
        peaks.append(model.attn.peak)
        return F.cross_entropy(logits, y)

    _train(ctx, model, opt, _routes(gen), 250, loss_fn, classifier=True)
    ctx.check("attention logits grew 10x (max |q.k|/sqrt(d))", peaks[-1] > 10 * peaks[0])
    ctx.check("attention logit above 30 at the end", peaks[-1] > 30)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- landslide run-out regressor: a deep ReLU stack initialised with too large a gain -------------


@scenario(
    family="landslide_runout_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("body.0",),
    diverges="auto",
    heldout=True,
    note="A 10-layer ReLU regressor initialised with kaiming_normal_ and an extra gain of 1.8 "
    "(a leftover multiplier): activations and gradients grow about 1.8x per layer, the first "
    "layer's gradient is hundreds of times that of the standard init, and SGD with momentum blows up.",
)
def h141_landslide_init_gain(ctx: Context) -> None:
    gen = seeded(14108)
    model = Regressor(10, 32, depth=10, act=nn.ReLU)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.weight.mul_(1.8)
                nn.init.zeros_(m.bias)
    reference = Regressor(10, 32, depth=10, act=nn.ReLU)
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    ratio: list[float] = []
    batches = _tabular(gen, 10, 64)
    x, y = next(batches)
    F.mse_loss(reference(x), y).backward()
    ref_first = float(reference.body[0].weight.grad.norm())
    ctx.attach(model, opt)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratio.append(float(model.body[0].weight.grad.norm()) / ref_first)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("first-layer gradient 100x that of the standard init at step 0", ratio[0] > 100)
    ctx.check(
        "loss blew up (NaN or 1e4x its start)",
        (not _finite(ls)) or max(ls) > 1e4 * ls[0],
    )


# -- lampwork bead annealing regressor: an inverted warm-up kills the ReLUs ----------------------


@scenario(
    family="lampwork_bead_annealing_regressor",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("body.2", "body.3"),
    diverges=None,
    heldout=True,
    note="The warm-up factor is written warmup/(step+1) instead of (step+1)/warmup: the first "
    "steps run at up to 200x the lr, the second hidden layer's ReLUs are pushed negative on "
    "every input and never recover; the loss settles higher.",
)
def h141_lampwork_inverted_warmup(ctx: Context) -> None:
    gen = seeded(14109)
    model = Regressor(8, 64, depth=2, act=nn.ReLU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(1.0, 200 / (s + 1)))
    dead: list[float] = []
    probe = torch.randn(512, 8, generator=gen)

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.body[:4](probe)))

    _train(ctx, model, opt, _tabular(gen, 8, 64), 200, F.mse_loss, sched=sched, after=after)
    ctx.check("under 20% of layer-2 units dead at step 0", dead[0] < 0.2)
    ctx.check("over 60% of layer-2 units dead at the end", dead[-1] > 0.6)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- beekeeper hive-weight forecaster: the lr in the wrong units ---------------------------------


def _top_eig(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20) -> float:
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
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


@scenario(
    family="beekeeper_hive_weight_forecaster",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Full-batch SGD on hive weights; the lr is typed 2e-0 for 2e-2, far past the "
    "2/sharpness limit of the loss at init: the loss oscillates and blows up.",
)
def h141_beekeeper_lr_typo(ctx: Context) -> None:
    gen = seeded(14110)
    model = Regressor(6, 32, depth=2)
    lr = 2e-0
    xs, ys = next(_tabular(gen, 6, 256, scale=3.0))
    lam = _top_eig(model, xs, ys)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def fixed():
        while True:
            yield xs, ys

    _train(ctx, model, opt, fixed(), 150, F.mse_loss)
    ls = ctx.losses
    ctx.check("lr x sharpness at init > 2", lr * lam > 2)
    ctx.check("loss blew up (NaN or 1e3x its start)", (not _finite(ls)) or max(ls) > 1e3 * ls[0])


# -- tofu press yield regressor: one shard logged in grams ---------------------------------------


@scenario(
    family="tofu_press_yield_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="One shard of press yields was logged in grams instead of kilograms: the batch at step "
    "90 has targets 1000x too large. Gradient clipping at 1.0 keeps the update bounded; the "
    "loss spikes for that batch and training goes on.",
)
def h141_tofu_press_gram_shard(ctx: Context) -> None:
    gen = seeded(14111)
    model = Regressor(7, 48, depth=2)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    onset = 90

    def alter(step, x, y):
        return (x, y * 1000.0) if step == onset else (x, y)

    _train(ctx, model, opt, _tabular(gen, 7, 64), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at the bad batch 1e4x the median before", ls[onset] > 1e4 * _median(ls[:onset]))
    ctx.check("gradient 100x the median at the bad batch", g[onset] > 100 * _median(g[:onset]))
    ctx.check(
        "training goes on (last-20 loss < 3x the pre-onset median)",
        _finite(ls) and _median(ls[-20:]) < 3 * _median(ls[onset - 20 : onset]),
    )


# -- lightning strike counter: a loss-weight table with a typo at one step -----------------------


@scenario(
    family="lightning_strike_counter",
    optimizer="RMSprop",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Strike counts per cell with a Poisson NLL on the log-rate; the loss weight comes from "
    "a curriculum table with a typo at step 120 (100 instead of 1.0): one gradient burst 100x, "
    "not from the data.",
)
def h141_lightning_weight_table_typo(ctx: Context) -> None:
    gen = seeded(14112)
    model = Regressor(9, 48, depth=2)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    onset = 120

    def counts():
        for x, y in _tabular(gen, 9, 64, noise=0.0):
            yield x, torch.poisson(torch.exp(1.0 + y), generator=gen)

    def loss_fn(log_rate, k):
        return F.poisson_nll_loss(log_rate, k, log_input=True)

    _train(
        ctx,
        model,
        opt,
        counts(),
        240,
        loss_fn,
        scale=lambda s: 100.0 if s == onset else 1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("gradient 50x the median at the onset", g[onset] > 50 * _median(g[:onset]))
    ctx.check(
        "training goes on (last-40 median loss within 0.5 of the pre-onset one)",
        abs(_median(ls[-40:]) - _median(ls[onset - 40 : onset])) < 0.5,
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- Hugging Face PatchTSMixer: a head lr multiplier parsed with int() -----------------------------


def hf_patchtsmixer(context: int = 32, horizon: int = 8, channels: int = 2):
    from transformers import PatchTSMixerConfig, PatchTSMixerForPrediction

    config = PatchTSMixerConfig(
        context_length=context,
        prediction_length=horizon,
        num_input_channels=channels,
        patch_length=8,
        patch_stride=8,
        d_model=16,
        num_layers=2,
        dropout=0.0,
        head_dropout=0.0,
    )
    return PatchTSMixerForPrediction(config)


def _series(gen: torch.Generator, batch: int = 32, context: int = 32, horizon: int = 8, noise=0.05):
    t = torch.arange(context + horizon, dtype=torch.float32)
    while True:
        period = 6 + 10 * torch.rand(batch, 1, 1, generator=gen)
        phase = 6.3 * torch.rand(batch, 1, 2, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, 2, generator=gen)
        s = amp * torch.sin(2 * math.pi * t[None, :, None] / period + phase)
        s = s + noise * torch.randn(s.shape, generator=gen)
        yield s[:, :context], s[:, context:]


def _tsmixer_loop(ctx, model, opt, batches, steps, sched=None):
    ctx.attach(model, opt)
    for _ in range(steps):
        past, future = next(batches)
        loss = model(past_values=past, future_values=future).loss
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    family="hf_patchtsmixer_forecaster",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("head", "head.base_forecast_block"),
    diverges=None,
    heldout=True,
    note="The head's lr multiplier is read from a config string '0.5' with int(): the head's "
    "param group gets lr 0 and the forecast head never moves while the mixer trains.",
)
def h141_patchtsmixer_head_lr_int(ctx: Context) -> None:
    gen = seeded(14113)
    model = hf_patchtsmixer()
    head = [p for n, p in model.named_parameters() if n.startswith("head.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    base_lr = 2e-3
    opt = torch.optim.Adamax(
        [{"params": rest}, {"params": head, "lr": base_lr * int("0.5".split(".")[0])}],
        lr=base_lr,
    )
    w0 = model.head.base_forecast_block.weight.detach().clone()
    r0 = [p.detach().clone() for p in rest]
    _tsmixer_loop(ctx, model, opt, _series(gen), 150)
    w1 = model.head.base_forecast_block.weight.detach()
    head_change = float((w1 - w0).norm() / w0.norm())
    rest_change = float(
        torch.sqrt(sum(((p.detach() - q) ** 2).sum() for p, q in zip(rest, r0, strict=True)))
        / torch.sqrt(sum((q**2).sum() for q in r0))
    )
    ctx.check("head weights moved < 1e-6 relative", head_change < 1e-6)
    ctx.check("mixer weights moved > 1% relative", rest_change > 0.01)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="hf_patchtsmixer_forecaster",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Control: noisier series, Adagrad with StepLR.",
)
def h141_patchtsmixer_adagrad_control(ctx: Context) -> None:
    gen = seeded(14114)
    model = hf_patchtsmixer()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.5)
    _tsmixer_loop(ctx, model, opt, _series(gen, noise=0.2), 150, sched=sched)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses))


# -- Hugging Face XLM-RoBERTa masked LM (tied output projection) ----------------------------------


MASK_ID = 4


def hf_xlm_roberta_mlm(vocab: int = 128, dim: int = 32):
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    config = XLMRobertaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
        tie_word_embeddings=True,
    )
    return XLMRobertaForMaskedLM(config)


def _masked(gen: torch.Generator, batch: int = 16, length: int = 32):
    for x, _ in text_batches(gen, batch=batch, length=length):
        x = torch.where(x == 1, 2, x)  # keep the pad id out of the text
        m = torch.rand(x.shape, generator=gen) < 0.15
        yield torch.where(m, MASK_ID, x), torch.where(m, x, -100)


def _tied(model) -> bool:
    return model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight


@scenario(
    family="hf_xlm_roberta_mlm",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Decoupled weight decay done by hand after Adam's step with the sign flipped "
    "(p *= 1 + lr*wd instead of 1 - lr*wd): every weight, the tied embedding included, "
    "grows a little each step and the masked-LM loss climbs slowly.",
)
def h141_xlm_roberta_decay_sign(ctx: Context) -> None:
    gen = seeded(14115)
    model = hf_xlm_roberta_mlm()
    lr, wd = 1e-3, 12.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = _masked(gen)
    ctx.attach(model, opt)
    norm0 = float(model.roberta.embeddings.word_embeddings.weight.norm())
    for _ in range(250):
        x, labels = next(batches)
        loss = model(input_ids=x, labels=labels).loss
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    lowest = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    norm1 = float(model.roberta.embeddings.word_embeddings.weight.norm())
    ctx.check("output projection tied to the word embeddings", _tied(model))
    ctx.check("tied embedding norm grew 3x", norm1 > 3 * norm0)
    ctx.check(
        "loss climbed 1.15x above its low after it",
        _mean(ls[-10:]) > 1.15 * _mean(ls[max(0, lowest - 5) : lowest + 5]),
    )


@scenario(
    family="hf_xlm_roberta_mlm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: the tied masked LM with AdamW (weight decay 0.01), linear warm-up over 20 "
    "steps and gradient accumulation over 2 micro-batches.",
)
def h141_xlm_roberta_warmup_control(ctx: Context) -> None:
    gen = seeded(14116)
    model = hf_xlm_roberta_mlm()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    batches = _masked(gen, batch=8)
    ctx.attach(model, opt)
    for _ in range(150):
        total = 0.0
        for _ in range(2):
            x, labels = next(batches)
            loss = model(input_ids=x, labels=labels).loss / 2
            loss.backward()
            total = total + loss.detach()
        opt.step()
        sched.step()
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("output projection tied to the word embeddings", _tied(model))
    ctx.check("loss fell and stayed finite", _fell(ctx.losses))
