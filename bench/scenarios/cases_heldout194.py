"""Held-out set 194 (``h194_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a typhoon eye-pressure tanh regressor whose warm-up
factor lost its min(1, ...), a cheesemaker's curd-pH Elman cell whose recurrent init took its
fan-in from the input width, a seal-pup haul-out count net with a hand-written softplus under
fp16 autocast, a clockmaker's escapement-beat 1-D CNN whose gradual unfreezing was configured
in epochs and read as steps, a cyclone track-turn net with acos of an unclamped cosine, a
skeet pattern-density regressor handed one radar packet's int16 sentinel, a mushroom flush-yield
ReLU MLP under a OneCycleLR peak copied from a BatchNorm recipe, a wine cork-taint classifier
whose softmax temperature was typed 5e-3 for 5e-1, a taekwondo kick-impact
regressor whose criterion is left summing for one step after an evaluation, a sheng chord
attention classifier with an unclamped learnt attention temperature, and three controls (an
ondes Martenot ribbon-pitch fp16 regressor with accumulation, a lichen reflectance 1-D CNN with
clipping, a gondola oar-stroke tied GRU LM).

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
    dead_fraction,
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


def _moved(params, start) -> float:
    return max(float((p.detach() - s).abs().max()) for p, s in zip(params, start, strict=True))


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


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
    alter=None,
    watch=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    stop_on_nan=True,
    shown_fn=None,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` records after the forward
    pass, ``after(step)`` after the optimizer step; ``accumulate`` micro-batches a step;
    ``shown_fn(out, y)`` is what the logger reports when it is not the backpropagated loss;
    stops after logging a NaN loss unless told not to."""
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
            total = loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            logged = loss if shown_fn is None else shown_fn(out.float(), y)
            shown += float(logged.detach()) / accumulate
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


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


# -- typhoon: a linear warm-up that lost its min(1, ...) ------------------------------------------

TYPHOON_WARM = 10


@scenario(
    family="typhoon_eye_pressure_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=TYPHOON_WARM,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) forecasting a typhoon's central pressure drop over the "
    "next 12 h (standardised) from 10 standardised readings (sea-surface temperature, shear, "
    "outflow, eye diameter, ...), plain SGD at a peak rate of 0.1, MSE, a LambdaLR linear "
    "warm-up over 10 steps written as (step + 1) / 10 without the min(1, ...): the rate keeps "
    "rising by 0.01 a step after the warm-up ends at step 10 (0.8 by step 80), lr x sharpness "
    "goes from about 0.6 at step 10 past the stability limit of 2, and the loss blows up "
    "around step 80.",
)
def h194_typhoon_warmup_no_clamp(ctx: Context) -> None:
    gen = seeded(19401)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / TYPHOON_WARM)
    probe = next(_readings(torch.Generator().manual_seed(77), 256, 10, seed=1))
    lr_sharp = {}

    def before(step):
        if step % 10 == 0:
            if all(torch.isfinite(p).all() for p in model.parameters()):
                lr_sharp[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, *probe)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=1),
        200,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    onset = TYPHOON_WARM
    ctx.check("lr x sharpness below 1 at step 10", lr_sharp[onset] < 1)
    ctx.check("lr x sharpness past 2 before the blow-up", max(lr_sharp.values()) > 2)
    ctx.check("loss fell before step 10", _fell(ls[: onset + 1], k=3, ratio=0.7))
    late = [v if math.isfinite(v) else 1e30 for v in ls[onset:]]
    ctx.check(
        "loss past 100x its level at steps 10-30 later",
        max(late) > 100 * _mean(ls[onset : onset + 20]),
    )


# -- cheesemaker: a recurrent init whose fan-in came from the input width ------------------------


class CurdCell(nn.Module):
    """A hand-written tanh Elman cell: h' = tanh(x W_x^T + h W_h^T + b)."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.w_x = nn.Parameter(torch.randn(hidden, d_in) / math.sqrt(d_in))
        # std 1/sqrt(fan_in) for the recurrent matrix too, with fan_in taken from the input width
        self.w_h = nn.Parameter(torch.randn(hidden, hidden) / math.sqrt(d_in))
        self.b = nn.Parameter(torch.zeros(hidden))

    def forward(self, x, h):
        return torch.tanh(x @ self.w_x.T + h @ self.w_h.T + self.b)


class CurdNet(nn.Module):
    def __init__(self, d_in=8, hidden=64):
        super().__init__()
        self.cell = CurdCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        self.hidden = hidden
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _curd_logs(gen, batch, seed, length=40):
    """Forty readings over a cheese make (pH, whey temperature, rennet time, stirring speed,
    ...: 8 standardised channels), and the standardised firmness of the curd at cutting, set
    mostly by the readings of the first half."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, length, 8, generator=gen)
        drift = x.cumsum(1) / math.sqrt(length)
        y = torch.tanh(drift[:, length // 2] @ w / 2) + 0.1 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="cheesemaker_curd_ph_elman_cell_regressor",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("cell",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman cell (module `cell`: W_x, W_h, b) read over 40 readings of "
    "a cheese make (pH, whey temperature, ...: 8 channels) and a Linear head estimating the "
    "curd's firmness at cutting, SGD with Nesterov momentum 0.9 at 1e-3, MSE. The recurrent "
    "matrix was initialised with std 1/sqrt(fan_in) taking fan_in from the input width (8) "
    "instead of the hidden width (64): std 0.35, spectral radius about 3, and the gradient "
    "grows back through time: at step 0 the gradient reaching the first hidden state is "
    "thousands of times the one at the last and the gradient norm is about 6e3; each update "
    "makes it worse, to about 1e9 at step 5, whose update throws the cell into saturation "
    "(no gradient through time afterwards, the head alone fits the mean); the loss stays "
    "finite and does not blow up.",
)
def h194_cheesemaker_recurrent_fan_in(ctx: Context) -> None:
    gen = seeded(19402)
    model = CurdNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    radius = float(torch.linalg.eigvals(model.cell.w_h.detach()).abs().max())
    through_time, cell_vs_head = [], []

    def read_gradients(optimizer, args, kwargs):
        # the gradient through time, read off the retained hidden states before the update
        first, last = model.states[0].grad, model.states[-1].grad
        through_time.append(float(first.norm() / (last.norm() + 1e-12)))
        cell_vs_head.append(
            float(model.cell.w_h.grad.norm() / (model.head.weight.grad.norm() + 1e-12))
        )

    opt.register_step_pre_hook(read_gradients)
    _train(ctx, model, opt, _curd_logs(gen, 32, seed=2), 120, F.mse_loss)
    g = ctx.grad_norms
    ctx.check("recurrent spectral radius above 2.5 at init", radius > 2.5)
    ctx.check("gradient at the first state 1000x the last at step 0", through_time[0] > 1000)
    ctx.check("recurrent weight's gradient 100x the head's at step 0", cell_vs_head[0] > 100)
    ctx.check("grad norm grew 1000x from step 0 within 10 steps", max(g[:10]) > 1000 * g[0])
    ctx.check(
        "after the burst the cell is saturated: no gradient through time from step 20",
        max(through_time[20:]) < 1e-2,
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- seal pups: a hand-written softplus under fp16 autocast ---------------------------------------


class HandSoftplus(nn.Module):
    """The count rate as log(1 + exp(z)), written by hand, in the dtype z comes in (float16
    under autocast: exp overflows 65504 once z passes about 11.1)."""

    def __init__(self):
        super().__init__()
        self.last_max = 0.0

    def forward(self, z):
        self.last_max = float(z.detach().float().max())
        return torch.log1p(torch.exp(z))


class HaulOutNet(nn.Module):
    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        self.rate = HandSoftplus()

    def forward(self, x):
        return self.rate(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1))


def _haul_outs(gen, batch, seed, peak_from):
    """Twelve standardised readings of a haul-out beach (tide, ice, disturbance, date, ...) and
    the count of seal pups on it; from ``peak_from`` on the survey reaches the pupping peak
    and the counts run to dozens."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    step = 0
    while True:
        x = torch.randn(batch, 12, generator=gen)
        log_rate = 0.8 + 0.5 * torch.tanh(x @ w / 3)
        if step >= peak_from:
            log_rate = log_rate + 2.2
        step += 1
        yield x, torch.poisson(torch.exp(log_rate), generator=gen)


SEAL_ONSET = 87


@scenario(
    family="seal_pup_haulout_count_fp16_softplus_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("rate",),
    diverges=SEAL_ONSET,
    onset=SEAL_ONSET,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) and a `rate` module counting seal pups on a haul-out "
    "beach from 12 standardised readings, Poisson NLL on the rate, Adam at 1e-2, fp16 autocast "
    "with a torch.amp.GradScaler. The rate is a softplus written by hand as log1p(exp(z)), "
    "computed in float16 under autocast. Counts of 1 to 8 keep z below 9; from step 80 the "
    "survey reaches the pupping peak (counts in the dozens), Adam pushes z up, and at step 87 "
    "z passes 11.1: exp(z) overflows 65504 to inf, the rate is inf, the loss NaN from then on, "
    "every step is skipped and the scaler halves its scale each step; the fp32 weights stay "
    "finite (in fp32 the same softplus would be good to z = 88).",
)
def h194_seal_pup_fp16_softplus(ctx: Context) -> None:
    gen = seeded(19403)
    model = HaulOutNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    zmax = []

    def loss_fn(rate, y):
        return F.poisson_nll_loss(rate, y, log_input=False)

    _train(
        ctx,
        model,
        opt,
        _haul_outs(gen, 64, seed=3, peak_from=80),
        140,
        loss_fn,
        scaler=scaler,
        watch=lambda s, o, x, y: zmax.append(model.rate.last_max),
        stop_on_nan=False,
    )
    onset = SEAL_ONSET
    ctx.check("loss finite before step 87", _finite(ctx.losses[:onset]))
    ctx.check("loss fell before step 80", _fell(ctx.losses[:80]))
    ctx.check("first non-finite loss at step 87", _first_bad(ctx.losses) == onset)
    ctx.check("largest z below 11 before step 87", max(zmax[:onset]) < 11.0)
    ctx.check("largest z past 11.1 (exp past 65504) at step 87", zmax[onset] > 11.1)
    ctx.check(
        "scaler scale fell 2**30-fold after step 87",
        ctx.scales[-1] < ctx.scales[onset - 1] / 2**30,
    )
    ctx.check(
        "weights still finite", all(bool(torch.isfinite(p).all()) for p in model.parameters())
    )


# -- clockmaker: gradual unfreezing configured in epochs, read as steps ---------------------------


class BeatNet(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1))


def _ticks(gen, batch, seed, classes=5, length=64):
    """A 64-sample recording of an escapement's tick-tock: two clicks whose spacing, sharpness
    and ring depend on the fault (in beat, out of beat, worn pallet, dry pivot, loose
    crutch), with noise."""
    g = torch.Generator().manual_seed(seed)
    gap = torch.randint(20, 36, (classes,), generator=g)
    ring = 0.1 + 0.4 * torch.rand(classes, generator=g)
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        start = torch.randint(2, 10, (batch, 1), generator=gen).float()
        second = start + gap[y][:, None].float()
        x = torch.exp(-ring[y][:, None] * (t - start).clamp(min=0)) * (t >= start)
        x = x + 0.8 * torch.exp(-ring[y][:, None] * (t - second).clamp(min=0)) * (t >= second)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="clockmaker_escapement_beat_conv1d_classifier",
    optimizer="SGD(momentum)",
    cause="update_ratio_out_of_range",
    where=("conv1", "conv2"),
    diverges=None,
    heldout=True,
    note="A 1-D CNN (conv1, conv2 with ReLUs, mean pooling, a Linear head) naming one of 5 "
    "escapement faults from a clock's tick-tock recording, the conv trunk warm-started from "
    "the workshop's earlier model, SGD with momentum 0.9 at 0.05, cross-entropy, two param "
    "groups with a LambdaLR each for gradual unfreezing: the head trains from step 0, the trunk "
    "from unfreeze_after. The config gives unfreeze_after: 40 in steps, the trainer reads it as "
    "epochs and multiplies by the 56 steps of an epoch, so the trunk stays at a learning rate "
    "of exactly 0 for all 200 steps of the run and conv1 and conv2 never move.",
)
def h194_clockmaker_unfreeze_epochs(ctx: Context) -> None:
    gen = seeded(19404)
    model = BeatNet()
    # the warm start: the trunk trained on the workshop's earlier 5-fault recordings
    pre = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    earlier = _ticks(torch.Generator().manual_seed(404), 64, seed=40)
    for _, (xb, yb) in zip(range(60), earlier, strict=False):
        pre.zero_grad()
        F.cross_entropy(model(xb), yb).backward()
        pre.step()
    nn.init.normal_(model.head.weight, std=0.1)
    nn.init.zeros_(model.head.bias)
    cfg = {"unfreeze_after": 40, "steps_per_epoch": 56}
    unfreeze_at = cfg["unfreeze_after"] * cfg["steps_per_epoch"]
    trunk = [p for n, p in model.named_parameters() if n.startswith("conv")]
    opt = torch.optim.SGD(
        [{"params": trunk}, {"params": model.head.parameters()}], lr=0.05, momentum=0.9
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: 1.0 if s >= unfreeze_at else 0.0, lambda s: 1.0]
    )
    trunk0, head0 = _snapshot(trunk), _snapshot(list(model.head.parameters()))
    trunk_lrs = []
    _train(
        ctx,
        model,
        opt,
        _ticks(gen, 32, seed=4),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        before=lambda s: trunk_lrs.append(opt.param_groups[0]["lr"]),
    )
    ctx.check("unfreeze step past the run's 200 steps", unfreeze_at > 200)
    ctx.check("trunk learning rate exactly 0 at every step", max(trunk_lrs) == 0.0)
    ctx.check("conv1 and conv2 never moved", _moved(trunk, trunk0) == 0.0)
    ctx.check("head moved", _moved(list(model.head.parameters()), head0) > 1e-2)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- cyclone: the turning angle of a track as acos of an unclamped cosine ------------------------


class TurnAngle(nn.Module):
    """Turning angles between successive storm-motion vectors: acos(u.v / (|u| |v|)), no
    clamp to [-1, 1]."""

    def forward(self, track):
        u, v = track[:, :-1], track[:, 1:]
        cos = (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))
        self.last_max_cos = float(cos.max())
        return torch.acos(cos)


class CycloneNet(nn.Module):
    def __init__(self, steps=8, d_env=6, hidden=64):
        super().__init__()
        self.turn = TurnAngle()
        self.fc1 = nn.Linear(steps * 2 + steps - 1 + d_env, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        self.steps = steps

    def forward(self, x):
        track = x[:, : 2 * self.steps].reshape(-1, self.steps, 2)
        feats = torch.cat([x, self.turn(track)], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(feats))))).squeeze(-1)


def _best_track(gen, batch, seed, straight_at=None, steps=8):
    """Eight 6-hourly motion vectors of a tropical cyclone (recurving, each turn between 0.1
    and 0.4 rad one way) and 6 standardised environment readings; the target is the standardised 24-h
    intensity change. At ``straight_at`` one storm of the batch comes from a best-track file
    whose gap was filled by linear interpolation: identical motion vectors."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    step = 0
    while True:
        heading = torch.rand(batch, 1, generator=gen) * 2 * math.pi
        side = torch.randint(0, 2, (batch, 1), generator=gen) * 2 - 1
        turns = side * (0.1 + 0.3 * torch.rand(batch, steps, generator=gen))
        bend = turns.mean(1, keepdim=True)
        ang = heading + turns.cumsum(1)
        speed = 0.5 + torch.rand(batch, steps, generator=gen)
        track = torch.stack([speed * ang.cos(), speed * ang.sin()], -1)
        if straight_at is not None and step == straight_at:
            track[0] = torch.tensor([0.47, -0.76])
        env = torch.randn(batch, 6, generator=gen)
        y = torch.tanh(env @ w / 2) - 2 * bend.squeeze(1) + 0.1 * torch.randn(batch, generator=gen)
        step += 1
        yield torch.cat([track.flatten(1), env], 1), y


CYCLONE_ONSET = 70


@scenario(
    family="cyclone_track_turn_angle_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("turn",),
    diverges=CYCLONE_ONSET,
    onset=CYCLONE_ONSET,
    heldout=True,
    note="A GELU MLP forecasting a tropical cyclone's 24-h intensity change from its last eight "
    "6-hourly motion vectors, 6 environment readings and the track's turning angles, which a "
    "`turn` module computes as acos(u.v / (|u| |v|)) with no clamp to [-1, 1]; NAdam at 2e-3, "
    "MSE. At step 70 the batch holds a storm from a best-track file whose gap was filled by "
    "linear interpolation: identical successive motion vectors, whose cosine rounds to "
    "1.0000001 in float32, acos gives NaN and the loss is NaN at step 70.",
)
def h194_cyclone_acos_unclamped(ctx: Context) -> None:
    gen = seeded(19405)
    model = CycloneNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    top = []
    _train(
        ctx,
        model,
        opt,
        _best_track(gen, 64, seed=5, straight_at=CYCLONE_ONSET),
        150,
        F.mse_loss,
        watch=lambda s, o, x, y: top.append(model.turn.last_max_cos),
    )
    onset = CYCLONE_ONSET
    ctx.check("loss finite before step 70", _finite(ctx.losses[:onset]))
    ctx.check("loss fell before step 70", _fell(ctx.losses[:onset]))
    ctx.check("every cosine at most 1 before step 70", max(top[:onset]) <= 1.0)
    ctx.check("a cosine above 1 at step 70", len(top) > onset and top[onset] > 1.0)
    ctx.check("first non-finite loss at step 70", _first_bad(ctx.losses) == onset)


# -- skeet: one radar packet's int16 sentinel, under clipping -----------------------------------

SKEET_ONSET = 100


@scenario(
    family="skeet_shot_pattern_density_regressor",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=SKEET_ONSET,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) regressing the standardised shot-pattern density on a "
    "skeet clay from 10 standardised readings (choke, load, distance, crossing speed from a "
    "Doppler radar, wind, ...), AdamW at 3e-3 with weight decay 1e-2, MSE, clip_grad_norm_ "
    "at 1.0. At step 100 one shot's radar packet was dropped and the logger wrote the int16 "
    "sentinel -32768 for its crossing speed, which the standardiser passed through: one input "
    "of -32768 among z-scores, a loss thousands of times the usual and a gradient hundreds of "
    "times the usual before clipping for that one batch; the clipped step knocks the weights "
    "and the run recovers; finite.",
)
def h194_skeet_int16_sentinel(ctx: Context) -> None:
    gen = seeded(19406)
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    onset = SKEET_ONSET

    def alter(step, x, y):
        if step == onset:
            x = x.clone()
            x[5, 3] = -32768.0
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=6, noise=0.1),
        200,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("loss at step 100 1000x the median before", ls[onset] > 1e3 * _median(ls[70:onset]))
    ctx.check("gradient at step 100 100x the median before", g[onset] > 100 * _median(g[70:onset]))
    ctx.check(
        "no other step's gradient 10x the median",
        max(g[70:onset] + g[onset + 1 :]) < 10 * _median(g[70:onset]),
    )
    ctx.check(
        "loss over the last 20 steps within 3x of the level before",
        _mean(ls[-20:]) < 3 * _mean(ls[80:onset]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- mushrooms: a OneCycleLR peak copied from a BatchNorm recipe kills the ReLUs -----------------


def _growing_rooms(gen, batch, seed):
    """Twelve growing-room readings (CO2, casing moisture, spawn age, ...) min-max scaled to
    [0, 1] by the farm's logger, and the standardised flush yield."""
    for x, y in _readings(gen, batch, 12, seed=seed, noise=0.1):
        yield (x.clamp(-3, 3) + 3) / 6, y


@scenario(
    family="mushroom_flush_yield_relu_regressor",
    optimizer="SGD(nesterov)",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head with nn.ReLU modules) regressing a mushroom "
    "farm's standardised flush yield from 12 growing-room readings (CO2, casing moisture, "
    "spawn age, ...) min-max scaled to [0, 1], SGD with Nesterov momentum 0.9, MSE, a "
    "OneCycleLR over 200 steps whose max_lr of 0.5 was copied from a BatchNorm ResNet "
    "super-convergence recipe. As the rate climbs towards its peak, large steps push fc1's "
    "units negative on these all-positive inputs: act1 goes from about 22% dead at init to "
    "over 80% dead for good, and the loss stalls near its starting level (about 0.6; the same "
    "run at max_lr 0.05 reaches about 0.15 with act1 still 23% dead); finite, no blow-up.",
)
def h194_mushroom_onecycle_peak(ctx: Context) -> None:
    gen = seeded(19407)
    model = Stack(12, hidden=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=steps)
    probe = next(_growing_rooms(torch.Generator().manual_seed(97), 512, seed=7))[0]

    def dead_now():
        with torch.no_grad():
            return dead_fraction(model.act1(model.fc1(probe)))

    dead0, dead = dead_now(), []
    _train(
        ctx,
        model,
        opt,
        _growing_rooms(gen, 64, seed=7),
        steps,
        F.mse_loss,
        sched=sched,
        after=lambda s: dead.append(dead_now()),
    )
    ls = ctx.losses
    ctx.check("act1 under 30% dead at init", dead0 < 0.3)
    ctx.check("over 80% of act1's units dead over the last 50 steps", min(dead[-50:]) > 0.8)
    ctx.check("loss over the last 20 steps above 0.4", _mean(ls[-20:]) > 0.4)
    ctx.check("no step's loss above 100", max(ls) < 100)
    ctx.check("loss finite throughout", _finite(ls))


# -- wine corks: the classifier divides by the contrastive head's temperature --------------------


class CorkNet(Stack):
    """The taint classifier: the Stack's head logits divided by the configured temperature."""

    def __init__(self, temperature):
        super().__init__(16, hidden=64, out=5, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="wine_cork_taint_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) naming a cork's taint (clean, TCA, TBA, geosmin, "
    "guaiacol, 5 classes) from 16 standardised sensor-panel readings, Adamax at 2e-3, "
    "cross-entropy on head(h) / temperature. The config's temperature of 5e-1 was typed 5e-3 "
    "(the exponent's digit), so the logits are 200x sharp: within 30 steps the float32 "
    "softmax gives about 80% of rows' target probability exactly 1.0 (every other class "
    "exactly 0), their gradient vanishes, and the few misclassified rows carry losses in the "
    "tens; finite.",
)
def h194_wine_cork_temperature_typo(ctx: Context) -> None:
    gen = seeded(19408)
    cfg = {"temperature": 5e-3}  # meant 5e-1
    model = CorkNet(cfg["temperature"])
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach().float(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, seed=8, noise=0.8),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under 5% of rows collapsed at step 0", collapsed[0] < 0.05)
    ctx.check(
        "over half the rows' target probability exactly 1.0 at the end",
        _mean(collapsed[-10:]) > 0.5,
    )
    ctx.check("over half the rows collapsed at every step from 30", min(collapsed[30:]) > 0.5)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- taekwondo: an evaluation leaves the shared criterion summing for one training step ----------

KICK_ONSET = 100


@scenario(
    family="taekwondo_kick_impact_force_regressor",
    optimizer="SGD(momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=KICK_ONSET,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing the standardised impact force of a taekwondo "
    "kick on an electronic body protector from 10 standardised readings (chamber angle, hip "
    "speed, distance, ...), SGD with momentum 0.9 at 1e-2, batches of 128, an nn.MSELoss "
    "criterion shared with the evaluation routine. The evaluation after step 99 sets "
    "criterion.reduction = 'sum' to total the validation error and the restore to 'mean' "
    "sits in the logging branch, which runs after the next training step: step 100's loss "
    "is summed over the 128 kicks, a gradient 128x the usual for one step from an ordinary "
    "batch (the logger reports the per-kick mean, which is ordinary at step 100). The jump "
    "sends the loss up for a few steps and the run recovers; finite.",
)
def h194_taekwondo_eval_sum_reduction(ctx: Context) -> None:
    gen = seeded(19409)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    criterion = nn.MSELoss()
    onset = KICK_ONSET
    reductions = []

    def before(step):
        if step == onset:  # what the evaluation after step 99 left behind
            criterion.reduction = "sum"
        reductions.append(criterion.reduction)

    def after(step):
        if step == onset:  # the logging branch's restore, one step late
            criterion.reduction = "mean"

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 128, 10, seed=9, noise=0.1),
        200,
        lambda o, y: criterion(o, y),
        before=before,
        after=after,
        shown_fn=F.mse_loss,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "reduction was 'sum' at step 100 only",
        [i for i, r in enumerate(reductions) if r == "sum"] == [onset],
    )
    ctx.check("gradient at step 100 50x the median before", g[onset] > 50 * _median(g[70:onset]))
    ctx.check(
        "logged loss at step 100 within 3x the median before", ls[onset] < 3 * _median(ls[70:onset])
    )
    ctx.check(
        "loss jumped 5x after the step-100 update",
        max(ls[onset + 1 : onset + 6]) > 5 * _median(ls[70:onset]),
    )
    ctx.check(
        "loss over the last 20 steps within 2x the level before",
        _mean(ls[-20:]) < 2 * _mean(ls[80:onset]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- sheng: a learnt attention temperature with no clamp ------------------------------------------


class ReedAttention(nn.Module):
    """Single-head self-attention by hand with a learnt sharpness: logits exp(log_scale) *
    q.k / sqrt(d), log_scale initialised at 0 and never clamped."""

    def __init__(self, dim=32):
        super().__init__()
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.dim = dim
        self.last_logits = None

    def forward(self, h):
        logits = self.log_scale.exp() * (self.q(h) @ self.k(h).transpose(1, 2))
        logits = logits / math.sqrt(self.dim)
        self.last_logits = logits.detach()
        return self.o(torch.softmax(logits, -1) @ self.v(h))


class ShengNet(nn.Module):
    def __init__(self, d_in=14, dim=32, classes=12):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.act = nn.GELU()
        self.attn = ReedAttention(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.act(self.embed(x))
        return self.head((h + self.attn(h)).mean(1))


def _sheng_chords(gen, batch, length=12):
    """Twelve sounding reeds of a sheng (one of 12 pitches one-hot, breath pressure, reed
    age); the label is the pitch of the reed blown hardest, the chord's melody note."""
    while True:
        pressure = torch.rand(batch, length, generator=gen)
        top = torch.randint(0, length, (batch, 1), generator=gen)
        pressure = pressure.scatter(1, top, 1.5 + 0.5 * torch.rand(batch, 1, generator=gen))
        pitch = torch.randint(0, 12, (batch, length), generator=gen)
        age = torch.rand(batch, length, 1, generator=gen)
        x = torch.cat([F.one_hot(pitch, 12).float(), pressure[..., None], age], -1)
        yield x + 0.05 * torch.randn(x.shape, generator=gen), pitch.gather(1, top).squeeze(1)


@scenario(
    family="sheng_reed_chord_attention_classifier",
    optimizer="RAdam",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A sheng (Chinese mouth organ) transcriber naming the melody note (12 pitches) of a "
    "12-reed chord, the reed blown hardest: a GELU embedding, one hand-written self-attention "
    "module `attn` (q/k/v/o Linears, logits exp(log_scale) * q.k / sqrt(d) with a learnt "
    "log_scale and no clamp on it, as CLIP clamps its logit scale), a residual, mean pooling "
    "and a head, RAdam at 1e-2, cross-entropy with label smoothing 0.1. To point every reed "
    "at the hardest-blown one, the q/k weights and the unclamped scale (1 to about 1.35) "
    "grow: the largest attention logit grows from about 0.03 at step 5 to about 50 by step "
    "150 and stays there, the attention one-hot; the head's logits stay small (smoothing "
    "bounds them) and the loss finite.",
)
def h194_sheng_learnt_scale_unclamped(ctx: Context) -> None:
    gen = seeded(19410)
    model = ShengNet()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    top, peak, head = [], [], []

    def watch(step, out, x, y):
        lg = model.attn.last_logits
        top.append(float(lg.abs().amax(dim=(1, 2)).mean()))
        peak.append(float(torch.softmax(lg, -1).amax(-1).mean()))
        head.append(float(out.detach().abs().amax()))

    _train(
        ctx,
        model,
        opt,
        _sheng_chords(gen, 64),
        250,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        watch=watch,
    )
    ctx.check("largest attention logit grew 100x from step 5", _mean(top[-10:]) > 100 * top[5])
    ctx.check("largest attention logit above 40 over the last 50 steps", min(top[-50:]) > 40)
    ctx.check("learnt scale grew past 1.2", float(model.attn.log_scale.detach().exp()) > 1.2)
    ctx.check("attention one-hot (top weight > 0.99) at the end", _mean(peak[-10:]) > 0.99)
    ctx.check("head logits stay below 10 at the end", max(head[-10:]) < 10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


@scenario(
    family="ondes_martenot_ribbon_pitch_fp16_mlp",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A SiLU MLP regressing the standardised pitch an ondes Martenot sounds from "
    "12 standardised readings of its ribbon ring position, touch key pressure and filter "
    "switches, AdamW at 3e-3 with two param groups (weight decay 0.05 on weights, none on "
    "biases), OneCycleLR, Huber loss, fp16 autocast with a torch.amp.GradScaler, gradient "
    "accumulation over 4 micro-batches of 16. An ordinary run.",
)
def h194_ondes_martenot_fp16_accumulate(ctx: Context) -> None:
    gen = seeded(19411)
    model = Stack(12, hidden=64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 16, 12, seed=11, noise=0.1),
        steps,
        F.huber_loss,
        sched=sched,
        scaler=scaler,
        accumulate=4,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("scaler scale stayed at or above 1024", min(ctx.scales) >= 1024)


class LichenNet(nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.bn1 = nn.BatchNorm1d(16)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.bn2 = nn.BatchNorm1d(32)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x[:, None])))
        h = F.relu(self.bn2(self.conv2(F.max_pool1d(h, 2))))
        return self.head(h.mean(-1))


def _reflectance(gen, batch, seed, classes=6, bands=32):
    """A 32-band reflectance spectrum of a rock face, one smooth spectrum per dominant lichen
    (crustose orange, map lichen, foliose grey, ...), with illumination changes and noise."""
    g = torch.Generator().manual_seed(seed)
    protos = F.avg_pool1d(torch.randn(classes, 1, bands + 4, generator=g), 5, 1).squeeze(1)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        light = 0.7 + 0.6 * torch.rand(batch, 1, generator=gen)
        yield light * protos[y] + 0.25 * torch.randn(batch, bands, generator=gen), y


@scenario(
    family="lichen_cover_reflectance_conv1d_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A 1-D CNN (two Conv1d + BatchNorm1d + ReLU stages, mean pooling, a head) "
    "naming the dominant lichen on a rock face from a 32-band reflectance spectrum under "
    "varying light, Adagrad at 5e-2, cross-entropy with label smoothing 0.1, clip_grad_norm_ "
    "at 1.0. An ordinary run.",
)
def h194_lichen_conv1d_clipped(ctx: Context) -> None:
    gen = seeded(19412)
    model = LichenNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    _train(
        ctx,
        model,
        opt,
        _reflectance(gen, 32, seed=12),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
    )
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class OarLM(nn.Module):
    """Embedding (std 0.1) -> GRU -> LayerNorm -> a head tied to the embedding."""

    def __init__(self, vocab=12, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight
        nn.init.normal_(self.embed.weight, std=0.1)

    def forward(self, idx):
        out, _ = self.gru(self.embed(idx))
        return self.head(self.norm(out))


def _oar_strokes(gen, batch, length=24, seed=13):
    """A gondolier's strokes as tokens (12 kinds: premi, stali, sciar, ... times three
    strengths), drawn figure by figure from a Markov chain over 8 fixed figures of 3 strokes."""
    g = torch.Generator().manual_seed(seed)
    figures = torch.randint(0, 12, (8, 3), generator=g)
    follow = torch.randint(0, 8, (8, 2), generator=g)
    while True:
        rows = []
        for _ in range(batch):
            f = int(torch.randint(0, 8, (1,), generator=gen))
            seq: list[int] = []
            while len(seq) < length + 1:
                seq += figures[f].tolist()
                f = int(follow[f, int(torch.randint(0, 2, (1,), generator=gen))])
            rows.append(seq[: length + 1])
        win = torch.tensor(rows)
        yield win[:, :-1], win[:, 1:]


@scenario(
    family="gondola_oar_stroke_tied_gru_lm",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GRU language model over a gondolier's oar strokes (12 stroke tokens), the "
    "output head tied to the embedding, RMSprop at 3e-3, a 15-step linear warm-up then "
    "cosine decay (LambdaLR), clip_grad_norm_ at 1.0, cross-entropy. An ordinary run.",
)
def h194_gondola_tied_gru_lm(ctx: Context) -> None:
    gen = seeded(19413)
    model = OarLM()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    steps, warm = 150, 15

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    _train(ctx, model, opt, _oar_strokes(gen, 16), steps, loss_fn, sched=sched, clip=1.0)
    ctx.check("loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("head tied to the embedding", model.head.weight is model.embed.weight)
    ctx.check("loss finite throughout", _finite(ctx.losses))
