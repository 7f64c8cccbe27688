"""Held-out set 30 (``h30_``): twelve induced instabilities and four healthy controls.

Families: Hugging Face Zamba2 (hybrid Mamba2 + shared attention) causal LM, mT5 encoder-decoder,
I-JEPA image classifier, LayoutLM masked LM (all-zero bounding boxes) and Moonshine speech
encoder-decoder on generated tones, all from configs; a minGRU language model, a Caser CNN
sequential recommender on generated sessions, a DeepLab-style ASPP segmentation net on generated
scenes, a StyleGAN-style modulated-convolution generator (fp16 autocast), a SAINT tabular
transformer with row and column attention (breast cancer), a Reptile meta-learner on generated
sine tasks and a CenterNet-style heatmap detector on generated images.
Optimizers: SGD, momentum, Nesterov, Adam, AdamW, NAdam, RAdam, RMSprop, Adagrad, Adamax and
steadygrad.optim's Lion and AdaBelief.

Written without reading steadygrad's detectors, diagnosis or monitor, and never run on
steadygrad while it was written: each scenario was adjusted with a stand-in context that attaches
nothing, only until its own checks held (or, for a healthy control, until it trained normally).
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
    digits,
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face models from configs ------------------------------------------------------------


def _zamba2(vocab: int = 64):
    from transformers import Zamba2Config, Zamba2ForCausalLM

    config = Zamba2Config(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        layers_block_type=["mamba", "hybrid"],
        hybrid_layer_ids=[1],
        num_mem_blocks=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        mamba_d_state=8,
        mamba_headdim=8,
        n_mamba_heads=8,
        mamba_expand=2,
        chunk_size=16,
        use_mem_rope=False,
        use_shared_attention_adapter=False,
        adapter_rank=4,
        attention_dropout=0.0,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return Zamba2ForCausalLM(config)


def _zamba2_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _mt5(vocab: int = 64):
    from transformers import MT5Config, MT5ForConditionalGeneration

    config = MT5Config(
        vocab_size=vocab,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        dropout_rate=0.0,
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return MT5ForConditionalGeneration(config)


def _ijepa():
    from transformers import IJepaConfig, IJepaForImageClassification

    config = IJepaConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return IJepaForImageClassification(config)


def _layoutlm(vocab: int = 64):
    from transformers import LayoutLMConfig, LayoutLMForMaskedLM

    config = LayoutLMConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        max_2d_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return LayoutLMForMaskedLM(config)


def _moonshine(vocab: int = 16):
    from transformers import MoonshineConfig, MoonshineForConditionalGeneration

    config = MoonshineConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        encoder_num_hidden_layers=2,
        decoder_num_hidden_layers=1,
        encoder_num_attention_heads=2,
        decoder_num_attention_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        attention_dropout=0.0,
    )
    return MoonshineForConditionalGeneration(config)


# -- generated data ------------------------------------------------------------------------------


def _masked_lm_batches(gen: torch.Generator, vocab: int = 64, batch: int = 16, length: int = 24):
    """Byte windows with 15% of tokens replaced by the mask id 3; labels -100 elsewhere."""
    for x, _ in text_batches(gen, batch=batch, length=length, vocab=vocab):
        x = torch.where(x < 4, x + 4, x)  # ids 0..3 are special
        mask = torch.rand(x.shape, generator=gen) < 0.15
        mask[:, 0] = True
        yield torch.where(mask, 3, x), torch.where(mask, x, -100)


_TONE_TOKENS = torch.tensor(
    [[3, 4, 5, 6, 2], [7, 8, 9, 10, 2], [11, 12, 13, 14, 2], [4, 7, 11, 15, 2]]
)


def _tone_batches(gen: torch.Generator, batch: int = 8, samples: int = 1600):
    """Generated 'utterances': one of four tone pairs plus noise; the transcript is the class's
    fixed five-token sequence."""
    t = torch.arange(samples) / 16000.0
    freqs = torch.tensor([[300.0, 900.0], [500.0, 1500.0], [700.0, 1100.0], [400.0, 1300.0]])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        phase = 6.283 * torch.rand(batch, 2, 1, generator=gen)
        f = freqs[y][:, :, None]
        wave = torch.sin(6.283 * f * t + phase).sum(1)
        wave = 0.3 * wave + 0.05 * torch.randn(batch, samples, generator=gen)
        yield wave, _TONE_TOKENS[y]


def _seq2seq_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def _digit_grid(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, 1, 8, 8)


# -- 1. Zamba2: a warm-up that overshoots --------------------------------------------------------


@scenario(
    "hf_zamba2_hybrid_lm",
    "adamw",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=60,
    note="linear warm-up to a peak 100x the recipe's (a misplaced zero)",
)
def h30_zamba2_warmup_overshoot(ctx: Context) -> None:
    gen = seeded(3001)
    model = _zamba2()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.01)
    peak, warmup = 1.0, 400  # the recipe said 1e-2 over 400 steps

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * min(1.0, (step + 1) / warmup)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32, vocab=64),
        420,
        loss_fn=lm_loss,
        forward=_zamba2_forward,
        before=schedule,
        classifier=False,
    )
    best = min(ctx.losses[:150])
    ctx.check("learned first (loss < 3.6 before 150)", best < 3.6)
    ctx.check("climbed past 2x its best", max(ctx.losses[150:]) > 2 * best)


@scenario("hf_zamba2_hybrid_lm", "adamw", "healthy", heldout=True)
def h30_zamba2_healthy(ctx: Context) -> None:
    gen = seeded(3002)
    model = _zamba2()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)

    def schedule(step: int) -> None:
        warm = min(1.0, (step + 1) / 40)
        opt.param_groups[0]["lr"] = 2e-3 * warm * (0.55 + 0.45 * math.cos(math.pi * step / 300))

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8, length=32, vocab=64),
        300,
        loss_fn=lm_loss,
        forward=_zamba2_forward,
        before=schedule,
        classifier=False,
    )
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.75 * sum(ctx.losses[:5]) / 5)


# -- 2. mT5: the output head's logits run away ---------------------------------------------------


@scenario(
    "hf_mt5_seq2seq",
    "nadam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    onset=100,
    note="a refactor at step 100 trains with nll_loss on raw logits (no log_softmax)",
)
def h30_mt5_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(3003)
    model = _mt5()
    nn.init.normal_(model.lm_head.weight, std=0.02)  # a fresh head, as for a new vocabulary
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    last: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []

    def source():
        for x, _ in text_batches(gen, batch=8, length=16, vocab=64):
            targets[:] = [x.flip(1)]
            yield x, x.flip(1)

    batches = source()

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = m(input_ids=x, decoder_input_ids=F.pad(x.flip(1)[:, :-1], (1, 0))).logits
        last[:] = [logits]
        return logits

    def refactored_loss(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step < 100:
            return loss
        logits = last[0].float()
        # the refactor's loss: nll_loss on raw logits (log_softmax forgotten)
        return F.nll_loss(logits.reshape(-1, logits.shape[-1]), targets[0].reshape(-1))

    x0, _ = next(text_batches(seeded(1), batch=8, length=16, vocab=64))
    with torch.no_grad():
        start = float(forward(model, x0).abs().max())
    fit(
        ctx,
        model,
        opt,
        batches,
        400,
        loss_fn=_seq2seq_loss,
        forward=forward,
        extra_loss=refactored_loss,
        classifier=False,
    )
    with torch.no_grad():
        end = float(forward(model, x0).abs().max())
    ctx.check(f"max |logit| grew 10x ({start:.3g} -> {end:.3g})", end > 10 * start and end > 50)


# -- 3. I-JEPA: softmax collapse on a memorised subset -------------------------------------------


@scenario(
    "hf_ijepa_classifier",
    "adam",
    "softmax_collapse",
    where="classifier",
    diverges=None,
    heldout=True,
    note="beta2 0.95 and no weight decay on 96 images it memorises: margins keep growing",
)
def h30_ijepa_softmax_collapse(ctx: Context) -> None:
    seeded(3004)
    model = _ijepa()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    x, y = digits()
    x, y = x[:96], y[:96]

    def batches():
        while True:
            yield x, y

    def forward(m: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        return m(pixel_values=_digit_grid(xb)).logits

    fit(ctx, model, opt, batches(), 600, forward=forward)
    with torch.no_grad():
        share = collapsed_fraction(forward(model, x), y)
    ctx.check(f"half the rows collapsed ({share:.2f})", share >= 0.5)


# -- 4. LayoutLM: attention logits grow ----------------------------------------------------------


def _attention_logit_max(model: nn.Module, ids: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(d) over layers, read from the query and key projections."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith("attention.self.query") or name.endswith("attention.self.key"):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o)))
    with torch.no_grad():
        model(input_ids=ids, bbox=torch.zeros(*ids.shape, 4, dtype=torch.long))
    for h in hooks:
        h.remove()
    top = 0.0
    for name, q in seen.items():
        if name.endswith("query"):
            k = seen[name[: -len("query")] + "key"]
            b, t, d = q.shape
            q4, k4 = (z.reshape(b, t, 2, d // 2).transpose(1, 2) for z in (q, k))
            top = max(top, float((q4 @ k4.transpose(-1, -2)).abs().max()) / math.sqrt(d // 2))
    return top


@scenario(
    "hf_layoutlm_masked_lm",
    "sg_lion",
    "attention_logit_growth",
    where=(
        "layoutlm.encoder.layer.0.attention.self",
        "layoutlm.encoder.layer.1.attention.self",
    ),
    diverges=None,
    heldout=True,
    note="query/key got a 20x learning-rate multiplier meant for the new 2-D position tables",
)
def h30_layoutlm_qk_lr_attention(ctx: Context) -> None:
    gen = seeded(3005)
    model = _layoutlm()
    qk = [p for n, p in model.named_parameters() if ".query." in n or ".key." in n]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = sgo.Lion([{"params": rest}, {"params": qk, "lr": 6e-3}], lr=3e-4, fused=False)
    batches = _masked_lm_batches(gen)
    probe, _ = next(_masked_lm_batches(seeded(2)))
    start = _attention_logit_max(model, probe)

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return m(input_ids=x, bbox=torch.zeros(*x.shape, 4, dtype=torch.long)).logits

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    fit(ctx, model, opt, batches, 400, loss_fn=loss_fn, forward=forward, classifier=False)
    end = _attention_logit_max(model, probe)
    ctx.check(f"attention logits grew 20x ({start:.3g} -> {end:.3g})", end > 20 * start)


# -- 5. Moonshine: a layer left frozen -----------------------------------------------------------


@scenario(
    "hf_moonshine_speech_seq2seq",
    "rmsprop",
    "update_ratio_out_of_range",
    where=(
        "model.encoder.layers.0",
        "model.encoder.layers.0.self_attn.q_proj",
        "model.encoder.layers.0.self_attn.k_proj",
        "model.encoder.layers.0.self_attn.v_proj",
        "model.encoder.layers.0.self_attn.o_proj",
        "model.encoder.layers.0.mlp.fc1",
        "model.encoder.layers.0.mlp.fc2",
    ),
    diverges=None,
    heldout=True,
    note="gradual unfreezing whose unfreeze step (5000) lies past the end of the run",
)
def h30_moonshine_frozen_encoder_layer(ctx: Context) -> None:
    gen = seeded(3006)
    model = _moonshine()
    frozen = list(model.model.encoder.layers[0].parameters())
    ids = {id(p) for p in frozen}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.RMSprop([{"params": rest}, {"params": frozen, "lr": 0.0}], lr=1e-3)
    before = model.model.encoder.layers[0].mlp.fc1.weight.detach().clone()

    def forward(m: nn.Module, wave: torch.Tensor) -> torch.Tensor:
        return m(input_values=wave, decoder_input_ids=_shift(ctx_labels[0])).logits

    ctx_labels: list[torch.Tensor] = [torch.zeros(1)]

    def batches():
        for wave, labels in _tone_batches(gen):
            ctx_labels[0] = labels
            yield wave, labels

    fit(ctx, model, opt, batches(), 200, loss_fn=_seq2seq_loss, forward=forward, classifier=False)
    ctx.check(
        "encoder layer 0 unchanged",
        torch.equal(before, model.model.encoder.layers[0].mlp.fc1.weight),
    )
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


def _shift(labels: torch.Tensor) -> torch.Tensor:
    return F.pad(labels[:, :-1], (1, 0), value=1)


# -- 6. minGRU LM: a max-norm constraint written upside down -------------------------------------


class MinGRU(nn.Module):
    """h_t = (1 - z_t) h_{t-1} + z_t h~_t with gate and candidate from x_t only (minGRU)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.to_gate = nn.Linear(dim, dim)
        self.to_hidden = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, cand = torch.sigmoid(self.to_gate(x)), self.to_hidden(x)
        h, out = torch.zeros_like(x[:, 0]), []
        for t in range(x.shape[1]):
            h = (1 - z[:, t]) * h + z[:, t] * cand[:, t]
            out.append(h)
        return torch.stack(out, 1)


class MinGRULM(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.layers = nn.ModuleList(MinGRU(dim) for _ in range(layers))
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for layer in self.layers:
            x = x + layer(x)
        return self.head(x)


@scenario(
    "mingru_lm",
    "sgd",
    "exploding_gradients",
    where=("layers.1.to_hidden", "layers.1"),
    diverges="auto",
    heldout=True,
    onset=100,
    note="max-norm every 30 steps from 100 with the ratio inverted (w *= norm / max_norm)",
)
def h30_mingru_inverted_max_norm(ctx: Context) -> None:
    gen = seeded(3007)
    model = MinGRULM()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    w = model.layers[1].to_hidden.weight
    max_norm = 0.99 * float(w.detach().norm())

    def constrain(step: int) -> None:
        if step >= 100 and step % 30 == 0:
            with torch.no_grad():
                norm = float(w.norm())
                if norm > max_norm:
                    w.mul_(norm / max_norm)  # meant max_norm / norm

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=16, length=24, vocab=64),
        400,
        loss_fn=lm_loss,
        before=constrain,
        classifier=False,
    )
    g = ctx.grad_norms
    finite = [v for v in g if math.isfinite(v)]
    ctx.check("gradient norm grew 100x after 100", max(finite[100:]) > 100 * max(g[50:100]))


# -- 7. Caser: targets drift (a slow divergence) -------------------------------------------------


class Caser(nn.Module):
    """Caser: the last L item embeddings as an L x d image, horizontal and vertical filters."""

    def __init__(self, items: int = 50, users: int = 40, dim: int = 16, window: int = 5) -> None:
        super().__init__()
        self.items = nn.Embedding(items, dim)
        self.users = nn.Embedding(users, dim)
        self.horizontal = nn.ModuleList(nn.Conv2d(1, 4, (h, dim)) for h in range(1, window + 1))
        self.vertical = nn.Conv2d(1, 2, (window, 1))
        self.fc = nn.Linear(4 * window + 2 * dim, dim)
        self.out = nn.Linear(2 * dim, items)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        user, seq = x[:, 0], x[:, 1:]
        e = self.items(seq)[:, None]  # (B, 1, L, d)
        h = [F.relu(c(e)).squeeze(3).amax(2) for c in self.horizontal]
        v = self.vertical(e).flatten(1)
        z = F.relu(self.fc(torch.cat(h + [v], 1)))
        return self.out(torch.cat([z, self.users(user)], 1))


def _session_batches(gen: torch.Generator, batch: int = 64, items: int = 50, window: int = 5):
    """Each user steps through the catalogue with a stride of their own (plus 10% noise)."""
    stride = torch.randint(1, 6, (40,), generator=gen)
    while True:
        user = torch.randint(0, 40, (batch,), generator=gen)
        start = torch.randint(0, items, (batch,), generator=gen)
        seq = (start[:, None] + stride[user][:, None] * torch.arange(window + 1)) % items
        noise = torch.rand(seq.shape, generator=gen) < 0.1
        seq = torch.where(noise, torch.randint(0, items, seq.shape, generator=gen), seq)
        yield torch.cat([user[:, None], seq[:, :-1]], 1), seq[:, -1]


@scenario(
    "caser_recommender",
    "adagrad",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=100,
    note="from 100 a join on a stale id table swaps a growing share of targets for random items",
)
def h30_caser_target_drift(ctx: Context) -> None:
    gen = seeded(3008)
    model = Caser()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        share = min(1.0, max(0.0, (step - 100) / 600))
        hit = torch.rand(y.shape, generator=gen) < share
        return x, torch.where(hit, torch.randint(0, 50, y.shape, generator=gen), y)

    fit(ctx, model, opt, _session_batches(gen), 600, alter=alter)
    early = sum(ctx.losses[90:100]) / 10
    ctx.check("loss climbed 2x", sum(ctx.losses[-10:]) / 10 > 2 * early)


@scenario("caser_recommender", "adamax", "healthy", heldout=True)
def h30_caser_healthy(ctx: Context) -> None:
    gen = seeded(3009)
    model = Caser()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    fit(ctx, model, opt, _session_batches(gen), 400)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.6 * sum(ctx.losses[:20]))


# -- 8. DeepLab-style ASPP: one branch killed by a bad partial checkpoint load -------------------


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int = 3, dilation: int = 1) -> None:
        pad = dilation * (kernel // 2)
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel dilated convolutions plus image pooling."""

    def __init__(self, cin: int, cout: int, rates: tuple[int, ...] = (2, 4)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(cin, cout, 1)] + [ConvBNReLU(cin, cout, 3, r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU())
        self.project = ConvBNReLU(cout * (len(rates) + 2), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [b(x) for b in self.branches]
        feats.append(self.pool(x).expand(-1, -1, *x.shape[2:]))
        return self.project(torch.cat(feats, 1))


class ASPPSegmenter(nn.Module):
    def __init__(self, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(ConvBNReLU(1, width), ConvBNReLU(width, width))
        self.aspp = ASPP(width, width)
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.aspp(self.stem(x)))


def _scene_batches(gen: torch.Generator, batch: int = 16, size: int = 16):
    """Generated scenes: a bright square (class 1) and a dim disc (class 2) on noise."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        img = 0.2 * torch.randn(batch, 1, size, size, generator=gen)
        mask = torch.zeros(batch, size, size, dtype=torch.long)
        for i in range(batch):
            r, c, s = torch.randint(0, size - 5, (3,), generator=gen).tolist()
            sq = (yy >= r) & (yy < r + 3 + s % 3) & (xx >= c) & (xx < c + 3 + s % 3)
            cy, cx = torch.randint(3, size - 3, (2,), generator=gen).tolist()
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= 5) & ~sq
            img[i, 0] += 1.5 * sq + 0.7 * disc
            mask[i] = sq.long() + 2 * disc.long()
        yield img, mask


@scenario(
    "aspp_segmenter",
    "sgd_nesterov",
    "loss_of_plasticity",
    where=("aspp.branches.1", "aspp.branches.1.bn", "aspp.branches.1.conv", "aspp.branches.1.relu"),
    diverges=None,
    heldout=True,
    onset=120,
    note="at 120 a partial checkpoint load writes another model's BN shift into branch 1",
)
def h30_aspp_dead_branch(ctx: Context) -> None:
    gen = seeded(3010)
    model = ASPPSegmenter()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def bad_load(step: int) -> None:
        if step == 120:
            with torch.no_grad():
                model.aspp.branches[1].bn.bias.fill_(-30.0)

    fit(ctx, model, opt, _scene_batches(gen), 260, before=bad_load, classifier=False)
    x, _ = next(_scene_batches(gen, batch=32))
    model.eval()
    with torch.no_grad():
        h = model.aspp.branches[1](model.stem(x))
    model.train()
    ctx.check(f"branch 1 all dead ({dead_fraction(h):.2f})", dead_fraction(h) == 1.0)
    ctx.check("loss fell before 120", sum(ctx.losses[110:120]) < 0.7 * sum(ctx.losses[:10]))


# -- 9. StyleGAN-style modulated-convolution generator under fp16 autocast -----------------------


class ModConv(nn.Module):
    """Modulated convolution: a per-sample style scales the weight's input channels, then each
    output filter is demodulated to unit norm (StyleGAN2)."""

    def __init__(self, cin: int, cout: int, wdim: int, kernel: int = 3, demod: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.affine = nn.Linear(wdim, cin)
        nn.init.ones_(self.affine.bias)
        self.demod = demod
        self.pad = kernel // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        b, cin, h, wd = x.shape
        style = self.affine(w)
        weight = self.weight[None] * style[:, None, :, None, None]
        if self.demod:
            weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4), keepdim=True) + 1e-8)
        weight = weight.reshape(-1, cin, *weight.shape[3:])
        out = F.conv2d(x.reshape(1, -1, h, wd), weight.to(x.dtype), padding=self.pad, groups=b)
        return out.reshape(b, -1, h, wd)


class ModConvGenerator(nn.Module):
    """Class label + noise -> mapping MLP -> style w; constant 4x4 input, two modulated
    convolutions with an upsampling between, a 1x1 modulated to-image layer (8x8)."""

    def __init__(self, wdim: int = 32, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, wdim)
        self.mapping = nn.Sequential(
            nn.Linear(2 * wdim, wdim), nn.LeakyReLU(0.2), nn.Linear(wdim, wdim)
        )
        self.const = nn.Parameter(torch.randn(1, width, 4, 4))
        self.conv1 = ModConv(width, width, wdim)
        self.conv2 = ModConv(width, width, wdim)
        self.to_image = ModConv(width, 1, wdim, kernel=1, demod=False)
        self.wdim = wdim

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        z = torch.randn(len(labels), self.wdim)
        w = self.mapping(torch.cat([self.embed(labels), z], 1))
        x = self.const.expand(len(labels), -1, -1, -1)
        x = F.leaky_relu(self.conv1(x, w), 0.2)
        x = F.interpolate(x, scale_factor=2)
        x = F.leaky_relu(self.conv2(x, w), 0.2)
        return self.to_image(x, w).reshape(len(labels), 64)


def _label_to_digit_batches(gen: torch.Generator, batch: int = 32):
    for x, y in digit_batches(gen, batch):
        yield y, x


@scenario(
    "stylegan_modconv_generator",
    "adam",
    "amp_overflow",
    diverges=None,
    heldout=True,
    note="fp16 autocast with a GradScaler set to grow every step (growth_interval=1)",
)
def h30_stylegan_scaler_growth_every_step(ctx: Context) -> None:
    seeded(3011)
    gen = torch.Generator().manual_seed(3011)
    model = ModConvGenerator()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.0, 0.99))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1)
    fit(
        ctx,
        model,
        opt,
        _label_to_digit_batches(gen),
        300,
        loss_fn=F.mse_loss,
        scaler=scaler,
        amp=True,
        classifier=False,
    )
    drops = sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=False))
    ctx.check(f"the scaler backed off on a third of the steps ({drops})", drops >= 100)


# -- 10. SAINT: row and column attention on breast-cancer rows -----------------------------------


class SAINT(nn.Module):
    """Each feature embedded on its own (plus a CLS token); a column (self-)attention block over
    a row's features, then a row ("intersample") attention block over the batch's rows."""

    def __init__(self, features: int = 30, dim: int = 8, classes: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.5 * torch.randn(features, dim))
        self.bias = nn.Parameter(torch.zeros(features, dim))
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.column = nn.TransformerEncoderLayer(
            dim, 2, 2 * dim, 0.0, batch_first=True, norm_first=True
        )
        row_dim = (features + 1) * dim
        self.row_norm = nn.LayerNorm(row_dim)
        self.row = nn.MultiheadAttention(row_dim, 2, batch_first=True)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[:, :, None] * self.weight + self.bias
        h = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        h = self.column(h)
        flat = h.reshape(1, len(x), -1)  # the batch's rows attend to each other
        r = self.row_norm(flat)
        flat = flat + self.row(r, r, r, need_weights=False)[0]
        return self.head(flat.reshape(h.shape)[:, 0])


def _cancer():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    raw = torch.tensor(d.data, dtype=torch.float32)
    mean, std = raw.mean(0), raw.std(0)
    return raw, (raw - mean) / std, torch.tensor(d.target)


def _cancer_batches(gen: torch.Generator, batch: int = 32):
    _, x, y = _cancer()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


@scenario(
    "saint_tabular",
    "radam",
    "data_outlier",
    diverges=160,
    heldout=True,
    onset=160,
    note="at step 160 a quarter of the batch comes from a shard that skipped standardisation",
)
def h30_saint_unscaled_rows(ctx: Context) -> None:
    gen = seeded(3012)
    model = SAINT()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    raw, _, _ = _cancer()

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 160:
            x = x.clone()
            x[:8] = raw[:8]  # raw units: areas in the hundreds to thousands
        return x, y

    fit(ctx, model, opt, _cancer_batches(gen), 260, alter=alter)
    spike, calm = ctx.losses[160], sorted(ctx.losses[140:160])[10]
    ctx.check(f"loss spiked at 160 (median {calm:.3g} -> {spike:.3g})", spike > 5 * calm)


@scenario("saint_tabular", "nadam", "healthy", heldout=True)
def h30_saint_healthy(ctx: Context) -> None:
    gen = seeded(3013)
    model = SAINT()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, _cancer_batches(gen), 260)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.4 * sum(ctx.losses[:20]))


# -- 11. Reptile: Adam's second moment poisoned by one task --------------------------------------


def _sine_tasks(gen: torch.Generator, tasks: int = 4, unit: float = 1.0):
    """``tasks`` sine regression tasks (amplitude 0.5..2, any phase), 20 points each."""
    amp = (0.5 + 1.5 * torch.rand(tasks, 1, 1, generator=gen)) * unit
    phase = math.pi * torch.rand(tasks, 1, 1, generator=gen)
    x = 10 * torch.rand(tasks, 20, 1, generator=gen) - 5
    return x, amp * torch.sin(x + phase)


def _reptile(
    ctx: Context, model: nn.Module, opt, gen: torch.Generator, steps: int, bad_step: int = -1
) -> list[float]:
    """Reptile: adapt a copy per task with 5 SGD steps, hand the mean (theta - phi) to the
    outer optimizer as the gradient. The recorded loss is the adapted copies' loss on each
    task's held-back half. Returns each step's mean |parameter change|."""
    ctx.attach(model, opt)
    names = [n for n, _ in model.named_parameters()]
    moves = []
    for step in range(steps):
        xs, ys = _sine_tasks(gen, unit=30.0 if step == bad_step else 1.0)
        delta = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
        query = torch.zeros(())
        for x, y in zip(xs, ys, strict=True):
            fast = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
            for _ in range(5):
                out = torch.func.functional_call(model, fast, (x[:10],))
                grads = torch.autograd.grad(F.mse_loss(out, y[:10]), list(fast.values()))
                fast = {
                    n: (p - 0.01 * g).detach().requires_grad_()
                    for (n, p), g in zip(fast.items(), grads, strict=True)
                }
            with torch.no_grad():
                out = torch.func.functional_call(model, fast, (x[10:],))
                query = query + F.mse_loss(out, y[10:]) / len(xs)
                for n, p in model.named_parameters():
                    delta[n] += (p - fast[n]) / len(xs)
        before = [p.detach().clone() for p in model.parameters()]
        for n, p in zip(names, model.parameters(), strict=True):
            p.grad = delta[n]
        grads = torch.stack([p.grad.norm() for p in model.parameters()])
        ctx.grad_norms.append(float(grads.norm()))
        opt.step()
        moves.append(
            float(
                sum(
                    (p.detach() - b).abs().mean()
                    for p, b in zip(model.parameters(), before, strict=True)
                )
            )
        )
        ctx.step(query)
        opt.zero_grad(set_to_none=True)
    return moves


class SineNet(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(), nn.Linear(40, 1)
        )


@scenario(
    "reptile_meta_learner",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=250,
    note="at step 250 one meta-batch's targets come scaled by 30 (a unit mix-up)",
)
def h30_reptile_poisoned_adam(ctx: Context) -> None:
    gen = seeded(3014)
    model = SineNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    moves = _reptile(ctx, model, opt, gen, 500, bad_step=250)
    before, after = sum(moves[200:250]) / 50, sum(moves[300:350]) / 50
    g = ctx.grad_norms
    ctx.check(f"one giant meta-gradient ({g[250]:.3g})", g[250] > 100 * max(g[200:250]))
    ctx.check(f"updates shrank 10x ({before:.3g} -> {after:.3g})", after < 0.1 * before)


# -- 12. CenterNet-style heatmap detector --------------------------------------------------------


class PerImageStandardise(nn.Module):
    """(x - mean) / std per image, written without an epsilon."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((1, 2, 3), keepdim=True)
        return (x - mean) / x.std((1, 2, 3), keepdim=True)


class CenterNet(nn.Module):
    """Backbone, then a centre heatmap head (logits) and a box-size head, at full resolution."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.standardise = PerImageStandardise()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        )
        self.heatmap = nn.Conv2d(width, 1, 1)
        self.size = nn.Conv2d(width, 2, 1)
        nn.init.constant_(self.heatmap.bias, -2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(self.standardise(x))
        return torch.cat([self.heatmap(f), self.size(f)], 1)


def _box_batches(gen: torch.Generator, batch: int = 16, size: int = 16):
    """One or two bright boxes per image; target: a Gaussian centre heatmap, sizes at centres."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    while True:
        img = 0.1 * torch.randn(batch, 1, size, size, generator=gen)
        target = torch.zeros(batch, 3, size, size)
        for i in range(batch):
            for _ in range(1 + int(torch.rand(1, generator=gen) < 0.5)):
                h, w = torch.randint(2, 6, (2,), generator=gen).tolist()
                r = int(torch.randint(0, size - h, (1,), generator=gen))
                c = int(torch.randint(0, size - w, (1,), generator=gen))
                img[i, 0, r : r + h, c : c + w] += 1.0
                cy, cx = r + h // 2, c + w // 2
                g = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 2.0)
                target[i, 0] = torch.maximum(target[i, 0], g)
                target[i, 1:, cy, cx] = torch.tensor([h, w], dtype=torch.float32)
        yield img, target


def _centernet_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    heat = F.binary_cross_entropy_with_logits(out[:, 0], target[:, 0])
    centres = (target[:, 0] == 1.0)[:, None].expand(-1, 2, -1, -1)
    size = F.l1_loss(out[:, 1:][centres], target[:, 1:][centres])
    return heat + 0.1 * size


@scenario(
    "centernet_detector",
    "sgd_mom",
    "nonfinite",
    where="standardise",
    diverges=150,
    heldout=True,
    onset=150,
    note="at step 150 one frame in the batch is blank (a dropped camera frame): std 0",
)
def h30_centernet_blank_frame(ctx: Context) -> None:
    gen = seeded(3015)
    model = CenterNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[6] = 0.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _box_batches(gen),
        190,
        loss_fn=_centernet_loss,
        alter=alter,
        classifier=False,
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 150, not at 150", all(finite[:150]) and not finite[150])
    ctx.check("loss fell before 150", sum(ctx.losses[140:150]) < 0.7 * sum(ctx.losses[:10]))


@scenario("centernet_detector", "sg_adabelief", "healthy", heldout=True)
def h30_centernet_healthy(ctx: Context) -> None:
    gen = seeded(3016)
    model = CenterNet()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, _box_batches(gen), 220, loss_fn=_centernet_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-20:]) < 0.6 * sum(ctx.losses[:20]))
