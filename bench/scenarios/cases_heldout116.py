"""Held-out set 116 (``h116_``): blind induced instabilities and healthy controls.

Hugging Face Step3p7 and Kimi K2.5 text towers (tiny configs, no download) as byte LMs, each a
fault and a control; hand-written models of fields not yet covered: a quantile (pinball) demand
forecaster, a CTC keyword spotter under fp16 autocast, a handwriting mixture-density RNN, a
prototypical few-shot encoder, a music-genre spectrogram transformer, a learned-index regressor,
denoising score matching on 2-D data, a sea-ice concentration conv net, a satellite cloud-mask
pixel classifier, a protein secondary-structure BiGRU, a traffic-sign CNN with a spatial
transformer and a robot-arm inverse-dynamics MLP.
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

# -- Hugging Face text towers ---------------------------------------------------------------------


class _TowerLM(nn.Module):
    """A text tower (hidden states out) with an untied language-model head."""

    def __init__(self, tower: nn.Module, dim: int = 32, vocab: int = 128) -> None:
        super().__init__()
        self.tower = tower
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.tower(input_ids=idx).last_hidden_state)


def _step3p7(seed: int) -> _TowerLM:
    from transformers.models.step3p7.configuration_step3p7 import Step3p7TextConfig
    from transformers.models.step3p7.modeling_step3p7 import Step3p7TextModel

    torch.manual_seed(seed)
    config = Step3p7TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        n_routed_experts=4,
        num_experts_per_tok=2,
        share_expert_dim=32,
        moe_intermediate_size=32,
        mlp_layer_types=["dense", "sparse"],
        max_position_embeddings=64,
        sliding_window=8,
    )
    return _TowerLM(Step3p7TextModel(config))


def _kimi_k25(seed: int) -> nn.Module:
    from transformers import AutoModelForCausalLM
    from transformers.models.kimi_k25.configuration_kimi_k25 import Kimi_K25Config

    torch.manual_seed(seed)
    config = Kimi_K25Config(
        text_config=dict(
            model_type="deepseek_v3",
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            moe_intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            n_routed_experts=4,
            num_experts_per_tok=2,
            n_shared_experts=1,
            first_k_dense_replace=1,
            n_group=1,
            topk_group=1,
            q_lora_rank=16,
            kv_lora_rank=16,
            qk_rope_head_dim=8,
            qk_nope_head_dim=8,
            v_head_dim=16,
            max_position_embeddings=64,
        )
    )
    return AutoModelForCausalLM.from_config(config.text_config)


def _kimi_logits(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
    return model(input_ids=idx).logits


@scenario(
    "hf_step3p7_text_tower_lm",
    "adamw",
    "output_logit_divergence",
    heldout=True,
    where=("lm_head",),
    diverges="auto",
    note="untied head in its own group at 1000x the LR (a muP width multiplier applied the "
    "wrong way) and no weight decay: the head's logits run away",
    onset=0,
)
def h116_step3p7_head_runaway(ctx: Context) -> None:
    gen = seeded(11601)
    model = _step3p7(11601)
    head = list(model.lm_head.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith("lm_head")]
    opt = torch.optim.AdamW(
        [
            {"params": body, "lr": 1e-3, "weight_decay": 0.1},
            {"params": head, "lr": 1.0, "weight_decay": 0.0},
        ]
    )
    ctx.attach(model, opt)
    data = text_batches(gen, batch=8, length=16)
    peaks = []
    for _ in range(160):
        x, y = next(data)
        logits = model(x)
        loss = lm_loss(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peaks.append(float(logits.detach().abs().max()))
    ctx.check("head logits grew past 60", max(peaks) > 60.0)
    ctx.check("logits grew 100x from the start", max(peaks) > 100 * peaks[0])
    ctx.check("loss rose 5 nats above its start", max(ctx.losses[5:80]) > ctx.losses[0] + 5)


@scenario(
    "hf_step3p7_text_tower_lm",
    "adamw",
    "healthy",
    heldout=True,
    note="warmup + cosine decay, clipping, weight decay: a normal byte-LM run",
)
def h116_step3p7_cosine_control(ctx: Context) -> None:
    gen = seeded(11602)
    model = _step3p7(11602)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    ctx.attach(model, opt)
    data = text_batches(gen, batch=8, length=16)
    steps = 160
    for step in range(steps):
        warm = min(1.0, (step + 1) / 20)
        opt.param_groups[0]["lr"] = (
            3e-3 * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        )
        x, y = next(data)
        loss = lm_loss(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check("loss fell", last < first - 0.8)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "hf_kimi_k25_text_tower_lm",
    "adam",
    "adam_second_moment_poisoned",
    heldout=True,
    where=("lm_head", "model.embed_tokens"),
    note="a gradient-accumulation bug multiplies one step's gradient by 1e5 (divides by the "
    "micro-batch count's reciprocal): Adam's v is poisoned and the model freezes",
    onset=50,
)
def h116_kimi_k25_poisoned_v(ctx: Context) -> None:
    gen = seeded(11603)
    model = _kimi_k25(11603)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.9999))
    ctx.attach(model, opt)
    data = text_batches(gen, batch=8, length=16)
    emb = model.model.embed_tokens.weight
    head = model.lm_head.weight
    v_before = v_after = 0.0
    moved_before = moved_after = 0.0
    for step in range(150):
        x, y = next(data)
        loss = lm_loss(_kimi_logits(model, x), y)
        loss.backward()
        if step == 50:
            v_before = float(opt.state[emb]["exp_avg_sq"].max())
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.mul_(1e5)  # the accumulated gradient of a broken micro-batch loop
        w0 = head.detach().clone()
        opt.step()
        if 40 <= step < 50:
            moved_before += float((head.detach() - w0).norm())
        if 120 <= step < 130:
            moved_after += float((head.detach() - w0).norm())
        if step == 51:
            v_after = float(opt.state[emb]["exp_avg_sq"].max())
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("embedding v jumped by 1e6x", v_after > 1e6 * v_before)
    ctx.check("lm_head updates shrank 20x after the poison", moved_after * 20 < moved_before)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "hf_kimi_k25_text_tower_lm",
    "adam",
    "healthy",
    heldout=True,
    note="linear warmup then constant LR with clipping; MoE routing noise",
)
def h116_kimi_k25_warmup_control(ctx: Context) -> None:
    gen = seeded(11604)
    model = _kimi_k25(11604)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    data = text_batches(gen, batch=8, length=16)
    for step in range(150):
        opt.param_groups[0]["lr"] = 2e-3 * min(1.0, (step + 1) / 25)
        x, y = next(data)
        loss = lm_loss(_kimi_logits(model, x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    first, last = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check("loss fell", last < first - 0.8)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- quantile demand forecaster: warm restart spike -----------------------------------------------


class _QuantileForecaster(nn.Module):
    def __init__(self, window: int = 14, quantiles: int = 3) -> None:
        super().__init__()
        self.store = nn.Embedding(20, 8)
        self.body = nn.Sequential(
            nn.Linear(window + 8 + 2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU()
        )
        self.head = nn.Linear(64, quantiles)

    def forward(self, hist, store, dow):
        h = torch.cat([hist, self.store(store), torch.sin(dow), torch.cos(dow)], 1)
        return self.head(self.body(h))


def _demand_batch(gen: torch.Generator, n: int = 128, window: int = 14):
    store = torch.randint(0, 20, (n,), generator=gen)
    level = 1.0 + (store.float() % 5) * 0.4
    t0 = torch.randint(0, 365, (n, 1), generator=gen).float()
    t = t0 + torch.arange(window + 1).float()
    season = level[:, None] * (1 + 0.3 * torch.sin(2 * math.pi * t / 7))
    series = season + 0.25 * torch.randn(n, window + 1, generator=gen) * level[:, None]
    dow = 2 * math.pi * (t[:, -1:] % 7) / 7
    return series[:, :window], store, dow, series[:, window]


_TAUS = torch.tensor([0.1, 0.5, 0.9])


def _pinball(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    err = y[:, None] - pred
    return torch.maximum(_TAUS * err, (_TAUS - 1) * err).mean()


@scenario(
    "sku_quantile_demand_pinball",
    "nadam",
    "loss_spike",
    heldout=True,
    note="SGDR warm restart jumps the LR back 12x onto a sharp trained net: one spike, recovers",
    onset=120,
)
def h116_demand_pinball_restart_spike(ctx: Context) -> None:
    gen = seeded(11605)
    model = _QuantileForecaster()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for step in range(200):
        if step < 120:
            lr = 2e-3 * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * step / 120)))
        else:
            lr = 2.5e-2 * 0.5 * (1 + math.cos(math.pi * (step - 120) / 80)) + 1e-5
        opt.param_groups[0]["lr"] = lr
        hist, store, dow, y = _demand_batch(gen)
        loss = _pinball(model(hist, store, dow), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    base = sum(ctx.losses[110:120]) / 10
    peak = max(ctx.losses[120:135])
    ctx.check("loss spiked 3x after the restart", peak > 3 * base)
    ctx.check("it recovered", sum(ctx.losses[-10:]) / 10 < 1.5 * base)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- CTC keyword spotter under fp16 autocast: overflow ---------------------------------------------


class _KwsCTC(nn.Module):
    def __init__(self, mels: int = 16, symbols: int = 6) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(mels, 32, 5, padding=2)
        self.conv2 = nn.Conv1d(32, 32, 5, padding=2)
        self.head = nn.Linear(32, symbols)

    def forward(self, x):  # x: (B, mels, T)
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return self.head(h.transpose(1, 2))  # (B, T, symbols)


def _kws_batch(gen: torch.Generator, n: int = 16, t: int = 40, mels: int = 16):
    """Keywords are 3-symbol strings (1..5); each symbol paints a band pattern for 8 frames."""
    labels = torch.randint(1, 6, (n, 3), generator=gen)
    x = 0.1 * torch.randn(n, mels, t, generator=gen)
    for j in range(3):
        start = 4 + 12 * j
        band = labels[:, j] * 3 % mels
        x[torch.arange(n), band, start : start + 8] += 1.0
        x[torch.arange(n), (band + 1) % mels, start : start + 8] += 0.5
    return x, labels


@scenario(
    "kws_ctc_conv_spotter",
    "adamax",
    "amp_overflow",
    heldout=True,
    where=("conv1",),
    note="the front end switches to raw (un-logged) filterbank energies at step 60: conv1's fp16 "
    "activations overflow, the GradScaler skips step after step",
    onset=60,
)
def h116_kws_ctc_fp16_raw_energy(ctx: Context) -> None:
    gen = seeded(11606)
    model = _KwsCTC()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    skipped = 0
    for step in range(120):
        x, labels = _kws_batch(gen)
        if step >= 60:
            x = torch.exp(6.0 * x.clamp(min=0)) * 300.0  # raw energies instead of log-mel
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(x)
        logp = logits.float().log_softmax(-1).transpose(0, 1)
        loss = F.ctc_loss(
            logp,
            labels,
            torch.full((len(labels),), logp.shape[0], dtype=torch.long),
            torch.full((len(labels),), 3, dtype=torch.long),
            zero_infinity=False,
        )
        scale_before = scaler.get_scale()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        if step >= 60 and scaler.get_scale() < scale_before:
            skipped += 1
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell before the switch", ctx.losses[55] < ctx.losses[0] - 1.0)
    ctx.check("the scaler backed off 10+ times after the switch", skipped >= 10)
    ctx.check("scale collapsed", ctx.scales[-1] < 2.0**12 / 1e3)


# -- handwriting mixture-density RNN: exploding gradients ------------------------------------------


class _HandwritingMDN(nn.Module):
    def __init__(self, hidden: int = 48, mixtures: int = 4) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, hidden, batch_first=True, nonlinearity="tanh")
        self.mdn = nn.Linear(hidden, mixtures * 5 + 1)
        self.k = mixtures

    def forward(self, x):
        h, _ = self.rnn(x)
        return self.mdn(h)


def _strokes(gen: torch.Generator, n: int = 16, t: int = 60):
    ph = torch.rand(n, 1, generator=gen) * 6.28
    fr = 0.2 + 0.3 * torch.rand(n, 1, generator=gen)
    s = torch.arange(t + 1).float()
    dx = 0.5 * torch.cos(fr * s + ph) + 0.05 * torch.randn(n, t + 1, generator=gen)
    dy = 0.5 * torch.sin(2 * fr * s + ph) + 0.05 * torch.randn(n, t + 1, generator=gen)
    pen = (torch.rand(n, t + 1, generator=gen) < 0.05).float()
    seq = torch.stack([dx, dy, pen], -1)
    return seq[:, :-1], seq[:, 1:]


def _mdn_nll(out: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    logit_pi, mx, my, lsx, lsy, pen = out.split([k, k, k, k, k, 1], -1)
    lsx, lsy = lsx.clamp(-5, 5), lsy.clamp(-5, 5)
    tx, ty = target[..., :1], target[..., 1:2]
    comp = (
        -0.5 * ((tx - mx) / lsx.exp()) ** 2
        - 0.5 * ((ty - my) / lsy.exp()) ** 2
        - lsx
        - lsy
        - math.log(2 * math.pi)
    )
    nll = -torch.logsumexp(F.log_softmax(logit_pi, -1) + comp, -1)
    bce = F.binary_cross_entropy_with_logits(pen.squeeze(-1), target[..., 2])
    return nll.mean() + bce


@scenario(
    "handwriting_mdn_vanilla_rnn",
    "sgd_mom",
    "exploding_gradients",
    heldout=True,
    where=("rnn",),
    diverges="auto",
    note="recurrent weights initialised at spectral radius 1.3 and no clipping over 60-step strokes",
)
def h116_handwriting_mdn_rnn_explode(ctx: Context) -> None:
    gen = seeded(11607)
    model = _HandwritingMDN()
    with torch.no_grad():
        nn.init.orthogonal_(model.rnn.weight_hh_l0)
        model.rnn.weight_hh_l0.mul_(1.3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx.attach(model, opt)
    for _ in range(150):
        x, y = _strokes(gen)
        loss = _mdn_nll(model(x), y, model.k)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    early = sorted(g[:20])[10]
    ctx.check("gradients grew 8x over the run", max(g[60:]) > 8 * early)
    ctx.check("loss climbed 3 nats above its best", ctx.losses[-1] > min(ctx.losses) + 3)


# -- prototypical few-shot encoder: dead ReLUs (plasticity lost) ------------------------------------


class _ProtoEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 128)
        self.fc2 = nn.Linear(128, 128)
        self.out = nn.Linear(128, 32)

    def features(self, x):
        return F.relu(self.fc2(F.relu(self.fc1(x))))

    def forward(self, x):
        return self.out(self.features(x))


def _episode(
    gen: torch.Generator, protos: torch.Tensor, ways: int = 5, shots: int = 5, queries: int = 10
):
    cls = torch.randperm(len(protos), generator=gen)[:ways]
    c = protos[cls]
    sup = c[:, None] + 0.6 * torch.randn(ways, shots, 32, generator=gen)
    qry = c[:, None] + 0.6 * torch.randn(ways, queries, 32, generator=gen)
    return sup, qry.reshape(-1, 32), torch.arange(ways).repeat_interleave(queries)


def _proto_loss(model, sup, qry, y):
    ways, shots, d = sup.shape
    p = model(sup.reshape(-1, d)).reshape(ways, shots, -1).mean(1)
    logits = 10.0 * F.normalize(model(qry), dim=-1) @ F.normalize(p, dim=-1).T
    return F.cross_entropy(logits, y), logits


@scenario(
    "fewshot_proto_relu_encoder",
    "adam",
    "loss_of_plasticity",
    heldout=True,
    where=("fc2",),
    note="the meta-LR is raised 100x at step 80 (a config mix-up): large Adam steps drive fc2's "
    "pre-activations negative and a third of its units die for good",
    onset=80,
)
def h116_proto_encoder_dead_units(ctx: Context) -> None:
    gen = seeded(11608)
    protos = 1.5 * torch.randn(64, 32, generator=gen)
    model = _ProtoEncoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    dead_before = dead_after = 0.0
    probe = protos[:20] + 0.6 * torch.randn(20, 32, generator=gen)
    for step in range(200):
        opt.param_groups[0]["lr"] = 1e-3 if step < 80 else 0.1
        sup, qry, y = _episode(gen, protos)
        loss, _ = _proto_loss(model, sup, qry, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step == 79:
            with torch.no_grad():
                dead_before = dead_fraction(model.fc2(F.relu(model.fc1(probe))))
    with torch.no_grad():
        dead_after = dead_fraction(model.fc2(F.relu(model.fc1(probe))))
    ctx.check("fc2 had few dead units before", dead_before < 0.06)
    ctx.check("a third of fc2's units died", dead_after > 0.3 and dead_after > 5 * dead_before)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- music-genre spectrogram transformer: softmax collapse -----------------------------------------


class _CosineHead(nn.Module):
    def __init__(self, dim: int, classes: int, tau: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.tau = tau

    def forward(self, h):
        return F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T / self.tau


class _GenreTransformer(nn.Module):
    def __init__(self, mels: int = 16, dim: int = 32, genres: int = 6, tau: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Linear(mels, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, 24, dim))
        layer = nn.TransformerEncoderLayer(dim, 2, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = _CosineHead(dim, genres, tau)

    def forward(self, x):  # (B, T, mels)
        return self.head(self.encoder(self.embed(x) + self.pos).mean(1))


def _genre_batch(gen: torch.Generator, n: int = 32):
    y = torch.randint(0, 6, (n,), generator=gen)
    t = torch.arange(24).float()
    x = 0.3 * torch.randn(n, 24, 16, generator=gen)
    band = 2 * y + 2
    beat = torch.sin(2 * math.pi * t[None] * (y[:, None] + 1) / 12)
    x[torch.arange(n)[:, None], torch.arange(24)[None], band[:, None]] += 1.5 + beat
    return x, y


@scenario(
    "genre_spectrogram_transformer",
    "adam",
    "softmax_collapse",
    heldout=True,
    where=("head",),
    note="cosine classifier with temperature 0.002 (meant 0.2): float32 softmax saturates to "
    "exactly 1.0 on most samples and their gradient vanishes",
)
def h116_genre_transformer_cosine_tau(ctx: Context) -> None:
    gen = seeded(11609)
    model = _GenreTransformer(tau=0.002)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    collapsed = 0.0
    for _ in range(120):
        x, y = _genre_batch(gen)
        ctx.targets(y)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        collapsed = collapsed_fraction(logits.detach(), y)
    ctx.check("most rows' softmax saturated at 1.0", collapsed > 0.5)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- learned index regressor: skipped zero_grad makes a gradient spike -----------------------------


class _LearnedIndex(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(1, 64)
        self.fc2 = nn.Linear(64, 64)
        self.out = nn.Linear(64, 1)

    def forward(self, k):
        return self.out(torch.tanh(self.fc2(torch.tanh(self.fc1(k)))))


@scenario(
    "sorted_key_position_regressor",
    "nesterov",
    "gradient_spike",
    heldout=True,
    where=("out", "fc2", "fc1"),
    note="a refactor moves zero_grad under an eval branch: gradients pile up for 15 steps and "
    "the 15x-summed gradient is applied at once",
    onset=100,
)
def h116_learned_index_stale_accumulation(ctx: Context) -> None:
    gen = seeded(11610)
    keys = torch.sort(torch.distributions.LogNormal(0.0, 1.0).sample((4096,)))[0]
    keys = (keys.log() - keys.log().mean()) / keys.log().std()
    pos = torch.linspace(-1, 1, len(keys))
    model = _LearnedIndex()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    norms = []
    for step in range(200):
        idx = torch.randint(0, len(keys), (128,), generator=gen)
        loss = F.mse_loss(model(keys[idx, None]).squeeze(1), pos[idx])
        loss.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        ctx.step(loss)
        if not (100 <= step < 115):
            opt.zero_grad(set_to_none=True)
    base = sorted(norms[60:100])[20]
    ctx.check("the accumulated gradient is 8x the usual", max(norms[100:116]) > 8 * base)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- denoising score matching on 2-D data: sigma reaches 0 -----------------------------------------


class _ScoreNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2)
        )

    def forward(self, x, log_sigma):
        return self.net(torch.cat([x, log_sigma], 1))


def _pinwheel(gen: torch.Generator, n: int = 256):
    arm = torch.randint(0, 5, (n,), generator=gen).float()
    r = 0.3 + torch.rand(n, generator=gen)
    ang = 2 * math.pi * arm / 5 + 1.2 * r + 0.08 * torch.randn(n, generator=gen)
    return torch.stack([r * torch.cos(ang), r * torch.sin(ang)], 1) * 2


@scenario(
    "dsm_pinwheel_scores",
    "radam",
    "nonfinite",
    heldout=True,
    where=("net.4",),
    diverges="auto",
    note="the noise-level sampler is switched to a uniform grid that includes sigma=0 at step 90: "
    "the sigma-weighted target divides by zero",
    onset=90,
)
def h116_dsm_pinwheel_zero_sigma(ctx: Context) -> None:
    gen = seeded(11611)
    model = _ScoreNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for step in range(140):
        x = _pinwheel(gen)
        if step < 90:
            sigma = torch.exp(
                torch.empty(len(x), 1).uniform_(math.log(0.01), math.log(1.0), generator=gen)
            )
        else:
            sigma = torch.randint(0, 11, (len(x), 1), generator=gen).float() / 10.0
        noise = torch.randn(x.shape, generator=gen)
        xt = x + sigma * noise
        target = -(xt - x) / sigma**2
        pred = model(xt, torch.log(sigma.clamp(min=1e-4)))
        loss = ((sigma * (pred - target)) ** 2).sum(1).mean() * 0.5
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            break
    ctx.check("finite before the switch", all(math.isfinite(v) for v in ctx.losses[:90]))
    ctx.check("loss went nonfinite after", any(not math.isfinite(v) for v in ctx.losses[90:]))


# -- sea-ice concentration conv net: Rprop step sizes too large -------------------------------------


class _SeaIceNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=2, dilation=2)
        self.conv3 = nn.Conv2d(16, 1, 1)

    def forward(self, x):
        return torch.sigmoid(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))


def _sea_ice_scenes(gen: torch.Generator, n: int = 24, size: int = 16):
    """Brightness temperatures in two channels + a land mask; concentration is a smooth field."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    cx, cy = torch.rand(n, 1, 1, generator=gen) * 2 - 1, torch.rand(n, 1, 1, generator=gen) * 2 - 1
    conc = torch.sigmoid(4 * (0.8 - ((xx - cx) ** 2 + (yy - cy) ** 2).sqrt()))
    tb1 = 0.2 + 0.6 * conc + 0.05 * torch.randn(n, size, size, generator=gen)
    tb2 = 0.7 - 0.4 * conc + 0.05 * torch.randn(n, size, size, generator=gen)
    land = (xx > 0.8).float().expand(n, size, size)
    return torch.stack([tb1, tb2, land], 1), conc[:, None]


@scenario(
    "sea_ice_concentration_convnet",
    "rprop",
    "update_ratio_out_of_range",
    heldout=True,
    where=("conv1", "conv2", "conv3"),
    note="Rprop with etas=(0.99, 1.5) (etaminus typed as 0.99) and step_sizes=(1e-6, 50): per-weight "
    "steps never shrink and grow to hundreds of times the weights",
    onset=0,
)
def h116_sea_ice_rprop_huge_steps(ctx: Context) -> None:
    gen = seeded(11612)
    model = _SeaIceNet()
    x, y = _sea_ice_scenes(gen, n=64)
    opt = torch.optim.Rprop(model.parameters(), lr=0.05, etas=(0.99, 1.5), step_sizes=(1e-6, 50.0))
    ctx.attach(model, opt)
    ratios = []
    for _ in range(60):
        idx = torch.randint(0, 64, (32,), generator=gen)
        loss = F.binary_cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        w0 = [p.detach().clone() for p in model.parameters()]
        opt.step()
        ratios.append(
            max(
                float((p.detach() - q).norm() / (q.norm() + 1e-12))
                for p, q in zip(model.parameters(), w0, strict=True)
            )
        )
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("update/weight ratio above 1 in some layer", max(ratios) > 1.0)
    ctx.check("above 0.05 on most late steps", sorted(ratios[-30:])[15] > 0.05)
    ctx.check("loss not better than start", sum(ctx.losses[-10:]) / 10 > 0.9 * ctx.losses[0])


# -- satellite cloud-mask pixel classifier: LR past the stability limit -----------------------------


def _cloud_pixels(gen: torch.Generator, n: int = 256):
    """Eight spectral bands of a pixel; clouds are bright in visible and cold in thermal bands."""
    cloud = torch.rand(n, generator=gen) < 0.4
    bands = 0.25 + 0.08 * torch.randn(n, 8, generator=gen)
    bands[cloud, :4] += 0.45
    bands[cloud, 6:] -= 0.3
    flip = torch.rand(n, generator=gen) < 0.15  # human labellers disagree on thin cirrus
    return bands, (cloud ^ flip).long()


@scenario(
    "cloud_mask_pixel_mlp",
    "asgd",
    "sharpness_above_limit",
    heldout=True,
    diverges="auto",
    note="ASGD's LR is ramped (a linear-scaling rule for a 16x batch) past 2/sharpness",
    onset=60,
)
def h116_cloud_mask_asgd_lr_ramp(ctx: Context) -> None:
    gen = seeded(11613)
    model = nn.Sequential(
        nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 2)
    )
    opt = torch.optim.ASGD(model.parameters(), lr=0.1, t0=1e9)
    ctx.attach(model, opt)
    for step in range(200):
        opt.param_groups[0]["lr"] = 0.1 if step < 60 else 0.1 * (1.06 ** (step - 60))
        x, y = _cloud_pixels(gen)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(float(loss)):
            break
    ctx.check("it trained first", sum(ctx.losses[50:60]) / 10 < 0.75 * ctx.losses[0])
    ctx.check("loss blew up after the ramp", max(ctx.losses[60:]) > 3.0)


# -- protein secondary-structure BiGRU: one unscaled profile batch ----------------------------------


class _SSBiGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(20, 32, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, 3)

    def forward(self, x):
        return self.head(self.gru(x)[0])


def _protein_batch(gen: torch.Generator, n: int = 16, length: int = 40):
    """Profiles of 20 amino acids; helix/strand/coil follow runs of residue families."""
    fam = torch.randint(0, 3, (n, length // 5), generator=gen).repeat_interleave(5, 1)
    aa = fam * 6 + torch.randint(0, 6, (n, length), generator=gen)
    prof = F.one_hot(aa.clamp(max=19), 20).float() * 0.8 + 0.05 * torch.rand(
        n, length, 20, generator=gen
    )
    return F.softmax(4 * prof, -1), fam


@scenario(
    "protein_ss_bigru_raw_profiles",
    "rmsprop",
    "data_outlier",
    heldout=True,
    note="one batch of raw PSI-BLAST log-odds scores (x100, unnormalised) slips into the "
    "normalised profile stream at step 90",
    onset=90,
)
def h116_protein_ss_raw_pssm_batch(ctx: Context) -> None:
    gen = seeded(11614)
    model = _SSBiGRU()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for step in range(150):
        x, y = _protein_batch(gen)
        if step == 90:
            x = (x - 0.05) * 100.0 * torch.randn(x.shape, generator=gen).sign()
        ctx.targets(y.reshape(-1))
        loss = F.cross_entropy(model(x).reshape(-1, 3), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    base = sum(ctx.losses[80:90]) / 10
    ctx.check("loss spiked on the raw batch", ctx.losses[90] > 3 * base)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- traffic-sign CNN with a spatial transformer (control) -------------------------------------------


class _STNSignNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Sequential(
            nn.Conv2d(3, 8, 5), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 6)
        )
        nn.init.zeros_(self.loc[-1].weight)
        with torch.no_grad():
            self.loc[-1].bias.copy_(torch.tensor([1.0, 0, 0, 0, 1.0, 0]))
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32 * 4 * 4, 5)

    def forward(self, x):
        theta = self.loc(x).view(-1, 2, 3)
        grid = F.affine_grid(theta, x.shape, align_corners=False)
        x = F.grid_sample(x, grid, align_corners=False)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def _sign_batch(gen: torch.Generator, n: int = 32, size: int = 16):
    """Five sign classes: colour + shape (disc, ring, triangle, bar, cross), randomly shifted."""
    y = torch.randint(0, 5, (n,), generator=gen)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    dx = (torch.rand(n, 1, 1, generator=gen) - 0.5) * 0.6
    dy = (torch.rand(n, 1, 1, generator=gen) - 0.5) * 0.6
    u, v = xx - dx, yy - dy
    r = (u**2 + v**2).sqrt()
    shapes = torch.stack(
        [
            (r < 0.5).float(),
            ((r < 0.55) & (r > 0.35)).float(),
            ((v > -0.4) & (v < 0.5) & (u.abs() < (0.5 - v) * 0.6)).float(),
            ((v.abs() < 0.12) & (u.abs() < 0.5)).float(),
            (((v.abs() < 0.12) | (u.abs() < 0.12)) & (r < 0.55)).float(),
        ],
        1,
    )[torch.arange(n), y]
    colours = torch.tensor(
        [[1.0, 0.1, 0.1], [0.1, 0.1, 1.0], [1.0, 1.0, 0.1], [1.0, 1.0, 1.0], [0.1, 0.8, 0.1]]
    )
    img = shapes[:, None] * colours[y][:, :, None, None] + 0.15 * torch.randn(
        n, 3, size, size, generator=gen
    )
    return img, y


@scenario(
    "stn_signnet_generated",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="step-decay schedule, generated shifted signs with pixel noise",
)
def h116_stn_signnet_control(ctx: Context) -> None:
    gen = seeded(11615)
    model = _STNSignNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    ctx.attach(model, opt)
    for step in range(150):
        opt.param_groups[0]["lr"] = 0.02 if step < 100 else 0.002
        x, y = _sign_batch(gen)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < 0.5 * sum(ctx.losses[:10]) / 10)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- robot-arm inverse dynamics MLP (control) ---------------------------------------------------------


def _arm_batch(gen: torch.Generator, n: int = 128):
    """Two-link arm: (q, dq, ddq) -> joint torques by the rigid-body equations, plus sensor noise."""
    q = (torch.rand(n, 2, generator=gen) - 0.5) * 2 * math.pi
    dq = torch.randn(n, 2, generator=gen)
    ddq = torch.randn(n, 2, generator=gen)
    c2, s2 = torch.cos(q[:, 1]), torch.sin(q[:, 1])
    m11 = 2.0 + 1.0 * c2
    m12 = 0.5 + 0.5 * c2
    m22 = torch.full_like(c2, 0.5)
    h = 0.5 * s2
    tau1 = (
        m11 * ddq[:, 0]
        + m12 * ddq[:, 1]
        - h * (2 * dq[:, 0] * dq[:, 1] + dq[:, 1] ** 2)
        + 1.5 * torch.cos(q[:, 0])
    )
    tau2 = (
        m12 * ddq[:, 0] + m22 * ddq[:, 1] + h * dq[:, 0] ** 2 + 0.5 * torch.cos(q[:, 0] + q[:, 1])
    )
    x = torch.cat([torch.sin(q), torch.cos(q), dq, ddq], 1)
    y = torch.stack([tau1, tau2], 1) + 0.05 * torch.randn(n, 2, generator=gen)
    return x, y


@scenario(
    "planar_arm_torque_mlp",
    "adadelta",
    "healthy",
    heldout=True,
    note="Adadelta at its default LR on generated two-link arm dynamics with sensor noise",
)
def h116_arm_inverse_dynamics_control(ctx: Context) -> None:
    gen = seeded(11616)
    model = nn.Sequential(
        nn.Linear(8, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2)
    )
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    for _ in range(200):
        x, y = _arm_batch(gen)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < 0.3 * sum(ctx.losses[:10]) / 10)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))
