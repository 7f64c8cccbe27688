"""Held-out set 358 (``h358_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kyudo arrow-grouping cosine classifier whose logit scale
is exponentiated twice (softmax saturates), a sgraffito plaster-motif attention classifier whose
q/k param group's lr is typed 3e-1 for 3e-3 (attention logits grow), a glassblowing marver-cooling
tanh regressor whose warm-up never stops ramping (past 2/sharpness), a mangrove propagule float
BCE net fed one station's shard with salinity in ppm at step 120 (one corrupted batch), a
sandcastle tower-height Gaussian NLL net whose scale head has no softplus (log of a negative,
NaN), a beehive honey-flow regressor whose weight prior converts kg to grams inside fp16
autocast (overflow once hives pass 65.5 kg), a bowyer tiller draw-weight regressor whose
layer-wise lr decay is typed 0.01 for 0.9 (the first layers frozen), a seiche amplitude deep tanh
MLP with orthogonal init at ReLU's gain (gradients grow through depth), a farrier nail-pitch
masked Huber regressor whose resume step divides by mask.mean() for mask.sum() (one gradient
burst), a kite-buggy tack ReLU classifier whose lr is typed 0.9 for 0.09 (ReLUs die), and three
controls (a change-ringing method-call Gumbel-softmax net with its temperature annealed from 1 to
0.5 and Adam; a didgeridoo circular-breath Conv1d classifier under SGD Nesterov, OneCycleLR, label
smoothing and clipping; a sugarbush sap-yield SiLU Huber regressor under fp16 autocast with a
GradScaler, RMSprop, accumulation and ReduceLROnPlateau).

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
    ramp,
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


NAN_STEP_SANDCASTLE = 97  # measured: the first NaN loss
INF_STEP_BEEHIVE = 77  # measured: the first overflowed loss


# -- kyudo: the cosine head's logit scale is exponentiated twice -----------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale=16.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        # stored as log(scale); the bug: exp() is applied in __init__ and again in forward
        self.log_scale = nn.Parameter(torch.tensor(math.exp(math.log(scale))), requires_grad=False)

    def forward(self, h):
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos


class CosineNet(nn.Module):
    def __init__(self, d_in, classes):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.ReLU()
        self.head = CosineHead(64, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    "kyudo_arrow_grouping_clip_scale_classifier",
    "NAdam",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="a kyudo arrow-grouping cosine classifier: the head's scale 16 is stored already "
    "exponentiated and forward exponentiates it again (exp(16) = 8.9e6 times the cosine), over "
    "half the rows' target probability exactly 1.0 late in the run, NAdam",
)
def h358_kyudo_grouping_double_exp_scale_nadam(ctx: Context) -> None:
    gen = seeded(35801)
    model = CosineNet(16, 6)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    late: list[float] = []
    scale: list[float] = []

    def watch(step, out, x, y):
        scale.append(float(model.head.log_scale.exp()))
        if step >= 150:
            late.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 358011),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("the head multiplies the cosine by over 1e6", min(scale) > 1e6)
    ctx.check("over half the rows' target probability is exactly 1.0 late", _mean(late) > 0.5)


# -- sgraffito: the q/k param group's lr is typed 3e-1 for 3e-3 ------------------------------------


class MotifAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.o = nn.Linear(dim, dim)
        self.peak = 0.0

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        logits = q @ k.transpose(1, 2) / math.sqrt(x.shape[-1])
        self.peak = float(logits.detach().abs().max())
        return self.o(torch.softmax(logits, dim=-1) @ v)


class MotifNet(nn.Module):
    def __init__(self, vocab=24, dim=32, length=12, classes=6):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = MotifAttention(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, idx):
        x = self.norm(self.tok(idx) + self.pos(torch.arange(idx.shape[1])))
        x = x + self.attn(x)
        return self.head(x.mean(1))


def _motifs(gen, batch=64, length=12, vocab=24, classes=6):
    """A marker token (0) sits somewhere; the label is the token after it (mod classes)."""
    while True:
        x = torch.randint(1, vocab, (batch, length), generator=gen)
        at = torch.randint(0, length - 1, (batch,), generator=gen)
        x[torch.arange(batch), at] = 0
        y = x[torch.arange(batch), at + 1] % classes
        yield x, y


@scenario(
    "sgraffito_plaster_motif_attention_classifier",
    "AdamW",
    "attention_logit_growth",
    where=("attn",),
    heldout=True,
    note="a sgraffito plaster-motif classifier with hand-written single-head attention: the q/k "
    "param group's lr is typed 3e-1 for 3e-3 (weight decay 0 there), the peak q.k/sqrt(d) logit "
    "grows over 10x from its start and past 50, AdamW",
)
def h358_sgraffito_motif_qk_lr_typo_adamw(ctx: Context) -> None:
    gen = seeded(35802)
    model = MotifNet()
    qk = [*model.attn.q.parameters(), *model.attn.k.parameters()]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 3e-3, "weight_decay": 0.01},
            {"params": qk, "lr": 3e-1, "weight_decay": 0.0},
        ]
    )
    peaks: list[float] = []

    def watch(step, out, x, y):
        peaks.append(model.attn.peak)

    _loop(
        ctx, model, opt, _motifs(gen), 200, F.cross_entropy, classifier=True, watch=watch, clip=1.0
    )
    ctx.check("the peak attention logit grows over 10x", _mean(peaks[-20:]) > 10 * _mean(peaks[:5]))
    ctx.check("the peak attention logit passes 50", max(peaks[-20:]) > 50)


# -- glassblowing: the warm-up never stops ramping -------------------------------------------------


@scenario(
    "glassblowing_marver_cooling_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=40,
    note="a glassblowing marver-cooling tanh regressor: the warm-up's min(1, step / 40) lost its "
    "min, so the lr keeps ramping past the 0.2 peak, lr x top Hessian eigenvalue by power "
    "iteration under 2 during warm-up and over 2 later, the loss blows up, plain SGD",
)
def h358_glassblowing_marver_unbounded_warmup_sgd(ctx: Context) -> None:
    gen = seeded(35803)
    model = Trunk(12, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    data = _readings(gen, 128, 12, 358031)
    px, py = next(data)
    sharp: dict[int, float] = {}

    def before(step):
        opt.param_groups[0]["lr"] = 0.2 * (step + 1) / 40  # min(1.0, ...) dropped
        if step % 10 == 0:
            sharp[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, px, py)

    n = _loop(ctx, model, opt, data, 300, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("lr x sharpness is under 2 during warm-up", sharp.get(30, 9.0) < 2.0)
    ctx.check("lr x sharpness passes 2 later", any(v > 2.0 for s, v in sharp.items() if s > 40))
    bad = [v for v in ls if not math.isfinite(v)]
    ctx.check("the loss blows up", bool(bad) or max(ls[-10:]) > 100 * min(ls[: max(n - 10, 1)]))


# -- mangrove: one station's shard logs salinity in ppm --------------------------------------------


@scenario(
    "mangrove_propagule_float_bce_net",
    "Adamax",
    "data_outlier",
    heldout=True,
    onset=120,
    note="a mangrove propagule float/sink ReLU BCE net: at step 120 one field station's shard "
    "logs salinity (three columns) in ppm instead of ppt and skips standardisation, loss and "
    "gradient over 20x, clipped, recovers, Adamax",
)
def h358_mangrove_propagule_ppm_shard_adamax(ctx: Context) -> None:
    gen = seeded(35804)
    model = Trunk(12, 64)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(358041)
    w = torch.randn(12, generator=g)

    def batches():
        while True:
            x = torch.randn(64, 12, generator=gen)
            yield x, ((x @ w) / math.sqrt(12) + 0.3 * torch.randn(64, generator=gen) > 0).float()

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :3] = (x[:, :3] * 4.0 + 35.0) * 1000.0
        return x, y

    _loop(
        ctx, model, opt, batches(), 220, F.binary_cross_entropy_with_logits, alter=alter, clip=1.0
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 is over 20x the median before", ls[120] > 20 * _median(ls[60:120])
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median before", gs[120] > 20 * _median(gs[60:120])
    )
    ctx.check("the run recovers", _finite(ls) and _mean(ls[-20:]) < 2 * _mean(ls[100:120]))


# -- sandcastle: the scale head has no softplus ----------------------------------------------------


class GaussLogLik(nn.Module):
    """Hand-written Gaussian NLL of (mu, sigma) stacked in the last dim."""

    def forward(self, out, y):
        mu, sigma = out[:, 0], out[:, 1]
        return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


class TowerNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.SiLU()
        self.mu_head = nn.Linear(64, 1)
        self.sigma_head = nn.Linear(64, 1)
        nn.init.constant_(self.sigma_head.bias, 1.0)
        self.loglik = GaussLogLik()

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mu_head(h), self.sigma_head(h)], 1)  # softplus left out


@scenario(
    "sandcastle_tower_height_gaussian_nll_net",
    "Adam",
    "nonfinite",
    where=("loglik",),
    diverges=NAN_STEP_SANDCASTLE,
    heldout=True,
    note="a sandcastle tower-height SiLU Gaussian NLL net: the scale head's softplus is left "
    "out, a predicted sigma goes negative, log of a negative in the model's loglik module, NaN, "
    "Adam",
)
def h358_sandcastle_sigma_no_softplus_adam(ctx: Context) -> None:
    gen = seeded(35805)
    model = TowerNet(10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    low: list[float] = []

    def watch(step, out, x, y):
        low.append(float(out[:, 1].detach().min()))

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 358051, noise=0.05), 300, model.loglik, watch=watch
    )
    k = _first_bad(ctx.losses)
    ctx.check("the loss is NaN at the recorded step", k == NAN_STEP_SANDCASTLE)
    ctx.check("a predicted sigma is not positive at that step", k is not None and low[k] <= 0.0)
    ctx.check("sigma was positive at the start", low[0] > 0.0)


# -- beehive: the weight prior converts kg to grams inside fp16 autocast ---------------------------


class HiveNet(nn.Module):
    """Column 0 is the hive weight in kg; the prior's coefficients were fitted in grams."""

    def __init__(self, d_in):
        super().__init__()
        self.prior = nn.Linear(1, 16)
        nn.init.normal_(self.prior.weight, std=2e-5)  # coefficients fitted per gram, frozen
        self.prior.requires_grad_(False)
        self.fc1 = nn.Linear(d_in - 1, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(80, 64)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        grams = x[:, :1] * 1000.0  # kg -> g, computed inside the autocast region
        h = torch.cat([self.act1(self.fc1(x[:, 1:])), self.prior(grams)], 1)
        return self.head(self.act2(self.fc2(h))).squeeze(-1)


@scenario(
    "beehive_honey_flow_fp16_regressor",
    "AdamW",
    "amp_overflow",
    where=("prior",),
    diverges=INF_STEP_BEEHIVE,
    heldout=True,
    note="a beehive honey-flow GELU regressor under fp16 autocast with a GradScaler: the weight "
    "prior converts the hive weight from kg to grams inside the autocast region, and once the "
    "honey flow takes a hive past 65.5 kg the prior's fp16 input overflows to inf while the same "
    "batch in fp32 is finite, AdamW",
)
def h358_beehive_grams_fp16_overflow_adamw(ctx: Context) -> None:
    gen = seeded(35806)
    model = HiveNet(9)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    g = torch.Generator().manual_seed(358061)
    w = torch.randn(8, generator=g)
    season = {"step": 0}
    heaviest: list[float] = []

    def batches():
        while True:
            kg = 40.0 + 0.15 * season["step"] + 5.0 * torch.randn(64, 1, generator=gen)
            rest = torch.randn(64, 8, generator=gen)
            y = torch.tanh(rest @ w / math.sqrt(8)) + 0.02 * (kg[:, 0] - 50.0)
            yield torch.cat([kg, rest], 1), y + 0.05 * torch.randn(64, generator=gen)

    last = {}

    def before(step):
        season["step"] = step

    def watch(step, out, x, y):
        heaviest.append(float(x[:, 0].max()))
        last["x"], last["y"] = x, y

    _loop(
        ctx,
        model,
        opt,
        batches(),
        300,
        F.mse_loss,
        before=before,
        watch=watch,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    k = _first_bad(ctx.losses)
    ctx.check("the loss overflows at the recorded step", k == INF_STEP_BEEHIVE)
    ctx.check("a hive passes 65.5 kg at that step", k is not None and heaviest[k] > 65.504)
    with torch.no_grad():
        fp32 = F.mse_loss(model(last["x"]), last["y"])
    ctx.check("the same batch in fp32 is finite", math.isfinite(float(fp32)))
    ctx.check("the loss was finite before", k is not None and _finite(ctx.losses[:k]))


# -- bowyer: the layer-wise lr decay is typed 0.01 for 0.9 -----------------------------------------


class TillerNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.SiLU()
        self.fc3 = nn.Linear(64, 64)
        self.act3 = nn.SiLU()
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        return self.head(self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x))))))).squeeze(
            -1
        )


@scenario(
    "bowyer_tiller_draw_weight_radam_two_group_regressor",
    "RAdam",
    "update_ratio_out_of_range",
    where=("fc1", "fc2"),
    heldout=True,
    note="a bowyer tiller draw-weight SiLU regressor with layer-wise lr decay: the decay factor "
    "is typed 0.01 for 0.9, so fc1 gets 1e-6 and fc2 1e-4 of the head's lr, fc1 moves under "
    "1e-5 and fc2 under 1e-3 of their norm while the head moves over 5%, RAdam",
)
def h358_bowyer_tiller_llrd_typo_radam(ctx: Context) -> None:
    gen = seeded(35807)
    model = TillerNet(10)
    decay, base = 0.01, 1e-3  # decay meant 0.9
    layers = [model.head, model.fc3, model.fc2, model.fc1]
    opt = torch.optim.RAdam(
        [{"params": m.parameters(), "lr": base * decay**i} for i, m in enumerate(layers)]
    )
    w0 = {n: getattr(model, n).weight.detach().clone() for n in ("fc1", "fc2", "head")}
    _loop(ctx, model, opt, _readings(gen, 64, 10, 358071), 200, F.mse_loss)
    moved = {n: _rel_change(w0[n], getattr(model, n).weight) for n in w0}
    ctx.check("fc1 moves under 1e-5 of its norm", moved["fc1"] < 1e-5)
    ctx.check("fc2 moves under 1e-3 of its norm", moved["fc2"] < 1e-3)
    ctx.check("the head moves over 5% of its norm", moved["head"] > 0.05)


# -- seiche: orthogonal init at ReLU's gain on tanh layers -----------------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width=64, depth=20):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            # a ReLU recipe's gain passed to a helper that multiplies by tanh's gain again
            gain = nn.init.calculate_gain("relu") * nn.init.calculate_gain("tanh")
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = torch.tanh(m(x))
        return self.head(x).squeeze(-1)


@scenario(
    "seiche_amplitude_deep_orthogonal_tanh_mlp",
    "Adagrad",
    "exploding_gradients",
    where=("layers.0",),
    heldout=True,
    note="a seiche amplitude 20-layer tanh MLP: orthogonal init copied from a ReLU recipe, gain "
    "calculate_gain('relu') passed to a helper that multiplies by calculate_gain('tanh') again "
    "(gain 2.36, chaotic regime), layers.0's gradient "
    "over 10x layers.19's at the start and through the run, clipped, Adagrad",
)
def h358_seiche_relu_gain_tanh_adagrad(ctx: Context) -> None:
    gen = seeded(35808)
    model = DeepTanh(8)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-3)
    ratio: list[float] = []

    def inspect(step):
        first = model.layers[0].weight.grad.norm()
        last = model.layers[-1].weight.grad.norm()
        ratio.append(float(first / last.clamp_min(1e-12)))

    _loop(
        ctx, model, opt, _readings(gen, 64, 8, 358081), 150, F.mse_loss, inspect=inspect, clip=1.0
    )
    ctx.check("layers.0's gradient is over 10x layers.19's at the start", ratio[0] > 10)
    ctx.check("and over 10x through the run", _median(ratio) > 10)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- farrier: the resume step divides by mask.mean() for mask.sum() --------------------------------


@scenario(
    "farrier_nail_pitch_masked_huber_regressor",
    "SGD Nesterov",
    "gradient_spike",
    heldout=True,
    onset=150,
    note="a farrier nail-pitch GELU Huber regressor with masked (missing) targets: the resume "
    "path at step 150 normalises the masked loss sum by mask.mean() instead of mask.sum() (128x), "
    "gradient over 30x on a clean batch, clipped, recovers, SGD Nesterov",
)
def h358_farrier_mask_mean_resume_nesterov(ctx: Context) -> None:
    gen = seeded(35809)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    masks: list[torch.Tensor] = []
    inputs: list[float] = []

    def batches():
        for x, y in _readings(gen, 128, 10, 358091):
            masks.append((torch.rand(128, generator=gen) > 0.2).float())
            inputs.append(float(x.norm()))
            yield x, y

    def per_sample(out, y):
        return F.huber_loss(out, y, reduction="none", delta=1.0)

    def loss_fn(out, y):
        m = masks[-1]
        return (per_sample(out, y) * m).sum() / m.sum()

    def backprop(step, loss):
        if step == 150:
            m = masks[-1]
            return loss * m.sum() / m.mean()  # the resume path's denominator
        return loss

    _loop(ctx, model, opt, batches(), 250, loss_fn, backprop=backprop, clip=2.0)
    gs, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at step 150 is over 30x the median before",
        gs[150] > 30 * _median(gs[100:150]),
    )
    ctx.check("the batch at step 150 is clean", inputs[150] < 1.5 * _median(inputs[100:150]))
    ctx.check("the run recovers", _finite(ls) and _mean(ls[-20:]) < 2 * _mean(ls[130:150]))


# -- kite buggy: the lr is typed 0.9 for 0.09 ------------------------------------------------------


@scenario(
    "kite_buggy_tack_relu_classifier",
    "SGD momentum",
    "loss_of_plasticity",
    where=("act2",),
    heldout=True,
    note="a kite-buggy tack ReLU classifier: SGD momentum lr typed 0.9 for 0.09, over half of "
    "act2's units dead for the last 50 steps, the loss stays over 0.7x chance, SGD momentum",
)
def h358_kite_buggy_lr_typo_dead_relu_sgdm(ctx: Context) -> None:
    gen = seeded(35810)
    model = Trunk(16, 64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.9, momentum=0.9)
    dead: list[float] = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(_dead(model.features(x)))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 358101, spread=1.5),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over half of act2's units are dead for the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check(
        "the loss stays over 0.7x chance",
        _finite(ctx.losses) and _mean(ctx.losses[-20:]) > 0.7 * math.log(5),
    )


# -- controls --------------------------------------------------------------------------------------


class MethodCallNet(nn.Module):
    """Encodes the readings, picks one of 8 calls by Gumbel-softmax, decodes from its embedding."""

    def __init__(self, d_in, calls=8, dim=32):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d_in, 64), nn.ReLU(), nn.Linear(64, calls))
        self.calls = nn.Linear(calls, dim, bias=False)
        self.decoder = nn.Sequential(nn.Linear(dim + d_in, 64), nn.ReLU(), nn.Linear(64, 1))
        self.tau = 1.0

    def forward(self, x):
        choice = F.gumbel_softmax(self.encoder(x), tau=self.tau, hard=False)
        return self.decoder(torch.cat([self.calls(choice), x], 1)).squeeze(-1)


@scenario(
    "change_ringing_method_call_gumbel_net",
    "Adam",
    "healthy",
    heldout=True,
    note="a change-ringing method-call net: a discrete call chosen by Gumbel-softmax with its "
    "temperature annealed geometrically from 1 to 0.5, Adam with linear warm-up, clipping, "
    "control",
)
def h358_change_ringing_gumbel_anneal_adam(ctx: Context) -> None:
    gen = seeded(35811)
    model = MethodCallNet(10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    taus: list[float] = []

    def before(step):
        model.tau = ramp(step, 1.0, 0.5, 150)
        taus.append(model.tau)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 358111),
        200,
        F.mse_loss,
        before=before,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check(
        "the temperature went from 1 to 0.5",
        abs(taus[0] - 1.0) < 1e-6 and abs(taus[-1] - 0.5) < 1e-6,
    )


class BreathConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _drones(gen, batch=64, length=48, classes=4):
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq[:, None] * t + phase) + 0.4 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    "didgeridoo_circular_breath_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="a didgeridoo circular-breath ReLU Conv1d classifier: SGD Nesterov under OneCycleLR, "
    "label smoothing 0.1, clipping, noisy traces, control",
)
def h358_didgeridoo_onecycle_nesterov(ctx: Context) -> None:
    gen = seeded(35812)
    model = BreathConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _drones(gen),
        200,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses))


@scenario(
    "sugarbush_sap_yield_fp16_huber_regressor",
    "RMSprop",
    "healthy",
    heldout=True,
    note="a sugarbush sap-yield SiLU Huber regressor: fp16 autocast with a GradScaler, RMSprop, "
    "accumulation over 2, ReduceLROnPlateau on a held-out batch, clipping, noisy targets, control",
)
def h358_sugarbush_fp16_plateau_rmsprop(ctx: Context) -> None:
    gen = seeded(35813)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    data = _readings(gen, 64, 10, 358131, noise=0.2)
    vx, vy = next(data)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        data,
        150,
        nn.HuberLoss(),
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
