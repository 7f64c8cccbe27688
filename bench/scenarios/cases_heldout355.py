"""Held-out set 355 (``h355_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a mutton-busting ride-time ReLU regressor whose Adam lr is
typed 5e-2 for 5e-4 (ReLUs die), a frog-chorus species Conv1d classifier whose per-step loss
weight table has 100.0 typed for 1.00 at one step (one gradient burst), a clepsydra outflow-time
tanh regressor whose warm-up peak lr is typed 10x (past 2/sharpness), a gas-balloon ballast-drop
BCE net fed one shard with altitudes in feet (one corrupted batch), a dirigible envelope-lift
Gaussian NLL net whose per-batch standardiser has no epsilon (0/0 on a disconnected sensor), a
music-box comb-tooth pitch GELU regressor whose head param group lr is typed 2e-7 for 2e-3
(frozen head), a cuttlefish skin-pattern deep ReLU classifier initialised with a uniform bound
used as a normal std (gradients grow through depth), a lyrebird mimicry-source cosine classifier
whose logit scale is 1 / 0.001 (softmax saturates), a sperm-whale coda-type classifier whose
z-loss sign is flipped (head logits grow), a chairmaking spindle-turning regressor whose manual
weight decay grows the weights (a slow climb), and three controls (a mormyrid electric-organ
discharge spiking network of leaky integrate-and-fire neurons trained with a fast-sigmoid
surrogate gradient and Adam; a player-piano roll Conv1d classifier with SGD Nesterov, OneCycleLR,
label smoothing and clipping; a zeppelin mooring-mast load Huber regressor under fp16 autocast
with a GradScaler, RAdam with decay groups and ReduceLROnPlateau).

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
    digits,
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
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``inspect(step)`` sees the gradients before clipping,
    ``after(step)`` runs after the optimizer step, ``plateau()`` gives the validation loss for a
    ReduceLROnPlateau ``sched``. Stops after a non-finite loss (once ``ctx.step`` has seen it);
    returns the number of steps run."""
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
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
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


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about ``scale``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, length, classes, seed, noise=0.4):
    """1-d traces (one channel): each class a sum of two class-specific tones with a random phase,
    plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 2.0 + 8.0 * torch.rand(classes, 2, generator=g)
    t = torch.linspace(0, 2 * math.pi, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        f = freqs[y]
        x = torch.sin(f[:, :1] * t + phase) + 0.7 * torch.sin(f[:, 1:] * t + 2 * phase)
        x = x + noise * torch.randn(batch, length, generator=gen)
        yield x[:, None, :], y


class Trunk(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head."""

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


class TraceNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> mean pool -> head."""

    def __init__(self, classes, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration on Hessian-vector
    products."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    norm = torch.sqrt(sum((u * u).sum() for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        norm = torch.sqrt(sum((h * h).sum() for h in hv))
        if not math.isfinite(float(norm)) or float(norm) == 0.0:
            break
        v = [h / norm for h in hv]
    return abs(eig)


def _dead(h: torch.Tensor) -> float:
    """Share of units never positive on the batch."""
    return float((h.detach() <= 0).all(0).float().mean())


# -- mutton busting: Adam's lr typed 5e-2 for 5e-4, the ReLUs die -----------------------------


class RideTimer(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> fc3 -> act3 -> head."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.fc3 = nn.Linear(hidden, hidden)
        self.act3 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.h2 = None

    def forward(self, x):
        h = self.act1(self.fc1(x))
        self.h2 = self.act2(self.fc2(h))
        return self.head(self.act3(self.fc3(self.h2))).squeeze(-1)


@scenario(
    family="mutton_busting_ride_time_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A hand-written three-hidden-layer ReLU MLP (fc1, act1, fc2, act2, fc3, act3, head) regressing a child's mutton-busting ride time in seconds (mean about 6 s, not standardised) from ten standardised readings of sheep and rider, Adam, MSE, 200 steps. The lr was typed 5e-2 for 5e-4: the first large Adam steps (the targets start 6 s away) push fc2's pre-activations negative for every input and 63 of fc2's 64 units never fire again (act2 dead on the whole batch through the last 50 steps, from 2 dead at step 0); the loss stays finite and keeps falling through the one surviving unit, the rest of fc2 never learns again.",
)
def h355_mutton_busting_adam_lr_typo_dead_relus(ctx: Context) -> None:
    gen = seeded(35501)
    model = RideTimer()
    opt = torch.optim.Adam(model.parameters(), lr=5e-2)  # meant 5e-4
    dead = []

    def watch(step, out, x, y):
        dead.append(_dead(model.h2))

    def target(gen):
        for x, y in _readings(gen, 64, 10, 3551, scale=2.0):
            yield x, y + 6.0

    _loop(ctx, model, opt, target(gen), 200, F.mse_loss, watch=watch)
    ctx.check("under 20% of fc2's units are dead at step 0", dead[0] < 0.2)
    ctx.check(
        "over 90% of fc2's units are dead on every batch of the last 50 steps",
        min(dead[-50:]) > 0.9,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- frog chorus: the loss-weight table has 100.0 typed for 1.00 at one step --------------------

FROG_ONSET = 150


@scenario(
    family="frog_chorus_call_species_conv1d_classifier",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=FROG_ONSET,
    note="A hand-written Conv1d classifier (conv1, act1, conv2, act2, mean pool, head) naming which of five frog species calls in a 64-sample chorus recording envelope, SGD with Nesterov momentum 0.9 at lr 0.05, cross-entropy, gradient clipping at norm 1, 240 steps. The per-step loss weight comes from a hand-edited table (a curriculum re-weighting that is 1.00 after warm-up); the entry for step 150 was typed 100.0 for 1.00, so that one step's ordinary batch backpropagates a 100x loss: the gradient norm (before clipping) bursts over 50x the median of the 20 steps before while the logged (unweighted) loss on that batch is ordinary; the clipped update keeps the run stable and the loss goes on falling.",
)
def h355_frog_chorus_loss_weight_table_typo(ctx: Context) -> None:
    gen = seeded(35502)
    model = TraceNet(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    weights = [1.0] * 240
    weights[FROG_ONSET] = 100.0  # typed for 1.00
    raw = []

    def backprop(step, loss):
        return weights[step] * loss

    def inspect(step):
        raw.append(grad_norm(model))

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 64, 5, 3552),
        240,
        F.cross_entropy,
        classifier=True,
        backprop=backprop,
        inspect=inspect,
        clip=1.0,
    )
    base = _median(raw[FROG_ONSET - 20 : FROG_ONSET])
    ctx.check(
        "the gradient norm at the onset is over 50x the median of the 20 steps before",
        raw[FROG_ONSET] > 50.0 * base,
    )
    ctx.check(
        "no other step's gradient norm is over 10x that median",
        max(raw[:FROG_ONSET] + raw[FROG_ONSET + 1 :]) < 10.0 * base,
    )
    ctx.check(
        "the loss of the last 20 steps is under 1.5x that of the 20 before the onset",
        _mean(ctx.losses[-20:]) < 1.5 * _mean(ctx.losses[FROG_ONSET - 20 : FROG_ONSET]),
    )
    ctx.check("the loss fell and is finite", _fell(ctx.losses))


# -- clepsydra: the warm-up's peak lr is typed 10x and passes 2/sharpness ----------------------


@scenario(
    family="clepsydra_outflow_time_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting a water clock's outflow time (standardised) from eight readings of vessel shape, orifice and water temperature, plain SGD, MSE, a linear lr warm-up over 150 steps to a peak typed 4.0 where 0.4 was meant. The loss falls while the lr is small; once lr x the top Hessian eigenvalue (measured by power iteration on Hessian-vector products) passes 2 the iterates oscillate along the sharpest direction with growing amplitude and the loss blows up.",
)
def h355_clepsydra_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(35503)
    model = Trunk(8, 64, act=nn.Tanh)
    peak, warm = 4.0, 150  # peak meant 0.4
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 8, 3553))
    products = []

    def before(step):
        lr = peak * min(1.0, (step + 1) / warm)
        for g in opt.param_groups:
            g["lr"] = lr
        if step % 10 == 0 and _finite(ctx.losses) and (not ctx.losses or ctx.losses[-1] < 1e3):
            products.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

    _loop(ctx, model, opt, _readings(gen, 256, 8, 3553), 300, F.mse_loss, before=before)
    finite = [v for v in ctx.losses if math.isfinite(v)]
    low = min(finite)
    ctx.check("lr x sharpness is under 2 at the start", products[0][1] < 2.0)
    ctx.check("lr x sharpness passes 2 during the warm-up", max(p for _, p in products) > 2.0)
    ctx.check(
        "the loss blows up to over 100x its lowest value (or to non-finite)",
        (not _finite(ctx.losses)) or max(finite) > 100.0 * low,
    )


# -- gas balloon: one pilot's shard logs altitude in feet, not standardised ---------------------

BALLOON_ONSET = 140


@scenario(
    family="gas_balloon_ballast_drop_bce_net",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=BALLOON_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) deciding from twelve standardised readings (altitude, vertical speed, gas temperature, sun, ballast left...) whether a gas-balloon pilot drops ballast in the next minute, plain SGD at lr 0.1 with gradient clipping at norm 5, BCE with logits, 240 steps. At step 140 the batch comes from one pilot's shard whose logger wrote altitude, vertical speed and pressure altitude in feet and which skipped standardisation: three columns are about 300x, the loss and gradient on that batch are over 20x the steps before, the clipped step disturbs the weights and the loss recovers afterwards.",
)
def h355_gas_balloon_feet_shard(ctx: Context) -> None:
    gen = seeded(35504)
    model = Trunk(12, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def labels(gen):
        for x, y in _readings(gen, 64, 12, 3554):
            yield x, (y > 0.1).float()

    def alter(step, x, y):
        if step == BALLOON_ONSET:
            x = x.clone()
            x[:, :3] = 300.0 * x[:, :3]  # feet, not standardised
        return x, y

    raw = []

    def inspect(step):
        raw.append(grad_norm(model))

    _loop(
        ctx,
        model,
        opt,
        labels(gen),
        240,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        inspect=inspect,
        clip=5.0,
    )
    before = ctx.losses[BALLOON_ONSET - 20 : BALLOON_ONSET]
    ctx.check(
        "the loss at the onset is over 20x the mean of the 20 steps before",
        ctx.losses[BALLOON_ONSET] > 20.0 * _mean(before),
    )
    ctx.check(
        "the gradient at the onset is over 20x the median of the 20 steps before",
        raw[BALLOON_ONSET] > 20.0 * _median(raw[BALLOON_ONSET - 20 : BALLOON_ONSET]),
    )
    ctx.check(
        "the last 20 steps' loss is under 1.5x that of the 20 before the onset",
        _mean(ctx.losses[-20:]) < 1.5 * _mean(before),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- dirigible: the per-batch standardiser has no epsilon; a disconnected sensor gives 0/0 -------

DIRIGIBLE_ONSET = 90


class BatchStandardise(nn.Module):
    """(x - batch mean) / batch std per column, written without an epsilon."""

    def forward(self, x):
        mean = x.mean(0, keepdim=True)
        std = x.std(0, keepdim=True)
        return (x - mean) / std  # no eps, no clamp


class LiftNet(nn.Module):
    """standardise -> fc1 -> act1 -> fc2 -> act2 -> head (mean and raw variance)."""

    def __init__(self, d_in=10, hidden=64):
        super().__init__()
        self.standardise = BatchStandardise()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)
        self.z = None

    def forward(self, x):
        self.z = self.standardise(x)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(self.z)))))


def _gaussian_nll(out, y):
    mean, raw = out[:, 0], out[:, 1]
    return F.gaussian_nll_loss(mean, y, F.softplus(raw) + 1e-4)


@scenario(
    family="dirigible_envelope_lift_gaussian_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("standardise",),
    diverges=DIRIGIBLE_ONSET,
    heldout=True,
    onset=DIRIGIBLE_ONSET,
    note="A hand-written SiLU MLP (standardise: per-batch (x - mean) / std written without an epsilon, fc1, act1, fc2, act2, head giving a mean and a softplus variance) predicting a dirigible's net envelope lift with its uncertainty from ten raw sensor readings, RMSprop at lr 1e-3, Gaussian NLL, 200 steps planned. At step 90 the batch comes from a flight whose superheat sensor was disconnected and reads exactly 0.0 throughout: that column's batch std is 0 and x - mean is 0, standardise computes 0/0 = NaN and the loss is NaN at step 90 (all earlier losses finite).",
)
def h355_dirigible_standardiser_no_eps(ctx: Context) -> None:
    gen = seeded(35505)
    model = LiftNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    offsets = torch.linspace(-3.0, 5.0, 10)
    scales = torch.linspace(0.5, 4.0, 10)

    def raw(gen):
        for x, y in _readings(gen, 64, 10, 3555):
            yield offsets + scales * x, y

    def alter(step, x, y):
        if step == DIRIGIBLE_ONSET:
            x = x.clone()
            x[:, 4] = 0.0  # disconnected sensor
        return x, y

    seen = {}

    def watch(step, out, x, y):
        if step == DIRIGIBLE_ONSET:
            seen["in_finite"] = bool(torch.isfinite(x).all())
            seen["z_nan"] = bool(torch.isnan(model.z).any())

    _loop(ctx, model, opt, raw(gen), 200, _gaussian_nll, alter=alter, watch=watch)
    ctx.check("the loss is NaN at step 90", _first_bad(ctx.losses) == DIRIGIBLE_ONSET)
    ctx.check("the standardiser's input is finite at step 90", seen.get("in_finite", False))
    ctx.check("the standardiser's output holds NaN at step 90", seen.get("z_nan", False))
    ctx.check("the loss fell before the onset", _fell(ctx.losses[:DIRIGIBLE_ONSET]))


# -- music box: the head's param-group lr typed 2e-7 for 2e-3 -------------------------------


@scenario(
    family="music_box_comb_tooth_pitch_gelu_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting a music-box comb tooth's pitch offset (standardised) from nine readings of tooth length, thickness, lead weight and steel hardness, Adamax with two parameter groups, MSE, 200 steps. The head's group (freshly re-initialised for a new comb) had its lr typed 2e-7 for 2e-3: the head's weights move by under 0.1% over the whole run while fc1 and fc2 move by over 5%; the loss stays finite and falls only as far as the body can take it through a frozen random head.",
)
def h355_music_box_head_group_lr_typo(ctx: Context) -> None:
    gen = seeded(35506)
    model = Trunk(9, 64, act=nn.GELU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adamax(
        [
            {"params": body, "lr": 2e-3},
            {"params": model.head.parameters(), "lr": 2e-7},  # meant 2e-3
        ]
    )
    head0 = model.head.weight.detach().clone()
    fc1_0 = model.fc1.weight.detach().clone()
    fc2_0 = model.fc2.weight.detach().clone()
    _loop(ctx, model, opt, _readings(gen, 64, 9, 3556), 200, F.mse_loss)
    ctx.check(
        "the head's weights moved by under 0.1% over the run",
        _rel_change(head0, model.head.weight) < 1e-3,
    )
    ctx.check(
        "fc1 and fc2 moved by over 5%",
        min(_rel_change(fc1_0, model.fc1.weight), _rel_change(fc2_0, model.fc2.weight)) > 0.05,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cuttlefish: a uniform bound used as a normal std, gradients grow through depth -------------


class PatternNet(nn.Module):
    """blocks.0 .. blocks.7 (Linear + ReLU via functional) then head."""

    def __init__(self, d_in=16, hidden=48, depth=8, classes=4):
        super().__init__()
        sizes = [d_in] + [hidden] * depth
        self.blocks = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(hidden, classes)
        self.hs = []

    def forward(self, x):
        self.hs = []
        for block in self.blocks:
            x = F.relu(block(x))
            if x.requires_grad:
                x.retain_grad()
            self.hs.append(x)
        return self.head(x)


@scenario(
    family="cuttlefish_skin_pattern_deep_relu_classifier",
    optimizer="SGD (momentum)",
    cause="exploding_gradients",
    where=("blocks.0",),
    diverges="auto",
    heldout=True,
    note="A hand-written eight-layer ReLU MLP (blocks.0 .. blocks.7, head) naming a cuttlefish's body pattern (uniform, mottle, disruptive, passing cloud) from sixteen chromatophore-patch readings, SGD with momentum 0.9 at lr 1e-2, cross-entropy, 200 steps planned. The custom init meant He normal, std sqrt(2 / fan_in), but used the uniform bound sqrt(6 / fan_in) as the normal std (sqrt(3)x too large per layer): activations and the backward gradients grow about 1.7x per layer, the gradient at blocks.0's output is over 30x that at blocks.7's output, the loss is huge from the start and the run blows up.",
)
def h355_cuttlefish_uniform_bound_as_std(ctx: Context) -> None:
    gen = seeded(35507)
    model = PatternNet()
    for block in model.blocks:
        nn.init.normal_(block.weight, std=math.sqrt(6.0 / block.in_features))  # meant 2 / fan_in
        nn.init.zeros_(block.bias)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    ratios = []

    def inspect(step):
        g0, g7 = model.hs[0].grad, model.hs[-1].grad
        if g0 is not None and g7 is not None:
            ratios.append(float(g0.norm() / g7.norm().clamp_min(1e-30)))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 4, 3557),
        200,
        F.cross_entropy,
        classifier=True,
        inspect=inspect,
    )
    finite = [v for v in ctx.losses if math.isfinite(v)]
    ctx.check(
        "the gradient at blocks.0's output is over 30x that at blocks.7's at step 0",
        ratios[0] > 30.0,
    )
    ctx.check(
        "the loss blows up to over 100x its first value (or to non-finite)",
        (not _finite(ctx.losses)) or max(finite) > 100.0 * ctx.losses[0],
    )


# -- lyrebird: the cosine classifier's scale is 1 / 0.001 ---------------------------------------


class CosineHead(nn.Module):
    def __init__(self, dim, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, dim) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class MimicryNet(nn.Module):
    def __init__(self, d_in=20, hidden=64, classes=6, scale=1000.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="lyrebird_mimicry_source_cosine_classifier",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP with a cosine-similarity head (fc1, act1, fc2, act2, head: scale x cos(feature, class weight)) naming which of six sources (camera shutter, kookaburra, chainsaw...) a lyrebird imitates from twenty song features, Adam at 1e-3, cross-entropy, 200 steps. The config gives the temperature 0.1 but the code reads it from the wrong key and uses 0.001, a logit scale of 1000 for 10: the logits span hundreds, the float32 softmax gives the target probability exactly 1.0 on over half the rows late in the run while misclassified rows carry losses in the hundreds.",
)
def h355_lyrebird_cosine_scale_temperature_key(ctx: Context) -> None:
    gen = seeded(35508)
    model = MimicryNet(scale=1.0 / 0.001)  # meant 1 / 0.1
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 20, 6, 3558, spread=1.3),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sperm whale: the z-loss sign is flipped, the head's logits grow -------------------------


@scenario(
    family="sperm_whale_coda_type_zloss_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) naming a sperm-whale coda type (six) from eight inter-click intervals, AdamW with decay and no-decay groups at 3e-3, cross-entropy plus a z-loss on logsumexp of the logits, 180 steps. The z-loss was added with its sign flipped (loss - 1e-3 * lse^2 for loss + 1e-4 * lse^2): it rewards a larger logsumexp, which a uniform shift of the logits buys without changing the cross-entropy, so the head's logits climb without bound (peak |logit| from about 0.3 to the hundreds and still rising fast at the end, mean logit over 10) while the cross-entropy stays finite, creeping up late in the run.",
)
def h355_sperm_whale_zloss_sign(ctx: Context) -> None:
    gen = seeded(35509)
    model = Trunk(8, 64, out=6, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    other = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
        lr=3e-3,
    )
    peaks, shifts = [], []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))
        shifts.append(float(out.detach().mean()))

    def backprop(step, loss):
        lse = torch.logsumexp(model(_last["x"]), -1)
        return loss - 1e-3 * (lse**2).mean()  # meant + 1e-4 * lse^2

    _last = {}

    def alter(step, x, y):
        _last["x"] = x
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 8, 6, 3559),
        180,
        F.cross_entropy,
        classifier=True,
        watch=watch,
        backprop=backprop,
        alter=alter,
    )
    ctx.check(
        "the peak |logit| over the last 20 steps is over 20x that of the first 5",
        _mean(peaks[-20:]) > 20.0 * _mean(peaks[:5]),
    )
    ctx.check(
        "the peak |logit| still rises over the last 50 steps",
        _mean(peaks[-10:]) > 2.0 * _mean(peaks[-50:-40]),
    )
    ctx.check(
        "the logits' mean (a uniform shift the cross-entropy ignores) is over 10 late in the run",
        _mean(shifts[-20:]) > 10.0,
    )
    ctx.check("the cross-entropy is finite throughout", _finite(ctx.losses))


# -- chairmaking: the manual weight decay grows the weights -----------------------------------


@scenario(
    family="chairmaking_spindle_turning_silu_regressor",
    optimizer="Adagrad",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a Windsor chairmaker's spindle diameter error (standardised) from ten readings of green-wood moisture, lathe speed and gouge angle, Adagrad at lr 0.03, MSE, 300 steps. Weight decay is applied by hand after each step, written p.add_(p, alpha=lr * wd) where p.add_(p, alpha=-lr * wd) was meant (wd 0.3): every weight grows by about 1% a step, Adagrad's shrinking steps cannot hold it, and after an early fall the loss climbs slowly to over 5x its lowest 20-step mean with no jump (no 20-step window over 3x the one before), staying finite.",
)
def h355_chairmaking_weight_decay_sign(ctx: Context) -> None:
    gen = seeded(35510)
    model = Trunk(10, 64, act=nn.SiLU)
    lr, wd = 0.03, 0.3
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)  # meant alpha=-lr * wd

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3560), 300, F.mse_loss, after=after)
    means = [_mean(ctx.losses[i : i + 20]) for i in range(0, len(ctx.losses) - 19)]
    windows = [_mean(ctx.losses[i : i + 20]) for i in range(0, len(ctx.losses), 20)]
    jumps = [b / max(a, 1e-12) for a, b in zip(windows[:-1], windows[1:], strict=True)]
    ctx.check(
        "the last 20 steps' loss is over 5x the lowest 20-step mean", means[-1] > 5 * min(means)
    )
    ctx.check("no 20-step window's mean loss is over 3x the window before", max(jumps) < 3.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- control: a mormyrid electric-organ discharge spiking network (LIF, surrogate gradient) -----


class FastSigmoidSpike(torch.autograd.Function):
    """Heaviside spike forward; fast-sigmoid surrogate 1 / (1 + slope |v|)^2 backward."""

    @staticmethod
    def forward(ctx, v, slope):
        ctx.save_for_backward(v)
        ctx.slope = slope
        return (v > 0).float()

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        return grad / (1.0 + ctx.slope * v.abs()) ** 2, None


class LIF(nn.Module):
    """Leaky integrate-and-fire neurons: v <- beta v + I - spike (soft reset), threshold 1."""

    def __init__(self, beta=0.9, slope=5.0):
        super().__init__()
        self.beta = beta
        self.slope = slope

    def forward(self, current, v):
        v = self.beta * v + current
        spike = FastSigmoidSpike.apply(v - 1.0, self.slope)
        return spike, v - spike


class DischargeSNN(nn.Module):
    """fc1 -> lif1 -> fc2 -> lif2 over time steps; logits are the output spike counts' rates
    plus the last output membrane."""

    def __init__(self, d_in=64, hidden=96, classes=10, steps=16, slope=5.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.lif1 = LIF(0.9, slope)
        self.fc2 = nn.Linear(hidden, classes)
        self.lif2 = LIF(0.9, slope)
        self.steps = steps
        self.rate = 0.0

    def forward(self, x):
        b = x.shape[0]
        v1 = torch.zeros(b, self.fc1.out_features)
        v2 = torch.zeros(b, self.fc2.out_features)
        counts = torch.zeros(b, self.fc2.out_features)
        fired = 0.0
        g = torch.Generator().manual_seed(int(x.sum() * 1000) % (2**31))
        for _ in range(self.steps):
            inp = (torch.rand(x.shape, generator=g) < x).float()  # rate-coded input spikes
            s1, v1 = self.lif1(self.fc1(inp), v1)
            s2, v2 = self.lif2(self.fc2(s1), v2)
            counts = counts + s2
            fired = fired + float(s1.detach().mean())
        self.rate = fired / self.steps
        return 4.0 * counts / self.steps + v2


def _discharges(gen, batch):
    """sklearn's digits read as 8x8 electrode maps of an electric-organ discharge (10 kinds)."""
    x, y = digits()
    while True:
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        yield x[idx], y[idx]


@scenario(
    family="mormyrid_electric_organ_discharge_lif_snn",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written spiking network (fc1, lif1, fc2, lif2) of leaky integrate-and-fire neurons (beta 0.9, threshold 1, soft reset) unrolled over 16 time steps on rate-coded 8x8 electrode maps of a mormyrid fish's electric-organ discharge (ten kinds; sklearn's digits), trained through the Heaviside spike with a fast-sigmoid surrogate gradient of moderate slope 5, Adam at 2e-3, cross-entropy on spike-count rates plus the last output membrane, 150 steps.",
)
def h355_mormyrid_lif_snn_control(ctx: Context) -> None:
    gen = seeded(35511)
    model = DischargeSNN(slope=5.0)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    rates = []

    def watch(step, out, x, y):
        rates.append(model.rate)

    _loop(ctx, model, opt, _discharges(gen, 64), 150, F.cross_entropy, classifier=True, watch=watch)
    ctx.check("the loss fell to under half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check(
        "the hidden layer fires on 1%-60% of neuron-steps late in the run",
        0.01 < _mean(rates[-20:]) < 0.6,
    )


# -- control: a player-piano roll Conv1d classifier, SGD Nesterov, OneCycleLR ------------------


@scenario(
    family="player_piano_roll_perforation_conv1d_classifier",
    optimizer="SGD (Nesterov)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written Conv1d classifier (conv1, act1, conv2, act2, mean pool, head) naming a player-piano roll's arrangement style (six) from a 64-sample perforation-density trace with noise, SGD with Nesterov momentum 0.9 under OneCycleLR (max lr 0.1), cross-entropy with label smoothing 0.1, gradient clipping at norm 1, 220 steps.",
)
def h355_player_piano_onecycle_control(ctx: Context) -> None:
    gen = seeded(35512)
    model = TraceNet(6)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=220)
    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 32, 64, 6, 3562),
        220,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell and is finite", _fell(ctx.losses, ratio=0.7))


# -- control: a zeppelin mooring-mast load Huber regressor, fp16 autocast, RAdam ---------------


@scenario(
    family="zeppelin_mooring_mast_load_fp16_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the load on a zeppelin's mooring mast (standardised) from twelve readings of wind, gusts and ballast, under fp16 autocast with a torch.amp.GradScaler, RAdam at 2e-3 with decay and no-decay groups, Huber loss, ReduceLROnPlateau on a held-out batch, gradient clipping at norm 1 after unscaling, 200 steps.",
)
def h355_zeppelin_fp16_radam_control(ctx: Context) -> None:
    gen = seeded(35513)
    model = Trunk(12, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    other = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.RAdam(
        [{"params": decay, "weight_decay": 1e-4}, {"params": other, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    held = next(_readings(torch.Generator().manual_seed(11), 256, 12, 3563))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3563),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell and is finite", _fell(ctx.losses, ratio=0.5))
