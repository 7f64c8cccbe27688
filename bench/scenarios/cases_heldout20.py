"""Held-out set 20 (``h20_``): families none of the other case files have.

Hugging Face Cohere2 causal LM, Data2VecText classifier, SegFormer semantic segmentation on
generated images, PVT image classifier and TimeSeriesTransformer forecaster on generated series,
all built from configs; Barlow Twins on digits, second-order MAML on generated sine tasks, slot
attention on generated scenes (fp16 autocast), DeepONet on a generated antiderivative operator,
hierarchical attention network (HAN) text classifier, Graph U-Net on generated block-model
graphs, denoising score matching on generated 2-D points. Optimizers: SGD, momentum, Nesterov,
Adam, AdamW, Adamax, NAdam, RAdam, RMSprop, Adagrad, steadygrad's AdaBelief and Lion.

Written without reading ``steadygrad/diagnose/`` or ``steadygrad/monitor/`` or the other
held-out files, and never run on steadygrad while it was written: each scenario was tuned only
with a stand-in context that attaches nothing, until its own checks held (the healthy ones until
they trained normally).
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
    bert_batches,
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
    return sum(values) / max(len(values), 1)


def _train(ctx: Context, model: nn.Module, opt, steps: int, loss_at, *, before=None, probe=None):
    """A plain loop for models whose loss is not ``loss_fn(model(x), y)``: ``loss_at(step)``
    returns (loss to log, loss to backpropagate)."""
    ctx.attach(model, opt, probe=probe)
    for step in range(steps):
        if before is not None:
            before(step)
        loss, total = loss_at(step)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


# -- Hugging Face Cohere2 causal LM -----------------------------------------------------------------


def _cohere2(dim: int = 32, layers: int = 2):
    from transformers import Cohere2Config, Cohere2ForCausalLM

    config = Cohere2Config(
        vocab_size=128,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        sliding_window=16,
        layer_types=["sliding_attention", "full_attention"][:layers],
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        attention_dropout=0.0,
    )
    return Cohere2ForCausalLM(config)


def _qk_logit_max(model, x: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(d) of any head of any layer (from the projections, before rotary
    embedding, which turns q and k but keeps their lengths)."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for i, layer in enumerate(model.model.layers):
        for name in ("q_proj", "k_proj"):
            mod = getattr(layer.self_attn, name)
            hooks.append(
                mod.register_forward_hook(
                    lambda m, a, out, key=f"{i}.{name}": seen.__setitem__(key, out.detach())
                )
            )
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    heads = model.config.num_attention_heads
    best = 0.0
    for i in range(len(model.model.layers)):
        q, k = seen[f"{i}.q_proj"], seen[f"{i}.k_proj"]
        b, t, d = q.shape
        q = q.reshape(b, t, heads, -1).transpose(1, 2)
        k = k.reshape(b, t, heads, -1).transpose(1, 2)
        best = max(best, float((q @ k.transpose(-1, -2)).abs().max()) / math.sqrt(d // heads))
    return best


@scenario(
    "hf_cohere2_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    onset=40,
    heldout=True,
)
def h20_cohere2_qk_decay_sign_growth(ctx: Context) -> None:
    """Cohere2 has no QK-norm here. The query/key projections sit in their own parameter group
    with a hand-written decoupled weight decay whose sign is flipped (``p.mul_(1 + lr * wd)``
    instead of ``1 - lr * wd``), switched on after a 40-step warm-up: q and k grow a little every
    step, the attention logits grow as their product and the attention turns one-hot."""
    gen = seeded(2001)
    model = _cohere2()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": qk, "weight_decay": 0.0}, {"params": rest, "weight_decay": 0.01}], lr=3e-3
    )
    probe_x, _ = next(text_batches(gen))
    start: list[float] = []

    def decay_bug(step: int) -> None:
        if step == 40:
            start.append(_qk_logit_max(model, probe_x))
        if step >= 40:
            with torch.no_grad():
                for p in qk:
                    p.mul_(1 + 3e-3 * 5.0)  # lr * wd with the sign lost

    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        260,
        loss_fn=lm_loss,
        classifier=False,
        before=decay_bug,
        forward=lambda m, x: m(x).logits,
    )
    end = _qk_logit_max(model, probe_x)
    ctx.check("attention logits grew 10x from step 40", end > 10 * start[0])
    ctx.check("largest attention logit over 50", end > 50)


@scenario("hf_cohere2_lm", "adamw", "healthy", heldout=True)
def h20_healthy_cohere2_adamw(ctx: Context) -> None:
    gen = seeded(2002)
    model = _cohere2()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        220,
        loss_fn=lm_loss,
        classifier=False,
        forward=lambda m, x: m(x).logits,
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.7 * _mean(ctx.losses[:5]))


# -- Hugging Face Data2VecText classifier ------------------------------------------------------------


def _data2vec_text():
    from transformers import Data2VecTextConfig, Data2VecTextForSequenceClassification

    config = Data2VecTextConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        pad_token_id=0,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return Data2VecTextForSequenceClassification(config)


@scenario(
    "hf_data2vec_text_classifier",
    "adam",
    "output_logit_divergence",
    where="classifier.out_proj",
    diverges="auto",
    onset=80,
    heldout=True,
)
def h20_data2vec_zloss_sign(ctx: Context) -> None:
    """A z-loss (``1e-2 * logsumexp(logits)**2``, meant to keep the log-partition near zero) is
    switched on at step 80 with its sign flipped: the optimizer is paid to push log Z up, the
    classifier's logits drift outwards without bound and the cross-entropy follows."""
    gen = seeded(2003)
    model = _data2vec_text()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    log_z: dict[int, float] = {}

    batches = bert_batches(gen)
    forward = lambda m, x: m(input_ids=x).logits  # noqa: E731
    ctx.attach(
        model, opt, probe=(lambda m, b: F.cross_entropy(forward(m, b[0]), b[1]), next(batches))
    )
    for step in range(300):
        x, y = next(batches)
        ctx.targets(y)
        logits = forward(model, x)
        loss = F.cross_entropy(logits, y)
        z = torch.logsumexp(logits, -1)
        log_z[step] = float(z.detach().abs().mean())
        total = loss - 1e-2 * (z**2).mean() if step >= 80 else loss
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("|log Z| grew 5x after step 80", log_z[299] > 5 * max(log_z[79], 1.0))
    ctx.check("loss climbed", _mean(ctx.losses[-10:]) > 2 * min(ctx.losses[60:80]))


# -- Hugging Face SegFormer: semantic segmentation of generated shapes -------------------------------


def _shape_scenes(gen: torch.Generator, n: int, size: int = 32):
    """Images with a disc and a square on a noisy background; labels per pixel: 0 background,
    1 disc, 2 square."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = 0.1 * torch.randn(n, 3, size, size, generator=gen)
    labels = torch.zeros(n, size, size, dtype=torch.long)
    for i in range(n):
        cy, cx, r = (int(v) for v in torch.randint(6, size - 6, (3,), generator=gen))
        r = 3 + r % 4
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        sy, sx = (int(v) for v in torch.randint(2, size - 8, (2,), generator=gen))
        square = torch.zeros(size, size, dtype=torch.bool)
        square[sy : sy + 6, sx : sx + 6] = True
        labels[i][square] = 2
        labels[i][disc] = 1
        colour = torch.rand(3, generator=gen)
        images[i][:, disc] += colour[:, None]
        images[i][:, square] += (1 - colour)[:, None]
    return images, labels


def _segformer():
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[2, 1],
        hidden_sizes=[16, 32],
        patch_sizes=[3, 3],
        strides=[2, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        classifier_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    return SegformerForSemanticSegmentation(config)


def _pixel_rows(logits: torch.Tensor, labels: torch.Tensor):
    """Upsample SegFormer's quarter-size logits to the labels and flatten to (pixels, classes)."""
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return up.permute(0, 2, 3, 1).reshape(-1, up.shape[1]), labels.reshape(-1)


@scenario(
    "hf_segformer_segmentation",
    "adamax",
    "softmax_collapse",
    where="decode_head.classifier",
    diverges=None,
    heldout=True,
)
def h20_segformer_temperature_typo(ctx: Context) -> None:
    """Fine-tuning on a small fixed set of 16 scenes with the logits divided by a temperature of
    0.02 (meant to multiply by 50): the float32 softmax of most pixels rounds to exactly one-hot and
    their gradient to exactly zero."""
    gen = seeded(2004)
    images, labels = _shape_scenes(gen, 16)
    model = _segformer()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)

    def seg_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(*_pixel_rows(logits / 0.02, y))

    def same_batch():
        while True:
            yield images, labels

    fit(
        ctx,
        model,
        opt,
        same_batch(),
        200,
        loss_fn=seg_loss,
        classifier=False,
        forward=lambda m, x: m(pixel_values=x).logits,
    )
    with torch.no_grad():
        rows, y = _pixel_rows(model(pixel_values=images).logits / 0.02, labels)
    ctx.check("half the pixels collapsed", collapsed_fraction(rows, y) > 0.5)


# -- Hugging Face PVT image classifier on upsampled digits --------------------------------------------


def _pvt():
    from transformers import PvtConfig, PvtForImageClassification

    config = PvtConfig(
        image_size=32,
        num_channels=1,
        num_encoder_blocks=2,
        depths=[1, 1],
        sequence_reduction_ratios=[2, 1],
        hidden_sizes=[32, 64],
        patch_sizes=[4, 2],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        num_labels=10,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=0.0,
    )
    return PvtForImageClassification(config)


def _digit_images(gen: torch.Generator, batch: int = 32):
    for x, y in digit_batches(gen, batch):
        yield F.interpolate(2 * x.reshape(-1, 1, 8, 8) - 1, size=32, mode="nearest"), y


@scenario(
    "hf_pvt_classifier",
    "radam",
    "update_ratio_out_of_range",
    where=("pvt.encoder.patch_embeddings.0", "pvt.encoder.block.0"),
    diverges=None,
    heldout=True,
)
def h20_pvt_layer_decay_zero(ctx: Context) -> None:
    """Layer-wise LR decay written as ``lr * decay ** (depth - stage)`` with ``decay=0.0`` (the
    config meant 0.75 and held 0 after a bad merge): the last stage and the head train, the whole
    first stage (its patch embedding and block) gets a learning rate of exactly zero."""
    gen = seeded(2005)
    model = _pvt()
    decay, depth = 0.0, 1
    stage0 = [
        p
        for n, p in model.named_parameters()
        if n.startswith(("pvt.encoder.patch_embeddings.0.", "pvt.encoder.block.0."))
    ]
    ids = {id(p) for p in stage0}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.RAdam(
        [{"params": stage0, "lr": 2e-3 * decay**depth}, {"params": rest, "lr": 2e-3}]
    )
    before = [p.detach().clone() for p in stage0]
    fit(ctx, model, opt, _digit_images(gen), 220, forward=lambda m, x: m(pixel_values=x).logits)
    ctx.check(
        "stage 0 unchanged", all(torch.equal(a, b) for a, b in zip(before, stage0, strict=True))
    )
    ctx.check("the rest learned", _mean(ctx.losses[-20:]) < 0.9 * _mean(ctx.losses[:10]))


# -- Hugging Face TimeSeriesTransformer forecaster on generated series --------------------------------


def _series_batches(gen: torch.Generator, batch: int = 16, context: int = 16, horizon: int = 8):
    """Noisy seasonal series with a random level, period and phase: (past, past time features,
    future, future time features); the past carries 3 extra lags."""
    total = context + 3 + horizon
    t = torch.arange(total, dtype=torch.float32)
    while True:
        level = 5 + 3 * torch.rand(batch, 1, generator=gen)
        period = 6 + 6 * torch.rand(batch, 1, generator=gen)
        phase = 6.3 * torch.rand(batch, 1, generator=gen)
        noise = 0.1 * torch.randn(batch, total, generator=gen)
        y = level + torch.sin(2 * math.pi * t / period + phase) + noise
        feat = (t / total)[None, :, None].expand(batch, total, 1)
        cut = context + 3
        yield y[:, :cut], feat[:, :cut], y[:, cut:], feat[:, cut:]


def _time_series_transformer():
    from transformers import TimeSeriesTransformerConfig, TimeSeriesTransformerForPrediction

    config = TimeSeriesTransformerConfig(
        prediction_length=8,
        context_length=16,
        input_size=1,
        lags_sequence=[1, 2, 3],
        num_time_features=1,
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
    )
    return TimeSeriesTransformerForPrediction(config)


@scenario("hf_time_series_transformer", "adam", "healthy", heldout=True)
def h20_healthy_time_series_transformer_adam(ctx: Context) -> None:
    gen = seeded(2006)
    model = _time_series_transformer()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = _series_batches(gen)

    def loss_at(step: int):
        past, past_t, future, future_t = next(batches)
        loss = model(
            past_values=past,
            past_time_features=past_t,
            past_observed_mask=torch.ones_like(past),
            future_values=future,
            future_time_features=future_t,
        ).loss
        return loss, loss

    _train(ctx, model, opt, 200, loss_at)
    ctx.check("NLL fell", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:5]) - 0.3)


# -- Barlow Twins on digits ------------------------------------------------------------------------------


class BarlowTwins(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = MLP([64, 128, 128])
        self.act = nn.ReLU()
        self.projector = nn.Sequential(
            nn.Linear(128, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.features(x))


def _barlow_loss(z1: torch.Tensor, z2: torch.Tensor, off: float = 5e-3) -> torch.Tensor:
    z1 = (z1 - z1.mean(0)) / (z1.std(0) + 1e-5)
    z2 = (z2 - z2.mean(0)) / (z2.std(0) + 1e-5)
    c = z1.T @ z2 / len(z1)
    on = (torch.diagonal(c) - 1).pow(2).sum()
    return on + off * (c - torch.diag(torch.diagonal(c))).pow(2).sum()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    keep = (torch.rand(x.shape, generator=gen) > 0.2).float()
    return x * keep + 0.1 * torch.randn(x.shape, generator=gen)


@scenario(
    "barlow_twins",
    "sgd_mom",
    "loss_of_plasticity",
    where=("encoder.2", "act"),
    diverges="auto",
    onset=100,
    heldout=True,
)
def h20_barlow_activity_penalty_sign(ctx: Context) -> None:
    """An activity penalty meant as ``mean(|h|)`` on the encoder's last hidden layer is written
    on the pre-activation without the absolute value and switched on at step 100: it pays the
    optimizer to push encoder.2's outputs below zero, and the ReLU after it dies unit by unit
    (a dead unit gets no gradient from the Barlow loss to come back)."""
    gen = seeded(2007)
    model = BarlowTwins()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    batches = digit_batches(gen, 128)
    pre: list[torch.Tensor] = []
    model.encoder[2].register_forward_hook(lambda m, a, out: pre.append(out))

    def loss_at(step: int):
        pre.clear()
        x, _ = next(batches)
        loss = _barlow_loss(model(_augment(x, gen)), model(_augment(x, gen)))
        penalty = sum(h.mean() for h in pre)
        return loss, loss + 0.3 * penalty if step >= 100 else loss

    _train(ctx, model, opt, 300, loss_at)
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ctx.check("most of encoder.2's units dead", dead > 0.5)
    ctx.check("Barlow loss fell before the bug", _mean(ctx.losses[90:100]) < 0.8 * ctx.losses[0])


# -- second-order MAML on generated sine tasks ---------------------------------------------------------


def _sine_tasks(gen: torch.Generator, tasks: int = 8, shots: int = 10):
    """Sine regression tasks (amplitude 0.1..5, phase 0..pi): support and query sets."""
    while True:
        amp = 0.1 + 4.9 * torch.rand(tasks, 1, 1, generator=gen)
        phase = math.pi * torch.rand(tasks, 1, 1, generator=gen)
        x = 10 * torch.rand(tasks, 2 * shots, 1, generator=gen) - 5
        y = amp * torch.sin(x + phase)
        yield x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:]


def _maml_loss(model: nn.Module, batch, inner_lr: float = 0.01) -> torch.Tensor:
    """Query loss after one inner SGD step on each task's support set, keeping the graph of the
    inner step (second order)."""
    from torch.func import functional_call

    xs, ys, xq, yq = batch
    params = dict(model.named_parameters())
    losses = []
    for i in range(len(xs)):
        inner = F.mse_loss(functional_call(model, params, (xs[i],)), ys[i])
        grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
        fast = {n: p - inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
        losses.append(F.mse_loss(functional_call(model, fast, (xq[i],)), yq[i]))
    return torch.stack(losses).mean()


@scenario("maml_sine", "adam", "adam_second_moment_poisoned", diverges=None, onset=80, heldout=True)
def h20_maml_unscaled_loss_once(ctx: Context) -> None:
    """At step 80 the resumed loop multiplies the meta-loss by a stale AMP loss scale of 1024
    once, without unscaling: one meta-gradient 1024x too large. Adam's second moment (beta2 =
    0.999, forgetting over ~1000 steps) holds its square long after, and every later update is
    ~30x too small: meta-learning stalls."""
    gen = seeded(2008)
    model = MLP([1, 40, 40, 1], act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    tasks = _sine_tasks(gen)
    moved: list[torch.Tensor] = []

    def loss_at(step: int):
        if step in (40, 70, 140, 170):
            moved.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        loss = _maml_loss(model, next(tasks))
        return loss, loss * 1024.0 if step == 80 else loss

    _train(ctx, model, opt, 200, loss_at)
    before, after = (moved[1] - moved[0]).norm(), (moved[3] - moved[2]).norm()
    ctx.check("updates shrank 3x after step 80", after < before / 3)
    ctx.check(
        "meta-loss fell before step 80", _mean(ctx.losses[70:80]) < 0.8 * _mean(ctx.losses[:5])
    )


# -- slot attention on generated scenes (fp16 autocast) ------------------------------------------------


def _blob_scenes(gen: torch.Generator, batch: int = 16, size: int = 12, blobs: int = 2):
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    while True:
        img = torch.zeros(batch, 3, size, size)
        for _ in range(blobs):
            c = 1.6 * torch.rand(batch, 2, generator=gen) - 0.8
            colour = torch.rand(batch, 3, generator=gen)
            mask = torch.exp(
                -((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) / 0.05
            )
            img = img + colour[:, :, None, None] * mask[:, None]
        yield img, img


class SlotAttentionAE(nn.Module):
    """Conv encoder, slot attention (Locatello et al. 2020: 3 iterations, GRU update), spatial
    broadcast decoder producing per-slot colours and masks."""

    def __init__(self, size: int = 12, slots: int = 3, dim: int = 32) -> None:
        super().__init__()
        self.size, self.slots, self.dim = size, slots, dim
        self.encoder = nn.Sequential(
            nn.Conv2d(5, dim, 3, padding=1), nn.ReLU(), nn.Conv2d(dim, dim, 3, padding=1)
        )
        self.norm_inputs = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.gru = nn.GRUCell(dim, dim)
        self.slot_mu = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.decoder = nn.Sequential(nn.Linear(dim + 2, 64), nn.ReLU(), nn.Linear(64, 4))
        grid = torch.stack(
            torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        )
        self.register_buffer("grid", grid)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        b = len(img)
        feats = self.encoder(torch.cat([img, self.grid.expand(b, -1, -1, -1)], 1))
        inputs = self.norm_inputs(feats.flatten(2).transpose(1, 2))
        k, v = self.k(inputs), self.v(inputs)
        slots = self.slot_mu.expand(b, self.slots, -1).contiguous()
        for _ in range(3):
            q = self.q(self.norm_slots(slots))
            attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(self.dim), dim=1)
            attn = attn / attn.sum(-1, keepdim=True)
            updates = attn @ v
            slots = self.gru(updates.reshape(-1, self.dim), slots.reshape(-1, self.dim))
            slots = slots.reshape(b, self.slots, self.dim)
        pos = self.grid.flatten(1).T.expand(b * self.slots, -1, -1)
        dec_in = torch.cat([slots.reshape(-1, 1, self.dim).expand(-1, pos.shape[1], -1), pos], -1)
        out = self.decoder(dec_in).reshape(b, self.slots, self.size, self.size, 4)
        colours, masks = out[..., :3], torch.softmax(out[..., 3:], dim=1)
        return (colours * masks).sum(1).permute(0, 3, 1, 2)


@scenario("slot_attention", "sg_adabelief", "amp_overflow", diverges=None, heldout=True)
def h20_slot_attention_fp16_scaler(ctx: Context) -> None:
    """fp16 autocast with a GradScaler that starts at 2**30 and tries to grow every 25 steps:
    it overflows now and then, skips those steps and backs off; reconstruction still improves."""
    gen = seeded(2009)
    model = SlotAttentionAE()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)
    fit(
        ctx,
        model,
        opt,
        _blob_scenes(gen),
        160,
        loss_fn=F.mse_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("reconstruction improved", _mean(ctx.losses[-10:]) < 0.7 * _mean(ctx.losses[:5]))


# -- DeepONet on a generated antiderivative operator -----------------------------------------------------


def _antiderivative_batches(
    gen: torch.Generator, batch: int = 32, sensors: int = 32, points: int = 16
):
    """u(x) = sum of three random sines on [0, 1], read at fixed sensors; targets G(u)(y) =
    integral of u from 0 to y at random y (in closed form)."""
    xs = torch.linspace(0, 1, sensors)
    k = torch.tensor([1.0, 2.0, 3.0]) * math.pi
    while True:
        a = torch.randn(batch, 3, generator=gen)
        u = (a[:, :, None] * torch.sin(k[None, :, None] * xs)).sum(1)
        y = torch.rand(batch, points, generator=gen)
        g = (a[:, :, None] * (1 - torch.cos(k[None, :, None] * y[:, None])) / k[None, :, None]).sum(
            1
        )
        yield (u, y), g


class DeepONet(nn.Module):
    def __init__(self, sensors: int = 32, width: int = 64) -> None:
        super().__init__()
        self.branch = MLP([sensors, width, width])
        self.trunk = MLP([1, width, width], act=nn.Tanh)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, inputs) -> torch.Tensor:
        u, y = inputs
        b = self.branch(u)  # (batch, width)
        t = torch.tanh(self.trunk(y[..., None]))  # (batch, points, width)
        return (t * b[:, None]).sum(-1) + self.bias


@scenario("deeponet_operator", "nadam", "data_outlier", diverges=150, onset=150, heldout=True)
def h20_deeponet_sensor_units_outlier(ctx: Context) -> None:
    """At step 150 one batch comes from a logger that wrote its sensor readings in millivolts:
    four of its input functions are 1000x too large (their targets are right)."""
    gen = seeded(2010)
    model = DeepONet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)

    def alter(step: int, x, y):
        if step == 150:
            u, pts = x
            u = u.clone()
            u[:4] *= 1000.0
            x = (u, pts)
        return x, y

    fit(
        ctx,
        model,
        opt,
        _antiderivative_batches(gen),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
        alter=alter,
    )
    ctx.check("loss spiked at 150", ctx.losses[150] > 5 * max(ctx.losses[140:150]))
    ctx.check("loss fell before", _mean(ctx.losses[140:150]) < 0.5 * _mean(ctx.losses[:5]))


@scenario("deeponet_operator", "sg_lion", "healthy", heldout=True)
def h20_healthy_deeponet_lion(ctx: Context) -> None:
    gen = seeded(2011)
    model = DeepONet()
    opt = sgo.Lion(model.parameters(), lr=1e-4, fused=False)
    fit(
        ctx,
        model,
        opt,
        _antiderivative_batches(gen),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
    )
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:5]))


# -- hierarchical attention network (HAN) text classifier ---------------------------------------------


class AttentionPool(nn.Module):
    """HAN's attention pooling: a learned context vector scores each position; padded positions
    are masked out before the softmax."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.context = nn.Linear(dim, 1, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.context(torch.tanh(self.proj(h))).squeeze(-1)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        return (weights[..., None] * h).sum(-2)


class HAN(nn.Module):
    def __init__(self, vocab: int = 64, dim: int = 24, classes: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.word_gru = nn.GRU(dim, dim, batch_first=True, bidirectional=True)
        self.word_attn = AttentionPool(2 * dim)
        self.sent_gru = nn.GRU(2 * dim, dim, batch_first=True, bidirectional=True)
        self.sent_attn = AttentionPool(2 * dim)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, docs: torch.Tensor) -> torch.Tensor:
        b, s, w = docs.shape
        words, _ = self.word_gru(self.embed(docs.reshape(b * s, w)))
        sents = self.word_attn(words, docs.reshape(b * s, w) != 0).reshape(b, s, -1)
        h, _ = self.sent_gru(sents)
        return self.head(self.sent_attn(h, torch.ones(b, s, dtype=torch.bool)))


def _documents(gen: torch.Generator, batch: int = 16, sents: int = 4, words: int = 8):
    """Documents of 4 sentences of 3..8 tokens (0 pads); label: token 1 occurs more often than
    token 2 in the document."""
    while True:
        docs = torch.randint(3, 64, (batch, sents, words), generator=gen)
        docs = torch.where(torch.rand(docs.shape, generator=gen) < 0.15, 1, docs)
        docs = torch.where(torch.rand(docs.shape, generator=gen) < 0.15, 2, docs)
        length = torch.randint(3, words + 1, (batch, sents, 1), generator=gen)
        docs = torch.where(torch.arange(words) < length, docs, 0)
        yield docs, ((docs == 1).sum((1, 2)) > (docs == 2).sum((1, 2))).long()


@scenario(
    "han_text", "adagrad", "nonfinite", where="word_attn", diverges=150, onset=150, heldout=True
)
def h20_han_empty_sentence_nan(ctx: Context) -> None:
    """At step 150 one document has an empty sentence (a blank line the splitter kept): every
    one of its positions is masked, word_attn's softmax over all -inf is NaN, and the NaN flows
    into the loss and, through the update, into the weights."""
    gen = seeded(2012)
    model = HAN()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[3, 2] = 0
        return x, y

    fit(ctx, model, opt, _documents(gen), 190, alter=alter)
    finite = _finite(ctx.losses)
    ctx.check("finite until 150, not after", all(finite[:150]) and not finite[150])
    ctx.check("learned before", _mean(ctx.losses[140:150]) < 0.8 * _mean(ctx.losses[:5]))


# -- Graph U-Net on generated block-model graphs ------------------------------------------------------


def _block_graphs(gen: torch.Generator, batch: int = 8, nodes: int = 24, feats: int = 8):
    """Two-block stochastic block model graphs (p_in 0.3, p_out 0.03); node label = its block;
    node features: a weak noisy hint of the block."""
    while True:
        block = (torch.rand(batch, nodes, generator=gen) < 0.5).long()
        same = block[:, :, None] == block[:, None, :]
        p = torch.where(same, 0.3, 0.03)
        a = (torch.rand(batch, nodes, nodes, generator=gen) < p).float().triu(1)
        a = a + a.transpose(1, 2)
        x = torch.randn(batch, nodes, feats, generator=gen)
        x[..., 0] += 0.5 * (2 * block - 1)
        yield (x, a), block


def _normalised(a: torch.Tensor) -> torch.Tensor:
    a = a + torch.eye(a.shape[-1])
    d = a.sum(-1).rsqrt()
    return d[..., None] * a * d[..., None, :]


class GCN(nn.Module):
    def __init__(self, a: int, b: int) -> None:
        super().__init__()
        self.lin = nn.Linear(a, b)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        return adj @ self.lin(x)


class GraphUNet(nn.Module):
    """Gao & Ji (2019): GCN, gPool to the top half of the nodes by a learned projection (gated by
    sigmoid of the score), GCN at the bottom, gUnpool back to the places, skip connection."""

    def __init__(self, feats: int = 8, dim: int = 32, classes: int = 2) -> None:
        super().__init__()
        self.down = GCN(feats, dim)
        self.score = nn.Linear(dim, 1, bias=False)
        self.bottom = GCN(dim, dim)
        self.up = GCN(dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, inputs) -> torch.Tensor:
        x, a = inputs
        adj = _normalised(a)
        h = F.relu(self.down(x, adj))
        s = self.score(h).squeeze(-1) / self.score.weight.norm()
        k = h.shape[1] // 2
        top = s.topk(k, dim=1).indices
        pick = lambda t: t.gather(1, top[..., None].expand(-1, -1, t.shape[-1]))  # noqa: E731
        hp = pick(h) * torch.sigmoid(s.gather(1, top))[..., None]
        ap = a.gather(1, top[..., None].expand(-1, -1, a.shape[-1])).gather(
            2, top[:, None].expand(-1, k, -1)
        )
        hb = self.bottom(hp, _normalised(ap))  # linear: the skip below adds it to h
        back = torch.zeros_like(h).scatter(1, top[..., None].expand(-1, -1, h.shape[-1]), hb)
        hu = F.relu(self.up(back + h, adj))
        return self.head(hu).reshape(-1, self.head.out_features)


def _node_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y.reshape(-1))


@scenario("graph_unet", "sgd", "healthy", heldout=True)
def h20_healthy_graph_unet_sgd(ctx: Context) -> None:
    gen = seeded(2013)
    model = GraphUNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(ctx, model, opt, _block_graphs(gen), 220, loss_fn=_node_ce, classifier=False)
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < 0.8 * _mean(ctx.losses[:5]))


@scenario(
    "graph_unet",
    "sgd_mom",
    "exploding_gradients",
    where="up",
    diverges="auto",
    onset=60,
    heldout=True,
)
def h20_graph_unet_gain_ramp_never_stops(ctx: Context) -> None:
    """A LayerScale-style gain ramp for the decoder side (``gain *= 1.03`` per step from step 60,
    folded into the ``up`` GCN's weight, until the gain reaches 1) was started from a gain of 1
    instead of 0.1 and its stop test compares against the ramp's start: it never stops. The up
    weight grows 3% a step, and the gradients flowing through it grow with it until the run
    explodes."""
    gen = seeded(2014)
    model = GraphUNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def rescale(step: int) -> None:
        if step >= 60:
            with torch.no_grad():
                model.up.lin.weight.mul_(1.03)

    fit(
        ctx, model, opt, _block_graphs(gen), 260, loss_fn=_node_ce, classifier=False, before=rescale
    )
    g = ctx.grad_norms
    grown = [v for v in g[60:] if math.isfinite(v)]
    ctx.check("gradient norm grew 10x after step 60", max(grown) > 10 * max(g[40:60]))
    ctx.check("the run blew up", not all(_finite(ctx.losses)) or max(ctx.losses) > 10)


# -- denoising score matching on 2-D points ------------------------------------------------------------


def _two_moons(gen: torch.Generator, batch: int = 128):
    """Points on two interleaved half circles with a little noise."""
    while True:
        t = math.pi * torch.rand(batch, generator=gen)
        upper = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
        y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
        yield torch.stack([x, y], 1) + 0.05 * torch.randn(batch, 2, generator=gen)


class ScoreNet(nn.Module):
    """s(x, sigma): an MLP on the noisy point and log sigma."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.net = MLP([3, width, width, 2], act=nn.SiLU)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, sigma.log()], 1))


def _dsm_loss(model: ScoreNet, x: torch.Tensor, sigma: torch.Tensor, gen, weighted: bool):
    """Denoising score matching: the score of the noised point should be -noise / sigma;
    weighted by sigma**2 (Song & Ermon 2019) or not."""
    noise = torch.randn(x.shape, generator=gen)
    target = -noise / sigma
    err = (model(x + sigma * noise, sigma) - target) ** 2
    if weighted:
        err = err * sigma**2
    return err.sum(1).mean()


@scenario(
    "score_matching_2d", "rmsprop", "loss_divergence", diverges="auto", onset=80, heldout=True
)
def h20_score_matching_unweighted_annealing(ctx: Context) -> None:
    """The sigma**2 weighting was dropped from the loss, and from step 80 a curriculum anneals
    the smallest training noise level from 0.5 down towards 0.05 over 600 steps: the unweighted target
    -noise/sigma grows as the noise shrinks, the net cannot follow it, and the logged loss
    climbs for a hundred steps and more. Nothing in the net breaks; the objective itself
    runs away."""
    gen = seeded(2015)
    model = ScoreNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    points = _two_moons(gen)

    def loss_at(step: int):
        low = 0.5 * (0.1 ** min(1.0, max(0, step - 80) / 600))
        u = torch.rand(128, 1, generator=gen)
        sigma = low * (1.0 / low) ** u  # log-uniform between low and 1
        loss = _dsm_loss(model, next(points), sigma, gen, weighted=False)
        return loss, loss

    _train(ctx, model, opt, 360, loss_at)
    ctx.check("loss fell first", _mean(ctx.losses[70:80]) < 0.8 * _mean(ctx.losses[:5]))
    ctx.check("then climbed 2.5x", _mean(ctx.losses[-20:]) > 2.5 * _mean(ctx.losses[70:80]))


@scenario(
    "deeponet_operator",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    onset=150,
    heldout=True,
)
def h20_deeponet_lr_raised_mid_run(ctx: Context) -> None:
    """Training goes well at lr 0.01; at step 150 a resumed run reads the learning rate of a
    different config (0.3, meant for a normalised net) and carries on with it: every step now
    overshoots the loss's curvature and the loss blows up within a few dozen steps."""
    gen = seeded(2016)
    model = DeepONet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def raise_lr(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 0.3

    fit(
        ctx,
        model,
        opt,
        _antiderivative_batches(gen),
        230,
        loss_fn=F.mse_loss,
        classifier=False,
        before=raise_lr,
    )
    ctx.check("loss fell before 150", _mean(ctx.losses[140:150]) < 0.3 * _mean(ctx.losses[:5]))
    ctx.check(
        "then blew up",
        not all(_finite(ctx.losses[150:])) or max(ctx.losses[150:]) > 5 * _mean(ctx.losses[:5]),
    )
