"""Held-out set 442 (``h442_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a meteor-radiant set transformer (induced set attention blocks, a pooling-by-multihead-
attention readout) trained with AdamW at a fixed lr 3e-2 for 3e-4 and no QK normalisation (the attention
logits grow), a glory-hole fp16 regressor whose pressure channel switches from kPa to Pa after a
firmware update (fc1 passes fp16's 65504 under autocast), a bell-rope sally two-group regressor
whose warm-up lambda for the trunk group uses integer division (fc1's lr is 0 all run), a curling
glide-distance tanh regressor whose StepLR gamma is typed 10 for 0.1 (the lr passes 2/sharpness),
a stalactite drip deep ReLU MLP initialised with std 0.45 whatever the fan-in (gradients grow
through depth), a sheepdog outrun Huber regressor fed one shard in metres for kilometres, a
rope-walk twist net whose sqrt of a tension difference has no clamp, a hive-weight ReLU regressor
whose biases are initialised to -1 for +0.1 (ReLUs die), a sliotar grade classifier whose
temperature is typed 0.002 for 2.0 (softmax saturates) and a tide-pole regressor whose target scale
only decays, so the targets drift up under Adagrad's decaying steps (a slow climb).

Controls: an overtone-singing pre-norm transformer classifier (AdamW, OneCycleLR, clipping, label
smoothing), a kiln cone-bend Conv1d classifier (SGD Nesterov, ReduceLROnPlateau, noisy labels) and
a didgeridoo drone tied-weight autoencoder (RAdam, accumulation, clipping).
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


# -- a hand-written set transformer ---------------------------------------------------------------


class MAB(nn.Module):
    """Multihead attention block: records the largest |q.k/sqrt(d)| of its last forward."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.ln1 = nn.LayerNorm(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Linear(dim, dim)
        self.max_logit = 0.0

    def forward(self, a, b):
        n, ta, d = a.shape
        h = self.heads
        q = self.q(a).reshape(n, ta, h, -1).transpose(1, 2)
        k = self.k(b).reshape(n, b.shape[1], h, -1).transpose(1, 2)
        v = self.v(b).reshape(n, b.shape[1], h, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.max_logit = float(logits.detach().abs().max())
        y = (logits.softmax(-1) @ v).transpose(1, 2).reshape(n, ta, d)
        x = self.ln1(a + self.o(y))
        return self.ln2(x + F.relu(self.ff(x)))


class ISAB(nn.Module):
    def __init__(self, dim, heads, inducing):
        super().__init__()
        self.inducing = nn.Parameter(torch.randn(1, inducing, dim) / math.sqrt(dim))
        self.mab1 = MAB(dim, heads)
        self.mab2 = MAB(dim, heads)

    def forward(self, x):
        h = self.mab1(self.inducing.expand(x.shape[0], -1, -1), x)
        return self.mab2(x, h)


class PMA(nn.Module):
    def __init__(self, dim, heads, seeds=1):
        super().__init__()
        self.seeds = nn.Parameter(torch.randn(1, seeds, dim) / math.sqrt(dim))
        self.mab = MAB(dim, heads)

    def forward(self, x):
        return self.mab(self.seeds.expand(x.shape[0], -1, -1), x)


class SetTransformer(nn.Module):
    def __init__(self, d_in, dim=32, heads=4, inducing=8, out=1):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.isab1 = ISAB(dim, heads, inducing)
        self.isab2 = ISAB(dim, heads, inducing)
        self.pma = PMA(dim, heads)
        self.head = nn.Linear(dim, out)

    def forward(self, x):
        z = self.pma(self.isab2(self.isab1(self.embed(x))))[:, 0]
        out = self.head(z)
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    def logits(self):
        return {
            "isab1.mab1": self.isab1.mab1.max_logit,
            "isab1.mab2": self.isab1.mab2.max_logit,
            "isab2.mab1": self.isab2.mab1.max_logit,
            "isab2.mab2": self.isab2.mab2.max_logit,
            "pma.mab": self.pma.mab.max_logit,
        }


def _trails(gen, batch, points=24):
    """Meteor trail end-points on the sky: the target is the trail farthest from the centre."""
    while True:
        x = torch.randn(batch, points, 3, generator=gen)
        y = x.norm(dim=-1).max(dim=1).values - 2.0
        yield x, y


ST_LR = 3e-2

# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="meteor_radiant_trail_isab_pma_set_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("isab1.mab1", "isab1.mab2", "pma.mab"),
    diverges=None,
    heldout=True,
    note="Meteor-radiant set transformer over trail end-points (two induced set attention blocks "
    "and a pooling-by-multihead-attention readout, MSE on the farthest trail's distance, AdamW). "
    "The config copied from a tiny-set experiment sets a fixed lr 3e-2 (for 3e-4) with no warm-up and the "
    "blocks have no QK normalisation: the query and key weights grow and the attention logits "
    "q.k/sqrt(d) grow many times over, the attention going to one point.",
)
def h442_meteor_radiant_set_transformer(ctx) -> None:
    gen = seeded(4421)
    model = SetTransformer(3)
    opt = torch.optim.AdamW(model.parameters(), lr=ST_LR, weight_decay=0.0)
    batches = _trails(gen, 32)
    start = {}
    trace = []

    def after(step):
        lg = model.logits()
        if step == 0:
            start.update(lg)
        trace.append(max(lg.values()))

    _loop(ctx, model, opt, batches, 300, F.mse_loss, after=after)
    end = model.logits()
    growth = max(end[k] / max(start[k], 1e-6) for k in end)
    ctx.check("some attention block's max logit grows over 10x", growth > 10)
    ctx.check("max logit over 8 at the end", max(end.values()) > 8)
    ctx.check("logit still rising in the second half", _mean(trace[-20:]) > _mean(trace[140:160]))
    ctx.check("loss finite", _finite(ctx.losses))


GLORY_ONSET = 80


@scenario(
    family="glory_hole_reheat_pressure_fp16_relu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=GLORY_ONSET,
    heldout=True,
    onset=GLORY_ONSET,
    note="Glassblower's glory-hole reheat-time regressor (ReLU MLP, MSE, AdamW, fp16 autocast with "
    "a GradScaler). The burner-pressure channel is fed unstandardised in kPa; at step 80 a "
    "firmware update switches the gauge to Pa (1000x) and nothing rescales it: fc1's output "
    "passes fp16's 65504 under autocast while the same batch is finite in float32, and the loss "
    "goes non-finite.",
)
def h442_glory_hole_pressure_in_pa(ctx) -> None:
    gen = seeded(4422)
    model = _Net(8, 64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    base = _readings(gen, 64, 8, seed=422)
    seen = {}

    def gauge():
        step = 0
        while True:
            x, y = next(base)
            x = x.clone()
            kpa = 250.0 + 20.0 * x[:, 0]  # burner pressure, never standardised
            x[:, 0] = kpa * (1000.0 if step >= GLORY_ONSET else 1.0)
            step += 1
            seen["x"] = x
            yield x, y

    _loop(ctx, model, opt, gauge(), 150, F.mse_loss, scaler=scaler, amp=True)
    bad = _first_bad(ctx.losses)
    ctx.check("loss non-finite at the onset", bad == GLORY_ONSET)
    ctx.check("trained before the onset", _mean(ctx.losses[60:80]) < _mean(ctx.losses[:10]))
    with torch.no_grad():
        out = model(seen["x"])
        pre = model.fc1(seen["x"])
    ctx.check("the failing batch is finite in float32", bool(torch.isfinite(out).all()))
    ctx.check("fc1's float32 output passes 65504", float(pre.abs().max()) > 65504)


@scenario(
    family="bell_rope_sally_catch_two_group_silu_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Bell-rope sally catch-height regressor (SiLU MLP, Huber, Adam with two param groups "
    "under LambdaLR). The trunk group's warm-up lambda is written `lambda s: s // 300` (integer "
    "division) for `min(1, s / 300)`: its lr factor is 0 for the whole 240-step run, so fc1 never "
    "moves while fc2 and the head train.",
)
def h442_bell_rope_integer_warmup(ctx) -> None:
    gen = seeded(4423)
    model = _Net(10, 48, 1, act=nn.SiLU)
    w0 = model.fc1.weight.detach().clone()
    h0 = model.fc2.weight.detach().clone()
    opt = torch.optim.Adam(
        [
            {"params": model.fc1.parameters(), "lr": 2e-3},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 2e-3},
        ]
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, [lambda s: s // 300, lambda s: min(1.0, (s + 1) / 30)]
    )
    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=423), 240, F.huber_loss, sched=sched)
    ctx.check("fc1 moved under 1e-6 of its norm", _rel_change(w0, model.fc1.weight) < 1e-6)
    ctx.check("fc2 moved over 5% of its norm", _rel_change(h0, model.fc2.weight) > 0.05)
    ctx.check("loss finite and fell", _fell(ctx.losses, ratio=0.95))


CURL_ONSET = 60


@scenario(
    family="curling_stone_glide_distance_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=CURL_ONSET,
    note="Curling-stone glide-distance regressor (tanh MLP, MSE, plain SGD lr 0.05 under StepLR). "
    "The StepLR gamma is typed 10 for 0.1: at step 60 the lr becomes 0.5 (then 5 at 120), past "
    "2/sharpness of the loss surface; the loss oscillates and blows up.",
)
def h442_curling_steplr_gamma_typo(ctx) -> None:
    gen = seeded(4424)
    model = _Net(6, 32, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=CURL_ONSET, gamma=10.0)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(7), 256, 6, seed=424))
    sharp = {}

    def sharpness():
        params = [p for p in model.parameters()]
        loss = F.mse_loss(model(probe_x), probe_y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(20):
            n = torch.sqrt(sum((u * u).sum() for u in v))
            v = [u / n for u in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
            v = [h.detach() for h in hv]
        return lam

    def before(step):
        if step in (CURL_ONSET - 1, CURL_ONSET):
            sharp[step] = sharpness()

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, seed=424),
        200,
        F.mse_loss,
        sched=sched,
        before=before,
    )
    ls = ctx.losses
    lam = sharp.get(CURL_ONSET - 1, float("nan"))
    ctx.check("lr 0.05 below 2/sharpness before the onset", 0.05 < 2 / lam)
    ctx.check("lr 0.5 past 2/sharpness at the onset", 0.5 > 2 / sharp.get(CURL_ONSET, float("inf")))
    ctx.check("trained before the onset", _mean(ls[50:60]) < 0.8 * _mean(ls[:10]))
    ctx.check(
        "loss blows up after the onset",
        _first_bad(ls) is not None or max(ls[CURL_ONSET:]) > 100 * _mean(ls[50:60]),
    )


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, std):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = F.relu(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="stalactite_drip_cadence_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Stalactite drip-cadence regressor (10-layer ReLU MLP, width 32, MSE, SGD Nesterov lr 1e-4, clipping at 5). The "
    "init helper uses a fixed std 0.45 for every layer (copied from a width-8 prototype) for "
    "sqrt(2/fan_in) = 0.25: each layer multiplies the signal by about 1.8, and the gradients grow back through "
    "depth, dL/dz at layers.0 hundreds of times that at layers.9; clipping keeps the run finite but the loss stays far above a correctly initialised run's.",
)
def h442_stalactite_fixed_std_init(ctx) -> None:
    gen = seeded(4425)
    model = _Deep(8, 32, 10, std=0.45)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    first = {}

    def depth_ratio(net, x, y):
        zs = []
        h = x
        for lin in net.layers:
            z = lin(h)
            z.retain_grad()
            zs.append(z)
            h = F.relu(z)
        F.mse_loss(net.head(h).squeeze(-1), y).backward()
        ratio = float(zs[0].grad.norm() / zs[-1].grad.norm().clamp_min(1e-30))
        net.zero_grad(set_to_none=True)
        return ratio

    x, y = next(_readings(torch.Generator().manual_seed(3), 64, 8, seed=425))
    first = depth_ratio(model, x, y)
    ref_ratio = depth_ratio(_Deep(8, 32, 10, std=math.sqrt(2 / 32)), x, y)
    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=425), 120, F.mse_loss, clip=5.0)
    ls = ctx.losses
    ctx.check("dL/dz at layers.0 over 100x at layers.9 at step 0", first > 100)
    ctx.check("under 10x with the sqrt(2/fan_in) init", ref_ratio < 10)
    gen = seeded(4425)
    ref = _Deep(8, 32, 10, std=math.sqrt(2 / 32))
    ref_opt = torch.optim.SGD(ref.parameters(), lr=1e-4, momentum=0.9, nesterov=True)
    ref_ls = _loop(
        None, ref, ref_opt, _readings(gen, 64, 8, seed=425), 120, F.mse_loss, clip=5.0, attach=False
    )
    gn = ctx.grad_norms
    ctx.check("gradient norm over 1000 for the first 20 steps", min(gn[:20]) > 1000)
    ctx.check("loss finite", _finite(ls))
    ctx.check(
        "final loss over 10x the sqrt(2/fan_in) run's", _mean(ls[-10:]) > 10 * _mean(ref_ls[-10:])
    )


SHEEP_ONSET = 110


@scenario(
    family="sheepdog_trial_outrun_gps_silu_huber_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SHEEP_ONSET,
    note="Sheepdog-trial outrun-time regressor from collar-GPS features (SiLU MLP, Huber, SGD "
    "momentum 0.9, clipping at 1). One shard, read at step 110, comes from a collar whose export "
    "writes distances in metres for kilometres (1000x on every feature): one corrupted batch, the "
    "loss and the gradient jump, clipping bounds the update and the run recovers.",
)
def h442_sheepdog_shard_in_metres(ctx) -> None:
    gen = seeded(4426)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == SHEEP_ONSET else (x, y)

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, seed=426), 220, F.huber_loss, alter=alter, clip=1.0
    )
    ls, gn = ctx.losses, ctx.grad_norms
    k = SHEEP_ONSET
    ctx.check(
        "loss at the onset over 100x the median before", ls[k] > 100 * _median(ls[k - 30 : k])
    )
    ctx.check(
        "gradient at the onset over 20x the median before", gn[k] > 20 * _median(gn[k - 30 : k])
    )
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[k - 20 : k]))
    ctx.check("trained", _fell(ls))


ROPE_ONSET = 95


class _Spread(nn.Module):
    def forward(self, front, back):
        return torch.sqrt(front - back)  # no clamp: front tension assumed >= back


class _TwistNet(nn.Module):
    """Tension features pass through sqrt(front - back) before a GELU MLP."""

    def __init__(self, d_in):
        super().__init__()
        self.spread = _Spread()
        self.fc1 = nn.Linear(d_in, 48)
        self.act = nn.GELU()
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        spread = self.spread(x[:, :1], x[:, 1:2])
        h = self.act(self.fc1(torch.cat([spread, x[:, 2:], x[:, :1]], 1)))
        return self.head(h).squeeze(-1)


@scenario(
    family="ropewalk_strand_twist_sqrt_spread_gelu_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("spread",),
    diverges=ROPE_ONSET,
    heldout=True,
    onset=ROPE_ONSET,
    note="Ropewalk strand-twist regressor (GELU MLP over sqrt(front tension - back tension) and "
    "the other gauges, MSE, NAdam). The square root has no clamp: the code assumes the front "
    "tension is never below the back one; at step 95 a batch with the rope slack at the "
    "forming board has it below, the spread module's sqrt of a negative gives NaN, which enters fc1 and the loss is "
    "NaN.",
)
def h442_ropewalk_sqrt_no_clamp(ctx) -> None:
    gen = seeded(4427)
    model = _TwistNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    base = _readings(gen, 64, 8, seed=427)
    seen = {}

    def gauges():
        step = 0
        while True:
            x, y = next(base)
            x = x.clone()
            back = 1.0 + 0.2 * torch.rand(len(x), generator=gen)
            front = back + 0.5 + 0.3 * x[:, 0].abs()
            if step == ROPE_ONSET:
                front[:3] = back[:3] - 0.2  # slack rope at the forming board
                seen["x"] = torch.cat([front[:, None], back[:, None], x[:, 2:]], 1)
            x = torch.cat([front[:, None], back[:, None], x[:, 2:]], 1)
            step += 1
            yield x, y

    _loop(ctx, model, opt, gauges(), 160, F.mse_loss)
    ls = ctx.losses
    ctx.check("loss NaN at the onset", _first_bad(ls) == ROPE_ONSET and math.isnan(ls[ROPE_ONSET]))
    ctx.check("trained before the onset", _mean(ls[85:95]) < _mean(ls[:10]))
    x = seen.get("x")
    ctx.check(
        "the batch's tension spread is negative somewhere",
        x is not None and bool((x[:, 0] - x[:, 1] < 0).any()),
    )
    ctx.check("the batch's inputs are finite", x is not None and bool(torch.isfinite(x).all()))


HIVE_BIAS = -1.0


@scenario(
    family="apiary_hive_scale_nectar_flow_relu_regressor",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("act1", "act2"),
    diverges=None,
    heldout=True,
    note="Apiary hive-scale nectar-flow regressor (ReLU MLP, MSE, Adamax). The init helper was "
    "meant to give ReLU layers a small positive bias (+0.1) and is typed -1.0: most of fc1's and "
    "fc2's ReLUs are never positive, get no gradient and never come back; the loss stalls far "
    "above a correctly initialised run's.",
)
def h442_hive_negative_bias_init(ctx) -> None:
    def build(bias):
        torch.manual_seed(4428)
        net = _Net(10, 64, 1)
        for lin in (net.fc1, net.fc2):
            nn.init.constant_(lin.bias, bias)
        return net

    gen = seeded(4428)
    ref = build(0.1)
    ref_ls = _loop(
        None,
        ref,
        torch.optim.Adamax(ref.parameters(), lr=2e-3),
        _readings(gen, 64, 10, seed=428),
        200,
        F.mse_loss,
        attach=False,
    )
    gen = seeded(4428)
    model = build(HIVE_BIAS)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    _loop(ctx, model, opt, _readings(gen, 64, 10, seed=428), 200, F.mse_loss)
    x, _ = next(_readings(torch.Generator().manual_seed(5), 512, 10, seed=428))
    with torch.no_grad():
        h2 = model.features(x)
        r2 = ref.features(x)
    dead = float((h2 <= 0).all(0).float().mean())
    dead_ref = float((r2 <= 0).all(0).float().mean())
    ctx.check("over 80% of fc2's ReLUs dead at the end", dead > 0.8)
    ctx.check("under 20% dead with the +0.1 bias", dead_ref < 0.2)
    ctx.check(
        "loss over 2x the reference's at the end", _mean(ctx.losses[-20:]) > 2 * _mean(ref_ls[-20:])
    )
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="sliotar_stitching_grade_temperature_gelu_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sliotar (hurling ball) stitching-grade classifier (GELU MLP, cross-entropy on logits "
    "divided by a temperature, RMSprop). The temperature is typed 0.002 for 2.0: the logits "
    "are multiplied by 500 and the float32 softmax gives most rows' target probability exactly "
    "1.0.",
)
def h442_sliotar_temperature_typo(ctx) -> None:
    gen = seeded(4429)
    model = _Net(12, 48, 6, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    temp = 0.002  # for 2.0

    def loss_fn(out, y):
        return F.cross_entropy(out / temp, y)

    batches = _grades(gen, 64, 12, 6, seed=429, spread=1.0)
    _loop(ctx, model, opt, batches, 150, loss_fn, classifier=True)
    x, y = next(_grades(torch.Generator().manual_seed(9), 512, 12, 6, seed=429, spread=1.0))
    with torch.no_grad():
        out = model(x)
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(out / temp, y) > 0.5,
    )
    ctx.check("under 5% at temperature 2.0", collapsed_fraction(out / 2.0, y) < 0.05)
    ctx.check("loss finite", _finite(ctx.losses))


TIDE_DECAY = 0.99


@scenario(
    family="tide_pole_datum_settling_adagrad_silu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Tide-pole water-level regressor (SiLU MLP, MSE, Adagrad). The targets are divided by a "
    "running scale of the pole readings whose update line was lost in a refactor, leaving only "
    "its 0.99 decay: the targets drift upward 1% a step while Adagrad's accumulated squared "
    "gradients shrink its steps; the model falls behind and the loss climbs slowly with no "
    "spike.",
)
def h442_tide_pole_datum_drift(ctx) -> None:
    gen = seeded(4430)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    base = _readings(gen, 64, 8, seed=430)

    def drifting():
        step = 0
        while True:
            x, y = next(base)
            yield x, y / TIDE_DECAY**step  # the running scale shrinks 1% a step
            step += 1

    _loop(ctx, model, opt, drifting(), 300, F.mse_loss)
    ls = ctx.losses
    low = min(ls)
    ctx.check("final loss over 3x its lowest", _mean(ls[-20:]) > 3 * low)
    ctx.check(
        "climbing through the second half",
        _mean(ls[-30:]) > _mean(ls[200:230]) > _mean(ls[150:180]),
    )
    ctx.check(
        "no single step over 5x the previous",
        all(b < 5 * a for a, b in zip(ls[50:], ls[51:], strict=False)),
    )
    ctx.check("loss finite", _finite(ls))


# -- healthy controls ------------------------------------------------------------------------------


class _PreNormBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _OvertoneNet(nn.Module):
    def __init__(self, d_in=4, dim=32, heads=4, layers=2, length=16, classes=5):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(1, length, dim))
        self.blocks = nn.ModuleList(_PreNormBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x) + self.pos
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.ln_f(h).mean(1))


def _overtones(gen, batch, length=16, classes=5):
    """Frames of (sin, cos, amplitude, a noisy pitch-tracker reading) of an overtone whose harmonic
    number is the class."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        w = 0.25 * (y[:, None].float() + 1)
        amp = 0.5 + torch.rand(batch, 1, generator=gen)
        x = torch.stack(
            [
                torch.sin(w * t + phase),
                torch.cos(w * t + phase),
                amp.expand(-1, length),
                w.expand(-1, length) + 0.3 * torch.randn(batch, length, generator=gen),
            ],
            -1,
        )
        yield x + 0.2 * torch.randn(x.shape, generator=gen), y


@scenario(
    family="khoomei_overtone_harmonic_prenorm_transformer",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Khoomei (throat-singing) overtone harmonic classifier: a hand-written pre-norm "
    "transformer (LayerNorm before attention and MLP, mean pool), cross-entropy with label "
    "smoothing 0.1, AdamW with weight decay only on matrices (two param groups) under OneCycleLR, "
    "clipping at 1. Control.",
)
def h442_khoomei_prenorm_onecycle(ctx) -> None:
    gen = seeded(4431)
    model = _OvertoneNet()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx, model, opt, _overtones(gen, 32), 200, loss_fn, classifier=True, clip=1.0, sched=sched
    )
    x, y = next(_overtones(torch.Generator().manual_seed(11), 256))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("held-out accuracy over 60%", acc > 0.6)


class _ConeNet(nn.Module):
    def __init__(self, channels=3, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


def _cone_traces(gen, batch, classes=4, length=32, flip=0.1):
    """Kiln thermocouple traces: the firing curve's ramp rate is the cone class; 10% noisy labels."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = 0.3 + 1.0 * y[:, None].float()
        curve = torch.tanh(rate * 3 * t)
        x = torch.stack(
            [curve, torch.gradient(curve, dim=1)[0] * length / 4, torch.ones_like(curve) * 0.1], 1
        )
        x = x + 0.15 * torch.randn(x.shape, generator=gen)
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, torch.randint(0, classes, (batch,), generator=gen), y)


@scenario(
    family="pottery_kiln_pyrometric_cone_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Pottery kiln pyrometric-cone classifier from thermocouple traces (ReLU Conv1d, "
    "cross-entropy, SGD Nesterov momentum 0.9 under ReduceLROnPlateau on the running loss, 10% "
    "noisy labels). Control.",
)
def h442_kiln_cone_nesterov_plateau(ctx) -> None:
    gen = seeded(4432)
    model = _ConeNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)

    def plateau():
        recent = ctx.losses[-10:] or [0.0]
        return _mean(recent)

    _loop(
        ctx,
        model,
        opt,
        _cone_traces(gen, 64),
        200,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        plateau=plateau,
    )
    x, y = next(_cone_traces(torch.Generator().manual_seed(12), 256, flip=0.0))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("clean accuracy over 70%", acc > 0.7)


class _TiedAE(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _drones(gen, batch, d_in=16, seed=433):
    """Didgeridoo drone spectra: a few harmonic profiles mixed, with breath noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, d_in, generator=g)
    while True:
        mix = torch.randn(batch, 4, generator=gen)
        x = 0.5 * mix @ basis + 0.1 * torch.randn(batch, d_in, generator=gen)
        yield x, x


@scenario(
    family="didgeridoo_drone_spectrum_tied_tanh_autoencoder",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Didgeridoo drone-spectrum autoencoder with tied weights (the decoder uses the encoder's "
    "weight transposed, tanh code), MSE, RAdam, gradient accumulation over 2, clipping at 1. "
    "Control.",
)
def h442_didgeridoo_tied_radam(ctx) -> None:
    gen = seeded(4433)
    model = _TiedAE()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    _loop(ctx, model, opt, _drones(gen, 32), 200, F.mse_loss, accumulate=2, clip=1.0)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
