"""Held-out scenarios, set 17 (``h17_``): written without reading steadygrad's diagnosis, its
monitor or any other held-out file, and never run on steadygrad while they were written (each was
tuned only with a stand-in context that attaches nothing, until its own checks held).

Families: Hugging Face Qwen2-MoE causal LM, RoFormer and FNet classifiers, a MobileNetV2 image
classifier and a Speech2Text encoder-decoder on generated features (all from configs, no
download); a DDPM-style U-Net denoiser on generated images, a BiLSTM-CRF tagger, skip-gram
word2vec with negative sampling, a Bayes-by-backprop MLP, an AlphaZero-style policy/value net on
generated tic-tac-toe positions, a Koopman autoencoder on a generated oscillator and a graph
transformer on generated block-model graphs.
Optimizers: AdamW, Adamax, Adam, NAdam, RMSprop, steadygrad's Lion and AdaBelief, SGD with
momentum and Nesterov, plain SGD, RAdam, Adagrad.
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
    dead_fraction,
    digit_batches,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)


def train(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    batches,
    steps: int,
    loss_of,
    *,
    before=None,
    alter=None,
    extra=None,
    targets=None,
    scaler=None,
    amp: bool = False,
) -> None:
    """One training loop: ``loss_of(model, batch)`` is the loss; ``alter(step, batch)`` changes
    a batch, ``before(step)`` runs first, ``extra(step, loss, batch)`` is what is backpropagated."""
    probe_batch = next(batches)
    ctx.attach(model, opt, probe=(loss_of, probe_batch), scaler=scaler)
    for step in range(steps):
        batch = next(batches)
        if alter is not None:
            batch = alter(step, batch)
        if before is not None:
            before(step)
        if targets is not None:
            ctx.targets(targets(batch))
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            loss = loss_of(model, batch).float()
        total = extra(step, loss, batch) if extra is not None else loss
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
            ctx.grad_norms.append(_grad_norm(model))
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            total.backward()
            ctx.grad_norms.append(_grad_norm(model))
            opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _grad_norm(model: nn.Module) -> float:
    grads = [p.grad.float().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _median(values: list[float]) -> float:
    return float(torch.tensor(values).median())


# -- Hugging Face models from configs ------------------------------------------------------------


def _qwen2_moe():
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    config = Qwen2MoeConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=32,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return Qwen2MoeForCausalLM(config)


def _roformer():
    from transformers import RoFormerConfig, RoFormerForSequenceClassification

    config = RoFormerConfig(
        vocab_size=128,
        embedding_size=32,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
    )
    return RoFormerForSequenceClassification(config)


def _fnet():
    from transformers import FNetConfig, FNetForSequenceClassification

    config = FNetConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        num_labels=2,
    )
    return FNetForSequenceClassification(config)


def _mobilenet_v2():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    config = MobileNetV2Config(
        num_channels=1,
        image_size=16,
        depth_multiplier=0.35,
        num_labels=10,
        classifier_dropout_prob=0.0,
    )
    return MobileNetV2ForImageClassification(config)


def _lm_step(model, batch):
    x, y = batch
    return lm_loss(model(x).logits, y)


def _cls_step(model, batch):
    x, y = batch
    return F.cross_entropy(model(x).logits, y)


def _image_batches(gen: torch.Generator, batch: int = 32):
    """Digits upsampled to 16x16 (MobileNetV2's stride-32 stem wants more than 8x8)."""
    for x, y in digit_batches(gen, batch):
        yield F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="bilinear"), y


@scenario(
    "h17_qwen2_moe_lm",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    note="linear warm-up to a peak of 3 (a ResNet recipe's rate)",
    heldout=True,
)
def h17_warmup_overshoot_qwen2_moe(ctx: Context) -> None:
    """A tiny Qwen2-MoE language model trained with SGD + momentum whose linear warm-up
    climbs to a peak of 3 over 200 steps (copied from a ResNet recipe, far above what a
    transformer takes): it trains while the rate is small, then the steps grow past the stability
    limit and the loss climbs away."""
    gen = seeded(1701)
    model = _qwen2_moe()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 3.0 * min(1.0, (step + 1) / 200)

    train(ctx, model, opt, text_batches(gen), 260, _lm_step, before=warmup)
    best = min(v for v in ctx.losses if math.isfinite(v))
    ctx.check("trained first", best < ctx.losses[0] - 0.5)
    ctx.check("then climbed", not all(_finite(ctx.losses)) or ctx.losses[-1] > best + 1.0)


@scenario(
    "h17_roformer_cls",
    "adamax",
    "sharpness_above_limit",
    diverges=151,
    onset=150,
    note="resumed at step 150 with lr 0.2",
    heldout=True,
)
def h17_lr_raised_on_resume_roformer(ctx: Context) -> None:
    """A RoFormer classifier trains with Adamax at 2e-3; at step 150 the job is resumed from a
    checkpoint with the learning rate given on the command line as 2e-1 (a typo for 2e-3)."""
    gen = seeded(1702)
    model = _roformer()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def resume(step: int) -> None:
        if step == 150:
            opt.param_groups[0]["lr"] = 2e-1

    train(
        ctx,
        model,
        opt,
        bert_batches(gen),
        240,
        _cls_step,
        before=resume,
        targets=lambda b: b[1],
    )
    ctx.check("learned before 150", _median(ctx.losses[130:150]) < 0.5)
    late = [v if math.isfinite(v) else 1e9 for v in ctx.losses[150:]]
    ctx.check("broke after 150", max(late) > 2 * _median(ctx.losses[130:150]) + 0.5)


@scenario(
    "h17_fnet_cls",
    "nadam",
    "output_logit_divergence",
    where=("classifier",),
    diverges=None,
    note="unbounded margin bonus in the loss",
    heldout=True,
)
def h17_margin_bonus_fnet(ctx: Context) -> None:
    """An FNet classifier whose loss adds a "margin bonus" ``-0.2 * (target logit - mean
    logit)``, meant to be clipped at a margin but written unbounded: once the examples are
    right, the bonus keeps pushing the classifier's logits apart without limit."""
    gen = seeded(1703)
    model = _fnet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    probe_x, _ = next(bert_batches(torch.Generator().manual_seed(5)))
    with torch.no_grad():
        start = float(model(probe_x).logits.abs().max())

    def bonus(step: int, loss: torch.Tensor, batch) -> torch.Tensor:
        x, y = batch
        logits = model(x).logits
        margin = logits.gather(1, y[:, None]).squeeze(1) - logits.mean(1)
        return loss - 0.2 * margin.mean()

    train(
        ctx,
        model,
        opt,
        bert_batches(gen),
        300,
        _cls_step,
        extra=bonus,
        targets=lambda b: b[1],
    )
    with torch.no_grad():
        end = float(model(probe_x).logits.abs().max())
    ctx.check("logits grew 20x", end > 20 * start)
    ctx.check("logits still growing", end > 5.0)


@scenario(
    "h17_mobilenet_v2_cls",
    "rmsprop",
    "update_ratio_out_of_range",
    where=("mobilenet_v2.conv_1x1",),
    diverges=None,
    note="per-module LR multiplier lookup defaults to 0",
    heldout=True,
)
def h17_frozen_by_lr_lookup_mobilenet_v2(ctx: Context) -> None:
    """A MobileNetV2 digit classifier with per-module learning-rate multipliers looked up as
    ``mults.get(name, 0.0)``; the key for the last 1x1 convolution is misspelled
    ("conv_1x_1"), so that block trains at learning rate 0 the whole run."""
    gen = seeded(1704)
    model = _mobilenet_v2()
    mults = {"conv_stem": 1.0, "layer": 1.0, "conv_1x_1": 1.0, "classifier": 1.0}
    groups = []
    for name, child in [*model.mobilenet_v2.named_children(), ("classifier", model.classifier)]:
        params = list(child.parameters())
        if params:
            groups.append({"params": params, "lr": 1e-3 * mults.get(name, 0.0)})
    opt = torch.optim.RMSprop(groups, lr=1e-3)
    before = model.mobilenet_v2.conv_1x1.convolution.weight.detach().clone()
    train(ctx, model, opt, _image_batches(gen), 150, _cls_step, targets=lambda b: b[1])
    ctx.check(
        "conv_1x1 unchanged", torch.equal(before, model.mobilenet_v2.conv_1x1.convolution.weight)
    )
    ctx.check("the rest learned", _median(ctx.losses[-10:]) < 0.7 * _median(ctx.losses[:5]))


# -- Speech2Text with per-utterance normalisation ---------------------------------------------------


class UtteranceCMVN(nn.Module):
    """Per-utterance mean and variance normalisation of the features (no epsilon)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True)


class SpeechCommands(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import Speech2TextConfig, Speech2TextForConditionalGeneration

        config = Speech2TextConfig(
            vocab_size=16,
            d_model=32,
            encoder_layers=1,
            decoder_layers=1,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            input_feat_per_channel=16,
            input_channels=1,
            conv_channels=32,
            conv_kernel_sizes=[5, 5],
            num_conv_layers=2,
            max_source_positions=64,
            max_target_positions=16,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            decoder_start_token_id=2,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        )
        self.cmvn = UtteranceCMVN()
        self.s2t = Speech2TextForConditionalGeneration(config)

    def forward(self, feats: torch.Tensor, decoder_in: torch.Tensor) -> torch.Tensor:
        return self.s2t(input_features=self.cmvn(feats), decoder_input_ids=decoder_in).logits


def _speech_batches(gen: torch.Generator, batch: int = 16, frames: int = 40):
    """Generated log-mel-like features: each of 4 words lights two mel bands that move in time;
    the transcript is two tokens per word (ids 3..10) then end of sentence."""
    bands = torch.arange(16).float()
    while True:
        words = torch.randint(0, 4, (batch,), generator=gen)
        t = torch.linspace(0, 1, frames)
        centre = (2 + 3 * words)[:, None].float() + 3 * t[None, :]
        feats = torch.exp(-((bands[None, None, :] - centre[:, :, None]) ** 2) / 2.0)
        feats = feats + 0.1 * torch.randn(batch, frames, 16, generator=gen)
        tokens = torch.stack([3 + 2 * words, 4 + 2 * words, torch.full_like(words, 2)], 1)
        dec_in = torch.cat([torch.full((batch, 1), 2), tokens[:, :-1]], 1)
        yield feats, dec_in, tokens


def _speech_step(model, batch):
    feats, dec_in, tokens = batch
    return lm_loss(model(feats, dec_in), tokens)


@scenario(
    "h17_speech2text",
    "adam",
    "nonfinite",
    where=("cmvn",),
    diverges=120,
    onset=120,
    note="a silent utterance: 0/0 in the normalisation",
    heldout=True,
)
def h17_nan_silent_utterance_speech2text(ctx: Context) -> None:
    """A Speech2Text model behind per-utterance CMVN without an epsilon: at step 120 a batch
    holds one silent clip (all-zero features, a dropped microphone), its std is 0 and the
    normalisation yields 0/0 = NaN."""
    gen = seeded(1705)
    model = SpeechCommands()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def silent(step: int, batch):
        if step == 120:
            feats, dec_in, tokens = batch
            feats = feats.clone()
            feats[7] = 0.0
            batch = (feats, dec_in, tokens)
        return batch

    train(ctx, model, opt, _speech_batches(gen), 150, _speech_step, alter=silent)
    finite = _finite(ctx.losses)
    ctx.check("finite until 120, not at 120", all(finite[:120]) and not finite[120])
    ctx.check("learned before", ctx.losses[119] < 0.5 * ctx.losses[0])


# -- DDPM-style U-Net denoiser -------------------------------------------------------------------


class TinyUNet(nn.Module):
    """Two-level U-Net predicting the noise, with a sinusoidal time embedding."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.time = nn.Linear(16, 2 * width)
        self.down1 = nn.Conv2d(1, width, 3, padding=1)
        self.down2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.out = nn.Conv2d(2 * width, 1, 3, padding=1)
        self.norm1 = nn.GroupNorm(4, width)
        self.norm2 = nn.GroupNorm(4, 2 * width)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(torch.arange(8) * (-math.log(1000.0) / 8))
        emb = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], 1)
        h1 = F.silu(self.norm1(self.down1(x)))
        h2 = F.silu(self.norm2(self.down2(h1))) + self.time(emb)[:, :, None, None]
        h2 = F.silu(self.mid(h2))
        u = F.silu(self.up(h2))
        return self.out(torch.cat([u, h1], 1))


_BETAS = torch.linspace(1e-4, 0.05, 100)
_ALPHA_BAR = torch.cumprod(1 - _BETAS, 0)


def _blob_images(gen: torch.Generator, batch: int = 32, size: int = 16):
    """Generated images: one or two Gaussian blobs on a 16x16 canvas, scaled to [-1, 1]."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    while True:
        cx, cy = (torch.rand(2, batch, 2, generator=gen) * (size - 4) + 2).unbind(0)
        on = (torch.rand(batch, 2, generator=gen) < torch.tensor([1.0, 0.5])).float()
        blobs = torch.exp(
            -(
                (xx[None, None] - cx[:, :, None, None]) ** 2
                + (yy[None, None] - cy[:, :, None, None]) ** 2
            )
            / 6.0
        )
        img = (blobs * on[:, :, None, None]).sum(1, keepdim=True).clamp(max=1.0)
        x0 = 2 * img - 1
        t = torch.randint(0, 100, (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = _ALPHA_BAR[t][:, None, None, None]
        yield (a.sqrt() * x0 + (1 - a).sqrt() * noise, t.float()), noise


def _ddpm_step(model, batch):
    (xt, t), noise = batch
    return F.mse_loss(model(xt, t), noise)


@scenario(
    "h17_ddpm_unet",
    "sg_lion",
    "amp_overflow",
    diverges=None,
    note="GradScaler starting at 2**30, benign",
    heldout=True,
)
def h17_amp_overflow_ddpm_unet(ctx: Context) -> None:
    """A DDPM noise-prediction U-Net in float16 autocast with a GradScaler copied from a
    large-model recipe (initial scale 2**30, growth every 25 steps): the scaled gradients
    overflow float16 now and then, the scaler skips those steps and backs off; training is
    fine."""
    gen = seeded(1706)
    model = TinyUNet()
    opt = sgo.Lion(model.parameters(), lr=1e-4, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**30, growth_interval=25)
    train(ctx, model, opt, _blob_images(gen), 150, _ddpm_step, scaler=scaler, amp=True)
    drops = sum(b < a for a, b in zip(ctx.scales, ctx.scales[1:], strict=False))
    ctx.check("scaler skipped steps", drops + (ctx.scales[0] < 2.0**30) >= 2)
    ctx.check("loss fell", _median(ctx.losses[-10:]) < 0.8 * _median(ctx.losses[:5]))


@scenario("h17_ddpm_unet", "adamw", "healthy", heldout=True)
def h17_healthy_ddpm_unet(ctx: Context) -> None:
    gen = seeded(1707)
    model = TinyUNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    train(ctx, model, opt, _blob_images(gen), 150, _ddpm_step)


# -- BiLSTM-CRF tagger --------------------------------------------------------------------------


class BiLSTMCRF(nn.Module):
    def __init__(self, vocab: int = 60, tags: int = 5, dim: int = 24, hidden: int = 24) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.emit = nn.Linear(2 * hidden, tags)
        self.transitions = nn.Parameter(torch.zeros(tags, tags))
        self.start = nn.Parameter(torch.zeros(tags))

    def nll(self, x: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood of the tag sequences under the linear-chain CRF."""
        e = self.emit(self.lstm(self.embed(x))[0])  # (b, t, k)
        b, t, _ = e.shape
        score = self.start[tags[:, 0]] + e[:, 0].gather(1, tags[:, :1]).squeeze(1)
        alpha = self.start + e[:, 0]
        for i in range(1, t):
            score = score + self.transitions[tags[:, i - 1], tags[:, i]]
            score = score + e[:, i].gather(1, tags[:, i : i + 1]).squeeze(1)
            alpha = torch.logsumexp(alpha[:, :, None] + self.transitions[None] + e[:, i, None], 1)
        return (torch.logsumexp(alpha, 1) - score).mean() / t


def _tagging_batches(gen: torch.Generator, batch: int = 32, length: int = 12):
    """Generated sentences: words 0-9 start an entity (B), 10-19 continue it (I), 20-59 are
    other (O); tags O=0, B-PER=1, I-PER=2, B-LOC=3, I-LOC=4 (entity type from the word's
    parity). The tagger must use context: a continuation word after O is tagged O."""
    while True:
        x = torch.randint(20, 60, (batch, length), generator=gen)
        starts = torch.rand(batch, length, generator=gen) < 0.2
        x = torch.where(starts, torch.randint(0, 10, (batch, length), generator=gen), x)
        cont = torch.rand(batch, length, generator=gen) < 0.3
        x = torch.where(cont & ~starts, torch.randint(10, 20, (batch, length), generator=gen), x)
        tags = torch.zeros(batch, length, dtype=torch.long)
        kind = torch.zeros(batch, dtype=torch.long)
        inside = torch.zeros(batch, dtype=torch.bool)
        for i in range(length):
            w = x[:, i]
            b = w < 10
            c = (w >= 10) & (w < 20) & inside
            kind = torch.where(b, w % 2, kind)
            tags[:, i] = torch.where(b, 1 + 2 * kind, torch.where(c, 2 + 2 * kind, 0))
            inside = b | c
        yield x, tags


def _crf_step(model, batch):
    return model.nll(*batch)


@scenario(
    "h17_bilstm_crf",
    "sgd_mom",
    "data_outlier",
    diverges=130,
    onset=130,
    note="one batch with tags from another file",
    heldout=True,
)
def h17_outlier_misaligned_tags_bilstm_crf(ctx: Context) -> None:
    """A BiLSTM-CRF tagger; at step 130 one batch comes from a misaligned annotation file:
    each sentence's tags are those of another sentence, mostly entity tags on plain words."""
    gen = seeded(1708)
    model = BiLSTMCRF()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    def misaligned(step: int, batch):
        x, tags = batch
        if step == 130:
            g = torch.Generator().manual_seed(130)
            tags = torch.randint(1, 5, tags.shape, generator=g)
        return x, tags

    train(ctx, model, opt, _tagging_batches(gen), 200, _crf_step, alter=misaligned)
    ctx.check("loss spiked at 130", ctx.losses[130] > 5 * max(ctx.losses[120:130]))
    ctx.check("recovered", _median(ctx.losses[-10:]) < 2 * max(ctx.losses[120:130]))


@scenario("h17_bilstm_crf", "adagrad", "healthy", heldout=True)
def h17_healthy_bilstm_crf(ctx: Context) -> None:
    gen = seeded(1709)
    model = BiLSTMCRF()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.1)
    train(ctx, model, opt, _tagging_batches(gen), 200, _crf_step)


# -- skip-gram word2vec with negative sampling ----------------------------------------------------


class SkipGram(nn.Module):
    def __init__(self, vocab: int = 200, dim: int = 32) -> None:
        super().__init__()
        self.center = nn.Embedding(vocab, dim)
        self.context = nn.Embedding(vocab, dim)
        nn.init.normal_(self.center.weight, std=0.1)
        nn.init.normal_(self.context.weight, std=0.1)

    def forward(self, c, o, neg):
        v = self.center(c)
        pos = F.logsigmoid((self.context(o) * v).sum(-1))
        negs = F.logsigmoid(-(self.context(neg) * v[:, None]).sum(-1)).sum(-1)
        return -(pos + negs).mean()


def _skipgram_batches(gen: torch.Generator, batch: int = 256, vocab: int = 200, k: int = 5):
    """(centre, context, negatives) pairs from a generated corpus: words come in 20 topics
    of 10; a context word is from the centre's topic 80% of the time."""
    while True:
        c = torch.randint(0, vocab, (batch,), generator=gen)
        same = torch.rand(batch, generator=gen) < 0.8
        o_topic = (c // 10) * 10 + torch.randint(0, 10, (batch,), generator=gen)
        o = torch.where(same, o_topic, torch.randint(0, vocab, (batch,), generator=gen))
        neg = torch.randint(0, vocab, (batch, k), generator=gen)
        yield c, o, neg


def _skipgram_step(model, batch):
    return model(*batch)


@scenario(
    "h17_skipgram_w2v",
    "sgd",
    "loss_divergence",
    diverges="auto",
    onset=150,
    note="linear LR decay past zero: the total step count was too small",
    heldout=True,
)
def h17_negative_lr_skipgram(ctx: Context) -> None:
    """word2vec's linear learning-rate decay ``lr0 * (1 - step / total)`` with ``total``
    computed from the first shard's size (150 steps) while the run goes on to 500: from step
    150 the rate is negative and grows in size, so the embeddings climb the loss, slowly."""
    gen = seeded(1710)
    model = SkipGram()
    opt = torch.optim.SGD(model.parameters(), lr=8.0)
    total = 150

    def decay(step: int) -> None:
        opt.param_groups[0]["lr"] = 8.0 * (1 - step / total)

    train(ctx, model, opt, _skipgram_batches(gen), 500, _skipgram_step, before=decay)
    best = min(ctx.losses[:150])
    ctx.check("trained while lr > 0", best < 0.8 * ctx.losses[0])
    late = [v if math.isfinite(v) else 1e9 for v in ctx.losses]
    ctx.check("climbed after 150", max(late[250:]) > 2 * best + 1.0)


# -- Bayes-by-backprop MLP --------------------------------------------------------------------------


class BayesLinear(nn.Module):
    """Mean-field Gaussian weights, reparameterised; ``kl`` to a N(0, 1) prior."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.mu = nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))
        self.rho = nn.Parameter(torch.full((n_out, n_in), -5.0))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sigma = F.softplus(self.rho)
        w = self.mu + sigma * torch.randn_like(sigma)
        return F.linear(x, w, self.bias)

    def kl(self) -> torch.Tensor:
        sigma = F.softplus(self.rho)
        return (0.5 * (sigma**2 + self.mu**2 - 1) - torch.log(sigma)).sum()


class BayesMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = BayesLinear(10, 64)
        self.fc2 = BayesLinear(64, 64)
        self.fc3 = BayesLinear(64, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

    def kl(self) -> torch.Tensor:
        return self.fc1.kl() + self.fc2.kl() + self.fc3.kl()


def _diabetes(gen: torch.Generator, batch: int = 32):
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)[:, None]
    x, y = (x - x.mean(0)) / x.std(0), (y - y.mean()) / y.std()
    while True:
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y) - batch, batch):
            yield x[order[i : i + batch]], y[order[i : i + batch]]


def _elbo_step(model, batch):
    x, y = batch
    return F.mse_loss(model(x), y) + 1e-5 * model.kl()


@scenario(
    "h17_bayes_mlp",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=60,
    note="one batch of targets in raw units",
    heldout=True,
)
def h17_adam_poisoned_raw_targets_bayes_mlp(ctx: Context) -> None:
    """A Bayes-by-backprop regressor (diabetes, standardised targets); at step 60 one batch is
    read from an unstandardised cache (targets in raw units, ~150 not ~1): one gradient ~1e3x
    too large lands in Adam's second moment, which forgets over ~1000 steps, so every later
    update is far too small and learning stalls."""
    gen = seeded(1711)
    model = BayesMLP()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def raw(step: int, batch):
        x, y = batch
        if step == 60:
            y = y * 77.0 + 152.0
        return x, y

    snaps = []

    def track(step: int) -> None:
        if step in (20, 50, 120, 150):
            snaps.append(torch.cat([p.detach().flatten() for p in model.fc1.parameters()]).clone())

    train(ctx, model, opt, _diabetes(gen), 200, _elbo_step, alter=raw, before=track)
    early, late = (snaps[1] - snaps[0]).norm(), (snaps[3] - snaps[2]).norm()
    ctx.check("fc1's updates shrank 3x after the bad batch", late < early / 3)
    ctx.check("loss spiked at 60", ctx.losses[60] > 100 * max(ctx.losses[50:60]))


# -- AlphaZero-style policy/value net on tic-tac-toe ---------------------------------------------


_LINES = torch.tensor(
    [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 4, 8], [2, 4, 6]]
)


def _completing(line_vals: torch.Tensor, who: float) -> list[int]:
    """The cells that would complete a line of ``who`` (two of theirs and one free)."""
    out = []
    for k, line in enumerate(_LINES):
        v = line_vals[k]
        if int((v == who).sum()) == 2 and int((v == 0).sum()) == 1:
            out.append(int(line[(v == 0).nonzero()[0, 0]]))
    return out


def _game_batches(gen: torch.Generator, batch: int = 64):
    """Random tic-tac-toe positions from the mover's view (+1 mine, -1 theirs). Policy target
    (a stand-in for search visit counts): win if possible, else block, else the centre, else
    a free corner, else any free cell. Value: +1 if the mover can win now, -0.5 if the
    opponent threatens a line the mover cannot block alone, else 0."""
    while True:
        boards = torch.zeros(batch, 9)
        moves = torch.randint(0, 7, (batch,), generator=gen)
        for b in range(batch):
            cells = torch.randperm(9, generator=gen)[: int(moves[b])]
            for i, c in enumerate(cells):
                boards[b, c] = 1.0 if i % 2 else -1.0
        free = boards == 0
        line_vals = boards[:, _LINES]  # (b, 8, 3)
        policy = torch.zeros(batch, dtype=torch.long)
        value = torch.zeros(batch)
        for b in range(batch):
            win, block = _completing(line_vals[b], 1.0), _completing(line_vals[b], -1.0)
            options = [c for c in range(9) if free[b, c]]
            if win:
                policy[b], value[b] = win[0], 1.0
            elif block:
                policy[b], value[b] = block[0], -0.5 if len(set(block)) > 1 else 0.0
            elif free[b, 4]:
                policy[b] = 4
            else:
                corners = [c for c in (0, 2, 6, 8) if free[b, c]]
                policy[b] = (corners or options)[0]
        yield boards, (policy, value)


class PolicyValueNet(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(18, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.policy = nn.Linear(width, 9)
        self.value = nn.Sequential(nn.Linear(width, 32), nn.ReLU(), nn.Linear(32, 1), nn.Tanh())

    def features(self, boards: torch.Tensor) -> torch.Tensor:
        return torch.cat([(boards == 1).float(), (boards == -1).float()], 1)

    def forward(self, boards: torch.Tensor):
        h = self.trunk(self.features(boards))
        return self.policy(h), self.value(h).squeeze(1)


def _az_step(model, batch):
    boards, (policy, value) = batch
    logits, v = model(boards)
    return F.cross_entropy(logits, policy) + F.mse_loss(v, value)


@scenario(
    "h17_alphazero_pv",
    "sgd_nesterov",
    "loss_of_plasticity",
    where=("trunk.2", "trunk.3"),
    diverges=None,
    note="activation penalty written as mean() instead of pow(2).mean()",
    heldout=True,
)
def h17_dead_units_activation_penalty_alphazero(ctx: Context) -> None:
    """An AlphaZero-style policy/value net with an "activation penalty" on the second trunk
    layer's pre-activations, meant as ``0.3 * pre.pow(2).mean()`` but written
    ``0.3 * pre.mean()``: it pushes every pre-activation down a little each step, so the
    ReLU units of that layer die one after another and the net stops learning."""
    gen = seeded(1712)
    model = PolicyValueNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    captured = {}
    model.trunk[2].register_forward_hook(lambda m, i, o: captured.__setitem__("pre", o))

    def penalty(step: int, loss: torch.Tensor, batch) -> torch.Tensor:
        return loss + 0.3 * captured["pre"].mean()

    train(ctx, model, opt, _game_batches(gen), 400, _az_step, extra=penalty)
    boards, _ = next(_game_batches(torch.Generator().manual_seed(3), 256))
    with torch.no_grad():
        h = model.trunk(model.features(boards))
    ctx.check("half of trunk.2's units dead", dead_fraction(h) >= 0.5)


@scenario("h17_alphazero_pv", "sgd_mom", "healthy", heldout=True)
def h17_healthy_alphazero(ctx: Context) -> None:
    gen = seeded(1713)
    model = PolicyValueNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train(ctx, model, opt, _game_batches(gen), 200, _az_step)


# -- Koopman autoencoder on a generated oscillator --------------------------------------------------


class KoopmanAE(nn.Module):
    def __init__(self, n: int = 4, latent: int = 8) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n, 32), nn.Tanh(), nn.Linear(32, latent))
        self.koopman = nn.Linear(latent, latent, bias=False)
        self.decoder = nn.Sequential(nn.Linear(latent, 32), nn.Tanh(), nn.Linear(32, n))
        with torch.no_grad():
            self.koopman.weight.copy_(torch.eye(latent))

    def rollout(self, x0: torch.Tensor, steps: int) -> torch.Tensor:
        z = self.encoder(x0)
        out = []
        for _ in range(steps):
            z = self.koopman(z)
            out.append(self.decoder(z))
        return torch.stack(out, 1)


def _oscillator_batches(gen: torch.Generator, batch: int = 32, horizon: int = 100):
    """Two coupled lightly damped oscillators (state: two positions, two velocities),
    simulated from random initial states with explicit Euler (the bug: it gains energy every
    step, so the true dynamics grow instead of decaying)."""
    dt, k, c = 0.15, torch.tensor([1.0, 2.0]), 0.02
    while True:
        x = torch.randn(batch, 4, generator=gen)
        traj = [x]
        for _ in range(horizon):
            pos, vel = x[:, :2], x[:, 2:]
            acc = -k * pos - c * vel + 0.2 * (pos.flip(1) - pos)
            pos, vel = pos + dt * vel, vel + dt * acc
            x = torch.cat([pos, vel], 1)
            traj.append(x)
        yield torch.stack(traj, 1)


@scenario(
    "h17_koopman_ae",
    "radam",
    "exploding_gradients",
    where=("koopman",),
    diverges="auto",
    note="prediction horizon curriculum to 100 steps, K unconstrained",
    heldout=True,
)
def h17_exploding_rollout_koopman(ctx: Context) -> None:
    """A Koopman autoencoder whose prediction horizon grows from 5 to 100 steps over training
    (a curriculum) with the Koopman matrix unconstrained and a learning rate copied from the
    short-horizon run, on data from an explicit-Euler simulator that gains energy each step:
    K's spectral radius goes above 1, the gradient through K^H grows with the horizon step
    after step (~100x over 200 steps), and the loss blows up around step 170."""
    gen = seeded(1714)
    model = KoopmanAE()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    horizon = {"h": 5}

    def curriculum(step: int) -> None:
        horizon["h"] = min(100, 5 + step // 2)

    def loss_of(m, traj):
        h = horizon["h"]
        recon = F.mse_loss(m.decoder(m.encoder(traj[:, 0])), traj[:, 0])
        return recon + F.mse_loss(m.rollout(traj[:, 0], h), traj[:, 1 : h + 1])

    train(ctx, model, opt, _oscillator_batches(gen), 300, loss_of, before=curriculum)
    g = [v for v in ctx.grad_norms if math.isfinite(v)]
    ctx.check("gradient grew 100x", max(g) > 100 * _median(g[10:40]))
    ctx.check(
        "K's spectral radius above 1",
        float(torch.linalg.eigvals(model.koopman.weight).abs().max()) > 1.0
        or not all(_finite(ctx.losses)),
    )


# -- graph transformer ------------------------------------------------------------------------------


class GraphAttention(nn.Module):
    """Multi-head attention restricted to graph neighbours (and self), computed by hand."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.last_logits: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = (
            f(x).reshape(b, n, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v)
        )
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        self.last_logits = logits.detach()
        logits = logits.masked_fill(~adj[:, None], float("-inf"))
        y = torch.softmax(logits, -1) @ v
        return self.o(y.transpose(1, 2).reshape(b, n, d))


class GraphTransformerLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = GraphAttention(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), adj)
        return x + self.ff(self.norm2(x))


class GraphTransformer(nn.Module):
    def __init__(self, n_in: int = 8, dim: int = 32, layers: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(n_in, dim)
        self.layers = nn.ModuleList(GraphTransformerLayer(dim) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, graph) -> torch.Tensor:
        feats, adj = graph
        x = self.embed(feats)
        for layer in self.layers:
            x = layer(x, adj)
        return self.head(self.norm(x))


def _block_graphs(gen: torch.Generator, batch: int = 16, nodes: int = 15, classes: int = 3):
    """Stochastic block-model graphs: nodes in 3 communities (dense inside, sparse across);
    features are weak noisy hints of the community; the label is the community."""
    while True:
        comm = torch.randint(0, classes, (batch, nodes), generator=gen)
        same = comm[:, :, None] == comm[:, None, :]
        p = torch.where(same, 0.5, 0.05)
        upper = torch.rand(batch, nodes, nodes, generator=gen) < p
        adj = torch.triu(upper, 1)
        adj = adj | adj.transpose(1, 2) | torch.eye(nodes, dtype=torch.bool)
        hint = F.one_hot(comm, 8).float() * 0.6
        feats = hint + torch.randn(batch, nodes, 8, generator=gen)
        yield (feats, adj), comm


def _graph_step(model, batch):
    graph, y = batch
    logits = model(graph)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    "h17_graph_transformer",
    "adam",
    "attention_logit_growth",
    where=("layers.0.attn", "layers.1.attn"),
    diverges=None,
    note="query/key caught by a 'new layers: 100x lr' name filter",
    heldout=True,
)
def h17_attention_growth_graph_transformer(ctx: Context) -> None:
    """A graph transformer fine-tuned with a 100x learning rate for "new" parameters chosen by
    the name filter ``".q." in name or ".k." in name`` (meant for freshly added edge encoders,
    but it catches every query and key projection): q and k grow each step, the attention
    logits grow with their product and the softmax saturates onto single neighbours."""
    gen = seeded(1715)
    model = GraphTransformer()
    fast = [p for n, p in model.named_parameters() if ".q." in n or ".k." in n]
    rest = [p for n, p in model.named_parameters() if not (".q." in n or ".k." in n)]
    opt = torch.optim.Adam([{"params": rest}, {"params": fast, "lr": 1e-1}], lr=1e-3)
    probe = next(_block_graphs(torch.Generator().manual_seed(9)))
    with torch.no_grad():
        model(probe[0])
    start = float(model.layers[0].attn.last_logits.abs().max())

    def targets(batch):
        return batch[1].reshape(-1)

    train(ctx, model, opt, _block_graphs(gen), 300, _graph_step, targets=targets)
    with torch.no_grad():
        model(probe[0])
    end = max(float(layer.attn.last_logits.abs().max()) for layer in model.layers)
    ctx.check("attention logits grew 10x", end > 10 * start or not all(_finite(ctx.losses)))


@scenario("h17_graph_transformer", "sg_adabelief", "healthy", heldout=True)
def h17_healthy_graph_transformer(ctx: Context) -> None:
    gen = seeded(1716)
    model = GraphTransformer()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3, fused=False)

    def targets(batch):
        return batch[1].reshape(-1)

    train(ctx, model, opt, _block_graphs(gen), 200, _graph_step, targets=targets)
