"""Held-out set 628 (``h628_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data or scikit-learn's bundled digits, and one Hugging Face MaskFormer-Swin
backbone built from a tiny config."""

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
    scenario,
    seeded,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches: a fixed smooth map of standard-normal sensor readings."""
    w1 = torch.randn(n_in, 12, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(12, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


class Net3(nn.Module):
    def __init__(self, n_in: int, hidden: int, out: int, act=F.silu) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, out)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="cooper_hoop_driving_tension_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-written L2 penalty subtracted from the loss (loss - wd*|w|^2, a sign typo): the "
    "weights grow steadily and the MSE climbs slowly to over 3x its best with no jump",
)
def h628_cooper_hoop_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(6281)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    wd = 4e-2
    w0 = float(_flat(model).norm())
    for _ in range(240):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        (loss - wd * penalty).backward()  # bug: should be + wd * penalty
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    w1 = float(_flat(model).norm())
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
    family="millrace_sluice_flow_fp16_silu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 80 a new logger writes the sluice flow in mL/s "
    "instead of m^3/s (factor 1e6, no conversion), fc1's fp16 output overflows to inf",
)
def h628_millrace_sluice_fp16_units(ctx: Context) -> None:
    gen = seeded(6282)
    model = Net3(8, 32, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    seen: dict[str, torch.Tensor] = {}
    model.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", o.detach()))
    onset = 80
    for step in range(onset + 15):
        x, y = next(batches)
        if step >= onset:
            x = x.clone()
            x[:, 0] = (x[:, 0] + 2.0) * 1e6  # mL/s written where m^3/s was expected
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == onset:
            ctx.check(
                "fc1's fp16 output non-finite at onset", not bool(seen["fc1"].isfinite().all())
            )
            with torch.no_grad():
                ctx.check("same batch finite in float32", bool(model.fc1(x).isfinite().all()))
            ctx.check("loss non-finite at onset", not math.isfinite(float(loss.detach())))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("finite before onset", _finite(ctx.losses[:onset]))
    ctx.check("loss fell before onset", sum(ctx.losses[70:80]) < 0.7 * sum(ctx.losses[:10]))


@scenario(
    family="tightrope_walker_pole_sway_silu_regressor",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="three param groups; fc2's lr typed 1e-9 instead of 1e-3 in the config, so fc2 never "
    "moves while fc1 and fc3 train (the loss still falls)",
)
def h628_tightrope_pole_group_lr_typo(ctx: Context) -> None:
    gen = seeded(6283)
    model = Net3(8, 32, 1)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-3},
            {"params": model.fc2.parameters(), "lr": 1e-9},  # typo for 1e-3
            {"params": model.fc3.parameters(), "lr": 1e-3},
        ],
        alpha=0.99,
    )
    ctx.attach(model, opt)
    batches = _readings(gen)
    w2 = model.fc2.weight.detach().clone()
    w1 = model.fc1.weight.detach().clone()
    for _ in range(160):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    d2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    ctx.check("fc2 moved under 1e-5 of its norm", d2 < 1e-5)
    ctx.check("fc1 moved over 1e-2 of its norm", d1 > 1e-2)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.7 * sum(ctx.losses[:10]))
    ctx.check("finite", _finite(ctx.losses))


def _top_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters()]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="scree_slope_boulder_runout_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="plain SGD with lr typed 0.9 for 0.009 (a dropped zero); lr x top Hessian eigenvalue "
    "is over 2 from the start, the loss oscillates and blows up",
)
def h628_scree_runout_lr_typo(ctx: Context) -> None:
    gen = seeded(6284)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1)
    )
    lr = 0.9  # meant 0.009
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _readings(gen)
    x0, y0 = next(batches)
    sharp = _top_eig(model, lambda: F.mse_loss(model(x0), y0))
    ctx.check("lr x sharpness over 2 at start", lr * sharp > 2.0)
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check(
        "loss blew up over 100x its start",
        (not _finite(ls)) or max(ls) > 100 * ls[0],
    )


@scenario(
    family="fumarole_vent_plume_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("0",),
    diverges=None,
    heldout=True,
    note="16-deep tanh MLP whose init helper was called with gain=4.0 (meant 1.0): the "
    "backward pass grows through depth, layer 0's gradient is over 10x the "
    "last layer's; SGD with Nesterov momentum and no clipping",
)
def h628_fumarole_plume_init_gain(ctx: Context) -> None:
    gen = seeded(6285)
    sizes = [8] + [32] * 15 + [1]
    layers: list[nn.Module] = []
    for i in range(16):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < 15:
            layers.append(nn.Tanh())
    model = nn.Sequential(*layers)
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=4.0 / math.sqrt(m.in_features))  # gain typo
            nn.init.zeros_(m.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratios = []
    for _ in range(80):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(float(model[0].weight.grad.norm() / model[30].weight.grad.norm()))
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("layer 0's gradient over 10x the last layer's", _median(ratios[:20]) > 10.0)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="peat_bog_core_carbon_silu_huber_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="one shard of core samples logged in mg/cm^3 instead of g/cm^3 (x1000 on the density "
    "columns) arrives at step 100: the Huber loss is over 20x and the gradient over 10x for "
    "that batch; clipping at 1.0 keeps the run, which recovers",
)
def h628_peat_core_bad_shard(ctx: Context) -> None:
    gen = seeded(6286)
    model = Net3(8, 32, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset = 100
    for step in range(180):
        x, y = next(batches)
        if step == onset:
            x = x.clone()
            x[:, :3] = x[:, :3] * 1000.0
            y = y * 1000.0
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("loss over 20x at onset", ls[onset] > 20 * _median(ls[onset - 10 : onset]))
    ctx.check("gradient over 10x at onset", gs[onset] > 10 * _median(gs[onset - 10 : onset]))
    ctx.check(
        "recovers within 30 steps",
        sum(ls[onset + 30 : onset + 40]) / 10 < 2 * _median(ls[onset - 10 : onset]),
    )
    ctx.check("finite", _finite(ls))


@scenario(
    family="canoe_polo_goal_shot_relu_bce_classifier",
    optimizer="Adagrad",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="4 micro-batch gradient accumulation; at step 90 a resume path rebuilds the loss "
    "scale as accum*batch instead of 1/accum (one step), the gradient is over 30x while the "
    "logged loss is ordinary; clipped at 1.0, the run goes on",
)
def h628_canoe_polo_accum_scale(ctx: Context) -> None:
    gen = seeded(6287)
    model = Net3(12, 32, 1, act=F.relu)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    batches = _labels(gen, k=2, batch=16)
    accum, onset = 4, 90
    for step in range(150):
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y.float())
            scale = accum * 16 if step == onset else 1.0 / accum  # bug on the resume path
            (loss * scale).backward()
            total += float(loss) / accum
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("gradient over 30x at onset", gs[onset] > 30 * _median(gs[onset - 10 : onset]))
    ctx.check("logged loss ordinary at onset", ls[onset] < 2 * _median(ls[onset - 10 : onset]))
    ctx.check("loss fell", sum(ls[-10:]) < 0.8 * sum(ls[:10]))
    ctx.check("finite", _finite(ls))


class LogFeature(nn.Module):
    """log of the (positive) flow reading, appended to the readings; its clamp was dropped."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.log(x[:, :1])], 1)  # missing .clamp_min(1e-6)


class GaussNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.logf = LogFeature()
        self.body = Net3(9, 32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.logf(x))


@scenario(
    family="maple_syrup_evaporator_boil_gaussian_nll_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("logf",),
    diverges=80,
    onset=80,
    heldout=True,
    note="in-model log(sap flow) without its clamp; at step 80 a stuck flow meter reports 0.0 "
    "for a row, log(0) = -inf, the Gaussian NLL is NaN",
)
def h628_maple_evaporator_log_zero(ctx: Context) -> None:
    gen = seeded(6288)
    model = GaussNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    onset = 80
    for step in range(120):
        x, y = next(batches)
        x = x.clone()
        x[:, 0] = x[:, 0].abs() + 0.1  # flow readings are positive
        if step == onset:
            x[3, 0] = 0.0  # stuck meter
        out = model(x)
        mean, logvar = out[:, :1], out[:, 1:]
        loss = F.gaussian_nll_loss(mean, y, logvar.exp())
        loss.backward()
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("finite before onset", _finite(ls[:onset]))
    ctx.check("loss NaN at onset", len(ls) == onset + 1 and math.isnan(ls[onset]))
    ctx.check("loss fell before onset", sum(ls[70:80]) < sum(ls[:10]))


@scenario(
    family="kite_fighting_manja_glass_coat_gelu_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("fc3",),
    diverges=None,
    heldout=True,
    note="softmax temperature written as 5 (tenths, meaning 0.5) and read as ms, divided by "
    "1000: the logits are divided by 0.005, over 10% of rows' target probability rounds to exactly 1.0 in float32",
)
def h628_kite_manja_temperature_units(ctx: Context) -> None:
    gen = seeded(6289)
    model = Net3(64, 48, 10, act=F.gelu)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    temperature = 5.0 / 1000.0  # bug: 5 was tenths (0.5), read as ms
    fracs = []
    for _ in range(260):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        loss = F.cross_entropy(logits, y)
        loss.backward()
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        fracs.append(collapsed_fraction(logits.detach(), y))
    ctx.check("over 10% of rows collapsed late", sum(fracs[-20:]) / 20 > 0.1)
    ctx.check("none collapsed at the start", fracs[0] < 0.05)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="ski_jump_hill_landing_grade_relu_classifier",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="fc2's bias initialised to -4.0 by a helper copied from a gating layer's init: over "
    "80% of fc2's ReLU units never fire, they get no gradient and the loss stalls",
)
def h628_ski_jump_dead_bias_init(ctx: Context) -> None:
    gen = seeded(6290)
    model = Net3(12, 64, 5, act=F.relu)
    nn.init.constant_(model.fc2.bias, -4.0)  # copied gate init
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    ctx.attach(model, opt)
    batches = _labels(gen)
    dead = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            dead.append(dead_fraction(model.fc2(F.relu(model.fc1(x)))))
    ls = ctx.losses
    ctx.check("over 80% of fc2 units dead at the end", dead[-1] > 0.8)
    ctx.check("loss stalls above 80% of its start", sum(ls[-10:]) > 0.8 * sum(ls[:10]))
    ctx.check("finite", _finite(ls))


# -- healthy controls -------------------------------------------------------------------------------


class SwinDigits(nn.Module):
    """A Hugging Face MaskFormer-Swin backbone from a tiny config, with a linear head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import MaskFormerSwinConfig, MaskFormerSwinModel

        config = MaskFormerSwinConfig(
            image_size=8,
            patch_size=2,
            num_channels=1,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=2,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            drop_path_rate=0.0,
        )
        self.backbone = MaskFormerSwinModel(config)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x.reshape(-1, 1, 8, 8)).pooler_output)


@scenario(
    family="signal_flag_hoist_maskformer_swin_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="healthy but alarming-looking: a Hugging Face MaskFormer-Swin from a tiny config "
    "trained on batches of 4 digit images (flag hoists) with Adam and a 20-step linear "
    "warm-up; the loss and gradient scatter several-fold from step to step, the trend falls",
)
def h628_signal_flag_swin_batch4(ctx: Context) -> None:
    gen = seeded(6291)
    model = SwinDigits()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    ctx.attach(model, opt)
    batches = digit_batches(gen, 4)
    for _ in range(240):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None])
                )
            )
        )
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, gs = ctx.losses, ctx.grad_norms
    late = ls[-40:]
    ctx.check("loss fell", sum(late) / 40 < 0.6 * sum(ls[:20]) / 20)
    ctx.check("late losses scatter over 3x", max(late) > 3 * max(min(late), 1e-3))
    ctx.check("gradient scatters over 3x", max(gs[-40:]) > 3 * min(gs[-40:]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="bouldering_crimp_grip_hold_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: AdamW with two param groups (no decay on biases), OneCycleLR, label "
    "smoothing 0.1, clipping at 1.0 on digit batches of 64",
)
def h628_bouldering_grip_onecycle(ctx: Context) -> None:
    gen = seeded(6292)
    model = Net3(64, 64, 10, act=F.gelu)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 5e-2}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell", sum(ls[-10:]) < 0.5 * sum(ls[:10]))
    ctx.check("finite", _finite(ls))


@scenario(
    family="bobsled_push_start_split_silu_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="control: SGD with momentum, 2 micro-batch gradient accumulation, ReduceLROnPlateau "
    "on the logged loss, noisy small batches of 16, MSE",
)
def h628_bobsled_push_plateau(ctx: Context) -> None:
    gen = seeded(6293)
    model = Net3(8, 32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    ctx.attach(model, opt)
    batches = _readings(gen, batch=16, noise=0.1)
    for _ in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            (loss / 2).backward()
            total += float(loss) / 2
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        opt.step()
        sched.step(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell", sum(ls[-20:]) < 0.6 * sum(ls[:20]))
    ctx.check("finite", _finite(ls))
