"""Held-out set 22 (``h22_``): Hugging Face DBRX causal LM, ProphetNet encoder-decoder, SwiftFormer
and Hiera image classifiers and a SEW-D audio classifier (generated tones) from configs; MoCo with
a queue of negatives, GRU4Rec session recommender, Glow-style flow (actnorm, invertible 1x1
convolutions, affine coupling), neural cellular automaton on generated images, xDeepFM (CIN)
recommender on generated clicks, ESIM-style inference model on generated token pairs, relation
network on generated object sets.

Optimizers: SGD, SGD with momentum, Nesterov, Adam, AdamW, RAdam, NAdam, Adamax, RMSprop,
and steadygrad.optim's Lion and AdaBelief.

Written without reading steadygrad/diagnose/detectors, diagnosis.py, steadygrad/monitor or the
other held-out files, and never run on steadygrad while it was written: each scenario was tuned
with a stand-in context that attaches nothing, only until its own checks held (or, for a healthy
control, until it trained normally).
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
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# -- Hugging Face models from configs -------------------------------------------------------------


def hf_dbrx(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    """A tiny DBRX (mixture-of-experts decoder) from a config; qkv clipping set out of reach."""
    from transformers import DbrxConfig, DbrxForCausalLM

    config = DbrxConfig(
        d_model=dim,
        n_heads=heads,
        n_layers=layers,
        max_seq_len=32,
        vocab_size=vocab,
        attn_config={"kv_n_heads": heads, "clip_qkv": 1e4, "rope_theta": 10000.0},
        ffn_config={"ffn_hidden_size": 2 * dim, "moe_num_experts": 2, "moe_top_k": 1},
    )
    return DbrxForCausalLM(config)


def hf_prophetnet(vocab: int = 32, dim: int = 32):
    from transformers import ProphetNetConfig, ProphetNetForConditionalGeneration

    config = ProphetNetConfig(
        vocab_size=vocab,
        hidden_size=dim,
        encoder_ffn_dim=2 * dim,
        decoder_ffn_dim=2 * dim,
        num_encoder_layers=1,
        num_decoder_layers=1,
        num_encoder_attention_heads=2,
        num_decoder_attention_heads=2,
        max_position_embeddings=32,
        ngram=2,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return ProphetNetForConditionalGeneration(config)


def reverse_batches(gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 32):
    """Source: random tokens; target: the source reversed; decoder input: BOS + target[:-1]."""
    while True:
        src = torch.randint(3, vocab, (batch, length), generator=gen)
        tgt = src.flip(1)
        dec = torch.cat([torch.ones(batch, 1, dtype=torch.long), tgt[:, :-1]], 1)
        yield (src, dec), tgt


def _prophetnet_forward(m: nn.Module, x) -> torch.Tensor:
    return m(input_ids=x[0], decoder_input_ids=x[1]).logits


def hf_swiftformer(classes: int = 10):
    from transformers import SwiftFormerConfig, SwiftFormerForImageClassification

    config = SwiftFormerConfig(
        num_channels=1,
        depths=[1, 1, 1, 1],
        embed_dims=[8, 16, 24, 32],
        mlp_ratio=2,
        num_labels=classes,
        drop_path_rate=0.0,
    )
    return SwiftFormerForImageClassification(config)


def hf_hiera(classes: int = 10):
    from transformers import HieraConfig, HieraForImageClassification

    config = HieraConfig(
        image_size=[32, 32],
        num_channels=1,
        embed_dim=8,
        patch_size=[3, 3],
        patch_stride=[2, 2],
        patch_padding=[1, 1],
        depths=[1, 1],
        num_heads=[1, 2],
        query_stride=[2, 2],
        masked_unit_size=[4, 4],
        num_query_pool=1,
        num_labels=classes,
        drop_path_rate=0.0,
    )
    return HieraForImageClassification(config)


def big_digit_batches(gen: torch.Generator, batch: int = 32):
    """Digits upsampled to 1x32x32 (the image models downsample by 32)."""
    for x, y in digit_batches(gen, batch):
        yield F.interpolate(x.reshape(-1, 1, 8, 8), size=32, mode="bilinear"), y


def _logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x).logits


def hf_sewd(classes: int = 4):
    from transformers import SEWDConfig, SEWDForSequenceClassification

    config = SEWDConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16),
        conv_stride=(5, 2),
        conv_kernel=(10, 3),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        squeeze_factor=2,
        num_labels=classes,
        hidden_dropout=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.0,
        position_buckets=16,
        max_position_embeddings=64,
    )
    return SEWDForSequenceClassification(config)


def tone_batches(gen: torch.Generator, batch: int = 16, samples: int = 800, classes: int = 4):
    """Noisy sine tones at one of ``classes`` pitches, random phase and loudness."""
    t = torch.arange(samples) / 8000.0
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 300.0 * (1.6 ** y.float())
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        wave = amp * torch.sin(2 * math.pi * freq[:, None] * t + phase)
        yield wave + 0.1 * torch.randn(batch, samples, generator=gen), y


# -- the small families written here --------------------------------------------------------------


class MoCo(nn.Module):
    """Query encoder trained, key encoder its momentum copy, a queue of past keys as negatives."""

    def __init__(self, dim: int = 16, queue: int = 256, temperature: float = 0.07) -> None:
        super().__init__()
        self.encoder_q = self._encoder(dim)
        self.encoder_k = self._encoder(dim)
        self.encoder_k.load_state_dict(self.encoder_q.state_dict())
        for p in self.encoder_k.parameters():
            p.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(queue, dim), dim=1))
        self.temperature = temperature
        self.ptr = 0

    @staticmethod
    def _encoder(dim: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, dim))

    def logits(self, xq: torch.Tensor, xk: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = F.normalize(self.encoder_q(xq), dim=1)
        with torch.no_grad():
            k = F.normalize(self.encoder_k(xk), dim=1)
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ self.queue.T
        return torch.cat([pos, neg], 1) / self.temperature, k

    @torch.no_grad()
    def momentum_update(self, keys: torch.Tensor, m: float = 0.99) -> None:
        for pq, pk in zip(self.encoder_q.parameters(), self.encoder_k.parameters(), strict=True):
            pk.mul_(m).add_(pq, alpha=1 - m)
        n = len(keys)
        self.queue[self.ptr : self.ptr + n] = keys
        self.ptr = (self.ptr + n) % len(self.queue)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Pixel noise and a random one-pixel shift of an 8x8 digit, centred."""
    img = x.reshape(-1, 8, 8) - 0.3
    shift = int(torch.randint(-1, 2, (1,), generator=gen))
    img = torch.roll(img, shifts=shift, dims=2)
    return (img + 0.1 * torch.randn(img.shape, generator=gen)).reshape(-1, 64)


def _moco_run(
    ctx: Context, model: MoCo, opt: torch.optim.Optimizer, gen, steps: int, same_view: bool
) -> None:
    batches = digit_batches(gen, 32)
    x0, _ = next(batches)
    probe_views = (_augment(x0, gen), _augment(x0, gen))
    with torch.no_grad():  # fill the queue with real keys first (not random vectors)
        for _ in range(len(model.queue) // len(x0)):
            x, _ = next(batches)
            model.momentum_update(F.normalize(model.encoder_k(_augment(x, gen)), dim=1), m=1.0)

    def probe_loss(m: nn.Module, b) -> torch.Tensor:
        logits, _ = m.logits(*b)
        return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))

    ctx.attach(model, opt, probe=(probe_loss, probe_views))
    for _ in range(steps):
        x, _ = next(batches)
        xq = _augment(x, gen)
        logits, keys = model.logits(xq, xq if same_view else _augment(x, gen))
        target = torch.zeros(len(x), dtype=torch.long)
        ctx.targets(target)
        loss = F.cross_entropy(logits, target)
        loss.backward()
        ctx.grad_norms.append(_grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        model.momentum_update(keys)
        model.last_logits = logits.detach()


def _grad_norm(model: nn.Module) -> float:
    grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


class GRU4Rec(nn.Module):
    """Item embedding -> GRU over the session -> scores over every item for the next click."""

    def __init__(self, items: int = 200, dim: int = 32, logit_scale: float = 1.0) -> None:
        super().__init__()
        self.item_emb = nn.Embedding(items, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, items)
        self.logit_scale = logit_scale

    def forward(self, sessions: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(self.item_emb(sessions))
        return self.head(out) * self.logit_scale


def session_batches(
    gen: torch.Generator, batch: int = 32, length: int = 10, items: int = 200, sure: bool = False
):
    """Sessions that follow item-to-item transitions (each item has three likely successors;
    ``sure``: one certain successor)."""
    odds = torch.tensor([1.0, 0.0, 0.0] if sure else [0.7, 0.2, 0.1])
    succ = torch.randint(0, items, (items, 3), generator=torch.Generator().manual_seed(7))
    while True:
        seq = [torch.randint(0, items, (batch,), generator=gen)]
        for _ in range(length):
            pick = torch.multinomial(odds.expand(batch, 3), 1, generator=gen)[:, 0]
            seq.append(succ[seq[-1], pick])
        s = torch.stack(seq, 1)
        yield s[:, :-1], s[:, 1:]


class ActNorm(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hw = x.shape[2] * x.shape[3]
        return (x + self.loc) * self.log_scale.exp(), self.log_scale.sum() * hw


class InvConv1x1(nn.Module):
    """An invertible 1x1 convolution: a channel-mixing matrix, log|det| per pixel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        w, _ = torch.linalg.qr(torch.randn(channels, channels))
        self.weight = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hw = x.shape[2] * x.shape[3]
        y = F.conv2d(x, self.weight[:, :, None, None])
        return y, torch.linalg.slogdet(self.weight)[1] * hw


class Coupling(nn.Module):
    def __init__(self, channels: int, hidden: int = 32) -> None:
        super().__init__()
        half = channels // 2
        self.net = nn.Sequential(
            nn.Conv2d(half, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, 2 * (channels - half), 3, padding=1),
        )
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x.chunk(2, 1)
        shift, raw = self.net(a).chunk(2, 1)
        log_s = torch.tanh(raw)
        return torch.cat([a, (b + shift) * log_s.exp()], 1), log_s.flatten(1).sum(1)


class FlowStep(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.actnorm = ActNorm(channels)
        self.invconv = InvConv1x1(channels)
        self.coupling = Coupling(channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        total = torch.zeros(x.shape[0])
        for layer in (self.actnorm, self.invconv, self.coupling):
            x, ld = layer(x)
            total = total + ld
        return x, total


class LogitTransform(nn.Module):
    """Glow's preprocessing: squeeze [0, 1) pixels into (alpha, 1 - alpha), then logit."""

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        y = torch.log(p) - torch.log1p(-p)
        ld = (math.log(1 - 2 * self.alpha) - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return y, ld


class Glow(nn.Module):
    """8x8 digits squeezed to 4x4x4, a few flow steps, negative log-likelihood in bits/dim."""

    def __init__(self, steps: int = 3) -> None:
        super().__init__()
        self.pre = LogitTransform()
        self.flows = nn.ModuleList(FlowStep(4) for _ in range(steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.pre(x.reshape(-1, 1, 8, 8))
        z = F.pixel_unshuffle(z, 2)
        for flow in self.flows:
            z, ld = flow(z)
            logdet = logdet + ld
        prior = -0.5 * (z**2 + math.log(2 * math.pi)).flatten(1).sum(1)
        return -(prior + logdet) / (64 * math.log(2.0))


def dequantised_digits(gen: torch.Generator, batch: int = 64):
    """Digit pixels (0..16) plus uniform noise, scaled into [0, 1)."""
    for x, y in digit_batches(gen, batch):
        u = torch.rand(x.shape, generator=gen)
        yield (x * 16 + u) / 17, y


def _flow_loss(nll: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return nll.mean()


class NeuralCA(nn.Module):
    """Fixed Sobel/identity perception, a learned 1x1-conv update rule, residual updates."""

    def __init__(self, channels: int = 8, hidden: int = 32) -> None:
        super().__init__()
        sobel = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
        ident = torch.zeros(3, 3)
        ident[1, 1] = 1
        kernels = torch.stack([ident, sobel, sobel.T])
        self.register_buffer("kernels", kernels.repeat(channels, 1, 1)[:, None])
        self.channels = channels
        self.rule = nn.Sequential(
            nn.Conv2d(3 * channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, state: torch.Tensor, iterations: int) -> torch.Tensor:
        for _ in range(iterations):
            seen = F.conv2d(state, self.kernels, padding=1, groups=self.channels)
            state = state + self.rule(seen)
        return state


def nca_target(size: int = 16) -> torch.Tensor:
    """A generated ring image the automaton should grow from a single seed cell."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    r = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2).sqrt()
    return ((r > 3) & (r < 6)).float()


class CIN(nn.Module):
    """Compressed interaction network: each layer mixes outer products of the field embeddings."""

    def __init__(self, fields: int, sizes: tuple[int, ...] = (8, 8)) -> None:
        super().__init__()
        prev = fields
        self.layers = nn.ModuleList()
        for h in sizes:
            self.layers.append(nn.Conv1d(fields * prev, h, 1))
            prev = h

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        b, m, d = x0.shape
        x, pooled = x0, []
        for conv in self.layers:
            z = (x0[:, :, None, :] * x[:, None, :, :]).reshape(b, -1, d)
            x = conv(z)
            pooled.append(x.sum(2))
        return torch.cat(pooled, 1)


class XDeepFM(nn.Module):
    """Linear part + CIN + DNN over categorical field embeddings and two dense features."""

    def __init__(self, fields: int = 6, vocab: int = 50, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(fields * vocab, dim)
        self.linear = nn.Embedding(fields * vocab, 1)
        self.dense_proj = nn.Linear(2, dim)
        self.cin = CIN(fields + 1)
        self.dnn = nn.Sequential(nn.Linear((fields + 1) * dim, 32), nn.ReLU(), nn.Linear(32, 16))
        self.out = nn.Linear(16 + 16, 1)
        self.register_buffer("offsets", torch.arange(fields) * vocab)
        nn.init.normal_(self.embed.weight, std=0.05)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        cat, dense = x
        ids = cat + self.offsets
        emb = torch.cat([self.embed(ids), self.dense_proj(dense)[:, None]], 1)
        deep = self.dnn(emb.flatten(1))
        wide = self.linear(ids).sum((1, 2))
        return self.out(torch.cat([self.cin(emb), deep], 1))[:, 0] + wide


def click_batches(gen: torch.Generator, batch: int = 256, fields: int = 6, vocab: int = 50):
    """Generated clicks: pairwise field interactions and a dense feature drive the click rate."""
    g = torch.Generator().manual_seed(3)
    w1 = torch.randn(vocab, vocab, generator=g)
    w2 = torch.randn(vocab, vocab, generator=g)
    while True:
        cat = torch.randint(0, vocab, (batch, fields), generator=gen)
        dense = torch.randn(batch, 2, generator=gen)
        score = w1[cat[:, 0], cat[:, 1]] + w2[cat[:, 2], cat[:, 3]] + dense[:, 0] - 0.5
        y = torch.bernoulli(torch.sigmoid(1.5 * score), generator=gen)
        yield (cat, dense), y


def _bce(logit: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logit, y)


class ESIM(nn.Module):
    """Encode premise and hypothesis (BiLSTM), soft-align, enhance, project (ReLU), compose,
    pool, classify (entails / contradicts / neutral)."""

    def __init__(self, vocab: int = 40, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.encode = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(8 * dim, dim)
        self.compose = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.classify = nn.Sequential(nn.Linear(8 * dim, dim), nn.Tanh(), nn.Linear(dim, 3))

    def enhanced(self, x: tuple[torch.Tensor, torch.Tensor]):
        a, _ = self.encode(self.embed(x[0]))
        b, _ = self.encode(self.embed(x[1]))
        att = a @ b.transpose(1, 2)
        a_hat = torch.softmax(att, 2) @ b
        b_hat = torch.softmax(att, 1).transpose(1, 2) @ a
        ma = torch.cat([a, a_hat, a - a_hat, a * a_hat], 2)
        mb = torch.cat([b, b_hat, b - b_hat, b * b_hat], 2)
        return ma, mb

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        ma, mb = self.enhanced(x)
        self.projected = torch.cat([F.relu(self.proj(ma)), F.relu(self.proj(mb))], 1)
        va, _ = self.compose(F.relu(self.proj(ma)))
        vb, _ = self.compose(F.relu(self.proj(mb)))
        pooled = torch.cat([va.mean(1), va.amax(1), vb.mean(1), vb.amax(1)], 1)
        return self.classify(pooled)


def nli_batches(gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 40):
    """Premise: random tokens. Hypothesis: a shuffled copy (entails), a copy with token 1 ("not")
    put in (contradicts), or fresh tokens (neutral)."""
    while True:
        p = torch.randint(2, vocab, (batch, length), generator=gen)
        y = torch.randint(0, 3, (batch,), generator=gen)
        order = torch.argsort(torch.rand(batch, length, generator=gen), 1)
        h = p.gather(1, order)
        h[y == 1, 0] = 1
        fresh = torch.randint(2, vocab, (batch, length), generator=gen)
        h = torch.where((y == 2)[:, None], fresh, h)
        yield (p, h), y


class RelationNet(nn.Module):
    """g over every ordered pair of objects (with the question), summed, then f."""

    def __init__(self, features: int = 6, questions: int = 2, hidden: int = 32, answers: int = 5):
        super().__init__()
        self.g = nn.Sequential(
            nn.Linear(2 * features + questions, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
        )
        self.f = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, answers))

    def forward(self, x: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        objects, question = x
        b, n, d = objects.shape
        left = objects[:, :, None].expand(b, n, n, d)
        right = objects[:, None].expand(b, n, n, d)
        q = question[:, None, None].expand(b, n, n, question.shape[-1])
        pairs = torch.cat([left, right, q], 3)
        return self.f(self.g(pairs).sum((1, 2)) / n)


def object_set_batches(gen: torch.Generator, batch: int = 32, objects: int = 6):
    """Objects: position (x, y), colour (one-hot of 3), size. Question 0: how many objects share
    the first object's colour; question 1: how many lie within 0.4 of the first object."""
    while True:
        pos = torch.rand(batch, objects, 2, generator=gen)
        colour = torch.randint(0, 3, (batch, objects), generator=gen)
        size = torch.rand(batch, objects, 1, generator=gen)
        obj = torch.cat([pos, F.one_hot(colour, 3).float(), size], 2)
        which = torch.randint(0, 2, (batch,), generator=gen)
        same = (colour == colour[:, :1]).sum(1) - 1
        near = ((pos - pos[:, :1]).norm(dim=2) < 0.4).sum(1) - 1
        y = torch.where(which == 0, same, near).clamp(max=4)
        yield (obj, F.one_hot(which, 2).float()), y


# -- attention-logit growth (DBRX) ----------------------------------------------------------------


def _max_qk_logit(model: nn.Module, x: torch.Tensor) -> float:
    """The largest |q.k|/sqrt(head_dim) over both layers (before rotary embedding, which keeps
    norms), from the Wqkv outputs on a batch."""
    outs = []
    hooks = [
        b.norm_attn_norm.attn.Wqkv.register_forward_hook(lambda m, i, o: outs.append(o))
        for b in model.transformer.blocks
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    best = 0.0
    for o in outs:
        q, k, _ = o.split(32, dim=-1)
        q = q.reshape(*q.shape[:2], 2, 16).transpose(1, 2)
        k = k.reshape(*k.shape[:2], 2, 16).transpose(1, 2)
        best = max(best, float((q @ k.transpose(-1, -2)).abs().max()) / 4.0)
    return best


@scenario(
    "hf_dbrx_lm",
    "adamw",
    "attention_logit_growth",
    where=("transformer.blocks.0.norm_attn_norm.attn", "transformer.blocks.1.norm_attn_norm.attn"),
    diverges=None,
    heldout=True,
    note="a copied 'attention LR multiplier' recipe: Wqkv at 40x the LR and no weight decay",
)
def h22_attn_logit_growth_dbrx(ctx: Context) -> None:
    gen = seeded(2201)
    model = hf_dbrx()
    qkv = [p for n, p in model.named_parameters() if "Wqkv" in n]
    rest = [p for n, p in model.named_parameters() if "Wqkv" not in n]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 1e-3, "weight_decay": 0.1},
            {"params": qkv, "lr": 4e-2, "weight_decay": 0.0},
        ]
    )
    probe_x, _ = next(text_batches(torch.Generator().manual_seed(1), 8, 16))
    start = _max_qk_logit(model, probe_x)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 16),
        300,
        loss_fn=lm_loss,
        forward=_logits,
        classifier=False,
    )
    end = _max_qk_logit(model, probe_x)
    ctx.check(f"max attention logit grew 10x ({start:.2f} -> {end:.1f})", end > 10 * start)


# -- Adam's second moment poisoned (ProphetNet) ---------------------------------------------------


@scenario(
    "hf_prophetnet_seq2seq",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=150,
    heldout=True,
    note="manual loss scaling: one resumed step skips the unscale (gradient x 65536)",
)
def h22_adam_poisoned_prophetnet(ctx: Context) -> None:
    gen = seeded(2202)
    model = hf_prophetnet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    last = [torch.cat([p.detach().flatten() for p in model.parameters()])]

    def before(step: int) -> None:
        now = torch.cat([p.detach().flatten() for p in model.parameters()])
        moves.append(float((now - last[0]).norm()))
        last[0] = now

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 150 else loss

    fit(
        ctx,
        model,
        opt,
        reverse_batches(gen),
        400,
        loss_fn=lm_loss,
        forward=_prophetnet_forward,
        before=before,
        extra_loss=extra,
        classifier=False,
    )
    # moves[t] is the update of step t-1; the spike's momentum has passed by ~180
    before_spike, after_spike = _mean(moves[100:150]), _mean(moves[180:280])
    ctx.check(
        f"updates shrank 5x after the spike ({before_spike:.2e} -> {after_spike:.2e})",
        after_spike < before_spike / 5,
    )
    ctx.check(
        f"gradient spike at 150 ({ctx.grad_norms[150]:.0f} vs {max(ctx.grad_norms[140:150]):.2f})",
        ctx.grad_norms[150] > 1000 * max(ctx.grad_norms[140:150]),
    )


# -- learning rate above the stability limit (SwiftFormer, SEW-D) ---------------------------------


@scenario(
    "hf_swiftformer_image",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    onset=120,
    heldout=True,
    note="resumed with the wrong config: LR 0.03 -> 1.5 at step 120",
)
def h22_lr_raised_swiftformer(ctx: Context) -> None:
    gen = seeded(2203)
    model = hf_swiftformer()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.03 if step < 120 else 1.5

    fit(ctx, model, opt, big_digit_batches(gen), 200, forward=_logits, before=schedule)
    ctx.check("loss fell before 120", _mean(ctx.losses[110:120]) < 0.7 * _mean(ctx.losses[:10]))


@scenario(
    "hf_hiera_image",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear warm-up over 150 steps to a peak of 2.0 (the linear-scaling rule misapplied)",
)
def h22_warmup_overshoot_hiera(ctx: Context) -> None:
    gen = seeded(2217)
    model = hf_hiera()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 2.0 * min(1.0, (step + 1) / 150)

    fit(ctx, model, opt, big_digit_batches(gen), 200, forward=_logits, before=schedule)
    ctx.check("finite for the first 50 steps", all(_finite(ctx.losses[:50])))


@scenario(
    "hf_sewd_audio",
    "radam",
    "loss_divergence",
    diverges="auto",
    onset=150,
    heldout=True,
    note="a label cache keyed by batch position goes stale from 150: ever more labels belong to other clips",
)
def h22_slow_divergence_sewd(ctx: Context) -> None:
    gen = seeded(2204)
    model = hf_sewd()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    stale: list[float] = []

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        share = min(1.0, max(0.0, (step - 150) / 200))
        stale.append(share)
        g = torch.Generator().manual_seed(step)
        wrong = torch.rand(len(y), generator=g) < share
        return x, torch.where(wrong, torch.randint(0, 4, y.shape, generator=g), y)

    fit(ctx, model, opt, tone_batches(gen), 400, forward=_logits, alter=alter)
    ctx.check("loss fell first", min(ctx.losses[130:150]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("loss climbed after 150", _mean(ctx.losses[-20:]) > 1.0 + min(ctx.losses[130:150]))


# -- softmax collapse (GRU4Rec) -------------------------------------------------------------------


@scenario(
    "gru4rec_session",
    "adam",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="deterministic next items, no regulariser, scores multiplied by 8 (meant divided)",
)
def h22_softmax_collapse_gru4rec(ctx: Context) -> None:
    gen = seeded(2206)
    model = GRU4Rec(logit_scale=8.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    fit(ctx, model, opt, session_batches(gen, sure=True), 500, loss_fn=lm_loss, classifier=False)
    x, y = next(session_batches(torch.Generator().manual_seed(5), 64, sure=True))
    with torch.no_grad():
        frac = collapsed_fraction(model(x).reshape(-1, 200), y.reshape(-1))
    ctx.check(f"next item's softmax exactly 1.0 in {frac:.0%} of positions", frac >= 0.1)


# -- a NaN from one module on one bad sample (Glow) -----------------------------------------------


@scenario(
    "glow_invconv_flow",
    "adam",
    "nonfinite",
    where=("pre",),
    diverges=130,
    onset=130,
    heldout=True,
    note="one image arrives in 0..255 (not scaled): the logit preprocessing takes log of < 0",
)
def h22_nan_glow_preprocess(ctx: Context) -> None:
    gen = seeded(2207)
    model = Glow()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 130:
            x = x.clone()
            x[3] = torch.round(x[3] * 255)
        return x, y

    fit(
        ctx,
        model,
        opt,
        dequantised_digits(gen),
        170,
        loss_fn=_flow_loss,
        alter=alter,
        classifier=False,
    )
    finite = _finite(ctx.losses)
    ctx.check("finite until 130, not at 130", all(finite[:130]) and not finite[130])
    ctx.check("the flow learned first", ctx.losses[129] < ctx.losses[0] - 0.5)


# -- exploding gradients (neural cellular automaton) ----------------------------------------------


@scenario(
    "neural_cellular_automaton",
    "rmsprop",
    "exploding_gradients",
    where=("rule",),
    diverges=None,
    onset=100,
    heldout=True,
    note="rollout curriculum 8 -> 96 iterations, no state or gradient clipping; RMSprop survives it",
)
def h22_exploding_nca(ctx: Context) -> None:
    seeded(2208)
    model = NeuralCA()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    target = nca_target()

    def batches():
        while True:
            seed = torch.zeros(4, 8, 16, 16)
            seed[:, :, 8, 8] = 1.0
            yield seed, target.expand(4, 16, 16)

    iterations = [8]

    def before(step: int) -> None:
        iterations[0] = 8 if step < 100 else min(96, 8 + (step - 100) // 2)

    fit(
        ctx,
        model,
        opt,
        batches(),
        300,
        loss_fn=lambda out, y: F.mse_loss(out[:, 0], y),
        forward=lambda m, x: m(x, iterations[0]),
        before=before,
        classifier=False,
    )
    early = _mean(ctx.grad_norms[50:100])
    late = max((g for g in ctx.grad_norms if math.isfinite(g)), default=0.0)
    ctx.check(f"gradient norm grew 100x ({early:.2e} -> {late:.2e})", late > 100 * early)


# -- a data outlier (xDeepFM) ---------------------------------------------------------------------


@scenario(
    "xdeepfm_cin",
    "adamax",
    "data_outlier",
    diverges=160,
    onset=160,
    heldout=True,
    note="one batch's dense features logged raw (x 200), not standardised",
)
def h22_outlier_xdeepfm(ctx: Context) -> None:
    gen = seeded(2209)
    model = XDeepFM()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x, y):
        if step == 160:
            cat, dense = x
            x = (cat, dense * 200.0)
        return x, y

    fit(ctx, model, opt, click_batches(gen), 260, loss_fn=_bce, alter=alter, classifier=False)
    ctx.check("loss spiked at 160", ctx.losses[160] > 5 * max(ctx.losses[150:160]))


# -- loss of plasticity (ESIM) --------------------------------------------------------------------


@scenario(
    "esim_nli",
    "nadam",
    "loss_of_plasticity",
    where=("proj",),
    diverges=None,
    onset=80,
    heldout=True,
    note="an activation-sparsity penalty at 20 (meant 2e-3), switched on after warm-up",
)
def h22_dead_proj_esim(ctx: Context) -> None:
    gen = seeded(2210)
    model = ESIM()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss if step < 80 else loss + 20.0 * model.projected.sum(2).mean()

    fit(ctx, model, opt, nli_batches(gen), 300, extra_loss=extra)
    x, _ = next(nli_batches(torch.Generator().manual_seed(9), 128))
    with torch.no_grad():
        ma, mb = model.enhanced(x)
        dead = dead_fraction(torch.cat([model.proj(ma), model.proj(mb)], 1))
    ctx.check(f"{dead:.0%} of proj's ReLU units dead", dead >= 0.8)
    ctx.check("it had learned before", min(ctx.losses[60:80]) < 0.8 * _mean(ctx.losses[:5]))


# -- a frozen layer (relation network) ------------------------------------------------------------


@scenario(
    "relation_net_sets",
    "lion",
    "update_ratio_out_of_range",
    where=("g.0",),
    diverges=None,
    heldout=True,
    note="a fine-tune recipe's 'freeze the first layer' (lr 0 group) applied to a fresh model",
)
def h22_frozen_relnet(ctx: Context) -> None:
    gen = seeded(2211)
    model = RelationNet()
    first = list(model.g[0].parameters())
    ids = {id(p) for p in first}
    opt = sgo.Lion(
        [
            {"params": first, "lr": 0.0},
            {"params": [p for p in model.parameters() if id(p) not in ids], "lr": 1e-3},
        ],
        weight_decay=0.0,
    )
    w0 = model.g[0].weight.detach().clone()
    fit(ctx, model, opt, object_set_batches(gen), 300)
    ctx.check("g.0 never moved", torch.equal(w0, model.g[0].weight.detach()))
    ctx.check("the rest trained", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:20]))


# -- AMP overflow (relation network) --------------------------------------------------------------


@scenario(
    "relation_net_sets",
    "sgd",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="fp16 autocast, GradScaler from 2**30 growing every 25 steps: benign skipped steps",
)
def h22_amp_overflow_relnet(ctx: Context) -> None:
    gen = seeded(2212)
    model = RelationNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)
    fit(ctx, model, opt, object_set_batches(gen), 200, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check(f"scaler skipped steps ({drops} drops)", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss finite and fell", all(_finite(ctx.losses)) and ctx.losses[-1] < ctx.losses[0])


# -- healthy controls -----------------------------------------------------------------------------


@scenario("hf_hiera_image", "adabelief", "healthy", heldout=True, note="AdaBelief, warm-up")
def h22_healthy_hiera(ctx: Context) -> None:
    gen = seeded(2213)
    model = hf_hiera()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 2e-3 * min(1.0, (step + 1) / 20)

    fit(ctx, model, opt, big_digit_batches(gen), 250, forward=_logits, before=schedule)


@scenario("hf_dbrx_lm", "adamw", "healthy", heldout=True, note="one LR for every tensor")
def h22_healthy_dbrx(ctx: Context) -> None:
    gen = seeded(2214)
    model = hf_dbrx()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.1)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 32, 16),
        250,
        loss_fn=lm_loss,
        forward=_logits,
        classifier=False,
    )


@scenario("glow_invconv_flow", "adam", "healthy", heldout=True, note="clean dequantised digits")
def h22_healthy_glow(ctx: Context) -> None:
    gen = seeded(2215)
    model = Glow()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, dequantised_digits(gen), 250, loss_fn=_flow_loss, classifier=False)


@scenario("moco_queue", "sgd_nesterov", "healthy", heldout=True, note="temperature 0.1, queue 256")
def h22_healthy_moco(ctx: Context) -> None:
    gen = seeded(2216)
    model = MoCo(temperature=0.1)
    opt = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=0.03, momentum=0.9, nesterov=True
    )
    _moco_run(ctx, model, opt, gen, 300, same_view=False)
