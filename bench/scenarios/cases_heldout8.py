"""An eighth held-out set (``h8_``): model families and setups the other sets do not have.

Hugging Face Starcoder2, XGLM, CodeGen, MPT, OLMo-2 and Mamba (its pure-PyTorch path) built
from configs; written here: a Swin-style vision transformer with (shifted) windowed attention
on digits, a WaveNet-style gated dilated causal conv net on generated audio-like series, a
two-tower retrieval model with an in-batch softmax, a U-shaped 1-D conv segmenter, a deep
equilibrium-style fixed-point layer unrolled k steps, a mixture density network (Gaussian
mixture NLL), a tabular ResNet with ``BatchNorm1d`` on scikit-learn's bundled breast-cancer
data, and a masked autoencoder (ViT encoder, random patch masking, MSE on the masked patches).
Optimizers: SGD with Nesterov momentum, SGD with momentum, Adam, AdamW, Adamax, Adagrad,
RMSprop, NAdam, RAdam, and steadygrad's Lion and AdaBelief.

Written without reading ``steadygrad/diagnose/`` (beyond the causes' docstrings),
``steadygrad/monitor/`` or the other held-out sets, and never run on steadygrad while it was
written: each scenario was adjusted with a stand-in context that attaches nothing, only until
its own checks held (the fault really happened) or, for a healthy control, until it trained
normally.
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

VOCAB = 128


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- Hugging Face decoders from configs ------------------------------------------------------------


def hf_starcoder2(dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    config = Starcoder2Config(
        vocab_size=VOCAB,
        hidden_size=dim,
        intermediate_size=4 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        residual_dropout=0.0,
        embedding_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    config._attn_implementation = "eager"  # so the check can read the attention weights
    return Starcoder2ForCausalLM(config)


def hf_xglm(dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import XGLMConfig, XGLMForCausalLM

    config = XGLMConfig(
        vocab_size=VOCAB,
        max_position_embeddings=64,
        d_model=dim,
        num_layers=layers,
        attention_heads=heads,
        ffn_dim=4 * dim,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
    )
    return XGLMForCausalLM(config)


def hf_codegen(dim: int = 32, layers: int = 2, heads: int = 4):
    from transformers import CodeGenConfig, CodeGenForCausalLM

    config = CodeGenConfig(
        vocab_size=VOCAB,
        n_positions=64,
        n_ctx=64,
        n_embd=dim,
        n_layer=layers,
        n_head=heads,
        rotary_dim=8,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return CodeGenForCausalLM(config)


def hf_mpt(dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import MptConfig, MptForCausalLM

    config = MptConfig(
        vocab_size=VOCAB, d_model=dim, n_heads=heads, n_layers=layers, max_seq_len=64
    )
    return MptForCausalLM(config)


def hf_olmo2(dim: int = 32, layers: int = 2, heads: int = 2):
    from transformers import Olmo2Config, Olmo2ForCausalLM

    config = Olmo2Config(
        vocab_size=VOCAB,
        hidden_size=dim,
        intermediate_size=4 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Olmo2ForCausalLM(config)


def hf_mamba(dim: int = 32, layers: int = 2):
    from transformers import MambaConfig, MambaForCausalLM

    config = MambaConfig(
        vocab_size=VOCAB,
        hidden_size=dim,
        state_size=8,
        num_hidden_layers=layers,
        expand=2,
        conv_kernel=4,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return MambaForCausalLM(config)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).logits


# -- written here: a Swin-style windowed-attention vision model ------------------------------------


class WindowAttention(nn.Module):
    """Self-attention inside non-overlapping windows of a token grid (optionally shifted)."""

    def __init__(self, dim: int, heads: int, grid: int, window: int, shift: int) -> None:
        super().__init__()
        self.heads, self.grid, self.window, self.shift = heads, grid, window, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        g, w = self.grid, self.window
        x = x.reshape(b, g, g, d)
        if self.shift:
            x = torch.roll(x, (-self.shift, -self.shift), (1, 2))
        # (b, g/w, w, g/w, w, d) -> windows of w*w tokens
        win = x.reshape(b, g // w, w, g // w, w, d).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, d)
        q, k, v = self.qkv(win).chunk(3, dim=-1)
        q, k, v = (t.reshape(t.shape[0], w * w, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, w * w, d)
        y = self.proj(y).reshape(b, g // w, g // w, w, w, d).permute(0, 1, 3, 2, 4, 5)
        y = y.reshape(b, g, g, d)
        if self.shift:
            y = torch.roll(y, (self.shift, self.shift), (1, 2))
        return y.reshape(b, n, d)


class SwinBlock(nn.Module):
    def __init__(self, dim: int, heads: int, grid: int, window: int, shift: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, grid, window, shift)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinySwin(nn.Module):
    """8x8 digits as a 4x4 grid of 2x2 patches; windows of 2x2 tokens, the second block shifted."""

    def __init__(self, dim: int = 32, heads: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(16, dim) * 0.02)
        self.blocks = nn.ModuleList(SwinBlock(dim, heads, 4, 2, s) for s in (0, 1))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _patches(x)
        h = self.patch(x) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h).mean(1))


def _patches(x: torch.Tensor) -> torch.Tensor:
    """(b, 64) digits -> (b, 16, 4): 2x2 patches in row-major order."""
    return x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)


# -- written here: a WaveNet-style gated dilated causal conv net -----------------------------------


class GatedLayer(nn.Module):
    def __init__(self, channels: int, dilation: int) -> None:
        super().__init__()
        self.dilation = dilation
        self.filter = nn.Conv1d(channels, channels, 2, dilation=dilation)
        self.gate = nn.Conv1d(channels, channels, 2, dilation=dilation)
        self.res = nn.Conv1d(channels, channels, 1)
        self.skip = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        padded = F.pad(x, (self.dilation, 0))  # causal: only the past
        z = torch.tanh(self.filter(padded)) * torch.sigmoid(self.gate(padded))
        return x + self.res(z), self.skip(z)


class WaveNet(nn.Module):
    """Predicts the next sample of a series from the past ones (MSE)."""

    def __init__(self, channels: int = 16, dilations: tuple[int, ...] = (1, 2, 4, 8, 16)) -> None:
        super().__init__()
        self.inp = nn.Conv1d(1, channels, 1)
        self.layers = nn.ModuleList(GatedLayer(channels, d) for d in dilations)
        self.post = nn.Conv1d(channels, channels, 1)
        self.out = nn.Conv1d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x[:, None, :])
        skips = 0
        for layer in self.layers:
            h, s = layer(h)
            skips = skips + s
        return self.out(F.relu(self.post(F.relu(skips))))[:, 0]


def audio_batches(gen: torch.Generator, batch: int = 16, length: int = 96):
    """Audio-like series: a few decaying partials plus noise; (past, next) pairs."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        f = 0.05 + 0.25 * torch.rand(batch, 3, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 3, 1, generator=gen)
        amp = torch.rand(batch, 3, 1, generator=gen)
        decay = torch.exp(-t / (60 + 60 * torch.rand(batch, 1, 1, generator=gen)))
        x = (amp * torch.sin(2 * math.pi * f * t + phase) * decay).sum(1)
        x = x + 0.05 * torch.randn(batch, length + 1, generator=gen)
        yield x[:, :-1], x[:, 1:]


# -- written here: a two-tower retrieval model -----------------------------------------------------


class TwoTower(nn.Module):
    def __init__(self, features: int = 24, dim: int = 32, temperature: float = 0.1) -> None:
        super().__init__()
        self.user = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, dim))
        self.item = nn.Sequential(nn.Linear(features, 64), nn.ReLU(), nn.Linear(64, dim))
        self.temperature = temperature

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        u = F.normalize(self.user(pair[:, 0]), dim=-1)
        v = F.normalize(self.item(pair[:, 1]), dim=-1)
        return u @ v.T / self.temperature  # in-batch softmax: row i's positive is item i


def retrieval_batches(gen: torch.Generator, batch: int = 64, features: int = 24):
    """Users and the items they clicked share a latent taste; features are noisy projections."""
    pu = torch.randn(8, features, generator=gen)
    pi = torch.randn(8, features, generator=gen)
    while True:
        taste = torch.randn(batch, 8, generator=gen)
        item = taste + 0.4 * torch.randn(batch, 8, generator=gen)
        xu = taste @ pu / 3 + 0.3 * torch.randn(batch, features, generator=gen)
        xi = item @ pi / 3 + 0.3 * torch.randn(batch, features, generator=gen)
        yield torch.stack([xu, xi], 1), torch.arange(batch)


# -- written here: a U-shaped 1-D conv segmenter ---------------------------------------------------


def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, 5, padding=2), nn.ReLU())


class USegmenter(nn.Module):
    """Per-position regime labels for a series: down, bottleneck, up with skip concatenations."""

    def __init__(self, width: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.down1 = _conv(1, width)
        self.down2 = _conv(width, 2 * width)
        self.mid = _conv(2 * width, 2 * width)
        self.up2 = _conv(4 * width, width)
        self.up1 = _conv(2 * width, width)
        self.head = nn.Conv1d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x[:, None, :])  # (b, w, 64)
        d2 = self.down2(F.max_pool1d(d1, 2))  # (b, 2w, 32)
        m = self.mid(F.max_pool1d(d2, 2))  # (b, 2w, 16)
        u2 = self.up2(torch.cat([F.interpolate(m, scale_factor=2), d2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, scale_factor=2), d1], 1))
        return self.head(u1)  # (b, classes, 64)


def regime_batches(gen: torch.Generator, batch: int = 32, length: int = 64):
    """Series made of segments: flat noise (0), a ramp (1), an oscillation (2)."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        cuts = torch.sort(torch.randint(8, length - 8, (batch, 2), generator=gen), 1).values
        seg = (t >= cuts[:, :1]).long() + (t >= cuts[:, 1:]).long()
        kinds = torch.stack([torch.randperm(3, generator=gen) for _ in range(batch)])
        y = kinds.gather(1, seg)
        x = 0.3 * torch.randn(batch, length, generator=gen)
        x = x + (y == 1) * (0.08 * (t % 16) - 0.6) + (y == 2) * torch.sin(1.3 * t)
        yield x, y


# -- written here: a deep-equilibrium-style fixed-point layer --------------------------------------


class FixedPoint(nn.Module):
    """z <- act(W z + U x + b), iterated ``k`` times from z = 0 (backprop through the unroll).

    ``linear=True`` iterates z <- W z + U x (a linear equilibrium layer, solved by the same
    unroll) and applies tanh once to the result."""

    def __init__(self, inp: int, dim: int, k: int, gain: float = 0.5, linear: bool = False):
        super().__init__()
        self.inject = nn.Linear(inp, dim)
        self.mix = nn.Linear(dim, dim, bias=False)
        nn.init.orthogonal_(self.mix.weight, gain=gain)
        self.k, self.linear = k, linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.inject(x)
        z = torch.zeros_like(u)
        for _ in range(self.k):
            z = self.mix(z) + u if self.linear else torch.tanh(self.mix(z) + u)
        return torch.tanh(z) if self.linear else z


class DEQClassifier(nn.Module):
    def __init__(self, dim: int = 48, k: int = 20, gain: float = 0.5, linear: bool = False):
        super().__init__()
        self.cell = FixedPoint(64, dim, k, gain, linear)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.cell(x))


# -- written here: a mixture density network -------------------------------------------------------


class LogDuration(nn.Module):
    """log of a strictly positive duration feature (a common input transform)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :1], torch.log(x[:, 1:])], 1)


class MDN(nn.Module):
    def __init__(self, components: int = 5, hidden: int = 48) -> None:
        super().__init__()
        self.features = LogDuration()
        self.body = nn.Sequential(
            nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.mixture = nn.Linear(hidden, 3 * components)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mixture(self.body(self.features(x)))


def mdn_nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logit_pi, mu, log_sigma = out.chunk(3, dim=-1)
    log_sigma = log_sigma.clamp(-7.0, 7.0)
    z = (y - mu) / log_sigma.exp()
    log_comp = -0.5 * z**2 - log_sigma - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(F.log_softmax(logit_pi, -1) + log_comp, -1).mean()


def inverse_sine_batches(gen: torch.Generator, batch: int = 64):
    """The inverse of y -> y + 0.3 sin(2 pi y): several y for one x (a multimodal target);
    the noise grows with a second, strictly positive feature (a duration)."""
    while True:
        y = torch.rand(batch, 1, generator=gen)
        dur = 0.2 + torch.rand(batch, 1, generator=gen)
        x = y + 0.3 * torch.sin(2 * math.pi * y) + 0.05 * dur * torch.randn(batch, 1, generator=gen)
        yield torch.cat([x, dur], 1), y


# -- written here: a tabular ResNet with BatchNorm1d -----------------------------------------------


class TabBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(dim, dim)
        self.bn = nn.BatchNorm1d(dim)
        self.lin2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lin2(F.relu(self.bn(self.lin1(x))))


class TabResNet(nn.Module):
    def __init__(self, features: int, classes: int, dim: int = 64, blocks: int = 3) -> None:
        super().__init__()
        self.stem = nn.Linear(features, dim)
        self.blocks = nn.ModuleList(TabBlock(dim) for _ in range(blocks))
        self.norm = nn.BatchNorm1d(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(F.relu(self.norm(h)))


def breast_cancer_batches(gen: torch.Generator, batch: int = 64):
    """scikit-learn's bundled breast-cancer set, standardised, endless shuffled batches."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(d.target)
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            yield x[order[i : i + batch]], y[order[i : i + batch]]


# -- written here: a masked autoencoder -------------------------------------------------------------


class MAE(nn.Module):
    """ViT encoder on the visible 2x2 patches of a digit, a light decoder fills in the rest."""

    def __init__(self, dim: int = 32, mask_ratio: float = 0.75) -> None:
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.pos = nn.Parameter(torch.randn(16, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.bridge = nn.Linear(dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        dlayer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
        self.decoder = nn.TransformerEncoder(dlayer, 1, enable_nested_tensor=False)
        self.pixels = nn.Linear(dim, 4)
        self.keep = int(16 * (1 - mask_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the MSE on the masked patches (the mask is drawn from torch's global RNG)."""
        p = _patches(x)
        b = p.shape[0]
        order = torch.rand(b, 16).argsort(1)
        keep, hide = order[:, : self.keep], order[:, self.keep :]
        tokens = self.embed(p) + self.pos
        visible = tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        enc = self.bridge(self.encoder(visible))
        full = self.mask_token.expand(b, 16, -1).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, enc.shape[-1]), enc) + self.pos
        rec = self.pixels(self.decoder(full))
        target = p.gather(1, hide[..., None].expand(-1, -1, 4))
        pred = rec.gather(1, hide[..., None].expand(-1, -1, 4))
        return F.mse_loss(pred, target)


# ==================================================================================================
# induced instabilities
# ==================================================================================================


@scenario(
    "hf_starcoder2",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="per-group LR multiplier for q/k multiplied by the width instead of divided",
)
def h8_attn_growth_starcoder2(ctx: Context) -> None:
    """A muP-style per-group learning rate meant as base/width for the query and key
    projections was written base*width (and those groups kept out of weight decay): the q/k
    weights grow step after step, the attention logits with them, and the attention collapses
    onto single tokens (the loss keeps falling slowly here: the run does not break)."""
    gen = seeded(801)
    model = hf_starcoder2()
    qk = [p for n, p in model.named_parameters() if ".q_proj." in n or ".k_proj." in n]
    rest = [p for n, p in model.named_parameters() if not (".q_proj." in n or ".k_proj." in n)]
    base, width = 1e-3, 32
    opt = torch.optim.AdamW(
        [
            {"params": qk, "lr": base * width, "weight_decay": 0.0},  # meant base / width
            {"params": rest, "lr": base, "weight_decay": 0.1},
        ]
    )
    probe, _ = next(text_batches(torch.Generator().manual_seed(0)))

    def entropy() -> float:
        with torch.no_grad():
            att = model(probe, output_attentions=True).attentions
        return float(sum(-(a * a.clamp_min(1e-12).log()).sum(-1).mean() for a in att) / len(att))

    h0 = entropy()
    fit(ctx, model, opt, text_batches(gen), 260, loss_fn=lm_loss, forward=_logits)
    ctx.check(
        f"attention entropy fell from {h0:.2f} to under a third",
        entropy() < h0 / 3,
    )


@scenario(
    "hf_xglm",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=80,
    note="z-loss added with the wrong sign from step 80",
)
def h8_output_logits_xglm(ctx: Context) -> None:
    """The z-loss (1e-2 * log Z^2, meant to keep the softmax normaliser near 0) is switched on
    at step 80 with the wrong sign: from then on every step pushes log Z up; the output logits
    drift to ever larger values, slowly at first, and after ~250 steps the cross-entropy
    follows them up."""
    gen = seeded(802)
    model = hf_xglm()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    log_z: list[float] = []
    last: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(x).logits
        last["z"] = torch.logsumexp(logits.float(), -1)
        return logits

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        log_z.append(float(last["z"].detach().mean()))
        if step >= 80:
            return loss - 1e-2 * (last["z"] ** 2).mean()  # meant: + 1e-2 * z^2
        return loss

    fit(ctx, model, opt, text_batches(gen), 400, loss_fn=lm_loss, forward=forward, extra_loss=extra)
    rise = log_z[300] - log_z[80]
    ctx.check(f"log Z rose {rise:.1f} nats from step 80 to 300 (> 10)", rise > 10)


@scenario(
    "u_segmenter_1d",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear warm-up to a peak LR with a misplaced decimal (2.0 for 0.2)",
)
def h8_warmup_overshoot_useg(ctx: Context) -> None:
    """A linear warm-up over 200 steps to a peak learning rate of 2.0 (the config meant 0.2):
    the run trains well while the rate is small, then the rate passes the stability limit on
    the way up and the loss blows up well before the warm-up ends."""
    gen = seeded(804)
    model = USegmenter()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 2.0 * min(1.0, (step + 1) / 200)

    fit(ctx, model, opt, regime_batches(gen), 220, before=warmup, classifier=False)
    ctx.check(
        "trained first (loss at 60 under 0.8x the start)", ctx.losses[60] < 0.8 * ctx.losses[0]
    )


@scenario(
    "deq_fixed_point",
    "rmsprop",
    "exploding_gradients",
    where=("cell.mix", "cell.inject", "cell"),
    diverges="auto",
    heldout=True,
    note="hand-written decay on the mixing matrix with its sign flipped: its gain creeps past 1",
)
def h8_exploding_deq(ctx: Context) -> None:
    """A linear fixed-point layer (z <- W z + U x, unrolled 20 steps) is contractive at the start
    (W orthogonal with gain 0.5). The mixing matrix gets hand-written decoupled weight decay
    with its sign flipped (``W *= 1 + lr * wd``, lr 1e-3, wd 4): its gain creeps towards 1, the
    gradient through the unroll (a sum of powers of W) grows step after step, and once the
    gain passes 1 the fixed point runs away and the loss breaks."""
    gen = seeded(805)
    model = DEQClassifier(k=20, linear=True)
    lr, wd = 1e-3, 4.0
    opt = torch.optim.RMSprop(model.parameters(), lr=lr)

    def decay(step: int) -> None:
        with torch.no_grad():
            model.cell.mix.weight.mul_(1 + lr * wd)  # meant: 1 - lr * wd

    fit(ctx, model, opt, digit_batches(gen), 260, before=decay)
    g = ctx.grad_norms
    early = sorted(g[10:40])[15]
    ctx.check(
        f"gradient norm grew 10x from {early:.2g} before the break", max(g[40:170]) > 10 * early
    )
    ctx.check(
        "it was learning (loss at 80 under a third of the start)",
        ctx.losses[80] < ctx.losses[0] / 3,
    )


@scenario(
    "tabular_resnet",
    "sgd_mom",
    "loss_of_plasticity",
    where=("blocks.1.bn", "blocks.1.lin1", "blocks.1"),
    diverges=None,
    heldout=True,
    onset=60,
    note="an L1 shrink of BN shifts written without sign(): it only ever subtracts",
)
def h8_dead_units_tabresnet(ctx: Context) -> None:
    """A channel-pruning experiment on block 1 shrinks its BatchNorm shifts towards zero by
    hand from step 60, written ``beta -= lam`` instead of ``beta -= lam * sign(beta)``: every
    shift drifts down, and one by one the channels of the ReLU after it stop firing for good
    (a dead unit gets no gradient back). The residual path carries the task, so the loss
    hardly moves while the block dies."""
    gen = seeded(806)
    model = TabResNet(30, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def shrink(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                model.blocks[1].bn.bias.sub_(0.03)  # meant: 0.03 * sign(bias)

    fit(ctx, model, opt, breast_cancer_batches(gen), 300, before=shrink)
    x, _ = next(breast_cancer_batches(gen, 256))
    model.eval()
    with torch.no_grad():
        h = model.blocks[0](model.stem(x))
        pre = F.relu(model.blocks[1].bn(model.blocks[1].lin1(h)))
    frac = dead_fraction(pre)
    ctx.check(f"{frac:.2f} of block 1's units dead (>= 0.5)", frac >= 0.5)


@scenario(
    "tabular_resnet",
    "adamw",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="a calibration temperature (0.05) applied during training instead of after it",
)
def h8_softmax_collapse_tabresnet(ctx: Context) -> None:
    """Full-batch training on 256 breast-cancer rows (nearly separable) with the logits divided
    by a calibration temperature of 0.05 that was meant to be fitted on held-out data after
    training, and weight decay off: within ~50 steps most rows' float32 softmax rounds to an
    exact one-hot and their gradient to exactly zero."""
    seeded(814)
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = ((x - x.mean(0)) / x.std(0))[:256]
    y = torch.tensor(data.target)[:256]
    model = TabResNet(30, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)

    def batches():
        while True:
            yield x, y

    fit(ctx, model, opt, batches(), 250, forward=lambda m, b: m(b) / 0.05)
    model.eval()
    with torch.no_grad():
        frac = collapsed_fraction(model(x) / 0.05, y)
    ctx.check(f"{frac:.2f} of the rows collapsed (> 0.5)", frac > 0.5)


@scenario(
    "mae",
    "adamw",
    "update_ratio_out_of_range",
    where="encoder.layers.1",
    diverges=None,
    heldout=True,
    note="an unfreeze loop after linear probing skipped the last encoder layer",
)
def h8_frozen_mae(ctx: Context) -> None:
    """After a linear-probing phase the encoder is unfrozen with ``for layer in
    encoder.layers[:-1]`` (an off-by-one): the last encoder layer keeps requires_grad=False,
    stays in the optimizer, and never changes while the rest trains."""
    gen = seeded(807)
    model = MAE()
    for p in model.encoder.parameters():
        p.requires_grad_(False)
    for layer in model.encoder.layers[:-1]:  # meant: all of them
        for p in layer.parameters():
            p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    before = model.encoder.layers[1].linear1.weight.detach().clone()
    fit(
        ctx,
        model,
        opt,
        digit_batches(gen),
        200,
        forward=lambda m, x: m(x),
        loss_fn=lambda out, y: out,
        classifier=False,
    )
    ctx.check(
        "encoder layer 1 unchanged", torch.equal(before, model.encoder.layers[1].linear1.weight)
    )
    ctx.check(
        "the rest trained (loss fell by a third)",
        sum(ctx.losses[-20:]) < 2 / 3 * sum(ctx.losses[:20]),
    )


@scenario(
    "two_tower",
    "adagrad",
    "data_outlier",
    diverges=150,
    heldout=True,
    onset=150,
    note="one batch's item features arrive unnormalised (raw counts)",
)
def h8_outlier_two_tower(ctx: Context) -> None:
    """At step 150 a feature-pipeline fault delivers one batch whose item features were never
    standardised (raw counts in the hundreds) for a third of the rows: the loss spikes on that
    batch; the next batches are clean again."""
    gen = seeded(808)
    model = TwoTower()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            raw = torch.Generator().manual_seed(150)
            x[:20, 1] = 300 * torch.rand(x[:20, 1].shape, generator=raw)
        return x, y

    fit(ctx, model, opt, retrieval_batches(gen), 240, alter=alter)
    ctx.check("loss spiked at 150", ctx.losses[150] > 3 * max(ctx.losses[140:150]))
    ctx.check("and came back", sum(ctx.losses[-10:]) / 10 < 1.5 * max(ctx.losses[140:150]))


@scenario(
    "mdn",
    "adam",
    "nonfinite",
    where="features",
    diverges=170,
    heldout=True,
    onset=170,
    note="one sample's duration is exactly 0: log gives -inf",
)
def h8_nan_mdn(ctx: Context) -> None:
    """The MDN's input transform takes the log of a duration that is always positive, until one
    sample at step 170 logs a duration of exactly 0 (a timer that never started): -inf out of
    the transform, NaN after the first ReLU layer, and the loss is NaN."""
    gen = seeded(809)
    model = MDN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:
            x = x.clone()
            x[11, 1] = 0.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        inverse_sine_batches(gen),
        200,
        loss_fn=mdn_nll,
        alter=alter,
        classifier=False,
    )
    finite = _finite(ctx.losses)
    ctx.check("finite until 170, not after", all(finite[:170]) and not finite[170])
    ctx.check("it was learning (NLL fell)", ctx.losses[160] < ctx.losses[0] - 0.3)


@scenario(
    "hf_mpt",
    "sg_adabelief",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="float16 autocast, GradScaler started at 2**30 and grown every 20 steps",
)
def h8_amp_overflow_mpt(ctx: Context) -> None:
    """Mixed precision (float16 autocast on CPU) with a GradScaler whose initial scale was set to
    2**30 and growth interval to 20: the first steps overflow and are skipped while the scale
    comes down, and later growths overflow again now and then; training is fine."""
    gen = seeded(810)
    model = hf_mpt()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=20)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=_logits,
        scaler=scaler,
        amp=True,
        classifier=False,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))


@scenario(
    "hf_codegen",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=90,
    note="one step's loss summed over tokens instead of averaged (x512)",
)
def h8_adam_poisoned_codegen(ctx: Context) -> None:
    """At step 90 (the last, short batch of an epoch) a separate code path sums the token
    losses instead of averaging them: one gradient 512x too large. Adam's second moment keeps
    its square for ~1000 steps, and the updates stay far smaller long after."""
    gen = seeded(811)
    model = hf_codegen()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 8 * 16 * 32 if step == 90 else loss

    snaps: dict[int, torch.Tensor] = {}

    def track(step: int) -> None:
        if step in (40, 80, 130, 170):
            snaps[step] = _flat(model)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=_logits,
        extra_loss=bug,
        before=track,
    )
    before = (snaps[80] - snaps[40]).norm()
    after = (snaps[170] - snaps[130]).norm()
    ctx.check(
        f"updates shrank 3x after the spike ({float(before / after):.1f}x)", after < before / 3
    )


@scenario(
    "wavenet",
    "nadam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="hand-written decoupled weight decay with its sign flipped",
)
def h8_slow_divergence_wavenet(ctx: Context) -> None:
    """Decoupled weight decay written by hand before each step as ``p *= 1 + lr * wd`` (meant
    ``1 - lr * wd``; lr 2e-3, wd 5): every weight grows by 1% a step. The forecaster learns
    first, then the growth outpaces the optimizer, the predictions get louder and the MSE
    creeps up and away over ~100 steps (a regression head: no softmax, the climb is all)."""
    gen = seeded(812)
    model = WaveNet()
    lr, wd = 2e-3, 5.0
    opt = torch.optim.NAdam(model.parameters(), lr=lr)

    def decay(step: int) -> None:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # meant: 1 - lr * wd

    fit(
        ctx, model, opt, audio_batches(gen), 240, loss_fn=F.mse_loss, before=decay, classifier=False
    )
    ctx.check(
        "learned first (loss at 40 under half the start)", ctx.losses[40] < 0.5 * ctx.losses[0]
    )


# ==================================================================================================
# healthy controls
# ==================================================================================================


@scenario("swin", "adamax", "healthy", heldout=True, note="windowed attention, shifted windows")
def h8_healthy_swin_adamax(ctx: Context) -> None:
    gen = seeded(803)
    model = TinySwin()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    fit(ctx, model, opt, digit_batches(gen), 200)


@scenario("hf_olmo2", "sg_lion", "healthy", heldout=True, note="QK-norm; Lion with a warm-up")
def h8_healthy_olmo2_lion(ctx: Context) -> None:
    gen = seeded(821)
    model = hf_olmo2()
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.1, fused=False)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 3e-4 * min(1.0, (step + 1) / 30)

    fit(ctx, model, opt, text_batches(gen), 220, loss_fn=lm_loss, forward=_logits, before=warmup)


@scenario("hf_mamba", "radam", "healthy", heldout=True, note="pure-PyTorch selective scan")
def h8_healthy_mamba_radam(ctx: Context) -> None:
    gen = seeded(822)
    model = hf_mamba()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, text_batches(gen), 160, loss_fn=lm_loss, forward=_logits)


@scenario("deq_fixed_point", "sgd_mom", "healthy", heldout=True, note="contractive at init")
def h8_healthy_deq_momentum(ctx: Context) -> None:
    gen = seeded(823)
    model = DEQClassifier(k=15, gain=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(ctx, model, opt, digit_batches(gen), 200)


@scenario("wavenet", "adam", "healthy", heldout=True, note="next-sample forecasting (MSE)")
def h8_healthy_wavenet_adam(ctx: Context) -> None:
    gen = seeded(824)
    model = WaveNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, audio_batches(gen), 250, loss_fn=F.mse_loss, classifier=False)
