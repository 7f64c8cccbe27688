"""Held-out set 650 (``h650_``): 10 faults over 10 causes and 3 healthy controls, hand-written
models on generated data and a Hugging Face ERNIE 4.5 causal LM built from a tiny config."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, scenario, seeded, text_batches


def _readings(gen: torch.Generator, n_in: int = 8, batch: int = 64, noise: float = 0.05):
    """Endless (x, y) batches of a fixed smooth map of standard-normal readings."""
    w1 = torch.randn(n_in, 24, generator=gen) / math.sqrt(n_in)
    w2 = torch.randn(24, 1, generator=gen) / 3.0
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        y = torch.sin(x @ w1) @ w2 + noise * torch.randn(batch, 1, generator=gen)
        yield x, y


def _labels(gen: torch.Generator, n_in: int = 12, k: int = 5, batch: int = 64):
    """Endless (x, y) batches: y is the argmax of a fixed linear score of the readings."""
    w = torch.randn(n_in, k, generator=gen)
    while True:
        x = torch.randn(batch, n_in, generator=gen)
        yield x, (x @ w).argmax(1)


def _median(xs: list[float]) -> float:
    return float(torch.tensor(xs).median())


def _gnorm(params) -> float:
    gs = [p.grad.norm() ** 2 for p in params if p.grad is not None]
    return float(sum(gs) ** 0.5) if gs else 0.0


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


class ReluNet(nn.Module):
    def __init__(self, n_in: int = 8, hidden: int = 32, out: int = 1) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))


class GeluNet(ReluNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


def _loop(ctx, model, opt, batches, steps, loss_fn, *, classifier=False, clip=None, before=None):
    """Plain loop; returns per-step gradient norms (before clipping)."""
    norms = []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        loss.backward()
        norms.append(_gnorm(model.parameters()))
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    return norms


# -- faults -----------------------------------------------------------------------------------------


@scenario(
    family="gondola_oar_stroke_phase_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="the softmax temperature for the stroke-phase classifier is read from a config in "
    "thousandths (0.001) where the code expects the plain value (1.0): logits are divided by "
    "0.001, most rows' target probability rounds to exactly 1.0 in float32 (SGD Nesterov, "
    "clipping at 5)",
)
def h650_gondola_stroke_temperature(ctx: Context) -> None:
    gen = seeded(6501)
    model = ReluNet(12, 32, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    temperature = 0.001  # bug: config value in thousandths
    batches = _labels(gen)
    frac = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x) / temperature
        frac.append(collapsed_fraction(logits.detach(), y))
        loss = F.cross_entropy(logits, y)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("over half the rows at p = 1.0 by the end", _median(frac[-20:]) > 0.5)
    ctx.check("few rows at p = 1.0 at the start", frac[0] < 0.3)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="sherpa_load_carry_pace_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="a pace target logged in seconds per km is, for one batch after a logger change at "
    "step 60, multiplied in by a hand-written loss weight of 1e4 (a 'per-km' scale meant for "
    "the metric only); one gradient over 1e3x fills Adam's second moment (beta2 0.999) and the "
    "updates afterwards are tiny: the loss stops falling",
)
def h650_sherpa_pace_poisoned_moment(ctx: Context) -> None:
    gen = seeded(6502)
    model = GeluNet(8, 32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.999))
    ctx.attach(model, opt)
    batches = _readings(gen)
    norms, v_sum = [], []
    for step in range(220):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        weight = 1e4 if step == 60 else 1.0  # bug: metric scale leaked into the loss once
        (weight * loss).backward()
        norms.append(_gnorm(model.parameters()))
        opt.step()
        v_sum.append(sum(float(opt.state[p]["exp_avg_sq"].sum()) for p in model.parameters()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("gradient over 1000x the median at step 60", norms[60] > 1e3 * _median(norms[:60]))
    ctx.check("second moment over 1e5x after step 60", v_sum[60] > 1e5 * v_sum[59])
    ctx.check(
        "loss stalls after 60 (last 40 mean over 0.7x steps 50..60 mean)",
        sum(ls[-40:]) / 40 > 0.7 * sum(ls[50:60]) / 10,
    )
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="sauna_loyly_steam_gaussian_variance_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("var_head",),
    diverges=44,
    onset=44,
    heldout=True,
    note="a Gaussian NLL for steam-burst humidity whose variance head outputs the variance "
    "directly (the softplus was dropped in a refactor, no clamp); once a predicted variance "
    "goes negative, log(var) is NaN and the loss is NaN",
)
def h650_sauna_steam_negative_variance(ctx: Context) -> None:
    gen = seeded(6503)

    class GaussNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 32)
            self.mean_head = nn.Linear(32, 1)
            self.var_head = nn.Linear(32, 1)
            nn.init.constant_(self.var_head.bias, 1.0)
            nn.init.normal_(self.var_head.weight, std=0.02)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = torch.tanh(self.fc1(x))
            return self.mean_head(h), self.var_head(h)  # bug: no softplus / clamp on var

    model = GaussNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
    ctx.attach(model, opt)
    batches = _readings(gen, noise=0.05)
    neg_at = None
    for step in range(250):
        x, y = next(batches)
        mu, var = model(x)
        if neg_at is None and bool((var <= 0).any()):
            neg_at = step
        loss = 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    bad = 44
    ctx.check("a variance at or below 0 in the run", neg_at is not None)
    ctx.check(f"loss first NaN at step {bad}", len(ls) == bad + 1 and math.isnan(ls[bad]))
    ctx.check("loss finite before", _finite(ls[:bad]))


@scenario(
    family="hammock_rope_sag_decay_sign_gelu_regressor",
    optimizer="AdamW",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="AdamW with its built-in decay off and a hand-rolled decoupled weight decay whose sign "
    "was flipped in a refactor (p *= 1 + lr * wd instead of 1 - lr * wd, wd 1.4): the weights "
    "inflate step by step and the rope-sag loss, after falling, climbs slowly",
)
def h650_hammock_sag_decay_sign(ctx: Context) -> None:
    gen = seeded(6504)
    model = GeluNet(8, 32)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ctx.attach(model, opt)
    batches = _readings(gen)
    wd = 1.4
    for _ in range(300):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 1e-2 * wd)  # bug: sign flipped (should be 1 - lr * wd)
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _median(ls[max(0, i - 5) : i + 5]))
    ctx.check("loss fell first (minimum after step 5)", low > 5)
    ctx.check(
        "loss climbs over 5x from its low",
        _median(ls[-20:]) > 5 * _median(ls[max(0, low - 5) : low + 5]),
    )
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="theremin_antenna_pitch_drift_huber_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="one shard (the batch at step 120) has the antenna-distance column logged in "
    "micrometres instead of millimetres (x1000); Huber loss, clipping at 1.0: the loss spikes "
    "over 20x at that batch and the run recovers",
)
def h650_theremin_pitch_bad_shard(ctx: Context) -> None:
    gen = seeded(6505)
    model = GeluNet(8, 32)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _readings(gen)
    norms = []
    for step in range(220):
        x, y = next(batches)
        if step == 120:
            x = x.clone()
            x[:, 3] *= 1000.0  # bad shard: micrometres
        loss = F.huber_loss(model(x), y, delta=1.0)
        loss.backward()
        norms.append(_gnorm(model.parameters()))
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    base = _median(ls[100:120])
    ctx.check("loss over 20x the median at step 120", ls[120] > 20 * base)
    ctx.check("gradient over 10x the median at step 120", norms[120] > 10 * _median(norms[:120]))
    ctx.check("recovers (last 20 median under 3x pre-onset)", _median(ls[-20:]) < 3 * base)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="candle_wick_char_class_accum_relu_classifier",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="4-micro-batch gradient accumulation; at step 90 a restart re-reads the auxiliary "
    "loss weight as 100 (a percent) instead of 1.0 for one optimizer step: the gradient bursts "
    "over 30x while the logged loss is ordinary; clipped at 5, SGD momentum, the run recovers",
)
def h650_candle_wick_weight_burst(ctx: Context) -> None:
    gen = seeded(6506)
    model = ReluNet(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    ctx.attach(model, opt)
    batches = _labels(gen, batch=16)
    norms = []
    for step in range(200):
        weight = 100.0 if step == 90 else 1.0  # bug: percent read as a factor once
        total = 0.0
        for _ in range(4):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y) / 4
            (weight * loss).backward()
            total += float(loss.detach())
        norms.append(_gnorm(model.parameters()))
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("gradient over 30x the median at step 90", norms[90] > 30 * _median(norms[60:90]))
    ctx.check("logged loss ordinary at 90", ls[90] < 2 * _median(ls[80:90]))
    ctx.check("loss fell overall", _median(ls[-20:]) < 0.5 * ls[0])
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="yodel_echo_delay_deep_tanh_regressor",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="a 14-layer tanh regressor for echo delay initialised with orthogonal gain 2.5 (a copy "
    "of a ReLU recipe with the gain typed twice): the backward pass grows layer by layer, the "
    "first layer's gradient is over 10x the last hidden layer's; clipped at 1.0",
)
def h650_yodel_echo_gain_explodes(ctx: Context) -> None:
    gen = seeded(6507)

    class DeepTanh(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(8, 32)] + [nn.Linear(32, 32) for _ in range(13)])
            self.head = nn.Linear(32, 1)
            for lin in self.layers:
                nn.init.orthogonal_(lin.weight, gain=2.5)  # bug: gain typed twice

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for lin in self.layers:
                x = torch.tanh(lin(x))
            return self.head(x)

    model = DeepTanh()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratio = []
    for _ in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratio.append(
            float(model.layers[0].weight.grad.norm() / model.layers[-1].weight.grad.norm())
        )
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first layer's gradient over 10x the last hidden's", _median(ratio) > 10)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="mead_fermentation_gravity_frozen_encoder_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="param groups per layer; the encoder's lr was typed 1e-9 for 1e-3: fc1's weights barely "
    "move (relative change under 1e-5) while the rest trains",
)
def h650_mead_gravity_encoder_lr_typo(ctx: Context) -> None:
    gen = seeded(6508)
    model = GeluNet(8, 32)
    opt = torch.optim.NAdam(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},  # bug: 1e-9 for 1e-3
            {"params": list(model.fc2.parameters()) + list(model.head.parameters())},
        ],
        lr=1e-3,
    )
    ctx.attach(model, opt)
    w0 = model.fc1.weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    _loop(ctx, model, opt, _readings(gen), 200, F.mse_loss)
    rel = float((model.fc1.weight.detach() - w0).norm() / w0.norm())
    rel_head = float((model.head.weight.detach() - h0).norm() / h0.norm())
    ctx.check("fc1 moved under 1e-5 relative", rel < 1e-5)
    ctx.check("head moved over 1e-2 relative", rel_head > 1e-2)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="banjo_string_gauge_tension_linear_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=40,
    heldout=True,
    note="the lr is scaled linearly with the batch (32 -> 512, x16) when a larger batch is "
    "switched on at step 40: lr 0.05 becomes 0.8, past 2/sharpness of the MSE; the loss "
    "oscillates and blows up",
)
def h650_banjo_tension_lr_scaling(ctx: Context) -> None:
    gen = seeded(6509)

    class TensionNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    model = TensionNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    scale = torch.linspace(0.5, 2.5, 8)
    w = torch.randn(8, 1, generator=gen)
    xs = torch.randn(4096, 8, generator=gen) * scale
    sharp = float(torch.linalg.eigvalsh(2 * xs.T @ xs / len(xs)).max())  # MSE Hessian (+bias ~)

    def before(step: int) -> None:
        if step == 40:
            for g in opt.param_groups:
                g["lr"] = 0.05 * 16  # bug: linear scaling applied to an MSE regressor

    def batches():
        while True:
            x = torch.randn(64, 8, generator=gen) * scale
            yield x, x @ w + 0.1 * torch.randn(64, 1, generator=gen)

    _loop(ctx, model, opt, batches(), 150, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("lr x sharpness over 2 after step 40", 0.8 * sharp > 2 and 0.05 * sharp < 2)
    ctx.check("loss fell before step 40", ls[39] < 0.2 * ls[0])
    ctx.check("loss blows up over 1e3x after 40", max(ls[40:]) > 1e3 * ls[39] or not _finite(ls))


@scenario(
    family="sitar_sympathetic_string_pascal_fp16_regressor",
    optimizer="RAdam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 80 the shards log bridge pressure in pascals "
    "instead of kilopascals (x1000, no normalisation layer): fc1's fp16 output overflows past "
    "65504 to inf and the loss is non-finite (NaN) at step 80, while the same batch in float32 is finite",
)
def h650_sitar_pressure_fp16_overflow(ctx: Context) -> None:
    gen = seeded(6510)
    model = ReluNet(8, 32)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen)
    fp32_loss, fc1_inf = None, False
    for step in range(150):
        x, y = next(batches)
        x = x * 60.0  # kPa readings, no normalisation
        if step >= 80:
            x = x * 1000.0  # bug: new shards in pascals
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        if step == 80:
            with torch.no_grad():
                fp32_loss = float(F.mse_loss(model(x), y))
                with torch.autocast("cpu", dtype=torch.float16):
                    h1 = model.fc1(x)
                fc1_inf = bool(torch.isinf(h1).any())
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss.detach())):
            break
    ls = ctx.losses
    ctx.check("loss finite before step 80", _finite(ls[:80]))
    ctx.check("loss non-finite at step 80", len(ls) == 81 and not math.isfinite(ls[80]))
    ctx.check("fc1's fp16 output holds inf at step 80", fc1_inf)
    ctx.check(
        "same batch finite in float32",
        fp32_loss is not None and math.isfinite(fp32_loss),
    )


# -- healthy controls -------------------------------------------------------------------------------


@scenario(
    family="aurora_ribbon_chant_ernie45_causal_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="a tiny Hugging Face ERNIE 4.5 causal LM built from a config, AdamW with decay only on "
    "matrices, linear warm-up 20 steps then cosine decay, clipping at 1.0: an ordinary run",
)
def h650_aurora_ernie45_warmup_cosine(ctx: Context) -> None:
    from transformers import Ernie4_5Config, Ernie4_5ForCausalLM

    gen = seeded(6511)
    config = Ernie4_5Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        use_bias=False,
    )
    model = Ernie4_5ForCausalLM(config)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    total, warm = 120, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    for _ in range(total):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = F.cross_entropy(logits.reshape(-1, 128), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 30%", _median(ls[-10:]) < 0.7 * _median(ls[:5]))
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="tabla_bayan_pitch_glide_gelu_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="the glide loss is multiplied by 1000 (a units convention: squared hertz to "
    "millihertz) under Adam, which is invariant to the loss scale: gradient norms read about "
    "1000x the usual values, yet the updates and the training are ordinary (alarming-looking "
    "control)",
)
def h650_tabla_glide_loss_x1000(ctx: Context) -> None:
    gen = seeded(6512)
    model = GeluNet(8, 32)
    ref = GeluNet(8, 32)
    ref.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _readings(gen)
    ratio = []
    for step in range(200):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (1000.0 * loss).backward()
        g = _gnorm(model.parameters())
        if step % 20 == 0:  # the same batch through the unscaled loss, for the 1000x reading
            m2 = GeluNet(8, 32)
            m2.load_state_dict(model.state_dict())
            F.mse_loss(m2(x), y).backward()
            ratio.append(g / _gnorm(m2.parameters()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("gradient norms read ~1000x the unscaled loss's", 900 < _median(ratio) < 1100)
    ctx.check("loss fell over 3x", _median(ls[-20:]) < _median(ls[:5]) / 3)
    ctx.check("loss finite", _finite(ls))


@scenario(
    family="kayak_eskimo_roll_phase_onecycle_relu_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="SGD Nesterov with OneCycleLR (max lr 0.1), label smoothing 0.1, 2-micro-batch "
    "accumulation, clipping at 2.0 and noisy readings: an ordinary run",
)
def h650_kayak_roll_onecycle(ctx: Context) -> None:
    gen = seeded(6513)
    model = ReluNet(12, 48, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    ctx.attach(model, opt)
    batches = _labels(gen, batch=32)
    for _ in range(steps):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            x = x + 0.3 * torch.randn(x.shape, generator=gen)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1) / 2
            loss.backward()
            total += float(loss.detach())
        nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        sched.step()
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ls = ctx.losses
    ctx.check("loss fell over 40%", _median(ls[-10:]) < 0.6 * _median(ls[:5]))
    ctx.check("loss finite", _finite(ls))
