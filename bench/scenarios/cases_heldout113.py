"""Held-out set 113 (``h113_``): Hugging Face LW-DETR windowed-ViT backbone (digits) and ESM-C
protein masked LM from tiny configs, and hand-written models of fields not yet covered (lane
detection row-anchor classifier, music-transcription onset detector, fluid-flow grid surrogate,
seismic P-wave picker RNN, wafer-map defect CNN, crop-yield spatio-temporal net, image deblurring
net, solar-station nowcaster, glucose forecaster, IMU orientation net).

Every fault is induced the way it happens in practice, and each run checks that it happened.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    scenario,
    seeded,
)

# -- shared helpers -------------------------------------------------------------------------------


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _cosine(step: int, steps: int, peak: float, warm: int) -> float:
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(steps - warm, 1)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _set_lr(opt: torch.optim.Optimizer, lr: float, group: int | None = None) -> None:
    for i, g in enumerate(opt.param_groups):
        if group is None or i == group:
            g["lr"] = lr


def _healthy_checks(ctx: Context, drop: float = 0.7) -> None:
    ctx.check("every loss finite", _finite(ctx.losses))
    ctx.check("loss fell", _mean(ctx.losses[-20:]) < drop * _mean(ctx.losses[:20]))


# -- Hugging Face LW-DETR windowed-ViT backbone on digits -----------------------------------------


class _LwDetrDigits(nn.Module):
    """LW-DETR's ViT backbone (one windowed, one global attention layer) with a class head."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import LwDetrViTBackbone, LwDetrViTConfig

        config = LwDetrViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            mlp_ratio=2,
            image_size=16,
            pretrain_image_size=16,
            patch_size=4,
            num_channels=1,
            window_block_indices=[0],
            num_windows=4,
            num_windows_side=2,
            out_features=["stage2"],
            out_indices=[2],
        )
        self.backbone = LwDetrViTBackbone(config)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        img = F.interpolate(x.reshape(-1, 1, 8, 8), size=16, mode="nearest")
        fmap = self.backbone(img).feature_maps[-1]
        return self.head(fmap.mean((2, 3)))


def _qk_logit_max(model: _LwDetrDigits, x: torch.Tensor) -> float:
    """Largest |q.k|/sqrt(d) of the global attention layer on a batch."""
    att = model.backbone.encoder.layer[1].attention
    seen = {}
    hooks = [
        att.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o)),
        att.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o)),
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    q, k = seen["q"], seen["k"]
    q = q.reshape(q.shape[0], -1, 2, 16).transpose(1, 2)
    k = k.reshape(k.shape[0], -1, 2, 16).transpose(1, 2)
    return float((q @ k.transpose(-1, -2)).abs().max() / 4.0)


@scenario(
    "h113_hf_lwdetr_vit_digits",
    "adamw",
    "attention_logit_growth",
    where=("backbone.encoder.layer.1.attention", "backbone.encoder.layer.0.attention"),
    diverges=None,
    heldout=True,
    note="query/key projections put in the 'heads' param group (lr 3e-2, no decay) by a name filter",
    onset=0,
)
def h113_lwdetr_qk_group(ctx: Context) -> None:
    gen = seeded(11301)
    model = _LwDetrDigits()
    qk = [p for n, p in model.named_parameters() if "q_proj" in n or "k_proj" in n]
    rest = [p for n, p in model.named_parameters() if not ("q_proj" in n or "k_proj" in n)]
    opt = torch.optim.AdamW(
        [{"params": rest, "lr": 2e-3}, {"params": qk, "lr": 3e-2, "weight_decay": 0.0}]
    )
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    probe = next(batches)[0]
    start = _qk_logit_max(model, probe)
    for _step in range(160):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    end = _qk_logit_max(model, probe)
    ctx.check("attention logits grew over 20x", end > 20 * start)
    ctx.check("attention logits above 50", end > 50)


@scenario(
    "h113_hf_lwdetr_vit_digits",
    "adam",
    "healthy",
    heldout=True,
    note="warm-up then cosine decay, one learning rate",
)
def h113_lwdetr_healthy(ctx: Context) -> None:
    gen = seeded(11302)
    model = _LwDetrDigits()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    for step in range(160):
        _set_lr(opt, _cosine(step, 160, 3e-3, 15))
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    _healthy_checks(ctx, 0.6)


# -- Hugging Face ESM-C protein masked LM ---------------------------------------------------------


def _esmc(gen: torch.Generator):
    from transformers import EsmcConfig, EsmcForMaskedLM

    config = EsmcConfig(
        vocab_size=33,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        pad_token_id=1,
        mask_token_id=32,
    )
    return EsmcForMaskedLM(config)


def _protein_batches(gen: torch.Generator, batch: int = 16, length: int = 32):
    """Sequences of a 20-letter Markov chain (tokens 4..23) with planted motifs, 15% masked."""
    trans = torch.softmax(3.0 * torch.randn(20, 20, generator=gen), 1)
    motifs = torch.randint(0, 20, (4, 6), generator=gen)
    while True:
        seq = torch.zeros(batch, length, dtype=torch.long)
        seq[:, 0] = torch.randint(0, 20, (batch,), generator=gen)
        for t in range(1, length):
            seq[:, t] = torch.multinomial(trans[seq[:, t - 1]], 1, generator=gen)[:, 0]
        pos = torch.randint(0, length - 6, (batch,), generator=gen)
        which = torch.randint(0, 4, (batch,), generator=gen)
        for b in range(batch):
            seq[b, pos[b] : pos[b] + 6] = motifs[which[b]]
        ids = seq + 4
        mask = torch.rand(batch, length, generator=gen) < 0.15
        labels = torch.where(mask, ids, torch.full_like(ids, -100))
        inp = torch.where(mask, torch.full_like(ids, 32), ids)
        yield inp, labels


@scenario(
    "h113_hf_esmc_protein_mlm",
    "rmsprop",
    "update_ratio_out_of_range",
    where=("esmc.embed_tokens",),
    diverges=None,
    heldout=True,
    note="token embedding in its own param group (meant lr 3e-4, typed 3e-1)",
    onset=0,
)
def h113_esmc_embed_lr(ctx: Context) -> None:
    gen = seeded(11303)
    model = _esmc(gen)
    emb = model.esmc.embed_tokens.weight
    rest = [p for p in model.parameters() if p is not emb]
    opt = torch.optim.RMSprop(
        [{"params": rest, "lr": 1e-3}, {"params": [emb], "lr": 3e-1}], weight_decay=1e-2
    )
    ctx.attach(model, opt)
    batches = _protein_batches(gen)
    head = model.lm_head.decoder.weight
    ratios, head_ratios = [], []
    for _step in range(150):
        x, y = next(batches)
        before, before_head = emb.detach().clone(), head.detach().clone()
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        ratios.append(float((emb.detach() - before).norm() / before.norm()))
        head_ratios.append(float((head.detach() - before_head).norm() / before_head.norm()))
    ratios.sort()
    head_ratios.sort()
    ctx.check("embedding update/weight ratio median above 0.05", ratios[75] > 0.05)
    ctx.check("over 10x the output layer's ratio", ratios[75] > 10 * head_ratios[75])
    ctx.check("every loss finite", _finite(ctx.losses))


@scenario(
    "h113_hf_esmc_protein_mlm",
    "adamw",
    "healthy",
    heldout=True,
    note="warm-up then cosine decay, weight decay 0.01",
)
def h113_esmc_healthy(ctx: Context) -> None:
    gen = seeded(11304)
    model = _esmc(gen)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    ctx.attach(model, opt)
    batches = _protein_batches(gen)
    for step in range(150):
        _set_lr(opt, _cosine(step, 150, 3e-3, 15))
        x, y = next(batches)
        loss = model(input_ids=x, labels=y).loss
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    _healthy_checks(ctx, 0.85)


# -- lane detection: row-anchor classifier on generated road images -------------------------------


def _lane_batches(gen: torch.Generator, batch: int = 32, rows: int = 8, cols: int = 16):
    """A lane line x = a + b*r drawn on a noisy 8x16 road; per row the label is its column."""
    r = torch.arange(rows, dtype=torch.float32)
    while True:
        a = torch.rand(batch, 1, generator=gen) * (cols - 1)
        b = (torch.rand(batch, 1, generator=gen) - 0.5) * 1.2
        col = (a + b * r).round().clamp(0, cols - 1).long()
        img = 0.3 * torch.randn(batch, rows, cols, generator=gen)
        img.scatter_add_(2, col[:, :, None], torch.ones(batch, rows, 1))
        yield img[:, None], col


class _LaneRowNet(nn.Module):
    def __init__(self, rows: int = 8, cols: int = 16) -> None:
        super().__init__()
        self.rows, self.cols = rows, cols
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * rows * cols, rows * cols)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(h.flatten(1)).reshape(-1, self.rows, self.cols)


@scenario(
    "h113_lane_row_anchor_classifier",
    "nadam",
    "output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="row-anchor head fine-tuned on 64 labelled frames, lr 1e-1 (typo for 1e-3), no decay",
    onset=0,
)
def h113_lane_head_lr(ctx: Context) -> None:
    gen = seeded(11305)
    model = _LaneRowNet()
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.NAdam(
        [{"params": body, "lr": 1e-3}, {"params": model.head.parameters(), "lr": 1e-1}],
        betas=(0.9, 0.95),
    )
    ctx.attach(model, opt)
    stream = _lane_batches(gen)
    labelled = [next(stream) for _ in range(2)]  # a small hand-labelled fine-tuning set
    probe = labelled[0][0]
    with torch.no_grad():
        start = float(model(probe).abs().max())
    for step in range(600):
        x, y = labelled[step % 2]
        ctx.targets(y.reshape(-1))
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 16), y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        end = float(model(probe).abs().max())
    ctx.check("row logits grew over 50x", end > 50 * start)
    ctx.check("row logits above 100", end > 100)
    ctx.check("every loss finite", _finite(ctx.losses))


# -- music transcription: frame-wise onset detector on generated spectrograms ---------------------


def _onset_batches(gen: torch.Generator, batch: int = 16, frames: int = 48, bins: int = 16):
    """Log-mel frames (in dB, -80..0) of decaying notes; per frame: 0 silence, 1 onset, 2 sustain."""
    while True:
        spec = torch.full((batch, bins, frames), -80.0)
        label = torch.zeros(batch, frames, dtype=torch.long)
        for b in range(batch):
            t = 0
            while True:
                t += int(torch.randint(3, 12, (1,), generator=gen))
                if t >= frames:
                    break
                length = int(torch.randint(3, 9, (1,), generator=gen))
                pitch = int(torch.randint(0, bins - 2, (1,), generator=gen))
                end = min(t + length, frames)
                decay = torch.arange(end - t, dtype=torch.float32) * 4.0
                spec[b, :, t] = torch.maximum(spec[b, :, t], torch.tensor(-30.0))
                spec[b, pitch : pitch + 3, t:end] = -5.0 - decay
                label[b, t + 1 : end] = 2
                label[b, t] = 1
                t = end
        spec = spec + 2.0 * torch.randn(spec.shape, generator=gen)
        yield spec, label


class _OnsetNet(nn.Module):
    def __init__(self, bins: int = 16, temperature: float = 1.0) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(bins, 32, 3, padding=1)
        self.conv2 = nn.Conv1d(32, 32, 3, padding=1)
        self.head = nn.Conv1d(32, 3, 1)
        self.temperature = temperature

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(spec))))
        return (self.head(h) / self.temperature).transpose(1, 2)


@scenario(
    "h113_onset_detector_frames",
    "adamax",
    "softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="dB spectrogram fed unnormalised and a sharpening temperature 0.02 left on in training",
    onset=0,
)
def h113_onset_sharpened(ctx: Context) -> None:
    gen = seeded(11306)
    model = _OnsetNet(temperature=0.02)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = _onset_batches(gen)
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y.reshape(-1))
        logits = model(x).reshape(-1, 3)
        loss = F.cross_entropy(logits, y.reshape(-1))
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = next(batches)
    with torch.no_grad():
        frac = collapsed_fraction(model(x).reshape(-1, 3), y.reshape(-1))
    ctx.check("over half the frames' softmax is exactly 1.0 on the target", frac > 0.5)
    ctx.check("every loss finite", _finite(ctx.losses))


# -- fluid-flow surrogate: one-step emulator of advection-diffusion on a 12x12 grid ---------------


def _fluid_batches(gen: torch.Generator, batch: int = 16, n: int = 12):
    """Random smooth fields and their state after one explicit advection-diffusion step."""
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])[None, None]
    while True:
        u = torch.randn(batch, 1, n, n, generator=gen)
        u = F.avg_pool2d(F.pad(u, (1, 1, 1, 1), mode="circular"), 3, 1)
        vel = (torch.rand(batch, 2, 1, 1, generator=gen) - 0.5) * 0.6
        up = F.pad(u, (1, 1, 1, 1), mode="circular")
        dudx = (up[..., 1:-1, 2:] - up[..., 1:-1, :-2]) / 2
        dudy = (up[..., 2:, 1:-1] - up[..., :-2, 1:-1]) / 2
        nxt = u + 0.2 * F.conv2d(up, lap) - vel[:, :1] * dudx - vel[:, 1:] * dudy
        yield torch.cat([u, vel.expand(-1, -1, n, n)], 1), nxt


class _FluidSurrogate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, padding_mode="circular")
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, padding_mode="circular")
        self.out = nn.Conv2d(16, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.out(F.gelu(self.conv2(F.gelu(self.conv1(x)))))


@scenario(
    "h113_fluid_flow_grid_surrogate",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="SGDR warm restart at step 80 jumps to a peak lr 20x the first cycle's",
    onset=80,
)
def h113_fluid_restart(ctx: Context) -> None:
    gen = seeded(11307)
    model = _FluidSurrogate()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _fluid_batches(gen)
    for step in range(140):
        if step < 80:
            _set_lr(opt, 0.05 * (0.5 + 0.5 * math.cos(math.pi * step / 80)))
        else:
            _set_lr(opt, 1.0)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    pre = _mean(ctx.losses[70:80])
    post = [v for v in ctx.losses[80:] if math.isfinite(v)]
    ctx.check("loss fell before the restart", pre < 0.5 * _mean(ctx.losses[:10]))
    ctx.check("loss grew 20x after the restart", len(post) < 60 or max(post) > 20 * pre)
    climb = post[:25]
    ups = sum(1 for a, b in zip(climb[:-1], climb[1:], strict=False) if b > a)
    ctx.check("it climbed most steps (not one bad batch)", ups > 0.6 * (len(climb) - 1))


@scenario(
    "h113_fluid_flow_grid_surrogate",
    "adam",
    "healthy",
    heldout=True,
    note="Adam with step decay at 100 steps",
)
def h113_fluid_healthy(ctx: Context) -> None:
    gen = seeded(11308)
    model = _FluidSurrogate()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _fluid_batches(gen)
    for step in range(150):
        if step == 100:
            _set_lr(opt, 1e-3)
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    _healthy_checks(ctx, 0.3)


# -- seismology: P-wave arrival picker RNN on generated traces -----------------------------------


def _seismic_batches(gen: torch.Generator, batch: int = 16, length: int = 80):
    """Noise traces with a P arrival (an onset of a decaying oscillation); label: arrival bin of 8."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        arrival = torch.randint(5, length - 10, (batch,), generator=gen)
        freq = 0.5 + torch.rand(batch, 1, generator=gen)
        rel = (t[None] - arrival[:, None]).clamp(min=0)
        wave = torch.sin(freq * rel) * torch.exp(-rel / 20) * (t[None] >= arrival[:, None])
        x = wave + 0.1 * torch.randn(batch, length, generator=gen)
        yield x[:, :, None], (arrival * 8 // length)


class _PickerRNN(nn.Module):
    def __init__(self, hidden: int = 32, gain: float = 1.0) -> None:
        super().__init__()
        self.rnn = nn.RNN(1, hidden, batch_first=True, nonlinearity="tanh")
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        self.head = nn.Linear(hidden, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@scenario(
    "h113_seismic_p_wave_picker",
    "nesterov",
    "exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="recurrent weights orthogonal with gain 1.6 ('for long memory'), no clipping",
    onset=0,
)
def h113_picker_gain(ctx: Context) -> None:
    gen = seeded(11309)
    model = _PickerRNN(gain=1.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    ctx.attach(model, opt)
    batches = _seismic_batches(gen)
    norms = []
    for _step in range(150):
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        norms.append(float(model.rnn.weight_hh_l0.grad.norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    first = sorted(norms[:10])[5]
    ctx.check("recurrent gradient norm grew over 50x", max(norms) > 50 * first)


# -- semiconductor wafer-map defect CNN (fp16 autocast, GradScaler) -------------------------------


def _wafer_batches(gen: torch.Generator, batch: int = 32, n: int = 16, raw: bool = False):
    """Wafer maps of failing-die counts: none, centre, edge ring, scratch, random (5 classes)."""
    yy, xx = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    rad = ((yy - 7.5) ** 2 + (xx - 7.5) ** 2).sqrt()
    on_wafer = (rad < 8).float()
    while True:
        label = torch.randint(0, 5, (batch,), generator=gen)
        maps = (torch.rand(batch, n, n, generator=gen) < 0.05).float()
        for b in range(batch):
            c = int(label[b])
            if c == 1:
                maps[b] += (rad < 3).float()
            elif c == 2:
                maps[b] += ((rad > 6) & (rad < 8)).float()
            elif c == 3:
                k = int(torch.randint(2, 14, (1,), generator=gen))
                maps[b, k, 2:14] += 1.0
            elif c == 4:
                maps[b] += (torch.rand(n, n, generator=gen) < 0.3).float()
        maps = (maps.clamp(max=1.0) * on_wafer)[:, None]
        # the tester exports 16-bit die counts per site; training normalises them to [0, 1]
        counts = maps * (50000 + 15535 * torch.rand(batch, 1, n, n, generator=gen))
        yield (counts if raw else counts / 65535.0), label


class _WaferCNN(nn.Module):
    """Patchify conv (4x4 die blocks) then an MLP classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 4, stride=4)
        self.fc = nn.Linear(16 * 16, 64)
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x)).flatten(1)
        return self.head(F.relu(self.fc(h)))


@scenario(
    "h113_wafer_map_defect_cnn",
    "sgd_mom",
    "amp_overflow",
    where=("conv1", "fc"),
    diverges=60,
    heldout=True,
    note="from step 60 a new tester's raw 16-bit die counts skip the normalisation (fp16 autocast)",
    onset=60,
)
def h113_wafer_raw_counts(ctx: Context) -> None:
    gen = seeded(11310)
    model = _WaferCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    norm = _wafer_batches(gen)
    raw = _wafer_batches(gen, raw=True)
    skipped = []
    for step in range(140):
        x, y = next(raw if step >= 60 else norm)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        found = any(not torch.isfinite(p.grad).all() for p in model.parameters())
        skipped.append(found)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        fp32 = F.cross_entropy(model(x), y)
    ctx.check("few steps skipped before the change", sum(skipped[:60]) <= 3)
    ctx.check("most steps skipped after it", sum(skipped[60:]) > 0.6 * 80)
    ctx.check("loss scale collapsed below 1", ctx.scales[-1] < 1.0)
    ctx.check("the same batch in float32 gives a finite loss", bool(torch.isfinite(fp32)))
    ctx.check("under fp16 autocast it does not", not math.isfinite(ctx.losses[-1]))


# -- agriculture: crop-yield spatio-temporal net over a season of field grids ---------------------


def _crop_batches(gen: torch.Generator, batch: int = 16, months: int = 8, n: int = 6):
    """Monthly NDVI and rainfall grids (2 x 6 x 6) for a season; target: yield (t/ha, centred)."""
    w = torch.linspace(0.2, 1.0, months)
    while True:
        base = torch.rand(batch, 1, 1, 1, generator=gen)
        rain = torch.rand(batch, months, 1, 1, generator=gen).expand(-1, -1, n, n)
        ndvi = (base + 0.5 * rain.cumsum(1) / months) * (
            1 + 0.1 * torch.randn(batch, months, n, n, generator=gen)
        )
        x = torch.stack([ndvi, rain], 2)
        y = (ndvi.mean((2, 3)) * w).sum(1) - 2.0 * (rain.mean((2, 3)) - 0.5).pow(2).sum(1)
        yield x, (y - 2.0)[:, None]


class _CropYieldNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 8, 3, padding=1)
        self.gru = nn.GRU(8, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        f = F.relu(self.conv(x.flatten(0, 1))).mean((2, 3)).reshape(b, t, -1)
        out, _ = self.gru(f)
        return self.head(out[:, -1])


@scenario(
    "h113_crop_yield_spatiotemporal",
    "adagrad",
    "data_outlier",
    diverges=None,
    heldout=True,
    note="one batch at step 70 keeps the yield monitor's -9999 missing-value sentinel as targets",
    onset=70,
)
def h113_crop_fill_value(ctx: Context) -> None:
    gen = seeded(11311)
    model = _CropYieldNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    ctx.attach(model, opt)
    batches = _crop_batches(gen)
    for step in range(140):
        x, y = next(batches)
        if step == 70:  # three fields whose combine logs were lost carry the -9999 sentinel
            y = y.clone()
            y[:3] = -9999.0
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    typical = sorted(ctx.losses[50:70])[10]
    ctx.check("the sentinel batch's loss spiked over 20x", ctx.losses[70] > 20 * typical)
    ctx.check("every loss finite", _finite(ctx.losses))


@scenario(
    "h113_crop_yield_spatiotemporal",
    "asgd",
    "healthy",
    heldout=True,
    note="averaged SGD, clean data, noisy small batches",
)
def h113_crop_healthy(ctx: Context) -> None:
    gen = seeded(11312)
    model = _CropYieldNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=50)
    ctx.attach(model, opt)
    batches = _crop_batches(gen)
    for _step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    _healthy_checks(ctx, 0.5)


# -- image deblurring net on blurred digits --------------------------------------------------------


class _DeblurNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(1, 16, 3, padding=1)
        self.enc2 = nn.Conv2d(16, 16, 3, padding=1)
        self.dec = nn.Conv2d(16, 1, 3, padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.enc2(F.relu(self.enc1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.dec(self.features(x))


def _blur(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16
    img = x.reshape(-1, 1, 8, 8)
    out = F.conv2d(F.pad(img, (1, 1, 1, 1), mode="replicate"), k[None, None])
    return out + 0.02 * torch.randn(out.shape, generator=gen)


@scenario(
    "h113_image_deblur_cnn",
    "adam",
    "loss_of_plasticity",
    where=("enc1", "enc2"),
    diverges=None,
    heldout=True,
    note="a resumed run restores the step counter but not the schedule: 10 steps at lr 0.3 kill ReLUs",
    onset=60,
)
def h113_deblur_lr_shock(ctx: Context) -> None:
    gen = seeded(11313)
    model = _DeblurNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    batches = digit_batches(gen)
    probe = _blur(next(batches)[0], gen)
    for step in range(160):
        _set_lr(opt, 0.3 if 60 <= step < 70 else 2e-3)
        if step == 60:
            with torch.no_grad():
                dead_before = dead_fraction(model.features(probe))
        x, _ = next(batches)
        sharp = x.reshape(-1, 1, 8, 8)
        loss = F.mse_loss(model(_blur(x, gen)), sharp)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        dead_after = dead_fraction(model.features(probe))
    ctx.check("few units dead before the shock", dead_before < 0.3)
    ctx.check("most units dead after it", dead_after > 0.6)
    ctx.check(
        "loss never got back to its pre-shock level",
        _mean(ctx.losses[-20:]) > 1.2 * _mean(ctx.losses[50:60]),
    )


# -- energy: solar-station power nowcaster ---------------------------------------------------------


def _solar_batches(gen: torch.Generator, batch: int = 64, stations: int = 12):
    """Station id, hour, cloud cover, temperature -> PV output (fraction of capacity)."""
    tilt = 0.6 + 0.4 * torch.rand(stations, generator=gen)
    while True:
        sid = torch.randint(0, stations, (batch,), generator=gen)
        hour = torch.rand(batch, generator=gen) * 24
        cloud = torch.rand(batch, generator=gen)
        temp = torch.randn(batch, generator=gen)
        sun = torch.sin(math.pi * (hour - 6) / 12).clamp(min=0)
        y = tilt[sid] * sun * (1 - 0.7 * cloud) * (1 - 0.05 * temp)
        y = y + 0.02 * torch.randn(batch, generator=gen)
        feats = torch.stack(
            [torch.sin(hour / 24 * 2 * math.pi), torch.cos(hour / 24 * 2 * math.pi), cloud, temp], 1
        )
        yield (sid, feats), y[:, None]


class _SolarNowcaster(nn.Module):
    def __init__(self, stations: int = 12) -> None:
        super().__init__()
        self.station = nn.Embedding(stations, 4)
        self.mlp = nn.Sequential(nn.Linear(8, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh())
        self.out = nn.Linear(64, 1)

    def forward(self, sid: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(torch.cat([self.station(sid), feats], 1)))


@scenario(
    "h113_solar_station_nowcaster",
    "radam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="linear warm-up whose length was set in epochs but counted in steps: the lr never stops rising",
    onset=0,
)
def h113_solar_endless_warmup(ctx: Context) -> None:
    gen = seeded(11314)
    model = _SolarNowcaster()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-4)
    ctx.attach(model, opt)
    batches = _solar_batches(gen)
    for step in range(235):
        _set_lr(opt, 1e-4 + 1e-3 * step)
        (sid, feats), y = next(batches)
        loss = F.mse_loss(model(sid, feats), y)
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    smooth = [_mean(ctx.losses[i : i + 10]) for i in range(0, len(ctx.losses) - 9)]
    low = min(range(len(smooth)), key=smooth.__getitem__)
    ctx.check("loss first fell", smooth[low] < 0.5 * smooth[0])
    ctx.check("then climbed 3x above its low", smooth[-1] > 3 * smooth[low])
    ctx.check("the climb was slow (over 40 steps)", len(smooth) - 1 - low > 40)
    jumps = [b / a for a, b in zip(ctx.losses[low:-1], ctx.losses[low + 1 :], strict=False)]
    ctx.check("no single step jumped 10x", max(jumps) < 10)


# -- health: continuous-glucose-monitor forecaster ------------------------------------------------


def _glucose_batches(
    gen: torch.Generator, batch: int = 32, length: int = 24, cohort: str = "type1"
):
    """CGM traces (mmol/L, 5-min samples): meals, and for type-1 patients insulin-driven falls
    (some into hypoglycaemia, < 3.9); the 'tight' cohort hovers at 4.3-4.7 without meals.
    Target: the value 30 minutes ahead. Values are centred at 6 mmol/L."""
    t = torch.arange(length + 6, dtype=torch.float32)
    while True:
        if cohort == "tight":
            g = 4.3 + 0.4 * torch.rand(batch, 1, generator=gen) + 0.0 * t[None]
            g = g + 0.05 * torch.randn(g.shape, generator=gen)
        else:
            base = 5 + torch.rand(batch, 1, generator=gen)
            meal = torch.randint(0, length, (batch, 1), generator=gen)
            size = 2 + 4 * torch.rand(batch, 1, generator=gen)
            rel = (t[None] - meal).clamp(min=0)
            g = base + size * rel / 6 * torch.exp(1 - rel / 6) * (t[None] >= meal)
            falls = torch.rand(batch, 1, generator=gen) < 0.3
            start = torch.randint(0, length, (batch, 1), generator=gen)
            drop = (t[None] - start).clamp(min=0) * (
                0.05 + 0.1 * torch.rand(batch, 1, generator=gen)
            )
            g = torch.where(falls, base - drop, g)
            g = g + 0.15 * torch.randn(g.shape, generator=gen)
        yield g[:, :length, None] - 6.0, g[:, -1:] - 6.0


class _GlucoseGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(1, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


@scenario(
    "h113_cgm_glucose_forecaster",
    "adam",
    "adam_second_moment_poisoned",
    where=("head", "gru"),
    diverges=None,
    heldout=True,
    note="hypo term divides by the true-hypo count + 1e-6; a batch with none but predicted lows weighs 1e6",
    onset=60,
)
def h113_glucose_hypo_weight(ctx: Context) -> None:
    gen = seeded(11315)
    model = _GlucoseGRU()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    batches = _glucose_batches(gen)
    tight = _glucose_batches(gen, cohort="tight")
    head_v = []
    for step in range(160):
        # the loader walks patients in order: at step 60 comes a well-controlled cohort
        x, y = next(tight if step == 60 else batches)
        pred = model(x)
        loss = F.mse_loss(pred, y)
        # hypo emphasis: penalise errors on readings that are, or are predicted, below 3.9,
        # normalised by the number of true hypos in the batch
        hypo = (y < -2.1).float()
        flagged = torch.maximum(hypo, (pred.detach() < -2.1).float())
        weight = 1.0 / (hypo.sum() + 1e-6)
        total = loss + weight * ((pred - y).pow(2) * flagged).sum()
        if step == 60:
            no_hypo, flagged_60 = float(hypo.sum()) == 0, float(flagged.sum())
        total.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        head_v.append(float(opt.state[model.head.weight]["exp_avg_sq"].max()))
    ctx.check("the step-60 batch had no true hypo", no_hypo)
    ctx.check("yet some readings were predicted low", flagged_60 > 0)
    ctx.check("the head's second moment jumped over 1e6x", head_v[61] > 1e6 * head_v[58])
    ctx.check("it was still over 1e3x its old level at the end", head_v[-1] > 1e3 * head_v[58])
    ctx.check(
        "training stalled: no better after 100 steps",
        _mean(ctx.losses[-20:]) > 0.9 * _mean(ctx.losses[40:60]),
    )


# -- robotics: IMU orientation net (quaternion output) --------------------------------------------


def _imu_batches(gen: torch.Generator, batch: int = 32, window: int = 10):
    """Gyro + gravity-removed accelerometer windows (6 x 10); target: the rotation quaternion."""
    while True:
        axis = F.normalize(torch.randn(batch, 3, generator=gen), dim=1)
        rate = 0.1 + 0.4 * torch.rand(batch, 1, generator=gen)
        gyro = (axis * rate)[:, :, None].expand(-1, -1, window)
        acc = 0.2 * torch.randn(batch, 3, window, generator=gen)
        x = torch.cat([gyro, acc], 1) + 0.01 * torch.randn(batch, 6, window, generator=gen)
        angle = rate * window * 0.1
        q = torch.cat([torch.cos(angle / 2), axis * torch.sin(angle / 2)], 1)
        yield x.flatten(1), q


class _ImuOrientation(nn.Module):
    """Bias-free (the sensor calibration removed offsets) MLP; the output is normalised."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(60, 64, bias=False)
        self.fc2 = nn.Linear(64, 64, bias=False)
        self.head = nn.Linear(64, 4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.head(F.relu(self.fc2(F.relu(self.fc1(x)))))
        return q / q.norm(dim=1, keepdim=True)


@scenario(
    "h113_imu_orientation_net",
    "adadelta",
    "nonfinite",
    where=("head",),
    diverges=90,
    heldout=True,
    note="a logging gap yields all-zero IMU windows at step 90: 0/0 in the quaternion normalisation",
    onset=90,
)
def h113_imu_zero_window(ctx: Context) -> None:
    gen = seeded(11316)
    model = _ImuOrientation()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    ctx.attach(model, opt)
    batches = _imu_batches(gen)
    for step in range(130):
        x, q = next(batches)
        if step == 90:
            x = x.clone()
            x[:4] = 0.0  # the device buffered nothing during a logging gap
        pred = model(x)
        loss = (1 - (pred * q).sum(1).abs()).mean()
        loss.backward()
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check(
        "loss finite and falling before the gap",
        _finite(ctx.losses[:90]) and _mean(ctx.losses[80:90]) < 0.7 * _mean(ctx.losses[:10]),
    )
    ctx.check("loss non-finite from the gap on", not any(math.isfinite(v) for v in ctx.losses[90:]))
    ctx.check(
        "the weights went non-finite", not all(torch.isfinite(p).all() for p in model.parameters())
    )
