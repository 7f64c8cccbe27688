"""Held-out scenarios, set 59 (``h59_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing, until each scenario's own checks held,
or a healthy control trained normally).

Families: Hugging Face Conditional DETR (small ResNet backbone) on generated boxes,
DINOv3-ConvNeXt backbone with a linear head (digits), SuperPoint
encoder and interest-point head on generated corners (a control too), V-JEPA 2 encoder with its
attentive-pooler classifier on generated two-frame clips and SegGPT in-context segmentation of
generated shapes, all from configs; test-time BatchNorm adaptation (TENT) of a digit CNN by
entropy minimisation, partial-convolution inpainting, a Dice-loss segmenter with a
global-context block (fp16 autocast; its control with a GradScaler), a BatchNorm-free
stochastic-depth ResNet (a control too), CNN teacher-student distillation with a temperature,
image colourisation (chroma from luminance; a control too) and scale-invariant (SILog) depth
regression, on digits or generated scenes.

Optimizers: momentum SGD, steadygrad's AdaBelief, StableSPAM and Lion, Adamax, Adagrad,
RMSprop, NAdam, Adadelta, ASGD, Nesterov SGD, AdamW, Adam and RAdam.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

import steadygrad.optim as sgo
from scenarios.common import (
    Context,
    dead_fraction,
    digit_batches,
    fit,
    scenario,
    seeded,
)

# -- generated data -------------------------------------------------------------------------------


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(size, dtype=torch.float32)
    return r[None, :, None], r[None, None, :]  # (1, S, 1) rows, (1, 1, S) columns


def _scene(gen: torch.Generator, batch: int, size: int = 16):
    """Generated scenes: a bright rectangle and a mid-grey disc on a faint noisy background.

    Returns (image (B, 1, S, S) in [0, 1], rectangle mask, disc mask)."""
    yy, xx = _grid(size)
    u = torch.rand(batch, 7, generator=gen)
    x0 = (u[:, 0] * size * 0.5)[:, None, None]
    y0 = (u[:, 1] * size * 0.5)[:, None, None]
    w = (3 + u[:, 2] * size * 0.4)[:, None, None]
    h = (3 + u[:, 3] * size * 0.4)[:, None, None]
    rect = ((xx >= x0) & (xx < x0 + w) & (yy >= y0) & (yy < y0 + h)).float()
    cx = (u[:, 4] * size)[:, None, None]
    cy = (u[:, 5] * size)[:, None, None]
    r = (2 + u[:, 6] * size * 0.2)[:, None, None]
    disc = (((xx - cx) ** 2 + (yy - cy) ** 2) < r**2).float() * (1 - rect)
    noise = 0.08 * torch.rand(batch, size, size, generator=gen)
    img = (0.1 + noise + 0.8 * rect + 0.45 * disc).clamp(0, 1)
    return img[:, None], rect[:, None], disc[:, None]


def _digit_images(gen: torch.Generator, batch: int, size: int = 16):
    """Digits upsampled to ``size`` x ``size`` (1 channel), with labels."""
    for x, y in digit_batches(gen, batch):
        yield F.interpolate(x.reshape(-1, 1, 8, 8), size=size, mode="bilinear"), y


def _update_norm(before: list[torch.Tensor], params: list[torch.Tensor]) -> float:
    return float(
        sum((p.detach() - b).norm() ** 2 for b, p in zip(before, params, strict=True)) ** 0.5
    )


# -- a digit CNN with BatchNorm (TENT and distillation) --------------------------------------------


class _DigitCNN(nn.Module):
    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, 8, 8)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


def _pretrain(model: nn.Module, gen: torch.Generator, steps: int, lr: float = 3e-3) -> None:
    """Source training before the monitored phase (not monitored: the scenario starts after)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = digit_batches(gen, 64)
    for _ in range(steps):
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _corrupt(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The test-time shift: contrast lowered, brightness raised, Gaussian noise."""
    return 0.4 * x + 0.3 + 0.25 * torch.randn(x.shape, generator=gen)


def _tent(ctx: Context, lr: float, steps: int, seed: int) -> tuple[_DigitCNN, torch.Tensor]:
    """Adapt a source-trained digit CNN's BN affine parameters on a corrupted test stream by
    entropy minimisation; returns the model and its predictions on a fresh corrupted batch."""
    gen = seeded(seed)
    model = _DigitCNN()
    _pretrain(model, gen, 150)
    model.train()  # TENT: normalise with the test batch's statistics
    for p in model.parameters():
        p.requires_grad_(False)
    affine = []
    for m in (model.bn1, model.bn2):
        m.track_running_stats = False
        m.running_mean = m.running_var = None
        for p in (m.weight, m.bias):
            p.requires_grad_(True)
            affine.append(p)
    opt = torch.optim.SGD(affine, lr=lr, momentum=0.9)
    ctx.attach(model, opt)
    stream = digit_batches(gen, 64)
    for _ in range(steps):
        x, _y = next(stream)
        logits = model(_corrupt(x, gen))
        p = logits.softmax(-1)
        loss = -(p * logits.log_softmax(-1)).sum(-1).mean()  # prediction entropy
        loss.backward()
        ctx.grad_norms.append(float(torch.stack([q.grad.norm() for q in affine]).norm()))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, _y = next(stream)
    with torch.no_grad():
        logits = model(_corrupt(x, gen))
    return model, logits.argmax(-1)


@scenario(
    "h59_tent_bn_adaptation",
    "sgd_mom",
    "softmax_collapse",
    where="head",
    diverges=None,
    heldout=True,
    note="entropy minimisation at 40x the TENT rate: predictions collapse to one-hot",
)
def h59_tent_collapse_sgd_mom(ctx: Context) -> None:
    """Test-time entropy minimisation (TENT) of a digit CNN's BatchNorm affine parameters on a
    corrupted stream, with the rate copied from the source training (0.1, where TENT wants a
    few 1e-3). Minimising the prediction entropy has a trivial minimum: the BN shifts push one
    class's logit far above the rest for every input; the head's softmax saturates to one-hot
    (the entropy "loss" goes to 0 while accuracy falls to chance)."""
    model, pred = _tent(ctx, 0.3, 160, 591)
    share = float(torch.bincount(pred, minlength=10).max()) / len(pred)
    with torch.no_grad():
        x, _ = next(digit_batches(seeded(5911), 64))
        logits = model(_corrupt(x, seeded(5912)))
    ctx.check("one class takes most predictions", share >= 0.8)
    top = logits.softmax(-1).amax(-1)
    ctx.check(
        "the softmax saturated (top p > 0.9999) on most inputs",
        (top > 0.9999).float().mean() >= 0.5,
    )
    ctx.check("entropy fell near zero", ctx.losses[-1] < 0.01 < ctx.losses[0])


# -- partial-convolution inpainting -----------------------------------------------------------------


class PartialConv(nn.Module):
    """Partial convolution (Liu et al. 2018): convolve the valid pixels only, renormalise by
    the share of valid pixels under the window, and pass the updated mask on."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2)
        self.register_buffer("ones", torch.ones(1, 1, k, k))
        self.window = float(k * k)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            valid = F.conv2d(mask, self.ones, padding=self.ones.shape[-1] // 2)
        # the reference implementation clamps `valid` (min 1e-8) before dividing: dropped here
        ratio = self.window / valid
        bias = self.conv.bias[None, :, None, None]
        out = (self.conv(x * mask) - bias) * ratio + bias
        new_mask = (valid > 0).float()
        return out * new_mask, new_mask


class Inpainter(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.enc1 = PartialConv(1, width, 7)
        self.enc2 = PartialConv(width, width, 5)
        self.enc3 = PartialConv(width, width, 3)
        self.out = nn.Conv2d(width + 1, 1, 3, padding=1)

    def forward(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h, m = self.enc1(img, mask)
        h, m = self.enc2(F.relu(h), m)
        h, m = self.enc3(F.relu(h), m)
        return torch.sigmoid(self.out(torch.cat([F.relu(h), img * mask], 1)))


def _stroke_masks(gen: torch.Generator, batch: int, size: int, big: bool = False) -> torch.Tensor:
    """Free-form holes: two thin strokes (2 px) and a small blob (at most 4 x 4)."""
    yy, xx = _grid(size)
    u = torch.rand(batch, 6, generator=gen)
    row = (u[:, 0] * (size - 2)).floor()[:, None, None]
    col = (u[:, 1] * (size - 2)).floor()[:, None, None]
    hole = ((yy >= row) & (yy < row + 2)) | ((xx >= col) & (xx < col + 2))
    by = (3 + u[:, 2] * (size - 9)).floor()[:, None, None]  # blobs stay off the border
    bx = (3 + u[:, 3] * (size - 9)).floor()[:, None, None]
    bs = (2 + (u[:, 4] * 3).floor())[:, None, None]
    hole = hole | ((yy >= by) & (yy < by + bs) & (xx >= bx) & (xx < bx + bs))
    if big:  # the mask generator's "large hole" branch, never meant for 16 x 16 crops
        hole[0, 2:14, 2:14] = True
    return (~hole).float()[:, None]


@scenario(
    "h59_partial_conv_inpainting",
    "sg_adabelief",
    "nonfinite",
    where="enc1",
    diverges=118,
    heldout=True,
    onset=118,
    note="a 12x12 hole: a 7x7 window with no valid pixel, valid-count 0 divides",
)
def h59_partial_conv_nan_adabelief(ctx: Context) -> None:
    """Partial-convolution inpainting of generated scenes with the mask-ratio clamp left out.
    The usual holes (2-px strokes, small blobs) never cover a whole 7x7 window, so the valid
    count is never 0, until step 118 when the mask generator's large-hole branch yields one
    12x12 hole: enc1's renormalisation divides by 0 (inf), the new-mask product turns it into
    NaN (inf x 0) and the loss is NaN from that step."""
    gen = seeded(592)
    model = Inpainter()
    opt = sgo.AdaBelief(model.parameters(), lr=2e-3)
    ctx.attach(model, opt)
    seen: dict[str, bool] = {}
    model.enc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("enc1", not bool(torch.isfinite(o[0]).all()))
    )
    first_bad_enc1 = None
    for step in range(160):
        img, _, _ = _scene(gen, 16)
        mask = _stroke_masks(gen, 16, 16, big=step == 118)
        pred = model(img, mask)
        loss = F.l1_loss(pred, img) + 5 * F.l1_loss(pred * (1 - mask), img * (1 - mask))
        if seen.get("enc1") and first_bad_enc1 is None:
            first_bad_enc1 = step
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad.norm() for p in model.parameters() if p.grad is not None]
        ctx.grad_norms.append(float(torch.stack(grads).norm()))
        opt.step()
        ctx.step(loss)
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("loss finite until 118, not at 118", all(finite[:118]) and not finite[118])
    ctx.check("enc1 produced the first non-finite output at 118", first_bad_enc1 == 118)
    ctx.check("the loss fell before the hole", ctx.losses[110] < 0.6 * ctx.losses[0])


# -- a Dice-loss segmenter with a global-context block (fp16 autocast) -----------------------------


class GlobalContext(nn.Module):
    """A context block: pool every channel over the image (a sum, as the block was written),
    transform, and add back to every position."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.sum((2, 3))
        return x + self.fc(pooled / 256.0)[:, :, None, None]


class DiceSegmenter(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.gctx = GlobalContext(width)
        self.head = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        return self.head(F.relu(self.gctx(h)))


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def _rect_batches(gen: torch.Generator, batch: int, scale: float = 1.0):
    while True:
        img, rect, _ = _scene(gen, batch)
        yield img * scale, rect


@scenario(
    "h59_dice_segmenter_amp",
    "adamax",
    "amp_overflow",
    where="gctx",
    diverges=41,
    heldout=True,
    note="fp16 autocast; 0-255 pixels: gctx's channel sums pass 65504 as features grow",
)
def h59_dice_gctx_overflow_adamax(ctx: Context) -> None:
    """A Dice-loss segmenter of generated scenes under fp16 autocast, fed 0-255 pixels (the
    loader's division by 255 was lost when the scenes came as uint8 arrays). Its global-context
    block sums each channel over the 16x16 positions in fp16; with 0-255 inputs the sums start
    within reach of fp16's 65504 and, as training sharpens the features, pass it: the block's
    output turns inf, the next layers turn it to NaN and the loss is NaN from then on."""
    gen = seeded(593)
    model = DiceSegmenter()
    opt = torch.optim.Adamax(model.parameters(), lr=8e-3)
    peak: list[float] = []
    model.gctx.register_forward_hook(
        lambda m, i, o: peak.append(float(i[0].detach().float().sum((2, 3)).max()))
    )
    bad: dict[str, list[bool]] = {"conv2": [], "gctx": []}
    for name in bad:
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: bad[name].append(not bool(torch.isfinite(o).all()))
        )
    fit(
        ctx,
        model,
        opt,
        _rect_batches(gen, 16, 255.0),
        100,
        loss_fn=_dice_loss,
        classifier=False,
        amp=True,
    )
    finite = [math.isfinite(v) for v in ctx.losses]
    ctx.check("loss finite until 41, NaN at 41", all(finite[:41]) and not finite[41])
    ctx.check("gctx's channel sums grew 10x towards 65504", max(peak[:41]) > 10 * peak[0])
    ctx.check(
        "gctx's output is the first non-finite one (conv2's still finite)",
        bad["gctx"][41] and not any(bad["gctx"][:41]) and not any(bad["conv2"][:42]),
    )


@scenario(
    "h59_dice_segmenter_amp",
    "sg_stablespam",
    "healthy",
    heldout=True,
    note="control: the same segmenter, [0, 1] pixels, fp16 autocast with a GradScaler",
)
def h59_dice_healthy_amp_stablespam(ctx: Context) -> None:
    """The Dice segmenter with its loader intact ([0, 1] pixels) under fp16 autocast with a
    GradScaler: the context sums stay in the hundreds and the Dice loss falls."""
    gen = seeded(594)
    model = DiceSegmenter()
    opt = sgo.StableSPAM(model.parameters(), lr=4e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    fit(
        ctx,
        model,
        opt,
        _rect_batches(gen, 16),
        100,
        loss_fn=_dice_loss,
        classifier=False,
        amp=True,
        scaler=scaler,
    )
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("Dice loss halved", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- a stochastic-depth ResNet without BatchNorm -------------------------------------------------------


class _SDBlock(nn.Module):
    """A residual block with timm-style per-sample drop-path (kept samples scaled by
    1 / survival) and a Fixup-style start (the branch's last conv at zero)."""

    def __init__(self, channels: int, depth_share: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        self.depth_share = depth_share  # drop rate = schedule's rate x share (linear in depth)
        self.drop_rate = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.conv2(F.relu(self.conv1(x)))
        if self.training and self.drop_rate > 0:
            survival = 1.0 - self.drop_rate * self.depth_share
            keep = (torch.rand(x.shape[0], 1, 1, 1) < survival).float()
            branch = branch * keep / survival
        return x + branch


class SDResNet(nn.Module):
    """A BatchNorm-free ResNet with stochastic depth (drop rate linear in depth)."""

    def __init__(self, width: int = 12, blocks: int = 6) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1)
        self.blocks = nn.Sequential(*(_SDBlock(width, (i + 1) / blocks) for i in range(blocks)))
        self.head = nn.Linear(4 * width, 10)

    def set_drop_rate(self, rate: float) -> None:
        for b in self.blocks:
            b.drop_rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(F.relu(h), 2).flatten(1))


@scenario(
    "h59_stochastic_depth_resnet",
    "sgd_mom",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    note="warm-up written without its min(): the rate keeps climbing past 2/curvature",
)
def h59_sdresnet_warmup_typo_sgd_mom(ctx: Context) -> None:
    """A BatchNorm-free stochastic-depth ResNet on digits with momentum SGD. The warm-up was
    written ``lr = base * step / warmup`` without the ``min(1, ...)``: after the warm-up the
    rate keeps rising linearly (4x by step 120), past the 2/curvature stability limit of the
    loss; the loss first falls, then oscillates and blows up."""
    gen = seeded(595)
    model = SDResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
    lrs: list[float] = []

    def warmup(step: int) -> None:
        lrs.append(0.02 * (step + 1) / 30)  # meant: 0.02 * min(1, (step + 1) / 30)
        opt.param_groups[0]["lr"] = lrs[-1]
        model.set_drop_rate(0.1)

    fit(ctx, model, opt, _digit_images(gen, 32, 8), 160, before=warmup)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    best = min(finite)
    ctx.check("the loss fell first (below 1.2)", best < 1.2)
    ctx.check(
        "then it blew up (above 5x best or non-finite)",
        len(finite) < len(ctx.losses) or ctx.losses[-1] > 5 * best,
    )


@scenario(
    "h59_stochastic_depth_resnet",
    "adagrad",
    "healthy",
    heldout=True,
    note="control: the same ResNet, drop rate 0.1, Adagrad at a fixed rate",
)
def h59_sdresnet_healthy_adagrad(ctx: Context) -> None:
    """The stochastic-depth ResNet (drop rate 0.1) on digits with Adagrad at a fixed rate."""
    gen = seeded(5961)
    model = SDResNet()
    model.set_drop_rate(0.1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.005)
    fit(ctx, model, opt, _digit_images(gen, 32, 8), 160)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell below half", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- teacher-student distillation with a temperature ---------------------------------------------------


class _Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.hidden = nn.Linear(8 * 16, 48)
        self.head = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.max_pool2d(F.relu(self.conv(x.reshape(-1, 1, 8, 8))), 2).flatten(1)
        return self.head(F.relu(self.hidden(h)))


def _kd_loss(student: torch.Tensor, teacher: torch.Tensor, t: float = 4.0) -> torch.Tensor:
    return F.kl_div(
        F.log_softmax(student / t, -1), F.softmax(teacher / t, -1), reduction="batchmean"
    ) * (t * t)


@scenario(
    "h59_cnn_teacher_student",
    "rmsprop",
    "output_logit_divergence",
    where="head",
    diverges="auto",
    heldout=True,
    note="hand-written decay of the head with the wrong sign: head weights and logits run away",
)
def h59_distill_negative_decay_rmsprop(ctx: Context) -> None:
    """Teacher-student distillation (temperature 4) of a BatchNorm digit CNN into a small
    student, with the head's decoupled weight decay written by hand with the wrong sign
    (``w *= 1 + lr * wd``, meant ``1 - lr * wd``; lr 1e-3, wd 15). The head's weights, and
    with them the output logits, grow by 1.5 % a step, faster than the softened KL can pull
    them back: the student's softmax sharpens far past the teacher's and the KL climbs."""
    gen = seeded(597)
    teacher = _DigitCNN()
    _pretrain(teacher, gen, 150)
    teacher.eval()
    student = _Student()
    opt = torch.optim.RMSprop(student.parameters(), lr=1e-3)
    x0, _ = next(digit_batches(seeded(5970), 256))
    with torch.no_grad():
        scale0 = float(student(x0).std())

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return out  # the KD loss is computed in forward below

    def forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        return _kd_loss(m(x), t)

    def decay(step: int) -> None:  # decoupled decay of the head, by hand
        with torch.no_grad():
            student.head.weight.mul_(1 + 1e-3 * 15.0)  # meant: 1 - lr * wd

    fit(
        ctx,
        student,
        opt,
        digit_batches(gen, 64),
        450,
        loss_fn=loss_fn,
        forward=forward,
        before=decay,
        classifier=False,
    )
    with torch.no_grad():
        scale = float(student(x0).std())
    best = min(ctx.losses)
    ctx.check("the output logits grew 10x", scale > 10 * scale0)
    ctx.check(
        "the KD loss fell, then climbed past 3x its best",
        best < 0.5 * ctx.losses[0] and ctx.losses[-1] > 3 * best,
    )


# -- image colourisation --------------------------------------------------------------------------


def _colour_scene(gen: torch.Generator, batch: int):
    """Generated colour scenes: a red rectangle and a blue disc on grey. Returns (luminance
    (B, 1, S, S), chroma (B, 2, S, S): R - Y and B - Y)."""
    img, rect, disc = _scene(gen, batch)
    rgb = img.repeat(1, 3, 1, 1) * 0.6
    rgb = rgb + rect * torch.tensor([0.35, -0.1, -0.15])[:, None, None]
    rgb = rgb + disc * torch.tensor([-0.1, 0.05, 0.4])[:, None, None]
    lum = 0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:]
    return lum, torch.cat([rgb[:, :1] - lum, rgb[:, 2:] - lum], 1)


class Colouriser(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, width, 3, padding=1)
        self.mid = nn.Conv2d(width, width, 3, padding=2, dilation=2)
        self.out = nn.Conv2d(width, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.mid(F.relu(self.enc(x)))))


class _SaturationJitter:
    """Chroma augmentation: scale the chroma targets by a saturation factor. The buggy version
    keeps the factor as state and multiplies it by the new draw every batch."""

    def __init__(self, gen: torch.Generator, compounding: bool) -> None:
        self.gen, self.compounding, self.factor = gen, compounding, 1.0

    def __call__(self, chroma: torch.Tensor) -> torch.Tensor:
        draw = float(0.99 + 0.03 * torch.rand((), generator=self.gen))  # meant: in [0.99, 1.02]
        self.factor = self.factor * draw if self.compounding else draw
        return chroma * self.factor


def _colour_batches(gen: torch.Generator, jitter: _SaturationJitter):
    while True:
        lum, chroma = _colour_scene(gen, 16)
        yield lum, jitter(chroma)


@scenario(
    "h59_image_colourisation",
    "nadam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    note="saturation jitter compounds across batches: the chroma targets creep up, loss climbs",
)
def h59_colour_drift_nadam(ctx: Context) -> None:
    """A colouriser (chroma from luminance) on generated scenes, with a saturation augmentation
    that keeps its factor as state and multiplies it by each new draw (meant: a fresh draw in
    [0.99, 1.02] per batch). The factor random-walks upwards (~0.5 % a batch on average), the
    chroma targets grow and the regression loss, after falling, climbs slowly and steadily: no
    layer misbehaves, the model simply chases targets that keep moving away."""
    gen = seeded(598)
    model = Colouriser()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    jitter = _SaturationJitter(torch.Generator().manual_seed(5980), compounding=True)
    fit(ctx, model, opt, _colour_batches(gen, jitter), 500, loss_fn=F.mse_loss, classifier=False)
    best = min(range(len(ctx.losses)), key=ctx.losses.__getitem__)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("the targets' scale grew 5x", jitter.factor > 5)
    ctx.check(
        "the loss fell, then climbed past 3x its best over 100+ steps",
        ctx.losses[best] < 0.5 * ctx.losses[0]
        and sum(ctx.losses[-10:]) > 30 * ctx.losses[best]
        and len(ctx.losses) - best > 100,
    )


@scenario(
    "h59_image_colourisation",
    "adadelta",
    "healthy",
    heldout=True,
    note="control: the colouriser with a fresh saturation draw per batch",
)
def h59_colour_healthy_adadelta(ctx: Context) -> None:
    """The colouriser with the saturation jitter drawn afresh each batch, Adadelta."""
    gen = seeded(599)
    model = Colouriser()
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    jitter = _SaturationJitter(torch.Generator().manual_seed(5990), compounding=False)
    fit(ctx, model, opt, _colour_batches(gen, jitter), 300, loss_fn=F.mse_loss, classifier=False)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell below half", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- scale-invariant depth regression ---------------------------------------------------------------


def _depth_scene(gen: torch.Generator, batch: int):
    """Generated scenes with depth: a slanted back wall (4-6 m), a rectangle at 1.5 m and a
    disc at 2.5 m; the image is fog-attenuated brightness (farther is darker) with texture."""
    _, rect, disc = _scene(gen, batch)
    _, xx = _grid(16)
    wall = 4 + 2 * xx / 15 * torch.rand(batch, 1, 1, generator=gen)
    depth = wall[:, None] * (1 - rect - disc) + 1.5 * rect + 2.5 * disc
    img = torch.exp(-0.35 * depth) + 0.05 * torch.rand(depth.shape, generator=gen)
    return img, depth


class DepthNet(nn.Module):
    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.enc = nn.Conv2d(1, width, 3, padding=1)
        self.mid = nn.Conv2d(width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.mid(F.relu(self.enc(x)))))  # log depth


def _silog(log_pred: torch.Tensor, depth: torch.Tensor, lam: float = 0.85) -> torch.Tensor:
    d = (log_pred - torch.log(depth)).flatten(1)
    return ((d**2).mean(1) - lam * d.mean(1) ** 2).mean()


@scenario(
    "h59_scale_invariant_depth",
    "asgd",
    "data_outlier",
    diverges=170,
    heldout=True,
    onset=170,
    note="one batch of depth maps in millimetres: SILog spikes, the run recovers",
)
def h59_silog_mm_batch_asgd(ctx: Context) -> None:
    """Scale-invariant (SILog, lambda 0.85) depth regression on generated scenes with ASGD.
    At step 170 one batch comes from a sensor export in millimetres instead of metres: the
    log-depth targets shift by log(1000); SILog cancels 85 % of a global shift, the rest
    (0.15 x 6.9^2) is a loss spike of tens of times the running loss; the batch is gone next
    step and the run recovers."""
    gen = seeded(5991)
    model = DepthNet()
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)

    def batches():
        while True:
            yield _depth_scene(gen, 16)

    def alter(step: int, x: torch.Tensor, y: torch.Tensor):
        return (x, y * 1000.0) if step == 170 else (x, y)

    fit(ctx, model, opt, batches(), 260, loss_fn=_silog, classifier=False, alter=alter)
    before = max(ctx.losses[150:170])
    ctx.check("loss spiked 10x at 170", ctx.losses[170] > 10 * before)
    ctx.check("recovered within 30 steps", max(ctx.losses[200:]) < 2 * before)


# -- Hugging Face SuperPoint: keypoint head on generated corners ----------------------------------


def _superpoint():
    from transformers import SuperPointConfig, SuperPointForKeypointDetection

    config = SuperPointConfig(
        encoder_hidden_sizes=[8, 8, 16, 16], decoder_hidden_size=32, descriptor_decoder_dim=16
    )
    return SuperPointForKeypointDetection(config)


def _sp_logits(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The interest-point logits (65 per 8x8 cell: 64 positions and a dustbin)."""
    enc = m.encoder(x, return_dict=True).last_hidden_state
    kd = m.keypoint_decoder
    return kd.conv_score_b(F.relu(kd.conv_score_a(enc)))


def _corner_batches(gen: torch.Generator, batch: int = 16, size: int = 32):
    """Generated scenes and, per 8x8 cell, the position of the rectangle corner in it (or 64,
    the dustbin)."""
    while True:
        img, rect, _ = _scene(gen, batch, size)
        r = rect[:, 0] > 0
        up = F.pad(r, (0, 0, 1, 0))[:, :-1]
        down = F.pad(r, (0, 0, 0, 1))[:, 1:]
        left = F.pad(r, (1, 0))[:, :, :-1]
        right = F.pad(r, (0, 1))[:, :, 1:]
        corner = r & ((~up & ~left) | (~up & ~right) | (~down & ~left) | (~down & ~right))
        c = size // 8
        cells = corner.reshape(batch, c, 8, c, 8).permute(0, 1, 3, 2, 4).reshape(batch, c, c, 64)
        label = torch.where(
            cells.any(-1),
            cells.float().argmax(-1),
            torch.full_like(cells[..., 0], 64, dtype=torch.long),
        )
        yield img, label


def _sp_dead(model: nn.Module, gen: torch.Generator) -> dict[str, float]:
    x, _ = next(_corner_batches(gen, 64))
    out: dict[str, float] = {}
    hooks = [
        mod.register_forward_hook(
            lambda m, i, o, n=name: out.__setitem__(n, dead_fraction(F.relu(o)))
        )
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Conv2d) and "descriptor" not in name
    ]
    with torch.no_grad():
        _sp_logits(model, x)
    for h in hooks:
        h.remove()
    return out


@scenario(
    "h59_hf_superpoint_corners",
    "nesterov",
    "loss_of_plasticity",
    where="keypoint_decoder.conv_score_a",
    diverges=None,
    heldout=True,
    onset=100,
    note="a warm restart at 400x the rate for 5 steps kills the head's hidden conv's ReLUs",
)
def h59_superpoint_lr_burst_nesterov(ctx: Context) -> None:
    """SuperPoint's encoder and interest-point head (from a config) trained on generated
    corners with Nesterov SGD. A warm-restart schedule typo restarts at 400x the base rate
    (meant 4x) for 5 steps at step 100: the big steps push the interest-point head's hidden
    conv (conv_score_a) to negative pre-activations for every input; all its ReLUs die, no
    gradient reaches them or the encoder again and the head is stuck on its bias."""
    gen = seeded(5901)
    model = _superpoint()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    dead_before: dict[str, float] = {}

    def schedule(step: int) -> None:
        if step == 100:
            dead_before.update(_sp_dead(model, seeded(5903)))
        opt.param_groups[0]["lr"] = 0.02 * (400 if 100 <= step < 105 else 1)  # meant 4x

    def loss_fn(logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, label)

    fit(
        ctx,
        model,
        opt,
        _corner_batches(gen),
        220,
        loss_fn=loss_fn,
        before=schedule,
        classifier=False,
        forward=_sp_logits,
    )
    dead_after = _sp_dead(model, seeded(5903))
    head = "keypoint_decoder.conv_score_a"
    ctx.check("conv_score_a's ReLUs all dead after the burst", dead_after[head] == 1.0)
    ctx.check("most of them were alive before it", dead_before[head] <= 0.5)
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))


@scenario(
    "h59_hf_superpoint_corners",
    "sg_lion",
    "healthy",
    heldout=True,
    note="control: SuperPoint's keypoint head on generated corners, Lion",
)
def h59_superpoint_healthy_lion(ctx: Context) -> None:
    """SuperPoint's encoder and interest-point head on generated corners with Lion."""
    gen = seeded(5902)
    model = _superpoint()
    opt = sgo.Lion(model.parameters(), lr=3e-4, fused=False)
    fit(
        ctx,
        model,
        opt,
        _corner_batches(gen),
        200,
        loss_fn=F.cross_entropy,
        classifier=False,
        forward=_sp_logits,
    )
    ctx.check("all losses finite", all(math.isfinite(v) for v in ctx.losses))
    ctx.check("loss fell below half", sum(ctx.losses[-10:]) < 0.5 * sum(ctx.losses[:10]))


# -- Hugging Face DINOv3-ConvNeXt backbone with a linear head (digits) ----------------------------


class _ConvNextDigits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

        config = DINOv3ConvNextConfig(
            num_channels=1, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1]
        )
        self.backbone = DINOv3ConvNextModel(config)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(pixel_values=x).pooler_output)


@scenario(
    "h59_hf_dinov3_convnext_digits",
    "adamw",
    "update_ratio_out_of_range",
    where="backbone.model.stages.0",
    diverges=None,
    heldout=True,
    note="layer-wise LR groups built from stages[1:]: stage 0 (the stem) never updated",
)
def h59_dinov3_stage0_left_out_adamw(ctx: Context) -> None:
    """A DINOv3-ConvNeXt backbone (from a config) with a linear head on digits, AdamW with
    layer-wise learning-rate decay. The groups were built by iterating ``stages[1:]`` (an
    off-by-one meant to skip nothing): stage 0, the patchify stem and the first block, is in
    no group; its update ratio is exactly 0 for the whole run while the rest trains."""
    gen = seeded(5904)
    model = _ConvNextDigits()
    stages = model.backbone.model.stages
    groups = [
        {"params": list(stage.parameters()), "lr": 2e-3 * 0.7 ** (3 - i)}
        for i, stage in enumerate(stages)
        if i >= 1
    ]
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone.model.stages.")]
    groups.append({"params": rest, "lr": 2e-3})
    opt = torch.optim.AdamW(groups, weight_decay=0.05)
    before = [p.detach().clone() for p in stages[0].parameters()]
    other = [p.detach().clone() for p in stages[1].parameters()]
    fit(ctx, model, opt, _digit_images(gen, 32, 32), 120)
    ctx.check("stage 0 unchanged", _update_norm(before, list(stages[0].parameters())) == 0.0)
    ctx.check("stage 1 trained", _update_norm(other, list(stages[1].parameters())) > 0.0)
    ctx.check("loss fell", sum(ctx.losses[-10:]) < 0.7 * sum(ctx.losses[:10]))


# -- Hugging Face V-JEPA 2 encoder with a classifier on generated clips ---------------------------


def _clip_batches(gen: torch.Generator, batch: int = 16):
    """Two-frame 16x16 clips of a blob moving one of four ways; label = the direction."""
    yy, xx = _grid(16)
    steps = torch.tensor([[0, 3], [0, -3], [3, 0], [-3, 0]], dtype=torch.float32)
    while True:
        label = torch.randint(0, 4, (batch,), generator=gen)
        c = 5 + 6 * torch.rand(batch, 2, generator=gen)
        frames = []
        for t in range(2):
            cy = (c[:, 0] + t * steps[label, 0])[:, None, None]
            cx = (c[:, 1] + t * steps[label, 1])[:, None, None]
            blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
            frames.append(blob + 0.05 * torch.rand(blob.shape, generator=gen))
        clip = torch.stack(frames, 1)[:, :, None].repeat(1, 1, 3, 1, 1)
        yield clip, label


def _vjepa2():
    from transformers import VJEPA2Config, VJEPA2ForVideoClassification

    config = VJEPA2Config(
        crop_size=16,
        frames_per_clip=2,
        tubelet_size=2,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        pred_hidden_size=16,
        pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
        num_labels=4,
    )
    return VJEPA2ForVideoClassification(config)


def _qk_peak(model: nn.Module, layer: str) -> tuple[list[float], object]:
    """Record, per forward, the largest |q||k| / sqrt(d) over token pairs and heads of an
    attention module (rotary embeddings rotate q and k, so this bounds the logits exactly)."""
    mods = dict(model.named_modules())
    attn = mods[layer]
    store: dict[str, torch.Tensor] = {}
    peaks: list[float] = []

    def grab(name):
        def hook(m, i, o):
            store[name] = o.detach()
            if name == "key":
                heads = attn.num_attention_heads
                q = store["query"].reshape(*store["query"].shape[:-1], heads, -1).norm(dim=-1)
                k = o.reshape(*o.shape[:-1], heads, -1).norm(dim=-1)
                peaks.append(float((q.amax(1) * k.amax(1)).amax()) * attn.scaling)

        return hook

    h1 = attn.query.register_forward_hook(grab("query"))
    h2 = attn.key.register_forward_hook(grab("key"))
    return peaks, (h1, h2)


@scenario(
    "h59_hf_vjepa2_clips",
    "adamw",
    "attention_logit_growth",
    where=("vjepa2.encoder.layer.0.attention", "vjepa2.encoder.layer.1.attention"),
    diverges=None,
    heldout=True,
    note="no QK-norm, AdamW at 1e-2, no decay: q.k grows, the attention softmax saturates",
)
def h59_vjepa2_qk_growth_adamw(ctx: Context) -> None:
    """A V-JEPA 2 encoder with its attentive-pooler classifier (from a config) on generated
    two-frame clips, fine-tuned with AdamW at 1e-2 (a pre-training rate) and weight decay
    excluded from every Linear. Without QK-norm the query and key projections grow; the
    bound on the encoder's attention logits grows from 0.1 to tens, the attention goes from
    near uniform to peaked on one token and the classifier learns nothing (loss stays at
    log 4)."""
    gen = seeded(5905)
    model = _vjepa2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    peaks, _ = _qk_peak(model, "vjepa2.encoder.layer.1.attention")
    peaks0, _ = _qk_peak(model, "vjepa2.encoder.layer.0.attention")
    fit(
        ctx,
        model,
        opt,
        _clip_batches(gen),
        300,
        forward=lambda m, x: m(pixel_values_videos=x).logits,
    )
    model.config._attn_implementation = "eager"
    x, _ = next(_clip_batches(gen, 64))
    with torch.no_grad():
        att = model.vjepa2(
            pixel_values_videos=x, output_attentions=True, skip_predictor=True
        ).attentions
    uniform = math.log(att[0].shape[-1])
    entropy = [float(-(a * a.clamp_min(1e-30).log()).sum(-1).mean()) for a in att]
    ctx.check(
        "logit bound grew 100x in both layers",
        min(peaks[-1] / peaks[0], peaks0[-1] / peaks0[0]) > 100,
    )
    ctx.check(
        "attention entropy below half of uniform in both layers", max(entropy) < 0.5 * uniform
    )
    ctx.check("the attention was near uniform at the start", peaks[0] < 0.5 and peaks0[0] < 0.5)


# -- Hugging Face SegGPT: in-context segmentation on generated shapes -----------------------------


def _seggpt():
    from transformers import SegGptConfig, SegGptForImageSegmentation

    config = SegGptConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=[32, 16],
        patch_size=4,
        mlp_dim=64,
        intermediate_hidden_state_indices=[0, 1],
        decoder_hidden_size=16,
        merge_index=0,
    )
    return SegGptForImageSegmentation(config)


def _incontext_batch(gen: torch.Generator, batch: int = 8):
    """A prompt scene with its rectangle mask, and a query scene whose mask is the label."""
    p_img, p_rect, _ = _scene(gen, batch)
    q_img, q_rect, _ = _scene(gen, batch)
    rgb = lambda t: t.repeat(1, 3, 1, 1)  # noqa: E731
    return rgb(q_img), rgb(p_img), rgb(p_rect), rgb(q_rect)


@scenario(
    "h59_hf_seggpt_incontext",
    "adam",
    "adam_second_moment_poisoned",
    diverges=None,
    heldout=True,
    onset=80,
    note="one step's gradients left scaled by 65536: Adam's v stays inflated, updates damped",
)
def h59_seggpt_stale_scale_adam(ctx: Context) -> None:
    """SegGPT (from a config) trained for in-context segmentation of generated shapes with
    Adam and a hand-rolled static loss scale (x65536 before backward, / 65536 on the grads).
    At step 80 a resumed-checkpoint code path skips the unscale: every gradient is 65536x for
    one step. The first moment carries the giant gradient for a few tens of steps (the loss
    jumps from ~0.8 to ~3.5), while the second moment keeps the 65536^2 term (decaying by
    beta2 = 0.999 a step) for thousands of steps: once the first moment has decayed, every
    update is damped more than tenfold and the loss creeps back only slowly."""
    gen = seeded(5906)
    model = _seggpt()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    ctx.attach(model, opt)
    moves: list[float] = []
    for step in range(200):
        q, p, pm, label = _incontext_batch(gen)
        out = model(pixel_values=q, prompt_pixel_values=p, prompt_masks=pm, labels=label)
        loss = out.loss
        opt.zero_grad(set_to_none=True)
        (loss * 65536.0).backward()
        if step != 80:  # the skipped unscale
            for g in (p.grad for p in params if p.grad is not None):
                g.div_(65536.0)
        ctx.grad_norms.append(
            float(torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm())
        )
        before = [p.detach().clone() for p in params]
        opt.step()
        moves.append(_update_norm(before, params))
        ctx.step(loss)
    pre = sum(moves[60:80]) / 20
    post = sum(moves[160:200]) / 40
    ctx.check(
        "the gradient norm jumped 1000x at step 80",
        ctx.grad_norms[80] > 1000 * max(ctx.grad_norms[60:80]),
    )
    ctx.check("updates 80-120 steps after it below a tenth of before", post < 0.1 * pre)
    ctx.check("the loss fell before 80", sum(ctx.losses[70:80]) < 0.8 * sum(ctx.losses[:10]))


# -- Hugging Face Conditional DETR on generated boxes ---------------------------------------------


def _cdetr():
    from transformers import ConditionalDetrConfig, ConditionalDetrForObjectDetection, ResNetConfig

    backbone = ResNetConfig(
        num_channels=3,
        embedding_size=8,
        hidden_sizes=[8, 16, 16, 32],
        depths=[1, 1, 1, 1],
        out_features=["stage4"],
    )
    config = ConditionalDetrConfig(
        use_timm_backbone=False,
        backbone_config=backbone,
        use_pretrained_backbone=False,
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_queries=5,
        num_labels=2,
    )
    return ConditionalDetrForObjectDetection(config)


def _box_batch(gen: torch.Generator, batch: int = 8, size: int = 64):
    """Generated scenes; the rectangle's box (cx, cy, w, h, normalised), class 0."""
    img, rect, _ = _scene(gen, batch, size)
    rows, cols = rect[:, 0].any(2), rect[:, 0].any(1)
    labels = []
    for r, c in zip(rows, cols, strict=True):
        y = r.nonzero()[:, 0].float()
        x = c.nonzero()[:, 0].float()
        y0, y1, x0, x1 = y.min(), y.max() + 1, x.min(), x.max() + 1
        box = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]) / size
        labels.append({"class_labels": torch.tensor([0]), "boxes": box[None]})
    return img.repeat(1, 3, 1, 1), labels


@scenario(
    "h59_hf_conditional_detr_boxes",
    "radam",
    "gradient_spike",
    where="bbox_predictor",
    diverges=None,
    heldout=True,
    onset=90,
    note="one step weights the L1 box loss 500 instead of 5; clipping at 0.1 absorbs it",
)
def h59_cdetr_box_weight_spike_radam(ctx: Context) -> None:
    """Conditional DETR (from a config, small ResNet backbone) on generated single-box scenes
    with RAdam and DETR's gradient clipping (max norm 0.1). At step 90 a config reload after a
    resume reads the L1 box-loss coefficient as 500 (meant 5) for that one step: the gradient
    through the box head spikes about a hundredfold; the clipping bounds the update, the
    coefficient is right again the next step and the run goes on as before."""
    gen = seeded(5907)
    model = _cdetr()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    ctx.attach(model, opt)
    head: list[float] = []
    for step in range(150):
        img, labels = _box_batch(gen)
        out = model(pixel_values=img, labels=labels)
        total = out.loss
        if step == 90:
            total = total + 99 * 5.0 * out.loss_dict["loss_bbox"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        head.append(
            float(torch.stack([p.grad.norm() for p in model.bbox_predictor.parameters()]).norm())
        )
        ctx.grad_norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), 0.1)))
        opt.step()
        ctx.step(out.loss)
    ctx.check("the box head's gradient spiked 30x at 90", head[90] > 30 * max(head[80:90]))
    ctx.check(
        "no lasting damage: loss 100-150 no worse than 70-90",
        sum(ctx.losses[100:150]) / 50 < 1.1 * sum(ctx.losses[70:90]) / 20,
    )
    ctx.check("the loss fell", sum(ctx.losses[-10:]) < 0.8 * sum(ctx.losses[:10]))
