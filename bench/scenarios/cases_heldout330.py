"""Held-out set 330 (``h330_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a kite-buggy line-pull tanh regressor whose warm-up peak is typed
3.0 for 0.3 (past 2/sharpness), a pall-mall hoop-pass BCE net whose percentage labels are divided
by 50 instead of 100 (targets 0 and 2, the head's logits grow without bound), a sheep-dip
immersion ReLU classifier whose loader lost its StandardScaler (ReLUs die), a cork-harvest
bark-thickness Gaussian NLL net whose standard deviation is a bare sqrt of a linear output
(sqrt of a negative, NaN), a tar-burning pit-yield SiLU regressor whose backbone group's lr scale
is typed 1e-6 for 1e-1 (backbone frozen), a dye-vat colour-uptake ReLU regressor fed one shard
with the bath temperature in kelvin (one corrupted batch), a sprang-weaving twist-tension GELU
regressor whose loss weight for one step is read in milligrams (one gradient burst), a
punch-needle loop-height 12-layer tanh MLP initialised at gain 3.0 (gradients grow through depth),
a lithograph ink-density SiLU regressor whose parts-per-million loss weight is applied to one step
(Adam's second moment poisoned), a bowl-turning chatter classifier whose temperature is typed
5e-3 for 5e0 (softmax saturates), and three controls (a net-making mesh-knot variational
autoencoder with KL annealing, a fish-smoking draught-trace fp16 Conv1d classifier with a
GradScaler, OneCycleLR and label smoothing, a swan-upping cygnet-weight Huber regressor with
Adagrad, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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


def _top_eig(model: nn.Module, loss_fn, x, y, iters: int = 20) -> float:
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
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


def _traces(gen, batch, classes, seed, length=40, channels=3):
    """Short multichannel traces: each class has its own frequencies and a drift."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.1 + 0.7 * torch.rand(classes, channels, generator=g)
    drift = 0.04 * torch.randn(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase) + drift[y][:, :, None] * t / 10
        yield x + 0.4 * torch.randn(batch, channels, length, generator=gen), y


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


# -- kite buggy: warm-up peak typed 3.0 for 0.3, SGD past 2/sharpness ------------------------------


@scenario(
    "kite_buggy_line_pull_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="kite-buggy line-pull regressor (tanh MLP, MSE, plain SGD); the warm-up's peak lr is "
    "typed 3.0 for 0.3, so during the linear warm-up lr times the loss's top Hessian eigenvalue "
    "passes 2 and the loss oscillates, then blows up",
)
def h330_kite_buggy_line_pull(ctx: Context) -> None:
    gen = seeded(33001)
    model = Trunk(10, 48, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = _gauges(gen, 64, 10, 1)
    probe = next(batches)
    peak, warm = 3.0, 250  # meant 0.3
    seen: dict[str, float] = {}

    def before(step):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 4 == 0 and "cross" not in seen:
            lam = _top_eig(model, F.mse_loss, *probe)
            seen[f"eig{step}"] = lam
            if lr * lam > 2:
                seen.setdefault("cross", step)

    _loop(ctx, model, opt, batches, 250, F.mse_loss, before=before)
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    ctx.check("lr x top Hessian eigenvalue passes 2 during warm-up", "cross" in seen)
    ctx.check("the loss blows up over 100x its low", not _finite(ls) or max(ls[-20:]) > 100 * low)


# -- pall mall: percentage labels divided by 50, BCE targets 0 and 2 ------------------------------


@scenario(
    "pall_mall_hoop_pass_bce_net",
    "Adam",
    "output_logit_divergence",
    where="head",
    heldout=True,
    note="pall-mall hoop-pass predictor (GELU MLP, BCE with logits, Adam); the score sheet "
    "stores passes as 0/100 percent and the loader divides by 50 instead of 100, so half the "
    "targets are 2.0: the BCE has no minimum there and the head's logits grow without bound",
)
def h330_pall_mall_hoop_pass(ctx: Context) -> None:
    gen = seeded(33002)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    raw = _sorts(gen, 64, 12, 2, 2, spread=1.2)

    def batches():
        while True:
            x, y = next(raw)
            yield x, (100.0 * y.float()) / 50.0  # meant / 100.0

    logits: list[float] = []

    def watch(step, out, x, y):
        logits.append(float(out.detach().abs().mean()))

    _loop(ctx, model, opt, batches(), 200, F.binary_cross_entropy_with_logits, watch=watch)
    ctx.check("targets outside [0, 1]", float(next(batches())[1].max()) > 1.0)
    ctx.check("head's mean |logit| grows over 20x", _mean(logits[-10:]) > 20 * _mean(logits[:10]))
    ctx.check("and keeps growing", logits[-1] > 1.5 * logits[len(logits) // 2])


# -- sheep dip: the standard scaler is skipped, raw readings kill the ReLUs ------------------------


@scenario(
    "sheep_dip_immersion_relu_classifier",
    "SGD momentum",
    "loss_of_plasticity",
    where=("fc2", "act2"),
    heldout=True,
    note="sheep-dip immersion-grade classifier (ReLU MLP, cross-entropy, SGD momentum 0.9 at lr "
    "0.1); a refactor drops the StandardScaler from the loader, the readings arrive in raw units "
    "about 20x their standardised scale, the first large updates push fc2's pre-activations "
    "below zero for every input and those ReLUs never come back; the loss stalls at chance",
)
def h330_sheep_dip_immersion(ctx: Context) -> None:
    gen = seeded(33003)
    model = Trunk(16, 64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    raw = _sorts(gen, 128, 16, 6, 3)

    def batches():
        while True:
            x, y = next(raw)
            yield 20.0 * x, y  # the scaler's transform is no longer applied

    dead: list[float] = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.fc2(model.act1(model.fc1(x)))))

    _loop(ctx, model, opt, batches(), 150, F.cross_entropy, classifier=True, watch=watch)
    ctx.check("under a fifth of fc2's units dead at the start", dead[0] < 0.2)
    ctx.check("over 90% of fc2's units dead for the last 50 steps", min(dead[-50:]) > 0.9)
    ctx.check("loss stalls near chance", _mean(ctx.losses[-20:]) > 0.8 * math.log(6))


# -- cork harvest: std as a bare sqrt of a linear output, NaN -------------------------------------


class BarkNet(nn.Module):
    """Gaussian regressor: shared SiLU trunk, a mean head and a spread head."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)
        nn.init.normal_(self.var_head.weight, std=0.01)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        std = torch.sqrt(self.var_head(h))  # no softplus, no clamp
        return torch.cat([self.mean_head(h), std], -1)


def _gauss_nll(out, y):
    mu, std = out[:, 0], out[:, 1]
    return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()


@scenario(
    "cork_harvest_bark_thickness_gaussian_nll_net",
    "NAdam",
    "nonfinite",
    where="var_head",
    diverges=87,
    heldout=True,
    note="cork-harvest bark-thickness regressor with a predicted spread (SiLU trunk, Gaussian "
    "NLL, NAdam); the spread is written sqrt(var_head(h)) with no softplus or clamp, the NLL "
    "pushes the variance down as the fit improves until one row's variance crosses zero: sqrt of "
    "a negative, NaN loss",
)
def h330_cork_harvest_bark_thickness(ctx: Context) -> None:
    gen = seeded(33004)
    model = BarkNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=5e-4)
    lows: list[float] = []

    def watch(step, out, x, y):
        with torch.no_grad():
            lows.append(float(model.var_head(F.silu(model.fc2(F.silu(model.fc1(x))))).min()))

    stop = _loop(ctx, model, opt, _gauges(gen, 64, 8, 4, noise=0.02), 300, _gauss_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("loss finite for the first 20 steps", bad is not None and bad > 20)
    ctx.check("var_head's output below zero at the NaN step", lows[stop] < 0 if bad else False)
    ctx.check("the run stopped at the NaN", stop == bad)


# -- tar burning: backbone lr scale typed 1e-6 for 1e-1 -------------------------------------------


@scenario(
    "tar_burning_pit_yield_two_group_silu_regressor",
    "RMSprop",
    "update_ratio_out_of_range",
    where=("fc1", "fc2"),
    heldout=True,
    note="tar-burning pit-yield regressor (SiLU MLP, MSE, RMSprop with a backbone and a head "
    "param group); the config's backbone_lr_scale is typed 1e-6 for 1e-1, so fc1 and fc2 "
    "barely move while the head trains on frozen random features",
)
def h330_tar_burning_pit_yield(ctx: Context) -> None:
    gen = seeded(33005)
    model = Trunk(10, 64, act=nn.SiLU)
    base, backbone_lr_scale = 1e-3, 1e-6  # meant 1e-1
    opt = torch.optim.RMSprop(
        [
            {
                "params": [*model.fc1.parameters(), *model.fc2.parameters()],
                "lr": base * backbone_lr_scale,
            },
            {"params": model.head.parameters(), "lr": base},
        ]
    )
    start = _snapshot(model)
    _loop(ctx, model, opt, _gauges(gen, 64, 10, 5), 200, F.mse_loss)
    mv = _moves(model, start)
    ctx.check(
        "fc1 and fc2 weights move under 1e-4 of their norm",
        max(mv["fc1.weight"], mv["fc2.weight"]) < 1e-4,
    )
    ctx.check("the head's weights move over 5%", mv["head.weight"] > 0.05)
    ctx.check("loss finite", _finite(ctx.losses))


# -- dye vat: one shard's bath temperature in kelvin ----------------------------------------------


@scenario(
    "dye_vat_colour_uptake_relu_regressor",
    "SGD",
    "data_outlier",
    heldout=True,
    onset=110,
    note="dye-vat colour-uptake regressor (ReLU MLP, MSE, plain SGD, clipping at 1); one shard "
    "at step 110 was exported with the bath temperature in kelvin instead of standardised "
    "celsius, a column about 300 where it should be about 1: the loss jumps, the clipped run "
    "recovers on the next batches",
)
def h330_dye_vat_colour_uptake(ctx: Context) -> None:
    gen = seeded(33006)
    model = Trunk(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == 110:
            x = x.clone()
            x[:, 2] = x[:, 2] * 10.0 + 293.15
        return x, y

    _loop(ctx, model, opt, _gauges(gen, 64, 8, 6), 200, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    ctx.check("loss at step 110 over 20x the median before", ls[110] > 20 * _median(ls[90:110]))
    ctx.check(
        "gradient at step 110 over 20x the median before",
        ctx.grad_norms[110] > 20 * _median(ctx.grad_norms[90:110]),
    )
    ctx.check(
        "recovers: last 20 steps under 2x the pre-onset level",
        _mean(ls[-20:]) < 2 * _mean(ls[90:110]),
    )


# -- sprang weaving: one step's loss weight read in milligrams ------------------------------------


@scenario(
    "sprang_weaving_twist_tension_gelu_regressor",
    "SGD Nesterov",
    "gradient_spike",
    heldout=True,
    onset=140,
    note="sprang-weaving twist-tension regressor (GELU MLP, Huber, SGD with Nesterov momentum, "
    "clipping at 1); the per-frame loss-weight table is keyed by frame weight in grams, and the "
    "entry for step 140 was entered in milligrams, so that step's ordinary batch is weighted "
    "1000x: one gradient burst, clipped, the run recovers",
)
def h330_sprang_weaving_twist_tension(ctx: Context) -> None:
    gen = seeded(33007)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, nesterov=True)
    weights = {140: 1000.0}  # 1.0 g entered as 1000 mg

    def backprop(step, loss, accumulate):
        return weights.get(step, 1.0) * loss / accumulate

    _loop(ctx, model, opt, _gauges(gen, 64, 12, 7), 220, F.huber_loss, backprop=backprop, clip=1.0)
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check("gradient at step 140 over 50x the median before", g[140] > 50 * _median(g[100:140]))
    ctx.check(
        "loss at step 140 ordinary (under 3x the median before)", ls[140] < 3 * _median(ls[100:140])
    )
    ctx.check(
        "recovers: last 20 steps under 2x the pre-onset level",
        _mean(ls[-20:]) < 2 * _mean(ls[120:140]),
    )


# -- punch needle: 16-layer tanh MLP initialised at gain 3.0 --------------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width=32, depth=16, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    "punch_needle_loop_height_deep_tanh_mlp",
    "SGD momentum",
    "exploding_gradients",
    where="layers.0",
    heldout=True,
    note="punch-needle loop-height regressor (16-layer tanh MLP, MSE, SGD momentum, clipping at "
    "5); the init helper's gain is typed 3.0 for 5/3, every layer amplifies the backward signal "
    "and the gradient grows through depth towards the input: layers.0's gradient is many times "
    "the last hidden layer's",
)
def h330_punch_needle_loop_height(ctx: Context) -> None:
    gen = seeded(33008)
    model = DeepTanh(10, gain=3.0)  # meant 5 / 3
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ratios: list[float] = []

    def after(step):
        first = model.layers[0].weight.grad.norm()
        last = model.layers[-1].weight.grad.norm()
        ratios.append(float(first / (last + 1e-12)))

    _loop(ctx, model, opt, _gauges(gen, 64, 10, 8), 120, F.mse_loss, after=after, clip=5.0)
    ctx.check(
        "layers.0's gradient over 10x layers.15's (median over the run)", _median(ratios) > 10
    )
    ctx.check("already over 20x at step 0", ratios[0] > 20)
    ctx.check("loss finite", _finite(ctx.losses))


# -- lithograph: a parts-per-million loss weight applied to one step ------------------------------


@scenario(
    "lithograph_stone_ink_density_silu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    heldout=True,
    onset=100,
    note="lithograph ink-density regressor (SiLU MLP, MSE, Adam); the ink-density auxiliary "
    "target is configured in parts per million and a unit helper applies the 1e6 conversion to "
    "the loss weight of step 100 instead of the target: one gradient a million times too large "
    "fills Adam's second moment and the updates afterwards shrink far below their size before",
)
def h330_lithograph_ink_density(ctx: Context) -> None:
    gen = seeded(33009)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps: list[float] = []
    prev = {"w": _snapshot(model)}

    def backprop(step, loss, accumulate):
        return (1e6 if step == 100 else 1.0) * loss / accumulate

    def after(step):
        now = _snapshot(model)
        d = torch.cat([(now[n] - prev["w"][n]).abs().flatten() for n in now])
        steps.append(float(d.median()))
        prev["w"] = now

    _loop(ctx, model, opt, _gauges(gen, 64, 10, 9), 200, F.mse_loss, backprop=backprop, after=after)
    g = ctx.grad_norms
    ctx.check(
        "gradient at step 100 over 1000x the median before", g[100] > 1e3 * _median(g[60:100])
    )
    ctx.check(
        "median per-weight update 30-80 steps later under 1/20 of before",
        _median(steps[130:180]) < _median(steps[60:100]) / 20,
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- bowl turning: temperature typed 5e-3 for 5e0 -------------------------------------------------


class ChatterNet(nn.Module):
    """GELU MLP classifier with a temperature-scaled head: logits / temperature."""

    def __init__(self, d_in, classes, hidden=64, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))) / self.temperature


@scenario(
    "bowl_turning_chatter_class_gelu_classifier",
    "Adamax",
    "softmax_collapse",
    where="head",
    heldout=True,
    note="bowl-turning tool-chatter classifier (GELU MLP, cross-entropy, Adamax); the head's "
    "softening temperature is typed 5e-3 for 5e0, the logits are divided by 0.005 and the "
    "float32 softmax rounds the target probability to exactly 1.0 on many rows",
)
def h330_bowl_turning_chatter(ctx: Context) -> None:
    gen = seeded(33010)
    model = ChatterNet(14, 5, temperature=5e-3)  # meant 5e0
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    collapsed: list[float] = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 14, 5, 10),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over a quarter of rows' softmax exactly 1.0 (last 30 steps)", _mean(collapsed[-30:]) > 0.25
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


class MeshVAE(nn.Module):
    """Hand-written VAE: encoder -> (mu, logvar), reparameterised sample, decoder."""

    def __init__(self, d_in, latent=4, hidden=48):
        super().__init__()
        self.enc = nn.Linear(d_in, hidden)
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.dec1 = nn.Linear(latent, hidden)
        self.dec2 = nn.Linear(hidden, d_in)

    def forward(self, x):
        h = F.silu(self.enc(x))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.dec2(F.silu(self.dec1(z))), mu, logvar


def _meshes(gen, batch, d_out, seed):
    """Mesh-knot gauge profiles: a smooth map of three hidden knot settings plus noise."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(3, d_out, generator=g)
    b = torch.randn(3, d_out, generator=g)
    while True:
        z = torch.randn(batch, 3, generator=gen)
        yield (
            torch.tanh(z @ a)
            + 0.3 * torch.sin(z @ b)
            + 0.05 * torch.randn(batch, d_out, generator=gen)
        )


@scenario(
    "net_making_mesh_knot_vae",
    "Adam",
    "healthy",
    heldout=True,
    note="net-making mesh-knot profile VAE (hand-written encoder, reparameterisation, decoder; "
    "summed-MSE reconstruction plus KL, Adam at 2e-3) with the KL weight annealed linearly from "
    "0 to 1 over the first 100 steps, clipping at 5: an ordinary run",
)
def h330_net_making_mesh_knot(ctx: Context) -> None:
    gen = seeded(33011)
    model = MeshVAE(20)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = _meshes(gen, 64, 20, 11)
    recon: list[float] = []
    kls: list[float] = []
    for step in range(250):
        x = next(data)
        out, mu, logvar = model(x)
        rec = ((out - x) ** 2).sum(1).mean()
        kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)).mean()
        beta = min(1.0, step / 100)
        loss = rec + beta * kl
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        recon.append(float(rec.detach()))
        kls.append(float(kl.detach()))
    ctx.check("reconstruction fell to under half", _mean(recon[-20:]) < 0.5 * _mean(recon[:10]))
    ctx.check("total loss fell", _fell(ctx.losses))
    ctx.check("KL finite and positive", _finite(kls) and _mean(kls[-20:]) > 0)


class DraughtNet(nn.Module):
    """Conv1d stem, two GELU conv layers, mean pooling, linear head."""

    def __init__(self, channels, classes, width=24):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = F.gelu(self.conv2(F.gelu(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    "fish_smoking_draught_trace_conv1d_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="fish-smoking draught-trace classifier (GELU Conv1d, cross-entropy with label smoothing "
    "0.1, fp16 autocast with a GradScaler, AdamW under OneCycleLR, clipping at 1): an ordinary run",
)
def h330_fish_smoking_draught_trace(ctx: Context) -> None:
    gen = seeded(33012)
    model = DraughtNet(3, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 4, 12),
        steps,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("GradScaler never cut its scale (no fp16 overflow)", min(ctx.scales) >= 1024.0)


@scenario(
    "swan_upping_cygnet_weight_huber_regressor",
    "Adagrad",
    "healthy",
    heldout=True,
    note="swan-upping cygnet-weight regressor (SiLU MLP, Huber on noisy weighings, Adagrad, "
    "accumulation over 2, ReduceLROnPlateau on a validation loss, clipping at 1): an ordinary run",
)
def h330_swan_upping_cygnet_weight(ctx: Context) -> None:
    gen = seeded(33013)
    model = Trunk(9, 48, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _gauges(gen, 32, 9, 13, noise=0.2)
    val = next(_gauges(torch.Generator().manual_seed(1313), 256, 9, 13, noise=0.2))

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(F.huber_loss(model(val[0]), val[1]))

    _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("validation loss under 0.7x its start", plateau() < 0.7 * ctx.losses[0])
