"""Held-out set 413 (``h413_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a wheelwright spoke-tension attention pooler on Adam with lr typed 3e-2 for 3e-4 (the
attention logits grow), a sailmaker grommet-pull GELU regressor whose auxiliary weight is read as
5e3 for 5e-3 at one step (Adam's second moment poisoned), a glockenspiel bar-energy share net whose
normaliser divides by a row sum after its clamp was dropped (0/0 on a muted-bar row), a sea-kayak
roll-recovery SiLU regressor resumed from the wrong checkpoint (a one-off loss spike), a mudflat
tide-channel SiLU regressor fed one logger's shard in millimetres (one corrupted batch), a
hurling sliotar-bounce BCE net whose accumulation step sums instead of averaging once (a gradient
burst), a tapestry-bobbin weft classifier whose trunk group lr is typed 1e-9 for 1e-2 (a frozen
layer), a waterspout funnel-spin deep tanh MLP initialised with std 3.0 for 1.0 (gradients grow
through depth), a harness-racing sulky-drift tanh regressor with a weight-decay sign bug (a slow
climb) and a quilting stitch-density classifier trained with nll_loss on raw logits (the head's
logits grow without bound).

Controls: a didgeridoo drone-timbre classifier (linear warm-up, AdamW, label smoothing), a
snow-roller roll-size reversible residual network (additive coupling blocks, SGD momentum under
OneCycleLR, Huber) and a cloisonne enamel-firing SiLU regressor (fp16 autocast with a GradScaler,
Adamax, accumulation, ReduceLROnPlateau).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


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


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    backprop=None,
    after=None,
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it)."""
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
            loss = loss_fn(out.float(), y)
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
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _leaks(gen, batch, d_in, seed, flip=0.1):
    """Binary leak outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.sin(2 * x[:, 0]) > 0.1).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


def _rhythms(gen, batch, classes, seed, length=48, channels=2):
    """Drum traces: each class a pulse train at its own period, plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.relu(torch.sin(freqs[y][:, :, None] * t + phase)) ** 3
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


class _MLP(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- faults ----------------------------------------------------------------------------------------


def _spokes(gen, batch, length, d_in, classes, seed):
    """Spoke readings; one spoke per wheel is flagged and its reading decides the grade."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.5 * torch.randn(classes, d_in - 1, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.randn(batch, length, d_in, generator=gen)
        x[:, :, 0] = 0.0
        pos = torch.randint(0, length, (batch,), generator=gen)
        rows = torch.arange(batch)
        x[rows, pos, 0] = 1.0
        x[rows, pos, 1:] = protos[y] + 0.3 * torch.randn(batch, d_in - 1, generator=gen)
        yield x, y


class _SpokeAttention(nn.Module):
    """A learned query attends over the spokes; logits q.k/sqrt(d) are kept for inspection."""

    def __init__(self, d_in, dim):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * 0.1)
        self.k = nn.Linear(d_in, dim)
        self.v = nn.Linear(d_in, dim)
        self.dim = dim
        self.last_logits = None

    def forward(self, x):
        k, v = self.k(x), self.v(x)
        logits = k @ self.query / math.sqrt(self.dim)
        self.last_logits = logits.detach()
        w = torch.softmax(logits, -1)
        return (w[..., None] * v).sum(1), w


class _SpokeNet(nn.Module):
    def __init__(self, d_in, dim, classes):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.attn = _SpokeAttention(dim, dim)
        self.head = nn.Linear(dim, classes)
        self.last_w = None

    def forward(self, x):
        pooled, w = self.attn(torch.relu(self.embed(x)))
        self.last_w = w.detach()
        return self.head(pooled)


@scenario(
    family="wheelwright_spoke_tension_attention_pool_classifier",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="Wheelwright spoke-tension grader: a learned query attends over a wheel's spokes (no "
    "QK-norm) and the flagged spoke decides the grade. Adam's lr is typed 3e-2 for 3e-4; the "
    "query and key weights grow fast and the attention logits q.k/sqrt(d) grow until the "
    "softmax is one-hot.",
)
def h413_wheelwright_attention_lr_typo(ctx) -> None:
    gen = seeded(4131)
    model = _SpokeNet(6, 16, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    data = _spokes(gen, 64, 12, 6, 4, seed=131)
    sizes, ent = [], []

    def after(step):
        sizes.append(float(model.attn.last_logits.abs().max()))
        w = model.last_w.clamp_min(1e-12)
        ent.append(float(-(w * w.log()).sum(-1).mean()))

    _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True, after=after)
    ctx.check("max q.k/sqrt(d) over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("max q.k/sqrt(d) over 20", sizes[-1] > 20)
    ctx.check("kept growing after step 10", sizes[-1] > 2 * sizes[10])
    ctx.check("attention entropy under 0.05", ent[-1] < 0.05)
    ctx.check("finite", _finite(ctx.losses))
    print("logits", sizes[0], sizes[-50], sizes[-1], "entropy", ent[-1])


@scenario(
    family="sailmaker_grommet_pull_out_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Sailmaker grommet pull-out force GELU regressor on Adam with an auxiliary smoothness "
    "penalty whose weight is read from the config as 5e3 for 5e-3 at the phase switch (step 100, "
    "one step). That gradient is over 1000x the usual; Adam's second moment fills and the "
    "per-weight updates stall afterwards while the gradients are not smaller.",
)
def h413_sailmaker_aux_weight_typo(ctx) -> None:
    gen = seeded(4132)
    model = _MLP(10, 48, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _readings(gen, 64, 10, seed=132)
    moves, prev = [], [_flat(model)]

    def backprop(step, loss):
        w = 5e3 if step == 100 else 5e-3
        return loss + w * sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).abs().median()))
        prev[0] = now

    _loop(ctx, model, opt, data, 220, F.mse_loss, backprop=backprop, after=after)
    g = ctx.grad_norms
    ctx.check("gradient over 1000x at step 100", g[100] > 1000 * _median(g[80:100]))
    ctx.check("updates stall after", _median(moves[120:220]) < 0.1 * _median(moves[60:100]))
    ctx.check("gradients not smaller", _median(g[120:220]) > 0.5 * _median(g[60:100]))
    ctx.check("finite", _finite(ctx.losses))
    print("moves", _median(moves[60:100]), _median(moves[120:220]))


class _ShareNorm(nn.Module):
    """Each bar's strike energies as shares of the row total; the clamp_min(1e-6) was dropped."""

    def forward(self, e):
        return e / e.sum(-1, keepdim=True)


class _BarNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.share = _ShareNorm()
        self.fc1 = nn.Linear(d_in, 32)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(32, 1)

    def forward(self, e):
        return self.head(self.act1(self.fc1(self.share(e)))).squeeze(-1)


def _bars(gen, batch, d_in, seed, muted_at=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    step = 0
    while True:
        e = torch.rand(batch, d_in, generator=gen) ** 2
        s = e / e.sum(-1, keepdim=True)
        y = torch.tanh(3 * s @ w) + 0.03 * torch.randn(batch, generator=gen)
        if step == muted_at:
            e[5] = 0.0  # a muted bar: the pickup recorded nothing
        step += 1
        yield e, y


@scenario(
    family="glockenspiel_mallet_energy_share_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("share",),
    diverges=90,
    heldout=True,
    onset=90,
    note="Glockenspiel bar-tuning regressor whose input module turns each strike's pickup "
    "energies into shares of the row total, e / e.sum(), after its clamp_min(1e-6) was dropped "
    "in a refactor. At step 90 a muted bar records all zeros; 0/0 is NaN and the loss is "
    "non-finite at that step.",
)
def h413_glockenspiel_share_zero_division(ctx) -> None:
    gen = seeded(4133)
    model = _BarNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    data = _bars(gen, 64, 8, seed=133, muted_at=90)
    out = []
    model.share.register_forward_hook(lambda m, i, o: out.append(bool(torch.isnan(o).any())))
    _loop(ctx, model, opt, data, 200, F.mse_loss)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite at step 90", bad == 90)
    ctx.check("finite before", _finite(ctx.losses[:90]))
    ctx.check(
        "share module output NaN at step 90", len(out) == 91 and out[90] and not any(out[:90])
    )
    ctx.check("loss fell before", _fell(ctx.losses[:90]))


@scenario(
    family="sea_kayak_roll_recovery_checkpoint_silu_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Sea-kayak roll-recovery time SiLU regressor on AdamW, checkpointed every 25 steps; the "
    "preemption resume at step 150 sorts the checkpoint names as text and takes the first, "
    "reloading the step-0 weights 'ckpt_0' instead of 'ckpt_125' (optimizer state kept). The "
    "loss jumps back to its early level and the run recovers.",
)
def h413_sea_kayak_wrong_checkpoint(ctx) -> None:
    gen = seeded(4134)
    model = _MLP(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    data = _readings(gen, 64, 10, seed=134)
    ckpts = {}

    def after(step):
        if step % 25 == 0:
            ckpts[f"ckpt_{step}"] = {k: v.clone() for k, v in model.state_dict().items()}

    def before(step):
        if step == 150:
            name = sorted(ckpts)[0]  # text order: ckpt_0 < ckpt_100 < ckpt_125 < ckpt_25
            model.load_state_dict(ckpts[name])  # meant the newest, ckpt_125

    _loop(ctx, model, opt, data, 240, F.mse_loss, before=before, after=after)
    pre = _median(ctx.losses[130:150])
    ctx.check("loss over 3x the 20 steps before at step 150", ctx.losses[150] > 3 * pre)
    ctx.check("recovers", _mean(ctx.losses[-20:]) < 1.5 * pre)
    ctx.check("gradient at step 150 from the reverted weights", ctx.grad_norms[150] > 0)
    ctx.check("finite", _finite(ctx.losses))
    print("pre", pre, "spike", ctx.losses[150])


@scenario(
    family="mudflat_tide_channel_scour_silu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Mudflat tide-channel scour-depth SiLU regressor on SGD with momentum and clipping; at "
    "step 120 one logger's shard arrives with its depth target in millimetres for metres "
    "(x1000). That batch's loss and gradient jump; the run recovers.",
)
def h413_mudflat_logger_mm_shard(ctx) -> None:
    gen = seeded(4135)
    model = _MLP(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = _readings(gen, 64, 10, seed=135)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 120 else (x, y)

    _loop(ctx, model, opt, data, 220, F.mse_loss, alter=alter, clip=1.0)
    pre = _median(ctx.losses[100:120])
    g = ctx.grad_norms
    ctx.check("loss over 100x at step 120", ctx.losses[120] > 100 * pre)
    ctx.check("gradient over 20x at step 120", g[120] > 20 * _median(g[100:120]))
    ctx.check("recovers", _mean(ctx.losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="hurling_sliotar_bounce_accum_relu_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="Hurling sliotar bounce-outcome ReLU BCE net (10% noisy labels) on SGD with Nesterov, "
    "accumulation over 4 and clipping; the resumed step 140 backpropagates each micro-batch with "
    "reduction='sum' and no division. The gradient bursts on clean data while the logged loss "
    "is ordinary; clipping bounds it and the run recovers.",
)
def h413_hurling_accum_sum_once(ctx) -> None:
    gen = seeded(4136)
    model = _MLP(10, 48, 1, act=nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    data = _leaks(gen, 32, 10, seed=136)
    cur = [0]

    def before(step):
        cur[0] = step

    def backprop(step, loss):
        return loss * 32 * 4 if cur[0] == 140 else loss

    _loop(
        ctx,
        model,
        opt,
        data,
        220,
        F.binary_cross_entropy_with_logits,
        before=before,
        backprop=backprop,
        clip=1.0,
        accumulate=4,
    )
    g = ctx.grad_norms
    ctx.check("gradient over 30x at step 140", g[140] > 30 * _median(g[120:140]))
    ctx.check(
        "logged loss ordinary at step 140", ctx.losses[140] < 2 * _median(ctx.losses[120:140])
    )
    ctx.check("recovers", _mean(ctx.losses[-20:]) < 1.3 * _mean(ctx.losses[120:140]))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="tapestry_bobbin_weft_two_group_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Tapestry bobbin weft-colour classifier (ReLU MLP, 5 classes) on Adagrad with two "
    "param groups: the trunk group's lr is typed 1e-9 for 1e-2. fc1 receives gradients but "
    "barely moves; only fc2 and the head learn.",
)
def h413_tapestry_trunk_lr_typo(ctx) -> None:
    gen = seeded(4137)
    model = _MLP(12, 48, 5, act=nn.ReLU)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-2},
        ]
    )
    data = _grades(gen, 64, 12, 5, seed=137, spread=1.5)
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    gn = []
    _loop(
        ctx,
        model,
        opt,
        data,
        150,
        F.cross_entropy,
        classifier=True,
        inspect=lambda s: gn.append(float(model.fc1.weight.grad.norm())),
    )
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(w1, model.fc1.weight) < 1e-5)
    ctx.check("fc1 receives gradients", _median(gn) > 1e-3)
    ctx.check("head moves over 5%", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width=32, depth=10, gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.head = nn.Linear(width, 1)
        self.trace = []

    def forward(self, x):
        self.trace = []
        for lin in self.layers:
            z = lin(x)
            if z.requires_grad:
                z.retain_grad()
            self.trace.append(z)
            x = torch.tanh(z)
        return self.head(x).squeeze(-1)


def _depth_ratio(model):
    return float(model.trace[0].grad.norm() / model.trace[-1].grad.norm().clamp_min(1e-12))


@scenario(
    family="waterspout_funnel_spin_deep_tanh_mlp",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Waterspout funnel spin-rate regressor, a 12-layer tanh MLP whose init std is typed "
    "3.0 / sqrt(fan_in) for 1.0 / sqrt(fan_in). In that chaotic regime the backward pass "
    "amplifies through depth: the gradient at the first layer's output is many times the last "
    "layer's. Clipping keeps the run from blowing up.",
)
def h413_waterspout_init_std_typo(ctx) -> None:
    gen = seeded(4138)
    model = _DeepTanh(10, depth=12, gain=3.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    data = _readings(gen, 64, 10, seed=138)
    ratios = []
    _loop(
        ctx,
        model,
        opt,
        data,
        150,
        F.mse_loss,
        clip=1.0,
        inspect=lambda s: ratios.append(_depth_ratio(model)),
    )
    seeded(4138)
    ref = _DeepTanh(10, depth=12, gain=1.0)
    x, y = next(_readings(torch.Generator().manual_seed(4), 64, 10, seed=138))
    F.mse_loss(ref(x), y).backward()
    ctx.check("dL/d(layers.0) over 10x dL/d(layers.11) at the start", ratios[0] > 10)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at std 1.0", _depth_ratio(ref) < 5)
    ctx.check("finite", _finite(ctx.losses))
    print("ratio0", ratios[0], "median", _median(ratios), "ref", _depth_ratio(ref))


@scenario(
    family="harness_racing_sulky_drift_decay_sign_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Harness-racing sulky lateral-drift tanh regressor on Adamax with a hand-written "
    "decoupled weight decay whose minus sign was lost (p.add_(lr * wd * p)). The weights grow "
    "a little every step and the loss climbs slowly with no single jump.",
)
def h413_harness_decay_sign_bug(ctx) -> None:
    gen = seeded(4139)
    model = _MLP(10, 48, 1, act=nn.Tanh)
    lr, wd = 2e-3, 3.0
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    data = _readings(gen, 64, 10, seed=139)
    w0 = _flat(model).norm()

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(lr * wd * p)  # intended p.add_(-lr * wd * p)

    _loop(ctx, model, opt, data, 300, F.mse_loss, after=after)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 10)]
    low = min(means)
    jumps = max(b / a for a, b in zip(means[:-2], means[2:], strict=False))
    ctx.check("weights over 2x", float(_flat(model).norm()) > 2 * float(w0))
    ctx.check("loss climbs to over 3x its lowest 20-step mean", means[-1] > 3 * low)
    ctx.check("no 2x jump between 20-step means", jumps < 2)
    ctx.check("finite", _finite(ls))
    print("low", low, "last", means[-1], "jump", jumps)


@scenario(
    family="quilting_stitch_density_raw_nll_gelu_classifier",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Quilting stitch-density grader (GELU MLP, 6 grades) on plain SGD trained with "
    "F.nll_loss on the raw head output after the LogSoftmax moved into the export wrapper "
    "(clipping at 1.0). nll_loss is then -logit[target], unbounded below: the head's logits "
    "grow without bound and the 'loss' goes far negative.",
)
def h413_quilting_nll_raw_logits(ctx) -> None:
    gen = seeded(4140)
    model = _MLP(12, 48, 6, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = _grades(gen, 64, 12, 6, seed=140)
    probe = next(_grades(torch.Generator().manual_seed(9), 256, 12, 6, seed=140))[0]
    sizes = []

    def after(step):
        with torch.no_grad():
            sizes.append(float(model(probe).abs().max()))

    _loop(ctx, model, opt, data, 200, F.nll_loss, classifier=True, after=after, clip=1.0)
    ctx.check("max |logit| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("logits still growing", sizes[-1] > 1.2 * sizes[-40])
    ctx.check("'loss' below -10", ctx.losses[-1] < -10)
    ctx.check("finite", _finite(ctx.losses))
    print("logit", sizes[0], sizes[-40], sizes[-1])


# -- controls --------------------------------------------------------------------------------------


class _DroneConv(nn.Module):
    def __init__(self, channels, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(F.max_pool1d(x, 2)))
        return self.head(x.mean(-1))


@scenario(
    family="didgeridoo_drone_timbre_warmup_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Didgeridoo drone-timbre ReLU Conv1d classifier (5 timbres) on AdamW with a no-decay "
    "bias group, a linear warm-up over 30 steps then constant, label smoothing 0.1 and "
    "clipping. A control.",
)
def h413_didgeridoo_warmup_adamw_control(ctx) -> None:
    gen = seeded(4141)
    model = _DroneConv(2, 5)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 30))
    data = _rhythms(gen, 32, 5, seed=141)
    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    x, y = next(_rhythms(torch.Generator().manual_seed(5), 256, 5, seed=141))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("held-out accuracy over 0.8", acc > 0.8)
    ctx.check("finite", _finite(ctx.losses))
    print("acc", acc)


class _Coupling(nn.Module):
    """Additive coupling: y1 = x1 + F(x2), y2 = x2 + G(y1); inverse recomputes x from y."""

    def __init__(self, half, hidden):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(half, hidden), nn.SiLU(), nn.Linear(hidden, half))
        self.g = nn.Sequential(nn.Linear(half, hidden), nn.SiLU(), nn.Linear(hidden, half))

    def forward(self, x):
        x1, x2 = x.chunk(2, -1)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], -1)

    def inverse(self, y):
        y1, y2 = y.chunk(2, -1)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], -1)


class _RevNet(nn.Module):
    def __init__(self, d_in, width=32, blocks=4):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(_Coupling(width // 2, 32) for _ in range(blocks))
        self.head = nn.Linear(width, 1)

    def trunk(self, x):
        h = self.stem(x)
        for b in self.blocks:
            h = b(h)
        return h

    def forward(self, x):
        return self.head(self.trunk(x)).squeeze(-1)


@scenario(
    family="snow_roller_roll_size_reversible_coupling_net",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Snow-roller roll-size regressor, a hand-written reversible residual network (four "
    "additive coupling blocks whose inputs can be recomputed from their outputs), Huber loss, "
    "SGD with momentum and weight decay under OneCycleLR, clipping. A control.",
)
def h413_snow_roller_revnet_control(ctx) -> None:
    gen = seeded(4142)
    model = _RevNet(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    data = _readings(gen, 64, 10, seed=142)
    _loop(ctx, model, opt, data, steps, F.huber_loss, clip=1.0, sched=sched)
    x, _ = next(_readings(torch.Generator().manual_seed(6), 64, 10, seed=142))
    with torch.no_grad():
        h = model.stem(x)
        y = h
        for b in model.blocks:
            y = b(y)
        for b in reversed(model.blocks):
            y = b.inverse(y)
        err = float((y - h).abs().max())
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("inputs recomputed from outputs (max error under 1e-4)", err < 1e-4)
    ctx.check("finite", _finite(ctx.losses))
    print("inverse error", err)


@scenario(
    family="cloisonne_enamel_firing_shrink_fp16_silu_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cloisonne enamel firing-shrinkage SiLU regressor under fp16 autocast with a "
    "GradScaler, Adamax, accumulation over 2, ReduceLROnPlateau on a held-out batch and "
    "clipping. A control.",
)
def h413_cloisonne_fp16_control(ctx) -> None:
    gen = seeded(4143)
    model = _MLP(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    data = _readings(gen, 32, 10, seed=143)
    hx, hy = next(_readings(torch.Generator().manual_seed(7), 256, 10, seed=143))

    def plateau():
        with torch.no_grad():
            return float(F.mse_loss(model(hx), hy))

    _loop(
        ctx,
        model,
        opt,
        data,
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("scale stayed finite and positive", all(0 < s < 2.0**30 for s in ctx.scales))
