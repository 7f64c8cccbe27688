"""Held-out scenarios, set 66 (``h66_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face Qwen2-Audio encoder (fp16 autocast with a GradScaler, a hand-written
attention-pooling head), Voxtral encoder, GLM-ASR encoder (a fault, and a control under fp16
autocast with a GradScaler), Granite-Speech CTC conformer encoder and Gemma-3n audio encoder (a
fault and a control) from configs, all on generated tone spectrograms; truncated backpropagation
through time over long byte streams (an IRNN language model; a clipped LSTM control), a GRU
seq2seq trained with scheduled sampling (generated reversal task), a CTC recogniser from scratch
(log-power front end, conv + BiGRU; fault and control) on generated tone sequences, a Luong
"general" attention seq2seq (generated reversal task), a pointer network sorting generated
numbers, a key-value memory network (two hops) on a generated associative-recall task and a
Transformer-XL-style decoder with a segment-recurrence memory and a relative-position bias over
byte streams.

Optimizers: AdamW, Adam, NAdam, RAdam, Adagrad, Adadelta, RMSprop, SGD (plain, momentum,
Nesterov) and steadygrad.optim's Lion (twice), Grams, AdaBelief, AdEMAMix and StableSPAM.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    grad_norm,
    scenario,
    seeded,
    text_bytes,
)

# -- shared pieces ---------------------------------------------------------------------------------


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _first_bad(losses: list[float], limit: float = float("inf")) -> int | None:
    for i, v in enumerate(losses):
        if not math.isfinite(v) or v > limit:
            return i
    return None


def _loop(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    loss_at: Callable[[int], torch.Tensor],
    *,
    before: Callable[[int], None] | None = None,
    after: Callable[[int], None] | None = None,
    backprop: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    clip: float | None = None,
    amp: bool = False,
    scaler: Any = None,
    on_grad: Callable[[int], None] | None = None,
) -> None:
    """A plain loop: attach first, ``ctx.step(loss)`` after ``opt.step()``.

    ``loss_at(step)`` runs the forward pass and returns the loss; ``backprop(step, loss)`` the
    tensor actually backpropagated (loss-scaling bugs); ``on_grad(step)`` sees the gradients
    before the update; ``after(step)`` runs after the update.
    """
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            loss = loss_at(step)
        loss = loss.float()
        total = backprop(step, loss) if backprop is not None else loss
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
            ctx.grad_norms.append(grad_norm(model))
            if on_grad is not None:
                on_grad(step)
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            total.backward()
            ctx.grad_norms.append(grad_norm(model))
            if on_grad is not None:
                on_grad(step)
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if after is not None:
            after(step)


# -- generated tone spectrograms -------------------------------------------------------------------


def _tone_power(gen: torch.Generator, batch: int, mels: int, frames: int, classes: int):
    """Mel power of generated tone clips: class k lights two bands (a tone and an overtone)
    between a random onset and offset; a noise floor elsewhere. Returns (power, labels)."""
    y = torch.randint(0, classes, (batch,), generator=gen)
    noise = 0.02 * torch.exp(0.5 * torch.randn(batch, mels, frames, generator=gen))
    power = noise.clone()
    on = torch.randint(0, frames // 3, (batch,), generator=gen)
    length = torch.randint(frames // 3, frames // 2 + 1, (batch,), generator=gen)
    gain = 0.5 + 1.5 * torch.rand(batch, generator=gen)
    t = torch.arange(frames)
    for i in range(batch):
        k = int(y[i])
        live = (t >= on[i]) & (t < on[i] + length[i])
        b1, b2 = 1 + k, (1 + k + 3 + k % 3) % mels
        power[i, b1, live] += gain[i]
        power[i, b2, live] += 0.5 * gain[i]
    return power, y


def _log_mel(power: torch.Tensor) -> torch.Tensor:
    """Log-compressed, roughly standardised features."""
    return (torch.log(power + 1e-6) + 3.0) / 1.5


def _tone_batches(gen, batch=16, mels=16, frames=32, classes=6, time_major=False, noise=0.0):
    """Endless (features, label) batches; ``noise``: share of labels drawn at random (a
    realistic annotation error rate)."""
    while True:
        power, y = _tone_power(gen, batch, mels, frames, classes)
        if noise > 0:
            flip = torch.rand(batch, generator=gen) < noise
            y = torch.where(flip, torch.randint(0, classes, (batch,), generator=gen), y)
        x = _log_mel(power)
        yield (x.transpose(1, 2).contiguous() if time_major else x), y


class _AudioClassifier(nn.Module):
    """An HF audio encoder, mean-pooled over time, and a linear head."""

    def __init__(self, encoder: nn.Module, dim: int, classes: int, mask: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(dim, classes)
        self.mask = mask

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        if self.mask:
            out = self.encoder(x, torch.zeros(x.shape[:2], dtype=torch.bool))
            return out[0]
        return self.encoder(x).last_hidden_state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x).mean(1))


def _qwen2_audio(dim=32, mels=16, frames=32):
    from transformers import Qwen2AudioEncoder, Qwen2AudioEncoderConfig

    cfg = Qwen2AudioEncoderConfig(
        num_mel_bins=mels,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=2 * dim,
        d_model=dim,
        max_source_positions=frames // 2,
    )
    return Qwen2AudioEncoder(cfg)


def _voxtral(dim=32, mels=16, frames=32):
    from transformers import VoxtralEncoder, VoxtralEncoderConfig

    cfg = VoxtralEncoderConfig(
        num_mel_bins=mels,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        hidden_size=dim,
        max_source_positions=frames // 2,
    )
    return VoxtralEncoder(cfg)


def _glmasr(dim=32, mels=16):
    from transformers import GlmAsrEncoder, GlmAsrEncoderConfig

    cfg = GlmAsrEncoderConfig(
        num_mel_bins=mels,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * dim,
        hidden_size=dim,
        max_position_embeddings=64,
    )
    return GlmAsrEncoder(cfg)


def _granite(dim=32, feats=16, classes=12):
    from transformers import GraniteSpeechCTCEncoder, GraniteSpeechEncoderConfig

    cfg = GraniteSpeechEncoderConfig(
        input_dim=feats,
        num_layers=2,
        hidden_dim=dim,
        num_heads=2,
        dim_head=16,
        output_dim=classes,
        context_size=16,
        max_pos_emb=32,
        dropout=0.0,
        conv_kernel_size=5,
    )
    return GraniteSpeechCTCEncoder(cfg)


def _gemma3n(dim=32, feats=16):
    from transformers import Gemma3nAudioConfig, Gemma3nAudioEncoder

    cfg = Gemma3nAudioConfig(
        input_feat_size=feats,
        hidden_size=dim,
        conf_num_attention_heads=2,
        conf_num_hidden_layers=2,
        sscp_conv_channel_size=(8, 8),
        conf_attention_chunk_size=4,
        conf_attention_context_left=5,
        conf_reduction_factor=2,
    )
    return Gemma3nAudioEncoder(cfg)


def _classify(ctx: Context, model: nn.Module, batches):
    """A ``loss_at`` for the tone classifiers (records the targets for the softmax signal)."""

    def loss_at(step: int) -> torch.Tensor:
        x, y = next(batches)
        ctx.targets(y)
        return F.cross_entropy(model(x).float(), y)

    return loss_at


# -- Hugging Face Qwen2-Audio encoder: fp16 overflow in a hand-written attention pooling -------


class _ExpAttentionPool(nn.Module):
    """Attention pooling over frames with a temperature annealed over training and a softmax
    written by hand: ``exp(s / tau) / sum exp(s / tau)``, no max subtracted."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        nn.init.normal_(self.score.weight, std=0.02)  # the HF-style init of the rest
        nn.init.zeros_(self.score.bias)
        self.tau = 1.0
        self.last_score_max = 0.0
        self.last_overflow = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s = self.score(h) / self.tau  # (B, T, 1); fp16 under autocast
        self.last_score_max = float(s.detach().float().max())
        e = torch.exp(s)
        self.last_overflow = bool(torch.isinf(e).any())
        return (e * h).sum(1) / e.sum(1)


class _PooledAudioClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.pool = _ExpAttentionPool(dim)
        self.head = nn.Linear(dim, classes)
        self.last_hidden_finite = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x).last_hidden_state
        self.last_hidden_finite = bool(torch.isfinite(h).all())
        return self.head(self.pool(h))


@scenario(
    "h66_hf_qwen2_audio_encoder",
    "adamw",
    "amp_overflow",
    where="pool",
    diverges="auto",
    heldout=True,
    note="fp16 autocast + GradScaler; exp(s / tau) with tau annealed, no max subtracted",
)
def h66_qwen2_audio_exp_pool_fp16(ctx: Context) -> None:
    """A Qwen2-Audio encoder classifies tone clips under fp16 autocast with a GradScaler. Its
    attention-pooling head anneals a temperature (sharper pooling as training goes) and was
    written by hand: ``exp(score / tau)`` with no max subtracted. It is fine in fp32, but once
    the largest scaled score passes log(65504) = 11.09, ``exp`` overflows to inf in fp16 inside
    the pooling module: inf / inf gives NaN, and the loss is NaN from then on (the GradScaler
    skips every step, the weights never change again, the temperature keeps falling)."""
    gen = seeded(6601)
    model = _PooledAudioClassifier(_qwen2_audio(), 32, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cpu")
    batches = _tone_batches(gen)
    maxes: list[float] = []
    overflow: list[bool] = []
    enc_finite: list[bool] = []

    def anneal(step: int) -> None:
        model.pool.tau = max(0.02, 0.02 ** (step / 200))

    def loss_at(step: int) -> torch.Tensor:
        x, y = next(batches)
        ctx.targets(y)
        out = model(x)
        maxes.append(model.pool.last_score_max)
        overflow.append(model.pool.last_overflow)
        enc_finite.append(model.last_hidden_finite)
        return F.cross_entropy(out.float(), y)

    _loop(ctx, model, opt, 220, loss_at, before=anneal, amp=True, scaler=scaler)
    bad = _first_bad(ctx.losses)
    first_over = overflow.index(True) if True in overflow else None
    ctx.check("the loss went NaN", bad is not None and bad > 20)
    ctx.check(
        "exp overflowed in the pool at that step", first_over is not None and first_over == bad
    )
    ctx.check(
        "scaled scores stayed below 11.09 before", bad is not None and max(maxes[:bad]) < 11.1
    )
    ctx.check("the encoder output was finite there", bad is not None and enc_finite[bad])
    ctx.check(
        "the loss had fallen before",
        bad is not None and min(ctx.losses[:bad]) < 0.3 * ctx.losses[0],
    )
    after_bad = ctx.losses[bad:] if bad is not None else []
    ctx.check(
        "non-finite on 90%+ of the steps from there",
        bool(after_bad) and sum(not _finite(v) for v in after_bad) >= 0.9 * len(after_bad),
    )
    ctx.check("the GradScaler's scale collapsed below 1e-6", ctx.scales[-1] < 1e-6)


# -- Hugging Face GLM-ASR encoder: StepLR gamma typo, and a control under fp16 ---------------------


@scenario(
    "h66_hf_glmasr_encoder",
    "sgd_nesterov",
    "sharpness_above_limit",
    diverges="auto",
    onset=80,
    heldout=True,
    note="StepLR(step_size=80, gamma=10): the LR rises 10x at 80 (and again at 160)",
)
def h66_glmasr_steplr_gamma_typo(ctx: Context) -> None:
    """A GLM-ASR encoder trains with Nesterov SGD and a step schedule meant to decay the LR by
    10x every 80 steps; ``gamma=10`` was typed for ``gamma=0.1``. At step 80 the LR jumps 10x,
    above 2 / curvature: the loss oscillates and climbs until the run breaks."""
    gen = seeded(6602)
    model = _AudioClassifier(_glmasr(), 32, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=10.0)
    lrs: list[float] = []

    def after(step: int) -> None:
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()

    _loop(ctx, model, opt, 200, _classify(ctx, model, _tone_batches(gen)), after=after)
    before = ctx.losses[60:80]
    late = _first_bad(ctx.losses[80:], 2 * ctx.losses[0])
    bad = None if late is None else 80 + late
    ctx.check("trained before the LR jump", max(before) < 0.6 * ctx.losses[0])
    ctx.check("the LR rose 10x at 80", abs(lrs[80] / lrs[79] - 10.0) < 1e-6)
    ctx.check("the loss blew up after 80", bad is not None)


@scenario(
    "h66_hf_glmasr_encoder",
    "radam",
    "healthy",
    heldout=True,
    note="fp16 autocast + GradScaler on log-mel tone clips",
)
def h66_glmasr_fp16_healthy(ctx: Context) -> None:
    """Control: the same GLM-ASR encoder under fp16 autocast with a GradScaler and RAdam."""
    gen = seeded(6603)
    model = _AudioClassifier(_glmasr(), 32, 6)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    _loop(
        ctx,
        model,
        opt,
        150,
        _classify(ctx, model, _tone_batches(gen)),
        amp=True,
        scaler=scaler,
    )
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.3 * ctx.losses[0])


# -- Hugging Face Voxtral encoder: decoupled decay with the sign flipped ---------------------------


@scenario(
    "h66_hf_voxtral_encoder",
    "adagrad",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="hand-written decoupled decay p *= (1 + lr*wd): every weight inflates",
)
def h66_voxtral_flipped_decay(ctx: Context) -> None:
    """A Voxtral encoder trains with Adagrad and a hand-written decoupled weight decay applied
    after each step. The decay was written ``p.mul_(1 + lr * wd)``: every tensor grows by the
    same small factor each step. Early on the gradient steps win and the loss falls; as
    Adagrad's steps shrink, the uniform inflation takes over and the loss climbs slowly until
    it is far above where it was (the 15% mislabelled clips, predicted ever more confidently,
    cost ever more), with no single module or step to blame."""
    gen = seeded(6604)
    model = _AudioClassifier(_voxtral(), 32, 6)
    lr, wd = 0.03, 0.3
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    norms: list[float] = []

    def after(step: int) -> None:
        with torch.no_grad():
            for p in model.parameters():
                if p.requires_grad:
                    p.mul_(1 + lr * wd)  # meant: 1 - lr * wd
            norms.append(float(torch.cat([p.flatten() for p in model.parameters()]).norm()))

    batches = _tone_batches(gen, noise=0.15)
    _loop(ctx, model, opt, 400, _classify(ctx, model, batches), after=after)
    low = min(
        range(len(ctx.losses)), key=lambda i: ctx.losses[i] if _finite(ctx.losses[i]) else 1e9
    )
    tail = [v for v in ctx.losses[-20:]]
    ctx.check("the loss fell first", ctx.losses[low] < 0.5 * ctx.losses[0])
    ctx.check(
        "then climbed far above its start",
        any(not _finite(v) for v in tail) or sum(tail) / 20 > 3 * ctx.losses[0],
    )
    ctx.check("the weights inflated", norms[-1] > 5 * norms[0])


# -- Hugging Face Granite-Speech CTC encoder: a group LR typed 100x --------------------------------


@scenario(
    "h66_hf_granite_speech_encoder",
    "nadam",
    "update_ratio_out_of_range",
    where="encoder.input_linear",
    diverges=None,
    heldout=True,
    note="param group for the input projection at lr 1e-1 instead of 1e-3",
)
def h66_granite_input_group_lr_typo(ctx: Context) -> None:
    """A Granite-Speech conformer encoder trains with NAdam and per-group learning rates (a
    common recipe: the input projection and the rest). The input projection's group got
    ``1e-1`` for ``1e-3``: its update/weight ratio runs about 100x the rest of the model's for
    the whole run."""
    gen = seeded(6605)
    model = _AudioClassifier(_granite(), 32, 6)
    first = list(model.encoder.input_linear.parameters())
    ids = {id(p) for p in first}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.NAdam([{"params": first, "lr": 1e-5}, {"params": rest, "lr": 1e-3}])
    ratios_in: list[float] = []
    ratios_rest: list[float] = []
    w_in = model.encoder.input_linear.weight
    watch = model.encoder.layers[0].attn.to_q.weight
    prev: dict[str, torch.Tensor] = {}

    def before(step: int) -> None:
        prev["in"] = w_in.detach().clone()
        prev["rest"] = watch.detach().clone()

    def after(step: int) -> None:
        ratios_in.append(float((w_in - prev["in"]).norm() / prev["in"].norm()))
        ratios_rest.append(float((watch - prev["rest"]).norm() / prev["rest"].norm()))

    batches = _tone_batches(gen, time_major=True)
    _loop(ctx, model, opt, 150, _classify(ctx, model, batches), before=before, after=after)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    ctx.check(
        "input projection's update ratio < 1/10 of the rest's",
        med(ratios_in) * 10 < med(ratios_rest),
    )
    ctx.check("input projection's update ratio < 1e-3", med(ratios_in) < 1e-3)
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))


# -- Hugging Face Gemma-3n audio encoder: a projector born dead, and a control ---------------------


class _ProjectedAudioClassifier(nn.Module):
    """Gemma-3n audio encoder, mean over time, a ReLU projector and a linear head."""

    def __init__(self, encoder: nn.Module, dim: int, classes: int, bias: float = 0.0) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU())
        self.head = nn.Linear(2 * dim, classes)
        nn.init.constant_(self.projector[0].bias, bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(x, torch.zeros(x.shape[:2], dtype=torch.bool))[0]
        return self.projector(h.mean(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@scenario(
    "h66_hf_gemma3n_audio",
    "sgd",
    "loss_of_plasticity",
    where=("projector.0", "projector.1"),
    diverges=None,
    heldout=True,
    note="projector bias initialised to -4 (a gate-bias constant pasted into a ReLU layer)",
)
def h66_gemma3n_projector_dead_bias(ctx: Context) -> None:
    """A Gemma-3n audio encoder feeds a ReLU projector and a classifier head. The projector's
    bias was initialised with a constant copied from a gating layer (-4, meant to start gates
    closed): almost every ReLU unit is negative on every clip from the first step, passes no
    gradient, and stays dead; the classifier is left with a handful of live features and its
    loss stalls far above the control's."""
    gen = seeded(6606)
    model = _ProjectedAudioClassifier(_gemma3n(), 32, 6, bias=-4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = _tone_batches(gen, time_major=True)
    _loop(ctx, model, opt, 200, _classify(ctx, model, batches))
    x, _ = next(batches)
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ctx.check("most projector units dead at the end", dead > 0.8)
    ctx.check("the loss stalled", sum(ctx.losses[-20:]) / 20 > 0.6 * ctx.losses[0])


@scenario(
    "h66_hf_gemma3n_audio", "sg_adabelief", "healthy", heldout=True, note="zero-bias projector"
)
def h66_gemma3n_audio_healthy(ctx: Context) -> None:
    """Control: the same Gemma-3n classifier with its projector bias at zero, AdaBelief."""
    gen = seeded(6607)
    model = _ProjectedAudioClassifier(_gemma3n(), 32, 6)
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    _loop(ctx, model, opt, 200, _classify(ctx, model, _tone_batches(gen, time_major=True)))
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.3 * ctx.losses[0])


# -- truncated backpropagation through time over long byte streams ---------------------------------


class _StreamLM(nn.Module):
    """Byte LM carried across chunks: embedding, one recurrent layer, linear head."""

    def __init__(self, kind: str, vocab: int = 64, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        if kind == "irnn":
            self.rnn = nn.RNN(dim, hidden, nonlinearity="relu", batch_first=True)
        else:
            self.rnn = nn.LSTM(dim, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor, state: Any):
        out, state = self.rnn(self.emb(x), state)
        return self.head(out), state


def _detach(state: Any) -> Any:
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


def _streams(batch: int, chunk: int, vocab: int):
    """Chunks of ``batch`` parallel byte streams, in order (a TBPTT reader); ``None`` state on
    the wrap-around."""
    data = text_bytes() % vocab
    per = len(data) // batch
    lanes = data[: per * batch].reshape(batch, per)
    pos = 0
    while True:
        if pos + chunk + 1 > per:
            pos = 0
        win = lanes[:, pos : pos + chunk + 1]
        yield win[:, :-1], win[:, 1:], pos == 0
        pos += chunk


@scenario(
    "h66_tbptt_byte_stream",
    "sgd_mom",
    "exploding_gradients",
    where="rnn",
    diverges="auto",
    heldout=True,
    note="IRNN (identity recurrence, ReLU) over carried state, no gradient clipping",
)
def h66_tbptt_irnn_unclipped(ctx: Context) -> None:
    """An IRNN byte LM (ReLU recurrence initialised to the identity) trains with TBPTT over
    long streams: the hidden state is carried from chunk to chunk, gradients flow 48 steps
    back, and nobody clipped them. The first momentum-SGD steps push the recurrence past a
    spectral radius of 1; from then on the recurrent weight's gradient comes in ever larger
    bursts (10x, 100x, then 1000x its early size, the head's far less), each unclipped update
    pushing the recurrence further, until the loss is non-finite a few dozen steps in."""
    seeded(6608)
    model = _StreamLM("irnn")
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(0.9 * torch.eye(64))
        model.rnn.bias_hh_l0.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    stream = _streams(16, 48, 64)
    state: dict[str, Any] = {"h": None}
    rnn_g: list[float] = []
    head_g: list[float] = []

    def loss_at(step: int) -> torch.Tensor:
        x, y, fresh = next(stream)
        if fresh:
            state["h"] = None
        logits, h = model(x, state["h"])
        state["h"] = _detach(h)
        return F.cross_entropy(logits.reshape(-1, 64), y.reshape(-1))

    def on_grad(step: int) -> None:
        rnn_g.append(float(model.rnn.weight_hh_l0.grad.norm()))
        head_g.append(float(model.head.weight.grad.norm()))

    _loop(ctx, model, opt, 120, loss_at, on_grad=on_grad)
    bad = _first_bad(ctx.losses)
    base_r = sorted(rnn_g[3:8])[2]
    base_h = sorted(head_g[3:8])[2]
    big = [i for i in range(8, bad or 0) if rnn_g[i] > 10 * base_r]
    ctx.check("the loss went non-finite", bad is not None)
    ctx.check("rnn gradient >10x its early level on 5+ steps before", len(big) >= 5)
    ctx.check(
        "the recurrent gradient grew more than the head's",
        bool(big) and rnn_g[big[0]] / base_r > head_g[big[0]] / base_h,
    )
    ctx.check(
        "the last gradient before the break was the largest yet",
        bad is not None and rnn_g[bad - 1] >= max(rnn_g[: bad - 1]),
    )


@scenario(
    "h66_tbptt_byte_stream",
    "sg_stablespam",
    "healthy",
    heldout=True,
    note="LSTM, carried state, gradients clipped at 1",
)
def h66_tbptt_lstm_clipped_healthy(ctx: Context) -> None:
    """Control: the same TBPTT reader with an LSTM and gradient clipping, StableSPAM."""
    seeded(6609)
    model = _StreamLM("lstm")
    opt = sgo.StableSPAM(model.parameters(), lr=3e-3)
    stream = _streams(16, 48, 64)
    state: dict[str, Any] = {"h": None}

    def loss_at(step: int) -> torch.Tensor:
        x, y, fresh = next(stream)
        if fresh:
            state["h"] = None
        logits, h = model(x, state["h"])
        state["h"] = _detach(h)
        return F.cross_entropy(logits.reshape(-1, 64), y.reshape(-1))

    _loop(ctx, model, opt, 300, loss_at, clip=1.0)
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.75 * ctx.losses[0])


# -- a generated reversal task for the seq2seq models ----------------------------------------------

_BOS = 1


def _reversal(gen: torch.Generator, batch: int = 32, length: int = 8, vocab: int = 16):
    """Endless (source, target) pairs: the target is the source reversed (tokens 2..vocab-1)."""
    while True:
        src = torch.randint(2, vocab, (batch, length), generator=gen)
        yield src, src.flip(1)


# -- a GRU seq2seq trained with scheduled sampling ---------------------------------------------------


class _GRUSeq2Seq(nn.Module):
    def __init__(self, vocab: int = 16, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.encoder = nn.GRU(dim, hidden, batch_first=True)
        self.decoder = nn.GRUCell(dim, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, p_model: float, gen: torch.Generator):
        """Decode with scheduled sampling: each step feeds a token sampled from the model's own
        previous prediction with probability ``p_model``, else the true previous token."""
        _, h = self.encoder(self.emb(src))
        h = h[0]
        prev = torch.full((src.shape[0],), _BOS, dtype=torch.long)
        logits = []
        for t in range(tgt.shape[1]):
            h = self.decoder(self.emb(prev), h)
            step_logits = self.out(h)
            logits.append(step_logits)
            own = torch.rand(src.shape[0], generator=gen) < p_model
            sampled = torch.multinomial(torch.softmax(step_logits.detach(), -1), 1, generator=gen)[
                :, 0
            ]
            prev = torch.where(own, sampled, tgt[:, t])
        return torch.stack(logits, 1)


@scenario(
    "h66_scheduled_sampling_gru",
    "rmsprop",
    "loss_spike",
    diverges=None,
    onset=300,
    heldout=True,
    note="sampling schedule 0.1 * (step // 300) * 10: jumps from 0 to 1 at step 300",
)
def h66_scheduled_sampling_jump(ctx: Context) -> None:
    """A GRU encoder-decoder learns to reverse sequences with scheduled sampling: the share
    of decoder inputs taken from the model's own predictions was meant to rise smoothly. The
    schedule's integer division makes it 0 until step 300 and then 1 at once: the decoder,
    trained only on true prefixes, suddenly reads its own (often wrong) predictions and the
    loss jumps several-fold, then falls back as it learns to recover from its own errors.
    Nothing in the gradients, the optimizer or the data is at fault."""
    gen = seeded(6610)
    model = _GRUSeq2Seq(vocab=10, hidden=128)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-3)
    batches = _reversal(gen, length=6, vocab=10)
    sampler = torch.Generator().manual_seed(6611)
    share: list[float] = []

    def loss_at(step: int) -> torch.Tensor:
        src, tgt = next(batches)
        p_model = min(1.0, 0.1 * (step // 300) * 10)  # meant: min(1.0, step / 3000)
        share.append(p_model)
        logits = model(src, tgt, p_model, sampler)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1))

    _loop(ctx, model, opt, 550, loss_at)
    before = sum(ctx.losses[280:300]) / 20
    peak = max(ctx.losses[300:315])
    end = sum(ctx.losses[-20:]) / 20
    ctx.check("the sampling share jumped 0 -> 1 at 300", share[299] == 0.0 and share[300] == 1.0)
    ctx.check("the loss jumped 3x+ right after 300", peak > 3 * before)
    ctx.check("and came back down", end < 0.5 * peak)
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))


# -- a CTC recogniser from scratch on generated tone sequences -------------------------------------


class _LogPower(nn.Module):
    """The front end: log of the mel power, standardised (no floor added)."""

    def __init__(self, floor: float = 0.0) -> None:
        super().__init__()
        self.floor = floor

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        return (torch.log(power + self.floor) + 3.0) / 1.5


class _CTCNet(nn.Module):
    def __init__(self, feats: int = 16, hidden: int = 32, labels: int = 6, floor: float = 0.0):
        super().__init__()
        self.frontend = _LogPower(floor)
        self.conv = nn.Conv1d(feats, hidden, 3, padding=1)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * hidden, labels + 1)

    def forward(self, power: torch.Tensor) -> torch.Tensor:
        x = self.frontend(power)  # (B, F, T)
        x = F.gelu(self.conv(x)).transpose(1, 2)
        h, _ = self.rnn(x)
        return self.out(h)  # (B, T, labels + 1), blank = 0


def _ctc_batches(gen, batch=16, feats=16, frames=32, labels=6, units=4):
    """Tone sequences: ``units`` labels (1..labels), each a band lit for 3-5 frames, gaps of
    0-2 frames; returns (power (B, F, T), targets (B, units))."""
    while True:
        power = 0.02 * torch.exp(0.5 * torch.randn(batch, feats, frames, generator=gen))
        tgt = torch.randint(1, labels + 1, (batch, units), generator=gen)
        for i in range(batch):
            t = int(torch.randint(0, 3, (1,), generator=gen))
            for u in range(units):
                k = int(tgt[i, u])
                n = int(torch.randint(3, 6, (1,), generator=gen))
                power[i, 2 * k, t : t + n] += 1.0
                power[i, 2 * k + 1, t : t + n] += 0.5
                t += n + int(torch.randint(0, 3, (1,), generator=gen))
        yield power, tgt


def _ctc_loss(model: nn.Module, power: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(model(power).float(), -1).transpose(0, 1)  # (T, B, C)
    b, t = power.shape[0], power.shape[2]
    return F.ctc_loss(
        logp,
        tgt,
        torch.full((b,), t, dtype=torch.long),
        torch.full((b,), tgt.shape[1], dtype=torch.long),
    )


@scenario(
    "h66_ctc_from_scratch",
    "adadelta",
    "nonfinite",
    where="frontend",
    diverges=150,
    onset=150,
    heldout=True,
    note="an all-zero (silent, padded) clip at step 150: log(0) = -inf in the front end",
)
def h66_ctc_log_of_silent_clip(ctx: Context) -> None:
    """A CTC recogniser (log-power front end, conv, BiGRU) trains with Adadelta. Its front
    end takes ``log(power)`` with no floor. At step 150 the loader delivers one silent clip
    (an empty file zero-padded to length): its power is exactly 0, the front end returns
    -inf, the conv turns it into NaN, the loss is NaN, and the NaN gradients poison every
    weight: the loss stays NaN."""
    gen = seeded(6612)
    model = _CTCNet()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    batches = _ctc_batches(gen)
    front_inf: list[bool] = []

    def loss_at(step: int) -> torch.Tensor:
        power, tgt = next(batches)
        if step == 150:
            power = power.clone()
            power[3] = 0.0
        with torch.no_grad():
            front_inf.append(bool(torch.isinf(model.frontend(power)).any()))
        return _ctc_loss(model, power, tgt)

    _loop(ctx, model, opt, 200, loss_at)
    finite = [_finite(v) for v in ctx.losses]
    ctx.check("finite until 150, not from 150", all(finite[:150]) and not any(finite[150:]))
    ctx.check("the front end produced -inf at 150 only", front_inf.index(True) == 150)
    ctx.check("it had trained before", sum(ctx.losses[130:150]) / 20 < 0.7 * ctx.losses[0])


@scenario("h66_ctc_from_scratch", "sg_ademamix", "healthy", heldout=True, note="floored log")
def h66_ctc_floored_healthy(ctx: Context) -> None:
    """Control: the same CTC recogniser with a floored log (``log(power + 1e-6)``), AdEMAMix;
    it meets the same silent clip at step 150 and shrugs it off."""
    gen = seeded(6613)
    model = _CTCNet(floor=1e-6)
    opt = sgo.AdEMAMix(model.parameters(), lr=3e-3)
    batches = _ctc_batches(gen)

    def loss_at(step: int) -> torch.Tensor:
        power, tgt = next(batches)
        if step == 150:
            power = power.clone()
            power[3] = 0.0
        return _ctc_loss(model, power, tgt)

    _loop(ctx, model, opt, 200, loss_at)
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))
    ctx.check("loss fell", sum(ctx.losses[-20:]) / 20 < 0.5 * ctx.losses[0])


# -- a Luong "general" attention seq2seq ---------------------------------------------------------


class _GeneralAttention(nn.Module):
    """Luong's "general" score ``h_dec W h_enc``, no 1/sqrt(d) and no temperature."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.w = nn.Linear(hidden, hidden, bias=False)
        self.last_logits: torch.Tensor | None = None

    def forward(self, dec: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        logits = dec @ self.w(enc).transpose(1, 2)  # (B, T_dec, T_enc)
        self.last_logits = logits.detach()
        return torch.softmax(logits, -1) @ enc


class _LuongSeq2Seq(nn.Module):
    def __init__(self, vocab: int = 16, dim: int = 32, hidden: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.encoder = nn.GRU(dim, hidden, batch_first=True)
        self.decoder = nn.GRU(dim, hidden, batch_first=True)
        self.attn = _GeneralAttention(hidden)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        enc, h = self.encoder(self.emb(src))
        dec, _ = self.decoder(self.emb(tgt_in), h)
        ctxv = self.attn(dec, enc)
        return self.out(torch.tanh(self.combine(torch.cat([dec, ctxv], -1))))


@scenario(
    "h66_luong_attention_seq2seq",
    "sg_lion",
    "attention_logit_growth",
    where="attn",
    diverges=None,
    heldout=True,
    note="Luong general score unscaled; Lion at 3e-3 with weight decay left at 0",
)
def h66_luong_unscaled_general_attention(ctx: Context) -> None:
    """A Luong-attention GRU seq2seq learns to reverse sequences with Lion. The "general"
    score ``h_dec W h_enc`` has no 1/sqrt(d) scale, and the run copied Lion's learning rate
    from a recipe that relied on weight decay, left here at 0. Every sign step grows ``W``
    by the same amount: the attention logits grow tenfold and more, the attention saturates
    to one-hot, and the loss, after reaching its best, creeps back up several-fold."""
    gen = seeded(6614)
    model = _LuongSeq2Seq()
    opt = sgo.Lion(model.parameters(), lr=3e-3)
    batches = _reversal(gen)
    peak: list[float] = []
    top: list[float] = []

    def loss_at(step: int) -> torch.Tensor:
        src, tgt = next(batches)
        tgt_in = torch.cat([torch.full_like(tgt[:, :1], _BOS), tgt[:, :-1]], 1)
        logits = model(src, tgt_in)
        lg = model.attn.last_logits
        peak.append(float(lg.abs().max()))
        top.append(float(torch.softmax(lg, -1).max(-1).values.mean()))
        return F.cross_entropy(logits.reshape(-1, 16), tgt.reshape(-1))

    _loop(ctx, model, opt, 300, loss_at)
    ctx.check("attention logits grew 10x+", max(peak[-20:]) > 10 * peak[0])
    ctx.check("attention saturated (mean top weight > 0.97)", sum(top[-20:]) / 20 > 0.97)
    best = min(sum(ctx.losses[i : i + 20]) / 20 for i in range(0, 280, 10))
    ctx.check("the loss rose 2x+ from its best", sum(ctx.losses[-20:]) / 20 > 2 * best)


# -- a pointer network sorting generated numbers -----------------------------------------------


class _Pointer(nn.Module):
    """Additive pointer scores over the input positions, divided by a temperature."""

    def __init__(self, hidden: int, temperature: float) -> None:
        super().__init__()
        self.w_enc = nn.Linear(hidden, hidden, bias=False)
        self.w_dec = nn.Linear(hidden, hidden, bias=False)
        self.v = nn.Linear(hidden, 1, bias=False)
        self.temperature = temperature

    def forward(self, dec: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        u = self.v(torch.tanh(self.w_enc(enc)[:, None] + self.w_dec(dec)[:, :, None])).squeeze(-1)
        return u / self.temperature  # (B, T_dec, T_enc)


class _PointerNet(nn.Module):
    def __init__(self, hidden: int = 32, temperature: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Linear(1, hidden)
        self.encoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.decoder = nn.LSTM(hidden, hidden, batch_first=True)
        self.start = nn.Parameter(torch.zeros(hidden))
        self.pointer = _Pointer(hidden, temperature)

    def forward(self, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        e = self.embed(x[..., None])
        enc, state = self.encoder(e)
        picked = e.gather(1, order[..., None].expand(-1, -1, e.shape[-1]))
        dec_in = torch.cat([self.start.expand(x.shape[0], 1, -1), picked[:, :-1]], 1)
        dec, _ = self.decoder(dec_in, state)
        return self.pointer(dec, enc)


def _sorting(gen: torch.Generator, batch: int = 32, n: int = 5):
    """Numbers to sort: a random permutation of n well-separated levels, slightly jittered."""
    while True:
        ranks = torch.rand(batch, n, generator=gen).argsort(1).float()
        x = (ranks + 0.3 * torch.rand(batch, n, generator=gen)) / n
        yield x, x.argsort(1)


@scenario(
    "h66_pointer_network",
    "sg_lion",
    "softmax_collapse",
    where="pointer",
    diverges=None,
    heldout=True,
    note="sampling temperature 0.02 left on in training: scores divided by 0.02",
)
def h66_pointer_temperature_left_on(ctx: Context) -> None:
    """A pointer network learns to sort five numbers with Lion. The temperature meant only
    for sampling at inference (0.02) is applied in training too, dividing the pointer scores
    by it: the scores are 50x larger, and once the task is learnt Lion's constant-size sign
    steps keep widening the margins: the pointer softmax saturates until nearly every row
    gives the right input probability exactly 1.0 in float32, where it passes no gradient."""
    gen = seeded(6615)
    model = _PointerNet(temperature=0.02)
    opt = sgo.Lion(model.parameters(), lr=1e-3)
    batches = _sorting(gen)
    collapsed: list[float] = []

    def loss_at(step: int) -> torch.Tensor:
        x, order = next(batches)
        logits = model(x, order).reshape(-1, x.shape[1])
        y = order.reshape(-1)
        ctx.targets(y)
        collapsed.append(collapsed_fraction(logits.detach(), y))
        return F.cross_entropy(logits, y)

    _loop(ctx, model, opt, 300, loss_at)
    ctx.check("few rows collapsed at first", collapsed[0] < 0.1)
    ctx.check("most rows collapsed to exactly 1.0 at the end", sum(collapsed[-10:]) / 10 > 0.5)


# -- a key-value memory network, one step with a stale loss scale ----------------------------------


class _KVMemory(nn.Module):
    """Two-hop key-value memory network: keys and values embedded, a query read twice."""

    def __init__(self, vocab: int = 32, dim: int = 32) -> None:
        super().__init__()
        self.key_emb = nn.Embedding(vocab, dim)  # also embeds the query (tied, as in MemN2N)
        self.value_emb = nn.Embedding(vocab, dim)
        self.hop = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, vocab)

    def forward(self, keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor):
        k, v = self.key_emb(keys), self.value_emb(values)
        q = self.key_emb(query)
        for _ in range(2):
            p = torch.softmax((k @ q[..., None]).squeeze(-1), -1)
            q = self.hop(q) + (p[..., None] * v).sum(1)
        return self.out(q)


def _recall(gen: torch.Generator, batch: int = 32, pairs: int = 6, vocab: int = 32):
    """Associative recall: ``pairs`` distinct keys with random values; ask one key's value."""
    while True:
        keys = torch.rand(batch, vocab, generator=gen).argsort(1)[:, :pairs]
        values = torch.randint(0, vocab, (batch, pairs), generator=gen)
        pick = torch.randint(0, pairs, (batch,), generator=gen)
        yield (
            keys,
            values,
            keys.gather(1, pick[:, None])[:, 0],
            values.gather(1, pick[:, None])[:, 0],
        )


@scenario(
    "h66_kv_memory_network",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    onset=60,
    heldout=True,
    note="step 60 backpropagates the loss times a stale 2**24 loss scale, never unscaled",
)
def h66_memnet_stale_loss_scale(ctx: Context) -> None:
    """A key-value memory network learns associative recall with Adam. At step 60 a code
    path left over from a mixed-precision experiment multiplies the loss by the last loss
    scale (2**24) and nothing unscales the gradients: one step's gradient is 2**24 times too
    large. Adam's second moment takes (1 - beta2) of its square, sqrt(v) jumps by ~5e5 in
    the dense layers (less in embedding rows the batch barely touched) and decays only as
    0.999^t: every later update is 10x-1000x smaller, and the loss stalls where it was."""
    gen = seeded(6616)
    model = _KVMemory()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = _recall(gen)
    names = [n for n, _ in model.named_parameters()]
    sizes: list[list[float]] = []
    prev: list[torch.Tensor] = []

    def loss_at(step: int) -> torch.Tensor:
        keys, values, query, target = next(batches)
        ctx.targets(target)
        return F.cross_entropy(model(keys, values, query), target)

    def backprop(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * 2.0**24 if step == 60 else loss

    def before(step: int) -> None:
        prev[:] = [p.detach().clone() for p in model.parameters()]

    def after(step: int) -> None:
        sizes.append(
            [float((p.detach() - q).norm()) for p, q in zip(model.parameters(), prev, strict=True)]
        )

    _loop(ctx, model, opt, 260, loss_at, before=before, after=after, backprop=backprop)
    shrink = {
        n: (sum(s[i] for s in sizes[30:60]) / 30)
        / max(sum(s[i] for s in sizes[100:260]) / 160, 1e-12)
        for i, n in enumerate(names)
    }
    ctx.check(
        "the gradient at 60 was ~1e6x the others",
        ctx.grad_norms[60] > 1e5 * max(ctx.grad_norms[50:60]),
    )
    ctx.check("every tensor's updates shrank 5x+", min(shrink.values()) > 5)
    ctx.check(
        "the dense layers' updates shrank 100x+",
        min(shrink[n] for n in names if n[:3] in ("hop", "out")) > 100,
    )
    ctx.check("the loss had been falling", ctx.losses[59] < 0.5 * ctx.losses[0])
    ctx.check(
        "then stalled",
        sum(ctx.losses[-50:]) / 50 > 0.6 * sum(ctx.losses[50:70]) / 20,
    )
    ctx.check("all losses finite", all(_finite(v) for v in ctx.losses))


# -- a Transformer-XL-style decoder with a segment-recurrence memory -----------------------------


class _XLAttention(nn.Module):
    def __init__(self, dim: int, heads: int, span: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_bias = nn.Parameter(torch.zeros(heads, span))

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None) -> torch.Tensor:
        b, t, d = x.shape
        full = x if mem is None else torch.cat([mem, x], 1)
        m = full.shape[1] - t
        q = self.qkv(x)[..., :d]
        k, v = self.qkv(full)[..., d:].split(d, -1)
        q, k, v = (z.reshape(b, -1, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        s = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        i = torch.arange(t)[:, None] + m
        j = torch.arange(full.shape[1])[None]
        dist = (i - j).clamp(min=0, max=self.rel_bias.shape[1] - 1)
        s = s + self.rel_bias[:, dist]
        s = s.masked_fill(j > i, float("-inf"))
        y = torch.softmax(s, -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class _XLBlock(nn.Module):
    def __init__(self, dim: int, heads: int, span: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = _XLAttention(dim, heads, span)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, mem: torch.Tensor | None) -> torch.Tensor:
        h = self.ln1(x)
        hm = None if mem is None else self.ln1(mem)
        x = x + self.attn(h, hm)
        return x + self.ff(self.ln2(x))


class _TransformerXL(nn.Module):
    def __init__(
        self, vocab: int = 64, dim: int = 32, heads: int = 2, layers: int = 2, seg: int = 16
    ):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_XLBlock(dim, heads, 2 * seg) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx: torch.Tensor, mems: list[torch.Tensor] | None):
        x = self.tok(idx)
        new = []
        for i, block in enumerate(self.blocks):
            new.append(x.detach())
            x = block(x, None if mems is None else mems[i])
        return self.head(self.ln_f(x)), new


@scenario(
    "h66_transformer_xl_memory",
    "sg_grams",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    note="z-loss added with the wrong sign: log Z is rewarded, not penalised",
)
def h66_txl_zloss_sign_flipped(ctx: Context) -> None:
    """A Transformer-XL-style byte LM (segment memory, relative-position bias) trains with
    Grams and a z-loss meant to keep the head's log-partition near 0. A refactor that summed
    "auxiliary terms" subtracted it: ``loss = ce - 1e-2 * logZ^2``. Cross-entropy does not
    care where the logits sit, so nothing resists: the head's log Z runs away, quadratically
    rewarded, until the logits are so large the cross-entropy itself breaks."""
    seeded(6617)
    model = _TransformerXL()
    opt = sgo.Grams(model.parameters(), lr=3e-3)
    stream = _streams(16, 16, 64)
    state: dict[str, Any] = {"mems": None}
    log_z: list[float] = []
    last: dict[str, torch.Tensor] = {}

    def loss_at(step: int) -> torch.Tensor:
        x, y, fresh = next(stream)
        if fresh:
            state["mems"] = None
        logits, state["mems"] = model(x, state["mems"])
        last["lz"] = torch.logsumexp(logits.float(), -1)
        log_z.append(float(last["lz"].mean().detach()))
        return F.cross_entropy(logits.reshape(-1, 64), y.reshape(-1))

    def backprop(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss - 1e-2 * last["lz"].pow(2).mean()  # meant: + 1e-2 * logZ^2

    _loop(ctx, model, opt, 500, loss_at, backprop=backprop)
    ok = [i for i, v in enumerate(log_z) if _finite(v)]
    ctx.check("log Z grew 10x+", max(abs(log_z[i]) for i in ok) > 10 * abs(log_z[0]))
    ctx.check(
        "the loss ended far above its low",
        not _finite(ctx.losses[-1]) or ctx.losses[-1] > 2 * min(ctx.losses),
    )
