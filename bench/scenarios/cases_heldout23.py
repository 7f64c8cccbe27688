"""Held-out set 23 (``h23_``): twelve induced instabilities and four healthy controls.

Families: Hugging Face Zamba (hybrid Mamba + shared attention) causal LM, CANINE character
encoder, EfficientNet image classifier, Audio Spectrogram Transformer on generated tones and an
M2M100 encoder-decoder, all from configs; DeepFM recommender on generated clicks, SimSiam on
digits, DGCNN (EdgeConv) on generated point clouds, A2C actor-critic on a generated gridworld
bandit, BiGRU + CTC on generated frame sequences, Performer (FAVOR+ random-feature attention)
encoder, LSTM-VAE sequence autoencoder. Optimizers: SGD, momentum, Nesterov, Adam, AdamW, NAdam,
RAdam, Adamax, Adagrad, RMSprop and steadygrad's Lion.

Written without reading ``steadygrad/diagnose/detectors/``, ``steadygrad/diagnose/diagnosis.py``,
``steadygrad/monitor/`` or the other held-out files, and never run on steadygrad while it was
written: each scenario was adjusted only until its own checks held (with a stand-in context that
attaches nothing), each healthy control until it trained normally.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    bert_batches,
    dead_fraction,
    digit_batches,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


# -- Hugging Face Zamba (hybrid) causal LM --------------------------------------------------------


def _zamba():
    from transformers import ZambaConfig, ZambaForCausalLM

    config = ZambaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,  # two Mamba layers, then two hybrid ones sharing one attention block
        num_attention_heads=2,
        num_key_value_heads=2,
        attention_hidden_size=64,
        attention_head_dim=32,
        mamba_d_state=8,
        mamba_d_conv=4,
        mamba_expand=2,
        n_mamba_heads=1,
        mamba_dt_rank=4,
        max_position_embeddings=64,
        attn_layer_period=1,
        attn_layer_offset=0,
        pad_token_id=0,
    )
    return ZambaForCausalLM(config)


@scenario("h23_hf_zamba", "adamw", "healthy", heldout=True)
def h23_zamba_healthy_adamw(ctx: Context) -> None:
    gen = seeded(2301)
    model = _zamba()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32),
        160,
        loss_fn=lm_loss,
        forward=lambda m, x: m(x).logits,
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.75 * _mean(ctx.losses[:10]))


# -- Hugging Face M2M100 encoder-decoder ----------------------------------------------------------


def _m2m100():
    from transformers import M2M100Config, M2M100ForConditionalGeneration

    config = M2M100Config(
        vocab_size=64,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        init_std=0.1,
    )
    return M2M100ForConditionalGeneration(config)


def _reversal_batches(gen: torch.Generator, batch: int = 32, length: int = 8):
    """A toy translation: every source token maps to the next token id. ``x`` stacks the source and the decoder input (target shifted right) for one forward."""
    while True:
        src = torch.randint(3, 30, (batch, length), generator=gen)
        tgt = src + 1
        dec = torch.cat([torch.full((batch, 1), 2), tgt[:, :-1]], 1)
        yield torch.stack([src, dec], 1), tgt


def _seq2seq_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x[:, 0], decoder_input_ids=x[:, 1]).logits


def _encoder_logit_max(model: nn.Module, x: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(d) of the encoder's self-attention on batch ``x``."""
    attn = model.model.encoder.layers[0].self_attn
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
        attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o)),
    ]
    with torch.no_grad():
        _seq2seq_forward(model, x)
    for h in hooks:
        h.remove()
    b, t, d = seen["q"].shape
    q, k = (seen[n].reshape(b, t, 2, d // 2) for n in ("q", "k"))
    return float(torch.einsum("bqhd,bkhd->bhqk", q, k).abs().max() / math.sqrt(d // 2))


@scenario(
    "h23_hf_m2m100",
    "adamw",
    "attention_logit_growth",
    where="model.encoder.layers.0.self_attn",
    diverges=None,
    heldout=True,
)
def h23_m2m100_qk_lr_multiplier_adamw(ctx: Context) -> None:
    """A per-module learning-rate multiplier meant for freshly initialised adapters matches the
    encoder's query and key projections: they train at 10x the base rate and the attention
    logits grow step after step until the encoder's attention is one-hot (the task itself,
    carried by cross-attention, is still learnt)."""
    gen = seeded(2302)
    model = _m2m100()
    attn = model.model.encoder.layers[0].self_attn
    fast = [*attn.q_proj.parameters(), *attn.k_proj.parameters()]
    fast_ids = {id(p) for p in fast}
    rest = [p for p in model.parameters() if id(p) not in fast_ids]
    base = 5e-3
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": fast, "lr": 10 * base}], lr=base, weight_decay=0.0
    )
    batches = _reversal_batches(gen)
    probe, _ = next(_reversal_batches(seeded(23020)))
    start = _encoder_logit_max(model, probe)
    fit(ctx, model, opt, batches, 300, loss_fn=lm_loss, forward=_seq2seq_forward, classifier=False)
    end = _encoder_logit_max(model, probe)
    ctx.check(
        f"encoder attention logits grew 20x to over 100 ({start:.1f} -> {end:.1f})",
        end > max(20 * start, 100.0),
    )


# -- Hugging Face CANINE character encoder --------------------------------------------------------


def _canine():
    from transformers import CanineConfig, CanineForSequenceClassification

    config = CanineConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        downsampling_rate=4,
        num_hash_functions=2,
        num_hash_buckets=256,
        local_transformer_stride=8,
        max_position_embeddings=128,
        upsampling_kernel_size=4,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return CanineForSequenceClassification(config)


def _char_batches(gen: torch.Generator, batch: int = 32, length: int = 32):
    """Lower-case characters as code points; the label: more 'a' than 'b'?"""
    for x, y in bert_batches(gen, batch, length, vocab=26):
        # bert_batches marks its two counted tokens as 1 and 2: they become 'a' and 'b'
        yield torch.where(x == 1, 97, torch.where(x == 2, 98, 96 + x)), y


@scenario(
    "h23_hf_canine",
    "adam",
    "update_ratio_out_of_range",
    where="canine.encoder.layer.0",
    heldout=True,
)
def h23_canine_layer_decay_int_division_adam(ctx: Context) -> None:
    """Layer-wise learning-rate decay written with integer division, ``(i + 1) // n`` for
    ``(i + 1) / n``: the deep encoder's first layer gets a learning rate of exactly 0."""
    gen = seeded(2303)
    model = _canine()
    layers = model.canine.encoder.layer
    n = len(layers)
    base = 1e-3
    groups = [{"params": layers[i].parameters(), "lr": base * ((i + 1) // n)} for i in range(n)]
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    groups.append({"params": [p for p in model.parameters() if id(p) not in in_layers]})
    opt = torch.optim.Adam(groups, lr=base)
    before = layers[0].attention.self.query.weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        _char_batches(gen),
        200,
        forward=lambda m, x: m(x).logits,
    )
    ctx.check("layer 0 unchanged", torch.equal(before, layers[0].attention.self.query.weight))
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:20]))


# -- Hugging Face EfficientNet image classifier ---------------------------------------------------


def _efficientnet():
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    config = EfficientNetConfig(
        num_channels=1,
        image_size=32,
        kernel_sizes=[3] * 7,
        width_coefficient=0.25,
        depth_coefficient=0.3,
        hidden_dim=320,  # the top conv's width (1280 scaled by the width coefficient)
        num_labels=10,
        dropout_rate=0.0,
        drop_connect_rate=0.0,
    )
    model = EfficientNetForImageClassification(config)
    for m in model.modules():  # this transformers version leaves BatchNorm scales near 0
        if isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _digits_32(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    img = F.interpolate(x.reshape(-1, 1, 8, 8), size=32, mode="bilinear", align_corners=False)
    return m(img).logits


@scenario(
    "h23_hf_efficientnet",
    "sgd_mom",
    "data_outlier",
    diverges=130,
    onset=130,
    heldout=True,
)
def h23_efficientnet_corrupt_batch_sgd_mom(ctx: Context) -> None:
    """At step 130 a batch holds six images whose decoder returned raw 16-bit intensities
    instead of [0, 1] values."""
    gen = seeded(2304)
    model = _efficientnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 130:
            x = x.clone()
            x[:6] = x[:6] * 4095.0
        return x, y

    fit(ctx, model, opt, digit_batches(gen, 32), 190, alter=alter, forward=_digits_32)
    usual = sorted(ctx.losses[120:130])[5]
    ctx.check(
        f"loss spiked at 130 ({usual:.2f} -> {ctx.losses[130]:.2f})", ctx.losses[130] > 3 * usual
    )


@scenario("h23_hf_efficientnet", "radam", "healthy", heldout=True)
def h23_efficientnet_healthy_radam(ctx: Context) -> None:
    gen = seeded(2305)
    model = _efficientnet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, digit_batches(gen, 32), 190, forward=_digits_32)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:10]))


# -- Hugging Face Audio Spectrogram Transformer ---------------------------------------------------


def _ast():
    from transformers import ASTConfig, ASTForAudioClassification

    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_mel_bins=16,
        max_length=48,
        patch_size=8,
        frequency_stride=8,
        time_stride=8,
        num_labels=4,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ASTForAudioClassification(config)


def _tone_batches(gen: torch.Generator, batch: int = 32, frames: int = 48, bins: int = 16):
    """Log-mel-like frames of a tone: class c lights mel bins 4c..4c+3 for a random stretch."""
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        x = 0.3 * torch.randn(batch, frames, bins, generator=gen)
        start = torch.randint(0, frames // 2, (batch,), generator=gen)
        t = torch.arange(frames)[None, :]
        on = (t >= start[:, None]) & (t < start[:, None] + frames // 2)
        band = (torch.arange(bins)[None, :] // 4) == y[:, None]
        x = x + 1.5 * (on[:, :, None] & band[:, None, :]).float()
        yield x, y


@scenario("h23_hf_ast", "adam", "amp_overflow", heldout=True)
def h23_ast_fp16_scaler_overflow_adam(ctx: Context) -> None:
    """fp16 autocast with a gradient scaler started high and told to grow again every 25
    steps: it overflows, skips the step and halves, again and again; training is fine."""
    gen = seeded(2306)
    model = _ast()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=25)
    fit(
        ctx,
        model,
        opt,
        _tone_batches(gen),
        200,
        forward=lambda m, x: m(x).logits,
        scaler=scaler,
        amp=True,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check(f"the scale dropped {drops} times (>= 3)", drops >= 3)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:10]))


# -- DeepFM recommender ---------------------------------------------------------------------------


FIELDS, VOCAB, NUMERIC = 6, 16, 3


class DeepFM(nn.Module):
    """First-order terms + factorisation-machine pairwise term + deep tower on shared
    embeddings; numeric features enter through a first-order linear term."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.first = nn.Embedding(FIELDS * VOCAB, 1)
        self.emb = nn.Embedding(FIELDS * VOCAB, dim)
        self.num_linear = nn.Linear(NUMERIC, 1)
        self.deep = nn.Sequential(
            nn.Linear(FIELDS * dim, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 1)
        )
        self.register_buffer("offsets", torch.arange(FIELDS) * VOCAB)
        nn.init.normal_(self.emb.weight, std=0.1)
        nn.init.zeros_(self.first.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cats = x[:, :FIELDS].long() + self.offsets
        e = self.emb(cats)
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)
        first = self.first(cats).sum((1, 2))
        return (
            first + fm + self.deep(e.flatten(1)).squeeze(1) + self.num_linear(x[:, FIELDS:])[:, 0]
        )


def _click_batches(gen: torch.Generator, batch: int = 128):
    """Clicks from a hidden model: per-category effects, one field pair that interacts, and
    standardised numeric features (price, age, dwell time)."""
    effect = 0.8 * torch.randn(FIELDS, VOCAB, generator=gen)
    pair = 1.2 * torch.randn(VOCAB, VOCAB, generator=gen)
    numeric_w = torch.tensor([1.5, -1.0, 0.8])
    while True:
        cats = torch.randint(0, VOCAB, (batch, FIELDS), generator=gen)
        nums = torch.randn(batch, NUMERIC, generator=gen)
        score = effect.gather(1, cats.T).sum(0) + pair[cats[:, 0], cats[:, 1]] + nums @ numeric_w
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(score - 0.5)).float()
        yield torch.cat([cats.float(), nums], 1), y


@scenario(
    "h23_deepfm",
    "nadam",
    "adam_second_moment_poisoned",
    where="num_linear",
    onset=150,
    heldout=True,
)
def h23_deepfm_unscaled_price_nadam(ctx: Context) -> None:
    """At step 150 one record's price arrives unscaled (in cents, 2e4, instead of a z-score;
    the record was not clicked): the numeric layer's gradient is thousands of times its usual size once, its
    second-moment estimate keeps that memory, and the layer barely moves for hundreds of steps
    after."""
    gen = seeded(2307)
    model = DeepFM()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    w = model.num_linear.weight
    trace: list[torch.Tensor] = []

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[int((y == 0).nonzero()[0]), FIELDS] = 2e4
        trace.append(w.detach().clone())
        return x, y

    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        400,
        loss_fn=F.binary_cross_entropy_with_logits,
        alter=alter,
        classifier=False,
    )

    def moved(a: int, b: int) -> float:  # the price weight alone (the poisoned element)
        return float((trace[b][0, 0] - trace[a][0, 0]).abs())

    before, after = moved(50, 150), moved(160, 260)
    ctx.check(f"numeric layer stalled after ({before:.3f} -> {after:.4f})", after < 0.1 * before)
    v = opt.state[w]["exp_avg_sq"]
    ratio = float(v[0, 0] / v[0, 1:].max())
    ctx.check(f"its second moment is still 1000x the others' ({ratio:.3g})", ratio > 1e3)


@scenario(
    "h23_deepfm",
    "adagrad",
    "loss_of_plasticity",
    where=("deep.0", "deep.1"),
    heldout=True,
)
def h23_deepfm_adagrad_lr_from_linear_model(ctx: Context) -> None:
    """An Adagrad learning rate copied from the logistic-regression baseline (0.5): Adagrad's
    first steps move every weight by about the learning rate, and most of the deep tower's
    first ReLU layer dies and never comes back."""
    gen = seeded(2308)
    model = DeepFM()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.5)
    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        250,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
    )
    x, _ = next(_click_batches(seeded(23080), 512))
    with torch.no_grad():
        e = model.emb(x[:, :FIELDS].long() + model.offsets).flatten(1)
        h = model.deep[1](model.deep[0](e))
    ctx.check(f"deep.0's ReLU mostly dead ({dead_fraction(h):.2f})", dead_fraction(h) >= 0.6)


# -- SimSiam on digits ----------------------------------------------------------------------------


class SimSiam(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Linear(128, 128),
            nn.BatchNorm1d(128),
            nn.ReLU(),
            nn.Linear(128, 64),
            nn.BatchNorm1d(64),
        )
        self.predictor = nn.Sequential(
            nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 64)
        )

    def loss(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.encoder(v1), self.encoder(v2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        d1 = F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
        d2 = F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
        return -0.5 * (d1 + d2)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Pixel dropout, gaussian noise and a random one-pixel shift of an 8x8 digit."""
    keep = (torch.rand(x.shape, generator=gen) > 0.2).float()
    x = x * keep + 0.1 * torch.randn(x.shape, generator=gen)
    shift = int(torch.randint(-1, 2, (1,), generator=gen))
    return torch.roll(x.reshape(-1, 8, 8), shift, dims=2).reshape(-1, 64)


@scenario("h23_simsiam", "sgd_mom", "healthy", heldout=True)
def h23_simsiam_healthy_sgd_mom(ctx: Context) -> None:
    gen = seeded(2309)
    model = SimSiam()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 128)
    for _ in range(220):
        x, _ = next(batches)
        loss = model.loss(_augment(x, gen), _augment(x, gen))
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, _ = next(batches)
    model.eval()
    with torch.no_grad():
        z = F.normalize(model.encoder(x), dim=-1)
    spread = float(z.std(0).mean() * math.sqrt(64))
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.3)
    ctx.check(f"no collapse (spread {spread:.2f})", spread > 0.3)


# -- DGCNN (EdgeConv) on generated point clouds ---------------------------------------------------


class EdgeConv(nn.Module):
    """max over the k nearest neighbours j of relu(W [x_i, x_j - x_i])."""

    def __init__(self, c_in: int, c_out: int, k: int = 8) -> None:
        super().__init__()
        self.k = k
        self.mlp = nn.Linear(2 * c_in, c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        idx = torch.cdist(x, x).topk(self.k, largest=False).indices  # (b, n, k), self included
        nbr = x.gather(1, idx.reshape(b, n * self.k, 1).expand(-1, -1, c)).reshape(b, n, -1, c)
        centre = x[:, :, None, :].expand(-1, -1, self.k, -1)
        return F.relu(self.mlp(torch.cat([centre, nbr - centre], -1))).amax(2)


class DGCNN(nn.Module):
    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.edge1 = EdgeConv(3, 32)
        self.edge2 = EdgeConv(32, 32)  # the graph is rebuilt in feature space (dynamic)
        self.fuse = nn.Linear(64, 64)
        self.classifier = nn.Linear(64, classes)

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        h1 = self.edge1(pts)
        h2 = self.edge2(h1)
        g = F.relu(self.fuse(torch.cat([h1, h2], -1))).amax(1)
        return self.classifier(g)


def _clouds(gen: torch.Generator, count: int, points: int = 32):
    """Point clouds of four shapes (sphere, cube surface, cylinder, flat disc), randomly scaled
    and rotated about z, with jitter."""
    y = torch.arange(count) % 4
    u = torch.randn(count, points, 3, generator=gen)
    sphere = F.normalize(u, dim=-1)
    cube = u / u.abs().amax(-1, keepdim=True)
    ang = 2 * math.pi * torch.rand(count, points, generator=gen)
    height = 2 * torch.rand(count, points, generator=gen) - 1
    cyl = torch.stack([ang.cos(), ang.sin(), height], -1)
    rad = torch.rand(count, points, generator=gen).sqrt()
    disc = torch.stack([rad * ang.cos(), rad * ang.sin(), 0.05 * height], -1)
    shapes = torch.stack([sphere, cube, cyl, disc], 1)
    pts = shapes[torch.arange(count), y]
    theta = 2 * math.pi * torch.rand(count, generator=gen)
    c, s, z, o = theta.cos(), theta.sin(), torch.zeros(count), torch.ones(count)
    rot = torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(count, 3, 3)
    scale = 0.7 + 0.6 * torch.rand(count, 1, 1, generator=gen)
    pts = scale * pts @ rot + 0.02 * torch.randn(count, points, 3, generator=gen)
    return pts, y


def _cloud_batches(gen: torch.Generator, batch: int = 32, pool: int | None = None):
    """Fresh clouds each batch, or endless passes over a fixed ``pool`` of them."""
    if pool is None:
        while True:
            yield _clouds(gen, batch)
    x, y = _clouds(gen, pool)
    while True:
        order = torch.randperm(pool, generator=gen)
        for i in range(0, pool - batch + 1, batch):
            yield x[order[i : i + batch]], y[order[i : i + batch]]


@scenario("h23_dgcnn", "sg_lion", "sharpness_above_limit", diverges="auto", heldout=True)
def h23_dgcnn_lion_warmup_to_sgd_lr(ctx: Context) -> None:
    """Lion warmed up linearly over 200 steps to the peak learning rate of the SGD recipe the
    run was copied from (0.1; Lion wants a hundred times less): it learns while the rate is
    small, then its steps outgrow the curvature and the loss blows up mid-warm-up."""
    gen = seeded(2310)
    model = DGCNN()
    opt = sgo.Lion(model.parameters(), lr=1e-4, fused=False)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.1 * min(1.0, (step + 1) / 200)

    fit(ctx, model, opt, _cloud_batches(gen, 32), 300, before=warmup)
    fin = [v if math.isfinite(v) else float("inf") for v in ctx.losses]
    low = min(sorted(fin[i : i + 5])[2] for i in range(0, 200, 5))
    ctx.check(f"it was learning (best median {low:.2f})", low < 0.7 * _mean(ctx.losses[:5]))
    ctx.check("then the loss climbed past 2x its best", _mean(fin[-20:]) > 2 * low)


@scenario(
    "h23_dgcnn",
    "sgd",
    "exploding_gradients",
    where="edge2.mlp",
    diverges="auto",
    onset=100,
    heldout=True,
)
def h23_dgcnn_decay_sign_edge2_sgd(ctx: Context) -> None:
    """From step 100 (when a 'decay phase' starts) a hand-written weight decay on the second
    EdgeConv has the wrong sign, ``w += wd * w``: that layer's weights grow 2% a step and the
    gradients of every layer grow with them until the run breaks."""
    gen = seeded(2311)
    model = DGCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)

    def bug(step: int) -> None:
        if step >= 100:
            with torch.no_grad():
                model.edge2.mlp.weight.add_(0.02 * model.edge2.mlp.weight)

    fit(ctx, model, opt, _cloud_batches(gen, 32), 400, before=bug)
    g = ctx.grad_norms
    fin = [v for v in g if math.isfinite(v)]
    ctx.check("gradient norm grew 20x after onset", max(fin[100:]) > 20 * _mean(g[90:100]))


# -- A2C on a generated gridworld bandit ----------------------------------------------------------


class RangeFeature(nn.Module):
    """The range sensor reports squared distance; its square root is the feature used."""

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(r)


class ActorCritic(nn.Module):
    def __init__(self, cells: int = 25, actions: int = 4) -> None:
        super().__init__()
        self.range_feat = RangeFeature()
        self.trunk = nn.Sequential(nn.Linear(cells + 1, 64), nn.Tanh())
        self.policy = nn.Linear(64, actions)
        self.value = nn.Linear(64, 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([obs[:, :-1], self.range_feat(obs[:, -1:]) / 6.0], 1)
        h = self.trunk(x)
        return self.policy(h), self.value(h)[:, 0]


MOVES = torch.tensor([[-1, 0], [1, 0], [0, -1], [0, 1]])


@scenario(
    "h23_a2c_gridworld",
    "rmsprop",
    "nonfinite",
    where="range_feat",
    diverges=160,
    onset=160,
    heldout=True,
)
def h23_a2c_sensor_glitch_rmsprop(ctx: Context) -> None:
    """A 5x5 gridworld, one step per episode: reward 1 for a move towards the goal corner.
    At step 160 one environment's range sensor returns its error code, -1: the square root
    of it is NaN and the update spreads it through the net."""
    gen = seeded(2312)
    model = ActorCritic()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    goal = torch.tensor([4, 4])
    rewards: list[float] = []
    for step in range(220):
        pos = torch.randint(0, 5, (64, 2), generator=gen)
        cell = F.one_hot(pos[:, 0] * 5 + pos[:, 1], 25).float()
        dist2 = ((goal - pos) ** 2).sum(1).float()
        if step == 160:
            dist2[11] = -1.0
        obs = torch.cat([cell, dist2[:, None]], 1)
        logits, value = model(obs)
        gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=gen)))
        action = (logits.detach() + gumbel).argmax(1)
        new = (pos + MOVES[action]).clamp(0, 4)
        reward = (((goal - new) ** 2).sum(1) < ((goal - pos) ** 2).sum(1)).float()
        logp = F.log_softmax(logits, -1)
        chosen = logp.gather(1, action[:, None])[:, 0]
        adv = reward - value.detach()
        entropy = -(logp.exp() * logp).sum(1).mean()
        loss = -(adv * chosen).mean() + 0.5 * (reward - value).pow(2).mean() - 0.01 * entropy
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        rewards.append(float(reward.mean()))
    fin = _finite(ctx.losses)
    ctx.check("finite until 160, not at 160", all(fin[:160]) and not fin[160])
    ctx.check("it was learning", _mean(rewards[140:160]) > _mean(rewards[:20]) + 0.1)


# -- BiGRU + CTC on generated frame sequences -----------------------------------------------------


LABELS, FEAT, FRAMES, MAX_LEN = 6, 12, 24, 5


def _ctc_batches(gen: torch.Generator, batch: int = 32, drift=None):
    """Frames of a label sequence (3..5 labels, each 3 frames of its prototype, with one
    noise frame before each). ``y`` packs [length, labels..., 0-padding]. ``drift(i)``, if
    given, is the share of the i-th batch whose transcripts belong to other utterances."""
    protos = 1.5 * torch.randn(LABELS, FEAT, generator=gen)
    i = 0
    while True:
        x = 0.3 * torch.randn(batch, FRAMES, FEAT, generator=gen)
        y = torch.zeros(batch, 1 + MAX_LEN, dtype=torch.long)
        for b in range(batch):
            n = int(torch.randint(3, MAX_LEN + 1, (1,), generator=gen))
            labels = torch.randint(1, LABELS + 1, (n,), generator=gen)
            for j, lab in enumerate(labels):
                x[b, 4 * j + 1 : 4 * j + 4] += protos[lab - 1]
            y[b, 0] = n
            y[b, 1 : 1 + n] = labels
        if drift is not None:
            wrong = torch.rand(batch, generator=gen) < drift(i)
            y[wrong] = y[torch.roll(torch.arange(batch), 1)][wrong]
        i += 1
        yield x, y


class CTCTagger(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.inp = nn.Linear(FEAT, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, LABELS + 1)  # index 0 is the CTC blank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(torch.tanh(self.inp(x)))
        return self.out(h)


def _ctc_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits, -1).transpose(0, 1)  # (T, B, C)
    lengths = torch.full((logits.shape[0],), logits.shape[1], dtype=torch.long)
    return F.ctc_loss(logp, y[:, 1:], lengths, y[:, 0], blank=0)


@scenario("h23_ctc_bigru", "adam", "healthy", heldout=True)
def h23_ctc_bigru_healthy_adam(ctx: Context) -> None:
    gen = seeded(2313)
    model = CTCTagger()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, _ctc_batches(gen), 260, loss_fn=_ctc_loss, classifier=False)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.3 * _mean(ctx.losses[:10]))


@scenario("h23_ctc_bigru", "adamax", "loss_divergence", diverges="auto", onset=150, heldout=True)
def h23_ctc_bigru_transcript_drift_adamax(ctx: Context) -> None:
    """From step 150 a re-sharded manifest pairs a growing share of the audio with the
    transcript of a neighbouring utterance (0% to 100% over 220 steps): nothing in the model
    or optimizer is wrong, the loss simply climbs."""
    gen = seeded(2314)
    model = CTCTagger()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def drift(i: int) -> float:
        return min(max(i - 151, 0) / 220, 1.0)  # batch 0 is the probe batch

    fit(ctx, model, opt, _ctc_batches(gen, drift=drift), 380, loss_fn=_ctc_loss, classifier=False)
    ctx.check(
        "loss climbed over 2x after 150",
        _mean(ctx.losses[-20:]) > 2 * _mean(ctx.losses[130:150]) + 1.0,
    )


# -- Performer (FAVOR+) encoder --------------------------------------------------------------------


class FavorAttention(nn.Module):
    """Softmax attention approximated with positive random features (FAVOR+, non-causal)."""

    def __init__(self, dim: int, heads: int, features: int = 32) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        dh = dim // heads
        blocks = [torch.linalg.qr(torch.randn(dh, dh))[0] for _ in range(features // dh)]
        norms = torch.randn(features, dh).norm(dim=1, keepdim=True)
        self.register_buffer("omega", torch.cat(blocks, 0) * norms)  # orthogonal random rows

    def _phi(self, x: torch.Tensor, per_row: bool) -> torch.Tensor:
        x = x * x.shape[-1] ** -0.25
        proj = x @ self.omega.T
        # a constant shift for numerical safety: per row for queries, one for all keys
        shift = proj.amax(-1, keepdim=True) if per_row else proj.amax((-2, -1), keepdim=True)
        return torch.exp(proj - x.pow(2).sum(-1, keepdim=True) / 2 - shift.detach()) + 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        fq, fk = self._phi(q, True), self._phi(k, False)
        kv = fk.transpose(-2, -1) @ v
        norm = fq @ fk.sum(-2, keepdim=True).transpose(-2, -1)
        y = (fq @ kv) / norm
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class PerformerLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = FavorAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class Performer(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 32, layers: int = 2, length: int = 16):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.layers = nn.ModuleList(PerformerLayer(dim, 2) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln_f(x).mean(1))


@scenario(
    "h23_performer",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    onset=150,
    heldout=True,
)
def h23_performer_resume_with_pretrain_lr_nesterov(ctx: Context) -> None:
    """Resumed at step 150 with the learning rate of another config (40x): far above 2/sharpness
    for Nesterov momentum, and the run blows up within a few dozen steps."""
    gen = seeded(2315)
    model = Performer()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def resume(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 2.0

    fit(ctx, model, opt, bert_batches(gen), 230, before=resume)
    fin = [v if math.isfinite(v) else float("inf") for v in ctx.losses]
    ctx.check("it was learning", _mean(ctx.losses[140:150]) < 0.8 * _mean(ctx.losses[:10]))
    ctx.check("loss blew up after 150", max(fin[150:]) > 5 * _mean(ctx.losses[140:150]))


# -- LSTM-VAE sequence autoencoder ----------------------------------------------------------------


class LSTMVAE(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 32, hidden: int = 64, latent: int = 16):
        super().__init__()
        self.emb = nn.Embedding(vocab + 1, dim)  # the last index is the start token
        self.encoder = nn.LSTM(dim, hidden, batch_first=True)
        self.to_mu = nn.Linear(hidden, latent)
        self.to_logvar = nn.Linear(hidden, latent)
        self.latent_to_h = nn.Linear(latent, hidden)
        self.decoder = nn.LSTM(dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        self.vocab = vocab
        self.kl = torch.zeros(())
        self.logits = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.encoder(self.emb(x))
        mu, logvar = self.to_mu(h[-1]), self.to_logvar(h[-1])
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        self.kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1).mean()
        h0 = torch.tanh(self.latent_to_h(z))[None]
        start = torch.full_like(x[:, :1], self.vocab)
        dec, _ = self.decoder(
            self.emb(torch.cat([start, x[:, :-1]], 1)), (h0, torch.zeros_like(h0))
        )
        self.logits = self.out(dec)
        return self.logits


@scenario(
    "h23_lstm_vae",
    "adam",
    "output_logit_divergence",
    where="out",
    diverges="auto",
    onset=60,
    heldout=True,
)
def h23_lstm_vae_zloss_sign_adam(ctx: Context) -> None:
    """A z-loss switched on at step 60 with its coefficient's sign flipped: instead of keeping
    log Z near 0 it rewards large log-partition values, and the decoder's output logits drift
    up; the cross-entropy follows them up."""
    gen = seeded(2316)
    model = LSTMVAE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    z_coef = -2e-2  # meant +2e-2

    def loss_fn(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return lm_loss(logits, y) + 0.05 * model.kl

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 60:
            return loss
        return loss + z_coef * torch.logsumexp(model.logits, -1).pow(2).mean()

    def same(batches):
        for x, _ in batches:
            yield x, x

    lse: list[float] = []

    def watch(step: int) -> None:
        lse.append(float(torch.logsumexp(model.logits.detach(), -1).mean()) if step else 0.0)

    fit(
        ctx,
        model,
        opt,
        same(text_batches(gen, batch=16, length=24, vocab=64)),
        360,
        loss_fn=loss_fn,
        extra_loss=extra,
        before=watch,
        classifier=False,
    )
    ctx.check(f"log Z grew from {lse[60]:.1f} to {lse[-1]:.1f}", lse[-1] > 20 + lse[60])
