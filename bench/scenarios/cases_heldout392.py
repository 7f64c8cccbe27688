"""Held-out set 392 (``h392_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a kilim rug-motif patch vision transformer whose learnt attention temperature lost its
clamp in a refactor and sits in a param group at a 100x rate (the attention logits grow), a
dhow lateen-sail trim regressor restarted from a stale checkpoint picked by mtime (a one-off loss
spike it recovers from), a spindle-whorl yarn-fault multilabel BCE net whose resumed step
multiplies the loss by the fp16 run's saved loss scale (one gradient burst), a firewalk ember-bed
heat ReLU regressor whose warm-up start factor is typed 10 for 0.1 (the ReLUs die), a kayak-roll
hip-snap deep tanh regressor initialised with orthogonal gain 3 for 1 (gradients grow through
depth), a gansey knit-stitch Conv1d classifier whose stem param group is looked up under a typo
and gets lr 0 (frozen), a maple sugarbush sap-flow regressor fed a logger's unfiltered -9999
missing-value sentinels (one corrupted batch), a tapa-cloth fibre-spread Gaussian-NLL net whose
variance head lost its softplus (log of a negative variance), a birling log-roll classifier with
its temperature typed 0.01 for 1.0 (the softmax saturates) and a pysanky dye-uptake tanh
regressor whose warm-up peak is typed 2.0 for 0.2 (past the 2/sharpness limit).

Controls: a quilling paper-coil patch vision transformer (AdamW with norms, biases, class token
and position embeddings excluded from weight decay, linear warm-up then cosine decay, clipping),
a tatting shuttle lace-tension regressor (fp16 autocast with a GradScaler, RAdam, accumulation,
ReduceLROnPlateau, Huber loss) and a cajon slap/bass Conv1d classifier (SGD Nesterov under
OneCycleLR, label smoothing, clipping).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, grad_norm, scenario, seeded


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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


class _Plain:
    """What ``_loop`` needs of a context when a reference run is made without one."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []
        self.scales: list[float] = []

    def attach(self, model, opt, scaler=None):
        return None

    def targets(self, y):
        pass

    def step(self, loss):
        self.losses.append(float(loss.detach()))


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
    backprop=None,
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, y)`` sees the forward pass, ``backprop(step, loss)`` returns the loss
    actually backpropagated (before the division by the accumulation count), ``inspect(step)``
    sees the gradients before clipping, ``plateau()`` gives the validation loss for a
    ReduceLROnPlateau ``sched``. Stops after a non-finite loss (once ``ctx.step`` has seen it)."""
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
            out = out.float() if isinstance(out, torch.Tensor) else tuple(o.float() for o in out)
            if watch is not None:
                watch(step, out, y)
            loss = loss_fn(out, y)
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
        if inspect is not None:
            inspect(step)
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
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- data -------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _multilabel(gen, batch, d_in, labels, seed):
    """Readings with several independent faults present or not (a hidden linear rule each)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, labels, generator=g) / math.sqrt(d_in)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        yield x, (x @ w + 0.3 * torch.randn(batch, labels, generator=gen) > 0).float()


def _traces(gen, batch, classes, seed, length=48, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


def _motif_images(gen, batch, classes=4, size=16, seed=0, decoys=3):
    """16x16 generated images: a noisy woven background and one small motif (a cross, a ring, a
    bar or a diamond, the class) stamped bright in one patch, ``decoys`` dimmer motifs of any
    class in other patches: the class is the brightest motif's."""
    g = torch.Generator().manual_seed(seed)
    stamps = torch.zeros(classes, 4, 4)
    stamps[0, 1:3, :] = 1.0
    stamps[0, :, 1:3] = 1.0
    stamps[1] = 1.0
    stamps[1, 1:3, 1:3] = 0.0
    stamps[2, :, 1:3] = 1.0
    stamps[3, 0, 1:3] = stamps[3, 3, 1:3] = stamps[3, 1:3, 0] = stamps[3, 1:3, 3] = 1.0
    weave = 0.3 * torch.sin(torch.arange(size) * 1.7)[:, None] * torch.cos(torch.arange(size))
    weave = weave + 0.05 * torch.randn(size, size, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = weave.expand(batch, size, size).clone()
        x = x + 0.25 * torch.randn(batch, size, size, generator=gen)
        cells = torch.rand(batch, (size // 4) ** 2, generator=gen).argsort(1)[:, : decoys + 1]
        kinds = torch.randint(0, classes, (batch, decoys), generator=gen)
        for i in range(batch):
            for j, cell in enumerate(cells[i].tolist()):
                r, c = 4 * (cell // (size // 4)), 4 * (cell % (size // 4))
                amp, kind = (1.5, y[i]) if j == 0 else (0.75, kinds[i, j - 1])
                x[i, r : r + 4, c : c + 4] += amp * stamps[kind]
        yield x[:, None], y


# -- models -----------------------------------------------------------------------------------------


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


class PatchAttention(nn.Module):
    """Multi-head self-attention over patch tokens. With ``learnt_temperature`` each head
    multiplies its logits q.k/sqrt(d) by exp(log_tau), clamped at ``max_log_tau`` when given.
    ``last_logits`` keeps the largest |logit| of the batch."""

    def __init__(self, dim, heads, learnt_temperature=False, max_log_tau=None):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.log_tau = nn.Parameter(torch.zeros(heads)) if learnt_temperature else None
        self.max_log_tau = max_log_tau
        self.last_logits = 0.0

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
        if self.log_tau is not None:
            lt = self.log_tau
            if self.max_log_tau is not None:
                lt = lt.clamp(max=self.max_log_tau)
            s = s * lt.exp()[None, :, None, None]
        self.last_logits = float(s.detach().abs().max())
        y = torch.softmax(s, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class ViTBlock(nn.Module):
    def __init__(self, dim, heads, **attn):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = PatchAttention(dim, heads, **attn)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class PatchViT(nn.Module):
    """patch (strided Conv2d, 4x4 patches of a 16x16 image) -> class token + learnt position
    embeddings -> pre-LN blocks -> norm -> head on the class token."""

    def __init__(self, dim=32, heads=2, depth=2, classes=4, size=16, patch=4, **attn):
        super().__init__()
        n = (size // patch) ** 2
        self.patch = nn.Conv2d(1, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, n + 1, dim))
        self.blocks = nn.ModuleList(ViTBlock(dim, heads, **attn) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        h = self.patch(x).flatten(2).transpose(1, 2)
        h = torch.cat([self.cls_token.expand(len(h), -1, -1), h], 1) + self.pos
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h)[:, 0])


def _accuracy(model, batches, n=4) -> float:
    model.eval()
    hits, total = 0, 0
    with torch.no_grad():
        for _ in range(n):
            x, y = next(batches)
            hits += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    model.train()
    return hits / total


# -- attention logit growth: the kilim ViT ---------------------------------------------------------


def _kilim_run(ctx, clamp, steps=300, seed=39201):
    gen = seeded(seed)
    model = PatchViT(learnt_temperature=True, max_log_tau=clamp)
    temps = [b.attn.log_tau for b in model.blocks]
    ids = {id(p) for p in temps}
    rest = [p for p in model.parameters() if id(p) not in ids]
    # the temperature group's lr was meant as 1e-3 * 0.1 and is typed 1e-3 * 100
    opt = torch.optim.AdamW(
        [{"params": rest}, {"params": temps, "lr": 1e-3 * 100, "weight_decay": 0.0}],
        lr=1e-3,
        weight_decay=0.05,
    )
    logits = []

    def watch(step, out, y):
        logits.append(max(b.attn.last_logits for b in model.blocks))

    _loop(
        ctx,
        model,
        opt,
        _motif_images(gen, 32, seed=seed),
        steps,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        clip=1.0,
    )
    taus = [float(b.attn.log_tau.detach().max().exp()) for b in model.blocks]
    return model, logits, taus


@scenario(
    "kilim_rug_motif_patch_vit_classifier",
    "AdamW",
    "attention_logit_growth",
    ("blocks.0.attn", "blocks.1.attn"),
    None,
    heldout=True,
    note="a patch ViT with a learnt per-head attention temperature exp(log_tau) (clamped at "
    "log 2 in the original code) loses the clamp in a refactor, and the temperature's param "
    "group, meant at 0.1x the base lr, is typed 100x; the temperatures climb every step and the "
    "attention logits q.k/sqrt(d) * tau grow over 20x",
)
def h392_kilim_vit_temperature_unclamped(ctx: Context) -> None:
    model, logits, taus = _kilim_run(ctx, None)
    ls = ctx.losses
    _, ref, _ = _kilim_run(_Plain(), math.log(2.0))
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the max |attention logit| over the last 20 steps over 20x that of the first 5",
        _mean(logits[-20:]) > 20 * _mean(logits[:5]),
    )
    ctx.check(
        "with the clamp the logits grow under half as much",
        _mean(ref[-20:]) / _mean(ref[:5]) < 0.5 * _mean(logits[-20:]) / _mean(logits[:5]),
    )
    ctx.check("a head's temperature past the intended clamp tau = 2", max(taus) > 2.0)


@scenario(
    "quilling_paper_coil_patch_vit_classifier",
    "AdamW",
    "healthy",
    heldout=True,
    note="control: a patch ViT (strided-conv patches, class token, learnt position embeddings, "
    "pre-LN blocks), AdamW with weight decay 0.05 on weights only (norms, biases, class token "
    "and position embeddings in a no-decay group), 20 steps of linear warm-up then cosine "
    "decay, clipping at 1.0",
)
def h392_quilling_vit_control(ctx: Context) -> None:
    gen = seeded(39202)
    model = PatchViT()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.dim() < 2 or name in ("cls_token", "pos") else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    steps, warm = 200, 20

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    _loop(
        ctx,
        model,
        opt,
        _motif_images(gen, 32, seed=39202),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 20 under 0.8x the first 10)", _fell(ls, 20))
    acc = _accuracy(model, _motif_images(torch.Generator().manual_seed(392020), 64, seed=39202))
    ctx.check("held-out accuracy over 0.5 (chance 0.25)", acc > 0.5)


# -- loss spike: a stale checkpoint ---------------------------------------------------------------


@scenario(
    "dhow_sail_lateen_trim_silu_regressor",
    "Adam",
    "loss_spike",
    (),
    None,
    heldout=True,
    onset=150,
    note="the job is pre-empted at step 150 and restarts from the checkpoint its launcher picks "
    "by mtime, the step-30 one (copied last), while the step counter, the data order and "
    "Adam's state carry on: the loss jumps back to its early level for one step and the run "
    "recovers; no bad data, no gradient burst from a bug",
)
def h392_dhow_stale_checkpoint(ctx: Context) -> None:
    gen = seeded(39203)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    saved = {}

    def before(step):
        if step == 30:
            saved["w"] = copy.deepcopy(model.state_dict())
        if step == 150:
            model.load_state_dict(saved["w"])

    _loop(ctx, model, opt, _readings(gen, 64, 10, 39203), 220, F.mse_loss, before=before)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _mean(ls[140:150])
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss at step 150 over 3x the mean of steps 140-149", ls[150] > 3 * pre)
    ctx.check(
        "recovered: steps 190-219 under 1.5x the pre-restart mean", _mean(ls[190:]) < 1.5 * pre
    )
    ctx.check(
        "the gradient at 150 under 20x the median before (no burst)",
        gs[150] < 20 * _median(gs[100:150]),
    )


# -- gradient spike: a loss-scale bug for one step ------------------------------------------------


@scenario(
    "spindle_whorl_yarn_fault_multilabel_bce_net",
    "SGD momentum",
    "gradient_spike",
    (),
    None,
    heldout=True,
    onset=100,
    note="the job is resumed at step 100 from a checkpoint of an earlier fp16 run; the restore "
    "code reads the saved loss scale (4096) into the loss multiplier of this fp32 run and the "
    "first resumed step backpropagates loss * 4096 before the multiplier is reset: one "
    "gradient burst on a clean batch, clipped, and the run goes on",
)
def h392_spindle_whorl_loss_scale_resume(ctx: Context) -> None:
    gen = seeded(39204)
    model = Trunk(16, 64, out=5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def backprop(step, loss):
        return loss * (4096.0 if step == 100 else 1.0)

    _loop(
        ctx,
        model,
        opt,
        _multilabel(gen, 64, 16, 5, 39204),
        180,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("the loss finite", _finite(ls))
    ctx.check(
        "the gradient at step 100 over 50x the median of steps 80-99",
        gs[100] > 50 * _median(gs[80:100]),
    )
    ctx.check(
        "the batch's loss at 100 ordinary (under 1.5x the mean before)",
        ls[100] < 1.5 * _mean(ls[90:100]),
    )
    ctx.check("the loss fell over the run", _fell(ls))


# -- loss of plasticity: a warm-up start factor typed 10 for 0.1 --------------------------------------


def _firewalk_run(ctx, start_factor, seed=39205):
    gen = seeded(seed)
    model = Trunk(12, 64)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    # a hand-written linear warm-up from start_factor to 1 over 20 steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: start_factor + (1.0 - start_factor) * min(1.0, s / 20)
    )
    dead = []

    probe = next(_readings(torch.Generator().manual_seed(392050), 512, 12, seed))[0]

    def before(step):
        with torch.no_grad():
            h1 = model.act1(model.fc1(probe))
            h2 = model.act2(model.fc2(h1))
            dead.append(
                ((h1 <= 0).all(0).float().mean().item(), (h2 <= 0).all(0).float().mean().item())
            )

    _loop(
        ctx, model, opt, _readings(gen, 64, 12, seed), 200, F.mse_loss, before=before, sched=sched
    )
    return dead


@scenario(
    "firewalk_ember_bed_heat_relu_regressor",
    "RMSprop",
    "loss_of_plasticity",
    ("act2",),
    None,
    heldout=True,
    note="the hand-written linear warm-up's start factor is typed 10 for 0.1, so the first steps run at "
    "10x the rate (RMSprop's first steps are already large): over a third of the second "
    "hidden layer's ReLUs are pushed negative on every input in the first steps and never come back; the "
    "run goes on with the units left",
)
def h392_firewalk_warmup_start_factor(ctx: Context) -> None:
    dead = _firewalk_run(ctx, 10.0)
    ls = ctx.losses
    ref_ctx = _Plain()
    ref = _firewalk_run(ref_ctx, 0.1)
    late = _mean([d[1] for d in dead[-50:]])
    ref_late = _mean([d[1] for d in ref[-50:]])
    ctx.check("the loss finite", _finite(ls))
    ctx.check("over 35% of act2's units dead over the last 50 steps", late > 0.35)
    ctx.check(
        "under half that share dead with the intended start factor 0.1", ref_late < 0.5 * late
    )
    ctx.check("dead from early on: over 30% of act2 dead at step 30", dead[30][1] > 0.3)
    ctx.check(
        "final loss over 1.5x that of the intended run",
        _mean(ls[-20:]) > 1.5 * _mean(ref_ctx.losses[-20:]),
    )


# -- exploding gradients: orthogonal gain 3 --------------------------------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


def _kayak_run(ctx, gain, seed=39206):
    gen = seeded(seed)
    model = DeepTanh(8, 48, 12, gain)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    ratios = []

    def inspect(step):
        first = model.layers[0].weight.grad.norm()
        last = model.layers[-1].weight.grad.norm()
        ratios.append(float(first / last.clamp_min(1e-30)))

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed), 150, F.mse_loss, inspect=inspect, clip=1.0)
    return ratios


@scenario(
    "kayak_roll_hip_snap_deep_tanh_regressor",
    "SGD",
    "exploding_gradients",
    ("layers.0",),
    None,
    heldout=True,
    note="a 12-layer tanh regressor initialised with nn.init.orthogonal_(gain=3.0) (the gain "
    "meant 1.0; 3.0 was copied from a ReLU config's calculate_gain line by mistake): the net "
    "sits in the chaotic regime and the gradient grows layer by layer towards the input, the "
    "first layer's weight gradient over 20x the last's; clipped, it does not blow up",
)
def h392_kayak_orthogonal_gain(ctx: Context) -> None:
    ratios = _kayak_run(ctx, 3.0)
    ref = _kayak_run(_Plain(), 1.0)
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check("first/last layer gradient over 20x at the start", _mean(ratios[:5]) > 20)
    ctx.check("and over 10x through the run (median)", _median(ratios) > 10)
    ctx.check("under 5x with gain 1.0", _median(ref) < 5)


# -- update ratio: a param group at lr 0 -----------------------------------------------------------


class StitchConv(nn.Module):
    def __init__(self, channels=2, width=16, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    "gansey_knit_stitch_pattern_conv1d_classifier",
    "Adamax",
    "update_ratio_out_of_range",
    ("conv1",),
    None,
    heldout=True,
    note="per-part learning-rate multipliers are read from a config dict with "
    "mult.get(part, 0.0); the stem's key is typed 'steam', so conv1's param group gets lr 0 "
    "and never moves while conv2 and the head train",
)
def h392_gansey_stem_lr_typo(ctx: Context) -> None:
    gen = seeded(39207)
    model = StitchConv()
    mult = {"steam": 1.0, "body": 1.0, "head": 1.0}
    parts = {"stem": model.conv1, "body": model.conv2, "head": model.head}
    opt = torch.optim.Adamax(
        [{"params": m.parameters(), "lr": 2e-3 * mult.get(k, 0.0)} for k, m in parts.items()]
    )
    w1, wh = model.conv1.weight.detach().clone(), model.head.weight.detach().clone()
    g1 = []

    def inspect(step):
        g1.append(float(model.conv1.weight.grad.norm()))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 5, 39207),
        150,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check("conv1 moved under 1e-6 of its norm", _rel_change(w1, model.conv1.weight) < 1e-6)
    ctx.check("the head moved over 5% of its norm", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("conv1 received non-zero gradients all along", min(g1) > 0)


# -- data outlier: unfiltered missing-value sentinels ----------------------------------------------


@scenario(
    "maple_sugarbush_sap_flow_sentinel_regressor",
    "NAdam",
    "data_outlier",
    (),
    None,
    heldout=True,
    onset=120,
    note="one logger's file arrives at step 120 with its missing sap-flow readings coded -9999; "
    "the loader's missing-value filter checks for NaN only, so four targets of one batch are "
    "-9999: the loss and gradient spike by orders of magnitude, clipping holds the update and "
    "the run recovers",
)
def h392_sugarbush_sentinel(ctx: Context) -> None:
    gen = seeded(39208)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == 120:
            y = y.clone()
            y[:4] = -9999.0
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 10, 39208), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    pre = _median(ls[100:120])
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss at 120 over 1000x the median of steps 100-119", ls[120] > 1000 * pre)
    ctx.check(
        "the gradient at 120 over 100x the median before", gs[120] > 100 * _median(gs[100:120])
    )
    ctx.check("recovered: steps 170-199 under 2x the median before", _mean(ls[170:]) < 2 * pre)


# -- nonfinite: a variance head without its softplus -----------------------------------------------


class SpreadNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        # was: F.softplus(self.var_head(h)) + 1e-6
        return self.mean_head(h).squeeze(-1), self.var_head(h).squeeze(-1)


def _gauss_nll(out, y):
    mu, var = out
    return 0.5 * (torch.log(var) + (y - mu) ** 2 / var).mean()


@scenario(
    "tapa_cloth_beater_fibre_spread_gaussian_nll_net",
    "Adam",
    "nonfinite",
    ("var_head",),
    84,
    heldout=True,
    note="a Gaussian-NLL net whose variance head lost its softplus in a refactor: the raw "
    "linear output is used as the variance, which the NLL keeps pushing down as the fit "
    "improves until one sample's variance goes non-positive and log(var) is NaN",
)
def h392_tapa_variance_no_softplus(ctx: Context) -> None:
    gen = seeded(39209)
    model = SpreadNet(10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)
    low = []

    def watch(step, out, y):
        low.append(float(out[1].detach().min()))

    n = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 39209, noise=0.02), 300, _gauss_nll, watch=watch
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("the loss went non-finite", bad is not None)
    ctx.check("finite for the first 30 steps", bad is not None and bad >= 30)
    ctx.check("a variance non-positive at the non-finite step", bad is not None and low[bad] <= 0)
    ctx.check("the run stopped there", n == (bad + 1 if bad is not None else -1))


# -- softmax collapse: temperature typed 0.01 ------------------------------------------------------


class TempClassifier(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.body = Trunk(d_in, 64, out=classes)
        self.temperature = temperature

    def forward(self, x):
        return self.body(x) / self.temperature


def _birling_run(ctx, temperature, seed=39210):
    gen = seeded(seed)
    model = TempClassifier(16, 6, temperature)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    collapsed = []

    def watch(step, out, y):
        p = torch.softmax(out.detach(), -1)
        collapsed.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, seed),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    return collapsed


@scenario(
    "birling_log_roll_fall_side_temperature_classifier",
    "Adagrad",
    "softmax_collapse",
    ("body.head",),
    None,
    heldout=True,
    note="the classifier divides its logits by a temperature read from a config where "
    "temperature: 0.01 (meant for a sharpening step at inference) was pasted into the training "
    "section for 1.0: the softmax is 100x too sharp and the targets' float32 probabilities "
    "round to exactly 1.0 on most rows",
)
def h392_birling_temperature_typo(ctx: Context) -> None:
    collapsed = _birling_run(ctx, 0.01)
    ref = _birling_run(_Plain(), 1.0)
    ctx.check("the loss finite", _finite(ctx.losses))
    ctx.check(
        "over 50% of rows' target probability exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("under 5% with temperature 1.0", _mean(ref[-20:]) < 0.05)


# -- sharpness above limit: a warm-up peak typed 10x ------------------------------------------------


def _pysanky_run(ctx, peak, seed=39211, steps=200, probe_at=None):
    """SGD under a 100-step linear warm-up to ``peak``; at step ``probe_at`` (before its
    update) the lr and the sharpness on a fixed batch are recorded."""
    gen = seeded(seed)
    model = Trunk(8, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    probe = next(_readings(torch.Generator().manual_seed(392110), 512, 8, seed))
    seen = {}

    def before(step):
        if step == probe_at:
            seen["lr"] = opt.param_groups[0]["lr"]
            seen["sharpness"] = _sharpness(model, probe)

    _loop(
        ctx, model, opt, _readings(gen, 128, 8, seed), steps, F.mse_loss, sched=sched, before=before
    )
    return model, seen


def _sharpness(model, batch, iters=20):
    x, y = batch
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
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


@scenario(
    "pysanky_wax_dye_uptake_tanh_regressor",
    "SGD",
    "sharpness_above_limit",
    (),
    "auto",
    heldout=True,
    onset=13,
    note="plain SGD with a 100-step linear warm-up whose peak lr is typed 2.0 for 0.2: the "
    "warm-up passes 2/sharpness (about 0.26) at step 13, and the loss oscillates and blows "
    "up",
)
def h392_pysanky_warmup_peak(ctx: Context) -> None:
    _, seen = _pysanky_run(ctx, 2.0, probe_at=14)
    ls = ctx.losses
    ref_ctx = _Plain()
    _, ref_seen = _pysanky_run(ref_ctx, 0.2, probe_at=199)
    peak_ok = [v for v in ls if math.isfinite(v)]
    ctx.check(
        "the loss blew up (non-finite or over 100x its minimum)",
        _first_bad(ls) is not None or max(peak_ok) > 100 * min(peak_ok),
    )
    ctx.check("with peak 0.2 the loss fell and stayed finite", _fell(ref_ctx.losses))
    ctx.check("the lr at step 14 over 2/sharpness there", seen["lr"] > 2 / seen["sharpness"])
    ctx.check(
        "the intended peak under 2/sharpness at the end of its run",
        0.2 < 2 / ref_seen["sharpness"],
    )


# -- controls ------------------------------------------------------------------------------------------


class LaceNet(nn.Module):
    """A small regressor: fc1 -> SiLU -> fc2 -> SiLU -> head."""

    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    "tatting_shuttle_lace_tension_fp16_huber_regressor",
    "RAdam",
    "healthy",
    heldout=True,
    note="control: fp16 autocast with a torch.amp.GradScaler, RAdam, accumulation over 2, "
    "ReduceLROnPlateau on a held-out batch, clipping at 1.0, Huber loss",
)
def h392_tatting_fp16_control(ctx: Context) -> None:
    gen = seeded(39212)
    model = LaceNet(10)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    val = next(_readings(torch.Generator().manual_seed(392120), 256, 10, 39212))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(val[0]), val[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 39212),
        150,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 20 under 0.8x the first 10)", _fell(ls, 20))
    ctx.check("the scale stayed finite and positive", all(0 < s < math.inf for s in ctx.scales))


@scenario(
    "cajon_box_slap_bass_conv1d_classifier",
    "SGD Nesterov",
    "healthy",
    heldout=True,
    note="control: a ReLU Conv1d classifier, SGD with Nesterov momentum under OneCycleLR, "
    "label smoothing 0.1, clipping at 2.0",
)
def h392_cajon_control(ctx: Context) -> None:
    gen = seeded(39213)
    model = StitchConv(classes=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.3, total_steps=150)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 4, 39213),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("the loss finite", _finite(ls))
    ctx.check("the loss fell (last 20 under 0.8x the first 10)", _fell(ls, 20))
    acc = _accuracy(model, _traces(torch.Generator().manual_seed(392130), 64, 4, 39213))
    ctx.check("held-out accuracy over 0.5 (chance 0.25)", acc > 0.5)
