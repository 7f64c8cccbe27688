"""Held-out set 348 (``h348_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a ropewalk strand-lay vector-quantised autoencoder whose
codebook group's lr is typed 2e-9 for 2e-3 (codebook frozen), a pysanky wax-resist BCE tagger fed
wax-layer counts for presence flags (output logits grow without bound), a kendama spike-catch tanh
regressor whose frame-rate correction compounds every batch (drifting target, slow climb), a
quilling coil-tightness regressor fed one shard in micrometres (one corrupted batch), a
cheese-rolling tumble-distance regressor whose epoch-boundary step multiplies the loss by the
dataset size (Adam's second moment poisoned), a wadlopen sink-depth net whose RMS pooling takes
sqrt of an all-zero frame (NaN), a coracle ferry-time Huber regressor whose resume step uses a
reduction='sum' criterion (one gradient burst), a handpan note-field classifier whose temperature
is divided by 100 twice (softmax saturates), a lava-tube skylight tanh regressor whose warm-up peak
is typed 2.0 for 0.2 (lr past 2/sharpness), a saddler girth-strap 10-hidden-layer ReLU MLP with
init gain typed 3.0 for sqrt(2) (gradients grow through depth), and three controls (a ropewalk
hawser-twist VQ autoencoder with a commitment loss and an EMA codebook; a kora string-pluck Conv1d
classifier with SGD Nesterov, OneCycleLR, label smoothing and clipping; a cobbler heel-wear
Gaussian NLL net under fp16 autocast with a GradScaler, Adagrad, accumulation and
ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    collapsed_fraction,
    grad_norm,
    scenario,
    seeded,
)


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params]).clone()


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm().clamp_min(1e-12))


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    alter=None,
    watch=None,
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


# -- vector-quantised autoencoders (a fault and a control) ----------------------------------------


def _strands(gen, batch, seed, d=16, modes=12):
    """Ropewalk strand readings (twist, tension, yarn counts...): a mixture of lay modes."""
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(modes, d, generator=g)
    while True:
        k = torch.randint(0, modes, (batch,), generator=gen)
        x = centres[k] + 0.3 * torch.randn(batch, d, generator=gen)
        yield x, x


class Quantiser(nn.Module):
    """Nearest-code vector quantiser with a learned codebook (an nn.Embedding) and the
    straight-through estimator."""

    def __init__(self, codes, dim):
        super().__init__()
        self.codebook = nn.Embedding(codes, dim)
        nn.init.uniform_(self.codebook.weight, -1.0 / codes, 1.0 / codes)
        self.aux = torch.zeros(())

    def forward(self, z):
        d = torch.cdist(z, self.codebook.weight)
        idx = d.argmin(1)
        q = self.codebook(idx)
        # codebook loss pulls codes to the encodings, commitment keeps encodings near codes
        self.aux = F.mse_loss(q, z.detach()) + 0.25 * F.mse_loss(z, q.detach())
        self.idx = idx
        return z + (q - z).detach()


class EMAQuantiser(nn.Module):
    """Nearest-code quantiser whose codebook (a buffer) is updated by exponential moving
    averages of the assigned encodings (van den Oord et al. 2017, appendix), with a
    commitment loss and the straight-through estimator."""

    def __init__(self, codes, dim, decay=0.99, eps=1e-5):
        super().__init__()
        self.decay, self.eps = decay, eps
        self.register_buffer("codebook", torch.randn(codes, dim))
        self.register_buffer("cluster_size", torch.ones(codes))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.aux = torch.zeros(())

    def forward(self, z):
        if self.training and not bool(self.initialised):
            with torch.no_grad():  # data-dependent init: codes start on encodings of batch 1
                pick = torch.randperm(len(z))[: len(self.codebook)]
                self.codebook.copy_(z.detach()[pick])
                self.embed_sum.copy_(self.codebook)
                self.initialised.fill_(True)
        d = torch.cdist(z.detach().float(), self.codebook)
        idx = d.argmin(1)
        q = self.codebook[idx]
        if self.training:
            with torch.no_grad():
                onehot = F.one_hot(idx, len(self.codebook)).float()
                self.cluster_size.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
                self.embed_sum.mul_(self.decay).add_(onehot.T @ z.detach(), alpha=1 - self.decay)
                n = self.cluster_size.sum()
                size = (self.cluster_size + self.eps) / (n + len(self.codebook) * self.eps) * n
                self.codebook.copy_(self.embed_sum / size[:, None])
        self.aux = 0.25 * F.mse_loss(z, q.detach())
        self.idx = idx
        return z + (q - z).detach()


class StrandVQ(nn.Module):
    def __init__(self, d=16, hidden=64, code_dim=8, codes=32, ema=False):
        super().__init__()
        self.enc1 = nn.Linear(d, hidden)
        self.enc2 = nn.Linear(hidden, code_dim)
        self.vq = EMAQuantiser(codes, code_dim) if ema else Quantiser(codes, code_dim)
        self.dec1 = nn.Linear(code_dim, hidden)
        self.dec2 = nn.Linear(hidden, d)

    def forward(self, x):
        z = self.enc2(F.gelu(self.enc1(x)))
        return self.dec2(F.gelu(self.dec1(self.vq(z))))


@scenario(
    family="ropewalk_strand_lay_vq_autoencoder",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("vq.codebook",),
    diverges=None,
    heldout=True,
    note="A hand-written vector-quantised autoencoder (enc1, enc2 to an 8-d encoding, vq: a 32-code nn.Embedding codebook with nearest-code lookup, a codebook loss, a 0.25 commitment loss and the straight-through estimator, dec1, dec2) compressing sixteen ropewalk strand readings, AdamW with two parameter groups, MSE reconstruction, 200 steps. The codebook group's lr was meant as 2e-3 and was typed 2e-9: the codebook vectors move under 1e-4 of their norm in the whole run while the encoder and decoder move tens of percent; the codes stay where they were initialised (a tiny cube around 0), so the encoder collapses onto them and the reconstruction loss stalls instead of blowing up.",
)
def h348_ropewalk_vq_codebook_lr_typo(ctx: Context) -> None:
    gen = seeded(34801)
    model = StrandVQ()
    book = list(model.vq.parameters())
    ids = {id(p) for p in book}
    rest = [p for p in model.parameters() if id(p) not in ids]
    opt = torch.optim.AdamW(
        [
            {"params": rest, "lr": 2e-3, "weight_decay": 0.01},
            {"params": book, "lr": 2e-9, "weight_decay": 0.0},  # meant 2e-3
        ]
    )
    book0, dec0 = _flat(book), _flat(model.dec1.parameters())
    _loop(
        ctx,
        model,
        opt,
        _strands(gen, 64, 348),
        200,
        F.mse_loss,
        backprop=lambda s, loss: loss + model.vq.aux,
    )
    ctx.check(
        "the codebook moves under 1e-4 of its norm in the run",
        _rel_change(book0, _flat(book)) < 1e-4,
    )
    ctx.check(
        "dec1 moves over 10% of its norm in the run",
        _rel_change(dec0, _flat(model.dec1.parameters())) > 0.1,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="ropewalk_hawser_twist_ema_vq_autoencoder",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written vector-quantised autoencoder (enc1, enc2, vq: a 32-code codebook kept as a buffer, initialised from the first batch's encodings and updated by exponential moving averages of the assigned encodings with decay 0.99 and Laplace smoothing, a 0.25 commitment loss, straight-through estimator, dec1, dec2) compressing sixteen hawser-twist readings, Adam at 2e-3 with a linear warm-up over 20 steps, MSE reconstruction plus the commitment loss, 200 steps.",
)
def h348_ropewalk_ema_vq_control(ctx: Context) -> None:
    gen = seeded(34802)
    model = StrandVQ(ema=True)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    _loop(
        ctx,
        model,
        opt,
        _strands(gen, 64, 3482),
        200,
        F.mse_loss,
        backprop=lambda s, loss: loss + model.vq.aux,
        sched=sched,
    )
    used = len(torch.unique(model.vq.idx))
    ctx.check("the loss fell to under 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("at least 8 codes in use on the last batch", used >= 8)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- pysanky: wax-layer counts passed to BCE as presence flags -------------------------------------


@scenario(
    family="pysanky_wax_resist_layer_count_bce_tagger",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) tagging which of six dye colours a pysanky egg's wax-resist pass covers, from twelve readings, plain SGD at 0.05, BCEWithLogits, 240 steps. The loader was meant to turn the number of wax layers per colour (0 to 3) into presence flags (count > 0) and passed the counts straight to the loss: for a target of 2 or 3 the BCE gradient sigmoid(z) - t never vanishes, so the head's logits for those entries climb without bound (the mean |logit| grows over 20x and keeps growing) and the loss goes below zero instead of settling.",
)
def h348_pysanky_wax_counts_as_flags(ctx: Context) -> None:
    gen = seeded(34803)
    g = torch.Generator().manual_seed(3483)
    w = torch.randn(12, 6, generator=g)

    def eggs():
        while True:
            x = torch.randn(64, 12, generator=gen)
            counts = torch.clamp(torch.round(x @ w / 2.0 + 0.5), 0, 3)
            yield x, counts  # meant: (counts > 0).float()

    model = Trunk(12, 64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    mags = []

    def watch(step, out, x, y):
        mags.append(float(out.detach().abs().mean()))

    _loop(ctx, model, opt, eggs(), 240, F.binary_cross_entropy_with_logits, watch=watch)
    ctx.check(
        "the head's mean |logit| over the last 10 steps is over 20x that of the first 5",
        _mean(mags[-10:]) > 20.0 * _mean(mags[:5]),
    )
    ctx.check(
        "the mean |logit| still grows: last 10 steps over 1.3x steps 150-160",
        _mean(mags[-10:]) > 1.3 * _mean(mags[150:160]),
    )
    ctx.check("the loss goes below zero", min(ctx.losses) < 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kendama: a once-only frame-rate correction compounds on a cached factor ---------------------


@scenario(
    family="kendama_spike_catch_time_tanh_regressor",
    optimizer="SGD (Nesterov)",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a kendama spike trick's catch time from ten readings of the swing, SGD with Nesterov momentum 0.9 at 0.01, MSE, 280 steps. Catch times come from a high-speed camera and the loader converts frames to standardised seconds with a cached scale factor; the camera's 0.8% frame-rate correction, meant to be applied once to the constant, was written as an in-place scale *= 1.008 inside the batch function, so it compounds on every batch and the targets drift slowly upwards (about 9x over the run). The model chases a moving target: after a short descent the loss climbs slowly and steadily to many times its lowest, with no single jump and no NaN.",
)
def h348_kendama_frame_rate_correction_compounds(ctx: Context) -> None:
    gen = seeded(34804)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    scale = [1.0]

    def catches():
        for x, y in _readings(gen, 64, 10, 3484):
            scale[0] *= 1.008  # meant once, on the constant: FRAME_TO_S = 1.008 * FRAME_TO_S
            yield x, y * scale[0]

    _loop(ctx, model, opt, catches(), 280, F.mse_loss)
    ls = ctx.losses
    windows = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    spikes = [ls[i] / max(_median(ls[i - 20 : i]), 1e-12) for i in range(20, len(ls))]
    ctx.check(
        "the last 20-step mean loss is over 5x the lowest 20-step mean",
        _mean(ls[-20:]) > 5.0 * min(windows),
    )
    ctx.check("no step's loss is over 6x the median of the 20 before it", max(spikes) < 6.0)
    ctx.check("the targets' scale drifted over 5x", scale[0] > 5.0)
    ctx.check("finite throughout", _finite(ls))


# -- quilling: one shard logged in micrometres ---------------------------------------------------


@scenario(
    family="quilling_coil_tightness_relu_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting how tight a quilled paper coil sets (standardised) from eight readings of strip width, paper weight and glue, RMSprop at 1e-3 with gradient clipping at 1.0, MSE, 240 steps. One workshop's shard was exported in micrometres and skipped the standardisation step: the batch at step 120 has inputs and targets in raw micrometre units (hundreds to thousands), so that one step's loss and gradient are orders of magnitude above the rest; clipping bounds the update and the run recovers.",
)
def h348_quilling_micrometre_shard(ctx: Context) -> None:
    gen = seeded(34805)
    model = Trunk(8, 64)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 120:
            return 250.0 + 60.0 * x, 3000.0 + 400.0 * y
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 8, 3485), 240, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the loss at step 120 is over 100x the median of steps 100-119",
        ls[120] > 100.0 * _median(ls[100:120]),
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median of steps 100-119",
        gn[120] > 20.0 * _median(gn[100:120]),
    )
    ctx.check(
        "recovers: the last 20 steps' mean is under 2x that of steps 100-119",
        _mean(ls[-20:]) < 2.0 * _mean(ls[100:120]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- cheese rolling: the epoch-boundary step multiplies the loss by the dataset size ------------


@scenario(
    family="cheese_rolling_tumble_distance_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting how far a rolled cheese tumbles before the first bounce (standardised) from ten readings of slope and wheel, Adam at 1e-3, MSE, 260 steps. The epoch-boundary step (step 100) logs the epoch's summed loss and the backward was placed after the logging line, so that step backpropagates the batch loss multiplied by the dataset size, 4096, on an ordinary batch: one gradient over 1000x the usual fills Adam's second moment, and for the next hundred-odd steps the per-weight updates are under a tenth of what they were on ordinary gradients, so training stalls.",
)
def h348_cheese_rolling_epoch_sum_backward(ctx: Context) -> None:
    gen = seeded(34806)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ups = []
    prev = [_flat(model.parameters())]

    def backprop(step, loss):
        return loss * 4096.0 if step == 100 else loss

    def after(step):
        now = _flat(model.parameters())
        ups.append(float((now - prev[0]).abs().median()))
        prev[0] = now

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3486),
        260,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    gn = ctx.grad_norms
    ctx.check(
        "the gradient at step 100 is over 1000x the median of steps 80-99",
        gn[100] > 1000.0 * _median(gn[80:100]),
    )
    ctx.check(
        "the batch at step 100 is ordinary: its loss is under 3x the median of steps 80-99",
        ctx.losses[100] < 3.0 * _median(ctx.losses[80:100]),
    )
    ctx.check(
        "the median per-weight update over steps 180-259 is under a tenth of steps 80-99",
        _mean(ups[180:260]) < 0.1 * _mean(ups[80:100]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- wadlopen: RMS pooling takes sqrt of an all-zero frame ----------------------------------------


class RMSPool(nn.Module):
    """Root-mean-square over the probe readings of a frame: sqrt(mean(h^2)), no epsilon."""

    def forward(self, h):
        return torch.sqrt((h * h).mean(1))


class SinkDepthNet(nn.Module):
    """Per-probe projection without bias (proj), RMS pooling over the probes (rms_pool) next to a
    mean pool, then a SiLU readout (fc, head)."""

    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.proj = nn.Linear(d_in, hidden, bias=False)
        self.rms_pool = RMSPool()
        self.fc = nn.Linear(2 * hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.proj(x)
        pooled = torch.cat([self.rms_pool(h), h.mean(1)], -1)
        return self.head(F.silu(self.fc(pooled))).squeeze(-1)


@scenario(
    family="mudflat_wadlopen_sink_depth_rms_pool_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("rms_pool",),
    diverges=91,
    heldout=True,
    onset=90,
    note="A hand-written set net for mudflat hiking (wadlopen) guides: sixteen penetrometer probes (four readings each) go through a bias-free projection (proj), are pooled by a root-mean-square module (rms_pool: sqrt(mean(h^2)) with no epsilon) and a mean, and a SiLU readout (fc, head) predicts how deep a walker sinks, NAdam at 2e-3, MSE, 200 steps. Probe frames where the logger dropped out are recorded as all zeros (kept on purpose: the sink depth is then the site mean); the first such frame arrives at step 90: proj of zeros is exactly 0, sqrt(0)'s derivative is inf and the chain rule multiplies it by 2h = 0, so the gradient is NaN, NAdam writes NaN into every weight and the loss is NaN from step 91.",
)
def h348_wadlopen_rms_sqrt_zero_frame(ctx: Context) -> None:
    gen = seeded(34807)
    g = torch.Generator().manual_seed(3487)
    w = torch.randn(4, generator=g)

    def frames():
        step = 0
        while True:
            x = torch.randn(64, 16, 4, generator=gen)
            y = torch.tanh((x @ w).mean(1)) + 0.3 * (x * x).mean((1, 2))
            if step == 90:
                x[5] = 0.0  # a logger dropout frame
                y[5] = float(y.mean())
            step += 1
            yield x, y

    model = SinkDepthNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    ran = _loop(ctx, model, opt, frames(), 200, F.mse_loss)
    grad_bad = [len(ctx.grad_norms) > 90 and not math.isfinite(ctx.grad_norms[90])]
    ctx.check("the loss is finite through step 90", _finite(ctx.losses[:91]))
    ctx.check("the gradient at step 90 (the zero frame) is non-finite", grad_bad[0])
    ctx.check("the first non-finite loss is at step 91", _first_bad(ctx.losses) == 91)
    ctx.check("the run stopped at the NaN", ran == 92)


# -- coracle: the resume step uses a reduction='sum' criterion ------------------------------------


@scenario(
    family="coracle_ferry_crossing_time_silu_huber_regressor",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a coracle ferry's crossing time (standardised) from ten readings of river flow, load and paddler, SGD with momentum 0.9 at 5e-3, Huber loss (delta 1), gradient clipping at 5.0, 260 steps. The run resumes at step 150, and the resume path rebuilds the criterion from an old evaluation config with reduction='sum' instead of 'mean': that one step backpropagates the loss summed over the 128-row batch, a gradient over 50x the usual on an ordinary batch (its mean loss is unremarkable); clipping bounds the update and the next step is back on the mean criterion, so the run recovers.",
)
def h348_coracle_resume_sum_criterion(ctx: Context) -> None:
    gen = seeded(34808)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)

    def backprop(step, loss):
        if step == 150:
            return F.huber_loss(last[0], last[1], reduction="sum")
        return loss

    last = [None, None]

    def watch(step, out, x, y):
        last[0], last[1] = out, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 128, 10, 3488),
        260,
        F.huber_loss,
        watch=watch,
        backprop=backprop,
        clip=5.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the gradient at step 150 is over 50x the median of steps 130-149",
        gn[150] > 50.0 * _median(gn[130:150]),
    )
    ctx.check(
        "the batch at step 150 is ordinary: its loss is under 3x the median of steps 130-149",
        ls[150] < 3.0 * _median(ls[130:150]),
    )
    ctx.check(
        "recovers: the last 20 steps' mean is under 1.5x that of steps 130-149",
        _mean(ls[-20:]) < 1.5 * _mean(ls[130:150]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- handpan: the temperature is divided by 100 twice ---------------------------------------------


class NoteField(nn.Module):
    """GELU trunk (fc1, act1, fc2, act2, head) with a softmax temperature on the logits."""

    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.trunk = Trunk(d_in, 64, out=classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.trunk(x) / self.temperature


@scenario(
    family="handpan_note_field_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("trunk.head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU classifier (trunk.fc1, trunk.fc2, trunk.head, the logits divided by a temperature) naming which of nine note fields a handpan tuner struck from twelve spectrum readings, Adamax at 2e-3, cross-entropy, 220 steps. The config gives the temperature in percent (temperature_pct: 5, meaning 0.05); the loader converts it to 0.05 and the model's constructor divides by 100 again, so the logits are divided by 5e-4: they reach the thousands, the softmax saturates and over half the rows' target probability rounds to exactly 1.0 in float32 late in the run, while the misclassified rows carry losses in the hundreds.",
)
def h348_handpan_temperature_percent_twice(ctx: Context) -> None:
    gen = seeded(34809)
    temperature_pct = 5.0
    loaded = temperature_pct / 100.0
    model = NoteField(12, 9, loaded / 100.0)  # the constructor converts from percent again
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 9, 3489, spread=1.2),
        220,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("the effective temperature is under 1e-3", model.temperature < 1e-3)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- lava tube: warm-up peak typed 2.0 for 0.2 ------------------------------------------------------


@scenario(
    family="lava_tube_skylight_collapse_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a lava-tube skylight's roof-collapse span (standardised) from ten survey readings, plain SGD with a linear warm-up over 150 steps, MSE, 200 steps. The warm-up's peak lr was meant as 0.2 and was typed 2.0: as the lr ramps, lr x the top Hessian eigenvalue (power iteration on Hessian-vector products every 5 steps) passes 2, the iterates oscillate with growing amplitude and the loss blows up.",
)
def h348_lava_tube_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(34810)
    model = Trunk(10, 64, act=nn.Tanh)
    peak = 2.0  # meant 0.2
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_readings(torch.Generator().manual_seed(34810), 256, 10, 34810))
    products = []

    def before(step):
        lr = peak * min(1.0, (step + 1) / 150)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 5 == 0 and (not ctx.losses or _finite(ctx.losses[-1:])):
            products.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 34810), 200, F.mse_loss, before=before)
    ls = ctx.losses
    low = min(v for v in ls if math.isfinite(v))
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    crossed = [s for s, v in products if v > 2.0]
    ctx.check("lr x top Hessian eigenvalue passes 2", bool(crossed))
    ctx.check(
        "the loss blows up (non-finite or over 1000x its lowest) after lr x sharpness passes 2",
        bool(crossed) and any((not math.isfinite(v)) or v > 1000.0 * low for v in ls[crossed[0] :]),
    )
    ctx.check("it trained first: the loss fell below its start", low < ls[0] and end > 10)


# -- saddler: init gain typed 3.0 for sqrt(2) -----------------------------------------------------


class DeepStrap(nn.Module):
    """Ten ReLU hidden layers (layers.0 .. layers.9) and a linear head."""

    def __init__(self, d_in=10, width=64, depth=10, gain=1.4142135623730951):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight, std=gain / math.sqrt(layer.in_features))
            nn.init.zeros_(layer.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for layer in self.layers:
            x = layer(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = F.relu(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="saddler_girth_strap_load_deep_relu_mlp",
    optimizer="RAdam",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A hand-written 10-hidden-layer ReLU MLP (layers.0 .. layers.9, head) predicting the peak load on a saddler's girth strap (standardised) from ten readings of horse, saddle and gait, RAdam at 1e-3 with gradient clipping at 1.0, MSE, 200 steps. The init helper's gain was typed 3.0 for He's sqrt(2): each ReLU layer multiplies the signal by about 3/sqrt(2) = 2.1 forward and the gradient by the same backward, so the gradient at layers.0's output is hundreds of times that at layers.9's, the raw gradient norm is enormous and the loss starts huge; clipping keeps the run finite.",
)
def h348_saddler_init_gain_typo(ctx: Context) -> None:
    gen = seeded(34811)
    model = DeepStrap(gain=3.0)  # meant math.sqrt(2)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ratios = []

    def backprop(step, loss):
        if step < 3:
            loss.backward(retain_graph=True)
            first = float(model.outs[0].grad.norm())
            last = float(model.outs[-1].grad.norm())
            ratios.append(first / max(last, 1e-30))
            model.zero_grad(set_to_none=True)
        return loss

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 34811), 200, F.mse_loss, backprop=backprop, clip=1.0
    )
    ctx.check(
        "the gradient at layers.0's output is over 100x that at layers.9's at the start",
        bool(ratios) and ratios[0] > 100.0,
    )
    ctx.check("the raw gradient norm at step 0 is over 1e3", ctx.grad_norms[0] > 1e3)
    ctx.check("the loss at step 0 is over 1e3 (target variance about 1)", ctx.losses[0] > 1e3)
    ctx.check("finite throughout (clipped)", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


class PluckNet(nn.Module):
    """Conv1d over a plucked-string trace: conv1, conv2 (ReLU, max-pool), global mean, head."""

    def __init__(self, classes=7):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 7, padding=3)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _plucks(gen, batch, classes=7, length=96, flip=0.05):
    """Damped sinusoids (one pitch band per kora string), random phase and decay, noise, and a
    few flipped labels."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.05 + 0.04 * y.float() + 0.004 * torch.randn(batch, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        decay = 0.01 + 0.03 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * freq[:, None] * t + phase) * torch.exp(-decay * t)
        x = x + 0.3 * torch.randn(batch, length, generator=gen)
        wrong = torch.rand(batch, generator=gen) < flip
        y = torch.where(wrong, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="kora_string_pluck_relu_conv1d_classifier",
    optimizer="SGD (Nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written ReLU Conv1d classifier (conv1, conv2, global mean, head) naming which of seven kora strings was plucked from a noisy damped-sinusoid trace with 5% flipped labels, SGD with Nesterov momentum 0.9 and weight decay 5e-4 under OneCycleLR (max_lr 0.2), cross-entropy with label smoothing 0.1, gradient clipping at 2.0, 200 steps.",
)
def h348_kora_pluck_control(ctx: Context) -> None:
    gen = seeded(34812)
    model = PluckNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.2, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _plucks(gen, 64),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ctx.check("the loss fell to under 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


class HeelWear(nn.Module):
    """SiLU trunk (fc1, fc2) with a mean head and a variance head (softplus + 1e-3)."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), F.softplus(self.var(h)) + 1e-3], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


@scenario(
    family="cobbler_heel_wear_fp16_gaussian_nll_net",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written SiLU net (fc1, fc2, a mean head and a softplus variance head) predicting a cobbler's heel-wear depth after a season (standardised) with its uncertainty from ten gait and leather readings with heteroscedastic noise, Adagrad at 0.02, Gaussian NLL computed in float32 on outputs of an fp16 autocast forward with a torch.amp.GradScaler, accumulation over 2 batches, ReduceLROnPlateau on a held-out batch's NLL, 150 steps.",
)
def h348_cobbler_fp16_nll_control(ctx: Context) -> None:
    gen = seeded(34813)
    model = HeelWear()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)

    def shoes(g):
        for x, y in _readings(g, 64, 10, 3490, noise=0.0):
            yield x, y + (0.1 + 0.2 * x[:, 0].abs()) * torch.randn(len(y), generator=g)

    held = next(shoes(torch.Generator().manual_seed(34813)))

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(_gauss_nll(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        shoes(gen),
        150,
        _gauss_nll,
        scaler=scaler,
        amp=True,
        accumulate=2,
        sched=sched,
        plateau=plateau,
    )
    ctx.check(
        "the NLL fell by over 0.3 nat", _mean(ctx.losses[:10]) - _mean(ctx.losses[-10:]) > 0.3
    )
    ctx.check("the held-out NLL is below its start", plateau() < _mean(ctx.losses[:10]))
    ctx.check("finite throughout", _finite(ctx.losses))
