"""A second held-out set: model families and setups the rest of the collection does not have.

A Hugging Face Llama built from a ``LlamaConfig``, a ViT-style patch transformer on
``nn.TransformerEncoderLayer``, a residual CNN with BatchNorm, a 1-D conv net
on generated signals, an MSE autoencoder, and recurrent nets over ``nn.Embedding`` tokens;
optimizers SGD, Nesterov momentum, Adam, AdamW, RMSprop, Adagrad and steadygrad's AdEMAMix.

Every scenario here is ``heldout=True`` and was written without reading steadygrad's
detectors, rules or monitor internals; each was adjusted only until its own check held (the
fault really happened) or, for a healthy control, until it trained normally.
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

# -- model families -------------------------------------------------------------------------------


def hf_llama(vocab: int = 128, dim: int = 32, layers: int = 2, heads: int = 2, context: int = 64):
    """A Hugging Face Llama causal LM built from a config (no download)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=context,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def llama_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(input_ids=x).logits


class PatchViT(nn.Module):
    """A ViT-style classifier for 8x8 digits: 2x2 patches (16 tokens), a class token, learned
    positions, pre-LN ``nn.TransformerEncoderLayer`` blocks (batch_first), a linear head."""

    def __init__(self, dim: int = 32, heads: int = 2, layers: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Linear(4, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, 17, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        img = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        t = self.patch(img)
        return torch.cat([self.cls.expand(len(t), -1, -1), t], 1) + self.pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(self.tokens(x)))[:, 0])


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.short(x))


class ResNetSmall(nn.Module):
    """A ResNet-ish CNN for 8x8 digits: stem, two residual stages, global pooling, head."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.layer1 = ResBlock(width, width)
        self.layer2 = ResBlock(width, 2 * width, stride=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer2(self.layer1(self.stem(x.reshape(-1, 1, 8, 8))))
        return self.head(h.mean((2, 3)))


class Standardize(nn.Module):
    """Per-sample standardisation of a raw signal: (x - mean) / std (no epsilon: the bug)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        return (x - mean) / x.std(-1, keepdim=True)


class SignalNet(nn.Module):
    """A 1-D conv net over (batch, length) signals: standardise, two conv layers, pool, head."""

    def __init__(self, width: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.standardize(x)[:, None]
        h = F.relu(self.conv1(h))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def signal_batches(gen: torch.Generator, batch: int = 32, length: int = 64):
    """Noisy sine waves; the class is the frequency band (4 classes), amplitude and offset
    vary per sample (which is why the net standardises each one)."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        freq = (y.float() + 1 + 0.3 * torch.rand(batch, generator=gen)) * 2 * math.pi / 32
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        amp = 0.5 + 3 * torch.rand(batch, 1, generator=gen)
        offset = 5 * torch.randn(batch, 1, generator=gen)
        noise = 0.3 * torch.randn(batch, length, generator=gen)
        yield offset + amp * torch.sin(freq[:, None] * t + phase) + noise, y


class AutoEncoder(nn.Module):
    """An MLP autoencoder for 8x8 digits (MSE reconstruction, a regression output)."""

    def __init__(self, hidden: int = 96, code: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, code), nn.ReLU()
        )
        self.decoder = nn.Sequential(nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def reconstruction_batches(gen: torch.Generator, batch: int = 64):
    for x, _ in digit_batches(gen, batch):
        yield x, x


class RNNLanguageModel(nn.Module):
    """Byte-level language model: ``nn.Embedding`` -> tanh ``nn.RNN`` -> linear head."""

    def __init__(self, vocab: int = 128, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.RNN(dim, hidden, batch_first=True, nonlinearity="tanh")
        self.head = nn.Linear(hidden, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(idx))[0])


class GRUClassifier(nn.Module):
    """Token sequence classifier: ``nn.Embedding`` -> GRU -> linear head on the last state,
    logits divided by ``temperature``."""

    def __init__(
        self, vocab: int = 64, dim: int = 32, hidden: int = 64, classes: int = 10, temperature=1.0
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(self.embed(idx))[0][:, -1]) / self.temperature


def _full_batch(x: torch.Tensor, y: torch.Tensor):
    while True:
        yield x, y


def _snapshot(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


# -- attention-logit growth -----------------------------------------------------------------------


def llama_qk_logit_max(model: nn.Module, idx: torch.Tensor) -> float:
    """Largest causal |q.k|/sqrt(head_dim) over the Llama's layers and heads, from the outputs of
    each layer's q_proj and k_proj (before the rotary embedding, which only rotates q and k)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        mod.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o.detach()))
        for name, mod in model.named_modules()
        if name.endswith(("q_proj", "k_proj"))
    ]
    with torch.no_grad():
        model(input_ids=idx)
    for h in hooks:
        h.remove()
    heads = model.config.num_attention_heads
    t = idx.shape[1]
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    top = 0.0
    for name in [n for n in seen if n.endswith("q_proj")]:
        q, k = seen[name], seen[name[: -len("q_proj")] + "k_proj"]
        b = q.shape[0]
        q, k = (z.reshape(b, t, heads, -1).transpose(1, 2) for z in (q, k))
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        top = max(top, float(s.masked_fill(~mask, 0).abs().amax()))
    return top


@scenario(
    "llama",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q_proj/k_proj in a parameter group with 30x the learning rate, no weight decay",
)
def ho_attn_growth_llama_adamw(ctx: Context) -> None:
    """A Llama whose query and key projections sit in a parameter group meant for a smaller
    model's learning rate (30x too high), no weight decay and no QK-norm: the attention logits
    grow by orders of magnitude while the rest trains normally."""
    gen = seeded(201)
    model = hf_llama(dim=48)
    fast = [
        p for n, p in model.named_parameters() if n.endswith(("q_proj.weight", "k_proj.weight"))
    ]
    ids = {id(p) for p in fast}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 2e-3}, {"params": fast, "lr": 6e-2}], weight_decay=0.0
    )
    probe, _ = next(text_batches(seeded(1)))
    start = llama_qk_logit_max(model, probe)
    fit(ctx, model, opt, text_batches(gen), 200, loss_fn=lm_loss, forward=llama_forward)
    ctx.check("q.k logits grew 30x", llama_qk_logit_max(model, probe) > 30 * start)


# -- output-logit divergence ----------------------------------------------------------------------


def mean_log_partition(logits: torch.Tensor) -> float:
    return float(torch.logsumexp(logits.float(), dim=-1).mean())


@scenario(
    "llama",
    "adam",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="muP-style output multiplier applied the wrong way: lm_head at 500x the base LR",
)
def ho_logit_drift_llama_head_lr(ctx: Context) -> None:
    """A width-transfer recipe that should divide the output layer's learning rate by 500
    multiplies it instead (2e-3 -> 1.0), with no z-loss and no weight decay: the output
    log-partition runs away from ~5 to tens and the loss jumps and recovers only slowly."""
    gen = seeded(202)
    model = hf_llama(dim=48)
    head = list(model.lm_head.parameters())
    ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.Adam([{"params": rest}, {"params": head, "lr": 2e-3 * 500}], lr=2e-3)
    probe, _ = next(text_batches(seeded(1)))
    with torch.no_grad():
        start = mean_log_partition(llama_forward(model, probe))
    fit(ctx, model, opt, text_batches(gen), 200, loss_fn=lm_loss, forward=llama_forward)
    with torch.no_grad():
        end = mean_log_partition(llama_forward(model, probe))
    ctx.check("|log Z| drifted by 20", abs(end - start) > 20)


# -- learning rate above the stability limit ------------------------------------------------------


@scenario(
    "resnet",
    "nesterov",
    "sharpness_above_limit",
    diverges=1,
    heldout=True,
    note="LR 15 with Nesterov momentum (meant 0.15): the first update blows the loss up 10x",
)
def ho_lr_fast_resnet_nesterov(ctx: Context) -> None:
    """BatchNorm keeps the conv weights scale-free, so the run never reaches NaN; the head and
    BatchNorm affine parameters take the hit and the loss sits 4-10x above chance."""
    gen = seeded(203)
    model = ResNetSmall(width=16)
    opt = torch.optim.SGD(model.parameters(), lr=15.0, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, digit_batches(gen, 64), 60)
    first = ctx.losses[0]
    ctx.check("loss 5x its start at step 1", ctx.losses[1] > 5 * first)
    ctx.check("never back under 2x its start", min(ctx.losses[1:]) > 2 * first)


@scenario(
    "conv1d",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="linear warm-up to a peak of 0.3 over 100 steps, without min(): keeps rising",
)
def ho_lr_warmup_nomin_conv1d_mom(ctx: Context) -> None:
    """Warm-up written as ``lr = peak * step / warmup`` without ``min(1, ...)``: the learning
    rate climbs linearly through the stability limit (around step 90) and keeps going; the
    loss spikes, recovers, spikes, and ends at chance."""
    gen = seeded(213)
    model = SignalNet()
    peak, warmup = 0.3, 100
    opt = torch.optim.SGD(model.parameters(), lr=peak, momentum=0.9)

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * (step + 1) / warmup  # the bug: no min(1, ...)

    fit(ctx, model, opt, signal_batches(gen), 250, before=schedule)
    ctx.check("ends near chance (ln 4)", sum(ctx.losses[-20:]) / 20 > 1.0)


# -- a data outlier -------------------------------------------------------------------------------


@scenario(
    "autoenc",
    "rmsprop",
    "data_outlier",
    diverges=120,
    heldout=True,
    onset=120,
    note="one batch arrives unnormalised (0..16 instead of 0..1)",
)
def ho_outlier_unscaled_ae_rmsprop(ctx: Context) -> None:
    gen = seeded(205)
    model = AutoEncoder()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 120:  # a shard written before the /16 scaling was added
            return x * 16.0, y * 16.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        reconstruction_batches(gen),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=alter,
    )
    ctx.check("loss spiked at 120", ctx.losses[120] > 20 * max(ctx.losses[110:120]))


# -- a NaN produced by one module on one bad sample -----------------------------------------------


@scenario(
    "conv1d",
    "adagrad",
    "nonfinite",
    where="standardize",
    diverges=113,
    heldout=True,
    onset=113,
    note="one flat signal (a stuck sensor): std 0, 0/0 in the standardisation",
)
def ho_nan_flat_signal_conv1d_adagrad(ctx: Context) -> None:
    gen = seeded(206)
    model = SignalNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 113:  # sample 9's sensor was stuck at its offset for the whole window
            x = x.clone()
            x[9] = x[9, 0]
        return x, y

    fit(ctx, model, opt, signal_batches(gen), 150, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 113, not after", all(finite[:113]) and not finite[113])


# -- exploding gradients --------------------------------------------------------------------------


@scenario(
    "embed_rnn",
    "sgd",
    "exploding_gradients",
    where="rnn",
    diverges=None,
    heldout=True,
    note="recurrent matrix initialised at gain 2.5, no gradient clipping",
)
def ho_exploding_rnn_lm_sgd(ctx: Context) -> None:
    """A byte-level tanh-RNN language model whose recurrent weights were initialised
    orthogonal with gain 2.5 (meant: 1.0) and trained without clipping: the gradient explodes
    through time at step 0 and again mid-run (a ~10^4x burst), which knocks the loss back up
    and training never regains the ground."""
    gen = seeded(207)
    model = RNNLanguageModel()
    nn.init.orthogonal_(model.rnn.weight_hh_l0, gain=2.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    fit(ctx, model, opt, text_batches(gen, batch=16, length=48), 150, loss_fn=lm_loss)
    median = sorted(ctx.grad_norms)[len(ctx.grad_norms) // 2]
    ctx.check("gradient norm over 100x its median", max(ctx.grad_norms) > 100 * median)
    ctx.check("and again after step 20", max(ctx.grad_norms[20:]) > 100 * median)


# -- dead units -----------------------------------------------------------------------------------


@scenario(
    "autoenc",
    "adam",
    "loss_of_plasticity",
    where=("encoder.2", "encoder.3"),
    diverges=None,
    heldout=True,
    onset=60,
    note="L1 sparsity penalty on the code switched on at step 60 with 1.0 (meant 1e-3)",
)
def ho_dead_code_l1_autoencoder(ctx: Context) -> None:
    """A sparse autoencoder whose L1 penalty on the ReLU code is switched on at step 60 with a
    coefficient of 1.0 instead of 1e-3: every code unit is pushed below zero and dies (the
    "dead latents" of sparse autoencoders); reconstruction stalls at predicting the mean."""
    gen = seeded(208)
    model = AutoEncoder()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    code: dict[str, torch.Tensor] = {}
    model.encoder.register_forward_hook(lambda m, i, o: code.__setitem__("c", o))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss + 1.0 * code["c"].abs().mean() if step >= 60 else loss

    fit(
        ctx,
        model,
        opt,
        reconstruction_batches(gen),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
        extra_loss=penalty,
    )
    x, _ = next(digit_batches(gen, 512))
    with torch.no_grad():
        dead = dead_fraction(model.encoder(x))
    ctx.check("most code units dead", dead >= 0.75)


# -- a frozen layer -------------------------------------------------------------------------------


@scenario(
    "resnet",
    "sg_ademamix",
    "update_ratio_out_of_range",
    where="layer1",
    diverges=None,
    heldout=True,
    note="requires_grad_(False) on the wrong block",
)
def ho_frozen_reqgrad_resnet_ademamix(ctx: Context) -> None:
    """A fine-tuning recipe meant to freeze the stem froze ``layer1`` instead; the optimizer
    still holds all parameters, layer1's just never get a gradient."""
    gen = seeded(209)
    model = ResNetSmall(width=16)
    model.layer1.requires_grad_(False)
    opt = sgo.AdEMAMix(model.parameters(), lr=1e-3, fused=False)
    before = [p.detach().clone() for p in model.layer1.parameters()]
    fit(ctx, model, opt, digit_batches(gen, 64), 160)
    ctx.check(
        "layer1 unchanged",
        all(torch.equal(a, b) for a, b in zip(before, model.layer1.parameters(), strict=True)),
    )
    ctx.check("the rest trained", ctx.losses[-1] < 0.5 * ctx.losses[0])


# -- softmax collapse -----------------------------------------------------------------------------


@scenario(
    "embed_rnn",
    "adam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="temperature 0.005 (meant 0.5) while memorising 96 sequences",
)
def ho_softmax_collapse_gru_temp(ctx: Context) -> None:
    """A GRU sequence classifier memorising a small fixed set (96 sequences, random labels)
    with its logits divided by 0.005: the float32 softmax of half the rows saturates to
    exactly one-hot (their gradient is exactly zero)."""
    gen = seeded(210)
    x = torch.randint(0, 64, (96, 12), generator=gen)
    y = torch.randint(0, 10, (96,), generator=gen)
    model = GRUClassifier(temperature=0.005)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, _full_batch(x, y), 250)
    with torch.no_grad():
        ctx.check("40% of the rows collapsed", collapsed_fraction(model(x), y) > 0.4)


# -- Adam's second moment poisoned ----------------------------------------------------------------


@scenario(
    "vit",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=60,
    note="one step's loss left multiplied by a static loss scale of 2**14",
)
def ho_adam_poisoned_vit(ctx: Context) -> None:
    """A hand-rolled static loss scale (2**14) is left un-divided on one step after a resume:
    Adam's second moment holds that gradient for hundreds of steps and the updates shrink."""
    gen = seeded(211)
    model = PatchViT(dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    snaps = []

    def track(step: int) -> None:
        if step in (20, 55, 120, 155):
            snaps.append(_snapshot(model))

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 2.0**14 if step == 60 else loss

    fit(ctx, model, opt, digit_batches(gen), 200, before=track, extra_loss=bug)
    before, after = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("updates shrank 3x after the spike", after < before / 3)


# -- slow loss divergence -------------------------------------------------------------------------


@scenario(
    "conv1d",
    "sg_ademamix",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=60,
    note="label noise that grows from 0 to 100% between steps 60 and 200",
)
def ho_label_noise_conv1d_ademamix(ctx: Context) -> None:
    """A data-pipeline bug (a label lookup table updated in place) corrupts a growing share of
    labels from step 60: by step 200 every label is random, and the training loss climbs back
    from near zero to chance and beyond."""
    gen = seeded(212)
    model = SignalNet()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3, fused=False)
    noise = torch.Generator().manual_seed(212)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        share = min(1.0, max(0.0, (step - 60) / 140))
        flip = torch.rand(len(y), generator=noise) < share
        return x, torch.where(flip, torch.randint(0, 4, y.shape, generator=noise), y)

    fit(ctx, model, opt, signal_batches(gen), 240, alter=alter)


# -- healthy controls -----------------------------------------------------------------------------


@scenario("llama", "adamw", "healthy", heldout=True, note="warm-up + cosine, weight decay 0.1")
def ho_healthy_llama_warmup_cosine(ctx: Context) -> None:
    gen = seeded(221)
    model = hf_llama(dim=48)
    peak = 3e-3
    opt = torch.optim.AdamW(model.parameters(), lr=peak, weight_decay=0.1)

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 25)
        opt.param_groups[0]["lr"] = peak * warm * (0.55 + 0.45 * math.cos(math.pi * step / 220))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        220,
        loss_fn=lm_loss,
        forward=llama_forward,
        before=schedule,
    )
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.7 * sum(ctx.losses[:10]))


@scenario("vit", "adam", "healthy", heldout=True, note="Adam from step 0, no warm-up")
def ho_healthy_vit_adam(ctx: Context) -> None:
    gen = seeded(222)
    model = PatchViT(dim=32)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, digit_batches(gen), 200)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


@scenario("resnet", "nesterov", "healthy", heldout=True)
def ho_healthy_resnet_nesterov(ctx: Context) -> None:
    gen = seeded(223)
    model = ResNetSmall(width=16)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    fit(ctx, model, opt, digit_batches(gen, 64), 160)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


@scenario("autoenc", "rmsprop", "healthy", heldout=True, note="MSE regression output")
def ho_healthy_autoencoder_rmsprop(ctx: Context) -> None:
    gen = seeded(224)
    model = AutoEncoder()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, reconstruction_batches(gen), 200, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.7 * sum(ctx.losses[:10]))
