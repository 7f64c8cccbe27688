"""Held-out scenarios, set 24 (``h24_``): new model families, every one ``heldout=True``.

Families: Hugging Face ESM protein masked LM, Swinv2 image classifier, UniSpeechSat audio
classifier (generated tones), BigBirdPegasus encoder-decoder and Exaone4 causal LM from configs;
SchNet-style continuous-filter convolution on generated molecules, BERT4Rec masked-item
recommender on generated sessions, Conformer speech encoder on generated log-mel-like features,
FixMatch semi-supervised digit classifier, CycleGAN-style pair of generators on digits, inverse
autoregressive flow (IAF) on generated 2-D points, ConvMixer digit classifier (fp16 autocast).
Optimizers: SGD, Nesterov momentum, Adam, AdamW, NAdam, RAdam, Adamax, RMSprop, Adagrad,
Adafactor, steadygrad's Lion and AdaBelief.

Written without reading ``steadygrad/diagnose/detectors/``, ``steadygrad/diagnose/diagnosis.py``,
``steadygrad/monitor/``, the other held-out case files or any measured result; never run on
steadygrad while written: each scenario was adjusted (with a stand-in context that attaches
nothing) only until its own checks held, or, for a healthy control, until it trained normally.
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

# -- data -----------------------------------------------------------------------------------------


def _diverged(losses: list[float]) -> int | None:
    """First non-finite loss, or first step whose 5-step median is over twice the best so far
    and at least 1.0 above it (the bench's own rule for ``diverges="auto"``)."""
    best = math.inf
    for t in range(len(losses)):
        if not math.isfinite(losses[t]):
            return t
        med = sorted(losses[max(0, t - 4) : t + 1])[len(losses[max(0, t - 4) : t + 1]) // 2]
        if t >= 4 and med > max(2 * best, best + 1.0):
            return t
        if t >= 4:
            best = min(best, med)
    return None


PROTEIN_VOCAB, MASK_ID = 33, 32


def protein_batches(gen: torch.Generator, batch: int = 16, length: int = 24):
    """Generated "proteins": a random 4-residue motif repeated, 15% of residues masked."""
    while True:
        motif = torch.randint(4, 24, (batch, 4), generator=gen)
        seq = motif.repeat(1, length // 4)
        mask = torch.rand(batch, length, generator=gen) < 0.15
        mask[:, 0] = True
        labels = torch.where(mask, seq, torch.full_like(seq, -100))
        yield torch.where(mask, torch.full_like(seq, MASK_ID), seq), labels


def tone_batches(gen: torch.Generator, batch: int = 16, samples: int = 800, classes: int = 4):
    """Generated audio: a sine at one of ``classes`` frequencies with a random phase, plus noise."""
    t = torch.arange(samples) / 8000.0
    freqs = torch.tensor([300.0, 700.0, 1200.0, 2000.0])[:classes]
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.2832 * freqs[y][:, None] * t + phase)
        yield x + 0.3 * torch.randn(batch, samples, generator=gen), y


def reverse_batches(gen: torch.Generator, batch: int = 16, length: int = 10, vocab: int = 64):
    """Seq2seq: the target is the input reversed (tokens 3.. ; 0 pad, 1 bos, 2 eos)."""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        yield x, x.flip(1)


def session_batches(
    gen: torch.Generator, items: int, batch: int = 32, length: int = 12, jump: float = 0.1
):
    """Generated sessions: each next item follows from the last by a fixed hidden permutation
    (or, with probability ``jump``, a random one); 20% of positions masked (id ``items``) for the model
    to fill in, as BERT4Rec trains."""
    perm = torch.randperm(items, generator=gen)
    while True:
        seq = torch.empty(batch, length, dtype=torch.long)
        seq[:, 0] = torch.randint(0, items, (batch,), generator=gen)
        for t in range(1, length):
            hop = torch.rand(batch, generator=gen) < jump
            rand = torch.randint(0, items, (batch,), generator=gen)
            seq[:, t] = torch.where(hop, rand, perm[seq[:, t - 1]])
        mask = torch.rand(batch, length, generator=gen) < 0.2
        mask[:, -1] = True
        labels = torch.where(mask, seq, torch.full_like(seq, -100))
        yield torch.where(mask, torch.full_like(seq, items), seq), labels


def molecule_batches(gen: torch.Generator, batch: int = 16, atoms: int = 8):
    """Generated molecules: atoms of 4 types in a box, energy a smooth pair potential that
    depends on both types."""
    strength = torch.tensor([[1.0, 0.5, 0.8, 0.2], [0.5, 1.5, 0.3, 0.9]] * 2)[:4]
    while True:
        z = torch.randint(0, 4, (batch, atoms), generator=gen)
        pos = 3.0 * torch.rand(batch, atoms, 3, generator=gen)
        d = Distances()(pos)
        pair = strength[z[:, :, None], z[:, None, :]] * torch.exp(-d)
        yield (z, pos), pair.sum((1, 2)) / 2


def _spread(gen: torch.Generator, batch: int = 128):
    """2-D points: a ring of radius 2 with noise (a density to fit)."""
    while True:
        a = 6.2832 * torch.rand(batch, generator=gen)
        r = 2.0 + 0.2 * torch.randn(batch, generator=gen)
        yield torch.stack([r * a.cos(), r * a.sin()], 1), torch.zeros(batch)


# -- model families -------------------------------------------------------------------------------


def hf_esm():
    from transformers import EsmConfig, EsmForMaskedLM

    return EsmForMaskedLM(
        EsmConfig(
            vocab_size=PROTEIN_VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            position_embedding_type="absolute",
            pad_token_id=1,
            mask_token_id=MASK_ID,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def _mlm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


class ConvMixer(nn.Module):
    """Patch embedding, then blocks of depthwise conv (residual) + pointwise conv, each with
    GELU and BatchNorm; global pooling and a linear head."""

    def __init__(self, dim: int = 24, depth: int = 3, kernel: int = 3, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, dim, 2, stride=2), nn.GELU(), nn.BatchNorm2d(dim))
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "depthwise": nn.Sequential(
                        nn.Conv2d(dim, dim, kernel, groups=dim, padding=kernel // 2),
                        nn.GELU(),
                        nn.BatchNorm2d(dim),
                    ),
                    "pointwise": nn.Sequential(
                        nn.Conv2d(dim, dim, 1), nn.GELU(), nn.BatchNorm2d(dim)
                    ),
                }
            )
            for _ in range(depth)
        )
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x.reshape(-1, 1, 8, 8))
        for block in self.blocks:
            x = x + block["depthwise"](x)
            x = block["pointwise"](x)
        return self.head(x.mean((2, 3)))


class BERT4Rec(nn.Module):
    """Item + position embeddings, a bidirectional Transformer encoder, an item head."""

    def __init__(self, items: int, dim: int = 32, length: int = 12, temperature: float = 1.0):
        super().__init__()
        self.item = nn.Embedding(items + 1, dim)
        self.pos = nn.Embedding(length, dim)
        layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, items)
        self.temperature = temperature

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        h = self.item(seq) + self.pos(torch.arange(seq.shape[1]))
        return self.head(self.encoder(h)) / self.temperature


class Distances(nn.Module):
    """Distance of every atom pair (self-pairs pushed far away inside the root, which keeps
    its gradient finite)."""

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        sq = ((pos[:, :, None] - pos[:, None, :]) ** 2).sum(-1)
        return (sq + 1e4 * torch.eye(pos.shape[1])).sqrt()


class Interaction(nn.Module):
    """Continuous-filter convolution: a filter from each pair's radial features, neighbours'
    features multiplied by it and summed, then an atom-wise update (SchNet)."""

    def __init__(self, dim: int, radial: int) -> None:
        super().__init__()
        self.filter = nn.Sequential(nn.Linear(radial, dim), nn.Softplus(), nn.Linear(dim, dim))
        self.inp = nn.Linear(dim, dim)
        self.out = nn.Sequential(nn.Linear(dim, dim), nn.Softplus(), nn.Linear(dim, dim))

    def forward(self, h: torch.Tensor, radial: torch.Tensor) -> torch.Tensor:
        w = self.filter(radial)  # (b, n, n, dim)
        return h + self.out((w * self.inp(h)[:, None, :, :]).mean(2))


class SchNet(nn.Module):
    def __init__(self, dim: int = 24, radial: int = 12, blocks: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, dim)
        self.distances = Distances()
        self.register_buffer("centres", torch.linspace(0.0, 4.0, radial))
        self.interactions = nn.ModuleList(Interaction(dim, radial) for _ in range(blocks))
        self.readout = nn.Sequential(nn.Linear(dim, dim), nn.Softplus(), nn.Linear(dim, 1))

    def forward(self, mol) -> torch.Tensor:
        z, pos = mol
        d = self.distances(pos)[..., None]  # (b, n, n, 1)
        radial = torch.exp(-4.0 * (d - self.centres) ** 2)  # Gaussian radial basis
        h = self.embed(z)
        for block in self.interactions:
            h = block(h, radial)
        return self.readout(h).sum((1, 2))


class LogMel(nn.Module):
    """log of a power spectrogram-like feature (a speech front end)."""

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return torch.log(power)


class ConformerBlock(nn.Module):
    """Half-step FFN, self-attention, convolution module, half-step FFN, final LayerNorm."""

    def __init__(self, dim: int, heads: int = 2, kernel: int = 5) -> None:
        super().__init__()

        def ffn() -> nn.Sequential:
            return nn.Sequential(
                nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim)
            )

        self.ffn1, self.ffn2 = ffn(), ffn()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.conv_norm = nn.LayerNorm(dim)
        self.pw1 = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = nn.Conv1d(dim, dim, kernel, groups=dim, padding=kernel // 2)
        self.bn = nn.BatchNorm1d(dim)
        self.pw2 = nn.Conv1d(dim, dim, 1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ffn1(x)
        h = self.attn_norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        c = F.glu(self.pw1(self.conv_norm(x).transpose(1, 2)), dim=1)
        x = x + self.pw2(F.silu(self.bn(self.depthwise(c)))).transpose(1, 2)
        return self.norm(x + 0.5 * self.ffn2(x))


class Conformer(nn.Module):
    def __init__(self, mels: int = 16, dim: int = 32, blocks: int = 2, classes: int = 4):
        super().__init__()
        self.frontend = LogMel()
        self.proj = nn.Linear(mels, dim)
        self.blocks = nn.ModuleList(ConformerBlock(dim) for _ in range(blocks))
        self.head = nn.Linear(dim, classes)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        x = self.proj(self.frontend(power))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


def speech_batches(gen: torch.Generator, batch: int = 16, frames: int = 20, mels: int = 16):
    """Generated power spectrograms: class c puts energy in a band of mel bins c*4..c*4+3
    (a formant) over a noise floor; strictly positive."""
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        band = (torch.arange(mels)[None, :] // 4 == y[:, None]).float()
        power = 0.05 + torch.rand(batch, frames, mels, generator=gen) * 0.1
        yield power + band[:, None, :] * (0.5 + torch.rand(batch, frames, 1, generator=gen)), y


class SmallCNN(nn.Module):
    """FixMatch's classifier: two ReLU convs and a head, for 8x8 digits."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.head = nn.Linear(width * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


class Generator(nn.Module):
    """A CycleGAN-style generator for 8x8 images: encode, two residual ReLU blocks, decode."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, width, 3, padding=1)
        self.res1 = nn.Conv2d(width, width, 3, padding=1)
        self.res2 = nn.Conv2d(width, width, 3, padding=1)
        self.dec = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.enc(x))
        h = h + F.relu(self.res1(h))
        h = h + F.relu(self.res2(h))
        return torch.sigmoid(self.dec(h))


class CyclePair(nn.Module):
    """Two generators: ``g_ab`` digits -> inverted digits, ``g_ba`` back."""

    def __init__(self) -> None:
        super().__init__()
        self.g_ab = Generator()
        self.g_ba = Generator()


class IAFStep(nn.Module):
    """One autoregressive affine step in 2-D: z1 from its own shift/scale, z2 conditioned on z1."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.base = nn.Parameter(torch.zeros(2))  # shift and log-scale of the first coordinate
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x -> z direction (density evaluation); the autoregressive order alternates by flip
        m2, s2 = self.net(x[:, :1]).unbind(1)
        s1 = self.base[1].expand(len(x))
        z = torch.stack(
            [(x[:, 0] - self.base[0]) * torch.exp(-s1), (x[:, 1] - m2) * torch.exp(-s2)], 1
        )
        return z.flip(1), -(s1 + s2)


class IAF(nn.Module):
    def __init__(self, steps: int = 4) -> None:
        super().__init__()
        self.steps = nn.ModuleList(IAFStep() for _ in range(steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of each point under a standard normal base."""
        logdet = torch.zeros(len(x))
        for step in self.steps:
            x, ld = step(x)
            logdet = logdet + ld
        return 0.5 * (x**2).sum(1) + 1.8379 - logdet


def _nll(out: torch.Tensor, _y: torch.Tensor) -> torch.Tensor:
    return out.mean()


# -- attention-logit growth ----------------------------------------------------------------------


def _esm_qk_logits(model, x: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(d_head) of any head in either layer on batch ``x``."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, o, n=n: seen.__setitem__(n, o))
        for n, m in model.named_modules()
        if n.endswith(".self.query") or n.endswith(".self.key")
    ]
    with torch.no_grad():
        model(input_ids=x)
    for h in hooks:
        h.remove()
    worst = 0.0
    for layer in range(2):
        q = seen[f"esm.encoder.layer.{layer}.attention.self.query"].unflatten(-1, (2, 16))
        k = seen[f"esm.encoder.layer.{layer}.attention.self.key"].unflatten(-1, (2, 16))
        logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / 4.0
        worst = max(worst, float(logits.abs().max()))
    return worst


@scenario(
    "hf_esm_protein_mlm",
    "adamw",
    "attention_logit_growth",
    where=(
        "esm.encoder.layer.0.attention.self",
        "esm.encoder.layer.0.attention.self.query",
        "esm.encoder.layer.0.attention.self.key",
        "esm.encoder.layer.1.attention.self",
        "esm.encoder.layer.1.attention.self.query",
        "esm.encoder.layer.1.attention.self.key",
    ),
    diverges=None,
    heldout=True,
    note="logits grow ~1000x; the loss still falls",
)
def h24_esm_qk_group_lr(ctx: Context) -> None:
    """The query/key projections sit in a "no decay, 10x LR" group meant for the embeddings
    (a name-matching bug in building the param groups): their weights grow unchecked and the
    attention logits with them, slowly, until every head's softmax is saturated (the loss
    itself keeps falling on this easy task: no divergence)."""
    gen = seeded(2401)
    model = hf_esm()
    qk = [p for n, p in model.named_parameters() if ".self.query." in n or ".self.key." in n]
    rest = [p for n, p in model.named_parameters() if not any(p is q for q in qk)]
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": qk, "lr": 3e-2, "weight_decay": 0.0}],
        lr=3e-3,
        weight_decay=0.01,
    )
    probe, _ = next(protein_batches(torch.Generator().manual_seed(7)))
    start = _esm_qk_logits(model, probe)
    fit(
        ctx,
        model,
        opt,
        protein_batches(gen),
        300,
        loss_fn=_mlm_loss,
        forward=lambda m, x: m(input_ids=x).logits,
        classifier=False,
    )
    end = _esm_qk_logits(model, probe)
    ctx.check(f"attention logits grew 100x ({start:.2f} -> {end:.2f})", end > 100 * start)


# -- a learning rate above the stability limit (warm-up overshoots) ------------------------------


def hf_swinv2():
    from transformers import Swinv2Config, Swinv2ForImageClassification

    return Swinv2ForImageClassification(
        Swinv2Config(
            image_size=8,
            patch_size=2,
            num_channels=1,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=2,
            num_labels=10,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            drop_path_rate=0.0,
        )
    )


@scenario("hf_swinv2_classifier", "adamw", "sharpness_above_limit", diverges="auto", heldout=True)
def h24_swinv2_warmup_overshoot(ctx: Context) -> None:
    """A linear warm-up to a peak LR copied from an SGD recipe (2.0, given to AdamW): the run
    learns while the LR is small, then breaks as the warm-up passes the stability limit."""
    gen = seeded(2402)
    model = hf_swinv2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 2.0 * min(1.0, (step + 1) / 200)

    def augment(step: int, x: torch.Tensor, y: torch.Tensor):
        return x + 0.05 * torch.randn(x.shape, generator=gen), y  # pixel-noise augmentation

    fit(
        ctx,
        model,
        opt,
        digit_batches(gen),
        240,
        alter=augment,
        before=warmup,
        forward=lambda m, x: m(pixel_values=x.reshape(-1, 1, 8, 8)).logits,
    )
    broke = _diverged(ctx.losses)
    ctx.check("learned first", min(ctx.losses[:30]) < 0.7 * ctx.losses[0])
    ctx.check(f"diverged during the warm-up (step {broke})", broke is not None and 20 < broke < 200)
    ctx.check("blew up (loss over 50)", max(ctx.losses) > 50)


# -- a frozen layer -------------------------------------------------------------------------------


def hf_unispeech_sat():
    from transformers import UniSpeechSatConfig, UniSpeechSatForSequenceClassification

    return UniSpeechSatForSequenceClassification(
        UniSpeechSatConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_dim=(16, 16),
            conv_stride=(5, 4),
            conv_kernel=(10, 8),
            num_conv_pos_embeddings=8,
            num_conv_pos_embedding_groups=2,
            num_labels=4,
            classifier_proj_size=16,
            hidden_dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            feat_proj_dropout=0.0,
            final_dropout=0.0,
            layerdrop=0.0,
            mask_time_prob=0.0,
            apply_spec_augment=False,
            num_clusters=4,
        )
    )


_USS_LAYER0 = "unispeech_sat.encoder.layers.0"


@scenario(
    "hf_unispeechsat_audio",
    "adam",
    "update_ratio_out_of_range",
    where=(
        _USS_LAYER0,
        _USS_LAYER0 + ".attention.q_proj",
        _USS_LAYER0 + ".attention.k_proj",
        _USS_LAYER0 + ".attention.v_proj",
        _USS_LAYER0 + ".attention.out_proj",
        _USS_LAYER0 + ".feed_forward.intermediate_dense",
        _USS_LAYER0 + ".feed_forward.output_dense",
    ),
    diverges=None,
    heldout=True,
)
def h24_unispeechsat_layer_decay_zero(ctx: Context) -> None:
    """Layer-wise LR decay written as ``lr * decay ** (depth - 1 - i)`` with ``decay=0.0`` (meant
    to be 0.8): the top encoder layer gets the full LR, layer 0 gets 0.0 and never moves."""
    gen = seeded(2403)
    model = hf_unispeech_sat()
    decay, depth = 0.0, 2
    groups, seen = [], set()
    for i in range(depth):
        params = list(model.unispeech_sat.encoder.layers[i].parameters())
        seen |= {id(p) for p in params}
        groups.append({"params": params, "lr": 1e-3 * decay ** (depth - 1 - i)})
    groups.append({"params": [p for p in model.parameters() if id(p) not in seen]})
    opt = torch.optim.Adam(groups, lr=1e-3)
    layer0 = model.unispeech_sat.encoder.layers[0].attention.q_proj.weight
    before = layer0.detach().clone()
    fit(
        ctx,
        model,
        opt,
        tone_batches(gen),
        150,
        forward=lambda m, x: m(input_values=x).logits,
    )
    ctx.check("layer 0 unchanged", torch.equal(before, layer0))
    early, late = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check(f"the rest learned ({early:.2f} -> {late:.2f})", late < 0.7 * early)


# -- a data outlier -------------------------------------------------------------------------------


def hf_bigbird_pegasus():
    from transformers import BigBirdPegasusConfig, BigBirdPegasusForConditionalGeneration

    return BigBirdPegasusForConditionalGeneration(
        BigBirdPegasusConfig(
            vocab_size=64,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            max_position_embeddings=64,
            attention_type="original_full",
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            decoder_start_token_id=1,
        )
    )


@scenario(
    "hf_bigbird_pegasus_seq2seq", "adafactor", "data_outlier", diverges=170, onset=170, heldout=True
)
def h24_bigbird_pegasus_misaligned_batch(ctx: Context) -> None:
    """A reversal task; at step 170 one batch comes from a shard tokenised with another
    vocabulary: every target id is shifted and the model is confidently wrong on all of it."""
    gen = seeded(2404)
    model = hf_bigbird_pegasus()
    opt = torch.optim.Adafactor(model.parameters(), lr=0.1)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 170:
            y = (y - 3 + 29) % 61 + 3
        return x, y

    fit(
        ctx,
        model,
        opt,
        reverse_batches(gen),
        240,
        loss_fn=_mlm_loss,
        alter=alter,
        forward=lambda m, x: m(input_ids=x, labels=x.flip(1)).logits,
        classifier=False,
    )
    ctx.check("loss spiked at 170", ctx.losses[170] > 5 * max(ctx.losses[160:170]))
    ctx.check("recovered", sum(ctx.losses[-5:]) / 5 < 2 * max(ctx.losses[160:170]))


# -- output-logit divergence ----------------------------------------------------------------------


def hf_exaone4():
    from transformers import Exaone4Config, Exaone4ForCausalLM

    return Exaone4ForCausalLM(
        Exaone4Config(
            vocab_size=128,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=64,
            sliding_window=None,
            layer_types=["full_attention", "full_attention"],
            tie_word_embeddings=False,
        )
    )


@scenario(
    "hf_exaone4_causal_lm",
    "nadam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    onset=60,
    heldout=True,
)
def h24_exaone4_zloss_sign(ctx: Context) -> None:
    """A z-loss switched on at step 60 with its sign flipped (``loss - 2e-2 * lse**2``): instead
    of keeping the log-partition near zero it rewards large logits, which grow until the LM
    loss climbs."""
    gen = seeded(2405)
    model = hf_exaone4()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    last: dict[str, torch.Tensor] = {}

    def forward(m, x):
        last["logits"] = m(input_ids=x).logits
        return last["logits"]

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 60:
            return loss
        lse = torch.logsumexp(last["logits"].float(), -1)
        return loss - 2e-2 * (lse**2).mean()

    probe, _ = next(text_batches(torch.Generator().manual_seed(5)))
    with torch.no_grad():
        start = float(model(input_ids=probe).logits.abs().max())
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        320,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=zloss,
        classifier=False,
    )
    with torch.no_grad():
        end = float(model(input_ids=probe).logits.abs().max())
    ctx.check(f"output logits grew 20x ({start:.2f} -> {end:.1f})", end > 20 * start)
    broke = _diverged(ctx.losses)
    ctx.check(f"the loss climbed (step {broke})", broke is not None and broke > 100)


# -- exploding gradients --------------------------------------------------------------------------


@scenario(
    "schnet_molecules",
    "sgd_nesterov",
    "exploding_gradients",
    where=("interactions.1.filter", "interactions.1.filter.2", "interactions.1"),
    diverges="auto",
    heldout=True,
)
def h24_schnet_filter_penalty_sign(ctx: Context) -> None:
    """A hand-written L2 penalty on the second interaction's filter network with its sign
    flipped: every step scales those filter weights up a little; the continuous-filter
    convolution multiplies by them, so the gradients grow geometrically (from the first steps)
    until the run blows up some 200 steps later."""
    gen = seeded(2406)
    model = SchNet()
    opt = torch.optim.SGD(model.parameters(), lr=5e-4, momentum=0.9, nesterov=True)
    filt = list(model.interactions[1].filter.parameters())

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - 2.5 * sum((p**2).sum() for p in filt)

    fit(
        ctx,
        model,
        opt,
        molecule_batches(gen),
        320,
        loss_fn=F.mse_loss,
        extra_loss=penalty,
        classifier=False,
    )
    g = ctx.grad_norms
    early = sorted(g[20:60])[20]
    peak = max(v for v in g if math.isfinite(v))
    ctx.check(f"gradient grew 10x before the break ({early:.3g} -> {peak:.3g})", peak > 10 * early)
    broke = _diverged(ctx.losses)
    ctx.check(f"the run diverged (step {broke})", broke is not None and broke > 120)


# -- a NaN from one module on one bad sample ------------------------------------------------------


@scenario(
    "conformer_speech",
    "adamax",
    "nonfinite",
    where="frontend",
    diverges=150,
    onset=150,
    heldout=True,
)
def h24_conformer_silent_frame_log(ctx: Context) -> None:
    """At step 150 one utterance was zero-padded in the power domain by a bug in the collate
    function: its padded frames are exactly 0, and the log front end turns them into -inf."""
    gen = seeded(2407)
    model = Conformer()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[3, 14:] = 0.0
        return x, y

    fit(ctx, model, opt, speech_batches(gen), 180, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 150, not at 150", all(finite[:150]) and not finite[150])
    ctx.check("learned before", ctx.losses[149] < 0.5 * ctx.losses[0])


# -- softmax collapse -----------------------------------------------------------------------------


@scenario("bert4rec_items", "radam", "softmax_collapse", where="head", diverges=None, heldout=True)
def h24_bert4rec_temperature(ctx: Context) -> None:
    """A temperature of 0.02 on the item logits, copied from a contrastive recipe: on an almost
    deterministic catalogue the item softmax saturates and float32 rounds the target's
    probability to exactly 1 on most masked positions."""
    gen = seeded(2408)
    items = 20
    model = BERT4Rec(items, temperature=0.02)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    batches = session_batches(gen, items, jump=0.0)
    fit(ctx, model, opt, batches, 800, loss_fn=_mlm_loss, classifier=False)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x)
    keep = y.reshape(-1) >= 0
    share = collapsed_fraction(logits.reshape(-1, items)[keep], y.reshape(-1)[keep])
    ctx.check(f"a quarter of the masked positions collapsed ({share:.2f})", share > 0.25)


# -- Adam's second moment poisoned ----------------------------------------------------------------


@scenario(
    "fixmatch_digits",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
)
def h24_fixmatch_unnormalised_unlabeled(ctx: Context) -> None:
    """FixMatch (labelled loss + confident pseudo-labels on strongly augmented unlabelled
    images). At step 120 one unlabelled batch arrives unnormalised (0..255, the loader skipped
    its /255) with its consistency loss weighted up by a ramp bug: one giant gradient; Adam's
    second moment holds it for hundreds of steps and learning nearly stops."""
    gen = seeded(2409)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    labelled = digit_batches(gen, 16)
    unlabelled = digit_batches(torch.Generator().manual_seed(77), 64)
    ctx.attach(model, opt)
    moved: list[torch.Tensor] = []
    for step in range(360):
        x, y = next(labelled)
        u, _ = next(unlabelled)
        weak = u + 0.05 * torch.randn(u.shape, generator=gen)
        strong = (u + 0.3 * torch.randn(u.shape, generator=gen)) * (
            torch.rand(u.shape, generator=gen) > 0.2
        )
        weight = 1.0
        if step == 120:
            strong, weight = strong * 255.0, 50.0
        with torch.no_grad():
            p = torch.softmax(model(weak), -1)
            conf, pseudo = p.max(-1)
        ctx.targets(y)
        sup = F.cross_entropy(model(x), y)
        unsup = (F.cross_entropy(model(strong), pseudo, reduction="none") * (conf > 0.9)).mean()
        before = [q.detach().clone() for q in model.parameters()]  # per-tensor update sizes
        (sup + weight * unsup).backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        moved.append(
            torch.stack([(q - b).norm() for q, b in zip(model.parameters(), before, strict=True)])
        )
        ctx.step(sup)
        opt.zero_grad(set_to_none=True)
    g = ctx.grad_norms
    ctx.check("one giant gradient at 120", g[120] > 100 * max(g[100:120]))
    pre = torch.stack(moved[70:120]).median(0).values
    post = torch.stack(moved[170:230]).median(0).values
    weights = torch.tensor([q.dim() > 1 for q in model.parameters()])
    drop = float((pre / post)[weights].median())
    ctx.check(f"the median weight's updates shrank 5x after the spike ({drop:.1f}x)", drop > 5)


# -- loss of plasticity (dead units) --------------------------------------------------------------


@scenario(
    "cyclegan_generators",
    "sg_lion",
    "loss_of_plasticity",
    where="g_ab.res1",
    diverges=None,
    onset=100,
    heldout=True,
)
def h24_cyclegan_gate_init_on_relu(ctx: Context) -> None:
    """At step 100 a "re-initialise the gates" helper for a fine-tune phase matches g_ab.res1 by
    a name pattern and sets its bias to -3 (meant for a sigmoid gate that should start closed):
    the ReLU after it is shut for most inputs, the dead channels get no gradient, and they
    never come back."""
    gen = seeded(2410)
    model = CyclePair()
    opt = sgo.Lion(
        [{"params": model.g_ab.parameters()}, {"params": model.g_ba.parameters()}],
        lr=3e-4,
        fused=False,
    )

    def reinit(step: int) -> None:
        if step == 100:  # the gate initialiser: bias -3 so that a sigmoid gate starts closed
            with torch.no_grad():
                model.g_ab.res1.bias.fill_(-3.0)

    def forward(m, x):
        a = x.reshape(-1, 1, 8, 8)
        fake_b = m.g_ab(a)
        return torch.cat([fake_b, m.g_ba(fake_b), m.g_ba(1.0 - a)], 1)

    def loss_fn(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a = x.reshape(-1, 1, 8, 8)
        fake_b, rec_a, fake_a = out.split(1, 1)
        # a paired L1 on half the data keeps it learnable; the cycle term is CycleGAN's
        return F.l1_loss(fake_b, 1.0 - a) + F.l1_loss(rec_a, a) + F.l1_loss(fake_a, a)

    imgs = ((x, x) for x, _ in digit_batches(gen, 32))
    fit(
        ctx,
        model,
        opt,
        imgs,
        260,
        loss_fn=loss_fn,
        before=reinit,
        forward=forward,
        classifier=False,
    )
    x, _ = next(digit_batches(gen, 256))
    with torch.no_grad():
        h = F.relu(model.g_ab.enc(x.reshape(-1, 1, 8, 8)))
        dead = dead_fraction(F.relu(model.g_ab.res1(h)))
    ctx.check(f"half of g_ab.res1's channels dead ({dead:.2f})", dead >= 0.5)


# -- a slow divergence with no mechanism ----------------------------------------------------------


@scenario("iaf_flow_points", "rmsprop", "loss_divergence", diverges="auto", onset=80, heldout=True)
def h24_iaf_drifting_normaliser(ctx: Context) -> None:
    """The flow fits a ring; from step 80 the data pipeline's running normaliser has a bug that
    lets its scale drift, so the points it hands over slowly spread out, step after step. The
    flow keeps chasing a moving target and its likelihood gets steadily worse."""
    gen = seeded(2411)
    model = IAF()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 80:
            x = x * (1.0 + 0.02 * (step - 80)) ** 1.5
        return x, y

    fit(
        ctx,
        model,
        opt,
        _spread(gen),
        420,
        loss_fn=_nll,
        alter=alter,
        forward=lambda m, x: m(x),
        classifier=False,
    )
    broke = _diverged(ctx.losses)
    ctx.check("learned first", min(ctx.losses[:80]) < ctx.losses[0] - 0.5)
    ctx.check(f"climbed slowly (diverged at {broke})", broke is not None and broke > 160)
    ctx.check("finite throughout", all(math.isfinite(v) for v in ctx.losses))


# -- benign AMP overflow --------------------------------------------------------------------------


@scenario("convmixer_digits", "sgd", "amp_overflow", diverges=None, heldout=True)
def h24_convmixer_fp16_scale(ctx: Context) -> None:
    """float16 autocast with a GradScaler started at 2**26 that grows every 25 steps: it
    overflows now and then, skips those steps and halves its scale; training is fine."""
    gen = seeded(2412)
    model = ConvMixer()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**26, growth_interval=25)
    fit(ctx, model, opt, digit_batches(gen), 200, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**26) >= 2)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- healthy controls -----------------------------------------------------------------------------


@scenario("convmixer_digits", "adagrad", "healthy", heldout=True)
def h24_healthy_convmixer_adagrad(ctx: Context) -> None:
    gen = seeded(2413)
    model = ConvMixer()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    fit(ctx, model, opt, digit_batches(gen), 200)


@scenario("bert4rec_items", "adamw", "healthy", heldout=True)
def h24_healthy_bert4rec_adamw(ctx: Context) -> None:
    gen = seeded(2414)
    items = 40
    model = BERT4Rec(items)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    fit(ctx, model, opt, session_batches(gen, items), 250, loss_fn=_mlm_loss, classifier=False)


@scenario("schnet_molecules", "sg_adabelief", "healthy", heldout=True)
def h24_healthy_schnet_adabelief(ctx: Context) -> None:
    gen = seeded(2415)
    model = SchNet()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, molecule_batches(gen), 200, loss_fn=F.mse_loss, classifier=False)


@scenario("hf_esm_protein_mlm", "adam", "healthy", heldout=True, note="warm-up 20 steps")
def h24_healthy_esm_adam(ctx: Context) -> None:
    gen = seeded(2416)
    model = hf_esm()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def warm(step: int) -> None:
        opt.param_groups[0]["lr"] = 2e-3 * min(1.0, (step + 1) / 20)

    fit(
        ctx,
        model,
        opt,
        protein_batches(gen),
        200,
        loss_fn=_mlm_loss,
        before=warm,
        forward=lambda m, x: m(input_ids=x).logits,
        classifier=False,
    )
