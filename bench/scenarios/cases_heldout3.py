"""A third held-out set: model families and fault mechanisms the other case files do not have.

Hugging Face GPT-NeoX and Qwen2 causal LMs built from configs, an encoder written here on
``nn.MultiheadAttention`` (called the default way, attention weights returned), a deep narrow
tanh MLP, wide-and-shallow MLPs (a regressor on scikit-learn's bundled diabetes data and a digit
classifier), a small U-Net-style denoiser, a mixture-of-experts MLP, a graph network (GCN-style
message passing in plain torch on generated graphs), a bidirectional GRU with a cosine-softmax
head and an LSTM encoder-decoder; optimizers SGD, Nesterov, Adam, AdamW, RMSprop, Adagrad,
Adamax, NAdam, RAdam and steadygrad's Grams and DiffGrad.

Every scenario here is ``heldout=True`` and was written without reading steadygrad's
detectors, rules or monitor internals, and without ever running steadygrad on it: each was
adjusted only until its own check held (the fault really happened) or, for a healthy control,
until it trained normally, with a stand-in context that attaches nothing.
"""

from __future__ import annotations

import math
from functools import lru_cache

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
    ramp,
    scenario,
    seeded,
    text_batches,
)

# -- data -----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def diabetes() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled diabetes regression set, features and target standardised."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()


def diabetes_batches(gen: torch.Generator, batch: int = 32):
    x, y = diabetes()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx, None]


@lru_cache(maxsize=1)
def breast_cancer() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled breast-cancer set: raw features, labels, and the column means and
    standard deviations a StandardScaler would use."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    return x, torch.tensor(d.target), x.mean(0), x.std(0)


def breast_cancer_batches(gen: torch.Generator, batch: int = 32):
    """Standardised batches (the raw rows are kept for the scenario that skips the scaler)."""
    x, y, mean, std = breast_cancer()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield (x[idx] - mean) / std, y[idx]


def pointer_batches(gen: torch.Generator, batch: int = 32, length: int = 12, vocab: int = 32):
    """A lookup task only attention solves: token 0 names a position p in 1..length-1 (tokens
    0..length-2 stand for positions 1..length-1), the label is the token at p, folded into 8
    classes; the other tokens are drawn from ``length .. vocab-1``."""
    while True:
        x = torch.randint(length, vocab, (batch, length), generator=gen)
        p = torch.randint(1, length, (batch,), generator=gen)
        x[:, 0] = p - 1
        y = x[torch.arange(batch), p] % 8
        yield x, y


def marker_batches(gen: torch.Generator, batch: int = 32, length: int = 12, vocab: int = 64):
    """An easy 3-class sequence task: the class c is marked by three copies of token c + 1 at
    random positions among random tokens 4..vocab-1."""
    while True:
        x = torch.randint(4, vocab, (batch, length), generator=gen)
        y = torch.randint(0, 3, (batch,), generator=gen)
        pos = torch.rand(batch, length, generator=gen).argsort(1)[:, :3]
        x.scatter_(1, pos, (1 + y)[:, None].expand(-1, 3))
        yield x, y


def reverse_batches(gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 16):
    """Sequence reversal for an encoder-decoder: (source, decoder input), target. Token 0 is
    the start symbol; source tokens are 1..vocab-1."""
    while True:
        src = torch.randint(1, vocab, (batch, length), generator=gen)
        tgt = src.flip(1)
        dec_in = torch.cat([torch.zeros(batch, 1, dtype=torch.long), tgt[:, :-1]], 1)
        yield (src, dec_in), tgt


def graph_batches(gen: torch.Generator, batch: int = 16, nodes: int = 12, features: int = 8):
    """Random graphs with a ring backbone (every node has degree >= 2) plus random chords;
    node features are Gaussian, and a node's class (of 3) is the argmax of the sum of its
    neighbours' first three features. Yields ((features, adjacency), labels), labels flat."""
    ring = torch.zeros(nodes, nodes)
    idx = torch.arange(nodes)
    ring[idx, (idx + 1) % nodes] = 1
    ring = ring + ring.T
    while True:
        chords = (torch.rand(batch, nodes, nodes, generator=gen) < 0.15).float().triu(2)
        adj = ((ring + chords + chords.transpose(1, 2)) > 0).float()
        x = torch.randn(batch, nodes, features, generator=gen)
        y = (adj @ x[..., :3]).argmax(-1)
        yield (x, adj), y.reshape(-1)


def noisy_digit_batches(gen: torch.Generator, batch: int = 64, noise: float = 0.3):
    """Denoising pairs: (digit + Gaussian noise, clean digit), both as (batch, 1, 8, 8)."""
    for x, _ in digit_batches(gen, batch):
        clean = x.reshape(-1, 1, 8, 8)
        yield clean + noise * torch.randn(clean.shape, generator=gen), clean


# -- model families -------------------------------------------------------------------------------


def hf_gpt_neox(
    vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2, context: int = 64
):
    """A Hugging Face GPT-NeoX causal LM built from a config (no download); head ``lm_head``."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=vocab,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * dim,
        max_position_embeddings=context,
        rotary_pct=0.5,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPTNeoXForCausalLM(config)


def hf_qwen2(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2, context: int = 64):
    """A Hugging Face Qwen2 causal LM (grouped-query attention, one KV head) from a config."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=1,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return Qwen2ForCausalLM(config)


def hf_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


class MHABlock(nn.Module):
    """Pre-LN encoder block around ``nn.MultiheadAttention`` called the default way
    (``need_weights=True``: the attention weights are materialised, no fused kernel)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.attn(h, h, h)[0]
        return x + self.ff2(F.gelu(self.ff1(self.ln2(x))))


class MHAEncoder(nn.Module):
    """Token + position embeddings, ``MHABlock`` s, a final LayerNorm, a head on token 0."""

    def __init__(
        self, vocab: int = 32, dim: int = 32, heads: int = 2, layers: int = 2, classes: int = 8
    ) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(16, dim)
        self.blocks = nn.ModuleList(MHABlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)[:, 0])


def mha_logit_max(model: MHAEncoder, idx: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(head_dim) over the encoder's blocks and heads, recomputed from each
    ``nn.MultiheadAttention``'s input and its ``in_proj_weight`` / ``in_proj_bias``."""
    seen: dict[int, torch.Tensor] = {}
    hooks = [
        block.attn.register_forward_pre_hook(
            lambda m, args, i=i: seen.__setitem__(i, args[0].detach())
        )
        for i, block in enumerate(model.blocks)
    ]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    top = 0.0
    for i, block in enumerate(model.blocks):
        attn = block.attn
        d = attn.embed_dim
        w, b = attn.in_proj_weight.detach(), attn.in_proj_bias.detach()
        q = seen[i] @ w[:d].T + b[:d]
        k = seen[i] @ w[d : 2 * d].T + b[d : 2 * d]
        n, t, _ = q.shape
        q, k = (z.reshape(n, t, attn.num_heads, -1).transpose(1, 2) for z in (q, k))
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        top = max(top, float(s.abs().amax()))
    return top


class DeepTanhMLP(nn.Module):
    """A deep narrow tanh MLP: ``layers.0 .. layers.{depth-1}`` then ``head``."""

    def __init__(self, inputs: int = 64, width: int = 16, depth: int = 20, classes: int = 10):
        super().__init__()
        sizes = [inputs] + [width] * depth
        pairs = zip(sizes[:-1], sizes[1:], strict=True)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairs)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)


class WideMLP(nn.Sequential):
    """One wide hidden ReLU layer: ``0`` (Linear), ``1`` (ReLU), ``2`` (Linear)."""

    def __init__(self, inputs: int, hidden: int, outputs: int) -> None:
        super().__init__(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class TinyUNet(nn.Module):
    """A two-level U-Net-style denoiser for 8x8 images: an encoder conv, a strided down conv,
    a transposed up conv, a skip connection (concatenation) and an output conv."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, width, 3, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.out = nn.Conv2d(2 * width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = F.relu(self.enc(x))
        m = F.relu(self.mid(F.relu(self.down(e))))
        u = F.relu(self.up(m))
        return self.out(torch.cat([u, e], 1))


class MoE(nn.Module):
    """A soft mixture of ReLU-MLP experts: ``router`` (softmax gate over the experts),
    ``experts.i`` (Linear-ReLU-Linear), combined by the gate weights."""

    def __init__(self, inputs: int, hidden: int, outputs: int, experts: int = 4) -> None:
        super().__init__()
        self.router = nn.Linear(inputs, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))
            for _ in range(experts)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.softmax(self.router(x), -1)
        out = torch.stack([e(x) for e in self.experts], -1)
        return (out * gate[:, None, :]).sum(-1)


class AdjNorm(nn.Module):
    """Symmetric normalisation D^-1/2 A D^-1/2 of a batch of adjacency matrices, written
    without self-loops (the bug: an isolated node has degree 0, so 0 * inf)."""

    def forward(self, adj: torch.Tensor) -> torch.Tensor:
        d = adj.sum(-1).pow(-0.5)
        return d[..., :, None] * adj * d[..., None, :]


class GCN(nn.Module):
    """GCN-style message passing in plain torch: ``adj_norm``, ``conv1``/``conv2`` (node-wise
    Linear after propagation), ``head`` per node; returns (batch * nodes, classes) logits."""

    def __init__(self, features: int = 8, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.adj_norm = AdjNorm()
        self.conv1 = nn.Linear(features, hidden)
        self.conv2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        a = self.adj_norm(adj)
        h = F.relu(self.conv1(a @ x))
        h = F.relu(self.conv2(a @ h)) + h
        return self.head(h).reshape(-1, self.head.out_features)


def graph_forward(model: nn.Module, batch) -> torch.Tensor:
    return model(*batch)


class CosineHead(nn.Module):
    """Cosine-softmax classifier (NormFace / ArcFace style): ``scale * cos(feature, weight)``."""

    def __init__(self, dim: int, classes: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) / math.sqrt(dim))
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class BiGRUClassifier(nn.Module):
    """Tokens -> ``embed`` -> bidirectional ``gru`` -> mean over time -> ``head``."""

    def __init__(
        self, vocab: int = 64, dim: int = 32, hidden: int = 32, classes: int = 10, scale=64.0
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, hidden, batch_first=True, bidirectional=True)
        self.head = CosineHead(2 * hidden, classes, scale)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.embed(idx))[0].mean(1))


class Seq2Seq(nn.Module):
    """LSTM encoder-decoder with teacher forcing: ``embed``, ``encoder``, ``decoder``, ``head``.
    ``detach_state`` carries the encoder's final state into the decoder through ``.detach()``
    (the line copied from a truncated-BPTT language-model loop)."""

    def __init__(self, vocab: int = 16, dim: int = 32, hidden: int = 64, detach_state=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.encoder = nn.LSTM(dim, hidden, batch_first=True)
        self.decoder = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)
        self.detach_state = detach_state

    def forward(self, batch) -> torch.Tensor:
        src, dec_in = batch
        _, (h, c) = self.encoder(self.embed(src))
        if self.detach_state:
            h, c = h.detach(), c.detach()
        out, _ = self.decoder(self.embed(dec_in), (h, c))
        return self.head(out)


def _snapshot(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def mean_log_partition(logits: torch.Tensor) -> float:
    return float(torch.logsumexp(logits.float(), dim=-1).mean())


# -- attention-logit growth -----------------------------------------------------------------------


@scenario(
    "mha_encoder",
    "adamw",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="in_proj of every nn.MultiheadAttention at 50x the base LR, excluded from weight decay",
)
def h3_attn_growth_mha_in_proj_adamw(ctx: Context) -> None:
    """A per-module learning-rate table meant to *slow* attention (1/50) was written as 50x:
    the in_proj weights of every ``nn.MultiheadAttention`` train at 5e-2 with no weight decay
    and no QK-norm, so the query-key logits grow by two orders of magnitude, the attention
    saturates, and the lookup task (which a healthy run learns) stays at chance."""
    gen = seeded(301)
    model = MHAEncoder()
    fast = [m.attn.in_proj_weight for m in model.blocks]
    ids = {id(p) for p in fast}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 1e-3, "weight_decay": 0.05},
            {"params": fast, "lr": 5e-2, "weight_decay": 0.0},
        ]
    )
    probe, _ = next(pointer_batches(seeded(1), 64))
    start = mha_logit_max(model, probe)
    fit(ctx, model, opt, pointer_batches(gen), 200)
    ctx.check("q.k logits grew 30x", mha_logit_max(model, probe) > 30 * start)
    ctx.check("the lookup is never learnt (loss near ln 8)", _mean(ctx.losses[-20:]) > 1.5)


# -- output-logit divergence ----------------------------------------------------------------------


@scenario(
    "gpt_neox",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="z-loss with its sign flipped and summed over the 512 tokens instead of averaged",
)
def h3_zloss_sign_gpt_neox_adam(ctx: Context) -> None:
    """A PaLM-style z-loss (1e-4 * log^2 Z) added with the wrong sign, and summed over the
    batch's tokens rather than averaged: it rewards a growing log-partition, which the
    cross-entropy does not see (a shift of all logits), so log Z climbs at an accelerating
    pace until the logits' size wrecks the cross-entropy too."""
    gen = seeded(302)
    model = hf_gpt_neox()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    seen: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen["logits"] = hf_forward(m, x)
        return seen["logits"]

    def zloss_bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        log_z = torch.logsumexp(seen["logits"].float(), dim=-1)
        return loss - 1e-4 * (log_z**2).sum()

    probe, _ = next(text_batches(seeded(1)))
    with torch.no_grad():
        start = mean_log_partition(hf_forward(model, probe))
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=zloss_bug,
    )
    with torch.no_grad():
        end = mean_log_partition(hf_forward(model, probe))
    ctx.check("log Z grew by 30", end - start > 30)


# -- learning rate above the stability limit ------------------------------------------------------


@scenario(
    "wide_mlp",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="LR 0.2 tuned on a 64-wide regressor, reused after widening it to 512",
)
def h3_lr_fast_widened_regressor_sgd(ctx: Context) -> None:
    """A one-hidden-layer MSE regressor on the diabetes data trains well at width 64 with
    SGD at 0.2; widened to 512 (PyTorch's default init, no learning-rate rescaling) its
    curvature is several times larger, and the same learning rate overflows within 5 steps."""
    gen = seeded(303)
    model = WideMLP(10, 512, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    fit(ctx, model, opt, diabetes_batches(gen), 60, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss 100x its start by step 3", ctx.losses[3] > 100 * ctx.losses[0])
    narrow = WideMLP(10, 64, 1)  # the width the learning rate was tuned on
    narrow_opt = torch.optim.SGD(narrow.parameters(), lr=0.2)
    batches = diabetes_batches(seeded(303))
    for _ in range(60):
        x, y = next(batches)
        narrow_loss = F.mse_loss(narrow(x), y)
        narrow_opt.zero_grad()
        narrow_loss.backward()
        narrow_opt.step()
    ctx.check("the 64-wide net trains at the same LR", float(narrow_loss.detach()) < 1.0)
    ctx.check("non-finite within 10 steps", not all(math.isfinite(v) for v in ctx.losses[:10]))


@scenario(
    "unet",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="LR range test (exponential ramp 1e-4 -> 10) left running with its stop check removed",
)
def h3_lr_range_test_unet_nesterov(ctx: Context) -> None:
    """An LR finder ramps the learning rate geometrically from 1e-4 to 10 over 200 steps;
    its "stop when the loss exceeds 4x the best" check was commented out, so the denoiser
    trains through the stability limit and on."""
    gen = seeded(304)
    model = TinyUNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = ramp(step, 1e-4, 10.0, 200)

    fit(
        ctx,
        model,
        opt,
        noisy_digit_batches(gen),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
        before=schedule,
    )
    best = min(ctx.losses[:100])
    ctx.check("the loss fell first", best < 0.5 * ctx.losses[0])
    late = [v for v in ctx.losses[150:] if math.isfinite(v)]
    ctx.check("then blew up", len(late) < 50 or max(late) > 10 * best)


# -- a data outlier -------------------------------------------------------------------------------


@scenario(
    "moe",
    "adagrad",
    "data_outlier",
    diverges=100,
    heldout=True,
    onset=100,
    note="one batch skipped the StandardScaler: raw features up to ~4000",
)
def h3_outlier_unscaled_moe_adagrad(ctx: Context) -> None:
    """A mixture-of-experts classifier on standardised breast-cancer features; one shard was
    exported before the scaler was fitted, so batch 100 arrives raw (areas in the thousands)."""
    gen = seeded(305)
    x_raw, y_all, mean, std = breast_cancer()
    model = MoE(30, 16, 2)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    raw_rows = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(305))[:32]

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 100:
            return x_raw[raw_rows], y_all[raw_rows]
        return x, y

    fit(ctx, model, opt, breast_cancer_batches(gen), 180, alter=alter)
    ctx.check("loss spiked at 100", ctx.losses[100] > 20 * max(ctx.losses[90:100]))


# -- a NaN produced by one module on one bad sample -----------------------------------------------


@scenario(
    "gnn",
    "radam",
    "nonfinite",
    where="adj_norm",
    diverges=90,
    heldout=True,
    onset=90,
    note="one molecule-like graph with a disconnected atom (a counter-ion): degree 0, 0 * inf",
)
def h3_nan_isolated_node_gnn_radam(ctx: Context) -> None:
    """GCN normalisation written without self-loops; every generated graph has a ring, until
    batch 90 brings one graph whose node 5 has no edges (a salt's counter-ion): its degree^-1/2
    is inf, and 0 * inf is NaN in the normalised adjacency."""
    gen = seeded(306)
    model = GCN()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-2)

    def alter(step: int, batch, y: torch.Tensor):
        if step == 90:
            x, adj = batch
            adj = adj.clone()
            adj[3, 5, :] = 0
            adj[3, :, 5] = 0
            return (x, adj), y
        return batch, y

    fit(ctx, model, opt, graph_batches(gen), 130, alter=alter, forward=graph_forward)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 90, not after", all(finite[:90]) and not any(finite[90:]))
    ctx.check("it was learning", _mean(ctx.losses[80:90]) < 0.8 * _mean(ctx.losses[:10]))


# -- exploding gradients --------------------------------------------------------------------------


@scenario(
    "deep_tanh_mlp",
    "sgd",
    "exploding_gradients",
    where=("layers.0", "layers.1", "layers.2"),
    diverges=None,
    heldout=True,
    note="20 tanh layers initialised N(0, 1) instead of N(0, 1/fan_in), no clipping",
)
def h3_exploding_deep_tanh_sgd(ctx: Context) -> None:
    """A deep narrow tanh net whose weights were drawn with ``normal_()`` (std 1; gain 4 at
    width 16) instead of a fan-in scaled init: the net is in the chaotic regime, so the
    gradient grows geometrically on its way back to the input layers (hundreds of times the
    last layer's), the SGD updates there are huge, and the run never learns."""
    gen = seeded(307)
    model = DeepTanhMLP(depth=20)
    for layer in model.layers:
        nn.init.normal_(layer.weight)
        nn.init.zeros_(layer.bias)
    x, y = digits_probe()
    F.cross_entropy(model(x), y).backward()
    first, last = model.layers[0].weight.grad.norm(), model.layers[-1].weight.grad.norm()
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, digit_batches(gen), 150)
    ctx.check("at init, layers.0's gradient is 100x the last layer's", first > 100 * last)
    ctx.check("gradient norm above 100 during the run", max(ctx.grad_norms) > 100)
    ctx.check("never learns (loss near ln 10)", _mean(ctx.losses[-20:]) > 2.0)


def digits_probe() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed probe batch: the first 256 digits."""
    x, y = digits()
    return x[:256], y[:256]


# -- dead units -----------------------------------------------------------------------------------


@scenario(
    "wide_mlp",
    "rmsprop",
    "loss_of_plasticity",
    where=("0", "1"),
    diverges="auto",
    heldout=True,
    onset=80,
    note="a cyclic-LR restart at 0.03 (meant 1e-3) for 3 steps at step 80",
)
def h3_dead_relu_lr_burst_rmsprop(ctx: Context) -> None:
    """A wide one-hidden-layer ReLU classifier on digits; a warm restart of a cyclic schedule
    jumps to 0.03 (its max_lr was meant to be 1e-3) for steps 80-82: RMSprop moves every
    hidden weight and bias by ~0.03 per step, most hidden units end up never active, and
    training resumes at 1e-3 with the survivors only (the loss jumps, then recovers only
    part of the way)."""
    gen = seeded(308)
    model = WideMLP(64, 256, 10)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    x, _ = digits_probe()
    with torch.no_grad():
        before = dead_fraction(F.relu(model[0](x)))

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = 0.03 if 80 <= step < 83 else 1e-3

    fit(ctx, model, opt, digit_batches(gen), 220, before=schedule)
    with torch.no_grad():
        after = dead_fraction(F.relu(model[0](x)))
    ctx.check("at most 15% dead before", before <= 0.15)
    ctx.check("half the hidden units dead after", after >= 0.5)


# -- a frozen layer -------------------------------------------------------------------------------


@scenario(
    "lstm_seq2seq",
    "sg_grams",
    "update_ratio_out_of_range",
    where="encoder",
    diverges=None,
    heldout=True,
    note="the encoder's final state handed to the decoder through .detach()",
)
def h3_frozen_detached_encoder_seq2seq_grams(ctx: Context) -> None:
    """An LSTM encoder-decoder for sequence reversal whose encoder state reaches the decoder
    through ``.detach()`` (copied from a truncated-BPTT loop): the encoder never receives a
    gradient, the decoder has no usable view of the source, and the loss stays near chance."""
    gen = seeded(309)
    model = Seq2Seq(detach_state=True)
    opt = sgo.Grams(model.parameters(), lr=3e-3, fused=False)
    before = [p.detach().clone() for p in model.encoder.parameters()]
    dec_before = model.decoder.weight_hh_l0.detach().clone()
    fit(ctx, model, opt, reverse_batches(gen), 200, loss_fn=lm_loss)
    ctx.check(
        "encoder unchanged",
        all(torch.equal(a, b) for a, b in zip(before, model.encoder.parameters(), strict=True)),
    )
    ctx.check("decoder trained", not torch.equal(dec_before, model.decoder.weight_hh_l0))
    ctx.check("loss stays far above a working run's (< 1)", _mean(ctx.losses[-20:]) > 1.8)


# -- softmax collapse -----------------------------------------------------------------------------


@scenario(
    "bigru",
    "adamax",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="cosine-softmax head at scale 64 (a face-recognition default) on a 3-class task",
)
def h3_softmax_collapse_cosine_bigru_adamax(ctx: Context) -> None:
    """A bidirectional GRU with a NormFace/ArcFace-style cosine head at scale 64 (the value
    used for thousands of identities) learns an easy 3-class task: three class directions can
    sit 120 degrees apart, so logit gaps reach ~96, and the float32 softmax of most rows
    becomes exactly one-hot (their gradient exactly zero) within a few dozen steps."""
    gen = seeded(310)
    model = BiGRUClassifier(scale=64.0, classes=3)
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    fit(ctx, model, opt, marker_batches(gen), 220)
    x, y = next(marker_batches(seeded(5), 256))
    with torch.no_grad():
        ctx.check("half the rows collapsed", collapsed_fraction(model(x), y) > 0.5)


# -- Adam's second moment poisoned ----------------------------------------------------------------


@scenario(
    "qwen2",
    "nadam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=80,
    note="one step's loss summed over the 512 tokens instead of averaged",
)
def h3_adam_poisoned_sum_reduction_qwen2_nadam(ctx: Context) -> None:
    """At step 80 the loss is taken with ``reduction="sum"`` (the evaluation loss function,
    picked by a flag left on after a mid-run evaluation): a gradient 512x the usual enters
    NAdam's second moment, which then divides every update for hundreds of steps."""
    gen = seeded(311)
    model = hf_qwen2()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    snaps = []

    def track(step: int) -> None:
        if step in (40, 75, 120, 155):
            snaps.append(_snapshot(model))

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 16 * 32 if step == 80 else loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=hf_forward,
        before=track,
        extra_loss=bug,
    )
    before, after = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)


# -- slow loss divergence -------------------------------------------------------------------------


@scenario(
    "moe",
    "sgd_mom",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=60,
    note="the target sensor fails gradually: noise growing from 0 to 3 std over steps 60-220",
)
def h3_target_drift_moe_regressor_mom(ctx: Context) -> None:
    """A mixture-of-experts regressor on the diabetes data reads its target from a stream
    whose sensor degrades from step 60: Gaussian noise growing linearly to 3 standard
    deviations by step 220. The model chases the garbage and the training loss climbs
    steadily; nothing in the model or optimizer is at fault."""
    gen = seeded(312)
    model = MoE(10, 32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    noise = torch.Generator().manual_seed(312)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        level = 3.0 * min(1.0, max(0.0, (step - 60) / 160))
        return x, y + level * torch.randn(y.shape, generator=noise)

    fit(
        ctx,
        model,
        opt,
        diabetes_batches(gen),
        240,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=alter,
    )
    ctx.check("fitted first", _mean(ctx.losses[50:60]) < 0.8)


# -- healthy controls -----------------------------------------------------------------------------


@scenario(
    "qwen2", "adamw", "healthy", heldout=True, note="steadygrad's WarmupCosine, weight decay 0.1"
)
def h3_healthy_qwen2_warmup_cosine(ctx: Context) -> None:
    gen = seeded(321)
    model = hf_qwen2()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    sched = sgo.WarmupCosine(opt, warmup_steps=20, total_steps=220, min_lr_ratio=0.1)

    def schedule(step: int) -> None:
        if step:
            sched.step()

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        220,
        loss_fn=lm_loss,
        forward=hf_forward,
        before=schedule,
    )
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.7 * _mean(ctx.losses[:10]))


@scenario("mha_encoder", "adam", "healthy", heldout=True, note="Adam at 3e-3 from step 0")
def h3_healthy_mha_encoder_adam(ctx: Context) -> None:
    gen = seeded(322)
    model = MHAEncoder()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, pointer_batches(gen), 200)
    ctx.check("learnt the lookup", _mean(ctx.losses[-20:]) < 0.5)


@scenario("unet", "sg_diffgrad", "healthy", heldout=True, note="denoising, MSE regression output")
def h3_healthy_unet_denoiser_diffgrad(ctx: Context) -> None:
    gen = seeded(323)
    model = TinyUNet()
    opt = sgo.DiffGrad(model.parameters(), lr=3e-3, fused=False)
    fit(ctx, model, opt, noisy_digit_batches(gen), 200, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:10]))


@scenario("lstm_seq2seq", "adam", "healthy", heldout=True, note="the same net, state not detached")
def h3_healthy_seq2seq_adam(ctx: Context) -> None:
    gen = seeded(324)
    model = Seq2Seq()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, reverse_batches(gen), 200, loss_fn=lm_loss)
    ctx.check("learnt to reverse", _mean(ctx.losses[-20:]) < 1.0)
