"""Held-out set 609 (``h609_``): 10 faults over 10 causes and 3 healthy controls, 13 families.

Every model is hand-written (one Hugging Face ViT built from a tiny config); data are generated.
Each fault is induced the way it happens in practice and checked in the run itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded

# -- shared helpers ---------------------------------------------------------------------------------


def _regression(gen: torch.Generator, dim: int, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a smooth nonlinear target of standardised readings."""
    w1 = torch.randn(dim, 16, generator=gen) / math.sqrt(dim)
    w2 = torch.randn(16, 1, generator=gen) / 4.0
    while True:
        x = torch.randn(batch, dim, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _clusters(gen: torch.Generator, dim: int, classes: int, batch: int = 64, spread: float = 1.0):
    """Endless (x, y) batches of Gaussian clusters, one per class."""
    centres = 1.5 * torch.randn(classes, dim, generator=gen)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + spread * torch.randn(batch, dim, generator=gen)
        yield x, y


class _Net(nn.Module):
    """fc1 -> act -> fc2 -> act -> head."""

    def __init__(self, dim: int, hidden: int, out: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _finite(losses: list[float]) -> bool:
    return all(math.isfinite(v) for v in losses)


def _mean(v: list[float]) -> float:
    return sum(v) / max(len(v), 1)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    "wood_turning_bowl_wall_chatter_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    diverges="auto",
    heldout=True,
    note="lr typed 4.0 for 0.04 in the lathe-chatter config; lr x top Hessian eigenvalue is past 2 "
    "from step 0, the loss oscillates and blows up (plain SGD, MSE)",
)
def h609_bowl_chatter_lr_typo(ctx: Context) -> None:
    gen = seeded(6091)
    model = _Net(10, 32, 1, nn.Tanh)
    lr = 4.0  # meant 0.04
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    batches = _regression(gen, 10)
    probe = next(batches)
    # top Hessian eigenvalue at init (power iteration on Hessian-vector products)
    params = [p for p in model.parameters()]
    loss0 = F.mse_loss(model(probe[0]), probe[1])
    grads = torch.autograd.grad(loss0, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(30):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    mon = ctx.attach(model, opt)
    del mon
    for _step in range(150):
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
    ctx.check("lr x sharpness at init over 2", lr * lam > 2.0)
    ctx.check(
        "loss blows up (over 100x its start or non-finite)",
        not _finite(ls) or max(ls) > 100 * ls[0],
    )


@scenario(
    "lampwork_bead_mandrel_fp16_gelu_regressor",
    "AdamW",
    "amp_overflow",
    ("fc1",),
    diverges=70,
    heldout=True,
    onset=70,
    note="fp16 autocast + GradScaler; from step 70 the kiln logger sends the mandrel temperature "
    "in millikelvin instead of kelvin/1000 (standardised); fc1's fp16 output overflows to inf, "
    "the loss is non-finite, the scaler keeps skipping steps and halving its scale",
)
def h609_lampwork_millikelvin_fp16(ctx: Context) -> None:
    gen = seeded(6092)
    model = _Net(8, 64, 1, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    mon = ctx.attach(model, opt, scaler=scaler)
    del mon
    batches = _regression(gen, 8)
    onset_fp16_inf = False
    onset_fp32_finite = False
    for step in range(110):
        x, y = next(batches)
        if step >= 70:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1e6 + 3e6  # millikelvin, unscaled
        if step == 70:
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
                onset_fp16_inf = not bool(torch.isfinite(model.fc1(x)).all())
            with torch.no_grad():
                onset_fp32_finite = bool(torch.isfinite(model.fc1(x)).all())
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
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
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check("loss non-finite at step 70", not math.isfinite(ls[70]))
    ctx.check("fc1's fp16 output non-finite at onset", onset_fp16_inf)
    ctx.check("fc1's float32 output finite on the same batch", onset_fp32_finite)
    ctx.check("scaler scale fell over 1000x after onset", ctx.scales[-1] < ctx.scales[69] / 1000)


@scenario(
    "stone_skipping_bounce_count_deep_relu_mlp",
    "SGD momentum",
    "exploding_gradients",
    ("0",),
    diverges="auto",
    heldout=True,
    note="a 12-deep ReLU MLP whose init multiplies every kaiming-initialised weight by a stray "
    "gain of 1.3 (left from an experiment); the backward signal grows through depth, the first "
    "layer's gradient is over 10x the last's, and the run blows up (SGD momentum, MSE)",
)
def h609_skipping_stray_gain(ctx: Context) -> None:
    gen = seeded(6093)
    sizes = [12] + [48] * 11 + [1]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                m.weight.mul_(1.3)  # stray gain
                nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=2e-4, momentum=0.9)
    mon = ctx.attach(model, opt)
    del mon
    batches = _regression(gen, 12)
    outs: dict[int, torch.Tensor] = {}

    def keep(i: int):
        def hook(_m: nn.Module, _inp, out: torch.Tensor) -> None:
            if out.requires_grad:
                out.retain_grad()
                outs[i] = out

        return hook

    handles = [model[0].register_forward_hook(keep(0)), model[22].register_forward_hook(keep(22))]
    first_last = 0.0
    for step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if step == 0:
            first_last = float(outs[0].grad.norm() / outs[22].grad.norm())
            for h in handles:
                h.remove()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("backward signal at layer 0 over 10x the last layer's at step 0", first_last > 10)
    ctx.check(
        "loss blows up (over 100x its start or non-finite)",
        not _finite(ls) or max(ls) > 100 * ls[0],
    )


class _LogFeature(nn.Module):
    """In-model log of the creek's silt depth (the clamp that belonged here was dropped)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _GaussNet(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.logfeat = _LogFeature()
        self.fc1 = nn.Linear(dim, 48)
        self.fc2 = nn.Linear(48, 48)
        self.mean = nn.Linear(48, 1)
        self.logvar = nn.Linear(48, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.silu(self.fc2(F.silu(self.fc1(self.logfeat(x)))))
        return self.mean(h), self.logvar(h)


@scenario(
    "salt_marsh_creek_silt_gaussian_nll_net",
    "RAdam",
    "nonfinite",
    ("logfeat",),
    diverges=90,
    heldout=True,
    onset=90,
    note="in-model log(silt depth) without its clamp; the step-90 batch comes from a scoured creek "
    "bed with silt depth exactly 0, log(0) = -inf and the Gaussian NLL is NaN (RAdam)",
)
def h609_creek_silt_log_zero(ctx: Context) -> None:
    gen = seeded(6094)
    model = _GaussNet(6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    mon = ctx.attach(model, opt)
    del mon
    w = torch.randn(5, generator=gen) / 2
    produced_inf = False
    for step in range(150):
        silt = 0.05 + torch.rand(64, 1, generator=gen)  # metres, always positive
        rest = torch.randn(64, 5, generator=gen)
        if step == 90:
            silt = silt.clone()
            silt[:8] = 0.0  # scoured bed
        x = torch.cat([silt, rest], 1)
        y = (
            torch.log(silt.clamp_min(1e-3)) * 0.5
            + rest @ w[:, None]
            + 0.1 * torch.randn(64, 1, generator=gen)
        )
        if step == 90:
            with torch.no_grad():
                produced_inf = not bool(torch.isfinite(model.logfeat(x)).all())
        mean, logvar = model(x)
        loss = F.gaussian_nll_loss(mean, y, logvar.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 90", len(ls) > 90 and _finite(ls[:90]))
    ctx.check("loss non-finite at step 90", len(ls) > 90 and not math.isfinite(ls[90]))
    ctx.check("logfeat produced -inf at step 90", produced_inf)
    ctx.check("loss fell before the fault", _mean(ls[80:90]) < _mean(ls[:10]))


@scenario(
    "canoe_polo_shot_speed_silu_huber_regressor",
    "NAdam",
    "data_outlier",
    (),
    diverges=None,
    heldout=True,
    onset=100,
    note="one shard at step 100 logged paddle-blade speed in mm/s instead of m/s; loss and "
    "gradient spike at that step only, clipping and ReduceLROnPlateau, the run recovers (NAdam, "
    "Huber)",
)
def h609_canoe_polo_mm_shard(ctx: Context) -> None:
    gen = seeded(6095)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    mon = ctx.attach(model, opt)
    del mon
    batches = _regression(gen, 8)
    for step in range(200):
        x, y = next(batches)
        if step == 100:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0  # mm/s shard
        loss = F.huber_loss(model(x), y, delta=1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step(float(loss.detach()))
        ctx.step(loss)
    ls, gn = ctx.losses, ctx.grad_norms
    before = sorted(ls[90:100])[5]
    ctx.check("loss over 20x at step 100", ls[100] > 20 * before)
    ctx.check("gradient over 10x at step 100", gn[100] > 10 * sorted(gn[90:100])[5])
    ctx.check("run recovers (last 20 steps under 2x pre-onset)", _mean(ls[-20:]) < 2 * before)
    ctx.check("finite throughout", _finite(ls))


@scenario(
    "kite_buggy_gust_tip_relu_bce_classifier",
    "SGD Nesterov",
    "gradient_spike",
    (),
    diverges=None,
    heldout=True,
    onset=140,
    note="3-micro-batch gradient accumulation; the per-step loss-weight table has 100 typed for "
    "1.00 at step 140, that one step's gradient is over 30x, the logged loss is ordinary; "
    "clipping limits the update (SGD Nesterov, BCE)",
)
def h609_kite_buggy_weight_typo(ctx: Context) -> None:
    gen = seeded(6096)
    model = _Net(10, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    mon = ctx.attach(model, opt)
    del mon
    batches = _clusters(gen, 10, 2, batch=32, spread=1.5)
    weights = {140: 100.0}  # meant 1.00
    for step in range(220):
        opt.zero_grad(set_to_none=True)
        logged = 0.0
        for _ in range(3):
            x, y = next(batches)
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())
            (weights.get(step, 1.0) * loss / 3).backward()
            logged += float(loss) / 3
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(torch.tensor(logged))
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 30x at step 140", gn[140] > 30 * sorted(gn[120:140])[10])
    ctx.check("logged loss ordinary at step 140", ls[140] < 2 * max(ls[130:140]))
    ctx.check("loss fell", _mean(ls[-20:]) < 0.7 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


class _TempHead(_Net):
    def __init__(self, dim: int, hidden: int, out: int, temp: float) -> None:
        super().__init__(dim, hidden, out, nn.GELU)
        self.temp = temp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) / self.temp


@scenario(
    "handbell_choir_chime_gelu_classifier",
    "Adamax",
    "softmax_collapse",
    ("head",),
    diverges=None,
    heldout=True,
    note="config temp_ms=2.0 read as seconds: logits divided by 0.002; the softmax saturates, over "
    "40% of rows' target probability is exactly 1.0 in float32 (Adamax, cross-entropy)",
)
def h609_handbell_temp_units(ctx: Context) -> None:
    gen = seeded(6097)
    temp_ms = 2.0
    model = _TempHead(12, 48, 6, temp=temp_ms / 1000.0)  # read as seconds
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    mon = ctx.attach(model, opt)
    del mon
    batches = _clusters(gen, 12, 6)
    share = 0.0
    for step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        if step >= 140:
            p = torch.softmax(logits.detach().float(), -1).gather(1, y[:, None])
            share = max(share, float((p == 1.0).float().mean()))
    ctx.check("over 40% of rows' target probability exactly 1.0", share > 0.4)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "tatami_mat_weave_density_silu_regressor",
    "Adagrad",
    "update_ratio_out_of_range",
    ("fc1",),
    diverges=None,
    heldout=True,
    note="param groups with fc1's lr typed 1e-9 for 1e-2; fc1 never moves while fc2 and the head "
    "train (Adagrad, MSE)",
)
def h609_tatami_group_typo(ctx: Context) -> None:
    gen = seeded(6098)
    model = _Net(10, 48, 1, nn.SiLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},  # meant 1e-2
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=1e-2,
    )
    fc1_0 = model.fc1.weight.detach().clone()
    head_0 = model.head.weight.detach().clone()
    mon = ctx.attach(model, opt)
    del mon
    batches = _regression(gen, 10)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    fc1_rel = float((model.fc1.weight - fc1_0).norm() / fc1_0.norm())
    head_rel = float((model.head.weight - head_0).norm() / head_0.norm())
    ctx.check("fc1 moved under 1e-6 relative", fc1_rel < 1e-6)
    ctx.check("head moved over 1e-2 relative", head_rel > 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    "fumarole_vent_temp_decay_sign_tanh_regressor",
    "RMSprop",
    "loss_divergence",
    (),
    diverges="auto",
    heldout=True,
    note="hand-written decoupled weight decay with its sign flipped (p *= 1 + lr*wd); the weights "
    "grow steadily, the loss climbs far above its best with no single jump (RMSprop, MSE)",
)
def h609_fumarole_decay_sign(ctx: Context) -> None:
    gen = seeded(6099)
    model = _Net(8, 48, 1, nn.Tanh)
    lr, wd = 1e-3, 30.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    norm0 = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
    mon = ctx.attach(model, opt)
    del mon
    batches = _regression(gen, 8)
    for _step in range(250):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant 1 - lr * wd
        ctx.step(loss)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    norm1 = float(torch.sqrt(sum((p.detach() ** 2).sum() for p in model.parameters())))
    fin = [v for v in ls if math.isfinite(v)]
    jumps = [b / a for a, b in zip(fin[:-1], fin[1:], strict=True) if a > 0]
    ctx.check("weights' norm over 2x", norm1 > 2 * norm0)
    ctx.check("loss climbs over 10x its best", fin[-1] > 10 * min(fin))
    ctx.check("no single step jump over 3x", max(jumps) < 3.0)


@scenario(
    "dragon_boat_drum_cadence_gelu_regressor",
    "Adam",
    "adam_second_moment_poisoned",
    (),
    diverges=None,
    heldout=True,
    onset=80,
    note="a manual loss scale of 65536 left in from an fp16 experiment for step 80; that one "
    "gradient is over 1000x, fills Adam's second moment over 1e4x, and the updates afterwards "
    "shrink, the loss stalls (Adam, MSE)",
)
def h609_dragon_boat_loss_scale(ctx: Context) -> None:
    gen = seeded(60910)
    model = _Net(10, 48, 1, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mon = ctx.attach(model, opt)
    del mon
    batches = _regression(gen, 10, noise=0.1)
    v_before = v_after = 0.0
    upd: list[float] = []
    for step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        (loss * (65536.0 if step == 80 else 1.0)).backward()
        ctx.grad_norms.append(grad_norm(model))
        w0 = model.fc1.weight.detach().clone()
        opt.step()
        upd.append(float((model.fc1.weight.detach() - w0).norm()))
        if step in (79, 80):
            v = float(opt.state[model.fc1.weight]["exp_avg_sq"].max())
            if step == 79:
                v_before = v
            else:
                v_after = v
        ctx.step(loss)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 1000x at step 80", gn[80] > 1000 * sorted(gn[60:80])[10])
    ctx.check("second moment over 1e4x at step 80", v_after > 1e4 * v_before)
    ctx.check(
        "updates 30 steps on under 0.1x before", _mean(upd[110:140]) < 0.1 * _mean(upd[60:80])
    )
    ctx.check("finite throughout", _finite(ls))


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    "icicle_drip_length_swa_relu_regressor",
    "SGD momentum",
    "healthy",
    (),
    diverges=None,
    heldout=True,
    note="stochastic weight averaging: cosine decay to step 100, then SWALR holds a high constant "
    "rate (the loss jumps up and stays noisy, alarming-looking), the averaged model is updated "
    "each step and evaluated at the end; control",
)
def h609_icicle_swa(ctx: Context) -> None:
    from torch.optim.swa_utils import SWALR, AveragedModel

    gen = seeded(60911)
    model = _Net(10, 64, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=100, eta_min=1e-3)
    swa_model = AveragedModel(model)
    swa_sched = SWALR(opt, swa_lr=0.3, anneal_epochs=5, anneal_strategy="cos")
    mon = ctx.attach(model, opt)
    del mon
    batches = _regression(gen, 10, noise=0.2)
    for step in range(220):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if step >= 100:
            swa_model.update_parameters(model)
            swa_sched.step()
        else:
            cosine.step()
        ctx.step(loss)
    xe, ye = next(batches)
    for _ in range(7):
        a, b = next(batches)
        xe, ye = torch.cat([xe, a]), torch.cat([ye, b])
    with torch.no_grad():
        swa_eval = float(F.mse_loss(swa_model(xe), ye))
    ls = ctx.losses
    ctx.check("loss fell by step 100", _mean(ls[90:100]) < 0.5 * _mean(ls[:10]))
    ctx.check("averaged model's eval loss under half the start", swa_eval < 0.5 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls) and math.isfinite(swa_eval))


def _frost_images(gen: torch.Generator, batch: int = 32):
    """8x8 one-channel frost patterns: 4 classes (needles, plates, dendrites, rime specks)."""
    i, j = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    bases = torch.stack(
        [
            torch.cos(i * 1.6),
            torch.cos(j * 1.6),
            torch.cos((i + j) * 1.1),
            torch.cos(i * 0.8) * torch.cos(j * 0.8),
        ]
    )
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        shift = torch.randn(batch, 1, 1, generator=gen) * 0.3
        x = bases[y] + shift + 0.6 * torch.randn(batch, 8, 8, generator=gen)
        yield x[:, None], y


@scenario(
    "frost_fern_window_hf_vit_classifier",
    "AdamW",
    "healthy",
    (),
    diverges=None,
    heldout=True,
    note="a Hugging Face ViT built from a tiny config (8x8 one-channel images, patch 2), AdamW "
    "with param groups (no decay on norms and biases), linear warm-up + cosine, clipping, "
    "label smoothing 0.1; control",
)
def h609_frost_fern_vit(ctx: Context) -> None:
    from transformers import ViTConfig, ViTForImageClassification

    gen = seeded(60912)
    config = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ViTForImageClassification(config)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    total, warm = 150, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        ),
    )
    mon = ctx.attach(model, opt)
    del mon
    batches = _frost_images(gen)
    for _step in range(total):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(pixel_values=x).logits
        loss = F.cross_entropy(logits, y, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
    ls = ctx.losses
    ctx.check("loss fell under 0.7x its start", _mean(ls[-10:]) < 0.7 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))


@scenario(
    "shodo_brush_stroke_asgd_relu_classifier",
    "ASGD",
    "healthy",
    (),
    diverges=None,
    heldout=True,
    note="ASGD with OneCycleLR (no momentum cycling), 2-micro-batch accumulation, clipping, a tenth "
    "of labels flipped, cross-entropy; control",
)
def h609_shodo_asgd(ctx: Context) -> None:
    gen = seeded(60913)
    model = _Net(16, 64, 5, nn.ReLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=50)
    total = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.1, total_steps=total, cycle_momentum=False
    )
    mon = ctx.attach(model, opt)
    del mon
    batches = _clusters(gen, 16, 5, batch=32, spread=1.3)
    for _step in range(total):
        opt.zero_grad(set_to_none=True)
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            flip = torch.rand(len(y), generator=gen) < 0.1
            y = torch.where(flip, torch.randint(0, 5, y.shape, generator=gen), y)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y)
            (loss / 2).backward()
            logged += float(loss) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(logged))
    ls = ctx.losses
    ctx.check("loss fell under 0.6x its start", _mean(ls[-10:]) < 0.6 * _mean(ls[:10]))
    ctx.check("finite throughout", _finite(ls))
