"""Held-out set 624 (``h624_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data or scikit-learn's bundled digits, and one Hugging Face BiT built from a
tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, digit_batches, scenario, seeded


def _regression(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 16, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _classes(gen: torch.Generator, n_in: int = 16, k: int = 4, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float], k: int, n: int = 10) -> float:
    return float(torch.tensor(xs[max(0, k - n) : k]).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class Net3(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1, act=F.silu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="esker_ridge_gravel_height_lr_typo_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=50,
    heldout=True,
    note="plain SGD with a MultiStepLR whose gamma was typed 10 for 0.1: at step 50 the lr jumps "
    "from 0.07 to 0.7, lr x top Hessian eigenvalue goes over 2, the loss oscillates and blows up",
)
def h624_esker_ridge_sgd_gamma_typo(ctx: Context) -> None:
    gen = seeded(6241)
    model = nn.Sequential(nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.07)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[50, 100], gamma=10.0)  # 0.1
    ctx.attach(model, opt)
    batches = _regression(gen)
    x0, y0 = next(batches)
    params = list(model.parameters())
    onset = 50

    def sharpness() -> float:
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(30):  # power iteration on the Hessian of a fixed batch
            g = torch.autograd.grad(F.mse_loss(model(x0), y0), params, create_graph=True)
            hv = torch.autograd.grad(g, params, grad_outputs=v)
            nrm = float(torch.sqrt(sum((h**2).sum() for h in hv)))
            lam = nrm / float(torch.sqrt(sum((u**2).sum() for u in v)))
            v = [h.detach() / nrm for h in hv]
        return lam

    for step in range(150):
        if step == onset:
            lam = sharpness()
            lr = opt.param_groups[0]["lr"]
            ctx.check("lr x sharpness over 2 at onset", lr * lam > 2.0)
            ctx.check("lr/10 x sharpness under 2 (stable before)", lr / 10 * lam < 2.0)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in params) ** 0.5))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())) or float(loss.detach()) > 1e8:
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < 0.5 * ls[0])
    ctx.check("loss blew up over 1000x its start", not _finite(ls) or max(ls) > 1e3 * ls[0])


@scenario(
    family="moss_carpet_water_retention_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="SGD momentum 0.9; a 24-deep tanh MLP initialised with orthogonal gain 2.0 (a "
    "sqrt(2)-style gain doubled by a copied scale factor): the gradient grows through depth, layer 0's gradient is "
    "over 10x the last layer's",
)
def h624_moss_carpet_deep_tanh_gain(ctx: Context) -> None:
    gen = seeded(6242)
    sizes = [8] + [32] * 23 + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        lin = nn.Linear(a, b)
        nn.init.orthogonal_(lin.weight, gain=2.0)  # should be 1.0 (tanh stays in its linear range)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    batches = _regression(gen)
    ratios = []
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = float(model[0].weight.grad.norm())
        last = float(model[len(model) - 1].weight.grad.norm())
        ratios.append(first / max(last, 1e-12))
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layer 0's gradient over 10x the last layer's at step 0", ratios[0] > 10)
    ctx.check("over 5x on at least half the steps", sum(r > 5 for r in ratios) >= len(ratios) / 2)


@scenario(
    family="saltpan_crystal_harvest_yield_huber_regressor",
    optimizer="Adam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="Huber loss, grad clipping 1.0; the shard read at step 110 holds one pan's yields in "
    "kilograms instead of tonnes (x1000 targets): loss over 20x, gradient over 10x for one "
    "step, the run recovers",
)
def h624_saltpan_yield_kg_shard(ctx: Context) -> None:
    gen = seeded(6243)
    model = Net3(8, 32)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _regression(gen)
    onset = 110
    for step in range(200):
        x, y = next(batches)
        if step == onset:
            y = y * 1000.0 + 50.0  # the bad shard: kilograms, not tonnes
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss over 20x the pre-onset median at onset", ls[onset] > 20 * _median(ls, onset))
    ctx.check("gradient over 10x the pre-onset median", gs[onset] > 10 * _median(gs, onset))
    ctx.check("loss fell before onset", _median(ls, onset) < 0.7 * ls[0])
    ctx.check(
        "recovers: last 20 under 2x the pre-onset median",
        sum(ls[-20:]) / 20 < 2 * _median(ls, onset),
    )
    ctx.check("finite", _finite(ls))


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class DrawEnergyNet(nn.Module):
    """Draw-force regressor with a hand-written energy feature (square of the first layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.energy = Square()
        self.fc2 = nn.Linear(64, 32)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        h = torch.cat([F.silu(h), 0.1 * self.energy(h)], -1)
        return self.head(F.silu(self.fc2(h)))


@scenario(
    family="horn_bow_limb_draw_force_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("energy",),
    diverges=80,
    onset=80,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 80 the draw length arrives in millimetres instead "
    "of metres (no /1000); the hand-written energy feature (fc1 output squared) overflows "
    "fp16 to inf and the loss is non-finite",
)
def h624_horn_bow_fp16_millimetres(ctx: Context) -> None:
    gen = seeded(6244)
    model = DrawEnergyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2048.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.energy.register_forward_hook(lambda m, i, o: seen.__setitem__("energy", o.detach()))
    onset = 80
    for step in range(130):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 2] = x[:, 2] * 1000.0 + 700.0  # draw length in mm, conversion dropped
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check(
                "energy's fp16 output non-finite at onset",
                not bool(seen["energy"].isfinite().all()),
            )
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model(x).isfinite().all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss fell before onset", ls[onset - 1] < 0.7 * ls[0])
    ctx.check("loss finite before onset", _finite(ls[:onset]))
    ctx.check("loss non-finite at onset", len(ls) == onset + 1 and not math.isfinite(ls[onset]))


@scenario(
    family="bocce_lag_distance_group_typo_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups with per-layer lr multipliers; fc2's multiplier typed 1e-7 for 1e-1: "
    "fc2 never moves while fc1 and the head train",
)
def h624_bocce_lag_fc2_mult_typo(ctx: Context) -> None:
    gen = seeded(6245)
    model = Net3(8, 32, act=torch.tanh)
    base = 4e-3
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": base},
            {"params": model.fc2.parameters(), "lr": base * 1e-7},  # typo: 1e-1
            {"params": model.head.parameters(), "lr": base},
        ]
    )
    ctx.attach(model, opt)
    batches = _regression(gen)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    for _ in range(180):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    rel2 = float((model.fc2.weight - w2).norm() / w2.norm())
    rel1 = float((model.fc1.weight - w1).norm() / w1.norm())
    ctx.check("fc2 moved under 1e-5 relative", rel2 < 1e-5)
    ctx.check("fc1 moved over 1e-2 relative", rel1 > 1e-2)
    ctx.check("loss fell, finite", ctx.losses[-1] < ctx.losses[0] and _finite(ctx.losses))


@scenario(
    family="pea_shooter_range_accum_bug_relu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="SGD Nesterov, 4-micro-batch accumulation, clipping 1.0; at step 120 (the first step "
    "after a mid-epoch resume) the accumulation divisor is reset to 1/100 instead of 1/4, the "
    "backpropagated loss is 400x for that one step: gradient over 30x, logged loss ordinary",
)
def h624_pea_shooter_accum_divisor_bug(ctx: Context) -> None:
    gen = seeded(6246)
    model = Net3(8, 32, act=F.relu)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=16)
    onset, accum = 120, 4
    for step in range(200):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            scale = 100.0 if step == onset else 1.0 / accum  # bug: divisor reset after resume
            (loss * scale).backward()
            total += float(loss) / accum
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient over 30x the pre-onset median at onset", gs[onset] > 30 * _median(gs, onset)
    )
    ctx.check(
        "logged loss at onset under 2x the pre-onset median", ls[onset] < 2 * _median(ls, onset)
    )
    ctx.check("loss fell before onset", _median(ls, onset) < 0.7 * ls[0])
    ctx.check(
        "recovers: last 20 under 2x the pre-onset median",
        sum(ls[-20:]) / 20 < 2 * _median(ls, onset),
    )
    ctx.check("finite", _finite(ls))


class Sqrt(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


class ReedNLLNet(nn.Module):
    """Predicts a Gaussian (mean, std) of reed moisture; std = sqrt(var_head) with no clamp."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.fc2 = nn.Linear(32, 32)
        self.mean_head = nn.Linear(32, 1)
        self.var_head = nn.Linear(32, 1)
        self.std_act = Sqrt()  # bug: should be sqrt(softplus(.) + eps)
        nn.init.normal_(self.var_head.weight, std=0.01)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return self.mean_head(h), self.std_act(self.var_head(h))


@scenario(
    family="bagpipe_chanter_reed_moisture_gaussian_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("std_act",),
    diverges=64,
    onset=64,
    heldout=True,
    note="Gaussian NLL with std = sqrt(var_head(h)) and no softplus/clamp: as the fit sharpens "
    "the variance head goes negative on some sample at step 64, sqrt gives NaN and the loss "
    "is NaN",
)
def h624_bagpipe_reed_sqrt_negative(ctx: Context) -> None:
    gen = seeded(6247)
    model = ReedNLLNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    ctx.attach(model, opt)
    batches = _regression(gen)
    seen: dict[str, torch.Tensor] = {}
    model.var_head.register_forward_hook(lambda m, i, o: seen.__setitem__("var", o.detach()))
    bad_var = False
    for _ in range(250):
        x, y = next(batches)
        mu, std = model(x)
        loss = (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            bad_var = bool((seen["var"] < 0).any()) and bool(x.isfinite().all())
            break
    ls = ctx.losses
    k = len(ls) - 1
    ctx.check("loss NaN at step 64", k == 64 and not math.isfinite(ls[k]))
    ctx.check("finite before it", _finite(ls[:k]) and k > 20)
    ctx.check("var_head negative on that batch, inputs finite", bad_var)


@scenario(
    family="oud_plectrum_wear_decay_sign_tanh_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written decoupled weight decay applied after opt.step() with its sign flipped "
    "(p += lr*wd*p): the weights inflate steadily and the MSE climbs slowly over 3x its best, "
    "with no jump",
)
def h624_oud_plectrum_decay_sign(ctx: Context) -> None:
    gen = seeded(6248)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    lr, wd = 3e-3, 4.0
    opt = torch.optim.NAdam(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _regression(gen)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    for _ in range(240):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "weight" in n:
                    p.add_(p, alpha=lr * wd)  # bug: alpha=-lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    ls = ctx.losses
    best = min(ls[:100])
    tail = sum(ls[-10:]) / 10
    smooth = [sum(ls[i : i + 10]) / 10 for i in range(0, len(ls) - 9, 10)]
    jumps = [b - a for a, b in zip(smooth[:-1], smooth[1:], strict=False)]
    ctx.check("weight norm grew over 2x", w1 > 2 * w0)
    ctx.check("loss ends over 3x its best", tail > 3 * best)
    ctx.check("no 10-step jump over 1/3 of the climb", max(jumps) < (tail - best) / 3)
    ctx.check("finite", _finite(ls))


@scenario(
    family="curling_stone_pebble_grade_dead_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="fc1's bias initialised to -3.0 (copied from a sparse-gate recipe): over 80% of fc1's "
    "ReLU units are never positive and stay dead, the loss stalls near chance",
)
def h624_curling_pebble_dead_relu(ctx: Context) -> None:
    gen = seeded(6249)
    model = Net3(16, 64, 4, act=F.relu)
    nn.init.constant_(model.fc1.bias, -3.0)  # bug: zeros
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _classes(gen)
    dead = 1.0
    for _ in range(160):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        xs = torch.cat([next(batches)[0] for _ in range(8)])
        dead = float((model.fc1(xs) <= 0).all(0).float().mean())
    ls = ctx.losses
    ctx.check("over 80% of fc1 units dead at the end", dead > 0.8)
    ctx.check("loss stalls: last 20 over 0.6x the first", sum(ls[-20:]) / 20 > 0.6 * ls[0])
    ctx.check("finite", _finite(ls))


@scenario(
    family="fletching_vane_spin_temperature_gelu_classifier",
    optimizer="ASGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="logit scale stored as exp(log_scale) with log_scale set to 7.0 instead of log(7.0): the "
    "logits are multiplied by ~1100, over 40% of rows' target probability is exactly 1.0",
)
def h624_fletching_vane_logit_scale_bug(ctx: Context) -> None:
    gen = seeded(62410)
    model = Net3(64, 64, 10, act=F.gelu)
    log_scale = torch.tensor(7.0)  # bug: math.log(7.0)
    opt = torch.optim.ASGD(model.parameters(), lr=3e-4)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    fracs = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) * log_scale.exp()
        loss = F.cross_entropy(logits, y)
        fracs.append(collapsed_fraction(logits.detach(), y))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over 40% of rows collapsed (last 10 mean)", sum(fracs[-10:]) / 10 > 0.4)
    ctx.check("finite", _finite(ctx.losses))


# -- healthy controls -------------------------------------------------------------------------------


def _bit(classes: int = 10):
    from transformers import BitConfig, BitForImageClassification

    config = BitConfig(
        num_channels=1,
        embedding_size=16,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        num_groups=4,
        layer_type="preactivation",
        num_labels=classes,
        global_padding="SAME",
    )
    return BitForImageClassification(config)


@scenario(
    family="tabla_syahi_patch_hf_bit_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hugging Face BiT (preactivation, weight-standardised convs, group norm) from a tiny "
    "config on upsampled 8x8 patches; AdamW with no decay on norms/biases, linear warm-up + "
    "cosine, label smoothing 0.1, clipping 1.0: control",
)
def h624_tabla_syahi_hf_bit(ctx: Context) -> None:
    gen = seeded(62411)
    model = _bit()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
    )
    steps, warm = 130, 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear")
        loss = F.cross_entropy(model(pixel_values=img).logits, y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell: last 10 under 0.5x the first", sum(ls[-10:]) / 10 < 0.5 * ls[0])
    ctx.check("finite", _finite(ls))


@scenario(
    family="quoits_ring_toss_warmup_peak_cosine_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="linear warm-up over 40 steps to a high peak lr 0.03, then cosine decay to zero: the loss "
    "bumps visibly up around the peak and the run recovers as the rate decays (alarming-looking "
    "control)",
)
def h624_quoits_toss_warmup_bump(ctx: Context) -> None:
    gen = seeded(62412)
    model = Net3(64, 128, 10, act=F.relu)
    steps, warm, peak = 220, 40, 3e-2
    opt = torch.optim.Adam(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(ls[5:30])
    bump = max(ls[25:80])
    ctx.check("visible bump near the peak: over 2x the warm-up low", bump > 2 * low)
    ctx.check("recovers: last 20 under 0.5x the bump", sum(ls[-20:]) / 20 < 0.5 * bump)
    ctx.check("ends under 0.2x the first loss", sum(ls[-20:]) / 20 < 0.2 * ls[0])
    ctx.check("finite", _finite(ls))


@scenario(
    family="kettle_hole_pond_depth_accum_plateau_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Adagrad on noisy depth soundings (target noise 0.3), 2-micro-batch accumulation, "
    "ReduceLROnPlateau on the running loss, MSE: control",
)
def h624_kettle_hole_noisy_plateau(ctx: Context) -> None:
    gen = seeded(62413)
    model = Net3(8, 32, act=F.silu)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _regression(gen, batch=32, noise=0.3)
    run = None
    for _ in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            (loss / 2).backward()
            total += float(loss) / 2
        ctx.grad_norms.append(float(sum(p.grad.norm() ** 2 for p in model.parameters()) ** 0.5))
        opt.step()
        run = total if run is None else 0.9 * run + 0.1 * total
        plateau.step(run)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(
        "loss fell: last 20 under 0.7x the first 5", sum(ls[-20:]) / 20 < 0.7 * sum(ls[:5]) / 5
    )
    ctx.check("finite", _finite(ls))
