"""Held-out scenarios, set 99 (``h99_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing and records the losses).

Families: Hugging Face Audio Spectrogram Transformer (generated spectrograms), Florence-2
(generated coloured-square images with generated captions; a control), ZoeDepth (depth of
generated scenes) and Grounding DINO (a generated coloured square found from colour queries; a
control), all from tiny configs; hand-written ESRGAN-style super-resolution (RRDB blocks,
generated images, fp16 autocast with a GradScaler; a fault and a control), FastPitch-style TTS
(duration and pitch predictors, generated phonemes and frames), wav2letter (1-D conv CTC on
generated audio features), CoCa (contrastive captioner), DRQN (recurrent Q-network on a generated
T-maze), SINDy-style sparse regression of a generated ODE, PSPNet pyramid-pooling segmenter on
generated scenes, Point Transformer on generated point clouds, Squeezeformer-style ASR encoder
(CTC) and sketch-RNN (mixture-density pen strokes, generated strokes; a fault and a control).

Optimizers: Adam, AdamW, SGD (plain, momentum, Nesterov), RMSprop, Adagrad, NAdam, RAdam and
Adamax.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    fit,
    grad_norm,
    scenario,
    seeded,
)

# -- shared pieces -------------------------------------------------------------------------------


def _loop(
    ctx: Context,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    steps: int,
    compute,
    *,
    before=None,
    clip: float | None = None,
    scaler=None,
    amp: bool = False,
) -> None:
    """A hand-written loop: ``compute(step)`` returns (loss to record, loss to backpropagate)."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            loss, total = compute(step)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)


class _Quiet(Context):
    """A reference run beside the scenario's own: attaches nothing, records the losses."""

    def attach(self, model, optimizer, *, probe=None, scaler=None):
        return None

    def step(self, loss: torch.Tensor) -> None:
        self.losses.append(float(loss.detach()))


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _first_nonfinite(xs) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


_COLOURS = torch.tensor(
    [[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9], [0.9, 0.8, 0.1]], dtype=torch.float32
)


def _square_images(gen: torch.Generator, batch: int, size: int = 32):
    """Images of one coloured square on a grey noisy background: (images, colour, quadrant,
    big, box cx cy w h in [0, 1])."""
    colour = torch.randint(0, 4, (batch,), generator=gen)
    quadrant = torch.randint(0, 4, (batch,), generator=gen)
    big = torch.randint(0, 2, (batch,), generator=gen)
    img = 0.4 + 0.05 * torch.randn(batch, 3, size, size, generator=gen)
    boxes = torch.zeros(batch, 4)
    for i in range(batch):
        side = size // 3 if big[i] else size // 5
        q = int(quadrant[i])
        x0 = (q % 2) * size // 2 + int(torch.randint(0, size // 2 - side + 1, (1,), generator=gen))
        y0 = (q // 2) * size // 2 + int(torch.randint(0, size // 2 - side + 1, (1,), generator=gen))
        img[i, :, y0 : y0 + side, x0 : x0 + side] = _COLOURS[colour[i]][:, None, None]
        boxes[i] = torch.tensor(
            [(x0 + side / 2) / size, (y0 + side / 2) / size, side / size, side / size]
        )
    return img, colour, quadrant, big, boxes


# -- Audio Spectrogram Transformer (HF): attention logits grow -----------------------------------


def _spectrograms(gen: torch.Generator, batch: int = 32, frames: int = 32, mels: int = 32):
    """Generated log-mel spectrograms of four sounds: low tone, high tone, up- and down-chirp."""
    t = torch.arange(frames).float()
    mel = torch.arange(mels).float()
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        start = 4 + 6 * torch.rand(batch, generator=gen)
        slope = torch.where(y == 2, 0.5, torch.where(y == 3, -0.5, 0.0))
        base = start + torch.where((y == 1) | (y == 3), 16.0, 0.0)
        centre = base[:, None] + slope[:, None] * t
        spec = torch.exp(-0.5 * ((mel[None, None, :] - centre[:, :, None]) / 1.5) ** 2)
        spec = spec + 0.4 * torch.rand(batch, frames, mels, generator=gen)
        yield (torch.log(spec + 1e-2) + 2.0) / 2.0, y


def _ast(labels: int = 4):
    from transformers import ASTConfig, ASTForAudioClassification

    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        patch_size=8,
        max_length=32,
        num_mel_bins=32,
        frequency_stride=8,
        time_stride=8,
        num_labels=labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = ASTForAudioClassification(config)
    emb = model.audio_spectrogram_transformer.embeddings
    with torch.no_grad():  # DeiT/AST's init (the config leaves them at zero: a 1e3 first gradient)
        for p in (emb.cls_token, emb.distillation_token, emb.position_embeddings):
            p.normal_(0.0, 0.02)
    return model


def _attention_logits(model, x: torch.Tensor) -> tuple[float, float]:
    """Largest |q.k| / sqrt(d_head) over the AST layers, and the mean attention entropy."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if name.endswith("attention.q_proj") or name.endswith("attention.k_proj"):
            hooks.append(mod.register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o)))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    heads = model.config.num_attention_heads
    biggest, entropy = 0.0, []
    for name in seen:
        if not name.endswith("q_proj"):
            continue
        q, k = seen[name], seen[name[: -len("q_proj")] + "k_proj"]
        b, t, d = q.shape
        q = q.reshape(b, t, heads, -1).transpose(1, 2)
        k = k.reshape(b, t, heads, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
        biggest = max(biggest, float(logits.abs().max()))
        p = logits.softmax(-1)
        entropy.append(float(-(p * p.clamp_min(1e-30).log()).sum(-1).mean()))
    return biggest, _mean(entropy)


@scenario(
    "hf_audio_spectrogram_transformer",
    "adamw",
    "attention_logit_growth",
    where=(
        "audio_spectrogram_transformer.layers.0.attention",
        "audio_spectrogram_transformer.layers.1.attention",
    ),
    diverges=None,
    heldout=True,
    note="a param-group rule meant to exempt q/k from weight decay sets weight_decay=-30 "
    "(sign bug): AdamW's decoupled decay grows the query and key weights 3% a step, the "
    "attention logits grow by orders of magnitude and the attention collapses to one patch",
)
def h99_ast_qk_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(9901)
    torch.set_num_threads(1)
    model = _ast()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if "q_proj" not in n and "k_proj" not in n]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.01}, {"params": qk, "weight_decay": -30.0}], lr=1e-3
    )
    batches = _spectrograms(gen)
    probe = next(_spectrograms(torch.Generator().manual_seed(1)))[0]
    logit0, ent0 = _attention_logits(model, probe)
    fit(ctx, model, opt, batches, 160, forward=lambda m, x: m(x).logits)
    logit1, ent1 = _attention_logits(model, probe)
    ctx.check("attention logits grew at least 30x", logit1 >= 30 * logit0)
    ctx.check("attention entropy fell below a quarter", ent1 <= 0.25 * ent0)
    ctx.check("loss stayed finite", _finite(ctx.losses))


# -- ESRGAN-style super-resolution: fp16 overflow in the RRDB trunk ------------------------------


def _sr_batches(gen: torch.Generator, batch: int = 8, size: int = 16):
    """Generated HR images (sums of oriented sinusoids and a bright square) and their 2x-down LR."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    while True:
        f = 0.2 + 0.8 * torch.rand(batch, 3, 2, generator=gen)
        phase = 6.28 * torch.rand(batch, 3, 1, 1, generator=gen)
        hr = 0.5 + 0.25 * torch.sin(f[..., 0, None, None] * xx + f[..., 1, None, None] * yy + phase)
        corner = torch.randint(0, size - 6, (batch, 2), generator=gen)
        for i in range(batch):
            r, c = int(corner[i, 0]), int(corner[i, 1])
            hr[i, :, r : r + 6, c : c + 6] = 0.9
        yield F.avg_pool2d(hr, 2), hr


class _DenseBlock(nn.Module):
    def __init__(self, nf: int, gc: int, scale: float) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(nf + i * gc, gc if i < 3 else nf, 3, padding=1) for i in range(4)
        )
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        out = x
        for i, conv in enumerate(self.convs):
            out = conv(torch.cat(feats, 1))
            if i < 3:
                out = F.leaky_relu(out, 0.2)
                feats.append(out)
        return x + self.scale * out


class _RRDB(nn.Module):
    def __init__(self, nf: int, gc: int, scale: float) -> None:
        super().__init__()
        self.dense = nn.Sequential(*(_DenseBlock(nf, gc, scale) for _ in range(3)))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale * self.dense(x)


class _ESRGAN(nn.Module):
    def __init__(self, nf: int = 16, gc: int = 8, blocks: int = 3, scale: float = 0.2) -> None:
        super().__init__()
        self.conv_first = nn.Conv2d(3, nf, 3, padding=1)
        self.body = nn.Sequential(*(_RRDB(nf, gc, scale) for _ in range(blocks)))
        self.conv_body = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_up = nn.Conv2d(nf, nf, 3, padding=1)
        self.conv_last = nn.Conv2d(nf, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = F.leaky_relu(self.conv_up(F.interpolate(feat, scale_factor=2.0)), 0.2)
        return self.conv_last(feat)


def _esrgan_init(model: _ESRGAN, gain: float) -> None:
    """ESRGAN's init: Kaiming normal, scaled by ``gain`` (0.1 in the paper) inside the trunk."""
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=0.2)
            if name.startswith("body"):
                m.weight.data.mul_(gain)
            nn.init.zeros_(m.bias)


def _overflow_module(model: nn.Module, x: torch.Tensor) -> str | None:
    """The first RRDB block whose fp16 output holds an inf."""
    bad: list[str] = []
    hooks = [
        m.register_forward_hook(
            lambda mod, i, o, n=n: bad.append(n) if not torch.isfinite(o).all() else None
        )
        for n, m in model.named_modules()
        if n.startswith("body.") and n.count(".") == 1
    ]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        model(x)
    for h in hooks:
        h.remove()
    return bad[0] if bad else None


@scenario(
    "esrgan_rrdb",
    "adam",
    "amp_overflow",
    where="body.2",
    diverges=0,
    heldout=True,
    note="an ESRGAN port keeps EDSR's rgb_range=255 (pixels in 0..255), trains in fp16 "
    "autocast with a GradScaler and dropped the 0.2 residual scaling and 0.1 init scaling of "
    "the RRDB trunk: the dense connections of the third RRDB pass fp16's 65504 (about 1e5 in "
    "fp32) from the first step, every step is inf, the scaler skips it and its scale collapses",
)
def h99_esrgan_fp16_unscaled_residuals(ctx: Context) -> None:
    gen = seeded(9902)
    torch.set_num_threads(1)
    model = _ESRGAN(blocks=3, scale=1.0)
    _esrgan_init(model, gain=1.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    probe = next(_sr_batches(torch.Generator().manual_seed(1)))[0] * 255.0
    with torch.no_grad():
        fp32_ok = bool(torch.isfinite(model(probe)).all())
    where = _overflow_module(model, probe)
    batches = ((lr * 255.0, hr * 255.0) for lr, hr in _sr_batches(gen))
    fit(
        ctx,
        model,
        opt,
        batches,
        40,
        loss_fn=F.l1_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the same forward is finite in fp32", fp32_ok)
    ctx.check("the fp16 loss is non-finite from the first step", not math.isfinite(ctx.losses[0]))
    ctx.check("nine steps in ten overflow", sum(not math.isfinite(v) for v in ctx.losses) >= 36)
    ctx.check("the overflow sits in body.2", where == "body.2")
    ctx.check("the scaler's scale collapsed below 1", min(ctx.scales) < 1.0)


@scenario(
    "esrgan_rrdb",
    "adam",
    "healthy",
    heldout=True,
    note="the same ESRGAN in fp16 autocast with a GradScaler, with the paper's 0.2 residual "
    "scaling and 0.1 trunk init",
)
def h99_esrgan_fp16_healthy(ctx: Context) -> None:
    gen = seeded(9903)
    torch.set_num_threads(1)
    model = _ESRGAN(blocks=2, scale=0.2)
    _esrgan_init(model, gain=0.1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu")
    fit(
        ctx,
        model,
        opt,
        _sr_batches(gen),
        100,
        loss_fn=F.l1_loss,
        classifier=False,
        scaler=scaler,
        amp=True,
    )
    ctx.check("loss stayed finite", _finite(ctx.losses))
    ctx.check("loss fell by half", _mean(ctx.losses[-20:]) < 0.5 * _mean(ctx.losses[:5]))
    ctx.check("the scaler kept a usable scale", ctx.scales[-1] >= 1.0)


# -- FastPitch-style TTS: one batch with pitch in Hz -------------------------------------------


_SYMBOLS, _MELS, _FRAMES = 12, 16, 48


def _tts_batches(gen: torch.Generator, batch: int = 16, length: int = 10):
    """Generated utterances: symbols, per-symbol durations (1-4 frames), normalised pitch and
    the mel frames (each symbol a fixed spectral template shifted by its pitch)."""
    table = torch.Generator().manual_seed(99)
    templates = torch.rand(_SYMBOLS, _MELS, generator=table)
    pitch_of = torch.randn(_SYMBOLS, generator=table) * 0.5
    while True:
        sym = torch.randint(0, _SYMBOLS, (batch, length), generator=gen)
        dur = torch.randint(1, 5, (batch, length), generator=gen)
        pitch = pitch_of[sym] + 0.3 * torch.randn(batch, length, generator=gen)
        index = torch.zeros(batch, _FRAMES, dtype=torch.long)
        mask = torch.zeros(batch, _FRAMES)
        for b in range(batch):
            idx = torch.repeat_interleave(torch.arange(length), dur[b])[:_FRAMES]
            index[b, : len(idx)] = idx
            mask[b, : len(idx)] = 1.0
        frame_pitch = pitch.gather(1, index)
        mel = templates[sym.gather(1, index)] + 0.3 * frame_pitch[..., None]
        mel = mel * mask[..., None]
        yield sym, dur, pitch, index, mask, mel


class _ConvStack(nn.Module):
    def __init__(self, dim: int, layers: int = 2) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(dim, dim, 3, padding=1) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            x = norm(x + F.relu(conv(x.transpose(1, 2)).transpose(1, 2)))
        return x


class _Predictor(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = _ConvStack(dim, 2)
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x)).squeeze(-1)


class _FastPitch(nn.Module):
    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(_SYMBOLS, dim)
        self.encoder = _ConvStack(dim, 2)
        self.duration_predictor = _Predictor(dim)
        self.pitch_predictor = _Predictor(dim)
        self.pitch_embed = nn.Conv1d(1, dim, 3, padding=1)
        self.decoder = _ConvStack(dim, 2)
        self.proj = nn.Linear(dim, _MELS)

    def forward(self, sym, pitch, index):
        h = self.encoder(self.embed(sym))
        log_dur = self.duration_predictor(h)
        pitch_pred = self.pitch_predictor(h)
        h = h + self.pitch_embed(pitch[:, None, :]).transpose(1, 2)
        frames = h.gather(1, index[..., None].expand(-1, -1, h.shape[-1]))
        return self.proj(self.decoder(frames)), log_dur, pitch_pred


def _fastpitch_loss(model, batch):
    sym, dur, pitch, index, mask, mel = batch
    mel_pred, log_dur, pitch_pred = model(sym, pitch, index)
    mel_loss = (((mel_pred - mel) ** 2).mean(-1) * mask).sum() / mask.sum()
    dur_loss = F.mse_loss(log_dur, torch.log(dur.float()))
    pitch_loss = F.mse_loss(pitch_pred, pitch)
    return mel_loss + 0.1 * dur_loss + 0.1 * pitch_loss


@scenario(
    "fastpitch_tts",
    "sgd_mom",
    "data_outlier",
    diverges=90,
    onset=90,
    heldout=True,
    note="one batch from a speaker whose pitch was never normalised (targets and pitch input "
    "in Hz, 100-300) at step 90: the loss is ~1e5 times the run's, SGD with momentum "
    "throws the weights far off and the run never comes back",
)
def h99_fastpitch_pitch_in_hz_batch(ctx: Context) -> None:
    gen = seeded(9904)
    torch.set_num_threads(1)
    model = _FastPitch()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    batches = _tts_batches(gen)

    def compute(step):
        batch = list(next(batches))
        if step == 90:
            batch[2] = 200.0 + 50.0 * batch[2]  # Hz, not z-scores
        loss = _fastpitch_loss(model, batch)
        return loss, loss

    _loop(ctx, model, opt, 200, compute)
    before = _mean(ctx.losses[70:90])
    after = [v if math.isfinite(v) else 1e30 for v in ctx.losses[95:]]
    ctx.check("loss fell before the outlier", before < 0.6 * _mean(ctx.losses[:5]))
    ctx.check("the outlier batch's loss is 100x the run's", ctx.losses[90] > 100 * before)
    ctx.check("the loss never came back (10x above)", min(after) > 10 * before)


# -- wav2letter: log of a silent clip -----------------------------------------------------------


_BINS, _AFRAMES, _LABELS, _LENGTH = 16, 64, 6, 5


def _speech_batches(gen: torch.Generator, batch: int = 16):
    """Generated power features: each label a two-band spectral template held 8-12 frames,
    over a small positive noise floor; targets for CTC."""
    table = torch.Generator().manual_seed(98)
    templates = torch.zeros(_LABELS, _BINS)
    for c in range(_LABELS):
        bands = torch.randperm(_BINS, generator=table)[:2]
        templates[c, bands] = 1.0 + torch.rand(2, generator=table)
    while True:
        y = torch.randint(1, _LABELS + 1, (batch, _LENGTH), generator=gen)
        x = 0.02 + 0.05 * torch.rand(batch, _BINS, _AFRAMES, generator=gen)
        for b in range(batch):
            t = int(torch.randint(0, 5, (1,), generator=gen))
            for j in range(_LENGTH):
                d = int(torch.randint(8, 12, (1,), generator=gen))
                x[b, :, t : t + d] += templates[y[b, j] - 1][:, None]
                t += d + 1
        in_lens = torch.full((batch,), _AFRAMES // 2, dtype=torch.long)
        tgt_lens = torch.full((batch,), _LENGTH, dtype=torch.long)
        yield x, (y, in_lens, tgt_lens)


class _LogFrontend(nn.Module):
    """Log compression and per-utterance normalisation of power features."""

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.log(x + self.eps)
        mean = x.mean((1, 2), keepdim=True)
        std = x.std((1, 2), keepdim=True)
        return (x - mean) / (std + 1e-5)


class _Wav2Letter(nn.Module):
    def __init__(self, eps: float = 0.0, width: int = 32) -> None:
        super().__init__()
        self.frontend = _LogFrontend(eps)
        self.convs = nn.Sequential(
            nn.Conv1d(_BINS, width, 11, stride=2, padding=5),
            nn.ReLU(),
            nn.Conv1d(width, width, 7, padding=3),
            nn.ReLU(),
            nn.Conv1d(width, width, 7, padding=3),
            nn.ReLU(),
            nn.Conv1d(width, 2 * width, 1),
            nn.ReLU(),
        )
        self.head = nn.Conv1d(2 * width, _LABELS + 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.convs(self.frontend(x)))
        return out.permute(2, 0, 1).log_softmax(-1)  # (T, B, C) for CTC


def _ctc(out: torch.Tensor, y) -> torch.Tensor:
    targets, in_lens, tgt_lens = y
    return F.ctc_loss(out, targets, in_lens, tgt_lens)


@scenario(
    "wav2letter_ctc",
    "sgd",
    "nonfinite",
    where="frontend",
    diverges=150,
    onset=150,
    heldout=True,
    note="the log-compression frontend has no epsilon; at step 150 one clip of the batch is "
    "digital silence (all-zero power): log(0) = -inf, the per-utterance normalisation turns "
    "it into NaN and SGD writes NaN into every weight",
)
def h99_wav2letter_log_of_silent_clip(ctx: Context) -> None:
    gen = seeded(9905)
    torch.set_num_threads(1)
    model = _Wav2Letter(eps=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    seen = {}

    def alter(step, x, y):
        if step == 150:
            x = x.clone()
            x[3] = 0.0
            seen["x"] = x
        return x, y

    fit(ctx, model, opt, _speech_batches(gen), 180, loss_fn=_ctc, alter=alter, classifier=False)
    with torch.no_grad():
        front = model.frontend(seen["x"])
    ctx.check("loss finite before step 150", _finite(ctx.losses[:150]))
    ctx.check(
        "loss fell below the blank plateau before the silent clip",
        _mean(ctx.losses[140:150]) < 0.7 * _mean(ctx.losses[10:20]),
    )
    ctx.check("loss non-finite from step 150", _first_nonfinite(ctx.losses) == 150)
    ctx.check("the frontend's output is NaN for the silent clip", bool(front[3].isnan().all()))
    ctx.check("the other clips stay finite in the frontend", bool(front[:3].isfinite().all()))


# -- CoCa: the z-loss with its sign flipped ----------------------------------------------------


_CAP_VOCAB, _CAP_LEN = 16, 5  # 0 pad, 1 bos, 2 eos, 3-6 colours, 7-8 sizes, 9-12 quadrants


def _caption_batches(gen: torch.Generator, batch: int = 16, size: int = 16):
    while True:
        img, colour, quadrant, big, _ = _square_images(gen, batch, size)
        cap = torch.stack(
            [
                torch.ones_like(colour),
                3 + colour,
                7 + big,
                9 + quadrant,
                torch.full_like(colour, 2),
            ],
            1,
        )
        yield img, cap


class _CoCa(nn.Module):
    """Image encoder (patches + attentional pooler), unimodal text decoder, multimodal decoder
    with cross-attention to the image tokens, and a contrastive head between the two CLS."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.image_pos = nn.Parameter(torch.randn(1, 16, dim) * 0.02)
        self.image_encoder = nn.TransformerEncoderLayer(dim, heads, 2 * dim, 0.0, batch_first=True)
        self.pool_query = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pooler = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.tok = nn.Embedding(_CAP_VOCAB, dim)
        self.text_pos = nn.Parameter(torch.randn(1, _CAP_LEN + 1, dim) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.unimodal = nn.TransformerEncoderLayer(dim, heads, 2 * dim, 0.0, batch_first=True)
        self.multimodal = nn.TransformerDecoderLayer(dim, heads, 2 * dim, 0.0, batch_first=True)
        self.ln = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, _CAP_VOCAB)

    def forward(self, img: torch.Tensor, cap_in: torch.Tensor):
        patches = self.patch(img).flatten(2).transpose(1, 2) + self.image_pos
        image_tokens = self.image_encoder(patches)
        image_cls, _ = self.pooler(
            self.pool_query.expand(len(img), -1, -1), image_tokens, image_tokens
        )
        t = cap_in.shape[1]
        text = torch.cat([self.tok(cap_in), self.cls.expand(len(img), -1, -1)], 1)
        text = text + self.text_pos[:, : t + 1]
        causal = torch.triu(torch.full((t + 1, t + 1), float("-inf")), 1)
        text = self.unimodal(text, src_mask=causal)
        text_cls = text[:, -1]
        hidden = self.multimodal(text[:, :t], image_tokens, tgt_mask=causal[:t, :t])
        return (
            self.lm_head(self.ln(hidden)),
            F.normalize(image_cls[:, 0], dim=-1),
            F.normalize(text_cls, dim=-1),
        )


@scenario(
    "coca_captioner",
    "radam",
    "output_logit_divergence",
    where="lm_head",
    diverges="auto",
    heldout=True,
    note="the captioning loss carries a z-loss (3e-2 x log Z^2) meant to keep the output logits "
    "near zero, added with its sign flipped: it rewards a large log-partition, the caption "
    "logits drift out without bound and the caption loss climbs back up",
)
def h99_coca_zloss_sign_flipped(ctx: Context) -> None:
    gen = seeded(9907)
    torch.set_num_threads(1)
    model = _CoCa()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    batches = _caption_batches(gen)
    log_z: list[float] = []

    def compute(step):
        img, cap = next(batches)
        logits, image_emb, text_emb = model(img, cap[:, :-1])
        caption = F.cross_entropy(logits.reshape(-1, _CAP_VOCAB), cap[:, 1:].reshape(-1))
        sim = image_emb @ text_emb.T / 0.1
        labels = torch.arange(len(img))
        contrastive = 0.5 * (F.cross_entropy(sim, labels) + F.cross_entropy(sim.T, labels))
        z = torch.logsumexp(logits, -1)
        log_z.append(float(z.detach().abs().mean()))
        loss = caption + contrastive
        return loss, loss - 3e-2 * (z**2).mean()  # the bug: "+ 3e-2 * z^2" intended

    _loop(ctx, model, opt, 300, compute)
    ok = [v for v in ctx.losses if math.isfinite(v)]
    best = min(ok)
    ctx.check("the loss fell first", best < 0.5 * ctx.losses[0])
    ctx.check("|log Z| of the caption logits grew 10x", max(log_z[-20:]) > 10 * log_z[10])
    ctx.check(
        "the loss climbed back to twice its best",
        max(v if math.isfinite(v) else 1e30 for v in ctx.losses[-30:]) > 2 * best,
    )


# -- DRQN: one unscaled reward poisons Adam's second moment -------------------------------------


_MAZE_LEN = 6


def _maze_batches(gen: torch.Generator, batch: int = 32):
    """Generated T-maze episodes under a random policy: the cue (left/right) shows only in
    the first observation; at the last step the action must match it (+1) or not (-1)."""
    while True:
        cue = torch.randint(0, 2, (batch,), generator=gen)
        obs = torch.zeros(batch, _MAZE_LEN, 4)
        obs[torch.arange(batch), 0, cue] = 1.0
        obs[:, 1:-1, 2] = 1.0
        obs[:, -1, 3] = 1.0
        obs = obs + 0.1 * torch.randn(obs.shape, generator=gen)
        actions = torch.randint(0, 2, (batch, _MAZE_LEN), generator=gen)
        rewards = torch.zeros(batch, _MAZE_LEN)
        rewards[:, -1] = torch.where(actions[:, -1] == cue, 1.0, -1.0)
        yield obs, actions, rewards, cue


class _DRQN(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.q_head = nn.Linear(hidden, 2)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(F.relu(self.encoder(obs)))
        return self.q_head(h)


def _td_loss(model, target, obs, actions, rewards, gamma: float = 0.9) -> torch.Tensor:
    q = model(obs).gather(2, actions[..., None]).squeeze(-1)
    with torch.no_grad():
        nxt = target(obs).max(-1).values
        boot = torch.cat([nxt[:, 1:], torch.zeros(len(obs), 1)], 1)
    return F.mse_loss(q, rewards + gamma * boot)


def _maze_success(model, gen_seed: int = 5) -> float:
    obs, _, _, cue = next(_maze_batches(torch.Generator().manual_seed(gen_seed), 256))
    with torch.no_grad():
        return float((model(obs)[:, -1].argmax(-1) == cue).float().mean())


def _drqn_run(ctx: Context | None, glitch: int | None, steps: int = 300):
    """Train the DRQN (Adam, a target network copied every 20 steps); returns the model, the
    per-step moves of the Q head's row for the glitched action, and that row's largest Adam
    second moment per step."""
    gen = seeded(9908)
    model = _DRQN()
    target = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = _maze_batches(gen)
    moves: list[float] = []
    v_max: list[float] = []
    row = [0]
    last = [model.q_head.weight.detach().clone()]

    def compute(step):
        if step % 20 == 0:
            target.load_state_dict(model.state_dict())
        obs, actions, rewards, _ = next(batches)
        if step == glitch:
            rewards = rewards.clone()
            rewards[7, -1] = 1e6  # the simulator's raw score, not the clipped reward
            row[0] = int(actions[7, -1])
        loss = _td_loss(model, target, obs, actions, rewards)
        return loss, loss

    def track(step):
        w = model.q_head.weight.detach()
        moves.append(float((w[row[0]] - last[0][row[0]]).norm()))
        last[0] = w.clone()
        state = opt.state.get(model.q_head.weight, {})
        v_max.append(float(state["exp_avg_sq"][row[0]].max()) if "exp_avg_sq" in state else 0.0)

    if ctx is None:
        for step in range(steps):
            compute(step)[1].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    else:
        _loop(ctx, model, opt, steps, compute, before=track)
    return model, moves, v_max


@scenario(
    "drqn_tmaze",
    "adam",
    "adam_second_moment_poisoned",
    where=("q_head", "gru", "encoder"),
    diverges=None,
    onset=40,
    heldout=True,
    note="rewards are meant to be clipped to [-1, 1]; at step 40 one transition carries the "
    "simulator's raw score (1e6): that one TD error multiplies Adam's second moment of every "
    "layer (Q head, GRU, encoder) by ~1e9, and with beta2 = 0.999 the weights barely move for "
    "the rest of the run: the Q-values are never fitted, the TD loss stays ~100x the "
    "unpoisoned run's",
)
def h99_drqn_unclipped_reward_poisons_adam(ctx: Context) -> None:
    torch.set_num_threads(1)
    model, moves, v_max = _drqn_run(ctx, glitch=40)
    reference = _Quiet("reference", ctx.run_dir)
    clean, _, _ = _drqn_run(reference, glitch=None)
    ctx.check("Adam's second moment of the Q head jumped 1e6x", v_max[45] > 1e6 * v_max[39])
    ctx.check(
        "the poisoned Q-head row's steps shrank 30x after the glitch",
        _mean(moves[120:300]) < _mean(moves[10:40]) / 30,
    )
    ctx.check(
        "the TD loss of the last 50 steps stays 10x the unpoisoned run's",
        _mean(ctx.losses[-50:]) > 10 * _mean(reference.losses[-50:]),
    )
    ctx.check(
        "the unpoisoned run learns the cue (the task is learnable)", _maze_success(clean) > 0.9
    )


# -- SINDy: a warm-up that climbs past 2 / sharpness --------------------------------------------


def _sindy_library(x: torch.Tensor) -> torch.Tensor:
    """Polynomial library up to degree 2 of the state (unnormalised, as SINDy builds it)."""
    cols = [torch.ones(len(x), 1), x]
    n = x.shape[1]
    for i in range(n):
        for j in range(i, n):
            cols.append((x[:, i] * x[:, j])[:, None])
    return torch.cat(cols, 1)


def _sindy_data(gen: torch.Generator, n: int = 2000):
    """States of a damped Duffing-like oscillator (x' = y, y' = -0.5x - 0.1y - 0.05 x^3
    folded into degree 2 terms) sampled over a box, and their noisy derivatives."""
    x = 4.0 * (2 * torch.rand(n, 2, generator=gen) - 1)
    dx = torch.stack([x[:, 1], -0.5 * x[:, 0] - 0.1 * x[:, 1] + 0.2 * x[:, 0] * x[:, 1]], 1)
    return _sindy_library(x), dx + 0.01 * torch.randn(n, 2, generator=gen)


@scenario(
    "sindy_regression",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    onset=60,
    heldout=True,
    note="gradient-descent SINDy on an unnormalised degree-2 library: the linear warm-up was "
    "tuned on standardised features and its learning rate passes 2 / lambda_max of the "
    "least-squares Hessian at step 60; the top curvature direction then oscillates and grows",
)
def h99_sindy_warmup_past_curvature(ctx: Context) -> None:
    gen = seeded(9909)
    torch.set_num_threads(1)
    theta, dx = _sindy_data(gen)
    lam = float(torch.linalg.eigvalsh(2 * theta.T @ theta / len(theta)).max())
    model = nn.Linear(theta.shape[1], 2, bias=False)
    nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    peak = 3.0 / lam  # 1.5x the stability limit 2 / lam
    limit_step = int(math.ceil(90 * (2.0 / lam) / peak))

    def lr_at(step):
        return peak * min(step / 90, 1.0)

    def before(step):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)

    def batches():
        while True:
            yield theta, dx

    fit(
        ctx,
        model,
        opt,
        batches(),
        200,
        loss_fn=lambda out, y: F.mse_loss(out, y) * 2,
        before=before,
        classifier=False,
    )
    ctx.check("lr passes 2 / lambda_max near step 60", abs(limit_step - 60) <= 5)
    best = min(ctx.losses)
    ctx.check("the loss fell first", ctx.losses[limit_step] < 0.2 * ctx.losses[0])
    ctx.check(
        "the loss grew 100x from its best after the limit",
        max(v if math.isfinite(v) else 1e30 for v in ctx.losses[limit_step:]) > 100 * best,
    )


# -- PSPNet: a learning-rate restart kills the bottleneck's ReLUs --------------------------------


def _scene_batches(gen: torch.Generator, batch: int = 8, size: int = 32):
    """Generated scenes: a disc and a square (random colours, sizes, places) on a textured
    background; per-pixel labels 0 background, 1 disc, 2 square."""
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    while True:
        img = 0.3 + 0.1 * torch.randn(batch, 3, size, size, generator=gen)
        lab = torch.zeros(batch, size, size, dtype=torch.long)
        for i in range(batch):
            r = 4 + 4 * float(torch.rand(1, generator=gen))
            cx, cy = (6 + 20 * torch.rand(2, generator=gen)).tolist()
            disc = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            side = int(torch.randint(5, 11, (1,), generator=gen))
            x0, y0 = torch.randint(0, size - side, (2,), generator=gen).tolist()
            square = torch.zeros(size, size, dtype=torch.bool)
            square[y0 : y0 + side, x0 : x0 + side] = True
            img[i][:, disc] = torch.rand(3, 1, generator=gen)
            img[i][:, square] = torch.rand(3, 1, generator=gen)
            lab[i][disc] = 1
            lab[i][square] = 2
        yield img, lab


class _PSPNet(nn.Module):
    def __init__(self, width: int = 16, bins=(1, 2, 4), classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=2, dilation=2),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
        )
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(2 * width, width // 2, 1), nn.ReLU())
            for b in bins
        )
        self.bottleneck = nn.Conv2d(2 * width + len(bins) * (width // 2), 2 * width, 3, padding=1)
        self.classifier = nn.Conv2d(2 * width, classes, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        size = f.shape[-2:]
        pooled = [F.interpolate(branch(f), size=size, mode="bilinear") for branch in self.ppm]
        return F.relu(self.bottleneck(torch.cat([f, *pooled], 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.classifier(self.features(x))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear")


@scenario(
    "pspnet_segmenter",
    "sgd_nesterov",
    "loss_of_plasticity",
    where="bottleneck",
    diverges=None,
    onset=100,
    heldout=True,
    note="an activation-sparsity penalty on the bottleneck's ReLU output is switched on at step "
    "100, summed over pixels and channels where it should be averaged (thousands of times too "
    "strong): within twenty steps it pushes every bottleneck unit below zero, the ReLUs die, "
    "no gradient reaches them again and the segmenter is stuck near the class prior",
)
def h99_pspnet_sparsity_penalty_kills_bottleneck(ctx: Context) -> None:
    gen = seeded(9910)
    torch.set_num_threads(1)
    model = _PSPNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    batches = _scene_batches(gen)
    probe = next(_scene_batches(torch.Generator().manual_seed(3)))[0]
    dead: list[float] = []

    def compute(step):
        x, y = next(batches)
        feats = model.features(x)
        logits = F.interpolate(model.classifier(feats), size=x.shape[-2:], mode="bilinear")
        loss = F.cross_entropy(logits, y)
        penalty = feats.sum((1, 2, 3)).mean() * 3e-2 if step >= 100 else 0.0
        return loss, loss + penalty

    def before(step):
        if step % 10 == 0:
            model.eval()
            with torch.no_grad():
                dead.append(dead_fraction(model.features(probe)))
            model.train()

    _loop(ctx, model, opt, 200, compute, before=before)
    ctx.check(
        "the segmenter learned before the penalty", _mean(ctx.losses[90:100]) < 0.4 * ctx.losses[0]
    )
    ctx.check("under half the bottleneck units dead before", dead[10] < 0.5)
    ctx.check("every bottleneck unit dead from step 120", min(dead[12:]) >= 0.99)
    ctx.check(
        "the loss never got back (2x above its pre-penalty level)",
        min(ctx.losses[120:]) > 2 * _mean(ctx.losses[90:100]),
    )


# -- Point Transformer: an unclamped logit scale collapses the softmax ---------------------------


def _point_clouds(gen: torch.Generator, batch: int = 24, points: int = 32):
    """Generated point clouds of four shapes (sphere, cube surface, cylinder, cone), randomly
    scaled, rotated about z and jittered."""
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        u = torch.rand(batch, points, 3, generator=gen) * 2 - 1
        sphere = F.normalize(torch.randn(batch, points, 3, generator=gen), dim=-1)
        face = torch.randint(0, 3, (batch, points), generator=gen)
        cube = u.clone()
        sign = torch.where(torch.rand(batch, points, generator=gen) < 0.5, -1.0, 1.0)
        cube.scatter_(2, face[..., None], sign[..., None])
        angle = 6.2832 * u[..., 0]
        cyl = torch.stack([angle.cos(), angle.sin(), u[..., 1]], -1)
        h = (u[..., 1] + 1) / 2
        cone = torch.stack([(1 - h) * angle.cos(), (1 - h) * angle.sin(), 2 * h - 1], -1)
        shapes = torch.stack([sphere, cube, cyl, cone], 1)
        pts = shapes[torch.arange(batch), y]
        theta = 6.2832 * torch.rand(batch, generator=gen)
        c, s = theta.cos(), theta.sin()
        rot = torch.stack(
            [
                torch.stack([c, -s, 0 * c], -1),
                torch.stack([s, c, 0 * c], -1),
                torch.eye(3)[2].expand(batch, 3),
            ],
            1,
        )
        pts = pts @ rot.transpose(1, 2)
        pts = pts * (0.7 + 0.6 * torch.rand(batch, 1, 1, generator=gen))
        yield pts + 0.02 * torch.randn(pts.shape, generator=gen), y


class _PointTransformerLayer(nn.Module):
    """Vector self-attention over the k nearest neighbours (Zhao et al. 2021)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.phi = nn.Linear(dim, dim)
        self.psi = nn.Linear(dim, dim)
        self.alpha = nn.Linear(dim, dim)
        self.delta = nn.Sequential(nn.Linear(3, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.gamma = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, p: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        b, n, k = idx.shape
        flat = idx.reshape(b, n * k)

        def gather(t):
            return t.gather(1, flat[..., None].expand(-1, -1, t.shape[-1])).reshape(b, n, k, -1)

        pos = self.delta(p[:, :, None] - gather(p))
        w = self.gamma(self.phi(x)[:, :, None] - gather(self.psi(x)) + pos).softmax(2)
        return x + self.out((w * (gather(self.alpha(x)) + pos)).sum(2))


class _CosineHead(nn.Module):
    """A cosine classifier with a learnable logit scale (CLIP-style, here without its clamp)."""

    def __init__(self, dim: int, classes: int, scale: float = 10.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        cos = F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T
        return self.log_scale.exp() * cos


class _PointTransformer(nn.Module):
    def __init__(self, dim: int = 32, k: int = 8, classes: int = 4) -> None:
        super().__init__()
        self.k = k
        self.embed = nn.Sequential(nn.Linear(3, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.layers = nn.ModuleList(_PointTransformerLayer(dim) for _ in range(2))
        self.norm = nn.LayerNorm(dim)
        self.head = _CosineHead(dim, classes)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            idx = torch.cdist(p, p).topk(self.k, largest=False).indices
        x = self.embed(p)
        for layer in self.layers:
            x = layer(x, p, idx)
        return self.head(self.norm(x).max(1).values)


@scenario(
    "point_transformer",
    "nadam",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="a port of a CLIP-style cosine head initialises its log logit scale with 1 / 0.07 "
    "(the scale) instead of log(1 / 0.07): the logits are cosines times e^14.3 ~ 1.6e6, the "
    "float32 softmax gives the target exactly 1.0 on every correctly classified cloud (zero "
    "gradient) and a one-hot error on the rest, for the whole run",
)
def h99_point_transformer_logit_scale_not_logged(ctx: Context) -> None:
    gen = seeded(9911)
    torch.set_num_threads(1)
    model = _PointTransformer()
    with torch.no_grad():
        model.head.log_scale.fill_(1 / 0.07)  # the bug: math.log(1 / 0.07) intended
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    probe = next(_point_clouds(torch.Generator().manual_seed(4), batch=128))
    fit(ctx, model, opt, _point_clouds(gen), 250)
    with torch.no_grad():
        logits = model(probe[0])
        scale = float(model.head.log_scale.exp())
    collapsed = collapsed_fraction(logits, probe[1])
    accuracy = float((logits.argmax(1) == probe[1]).float().mean())
    ctx.check("the logit scale stayed above 1e5", scale > 1e5)
    ctx.check("most probe clouds collapsed", collapsed >= 0.75)
    ctx.check("every correctly classified cloud collapsed", collapsed >= accuracy - 1e-6)
    zero = sum(v == 0.0 and g == 0.0 for v, g in zip(ctx.losses, ctx.grad_norms, strict=True))
    ctx.check("some steps had exactly zero loss and zero gradient", zero >= 5)


# -- Squeezeformer-style ASR encoder: a layer-decay typo freezes the bottom ----------------------


class _SqueezeBlock(nn.Module):
    """Squeezeformer's MF/CF block: MHSA, FFN, conv module, FFN, each post-LN with a residual."""

    def __init__(self, dim: int, heads: int = 2) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln1 = nn.LayerNorm(dim)
        self.ff1 = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))
        self.ln2 = nn.LayerNorm(dim)
        self.pointwise = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = nn.Conv1d(dim, dim, 7, padding=3, groups=dim)
        self.ln3 = nn.LayerNorm(dim)
        self.ff2 = nn.Sequential(nn.Linear(dim, 2 * dim), nn.SiLU(), nn.Linear(2 * dim, dim))
        self.ln4 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attn(x, x, x, need_weights=False)[0])
        x = self.ln2(x + self.ff1(x))
        c = F.glu(self.pointwise(x.transpose(1, 2)), dim=1)
        x = self.ln3(x + F.silu(self.depthwise(c)).transpose(1, 2))
        return self.ln4(x + self.ff2(x))


class _Squeezeformer(nn.Module):
    """Conv subsampling (2x), four blocks with a temporal U-Net (blocks 1-2 at half rate, an
    upsample and skip before block 3), CTC head."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.subsample = nn.Conv1d(_BINS, dim, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(_SqueezeBlock(dim) for _ in range(4))
        self.down = nn.Conv1d(dim, dim, 3, stride=2, padding=1, groups=dim)
        self.head = nn.Linear(dim, _LABELS + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.log(x + 1e-6)
        x = (x - x.mean((1, 2), keepdim=True)) / (x.std((1, 2), keepdim=True) + 1e-5)
        x = F.silu(self.subsample(x)).transpose(1, 2)
        x = self.blocks[0](x)
        skip = x
        x = self.down(x.transpose(1, 2)).transpose(1, 2)
        x = self.blocks[2](self.blocks[1](x))
        x = x.repeat_interleave(2, dim=1) + skip
        x = self.blocks[3](x)
        return self.head(x).transpose(0, 1).log_softmax(-1)


def _squeezeformer_groups(model: _Squeezeformer, lr: float, decay: float):
    """Layer-wise learning-rate decay: the head at lr, block i at lr * decay**(4 - i), the
    subsampling at lr * decay**5."""
    groups = [
        {"params": list(model.head.parameters()), "lr": lr},
        {"params": list(model.subsample.parameters()), "lr": lr * decay**5},
        {"params": list(model.down.parameters()), "lr": lr * decay**3},
    ]
    for i, block in enumerate(model.blocks):
        groups.append({"params": list(block.parameters()), "lr": lr * decay ** (4 - i)})
    return groups


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@scenario(
    "squeezeformer_asr",
    "adagrad",
    "update_ratio_out_of_range",
    where=("subsample", "blocks.0"),
    diverges=None,
    heldout=True,
    note="layer-wise learning-rate decay is configured as 0.05 where 0.95 was meant: the "
    "subsampling conv trains at 3e-7 of the head's rate and block 0 at 6e-6, their updates "
    "are under 1e-6 of their weights per step and the bottom of the encoder never leaves its "
    "random init (the top trains on random features)",
)
def h99_squeezeformer_layer_decay_typo(ctx: Context) -> None:
    gen = seeded(9912)
    torch.set_num_threads(1)
    model = _Squeezeformer()
    opt = torch.optim.Adagrad(_squeezeformer_groups(model, 0.05, 0.05))
    names = ("subsample", "blocks.0", "blocks.3", "head")
    mods = dict(model.named_modules())
    start = {n: _flat(mods[n]) for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    last = dict(start)

    def before(step):
        for n in names:
            now = _flat(mods[n])
            ratios[n].append(float((now - last[n]).norm() / last[n].norm()))
            last[n] = now

    fit(ctx, model, opt, _speech_batches(gen), 200, loss_fn=_ctc, before=before, classifier=False)
    drift = {n: float((_flat(mods[n]) - start[n]).norm() / start[n].norm()) for n in names}
    step_ratio = {n: _mean(v[20:]) for n, v in ratios.items()}
    ctx.check(
        "subsample and blocks.0 move under 1e-6 of their weights a step",
        step_ratio["subsample"] < 1e-6 and step_ratio["blocks.0"] < 1e-6,
    )
    ctx.check(
        "the top block and head move over 1e-4 a step",
        min(step_ratio["blocks.3"], step_ratio["head"]) > 1e-4,
    )
    ctx.check(
        "the bottom never left its init (drift < 1e-4), the top moved over 10%",
        max(drift["subsample"], drift["blocks.0"]) < 1e-4
        and min(drift["blocks.3"], drift["head"]) > 0.1,
    )
    ctx.check("loss stayed finite", _finite(ctx.losses))


# -- sketch-RNN: the offset loss is not masked past the end of the sketch ------------------------


_STROKE_LEN = 32


def _stroke_batches(gen: torch.Generator, batch: int = 16):
    """Generated sketches in sketch-RNN's stroke-5 format (dx, dy, pen down, pen up, end):
    squares, triangles and circles of random size and start, 10-24 points, then padding
    (0, 0, 0, 0, 1) to 32 points; the mask marks the real points."""
    while True:
        x = torch.zeros(batch, _STROKE_LEN + 1, 5)
        x[:, 0, 2] = 1.0  # the start token
        mask = torch.zeros(batch, _STROKE_LEN)
        for b in range(batch):
            kind = int(torch.randint(0, 3, (1,), generator=gen))
            n = int(torch.randint(10, 25, (1,), generator=gen))
            size = 0.5 + float(torch.rand(1, generator=gen))
            t = torch.arange(n).float() / n
            if kind == 0:
                angle = 6.2832 * t
            else:
                corners = 4 if kind == 1 else 3
                angle = 6.2832 * torch.floor(t * corners) / corners
            dx = size * angle.cos() / n * 6 + 0.002 * torch.randn(n, generator=gen)
            dy = size * angle.sin() / n * 6 + 0.002 * torch.randn(n, generator=gen)
            x[b, 1 : n + 1, 0], x[b, 1 : n + 1, 1] = dx, dy
            x[b, 1:n, 2] = 1.0
            x[b, n, 3] = 1.0
            x[b, n + 1 :, 4] = 1.0
            mask[b, :n] = 1.0
        yield x, mask


class _SketchRNN(nn.Module):
    """sketch-RNN's decoder (unconditional): an LSTM over stroke-5 points and a mixture-density
    head of M bivariate Gaussians for the offsets plus the 3 pen-state logits."""

    def __init__(self, hidden: int = 64, mixtures: int = 3) -> None:
        super().__init__()
        self.m = mixtures
        self.decoder = nn.LSTM(5, hidden, batch_first=True)
        self.mdn = nn.Linear(hidden, 6 * mixtures + 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.decoder(x)
        return self.mdn(h)


def _sketch_loss(out: torch.Tensor, target: torch.Tensor, mask: torch.Tensor):
    """sketch-RNN's reconstruction loss: the offsets' mixture NLL over the real points
    (normalised by the padded length, as in the paper) plus the pen-state cross-entropy."""
    m = (out.shape[-1] - 3) // 6
    pi, mu_x, mu_y, log_sx, log_sy, rho = out[..., : 6 * m].split(m, -1)
    sx, sy, rho = log_sx.exp(), log_sy.exp(), torch.tanh(rho)
    dx, dy = target[..., 0:1], target[..., 1:2]
    zx, zy = (dx - mu_x) / sx, (dy - mu_y) / sy
    one = 1 - rho**2
    log_n = -(zx**2 + zy**2 - 2 * rho * zx * zy) / (2 * one) - torch.log(
        2 * math.pi * sx * sy * torch.sqrt(one)
    )
    nll = -torch.logsumexp(F.log_softmax(pi, -1) + log_n, -1)
    offsets = (nll * mask).sum() / (mask.shape[0] * mask.shape[1])
    pen = F.cross_entropy(out[..., 6 * m :].reshape(-1, 3), target[..., 2:].argmax(-1).reshape(-1))
    return offsets + pen


@scenario(
    "sketch_rnn",
    "rmsprop",
    "loss_spike",
    diverges=None,
    onset=150,
    heldout=True,
    note="a resumed run rebuilds its cosine schedule with a warm restart at step 150 peaking at "
    "10x the base learning rate (the restart meant for a fine-tuning phase), without the "
    "paper's gradient clipping: RMSprop's first steps at 1e-2 throw the mixture head off, the "
    "loss jumps by over 3 nats, then recovers as the cosine decays",
)
def h99_sketch_rnn_warm_restart_spike(ctx: Context) -> None:
    gen = seeded(9913)
    torch.set_num_threads(1)
    model = _SketchRNN()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _stroke_batches(gen)

    def before(step):
        if step >= 150:
            t = min((step - 150) / 100, 1.0)
            for group in opt.param_groups:
                group["lr"] = 1e-2 * 0.5 * (1 + math.cos(math.pi * t))

    def compute(step):
        x, mask = next(batches)
        loss = _sketch_loss(model(x[:, :-1]), x[:, 1:], mask)
        return loss, loss

    _loop(ctx, model, opt, 260, compute, before=before)
    level = _mean(ctx.losses[130:150])
    ctx.check("the loss jumped 3 nats at the restart", max(ctx.losses[151:156]) > level + 3.0)
    ctx.check("no jump like it before the restart", max(ctx.losses[50:150]) < level + 2.0)
    ctx.check("it recovered to within 0.5 nat", _mean(ctx.losses[210:260]) < level + 0.5)
    ctx.check("loss stayed finite", _finite(ctx.losses))


@scenario(
    "sketch_rnn",
    "rmsprop",
    "healthy",
    heldout=True,
    note="sketch-RNN with the offset likelihood masked to the real points and gradient "
    "clipping at 1.0, as in the paper",
)
def h99_sketch_rnn_healthy(ctx: Context) -> None:
    gen = seeded(9914)
    torch.set_num_threads(1)
    model = _SketchRNN()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _stroke_batches(gen)

    def compute(step):
        x, mask = next(batches)
        loss = _sketch_loss(model(x[:, :-1]), x[:, 1:], mask)
        return loss, loss

    _loop(ctx, model, opt, 300, compute, clip=1.0)
    ctx.check("loss stayed finite", _finite(ctx.losses))
    ctx.check("loss fell by 1 nat", _mean(ctx.losses[-20:]) < _mean(ctx.losses[:5]) - 1.0)


# -- Florence-2 (HF): a warm-up that never ends -------------------------------------------------


_F2_VOCAB, _F2_IMAGE_TOKEN = 24, 23


def _florence2():
    from transformers import (
        BartConfig,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2VisionConfig,
    )

    vision = Florence2VisionConfig(
        depths=[1, 1],
        patch_size=[7, 3],
        patch_stride=[4, 2],
        patch_padding=[3, 1],
        patch_prenorm=[False, True],
        embed_dim=[16, 32],
        num_heads=[1, 2],
        num_groups=[1, 2],
        window_size=2,
        drop_path_rate=0.0,
        projection_dim=32,
        max_temporal_embeddings=4,
        max_position_embeddings=8,
    )
    text = BartConfig(
        vocab_size=_F2_VOCAB,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=_F2_IMAGE_TOKEN)
    return Florence2ForConditionalGeneration(config)


def _florence2_batches(gen: torch.Generator, model, batch: int = 16):
    """(pixel values, prompt ids with the image tokens, decoder inputs) and caption labels
    (colour, size, quadrant, eos) of generated coloured-square images."""
    with torch.no_grad():
        n_image = model.model.get_image_features(torch.zeros(1, 3, 32, 32)).pooler_output.shape[1]
    prompt = torch.tensor([0, 3, 4, 2])  # bos, "<describe>", "<image>", eos
    while True:
        img, colour, quadrant, big, _ = _square_images(gen, batch, 32)
        ids = torch.cat(
            [torch.full((batch, n_image), _F2_IMAGE_TOKEN), prompt.expand(batch, -1)], 1
        )
        labels = torch.stack([5 + colour, 9 + big, 11 + quadrant, torch.full_like(colour, 2)], 1)
        decoder_in = torch.cat([torch.full((batch, 1), 2), labels[:, :-1]], 1)
        yield (img, ids, decoder_in), labels


@scenario(
    "hf_florence2",
    "adamax",
    "healthy",
    heldout=True,
    note="a tiny Florence-2 (DaViT vision tower, BART text) captions generated coloured squares "
    "with Adamax at a constant 3e-3",
)
def h99_florence2_healthy(ctx: Context) -> None:
    gen = seeded(9915)
    torch.set_num_threads(1)
    model = _florence2()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)

    def forward(m, x):
        return m(pixel_values=x[0], input_ids=x[1], decoder_input_ids=x[2]).logits

    fit(
        ctx,
        model,
        opt,
        _florence2_batches(gen, model, batch=8),
        200,
        loss_fn=lambda out, y: F.cross_entropy(out.reshape(-1, _F2_VOCAB), y.reshape(-1)),
        forward=forward,
        classifier=False,
    )
    ctx.check("loss stayed finite", _finite(ctx.losses))
    ctx.check("loss fell by 60%", _mean(ctx.losses[-20:]) < 0.4 * _mean(ctx.losses[:5]))


# -- ZoeDepth (HF): a log-depth loss meets invalid (zero) depth pixels ---------------------------


def _zoedepth():
    from transformers import BeitConfig, ZoeDepthConfig, ZoeDepthForDepthEstimation

    backbone = BeitConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        out_indices=[1, 2, 3, 4],
        use_relative_position_bias=True,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        reshape_hidden_states=False,
        layer_scale_init_value=0.1,
    )
    config = ZoeDepthConfig(
        backbone_config=backbone,
        neck_hidden_sizes=[16, 16, 32, 32],
        fusion_hidden_size=16,
        bottleneck_features=16,
        num_relative_features=8,
        bin_embedding_dim=16,
        num_attractors=[4, 4, 2, 1],
        bin_configurations=[{"n_bins": 8, "min_depth": 0.1, "max_depth": 10.0, "name": "nyu"}],
        num_patch_transformer_layers=1,
        patch_transformer_hidden_size=16,
        patch_transformer_intermediate_size=32,
        patch_transformer_num_attention_heads=2,
    )
    return ZoeDepthForDepthEstimation(config)


def _depth_scenes(gen: torch.Generator, batch: int = 4, size: int = 32):
    """Generated scenes: a floor receding from 2 m (bottom) to 8 m (top) and a box at 1-5 m;
    the image is the scene seen through fog (brightness falls with depth) plus noise."""
    rows = torch.arange(size).float()[:, None].expand(size, size) / size
    tint = torch.tensor([0.9, 0.8, 0.7])[None, :, None, None]
    while True:
        depth = (8.0 - 6.0 * rows).expand(batch, size, size).clone()
        for i in range(batch):
            d = 1.0 + 4.0 * float(torch.rand(1, generator=gen))
            side = int(torch.randint(6, 14, (1,), generator=gen))
            x0, y0 = torch.randint(0, size - side, (2,), generator=gen).tolist()
            depth[i, y0 : y0 + side, x0 : x0 + side] = d
        img = torch.exp(-depth / 4.0)[:, None] * tint
        yield img + 0.03 * torch.randn(img.shape, generator=gen), depth


def _silog(pred: torch.Tensor, depth: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
    """The scale-invariant log loss of depth estimation, over every pixel (no validity mask)."""
    pred = F.interpolate(pred[:, None], size=depth.shape[-2:], mode="bilinear")[:, 0]
    d = torch.log(pred) - torch.log(depth)
    return torch.sqrt((d**2).mean() - lam * d.mean() ** 2 + 1e-8) * 10.0


@scenario(
    "hf_zoedepth",
    "adam",
    "nonfinite",
    diverges=90,
    onset=90,
    heldout=True,
    note="the SILog loss takes the log of every target pixel: at step 90 a scene arrives with a "
    "sensor dropout (a patch of depth 0, as real depth maps mark invalid pixels) and no "
    "validity mask is applied: log(0) = -inf, the loss and every gradient are NaN and Adam "
    "writes NaN into the weights",
)
def h99_zoedepth_unmasked_invalid_depth(ctx: Context) -> None:
    gen = seeded(9917)
    torch.set_num_threads(1)
    model = _zoedepth()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 90:
            y = y.clone()
            y[2, 4:10, 20:28] = 0.0  # invalid pixels
        return x, y

    fit(
        ctx,
        model,
        opt,
        _depth_scenes(gen),
        110,
        loss_fn=_silog,
        alter=alter,
        forward=lambda m, x: m(pixel_values=x).predicted_depth,
        classifier=False,
    )
    weights_nan = any(p.isnan().any() for p in model.parameters())
    ctx.check("loss finite before step 90", _finite(ctx.losses[:90]))
    ctx.check("the loss fell before", _mean(ctx.losses[80:90]) < 0.7 * _mean(ctx.losses[:5]))
    ctx.check("the loss is non-finite from step 90", _first_nonfinite(ctx.losses) == 90)
    ctx.check("the weights are NaN after it", weights_nan)


# -- Grounding DINO (HF): a healthy control ------------------------------------------------------


_GD_QUERY = torch.tensor([[1, 3, 2, 4, 2, 5, 2, 6]])  # [CLS] red . green . blue . yellow
_GD_WORDS = [1, 3, 5, 7]  # the positions of the colour words in the query


def _grounding_dino():
    from transformers import (
        BertConfig,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        SwinConfig,
    )

    backbone = SwinConfig(
        image_size=32,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1],
        num_heads=[1, 2],
        window_size=4,
        out_features=["stage1", "stage2"],
        drop_path_rate=0.0,
    )
    text = BertConfig(
        vocab_size=16,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
    )
    config = GroundingDinoConfig(
        backbone_config=backbone,
        text_config=text,
        d_model=32,
        num_queries=8,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        num_feature_levels=2,
        encoder_n_points=2,
        decoder_n_points=2,
        max_text_len=8,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        use_timm_backbone=False,
        backbone=None,
        use_pretrained_backbone=False,
        fusion_dropout=0.0,
        fusion_droppath=0.0,
        text_enhancer_dropout=0.0,
        two_stage=True,
    )
    return GroundingDinoForObjectDetection(config)


@scenario(
    "hf_grounding_dino",
    "adamw",
    "healthy",
    heldout=True,
    note="a tiny Grounding DINO (Swin backbone, BERT text encoder) finds the one coloured square "
    "of a generated image for the query 'red . green . blue . yellow': every query regresses "
    "the box (L1) and scores the square's colour word (BCE), AdamW at 1e-3",
)
def h99_grounding_dino_healthy(ctx: Context) -> None:
    gen = seeded(9916)
    torch.set_num_threads(1)
    model = _grounding_dino()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def compute(step):
        img, colour, _, _, boxes = _square_images(gen, 4, 32)
        out = model(pixel_values=img, input_ids=_GD_QUERY.expand(len(img), -1))
        scores = out.logits[..., _GD_WORDS]
        target = F.one_hot(colour, 4).float()[:, None].expand_as(scores)
        cls = F.binary_cross_entropy_with_logits(scores, target)
        box = F.l1_loss(out.pred_boxes, boxes[:, None].expand_as(out.pred_boxes))
        loss = cls + 5.0 * box
        return loss, loss

    _loop(ctx, model, opt, 120, compute)
    ctx.check("loss stayed finite", _finite(ctx.losses))
    ctx.check("loss fell by 60%", _mean(ctx.losses[-20:]) < 0.4 * _mean(ctx.losses[:5]))
