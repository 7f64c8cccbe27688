"""Held-out set 221 (``h221_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a cycle-ball header classifier whose accumulation path
multiplies instead of divides for the one step after a resume, a wife-carrying race-time
regressor whose dropout is set to 0.8 for one step by a config reload, a biwa plectrum-stroke
classifier with ``nn.MultiheadAttention`` fed an empty take (every key masked), a pyrography
burn-depth regressor whose first-layer param group got 3e-8, a Damascus billet layer-count deep
ReLU net initialised with the He variance's 2 outside the root, an ice-harvest block-thickness
regressor fed one shard in millimetres, a singing-bowl rim-tone ReLU classifier at a learning
rate scaled twice, a fallstreak-hole spread regressor whose warm-up peak was typed 10x too high,
an autoharp chord-bar classifier dividing its logits by a distillation temperature, a
millefiori cane-motif CNN with its z-loss sign flipped, and three controls (a slit-drum strike
conv1d classifier with gradient clipping by value and OneCycleLR, a river-ferry crossing-time
Gaussian-NLL net under fp16 autocast with a GradScaler and ReduceLROnPlateau, a dobro
slide-pitch GRU regressor with accumulation, warm-up + cosine and Huber).

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
    scale_loss=None,
    after=None,
    clip=None,
    clip_value=None,
    sched=None,
    scaler=None,
    accumulate=1,
    forward=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; stops after
    logging a NaN loss."""
    forward = forward or (lambda m, x: m(x))
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
                out = forward(model, x)
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
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if clip_value is not None:
            torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
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


def _readings(gen, batch, d_in, seed, noise=0.05, offset=0.0, scale=1.0):
    """Standardised readings and a smooth nonlinear target (offset + scale * about unit)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        y = y + noise * torch.randn(batch, generator=gen)
        yield x, offset + scale * y


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


# -- cycle-ball: the accumulation path multiplies instead of divides after a resume --------------


@scenario(
    family="cycle_ball_header_zone_gelu_classifier",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) sorting a cycle-ball header shot into 4 goal zones from 10 standardised readings (wheel speed, front-wheel angle, rider lean, ...), cross-entropy, SGD with momentum 0.9 at 0.02, gradients accumulated over 8 micro-batches of 16. The run is resumed from a checkpoint at step 100 and the resume path restores the accumulation counter inverted: for that one step every micro-batch loss is multiplied by 8 instead of divided, a single gradient 64x its usual size from ordinary data. The loss moves for a few steps as the momentum carries the kick, then settles; finite.",
)
def h221_cycle_ball_accum_resume(ctx: Context) -> None:
    gen = seeded(22101)
    model = Stack(10, 48, 4, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def scale_loss(step, total):
        return total * 64 if step == 100 else total  # (loss * 8) where (loss / 8) was meant

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 16, 10, 4, seed=1, noise=1.0),
        220,
        F.cross_entropy,
        classifier=True,
        scale_loss=scale_loss,
        accumulate=8,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 100 over 30x the median of steps 80-99",
        gn[100] > 30 * _median(gn[80:100]),
    )
    ctx.check(
        "gradient back under 3x that median in steps 125-160",
        max(gn[125:160]) < 3 * _median(gn[80:100]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:100], ratio=0.6))
    ctx.check(
        "loss settles within 1.5x its pre-onset level (steps 180-220)",
        _mean(ls[180:]) < 1.5 * _mean(ls[80:100]),
    )
    ctx.check("finite", _finite(ls))


# -- wife-carrying: a config reload sets dropout to 0.8 for one step ------------------------------


class CarryNet(nn.Module):
    def __init__(self, d_in=8, hidden=64, p=0.1):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.drop1(self.act1(self.fc1(x)))
        return self.head(self.drop2(self.act2(self.fc2(h)))).squeeze(-1)


@scenario(
    family="wife_carrying_race_time_dropout_regressor",
    optimizer="SGD (Nesterov)",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="A ReLU MLP with dropout 0.1 (fc1, act1, drop1, fc2, act2, drop2, head) predicting a wife-carrying race time (standardised) from 8 standardised readings (carrier mass, partner mass, carry style, water-hazard depth, ...), MSE, SGD Nesterov at 0.02. A config reload at step 150 writes dropout 0.8 (the keep probability of another config) into both dropout modules and the next reload at step 151 restores 0.1: the one step runs with four units in five dropped and the survivors scaled 5x, and the loss jumps over 3x; the next step is back at 0.1 and the loss returns to its level; finite.",
)
def h221_wife_carrying_dropout_reload(ctx: Context) -> None:
    gen = seeded(22102)
    model = CarryNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def before(step):
        p = 0.8 if step == 150 else 0.1
        model.drop1.p = p
        model.drop2.p = p

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=2), 240, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check(
        "loss at step 150 over 3x the mean of steps 140-149", ls[150] > 3 * _mean(ls[140:150])
    )
    ctx.check(
        "loss back within 1.4x its pre-spike level (steps 155-185)",
        _mean(ls[155:185]) < 1.4 * _mean(ls[130:150]),
    )
    ctx.check("loss fell before the spike", _fell(ls[:150], ratio=0.6))
    ctx.check("finite", _finite(ls))


# -- biwa: nn.MultiheadAttention fed an empty take, every key masked -------------------------------


class StrokeNet(nn.Module):
    def __init__(self, feat=6, dim=32, heads=4, classes=5):
        super().__init__()
        self.inp = nn.Linear(feat, dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.attended = None

    def forward(self, x):
        frames, lengths = x
        pad = torch.arange(frames.shape[1])[None, :] >= lengths[:, None]
        h = self.inp(frames)
        # need_weights left at its default: the attention maps are logged elsewhere
        a, _ = self.attn(h, h, h, key_padding_mask=pad)
        self.attended = a.detach()
        h = self.norm(h + a)
        keep = (~pad).float()[..., None]
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(pooled)


def _strokes(gen, batch, length=12, seed=3):
    """Six readings per frame of a biwa plectrum stroke (bachi angle, string, force, ...) over up
    to 12 frames, padded, and the stroke technique (5 kinds)."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(5, 6, generator=g)
    drift = torch.randn(5, 6, generator=g)
    while True:
        y = torch.randint(0, 5, (batch,), generator=gen)
        t = torch.linspace(-1, 1, length)[None, :, None]
        frames = protos[y][:, None] + drift[y][:, None] * t
        frames = frames + 0.8 * torch.randn(batch, length, 6, generator=gen)
        lengths = torch.randint(4, length + 1, (batch,), generator=gen)
        yield (frames, lengths), y


@scenario(
    family="biwa_plectrum_stroke_mha_classifier",
    optimizer="AdamW",
    cause="nonfinite",
    where=("attn",),
    diverges=90,
    onset=90,
    heldout=True,
    note="A one-layer attention classifier (inp, attn = nn.MultiheadAttention with a key_padding_mask, norm, head, masked mean pooling) naming a biwa plectrum stroke technique (5 kinds) from padded frames of 6 readings, AdamW at 3e-3, cross-entropy with label smoothing 0.1. The segmenter writes an empty take (length 0) into the batch at step 90: every key of that row is masked, and with need_weights left at its default the attention's softmax over a row of -inf gives 0/0 = NaN; the NaN goes through the pooling into the loss, which is NaN at step 90.",
)
def h221_biwa_mha_empty_take(ctx: Context) -> None:
    gen = seeded(22103)
    model = StrokeNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    seen = {}

    def alter(step, x, y):
        frames, lengths = x
        if step == 90:
            lengths = lengths.clone()
            lengths[7] = 0  # an empty take from the segmenter
        return (frames, lengths), y

    def watch(step, out, x, y):
        a = model.attended
        seen[step] = (
            bool(torch.isfinite(a).all()),
            bool((~torch.isfinite(a[x[1] == 0])).all()) if (x[1] == 0).any() else False,
            bool(torch.isfinite(a[x[1] > 0]).all()),
        )

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx, model, opt, _strokes(gen, 32), 160, loss_fn, classifier=True, alter=alter, watch=watch
    )
    ls = ctx.losses
    ctx.check("loss first non-finite at step 90", _first_bad(ls) == 90)
    ctx.check("attention output finite at every step before", all(seen[s][0] for s in range(90)))
    ctx.check("attention output NaN exactly on the empty take at step 90", seen[90][1])
    ctx.check("attention output finite on the other rows at step 90", seen[90][2])
    ctx.check("loss fell before it", _fell(ls[:90], ratio=0.8))


# -- pyrography: the first layer's param group got 3e-8 -------------------------------------------


@scenario(
    family="pyrography_burn_depth_huber_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting a pyrography burn depth (standardised) from 9 standardised readings (tip temperature, dwell time, wood density, grain angle, ...), Huber loss, Adam with two param groups: fc1 (the reading embedding, given its own rate) at 3e-8 where 3e-4 was meant, everything else at 3e-3. The first layer's updates are about 1e-6 of its weights each step and it stays where it was initialised for the whole run while the rest trains; the loss falls but plateaus; finite.",
)
def h221_pyrography_group_lr_typo(ctx: Context) -> None:
    gen = seeded(22104)
    model = Stack(9, 64, 1, act=nn.SiLU)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adam(
        [{"params": model.fc1.parameters(), "lr": 3e-8}, {"params": rest, "lr": 3e-3}]
    )
    w0 = model.fc1.weight.detach().clone()
    prev, ratios = {}, {"fc1": [], "fc2": []}

    def before(step):
        prev["fc1"] = model.fc1.weight.detach().clone()
        prev["fc2"] = model.fc2.weight.detach().clone()

    def after(step):
        for name in ("fc1", "fc2"):
            w = getattr(model, name).weight.detach()
            ratios[name].append(float((w - prev[name]).norm() / w.norm()))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 9, seed=4),
        200,
        F.huber_loss,
        before=before,
        after=after,
    )
    ls = ctx.losses
    drift = float((model.fc1.weight.detach() - w0).norm() / w0.norm())
    ctx.check("fc1 update/weight ratio under 1e-5 every step", max(ratios["fc1"]) < 1e-5)
    ctx.check("fc2 update/weight ratio over 1e-3 on average", _mean(ratios["fc2"]) > 1e-3)
    ctx.check("fc1 moved under 1e-4 of its norm over the run", drift < 1e-4)
    ctx.check("loss fell (the rest trains)", _fell(ls, ratio=0.8))
    ctx.check("finite", _finite(ls))


# -- Damascus billet: a deep ReLU stack initialised with the He variance's 2 outside the root -----


class BilletNet(nn.Module):
    def __init__(self, d_in=8, hidden=64, depth=12):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                # meant std = sqrt(2 / fan_in); typed 2 / sqrt(fan_in)
                nn.init.normal_(m.weight, std=2.0 / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)


@scenario(
    family="damascus_billet_layer_count_deep_relu_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("body.0", "body.2"),
    diverges="auto",
    heldout=True,
    note="A 12-layer ReLU MLP (body.0 ... body.22 Linear, head) predicting a Damascus billet's visible layer count (standardised) from 8 standardised forging readings (fold count, welding heat, hammer blows, ...), MSE, plain SGD at 1e-4. The hand-written init draws every weight with std 2/sqrt(fan_in) where sqrt(2/fan_in) was meant: each ReLU layer doubles the variance, so activations grow about 64x through depth and the gradients grow the same way back towards the input: the gradient at the first ReLU's output is over 20x that at the last (under 4x with the meant init), the output starts over 10x the target scale, the first step overshoots and the loss is inf by step 2.",
)
def h221_damascus_init_outside_root(ctx: Context) -> None:
    gen = seeded(22105)
    model = BilletNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    batches = _readings(gen, 64, 8, seed=5)

    def depth_ratio(net):
        """Gradient norm at the first ReLU's output over that at the last, on one batch."""
        x, y = next(_readings(torch.Generator().manual_seed(0), 64, 8, seed=5))
        h, acts = x, []
        for layer in net.body:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                h.retain_grad()
                acts.append(h)
        F.mse_loss(net.head(h).squeeze(-1), y).backward()
        ratio = float(acts[0].grad.norm() / acts[-1].grad.norm())
        net.zero_grad(set_to_none=True)
        return ratio

    grown = depth_ratio(model)
    reference = BilletNet()
    for m in reference.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / m.in_features))
    meant = depth_ratio(reference)
    out0 = {}

    def watch(step, out, x, y):
        out0.setdefault("mean", float(out.detach().abs().mean()))

    _train(ctx, model, opt, batches, 120, F.mse_loss, watch=watch)
    ls = ctx.losses
    peak = max((v if math.isfinite(v) else math.inf) for v in ls)
    ctx.check("gradient grows over 20x from the last ReLU back to the first at init", grown > 20)
    ctx.check("with the meant init it grows under 4x", meant < 4)
    ctx.check("output at init over 10x the target scale", out0["mean"] > 10.0)
    ctx.check("loss blows up (over 1e6 or non-finite)", peak > 1e6)


# -- ice harvest: one shard with the block thickness in millimetres -------------------------------


@scenario(
    family="ice_harvest_block_thickness_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting the thickness in metres of lake-ice blocks cut by a harvesting crew (about 0.45 m) from 7 standardised readings (freezing degree-days, snow cover, wind, water depth, ...), MSE, ASGD at 0.01. At step 120 the loader serves one shard from a second crew whose logger wrote the thickness in millimetres: one batch with targets 1000x their scale, the loss and gradient jump by orders of magnitude at that step; the weights are kicked far off and the loss comes back down only slowly (still well above its pre-shard level at the end of the run); finite.",
)
def h221_ice_harvest_mm_shard(ctx: Context) -> None:
    gen = seeded(22106)
    model = Stack(7, 64, 1)
    opt = torch.optim.ASGD(model.parameters(), lr=0.01, t0=1e9)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 120 else (x, y)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 7, seed=6, offset=0.45, scale=0.08),
        260,
        F.mse_loss,
        alter=alter,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at step 120 over 1e4x the mean of steps 100-119", ls[120] > 1e4 * _mean(ls[100:120])
    )
    ctx.check(
        "gradient at step 120 over 100x the median before", gn[120] > 100 * _median(gn[60:120])
    )
    ctx.check("loss fell before the shard", _fell(ls[:120], ratio=0.5))
    ctx.check(
        "loss coming back down after it (last 20 under 10% of steps 121-130)",
        _mean(ls[-20:]) < 0.1 * _mean(ls[121:131]),
    )
    ctx.check("finite", _finite(ls))


# -- singing bowl: a learning rate scaled twice kills the ReLUs -----------------------------------


@scenario(
    family="singing_bowl_rim_tone_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming a singing bowl's size class (6 kinds) from 12 standardised rim-tone readings (fundamental, overtone ratios, decay, beating, ...), cross-entropy, NAdam. The linear scaling rule was applied twice (once in the config and once in the launcher) and the rate is 0.1 for the 2e-3 meant: the large early steps push most of the second layer's units negative on every input, those ReLUs die and never come back (three in four dead at the end against under one in five at the meant rate), and the loss stays several times what the same net reaches at the meant rate; finite.",
)
def h221_singing_bowl_lr_scaled_twice(ctx: Context) -> None:
    gen = seeded(22107)
    model = Stack(12, 64, 6)
    opt = torch.optim.NAdam(model.parameters(), lr=0.1)  # 2e-3 meant
    probe = next(_kinds(torch.Generator().manual_seed(7), 512, 12, 6, seed=7))[0]
    dead = {}

    def measure(step):
        with torch.no_grad():
            h1 = model.act1(model.fc1(probe))
            h2 = model.act2(model.fc2(h1))
        dead[step] = (dead_fraction(h1), dead_fraction(h2))

    measure(-1)

    def after(step):
        if step % 20 == 19:
            measure(step)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 6, seed=7, noise=0.6),
        240,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ls = ctx.losses
    start, end = dead[-1], dead[239]
    ctx.check("under 10% of units dead at init (both layers)", max(start) < 0.1)
    ctx.check("over 60% of the units of a hidden layer dead at the end", max(end) > 0.6)
    ctx.check(
        "dead fraction never falls back after step 60",
        all(max(dead[s]) >= max(dead[59]) - 0.05 for s in dead if s >= 59),
    )
    # the same net, data and seed at the meant rate
    gen = seeded(22107)
    ref = Stack(12, 64, 6)
    ref_opt = torch.optim.NAdam(ref.parameters(), lr=2e-3)
    ref_batches, ref_ls = _kinds(gen, 64, 12, 6, seed=7, noise=0.6), []
    for _ in range(240):
        x, y = next(ref_batches)
        loss = F.cross_entropy(ref(x), y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_ls.append(float(loss.detach()))
    with torch.no_grad():
        ref_dead = dead_fraction(ref.act2(ref.fc2(ref.act1(ref.fc1(probe)))))
    ctx.check("under 20% dead at the meant rate", ref_dead < 0.2)
    ctx.check(
        "loss over 2x the meant rate's at the end (last 40 steps)",
        _mean(ls[-40:]) > 2 * _mean(ref_ls[-40:]),
    )
    ctx.check("finite", _finite(ls))


# -- fallstreak hole: a warm-up whose peak was typed 10x too high ---------------------------------


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on one batch by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
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


@scenario(
    family="fallstreak_hole_spread_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=35,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) predicting how far a fallstreak hole in an altocumulus deck spreads (standardised) from 8 standardised readings (supercooled-layer temperature, ice-nucleus count, wind shear, ...), MSE, plain SGD with a linear warm-up over 200 steps to a peak typed 2.0 for 0.2. The run is stable while the rate is small; at about step 35 the rate times the loss's sharpness (top Hessian eigenvalue by power iteration on a fixed batch) reaches 2, the run hovers at that edge for a while with the loss bouncing, and as the rate keeps climbing it is taken past it (lr x sharpness over 3 by step 80) and the loss blows up at about step 92.",
)
def h221_fallstreak_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(22108)
    model = Stack(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2.0)  # meant 0.2
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    probe = next(_readings(torch.Generator().manual_seed(8), 256, 8, seed=8))
    edge = {}

    def before(step):
        if step % 5 == 0:
            lr = opt.param_groups[0]["lr"]
            edge[step] = lr * _sharpness(model, F.mse_loss, *probe)

    _train(
        ctx, model, opt, _readings(gen, 64, 8, seed=8), 160, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    crossed = min((s for s, v in edge.items() if v > 2.0), default=None)
    peak = max((v if math.isfinite(v) else math.inf) for v in ls)
    ctx.check(
        "lr x sharpness under 2 for the first 30 steps", all(edge[s] < 2.0 for s in edge if s < 30)
    )
    ctx.check(
        "lr x sharpness passes 2 near the declared onset (30-40)",
        crossed is not None and 30 <= crossed <= 40,
    )
    ctx.check(
        "lr x sharpness over 3 before the loss blows up", any(edge[s] > 3.0 for s in edge if s < 90)
    )
    ctx.check("loss finite and under 0.5 before step 80", _finite(ls[:80]) and max(ls[:80]) < 0.5)
    ctx.check(
        "loss blows up after it (over 100x its minimum or non-finite)", peak > 100 * min(ls[:40])
    )


# -- autoharp: the student's logits divided by the teacher's distillation temperature -------------


@scenario(
    family="autoharp_chord_bar_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming the pressed autoharp chord bar (8 kinds) from 14 standardised string-spectrum readings, cross-entropy, Adagrad at 0.02. A distillation setup was dropped but its temperature stayed in the forward: the student's logits are divided by T = 0.01 before the softmax. The float32 softmax saturates: over the last 50 steps more than four rows in five give their target a probability of exactly 1.0 (the others near 0), the loss sits at about 0 and moves in jumps; finite.",
)
def h221_autoharp_leftover_temperature(ctx: Context) -> None:
    gen = seeded(22109)
    model = Stack(14, 64, 8, act=nn.GELU)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    collapsed = {}

    def forward(m, x):
        return m(x) / 0.01  # the teacher's temperature, left in

    def watch(step, out, x, y):
        collapsed[step] = collapsed_fraction(out.detach(), y)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 8, seed=9, noise=0.5),
        200,
        F.cross_entropy,
        classifier=True,
        forward=forward,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("under 10% of rows collapsed in the first step", collapsed[0] < 0.1)
    ctx.check(
        "over 60% of rows collapsed to exactly 1.0 over the last 50 steps",
        _mean([collapsed[s] for s in range(150, 200)]) > 0.6,
    )
    ctx.check("finite", _finite(ls))


# -- millefiori: a z-loss added with its sign flipped ----------------------------------------------


class CaneNet(nn.Module):
    def __init__(self, classes=6, width=8):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(8 * width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(self.pool(h).flatten(1))


def _canes(gen, batch, classes=6, seed=10):
    """8x8 cross-sections of millefiori glass canes (rosette, star, ring, ...), 6 motifs."""
    g = torch.Generator().manual_seed(seed)
    protos = (torch.rand(classes, 1, 8, 8, generator=g) > 0.5).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + 0.6 * torch.randn(batch, 1, 8, 8, generator=gen)
        yield x, y


@scenario(
    family="millefiori_cane_motif_cnn",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A two-conv CNN (conv1, act1, conv2, act2, pool, head) naming a millefiori cane's motif (6 kinds) from a noisy 8x8 cross-section, cross-entropy, RAdam at 3e-3. The z-loss meant to keep the head's logits small, 1e-3 * logsumexp(logits)**2, was subtracted instead of added: the cheapest way to lower the total is to raise every logit together, and the head's largest logit climbs over 20x through the run and is still climbing at the end, while the cross-entropy itself falls slowly; finite within the run.",
)
def h221_millefiori_zloss_sign(ctx: Context) -> None:
    gen = seeded(22110)
    model = CaneNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    top = {}

    def watch(step, out, x, y):
        top[step] = float(out.detach().abs().max())
        watch.lse = torch.logsumexp(out.float(), -1)

    def scale_loss(step, total):
        return total - 1e-3 * watch.lse.pow(2).mean()  # meant: + 1e-3 * lse ** 2

    _train(
        ctx,
        model,
        opt,
        _canes(gen, 64),
        300,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        scale_loss=scale_loss,
    )
    ls = ctx.losses
    ctx.check("largest logit over 20x its first-step size at the end", top[299] > 20 * top[0])
    ctx.check(
        "largest logit still climbing (last step over 1.3x step 200)", top[299] > 1.3 * top[200]
    )
    ctx.check("cross-entropy fell", _fell(ls, ratio=0.5))


# -- controls -------------------------------------------------------------------------------------


class StrikeNet(nn.Module):
    def __init__(self, classes=4, width=12):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.pool(self.act2(self.conv2(self.act1(self.conv1(x))))).flatten(1))


def _strikes(gen, batch, length=48):
    """A 48-sample envelope of a slit-drum strike and which of 4 tongues was struck (each tongue
    rings at its own pitch and decay)."""
    t = torch.arange(length).float()
    freq = torch.tensor([0.25, 0.45, 0.7, 1.0])
    decay = torch.tensor([0.05, 0.08, 0.12, 0.16])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        sig = torch.sin(freq[y][:, None] * t + phase) * torch.exp(-decay[y][:, None] * t)
        yield (sig + 0.15 * torch.randn(batch, length, generator=gen))[:, None], y


@scenario(
    family="slit_drum_tongue_strike_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A conv1d net (conv1, act1, conv2, act2, pool, head) naming which tongue of a slit drum was struck from a noisy 48-sample envelope, cross-entropy, Adam under OneCycleLR (max 1e-2) with the gradients clipped by value at 0.05 each step; trains normally.",
)
def h221_slit_drum_clip_value(ctx: Context) -> None:
    gen = seeded(22111)
    model = StrikeNet()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _strikes(gen, 32),
        200,
        F.cross_entropy,
        classifier=True,
        clip_value=0.05,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("loss fell over 2x", _fell(ls, ratio=0.5))
    ctx.check("finite", _finite(ls))


class CrossingNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _crossings(gen, batch, seed=12):
    """Nine standardised readings of a river ferry crossing (current, wind, load, river stage,
    ...) and the crossing time (standardised), noisier in high water."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        mu = torch.tanh(x @ w / 3)
        sd = 0.1 + 0.3 * torch.sigmoid(x[:, 3])
        yield x, mu + sd * torch.randn(batch, generator=gen)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="river_ferry_crossing_time_gaussian_nll_net",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head giving a mean and a softplus scale) predicting a river ferry's crossing time (standardised) from 9 standardised readings, Gaussian NLL, AdamW at 2e-3 with ReduceLROnPlateau, fp16 autocast with a default torch.amp.GradScaler; trains normally.",
)
def h221_river_ferry_fp16_nll(ctx: Context) -> None:
    gen = seeded(22112)
    model = CrossingNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu")
    _train(ctx, model, opt, _crossings(gen, 64), 220, _gauss_nll, sched=sched, scaler=scaler)
    ls = ctx.losses
    ctx.check("loss fell by over 0.5 nats", _mean(ls[-20:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite", _finite(ls))
    ctx.check("loss scale stayed above 1", min(ctx.scales) >= 1.0)


class SlideGRU(nn.Module):
    def __init__(self, feat=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(feat, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h, _ = self.gru(x)
        return self.head(h).squeeze(-1)


def _slides(gen, batch, length=24, seed=13):
    """Three standardised readings per frame of a dobro slide (bar position, pressure, pick
    attack) and the pitch offset in semitones per frame, smoothed by the bar's inertia."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        drive = torch.cumsum(x @ w, 1) / torch.arange(1, length + 1).sqrt()
        yield x, torch.tanh(0.6 * drive) + 0.05 * torch.randn(batch, length, generator=gen)


@scenario(
    family="dobro_slide_pitch_gru_regressor",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="A GRU (gru, head) predicting a dobro's pitch offset frame by frame from 3 standardised slide readings, Huber loss, Adamax at 4e-3 with a linear warm-up over 20 steps then cosine decay, gradients accumulated over 2 batches of 32 and clipped to norm 1; trains normally.",
)
def h221_dobro_gru_accum_cosine(ctx: Context) -> None:
    gen = seeded(22113)
    model = SlideGRU()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)

    def shape(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / 160))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, shape)
    _train(
        ctx, model, opt, _slides(gen, 32), 180, F.huber_loss, sched=sched, accumulate=2, clip=1.0
    )
    ls = ctx.losses
    ctx.check("loss fell over 2x", _fell(ls, ratio=0.5))
    ctx.check("finite", _finite(ls))
