"""Held-out set 192 (``h192_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a regatta mark-rounding set net pooled by a learnt query
whose attention-entropy bonus was ported with its sign flipped, a shuffleboard scoring-zone
classifier trained with a multi-class hinge that lost its clamp, a piccolo trill-fingering
classifier whose softmax temperature anneals per step instead of per epoch, a butcher
carcass-grade ReLU MLP under a OneCycleLR whose max_lr was read at the lr finder's divergence
point, a floorball shot-speed regressor with gradient accumulation whose row-count divisor a
checkpoint hook resets, a conch-blast pitch 16-layer ReLU MLP drawn with the tanh gain, a shawm
reed classifier normalising each spectrum by its sum, a triathlon transition-time regressor fed
one timing mat's rows in seconds, a whitewater-rafting run-time Gaussian NLL regressor whose
variance head's lr multiplier was written as an absolute rate, a jousting lance-impact tanh
regressor whose linear warm-up lost its min(1, .), and three controls (a scrimshaw inscription
byte transformer LM, a batik wax-crackle fp16 regressor, a topiary hedge-shape multi-label net).

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
    text_batches,
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
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` records after the forward
    pass, ``after(step)`` after the optimizer step, ``backprop(step, micro, loss, x)`` returns
    what is backpropagated for one micro-batch (default ``loss / accumulate``). Stops after
    logging a NaN loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        for micro in range(accumulate):
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
            total = loss / accumulate if backprop is None else backprop(step, micro, loss, x)
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


def _kinds(gen, batch, d_in, classes, seed, noise=1.0):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * torch.randn(batch, d_in, generator=gen)
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


# -- regatta: a fleet pooled by a learnt query, an attention-entropy bonus ported with its sign flipped


class QueryPool(nn.Module):
    """Attention pooling of a set by one learnt query: logits key(h).q / sqrt(d), a softmax over
    the set, a weighted sum of value(h); no normalisation of the query or the keys. Keeps the
    entropy of its weights for the regulariser."""

    def __init__(self, dim=32):
        super().__init__()
        self.query = nn.Parameter(torch.randn(dim) * 0.1)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.dim = dim
        self.last_logits = None
        self.entropy = None

    def forward(self, h):
        logits = self.key(h) @ self.query / math.sqrt(self.dim)
        self.last_logits = logits.detach()
        self.entropy = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1).mean()
        return (torch.softmax(logits, -1)[..., None] * self.value(h)).sum(1)


class FleetNet(nn.Module):
    def __init__(self, d_in=9, dim=32, classes=6):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.act = nn.GELU()
        self.mix = nn.Linear(dim, dim)
        self.act2 = nn.GELU()
        self.pool = QueryPool(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.act2(self.mix(self.act(self.embed(x))))
        return self.head(self.pool(h))


def _fleet(gen, batch, boats=12):
    """Twelve boats approaching the windward mark (boat class one-hot of 6, the tracker's
    inside-overlap flag, distance to the mark, speed); the label is the class of the boat with
    the inside overlap (right of way at the mark), exactly one per rounding."""
    while True:
        cls = torch.randint(0, 6, (batch, boats), generator=gen)
        inside = torch.randint(0, boats, (batch, 1), generator=gen)
        flag = torch.zeros(batch, boats).scatter(1, inside, 1.0)
        dist = torch.rand(batch, boats, generator=gen)
        speed = torch.rand(batch, boats, generator=gen)
        x = torch.cat(
            [F.one_hot(cls, 6).float(), flag[..., None], dist[..., None], speed[..., None]], -1
        )
        yield x + 0.05 * torch.randn(x.shape, generator=gen), cls.gather(1, inside).squeeze(1)


@scenario(
    family="regatta_mark_rounding_query_pool_net",
    optimizer="Adam",
    cause="attention_logit_growth",
    where=("pool",),
    diverges=None,
    heldout=True,
    note="A regatta tracker naming the class (6) of the boat with the inside overlap at the "
    "windward mark among 12: a GELU per-boat encoder, a `pool` module that pools the fleet "
    "with one learnt query (logits key(h).q/sqrt(d), no query/key normalisation) and a head; "
    "cross-entropy plus an attention-entropy term with weight 1.0 that the original recipe "
    "subtracted (a bonus keeping the pool from collapsing onto one boat) and the port adds, "
    "so the run is rewarded for ever sharper pooling; Adam at 1e-2. The task is learnt by "
    "step 50-60, after which the query and key weights keep growing: the pooling logits' spread "
    "grows from about 0 to past 150 and keeps doubling after the loss reached 0, the pooling "
    "weights are one-hot; the head's logits stay moderate and the loss finite.",
)
def h192_regatta_query_pool_entropy_sign(ctx: Context) -> None:
    gen = seeded(19201)
    model = FleetNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    spread, peak, head = [], [], []

    def watch(step, out, x, y):
        lg = model.pool.last_logits
        spread.append(float((lg.amax(-1) - lg.amin(-1)).mean()))
        peak.append(float(torch.softmax(lg, -1).amax(-1).mean()))
        head.append(float(out.detach().abs().amax(-1).mean()))

    def backprop(step, micro, loss, x):
        return loss + 1.0 * model.pool.entropy  # ported as + (the recipe subtracted it)

    _train(
        ctx,
        model,
        opt,
        _fleet(gen, 64),
        250,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        backprop=backprop,
    )
    ctx.check("pooling logit spread below 1 at step 5", spread[5] < 1.0)
    ctx.check("pooling logit spread past 150 at the end", _mean(spread[-10:]) > 150)
    ctx.check(
        "spread more than doubled from step 50 (task nearly learnt) to the end",
        _mean(spread[-10:]) > 2 * _mean(spread[45:55]),
    )
    ctx.check("pooling one-hot (top weight > 0.99) at the end", _mean(peak[-10:]) > 0.99)
    ctx.check("head logits below 50 at the end", _mean(head[-10:]) < 50)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- shuffleboard: a multi-class hinge that lost its clamp ---------------------------------------


def _unclamped_hinge(logits, y):
    """Crammer-Singer hinge, written by hand: 1 + max wrong logit - true logit, averaged. The
    `.clamp(min=0)` was lost in a refactor, so the loss has no floor."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    wrong = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -1e9).amax(1)
    return (1 + wrong - true).mean()


@scenario(
    family="shuffleboard_disc_zone_hinge_classifier",
    optimizer="ASGD",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A deck-shuffleboard coach's classifier of the scoring zone (10, 8, 7, off: 4 classes) "
    "a disc stops in, from 12 push readings (cue speed, release angle, deck wax, ...): a ReLU "
    "MLP and a head trained with a hand-written multi-class hinge 1 + max wrong - true, whose "
    "clamp(min=0) was lost in a refactor; ASGD at 2e-2. Every row keeps rewarding a wider "
    "margin, so the head's logits grow without bound (more than 20x) and the loss falls far "
    "below 0, which a hinge never does; nothing becomes non-finite within the run.",
)
def h192_shuffleboard_hinge_without_clamp(ctx: Context) -> None:
    gen = seeded(19202)
    model = Stack(12, 64, 4)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)
    top = []

    def watch(step, out, x, y):
        top.append(float(out.detach().abs().amax(1).mean()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 4, 19202),
        140,
        _unclamped_hinge,
        classifier=True,
        watch=watch,
    )
    ctx.check("head logits grew 20x from step 5", _mean(top[-10:]) > 20 * top[5])
    ctx.check("hinge loss below -10 at the end", _mean(ctx.losses[-10:]) < -10)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- piccolo: a softmax temperature annealed per step instead of per epoch -----------------------


class TrillNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=10):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = 1.0

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="piccolo_trill_fingering_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A piccolo tutor's classifier of the trill fingering (10) from 16 spectral readings of "
    "a recorded trill: a SiLU MLP whose head logits are divided by a temperature annealed by "
    "0.97 a step (the schedule was written for epochs of 50 steps, the call was put in the "
    "step loop), so the temperature falls from 1 to 0.002 over the run; cross-entropy, "
    "RMSprop at 1e-3. The logits are multiplied by hundreds, the float32 softmax rounds most "
    "rows' target probability to exactly 1.0 (and the wrong rows' to 0), the gradient of the "
    "saturated rows vanishes; no NaN.",
)
def h192_piccolo_temperature_annealed_per_step(ctx: Context) -> None:
    gen = seeded(19203)
    model = TrillNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    collapsed, temps = [], []

    def before(step):
        model.temperature = 0.97**step

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        temps.append(model.temperature)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 10, 19203),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=watch,
    )
    ctx.check("no row collapsed at step 0", collapsed[0] == 0.0)
    ctx.check(
        "over half the rows' target probability exactly 1.0 at the end",
        _mean(collapsed[-10:]) > 0.5,
    )
    ctx.check("temperature below 0.01 at the end", temps[-1] < 0.01)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- butcher: a OneCycleLR max_lr copied from the lr finder's divergence point ---------------------


@scenario(
    family="butcher_carcass_grade_relu_mlp",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="An abattoir grader's ReLU MLP naming the carcass grade (5) from 16 readings (fat depth, "
    "eye-muscle area, pH, ...): SGD Nesterov momentum 0.9 under OneCycleLR whose max_lr was "
    "copied from the lr finder's plot at the point the loss diverged (0.8) instead of a tenth "
    "of it (0.08). The run learns at first (loss 0.23 at step 20); near the peak of the cycle "
    "the large steps push fc2's biases and weights to where its ReLUs are never positive, all "
    "of fc2's units die by step 60, no gradient reaches them or fc1 again, and as the rate "
    "anneals the loss stays at chance (log 5) to the end; nothing becomes non-finite.",
)
def h192_butcher_onecycle_max_lr_from_finder(ctx: Context) -> None:
    gen = seeded(19204)
    model = Stack(16, 128, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.8, total_steps=steps)
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.features(x)))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, 19204),
        steps,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        sched=sched,
    )
    ctx.check("under 10% of fc2's ReLUs dead at step 0", dead[0] < 0.1)
    ctx.check("over 90% of fc2's ReLUs dead at the end", _mean(dead[-10:]) > 0.9)
    ctx.check(
        "it had learnt: loss below 0.5 somewhere in steps 10-30", min(ctx.losses[10:30]) < 0.5
    )
    ctx.check("loss back at chance (> 1.4) over the last 50 steps", min(ctx.losses[-50:]) > 1.4)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- floorball: gradient accumulation whose row-count denominator a checkpoint hook resets --------


@scenario(
    family="floorball_shot_speed_accum_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="A floorball academy's shot-speed regressor (10 stick-sensor readings, standardised "
    "speed): a SiLU MLP, Huber loss summed over rows, gradient accumulated over 4 "
    "micro-batches of 16 and divided by the rows counted in the previous window (64); a "
    "checkpoint hook at step 150 resets that counter to 0 and the guard max(n, 1) turns the "
    "divisor into 1 for that one step, so the backpropagated gradient is 64x the usual once; "
    "SGD momentum 0.9 at 5e-3, no clipping. The logged loss is the per-row mean (unaffected); "
    "the run takes the burst and settles back; no NaN.",
    onset=150,
)
def h192_floorball_accumulation_divisor_reset(ctx: Context) -> None:
    gen = seeded(19205)
    model = Stack(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    counter = {"rows": 64, "window": 0}

    def before(step):
        if step == 150:
            counter["rows"] = 0  # the checkpoint hook resets the trainer's counters
        counter["window"] = 0

    def backprop(step, micro, loss, x):
        counter["window"] += len(x)
        total = loss * len(x) / max(counter["rows"], 1)
        if micro == 3:
            counter["rows"] = counter["window"]
        return total

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 16, 10, 19205, noise=0.1),
        260,
        F.huber_loss,
        before=before,
        backprop=backprop,
        accumulate=4,
    )
    g = ctx.grad_norms
    ctx.check(
        "gradient at step 150 over 30x the median of steps 130-149",
        g[150] > 30 * _median(g[130:150]),
    )
    ctx.check(
        "the other steps' gradients stay within 5x that median",
        max(g[151:]) < 5 * _median(g[130:150]),
    )
    ctx.check("loss fell by step 140", _fell(ctx.losses[:140]))
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- conch: a deep ReLU MLP initialised with the tanh gain ------------------------------------------


class DeepRelu(nn.Module):
    """A 16-layer ReLU MLP, Linears at even indices of `layers`, drawn by a hand-written init
    normal(0, gain / sqrt(fan_in)) with the gain of the tanh version of the net."""

    def __init__(self, d_in=14, hidden=64, depth=16, gain=5 / 3):
        super().__init__()
        mods = []
        sizes = [d_in] + [hidden] * (depth - 1)
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            mods += [nn.Linear(a, b), nn.ReLU()]
        mods.append(nn.Linear(hidden, 1))
        self.layers = nn.Sequential(*mods)
        for m in self.layers:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.layers(x).squeeze(-1)


@scenario(
    family="conch_blast_pitch_deep_relu_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0", "layers.2"),
    diverges=None,
    heldout=True,
    note="A conch-shell trumpeter's pitch regressor (14 breath and lip readings, standardised "
    "pitch): a 16-layer ReLU MLP ported from its tanh version, whose hand-written init "
    "normal(0, gain/sqrt(fan_in)) kept gain = calculate_gain('tanh') = 5/3 where ReLU needs "
    "sqrt(2): a factor 1.18 per layer, so activations grow through depth on the way up and "
    "the gradient grows through depth on the way back (the gradient at the first layer's "
    "output over 10x the last hidden layer's at step 0). MSE, SGD momentum 0.9 at 1e-3 with "
    "clipping at 1.0, which keeps the run finite: the raw gradient norm starts near 1e4 and "
    "stays tens of times that of the same net drawn with sqrt(2) (trained alongside as a "
    "reference), and the loss stays well above the reference's; no blow-up.",
)
def h192_conch_deep_relu_tanh_gain(ctx: Context) -> None:
    gen = seeded(19206)
    model = DeepRelu()
    twin = DeepRelu(gain=math.sqrt(2))
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    twin_opt = torch.optim.SGD(twin.parameters(), lr=1e-3, momentum=0.9)
    linears = [m for m in model.layers if isinstance(m, nn.Linear)]
    outs: list[torch.Tensor] = []

    def keep(module, inp, out):
        out.retain_grad()
        outs.append(out)

    for m in linears:
        m.register_forward_hook(keep)
    ratio, twin_norms, twin_losses = [], [], []
    ctx.attach(model, opt)
    batches = _readings(gen, 64, 14, 19206)
    for _ in range(150):
        x, y = next(batches)
        outs.clear()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratio.append(float(outs[0].grad.norm() / (outs[-2].grad.norm() + 1e-30)))
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        twin_loss = F.mse_loss(twin(x), y)
        twin_loss.backward()
        twin_norms.append(grad_norm(twin))
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        twin_opt.step()
        twin_opt.zero_grad(set_to_none=True)
        twin_losses.append(float(twin_loss.detach()))
        if not math.isfinite(float(loss.detach())):
            break
    g = ctx.grad_norms
    ctx.check(
        "gradient at the first layer's output over 10x the last hidden's at step 0",
        ratio[0] > 10,
    )
    ctx.check("raw gradient norm over 1000 at step 0", g[0] > 1000)
    ctx.check(
        "median raw gradient norm over 20x the sqrt(2) twin's",
        _median(g) > 20 * _median(twin_norms),
    )
    ctx.check(
        "loss of the last 20 steps over 2x the twin's",
        _mean(ctx.losses[-20:]) > 2 * _mean(twin_losses[-20:]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- shawm: a spectral-shape module dividing each spectrum by its sum -----------------------------


class SpectralShape(nn.Module):
    """Normalises each recorded spectrum to a shape: x / x.sum() (no epsilon)."""

    def __init__(self):
        super().__init__()
        self.last_bad = False

    def forward(self, x):
        out = x / x.sum(-1, keepdim=True)
        self.last_bad = bool(~torch.isfinite(out.detach()).all())
        return out


class ReedNet(nn.Module):
    def __init__(self, bins=32, hidden=64, classes=6):
        super().__init__()
        self.shape = SpectralShape()
        self.fc1 = nn.Linear(bins, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = self.shape(x) * x.shape[-1]
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h)))))


def _reed_spectra(gen, batch, seed, silent_at=None, bins=32):
    """Power spectra (32 bins, non-negative) of shawm notes; the label is the reed scrape (6),
    which shapes the harmonic envelope. At batch ``silent_at`` one clip is from a recorder whose
    input gain was at zero: an all-zero spectrum."""
    g = torch.Generator().manual_seed(seed)
    envelopes = torch.rand(6, bins, generator=g) ** 2 + 0.05
    step = 0
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        loud = 0.5 + 4 * torch.rand(batch, 1, generator=gen)
        x = loud * envelopes[y] * (1 + 0.3 * torch.rand(batch, bins, generator=gen))
        if step == silent_at:
            x[7] = 0.0
        step += 1
        yield x, y


@scenario(
    family="shawm_reed_spectral_shape_classifier",
    optimizer="NAdam",
    cause="nonfinite",
    where=("shape",),
    diverges=90,
    heldout=True,
    note="A shawm maker's classifier of the reed scrape (6) from a note's 32-bin power spectrum: "
    "a `shape` module normalising each spectrum by its sum (x / x.sum(), no epsilon) before a "
    "GELU MLP; cross-entropy, NAdam at 2e-3. Batch 90 holds one clip from a field recorder "
    "whose input gain was at zero, an all-zero spectrum: 0/0 in `shape` gives NaN features, "
    "NaN logits and a NaN loss at step 90.",
    onset=90,
)
def h192_shawm_spectrum_sum_zero(ctx: Context) -> None:
    gen = seeded(19207)
    model = ReedNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    bad, zero_rows = [], []

    def watch(step, out, x, y):
        bad.append(model.shape.last_bad)
        zero_rows.append(int((x.sum(-1) == 0).sum()))

    _train(
        ctx,
        model,
        opt,
        _reed_spectra(gen, 64, 19207, silent_at=90),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("loss finite and falling before step 90", _fell(ls[:90]))
    ctx.check("batch 90 holds an all-zero spectrum", zero_rows[90] == 1)
    ctx.check("`shape` produced a non-finite value first at step 90", bad.index(True) == 90)
    ctx.check("first non-finite loss at step 90", _first_bad(ls) == 90)


# -- triathlon: one timing mat's shard in seconds --------------------------------------------


def _transitions(gen, batch, seed, bad_at=None, bad_rows=6):
    """Sixteen athlete readings (standardised) and the T2 transition time in minutes (about
    0.5 to 2). At batch ``bad_at`` a few rows come from one timing mat's export in seconds."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=g)
    step = 0
    while True:
        x = torch.randn(batch, 16, generator=gen)
        y = 1.2 + 0.4 * torch.tanh(x @ w / 4) + 0.05 * torch.randn(batch, generator=gen)
        if step == bad_at:
            y[:bad_rows] = y[:bad_rows] * 60
        step += 1
        yield x, y


@scenario(
    family="triathlon_transition_time_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="A triathlon club's T2 transition-time regressor (16 standardised athlete readings, "
    "time in minutes): a ReLU MLP, MSE, SGD momentum 0.9 at 1e-3, no clipping. One shard was "
    "exported by a timing mat that writes seconds: batch 120 holds six rows with times 60x "
    "too large. That step's loss is thousands of times the usual and its gradient hundreds, the "
    "weights are thrown, the loss stays high for a few steps and the run recovers; nothing "
    "becomes non-finite.",
    onset=120,
)
def h192_triathlon_mat_in_seconds(ctx: Context) -> None:
    gen = seeded(19208)
    model = Stack(16, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    _train(ctx, model, opt, _transitions(gen, 64, 19208, bad_at=120), 220, F.mse_loss)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at step 120 over 1000x the median of steps 100-119",
        ls[120] > 1000 * _median(ls[100:120]),
    )
    ctx.check(
        "gradient at step 120 over 50x the median of steps 100-119",
        g[120] > 50 * _median(g[100:120]),
    )
    ctx.check(
        "recovered: loss of the last 20 steps within 3x of steps 100-119",
        _median(ls[-20:]) < 3 * _median(ls[100:120]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- whitewater rafting: a variance head whose lr multiplier was written as an absolute rate ------


class RunTimeNet(nn.Module):
    """A SiLU trunk with a mean head and a log-variance head (a Gaussian per run)."""

    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


def _runs(gen, batch, seed):
    """Twelve standardised readings of a rapid and a raft crew; the run time (standardised)
    with a noise that depends strongly on the water level (reading 0)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        sd = 0.05 + 0.6 * torch.sigmoid(2 * x[:, 0])
        y = torch.tanh(x @ w / 3) + sd * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="whitewater_rafting_run_time_gaussian_nll",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("log_var",),
    diverges=None,
    heldout=True,
    note="A rafting outfitter's run-time model (12 readings of the rapid and the crew): a SiLU "
    "trunk with a mean head and a log-variance head trained by Gaussian NLL, AdamW at 1e-3 "
    "with param groups whose lr is base_lr * multiplier; the variance head's multiplier was "
    "written as the absolute rate 1e-3 the recipe gave it, so that group runs at 1e-6: its "
    "updates are about 400x smaller relative to its weights than the trunk's, the predicted "
    "variance barely moves from its initial value and the NLL settles above what the mean "
    "alone allows; the loss falls and stays finite.",
)
def h192_rafting_variance_head_lr_multiplier(ctx: Context) -> None:
    gen = seeded(19209)
    model = RunTimeNet()
    base = 1e-3
    mult = {"trunk": 1.0, "mean": 1.0, "log_var": 1e-3}  # meant: 1.0 (the recipe's 1e-3 rate)
    groups = [
        {"params": [*model.fc1.parameters(), *model.fc2.parameters()], "lr": base * mult["trunk"]},
        {"params": list(model.mean.parameters()), "lr": base * mult["mean"]},
        {"params": list(model.log_var.parameters()), "lr": base * mult["log_var"]},
    ]
    opt = torch.optim.AdamW(groups, weight_decay=1e-4)
    prev = {}
    ratios = {"fc2": [], "log_var": []}

    def before(step):
        prev["fc2"] = model.fc2.weight.detach().clone()
        prev["log_var"] = model.log_var.weight.detach().clone()

    def after(step):
        for name in ratios:
            w = getattr(model, name).weight.detach()
            ratios[name].append(float((w - prev[name]).norm() / w.norm()))

    start = model.log_var.weight.detach().clone()
    _train(ctx, model, opt, _runs(gen, 64, 19209), 250, _gaussian_nll, before=before, after=after)
    moved = float((model.log_var.weight.detach() - start).norm() / start.norm())
    ctx.check(
        "log_var's update/weight ratio under 3e-5 (median)", _median(ratios["log_var"]) < 3e-5
    )
    ctx.check(
        "fc2's update/weight ratio over 300x log_var's (median)",
        _median(ratios["fc2"]) > 300 * _median(ratios["log_var"]),
    )
    ctx.check("log_var's weights moved under 1% over the run", moved < 0.01)
    ctx.check("loss fell and stayed finite", _fell(ctx.losses))


# -- jousting: a linear warm-up that lost its min(1, .) ---------------------------------------------


@scenario(
    family="jousting_lance_impact_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A jousting school's lance-impact regressor (10 standardised readings of the pass, "
    "standardised impact force): a tanh MLP, MSE, plain SGD with a hand-written linear "
    "warm-up lr = base * step / 40 meant as base * min(1, step / 40); the clamp was lost, so "
    "past step 40 the rate keeps climbing linearly (0.2 at step 40, 4x that by step 160). "
    "lr x sharpness (top Hessian eigenvalue) is under 2 at step 40 and crosses 2 as the rate "
    "climbs; the loss oscillates and blows up.",
    onset=40,
)
def h192_jousting_warmup_without_clamp(ctx: Context) -> None:
    gen = seeded(19210)
    model = Stack(10, 64, 1, act=nn.Tanh)
    base = 0.2
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 10, 19210))
    lrs, sharp = [], {}

    def before(step):
        lr = base * (step + 1) / 40  # meant: base * min(1.0, (step + 1) / 40)
        for grp in opt.param_groups:
            grp["lr"] = lr
        lrs.append(lr)
        if step % 10 == 0 and (not ctx.losses or _finite(ctx.losses[-1:])):
            sharp[step] = _sharpness(model, F.mse_loss, *probe)

    _train(ctx, model, opt, _readings(gen, 64, 10, 19210), 300, F.mse_loss, before=before)
    ls = ctx.losses
    early = max(ls[:40])
    worst = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 10 * early), None)
    ctx.check("lr x sharpness under 2 at step 40", lrs[40] * sharp[40] < 2)
    crossed = [k for k in sorted(sharp) if lrs[k] * sharp[k] > 2]
    ctx.check(
        "lr x sharpness crossed 2 before the blow-up",
        bool(crossed) and worst is not None and crossed[0] < worst,
    )
    ctx.check("loss blew up (non-finite or 10x its worst of the first 40 steps)", worst is not None)
    ctx.check("loss fell in the first 40 steps", _fell(ls[:40]))


# -- controls ---------------------------------------------------------------------------------------


class CausalAttention(nn.Module):
    """Multi-head causal self-attention written by hand."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, -1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        y = torch.softmax(logits.masked_fill(mask, float("-inf")), -1) @ v
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class InscriptionBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = CausalAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(self.act(self.fc(self.ln2(x))))


class InscriptionLM(nn.Module):
    """A small pre-LN byte transformer LM with a head tied to the token embedding."""

    def __init__(self, vocab=128, dim=48, heads=4, layers=2, context=32):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(InscriptionBlock(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        self.lm_head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


@scenario(
    family="scrimshaw_inscription_byte_transformer_lm",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a scrimshaw engraver's byte-level inscription model (a 2-layer pre-LN "
    "transformer LM, hand-written causal attention, 4 heads, dim 48, head tied to the token "
    "embedding) on windows of text, AdamW with param groups (weight decay 0.1 on matrices, "
    "none on norms, biases and embeddings), 20 steps of linear warm-up to 3e-3 then cosine "
    "to 3e-4, gradient clipping at 1.0, cross-entropy with label smoothing 0.05; trains "
    "normally.",
)
def h192_scrimshaw_lm_control(ctx: Context) -> None:
    gen = seeded(19211)
    model = InscriptionLM()
    decay, plain = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() == 2 and "tok" not in name and "pos" not in name else plain).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
    )
    steps, warm = 250, 20

    def lr_at(step):
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / (steps - warm)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)

    def lm_ce(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.05)

    _train(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        steps,
        lm_ce,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell below 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class CrackleNet(nn.Module):
    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


@scenario(
    family="batik_wax_crackle_density_fp16_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a batik workshop's wax-crackle density regressor (12 standardised readings of "
    "wax blend, cloth and dye-bath temperature): a SiLU MLP under fp16 autocast with a "
    "torch.amp.GradScaler, gradient accumulated over 2 micro-batches, unscaled and clipped at "
    "1.0, Huber loss, RAdam at 2e-3 with ReduceLROnPlateau; noisy batches; trains normally.",
)
def h192_batik_fp16_control(ctx: Context) -> None:
    gen = seeded(19212)
    model = CrackleNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 19212, noise=0.2),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell below 60% of its start", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("grad scale never fell below its start", min(ctx.scales) >= 1024.0)


def _hedges(gen, batch, seed, flip=0.05):
    """Sixteen readings of a clipped hedge (height profile, density, growth since the last cut);
    five shape tags (cone, ball, spiral, tier, arch) can hold at once; 5% of tags flipped by
    the gardeners' inconsistent labelling."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 5, generator=g)
    while True:
        x = torch.randn(batch, 16, generator=gen)
        y = (x @ w / 4 + 0.3 * torch.randn(batch, 5, generator=gen) > 0).float()
        noise = torch.rand(batch, 5, generator=gen) < flip
        yield x, torch.where(noise, 1 - y, y)


@scenario(
    family="topiary_hedge_shape_multilabel_bce",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="Control: a topiary gardener's multi-label shape tagger (5 tags) from 16 readings: a "
    "ReLU MLP with BCE-with-logits on labels 5% of which are flipped, Adagrad at 5e-2 with "
    "StepLR (gamma 0.5 every 80 steps); trains normally.",
)
def h192_topiary_multilabel_control(ctx: Context) -> None:
    gen = seeded(19213)
    model = Stack(16, 64, 5)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=0.5)
    _train(
        ctx,
        model,
        opt,
        _hedges(gen, 64, 19213),
        240,
        F.binary_cross_entropy_with_logits,
        sched=sched,
    )
    ctx.check("loss fell below 70% of its start", _fell(ctx.losses, ratio=0.7))
    ctx.check("loss finite throughout", _finite(ctx.losses))
