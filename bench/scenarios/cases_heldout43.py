"""Held-out scenarios, set 43 (``h43_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face NanoChat, VaultGemma and DiffLlama causal LMs, a EuroBERT sequence
classifier and a YOLOS detector (on generated single-object images) built from configs; a
PixelSNAIL-style autoregressive image model (masked convolutions, gated residual blocks, causal
pixel attention) on binarised digits, an NVAE-style hierarchical VAE (residual cells with
squeeze-and-excitation, a residual-normal posterior) on digits, a progressive-GAN generator
(equalised learning rate, pixel norm, fade-in) trained as a class-conditional decoder under fp16
autocast, a RepVGG-style CNN (train-time 3x3, 1x1 and identity branches, each with BN),
a GhostNet-style CNN (one run under fp16 autocast), a Mask-R-CNN-style mask head on generated
RoI crops and a CoAtNet-style hybrid (MBConv stages, then attention with a relative-position
bias table).

Optimizers: SGD, momentum SGD, Nesterov SGD, ASGD, Adam, AdamW, NAdam, RAdam, Adamax, Adagrad,
RMSprop, Adadelta and steadygrad.optim's Lion, AdEMAMix and Grams.
"""

from __future__ import annotations

import math
import statistics

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
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared helpers -------------------------------------------------------------------------------


def _loop(ctx, model, opt, steps, compute, *, before=None, clip=None, scaler=None, inspect=None):
    """A plain loop: ``compute(step) -> (reported loss, loss to backpropagate)``; optional
    global-norm clipping and a GradScaler; ``inspect(step)`` sees the gradients before the step."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        loss, total = compute(step)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _finite(values) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _diverged_at(losses: list[float]) -> int | None:
    """The first non-finite loss, or the first 5-step median over max(2 x best, best + 1)."""
    best = math.inf
    for t, value in enumerate(losses):
        if not math.isfinite(value):
            return t
        med = statistics.median(losses[max(0, t - 4) : t + 1])
        if t >= 4 and med > max(2 * best, best + 1.0):
            return t
        if t >= 4:
            best = min(best, med)
    return None


def _image_batches(gen: torch.Generator, batch: int = 32):
    """Digits as (b, 1, 8, 8) images with labels."""
    for x, y in digit_batches(gen, batch):
        yield x.reshape(-1, 1, 8, 8), y


def _text(gen: torch.Generator, batch: int = 16, length: int = 32):
    return text_batches(gen, batch, length, 128)


# -- Hugging Face causal LMs ----------------------------------------------------------------------


def _vaultgemma(scalar: int):
    from transformers import VaultGemmaConfig, VaultGemmaForCausalLM

    config = VaultGemmaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        query_pre_attn_scalar=scalar,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return VaultGemmaForCausalLM(config)


def _vaultgemma_attention_logits(model, idx: torch.Tensor) -> tuple[float, float]:
    """The largest |q.k| * scaling over both layers' heads, recomputed from q_proj / k_proj with
    the model's own rotary embedding (exactly the logits the attention softmax sees), and the
    share of attention rows (past the first four positions) whose largest weight is over 0.99."""
    from transformers.models.vaultgemma.modeling_vaultgemma import apply_rotary_pos_emb

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
        model(input_ids=idx)
        pos = torch.arange(idx.shape[1])[None]
        cos, sin = model.model.rotary_emb(seen["0.q_proj"], pos)
        top, rows = 0.0, []
        for i, layer in enumerate(model.model.layers):
            b, t, _ = seen[f"{i}.q_proj"].shape
            q = seen[f"{i}.q_proj"].reshape(b, t, 2, 16).transpose(1, 2)
            k = seen[f"{i}.k_proj"].reshape(b, t, 2, 16).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            logits = (q @ k.transpose(-1, -2)) * layer.self_attn.scaling
            causal = torch.ones(t, t, dtype=torch.bool).tril()
            top = max(top, float(logits.masked_fill(~causal, 0).abs().max()))
            probs = logits.masked_fill(~causal, float("-inf")).softmax(-1)[:, :, 4:]
            rows.append((probs.max(-1).values > 0.99).float().mean())
    for h in hooks:
        h.remove()
    return top, float(torch.stack(rows).mean())


@scenario(
    "h43_vaultgemma_lm",
    "sg_lion",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="query_pre_attn_scalar set to 1, not head_dim; no attention soft-cap",
)
def h43_vaultgemma_query_scalar_typo_lion(ctx: Context) -> None:
    """VaultGemma scales q.k by ``query_pre_attn_scalar ** -0.5``. The config sets it to 1
    (read as "a multiplier on the queries, 1 = off" where the head dimension, 16, belongs) and
    turns the attention soft-cap off: the logits start 4x too hot, and Lion's sign updates grow
    q_proj and k_proj at a fixed rate every step, so q.k (a product of two growing weights) runs
    up quadratically, from under 1 to hundreds: most attention rows saturate to one-hot and the
    language model's loss stalls near 2.8 instead of improving (it does not blow up)."""
    gen = seeded(4301)
    model = _vaultgemma(1)  # meant: head_dim = 16
    opt = sgo.Lion(model.parameters(), lr=3e-3, fused=False)
    batches = _text(gen)
    probe, _ = next(_text(torch.Generator().manual_seed(99)))
    start, sat0 = _vaultgemma_attention_logits(model, probe)

    def compute(step):
        x, y = next(batches)
        loss = lm_loss(model(input_ids=x).logits, y)
        return loss, loss

    _loop(ctx, model, opt, 220, compute)
    end, sat1 = _vaultgemma_attention_logits(model, probe)
    ctx.check(f"attention logits grew 10x ({start:.1f} -> {end:.1f})", end > 10 * start)
    ctx.check("attention logits reached saturation (|q.k| > 30)", end > 30)
    ctx.check(f"most attention rows went one-hot ({sat0:.2f} -> {sat1:.2f})", sat1 > 0.5)


def _nanochat():
    from transformers import NanoChatConfig, NanoChatForCausalLM

    config = NanoChatConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        final_logit_softcapping=None,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return NanoChatForCausalLM(config)


@scenario(
    "h43_nanochat_lm",
    "adamw",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="z-loss added with the wrong sign, logit soft-cap off",
    onset=40,
)
def h43_nanochat_zloss_sign_adamw(ctx: Context) -> None:
    """NanoChat with its final-logit soft-cap turned off and a z-loss switched on at step 40
    (after a short warm-up) whose sign is flipped: ``loss - 1e-2 * logZ**2`` rewards a large
    log-partition, so the head scales every logit up; log Z runs away from ~5 to over 40, and
    the cross-entropy of every token the model gets wrong climbs with it (the loss passes
    twice its best near step 170 and keeps climbing)."""
    gen = seeded(4302)
    model = _nanochat()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batches = _text(gen)
    log_z: list[float] = []

    def compute(step):
        x, y = next(batches)
        logits = model(input_ids=x).logits
        loss = lm_loss(logits, y)
        z = torch.logsumexp(logits.float(), dim=-1)
        log_z.append(float(z.mean().detach()))
        if step >= 40:
            return loss, loss - 5e-2 * z.pow(2).mean()  # meant: + 5e-4 * z**2
        return loss, loss

    _loop(ctx, model, opt, 260, compute)
    ctx.check(
        f"log Z ran away 8x after the onset ({log_z[39]:.1f} -> {log_z[-1]:.1f})",
        log_z[-1] > 8 * abs(log_z[39]),
    )
    ctx.check("loss finite before the onset", all(_finite(ctx.losses[:40])))


def _diffllama():
    from transformers import DiffLlamaConfig, DiffLlamaForCausalLM

    config = DiffLlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return DiffLlamaForCausalLM(config)


@scenario("h43_diffllama_lm", "sg_ademamix", "healthy", heldout=True)
def h43_diffllama_healthy_ademamix(ctx: Context) -> None:
    """A differential-attention Llama on byte text with AdEMAMix: trains normally."""
    gen = seeded(4303)
    model = _diffllama()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-3, fused=False)
    batches = _text(gen)

    def compute(step):
        x, y = next(batches)
        loss = lm_loss(model(input_ids=x).logits, y)
        return loss, loss

    _loop(ctx, model, opt, 180, compute)
    first, last = statistics.mean(ctx.losses[:10]), statistics.mean(ctx.losses[-10:])
    ctx.check(f"loss fell ({first:.2f} -> {last:.2f})", last < first - 1.0)
    ctx.check("loss finite throughout", all(_finite(ctx.losses)))


# -- a Hugging Face EuroBERT classifier -----------------------------------------------------------


def _eurobert():
    from transformers import EuroBertConfig, EuroBertForSequenceClassification

    config = EuroBertConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        num_labels=2,
        pad_token_id=0,
        bos_token_id=0,
        eos_token_id=0,
        mask_token_id=0,
    )
    return EuroBertForSequenceClassification(config)


@scenario(
    "h43_eurobert_cls",
    "rmsprop",
    "softmax_collapse",
    where="classifier",
    diverges=None,
    heldout=True,
    note="calibration temperature multiplied instead of divided",
)
def h43_eurobert_temperature_inverted_rmsprop(ctx: Context) -> None:
    """Fine-tuning a EuroBERT classifier on a small fixed set of 64 sequences, with a
    calibration temperature of 20 applied as ``logits * T`` instead of ``logits / T``: the
    head's logits are 400x hotter than meant; the set is fitted within a few dozen steps, and
    RMSprop (decay 0.9) keeps the logit gap growing as the gradients shrink: from about step 180
    the float32 softmax of every row rounds to exactly one-hot (zero gradient for them)."""
    gen = seeded(4304)
    model = _eurobert()
    x, y = next(bert_batches(gen, batch=64))
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9)  # TF-style decay

    def compute(step):
        ctx.targets(y)
        logits = model(input_ids=x).logits * 20.0  # meant: / 20.0
        loss = F.cross_entropy(logits, y)
        return loss, loss

    _loop(ctx, model, opt, 220, compute)
    with torch.no_grad():
        share = collapsed_fraction(model(input_ids=x).logits * 20.0, y)
    ctx.check(f"over half the rows collapsed to one-hot ({share:.2f})", share > 0.5)


# -- a Hugging Face YOLOS detector ----------------------------------------------------------------


def _box_images(gen: torch.Generator, batch: int = 32, size: int = 16):
    """One bright rectangle per noisy image; class 0 wide, 1 tall, 2 square; cx, cy, w, h in
    [0, 1]."""
    while True:
        cls = torch.randint(0, 3, (batch,), generator=gen)
        base = torch.randint(4, 7, (batch,), generator=gen)
        w = torch.where(cls == 0, base + 4, torch.where(cls == 1, base - 2, base))
        h = torch.where(cls == 1, base + 4, torch.where(cls == 0, base - 2, base))
        x0 = (torch.rand(batch, generator=gen) * (size - w + 1)).long()
        y0 = (torch.rand(batch, generator=gen) * (size - h + 1)).long()
        img = 0.1 * torch.randn(batch, 1, size, size, generator=gen)
        for i in range(batch):
            img[i, 0, y0[i] : y0[i] + h[i], x0[i] : x0[i] + w[i]] += 1.0
        box = torch.stack([x0 + w / 2, y0 + h / 2, w, h], 1).float() / size
        yield img, torch.cat([cls[:, None].float(), box], 1)


def _yolos():
    from transformers import YolosConfig, YolosForObjectDetection

    config = YolosConfig(
        image_size=[16, 16],
        patch_size=4,
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_detection_tokens=4,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = YolosForObjectDetection(config)
    emb = model.vit.embeddings
    with torch.no_grad():  # built from a config these start at zero: every detection token alike
        for p in (emb.cls_token, emb.detection_tokens, emb.position_embeddings):
            nn.init.trunc_normal_(p, std=0.02)
    return model


def _yolos_loss(out, target):
    """Detection token 0 is assigned the object (a fixed matching); the others predict
    no-object (class 3)."""
    logits, boxes = out.logits, out.pred_boxes
    cls = target[:, 0].long()
    labels = torch.full(logits.shape[:2], 3, dtype=torch.long)
    labels[:, 0] = cls
    weight = torch.tensor([1.0, 1.0, 1.0, 0.1])
    ce = F.cross_entropy(logits.reshape(-1, 4), labels.reshape(-1), weight=weight)
    l1 = F.l1_loss(boxes[:, 0], target[:, 1:])
    return ce, l1


@scenario(
    "h43_yolos_det",
    "sgd_nesterov",
    "update_ratio_out_of_range",
    where="bbox_predictor",
    diverges=None,
    heldout=True,
    note="box head matched by neither parameter-group filter",
)
def h43_yolos_box_head_left_out_nesterov(ctx: Context) -> None:
    """The optimizer's parameter groups are built by name: ``vit.`` for the backbone and
    ``class_labels_classifier`` for the head (with a higher LR). The box head,
    ``bbox_predictor``, matches neither filter and is never handed to the optimizer: it gets
    gradients every step but never moves (update/weight ratio 0), and the box loss stays where
    the random head left it while the class loss falls. ``optimizer.zero_grad()`` does not reach
    it either, so its ``.grad`` accumulates step after step (the gradient norm the loop records
    climbs linearly). (The cls / detection tokens and
    position embeddings, zero when built from a config, are given a small random init.)"""
    gen = seeded(4305)
    model = _yolos()
    named = list(model.named_parameters())
    opt = torch.optim.SGD(
        [
            {"params": [p for n, p in named if n.startswith("vit.")], "lr": 0.03},
            {"params": [p for n, p in named if n.startswith("class_labels_classifier")]},
        ],
        lr=0.1,
        momentum=0.9,
        nesterov=True,
    )
    frozen = model.bbox_predictor.layers[2].weight.detach().clone()
    batches = _box_images(gen)
    parts: list[tuple[float, float]] = []

    def compute(step):
        x, t = next(batches)
        ce, l1 = _yolos_loss(model(pixel_values=x), t)
        parts.append((float(ce), float(l1)))
        loss = ce + 5.0 * l1
        return loss, loss

    _loop(ctx, model, opt, 200, compute)
    moved = float((model.bbox_predictor.layers[2].weight - frozen).abs().max())
    ce0, ce1 = statistics.mean(p[0] for p in parts[:10]), statistics.mean(p[0] for p in parts[-10:])
    l0, l1 = statistics.mean(p[1] for p in parts[:10]), statistics.mean(p[1] for p in parts[-10:])
    ctx.check("bbox_predictor never moved", moved == 0.0)
    ctx.check(f"class loss fell ({ce0:.2f} -> {ce1:.2f})", ce1 < 0.7 * ce0)
    ctx.check(f"box loss did not improve ({l0:.3f} -> {l1:.3f})", l1 > 0.9 * l0)


# -- PixelSNAIL-style autoregressive image model --------------------------------------------------


class MaskedConv2d(nn.Conv2d):
    """A causal convolution over raster order: mask "A" hides the centre pixel, "B" keeps it."""

    def __init__(self, cin: int, cout: int, k: int, kind: str) -> None:
        super().__init__(cin, cout, k, padding=k // 2)
        mask = torch.ones_like(self.weight)
        c = k // 2
        mask[:, :, c, c + (kind == "B") :] = 0
        mask[:, :, c + 1 :] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class GatedResidual(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = MaskedConv2d(ch, 2 * ch, 3, "B")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.conv(F.elu(x)).chunk(2, 1)
        return x + a * torch.sigmoid(b)


class CausalPixelAttention(nn.Module):
    def __init__(self, ch: int, key: int = 16) -> None:
        super().__init__()
        self.q = nn.Linear(ch, key)
        self.k = nn.Linear(ch, key)
        self.v = nn.Linear(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        s = x.flatten(2).transpose(1, 2)
        y = F.scaled_dot_product_attention(self.q(s), self.k(s), self.v(s), is_causal=True)
        return x + y.transpose(1, 2).reshape(b, c, h, w)


class PixelSNAIL(nn.Module):
    def __init__(self, ch: int = 24) -> None:
        super().__init__()
        self.inp = MaskedConv2d(1, ch, 5, "A")
        self.res1 = GatedResidual(ch)
        self.res2 = GatedResidual(ch)
        self.attn = CausalPixelAttention(ch)
        self.res3 = GatedResidual(ch)
        self.out = nn.Conv2d(ch, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.res2(self.res1(self.inp(x)))
        return self.out(F.elu(self.res3(self.attn(h))))


def _binary_digits(gen: torch.Generator, batch: int = 32):
    for x, _ in digit_batches(gen, batch):
        img = (x > 0.4).float().reshape(-1, 1, 8, 8)
        yield img, img


def _params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


@scenario(
    "h43_pixelsnail",
    "radam",
    "adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="one step backpropagates the eval helper's summed loss",
    onset=70,
)
def h43_pixelsnail_summed_eval_loss_radam(ctx: Context) -> None:
    """At step 70 the loss that is backpropagated comes from the evaluation helper, which sums
    over pixels and images (``reduction="sum"``) instead of averaging: 32 x 64 = 2048 times the
    usual gradient on every tensor, once. RAdam's second moment (beta2 = 0.999) keeps that
    square for hundreds of steps: after the spike's momentum has died out the updates are many
    times smaller than before and the model stops improving."""
    gen = seeded(4306)
    model = PixelSNAIL()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = _binary_digits(gen)
    snaps: dict[int, torch.Tensor] = {}

    def before(step):
        if step in (30, 60, 130, 160):
            snaps[step] = _params(model)

    def compute(step):
        x, t = next(batches)
        logits = model(x)
        loss = F.binary_cross_entropy_with_logits(logits, t)
        if step == 70:
            return loss, F.binary_cross_entropy_with_logits(logits, t, reduction="sum")
        return loss, loss

    _loop(ctx, model, opt, 200, compute, before=before)
    early = float((snaps[60] - snaps[30]).norm())
    late = float((snaps[160] - snaps[130]).norm())
    ctx.check(f"updates shrank 3x after the spike ({early:.3f} -> {late:.3f})", late < early / 3)
    ctx.check(
        "the gradient at step 70 was 100x the usual",
        ctx.grad_norms[70] > 100 * statistics.median(ctx.grad_norms[40:70]),
    )


@scenario("h43_pixelsnail", "sg_grams", "healthy", heldout=True)
def h43_pixelsnail_healthy_grams(ctx: Context) -> None:
    """The same PixelSNAIL-style model without the bug, under Grams: trains normally."""
    gen = seeded(4307)
    model = PixelSNAIL()
    opt = sgo.Grams(model.parameters(), lr=2e-3, fused=False)
    batches = _binary_digits(gen)

    def compute(step):
        x, t = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(x), t)
        return loss, loss

    _loop(ctx, model, opt, 200, compute)
    first, last = statistics.mean(ctx.losses[:10]), statistics.mean(ctx.losses[-10:])
    ctx.check(f"loss fell ({first:.3f} -> {last:.3f})", last < 0.6 * first)


# -- Mask-R-CNN-style mask head on generated RoI crops -------------------------------------------


def _roi_crops(gen: torch.Generator, batch: int = 32):
    """8x8 RoI crops of one object (0 square, 1 disc, 2 cross) with its 16x16 binary mask."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    while True:
        cls = torch.randint(0, 3, (batch,), generator=gen)
        cx = 6 + 4 * torch.rand(batch, generator=gen)
        cy = 6 + 4 * torch.rand(batch, generator=gen)
        r = 3 + 2 * torch.rand(batch, generator=gen)
        dx, dy = (xx[None] - cx[:, None, None]).abs(), (yy[None] - cy[:, None, None]).abs()
        r = r[:, None, None]
        square = (dx <= r) & (dy <= r)
        disc = dx**2 + dy**2 <= r**2
        cross = ((dx <= r) & (dy <= r / 3)) | ((dy <= r) & (dx <= r / 3))
        c = cls[:, None, None]
        mask = torch.where(c == 0, square, torch.where(c == 1, disc, cross)).float()
        crop = F.avg_pool2d(mask[:, None], 2) + 0.15 * torch.randn(batch, 1, 8, 8, generator=gen)
        yield crop, (mask, cls)


class MaskHead(nn.Module):
    """Four 3x3 conv + ReLU layers, a 2x transposed-conv upsampler, one mask per class."""

    def __init__(self, ch: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, ch, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.ReLU(),
        )
        self.deconv = nn.ConvTranspose2d(ch, ch, 2, stride=2)
        self.predictor = nn.Conv2d(ch, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictor(F.relu(self.deconv(self.convs(x))))


def _mask_loss(logits: torch.Tensor, mask: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """Mask R-CNN's loss: per-pixel BCE on the ground-truth class's channel only."""
    picked = logits[torch.arange(len(cls)), cls]
    return F.binary_cross_entropy_with_logits(picked, mask)


@scenario(
    "h43_mask_rcnn_head",
    "adamax",
    "data_outlier",
    where=(),
    diverges=90,
    heldout=True,
    note="one batch of crops read as raw 0..255 pixels",
    onset=90,
)
def h43_maskhead_raw_pixel_batch_adamax(ctx: Context) -> None:
    """At step 90 one batch of RoI crops comes from a loader path that keeps the raw 0..255
    pixel range (it forgets to divide by 255): the mask logits of that batch are hundreds of
    times too large and its BCE is hundreds of times the usual. Adamax caps each step at its
    LR, so the weights move little: the next clean batch is within 2x of the loss before, and
    ~30 steps later the run is back where it was."""
    gen = seeded(4308)
    model = MaskHead()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    batches = _roi_crops(gen)

    def compute(step):
        x, (mask, cls) = next(batches)
        if step == 90:
            x = x * 255.0  # raw uint8 range, not divided
        loss = _mask_loss(model(x), mask, cls)
        return loss, loss

    _loop(ctx, model, opt, 170, compute)
    before = statistics.mean(ctx.losses[80:90])
    after = statistics.mean(ctx.losses[120:130])
    ctx.check(
        f"loss spiked at 90 ({ctx.losses[90]:.1f} vs {before:.3f})",
        ctx.losses[90] > 50 * max(ctx.losses[80:90]),
    )
    ctx.check(f"recovered within 40 steps ({after:.3f})", after < 1.5 * before)
    ctx.check("the run learned (loss fell)", ctx.losses[-1] < 0.5 * ctx.losses[0])


# -- CoAtNet-style hybrid: MBConv, then attention with a relative-position bias --------------------


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, expand: int = 2) -> None:
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.GELU(),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.GELU(),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.AvgPool2d(stride), nn.Conv2d(cin, cout, 1))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class RelAttention(nn.Module):
    """Multi-head self-attention over an s x s grid with a learned relative-position bias table
    ((2s - 1)^2 entries per head), as in CoAtNet / Swin."""

    def __init__(self, dim: int, heads: int, side: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_table = nn.Parameter(torch.zeros((2 * side - 1) ** 2, heads))
        nn.init.trunc_normal_(self.rel_table, std=0.02)
        pos = torch.stack(
            torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        ).flatten(1)
        rel = (pos[:, :, None] - pos[:, None, :]).permute(1, 2, 0) + side - 1
        self.register_buffer("rel_index", rel[..., 0] * (2 * side - 1) + rel[..., 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        bias = self.rel_table[self.rel_index].permute(2, 0, 1)
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) + bias
        y = logits.softmax(-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class CoAtNet(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.GELU())
        self.mb1 = MBConv(16, 16)
        self.mb2 = MBConv(16, dim, stride=2)
        self.ln1 = nn.LayerNorm(dim)
        self.attn = RelAttention(dim, heads, side=4)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mb2(self.mb1(self.stem(x))).flatten(2).transpose(1, 2)
        h = h + self.attn(self.ln1(h))
        h = h + self.ffn(self.ln2(h))
        return self.head(self.norm(h.mean(1)))


@scenario(
    "h43_coatnet",
    "asgd",
    "gradient_spike",
    where="attn.rel_table",
    diverges=None,
    heldout=True,
    note="gradient-averaging hook divides by a wrapped counter once",
    onset=120,
)
def h43_coatnet_relpos_hook_spike_asgd(ctx: Context) -> None:
    """A gradient hook on the relative-position bias table divides its gradient by the number
    of micro-batches accumulated, a counter guarded as ``max(count, 1e-4)``. On step 120 the
    counter is read just after it wrapped to 0, so that one tensor's gradient is 10^4 times its
    usual size for one step. The global-norm clip (1.0) the run already has keeps the step
    bounded: the loss barely moves and training goes on as before."""
    gen = seeded(4309)
    model = CoAtNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=50)
    count = [1.0]
    model.attn.rel_table.register_hook(lambda g: g / max(count[0], 1e-4))
    batches = _image_batches(gen)
    table_grads: list[float] = []

    def before(step):
        count[0] = 0.0 if step == 120 else 1.0

    def compute(step):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        return loss, loss

    def inspect(step):
        table_grads.append(float(model.attn.rel_table.grad.norm()))

    _loop(ctx, model, opt, 220, compute, before=before, clip=1.0, inspect=inspect)
    usual = statistics.median(table_grads[100:120])
    ctx.check(
        f"rel_table's gradient spiked 1000x at 120 ({table_grads[120]:.1f} vs {usual:.4f})",
        table_grads[120] > 1000 * usual,
    )
    ctx.check(
        "the rest of the gradient did not spike",
        ctx.grad_norms[120] < table_grads[120] * 1.01 and max(table_grads[121:]) < 10 * usual,
    )
    before_loss = statistics.mean(ctx.losses[105:120])
    after_loss = statistics.mean(ctx.losses[130:145])
    ctx.check(
        f"no lasting damage ({before_loss:.3f} -> {after_loss:.3f})", after_loss < 1.2 * before_loss
    )
    ctx.check(
        "the run learned (loss fell)", statistics.mean(ctx.losses[-10:]) < 0.5 * ctx.losses[0]
    )


# -- NVAE-style hierarchical VAE -------------------------------------------------------------------


class Standardise(nn.Module):
    """Per-image standardisation of the input (zero mean, unit deviation per image)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return (x - mean) / x.std(dim=(1, 2, 3), keepdim=True)


class SE(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(ch, max(ch // 4, 4))
        self.fc2 = nn.Linear(max(ch // 4, 4), ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        return x * s[:, :, None, None]


class ResidualCell(nn.Module):
    """NVAE's cell: BN - Swish - conv - BN - Swish - conv - SE, added to the input."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.BatchNorm2d(ch),
            nn.SiLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            SE(ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * self.body(x)


class NVAE(nn.Module):
    """Two latent groups: z1 at 4x4 (top), z2 at 8x8 with a residual-normal posterior relative to
    its prior p(z2 | z1)."""

    def __init__(self, ch: int = 16, zc: int = 4) -> None:
        super().__init__()
        self.standardise = Standardise()
        self.stem = nn.Conv2d(1, ch, 3, padding=1)
        self.enc8 = ResidualCell(ch)
        self.down = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.enc4 = ResidualCell(ch)
        self.q1 = nn.Conv2d(ch, 2 * zc, 1)
        self.dec_in = nn.Conv2d(zc, ch, 1)
        self.dec4 = ResidualCell(ch)
        self.up = nn.ConvTranspose2d(ch, ch, 2, stride=2)
        self.dec8 = ResidualCell(ch)
        self.prior2 = nn.Conv2d(ch, 2 * zc, 1)
        self.q2 = nn.Conv2d(2 * ch, 2 * zc, 1)
        self.out = nn.Conv2d(ch + zc, 1, 3, padding=1)

    def forward(self, x: torch.Tensor):
        e8 = self.enc8(self.stem(self.standardise(x)))
        e4 = self.enc4(self.down(e8))
        mu1, ls1 = self.q1(e4).chunk(2, 1)
        z1 = mu1 + ls1.exp() * torch.randn_like(mu1)
        d8 = self.dec8(self.up(self.dec4(self.dec_in(z1))))
        mp, lsp = self.prior2(d8).chunk(2, 1)
        dmu, dls = self.q2(torch.cat([d8, e8], 1)).chunk(2, 1)
        mu2, ls2 = mp + dmu, lsp + dls
        z2 = mu2 + ls2.exp() * torch.randn_like(mu2)
        logits = self.out(torch.cat([d8, z2], 1))
        kl1 = 0.5 * (mu1**2 + (2 * ls1).exp() - 1) - ls1
        kl2 = 0.5 * ((dmu / lsp.exp()) ** 2 + (2 * dls).exp() - 1) - dls
        return logits, kl1.flatten(1).sum(1) + kl2.flatten(1).sum(1)


def _nvae_loss(model: NVAE, x: torch.Tensor) -> torch.Tensor:
    logits, kl = model(x)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    return (rec + kl).mean() / 64.0  # nats per pixel


@scenario(
    "h43_nvae",
    "adam",
    "nonfinite",
    where="standardise",
    diverges=110,
    heldout=True,
    note="a blank image divides 0 by a zero deviation",
    onset=110,
)
def h43_nvae_blank_image_standardise_adam(ctx: Context) -> None:
    """The input stem standardises each image by its own mean and deviation. At step 110 the
    batch holds one blank (all-zero) scan: its deviation is exactly 0 and ``0 / 0`` is NaN in
    ``standardise``; the NaN runs through the whole network into the loss and, through Adam,
    into every weight, so the loss is NaN from then on."""
    gen = seeded(4310)
    model = NVAE()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = _image_batches(gen)
    produced: dict[int, bool] = {}
    model.standardise.register_forward_hook(
        lambda m, a, out: produced.__setitem__(len(produced), bool(torch.isnan(out).any()))
    )

    def compute(step):
        x, _ = next(batches)
        if step == 110:
            x = x.clone()
            x[9] = 0.0  # a blank scan
        loss = _nvae_loss(model, x)
        return loss, loss

    _loop(ctx, model, opt, 140, compute)
    finite = _finite(ctx.losses)
    ctx.check("loss finite until 110, NaN from 110", all(finite[:110]) and not any(finite[110:]))
    ctx.check(
        "standardise produced the first NaN at 110",
        not any(produced[s] for s in range(110)) and produced[110],
    )
    ctx.check("the run learned before the fault", ctx.losses[109] < 0.7 * ctx.losses[0])


# -- progressive-GAN generator (equalised LR, pixel norm, fade-in), fp16 autocast ------------------


def _he(fan_in: int) -> float:
    return math.sqrt(2.0 / fan_in)


def _he_inverted(fan_in: int) -> float:
    return math.sqrt(fan_in / 2.0)  # the bug: He's constant upside down


class EqConv(nn.Module):
    """Equalised learning rate: weights drawn from N(0, 1), scaled at run time by He's constant."""

    def __init__(self, cin: int, cout: int, k: int, wscale=_he) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = wscale(cin * k * k)
        self.pad = k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


class PixelNorm(nn.Module):
    """Normalises each pixel's feature vector to unit RMS; records whether its sum of squares
    (computed in the activation dtype, fp16 under autocast) overflowed."""

    def __init__(self) -> None:
        super().__init__()
        self.overflowed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sq = x * x
        self.overflowed = bool(torch.isinf(sq).any())
        return x / torch.sqrt(sq.mean(1, keepdim=True) + 1e-8)


class ProGANGenerator(nn.Module):
    """4x4 stage, then an 8x8 stage faded in with ``alpha``; the input is a class embedding and
    a fixed random 16-d code of the target image (a class-conditional decoder)."""

    def __init__(self, ch: int = 16, grow_scale=_he) -> None:
        super().__init__()
        self.ch = ch
        self.embed = nn.Embedding(10, 16)
        self.fc = nn.Linear(32, ch * 16)
        self.b4 = nn.ModuleDict({"conv": EqConv(ch, ch, 3), "norm": PixelNorm()})
        self.rgb4 = EqConv(ch, 1, 1)
        # added by ``grow()`` when the run moves to 8x8: built with ``grow_scale``
        self.b8 = nn.ModuleDict(
            {
                "conv1": EqConv(ch, ch, 3, grow_scale),
                "norm1": PixelNorm(),
                "conv2": EqConv(ch, ch, 3, grow_scale),
                "norm2": PixelNorm(),
            }
        )
        self.rgb8 = EqConv(ch, 1, 1)
        self.alpha = 0.0

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        z, cls = code[:, :16], code[:, 16].long()
        h = self.fc(torch.cat([z, self.embed(cls)], 1)).reshape(-1, self.ch, 4, 4)
        h4 = self.b4["norm"](F.leaky_relu(self.b4["conv"](h), 0.2))
        low = F.interpolate(self.rgb4(h4), scale_factor=2.0)
        if self.alpha == 0.0:
            return low
        h8 = F.interpolate(h4, scale_factor=2.0)
        h8 = self.b8["norm1"](F.leaky_relu(self.b8["conv1"](h8), 0.2))
        h8 = self.b8["norm2"](F.leaky_relu(self.b8["conv2"](h8), 0.2))
        return (1 - self.alpha) * low + self.alpha * self.rgb8(h8)


def _coded_digits(gen: torch.Generator, batch: int = 32):
    proj = torch.randn(64, 16, generator=torch.Generator().manual_seed(7)) / 8.0
    for x, y in digit_batches(gen, batch):
        yield torch.cat([x @ proj, y[:, None].float()], 1), x.reshape(-1, 1, 8, 8)


@scenario(
    "h43_progan_generator",
    "nadam",
    "amp_overflow",
    where=("b8.norm1", "b8.norm2", "b8.conv1"),
    diverges=50,
    heldout=True,
    note="the 8x8 stage's He constant inverted; its fp16 pixel norms overflow from the fade-in",
    onset=50,
)
def h43_progan_inverted_he_fp16_nadam(ctx: Context) -> None:
    """Under fp16 autocast the generator grows to 8x8 at step 50 (a fade-in over 40 steps). The
    8x8 stage's equalised-LR convolutions are built by the growing helper with He's constant
    upside down (sqrt(fan_in / 2) instead of sqrt(2 / fan_in)): their outputs are ~100x too
    large (hundreds). In float32 the pixel norms after them would hide it, but in fp16 their
    sums of squares pass 65504 and overflow, the forward pass turns NaN, and from the first
    fade-in step on every loss is NaN while the GradScaler skips every step and halves its
    scale each time."""
    gen = seeded(4311)
    model = ProGANGenerator(ch=24, grow_scale=_he_inverted)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3, betas=(0.0, 0.99))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    batches = _coded_digits(gen, 16)
    overflow: list[bool] = []
    norms = (model.b8["norm1"], model.b8["norm2"])

    def before(step):
        model.alpha = min(max((step - 49) / 40, 0.0), 1.0)

    def compute(step):
        code, x = next(batches)
        for n in norms:
            n.overflowed = False
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(code)
        overflow.append(any(n.overflowed for n in norms))
        loss = F.l1_loss(out.float(), x)
        return loss, loss

    _loop(ctx, model, opt, 80, compute, before=before, scaler=scaler)
    finite = _finite(ctx.losses)
    ctx.check(
        "the 8x8 pixel norms overflowed in fp16 at every step from 50, never before",
        not any(overflow[:50]) and all(overflow[50:]),
    )
    ctx.check("loss finite until 50, NaN from 50", all(finite[:50]) and not any(finite[50:]))
    ctx.check("the scaler skipped the steps from 50", ctx.scales[-1] < ctx.scales[49] / 1000)
    ctx.check("the 4x4 stage learned first", ctx.losses[49] < 0.5 * ctx.losses[0])
    code, _ = next(batches)
    with torch.no_grad():
        ctx.check(
            "the same weights give a finite image in float32", bool(model(code).isfinite().all())
        )


# -- RepVGG-style CNN: train-time branches, and the fused deploy form -----------------------------


class RepVGGBlock(nn.Module):
    """Train-time RepVGG block: 3x3 conv + BN, 1x1 conv + BN and (when shapes allow) a BN
    identity branch, summed, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.dense = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        )
        self.point = nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )
        self.identity = nn.BatchNorm2d(cout) if cin == cout and stride == 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dense(x) + self.point(x)
        if self.identity is not None:
            y = y + self.identity(x)
        return F.relu(y)


_REPVGG_PLAN = [(1, 16, 1), (16, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 32, 1)]


class RepVGG(nn.Module):
    def __init__(self, block=RepVGGBlock, classes: int = 10) -> None:
        super().__init__()
        self.stages = nn.Sequential(*(block(a, b, s) for a, b, s in _REPVGG_PLAN))
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(x).mean((2, 3)))


@scenario(
    "h43_repvgg",
    "sgd",
    "loss_divergence",
    where=(),
    diverges="auto",
    heldout=True,
    note="augmentation noise ramp compounds every step, not every epoch",
)
def h43_repvgg_noise_curriculum_sgd(ctx: Context) -> None:
    """A noise-augmentation curriculum meant to raise the Gaussian noise by 3% per epoch
    (capped) is stepped every batch with no cap: sigma = 0.01 * 1.03 ** step, 0.2 by step 100
    and several times the pixel range by step 200. The model learns early, then the inputs
    drown in noise and the training loss climbs slowly towards chance: nothing in the model
    or optimizer breaks (on the same images without the noise the loss is lower)."""
    gen = seeded(4316)
    model = RepVGG()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _image_batches(gen)
    noise = torch.Generator().manual_seed(4317)
    last: dict[str, torch.Tensor] = {}

    def compute(step):
        x, y = next(batches)
        ctx.targets(y)
        sigma = 0.01 * 1.03**step  # meant: min(0.3, 0.01 * 1.03 ** epoch)
        noisy = x + sigma * torch.randn(x.shape, generator=noise)
        last.update(x=x, y=y, noisy=noisy)
        loss = F.cross_entropy(model(noisy), y)
        return loss, loss

    _loop(ctx, model, opt, 220, compute)
    at = _diverged_at(ctx.losses)
    ctx.check(f"the loss diverged slowly (step {at})", at is not None and at > 100)
    ctx.check("it learned first", min(ctx.losses[:100]) < 0.3 * ctx.losses[0])
    with torch.no_grad():
        clean = float(F.cross_entropy(model(last["x"]), last["y"]))
        noisy = float(F.cross_entropy(model(last["noisy"]), last["y"]))
    ctx.check(
        f"the same images without noise score lower ({clean:.2f} vs {noisy:.2f})", clean < noisy
    )
    ctx.check("loss finite throughout", all(_finite(ctx.losses)))


@scenario("h43_repvgg", "adadelta", "healthy", heldout=True, note="train-time branches with BN")
def h43_repvgg_branches_healthy_adadelta(ctx: Context) -> None:
    """RepVGG trained the intended way (three branches, each with BN) under Adadelta: trains
    normally."""
    gen = seeded(4312)
    model = RepVGG()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    batches = _image_batches(gen)

    def compute(step):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        return loss, loss

    _loop(ctx, model, opt, 160, compute)
    first, last = statistics.mean(ctx.losses[:10]), statistics.mean(ctx.losses[-10:])
    ctx.check(f"loss fell ({first:.2f} -> {last:.2f})", last < 0.4 * first)


# -- GhostNet-style CNN ---------------------------------------------------------------------------


class GhostModule(nn.Module):
    """Half the output channels from a 1x1 "primary" conv, the other half from a cheap
    depthwise 3x3 conv applied to them."""

    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        init = cout // 2
        act = nn.ReLU if relu else nn.Identity
        self.primary = nn.Sequential(
            nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init), act()
        )
        self.cheap = nn.Sequential(
            nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False),
            nn.BatchNorm2d(init),
            act(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.primary(x)
        return torch.cat([p, self.cheap(p)], 1)


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.ghost1 = GhostModule(cin, mid)
        self.dw = (
            nn.Sequential(
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid)
            )
            if stride > 1
            else nn.Identity()
        )
        self.ghost2 = GhostModule(mid, cout, relu=False)
        self.shortcut = (
            nn.Identity()
            if cin == cout and stride == 1
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.ghost2(self.dw(self.ghost1(x)))


class GhostNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.blocks = nn.Sequential(
            GhostBottleneck(16, 32, 16),
            GhostBottleneck(16, 48, 24, stride=2),
            GhostBottleneck(24, 72, 24),
        )
        self.head = nn.Linear(24, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _ghost_compute(ctx, model, batches, amp: bool = False):
    def compute(step):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        return loss, loss

    return compute


@scenario(
    "h43_ghostnet",
    "adagrad",
    "loss_of_plasticity",
    where=("blocks.1.ghost1.primary", "blocks.1.ghost1.primary.1"),
    diverges=None,
    heldout=True,
    note="a BN shift restored with the running mean folded in twice",
    onset=80,
)
def h43_ghostnet_bn_shift_dead_adagrad(ctx: Context) -> None:
    """At step 80 the run is restored from a fused (deploy) checkpoint whose BN shifts already
    have the running mean folded in; the restore folds it in again, and the shift of the second
    block's primary ghost BN ends up 10 below where it was. Every unit of the ReLU after it is
    dead on every input from then on (and gets no gradient to come back); the cheap depthwise
    half, fed only zeros, outputs a constant. The network carries on through the shortcut and
    the other blocks."""
    gen = seeded(4313)
    model = GhostNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.03)
    batches = _image_batches(gen)
    bn = model.blocks[1].ghost1.primary[1]

    def before(step):
        if step == 80:
            with torch.no_grad():
                bn.bias.sub_(10.0)

    _loop(ctx, model, opt, 200, _ghost_compute(ctx, model, batches), before=before)
    x, _ = next(_image_batches(gen, 256))
    with torch.no_grad():
        h = model.blocks[1].ghost1.primary(model.blocks[0](model.stem(x)))
    ctx.check("the primary ghost units of block 1 are all dead", dead_fraction(h) == 1.0)
    ctx.check("their BN got no gradient back (shift still 8 below zero)", float(bn.bias.max()) < -8)


@scenario(
    "h43_ghostnet",
    "sgd_mom",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="warm-up written as exponential growth that never stops",
)
def h43_ghostnet_warmup_typo_momentum(ctx: Context) -> None:
    """The warm-up was meant as ``base * min(1, step / 60)`` and was written as
    ``base * 10 ** (step / 60)``: the learning rate keeps growing tenfold every 60 steps after
    the warm-up should have ended, passes the stability limit 2 / sharpness of the BN network,
    and the loss blows up."""
    gen = seeded(4314)
    model = GhostNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    batches = _image_batches(gen)

    def before(step):
        opt.param_groups[0]["lr"] = 0.01 * 10 ** (step / 60)  # meant: 0.1 * min(1, step / 60)

    _loop(ctx, model, opt, 240, _ghost_compute(ctx, model, batches), before=before)
    at = _diverged_at(ctx.losses)
    ctx.check(f"the loss diverged (step {at})", at is not None and at > 60)
    ctx.check("it learned first", min(ctx.losses[: at or 1]) < 0.5 * ctx.losses[0])


@scenario("h43_ghostnet", "adamw", "healthy", heldout=True, note="fp16 autocast + GradScaler")
def h43_ghostnet_fp16_healthy_adamw(ctx: Context) -> None:
    """GhostNet under fp16 autocast with a GradScaler and AdamW: trains normally."""
    gen = seeded(4315)
    model = GhostNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    batches = _image_batches(gen)
    _loop(ctx, model, opt, 120, _ghost_compute(ctx, model, batches, amp=True), scaler=scaler)
    first, last = statistics.mean(ctx.losses[:10]), statistics.mean(ctx.losses[-10:])
    ctx.check(f"loss fell ({first:.2f} -> {last:.2f})", last < 0.4 * first)
    ctx.check("loss finite throughout", all(_finite(ctx.losses)))
