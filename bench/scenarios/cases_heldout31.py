"""Held-out set 31 (``h31_``): twelve induced instabilities and four healthy controls.

Families: Hugging Face Blenderbot (encoder-decoder), RoBERTa-PreLayerNorm classifier, Helium
causal LM, ViViT video classifier on generated clips and DPT depth estimation on generated
scenes from configs; FiBiNET recommender on generated clicks (one run under fp16 autocast), ESPCN pixel-shuffle
super-resolution on digits, AdaIN style transfer on digits and generated
textures, matching network on few-shot digit episodes, clockwork RNN on generated series, GCNII
deep graph network on a generated block-model graph, beta-VAE with capacity annealing (digits).
Optimizers: SGD, SGD with momentum and Nesterov, Adam, AdamW, NAdam, RAdam, RMSprop, Adagrad,
Adamax, and steadygrad.optim's Lion and AdaBelief.

Written without reading steadygrad's detectors, diagnosis or monitor, nor the other held-out
files, and never run on steadygrad while written: each scenario was adjusted with a stand-in
context that attaches nothing, only until its own checks held (or, for a healthy control, until
it trained normally).
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

# -- Hugging Face models from configs -------------------------------------------------------------


def _helium(vocab: int = 128, dim: int = 32, layers: int = 2):
    from transformers import HeliumConfig, HeliumForCausalLM

    config = HeliumConfig(
        vocab_size=vocab,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=dim // 2,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return HeliumForCausalLM(config)


def _lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _attention_entropy(model: nn.Module, x: torch.Tensor) -> float:
    """Mean entropy (nats) of the attention rows of every layer and head on ``x``."""
    with torch.no_grad():
        attn = model(input_ids=x, output_attentions=True).attentions
    ent = [-(a * a.clamp_min(1e-12).log()).sum(-1)[..., 4:].mean() for a in attn]
    return float(torch.stack(ent).mean())


def _blenderbot(vocab: int = 64, dim: int = 32):
    from transformers import BlenderbotConfig, BlenderbotForConditionalGeneration

    config = BlenderbotConfig(
        vocab_size=vocab,
        d_model=dim,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * dim,
        decoder_ffn_dim=2 * dim,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    return BlenderbotForConditionalGeneration(config)


def _reverse_batches(gen: torch.Generator, batch: int = 16, length: int = 10, vocab: int = 64):
    """Source tokens and their reversal as the target (decoder input: start token + shift)."""
    while True:
        src = torch.randint(3, vocab, (batch, length), generator=gen)
        tgt = src.flip(1)
        dec = torch.cat([torch.ones(batch, 1, dtype=torch.long), tgt[:, :-1]], 1)
        yield (src, dec), tgt


def _roberta_preln(layers: int = 3, dim: int = 32):
    from transformers import (
        RobertaPreLayerNormConfig,
        RobertaPreLayerNormForSequenceClassification,
    )

    config = RobertaPreLayerNormConfig(
        vocab_size=128,
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        max_position_embeddings=64,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    return RobertaPreLayerNormForSequenceClassification(config)


def _majority_batches(gen: torch.Generator, batch: int = 32, length: int = 16):
    """Is token 5 more frequent than token 6 in the sequence (tokens >= 3; 1 is <s>)?"""
    while True:
        x = torch.randint(7, 128, (batch, length), generator=gen)
        a = torch.rand(batch, length, generator=gen) < 0.25
        b = torch.rand(batch, length, generator=gen) < 0.25
        x = torch.where(a, 5, torch.where(b & ~a, 6, x))
        x[:, 0] = 1
        yield x, ((x == 5).sum(1) > (x == 6).sum(1)).long()


def _vivit():
    from transformers import VivitConfig, VivitForVideoClassification

    config = VivitConfig(
        image_size=16,
        num_frames=4,
        tubelet_size=[2, 4, 4],
        num_channels=1,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return VivitForVideoClassification(config)


def _clip_batches(gen: torch.Generator, batch: int = 16):
    """Clips of 4 frames (16x16, one channel) of a bright 4x4 square that moves left, moves
    right or stays put (the three classes), with a little noise."""
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        clips = 0.1 * torch.rand(batch, 4, 1, 16, 16, generator=gen)
        row = torch.randint(0, 12, (batch,), generator=gen)
        col = torch.randint(3, 9, (batch,), generator=gen)
        step = (y - 1) * 1  # -1, 0, +1 pixels per frame
        for i in range(batch):
            for f in range(4):
                c = int(col[i] + step[i] * f)
                clips[i, f, 0, row[i] : row[i] + 4, c : c + 4] = 1.0
        yield clips, y


def _dpt():
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 16, 32],
        fusion_hidden_size=16,
        reassemble_factors=[4, 2, 1, 0.5],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return DPTForDepthEstimation(config)


def _depth_batches(gen: torch.Generator, batch: int = 8):
    """Generated scenes: a tilted floor plane plus a box in front of it. The image (32x32) shows
    the depth through shading and a texture; the target is the depth map at 64x64."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    while True:
        a, b, c = torch.rand(3, batch, 1, 1, generator=gen)
        depth = 1.0 + a * xs + b * ys + 0.5 * c
        r0, c0 = torch.randint(0, 40, (2, batch), generator=gen)
        for i in range(batch):
            depth[i, r0[i] : r0[i] + 20, c0[i] : c0[i] + 20] -= 0.6
        shade = 1.0 / depth
        tex = 0.5 + 0.5 * torch.sin(20 * xs / depth) * torch.sin(20 * ys / depth)
        img = torch.stack([shade, tex * shade, tex], 1)
        img = F.avg_pool2d(img, 2) + 0.02 * torch.randn(batch, 3, 32, 32, generator=gen)
        yield img, depth


def _dpt_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(pixel_values=x).predicted_depth


# -- Helium: attention-logit growth ---------------------------------------------------------------


@scenario(
    "hf_helium_causal_lm",
    "adamw",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    onset=40,
    note="hand-written weight decay on the q/k group with its sign flipped",
    heldout=True,
)
def h31_helium_qk_decay_sign(ctx: Context) -> None:
    """The query/key projections are kept out of AdamW's decay and decayed by hand, with the
    sign flipped: from step 40 they grow by 1.2% a step, the attention logits with the square
    of that, and the attention rows sharpen towards one-hot."""
    gen = seeded(3101)
    model = _helium()
    qk = [p for n, p in model.named_parameters() if ("q_proj" in n or "k_proj" in n)]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": qk, "weight_decay": 0.0}, {"params": rest, "weight_decay": 0.01}], lr=2e-3
    )
    probe = next(text_batches(torch.Generator().manual_seed(7), 8))[0]
    start = _attention_entropy(model, probe)

    def bug(step: int) -> None:
        if step >= 40:
            with torch.no_grad():
                for p in qk:
                    p.mul_(1 + 0.012)  # meant: 1 - lr * wd

    fit(ctx, model, opt, text_batches(gen), 260, loss_fn=lm_loss, forward=_lm_forward, before=bug)
    end = _attention_entropy(model, probe)
    ctx.check(f"attention entropy fell to a quarter ({start:.2f} -> {end:.2f})", end < start / 4)


@scenario("hf_helium_causal_lm", "radam", "healthy", heldout=True)
def h31_helium_healthy_radam(ctx: Context) -> None:
    gen = seeded(3102)
    model = _helium()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3, weight_decay=0.01)
    fit(ctx, model, opt, text_batches(gen), 200, loss_fn=lm_loss, forward=_lm_forward)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.7 * sum(ctx.losses[:10]))


# -- Blenderbot: output-logit divergence ----------------------------------------------------------


@scenario(
    "hf_blenderbot_seq2seq",
    "adam",
    "output_logit_divergence",
    where=("lm_head", "model.shared"),
    diverges=None,
    onset=0,
    note="z-loss added with the wrong sign",
    heldout=True,
)
def h31_blenderbot_zloss_sign(ctx: Context) -> None:
    """A z-loss meant to keep log Z near 0 (``+ 1e-2 * logsumexp(logits)**2``) is subtracted:
    the loss rewards a large partition function and log Z drifts up without bound through the
    tied embedding / head, while the cross-entropy (shift invariant) barely notices."""
    gen = seeded(3103)
    model = _blenderbot()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    seen: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x) -> torch.Tensor:
        logits = m(input_ids=x[0], decoder_input_ids=x[1]).logits
        seen["logits"] = logits
        return logits

    def zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - 1e-2 * torch.logsumexp(seen["logits"], -1).pow(2).mean()

    probe = next(_reverse_batches(torch.Generator().manual_seed(5)))[0]
    with torch.no_grad():
        start = float(torch.logsumexp(forward(model, probe), -1).mean())
    fit(
        ctx,
        model,
        opt,
        _reverse_batches(gen),
        240,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=zloss,
    )
    with torch.no_grad():
        end = float(torch.logsumexp(forward(model, probe), -1).mean())
    ctx.check(f"log Z drifted by 20 ({start:.1f} -> {end:.1f})", abs(end - start) > 20)


# -- RoBERTa-PreLayerNorm: frozen layers ----------------------------------------------------------


@scenario(
    "hf_roberta_prelayernorm_classifier",
    "nadam",
    "update_ratio_out_of_range",
    where=("roberta_prelayernorm.encoder.layer.0", "roberta_prelayernorm.encoder.layer.1"),
    diverges=None,
    note="layer-wise LR decay truncated to an int",
    heldout=True,
)
def h31_roberta_preln_llrd_int(ctx: Context) -> None:
    """Layer-wise learning-rate decay written as ``base * int(0.8 ** depth)``: the top layer
    gets factor 1, the two below it 0, so they never move while the rest trains."""
    gen = seeded(3104)
    model = _roberta_preln()
    layers = model.roberta_prelayernorm.encoder.layer
    groups, ids = [], set()
    for i, layer in enumerate(layers):
        depth = len(layers) - 1 - i
        groups.append({"params": list(layer.parameters()), "lr": 2e-3 * int(0.8**depth)})
        ids |= {id(p) for p in layer.parameters()}
    groups.append({"params": [p for p in model.parameters() if id(p) not in ids]})
    opt = torch.optim.NAdam(groups, lr=2e-3)
    before = [p.detach().clone() for p in layers[:2].parameters()]
    fit(ctx, model, opt, _majority_batches(gen), 160, forward=lambda m, x: m(input_ids=x).logits)
    same = all(torch.equal(a, b) for a, b in zip(before, layers[:2].parameters(), strict=True))
    ctx.check("layers 0 and 1 unchanged", same)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < sum(ctx.losses[:10]))


# -- ViViT: one corrupt batch ---------------------------------------------------------------------


@scenario("hf_vivit_video", "rmsprop", "data_outlier", diverges=200, onset=200, heldout=True)
def h31_vivit_undecoded_clips(ctx: Context) -> None:
    """At step 200 half the batch is garbage: eight clips from a corrupt shard decode to
    random raw 0-255 bytes, never normalised; the loss jumps on that batch."""
    gen = seeded(3105)
    model = _vivit()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 200:
            x = x.clone()
            x[:8] = torch.round(
                255.0 * torch.rand(x[:8].shape, generator=torch.Generator().manual_seed(200))
            )
        return x, y

    fit(
        ctx,
        model,
        opt,
        _clip_batches(gen),
        240,
        alter=alter,
        forward=lambda m, x: m(pixel_values=x).logits,
    )
    ctx.check(
        f"loss spiked at 200 ({max(ctx.losses[190:200]):.2f} -> {ctx.losses[200]:.2f})",
        ctx.losses[200] > 5 * max(ctx.losses[190:200]),
    )


# -- DPT: a healthy control ---------------------------------------------------------------------


@scenario("hf_dpt_depth", "adamw", "healthy", note="regression head (MSE)", heldout=True)
def h31_dpt_healthy_adamw(ctx: Context) -> None:
    gen = seeded(3107)
    model = _dpt()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    fit(
        ctx,
        model,
        opt,
        _depth_batches(gen),
        150,
        loss_fn=F.mse_loss,
        classifier=False,
        forward=_dpt_forward,
    )
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- FiBiNET: Adam's second moment poisoned -------------------------------------------------------


class SENet(nn.Module):
    """Squeeze-excitation over fields: a weight per field from the fields' mean embeddings."""

    def __init__(self, fields: int, reduction: int = 2) -> None:
        super().__init__()
        self.fc1 = nn.Linear(fields, max(1, fields // reduction))
        self.fc2 = nn.Linear(max(1, fields // reduction), fields)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        w = F.relu(self.fc2(F.relu(self.fc1(e.mean(-1)))))
        return e * w[..., None]


class Bilinear(nn.Module):
    """FiBiNET's field-all bilinear interaction: (e_i W) * e_j for every pair i < j."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Linear(dim, dim, bias=False)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        f = e.shape[1]
        i, j = torch.triu_indices(f, f, 1)
        return (self.w(e)[:, i] * e[:, j]).flatten(1)


class FiBiNET(nn.Module):
    def __init__(self, fields: int = 6, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(fields * vocab, dim)
        self.offsets = torch.arange(fields) * vocab
        self.senet = SENet(fields)
        self.bi_plain = Bilinear(dim)
        self.bi_se = Bilinear(dim)
        pairs = fields * (fields - 1) // 2
        self.dnn = MLP([2 * pairs * dim, 64, 32, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.embed(x + self.offsets)
        z = torch.cat([self.bi_plain(e), self.bi_se(self.senet(e))], 1)
        return self.dnn(z).squeeze(-1)


def _click_batches(gen: torch.Generator, batch: int = 64, fields: int = 6, vocab: int = 20):
    """Clicks from a hidden pairwise-interaction model over categorical fields."""
    g = torch.Generator().manual_seed(31)
    table = torch.randn(fields, vocab, 4, generator=g)
    while True:
        x = torch.randint(0, vocab, (batch, fields), generator=gen)
        v = table[torch.arange(fields), x]  # (batch, fields, 4)
        score = (v[:, 0] * v[:, 1]).sum(1) + (v[:, 2] * v[:, 3]).sum(1) - v[:, 4, 0] + v[:, 5, 1]
        p = torch.sigmoid(2.0 * score)
        yield x, (torch.rand(batch, generator=gen) < p).float()


@scenario(
    "fibinet_recommender",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=80,
    note="one batch's loss left multiplied by a 2**16 loss scale",
    heldout=True,
)
def h31_fibinet_loss_scale_once(ctx: Context) -> None:
    """At step 80 one batch's loss goes through backward still multiplied by a 65536 loss
    scale (an fp16 code path left half-removed): Adam's v takes the squared spike and, with
    beta2 = 0.999, keeps the updates tiny for hundreds of steps after."""
    gen = seeded(3108)
    model = FiBiNET()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
    snaps = []

    def track(step: int) -> None:
        if step in (30, 70, 130, 170):
            snaps.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())

    def bug(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 65536.0 if step == 80 else loss

    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        220,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
        before=track,
        extra_loss=bug,
    )
    before, after = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check(
        f"updates shrank 3x after the spike ({before:.3f} -> {after:.3f})", after < before / 3
    )


@scenario("fibinet_recommender", "adagrad", "amp_overflow", diverges=None, heldout=True)
def h31_fibinet_fp16_scaler(ctx: Context) -> None:
    """float16 autocast with a GradScaler started at 2**40 and growing every 20 steps: its
    first steps overflow and are skipped while it backs off, and later growths overflow again
    now and then (each a skipped step); training is fine."""
    gen = seeded(3109)
    model = FiBiNET()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40, growth_interval=20)
    fit(
        ctx,
        model,
        opt,
        _click_batches(gen),
        300,
        loss_fn=F.binary_cross_entropy_with_logits,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    backoffs = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    backoffs += ctx.scales[0] < 2.0**40
    ctx.check(f"scaler backed off ({backoffs} times)", backoffs >= 2)
    ctx.check(
        "loss stayed finite and fell",
        all(math.isfinite(v) for v in ctx.losses)
        and sum(ctx.losses[-30:]) < 0.9 * sum(ctx.losses[:30]),
    )


# -- ESPCN: benign AMP overflow -------------------------------------------------------------------


class ESPCN(nn.Module):
    """Efficient sub-pixel CNN: features at low resolution, then a pixel shuffle upscales."""

    def __init__(self, scale: int = 2, width: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, width // 2, 3, padding=1)
        self.conv3 = nn.Conv2d(width // 2, scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.conv1(x))
        x = torch.tanh(self.conv2(x))
        return self.shuffle(self.conv3(x))


def _sr_batches(gen: torch.Generator, batch: int = 32):
    """Digits (8x8) as the high-resolution target, their 2x2-mean 4x4 version as the input."""
    for x, _ in digit_batches(gen, batch):
        hr = x.reshape(-1, 1, 8, 8)
        yield F.avg_pool2d(hr, 2), hr


@scenario(
    "espcn_super_resolution",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    onset=150,
    note="step decay with gamma 10 (meant 0.1) at steps 150 and 175",
    heldout=True,
)
def h31_espcn_step_decay_gamma_typo(ctx: Context) -> None:
    """A step schedule meant to divide the learning rate by 10 at steps 150 and 175 was given
    gamma=10: the rate goes 0.05 -> 0.5 -> 5, the second far past the stability limit of the
    MSE loss, and the reconstruction error oscillates and blows up within a few steps."""
    gen = seeded(3110)
    model = ESPCN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[150, 175], gamma=10.0)
    fit(
        ctx,
        model,
        opt,
        _sr_batches(gen),
        200,
        loss_fn=F.mse_loss,
        classifier=False,
        before=lambda step: sched.step() if step > 0 else None,
    )
    ctx.check("loss fell before 150", sum(ctx.losses[140:150]) < 0.5 * sum(ctx.losses[:10]))
    ctx.check(f"learning rate ended at {sched.get_last_lr()[0]:.3g}", sched.get_last_lr()[0] > 1)


@scenario("espcn_super_resolution", "sgd_nesterov", "healthy", heldout=True)
def h31_espcn_healthy_nesterov(ctx: Context) -> None:
    gen = seeded(3111)
    model = ESPCN()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    fit(ctx, model, opt, _sr_batches(gen), 200, loss_fn=F.mse_loss, classifier=False)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- AdaIN: a NaN from one blank content image ----------------------------------------------------


class AdaIN(nn.Module):
    """Adaptive instance normalisation, written without an epsilon in the content std."""

    def forward(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        cm, cs = content.mean((2, 3), keepdim=True), content.std((2, 3), keepdim=True)
        sm, ss = style.mean((2, 3), keepdim=True), style.std((2, 3), keepdim=True)
        return (content - cm) / cs * ss + sm


class StyleNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.Conv2d(width, width, 3))
        self.adain = AdaIN()
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(width, width, 3), nn.ReLU(), nn.ConvTranspose2d(width, 1, 3)
        )

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        content, style = pair[:, :1], pair[:, 1:]
        return self.decoder(self.adain(self.encoder(content), self.encoder(style)))


def _style_batches(gen: torch.Generator, batch: int = 32):
    """(content digit, style texture) pairs; the texture is a random stripe pattern."""
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    for x, _ in digit_batches(gen, batch):
        f, ph, ang = torch.rand(3, batch, 1, 1, generator=gen)
        tex = 0.5 + 0.5 * torch.sin((1 + 2 * f) * (xs * ang.cos() + ys * ang.sin()) + 6 * ph)
        pair = torch.stack([x.reshape(-1, 8, 8), tex], 1)
        yield pair, pair


def _style_loss_fn(model: StyleNet):
    def loss_fn(out: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        fo = model.encoder(out)
        fc, fs = model.encoder(pair[:, :1]), model.encoder(pair[:, 1:])
        target = model.adain(fc, fs).detach()
        content = F.mse_loss(fo, target)
        style = F.mse_loss(fo.mean((2, 3)), fs.mean((2, 3))) + F.mse_loss(
            (fo.var((2, 3)) + 1e-5).sqrt(), (fs.var((2, 3)) + 1e-5).sqrt()
        )
        return content + style

    return loss_fn


@scenario(
    "adain_style_transfer",
    "adamax",
    "nonfinite",
    where="adain",
    diverges=90,
    onset=90,
    heldout=True,
)
def h31_adain_blank_content(ctx: Context) -> None:
    """At step 90 one content image is blank (an empty crop): the unpadded encoder maps it to
    a constant feature map, its std is exactly 0 and AdaIN (no epsilon) divides 0 by 0."""
    gen = seeded(3112)
    model = StyleNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 90:
            x = x.clone()
            x[3, 0] = 0.0
            y = x
        return x, y

    fit(
        ctx,
        model,
        opt,
        _style_batches(gen),
        130,
        loss_fn=_style_loss_fn(model),
        classifier=False,
        alter=alter,
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("finite until 90, not after", all(finite[:90]) and not finite[90])


# -- matching network: softmax collapse -----------------------------------------------------------


class MatchingNet(nn.Module):
    """Cosine attention of each query over an embedded support set (no full-context
    embeddings), scaled by an inverse temperature."""

    def __init__(self, inv_temperature: float) -> None:
        super().__init__()
        self.embed = MLP([64, 128, 64])
        self.inv_temperature = inv_temperature

    def forward(self, episode) -> torch.Tensor:
        support, support_y, query = episode
        s = F.normalize(self.embed(support), dim=-1)
        q = F.normalize(self.embed(query), dim=-1)
        sims = q @ s.T * self.inv_temperature
        ways = int(support_y.max()) + 1
        onehot = F.one_hot(support_y, ways).float()
        # class logit: the largest similarity among its support examples
        return (sims[:, :, None] + (onehot[None] - 1) * 1e4).amax(1)


def _episodes(gen: torch.Generator, ways: int = 5, shots: int = 2, queries: int = 8, fixed=0):
    """Few-shot digit episodes (classes 0-6 for training); ``fixed`` > 0 cycles that many."""
    x, y = digits()
    pool = [torch.nonzero(y == c).squeeze(1) for c in range(7)]

    def make() -> tuple:
        classes = torch.randperm(7, generator=gen)[:ways]
        s, sy, q, qy = [], [], [], []
        for k, c in enumerate(classes):
            idx = pool[int(c)][torch.randperm(len(pool[int(c)]), generator=gen)[: shots + queries]]
            s.append(x[idx[:shots]])
            q.append(x[idx[shots:]])
            sy += [k] * shots
            qy += [k] * queries
        return (torch.cat(s), torch.tensor(sy), torch.cat(q)), torch.tensor(qy)

    eps = [make() for _ in range(fixed)]
    i = 0
    while True:
        if fixed:
            yield eps[i % fixed]
            i += 1
        else:
            yield make()


@scenario(
    "matching_network_fewshot",
    "sg_lion",
    "softmax_collapse",
    where="embed.2",
    diverges=None,
    note="inverse temperature 100 (meant 10) on a small fixed episode set",
    heldout=True,
)
def h31_matching_net_hot_softmax(ctx: Context) -> None:
    """Meta-training on a small fixed pool of 16 episodes with the cosine similarities scaled
    by 100 (the config meant 10): once a query is a little closer to its class than to the
    others, its float32 softmax is exactly one-hot and gives no gradient."""
    gen = seeded(3113)
    model = MatchingNet(inv_temperature=100.0)
    opt = sgo.Lion(model.parameters(), lr=3e-4, weight_decay=0.0, fused=False)
    fit(ctx, model, opt, _episodes(gen, fixed=16), 200)
    eps = _episodes(torch.Generator().manual_seed(3113), fixed=16)
    rows = [next(eps) for _ in range(16)]
    with torch.no_grad():
        frac = sum(collapsed_fraction(model(e), t) for e, t in rows) / len(rows)
    ctx.check(f"a third of the training queries collapsed ({frac:.2f})", frac > 1 / 3)


# -- clockwork RNN: exploding gradients -----------------------------------------------------------


class ClockworkRNN(nn.Module):
    """Koutnik et al. 2014: the hidden state in modules with periods 1, 2, 4, 8; a module
    updates only at steps divisible by its period and reads itself and the slower modules.
    ReLU units with an identity-initialised recurrence (as in an IRNN)."""

    def __init__(self, inputs: int = 1, module: int = 8, periods=(1, 2, 4, 8), gain: float = 1.0):
        super().__init__()
        self.periods = periods
        hidden = module * len(periods)
        self.inp = nn.Linear(inputs, hidden)
        self.recurrent = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        blocks = torch.arange(hidden) // module
        self.register_buffer("mask", (blocks[None, :] >= blocks[:, None]).float())
        self.register_buffer("period", torch.tensor(periods)[blocks])
        with torch.no_grad():  # identity initialisation (Le et al. 2015), scaled by ``gain``
            self.recurrent.weight.copy_(gain * torch.eye(hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], self.mask.shape[0])
        w = self.recurrent.weight * self.mask
        for t in range(x.shape[1]):
            new = F.relu(self.inp(x[:, t]) + h @ w.T)
            active = (t % self.period == 0).float()
            h = active * new + (1 - active) * h
        return self.head(h).squeeze(-1)


def _series_batches(gen: torch.Generator, length, batch: int = 32):
    """Noisy sums of two sines; the target is the next value after the window.
    ``length(step)`` gives the window length (a curriculum)."""
    step = 0
    while True:
        n = length(step)
        f = 0.05 + 0.25 * torch.rand(batch, 2, 1, generator=gen)
        ph = 6.3 * torch.rand(batch, 2, 1, generator=gen)
        t = torch.arange(n + 1.0)
        s = torch.sin(f * t + ph).sum(1) + 0.05 * torch.randn(batch, n + 1, generator=gen)
        yield s[:, :n, None], s[:, n]
        step += 1


@scenario(
    "clockwork_rnn",
    "sgd",
    "exploding_gradients",
    where="recurrent",
    diverges="auto",
    onset=60,
    note="identity init scaled 1.1 (meant 1.0) + a length curriculum, no clipping",
    heldout=True,
)
def h31_clockwork_rnn_curriculum(ctx: Context) -> None:
    """The ReLU recurrence is initialised to 1.1 times the identity (meant 1.0) and, from
    step 60, a curriculum lengthens the windows from 8 to 96 steps: backpropagation through
    time multiplies by the over-unit recurrence more times at every length, the gradient
    grows from the recurrent layer outward, and plain SGD without clipping is thrown off."""
    gen = seeded(3114)
    model = ClockworkRNN(gain=1.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def length(step: int) -> int:
        return 8 if step < 60 else min(160, 8 + (step - 60))

    fit(ctx, model, opt, _series_batches(gen, length), 260, loss_fn=F.mse_loss, classifier=False)
    early, late = max(ctx.grad_norms[20:60]), max(ctx.grad_norms[60:])
    ctx.check(f"gradient norm grew 20x ({early:.2g} -> {late:.2g})", late > 20 * early)


# -- GCNII: dead units from an activation penalty -------------------------------------------------


class GCNII(nn.Module):
    """Chen et al. 2020: deep graph convolutions with an initial residual (alpha) and an
    identity mapping (beta_l = log(lambda / l + 1))."""

    def __init__(self, inputs: int, hidden: int, classes: int, layers: int = 8):
        super().__init__()
        self.fc_in = nn.Linear(inputs, hidden)
        self.convs = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(layers))
        self.fc_out = nn.Linear(hidden, classes)
        self.alpha, self.lam = 0.1, 0.5
        self.acts: list[torch.Tensor] = []
        self.h0 = torch.empty(0)

    def forward(self, graph) -> torch.Tensor:
        adj, x = graph
        h0 = F.relu(self.fc_in(x))
        self.h0 = h0
        h = h0
        self.acts = []
        for i, conv in enumerate(self.convs, start=1):
            beta = math.log(self.lam / i + 1)
            s = (1 - self.alpha) * (adj @ h) + self.alpha * h0
            h = F.relu((1 - beta) * s + beta * conv(s))
            self.acts.append(h)
        return self.fc_out(h)


def _block_graph(gen: torch.Generator, nodes: int = 160, groups: int = 4):
    """A stochastic block-model graph (normalised adjacency with self loops), noisy features
    that hint at the block, and the block as the label."""
    y = torch.arange(nodes) % groups
    same = y[:, None] == y[None, :]
    p = torch.where(same, 0.12, 0.01)
    a = (torch.rand(nodes, nodes, generator=gen) < p).float()
    a = torch.triu(a, 1)
    a = a + a.T + torch.eye(nodes)
    d = a.sum(1).rsqrt()
    adj = d[:, None] * a * d[None, :]
    x = F.one_hot(y, groups).float() @ torch.randn(groups, 16, generator=gen)
    x = x + 2.0 * torch.randn(nodes, 16, generator=gen)
    return (adj, x), y


def _graph_batches(graph, y):
    while True:
        yield graph, y


@scenario(
    "gcnii_graph",
    "rmsprop",
    "loss_of_plasticity",
    where="fc_in",
    diverges="auto",
    onset=60,
    note="activation L1 penalty with weight 1.0 (meant 1e-4)",
    heldout=True,
)
def h31_gcnii_activation_penalty(ctx: Context) -> None:
    """From step 60 a sparsity penalty on the (post-ReLU) node embeddings of the input
    projection, the initial residual every layer reads, is switched on summed over nodes and
    units with weight 1.0 (meant: averaged, weight 1e-4): it pushes the units' pre-activations below zero, they die and stay dead (no
    gradient through a dead ReLU)."""
    gen = seeded(3115)
    graph, y = _block_graph(gen)
    model = GCNII(16, 32, 4)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)

    def penalty(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss + model.h0.sum() if step >= 60 else loss  # meant .mean()

    fit(ctx, model, opt, _graph_batches(graph, y), 220, extra_loss=penalty)
    with torch.no_grad():
        model(graph)
    frac = dead_fraction(model.h0)
    ctx.check(f"fc_in's units dead ({frac:.2f})", frac >= 0.9)


@scenario("gcnii_graph", "sg_adabelief", "healthy", heldout=True)
def h31_gcnii_healthy_adabelief(ctx: Context) -> None:
    gen = seeded(3116)
    graph, y = _block_graph(gen)
    model = GCNII(16, 32, 4)
    opt = sgo.AdaBelief(model.parameters(), lr=3e-3, fused=False)
    fit(ctx, model, opt, _graph_batches(graph, y), 200)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- beta-VAE with capacity annealing: a slow climb -----------------------------------------------


class BetaVAE(nn.Module):
    def __init__(self, latent: int = 8) -> None:
        super().__init__()
        self.enc = MLP([64, 128, 2 * latent])
        self.dec = MLP([latent, 128, 64])
        self.latent = latent

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, -1)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        return torch.cat([self.dec(z), mu, logvar], -1)


@scenario(
    "beta_vae_capacity",
    "adam",
    "loss_divergence",
    diverges="auto",
    onset=60,
    note="per-step gamma factor 1.015 (meant 0.985) after a 60-step warm-up",
    heldout=True,
)
def h31_beta_vae_gamma_schedule_sign(ctx: Context) -> None:
    """Burgess et al.'s capacity objective ``recon + gamma * |KL - C|`` (C annealed to 25
    nats), with gamma meant to decay by 1.5% a step after a 60-step warm-up and given the
    factor 1.015 instead: the weight on the capacity gap grows without end, the gap never
    reaches zero (the posterior samples are noisy) and the objective climbs steadily with
    nothing breaking."""
    gen = seeded(3117)
    model = BetaVAE()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    step = [0]

    def loss_fn(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        rec, mu, logvar = out[:, :64], out[:, 64:72], out[:, 72:]
        recon = F.binary_cross_entropy_with_logits(rec, x, reduction="sum") / len(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        capacity = 25.0 * min(1.0, step[0] / 500)
        gamma = 10.0 * 1.015 ** max(0, step[0] - 60)
        return recon + gamma * (kl - capacity).abs()

    def tick(s: int) -> None:
        step[0] = s

    batches = ((x, x) for x, _ in digit_batches(gen))
    fit(ctx, model, opt, batches, 260, loss_fn=loss_fn, classifier=False, before=tick)
    best = min(ctx.losses[:100])
    ctx.check(
        f"loss climbed 3x its best ({best:.0f} -> {ctx.losses[-1]:.0f})",
        ctx.losses[-1] > 3 * best,
    )
