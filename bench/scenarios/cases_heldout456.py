"""Held-out set 456 (``h456_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a barograph-trace pressure regressor in pascals under fp16 autocast (its output passes
65504, amp overflow), a sandpiper-foraging regressor whose hand-written L2 penalty has its sign
flipped (a slow climb), a steeplejack rope-load regressor whose loss-weight schedule has a
milestone typed 100 for 1.00 for one step (one gradient burst), a kiln-brick firing regressor
whose Adam lr is typed 1e-1 for 1e-3 (the ReLUs die), an okapi-track stride regressor fed one
row with the -9999 missing-value code as its label (one corrupted sample), a tsunami run-up
celerity net taking sqrt(g * depth) of an unclamped predicted depth (sqrt of a negative), a
sextant-sight two-group regressor whose trunk group's lr is typed 1e-7 for 1e-1 (frozen under
Adadelta), a glacier-calving deep tanh net with init gain typed 5 for 1 (gradients grow through
depth), a harpsichord-quill classifier whose temperature is typed 0.01 for 1.0 (softmax
saturates) and a sinkhole-collapse BCE net whose labels come out as {0, 2} after a remap bug
(the head's logits grow without bound).

Controls: a tidal-bore mixture density network (three Gaussians, NLL, AdamW under OneCycleLR,
clipping), a sumo-bout heavy-tailed (Student-t) Huber regressor whose batch losses swing tenfold
(SGD momentum, ReduceLROnPlateau, clipping) and an fp16 falconry-lure grade classifier (GradScaler,
NAdam, label smoothing, accumulation over 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _wnorm(model):
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))


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
    plateau=False,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop; stops after a non-finite loss once ``ctx.step`` has seen it.
    ``attach=False`` makes a reference run outside the monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
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
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
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
            sched.step(shown) if plateau else sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, shift + scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="barograph_trace_pascal_fp16_relu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges="auto",
    heldout=True,
    note="Barograph-trace sea-level pressure regressor (ReLU MLP, MSE, Adam, fp16 autocast with a "
    "GradScaler). The target is left in pascals (about 1e5) instead of standardised: as the net "
    "learns towards it the head's fp16 output passes 65504 and overflows to inf, while the same "
    "weights in float32 give a finite output.",
)
def h456_barograph_pascal_fp16(ctx) -> None:
    gen = seeded(4561)
    model = _Net(8, 64, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    batches = _readings(gen, 64, 8, seed=4561, scale=2000.0, shift=9.5e4)
    last = {}

    def alter(step, x, y):
        last["x"] = x
        return x, y

    losses, _ = _loop(
        ctx, model, opt, batches, 250, F.mse_loss, alter=alter, scaler=scaler, amp=True
    )
    x = last["x"]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.float16):
        half = model(x)
    with torch.no_grad():
        full = model(x)
    ctx.check("loss non-finite before the end", not math.isfinite(losses[-1]) and len(losses) < 250)
    ctx.check("fp16 output non-finite on the last batch", not bool(torch.isfinite(half).all()))
    ctx.check("float32 output finite on the same batch", bool(torch.isfinite(full).all()))
    ctx.check("float32 output past fp16's max", float(full.abs().max()) > 65504)
    ctx.check("loss finite for the first 20 steps", _finite(losses[:20]))


@scenario(
    family="sandpiper_foraging_probe_depth_l2_sign_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Sandpiper foraging probe-depth regressor (GELU MLP, MSE, RAdam). The hand-written L2 "
    "penalty is subtracted instead of added (total = loss - wd * |w|^2): the loss falls at first, "
    "then the weights inflate and the data loss climbs slowly, with no spike and no NaN.",
)
def h456_sandpiper_l2_sign(ctx) -> None:
    gen = seeded(4562)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    start = _wnorm(model)

    def backprop(step, loss):
        return loss - 5e-2 * sum((p**2).sum() for p in model.parameters())

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, seed=4562), 300, F.mse_loss, backprop=backprop
    )
    low = min(losses)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss over the last 20 steps over 3x its lowest", _mean(losses[-20:]) > 3 * low)
    ctx.check("the lowest loss comes in the first half", losses.index(low) < 150)
    ctx.check(
        "climbing through the second half", _mean(losses[-20:]) > 1.5 * _mean(losses[150:170])
    )
    ctx.check("weight norm over 2x its start", _wnorm(model) > 2 * start)


ROPE_STEP = 150


@scenario(
    family="steeplejack_rope_load_loss_weight_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ROPE_STEP,
    note="Steeplejack bosun-chair rope-load regressor (tanh MLP, MSE, SGD Nesterov momentum, "
    "clipping at 5). The piecewise loss-weight schedule has its step-150 milestone typed 100 for "
    "1.00 and the next milestone restores 1: one step's gradient is 100x on an ordinary batch, "
    "then the run recovers.",
)
def h456_steeplejack_weight_typo(ctx) -> None:
    gen = seeded(4563)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (100.0 if step == ROPE_STEP else 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, seed=4563),
        260,
        F.mse_loss,
        backprop=backprop,
        clip=5.0,
    )
    before = _median(norms[ROPE_STEP - 20 : ROPE_STEP])
    lb = _median(losses[ROPE_STEP - 20 : ROPE_STEP])
    ctx.check(
        "gradient at the milestone over 50x the median before", norms[ROPE_STEP] > 50 * before
    )
    ctx.check("logged loss at the milestone under 3x the median", losses[ROPE_STEP] < 3 * lb)
    ctx.check("recovers: last 20 steps under 2x the median before", _mean(losses[-20:]) < 2 * lb)
    ctx.check("finite throughout", _finite(losses))


@scenario(
    family="kiln_brick_firing_shrinkage_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Kiln brick firing-shrinkage regressor (ReLU MLP, MSE, Adam). The lr is typed 1e-1 for "
    "1e-3: the first large steps push most of the second layer's ReLUs negative on every input "
    "and they never come back; the loss stalls well above the same model's at 1e-3.",
)
def h456_kiln_brick_dead_relu(ctx) -> None:
    def run(lr, c):
        gen = seeded(4564)
        model = _Net(10, 64, 1)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        losses, _ = _loop(
            c or ctx,
            model,
            opt,
            _readings(gen, 64, 10, seed=4564),
            200,
            F.mse_loss,
            attach=c is not None,
        )
        x, _ = next(_readings(torch.Generator().manual_seed(9), 512, 10, seed=4564))
        with torch.no_grad():
            h = model.fc2(model.act1(model.fc1(x)))
        return losses, float((h <= 0).all(0).float().mean())

    ref_losses, ref_dead = run(1e-3, None)
    losses, dead = run(1e-1, ctx)
    ctx.check("over half the fc2 units dead at the end", dead > 0.5)
    ctx.check("under 10% dead at 1e-3", ref_dead < 0.1)
    ctx.check("over 5x the 1e-3 run's dead share", dead > 5 * max(ref_dead, 0.01))
    ctx.check("finite throughout", _finite(losses))


OKAPI_STEP = 120


@scenario(
    family="okapi_track_stride_length_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=OKAPI_STEP,
    note="Okapi camera-trap stride-length regressor (ReLU MLP, MSE, plain SGD, clipping at 1). "
    "One row of the batch at step 120 carries the -9999 missing-value code as its label (the "
    "export did not drop it): one corrupted sample, the loss and gradient jump once, the run "
    "recovers.",
)
def h456_okapi_missing_code(ctx) -> None:
    gen = seeded(4565)
    model = _Net(8, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)

    def alter(step, x, y):
        if step == OKAPI_STEP:
            y = y.clone()
            y[3] = -9999.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, seed=4565), 220, F.mse_loss, alter=alter, clip=1.0
    )
    lb = _median(losses[OKAPI_STEP - 20 : OKAPI_STEP])
    ctx.check("loss at the bad row over 50x the median before", losses[OKAPI_STEP] > 50 * lb)
    ctx.check(
        "gradient at the bad row over 20x the median before",
        norms[OKAPI_STEP] > 20 * _median(norms[OKAPI_STEP - 20 : OKAPI_STEP]),
    )
    ctx.check("recovers: last 20 steps under 2x the median before", _mean(losses[-20:]) < 2 * lb)
    ctx.check("finite throughout", _finite(losses))


class _Celerity(nn.Module):
    """Long-wave celerity sqrt(g * depth) of the predicted depth, with no clamp."""

    def forward(self, depth):
        return torch.sqrt(9.81 * depth)


class _RunupNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.depth = nn.Linear(hidden, 1)
        self.celerity = _Celerity()
        nn.init.constant_(self.depth.bias, 2.0)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return self.celerity(self.depth(h).squeeze(-1))


TSUNAMI_NAN = 6


@scenario(
    family="tsunami_runup_celerity_sqrt_silu_net",
    optimizer="AdamW",
    cause="nonfinite",
    where=("celerity",),
    diverges=TSUNAMI_NAN,
    heldout=True,
    note="Tsunami run-up celerity net (SiLU MLP predicts the water depth, the output is "
    "sqrt(g * depth), MSE against gauge celerities, AdamW). The depth has no softplus or clamp: "
    "once a shallow-shelf prediction goes negative, the sqrt of a negative gives NaN and the loss "
    "is NaN.",
)
def h456_tsunami_sqrt_negative(ctx) -> None:
    gen = seeded(4566)
    model = _RunupNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    base = _readings(gen, 64, 8, seed=4566)

    def shallow():
        for x, y in base:
            yield x, 0.3 + 0.6 * (y - y.min())

    losses, _ = _loop(ctx, model, opt, shallow(), 200, F.mse_loss)
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check(f"loss NaN at step {TSUNAMI_NAN}", bad == TSUNAMI_NAN)
    ctx.check("loss finite before it", _finite(losses[:TSUNAMI_NAN]))


@scenario(
    family="sextant_sight_reduction_two_group_regressor",
    optimizer="Adadelta",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Sextant sight-reduction altitude-correction regressor (ReLU MLP in two param groups, "
    "MSE, Adadelta). The trunk group's lr is typed 1e-7 for 1e-1 (the head's is 1.0): fc1 and fc2 "
    "barely move while the head trains, the loss falling only as far as a head on random features "
    "allows.",
)
def h456_sextant_group_typo(ctx) -> None:
    gen = seeded(4567)
    model = _Net(8, 48, 1)
    opt = torch.optim.Adadelta(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters()), "lr": 1e-7},
            {"params": model.head.parameters(), "lr": 1.0},
        ]
    )
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))

    def rel(a, m):
        return float((m.weight.detach() - a).norm() / a.norm())

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, seed=4567), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-5 of its norm", rel(w1, model.fc1) < 1e-5)
    ctx.check("fc2 moved under 1e-5 of its norm", rel(w2, model.fc2) < 1e-5)
    ctx.check("head moved over 10% of its norm", rel(wh, model.head) > 0.1)
    ctx.check("finite throughout", _finite(losses))


class _DeepTanh(nn.Module):
    def __init__(self, d_in=12, hidden=48, depth=12, gain=1.0):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else hidden, hidden) for i in range(depth)
        )
        self.head = nn.Linear(hidden, 1)
        for m in self.layers:
            nn.init.xavier_normal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = torch.tanh(m(x))
        return self.head(x).squeeze(-1)


GLACIER_GAIN = 5.0


@scenario(
    family="glacier_calving_front_retreat_deep_tanh_net",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("layers.0", "layers.1"),
    diverges=None,
    heldout=True,
    note="Glacier calving-front retreat regressor (twelve-layer tanh MLP, MSE, RMSprop, clipping "
    "at 1). The Xavier init gain is typed 5 for 1.0: the net sits in the chaotic regime and the "
    "gradient grows back through depth, the first layer's over 20x the last's.",
)
def h456_glacier_gain_typo(ctx) -> None:
    def ratio(model, x, y):
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        r = float(model.layers[0].weight.grad.norm() / model.layers[-1].weight.grad.norm())
        model.zero_grad()
        return r

    gen = seeded(4568)
    ref = _DeepTanh(gain=1.0)
    model = _DeepTanh(gain=GLACIER_GAIN)
    x0, y0 = next(_readings(torch.Generator().manual_seed(7), 256, 12, seed=4568))
    ref_ratio = ratio(ref, x0, y0)
    start_ratio = ratio(model, x0, y0)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    ratios = []
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, seed=4568),
        120,
        F.mse_loss,
        clip=1.0,
        before=lambda s: None,
        after=lambda s: ratios.append(
            float(model.layers[0].weight.grad.norm() / model.layers[-1].weight.grad.norm())
        ),
    )
    ctx.check("first layer's gradient over 20x the last's at init", start_ratio > 20)
    ctx.check("under 5x at gain 1", ref_ratio < 5)
    ctx.check("still over 10x over the run", _median(ratios) > 10)
    ctx.check("finite throughout", _finite(losses))


HARP_TEMP = 0.01


@scenario(
    family="harpsichord_quill_voicing_temperature_classifier",
    optimizer="SGD",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Harpsichord quill-voicing grade classifier (ReLU MLP, cross-entropy, SGD momentum). The "
    "softmax temperature is typed 0.01 for 1.0 (logits divided by it): the probabilities round to "
    "exactly 1.0 for most rows and those rows stop contributing gradient.",
)
def h456_harpsichord_temperature(ctx) -> None:
    gen = seeded(4569)
    model = _Net(12, 48, 6)
    temp = HARP_TEMP
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def loss_fn(out, y):
        return F.cross_entropy(out / temp, y)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, seed=4569, spread=0.5),
        150,
        loss_fn,
        classifier=True,
    )
    x, y = next(_grades(torch.Generator().manual_seed(3), 512, 12, 6, seed=4569, spread=0.5))
    with torch.no_grad():
        logits = model(x)
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        collapsed_fraction(logits / temp, y) > 0.5,
    )
    ctx.check("under 5% at temperature 1 on the same logits", collapsed_fraction(logits, y) < 0.05)
    ctx.check("finite throughout", _finite(losses))


@scenario(
    family="sinkhole_collapse_label_remap_bce_net",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Sinkhole collapse-risk BCE net (ReLU MLP, binary_cross_entropy_with_logits, Adamax). A "
    "label remap maps the positive class to 2 instead of 1, and BCE-with-logits accepts a target "
    "of 2: its gradient sigmoid(z) - 2 never vanishes, so the head's logits grow without bound and "
    "the 'loss' heads below zero.",
)
def h456_sinkhole_label_two(ctx) -> None:
    gen = seeded(4570)
    model = _Net(10, 48, 1)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    base = _grades(gen, 64, 10, 2, seed=4570)
    trace = []

    def remapped():
        for x, y in base:
            yield x, 2.0 * y.float()

    def after(step):
        with torch.no_grad():
            trace.append(float(model(probe).abs().max()))

    probe, _ = next(_grades(torch.Generator().manual_seed(5), 256, 10, 2, seed=4570))
    losses, _ = _loop(
        ctx, model, opt, remapped(), 200, F.binary_cross_entropy_with_logits, after=after
    )
    ctx.check("max |logit| over 20x its start", _mean(trace[-5:]) > 20 * _mean(trace[:3]))
    ctx.check("still growing", _mean(trace[-5:]) > 1.3 * _mean(trace[150:155]))
    ctx.check("the 'loss' below -10", losses[-1] < -10)
    ctx.check("finite throughout", _finite(losses))


# -- controls --------------------------------------------------------------------------------------


class _MDN(nn.Module):
    """A mixture density network: K Gaussians' logits, means and log-scales."""

    def __init__(self, d_in=6, hidden=64, k=3):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.pi = nn.Linear(hidden, k)
        self.mu = nn.Linear(hidden, k)
        self.log_sigma = nn.Linear(hidden, k)

    def forward(self, x):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        return torch.stack([self.pi(h), self.mu(h), self.log_sigma(h).clamp(-5, 3)], -1)


def _mdn_nll(out, y):
    logpi = F.log_softmax(out[..., 0], -1)
    mu, log_sigma = out[..., 1], out[..., 2]
    z = (y[:, None] - mu) / log_sigma.exp()
    comp = -0.5 * z**2 - log_sigma - 0.5 * math.log(2 * math.pi)
    return -torch.logsumexp(logpi + comp, -1).mean()


def _bore_heights(gen, batch, seed):
    """Bore height: one of three regimes (no bore, undular, breaking) set by the tide features."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        regime = torch.bucketize(
            x @ w / math.sqrt(6) + 0.5 * torch.randn(batch, generator=gen),
            torch.tensor([-0.4, 0.6]),
        )
        y = torch.tensor([0.1, 0.8, 2.0])[regime] + 0.3 * x[:, 0] * (regime > 0)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="tidal_bore_height_mixture_density_net",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Tidal-bore height forecaster: a hand-written mixture density network (three Gaussians' "
    "weights, means and scales from a tanh trunk, mixture NLL), AdamW under OneCycleLR, clipping "
    "at 1. Control.",
)
def h456_tidal_bore_mdn(ctx) -> None:
    gen = seeded(4571)
    model = _MDN()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=250)
    losses, _ = _loop(
        ctx, model, opt, _bore_heights(gen, 128, 4571), 250, _mdn_nll, clip=1.0, sched=sched
    )
    ctx.check("trained: NLL fell by over 1 nat", _mean(losses[-10:]) < _mean(losses[:10]) - 1.0)
    ctx.check("finite throughout", _finite(losses))


SUMO_NOISE = 0.5


def _bout_times(gen, batch, seed):
    """Sumo bout durations with Student-t (3 dof) noise: heavy tails."""
    base = _readings(gen, batch, 8, seed=seed)
    t = torch.distributions.StudentT(3.0)
    while True:
        x, y = next(base)
        yield x, y + SUMO_NOISE * t.sample((batch,))


@scenario(
    family="sumo_bout_duration_student_t_huber_regressor",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Sumo bout-duration regressor on heavy-tailed (Student-t, 3 dof) targets, Huber loss, SGD "
    "momentum under ReduceLROnPlateau, clipping at 1: the batch losses swing tenfold with the "
    "tails. Control.",
)
def h456_sumo_bout_student_t(ctx) -> None:
    gen = seeded(4572)
    model = _Net(8, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _bout_times(gen, 8, 4572),
        250,
        lambda o, y: F.huber_loss(o, y, delta=0.5),
        clip=1.0,
        sched=sched,
        plateau=True,
    )
    ctx.check("trained: loss fell", _fell(losses))
    ctx.check("batch losses swing tenfold", max(losses[100:]) > 10 * min(losses[100:]))
    ctx.check("finite throughout", _finite(losses))


@scenario(
    family="falconry_lure_swing_grade_fp16_classifier",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="Falconry lure-swing grade classifier (GELU MLP, cross-entropy with label smoothing 0.1, "
    "NAdam, fp16 autocast with a GradScaler, accumulation over 2, clipping at 1). Control.",
)
def h456_falconry_lure_fp16(ctx) -> None:
    gen = seeded(4573)
    model = _Net(12, 64, 5, act=nn.GELU)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 32, 12, 5, seed=4573, spread=1.3),
        150,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("trained: loss fell", _fell(losses, ratio=0.6))
    ctx.check("finite throughout", _finite(losses))
