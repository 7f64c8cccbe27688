"""Held-out set 196 (``h196_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a trawl-net catch classifier whose hand-rolled learning-rate finder
never restores the weights, a vineyard ripeness regressor whose padded final batch sums its
masked loss, a snowboard halfpipe trick Mish classifier trained with nll_loss on raw logits, a
bronze-casting porosity deep tanh net whose init helper applies two gains, a triathlon
transition-time regressor under OneCycleLR with max_lr typed 10x, an ice-carving fracture
residual classifier whose layer-wise lr decay was typed 0.05 for 0.95, a peloton power
regressor fed one shard with its columns shifted, a fire-whirl ember-count Poisson net with an
unclamped log of wind speed, a pizza-oven char regressor whose hand-written weight decay has its
sign flipped, a sword-polishing stage classifier with a logit temperature typed 2e-3 for 2e-1, and
three controls (a hand-pulled-noodle ELU multi-label net with dropout and weight decay, a
sushi-rice fp16 Gaussian-NLL regressor with accumulation, a virga radar-echo tied GRU with
ReduceLROnPlateau).

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
):
    """The file's training loop. ``before(step)`` runs first (schedules, injected bugs),
    ``alter(step, x, y)`` changes a batch, ``watch(step, out, x, y)`` records after the forward
    pass, ``after(step)`` after the optimizer step; ``accumulate`` micro-batches a step; a
    ``loss_fn`` may take the step as a third argument; stops after logging a NaN loss unless
    told not to."""
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


SWEEP_END = 30


def _echoes(gen, batch, seed, noise=0.25):
    """Sixteen echo-sounder channels as backscatter energy scaled to [0, 1] (non-negative),
    one mean profile per dominant species (6), noisy."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(6, 16, generator=g)
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        yield (protos[y] + noise * torch.randn(batch, 16, generator=gen)).clamp(0, 1), y


@scenario(
    family="trawl_net_catch_echo_relu_classifier",
    optimizer="SGD(momentum)",
    cause="loss_of_plasticity",
    where=("fc1",),
    diverges=None,
    onset=27,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) naming which of 6 species dominates a trawl haul from 16 "
    "echo-sounder channels (backscatter energy scaled to [0, 1]), SGD with momentum 0.9, "
    "cross-entropy. The training script starts with a hand-rolled learning-rate range test "
    "(lr from 1e-4 to 10 over 30 steps) on the model itself and, unlike library finders, "
    "never restores the weights afterwards: it only sets the chosen lr of 0.02. The last steps "
    "of the sweep (lr past 1) throw fc1's weights and biases negative on the non-negative "
    "inputs; from about step 27 most of fc1's ReLUs are dead on every batch, over 90% by "
    "step 30, and they stay dead for the rest of the run, which crawls on the few survivors "
    "to a loss several times that of the same run without the sweep.",
)
def h196_trawl_lr_finder_not_restored(ctx: Context) -> None:
    gen = seeded(19601)
    model = Stack(16, hidden=64, out=6)
    twin = Stack(16, hidden=64, out=6)
    twin.load_state_dict(model.state_dict())
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    dead = []

    def before(step):
        if step < SWEEP_END:
            opt.param_groups[0]["lr"] = 1e-4 * 10 ** (step / 6)
        elif step == SWEEP_END:
            opt.param_groups[0]["lr"] = 0.02

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(dead_fraction(model.fc1(x)))

    _train(
        ctx,
        model,
        opt,
        _echoes(gen, 64, seed=1),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=watch,
    )
    # the same run without the sweep, for comparison (not monitored)
    tgen = torch.Generator().manual_seed(19601)
    topt = torch.optim.SGD(twin.parameters(), lr=0.02, momentum=0.9)
    tdata, tls = _echoes(tgen, 64, seed=1), []
    for _ in range(200):
        x, y = next(tdata)
        loss = F.cross_entropy(twin(x), y)
        topt.zero_grad()
        loss.backward()
        topt.step()
        tls.append(float(loss.detach()))
    ls = ctx.losses
    ctx.check("under 25% of fc1 units dead in the first 20 steps", max(dead[:20]) < 0.25)
    ctx.check("over 50% of fc1 units dead at step 27", dead[27] > 0.5)
    ctx.check("over 90% of fc1 units dead from step 30 on", min(dead[SWEEP_END:]) > 0.9)
    ctx.check(
        "loss over the last 20 steps 3x that of the run without the sweep",
        _mean(ls[-20:]) > 3 * _mean(tls[-20:]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- vineyard: the padded final batch of the epoch sums its masked loss -------------------------


def _vine_blocks(gen, batch, seed, rows=6424):
    """One epoch after another over a fixed table of vineyard blocks: 12 standardised readings
    (degree-days, canopy, soil moisture, ...) and the sugar (Brix, standardised) of 8 sampled
    vine rows, about a fifth of them not sampled (masked); the final batch of each epoch is
    short and padded to full size with masked rows. Yields (x, (y, mask, padded))."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 8, generator=g) / math.sqrt(12)
    x_all = torch.randn(rows, 12, generator=g)
    y_all = torch.tanh(x_all @ w) + 0.1 * torch.randn(rows, 8, generator=g)
    m_all = (torch.rand(rows, 8, generator=g) > 0.2).float()
    while True:
        order = torch.randperm(rows, generator=gen)
        for i in range(0, rows, batch):
            idx = order[i : i + batch]
            x, y, m = x_all[idx], y_all[idx], m_all[idx]
            padded = len(idx) < batch
            if padded:
                pad = batch - len(idx)
                x = torch.cat([x, torch.zeros(pad, 12)])
                y = torch.cat([y, torch.zeros(pad, 8)])
                m = torch.cat([m, torch.zeros(pad, 8)])
            yield x, (y, m, padded)


@scenario(
    family="vineyard_block_brix_multi_row_regressor",
    optimizer="RMSprop",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the sugar (standardised Brix) of 8 sampled vine "
    "rows of a block from 12 standardised readings, RMSprop at 1e-3, gradient clipping at norm "
    "1, a masked MSE over the rows that were sampled. The table has 6424 blocks, so each epoch "
    "ends with a short batch of 24 padded to 64 with masked rows; that code path, added for the"
    " padding, computes (err**2 * mask).sum() and never divides by mask.sum(). At step 100 (the"
    " only epoch end in the run) the backpropagated (and logged) loss is about 200x and the "
    "gradient about 300x their usual size for that one step; clipping bounds the update and the"
    " next step is normal again. The data are ordinary.",
)
def h196_vineyard_padded_batch_masked_sum(ctx: Context) -> None:
    gen = seeded(19602)
    model = Stack(12, hidden=64, out=8, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def masked_mse(out, target):
        y, m, padded = target
        err = (out - y) ** 2 * m
        if padded:
            return err.sum()  # the padding path: forgot / m.sum()
        return err.sum() / m.sum()

    _train(ctx, model, opt, _vine_blocks(gen, 64, seed=2), 180, masked_mse, clip=1.0)
    g, ls = ctx.grad_norms, ctx.losses
    onset = 100
    base = _median(g[onset - 20 : onset])
    ctx.check(
        "gradient norm at step 100 above 50x the median of the 20 before", g[onset] > 50 * base
    )
    ctx.check(
        "no other step's gradient above 5x that median",
        all(v < 5 * base for i, v in enumerate(g[20:], 20) if i != onset),
    )
    ctx.check("loss fell before step 100", _fell(ls[:onset]))
    ctx.check(
        "loss back below 2x its pre-spike level 5 steps later",
        _mean(ls[onset + 5 : onset + 15]) < 2 * _mean(ls[onset - 10 : onset]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- snowboard halfpipe: nll_loss on raw logits (the log_softmax left out) ----------------------


@scenario(
    family="snowboard_halfpipe_trick_mish_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A Mish MLP (fc1, fc2, head) naming which of 8 halfpipe tricks a rider threw from 20 "
    "standardised board-IMU features, Adamax at 2e-3. The loss is F.nll_loss(logits, y) on the "
    "head's raw logits: the model's log_softmax was removed when the loss was to be switched to "
    "cross_entropy, and the switch never landed. The loss is then -logit[y], unbounded below: "
    "the target logit is pushed up (and the others are left to wander) without limit, the "
    "head's logits grow steadily to hundreds of times their initial size and the logged loss "
    "runs off towards minus infinity; nothing overflows within the run.",
)
def h196_snowboard_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(19603)
    model = Stack(20, hidden=64, out=8, act=nn.Mish)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    top = []
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 8, seed=3),
        200,
        F.nll_loss,
        classifier=True,
        watch=lambda s, o, x, y: top.append(float(o.detach().abs().amax(-1).mean())),
    )
    ls = ctx.losses
    ctx.check("head logits grew 50x from step 5", _mean(top[-10:]) > 50 * top[5])
    ctx.check(
        "head logits larger every 20 steps",
        all(top[i + 20] > top[i] for i in range(0, len(top) - 20, 20)),
    )
    ctx.check("logged loss below -100 at the end", _mean(ls[-10:]) < -100)
    ctx.check("loss finite throughout", _finite(ls))


# -- bronze casting: a deep tanh net whose init helper applies two gains -----------------------


_HALF_SQRT2 = 1.0 / math.sqrt(2)  # std 1/sqrt(fan_in), the intended tanh init


class PourNet(nn.Module):
    """A deep tanh stack: body.0, body.2, ... Linear, body.1, body.3, ... Tanh, a Linear head;
    weights ~ N(0, (gain * sqrt(2 / fan_in))^2) by the shop's init helper."""

    def __init__(self, d_in=10, width=48, depth=20, gain=_HALF_SQRT2):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else width, width), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, 1)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=gain * math.sqrt(2 / m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.body(x)).squeeze(-1)


def _layer_grads(model) -> list[float]:
    return [float(m.weight.grad.norm()) for m in model.body if isinstance(m, nn.Linear)]


@scenario(
    family="bronze_casting_porosity_deep_tanh_mlp",
    optimizer="SGD(nesterov)",
    cause="exploding_gradients",
    where=("body.0",),
    diverges="auto",
    heldout=True,
    note="A 20-layer tanh MLP (body.0 ... body.38 Linear, a Linear head) predicting the "
    "standardised porosity of a bronze casting from 10 standardised pour readings (melt "
    "temperature, mould preheat, pour rate, ...), SGD with Nesterov momentum 0.9 at 3e-2, MSE. "
    "The shop's init helper computes std = gain * sqrt(2 / fan_in) (He's factor built in) and "
    "is called with gain = calculate_gain('tanh') = 5/3, so the weights have std 2.36/sqrt(fan_in) "
    "where 1/sqrt(fan_in) was meant: the tanh stack is in its chaotic regime, activations stay "
    "bounded but the backward gradients grow layer after layer, body.0's weight gradient about "
    "20x the last layer's at step 0; the early layers take the largest steps and the loss "
    "blows up.",
)
def h196_bronze_double_init_gain(ctx: Context) -> None:
    gen = seeded(19604)
    data = _readings(gen, 64, 10, seed=4)
    model = PourNet(gain=5 / 3)
    twin = PourNet()
    x0, y0 = next(data)
    F.mse_loss(model(x0), y0).backward()
    F.mse_loss(twin(x0), y0).backward()
    bad, good = _layer_grads(model), _layer_grads(twin)
    model.zero_grad(set_to_none=True)
    opt = torch.optim.SGD(model.parameters(), lr=3e-2, momentum=0.9, nesterov=True)
    _train(ctx, model, opt, data, 150, F.mse_loss)
    ls = ctx.losses
    ctx.check("body.0's weight gradient 10x the last layer's at step 0", bad[0] > 10 * bad[-1])
    ctx.check(
        "gradient grows back through depth (each 5th layer above the next 5th)",
        all(a > b for a, b in zip(bad[::5], bad[5::5], strict=False)),
    )
    ctx.check(
        "with std 1/sqrt(fan_in) body.0's gradient within 3x the last layer's",
        good[0] < 3 * good[-1],
    )
    ctx.check(
        "loss 1000x its first value or non-finite",
        _first_bad(ls) is not None or max(ls) > 1000 * ls[0],
    )


# -- triathlon: OneCycleLR with max_lr typed 10x -------------------------------------------------


@scenario(
    family="triathlon_transition_time_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=20,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting an athlete's standardised T1 transition time "
    "(swim-to-bike) from 14 standardised readings (wetsuit, rack distance, heart rate, ...), "
    "plain SGD, MSE, under OneCycleLR over 200 steps (pct_start 0.3, no momentum cycling). The "
    "recipe's max_lr of 0.1 was typed 1.0: the warm-up ramps the rate from 0.04 towards 1, "
    "lr x sharpness passes the stability limit 2 at about step 20 of the ramp (0.3 at step "
    "5, 3 at step 25), the loss oscillates, then blows up before the peak.",
)
def h196_triathlon_onecycle_max_lr_typo(ctx: Context) -> None:
    gen = seeded(19605)
    model = Stack(14, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=1.0, total_steps=200, pct_start=0.3, cycle_momentum=False
    )
    data = _readings(gen, 64, 14, seed=5)
    px, py = next(data)
    sharp, rates = [], []

    def before(step):
        rates.append(opt.param_groups[0]["lr"])
        if step % 5 == 0:
            sharp.append((step, _sharpness(model, F.mse_loss, px, py)))

    _train(ctx, model, opt, data, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    product = dict((st, rates[st] * lam) for st, lam in sharp)
    ctx.check(
        "lr x sharpness below 1.5 up to step 15", max(product[st] for st in (0, 5, 10, 15)) < 1.5
    )
    ctx.check("lr x sharpness above 2.5 at step 25", product[25] > 2.5)
    ctx.check(
        "lr x sharpness above 2 at steps 30 to 45",
        min(product.get(st, 0.0) for st in (30, 35, 40, 45)) > 2,
    )
    ctx.check("loss fell before step 20", _fell(ls[:20], k=5))
    ctx.check(
        "loss blew up 100x its minimum or non-finite",
        _first_bad(ls) is not None or max(ls) > 100 * min(ls),
    )


# -- ice carving: a layer-wise lr decay typed 0.05 for 0.95 ------------------------------------


class ChiselBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, h):
        return h + self.fc2(self.act(self.fc1(self.norm(h))))


class IceNet(nn.Module):
    def __init__(self, d_in=18, dim=48, depth=4, classes=5):
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.blocks = nn.ModuleList(ChiselBlock(dim) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.stem(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


@scenario(
    family="ice_carving_fracture_residual_classifier",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("stem", "blocks.0", "blocks.1", "blocks.2"),
    diverges=None,
    heldout=True,
    note="A pre-LN residual MLP (stem, four GELU blocks, a final LayerNorm and head) grading the "
    "fracture risk (5 classes) of an ice-sculpture cut from 18 standardised readings (block "
    "temperature, chisel angle, grain, ...), AdamW at 2e-3 with weight decay 0.01, "
    "cross-entropy, param groups by depth with layer-wise lr decay: lr = base * decay ** "
    "(5 - depth). The decay of 0.95 was typed 0.05: the head (and final norm) learn at 2e-3 and "
    "blocks.3 at 1e-4, but blocks.2 gets 5e-6, blocks.1 2.5e-7, blocks.0 1.25e-8 and the stem "
    "6e-10: their updates are thousands to millions of times too small for their weights, and "
    "the network trains only its top on nearly random features.",
)
def h196_ice_carving_llrd_typo(ctx: Context) -> None:
    gen = seeded(19606)
    model = IceNet()
    base, decay = 2e-3, 0.05
    parts = [("stem", model.stem)] + [(f"blocks.{i}", b) for i, b in enumerate(model.blocks)]
    parts += [("head", nn.ModuleList([model.norm, model.head]))]
    groups = [
        {"params": list(m.parameters()), "lr": base * decay ** (5 - depth), "name": name}
        for depth, (name, m) in enumerate(parts)
    ]
    opt = torch.optim.AdamW(groups, lr=base, weight_decay=0.01)
    ratios: dict[str, list[float]] = {name: [] for name, _ in parts}
    prev = {name: _snapshot(m.parameters()) for name, m in parts}

    def after(step):
        for name, m in parts:
            now = _snapshot(m.parameters())
            num = math.sqrt(
                sum(float((a - b).pow(2).sum()) for a, b in zip(now, prev[name], strict=True))
            )
            den = math.sqrt(sum(float(a.pow(2).sum()) for a in now))
            ratios[name].append(num / den)
            prev[name] = now

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 18, 5, seed=6, noise=0.5),
        150,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    r = {name: _mean(v[10:]) for name, v in ratios.items()}
    ctx.check("stem's mean update ratio below 1e-8", r["stem"] < 1e-8)
    ctx.check(
        "blocks.0-2's mean update ratios below 1e-4",
        max(r["blocks.0"], r["blocks.1"], r["blocks.2"]) < 1e-4,
    )
    ctx.check("head's mean update ratio above 1e-3", r["head"] > 1e-3)
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- peloton: one shard written with its columns shifted -------------------------------------------


@scenario(
    family="peloton_rider_power_silu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting a rider's standardised power output in the "
    "peloton from 12 standardised readings (position in the bunch, crosswind, road gradient, "
    "cadence, ...), ASGD at 1e-2, MSE, clip_grad_norm_ at 5. One shard of the training table "
    "was exported with a missing column, so every field after it is shifted by one: the "
    "stage's altitude in metres (about 1200 to 2400) sits in the standardised road-gradient "
    "slot and the others are out of place. The loader never checks ranges; the batch of step "
    "90 comes entirely from that shard: its loss is hundreds of times and its gradient tens "
    "of thousands of times the usual for that one step (clipping bounds the update itself), "
    "and the loss recovers over the following steps.",
)
def h196_peloton_shifted_column_shard(ctx: Context) -> None:
    gen = seeded(19607)
    model = Stack(12, hidden=64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    onset = 90
    peak = []

    def alter(step, x, y):
        if step == onset:
            alt = 1200 + 1200 * torch.rand(x.shape[0], 1, generator=gen)
            x = torch.cat([x[:, :3], alt, x[:, 3:-1]], 1)
        peak.append(float(x.abs().max()))
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=7),
        200,
        F.mse_loss,
        alter=alter,
        clip=5.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check("inputs within 7 except at step 90", max(peak[:onset] + peak[onset + 1 :]) < 7)
    ctx.check("an input above 1000 at step 90", peak[onset] > 1000)
    ctx.check("loss at step 90 above 100x the median before", ls[onset] > 100 * _median(ls[:onset]))
    ctx.check(
        "gradient at step 90 above 100x the median before", g[onset] > 100 * _median(g[:onset])
    )
    ctx.check(
        "loss back within 3x of its level before by the last 20 steps",
        _mean(ls[-20:]) < 3 * _mean(ls[onset - 20 : onset]),
    )
    ctx.check("loss finite throughout", _finite(ls))


# -- fire whirl: an unclamped log of wind speed --------------------------------------------------


class LogWind(nn.Module):
    """Replaces the raw wind speed (m/s, column 0) by its log, no clamp, no epsilon."""

    def __init__(self):
        super().__init__()
        self.last_min = 0.0

    def forward(self, x):
        lw = torch.log(x[:, :1])
        self.last_min = float(lw.detach().min())
        return torch.cat([lw, x[:, 1:]], 1)


class EmberNet(nn.Module):
    def __init__(self, d_in=9, hidden=64):
        super().__init__()
        self.log_wind = LogWind()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act1(self.fc1(self.log_wind(x)))
        return self.head(self.act2(self.fc2(h))).squeeze(-1)


def _ember_minutes(gen, batch, seed, calm_from=None, calm_rows=3):
    """Wind speed at the whirl's base in m/s (1 to 15) and 8 standardised readings (fuel load,
    plume temperature, ...); the target is the count of embers lofted past a catch screen in
    a minute (Poisson). From ``calm_from`` the whirl has collapsed on a few rows of each batch
    and the anemometer reads exactly 0."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g) / math.sqrt(8)
    step = 0
    while True:
        wind = 1 + 14 * torch.rand(batch, 1, generator=gen)
        if calm_from is not None and step >= calm_from:
            wind[:calm_rows] = 0.0
        z = torch.randn(batch, 8, generator=gen)
        rate = torch.exp(0.5 + 0.6 * torch.log(wind.squeeze(1) + 0.5) + 0.5 * torch.tanh(z @ w))
        step += 1
        yield torch.cat([wind, z], 1), torch.poisson(rate, generator=gen)


@scenario(
    family="fire_whirl_ember_count_poisson_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("log_wind",),
    diverges=70,
    onset=70,
    heldout=True,
    note="A SiLU MLP counting the embers a fire whirl lofts past a catch screen per minute, "
    "Poisson NLL on a log-rate head (F.poisson_nll_loss, log_input=True), NAdam at 2e-3. A "
    "`log_wind` module replaces the raw wind speed by log(wind) with no clamp or epsilon; "
    "wind speeds were 1 to 15 m/s in every batch until step 70, when the whirl collapses on "
    "some rows and the anemometer reads exactly 0: log(0) = -inf, fc1 turns it into inf, "
    "SiLU(-inf) into NaN and the loss is NaN at step 70.",
)
def h196_fire_whirl_log_wind_zero(ctx: Context) -> None:
    gen = seeded(19608)
    model = EmberNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    low = []
    _train(
        ctx,
        model,
        opt,
        _ember_minutes(gen, 64, seed=8, calm_from=70),
        120,
        lambda out, y: F.poisson_nll_loss(out, y, log_input=True),
        watch=lambda s, o, x, y: low.append(model.log_wind.last_min),
    )
    ls = ctx.losses
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check("loss fell before step 70", _fell(ls[:70]))
    ctx.check("log_wind's output finite before step 70", all(math.isfinite(v) for v in low[:70]))
    ctx.check("log_wind's output -inf at step 70", low[70] == -math.inf)
    ctx.check("loss NaN at step 70", math.isnan(ls[70]))


# -- pizza oven: a hand-written weight decay with its sign flipped --------------------------------


@scenario(
    family="pizza_oven_crust_char_silu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the standardised char of a wood-fired pizza's "
    "cornicione from 10 standardised readings (dome temperature, floor temperature, bake "
    "seconds, hydration, ...), Adagrad at 5e-2, Huber loss, with a hand-written decoupled "
    "weight decay after each step (Adagrad's own weight_decay couples it to the gradient). It "
    "was written p.mul_(1 + lr * wd) for p.mul_(1 - lr * wd), wd 0.3: every weight grows 1.5% "
    "a step while Adagrad's steps shrink, the fit is lost bit by bit and the loss, after "
    "falling for the first steps, climbs slowly and steadily for the rest of the run, with "
    "no single event.",
)
def h196_pizza_oven_decay_sign(ctx: Context) -> None:
    gen = seeded(19609)
    model = Stack(10, hidden=64, act=nn.SiLU)
    lr, wd = 5e-2, 0.3
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    norm0 = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=9), 300, F.huber_loss, after=after)
    ls = ctx.losses
    norm1 = math.sqrt(sum(float(p.detach().pow(2).sum()) for p in model.parameters()))
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    windows = [_mean(ls[i : i + 50]) for i in range(100, 300, 50)]
    ctx.check(
        "loss at the end 5x its lowest 10-step mean",
        _mean(ls[-10:]) > 5 * _mean(ls[max(0, low - 5) : low + 5]),
    )
    ctx.check(
        "each 50-step mean from step 100 above the last",
        all(b > a for a, b in zip(windows, windows[1:], strict=False)),
    )
    ctx.check(
        "no step's loss 5x the one before", all(b < 5 * a for a, b in zip(ls, ls[1:], strict=False))
    )
    ctx.check("weight norm grew 5x", norm1 > 5 * norm0)
    ctx.check("loss finite throughout", _finite(ls))


# -- sword polishing: a contrastive temperature of 0.01 on a plain classifier ------------------


class StoneNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="sword_polishing_stone_stage_gelu_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) naming which of 6 polishing stones (coarse to finishing) "
    "a sword blade was last worked with, from 16 standardised reflectance readings, Adam at "
    "1e-3, cross-entropy on logits divided by a temperature. The temperature calibrated on the "
    "previous model, 2e-1, was typed 2e-3 in the config: the logits are 500x their scale from "
    "the start; the float32 softmax rounds most rows to exactly 0/1 for the whole run (the "
    "correct ones give no gradient, the wrong ones a loss in the tens), the loss stays high "
    "and noisy.",
)
def h196_sword_polishing_temperature(ctx: Context) -> None:
    gen = seeded(19610)
    model = StoneNet(temperature=2e-3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    coll, onehot = [], []

    def watch(step, out, x, y):
        p = torch.softmax(out.detach().float(), -1)
        coll.append(collapsed_fraction(out.detach(), y))
        onehot.append(float((p.amax(-1) == 1.0).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=10, noise=0.9),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over half the rows' softmax exactly one-hot from step 20", min(onehot[20:]) > 0.5)
    ctx.check("over half the rows give the target exactly 1.0 at the end", _mean(coll[-10:]) > 0.5)
    ctx.check("loss finite throughout", _finite(ctx.losses))
    ctx.check("loss above 1 at the end (the wrong rows)", _mean(ctx.losses[-10:]) > 1)


# -- controls ------------------------------------------------------------------------------------


class NoodleNet(nn.Module):
    def __init__(self, d_in=14, hidden=96, labels=5, p=0.2):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ELU()
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ELU()
        self.drop2 = nn.Dropout(p)
        self.head = nn.Linear(hidden, labels)

    def forward(self, x):
        h = self.drop1(self.act1(self.fc1(x)))
        return self.head(self.drop2(self.act2(self.fc2(h))))


def _noodle_pulls(gen, batch, seed):
    """Fourteen standardised readings of a hand-pulled noodle batch (dough hydration, rest
    time, number of folds, ...) and 5 defect flags (breaks, thick spots, ...), each a noisy
    threshold of a different combination."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(14, 5, generator=g) / math.sqrt(14)
    while True:
        x = torch.randn(batch, 14, generator=gen)
        logit = 2.5 * torch.tanh(x @ w) + 0.5 * torch.randn(batch, 5, generator=gen)
        yield x, (logit > 0).float()


@scenario(
    family="noodle_pulling_defect_elu_multilabel",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. An ELU MLP with dropout 0.2 after each hidden layer flagging 5 defects of a "
    "hand-pulled noodle batch from 14 standardised readings, BCE with logits, AdamW at 3e-3 "
    "with weight decay 0.05, CosineAnnealingLR over the run, clip_grad_norm_ at 1.0. An "
    "ordinary run.",
)
def h196_noodle_dropout_weight_decay(ctx: Context) -> None:
    gen = seeded(19611)
    model = NoodleNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    _train(
        ctx,
        model,
        opt,
        _noodle_pulls(gen, 64, seed=11),
        200,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        clip=1.0,
    )
    ctx.check("loss fell by 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("loss finite throughout", _finite(ctx.losses))


class RiceNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="sushi_rice_vinegar_uptake_gaussian_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A SiLU MLP with a mean and a softplus-variance head predicting the vinegar "
    "uptake of sushi rice (standardised) from 10 standardised readings (rice temperature, "
    "fanning time, ...), Gaussian NLL, RAdam at 2e-3 with a 20-step LinearLR warm-up, fp16 "
    "autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches. An "
    "ordinary run.",
)
def h196_sushi_rice_fp16_gaussian(ctx: Context) -> None:
    gen = seeded(19612)
    model = RiceNet()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=20)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=12, noise=0.15),
        200,
        _gaussian_nll,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("loss fell by 0.5 nats", _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("loss finite throughout", _finite(ls))
    ctx.check("scaler scale stayed at or above 1024", min(ctx.scales) >= 1024)


class VirgaGRU(nn.Module):
    def __init__(self, vocab=12, dim=32):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = nn.GRU(dim, dim, batch_first=True)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx):
        h, _ = self.rnn(self.embed(idx))
        return self.head(torch.tanh(self.proj(h)))


def _radar_echoes(gen, batch, length=24, seed=13, vocab=12):
    """Radar echo classes of a rain shaft scan by scan (12 classes from clear air to heavy
    virga), a sticky Markov chain: most scans keep their class or move one step."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.rand(vocab, vocab, generator=g) * 0.2
    for i in range(vocab):
        trans[i, i] += 3.0
        trans[i, (i + 1) % vocab] += 1.5
        trans[i, (i - 1) % vocab] += 1.0
    trans = trans / trans.sum(1, keepdim=True)
    while True:
        s = torch.randint(0, vocab, (batch,), generator=gen)
        seq = [s]
        for _ in range(length):
            s = torch.multinomial(trans[s], 1, generator=gen).squeeze(1)
            seq.append(s)
        win = torch.stack(seq, 1)
        yield win[:, :-1], win[:, 1:]


@scenario(
    family="virga_radar_echo_tied_gru",
    optimizer="SGD(momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A GRU sequence model over radar echo classes of a virga rain shaft (12 "
    "tokens), the output head tied to the input embedding, predicting the next scan's class; "
    "SGD with momentum 0.9 at 0.5, clip_grad_norm_ at 1.0, cross-entropy with label smoothing "
    "0.1, ReduceLROnPlateau on the training loss. An ordinary run.",
)
def h196_virga_tied_gru_plateau(ctx: Context) -> None:
    gen = seeded(19613)
    model = VirgaGRU()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)

    def loss_fn(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), label_smoothing=0.1)

    _train(ctx, model, opt, _radar_echoes(gen, 32), 200, loss_fn, sched=sched, clip=1.0)
    ctx.check(
        "loss over the last 20 steps below 60% of the first step's",
        _mean(ctx.losses[-20:]) < 0.6 * ctx.losses[0],
    )
    ctx.check("head tied to the embedding", model.head.weight is model.embed.weight)
    ctx.check("loss finite throughout", _finite(ctx.losses))
