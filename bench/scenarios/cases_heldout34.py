"""Held-out set 34 (``h34_``): new families, written without reading steadygrad's detectors,
diagnosis or monitor, and never run on steadygrad while being written (each scenario was adjusted
only until its own checks held, or, for a healthy control, until it trained normally).

Families: Hugging Face JetMoE causal LM, RoCBert classifier, T5Gemma encoder-decoder,
Dinov2-with-registers image classifier (fp16 autocast) and Whisper audio classifier on generated
tones from configs; FFJORD-style continuous normalising flow (fixed-step Euler, exact trace) on
generated 2-D moons; soft binary decision tree distilled from an MLP teacher (digits);
PointNet++-style set abstraction (farthest-point sampling + kNN grouping) on generated point
clouds; deep CCA on two generated views; an RNN-T-style transducer with a hand-written loss on
generated sequences; a B-spline Kolmogorov-Arnold network; a differentiable neural dictionary
(episodic controller). Optimizers: SGD, momentum, Nesterov, Adam, AdamW, RAdam, Adamax,
RMSprop, Adagrad, steadygrad's Lion and AdaBelief.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    MLP,
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


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- Hugging Face models from configs --------------------------------------------------------------


def _jetmoe(vocab: int = 128):
    from transformers import JetMoeConfig, JetMoeForCausalLM

    config = JetMoeConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_key_value_heads=2,
        kv_channels=8,
        intermediate_size=32,
        max_position_embeddings=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=False,
    )
    return JetMoeForCausalLM(config)


def _lm_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


def _rocbert(vocab: int = 128):
    from transformers import RoCBertConfig, RoCBertForSequenceClassification

    config = RoCBertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        pronunciation_vocab_size=16,
        shape_vocab_size=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return RoCBertForSequenceClassification(config)


def _count_batches(gen: torch.Generator, batch: int = 32, length: int = 16, vocab: int = 128):
    """Is token 1 more frequent than token 2 in the sequence?"""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        ones = torch.rand(batch, length, generator=gen) < 0.25
        twos = torch.rand(batch, length, generator=gen) < 0.25
        x = torch.where(ones, 1, torch.where(twos & ~ones, 2, x))
        y = ((x == 1).sum(1) > (x == 2).sum(1)).long()
        yield x, y


def _t5gemma(vocab: int = 32):
    from transformers import T5GemmaConfig, T5GemmaForConditionalGeneration, T5GemmaModuleConfig

    def part() -> T5GemmaModuleConfig:
        return T5GemmaModuleConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            max_position_embeddings=32,
            sliding_window=16,
            pad_token_id=0,
            eos_token_id=1,
            bos_token_id=2,
        )

    config = T5GemmaConfig(encoder=part(), decoder=part(), vocab_size=vocab)
    config.decoder_start_token_id = 2
    return T5GemmaForConditionalGeneration(config)


def _shift_batches(gen: torch.Generator, batch: int = 32, length: int = 10, vocab: int = 32):
    """Target token i is (source token i + 5), folded into the non-special ids 3..vocab-1."""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        yield x, (x - 3 + 5) % (vocab - 3) + 3


def _dinov2_registers():
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersForImageClassification

    config = Dinov2WithRegistersConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        num_register_tokens=2,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return Dinov2WithRegistersForImageClassification(config)


def _whisper_classifier(labels: int = 4):
    from transformers import WhisperConfig, WhisperForAudioClassification

    config = WhisperConfig(
        vocab_size=16,
        num_mel_bins=8,
        encoder_layers=1,
        encoder_attention_heads=2,
        decoder_layers=1,
        decoder_attention_heads=2,
        d_model=32,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_source_positions=16,
        max_target_positions=16,
        num_labels=labels,
        classifier_proj_size=16,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return WhisperForAudioClassification(config)


def _tone_features(gen: torch.Generator, n: int, labels: int = 4):
    """Log-mel-like (n, 8 bins, 32 frames) features: class c is a tone in bins 2c and 2c+1 that
    sweeps up or down in loudness; background noise everywhere."""
    y = torch.randint(0, labels, (n,), generator=gen)
    x = 0.3 * torch.randn(n, 8, 32, generator=gen)
    env = torch.linspace(0.2, 1.0, 32)
    for c in range(labels):
        rows = y == c
        x[rows, 2 * c] += 1.5 * env
        x[rows, 2 * c + 1] += 1.5 * env.flip(0)
    return x, y


# -- hand-written families -------------------------------------------------------------------------


class Dynamics(nn.Module):
    """f(z, t) of a continuous normalising flow: a small tanh MLP on (z, t)."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.out = nn.Linear(hidden, 2)

    def forward(self, z: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full_like(z[:, :1], t)
        return self.out(self.net(torch.cat([z, tt], 1)))


class EulerCNF(nn.Module):
    """FFJORD-style flow from data to noise with fixed-step Euler and the exact 2-D trace;
    returns the negative log-likelihood per sample."""

    def __init__(self, steps: int = 8) -> None:
        super().__init__()
        self.dyn = Dynamics()
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x if x.requires_grad else x.clone().requires_grad_(True)
        h = 1.0 / self.steps
        logdet = torch.zeros(len(x))
        for k in range(self.steps):
            f = self.dyn(z, k * h)
            trace = sum(
                torch.autograd.grad(f[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(2)
            )
            z = z + h * f
            logdet = logdet + h * trace
        logp = -0.5 * (z**2).sum(1) - math.log(2 * math.pi) + logdet
        return -logp


def _moons(gen: torch.Generator, batch: int = 128):
    while True:
        t = math.pi * torch.rand(batch, generator=gen)
        upper = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
        y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
        pts = torch.stack([x - 0.5, y - 0.25], 1) * 1.5
        yield pts + 0.08 * torch.randn(batch, 2, generator=gen), torch.zeros(batch)


def _nll(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return out.mean()


class SoftTree(nn.Module):
    """A soft binary decision tree: each inner node routes by sigmoid(w.x + b); the output is the
    path-probability mixture of the leaves' class logits."""

    def __init__(self, features: int = 64, depth: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.depth = depth
        self.gates = nn.Linear(features, 2**depth - 1)
        self.leaves = nn.Linear(2**depth, classes, bias=False)

    def path_probs(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gates(x))
        probs = torch.ones(len(x), 1)
        node = 0
        for level in range(self.depth):
            n = 2**level
            right = g[:, node : node + n]
            probs = torch.stack([probs * (1 - right), probs * right], 2).reshape(len(x), 2 * n)
            node += n
        return probs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.leaves(self.path_probs(x))


def _teacher_batches(gen: torch.Generator, batch: int = 64):
    """Digits with a small MLP teacher's soft labels (temperature 2) as the targets."""
    x, y = digits()
    teacher = MLP([64, 64, 10])
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    for _ in range(150):
        idx = torch.randint(0, len(y), (128,), generator=gen)
        loss = F.cross_entropy(teacher(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        soft = torch.softmax(teacher(x) / 2.0, 1)
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], soft[idx]


class SetAbstraction(nn.Module):
    """PointNet++ set abstraction: farthest-point centroids, k nearest neighbours, a shared MLP
    on (relative xyz, features), max over each group."""

    def __init__(self, centroids: int, k: int, dims: list[int]) -> None:
        super().__init__()
        self.centroids, self.k = centroids, k
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=False):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)

    def forward(self, xyz: torch.Tensor, feats: torch.Tensor | None):
        b, n, _ = xyz.shape
        with torch.no_grad():
            chosen = torch.zeros(b, self.centroids, dtype=torch.long)
            dist = torch.full((b, n), float("inf"))
            far = torch.zeros(b, dtype=torch.long)
            for i in range(self.centroids):
                chosen[:, i] = far
                centre = xyz[torch.arange(b), far][:, None]
                dist = torch.minimum(dist, ((xyz - centre) ** 2).sum(-1))
                far = dist.argmax(1)
        centres = torch.gather(xyz, 1, chosen[..., None].expand(-1, -1, 3))
        near = torch.cdist(centres, xyz).topk(self.k, largest=False).indices
        group = torch.gather(
            xyz[:, None].expand(-1, self.centroids, -1, -1),
            2,
            near[..., None].expand(-1, -1, -1, 3),
        )
        rel = group - centres[:, :, None]
        if feats is not None:
            f = feats[:, None].expand(-1, self.centroids, -1, -1)
            f = torch.gather(f, 2, near[..., None].expand(-1, -1, -1, feats.shape[-1]))
            rel = torch.cat([rel, f], -1)
        return centres, self.mlp(rel).amax(2)


class PointNet2(nn.Module):
    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.sa1 = SetAbstraction(16, 8, [3, 32, 32])
        self.sa2 = SetAbstraction(4, 8, [35, 64, 64])
        self.head = nn.Linear(64, classes)

    def features1(self, pts: torch.Tensor) -> torch.Tensor:
        return self.sa1(pts, None)[1]

    def forward(self, pts: torch.Tensor) -> torch.Tensor:
        centres, f = self.sa1(pts, None)
        _, f = self.sa2(centres, f)
        return self.head(f.amax(1))


def _shape_clouds(gen: torch.Generator, batch: int = 32, points: int = 64):
    """Sphere, cube surface or cylinder surface, randomly rotated about z and scaled."""
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        u = torch.randn(batch, points, 3, generator=gen)
        sphere = u / u.norm(dim=-1, keepdim=True)
        cube = u / u.abs().amax(-1, keepdim=True)
        ang = 2 * math.pi * torch.rand(batch, points, generator=gen)
        h = 2 * torch.rand(batch, points, generator=gen) - 1
        cyl = torch.stack([torch.cos(ang), torch.sin(ang), h], -1)
        pts = torch.where(
            y[:, None, None] == 0, sphere, torch.where(y[:, None, None] == 1, cube, cyl)
        )
        theta = 2 * math.pi * torch.rand(batch, generator=gen)
        c, s = torch.cos(theta), torch.sin(theta)
        rot = torch.zeros(batch, 3, 3)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1], rot[:, 2, 2] = c, -s, s, c, 1
        scale = 0.7 + 0.6 * torch.rand(batch, 1, 1, generator=gen)
        pts = scale * pts @ rot + 0.02 * torch.randn(batch, points, 3, generator=gen)
        yield pts, y


class DCCA(nn.Module):
    """Two view encoders whose outputs are trained to be maximally correlated."""

    def __init__(self, dim: int = 8, out: int = 2) -> None:
        super().__init__()
        self.view_a = MLP([dim, 32, 32, out], act=nn.Tanh)
        self.view_b = MLP([dim, 32, 32, out], act=nn.Tanh)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        return torch.cat([self.view_a(x[:, :half]), self.view_b(x[:, half:])], 1)


def _cca_loss(out: torch.Tensor, _y: torch.Tensor, reg: float = 1e-3) -> torch.Tensor:
    """Minus the sum of canonical correlations (trace norm of S11^-1/2 S12 S22^-1/2)."""
    k = out.shape[1] // 2
    a, b = out[:, :k] - out[:, :k].mean(0), out[:, k:] - out[:, k:].mean(0)
    n = len(out) - 1
    eye = torch.eye(k)
    s11, s22, s12 = a.T @ a / n + reg * eye, b.T @ b / n + reg * eye, a.T @ b / n

    def inv_sqrt(s: torch.Tensor) -> torch.Tensor:
        w, v = torch.linalg.eigh(s)
        return v @ torch.diag(w.clamp_min(1e-6).rsqrt()) @ v.T

    t = inv_sqrt(s11) @ s12 @ inv_sqrt(s22)
    return -torch.linalg.svdvals(t).sum()


def _two_views(gen: torch.Generator, batch: int = 128):
    """A shared 2-D latent seen through two different nonlinear 8-D maps with private noise."""
    wa, wb = torch.randn(2, 8, generator=gen), torch.randn(2, 8, generator=gen)
    while True:
        z = torch.randn(batch, 2, generator=gen)
        va = torch.tanh(z @ wa) + 0.3 * torch.randn(batch, 8, generator=gen)
        vb = torch.sin(z @ wb) + 0.3 * torch.randn(batch, 8, generator=gen)
        yield torch.cat([va, vb], 1), torch.zeros(batch)


class Transducer(nn.Module):
    """RNN-T: a GRU encoder over frames, a GRU prediction net over the previous labels, and a
    joint net; ``forward`` returns the (B, T, U+1, V+1) joint log-probabilities (blank = 0)."""

    def __init__(self, feats: int = 8, vocab: int = 5, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.GRU(feats, hidden, batch_first=True)
        self.embed = nn.Embedding(vocab + 1, hidden)
        self.predictor = nn.GRU(hidden, hidden, batch_first=True)
        self.joint_enc = nn.Linear(hidden, hidden)
        self.joint_pred = nn.Linear(hidden, hidden, bias=False)
        self.joint_out = nn.Linear(hidden, vocab + 1)

    def forward(self, frames: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        enc, _ = self.encoder(frames)
        prev = F.pad(labels, (1, 0))  # blank starts the prediction net
        pred, _ = self.predictor(self.embed(prev))
        j = torch.tanh(self.joint_enc(enc)[:, :, None] + self.joint_pred(pred)[:, None])
        return torch.log_softmax(self.joint_out(j), -1)


def rnnt_loss(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The transducer forward algorithm in log space, written out (mean over the batch)."""
    b, t_len, u1, _ = logp.shape
    blank = logp[..., 0]
    emit = torch.gather(logp[:, :, :-1], 3, labels[:, None, :, None].expand(-1, t_len, -1, 1))[
        ..., 0
    ]
    neg = torch.full((b,), -1e30)
    alpha = [[None] * u1 for _ in range(t_len)]
    for t in range(t_len):
        for u in range(u1):
            if t == 0 and u == 0:
                alpha[t][u] = torch.zeros(b)
                continue
            from_t = alpha[t - 1][u] + blank[:, t - 1, u] if t > 0 else neg
            from_u = alpha[t][u - 1] + emit[:, t, u - 1] if u > 0 else neg
            alpha[t][u] = torch.logaddexp(from_t, from_u)
    return -(alpha[-1][-1] + blank[:, -1, -1]).mean()


def _transducer_batches(gen: torch.Generator, batch: int = 16, labels: int = 4, vocab: int = 5):
    """Each of 4 labels (1..5) holds for 3 frames of a noisy one-hot-like code (12 frames)."""
    codes = torch.randn(vocab + 1, 8, generator=gen)
    while True:
        y = torch.randint(1, vocab + 1, (batch, labels), generator=gen)
        frames = codes[y].repeat_interleave(3, 1) + 0.3 * torch.randn(batch, 12, 8, generator=gen)
        yield frames, y


def _rnnt_fit(ctx: Context, model: Transducer, opt, gen, steps: int, corrupt_at: int = -1):
    batches = _transducer_batches(gen)
    ctx.attach(model, opt)
    for step in range(steps):
        frames, y = next(batches)
        if step == corrupt_at:  # a shard whose transcripts were paired with the wrong audio
            y = y.roll(1, 0)
        loss = rnnt_loss(model(frames, y), y)
        loss.backward()
        ctx.grad_norms.append(
            float(
                torch.stack(
                    [p.grad.norm() for p in model.parameters() if p.grad is not None]
                ).norm()
            )
        )
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


class BSplineLayer(nn.Module):
    """A KAN layer: each edge is w_b * silu(x) + a cubic B-spline on a fixed grid over [-2, 2]."""

    def __init__(self, fan_in: int, fan_out: int, grid: int = 6, order: int = 3) -> None:
        super().__init__()
        h = 4.0 / grid
        knots = torch.arange(-order, grid + order + 1, dtype=torch.float32) * h - 2.0
        self.register_buffer("knots", knots)
        self.order = order
        self.base = nn.Linear(fan_in, fan_out)
        self.coef = nn.Parameter(0.1 * torch.randn(fan_out, fan_in, grid + order))

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        k = self.knots
        x = x[..., None]
        b = ((x >= k[:-1]) & (x < k[1:])).float()
        for p in range(1, self.order + 1):
            left = (x - k[: -(p + 1)]) / (k[p:-1] - k[: -(p + 1)]) * b[..., :-1]
            right = (k[p + 1 :] - x) / (k[p + 1 :] - k[1:-p]) * b[..., 1:]
            b = left + right
        return b  # (batch, fan_in, grid + order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(F.silu(x)) + torch.einsum("bik,oik->bo", self.basis(x), self.coef)


class KAN(nn.Module):
    def __init__(self, sizes: list[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            BSplineLayer(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x if i == 0 else torch.tanh(x))
        return x


def _kan_batches(gen: torch.Generator, batch: int = 64):
    while True:
        x = 3.6 * torch.rand(batch, 3, generator=gen) - 1.8
        y = torch.sin(math.pi * x[:, 0] / 2) + 0.5 * x[:, 1] ** 2 - 0.3 * x[:, 0] * x[:, 2]
        yield x, y[:, None] + 0.02 * torch.randn(batch, 1, generator=gen)


class NeuralDictionary(nn.Module):
    """The lookup of a differentiable neural dictionary: inverse-distance kernel weights
    1 / (|h - k_i|^2 + delta) over the stored keys, normalised, mixing the stored values."""

    def __init__(self, delta: float) -> None:
        super().__init__()
        self.delta = delta

    def forward(self, h: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        kernel = 1.0 / ((h[:, None] - keys[None]).pow(2).sum(-1) + self.delta)
        return (kernel / kernel.sum(1, keepdim=True)) @ values


class EpisodicController(nn.Module):
    """NEC-style value estimator: states are encoded to keys, the dictionary holds the keys of a
    memory of visited states (encoded by the same net) and trainable value estimates."""

    def __init__(self, memory: torch.Tensor, returns: torch.Tensor, delta: float) -> None:
        super().__init__()
        self.encoder = MLP([6, 32, 8], act=nn.Tanh)
        self.register_buffer("memory", memory)
        self.values = nn.Parameter(returns.clone()[:, None])
        self.dnd = NeuralDictionary(delta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dnd(self.encoder(x), self.encoder(self.memory), self.values)


def _returns(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x[:, 0] + x[:, 1] * x[:, 2]) + 0.5 * torch.cos(2 * x[:, 3])


def _episodes(gen: torch.Generator, memory: torch.Tensor, batch: int = 32, revisit_at: int = -1):
    """Newly visited states; at step ``revisit_at`` one state is a stored one seen again."""
    step = 0
    while True:
        x = torch.randn(batch, 6, generator=gen)
        if step == revisit_at:
            x[7] = memory[11]
        yield x, _returns(x)[:, None] + 0.05 * torch.randn(batch, 1, generator=gen)
        step += 1


def _episodic(gen: torch.Generator, delta: float):
    memory = torch.randn(64, 6, generator=gen)
    return EpisodicController(memory, _returns(memory), delta), memory


# -- 1. attention-logit growth: RoCBert, AdamW ----------------------------------------------------


def _max_attention_logit(model, x: torch.Tensor) -> float:
    attn = model.roc_bert.encoder.layer[0].attention.self
    h = model.roc_bert.embeddings(input_ids=x)
    b, t, _ = h.shape
    q = attn.query(h).reshape(b, t, 2, -1).transpose(1, 2)
    k = attn.key(h).reshape(b, t, 2, -1).transpose(1, 2)
    return float((q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).abs().max())


@scenario(
    "hf_rocbert_classifier",
    "adamw",
    "attention_logit_growth",
    where=(
        "roc_bert.encoder.layer.0.attention.self",
        "roc_bert.encoder.layer.0.attention.self.query",
        "roc_bert.encoder.layer.0.attention.self.key",
    ),
    diverges=None,
    heldout=True,
    onset=50,
    note="an adapter merge left in the training loop folds q/k into themselves each step",
)
def h34_attention_growth_rocbert_adamw(ctx: Context) -> None:
    """From step 50 a LoRA-style "merge" meant for export runs every step on layer 0's query
    and key: W += 0.04 W. The attention logits grow geometrically, the softmax saturates onto
    single tokens (the classifier routes around it: the loss does not climb)."""
    gen = seeded(3401)
    model = _rocbert()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    attn = model.roc_bert.encoder.layer[0].attention.self
    probe, _ = next(_count_batches(torch.Generator().manual_seed(5)))
    logits: dict[int, float] = {}

    def merge(step: int) -> None:
        if step in (49, 259):
            with torch.no_grad():
                logits[step] = _max_attention_logit(model, probe)
        if step >= 50:
            with torch.no_grad():
                attn.query.weight.mul_(1.04)
                attn.key.weight.mul_(1.04)

    fit(ctx, model, opt, _count_batches(gen), 260, before=merge, forward=_cls_forward)
    ctx.check("layer 0's max attention logit grew 30x", logits[259] > 30 * logits[49])


def _cls_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


# -- 2. a gradient spike: soft decision tree, momentum ----------------------------------------


@scenario(
    "soft_decision_tree_distilled",
    "sgd_mom",
    "gradient_spike",
    diverges=None,
    heldout=True,
    onset=150,
    note="one batch's loss summed instead of averaged",
)
def h34_gradient_spike_soft_tree_momentum(ctx: Context) -> None:
    """Distilling an MLP into a soft tree with momentum SGD; at step 150 the loop's
    "last partial batch" path reduces the distillation loss with a sum instead of a mean: one
    gradient 16x too large, kicked on by the momentum, then training settles again."""
    gen = seeded(3402)
    model = SoftTree()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    def summed(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 16 if step == 150 else loss

    fit(ctx, model, opt, _teacher_batches(gen), 260, extra_loss=summed, classifier=False)
    g = ctx.grad_norms
    ctx.check("gradient at 150 is 10x any before", g[150] > 10 * max(g[100:150]))
    ctx.check("loss back near its level by the end", ctx.losses[-1] < 1.2 * ctx.losses[149])


# -- 3. softmax collapse: Whisper audio classifier, Adam ------------------------------------------


@scenario(
    "hf_whisper_audio_classifier",
    "adam",
    "softmax_collapse",
    where="classifier",
    diverges=None,
    heldout=True,
    note="temperature 0.01 (meant 1.0) on a small fixed set of tones",
)
def h34_softmax_collapse_whisper_adam(ctx: Context) -> None:
    """Fine-tuning a tiny Whisper encoder classifier on 64 fixed clips with the logits divided
    by a temperature of 0.01 (a config typo for 1.0): the float32 softmax of most clips rounds to
    exactly one-hot and their gradient to exactly zero."""
    gen = seeded(3403)
    x, y = _tone_features(gen, 64)
    model = _whisper_classifier()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def forward(m: nn.Module, feats: torch.Tensor) -> torch.Tensor:
        return m(input_features=feats).logits / 0.01

    def full():
        while True:
            yield x, y

    fit(ctx, model, opt, full(), 200, forward=forward)
    with torch.no_grad():
        ctx.check("a fifth of the clips collapsed", collapsed_fraction(forward(model, x), y) > 0.2)


# -- 4. learning rate above the stability limit: B-spline KAN, Nesterov ---------------------------


@scenario(
    "bspline_kan",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=150,
    note="a resumed run takes the LR of the wrong config entry",
)
def h34_lr_raised_kan_nesterov(ctx: Context) -> None:
    """A B-spline KAN regressor trains at LR 0.05; at step 150 a resume reads the LR of another
    experiment (1.5): far above 2/sharpness for Nesterov momentum, the loss oscillates and
    explodes."""
    gen = seeded(3404)
    model = KAN([3, 8, 1])
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def resume(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 1.5

    fit(
        ctx,
        model,
        opt,
        _kan_batches(gen),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
        before=resume,
    )
    finite = _finite(ctx.losses)
    ctx.check("loss fell before 150", ctx.losses[149] < 0.5 * ctx.losses[0])
    ctx.check(
        "loss blew up after 150",
        not all(finite[150:]) or max(ctx.losses[150:]) > 100 * ctx.losses[149],
    )


# -- 5. exploding gradients: FFJORD-style CNF, RMSprop --------------------------------------------


@scenario(
    "ffjord_cnf_euler",
    "rmsprop",
    "exploding_gradients",
    where="dyn.out",
    diverges="auto",
    heldout=True,
    onset=60,
    note="decoupled weight decay with the sign flipped on one layer's group",
)
def h34_exploding_cnf_rmsprop(ctx: Context) -> None:
    """A CNF on 2-D moons; the hand-written decoupled weight decay of the dynamics' output layer
    (its own param group) has its sign flipped from step 60: that weight grows 4% a step, the
    Euler map's Jacobian and its trace grow with it, and the gradient explodes through the
    eight Euler steps before the likelihood does."""
    gen = seeded(3405)
    model = EulerCNF()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    out = model.dyn.out

    def decay(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                out.weight.mul_(1.04)  # meant: 1 - lr * wd

    fit(ctx, model, opt, _moons(gen), 240, loss_fn=_nll, classifier=False, before=decay)
    g = ctx.grad_norms
    ctx.check("grad norm grew 100x after onset", max(g[60:]) > 100 * max(g[40:60]))


# -- 6. dead units: PointNet++, plain SGD ---------------------------------------------------------


@scenario(
    "pointnet2_set_abstraction",
    "sgd",
    "loss_of_plasticity",
    where=("sa1.mlp.2", "sa1.mlp.3"),
    diverges=None,
    heldout=True,
    onset=80,
    note="activation-sparsity penalty 2.0 where 2e-3 was meant",
)
def h34_dead_units_pointnet2_sgd(ctx: Context) -> None:
    """From step 80 an L1 sparsity penalty on the first set abstraction's local features is
    switched on with weight 2.0 (meant 2e-3): it pushes sa1's second layer's pre-activations
    below zero, its ReLU units die and get no gradient to come back."""
    gen = seeded(3406)
    model = PointNet2()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    feats: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, pts: torch.Tensor) -> torch.Tensor:
        centres, f = m.sa1(pts, None)
        feats["sa1"] = f
        _, f2 = m.sa2(centres, f)
        return m.head(f2.amax(1))

    def sparsity(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss + 2.0 * feats["sa1"].abs().mean() if step >= 80 else loss

    probe, _ = next(_shape_clouds(torch.Generator().manual_seed(9), 64))
    with torch.no_grad():
        before = dead_fraction(model.features1(probe))
    fit(ctx, model, opt, _shape_clouds(gen), 240, forward=forward, extra_loss=sparsity)
    with torch.no_grad():
        after = dead_fraction(model.features1(probe))
    ctx.check("sa1's dead units: from under a fifth to over 30%", before < 0.2 and after > 0.3)


# -- 7. a frozen layer: deep CCA, Adagrad ---------------------------------------------------------


@scenario(
    "dcca_two_views",
    "adagrad",
    "update_ratio_out_of_range",
    where="view_b.0",
    diverges=None,
    heldout=True,
    note="warm-up factor computed by integer division: 0",
)
def h34_frozen_dcca_adagrad(ctx: Context) -> None:
    """Deep CCA whose second view's first layer sits in its own param group with
    lr = base_lr * (step // warmup) (integer division, never updated after step 0): it stays at
    its initial weights while everything else learns."""
    gen = seeded(3407)
    model = DCCA()
    rest = [p for n, p in model.named_parameters() if not n.startswith("view_b.0.")]
    opt = torch.optim.Adagrad(
        [{"params": rest}, {"params": model.view_b[0].parameters(), "lr": 0.05 * (0 // 100)}],
        lr=0.05,
    )
    before = model.view_b[0].weight.detach().clone()
    fit(ctx, model, opt, _two_views(gen), 200, loss_fn=_cca_loss, classifier=False)
    ctx.check("view_b.0 unchanged", torch.equal(before, model.view_b[0].weight))
    ctx.check("correlation still rose", ctx.losses[-1] < ctx.losses[0] - 0.2)


# -- 8. a data outlier: RNN-T transducer, RAdam ---------------------------------------------------


@scenario(
    "rnnt_transducer",
    "radam",
    "data_outlier",
    diverges=150,
    heldout=True,
    onset=150,
    note="one batch with transcripts paired with the wrong audio at step 150",
)
def h34_outlier_rnnt_radam(ctx: Context) -> None:
    gen = seeded(3408)
    model = Transducer()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    _rnnt_fit(ctx, model, opt, gen, 220, corrupt_at=150)
    ctx.check("loss spiked at 150", ctx.losses[150] > 3 * max(ctx.losses[140:150]))
    ctx.check("and recovered", min(ctx.losses[200:]) < 2 * max(ctx.losses[140:150]))


# -- 9. a one-off NaN from one module: differentiable neural dictionary, momentum ----------------


@scenario(
    "neural_dictionary_episodic",
    "sgd_mom",
    "nonfinite",
    where="dnd",
    diverges=170,
    heldout=True,
    onset=170,
    note="kernel delta 0: a revisited state is at distance exactly 0 from its stored key",
)
def h34_nan_dnd_revisit_momentum(ctx: Context) -> None:
    """The dictionary's inverse-distance kernel was written with delta = 0 ("keys never
    coincide"); at step 170 the agent revisits a stored state, its key is at distance exactly 0:
    1/0 = inf, inf/inf = NaN in the lookup."""
    gen = seeded(3409)
    model, memory = _episodic(gen, delta=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(
        ctx,
        model,
        opt,
        _episodes(gen, memory, revisit_at=170 + 1),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
    )
    finite = _finite(ctx.losses)
    ctx.check("finite until 170, not at 170", all(finite[:170]) and not finite[170])
    ctx.check("it was learning", ctx.losses[169] < ctx.losses[0])


# -- 10. benign AMP overflow: Dinov2 with registers, AdaBelief ------------------------------------


@scenario(
    "hf_dinov2_registers_classifier",
    "sg_adabelief",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="GradScaler from 2**30, growth every 25 steps",
)
def h34_amp_overflow_dinov2_registers(ctx: Context) -> None:
    """fp16 autocast with a GradScaler that starts at 2**30 and doubles every 25 clean steps:
    it overflows now and then, skips those steps and halves; training goes on."""
    gen = seeded(3410)
    model = _dinov2_registers()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(pixel_values=x.reshape(-1, 1, 8, 8)).logits

    fit(ctx, model, opt, digit_batches(gen, 48), 160, scaler=scaler, amp=True, forward=forward)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss finite and fell", all(_finite(ctx.losses)) and ctx.losses[-1] < ctx.losses[0])


# -- 11. slow divergence: T5Gemma, Adamax ---------------------------------------------------------


@scenario(
    "hf_t5gemma_seq2seq",
    "adamax",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=100,
    note="the target pipeline's corruption rate creeps up",
)
def h34_slow_divergence_t5gemma_adamax(ctx: Context) -> None:
    """A T5Gemma learns a token-shift mapping; from step 100 a data-pipeline bug (an
    augmentation's probability is incremented per batch instead of set) replaces a growing share
    of target tokens with random ones: the loss climbs slowly over ~150 steps with nothing in the
    model to blame."""
    gen = seeded(3411)
    model = _t5gemma()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    noise = torch.Generator().manual_seed(77)

    def corrupt(step: int, x: torch.Tensor, y: torch.Tensor):
        rate = min(1.0, max(0, step - 100) / 150)
        swap = torch.rand(y.shape, generator=noise) < rate
        return x, torch.where(swap, torch.randint(3, 32, y.shape, generator=noise), y)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(
            input_ids=x, decoder_input_ids=x
        ).logits  # aligned task: the decoder reads the source

    fit(
        ctx,
        model,
        opt,
        _shift_batches(gen),
        260,
        alter=corrupt,
        forward=forward,
        loss_fn=lm_loss,
        classifier=False,
    )
    ctx.check("learnt before 100", min(ctx.losses[90:100]) < 0.5 * ctx.losses[0])
    ctx.check("climbed 2x after", min(ctx.losses[-10:]) > 2 * max(ctx.losses[90:100]))


# -- 12. Adam's second moment poisoned: JetMoE, Adam ----------------------------------------------


@scenario(
    "hf_jetmoe_causal_lm",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=80,
    note="loss multiplied by the accumulation steps squared on one step",
)
def h34_adam_poisoned_jetmoe(ctx: Context) -> None:
    """On a resume step (80) the loss is multiplied by 1e4 instead of divided by the
    accumulation count: once m has forgotten the spike, v (beta2 = 0.999) still holds it and
    the updates stay far too small for hundreds of steps."""
    gen = seeded(3412)
    model = _jetmoe()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    moved: list[torch.Tensor] = []

    def track(step: int) -> None:
        if step in (40, 70, 170, 199):
            moved.append(_flat(model))

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 1e4 if step == 80 else loss

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        before=track,
        extra_loss=bug,
        forward=_lm_forward,
        loss_fn=lm_loss,
        classifier=False,
    )
    before, after = (moved[1] - moved[0]).norm(), (moved[3] - moved[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)


# -- healthy controls -----------------------------------------------------------------------------


@scenario("soft_decision_tree_distilled", "sg_lion", "healthy", heldout=True)
def h34_healthy_soft_tree_lion(ctx: Context) -> None:
    gen = seeded(3421)
    model = SoftTree()
    opt = sgo.Lion(model.parameters(), lr=3e-3, fused=False)
    fit(ctx, model, opt, _teacher_batches(gen), 250, classifier=False)


@scenario("pointnet2_set_abstraction", "adamw", "healthy", heldout=True)
def h34_healthy_pointnet2_adamw(ctx: Context) -> None:
    gen = seeded(3422)
    model = PointNet2()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    fit(ctx, model, opt, _shape_clouds(gen), 200)


@scenario("rnnt_transducer", "adam", "healthy", heldout=True)
def h34_healthy_rnnt_adam(ctx: Context) -> None:
    gen = seeded(3423)
    model = Transducer()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    _rnnt_fit(ctx, model, opt, gen, 200)


@scenario("neural_dictionary_episodic", "rmsprop", "healthy", heldout=True, note="delta 1e-3")
def h34_healthy_dnd_rmsprop(ctx: Context) -> None:
    gen = seeded(3424)
    model, memory = _episodic(gen, delta=1e-3)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fit(
        ctx,
        model,
        opt,
        _episodes(gen, memory, revisit_at=120),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
    )
