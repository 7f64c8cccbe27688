"""Held-out set 536 (``h536_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: eternal-flame methane-seep flicker regressor with a gradient-check loss multiplier left
on for one step (adam_second_moment_poisoned, Adam); freerunning landing-type classifier with
RMSprop lr typed 5e-2 for 5e-4 (loss_of_plasticity); type-founding matrix-depth regressor with
a batch standardiser that divides by the batch std with no eps (nonfinite, Adadelta); placer
sluice-box gold-recovery regressor with one shard in milligrams (data_outlier, SGD momentum);
rabab string-buzz regressor whose resumed step sums instead of averaging (gradient_spike, SGD
Nesterov, accumulation); geyserite sinter-growth deep tanh MLP with init gain 4.0 for 5/3
(exploding_gradients, ASGD); windlass hauling-load regressor with StepLR gamma typed 10 for 0.1
(sharpness_above_limit, plain SGD); armourer helmet-raising regressor whose fc2 group lr is 0
from a config key typo (update_ratio_out_of_range, NAdam); rhythmic-gymnastics apparatus
classifier with temperature typed 0.001 for 1.0 (softmax_collapse, AdamW); gypsum-rose growth
regressor with its decoupled weight decay sign flipped (loss_divergence, RAdam).
Controls: topshur strum-energy GRU with a progressive sequence-length warm-up (AdamW, clipping;
the loss steps up at each lengthening), vaulting-horse pressure-mat capsule network with dynamic
routing (Adam, margin loss), drag-hunt scent-line Huber regressor (Adamax, OneCycleLR,
accumulation 2, clipping, noisy targets).
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


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


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
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step, loss)``. Stops after a non-finite
    loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(model(x), y)
        total = backprop(step, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
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


# -- 1. Adam's second moment poisoned by a one-step loss multiplier -------------------------------


@scenario(
    family="eternal_flame_methane_seep_flicker_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Eternal-flame methane-seep flicker-rate regressor (SiLU MLP on seep pressure, wind, "
    "rock temperature, rain and barometric readings, MSE, Adam lr 3e-3). A gradient check "
    "switched on for one step at 100 multiplies the backpropagated loss by 1e6 and is never "
    "switched off in the optimizer path: the one giant gradient fills Adam's second moment "
    "(fc1's median sqrt(v) over 30x), and for the following hundred steps the updates are a "
    "small fraction of what they were: the step's own update knocks the fit off (loss "
    "about 10x) and the stalled updates never bring it back.",
)
def h536_eternal_flame_adam_v_poisoned(ctx):
    gen = seeded(5361)
    model = _Net(6, 64, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    v_med, upd = {}, {}
    prev = {"w": _flat(model)}

    def backprop(step, loss):
        return loss * 1e6 if step == 100 else loss

    def after(step, loss):
        st = opt.state[model.fc1.weight]
        v_med[step] = float(st["exp_avg_sq"].sqrt().median())
        w = _flat(model)
        upd[step] = float((w - prev["w"]).norm())
        prev["w"] = w

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 5361),
        240,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    before_v = _median([v_med[s] for s in range(80, 100)])
    ctx.check("fc1 median sqrt(v) over 30x after the spike", v_med[101] > 30 * before_v)
    before_u = _mean([upd[s] for s in range(80, 100)])
    after_u = _mean([upd[s] for s in range(170, 240)])
    ctx.check("updates under 0.2x of before, 70+ steps on", after_u < 0.2 * before_u)
    ctx.check("loss finite", _finite(ctx.losses))


# -- 2. loss of plasticity: RMSprop lr typed 100x ---------------------------------------------------


@scenario(
    family="freerunning_landing_roll_type_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="Freerunning landing-type classifier (ReLU MLP on drop height, approach speed, "
    "contact time, knee and hip angle readings; 5 landings: precision, roll, kong, "
    "palm-spin, splat; readings fed raw, all positive; cross-entropy, RMSprop). The lr is "
    "typed 5e-2 for 5e-4: the first updates push fc1's pre-activations negative for every "
    "input and over half of act1's units never fire again; the units dead at step 100 are "
    "(almost all) still dead at the end, only the survivors learn.",
)
def h536_freerunning_relus_die(ctx):
    gen = seeded(5362)
    model = _Net(10, 64, 5, nn.ReLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=5e-2)
    probe = next(_grades(torch.Generator().manual_seed(9), 512, 10, 5, 5362))[0] + 3.0

    def dead():
        with torch.no_grad():
            h = model.act1(model.fc1(probe))
        return (h > 0).sum(0) == 0

    def raw(batches):
        for x, y in batches:
            yield x + 3.0, y

    mid = {}

    def after(step, loss):
        if step == 100:
            mid["dead"] = dead()

    dead0 = dead()
    losses, _ = _loop(
        ctx,
        model,
        opt,
        raw(_grades(gen, 64, 10, 5, 5362)),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    dead1 = dead()
    ctx.check("under 20% of act1 dead at the start", float(dead0.float().mean()) < 0.2)
    ctx.check("over 50% of act1 dead at the end", float(dead1.float().mean()) > 0.5)
    stay = float((dead1 & mid["dead"]).sum()) / max(float(mid["dead"].sum()), 1.0)
    ctx.check("over 40% dead at 100", float(mid["dead"].float().mean()) > 0.4)
    ctx.check("over 80% of the units dead at 100 still dead at the end", stay > 0.8)
    ctx.check("loss finite", _finite(losses))


# -- 3. nonfinite: a batch standardiser with no eps, a stuck gauge --------------------------------


class _BatchScale(nn.Module):
    """Standardises each column over the batch: (x - mean) / std, written without an eps."""

    def forward(self, x):
        return (x - x.mean(0)) / x.std(0)


class _ScaledNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.norm = _BatchScale()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.norm(x)))))
        return self.head(h).squeeze(-1)


@scenario(
    family="type_founding_matrix_strike_depth_batchscale_tanh_regressor",
    optimizer="Adadelta",
    cause="nonfinite",
    where=("norm",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Type-founding matrix strike-depth regressor (tanh MLP behind a hand-written batch "
    "standardiser, on punch force, copper hardness, mould temperature, metal temperature, "
    "drift angle and caster speed; MSE, Adadelta lr 1.0). The standardiser divides by the "
    "batch std with no eps; at step 80 a shard from a caster whose thermocouple was stuck "
    "gives one column exactly constant: 0/0 in 'norm', NaN in the forward pass, NaN loss at "
    "80.",
)
def h536_type_founding_std_no_eps(ctx):
    gen = seeded(5363)
    model = _ScaledNet(6)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    seen = {}

    def alter(step, x, y):
        if step == 80:
            x = x.clone()
            x[:, 3] = 0.5  # the stuck thermocouple
            seen["std"] = float(x[:, 3].std())
        return x, y

    hook = model.norm.register_forward_hook(
        lambda m, i, o: seen.__setitem__("nan", bool(torch.isnan(o).any()))
    )
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 5363), 160, F.mse_loss, alter=alter)
    hook.remove()
    ctx.check("finite before 80", _finite(losses[:80]))
    ctx.check("loss non-finite at 80", len(losses) == 81 and not math.isfinite(losses[80]))
    ctx.check("the stuck column's batch std is exactly 0", seen.get("std") == 0.0)
    ctx.check("norm's output holds NaN", seen.get("nan", False))


# -- 4. data outlier: one shard in milligrams ------------------------------------------------------


@scenario(
    family="placer_sluice_box_gold_recovery_tanh_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Placer-mining sluice-box gold-recovery regressor (tanh MLP on water flow, riffle "
    "height, box slope, feed rate, gravel size and clay content; MSE, SGD momentum 0.9, lr "
    "0.02, clipping at 1). The shard read at step 100 comes from a camp that logged recovered "
    "gold in milligrams instead of grams: targets 1000x, the loss jumps over 1000x and the "
    "gradient over 10x for that step, clipping holds the update and the run recovers.",
)
def h536_placer_sluice_milligram_shard(ctx):
    gen = seeded(5364)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == 100 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 5364), 220, F.mse_loss, alter=alter, clip=1.0
    )
    ctx.check("loss over 1000x the median at 100", losses[100] > 1000 * _median(losses[80:100]))
    ctx.check("gradient over 10x the median at 100", norms[100] > 10 * _median(norms[80:100]))
    ctx.check(
        "recovers: last 20 under 2x the 20 before onset",
        _mean(losses[-20:]) < 2 * _mean(losses[80:100]),
    )
    ctx.check("loss fell before onset", _fell(losses[:100]))


# -- 5. gradient spike: the resumed step sums instead of averaging --------------------------------


@scenario(
    family="rabab_gut_string_buzz_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="Rabab gut-string buzz-level regressor (SiLU MLP on string tension, skin head "
    "moisture, bridge height, bow pressure, bow speed and room humidity; MSE, SGD Nesterov "
    "lr 0.01, 4 micro-batches accumulated, clipping at 2). The job is resumed at step 90 "
    "from a config whose loss reduction reads 'sum' and whose accumulation divisor is "
    "dropped, for that one step only: the backpropagated loss is batch x micro-batches (256x) "
    "the logged one, the gradient spikes over 50x with an ordinary logged loss, clipping "
    "holds the update.",
)
def h536_rabab_resume_sum_reduction(ctx):
    gen = seeded(5365)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    batches = _readings(gen, 16, 6, 5365)
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(200):
        total = 0.0
        for _ in range(4):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            if step == 90:
                (F.mse_loss(model(x), y, reduction="sum")).backward()
            else:
                (loss / 4).backward()
            total += float(loss.detach()) / 4
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
    ctx.check("gradient over 50x the median at 90", norms[90] > 50 * _median(norms[70:90]))
    ctx.check("logged loss ordinary at 90 (under 3x)", losses[90] < 3 * _median(losses[70:90]))
    ctx.check("loss fell and is finite", _fell(losses))


# -- 6. exploding gradients: init gain typed 2.5 through ten tanh layers --------------------------


@scenario(
    family="geyserite_sinter_growth_deep_tanh_regressor",
    optimizer="ASGD",
    cause="exploding_gradients",
    where=("net.0",),
    diverges=None,
    heldout=True,
    note="Geyserite sinter-growth regressor (ten-layer tanh MLP, 'net.0' ... 'net.18', on "
    "eruption interval, silica content, pool temperature, splash height, wind and pH; MSE, "
    "ASGD lr 1e-3). The init helper is called with xavier gain 4.0 (copied from a sigmoid "
    "net's config) where calculate_gain('tanh') = 5/3 was meant: the gradient grows on its "
    "way back through depth, the first layer's gradient is over 10x the last hidden layer's "
    "from step 0 to the end.",
)
def h536_geyserite_init_gain(ctx):
    gen = seeded(5366)
    sizes = [6] + [48] * 10
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=False):
        lin = nn.Linear(a, b)
        nn.init.xavier_normal_(lin.weight, gain=4.0)
        nn.init.zeros_(lin.bias)
        layers += [lin, nn.Tanh()]
    layers.append(nn.Linear(48, 1))
    net = nn.Sequential(*layers)
    model = nn.Module()
    model.net = net
    model.forward = lambda x: net(x).squeeze(-1)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-3)
    ratios = []
    batches = _readings(gen, 64, 6, 5366)
    ctx.attach(model, opt)
    losses = []
    for _step in range(120):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ratios.append(float(net[0].weight.grad.norm() / net[18].weight.grad.norm()))
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("first layer gradient over 10x the last hidden one at step 0", ratios[0] > 10)
    ctx.check("still over 10x at the end", _median(ratios[-20:]) > 10)
    ctx.check("loss finite", _finite(losses))


# -- 7. sharpness above limit: StepLR gamma typed 10 ------------------------------------------------


@scenario(
    family="windlass_anchor_haul_load_relu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="Windlass anchor-hauling load regressor (ReLU MLP on chain length out, sea state, "
    "drum speed, pawl engagement, wind and depth; MSE, plain SGD lr 0.05). StepLR every 80 "
    "steps with gamma typed 10 for 0.1: at step 80 the lr becomes 0.5, lr x sharpness passes "
    "2 and the loss jumps over 10x; at 160 the lr becomes 5 and the loss goes non-finite.",
)
def h536_windlass_steplr_gamma(ctx):
    gen = seeded(5367)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=80, gamma=10.0)
    batches = _readings(gen, 64, 6, 5367)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(3), 256, 6, 5367))
    sharp = {}

    def before(step):
        if step == 80:  # top Hessian eigenvalue by power iteration on a fixed batch
            params = [p for p in model.parameters()]
            v = [torch.randn_like(p) for p in params]
            lam = 0.0
            for _ in range(30):
                n = torch.sqrt(sum((u * u).sum() for u in v))
                v = [u / n for u in v]
                loss = F.mse_loss(model(probe_x), probe_y)
                g = torch.autograd.grad(loss, params, create_graph=True)
                hv = torch.autograd.grad(
                    sum((a * b).sum() for a, b in zip(g, v, strict=True)), params
                )
                lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
                v = [h.detach() for h in hv]
            sharp["lam"] = lam
            sharp["lr"] = opt.param_groups[0]["lr"]

    losses, _ = _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ctx.check("lr x sharpness past 2 at step 80", sharp["lr"] * sharp["lam"] > 2)
    ctx.check("lr x sharpness under 2 before (lr 0.05)", 0.05 * sharp["lam"] < 2)
    blown = (not _finite(losses)) or max(losses[80:]) > 100 * min(losses[:80])
    ctx.check("loss blows up after 80 (over 100x or non-finite)", blown)
    ctx.check("loss fell before 80", _fell(losses[:80]))


# -- 8. update ratio out of range: fc2's lr is 0 from a key typo -----------------------------------


@scenario(
    family="armourer_helmet_raising_skull_thickness_gelu_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Armourer helmet-raising skull-thickness regressor (GELU MLP on hammer weight, blow "
    "count, stake radius, annealing passes, sheet gauge and steel carbon; Huber, NAdam with "
    "one param group per layer). The per-layer lr table is read with key 'fc_2' while the "
    "config says 'fc2': fc2's group falls back to lr 0.0, fc2 never moves while fc1 and the "
    "head learn.",
)
def h536_armourer_fc2_lr_zero(ctx):
    gen = seeded(5368)
    model = _Net(6, 48, 1, nn.GELU)
    table = {"fc1": 2e-3, "fc2": 2e-3, "head": 2e-3}
    groups = [
        {"params": getattr(model, name).parameters(), "lr": table.get(key, 0.0)}
        for name, key in (("fc1", "fc1"), ("fc2", "fc_2"), ("head", "head"))
    ]
    opt = torch.optim.NAdam(groups)
    w1, w2 = _flat(model.fc1), _flat(model.fc2)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 5368), 200, F.huber_loss)
    ctx.check("fc2 moved under 1e-6 of its norm", _rel(_flat(model.fc2), w2) < 1e-6)
    ctx.check("fc1 moved over 1e-2 of its norm", _rel(_flat(model.fc1), w1) > 1e-2)
    ctx.check("loss fell", _fell(losses))


# -- 9. softmax collapse: temperature typed 0.001 ---------------------------------------------------


class _TempNet(_Net):
    def __init__(self, *a, temperature=1.0, **k):
        super().__init__(*a, **k)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="rhythmic_gymnastics_apparatus_toss_temperature_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Rhythmic-gymnastics apparatus classifier (GELU MLP on throw height, spin rate, "
    "release angle, catch time, ribbon and rope sway readings; 5 apparatus: hoop, ball, "
    "clubs, ribbon, rope; cross-entropy with label smoothing 0.05, AdamW lr 1e-3). The "
    "softmax temperature is typed 0.001 for 1.0: the head's logits are divided by 0.001, over "
    "half the rows' max probability is exactly 1.0 in float32, the rest get no gradient "
    "beyond a one-hot push.",
)
def h536_gymnastics_temperature(ctx):
    gen = seeded(5369)
    model = _TempNet(12, 48, 5, nn.GELU, temperature=0.001)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    probe = next(_grades(torch.Generator().manual_seed(4), 256, 12, 5, 5369))[0]

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.05)

    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 12, 5, 5369, spread=1.5), 150, loss_fn, classifier=True
    )
    with torch.no_grad():
        p = torch.softmax(model(probe), -1)
    ctx.check(
        "over half the rows' max probability exactly 1.0",
        float((p.max(-1).values == 1.0).float().mean()) > 0.5,
    )
    ctx.check("loss finite", _finite(losses))


# -- 10. loss divergence: decoupled weight decay sign flipped -------------------------------------


@scenario(
    family="gypsum_rose_crystal_growth_tanh_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Gypsum-rose crystal-growth regressor (tanh MLP on brine salinity, evaporation, sand "
    "grain size, groundwater depth, temperature and wind; MSE, RAdam lr 3e-3 with a "
    "hand-written decoupled weight decay 2.0). The decay is written p *= 1 + lr * wd instead "
    "of 1 - lr * wd: the weights grow every step, the tanh units saturate and the loss climbs "
    "slowly to over 3x its best without blowing up.",
)
def h536_gypsum_rose_decay_sign(ctx):
    gen = seeded(5370)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    w0 = float(_flat(model).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 3e-3 * 2.0)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 5370), 300, F.mse_loss, after=after)
    ctx.check("weights over 3x their initial norm", float(_flat(model).norm()) > 3 * w0)
    best = min(losses)
    ctx.check("loss climbs to over 3x its best", _mean(losses[-20:]) > 3 * best)
    ctx.check("loss finite", _finite(losses))


# -- 11. control: progressive sequence-length warm-up (alarming-looking) --------------------------


class _StrumGRU(nn.Module):
    def __init__(self, hidden=32):
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out).squeeze(-1)


def _strums(gen, batch):
    """Per-stroke pluck force and damping flag; target: the string's running energy."""
    while True:
        length = yield
        force = torch.randn(batch, length, generator=gen)
        damp = (torch.rand(batch, length, generator=gen) < 0.02).float()
        energy, e = [], torch.zeros(batch)
        for t in range(length):
            e = (1 - damp[:, t]) * (e + 0.3 * force[:, t])
            energy.append(e)
        yield torch.stack([force, damp], -1), torch.stack(energy, 1)


@scenario(
    family="topshur_strum_energy_seq_warmup_gru_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Topshur strum-energy GRU (per-stroke pluck force and a palm-damping flag; target the "
    "string's running energy; MSE, AdamW lr 3e-3, clipping at 1). A progressive sequence-"
    "length warm-up: 8, 16, 32 then 64 strokes every 60 steps. Longer windows let the energy "
    "wander further, so the loss steps up each time the sequences get longer, then falls "
    "again: alarming on a dashboard, healthy.",
)
def h536_topshur_seq_length_warmup(ctx):
    gen = seeded(5371)
    model = _StrumGRU()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    src = _strums(gen, 32)
    ctx.attach(model, opt)
    losses = []
    for step in range(240):
        length = (8, 16, 32, 64)[step // 60]
        next(src)
        x, y = src.send(length)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("loss finite", _finite(losses))
    for s in (60, 120, 180):
        ctx.check(
            f"loss steps up at {s}", _mean(losses[s : s + 3]) > 1.2 * _mean(losses[s - 5 : s])
        )
    ctx.check("loss fell within the first stage", _fell(losses[:60]))
    ctx.check("loss fell within the last stage", _mean(losses[-10:]) < _mean(losses[180:190]))


# -- 12. control: capsule network with dynamic routing -------------------------------------------


class _CapsNet(nn.Module):
    """Conv -> primary capsules (8 types x 4-d on a 4x4 grid) -> class capsules (8-d), with
    three iterations of routing-by-agreement; the output is each class capsule's length."""

    def __init__(self, classes=4, iters=3):
        super().__init__()
        self.conv = nn.Conv2d(1, 16, 3, padding=1)
        self.primary = nn.Conv2d(16, 8 * 4, 3, stride=2, padding=1)
        self.route_w = nn.Parameter(0.1 * torch.randn(128, classes, 8, 4))
        self.iters = iters

    @staticmethod
    def squash(s, dim=-1):
        n2 = (s * s).sum(dim, keepdim=True)
        return n2 / (1 + n2) * s / torch.sqrt(n2 + 1e-8)

    def forward(self, x):
        b = x.shape[0]
        h = F.relu(self.conv(x.reshape(b, 1, 8, 8)))
        u = self.primary(h).reshape(b, 8, 4, 16).permute(0, 1, 3, 2).reshape(b, 128, 4)
        u = self.squash(u)
        u_hat = torch.einsum("ncdk,bnk->bncd", self.route_w, u)
        logits = torch.zeros(b, 128, u_hat.shape[2])
        for i in range(self.iters):
            c = torch.softmax(logits, dim=2)
            v = self.squash((c.unsqueeze(-1) * u_hat).sum(1))
            if i < self.iters - 1:
                logits = logits + (u_hat * v.unsqueeze(1)).sum(-1)
        return v.norm(dim=-1)


def _margin_loss(lengths, y):
    t = F.one_hot(y, lengths.shape[1]).float()
    pos = t * F.relu(0.9 - lengths) ** 2
    neg = 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return (pos + neg).sum(1).mean()


@scenario(
    family="vaulting_horse_pressure_mat_phase_capsule_routing_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Vaulting-horse (equestrian vaulting) pressure-mat phase classifier: a capsule network "
    "with dynamic routing (conv, primary capsules, three routing-by-agreement iterations) on "
    "8x8 pressure-mat frames from the horse's back pad; 4 phases (mount, basic seat, flag, "
    "dismount); margin loss, Adam lr 2e-3, noisy frames. Control.",
)
def h536_vaulting_capsule_routing(ctx):
    gen = seeded(5372)
    model = _CapsNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 32, 64, 4, 5372, spread=1.5)
    losses, _ = _loop(ctx, model, opt, batches, 150, _margin_loss, classifier=True)
    x, y = next(_grades(torch.Generator().manual_seed(6), 256, 64, 4, 5372, spread=1.5))
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("loss fell and is finite", _fell(losses))
    ctx.check("held-out accuracy over 0.8", acc > 0.8)


# -- 13. control: Adamax, OneCycleLR, accumulation, clipping --------------------------------------


@scenario(
    family="drag_hunt_scent_line_drift_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Drag-hunt scent-line drift regressor (SiLU MLP on wind speed, wind bearing, ground "
    "moisture, air temperature, time since laying and cover type; Huber, Adamax with two param "
    "groups (head at half the lr), OneCycleLR to 4e-3, 2 micro-batches accumulated, clipping "
    "at 1, noisy targets). Control.",
)
def h536_drag_hunt_onecycle(ctx):
    gen = seeded(5373)
    model = _Net(6, 48, 1, nn.SiLU)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adamax(
        [{"params": trunk}, {"params": model.head.parameters(), "lr": 1e-3}], lr=2e-3
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[4e-3, 2e-3], total_steps=200)
    batches = _readings(gen, 32, 6, 5373, noise=0.2)
    ctx.attach(model, opt)
    losses = []
    for _step in range(200):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(total)
        ctx.step(torch.tensor(total))
        opt.zero_grad(set_to_none=True)
    ctx.check("loss fell and is finite", _fell(losses))
