"""Held-out scenarios, set 100 (``h100_``): written without reading steadygrad's detectors,
diagnosis or monitor, nor the other held-out files, and never run on steadygrad while written
(tuned only with a stand-in context that attaches nothing and records the losses).

Families: Hugging Face Mistral3 (Pixtral vision tower + Mistral LM; two faults), Qwen2-VL
(generated images and captions), EfficientLoFTR (coarse dense matching on generated shifted
image pairs; two controls) and VITS (text to waveform with a given alignment), all from tiny
configs; hand-written: UL2 mixture-of-denoisers T5-style encoder-decoder, SpanBERT (span masking
and the span-boundary objective), DistMult knowledge-graph embeddings (1-N scoring) on a
generated graph, SWAG over SGD iterates on digits (a fault and a control), progressive-growing
GAN with the fade-in of a new resolution, Faster R-CNN-style region proposal network on
generated range images (two faults), DRAW on digits, CopyNet summariser on generated text.

Optimizers: SGD, SGD with momentum, ASGD, Adam, AdamW, NAdam, RAdam, Adamax, RMSprop, Adagrad.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    Context,
    dead_fraction,
    digit_batches,
    digits,
    fit,
    grad_norm,
    scenario,
    seeded,
    text_bytes,
)

# -- shared helpers -------------------------------------------------------------------------------


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _top_hessian_eig(model: nn.Module, loss_fn, iters: int = 20) -> float:
    """Largest Hessian eigenvalue of ``loss_fn(model)`` by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- SWAG: stochastic weight averaging over SGD iterates on digits -------------------------------


class SwagMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Swag:
    """SWAG (Maddox et al. 2019): running first and second moments of the flattened weights and
    the last ``rank`` deviations from the mean, for a Gaussian over the SGD iterates."""

    def __init__(self, model: nn.Module, rank: int = 10) -> None:
        self.model = model
        self.n = 0
        self.rank = rank
        self.mean = torch.zeros(sum(p.numel() for p in model.parameters()))
        self.sq = torch.zeros_like(self.mean)
        self.devs: list[torch.Tensor] = []

    def _flat(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])

    def collect(self) -> None:
        w = self._flat()
        self.n += 1
        self.mean += (w - self.mean) / self.n
        self.sq += (w * w - self.sq) / self.n
        self.devs = (self.devs + [w - self.mean])[-self.rank :]

    def sample(self, gen: torch.Generator) -> torch.Tensor:
        var = (self.sq - self.mean**2).clamp(min=1e-12)
        z1 = torch.randn(self.mean.shape, generator=gen)
        dev = torch.stack(self.devs, 1)
        z2 = torch.randn(dev.shape[1], generator=gen)
        low_rank = dev @ z2 / math.sqrt(2 * max(dev.shape[1] - 1, 1))
        return self.mean + var.sqrt() * z1 / math.sqrt(2) + low_rank

    @torch.no_grad()
    def bma_accuracy(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, k: int = 8):
        """Accuracy of the average of k sampled models' probabilities (weights restored)."""
        keep = self._flat()
        probs = 0
        for _ in range(k):
            torch.nn.utils.vector_to_parameters(self.sample(gen), self.model.parameters())
            probs = probs + torch.softmax(self.model(x), -1)
        torch.nn.utils.vector_to_parameters(keep, self.model.parameters())
        return float((probs.argmax(1) == y).float().mean())


def _swag_run(ctx: Context, swa_lr: float, steps: int, switch: int, averaged: bool) -> dict:
    gen = seeded(10001)
    model = SwagMLP()
    if averaged:  # averaged SGD (Polyak-Ruppert), SWAG's close cousin
        opt = torch.optim.ASGD(model.parameters(), lr=0.3, t0=switch)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
    swag = Swag(model)
    x_all, y_all = digits()
    probe_x, probe_y = x_all[:512], y_all[:512]
    info: dict = {}

    def before(step: int) -> None:
        if step == switch:
            # SWAG's second phase: a constant learning rate, iterates collected every 5 steps
            for g in opt.param_groups:
                g["lr"] = swa_lr
            info["eig"] = _top_hessian_eig(model, lambda m: F.cross_entropy(m(probe_x), probe_y))
        if step >= switch and (step - switch) % 5 == 0:
            swag.collect()

    fit(ctx, model, opt, digit_batches(gen, 128), steps, before=before)
    info["swag_n"] = swag.n
    if swag.n >= 2:
        info["bma_acc"] = swag.bma_accuracy(probe_x, probe_y, gen)
    return info


@scenario(
    "swag_digits",
    "sgd",
    "sharpness_above_limit",
    diverges="auto",
    heldout=True,
    onset=150,
    note="SWAG collection lr typed 1.0 (meant 0.1): lr x top Hessian eigenvalue ~5 > 2",
)
def h100_swag_collect_lr_too_high(ctx: Context) -> None:
    info = _swag_run(ctx, swa_lr=1.0, steps=260, switch=150, averaged=False)
    pre = ctx.losses[130:150]
    ctx.check("lr x top Hessian eigenvalue > 2 at the switch", 1.0 * info["eig"] > 2.0)
    post = [v if math.isfinite(v) else 1e9 for v in ctx.losses[150:]]
    ctx.check("the loss then climbed to 3x its pre-switch level", max(post) > 3 * _median(pre))


@scenario("swag_digits", "asgd", "healthy", heldout=True, note="SWAG with a sane lr, over ASGD")
def h100_swag_control(ctx: Context) -> None:
    info = _swag_run(ctx, swa_lr=0.1, steps=260, switch=150, averaged=True)
    L = ctx.losses
    ctx.check("finite", _finite(L))
    ctx.check("loss fell", _median(L[-20:]) < 0.3 * _median(L[:10]))
    ctx.check("iterates were collected", info["swag_n"] >= 20)
    ctx.check("SWAG's model average classifies 90% of the probe digits", info["bma_acc"] > 0.9)


# -- a Faster R-CNN-style region proposal network on generated range images --------------------


def _anchors(grid: int = 8, stride: int = 4, sizes=(6.0, 10.0, 16.0)) -> torch.Tensor:
    """(grid*grid*len(sizes), 4) anchors as (x0, y0, x1, y1), cell-major."""
    c = (torch.arange(grid, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(c, c, indexing="ij")
    out = []
    for s in sizes:
        out.append(torch.stack([cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2], -1))
    return torch.stack(out, 2).reshape(-1, 4)


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda z: (z[:, 2:] - z[:, :2]).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)


def range_image_batches(
    gen: torch.Generator, batch: int = 16, far: float = 9000.0, drift: float = 0.0
):
    """Range images (depth in millimetres, as the sensor gives them) of 1-2 near boxes in front
    of a sloping far wall that moves ``drift`` mm further away each batch (a robot driving from
    a room into a hall); yields (images, (objectness labels, regression targets))."""
    anchors = _anchors()
    aw = anchors[:, 2:] - anchors[:, :2]
    ac = (anchors[:, 2:] + anchors[:, :2]) / 2
    ramp_ = torch.linspace(0.8, 1.2, 32)
    while True:
        far += drift
        img = far * ramp_[None, None, :].expand(batch, 32, 32).clone()
        img += 150.0 * torch.randn(batch, 32, 32, generator=gen)
        labels = torch.full((batch, len(anchors)), -1.0)
        targets = torch.zeros(batch, len(anchors), 4)
        for i in range(batch):
            n = int(torch.randint(1, 3, (1,), generator=gen))
            wh = torch.randint(5, 17, (n, 2), generator=gen).float()
            xy = torch.rand(n, 2, generator=gen) * (32 - wh)
            boxes = torch.cat([xy, xy + wh], 1)
            for b in boxes:
                x0, y0, x1, y1 = (int(v) for v in b.round())
                depth = 800.0 + 2000.0 * float(torch.rand(1, generator=gen))
                img[i, y0:y1, x0:x1] = depth
            iou = _iou(anchors, boxes)
            best, idx = iou.max(1)
            lab = torch.full((len(anchors),), -1.0)
            lab[best < 0.3] = 0.0
            lab[best >= 0.5] = 1.0
            lab[iou.argmax(0)] = 1.0
            labels[i] = lab
            g = boxes[idx]
            gw = g[:, 2:] - g[:, :2]
            gc = (g[:, 2:] + g[:, :2]) / 2
            targets[i] = torch.cat([(gc - ac) / aw, torch.log(gw / aw)], 1)
        yield img[:, None], (labels, targets)


class RPN(nn.Module):
    """Backbone (conv + BatchNorm, stride 4) and the RPN head: a 3x3 conv, then per-anchor
    objectness and box deltas from 1x1 convs."""

    def __init__(self, anchors_per_cell: int = 3, width: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.rpn_conv = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.cls = nn.Conv2d(2 * width, anchors_per_cell, 1)
        self.reg = nn.Conv2d(2 * width, 4 * anchors_per_cell, 1)
        self.a = anchors_per_cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(b, anchors, 5): objectness logit, then the four box deltas."""
        h = F.relu(self.rpn_conv(self.backbone(x)))
        b = x.shape[0]
        # (b, a, 8, 8) -> cell-major (b, 8*8*a) to match _anchors()
        logits = self.cls(h).permute(0, 2, 3, 1).reshape(b, -1)
        deltas = self.reg(h).reshape(b, self.a, 4, 8, 8).permute(0, 3, 4, 1, 2).reshape(b, -1, 4)
        return torch.cat([logits[..., None], deltas], -1)


def rpn_loss(out: torch.Tensor, target) -> torch.Tensor:
    logits, deltas = out[..., 0], out[..., 1:]
    labels, reg_t = target
    keep = labels >= 0
    cls = F.binary_cross_entropy_with_logits(logits[keep], labels[keep])
    pos = labels == 1
    reg = F.smooth_l1_loss(deltas[pos], reg_t[pos], beta=1 / 9)
    return cls + reg


@scenario(
    "rpn_boxes",
    "radam",
    "amp_overflow",
    where="backbone.0",
    diverges="auto",
    heldout=True,
    onset=0,
    note="raw millimetre range images into an fp16 autocast conv: its output passes 65504",
)
def h100_rpn_fp16_range_overflow(ctx: Context) -> None:
    gen = seeded(10002)
    model = RPN()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    conv_max: list[float] = []
    hook = model.backbone[0].register_forward_hook(
        lambda m, i, o: conv_max.append(float(o.detach().float().abs().max()))
    )
    batches = range_image_batches(gen, drift=250.0)
    fit(ctx, model, opt, batches, 150, loss_fn=rpn_loss, classifier=False, scaler=scaler, amp=True)
    hook.remove()
    L = ctx.losses
    bad = next((i for i, v in enumerate(L) if not math.isfinite(v)), None)
    ctx.check("the loss went non-finite under fp16", bad is not None and bad > 10)
    ctx.check("the first conv's fp16 output overflowed to inf", math.inf in conv_max)
    # the same weights in float32: finite outputs, the first conv past fp16's range
    x, y = next(batches)
    with torch.no_grad():
        out32 = model.backbone[0](x)
    ctx.check(
        "in float32 the conv output is finite but above 65504",
        bool(torch.isfinite(out32).all()) and float(out32.abs().max()) > 65504,
    )
    ctx.check("the scaler kept skipping: its scale fell below 1", ctx.scales[-1] < 1.0)


def _rpn_fp32(ctx: Context | None, prior_bug: bool, steps: int = 200) -> tuple[list, list]:
    """Train an RPN in float32; returns (losses, dead fraction of rpn_conv per step)."""
    gen = seeded(10015)
    model = RPN()
    if prior_bug:  # RetinaNet's objectness prior, -log((1 - 0.01) / 0.01), on the wrong layer
        nn.init.constant_(model.rpn_conv.bias, -math.log(99.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    feats: list[torch.Tensor] = []
    model.rpn_conv.register_forward_hook(lambda m, i, o: feats.append(o.detach()))
    batches = range_image_batches(gen)
    if ctx is not None:
        ctx.attach(model, opt)
    losses, dead = [], []
    for _ in range(steps):
        x, y = next(batches)
        loss = rpn_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if ctx is not None:
            ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if ctx is not None:
            ctx.step(loss)
        losses.append(float(loss.detach()))
        dead.append(dead_fraction(feats.pop()))
    return losses, dead


@scenario(
    "rpn_boxes",
    "sgd_mom",
    "loss_of_plasticity",
    where="rpn_conv",
    diverges=None,
    heldout=True,
    onset=0,
    note="the focal-loss prior bias (-4.6) put on the RPN's 3x3 conv, not on its objectness "
    "layer: every ReLU unit after it is dead and stays dead",
)
def h100_rpn_prior_bias_kills_head(ctx: Context) -> None:
    L, dead = _rpn_fp32(ctx, prior_bug=True)
    ref, ref_dead = _rpn_fp32(None, prior_bug=False)
    ctx.check("all of rpn_conv's units dead from the start to the end", min(dead) > 0.99)
    ctx.check("the same RPN with the bias where it belongs keeps them", max(ref_dead) < 0.5)
    ctx.check("the loss ended 3x above that RPN's", _median(L[-20:]) > 3 * _median(ref[-20:]))


# -- DistMult knowledge-graph embeddings (1-N scoring) on a generated graph ----------------------


class DistMult(nn.Module):
    def __init__(self, entities: int = 300, relations: int = 6, dim: int = 32) -> None:
        super().__init__()
        self.ent = nn.Embedding(entities, dim)
        self.rel = nn.Embedding(relations, dim)
        self.bias = nn.Parameter(torch.zeros(entities))
        nn.init.normal_(self.ent.weight, std=0.3)
        nn.init.normal_(self.rel.weight, std=0.3)

    def forward(self, hr: torch.Tensor) -> torch.Tensor:
        """Scores of every entity as the tail of each (head, relation) query."""
        q = self.ent(hr[:, 0]) * self.rel(hr[:, 1])
        return q @ self.ent.weight.T + self.bias


def _kg_queries(gen: torch.Generator, entities: int = 300, relations: int = 6):
    """A generated graph: entities in 10 clusters; relation r links every entity of cluster c to
    every entity of cluster (r + 1 - c) mod 10 (symmetric, as DistMult needs), with 10% of the
    links dropped. Returns the (head, relation) queries and their multi-hot tails."""
    cluster = torch.randint(0, 10, (entities,), generator=gen)
    hr, tails = [], []
    for r in range(relations):
        for h in range(entities):
            t = (cluster == (r + 1 - cluster[h]) % 10).float()
            t *= (torch.rand(entities, generator=gen) > 0.1).float()
            hr.append((h, r))
            tails.append(t)
    return torch.tensor(hr), torch.stack(tails)


@scenario(
    "distmult_kg",
    "adam",
    "adam_second_moment_poisoned",
    where=("ent", "rel"),
    diverges=None,
    heldout=True,
    onset=120,
    note="one step's BCE is summed, not averaged (x19200): Adam's v poisoned, learning stalls",
)
def h100_distmult_summed_loss_poisons_adam(ctx: Context) -> None:
    gen = seeded(10004)
    hr, tails = _kg_queries(gen)
    model = DistMult()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctx.attach(model, opt)
    onset = 120
    v_max: list[float] = []
    moved: list[float] = []
    for step in range(300):
        idx = torch.randint(0, len(hr), (64,), generator=gen)
        scores = model(hr[idx])
        loss = F.binary_cross_entropy_with_logits(scores, tails[idx])
        # a resumed-from-checkpoint code path sums the loss once: 64 x 300 times the mean
        total = loss * scores.numel() if step == onset else loss
        opt.zero_grad(set_to_none=True)
        total.backward()
        ctx.grad_norms.append(grad_norm(model))
        before = model.ent.weight.detach().clone()
        opt.step()
        ctx.step(loss)
        moved.append(float((model.ent.weight.detach() - before).norm()))
        v_max.append(float(opt.state[model.ent.weight]["exp_avg_sq"].max()))
    L = ctx.losses
    ctx.check(
        "the entity table's v jumped 1e4x at the onset", v_max[onset] > 1e4 * v_max[onset - 1]
    )
    late, early = _median(moved[onset + 40 : onset + 80]), _median(moved[onset - 40 : onset])
    ctx.check("its updates then shrank 30x", late < early / 30)
    drop_before = _median(L[onset - 60 : onset - 50]) - _median(L[onset - 10 : onset])
    drop_after = _median(L[onset + 50 : onset + 60]) - _median(L[-10:])
    ctx.check(
        "the loss was falling, then stalled", drop_before > 0 and drop_after < drop_before / 5
    )


# -- GANs: one module holding G and D, one optimizer, simultaneous gradient steps ---------------


def _gan_step(model: nn.Module, opt, d_loss: torch.Tensor, g_loss: torch.Tensor) -> None:
    """Each network gets the gradient of its own loss; then one optimizer step for both."""
    opt.zero_grad(set_to_none=True)
    d_params = [p for p in model.D.parameters() if p.requires_grad]
    g_params = [p for p in model.G.parameters() if p.requires_grad]
    d_grads = torch.autograd.grad(d_loss, d_params, retain_graph=True, allow_unused=True)
    g_grads = torch.autograd.grad(g_loss, g_params, allow_unused=True)
    for p, g in zip(d_params + g_params, list(d_grads) + list(g_grads), strict=True):
        p.grad = g


# -- a progressive-growing GAN: 4x4 digits, then an 8x8 stage faded in --------------------------


class EqConv(nn.Module):
    """A conv with the equalized learning rate: N(0, 1) weights times He's constant at run time
    (``he=False``: the constant forgotten)."""

    def __init__(self, cin: int, cout: int, k: int, he: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = math.sqrt(2.0 / (cin * k * k)) if he else 1.0
        self.pad = k // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


class PGGenerator(nn.Module):
    def __init__(self, z: int = 32, ch: int = 32, new_he: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(z, ch * 16)
        self.block4 = EqConv(ch, ch, 3)
        self.rgb4 = EqConv(ch, 1, 1)
        self.block8 = EqConv(ch, ch, 3, he=new_he)
        self.rgb8 = EqConv(ch, 1, 1, he=new_he)
        self.ch = ch

    def forward(self, z: torch.Tensor, res: int, alpha: float) -> torch.Tensor:
        h = F.leaky_relu(self.fc(z).reshape(-1, self.ch, 4, 4), 0.2)
        h = F.leaky_relu(self.block4(h), 0.2)
        if res == 4:
            return self.rgb4(h)
        h8 = F.interpolate(h, scale_factor=2.0, mode="nearest")
        old = F.interpolate(self.rgb4(h), scale_factor=2.0, mode="nearest")
        new = self.rgb8(F.leaky_relu(self.block8(h8), 0.2))
        return (1 - alpha) * old + alpha * new


class PGDiscriminator(nn.Module):
    def __init__(self, ch: int = 32, new_he: bool = True) -> None:
        super().__init__()
        self.from8 = EqConv(1, ch, 1, he=new_he)
        self.block8 = EqConv(ch, ch, 3, he=new_he)
        self.from4 = EqConv(1, ch, 1)
        self.block4 = EqConv(ch, ch, 3)
        self.fc = nn.Linear(ch * 16, 1)

    def forward(self, img: torch.Tensor, res: int, alpha: float) -> torch.Tensor:
        if res == 4:
            h = F.leaky_relu(self.from4(img), 0.2)
        else:
            new = F.leaky_relu(self.from8(img), 0.2)
            new = F.avg_pool2d(F.leaky_relu(self.block8(new), 0.2), 2)
            old = F.leaky_relu(self.from4(F.avg_pool2d(img, 2)), 0.2)
            h = (1 - alpha) * old + alpha * new
        h = F.leaky_relu(self.block4(h), 0.2)
        return self.fc(h.flatten(1)).squeeze(1)


class PGGAN(nn.Module):
    def __init__(self, new_he: bool = True) -> None:
        super().__init__()
        self.G = PGGenerator(new_he=new_he)
        self.D = PGDiscriminator(new_he=new_he)


def _pggan_run(
    ctx: Context, new_he: bool, fade: int, steps: int = 280, grow: int = 160
) -> list[float]:
    """Train; returns the critic head's (D.fc's) gradient norm at each step."""
    gen = seeded(10006)
    model = PGGAN(new_he=new_he)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3, betas=(0.0, 0.99))
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    fc_norms = []
    for step in range(steps):
        x, _ = next(batches)
        x = x.reshape(-1, 1, 8, 8) * 2 - 1
        res = 4 if step < grow else 8
        alpha = min(1.0, (step - grow + 1) / max(fade, 1)) if res == 8 else 1.0
        if res == 4:
            real = F.avg_pool2d(x, 2)
        else:  # the real images fade in the same way
            low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest")
            real = (1 - alpha) * low + alpha * x
        fake = model.G(torch.randn(64, 32, generator=gen), res, alpha)
        d_real, d_fake = model.D(real, res, alpha), model.D(fake.detach(), res, alpha)
        d_loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        d_loss = d_loss + 1e-3 * (d_real**2).mean()  # the drift penalty of Karras et al.
        g_loss = F.softplus(-model.D(fake, res, alpha)).mean()
        _gan_step(model, opt, d_loss, g_loss)
        ctx.grad_norms.append(grad_norm(model))
        fc_norms.append(float(model.D.fc.weight.grad.norm()))
        opt.step()
        ctx.step(d_loss + g_loss)
    return fc_norms


@scenario(
    "pggan_fade_in_digits",
    "adamax",
    "gradient_spike",
    where=("D.fc", "D.from8", "D.block8"),
    diverges=None,
    heldout=True,
    onset=160,
    note="the 8x8 fade-in length read as 1 step: the new resolution switched in at once",
)
def h100_pggan_fade_in_skipped(ctx: Context) -> None:
    fc = _pggan_run(ctx, new_he=True, fade=1)
    g, L = ctx.grad_norms, ctx.losses
    pre = _median(g[140:160])
    ctx.check("the gradient norm jumped 5x at the switch", g[160] > 5 * pre)
    ctx.check("the critic's head D.fc took most of it", fc[160] > 0.7 * g[160])
    ctx.check("a spike, not a climb: 40 steps on it was below half its peak", g[200] < g[160] / 2)
    ctx.check("the loss stayed finite and bounded", _finite(L) and max(L) < 10)


# -- DRAW: a recurrent variational autoencoder with Gaussian read/write attention on digits -------


class DRAW(nn.Module):
    """Gregor et al. 2015 on 8x8 digits: T glimpses, an N x N attention grid, LSTM encoder and
    decoder, a canvas summed over the glimpses."""

    def __init__(self, T: int = 6, N: int = 3, enc: int = 64, dec: int = 64, z: int = 8) -> None:
        super().__init__()
        self.T, self.N, self.A, self.zdim = T, N, 8, z
        self.encoder = nn.LSTMCell(2 * N * N + dec, enc)
        self.decoder = nn.LSTMCell(z, dec)
        self.mu = nn.Linear(enc, z)
        self.logvar = nn.Linear(enc, z)
        self.read_attn = nn.Linear(dec, 5)
        self.write_attn = nn.Linear(dec, 5)
        self.write = nn.Linear(dec, N * N)
        self.dec = dec

    def _filters(self, params: torch.Tensor):
        gx_, gy_, log_s2, log_d, log_g = params.unbind(1)
        A, N = self.A, self.N
        gx, gy = (A + 1) / 2 * (gx_ + 1), (A + 1) / 2 * (gy_ + 1)
        delta = (A - 1) / (N - 1) * log_d.exp()
        s2 = log_s2.exp()
        grid = torch.arange(N, dtype=torch.float32) - N / 2 + 0.5
        mu_x = gx[:, None] + grid[None] * delta[:, None]
        mu_y = gy[:, None] + grid[None] * delta[:, None]
        a = torch.arange(A, dtype=torch.float32)
        fx = torch.exp(-((a[None, None] - mu_x[..., None]) ** 2) / (2 * s2[:, None, None]))
        fy = torch.exp(-((a[None, None] - mu_y[..., None]) ** 2) / (2 * s2[:, None, None]))
        fx = fx / (fx.sum(-1, keepdim=True) + 1e-8)
        fy = fy / (fy.sum(-1, keepdim=True) + 1e-8)
        return fx, fy, log_g.exp()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Canvas logits (b, 64) and the summed KL (b,)."""
        b = x.shape[0]
        img = x.reshape(b, 8, 8)
        canvas = torch.zeros(b, 8, 8)
        he, ce = torch.zeros(b, self.enc_size), torch.zeros(b, self.enc_size)
        hd, cd = torch.zeros(b, self.dec), torch.zeros(b, self.dec)
        kl = torch.zeros(b)
        for _ in range(self.T):
            err = img - torch.sigmoid(canvas)
            fx, fy, gamma = self._filters(self.read_attn(hd))
            glimpse = torch.stack([img, err], 1)  # (b, 2, 8, 8): the image and the error image
            read = gamma[:, None, None, None] * fy[:, None] @ glimpse @ fx[:, None].transpose(2, 3)
            r = read.flatten(1)
            he, ce = self.encoder(torch.cat([r, hd], 1), (he, ce))
            mu, logvar = self.mu(he), self.logvar(he).clamp(-8, 8)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            kl = kl + 0.5 * (mu**2 + logvar.exp() - logvar - 1).sum(1)
            hd, cd = self.decoder(z, (hd, cd))
            wx, wy, wg = self._filters(self.write_attn(hd))
            patch = self.write(hd).reshape(b, self.N, self.N)
            canvas = canvas + (wy.transpose(1, 2) @ patch @ wx) / wg[:, None, None]
        return canvas.flatten(1), kl

    @property
    def enc_size(self) -> int:
        return self.encoder.hidden_size


def _draw_loss(model: DRAW, x: torch.Tensor) -> torch.Tensor:
    logits, kl = model(x)
    rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
    return (rec + kl).mean() / 64  # nats per pixel


@scenario(
    "draw_digits",
    "rmsprop",
    "loss_spike",
    diverges=None,
    heldout=True,
    onset=200,
    note="a warm-restart schedule restarts at 20x the first peak (a decay factor read as a gain)",
)
def h100_draw_restart_lr_spike(ctx: Context) -> None:
    gen = seeded(10007)
    model = DRAW(T=4)
    base = 1e-3
    opt = torch.optim.RMSprop(model.parameters(), lr=base, alpha=0.99)
    ctx.attach(model, opt)
    batches = digit_batches(gen, 64)
    onset, period = 200, 100
    lrs = []
    for step in range(300):
        cycle, t = divmod(step, period)
        peak = base * (20.0 if cycle == onset // period else 0.5**cycle)
        lr = peak * 0.5 * (1 + math.cos(math.pi * t / period)) + 1e-5
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        x, _ = next(batches)
        loss = _draw_loss(model, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    L = ctx.losses
    pre = _median(L[onset - 20 : onset])
    peak_loss = max(L[onset : onset + 10])
    ctx.check("the loss spiked 5x within 10 steps of the restart", peak_loss > 5 * pre)
    ctx.check("a spike: 30 steps on it was back below 2x", max(L[onset + 30 :]) < 2 * pre)
    ctx.check("finite", _finite(L))


# -- a CopyNet summariser on generated text ----------------------------

PG_VOCAB, PG_GEN_VOCAB, PG_SRC, PG_TGT = 50, 45, 16, 4


def summary_batches(gen: torch.Generator, batch: int = 32, lengths=lambda step: PG_SRC):
    """Sources of ``lengths(step)`` tokens (3..49); the summary is the first four keywords
    (ids >= 35) in order. Ids >= 45 are out of the generator's vocabulary: only copying can
    produce them."""
    step = 0
    while True:
        src = torch.randint(3, PG_VOCAB, (batch, lengths(step)), generator=gen)
        step += 1
        tgt = torch.zeros(batch, PG_TGT, dtype=torch.long)
        for i in range(batch):
            keys = src[i][src[i] >= 35][:PG_TGT]
            tgt[i, : len(keys)] = keys
        yield torch.cat([src, tgt], 1), tgt  # the decoder is teacher-forced on the summary


class CopyNet(nn.Module):
    """Gu et al. 2016, small: an IRNN encoder (ReLU RNN, identity-initialised recurrence), a GRU
    decoder fed the attentive read and the selective read (encoder states where the source holds
    the previous token), and one softmax over generate-mode and copy-mode scores."""

    def __init__(self, dim: int = 32, hidden: int = 64, recur_gain: float = 1.0) -> None:
        super().__init__()
        self.embed = nn.Embedding(PG_VOCAB, dim)
        self.encoder = nn.RNN(dim, hidden, nonlinearity="relu", batch_first=True)
        with torch.no_grad():
            self.encoder.weight_hh_l0.copy_(recur_gain * torch.eye(hidden))
            self.encoder.bias_hh_l0.zero_()
        self.decoder = nn.GRUCell(dim + 2 * hidden, hidden)
        self.attn_enc = nn.Linear(hidden, hidden, bias=False)
        self.attn_dec = nn.Linear(hidden, hidden)
        self.attn_v = nn.Linear(hidden, 1, bias=False)
        self.generate = nn.Linear(hidden, PG_GEN_VOCAB)  # psi_g
        self.copy = nn.Linear(hidden, hidden)  # psi_c(x_j) = tanh(W_c h_j) . s_t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the extended vocabulary, (batch, summary length, vocab)."""
        src, tgt = x[:, :-PG_TGT], x[:, -PG_TGT:]
        b = src.shape[0]
        enc, h_last = self.encoder(self.embed(src))
        s = h_last[0]
        keys, copy_keys = self.attn_enc(enc), torch.tanh(self.copy(enc))
        prev = torch.ones(b, dtype=torch.long)  # BOS
        attentive = torch.zeros(b, enc.shape[-1])
        selective = torch.zeros(b, enc.shape[-1])
        out = []
        for t in range(tgt.shape[1]):
            s = self.decoder(torch.cat([self.embed(prev), attentive, selective], 1), s)
            score = self.attn_v(torch.tanh(keys + self.attn_dec(s)[:, None])).squeeze(-1)
            attentive = (torch.softmax(score, -1)[..., None] * enc).sum(1)
            gen_scores = self.generate(s)
            copy_scores = (copy_keys @ s[:, :, None]).squeeze(-1)
            joint = torch.log_softmax(torch.cat([gen_scores, copy_scores], 1), -1)
            p_gen = F.pad(joint[:, :PG_GEN_VOCAB].exp(), (0, PG_VOCAB - PG_GEN_VOCAB))
            p_copy = torch.zeros(b, PG_VOCAB).scatter_add(1, src, joint[:, PG_GEN_VOCAB:].exp())
            out.append(torch.log(p_gen + p_copy + 1e-9))
            prev = tgt[:, t]
            hit = (src == prev[:, None]).float()
            selective = (hit[..., None] * enc).sum(1) / hit.sum(1, keepdim=True).clamp(min=1)
        return torch.stack(out, 1)


def _pg_loss(logp: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return F.nll_loss(logp.reshape(-1, PG_VOCAB), tgt.reshape(-1), ignore_index=0)


def _pg_run(
    ctx: Context, gain: float, lr: float, steps: int, enc_norms: list[float], lengths
) -> None:
    gen = seeded(10008)
    model = CopyNet(recur_gain=gain)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    batches = summary_batches(gen, lengths=lengths)

    # the encoder's share of each step's gradient, read just before the step
    def hook(opt_, args, kwargs) -> None:
        grads = [p.grad.norm() for p in model.encoder.parameters() if p.grad is not None]
        enc_norms.append(float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0)

    opt.register_step_pre_hook(hook)
    fit(ctx, model, opt, batches, steps, loss_fn=_pg_loss, classifier=False)


@scenario(
    "copynet_summariser",
    "sgd_mom",
    "exploding_gradients",
    where="encoder",
    diverges=173,  # the loss goes NaN; the jump at 150 is the harder data, not the break
    heldout=True,
    onset=150,
    note="IRNN encoder, no gradient clipping; at step 150 the curriculum moves from 16- to "
    "64-token documents and the gradient through the recurrence explodes",
)
def h100_copynet_longer_documents_explode(ctx: Context) -> None:
    onset = 150
    enc_norms: list[float] = []
    # the loop draws one extra (probe) batch first: batch k + 1 feeds step k
    _pg_run(ctx, 0.8, 0.03, 200, enc_norms, lambda k: PG_SRC if k <= onset else 64)
    g, L = ctx.grad_norms, ctx.losses
    bad = next((i for i, v in enumerate(L) if not math.isfinite(v)), len(L))
    ctx.check("finite through the short documents", bad > onset)
    ctx.check("the loss went non-finite within 30 steps of the longer ones", bad < onset + 30)
    ctx.check("at the declared step", bad == 173)
    top = max(range(onset, bad), key=lambda i: g[i] if math.isfinite(g[i]) else -1.0)
    ctx.check(
        "the gradient norm exploded: 30x past its level before",
        g[top] > 30 * _median(g[onset - 50 : onset]),
    )
    ctx.check("the RNN encoder held 90% of that gradient", enc_norms[top] > 0.9 * g[top])


# -- UL2: a T5-style encoder-decoder trained on a mixture of denoisers ---------------------------

UL2_PAD, UL2_BOS, UL2_MODES, UL2_SENT, UL2_VOCAB = 0, 1, (2, 3, 4), 5, 100


def ul2_batches(gen: torch.Generator, batch: int = 16, length: int = 32, tgt_len: int = 20):
    """UL2's mixture of denoisers, one mode per batch: R (two 3-token spans), X (two 8-token
    spans), S (prefix LM: continue the last 12 tokens). Yields (input ++ decoder input, target)."""
    data = text_bytes() % 90 + 10
    while True:
        mode = int(torch.randint(0, 3, (1,), generator=gen))
        start = torch.randint(0, len(data) - length, (batch,), generator=gen)
        src = torch.full((batch, length + 1), UL2_PAD)
        tgt = torch.full((batch, tgt_len), UL2_PAD)
        for i in range(batch):
            text = data[int(start[i]) : int(start[i]) + length]
            if mode == 2:  # S-denoiser
                inp, out = text[:20], text[20:]
            else:
                span = 3 if mode == 0 else 8
                a = int(torch.randint(1, 12 - span + 1, (1,), generator=gen))
                b = int(torch.randint(16, 31 - span + 1, (1,), generator=gen))
                s1, s2 = torch.tensor([UL2_SENT]), torch.tensor([UL2_SENT + 1])
                inp = torch.cat([text[:a], s1, text[a + span : b], s2, text[b + span :]])
                out = torch.cat([s1, text[a : a + span], s2, text[b : b + span]])
            inp = torch.cat([torch.tensor([UL2_MODES[mode]]), inp])
            src[i, : len(inp)] = inp
            tgt[i, : len(out)] = out
        dec_in = torch.cat([torch.full((batch, 1), UL2_BOS), tgt[:, :-1]], 1)
        yield torch.cat([src, dec_in], 1), tgt


class UL2Seq2Seq(nn.Module):
    """Pre-LN encoder-decoder (T5-like), shared input/output embedding table, untied head."""

    def __init__(self, dim: int = 48, heads: int = 4, layers: int = 2, src_len: int = 33) -> None:
        super().__init__()
        self.src_len = src_len
        self.embed = nn.Embedding(UL2_VOCAB, dim)
        self.pos = nn.Embedding(64, dim)
        layer = dict(d_model=dim, nhead=heads, dim_feedforward=2 * dim, dropout=0.0)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(batch_first=True, norm_first=True, **layer),
            layers,
            enable_nested_tensor=False,
        )
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(batch_first=True, norm_first=True, **layer), layers
        )
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, UL2_VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src, dec_in = x[:, : self.src_len], x[:, self.src_len :]
        pos_s = self.pos(torch.arange(src.shape[1]))
        pos_t = self.pos(torch.arange(dec_in.shape[1]))
        memory = self.encoder(self.embed(src) + pos_s, src_key_padding_mask=src == UL2_PAD)
        causal = nn.Transformer.generate_square_subsequent_mask(dec_in.shape[1])
        h = self.decoder(
            self.embed(dec_in) + pos_t,
            memory,
            tgt_mask=causal,
            tgt_is_causal=True,
            memory_key_padding_mask=src == UL2_PAD,
        )
        return self.lm_head(self.norm(h))


def _ul2_loss(logits: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, UL2_VOCAB), tgt.reshape(-1), ignore_index=UL2_PAD)


@scenario(
    "ul2_t5_seq2seq",
    "nadam",
    "loss_divergence",
    diverges="auto",
    heldout=True,
    onset=0,
    note="linear warm-up to a peak lr of 2e-1 (meant 2e-3): the loss falls, then climbs",
)
def h100_ul2_warmup_to_wrong_peak(ctx: Context) -> None:
    gen = seeded(10009)
    model = UL2Seq2Seq()
    opt = torch.optim.NAdam(model.parameters(), lr=0.0)
    peak, warm = 0.2, 250

    def before(step: int) -> None:
        for g in opt.param_groups:
            g["lr"] = peak * min(1.0, (step + 1) / warm)

    fit(ctx, model, opt, ul2_batches(gen), 240, loss_fn=_ul2_loss, classifier=False, before=before)
    L = [v if math.isfinite(v) else 1e9 for v in ctx.losses]
    best_i = min(range(0, 220, 10), key=lambda i: _median(L[i : i + 10]))
    best = _median(L[best_i : best_i + 10])
    ctx.check("the loss first fell by a fifth", best < 0.8 * _median(L[:5]))
    high = max(2 * best, best + 1)
    up = next((i for i in range(best_i, len(L) - 5) if _median(L[i : i + 5]) > high), None)
    ctx.check("then climbed to 2x its best (and best + 1)", up is not None)
    ctx.check(
        "a climb, not one jump: no step rose 3x over the one before, up to there",
        up is not None and all(L[i + 1] < 3 * L[i] for i in range(best_i, up + 5)),
    )


# -- SpanBERT: span masking and the span-boundary objective --------------------------------------

SB_VOCAB, SB_MASK, SB_LEN = 129, 128, 24


def span_corpus(gen: torch.Generator, n: int = 48) -> torch.Tensor:
    """A small fixed corpus: n windows of 24 bytes (folded into 128 ids) of stdlib source."""
    data = text_bytes() % 128
    start = torch.randint(0, len(data) - SB_LEN, (n,), generator=gen)
    return data[start[:, None] + torch.arange(SB_LEN)]


def span_mask(gen: torch.Generator, batch: int, p: float = 0.2, budget: int = 4):
    """SpanBERT's masking: spans with geometric lengths (clipped to 5) until ``budget`` tokens
    are masked; returns a (batch, 24) bool mask. Spans keep clear of the two ends."""
    mask = torch.zeros(batch, SB_LEN, dtype=torch.bool)
    for i in range(batch):
        while int(mask[i].sum()) < budget:
            length = min(5, int(torch.distributions.Geometric(p).sample()) + 1)
            length = min(length, budget - int(mask[i].sum()))
            s = int(torch.randint(1, SB_LEN - length - 1, (1,), generator=gen))
            mask[i, s : s + length] = True
    return mask


class SpanBERT(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(SB_VOCAB, dim)
        self.pos = nn.Embedding(SB_LEN, dim)
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True),
            layers,
            enable_nested_tensor=False,
        )
        self.mlm_head = nn.Sequential(
            nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, SB_VOCAB)
        )
        # span-boundary objective: the two boundary states and the position inside the span
        self.span_pos = nn.Embedding(8, dim)
        self.sbo_head = nn.Sequential(
            nn.Linear(3 * dim, dim), nn.GELU(), nn.LayerNorm(dim), nn.Linear(dim, SB_VOCAB)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(x) + self.pos(torch.arange(x.shape[1])))


def _span_bounds(mask: torch.Tensor):
    """For each masked token: (row, left boundary index, right boundary index, offset)."""
    rows, lefts, rights, offs = [], [], [], []
    for i in range(mask.shape[0]):
        j = 0
        while j < SB_LEN:
            if mask[i, j]:
                k = j
                while k < SB_LEN and mask[i, k]:
                    k += 1
                for t in range(j, k):
                    rows.append(i)
                    lefts.append(j - 1)
                    rights.append(k)
                    offs.append(min(t - j, 7))
                j = k
            else:
                j += 1
    return (torch.tensor(v) for v in (rows, lefts, rights, offs))


def _spanbert_step(model: SpanBERT, corpus: torch.Tensor, gen: torch.Generator, batch: int):
    """Returns (loss, (MLM loss, SBO loss)) on a batch with span masking."""
    idx = torch.randint(0, len(corpus), (batch,), generator=gen)
    x = corpus[idx]
    mask = span_mask(gen, batch)
    h = model(torch.where(mask, SB_MASK, x))
    targets = x[mask]
    mlm_logits = model.mlm_head(h[mask])
    rows, left, right, off = _span_bounds(mask)
    pair = torch.cat([h[rows, left], h[rows, right], model.span_pos(off)], 1)
    sbo_logits = model.sbo_head(pair)
    mlm, sbo = F.cross_entropy(mlm_logits, targets), F.cross_entropy(sbo_logits, targets)
    return mlm + sbo, (float(mlm.detach()), float(sbo.detach()))


@scenario(
    "spanbert_encoder",
    "radam",
    "update_ratio_out_of_range",
    where="sbo_head",
    diverges="auto",
    heldout=True,
    onset=0,
    note="the span-boundary head's param group got lr 1.0 (meant 1e-3): its updates run 10x "
    "the rest's (relative to the weights) until its loss blows up",
)
def h100_spanbert_sbo_head_lr_typo(ctx: Context) -> None:
    gen = seeded(10010)
    corpus = span_corpus(gen, 32)
    model = SpanBERT()
    sbo = list(model.sbo_head.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in sbo)]
    opt = torch.optim.RAdam([{"params": rest, "lr": 3e-3}, {"params": sbo, "lr": 1.0}])
    ctx.attach(model, opt)
    ratio_sbo, ratio_mlm, mlm_l, sbo_l = [], [], [], []
    w_sbo, w_mlm = model.sbo_head[3].weight, model.mlm_head[3].weight
    for _ in range(240):
        loss, parts = _spanbert_step(model, corpus, gen, 32)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        before_sbo, before_mlm = w_sbo.detach().clone(), w_mlm.detach().clone()
        opt.step()
        ctx.step(loss)
        ratio_sbo.append(float((w_sbo.detach() - before_sbo).norm() / before_sbo.norm()))
        ratio_mlm.append(float((w_mlm.detach() - before_mlm).norm() / before_mlm.norm()))
        mlm_l.append(parts[0])
        sbo_l.append(parts[1])
    ctx.check(
        "the SBO head's update/weight ratio ran 5x the MLM head's, past 0.02",
        _median(ratio_sbo[30:]) > max(0.02, 5 * _median(ratio_mlm[30:])),
    )
    ctx.check("the MLM loss fell by 40%", _median(mlm_l[-20:]) < 0.6 * _median(mlm_l[:10]))
    ctx.check("the SBO loss blew up past 3x its start", max(sbo_l[-40:]) > 3 * _median(sbo_l[:10]))


# -- Hugging Face vision-language models from tiny configs, on generated images and captions -----


def _quiet_transformers():
    import warnings

    import transformers

    transformers.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", module="transformers")
    return transformers


def square_captions(gen: torch.Generator, batch: int, image_tokens: int, image_id: int, size=32):
    """Images of one coloured square in one quadrant over noise, and token sequences
    [image placeholders] [bos] [colour] [quadrant] [12 bytes of text]; labels mask the image."""
    data = text_bytes() % 90 + 30
    while True:
        col = torch.randint(0, 3, (batch,), generator=gen)
        quad = torch.randint(0, 4, (batch,), generator=gen)
        img = 0.1 * torch.randn(batch, 3, size, size, generator=gen)
        h = size // 2
        for i in range(batch):
            y0, x0 = (int(quad[i]) // 2) * h, (int(quad[i]) % 2) * h
            img[i, int(col[i]), y0 + 2 : y0 + h - 2, x0 + 2 : x0 + h - 2] += 1.0
        start = torch.randint(0, len(data) - 12, (batch,), generator=gen)
        text = data[start[:, None] + torch.arange(12)]
        ids = torch.cat(
            [
                torch.full((batch, image_tokens), image_id),
                torch.ones(batch, 1, dtype=torch.long),
                (10 + col)[:, None],
                (20 + quad)[:, None],
                text,
            ],
            1,
        )
        labels = ids.clone()
        labels[:, : image_tokens + 1] = -100
        yield img, ids, labels


def tiny_mistral3():
    """Mistral3: a Pixtral vision tower, a patch-merging projector and a Mistral LM."""
    t = _quiet_transformers()
    vision = t.PixtralVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        num_channels=3,
        head_dim=16,
    )
    text = t.MistralConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        sliding_window=None,
    )
    config = t.Mistral3Config(
        vision_config=vision,
        text_config=text,
        image_token_index=127,
        spatial_merge_size=2,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return t.Mistral3ForConditionalGeneration(config)


@scenario(
    "hf_mistral3_pixtral",
    "adamw",
    "attention_logit_growth",
    where="model.language_model.layers.0.self_attn",
    diverges=None,
    heldout=True,
    onset=0,
    note="lr 6e-2 with no warm-up and no QK-norm: layer 0's q.k logits grow 30x; loss stalls",
)
def h100_mistral3_qk_logit_growth(ctx: Context) -> None:
    gen = seeded(10011)
    model = tiny_mistral3()
    opt = torch.optim.AdamW(model.parameters(), lr=6e-2, weight_decay=0.0)
    ctx.attach(model, opt)
    seen: dict[str, torch.Tensor] = {}
    attn = model.model.language_model.layers[0].self_attn
    attn.q_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("q", o.detach()))
    attn.k_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("k", o.detach()))
    batches = square_captions(gen, 16, 4, 127)
    sizes = torch.tensor([[32, 32]] * 16)
    scale = []  # the largest |q| |k| / sqrt(d) over heads and positions: the logit bound
    for _ in range(200):
        img, ids, labels = next(batches)
        loss = model(input_ids=ids, pixel_values=img, image_sizes=sizes, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        q, k = seen["q"].reshape(16, -1, 2, 16), seen["k"].reshape(16, -1, 1, 16)
        scale.append(float(q.norm(dim=-1).max() * k.norm(dim=-1).max() / 4.0))
    ctx.check("layer 0's attention logit bound grew 10x after step 20", scale[-1] > 10 * scale[20])
    ctx.check("and passed 1000", scale[-1] > 1000)
    # the real logits: q.k with the rotary embedding, in the eager attention path
    model.config.text_config._attn_implementation = "eager"
    img, ids, labels = next(batches)
    with torch.no_grad():
        att = model(input_ids=ids, pixel_values=img, image_sizes=sizes, output_attentions=True)
    p = att.attentions[0][:, :, 8:]  # queries past the prefix
    entropy = float(-(p * (p + 1e-12).log()).sum(-1).mean())
    ctx.check("layer 0's attention collapsed onto single keys (entropy < 0.1 nats)", entropy < 0.1)


QWEN_IMAGE, QWEN_START, QWEN_END = 150, 152, 153


def tiny_qwen2vl():
    """Qwen2-VL: a ViT with 2-D rotary positions and a 2x2 patch merger, a Qwen2 LM with
    multimodal rotary positions."""
    t = _quiet_transformers()
    config = t.Qwen2VLConfig(
        vision_config=dict(
            depth=1,
            embed_dim=32,
            hidden_size=32,
            num_heads=2,
            mlp_ratio=2,
            patch_size=8,
            spatial_merge_size=2,
            temporal_patch_size=1,
            in_channels=3,
        ),
        text_config=dict(
            vocab_size=160,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=256,
            rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        ),
        image_token_id=QWEN_IMAGE,
        video_token_id=151,
        vision_start_token_id=QWEN_START,
        vision_end_token_id=QWEN_END,
        tie_word_embeddings=False,
    )
    return t.Qwen2VLForConditionalGeneration(config)


def qwen_patches(img: torch.Tensor, patch: int = 8, merge: int = 2) -> torch.Tensor:
    """Flatten images into Qwen2-VL's patch rows, in its 2x2 merge-window order."""
    b, c, h, w = img.shape
    gh, gw = h // patch, w // patch
    x = img.reshape(b, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # b, gh/m, gw/m, m, m, c, p, p
    return x.reshape(b * gh * gw, c * patch * patch)


def qwen_batches(gen: torch.Generator, batch: int = 16):
    """square_captions in Qwen2-VL's layout: vision start, 4 image tokens, vision end, text."""
    for img, ids, labels in square_captions(gen, batch, 4, QWEN_IMAGE):
        b = ids.shape[0]
        start = torch.full((b, 1), QWEN_START)
        end = torch.full((b, 1), QWEN_END)
        ids = torch.cat([start, ids[:, :4], end, ids[:, 4:]], 1)
        ignore = torch.full((b, 1), -100)
        labels = torch.cat([ignore, labels[:, :4], ignore, labels[:, 4:]], 1)
        yield img, ids, labels


@scenario(
    "hf_qwen2_vl",
    "adagrad",
    "nonfinite",
    where="model.visual.patch_embed",
    diverges=140,
    heldout=True,
    onset=140,
    note="per-image standardisation of one blank frame: std 0, 0/0 = NaN pixels into the ViT",
)
def h100_qwen2vl_blank_frame_nan(ctx: Context) -> None:
    gen = seeded(10012)
    model = tiny_qwen2vl()
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    ctx.attach(model, opt)
    onset = 140
    grid = torch.tensor([[1, 4, 4]] * 16)
    first_nan: list[str] = []

    def watch(name):
        def hook(m, i, o):
            o = o[0] if isinstance(o, tuple) else o
            if torch.is_tensor(o) and not first_nan and not torch.isfinite(o).all():
                first_nan.append(name)

        return hook

    handles = [m.register_forward_hook(watch(n)) for n, m in model.named_modules() if n]
    batches = qwen_batches(gen)
    for step in range(200):
        img, ids, labels = next(batches)
        if step == onset:
            img[5] = 0.5  # a blank (constant) frame from a dropped camera
        mean = img.mean((1, 2, 3), keepdim=True)
        std = img.std((1, 2, 3), keepdim=True)
        img = (img - mean) / std
        out = model(
            input_ids=ids,
            mm_token_type_ids=(ids == QWEN_IMAGE).int(),  # text 0, image 1
            pixel_values=qwen_patches(img),
            image_grid_thw=grid,
            labels=labels,
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(out.loss)
        if step == onset:
            for h in handles:
                h.remove()
    L = ctx.losses
    ctx.check(
        "finite and falling before the blank frame",
        _finite(L[:onset]) and _median(L[onset - 10 : onset]) < 0.8 * _median(L[:10]),
    )
    ctx.check(
        "the loss went NaN at the blank frame and stayed",
        not any(math.isfinite(v) for v in L[onset:]),
    )
    ctx.check(
        "the first module to output NaN was the ViT's patch embedding",
        bool(first_nan) and first_nan[0].startswith("model.visual.patch_embed"),
    )


@scenario(
    "hf_mistral3_pixtral",
    "rmsprop",
    "data_outlier",
    diverges=None,
    heldout=True,
    onset=150,
    note="one batch's captions tokenised with another vocabulary: ids in the unused top range",
)
def h100_mistral3_mistokenised_batch(ctx: Context) -> None:
    gen = seeded(10013)
    model = tiny_mistral3()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.99)
    ctx.attach(model, opt)
    onset = 150
    batches = square_captions(gen, 16, 4, 127)
    sizes = torch.tensor([[32, 32]] * 16)
    for step in range(220):
        img, ids, labels = next(batches)
        if step == onset:  # the wrong tokenizer: the caption lands on ids 100..126
            text = torch.randint(100, 127, ids[:, 5:].shape, generator=gen)
            ids = torch.cat([ids[:, :5], text], 1)
            labels = torch.cat([labels[:, :5], text], 1)
        loss = model(input_ids=ids, pixel_values=img, image_sizes=sizes, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    L = ctx.losses
    pre = _median(L[onset - 20 : onset])
    ctx.check("the mis-tokenised batch's loss spiked 2x", L[onset] > 2 * pre)
    ctx.check("the steps before were calm", max(L[onset - 50 : onset]) < 1.3 * pre)
    ctx.check("the run recovered within 20 steps", _median(L[onset + 20 : onset + 40]) < 1.2 * pre)


# -- VITS: text to waveform, with the alignment given (each token 4 frames) ----------------------


def tiny_vits():
    t = _quiet_transformers()
    config = t.VitsConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        ffn_dim=64,
        flow_size=16,
        spectrogram_bins=33,
        upsample_initial_channel=32,
        upsample_rates=[4, 4],
        upsample_kernel_sizes=[8, 8],
        resblock_kernel_sizes=[3],
        resblock_dilation_sizes=[[1, 3]],
        prior_encoder_num_flows=2,
        prior_encoder_num_wavenet_layers=2,
        posterior_encoder_num_wavenet_layers=2,
        duration_predictor_num_flows=2,
        duration_predictor_filter_channels=32,
        depth_separable_num_layers=2,
        window_size=2,
    )
    return t.VitsModel(config)


def tone_batches(gen: torch.Generator, batch: int = 8, tokens: int = 10, hop: int = 64):
    """Token ids 1..39 and their 'speech': each token a 64-sample tone of its own pitch."""
    n = torch.arange(hop, dtype=torch.float32)
    while True:
        ids = torch.randint(1, 40, (batch, tokens), generator=gen)
        freq = 0.02 + 0.01 * (ids % 20).float()
        amp = 0.3 + 0.3 * (ids >= 20).float()
        wav = amp[..., None] * torch.sin(2 * math.pi * freq[..., None] * n)
        yield ids, wav.reshape(batch, 1, -1)


def vits_synthesise(model, ids: torch.Tensor, frames: int = 4, noise: float = 0.667):
    """The VITS inference path with a given alignment: text-encoder prior, expanded to frames,
    sampled, through the inverse flow and the HiFi-GAN decoder."""
    b, n = ids.shape
    enc = model.text_encoder(ids, padding_mask=torch.ones(b, n, 1))
    mean = enc.prior_means.repeat_interleave(frames, 1).transpose(1, 2)
    logvar = enc.prior_log_variances.repeat_interleave(frames, 1).transpose(1, 2)
    z_p = mean + torch.randn_like(mean) * logvar.exp() * noise
    z = model.flow(z_p, torch.ones(b, 1, n * frames), reverse=True)
    return model.decoder(z)


def stft_loss(wav: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT magnitude loss (linear and log), as neural vocoders use."""
    total = wav.new_zeros(())
    for n_fft in (32, 64, 128):
        win = torch.hann_window(n_fft)
        a, b = (
            torch.stft(w.squeeze(1), n_fft, n_fft // 4, window=win, return_complex=True).abs()
            for w in (wav, target)
        )
        total = total + (a - b).norm() / (b.norm() + 1e-6)
        total = total + (torch.log(a + 1e-5) - torch.log(b + 1e-5)).abs().mean()
    return total / 3


@scenario("hf_vits", "adamw", "healthy", heldout=True, note="VITS text-to-waveform, sane")
def h100_vits_tones_control(ctx: Context) -> None:
    gen = seeded(10016)
    model = tiny_vits()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.8, 0.99), weight_decay=0.01)
    ctx.attach(model, opt)
    batches = tone_batches(gen)
    for _ in range(150):
        ids, wav = next(batches)
        loss = stft_loss(vits_synthesise(model, ids), wav)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
    L = ctx.losses
    ctx.check("finite", _finite(L))
    ctx.check("the STFT loss fell by a third", _median(L[-15:]) < 0.67 * _median(L[:5]))


# -- EfficientLoFTR: coarse dense matching on generated image pairs -------------------------------


def tiny_efficientloftr():
    """EfficientLoFTR's RepVGG backbone and aggregated-attention transformer (stride 8)."""
    t = _quiet_transformers()
    config = t.EfficientLoFTRConfig(
        stage_num_blocks=[1, 1, 1],
        out_features=[16, 24, 32],
        stage_stride=[2, 2, 2],
        hidden_size=32,
        num_attention_layers=2,
        num_attention_heads=2,
        q_aggregation_kernel_size=1,
        kv_aggregation_kernel_size=1,
        q_aggregation_stride=1,
        kv_aggregation_stride=1,
        fine_kernel_size=4,
        partial_rotary_factor=1.0,
    )
    return t.EfficientLoFTRModel(config)


def shifted_pairs(gen: torch.Generator, batch: int = 8, size: int = 64, cell: int = 8):
    """Pairs of smooth random textures, the second shifted (wrapping) by whole coarse cells plus
    noise; yields (pairs (b, 2, 1, H, W), ground-truth cell index in B of each cell of A)."""
    g = size // cell
    idx = torch.arange(g * g)
    kernel = torch.ones(1, 1, 5, 5) / 25
    while True:
        a = F.conv2d(torch.randn(batch, 1, size + 4, size + 4, generator=gen), kernel)
        a = (a - a.mean()) / a.std()
        shift = torch.randint(-2, 3, (batch, 2), generator=gen)
        b, gt = torch.empty_like(a), torch.empty(batch, g * g, dtype=torch.long)
        for i in range(batch):
            dy, dx = int(shift[i, 0]), int(shift[i, 1])
            b[i] = torch.roll(a[i], (dy * cell, dx * cell), (1, 2))
            gt[i] = ((idx // g + dy) % g) * g + (idx % g + dx) % g
        b = b + 0.1 * torch.randn(b.shape, generator=gen)
        yield torch.stack([a, b], 1), gt


def coarse_match_loss(feats: torch.Tensor, gt: torch.Tensor, temperature: float = 0.1):
    """LoFTR's dual-softmax coarse loss; returns (loss, share of cells matched right)."""
    b, _, c, h, w = feats.shape
    fa = feats[:, 0].flatten(2).transpose(1, 2)
    fb = feats[:, 1].flatten(2).transpose(1, 2)
    sim = fa @ fb.transpose(1, 2) / c / temperature
    logp = torch.log_softmax(sim, 1) + torch.log_softmax(sim, 2)
    picked = logp.gather(2, gt[..., None]).squeeze(-1)
    acc = float((sim.argmax(2) == gt).float().mean())
    return -picked.mean(), acc


def _loftr_control(ctx: Context, seed: int, make_opt, schedule=None, steps: int = 150) -> None:
    gen = seeded(seed)
    model = tiny_efficientloftr()
    opt = make_opt(model.parameters())
    ctx.attach(model, opt)
    batches = shifted_pairs(gen)
    accs = []
    for step in range(steps):
        if schedule is not None:
            for g in opt.param_groups:
                g["lr"] = schedule(step)
        pairs, gt = next(batches)
        loss, acc = coarse_match_loss(model(pairs).feature_maps[0], gt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        accs.append(acc)
    L = ctx.losses
    ctx.check("finite", _finite(L))
    ctx.check("the matching loss fell by half", _median(L[-15:]) < 0.5 * _median(L[:5]))
    ctx.check("most coarse cells matched right", _median(accs[-15:]) > 0.5)


@scenario("hf_efficientloftr", "adamw", "healthy", heldout=True, note="EfficientLoFTR, sane")
def h100_efficientloftr_control(ctx: Context) -> None:
    _loftr_control(ctx, 10017, lambda ps: torch.optim.AdamW(ps, lr=2e-3, weight_decay=0.01))


@scenario(
    "hf_efficientloftr",
    "sgd_mom",
    "healthy",
    heldout=True,
    note="EfficientLoFTR over SGD with momentum, warm-up then cosine decay",
)
def h100_efficientloftr_sgd_cosine_control(ctx: Context) -> None:
    def schedule(step: int) -> float:
        warm = min(1.0, (step + 1) / 20)
        return 0.05 * warm * 0.5 * (1 + math.cos(math.pi * step / 150))

    _loftr_control(
        ctx, 10018, lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), schedule=schedule
    )
