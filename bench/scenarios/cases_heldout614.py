"""Held-out set 614 (``h614_``): 10 faults over 10 causes and 3 healthy controls, 13 hand-written
model families. Written blind: checked only with ``bench/standin.py``, never with steadygrad."""

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


def regression_batches(gen: torch.Generator, dim: int, batch: int = 64, noise: float = 0.05):
    """Endless batches of a smooth generated target y = f(x) (standardised inputs)."""
    w1 = torch.randn(dim, 8, generator=gen) / math.sqrt(dim)
    w2 = torch.randn(8, 1, generator=gen) / math.sqrt(8)
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


class Regressor(nn.Module):
    def __init__(self, dim: int, hidden: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


class DigitNet(nn.Module):
    def __init__(self, act: type[nn.Module], dropout: float = 0.0, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.act1 = act()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.fc1(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.act2(self.fc2(self.drop(self.features(x))))))


def top_hessian_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    """Power iteration on Hessian-vector products: the sharpness of the loss at the weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        hv = torch.autograd.grad(grads, params, grad_outputs=v)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "spinning_top_peg_spin_time_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=40,
    note="Linear warm-up written lr = peak * step instead of peak * step / warmup_steps (warm-up "
    "never ends): the lr keeps climbing past 2/sharpness (sharpness 4-6, crossed around step 35-50), then the MSE loss blows up (step ~84). Plain SGD.",
)
def h614_spinning_top_warmup_never_ends(ctx: Context) -> None:
    gen = seeded(61401)
    model = Regressor(6, 32, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = regression_batches(gen, 6)
    ctx.attach(model, opt)
    peak, lrs, sharp = 0.01, [], []
    probe_x, probe_y = next(batches)
    for step in range(200):
        lr = peak * step  # bug: "/ warmup_steps" missing
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        if step % 20 == 0 and step <= 80:
            sharp.append(top_hessian_eig(model, lambda: F.mse_loss(model(probe_x), probe_y)))
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    best = min(ls[:60])
    blown = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * best), None)
    ctx.check("loss fell first (warm-up looked fine)", ls[50] < 0.5 * ls[0])
    ctx.check("loss blows up to over 100x its best", blown is not None)
    ctx.check(
        "lr past 2/sharpness before the blow-up",
        blown is not None and lrs[blown] > 2.0 / max(v for v in sharp if math.isfinite(v)),
    )


@scenario(
    "lockpick_pin_tumbler_set_silu_huber_regressor",
    "RMSprop",
    "update_ratio_out_of_range",
    where=("fc2",),
    heldout=True,
    note="Three param groups (fc1, fc2, head); fc2's lr typed 1e-9 for 1e-3, so fc2 never "
    "moves while the others train. Huber loss, RMSprop, clipping.",
)
def h614_lockpick_fc2_group_lr_typo(ctx: Context) -> None:
    gen = seeded(61402)
    model = Regressor(8, 48, nn.SiLU)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-3},
            {"params": model.fc2.parameters(), "lr": 1e-9},  # typo: 1e-3
            {"params": model.head.parameters(), "lr": 1e-3},
        ]
    )
    batches = regression_batches(gen, 8)
    ctx.attach(model, opt)
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    for _ in range(200):
        x, y = next(batches)
        loss = F.huber_loss(model(x), y, delta=0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    r1 = float((model.fc1.weight - w1).norm() / w1.norm())
    r2 = float((model.fc2.weight - w2).norm() / w2.norm())
    ls = ctx.losses
    ctx.check("fc2 weights moved under 1e-5 relative", r2 < 1e-5)
    ctx.check("fc1 weights moved over 1e-2 relative", r1 > 1e-2)
    ctx.check("loss still fell (no blow-up)", sum(ls[-20:]) < 0.7 * sum(ls[:20]))


@scenario(
    "busker_pitch_crowd_draw_fp16_relu_regressor",
    "SGD(momentum)",
    "amp_overflow",
    where=("fc1",),
    diverges=70,
    heldout=True,
    onset=70,
    note="fp16 autocast + torch.amp.GradScaler; from step 70 the street sound-level feed arrives in "
    "micropascals instead of pascals (x1e6), fc1's fp16 output overflows to inf, the loss is "
    "non-finite and the scaler skips steps and keeps halving its scale. SGD momentum, MSE.",
)
def h614_busker_micropascal_fp16_overflow(ctx: Context) -> None:
    gen = seeded(61403)
    model = Regressor(8, 32, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    batches = regression_batches(gen, 8)
    ctx.attach(model, opt, scaler=scaler)
    fc1_out: list[torch.Tensor] = []
    model.fc1.register_forward_hook(lambda m, i, o: fc1_out.append(o.detach()))
    overflow, finite32 = False, False
    for step in range(110):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = x[:, 0].abs() * 1e6 + 1e6  # micropascals
        fc1_out.clear()
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == 70:
            overflow = not bool(torch.isfinite(fc1_out[0]).all())
            with torch.no_grad():
                finite32 = bool(torch.isfinite(model.fc1(x)).all())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
    ls = ctx.losses
    ctx.check("loss finite before step 70", all(math.isfinite(v) for v in ls[:70]))
    ctx.check("fc1's fp16 output non-finite at step 70", overflow)
    ctx.check("the same fc1 output finite in float32", finite32)
    ctx.check("loss non-finite at step 70", not math.isfinite(ls[70]))
    ctx.check("scaler scale fell over 100x after the onset", ctx.scales[-1] < ctx.scales[69] / 100)


@scenario(
    "candy_floss_spin_yield_silu_regressor",
    "Adagrad",
    "data_outlier",
    heldout=True,
    onset=120,
    note="One shard logged sugar yield in grams instead of kilograms: the batch at step 120 has "
    "targets 1000x too large. Loss spikes, clipping holds the step, the run recovers. Adagrad, MSE.",
)
def h614_candy_floss_grams_shard(ctx: Context) -> None:
    gen = seeded(61404)
    model = Regressor(6, 32, nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    batches = regression_batches(gen, 6)
    ctx.attach(model, opt)
    norms = []
    for step in range(240):
        x, y = next(batches)
        if step == 120:
            y = y * 1000.0  # the bad shard
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    ls = ctx.losses
    before = sorted(ls[100:120])[10]
    ctx.check("loss at step 120 over 1000x the median before", ls[120] > 1000 * before)
    ctx.check(
        "gradient at step 120 over 100x the median before",
        norms[120] > 100 * sorted(norms[100:120])[10],
    )
    ctx.check("run recovers (last 20 under 3x the level before)", sum(ls[-20:]) / 20 < 3 * before)


@scenario(
    "chalk_line_snap_straightness_relu_bce_classifier",
    "ASGD",
    "gradient_spike",
    heldout=True,
    onset=100,
    note="8-micro-batch gradient accumulation; at step 100 (a resume path) the loss is multiplied "
    "by accum_steps instead of divided, a 64x gradient for that one step; the logged loss is "
    "ordinary. Clipped at 5, recovers. ASGD, BCE.",
)
def h614_chalk_line_accum_multiplier(ctx: Context) -> None:
    gen = seeded(61405)
    model = Regressor(10, 32, nn.ReLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    w = torch.randn(10, 1, generator=gen)
    ctx.attach(model, opt)
    accum, norms = 8, []
    for step in range(200):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(accum):
            x = torch.randn(16, 10, generator=gen)
            y = ((x @ w).squeeze(1) + 0.3 * torch.randn(16, generator=gen) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
            scale = accum if step == 100 else 1.0 / accum  # bug on the resume path
            (loss * scale).backward()
            total += float(loss) / accum
        norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 5.0)))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(torch.tensor(total))
    ls = ctx.losses
    med = sorted(norms[80:100])[10]
    ctx.check("gradient at step 100 over 30x the median before", norms[100] > 30 * med)
    ctx.check(
        "logged loss at step 100 ordinary (under 2x the median)",
        ls[100] < 2 * sorted(ls[80:100])[10],
    )
    ctx.check("loss fell overall", sum(ls[-20:]) < 0.8 * sum(ls[:20]))


class LogDepth(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)  # no clamp on the gauge reading


class IceNLLNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_depth = LogDepth()
        self.fc1 = nn.Linear(5, 32)
        self.act = nn.SiLU()
        self.mean = nn.Linear(32, 1)
        self.log_var = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.act(self.fc1(self.log_depth(x)))
        return self.mean(h), self.log_var(h)


@scenario(
    "pond_skating_ice_thickness_gaussian_nll_net",
    "NAdam",
    "nonfinite",
    where=("log_depth",),
    diverges=80,
    heldout=True,
    onset=80,
    note="In-model log(snow-depth gauge) without a clamp; at step 80 a batch includes a frozen "
    "gauge that reads exactly 0, log(0) = -inf, the Gaussian NLL is NaN. NAdam.",
)
def h614_pond_skating_log_zero_gauge(ctx: Context) -> None:
    gen = seeded(61406)
    model = IceNLLNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    for step in range(160):
        depth = 0.05 + torch.rand(64, 1, generator=gen)
        rest = torch.randn(64, 4, generator=gen)
        if step == 80:
            depth[5] = 0.0  # frozen gauge
        x = torch.cat([depth, rest], 1)
        y = 2.0 - 0.8 * torch.log(depth.clamp_min(1e-3)) + rest[:, :1] * 0.5
        y = y + 0.2 * torch.randn(64, 1, generator=gen)
        mean, log_var = model(x)
        loss = F.gaussian_nll_loss(mean, y, log_var.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check(
        "loss finite through step 79", len(ls) > 80 and all(math.isfinite(v) for v in ls[:80])
    )
    ctx.check("loss non-finite at step 80", len(ls) > 80 and not math.isfinite(ls[80]))
    ctx.check("loss fell before the fault", ls[79] < ls[0])


@scenario(
    "meringue_peak_stiffness_gelu_regressor",
    "RAdam",
    "loss_divergence",
    heldout=True,
    note="Hand-written decoupled weight decay applied as p += lr*wd*p (sign flipped): weights grow "
    "steadily, the MSE loss climbs slowly with no jump. RAdam.",
)
def h614_meringue_decay_sign(ctx: Context) -> None:
    gen = seeded(61407)
    model = Regressor(6, 32, nn.GELU)
    lr, wd = 3e-3, 3.0
    opt = torch.optim.RAdam(model.parameters(), lr=lr)
    batches = regression_batches(gen, 6)
    ctx.attach(model, opt)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    for _ in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # bug: should be alpha=-lr * wd
        ctx.step(loss)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    ls = ctx.losses
    best = min(ls)
    smooth = [sum(ls[i : i + 10]) / 10 for i in range(0, 300, 10)]
    ctx.check("weights grew over 2x", w1 > 2 * w0)
    ctx.check("loss ends over 3x its best", sum(ls[-10:]) / 10 > 3 * best)
    ctx.check(
        "no jump: 10-step means never more than double",
        all(b < 2 * a for a, b in zip(smooth, smooth[1:], strict=False)),
    )
    ctx.check("finite throughout", all(math.isfinite(v) for v in ls))


class TempDigitNet(DigitNet):
    def __init__(self, temperature: float) -> None:
        super().__init__(nn.GELU)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / self.temperature


@scenario(
    "marbles_knuckle_shot_outcome_gelu_classifier",
    "Adamax",
    "softmax_collapse",
    where=("head",),
    heldout=True,
    note="Config temperature_ms=1.0 passed where seconds were expected and converted twice: "
    "logits divided by 0.001; the softmax saturates, most rows' target probability rounds to "
    "exactly 1.0. Adamax, cross-entropy.",
)
def h614_marbles_temperature_units(ctx: Context) -> None:
    gen = seeded(61408)
    model = TempDigitNet(temperature=1.0 / 1000.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = digit_batches(gen)
    ctx.attach(model, opt)
    frac = 0.0
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        frac = collapsed_fraction(logits.detach(), y)
    ctx.check("over 40% of rows' target probability exactly 1.0", frac > 0.4)
    ctx.check("finite losses", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "pizza_toss_dough_stretch_gelu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    heldout=True,
    onset=80,
    note="A debugging loss scale of 65536 left in for one step (step 80): one gradient over "
    "1000x, Adam's second moment fills with it, updates shrink for many steps after. Adam, MSE.",
)
def h614_pizza_toss_loss_scale_left_in(ctx: Context) -> None:
    gen = seeded(61409)
    model = Regressor(6, 32, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = regression_batches(gen, 6)
    ctx.attach(model, opt)
    vmax, upd = [], []
    for step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        (loss * (65536.0 if step == 80 else 1.0)).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        upd.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(model.parameters(), before, strict=True)
                )
                ** 0.5
            )
        )
        vmax.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))
        ctx.step(loss)
    g = ctx.grad_norms
    ctx.check(
        "gradient at step 80 over 1000x the median before", g[80] > 1000 * sorted(g[60:80])[10]
    )
    ctx.check("second moment 60 steps on over 1e4x its level before", vmax[140] > 1e4 * vmax[79])
    ctx.check(
        "updates 20-60 steps on under 0.1x those before",
        sum(upd[100:140]) / 40 < 0.1 * sum(upd[60:80]) / 20,
    )


@scenario(
    "cairn_stack_topple_relu_classifier",
    "SGD",
    "loss_of_plasticity",
    where=("fc1", "act1"),
    heldout=True,
    note="Bias init typed nn.init.constant_(fc1.bias, -3.0) for -3e-2: nearly every fc1 ReLU is "
    "off on every input from the start, gets no gradient and never recovers; the loss stalls "
    "near chance. Plain SGD, cross-entropy.",
)
def h614_cairn_dead_bias_init(ctx: Context) -> None:
    gen = seeded(61410)
    model = DigitNet(nn.ReLU)
    nn.init.constant_(model.fc1.bias, -3.0)  # typo: -3e-2
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = digit_batches(gen)
    ctx.attach(model, opt)
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ls = ctx.losses
    ctx.check("over 80% of fc1 units dead at the end", dead > 0.8)
    ctx.check("loss stalls above 1.5 (chance is 2.3)", sum(ls[-20:]) / 20 > 1.5)


# -- healthy controls --------------------------------------------------------------------------


class TuneEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(24, 64)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.fc2(self.act(self.fc1(x))), dim=-1)


@scenario(
    "street_organ_punch_card_tune_siamese_triplet_net",
    "AdamW",
    "healthy",
    heldout=True,
    note="Siamese encoder (one shared tower) for generated punch-card tune fragments, trained "
    "with a triplet margin loss over generated anchor/positive/negative pairs; AdamW, warm-up "
    "then cosine via LambdaLR, clipping. Control.",
)
def h614_street_organ_triplet_control(ctx: Context) -> None:
    gen = seeded(61411)
    model = TuneEncoder()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 200, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    protos = torch.randn(12, 24, generator=gen)
    crit = nn.TripletMarginLoss(margin=0.5)
    ctx.attach(model, opt)
    for _ in range(steps):
        a_cls = torch.randint(0, 12, (64,), generator=gen)
        n_cls = (a_cls + torch.randint(1, 12, (64,), generator=gen)) % 12
        a = protos[a_cls] + 0.8 * torch.randn(64, 24, generator=gen)
        p = protos[a_cls] + 0.8 * torch.randn(64, 24, generator=gen)
        n = protos[n_cls] + 0.8 * torch.randn(64, 24, generator=gen)
        loss = crit(model(a), model(p), model(n))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
    ls = ctx.losses
    ctx.check("triplet loss fell to under 0.3x its start", sum(ls[-20:]) < 0.3 * sum(ls[:20]))
    ctx.check("finite throughout", all(math.isfinite(v) for v in ls))


@scenario(
    "button_accordion_bellows_reversal_gelu_classifier",
    "Adam",
    "healthy",
    heldout=True,
    note="Regularisation schedule: dropout (one module, after both hidden layers) raised from 0.1 to "
    "0.4 at step 100 on purpose; the "
    "training loss jumps up and stays higher (dropout noise), while the model in eval mode keeps "
    "classifying well. Adam, cross-entropy. Alarming-looking control.",
)
def h614_button_accordion_dropout_raise_control(ctx: Context) -> None:
    gen = seeded(61412)
    model = DigitNet(nn.GELU, dropout=0.1, hidden=48)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = digit_batches(gen)
    ctx.attach(model, opt)
    for step in range(220):
        if step == 100:
            model.drop.p = 0.4
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    model.eval()
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    model.train()
    ls = ctx.losses
    ctx.check("loss fell to under 0.3x its start", sum(ls[-20:]) < 0.3 * sum(ls[:20]))
    ctx.check(
        "training loss after the raise over 1.15x the loss just before",
        sum(ls[100:140]) / 40 > 1.15 * sum(ls[80:100]) / 20,
    )
    ctx.check("eval accuracy over 0.85", acc > 0.85)


@scenario(
    "bubble_wand_film_burst_relu_classifier",
    "SGD(nesterov)",
    "healthy",
    heldout=True,
    note="SGD Nesterov with OneCycleLR, label smoothing 0.1, 2-micro-batch accumulation, "
    "clipping at 1.0, 5% noisy labels. Control.",
)
def h614_bubble_wand_nesterov_onecycle_control(ctx: Context) -> None:
    gen = seeded(61413)
    model = DigitNet(nn.ReLU, hidden=64)
    steps = 180
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    batches = digit_batches(gen, batch=32)
    ctx.attach(model, opt)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            noisy = torch.rand(len(y), generator=gen) < 0.05
            y = torch.where(noisy, torch.randint(0, 10, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total += float(loss) / 2
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
    ls = ctx.losses
    ctx.check("loss fell to under 0.5x its start", sum(ls[-20:]) < 0.5 * sum(ls[:20]))
    ctx.check("finite throughout", all(math.isfinite(v) for v in ls))
