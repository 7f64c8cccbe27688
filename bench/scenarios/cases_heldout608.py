"""Held-out set 608 (``h608_``): thirteen hand-written models from trades, crafts, sports,
instruments and natural phenomena; ten faults over ten causes and three healthy controls.

Written without reading steadygrad's detectors, rules or monitor internals, and checked only
with the stand-in context (``bench/standin.py``), which attaches nothing: each fault was adjusted
until its own checks held, each control until it trained normally.
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
    digit_batches,
    grad_norm,
    scenario,
    seeded,
)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _regression_batches(gen: torch.Generator, d_in: int, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a smooth nonlinear target of ``d_in`` standard-normal readings."""
    w1 = torch.randn(d_in, 16, generator=gen) / math.sqrt(d_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (
            torch.tanh(x @ w1) @ w2
            + 0.2 * torch.sin(x[:, :1])
            + noise * torch.randn(batch, 1, generator=gen)
        )
        yield x, y


class _Regressor(nn.Module):
    def __init__(self, d_in: int, hidden: int, act: type[nn.Module], out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


# -- 1. softmax_collapse ----------------------------------------------------------------------


class _StanceClassifier(nn.Module):
    def __init__(self, temp_s: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act = nn.GELU()
        self.head = nn.Linear(64, 10)
        self.temp_s = temp_s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc1(x))) / self.temp_s


@scenario(
    "sumo_shikiri_stance_temp_ms_gelu_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="config temp_ms=2.0 read as seconds and divided by 1000: logits divided by 0.002, "
    "the softmax saturates and rows' target probabilities round to exactly 1.0",
)
def h608_sumo_stance_temperature_unit_collapse(ctx: Context) -> None:
    gen = seeded(60801)
    model = _StanceClassifier(temp_s=2.0 / 1000.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    first_frac = None
    for step in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step == 0:
            first_frac = collapsed_fraction(logits.detach(), y)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    frac = collapsed_fraction(logits, y)
    ctx.check("over 40% of rows' target probability is exactly 1.0 at the end", frac > 0.4)
    gap = logits.max(-1).values - logits.topk(2, -1).values[:, 1]
    ctx.check("median top-2 logit gap over 17 (past float32 saturation)", float(gap.median()) > 17)
    ctx.check("collapse grew over the run", frac > (first_frac or 0.0))


# -- 2. adam_second_moment_poisoned -----------------------------------------------------------


@scenario(
    "hurdy_gurdy_wheel_rosin_buzz_gelu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="a manual loss scale of 65536 left in from an fp16 experiment for step 80: one gradient "
    "65536x too large fills Adam's second moment, later updates shrink and the loss stalls",
)
def h608_hurdy_gurdy_loss_scale_left_in(ctx: Context) -> None:
    gen = seeded(60802)
    model = _Regressor(8, 48, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _regression_batches(gen, 8)
    w = model.fc2.weight
    v_before = None
    deltas: list[float] = []
    for step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        scale = 65536.0 if step == 80 else 1.0
        (loss * scale).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = w.detach().clone()
        opt.step()
        deltas.append(float((w.detach() - before).norm() / w.grad.norm().clamp_min(1e-30)))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step == 79:
            v_before = float(opt.state[w]["exp_avg_sq"].max())
        if step == 100:
            v_after = float(opt.state[w]["exp_avg_sq"].max())
    gn = ctx.grad_norms
    ctx.check("gradient at step 80 over 1000x the median before", gn[80] > 1000 * _median(gn[:80]))
    ctx.check("fc2's second moment over 1e4x 20 steps after", v_after > 1e4 * v_before)
    ctx.check(
        "update per unit gradient after step 90 over 10x smaller than before",
        _median(deltas[90:]) * 10 < _median(deltas[40:80]),
    )
    ls = ctx.losses
    ctx.check("loss stalls after the poisoning", min(ls[150:]) > 0.7 * _median(ls[70:80]))


# -- 3. sharpness_above_limit -----------------------------------------------------------------


@scenario(
    "saltmarsh_creek_meander_lr_typo_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="learning rate typed 4.0 for 0.04: lr x sharpness of the loss is past 2 from step 0 and "
    "plain SGD oscillates out of the valley and blows up",
)
def h608_saltmarsh_meander_lr_typo(ctx: Context) -> None:
    gen = seeded(60803)
    model = _Regressor(6, 32, nn.Tanh)
    lr = 4.0
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _regression_batches(gen, 6)
    x0, _ = next(batches)
    with torch.no_grad():
        f = model.act2(model.fc2(model.act1(model.fc1(x0))))
        f = torch.cat([f, torch.ones(len(f), 1)], 1)
        head_sharpness = float(torch.linalg.eigvalsh(2 * f.T @ f / len(f)).max())
    ctx.check("lr x head-layer sharpness over 2 at step 0", lr * head_sharpness > 2)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(
        "loss blows up past 1e6x its start (or goes non-finite)",
        any((not math.isfinite(v)) or v > 1e6 * ls[0] for v in ls),
    )


# -- 4. exploding_gradients -------------------------------------------------------------------


class _DeepLeaky(nn.Sequential):
    def __init__(self, depth: int, width: int, gain: float) -> None:
        layers: list[nn.Module] = [nn.Linear(10, width)]
        for _ in range(depth - 2):
            layers += [nn.LeakyReLU(0.1), nn.Linear(width, width)]
        layers += [nn.LeakyReLU(0.1), nn.Linear(width, 1)]
        super().__init__(*layers)
        for m in self:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
                with torch.no_grad():
                    m.weight.mul_(gain)  # a stray gain left in after the kaiming init


@scenario(
    "kayak_paddle_blade_flutter_deep_leaky_mlp",
    "SGD momentum",
    "exploding_gradients",
    where=("0",),
    diverges="auto",
    heldout=True,
    note="a stray gain of 1.35 multiplied into every layer after kaiming init of a 14-deep "
    "leaky-ReLU MLP: the backward signal grows layer by layer towards the input and the run blows up",
)
def h608_kayak_flutter_init_gain(ctx: Context) -> None:
    gen = seeded(60804)
    model = _DeepLeaky(14, 32, 1.35)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression_batches(gen, 10)
    first_ratio = None
    for step in range(150):
        x, y = next(batches)
        outs = []
        h = x
        for m in model:
            h = m(h)
            if isinstance(m, nn.Linear):
                h.retain_grad()
                outs.append(h)
        loss = F.mse_loss(h, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if step == 0:
            first_ratio = float(outs[0].grad.norm() / outs[-2].grad.norm().clamp_min(1e-30))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ctx.check("backward signal at layer 0 over 10x the last hidden layer's", first_ratio > 10)
    ls = ctx.losses
    ctx.check(
        "loss blows up past 1e4x its start (or goes non-finite)",
        any((not math.isfinite(v)) or v > 1e4 * ls[0] for v in ls),
    )


# -- 5. nonfinite -----------------------------------------------------------------------------


class _LogFeature(nn.Module):
    """Appends log(vent pressure) to the readings (the clamp the spec asked for is missing)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.log(x[:, :1])], 1)


class _GeyserNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(6, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(48, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.logfeat(x))))))


@scenario(
    "geyser_eruption_interval_log_pool_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    where=("logfeat",),
    diverges=90,
    heldout=True,
    onset=90,
    note="log(vent pressure) computed in the model without its clamp; the batch at step 90 holds "
    "readings from a sensor that reads 0 while the pool is empty: log 0 = -inf, the loss is NaN",
)
def h608_geyser_log_without_clamp(ctx: Context) -> None:
    gen = seeded(60805)
    model = _GeyserNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    w = torch.randn(5, generator=gen)
    nan_at = None
    feat_bad = False
    for step in range(160):
        x = torch.rand(64, 5, generator=gen) * 1.5 + 0.5
        if step == 90:
            x[::4, 0] = 0.0  # the empty-pool sensor
        y = (torch.log(x[:, :1]).clamp_min(-3) + 0.3 * (x[:, 1:] @ w[1:])[:, None]) + 0.1 * (
            torch.randn(64, 1, generator=gen)
        )
        out = model(x)
        mu, var = out[:, :1], F.softplus(out[:, 1:]) + 1e-4
        loss = F.gaussian_nll_loss(mu, y, var)
        if step == 90:
            with torch.no_grad():
                feat = model.logfeat(x)
            feat_bad = bool(torch.isfinite(x).all()) and not bool(torch.isfinite(feat).all())
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            nan_at = step
            break
    ctx.check("loss is non-finite first at step 90", nan_at == 90)
    ctx.check("logfeat's output non-finite on finite input at step 90", feat_bad)
    ctx.check("loss fell before the bad batch", ctx.losses[85] < ctx.losses[0])


# -- 6. amp_overflow --------------------------------------------------------------------------


@scenario(
    "glassblower_gather_temp_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    where=("fc1",),
    diverges=70,
    heldout=True,
    onset=70,
    note="fp16 autocast + GradScaler; from step 70 the furnace logger sends gather temperature in "
    "millikelvin instead of kilokelvin: fc1's fp16 output overflows to inf (finite in float32)",
)
def h608_glassblower_millikelvin_fp16(ctx: Context) -> None:
    gen = seeded(60806)
    model = _Regressor(6, 64, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression_batches(gen, 6)
    overflow = False
    for step in range(130):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = (x[:, 0] * 0.1 + 1.3) * 1e6  # kK -> mK
        else:
            x = x.clone()
            x[:, 0] = x[:, 0] * 0.1 + 1.3
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        if step == 70:
            with torch.autocast("cpu", dtype=torch.float16):
                h16 = model.fc1(x)
            with torch.no_grad():
                h32 = model.fc1(x.float())
            overflow = (not bool(torch.isfinite(h16).all())) and bool(torch.isfinite(h32).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("fc1's fp16 output non-finite at step 70, finite in float32", overflow)
    ctx.check(
        "loss finite before 70, non-finite from 70",
        all(math.isfinite(v) for v in ls[:70]) and not math.isfinite(ls[70]),
    )
    ctx.check("GradScaler's scale fell after step 70", ctx.scales[-1] < ctx.scales[69])


# -- 7. data_outlier --------------------------------------------------------------------------


@scenario(
    "sheep_shearing_fleece_weight_shard_huber_regressor",
    "NAdam",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="one shard of the shed's scale logs at step 100 has fleece staple length in millimetres "
    "instead of metres: loss and gradient jump for that step, clipping holds, the run recovers",
)
def h608_shearing_millimetre_shard(ctx: Context) -> None:
    gen = seeded(60807)
    model = _Regressor(7, 48, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = _regression_batches(gen, 7)
    for step in range(200):
        x, y = next(batches)
        if step == 100:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gn = ctx.losses, ctx.grad_norms
    base = _median(ls[80:100])
    ctx.check("loss at step 100 over 20x the median before", ls[100] > 20 * base)
    ctx.check("gradient at step 100 over 10x the median before", gn[100] > 10 * _median(gn[80:100]))
    ctx.check(
        "the run recovers (last 20 steps under 2x the pre-shard median)",
        _median(ls[180:]) < 2 * base,
    )
    ctx.check("all finite", all(math.isfinite(v) for v in ls))


# -- 8. gradient_spike ------------------------------------------------------------------------


@scenario(
    "archery_arrow_release_accum_bce_classifier",
    "SGD Nesterov",
    "gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="3-micro-batch accumulation; the per-step loss weight table has 100 typed for 1.00 at "
    "step 140: the backpropagated gradient is 100x for one step while the logged loss is ordinary",
)
def h608_archery_release_loss_weight_typo(ctx: Context) -> None:
    gen = seeded(60808)
    model = _Regressor(10, 48, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    w = torch.randn(10, generator=gen)
    weights = [1.0] * 200
    weights[140] = 100.0
    for step in range(200):
        total = 0.0
        for _ in range(3):
            x = torch.randn(32, 10, generator=gen)
            y = ((x @ w + 0.5 * x[:, 0] * x[:, 1]) > 0).float()[:, None]
            loss = F.binary_cross_entropy_with_logits(model(x), y)
            (loss * weights[step] / 3).backward()
            total += float(loss) / 3
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 140 over 30x the median before", gn[140] > 30 * _median(gn[120:140])
    )
    ctx.check(
        "logged loss at step 140 ordinary (under 1.5x the median before)",
        ls[140] < 1.5 * _median(ls[120:140]),
    )
    ctx.check("loss fell over the run", _median(ls[-20:]) < 0.7 * ls[0])


# -- 9. loss_of_plasticity --------------------------------------------------------------------


class _PomaceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act1 = nn.ReLU()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act1(self.fc1(x)))


@scenario(
    "cider_press_pomace_grade_dead_relu_classifier",
    "SGD",
    "loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="raw 0-16 press readings fed unstandardised and lr typed 0.5 for 0.05: the first large "
    "steps push fc1's pre-activations negative, most ReLU units die and the loss stalls",
)
def h608_cider_press_dead_relu(ctx: Context) -> None:
    gen = seeded(60809)
    model = _PomaceNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for _step in range(150):
        x, y = next(batches)
        x = x * 16.0
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    xs, _ = next(batches)
    with torch.no_grad():
        frac = dead_fraction(model.fc1(xs * 16.0))
    ls = ctx.losses
    ctx.check("over 80% of fc1's units never fire at the end", frac > 0.8)
    ctx.check("loss stalls above 1.5 (chance is 2.3)", _median(ls[-20:]) > 1.5)
    ctx.check("loss finite", all(math.isfinite(v) for v in ls))


# -- 10. update_ratio_out_of_range ------------------------------------------------------------


@scenario(
    "cooperage_stave_bevel_group_typo_silu_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="param groups: fc1's group lr typed 1e-9 for 1e-2, so fc1 never moves while the rest "
    "trains on its random features",
)
def h608_cooperage_bevel_group_typo(ctx: Context) -> None:
    gen = seeded(60810)
    model = _Regressor(8, 48, nn.SiLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-2},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression_batches(gen, 8)
    w1 = model.fc1.weight.detach().clone()
    w2 = model.fc2.weight.detach().clone()
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    r1 = float((model.fc1.weight - w1).norm() / w1.norm())
    r2 = float((model.fc2.weight - w2).norm() / w2.norm())
    ctx.check("fc1's weights moved under 1e-6 of their norm", r1 < 1e-6)
    ctx.check("fc2's weights moved over 1e-2 of their norm", r2 > 1e-2)
    ctx.check("loss finite", all(math.isfinite(v) for v in ctx.losses))


# -- 11. healthy: a top-2 mixture of experts --------------------------------------------------


class _Top2MoE(nn.Module):
    def __init__(self, dim: int, experts: int, hidden: int) -> None:
        super().__init__()
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(experts)
        )
        self.aux = torch.tensor(0.0)
        self.load = torch.zeros(experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n_exp = len(self.experts)
        probs = torch.softmax(self.router(x), -1)
        top_p, top_i = probs.topk(2, dim=-1)
        top_p = top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            mask = top_i == e
            rows = mask.any(-1)
            if rows.any():
                gate = (top_p * mask).sum(-1)[rows, None]
                out[rows] = out[rows] + gate * expert(x[rows])
        frac = F.one_hot(top_i, n_exp).float().sum(1).mean(0) / 2
        self.aux = n_exp * (frac * probs.mean(0)).sum()  # Switch-style load balancing
        self.load = frac.detach()
        return out


class _TornadoNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(9, 32)
        self.ln = nn.LayerNorm(32)
        self.moe = _Top2MoE(32, 4, 64)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = h + self.moe(self.ln(h))
        return self.head(h)


@scenario(
    "tornado_debris_signature_top2_moe_regressor",
    "AdamW",
    "healthy",
    heldout=True,
    note="hand-written mixture of experts (4 experts, top-2 router, Switch-style load-balancing "
    "auxiliary loss 0.01), AdamW, linear warm-up then cosine, clipping at 1.0: trains normally",
)
def h608_tornado_debris_moe(ctx: Context) -> None:
    gen = seeded(60811)
    model = _TornadoNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))
        ),
    )
    ctx.attach(model, opt)
    batches = _regression_batches(gen, 9)
    loads = []
    for _step in range(steps):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (loss + 0.01 * model.moe.aux).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        loads.append(model.moe.load)
    ls = ctx.losses
    ctx.check("loss fell over 2x", _median(ls[-20:]) < 0.5 * _median(ls[:10]))
    ctx.check("all finite", all(math.isfinite(v) for v in ls))
    ctx.check(
        "every expert takes over 5% of the routing",
        float(torch.stack(loads[-20:]).mean(0).min()) > 0.05,
    )


# -- 12. healthy but alarming: distillation with an annealed temperature ---------------------


@scenario(
    "didgeridoo_drone_timbre_annealed_distill_student",
    "RMSprop",
    "healthy",
    heldout=True,
    note="distillation from a fixed random teacher with the temperature annealed from 8 down to 1; "
    "the logged KL loss rises as the temperature falls (softer targets have less to match) while "
    "the student's agreement with the teacher at T=1 keeps improving",
)
def h608_didgeridoo_annealed_distillation(ctx: Context) -> None:
    gen = seeded(60812)
    teacher = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 10))
    with torch.no_grad():
        teacher[2].weight.mul_(8.0)
    for p in teacher.parameters():
        p.requires_grad_(False)
    model = nn.Sequential(nn.Linear(64, 96), nn.GELU(), nn.Linear(96, 10))
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    xe, _ = next(batches)
    with torch.no_grad():
        te = teacher(xe)

    def eval_kl() -> float:
        with torch.no_grad():
            return float(
                F.kl_div(
                    F.log_softmax(model(xe), -1),
                    F.log_softmax(te, -1),
                    log_target=True,
                    reduction="batchmean",
                )
            )

    kl0 = eval_kl()
    steps = 240
    for step in range(steps):
        temp = 8.0 * (1.0 / 8.0) ** (step / (steps - 1))
        x, _ = next(batches)
        with torch.no_grad():
            t = teacher(x)
        ctx.targets(t.argmax(-1))
        loss = F.kl_div(
            F.log_softmax(model(x) / temp, -1),
            F.log_softmax(t / temp, -1),
            log_target=True,
            reduction="batchmean",
        )
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    kl1 = eval_kl()
    ctx.check("student's T=1 KL to the teacher fell over 2x", kl1 < 0.5 * kl0)
    ctx.check(
        "logged KL loss rises as T falls (last 20 over 2x steps 20-40)",
        _median(ls[-20:]) > 2 * _median(ls[20:40]),
    )
    ctx.check("all finite", all(math.isfinite(v) for v in ls))


# -- 13. healthy: conv1d gait classifier, OneCycle -------------------------------------------


class _GaitConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _gait_batch(gen: torch.Generator, n: int):
    y = torch.randint(0, 4, (n,), generator=gen)
    t = torch.linspace(0, 1, 48)
    freq = (2.0 + 1.5 * y.float())[:, None]
    phase = torch.rand(n, 1, generator=gen) * 6.28
    a = torch.sin(6.28 * freq * t + phase)
    b = torch.sin(6.28 * freq * t + phase + 0.5 * (y % 2).float()[:, None] * 3.14)
    x = torch.stack([a, b], 1) + 0.3 * torch.randn(n, 2, 48, generator=gen)
    return x, y


@scenario(
    "snowshoe_lacing_gait_conv1d_onecycle_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="conv1d gait classifier on noisy two-channel strides: SGD Nesterov, OneCycleLR, label "
    "smoothing 0.1, 2-micro-batch accumulation, clipping at 2.0: trains normally",
)
def h608_snowshoe_gait_onecycle(ctx: Context) -> None:
    gen = seeded(60813)
    model = _GaitConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    for _step in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = _gait_batch(gen, 32)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    x, y = _gait_batch(gen, 256)
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ls = ctx.losses
    ctx.check("loss fell over 2x", _median(ls[-10:]) < 0.5 * ls[0])
    ctx.check("held-out accuracy over 80%", acc > 0.8)
    ctx.check("all finite", all(math.isfinite(v) for v in ls))
