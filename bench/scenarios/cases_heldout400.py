"""Held-out set 400 (``h400_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a lute-rosette carving classifier whose trunk group's lr is typed 1e-9 for 1e-3 (frozen
trunk), a sled-dog tug-line ReLU regressor with Adam's lr typed 1e-1 for 1e-3 (ReLUs die), a
pelota fronton-wall rebound classifier trained with F.nll_loss on raw logits (the head's logits grow
without bound), a hang-glider thermal-climb fp16 regressor whose GradScaler growth_interval is typed
1 for 2000 (the scale doubles every step until fp16 gradients overflow, over and over), a
tanner hide-liming Gamma-NLL net whose rate head lost its softplus (log of a negative: NaN), a
cooper's hoop-and-stave multi-task net (shared trunk, class/regression/binary heads, fixed loss
weights) fed one yard's shard in millimetres at step 120, a sheep-shearing blow-count Huber
regressor whose resumed step 150 sums its accumulation micro-batches with reduction='sum', a
wind-chime tube twelve-layer tanh MLP initialised with std typed 3.0 / sqrt(fan_in), a slackline
bounce-height tanh regressor whose warm-up lambda lost its min(1, .) clamp, and a
horseshoe-pitching ringer-drift tanh regressor whose hand-written weight decay multiplies by
(1 + lr * wd).

Controls: a peat-cutting turf multi-task net (losses normalised by their initial values, clipping,
Adam), a Morris-dance bell-pad Conv1d classifier (SGD momentum under OneCycleLR, label smoothing,
clipping) and a wax-seal impression-depth SiLU Huber regressor (AdamW with a no-decay group,
ReduceLROnPlateau, clipping).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

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
    watch=None,
    after=None,
    backprop=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    inspect=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, k)`` returns
    the loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the
    gradients before clipping. Stops after a non-finite loss (once ``ctx.step`` has seen it)."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y if not isinstance(y, tuple) else y[0])
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            if watch is not None:
                watch(step, out, x, y)
            out = tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
            loss = loss_fn(out, y)
            total = loss / accumulate
            if backprop is not None:
                total = backprop(step, loss, accumulate)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, classes, seed, length=40, channels=2):
    """Short multichannel traces: each class a damped oscillation at its own frequency."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.6 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.05 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase) * torch.exp(-t / 40.0)
        yield x + 0.3 * torch.randn(batch, channels, length, generator=gen), y


def _multitask(gen, batch, d_in, seed, classes=4):
    """Readings with three targets: a class, a continuous value, a binary tag."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, d_in, generator=g)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    u = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    while True:
        c = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[c] + 0.8 * torch.randn(batch, d_in, generator=gen)
        r = torch.tanh(x @ w) + 0.05 * torch.randn(batch, generator=gen)
        b = (x @ u + 0.2 * torch.randn(batch, generator=gen) > 0).float()
        yield x, (c, r, b)


# -- models ----------------------------------------------------------------------------------------


class _Stack(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head, named modules."""

    def __init__(self, d_in, hidden, d_out, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, d_out)

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


class _ThreeHeadNet(nn.Module):
    """A shared trunk with a classifier, a regressor and a binary tagger."""

    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.grade_head = nn.Linear(hidden, classes)
        self.size_head = nn.Linear(hidden, 1)
        self.tag_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.trunk(x)
        return self.grade_head(h), self.size_head(h).squeeze(-1), self.tag_head(h).squeeze(-1)


def _three_losses(out, y):
    logits, size, tag = out
    c, r, b = y
    return (
        F.cross_entropy(logits, c),
        F.mse_loss(size, r),
        F.binary_cross_entropy_with_logits(tag, b),
    )


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    "lute_rosette_carving_two_group_relu_classifier",
    "adagrad",
    "update_ratio_out_of_range",
    where=("fc1", "fc2"),
    heldout=True,
    note="Two param groups (trunk, head); the trunk's lr is typed 1e-9 for 1e-3 in the config, "
    "so fc1 and fc2 barely move while receiving gradients; the head alone learns.",
)
def h400_lute_rosette_frozen_trunk(ctx: Context) -> None:
    gen = seeded(4001)
    model = _Stack(16, 64, 6)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 5e-2}]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    gn1: list[float] = []

    def inspect(step):
        gn1.append(float(model.fc1.weight.grad.norm()))

    _loop(ctx, model, opt, _grades(gen, 64, 16, 6, 41, spread=1.6), 150, F.cross_entropy,
          classifier=True, inspect=inspect)  # fmt: skip
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(w1, model.fc1.weight) < 1e-5)
    ctx.check("fc1 receives gradients", _median(gn1) > 1e-3)
    ctx.check("the head moves over 5%", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "sled_dog_tug_line_load_relu_regressor",
    "adam",
    "loss_of_plasticity",
    where=("fc2", "act2"),
    heldout=True,
    note="Adam's lr typed 1e-1 for 1e-3: the first large updates push fc2's pre-activations "
    "negative and most of act2's ReLUs die and never recover; the survivors carry the fit.",
)
def h400_sled_dog_dead_relus(ctx: Context) -> None:
    gen = seeded(4002)
    model = _Stack(12, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-1)
    probe = torch.randn(512, 12, generator=torch.Generator().manual_seed(7))
    dead: list[float] = []

    def dead_share(m):
        with torch.no_grad():
            return float((m.features(probe) <= 0).all(0).float().mean())

    # the intended rate, same init and data, for the comparison check (no monitor attached)
    ref = _Stack(12, 64, 1)
    ref.load_state_dict(model.state_dict())
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)
    ref_data = _readings(torch.Generator().manual_seed(4002), 64, 12, 42)
    for _ in range(150):
        x, y = next(ref_data)
        ref_opt.zero_grad()
        F.mse_loss(ref(x), y).backward()
        ref_opt.step()

    def after(step):
        dead.append(dead_share(model))

    _loop(ctx, model, opt, _readings(gen, 64, 12, 42), 150, F.mse_loss, after=after)
    ctx.check("over 60% of act2 dead over the last 50 steps", min(dead[-50:]) > 0.6)
    ctx.check("under 20% dead at the intended lr 1e-3", dead_share(ref) < 0.2)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "pelota_fronton_wall_rebound_raw_nll_classifier",
    "adamw",
    "output_logit_divergence",
    where=("head",),
    heldout=True,
    note="The model's final LogSoftmax was dropped in a refactor while the loss stayed "
    "F.nll_loss: the 'loss' is minus the target's raw logit, unbounded below, so the head's "
    "logits grow without bound.",
)
def h400_pelota_raw_nll(ctx: Context) -> None:
    gen = seeded(4003)
    model = _Stack(16, 48, 5, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    probe = torch.randn(256, 16, generator=torch.Generator().manual_seed(8))
    top: list[float] = []

    def after(step):
        with torch.no_grad():
            top.append(float(model(probe).abs().max()))

    _loop(ctx, model, opt, _grades(gen, 64, 16, 5, 43), 150, F.nll_loss, classifier=True,
          after=after)  # fmt: skip
    ctx.check("max |logit| over 20x its start", top[-1] > 20 * top[0])
    ctx.check("still growing over the last 30 steps", top[-1] > 1.2 * top[-31])
    ctx.check("the 'loss' is below -10", ctx.losses[-1] < -10)


@scenario(
    "hang_glider_thermal_climb_fp16_silu_regressor",
    "adamax",
    "amp_overflow",
    where=(),
    heldout=True,
    note="fp16 autocast with a GradScaler whose growth_interval is typed 1 for 2000: the loss "
    "scale doubles every step until the fp16 backward overflows to inf, the step is skipped "
    "and the scale halves, over and over; a large share of the steps is skipped.",
)
def h400_hang_glider_scaler_overflow(ctx: Context) -> None:
    gen = seeded(4004)
    model = _Stack(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    bad: list[bool] = []

    def inspect(step):
        bad.append(
            any(not bool(torch.isfinite(p.grad).all()) for p in model.parameters()
                if p.grad is not None)
        )  # fmt: skip

    _loop(ctx, model, opt, _readings(gen, 64, 10, 44), 150, F.mse_loss, scaler=scaler,
          amp=True, inspect=inspect)  # fmt: skip
    skipped = sum(bad)
    ctx.check("over 25% of steps have inf/NaN gradients (skipped)", skipped > 0.25 * len(bad))
    backoffs = sum(1 for a, b in zip(ctx.scales[:-1], ctx.scales[1:], strict=True) if b < a)
    ctx.check("the scale backs off over 20 times", backoffs > 20)
    ctx.check("logged losses finite", _finite(ctx.losses))


@scenario(
    "tanner_hide_liming_time_gamma_nll_net",
    "nadam",
    "nonfinite",
    where=("rate_head",),
    diverges=44,
    heldout=True,
    note="Gamma NLL with shape and rate heads; the rate head's softplus was dropped in a "
    "refactor, so the raw linear output is used as the rate and log(rate) is NaN once it turns "
    "negative for some row.",
)
def h400_tanner_gamma_nan(ctx: Context) -> None:
    gen = seeded(4005)

    class GammaNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(nn.Linear(8, 48), nn.Tanh(), nn.Linear(48, 48), nn.Tanh())
            self.shape_head = nn.Linear(48, 1)
            self.rate_head = nn.Linear(48, 1)
            with torch.no_grad():
                self.rate_head.bias.fill_(1.0)

        def forward(self, x):
            h = self.trunk(x)
            shape = F.softplus(self.shape_head(h)).squeeze(-1) + 1e-3
            rate = self.rate_head(h).squeeze(-1)  # softplus dropped here
            return torch.stack([shape, rate], -1)

    def nll(out, y):
        a, b = out[:, 0], out[:, 1]
        return (torch.lgamma(a) - a * torch.log(b) - (a - 1) * torch.log(y) + b * y).mean()

    def data():
        g = torch.Generator().manual_seed(45)
        w = torch.randn(8, generator=g) / math.sqrt(8)
        while True:
            x = torch.randn(64, 8, generator=gen)
            mean = torch.exp(0.8 * torch.tanh(x @ w)) * 6.0
            # hours of liming, skewed: gamma draws with shape 3
            y = torch.distributions.Gamma(3.0, 3.0 / mean).sample()
            yield x, y.clamp_min(1e-3)

    model = GammaNet()
    opt = torch.optim.NAdam(model.parameters(), lr=5e-4)
    neg: list[int] = []

    def watch(step, out, x, y):
        neg.append(int((out[:, 1] <= 0).sum()))

    n = _loop(ctx, model, opt, data(), 250, nll, watch=watch)
    k = _first_bad(ctx.losses)
    ctx.check("loss non-finite", k is not None)
    ctx.check("a rate is non-positive at the NaN step", k is not None and neg[k] > 0)
    ctx.check("rates all positive at the start", neg[0] == 0)
    ctx.check("stopped at the NaN", n == len(ctx.losses))


@scenario(
    "coopers_hoop_stave_multitask_net",
    "sgd_momentum",
    "data_outlier",
    where=(),
    onset=120,
    heldout=True,
    note="A shared trunk with three heads (stave grade classifier, hoop diameter regressor, "
    "leak tagger), losses summed with fixed weights 1.0/0.5/0.5; at step 120 one yard's shard "
    "arrives with three gauge columns in millimetres instead of metres (x1000).",
)
def h400_coopers_hoop_bad_shard(ctx: Context) -> None:
    gen = seeded(4006)
    model = _ThreeHeadNet(12, 64, 4)
    opt = torch.optim.SGD(model.parameters(), lr=3e-2, momentum=0.9)

    def loss_fn(out, y):
        ce, mse, bce = _three_losses(out, y)
        return 1.0 * ce + 0.5 * mse + 0.5 * bce

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, [2, 5, 7]] *= 1000.0
        return x, y

    _loop(ctx, model, opt, _multitask(gen, 64, 12, 46), 200, loss_fn, classifier=True,
          alter=alter, clip=5.0)  # fmt: skip
    pre_l, pre_g = _median(ctx.losses[100:120]), _median(ctx.grad_norms[100:120])
    ctx.check("loss at step 120 over 20x", ctx.losses[120] > 20 * pre_l)
    ctx.check("gradient at step 120 over 20x", ctx.grad_norms[120] > 20 * pre_g)
    ctx.check("recovers", _mean(ctx.losses[-10:]) < 2 * pre_l and _finite(ctx.losses))


@scenario(
    "sheep_shearing_blow_count_accum_huber_regressor",
    "sgd_nesterov",
    "gradient_spike",
    where=(),
    onset=150,
    heldout=True,
    note="Accumulation over 4 micro-batches; the step resumed at 150 after a pre-emption runs a "
    "branch that backpropagates the micro-batch losses with reduction='sum' (x64) and no "
    "division by 4: one gradient burst on clean data, clipped, the run recovers.",
)
def h400_sheep_shearing_sum_step(ctx: Context) -> None:
    gen = seeded(4007)
    model = _Stack(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def backprop(step, loss, k):
        if step == 150:
            return loss * 64  # reduction='sum' over the 64-row micro-batch, no / k
        return loss / k

    _loop(ctx, model, opt, _readings(gen, 64, 10, 47), 220, F.huber_loss, backprop=backprop,
          accumulate=4, clip=1.0)  # fmt: skip
    pre_g, pre_l = _median(ctx.grad_norms[130:150]), _median(ctx.losses[130:150])
    ctx.check("gradient at step 150 over 50x", ctx.grad_norms[150] > 50 * pre_g)
    ctx.check("logged loss at step 150 ordinary", ctx.losses[150] < 2 * pre_l)
    ctx.check("recovers", _mean(ctx.losses[-10:]) < 2 * pre_l and _finite(ctx.losses))


@scenario(
    "wind_chime_tube_deep_tanh_mlp",
    "rmsprop",
    "exploding_gradients",
    where=("layers.0",),
    heldout=True,
    note="Twelve tanh layers initialised with std 3.0 / sqrt(fan_in) (a gain typed 3.0 for "
    "1.0): tanh saturates less than it amplifies in backprop and the gradient grows toward the "
    "input; clipped, the run trains poorly.",
)
def h400_wind_chime_deep_tanh(ctx: Context) -> None:
    gen = seeded(4008)

    class Deep(nn.Module):
        def __init__(self, gain):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(32, 32) for _ in range(12))
            self.head = nn.Linear(32, 1)
            for m in self.layers:
                nn.init.normal_(m.weight, std=gain / math.sqrt(32))
                nn.init.zeros_(m.bias)
            self.inner: list[torch.Tensor] = []

        def forward(self, x):
            self.inner = []
            h = x
            for m in self.layers:
                h = m(h)
                if h.requires_grad:
                    h.retain_grad()
                self.inner.append(h)
                h = torch.tanh(h)
            return self.head(h).squeeze(-1)

    def ratio(model):
        return float(model.inner[0].grad.norm() / model.inner[-1].grad.norm().clamp_min(1e-12))

    probe_model = Deep(1.0)
    xb = torch.randn(64, 32, generator=torch.Generator().manual_seed(9))
    F.mse_loss(probe_model(xb), torch.zeros(64)).backward()
    intended = ratio(probe_model)

    model = Deep(3.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    ratios: list[float] = []

    def inspect(step):
        ratios.append(ratio(model))

    def data():
        yield from _readings(gen, 64, 32, 48)

    _loop(ctx, model, opt, data(), 120, F.mse_loss, inspect=inspect, clip=1.0)
    ctx.check("dL/d(layer 0) over 20x dL/d(layer 11) at the start", ratios[0] > 20)
    ctx.check("median ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at gain 1.0", intended < 5)
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "slackline_bounce_height_tanh_regressor",
    "sgd",
    "sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Plain SGD with a LambdaLR warm-up lambda (s + 1) / 20 whose min(1, .) clamp was lost: "
    "the rate keeps climbing past 2/sharpness and the loss blows up.",
)
def h400_slackline_unclamped_warmup(ctx: Context) -> None:
    gen = seeded(4009)
    model = _Stack(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / 20)
    probe = next(_readings(torch.Generator().manual_seed(11), 256, 8, 49))
    lrs: list[float] = []
    sharp: dict[int, float] = {}

    def top_eig(iters=20):
        params = [p for p in model.parameters()]
        loss = F.mse_loss(model(probe[0]), probe[1])
        grads = torch.autograd.grad(loss, params, create_graph=True)
        v = [torch.randn_like(p) for p in params]
        lam = 0.0
        for _ in range(iters):
            nv = math.sqrt(sum(float((u * u).sum()) for u in v))
            v = [u / nv for u in v]
            hv = torch.autograd.grad(grads, params, v, retain_graph=True)
            lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
            v = [h.detach() for h in hv]
        return lam

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (0, 20, 100, 150):
            sharp[step] = top_eig()

    _loop(ctx, model, opt, _readings(gen, 64, 8, 49), 300, F.mse_loss, before=before,
          sched=sched)  # fmt: skip
    k = _first_bad(ctx.losses)
    ctx.check("lr x sharpness under 2 at step 20", lrs[20] * sharp.get(20, 1e9) < 2)
    ctx.check(
        "lr x sharpness past 2 before the blow-up",
        any(lrs[s] * sharp[s] > 2 for s in (100, 150) if s in sharp and s < len(lrs) - 5),
    )
    ctx.check("loss blows up", k is not None or max(ctx.losses) > 100 * min(ctx.losses))


@scenario(
    "horseshoe_pitching_ringer_drift_tanh_regressor",
    "radam",
    "loss_divergence",
    where=(),
    heldout=True,
    note="Hand-written decoupled weight decay applied after the step as p *= (1 + lr * wd) for "
    "(1 - lr * wd): the weights inflate slowly and the loss climbs with no jump.",
)
def h400_horseshoe_decay_sign(ctx: Context) -> None:
    gen = seeded(4010)
    model = _Stack(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    lr, wd = 2e-3, 3.0
    w0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    _loop(ctx, model, opt, _readings(gen, 64, 8, 50), 250, F.mse_loss, after=after)
    w1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    means = [_mean(ctx.losses[i : i + 10]) for i in range(0, len(ctx.losses), 10)]
    low = min(_mean(ctx.losses[i : i + 20]) for i in range(0, len(ctx.losses) - 20, 10))
    ctx.check("weights over 2x", w1 > 2 * w0)
    ctx.check("loss climbs to over 3x its lowest 20-step mean", _mean(ctx.losses[-20:]) > 3 * low)
    ctx.check(
        "no 2x jump between 10-step means",
        all(b < 2 * a for a, b in zip(means, means[1:], strict=False)),
    )
    ctx.check("finite", _finite(ctx.losses))


# -- controls --------------------------------------------------------------------------------------


@scenario(
    "peat_cutting_turf_multitask_net",
    "adam",
    "healthy",
    heldout=True,
    note="Shared trunk, three heads (turf grade, moisture, crumble tag); each loss divided by "
    "its value at step 0, clipping at 1.0, Adam.",
)
def h400_peat_cutting_normalised_multitask(ctx: Context) -> None:
    gen = seeded(4011)
    model = _ThreeHeadNet(12, 64, 4)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first: list[float] = []

    def loss_fn(out, y):
        parts = _three_losses(out, y)
        if not first:
            first.extend(float(p.detach()) for p in parts)
        return sum(p / f for p, f in zip(parts, first, strict=True))

    _loop(ctx, model, opt, _multitask(gen, 64, 12, 51), 200, loss_fn, classifier=True,
          clip=1.0)  # fmt: skip
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "morris_dance_bell_pad_conv1d_classifier",
    "sgd_momentum",
    "healthy",
    heldout=True,
    note="ReLU Conv1d classifier of bell-pad jingle traces, SGD momentum with weight decay under "
    "OneCycleLR, label smoothing 0.1, clipping.",
)
def h400_morris_bell_pad(ctx: Context) -> None:
    gen = seeded(4012)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv1d(2, 16, 5, padding=2)
            self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
            self.head = nn.Linear(32, 5)

        def forward(self, x):
            h = F.max_pool1d(F.relu(self.conv1(x)), 2)
            h = F.relu(self.conv2(h)).mean(-1)
            return self.head(h)

    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, _traces(gen, 32, 5, 52), steps, loss_fn, classifier=True,
          sched=sched, clip=1.0)  # fmt: skip
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite", _finite(ctx.losses))


@scenario(
    "wax_seal_impression_depth_silu_huber_regressor",
    "adamw",
    "healthy",
    heldout=True,
    note="SiLU regressor of seal impression depth, AdamW with biases in a no-decay group, "
    "ReduceLROnPlateau on a held-out batch, clipping, Huber loss.",
)
def h400_wax_seal_plateau(ctx: Context) -> None:
    gen = seeded(4013)
    model = _Stack(10, 64, 1, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    val = next(_readings(torch.Generator().manual_seed(13), 256, 10, 53))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(val[0]), val[1]))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 53), 200, F.huber_loss, sched=sched,
          plateau=plateau, clip=1.0)  # fmt: skip
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite", _finite(ctx.losses))
