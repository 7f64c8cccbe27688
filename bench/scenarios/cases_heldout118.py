"""Held-out set 118 (``h118_``): written blind to steadygrad's rules and monitor.

Hugging Face Flint, Ergo (MoE), Inkling2 text tower and MuseSpark text tower as byte LMs from
tiny configs (no download); hand-written: speech-enhancement mask estimator (fp16 autocast with
a GradScaler), lidar ground-segmentation MLP (a fault and a control), Othello
policy CNN, pulsar-candidate classifier, volcanic-tremor RNN (a fault and a control), sonar
mine/rock transformer encoder, avalanche-danger MLP with a station embedding, solar-flare ReLU
MLP trained over a sequence of solar cycles, bird-song syllable CNN.
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
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers -------------------------------------------------------------------------------


def _finite(losses: list[float]) -> bool:
    return all(math.isfinite(v) for v in losses)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _cfg(model_type: str, **kw):
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type](**kw)


def hf_flint():
    from transformers import AutoModelForCausalLM

    cfg = _cfg(
        "flint",
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        mlp_only_layers=[0, 1],
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
        use_cache=False,
    )
    return AutoModelForCausalLM.from_config(cfg)


def hf_ergo():
    from transformers import AutoModelForCausalLM

    cfg = _cfg(
        "ergo",
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        first_dense_intermediate_size=64,
        num_dense_blocks=1,
        moe_intermediate_size=32,
        shared_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
        mlp_layer_types=["dense", "sparse"],
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=0,
        use_cache=False,
    )
    return AutoModelForCausalLM.from_config(cfg)


def hf_inkling2():
    from transformers import AutoModelForCausalLM

    cfg = _cfg(
        "inkling2_text",
        vocab_size=128,
        unpadded_vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        swa_num_attention_heads=2,
        swa_num_key_value_heads=1,
        swa_head_dim=16,
        sliding_window_size=16,
        rel_extent=32,
        d_rel=4,
        layer_types=["hybrid_sliding", "hybrid"],
        max_position_embeddings=64,
        moe_intermediate_size=32,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_layers_per_attn_res_block=2,
        eos_token_id=1,
        log_scaling_n_floor=64,
        use_cache=False,
    )
    return AutoModelForCausalLM.from_config(cfg)


class MuseSparkByteLM(nn.Module):
    """The MuseSpark text tower (from a tiny config) with an untied byte head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers.models.muse_spark import MuseSparkTextModel

        cfg = _cfg(
            "muse_spark_text",
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            max_position_embeddings=64,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            layer_rope_theta=[10000.0, 0],
            moe_intermediate_size=32,
            num_local_experts=4,
            num_experts_per_tok=2,
            moe_hidden_size=32,
            bos_token_id=0,
            eos_token_id=1,
            use_cache=False,
        )
        self.body = MuseSparkTextModel(cfg)
        self.head = nn.Linear(32, 128, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(input_ids=idx).last_hidden_state)


def _hf_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=x)
    return out if isinstance(out, torch.Tensor) else out.logits


# -- Hugging Face: Flint byte LM, head learning rate multiplied instead of divided ---------------


@scenario(
    "hf_flint_byte_lm",
    "adamax",
    "output_logit_divergence",
    where=("lm_head",),
    diverges=None,
    heldout=True,
    note="muP-style head multiplier applied the wrong way: the untied lm_head runs at ~330x "
    "the trunk's Adamax rate (1.0 against 3e-3): its logits and log-partition climb",
    onset=0,
)
def h118_flint_head_lr_multiplied(ctx: Context) -> None:
    gen = seeded(11801)
    torch.set_num_threads(1)
    model = hf_flint()
    head = list(model.lm_head.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adamax([{"params": rest, "lr": 3e-3}, {"params": head, "lr": HEAD_LR}])
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    probe = next(batches)[0]
    with torch.no_grad():
        start = float(_hf_logits(model, probe).abs().amax())
        lse0 = float(torch.logsumexp(_hf_logits(model, probe), -1).mean())
    for _ in range(160):
        x, y = next(batches)
        loss = lm_loss(_hf_logits(model, x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        end = float(_hf_logits(model, probe).abs().amax())
        lse1 = float(torch.logsumexp(_hf_logits(model, probe), -1).mean())
    ctx.check("output logits grew more than 20x", end > 20 * start)
    ctx.check("log-partition climbed by more than 5 nats", lse1 - lse0 > 5)
    ctx.check("loss finite", _finite(ctx.losses))


# -- Hugging Face: Ergo MoE byte LM, a healthy warm-up + cosine run -------------------------------


@scenario(
    "hf_ergo_moe_byte_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="Ergo (dense block + MoE block) byte LM, AdamW 3e-3 with warm-up and cosine decay, "
    "clipping at 1.0",
)
def h118_ergo_moe_healthy(ctx: Context) -> None:
    gen = seeded(11802)
    torch.set_num_threads(1)
    model = hf_ergo()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps, warm = 160, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    for _ in range(steps):
        x, y = next(batches)
        loss = lm_loss(_hf_logits(model, x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check(
        "loss fell by a third",
        _mean(ctx.losses[-10:]) < 0.67 * _mean(ctx.losses[:5]),
    )


# -- Hugging Face: Inkling2 byte LM, one un-unscaled step poisons Adam's second moment -------------


@scenario(
    "hf_inkling2_text_byte_lm",
    "adam",
    "adam_second_moment_poisoned",
    where=("lm_head", "model.embed_tokens"),
    diverges=None,
    heldout=True,
    note="resuming from a checkpoint, one step backpropagates the loss times the saved "
    "GradScaler scale (65536) without unscaling; Adam's v absorbs it and the run stalls",
    onset=60,
)
def h118_inkling2_scale_not_unscaled(ctx: Context) -> None:
    gen = seeded(11803)
    torch.set_num_threads(1)
    model = hf_inkling2()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    onset, steps = 60, 200
    v_before = v_after = 0.0
    w = model.lm_head.weight
    for step in range(steps):
        x, y = next(batches)
        loss = lm_loss(_hf_logits(model, x), y)
        (loss * 65536.0 if step == onset else loss).backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step == onset - 1:
            v_before = float(opt.state[w]["exp_avg_sq"].mean())
        if step == onset:
            v_after = float(opt.state[w]["exp_avg_sq"].mean())
    L = ctx.losses
    ctx.check("lm_head second moment jumped over 1e5x", v_after > 1e5 * v_before)
    before = _mean(L[onset - 40 : onset - 30]) - _mean(L[onset - 10 : onset])
    ctx.check("loss was falling before the poisoned step", before > 0.1)
    ctx.check(
        "140 steps later the loss is still no lower than before the poisoned step",
        _mean(L[-10:]) > _mean(L[onset - 10 : onset]) - 0.05,
    )
    ctx.check("loss finite", _finite(L))


# -- Hugging Face: MuseSpark byte LM, a healthy NAdam run -----------------------------------------


@scenario(
    "hf_muse_spark_text_byte_lm",
    "nadam",
    "healthy",
    heldout=True,
    note="MuseSpark text tower (MoE) with an untied byte head, NAdam 2e-3, step decay at 100",
)
def h118_muse_spark_healthy(ctx: Context) -> None:
    gen = seeded(11804)
    torch.set_num_threads(1)
    model = MuseSparkByteLM()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100, gamma=0.3)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    for _ in range(150):
        x, y = next(batches)
        loss = lm_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell by a third", _mean(ctx.losses[-10:]) < 0.67 * _mean(ctx.losses[:5]))


# -- Hugging Face: MuseSpark byte LM, SGD warm-up to a rate above the curvature's limit -----------


@scenario(
    "hf_muse_spark_text_byte_lm",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="plain SGD warmed up linearly (over 120 steps) to a peak of 6.0, far past "
    "2/sharpness: the loss falls, bounces from ~step 12 (rate ~0.65), and blows up from "
    "step ~43 (rate ~2.2) to NaN",
    onset=12,
)
def h118_muse_spark_sgd_peak_too_high(ctx: Context) -> None:
    gen = seeded(11805)
    torch.set_num_threads(1)
    model = MuseSparkByteLM()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    ctx.attach(model, opt)
    batches = text_batches(gen, batch=16, length=32)
    peak, warm = SHARP_PEAK, 120
    for step in range(150):
        for g in opt.param_groups:
            g["lr"] = peak * min(1.0, (step + 1) / warm)
        x, y = next(batches)
        loss = lm_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    L = [v if math.isfinite(v) else 1e9 for v in ctx.losses]
    best = min(L[:12])
    ctx.check("loss fell while the rate was small", best < L[0] - 0.3)
    ctx.check("loss climbs above its start once the rate is too high", max(L[12:]) > L[0] + 0.5)


SHARP_PEAK = 6.0
HEAD_LR = 1.0


# -- speech-enhancement mask estimator: an int16-scale shard overflows fp16 ----------------------


class MaskEstimator(nn.Module):
    """Frame-wise spectral mask: magnitudes of 5 stacked frames -> sigmoid mask of the centre."""

    def __init__(self, bins: int = 32, ctx_frames: int = 5, hidden: int = 64) -> None:
        super().__init__()
        self.enc = nn.Linear(bins * ctx_frames, hidden)
        self.mid = nn.Linear(hidden, hidden)
        self.mask = nn.Linear(hidden, bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.enc(x))
        return torch.sigmoid(self.mask(F.relu(self.mid(h))))


def speech_batches(gen: torch.Generator, batch: int = 64, bins: int = 32, frames: int = 5):
    """Noisy magnitude frames (harmonic 'speech' + broadband noise); target: the clean centre."""
    k = torch.arange(bins, dtype=torch.float32)
    while True:
        f0 = torch.rand(batch, 1, generator=gen) * 3 + 2
        amp = torch.rand(batch, frames, 1, generator=gen) * 0.8 + 0.2
        clean = amp * torch.exp(-((k % f0[:, None]) ** 2) / 0.5)  # (b, frames, bins)
        noise = torch.rand(batch, frames, bins, generator=gen) * 0.5
        noisy = clean + noise
        yield noisy.reshape(batch, -1), clean[:, frames // 2], noisy[:, frames // 2]


@scenario(
    "speech_enhancement_mask_mlp",
    "adam",
    "amp_overflow",
    where=("enc",),
    diverges=80,
    heldout=True,
    note="fp16 autocast + GradScaler; from step 80 a shard stored as int16-scale magnitudes "
    "(x32768, not [-1, 1] floats) arrives: the first layer's fp16 outputs overflow to inf "
    "and every step is skipped while the scale collapses",
    onset=80,
)
def h118_speech_mask_int16_shard(ctx: Context) -> None:
    gen = seeded(11806)
    torch.set_num_threads(1)
    model = MaskEstimator()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = speech_batches(gen)
    onset, overflowed = 80, False
    for step in range(120):
        x, clean, noisy_c = next(batches)
        gain = 32768.0 if step >= onset else 1.0
        x, clean, noisy_c = x * gain, clean * gain, noisy_c * gain
        with torch.autocast("cpu", dtype=torch.float16):
            h = model.enc(x)
            if step == onset:
                overflowed = not bool(torch.isfinite(h).all())
            m = model(x)
        loss = F.mse_loss((m.float() * noisy_c) / gain, clean / gain)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    L = ctx.losses
    ctx.check("trained before the shard", _mean(L[70:80]) < 0.8 * _mean(L[:5]))
    ctx.check("first layer overflowed fp16 on the int16 shard", overflowed)
    ctx.check("loss non-finite from the shard on", not any(math.isfinite(v) for v in L[onset:]))
    ctx.check("scale collapsed by over 1e6", ctx.scales[-1] < ctx.scales[onset - 1] / 1e6)


# -- lidar ground segmentation: BatchNorm on the epoch's last, 2-point batch ---------------------


class GroundSegMLP(nn.Module):
    def __init__(self, feats: int = 6, hidden: int = 32) -> None:
        super().__init__()
        self.enc1 = nn.Linear(feats, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.enc2 = nn.Linear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.cls = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.enc1(x)))
        return self.cls(F.relu(self.bn2(self.enc2(h))))


def lidar_sweep(gen: torch.Generator, n: int):
    """Points of a sweep: (x, y, z, intensity, local height std, height above lowest
    neighbour); ground when the point is near the local terrain (4% annotation noise)."""
    xy = torch.rand(n, 2, generator=gen) * 40 - 20
    terrain = 0.3 * torch.sin(xy[:, :1] / 5) + 0.2 * torch.cos(xy[:, 1:] / 7)
    ground = torch.rand(n, 1, generator=gen) < 0.55
    height = torch.where(
        ground, 0.05 * torch.randn(n, 1, generator=gen), 0.3 + 2 * torch.rand(n, 1, generator=gen)
    )
    z = terrain + height
    inten = torch.where(ground, 0.3, 0.6) + 0.2 * torch.randn(n, 1, generator=gen)
    hstd = torch.where(ground, 0.05, 0.4) + 0.1 * torch.rand(n, 1, generator=gen)
    above = height + 0.1 * torch.randn(n, 1, generator=gen)
    x = torch.cat([xy / 20, z, inten, hstd, above], 1)
    y = ground.squeeze(1).long()
    flip = torch.rand(n, generator=gen) < 0.04  # annotation noise
    y = torch.where(flip, 1 - y, y)
    return x, y


def sweep_batches(gen: torch.Generator, points: int = 256, sweeps: int = 4, dense_every: int = 0):
    """A batch of ``sweeps`` sweeps of ``points`` points each; with ``dense_every``, every that
    many batches one sweep comes from the fleet's 128-beam unit (64x the points)."""
    step = 0
    while True:
        sizes = [points] * sweeps
        if dense_every and step % dense_every == dense_every - 1:
            sizes[0] = 64 * points
        parts = [lidar_sweep(gen, n) for n in sizes]
        step += 1
        yield torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), sweeps


@scenario(
    "lidar_ground_segmentation_mlp",
    "sgd_mom",
    "gradient_spike",
    where=("enc1", "enc2", "cls"),
    diverges=None,
    heldout=True,
    note="the loss is summed over points and divided by the number of sweeps (per-sweep "
    "normalisation); every 15th batch holds a 128-beam sweep with 64x the points, so the "
    "gradient spikes while the logged per-point loss stays calm",
    onset=14,
)
def h118_lidar_dense_sweep_sum_loss(ctx: Context) -> None:
    gen = seeded(11807)
    torch.set_num_threads(1)
    model = GroundSegMLP()
    opt = torch.optim.SGD(model.parameters(), lr=2e-4, momentum=0.9)
    ctx.attach(model, opt)
    batches = sweep_batches(gen, dense_every=15)
    norms, dense = [], []
    for _step in range(150):
        x, y, sweeps = next(batches)
        ctx.targets(y)
        per_point = F.cross_entropy(model(x), y, reduction="none")
        (per_point.sum() / sweeps).backward()
        norms.append(grad_norm(model))
        dense.append(len(y) > 2000)
        opt.step()
        loss = per_point.mean()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    spikes = [g for g, t in zip(norms, dense, strict=True) if t]
    normal = sorted(g for g, t in zip(norms, dense, strict=True) if not t)
    med = normal[len(normal) // 2]
    L = ctx.losses
    ctx.check("the first dense sweep is at step 14", dense.index(True) == 14)
    ctx.check("every dense batch spikes the gradient 4x the median", min(spikes) > 4 * med)
    calm = all(L[i] < 2 * _mean(L[max(0, i - 5) : i]) for i, t in enumerate(dense) if t)
    ctx.check("the logged loss does not spike with it", calm)
    ctx.check("loss finite and falling", _finite(L) and _mean(L[-10:]) < _mean(L[:5]))


@scenario(
    "lidar_ground_segmentation_mlp",
    "sgd_nesterov",
    "healthy",
    heldout=True,
    note="the same segmenter with the loss averaged per point (mixed 16- and 128-beam "
    "sweeps), Nesterov SGD and cosine decay",
)
def h118_lidar_healthy(ctx: Context) -> None:
    gen = seeded(11808)
    torch.set_num_threads(1)
    model = GroundSegMLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 150, eta_min=0.005)
    ctx.attach(model, opt)
    batches = sweep_batches(gen, dense_every=15)
    for _ in range(150):
        x, y, _sweeps = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell by half", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:5]))


# -- Othello policy CNN: a memorised opening book drives the softmax to exactly one ---------------


class OthelloPolicy(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.policy = nn.Linear(width * 64, 64)

    def forward(self, board: torch.Tensor) -> torch.Tensor:
        planes = torch.stack([(board == 1).float(), (board == -1).float()], 1)
        h = F.relu(self.conv2(F.relu(self.conv1(planes))))
        return self.policy(h.flatten(1))


def othello_book(gen: torch.Generator, n: int):
    """Generated positions (+1 own, -1 opponent, 0 empty) and a book move: the empty square
    with the highest fixed positional weight (corners high, X-squares low)."""
    boards = torch.randint(-1, 2, (n, 8, 8), generator=gen)
    weights = torch.randn(64, generator=gen)
    score = weights.expand(n, 64).masked_fill(boards.flatten(1) != 0, -1e9)
    return boards.float(), score.argmax(1)


@scenario(
    "othello_policy_cnn",
    "rmsprop",
    "softmax_collapse",
    where=("policy",),
    diverges=None,
    heldout=True,
    note="a 256-position opening book memorised for hundreds of epochs with RMSprop and no "
    "regularisation: the book moves' probabilities round to exactly 1.0 in float32",
    onset=0,
)
def h118_othello_book_memorised(ctx: Context) -> None:
    gen = seeded(11809)
    torch.set_num_threads(1)
    model = OthelloPolicy()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    boards, moves = othello_book(gen, 256)
    ctx.attach(model, opt)
    for _step in range(1500):
        idx = torch.randperm(256, generator=gen)[:64]
        x, y = boards[idx], moves[idx]
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        frac = collapsed_fraction(model(boards), moves)
    ctx.check("over half of the book's moves get probability exactly 1.0", frac > 0.5)
    ctx.check("loss reached (near) zero", ctx.losses[-1] < 1e-4)


# -- pulsar-candidate classifier: one candidate's DM-curve features in raw units ------------------


def pulsar_batches(gen: torch.Generator, batch: int = 64):
    """Eight standardised candidate features (integrated-profile and DM-SNR-curve mean, std,
    kurtosis, skewness); pulsars (~10%) have narrower, more skewed profiles."""
    shift = torch.tensor([-1.2, -0.8, 1.5, 1.4, 0.9, 0.7, -0.9, -0.8])
    while True:
        y = (torch.rand(batch, generator=gen) < 0.1).long()
        x = torch.randn(batch, 8, generator=gen) + y[:, None] * shift
        yield x, y


@scenario(
    "pulsar_candidate_classifier",
    "adagrad",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="at step 90 a candidate from a survey that stored DM-curve statistics in raw units "
    "(values ~1e4, unstandardised) enters the batch",
    onset=90,
)
def h118_pulsar_raw_dm_candidate(ctx: Context) -> None:
    gen = seeded(11810)
    torch.set_num_threads(1)
    model = nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2)
    )
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    ctx.attach(model, opt)
    batches = pulsar_batches(gen)
    onset, peak = 90, 0.0
    for step in range(160):
        x, y = next(batches)
        if step == onset:
            x, y = x.clone(), y.clone()
            x[7, 4:] = torch.tensor([8.3e3, 2.1e4, 3.9e3, 1.2e4])
            y[7] = 1  # a known pulsar, re-observed by the other survey
            peak = float(x.abs().max())
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    L = ctx.losses
    ctx.check("the batch holds a value 1000x the standardised range", peak > 1000 * 5)
    ctx.check("the loss jumps 10x at the outlier", L[onset] > 10 * _mean(L[onset - 10 : onset]))
    ctx.check("loss finite", _finite(L))


# -- volcanic-tremor RNN: ReLU recurrence initialised above unit gain ------------------------------


def tremor_batches(gen: torch.Generator, batch: int = 32, length: int = 100):
    """RSAM-like tremor amplitude series (log scale, standardised); label: an accelerating
    (precursory) trend in the last third."""
    t = torch.linspace(0, 1, length)
    while True:
        y = (torch.rand(batch, generator=gen) < 0.5).long()
        base = 0.3 * torch.randn(batch, 1, generator=gen)
        ramp_ = torch.clamp(t - 0.66, min=0) ** 2 * 9 * y[:, None]
        noise = 0.4 * torch.randn(batch, length, generator=gen)
        yield (base + ramp_ + noise)[..., None], y


class TremorRNN(nn.Module):
    def __init__(self, cell: str, hidden: int = 48) -> None:
        super().__init__()
        if cell == "relu":
            self.rnn = nn.RNN(1, hidden, batch_first=True, nonlinearity="relu")
        else:
            self.rnn = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@scenario(
    "volcanic_tremor_rnn",
    "asgd",
    "exploding_gradients",
    where=("rnn",),
    diverges="auto",
    heldout=True,
    note="ReLU RNN over 100 tremor samples with its recurrence initialised as 1.5x an "
    "orthogonal matrix (an 'IRNN with headroom'): backprop through time is large from the "
    "start and blows up (~1e12) late in the run, then the loss is NaN",
    onset=0,
)
def h118_tremor_relu_rnn_gain(ctx: Context) -> None:
    gen = seeded(11811)
    torch.set_num_threads(1)
    model = TremorRNN("relu")
    with torch.no_grad():
        nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=TREMOR_GAIN)
        model.rnn.bias_hh_l0.zero_()
    opt = torch.optim.ASGD(model.parameters(), lr=0.01)
    ctx.attach(model, opt)
    batches = tremor_batches(gen)
    norms, shares = [], []
    for _step in range(100):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        norms.append(grad_norm(model))
        shares.append(float(model.rnn.weight_hh_l0.grad.norm()) ** 2 / max(norms[-1], 1e-30) ** 2)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    finite = [(g, s) for g, s in zip(norms, shares, strict=True) if math.isfinite(g)]
    top, top_share = max(finite)
    ctx.check("the gradient norm grew 1000x over its first value", top > 1000 * norms[0])
    ctx.check("most of the largest gradient in the recurrence", top_share > 0.5)
    bad = [v for v in ctx.losses if not math.isfinite(v) or v > 10]
    ctx.check("the run breaks (loss > 10 or non-finite)", len(bad) > 0)


@scenario(
    "volcanic_tremor_rnn",
    "radam",
    "healthy",
    heldout=True,
    note="a GRU on the same tremor series, RAdam 3e-3, clipping at 1.0",
)
def h118_tremor_gru_healthy(ctx: Context) -> None:
    gen = seeded(11812)
    torch.set_num_threads(1)
    model = TremorRNN("gru")
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = tremor_batches(gen)
    for _ in range(120):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss fell by half", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:5]))


TREMOR_GAIN = 1.5


# -- sonar mine/rock transformer: attention logits grow without a QK norm --------------------------


class SonarAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q = self.q(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        k = self.k(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        return q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        a = torch.softmax(self.logits(x), -1)
        v = self.v(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        return self.o((a @ v).transpose(1, 2).reshape(b, t, d))


class SonarBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SonarAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class SonarEncoder(nn.Module):
    """Sonar returns as 15 bands of 4 frequency energies: band tokens, two blocks, mean pool."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(15, dim))
        self.blocks = nn.ModuleList(SonarBlock(dim, heads) for _ in range(2))
        self.head = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(-1, 15, 4)) + self.pos
        for blk in self.blocks:
            h = blk(h)
        return self.head(h.mean(1))

    def max_logit(self, x: torch.Tensor) -> float:
        with torch.no_grad():
            h = self.embed(x.reshape(-1, 15, 4)) + self.pos
            top = 0.0
            for blk in self.blocks:
                top = max(top, float(blk.attn.logits(blk.ln1(h)).abs().amax()))
                h = blk(h)
        return top


def sonar_batches(gen: torch.Generator, batch: int = 32):
    """60 band energies; mines (metal cylinders) have a resonance band whose position varies."""
    f = torch.arange(60, dtype=torch.float32)
    while True:
        y = (torch.rand(batch, generator=gen) < 0.5).long()
        centre = torch.randint(10, 50, (batch, 1), generator=gen).float()
        peak = torch.exp(-((f - centre) ** 2) / 8) * y[:, None]
        x = 0.3 * torch.rand(batch, 60, generator=gen) + 0.8 * peak
        flip = torch.rand(batch, generator=gen) < 0.1  # mislabelled survey runs
        yield x, torch.where(flip, 1 - y, y)


@scenario(
    "sonar_mine_rock_transformer",
    "adam",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="a band-token transformer without QK normalisation, Adam at 3e-2 with no weight "
    "decay on a task one resonance band decides (10% mislabelled runs keep gradients "
    "alive): q.k logits grow ~100x, to ~100",
    onset=0,
)
def h118_sonar_attention_logits_grow(ctx: Context) -> None:
    gen = seeded(11813)
    torch.set_num_threads(1)
    model = SonarEncoder()
    opt = torch.optim.Adam(model.parameters(), lr=SONAR_LR)
    ctx.attach(model, opt)
    batches = sonar_batches(gen)
    probe = next(batches)[0]
    start = model.max_logit(probe)
    for _ in range(300):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    end = model.max_logit(probe)
    ctx.check("attention logits grew 20x", end > 20 * start)
    ctx.check("attention logits above 50", end > 50)


SONAR_LR = 3e-2


# -- avalanche-danger MLP: the station embedding got an SGD-sized learning rate under Adam --------


class AvalancheDanger(nn.Module):
    def __init__(self, stations: int = 40, weather: int = 10) -> None:
        super().__init__()
        self.station_emb = nn.Embedding(stations, 8, max_norm=1.0)
        self.trunk = nn.Sequential(
            nn.Linear(weather + 8, 48), nn.ReLU(), nn.Linear(48, 48), nn.ReLU()
        )
        self.danger = nn.Linear(48, 5)

    def forward(self, station: torch.Tensor, weather: torch.Tensor) -> torch.Tensor:
        return self.danger(self.trunk(torch.cat([self.station_emb(station), weather], 1)))


def avalanche_batches(gen: torch.Generator, batch: int = 64):
    """Station id + 10 weather features (new snow, wind, temperature trend, ...); danger
    level 1-5 from a fixed score plus a per-station offset."""
    w = torch.randn(10, generator=gen)
    offset = torch.randn(40, generator=gen)
    while True:
        st = torch.randint(0, 40, (batch,), generator=gen)
        x = torch.randn(batch, 10, generator=gen)
        score = x @ w / 3 + 0.7 * offset[st] + 0.3 * torch.randn(batch, generator=gen)
        yield st, x, torch.bucketize(score, torch.tensor([-1.2, -0.4, 0.4, 1.2]))


@scenario(
    "avalanche_danger_mlp",
    "radam",
    "update_ratio_out_of_range",
    where=("station_emb",),
    diverges=None,
    heldout=True,
    note="the (max-norm 1) station embedding's parameter group kept lr=1.0 from the old SGD "
    "config after the switch to RAdam: each step moves the station vectors by about their "
    "own size",
    onset=0,
)
def h118_avalanche_station_lr(ctx: Context) -> None:
    gen = seeded(11814)
    torch.set_num_threads(1)
    model = AvalancheDanger()
    emb = list(model.station_emb.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("station_emb")]
    opt = torch.optim.RAdam([{"params": rest, "lr": 3e-3}, {"params": emb, "lr": 1.0}])
    ctx.attach(model, opt)
    batches = avalanche_batches(gen)
    ratios, trunk_ratios = [], []
    for _ in range(150):
        st, x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(st, x), y)
        loss.backward()
        before = model.station_emb.weight.detach().clone()
        tb = model.trunk[0].weight.detach().clone()
        opt.step()
        with torch.no_grad():
            ratios.append(float((model.station_emb.weight - before).norm() / before.norm()))
            trunk_ratios.append(float((model.trunk[0].weight - tb).norm() / tb.norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    r = sorted(ratios[10:])[len(ratios[10:]) // 2]
    rt = sorted(trunk_ratios[10:])[len(trunk_ratios[10:]) // 2]
    ctx.check("station_emb's median update ratio above 0.1", r > 0.1)
    ctx.check("the trunk's stays below 0.01", rt < 0.01)
    ctx.check("loss finite", _finite(ctx.losses))


# -- bird-song syllable CNN: per-clip standardisation of a silent clip ----------------------------


class SyllableCNN(nn.Module):
    def __init__(self, mels: int = 16, classes: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(mels, 32, 5, padding=2)
        self.conv2 = nn.Conv1d(32, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(h.mean(-1))


def syllable_batches(gen: torch.Generator, batch: int = 32, mels: int = 16, frames: int = 40):
    """Log-mel-like clips: each syllable type sweeps its own band up or down over time."""
    t = torch.linspace(0, 1, frames)
    m = torch.arange(mels, dtype=torch.float32)
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        start = (y % 3).float()[:, None] * 5 + 1
        slope = torch.where(y < 3, 6.0, -6.0)[:, None]
        centre = start + slope * t + 6 * (y >= 3).float()[:, None]  # (b, frames)
        clip = torch.exp(-((m[None, :, None] - centre[:, None, :]) ** 2) / 3)
        clip = clip * (0.5 + torch.rand(batch, 1, 1, generator=gen))
        yield clip + 0.1 * torch.rand(batch, mels, frames, generator=gen), y


def standardise(clips: torch.Tensor) -> torch.Tensor:
    """Per-clip standardisation, as the preprocessing script did it (no epsilon)."""
    mu = clips.mean((1, 2), keepdim=True)
    return (clips - mu) / clips.std((1, 2), keepdim=True)


@scenario(
    "bird_song_syllable_cnn",
    "adamw",
    "nonfinite",
    where=("conv1",),
    diverges=70,
    heldout=True,
    note="a recorder dropout gives one all-zero clip at step 70; per-clip standardisation "
    "without an epsilon computes 0/0, NaN enters conv1 and every weight",
    onset=70,
)
def h118_birdsong_silent_clip(ctx: Context) -> None:
    gen = seeded(11816)
    torch.set_num_threads(1)
    model = SyllableCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    batches = syllable_batches(gen)
    onset, nan_input = 70, False
    for step in range(100):
        clips, y = next(batches)
        if step == onset:
            clips = clips.clone()
            clips[5] = 0.0
        x = standardise(clips)
        if step == onset:
            nan_input = bool(torch.isnan(x).any())
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    L = ctx.losses
    ctx.check("trained before the silent clip", _mean(L[60:70]) < 0.6 * _mean(L[:5]))
    ctx.check("the standardised batch holds NaN", nan_input)
    ctx.check(
        "loss NaN from step 70", math.isnan(L[onset]) and all(math.isnan(v) for v in L[onset:])
    )
    ctx.check("conv1 weights non-finite", not bool(torch.isfinite(model.conv1.weight).all()))


# -- solar-flare MLP over solar cycles: a warm restart per cycle leaves the net unable to learn ----


def flare_cycle(gen: torch.Generator, n: int = 2048):
    """12 SHARP-like magnetogram features of active regions; the flaring rule of a cycle is
    a new one (|x.w| against |x.v|: the field's free-energy proxies change cycle to cycle)."""
    x = torch.randn(n, 12, generator=gen)
    w, v = torch.randn(12, generator=gen), torch.randn(12, generator=gen)
    return x, ((x @ w).abs() - (x @ v).abs() > 0).long()


def _flare_net() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(12, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2)
    )


@scenario(
    "solar_flare_cycle_mlp",
    "adadelta",
    "loss_of_plasticity",
    where=("2", "3"),
    diverges=None,
    heldout=True,
    note="continual training over three solar cycles (a new flaring rule each); each new cycle "
    "starts with a 10-step warm restart at 30x Adadelta's rate, which silences half of the "
    "second layer's ReLUs: later cycles never get below 0.5 while a fresh net reaches ~0.1",
    onset=150,
)
def h118_flare_cycle_warm_restart(ctx: Context) -> None:
    gen = seeded(11815)
    torch.set_num_threads(1)
    model = _flare_net()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    cycle_end = []
    x = y = None
    for cycle in range(3):
        x, y = flare_cycle(gen)
        for s in range(150):
            for g in opt.param_groups:
                g["lr"] = 30.0 if cycle > 0 and s < 10 else 1.0
            i = torch.randint(0, len(y), (64,), generator=gen)
            ctx.targets(y[i])
            loss = F.cross_entropy(model(x[i]), y[i])
            loss.backward()
            opt.step()
            ctx.step(loss)
            opt.zero_grad(set_to_none=True)
        cycle_end.append(_mean(ctx.losses[-20:]))
    with torch.no_grad():
        dead = dead_fraction(F.relu(model[2](F.relu(model[0](x)))))
    fresh = _flare_net()
    fopt = torch.optim.Adadelta(fresh.parameters(), lr=1.0)
    fl = []
    for _ in range(150):
        i = torch.randint(0, len(y), (64,), generator=gen)
        floss = F.cross_entropy(fresh(x[i]), y[i])
        floss.backward()
        fopt.step()
        fopt.zero_grad(set_to_none=True)
        fl.append(float(floss.detach()))
    ctx.check("the first cycle was learnt", cycle_end[0] < 0.25)
    ctx.check("over 40% of the second layer's units dead", dead > 0.4)
    ctx.check("the last cycle ends 3x above a fresh net", cycle_end[-1] > 3 * _mean(fl[-20:]))
