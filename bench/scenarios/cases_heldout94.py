"""Held-out scenarios, set 94 (``h94_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held
or the healthy control trained normally).

Families: Hugging Face Parakeet CTC and Parakeet encoder (on generated speech-like features),
SeamlessM4T text-to-text and RT-DETR-v2 (on generated images) from configs; DLRM with embedding
bags, DCN-v2 cross network, SASRec sequential recommender, two-tower retrieval with in-batch
negatives and a temperature, TabNet with sparsemax attentive masks, FT-Transformer, DeepFM,
BiLSTM-CRF tagger, character-CNN + highway language model, BiGRU CTC recogniser.

Optimizers: AdamW, NAdam, RAdam, Adam, Adamax, Adagrad, Adadelta, ASGD, RMSprop, SGD, SGD with
momentum, and steadygrad.optim's Lion, AdaBelief, Grams, StableSPAM and AdEMAMix.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared data ---------------------------------------------------------------------------------


def click_batches(gen: torch.Generator, batch: int = 128, fields: int = 4, vocab: int = 50):
    """Generated click logs: 8 dense features and ``fields`` categorical ids; the click comes
    from a fixed hidden logistic model with a pairwise field interaction."""
    g = torch.Generator().manual_seed(9401)
    w_dense = torch.randn(8, generator=g)
    field_eff = torch.randn(fields, vocab, generator=g)
    inter = torch.randn(vocab, vocab, generator=g)
    while True:
        dense = torch.randn(batch, 8, generator=gen)
        ids = torch.randint(0, vocab, (batch, fields), generator=gen)
        z = 0.6 * dense @ w_dense + field_eff.gather(1, ids.T).T.sum(1) * 0.7
        z = z + inter[ids[:, 0], ids[:, 1]]
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(z)).float()
        yield (dense, ids), y


def bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out.reshape(-1), y)


def speech_batches(
    gen: torch.Generator, batch: int = 16, frames: int = 64, bins: int = 16, symbols: int = 8
):
    """Generated speech-like features: each label symbol is a fixed spectral prototype held for
    4-8 frames, with silence between; labels are 4 symbols (ids 1..symbols, 0 = blank)."""
    g = torch.Generator().manual_seed(9402)
    proto = torch.randn(symbols, bins, generator=g)
    while True:
        x = 0.3 * torch.randn(batch, frames, bins, generator=gen)
        labels = torch.randint(0, symbols, (batch, 4), generator=gen)
        for b in range(batch):
            t = int(torch.randint(0, 6, (1,), generator=gen))
            for s in labels[b].tolist():
                n = int(torch.randint(4, 9, (1,), generator=gen))
                x[b, t : t + n] += proto[s]
                t += n + int(torch.randint(2, 5, (1,), generator=gen))
        yield x, labels + 1


def item_sequences(gen: torch.Generator, batch: int = 32, length: int = 16, items: int = 100):
    """Sessions over ``items`` (ids 1..items): the next item is a fixed successor of the current
    one with probability 0.7, else one of its two neighbours, else random."""
    g = torch.Generator().manual_seed(9403)
    succ = torch.randperm(items, generator=g)
    while True:
        seq = torch.empty(batch, length + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, items, (batch,), generator=gen)
        for t in range(length):
            r = torch.rand(batch, generator=gen)
            nxt = succ[seq[:, t]]
            near = (nxt + torch.randint(-2, 3, (batch,), generator=gen)) % items
            rnd = torch.randint(0, items, (batch,), generator=gen)
            seq[:, t + 1] = torch.where(r < 0.7, nxt, torch.where(r < 0.9, near, rnd))
        seq = seq + 1  # 0 is padding
        yield seq[:, :-1], seq[:, 1:]


def tabular(seed: int, n: int = 3000, features: int = 16, classes: int = 3):
    from sklearn.datasets import make_classification

    x, y = make_classification(
        n_samples=n,
        n_features=features,
        n_informative=8,
        n_redundant=4,
        n_classes=classes,
        n_clusters_per_class=2,
        flip_y=0.05,
        class_sep=0.8,
        random_state=seed,
    )
    x = torch.tensor(x, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), torch.tensor(y)


def row_batches(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, batch: int = 128):
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch + 1, batch):
            idx = order[i : i + batch]
            yield x[idx], y[idx]


def tail_mean(values: list[float], n: int) -> float:
    return sum(values[-n:]) / n


def head_mean(values: list[float], n: int) -> float:
    return sum(values[:n]) / n


# -- Hugging Face: Parakeet CTC -------------------------------------------------------------------


def hf_parakeet_encoder_config(bins: int = 16):
    return dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_hidden_layers=1,
        num_mel_bins=bins,
        subsampling_conv_channels=8,
        subsampling_factor=4,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
        conv_kernel_size=5,
        max_position_embeddings=256,
    )


@scenario(
    "h94_hf_parakeet_ctc",
    "adamw",
    "update_ratio_out_of_range",
    where="ctc_head",
    diverges=None,
    heldout=True,
    note="AdamW param group for the CTC head with lr=2e-6 (typo for 2e-3): the head's "
    "update/weight ratio sits ~1000x below the rest; the encoder learns around a fixed head",
    onset=0,
)
def h94_parakeet_ctc_head_lr_typo(ctx: Context) -> None:
    from transformers import ParakeetCTCConfig, ParakeetForCTC

    gen = seeded(9410)
    model = ParakeetForCTC(
        ParakeetCTCConfig(
            encoder_config=hf_parakeet_encoder_config(), vocab_size=10, pad_token_id=0
        )
    )
    head = [p for n, p in model.named_parameters() if n.startswith("ctc_head")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("ctc_head")]
    opt = torch.optim.AdamW(
        [
            {"params": rest},
            {"params": head, "lr": 2e-6},  # meant 2e-3: the head barely moves
        ],
        lr=2e-3,
    )
    w = model.ctc_head.weight
    w0 = float(w.detach().norm())
    w_init = w.detach().clone()
    ref = model.encoder.layers[0].feed_forward1.linear1.weight
    ratios = []
    ref_ratios = []
    ctx.attach(model, opt)
    batches = speech_batches(gen)
    mask = torch.ones(16, 64, dtype=torch.long)
    for _ in range(250):
        x, labels = next(batches)
        before = w.detach().clone()
        ref_before = ref.detach().clone()
        loss = model(input_features=x, attention_mask=mask, labels=labels).loss
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        ratios.append(float((w.detach() - before).norm() / before.norm()))
        ref_ratios.append(float((ref.detach() - ref_before).norm() / ref_before.norm()))
    ctx.check("head moved under 10% over the run", float((w.detach() - w_init).norm()) < 0.1 * w0)
    ctx.check(
        "head update/weight ratio (median) over 10x below the encoder's",
        sorted(ratios)[125] < 0.1 * sorted(ref_ratios)[125],
    )
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


class ParakeetEncoderCTC(nn.Module):
    """The Parakeet encoder with a hand-written CTC projection (blank = 0)."""

    def __init__(self, classes: int = 9) -> None:
        super().__init__()
        from transformers import ParakeetEncoder, ParakeetEncoderConfig

        self.encoder = ParakeetEncoder(ParakeetEncoderConfig(**hf_parakeet_encoder_config()))
        self.proj = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.ones(x.shape[:2], dtype=torch.long)
        h = self.encoder(input_features=x, attention_mask=mask).last_hidden_state
        return self.proj(h).log_softmax(-1)


def ctc(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    b, t, _ = log_probs.shape
    return F.ctc_loss(
        log_probs.transpose(0, 1),
        labels,
        torch.full((b,), t, dtype=torch.long),
        torch.full((b,), labels.shape[1], dtype=torch.long),
        blank=0,
    )


@scenario("h94_hf_parakeet_encoder_ctc_proj", "radam", "healthy", heldout=True)
def h94_parakeet_encoder_healthy(ctx: Context) -> None:
    gen = seeded(9411)
    model = ParakeetEncoderCTC()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    fit(ctx, model, opt, speech_batches(gen), 250, loss_fn=ctc, classifier=False)
    ctx.check("loss went down", tail_mean(ctx.losses, 20) < 0.6 * head_mean(ctx.losses, 20))
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- Hugging Face: SeamlessM4T text-to-text -------------------------------------------------------


def hf_seamless_t2t(vocab: int = 64):
    from transformers import SeamlessM4TConfig, SeamlessM4TForTextToText

    config = SeamlessM4TConfig(
        vocab_size=vocab,
        t2u_vocab_size=16,
        hidden_size=32,
        num_attention_heads=2,
        encoder_layers=1,
        decoder_layers=1,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        speech_encoder_layers=1,
        speech_encoder_attention_heads=2,
        speech_encoder_intermediate_size=64,
        t2u_encoder_layers=1,
        t2u_decoder_layers=1,
        t2u_encoder_ffn_dim=32,
        t2u_decoder_ffn_dim=32,
        t2u_num_attention_heads=2,
        t2u_max_position_embeddings=64,
        unit_hifi_gan_vocab_size=16,
        upsample_initial_channel=16,
        unit_embed_dim=16,
        lang_embed_dim=4,
        spkr_embed_dim=4,
        vocoder_num_langs=1,
        vocoder_num_spkrs=1,
        variance_predictor_kernel_size=3,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
        decoder_start_token_id=3,
        t2u_bos_token_id=0,
        t2u_pad_token_id=1,
        t2u_eos_token_id=2,
        t2u_decoder_start_token_id=2,
    )
    return SeamlessM4TForTextToText(config)


def reverse_batches(gen: torch.Generator, batch: int = 16, length: int = 10, vocab: int = 64):
    """Translate by reversing: target = source read backwards (token ids 4..vocab-1)."""
    while True:
        x = torch.randint(4, vocab, (batch, length), generator=gen)
        yield x, x.flip(1)


@scenario(
    "h94_hf_seamless_m4t_text",
    "nadam",
    "output_logit_divergence",
    where="lm_head",
    diverges=None,
    heldout=True,
    note="z-loss added with the wrong sign (loss - 1e-2 * logZ^2): training rewards a large "
    "log-partition and the head's logits drift upward, faster and faster",
    onset=0,
)
def h94_seamless_zloss_wrong_sign(ctx: Context) -> None:
    gen = seeded(9420)
    model = hf_seamless_t2t()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = reverse_batches(gen)
    log_z = []
    for _ in range(300):
        x, y = next(batches)
        out = model(input_ids=x, labels=y)
        lz = torch.logsumexp(out.logits.float(), dim=-1)
        total = out.loss - 1e-2 * (lz**2).mean()  # z-loss: should be + 1e-2 * logZ^2
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(out.loss)
        opt.zero_grad(set_to_none=True)
        log_z.append(float(lz.mean().detach()))
    finite = [v for v in log_z if math.isfinite(v)]
    ctx.check("log Z grew over 8x from its start", max(finite) > 8 * abs(log_z[0]))


# -- Hugging Face: RT-DETR-v2 ---------------------------------------------------------------------


def hf_rt_detr_v2(classes: int = 3):
    from transformers import ResNetConfig, RTDetrV2Config, RTDetrV2ForObjectDetection

    backbone = ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 32],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        out_features=["stage2", "stage3", "stage4"],
    )
    config = RTDetrV2Config(
        backbone_config=backbone,
        d_model=32,
        encoder_hidden_dim=32,
        encoder_in_channels=[16, 16, 32],
        feat_strides=[8, 16, 32],
        encoder_layers=1,
        encoder_ffn_dim=64,
        encoder_attention_heads=2,
        decoder_layers=2,
        decoder_ffn_dim=64,
        decoder_attention_heads=2,
        num_queries=10,
        num_labels=classes,
        decoder_in_channels=[32, 32, 32],
        num_feature_levels=3,
        decoder_n_points=2,
        num_denoising=0,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        hidden_expansion=0.5,
        use_pretrained_backbone=False,
        anchor_image_size=None,
    )
    return RTDetrV2ForObjectDetection(config)


def square_images(gen: torch.Generator, batch: int = 4, size: int = 64):
    """One coloured square per image: class = colour channel, box = (cx, cy, w, h) in [0, 1]."""
    while True:
        x = 0.1 * torch.randn(batch, 3, size, size, generator=gen)
        labels = []
        for b in range(batch):
            c = int(torch.randint(0, 3, (1,), generator=gen))
            s = int(torch.randint(12, 28, (1,), generator=gen))
            x0 = int(torch.randint(0, size - s, (1,), generator=gen))
            y0 = int(torch.randint(0, size - s, (1,), generator=gen))
            x[b, c, y0 : y0 + s, x0 : x0 + s] += 1.0
            box = torch.tensor([(x0 + s / 2) / size, (y0 + s / 2) / size, s / size, s / size])
            labels.append({"class_labels": torch.tensor([c]), "boxes": box[None]})
        yield x, labels


@scenario("h94_hf_rt_detr_v2_squares", "sg_grams", "healthy", heldout=True)
def h94_rt_detr_v2_squares_healthy(ctx: Context) -> None:
    from steadygrad.optim import Grams

    gen = seeded(9430)
    model = hf_rt_detr_v2()
    opt = Grams(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    batches = square_images(gen)
    for _ in range(150):
        x, labels = next(batches)
        loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss went down", tail_mean(ctx.losses, 20) < 0.8 * head_mean(ctx.losses, 20))
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- DLRM with embedding bags ---------------------------------------------------------------------


class DotInteraction(nn.Module):
    """DLRM's pairwise dot products between the bottom-MLP vector and the bag embeddings."""

    def forward(self, vecs: torch.Tensor) -> torch.Tensor:
        dots = torch.bmm(vecs, vecs.transpose(1, 2))
        i, j = torch.triu_indices(vecs.shape[1], vecs.shape[1], offset=1)
        return dots[:, i, j]


class DLRM(nn.Module):
    def __init__(self, fields: int = 4, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.bottom = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, dim), nn.ReLU())
        self.bags = nn.ModuleList(nn.EmbeddingBag(vocab, dim, mode="sum") for _ in range(fields))
        self.interact = DotInteraction()
        pairs = (fields + 1) * fields // 2
        self.top = nn.Sequential(nn.Linear(pairs + dim, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, inputs) -> torch.Tensor:
        dense, bags = inputs  # bags: one (batch, bag length) id tensor per field
        d = self.bottom(dense)
        vecs = torch.stack([d] + [emb(b) for emb, b in zip(self.bags, bags, strict=True)], 1)
        return self.top(torch.cat([d, self.interact(vecs)], 1))


@scenario(
    "h94_dlrm_embedding_bags",
    "adam",
    "amp_overflow",
    where="interact",
    diverges="auto",
    heldout=True,
    note="fp16 autocast + GradScaler; two count-encoded sum-pooled bag fields grow as the "
    "time-sorted log replay reaches heavy users, the fp16 dot-product interaction overflows to "
    "inf and the scaler keeps skipping steps",
    onset=100,
)
def h94_dlrm_history_bags_fp16(ctx: Context) -> None:
    gen = seeded(9440)
    model = DLRM()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    base = click_batches(gen)

    def batches():
        step = -1
        while True:
            (dense, ids), y = next(base)
            step += 1
            # fields 0 and 1 are count-encoded (the id repeated once per interaction); the
            # replayed log is time-sorted, so from step 100 on the counts keep growing
            n = 4 if step < 100 else 4 + 3 * (step - 100)
            bags = [ids[:, k : k + 1].repeat(1, n) for k in (0, 1)]
            yield (dense, bags + [ids[:, k : k + 1] for k in (2, 3)]), y

    fit(ctx, model, opt, batches(), 300, loss_fn=bce, classifier=False, scaler=scaler, amp=True)
    first_inf = next((i for i, v in enumerate(ctx.losses) if not math.isfinite(v)), None)
    ctx.check("finite for 100+ steps, then inf", first_inf is not None and first_inf > 100)
    ctx.check("scaler scale collapsed (steps skipped)", ctx.scales[-1] < 1e-3 * max(ctx.scales))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        (dense, ids), _ = next(base)
        d = model.bottom(dense)
        bags = [ids[:, k : k + 1].repeat(1, 600) for k in (0, 1)]
        bags += [ids[:, k : k + 1] for k in (2, 3)]
        vecs = torch.stack([d] + [emb(b) for emb, b in zip(model.bags, bags, strict=True)], 1)
        ctx.check(
            "interaction output non-finite in fp16", not bool(model.interact(vecs).isfinite().all())
        )


# -- DCN-v2 ---------------------------------------------------------------------------------------


class CrossLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.lin(x) + x


class DCNv2(nn.Module):
    def __init__(self, fields: int = 4, vocab: int = 50, emb: int = 8, layers: int = 3) -> None:
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(vocab, emb) for _ in range(fields))
        dim = 8 + fields * emb
        self.cross = nn.ModuleList(CrossLayer(dim) for _ in range(layers))
        self.deep = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
        self.head = nn.Linear(dim + 32, 1)

    def forward(self, inputs) -> torch.Tensor:
        dense, ids = inputs
        x0 = torch.cat([dense] + [e(ids[:, k]) for k, e in enumerate(self.embs)], 1)
        x = x0
        for layer in self.cross:
            x = layer(x0, x)
        return self.head(torch.cat([x, self.deep(x0)], 1))


@scenario("h94_dcn_v2_cross_clicks", "sg_stablespam", "healthy", heldout=True)
def h94_dcn_v2_healthy(ctx: Context) -> None:
    from steadygrad.optim import StableSPAM

    gen = seeded(9450)
    model = DCNv2()
    for e in model.embs:
        nn.init.normal_(e.weight, std=0.1)
    opt = StableSPAM(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, click_batches(gen), 300, loss_fn=bce, classifier=False)
    ctx.check("loss went down", tail_mean(ctx.losses, 30) < 0.9 * head_mean(ctx.losses, 30))
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "h94_dcn_v2_deep_cross",
    "sgd_mom",
    "exploding_gradients",
    where=("cross.0", "cross.1", "cross.2", "cross.3", "cross.4", "cross.5"),
    diverges="auto",
    heldout=True,
    note="6 cross layers on raw, unnormalised dense features, cross weights initialised with "
    "default Linear init, SGD momentum at lr 3e-2: the degree-7 polynomial feeds back on "
    "itself and every cross layer's gradient grows ~100x over ~10 steps until overflow",
    onset=0,
)
def h94_dcn_v2_cross_explode(ctx: Context) -> None:
    gen = seeded(9451)
    model = DCNv2(layers=6)
    opt = torch.optim.SGD(model.parameters(), lr=3e-2, momentum=0.9)
    base = click_batches(gen)
    per_layer: list[list[float]] = []
    ctx.attach(model, opt)
    for _ in range(300):
        (dense, ids), y = next(base)
        dense = 3.0 * dense + 1.0  # a feature pipeline that forgot to standardise
        loss = bce(model((dense, ids)), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        per_layer.append([float(c.lin.weight.grad.norm()) for c in model.cross])
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    finite = [g for g in ctx.grad_norms if math.isfinite(g)]
    ctx.check(
        "gradient norm grew over 1000x over the run",
        max(finite) > 1000 * finite[0] or len(finite) < len(ctx.grad_norms),
    )
    ctx.check("loss blew up", not all(math.isfinite(v) for v in ctx.losses))
    first = [
        next((t for t, row in enumerate(per_layer) if not row[k] < 100 * per_layer[0][k]), 10**9)
        for k in range(6)
    ]
    ctx.check("every cross layer's gradient crossed 100x its start", max(first) < len(per_layer))


# -- SASRec ---------------------------------------------------------------------------------------


class SeqAttention(nn.Module):
    """Causal multi-head self-attention written by hand; ``scaled`` divides by sqrt(head dim)."""

    def __init__(self, dim: int, heads: int, scaled: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scaled = scaled
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            f(x).reshape(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-1, -2)
        if self.scaled:
            logits = logits / math.sqrt(d // self.heads)
        self.last_logits = logits.detach()
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        att = logits.masked_fill(mask, float("-inf")).softmax(-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, t, d))


class SASBlock(nn.Module):
    def __init__(self, dim: int, heads: int, scaled: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SeqAttention(dim, heads, scaled)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.ff(self.ln2(x))


class SASRec(nn.Module):
    """Self-attentive sequential recommendation: item + position embeddings, causal blocks,
    scores against the (shared) item embedding table."""

    def __init__(self, items: int = 100, dim: int = 32, length: int = 16, scaled: bool = True):
        super().__init__()
        self.items = nn.Embedding(items + 1, dim, padding_idx=0)
        self.pos = nn.Embedding(length, dim)
        self.blocks = nn.ModuleList(SASBlock(dim, 2, scaled) for _ in range(2))
        self.ln = nn.LayerNorm(dim)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        x = self.items(seq) + self.pos(torch.arange(seq.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.ln(x) @ self.items.weight.T


def attention_entropy(logits: torch.Tensor) -> float:
    t = logits.shape[-1]
    mask = torch.ones(t, t, dtype=torch.bool).triu(1)
    p = logits.masked_fill(mask, float("-inf")).softmax(-1)
    return float(-(p * p.clamp_min(1e-30).log()).sum(-1)[..., -1].mean())


@scenario(
    "h94_sasrec_sessions",
    "sg_lion",
    "attention_logit_growth",
    where=("blocks.0.attn", "blocks.1.attn"),
    diverges=None,
    heldout=True,
    note="attention written without the 1/sqrt(d) scale and Lion at lr 1e-2 (an AdamW LR "
    "reused for Lion): q/k weights grow every step, pre-softmax logits grow without bound and "
    "attention entropy collapses",
    onset=0,
)
def h94_sasrec_unscaled_lion(ctx: Context) -> None:
    from steadygrad.optim import Lion

    gen = seeded(9460)
    model = SASRec(scaled=False)
    opt = Lion(model.parameters(), lr=1e-2)
    first: list[float] = []

    def before(step: int) -> None:
        if step == 1:
            first.append(float(model.blocks[0].attn.last_logits.abs().max()))

    fit(ctx, model, opt, item_sequences(gen), 300, loss_fn=lm_loss, classifier=False, before=before)
    logits = model.blocks[0].attn.last_logits
    ctx.check("attention logits grew over 20x", float(logits.abs().max()) > 20 * first[0])
    ctx.check("attention entropy (last query) under 0.1 nats", attention_entropy(logits) < 0.1)


@scenario("h94_sasrec_sessions_scaled", "sg_ademamix", "healthy", heldout=True)
def h94_sasrec_healthy(ctx: Context) -> None:
    from steadygrad.optim import AdEMAMix

    gen = seeded(9461)
    model = SASRec()
    opt = AdEMAMix(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, item_sequences(gen), 300, loss_fn=lm_loss, classifier=False)
    ctx.check("loss went down", tail_mean(ctx.losses, 30) < 0.7 * head_mean(ctx.losses, 30))
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- two-tower retrieval --------------------------------------------------------------------------


class Tower(nn.Module):
    def __init__(self, n: int, dim: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(n, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(self.emb(ids)), dim=-1)


class TempScore(nn.Module):
    """In-batch softmax logits: cosine similarities over a temperature."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return u @ v.T / self.temperature


class TwoTower(nn.Module):
    def __init__(self, users: int = 400, items: int = 400, temperature: float = 0.05) -> None:
        super().__init__()
        self.user = Tower(users)
        self.item = Tower(items)
        self.score = TempScore(temperature)

    def forward(self, pair) -> torch.Tensor:
        return self.score(self.user(pair[0]), self.item(pair[1]))


def pair_batches(gen: torch.Generator, batch: int = 64, users: int = 400):
    """(user, clicked item) pairs from a fixed assignment; labels: the diagonal."""
    g = torch.Generator().manual_seed(9405)
    liked = torch.randperm(users, generator=g)
    while True:
        u = torch.randperm(users, generator=gen)[:batch]
        yield (u, liked[u]), torch.arange(batch)


@scenario(
    "h94_two_tower_in_batch",
    "adagrad",
    "softmax_collapse",
    where="score",
    diverges=None,
    heldout=True,
    note="temperature 1e-4 (typo for 1e-1) on cosine scores: as the towers memorise the "
    "pairs, most rows of the in-batch softmax become exactly one-hot in float32",
    onset=0,
)
def h94_two_tower_temperature_typo(ctx: Context) -> None:
    gen = seeded(9470)
    model = TwoTower(temperature=1e-4)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    fit(ctx, model, opt, pair_batches(gen), 300)
    (u, i), y = next(pair_batches(gen))
    with torch.no_grad():
        logits = model((u, i))
    ctx.check("over half the rows exactly one-hot", collapsed_fraction(logits, y) > 0.5)
    ctx.check("late loss under 1% of the start", tail_mean(ctx.losses, 30) < 0.01 * ctx.losses[0])


# -- TabNet ---------------------------------------------------------------------------------------


def sparsemax(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last dim (Martins & Astudillo 2016): exact zeros outside the support."""
    zs, _ = z.sort(-1, descending=True)
    k = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype)
    cum = zs.cumsum(-1)
    support = (1 + k * zs) > cum
    kz = support.sum(-1, keepdim=True)
    tau = (cum.gather(-1, kz - 1) - 1) / kz.to(z.dtype)
    return (z - tau).clamp_min(0)


class AttentiveTransformer(nn.Module):
    """Mask = sparsemax(prior * BN(FC(a))); with ``entropy`` on, also returns the mask entropy
    for the sparsity regulariser."""

    def __init__(self, d_in: int, features: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, features)
        self.bn = nn.BatchNorm1d(features)
        self.entropy = False

    def forward(self, a: torch.Tensor, prior: torch.Tensor):
        m = sparsemax(prior * self.bn(self.fc(a)))
        ent = (-m * torch.log(m)).sum(-1).mean() if self.entropy else m.new_zeros(())
        return m, ent


class FeatTransformer(nn.Module):
    def __init__(self, d_in: int, d: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, 2 * d)
        self.bn1 = nn.BatchNorm1d(2 * d)
        self.fc2 = nn.Linear(d, 2 * d)
        self.bn2 = nn.BatchNorm1d(2 * d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.bn1(self.fc1(x)))
        return (h + F.glu(self.bn2(self.fc2(h)))) * math.sqrt(0.5)


class TabNet(nn.Module):
    def __init__(self, features: int = 16, classes: int = 3, d: int = 16, steps: int = 3) -> None:
        super().__init__()
        self.d = d
        self.bn = nn.BatchNorm1d(features)
        self.initial = FeatTransformer(features, 2 * d)
        self.feat = nn.ModuleList(FeatTransformer(features, 2 * d) for _ in range(steps))
        self.att = nn.ModuleList(AttentiveTransformer(d, features) for _ in range(steps))
        self.head = nn.Linear(d, classes)
        self.gamma = 1.3
        self.sparse_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(x)
        a = self.initial(x)[:, self.d :]
        prior = torch.ones_like(x)
        out = 0
        ent = 0
        for att, feat in zip(self.att, self.feat, strict=True):
            m, e = att(a, prior)
            ent = ent + e
            prior = prior * (self.gamma - m)
            h = feat(m * x)
            out = out + F.relu(h[:, : self.d])
            a = h[:, self.d :]
        self.sparse_loss = ent / len(self.att)
        return self.head(out)


@scenario(
    "h94_tabnet_sparsemax",
    "sg_adabelief",
    "nonfinite",
    where="att.0",
    diverges=120,
    heldout=True,
    note="the sparsity regulariser is switched on at step 120 and computes sum(-M log M) "
    "without an epsilon: sparsemax masks hold exact zeros, 0 * log 0 = NaN in the first "
    "attentive transformer",
    onset=120,
)
def h94_tabnet_mask_entropy_nan(ctx: Context) -> None:
    from steadygrad.optim import AdaBelief

    gen = seeded(9480)
    x, y = tabular(9480)
    model = TabNet()
    opt = AdaBelief(model.parameters(), lr=2e-2)
    first_bad: list[str] = []

    def hook(name: str):
        def fn(mod, inp, out) -> None:
            outs = out if isinstance(out, tuple) else (out,)
            if not first_bad and not all(bool(o.isfinite().all()) for o in outs):
                first_bad.append(name)

        return fn

    for name, mod in model.named_modules():
        if name:
            mod.register_forward_hook(hook(name))

    def before(step: int) -> None:
        if step == 120:
            for att in model.att:
                att.entropy = True

    fit(
        ctx,
        model,
        opt,
        row_batches(x, y, gen),
        200,
        before=before,
        loss_fn=lambda out, t: F.cross_entropy(out, t) + 1e-3 * model.sparse_loss,
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 120, NaN from 120 on", all(finite[:120]) and not any(finite[120:]))
    ctx.check("the first non-finite output is att.0's", first_bad[:1] == ["att.0"])
    ctx.check("loss went down before 120", head_mean(ctx.losses[100:120], 20) < ctx.losses[0])


# -- FT-Transformer -------------------------------------------------------------------------------


class FTTransformer(nn.Module):
    """Feature tokenizer (a weight and bias per numeric feature) + [CLS] + transformer layers."""

    def __init__(self, features: int = 16, classes: int = 3, dim: int = 32) -> None:
        super().__init__()
        self.tok_w = nn.Parameter(torch.randn(features, dim) / math.sqrt(dim))
        self.tok_b = nn.Parameter(torch.zeros(features, dim))
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, 4, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x[..., None] * self.tok_w + self.tok_b
        h = torch.cat([self.cls.expand(len(x), -1, -1), tokens], 1)
        return self.head(self.norm(self.encoder(h)[:, 0]))


@scenario(
    "h94_ft_transformer_tabular",
    "adamax",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="hand-rolled loss scaling (x 2**16) whose unscale is skipped on one step (150, a "
    "resume path): Adamax's infinity-norm moments take the 65536x gradient and every later "
    "update is tiny; the run stalls",
    onset=150,
)
def h94_ft_transformer_adamax_unscaled(ctx: Context) -> None:
    gen = seeded(9490)
    x, y = tabular(9490)
    model = FTTransformer()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    moved: list[float] = []
    prev = [p.detach().clone() for p in model.parameters()]

    def before(step: int) -> None:
        now = [p.detach() for p in model.parameters()]
        moved.append(float(sum((a - b).norm() ** 2 for a, b in zip(now, prev, strict=True)) ** 0.5))
        for a, b in zip(prev, now, strict=True):
            a.copy_(b)

    def scaled(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 150 else loss

    fit(ctx, model, opt, row_batches(x, y, gen), 320, before=before, extra_loss=scaled)
    early = sum(moved[100:150]) / 50
    late = sum(moved[200:320]) / 120
    ctx.check("updates after step 200 over 10x smaller than before 150", late < early / 10)
    ctx.check(
        "no progress after 200",
        tail_mean(ctx.losses, 20) > 0.9 * head_mean(ctx.losses[200:220], 20),
    )
    ctx.check("still learning before 150", head_mean(ctx.losses[120:150], 30) < ctx.losses[0])
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- DeepFM ---------------------------------------------------------------------------------------


class DeepFM(nn.Module):
    def __init__(self, fields: int = 4, vocab: int = 50, k: int = 8) -> None:
        super().__init__()
        self.linear = nn.ModuleList(nn.Embedding(vocab, 1) for _ in range(fields))
        self.embs = nn.ModuleList(nn.Embedding(vocab, k) for _ in range(fields))
        self.dense = nn.Linear(8, k, bias=False)
        self.deep = nn.Sequential(
            nn.Linear((fields + 1) * k, 64),
            nn.ReLU(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 1),
        )
        for e in self.embs:
            nn.init.normal_(e.weight, std=0.1)

    def forward(self, inputs) -> torch.Tensor:
        dense, ids = inputs
        v = torch.stack([self.dense(dense)] + [e(ids[:, f]) for f, e in enumerate(self.embs)], 1)
        first = sum(lin(ids[:, f]) for f, lin in enumerate(self.linear))
        fm = 0.5 * (v.sum(1) ** 2 - (v**2).sum(1)).sum(1, keepdim=True)
        return first + fm + self.deep(v.flatten(1))


@scenario(
    "h94_deepfm_clicks",
    "sgd",
    "loss_of_plasticity",
    where="dense",
    diverges=None,
    heldout=True,
    note="from step 160 a feature-store outage fills every dense feature with 0: the dense "
    "projection (no bias) gets no input, its gradient is exactly zero and it stops learning",
    onset=160,
)
def h94_deepfm_dense_outage(ctx: Context) -> None:
    gen = seeded(9500)
    model = DeepFM()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    w0 = model.dense.weight.detach().clone()
    snap: list[torch.Tensor] = []

    def alter(step: int, x, y):
        if step >= 160:
            x = (torch.zeros_like(x[0]), x[1])
        return x, y

    def before(step: int) -> None:
        if step == 160:
            snap.append(model.dense.weight.detach().clone())

    fit(
        ctx,
        model,
        opt,
        click_batches(gen),
        400,
        loss_fn=bce,
        classifier=False,
        alter=alter,
        before=before,
    )
    ctx.check("dense projection learned before 160", not torch.equal(snap[0], w0))
    ctx.check("dense projection unchanged after 160", torch.equal(model.dense.weight, snap[0]))
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- BiLSTM-CRF -----------------------------------------------------------------------------------


class CRF(nn.Module):
    def __init__(self, tags: int) -> None:
        super().__init__()
        self.trans = nn.Parameter(torch.zeros(tags, tags))
        self.start = nn.Parameter(torch.zeros(tags))

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        b, t, _ = emissions.shape
        score = self.start[tags[:, 0]] + emissions[:, 0].gather(1, tags[:, :1]).squeeze(1)
        alpha = self.start + emissions[:, 0]
        for i in range(1, t):
            score = score + self.trans[tags[:, i - 1], tags[:, i]]
            score = score + emissions[:, i].gather(1, tags[:, i : i + 1]).squeeze(1)
            alpha = torch.logsumexp(alpha[:, :, None] + self.trans + emissions[:, i, None], 1)
        return (torch.logsumexp(alpha, 1) - score).mean() / t


class BiLSTMCRF(nn.Module):
    def __init__(self, vocab: int = 60, tags: int = 5, dim: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.emit = nn.Linear(2 * dim, tags)
        self.crf = CRF(tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.emit(self.lstm(self.emb(x))[0])


def tagging_batches(gen: torch.Generator, batch: int = 32, length: int = 20, vocab: int = 60):
    """BIO-style tags: tokens 1-10 start an entity of type A (tag 1, then 2 while tokens are
    11-30), tokens 31-40 start type B (3, then 4); everything else is O (0)."""
    while True:
        x = torch.randint(1, vocab, (batch, length), generator=gen)
        tags = torch.zeros(batch, length, dtype=torch.long)
        for b in range(batch):
            cur = 0
            for i in range(length):
                tok = int(x[b, i])
                if 1 <= tok <= 10:
                    cur = 1
                elif 31 <= tok <= 40:
                    cur = 3
                elif 11 <= tok <= 30 and cur in (1, 2, 3, 4):
                    cur = 2 if cur in (1, 2) else 4
                else:
                    cur = 0
                tags[b, i] = cur
        yield x, tags


@scenario(
    "h94_bilstm_crf_tagger",
    "rmsprop",
    "loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="resumed from a checkpoint at step 220 without the optimizer state: RMSprop's square "
    "averages restart at 0, the first updates are ~10x the LR per weight and the loss jumps",
    onset=220,
)
def h94_bilstm_crf_resume_without_state(ctx: Context) -> None:
    gen = seeded(9510)
    model = BiLSTMCRF()
    opts = [torch.optim.RMSprop(model.parameters(), lr=2e-3)]
    ctx.attach(model, opts[0])
    batches = tagging_batches(gen)
    for step in range(360):
        if step == 220:  # "resume": same weights, fresh optimizer
            opts[0].__init__(model.parameters(), lr=2e-3)
        x, tags = next(batches)
        loss = model.crf.nll(model(x), tags)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opts[0].step()
        ctx.step(loss)
        opts[0].zero_grad(set_to_none=True)
    before = sum(ctx.losses[200:220]) / 20
    ctx.check("learned before the resume", before < 0.5 * ctx.losses[0])
    ctx.check("loss jumped over 3x after the resume", max(ctx.losses[221:226]) > 3 * before)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))


# -- character CNN + highway language model -------------------------------------------------------


class Highway(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.h = nn.Linear(dim, dim)
        self.t = nn.Linear(dim, dim)
        nn.init.constant_(self.t.bias, -1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.t(x))
        return gate * F.relu(self.h(x)) + (1 - gate) * x


class CharCNNHighwayLM(nn.Module):
    """Causal char convolutions (widths 2, 3, 5) -> highway layers -> next-byte softmax."""

    def __init__(self, vocab: int = 128, emb: int = 16, channels: int = 32) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.convs = nn.ModuleList(nn.Conv1d(emb, channels, w) for w in (2, 3, 5))
        self.highway = nn.Sequential(Highway(3 * channels), Highway(3 * channels))
        self.out = nn.Linear(3 * channels, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        e = self.emb(idx).transpose(1, 2)
        feats = [torch.tanh(c(F.pad(e, (c.kernel_size[0] - 1, 0)))) for c in self.convs]
        return self.out(self.highway(torch.cat(feats, 1).transpose(1, 2)))


@scenario(
    "h94_charcnn_highway_lm",
    "asgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="linear warm-up to a peak LR of 20 (typo for 2.0) over 200 steps: the loss is fine "
    "until the LR passes the curvature's 2/sharpness limit, then oscillates and blows up",
    onset=20,
)
def h94_charcnn_warmup_overshoot(ctx: Context) -> None:
    gen = seeded(9520)
    model = CharCNNHighwayLM()
    opt = torch.optim.ASGD(model.parameters(), lr=0.0, t0=1e9)

    def before(step: int) -> None:
        opt.param_groups[0]["lr"] = 20.0 * min(1.0, (step + 1) / 200)

    fit(ctx, model, opt, text_batches(gen), 300, loss_fn=lm_loss, classifier=False, before=before)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check("learned during the early warm-up", min(ctx.losses[:40]) < 0.8 * ctx.losses[0])
    ctx.check(
        "then blew up (over 3x its best, or non-finite)",
        len(finite) < len(ctx.losses) or max(finite[40:]) > 3 * min(finite),
    )


# -- BiGRU CTC recogniser -------------------------------------------------------------------------


class BiGRUCTC(nn.Module):
    def __init__(self, bins: int = 16, hidden: int = 32, classes: int = 9) -> None:
        super().__init__()
        self.gru = nn.GRU(bins, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.gru(x)[0]).log_softmax(-1)


@scenario(
    "h94_bigru_ctc_speech",
    "adadelta",
    "data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="one batch at step 200 holds an utterance whose features were never normalised (raw "
    "int16-scale values, x3000): the CTC loss spikes on that batch",
    onset=200,
)
def h94_bigru_ctc_unnormalised_clip(ctx: Context) -> None:
    gen = seeded(9530)
    model = BiGRUCTC()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 200:
            x = x.clone()
            x[3] = x[3] * 3000.0
        return x, y

    fit(ctx, model, opt, speech_batches(gen), 250, loss_fn=ctc, classifier=False, alter=alter)
    prior = sorted(ctx.losses[180:200])[10]
    ctx.check("learned before the bad batch", prior < 0.6 * ctx.losses[0])
    ctx.check("loss at 200 over 2x the median of the 20 before", ctx.losses[200] > 2 * prior)
    ctx.check("finite", all(math.isfinite(v) for v in ctx.losses))
