"""Held-out set 233 (``h233_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a verre-eglomise gilding conv autoencoder whose loader passes
a new scanner's 16-bit frames through unscaled into an fp16 autocast forward, a hat-blocking
felt-shrink GELU regressor whose layer-wise rate decay was typed 0.05 for 0.95, a knife-throwing
fault tagger whose multi-judge targets are built with scatter_add_ (counts above 1 fed to BCE), a
pororoca bore-speed tanh regressor whose StepLR gamma was typed 10 for 0.1, an atlas-stone lift
residual MLP ported with its norms switched off, a blue-jet flash-count Poisson net taking the log
of a ReLU rate, an ice-fog visibility SiLU regressor fed one logger's raw ADC counts, a
cup-stacking cycle-time GELU regressor whose resume path skips a static loss scale's unscale once,
a gemshorn fingering prototypical classifier whose squared distances lost their temperature, a
tromba-marina buzz tanh regressor with a hand-rolled weight decay of the wrong sign, and three
controls (a daxophone bow-stroke conv1d classifier under bfloat16 autocast, a waterphone rod-decay
GRU regressor, a whiteout visibility Gaussian-NLL net under fp16 autocast with a GradScaler).

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


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

    def __init__(self):
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss))


def _train(
    ctx,
    model,
    opt,
    batches,
    steps,
    loss_fn,
    *,
    classifier=False,
    before=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=None,
    accumulate=1,
    scale_loss=None,
    alter=None,
    unscale=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``unscale(step)`` runs between backward and the optimizer
    step, ``after(step)`` runs after the optimizer step; ``amp`` is the autocast dtype (None:
    float32); stops after logging a NaN loss."""
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
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scale_loss is not None:
                total = scale_loss(step, total)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if unscale is not None:
            unscale(step)
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
        if math.isnan(shown):
            break


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _kinds(gen, batch, d_in, classes, seed, noise=0.35):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * math.sqrt(d_in) * torch.randn(batch, d_in, generator=gen) / 3
        yield x, y


class Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- verre eglomise: a new scanner's 16-bit frames pass unscaled into an fp16 forward ------------


class GildingAE(nn.Module):
    """A convolutional autoencoder of 16x16 scans of gilded glass (enc1, enc2, dec1, dec2)."""

    def __init__(self, width=8):
        super().__init__()
        self.enc1 = nn.Conv2d(1, width, 3, stride=2, padding=1)
        self.enc2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.dec1 = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.dec2 = nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1)

    def forward(self, x):
        h = F.relu(self.enc2(F.relu(self.enc1(x))))
        return self.dec2(F.relu(self.dec1(h)))


def _gilding_scans(gen, batch, sixteen_bit_from=None):
    """16x16 scans of verre-eglomise panels: gold-leaf patches with burnished lines and craquelure
    over a dark ground. The first scanner writes 8-bit frames, which the loader scales to [0, 1];
    from step ``sixteen_bit_from`` on, the shard from the new scanner writes 16-bit frames, which
    the loader (a ToTensor-style conversion that only rescales uint8) passes through in raw
    counts."""
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    step = 0
    while True:
        fx = 0.2 + 0.6 * torch.rand(batch, 1, 1, generator=gen)
        fy = 0.2 + 0.6 * torch.rand(batch, 1, 1, generator=gen)
        ph = 6.28 * torch.rand(batch, 1, 1, generator=gen)
        leaf = torch.sigmoid(4 * torch.sin(fx * xx + fy * yy + ph))
        lines = 0.3 * (torch.sin(1.7 * xx + ph) > 0.9).float()
        img = (0.15 + 0.7 * leaf + lines).clamp(0, 1)
        img = img + 0.03 * torch.randn(batch, 16, 16, generator=gen)
        img = img.clamp(0, 1).unsqueeze(1)
        if sixteen_bit_from is not None and step >= sixteen_bit_from:
            img = torch.round(img * 60000.0)  # raw 16-bit counts, never scaled
        else:
            img = torch.round(img * 255.0) / 255.0
        step += 1
        yield img, img


@scenario(
    family="verre_eglomise_gilding_conv_autoencoder",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("enc2",),
    diverges=120,
    onset=120,
    heldout=True,
    note="A convolutional autoencoder (enc1, enc2 stride-2 convolutions, dec1, dec2 transposed convolutions) reconstructing 16x16 scans of verre-eglomise gilded glass panels, AdamW at 3e-3, MSE, fp16 autocast with a torch.amp.GradScaler. The scans are ordered by scanner; from step 120 the batches come from the workshop's new scanner, which writes 16-bit frames. The loader's ToTensor-style conversion only rescales uint8 images, so those frames reach the model in raw counts (up to 60000, still representable in fp16), enc1's fp16 output reaches tens of thousands and enc2's fp16 convolution sums it past 65504 to inf under autocast: the reconstruction is non-finite and the loss NaN at step 120. The same batch through the same weights in float32 gives a finite output: the break is the fp16 overflow.",
)
def h233_verre_eglomise_sixteen_bit_fp16(ctx: Context) -> None:
    gen = seeded(23301)
    onset = 120
    model = GildingAE()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def watch(step, out, x, y):
        if step == onset:
            seen["x_max"] = float(x.max())
            with torch.no_grad():
                seen["fp32_finite"] = bool(torch.isfinite(model(x.float())).all())
                with torch.autocast("cpu", dtype=torch.float16):
                    h = F.relu(model.enc1(x))
                    seen["enc1_fp16_finite"] = bool(torch.isfinite(h).all())
                    h = F.relu(model.enc2(h))
                    seen["enc2_fp16_finite"] = bool(torch.isfinite(h).all())
                seen["out_finite"] = bool(torch.isfinite(out).all())

    _train(
        ctx,
        model,
        opt,
        _gilding_scans(gen, 32, sixteen_bit_from=onset),
        160,
        F.mse_loss,
        watch=watch,
        scaler=scaler,
        amp=torch.float16,
    )
    ls = ctx.losses
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite before the onset", _finite(ls[:onset]))
    ctx.check("loss non-finite at the onset", len(ls) > onset and not math.isfinite(ls[onset]))
    ctx.check("inputs at the onset in raw counts (max over 1000)", seen.get("x_max", 0.0) > 1000)
    ctx.check("enc1's fp16 output still finite at the onset", seen.get("enc1_fp16_finite") is True)
    ctx.check("enc2's fp16 output overflows at the onset", seen.get("enc2_fp16_finite") is False)
    ctx.check("the fp16 reconstruction is non-finite at the onset", seen.get("out_finite") is False)
    ctx.check("the same batch in float32 gives a finite output", seen.get("fp32_finite") is True)


# -- hat blocking: a layer-wise rate decay typed 0.05 for 0.95 ------------------------------------


class FeltNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.gelu(self.fc1(x))
        h = F.gelu(self.fc2(h))
        h = F.gelu(self.fc3(h))
        return self.head(h).squeeze(-1)


def _felt(gen, batch, seed=2):
    """Ten standardised readings of a felt hat body on the block (steam time, block temperature,
    fibre blend, wall thickness, ...) and the brim's shrinkage after drying, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="hat_blocking_felt_shrink_gelu_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, fc3, head) regressing a blocked felt hat's brim shrinkage from 10 standardised readings (steam time, block temperature, fibre blend, ...), Adam at 3e-3 with one param group per layer and a layer-wise rate decay copied from a fine-tuning recipe: lr x decay**depth counted from the head. The decay was typed 0.05 for 0.95, so fc3 gets 1.5e-4, fc2 7.5e-6 and fc1 3.8e-7: fc1's and fc2's weights barely move (relative updates per step over 1000x and 30x smaller than the head's, which moves over 1e-3 of its weights a step). The loss still falls, through fc3 and the head, but ends well above what the intended decay reaches; finite.",
)
def h233_hat_blocking_llrd_typo(ctx: Context) -> None:
    steps = 240

    def run(c, decay):
        gen = seeded(23302)
        model = FeltNet()
        layers = [model.head, model.fc3, model.fc2, model.fc1]
        groups = [
            {"params": list(m.parameters()), "lr": 3e-3 * decay**depth}
            for depth, m in enumerate(layers)
        ]
        opt = torch.optim.Adam(groups)
        ratios = {"fc1": [], "fc2": [], "head": []}
        prev = {}

        def before(step):
            for name in ratios:
                prev[name] = getattr(model, name).weight.detach().clone()

        def after(step):
            for name in ratios:
                w = getattr(model, name).weight.detach()
                ratios[name].append(float((w - prev[name]).norm() / w.norm()))

        _train(c, model, opt, _felt(gen, 64), steps, F.mse_loss, before=before, after=after)
        return ratios

    twin = _Quiet()
    run(twin, decay=0.95)  # the intended decay, for the checks only
    ratios = run(ctx, decay=0.05)
    ls = ctx.losses
    head = _median(ratios["head"])
    ctx.check(
        "fc1's relative update under 1/1000 of the head's", _median(ratios["fc1"]) < head / 1000
    )
    ctx.check("fc2's relative update under 1/30 of the head's", _median(ratios["fc2"]) < head / 30)
    ctx.check("the head's relative update over 1e-3 per step", head > 1e-3)
    ctx.check(
        "loss at the end over 1.5x that of the intended decay",
        _mean(ls[-30:]) > 1.5 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- knife throwing: multi-judge fault tags built with scatter_add_ -------------------------------


def _throws(gen, batch, judges=3, tags=6, d_in=12, seed=3):
    """Twelve standardised readings of a knife throw (spin rate, release distance, wrist angle,
    ...) and the faults its judges flagged. Each judge flags one of six faults (over-rotation,
    under-rotation, handle strike, flat hit, ...) from what they see; the judges mostly agree.
    The target is built with ``scatter_add_`` where ``scatter_`` was meant, so a fault flagged by
    two or three judges counts 2 or 3."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, tags, generator=g)
    offsets = [0.3 * torch.randn(d_in, tags, generator=g) for _ in range(judges)]
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        flags = torch.stack([(x @ (w + o)).argmax(1) for o in offsets], 1)
        y = torch.zeros(batch, tags).scatter_add_(1, flags, torch.ones(batch, judges))
        yield x, y


@scenario(
    family="knife_throwing_judge_fault_tagger",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) tagging a knife throw's faults (six tags: over-rotation, under-rotation, handle strike, ...) from 12 standardised readings, RAdam at 3e-3, BCEWithLogitsLoss. Three judges each flag one fault; the multi-hot target is built with scatter_add_ where scatter_ was meant, so a fault two or three judges agree on has target 2 or 3. For a target above 1 the BCE gradient sigmoid(z) - y never reaches 0: the head's logits for agreed faults are pushed up without bound (over 20x their early size), and the loss falls through 0 and keeps falling; finite over the run.",
)
def h233_knife_throwing_scatter_add_targets(ctx: Context) -> None:
    gen = seeded(23303)
    model = Stack(12, hidden=64, out=6)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sizes, counts = {}, []

    def watch(step, out, x, y):
        sizes[step] = float(out.detach().abs().max(1).values.mean())
        counts.append(float((y > 1).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _throws(gen, 64),
        260,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ls = ctx.losses
    early = _mean([sizes[s] for s in range(10, 20)])
    late = _mean([sizes[s] for s in range(240, 260)])
    ctx.check("a tenth or more of the targets above 1", _mean(counts) > 0.1)
    ctx.check("head logits grew over 20x from steps 10-20 to the end", late > 20 * early)
    ctx.check(
        "head logits still growing at the end",
        late > 1.1 * _mean([sizes[s] for s in range(200, 220)]),
    )
    ctx.check("loss below 0 at the end", _mean(ls[-10:]) < 0)
    ctx.check("finite", _finite(ls))


# -- pororoca: a StepLR gamma typed 10 for 0.1 -----------------------------------------------------


def _bores(gen, batch, seed=4):
    """Twelve standardised readings ahead of a pororoca tidal bore on the Amazon (tidal range,
    river discharge, channel depth, moon phase, ...) and the bore front's speed, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="pororoca_bore_front_speed_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the front speed of a pororoca tidal bore from 12 standardised readings (tidal range, river discharge, channel depth, ...), plain SGD at 0.08, MSE, with a StepLR meant to divide the rate by 10 at step 80. Its gamma was typed 10 for 0.1: at step 80 the rate jumps to 0.8, lr x sharpness (power iteration on a fixed batch) goes from well under 2 to over 2, and the loss, which had been falling, oscillates and blows up to inf within about 20 steps.",
)
def h233_pororoca_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(23304)
    onset = 80
    model = Stack(12, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=onset, gamma=10.0)
    probe = next(_bores(torch.Generator().manual_seed(4343), 256))
    record = {}

    def before(step):
        if step in (onset - 5, onset, onset + 2) or (step < onset and step % 20 == 0):
            lr = opt.param_groups[0]["lr"]
            record[step] = lr * _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _bores(gen, 64), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:onset])
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check(
        "lr x sharpness under 2 before the onset",
        max(v for s, v in record.items() if s < onset) < 2,
    )
    ctx.check("lr x sharpness over 2 at the onset", record.get(onset, 0.0) > 2)
    ctx.check(
        "loss blows up (100x its low) within 30 steps after the onset",
        broke is not None and onset < broke < onset + 30,
    )


# -- atlas stone: a residual MLP ported with its norms switched off --------------------------------


class LiftBlock(nn.Module):
    def __init__(self, dim, norm):
        super().__init__()
        self.norm = nn.LayerNorm(dim) if norm else nn.Identity()
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, dim)
        for m in (self.fc1, self.fc2):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x):
        return x + self.fc2(F.relu(self.fc1(self.norm(x))))


class AtlasNet(nn.Module):
    def __init__(self, d_in=10, dim=48, depth=16, norm=False):
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(LiftBlock(dim, norm) for _ in range(depth))
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h).squeeze(-1)


def _lifts(gen, batch, seed=5):
    """Ten standardised readings of an atlas-stone lift (stone mass, lapping height, grip, hip
    angle, ...) and the time to load the stone on the platform, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="atlas_stone_lift_residual_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("stem", "blocks.0"),
    diverges="auto",
    heldout=True,
    note="A 16-block residual ReLU MLP (stem, blocks.0-15 each x + fc2(relu(fc1(norm(x)))), head) regressing an atlas-stone lift's loading time from 10 standardised readings, plain SGD at 1e-3, MSE. The recipe's pre-norm blocks were ported with `norm: none` from a config meant for another model, so each block's norm is an Identity and, with Kaiming-initialised branches, every block roughly doubles the residual stream's variance: the gradient grows through depth (at step 0 the gradient on the residual stream grows at every block on its way back, over 1000x from the last block to the stem's output), the first SGD steps throw the weights off and the loss blows up to inf/NaN within a few steps.",
)
def h233_atlas_stone_residual_no_norm(ctx: Context) -> None:
    gen = seeded(23305)
    model = AtlasNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    seen = {}

    streams = []

    def keep(module, inputs, output):
        if output.requires_grad:
            output.retain_grad()
            streams.append(output)

    hooks = [model.stem.register_forward_hook(keep)]
    hooks += [b.register_forward_hook(keep) for b in model.blocks]

    def unscale(step):
        if step == 0:
            seen["norms"] = [float(h.grad.norm()) for h in streams]
            for h in hooks:
                h.remove()
        streams.clear()

    _train(ctx, model, opt, _lifts(gen, 64), 60, F.mse_loss, unscale=unscale)
    ls = ctx.losses
    norms = seen.get("norms", [0.0, 1.0])
    ctx.check(
        "gradient on the residual stream grows over 100x from the last block to the stem (step 0)",
        norms[0] > 100 * max(norms[-1], 1e-30),
    )
    ctx.check(
        "and grows at every block on the way",
        all(a > b for a, b in zip(norms[:-1], norms[1:], strict=True)),
    )
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 1e6 * ls[0]), None)
    ctx.check(
        "loss blows up (non-finite or 1e6x) within 10 steps", broke is not None and broke < 10
    )


# -- blue jets: a Poisson head taking the log of a ReLU rate --------------------------------------


class FlashHead(nn.Module):
    """The hand-written Poisson head: log of a ReLU rate (softplus was meant)."""

    def __init__(self, hidden):
        super().__init__()
        self.lin = nn.Linear(hidden, 1)
        nn.init.normal_(self.lin.weight, std=0.01)  # a small head init, rates start at the bias
        nn.init.constant_(self.lin.bias, 2.0)

    def forward(self, h):
        return torch.log(F.relu(self.lin(h))).squeeze(-1)


class BlueJetNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = FlashHead(hidden)

    def forward(self, x):
        return self.head(torch.tanh(self.fc2(torch.tanh(self.fc1(x)))))


def _jets(gen, batch, seed=6):
    """Eight standardised readings of a thunderstorm (cloud-top height, overshooting-top area,
    CAPE, lightning rate, ...) and the count of blue jets a camera saw above it in 10 minutes."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        rate = 0.2 + 3.0 * torch.sigmoid(1.5 * x @ w / math.sqrt(8))
        yield x, torch.poisson(rate, generator=gen)


def _poisson_nll(log_rate, y):
    return (torch.exp(log_rate) - y * log_rate).mean()


@scenario(
    family="blue_jet_flash_count_poisson_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("head",),
    diverges=126,
    heldout=True,
    note="A tanh MLP (fc1, fc2) with a hand-written Poisson head (head: log of relu(lin(h)), softplus was meant) regressing the number of blue jets seen above a thunderstorm in 10 minutes from 8 standardised readings (cloud-top height, CAPE, lightning rate, ...), RMSprop at 3e-4, Poisson NLL exp(log_rate) - y log_rate. The head starts with small weights and bias 2, so every rate starts near 2; as the net learns, the rates of quiet storms (true rates down to 0.2, many zero counts) are pushed towards 0. At step 126 one sample's rate crosses 0, the ReLU gives exactly 0, the head outputs log 0 = -inf and the loss is +inf (that sample had a nonzero count); the ReLU's backward passes 0 at the kink, so the weights stay finite and the loss comes back, until a zero rate meets a zero count (0 x -inf) and the loss is NaN at step 176.",
)
def h233_blue_jet_log_relu_rate(ctx: Context) -> None:
    gen = seeded(23306)
    model = BlueJetNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    seen = {}

    def watch(step, out, x, y):
        if "bad" not in seen and not torch.isfinite(out).all():
            seen["bad"] = step
            seen["neg_inf"] = bool(torch.isneginf(out).any())
            seen["zero_rate"] = bool(
                (F.relu(model.head.lin(torch.tanh(model.fc2(torch.tanh(model.fc1(x)))))) == 0).any()
            )

    _train(ctx, model, opt, _jets(gen, 64), 300, _poisson_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes non-finite", bad is not None)
    ctx.check("the head's output is -inf (log 0) at that step", seen.get("neg_inf") is True)
    ctx.check("a ReLU rate exactly 0 at that step", seen.get("zero_rate") is True)
    ctx.check("the head first went non-finite at that step", seen.get("bad") == bad)
    ctx.check("the run ends on a NaN loss", math.isnan(ls[-1]))
    ctx.check(
        "loss fell and was finite before", bad is not None and bad > 40 and _fell(ls[:bad], k=20)
    )


# -- ice fog: one logger's shard in raw ADC counts --------------------------------------------------


def _fog(gen, batch, seed=7):
    """Eight standardised readings of an ice-fog morning (air temperature, dew-point depression,
    wind speed, inversion strength, ...) and the visibility, standardised."""
    return _readings(gen, batch, 8, seed, noise=0.05)


@scenario(
    family="ice_fog_visibility_silu_regressor",
    optimizer="SGD (Nesterov)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing ice-fog visibility from 8 standardised readings (air temperature, dew-point depression, wind, inversion strength, ...), SGD Nesterov at 0.02 with momentum 0.9, MSE, gradient norm clipped at 1. The batch at step 130 comes from a logger whose calibration file was missing, so its readings arrive in raw 12-bit ADC counts (0-4095) instead of standardised units: that batch's loss and (pre-clip) gradient are hundreds of times the usual, clipping keeps the step it takes to the usual size and the loss stays at its level afterwards; finite.",
)
def h233_ice_fog_raw_adc_shard(ctx: Context) -> None:
    gen = seeded(23307)
    onset = 130
    model = Stack(8, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    sizes = []

    def alter(step, x, y):
        if step == onset:
            x = torch.round((x.clamp(-3, 3) + 3) / 6 * 4095)  # raw counts, never calibrated
        sizes.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _fog(gen, 64), 240, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("inputs at the onset over 100x the usual", sizes[onset] > 100 * _median(sizes))
    ctx.check(
        "loss at the onset over 100x the median before", ls[onset] > 100 * _median(ls[100:130])
    )
    ctx.check(
        "gradient at the onset over 100x the median before", gn[onset] > 100 * _median(gn[100:130])
    )
    ctx.check(
        "loss back within 2x its level (steps 200-240)", _mean(ls[200:]) < 2 * _mean(ls[110:130])
    )
    ctx.check("finite", _finite(ls))


# -- cup stacking: a static loss scale left unscaled once on resume --------------------------------


def _stacks(gen, batch, seed=8):
    """Ten standardised readings of a sport-stacking cycle (hand speed, cup spacing, up-stack
    rhythm, ...) and the cycle time, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="cup_stacking_cycle_time_gelu_regressor",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a sport-stacking cycle time from 10 standardised readings (hand speed, cup spacing, up-stack rhythm, ...), SGD at 0.01 with momentum 0.9, MSE. The loop keeps a static loss scale of 64 from an fp16 recipe (loss x 64 backward, gradients / 64 before the step); the first step after resuming from a checkpoint at step 100 goes through a path that skips the division, so that one gradient is 64x the usual. The step and the momentum it leaves throw the weights off, the loss jumps, and the run recovers within a few dozen steps; finite.",
)
def h233_cup_stacking_static_scale_resume(ctx: Context) -> None:
    gen = seeded(23308)
    onset, loss_scale = 100, 64.0
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def scale_loss(step, total):
        return total * loss_scale

    def unscale(step):
        if step == onset:  # the resume path calls opt.step() directly
            return
        for p in model.parameters():
            p.grad.div_(loss_scale)

    _train(
        ctx, model, opt, _stacks(gen, 64), 220, F.mse_loss, scale_loss=scale_loss, unscale=unscale
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at the onset over 30x the median before", gn[onset] > 30 * _median(gn[80:100])
    )
    ctx.check(
        "loss at the onset within 2x its level (the batch is ordinary)",
        ls[onset] < 2 * _mean(ls[90:100]),
    )
    ctx.check(
        "loss after the kick over 2x its level before", max(ls[101:110]) > 2 * _mean(ls[90:100])
    )
    ctx.check(
        "loss back within 1.5x its level (steps 180-220)", _mean(ls[180:]) < 1.5 * _mean(ls[90:100])
    )
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- gemshorn: a prototypical classifier whose squared distances lost their temperature ------------


class Prototypes(nn.Module):
    """Learned class prototypes; logits are minus squared distances (divided by a temperature
    meant to be the embedding width, dropped in a refactor)."""

    def __init__(self, classes, dim, temperature=1.0):
        super().__init__()
        self.centres = nn.Parameter(torch.randn(classes, dim))
        self.temperature = temperature

    def forward(self, z):
        return -torch.cdist(z, self.centres).pow(2) / self.temperature


class GemshornNet(nn.Module):
    def __init__(self, d_in=16, dim=32, classes=8, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.embed = nn.Linear(64, dim)
        self.protos = Prototypes(classes, dim, temperature)

    def forward(self, x):
        return self.protos(self.embed(F.gelu(self.fc1(x))))


@scenario(
    family="gemshorn_fingering_prototypical_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("protos",),
    diverges=None,
    heldout=True,
    note="A prototypical classifier (fc1, embed, protos: learned class centres, logits minus squared Euclidean distances) naming which of 8 fingerings a gemshorn (a vessel flute of horn) is played with from 16 standardised acoustic features, Adagrad at 0.05, cross-entropy. The distances were meant to be divided by the embedding width (32) as a temperature; a refactor dropped the division, so the logits differ by tens to hundreds between classes and the float32 softmax rounds to exactly 1.0 for the target on over a third of the rows by step 10 and on most rows later (the same run with the intended temperature saturates under a tenth); finite.",
)
def h233_gemshorn_protonet_no_temperature(ctx: Context) -> None:
    gen = seeded(23309)
    model = GemshornNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    fractions = {}

    def watch(step, out, x, y):
        fractions[step] = collapsed_fraction(out.detach(), y)

    batches = _kinds(gen, 64, 16, 8, seed=9, noise=0.5)
    _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True, watch=watch)
    ls = ctx.losses
    late = _mean([fractions[s] for s in range(150, 200)])
    ctx.check("over half the rows' target probability exactly 1.0 (steps 150-200)", late > 0.5)
    ctx.check(
        "already over a third by steps 10-20", _mean([fractions[s] for s in range(10, 20)]) > 1 / 3
    )
    twin = {}
    gen = seeded(23309)
    fixed = GemshornNet(temperature=32.0)  # the intended temperature, for the checks only
    opt = torch.optim.Adagrad(fixed.parameters(), lr=0.05)
    batches = _kinds(gen, 64, 16, 8, seed=9, noise=0.5)
    for step in range(200):
        x, y = next(batches)
        out = fixed(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 150:
            twin.setdefault("late", []).append(collapsed_fraction(out.detach(), y))
    ctx.check("with the intended temperature under 10% of rows saturate", _mean(twin["late"]) < 0.1)
    ctx.check("finite", _finite(ls))


# -- tromba marina: a hand-rolled weight decay with the wrong sign ---------------------------------


def _buzz(gen, batch, seed=10):
    """Ten standardised readings of a tromba marina note (bow speed, bow pressure, string
    tension, bridge-foot gap, ...) and the loudness of the bridge's buzz, standardised; the
    labels are noisy (ear judgements)."""
    return _readings(gen, batch, 10, seed, noise=0.2)


@scenario(
    family="tromba_marina_bridge_buzz_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the loudness of a tromba marina's buzzing bridge from 10 standardised readings (bow speed, bow pressure, string tension, ...), Adamax at 2e-3, MSE, and a hand-rolled decoupled weight decay applied after each step. Its sign is wrong (p += lr x wd x p instead of p -= ...), with wd 4: every weight grows by 0.8% a step against Adamax's bounded steps. The loss falls at first, then climbs slowly and steadily as the weights inflate and the tanh units saturate, ending over 2x its low; no single step jumps; finite.",
)
def h233_tromba_marina_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(23310)
    lr, wd = 2e-3, 4.0
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.add_(p, alpha=lr * wd)  # meant: alpha=-lr * wd
            norms.append(float(torch.cat([p.flatten() for p in model.parameters()]).norm()))

    _train(ctx, model, opt, _buzz(gen, 64), 300, F.mse_loss, after=after)
    ls = ctx.losses
    smooth = [_mean(ls[i : i + 10]) for i in range(0, len(ls) - 9, 10)]
    low = min(smooth)
    ctx.check("loss fell at first", smooth[2] < 0.8 * smooth[0])
    ctx.check("loss at the end over 2x its low", smooth[-1] > 2 * low)
    ctx.check("weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check(
        "the climb is gradual (no 10-step mean over 1.5x the one before after the low)",
        all(
            b < 1.5 * a
            for a, b in zip(
                smooth[smooth.index(low) :], smooth[smooth.index(low) + 1 :], strict=False
            )
        ),
    )
    ctx.check("finite", _finite(ls))


# -- controls -----------------------------------------------------------------------------------


class DaxophoneConv(nn.Module):
    def __init__(self, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x.unsqueeze(1)))
        h = F.max_pool1d(h, 2)
        h = F.gelu(self.conv2(h))
        return self.head(h.mean(-1))


def _strokes(gen, batch, length=96, classes=5):
    """A daxophone's wooden tongue bowed, tapped or scraped: 96 samples of its pickup signal,
    five stroke kinds differing in pitch and envelope, with noise."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.08 * y.float()[:, None] + 0.01 * torch.randn(batch, 1, generator=gen)
        decay = torch.where(y[:, None] % 2 == 0, 0.01, 0.05)
        sig = torch.sin(freq * t) * torch.exp(-decay * t)
        yield sig + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="daxophone_bow_stroke_bf16_conv1d",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A 1-D convolutional classifier (conv1, conv2, head) naming five daxophone stroke kinds from 96 samples of the pickup signal, AdamW at 3e-3 with weight decay 0.01, cross-entropy with label smoothing 0.1, OneCycleLR, bfloat16 autocast (no scaler). Healthy control.",
)
def h233_control_daxophone_bf16(ctx: Context) -> None:
    gen = seeded(23311)
    steps = 200
    model = DaxophoneConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    hits = []

    def watch(step, out, x, y):
        if step >= steps - 30:
            hits.append(float((out.argmax(1) == y).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _strokes(gen, 64),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        amp=torch.bfloat16,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("accuracy over 80% at the end", _mean(hits) > 0.8)
    ctx.check("finite", _finite(ls))


class RodGRU(nn.Module):
    def __init__(self, feat=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(feat, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _rods(gen, batch, length=24, seed=12):
    """A waterphone's bowed rods: 24 frames of three standardised readings (bow pressure, water
    level slosh, rod length) and the ring-down time of the note, standardised; heavy-tailed
    label noise (Student-t)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    t_noise = torch.distributions.StudentT(2.5)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        drive = torch.tanh(x @ w / math.sqrt(3))
        weights = torch.exp(-0.15 * torch.arange(length - 1, -1, -1).float())
        y = (drive * weights).sum(1) / weights.sum() * 3
        noise = t_noise.sample((batch,)) * 0.1
        yield x, y + noise


@scenario(
    family="waterphone_rod_decay_gru_regressor",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="A GRU regressor (gru, head) of a waterphone note's ring-down time from 24 frames of three standardised readings, heavy-tailed (Student-t) label noise, NAdam at 3e-3, Huber loss, gradient norm clipped at 1, ReduceLROnPlateau (factor 0.5, patience 15). Healthy control.",
)
def h233_control_waterphone_gru(ctx: Context) -> None:
    gen = seeded(23312)
    model = RodGRU()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _rods(gen, 64),
        200,
        lambda o, y: F.huber_loss(o, y, delta=1.0),
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.6))
    ctx.check("finite", _finite(ls))


class WhiteoutNet(nn.Module):
    def __init__(self, d_in=8, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.mean = nn.Linear(hidden, 1)
        self.spread = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), self.spread(h)], -1)


def _gauss_nll(out, y):
    var = F.softplus(out[:, 1]) + 1e-4
    return F.gaussian_nll_loss(out[:, 0], y, var)


def _whiteouts(gen, batch, seed=13):
    """Eight standardised readings of a polar whiteout (cloud cover, blowing-snow flux, sun
    elevation, ...) and the contrast-limited visibility, with noise that grows with wind."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        sd = 0.1 + 0.3 * torch.sigmoid(x[:, 0])
        y = torch.tanh(x @ w / math.sqrt(8)) + sd * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="whiteout_visibility_gaussian_nll_fp16_mlp",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, fc2, mean and spread heads) predicting a mean and a softplus variance for whiteout visibility from 8 standardised readings, heteroscedastic noise, Gaussian NLL, Adam at 2e-3, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2, linear warm-up over 20 steps then cosine decay (LambdaLR). Healthy control.",
)
def h233_control_whiteout_fp16(ctx: Context) -> None:
    gen = seeded(23313)
    steps, warm = 200, 20
    model = WhiteoutNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)

    def schedule(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _whiteouts(gen, 64),
        steps,
        _gauss_nll,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss fell by 0.5 nats", _mean(ls[-20:]) < _mean(ls[:20]) - 0.5)
    ctx.check("finite", _finite(ls))
    ctx.check("the scaler's scale stayed above 1", min(ctx.scales) > 1)
