"""Held-out scenarios, set 48 (``h48_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face ImageGPT (pixel LM on quantised digits), Switch Transformers (MoE
encoder-decoder on a generated reversal task), LASR CTC speech encoder (behind a hand-written
log-power front end, on generated tone "words"), Audio Spectrogram Transformer (generated tones)
and FlexOlmo (MoE causal LM) from configs; a Glow-style flow (actnorm, invertible linear "1x1",
affine coupling; fp16 autocast), MADE autoregressive density on binarised digits, a noise-
conditional score model trained by denoising score matching and sampled by annealed Langevin
dynamics, a SAC-style actor with twin critics on a generated continuous bandit, a Hamiltonian
neural network on a generated pendulum, a DeepONet on a generated antiderivative operator (one
control under fp16 autocast) and a SchNet-style continuous-filter network on generated molecules.

Optimizers: AdamW, Adam, NAdam, RAdam, Adamax, RMSprop, Adadelta, SGD (plain and Nesterov), ASGD,
and steadygrad.optim's Lion, AdaBelief, AdEMAMix, Grams and SPAM (15 in all).
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
    digits,
    grad_norm,
    scenario,
    seeded,
    text_batches,
)


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _loop(ctx: Context, model: nn.Module, opt, steps: int, step_fn, *, clip=None, scaler=None):
    """A training loop for the scenarios whose loss is not ``loss_fn(model(x), y)``:
    ``step_fn(step)`` returns (the loss to log, the loss to backpropagate)."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        logged, total = step_fn(step)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)


# -- Hugging Face ImageGPT: a pixel language model on quantised digits ---------------------------


def _igpt(scale_attn: bool):
    from transformers import ImageGPTConfig, ImageGPTForCausalImageModeling

    config = ImageGPTConfig(
        vocab_size=17,  # 16 intensity levels + the start-of-image token
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        scale_attn_weights=scale_attn,
    )
    return ImageGPTForCausalImageModeling(config)


def _pixel_batches(gen: torch.Generator, batch: int = 32):
    x, _ = digits()
    levels = (x * 15).round().long().clamp(0, 15)
    sos = torch.full((len(levels), 1), 16, dtype=torch.long)
    inputs = torch.cat([sos, levels[:, :-1]], 1)
    while True:
        idx = torch.randint(0, len(levels), (batch,), generator=gen)
        yield inputs[idx], levels[idx]


def _attn_logit_max(model, layer: int, ids: torch.Tensor) -> tuple[float, float]:
    """The largest |q.k| the layer's softmax sees (scaled by 1/sqrt(d) only if the config does),
    and the mean over rows of the largest attention weight (1.0: every row one-hot)."""
    attn = model.transformer.h[layer].attn
    got = {}
    hook = attn.c_attn.register_forward_hook(lambda m, i, o: got.__setitem__("qkv", o))
    with torch.no_grad():
        model(ids)
    hook.remove()
    d = model.config.n_embd
    q, k, _ = got["qkv"].split(d, dim=-1)
    h = model.config.n_head
    q = q.reshape(*q.shape[:2], h, -1).transpose(1, 2)
    k = k.reshape(*k.shape[:2], h, -1).transpose(1, 2)
    logits = q @ k.transpose(-1, -2)
    if model.config.scale_attn_weights:
        logits = logits / math.sqrt(d // h)
    t = ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    top = logits.masked_fill(~causal, -math.inf).softmax(-1).amax(-1)[..., 8:]
    return float(logits.abs().masked_select(causal).max()), float(top.mean())


def _igpt_run(ctx: Context, model, opt, steps: int, gen, before=None):
    batches = _pixel_batches(gen)
    probe, _ = next(_pixel_batches(torch.Generator().manual_seed(0), 64))
    maxes = []

    def step_fn(step: int):
        if before is not None:
            before(step)
        x, y = next(batches)
        logits = model(x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        if step % 20 == 0:
            maxes.append(_attn_logit_max(model, 0, probe))
        return loss, loss

    _loop(ctx, model, opt, steps, step_fn)
    return maxes, probe


@scenario(
    "h48_hf_imagegpt_pixels",
    "adamw",
    "attention_logit_growth",
    where=("transformer.h.0.attn",),
    diverges=None,
    note="scale_attn_weights=False (no 1/sqrt(d)) at a high learning rate; saturates, no break",
    heldout=True,
)
def h48_igpt_unscaled_attention_adamw(ctx: Context) -> None:
    """The config was copied from a script that folded the 1/sqrt(d) into the query projection
    and so set ``scale_attn_weights=False``; here nothing folds it in. With AdamW at 2e-2 the raw
    q.k products of the first layer grow without bound (about 80 at step 20, several hundred by
    the end) and its softmax saturates: the rows attend to one pixel each. The pixels are
    predictable enough from that one that the loss only stalls above the control's; it never
    breaks."""
    gen = seeded(4801)
    model = _igpt(scale_attn=False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-2, weight_decay=0.0)
    maxes, _ = _igpt_run(ctx, model, opt, 300, gen)
    ctx.check("layer-0 attention logits grew 5x after step 20", maxes[-1][0] > 5 * maxes[1][0])
    ctx.check("layer-0 attention rows saturated (mean top weight > 0.9)", maxes[-1][1] > 0.9)


@scenario("h48_hf_imagegpt_pixels", "sg_ademamix", "healthy", heldout=True)
def h48_igpt_healthy_ademamix(ctx: Context) -> None:
    gen = seeded(4802)
    model = _igpt(scale_attn=True)
    opt = sgo.AdEMAMix(model.parameters(), lr=1e-3, fused=False)
    _igpt_run(ctx, model, opt, 300, gen)
    L = ctx.losses
    ctx.check("loss fell", sum(L[-20:]) / 20 < 0.8 * sum(L[:20]) / 20)
    ctx.check("finite throughout", all(_finite(v) for v in L))


# -- Hugging Face Switch Transformers: an MoE encoder-decoder on a generated reversal task -------


def _switch():
    from transformers import SwitchTransformersConfig, SwitchTransformersForConditionalGeneration

    config = SwitchTransformersConfig(
        vocab_size=64,
        d_model=32,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        num_experts=4,
        expert_capacity=64,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
    )
    return SwitchTransformersForConditionalGeneration(config)


def _reversal_batches(gen: torch.Generator, batch: int = 32, length: int = 10):
    while True:
        src = torch.randint(2, 64, (batch, length), generator=gen)
        yield src, src.flip(1)


@scenario(
    "h48_hf_switch_moe_reversal",
    "nadam",
    "output_logit_divergence",
    where=("lm_head",),
    diverges="auto",
    note="z-loss added with the wrong sign: log Z is rewarded instead of penalised",
    heldout=True,
)
def h48_switch_zloss_wrong_sign_nadam(ctx: Context) -> None:
    """A hand-written z-loss (PaLM's 1e-4 * log^2 Z on the output logits, to keep the softmax
    normaliser near 0, here with a coefficient of 1.5e-2) was subtracted instead of added:
    ``loss = ce - 1.5e-2 * lse**2``. It pays the head to inflate log Z; the reward grows with log
    Z itself, so the drift compounds (log Z about 8 at step 60, 20 by step 240), the logits run
    away and the cross-entropy, logged on its own, breaks near step 300."""
    gen = seeded(4803)
    model = _switch()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _reversal_batches(gen)
    probe_src, probe_tgt = next(_reversal_batches(torch.Generator().manual_seed(1), 64))
    lse = []

    def step_fn(step: int):
        src, tgt = next(batches)
        logits = model(input_ids=src, labels=tgt).logits
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))
        z = torch.logsumexp(logits.float(), -1)
        if step % 10 == 0:
            lse.append(float(z.detach().abs().mean()))
        return ce, ce - 1.5e-2 * z.pow(2).mean()

    _loop(ctx, model, opt, 400, step_fn)
    ctx.check("mean |log Z| grew 8x above its lowest", lse[-1] > 8 * min(lse))
    L = ctx.losses
    best = min(L[:200])
    ctx.check("cross-entropy later rose 2x above its best", max(L[200:]) > 2 * best)


# -- Hugging Face LASR (CTC speech encoder) behind a hand-written log-power front end ------------


class LogPowerFrontEnd(nn.Module):
    """log of a power spectrogram, then per-utterance mean/variance normalisation."""

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        logp = torch.log(power)  # no floor: a clip of digital silence gives log(0) = -inf
        mean = logp.mean((1, 2), keepdim=True)
        std = logp.std((1, 2), keepdim=True)
        return (logp - mean) / (std + 1e-5)


class SpeechCTC(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import LasrCTCConfig, LasrEncoderConfig, LasrForCTC

        enc = LasrEncoderConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            conv_kernel_size=5,
            subsampling_conv_channels=32,
            num_mel_bins=16,
            subsampling_conv_kernel_size=3,
            subsampling_conv_stride=2,
            dropout=0.0,
            layerdrop=0.0,
            activation_dropout=0.0,
            attention_dropout=0.0,
        )
        self.frontend = LogPowerFrontEnd()
        self.asr = LasrForCTC(LasrCTCConfig(vocab_size=9, encoder_config=enc.to_dict()))

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return self.asr(input_features=self.frontend(power)).logits


def _tone_words(gen: torch.Generator, batch: int = 16, tokens: int = 4, frames: int = 12):
    """Power spectrograms of generated "words": each token 1..8 lights two of 16 mel bins for
    ``frames`` frames; labels are the token sequences (0 is the CTC blank)."""
    while True:
        labels = torch.randint(1, 9, (batch, tokens), generator=gen)
        band = F.one_hot(labels - 1, 8).repeat_interleave(2, -1).float()  # (B, tokens, 16)
        pattern = band.repeat_interleave(frames, 1)  # (B, tokens * frames, 16)
        noise = 0.3 * torch.randn(pattern.shape, generator=gen)
        yield torch.exp(2.0 * pattern + noise), labels


def _ctc(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logp = logits.float().log_softmax(-1).transpose(0, 1)
    b, t = logits.shape[0], logits.shape[1]
    return F.ctc_loss(
        logp,
        labels,
        torch.full((b,), t, dtype=torch.long),
        torch.full((b,), labels.shape[1], dtype=torch.long),
        blank=0,
        zero_infinity=True,
    )


@scenario(
    "h48_hf_lasr_ctc_tones",
    "radam",
    "nonfinite",
    where=("frontend",),
    diverges=150,
    onset=150,
    note="a clip of digital silence: log(0) in the front end",
    heldout=True,
)
def h48_lasr_silent_clip_log0_radam(ctx: Context) -> None:
    """At step 150 the batch holds one clip of digital silence (a dropped microphone: every power
    value exactly 0). The front end takes ``log(power)`` with no floor: -inf, and the per-utterance
    normalisation turns it into NaN (-inf minus -inf). The NaN reaches the encoder, the CTC loss
    and, through the update, every weight."""
    gen = seeded(4804)
    model = SpeechCTC()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    batches = _tone_words(gen)
    seen = {}

    def step_fn(step: int):
        power, labels = next(batches)
        if step == 150:
            power = power.clone()
            power[3] = 0.0
            feats = model.frontend(power)
            seen["in_finite"] = bool(torch.isfinite(power).all())
            seen["out_finite"] = bool(torch.isfinite(feats).all())
        loss = _ctc(model(power), labels)
        return loss, loss

    _loop(ctx, model, opt, 165, step_fn)
    L = ctx.losses
    ctx.check(
        "finite until 150, NaN at 150", all(_finite(v) for v in L[:150]) and not _finite(L[150])
    )
    ctx.check(
        "front end's input finite, its output not", seen["in_finite"] and not seen["out_finite"]
    )
    ctx.check("CTC loss had fallen before the fault", sum(L[130:150]) < 0.7 * sum(L[:20]))


# -- Hugging Face Audio Spectrogram Transformer on generated tones -------------------------------


def _ast(labels: int = 5):
    from transformers import ASTConfig, ASTForAudioClassification

    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=4,
        frequency_stride=4,
        time_stride=4,
        max_length=32,
        num_mel_bins=16,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ASTForAudioClassification(config)


def _tone_clips(gen: torch.Generator, batch: int = 32, classes: int = 5):
    """Normalised log-mel-like clips (32 frames x 16 bins): class k is a tone in bins 3k..3k+2,
    pulsing in time, under noise."""
    t = torch.arange(32).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        band = torch.zeros(batch, 16)
        for j in range(3):
            band[torch.arange(batch), 3 * y + j] = 1.0
        pulse = 0.5 + 0.5 * torch.sin(t / 3.0 + torch.rand(batch, 1, generator=gen) * 6.0)
        x = band[:, None, :] * pulse[:, :, None] + 0.5 * torch.randn(batch, 32, 16, generator=gen)
        yield x, y


@scenario(
    "h48_hf_ast_tones",
    "adam",
    "softmax_collapse",
    where=("classifier",),
    diverges=None,
    note="a temperature annealed with no floor: logits / T with T -> 0",
    heldout=True,
)
def h48_ast_temperature_no_floor_adam(ctx: Context) -> None:
    """The logits are divided by a temperature annealed from 2 towards 1 over the first steps,
    ``T = 2 * 0.97**step``, but the ``max(1.0, ...)`` floor was left out: T keeps shrinking (0.1
    by step 100, 0.005 by step 200) and the logits the softmax sees grow as 1/T. The tone task is
    easy, so the rows saturate to exactly one-hot in float32: their loss and gradient are 0."""
    gen = seeded(4805)
    model = _ast()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _tone_clips(gen)
    probe_x, probe_y = next(_tone_clips(torch.Generator().manual_seed(2), 256))
    collapsed = []

    def step_fn(step: int):
        x, y = next(batches)
        ctx.targets(y)
        temperature = 2.0 * 0.97**step
        logits = model(x).logits / temperature
        if step % 20 == 0:
            with torch.no_grad():
                collapsed.append(collapsed_fraction(model(probe_x).logits / temperature, probe_y))
        loss = F.cross_entropy(logits, y)
        return loss, loss

    _loop(ctx, model, opt, 240, step_fn)
    ctx.check("no row collapsed at the start", collapsed[0] == 0.0)
    ctx.check("over half the rows one-hot by the end", collapsed[-1] > 0.5)


# -- Hugging Face FlexOlmo: a small MoE causal LM on text bytes ----------------------------------


def _flex_olmo():
    from transformers import FlexOlmoConfig, FlexOlmoForCausalLM

    config = FlexOlmoConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_experts=2,
        num_experts_per_tok=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return FlexOlmoForCausalLM(config)


@scenario(
    "h48_hf_flex_olmo_lm",
    "sg_lion",
    "update_ratio_out_of_range",
    where=("model.embed_tokens",),
    diverges=None,
    note="the embedding table falls through both weight-decay groups: never updated",
    heldout=True,
)
def h48_flex_olmo_embeddings_left_out_lion(ctx: Context) -> None:
    """The weight-decay groups are built by filters: matrices that are not embeddings decay,
    vectors do not. The embedding table is a matrix *and* an embedding, so it lands in neither
    group and is never handed to the optimizer: its update is exactly zero for the whole run,
    while the rest of the model trains (on random, frozen token vectors)."""
    gen = seeded(4806)
    model = _flex_olmo()
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if p.ndim < 2]
    opt = sgo.Lion(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4,
        fused=False,
    )
    before = model.model.embed_tokens.weight.detach().clone()
    batches = text_batches(gen, batch=16, length=32)

    def step_fn(step: int):
        x, y = next(batches)
        logits = model(x).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return loss, loss

    _loop(ctx, model, opt, 250, step_fn)
    L = ctx.losses
    ctx.check("embed_tokens unchanged", torch.equal(before, model.model.embed_tokens.weight))
    ctx.check("the rest trained: loss fell 25%", sum(L[-20:]) < 0.75 * sum(L[:20]))


# -- Glow-style flow on digits (actnorm, invertible linear, affine coupling), fp16 autocast -------


class ActNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(dim))
        self.logs = nn.Parameter(torch.zeros(dim))
        self.ready = False

    def forward(self, x: torch.Tensor):
        if not self.ready:  # data-dependent initialisation on the first batch
            with torch.no_grad():
                self.loc.copy_(-x.float().mean(0))
                self.logs.copy_(-torch.log(x.float().std(0) + 1.0))
            self.ready = True
        return (x + self.loc) * torch.exp(self.logs), self.logs.sum().expand(x.shape[0])


class InvLinear(nn.Module):
    """Glow's invertible 1x1 convolution, for flat vectors: a learnt square matrix, started as a
    random permutation (a rotation, as Glow's initialisation asks)."""

    def __init__(self, dim: int, gen: torch.Generator) -> None:
        super().__init__()
        perm = torch.randperm(dim, generator=gen)
        self.weight = nn.Parameter(torch.eye(dim)[perm])

    def forward(self, x: torch.Tensor):
        logdet = torch.linalg.slogdet(self.weight.float())[1]
        return F.linear(x, self.weight), logdet.expand(x.shape[0])


class AffineCoupling(nn.Module):
    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.half = dim // 2
        self.net = nn.Sequential(
            nn.Linear(self.half, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 2 * (dim - self.half)),
        )
        nn.init.zeros_(self.net[4].weight)
        nn.init.zeros_(self.net[4].bias)

    def forward(self, x: torch.Tensor):
        xa, xb = x[:, : self.half], x[:, self.half :]
        log_s, t = self.net(xa).chunk(2, -1)
        # unbounded scale (Glow's reference code squashes it with a sigmoid)
        yb = xb * torch.exp(log_s) + t
        return torch.cat([xa, yb], -1), log_s.float().sum(-1)


class FlowStep(nn.Module):
    def __init__(self, dim: int, gen: torch.Generator) -> None:
        super().__init__()
        self.actnorm = ActNorm(dim)
        self.invconv = InvLinear(dim, gen)
        self.coupling = AffineCoupling(dim)

    def forward(self, x: torch.Tensor):
        total = 0.0
        for layer in (self.actnorm, self.invconv, self.coupling):
            x, ld = layer(x)
            total = total + ld
        return x, total


class Glow(nn.Module):
    def __init__(self, dim: int = 64, steps: int = 3, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.flows = nn.ModuleList(FlowStep(dim, gen) for _ in range(steps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per dimension, one value per sample."""
        logdet = 0.0
        for f in self.flows:
            x, ld = f(x)
            logdet = logdet + ld
        x = x.float()
        logpz = -0.5 * (x.pow(2) + math.log(2 * math.pi)).sum(-1)
        return -(logpz + logdet) / x.shape[-1]


def _digit_vectors(gen: torch.Generator, batch: int = 64, dequantise: bool = True):
    x, _ = digits()
    while True:
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        v = x[idx]
        if dequantise:  # uniform noise over each 1/16 intensity bin
            v = v + torch.rand(v.shape, generator=gen) / 16.0
        yield v


@scenario(
    "h48_glow_actnorm_flow_digits",
    "adamax",
    "amp_overflow",
    where=("flows.2.coupling",),
    diverges=156,
    note="no dequantisation: the density is unbounded, the coupling's exp(log_s) outgrows fp16",
    heldout=True,
)
def h48_glow_no_dequant_fp16_adamax(ctx: Context) -> None:
    """The data loader feeds the 8x8 digits without dequantisation noise: the border pixels are
    exactly 0 in every image, so the likelihood is unbounded (squeezing a constant direction to a
    point pays without limit). The coupling's log-scale, unbounded (no sigmoid or tanh), climbs
    step after step (fastest in the last step's coupling), and under fp16 autocast its
    ``exp(log_s)`` passes 65504 (log_s > 11.1) at step 156: inf, then NaN (0 * inf) out of
    ``flows.2.coupling``. The GradScaler skips those steps and cuts its scale towards zero; the
    weights no longer move, and most batches from then on overflow again."""
    gen = seeded(4807)
    model = Glow(seed=4807)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    batches = _digit_vectors(gen, dequantise=False)
    first_bad = {}
    hooks = []
    for name, m in model.named_modules():
        if name.endswith(("actnorm", "invconv", "coupling")):

            def hook(m, i, o, name=name):
                if name not in first_bad and not torch.isfinite(o[0]).all():
                    first_bad[name] = len(ctx.losses)

            hooks.append(m.register_forward_hook(hook))

    def step_fn(step: int):
        x = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            nll = model(x)
        loss = nll.float().mean()
        return loss, loss

    _loop(ctx, model, opt, 200, step_fn, scaler=scaler)
    for h in hooks:
        h.remove()
    L = ctx.losses
    bad = [i for i, v in enumerate(L) if not _finite(v)]
    ctx.check("the loss went non-finite", bool(bad))
    first = min(first_bad.values()) if first_bad else -1
    culprits = sorted(n for n, s in first_bad.items() if s == first)
    ctx.check("a coupling is the first module out of range", culprits == ["flows.2.coupling"])
    ctx.check("finite for 100 steps first", bool(bad) and bad[0] >= 100)
    ctx.check("the GradScaler cut its scale after the overflow", ctx.scales[-1] < ctx.scales[0])


# -- MADE: masked autoencoder for distribution estimation on binarised digits --------------------


class MaskedLinear(nn.Linear):
    def __init__(self, n_in: int, n_out: int, mask: torch.Tensor) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    def __init__(self, dim: int = 64, hidden: int = 256, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        order = torch.arange(1, dim + 1)
        m1 = torch.randint(1, dim, (hidden,), generator=gen)
        m2 = torch.randint(int(m1.min()), dim, (hidden,), generator=gen)
        self.net = nn.Sequential(
            MaskedLinear(dim, hidden, m1[:, None] >= order[None, :]),
            nn.ReLU(),
            MaskedLinear(hidden, hidden, m2[:, None] >= m1[None, :]),
            nn.ReLU(),
            MaskedLinear(hidden, dim, order[:, None] > m2[None, :]),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _binary_digits(gen: torch.Generator, batch: int = 64):
    x, _ = digits()
    xb = (x > 0.5).float()
    while True:
        yield xb[torch.randint(0, len(xb), (batch,), generator=gen)]


@scenario(
    "h48_made_binary_digits",
    "rmsprop",
    "loss_of_plasticity",
    where=("net.0", "net.1", "net.2", "net.3"),
    diverges=None,
    onset=120,
    note="a warm restart's peak typed 1e-1 for 1e-3: the hidden ReLUs die",
    heldout=True,
)
def h48_made_restart_lr_typo_rmsprop(ctx: Context) -> None:
    """A warm restart at step 120 was meant to bring the RMSprop learning rate back to 1e-3; the
    schedule's peak was typed ``1e-1``. For the five steps at the peak the updates are a hundred
    times too big; the first hidden layer's pre-activations are pushed negative for every input
    and its ReLUs (``net.1``) stop firing, and the second layer (``net.3``), left with no input,
    dies with it. Dead units get no gradient to come back: the model is left with its output
    biases (the pixel marginals) and little else, and its loss stays above where it was
    before the restart."""
    gen = seeded(4808)
    model = MADE(seed=4808)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _binary_digits(gen)
    probe = next(_binary_digits(torch.Generator().manual_seed(3), 512))

    def dead() -> tuple[float, float]:
        with torch.no_grad():
            h1 = model.net[1](model.net[0](probe))
            h2 = model.net[3](model.net[2](h1))
        return dead_fraction(h1), dead_fraction(h2)

    dead_before = {}

    def step_fn(step: int):
        if step == 120:
            dead_before["v"] = dead()
        opt.param_groups[0]["lr"] = 1e-1 if 120 <= step < 125 else 1e-3
        x = next(batches)
        loss = F.binary_cross_entropy_with_logits(model(x), x, reduction="none").sum(1).mean()
        return loss, loss

    _loop(ctx, model, opt, 300, step_fn)
    L = ctx.losses
    end = dead()
    ctx.check("under 10% of net.1 dead before the restart", dead_before["v"][0] < 0.1)
    ctx.check("over 90% of net.1 and net.3 dead at the end", min(end) > 0.9)
    ctx.check("loss never came back to its level before", min(L[130:]) > max(L[100:120]))


# -- Hamiltonian neural network on a generated pendulum ------------------------------------------


class HNN(nn.Module):
    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.h = nn.Sequential(
            nn.Linear(2, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, qp: torch.Tensor) -> torch.Tensor:
        """The symplectic gradient (dH/dp, -dH/dq): the predicted time derivative of (q, p)."""
        qp = qp.requires_grad_(True)
        dh = torch.autograd.grad(self.h(qp).sum(), qp, create_graph=True)[0]
        return torch.stack([dh[:, 1], -dh[:, 0]], -1)


def _pendulum(gen: torch.Generator, batch: int = 128):
    """States (q, p) and their true derivatives for H = p^2 / 2 + (1 - cos q)."""
    while True:
        q = (torch.rand(batch, generator=gen) * 2 - 1) * math.pi
        p = (torch.rand(batch, generator=gen) * 2 - 1) * 2.0
        dq, dp = p, -torch.sin(q)
        noise = 0.01 * torch.randn(batch, 2, generator=gen)
        yield torch.stack([q, p], -1), torch.stack([dq, dp], -1) + noise


def _hnn_run(ctx: Context, model, opt, steps: int, gen, lr_at=None):
    batches = _pendulum(gen)

    def step_fn(step: int):
        if lr_at is not None:
            opt.param_groups[0]["lr"] = lr_at(step)
        x, dxdt = next(batches)
        loss = F.mse_loss(model(x), dxdt)
        return loss, loss

    _loop(ctx, model, opt, steps, step_fn)


@scenario(
    "h48_hnn_pendulum",
    "nesterov",
    "sharpness_above_limit",
    diverges="auto",
    note="linear warm-up with no cap: the rate keeps rising past 2/curvature",
    heldout=True,
)
def h48_hnn_warmup_no_cap_nesterov(ctx: Context) -> None:
    """The warm-up is written ``lr = base * step / warmup`` and the ``min(1, ...)`` was left out:
    after step 40 the rate keeps rising linearly (about 10x the base by step 400). The loss falls
    100x while the rate is below the stability limit; then the iterates start to oscillate along
    the sharpest direction, the run blows up, and the saturated network is left where it
    started."""
    gen = seeded(4809)
    model = HNN()
    base, warmup = 0.1, 40
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, nesterov=True)
    _hnn_run(ctx, model, opt, 450, gen, lr_at=lambda s: base * (s + 1) / warmup)
    L = [v if _finite(v) else math.inf for v in ctx.losses]
    best = min(range(len(L)), key=lambda i: L[i])
    broke = [i for i in range(best, len(L) - 5) if sorted(L[i : i + 5])[2] > 100 * L[best]]
    ctx.check("loss fell 100x first", L[best] < 0.01 * L[0])
    ctx.check("then stayed 100x above its best", bool(broke))
    ctx.check("the rate at the break was 5x the base", bool(broke) and broke[0] + 1 > 5 * warmup)
    ctx.check("all it had learnt lost (loss back near the start)", sorted(L[-20:])[10] > 0.5 * L[0])


@scenario("h48_hnn_pendulum", "adadelta", "healthy", heldout=True)
def h48_hnn_healthy_adadelta(ctx: Context) -> None:
    gen = seeded(4810)
    model = HNN()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    _hnn_run(ctx, model, opt, 400, gen)
    L = ctx.losses
    ctx.check("loss fell 5x", sum(L[-20:]) < 0.2 * sum(L[:20]))
    ctx.check("finite throughout", all(_finite(v) for v in L))


# -- SchNet-style continuous-filter convolutions on generated molecules --------------------------


def _ssp(x: torch.Tensor) -> torch.Tensor:
    return F.softplus(x) - math.log(2.0)


class Interaction(nn.Module):
    def __init__(self, dim: int, rbf: int) -> None:
        super().__init__()
        self.filter1 = nn.Linear(rbf, dim)
        self.filter2 = nn.Linear(dim, dim)
        self.in2f = nn.Linear(dim, dim, bias=False)
        self.f2out = nn.Linear(dim, dim)
        self.dense = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor, e: torch.Tensor, cut: torch.Tensor) -> torch.Tensor:
        w = self.filter2(_ssp(self.filter1(e))) * cut[..., None]  # (B, N, N, dim)
        v = (self.in2f(h)[:, None, :, :] * w).sum(2)
        return h + self.dense(_ssp(self.f2out(v)))


class SchNet(nn.Module):
    def __init__(self, dim: int = 32, rbf: int = 16, blocks: int = 2, cutoff: float = 4.0):
        super().__init__()
        self.embed = nn.Embedding(3, dim)
        self.register_buffer("centers", torch.linspace(0.0, cutoff, rbf))
        self.cutoff = cutoff
        self.interactions = nn.ModuleList(Interaction(dim, rbf) for _ in range(blocks))
        self.out1 = nn.Linear(dim, dim // 2)
        self.out2 = nn.Linear(dim // 2, 1)

    def forward(self, batch) -> torch.Tensor:
        z, pos = batch
        r = torch.cdist(pos, pos)
        e = torch.exp(-10.0 * (r[..., None] - self.centers) ** 2)
        eye = torch.eye(z.shape[1], dtype=torch.bool)
        cut = 0.5 * (torch.cos(r * math.pi / self.cutoff) + 1) * (r < self.cutoff) * ~eye
        h = self.embed(z)
        for block in self.interactions:
            h = block(h, e, cut)
        return self.out2(_ssp(self.out1(h))).sum((1, 2))


def _molecules(gen: torch.Generator, batch: int = 32, atoms: int = 8):
    """Random 8-atom clusters of three atom types; the energy is a Morse-like pair sum."""
    depth = torch.tensor([1.0, 1.5, 0.7])
    while True:
        z = torch.randint(0, 3, (batch, atoms), generator=gen)
        pos = torch.randn(batch, atoms, 3, generator=gen) * 1.2
        r = torch.cdist(pos, pos) + torch.eye(atoms) * 1e3
        d = (depth[z][:, :, None] * depth[z][:, None, :]).sqrt()
        pair = d * ((1 - torch.exp(-1.5 * (r - 1.2))) ** 2 - 1)
        energy = 0.5 * pair.clamp(max=5.0).sum((1, 2))
        yield (z, pos), energy


def _schnet_run(ctx: Context, model, opt, steps: int, gen, alter=None, clip=None):
    batches = _molecules(gen)

    def step_fn(step: int):
        x, energy = next(batches)
        if alter is not None:
            energy = alter(step, energy)
        loss = F.mse_loss(model(x), energy)
        return loss, loss

    _loop(ctx, model, opt, steps, step_fn, clip=clip)


@scenario(
    "h48_schnet_molecules",
    "asgd",
    "data_outlier",
    diverges=160,
    onset=160,
    note="one molecule's energy in meV among eV labels",
    heldout=True,
)
def h48_schnet_mev_label_asgd(ctx: Context) -> None:
    """One molecule of the batch at step 160 came from a second DFT pipeline that writes energies
    in meV: its label is 1000x the others'. The batch loss jumps by orders of magnitude; the
    gradient clipping the script already has (norm 10) bounds the step it causes, and the model,
    unharmed, is back to its level within a few dozen steps."""
    gen = seeded(4811)
    model = SchNet()
    opt = torch.optim.ASGD(model.parameters(), lr=5e-3)

    def alter(step: int, energy: torch.Tensor) -> torch.Tensor:
        if step == 160:
            energy = energy.clone()
            energy[7] = energy[7] * 1000.0
        return energy

    _schnet_run(ctx, model, opt, 260, gen, alter=alter, clip=10.0)
    L = ctx.losses
    before = sorted(L[140:160])[10]
    ctx.check("loss at 160 over 100x the steps before", L[160] > 100 * before)
    ctx.check("back within 1.5x by 200-260", sorted(L[200:260])[30] < 1.5 * before)
    ctx.check("loss had fallen 5x before", before < 0.2 * L[0])


# -- SAC-style actor with twin critics on a generated continuous bandit --------------------------


class SACAgent(nn.Module):
    def __init__(self, obs: int = 4, act: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.actor = nn.Sequential(
            nn.Linear(obs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.mu = nn.Linear(hidden, act)
        self.log_std = nn.Linear(hidden, act)

        def critic() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(obs + act, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, 1),
            )

        self.q1 = critic()
        self.q2 = critic()

    def act(self, s: torch.Tensor, gen: torch.Generator):
        h = self.actor(s)
        mu, log_std = self.mu(h), self.log_std(h).clamp(-5, 2)
        eps = torch.randn(mu.shape, generator=gen)
        u = mu + log_std.exp() * eps
        a = torch.tanh(u)
        logp = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = logp - torch.log(1 - a.pow(2) + 1e-6).sum(-1)
        return a, logp


@scenario(
    "h48_sac_twin_critic_bandit",
    "adam",
    "adam_second_moment_poisoned",
    where=("q1", "q2"),
    diverges=200,
    onset=200,
    note="one batch of rewards 1e4x too large inflates the critics' Adam second moment",
    heldout=True,
)
def h48_sac_reward_glitch_adam(ctx: Context) -> None:
    """At step 200 one batch's rewards come through 1e4x too large: after an environment reset
    the running reward normaliser divided by its freshly initialised standard deviation (1e-4)
    for one batch. Both critics regress onto it: their gradient that step is thousands of times
    the usual, and Adam's second moment (beta2 = 0.999) keeps the memory of it for a thousand
    steps. The critics' updates stay a small fraction of their size before the glitch long after
    the batch has gone: they stop tracking the improving policy."""
    gen = seeded(4813)
    agent = SACAgent()
    critics = [p for n, p in agent.named_parameters() if n.startswith(("q1.", "q2."))]
    actor = [p for n, p in agent.named_parameters() if not n.startswith(("q1.", "q2."))]
    opt = torch.optim.Adam(
        [{"params": actor, "lr": 3e-4}, {"params": critics, "lr": 1e-3}], betas=(0.9, 0.999)
    )
    target = torch.randn(2, 4, generator=gen)
    alpha = 0.05
    moves: list[list[float]] = []  # per step, per critic tensor
    prev: list[torch.Tensor] = []

    def step_fn(step: int):
        cur = [p.detach().clone() for p in critics]
        if prev:
            moves.append([float((c - q).norm()) for c, q in zip(cur, prev, strict=True)])
        prev[:] = cur
        s = torch.randn(128, 4, generator=gen)
        with torch.no_grad():
            a, _ = agent.act(s, gen)
            r = 1.0 - (a - torch.tanh(s @ target.T)).pow(2).sum(-1)
            if step == 200:
                r = r / 1e-4
        sa = torch.cat([s, a], -1)
        critic_loss = F.mse_loss(agent.q1(sa).squeeze(-1), r) + F.mse_loss(
            agent.q2(sa).squeeze(-1), r
        )
        for p in critics:
            p.requires_grad_(False)
        a_pi, logp = agent.act(s, gen)
        sa_pi = torch.cat([s, a_pi], -1)
        q = torch.min(agent.q1(sa_pi), agent.q2(sa_pi)).squeeze(-1)
        actor_loss = (alpha * logp - q).mean()
        for p in critics:
            p.requires_grad_(True)
        return critic_loss, critic_loss + actor_loss

    _loop(ctx, agent, opt, 400, step_fn)
    L = ctx.losses
    ratios = sorted(
        sum(m[i] for m in moves[250:399]) / 149 / (sum(m[i] for m in moves[150:199]) / 49)
        for i in range(len(critics))
    )
    ctx.check("critic loss at 200 over 1000x the step before", L[200] > 1000 * L[199])
    ctx.check(
        "critic tensors' updates 50-200 steps on: median under a fifth of before",
        ratios[len(ratios) // 2] < 0.2,
    )


# -- DeepONet on a generated antiderivative operator ---------------------------------------------


class DeepONet(nn.Module):
    def __init__(self, sensors: int = 32, width: int = 64, p: int = 32) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Linear(sensors, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, p),
        )
        self.trunk = nn.Sequential(
            nn.Linear(1, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(), nn.Linear(width, p)
        )
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, batch) -> torch.Tensor:
        u, y = batch  # u: (B, sensors) samples of the input function; y: (B, Q, 1) query points
        b = self.branch(u)
        t = self.trunk(y)
        return (b[:, None, :] * t).sum(-1) + self.bias


def _antiderivatives(gen: torch.Generator, batch: int = 32, sensors: int = 32, queries: int = 16):
    """u(x) = a random sum of sines and cosines on [0, 1]; the target is its integral from 0 to y."""
    xs = torch.linspace(0, 1, sensors)
    k = torch.arange(1, 5).float()
    while True:
        a = torch.randn(batch, 4, generator=gen) / k
        c = torch.randn(batch, 4, generator=gen) / k
        w = 2 * math.pi * k
        u = (
            a[:, None, :] * torch.sin(w * xs[:, None]) + c[:, None, :] * torch.cos(w * xs[:, None])
        ).sum(-1)
        y = torch.rand(batch, queries, 1, generator=gen)
        integral = (
            a[:, None, :] * (1 - torch.cos(w * y)) / w + c[:, None, :] * torch.sin(w * y) / w
        ).sum(-1)
        yield (u, y), integral


def _deeponet_run(ctx: Context, model, opt, steps: int, gen, extra=None, amp=False, scaler=None):
    batches = _antiderivatives(gen)

    def step_fn(step: int):
        x, target = next(batches)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            out = model(x)
        loss = F.mse_loss(out.float(), target)
        return loss, loss if extra is None else loss + extra(step)

    _loop(ctx, model, opt, steps, step_fn, scaler=scaler)


@scenario(
    "h48_deeponet_antiderivative",
    "sgd",
    "exploding_gradients",
    where=("branch",),
    diverges="auto",
    onset=100,
    note="an L2 penalty on the branch with the wrong sign: its weights, then gradients, grow",
    heldout=True,
)
def h48_deeponet_negative_decay_branch_sgd(ctx: Context) -> None:
    """From step 100 (when the script switches on its regulariser) an L2 penalty on the branch
    net's weights is added with the wrong sign, ``loss - 0.5 * sum(w**2)``: every SGD step now
    multiplies the branch weights by (1 + lr). The branch output, a product of three growing
    layers, grows; so do the gradients the MSE sends into the branch weights, compounding step
    after step (the loss itself barely moves) until the run blows up."""
    gen = seeded(4814)
    model = DeepONet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    weights = [m.weight for m in model.branch if isinstance(m, nn.Linear)]
    batches = _antiderivatives(gen)
    mse_grads: list[float] = []  # the MSE's part of the branch weights' gradient, each step

    def step_fn(step: int):
        x, target = next(batches)
        loss = F.mse_loss(model(x), target)
        g = torch.autograd.grad(loss, weights, retain_graph=True)
        mse_grads.append(float(torch.stack([v.norm() for v in g]).norm()))
        if step < 100:
            return loss, loss
        return loss, loss - 0.5 * sum(w.pow(2).sum() for w in weights)

    _loop(ctx, model, opt, 300, step_fn)
    L = [v if _finite(v) else math.inf for v in ctx.losses]
    best = min(L[:100])
    broke = next((i for i, v in enumerate(L) if v > 10 * best), None)
    ctx.check("loss fell before the bug", best < 0.7 * L[0])
    ctx.check(
        "the loss blew up past 10x its best after step 150", broke is not None and broke > 150
    )
    pre = sum(mse_grads[80:100]) / 20
    ctx.check(
        "the MSE's gradient on the branch grew 5x before the loss broke",
        broke is not None and max(mse_grads[100:broke]) > 5 * pre,
    )


@scenario(
    "h48_deeponet_antiderivative",
    "sg_grams",
    "healthy",
    note="fp16 autocast, GradScaler",
    heldout=True,
)
def h48_deeponet_healthy_fp16_grams(ctx: Context) -> None:
    gen = seeded(4815)
    model = DeepONet()
    opt = sgo.Grams(model.parameters(), lr=1e-3, fused=False)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    _deeponet_run(ctx, model, opt, 300, gen, amp=True, scaler=scaler)
    L = ctx.losses
    ctx.check("loss fell 3x", sum(L[-20:]) < sum(L[:20]) / 3)
    ctx.check("finite throughout", all(_finite(v) for v in L))


# -- noise-conditional score model on 2-D points, annealed Langevin sampling ---------------------


MODES = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])


class ScoreNet(nn.Module):
    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(3, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The score of the sigma-smoothed density, parametrised as net(x, log sigma) / sigma."""
        return self.net(torch.cat([x, sigma.log()], -1)) / sigma


def _points(gen: torch.Generator, batch: int = 128) -> torch.Tensor:
    idx = torch.randint(0, 4, (batch,), generator=gen)
    return MODES[idx] + 0.1 * torch.randn(batch, 2, generator=gen)


def _dsm_run(ctx: Context, model, opt, steps: int, gen, sigma_min_at, weighted: bool):
    def step_fn(step: int):
        x = _points(gen)
        lo, hi = math.log(sigma_min_at(step)), math.log(1.0)
        sigma = torch.exp(lo + (hi - lo) * torch.rand(len(x), 1, generator=gen))
        eps = torch.randn(x.shape, generator=gen)
        err = (model(x + sigma * eps, sigma) + eps / sigma).pow(2).sum(-1, keepdim=True)
        loss = (err * sigma**2).mean() if weighted else err.mean()
        return loss, loss

    _loop(ctx, model, opt, steps, step_fn)


def _langevin(model, n: int = 256, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=gen) * 1.5
    for sigma in torch.logspace(0, math.log10(0.05), 10):
        step = 0.05 * float(sigma) ** 2
        s = torch.full((n, 1), float(sigma))
        for _ in range(30):
            with torch.no_grad():
                x = x + step * model(x, s) + math.sqrt(2 * step) * torch.randn(n, 2, generator=gen)
    return x


@scenario(
    "h48_score_langevin_points",
    "sg_adabelief",
    "loss_divergence",
    diverges="auto",
    onset=0,
    note="sigma_min annealed every step instead of every epoch, unweighted DSM loss",
    heldout=True,
)
def h48_score_sigma_min_decay_adabelief(ctx: Context) -> None:
    """The noise range's lower end is annealed with ``sigma_min *= 0.985`` meant once per epoch,
    but the call sits in the step loop: sigma_min falls from 0.1 to about 1e-3 over 300 steps.
    The denoising score-matching loss is the unweighted one (no sigma^2 weighting), whose
    irreducible part grows like 1/sigma^2: the loss creeps up, slowly and without bound, while
    the network does what it can. No module misbehaves; the objective drifts away."""
    gen = seeded(4816)
    model = ScoreNet()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3, fused=False)
    _dsm_run(ctx, model, opt, 300, gen, lambda s: 0.1 * 0.985**s, weighted=False)
    L = [v if _finite(v) else math.inf for v in ctx.losses]
    med = [sorted(L[i : i + 20])[10] for i in range(0, 300, 20)]
    ctx.check("smoothed loss at the end 5x its lowest", med[-1] > 5 * min(med))
    ctx.check("and climbing through the second half", med[-1] > med[-4] > med[7])


@scenario("h48_score_langevin_points", "sg_spam", "healthy", heldout=True)
def h48_score_healthy_langevin_spam(ctx: Context) -> None:
    gen = seeded(4817)
    model = ScoreNet()
    opt = sgo.SPAM(model.parameters(), lr=2e-3, warmup_steps=20, fused=False)
    _dsm_run(ctx, model, opt, 400, gen, lambda s: 0.05, weighted=True)
    L = ctx.losses
    ctx.check("loss fell", sum(L[-40:]) < 0.8 * sum(L[:40]))
    samples = _langevin(model)
    dist = torch.cdist(samples, MODES).amin(-1)
    ctx.check(
        "Langevin samples land near the modes (median distance < 0.3)", float(dist.median()) < 0.3
    )
