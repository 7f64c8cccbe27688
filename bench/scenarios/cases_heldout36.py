"""Held-out set 36 (``h36_``): written without reading steadygrad's detectors, diagnosis, monitor
or the other held-out files, and never run on steadygrad while it was written (each scenario was
tuned only with a stand-in context that attaches nothing, until its own checks held).

Families: Hugging Face DeepSeek-V3 causal LM, MarkupLM classifier, HGNetV2 image classifier,
Qwen3-Next hybrid causal LM and Parakeet CTC speech model (fp16 autocast) from configs;
xLSTM-style mLSTM language model, SR-GNN session-graph recommender, APPNP personalised-PageRank
graph net, Lagrangian neural network on a generated pendulum, EDSR residual super-resolution net,
SupCon supervised contrastive learner (digits), music-transformer-style decoder with relative
position attention written by hand. Optimizers: SGD, momentum, Nesterov, Adam, AdamW, RMSprop,
Adagrad, Adamax, NAdam, RAdam and steadygrad's AdaBelief.
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
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- data ----------------------------------------------------------------------------------------


def _copy_batches(gen: torch.Generator, batch: int = 16, length: int = 32, vocab: int = 32):
    """Sequences whose second half repeats the first: attention learns to look back by half."""
    while True:
        half = torch.randint(0, vocab, (batch, length // 2 + 1), generator=gen)
        seq = torch.cat([half, half], 1)[:, : length + 1]
        yield seq[:, :-1], seq[:, 1:]


def _smooth_images(gen: torch.Generator, batch: int = 16, size: int = 16) -> torch.Tensor:
    """Random smooth images: a few oriented sinusoids per image, values in about [-1, 1]."""
    g = torch.linspace(0, 1, size)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    freq = torch.rand(batch, 3, 2, generator=gen) * 6.0
    phase = torch.rand(batch, 3, 1, 1, generator=gen) * 6.28
    waves = torch.sin(
        freq[..., 0, None, None] * xx * 3.14 + freq[..., 1, None, None] * yy * 3.14 + phase
    )
    return waves.mean(1, keepdim=True)


def _sr_batches(gen: torch.Generator, batch: int = 16):
    while True:
        hr = _smooth_images(gen, batch)
        yield F.avg_pool2d(hr, 2), hr


def _pendulum(gen: torch.Generator, n: int = 256):
    """States (q, qdot) of a pendulum (g/l = 4) and their true angular accelerations."""
    q = (torch.rand(n, generator=gen) - 0.5) * 2.0 * math.pi * 0.8
    qd = (torch.rand(n, generator=gen) - 0.5) * 4.0
    return torch.stack([q, qd], 1), -4.0 * torch.sin(q)


def _sbm_graph(gen: torch.Generator, n: int = 120, classes: int = 3, feats: int = 16):
    """A block-model graph: features are a noisy class signal; edges mostly within a class."""
    y = torch.arange(n) % classes
    same = (y[:, None] == y[None, :]).float()
    prob = 0.08 * same + 0.008 * (1 - same)
    adj = (torch.rand(n, n, generator=gen) < prob).float()
    adj = torch.triu(adj, 1)
    adj = adj + adj.T
    centers = torch.randn(classes, feats, generator=gen)
    x = 0.6 * centers[y] + torch.randn(n, feats, generator=gen)
    return x, adj, y


def _sessions(gen: torch.Generator, batch: int = 32, length: int = 6, items: int = 40):
    """Sessions of item ids (0 is padding) that walk a hidden item ring: next item = +1 or +2."""
    while True:
        start = torch.randint(1, items, (batch, 1), generator=gen)
        steps = torch.randint(1, 3, (batch, length), generator=gen).cumsum(1)
        seq = (start + steps - 1) % (items - 1) + 1
        lengths = torch.randint(3, length + 1, (batch,), generator=gen)
        mask = torch.arange(length)[None, :] < lengths[:, None]
        last = seq.gather(1, (lengths - 1)[:, None]).squeeze(1)
        target = last % (items - 1) + 1  # the item after the last one on the ring
        yield seq * mask, target


def _tones(gen: torch.Generator, batch: int = 8, frames: int = 48, bins: int = 16):
    """Generated log-mel-like features: three 'phones' per clip, each a band of energy; the
    label sequence is the phones (ids 1..8, 0 is CTC's blank)."""
    while True:
        labels = torch.randint(1, 9, (batch, 3), generator=gen)
        x = 0.3 * torch.randn(batch, frames, bins, generator=gen)
        seg = frames // 3
        for j in range(3):
            band = labels[:, j] * 2 - 2
            onehot = F.one_hot(band, bins).float() + F.one_hot(band + 1, bins).float()
            x[:, j * seg : (j + 1) * seg] += 2.0 * onehot[:, None, :]
        yield x, labels


# -- model families ------------------------------------------------------------------------------


def _deepseek(vocab: int = 64):
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    config = DeepseekV3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        n_group=1,
        topk_group=1,
        first_k_dense_replace=1,
        q_lora_rank=16,
        kv_lora_rank=16,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=16,
        max_position_embeddings=64,
    )
    return DeepseekV3ForCausalLM(config)


def _qwen3_next(vocab: int = 64):
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    config = Qwen3NextConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        linear_num_value_heads=2,
        linear_num_key_heads=2,
        linear_key_head_dim=8,
        linear_value_head_dim=8,
        linear_conv_kernel_dim=4,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=16,
        shared_expert_intermediate_size=16,
        layer_types=["linear_attention", "full_attention"],
        max_position_embeddings=64,
    )
    return Qwen3NextForCausalLM(config)


def _markuplm():
    from transformers import MarkupLMConfig, MarkupLMForSequenceClassification

    config = MarkupLMConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        max_depth=4,
        max_xpath_tag_unit_embeddings=16,
        max_xpath_subs_unit_embeddings=16,
        xpath_unit_hidden_size=8,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return MarkupLMForSequenceClassification(config)


def _markup_batches(gen: torch.Generator, batch: int = 32, length: int = 16):
    """Generated web pages: tokens with an xpath (tag ids per depth). The label: does the price
    token (1) sit under a <td> (tag 3) more often than under a <span> (tag 4)?"""
    while True:
        tokens = torch.randint(3, 64, (batch, length), generator=gen)
        tags = torch.randint(5, 16, (batch, length, 4), generator=gen)
        price = torch.rand(batch, length, generator=gen) < 0.3
        leaf = torch.where(torch.rand(batch, length, generator=gen) < 0.5, 3, 4)
        tokens = torch.where(price, 1, tokens)
        tags[..., 3] = torch.where(price, leaf, tags[..., 3])
        y = ((price & (leaf == 3)).sum(1) > (price & (leaf == 4)).sum(1)).long()
        yield torch.cat([tokens[..., None], tags], -1), y


def _markup_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    tags = x[..., 1:]
    return m(input_ids=x[..., 0], xpath_tags_seq=tags, xpath_subs_seq=tags % 4).logits


def _hgnetv2():
    from transformers import HGNetV2Config, HGNetV2ForImageClassification

    config = HGNetV2Config(
        num_labels=10,
        num_channels=1,
        stem_channels=[1, 8, 8],
        stage_in_channels=[8, 16],
        stage_mid_channels=[8, 16],
        stage_out_channels=[16, 32],
        stage_num_blocks=[1, 1],
        stage_downsample=[False, True],
        stage_light_block=[False, False],
        stage_kernel_size=[3, 3],
        stage_numb_of_layers=[2, 2],
        hidden_sizes=[16, 32],
        depths=[1, 1],
    )
    return HGNetV2ForImageClassification(config)


def _hgnet_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    img = F.interpolate(x.reshape(-1, 1, 8, 8), scale_factor=2, mode="bilinear")
    return m(pixel_values=img).logits


def _parakeet():
    from transformers import ParakeetCTCConfig, ParakeetForCTC

    encoder = dict(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_kernel_size=5,
        subsampling_factor=4,
        subsampling_conv_channels=8,
        num_mel_bins=16,
        dropout=0.0,
        dropout_positions=0.0,
        layerdrop=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        max_position_embeddings=256,
    )
    return ParakeetForCTC(ParakeetCTCConfig(vocab_size=10, pad_token_id=9, encoder_config=encoder))


def _parakeet_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(x.shape[:2], dtype=torch.long)
    return m(input_features=x, attention_mask=mask).logits


def _ctc(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp = logits.float().log_softmax(-1).transpose(0, 1)
    t, b = logp.shape[:2]
    return F.ctc_loss(logp, labels, torch.full((b,), t), torch.full((b,), labels.shape[1]), blank=0)


class MLSTMBlock(nn.Module):
    """An xLSTM-style mLSTM block: matrix memory C_t = f C_{t-1} + i v k^T, read by the query,
    normalised by |n_t q|; sigmoid forget gate, exponential input gate (stabilised)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 2 * dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.gates = nn.Linear(dim, 2)
        self.down = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        u, z = self.up(self.norm(x)).chunk(2, -1)
        q, k, v = self.qkv(u).chunk(3, -1)
        k = k / math.sqrt(d)
        i_pre, f_pre = self.gates(u).unbind(-1)
        log_f = F.logsigmoid(f_pre)
        c = x.new_zeros(b, d, d)
        n = x.new_zeros(b, d)
        m = x.new_full((b,), -1e4)
        outs = []
        for s in range(t):
            m_new = torch.maximum(log_f[:, s] + m, i_pre[:, s])
            f = torch.exp(log_f[:, s] + m - m_new)
            i = torch.exp(i_pre[:, s] - m_new)
            c = f[:, None, None] * c + i[:, None, None] * v[:, s, :, None] * k[:, s, None, :]
            n = f[:, None] * n + i[:, None] * k[:, s]
            m = m_new
            num = (c @ q[:, s, :, None]).squeeze(-1)
            den = torch.maximum((n * q[:, s]).sum(-1).abs(), torch.exp(-m))[:, None]
            outs.append(num / den)
        h = torch.stack(outs, 1) * F.silu(z)
        return x + self.down(h)


class MLSTMLM(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 24, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(MLSTMBlock(dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


class RelativeAttention(nn.Module):
    """Self-attention with a learned relative-position term (Music Transformer): logits are
    q.k + q.E[i - j] for a learned embedding E per distance, causal."""

    def __init__(self, dim: int, heads: int, context: int, scaled: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.rel = nn.Parameter(0.02 * torch.randn(context, dim // heads))
        self.proj = nn.Linear(dim, dim)
        self.scaled = scaled
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        dist = (torch.arange(t)[:, None] - torch.arange(t)[None, :]).clamp(min=0)
        rel = torch.einsum("bhid,ijd->bhij", q, self.rel[dist])
        logits = q @ k.transpose(-1, -2) + rel
        if self.scaled:
            logits = logits / math.sqrt(d // self.heads)
        self.last_logits = logits.detach()
        causal = torch.ones(t, t, dtype=torch.bool).tril()
        att = logits.masked_fill(~causal, float("-inf")).softmax(-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, t, d))


class MusicBlock(nn.Module):
    def __init__(self, dim: int, heads: int, context: int, scaled: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = RelativeAttention(dim, heads, context, scaled)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class MusicDecoder(nn.Module):
    """A music-transformer-style decoder over event tokens (no absolute positions)."""

    def __init__(self, vocab: int = 32, dim: int = 32, context: int = 32, scaled: bool = True):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(MusicBlock(dim, 2, context, scaled) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class SessionReadout(nn.Module):
    """SR-GNN's soft-attention readout: weights over a session's (non-padding) items."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim)
        self.q = nn.Linear(dim, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        last = h[torch.arange(len(h)), mask.sum(1).clamp(min=1) - 1]
        score = self.q(torch.sigmoid(self.w1(last)[:, None] + self.w2(h))).squeeze(-1)
        alpha = score.masked_fill(~mask, float("-inf")).softmax(-1)
        return (alpha[..., None] * h).sum(1)


class SRGNN(nn.Module):
    """SR-GNN: a gated graph layer over each session's item transitions (in/out adjacency,
    normalised by degree), an attention readout, scores against every item embedding."""

    def __init__(self, items: int = 40, dim: int = 24, scale: float | None = None) -> None:
        super().__init__()
        self.scale = scale  # NISER-style: unit-norm session and items, scores times ``scale``
        self.embed = nn.Embedding(items, dim, padding_idx=0)
        self.edge_in = nn.Linear(dim, dim)
        self.edge_out = nn.Linear(dim, dim)
        self.gru = nn.GRUCell(2 * dim, dim)
        self.readout = SessionReadout(dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        mask = seq > 0
        b, t = seq.shape
        a = torch.zeros(b, t, t)
        valid = mask[:, :-1] & mask[:, 1:]
        idx = torch.arange(t - 1)
        a[:, idx, idx + 1] = valid.float()
        a_out = a / a.sum(2, keepdim=True).clamp(min=1)
        a_in = a.transpose(1, 2) / a.sum(1)[..., None].clamp(min=1)
        h = self.embed(seq)
        msg = torch.cat([a_in @ self.edge_in(h), a_out @ self.edge_out(h)], -1)
        h = self.gru(msg.reshape(b * t, -1), h.reshape(b * t, -1)).reshape(b, t, -1)
        last = h[torch.arange(b), mask.sum(1).clamp(min=1) - 1]
        s = self.out(torch.cat([self.readout(h, mask), last], -1))
        if self.scale is None:
            return s @ self.embed.weight.T
        return self.scale * F.normalize(s, dim=-1) @ F.normalize(self.embed.weight, dim=-1).T


class APPNP(nn.Module):
    """APPNP: an MLP predicts, then K steps of personalised PageRank propagate the predictions."""

    def __init__(self, adj: torch.Tensor, feats: int = 16, hidden: int = 32, classes: int = 3):
        super().__init__()
        a = adj + torch.eye(len(adj))
        d = a.sum(1).rsqrt()
        self.register_buffer("a_hat", d[:, None] * a * d[None, :])
        self.lin1 = nn.Linear(feats, hidden)
        self.lin2 = nn.Linear(hidden, classes)
        self.alpha, self.k = 0.1, 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.lin2(F.relu(self.lin1(x)))
        h = h0
        for _ in range(self.k):
            h = (1 - self.alpha) * self.a_hat @ h + self.alpha * h0
        return h


class LagrangianNet(nn.Module):
    """A learned Lagrangian L(q, qdot); accelerations from the Euler-Lagrange equation."""

    def __init__(self, hidden: int = 48) -> None:
        super().__init__()
        self.lagrangian = nn.Sequential(
            nn.Linear(3, hidden),
            nn.Softplus(),
            nn.Linear(hidden, hidden),
            nn.Softplus(),
            nn.Linear(hidden, 1),
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        state = state.detach().requires_grad_(True)
        q, qd = state[:, 0], state[:, 1]
        inp = torch.stack([torch.sin(q), torch.cos(q), qd], 1)
        lag = self.lagrangian(inp).sum()
        (dl,) = torch.autograd.grad(lag, state, create_graph=True)
        dl_dq, dl_dqd = dl[:, 0], dl[:, 1]
        (d2,) = torch.autograd.grad(dl_dqd.sum(), state, create_graph=True)
        d2_qdq, d2_qdqd = d2[:, 0], d2[:, 1]
        # for a 1-D system: qdd = (dL/dq - d2L/dqd dq * qd) / d2L/dqd2 (kept away from 0)
        mass = d2_qdqd.abs() + 0.1
        return (dl_dq - d2_qdq * qd) / mass


class Normalize(nn.Module):
    """Per-image standardisation of the low-resolution input (mean 0, std 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((1, 2, 3), keepdim=True)
        return (x - mean) / x.std((1, 2, 3), keepdim=True)


class ResBlock(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.conv2(F.relu(self.conv1(x)))


class EDSR(nn.Module):
    """EDSR: no BatchNorm, residual blocks with a residual scale, pixel-shuffle x2 upsampler."""

    def __init__(self, ch: int = 16, blocks: int = 3, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = Normalize() if normalize else nn.Identity()
        self.head = nn.Conv2d(1, ch, 3, padding=1)
        self.body = nn.Sequential(*(ResBlock(ch) for _ in range(blocks)))
        self.upsample = nn.Sequential(nn.Conv2d(ch, 4 * ch, 3, padding=1), nn.PixelShuffle(2))
        self.tail = nn.Conv2d(ch, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        h = self.head(x)
        return self.tail(self.upsample(h + self.body(h)))


class SupConNet(nn.Module):
    """An encoder trained with the supervised contrastive loss on a projection, plus a linear
    classifier on the encoder's features (trained jointly; ``scale`` multiplies its logits)."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.projection = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
        self.classifier = nn.Linear(64, 10, bias=False)
        self.scale = scale

    def forward(self, x: torch.Tensor):
        f = self.encoder(x)
        z = F.normalize(self.projection(f), dim=-1)
        logits = self.scale * self.classifier(f)
        return z, logits


def _supcon_loss(z: torch.Tensor, y: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    sim = z @ z.T / tau
    eye = torch.eye(len(y), dtype=torch.bool)
    sim = sim.masked_fill(eye, float("-inf"))
    logp = sim.log_softmax(1).masked_fill(eye, 0.0)
    pos = (y[:, None] == y[None, :]) & ~eye
    return -((logp * pos).sum(1) / pos.sum(1).clamp(min=1)).mean()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(0, 1)


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median())


# -- attention-logit growth ------------------------------------------------------------------------


@scenario(
    "h36 music-transformer relative attention",
    "adam",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
)
def h36_music_rel_attention_unscaled(ctx: Context) -> None:
    """The hand-written relative attention drops the 1/sqrt(d) scale (a refactor lost it) and
    the LR is the one tuned for the scaled version: q.k and q.E grow as the copy pattern is
    learned, far past what the task needs (attention goes one-hot; the loss does not break
    within the run)."""
    gen = seeded(3601)
    model = MusicDecoder(scaled=False)
    opt = torch.optim.Adam(model.parameters(), lr=1.5e-2)
    early: list[float] = []

    def before(step: int) -> None:
        if step == 5:
            early.append(float(model.blocks[0].attn.last_logits.abs().max()))

    fit(ctx, model, opt, _copy_batches(gen), 400, loss_fn=lm_loss, before=before, classifier=False)
    x, _ = next(_copy_batches(gen))
    with torch.no_grad():
        model(x)
    late = max(float(b.attn.last_logits.abs().max()) for b in model.blocks)
    ctx.check(f"attention logits grew 10x ({early[0]:.1f} -> {late:.1f})", late > 10 * early[0])


# -- output-logit divergence -----------------------------------------------------------------------


@scenario(
    "h36 DeepSeek-V3 (HF)",
    "adamw",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=120,
    heldout=True,
)
def h36_deepseek_z_loss_sign(ctx: Context) -> None:
    """A z-loss meant to keep log Z near 0 is switched on after warm-up at step 120 with the
    sign flipped (it rewards a large log Z): the output logits climb without bound."""
    gen = seeded(3602)
    model = _deepseek()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    seen: list[float] = []

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        logits = extra.logits  # type: ignore[attr-defined]
        seen.append(float(logits.detach().abs().max()))
        if step < 120:
            return loss
        return loss - 5e-2 * logits.float().logsumexp(-1).pow(2).mean()

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        extra.logits = m(x).logits  # type: ignore[attr-defined]
        return extra.logits  # type: ignore[attr-defined]

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 24, 64),
        360,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=extra,
        classifier=False,
    )
    ctx.check(
        f"max |logit| grew 10x after 120 ({seen[119]:.1f} -> {seen[-1]:.1f})",
        seen[-1] > 10 * seen[119],
    )


# -- softmax collapse ------------------------------------------------------------------------------


@scenario(
    "h36 SR-GNN session recommender",
    "sg_adabelief",
    "softmax_collapse",
    where="embed",
    diverges=None,
    heldout=True,
)
def h36_srgnn_niser_scale_typo(ctx: Context) -> None:
    """NISER-style normalised scores with the scale typed as 160 instead of 16, on a catalogue
    whose next item is fully determined: once the cosines separate a little, the float32
    softmax gives most targets exactly 1.0 and those rows send no gradient."""
    gen = seeded(3603)
    model = SRGNN(scale=160.0)
    opt = sgo.AdaBelief(model.parameters(), lr=1e-2, fused=False)
    fit(ctx, model, opt, _sessions(gen), 400)
    x, y = next(_sessions(gen, 256))
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check(f"softmax exactly 1.0 on half the rows ({frac:.2f})", frac >= 0.5)


# -- frozen layers -------------------------------------------------------


@scenario(
    "h36 xLSTM mLSTM LM",
    "rmsprop",
    "update_ratio_out_of_range",
    where=("blocks.0.gates", "blocks.1.gates"),
    diverges=None,
    heldout=True,
)
def h36_mlstm_gate_group_no_warmup(ctx: Context) -> None:
    """The gate projections go in their own group (no weight decay) created with ``lr=0.0``
    for the warm-up to fill in, but the hand-written warm-up only sets ``param_groups[0]``:
    the input and forget gates never move while the rest trains."""
    gen = seeded(3605)
    model = MLSTMLM()
    gates = [p for n, p in model.named_parameters() if ".gates." in n]
    rest = [p for n, p in model.named_parameters() if ".gates." not in n]
    opt = torch.optim.RMSprop(
        [{"params": rest}, {"params": gates, "lr": 0.0, "weight_decay": 0.0}], lr=0.0
    )

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 2e-3 * min(1.0, (step + 1) / 50)

    before = model.blocks[0].gates.weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 8, 16, 64),
        200,
        loss_fn=lm_loss,
        before=warmup,
        classifier=False,
    )
    ctx.check("gates unchanged", torch.equal(before, model.blocks[0].gates.weight))
    ctx.check(
        f"loss fell ({_median(ctx.losses[:10]):.2f} -> {_median(ctx.losses[-10:]):.2f})",
        _median(ctx.losses[-10:]) < 0.7 * _median(ctx.losses[:10]),
    )


@scenario(
    "h36 Qwen3-Next (HF)",
    "radam",
    "update_ratio_out_of_range",
    where=(
        "model.layers.0.linear_attn",
        "model.layers.0.linear_attn.in_proj_qkvz",
        "model.layers.0.linear_attn.in_proj_ba",
        "model.layers.0.linear_attn.out_proj",
    ),
    diverges=None,
    heldout=True,
)
def h36_qwen3next_never_unfrozen(ctx: Context) -> None:
    """The linear-attention layer is meant to sit out the first 3 epochs: its group's LR factor
    is 0 until ``step >= 3 * samples_per_epoch`` (samples, not steps), so it never comes back."""
    gen = seeded(3604)
    model = _qwen3_next()
    frozen = list(model.model.layers[0].linear_attn.parameters())
    ids = {id(p) for p in frozen}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.RAdam([{"params": rest}, {"params": frozen}], lr=3e-3)
    samples_per_epoch = 20_000
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 1.0, lambda s: 1.0 if s >= 3 * samples_per_epoch else 0.0]
    )
    w = model.model.layers[0].linear_attn.in_proj_qkvz.weight
    before = w.detach().clone()
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 24, 64),
        220,
        loss_fn=lm_loss,
        forward=lambda m, x: m(x).logits,
        before=lambda s: sched.step() if s else None,
        classifier=False,
    )
    ctx.check("linear attention unchanged", torch.equal(before, w))
    ctx.check(
        f"loss fell ({_median(ctx.losses[:10]):.2f} -> {_median(ctx.losses[-10:]):.2f})",
        _median(ctx.losses[-10:]) < 0.7 * _median(ctx.losses[:10]),
    )


# -- dead units ------------------------------------------------------------------------------------


@scenario(
    "h36 EDSR super-resolution",
    "sgd_nesterov",
    "loss_of_plasticity",
    where=("body.1.conv1", "body.1"),
    diverges=None,
    onset=150,
    heldout=True,
)
def h36_edsr_bias_from_checkpoint(ctx: Context) -> None:
    """At step 150 the run is resumed from a checkpoint whose body.1.conv1 bias was saved after
    an (abandoned) pruning pass that filled pruned channels with -5: every unit of the ReLU
    after it is dead, and no gradient can bring it back."""
    gen = seeded(3606)
    model = EDSR()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def resume(step: int) -> None:
        if step == 150:
            with torch.no_grad():
                model.body[1].conv1.bias.fill_(-5.0)

    fit(ctx, model, opt, _sr_batches(gen), 300, loss_fn=F.l1_loss, before=resume, classifier=False)
    lr_img, _ = next(_sr_batches(gen, 64))
    with torch.no_grad():
        h = model.head(lr_img)
        h = model.body[0](h)
        feat = F.relu(model.body[1].conv1(h))
    frac = dead_fraction(feat)
    ctx.check(f"body.1's ReLU dead ({frac:.2f})", frac == 1.0)


# -- a frozen layer --------------------------------------------------------------------------------


# -- Adam's second moment poisoned ----------------------------------------------------------------


def _markuplm_run(ctx: Context | None, poison_at: int | None, steps: int = 260) -> list[float]:
    gen = seeded(3608)
    model = _markuplm()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    batches = _markup_batches(gen)
    if ctx is not None:
        ctx.attach(model, opt)
    losses = []
    for step in range(steps):
        x, y = next(batches)
        # per-page weights from the crawl's CSV; a missing weight is written as 999999
        weight = torch.ones(len(y))
        if step == poison_at:
            weight[3] = 999999.0
        per = F.cross_entropy(_markup_forward(model, x), y, reduction="none")
        loss = (weight * per).mean()
        if ctx is not None:
            ctx.targets(y)
        loss.backward()
        if ctx is not None:
            ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if ctx is not None:
            ctx.step(loss)
        losses.append(float(per.mean()))
        opt.zero_grad(set_to_none=True)
    return losses


@scenario(
    "h36 MarkupLM classifier (HF)",
    "adamax",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=60,
    heldout=True,
)
def h36_markuplm_missing_weight_sentinel(ctx: Context) -> None:
    """Per-page loss weights come from a CSV where a missing weight reads 999999: at step 60 one
    page carries it. The one giant gradient sets Adamax's infinity norm, which decays by
    beta2 = 0.999 a step: the updates stay tiny for the rest of the run and learning stalls."""
    losses = _markuplm_run(ctx, 60)
    clean = _markuplm_run(None, None)
    ctx.check(
        f"stalled vs. a clean twin ({_median(losses[-20:]):.3f} vs {_median(clean[-20:]):.3f})",
        _median(losses[-20:]) > 1.5 * _median(clean[-20:]),
    )
    ctx.check("one giant loss at 60", ctx.losses[60] > 1000 * _median(ctx.losses[40:60]))


# -- a learning rate above the stability limit -----------------------------------------------------


@scenario(
    "h36 APPNP graph net",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    onset=40,
    heldout=True,
)
def h36_appnp_lr_applied_twice(ctx: Context) -> None:
    """Resuming at step 40 multiplies the LR by the restored scale factor once more (x100): the
    full-batch step is now far above 2 / sharpness and the loss blows up."""
    gen = seeded(3609)
    x, adj, y = _sbm_graph(gen)
    model = APPNP(adj)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-3)
    train = torch.arange(60)
    ctx.attach(model, opt)
    for step in range(300):
        if step == 40:
            opt.param_groups[0]["lr"] *= 100.0
        out = model(x)
        ctx.targets(y[train])
        loss = F.cross_entropy(out[train], y[train])
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    before = _median(ctx.losses[30:40])
    after = max(ctx.losses[40:]) if all(_finite(ctx.losses[40:])) else math.inf
    ctx.check(f"loss blew up after 40 ({before:.2f} -> {after:.3g})", after > before + 5)


# -- a data outlier --------------------------------------------------------------------------------


@scenario(
    "h36 HGNetV2 image classifier (HF)",
    "sgd_mom",
    "data_outlier",
    diverges=170,
    onset=170,
    heldout=True,
)
def h36_hgnetv2_corrupt_batch(ctx: Context) -> None:
    """At step 170 six images of one batch come from a shard written without the /255 scaling
    (bytes taken as floats): their pixels are 255x too bright."""
    gen = seeded(3609)
    model = _hgnetv2()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:
            x = x.clone()
            x[:6] *= 255.0
        return x, y

    fit(ctx, model, opt, digit_batches(gen, 48), 260, alter=alter, forward=_hgnet_forward)
    ctx.check(
        f"loss spiked at 170 ({ctx.losses[170]:.2f})",
        ctx.losses[170] > 5 * max(ctx.losses[160:170]),
    )


# -- a one-off NaN from one module on one bad sample ----------------------------------------------


@scenario(
    "h36 SR-GNN session recommender",
    "adagrad",
    "nonfinite",
    where="readout",
    diverges=140,
    onset=140,
    heldout=True,
)
def h36_srgnn_empty_session(ctx: Context) -> None:
    """At step 140 one session arrives empty (every item filtered out as unknown): the
    readout's masked softmax has nothing to attend to and returns NaN for it."""
    gen = seeded(3610)
    model = SRGNN()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 140:
            x = x.clone()
            x[7] = 0
        return x, y

    fit(ctx, model, opt, _sessions(gen), 180, alter=alter)
    finite = _finite(ctx.losses)
    ctx.check("finite until 140, not at 140", all(finite[:140]) and not finite[140])


# -- a slow divergence with no mechanism -----------------------------------------------------------


@scenario(
    "h36 Lagrangian neural net",
    "nadam",
    "loss_divergence",
    diverges="auto",
    onset=100,
    heldout=True,
)
def h36_lnn_noise_schedule_inverted(ctx: Context) -> None:
    """The label-noise schedule on the measured accelerations is meant to anneal from 1 to 0
    after step 100 but is written the other way round: the noise grows each step, and the
    loss climbs slowly with nothing wrong inside the model."""
    gen = seeded(3611)
    model = LagrangianNet()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    for step in range(500):
        state, acc = _pendulum(gen, 128)
        sigma = 0.0 if step < 100 else 0.02 * (step - 100)
        target = acc + sigma * torch.randn(acc.shape, generator=gen)
        loss = F.mse_loss(model(state), target)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    best = min(_median(ctx.losses[t - 5 : t]) for t in range(5, 120))
    late = _median(ctx.losses[-20:])
    ctx.check(f"loss climbed slowly ({best:.2f} -> {late:.2f})", late > max(2 * best, best + 1))


# -- AMP overflow ----------------------------------------------------------------------------------


@scenario(
    "h36 Parakeet CTC (HF)",
    "adamw",
    "amp_overflow",
    where=(),
    diverges=150,
    onset=150,
    heldout=True,
)
def h36_parakeet_fp16_raw_power(ctx: Context) -> None:
    """fp16 autocast with a GradScaler; from step 150 a feature-pipeline change hands the
    model raw power spectra (the log was dropped, values up to ~1e5): fp16 activations
    overflow, every loss is inf and the scaler skips step after step."""
    gen = seeded(3612)
    model = _parakeet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        return (torch.exp(2.0 * x + 9.0), y) if step >= 150 else (x, y)

    fit(
        ctx,
        model,
        opt,
        _tones(gen),
        200,
        loss_fn=_ctc,
        alter=alter,
        forward=_parakeet_forward,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    finite = _finite(ctx.losses)
    ctx.check(
        f"loss fell before 150 ({_median(ctx.losses[:10]):.2f} -> "
        f"{_median(ctx.losses[140:150]):.2f})",
        _median(ctx.losses[140:150]) < 0.8 * _median(ctx.losses[:10]),
    )
    ctx.check("finite until 150, not after", all(finite[:150]) and not any(finite[150:]))
    ctx.check(
        f"loss scale collapsed ({ctx.scales[149]:.0f} -> {ctx.scales[-1]:.2g})",
        ctx.scales[-1] < ctx.scales[149] / 1000,
    )


# -- healthy controls ------------------------------------------------------------------------------


@scenario("h36 music-transformer relative attention", "nadam", "healthy", heldout=True)
def h36_music_rel_attention_healthy(ctx: Context) -> None:
    gen = seeded(3613)
    model = MusicDecoder(scaled=True)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _copy_batches(gen), 300, loss_fn=lm_loss, classifier=False)
    ctx.check(
        f"loss fell ({_median(ctx.losses[:10]):.2f} -> {_median(ctx.losses[-10:]):.2f})",
        _median(ctx.losses[-10:]) < 0.7 * _median(ctx.losses[:10]),
    )


@scenario("h36 SupCon learner", "sgd", "healthy", heldout=True)
def h36_supcon_healthy(ctx: Context) -> None:
    """SupCon on digits with a linear classifier on the encoder's features, trained jointly."""
    gen = seeded(3614)
    model = SupConNet(scale=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 128)
    for _ in range(300):
        x, y = next(batches)
        z, logits = model(_augment(x, gen))
        ctx.targets(y)
        loss = F.cross_entropy(logits, y)
        (loss + _supcon_loss(z, y)).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        f"loss fell ({_median(ctx.losses[:10]):.2f} -> {_median(ctx.losses[-10:]):.2f})",
        _median(ctx.losses[-10:]) < 0.3 * _median(ctx.losses[:10]),
    )


@scenario("h36 EDSR super-resolution", "adam", "healthy", heldout=True)
def h36_edsr_healthy(ctx: Context) -> None:
    gen = seeded(3615)
    model = EDSR()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, _sr_batches(gen), 300, loss_fn=F.l1_loss, classifier=False)
    ctx.check(
        f"loss fell ({_median(ctx.losses[:10]):.3f} -> {_median(ctx.losses[-10:]):.3f})",
        _median(ctx.losses[-10:]) < 0.6 * _median(ctx.losses[:10]),
    )


@scenario("h36 Lagrangian neural net", "adam", "healthy", heldout=True)
def h36_lnn_healthy(ctx: Context) -> None:
    gen = seeded(3616)
    model = LagrangianNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    for _ in range(400):
        state, acc = _pendulum(gen, 128)
        loss = F.mse_loss(model(state), acc)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        f"loss fell ({_median(ctx.losses[:10]):.2f} -> {_median(ctx.losses[-10:]):.2f})",
        _median(ctx.losses[-10:]) < 0.3 * _median(ctx.losses[:10]),
    )
