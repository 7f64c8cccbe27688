"""Held-out set 15 (``h15_``): induced instabilities and healthy controls on families no other
case file has.

Families: Hugging Face FalconMamba (causal LM), MPNet and ConvBERT (sequence classifiers), Swin
(image classifier; HF's PVT was tried first and did not learn 8x8 digits), Data2VecAudio (audio classifier on generated tones) and Informer (forecaster
on generated series), all built from configs; an energy-based model trained by contrastive
divergence with Langevin negatives, neural collaborative filtering (NeuMF), a multi-task net
(shared trunk, two heads), an early-exit network, a Temporal-Fusion-style gated residual
network with interpretable attention, a tree-structured recursive network, a reversible
residual network (RevNet). Optimizers: SGD, momentum, Nesterov, Adam, AdamW, RMSprop, Adagrad,
NAdam, RAdam, Adamax and steadygrad's Lion; fp16 autocast with a GradScaler in one.

Written without reading ``steadygrad/diagnose/detectors/``, ``steadygrad/diagnose/diagnosis.py``,
``steadygrad/monitor/`` or the other held-out case files, and never run on steadygrad while it
was written: each scenario was adjusted only until its own checks held (or, for a healthy
control, until it trained normally), with a stand-in context that attaches nothing.
"""

from __future__ import annotations

import math

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
    scenario,
    seeded,
    text_batches,
)

# -- Hugging Face models from configs --------------------------------------------------------------


def _falcon_mamba(vocab: int = 128, dim: int = 32, layers: int = 2):
    from transformers import FalconMambaConfig, FalconMambaForCausalLM

    config = FalconMambaConfig(
        vocab_size=vocab,
        hidden_size=dim,
        state_size=8,
        num_hidden_layers=layers,
        expand=2,
        conv_kernel=4,
        use_cache=False,
    )
    return FalconMambaForCausalLM(config)


def _mpnet(labels: int = 2):
    from transformers import MPNetConfig, MPNetForSequenceClassification

    config = MPNetConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=labels,
    )
    return MPNetForSequenceClassification(config)


def _convbert(labels: int = 2):
    from transformers import ConvBertConfig, ConvBertForSequenceClassification

    config = ConvBertConfig(
        vocab_size=128,
        hidden_size=32,
        embedding_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        conv_kernel_size=5,
        head_ratio=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=labels,
    )
    return ConvBertForSequenceClassification(config)


def _swin():
    from transformers import SwinConfig, SwinForImageClassification

    config = SwinConfig(
        image_size=8,
        patch_size=2,
        num_channels=1,
        embed_dim=32,
        depths=[1, 1],
        num_heads=[2, 2],
        window_size=2,
        mlp_ratio=2.0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
        num_labels=10,
    )
    return SwinForImageClassification(config)


def _swin_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """8x8 digits, standardised (the image processor's job)."""
    return model(pixel_values=(x.reshape(-1, 1, 8, 8) - 0.3) / 0.4).logits


def _data2vec_audio(labels: int = 4):
    from transformers import Data2VecAudioConfig, Data2VecAudioForSequenceClassification

    config = Data2VecAudioConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=(16, 16, 16),
        conv_stride=(5, 4, 4),
        conv_kernel=(10, 8, 4),
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        num_labels=labels,
        classifier_proj_size=16,
        mask_time_prob=0.0,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        final_dropout=0.0,
        layerdrop=0.0,
    )
    return Data2VecAudioForSequenceClassification(config)


def tone_batches(gen: torch.Generator, batch: int = 16, samples: int = 1600, classes: int = 4):
    """Generated clips: a tone whose frequency band is the label, random phase, amplitude and
    background noise."""
    t = torch.arange(samples) / 8000.0
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 300.0 + 500.0 * y + 100.0 * torch.rand(batch, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        amp = 0.3 + 0.7 * torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(2 * math.pi * freq[:, None] * t + phase)
        yield x + 0.05 * torch.randn(batch, samples, generator=gen), y


def _informer(prediction: int = 8, context: int = 24):
    from transformers import InformerConfig, InformerForPrediction

    config = InformerConfig(
        prediction_length=prediction,
        context_length=context,
        lags_sequence=[1, 2, 3],
        num_time_features=1,
        input_size=1,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        encoder_layerdrop=0.0,
        decoder_layerdrop=0.0,
        distribution_output="normal",
        scaling="mean",
    )
    return InformerForPrediction(config)


def series_batches(gen: torch.Generator, batch: int = 32, past: int = 27, future: int = 8):
    """Generated positive series: level + daily-like seasonality + noise; (past, future) with
    a time feature each."""
    length = past + future
    t = torch.arange(length, dtype=torch.float32)
    while True:
        level = 5.0 + 5.0 * torch.rand(batch, 1, generator=gen)
        period = 6.0 + 6.0 * torch.rand(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        x = level * (1 + 0.3 * torch.sin(2 * math.pi * t / period + phase))
        x = x + 0.2 * torch.randn(batch, length, generator=gen)
        feat = (t / length).expand(batch, length)[..., None]
        yield x[:, :past], feat[:, :past], x[:, past:], feat[:, past:]


def _informer_loss(model: nn.Module, batch) -> torch.Tensor:
    pv, pt, fv, ft = batch
    return model(
        past_values=pv,
        past_time_features=pt,
        past_observed_mask=torch.ones_like(pv),
        future_values=fv,
        future_time_features=ft,
    ).loss


def _own_loop(ctx, model, opt, batches, steps, loss_of, *, before=None, probe=True):
    """A training loop for models whose loss is not ``loss_fn(model(x), y)``."""
    first = next(batches)
    ctx.attach(model, opt, probe=(loss_of, first) if probe else None)
    for step in range(steps):
        b = next(batches)
        if before is not None:
            b = before(step, b) or b
        loss = loss_of(model, b)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# -- FalconMamba: a warm-up that climbs past the stability limit -----------------------------------


@scenario(
    "hf_falcon_mamba",
    "adamw",
    "sharpness_above_limit",
    diverges="auto",
    onset=0,
    note="linear warm-up to a peak LR 1000x the intended one (3e0 typed for 3e-3)",
    heldout=True,
)
def h15_falcon_mamba_warmup_overshoot(ctx: Context) -> None:
    gen = seeded(1501)
    model = _falcon_mamba()
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.01)
    peak, warmup = 3.0, 300  # meant 3e-3: the exponent dropped

    def schedule(step: int) -> None:
        opt.param_groups[0]["lr"] = peak * min(1.0, (step + 1) / warmup)

    def loss_of(m, b):
        return m(input_ids=b[0], labels=b[0]).loss

    def lr_hook(step, b):
        schedule(step)

    _own_loop(ctx, model, opt, text_batches(gen, 16, 32), 320, loss_of, before=lr_hook)
    best = min(ctx.losses[:80])
    ctx.check("learned first (loss fell from 4.7 below 3.0)", best < 3.0)
    tail = ctx.losses[-20:]
    ctx.check(
        "then broke (late loss above twice the best, or non-finite)",
        any(not math.isfinite(v) for v in tail) or min(tail) > 2 * best,
    )


# -- MPNet: the LR raised mid-run (a resumed run given the wrong schedule) --------------------------


@scenario(
    "hf_mpnet",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    onset=150,
    note="resumed at 150; the warm-up factor step / 150 lost its cap and is applied twice",
    heldout=True,
)
def h15_mpnet_uncapped_warmup_on_resume(ctx: Context) -> None:
    gen = seeded(1502)
    model = _mpnet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def resume(step: int) -> None:
        if step >= 150:  # the uncapped factor step / warmup, applied twice (warmup = 150)
            opt.param_groups[0]["lr"] = 0.05 * (step / 150) ** 2

    fit(
        ctx,
        model,
        opt,
        bert_batches(gen, 32, 16),
        STEPS,
        before=resume,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    ctx.check("learned before 150 (loss under 0.6)", min(ctx.losses[100:150]) < 0.6)
    late = ctx.losses[250:]
    ctx.check(
        "broke 100 steps or more after 150 (loss above 1.0 or non-finite)",
        any(not math.isfinite(v) or v > 1.0 for v in late),
    )


STEPS = 450


# -- ConvBERT: labels drifting out of sync with inputs (a slow divergence, no mechanism) ------------


@scenario(
    "hf_convbert",
    "rmsprop",
    "loss_divergence",
    diverges="auto",
    onset=150,
    note="a label cache misaligned for a growing share of samples from step 150",
    heldout=True,
)
def h15_convbert_label_drift(ctx: Context) -> None:
    gen = seeded(1503)
    model = _convbert(labels=8)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    bad = torch.Generator().manual_seed(1503)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        y = x[:, 0] % 8  # the task: the first token's class
        share = min(1.0, max(0.0, (step - 150) / 1200))  # the misaligned share grows
        stale = torch.rand(len(y), generator=bad) < share
        return x, torch.where(stale, torch.randint(0, 8, y.shape, generator=bad), y)

    fit(
        ctx,
        model,
        opt,
        bert_batches(gen, 32, 16),
        520,
        alter=alter,
        forward=lambda m, x: m(input_ids=x).logits,
    )
    early = sum(ctx.losses[130:150]) / 20
    late = sum(ctx.losses[-20:]) / 20
    ctx.check(f"learned before 150 (mean loss {early:.2f} < 0.4)", early < 0.4)
    ctx.check(f"loss climbed (last 20 mean {late:.2f} > 1.0)", late > 1.0)


# -- Swin: a layer-wise LR decay computed in integers freezes the first stage --------------------


@scenario(
    "hf_swin",
    "radam",
    "update_ratio_out_of_range",
    where=("swin.encoder.layers.0", "swin.embeddings"),
    diverges=None,
    note="layer-wise LR decay 0.5 ** (1 - stage) written 1 // 2 ** (1 - stage): stage 0 gets 0",
    heldout=True,
)
def h15_swin_integer_layer_decay(ctx: Context) -> None:
    gen = seeded(1504)
    model = _swin()
    stage0 = [
        p
        for n, p in model.named_parameters()
        if n.startswith(("swin.encoder.layers.0.", "swin.embeddings."))
    ]
    ids = {id(p) for p in stage0}
    rest = [p for p in model.parameters() if id(p) not in ids]
    base = 3e-3
    opt = torch.optim.RAdam(
        [
            {"params": stage0, "lr": base * (1 // 2 ** (1 - 0))},  # meant 0.5 ** 1
            {"params": rest, "lr": base * (1 // 2 ** (1 - 1))},
        ]
    )
    before = [p.detach().clone() for p in stage0]
    fit(ctx, model, opt, digit_batches(gen, 32), 200, forward=_swin_forward)
    ctx.check(
        "stage 0 and the embeddings unchanged",
        all(torch.equal(a, b) for a, b in zip(before, stage0, strict=True)),
    )
    ctx.check(
        "the rest learned (loss fell by half)",
        sum(ctx.losses[-10:]) / 10 < 0.5 * sum(ctx.losses[:10]) / 10,
    )


# -- Data2VecAudio: a silent clip divides by a zero standard deviation -----------------------------


class PerClipNorm(nn.Module):
    """Zero-mean, unit-variance per clip (what a feature extractor does), without the epsilon."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True)


class NormedAudioClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = PerClipNorm()
        self.audio = _data2vec_audio()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.audio(input_values=self.norm(x)).logits


@scenario(
    "hf_data2vec_audio", "nadam", "nonfinite", where="norm", diverges=90, onset=90, heldout=True
)
def h15_data2vec_silent_clip(ctx: Context) -> None:
    gen = seeded(1506)
    model = NormedAudioClassifier()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 90:  # one clip of the batch is digital silence (a muted microphone)
            x = x.clone()
            x[3] = 0.0
        return x, y

    fit(ctx, model, opt, tone_batches(gen), 130, alter=alter)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 90, not at 90", all(finite[:90]) and not finite[90])
    ctx.check("learned before (loss fell under 1.2)", min(ctx.losses[60:90]) < 1.2)


@scenario("hf_data2vec_audio", "adamax", "healthy", heldout=True)
def h15_data2vec_healthy(ctx: Context) -> None:
    gen = seeded(1507)
    model = NormedAudioClassifier()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fit(ctx, model, opt, tone_batches(gen), 150)
    ctx.check(
        "trained (loss fell by half)",
        sum(ctx.losses[-10:]) / 10 < 0.5 * sum(ctx.losses[:10]) / 10,
    )


# -- Informer: one batch with a sensor glitch in its targets --------------------------------------


@scenario("hf_informer", "adam", "data_outlier", diverges=160, onset=160, heldout=True)
def h15_informer_sensor_glitch(ctx: Context) -> None:
    gen = seeded(1508)
    model = _informer()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def glitch(step: int, b):
        if step == 160:  # a meter read 9999 (its error code) in four of the future windows
            pv, pt, fv, ft = b
            fv = fv.clone()
            fv[:4, 2:5] = 9999.0
            return pv, pt, fv, ft
        return None

    _own_loop(ctx, model, opt, series_batches(gen), 240, _informer_loss, before=glitch)
    ctx.check(
        "loss spiked at 160",
        ctx.losses[160] > 5 * max(abs(v) for v in ctx.losses[150:160]),
    )
    ctx.check("learned before (loss fell)", ctx.losses[150] < ctx.losses[0] - 0.5)


# -- Temporal-Fusion-style gated residual network: q/k weights grown by a sign bug ----------------


class GatedResidual(nn.Module):
    """TFT's gated residual network: ELU MLP, GLU gate, residual, LayerNorm."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + F.glu(self.gate(self.fc2(F.elu(self.fc1(x)))), dim=-1))


class InterpretableAttention(nn.Module):
    """TFT's multi-head attention: per-head queries and keys, one value projection shared by
    the heads, heads averaged. Causal; the largest logit of the last forward is kept."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, self.head_dim)
        self.out = nn.Linear(self.head_dim, dim)
        self.max_logit = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        k = self.k(x).reshape(b, t, self.heads, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        self.max_logit = float(logits.detach().abs().max())
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        weights = torch.softmax(logits.masked_fill(mask, float("-inf")), dim=-1).mean(1)
        return self.out(weights @ self.v(x))


class TemporalFusion(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Linear(2, dim)
        self.pre = GatedResidual(dim)
        self.attn = InterpretableAttention(dim, heads)
        self.post = GatedResidual(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pre(self.embed(x))
        return self.head(self.post(h + self.attn(h))).squeeze(-1)


def fusion_batches(gen: torch.Generator, batch: int = 32, length: int = 24):
    """Generated series with a known covariate: predict the next value at every position."""
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        period = 4.0 + 8.0 * torch.rand(batch, 1, generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        series = torch.sin(2 * math.pi * t / period + phase)
        series = series + 0.1 * torch.randn(batch, length + 1, generator=gen)
        covariate = torch.cos(2 * math.pi * t / period + phase)
        x = torch.stack([series[:, :-1], covariate[:, :-1]], -1)
        yield x, series[:, 1:]


@scenario(
    "tft_grn",
    "adam",
    "attention_logit_growth",
    where=("attn", "attn.q", "attn.k"),
    diverges=None,
    onset=50,
    note="from step 50 a hand-written decay on q/k is applied with the wrong sign",
    heldout=True,
)
def h15_tft_qk_decay_sign(ctx: Context) -> None:
    gen = seeded(1509)
    model = TemporalFusion()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    qk = [model.attn.q.weight, model.attn.k.weight]
    max_logits: list[float] = []

    def decay(step: int) -> None:
        max_logits.append(model.attn.max_logit)
        if step >= 50:  # meant p -= lr * wd * p; written +=
            with torch.no_grad():
                for p in qk:
                    p.add_(p, alpha=DECAY)

    fit(
        ctx,
        model,
        opt,
        fusion_batches(gen),
        400,
        before=decay,
        loss_fn=F.mse_loss,
        classifier=False,
    )
    early, late = max(max_logits[1:50]), max(max_logits[-20:])
    ctx.check(
        f"attention logits grew ({early:.1f} -> {late:.1f}, 30x and past 100)",
        late > 30 * early and late > 100,
    )


DECAY = 0.01


@scenario("tft_grn", "nesterov", "healthy", heldout=True)
def h15_tft_healthy(ctx: Context) -> None:
    gen = seeded(1510)
    model = TemporalFusion()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, fusion_batches(gen), 300, loss_fn=F.mse_loss, classifier=False)
    ctx.check(
        "trained (loss fell by half)",
        sum(ctx.losses[-10:]) / 10 < 0.5 * sum(ctx.losses[:10]) / 10,
    )


# -- NeuMF: an activity penalty a thousand times too strong kills the MLP tower -------------------


class NeuMF(nn.Module):
    """He et al. 2017: a GMF branch (elementwise product) and an MLP tower, fused by a linear
    layer into one logit."""

    def __init__(self, users: int, items: int, dim: int = 16) -> None:
        super().__init__()
        self.user_gmf = nn.Embedding(users, dim)
        self.item_gmf = nn.Embedding(items, dim)
        self.user_mlp = nn.Embedding(users, dim)
        self.item_mlp = nn.Embedding(items, dim)
        self.tower = nn.Sequential(nn.Linear(2 * dim, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.fuse = nn.Linear(dim + 16, 1)
        for e in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(e.weight, std=0.1)

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        u, i = pairs[:, 0], pairs[:, 1]
        gmf = self.user_gmf(u) * self.item_gmf(i)
        mlp = self.tower(torch.cat([self.user_mlp(u), self.item_mlp(i)], -1))
        return self.fuse(torch.cat([gmf, mlp], -1)).squeeze(-1)


def interaction_batches(gen: torch.Generator, users: int = 200, items: int = 300, batch: int = 256):
    """Generated implicit feedback: a user likes an item when their hidden tastes agree."""
    taste_u = torch.randn(users, 4, generator=gen)
    taste_i = torch.randn(items, 4, generator=gen)
    while True:
        u = torch.randint(0, users, (batch,), generator=gen)
        i = torch.randint(0, items, (batch,), generator=gen)
        y = ((taste_u[u] * taste_i[i]).sum(-1) > 0).float()
        yield torch.stack([u, i], 1), y


@scenario(
    "neumf",
    "adagrad",
    "loss_of_plasticity",
    where=("tower.2", "tower.3"),
    diverges=None,
    note="an L1 activity penalty on the tower at 1e-1 where 1e-4 was meant",
    heldout=True,
)
def h15_neumf_activity_penalty(ctx: Context) -> None:
    gen = seeded(1511)
    model = NeuMF(200, 300)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    acts: list[torch.Tensor] = []
    model.tower.register_forward_hook(lambda m, i, o: acts.append(o))

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        h = acts.pop()
        return loss + PENALTY * h.abs().sum(-1).mean()

    fit(
        ctx,
        model,
        opt,
        interaction_batches(gen),
        300,
        loss_fn=F.binary_cross_entropy_with_logits,
        extra_loss=penalty,
        classifier=False,
    )
    pairs, _ = next(interaction_batches(seeded(1511)))
    with torch.no_grad():
        first = model.tower[1](
            model.tower[0](
                torch.cat([model.user_mlp(pairs[:, 0]), model.item_mlp(pairs[:, 1])], -1)
            )
        )
        second = model.tower(
            torch.cat([model.user_mlp(pairs[:, 0]), model.item_mlp(pairs[:, 1])], -1)
        )
    d1, d2 = dead_fraction(first), dead_fraction(second)
    ctx.check(f"second tower layer dead ({d2:.2f}; first {d1:.2f})", d2 >= 0.9)


PENALTY = 0.1


@scenario("neumf", "adamw", "healthy", heldout=True)
def h15_neumf_healthy(ctx: Context) -> None:
    gen = seeded(1512)
    model = NeuMF(200, 300)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    fit(
        ctx,
        model,
        opt,
        interaction_batches(gen),
        300,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
    )
    ctx.check(
        "trained (loss fell under 0.5)",
        sum(ctx.losses[-10:]) / 10 < 0.5,
    )


# -- multi-task net: a loss scaler told to grow every 5 steps keeps overflowing -------------------


class MultiTask(nn.Module):
    """A shared trunk with two heads: the digit class and the ink (mean intensity)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64), nn.Tanh())
        self.classify = nn.Linear(64, 10)
        self.ink = nn.Linear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(x)
        return torch.cat([self.classify(h), self.ink(h)], -1)


def _two_task_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    label, ink = target[:, 0].long(), target[:, 1]
    return F.cross_entropy(out[:, :10], label) + F.mse_loss(out[:, 10], ink)


def _two_task_batches(gen: torch.Generator, batch: int = 64):
    for x, y in digit_batches(gen, batch):
        yield x, torch.stack([y.float(), x.mean(1)], 1)


@scenario(
    "multitask",
    "sgd",
    "amp_overflow",
    diverges=None,
    note="fp16 autocast; GradScaler(init_scale=2**24, growth_interval=5): steps keep overflowing",
    heldout=True,
)
def h15_multitask_amp_scaler_growth(ctx: Context) -> None:
    gen = seeded(1513)
    model = MultiTask()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**24, growth_interval=5)
    fit(
        ctx,
        model,
        opt,
        _two_task_batches(gen),
        500,
        loss_fn=_two_task_loss,
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    drops = sum(b < a for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=False))
    ctx.check(f"the scaler backed off {drops} times (at least 10)", drops >= 10)
    ctx.check(
        "trained anyway (loss fell by half)",
        sum(ctx.losses[-10:]) / 10 < 0.5 * sum(ctx.losses[:10]) / 10,
    )


# -- early-exit network: a sharpening temperature left on during training --------------------------


class EarlyExit(nn.Module):
    """Three residual blocks, an exit classifier after each; the loss averages the exits."""

    def __init__(self, dim: int = 64, temperature: float = 1.0) -> None:
        super().__init__()
        self.stem = nn.Linear(64, dim)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU()) for _ in range(3)
        )
        self.exits = nn.ModuleList(nn.Linear(dim, 10) for _ in range(3))
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits of every exit, stacked: (exits, batch, classes)."""
        h = self.stem(x)
        outs = []
        for block, exit_ in zip(self.blocks, self.exits, strict=True):
            h = h + block(h)
            outs.append(exit_(h) / self.temperature)
        return torch.stack(outs)


def _exits_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy averaged over the exits."""
    return F.cross_entropy(out.flatten(0, 1), y.repeat(out.shape[0]))


@scenario(
    "early_exit",
    "sg_lion",
    "softmax_collapse",
    where=("exits.2", "exits.1", "exits.0"),
    diverges=None,
    note="the confidence-sharpening temperature 0.02 meant for exit decisions is applied in training",
    heldout=True,
)
def h15_early_exit_sharpened(ctx: Context) -> None:
    gen = seeded(1514)
    model = EarlyExit(temperature=0.02)
    opt = sgo.Lion(model.parameters(), lr=3e-4, fused=False)

    fit(ctx, model, opt, digit_batches(gen), 300, loss_fn=_exits_loss)
    x, y = digits()
    with torch.no_grad():
        share = collapsed_fraction(model(x)[-1], y)
    ctx.check(f"softmax collapsed on {share:.2f} of the digits (at least half)", share >= 0.5)


# -- RevNet: one step's loss scaled by a stale gradient-accumulation factor poisons Adam ----------


class Coupling(nn.Module):
    """An additive reversible block (Gomez et al. 2017): y1 = x1 + F(x2), y2 = x2 + G(y1)."""

    def __init__(self, half: int) -> None:
        super().__init__()
        self.f = nn.Sequential(nn.Linear(half, half), nn.ReLU(), nn.Linear(half, half))
        self.g = nn.Sequential(nn.Linear(half, half), nn.ReLU(), nn.Linear(half, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, -1)
        y1 = x1 + self.f(x2)
        return torch.cat([y1, x2 + self.g(y1)], -1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        y1, y2 = y.chunk(2, -1)
        x2 = y2 - self.g(y1)
        return torch.cat([y1 - self.f(x2), x2], -1)


class RevNet(nn.Module):
    def __init__(self, blocks: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Coupling(32) for _ in range(blocks))
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@scenario(
    "revnet",
    "adam",
    "adam_second_moment_poisoned",
    diverges="auto",
    onset=60,
    note="at step 60 the loss is multiplied by an accumulation factor of 1e5 (a stale variable)",
    heldout=True,
)
def h15_revnet_scaled_step(ctx: Context) -> None:
    gen = seeded(1515)
    model = RevNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    v_before: list[float] = []

    def scaled(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step == 60:
            v_before.append(max(float(s["exp_avg_sq"].max()) for s in opt.state.values()))
            return loss * 1e5  # accum_steps from a previous config, never reset
        return loss

    fit(ctx, model, opt, digit_batches(gen), 300, extra_loss=scaled)
    v_after = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
    ctx.check(
        f"second moment inflated ({v_before[0]:.2e} -> {v_after:.2e}, 1e6x)",
        v_after > 1e6 * v_before[0],
    )
    fell_before = ctx.losses[0] - min(ctx.losses[50:60])
    fell_after = min(ctx.losses[50:60]) - sum(ctx.losses[-10:]) / 10
    ctx.check(
        f"no progress after 60 (fell {fell_before:.2f} before, {fell_after:.2f} in 240 after)",
        fell_before > 0.5 and fell_after < 0.25 * fell_before,
    )


# -- tree-structured recursive network: gradients grow with the composition's gain ----------------


class TreeNet(nn.Module):
    """Composes leaves bottom-up along a given binary tree with one shared cell; reads the root."""

    def __init__(self, vocab: int = 16, dim: int = 24) -> None:
        super().__init__()
        self.leaf = nn.Embedding(vocab, dim)
        self.compose = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, tokens: torch.Tensor, merges: list[tuple[int, int]]) -> torch.Tensor:
        nodes = list(self.leaf(tokens).unbind(1))
        for left, right in merges:
            nodes.append(
                F.leaky_relu(self.compose(torch.cat([nodes[left], nodes[right]], -1)), 0.1)
            )
        return self.head(nodes[-1]).squeeze(-1)


def _left_leaning_tree(leaves: int) -> list[tuple[int, int]]:
    """A parse tree like that of a long right-to-left sentence: ((((a b) c) d) ...)."""
    merges, last = [], 0
    for i in range(1, leaves):
        merges.append((last, i))
        last = leaves + i - 1
    return merges


@scenario(
    "tree_rnn",
    "sgd_mom",
    "exploding_gradients",
    where=("compose",),
    diverges="auto",
    note="identity-initialised composition (an IRNN trick), trees deepened by a curriculum, "
    "no clipping",
    heldout=True,
)
def h15_tree_identity_init(ctx: Context) -> None:
    gen = seeded(1516)
    model = TreeNet()
    with torch.no_grad():  # "identity init helps recursive nets": the left child passed through
        eye = torch.eye(24)
        model.compose.weight.copy_(torch.cat([eye, 0.3 * eye], 1))
        model.compose.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.5)
    sizes: list[int] = []

    def batches():
        step = 0
        while True:
            leaves = 4 + step // 8  # the curriculum: one more word every 8 steps
            sizes.append(leaves)
            tokens = torch.randint(0, 16, (32, leaves), generator=gen)
            yield tokens, (tokens[:, 0] - 7.5) / 4  # recall the first word's value
            step += 1

    fit(
        ctx,
        model,
        opt,
        batches(),
        240,
        loss_fn=F.mse_loss,
        classifier=False,
        forward=lambda m, t: m(t, _left_leaning_tree(t.shape[1])),
    )
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    ctx.check(
        f"gradients exploded (median {sorted(g)[len(g) // 2]:.2g} -> max {max(g):.2g})",
        max(g) > 100 * sorted(g)[len(g) // 2] or len(g) < len(ctx.grad_norms),
    )
    ctx.check("loss went non-finite", not all(math.isfinite(v) for v in ctx.losses))


# -- energy-based model: contrastive divergence with Langevin negatives (healthy) -----------------


class Energy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(2, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def ring_points(gen: torch.Generator, batch: int = 128) -> torch.Tensor:
    """Generated 2-D data: eight Gaussian blobs on a ring of radius 2."""
    angle = 2 * math.pi * torch.randint(0, 8, (batch,), generator=gen) / 8
    centres = 2.0 * torch.stack([angle.cos(), angle.sin()], 1)
    return centres + 0.1 * torch.randn(batch, 2, generator=gen)


def langevin(energy: nn.Module, x: torch.Tensor, steps: int = 20, size: float = 0.05):
    """Short-run Langevin sampling from ``x``: x <- x - size/2 * dE/dx + sqrt(size) * noise."""
    for p in energy.parameters():
        p.requires_grad_(False)
    x = x.clone().requires_grad_(True)
    for _ in range(steps):
        (grad,) = torch.autograd.grad(energy(x).sum(), x)
        x = (x - 0.5 * size * grad + math.sqrt(size) * 0.1 * torch.randn_like(x)).detach()
        x.requires_grad_(True)
    for p in energy.parameters():
        p.requires_grad_(True)
    return x.detach()


@scenario("ebm", "adam", "healthy", heldout=True)
def h15_ebm_langevin_healthy(ctx: Context) -> None:
    gen = seeded(1517)
    model = Energy()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.999))
    buffer = 6 * torch.rand(1000, 2, generator=gen) - 3  # persistent chains (replay buffer)

    def cd_loss(m: nn.Module, batch) -> torch.Tensor:
        pos, neg = batch
        e_pos, e_neg = m(pos), m(neg)
        return e_pos.mean() - e_neg.mean() + 0.1 * (e_pos.pow(2).mean() + e_neg.pow(2).mean())

    def batches():
        while True:
            idx = torch.randint(0, len(buffer), (128,), generator=gen)
            fresh = torch.rand(128, generator=gen) < 0.05
            start = torch.where(
                fresh[:, None], 6 * torch.rand(128, 2, generator=gen) - 3, buffer[idx]
            )
            neg = langevin(model, start)
            buffer[idx] = neg
            yield ring_points(gen), neg

    _own_loop(ctx, model, opt, batches(), 300, cd_loss, probe=False)
    with torch.no_grad():
        data = model(ring_points(gen, 512)).mean()
        noise = model(6 * torch.rand(512, 2, generator=gen) - 3).mean()
    ctx.check(
        f"data has lower energy than noise ({float(data):.2f} < {float(noise):.2f})",
        float(data) < float(noise) - 0.2,
    )
