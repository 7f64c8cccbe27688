"""Held-out scenarios, set 69 (``h69_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face audio models built from configs on generated tones (Data2VecAudio,
UniSpeechSat, SEW-D, Wav2Vec2-Conformer behind a hand-written cosine head, and the Parakeet
encoder behind a hand-written log-mel front end), a physics-informed network for a damped
oscillator, a neural ODE with a fixed-step RK4 solver on generated spirals, a graph convolutional
network and a graph attention network written by hand on a generated block-model graph, message
passing on generated molecule-like graphs, a TabTransformer on scikit-learn's breast-cancer
table, quantile regression with a pinball loss (diabetes), a Hamiltonian neural network on a
generated pendulum, a SIREN fitting a generated image and a mixture density network on a
generated inverse problem.

Optimizers: AdamW, Adam (with a GradScaler under fp16 autocast), Nesterov SGD, steadygrad's
Lion, NAdam, momentum SGD, plain SGD, Adagrad, Adamax, steadygrad's AdaBelief, ASGD, RMSprop,
RAdam (a control under fp16 autocast with a GradScaler), Adadelta, steadygrad's AdEMAMix and
StableSPAM.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import Context, fit, grad_norm, scenario, seeded

# -- shared pieces ---------------------------------------------------------------------------------

SR = 8000
FREQS = (440.0, 660.0, 990.0, 1485.0)


def tone_batches(gen: torch.Generator, batch: int = 16, length: int = 400):
    """Endless batches of generated tones (four pitch classes, random phase, level and noise)."""
    t = torch.arange(length) / SR
    freqs = torch.tensor(FREQS)
    while True:
        y = torch.randint(0, len(FREQS), (batch,), generator=gen)
        f = freqs[y] * (1 + 0.03 * (torch.rand(batch, generator=gen) - 0.5))
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        level = 0.3 + 0.6 * torch.rand(batch, 1, generator=gen)
        x = level * torch.sin(2 * math.pi * f[:, None] * t + phase)
        yield x + 0.05 * torch.randn(batch, length, generator=gen), y


def _wave_config(**extra) -> dict:
    """A tiny wav2vec2-style config: two conv feature layers (stride 20), two encoder layers."""
    kw = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=len(FREQS),
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        final_dropout=0.0,
        mask_time_prob=0.0,
        num_conv_pos_embeddings=8,
        num_conv_pos_embedding_groups=4,
        classifier_proj_size=16,
        conv_dim=(32, 32),
        conv_stride=(5, 4),
        conv_kernel=(10, 4),
        num_feat_extract_layers=2,
    )
    kw.update(extra)
    return kw


def _hf_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return m(x).logits


def _finite(values: list[float]) -> list[bool]:
    return [math.isfinite(v) for v in values]


def _train(ctx: Context, model: nn.Module, opt, steps: int, step_loss, *, before=None, probe=None):
    """A hand-written loop: ``step_loss(step)`` returns (reported loss, loss to backpropagate)."""
    ctx.attach(model, opt, probe=probe)
    for step in range(steps):
        if before is not None:
            before(step)
        loss, total = step_loss(step)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


def _top_curvature(loss_fn, params: list[torch.Tensor], iters: int = 20) -> float:
    """The largest Hessian eigenvalue of ``loss_fn()`` by power iteration on Hessian-vector
    products."""
    grads = torch.autograd.grad(loss_fn(), params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((x * x).sum() for x in v))
        v = [x / norm for x in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


def _flat(model: nn.Module, prefix: str = "") -> torch.Tensor:
    return torch.cat(
        [
            p.detach().reshape(-1).clone()
            for n, p in model.named_parameters()
            if n.startswith(prefix)
        ]
    )


# -- Hugging Face audio models from configs ------------------------------------------------------


def _d2v_model():
    from transformers import Data2VecAudioConfig, Data2VecAudioForSequenceClassification

    return Data2VecAudioForSequenceClassification(
        Data2VecAudioConfig(**_wave_config(conv_pos_kernel_size=8, num_conv_pos_embeddings=8))
    )


def _attention_logits(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The pre-softmax logits (q.k * scaling) of every encoder attention module on ``x``."""
    found: list[torch.Tensor] = []

    def grab(mod, args, kwargs):
        h = kwargs.get("hidden_states", args[0] if args else None)
        b, t, _ = h.shape
        q = mod.q_proj(h).reshape(b, t, mod.num_heads, -1).transpose(1, 2)
        k = mod.k_proj(h).reshape(b, t, mod.num_heads, -1).transpose(1, 2)
        found.append((q @ k.transpose(-1, -2) * mod.scaling).detach())

    handles = [
        m.register_forward_pre_hook(grab, with_kwargs=True)
        for n, m in model.named_modules()
        if n.endswith(".attention") and hasattr(m, "q_proj")
    ]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return found


@scenario(
    "h69_hf_data2vec_audio_tones",
    "adamw",
    "attention_logit_growth",
    where=(
        "data2vec_audio.encoder.layers.0.attention",
        "data2vec_audio.encoder.layers.1.attention",
    ),
    diverges=None,
    heldout=True,
    note="attention scaling set to sqrt(d) instead of 1/sqrt(d); logits grow until one-hot",
)
def h69_attn_scale_data2vec_audio_adamw(ctx: Context) -> None:
    """A hand port of the attention sets ``scaling = head_dim ** 0.5`` (multiplying q.k by
    sqrt(d) where it should divide): the logits start 16x too large and, with a brisk AdamW
    rate and no QK-norm, q and k keep growing until every attention row is one-hot."""
    gen = seeded(6901)
    model = _d2v_model()
    for layer in model.data2vec_audio.encoder.layers:
        layer.attention.scaling = layer.attention.head_dim**0.5
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    batches = tone_batches(gen)
    probe, _ = next(tone_batches(torch.Generator().manual_seed(99), batch=32))
    start = [float(a.abs().max()) for a in _attention_logits(model, probe)]
    fit(ctx, model, opt, batches, 300, forward=_hf_logits)
    logits = _attention_logits(model, probe)
    end = [float(a.abs().max()) for a in logits]
    top = min(float(a.softmax(-1).amax(-1).mean()) for a in logits)
    gap = min(float((a.amax(-1) - a.mean(-1)).median()) for a in logits)
    ctx.check(
        "attention logits grew 50x in both layers",
        all(e > 50 * s for e, s in zip(end, start, strict=True)),
    )
    ctx.check("attention concentrated: mean top probability > 0.5 (uniform 0.05)", top > 0.5)
    ctx.check("median row gap max - mean logit > 10", gap > 10)


def _unispeech_sat_model():
    from transformers import UniSpeechSatConfig, UniSpeechSatForSequenceClassification

    return UniSpeechSatForSequenceClassification(UniSpeechSatConfig(**_wave_config()))


@scenario(
    "h69_hf_unispeech_sat_tones",
    "adam",
    "amp_overflow",
    where="unispeech_sat.feature_extractor.conv_layers.0.conv",
    diverges=120,
    heldout=True,
    onset=120,
    note="fp16 autocast; an int16 PCM shard not rescaled overflows the first conv",
)
def h69_int16_shard_unispeech_sat_amp(ctx: Context) -> None:
    """Under fp16 autocast. From step 120 the loader reads a shard stored as int16 PCM and
    forgets the 1/32768 rescale: the raw waveform is in the tens of thousands, and the first
    feature-encoder convolution's fp16 output passes 65504 and becomes inf (its GroupNorm would
    have normalised the scale away in float32). The loss is non-finite from then on; the
    GradScaler only skips the steps and keeps halving its scale."""
    gen = seeded(6902)
    model = _unispeech_sat_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    conv = model.unispeech_sat.feature_extractor.conv_layers[0].conv
    peaks: list[float] = []
    conv.register_forward_hook(lambda m, a, out: peaks.append(float(out.detach().abs().max())))

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step >= 120:  # int16 samples, the rescale to [-1, 1] missing
            x = torch.round(x * 32767.0).clamp(-32768, 32767)
        return x, y

    fit(
        ctx,
        model,
        opt,
        tone_batches(gen),
        170,
        alter=alter,
        amp=True,
        scaler=scaler,
        forward=_hf_logits,
    )
    finite = _finite(ctx.losses)
    ctx.check("loss finite before 120, not from 120", all(finite[:120]) and not any(finite[120:]))
    ctx.check("conv 0 output finite and < 65504 before 120", max(peaks[:120]) < 65504)
    ctx.check("conv 0 fp16 output overflowed to inf at 120", math.isinf(peaks[120]))
    ctx.check("the scaler skipped steps (scale fell)", ctx.scales[-1] < ctx.scales[118])


def _sew_d_model():
    from transformers import SEWDConfig, SEWDForSequenceClassification

    config = SEWDConfig(
        **_wave_config(squeeze_factor=1, position_buckets=16, max_position_embeddings=64)
    )
    return SEWDForSequenceClassification(config)


@scenario(
    "h69_hf_sew_d_tones",
    "nesterov",
    "update_ratio_out_of_range",
    where=("projector", "classifier"),
    diverges=None,
    heldout=True,
    note="optimizer built from model.sew_d.parameters(): the new head is never updated",
)
def h69_head_left_out_sew_d_nesterov(ctx: Context) -> None:
    """A fine-tuning script builds its optimizer from ``model.sew_d.parameters()`` (meant to
    put the backbone and the head in two groups, the head group never added): the freshly
    initialised projector and classifier get gradients but are never updated, their update /
    weight ratio is 0. Their small initial weights keep the logits near zero: the loss sits at
    ln 4 for all 250 steps (the same run with the head in the optimizer reaches ~0 by step
    150)."""
    gen = seeded(6903)
    model = _sew_d_model()
    opt = torch.optim.SGD(model.sew_d.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    head0 = _flat(model, "projector"), _flat(model, "classifier")
    body0 = _flat(model, "sew_d.encoder")
    fit(ctx, model, opt, tone_batches(gen), 250, forward=_hf_logits)
    head1 = _flat(model, "projector"), _flat(model, "classifier")
    body1 = _flat(model, "sew_d.encoder")
    ctx.check(
        "projector and classifier never moved",
        all(torch.equal(a, b) for a, b in zip(head0, head1, strict=True)),
    )
    ctx.check("encoder weights moved > 1%", float((body1 - body0).norm() / body0.norm()) > 0.01)
    ctx.check(
        "no optimizer group holds the head",
        not any(
            p is q
            for g in opt.param_groups
            for p in g["params"]
            for q in model.classifier.parameters()
        ),
    )
    ctx.check("loss stuck near ln 4 (chance)", min(ctx.losses[-20:]) > 1.3)


class CosineHead(nn.Module):
    """Cosine classifier with a learnt logit scale, ``exp(log_scale) * cos`` (CLIP / NormFace
    style). CLIP clamps ``log_scale`` at log(100); this one has no clamp."""

    def __init__(self, dim: int, classes: int, init_scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(0.1 * torch.randn(classes, dim))
        self.log_scale = nn.Parameter(torch.tensor(math.log(init_scale)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos


class ConformerCosine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import Wav2Vec2ConformerConfig, Wav2Vec2ConformerModel

        config = Wav2Vec2ConformerConfig(
            **_wave_config(conv_depthwise_kernel_size=5, position_embeddings_type="relative")
        )
        self.encoder = Wav2Vec2ConformerModel(config)
        self.head = CosineHead(32, len(FREQS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).last_hidden_state.mean(1))


@scenario(
    "h69_hf_wav2vec2_conformer_cosine",
    "sg_lion",
    "output_logit_divergence",
    where="head",
    diverges=None,
    heldout=True,
    note="learnt logit scale without CLIP's clamp; Lion walks it up every step",
)
def h69_unclamped_scale_w2v_conformer_lion(ctx: Context) -> None:
    """A cosine classifier head on a Wav2Vec2-Conformer encoder learns its logit scale, and the
    clamp CLIP puts on it (log 100) was left out. Once the tones are separated, every batch asks
    for a larger scale; Lion (the new head given a rate ~70x the encoder's) moves ``log_scale`` up by the full
    step each time, so the logits and log Z grow exponentially and without bound."""
    gen = seeded(6904)
    model = ConformerCosine()
    opt = sgo.Lion(
        [
            {"params": model.encoder.parameters(), "lr": 3e-4},
            {"params": model.head.parameters(), "lr": 2e-2},
        ],
        weight_decay=0.0,
    )
    probe, _ = next(tone_batches(torch.Generator().manual_seed(98), batch=32))
    with torch.no_grad():
        before = model(probe)
    fit(ctx, model, opt, tone_batches(gen, batch=12), 250)
    with torch.no_grad():
        after = model(probe)
    scale = float(model.head.log_scale.detach().exp())
    lse0, lse1 = float(torch.logsumexp(before, -1).mean()), float(torch.logsumexp(after, -1).mean())
    ctx.check("logit scale grew past CLIP's clamp of 100", scale > 100)
    ctx.check("max |logit| grew 10x", float(after.abs().max()) > 10 * float(before.abs().max()))
    ctx.check("log Z grew 10x", lse1 > 10 * lse0)


class LogMelFrontEnd(nn.Module):
    """STFT power through a triangular mel-like filter bank, ``log`` with no floor, then a
    per-utterance normalisation."""

    def __init__(self, n_fft: int = 64, hop: int = 16, bands: int = 16) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))
        bins = n_fft // 2 + 1
        edges = torch.linspace(0, bins - 1, bands + 2)
        k = torch.arange(bins).float()
        lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
        tri = torch.minimum((k - lo) / (mid - lo), (hi - k) / (hi - mid)).clamp(min=0)
        self.register_buffer("fbank", tri)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(
            wave, self.n_fft, self.hop, window=self.window, return_complex=True, center=False
        )
        power = spec.real**2 + spec.imag**2
        logmel = torch.log(self.fbank @ power)
        # per-utterance normalisation (over bands and frames)
        mean, std = logmel.mean((1, 2), keepdim=True), logmel.std((1, 2), keepdim=True)
        logmel = (logmel - mean) / (std + 1e-5)
        return logmel.transpose(1, 2)  # (batch, frames, bands)


class ParakeetTones(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import ParakeetEncoder, ParakeetEncoderConfig

        config = ParakeetEncoderConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            subsampling_factor=4,
            subsampling_conv_channels=16,
            num_mel_bins=16,
            conv_kernel_size=5,
            dropout=0.0,
            layerdrop=0.0,
            activation_dropout=0.0,
            attention_dropout=0.0,
        )
        self.frontend = LogMelFrontEnd()
        self.encoder = ParakeetEncoder(config)
        self.norm = nn.LayerNorm(32)
        self.head = nn.Linear(32, len(FREQS))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        feats = self.frontend(wave)
        return self.head(self.norm(self.encoder(input_features=feats).last_hidden_state.mean(1)))


@scenario(
    "h69_hf_parakeet_logmel",
    "nadam",
    "nonfinite",
    where="frontend",
    diverges=150,
    heldout=True,
    onset=150,
    note="log of a zero-power filter bank on one digitally silent clip",
)
def h69_silent_clip_parakeet_nadam(ctx: Context) -> None:
    """The hand-written log-mel front end takes ``log(fbank @ power)`` with no floor (no
    ``+ 1e-6``, no clamp). Real recordings always carry some noise, so it never mattered, until
    step 150 brings one digitally silent clip (all zeros, a dropped microphone): its power is
    exactly 0, the log gives -inf and the normalisation NaN, the Parakeet encoder carries it
    into the loss, and the NaN
    gradients poison every weight through NAdam's step."""
    gen = seeded(6905)
    model = ParakeetTones()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    bad: list[bool] = []
    model.frontend.register_forward_hook(
        lambda m, a, out: bad.append(not bool(torch.isfinite(out.detach()).all()))
    )

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        if step == 150:
            x = x.clone()
            x[5] = 0.0  # a digitally silent clip
        return x, y

    fit(ctx, model, opt, tone_batches(gen), 190, alter=alter)
    finite = _finite(ctx.losses)
    ctx.check("front end finite before 150, not at 150", not any(bad[:150]) and bad[150])
    ctx.check("loss finite until 150, not from 150", all(finite[:150]) and not any(finite[150:]))
    ctx.check("the model learnt before the fault", ctx.losses[149] < 0.5 * ctx.losses[0])


# -- scientific models in plain PyTorch ------------------------------------------------------------


class TanhNet(nn.Sequential):
    def __init__(self, sizes: list[int]) -> None:
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        super().__init__(*layers)


OMEGA, ZETA = 3.0, 0.15  # the damped oscillator u'' + 2 zeta omega u' + omega^2 u = 0


def _pinn_loss(model: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """ODE residual on the collocation points plus the initial conditions u(0)=1, u'(0)=0."""
    t = t.clone().requires_grad_(True)
    u = model(t)
    du = torch.autograd.grad(u.sum(), t, create_graph=True)[0]
    ddu = torch.autograd.grad(du.sum(), t, create_graph=True)[0]
    residual = ddu + 2 * ZETA * OMEGA * du + OMEGA**2 * u
    t0 = torch.zeros(1, 1, requires_grad=True)
    u0 = model(t0)
    du0 = torch.autograd.grad(u0.sum(), t0, create_graph=True)[0]
    return residual.pow(2).mean() / OMEGA**4 + (u0 - 1).pow(2).mean() + du0.pow(2).mean() / OMEGA**2


@scenario(
    "h69_pinn_damped_oscillator",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=60,
    note="warm-up peak typed 100x; the LR passes 2/curvature during the warm-up",
)
def h69_warmup_typo_pinn_sgd_mom(ctx: Context) -> None:
    """A PINN for a damped oscillator trained with momentum SGD and a linear warm-up. The
    warm-up target was typed 0.5 instead of 5e-3: for 60 steps the run trains normally at the
    tiny base rate, then the warm-up from step 60 to 260 drives the rate up past the stability
    limit of the residual loss (2 / its sharpest curvature) and the loss blows up."""
    torch.manual_seed(6906)
    model = TanhNet([1, 32, 32, 1])
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    t = torch.linspace(0, 3, 96)[:, None]

    limits: dict[int, tuple[float, float]] = {}

    def schedule(step: int) -> None:
        if step >= 60:  # warm-up from 1e-4 to the (mistyped) peak over 200 steps
            opt.param_groups[0]["lr"] = 1e-4 + (0.5 - 1e-4) * min((step - 60) / 200, 1.0)
        if step % 5 == 0:  # the rate against the momentum-SGD limit 2 (1 + beta) / lambda_max
            lam = _top_curvature(lambda: _pinn_loss(model, t), list(model.parameters()))
            limits[step] = (opt.param_groups[0]["lr"], 2 * (1 + 0.9) / max(lam, 1e-12))

    def step_loss(step: int):
        loss = _pinn_loss(model, t)
        return loss, loss

    _train(
        ctx, model, opt, 300, step_loss, before=schedule, probe=(lambda m, b: _pinn_loss(m, b), t)
    )
    first_bad = next((i for i, v in enumerate(ctx.losses) if not v < 1e3), None)
    crossed = next((s for s, (lr, lim) in sorted(limits.items()) if lr > lim), None)
    ctx.check("the loss fell during the first 60 steps", ctx.losses[59] < 0.8 * ctx.losses[0])
    ctx.check(
        "the loss blew up (> 1e3 or non-finite) after step 60",
        first_bad is not None and first_bad > 60,
    )
    ctx.check(
        "the LR passed 2(1+beta)/lambda_max after 60, before the blow-up",
        crossed is not None and 60 < crossed <= first_bad,
    )


SPIRAL = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])  # a damped rotation


def spiral_batches(gen: torch.Generator, batch: int = 32, steps: int = 30, dt: float = 0.1):
    """Endless (initial state, trajectory) pairs of the damped spiral, sampled every ``dt``."""
    flows = torch.stack([torch.matrix_exp(SPIRAL * (k * dt)) for k in range(steps + 1)])
    while True:
        h0 = torch.randn(batch, 2, generator=gen)
        yield h0, torch.einsum("kij,bj->bki", flows, h0)


class ODEFunc(nn.Module):
    def __init__(self, dim: int = 2, hidden: int = 64) -> None:
        super().__init__()
        self.l1 = nn.Linear(dim, hidden)
        self.l2 = nn.Linear(hidden, dim)
        for layer in (self.l1, self.l2):
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.l2(F.softplus(self.l1(h)))


class NeuralODE(nn.Module):
    """dh/dt = func(h), integrated with a fixed-step RK4 solver; returns the whole path."""

    def __init__(self, steps: int = 30, dt: float = 0.1) -> None:
        super().__init__()
        self.func = ODEFunc()
        self.steps, self.dt = steps, dt

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        f, dt, path = self.func, self.dt, [h]
        for _ in range(self.steps):
            k1 = f(h)
            k2 = f(h + dt / 2 * k1)
            k3 = f(h + dt / 2 * k2)
            k4 = f(h + dt * k3)
            h = h + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
            path.append(h)
        return torch.stack(path, 1)


@scenario(
    "h69_neural_ode_rk4_spiral",
    "sgd",
    "exploding_gradients",
    where=("func.l1", "func.l2"),
    diverges="auto",
    heldout=True,
    note="hand-written decoupled decay with its sign flipped inflates the vector field",
)
def h69_decay_sign_neural_ode_sgd(ctx: Context) -> None:
    """A neural ODE (RK4, 30 fixed steps) fitted to damped spirals with plain SGD and a
    hand-written decoupled weight decay, ``p.add_(p, alpha=lr * wd)``, the minus sign lost: the
    weights of the vector field grow ~1% a step. For ~200 steps the fit looks fine; then the
    vector field's Jacobian is large enough that the 30-step flow amplifies perturbations, the
    gradients grow step after step (no clipping) and SGD's steps feed the growth until the run
    breaks."""
    gen = seeded(6907)
    model = NeuralODE()
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    wd = 0.5
    layer_norms: dict[str, list[float]] = {"func.l1": [], "func.l2": []}
    batches = spiral_batches(gen)
    wnorm: list[float] = []
    ctx.attach(model, opt)
    for step in range(400):
        if step > 0:  # the decay of the step before (after its optimizer step), sign flipped
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p, alpha=0.02 * wd)  # should be alpha=-lr * wd
        wnorm.append(float(_flat(model).norm()))
        h0, path = next(batches)
        loss = F.mse_loss(model(h0), path)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        for name in layer_norms:
            layer_norms[name].append(float(model.get_submodule(name).weight.grad.norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(ctx.losses[-1]):
            break
    bad = next((i for i, v in enumerate(ctx.losses) if not v < 1e3), None)
    ctx.check("the loss broke (> 1e3 or non-finite) after step 150", bad is not None and bad > 150)
    if bad is None:
        return
    for name, norms in layer_norms.items():
        calm = sorted(norms[bad - 100 : bad - 70])[15]
        late = sorted(norms[bad - 30 : bad])[15]
        ctx.check(
            f"{name}: median grad norm of the last 30 steps > 10x that of 100-70 before",
            late > 10 * calm,
        )
    ctx.check("vector-field weights inflated 5x before the break", wnorm[bad] > 5 * wnorm[0])


# -- graphs ----------------------------------------------------------------------------------------


def sbm_graph(gen: torch.Generator, nodes: int = 150, classes: int = 3, dim: int = 16):
    """A stochastic block model: adjacency (no self loops), noisy class-mean features, labels."""
    y = torch.arange(nodes) % classes
    same = y[:, None] == y[None, :]
    p = torch.where(same, torch.tensor(0.12), torch.tensor(0.015))
    a = (torch.rand(nodes, nodes, generator=gen) < p).float().triu(1)
    a = a + a.T
    means = torch.randn(classes, dim, generator=gen)
    x = means[y] + 2.0 * torch.randn(nodes, dim, generator=gen)
    train = torch.rand(nodes, generator=gen) < 0.6
    return a, x, y, train


def sym_norm(a: torch.Tensor) -> torch.Tensor:
    """D^-1/2 (A + I) D^-1/2 (Kipf & Welling)."""
    a = a + torch.eye(len(a))
    d = a.sum(1).rsqrt()
    return d[:, None] * a * d[None, :]


class GCN(nn.Module):
    def __init__(self, dim: int = 16, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.gcn1 = nn.Linear(dim, hidden)
        self.gcn2 = nn.Linear(hidden, classes)

    def hidden(self, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(adj @ self.gcn1(x))

    def forward(self, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return adj @ self.gcn2(self.hidden(adj, x))


@scenario(
    "h69_gcn_sbm_nodes",
    "adagrad",
    "loss_of_plasticity",
    where="gcn1",
    diverges=None,
    heldout=True,
    note="A + I used without the D^-1/2 normalisation and an N(0, 1) init: tanh saturates",
)
def h69_unnormalised_adj_gcn_adagrad(ctx: Context) -> None:
    """A GCN written by hand aggregates with the raw ``A + I`` (the symmetric D^-1/2
    normalisation forgotten) and initialises its first layer with ``normal_(std=1)`` copied from
    a tutorial on normalised inputs: each node sums ~8 neighbours of unit-scale projections, the
    first layer's tanh sits at +-1 for almost every unit and node, its gradient is ~0, and that
    layer stops learning from the first step; only the output layer moves."""
    gen = seeded(6908)
    a, x, y, train = sbm_graph(gen)
    adj = a + torch.eye(len(a))  # bug: should be sym_norm(a)
    model = GCN()
    nn.init.normal_(model.gcn1.weight, std=1.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    w1 = model.gcn1.weight.detach().clone()
    w2 = model.gcn2.weight.detach().clone()

    def step_loss(step: int):
        ctx.targets(y[train])
        loss = F.cross_entropy(model(adj, x)[train], y[train])
        return loss, loss

    _train(ctx, model, opt, 200, step_loss)
    with torch.no_grad():
        h = model.hidden(adj, x)
    saturated = float((h.abs() > 0.999).float().mean())
    moved1 = float((model.gcn1.weight.detach() - w1).norm() / w1.norm())
    moved2 = float((model.gcn2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("over 90% of gcn1's tanh outputs saturated (|h| > 0.999)", saturated > 0.9)
    ctx.check("gcn1 moved < 1/10 as much as gcn2", moved1 < 0.1 * moved2)


class GAT(nn.Module):
    """Two single-head graph attention layers (Velickovic et al.), written by hand."""

    def __init__(self, dim: int = 16, hidden: int = 32, classes: int = 3) -> None:
        super().__init__()
        self.gat1 = GATLayer(dim, hidden)
        self.gat2 = GATLayer(hidden, classes)

    def forward(self, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.gat2(mask, F.elu(self.gat1(mask, x)))


class GATLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_in, d_out, bias=False)
        self.att_src = nn.Parameter(0.1 * torch.randn(d_out))
        self.att_dst = nn.Parameter(0.1 * torch.randn(d_out))

    def forward(self, mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        e = F.leaky_relu((h @ self.att_dst)[:, None] + (h @ self.att_src)[None, :], 0.2)
        att = torch.softmax(e.masked_fill(~mask, float("-inf")), dim=1)
        return att @ h


@scenario("h69_gat_sbm_nodes", "adadelta", "healthy", heldout=True)
def h69_control_gat_adadelta(ctx: Context) -> None:
    """Control: a hand-written GAT (self loops included) on a block-model graph, Adadelta."""
    gen = seeded(6909)
    a, x, y, train = sbm_graph(gen)
    mask = (a + torch.eye(len(a))) > 0
    model = GAT()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def step_loss(step: int):
        ctx.targets(y[train])
        loss = F.cross_entropy(model(mask, x)[train], y[train])
        return loss, loss

    _train(ctx, model, opt, 200, step_loss)
    with torch.no_grad():
        acc = float((model(mask, x).argmax(1) == y)[~train].float().mean())
    ctx.check("loss fell by half", ctx.losses[-1] < 0.5 * ctx.losses[0])
    ctx.check("held-out node accuracy > 0.7", acc > 0.7)
    ctx.check("all losses finite", all(_finite(ctx.losses)))


def molecule_batches(gen: torch.Generator, batch: int = 16):
    """Endless batches of generated molecule-like graphs with an additive "energy".

    Yields (atom types, edge index (2, E) both directions, bond orders, graph id per atom,
    standardised energy per graph)."""
    atom_e = torch.tensor([-1.0, -0.5, 0.3, 0.8])
    bond_e = torch.tensor(
        [
            [0.2, -0.3, 0.1, 0.4],
            [-0.3, 0.5, -0.2, 0.0],
            [0.1, -0.2, 0.3, -0.4],
            [0.4, 0.0, -0.4, 0.6],
        ]
    )
    while True:
        types, src, dst, orders, graph, energy, offset = [], [], [], [], [], [], 0
        for g in range(batch):
            n = int(torch.randint(5, 11, (1,), generator=gen))
            t = torch.randint(0, 4, (n,), generator=gen)
            parent = [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
            pairs = list(zip(range(1, n), parent, strict=True))
            o = torch.randint(1, 3, (len(pairs),), generator=gen).float()
            e = float(atom_e[t].sum())
            for (i, j), order in zip(pairs, o.tolist(), strict=True):
                e += order * float(bond_e[t[i], t[j]])
                src += [i + offset, j + offset]
                dst += [j + offset, i + offset]
                orders += [order, order]
            types.append(t)
            graph += [g] * n
            energy.append(e / 4.0)
            offset += n
        yield (
            torch.cat(types),
            torch.tensor([src, dst]),
            torch.tensor(orders),
            torch.tensor(graph),
            torch.tensor(energy),
        )


class MPNN(nn.Module):
    """Message passing with edge features, residual updates and a sum readout."""

    def __init__(self, dim: int = 32, rounds: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, dim)
        self.message = nn.ModuleList(nn.Linear(2 * dim + 1, dim) for _ in range(rounds))
        self.update = nn.ModuleList(nn.Linear(2 * dim, dim) for _ in range(rounds))
        self.readout = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))

    def forward(self, types, edges, orders, graph, graphs: int) -> torch.Tensor:
        h = self.embed(types)
        src, dst = edges
        for msg, upd in zip(self.message, self.update, strict=True):
            m = F.silu(msg(torch.cat([h[src], h[dst], orders[:, None]], 1)))
            agg = torch.zeros_like(h).index_add_(0, dst, m)
            h = h + F.silu(upd(torch.cat([h, agg], 1)))
        pooled = torch.zeros(graphs, h.shape[1]).index_add_(0, graph, h)
        return self.readout(pooled).squeeze(1)


@scenario(
    "h69_mpnn_molecules",
    "adamax",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=60,
    note="one batch in meV instead of eV: Adamax's infinity norm holds the giant gradient",
)
def h69_mev_label_mpnn_adamax(ctx: Context) -> None:
    """Message passing on generated molecules, trained with Adamax. At step 60 one batch comes
    from a shard whose energies are in meV, not eV (x1000): one giant gradient on every tensor. Adamax's
    infinity-norm state u = max(beta2 u, |g|) takes the giant value and decays by only 0.1% a
    step, so for hundreds of steps every update is damped: the loss, knocked up by the first
    steps after the spike, stays ~10x above that of the same run without the bad batch."""

    def run(bad: bool, attach: Context | None):
        gen = seeded(6910)
        model = MPNN()
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        batches = molecule_batches(gen)
        moves: list[float] = []  # update size per unit of gradient
        losses: list[float] = []
        if attach is not None:
            attach.attach(model, opt)
        for step in range(300):
            types, edges, orders, graph, energy = next(batches)
            if bad and step == 60:
                energy = energy * 1000.0  # a batch from a shard in meV, not eV
            loss = F.mse_loss(model(types, edges, orders, graph, len(energy)), energy)
            loss.backward()
            before, g = _flat(model), grad_norm(model)
            if attach is not None:
                attach.grad_norms.append(g)
            opt.step()
            moves.append(float((_flat(model) - before).norm()) / max(g, 1e-12))
            losses.append(float(loss.detach()))
            if attach is not None:
                attach.step(loss)
            opt.zero_grad(set_to_none=True)
        return losses, moves

    L, moves = run(True, ctx)
    clean_L, clean_moves = run(False, None)  # the same run without the bad batch
    ratio = sum(moves[100:300]) / sum(clean_moves[100:300])
    ctx.check("loss spiked at 60", L[60] > 100 * max(L[50:60]))
    ctx.check("update per unit gradient (steps 100-300) < 1/10 of the clean run's", ratio < 0.1)
    ctx.check("final loss (250-300) > 2x the clean run's", sum(L[250:]) > 2 * sum(clean_L[250:]))


# -- tables ----------------------------------------------------------------------------------------


def cancer_table(gen: torch.Generator, cat_cols: tuple[int, ...] = (0, 3, 7, 20, 23, 27)):
    """Breast cancer: six columns quantile-binned into 8 categories; the rest raw, with their
    mean and standard deviation."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target)
    cont_cols = [c for c in range(x.shape[1]) if c not in cat_cols]
    qs = torch.quantile(x[:, list(cat_cols)], torch.linspace(0, 1, 9)[1:-1], dim=0)
    cats = torch.stack(
        [
            torch.bucketize(x[:, c].contiguous(), qs[:, i].contiguous())
            for i, c in enumerate(cat_cols)
        ],
        1,
    )
    raw = x[:, cont_cols]
    mean, std = raw.mean(0), raw.std(0)
    return cats, raw, mean, std, y


class TabTransformer(nn.Module):
    """Column embeddings of the categorical columns through a transformer encoder, concatenated
    with the layer-normed continuous columns, then an MLP (Huang et al. 2020)."""

    def __init__(self, n_cat: int = 6, n_cont: int = 24, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(n_cat * 8, dim)
        self.register_buffer("offsets", torch.arange(n_cat) * 8)
        self.column = nn.Parameter(0.02 * torch.randn(n_cat, dim))
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.cont_norm = nn.LayerNorm(n_cont)
        self.mlp = nn.Sequential(nn.Linear(n_cat * dim + n_cont, 64), nn.ReLU(), nn.Linear(64, 2))

    def forward(self, cats: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
        tokens = self.encoder(self.embed(cats + self.offsets) + self.column)
        return self.mlp(torch.cat([tokens.flatten(1), self.cont_norm(cont)], 1))


@scenario(
    "h69_tabtransformer_cancer",
    "sg_adabelief",
    "data_outlier",
    diverges=140,
    heldout=True,
    onset=140,
    note="one batch from a shard with the opposite label encoding",
)
def h69_flipped_shard_tabtransformer_adabelief(ctx: Context) -> None:
    """A TabTransformer on the breast-cancer table. The batch of step 140 comes from a shard
    exported with the opposite label encoding (1 = malignant where the rest has 0): the
    features are fine, the labels of that one batch are all flipped, so the loss spikes on it,
    the one step it drives is wrong, and the run recovers within a few dozen steps."""
    gen = seeded(6911)
    cats, raw, mean, std, y = cancer_table(gen)
    model = TabTransformer()
    opt = sgo.AdaBelief(model.parameters(), lr=1e-3)

    def step_loss(step: int):
        idx = torch.randint(0, len(y), (32,), generator=gen)
        target = y[idx]
        if step == 140:
            target = 1 - target  # a shard exported with the opposite label encoding
        ctx.targets(target)
        loss = F.cross_entropy(model(cats[idx], (raw[idx] - mean) / std), target)
        return loss, loss

    _train(ctx, model, opt, 220, step_loss)
    L = ctx.losses
    ctx.check("loss spiked 5x at 140", L[140] > 5 * max(L[125:140]))
    ctx.check(
        "recovered: mean loss of 190-220 below 1.5x that of 120-140",
        sum(L[190:220]) / 30 < 1.5 * sum(L[120:140]) / 20,
    )


def diabetes_split(gen: torch.Generator):
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    x = torch.tensor(d.data, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    return x, y


TAUS = torch.tensor([0.1, 0.5, 0.9])


def pinball(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    err = y[:, None] - pred
    return torch.maximum(TAUS * err, (TAUS - 1) * err).mean()


@scenario(
    "h69_quantile_pinball_diabetes",
    "asgd",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=100,
    note="L2 penalty subtracted instead of added from step 100",
)
def h69_l2_sign_quantile_asgd(ctx: Context) -> None:
    """Quantile regression (10th, 50th, 90th percentiles) of diabetes progression with a
    pinball loss and ASGD. From step 100 (after a "no regularisation during warm-up" switch)
    the L2 penalty is applied as ``loss - wd * ||w||^2``, the sign typed wrong: every weight is
    now pushed away from zero a little each step. The weights inflate, the quantile outputs
    grow, and the pinball loss climbs slowly and steadily: nothing spikes, nothing saturates."""
    gen = seeded(6912)
    x, y = diabetes_split(gen)
    model = nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3)
    )
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    wd = 0.1
    weights: list[float] = []

    def step_loss(step: int):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        loss = pinball(model(x[idx]), y[idx])
        weights.append(float(_flat(model).norm()))
        if step < 100:
            return loss, loss
        l2 = sum(p.pow(2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss, loss - wd * l2  # should be + wd * l2

    _train(ctx, model, opt, 500, step_loss)
    L = ctx.losses
    ctx.check("the loss fell before step 100", sum(L[80:100]) < 0.8 * sum(L[:20]))
    ctx.check("the loss climbed 3x over its minimum", max(L[-20:]) > 3 * min(L[:100]))
    ctx.check("weights inflated 3x after step 100", weights[-1] > 3 * weights[100])


# -- Hamiltonian net, SIREN, mixture density network -----------------------------------------------


def pendulum_batch(gen: torch.Generator, batch: int = 128):
    """States (q, p) of a pendulum (H = p^2/2 + 1 - cos q) and their time derivatives."""
    q = (torch.rand(batch, generator=gen) - 0.5) * 2 * math.pi * 0.8
    p = (torch.rand(batch, generator=gen) - 0.5) * 4.0
    dq, dp = p, -torch.sin(q)
    noise = 0.01 * torch.randn(batch, 2, generator=gen)
    return torch.stack([q, p], 1), torch.stack([dq, dp], 1) + noise


class HNN(nn.Module):
    """H_theta(q, p); the vector field is its symplectic gradient (dH/dp, -dH/dq)."""

    def __init__(self) -> None:
        super().__init__()
        self.h = TanhNet([2, 64, 64, 1])

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        s = s.requires_grad_(True)
        dh = torch.autograd.grad(self.h(s).sum(), s, create_graph=True)[0]
        return torch.stack([dh[:, 1], -dh[:, 0]], 1)


@scenario(
    "h69_hnn_pendulum",
    "rmsprop",
    "loss_spike",
    diverges=301,
    heldout=True,
    onset=300,
    note="a resume restores the weights but not RMSprop's square averages",
)
def h69_resume_without_state_hnn_rmsprop(ctx: Context) -> None:
    """A Hamiltonian net on a pendulum, trained with RMSprop. At step 300 the job is resumed
    from a checkpoint that restored the model but not the optimizer state: RMSprop's square
    averages start again from zero, and with no bias correction its first updates are ~10x the
    usual size on every weight (g / sqrt(0.01 g^2)). The loss jumps on the next step; the
    square averages refill over a few dozen steps and the loss comes back down. The data and
    the gradients are ordinary."""
    gen = seeded(6913)
    model = HNN()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    from collections import defaultdict

    def resume(step: int) -> None:
        if step == 300:
            opt.state = defaultdict(dict)  # optimizer.load_state_dict(...) was never called

    def step_loss(step: int):
        s, target = pendulum_batch(gen)
        loss = F.mse_loss(model(s), target)
        return loss, loss

    _train(ctx, model, opt, 420, step_loss, before=resume)
    L, g = ctx.losses, ctx.grad_norms
    ctx.check("loss jumped 5x at 301", L[301] > 5 * max(L[280:300]))
    ctx.check("gradient at 300 ordinary (< 2x the max of 280-300)", g[300] < 2 * max(g[280:300]))
    ctx.check(
        "recovered: mean loss of 380-420 below 2x that of 280-300",
        sum(L[380:420]) / 40 < 2 * sum(L[280:300]) / 20,
    )


class Sine(nn.Module):
    def __init__(self, d_in: int, d_out: int, w0: float, first: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.w0 = w0
        bound = 1 / d_in if first else math.sqrt(6 / d_in) / w0
        nn.init.uniform_(self.linear.weight, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.w0 * self.linear(x))


class Siren(nn.Module):
    def __init__(self, hidden: int = 64, w0: float = 30.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Sine(2, hidden, w0, first=True), Sine(hidden, hidden, w0), Sine(hidden, hidden, w0)
        )
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.net(x)).squeeze(-1)


def rings_image(size: int = 48):
    """A generated image (rings and a bar) and its pixel coordinates in [-1, 1]^2."""
    c = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    r = torch.sqrt(xx**2 + yy**2)
    img = torch.sin(12 * r) * torch.exp(-2 * r) + 0.5 * (xx.abs() < 0.15).float() * (yy > 0).float()
    return torch.stack([xx, yy], -1).reshape(-1, 2), img.reshape(-1)


@scenario("h69_siren_image", "sg_ademamix", "healthy", heldout=True)
def h69_control_siren_ademamix(ctx: Context) -> None:
    """Control: a SIREN (w0 = 30, the paper's init) fitting a generated image, AdEMAMix."""
    gen = seeded(6914)
    coords, img = rings_image()
    model = Siren()
    opt = sgo.AdEMAMix(model.parameters(), lr=2e-4)

    def step_loss(step: int):
        idx = torch.randint(0, len(img), (256,), generator=gen)
        loss = F.mse_loss(model(coords[idx]), img[idx])
        return loss, loss

    _train(ctx, model, opt, 200, step_loss)
    L = ctx.losses
    ctx.check("loss fell 5x", sum(L[-20:]) < 0.2 * sum(L[:20]))
    ctx.check("all losses finite", all(_finite(L)))


class MDN(nn.Module):
    def __init__(self, k: int = 5, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.pi = nn.Linear(hidden, k)
        self.mu = nn.Linear(hidden, k)
        self.log_sigma = nn.Linear(hidden, k)

    def nll(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        log_pi = torch.log_softmax(self.pi(h), -1)
        log_sigma = self.log_sigma(h).clamp(-7, 5)
        z = (y - self.mu(h)) / log_sigma.exp()
        log_n = -0.5 * z**2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return -torch.logsumexp(log_pi + log_n, -1).mean()


@scenario("h69_mdn_inverse_problem", "sg_stablespam", "healthy", heldout=True)
def h69_control_mdn_stablespam(ctx: Context) -> None:
    """Control: a mixture density network (5 Gaussians) on the classic inverse problem
    x = y + 0.3 sin(2 pi y) + noise, predicting the multi-valued y from x; StableSPAM."""
    gen = seeded(6915)
    model = MDN()
    opt = sgo.StableSPAM(model.parameters(), lr=1e-3)

    def step_loss(step: int):
        y = torch.rand(128, 1, generator=gen)
        x = y + 0.3 * torch.sin(2 * math.pi * y) + 0.1 * torch.randn(128, 1, generator=gen)
        loss = model.nll(x - 0.5, y)
        return loss, loss

    _train(ctx, model, opt, 400, step_loss)
    L = ctx.losses
    ctx.check("NLL fell by 1 nat", sum(L[-20:]) / 20 < sum(L[:20]) / 20 - 1.0)
    ctx.check("all losses finite", all(_finite(L)))


@scenario("h69_hf_data2vec_audio_tones", "radam", "healthy", heldout=True)
def h69_control_data2vec_audio_amp_radam(ctx: Context) -> None:
    """Control: the Data2VecAudio tone classifier with its attention scaling as shipped,
    RAdam, under fp16 autocast with a GradScaler."""
    gen = seeded(6916)
    model = _d2v_model()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    fit(ctx, model, opt, tone_batches(gen), 160, amp=True, scaler=scaler, forward=_hf_logits)
    L = ctx.losses
    ctx.check("loss fell by half", sum(L[-20:]) < 0.5 * sum(L[:20]))
    ctx.check("all losses finite", all(_finite(L)))
