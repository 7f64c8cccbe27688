"""Held-out set 129 (``h129_``): Hugging Face Kolibri-1.1 LM and Diffusion-Gemma encoder text
tower (tiny configs, no download) and hand-written models of new fields: a foundry casting-crack
detector, a tapestry-loom thread-break classifier, a kite-surf gust forecaster, a ferris-wheel
vibration monitor, a peat-bog carbon estimator, a lacrosse shot-speed regressor, a curling-stone
glide regressor, a hot-air-balloon altitude controller, a carousel motor-load estimator, a
harbour-crane sway forecaster and a cider-press yield regressor."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared pieces --------------------------------------------------------------------------------


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs) -> float:
    return sum(xs) / max(len(xs), 1)


def _hf_kolibri():
    from transformers import Kolibri1_1Config, Kolibri1_1ForCausalLM

    config = Kolibri1_1Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        index_num_heads=1,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        mlp_only_intermediate_size=64,
        index_topk=8,
        index_pool_size=64,
        index_num_local_tokens=4,
        index_num_sink_tokens=1,
        index_compression=4,
        sliding_window=8,
    )
    return Kolibri1_1ForCausalLM(config)


class _DGemmaClassifier(nn.Module):
    """Diffusion-Gemma encoder text tower with a mean-pooled linear head."""

    def __init__(self, free_scale: bool = False) -> None:
        super().__init__()
        from transformers.models.diffusion_gemma.configuration_diffusion_gemma import (
            DiffusionGemmaTextConfig,
        )
        from transformers.models.diffusion_gemma.modeling_diffusion_gemma import (
            DiffusionGemmaEncoderTextModel,
        )

        config = DiffusionGemmaTextConfig(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=64,
            num_experts=2,
            top_k_experts=1,
            moe_intermediate_size=32,
            sliding_window=8,
        )
        self.encoder = DiffusionGemmaEncoderTextModel(config)
        self.head = _ScaledHead(32, 2, free_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(input_ids=x).last_hidden_state
        return self.head(h.mean(1))


class _ScaledHead(nn.Module):
    """A linear head with (optionally) a learnable, unclamped logit temperature."""

    def __init__(self, dim: int, classes: int, free_scale: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, classes)
        self.log_scale = nn.Parameter(torch.zeros(()), requires_grad=free_scale)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.proj(h) * self.log_scale.exp()


# -- Hugging Face Kolibri-1.1 LM -----------------------------------------------------------------


@scenario(
    "hf_kolibri_lm",
    "adamax",
    "gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=60,
    note="a gradient-accumulation bug sums 24 micro-batches undivided for one step",
)
def h129_hf_kolibri_accum_spike(ctx: Context) -> None:
    gen = seeded(12901)
    model = _hf_kolibri()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=16)
    for step in range(100):
        micro = 24 if step == 60 else 1
        for _ in range(micro):
            x, y = next(batches)
            loss = lm_loss(model(input_ids=x).logits, y)
            loss.backward()  # the bug: no division by the number of micro-batches
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = sorted(ctx.grad_norms[40:60])[10]
    ctx.check("grad norm at the bad step > 8x the median before", ctx.grad_norms[60] > 8 * before)
    ctx.check("loss stays finite", _finite(ctx.losses))


@scenario(
    "hf_kolibri_lm",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=40,
    note="plain SGD's LR warmed up far past 2/sharpness",
)
def h129_hf_kolibri_sgd_lr_ramp(ctx: Context) -> None:
    gen = seeded(12902)
    model = _hf_kolibri()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=16)
    for step in range(110):
        opt.param_groups[0]["lr"] = 0.05 * math.exp(min(step, 100) * math.log(400.0) / 100)
        x, y = next(batches)
        loss = lm_loss(model(input_ids=x).logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    best = min(v for v in ctx.losses if math.isfinite(v))
    late = ctx.losses[-10:]
    ctx.check("loss fell at first", min(ctx.losses[:40]) < ctx.losses[0] - 0.2)
    ctx.check(
        "loss climbs past 2x best or goes non-finite",
        any((not math.isfinite(v)) or v > max(2 * best, best + 1) for v in late),
    )


@scenario(
    "hf_kolibri_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="warmup then cosine decay, gradient clipping",
)
def h129_hf_kolibri_healthy(ctx: Context) -> None:
    gen = seeded(12903)
    model = _hf_kolibri()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=8, length=16)
    steps = 110
    for step in range(steps):
        warm = min(1.0, (step + 1) / 10)
        opt.param_groups[0]["lr"] = 3e-3 * warm * 0.5 * (1 + math.cos(math.pi * step / steps))
        x, y = next(batches)
        loss = lm_loss(model(input_ids=x).logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:5]) - 0.5)


# -- Hugging Face Diffusion-Gemma encoder text tower ----------------------------------------------


@scenario(
    "hf_diffusion_gemma_encoder_cls",
    "adam",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="a learnable logit temperature left unclamped",
)
def h129_hf_dgemma_free_temperature(ctx: Context) -> None:
    gen = seeded(12904)
    model = _DGemmaClassifier(free_scale=True)
    opt = torch.optim.Adam(
        [
            {"params": [p for n, p in model.named_parameters() if n != "head.log_scale"]},
            {"params": [model.head.log_scale], "lr": 0.1},
        ],
        lr=5e-3,
    )
    ctx.attach(model, opt)
    stream = bert_batches(gen, batch=32, length=16)
    fixed = [next(stream) for _ in range(4)]  # a small labelled set, cycled
    batches = iter(fixed * 100)
    peaks = []
    for _ in range(150):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peaks.append(float(logits.detach().abs().max()))
    ctx.check("logit temperature grew > 4x", float(model.head.log_scale.detach().exp()) > 4)
    ctx.check("max |logit| grew > 10x and past 15", peaks[-1] > 10 * peaks[0] and peaks[-1] > 15)


@scenario("hf_diffusion_gemma_encoder_cls", "adagrad", "healthy", heldout=True)
def h129_hf_dgemma_healthy(ctx: Context) -> None:
    gen = seeded(12905)
    model = _DGemmaClassifier()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    batches = bert_batches(gen, batch=32, length=16)
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-15:]) < 0.85 * _mean(ctx.losses[:10]))


# -- foundry casting-crack detector: attention over ring-test frames --------------------------------


class _CrackDetector(nn.Module):
    """Single-head attention over acoustic ring-test frames, no QK normalisation."""

    def __init__(self, feats: int = 8, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(feats, dim)
        self.attn = _PlainAttention(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(self.attn(h).mean(1))


class _PlainAttention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.last_logit = 0.0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.q(h) @ self.k(h).transpose(1, 2) / math.sqrt(h.shape[-1])
        self.last_logit = float(logits.detach().abs().max())
        return torch.softmax(logits, -1) @ self.v(h)


def _ring_frames(gen: torch.Generator, batch: int = 32, frames: int = 16):
    """A crack shows as one frame with a loud overtone whose damping channel is positive."""
    while True:
        x = torch.randn(batch, frames, 8, generator=gen) * 0.5
        loud = torch.randint(0, frames, (batch,), generator=gen)
        x[torch.arange(batch), loud, 0] = 3.0
        y = (x[torch.arange(batch), loud, 1] > 0).long()
        yield x, y


@scenario(
    "foundry_casting_crack_detector",
    "adamw",
    "attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="no QK norm, no weight decay, a high LR: the attention logits keep growing",
)
def h129_foundry_attention_growth(ctx: Context) -> None:
    gen = seeded(12906)
    model = _CrackDetector()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ctx.attach(model, opt)
    batches = _ring_frames(gen)
    logits = []
    for _ in range(300):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        logits.append(model.attn.last_logit)
    ctx.check("max attention logit grew > 5x", logits[-1] > 5 * logits[0])
    ctx.check("max attention logit past 30", logits[-1] > 30)
    ctx.check("loss finite", _finite(ctx.losses))


# -- tapestry-loom thread-break classifier: softmax collapse --------------------------------------


class _LoomNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@scenario(
    "tapestry_loom_break_classifier",
    "nadam",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="tension images memorised at a high LR, no label smoothing: float32 softmax saturates",
)
def h129_loom_softmax_collapse(ctx: Context) -> None:
    gen = seeded(12907)
    model = _LoomNet()
    opt = torch.optim.NAdam(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    first = last = 0.0
    for step in range(600):
        x, y = next(batches)
        ctx.targets(y)
        logits = model(x * 10.0)  # raw tension counts, never rescaled
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step == 0:
            first = collapsed_fraction(logits.detach(), y)
        last = collapsed_fraction(logits.detach(), y)
    ctx.check("no row collapsed at the start", first == 0.0)
    ctx.check("> 40% of rows' softmax is exactly 1.0 at the end", last > 0.4)


# -- kite-surf gust forecaster: exploding gradients through a ReLU RNN ---------------------------


class _GustRNN(nn.Module):
    def __init__(self, hidden: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, hidden, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn(x)
        return self.out(h).squeeze(-1)


def _wind(gen: torch.Generator, batch: int = 16, length: int = 60):
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        speed = (
            1
            + 0.5 * torch.sin(0.3 * t + phase)
            + 0.1 * torch.randn(batch, length + 1, generator=gen)
        )
        x = torch.stack([speed[:, :-1], torch.sin(0.3 * t[:-1] + phase)], -1)
        yield x, speed[:, 1:]


@scenario(
    "kitesurf_gust_forecaster",
    "sgd_mom",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="ReLU RNN, recurrent init with gain 1.5, 60-step windows, no clipping",
)
def h129_kitesurf_exploding(ctx: Context) -> None:
    gen = seeded(12908)
    model = _GustRNN(gain=1.5)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9)
    ctx.attach(model, opt)
    batches = _wind(gen)
    for _ in range(80):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    norms = ctx.grad_norms
    ctx.check(
        "grad norm grew > 100x or went non-finite",
        (not _finite(norms)) or max(norms) > 100 * norms[0],
    )
    ctx.check("loss blew up", (not _finite(ctx.losses)) or max(ctx.losses) > 100 * ctx.losses[0])


@scenario("harbour_crane_sway_forecaster", "rmsprop", "healthy", heldout=True)
def h129_crane_sway_healthy(ctx: Context) -> None:
    gen = seeded(12909)
    model = _GustRNN(gain=0.9)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    ctx.attach(model, opt)
    batches = _wind(gen, length=40)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell > 50%", _mean(ctx.losses[-15:]) < 0.5 * _mean(ctx.losses[:5]))


# -- ferris-wheel vibration monitor: loss of plasticity over shifting regimes --------------------


class _VibrationNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 128)
        self.head = nn.Linear(128, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@scenario(
    "ferris_wheel_vibration_monitor",
    "adam",
    "loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    onset=100,
    note="fault labels remapped every 100 steps; high-LR Adam kills ReLU units task after task",
)
def h129_ferris_plasticity(ctx: Context) -> None:
    gen = seeded(12910)
    model = _VibrationNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    perm = torch.arange(10)
    for step in range(600):
        if step and step % 100 == 0:
            perm = torch.randperm(10, generator=gen)
        x, y = next(batches)
        y = perm[y]
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    xs, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.features(xs))
    first, final = _mean(ctx.losses[70:100]), _mean(ctx.losses[570:600])
    ctx.check("> 30% of fc2 units dead", dead > 0.3)
    ctx.check("last regime's loss > 1.5x the first's", final > 1.5 * first)


# -- tabular regressors on generated field data ---------------------------------------------------


class _Regressor(nn.Module):
    def __init__(self, feats: int, hidden: int = 64) -> None:
        super().__init__()
        self.inlet = nn.Linear(feats, hidden)
        self.core = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.core(torch.tanh(self.inlet(x))))).squeeze(-1)


def _field_data(gen: torch.Generator, feats: int, batch: int = 32, noise: float = 0.1):
    w = torch.randn(feats, generator=gen) / math.sqrt(feats)
    while True:
        x = torch.randn(batch, feats, generator=gen)
        y = torch.sin(x @ w) + 0.3 * (x[:, 0] * x[:, 1]) + noise * torch.randn(batch, generator=gen)
        yield x, y


def _train(ctx, model, opt, batches, steps, *, alter=None, loss_fn=F.mse_loss, sched=None):
    ctx.attach(model, opt)
    for step in range(steps):
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        loss = loss_fn(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if sched is not None:
            sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


@scenario(
    "peat_bog_carbon_estimator",
    "radam",
    "update_ratio_out_of_range",
    where=("core",),
    diverges=None,
    heldout=True,
    note="a typo in one parameter group: the core layer runs at lr 1.0 instead of 1e-3",
)
def h129_peat_bog_group_lr_typo(ctx: Context) -> None:
    gen = seeded(12911)
    model = _Regressor(12)
    opt = torch.optim.RAdam(
        [
            {"params": list(model.inlet.parameters()) + list(model.head.parameters())},
            {"params": model.core.parameters(), "lr": 1.0},
        ],
        lr=1e-3,
    )
    ratios = {"core": [], "inlet": []}
    before = {}

    def alter(step, x, y):
        for name in ratios:
            w = getattr(model, name).weight
            if name in before:
                ratios[name].append(float((w.detach() - before[name]).norm() / w.detach().norm()))
            before[name] = w.detach().clone()
        return x, y

    _train(ctx, model, opt, _field_data(gen, 12), 150, alter=alter)
    core = sorted(ratios["core"][20:])[len(ratios["core"][20:]) // 2]
    inlet = sorted(ratios["inlet"][20:])[len(ratios["inlet"][20:]) // 2]
    ctx.check("median core update/weight ratio > 0.01", core > 0.01)
    ctx.check("core ratio > 20x the inlet's", core > 20 * inlet)


@scenario(
    "lacrosse_shot_speed_regressor",
    "nesterov",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="a radar gun glitch: one batch reads 25x the real speeds",
)
def h129_lacrosse_radar_glitch(ctx: Context) -> None:
    gen = seeded(12912)
    model = _Regressor(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, :3] *= 25.0
            y = y * 25.0
        return x, y

    _train(ctx, model, opt, _field_data(gen, 10), 220, alter=alter)
    pre = _mean(ctx.losses[100:120])
    ctx.check("loss at the glitch > 50x the steps before", ctx.losses[120] > 50 * pre)
    ctx.check("loss recovers to < 2x pre-glitch", _mean(ctx.losses[-20:]) < 2 * pre)
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    "curling_stone_glide_regressor",
    "sgd",
    "nonfinite",
    where=("head",),
    diverges=140,
    heldout=True,
    onset=140,
    note="log-distance target; a stone that never left the hack (distance 0) gives log(0)",
)
def h129_curling_log_zero(ctx: Context) -> None:
    gen = seeded(12913)
    model = _Regressor(8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        dist = 20 + 5 * y  # metres of glide
        if step == 140:
            dist = dist.clone()
            dist[3] = 0.0
        return x, torch.log(dist)

    def loss_fn(pred, logd):
        return F.mse_loss(pred + 3.0, logd)

    _train(ctx, model, opt, _field_data(gen, 8), 160, alter=alter, loss_fn=loss_fn)
    ctx.check("loss finite before the zero", _finite(ctx.losses[:140]))
    ctx.check("loss non-finite from the zero on", not math.isfinite(ctx.losses[140]))
    ctx.check(
        "weights non-finite afterwards",
        not all(bool(torch.isfinite(p).all()) for p in model.parameters()),
    )


@scenario(
    "hot_air_balloon_altitude_controller",
    "adadelta",
    "amp_overflow",
    where=("inlet",),
    diverges="auto",
    heldout=True,
    onset=100,
    note="fp16 autocast + GradScaler; the barometer feed switches from hPa to Pa",
)
def h129_balloon_fp16_overflow(ctx: Context) -> None:
    gen = seeded(12914)
    model = _Regressor(6)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _field_data(gen, 6)
    probe = frozen = None
    for step in range(140):
        x, y = next(batches)
        x = x.clone()
        x[:, 0] = 1.0 + 0.01 * x[:, 0]  # pressure in thousands of hPa
        if step == 101:
            frozen = [p.detach().clone() for p in model.parameters()]
        if step >= 100:
            x[:, 0] = x[:, 0] * 1e5  # the feed now reports Pa, unscaled
            probe = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        fp32 = model(probe) if _finite([float(p.sum()) for p in model.parameters()]) else None
    ctx.check("loss finite before the switch", _finite(ctx.losses[:100]))
    ctx.check(
        "every step after the switch skipped: weights frozen",
        frozen is not None
        and all(bool(torch.equal(a, b)) for a, b in zip(frozen, model.parameters(), strict=True)),
    )
    ctx.check("scale collapsed > 2^8", ctx.scales[-1] < ctx.scales[99] / 256)
    ctx.check("fp32 forward of the same batch finite", fp32 is not None and _finite(fp32.tolist()))


@scenario(
    "carousel_motor_load_estimator",
    "adam",
    "adam_second_moment_poisoned",
    where=("inlet", "core", "head"),
    diverges="auto",
    heldout=True,
    onset=150,
    note="one step's loss left multiplied by the 2^20 loss scale: v poisoned, training stalls",
)
def h129_carousel_unscaled_step(ctx: Context) -> None:
    gen = seeded(12915)
    model = _Regressor(10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _field_data(gen, 10, noise=0.05)
    vmax = []
    for step in range(350):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (loss * (2.0**20 if step == 150 else 1.0)).backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        vmax.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))
    ctx.check("second moment jumped > 1e8x", vmax[150] > 1e8 * vmax[149])
    fell_before = _mean(ctx.losses[0:20]) - _mean(ctx.losses[130:150])
    fell_after = _mean(ctx.losses[130:150]) - _mean(ctx.losses[330:350])
    ctx.check("loss was falling before", fell_before > 0.1)
    ctx.check("then stalls: it falls < 20% as much over 200 steps", fell_after < 0.2 * fell_before)


@scenario("cider_press_yield_regressor", "asgd", "healthy", heldout=True)
def h129_cider_press_healthy(ctx: Context) -> None:
    gen = seeded(12916)
    model = _Regressor(9)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100)

    def alter(step, x, y):
        if step % 37 == 0:  # an ordinary noisy pressing: noisier labels now and then
            y = y + 0.3 * torch.randn(y.shape, generator=gen)
        return x, y

    _train(ctx, model, opt, _field_data(gen, 9, noise=0.15), 250, alter=alter)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell > 30%", _mean(ctx.losses[-20:]) < 0.7 * _mean(ctx.losses[:10]))
