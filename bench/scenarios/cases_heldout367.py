"""Held-out set 367 (``h367_``): hand-written models of sports, crafts, instruments and natural
phenomena not covered before: a cnapan ball-carry GELU classifier whose annealed temperature lost
its floor (softmax collapse), a kronum goal-zone residual tanh MLP whose branch init is scaled by
sqrt(depth) for 1/sqrt(depth) (gradients grow through depth), a cestoball shot-distance SiLU
regressor whose evaluation hook loads a never-updated EMA into the live model once (a loss spike),
a ssireum throw-technique early-exit network whose trunk lr is read under a misspelt key and
defaults to 0 (frozen trunk), a clarsach string-pluck Conv1d classifier whose masked mean divides
0 by 0 on a silent take (NaN), a rollball pass-type ReLU classifier fed one shard in cm/s (one
corrupted batch), a koshti hold-force profile SiLU regressor whose valid-count normaliser reads 1
on one step (one gradient burst), a jegichagi kick-count ReLU regressor with an activity penalty
typed 1.0 for 1e-4 (dead ReLUs), a bora-wind gust tanh regressor whose running target variance
lost its update term (a drifting target, a slow climb), a la-soule scrum ReLU classifier with a
margin loss missing its clamp (output logits grow without bound), and three controls (a sqay
sword-form early-exit network with auxiliary weights 0.3 under warm-up and cosine, a harpastum
pass-type Conv1d classifier under OneCycleLR with label smoothing, a lime-plaster carbonation-depth
SiLU Huber regressor under fp16 autocast with a GradScaler and ReduceLROnPlateau).

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


def _snapshot(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).clone() for p in module.parameters()])


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
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, out, x, y)``
    returns the loss actually backpropagated (before the division by the accumulation count),
    ``inspect(step)`` sees the gradients before clipping, ``after(step)`` runs after the
    optimizer step, ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``.
    Stops after a non-finite loss (once ``ctx.step`` has seen it)."""
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
            out = out.float() if torch.is_tensor(out) else tuple(o.float() for o in out)
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss, out, x, y) if backprop is not None else loss
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


# -- generated data ---------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


# -- cnapan: annealed temperature lost its floor (softmax collapse) --------------------------------

CNAPAN_ONSET = 17  # 0.96 ** 17 < 0.5: where the lost max(., 0.5) floor would have held


class AnnealedTempNet(nn.Module):
    """A GELU MLP (fc1, act1, fc2, act2, head) whose logits are divided by an annealed
    temperature."""

    def __init__(self, d_in, classes, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.tau = 1.0

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.tau


@scenario(
    family="cnapan_ball_carry_annealed_temperature_gelu_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    onset=CNAPAN_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) naming which of six ways a cnapan (old Welsh mass football) carrier moved the ball from twelve readings, logits divided by an annealed temperature, AdamW at 1e-3, cross-entropy, 200 steps. The schedule was meant as tau = max(0.96 ** step, 0.5); the max(., 0.5) floor was lost in a refactor, so from step 17 tau keeps falling (about 3e-4 at the end) and the logits are scaled up to thousands of times: the softmax saturates and over the last 20 steps over half the rows' target probability rounds to exactly 1.0 in float32, against under a tenth at step 0.",
)
def h367_cnapan_temperature_floor_lost(ctx: Context) -> None:
    gen = seeded(36701)
    model = AnnealedTempNet(12, 6)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    collapsed = []

    def before(step):
        model.tau = 0.96**step  # meant: max(0.96 ** step, 0.5)

    def watch(step, out, x, y):
        p = torch.softmax(out.detach(), -1)
        collapsed.append(float((p.gather(1, y[:, None]) == 1.0).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 36711, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=watch,
    )
    ctx.check("under a tenth of the rows are collapsed at step 0", collapsed[0] < 0.1)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("tau fell below the lost floor of 0.5", model.tau < 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kronum: residual branch init scaled by sqrt(depth) for 1/sqrt(depth) ---------------------------


class ResidualTanhMLP(nn.Module):
    """inp -> blocks.0..blocks.{L-1} (x + tanh(fc(x))) -> head."""

    def __init__(self, d_in, width, depth, branch_scale):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        for block in self.blocks:
            nn.init.normal_(block.weight, std=branch_scale / math.sqrt(width))
            nn.init.zeros_(block.bias)
        self.hs = []

    def forward(self, x):
        x = self.inp(x)
        self.hs = []
        for block in self.blocks:
            x = x + torch.tanh(block(x))
            if x.requires_grad:
                x.retain_grad()
            self.hs.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="kronum_goal_zone_deep_residual_tanh_mlp",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("blocks.0",),
    diverges=None,
    heldout=True,
    note="A hand-written residual tanh MLP (inp, blocks.0 to blocks.15 each x + tanh(W x + b), head) predicting the points of a kronum (four-zone field sport) attack from ten readings, Adam at 1e-3, MSE, gradients clipped at 1.0, 150 steps. The residual-branch init was meant as std = 1/sqrt(width) * depth ** -0.5 and was typed depth ** 0.5 (4x too large instead of 4x too small): each block's Jacobian I + diag(tanh') W amplifies the backward signal, so the gradient at blocks.0's output is over 20x that at blocks.15's at the start and over 10x on average through the run, and the raw gradient norm stays over the clip threshold.",
)
def h367_kronum_branch_init_sqrt_depth(ctx: Context) -> None:
    gen = seeded(36702)
    depth = 16
    model = ResidualTanhMLP(10, 48, depth, branch_scale=depth**0.5)  # meant: depth ** -0.5
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ratios = []

    def inspect(step):
        first, last = model.hs[0].grad, model.hs[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 36712), 150, F.mse_loss, inspect=inspect, clip=1.0
    )
    ctx.check(
        "the gradient at blocks.0's output is over 20x that at blocks.15's at the start",
        ratios[0] > 20,
    )
    ctx.check("and over 10x on average through the run", _mean(ratios) > 10)
    ctx.check("the raw gradient norm is over the clip threshold", _median(ctx.grad_norms) > 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cestoball: an evaluation hook loads a never-updated EMA into the live model once ---------------

CESTOBALL_ONSET = 150


@scenario(
    family="cestoball_shot_distance_ema_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=CESTOBALL_ONSET,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the distance of a cestoball (Argentine basket-ball) shot from twelve readings, NAdam at 3e-3, MSE, 260 steps, with an EMA of the weights kept for evaluation. The EMA decay was typed 1.0 for 0.999, so the shadow weights never move from the init; the evaluation hook after step 149 copies the EMA into the model with load_state_dict to score a held-out batch and never restores the live weights. Step 150 runs from the step-0 weights on an ordinary batch: the loss jumps over 4x its recent median, and the run recovers in a few dozen steps.",
)
def h367_cestoball_ema_swap(ctx: Context) -> None:
    gen = seeded(36703)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    ema = copy.deepcopy(model.state_dict())
    decay = 1.0  # meant: 0.999
    held = next(_readings(torch.Generator().manual_seed(5), 256, 12, 36713))

    def after(step):
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k].mul_(decay).add_(v, alpha=1 - decay)
            if step == CESTOBALL_ONSET - 1:
                model.load_state_dict(ema)  # the evaluation swap, never undone
                float(F.mse_loss(model(held[0]), held[1]))

    _loop(ctx, model, opt, _readings(gen, 64, 12, 36713), 260, F.mse_loss, after=after)
    ls = ctx.losses
    pre = _median(ls[CESTOBALL_ONSET - 20 : CESTOBALL_ONSET])
    ctx.check("the loss at step 150 is over 4x its recent median", ls[CESTOBALL_ONSET] > 4 * pre)
    ctx.check(
        "the run recovers: the last 20 steps under 1.5x the pre-spike median",
        _mean(ls[-20:]) < 1.5 * pre,
    )
    ctx.check("the loss fell before the spike", _fell(ls[:CESTOBALL_ONSET], ratio=0.5))
    ctx.check("finite throughout", _finite(ls))


# -- early-exit networks ----------------------------------------------------------------------------


class EarlyExitNet(nn.Module):
    """block1 -> exit1, block2 -> exit2, block3 -> head: auxiliary classifiers at two depths and
    the final head; forward returns the three logits."""

    def __init__(self, d_in, classes, width=48):
        super().__init__()
        self.block1 = nn.Sequential(nn.Linear(d_in, width), nn.ReLU())
        self.exit1 = nn.Linear(width, classes)
        self.block2 = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.exit2 = nn.Linear(width, classes)
        self.block3 = nn.Sequential(nn.Linear(width, width), nn.ReLU())
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h1 = self.block1(x)
        h2 = self.block2(h1)
        h3 = self.block3(h2)
        return self.exit1(h1), self.exit2(h2), self.head(h3)


def _exit_loss(weights, smoothing=0.0):
    def loss_fn(outs, y):
        return sum(
            w * F.cross_entropy(o, y, label_smoothing=smoothing)
            for w, o in zip(weights, outs, strict=True)
        )

    return loss_fn


@scenario(
    family="ssireum_throw_technique_early_exit_classifier",
    optimizer="SGD momentum",
    cause="update_ratio_out_of_range",
    where=("block1", "block2", "block3"),
    diverges=None,
    heldout=True,
    note="A hand-written early-exit ReLU network (block1 -> exit1, block2 -> exit2, block3 -> head; the three cross-entropies summed with weights 0.25, 0.5 and 1.0) naming which of eight techniques won a ssireum (Korean wrestling) bout from sixteen readings, SGD with momentum 0.9 in two param groups, 200 steps. The trunk group's lr is read as cfg.get('trunk_lr', 0.0) while the config spells the key 'backbone_lr', so block1, block2 and block3 get lr 0 and never move (under 1e-6 of their norm) although they get gradients, while the exits and head at 0.05 move over 5%; the loss falls slowly on frozen random features.",
)
def h367_ssireum_early_exit_trunk_lr_key(ctx: Context) -> None:
    gen = seeded(36704)
    model = EarlyExitNet(16, 8)
    cfg = {"backbone_lr": 0.05, "exit_lr": 0.05}
    trunk = [*model.block1.parameters(), *model.block2.parameters(), *model.block3.parameters()]
    exits = [*model.exit1.parameters(), *model.exit2.parameters(), *model.head.parameters()]
    opt = torch.optim.SGD(
        [
            {"params": trunk, "lr": cfg.get("trunk_lr", 0.0)},  # the key is "backbone_lr"
            {"params": exits, "lr": cfg["exit_lr"]},
        ],
        lr=0.05,
        momentum=0.9,
    )
    trunk0 = _snapshot(nn.ModuleList([model.block1, model.block2, model.block3]))
    heads0 = _snapshot(nn.ModuleList([model.exit1, model.exit2, model.head]))
    trunk_grads = []

    def inspect(step):
        trunk_grads.append(float(torch.stack([p.grad.norm() for p in trunk]).norm()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 8, 36714, spread=1.6),
        200,
        _exit_loss((0.25, 0.5, 1.0)),
        classifier=True,
        inspect=inspect,
    )
    trunk1 = _snapshot(nn.ModuleList([model.block1, model.block2, model.block3]))
    heads1 = _snapshot(nn.ModuleList([model.exit1, model.exit2, model.head]))
    ctx.check("the trunk moved under 1e-6 of its norm", _rel_change(trunk0, trunk1) < 1e-6)
    ctx.check("the exits and head moved over 5% of their norm", _rel_change(heads0, heads1) > 0.05)
    ctx.check("the trunk got gradients", _median(trunk_grads) > 1e-3)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="sqay_sword_form_early_exit_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written early-exit ReLU network (block1 -> exit1, block2 -> exit2, block3 -> head) naming which of eight forms a sqay (Kashmiri sword-and-shield) fighter performs from sixteen readings, the head's cross-entropy plus the two auxiliary exits' at weight 0.3 each, SGD Nesterov with momentum 0.9 and weight decay, 10-step linear warm-up then a cosine schedule to zero, gradients clipped at 1.0, 200 steps. A control.",
)
def h367_sqay_early_exit_cosine(ctx: Context) -> None:
    gen = seeded(36705)
    model = EarlyExitNet(16, 8)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4
    )
    steps, warm = 200, 10

    def lr_at(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    held = next(_grades(torch.Generator().manual_seed(9), 512, 16, 8, 36715, spread=1.6))
    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 8, 36715, spread=1.6),
        steps,
        _exit_loss((0.3, 0.3, 1.0)),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    with torch.no_grad():
        accs = [float((o.argmax(-1) == held[1]).float().mean()) for o in model(held[0])]
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("every exit is well above chance (1/8) on a held-out batch", min(accs) > 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- clarsach: masked mean pooling divides 0 by 0 on a silent take ----------------------------------

CLARSACH_DIV = 90


class MaskedMeanPool(nn.Module):
    """Mean over the valid time steps: (h * mask).sum / mask.sum, with no clamp_min(1)."""

    def forward(self, h, mask):
        return (h * mask[:, None]).sum(-1) / mask.sum(-1, keepdim=True)


class PluckConv(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool (masked mean) -> head; channel 0 of the input is the
    trace, channel 1 the validity mask left by the silence trimmer."""

    def __init__(self, width=16, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = MaskedMeanPool()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        trace, mask = x[:, :1], x[:, 1]
        h = self.act2(self.conv2(self.act1(self.conv1(trace * mask[:, None]))))
        return self.head(self.pool(h, mask))


def _plucks(gen, batch, classes, seed, length=48):
    """Pluck traces trimmed of leading silence: a mask of the kept samples as a second channel."""
    inner = _traces(gen, batch, classes, seed, length=length, channels=1)
    while True:
        x, y = next(inner)
        keep = torch.randint(length // 2, length + 1, (batch,), generator=gen)
        mask = (torch.arange(length)[None] < keep[:, None]).float()
        yield torch.cat([x, mask[:, None]], 1), y


@scenario(
    family="clarsach_string_pluck_masked_mean_conv1d_classifier",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("pool",),
    diverges=CLARSACH_DIV,
    heldout=True,
    onset=CLARSACH_DIV,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, pool: a masked mean over the samples the silence trimmer kept, head) naming which of five strings of a clarsach (Gaelic wire harp) was plucked from trimmed recordings, RMSprop at 3e-3, cross-entropy, 200 steps. The pool divides the masked sum by mask.sum() with no clamp_min(1); at step 90 the batch holds one silent take that the trimmer cut to zero samples, so the pool computes 0/0, NaN flows into the head and the loss is NaN at step 90 (the batch is otherwise ordinary).",
)
def h367_clarsach_masked_mean_zero_length(ctx: Context) -> None:
    gen = seeded(36706)
    model = PluckConv()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    seen = {}

    def alter(step, x, y):
        if step == CLARSACH_DIV:
            x = x.clone()
            x[3, 0] = 0.0  # a silent take ...
            x[3, 1] = 0.0  # ... trimmed to zero samples
        return x, y

    def watch(step, out, x, y):
        seen["pooled"] = model.pool(
            model.act2(model.conv2(model.act1(model.conv1(x[:, :1] * x[:, 1:])))), x[:, 1]
        ).detach()
        seen["kept"] = x[:, 1].sum(-1)

    _loop(
        ctx,
        model,
        opt,
        _plucks(gen, 32, 5, 36716),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    nan_rows = torch.isnan(seen["pooled"]).any(-1)
    ctx.check(f"the loss is first non-finite at step {CLARSACH_DIV}", bad == CLARSACH_DIV)
    ctx.check(
        "the pool's NaN sits exactly in the rows with zero kept samples",
        bool(nan_rows.any()) and bool((nan_rows == (seen["kept"] == 0)).all()),
    )
    ctx.check("the loss fell before the NaN", bad is not None and _fell(ctx.losses[:bad], k=10))


# -- rollball: one team's shard in cm/s, unstandardised ---------------------------------------------

ROLLBALL_ONSET = 120


@scenario(
    family="rollball_pass_type_relu_classifier",
    optimizer="Adamax",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ROLLBALL_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) naming which of five passes a rollball (roller-skate handball) player made from ten standardised readings, Adamax at 2e-3, cross-entropy, gradients clipped at 1.0, 240 steps. At step 120 one team's shard arrives with its four speed columns in raw centimetres per second (hundreds) instead of standardised units: the loss and the gradient norm jump over 20x their recent median on that one batch, and the run recovers.",
)
def h367_rollball_shard_in_cm_per_s(ctx: Context) -> None:
    gen = seeded(36707)
    model = Trunk(10, 64, out=5)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == ROLLBALL_ONSET:
            x = x.clone()
            x[:, :4] = 450.0 + 120.0 * x[:, :4]  # raw cm/s, not standardised
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, 36717, spread=1.2),
        240,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    pre_l = _median(ls[ROLLBALL_ONSET - 20 : ROLLBALL_ONSET])
    pre_g = _median(gs[ROLLBALL_ONSET - 20 : ROLLBALL_ONSET])
    ctx.check("the loss at step 120 is over 20x its recent median", ls[ROLLBALL_ONSET] > 20 * pre_l)
    ctx.check(
        "the gradient at step 120 is over 20x its recent median", gs[ROLLBALL_ONSET] > 20 * pre_g
    )
    ctx.check(
        "the run recovers: last 20 steps under 2x the pre-shard median", _mean(ls[-20:]) < 2 * pre_l
    )
    ctx.check("finite throughout", _finite(ls))


# -- koshti: the valid-count normaliser reads 1 on one step -----------------------------------------

KOSHTI_ONSET = 150


class ProfileNet(nn.Module):
    """A per-time-step SiLU MLP (fc1, act1, fc2, act2, head) over a (batch, time, features)
    hold-force profile."""

    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _profiles(gen, batch, steps, d_in, seed):
    inner = _readings(gen, batch * steps, d_in, seed)
    while True:
        x, y = next(inner)
        yield x.reshape(batch, steps, d_in), y.reshape(batch, steps)


@scenario(
    family="koshti_hold_force_profile_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=KOSHTI_ONSET,
    note="A hand-written per-time-step SiLU MLP (fc1, act1, fc2, act2, head) predicting the grip force through a koshti (Iranian wrestling) hold, 64 profiles of 16 steps a batch, SGD Nesterov at 0.02, a masked squared error divided by the count of valid steps, gradients clipped at 1.0, 260 steps. The count comes from the sampler's metadata; on the resume step 150 it is read before the sampler fills it and defaults to 1, so that step's backpropagated loss is the sum over 1024 steps: the gradient norm is over 50x its recent median on a clean batch (the logged mean loss is ordinary), and clipping keeps the run on track.",
)
def h367_koshti_valid_count_default(ctx: Context) -> None:
    gen = seeded(36708)
    model = ProfileNet(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss, out, x, y):
        mask = torch.ones_like(y)
        count = 1.0 if step == KOSHTI_ONSET else float(mask.sum())  # metadata not yet filled
        return ((out - y) ** 2 * mask).sum() / count

    _loop(
        ctx,
        model,
        opt,
        _profiles(gen, 64, 16, 6, 36718),
        260,
        F.mse_loss,
        backprop=backprop,
        clip=1.0,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    pre_g = _median(gs[KOSHTI_ONSET - 20 : KOSHTI_ONSET])
    pre_l = _median(ls[KOSHTI_ONSET - 20 : KOSHTI_ONSET])
    ctx.check(
        "the gradient at step 150 is over 50x its recent median", gs[KOSHTI_ONSET] > 50 * pre_g
    )
    ctx.check(
        "the batch at step 150 is clean: its loss under 2x the median", ls[KOSHTI_ONSET] < 2 * pre_l
    )
    ctx.check(
        "the run stays on track: last 20 steps under 2x the pre-burst median",
        _mean(ls[-20:]) < 2 * pre_l,
    )
    ctx.check("finite throughout", _finite(ls))


# -- jegichagi: activity penalty typed 1.0 for 1e-4 (dead ReLUs) -------------------------------------


@scenario(
    family="jegichagi_kick_count_activity_penalty_relu_regressor",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting how many kicks a jegichagi (Korean shuttlecock) player keeps up from twelve readings, plain SGD at 0.05, MSE plus an L1 activity penalty on act2's output (each row's L1 norm, averaged over the batch) for sparse features, 240 steps. The penalty weight was typed 1.0 for 1e-4: it pushes fc2's pre-activations below zero, act2's units stop firing on every input one after another and, getting no gradient, never come back; over 90% of act2's units are dead over the last 50 steps (under a tenth at step 0) and the loss stays near the targets' variance.",
)
def h367_jegichagi_activity_penalty_typo(ctx: Context) -> None:
    gen = seeded(36709)
    model = Trunk(12, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    penalty = 1.0  # meant: 1e-4
    dead = []

    def backprop(step, loss, out, x, y):
        h = model.features(x)
        dead.append(float((h.detach() <= 0).all(0).float().mean()))
        return loss + penalty * h.abs().sum(-1).mean()

    batches = _readings(gen, 64, 12, 36719)
    _loop(ctx, model, opt, batches, 240, F.mse_loss, backprop=backprop)
    y_var = float(torch.cat([next(batches)[1] for _ in range(8)]).var())
    ctx.check("under a tenth of act2's units are dead at step 0", dead[0] < 0.1)
    ctx.check(
        "over 90% of act2's units are dead over each of the last 50 steps", min(dead[-50:]) > 0.9
    )
    ctx.check(
        "the loss stays above half the targets' variance", _mean(ctx.losses[-20:]) > 0.5 * y_var
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- bora: the running target variance lost its update term (a drifting target) --------------------


class TargetScaler:
    """Standardises targets with a running variance (momentum 0.99)."""

    def __init__(self, momentum=0.99):
        self.momentum = momentum
        self.var = 1.0

    def update(self, y):
        # meant: self.var = m * self.var + (1 - m) * y.var()
        self.var = self.momentum * self.var

    def __call__(self, y):
        return y / math.sqrt(self.var)


@scenario(
    family="bora_wind_gust_speed_drifting_target_tanh_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) forecasting the gust speed of a bora (the katabatic wind of the Adriatic) from ten standardised readings, Adagrad at 0.05, MSE on targets standardised by a running variance, 300 steps. The running variance's update lost its (1 - m) * batch_var term, so it only decays (0.99 ** step) and the standardised targets grow about 4.5x (their variance about 20x) over the run; the model falls behind the drifting targets and the loss climbs slowly to over 3x its lowest 20-step mean, with no single jump, finite.",
)
def h367_bora_running_variance_decay(ctx: Context) -> None:
    gen = seeded(36710)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    scaler = TargetScaler()

    def alter(step, x, y):
        scaler.update(y)
        return x, scaler(y)

    _loop(ctx, model, opt, _readings(gen, 64, 10, 36720), 300, F.mse_loss, alter=alter)
    ls = ctx.losses
    lowest = min(_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19))
    ctx.check("the last 20 steps are over 3x the lowest 20-step mean", _mean(ls[-20:]) > 3 * lowest)
    ctx.check(
        "no single jump: no step over 3x the previous 10 steps' mean",
        all(ls[i] < 3 * _mean(ls[i - 10 : i]) for i in range(60, len(ls))),
    )
    ctx.check("finite throughout", _finite(ls))


# -- la soule: multi-class margin loss missing its clamp (head logits grow without bound) ----------


def _unclamped_margin(out, y):
    correct = out.gather(1, y[:, None]).squeeze(1)
    other = out.scatter(1, y[:, None], float("-inf")).amax(1)
    return (other - correct).mean()  # meant: (1 + other - correct).clamp_min(0).mean()


@scenario(
    family="la_soule_scrum_outcome_margin_loss_relu_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) naming which of five ways a la soule (old Norman mass football) scrum broke from twelve readings, RAdam at 3e-3, a multi-class margin loss, 240 steps. The loss was meant as clamp_min(1 + max_other - correct, 0); the clamp and margin were dropped, so it keeps rewarding a larger gap after every row is right: the head's mean logit magnitude grows over 20x from the first steps and in every quarter of the run, the loss falls below zero without floor, finite.",
)
def h367_la_soule_margin_clamp_missing(ctx: Context) -> None:
    gen = seeded(36721)
    model = Trunk(12, 64, out=5)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    mags = []

    def watch(step, out, x, y):
        mags.append(float(out.detach().abs().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 5, 36722, spread=1.0),
        240,
        _unclamped_margin,
        classifier=True,
        watch=watch,
    )
    q = len(mags) // 4
    quarters = [_mean(mags[i * q : (i + 1) * q]) for i in range(4)]
    ctx.check("the mean logit magnitude grew over 20x", _mean(mags[-10:]) > 20 * _mean(mags[:10]))
    ctx.check(
        "it grew in every quarter", all(b > a for a, b in zip(quarters, quarters[1:], strict=False))
    )
    ctx.check("the loss is below zero at the end", _mean(ctx.losses[-10:]) < 0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


class TraceConv(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> pool -> head over short multichannel traces."""

    def __init__(self, channels=2, width=16, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="harpastum_pass_type_relu_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, head) naming which of five passes a harpastum (Roman ball game) player made from two-channel motion traces, AdamW with weight decay 0.01 under OneCycleLR (max 3e-3), label smoothing 0.1, gradients clipped at 1.0, 200 steps. A control.",
)
def h367_harpastum_conv1d_onecycle(ctx: Context) -> None:
    gen = seeded(36723)
    model = TraceConv()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 64, 5, 36724),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="lime_plaster_carbonation_depth_silu_huber_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the carbonation depth of a lime plaster from twelve noisy readings of mix, humidity and age, Huber loss, Adam at 2e-3, fp16 autocast with a torch.amp.GradScaler, accumulation over 2, ReduceLROnPlateau on a held-out batch, gradients clipped at 1.0, 180 steps. A control.",
)
def h367_lime_plaster_fp16_plateau(ctx: Context) -> None:
    gen = seeded(36725)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    held = next(_readings(torch.Generator().manual_seed(11), 256, 12, 36726, noise=0.2))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 36726, noise=0.2),
        180,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the loss scale stayed above 1", min(ctx.scales) > 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))
