"""Held-out set 225 (``h225_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a well-digger aquifer-depth SiLU net whose metres-to-millimetres
output overflows fp16 under autocast, a polocrosse pass-outcome classifier resumed from a stale
checkpoint, a clogmaker sole-carving regressor whose encoder param group got 1e-9 for 1e-3, a
besom binding-strength ReLU classifier whose RMSprop rate kills its units, a shot-peening
intensity deep ReLU net initialised with gain 2 for sqrt(2), an oak-gall ink fade Gaussian-NLL
net taking the square root of an unclamped variance head, a tejo hit classifier trained with a
hinge loss missing its clamp, a wife-carrying lap-time regressor whose loss was divided by a
stale count of 1 for one step, an ice-circle rotation regressor whose warm-up peaks at 2.0 for
0.2, a hurricane-eye pressure dilated TCN fed one shard with an unmasked -9999 sentinel, and three
controls (a pysanky dye-bath SiLU regressor under fp16 autocast with a GradScaler and warm-up, a
pato pass classifier with OneCycleLR, accumulation and label smoothing, a ship-caulking tied-weight
autoencoder with Huber, clipping, ReduceLROnPlateau and ASGD on heavy-tailed readings).

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
    accumulate=1,
    scale_loss=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; it stops after
    logging a NaN loss."""
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


def _kinds(gen, batch, d_in, classes, seed, noise=1.0):
    """Readings around one prototype per class, overlapping."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + noise * torch.randn(batch, d_in, generator=gen)
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


# -- well digger: metres converted to millimetres inside the fp16 forward --------------------------


class AquiferNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.fill_(45.0)  # start at the mean depth, in metres

    def forward(self, x):
        metres = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        return metres * 1000.0  # the log wants millimetres; under autocast this is fp16


def _wells(gen, batch, seed=1):
    """Ten standardised survey readings (resistivity, slope, distance to stream, ...) and the
    depth to the water table in millimetres, as the well-digger's log records it."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        depth_m = 45.0 + 14.0 * (x @ w) / math.sqrt(10) + 1.0 * torch.randn(batch, generator=gen)
        yield x, 1000.0 * depth_m


def _mm_loss(out, y):
    return F.mse_loss(out / 1000.0, y / 1000.0)


@scenario(
    family="well_digger_aquifer_depth_fp16_mlp",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=55,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the depth to the water table from 10 standardised survey readings, head bias started at the mean depth of 45 m, Adam at 3e-3, MSE in metres, fp16 autocast with a default torch.amp.GradScaler. The forward multiplies the head's metres by 1000 because the well-digger's log is in millimetres, and under autocast that product is fp16: as the head learns the deep wells (over 65.5 m) their prediction passes 65504 and overflows to inf at step 55; from then on nearly every batch holds such a well, the gradients are inf, the scaler skips the step and halves its scale each time (down over 1e6-fold); the loss is inf and training has stopped.",
)
def h225_well_digger_fp16_millimetres(ctx: Context) -> None:
    gen = seeded(22501)
    model = AquiferNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    top = {}

    def watch(step, out, x, y):
        top[step] = float(out.detach().float().abs().max())

    _train(ctx, model, opt, _wells(gen, 64), 160, _mm_loss, watch=watch, scaler=scaler)
    ls, gn = ctx.losses, ctx.grad_norms
    bad = _first_bad(ls)
    ctx.check("loss first non-finite at the declared step", bad == 55)
    ctx.check(
        "fp16 output finite and below 65504 before it", max(top[s] for s in range(55)) < 65504
    )
    ctx.check(
        "fp16 output overflowed to inf at that step", bad is not None and top[bad] == math.inf
    )
    ctx.check(
        "over 80% of gradients non-finite after it",
        sum(not math.isfinite(v) for v in gn[55:]) > 0.8 * len(gn[55:]),
    )
    ctx.check("loss scale fell over 1e6-fold after it", ctx.scales[-1] < 1e-6 * ctx.scales[54])
    ctx.check(
        "loss finite and falling before it",
        _finite(ls[:55]) and _mean(ls[45:55]) < 0.5 * _mean(ls[:5]),
    )
    print("DBG", sum(not math.isfinite(v) for v in gn[55:]), len(gn[55:]), ctx.scales[::10])


# -- polocrosse: a resume that loads the stale checkpoint ------------------------------------------


@scenario(
    family="polocrosse_pass_outcome_gelu_classifier",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) classifying polocrosse pass outcomes (4 classes) from 12 readings, AdamW at 2e-3, cross-entropy. The job is preempted at step 150 and the resume code follows a 'latest' checkpoint link that was never updated after the first checkpoint (step 3): the weights jump back to their step-3 values while the optimizer state is kept; the loss jumps over 2.5x for one step, with no gradient burst or bad data, and the run relearns to its former level within a few dozen steps; finite.",
)
def h225_polocrosse_stale_checkpoint(ctx: Context) -> None:
    gen = seeded(22502)
    model = Stack(12, hidden=64, out=4, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    saved = {}

    def after(step):
        if step == 3:
            saved["ckpt"] = copy.deepcopy(model.state_dict())  # the first checkpoint written

    def before(step):
        if step == 150:  # preempted; the resume follows a 'latest' link never updated
            model.load_state_dict(saved["ckpt"])

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 4, seed=2, noise=1.1),
        240,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at step 150 over 2.5x the mean of steps 130-149", ls[150] > 2.5 * _mean(ls[130:150])
    )
    ctx.check(
        "loss back within 1.5x its pre-spike level (steps 200-240)",
        _mean(ls[200:240]) < 1.5 * _mean(ls[130:150]),
    )
    ctx.check(
        "no gradient burst at the spike (under 10x the median)", gn[150] < 10 * _median(gn[100:150])
    )
    ctx.check("loss fell before the spike", _fell(ls[:150], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- clogmaker: the encoder param group at 1e-9 for 1e-3 -------------------------------------------


class SoleNet(nn.Module):
    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.encoder = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.trunk = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act2(self.trunk(self.act1(self.encoder(x))))).squeeze(-1)


@scenario(
    family="clogmaker_sole_carving_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("encoder",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (encoder, trunk, head) regressing a clog sole's carving depth from 10 readings, Adamax with two param groups: the encoder's rate typed 1e-9 for 1e-3, the trunk and head at 2e-3. The encoder's weights move about 1e-8 of their norm over the run (frozen in all but name) while the rest trains on its random features and the loss still falls; finite, no blow-up.",
)
def h225_clogmaker_encoder_lr_typo(ctx: Context) -> None:
    gen = seeded(22503)
    model = SoleNet()
    opt = torch.optim.Adamax(
        [
            {"params": model.encoder.parameters(), "lr": 1e-9},  # meant 1e-3
            {"params": [*model.trunk.parameters(), *model.head.parameters()], "lr": 2e-3},
        ]
    )
    w0 = {n: m.weight.detach().clone() for n, m in model.named_children() if hasattr(m, "weight")}
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=3), 200, F.mse_loss)
    ls = ctx.losses
    rel = {
        n: float((m.weight.detach() - w0[n]).norm() / w0[n].norm())
        for n, m in model.named_children()
        if hasattr(m, "weight")
    }
    ctx.check("encoder weights moved under 1e-6 of their norm", rel["encoder"] < 1e-6)
    ctx.check("trunk and head moved over 5% of their norm", min(rel["trunk"], rel["head"]) > 0.05)
    ctx.check("loss fell (the rest of the net learns)", _fell(ls, ratio=0.5))


# -- besom: an RMSprop rate from an SGD config kills the ReLUs -------------------------------------


def _bindings(gen, batch, seed=4):
    """Sixteen readings of a besom binding as the workshop logs them, in raw units (wire tension
    in N, birch twig count, handle length in mm, ...: all positive, tens to hundreds), and
    whether it passed the pull test."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, generator=g)
    v = torch.randn(16, generator=g)
    mean = 20 + 180 * torch.rand(16, generator=g)
    scale = mean * (0.05 + 0.15 * torch.rand(16, generator=g))
    while True:
        z = torch.randn(batch, 16, generator=gen)
        t = z @ w / 4 + 0.8 * torch.sin(z @ v / 2)
        yield mean + scale * z, (t + 0.2 * torch.randn(batch, generator=gen) > 0).float()


@scenario(
    family="besom_binding_strength_relu_mlp",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1", "fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) deciding whether a besom binding passes the pull test from 16 workshop readings left in raw units (all positive, tens to hundreds), BCE with logits, RMSprop at 1e-2 copied from an SGD config. RMSprop's first normalised updates push most units below zero for every sample: the share of dead units goes from about 30% at init to over 70% in both hidden layers within 10 steps and they never come back; the loss stays near ln 2 (chance); finite.",
)
def h225_besom_rmsprop_dead_relus(ctx: Context) -> None:
    gen = seeded(22504)
    model = Stack(16, hidden=64, out=1, act=nn.ReLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-2)
    probe = next(_bindings(torch.Generator().manual_seed(44), 512))[0]

    def dead():
        with torch.no_grad():
            h1 = model.act1(model.fc1(probe))
            h2 = model.act2(model.fc2(h1))
        return (h1 <= 0).all(0), (h2 <= 0).all(0)

    d = {-1: dead()}

    def after(step):
        if step in (10, 50, 199):
            d[step] = dead()

    _train(
        ctx, model, opt, _bindings(gen, 64), 200, F.binary_cross_entropy_with_logits, after=after
    )
    ls = ctx.losses
    f = {k: (float(v[0].float().mean()), float(v[1].float().mean())) for k, v in d.items()}
    ctx.check("under 40% of fc1/fc2 units dead at init", max(f[-1]) < 0.4)
    ctx.check("over 65% of fc1 and fc2 units dead by step 10", min(f[10]) > 0.65)
    ctx.check("over 65% of fc1 and fc2 units still dead at the end", min(f[199]) > 0.65)
    ctx.check("loss stuck near chance (ln 2) over the last 50 steps", _mean(ls[-50:]) > 0.6)
    ctx.check("finite", _finite(ls))


# -- shot peening: a deep ReLU stack initialised with gain 2 for sqrt(2) ---------------------------


class PeeningNet(nn.Module):
    def __init__(self, d_in=8, hidden=48, depth=12, gain=2.0):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.ReLU()]
        self.net = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, 1)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=gain / math.sqrt(m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.head(self.net(x)).squeeze(-1)


@scenario(
    family="shot_peening_intensity_deep_relu_mlp",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("net.0",),
    diverges="auto",
    heldout=True,
    note="A 12-layer ReLU MLP (net.0 ... net.22, head) regressing shot-peening Almen intensity from 8 standardised readings, SGD momentum 0.9 at 1e-3, MSE. The hand-written init uses std = gain/sqrt(fan_in) with gain 2.0 where sqrt(2) was meant: every layer amplifies by about 1.4, the forward output and the backpropagated signal grow through depth (the gradient reaching the first layer is about 50x that at the last), the first update blows the loss up 1e9-fold at step 1 and it is NaN at step 2.",
)
def h225_shot_peening_init_gain(ctx: Context) -> None:
    gen = seeded(22505)
    model = PeeningNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    acts = [m for m in model.net if isinstance(m, nn.ReLU)]
    seen = {}

    def keep(i):
        def hook(mod, gin, gout):
            seen.setdefault(i, float(gout[0].norm()))

        return hook

    handles = [
        acts[0].register_full_backward_hook(keep(0)),
        acts[-1].register_full_backward_hook(keep(1)),
    ]

    def after(step):
        if step == 0:
            for h in handles:
                h.remove()

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=5), 120, F.mse_loss, after=after)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check(
        "backprop signal at the first ReLU over 20x that at the last (step 0)",
        seen.get(0, 0.0) > 20 * seen.get(1, math.inf),
    )
    ctx.check("loss over 1e6x its first value at step 1", ls[1] > 1e6 * ls[0])
    ctx.check("loss non-finite within 5 steps", bad is not None and bad <= 5)


# -- oak-gall ink: the square root of an unclamped variance head -----------------------------------


class FadeNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.mu_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.var_head.weight.mul_(0.1)
            self.var_head.bias.fill_(0.5)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        sigma = torch.sqrt(self.var_head(h))  # no softplus, no clamp
        return torch.cat([self.mu_head(h), sigma], -1)


def _gauss_nll(out, y):
    mu, sigma = out[:, 0], out[:, 1]
    return (torch.log(sigma) + 0.5 * ((y - mu) / sigma) ** 2).mean()


@scenario(
    family="oak_gall_ink_fade_gaussian_nll_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=188,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, mu_head, var_head) predicting the fade of oak-gall ink with a Gaussian NLL, NAdam at 2e-3. The standard deviation is torch.sqrt(var_head(h)) with no softplus or clamp (bias started at 0.5): as the net grows confident the variance head drifts down until it goes negative on one sample at step 188, the sqrt gives NaN and the loss is NaN there.",
)
def h225_oak_gall_sqrt_negative_variance(ctx: Context) -> None:
    gen = seeded(22506)
    model = FadeNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    low = {}

    def watch(step, out, x, y):
        with torch.no_grad():
            h = model.act2(model.fc2(model.act1(model.fc1(x))))
            low[step] = float(model.var_head(h).min())

    _train(ctx, model, opt, _readings(gen, 64, 9, seed=6, noise=0.05), 200, _gauss_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss first non-finite at the declared step", bad == 188)
    ctx.check(
        "variance head positive on every batch before it", min(low[s] for s in range(188)) > 0
    )
    ctx.check("variance head negative on that batch", bad is not None and low[bad] < 0)
    ctx.check(
        "loss finite and falling before it",
        _finite(ls[:188]) and _mean(ls[170:188]) < _mean(ls[:10]),
    )


# -- tejo: a multi-class hinge loss missing its clamp ----------------------------------------------


def _hinge_no_clamp(logits, y):
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return (1.0 + other - true).mean()  # meant F.relu(1.0 + other - true).mean()


@scenario(
    family="tejo_mecha_hit_hinge_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) classifying tejo throws (mecha hit, bocin, miss) from 10 readings, RAdam at 2e-3, a hand-written multi-class hinge loss 1 + max_other - true whose relu clamp was left out. The loss has no floor: once the classes separate the head's logits grow without bound (over 20x, still growing at the end) and the loss falls far below zero; finite.",
)
def h225_tejo_hinge_missing_clamp(ctx: Context) -> None:
    gen = seeded(22507)
    model = Stack(10, hidden=48, out=3, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    top = {}

    def watch(step, out, x, y):
        top[step] = float(out.detach().abs().max())

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 3, seed=7, noise=1.0),
        240,
        _hinge_no_clamp,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check(
        "largest logit grew over 20x (first 10 steps to last 10)",
        _mean([top[s] for s in range(230, 240)]) > 20 * _mean([top[s] for s in range(10)]),
    )
    ctx.check("largest logit still growing over the last 40 steps", top[239] > 1.3 * top[199])
    ctx.check("loss went below zero and kept falling", ls[-1] < -5 and ls[-1] < ls[-41])
    ctx.check("finite", _finite(ls))


# -- wife carrying: the loss divided by a stale count of 1 for one step ----------------------------


@scenario(
    family="wife_carrying_lap_time_silu_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) regressing wife-carrying lap times from 8 readings, SGD Nesterov at 0.02, the loss summed over the batch and divided by the number of timed runs. At a heat boundary (step 120) the count is read before it is filled and is 1: the backpropagated loss is 64x for that one step and the gradient norm spikes over 30x; the data are ordinary, the next step is normal again and the loss recovers; finite.",
)
def h225_wife_carrying_stale_count(ctx: Context) -> None:
    gen = seeded(22508)
    model = Stack(8, hidden=48, out=1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def scale_loss(step, loss):
        # loss = sum / n_timed; at the heat boundary n_timed is read before it is filled: 1
        return loss * 64 if step == 120 else loss

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=8), 220, F.mse_loss, scale_loss=scale_loss)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient norm at step 120 over 30x the median of steps 100-119",
        gn[120] > 30 * _median(gn[100:120]),
    )
    ctx.check(
        "gradient back under 5x that median by step 130",
        max(gn[130:150]) < 5 * _median(gn[100:120]),
    )
    ctx.check(
        "loss recovered (last 20 steps within 1.5x steps 100-119)",
        _mean(ls[-20:]) < 1.5 * _mean(ls[100:120]),
    )
    ctx.check("finite", _finite(ls))


# -- ice circle: a warm-up that peaks at 2.0 for 0.2 -----------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y), by power iteration on Hessian-vector products."""
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
    family="ice_circle_rotation_rate_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=15,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) regressing an ice circle's rotation rate from 6 readings, plain SGD, MSE, a linear warm-up over 100 steps to a peak typed 2.0 for 0.2. The sharpness (top Hessian eigenvalue, measured by power iteration every 5 steps) stays about 4-8 until step 35: the rate passes 2/sharpness at about step 15, the loss first bounces (step 20) and, as the rate keeps climbing, oscillates and blows up after step 40, NaN at step 52.",
)
def h225_ice_circle_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(22509)
    model = Stack(6, hidden=48, out=1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_readings(torch.Generator().manual_seed(99), 256, 6, seed=9))
    peak = 2.0  # meant 0.2
    lam = {}

    def before(step):
        for group in opt.param_groups:
            group["lr"] = peak * min(1.0, (step + 1) / 100)
        if step % 5 == 0:
            lam[step] = _sharpness(model, F.mse_loss, *probe)

    _train(ctx, model, opt, _readings(gen, 64, 6, seed=9), 160, F.mse_loss, before=before)
    ls = ctx.losses
    lr_at = {k: peak * min(1.0, (k + 1) / 100) for k in lam}
    ctx.check(
        "lr below 2/sharpness at every probe before step 15",
        all(lr_at[k] * lam[k] < 2 for k in lam if k < 15),
    )
    ctx.check(
        "lr above 2/sharpness at step 15 and after",
        all(lr_at[k] * lam[k] > 2 for k in lam if 15 <= k <= 40),
    )
    ctx.check("loss fell before it", _mean(ls[8:13]) < 0.5 * _mean(ls[:3]))
    ctx.check(
        "loss blew up over 1e4x its minimum after step 40",
        max(ls[40:], key=lambda v: v if math.isfinite(v) else math.inf) > 1e4 * min(ls[:40]),
    )


# -- hurricane eye: a dilated TCN fed one shard with an unmasked -9999 sentinel ---------------------


class CausalBlock(nn.Module):
    def __init__(self, ch, dilation):
        super().__init__()
        self.pad = 2 * dilation
        self.conv = nn.Conv1d(ch, ch, 3, dilation=dilation)
        self.act = nn.ReLU()

    def forward(self, x):
        return x + self.act(self.conv(F.pad(x, (self.pad, 0))))


class EyeTCN(nn.Module):
    def __init__(self, feat=3, ch=24):
        super().__init__()
        self.inp = nn.Conv1d(feat, ch, 1)
        self.tcn = nn.Sequential(*(CausalBlock(ch, d) for d in (1, 2, 4, 8)))
        self.head = nn.Conv1d(ch, 1, 1)

    def forward(self, x):
        return self.head(self.tcn(self.inp(x.transpose(1, 2)))).squeeze(1)


def _eye_tracks(gen, batch, length=48):
    """Standardised hourly readings of a hurricane's eye (dropsonde pressure, wind speed, sea
    surface temperature) and the next hour's pressure change at every step."""
    while True:
        t = torch.arange(length).float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        rate = 0.1 + 0.2 * torch.rand(batch, 1, generator=gen)
        p = torch.sin(rate * t + phase)
        w = torch.cos(rate * t + phase)
        s = 0.5 * torch.randn(batch, 1, generator=gen).expand(-1, length)
        x = torch.stack([p, w, s], -1) + 0.05 * torch.randn(batch, length, 3, generator=gen)
        y = torch.sin(rate * (t + 1) + phase) - p + 0.3 * s * w
        yield x, y


@scenario(
    family="hurricane_eye_pressure_dilated_tcn",
    optimizer="SGD (momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=140,
    heldout=True,
    note="A causal dilated TCN (inp, tcn.0-3 residual Conv1d blocks with dilations 1, 2, 4, 8, head) predicting the next hour's central-pressure change of a hurricane's eye from 48 hourly standardised readings, SGD momentum at 0.02, clipping at 1.0, MSE. One shard at step 140 holds a dropsonde whose missing pressures were left as the logger's -9999 sentinel, unmasked: the loss on that batch is over 100x the usual and the raw gradient norm over 100x (clipped); the next batches are clean and the loss recovers; finite.",
)
def h225_hurricane_eye_sentinel_shard(ctx: Context) -> None:
    gen = seeded(22510)
    model = EyeTCN()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    biggest = {}

    def alter(step, x, y):
        if step == 140:  # one dropsonde's missing pressures left as the logger's -9999
            x = x.clone()
            x[5, 20:30, 0] = -9999.0
        biggest[step] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _eye_tracks(gen, 32), 240, F.mse_loss, alter=alter, clip=1.0)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "the shard at step 140 holds -9999 readings",
        biggest[140] > 9000 and max(biggest[s] for s in range(140)) < 10,
    )
    ctx.check(
        "loss at step 140 over 100x the median of steps 120-139",
        ls[140] > 100 * _median(ls[120:140]),
    )
    ctx.check(
        "gradient norm at step 140 over 100x the median before",
        gn[140] > 100 * _median(gn[120:140]),
    )
    ctx.check(
        "loss recovered (last 20 steps within 3x steps 120-139)",
        _mean(ls[-20:]) < 3 * _median(ls[120:140]),
    )
    ctx.check("finite", _finite(ls))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    family="pysanky_dye_bath_fp16_silu_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP (fc1, fc2, head) regressing a pysanky dye bath's colour uptake from 10 standardised readings, AdamW at 3e-3 with weight decay 0.05, a 20-step linear warm-up, MSE, fp16 autocast with a default torch.amp.GradScaler (its scale stays at 65536). Trains normally.",
)
def h225_pysanky_fp16_control(ctx: Context) -> None:
    gen = seeded(22511)
    model = Stack(10, hidden=64, out=1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=11),
        200,
        F.mse_loss,
        sched=sched,
        scaler=scaler,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.3))
    ctx.check("finite", _finite(ls))
    ctx.check("loss scale never fell below 1024", min(ctx.scales) >= 1024)


@scenario(
    family="pato_ball_pass_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Control: a GELU MLP (fc1, fc2, head) classifying pato passes (5 classes) from 14 overlapping readings, Adam with OneCycleLR (max 4e-3), gradient accumulation over 4 micro-batches, cross-entropy with label smoothing 0.1. Trains normally.",
)
def h225_pato_onecycle_control(ctx: Context) -> None:
    gen = seeded(22512)
    model = Stack(14, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=150)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 14, 5, seed=12, noise=1.2),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        accumulate=4,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("finite", _finite(ls))


class TiedAE(nn.Module):
    def __init__(self, d_in=16, code=6):
        super().__init__()
        self.encoder = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.decoder_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.encoder(x)), self.encoder.weight.t(), self.decoder_bias)


def _seams(gen, batch, seed=13):
    """Sixteen readings along a ship's caulked seam (oakum depth, pitch temperature, plank gap,
    ...) lying near a 4-dimensional surface, with heavy-tailed (Student-t) sensor noise."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, 16, generator=g) / 2
    t = torch.distributions.StudentT(2.5)
    while True:
        z = torch.randn(batch, 4, generator=gen)
        noise = 0.05 * t.sample((batch, 16))
        x = torch.tanh(z) @ basis + noise
        yield x, x


@scenario(
    family="ship_caulking_seam_tied_autoencoder",
    optimizer="ASGD",
    cause="healthy",
    heldout=True,
    note="Control: a tied-weight tanh autoencoder (encoder, its transposed weight as decoder) compressing 16 readings along a ship's caulked seam with heavy-tailed Student-t sensor noise, ASGD at 0.5, Huber loss (delta 0.5), clipping at 1.0, ReduceLROnPlateau. Trains normally.",
)
def h225_ship_caulking_tied_ae_control(ctx: Context) -> None:
    gen = seeded(22513)
    model = TiedAE()
    opt = torch.optim.ASGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _seams(gen, 64),
        250,
        lambda out, y: F.huber_loss(out, y, delta=0.5),
        sched=sched,
        clip=1.0,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.7))
    ctx.check("finite", _finite(ls))
