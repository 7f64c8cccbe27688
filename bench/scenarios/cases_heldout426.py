"""Held-out set 426 (``h426_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a kite-buggy drift-angle tanh regressor whose lr is typed 10x too large (past
2/sharpness), a kumihimo braid-tension SiLU regressor whose loss-weight table is reloaded in
parts per million for one step (Adam's second moment filled, the updates stall), a tin-whistle
half-hole classifier whose temperature is read in hundredths (softmax saturates), a sea-foam
bubble-lifetime 12-layer tanh MLP initialised with std 3/sqrt(fan_in) (gradients grow through
depth), a steam-devil column-height net whose share normaliser divides by a sum that is zero on a
calm hour (0/0), a mead must-gravity ReLU regressor fed one cellar's shard in gravity points (one
corrupted batch), a lampwork bead-crack BCE net whose resumed step uses reduction='sum' (one
gradient burst), a tatting shuttle picot two-group regressor whose trunk lr is typed 2e-9 (a frozen
trunk), a fairy-circle ring-width ReLU regressor on RMSprop at lr 3e-2 for 3e-4 (ReLUs die) and a
hoop-rolling stick-speed regressor whose decoupled weight decay has its sign flipped (a slow
climb).

Controls: a mammatus cloud-lobe top-k sparse autoencoder (decoder columns normalised, auxiliary
dead-latent loss, Adam under a cosine schedule), a felting-needle fibre-grade fp16 Conv1d
classifier (GradScaler, AdamW under OneCycleLR, label smoothing, clipping) and a rogue-wave crest
GELU Huber regressor (noisy targets, ASGD, ReduceLROnPlateau, accumulation, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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
        y = (x @ w + 0.5 * torch.sin(2 * x[:, 1]) > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


class _MLP(nn.Module):
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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    n = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / n for u in v]
    lam = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        n = torch.sqrt(sum((u * u).sum() for u in hv)).clamp_min(1e-12)
        v = [u / n for u in hv]
    return lam


def _dead(model, x, name="act2") -> float:
    """Share of the named ReLU's units never positive on x."""
    feats = {}
    h = dict(model.named_modules())[name].register_forward_hook(
        lambda m, i, o: feats.__setitem__("o", o.detach())
    )
    with torch.no_grad():
        model(x)
    h.remove()
    return dead_fraction(feats["o"])


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="kite_buggy_beach_drift_angle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=16,
    heldout=True,
    note="Kite-buggy beach drift-angle regressor (tanh MLP, MSE) on plain SGD whose learning rate "
    "is linearly warmed up over 100 steps to a peak typed 10x too large in the sweep config. The "
    "intended peak sits well inside 2/sharpness; part-way through the warm-up the typed schedule "
    "takes lr x sharpness past 2, and the loss oscillates and blows up.",
)
def h426_kite_buggy_lr_typo(ctx) -> None:
    gen = seeded(4261)
    model = _MLP(10, 48, 1, act=nn.Tanh)
    batches = _readings(gen, 64, 10, seed=4261)
    x0, y0 = next(batches)
    lam0 = _sharpness(model, F.mse_loss, x0, y0)
    intended = 1.0 / lam0
    peak = 10 * intended
    warm = 100
    opt = torch.optim.SGD(model.parameters(), lr=peak / warm)
    products = {}

    def before(step):
        opt.param_groups[0]["lr"] = peak * min(1.0, (step + 1) / warm)
        if step % 5 == 0 or step < 30:
            products[step] = opt.param_groups[0]["lr"] * _sharpness(model, F.mse_loss, x0, y0)

    losses = _loop(ctx, model, opt, batches, 160, F.mse_loss, before=before)
    crossed = [s for s, v in sorted(products.items()) if v > 2.0]
    ctx.check("lr x sharpness under 2 at step 0", products[0] < 2.0)
    ctx.check("lr x sharpness first past 2 at step 16 (the onset)", crossed[:1] == [16])
    ctx.check(
        "the loss blows up (non-finite or over 100x its lowest) after it crossed",
        bool(crossed)
        and (_first_bad(losses) is not None or max(losses[crossed[0] :]) > 100 * min(losses)),
    )
    ref_gen = seeded(4261)
    ref = _MLP(10, 48, 1, act=nn.Tanh)
    ref_b = _readings(ref_gen, 64, 10, seed=4261)
    next(ref_b)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=intended / warm)

    def ref_before(step):
        ref_opt.param_groups[0]["lr"] = intended * min(1.0, (step + 1) / warm)

    ref_losses = _loop(None, ref, ref_opt, ref_b, 160, F.mse_loss, before=ref_before, attach=False)
    ctx.check("at the intended peak the same run trains", _fell(ref_losses))


@scenario(
    family="kumihimo_braid_tension_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="Kumihimo braid-tension SiLU regressor (MSE) on Adam. At step 60 the per-braid loss "
    "weight table is reloaded from a file written in parts per million (1e6 for 1.0) for one "
    "step; the one giant gradient fills Adam's second moment (beta2 0.999) and every update "
    "afterwards is over 20x smaller: the loss stalls well above the clean run's.",
)
def h426_kumihimo_ppm_weight(ctx) -> None:
    gen = seeded(4262)
    model = _MLP(12, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 12, seed=4262, noise=0.02)
    moves = []
    snap = {}

    def before(step):
        snap["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        moves.append(
            math.sqrt(
                sum(
                    float(((p.detach() - w) ** 2).sum())
                    for p, w in zip(model.parameters(), snap["w"], strict=True)
                )
            )
        )

    losses = _loop(
        ctx,
        model,
        opt,
        batches,
        220,
        F.mse_loss,
        before=before,
        after=after,
        backprop=lambda s, loss: loss * (1e6 if s == 60 else 1.0),
    )
    ref_gen = seeded(4262)
    ref = _MLP(12, 64, 1, act=nn.SiLU)
    ref_losses = _loop(
        None,
        ref,
        torch.optim.Adam(ref.parameters(), lr=1e-3),
        _readings(ref_gen, 64, 12, seed=4262, noise=0.02),
        220,
        F.mse_loss,
        attach=False,
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 60 over 1e4x the median before", g[60] > 1e4 * _median(g[:60]))
    ctx.check(
        "updates over steps 120-220 under 5% of those over steps 20-60",
        _mean(moves[120:]) < 0.05 * _mean(moves[20:60]),
    )
    ctx.check(
        "the loss stalls: the last 20 steps over 1.5x the clean run's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(losses))


class _TempClassifier(nn.Module):
    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = 1.0

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="tin_whistle_half_hole_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Tin-whistle half-hole fingering classifier (ReLU MLP, cross-entropy over 6 fingerings) "
    "with a softmax temperature read from a config in hundredths (0.01 for 1.0). The head's "
    "logits are divided by 0.01 and the softmax saturates: most rows' target probability rounds "
    "to exactly 1.0 in float32.",
)
def h426_tin_whistle_temperature(ctx) -> None:
    gen = seeded(4263)
    model = _TempClassifier(16, 64, 6)
    model.temperature = 0.01
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 16, 6, seed=4263, spread=1.0)
    fracs, ref_fracs = [], []

    def after(step):
        x, y = last["b"]
        with torch.no_grad():
            out = model(x)
        fracs.append(collapsed_fraction(out, y))
        ref_fracs.append(collapsed_fraction(out * model.temperature, y))

    last = {}

    def alter(step, x, y):
        last["b"] = (x, y)
        return x, y

    losses = _loop(
        ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, alter=alter, after=after
    )
    ctx.check("over half the rows collapsed over the last 30 steps", _mean(fracs[-30:]) > 0.5)
    ctx.check("under 5% at temperature 1.0 on the same logits", _mean(ref_fracs[-30:]) < 0.05)
    ctx.check("finite", _finite(losses))


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, std_scale):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.acts = nn.ModuleList(nn.Tanh() for _ in range(depth))
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=std_scale / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        h = x
        for lin, act in zip(self.layers, self.acts, strict=True):
            z = lin(h)
            if z.requires_grad:
                z.retain_grad()
            self.outs.append(z)
            h = act(z)
        return self.head(h).squeeze(-1)


@scenario(
    family="sea_foam_bubble_lifetime_deep_tanh_mlp",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Sea-foam bubble-lifetime regressor, a 12-layer tanh MLP (MSE, Adamax, clipped to 1.0) "
    "whose init helper was called with std 3.0 / sqrt(fan_in) where 1.0 / sqrt(fan_in) was meant. "
    "Each layer multiplies the backward signal: the gradient reaching layers.0's output is over "
    "10x the one at the last layer's, from the start and through the run.",
)
def h426_sea_foam_init_gain(ctx) -> None:
    def run(scale, attach):
        gen = seeded(4264)
        model = _Deep(8, 32, 12, scale)
        opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
        batches = _readings(gen, 64, 8, seed=4264)
        ratios = []
        losses = []
        if attach:
            ctx.attach(model, opt)
        for _step in range(150):
            x, y = next(batches)
            loss = F.mse_loss(model(x), y)
            loss.backward()
            ratios.append(
                float(model.outs[0].grad.norm() / model.outs[-1].grad.norm().clamp_min(1e-20))
            )
            if attach:
                ctx.grad_norms.append(grad_norm(model))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
            if attach:
                ctx.step(loss)
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(float(loss)):
                break
        return ratios, losses

    ratios, losses = run(3.0, True)
    ref_ratios, _ = run(1.0, False)
    ctx.check("dL/d(layers.0 out) over 10x dL/d(layers.11 out) at the start", ratios[0] > 10)
    ctx.check("and in median over the run", _median(ratios) > 10)
    ctx.check("under 5x with std 1.0/sqrt(fan_in)", _median(ref_ratios) < 5)


class _ShareNorm(nn.Module):
    """Each row's readings as shares of the row's total (x / x.sum)."""

    def forward(self, x):
        return x / x.sum(-1, keepdim=True)


class _ShareNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.share = _ShareNorm()
        self.fc1 = nn.Linear(d_in + 1, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        total = torch.log1p(x.sum(-1, keepdim=True))
        h = torch.cat([self.share(x), total], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _dust_counts(gen, batch, d_in, seed):
    """Hourly dust-sensor counts around a dust devil (non-negative) and a column height."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    while True:
        x = torch.rand(batch, d_in, generator=gen) * 5.0 + 0.5
        p = x / x.sum(-1, keepdim=True)
        y = torch.tanh(4 * p @ w) + 0.3 * torch.log1p(x.sum(-1)) - 1.0
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="steam_devil_column_height_share_normaliser_net",
    optimizer="AdamW",
    cause="nonfinite",
    where=("share",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Steam-devil column-height SiLU regressor (MSE, AdamW) whose first layer turns the hour's "
    "eight lake-edge sensor counts into shares, x / x.sum(), with no guard for an empty hour. At "
    "step 90 the batch holds the first calm hour, every sensor reading 0: 0/0 gives NaN in "
    "'share' and the loss is NaN at step 90.",
)
def h426_steam_devil_zero_share(ctx) -> None:
    gen = seeded(4265)
    model = _ShareNet(8, 48)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    batches = _dust_counts(gen, 64, 8, seed=4265)
    seen = {}

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[5] = 0.0
            with torch.no_grad():
                seen["share_nan"] = bool(torch.isnan(model.share(x)).any())
        return x, y

    losses = _loop(ctx, model, opt, batches, 150, F.mse_loss, alter=alter)
    ctx.check("the loss is NaN at step 90", len(losses) == 91 and math.isnan(losses[90]))
    ctx.check("finite before step 90", _finite(losses[:90]))
    ctx.check("the share module gives NaN on the calm hour", seen.get("share_nan", False))
    ctx.check("it was training before", _fell(losses[:90]))


@scenario(
    family="mead_must_gravity_relu_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Mead must final-gravity ReLU regressor (MSE, Adagrad, clipped to 1.0). At step 120 the "
    "batch comes from one cellar's shard that logs the original gravity in points (1090) instead "
    "of specific gravity (1.090, standardised): one corrupted batch, the loss over 100x and the "
    "gradient over 20x; the clipped run recovers.",
)
def h426_mead_gravity_points(ctx) -> None:
    gen = seeded(4266)
    model = _MLP(10, 48, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    batches = _readings(gen, 64, 10, seed=4266)

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = x[:, 0] * 1000.0 + 1090.0
        return x, y

    losses = _loop(ctx, model, opt, batches, 220, F.mse_loss, alter=alter, clip=1.0)
    g = ctx.grad_norms
    ctx.check(
        "loss at step 120 over 100x the median before", losses[120] > 100 * _median(losses[100:120])
    )
    ctx.check("gradient at step 120 over 20x the median before", g[120] > 20 * _median(g[100:120]))
    ctx.check(
        "recovers: last 20 steps under 2x the 20 before the shard",
        _mean(losses[-20:]) < 2 * _mean(losses[100:120]),
    )
    ctx.check("finite", _finite(losses))


@scenario(
    family="lampwork_bead_annealing_crack_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="Lampwork bead annealing-crack ReLU BCE net (SGD momentum 0.9, clipped to 1.0, 5% noisy "
    "labels). The run is resumed at step 150 through a code path that builds its own criterion "
    "with reduction='sum' instead of 'mean' for that one step: the backpropagated loss is 256x "
    "the logged one, one gradient burst that does not come from the data; the run recovers.",
)
def h426_lampwork_sum_reduction(ctx) -> None:
    gen = seeded(4267)
    model = _MLP(12, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    batches = _binary(gen, 256, 12, seed=4267)

    losses = _loop(
        ctx,
        model,
        opt,
        batches,
        240,
        F.binary_cross_entropy_with_logits,
        clip=1.0,
        backprop=lambda s, loss: loss * (256.0 if s == 150 else 1.0),
    )
    g = ctx.grad_norms
    ctx.check("gradient at step 150 over 30x the median before", g[150] > 30 * _median(g[130:150]))
    ctx.check(
        "the logged loss at step 150 is ordinary (under 2x the median before)",
        losses[150] < 2 * _median(losses[130:150]),
    )
    ctx.check("recovers", _mean(losses[-20:]) < 1.5 * _mean(losses[130:150]))
    ctx.check("finite", _finite(losses))


class _TwoGroup(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.act = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.trunk(x))).squeeze(-1)


@scenario(
    family="tatting_shuttle_picot_two_group_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("trunk", "trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="Tatting shuttle picot-size GELU regressor (MSE, RAdam) with two param groups, the trunk "
    "at a lower rate than the head; the trunk's lr was typed 2e-9 for 2e-3. The trunk receives "
    "gradients but never moves (under 1e-5 of its norm over the run) while the head learns.",
)
def h426_tatting_trunk_lr(ctx) -> None:
    gen = seeded(4268)
    model = _TwoGroup(10, 48)
    opt = torch.optim.RAdam(
        [
            {"params": model.trunk.parameters(), "lr": 2e-9},
            {"params": model.head.parameters(), "lr": 5e-3},
        ]
    )
    batches = _readings(gen, 64, 10, seed=4268)
    w0 = model.trunk[0].weight.detach().clone()
    h0 = model.head.weight.detach().clone()
    got = []

    losses = _loop(
        ctx,
        model,
        opt,
        batches,
        150,
        F.mse_loss,
        after=lambda s: got.append(
            model.trunk[0].weight.grad is not None and float(model.trunk[0].weight.grad.norm()) > 0
        ),
    )
    ctx.check("trunk.0 moved under 1e-5 of its norm", _rel_change(w0, model.trunk[0].weight) < 1e-5)
    ctx.check("while receiving gradients", all(got))
    ctx.check("the head moved over 5%", _rel_change(h0, model.head.weight) > 0.05)
    ctx.check("finite", _finite(losses))


@scenario(
    family="fairy_circle_ring_width_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="Fairy-circle ring-width ReLU regressor (MSE, RMSprop) whose lr was copied from a "
    "learning-rate finder's plot with the wrong exponent, 3e-2 for 3e-4. The large early steps "
    "push act2's pre-activations negative for every input: its units die and stop learning.",
)
def h426_fairy_circle_dead_relu(ctx) -> None:
    def run(lr, attach):
        gen = seeded(4269)
        model = _MLP(10, 64, 1)
        opt = torch.optim.RMSprop(model.parameters(), lr=lr)
        batches = _readings(gen, 128, 10, seed=4269)
        probe = next(batches)[0]
        dead = []
        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            batches,
            200,
            F.mse_loss,
            after=lambda s: dead.append(_dead(model, probe)),
            attach=attach,
        )
        return dead, losses

    dead, losses = run(3e-2, True)
    ref_dead, _ = run(3e-4, False)
    ctx.check("over 45% of act2's units dead over the last 50 steps", _mean(dead[-50:]) > 0.45)
    ctx.check("under 20% at 3e-4", _mean(ref_dead[-50:]) < 0.2)
    ctx.check("finite", _finite(losses))


@scenario(
    family="hoop_rolling_stick_speed_decay_sign_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Hoop-rolling stick-speed tanh regressor (MSE) on SGD with Nesterov momentum and a "
    "hand-written decoupled weight decay after each step whose sign was flipped "
    "(p.mul_(1 + lr * wd) for p.mul_(1 - lr * wd), lr 5e-3, wd 2.0). The weights inflate a "
    "little every step and the loss slowly climbs to over twice its lowest.",
)
def h426_hoop_rolling_decay_sign(ctx) -> None:
    gen = seeded(4270)
    model = _MLP(8, 48, 1, act=nn.Tanh)
    lr, wd = 5e-3, 2.0
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    batches = _readings(gen, 64, 8, seed=4270)
    norm0 = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in model.parameters()))

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses = _loop(ctx, model, opt, batches, 300, F.mse_loss, after=after)
    norm1 = math.sqrt(sum(float((p.detach() ** 2).sum()) for p in model.parameters()))
    tens = [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    ctx.check(
        "the last 20 steps over 1.8x the lowest 10-step mean", _mean(losses[-20:]) > 1.8 * min(tens)
    )
    ctx.check(
        "the last 50 steps over 1.5x steps 50-100",
        _mean(losses[-50:]) > 1.5 * _mean(losses[50:100]),
    )
    ctx.check("the weight norm over 3x its start", norm1 > 3 * norm0)
    ctx.check(
        "no sudden jump: no 10-step mean over 2.5x the one before",
        all(b < 2.5 * a for a, b in zip(tens, tens[1:], strict=False)),
    )
    ctx.check("finite", _finite(losses))


# -- controls --------------------------------------------------------------------------------------


def _lobes(gen, batch, d, atoms, active, seed):
    """Radar returns of mammatus lobes: sums of a few of ``atoms`` unit-norm lobe shapes with
    positive amplitudes, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    dictionary = F.normalize(torch.randn(atoms, d, generator=g), dim=-1)
    while True:
        idx = torch.rand(batch, atoms, generator=gen).argsort(-1)[:, :active]
        amp = torch.rand(batch, active, generator=gen) * 2.0 + 0.5
        x = (amp[..., None] * dictionary[idx]).sum(1)
        x = x + 0.02 * torch.randn(batch, d, generator=gen)
        yield x, x


class _TopK(nn.Module):
    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, pre):
        val, idx = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, idx, F.relu(val))


class _TopKSAE(nn.Module):
    """Top-k sparse autoencoder: only the k largest pre-activations kept, a linear decoder whose
    columns are renormalised to unit norm after every step, a shared pre-bias."""

    def __init__(self, d, latents, k):
        super().__init__()
        self.pre_bias = nn.Parameter(torch.zeros(d))
        self.enc = nn.Linear(d, latents)
        self.topk = _TopK(k)
        self.dec = nn.Linear(latents, d, bias=False)
        with torch.no_grad():
            self.dec.weight.copy_(F.normalize(torch.randn(d, latents), dim=0))
            self.enc.weight.copy_(self.dec.weight.T)
            self.enc.bias.zero_()
        self.last_pre = None
        self.last_z = None

    def forward(self, x):
        pre = self.enc(x - self.pre_bias)
        z = self.topk(pre)
        self.last_pre, self.last_z = pre, z
        return self.dec(z) + self.pre_bias

    @torch.no_grad()
    def normalise_decoder(self):
        self.dec.weight.div_(self.dec.weight.norm(dim=0, keepdim=True).clamp_min(1e-8))


@scenario(
    family="mammatus_cloud_lobe_topk_sparse_autoencoder",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Mammatus cloud-lobe top-k sparse autoencoder on generated radar returns (sums of 3 of 48 "
    "lobe shapes): 512 latents, only the 6 largest pre-activations kept, reconstruction MSE, "
    "decoder columns renormalised after every step, an auxiliary dead-latent loss (the 16 largest "
    "pre-activations among latents silent for 30 steps reconstruct the residual, weight 1/32), "
    "Adam under a linear warm-up and cosine schedule. Control.",
)
def h426_mammatus_topk_sae(ctx) -> None:
    gen = seeded(4271)
    model = _TopKSAE(24, 512, 6)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    steps = 250
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    batches = _lobes(gen, 128, 24, 48, 3, seed=4271)
    silent = torch.zeros(512)
    aux_used = []

    def backprop(step, loss):
        dead = silent >= 30
        if not bool(dead.any()):
            aux_used.append(0)
            return loss
        pre = model.last_pre.masked_fill(~dead, float("-inf"))
        k = min(16, int(dead.sum()))
        val, idx = pre.topk(k, dim=-1)
        z_aux = torch.zeros_like(model.last_pre).scatter(-1, idx, F.relu(val))
        x = model.last_x
        residual = (x - (model.dec(model.last_z) + model.pre_bias)).detach()
        aux = F.mse_loss(model.dec(z_aux), residual)
        aux_used.append(1)
        return loss + aux / 32

    def alter(step, x, y):
        model.last_x = x
        return x, y

    def after(step):
        model.normalise_decoder()
        fired = (model.last_z > 0).any(0)
        silent.add_(1).masked_fill_(fired.detach(), 0)

    losses = _loop(
        ctx,
        model,
        opt,
        batches,
        steps,
        F.mse_loss,
        alter=alter,
        backprop=backprop,
        after=after,
        sched=sched,
    )
    ctx.check("the dead-latent loss was active on some steps", sum(aux_used) > 0)
    ctx.check("trained: the loss fell to under 40% of its start", _fell(losses, ratio=0.4))
    ctx.check("finite", _finite(losses))
    ctx.check(
        "decoder columns at unit norm",
        float((model.dec.weight.norm(dim=0) - 1).abs().max()) < 1e-4,
    )
    ctx.check(
        "under half the latents silent for 30 steps at the end",
        float((silent >= 30).float().mean()) < 0.5,
    )


def _fibre_signals(gen, batch, length, classes):
    """Needle-felting fibre-grade vibration traces: a class-dependent frequency and noise."""
    t = torch.arange(length).float()
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float()
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        x = torch.sin(freq[:, None] * t + phase) + 0.4 * torch.randn(batch, length, generator=gen)
        yield x[:, None, :], y


class _FibreConv(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(self.pool(h).flatten(1))


@scenario(
    family="felting_needle_fibre_grade_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Felting-needle fibre-grade ReLU Conv1d classifier on generated vibration traces (4 "
    "grades): fp16 autocast with a torch.amp.GradScaler, AdamW with a no-decay group for biases, "
    "OneCycleLR, label smoothing 0.1, clipping to 1.0 after unscaling. Control.",
)
def h426_felting_fp16_conv1d(ctx) -> None:
    gen = seeded(4272)
    model = _FibreConv(4)
    decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 150
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")
    losses = _loop(
        ctx,
        model,
        opt,
        _fibre_signals(gen, 64, 48, 4),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("trained: the loss fell to under 60% of its start", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
    ctx.check("the scale stayed finite and positive", all(0 < s < float("inf") for s in ctx.scales))


@scenario(
    family="rogue_wave_crest_height_gelu_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    heldout=True,
    note="Rogue-wave crest-height GELU regressor on buoy readings with noisy, heavy-tailed targets "
    "(Huber loss, delta 1.0), ASGD, gradient accumulation over 2 micro-batches, clipping to 1.0, "
    "ReduceLROnPlateau on a held-out batch's loss. Control.",
)
def h426_rogue_wave_huber(ctx) -> None:
    gen = seeded(4273)
    model = _MLP(12, 64, 1, act=nn.GELU)
    opt = torch.optim.ASGD(model.parameters(), lr=5e-2, t0=1e4)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    clean = _readings(gen, 64, 12, seed=4273, noise=0.1, scale=2.0)

    def noisy():
        while True:
            x, y = next(clean)
            tail = torch.distributions.StudentT(2.0).sample((len(y),)) * 0.2
            yield x, y + tail

    held = next(clean)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    losses = _loop(
        ctx,
        model,
        opt,
        noisy(),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        accumulate=2,
    )
    ctx.check("trained: the loss fell to under 60% of its start", _fell(losses, ratio=0.6))
    ctx.check("finite", _finite(losses))
    ctx.check("held-out loss under 60% of the first step's", plateau() < 0.6 * losses[0])
