"""Held-out set 38 (``h38_``): twelve more model families, each fault a user's bug or a bad setting.

Families: Hugging Face HunYuan dense causal LM, X-MOD multilingual classifier, RecurrentGemma
causal LM, Doge causal LM and a BertGeneration encoder-decoder from configs (no download);
MaxViT-style block/grid attention classifier (digits), TimesNet-style 2-D-variation forecaster on
generated series, sparse transformer with strided attention (by hand), Synthesizer encoder
(dense synthetic attention, digits), RSSM-style world model on a generated point-mass control
task, RankNet pairwise ranker on generated query/document features, FCOS-style anchor-free
detection head on generated images. Optimizers: SGD, momentum, Nesterov, Adam, AdamW, RAdam,
NAdam, Adamax, RMSprop, Adagrad and steadygrad.optim's Lion and AdaBelief.

Written without reading steadygrad/diagnose/detectors/, diagnosis.py, steadygrad/monitor/ or
the other held-out files, and never run on steadygrad: each scenario was adjusted only until
its own checks held (or, for a healthy control, until it trained normally) in a stand-in
context that attaches nothing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

V = 128

# -- Hugging Face models from configs --------------------------------------------------------------


def _hunyuan():
    from transformers import HunYuanDenseV1Config, HunYuanDenseV1ForCausalLM

    config = HunYuanDenseV1Config(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=64,
        attention_dropout=0.0,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return HunYuanDenseV1ForCausalLM(config)


def _xmod():
    from transformers import XmodConfig, XmodForSequenceClassification

    config = XmodConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        languages=("en_XX", "de_DE"),
        default_language="en_XX",
        pad_token_id=0,
    )
    model = XmodForSequenceClassification(config)
    model.set_default_language("en_XX")
    return model


def _recurrent_gemma():
    from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

    config = RecurrentGemmaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        lru_width=32,
        attention_window_size=16,
        conv1d_width=4,
        block_types=("recurrent", "attention"),
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return RecurrentGemmaForCausalLM(config)


def _doge():
    from transformers import DogeConfig, DogeForCausalLM

    config = DogeConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return DogeForCausalLM(config)


def _bert_generation():
    from transformers import (
        BertGenerationConfig,
        BertGenerationDecoder,
        BertGenerationEncoder,
        EncoderDecoderModel,
    )

    kwargs = dict(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    encoder = BertGenerationEncoder(BertGenerationConfig(**kwargs))
    decoder = BertGenerationDecoder(
        BertGenerationConfig(**kwargs, is_decoder=True, add_cross_attention=True)
    )
    model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    model.config.decoder_start_token_id = 1
    model.config.pad_token_id = 0
    return model


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


def _lm_data(gen: torch.Generator, batch: int = 16, length: int = 24):
    for x, y in text_batches(gen, batch, length, V):
        yield x.clamp(min=3), y.clamp(min=3)  # keep ids 0..2 (pad, bos, eos) out of the text


# -- HunYuan: a warm-up that overshoots ------------------------------------------------------------


@scenario(
    "hunyuan_dense_hf_lm",
    "adamw",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear warm-up to 1.0 (meant 3e-4)",
)
def h38_warmup_overshoot_hunyuan_adamw(ctx: Context) -> None:
    """A linear warm-up over 300 steps to a peak learning rate of 1.0 (a typo for 3e-4): the
    loss falls while the rate is small, then the steps outgrow the curvature and it climbs."""
    gen = seeded(3801)
    model = _hunyuan()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.01)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 1.0 * min(1.0, (step + 1) / 300)

    fit(
        ctx,
        model,
        opt,
        _lm_data(gen),
        320,
        loss_fn=lm_loss,
        forward=_logits,
        before=warmup,
        classifier=False,
    )
    best = min(ctx.losses[:200])
    ctx.check("loss fell first", best < ctx.losses[0] - 0.5)
    ctx.check(
        "then climbed", max(ctx.losses[-20:]) > best + 1.0 or not math.isfinite(ctx.losses[-1])
    )


@scenario("hunyuan_dense_hf_lm", "sg_adabelief", "healthy", heldout=True)
def h38_healthy_hunyuan_adabelief(ctx: Context) -> None:
    gen = seeded(3802)
    model = _hunyuan()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3, fused=False)
    fit(ctx, model, opt, _lm_data(gen), 200, loss_fn=lm_loss, forward=_logits, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < ctx.losses[0] - 1.0)


# -- X-MOD: layer-wise LR decay with integer division freezes layer 0 -----------------------------


def _xmod_data(gen: torch.Generator, batch: int = 32, length: int = 16):
    """Is token 4 more frequent than token 5 in the sequence? (ids 0..3 are special.)"""
    while True:
        x = torch.randint(6, V, (batch, length), generator=gen)
        a = torch.rand(batch, length, generator=gen) < 0.25
        b = torch.rand(batch, length, generator=gen) < 0.25
        x = torch.where(a, 4, torch.where(b & ~a, 5, x))
        x[:, 0] = 1
        yield x, ((x == 4).sum(1) > (x == 5).sum(1)).long()


@scenario(
    "xmod_hf_classifier",
    "radam",
    "update_ratio_out_of_range",
    where=(
        "roberta.encoder.layer.0",
        "roberta.encoder.layer.0.attention.self.query",
        "roberta.encoder.layer.0.intermediate.dense",
        "roberta.encoder.layer.0.output.dense",
    ),
    heldout=True,
)
def h38_frozen_layer0_xmod_radam(ctx: Context) -> None:
    """Layer-wise learning-rate decay written as ``lr * ((i + 1) // layers)`` (meant a float
    power): layer 0's group gets a rate of exactly 0 and never moves; the rest trains."""
    gen = seeded(3803)
    model = _xmod()
    layers = model.roberta.encoder.layer
    groups, taken = [], set()
    for i, layer in enumerate(layers):
        params = list(layer.parameters())
        taken |= {id(p) for p in params}
        groups.append({"params": params, "lr": 2e-3 * ((i + 1) // len(layers))})
    groups.append({"params": [p for p in model.parameters() if id(p) not in taken]})
    opt = torch.optim.RAdam(groups, lr=2e-3)
    before = layers[0].attention.self.query.weight.detach().clone()
    fit(ctx, model, opt, _xmod_data(gen), 220, forward=_logits)
    ctx.check("layer 0 unchanged", torch.equal(before, layers[0].attention.self.query.weight))
    ctx.check("the rest learned", sum(ctx.losses[-20:]) / 20 < 0.9 * ctx.losses[0])


# -- RecurrentGemma: Adam's second moment poisoned -------------------------------------------------


@scenario(
    "recurrent_gemma_hf_lm",
    "adam",
    "adam_second_moment_poisoned",
    heldout=True,
    onset=80,
)
def h38_adam_poisoned_recurrent_gemma(ctx: Context) -> None:
    """At step 80 a gradient-accumulation rewrite forgets to divide: that one step's loss is
    multiplied by 2e4. Adam's second moment keeps the squared spike for ~1000 steps and the
    updates stay far smaller than before it: learning stalls."""
    gen = seeded(3804)
    model = _recurrent_gemma()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    moved = []

    def track(step: int) -> None:
        if step in (30, 70, 150, 190):
            moved.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())

    fit(
        ctx,
        model,
        opt,
        _lm_data(gen),
        200,
        loss_fn=lm_loss,
        forward=_logits,
        before=track,
        extra_loss=lambda step, loss: loss * 2e4 if step == 80 else loss,
        classifier=False,
    )
    before, after = (moved[1] - moved[0]).norm(), (moved[3] - moved[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)


# -- Doge: a z-loss with its sign flipped ---------------------------------------------------------


@scenario(
    "doge_hf_lm",
    "sg_lion",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    onset=0,
)
def h38_zloss_sign_doge_lion(ctx: Context) -> None:
    """The auxiliary z-loss (``0.05 * logsumexp(logits)**2``, meant to keep the output logits
    small) is subtracted instead of added: the log-partition is pushed up every step, the output
    logits grow far past their start and the loss, after falling, climbs back."""
    gen = seeded(3805)
    model = _doge()
    opt = sgo.Lion(model.parameters(), lr=1e-3, fused=False)
    with torch.no_grad():
        start = float(model(input_ids=next(_lm_data(seeded(3805)))[0]).logits.abs().max())
    last = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last["logits"] = m(input_ids=x).logits
        return last["logits"]

    def zloss_bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - 0.05 * torch.logsumexp(last["logits"].float(), -1).pow(2).mean()

    fit(
        ctx,
        model,
        opt,
        _lm_data(gen),
        300,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=zloss_bug,
        classifier=False,
    )
    x, _ = next(_lm_data(gen))
    with torch.no_grad():
        peak = float(model(input_ids=x).logits.abs().max())
    ctx.check("output logits grew 20x", peak > 20 * start)
    best = min(ctx.losses)
    ctx.check(
        "loss climbed", max(ctx.losses[-20:]) > best + 1.0 or not math.isfinite(ctx.losses[-1])
    )


# -- BertGeneration encoder-decoder: an augmentation whose rate ramps up ---------------------------


def _reverse_data(gen: torch.Generator, batch: int = 16, length: int = 12):
    for x, _ in _lm_data(gen, batch, length):
        yield x, x.flip(1)


def _seq2seq(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    target = x.flip(1)  # teacher forcing on the clean target
    start = torch.ones_like(target[:, :1])
    return m(input_ids=x, decoder_input_ids=torch.cat([start, target[:, :-1]], 1)).logits


@scenario(
    "bert_generation_hf_seq2seq",
    "sgd_mom",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=120,
)
def h38_label_noise_ramp_bert_generation_sgd(ctx: Context) -> None:
    """Sequence reversal. From step 120 a target-token "replacement augmentation" whose rate was
    meant to decay instead grows by 0.5% a step: ever more target tokens are random and the
    loss creeps up for a couple of hundred steps, with nothing wrong inside the model."""
    gen = seeded(3806)
    model = _bert_generation()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    noise = torch.Generator().manual_seed(38)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        rate = min(1.0, max(0.0, (step - 120) * 0.005))
        swap = torch.rand(y.shape, generator=noise) < rate
        return x, torch.where(swap, torch.randint(3, V, y.shape, generator=noise), y)

    fit(
        ctx,
        model,
        opt,
        _reverse_data(gen),
        360,
        loss_fn=lm_loss,
        forward=_seq2seq,
        alter=alter,
        classifier=False,
    )
    best = min(ctx.losses[:120])
    ctx.check("learned before 120", best < ctx.losses[0] - 1.0)
    ctx.check("climbed after", sum(ctx.losses[-10:]) / 10 > best + 1.5)


# -- MaxViT-style block/grid attention classifier: benign AMP overflow -----------------------------


class _PartitionAttention(nn.Module):
    """Self-attention inside 2x2 windows ("block") or across a dilated 2x2 grid ("grid")."""

    def __init__(self, dim: int, heads: int, grid: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads, self.grid = heads, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (b, 4, 4, d)
        b, h, w, d = x.shape
        if self.grid:  # tokens 2 apart share a group
            g = x.reshape(b, 2, 2, 2, 2, d).permute(0, 2, 4, 1, 3, 5)
        else:  # neighbouring 2x2 tokens share a group
            g = x.reshape(b, 2, 2, 2, 2, d).permute(0, 1, 3, 2, 4, 5)
        g = g.reshape(b * 4, 4, d)
        q, k, v = self.qkv(self.norm(g)).chunk(3, -1)
        q, k, v = (z.reshape(b * 4, 4, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        y = (att.softmax(-1) @ v).transpose(1, 2).reshape(b * 4, 4, d)
        y = self.proj(y).reshape(b, 2, 2, 2, 2, d)
        if self.grid:
            y = y.permute(0, 3, 1, 4, 2, 5)
        else:
            y = y.permute(0, 1, 3, 2, 4, 5)
        return x + y.reshape(b, h, w, d)


class _MaxViT(nn.Module):
    def __init__(self, dim: int = 24, heads: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, dim, 3, stride=2, padding=1)  # 8x8 -> 4x4
        self.mbconv = nn.Sequential(
            nn.Conv2d(dim, 2 * dim, 1),
            nn.GELU(),
            nn.Conv2d(2 * dim, 2 * dim, 3, padding=1, groups=2 * dim),
            nn.GELU(),
            nn.Conv2d(2 * dim, dim, 1),
        )
        self.block_attn = _PartitionAttention(dim, heads, grid=False)
        self.grid_attn = _PartitionAttention(dim, heads, grid=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.reshape(-1, 1, 8, 8))
        x = x + self.mbconv(x)
        x = self.grid_attn(self.block_attn(x.permute(0, 2, 3, 1)))
        return self.head(self.norm(x.mean((1, 2))))


@scenario("maxvit_block_grid", "nadam", "amp_overflow", heldout=True)
def h38_amp_overflow_maxvit_nadam(ctx: Context) -> None:
    """float16 autocast with a GradScaler started at 2**32 that grows every 40 steps: it
    overflows now and then, skips those steps and halves its scale; training goes on fine."""
    gen = seeded(3807)
    model = _MaxViT()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**32, growth_interval=40)
    fit(ctx, model, opt, digit_batches(gen, 48), 200, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**32) >= 2)
    ctx.check("loss stayed finite and fell", ctx.losses[-1] < 0.5 * ctx.losses[0])


# -- TimesNet-style forecaster: one corrupt batch ---------------------------------------------------


def _series(gen: torch.Generator, batch: int = 32, past: int = 48, ahead: int = 12):
    """Sums of two sinusoids (periods 6..16) with noise: past window -> the next ``ahead``."""
    t = torch.arange(past + ahead, dtype=torch.float32)
    while True:
        p = torch.randint(6, 17, (batch, 2), generator=gen).float()
        phase = 2 * math.pi * torch.rand(batch, 2, generator=gen)
        amp = 0.5 + torch.rand(batch, 2, generator=gen)
        s = (amp[:, :, None] * torch.sin(2 * math.pi * t / p[:, :, None] + phase[:, :, None])).sum(
            1
        )
        s = s + 0.05 * torch.randn(s.shape, generator=gen)
        yield s[:, :past], s[:, past:]


class _TimesBlock(nn.Module):
    """Finds the dominant period by FFT, folds the series into (cycles, period), and mixes it
    with 2-D convolutions before unfolding (TimesNet's 2-D variation)."""

    def __init__(self, channels: int = 8, k: int = 2) -> None:
        super().__init__()
        self.k = k
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.GELU(), nn.Conv2d(channels, 1, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (b, t)
        b, t = x.shape
        amp = torch.fft.rfft(x, dim=1).abs().mean(0)
        amp[0] = 0
        freqs = torch.topk(amp, self.k).indices.tolist()
        weights = torch.fft.rfft(x, dim=1).abs()[:, freqs].softmax(1)
        out = 0
        for j, f in enumerate(freqs):
            period = max(2, t // max(f, 1))
            cycles = math.ceil(t / period)
            padded = F.pad(x, (0, cycles * period - t))
            y = self.conv(padded.reshape(b, 1, cycles, period)).reshape(b, -1)[:, :t]
            out = out + weights[:, j : j + 1] * y
        return x + out


class _TimesNet(nn.Module):
    def __init__(self, past: int = 48, ahead: int = 12) -> None:
        super().__init__()
        self.block1 = _TimesBlock()
        self.block2 = _TimesBlock()
        self.head = nn.Linear(past, ahead)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(x)))


@scenario("timesnet_forecaster", "rmsprop", "data_outlier", diverges=150, heldout=True, onset=150)
def h38_outlier_timesnet_rmsprop(ctx: Context) -> None:
    """At step 150 one batch comes from a sensor whose readings were logged in millivolts:
    three series of the batch are 1000x too large."""
    gen = seeded(3808)
    model = _TimesNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x, y = x.clone(), y.clone()
            x[:3] *= 1000.0
            y[:3] *= 1000.0
        return x, y

    fit(ctx, model, opt, _series(gen), 240, loss_fn=F.mse_loss, alter=alter, classifier=False)
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(ctx.losses[140:150]))


@scenario("timesnet_forecaster", "adam", "healthy", heldout=True)
def h38_healthy_timesnet_adam(ctx: Context) -> None:
    gen = seeded(3809)
    model = _TimesNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _series(gen), 200, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < 0.5 * ctx.losses[0])


# -- sparse transformer with strided attention: attention logits grow ------------------------------


class _StridedAttention(nn.Module):
    """Causal attention restricted to a local window plus every ``stride``-th earlier position
    (Child et al.'s strided pattern), written by hand."""

    def __init__(self, dim: int, heads: int, stride: int, scale: float) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.heads, self.stride, self.scale = heads, stride, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
        allowed = (j <= i) & ((i - j < self.stride) | ((i - j) % self.stride == 0))
        att = (q @ k.transpose(-1, -2)) * self.scale
        self.last_logit_max = float(att.detach().abs().max())
        att = att.masked_fill(~allowed, float("-inf")).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class _SparseBlock(nn.Module):
    def __init__(self, dim: int, heads: int, stride: int, scale: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _StridedAttention(dim, heads, stride, scale)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _SparseTransformer(nn.Module):
    def __init__(
        self,
        dim: int = 32,
        heads: int = 2,
        layers: int = 2,
        stride: int = 4,
        scale: float | None = None,
        context: int = 32,
    ) -> None:
        super().__init__()
        scale = scale if scale is not None else (dim // heads) ** -0.5
        self.tok = nn.Embedding(V, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(_SparseBlock(dim, heads, stride, scale) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


@scenario(
    "sparse_transformer_strided",
    "adamax",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges="auto",
    heldout=True,
)
def h38_attention_logits_sparse_adamax(ctx: Context) -> None:
    """The attention scale is written ``head_dim ** 0.5`` (meant ``** -0.5``, 16x too large)
    and Adamax runs at 3e-2 with no weight decay: the query/key weights grow, the attention
    logits grow with them and the attention saturates."""
    gen = seeded(3810)
    model = _SparseTransformer(scale=16**0.5)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-2)
    seen = []

    def watch(step: int) -> None:
        if step in (5, 290):
            seen.append(max(b.attn.last_logit_max for b in model.blocks))

    fit(
        ctx, model, opt, _lm_data(gen, 16, 32), 300, loss_fn=lm_loss, before=watch, classifier=False
    )
    ctx.check("attention logits grew 5x", seen[1] > 5 * seen[0])


# -- Synthesizer encoder (dense synthetic attention): softmax collapse ---------------------------


class _DenseSynthesizer(nn.Module):
    """Attention weights predicted from each token alone (no query-key product)."""

    def __init__(self, dim: int, length: int) -> None:
        super().__init__()
        self.synth = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, length))
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        att = self.synth(self.norm(x)).softmax(-1)
        return x + att @ self.value(self.norm(x))


class _Synthesizer(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.pos = nn.Parameter(torch.zeros(8, dim))
        self.layer1 = _DenseSynthesizer(dim, 8)
        self.layer2 = _DenseSynthesizer(dim, 8)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x.reshape(-1, 8, 8)) + self.pos  # digit rows as tokens
        return self.head(self.layer2(self.layer1(h)).mean(1))


@scenario("synthesizer_dense", "adamw", "softmax_collapse", where="head", heldout=True)
def h38_softmax_collapse_synthesizer_adamw(ctx: Context) -> None:
    """Fine-tuning on a fixed set of 160 digits with the logits divided by a temperature of
    0.01 (a config typo for 1.0) and no weight decay: within 300 steps over a third of the
    rows' float32 softmax rounds to exactly one-hot and their gradient to exactly zero."""
    seeded(3811)
    x, y = digits()
    x, y = x[:160], y[:160]
    model = _Synthesizer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)

    def full():
        while True:
            yield x, y

    fit(ctx, model, opt, full(), 300, forward=lambda m, b: m(b) / 0.01)
    with torch.no_grad():
        ctx.check("a third of the rows collapsed", collapsed_fraction(model(x) / 0.01, y) > 1 / 3)


# -- RSSM world model: exploding gradients through a growing horizon ----------------------------


def _point_mass(gen: torch.Generator, batch: int = 16, horizon: int = 64):
    """A damped 2-D point mass pushed by random actions; observations are noisy positions."""
    while True:
        pos, vel = torch.zeros(batch, 2), torch.zeros(batch, 2)
        acts = torch.randn(batch, horizon, 2, generator=gen).clamp(-1, 1)
        obs = []
        for t in range(horizon):
            vel = 0.9 * vel + 0.1 * acts[:, t]
            pos = pos + 0.1 * vel
            obs.append(pos + 0.01 * torch.randn(batch, 2, generator=gen))
        yield torch.stack(obs, 1) * 5, acts


class _RSSM(nn.Module):
    """Deterministic path (an ELU recurrence), a Gaussian latent from the posterior, a decoder;
    trained to reconstruct observations with a KL to the prior."""

    def __init__(self, hidden: int = 32, latent: int = 4) -> None:
        super().__init__()
        self.deter = nn.Linear(hidden + latent + 2, hidden)
        self.prior = nn.Linear(hidden, 2 * latent)
        self.posterior = nn.Linear(hidden + 2, 2 * latent)
        self.decoder = nn.Sequential(nn.Linear(hidden + latent, 32), nn.ELU(), nn.Linear(32, 2))
        self.hidden, self.latent = hidden, latent

    def forward(self, obs: torch.Tensor, acts: torch.Tensor, horizon: int) -> torch.Tensor:
        b = obs.shape[0]
        h, z = torch.zeros(b, self.hidden), torch.zeros(b, self.latent)
        loss = 0.0
        for t in range(horizon):
            h = F.elu(self.deter(torch.cat([h, z, acts[:, t]], -1)))
            pm, ps = self.prior(h).chunk(2, -1)
            qm, qs = self.posterior(torch.cat([h, obs[:, t]], -1)).chunk(2, -1)
            ps, qs = F.softplus(ps) + 0.1, F.softplus(qs) + 0.1
            z = qm + qs * torch.randn_like(qs)
            rec = self.decoder(torch.cat([h, z], -1))
            kl = (torch.log(ps / qs) + (qs**2 + (qm - pm) ** 2) / (2 * ps**2) - 0.5).sum(-1)
            loss = loss + F.mse_loss(rec, obs[:, t]) + 0.1 * kl.mean()
        return loss / horizon


@scenario(
    "rssm_world_model",
    "sgd",
    "exploding_gradients",
    where="deter",
    diverges="auto",
    heldout=True,
    onset=100,
)
def h38_exploding_horizon_rssm_sgd(ctx: Context) -> None:
    """The recurrent weight of the deterministic path is initialised orthogonal with gain 1.6
    (meant 1.0) and a curriculum lengthens the imagined horizon from 8 to 64 steps from step
    100: with plain SGD and no clipping the gradients through time grow with the horizon."""
    gen = seeded(3812)
    model = _RSSM()
    with torch.no_grad():
        nn.init.orthogonal_(model.deter.weight[:, :32], gain=1.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    data = _point_mass(gen)
    ctx.attach(model, opt)
    for step in range(260):
        horizon = 8 if step < 100 else min(64, 8 + (step - 100) // 2)
        obs, acts = next(data)
        loss = model(obs, acts, horizon)
        loss.backward()
        ctx.grad_norms.append(
            float(torch.stack([p.grad.norm() for p in model.parameters()]).norm())
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    early = sorted(ctx.grad_norms[50:100])[25]
    ctx.check(
        "gradient norm grew 100x",
        max(g for g in ctx.grad_norms[100:] if math.isfinite(g)) > 100 * early,
    )


# -- RankNet pairwise ranker: a NaN from one bad document ---------------------------------------


class _LogCounts(nn.Module):
    """log1p of term counts (a standard ranking feature transform)."""

    def forward(self, counts: torch.Tensor) -> torch.Tensor:
        return torch.log1p(counts)


class _RankNet(nn.Module):
    def __init__(self, features: int = 12) -> None:
        super().__init__()
        self.log_counts = _LogCounts()
        self.scorer = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, pair: torch.Tensor) -> torch.Tensor:  # (b, 2, features): P(first > second)
        s = self.scorer(self.log_counts(pair)).squeeze(-1)
        return s[:, 0] - s[:, 1]


def _pairs(gen: torch.Generator, batch: int = 32, features: int = 12):
    """Document pairs of one query: counts of query terms; relevance is a weighted sum."""
    w = torch.linspace(1.0, -0.5, features)
    while True:
        counts = torch.poisson(3 * torch.rand(batch, 2, features, generator=gen), generator=gen)
        rel = torch.log1p(counts) @ w
        yield counts, (rel[:, 0] > rel[:, 1]).float()


def _pair_loss(diff: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(diff, y)


@scenario(
    "ranknet_pairwise",
    "sgd_nesterov",
    "nonfinite",
    where="log_counts",
    diverges=130,
    heldout=True,
    onset=130,
)
def h38_nan_log_counts_ranknet_nesterov(ctx: Context) -> None:
    """At step 130 one document's count comes through as -1 (a missing-value sentinel):
    ``log1p(-1)`` is -inf, and the scores, the loss and every weight after are NaN."""
    gen = seeded(3813)
    model = _RankNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 130:
            x = x.clone()
            x[7, 1, 3] = -1.0
        return x, y

    fit(ctx, model, opt, _pairs(gen), 170, loss_fn=_pair_loss, alter=alter, classifier=False)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 130, not after", all(finite[:130]) and not finite[130])


@scenario("ranknet_pairwise", "sgd", "healthy", heldout=True)
def h38_healthy_ranknet_sgd(ctx: Context) -> None:
    gen = seeded(3814)
    model = _RankNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(ctx, model, opt, _pairs(gen), 200, loss_fn=_pair_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < 0.7 * ctx.losses[0])


# -- FCOS-style anchor-free detection head: a prior bias applied to the tower ---------------------


def _boxes(gen: torch.Generator, batch: int = 16, size: int = 16):
    """Images with one bright square; per location: inside-object label and (l, t, r, b)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        side = torch.randint(4, 9, (batch,), generator=gen)
        x0 = (torch.rand(batch, generator=gen) * (size - side)).long()
        y0 = (torch.rand(batch, generator=gen) * (size - side)).long()
        x1, y1 = x0 + side, y0 + side
        b = lambda v: v[:, None, None]  # noqa: E731
        inside = (xs >= b(x0)) & (xs < b(x1)) & (ys >= b(y0)) & (ys < b(y1))
        img = 0.1 * torch.randn(batch, size, size, generator=gen) + inside.float()
        ltrb = torch.stack([xs - b(x0), ys - b(y0), b(x1) - xs, b(y1) - ys], 1).float()
        yield img[:, None], (inside.float(), ltrb)


class _FCOSHead(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.cls_tower = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.bbox_tower = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU())
        self.cls_logits = nn.Conv2d(width, 1, 3, padding=1)
        self.bbox_pred = nn.Conv2d(width, 4, 3, padding=1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        f = self.backbone(img)
        cls = self.cls_logits(self.cls_tower(f))
        box = F.relu(self.bbox_pred(self.bbox_tower(f))) * 4
        return torch.cat([cls, box], 1)


def _fcos_loss(out: torch.Tensor, target) -> torch.Tensor:
    inside, ltrb = target
    cls = F.binary_cross_entropy_with_logits(out[:, 0], inside)
    pos = inside[:, None].expand_as(ltrb) > 0
    return cls + 0.1 * F.smooth_l1_loss(out[:, 1:][pos], ltrb[pos])


def _fcos_batches(gen: torch.Generator):
    yield from _boxes(gen)


@scenario(
    "fcos_anchor_free_head",
    "adagrad",
    "loss_of_plasticity",
    where=("cls_tower.2", "cls_tower.3"),
    heldout=True,
    onset=100,
)
def h38_dead_tower_fcos_adagrad(ctx: Context) -> None:
    """At step 100 a re-initialisation for fine-tuning sets the focal-loss prior bias
    (``-log((1 - 0.01) / 0.01)`` = -4.6) on every conv whose name contains "cls", the tower's
    included: the ReLU after the second tower conv is dead from then on (no gradient
    reaches its bias to bring it back); the classification loss stops improving."""
    gen = seeded(3815)
    model = _FCOSHead()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    prior = -math.log((1 - 0.01) / 0.01)

    def reinit(step: int) -> None:
        if step == 100:
            with torch.no_grad():
                for name, module in model.named_modules():
                    if "cls" in name and isinstance(module, nn.Conv2d):
                        module.bias.fill_(prior)

    fit(
        ctx,
        model,
        opt,
        _fcos_batches(gen),
        200,
        loss_fn=_fcos_loss,
        before=reinit,
        classifier=False,
    )
    img, _ = next(_fcos_batches(gen))
    with torch.no_grad():
        h = model.cls_tower(model.backbone(img))
    ctx.check("cls_tower.3 all dead", dead_fraction(h) == 1.0)


@scenario("fcos_anchor_free_head", "adamw", "healthy", heldout=True)
def h38_healthy_fcos_adamw(ctx: Context) -> None:
    gen = seeded(3816)
    model = _FCOSHead()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _fcos_batches(gen), 200, loss_fn=_fcos_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) / 10 < 0.5 * ctx.losses[0])
