"""Held-out set 682 (``h682_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and the digits, and a Hugging Face SigLIP 2 text encoder built from a
tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    digit_batches,
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


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


NONFINITE_STEP = 169


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


class _Net(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, n_out)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _sgd_step(ctx: Context, model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor):
    loss.backward()
    ctx.grad_norms.append(grad_norm(model))
    opt.step()
    ctx.step(loss)
    opt.zero_grad(set_to_none=True)


def _rel_move(now, before) -> float:
    num = sum(float((a.detach() - b).norm() ** 2) for a, b in zip(now, before, strict=True))
    den = sum(float(b.norm() ** 2) for b in before)
    return math.sqrt(num / den)


def _tiny_siglip2_text(vocab: int = 64, length: int = 16):
    from transformers import Siglip2TextConfig, Siglip2TextModel

    config = Siglip2TextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=length,
        projection_size=32,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        attention_dropout=0.0,
    )
    return Siglip2TextModel(config)


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="glassblower_furnace_log_siglip2_text_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("text.embeddings", "text.embeddings.token_embedding"),
    diverges=None,
    heldout=True,
    note="a tiny SigLIP 2 text encoder (from a config) classifying glassblowers' furnace-log "
    "lines (byte tokens) by the kind of the opening entry, AdamW with param groups; the "
    "embedding group's lr was typed 1e-9 instead of 1e-3, the token and position embeddings "
    "move about a million times too little for their weights while the encoder and head train",
)
def h682_glassblower_siglip2_embed_lr_typo(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.text = _tiny_siglip2_text()
            self.cls = nn.Linear(32, 2)

        def forward(self, idx: torch.Tensor) -> torch.Tensor:
            return self.cls(self.text(input_ids=idx).pooler_output)

    gen = seeded(6821)
    model = _Model()
    groups = [
        {"params": list(model.text.embeddings.parameters()), "lr": 1e-9},  # typo for 1e-3
        {"params": list(model.text.encoder.parameters()), "lr": 1e-3},
        {
            "params": list(model.text.final_layer_norm.parameters())
            + list(model.text.head.parameters())
            + list(model.cls.parameters()),
            "lr": 1e-3,
        },
    ]
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    ctx.attach(model, opt)
    emb0 = [p.detach().clone() for p in model.text.embeddings.parameters()]
    enc0 = [p.detach().clone() for p in model.text.encoder.parameters()]
    data = text_batches(gen, batch=32, length=16, vocab=64)
    for _step in range(70):
        idx, _ = next(data)
        y = (idx[:, 0] >= 32).long()
        ctx.targets(y)
        loss = F.cross_entropy(model(idx), y)
        _sgd_step(ctx, model, opt, loss)
    emb_rel = _rel_move(list(model.text.embeddings.parameters()), emb0)
    enc_rel = _rel_move(list(model.text.encoder.parameters()), enc0)
    ctx.check("embeddings moved under 1e-5 relative", emb_rel < 1e-5)
    ctx.check("encoder moved over 1e-2 relative", enc_rel > 1e-2)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check(
        "loss fell (last 10 below first 10)", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10])
    )


@scenario(
    family="saltpan_brine_evaporation_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=110,
    note="a salt-pan brine evaporation-rate regressor, ReLU MLP, MSE, SGD momentum, clipping at "
    "5; the shard read at step 110 came from a logger that wrote evaporation in mm/day times "
    "1000 (micrometres) for the targets and pan temperature in kelvin instead of celsius: one "
    "bad batch, the loss jumps over 1e3x and the gradient over 50x, then clean shards resume",
)
def h682_saltpan_bad_unit_shard(ctx: Context) -> None:
    gen = seeded(6822)
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(200):
        x, y = next(data)
        if step == 110:
            x = x.clone()
            x[:, 2] = x[:, 2] + 273.15
            y = y * 1000.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at 110 over 1e3x median of 90-109", ls[110] > 1e3 * _median(ls[90:110]))
    ctx.check("gradient at 110 over 50x median of 90-109", g[110] > 50 * _median(g[90:110]))
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check(
        "recovered: median of 180-199 under 3x median of 90-109",
        _median(ls[180:]) < 3 * _median(ls[90:110]),
    )


@scenario(
    family="bellfounder_bell_tuning_decay_tanh_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    onset=0,
    note="a bell-foundry partial-tuning regressor (hum/prime/tierce offsets from profile "
    "readings), tanh MLP, MSE, RMSprop; the hand-written L2 penalty is added with its sign "
    "flipped (loss - 0.3 * ||w||^2), the weights grow steadily and the data loss, after falling, "
    "climbs slowly and keeps climbing",
)
def h682_bellfounder_l2_sign_flip(ctx: Context) -> None:
    gen = seeded(6823)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    w0 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    for _step in range(240):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        total = loss - 0.3 * penalty  # sign flipped: should be +
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    w1 = math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))
    low = min(_median(ls[i : i + 10]) for i in range(0, 60, 10))
    ctx.check("weight norm grew over 3x", w1 > 3 * w0)
    ctx.check("loss of the last 20 over 5x its early low", _median(ls[-20:]) > 5 * low)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="snowpack_slab_depth_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=NONFINITE_STEP,
    heldout=True,
    onset=NONFINITE_STEP,
    note="a snowpack slab-depth forecaster that predicts a mean and a variance, Gaussian NLL "
    "written by hand as 0.5 * (log(var) + (y - mu)^2 / var), RAdam; the variance head's output "
    "is used raw (the softplus/clamp was dropped), it starts positive (bias 1) but as the fit "
    "tightens a sample's variance crosses below 0 and log of a negative gives NaN",
)
def h682_snowpack_variance_no_clamp(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh())
            self.mean_head = nn.Linear(32, 1)
            self.var_head = nn.Linear(32, 1)
            nn.init.constant_(self.var_head.bias, 1.0)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.body(x)
            return self.mean_head(h), self.var_head(h)  # var used raw: no softplus

    gen = seeded(6824)
    model = _Model()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    min_var = []
    for _step in range(300):
        x, y = next(data)
        mu, var = model(x)
        min_var.append(float(var.detach().min()))
        loss = (0.5 * (torch.log(var) + (y - mu) ** 2 / var)).mean()
        _sgd_step(ctx, model, opt, loss)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    k = NONFINITE_STEP
    ctx.check(f"loss finite before step {k}", _finite(ls[:k]))
    ctx.check(f"loss NaN at step {k}", len(ls) == k + 1 and math.isnan(ls[k]))
    ctx.check(f"variance head output negative at step {k}", min_var[k] < 0 < min(min_var[:k]))
    ctx.check("loss fell before the NaN", ls[k - 1] < ls[0])


@scenario(
    family="raku_kiln_reduction_fp16_gelu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    heldout=True,
    onset=80,
    note="a raku-kiln reduction-time regressor, GELU MLP under fp16 autocast with a "
    "torch.amp.GradScaler, Adam; from step 80 the kiln logger sends the chamber pressure "
    "channel in pascals instead of kilopascals (x1000 on readings of ~100 kPa, centred for kPa), the "
    "readings pass fp16's 65504 and the first layer's fp16 output overflows to inf, the loss is inf and the scaler skips every step",
)
def h682_raku_pressure_pascal_fp16(ctx: Context) -> None:
    gen = seeded(6825)
    model = _Net(8, 32, 1, nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen)
    fc1_inf = []
    for step in range(100):
        x, y = next(data)
        x = x.clone()
        x[:, 5] = 100.0 + x[:, 5]  # chamber pressure, kPa
        if step >= 80:
            x[:, 5] = x[:, 5] * 1000.0  # logged in Pa
        xin = x.clone()
        xin[:, 5] = xin[:, 5] - 100.0  # centred for kPa
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.fc1(xin)
            fc1_inf.append(bool(torch.isinf(h).any()))
            out = model.head(model.act2(model.fc2(model.act1(h))))
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
    ctx.check("loss finite before step 80", _finite(ls[:80]))
    ctx.check("loss fell before step 80", _median(ls[70:80]) < 0.5 * ls[0])
    ctx.check(
        "fc1 fp16 output inf from step 80, never before",
        all(fc1_inf[80:]) and not any(fc1_inf[:80]),
    )
    ctx.check("loss non-finite at step 80", not math.isfinite(ls[80]))
    ctx.check("scale fell over 1e3x after step 80", ctx.scales[-1] < ctx.scales[79] / 1e3)


@scenario(
    family="singing_dune_hum_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="a singing-dune hum-frequency regressor reading 40 steps of grain-flow readings with a "
    "ReLU Elman RNN, MSE, plain SGD; the recurrent weight was initialised as 2 x an "
    "orthogonal matrix (the gain meant for the input weights), the gradient grows back through "
    "time by orders of magnitude (at init the"
    " first hidden state gets a gradient over 100x the last's; the run stays finite)",
)
def h682_singing_dune_recurrent_gain(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(4, 32, nonlinearity="relu", batch_first=True)
            self.head = nn.Linear(32, 1)
            with torch.no_grad():
                nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=1.75)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out, _ = self.rnn(x)
            return self.head(out[:, -1])

    gen = seeded(6826)
    model = _Model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    ctx.attach(model, opt)
    ratio = []
    for _step in range(150):
        x = torch.randn(32, 40, 4, generator=gen) * 0.01
        y = 100.0 * x[:, -10:, 0].mean(1, keepdim=True)
        h0 = torch.zeros(1, 32, 32, requires_grad=True)
        out, _ = model.rnn(x, h0)
        out.retain_grad()
        loss = F.mse_loss(model.head(out[:, -1]), y)
        loss.backward()
        if out.grad is not None and len(ratio) < 3:
            ratio.append(float(h0.grad.norm() / (out.grad[:, -1].norm() + 1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ls = ctx.losses
    ctx.check("gradient at the first hidden state over 100x the last's at step 0", ratio[0] > 100)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="bobsleigh_push_start_onecycle_tanh_regressor",
    optimizer="SGD Nesterov",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="a bobsleigh push-start split-time regressor, tanh MLP, MSE, SGD Nesterov under "
    "OneCycleLR; max_lr was typed 2.0 instead of 0.02, the warm-up carries the lr past "
    "2/sharpness and the loss blows up during the ramp",
)
def h682_bobsleigh_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(6827)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2.0, total_steps=300)
    ctx.attach(model, opt)
    data = _readings(gen)
    probe_x, probe_y = next(data)
    lams, lrs = [], []
    for _step in range(300):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        lrs.append(opt.param_groups[0]["lr"])
        lams.append(_sharpness(model, probe_x, probe_y, iters=10))
        _sgd_step(ctx, model, opt, loss)
        sched.step()
        if not math.isfinite(float(loss)) or float(loss) > 1e8:
            break
    ls = ctx.losses
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * ls[0]), None)
    ctx.check("loss blew up (over 100x the first, or non-finite)", blow is not None)
    cross = next((i for i in range(len(lams)) if lrs[i] * lams[i] > 2), None)
    ctx.check(
        "lr x sharpness crossed 2 before the blow-up",
        blow is not None and cross is not None and cross < blow,
    )
    ctx.check("loss finite for the first 10 steps", _finite(ls[:10]))


def _sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int = 20) -> float:
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((a**2).sum()) for a in v))
        v = [a / n for a in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [a.detach() for a in hv]
    return abs(lam)


def _saturated(logits: torch.Tensor) -> float:
    """Share of rows whose float32 softmax has a probability of exactly 1.0."""
    return float((torch.softmax(logits.float(), -1).max(-1).values == 1.0).float().mean())


@scenario(
    family="origami_crease_pattern_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="an origami crease-pattern classifier (digits as 8x8 crease grids), ReLU MLP, "
    "cross-entropy, Adamax; the softmax temperature was typed 1e-4 instead of 1.0 (logits "
    "divided by it), the float32 softmax of most training rows rounds to exactly 1 on one "
    "class and exactly 0 on the rest",
)
def h682_origami_temperature_typo(ctx: Context) -> None:
    gen = seeded(6828)
    model = _Net(64, 64, 10, nn.ReLU)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    temperature = 1e-4  # typo for 1.0
    data = digit_batches(gen, 64)
    frac, warm = [], []
    for _step in range(120):
        x, y = next(data)
        ctx.targets(y)
        logits = model(x) / temperature
        frac.append(_saturated(logits.detach()))
        warm.append(_saturated(model(x).detach() / 1.0))
        loss = F.cross_entropy(logits, y)
        _sgd_step(ctx, model, opt, loss)
    ctx.check(
        "over half the rows saturated (max p exactly 1) in the last 10", _mean(frac[-10:]) > 0.5
    )
    ctx.check("at temperature 1.0 under 5% would be saturated", max(warm) < 0.05)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="canal_lock_fill_time_silu_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="a canal-lock fill-time regressor, SiLU MLP, MSE, ASGD, clipping at 1; an auxiliary "
    "smoothness term's weight is read from the wrong config key on step 120 only (200.0, the "
    "paddle count scale, for 0.01), that step's gradient bursts over 50x while the data are "
    "clean and the logged main loss ordinary; clipping holds the update and the run continues",
)
def h682_canal_lock_aux_weight_key(ctx: Context) -> None:
    gen = seeded(6829)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    data = _readings(gen)
    for step in range(200):
        x, y = next(data)
        out = model(x)
        loss = F.mse_loss(out, y)
        aux_w = 200.0 if step == 120 else 0.01
        aux = ((out[1:] - out[:-1]) ** 2).mean()
        (loss + aux_w * aux).backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls, g = ctx.losses, ctx.grad_norms
    base = _median(g[100:120])
    ctx.check("gradient at 120 over 50x the median of 100-119", g[120] > 50 * base)
    ctx.check("gradient ordinary again by 123", g[123] < 5 * base)
    ctx.check("logged loss at 120 ordinary (< 3x max of 110-119)", ls[120] < 3 * max(ls[110:120]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="harpsichord_quill_voicing_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="a harpsichord quill-voicing regressor (pluck force from quill measurements), SiLU "
    "MLP, MSE, Adam (beta2 0.999); on step 60 a debug loss multiplier of 1e5 left in the "
    "resumed script is applied once, the one giant gradient fills Adam's second moment and "
    "the updates afterwards are over 10x smaller for hundreds of steps",
)
def h682_harpsichord_debug_multiplier(ctx: Context) -> None:
    gen = seeded(68210)
    model = _Net(8, 32, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    data = _readings(gen)
    upd = []
    for step in range(160):
        x, y = next(data)
        loss = F.mse_loss(model(x), y)
        mult = 1e5 if step == 60 else 1.0
        (loss * mult).backward()
        ctx.grad_norms.append(grad_norm(model))
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        upd.append(
            math.sqrt(
                sum(
                    float((p.detach() - b).norm() ** 2)
                    for p, b in zip(model.parameters(), before, strict=True)
                )
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("gradient at 60 over 1e4x the median of 40-59", g[60] > 1e4 * _median(g[40:60]))
    ctx.check(
        "updates of 80-159 over 10x smaller than 40-59",
        _median(upd[80:]) < 0.1 * _median(upd[40:60]),
    )
    ctx.check("loss finite", _finite(ctx.losses))


# -- healthy controls ---------------------------------------------------------------------------


@scenario(
    family="farrier_hoof_angle_batch_ramp_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a farrier's hoof-pastern angle regressor, ReLU MLP, MSE on noisy targets, SGD "
    "momentum with a batch-size warm-up: 32 samples a step for the first 100 steps, then 128 "
    "(quadrupled at mid-run, lr unchanged): the gradient norm drops at once by about half, "
    "which looks alarming but is the gradient noise shrinking; healthy (alarming-looking control)",
)
def h682_farrier_batch_size_warmup(ctx: Context) -> None:
    gen = seeded(68211)
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32, noise=0.5)
    for step in range(200):
        parts = [next(data) for _ in range(1 if step < 100 else 4)]
        x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        loss = F.mse_loss(model(x), y)
        _sgd_step(ctx, model, opt, loss)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient median of 100-119 under 0.7x that of 80-99",
        _median(g[100:120]) < 0.7 * _median(g[80:100]),
    )
    ctx.check("loss fell (last 20 below first 20)", _mean(ls[-20:]) < _mean(ls[:20]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="lichen_growth_stage_cnn_classifier",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a lichen growth-stage classifier (digits as 8x8 thallus scans), small CNN, "
    "cross-entropy with label smoothing 0.1, NAdam with two param groups (no weight decay on "
    "biases), ReduceLROnPlateau, noisy inputs; control",
)
def h682_lichen_cnn_label_smoothing(ctx: Context) -> None:
    class _Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 8, 3, padding=1)
            self.head = nn.Linear(8 * 16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.max_pool2d(F.relu(self.conv(x.reshape(-1, 1, 8, 8))), 2)
            return self.head(h.flatten(1))

    gen = seeded(68213)
    model = _Model()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.NAdam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    data = digit_batches(gen, 64)
    for _step in range(150):
        x, y = next(data)
        x = x + 0.1 * torch.randn(x.shape, generator=gen)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
        _sgd_step(ctx, model, opt, loss)
        sched.step(float(loss))
    ls = ctx.losses
    ctx.check("loss fell below half its start", _mean(ls[-10:]) < 0.5 * ls[0])
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="fjord_katabatic_gust_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a fjord katabatic-gust peak regressor, tanh MLP, Huber loss, 2-micro-batch gradient "
    "accumulation, clipping at 1, Adagrad; control",
)
def h682_fjord_accumulation_adagrad(ctx: Context) -> None:
    gen = seeded(68214)
    model = _Net(8, 32, 1, nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    data = _readings(gen, batch=32, noise=0.1)
    for _step in range(150):
        total = 0.0
        for _ in range(2):
            x, y = next(data)
            micro = F.huber_loss(model(x), y, delta=0.5) / 2
            micro.backward()
            total += float(micro)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell below half its start", _mean(ls[-10:]) < 0.5 * ls[0])
    ctx.check("loss finite", _finite(ls))
