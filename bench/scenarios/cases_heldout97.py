"""Held-out scenarios, set 97 (``h97_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing and records the losses).

Families: Hugging Face GPT-OSS (attention sinks, tiny MoE), DeepSeek-V2 (MLA + MoE) and
RecurrentGemma causal LMs, Depth Anything depth estimation and MaskFormer semantic segmentation
on generated scenes, all from tiny configs; hand-written: adaptive-softmax language model
(``nn.AdaptiveLogSoftmaxWithLoss``), mixture-of-softmaxes LM, MaskGIT-style masked-token
generator on quantised digits, InfoGAN (mutual-information head), SNGAN (spectral-normalised
discriminator), neural style transfer net (Gram-matrix loss through a fixed random feature net),
deep image prior, Phased-LSTM on generated irregular series (fp16 autocast), orthogonal-recurrence
RNN (``parametrizations.orthogonal``), PonderNet (learned halting) and a random-network-distillation
novelty predictor.

Optimizers: AdamW, Adamax, RMSprop, SGD (plain, momentum, Nesterov), RAdam, Adam, NAdam, Adagrad,
ASGD, Adadelta.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    grad_norm,
    lm_loss,
    scenario,
    seeded,
    text_batches,
    text_bytes,
)

VOCAB = 128


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _twin(model: nn.Module, make) -> nn.Module:
    """A fresh copy of ``model`` (its weights, none of its hooks) to measure on, so that the
    measurements add no forward or backward passes to the attached model; built without
    touching the global random state."""
    with torch.random.fork_rng():
        twin = make()
    twin.load_state_dict(model.state_dict())
    return twin


def _quiet_hf() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()


# -- Hugging Face causal LMs -----------------------------------------------------------------------


def _gpt_oss():
    from transformers import GptOssConfig, GptOssForCausalLM

    _quiet_hf()
    config = GptOssConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        num_local_experts=4,
        num_experts_per_tok=2,
        sliding_window=16,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        attention_dropout=0.0,
    )
    return GptOssForCausalLM(config)


def _deepseek_v2():
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    _quiet_hf()
    config = DeepseekV2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_routed_experts=4,
        num_experts_per_tok=2,
        n_shared_experts=1,
        first_k_dense_replace=1,
        kv_lora_rank=16,
        q_lora_rank=None,
        qk_rope_head_dim=8,
        qk_nope_head_dim=8,
        v_head_dim=8,
        max_position_embeddings=64,
        n_group=1,
        topk_group=1,
    )
    return DeepseekV2ForCausalLM(config)


def _recurrent_gemma():
    from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

    _quiet_hf()
    config = RecurrentGemmaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        lru_width=32,
        attention_window_size=16,
        conv1d_width=4,
        block_types=["recurrent", "attention"],
        final_w_init_variance_scale=1.0,
    )
    return RecurrentGemmaForCausalLM(config)


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


@scenario(
    "h97_hf_gpt_oss_sinks_moe_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="q/k projections in a param group whose lr carries a muP-style multiplier meant for "
    "the width (x40): the query and key weights outgrow the rest and the attention logits grow",
)
def h97_gpt_oss_qk_lr_multiplier(ctx: Context) -> None:
    gen = seeded(9701)
    model = _gpt_oss()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 2e-3}, {"params": qk, "lr": 8e-2}], weight_decay=0.0
    )
    scale: list[float] = []
    probe = next(text_batches(seeded(1), 8, 32, VOCAB))[0]

    def attn_logit_scale() -> float:
        qs, ks = [], []
        twin = _twin(model, _gpt_oss)
        attn = twin.model.layers[0].self_attn
        attn.q_proj.register_forward_hook(lambda m, i, o: qs.append(o.detach()))
        attn.k_proj.register_forward_hook(lambda m, i, o: ks.append(o.detach()))
        with torch.no_grad():
            twin(input_ids=probe)
        q = qs[0].reshape(8, 32, 4, 8)[..., :2, :].transpose(1, 2)
        k = ks[0].reshape(8, 32, 2, 8)[..., :1, :].transpose(1, 2)
        return float((q @ k.transpose(-1, -2)).abs().amax() / math.sqrt(8))

    def before(step: int) -> None:
        if step % 20 == 0:
            scale.append(attn_logit_scale())

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, VOCAB),
        240,
        loss_fn=lm_loss,
        forward=_hf_logits,
        before=before,
        classifier=False,
    )
    scale.append(attn_logit_scale())
    ctx.check("attention logits grew 10x", scale[-1] > 10 * scale[0])
    ctx.check("the loss stayed finite", _finite(ctx.losses))


@scenario(
    "h97_hf_deepseek_v2_mla_moe_lm",
    "adamw",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=80,
    note="after 80 steps at 1e-3 a misconfigured schedule ramps the lr geometrically to 1.0 "
    "over 160 steps: the loss creeps back up, then runs away",
)
def h97_deepseek_v2_schedule_overshoot(ctx: Context) -> None:
    gen = seeded(9702)
    model = _deepseek_v2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

    def before(step: int) -> None:
        t = min(max(step - 80, 0) / 160, 1.0)
        for g in opt.param_groups:
            g["lr"] = 1e-3 * (1000.0**t)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, VOCAB),
        300,
        loss_fn=lm_loss,
        forward=_hf_logits,
        before=before,
        classifier=False,
    )
    best = min(v for v in ctx.losses if math.isfinite(v))
    tail = [v if math.isfinite(v) else 1e9 for v in ctx.losses[-20:]]
    ctx.check("the loss fell first", best < 0.7 * ctx.losses[0])
    ctx.check("the loss climbed back more than 1 nat above its best", _mean(tail) > best + 1.0)


@scenario(
    "h97_hf_recurrent_gemma_lm",
    "radam",
    "healthy",
    heldout=True,
    note="RecurrentGemma (RG-LRU + local attention) on bytes, RAdam 3e-3",
)
def h97_recurrent_gemma_control(ctx: Context) -> None:
    gen = seeded(9703)
    model = _recurrent_gemma()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, VOCAB),
        200,
        loss_fn=lm_loss,
        forward=_hf_logits,
        classifier=False,
    )
    ctx.check("the loss fell", _mean(ctx.losses[-20:]) < 0.7 * _mean(ctx.losses[:5]))
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- Hugging Face vision on generated scenes ----------------------------------------------------


def _scenes(gen: torch.Generator, batch: int, size: int = 32):
    """Generated scenes: a ground plane whose depth grows towards the horizon, one square and one
    disc standing on it (each a flat depth), colours by class. Returns images, depth (metres),
    and a class map (0 ground, 1 square, 2 disc)."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    imgs = torch.empty(batch, 3, size, size)
    depth = torch.empty(batch, size, size)
    label = torch.zeros(batch, size, size, dtype=torch.long)
    for i in range(batch):
        d = 2.0 + 8.0 * (1.0 - ys.float() / (size - 1))
        img = torch.stack([0.3 + 0.02 * d, 0.5 - 0.03 * d, 0.2 + 0.01 * d])
        cx, cy, r = (torch.randint(6, size - 6, (3,), generator=gen)).tolist()
        r = 3 + r % 4
        sq = ((xs - cx).abs() <= r) & ((ys - cy).abs() <= r)
        zs = float(2.0 + 6.0 * torch.rand(1, generator=gen))
        d = torch.where(sq, torch.full_like(d, zs), d)
        label[i][sq] = 1
        img[:, sq] = torch.tensor([0.9, 0.2, 0.2])[:, None] * (1.0 - 0.05 * zs)
        cx, cy = torch.randint(5, size - 5, (2,), generator=gen).tolist()
        disc = (xs - cx) ** 2 + (ys - cy) ** 2 <= 16
        zd = float(2.0 + 6.0 * torch.rand(1, generator=gen))
        d = torch.where(disc, torch.full_like(d, zd), d)
        label[i][disc] = 2
        img[:, disc] = torch.tensor([0.2, 0.3, 0.9])[:, None] * (1.0 - 0.05 * zd)
        imgs[i] = img + 0.03 * torch.randn(3, size, size, generator=gen)
        depth[i] = d
    return imgs, depth, label


def _depth_anything():
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    _quiet_hf()
    backbone = Dinov2Config(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        out_features=["stage1", "stage2"],
        reshape_hidden_states=False,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone,
        reassemble_hidden_size=32,
        patch_size=8,
        neck_hidden_sizes=[16, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        reassemble_factors=[2, 1],
        depth_estimation_type="metric",
        max_depth=20,
    )
    return DepthAnythingForDepthEstimation(config)


@scenario(
    "h97_hf_depth_anything_scenes",
    "sgd_nesterov",
    "data_outlier",
    diverges=120,
    heldout=True,
    onset=120,
    note="one batch of depth targets in millimetres instead of metres (x1000) at step 120",
)
def h97_depth_anything_millimetre_batch(ctx: Context) -> None:
    gen = seeded(9704)
    model = _depth_anything()
    opt = torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9, nesterov=True)

    def batches():
        while True:
            x, d, _ = _scenes(gen, 8)
            yield x, d

    def alter(step: int, x: torch.Tensor, d: torch.Tensor):
        return (x, d * 1000.0) if step == 120 else (x, d)

    fit(
        ctx,
        model,
        opt,
        batches(),
        200,
        loss_fn=F.mse_loss,
        forward=lambda m, x: m(pixel_values=x).predicted_depth,
        alter=alter,
        classifier=False,
    )
    before = _mean(ctx.losses[100:120])
    after = [v if math.isfinite(v) else 1e9 for v in ctx.losses[125:200]]
    ctx.check("the outlier batch's loss was 1000x", ctx.losses[120] > 1000 * before)
    ctx.check("the run stayed broken after it", _mean(after) > 5 * before)


@scenario(
    "h97_hf_maskformer_scenes",
    "adamw",
    "healthy",
    heldout=True,
    note="MaskFormer (tiny Swin backbone, one DETR decoder layer) on generated 3-class scenes",
)
def h97_maskformer_control(ctx: Context) -> None:
    from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation, SwinConfig

    _quiet_hf()
    gen = seeded(9705)
    swin = SwinConfig(
        image_size=32,
        patch_size=2,
        embed_dim=8,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 2, 2],
        window_size=2,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = MaskFormerConfig(
        backbone_config=swin,
        num_labels=3,
        num_queries=8,
        mask_feature_size=32,
        fpn_feature_size=32,
        decoder_config={
            "model_type": "detr",
            "d_model": 16,
            "decoder_layers": 1,
            "decoder_attention_heads": 2,
            "decoder_ffn_dim": 32,
            "encoder_layers": 0,
            "num_queries": 8,
        },
    )
    model = MaskFormerForInstanceSegmentation(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    for _ in range(150):
        x, _, label = _scenes(gen, 8)
        masks = [torch.stack([(lab == c).float() for c in range(3)]) for lab in label]
        classes = [torch.arange(3) for _ in label]
        loss = model(pixel_values=x, mask_labels=masks, class_labels=classes).loss
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("the loss fell", _mean(ctx.losses[-15:]) < 0.7 * _mean(ctx.losses[:5]))
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- language models with unusual output layers ---------------------------------------------------


def _ranked_text_batches(gen: torch.Generator, batch: int = 16, length: int = 32):
    """Byte windows with the bytes renumbered by frequency (id 0 the most frequent), as the
    adaptive softmax's cutoffs expect."""
    data = text_bytes() % VOCAB
    order = torch.bincount(data, minlength=VOCAB).argsort(descending=True)
    rank = torch.empty(VOCAB, dtype=torch.long)
    rank[order] = torch.arange(VOCAB)
    data = rank[data]
    while True:
        start = torch.randint(0, len(data) - length - 1, (batch,), generator=gen)
        win = data[start[:, None] + torch.arange(length + 1)]
        yield win[:, :-1], win[:, 1:]


class AdaptiveSoftmaxLM(nn.Module):
    def __init__(self, dim: int = 48, hidden: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.rnn = nn.GRU(dim, hidden, batch_first=True)
        self.head = nn.AdaptiveLogSoftmaxWithLoss(hidden, VOCAB, cutoffs=[16, 48], div_value=2.0)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.embed(x))[0].reshape(-1, self.rnn.hidden_size)


@scenario(
    "h97_adaptive_softmax_lm",
    "adamax",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    note="the z-loss on the adaptive softmax's head logits is subtracted instead of added "
    "(sign bug): the head's log-partition is pushed up and its logits drift without bound",
)
def h97_adaptive_softmax_zloss_sign(ctx: Context) -> None:
    gen = seeded(9706)
    model = AdaptiveSoftmaxLM()
    opt = torch.optim.Adamax(model.parameters(), lr=6e-3)
    ctx.attach(model, opt)
    batches = _ranked_text_batches(gen)
    peak: list[float] = []
    for _ in range(300):
        x, y = next(batches)
        h = model.hidden(x)
        loss = model.head(h, y.reshape(-1)).loss
        head_logits = model.head.head(h)
        z = torch.logsumexp(head_logits.float(), dim=-1)
        total = loss - 1e-2 * (z**2).mean()  # meant: loss + 1e-4 * z**2
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        peak.append(float(head_logits.detach().abs().amax()))
    ctx.check("the head's logits grew 10x", _mean(peak[-10:]) > 10 * _mean(peak[:5]))


class MixtureOfSoftmaxesLM(nn.Module):
    def __init__(self, k: int = 4, dim: int = 48, hidden: int = 64) -> None:
        super().__init__()
        self.k, self.dim = k, dim
        self.embed = nn.Embedding(VOCAB, dim)
        self.rnn = nn.LSTM(dim, hidden, batch_first=True)
        self.prior = nn.Linear(hidden, k)
        self.latent = nn.Linear(hidden, k * dim)
        self.decoder = nn.Linear(dim, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (batch, time, vocab) of the mixture of K softmaxes."""
        h = self.rnn(self.embed(x))[0]
        log_pi = F.log_softmax(self.prior(h), dim=-1)
        lat = torch.tanh(self.latent(h)).reshape(*h.shape[:2], self.k, self.dim)
        log_p = F.log_softmax(self.decoder(lat), dim=-1)
        return torch.logsumexp(log_pi[..., None] + log_p, dim=2)


def _nll(logp: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(logp.reshape(-1, logp.shape[-1]), y.reshape(-1))


@scenario(
    "h97_mixture_of_softmaxes_lm",
    "asgd",
    "gradient_spike",
    diverges=None,
    heldout=True,
    onset=150,
    note="at step 150 one micro-batch's loss is not divided by the 48 accumulation steps: one "
    "gradient 48x the rest",
)
def h97_mos_undivided_microbatch(ctx: Context) -> None:
    gen = seeded(9707)
    model = MixtureOfSoftmaxesLM()
    opt = torch.optim.ASGD(model.parameters(), lr=1.0, t0=1e9)

    fit(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32, VOCAB),
        260,
        loss_fn=_nll,
        extra_loss=lambda step, loss: loss * 48.0 if step == 150 else loss,
        classifier=False,
    )
    g = ctx.grad_norms
    ctx.check(
        "the gradient at step 150 was 10x any of the 20 before", g[150] > 10 * max(g[130:150])
    )
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- a recurrent classifier with an orthogonal recurrence ----------------------------------------


class OrthogonalRNN(nn.Module):
    def __init__(self, hidden: int = 48, logit_scale: float = 1.0) -> None:
        super().__init__()
        self.inp = nn.Linear(8, hidden)
        self.rec = parametrizations.orthogonal(nn.Linear(hidden, hidden, bias=False))
        self.head = nn.Linear(hidden, 10)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, 8, 8)
        h = torch.zeros(rows.shape[0], self.rec.out_features)
        for t in range(8):
            h = torch.tanh(self.rec(h) + self.inp(rows[:, t]))
        return self.head(h) * self.logit_scale


@scenario(
    "h97_orthogonal_rnn_digits",
    "rmsprop",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="the classifier's logits are multiplied by 300 (the inverse temperature of a "
    "contrastive config copied into the classifier): the float32 softmax saturates to exactly 1.0",
)
def h97_orthogonal_rnn_temperature(ctx: Context) -> None:
    gen = seeded(9708)
    model = OrthogonalRNN(logit_scale=300.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fit(ctx, model, opt, digit_batches(gen), 250)
    x, y = digits()
    with torch.no_grad():
        logits = _twin(model, lambda: OrthogonalRNN(logit_scale=300.0))(x[:512])
    frac = collapsed_fraction(logits, y[:512])
    ctx.check("over half the rows' softmax is exactly 1.0", frac > 0.5)


# -- deep image prior ------------------------------------------------------------------------------


class DeepImagePrior(nn.Module):
    def __init__(self, width: int = 24) -> None:
        super().__init__()
        self.down = nn.Conv2d(8, width, 3, padding=1)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.up1 = nn.Conv2d(width, width, 3, padding=1)
        self.up2 = nn.Conv2d(width, width // 2, 3, padding=1)
        self.out = nn.Conv2d(width // 2, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.down(z), 0.2)
        h = F.leaky_relu(self.mid(h), 0.2)
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = F.leaky_relu(self.up1(h), 0.2)
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = F.leaky_relu(self.up2(h), 0.2)
        return self.out(h)


def _top_hessian_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
        hv = torch.autograd.grad(sum((g * u).sum() for g, u in zip(grads, v, strict=True)), params)
        eig = float(sum((h * u).sum() for h, u in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


@scenario(
    "h97_deep_image_prior_denoise",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=100,
    note="after 100 steps at lr 0.05 a second phase restarts at lr 1.5, past 2/sharpness "
    "(measured at the restart): the fit is thrown out of its basin and blows up",
)
def h97_dip_second_phase_lr(ctx: Context) -> None:
    gen = seeded(9709)
    model = DeepImagePrior()
    x, _ = digits()
    clean = F.interpolate(x[7].reshape(1, 1, 8, 8), size=32, mode="bilinear", align_corners=False)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=gen)
    z = 0.1 * torch.randn(1, 8, 8, 8, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sharp: list[float] = []

    def batches():
        while True:
            yield z, noisy

    def before(step: int) -> None:
        if step == 100:
            twin = _twin(model, DeepImagePrior)
            sharp.append(_top_hessian_eig(twin, lambda: F.mse_loss(twin(z), noisy)))
        for g in opt.param_groups:
            g["lr"] = 0.05 if step < 100 else 1.5

    fit(ctx, model, opt, batches(), 220, loss_fn=F.mse_loss, before=before, classifier=False)
    ctx.check("the lr passed 2/sharpness at the restart", 1.5 * sharp[0] > 2.0)
    tail = [v if math.isfinite(v) else 1e9 for v in ctx.losses[-10:]]
    ctx.check("the loss blew up past 10x its best", _mean(tail) > 10 * min(ctx.losses[:100]))


# -- PonderNet ------------------------------------------------------------------------------------


class PonderNet(nn.Module):
    def __init__(self, hidden: int = 64, steps: int = 8, rec_gain: float = 1.0) -> None:
        super().__init__()
        self.steps = steps
        self.inp = nn.Linear(64, hidden)
        self.cell = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, 10)
        self.halt = nn.Linear(hidden, 1)
        nn.init.normal_(self.cell.weight, std=rec_gain / math.sqrt(hidden))
        nn.init.zeros_(self.cell.bias)
        nn.init.constant_(self.halt.bias, -1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step logits and halting probability p_n, packed as (steps, batch, 10 + 1)."""
        e = self.inp(x)
        h = torch.zeros_like(e)
        logits, lams = [], []
        for n in range(self.steps):
            h = F.relu(self.cell(h) + e)
            logits.append(self.out(h))
            lam = torch.sigmoid(self.halt(h)).squeeze(-1)
            lams.append(torch.ones_like(lam) if n == self.steps - 1 else lam)
        lam = torch.stack(lams)
        survive = torch.cumprod(torch.cat([torch.ones_like(lam[:1]), 1 - lam[:-1]]), dim=0)
        return torch.cat([torch.stack(logits), (lam * survive)[..., None]], -1)


def _ponder_loss(out: torch.Tensor, y: torch.Tensor, prior: float = 0.3, beta: float = 0.01):
    logits, p = out[..., :10], out[..., 10]
    steps = logits.shape[0]
    ce = torch.stack([F.cross_entropy(logits[n], y, reduction="none") for n in range(steps)])
    rec = (p * ce).sum(0).mean()
    geo = prior * (1 - prior) ** torch.arange(steps, dtype=torch.float32)
    geo = geo / geo.sum()
    kl = (p * (torch.log(p + 1e-9) - torch.log(geo)[:, None])).sum(0).mean()
    return rec + beta * kl


@scenario(
    "h97_pondernet_digits",
    "sgd_mom",
    "exploding_gradients",
    where="cell",
    diverges="auto",
    heldout=True,
    onset=100,
    note="the recurrent step's weight is initialised with gain 2 (std 2/sqrt(hidden)); "
    "harmless through 8 ponder steps, but at step 100 the curriculum raises the step cap to "
    "24 and the gradients through the recurrence explode",
)
def h97_pondernet_ponder_cap_raised(ctx: Context) -> None:
    gen = seeded(9710)
    model = PonderNet(rec_gain=2.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def before(step: int) -> None:
        model.steps = 8 if step < 100 else 24

    fit(
        ctx,
        model,
        opt,
        digit_batches(gen),
        200,
        loss_fn=_ponder_loss,
        before=before,
        classifier=False,
    )
    g = ctx.grad_norms
    ctx.check(
        "the gradients were finite and moderate before step 100",
        _finite(g[:100]) and max(g[80:100]) < 100,
    )
    ctx.check(
        "after step 100 the gradient norm grew 100x or went non-finite",
        not _finite(g[100:]) or max(g[100:]) > 100 * max(g[80:100]),
    )
    ctx.check("the loss went non-finite", not _finite(ctx.losses))


# -- random network distillation -------------------------------------------------------------------


class RND(nn.Module):
    def __init__(self, obs: int = 16, out: int = 16, width: int = 128) -> None:
        super().__init__()
        self.target = nn.Sequential(nn.Linear(obs, 64), nn.ReLU(), nn.Linear(64, out))
        self.predictor = nn.Sequential(
            nn.Linear(obs, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, out),
        )
        for p in self.target.parameters():
            p.requires_grad_(False)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return self.predictor(s) - self.target(s)


def _explorer_states(gen: torch.Generator, batch: int = 64):
    """States an agent visits on a random walk through a 2-D room, as 16 features."""
    proj = torch.randn(4, 16, generator=gen)
    pos = torch.zeros(batch, 2)
    while True:
        pos = (pos + 0.1 * torch.randn(batch, 2, generator=gen)).clamp(-3, 3)
        feats = torch.cat([pos, torch.sin(pos), torch.cos(pos)], 1)[:, :4]
        s = torch.tanh(feats @ proj) + 0.05 * torch.randn(batch, 16, generator=gen)
        yield s, torch.zeros(batch, 16)


@scenario(
    "h97_rnd_novelty_predictor",
    "radam",
    "loss_of_plasticity",
    where=("predictor.0", "predictor.1", "predictor.2", "predictor.3"),
    diverges=None,
    heldout=True,
    onset=120,
    note="a scheduler restart bug sets the lr 300x for 4 steps at step 120: the predictor's "
    "ReLU units die and the novelty predictor stops learning",
)
def h97_rnd_lr_glitch_dead_units(ctx: Context) -> None:
    gen = seeded(9711)
    model = RND()
    opt = torch.optim.RAdam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    probe = next(_explorer_states(seeded(2), 256))[0]
    dead: list[float] = []

    def hidden_dead() -> float:
        predictor = _twin(model, RND).predictor
        with torch.no_grad():
            h1 = predictor[1](predictor[0](probe))
            h2 = predictor[3](predictor[2](h1))
        return max(dead_fraction(h1), dead_fraction(h2))

    def before(step: int) -> None:
        if step in (119, 200):
            dead.append(hidden_dead())
        for g in opt.param_groups:
            g["lr"] = 3e-1 if 120 <= step < 124 else 1e-3

    fit(
        ctx,
        model,
        opt,
        _explorer_states(gen),
        300,
        loss_fn=lambda d, _: (d**2).mean(),
        before=before,
        classifier=False,
    )
    dead.append(hidden_dead())
    ctx.check("most hidden units were alive before the glitch", dead[0] < 0.2)
    ctx.check("over half the units of a hidden layer died", dead[-1] > 0.5)
    ctx.check(
        "the loss never came back to its pre-glitch level",
        _mean(ctx.losses[-20:]) > 1.5 * _mean(ctx.losses[100:120]),
    )


# -- MaskGIT-style masked-token generator ----------------------------------------------------------


class MaskGIT(nn.Module):
    def __init__(self, levels: int = 4, dim: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(levels + 1, dim)  # the last id is [MASK]
        self.pos = nn.Parameter(0.02 * torch.randn(64, dim))
        layer = nn.TransformerEncoderLayer(
            dim, 2, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, levels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.ln(self.encoder(self.tok(tokens) + self.pos)))


def _masked_digit_tokens(gen: torch.Generator, batch: int = 32, levels: int = 4):
    for x, _ in digit_batches(gen, batch):
        tokens = (x * (levels - 0.001)).long()
        ratio = torch.cos(0.5 * math.pi * torch.rand(batch, 1, generator=gen)).clamp(min=0.1)
        masked = torch.rand(batch, 64, generator=gen) < ratio
        masked[:, 0] |= ~masked.any(1)
        yield torch.where(masked, levels, tokens), torch.where(masked, tokens, -100)


@scenario(
    "h97_maskgit_quantised_digits",
    "adam",
    "adam_second_moment_poisoned",
    diverges="auto",
    heldout=True,
    onset=100,
    note="at step 100 one batch's masked-token loss is normalised by a zero count clamped to "
    "1e-6 (the count taken from the wrong mask): a 1e6x gradient leaves Adam's second moment "
    "huge; its momentum throws the fit off and the tiny later updates barely bring it back",
)
def h97_maskgit_zero_count_normaliser(ctx: Context) -> None:
    gen = seeded(9712)
    model = MaskGIT()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = list(model.parameters())
    moves: list[list[float]] = []
    last = [[p.detach().clone() for p in params]]

    def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, 4), target.reshape(-1), ignore_index=-100)

    def extra(step: int, loss: torch.Tensor) -> torch.Tensor:
        if step != 100:
            return loss
        return loss * 1e6  # mean over masked tokens, then / clamp(count_of_wrong_mask, 1e-6)

    def before(step: int) -> None:
        now = [p.detach().clone() for p in params]
        moves.append([float((a - b).norm()) for a, b in zip(now, last[0], strict=True)])
        last[0] = now

    fit(
        ctx,
        model,
        opt,
        _masked_digit_tokens(gen),
        260,
        loss_fn=loss_fn,
        extra_loss=extra,
        before=before,
        classifier=False,
    )
    ctx.check(
        "the gradient at step 100 was 1000x",
        ctx.grad_norms[100] > 1000 * _mean(ctx.grad_norms[80:100]),
    )
    before_spike = [sum(m[i] for m in moves[60:100]) / 40 for i in range(len(params))]
    after_spike = [sum(m[i] for m in moves[160:]) / len(moves[160:]) for i in range(len(params))]
    shrank = sum(a < 0.1 * b for a, b in zip(after_spike, before_spike, strict=True))
    ctx.check("3/4 of the parameters' updates shrank 10x", shrank >= 0.75 * len(params))
    ctx.check(
        "the loss stayed above its pre-spike level",
        min(ctx.losses[150:]) > _mean(ctx.losses[90:100]),
    )
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- GANs -------------------------------------------------------------------------------------------


class Standardize(nn.Module):
    """Per-image standardisation (zero mean, unit variance over the pixels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        std = x.std(1, keepdim=True, unbiased=False)
        return (x - mean) / std


class InfoGANDiscriminator(nn.Module):
    def __init__(self, codes: int = 10, cont: int = 2) -> None:
        super().__init__()
        self.standardize = Standardize()
        self.trunk = nn.Sequential(
            nn.Linear(64, 128), nn.LeakyReLU(0.2), nn.Linear(128, 128), nn.LeakyReLU(0.2)
        )
        self.d_head = nn.Linear(128, 1)
        self.q_head = nn.Linear(128, codes + cont)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(self.standardize(x))
        return self.d_head(h).squeeze(-1), self.q_head(h)


def _info_loss(q: torch.Tensor, cat: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(q[:, :10], cat) + 0.5 * F.mse_loss(q[:, 10:], cont)


@scenario(
    "h97_infogan_digits",
    "nadam",
    "nonfinite",
    where="standardize",
    diverges=150,
    heldout=True,
    onset=150,
    note="at step 150 one real sample is a blank image: the per-image standardisation divides "
    "0 by 0 and the discriminator's loss is NaN",
)
def h97_infogan_blank_sample(ctx: Context) -> None:
    gen = seeded(9713)
    disc = InfoGANDiscriminator()
    g_net = nn.Sequential(
        nn.Linear(16 + 10 + 2, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.Sigmoid(),
    )
    opt_d = torch.optim.NAdam(disc.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g_net.parameters(), lr=1e-3, betas=(0.5, 0.999))
    ctx.attach(disc, opt_d)
    batches = digit_batches(gen)
    nan_born_in_standardize: list[bool] = []

    def watch(m, inp, out):
        nan_born_in_standardize.append(
            bool(torch.isfinite(inp[0]).all() and not torch.isfinite(out).all())
        )

    hook = disc.standardize.register_forward_hook(watch)
    for step in range(240):
        real, _ = next(batches)
        if step == 150:
            real = real.clone()
            real[5] = 0.0  # a blank scan in the real batch
        n = real.shape[0]
        cat = torch.randint(0, 10, (n,), generator=gen)
        cont = torch.rand(n, 2, generator=gen) * 2 - 1
        noise = torch.randn(n, 16, generator=gen)
        fake = g_net(torch.cat([noise, F.one_hot(cat, 10).float(), cont], 1))
        nan_born_in_standardize.clear()
        d_real, _ = disc(real)
        d_fake, q = disc(fake.detach())
        d_loss = F.binary_cross_entropy_with_logits(
            d_real, torch.ones(n)
        ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros(n))
        opt_d.zero_grad(set_to_none=True)
        (d_loss + _info_loss(q, cat, cont)).backward()
        ctx.grad_norms.append(grad_norm(disc))
        opt_d.step()
        ctx.step(d_loss)
        if step == 150:
            born = nan_born_in_standardize[0]
        d_out, q = disc(fake)
        g_loss = F.binary_cross_entropy_with_logits(d_out, torch.ones(n)) + _info_loss(q, cat, cont)
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
    hook.remove()
    ctx.check("the loss was finite before step 150", _finite(ctx.losses[:150]))
    ctx.check("the loss is NaN from step 150", not any(math.isfinite(v) for v in ctx.losses[150:]))
    ctx.check("the NaN was born in the standardisation", born)


class SNDiscriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        sn = parametrizations.spectral_norm
        self.fc1 = sn(nn.Linear(64, 128))
        self.fc2 = sn(nn.Linear(128, 128))
        self.fc3 = sn(nn.Linear(128, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.fc1(x), 0.1)
        h = F.leaky_relu(self.fc2(h), 0.1)
        return self.fc3(h).squeeze(-1)


@scenario(
    "h97_sngan_digits",
    "adam",
    "healthy",
    heldout=True,
    note="SNGAN on digits: spectral-normalised discriminator, hinge loss, Adam(0, 0.9)",
)
def h97_sngan_control(ctx: Context) -> None:
    gen = seeded(9714)
    disc = SNDiscriminator()
    g_net = nn.Sequential(
        nn.Linear(16, 128),
        nn.ReLU(),
        nn.Linear(128, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.Tanh(),
    )
    opt_d = torch.optim.Adam(disc.parameters(), lr=4e-4, betas=(0.0, 0.9))
    opt_g = torch.optim.Adam(g_net.parameters(), lr=1e-4, betas=(0.0, 0.9))
    ctx.attach(disc, opt_d)
    batches = digit_batches(gen)
    for _ in range(300):
        real, _ = next(batches)
        real = real * 2 - 1
        fake = g_net(torch.randn(real.shape[0], 16, generator=gen))
        d_loss = F.relu(1 - disc(real)).mean() + F.relu(1 + disc(fake.detach())).mean()
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        ctx.grad_norms.append(grad_norm(disc))
        opt_d.step()
        ctx.step(d_loss)
        g_loss = -disc(fake).mean()
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
    ctx.check(
        "the discriminator's hinge loss fell below its start",
        _mean(ctx.losses[-30:]) < 0.9 * _mean(ctx.losses[:5]),
    )
    ctx.check("the loss stayed finite", _finite(ctx.losses))


# -- Phased-LSTM on irregular series under fp16 autocast -------------------------------------------


class PhasedLSTM(nn.Module):
    """A Phased-LSTM cell (time gate with period tau, shift s, open ratio r_on) fed each
    sample's value and a Time2Vec embedding of its timestamp."""

    def __init__(self, hidden: int = 32, t2v: int = 8) -> None:
        super().__init__()
        # a fixed Fourier encoding of the timestamp, applied to the raw milliseconds
        self.time2vec = nn.Linear(1, t2v)
        nn.init.uniform_(self.time2vec.weight, 1e-3, 1e-2)
        nn.init.uniform_(self.time2vec.bias, 0.0, 2 * math.pi)
        self.time2vec.requires_grad_(False)
        self.cell = nn.LSTMCell(1 + t2v, hidden)
        self.log_tau = nn.Parameter(torch.empty(hidden).uniform_(math.log(0.1), math.log(1.0)))
        self.shift = nn.Parameter(torch.rand(hidden) * 0.2)
        self.r_on = 0.5
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, t_ms = x[..., :1], x[..., 1:]
        emb = torch.sin(self.time2vec(t_ms))
        b = x.shape[0]
        h = torch.zeros(b, self.cell.hidden_size)
        c = torch.zeros_like(h)
        tau = self.log_tau.exp()
        for i in range(x.shape[1]):
            h1, c1 = self.cell(torch.cat([values[:, i], emb[:, i]], -1), (h, c))
            phi = torch.remainder(t_ms[:, i].float() / 1000.0 - self.shift, tau) / tau
            k = torch.where(
                phi < 0.5 * self.r_on,
                2 * phi / self.r_on,
                torch.where(phi < self.r_on, 2 - 2 * phi / self.r_on, 1e-3 * phi),
            )
            h = k * h1.float() + (1 - k) * h
            c = k * c1.float() + (1 - k) * c
        return self.head(h)


def _streamed_series(gen: torch.Generator, batch: int = 32, points: int = 20):
    """Windows of a live recording, taken in time order: 2 s each, starting 300 ms later each
    step, sampled at irregular times; the label says whether the tone is 0.5 Hz or 2 Hz."""
    step = 0
    while True:
        start = 3000.0 + 300.0 * step
        offs = torch.sort(torch.rand(batch, points, generator=gen) * 2000.0, dim=1).values
        offs[:, -1] = 2000.0
        t_ms = start + offs
        y = torch.randint(0, 2, (batch,), generator=gen)
        freq = torch.where(y == 1, 2.0, 0.5)[:, None]
        phase = torch.rand(batch, 1, generator=gen) * 2 * math.pi
        v = torch.sin(2 * math.pi * freq * t_ms / 1000.0 + phase)
        v = v + 0.1 * torch.randn(v.shape, generator=gen)
        yield torch.stack([v, t_ms], -1), y
        step += 1


@scenario(
    "h97_phased_lstm_irregular_series",
    "adagrad",
    "amp_overflow",
    where="time2vec",
    diverges=201,
    heldout=True,
    onset=201,
    note="Time2Vec on raw millisecond timestamps under fp16 autocast: once the streamed "
    "recording passes 65.5 s (step 201) the timestamp is inf in fp16 and every step overflows",
)
def h97_phased_lstm_fp16_timestamps(ctx: Context) -> None:
    gen = seeded(9715)
    model = PhasedLSTM()
    opt = torch.optim.Adagrad([p for p in model.parameters() if p.requires_grad], lr=0.2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    fit(ctx, model, opt, _streamed_series(gen), 260, scaler=scaler, amp=True)
    ctx.check("the loss was finite before step 201", _finite(ctx.losses[:201]))
    ctx.check(
        "the loss fell before the overflow",
        _mean(ctx.losses[170:201]) < 0.5 * _mean(ctx.losses[:10]),
    )
    ctx.check(
        "the loss is non-finite from step 201", not any(math.isfinite(v) for v in ctx.losses[201:])
    )
    ctx.check("the scaler's scale collapsed", ctx.scales[-1] < 1e-6 * ctx.scales[200])
    x, y = next(_streamed_series(seeded(3)))
    x[..., 1] += 300.0 * 230
    with torch.no_grad():
        fp32 = F.cross_entropy(_twin(model, PhasedLSTM)(x), y)
    ctx.check("the same step is finite in float32", math.isfinite(float(fp32)))


# -- neural style transfer --------------------------------------------------------------------------


class StyleTransferNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.enc = nn.Conv2d(3, width, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(width, affine=True)
        self.res1 = nn.Conv2d(width, width, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(width, affine=True)
        self.res2 = nn.Conv2d(width, width, 3, padding=1)
        self.dec = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.enc(x)))
        h = h + self.res2(F.relu(self.norm2(self.res1(h))))
        return torch.sigmoid(self.dec(h))


def _gram(f: torch.Tensor) -> torch.Tensor:
    b, c, hgt, wid = f.shape
    f = f.reshape(b, c, hgt * wid)
    return f @ f.transpose(1, 2) / (c * hgt * wid)


@scenario(
    "h97_style_transfer_gram",
    "adadelta",
    "healthy",
    heldout=True,
    note="feed-forward style transfer: content + Gram-matrix style loss through a fixed random "
    "conv feature net, digits onto a generated stripe texture, Adadelta",
)
def h97_style_transfer_control(ctx: Context) -> None:
    gen = seeded(9716)
    model = StyleTransferNet()
    feats = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()
    )
    for p in feats.parameters():
        p.requires_grad_(False)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    style = torch.stack([torch.sin(xs + ys), torch.cos(0.5 * xs), torch.sin(0.7 * ys)])
    style = (0.5 + 0.5 * style)[None]
    with torch.no_grad():
        style_grams = [_gram(feats[:2](style)), _gram(feats(style))]

    def batches():
        for x, _ in digit_batches(gen, 16):
            img = F.interpolate(
                x.reshape(-1, 1, 8, 8), size=16, mode="bilinear", align_corners=False
            ).repeat(1, 3, 1, 1)
            yield img, img

    def loss_fn(out: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
        f1, f2 = feats[:2](out), feats(out)
        content_loss = F.mse_loss(f2, feats(content))
        style_loss = F.mse_loss(
            _gram(f1), style_grams[0].expand(out.shape[0], -1, -1)
        ) + F.mse_loss(_gram(f2), style_grams[1].expand(out.shape[0], -1, -1))
        return content_loss + 50.0 * style_loss

    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, batches(), 200, loss_fn=loss_fn, classifier=False)
    ctx.check("the loss fell", _mean(ctx.losses[-20:]) < 0.7 * _mean(ctx.losses[:5]))
    ctx.check("the loss stayed finite", _finite(ctx.losses))
