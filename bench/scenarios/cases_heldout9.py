"""Held-out scenarios, ninth set (``h9_``): new model families, realistic user faults.

Families: Hugging Face GPT-2 sequence classifier, ViT image classifier (on 8x8 digits),
Persimmon, Mixtral (tiny mixture of experts) and Llama with tied embeddings, all from configs;
written here: an EfficientNet-style CNN (squeeze-and-excitation, SiLU, BatchNorm), an LSTM with
attention pooling for text classification, a CRNN (1-D conv + GRU), a decoder with ALiBi biases
(attention by hand), a matrix-factorisation recommender on ``nn.Embedding``, a tiny denoising
diffusion model (MLP noise predictor with a timestep embedding) on 2-D points, a physics-informed
net (PINN) on a 1-D ODE and an RBF network. Optimizers: SGD, Nesterov momentum, Adam, AdamW,
Adagrad, RAdam, NAdam and steadygrad.optim's Lion.

Written without reading ``steadygrad/diagnose/detectors/``, ``steadygrad/diagnose/diagnosis.py``,
``steadygrad/monitor/`` or the other held-out sets; never run on steadygrad while written (tuned
only with a stand-in context that attaches nothing, until each scenario's own checks held).
"""

from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    bert_batches,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    lm_loss,
    seeded,
    text_batches,
)
from scenarios.common import scenario as _scenario


def scenario(*args, **kwargs):
    """Every scenario here is held out."""
    return _scenario(*args, heldout=True, **kwargs)


# -- shared pieces ------------------------------------------------------------------------------


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _full_batch(x: torch.Tensor, y: torch.Tensor):
    while True:
        yield x, y


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _spiked(losses: list[float], at: int, factor: float) -> bool:
    return losses[at] > factor * max(losses[at - 10 : at])


def hf_llama_tied(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def hf_persimmon(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import PersimmonConfig, PersimmonForCausalLM

    config = PersimmonConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=64,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return PersimmonForCausalLM(config)


def hf_mixtral(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import MixtralConfig, MixtralForCausalLM

    config = MixtralConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        num_local_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=64,
    )
    return MixtralForCausalLM(config)


def hf_vit_digits(dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * dim,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ViTForImageClassification(config)


def _vit_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(pixel_values=x.reshape(-1, 1, 8, 8)).logits


def hf_gpt2_classifier(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    config = GPT2Config(
        vocab_size=vocab,
        n_positions=32,
        n_embd=dim,
        n_layer=layers,
        n_head=heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        num_labels=2,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2ForSequenceClassification(config)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.silu(self.reduce(x.mean((2, 3), keepdim=True)))
        return x * torch.sigmoid(self.expand(s))


class MBConv(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> squeeze-and-excitation -> project (1x1), residual."""

    def __init__(self, channels: int, expand: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Conv2d(channels, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.se = SqueezeExcite(hidden, max(channels // 2, 4))
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.bn1(self.expand(x)))
        h = F.silu(self.bn2(self.depthwise(h)))
        return x + self.bn3(self.project(self.se(h)))


class EfficientNetSmall(nn.Module):
    def __init__(self, width: int = 12, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(MBConv(width), MBConv(width))
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.stem_bn(self.stem(x.reshape(-1, 1, 8, 8))))
        return self.head(self.blocks(h).mean((2, 3)))


class AttentionPool(nn.Module):
    """Attention pooling over time with padding masked out (scores -inf at padding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = self.score(h).squeeze(-1).masked_fill(~mask, float("-inf"))
        w = torch.softmax(s, dim=1)
        return (w.unsqueeze(-1) * h).sum(1)


class LSTMAttnClassifier(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 24, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True)
        self.pool = AttentionPool(hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(x))
        return self.head(self.pool(h, x != 0))


def review_batches(gen: torch.Generator, batch: int = 32, length: int = 20, vocab: int = 64):
    """Variable-length "reviews" padded with 0: positive when 'good' tokens (1..4) outnumber
    'bad' ones (5..8); other tokens are filler."""
    while True:
        x = torch.randint(9, vocab, (batch, length), generator=gen)
        marks = torch.randint(1, 9, (batch, length), generator=gen)
        use = torch.rand(batch, length, generator=gen) < 0.3
        x = torch.where(use, marks, x)
        lengths = torch.randint(6, length + 1, (batch,), generator=gen)
        x = x.masked_fill(torch.arange(length)[None] >= lengths[:, None], 0)
        good = ((x >= 1) & (x <= 4)).sum(1)
        bad = ((x >= 5) & (x <= 8)).sum(1)
        yield x, (good > bad).long()


class CRNN(nn.Module):
    """1-D conv front end, a GRU over the downsampled sequence, a linear head."""

    def __init__(self, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2, stride=2)
        self.gru = nn.GRU(16, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x.unsqueeze(1)))))
        out, _ = self.gru(h.transpose(1, 2))
        return self.head(out[:, -1])


def wave_batches(gen: torch.Generator, batch: int = 32, length: int = 64):
    """Noisy signals of one of four shapes (sine, square, saw, chirp) with random frequency and
    phase; the label is the shape."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        f = 2 + 4 * torch.rand(batch, 1, generator=gen)
        ph = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        arg = 2 * math.pi * f * t + ph
        shapes = torch.stack(
            [
                torch.sin(arg),
                torch.sign(torch.sin(arg)),
                2 * ((arg / (2 * math.pi)) % 1.0) - 1,
                torch.sin(2 * math.pi * f * t * t * 3 + ph),
            ],
            1,
        )
        x = shapes[torch.arange(batch), y] + 0.3 * torch.randn(batch, length, generator=gen)
        yield x, y


class ALiBiAttention(nn.Module):
    """Causal self-attention with ALiBi distance biases, computed by hand."""

    def __init__(self, dim: int, heads: int, score_scale: float | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        head_dim = dim // heads
        self.score_scale = head_dim**-0.5 if score_scale is None else score_scale
        slopes = torch.tensor([2.0 ** (-8 * (i + 1) / heads) for i in range(heads)])
        self.register_buffer("slopes", slopes, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        pos = torch.arange(t)
        dist = (pos[None, :] - pos[:, None]).clamp(max=0).float()  # -(i - j) for j <= i
        scores = (q @ k.transpose(-1, -2)) * self.score_scale + self.slopes[:, None, None] * dist
        scores = scores.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class ALiBiBlock(nn.Module):
    def __init__(self, dim: int, heads: int, score_scale: float | None) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = ALiBiAttention(dim, heads, score_scale)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ALiBiDecoder(nn.Module):
    """Token embeddings (no position embeddings: ALiBi carries position), pre-LN blocks."""

    def __init__(
        self, vocab: int = 128, dim: int = 32, heads: int = 2, layers: int = 2, score_scale=None
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(ALiBiBlock(dim, heads, score_scale) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


class MatrixFactorisation(nn.Module):
    def __init__(self, users: int, items: int, rank: int = 16) -> None:
        super().__init__()
        self.user = nn.Embedding(users, rank)
        self.item = nn.Embedding(items, rank)
        self.user_bias = nn.Embedding(users, 1)
        self.item_bias = nn.Embedding(items, 1)
        for e in (self.user, self.item):
            nn.init.normal_(e.weight, std=0.1)
        for e in (self.user_bias, self.item_bias):
            nn.init.zeros_(e.weight)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        u, i = pairs[:, 0], pairs[:, 1]
        dot = (self.user(u) * self.item(i)).sum(-1)
        return dot + self.user_bias(u).squeeze(-1) + self.item_bias(i).squeeze(-1)


def rating_batches(gen: torch.Generator, users: int = 300, items: int = 400, batch: int = 512):
    """Ratings from a rank-4 truth plus noise, centred (a user's rating minus the global mean)."""
    pu = torch.randn(users, 4, generator=gen)
    qi = torch.randn(items, 4, generator=gen)
    bu = 0.5 * torch.randn(users, generator=gen)
    while True:
        u = torch.randint(0, users, (batch,), generator=gen)
        i = torch.randint(0, items, (batch,), generator=gen)
        r = (pu[u] * qi[i]).sum(-1) / 2 + bu[u] + 0.3 * torch.randn(batch, generator=gen)
        yield torch.stack([u, i], 1), r


class NoisePredictor(nn.Module):
    """Predicts the noise added to a 2-D point at diffusion step t (sinusoidal t embedding)."""

    def __init__(self, hidden: int = 64, t_dim: int = 16) -> None:
        super().__init__()
        self.t_dim = t_dim
        self.net = nn.Sequential(
            nn.Linear(2 + t_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2),
        )

    def embed_t(self, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(self.t_dim // 2) / (self.t_dim // 2))
        a = t[:, None].float() * freqs[None]
        return torch.cat([a.sin(), a.cos()], 1)

    def forward(self, xt: torch.Tensor) -> torch.Tensor:
        # xt carries (x, y, t) so that fit's batches stay (input, target)
        return self.net(torch.cat([xt[:, :2], self.embed_t(xt[:, 2])], 1))


_DIFFUSION_STEPS = 100
_ALPHA_BAR = torch.cumprod(1 - torch.linspace(1e-4, 0.05, _DIFFUSION_STEPS), 0)


def two_moons(gen: torch.Generator, n: int) -> torch.Tensor:
    theta = math.pi * torch.rand(n, generator=gen)
    upper = torch.rand(n, generator=gen) < 0.5
    x = torch.where(upper, torch.cos(theta), 1 - torch.cos(theta))
    y = torch.where(upper, torch.sin(theta), 0.5 - torch.sin(theta))
    pts = torch.stack([x, y], 1) + 0.05 * torch.randn(n, 2, generator=gen)
    return (pts - torch.tensor([0.5, 0.25])) / 0.7


def diffusion_batches(gen: torch.Generator, batch: int = 128):
    """(noised point with its step t, the noise) pairs for the epsilon-prediction loss."""
    while True:
        x0 = two_moons(gen, batch)
        t = torch.randint(0, _DIFFUSION_STEPS, (batch,), generator=gen)
        eps = torch.randn(batch, 2, generator=gen)
        ab = _ALPHA_BAR[t][:, None]
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        yield torch.cat([xt, t[:, None].float()], 1), eps


class RBFNetwork(nn.Module):
    """Gaussian radial basis features around learnable centres, then a linear read-out."""

    def __init__(self, centres: torch.Tensor, width: float, classes: int = 10) -> None:
        super().__init__()
        self.centres = nn.Parameter(centres.clone())
        self.log_width = nn.Parameter(torch.full((len(centres),), math.log(width)))
        self.readout = nn.Linear(len(centres), classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d2 = torch.cdist(x, self.centres).pow(2)
        return self.readout(torch.exp(-d2 / (2 * self.log_width.exp().pow(2))))


class PINN(nn.Module):
    """u(x) for the ODE u'' + k^2 u = 0 on [0, 1] with u(0) = 0, u'(0) = k (so u = sin kx)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def pinn_loss(model: nn.Module, x: torch.Tensor, k: float) -> torch.Tensor:
    with torch.enable_grad():  # the residual needs input derivatives, even when evaluated alone
        return _pinn_loss(model, x, k)


def _pinn_loss(model: nn.Module, x: torch.Tensor, k: float) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    u = model(x)
    du = torch.autograd.grad(u.sum(), x, create_graph=True)[0]
    d2u = torch.autograd.grad(du.sum(), x, create_graph=True)[0]
    residual = (d2u + k * k * u).pow(2).mean() / k**4
    x0 = torch.zeros(1, 1, requires_grad=True)
    u0 = model(x0)
    du0 = torch.autograd.grad(u0.sum(), x0, create_graph=True)[0]
    return residual + u0.pow(2).mean() + (du0 / k - 1).pow(2).mean()


# -- attention-logit growth ---------------------------------------------------------------------


@scenario(
    "alibi_decoder",
    "adamw",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
)
def h9_attention_alibi_scale_inverted(ctx: Context) -> None:
    """The attention scores are multiplied by sqrt(head_dim) where the user meant to divide
    (the temperature applied the wrong way round, 16x too large with head_dim 16), with AdamW
    at a high learning rate and no weight decay: the q.k logits grow from ~1 to the hundreds
    and the attention rows go one-hot."""
    gen = seeded(901)
    model = ALiBiDecoder(dim=32, heads=2, layers=2, score_scale=16**0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    peaks: list[float] = []

    def record(step: int) -> None:
        if step % 20 == 0:
            x, _ = next(text_batches(torch.Generator().manual_seed(5)))
            attn = model.blocks[0].attn
            with torch.no_grad():
                h = model.blocks[0].ln1(model.tok(x))
                q, k, _ = attn.qkv(h).split(32, dim=-1)
                q, k = (z.reshape(*z.shape[:2], 2, -1).transpose(1, 2) for z in (q, k))
                peaks.append(float((q @ k.transpose(-1, -2)).abs().max() * attn.score_scale))

    fit(ctx, model, opt, text_batches(gen), 300, loss_fn=lm_loss, before=record)
    ctx.check("attention logits grew 10x", peaks[-1] > 10 * peaks[0])
    ctx.check("attention logits over 100", peaks[-1] > 100)


# -- output-logit divergence --------------------------------------------------------------------


@scenario(
    "hf_llama_tied",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=60,
)
def h9_output_label_smoothing_sign_llama(ctx: Context) -> None:
    """Hand-written label smoothing with its sign flipped, switched on after a 60-step warm-up:
    the loss adds eps * mean(log p) where it meant to subtract it, which rewards pushing every
    non-target log-probability to -inf. The tied output logits grow without bound, the model
    grows overconfident on ambiguous next bytes and the cross-entropy climbs."""
    gen = seeded(902)
    model = hf_llama_tied()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    eps = 0.3
    scales: list[float] = []

    state: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = _hf_logits(m, x)
        state["logits"] = logits
        return logits

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        logits = state["logits"]
        if step % 20 == 0:
            scales.append(float(logits.detach().std()))
        if step < 60:
            return loss
        logp = torch.log_softmax(logits.float(), -1)
        return (1 - eps) * loss + eps * logp.mean()  # meant: - eps * logp.mean()

    fit(ctx, model, opt, text_batches(gen), 320, loss_fn=lm_loss, forward=forward, extra_loss=extra)
    ctx.check("logit scale grew 5x after the bug", scales[-1] > 5 * scales[3])
    ctx.check("loss climbed", min(ctx.losses[-10:]) > 1.5 * min(ctx.losses[40:80]))


# -- softmax collapse ---------------------------------------------------------------------------


@scenario("hf_vit", "adam", "softmax_collapse", where="classifier", diverges=None)
def h9_softmax_collapse_vit_temperature(ctx: Context) -> None:
    """A ViT trained on a small fixed set of 128 digits with a calibration temperature of 100
    applied as logits * 100 (meant: logits / 100): once the training rows are fitted, the
    float32 softmax of a growing share of them rounds to exactly one-hot (their gradient is
    exactly zero) within ~400 steps."""
    seeded(903)
    x, y = digits()
    x, y = x[:128], y[:128]
    model = hf_vit_digits()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def forward(m: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        return _vit_forward(m, xb) * 100.0  # meant: / 100.0

    fit(ctx, model, opt, _full_batch(x, y), 500, forward=forward)
    with torch.no_grad():
        ctx.check("a tenth of the rows collapsed", collapsed_fraction(forward(model, x), y) > 0.1)


# -- a learning rate above the stability limit -------------------------------------------------


@scenario("rbf_network", "sgd", "sharpness_above_limit", diverges="auto", onset=150)
def h9_lr_resume_rbf_sgd(ctx: Context) -> None:
    """An RBF network on digits with plain SGD; a resume at step 150 on one worker applies the
    linear learning-rate scaling for the six workers of the original job (lr x6): training goes
    on for a while, the sharpness climbs to 2/lr and past it, and the run breaks ~200 steps
    later."""
    gen = seeded(904)
    x, _ = digits()
    centres = x[torch.randperm(len(x), generator=gen)[:64]]
    model = RBFNetwork(centres, width=1.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def resume(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 0.5 * 6  # meant: 0.5 * world_size with world_size 1

    fit(ctx, model, opt, digit_batches(gen), 420, before=resume)
    ctx.check("loss fell before the resume", ctx.losses[140] < 0.6 * ctx.losses[0])
    ctx.check("loss blew up after it", max(ctx.losses[250:]) > 3 * max(ctx.losses[140:150]))


# -- exploding gradients ------------------------------------------------------------------------


@scenario(
    "crnn",
    "sgd_nesterov",
    "exploding_gradients",
    where="gru",
    diverges="auto",
    onset=80,
)
def h9_exploding_crnn_regulariser_sign(ctx: Context) -> None:
    """From step 80 a hand-written penalty on the GRU's recurrent weights (meant to keep them
    small: + c * ||W_hh||^2) is subtracted instead: SGD with Nesterov momentum grows W_hh
    geometrically; its gradient grows with it, the recurrence saturates and, ~130 steps later,
    the loss climbs."""
    gen = seeded(905)
    model = CRNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 80:
            return loss
        return loss - 0.02 * model.gru.weight_hh_l0.pow(2).sum()  # meant: + 0.02 * ...

    fit(ctx, model, opt, wave_batches(gen), 450, extra_loss=extra)
    g = ctx.grad_norms
    ctx.check(
        "gradient grew 10x after the bug",
        statistics.median(g[-30:]) > 10 * statistics.median(g[50:80]),
    )
    ctx.check("loss rose 5x after the bug", max(ctx.losses[150:]) > 5 * min(ctx.losses[70:100]))


# -- dead units / loss of plasticity ------------------------------------------------------------


@scenario(
    "diffusion_mlp",
    "adam",
    "loss_of_plasticity",
    where=("net.2", "net.3"),
    diverges=None,
    onset=100,
)
def h9_dead_relu_sparsity_diffusion(ctx: Context) -> None:
    """A denoising-diffusion noise predictor on two moons; at step 100 an activation-sparsity
    penalty (L1 on the second hidden layer's activations) is switched on with 0.1 where 1e-5
    was meant: the pre-activations are driven below zero and the units die one after
    another (a dead ReLU gets no gradient from the loss to come back); the few survivors carry
    the easy 2-D task, so the loss barely moves."""
    gen = seeded(906)
    model = NoisePredictor()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    state: dict[str, torch.Tensor] = {}
    model.net[2].register_forward_hook(lambda m, i, o: state.__setitem__("pre", o))

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 100:
            return loss
        return loss + 0.1 * state["pre"].clamp(min=0).sum(1).mean()  # meant: 1e-5

    fit(
        ctx,
        model,
        opt,
        diffusion_batches(gen),
        400,
        loss_fn=F.mse_loss,
        classifier=False,
        extra_loss=extra,
    )
    xb, _ = next(diffusion_batches(gen, 512))
    with torch.no_grad():
        h = model.net[3](model.net[2](model.net[1](model.net[0](
            torch.cat([xb[:, :2], model.embed_t(xb[:, 2])], 1)))))  # fmt: skip
    ctx.check("most of layer net.2's units dead", dead_fraction(h) > 0.75)


# -- a frozen layer -----------------------------------------------------------------------------


@scenario(
    "hf_gpt2_classifier",
    "adamw",
    "update_ratio_out_of_range",
    where="transformer.h.1",
    diverges=None,
    onset=60,
)
def h9_frozen_gpt2_classifier_unfreeze_bug(ctx: Context) -> None:
    """Two-stage fine-tuning of a GPT-2 sequence classifier: the backbone is frozen for a
    60-step head warm-up, then unfrozen layer by layer in a loop whose range is off by one
    (``range(n_layer - 1)``): block 1 stays frozen for the rest of the run."""
    gen = seeded(907)
    model = hf_gpt2_classifier()
    model.transformer.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    frozen_before = [p.detach().clone() for p in model.transformer.h[1].parameters()]

    def unfreeze(step: int) -> None:
        if step == 60:
            model.transformer.wte.requires_grad_(True)
            model.transformer.wpe.requires_grad_(True)
            model.transformer.ln_f.requires_grad_(True)
            for i in range(model.config.n_layer - 1):  # meant: range(model.config.n_layer)
                model.transformer.h[i].requires_grad_(True)

    h0_before = model.transformer.h[0].attn.c_attn.weight.detach().clone()
    fit(ctx, model, opt, bert_batches(gen), 250, forward=_hf_logits, before=unfreeze)
    after = list(model.transformer.h[1].parameters())
    ctx.check(
        "block 1 unchanged",
        all(torch.equal(a, b) for a, b in zip(frozen_before, after, strict=True)),
    )
    ctx.check(
        "block 0 trained", not torch.equal(h0_before, model.transformer.h[0].attn.c_attn.weight)
    )
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.8 * sum(ctx.losses[:20]))


# -- a data outlier -----------------------------------------------------------------------------


@scenario("hf_mixtral", "adam", "data_outlier", diverges=150, onset=150)
def h9_outlier_mixtral_binary_batch(ctx: Context) -> None:
    """A tiny Mixtral (4 experts, top-2) on text; at step 150 one batch comes from a binary file
    read as text (uniformly random bytes): the loss jumps at that batch."""
    gen = seeded(908)
    model = hf_mixtral()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            g = torch.Generator().manual_seed(150)
            win = torch.randint(0, 128, (x.shape[0], x.shape[1] + 1), generator=g)
            return win[:, :-1], win[:, 1:]
        return x, y

    fit(ctx, model, opt, text_batches(gen), 220, loss_fn=lm_loss, forward=_hf_logits, alter=alter)
    ctx.check("loss jumped at 150", _spiked(ctx.losses, 150, 1.8))
    ctx.check("loss fell before", ctx.losses[149] < 0.7 * ctx.losses[0])


# -- a NaN from one module on one bad sample ---------------------------------------------------


@scenario("lstm_attention_pool", "adagrad", "nonfinite", where="pool", diverges=120, onset=120)
def h9_nan_empty_review_lstm_pool(ctx: Context) -> None:
    """An LSTM text classifier with masked attention pooling; at step 120 one review in the
    batch is empty (all padding): its pooling scores are all -inf, softmax gives NaN, and the
    NaN reaches the loss and, through the update, every weight."""
    gen = seeded(909)
    model = LSTMAttnClassifier()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 120:
            x = x.clone()
            x[7] = 0
        return x, y

    fit(ctx, model, opt, review_batches(gen), 150, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 120, not after", all(finite[:120]) and not finite[120])
    ctx.check("learned before", sum(ctx.losses[100:120]) < 0.8 * sum(ctx.losses[:20]))


# -- AMP overflow -------------------------------------------------------------------------------


@scenario("efficientnet_se", "sgd_nesterov", "amp_overflow", diverges=None)
def h9_amp_overflow_efficientnet(ctx: Context) -> None:
    """float16 autocast on CPU with a GradScaler started at 2**32 (copied from a config for a
    much smaller loss) that grows every 25 steps: it overflows, skips those steps and backs off
    a few times; training is fine."""
    gen = seeded(910)
    model = EfficientNetSmall()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**32, growth_interval=25)
    fit(ctx, model, opt, digit_batches(gen, 48), 160, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**32) >= 2)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.5 * sum(ctx.losses[:20]))


# -- Adam's second moment poisoned --------------------------------------------------------------


@scenario("matrix_factorisation", "adam", "adam_second_moment_poisoned", diverges=None, onset=40)
def h9_adam_poisoned_mf_sum_reduction(ctx: Context) -> None:
    """A matrix-factorisation recommender with Adam; the first step after a resume at 40
    computes the loss with ``reduction='sum'`` over its 512 ratings (the resumed loop used a
    different loss helper): one gradient 512x too large fills v, which forgets over ~1000
    steps, and the updates stay tens of times too small; learning stalls."""
    gen = seeded(911)
    model = MatrixFactorisation(64, 96)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, betas=(0.9, 0.999))
    moved = []

    def track(step: int) -> None:
        if step in (10, 35, 90, 115):
            moved.append(_params(model))

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 512 if step == 40 else loss  # meant: the batch mean

    fit(
        ctx,
        model,
        opt,
        rating_batches(gen, 64, 96),
        260,
        loss_fn=F.mse_loss,
        classifier=False,
        extra_loss=extra,
        before=track,
    )
    before, after = (moved[1] - moved[0]).norm(), (moved[3] - moved[2]).norm()
    ctx.check("updates shrank 5x after the bad step", after < before / 5)
    healthy_level = 0.2  # the same run without the bad step is below this from step ~80
    ctx.check("loss stalled above it", min(ctx.losses[-20:]) > healthy_level)


# -- a slow divergence with no mechanism --------------------------------------------------------


@scenario("hf_persimmon", "sg_lion", "loss_divergence", diverges="auto", onset=200)
def h9_divergence_persimmon_shard_drift(ctx: Context) -> None:
    """A Persimmon LM trained with Lion; from step 200 the data loader's shard index (resumed
    wrongly) draws a growing share of its windows from a corrupted shard of random bytes,
    reaching all of them by step 400: nothing in the model breaks, the loss just climbs."""
    gen = seeded(912)
    model = hf_persimmon()
    opt = sgo.Lion(model.parameters(), lr=2e-3, fused=False)
    noise = torch.Generator().manual_seed(912)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        share = min(max(step - 200, 0) / 200, 1.0)
        if share == 0:
            return x, y
        rows = torch.rand(x.shape[0], generator=noise) < share
        win = torch.randint(0, 128, (x.shape[0], x.shape[1] + 1), generator=noise)
        return torch.where(rows[:, None], win[:, :-1], x), torch.where(rows[:, None], win[:, 1:], y)

    fit(ctx, model, opt, text_batches(gen), 460, loss_fn=lm_loss, forward=_hf_logits, alter=alter)
    ctx.check("loss fell first", min(ctx.losses[180:200]) < 0.5 * ctx.losses[0])
    ctx.check("then climbed", min(ctx.losses[-10:]) > 1.8 * min(ctx.losses[180:200]))


# -- healthy controls ---------------------------------------------------------------------------


@scenario("hf_vit", "adamw", "healthy")
def h9_healthy_vit_digits_adamw(ctx: Context) -> None:
    gen = seeded(921)
    model = hf_vit_digits()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    fit(ctx, model, opt, digit_batches(gen, 64), 200, forward=_vit_forward)


@scenario("hf_mixtral", "adam", "healthy")
def h9_healthy_mixtral_lm(ctx: Context) -> None:
    gen = seeded(922)
    model = hf_mixtral()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, text_batches(gen), 200, loss_fn=lm_loss, forward=_hf_logits)


@scenario("crnn", "radam", "healthy")
def h9_healthy_crnn_radam(ctx: Context) -> None:
    gen = seeded(923)
    model = CRNN()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, wave_batches(gen), 250)


@scenario("pinn", "nadam", "healthy", note="regression on an ODE residual, not a classifier")
def h9_healthy_pinn_nadam(ctx: Context) -> None:
    gen = seeded(924)
    model = PINN()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    k = 4.0

    def cosine(step: int) -> None:
        opt.param_groups[0]["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / 300))

    def points():
        while True:
            x = torch.rand(64, 1, generator=gen)
            yield x, x

    fit(
        ctx,
        model,
        opt,
        points(),
        300,
        loss_fn=lambda _u, x: pinn_loss(model, x, k),
        forward=lambda m, x: x,
        classifier=False,
        before=cosine,
    )
