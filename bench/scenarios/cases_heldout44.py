"""Held-out scenarios, set 44 (``h44_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks
held, or a healthy control trained normally).

Families: Hugging Face Ministral, HunYuan-MoE (v1), OpenAI GPT and MiniMax (hybrid lightning /
full attention, MoE) causal LMs and a LayoutLMv3 text-and-layout classifier, all built from
configs; an S5-style diagonal state-space model evaluated with a parallel (Hillis-Steele) scan;
a WaveRNN-style autoregressive vocoder on generated mu-law audio; a temporal-convolution
autoencoder scoring anomalies in generated sensor windows; a FEDformer-style frequency-enhanced
forecaster and an LSTNet forecaster on generated multivariate series; an IQN distributional
critic on a generated offline bandit; a behaviour-cloning transformer (tanh-Gaussian policy)
on generated expert trajectories.

Optimizers: Adam, AdamW, NAdam, RAdam, Adamax, Adagrad, Adadelta, RMSprop, ASGD, SGD with
momentum and with Nesterov momentum, and steadygrad.optim's Lion, AdaBelief and AdEMAMix. Two
runs train under fp16 autocast with a ``torch.amp.GradScaler``.
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
    fit,
    lm_loss,
    scenario,
    seeded,
    text_batches,
)

# -- shared pieces ----------------------------------------------------------------------------


def _finite(v: float) -> bool:
    return math.isfinite(v)


def _first_nonfinite(losses: list[float]) -> int | None:
    return next((i for i, v in enumerate(losses) if not _finite(v)), None)


def _lm_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(input_ids=x).logits


def _series(gen: torch.Generator, n: int, length: int, channels: int) -> torch.Tensor:
    """Generated multivariate series: two seasonal cycles (periods 12 and 24) with random phases
    and amplitudes, a slow random trend, cross-channel mixing and a little noise; (n, length, C)."""
    t = torch.arange(length, dtype=torch.float32)[None, :, None]
    ph = 2 * math.pi * torch.rand(n, 2, channels, generator=gen)
    amp = 0.5 + torch.rand(n, 2, channels, generator=gen)
    s = amp[:, :1] * torch.sin(2 * math.pi * t / 12 + ph[:, :1]) + amp[:, 1:] * torch.sin(
        2 * math.pi * t / 24 + ph[:, 1:]
    )
    trend = 0.01 * torch.randn(n, 1, channels, generator=gen) * t
    mix = torch.eye(channels) + 0.2 * torch.randn(channels, channels, generator=gen)
    return (s + trend) @ mix + 0.1 * torch.randn(n, length, channels, generator=gen)


def _forecast_batches(
    gen: torch.Generator, batch: int = 32, context: int = 48, horizon: int = 12, channels: int = 4
):
    while True:
        s = _series(gen, batch, context + horizon, channels)
        yield s[:, :context], s[:, context:]


# -- Hugging Face causal LMs, built from configs -----------------------------------------------


def _ministral():
    from transformers import MinistralConfig, MinistralForCausalLM

    config = MinistralConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        sliding_window=64,
        attn_implementation="eager",
    )
    return MinistralForCausalLM(config)


def _attention_logit_range(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(largest spread of pre-softmax attention logits in a row, share of rows whose largest
    probability is above 0.99), over query positions >= 8 of every layer and head.

    Softmax is shift invariant, so log p differences are the logit differences."""
    with torch.no_grad():
        att = model(input_ids=x, output_attentions=True).attentions
    spread, saturated = 0.0, []
    for a in att:  # (b, h, t, t), causal
        a = a[:, :, 8:, :]
        logp = torch.log(a.clamp_min(1e-30))
        mask = torch.ones(a.shape[-2:], dtype=torch.bool).tril(8)
        valid = logp.masked_fill(~mask, float("nan"))
        row = valid.nan_to_num(-1e9).amax(-1) - valid.nan_to_num(1e9).amin(-1)
        spread = max(spread, float(row.median()))
        saturated.append((a.amax(-1) > 0.99).float().mean())
    return spread, float(torch.stack(saturated).mean())


@scenario(
    "h44_hf_ministral_lm",
    "adam",
    "attention_logit_growth",
    where=("model.layers.0.self_attn", "model.layers.1.self_attn"),
    diverges=None,
    heldout=True,
    note="attention scaling head_dim**0.5 instead of head_dim**-0.5 (16x the logits)",
)
def h44_ministral_inverted_attention_scale(ctx: Context) -> None:
    """A port of the attention to a new kernel wrote ``scaling = head_dim ** 0.5`` where it meant
    ``head_dim ** -0.5``: every q.k logit is 16x what it should be. At init the logits are small
    and the LM trains, but as q and k grow the logits follow 16x faster: the heads saturate to
    one-hot rows and the spread of the logits within a row grows fifty-fold; the loss keeps
    creeping down (no divergence in 300 steps), with a third of the attention rows one-hot."""
    gen = seeded(4401)
    model = _ministral()
    for layer in model.model.layers:
        layer.self_attn.scaling = layer.self_attn.head_dim**0.5
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    probe, _ = next(text_batches(torch.Generator().manual_seed(1)))
    spread0, sat0 = _attention_logit_range(model, probe)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        300,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
    )
    spread1, sat1 = _attention_logit_range(model, probe)
    ctx.check(
        f"attention logit spread grew >=10x ({spread0:.2f} -> {spread1:.1f})",
        spread1 >= 10 * spread0,
    )
    ctx.check(
        f"heads saturated (rows >0.99: {sat0:.2f} -> {sat1:.2f})", sat1 >= 0.3 and sat0 < 0.05
    )


def _hunyuan():
    from transformers import HunYuanMoEV1Config, HunYuanMoEV1ForCausalLM

    config = HunYuanMoEV1Config(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        num_experts=4,
        moe_topk=2,
        pad_token_id=0,
    )
    return HunYuanMoEV1ForCausalLM(config)


@scenario(
    "h44_hf_hunyuan_moe_lm",
    "sg_adabelief",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="z-loss added with the wrong sign: log Z is rewarded, not penalised",
)
def h44_hunyuan_zloss_wrong_sign(ctx: Context) -> None:
    """The recipe's z-loss (``1e-1 * logsumexp(logits)**2``, meant to keep log Z near 0) was
    written as ``loss - zloss``: the optimiser is paid to raise log Z. Softmax is shift
    invariant, so the cross-entropy barely notices at first while the head learns a common
    logit offset; log Z runs away (quadratically rewarded) until the logits are so large that
    the cross-entropy breaks down too."""
    gen = seeded(4402)
    model = _hunyuan()
    opt = sgo.AdaBelief(model.parameters(), lr=5e-3)
    seen: dict[str, torch.Tensor] = {}

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        seen["logits"] = m(input_ids=x).logits
        return seen["logits"]

    def wrong_sign_zloss(step: int, loss: torch.Tensor) -> torch.Tensor:
        lse = seen["logits"].float().logsumexp(-1)
        return loss - 1e-1 * lse.pow(2).mean()

    probe, _ = next(text_batches(torch.Generator().manual_seed(2)))
    with torch.no_grad():
        z0 = float(model(input_ids=probe).logits.logsumexp(-1).mean())
    fit(
        ctx,
        model,
        opt,
        text_batches(gen, batch=8),
        150,
        loss_fn=lm_loss,
        forward=forward,
        extra_loss=wrong_sign_zloss,
        classifier=False,
    )
    with torch.no_grad():
        z1 = float(model(input_ids=probe).logits.logsumexp(-1).mean())
    ctx.check(f"log Z ran away ({z0:.1f} -> {z1:.1f})", z1 >= 5 * z0)


def _openai_gpt():
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel

    config = OpenAIGPTConfig(
        vocab_size=128,
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return OpenAIGPTLMHeadModel(config)


@scenario(
    "h44_hf_openai_gpt_lm",
    "adamw",
    "amp_overflow",
    where=("transformer.h.1.mlp", "transformer.h.1.mlp.c_fc"),
    diverges=None,
    heldout=True,
    note="fp16 autocast; a decay typed -25.0 grows c_fc until GELU's x**3 term overflows fp16",
)
def h44_openai_gpt_fp16_gelu_overflow(ctx: Context) -> None:
    """Under fp16 autocast with a GradScaler. The per-module weight-decay table has a sign typo
    for block 1's MLP input projection (``-25.0``): AdamW's decoupled decay multiplies that
    weight by ``1 + lr * 25`` every step, and the block being post-LN, the loss hardly minds.
    GPT's tanh-approximated GELU computes ``x + 0.044715 * x**3`` in fp16: past |x| ~ 40
    ``x**3`` is already inf, which the forward survives (tanh(inf) = 1, derivative 0); once
    c_fc's outputs pass ~148 the backward's ``3 * x**2`` overflows fp16 too, and inf times the
    tanh's zero derivative is NaN. Every gradient is NaN from then on, whatever the loss scale,
    so the GradScaler skips every step and halves its scale to nothing: the run silently stops
    training (the loss stays flat and finite)."""
    gen = seeded(4403)
    model = _openai_gpt()
    c_fc = model.transformer.h[1].mlp.c_fc
    rest = [p for p in model.parameters() if p is not c_fc.weight]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.01}, {"params": [c_fc.weight], "weight_decay": -25.0}],
        lr=2e-3,
    )
    peaks: list[float] = []
    c_fc.register_forward_hook(lambda m, i, o: peaks.append(float(o.detach().float().abs().max())))
    norms: list[float] = []
    scaler = torch.amp.GradScaler("cpu")
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        200,
        loss_fn=lm_loss,
        forward=_lm_forward,
        before=lambda step: norms.append(float(c_fc.weight.detach().norm())),
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    bad = _first_nonfinite(ctx.grad_norms)
    ctx.check("gradients finite, then NaN from one step on", bad is not None and bad > 50)
    if bad is None:
        return
    limit = math.sqrt(65504 / 3)  # ~147.8: beyond it x**3's fp16 gradient 3*x**2 is inf
    ctx.check(
        f"c_fc's output first passed {limit:.1f} at that step ({max(peaks[:bad]):.1f} -> {peaks[bad]:.1f})",
        peaks[bad] > limit and max(peaks[:bad]) < limit and peaks[0] < 1,
    )
    ctx.check("every gradient NaN after it", not any(map(_finite, ctx.grad_norms[bad:])))
    ctx.check(
        "the scaler skipped every step after it (scale collapsed, c_fc frozen)",
        ctx.scales[-1] < 1e-6 and norms[-1] == norms[bad + 1] and norms[bad] > 10 * norms[0],
    )
    ctx.check("the loss stayed finite (no divergence, a stall)", all(map(_finite, ctx.losses)))


def _minimax():
    from transformers import MiniMaxConfig, MiniMaxForCausalLM

    config = MiniMaxConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        layer_types=["linear_attention", "full_attention"],
        block_size=16,
        num_local_experts=4,
        num_experts_per_tok=2,
    )
    return MiniMaxForCausalLM(config)


@scenario("h44_hf_minimax_lm", "sg_lion", "healthy", heldout=True)
def h44_minimax_healthy(ctx: Context) -> None:
    gen = seeded(4404)
    model = _minimax()
    opt = sgo.Lion(model.parameters(), lr=5e-4, weight_decay=0.01)
    fit(
        ctx,
        model,
        opt,
        text_batches(gen),
        220,
        loss_fn=lm_loss,
        forward=_lm_forward,
        classifier=False,
    )
    early, late = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check(f"loss fell ({early:.2f} -> {late:.2f})", late < 0.75 * early)


# -- LayoutLMv3 text-and-layout classifier ------------------------------------------------------


def _layoutlmv3():
    from transformers import LayoutLMv3Config, LayoutLMv3ForSequenceClassification

    config = LayoutLMv3Config(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        coordinate_size=6,
        shape_size=4,
        visual_embed=False,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=2,
        pad_token_id=0,
    )
    return LayoutLMv3ForSequenceClassification(config)


def _layout_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Each token sits in a box determined by its id and position (a generated page layout)."""
    pos = torch.arange(x.shape[1])[None].expand_as(x)
    left = (x * 7) % 900
    top = pos * 50
    bbox = torch.stack([left, top, left + 40 + x % 50, top + 30], -1).clamp(0, 1000)
    return m(input_ids=x, bbox=bbox).logits


@scenario(
    "h44_hf_layoutlmv3_cls",
    "radam",
    "update_ratio_out_of_range",
    where="layoutlmv3.encoder.layer.0",
    diverges=None,
    heldout=True,
    note="layer-wise LR table off by one: layer 0 gets the frozen image-patch slot's 0.0",
)
def h44_layoutlmv3_layer0_lr_zero(ctx: Context) -> None:
    """Layer-wise learning rates come from a table whose first slot is the image-patch
    embedding (0.0: frozen in this text-only run). An off-by-one reads that slot for encoder
    layer 0, so layer 0's every parameter has learning rate 0 for the whole run: it never
    moves, while the rest of the model trains and the loss falls."""
    gen = seeded(4405)
    model = _layoutlmv3()
    table = [0.0, 1.0, 1.0]  # [patch embedding, layer 0, layer 1], read off by one
    layer0 = model.layoutlmv3.encoder.layer[0]
    layer0_ids = {id(p) for p in layer0.parameters()}
    rest = [p for p in model.parameters() if id(p) not in layer0_ids]
    opt = torch.optim.RAdam(
        [{"params": list(layer0.parameters()), "lr": 1e-3 * table[0]}, {"params": rest}], lr=1e-3
    )
    before = {n: p.detach().clone() for n, p in layer0.named_parameters()}
    other = model.layoutlmv3.encoder.layer[1].attention.self.query.weight.detach().clone()
    fit(ctx, model, opt, bert_batches(gen), 220, forward=_layout_forward)
    unchanged = all(torch.equal(before[n], p) for n, p in layer0.named_parameters())
    moved = float((model.layoutlmv3.encoder.layer[1].attention.self.query.weight - other).norm())
    early, late = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check("layer 0 never moved", unchanged)
    ctx.check("layer 1 did move", moved > 1e-2)
    ctx.check(f"the rest trained ({early:.3f} -> {late:.3f})", late < 0.8 * early)


# -- S5-style state-space model (diagonal recurrence, parallel scan) ----------------------------


def _scan(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Inclusive scan of h_t = a_t * h_{t-1} + b_t over dim 1 (Hillis-Steele, log2(T) rounds)."""
    t = a.shape[1]
    d = 1
    while d < t:
        b = torch.cat([b[:, :d], a[:, d:] * b[:, :-d] + b[:, d:]], 1)
        a = torch.cat([a[:, :d], a[:, d:] * a[:, :-d]], 1)
        d *= 2
    return b


class S5Layer(nn.Module):
    """Diagonal linear recurrence x_t = lam * x_{t-1} + B u_t, y_t = C x_t + D u_t."""

    def __init__(self, dim: int, state: int, stable: bool, r_max: float) -> None:
        super().__init__()
        self.stable = stable
        self.B = nn.Linear(dim, state, bias=False)
        self.C = nn.Linear(state, dim, bias=False)
        self.D = nn.Parameter(torch.ones(dim))
        r = torch.linspace(0.5, r_max, state)
        if stable:  # lam = exp(-exp(nu)) stays in (0, 1) whatever nu becomes
            self.nu = nn.Parameter(torch.log(-torch.log(r)))
        else:  # raw eigenvalues, to be clamped to <= 0.999 after every step
            self.lam = nn.Parameter(r)

    def eigenvalues(self) -> torch.Tensor:
        return torch.exp(-torch.exp(self.nu)) if self.stable else self.lam

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        b = self.B(u)
        a = self.eigenvalues().expand_as(b)
        return self.C(_scan(a, b)) + self.D * u


class S5Model(nn.Module):
    def __init__(self, stable: bool, dim: int = 16, state: int = 32, r_max: float = 0.99) -> None:
        super().__init__()
        self.encoder = nn.Linear(2, dim)
        self.ssm = S5Layer(dim, state, stable, r_max)
        self.head = nn.Linear(dim, 1)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        h = self.ssm(self.encoder(u))
        return self.head(h[:, -1]).squeeze(-1)


def _integrator_batches(gen: torch.Generator, batch: int = 32, length: int = 128):
    """A long-memory task: the input is noise plus a marker channel; the target is the running
    sum of the noise over the whole sequence (scaled to unit variance)."""
    while True:
        u = torch.randn(batch, length, 1, generator=gen)
        marker = torch.zeros(batch, length, 1)
        marker[:, -1] = 1.0
        yield torch.cat([u, marker], -1), u.sum((1, 2)) / math.sqrt(length)


@scenario(
    "h44_s5_scan_ssm",
    "nesterov",
    "exploding_gradients",
    where="ssm",
    diverges="auto",
    heldout=True,
    note="the eigenvalue clamp is a no-op (clamp, not clamp_): |lambda| creeps past 1",
)
def h44_s5_unclamped_eigenvalues(ctx: Context) -> None:
    """The S5 layer keeps raw eigenvalues and is meant to clamp them to <= 0.999 after every
    step, but the code calls ``lam.data.clamp(max=0.999)`` (returns a copy) instead of
    ``clamp_``. The integrator task rewards memory, so the eigenvalues are pushed up to 1 and
    past it; over 80-step sequences lam**80 amplifies both the state and the gradients through
    the scan, which grow over a few dozen steps (the SSM's first) until the run breaks."""
    gen = seeded(4406)
    model = S5Model(stable=False, r_max=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    lam_max: list[float] = []

    def clamp_noop(step: int) -> None:
        model.ssm.lam.data.clamp(max=0.999)  # the bug: not in place
        lam_max.append(float(model.ssm.lam.detach().max()))

    fit(
        ctx,
        model,
        opt,
        _integrator_batches(gen, length=80),
        150,
        loss_fn=F.mse_loss,
        before=clamp_noop,
        classifier=False,
    )
    g = ctx.grad_norms
    bad = _first_nonfinite(ctx.losses)
    ctx.check("the run broke (loss non-finite)", bad is not None)
    end = bad if bad is not None else len(g)
    first_over = next((i for i, v in enumerate(lam_max) if v > 1.0), None)
    ctx.check(
        f"an eigenvalue passed 1 before the break (step {first_over})",
        first_over is not None and first_over < end and lam_max[0] < 1.0,
    )
    ctx.check(
        "the gradient norm grew >= 100x before the break",
        max(x for x in g[max(0, end - 20) : end] if _finite(x)) >= 100 * (sum(g[:20]) / 20),
    )


@scenario("h44_s5_scan_ssm", "adadelta", "healthy", heldout=True)
def h44_s5_stable_healthy(ctx: Context) -> None:
    gen = seeded(4407)
    model = S5Model(stable=True)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    fit(ctx, model, opt, _integrator_batches(gen), 250, loss_fn=F.mse_loss, classifier=False)
    early, late = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check(f"loss fell ({early:.3f} -> {late:.3f})", late < 0.6 * early)


# -- WaveRNN-style vocoder ----------------------------------------------------------------------

_LEVELS = 64


def _mulaw(x: torch.Tensor) -> torch.Tensor:
    mu = _LEVELS - 1
    y = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((y + 1) / 2 * mu).round().long().clamp(0, mu)


def _audio_batches(gen: torch.Generator, batch: int = 16, length: int = 64, fixed: bool = False):
    """Generated audio (two partials, random pitch and loudness), mu-law quantised to 64
    classes. Input per step: previous class (as a float) and a conditioning vector (pitch,
    loudness: what a mel frame would give); target: the next class, flattened."""
    while True:
        f0 = 0.03 + 0.05 * torch.rand(batch, 1, generator=gen)
        loud = 0.3 + 0.6 * torch.rand(batch, 1, generator=gen)
        t = torch.arange(length + 1, dtype=torch.float32)[None]
        ph = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        wav = loud * (
            0.7 * torch.sin(2 * math.pi * f0 * t + ph) + 0.3 * torch.sin(4 * math.pi * f0 * t)
        )
        q = _mulaw(wav)
        cond = torch.cat([f0, loud], 1)[:, None].expand(batch, length, 2)
        x = torch.cat([q[:, :-1, None].float(), cond], -1)
        y = q[:, 1:].reshape(-1)
        while True:
            yield x, y
            if not fixed:
                break


class WaveRNN(nn.Module):
    def __init__(self, hidden: int = 64, temperature: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(_LEVELS, 16)
        self.cond = nn.Linear(2, 16)
        self.rnn = nn.GRU(32, hidden, batch_first=True)
        self.fc1 = nn.Linear(hidden, hidden)
        self.fc2 = nn.Linear(hidden, _LEVELS)
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = self.embed(x[..., 0].long())
        h, _ = self.rnn(torch.cat([prev, self.cond(x[..., 1:])], -1))
        logits = self.fc2(F.relu(self.fc1(h))) / self.temperature
        return logits.reshape(-1, _LEVELS)


@scenario(
    "h44_wavernn_vocoder",
    "nadam",
    "softmax_collapse",
    where="fc2",
    diverges="auto",
    heldout=True,
    note="temperature annealed 2.0 * 0.98**step with its floor of 1.0 forgotten: logits x200",
)
def h44_wavernn_temperature_without_floor(ctx: Context) -> None:
    """Fine-tuning the vocoder on a handful of clips of one speaker (the same 16 clips every
    step), with the output temperature annealed from 2.0 (soft targets early) as
    ``2.0 * 0.98**step``; the ``max(T, 1.0)`` floor was forgotten, so by step 300 the head's
    logits are divided by 0.005, i.e. multiplied by ~200. The model fits the clips and the
    growing scale drives the target's probability to exactly 1.0 in float32 on most rows: the
    output softmax has collapsed to one-hot (those rows give a loss of exactly 0 and no
    gradient), and with logits that sharp any small slip on a row costs a loss spike of tens
    of nats (the spikes late in the run)."""
    gen = seeded(4408)
    model = WaveRNN()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    data = _audio_batches(gen, fixed=True)
    x, y = next(data)

    def anneal(step: int) -> None:
        model.temperature = 2.0 * 0.98**step  # the bug: no max(..., 1.0)

    fit(ctx, model, opt, data, 300, before=anneal)
    with torch.no_grad():
        frac = collapsed_fraction(model(x), y)
    ctx.check(f"softmax collapsed to one-hot on >= 50% of rows ({frac:.2f})", frac >= 0.5)


# -- temporal-convolution autoencoder for anomaly scores ---------------------------------------


class TCNAutoencoder(nn.Module):
    def __init__(self, channels: int = 4, width: int = 16, code: int = 8) -> None:
        super().__init__()
        self.enc1 = nn.Conv1d(channels, width, 3, padding=1)
        self.enc2 = nn.Conv1d(width, width, 3, padding=2, dilation=2)
        self.enc3 = nn.Conv1d(width, code, 3, padding=4, dilation=4)
        self.dec1 = nn.Conv1d(code, width, 3, padding=1)
        self.dec2 = nn.Conv1d(width, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.transpose(1, 2)
        h = F.relu(self.enc1(h))
        h = F.relu(self.enc2(h))
        z = F.avg_pool1d(self.enc3(h), 2)
        h = F.relu(self.dec1(F.interpolate(z, scale_factor=2)))
        return self.dec2(h).transpose(1, 2)


def _sensor_batches(gen: torch.Generator, batch: int = 16, length: int = 32):
    while True:
        x = _series(gen, batch, length, 4)
        yield x, x


@scenario("h44_tcn_anomaly_ae", "adamax", "healthy", heldout=True, note="fp16 autocast")
def h44_tcn_ae_fp16_healthy(ctx: Context) -> None:
    gen = seeded(4409)
    model = TCNAutoencoder()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    scaler = torch.amp.GradScaler("cpu")
    fit(
        ctx,
        model,
        opt,
        _sensor_batches(gen),
        220,
        loss_fn=F.mse_loss,
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    early, late = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check(f"reconstruction loss fell ({early:.3f} -> {late:.3f})", late < 0.5 * early)
    ctx.check("every loss finite", all(_finite(v) for v in ctx.losses))
    # the anomaly score separates a glitched window from normal ones
    x, _ = next(_sensor_batches(torch.Generator().manual_seed(4)))
    bad = x.clone()
    bad[:, 20:28, 1] += 4.0
    with torch.no_grad():
        s_ok = ((model(x) - x) ** 2).mean((1, 2))
        s_bad = ((model(bad) - bad) ** 2).mean((1, 2))
    ctx.check("anomaly scores separate glitched windows", float(s_bad.min()) > float(s_ok.median()))


# -- FEDformer-style frequency-enhanced forecaster ---------------------------------------------


class FourierBlock(nn.Module):
    """Mixes channels mode by mode on the lowest ``modes`` Fourier modes (FEDformer's FEB-f)."""

    def __init__(self, dim: int, modes: int) -> None:
        super().__init__()
        self.modes = modes
        scale = 1.0 / dim
        self.w_re = nn.Parameter(scale * torch.randn(modes, dim, dim))
        self.w_im = nn.Parameter(scale * torch.randn(modes, dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        length = x.shape[1]
        xf = torch.fft.rfft(x, dim=1)[:, : self.modes]
        w = torch.complex(self.w_re, self.w_im)
        out = torch.einsum("bmi,mio->bmo", xf, w)
        return torch.fft.irfft(out, n=length, dim=1)


class FEDformer(nn.Module):
    def __init__(
        self, channels: int = 4, context: int = 48, horizon: int = 12, dim: int = 16, modes: int = 8
    ) -> None:
        super().__init__()
        self.horizon, self.channels = horizon, channels
        self.embed = nn.Linear(channels, dim)
        self.fourier = FourierBlock(dim, modes)
        self.norm = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)
        self.seasonal_head = nn.Linear(context * dim, horizon * channels)
        self.trend_head = nn.Linear(context, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # series decomposition: moving-average trend, seasonal remainder
        pad = torch.cat([x[:, :1].expand(-1, 3, -1), x, x[:, -1:].expand(-1, 3, -1)], 1)
        trend = F.avg_pool1d(pad.transpose(1, 2), 7, stride=1).transpose(1, 2)
        h = self.embed(x - trend)
        h = self.norm(h + self.fourier(h))
        h = h + self.ff2(F.gelu(self.ff1(h)))
        seasonal = self.seasonal_head(h.flatten(1)).reshape(-1, self.horizon, self.channels)
        return seasonal + self.trend_head(trend.transpose(1, 2)).transpose(1, 2)


@scenario(
    "h44_fedformer_forecaster",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=0,
    note="warm-up target typed 3.0 instead of 3e-2: the LR ramps past 2/curvature",
)
def h44_fedformer_warmup_target_typo(ctx: Context) -> None:
    """A linear warm-up over 200 steps to a peak typed ``3.0`` instead of ``3e-2``. The run
    trains normally while the rate is small; once it passes the stability limit of the
    forecaster's loss surface (2 / the top Hessian eigenvalue) the loss oscillates and blows
    up, with nothing wrong in any one module."""
    gen = seeded(4410)
    model = FEDformer()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    lrs: list[float] = []

    def warmup(step: int) -> None:
        opt.param_groups[0]["lr"] = 3.0 * min(1.0, (step + 1) / 200)
        lrs.append(opt.param_groups[0]["lr"])

    fit(
        ctx,
        model,
        opt,
        _forecast_batches(gen),
        220,
        loss_fn=F.mse_loss,
        before=warmup,
        classifier=False,
    )
    bad = next(
        (
            i
            for i, v in enumerate(ctx.losses)
            if not (_finite(v) and v < 10 * min(ctx.losses[: i + 1]) + 1)
        ),
        None,
    )
    best = min(ctx.losses[: bad or len(ctx.losses)])
    ctx.check(
        f"trained while the LR was small (best {best:.3f} before the blow-up)",
        best < 0.7 * ctx.losses[0],
    )
    ctx.check(
        f"blew up once the LR was large (step {bad}, LR {lrs[bad] if bad is not None else 0:.2f})",
        bad is not None and bad > 20 and lrs[bad] > 0.3,
    )


@scenario(
    "h44_fedformer_forecaster",
    "asgd",
    "data_outlier",
    diverges=160,
    heldout=True,
    onset=160,
    note="one batch with a sensor logged in raw units (x20)",
)
def h44_fedformer_raw_units_batch(ctx: Context) -> None:
    """At step 160 one batch comes from a site whose logger wrote channel 2 in raw units (x20,
    no standardisation). The loss spikes on that batch; the next batches are clean and the
    forecaster recovers to where it was."""
    gen = seeded(4411)
    model = FEDformer()
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 160:
            x, y = x.clone(), y.clone()
            x[:, :, 2] *= 20.0
            y[:, :, 2] *= 20.0
        return x, y

    fit(
        ctx,
        model,
        opt,
        _forecast_batches(gen),
        320,
        loss_fn=F.mse_loss,
        alter=alter,
        classifier=False,
    )
    before = ctx.losses[140:160]
    after = ctx.losses[-20:]
    ctx.check("loss spiked at 160", ctx.losses[160] > 20 * max(before))
    ctx.check(
        "recovered afterwards",
        sum(after) / 20 < 1.5 * sum(before) / 20 and all(map(_finite, after)),
    )


# -- LSTNet forecaster ---------------------------------------------------------------------------


class LSTNet(nn.Module):
    def __init__(
        self,
        channels: int = 4,
        context: int = 48,
        horizon: int = 12,
        hidden: int = 24,
        skip: int = 12,
        ar_window: int = 12,
        conv_bias: float = 0.0,
    ) -> None:
        super().__init__()
        self.horizon, self.channels, self.skip, self.ar_window = horizon, channels, skip, ar_window
        self.conv = nn.Conv1d(channels, hidden, 6)
        if conv_bias:
            nn.init.constant_(self.conv.bias, conv_bias)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.gru_skip = nn.GRU(hidden, 8, batch_first=True)
        self.fc = nn.Linear(hidden + skip * 8, horizon * channels)
        self.highway = nn.Linear(ar_window, horizon)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        c = self.features(x)  # (b, t', hidden)
        _, h = self.gru(c)
        t = (c.shape[1] // self.skip) * self.skip
        s = c[:, -t:].reshape(b, t // self.skip, self.skip, -1).transpose(1, 2)
        _, hs = self.gru_skip(s.reshape(b * self.skip, t // self.skip, -1))
        z = torch.cat([h[-1], hs[-1].reshape(b, -1)], 1)
        out = self.fc(z).reshape(b, self.horizon, self.channels)
        ar = self.highway(x[:, -self.ar_window :].transpose(1, 2)).transpose(1, 2)
        return out + ar


@scenario(
    "h44_lstnet_forecaster",
    "adagrad",
    "loss_of_plasticity",
    where="conv",
    diverges=None,
    heldout=True,
    note="conv bias initialised to -4 (a gate's init copied): every ReLU unit dead from step 0",
)
def h44_lstnet_dead_conv(ctx: Context) -> None:
    """The convolution's bias was initialised with a constant copied from a gating layer's
    recipe (-4.0). Its pre-activations are all far below zero, so every ReLU unit of the
    convolution is dead from the first step and gets no gradient to come back: the recurrent
    and skip paths see only zeros. The autoregressive highway still fits the seasonal part,
    so the loss falls a little and then stalls well above a working LSTNet's."""
    gen = seeded(4412)
    model = LSTNet(conv_bias=-4.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    fit(ctx, model, opt, _forecast_batches(gen), 220, loss_fn=F.mse_loss, classifier=False)
    x, _ = next(_forecast_batches(torch.Generator().manual_seed(5), batch=128))
    with torch.no_grad():
        dead = dead_fraction(model.features(x))
    ctx.check(f"the conv's ReLU units are dead ({dead:.2f})", dead >= 0.9)


@scenario(
    "h44_lstnet_forecaster",
    "sgd_mom",
    "gradient_spike",
    where="highway.weight",
    diverges=None,
    heldout=True,
    onset=150,
    note="a per-tensor gradient multiplier falls back to its default (200) for one step",
)
def h44_lstnet_gradient_multiplier_fallback(ctx: Context) -> None:
    """The autoregressive highway's gradient is scaled by a hook (a per-tensor LR multiplier,
    read each step from a schedule dict). At step 150 the schedule has no entry and the lookup
    falls back to the dict's default, 200: for one step the gradient on ``highway.weight`` is
    200x (nothing in the batch is unusual). The highway is linear, so the jump it causes is
    undone within a few dozen steps and the run carries on as before."""
    gen = seeded(4418)
    model = LSTNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    state = {"step": -1}
    schedule = {s: 1.0 for s in range(400) if s != 150}
    hw_norms: list[float] = []

    def hook(g: torch.Tensor) -> torch.Tensor:
        g = g * schedule.get(state["step"], 200.0)
        hw_norms.append(float(g.norm()))
        return g

    model.highway.weight.register_hook(hook)

    def before(step: int) -> None:
        state["step"] = step

    fit(
        ctx,
        model,
        opt,
        _forecast_batches(gen),
        260,
        loss_fn=F.mse_loss,
        before=before,
        classifier=False,
    )
    ctx.check(
        "highway.weight's gradient spiked >= 50x at 150",
        hw_norms[150] > 50 * max(hw_norms[140:150]),
    )
    pre = sum(ctx.losses[130:150]) / 20
    post = sum(ctx.losses[-20:]) / 20
    ctx.check(
        f"no lasting damage ({pre:.3f} -> {post:.3f})",
        post <= 1.3 * pre and all(map(_finite, ctx.losses)),
    )


# -- IQN distributional critic on a generated offline bandit -----------------------------------


class IQN(nn.Module):
    def __init__(self, state: int = 8, actions: int = 4, width: int = 64, cos: int = 32) -> None:
        super().__init__()
        self.psi = nn.Sequential(
            nn.Linear(state, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU()
        )
        self.phi = nn.Linear(cos, width)
        self.f1 = nn.Linear(width, width)
        self.f2 = nn.Linear(width, actions)
        self.register_buffer("i_pi", math.pi * torch.arange(1, cos + 1, dtype=torch.float32))

    def forward(self, s: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Quantile values Z_tau(s, .): (batch, n_tau, actions)."""
        e = F.relu(self.phi(torch.cos(tau[..., None] * self.i_pi)))
        h = self.psi(s)[:, None] * e
        return self.f2(F.relu(self.f1(h)))


def _bandit(gen: torch.Generator, batch: int = 64, state: int = 8, actions: int = 4):
    """Logged (state, action, return) triples: each action's return is a state-dependent
    two-component mixture (a risky and a safe mode)."""
    w = torch.randn(actions, state, generator=gen) / math.sqrt(state)
    v = torch.randn(actions, state, generator=gen) / math.sqrt(state)
    while True:
        s = torch.randn(batch, state, generator=gen)
        a = torch.randint(0, actions, (batch,), generator=gen)
        mean = (s * w[a]).sum(1)
        spread = 0.2 + F.softplus((s * v[a]).sum(1))
        risky = torch.rand(batch, generator=gen) < 0.3
        r = (
            mean
            + torch.where(risky, -2.0 * spread, 0.5 * spread)
            + 0.1 * torch.randn(batch, generator=gen)
        )
        yield s, a, r


def _quantile_huber(
    z: torch.Tensor, tau: torch.Tensor, r: torch.Tensor, kappa: float = 1.0
) -> torch.Tensor:
    """z, tau: (batch, n_tau); r: (batch, n_target) target samples."""
    u = r[:, None, :] - z[:, :, None]
    huber = torch.where(u.abs() <= kappa, 0.5 * u**2, kappa * (u.abs() - 0.5 * kappa))
    weight = (tau[:, :, None] - (u.detach() < 0).float()).abs()
    return (weight * huber / kappa).sum(1).mean()


def _iqn_run(ctx: Context, opt_fn, steps: int, seed: int, unscaled_at: int | None):
    """Trains the critic with a static loss scale (kept from an fp16 recipe) that is divided
    out of the gradients before each step; returns the model, the optimiser and each step's
    median absolute parameter update."""
    gen = seeded(seed)
    model = IQN()
    opt = opt_fn(model.parameters())
    ctx.attach(model, opt)
    data = _bandit(gen)
    scale = 2.0**16
    updates: list[float] = []
    for step in range(steps):
        s, a, r = next(data)
        tau = torch.rand(s.shape[0], 16, generator=gen)
        z = model(s, tau).gather(2, a[:, None, None].expand(-1, 16, 1)).squeeze(2)
        # offline targets: 8 samples around the logged return
        loss = _quantile_huber(
            z, tau, r[:, None].expand(-1, 8) + 0.05 * torch.randn(s.shape[0], 8, generator=gen)
        )
        (loss * scale).backward()
        if step != unscaled_at:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(scale)
        ctx.grad_norms.append(
            float(
                torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
            )
        )
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
        delta = torch.cat(
            [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
        )
        updates.append(float(delta.abs().median()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    return model, opt, updates


@scenario(
    "h44_iqn_critic",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=150,
    note="one step's gradients left loss-scaled (x65536) after a resume",
)
def h44_iqn_unscaled_step_poisons_adam(ctx: Context) -> None:
    """The critic's training keeps a static loss scale of 2**16 from an fp16 recipe and divides
    it out of the gradients before ``opt.step()``. On the first step after a resume (step 150)
    the divide is skipped: every gradient is 65536x for one step. Adam's second moment takes
    (1 - beta2) * g**2 of it, which with beta2 = 0.999 stays thousands of times too large for
    thousands of steps: after a brief jump the updates shrink to a crawl and the critic stops
    improving, though nothing is non-finite."""
    model, opt, upd = _iqn_run(
        ctx, lambda p: torch.optim.Adam(p, lr=1e-3), 400, 4414, unscaled_at=150
    )
    g = ctx.grad_norms
    ctx.check("a 65536x gradient at step 150", g[150] > 1e4 * max(g[130:150]))
    pre = sum(upd[100:150]) / 50
    post = sum(upd[200:400]) / 200
    ctx.check(
        f"median update shrank >= 20x over steps 200-400 ({pre:.2e} -> {post:.2e})", post < pre / 20
    )
    ctx.check("the loss stays finite", all(map(_finite, ctx.losses)))


@scenario("h44_iqn_critic", "sg_ademamix", "healthy", heldout=True)
def h44_iqn_healthy(ctx: Context) -> None:
    _iqn_run(ctx, lambda p: sgo.AdEMAMix(p, lr=1e-3), 300, 4415, unscaled_at=None)
    early, late = sum(ctx.losses[:10]) / 10, sum(ctx.losses[-10:]) / 10
    ctx.check(f"loss fell ({early:.3f} -> {late:.3f})", late < 0.6 * early)


# -- behaviour-cloning transformer on generated expert trajectories ---------------------------


class TanhGaussianPolicy(nn.Module):
    """Negative log-likelihood of a dataset action under a tanh-squashed Gaussian."""

    def __init__(self, dim: int, act: int) -> None:
        super().__init__()
        self.mu = nn.Linear(dim, act)
        self.log_std = nn.Linear(dim, act)

    def forward(self, h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        mu, log_std = self.mu(h), self.log_std(h).clamp(-5, 2)
        u = torch.atanh(a)  # pre-squash action
        logp = -0.5 * ((u - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)
        logp = logp - torch.log(1 - a.pow(2))  # change of variables
        return -logp.sum(-1)


class BCTransformer(nn.Module):
    def __init__(self, state: int = 6, act: int = 2, dim: int = 32, length: int = 16) -> None:
        super().__init__()
        self.state, self.act = state, act
        self.embed = nn.Linear(state, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        layer = nn.TransformerEncoderLayer(
            dim, 2, 64, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.policy = TanhGaussianPolicy(dim, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, a = x[..., : self.state], x[..., self.state :]
        t = s.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        h = self.encoder(self.embed(s) + self.pos[:t], mask=mask, is_causal=True)
        return self.policy(h, a)


def _trajectories(
    gen: torch.Generator, batch: int = 32, length: int = 16, state: int = 6, act: int = 2
):
    """Expert rollouts of a generated stable linear system under a saturating linear policy;
    actions stay inside (-0.95, 0.95). Packed as (states | actions)."""
    g = torch.Generator().manual_seed(44)
    a_mat = 0.9 * torch.linalg.qr(torch.randn(state, state, generator=g))[0]
    b_mat = 0.5 * torch.randn(state, act, generator=g)
    k = 0.5 * torch.randn(act, state, generator=g)
    while True:
        s = torch.randn(batch, state, generator=gen)
        ss, aa = [], []
        for _ in range(length):
            a = 0.95 * torch.tanh(s @ k.T + 0.1 * torch.randn(batch, act, generator=gen))
            ss.append(s)
            aa.append(a)
            s = s @ a_mat.T + a @ b_mat.T + 0.05 * torch.randn(batch, state, generator=gen)
        x = torch.cat([torch.stack(ss, 1), torch.stack(aa, 1)], -1)
        yield x, torch.zeros(batch)


def _nll(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return out.mean()


@scenario(
    "h44_bc_transformer",
    "rmsprop",
    "nonfinite",
    where="policy",
    diverges=180,
    heldout=True,
    onset=180,
    note="a clipped actuator logs an action of exactly 1.0: atanh(1) = inf in the policy",
)
def h44_bc_saturated_action_nan(ctx: Context) -> None:
    """At step 180 a trajectory from a run whose actuator hit its limit logs an action of
    exactly 1.0. The policy's log-likelihood inverts the tanh squash (``atanh(a)``) and adds
    ``-log(1 - a**2)``: both are infinite at a = 1, so the policy's output is inf, the loss is
    inf and the backward pass fills every gradient with NaN; RMSprop writes them into the
    weights and the run never recovers."""
    gen = seeded(4416)
    model = BCTransformer()
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-4)
    outputs: list[bool] = []
    model.policy.register_forward_hook(
        lambda m, i, o: outputs.append(bool(torch.isfinite(o).all()))
    )
    inputs: list[bool] = []
    model.policy.register_forward_pre_hook(
        lambda m, i: inputs.append(bool(torch.isfinite(i[0]).all()))
    )

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 180:
            x = x.clone()
            x[3, 9, -1] = 1.0
        return x, y

    fit(ctx, model, opt, _trajectories(gen), 220, loss_fn=_nll, alter=alter, classifier=False)
    finite = [_finite(v) for v in ctx.losses]
    ctx.check("loss finite until 180, not from 180", all(finite[:180]) and not any(finite[180:]))
    ctx.check(
        "at 180 the policy's input was finite and its output not", inputs[180] and not outputs[180]
    )
    ctx.check("the loss fell before 180", ctx.losses[170] < ctx.losses[0] - 1.0)
