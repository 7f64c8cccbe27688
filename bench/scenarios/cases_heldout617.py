"""Held-out set 617 (``h617_``): 10 faults over 10 causes and 3 healthy controls, 13 families.

Every model is hand-written except one Hugging Face Llama decoder built from a tiny config; the
data are generated. Each fault is induced the way it happens in practice and checked in the run.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded, text_batches

# -- shared pieces ---------------------------------------------------------------------------------


class Net(nn.Module):
    """fc1 -> act -> fc2 -> act -> head."""

    def __init__(self, d_in: int, hidden: int, d_out: int, act: type[nn.Module] = nn.SiLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def reg_batches(gen: torch.Generator, d: int = 8, batch: int = 64, noise: float = 0.05):
    """A smooth nonlinear regression target of standardised readings."""
    w = torch.randn(d, generator=gen)
    while True:
        x = torch.randn(batch, d, generator=gen)
        y = 2.0 * torch.tanh(x @ w / math.sqrt(d)) + 0.3 * torch.sin(2.0 * x[:, 0])
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, y[:, None]


def cls_batches(gen: torch.Generator, d: int = 12, classes: int = 5, batch: int = 64):
    """Readings labelled by a noisy linear teacher."""
    w = torch.randn(d, classes, generator=gen)
    while True:
        x = torch.randn(batch, d, generator=gen)
        y = (x @ w + 0.5 * torch.randn(batch, classes, generator=gen)).argmax(1)
        yield x, y


def backward_step(ctx: Context, model: nn.Module, opt: torch.optim.Optimizer, total, loss):
    total.backward()
    ctx.grad_norms.append(grad_norm(model))
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


def finite_trained(ctx: Context, k: int = 20, fall: float = 0.7) -> None:
    ls = ctx.losses
    ctx.check("all losses finite", all(math.isfinite(v) for v in ls))
    first, last = sum(ls[:k]) / k, sum(ls[-k:]) / k
    ctx.check(f"loss fell (last {k} mean < {fall} x first {k} mean)", last < fall * first)


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "kyudo_bow_string_zloss_sign_radam_classifier",
    "radam",
    "output_logit_divergence",
    where="head",
    heldout=True,
    note="z-loss coefficient typed -1e-1 for 1e-4: the penalty on logsumexp(logits)^2 rewards "
    "large logits, the head's logits grow without bound while cross-entropy is logged",
)
def h617_kyudo_zloss_sign(ctx: Context) -> None:
    gen = seeded(61701)
    model = Net(12, 48, 5, nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = cls_batches(gen)
    z_coef = -1e-1  # meant 1e-4
    scale = []
    for _ in range(200):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        total = loss + z_coef * torch.logsumexp(logits, -1).pow(2).mean()
        scale.append(float(logits.detach().abs().max()))
        backward_step(ctx, model, opt, total, loss)
    ctx.check("head logits grew over 20x", scale[-1] > 20 * scale[2])
    ctx.check("head logits still growing at the end", scale[-1] > 1.2 * scale[150])


@scenario(
    "peat_cutter_turf_density_loss_scale_adam_regressor",
    "adam",
    "adam_second_moment_poisoned",
    heldout=True,
    onset=80,
    note="a manual loss scale of 65536 left in from an fp16 experiment for step 80: one "
    "gradient over 1000x fills Adam's second moment, the updates after it shrink",
)
def h617_peat_loss_scale(ctx: Context) -> None:
    gen = seeded(61702)
    model = Net(8, 48, 1, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = reg_batches(gen)
    v_sum, upd = [], []
    for step in range(160):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        total = loss * 65536.0 if step == 80 else loss
        before = [p.detach().clone() for p in model.parameters()]
        backward_step(ctx, model, opt, total, loss)
        upd.append(
            float(
                sum(
                    (p.detach() - b).norm() ** 2
                    for p, b in zip(model.parameters(), before, strict=True)
                )
            )
            ** 0.5
        )
        v_sum.append(float(sum(opt.state[p]["exp_avg_sq"].sum() for p in model.parameters())))
    g = ctx.grad_norms
    pre = sorted(g[60:80])[10]
    ctx.check("gradient at step 80 over 1000x the median before", g[80] > 1000 * pre)
    ctx.check("second moment 60 steps on over 1e4x step 79's", v_sum[140] > 1e4 * v_sum[79])
    ctx.check(
        "updates 20-60 steps after onset under 0.1x those before",
        sum(upd[100:140]) < 0.1 * sum(upd[40:80]),
    )


@scenario(
    "wheelwright_felloe_dish_group_lr_rmsprop_regressor",
    "rmsprop",
    "update_ratio_out_of_range",
    where="fc1",
    heldout=True,
    note="three param groups, fc1's lr typed 1e-10 for 1e-3: fc1 never moves, the rest trains",
)
def h617_wheelwright_group_typo(ctx: Context) -> None:
    gen = seeded(61703)
    model = Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.RMSprop(
        [
            {"params": model.fc1.parameters(), "lr": 1e-10},  # meant 1e-3
            {"params": model.fc2.parameters(), "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 1e-3},
        ]
    )
    ctx.attach(model, opt)
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    batches = reg_batches(gen)
    for _ in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        backward_step(ctx, model, opt, loss, loss)
    r1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    r2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", r1 < 1e-6)
    ctx.check("fc2 moved over 1e-2 of its norm", r2 > 1e-2)


@scenario(
    "koto_bridge_tuning_sgd_lr_typo_tanh_regressor",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="SGD lr typed 3.0 for 0.03: far past 2/sharpness of the head's quadratic, blows up",
)
def h617_koto_lr_typo(ctx: Context) -> None:
    gen = seeded(61704)
    model = Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=3.0)  # meant 0.03
    ctx.attach(model, opt)
    batches = reg_batches(gen)
    for _ in range(80):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        backward_step(ctx, model, opt, loss, loss)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    blew = (not math.isfinite(ls[-1])) or max(ls) > 100 * ls[0]
    ctx.check("loss blew up (non-finite or over 100x its first value)", blew)


class DeepReLU(nn.Module):
    def __init__(self, d_in: int, width: int, depth: int, gain: float) -> None:
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
            with torch.no_grad():
                lin.weight.mul_(gain)  # a stray gain left after the kaiming init
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.outs = []
        for lin in self.layers:
            x = lin(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x)


@scenario(
    "hammer_throw_wire_release_deep_gain_mlp",
    "sgd_mom",
    "exploding_gradients",
    where="layers.0",
    diverges="auto",
    heldout=True,
    note="12-deep ReLU MLP, a stray gain of 1.3 multiplied in after kaiming init: the backward "
    "signal grows through depth, layer 0's gradient is the largest, blows up",
)
def h617_hammer_deep_gain(ctx: Context) -> None:
    gen = seeded(61705)
    model = DeepReLU(8, 32, 12, 1.3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ctx.attach(model, opt)
    batches = reg_batches(gen)
    ratio = None
    for _ in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if ratio is None:
            ratio = float(model.outs[0].grad.norm() / model.outs[-1].grad.norm())
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("backward signal at layer 0 over 10x the last hidden layer's at step 0", ratio > 10)
    blew = (not math.isfinite(ls[-1])) or max(ls) > 100 * ls[0]
    ctx.check("loss blew up (non-finite or over 100x its first value)", blew)


class LogFeature(nn.Module):
    """log of the hygrometer reading (no clamp)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class FrostNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.log_rh = LogFeature()
        self.net = Net(6, 32, 1, nn.SiLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.log_rh(x))


@scenario(
    "hoarfrost_crystal_length_log_humidity_nadam_net",
    "nadam",
    "nonfinite",
    where="log_rh",
    diverges=80,
    onset=80,
    heldout=True,
    note="in-model log(relative humidity) with no clamp; a hygrometer reads exactly 0 in the batch "
    "at step 80: log 0 = -inf, the loss is NaN",
)
def h617_hoarfrost_log_zero(ctx: Context) -> None:
    gen = seeded(61706)
    model = FrostNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    w = torch.randn(5, generator=gen)
    for step in range(150):
        rh = 0.3 + 0.7 * torch.rand(64, 1, generator=gen)
        if step == 80:
            rh[7] = 0.0  # dead hygrometer
        rest = torch.randn(64, 5, generator=gen)
        y = 1.5 * torch.log(rh.clamp_min(1e-3)) + 0.5 * torch.tanh(rest @ w[:, None])
        x = torch.cat([rh, rest], 1)
        loss = F.huber_loss(model(x), y)
        backward_step(ctx, model, opt, loss, loss)
        if not math.isfinite(ctx.losses[-1]):
            break
    ls = ctx.losses
    ctx.check("losses finite before step 80", all(math.isfinite(v) for v in ls[:80]))
    ctx.check("loss non-finite at step 80", len(ls) > 80 and not math.isfinite(ls[80]))


@scenario(
    "kabaddi_raid_touch_accum_multiplier_bce_classifier",
    "adamax",
    "gradient_spike",
    heldout=True,
    onset=100,
    note="8-micro-batch accumulation; for step 100 the divisor is applied as a multiplier (loss*8 "
    "instead of loss/8): one gradient over 30x, the logged loss ordinary, clipped, recovers",
)
def h617_kabaddi_accum_bug(ctx: Context) -> None:
    gen = seeded(61707)
    model = Net(10, 48, 1, nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    w = torch.randn(10, generator=gen)
    accum = 8
    pre_clip = []
    for step in range(180):
        logged = 0.0
        for _ in range(accum):
            x = torch.randn(16, 10, generator=gen)
            y = ((x @ w + 0.3 * torch.randn(16, generator=gen)) > 0).float()
            loss = F.binary_cross_entropy_with_logits(model(x).squeeze(1), y)
            part = loss * accum if step == 100 else loss / accum  # the bug, one step
            part.backward()
            logged += float(loss) / accum
        pre_clip.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        ctx.grad_norms.append(pre_clip[-1])
        opt.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    med = sorted(pre_clip[80:100])[10]
    lmed = sorted(ctx.losses[80:100])[10]
    ctx.check("pre-clip gradient at step 100 over 30x the median before", pre_clip[100] > 30 * med)
    ctx.check("logged loss at step 100 under 2x the median before", ctx.losses[100] < 2 * lmed)


@scenario(
    "fjord_sill_tide_depth_shard_units_huber_regressor",
    "adamw",
    "data_outlier",
    heldout=True,
    onset=110,
    note="one shard of tide-gauge records in centimetres instead of metres (inputs and targets "
    "x100) at step 110: loss over 20x, gradient over 10x, clipped, the run recovers",
)
def h617_fjord_shard_units(ctx: Context) -> None:
    gen = seeded(61708)
    model = Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    ctx.attach(model, opt)
    batches = reg_batches(gen)
    pre_clip = []
    for step in range(200):
        x, y = next(batches)
        if step == 110:
            x, y = x * 100.0, y * 100.0  # the bad shard
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        pre_clip.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        ctx.grad_norms.append(pre_clip[-1])
        opt.step()
        sched.step(float(loss))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    lmed = sorted(ls[90:110])[10]
    gmed = sorted(pre_clip[90:110])[10]
    ctx.check("loss at step 110 over 20x the median before", ls[110] > 20 * lmed)
    ctx.check("gradient at step 110 over 10x the median before", pre_clip[110] > 10 * gmed)
    ctx.check("recovered (last 20 mean under 2x the median before)", sum(ls[-20:]) / 20 < 2 * lmed)


@scenario(
    "yodel_register_break_decay_sign_adagrad_regressor",
    "adagrad",
    "loss_divergence",
    heldout=True,
    note="hand-written decoupled weight decay with its sign flipped (p *= 1 + lr*wd): weights "
    "grow steadily, the loss climbs with no jump",
)
def h617_yodel_decay_sign(ctx: Context) -> None:
    gen = seeded(61709)
    model = Net(8, 48, 1, nn.GELU)
    lr, wd = 2e-2, 0.35
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = reg_batches(gen)
    norm0 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    for _ in range(240):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant 1 - lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    norm1 = float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5)
    best = min(ls)
    smooth = [sum(ls[i : i + 10]) / 10 for i in range(0, len(ls) - 9)]
    ctx.check("weights over 2x their initial norm", norm1 > 2 * norm0)
    ctx.check("loss climbs to over 3x its best", smooth[-1] > 3 * best)
    ctx.check(
        "no jump (no step's loss over 3x the previous step's)",
        all(b < 3 * a for a, b in zip(ls[1:], ls[2:], strict=False)),
    )


@scenario(
    "mbira_tine_buzz_ms_temperature_classifier",
    "adamw",
    "softmax_collapse",
    where="head",
    heldout=True,
    note="temperature configured as temp_ms=2.0 and read as seconds: logits divided by 0.002, "
    "the softmax saturates, most rows' target probability rounds to exactly 1.0",
)
def h617_mbira_temperature(ctx: Context) -> None:
    gen = seeded(61710)
    model = Net(12, 48, 5, nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    ctx.attach(model, opt)
    batches = cls_batches(gen)
    temp = 2.0 / 1000.0  # temp_ms=2.0 read as seconds
    frac = 0.0
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temp
        loss = F.cross_entropy(logits, y)
        p = torch.softmax(logits.detach().float(), -1)
        frac = float((p.gather(1, y[:, None]) == 1.0).float().mean())
        backward_step(ctx, model, opt, loss, loss)
    ctx.check("over 40% of rows' target probability exactly 1.0 at the end", frac > 0.4)


# -- healthy controls ------------------------------------------------------------------------------


@scenario(
    "shot_put_glide_release_ema_pseudo_label_classifier",
    "adam",
    "healthy",
    heldout=True,
    note="semi-supervised: labelled loss plus cross-entropy on confident (p > 0.8) pseudo-labels "
    "from an EMA teacher refreshed every 50 steps; the loss jumps a little at each refresh (alarming-looking "
    "control)",
)
def h617_shot_put_ema_teacher(ctx: Context) -> None:
    gen = seeded(61711)
    model = Net(12, 48, 5, nn.SiLU)
    ema = copy.deepcopy(model)
    teacher = copy.deepcopy(model)
    for m in (ema, teacher):
        m.requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    w = torch.randn(12, 5, generator=gen)

    def draw(n: int):
        x = torch.randn(n, 12, generator=gen)
        return x, (x @ w + 0.5 * torch.randn(n, 5, generator=gen)).argmax(1)

    refreshes = []
    pool, _ = draw(512)  # the unlabelled pool
    lab_x, lab_y = draw(128)  # the few labelled throws
    for step in range(250):
        if step > 0 and step % 50 == 0:
            teacher.load_state_dict(ema.state_dict())
            refreshes.append(step)
        x, y = lab_x, lab_y
        xu = pool
        ctx.targets(y)
        with torch.no_grad():
            conf, pseudo = torch.softmax(teacher(xu), -1).max(1)
            keep = (conf > 0.8).float()  # only confident pseudo-labels count
        per = F.cross_entropy(model(xu), pseudo, reduction="none")
        loss = F.cross_entropy(model(x), y) + (keep * per).mean()
        backward_step(ctx, model, opt, loss, loss)
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.mul_(0.98).add_(pm, alpha=0.02)
    finite_trained(ctx)
    ls = ctx.losses
    jumps = sum(ls[s] > 1.2 * ls[s - 1] for s in refreshes)
    ctx.check("loss jumps over 20% at 2 or more teacher refreshes", jumps >= 2)
    xt, yt = draw(512)
    acc = float((model(xt).argmax(1) == yt).float().mean())
    ctx.check("held-out accuracy over 0.6", acc > 0.6)


@scenario(
    "boules_pitch_call_sequence_llama_decoder",
    "adamw",
    "healthy",
    heldout=True,
    note="Hugging Face Llama causal LM from a tiny config, AdamW, linear warm-up + cosine, "
    "clipping at 1.0 (control)",
)
def h617_boules_llama(ctx: Context) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    gen = seeded(61712)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps, warm = 150, 15

    def lr_at(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    for _ in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 128), y.reshape(-1))
        loss.backward()
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    finite_trained(ctx)


class ReedConv(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


@scenario(
    "thatch_reed_bundle_fp16_onecycle_conv1d_classifier",
    "sgd_nesterov",
    "healthy",
    heldout=True,
    note="conv1d classifier of tap-tone signals, fp16 autocast + GradScaler, SGD Nesterov, "
    "OneCycleLR, label smoothing 0.1, 2-micro-batch accumulation, clipping (control)",
)
def h617_thatch_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(61713)
    model = ReedConv()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    ctx.attach(model, opt, scaler=scaler)
    t = torch.linspace(0, 1, 64)
    freqs = torch.tensor([3.0, 6.0, 10.0, 15.0])

    def draw(n: int):
        y = torch.randint(0, 4, (n,), generator=gen)
        phase = 6.28 * torch.rand(n, 1, generator=gen)
        x = torch.sin(6.28 * freqs[y][:, None] * t + phase)
        return x + 0.3 * torch.randn(n, 64, generator=gen), y

    for _ in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = draw(32)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
            scaler.scale(loss / 2).backward()
            logged += float(loss) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 1.0)))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    finite_trained(ctx)
    ctx.check(
        "grad scale finite and positive", math.isfinite(ctx.scales[-1]) and ctx.scales[-1] > 0
    )
