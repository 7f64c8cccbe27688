"""Held-out set 297 (``h297_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a schwinger sawdust-ring throw classifier whose Adam lr
was typed 1e-1 for 1e-3 (ReLUs die), a chalk hill-figure regrading tanh regressor whose warm-up
peak was typed 2.0 for 0.02 (past 2/sharpness, blow-up), a gyotaku fish-print ink fp16 MLP fed
raw millimetre lengths (fp16 overflow under a GradScaler), a bog-oak seasoning regressor fed one
shard in millimetres (data outlier), a hanetsuki shuttle-flight deep tanh MLP with init gain 4.0
for 5/3 (gradients grow through depth), a cyanotype exposure Gaussian-NLL net whose variance
head has no softplus (log of a negative, NaN), a paper-lantern glue-set SiLU regressor whose
curriculum weight table has one entry typed 100 (one gradient spike), a lime-pit hide
plumping two-group regressor whose trunk lr was typed 1e-8 (update ratio), a shodo brush-stroke
classifier whose temperature was read in percent (softmax collapse), a dohyo clay-ring
compaction regressor whose fallback loss weight 1e5 fires once (Adam's second moment poisoned),
and three controls (a rakugo fan-gesture mixture-of-experts classifier with a learned gate,
OneCycleLR and accumulation, a boro patch-mending multi-label fp16 BCE net with a GradScaler,
a marram-grass dune-binding Huber regressor with Adamax and ReduceLROnPlateau).

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


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    amp=False,
    accumulate=1,
    weight_of=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``after(step)`` runs after the
    optimizer step; ``weight_of(step)`` multiplies the step's loss (1 unless a bug says
    otherwise); stops after a non-finite loss. Returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight_of(step) if weight_of is not None else 1.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = w * loss / accumulate
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
        if not math.isfinite(shown):
            return step
    return steps


def _readings(gen, batch, d_in, seed, noise=0.05, heavy=False):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(1.5 * x @ v / math.sqrt(d_in))
        e = torch.randn(batch, generator=gen)
        if heavy:  # Student-t with 3 degrees of freedom
            e = e / torch.sqrt((torch.randn(batch, 3, generator=gen) ** 2).mean(1))
        yield x, y + noise * e


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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


# -- schwinger: Adam lr typed 1e-1 for 1e-3, the ReLUs die -------------------------------------


def _throws(gen, batch, seed):
    """16 standardised readings; the throw is the best-scoring of 6 linear scores, noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 6, generator=g)
    while True:
        x = torch.randn(batch, 16, generator=gen)
        yield x, (x @ w + 0.5 * torch.randn(batch, 6, generator=gen)).argmax(1)


@scenario(
    family="schwinger_sawdust_ring_throw_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying which throw (Kurz, Übersprung, Hüfter, Brienzer, ...; 6 kinds) ends a Swiss schwinger bout in the sawdust ring from 16 standardised grip and stance readings, Adam, cross-entropy, 240 steps. The config's lr was typed 1e-1 for 1e-3: Adam's normalised steps of about 0.1 per weight on the first steps push most of fc2's pre-activations negative on every input, those units get exactly zero gradient and never come back; the net trains on with what is left.",
)
def h297_schwinger_adam_lr_typo(ctx: Context) -> None:
    gen = seeded(29701)
    model = Stack(16, 64, out=6)
    opt = torch.optim.Adam(model.parameters(), lr=1e-1)
    probe = next(_throws(torch.Generator().manual_seed(9), 512, seed=701))[0]
    dead1: list[float] = []
    dead2: list[float] = []

    def after(step):
        with torch.no_grad():
            a1 = model.act1(model.fc1(probe))
            a2 = model.act2(model.fc2(a1))
            dead1.append(float((a1 <= 0).all(0).float().mean()))
            dead2.append(float((a2 <= 0).all(0).float().mean()))

    with torch.no_grad():
        a1 = model.act1(model.fc1(probe))
        start = float((model.act2(model.fc2(a1)) <= 0).all(0).float().mean())
    _train(
        ctx,
        model,
        opt,
        _throws(gen, 64, seed=701),
        240,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("under 10% of fc2's units dead at the start", start < 0.1)
    ctx.check("over half of fc2's units dead at the end", dead2[-1] > 0.5)
    ctx.check("over half of fc2's units dead at every step from 30 on", min(dead2[30:]) > 0.5)
    ctx.check("fc2 dies more than fc1", dead2[-1] > dead1[-1])
    ctx.check("finite throughout", _finite(ctx.losses))


# -- chalk hill figure: the warm-up peak typed 2.0 for 0.02, past 2/sharpness --------------------

WARM_HILL = 40


@scenario(
    family="chalk_hill_figure_regrading_depth_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=6,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing how deep a chalk hill figure's trench must be re-cut from 8 standardised survey readings (turf encroachment, slope, rainfall, years since the last chalking), plain SGD, MSE, a linear warm-up over 40 steps to cfg['peak_lr'], 150 steps. The peak was typed 2.0 for 0.02: as the warm-up climbs, lr x the loss's top Hessian eigenvalue passes 2 at about step 6 (measured by power iteration on a fixed batch) and the loss oscillates and blows up.",
)
def h297_chalk_hill_figure_warmup_peak(ctx: Context) -> None:
    gen = seeded(29702)
    model = Stack(8, 64, act=nn.Tanh)
    peak = 2.0
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARM_HILL))
    px, py = next(_readings(torch.Generator().manual_seed(3), 256, 8, seed=702))
    products: dict[int, float] = {}

    def before(step):
        if step % 5 == 0 and step <= WARM_HILL:
            lr = opt.param_groups[0]["lr"]
            products[step] = lr * _sharpness(model, F.mse_loss, px, py)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=702),
        150,
        F.mse_loss,
        before=before,
        sched=sched,
    )
    ls = ctx.losses
    low = min(v for v in ls[:20] if math.isfinite(v))
    ctx.check("lr x sharpness under 2 at step 0", products[0] < 2.0)
    ctx.check("lr x sharpness over 2 during the warm-up", max(products.values()) > 2.0)
    ctx.check("the loss fell first", min(ls[:20]) < 0.8 * ls[0])
    ctx.check(
        "the loss blew up: over 100x its low, or non-finite",
        any((not math.isfinite(v)) or v > 100 * low for v in ls[20:]),
    )


# -- gyotaku: raw millimetre lengths under fp16 autocast -----------------------------------------


def _fish(gen, batch, seed, raw=True):
    """Fish length and girth (mm) with six standardised readings; target the ink load."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(z @ w / math.sqrt(8)) + 0.05 * torch.randn(batch, generator=gen)
        x = z.clone()
        if raw:
            x[:, 0] = 400.0 + 80.0 * z[:, 0]
            x[:, 1] = 250.0 + 50.0 * z[:, 1]
        yield x, y


@scenario(
    family="gyotaku_fish_print_ink_load_fp16_mlp",
    optimizer="RMSprop",
    cause="amp_overflow",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how much sumi ink a gyotaku printer should load for a fish print from 8 readings (fish length and girth, scale roughness, paper dampness, ...), fp16 autocast with a torch.amp.GradScaler (init scale 65536), RMSprop at 1e-4, MSE, clipping at 1.0 after unscale_, 150 steps. The catch logger writes length and girth raw in millimetres (~400, ~250) and the feature pipeline's standardiser was skipped for those two columns: under the 65536 loss scale fc1's fp16 weight gradient (a 400x input times the scaled upstream gradient) overflows, the scaler skips the step and halves its scale again and again, over 100x down, before the scaled gradients fit and the run trains on.",
)
def h297_gyotaku_raw_mm_fp16(ctx: Context) -> None:
    gen = seeded(29703)
    model = Stack(8, 64)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    _train(
        ctx,
        model,
        opt,
        _fish(gen, 64, seed=703),
        150,
        F.mse_loss,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    sc = ctx.scales
    skipped = sum(1 for a, b in zip([65536.0] + sc[:-1], sc, strict=False) if b < a)
    ctx.check("the loss scale fell over 100x", min(sc) < 65536.0 / 100)
    ctx.check("over 5 steps skipped for inf/NaN gradients", skipped > 5)
    ctx.check(
        "the gradient overflowed: non-finite unscaled norms",
        any(not math.isfinite(v) for v in ctx.grad_norms),
    )
    ctx.check("the losses stay finite", _finite(ctx.losses))


# -- bog oak: one shard's targets in millimetres -------------------------------------------------

ONSET_BOG = 100


@scenario(
    family="bog_oak_seasoning_shrinkage_relu_regressor",
    optimizer="Adadelta",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_BOG,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how much a bog-oak log shrinks while seasoning from 10 standardised readings (years in the peat, moisture, density, tannin stain depth), Adadelta (lr 1.0), MSE, clipping at 1.0, 200 steps. One sawmill's shard, met at step 100, records the shrinkage in millimetres where every other shard records it in metres: eight rows of that batch have targets 1000x. The loss jumps on that batch alone, clipping bounds the step and the run goes on and recovers.",
)
def h297_bog_oak_mm_shard(ctx: Context) -> None:
    gen = seeded(29704)
    model = Stack(10, 64)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)

    def alter(step, x, y):
        if step == ONSET_BOG:
            y = y.clone()
            y[:8] = y[:8] * 1000.0
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=704),
        200,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    before = _median(ls[ONSET_BOG - 20 : ONSET_BOG])
    ctx.check("the loss at the shard is over 100x the usual", ls[ONSET_BOG] > 100 * before)
    ctx.check(
        "the gradient at the shard is over 30x the usual",
        g[ONSET_BOG] > 30 * _median(g[ONSET_BOG - 20 : ONSET_BOG]),
    )
    ctx.check(
        "the run recovers: the loss 20 steps on is under 2x the loss before",
        _mean(ls[ONSET_BOG + 20 : ONSET_BOG + 30]) < 2 * before,
    )
    ctx.check("the loss fell", _mean(ls[-10:]) < 0.8 * _mean(ls[:10]))


# -- hanetsuki: a deep tanh MLP with init std 4.0/sqrt(fan_in) --------------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in=6, width=32, depth=12, std_scale=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 1)
        with torch.no_grad():
            for lin in self.layers:
                lin.weight.normal_(0.0, std_scale / math.sqrt(lin.in_features))
                lin.bias.zero_()

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="hanetsuki_shuttle_flight_time_deep_tanh_mlp",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 14-layer tanh MLP (layers.0 .. layers.13, head) regressing how long a hanetsuki shuttlecock stays up after a hagoita stroke from 6 standardised readings (paddle speed, angle, feather count, bead weight, wind), SGD momentum 0.9 at 1e-3, MSE, 150 steps. The init helper reads its gain from the YAML config, which still said `init_gain: 4.0` from a width sweep, so every layer is drawn `normal_(0, 4.0 / sqrt(fan_in))` where the tanh gain 5/3 was meant: the layers are chaotic, each layer multiplies the backward signal, and layers.0's weight gradient is over 20x layers.13's; the loss barely moves.",
)
def h297_hanetsuki_deep_tanh_init(ctx: Context) -> None:
    gen = seeded(29705)
    model = DeepTanh(depth=14, std_scale=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios: list[float] = []
    orig = opt.step

    def step_and_record(*a, **k):
        g0 = float(model.layers[0].weight.grad.norm())
        g13 = float(model.layers[-1].weight.grad.norm())
        ratios.append(g0 / max(g13, 1e-12))
        return orig(*a, **k)

    opt.step = step_and_record
    _train(ctx, model, opt, _readings(gen, 64, 6, seed=705), 150, F.mse_loss)
    ctx.check("layers.0's gradient is over 20x layers.13's at step 0", ratios[0] > 20)
    ctx.check("layers.0's gradient is over 20x layers.13's on most steps", _median(ratios) > 20)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cyanotype: the variance head without a softplus ---------------------------------------------


class ExposureNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.var_head.weight.mul_(0.1)
            self.var_head.bias.fill_(1.0)

    def forward(self, x):
        h = self.act1(self.fc1(x))
        # the variance was meant to be softplus(var_head(h)); the softplus was dropped
        return torch.cat([self.mean_head(h), self.var_head(h)], -1)


def _gauss_nll(out, y):
    mu, var = out[:, 0], out[:, 1]
    return (0.5 * torch.log(var) + 0.5 * (y - mu) ** 2 / var).mean()


@scenario(
    family="cyanotype_uv_exposure_gaussian_nll_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("var_head",),
    diverges=117,
    heldout=True,
    note="A SiLU net (fc1, act1, mean_head, var_head) predicting the UV exposure time of a cyanotype print and its uncertainty from 8 standardised readings (sun angle, cloud cover, paper sizing, ferric mix age), RAdam at 3e-3, the Gaussian NLL written by hand as 0.5 log(var) + (y - mu)^2 / (2 var), 200 steps. var_head's output was meant to go through a softplus (bias init 1.0 so it starts at unit variance) but the softplus was dropped in a refactor: as the model gets confident, var_head's output for some rows crosses 0 at step 117, log of a negative is NaN and the loss is NaN from that step.",
)
def h297_cyanotype_variance_no_softplus(ctx: Context) -> None:
    gen = seeded(29706)
    model = ExposureNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    min_var: list[float] = []

    def watch(step, out, x, y):
        min_var.append(float(out[:, 1].detach().min()))

    _train(
        ctx, model, opt, _readings(gen, 64, 8, seed=706, noise=0.02), 200, _gauss_nll, watch=watch
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss turned NaN", bad is not None)
    ctx.check("finite for at least 20 steps first", bad is not None and bad >= 20)
    ctx.check(
        "the variance output went negative at the NaN step",
        bad is not None and min_var[bad] < 0 and min(min_var[:bad]) > 0,
    )
    ctx.check(
        "the loss fell before", bad is not None and min(ctx.losses[:bad]) < ctx.losses[0] - 0.3
    )


# -- paper lantern: one curriculum-table weight typed 100 for 1.00 -------------------------------

ONSET_LANTERN = 80


@scenario(
    family="paper_lantern_glue_set_time_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LANTERN,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how long the rice-paste glue on a paper lantern's washi panels takes to set from 10 standardised readings (humidity, paste water ratio, bamboo rib spacing, paper weight), SGD Nesterov momentum 0.9 at 5e-3, MSE, accumulation over 4 micro-batches, clipping at 1.0, 160 steps. A per-step loss weight is read from a hand-edited curriculum table; the entry for step 80 was typed `100` for `1.00`: that one step backpropagates 100x the usual gradient on ordinary data. Clipping bounds the step and the run goes on training.",
)
def h297_paper_lantern_weight_table(ctx: Context) -> None:
    gen = seeded(29707)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=707),
        160,
        F.mse_loss,
        accumulate=4,
        clip=1.0,
        weight_of=lambda s: 100.0 if s == ONSET_LANTERN else 1.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_LANTERN - 20 : ONSET_LANTERN])
    ctx.check("the gradient at step 80 is over 30x the usual", g[ONSET_LANTERN] > 30 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_LANTERN + 1 : ONSET_LANTERN + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on step 80's batch is ordinary",
        ls[ONSET_LANTERN] < 2.0 * _mean(ls[ONSET_LANTERN - 10 : ONSET_LANTERN]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- lime pit: the trunk's lr typed 1e-8 for 1e-2 ------------------------------------------------


@scenario(
    family="lime_pit_hide_plumping_two_group_relu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how much a hide swells in a tanner's lime pit from 10 standardised readings (lime strength, pit temperature, days in the pit, hide thickness, sulphide dose), Adagrad in two param groups (trunk fc1 + fc2, head), MSE, 200 steps. The trunk group's lr was typed 1e-8 for 1e-2 in the config: the head trains at 1e-2 while fc1 and fc2 move by under 1e-5 of their norm over the whole run; the loss falls only as far as a fit of the head on random features allows.",
)
def h297_lime_pit_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(29708)
    model = Stack(10, 64)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 1e-8}, {"params": model.head.parameters(), "lr": 1e-2}]
    )
    w1, wh = _flat(model.fc1), _flat(model.head)
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=708), 200, F.mse_loss)
    moved1 = float((_flat(model.fc1) - w1).norm() / w1.norm())
    movedh = float((_flat(model.head) - wh).norm() / wh.norm())
    ctx.check("fc1 moved under 1e-5 of its norm over the run", moved1 < 1e-5)
    ctx.check("the head moved over 10% of its norm", movedh > 0.1)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.95))


# -- shodo: the softmax temperature read in percent ----------------------------------------------


@scenario(
    family="shodo_brush_stroke_kind_tempered_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which of 8 stroke kinds (ten, yoko, tate, hane, harai, ...) a shodo calligrapher's brush made from 16 standardised pressure and speed readings, NAdam at 2e-3, cross-entropy on logits / temperature, 200 steps. The temperature 1.0 was stored as '1%' in the experiment sheet and parsed as 0.01: the logits reach the softmax 100x too large, and over a third of the rows' float32 softmax gives the target exactly 1.0 (the other classes exactly 0).",
)
def h297_shodo_temperature_percent(ctx: Context) -> None:
    gen = seeded(29709)
    model = Stack(16, 64, out=8, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    temperature = 0.01
    fractions: list[float] = []

    def watch(step, out, x, y):
        fractions.append(collapsed_fraction(out.detach() / temperature, y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 8, seed=709, noise=0.5),
        200,
        lambda out, y: F.cross_entropy(out / temperature, y),
        classifier=True,
        watch=watch,
    )
    ctx.check("under 5% of rows collapsed at step 0", fractions[0] < 0.05)
    ctx.check("over a third of rows collapsed at the end", _mean(fractions[-10:]) > 1 / 3)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- dohyo: a fallback loss weight of 1e5 fires once ---------------------------------------------

ONSET_DOHYO = 60


@scenario(
    family="dohyo_clay_ring_compaction_gelu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_DOHYO,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing how firm the clay of a sumo dohyo is after tamping from 10 standardised readings (clay moisture, sand ratio, tamping passes, days since building), AdamW at 1e-3, MSE, 240 steps. The loss weight is looked up per data source with a fallback `weights.get(src, 1e5)` meant as a sentinel; at step 60 a batch arrives with a source tag missing from the table and its loss is multiplied by 1e5: one giant gradient fills Adam's second moment, and for the rest of the run the updates are over 10x smaller than before and the loss stalls, above where it was before the step.",
)
def h297_dohyo_fallback_weight(ctx: Context) -> None:
    gen = seeded(29710)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    sizes: list[float] = []
    prev = [_flat(model)]

    def after(step):
        now = _flat(model)
        sizes.append(float((now - prev[0]).norm()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=710),
        240,
        F.mse_loss,
        after=after,
        weight_of=lambda s: 1e5 if s == ONSET_DOHYO else 1.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at step 60 is over 1e4x the usual",
        g[ONSET_DOHYO] > 1e4 * _median(g[ONSET_DOHYO - 20 : ONSET_DOHYO]),
    )
    ctx.check(
        "the updates after are over 10x smaller than before",
        _median(sizes[ONSET_DOHYO + 10 :]) < 0.1 * _median(sizes[ONSET_DOHYO - 20 : ONSET_DOHYO]),
    )
    ctx.check(
        "the loss stalls: the last 10 steps are over 0.7x the 10 before the onset",
        _mean(ls[-10:]) > 0.7 * _mean(ls[ONSET_DOHYO - 10 : ONSET_DOHYO]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- rakugo: a mixture of experts with a learned gate (control) ---------------------------------


class GatedMoE(nn.Module):
    """A dense mixture of small GELU experts weighted by a learned softmax gate."""

    def __init__(self, dim, hidden, experts):
        super().__init__()
        self.gate = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            for _ in range(experts)
        )
        self.last_gate: torch.Tensor | None = None

    def forward(self, x):
        w = torch.softmax(self.gate(x), -1)
        self.last_gate = w.detach()
        out = torch.stack([e(x) for e in self.experts], -1)
        return (out * w[:, None, :]).sum(-1)


class FanGestureNet(nn.Module):
    def __init__(self, d_in=12, dim=32, experts=4, classes=7):
        super().__init__()
        self.stem = nn.Linear(d_in, dim)
        self.norm = nn.LayerNorm(dim)
        self.moe = GatedMoE(dim, 48, experts)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.norm(F.gelu(self.stem(x)))
        return self.head(h + self.moe(h))


@scenario(
    family="rakugo_sensu_fan_gesture_moe_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a rakugo storyteller's fan-gesture classifier (which of 7 props the folded sensu mimes: chopsticks, brush, pipe, sword, ...) from 12 standardised wrist readings: stem Linear + GELU + LayerNorm, a residual mixture-of-experts layer (4 GELU experts weighted by a learned softmax gate), head. SGD momentum 0.9, OneCycleLR to 0.05, label smoothing 0.1, accumulation over 2 micro-batches, clipping at 1.0, 200 steps.",
)
def h297_rakugo_moe_control(ctx: Context) -> None:
    gen = seeded(29711)
    model = FanGestureNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    usage: list[torch.Tensor] = []

    def watch(step, out, x, y):
        usage.append(model.moe.last_gate.mean(0))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 12, 7, seed=711, noise=0.6),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        watch=watch,
        sched=sched,
        clip=1.0,
        accumulate=2,
    )
    share = torch.stack(usage[-20:]).mean(0)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("every expert keeps over 5% of the gate", float(share.min()) > 0.05)


# -- boro: a multi-label fp16 BCE net with a GradScaler (control) -------------------------------


@scenario(
    family="boro_patch_mending_multilabel_fp16_bce_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) tagging which of 6 repairs a boro indigo garment needs (patch, sashiko running stitch, darn, reinforce, re-dye, none-urgent) from 14 standardised wear readings, multi-label BCE with logits, fp16 autocast with a torch.amp.GradScaler, AdamW in two param groups (weights with decay 0.05, biases and the head's bias without), linear warm-up over 20 steps then cosine, clipping at 1.0 after unscale_, 200 steps.",
)
def h297_boro_fp16_control(ctx: Context) -> None:
    gen = seeded(29712)
    model = Stack(14, 64, out=6, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, 200) / 200)),
    )
    scaler = torch.amp.GradScaler("cpu")

    def tags(g, batch):
        w = torch.randn(14, 6, generator=torch.Generator().manual_seed(712))
        while True:
            x = torch.randn(batch, 14, generator=g)
            z = x @ w / math.sqrt(14) * 2.5 + 0.3 * torch.randn(batch, 6, generator=g)
            yield x, (z > 0.3).float()

    _train(
        ctx,
        model,
        opt,
        tags(gen, 64),
        200,
        F.binary_cross_entropy_with_logits,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the loss scale stayed above 1000", min(ctx.scales) > 1000)


# -- marram grass: Huber with Adamax and ReduceLROnPlateau (control) -----------------------------


@scenario(
    family="marram_grass_dune_binding_huber_regressor",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tanh MLP (fc1, act1, fc2, act2, head) regressing how much sand a planted marram-grass strip binds over a season from 12 standardised readings (planting density, wind exposure, rhizome depth, rainfall), Student-t (3 dof) noise on the targets, Huber loss, Adamax at 2e-3, ReduceLROnPlateau (factor 0.5, patience 10), clipping at 1.0, 220 steps.",
)
def h297_marram_huber_control(ctx: Context) -> None:
    gen = seeded(29713)
    model = Stack(12, 64, act=nn.Tanh)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=713, noise=0.1, heavy=True),
        220,
        F.huber_loss,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))
