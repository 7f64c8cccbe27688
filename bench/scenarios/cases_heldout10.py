"""The tenth held-out set (``h10_``): families none of the other sets use.

Hugging Face Qwen3, GraniteMoE and Gemma3 causal LMs, a ConvNeXt-v2 image classifier and a
SqueezeBERT classifier, all built from configs; written here: a character-level CNN text
classifier, a pointer network, a Siamese LSTM with a contrastive (margin) loss, a conditional VAE,
a MADE autoregressive density model, an FT-Transformer-style tabular transformer (wine, iris), a
KAN-style RBF-expansion network, a ResNet-18-like CNN with BatchNorm on 8x8 digits and a GLU MLP
language model. Optimizers: SGD with momentum, Nesterov momentum, Adam, AdamW, RMSprop, RAdam,
Adamax and steadygrad.optim's AdaBelief.

Written without reading ``steadygrad/diagnose/detectors/``, ``diagnosis.py``,
``steadygrad/monitor/`` or the other held-out files, and never run on steadygrad while it was
written: each scenario was adjusted with a stand-in context that attaches nothing, only until its
own checks held (or, for a healthy control, until it trained normally).
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


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _take(batches, n: int) -> list:
    return [next(batches) for _ in range(n)]


def _lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


# -- Hugging Face causal LMs from configs ----------------------------------------------------------


def _qwen3(vocab: int = 128, dim: int = 32, layers: int = 2):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=dim // 2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        attention_dropout=0.0,
    )
    return Qwen3ForCausalLM(config)


def _granite_moe(vocab: int = 128, dim: int = 32, layers: int = 2, attention_multiplier=0.25):
    from transformers import GraniteMoeConfig, GraniteMoeForCausalLM

    config = GraniteMoeConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        attention_multiplier=attention_multiplier,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    return GraniteMoeForCausalLM(config)


def _gemma3(vocab: int = 128, dim: int = 32, layers: int = 2):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=dim // 2,
        max_position_embeddings=64,
        sliding_window=16,
        attn_implementation="eager",
    )
    return Gemma3ForCausalLM(config)


@scenario(
    "hf_qwen3",
    "adamw",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=0,
    note="label smoothing (0.2) written with the wrong sign: the loss rewards extreme logits",
)
def h10_qwen3_label_smoothing_wrong_sign(ctx: Context) -> None:
    gen = seeded(1001)
    model = _qwen3()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    eps = 0.2
    scale: list[float] = []
    last: dict[str, torch.Tensor] = {}

    def smoothed(step: int, loss: torch.Tensor) -> torch.Tensor:
        logits = last["logits"].float()
        scale.append(float(logits.detach().abs().amax()))
        uniform = -torch.log_softmax(logits, dim=-1).mean(-1).mean()
        return (1 - eps) * loss - eps * uniform  # meant "+ eps * uniform"

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last["logits"] = m(input_ids=x).logits
        return last["logits"]

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        400,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=smoothed,
        classifier=False,
    )
    ctx.check("logits grew 10x", max(scale[-20:]) > 10 * max(scale[:20]))
    ctx.check("loss climbed", _mean(ctx.losses[-20:]) > 1.5 * _mean(ctx.losses[100:140]))


@scenario(
    "hf_granitemoe",
    "adam",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    onset=0,
    note="attention_multiplier set to head_dim (meant 1/head_dim): the temperature the wrong way",
)
def h10_granitemoe_attention_multiplier(ctx: Context) -> None:
    gen = seeded(1002)
    model = _granite_moe(attention_multiplier=16.0)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    peak: list[float] = []
    spread: list[float] = []

    def watch(module: nn.Module, args, kwargs, out) -> None:
        weights = out[1].detach()  # (batch, heads, query, key); the last query sees every key
        peak.append(float(weights.amax(-1).mean()))
        last = weights[:, :, -1].clamp_min(1e-45).log()
        spread.append(float((last.amax(-1) - last.amin(-1)).amax()))  # logit range

    model.model.layers[0].self_attn.register_forward_hook(watch, with_kwargs=True)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        250,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
    )
    ctx.check("attention was spread at first", _mean(peak[:5]) < 0.5)
    ctx.check("attention went one-hot", _mean(peak[-10:]) > 0.95)
    ctx.check("logit range grew 3x", _mean(spread[-10:]) > 3 * _mean(spread[:5]))


@scenario("hf_gemma3", "adabelief", "healthy", heldout=True)
def h10_gemma3_healthy(ctx: Context) -> None:
    gen = seeded(1003)
    model = _gemma3()
    opt = sgo.AdaBelief(model.parameters(), lr=1.5e-3)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.8 * _mean(ctx.losses[:10]))


# -- Hugging Face classifiers from configs ---------------------------------------------------------


def _convnextv2():
    from transformers import ConvNextV2Config, ConvNextV2ForImageClassification

    config = ConvNextV2Config(
        num_channels=1,
        patch_size=2,
        num_stages=2,
        hidden_sizes=[16, 32],
        depths=[1, 1],
        image_size=8,
        num_labels=10,
        drop_path_rate=0.0,
    )
    return ConvNextV2ForImageClassification(config)


@scenario("hf_convnextv2", "adamw", "healthy", heldout=True)
def h10_convnextv2_digits_healthy(ctx: Context) -> None:
    gen = seeded(1004)
    model = _convnextv2()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(pixel_values=(x.reshape(-1, 1, 8, 8) - 0.5) / 0.5).logits  # standardised

    fit(ctx, model, opt, digit_batches(gen), 200, forward=forward)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:10]))


def _bert_task(gen: torch.Generator, batch: int = 32, length: int = 16, vocab: int = 64):
    """Is token 1 more frequent than token 2 in the sequence?"""
    while True:
        x = torch.randint(3, vocab, (batch, length), generator=gen)
        ones = torch.rand(batch, length, generator=gen) < 0.25
        twos = torch.rand(batch, length, generator=gen) < 0.25
        x = torch.where(ones, 1, torch.where(twos & ~ones, 2, x))
        yield x, ((x == 1).sum(1) > (x == 2).sum(1)).long()


def _squeezebert():
    from transformers import SqueezeBertConfig, SqueezeBertForSequenceClassification

    config = SqueezeBertConfig(
        vocab_size=64,
        hidden_size=32,
        embedding_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        q_groups=1,
        k_groups=1,
        v_groups=1,
        post_attention_groups=1,
        intermediate_groups=1,
        output_groups=1,
    )
    return SqueezeBertForSequenceClassification(config)


@scenario(
    "hf_squeezebert",
    "adam",
    "update_ratio_out_of_range",
    where="classifier",
    diverges=None,
    heldout=True,
    onset=0,
    note="head replaced after the optimizer was built: it gets gradients but never moves",
)
def h10_squeezebert_head_not_in_optimizer(ctx: Context) -> None:
    gen = seeded(1005)
    model = _squeezebert()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.classifier = nn.Linear(32, 2)  # a fresh head for the new task, after the optimizer
    before = model.classifier.weight.detach().clone()

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(input_ids=x).logits

    fit(ctx, model, opt, _bert_task(gen), 200, forward=forward)
    ctx.check("head never moved", torch.equal(before, model.classifier.weight.detach()))
    ctx.check("head had gradients", model.classifier.weight.grad is not None)


# -- character-level CNN text classifier -----------------------------------------------------------


class CharCNN(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.conv1 = nn.Conv1d(dim, 32, 5, padding=2)
        self.conv2 = nn.Conv1d(32, 32, 3, padding=1)
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x).transpose(1, 2)
        h = F.max_pool1d(F.relu(self.conv1(h)), 2)
        h = F.relu(self.conv2(h)).amax(-1)
        return self.head(h)


def _source_batches(gen: torch.Generator, batch: int = 32, length: int = 128):
    """Which of three standard-library modules does a 128-byte window come from?"""
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    texts = [
        torch.tensor(list((root / n).read_bytes()), dtype=torch.long) % 128
        for n in ("textwrap.py", "heapq.py", "fractions.py")
    ]
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        rows = []
        for label in y.tolist():
            t = texts[label]
            s = int(torch.randint(0, len(t) - length, (1,), generator=gen))
            rows.append(t[s : s + length])
        yield torch.stack(rows), y


@scenario(
    "char_cnn",
    "rmsprop",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    onset=0,
    note="logits divided by the sampling temperature 0.005 in the training forward too",
)
def h10_charcnn_temperature_in_training(ctx: Context) -> None:
    gen = seeded(1007)
    model = CharCNN()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    last: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        last["logits"] = m(x) / 0.005
        return last["logits"]

    batches = _source_batches(gen)
    fit(ctx, model, opt, batches, 500, forward=forward)
    with torch.no_grad():
        frac = _mean([collapsed_fraction(forward(model, x), y) for x, y in _take(batches, 5)])
    ctx.check("over 40% of rows collapsed to p=1.0", frac > 0.4)


# -- pointer network -------------------------------------------------------------------------------


class PointerNet(nn.Module):
    """Encodes a set of numbers with an LSTM; points at the position of the largest."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.LSTM(1, hidden, batch_first=True)
        self.pointer = Pointer(hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, mask = x[..., 0], x[..., 1] > 0
        enc, (h, _) = self.encoder(values[..., None])
        return self.pointer(enc, h[-1], mask)


class Pointer(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.w_enc = nn.Linear(hidden, hidden, bias=False)
        self.w_query = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, 1, bias=False)

    def forward(self, enc: torch.Tensor, query: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.v(torch.tanh(self.w_enc(enc) + self.w_query(query)[:, None])).squeeze(-1)
        scores = scores.masked_fill(~mask, float("-inf"))
        return torch.log_softmax(scores, dim=-1)  # padded positions get log 0


def _pointer_batches(gen: torch.Generator, batch: int = 32, length: int = 10):
    while True:
        values = torch.rand(batch, length, generator=gen)
        lengths = torch.randint(4, length + 1, (batch,), generator=gen)
        mask = torch.arange(length)[None] < lengths[:, None]
        values = values * mask
        yield torch.stack([values, mask.float()], -1), values.argmax(1)


@scenario(
    "pointer_net",
    "adam",
    "nonfinite",
    where="pointer",
    diverges=180,
    heldout=True,
    onset=180,
    note="one empty (all-padding) sequence in a batch: its masked softmax is NaN",
)
def h10_pointer_empty_sequence(ctx: Context) -> None:
    gen = seeded(1008)
    model = PointerNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 180:  # a record whose items were all filtered out upstream
            x = x.clone()
            x[7] = 0.0
            y = y.clone()
            y[7] = 0
        return x, y

    fit(ctx, model, opt, _pointer_batches(gen), 220, loss_fn=F.nll_loss, alter=alter)
    finite = _finite(ctx.losses)
    ctx.check("finite until 180, not at 180", all(finite[:180]) and not finite[180])
    ctx.check("learned before", _mean(ctx.losses[170:180]) < 0.7 * _mean(ctx.losses[:10]))
    # masked_fill passes no gradient to the masked scores: the NaN stays in that step's loss
    ctx.check("weights stayed finite", all(bool(p.isfinite().all()) for p in model.parameters()))


# -- Siamese LSTM with a contrastive margin loss ---------------------------------------------------


class SiameseLSTM(nn.Module):
    def __init__(self, vocab: int = 128, dim: int = 16, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.encoder = nn.LSTM(dim, hidden, batch_first=True)
        self.proj = nn.Linear(hidden, 16)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.encoder(self.embed(x))
        return self.proj(h[-1])

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        return (self.encode(pair[:, 0]) - self.encode(pair[:, 1])).norm(dim=-1)


def _pair_batches(gen: torch.Generator, batch: int = 32, length: int = 16):
    """Pairs of byte windows: similar (label 1) if the second is the first shifted by 2 bytes."""
    from scenarios.common import text_bytes

    data = text_bytes() % 128
    while True:
        a = torch.randint(0, len(data) - length - 4, (batch,), generator=gen)
        same = torch.rand(batch, generator=gen) < 0.5
        b = torch.where(same, a + 2, torch.randint(0, len(data) - length - 4, (batch,)))
        idx = torch.arange(length)
        yield torch.stack([data[a[:, None] + idx], data[b[:, None] + idx]], 1), same.float()


def contrastive(dist: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    return (same * dist**2 + (1 - same) * F.relu(margin - dist) ** 2).mean()


@scenario(
    "siamese_lstm",
    "adam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="one batch's labels arrive as 0/255 bytes: a 255x gradient fills Adam's second moment",
)
def h10_siamese_label_bytes(ctx: Context) -> None:
    gen = seeded(1009)
    model = SiameseLSTM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.999))

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 120:
            y = y * 255.0
        return x, y

    previous: list[torch.Tensor] = []
    moved: list[float] = []

    def before(step: int) -> None:  # the size of the update the last step took
        now = torch.cat([p.detach().flatten() for p in model.parameters()])
        if previous:
            moved.append(float((now - previous[0]).norm()))
        previous[:] = [now]

    fit(
        ctx,
        model,
        opt,
        _pair_batches(gen),
        320,
        loss_fn=contrastive,
        alter=alter,
        before=before,
        classifier=False,
    )
    g = ctx.grad_norms
    ctx.check("gradient jumped 30x at 120", g[120] > 30 * max(g[100:120]))
    # moved[i] is step i's update; after the spike's momentum (~50 steps) the updates stay small
    # (the same run without the bad batch: they shrink 1.2x over the same span)
    ctx.check("updates shrank 2x", _mean(moved[180:220]) < _mean(moved[80:120]) / 2)
    ctx.check("no NaN", all(_finite(ctx.losses)))


# -- conditional VAE -------------------------------------------------------------------------------


class CVAE(nn.Module):
    def __init__(self, latent: int = 8) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(74, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU())
        self.mu = nn.Linear(64, latent)
        self.logvar = nn.Linear(64, latent)
        self.dec = nn.Sequential(nn.Linear(latent + 10, 128), nn.ReLU(), nn.Linear(128, 64))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c = F.one_hot(y, 10).float()
        h = self.enc(torch.cat([x, c], 1))
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.dec(torch.cat([z, c], 1)), mu, logvar


def _cvae_loss(model: CVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    recon, mu, logvar = model(x, y)
    rec = F.binary_cross_entropy_with_logits(recon, x, reduction="sum") / len(x)
    kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum() / len(x)
    return rec + kl


@scenario(
    "cvae",
    "adamax",
    "loss_of_plasticity",
    where=("enc.2", "enc.3"),
    diverges=None,
    heldout=True,
    onset=150,
    note="a resume loads enc.2's bias from a checkpoint saved in a different unit (x-64)",
)
def h10_cvae_resume_kills_encoder(ctx: Context) -> None:
    gen = seeded(1010)
    model = CVAE()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    dead: list[float] = []
    enc_grad: list[float] = []
    for step in range(320):
        if step == 150:
            with torch.no_grad():
                model.enc[2].bias.sub_(64.0)
        x, y = next(batches)
        loss = _cvae_loss(model, x, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        enc_grad.append(float(model.enc[2].weight.grad.norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 0:
            with torch.no_grad():
                feats = model.enc[:4](torch.cat([x, F.one_hot(y, 10).float()], 1))
            dead.append(dead_fraction(feats))
    ctx.check("enc.3 mostly alive before 150", max(dead[5:15]) < 0.6)
    ctx.check("enc.3 all dead after", min(dead[16:]) > 0.95)
    ctx.check("enc.2 got gradient before", min(enc_grad[:150]) > 0)
    ctx.check("enc.2 got none after", max(enc_grad[151:]) == 0)


# -- MADE: masked autoencoder for density estimation -----------------------------------------------


class MaskedLinear(nn.Linear):
    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Binary MADE on 64 binarised digit pixels (one hidden layer order-preserving masks)."""

    def __init__(self, d: int = 64, hidden: int = 256) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        order = torch.arange(1, d + 1)
        deg = torch.randint(1, d, (hidden,), generator=g)
        self.fc1 = MaskedLinear(d, hidden, deg[:, None] >= order[None])
        self.fc2 = MaskedLinear(hidden, hidden, deg[:, None] >= deg[None])
        self.out = MaskedLinear(hidden, d, order[:, None] > deg[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _binary_digits(gen: torch.Generator):
    for x, _ in digit_batches(gen):
        b = (x > 0.5).float()
        yield b, b


def _bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target, reduction="sum") / len(target)


@scenario(
    "made",
    "adam",
    "amp_overflow",
    where=(),
    diverges=None,
    heldout=True,
    onset=0,
    note="fp16 autocast with a GradScaler started at 2**24 and growing every 20 steps",
)
def h10_made_amp_scaler(ctx: Context) -> None:
    gen = seeded(1011)
    model = MADE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=20)
    fit(
        ctx,
        model,
        opt,
        _binary_digits(gen),
        200,
        loss_fn=_bce,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("the scaler backed off at least 5 times", drops >= 5)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.8 * _mean(ctx.losses[:10]))


# -- FT-Transformer-style tabular transformer -----------------------------------------------------


class FTTransformer(nn.Module):
    """Each feature becomes a token (its value times a learned vector plus a bias); a CLS
    token is read out after a small transformer encoder."""

    def __init__(self, features: int, classes: int, dim: int = 16) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(features, dim) * 0.3)
        self.bias = nn.Parameter(torch.zeros(features, dim))
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[..., None] * self.weight + self.bias
        tokens = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        return self.head(self.encoder(tokens)[:, 0])


def _tabular(name: str, gen: torch.Generator, batch: int = 32):
    from sklearn import datasets

    d = getattr(datasets, f"load_{name}")()
    raw = torch.tensor(d.data, dtype=torch.float32)
    x = (raw - raw.mean(0)) / raw.std(0)
    y = torch.tensor(d.target)

    def batches(raw_at: int | None = None):
        step = 0
        while True:
            order = torch.randperm(len(y), generator=gen)
            for i in range(0, len(y) - batch + 1, batch):
                idx = order[i : i + batch]
                # a bad batch: the standardisation was skipped for it (a cache miss upstream)
                yield (raw[idx] if step == raw_at else x[idx]), y[idx]
                step += 1

    return batches


@scenario(
    "ft_transformer",
    "adam",
    "data_outlier",
    diverges=160,
    heldout=True,
    onset=160,
    note="one wine batch skipped standardisation (proline ~1000)",
)
def h10_ft_wine_unscaled_batch(ctx: Context) -> None:
    gen = seeded(1012)
    model = FTTransformer(13, 3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    # the stream's 161st batch is step 160's: fit draws a probe batch first
    fit(ctx, model, opt, _tabular("wine", gen)(raw_at=161), 240)
    ctx.check("loss spiked at 160", ctx.losses[160] > 5 * max(ctx.losses[150:160]))


@scenario("ft_transformer", "radam", "healthy", heldout=True)
def h10_ft_iris_healthy(ctx: Context) -> None:
    gen = seeded(1013)
    model = FTTransformer(4, 3)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _tabular("iris", gen, batch=30)(), 200)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.5 * _mean(ctx.losses[:10]))


# -- KAN-style RBF-expansion network --------------------------------------------------------------


class RBFKANLayer(nn.Module):
    """Each input is expanded on a grid of Gaussian bumps; a linear map mixes the expansions
    (a Kolmogorov-Arnold layer with radial basis functions instead of B-splines)."""

    def __init__(self, n_in: int, n_out: int, grid: int = 6) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(-2, 2, grid))
        self.norm = nn.LayerNorm(n_in)
        self.mix = nn.Linear(n_in * grid, n_out)
        self.base = nn.Linear(n_in, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm(x)
        phi = torch.exp(-((z[..., None] - self.centers) ** 2))
        return self.mix(phi.flatten(1)) + self.base(F.silu(z))


class KAN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList([RBFKANLayer(64, 32), RBFKANLayer(32, 32), nn.Linear(32, 10)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


@scenario(
    "kan_rbf",
    "sgd_mom",
    "exploding_gradients",
    where=("layers.2",),
    diverges="auto",
    heldout=True,
    onset=0,
    note="weight decay with the wrong sign on the output layer's group: its weights grow",
)
def h10_kan_negative_decay_head(ctx: Context) -> None:
    gen = seeded(1014)
    model = KAN()
    head = list(model.layers[2].parameters())
    head_norm = float(model.layers[2].weight.detach().norm())
    body = [p for n, p in model.named_parameters() if not n.startswith("layers.2")]
    opt = torch.optim.SGD(
        [{"params": body}, {"params": head, "weight_decay": -0.03}], lr=0.05, momentum=0.9
    )
    fit(ctx, model, opt, digit_batches(gen), 300)
    g = [v if math.isfinite(v) else 0.0 for v in ctx.grad_norms]
    ctx.check("gradient grew 40x", max(g) > 40 * _mean(g[20:40]))
    ctx.check("head weights grew", model.layers[2].weight.norm() > 5 * head_norm)


# -- ResNet-18-like CNN with BatchNorm -------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet18ish(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        self.layer1 = nn.Sequential(BasicBlock(width, width, 1), BasicBlock(width, width, 1))
        self.layer2 = nn.Sequential(
            BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 2 * width, 1)
        )
        self.fc = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x.reshape(-1, 1, 8, 8)))
        h = self.layer2(self.layer1(h))
        return self.fc(h.mean((2, 3)))


@scenario(
    "resnet18ish",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=0,
    note="linear warm-up to 10.0 (the peak 0.1 typed as 10.0) over 600 steps",
)
def h10_resnet_warmup_overshoot(ctx: Context) -> None:
    gen = seeded(1015)
    model = ResNet18ish()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 10.0 * min(1.0, (step + 1) / 600)

    fit(ctx, model, opt, digit_batches(gen, 32), 320, before=warmup)
    ctx.check("trained early", min(ctx.losses[:60]) < 0.7 * ctx.losses[0])
    ctx.check("then broke", _mean(ctx.losses[-20:]) > 2 * min(ctx.losses[:60]))


@scenario("resnet18ish", "sgd_mom", "healthy", heldout=True)
def h10_resnet_digits_healthy(ctx: Context) -> None:
    gen = seeded(1016)
    model = ResNet18ish()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    fit(ctx, model, opt, digit_batches(gen, 64), 200)
    ctx.check("loss fell", _mean(ctx.losses[-10:]) < 0.3 * _mean(ctx.losses[:10]))


# -- GLU MLP language model ------------------------------------------------------------------------


class GLULM(nn.Module):
    """A fixed-window MLP language model: the last 8 tokens' embeddings, a GLU layer, a head."""

    def __init__(self, vocab: int = 128, dim: int = 16, window: int = 8, hidden: int = 128):
        super().__init__()
        self.window = window
        self.embed = nn.Embedding(vocab, dim)
        self.glu = nn.Linear(window * dim, 2 * hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x)  # (b, t, d)
        padded = F.pad(e, (0, 0, self.window - 1, 0))
        ctx = padded.unfold(1, self.window, 1).transpose(2, 3).flatten(2)  # (b, t, w*d)
        return self.head(F.glu(self.glu(ctx), dim=-1))


@scenario(
    "glu_lm",
    "adam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=100,
    note="a mis-tokenised shard is mixed in more and more from step 100: targets become noise",
)
def h10_glu_lm_corrupt_shard_creeps_in(ctx: Context) -> None:
    gen = seeded(1018)
    model = GLULM()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    noise = torch.Generator().manual_seed(18)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        share = min(max((step - 100) / 250, 0.0), 1.0)  # the sampler's weight for the bad shard
        bad = torch.rand(y.shape, generator=noise) < share
        return x, torch.where(bad, torch.randint(0, 128, y.shape, generator=noise), y)

    fit(ctx, model, opt, text_batches(gen), 400, loss_fn=lm_loss, alter=alter, classifier=False)
    ctx.check("loss fell first", _mean(ctx.losses[90:100]) < 0.7 * _mean(ctx.losses[:10]))
    ctx.check("then climbed", _mean(ctx.losses[-10:]) > 1.8 * _mean(ctx.losses[90:100]))
