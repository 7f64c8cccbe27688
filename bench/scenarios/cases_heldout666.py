"""Held-out set 666 (``h666_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face Kolibri1 causal LM built from a tiny config."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64, flip: float = 0.0):
    """Endless (x, y) batches: y is the argmax of a fixed linear score (a share flipped)."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = (x @ w).argmax(1)
        if flip > 0:
            noisy = torch.rand(batch, generator=gen) < flip
            y = torch.where(noisy, torch.randint(0, k, (batch,), generator=gen), y)
        yield x, y


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _sharpness(model: nn.Module, loss_fn, iters: int = 12) -> float:
    """Top Hessian eigenvalue of ``loss_fn(model)`` by power iteration on Hessian-vector products."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


def _tiny_kolibri(vocab: int = 128):
    from transformers import Kolibri1Config, Kolibri1ForCausalLM

    config = Kolibri1Config(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        moe_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        shared_expert_intermediate_size=32,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        use_cache=False,
    )
    return Kolibri1ForCausalLM(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="glima_wrestling_throw_prior_centred_target_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a glima-wrestling throw classifier trained with soft-target cross-entropy; a refactor "
    "'centred' the target rows by subtracting the uniform class prior (one_hot - 1/K), so every "
    "wrong class carries a negative weight -0.2 and the loss is unbounded below: the head pushes "
    "the wrong classes' log-probabilities to minus infinity, its logits grow without bound and the "
    "loss runs below zero",
)
def h666_glima_throw_centred_targets(ctx: Context) -> None:
    gen = seeded(6661)

    class ThrowNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 32)
            self.fc2 = nn.Linear(32, 32)
            self.head = nn.Linear(32, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))

    model = ThrowNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    peaks: list[float] = []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        peaks.append(float(logits.detach().abs().max()))
        target = F.one_hot(y, 5).float() - 1.0 / 5  # bug: prior subtracted from the targets
        loss = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("head logits grew over 20x", _median(peaks[-10:]) > 20 * _median(peaks[:5]))
    ctx.check("loss below -5 and still falling", ls[-1] < -5 and ls[-1] < ls[-30] - 1)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="sipa_footbag_keep_up_drop_hand_bce_classifier",
    optimizer="Adam",
    cause="nonfinite",
    where=("head",),
    diverges=27,
    heldout=True,
    note="a sipa (footbag) keep-up drop classifier with a hand-rolled binary cross-entropy, "
    "-(y log p + (1 - y) log(1 - p)) on p = sigmoid(head), with no clamp or eps; the data are "
    "nearly separable, the head's logits pass ~17, float32 rounds p to exactly 1.0 for a dropped "
    "kick and (1 - y) * log(1 - p) = 0 * -inf gives a NaN loss",
)
def h666_sipa_drop_hand_bce(ctx: Context) -> None:
    gen = seeded(6662)

    class DropNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(10, 32)
            self.head = nn.Linear(32, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc1(x))).squeeze(1)

    model = DropNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    w = torch.randn(10, generator=gen)
    nan_at = None
    saturated = False
    for step in range(200):
        x = torch.randn(64, 10, generator=gen)
        y = ((x @ w) > 0).float()
        ctx.targets(y.long())
        z = model(x)
        p = torch.sigmoid(z)
        loss = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # bug: no clamp / eps
        if not math.isfinite(float(loss.detach())):
            saturated = bool(((p == 1.0) & (y == 1.0)).any() or ((p == 0.0) & (y == 0.0)).any())
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            nan_at = step
            break
    ls = ctx.losses
    ctx.check(f"loss NaN at step {nan_at}", nan_at is not None and math.isnan(ls[-1]))
    ctx.check("loss finite before it", nan_at is not None and _finite(ls[:-1]))
    ctx.check("a probability rounded to exactly 0 or 1 where log of 0 was taken", saturated)


@scenario(
    family="sackbut_slide_position_conv1d_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("conv1", "conv2"),
    diverges=None,
    heldout=True,
    note="a sackbut slide-position regressor (conv1d over a breath-pressure trace) trained with "
    "two param groups read from a sweep sheet; the conv stack's rate was typed 1e-8 for 1e-2, so "
    "conv1 and conv2 barely move (updates ~1e-9 of their weights) while the head trains on "
    "frozen random features",
)
def h666_sackbut_slide_conv_lr_typo(ctx: Context) -> None:
    gen = seeded(6663)

    class SlideNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
            self.conv2 = nn.Conv1d(8, 8, 5, padding=2)
            self.head = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.gelu(self.conv2(F.gelu(self.conv1(x[:, None, :]))))
            return self.head(h.mean(2))

    model = SlideNet()
    sheet = {"head_lr": "1e-2", "conv_lr": "1e-8"}  # typo: 1e-8 for 1e-2
    convs = [p for n, p in model.named_parameters() if n.startswith("conv")]
    opt = torch.optim.NAdam(
        [
            {"params": convs, "lr": float(sheet["conv_lr"])},
            {"params": model.head.parameters(), "lr": float(sheet["head_lr"])},
        ]
    )
    ctx.attach(model, opt)
    before = [p.detach().clone() for p in convs]
    t = torch.linspace(0, 1, 32)
    for _step in range(200):
        freq = 2 + 6 * torch.rand(64, 1, generator=gen)
        amp = 0.5 + torch.rand(64, 1, generator=gen)
        x = amp * torch.sin(2 * math.pi * freq * t) + 0.05 * torch.randn(64, 32, generator=gen)
        y = (freq - 5.0) / 2.0 + 0.5 * amp
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    rel = max(float((p.detach() - b).norm() / b.norm()) for p, b in zip(convs, before, strict=True))
    ctx.check(f"conv weights moved under 1e-4 relative ({rel:.1e})", rel < 1e-4)
    ctx.check("head trained: loss fell 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))


@scenario(
    family="stucco_float_cure_hardness_huber_regressor",
    optimizer="SGD (Nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="a stucco float-finish cure-hardness SiLU Huber regressor; one plasterer's shard at step "
    "100 logged the wall moisture column in per-mille for per-unit (x 1000), one batch with inputs "
    "1000x off; loss and gradient spike, clipping bounds the update and the run recovers",
)
def h666_stucco_cure_permille_shard(ctx: Context) -> None:
    gen = seeded(6664)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _readings(gen)
    norms: list[float] = []
    for step in range(200):
        x, y = next(batches)
        if step == 100:
            x = x.clone()
            x[:, 3] = x[:, 3] * 1000.0  # the bad shard: moisture in per-mille
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss at step 100 over 20x the median before", ls[100] > 20 * _median(ls[80:100]))
    ctx.check("gradient at step 100 over 10x", norms[100] > 10 * _median(norms[80:100]))
    ctx.check(
        "recovered: last loss under 2x the pre-shard median",
        _median(ls[-10:]) < 2 * _median(ls[80:100]),
    )


@scenario(
    family="schwingen_sawdust_ring_throw_accumulation_relu_classifier",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=90,
    note="a schwingen (Swiss wrestling) throw classifier with 8-micro-batch accumulation; on the "
    "resume step 90 the accumulation divisor was restored from the checkpoint's per-micro-batch "
    "weight (1/8) instead of the count (8), so each micro-batch loss is divided by 0.125: a 64x "
    "gradient for one step while the logged loss is ordinary; clipping bounds the update",
)
def h666_schwingen_throw_accum_resume(ctx: Context) -> None:
    gen = seeded(6665)
    model = nn.Sequential(
        nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 5)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _labels(gen, batch=16, flip=0.05)
    accum = 8
    norms: list[float] = []
    for step in range(150):
        divisor = 1 / accum if step == 90 else accum  # bug on resume: weight restored as count
        logged = 0.0
        for _ in range(accum):
            x, y = next(batches)
            ctx.targets(y)
            micro = F.cross_entropy(model(x), y)
            (micro / divisor).backward()
            logged += float(micro.detach()) / accum
        norms.append(grad_norm(model))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("gradient at step 90 over 30x the median", norms[90] > 30 * _median(norms[70:90]))
    ctx.check("logged loss at 90 ordinary (under 1.5x)", ls[90] < 1.5 * _median(ls[70:90]))
    ctx.check("trained: loss fell 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="ophicleide_key_pad_leak_deep_tanh_regressor",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="an ophicleide key-pad leak regressor, a 14-layer tanh MLP; the init helper drew every "
    "weight with std 3/sqrt(fan_in) (gain 3 for tanh's 5/3), the chaotic regime: the backward "
    "signal grows layer by layer towards the input and the first layer's gradient is far above "
    "the last hidden layer's; gradients are clipped",
)
def h666_ophicleide_tanh_gain(ctx: Context) -> None:
    gen = seeded(6666)

    class LeakNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8 if i == 0 else 32, 32) for i in range(14))
            self.out = nn.Linear(32, 1)
            for lin in self.layers:
                nn.init.normal_(lin.weight, std=3.0 / math.sqrt(lin.in_features))  # bug: gain 3
                nn.init.zeros_(lin.bias)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for lin in self.layers:
                x = torch.tanh(lin(x))
            return self.out(x)

    model = LeakNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratios: list[float] = []
    for _step in range(100):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        first = float(model.layers[0].weight.grad.norm())
        last = float(model.layers[-1].weight.grad.norm())
        ratios.append(first / max(last, 1e-30))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        f"first layer's gradient over 10x the last hidden's at start ({ratios[0]:.0f}x)",
        ratios[0] > 10,
    )
    ctx.check("still over 10x at the end", _median(ratios[-10:]) > 10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="tejo_disc_mecha_throw_exponential_lr_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a tejo (Colombian disc throw) landing-distance tanh regressor with ExponentialLR whose "
    "gamma was typed 1.05 for 0.95: the rate grows 5% a step from 0.02, lr x sharpness passes 2 "
    "and the loss blows up",
)
def h666_tejo_throw_gamma_typo(ctx: Context) -> None:
    gen = seeded(6667)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=1.05)  # typo: 1.05 for 0.95
    ctx.attach(model, opt)
    batches = _readings(gen)
    probe_x, probe_y = next(batches)
    products: list[float] = []
    for step in range(150):
        x, y = next(batches)
        if step % 5 == 0 and _finite(ctx.losses):
            lam = _sharpness(model, lambda m: F.mse_loss(m(probe_x), probe_y))
            products.append(opt.param_groups[0]["lr"] * lam)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)) or float(loss) > 1e6:
            break
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    ctx.check("lr x sharpness under 2 at the start", products[0] < 2)
    ctx.check(f"lr x sharpness passed 2 (max {max(products):.1f})", max(products) > 2)
    ctx.check("loss blew up over 100x its low", not _finite(ls[-1:]) or ls[-1] > 100 * low)


@scenario(
    family="ice_volcano_vent_stage_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="an ice-volcano (lake-shore ice cone) vent-stage classifier whose softmax temperature is "
    "kept as log T; its buffer was initialised at -6 (copied from a contrastive model's log "
    "logit scale) so T = exp(-6) and the logits are multiplied by ~400: the softmax saturates and "
    "most rows round to p = 1.0 exactly",
)
def h666_ice_volcano_log_temp_init(ctx: Context) -> None:
    gen = seeded(6668)

    class StageNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 32)
            self.head = nn.Linear(32, 5)
            self.register_buffer("log_t", torch.tensor(-6.0))  # bug: should be 0.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc1(x))) / self.log_t.exp()

    model = StageNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _labels(gen)
    fracs: list[float] = []
    for _step in range(120):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        fracs.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(f"over half the rows at p = 1.0 (last {fracs[-1]:.2f})", _median(fracs[-10:]) > 0.5)
    ctx.check("loss finite throughout", _finite(ctx.losses))


@scenario(
    family="fresco_intonaco_set_time_decay_sign_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="a fresco intonaco set-time SiLU regressor with a hand-written decoupled weight decay "
    "after RMSprop's step whose sign was flipped (p += lr * wd * p), wd 6: the weights grow a "
    "little every step and the loss climbs slowly from its low",
)
def h666_fresco_set_time_decay_sign(ctx: Context) -> None:
    gen = seeded(6669)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.SiLU(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, 1)
    )
    lr, wd = 1e-3, 6.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)
    ctx.attach(model, opt)
    batches = _readings(gen)
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    for _step in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.add_(p, alpha=lr * wd)  # bug: sign flipped, should be alpha=-lr * wd
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    low = min(_median(ls[i : i + 10]) for i in range(0, len(ls) - 10, 10))
    ctx.check(f"weight norm over 2x ({w1 / w0:.1f}x)", w1 > 2 * w0)
    ctx.check("loss climbs over 3x from its low", _median(ls[-10:]) > 3 * low)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="bonspiel_pebble_sweep_friction_fp16_gelu_regressor",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=60,
    heldout=True,
    onset=60,
    note="a bonspiel pebble-sweep friction GELU regressor trained under fp16 autocast with a "
    "GradScaler; from step 60 the rink's new logger sends broom pressure in pascals for kPa (x "
    "1000): fc1's fp16 output passes 65504 and overflows to inf, the loss is non-finite, the "
    "scaler skips every step and its scale collapses; the same batch is finite in float32",
)
def h666_bonspiel_sweep_pascals_fp16(ctx: Context) -> None:
    gen = seeded(66610)

    class SweepNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 64)
            self.fc2 = nn.Linear(64, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(F.gelu(self.fc1(x)))

    model = SweepNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    scales: list[float] = []
    overflow_at = None
    fp32_finite = None
    for step in range(120):
        x, y = next(batches)
        if step >= 60:
            x = x.clone()
            x[:, 0] = 50.0 + 20.0 * x[:, 0].abs()  # kPa read as ...
            x[:, 0] = x[:, 0] * 1000.0  # ... pascals: the new logger's unit
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(x)
            out = model.fc2(F.gelu(h))
        if overflow_at is None and not torch.isfinite(h).all():
            overflow_at = step
            with torch.no_grad():
                fp32_finite = bool(torch.isfinite(model(x)).all())
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check(f"fc1 fp16 output non-finite first at step 60 ({overflow_at})", overflow_at == 60)
    ctx.check("the same batch is finite in float32", bool(fp32_finite))
    ctx.check("loss finite before 60, non-finite after", _finite(ls[:60]) and not _finite(ls[60:]))
    ctx.check("scaler scale fell over 1000x", scales[-1] < scales[59] / 1000)


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="kolibri1_crokinole_flick_log_causal_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face Kolibri1 causal LM (Kolibri1ForCausalLM from a tiny Kolibri1Config: "
    "sliding-window and full attention layers, a small MoE with a shared expert) on "
    "crokinole-club flick-log bytes; AdamW with decay on matrices only, linear warm-up then "
    "cosine decay, gradient clipping at 1.0",
)
def h666_kolibri1_crokinole_lm(ctx: Context) -> None:
    gen = seeded(66611)
    model = _tiny_kolibri()
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
    )
    steps, warm = 100, 10
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=32, vocab=128)
    for _step in range(steps):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 25%", _median(ls[-10:]) < 0.75 * _median(ls[:5]))
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="calliope_steam_whistle_phrase_preference_dpo_policy",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a calliope steam-whistle phrase policy (token embedding + GRU + head) tuned with a DPO "
    "preference loss: -logsigmoid(beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) "
    "- log ref(rejected)))) on summed log_softmax token log-probs, against a frozen copy of the "
    "policy; the loss starts at exactly log 2 and falls, while the log-probabilities of both "
    "chosen and rejected phrases may drop: alarming-looking, healthy; OneCycleLR",
)
def h666_calliope_phrase_dpo(ctx: Context) -> None:
    gen = seeded(66612)
    vocab, length, beta = 16, 12, 0.5

    class Policy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, 32)
            self.gru = nn.GRU(32, 32, batch_first=True)
            self.head = nn.Linear(32, vocab)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            out, _ = self.gru(self.emb(idx))
            return self.head(out)

    def seq_logp(m: nn.Module, seq: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(m(seq[:, :-1]), dim=-1)
        return logp.gather(2, seq[:, 1:, None]).squeeze(2).sum(1)

    policy = Policy()
    ref = copy.deepcopy(policy).requires_grad_(False)
    steps = 150
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    ctx.attach(policy, opt)
    margins: list[float] = []
    for _step in range(steps):
        start = torch.randint(0, vocab, (32, 1), generator=gen)
        stride = torch.randint(1, 3, (32, 1), generator=gen)
        chosen = (start + stride * torch.arange(length)) % vocab  # a rising whistle phrase
        rejected = chosen.clone()
        cut = torch.randint(3, length, (1,), generator=gen).item()
        rejected[:, cut:] = torch.randint(0, vocab, (32, length - cut), generator=gen)
        pc, pr = seq_logp(policy, chosen), seq_logp(policy, rejected)
        with torch.no_grad():
            rc, rr = seq_logp(ref, chosen), seq_logp(ref, rejected)
        margin = beta * ((pc - rc) - (pr - rr))
        loss = -F.logsigmoid(margin).mean()
        margins.append(float(margin.detach().mean()))
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss starts at log 2", abs(ls[0] - math.log(2)) < 1e-4)
    ctx.check("loss fell below half of log 2", _median(ls[-10:]) < 0.5 * math.log(2))
    ctx.check("reward margin grew positive", _median(margins[-10:]) > 1.0)
    ctx.check("loss finite throughout", _finite(ls))


@scenario(
    family="tanning_hide_bark_liquor_stage_fp16_classifier",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tanner's bark-liquor pit-stage ReLU classifier on noisy readings (8% label noise): "
    "fp16 autocast with a GradScaler, label smoothing 0.1, 2-micro-batch accumulation, "
    "gradient clipping at 1.0 after unscaling, Adadelta under OneCycleLR",
)
def h666_tanning_liquor_stage_fp16(ctx: Context) -> None:
    gen = seeded(66613)

    class StageNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(12, 48)
            self.fc2 = nn.Linear(48, 48)
            self.head = nn.Linear(48, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))

    model = StageNet()
    steps = 150
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2.0, total_steps=steps, cycle_momentum=False
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    batches = _labels(gen, batch=32, flip=0.08)
    accs: list[float] = []
    for _step in range(steps):
        logged = 0.0
        for _ in range(2):
            x, y = next(batches)
            ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16):
                logits = model(x)
            micro = F.cross_entropy(logits.float(), y, label_smoothing=0.1)
            scaler.scale(micro / 2).backward()
            logged += float(micro.detach()) / 2
            accs.append(float((logits.argmax(1) == y).float().mean()))
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.step(torch.tensor(logged))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("accuracy over 70% at the end", _median(accs[-20:]) > 0.7)
    ctx.check("loss finite throughout", _finite(ls))
