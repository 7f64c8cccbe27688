"""Held-out set 37 (``h37_``): families no other case file has.

Hugging Face Llama-4 text causal LM (tiny MoE, no QK-norm), LiLT document classifier (tokens +
layout boxes), SigLIP vision image classifier, Ernie-4.5-MoE causal LM and TimesFM forecaster
from configs; behaviour-sequence transformer (BST) click predictor, TiDE dense-encoder
forecaster, Attention U-Net segmenter on generated shapes, SRGAN-style generator/discriminator
on digits, linear recurrent unit (LRU) sequence model on pixel-by-pixel digits, CNN+LSTM
captioner on generated glyph strips (fp16 autocast), hypergraph neural network (HGNN) on a
generated hypergraph. Optimizers: SGD, momentum, Nesterov, Adam, AdamW, RMSprop, Adagrad,
NAdam, RAdam, Adamax and steadygrad.optim's AdaBelief and Lion.

Written without reading steadygrad/diagnose/detectors, diagnosis.py, steadygrad/monitor/ or the
other held-out files, and never run on steadygrad while written: each scenario was tuned with a
stand-in context that attaches nothing, only until its own checks held (or, for a healthy
control, until it trained normally).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digits,
    fit,
    grad_norm,
    scenario,
    seeded,
)

# -- Hugging Face models from configs -------------------------------------------------------------


def _llama4(qk_norm: bool):
    from transformers import Llama4ForCausalLM, Llama4TextConfig

    config = Llama4TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        intermediate_size_mlp=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_local_experts=2,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
        no_rope_layers=[1, 1],
        attention_chunk_size=64,
        max_position_embeddings=64,
        use_qk_norm=qk_norm,
        attention_dropout=0.0,
    )
    return Llama4ForCausalLM(config)


def _ernie_moe():
    from transformers import Ernie4_5_MoeConfig, Ernie4_5_MoeForCausalLM

    config = Ernie4_5_MoeConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        moe_num_experts=4,
        moe_k=2,
        moe_layer_start_index=1,
        max_position_embeddings=64,
    )
    return Ernie4_5_MoeForCausalLM(config)


def _siglip(classes: int = 10):
    from transformers import SiglipConfig, SiglipForImageClassification

    config = SiglipConfig(
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=8,
            patch_size=2,
            num_channels=1,
        ),
        num_labels=classes,
    )
    return SiglipForImageClassification(config)


def _lilt(classes: int = 3):
    from transformers import LiltConfig, LiltForSequenceClassification

    config = LiltConfig(
        vocab_size=64,
        hidden_size=48,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=96,
        max_position_embeddings=64,
        channel_shrink_ratio=4,
        num_labels=classes,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout=0.0,
    )
    return LiltForSequenceClassification(config)


def _timesfm():
    from transformers import TimesFmConfig, TimesFmModelForPrediction

    config = TimesFmConfig(
        patch_length=8,
        context_length=48,
        horizon_length=16,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        head_dim=16,
    )
    return TimesFmModelForPrediction(config)


def _lm_batches(gen: torch.Generator, batch: int = 8, length: int = 24, vocab: int = 128):
    """A generated language: each sequence repeats a random 6-token motif with noise tokens."""
    while True:
        motif = torch.randint(4, vocab, (batch, 6), generator=gen)
        seq = motif.repeat(1, (length + 1) // 6 + 1)[:, : length + 1]
        noise = torch.rand(batch, length + 1, generator=gen) < 0.1
        seq = torch.where(noise, torch.randint(4, vocab, seq.shape, generator=gen), seq)
        yield seq[:, :-1], seq[:, 1:]


# -- 1. attention-logit growth: Llama-4 text, no QK-norm, a q/k learning-rate multiplier bug ------


def _attention_logit_max(model, x) -> float:
    """Largest |q.k|/sqrt(d) over heads and positions in the first layer (pre-RoPE; RoPE is a
    rotation, so these are the logits' scale)."""
    attn = model.model.layers[0].self_attn
    got = {}
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: got.__setitem__("q", o.detach())),
        attn.k_proj.register_forward_hook(lambda m, i, o: got.__setitem__("k", o.detach())),
    ]
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    b, t, _ = got["q"].shape
    q = got["q"].reshape(b, t, 2, 16).transpose(1, 2)
    k = got["k"].reshape(b, t, 1, 16).transpose(1, 2)
    return float((q @ k.transpose(-1, -2)).abs().max() / 4.0)


@scenario(
    "llama4_text_moe_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    onset=0,
    note="a per-module LR table gives q_proj/k_proj 40x the base LR (a typo for 0.4x)",
    heldout=True,
)
def h37_attn_logit_growth_llama4_adamw(ctx: Context) -> None:
    gen = seeded(3701)
    model = _llama4(qk_norm=False)
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qk, "lr": 40 * 1e-3, "weight_decay": 0.0}],
        lr=1e-3,
        weight_decay=0.01,
    )
    batches = _lm_batches(gen)
    probe_x, _ = next(batches)
    start = _attention_logit_max(model, probe_x)
    fit(
        ctx,
        model,
        opt,
        batches,
        260,
        loss_fn=lm_ce,
        forward=lambda m, x: m(input_ids=x).logits,
        classifier=False,
    )
    end = _attention_logit_max(model, probe_x)
    ctx.check(f"attention logits grew ({start:.2f} -> {end:.1f})", end > 20 * start and end > 30)


def lm_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _broke(losses: list[float]) -> bool:
    """Non-finite, or a late loss over twice (and 1.0 above) the best of the run."""
    if not all(math.isfinite(v) for v in losses):
        return True
    best = min(sum(losses[i : i + 5]) / 5 for i in range(len(losses) - 5))
    tail = sum(losses[-5:]) / 5
    return tail > max(2 * best, best + 1.0)


# -- 2. output-logit divergence: Ernie-4.5-MoE, a z-loss with its sign flipped --------------------


@scenario(
    "ernie45_moe_lm",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=0,
    note="z-loss written as - 0.1 * logZ^2: log Z is pushed up instead of held at 0",
    heldout=True,
)
def h37_zloss_sign_ernie_moe_adam(ctx: Context) -> None:
    gen = seeded(3702)
    model = _ernie_moe()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = {}

    def forward(m, x):
        state["logits"] = m(input_ids=x).logits
        return state["logits"]

    def buggy(step: int, loss: torch.Tensor) -> torch.Tensor:
        logz = torch.logsumexp(state["logits"].float(), dim=-1)
        return loss - 0.1 * (logz**2).mean()  # meant: + coefficient * logZ^2

    fit(
        ctx,
        model,
        opt,
        _lm_batches(gen),
        300,
        loss_fn=lm_ce,
        forward=forward,
        extra_loss=buggy,
        classifier=False,
    )
    x, _ = next(_lm_batches(seeded(1)))
    with torch.no_grad():
        logz = float(torch.logsumexp(model(input_ids=x).logits, -1).abs().mean())
    ctx.check(f"|log Z| grew to {logz:.0f} (from ~5)", logz > 20)
    ctx.check("the loss broke", _broke(ctx.losses))


# -- 3. sharpness above the limit: SigLIP vision classifier, a warm-up that overshoots ------------


def _digit_images(gen: torch.Generator, batch: int = 32):
    x, y = digits()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield (x[idx].reshape(-1, 1, 8, 8) - 0.3) / 0.4, y[idx]


def _siglip_forward(m, x):
    return m(pixel_values=x).logits


@scenario(
    "siglip_vision_classifier",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    onset=0,
    note="linear warm-up to a peak LR of 0.5 (the recipe's 0.05 with a dropped zero)",
    heldout=True,
)
def h37_warmup_overshoot_siglip_nesterov(ctx: Context) -> None:
    gen = seeded(3703)
    model = _siglip()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.5 * min(1.0, (step + 1) / 200)

    fit(ctx, model, opt, _digit_images(gen), 240, before=warmup, forward=_siglip_forward)
    ctx.check(
        f"learnt first ({ctx.losses[0]:.2f} -> {min(ctx.losses[:100]):.2f})",
        min(ctx.losses[:100]) < 0.6 * ctx.losses[0],
    )
    ctx.check("the loss broke during the warm-up", _broke(ctx.losses))


@scenario("siglip_vision_classifier", "adamw", "healthy", heldout=True)
def h37_healthy_siglip_adamw(ctx: Context) -> None:
    gen = seeded(3713)
    model = _siglip()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    fit(ctx, model, opt, _digit_images(gen), 240, forward=_siglip_forward)
    ctx.check("learnt", sum(ctx.losses[-10:]) / 10 < 0.5 * ctx.losses[0])


# -- 4. exploding gradients: a linear recurrent unit whose radius is left unconstrained -----------


class LRU(nn.Module):
    """A diagonal linear recurrence h_t = a * h_{t-1} + B x_t (real), read at the last step.

    The bug: the radius ``a`` is a raw parameter; the LRU paper keeps it inside (0, 1) with
    a = exp(-exp(nu)). Once training pushes a unit past 1, a^T blows up over T steps.
    """

    def __init__(self, d_in: int, width: int) -> None:
        super().__init__()
        self.radius = nn.Parameter(torch.empty(width).uniform_(0.9, 0.99))
        self.B = nn.Linear(d_in, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        u = self.B(x)  # (b, t, w)
        powers = self.radius[:, None] ** torch.arange(t - 1, -1, -1, dtype=x.dtype)
        return torch.einsum("btw,wt->bw", u, powers)


class LRUClassifier(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(1, 8)
        self.lru = LRU(8, width)
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.embed(x.reshape(-1, 64, 1))
        return self.head(self.lru(seq) / 64)  # mean over time when radius = 1


def _digit_flat(gen: torch.Generator, batch: int = 32):
    x, y = digits()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


@scenario(
    "lru_sequence_classifier",
    "rmsprop",
    "exploding_gradients",
    where="lru",
    diverges=None,
    onset=0,
    note="recurrence radius unconstrained; pixel-by-pixel digits (T=64)",
    heldout=True,
)
def h37_unconstrained_radius_lru_rmsprop(ctx: Context) -> None:
    gen = seeded(3704)
    model = LRUClassifier()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    fit(ctx, model, opt, _digit_flat(gen), 300)
    radius = float(model.lru.radius.detach().abs().max())
    early = sorted(ctx.grad_norms[:30])[15]
    late = max(v for v in ctx.grad_norms if math.isfinite(v))
    ctx.check(f"a radius passed 1 ({radius:.3f})", radius > 1.0)
    ctx.check(f"gradient norm grew ({early:.2f} -> {late:.3g})", late > 100 * early)


# -- 5. loss of plasticity: TiDE dense encoder, a restart to a far higher LR kills its ReLUs --------


class ResidualBlock(nn.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, d_out)
        self.skip = nn.Linear(d_in, d_out)
        self.norm = nn.LayerNorm(d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc2(F.relu(self.fc1(x))) + self.skip(x))


class TiDE(nn.Module):
    """Dense encoder/decoder forecaster: lookback + covariates -> horizon."""

    def __init__(self, lookback: int = 48, horizon: int = 12, cov: int = 4, hidden: int = 64):
        super().__init__()
        self.horizon = horizon
        self.encoder = nn.Sequential(
            ResidualBlock(lookback + cov * (lookback + horizon), hidden, hidden),
            ResidualBlock(hidden, hidden, hidden),
        )
        self.decoder = ResidualBlock(hidden, hidden, horizon * 4)
        self.temporal = ResidualBlock(4 + cov, 16, 1)
        self.lookback_skip = nn.Linear(lookback, horizon)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        past, cov = inputs  # (b, L), (b, L + H, cov)
        z = self.decoder(self.encoder(torch.cat([past, cov.flatten(1)], 1)))
        z = z.reshape(-1, self.horizon, 4)
        future_cov = cov[:, -self.horizon :]
        out = self.temporal(torch.cat([z, future_cov], -1)).squeeze(-1)
        return out + self.lookback_skip(past)


def _series_batches(gen: torch.Generator, batch: int = 32, lookback: int = 48, horizon: int = 12):
    """Seasonal series with covariates (two calendar waves, a promo flag, a level)."""
    n = lookback + horizon
    t = torch.arange(n, dtype=torch.float32)
    while True:
        phase = torch.rand(batch, 1, generator=gen) * 24
        level = torch.randn(batch, 1, generator=gen)
        promo = (torch.rand(batch, n, generator=gen) < 0.1).float()
        cal1 = torch.sin(2 * math.pi * (t + phase) / 12)
        cal2 = torch.cos(2 * math.pi * (t + phase) / 24)
        y = level + cal1 + 0.5 * cal2 + 1.5 * promo + 0.1 * torch.randn(batch, n, generator=gen)
        cov = torch.stack([cal1, cal2, promo, level.expand(batch, n)], -1)
        yield (y[:, :lookback], cov), y[:, lookback:]


@scenario(
    "tide_forecaster",
    "adamax",
    "loss_of_plasticity",
    where="encoder.1.fc1",
    diverges=None,
    onset=120,
    note="a cyclic restart at step 120 to max_lr=2 (meant 2e-3); encoder.1 ReLUs die; loss jumps then plateaus",
    heldout=True,
)
def h37_restart_dead_relu_tide_adamax(ctx: Context) -> None:
    gen = seeded(3705)
    model = TiDE()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    probe = next(_series_batches(seeded(1), batch=128))[0]
    seen = {}

    def dead() -> float:
        with torch.no_grad():
            h = model.encoder[1].fc1(
                model.encoder[0](torch.cat([probe[0], probe[1].flatten(1)], 1))
            )
        return dead_fraction(h)

    def schedule(step: int) -> None:
        if step == 119:
            seen["before"] = dead()
        opt.param_groups[0]["lr"] = 2e-3 if step < 120 else 2.0  # max_lr=2 (meant 2e-3)

    fit(
        ctx,
        model,
        opt,
        _series_batches(gen),
        400,
        loss_fn=F.mse_loss,
        before=schedule,
        classifier=False,
    )
    after = dead()
    before_loss = sum(ctx.losses[110:120]) / 10
    late_loss = sum(ctx.losses[-20:]) / 20
    ctx.check(f"encoder ReLUs died ({seen['before']:.2f} -> {after:.2f})", after > 0.5)
    ctx.check(f"stopped learning ({before_loss:.3f} -> {late_loss:.3f})", late_loss > before_loss)


@scenario("tide_forecaster", "adam", "healthy", heldout=True)
def h37_healthy_tide_adam(ctx: Context) -> None:
    gen = seeded(3715)
    model = TiDE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _series_batches(gen), 300, loss_fn=F.mse_loss, classifier=False)
    ctx.check("learnt", sum(ctx.losses[-10:]) / 10 < 0.3 * ctx.losses[0])


# -- 6. a frozen layer: Attention U-Net, the gate's LR warm-up uses integer division ---------------


class AttentionGate(nn.Module):
    def __init__(self, g_ch: int, x_ch: int, mid: int) -> None:
        super().__init__()
        self.w_g = nn.Conv2d(g_ch, mid, 1)
        self.w_x = nn.Conv2d(x_ch, mid, 1)
        self.psi = nn.Conv2d(mid, 1, 1)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a = torch.sigmoid(self.psi(F.relu(self.w_g(g) + self.w_x(x))))
        return x * a


def _conv(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())


class AttentionUNet(nn.Module):
    def __init__(self, w: int = 8) -> None:
        super().__init__()
        self.enc1 = _conv(1, w)
        self.enc2 = _conv(w, 2 * w)
        self.up = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.att = AttentionGate(w, w, w // 2)
        self.dec = _conv(2 * w, w)
        self.out = nn.Conv2d(w, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s1 = self.enc1(x)
        g = self.up(self.enc2(F.max_pool2d(s1, 2)))
        return self.out(self.dec(torch.cat([g, self.att(g, s1)], 1)))


def _shape_batches(gen: torch.Generator, batch: int = 16, size: int = 16):
    """Noisy images of one filled disc or square; the mask is the segmentation target."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        cx, cy = (torch.rand(2, batch, 1, 1, generator=gen) * (size - 6) + 3).unbind(0)
        r = torch.rand(batch, 1, 1, generator=gen) * 3 + 2
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r**2
        square = ((xx - cx).abs() <= r) & ((yy - cy).abs() <= r)
        kind = torch.rand(batch, 1, 1, generator=gen) < 0.5
        mask = torch.where(kind, disc, square).float()[:, None]
        x = mask * 0.8 + 0.3 * torch.randn(mask.shape, generator=gen)
        yield x, mask


@scenario(
    "attention_unet_segmenter",
    "sgd_mom",
    "update_ratio_out_of_range",
    where=("att", "att.w_g", "att.w_x", "att.psi"),
    diverges=None,
    onset=0,
    note="the gate's warm-up factor is min(1, step // 500): 0 for the whole run",
    heldout=True,
)
def h37_gate_lr_zero_attention_unet_momentum(ctx: Context) -> None:
    gen = seeded(3706)
    model = AttentionUNet()
    gate = list(model.att.parameters())
    gate_ids = {id(p) for p in gate}
    rest = [p for p in model.parameters() if id(p) not in gate_ids]
    opt = torch.optim.SGD([{"params": rest}, {"params": gate}], lr=0.05, momentum=0.9)
    start = [p.detach().clone() for p in gate]
    grads = []
    model.att.psi.weight.register_hook(lambda g: grads.append(float(g.norm())))

    def warmup(step: int) -> None:
        opt.param_groups[1]["lr"] = 0.05 * min(1, step // 500)  # meant step / 500

    fit(
        ctx,
        model,
        opt,
        _shape_batches(gen),
        250,
        loss_fn=F.binary_cross_entropy_with_logits,
        before=warmup,
        classifier=False,
    )
    moved = max(float((p.detach() - s).abs().max()) for p, s in zip(gate, start, strict=True))
    ctx.check(f"gate never moved (max change {moved:.1e})", moved == 0.0)
    ctx.check("gate got gradients", len(grads) > 0 and min(grads) > 0)
    ctx.check(
        f"the rest learnt ({ctx.losses[0]:.3f} -> {sum(ctx.losses[-10:]) / 10:.3f})",
        sum(ctx.losses[-10:]) / 10 < 0.5 * ctx.losses[0],
    )


# -- 7. a data outlier: BST click predictor, one shard with prices in cents x 1000 ---------------


class BST(nn.Module):
    """Behaviour-sequence transformer: item + position embeddings of the history and the target
    item through one transformer layer, concatenated with dense user features, MLP -> click."""

    def __init__(self, items: int = 200, dim: int = 16, history: int = 8, dense: int = 4) -> None:
        super().__init__()
        self.item = nn.Embedding(items, dim)
        self.category = nn.Embedding(10, dim)  # item side feature: category = id % 10
        self.pos = nn.Embedding(history + 1, dim)
        self.transformer = nn.TransformerEncoderLayer(
            dim, 2, 4 * dim, dropout=0.0, batch_first=True
        )
        self.mlp = nn.Sequential(
            nn.Linear((history + 1) * dim + dense, 64),
            nn.LeakyReLU(),
            nn.Linear(64, 32),
            nn.LeakyReLU(),
            nn.Linear(32, 1),
        )

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        seq, dense = inputs  # (b, history + 1) item ids, target last; (b, dense)
        h = self.transformer(self.item(seq) + self.category(seq % 10) + self.pos.weight[None])
        return self.mlp(torch.cat([h.flatten(1), dense], 1)).squeeze(-1)


def _click_batches(gen: torch.Generator, batch: int = 64, items: int = 200, history: int = 8):
    """Items fall in 10 categories (id % 10); a user clicks when the target's category is the one
    most of their history has, more often when the (standardised) price is low."""
    while True:
        fav = torch.randint(0, 10, (batch, 1), generator=gen)
        hist = torch.randint(0, items // 10, (batch, history), generator=gen) * 10 + fav
        off = torch.rand(batch, history, generator=gen) < 0.3
        hist = torch.where(off, torch.randint(0, items, hist.shape, generator=gen), hist)
        match = torch.rand(batch, generator=gen) < 0.5
        other = torch.randint(0, items, (batch,), generator=gen)
        target = torch.where(
            match, torch.randint(0, 20, (batch,), generator=gen) * 10 + fav[:, 0], other
        )
        dense = torch.randn(batch, 4, generator=gen)
        logit = 3.0 * ((target % 10) == fav[:, 0]).float() - 1.5 - 0.8 * dense[:, 0]
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield (torch.cat([hist, target[:, None]], 1), dense), y


@scenario(
    "bst_click_predictor",
    "adagrad",
    "data_outlier",
    diverges=170,
    onset=170,
    note="one shard's price column arrives raw (cents) instead of standardised",
    heldout=True,
)
def h37_price_outlier_bst_adagrad(ctx: Context) -> None:
    gen = seeded(3707)
    model = BST()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x, y):
        if step == 170:
            seq, dense = x
            dense = dense.clone()
            dense[:, 0] = 1999.0 + 500.0 * dense[:, 0].abs()
            x = (seq, dense)
        return x, y

    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        300,
        loss_fn=F.binary_cross_entropy_with_logits,
        alter=alter,
        classifier=False,
    )
    ctx.check(
        f"loss spiked at 170 ({max(ctx.losses[160:170]):.2f} -> {ctx.losses[170]:.1f})",
        ctx.losses[170] > 5 * max(ctx.losses[160:170]),
    )


@scenario("bst_click_predictor", "adam", "healthy", heldout=True)
def h37_healthy_bst_adam(ctx: Context) -> None:
    gen = seeded(3717)
    model = BST()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        300,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
    )
    ctx.check("learnt", sum(ctx.losses[-20:]) / 20 < 0.85 * sum(ctx.losses[:10]) / 10)


# -- 8. a one-off NaN: HGNN, one sampled hyperedge is empty (1 / degree = inf) -------------------


class HGNNConv(nn.Module):
    """X' = Dv^-1/2 H De^-1 H^T Dv^-1/2 X Theta (Feng et al. 2019), unit hyperedge weights."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.theta = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor, incidence: torch.Tensor) -> torch.Tensor:
        dv = incidence.sum(1).clamp(min=1.0)  # nodes are always covered by their self-edge
        de = incidence.sum(0)  # an empty hyperedge has degree 0: nobody guards this one
        norm_v = dv.pow(-0.5)[:, None]
        h = norm_v * self.theta(x)
        h = incidence @ ((1.0 / de)[:, None] * (incidence.T @ h))
        return norm_v * h


class HGNN(nn.Module):
    def __init__(self, d_in: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = HGNNConv(d_in, hidden)
        self.conv2 = HGNNConv(hidden, classes)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, incidence = inputs
        return self.conv2(
            F.dropout(F.relu(self.conv1(x, incidence)), 0.2, self.training), incidence
        )


def _hypergraph(gen: torch.Generator, nodes: int = 160, classes: int = 4, edges: int = 120):
    labels = torch.randint(0, classes, (nodes,), generator=gen)
    centers = torch.randn(classes, 16, generator=gen)
    feats = centers[labels] * 0.6 + torch.randn(nodes, 16, generator=gen)
    cols = []
    for _ in range(edges):  # hyperedges mostly within one class
        c = int(torch.randint(0, classes, (1,), generator=gen))
        pool = torch.nonzero(labels == c).squeeze(1)
        size = int(torch.randint(3, 7, (1,), generator=gen))
        members = pool[torch.randperm(len(pool), generator=gen)[:size]]
        if torch.rand(1, generator=gen) < 0.2:
            members = torch.cat([members, torch.randint(0, nodes, (1,), generator=gen)])
        col = torch.zeros(nodes)
        col[members] = 1.0
        cols.append(col)
    return feats, labels, torch.stack(cols, 1)


def _hyperedge_batches(gen: torch.Generator, empty_at: int | None = None):
    """Each step keeps a random 70% of hyperedges (plus every node's self-edge) and trains on a
    random half of the labelled nodes; at ``empty_at`` the sampler emits one empty hyperedge."""
    feats, labels, inc = _hypergraph(gen)
    nodes = len(labels)
    step = 0
    while True:
        keep = torch.rand(inc.shape[1], generator=gen) < 0.7
        sub = torch.cat([inc[:, keep], torch.eye(nodes)], 1)
        if step == empty_at:
            sub = torch.cat([sub, torch.zeros(nodes, 1)], 1)
        train = torch.rand(nodes, generator=gen) < 0.5
        y = torch.where(train, labels, torch.full_like(labels, -100))
        step += 1
        yield (feats, sub), y


@scenario(
    "hypergraph_nn",
    "sgd",
    "nonfinite",
    where="conv1",
    diverges=180,
    onset=180,
    note="an empty hyperedge: 1/degree = inf, 0 * inf = NaN in conv1",
    heldout=True,
)
def h37_empty_hyperedge_hgnn_sgd(ctx: Context) -> None:
    gen = seeded(3708)
    model = HGNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    nan_from = {}

    def watch(name):
        def hook(m, i, o):
            if name not in nan_from and not torch.isfinite(o).all():
                nan_from[name] = len(ctx.losses)

        return hook

    for name in ("conv1", "conv2"):
        getattr(model, name).register_forward_hook(watch(name))
    fit(ctx, model, opt, _hyperedge_batches(gen, empty_at=181), 230, classifier=False)
    ctx.check(
        f"learnt first ({ctx.losses[0]:.2f} -> {ctx.losses[175]:.2f})",
        ctx.losses[175] < 0.7 * ctx.losses[0],
    )
    ctx.check(f"conv1 produced the first NaN ({nan_from})", nan_from.get("conv1") == 180)
    ctx.check("loss non-finite from 180", not math.isfinite(ctx.losses[180]))


# -- 9. AMP overflow: CNN+LSTM captioner under fp16 autocast, a scaler that starts too high -------


class Captioner(nn.Module):
    """A CNN reads a strip of three digit glyphs; an LSTM, started from the image code, writes
    the digits as tokens (teacher forcing). Tokens: 0-9 digits, 10 <bos>, 11 <eos>."""

    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.to_state = nn.Linear(32 * 2 * 6, 2 * hidden)
        self.embed = nn.Embedding(12, 16)
        self.lstm = nn.LSTM(16 + 32 * 2 * 6, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 12)

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        image, tokens = inputs
        code = self.cnn(image).flatten(1)
        h0, c0 = torch.tanh(self.to_state(code)).chunk(2, -1)
        steps = torch.cat([self.embed(tokens), code[:, None].expand(-1, tokens.shape[1], -1)], -1)
        with torch.autocast("cpu", enabled=False):  # oneDNN has no fp16 LSTM on CPU
            state = (h0[None].float().contiguous(), c0[None].float().contiguous())
            out, _ = self.lstm(steps.float(), state)
        return self.head(out).transpose(1, 2)  # (b, vocab, t) for cross_entropy


def _glyph_batches(gen: torch.Generator, batch: int = 32):
    x, y = digits()
    glyphs = x.reshape(-1, 8, 8)
    while True:
        idx = torch.randint(0, len(y), (batch, 3), generator=gen)
        image = torch.cat([glyphs[idx[:, i]] for i in range(3)], -1)[:, None]  # (b, 1, 8, 24)
        words = y[idx]
        inp = torch.cat([torch.full((batch, 1), 10), words], 1)
        out = torch.cat([words, torch.full((batch, 1), 11)], 1)
        yield (image, inp), out


@scenario(
    "cnn_lstm_captioner",
    "nadam",
    "amp_overflow",
    diverges=None,
    onset=0,
    note="fp16 autocast, GradScaler(init_scale=2**30, growth_interval=25): overflow steps skipped",
    heldout=True,
)
def h37_scaler_overflow_captioner_nadam(ctx: Context) -> None:
    gen = seeded(3709)
    model = Captioner()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)
    fit(ctx, model, opt, _glyph_batches(gen), 260, scaler=scaler, amp=True, classifier=False)
    drops = sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=False))
    ctx.check(f"the scaler backed off {drops} times", drops >= 5)
    ctx.check(
        f"learnt anyway ({ctx.losses[0]:.2f} -> {sum(ctx.losses[-10:]) / 10:.2f})",
        sum(ctx.losses[-10:]) / 10 < 0.6 * ctx.losses[0],
    )
    ctx.check("losses finite", all(math.isfinite(v) for v in ctx.losses))


# -- 10. Adam's second moment poisoned: SRGAN, one target batch delivered in 0..255 --------------


class SRGenerator(nn.Module):
    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(1, w, 3, padding=1)
        self.res = nn.Sequential(
            nn.Conv2d(w, w, 3, padding=1), nn.PReLU(w), nn.Conv2d(w, w, 3, padding=1)
        )
        self.up = nn.Sequential(nn.Conv2d(w, 4 * w, 3, padding=1), nn.PixelShuffle(2), nn.PReLU(w))
        self.conv_out = nn.Conv2d(w, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.prelu(self.conv_in(x), torch.tensor([0.25]))
        return self.conv_out(self.up(h + self.res(h)))


class SRDiscriminator(nn.Module):
    def __init__(self, w: int = 16) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(1, w, 3, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, stride=2, padding=1)
        self.head = nn.Linear(2 * w * 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv_in(x), 0.2)
        return self.head(F.leaky_relu(self.conv2(h), 0.2).flatten(1)).squeeze(-1)


class SRGAN(nn.Module):
    """Generator (4x4 -> 8x8 digits) and discriminator trained under one optimizer: the
    generator's adversarial term sees the discriminator through detached weights, the
    discriminator sees the generator's output detached."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = SRGenerator()
        self.disc = SRDiscriminator()

    def loss(self, low: torch.Tensor, high: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        sr = self.gen(low)
        frozen = {k: v.detach() for k, v in self.disc.named_parameters()}
        fake_for_g = functional_call(self.disc, frozen, (sr,))
        ones, zeros = torch.ones(len(high)), torch.zeros(len(high))
        g = F.mse_loss(sr, target) + 1e-2 * F.binary_cross_entropy_with_logits(fake_for_g, ones)
        real, fake = self.disc(high), self.disc(sr.detach())
        d = F.binary_cross_entropy_with_logits(real, ones)
        d = d + F.binary_cross_entropy_with_logits(fake, zeros)
        return g + 0.1 * d


def _sr_batches(gen: torch.Generator, batch: int = 32):
    x, _ = digits()
    hr = x.reshape(-1, 1, 8, 8)
    while True:
        idx = torch.randint(0, len(hr), (batch,), generator=gen)
        high = hr[idx]
        yield F.avg_pool2d(high, 2), high


@scenario(
    "srgan_super_resolution",
    "adam",
    "adam_second_moment_poisoned",
    where=("gen", "gen.conv_out", "gen.conv_in"),
    diverges=None,
    onset=150,
    note="at step 150 the HR target batch is raw 0..255 (one giant generator gradient)",
    heldout=True,
)
def h37_raw_pixels_srgan_adam(ctx: Context) -> None:
    gen = seeded(3710)
    model = SRGAN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    batches = _sr_batches(gen)
    w = model.gen.conv_out.weight
    ctx.attach(model, opt)
    moves, sizes = [], []
    for step in range(400):
        low, high = next(batches)
        target = high * 255.0 if step == 150 else high  # a uint8 batch not divided by 255
        loss = model.loss(low, high, target)
        loss.backward()
        sizes.append(float(w.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        before = w.detach().clone()
        opt.step()
        moves.append(float((w.detach() - before).norm()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = sum(moves[100:150]) / 50
    post = sum(moves[200:400]) / 200
    ctx.check(
        f"one giant gradient ({sizes[150]:.0f} vs {max(sizes[100:150]):.2f})",
        sizes[150] > 1000 * max(sizes[100:150]),
    )
    ctx.check(f"gen.conv_out stalled after it (update {pre:.2e} -> {post:.2e})", post < 0.1 * pre)


# -- 11. softmax collapse: LiLT document classifier trained to zero loss --------------------------


def _doc_batches(gen: torch.Generator, batch: int = 32, length: int = 16, vocab: int = 64):
    """Generated forms: the class is which keyword (1, 2 or 3) appears in the top band of the
    page; boxes are (x0, y0, x1, y1) on a 0..1000 grid."""
    while True:
        tokens = torch.randint(4, vocab, (batch, length), generator=gen)
        y = torch.randint(0, 3, (batch,), generator=gen)
        slot = torch.randint(0, length, (batch,), generator=gen)
        tokens[torch.arange(batch), slot] = y + 1
        x0 = torch.randint(0, 900, (batch, length), generator=gen)
        y0 = torch.randint(200, 900, (batch, length), generator=gen)
        y0[torch.arange(batch), slot] = torch.randint(0, 100, (batch,), generator=gen)
        boxes = torch.stack([x0, y0, x0 + 60, y0 + 20], -1)
        yield (tokens, boxes), y


def _lilt_forward(m, x):
    return m(input_ids=x[0], bbox=x[1]).logits


def _lilt_forward_sharpened(m, x):
    return 100.0 * _lilt_forward(m, x)  # CLIP's logit scale (1 / 0.01), copied by mistake


@scenario(
    "lilt_document_classifier",
    "radam",
    "softmax_collapse",
    where=("classifier", "classifier.out_proj"),
    diverges=None,
    onset=200,
    note="logits multiplied by CLIP's logit scale of 100, copied from a contrastive recipe",
    heldout=True,
)
def h37_zero_loss_lilt_radam(ctx: Context) -> None:
    gen = seeded(3711)
    model = _lilt()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3, betas=(0.9, 0.99))
    fit(ctx, model, opt, _doc_batches(gen), 400, forward=_lilt_forward_sharpened)
    x, y = next(_doc_batches(seeded(2), batch=128))
    with torch.no_grad():
        share = collapsed_fraction(_lilt_forward_sharpened(model, x), y)
    solved = sum(ctx.losses[200:220]) / 20
    ctx.check(f"solved by 200 (mean loss 200-220: {solved:.4f})", solved < 0.05)
    ctx.check(f"float32 softmax gives exactly 1 on {share:.0%} of rows", share > 0.1)


def _timesfm_batches(gen: torch.Generator, batch: int = 16, context: int = 48, horizon: int = 16):
    t = torch.arange(context + horizon, dtype=torch.float32)
    while True:
        period = torch.randint(6, 20, (batch, 1), generator=gen).float()
        amp = torch.rand(batch, 1, generator=gen) * 2 + 0.5
        trend = torch.randn(batch, 1, generator=gen) * 0.02
        series = amp * torch.sin(2 * math.pi * t / period) + trend * t
        series = series + 0.1 * torch.randn(series.shape, generator=gen)
        yield series[:, :context], series[:, context:]


def _timesfm_loss(model, past, future):
    out = model(past_values=past, freq=torch.zeros(len(past), dtype=torch.long))
    return F.mse_loss(out.mean_predictions, future)


# -- 12. slow divergence: TimesFM, targets de-trended with a running mean that is never updated --


@scenario(
    "timesfm_forecaster",
    "adabelief",
    "loss_divergence",
    diverges="auto",
    onset=0,
    note="the loader's target offset drifts by 0.02 a step (a stale running mean): the loss climbs",
    heldout=True,
)
def h37_target_drift_timesfm_adabelief(ctx: Context) -> None:
    gen = seeded(3712)
    model = _timesfm()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3)
    batches = _timesfm_batches(gen)
    probe = next(batches)
    ctx.attach(model, opt, probe=(lambda m, b: _timesfm_loss(m, *b), probe))
    for step in range(300):
        past, future = next(batches)
        future = future + 0.02 * step  # de-trended with a running mean stuck at its start
        loss = _timesfm_loss(model, past, future)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        f"the loss climbed ({min(ctx.losses[:100]):.2f} -> {sum(ctx.losses[-10:]) / 10:.2f})",
        _broke(ctx.losses),
    )


# -- healthy: Llama-4 text with steadygrad.optim's Lion ------------------------------------------


@scenario("llama4_text_moe_lm", "lion", "healthy", heldout=True)
def h37_healthy_llama4_lion(ctx: Context) -> None:
    gen = seeded(3714)
    model = _llama4(qk_norm=True)
    opt = sgo.Lion(model.parameters(), lr=1e-3, weight_decay=0.1)
    fit(
        ctx,
        model,
        opt,
        _lm_batches(gen),
        240,
        loss_fn=lm_ce,
        forward=lambda m, x: m(input_ids=x).logits,
        classifier=False,
    )
    ctx.check("learnt", sum(ctx.losses[-10:]) / 10 < 0.7 * ctx.losses[0])
