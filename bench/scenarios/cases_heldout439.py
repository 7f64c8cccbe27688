"""Held-out set 439 (``h439_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a halite hopper-crystal perceiver whose cross-attention scale is typed sqrt(d) for
1/sqrt(d) (the attention logits grow), a borosilicate pipe annealer fp16 regressor whose chamber
pressure arrives in pascals for kilopascals after a firmware update (fp16 overflow under autocast),
a sword-swallower blade-depth regressor resumed from a weights-only checkpoint (NAdam's state
restarts: a one-off loss spike the run recovers from), a sousaphone bell-resonance tanh regressor
whose warm-up peak is typed 2.0 for 0.2 (lr past 2/sharpness), a whirlpool vortex log-feature net
with no clamp on a current meter that stalls at 0 (log 0), a scythe-peening anvil-rebound Huber
regressor fed one shard in millimetres for metres (one corrupted batch), a fire-walk coal-glow BCE
net whose loss-weight table has one breakpoint typed 50 for 0.5 (one gradient burst), a dust-devil
track regressor whose site-embedding group lr is typed 1e-9 for 1e-2 (a frozen embedding), a
nacreous-cloud hue classifier whose temperature is typed 0.002 for 0.2 (softmax saturates) and a
pingo core-ice deep ReLU regressor whose init gain is doubled on top of kaiming's sqrt(2)
(gradients grow through depth).

Controls: a funambulist wire-sway perceiver with QK layer norm (Adam, warm-up then cosine decay,
clipping), a knife-grinder spark fp16 Conv1d classifier (GradScaler, AdamW under OneCycleLR, label
smoothing, clipping) and a hoof-trim gait GRU Huber regressor (RAdam, ReduceLROnPlateau,
accumulation over 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


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
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor (ctx is None)."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
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
        if attach:
            ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.cos(2 * x[:, 2]) - 0.2 > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


# -- a hand-written perceiver ----------------------------------------------------------------------


class _Attend(nn.Module):
    """Multi-head attention of queries ``xq`` over ``xkv``; keeps the last max |q.k * scale|."""

    def __init__(self, dim, heads, scale=None, qk_norm=False):
        super().__init__()
        self.heads = heads
        self.hd = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.scale = scale if scale is not None else 1.0 / math.sqrt(self.hd)
        self.q_norm = nn.LayerNorm(self.hd) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.hd) if qk_norm else nn.Identity()
        self.max_logit = 0.0

    def forward(self, xq, xkv):
        b, n, d = xq.shape
        m = xkv.shape[1]
        q = self.q_norm(self.q(xq).reshape(b, n, self.heads, self.hd).transpose(1, 2))
        k = self.k_norm(self.k(xkv).reshape(b, m, self.heads, self.hd).transpose(1, 2))
        v = self.v(xkv).reshape(b, m, self.heads, self.hd).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) * self.scale
        self.max_logit = float(logits.detach().abs().max())
        y = torch.softmax(logits, -1) @ v
        return self.o(y.transpose(1, 2).reshape(b, n, d))


class _Perceiver(nn.Module):
    """A small learnt latent array cross-attends to a long input sequence, then self-attention
    over the latents; the latents are mean-pooled into a class head."""

    def __init__(
        self, d_in, length, dim=32, latents=8, heads=2, classes=4, scale=None, qk_norm=False
    ):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(length, dim))
        self.latents = nn.Parameter(0.02 * torch.randn(latents, dim))
        self.ln_q = nn.LayerNorm(dim)
        self.ln_kv = nn.LayerNorm(dim)
        self.cross = _Attend(dim, heads, scale=scale, qk_norm=qk_norm)
        self.ln_s = nn.LayerNorm(dim)
        self.self_attn = _Attend(dim, heads, qk_norm=qk_norm)
        self.ln_m = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        kv = self.ln_kv(self.embed(x) + self.pos)
        z = self.latents.expand(x.shape[0], -1, -1)
        z = z + self.cross(self.ln_q(z), kv)
        h = self.ln_s(z)
        z = z + self.self_attn(h, h)
        z = z + self.mlp(self.ln_m(z))
        return self.head(self.ln_f(z).mean(1))


def _bursts(gen, batch, length, d_in, classes, seed, amp=1.5):
    """Long noisy traces with one short burst of a class's signature at a random place."""
    g = torch.Generator().manual_seed(seed)
    sig = torch.randn(classes, 6, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.randn(batch, length, d_in, generator=gen)
        at = torch.randint(0, length - 6, (batch,), generator=gen)
        for i in range(batch):
            x[i, at[i] : at[i] + 6] += amp * sig[y[i]]
        yield x, y


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="halite_hopper_crystal_facet_perceiver",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("cross",),
    diverges=None,
    heldout=True,
    note="Halite hopper-crystal facet classifier: a hand-written perceiver (8 learnt latents "
    "cross-attend to a 96-step brine-pan camera trace, then self-attention over the latents; "
    "cross-entropy, AdamW lr 3e-3). The cross-attention's scale is typed math.sqrt(head_dim) for "
    "1 / math.sqrt(head_dim) (16x too large), and no QK norm: the cross-attention logits grow "
    "through training.",
)
def h439_halite_perceiver_scale_typo(ctx) -> None:
    gen = seeded(4391)
    model = _Perceiver(5, 96, scale=math.sqrt(16))  # meant 1 / math.sqrt(16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    seen = []

    def after(step):
        seen.append(model.cross.max_logit)

    _loop(
        ctx,
        model,
        opt,
        _bursts(gen, 32, 96, 5, 4, seed=391),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check(
        "max |cross logit| over the last 20 steps over 8x its first",
        _mean(seen[-20:]) > 8 * seen[0],
    )
    ctx.check("max |cross logit| over 40 at the end", _mean(seen[-20:]) > 40)
    ctx.check(
        "still growing: last 20 over 1.2x steps 60..79",
        _mean(seen[-20:]) > 1.2 * _mean(seen[60:80]),
    )
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    family="funambulist_wire_sway_qknorm_perceiver",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Funambulist (high-wire walker) sway-event classifier: a hand-written perceiver with QK "
    "layer norm in both attentions (8 latents over a 96-step balance-pole IMU trace; "
    "cross-entropy, Adam lr 2e-3, 15 warm-up steps then cosine decay to 0, clipping at 1). "
    "Control.",
)
def h439_funambulist_qknorm_perceiver(ctx) -> None:
    gen = seeded(4392)
    model = _Perceiver(5, 96, qk_norm=True)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps, warm = 150, 15
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )
    _loop(
        ctx,
        model,
        opt,
        _bursts(gen, 32, 96, 5, 4, seed=392),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained: loss fell by over 30%", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("cross logits bounded under 20", model.cross.max_logit < 20)


BORO_SWITCH = 90


@scenario(
    family="borosilicate_pipe_annealer_fp16_relu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=BORO_SWITCH,
    heldout=True,
    onset=BORO_SWITCH,
    note="Borosilicate pipe annealing-time regressor (ReLU MLP, MSE, Adam, fp16 autocast with a "
    "GradScaler). From step 90 the lehr controller's new firmware reports chamber pressure in "
    "pascals instead of kilopascals (about 101325 for 101.3) and the feature pipeline passes it "
    "through unscaled: under autocast fc1's fp16 matmul overflows past 65504 while the same batch "
    "is finite in float32, and the loss goes non-finite at step 90.",
)
def h439_borosilicate_fp16_pascals(ctx) -> None:
    gen = seeded(4393)
    model = _Net(10, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    base = _readings(gen, 64, 10, seed=393)
    seen = {}

    def alter(step, x, y):
        x = x.clone()
        if step >= BORO_SWITCH:
            x[:, 0] = 1000.0 * (101.3 + 0.5 * x[:, 0])  # pascals: the firmware changed units
        else:
            x[:, 0] = 0.5 * x[:, 0]  # kPa around 101.3, centred by the pipeline
        seen["x"] = x
        return x, y

    _loop(ctx, model, opt, base, 200, F.mse_loss, alter=alter, scaler=scaler, amp=True)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss non-finite at step 90", bad == BORO_SWITCH)
    ctx.check("finite and falling before 90", bad is not None and _fell(ls[:bad]))
    with torch.no_grad():
        out32 = model(seen["x"])
    ctx.check("the failing batch is finite in float32", bool(torch.isfinite(out32).all()))
    ctx.check(
        "fc1's fp16 input overflows (the pressure column passes 65504)",
        bool(torch.isinf(seen["x"].half()).any()) and float(seen["x"].abs().max()) < 3.0e38,
    )


SWORD_RESUME = 100


@scenario(
    family="sword_swallower_blade_depth_silu_regressor",
    optimizer="NAdam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SWORD_RESUME,
    note="Sword-swallower blade-depth regressor (SiLU MLP on throat-sensor features, MSE, NAdam lr "
    "1e-2). The job is pre-empted and resumed at step 100 from a checkpoint that saved the model "
    "weights only: the optimizer's state restarts empty (no moments, step count 0), the first "
    "updates move every weight by about the full lr, the loss spikes for a few steps on ordinary "
    "gradients and the run recovers.",
)
def h439_sword_swallower_weights_only_resume(ctx) -> None:
    gen = seeded(4394)
    model = _Net(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)

    def before(step):
        if step == SWORD_RESUME:
            opt.state.clear()  # the resume loaded model.state_dict() only

    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=394), 220, F.mse_loss, before=before)
    ls, gn = ctx.losses, ctx.grad_norms
    med = _median(ls[80:100])
    ctx.check("loss at 101..105 over 3x the median of 80..99", max(ls[101:106]) > 3 * med)
    ctx.check(
        "gradient at 100 ordinary (under 3x the median of 80..99)",
        gn[100] < 3 * _median(gn[80:100]),
    )
    ctx.check("recovers: last 20 under 1.5x the median of 80..99", _mean(ls[-20:]) < 1.5 * med)
    ctx.check("finite", _finite(ls))


def _hessian_top(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration on H v."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="sousaphone_bell_resonance_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Sousaphone bell-resonance frequency regressor (tanh MLP, MSE, plain SGD on a fixed "
    "set of 256 bell measurements). The linear warm-up's peak lr is typed 2.0 for 0.2: the lr "
    "climbs through 2/sharpness during warm-up and the loss blows up.",
)
def h439_sousaphone_warmup_peak_typo(ctx) -> None:
    gen = seeded(4395)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = next(_readings(gen, 256, 8, seed=395))
    peak, warm = 2.0, 150  # meant 0.2
    lrs = []
    sharp = {}

    def before(step):
        lr = 0.01 + (peak - 0.01) * min(step / warm, 1.0)
        for g in opt.param_groups:
            g["lr"] = lr
        lrs.append(lr)
        if step in (0, 30, 45):
            sharp[step] = _hessian_top(model, F.mse_loss, x, y)

    def fixed():
        while True:
            yield x, y

    _loop(ctx, model, opt, fixed(), 200, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("lr x sharpness under 2 at step 0", lrs[0] * sharp[0] < 2)
    ctx.check("lr x sharpness past 2 by step 45", max(lrs[s] * sharp[s] for s in (30, 45)) > 2)
    ctx.check("the loss blows up: max over 20x its lowest", max(ls) > 20 * min(ls))
    ctx.check("fell first (the early lr was fine)", min(ls[:40]) < 0.8 * ls[0])


class _LogFlow(nn.Module):
    """log of the current-meter speeds (the first ``k`` columns), the rest passed through."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        return torch.cat([torch.log(x[:, : self.k]), x[:, self.k :]], 1)  # no clamp


class _VortexNet(nn.Module):
    def __init__(self, d_in=9, k=3, hidden=48):
        super().__init__()
        self.logfeat = _LogFlow(k)
        self.net = _Net(d_in, hidden, 1, act=nn.GELU)

    def forward(self, x):
        return self.net(self.logfeat(x))


WHIRL_STALL = 70


@scenario(
    family="whirlpool_vortex_log_feature_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("logfeat",),
    diverges=WHIRL_STALL,
    heldout=True,
    onset=WHIRL_STALL,
    note="Tidal-whirlpool vortex-depth regressor (GELU MLP over log current speeds and other "
    "readings, MSE, Adamax). The feature module takes log of the current-meter speeds with no "
    "clamp; at step 70 one meter's impeller stalls and logs exactly 0.0 m/s, log(0) = -inf enters "
    "the network and the loss is non-finite at step 70.",
)
def h439_whirlpool_log_of_stalled_meter(ctx) -> None:
    gen = seeded(4396)
    model = _VortexNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        x = x.clone()
        x[:, :3] = torch.exp(0.4 * x[:, :3])  # speeds in m/s, positive
        if step == WHIRL_STALL:
            x[5, 1] = 0.0  # the stalled impeller
        seen[step] = x
        return x, y

    _loop(ctx, model, opt, _readings(gen, 64, 9, seed=396), 200, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("loss non-finite at step 70", _first_bad(ls) == WHIRL_STALL)
    ctx.check("finite and falling before", _fell(ls[:WHIRL_STALL]))
    feats = model.logfeat(seen[WHIRL_STALL])
    ctx.check("logfeat gives -inf on the stalled reading", bool(torch.isneginf(feats).any()))
    ctx.check("the raw batch itself is finite", bool(torch.isfinite(seen[WHIRL_STALL]).all()))


SCYTHE_SHARD = 120


@scenario(
    family="scythe_peening_anvil_rebound_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SCYTHE_SHARD,
    note="Scythe-peening edge-thinning regressor from peening-jig anvil-rebound readings (ReLU "
    "MLP, Huber loss, RMSprop, clipping at 1). One shard, read at step 120, was exported in "
    "millimetres instead of metres: one batch of inputs 1000x; the loss and gradient jump on that "
    "batch, clipping bounds the update and the run recovers.",
)
def h439_scythe_peening_mm_shard(ctx) -> None:
    gen = seeded(4397)
    model = _Net(8, 48, 1)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        return (1000.0 * x if step == SCYTHE_SHARD else x), y

    _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=397), 220, F.huber_loss, alter=alter, clip=1.0
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at 120 over 50x the median of 100..119", ls[120] > 50 * _median(ls[100:120]))
    ctx.check(
        "gradient at 120 over 20x the median of 100..119", gn[120] > 20 * _median(gn[100:120])
    )
    ctx.check(
        "recovers: last 20 under 1.5x the median of 100..119",
        _mean(ls[-20:]) < 1.5 * _median(ls[100:120]),
    )
    ctx.check("trained", _fell(ls))


FIRE_BREAK = 150


@scenario(
    family="fire_walk_coal_glow_loss_weight_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FIRE_BREAK,
    note="Fire-walk coal-bed 'safe to cross' detector from glow-camera features (ReLU MLP, "
    "BCEWithLogits, SGD momentum 0.9, clipping at 2). The loss weight comes from a piecewise "
    "table whose breakpoint at step 150 is typed 50.0 for 0.5 (the next stage's weight is right): "
    "one step's gradient is about 50x on an ordinary logged loss; clipping bounds the update and "
    "the run recovers.",
)
def h439_fire_walk_loss_weight_typo(ctx) -> None:
    gen = seeded(4398)
    model = _Net(12, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def weight(step):
        table = {0: 1.0, FIRE_BREAK: 50.0, FIRE_BREAK + 1: 1.0}  # 50.0 meant 0.5
        return table[max(k for k in table if k <= step)]

    def backprop(step, loss):
        return weight(step) * loss

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 12, seed=398),
        230,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=2.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at 150 over 30x the median of 120..149", gn[150] > 30 * _median(gn[120:150])
    )
    ctx.check("logged loss at 150 ordinary", ls[150] < 2 * _median(ls[120:150]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.3 * _mean(ls[130:150]))
    ctx.check("trained", _fell(ls))


class _TrackNet(nn.Module):
    """A site embedding beside the numeric readings, into a SiLU MLP."""

    def __init__(self, sites=12, d_num=8, emb=6, hidden=48):
        super().__init__()
        self.site = nn.Embedding(sites, emb)
        self.body = _Net(d_num + emb, hidden, 1, act=nn.SiLU)

    def forward(self, x):
        site, num = x[:, 0].long(), x[:, 1:]
        return self.body(torch.cat([self.site(site), num], 1))


def _tracks(gen, batch, seed, sites=12, d_num=8):
    """Dust-devil track length: a per-site offset plus a smooth function of the readings."""
    g = torch.Generator().manual_seed(seed)
    offset = 1.2 * torch.randn(sites, generator=g)
    w = torch.randn(d_num, generator=g) / math.sqrt(d_num)
    while True:
        s = torch.randint(0, sites, (batch,), generator=gen)
        num = torch.randn(batch, d_num, generator=gen)
        y = offset[s] + torch.tanh(num @ w) + 0.05 * torch.randn(batch, generator=gen)
        yield torch.cat([s[:, None].float(), num], 1), y


@scenario(
    family="dust_devil_track_site_embedding_two_group_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("site",),
    diverges=None,
    heldout=True,
    note="Dust-devil track-length regressor (a 12-site embedding beside anemometer readings into "
    "a SiLU MLP, MSE, Adagrad with two param groups). The embedding group's lr is typed 1e-9 for "
    "1e-2: the site embedding receives gradients but its updates are a vanishing fraction of its "
    "weights, while the MLP trains normally.",
)
def h439_dust_devil_embedding_group_typo(ctx) -> None:
    gen = seeded(4399)
    model = _TrackNet()
    opt = torch.optim.Adagrad(
        [
            {"params": model.site.parameters(), "lr": 1e-9},  # meant 1e-2
            {"params": model.body.parameters(), "lr": 1e-2},
        ]
    )
    emb0 = model.site.weight.detach().clone()
    fc0 = model.body.fc1.weight.detach().clone()
    grads = []

    orig_step = opt.step

    def step_and_record(*a, **k):
        g = model.site.weight.grad
        grads.append(0.0 if g is None else float(g.norm()))
        return orig_step(*a, **k)

    opt.step = step_and_record
    _loop(ctx, model, opt, _tracks(gen, 64, seed=399), 200, F.mse_loss)
    ctx.check(
        "site embedding moved under 1e-5 of its norm", _rel_change(emb0, model.site.weight) < 1e-5
    )
    ctx.check("while receiving gradients (median norm over 1e-3)", _median(grads) > 1e-3)
    ctx.check("fc1 moved over 5%", _rel_change(fc0, model.body.fc1.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


class _HueNet(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, 64), nn.GELU(), nn.Linear(64, 64), nn.GELU())
        self.head = nn.Linear(64, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.body(x)) / self.temperature


@scenario(
    family="nacreous_cloud_hue_band_temperature_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Nacreous (mother-of-pearl) cloud hue-band classifier from spectrometer bands (GELU MLP, "
    "logits divided by a temperature, cross-entropy, Adam lr 1e-3). The temperature is typed "
    "0.002 for 0.2: logits are 500x, and the softmax saturates, most rows' target probability "
    "rounding to exactly 1.0 in float32.",
)
def h439_nacreous_temperature_typo(ctx) -> None:
    gen = seeded(43910)
    model = _HueNet(12, 6, temperature=0.002)  # meant 0.2
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = _grades(gen, 64, 12, 6, seed=3910)
    fracs = []
    held = next(_grades(torch.Generator().manual_seed(910), 256, 12, 6, seed=3910))

    def after(step):
        with torch.no_grad():
            fracs.append(collapsed_fraction(model(held[0]), held[1]))

    _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True, after=after)
    ctx.check(
        "over half the rows' target probability exactly 1.0 over the last 30 steps",
        _mean(fracs[-30:]) > 0.5,
    )
    with torch.no_grad():
        ref = collapsed_fraction(model(held[0]) * 0.01, held[1])
    ctx.check("under 5% at temperature 0.2 on the same logits", ref < 0.05)
    ctx.check("finite", _finite(ctx.losses))


class _DeepStack(nn.Module):
    def __init__(self, d_in=8, hidden=48, depth=10, gain=1.0):
        super().__init__()
        mods = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else hidden, hidden)
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")  # std sqrt(2 / fan_in)
            lin.weight.data.mul_(gain)
            nn.init.zeros_(lin.bias)
            mods += [lin, nn.ReLU()]
        self.layers = nn.Sequential(*mods)
        self.head = nn.Linear(hidden, 1)

        self.states = []

    def forward(self, x):
        self.states = []
        for m in self.layers:
            x = m(x)
            if isinstance(m, nn.ReLU) and x.requires_grad:
                x.retain_grad()
                self.states.append(x)
        return self.head(x).squeeze(-1)


@scenario(
    family="pingo_core_ice_deep_relu_stack_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.2"),
    diverges=None,
    heldout=True,
    note="Pingo core ice-lens thickness regressor (a 10-layer plain ReLU stack, no residuals or "
    "norms, MSE, SGD Nesterov, clipping at 1). The init helper is called with gain=2.0 on top of "
    "kaiming_normal_'s own sqrt(2): each layer doubles the signal, the gradient grows about 2x per "
    "layer back through depth (hundreds of times larger at the first layer than at the last) and "
    "clipping keeps cutting it.",
)
def h439_pingo_double_gain_init(ctx) -> None:
    def depth_ratio(gain):
        seeded(43911)
        m = _DeepStack(gain=gain)
        x, y = next(_readings(torch.Generator().manual_seed(911), 64, 8, seed=3911))
        F.mse_loss(m(x), y).backward()
        return float(m.states[0].grad.norm() / m.states[-1].grad.norm().clamp_min(1e-30))

    ref = depth_ratio(1.0)
    ratio = depth_ratio(2.0)
    gen = seeded(43911)
    model = _DeepStack(gain=2.0)  # kaiming already applies sqrt(2)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=3911), 150, F.mse_loss, clip=1.0)
    gn = ctx.grad_norms
    ctx.check("dL/dh_1 over 100x dL/dh_10 at gain 2", ratio > 100)
    ctx.check("under 10x at the intended gain", ref < 10)
    ctx.check("gradient norm over 100 (clipped to 1) in most steps", _median(gn) > 100)


# -- controls --------------------------------------------------------------------------------------


class _SparkConv(nn.Module):
    """Conv1d over a spark-sound envelope (2 channels x 48 frames), pooled into a class head."""

    def __init__(self, ch=2, width=16, classes=5):
        super().__init__()
        self.conv1 = nn.Conv1d(ch, width, 5, padding=2)
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _sparks(gen, batch, seed, classes=5, length=48):
    """Spark-stream envelopes: each steel grade has its own burst rate and spread."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.15 + 0.5 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        ph = 6.28 * torch.rand(batch, 1, generator=gen)
        a = torch.sin(freq[y][:, None] * t + ph)
        b = torch.cos(2 * freq[y][:, None] * t + ph)
        x = torch.stack([a, b], 1) + 0.4 * torch.randn(batch, 2, length, generator=gen)
        yield x, y


@scenario(
    family="knife_grinder_spark_grade_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Knife-grinder spark-test steel-grade classifier (ReLU Conv1d over spark-sound "
    "envelopes, cross-entropy with label smoothing 0.1, AdamW under OneCycleLR, fp16 autocast "
    "with a GradScaler, clipping at 1). Control.",
)
def h439_knife_grinder_fp16_onecycle(ctx) -> None:
    gen = seeded(43912)
    model = _SparkConv()
    steps = 160
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _sparks(gen, 64, seed=3912),
        steps,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("trained: loss fell by over 30%", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))
    ctx.check("loss scale finite and positive", all(0 < s < float("inf") for s in ctx.scales))


class _GaitGRU(nn.Module):
    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1]).squeeze(-1)


def _gaits(gen, batch, length=24):
    """Hoof-load traces at the walk; target: the hoof-angle imbalance after trimming."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        f = 0.3 + 0.3 * torch.rand(batch, 1, generator=gen)
        imb = torch.randn(batch, 1, generator=gen)
        a = torch.sin(f * t) * (1 + 0.3 * imb)
        b = 0.5 * imb + 0.3 * torch.sin(f * t + 1.0)  # the load offset of the imbalanced side
        x = torch.stack([a, b, f.expand(-1, length), torch.cos(f * t)], -1)
        x = x + 0.05 * torch.randn(batch, length, 4, generator=gen)
        yield x, imb.squeeze(-1)


@scenario(
    family="hoof_trim_gait_balance_gru_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hoof-trim gait-balance regressor (GRU over 24 hoof-load readings, Huber loss, RAdam, "
    "ReduceLROnPlateau on a held-out batch, accumulation over 2, clipping at 1). Control.",
)
def h439_hoof_trim_gru_plateau(ctx) -> None:
    gen = seeded(43913)
    model = _GaitGRU()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_gaits(torch.Generator().manual_seed(913), 128))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _gaits(gen, 32),
        150,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("trained: loss fell by over 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))
