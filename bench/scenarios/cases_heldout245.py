"""Held-out set 245 (``h245_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a padel rally set transformer whose lr was typed 3e-2 for 1e-3 (its
attention logits grow), an umbrella-rib bend regressor whose loss divisor counter resets to 1 for
one step, an obsidian flake-length ReLU MLP whose Adam lr was typed 1e-1 for 1e-3 (act2 dies), a
harmattan visibility regressor fed one dust reading in micrograms, a drumlin slope regressor whose
MultiStepLR gamma was typed 10 for 0.1, a chimney-pot draught tanh stack whose init gain was typed
5 for 5/3, a pyroclastic-bomb Poisson net taking log(relu(z)), a typesetting-sort cosine classifier
whose scale was typed 1000 for 10, an amber grader whose encoder param group name is misspelt
(lr 0), a bora classifier trained with nll_loss on raw logits, and three controls (a mistral gust
Conv1d classifier under bfloat16 autocast, a haar clearance Gaussian NLL MLP, a loess erosion
Huber MLP under fp16 autocast with a GradScaler).

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
    dead_fraction,
    digit_batches,
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
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; ``amp`` is the
    autocast dtype (None: float32); stops after logging a NaN loss."""
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
                ctx.targets(y if not isinstance(y, tuple) else y[1])
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            loss = loss_fn(out, y)
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


# -- padel: a set transformer over the four players, its learning rate typed 1e-2 for 1e-3 ------


class SetAttention(nn.Module):
    """Multi-head attention between a query set and a key set (q, k, v, o projections); keeps
    the largest |q.k/sqrt(d)| and the mean attention entropy of its last forward pass."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.max_logit = 0.0
        self.entropy = 0.0

    def forward(self, xq, xk):
        b, n, d = xq.shape
        m = xk.shape[1]
        h = self.heads
        q = self.q(xq).reshape(b, n, h, -1).transpose(1, 2)
        k = self.k(xk).reshape(b, m, h, -1).transpose(1, 2)
        v = self.v(xk).reshape(b, m, h, -1).transpose(1, 2)
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        att = logits.softmax(-1)
        with torch.no_grad():
            self.max_logit = float(logits.abs().max())
            self.entropy = float(-(att * att.clamp_min(1e-12).log()).sum(-1).mean())
        y = (att @ v).transpose(1, 2).reshape(b, n, d)
        return self.o(y)


class SAB(nn.Module):
    """Set attention block: x + attn(ln(x), ln(x)), then x + ff(ln(x))."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SetAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        z = self.ln1(x)
        x = x + self.attn(z, z)
        return x + self.ff(self.ln2(x))


class PMA(nn.Module):
    """Pooling by multi-head attention: one learned seed attends over the set."""

    def __init__(self, dim, heads=2):
        super().__init__()
        self.seed = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.ln = nn.LayerNorm(dim)
        self.attn = SetAttention(dim, heads)

    def forward(self, x):
        return self.attn(self.seed.expand(x.shape[0], -1, -1), self.ln(x)).squeeze(1)


class SetTransformer(nn.Module):
    """embed -> enc1 -> enc2 (SABs, no positions: permutation-invariant) -> pool (PMA) -> head."""

    def __init__(self, d_in, dim=32, classes=4):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.enc1 = SAB(dim)
        self.enc2 = SAB(dim)
        self.pool = PMA(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.pool(self.enc2(self.enc1(self.embed(x)))))


def _rallies(gen, batch, seed=3):
    """A padel rally frame: the four players (x, y on court, speed, heading cos/sin, grip) in
    random order plus the ball's distance to each; the shot to expect (4 kinds) is the grip
    class of the player nearest the ball, so the model must pick one player out of the set."""
    g = torch.Generator().manual_seed(seed)
    grip = torch.randn(4, 6, generator=g)
    while True:
        pos = torch.randn(batch, 4, 5, generator=gen)
        kind = torch.randint(0, 4, (batch, 4), generator=gen)
        dist = torch.rand(batch, 4, 1, generator=gen) * 3
        x = torch.cat([pos, dist, grip[kind] + 0.3 * torch.randn(batch, 4, 6, generator=gen)], -1)
        y = kind.gather(1, dist.squeeze(-1).argmin(1, keepdim=True)).squeeze(1)
        yield x, y


@scenario(
    family="padel_rally_shot_set_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("enc1.attn", "enc2.attn", "pool.attn"),
    diverges=None,
    heldout=True,
    note="A set transformer (embed, enc1 and enc2 set-attention blocks with hand-written q/k/v/o attention, pool by multi-head attention, head) picking the shot to expect in a padel rally from the four players (order-free set), AdamW without weight decay, cross-entropy. The config's lr is 3e-2 where 1e-3 was meant: the encoder attention logits q.k/sqrt(d) grow from about 1 to several hundred (over 20x those of the intended lr), the attention collapses and the loss stays over 2x the intended run's; finite, no blow-up.",
)
def h245_padel_set_transformer_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, lr):
        gen = seeded(24501)
        model = SetTransformer(12)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        logs = []

        def watch(step, out, x, y):
            logs.append(
                (
                    max(model.enc1.attn.max_logit, model.enc2.attn.max_logit),
                    model.pool.attn.max_logit,
                    model.pool.attn.entropy,
                )
            )

        _train(
            c, model, opt, _rallies(gen, 64), steps, F.cross_entropy, classifier=True, watch=watch
        )
        return logs

    twin = _Quiet()
    twin_logs = run(twin, lr=1e-3)
    logs = run(ctx, lr=3e-2)
    ctx.check("encoder attention logits grew over 100x", logs[-1][0] > 100 * logs[0][0])
    ctx.check("over 20x the intended lr's at the end", logs[-1][0] > 20 * twin_logs[-1][0])
    ctx.check(
        "loss at the end over 2x the intended lr's",
        _mean(ctx.losses[-30:]) > 2 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ctx.losses))


# -- umbrella maker: the loss divisor is read from a counter that resets at an epoch boundary ----


def _ribs(gen, batch, seed=4):
    """Ten standardised readings of an umbrella rib (steel gauge, length, runner position,
    crimp depth, ...) and its bend under a gust load, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="umbrella_rib_bend_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing an umbrella rib's bend under gust load from 10 standardised readings, SGD momentum 0.9 at 0.02, summed squared error divided by a samples-seen counter. The counter resets to 1 at the epoch boundary at step 120 (it should read 64): that step's loss and gradient are 64x (over 30x the median), from an ordinary batch; the loss jumps and the run recovers; finite.",
)
def h245_umbrella_rib_divisor_reset(ctx: Context) -> None:
    steps = 200
    gen = seeded(24502)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    xmax = []
    counter = {"seen": 0}

    def alter(step, x, y):
        counter["seen"] = 1 if step == 120 else len(y)  # the counter reset at the epoch boundary
        xmax.append(float(x.abs().max()))
        return x, y

    def loss_fn(out, y):
        return ((out - y) ** 2).sum() / counter["seen"]

    _train(ctx, model, opt, _ribs(gen, 64), steps, loss_fn, alter=alter)
    g = ctx.grad_norms
    ctx.check(
        "gradient over 30x the median of the 20 steps before at 120",
        g[120] > 30 * _median(g[100:120]),
    )
    ctx.check(
        "the batch at 120 is ordinary (max |x| under 1.5x the median)",
        xmax[120] < 1.5 * _median(xmax),
    )
    ctx.check(
        "loss recovers (last 30 under 2x the 20 before onset)",
        _mean(ctx.losses[-30:]) < 2 * _mean(ctx.losses[100:120]),
    )
    ctx.check("finite", _finite(ctx.losses))


# -- obsidian knapping: RMSprop's learning rate typed 1e-2 for 1e-4 -----------------------------


def _flakes(gen, batch, seed=5):
    """Twelve standardised readings of a strike on an obsidian core (platform angle, hammer
    mass, strike speed, core thickness, ...) and the detached flake's length, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="obsidian_flake_length_relu_mlp",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing an obsidian flake's length from 12 standardised strike readings, Adam, MSE. The lr was typed 1e-1 for 1e-3: the early large steps push fc2's pre-activations negative and over 80% of act2's units stop firing on every input (measured on 2048 probes) and never come back; the loss ends over 1.2x the intended run's; finite.",
)
def h245_obsidian_adam_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, lr):
        gen = seeded(24503)
        model = Stack(12, hidden=64)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        probe = torch.randn(2048, 12, generator=torch.Generator().manual_seed(7))
        dead = []

        def after(step):
            with torch.no_grad():
                h1 = model.act1(model.fc1(probe))
                h2 = model.act2(model.fc2(h1))
                dead.append((dead_fraction(h1), dead_fraction(h2)))

        _train(c, model, opt, _flakes(gen, 64), steps, F.mse_loss, after=after)
        return dead

    twin = _Quiet()
    twin_dead = run(twin, lr=1e-3)
    dead = run(ctx, lr=1e-1)
    ctx.check("act2 over 80% dead at the end", dead[-1][1] > 0.8)
    ctx.check("act2 under 10% dead at step 0", dead[0][1] < 0.1)
    ctx.check("the intended lr keeps act2 under 10% dead", twin_dead[-1][1] < 0.1)
    ctx.check("dead units do not revive", dead[-1][1] >= dead[100][1] - 0.02)
    ctx.check(
        "loss at the end over 1.2x the intended lr's",
        _mean(ctx.losses[-30:]) > 1.2 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ctx.losses))


# -- harmattan: one station's dust reading in micrograms for milligrams ------------------------


def _haze(gen, batch, seed=6):
    """Eight standardised readings of a Sahel station in the harmattan (dust concentration,
    wind speed, humidity, ...) and tomorrow's visibility, standardised."""
    return _readings(gen, batch, 8, seed, noise=0.05)


@scenario(
    family="harmattan_dust_visibility_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing tomorrow's visibility at a Sahel station in the harmattan from 8 standardised readings, ASGD at 0.02, MSE. At step 100 one sample of one batch carries its dust concentration in micrograms where milligrams are expected (1000x): the gradient jumps over 50x for a few steps and the loss spikes, then the run recovers; finite.",
)
def h245_harmattan_dust_unit_sample(ctx: Context) -> None:
    steps = 200
    gen = seeded(24504)
    model = Stack(8, hidden=64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    xmax = []

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            x[5, 0] = x[5, 0] * 1000.0  # one station's dust column in ug/m3, not mg/m3
        xmax.append(float(x.abs().max()))
        return x, y

    _train(ctx, model, opt, _haze(gen, 64), steps, F.mse_loss, alter=alter)
    g = ctx.grad_norms
    ctx.check(
        "the batch at 100 holds a reading over 50x the usual max", xmax[100] > 50 * _median(xmax)
    )
    ctx.check("gradient over 50x the median before at 100", g[100] > 50 * _median(g[80:100]))
    ctx.check(
        "loss recovers (last 30 under 2x the 20 before onset)",
        _mean(ctx.losses[-30:]) < 2 * _mean(ctx.losses[80:100]),
    )
    ctx.check("finite", _finite(ctx.losses))


# -- drumlin: a MultiStepLR gamma typed 10 for 0.1 ----------------------------------------------


def _till(gen, batch, seed=7):
    """Ten standardised readings of a drumlin's till (clast size, compaction, ice-flow
    azimuth, ...) and its stoss-side slope, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="drumlin_till_slope_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=80,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a drumlin's stoss slope from 10 till readings, plain SGD at 0.1, MSE, MultiStepLR with milestone 80 whose gamma was typed 10 for 0.1: at step 80 the lr becomes 1.0 and lr x sharpness (top Hessian eigenvalue, about 5) goes from about 0.5 to about 5, past 2: the loss grows geometrically and is non-finite by step 97.",
)
def h245_drumlin_multistep_gamma_typo(ctx: Context) -> None:
    steps = 160
    gen = seeded(24505)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[80], gamma=10.0)
    probe = next(_till(torch.Generator().manual_seed(9), 512))
    sharp = {}
    lrs = []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (79, 80):
            sharp[step] = _sharpness(model, F.mse_loss, probe)

    _train(ctx, model, opt, _till(gen, 64), steps, F.mse_loss, before=before, sched=sched)
    ctx.check("lr x sharpness under 2 before the milestone", lrs[79] * sharp[79] < 2)
    ctx.check("lr x sharpness over 2 after it", lrs[80] * sharp[80] > 2)
    ctx.check(
        "loss over 1000x its pre-onset level by step 95",
        max(ctx.losses[80:96]) > 1000 * _mean(ctx.losses[60:80]),
    )
    ctx.check("loss non-finite at the end", not math.isfinite(ctx.losses[-1]))


# -- chimney pot: a tanh stack's init gain typed 5 for 5/3 ---------------------------------------


class DeepTanh(nn.Module):
    """body: twelve Linear + Tanh pairs (body.0, body.1, ... body.22, body.23), then head."""

    def __init__(self, d_in, width=48, depth=12, gain=5 / 3):
        super().__init__()
        layers = []
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
            layers += [lin, nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)


def _draught(gen, batch, seed=8):
    """Ten standardised readings of a chimney (pot height, flue area, outside wind, stove
    temperature, ...) and its measured draught, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="chimney_pot_draught_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("body.0",),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (body.0 ... body.23, head) regressing a chimney's draught from 10 readings, SGD Nesterov (momentum 0.9) at 1e-3, MSE. The xavier init gain was typed 5 for 5/3: the stack is in the chaotic regime and gradients grow layer by layer towards the input, body.0's over 100x body.22's at step 0 (under 5x with gain 5/3); the loss stays over 1.3x that of the gain-5/3 run; finite, no blow-up.",
)
def h245_chimney_pot_init_gain_typo(ctx: Context) -> None:
    steps = 150

    def run(c, gain):
        gen = seeded(24506)
        model = DeepTanh(10, gain=gain)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
        ratio = []

        orig_step = opt.step

        def step_and_record(*a, **k):
            gs = [model.body[i].weight.grad.norm().item() for i in range(0, 24, 2)]
            ratio.append(gs)
            return orig_step(*a, **k)

        opt.step = step_and_record
        _train(c, model, opt, _draught(gen, 64), steps, F.mse_loss)
        return ratio

    twin = _Quiet()
    twin_r = run(twin, 5 / 3)
    r = run(ctx, 5.0)
    ctx.check("body.0's gradient over 100x body.22's at step 0", r[0][0] > 100 * r[0][-1])
    ctx.check("gain 5/3 keeps that ratio under 5", twin_r[0][0] < 5 * twin_r[0][-1])
    ctx.check(
        "gradient grows layer by layer towards the input",
        all(a > b for a, b in zip(r[0][:-1], r[0][1:], strict=True)),
    )
    ctx.check(
        "loss at the end over 1.3x gain 5/3's",
        _mean(ctx.losses[-30:]) > 1.3 * _mean(twin.losses[-30:]),
    )


# -- pyroclastic bombs: a Poisson rate kept non-negative by a ReLU, then logged ---------------


class LogRate(nn.Module):
    """log of a ReLU-clipped rate: the author's way to keep the rate non-negative (no clamp)."""

    def forward(self, z):
        return torch.log(F.relu(z))


class BombNet(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, 1)
        self.log_rate = LogRate()
        nn.init.constant_(self.fc2.bias, 2.0)

    def forward(self, x):
        return self.log_rate(self.fc2(torch.tanh(self.fc1(x)))).squeeze(-1)


def _bombs(gen, batch, seed=10):
    """Eight standardised readings of a vent (tremor, SO2 flux, tilt, ...) and the count of
    ballistic bombs landing in a survey square in the next hour: many squares see none."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        yield x, torch.poisson(torch.exp(0.8 * x @ w / math.sqrt(8) - 0.5), generator=gen)


def _poisson_nll(log_rate, y):
    return (log_rate.exp() - y * log_rate).mean()


@scenario(
    family="pyroclastic_bomb_count_log_relu_poisson_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("log_rate",),
    diverges=16,
    heldout=True,
    onset=0,
    note="A tanh net (fc1, fc2, log_rate) predicting the count of ballistic bombs landing in a survey square near a vent as a Poisson rate, NAdam at 1e-2, Poisson NLL on the log rate. The log rate is computed as log(relu(z)) with no clamp: at step 16 a rate reaches exactly 0, log gives -inf and the loss is NaN at step 16.",
)
def h245_pyroclastic_log_relu_rate(ctx: Context) -> None:
    gen = seeded(24507)
    model = BombNet(8)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-2)
    minrate = []

    def watch(step, out, x, y):
        minrate.append(float(out.detach().exp().min()))

    _train(ctx, model, opt, _bombs(gen, 64), 200, _poisson_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("loss NaN at step 16", bad == 16)
    ctx.check("a rate exactly 0 at that step (log 0)", minrate[-1] == 0.0)
    ctx.check("all rates positive before it", min(minrate[:-1]) > 0.0)


# -- typesetting: a distillation temperature multiplied where it should divide -------------------


class Glyphs(nn.Module):
    def __init__(self, temperature):
        super().__init__()
        self.fc1 = nn.Linear(64, 64)
        self.act = nn.ReLU()
        self.head = nn.Linear(64, 10)
        self.temperature = temperature

    def forward(self, x):
        h = F.normalize(self.act(self.fc1(x)), dim=-1)
        cos = h @ F.normalize(self.head.weight, dim=-1).T
        return cos * self.temperature  # cosine logits times the scale (1000 typed for 10)


@scenario(
    family="typesetting_sort_glyph_temperature_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A cosine classifier (fc1, act, head) of typesetting sorts' glyphs (scikit-learn's 8x8 digits), Adagrad at 0.05, cross-entropy. The cosine logits are multiplied by a scale typed 1000 for 10: on average over half the rows' softmax rounds to exactly 1.0, the loss jumps around; finite.",
)
def h245_typesetting_temperature_multiplied(ctx: Context) -> None:
    gen = seeded(24508)
    model = Glyphs(temperature=1000.0)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sat = []

    def watch(step, out, x, y):
        p = torch.softmax(out.detach(), -1)
        sat.append(float((p.max(1).values == 1.0).float().mean()))

    _train(
        ctx, model, opt, digit_batches(gen, 64), 150, F.cross_entropy, classifier=True, watch=watch
    )
    ctx.check("over half the rows' softmax saturated to exactly 1.0 on average", _mean(sat) > 0.5)
    ctx.check("finite", _finite(ctx.losses))


# -- amber: the encoder's lr multiplier looked up under a misspelt group name --------------------


class Grader(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.enc1 = nn.Linear(d_in, 64)
        self.enc2 = nn.Linear(64, 64)
        self.head = nn.Linear(64, 1)

    def forward(self, x):
        return self.head(F.gelu(self.enc2(F.gelu(self.enc1(x))))).squeeze(-1)


def _amber(gen, batch, seed=11):
    """Fourteen standardised readings of a polished amber piece (UV fluorescence, density,
    refractive index, inclusion count, ...) and its appraised grade, standardised."""
    return _readings(gen, batch, 14, seed, noise=0.05)


@scenario(
    family="amber_inclusion_grade_two_group_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("enc1", "enc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (enc1, enc2, head) regressing an amber piece's grade from 14 readings, RAdam with two param groups whose lr multipliers are looked up by group name with a default of 0.0; the encoder group was named 'enocder', so enc1 and enc2 train at lr 0 all run (their weights never move); only the head learns and the loss ends over 2x the intended run's; finite.",
)
def h245_amber_group_name_typo(ctx: Context) -> None:
    def run(c, enc_name):
        gen = seeded(24509)
        model = Grader(14)
        mults = {"encoder": 0.3, "head": 1.0}
        groups = [
            {"name": enc_name, "params": [*model.enc1.parameters(), *model.enc2.parameters()]},
            {"name": "head", "params": list(model.head.parameters())},
        ]
        for gr in groups:
            gr["lr"] = 3e-3 * mults.get(gr["name"], 0.0)
        opt = torch.optim.RAdam(groups, lr=3e-3)
        w0 = model.enc1.weight.detach().clone()
        _train(c, model, opt, _amber(gen, 64), 200, F.mse_loss)
        return float((model.enc1.weight.detach() - w0).norm() / w0.norm())

    twin = _Quiet()
    twin_change = run(twin, "encoder")
    change = run(ctx, "enocder")
    ctx.check("enc1's weights did not move", change == 0.0)
    ctx.check("the intended multiplier moves them over 5%", twin_change > 0.05)
    ctx.check(
        "loss at the end over 2x the intended's",
        _mean(ctx.losses[-30:]) > 2 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ctx.losses))


# -- bora: nll_loss on raw logits (the log_softmax forgotten) ------------------------------------


def _gusts(gen, batch, seed=12):
    """Sixteen standardised readings of the pressure gradient across the Dinaric Alps and the
    Adriatic (station pairs, cold-air depth, ...); the bora class to expect (5 kinds)."""
    return _kinds(gen, batch, 16, 5, seed)


@scenario(
    family="bora_gust_class_raw_nll_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying the bora to expect (5 kinds) from 16 pressure readings, Adam at 1e-3, F.nll_loss applied to the raw logits (the log_softmax forgotten): the loss is minus the target logit, has no floor, and the head's logits grow without bound (over 100x), the loss falling past -100; finite.",
)
def h245_bora_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(24510)
    model = Stack(16, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mags = []

    def watch(step, out, x, y):
        mags.append(float(out.detach().abs().max(1).values.mean()))

    _train(ctx, model, opt, _gusts(gen, 64), 200, F.nll_loss, classifier=True, watch=watch)
    ctx.check("mean max |logit| grew over 100x", mags[-1] > 100 * mags[0])
    ctx.check(
        "loss keeps falling below -100 (no floor)",
        ctx.losses[-1] < -100 and ctx.losses[-1] < ctx.losses[-50],
    )
    ctx.check("finite", _finite(ctx.losses))


# -- controls ----------------------------------------------------------------------------------


class GustConv(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.gelu(self.conv1(x[:, None]))
        h = F.gelu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _mistral(gen, batch):
    """A 64-sample anemometer trace in the mistral; class: steady, gusty, or pulsing (by the
    period of its oscillation), with noise."""
    t = torch.arange(64.0)
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        period = torch.tensor([32.0, 8.0, 4.0])[y]
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        x = torch.sin(2 * math.pi * t / period[:, None] + phase)
        yield x + 0.8 * torch.randn(batch, 64, generator=gen), y


@scenario(
    family="mistral_wind_gust_bf16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a Conv1d classifier (conv1, conv2, head) of 64-sample anemometer traces in the mistral (steady, gusty or pulsing, noisy), AdamW at a OneCycleLR max_lr of 3e-3 with weight decay 0.01, cross-entropy with label smoothing 0.1, clipping at 1, mixed bfloat16 autocast. The loss falls and the accuracy rises well above chance; finite.",
)
def h245_mistral_bf16_control(ctx: Context) -> None:
    gen = seeded(24511)
    model = GustConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    def loss_fn(out, y):
        return F.cross_entropy(out.float(), y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _mistral(gen, 64),
        steps,
        loss_fn,
        classifier=True,
        watch=watch,
        clip=1.0,
        sched=sched,
        amp=torch.bfloat16,
    )
    ctx.check("loss fell", _fell(ctx.losses))
    ctx.check("accuracy over 0.8 at the end", _mean(acc[-20:]) > 0.8)
    ctx.check("finite", _finite(ctx.losses))


class FogNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.fc2 = nn.Linear(64, 64)
        self.mean = nn.Linear(64, 1)
        self.log_var = nn.Linear(64, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _haar(gen, batch, seed=13):
    """Ten standardised readings of a North Sea coast morning (sea temperature, onshore wind,
    inversion height, ...) and the hour the haar clears, standardised, with noise that grows
    with the first reading."""
    for x, y in _readings(gen, batch, 10, seed, noise=0.0):
        yield x, y + (0.1 + 0.2 * x[:, 0].abs()) * torch.randn(batch, generator=gen)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].clamp(-8, 8).exp())


@scenario(
    family="haar_fog_clearance_gaussian_nll_mlp",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, fc2, mean and log_var heads) predicting when a North Sea haar clears, as a Gaussian with heteroscedastic noise, RMSprop at 1e-3, Gaussian NLL (log-variance clamped), gradient accumulation over 2 batches, ReduceLROnPlateau. The NLL falls; finite.",
)
def h245_haar_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(24512)
    model = FogNet(10)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(ctx, model, opt, _haar(gen, 32), 150, _gauss_nll, sched=sched, accumulate=2)
    ctx.check("NLL fell by over 0.3", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.3)
    ctx.check("finite", _finite(ctx.losses))


def _loess(gen, batch, seed=14):
    """Twelve standardised readings of a loess terrace (slope, rainfall, grain size,
    vegetation, ...) and its yearly erosion, standardised, with heavy-tailed survey noise."""
    for x, y in _readings(gen, batch, 12, seed, noise=0.0):
        noise = torch.distributions.StudentT(3.0).sample((batch,)) * 0.1
        yield x, y + noise


@scenario(
    family="loess_terrace_erosion_fp16_huber_mlp",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) regressing a loess terrace's yearly erosion from 12 standardised readings with Student-t survey noise, Huber loss, Adamax at 2e-3 with two param groups (no weight decay on biases, 1e-4 elsewhere), StepLR halving every 60 steps, fp16 autocast with a torch.amp.GradScaler, clipping at 1 after unscaling. The loss falls; finite.",
)
def h245_loess_fp16_huber_control(ctx: Context) -> None:
    gen = seeded(24513)
    model = Stack(12, hidden=64, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.Adamax(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loss_fn(out, y):
        return F.huber_loss(out.float(), y, delta=0.5)

    _train(
        ctx,
        model,
        opt,
        _loess(gen, 64),
        150,
        loss_fn,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=torch.float16,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))
