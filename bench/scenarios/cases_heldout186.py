"""Held-out set 186 (``h186_``): models of trades, crafts, sports, instruments and natural
phenomena not covered before: a javelin run-up clip classifier on a Hugging Face PE-Video
encoder (built from a tiny config, one param group per layer) whose frame encoder is never
unfrozen, a bocce closest-ball pointer attention ported without its QK-norm, a sommelier
varietal classifier left on nn.NLLLoss after its LogSoftmax was removed, an espresso
extraction cosine classifier whose linear scale is exponentiated, a rainbow arc brightness
regressor taking acos of a dot product with no clamp, a water-polo possession net pooling
with a hand-written softmax in float16, a gymnastics beam score regressor fed one -9999
missing-score code, a tuba fingering classifier whose checkpoint step backpropagates a
sum-reduced loss, an icicle growth regressor with a manual L2 penalty of the wrong sign, a
derecho gust deep tanh MLP initialised with nn.init.normal_'s default std, and three controls
(a bakery crumb classifier under fp16 autocast with a GradScaler, a chess opening LM with a
tied head, a cornet lip-slur GRU regressor under Rprop).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded

# -- helpers -------------------------------------------------------------------------------------


def _finite(xs) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / max(len(xs), 1)


def _median(xs) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _first_bad(xs) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


def _loop(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    scaler=None,
    accumulate=1,
    clip=None,
    sched=None,
    before=None,
    alter=None,
    watch=None,
    total=None,
    after=None,
    stop_on_nan=True,
):
    """This file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``total(step, loss, out,
    y)`` returns what is backpropagated (bugs in the loss), ``after(step)`` runs after the
    optimizer step. ``accumulate`` micro-batches per step; stops after logging a NaN loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            back = total(step, loss, out, y) if total is not None else loss
            back = back / accumulate
            if scaler is not None:
                scaler.scale(back).backward()
            else:
                back.backward()
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
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if math.isfinite(shown):
                    sched.step(shown)
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if stop_on_nan and math.isnan(shown):
            break


def _tabular(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(1.3 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _classes(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (overlapping)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, activations as modules."""

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


# -- javelin: a Hugging Face PE-Video encoder whose frame encoder is never unfrozen ---------------


def _pe_video_encoder(dim=32, layers=2, heads=2):
    """A Hugging Face PE-Video encoder (model type pe_video_encoder) built from a tiny config,
    with a tiny ViT image classifier as its per-frame encoder (no download)."""
    from transformers import PeVideoEncoder, PeVideoEncoderConfig, ViTConfig

    frame = ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=1,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config = PeVideoEncoderConfig(
        vision_config=frame,
        hidden_size=dim,
        intermediate_size=2 * dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=dim // heads,
        max_position_embeddings=64,
    )
    return PeVideoEncoder(config)


class RunUpClipNet(nn.Module):
    def __init__(self, classes=4, dim=32):
        super().__init__()
        self.encoder = _pe_video_encoder(dim=dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, clips):
        return self.head(self.encoder(pixel_values_videos=clips).pooler_output)


def _runup_clips(gen, batch, frames=6):
    """Six 8x8 frames of a javelin thrower seen from the side: a bright blob crossing the frame.
    Four classes: run-up left-to-right or right-to-left, with a short or a long crossover
    (the blob drops a row during the crossover steps)."""
    cols = torch.arange(8).float()
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        direction = torch.where(y % 2 == 0, 1.0, -1.0)
        long_cross = (y // 2).float()
        start = torch.where(direction > 0, 0.5, 6.5) + 0.5 * torch.randn(batch, generator=gen)
        row0 = 2.0 + 2.0 * torch.rand(batch, generator=gen)
        clip = []
        for t in range(frames):
            cx = start + direction * 1.1 * t
            cy = row0 + long_cross * (1.5 if t >= 3 else 0.0)
            img = torch.exp(
                -((cols[None, None, :] - cx[:, None, None]) ** 2)
                - 0.5 * (cols[None, :, None] - cy[:, None, None]) ** 2
            )
            clip.append(img + 0.1 * torch.randn(batch, 8, 8, generator=gen))
        yield torch.stack(clip, 1)[:, :, None], y


JAVELIN_UNFREEZE_AT = 2000


@scenario(
    family="hf_pe_video_javelin_runup_clip_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("encoder.embedder", "encoder.embedder.vision_model"),
    diverges=None,
    heldout=True,
    note="A Hugging Face PE-Video encoder (model type pe_video_encoder, from a tiny config: a "
    "tiny ViT frame classifier, a 1-D ResNet patch embedder, two RoPE attention layers) with a "
    "linear head, classifying 6-frame side-on clips of a javelin run-up (direction, short or "
    "long crossover), cross-entropy, AdamW at 3e-3 with one param group per layer (frame "
    "embedder, patch embedder, layers.0, layers.1, norm and output, head) and a LambdaLR "
    "with one factor per group. The frame-embedder group's factor is a gradual-unfreezing "
    "rule `float(step >= unfreeze_at)` whose unfreeze_at (2000) was copied from the "
    "fine-tuning config of a pre-trained frame encoder; here the frame encoder is freshly "
    "initialised and the run is 150 steps, so its learning rate is exactly 0 throughout and "
    "it never moves: the layers above it move but cannot read the run-up from its random "
    "features, and the loss stays at ln 4 (the same run with the embedder learning gets to "
    "about 0.7); finite.",
)
def h186_javelin_pe_video_frame_encoder_never_unfrozen(ctx: Context) -> None:
    gen = seeded(18601)
    model = RunUpClipNet()
    enc = model.encoder
    parts = [
        enc.embedder,
        enc.patch_embedder,
        enc.layers[0],
        enc.layers[1],
        nn.ModuleList([enc.norm, enc.output]),
        model.head,
    ]
    groups = [{"params": list(p.parameters()), "weight_decay": 1e-2} for p in parts]
    opt = torch.optim.AdamW(groups, lr=3e-3)
    factors = [lambda s: float(s >= JAVELIN_UNFREEZE_AT)] + [lambda s: 1.0] * (len(parts) - 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factors)
    frozen = list(enc.embedder.parameters())
    rest = [p for part in parts[1:] for p in part.parameters()]
    frozen0, rest0 = _snapshot(frozen), _snapshot(rest)
    lrs = []
    _loop(
        ctx,
        model,
        opt,
        _runup_clips(gen, 32),
        150,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        after=lambda s: lrs.append([g["lr"] for g in opt.param_groups]),
    )
    ctx.check("frame-embedder group's lr exactly 0 at every step", all(r[0] == 0.0 for r in lrs))
    ctx.check("frame embedder never moved", _moved(frozen, frozen0) == 0.0)
    ctx.check("the other layers moved", _moved(rest, rest0) > 1e-2)
    ctx.check(
        "loss within 0.05 of ln 4 over the last 30 steps",
        abs(_mean(ctx.losses[-30:]) - math.log(4)) < 0.05,
    )


# -- bocce: a pointer attention ported without its QK-norm ----------------------------------------


class PointerAttention(nn.Module):
    """A learned query attending over the balls: logits q.k / sqrt(d), hand-written."""

    def __init__(self, dim=32):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * 0.02)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.dim = dim
        self.last_logits = None

    def forward(self, h):
        logits = self.k(h) @ self.q(self.query) / math.sqrt(self.dim)
        self.last_logits = logits.detach()
        w = torch.softmax(logits, -1)
        return (w[..., None] * self.v(h)).sum(1)


class BocceNet(nn.Module):
    def __init__(self, d_in=11, dim=32):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.act = nn.GELU()
        self.attn = PointerAttention(dim)
        self.head = nn.Linear(dim, 8)

    def forward(self, x):
        return self.head(self.attn(self.act(self.embed(x))))


def _bocce_ends(gen, batch, balls=8, noise=0.05):
    """Eight balls around the jack after an end: (dx, dy, distance, colour one-hot of 8); the
    label is the colour of the ball closest to the jack, the one the referee names (5% of the
    ends mis-scored)."""
    while True:
        pos = 1.5 * torch.randn(batch, balls, 2, generator=gen)
        dist = pos.norm(dim=-1)
        colour = torch.randint(0, 8, (batch, balls), generator=gen)
        x = torch.cat([pos, dist[..., None], F.one_hot(colour, 8).float()], -1)
        y = colour.gather(1, dist.argmin(1, keepdim=True)).squeeze(1)
        wrong = torch.rand(batch, generator=gen) < noise
        yield x, torch.where(wrong, torch.randint(0, 8, (batch,), generator=gen), y)


@scenario(
    family="bocce_closest_ball_pointer_attention_net",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A bocce scoring net naming the colour (one of 8) of the ball closest to the jack "
    "from the 8 balls' positions and colours: a GELU embedding, one hand-written pointer "
    "attention module (a learned query, q/k/v Linears, logits q.k/sqrt(d)) and a head, "
    "cross-entropy, Adam at 1e-2 with no weight decay. The module was ported from a reference "
    "that applies a LayerNorm to q and to k before the dot product (QK-norm); the port dropped "
    "the two norms. Pointing ever more sharply at the closest ball pays, nothing bounds q and "
    "k, and the attention logits' span grows from about 0.3 at step 5 to about 100 by step "
    "45 and stays there: the attention is one-hot for the rest of the run; the loss stays "
    "finite (5% of the ends are mis-scored).",
)
def h186_bocce_pointer_attention_no_qk_norm(ctx: Context) -> None:
    gen = seeded(18602)
    model = BocceNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    span, peak = [], []

    def watch(step, out, x, y):
        lg = model.attn.last_logits
        span.append(float((lg.max(-1).values - lg.min(-1).values).mean()))
        peak.append(float(torch.softmax(lg, -1).max(-1).values.mean()))

    _loop(ctx, model, opt, _bocce_ends(gen, 64), 240, F.cross_entropy, classifier=True, watch=watch)
    ctx.check("attention logit span grew 20x from step 5", _mean(span[-20:]) > 20 * span[5])
    ctx.check("attention logit span above 40 over the last 20 steps", _mean(span[-20:]) > 40)
    ctx.check("attention near one-hot (top weight > 0.9) at the end", _mean(peak[-20:]) > 0.9)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- sommelier: nn.NLLLoss left in place after the model's LogSoftmax was removed ----------------


SOMM_LR = 1e-3  # the rate of the LogSoftmax days


@scenario(
    family="sommelier_blind_tasting_varietal_mlp",
    optimizer="SGD(nesterov)",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (nn.ReLU modules) naming the grape (6 varietals) of a blind-tasted wine "
    "from 12 standardised readings (acidity, tannin, residual sugar, alcohol, colour hue, ...), "
    "SGD Nesterov (momentum 0.9) at 1e-3. The model used to end in nn.LogSoftmax and was "
    "trained with nn.NLLLoss; a refactor moved the LogSoftmax out of the model (to use a fused "
    "cross-entropy) but the criterion stayed nn.NLLLoss, which on raw logits is just minus the "
    "target logit: nothing bounds it, the head's logits grow step after step (their scale 100x "
    "from step 5 by the end) and the loss falls without bound below zero; finite.",
)
def h186_sommelier_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(18603)
    model = Trunk(12, hidden=64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=SOMM_LR, momentum=0.9, nesterov=True)
    criterion = nn.NLLLoss()
    scale = []

    def watch(step, out, x, y):
        scale.append(float(out.detach().abs().mean()))

    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 12, 6, seed=3, spread=1.0),
        200,
        criterion,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check(
        "head logits' mean |value| grew 100x from step 5", _mean(scale[-10:]) > 100 * scale[5]
    )
    ctx.check(
        "logits still growing: last 20 steps 1.5x steps 100-120",
        _mean(scale[-20:]) > 1.5 * _mean(scale[100:120]),
    )
    ctx.check("loss below -5 at the end (unbounded)", _mean(ls[-10:]) < -5)
    ctx.check("loss finite throughout", _finite(ls))


# -- espresso: a cosine classifier's scale exponentiated although stored linear ------------------


class CosineHead(nn.Module):
    """NormFace-style head: scale * cos(features, class weight)."""

    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class ShotNet(nn.Module):
    def __init__(self, d_in=10, hidden=64, classes=5, scale=16.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _load_scale(cfg: dict) -> float:
    """The loader written for CLIP-style checkpoints, which store the log of the scale."""
    return math.exp(cfg["scale"])


@scenario(
    family="espresso_shot_extraction_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (nn.SiLU modules) with a NormFace-style cosine head (scale x cosine to each "
    "class weight) grading an espresso shot (under-extracted, ideal, over-extracted, "
    "channelled, choked) from 10 standardised grind, dose, pressure-curve and shot-time "
    "readings, Adamax at 2e-3, cross-entropy. The head's scale comes from a config that "
    "stores it linear (`scale: 12`, meant as 12), read by a loader written for CLIP-style "
    "checkpoints that store its log: exp(12) = 1.6e5 multiplies the cosines, so from the first "
    "step the float32 softmax gives the top class exactly 1 and the others exactly 0 on "
    "nearly every row, and each misgraded shot costs hundreds to thousands of nats; finite.",
)
def h186_espresso_cosine_scale_exponentiated(ctx: Context) -> None:
    gen = seeded(18604)
    model = ShotNet(scale=_load_scale({"scale": 12.0}))
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    onehot, wrong_cost = [], []

    def watch(step, out, x, y):
        p = torch.softmax(out.detach().float(), -1)
        onehot.append(float((p.max(-1).values == 1.0).float().mean()))
        wrong = out.detach().argmax(-1) != y
        if wrong.any():
            wrong_cost.append(float(F.cross_entropy(out.detach()[wrong], y[wrong])))

    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 64, 10, 5, seed=4, spread=1.1),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("95% of rows' top probability exactly 1.0 over the run", _mean(onehot) > 0.95)
    ctx.check("still 95% over the last 20 steps", _mean(onehot[-20:]) > 0.95)
    ctx.check("a misgraded shot costs above 100 nats (median)", _median(wrong_cost) > 100)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- rainbow: acos of a dot product of unit vectors, no clamp ------------------------------------


class ScatterAngle(nn.Module):
    """The scattering angle between the sun and the viewing direction: acos of the dot product
    of the two normalised vectors (written without a clamp to [-1, 1])."""

    def forward(self, sun, view):
        u = sun / sun.norm(dim=-1, keepdim=True)
        v = view / view.norm(dim=-1, keepdim=True)
        return torch.acos((u * v).sum(-1, keepdim=True))


class RainbowNet(nn.Module):
    def __init__(self, d_other=4, hidden=48):
        super().__init__()
        self.scatter = ScatterAngle()
        self.fc1 = nn.Linear(1 + d_other, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.out = nn.Linear(hidden, 2)

    def forward(self, x):
        theta = self.scatter(x[:, :3], x[:, 3:6])
        h = torch.cat([theta, x[:, 6:]], -1)
        return self.out(self.act2(self.fc2(self.act1(self.fc1(h)))))


RAINBOW_ANTISOLAR = 70


def _sky_frames(gen, batch):
    """Sun direction (unnormalised, from the ephemeris), camera viewing direction, and 4
    standardised droplet-size, humidity, cloud-cover and haze readings; the target is the
    rainbow band's brightness, peaked at 138 degrees of scattering (42 from the antisolar
    point). From step 70 the shard of the auto-tracking camera, which aims at the antisolar
    point for a quarter of its frames: its viewing vector is exactly minus the sun's."""
    step = 0
    while True:
        sun = torch.randn(batch, 3, generator=gen)
        sun[:, 2] = sun[:, 2].abs() * 0.3
        view = -sun / sun.norm(dim=-1, keepdim=True) + 0.8 * torch.randn(batch, 3, generator=gen)
        if step >= RAINBOW_ANTISOLAR:
            aimed = torch.rand(batch, generator=gen) < 0.25
            view = torch.where(aimed[:, None], -sun, view)
        other = torch.randn(batch, 4, generator=gen)
        u = sun / sun.norm(dim=-1, keepdim=True)
        v = view / view.norm(dim=-1, keepdim=True)
        theta = torch.acos((u * v).sum(-1).clamp(-1, 1))
        y = torch.exp(-(((theta - 2.41) / 0.12) ** 2)) * (1 + 0.3 * other[:, 0]) - 0.2 * other[:, 2]
        step += 1
        yield torch.cat([sun, view, other], -1), y + 0.05 * torch.randn(batch, generator=gen)


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="rainbow_arc_brightness_gaussian_regressor",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("scatter",),
    diverges=RAINBOW_ANTISOLAR,
    heldout=True,
    onset=RAINBOW_ANTISOLAR,
    note="A tanh MLP (nn.Tanh modules) predicting the brightness of a rainbow band (mean and "
    "variance, Gaussian NLL) from the sun's direction, a sky camera's viewing direction and 4 "
    "droplet and haze readings, RMSprop at 1e-3. A `scatter` module computes the scattering "
    "angle as torch.acos of the dot product of the two normalised vectors, with no clamp to "
    "[-1, 1]. From step 70 the shard of an auto-tracking camera arrives, which aims exactly at "
    "the antisolar point for a quarter of its frames: the viewing vector is minus the sun "
    "vector, the rounded dot product of the normalised vectors is -1.0000001 for some of "
    "them, acos gives NaN and the loss is NaN at step 70.",
)
def h186_rainbow_acos_without_clamp(ctx: Context) -> None:
    gen = seeded(18605)
    model = RainbowNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    theta_bad = []

    def watch(step, out, x, y):
        with torch.no_grad():
            theta_bad.append(int(torch.isnan(model.scatter(x[:, :3], x[:, 3:6])).sum()))

    _loop(ctx, model, opt, _sky_frames(gen, 64), 150, _gaussian_nll, watch=watch)
    at = RAINBOW_ANTISOLAR
    ctx.check("loss NaN first at the tracking camera's shard", _first_bad(ctx.losses) == at)
    ctx.check(
        "scatter angle NaN on some rows at that step", len(theta_bad) > at and theta_bad[at] > 0
    )
    ctx.check("scatter angle finite on every row before", sum(theta_bad[:at]) == 0)
    ctx.check("loss fell before the shard", _fell(ctx.losses[:at]))


# -- water polo: a hand-written softmax pooling (no max subtraction) under fp16 autocast ---------


class PossessionPool(nn.Module):
    """Attention pooling over a possession's frames, written exp(s) / sum(exp(s)) without
    subtracting the max (fine in float32 for these scores, not in float16)."""

    def __init__(self, dim=32):
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.last_scores = None

    def forward(self, h):
        s = self.score(h).squeeze(-1)
        self.last_scores = s.detach()
        e = torch.exp(s)
        w = e / e.sum(1, keepdim=True)
        return (w[..., None] * h).sum(1)


class PossessionNet(nn.Module):
    def __init__(self, d_in=8, dim=32):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.act = nn.SiLU()
        self.pool = PossessionPool(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        return self.head(self.pool(self.act(self.embed(x)))).squeeze(-1)


def _possessions(gen, batch, frames=24, d_in=8, seed=6):
    """Twenty-four tracking frames of a water-polo possession (ball speed, shooter distance and
    angle, goalkeeper offset, defenders within 2 m, ...); one frame is the shot (the ball
    speed spikes), and whether it scored depends on that frame's readings only."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in - 1, generator=g)
    while True:
        x = torch.randn(batch, frames, d_in, generator=gen)
        x[..., 0] = 0.3 * x[..., 0]
        shot = torch.randint(0, frames, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, shot, 0] = 3.0 + 0.3 * torch.randn(batch, generator=gen)
        logit = 2.0 * (x[rows, shot, 1:] @ w) / math.sqrt(d_in - 1)
        y = (logit + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield x, y


WATERPOLO_OVERFLOW = 39


@scenario(
    family="water_polo_possession_softmax_pool_net",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("pool",),
    diverges=WATERPOLO_OVERFLOW,
    heldout=True,
    onset=WATERPOLO_OVERFLOW,
    note="A water-polo analytics net predicting whether a possession ends in a goal from 24 "
    "tracking frames: a SiLU embedding, an attention pooling module and a head, BCE with "
    "logits, NAdam at 1e-2, fp16 autocast with a torch.amp.GradScaler. The pooling module "
    "computes its weights by hand as exp(s) / sum(exp(s)) with no max subtraction; under "
    "autocast the scores come out of a Linear in float16. As the pooling learns to pick the "
    "shot frame its top score grows, and at step 39 it passes 11.09: exp "
    "overflows float16's 65504 to inf, inf / inf is NaN and the loss is non-finite; the "
    "scaler skips the step and halves its scale, the weights do not change, and most steps "
    "after it overflow again (the same scores in float32 are finite).",
)
def h186_water_polo_fp16_softmax_pool_overflow(ctx: Context) -> None:
    gen = seeded(18606)
    model = PossessionNet()
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    top, f32_ok = [], []

    def watch(step, out, x, y):
        s = model.pool.last_scores.float()
        top.append(float(s.max()))
        f32_ok.append(bool(torch.isfinite(torch.exp(s)).all()))

    _loop(
        ctx,
        model,
        opt,
        _possessions(gen, 64),
        160,
        F.binary_cross_entropy_with_logits,
        scaler=scaler,
        watch=watch,
        stop_on_nan=False,
    )
    at = WATERPOLO_OVERFLOW
    ls = ctx.losses
    ctx.check("loss finite before the overflow step", _finite(ls[:at]))
    ctx.check("loss non-finite first at the overflow step", _first_bad(ls) == at)
    ctx.check(
        "top pooling score past 11.09 at that step, under it before",
        top[at] > 11.09 > max(top[:at]),
    )
    ctx.check(
        "non-finite on half the steps after",
        sum(not math.isfinite(v) for v in ls[at:]) > 0.5 * len(ls[at:]),
    )
    ctx.check("exp of the same scores finite in float32", all(f32_ok))
    ctx.check(
        "scaler's scale fell 100x after the overflow", ctx.scales[-1] < ctx.scales[at - 1] / 100
    )
    ctx.check("loss fell before the overflow", _fell(ls[:at]))


# -- gymnastics: one beam score entered as the -9999 missing-value code --------------------------

BEAM_BAD_BATCH = 110


@scenario(
    family="gymnastics_beam_routine_score_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=BEAM_BAD_BATCH,
    note="A ReLU MLP (nn.ReLU modules) predicting a balance-beam routine's execution score "
    "(standardised) from 10 standardised difficulty, connection, wobble and landing readings "
    "of the judges' tablet, ASGD at 1e-2, MSE, clip_grad_norm_ at 1.0. In the batch at step "
    "110 one routine of a gymnast who withdrew mid-routine carries the results system's "
    "missing-value code -9999 as its score, passed through unfiltered: that one sample gives "
    "the batch a loss of about 1.5e6 (the usual is about 0.3) and a gradient norm above 1000 "
    "times the usual; clipping bounds the step and the loss is back at its level the next "
    "step; finite.",
)
def h186_gymnastics_missing_score_code(ctx: Context) -> None:
    gen = seeded(18607)
    model = Trunk(10, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    lowest = []

    def alter(step, x, y):
        if step == BEAM_BAD_BATCH:
            y = y.clone()
            y[17] = -9999.0
        lowest.append(float(y.min()))
        return x, y

    _loop(ctx, model, opt, _tabular(gen, 64, 10, seed=7), 200, F.mse_loss, alter=alter, clip=1.0)
    at = BEAM_BAD_BATCH
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "one target of -9999 at the bad batch only",
        lowest[at] == -9999.0 and min(lowest[:at] + lowest[at + 1 :]) > -100,
    )
    ctx.check(
        "gradient 1000x the preceding median at the bad batch", gn[at] > 1000 * _median(gn[:at])
    )
    ctx.check(
        "loss 1000x the preceding median at the bad batch",
        ls[at] > 1000 * _median(ls[at - 20 : at]),
    )
    ctx.check(
        "loss back under 2x the pre-onset level by the end",
        _mean(ls[-20:]) < 2 * _mean(ls[at - 20 : at]),
    )
    ctx.check("loss fell before the bad batch", _fell(ls[:at]))
    ctx.check("loss finite throughout", _finite(ls))


# -- tuba: the checkpoint step backpropagates the logging loss (reduction='sum') -----------------

TUBA_CHECKPOINT = 150


@scenario(
    family="tuba_valve_fingering_spectrum_classifier",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=TUBA_CHECKPOINT,
    note="A GELU MLP (nn.GELU modules) naming which of 7 valve combinations a tuba player "
    "fingered from a 24-bin spectrum of the note, SGD momentum 0.9 at 2e-2, cross-entropy, "
    "batches of 128, 290 steps. Every 150 steps the loop checkpoints and logs the batch's "
    "summed loss; the logging line `loss = F.cross_entropy(out, y, reduction='sum')` reuses "
    "the name of the training loss and sits before `loss.backward()`, so at step 150 (the "
    "run's one checkpoint) the gradient is that of the sum, 128 times the usual, for that one "
    "step, on an ordinary batch. The momentum buffer carries the burst on for a few steps: "
    "the loss jumps from about 0.15 to about 10 within four steps and is back near its level "
    "by the end of the run; finite.",
)
def h186_tuba_checkpoint_sum_loss_backward(ctx: Context) -> None:
    gen = seeded(18608)
    model = Trunk(24, hidden=64, out=7, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)

    def total(step, loss, out, y):
        if step > 0 and step % TUBA_CHECKPOINT == 0:
            return F.cross_entropy(out.float(), y, reduction="sum")
        return loss

    _loop(
        ctx,
        model,
        opt,
        _classes(gen, 128, 24, 7, seed=8, spread=1.3),
        290,
        F.cross_entropy,
        classifier=True,
        total=total,
    )
    at = TUBA_CHECKPOINT
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient 50x the preceding median at the checkpoint step",
        gn[at] > 50 * _median(gn[at - 30 : at]),
    )
    ctx.check(
        "the checkpoint step's own batch is ordinary: its mean loss under 2x the median",
        ls[at] < 2 * _median(ls[at - 20 : at]),
    )
    ctx.check(
        "loss 3x the preceding median within 3 steps after",
        max(ls[at + 1 : at + 4]) > 3 * _median(ls[at - 20 : at]),
    )
    ctx.check(
        "loss back under 1.5x the pre-onset level by the end",
        _mean(ls[-10:]) < 1.5 * _mean(ls[at - 10 : at]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- icicle: a hand-written L2 penalty subtracted instead of added -------------------------------


@scenario(
    family="icicle_growth_rate_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (nn.Tanh modules) predicting an icicle's growth rate (standardised) from 8 "
    "standardised air-temperature, meltwater-flux, wind and humidity readings at the eave, "
    "plain SGD at 5e-2, MSE. The loop adds an L2 penalty by hand (weight decay was to be kept "
    "out of the optimizer for a later ablation) and the line is written `loss - wd * l2` with "
    "wd = 0.05: every step pushes every weight outward by 0.5%. The loss first falls as the "
    "model fits, then climbs slowly and steadily for the rest of the run as the weights grow "
    "and the tanh units saturate; no single step stands out and nothing is non-finite.",
)
def h186_icicle_l2_penalty_sign(ctx: Context) -> None:
    gen = seeded(18609)
    model = Trunk(8, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2)
    wd = 0.05
    norms = []

    def total(step, loss, out, y):
        l2 = sum((p * p).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - wd * l2

    def after(step):
        norms.append(float(sum(p.detach().norm() ** 2 for p in model.parameters()) ** 0.5))

    _loop(ctx, model, opt, _tabular(gen, 64, 8, seed=9), 300, F.mse_loss, total=total, after=after)
    ls = ctx.losses
    low = min(range(len(ls) - 20), key=lambda i: _mean(ls[i : i + 20]))
    ctx.check(
        "loss fell first (its 20-step low well under the start)",
        _mean(ls[low : low + 20]) < 0.7 * _mean(ls[:10]),
    )
    ctx.check(
        "then climbed: last 20 steps 2x its 20-step low",
        _mean(ls[-20:]) > 2 * _mean(ls[low : low + 20]),
    )
    ctx.check("weight norm grew 3x over the run", norms[-1] > 3 * norms[0])
    ctx.check(
        "no single step 5x its predecessor (a slow climb)",
        all(b < 5 * a for a, b in zip(ls[low:-1], ls[low + 1 :], strict=True)),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- derecho: a deep tanh MLP whose weights were drawn with nn.init.normal_'s default std --------


class GustColumn(nn.Module):
    """Fourteen tanh layers (layers.0 ... layers.13), then a head."""

    def __init__(self, d_in=12, width=64, depth=14):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.normal_(layer.weight)  # std forgotten: 1.0, not 1/sqrt(fan_in)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="derecho_gust_front_deep_tanh_mlp",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="A fourteen-layer tanh MLP (width 64) predicting the peak gust (standardised) of a "
    "derecho's gust front at a station from 12 standardised radar, pressure-jump and "
    "temperature-drop readings, Adagrad at 1e-2, Huber loss. Its init loop calls "
    "nn.init.normal_(layer.weight) with the std left out, so every weight has std 1.0 instead "
    "of 1/sqrt(64) = 0.125: the tanh stack is deep in its chaotic phase, and the gradient "
    "grows about 2x at each layer going back toward the input: the first layer's weight "
    "gradient is about 1e4 times the last hidden layer's at the first step and stays above "
    "1e3 times to the end; finite.",
)
def h186_derecho_normal_init_std_forgotten(ctx: Context) -> None:
    gen = seeded(18610)
    model = GustColumn()
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ratio = []

    def total(step, loss, out, y):
        grads = torch.autograd.grad(
            loss, [model.layers[0].weight, model.layers[-1].weight], retain_graph=True
        )
        ratio.append(float(grads[0].norm() / grads[1].norm().clamp_min(1e-30)))
        return loss

    _loop(
        ctx,
        model,
        opt,
        _tabular(gen, 64, 12, seed=10),
        150,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        total=total,
    )
    ctx.check("first layer's gradient 1e3x the last hidden layer's at the start", ratio[0] > 1e3)
    ctx.check("still 1e3x (median) over the last 50 steps", _median(ratio[-50:]) > 1e3)
    ctx.check(
        "gradient norm 10x above a std-1/sqrt(fan_in) init's at step 0",
        ctx.grad_norms[0] > 10 * _sane_grad_norm(),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


def _sane_grad_norm() -> float:
    """The same model and first batch with the intended init (std 1/sqrt(fan_in))."""
    gen = seeded(18610)
    model = GustColumn()
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.mul_(1 / math.sqrt(layer.in_features))
    x, y = next(_tabular(gen, 64, 12, seed=10))
    F.huber_loss(model(x), y, delta=1.0).backward()
    return grad_norm(model)


# -- controls ------------------------------------------------------------------------------------


@scenario(
    family="bakery_crumb_structure_fp16_gelu_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GELU MLP with a LayerNorm grading a loaf's crumb (open, even, tight, "
    "tunnelled, gummy, collapsed) from 16 standardised proof-time, hydration, oven-spring "
    "and crumb-image readings, 10% of the grades given by a second, less careful baker, "
    "RAdam under OneCycleLR (max 3e-3), fp16 autocast with a torch.amp.GradScaler, "
    "clip_grad_norm_ at 1.0, cross-entropy with label smoothing 0.1. An ordinary "
    "mixed-precision run.",
)
def h186_bakery_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(18611)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(16, 64))
    model.add_module("norm", nn.LayerNorm(64))
    model.add_module("act1", nn.GELU())
    model.add_module("fc2", nn.Linear(64, 64))
    model.add_module("act2", nn.GELU())
    model.add_module("head", nn.Linear(64, 6))
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")

    def noisy(gen):
        for x, y in _classes(gen, 64, 16, 6, seed=11, spread=1.2):
            wrong = torch.rand(len(y), generator=gen) < 0.1
            yield x, torch.where(wrong, torch.randint(0, 6, y.shape, generator=gen), y)

    _loop(
        ctx,
        model,
        opt,
        noisy(gen),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        scaler=scaler,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell by 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("scaler's scale never fell below 1024", min(ctx.scales) >= 1024)


class OpeningBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class OpeningLM(nn.Module):
    """A small decoder over move tokens with a head tied to the token embedding."""

    def __init__(self, vocab=48, dim=32, heads=2, layers=2, context=24):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(OpeningBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.tok.weight
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _opening_games(gen, batch, vocab=48, length=24, seed=12):
    """Move-token sequences from a sparse Markov chain (each move has a few usual replies)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, vocab, generator=g) * 5.0
    probs = torch.softmax(logits, -1)
    while True:
        seq = [torch.randint(0, vocab, (batch,), generator=gen)]
        for _ in range(length):
            seq.append(torch.multinomial(probs[seq[-1]], 1, generator=gen).squeeze(1))
        s = torch.stack(seq, 1)
        yield s[:, :-1], s[:, 1:]


@scenario(
    family="chess_opening_move_tied_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A two-block pre-LN decoder (hand-written causal attention through "
    "F.scaled_dot_product_attention) over chess-opening move tokens, the output head tied to "
    "the token embedding, AdamW at 1e-2 with weight decay 0.1 on matrices and 0 on biases, "
    "norms and embeddings (two param groups), a 20-step linear warm-up then cosine decay "
    "(LambdaLR), clip_grad_norm_ at 1.0, cross-entropy. An ordinary run.",
)
def h186_chess_tied_lm_warmup_cosine(ctx: Context) -> None:
    gen = seeded(18612)
    model = OpeningLM()
    decay = [
        p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith(("tok", "pos"))
    ]
    plain = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith(("tok", "pos"))]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}], lr=1e-2
    )
    steps, warm = 300, 20

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def lm_loss(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    _loop(
        ctx,
        model,
        opt,
        _opening_games(gen, 32),
        steps,
        lm_loss,
        sched=sched,
        clip=1.0,
    )
    ctx.check("head tied to the embedding", model.lm_head.weight is model.tok.weight)
    ctx.check("loss fell by 30%", _fell(ctx.losses, ratio=0.7))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class SlurNet(nn.Module):
    def __init__(self, d_in=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _slur_takes(gen, batch, frames=20):
    """Twenty frames of a cornet lip slur (pitch deviation in cents / 100, amplitude, breath
    pressure); the target is the teacher's smoothness mark, standardised, noisy."""
    t = torch.linspace(0, 1, frames)
    while True:
        jump = torch.rand(batch, 1, generator=gen)
        rate = 2 + 6 * torch.rand(batch, 1, generator=gen)
        pitch = torch.tanh(rate * (t - jump)) + 0.05 * torch.randn(batch, frames, generator=gen)
        amp = (
            1
            - 0.5 * torch.exp(-((t - jump) ** 2) * 50)
            + 0.1 * torch.randn(batch, frames, generator=gen)
        )
        breath = torch.randn(batch, frames, generator=gen) * 0.3
        y = (rate.squeeze(1) - 5) / 2 + 0.1 * torch.randn(batch, generator=gen)
        yield torch.stack([pitch, amp, breath], -1), y


@scenario(
    family="cornet_lip_slur_gru_regressor",
    optimizer="Rprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GRU reading 20 frames of a cornet player's lip slur (pitch deviation, "
    "amplitude, breath pressure) and predicting the teacher's smoothness mark (standardised, "
    "noisy), Rprop at 1e-3 on mini-batches of 64 made of 2 accumulated micro-batches of 32, "
    "Huber loss. An ordinary run.",
)
def h186_cornet_gru_rprop_accumulated(ctx: Context) -> None:
    gen = seeded(18613)
    model = SlurNet()
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    _loop(
        ctx,
        model,
        opt,
        _slur_takes(gen, 32),
        200,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        accumulate=2,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))
