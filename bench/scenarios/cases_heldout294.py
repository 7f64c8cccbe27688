"""Held-out set 294 (``h294_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kombucha SCOBY-thickness ReLU regressor fed one shard
logged in micrometres, a handbell peal-method GELU classifier whose temperature was read in
milliseconds, a geyser-basin pulse leaky echo-state network whose spectral radius lost its decimal
point (9 for 0.9), a cider-vat sugar-drop SiLU regressor averaged once with a
stale replica, a beehive entrance-flow net with a log feature layer fed a zero count, a curling
ice-pebble SiLU regressor whose last accumulation window skips its division, a harpsichord
jack-regulation two-group regressor whose trunk lr was typed 2e-9, a kite-surf boost-height tanh
regressor warmed up to an lr typed 1.5, a bark-tannin vat-strength GELU regressor whose
hand-rolled L2 has its sign flipped, an archery fletch-damage BCE tagger fed unclamped summed
targets, and three controls (a skep swarm-risk net on sparse flags with Adagrad, a hurling
puck-out zone GELU classifier under fp16 autocast with a GradScaler, a glacier-moulin discharge
Huber regressor with SGD momentum and ReduceLROnPlateau).

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
    weight=None,
    penalty=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step, ``weight(step)`` multiplies the backpropagated loss (the logged loss is
    the unweighted one), ``penalty()`` is added to the backpropagated loss; ``amp``: fp16
    autocast; stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight(step) if weight is not None else 1.0
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
            if penalty is not None:
                total = total + penalty() / accumulate
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


# -- kombucha SCOBY: one shard logged in micrometres ---------------------------------------------

ONSET_SCOBY = 110


@scenario(
    family="kombucha_scoby_thickness_relu_regressor",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SCOBY,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a kombucha SCOBY's growth from 8 standardised brewing readings (starter thickness, tea strength, sugar, temperature, days), SGD momentum 0.9 at 1e-2, MSE, clipping at 1.0, 200 steps. One brewery's shard logged the starter and mother-culture thickness columns in micrometres instead of millimetres and was not re-standardised: six rows of the batch at step 110 carry those two columns 1000x too large. The loss of that batch is orders of magnitude above the usual, the gradient bursts (clipped), and the run recovers on the next clean batches.",
)
def h294_kombucha_scoby_micrometre_shard(ctx: Context) -> None:
    gen = seeded(29401)
    model = Stack(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_SCOBY:
            x = x.clone()
            x[:6, :2] *= 1000.0
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=401), 200, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    pre = _median(ls[ONSET_SCOBY - 20 : ONSET_SCOBY])
    ctx.check("the loss at the bad batch is over 100x the usual", ls[ONSET_SCOBY] > 100 * pre)
    ctx.check(
        "the gradient at the bad batch is over 50x the usual",
        g[ONSET_SCOBY] > 50 * _median(g[ONSET_SCOBY - 20 : ONSET_SCOBY]),
    )
    ctx.check("the run recovers", _mean(ls[-20:]) < 2.0 * _mean(ls[ONSET_SCOBY - 20 : ONSET_SCOBY]))
    ctx.check("finite throughout", _finite(ls))


# -- handbell peal method: temperature read in milliseconds --------------------------------------


class TemperedClassifier(nn.Module):
    def __init__(self, d_in, classes, temperature):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 64)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(64, 64)
        self.act2 = nn.GELU()
        self.head = nn.Linear(64, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="handbell_peal_method_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU classifier (fc1, act1, fc2, act2, head, logits divided by a temperature) naming which of 8 change-ringing methods a handbell band is ringing from 24 standardised strike-timing features, cross-entropy, Adamax at 2e-3, 200 steps. The temperature (2.0) sat in a config section whose other fields are in milliseconds and a loader refactor converted it to seconds, so the logits are divided by 0.002: the logit gaps are multiplied by 500, and on over a third of the rows the float32 softmax gives the target exactly 1.0. Finite, no blow-up.",
)
def h294_handbell_temperature_in_ms(ctx: Context) -> None:
    gen = seeded(29402)
    model = TemperedClassifier(24, 8, temperature=2.0e-3)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    probe_x, probe_y = next(_kinds(torch.Generator().manual_seed(5), 256, 24, 8, seed=402))
    fracs: list[float] = []

    def after(step):
        if step % 20 == 0 or step == 199:
            with torch.no_grad():
                fracs.append(collapsed_fraction(model(probe_x), probe_y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 24, 8, seed=402),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("over a third of the rows' softmax is exactly 1.0 at the end", fracs[-1] > 1 / 3)
    with torch.no_grad():
        twin_frac = collapsed_fraction(model(probe_x) * model.temperature / 2.0, probe_y)
    ctx.check("at the intended temperature 2.0 no row would be exactly 1.0", twin_frac == 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- geyser basin: a leaky echo-state network at spectral radius 9 for 0.9 -----------------------------

SEQ_GEYSER = 60


class LeakyEchoState(nn.Module):
    """A leaky echo-state network with a trainable reservoir:
    h <- (1 - a) h + a tanh(rec(h) + inp(x_t)), readout on the last state."""

    def __init__(self, d_in=3, hidden=64, leak=0.5):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.readout = nn.Linear(hidden, 1)
        self.leak = leak
        self.hidden = hidden
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = (1 - self.leak) * h + self.leak * torch.tanh(self.rec(h) + self.inp(x[:, t]))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.readout(h).squeeze(-1)


def _reservoir(model: LeakyEchoState, radius: float, seed: int) -> None:
    """Rescale a random reservoir to the given spectral radius."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(model.hidden, model.hidden, generator=g)
    with torch.no_grad():
        model.rec.weight.copy_(radius * w / torch.linalg.eigvals(w).abs().max())


def _geyser_pulses(gen, batch, seed):
    """Pool pressure, temperature and discharge over 60 ticks; the target is the pressure of the
    next eruption pulse, a function of the early and late part of the window."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(3, generator=g)
    while True:
        phase = torch.rand(batch, 1, generator=gen) * 6.28
        freq = 0.1 + 0.2 * torch.rand(batch, 1, generator=gen)
        t = torch.arange(SEQ_GEYSER)[None]
        base = torch.sin(freq * t + phase)
        x = torch.stack([base, base.roll(3, 1), torch.cos(freq * t + phase)], -1)
        x = x + 0.1 * torch.randn(batch, SEQ_GEYSER, 3, generator=gen)
        y = torch.tanh(x[:, :10] @ mix).mean(1) + 0.5 * torch.tanh(x[:, -5:] @ mix).mean(1)
        yield x, y


@scenario(
    family="geyser_basin_pulse_leaky_echo_state_net",
    optimizer="RMSprop",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written leaky echo-state network (inp, rec = the trainable reservoir, leak 0.5, tanh, readout on the last state) unrolled over 60 ticks of geyser pool pressure, temperature and discharge, regressing the next eruption pulse, MSE, RMSprop at 1e-3, clipping at 1.0, 150 steps. The reservoir was meant to be rescaled to spectral radius 0.9 (the echo-state property), but the experiment sheet's `spectral_radius` lost its decimal point and reads 9: the reservoir is chaotic and the gradient grows back through time, the gradient on the first state is far above the last one's, the pre-clip gradient norm is far above a twin's with the intended radius, and the loss stays above that twin's.",
)
def h294_geyser_echo_state_radius_typo(ctx: Context) -> None:
    gen = seeded(29403)
    model = LeakyEchoState()
    _reservoir(model, 9.0, seed=403)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    # measure through-time growth on a probe batch before and after training
    probe_x, probe_y = next(_geyser_pulses(torch.Generator().manual_seed(9), 128, seed=403))

    def through_time(m):
        out = m(probe_x)
        F.mse_loss(out, probe_y).backward()
        first = float(m.states[0].grad.norm())
        last = float(m.states[-1].grad.norm())
        m.zero_grad(set_to_none=True)
        return first / max(last, 1e-12)

    ratio0 = through_time(model)
    _train(ctx, model, opt, _geyser_pulses(gen, 32, seed=403), 150, F.mse_loss, clip=1.0)
    ratio1 = through_time(model)

    twin_gen = torch.Generator().manual_seed(29403)
    torch.manual_seed(29403)
    twin = LeakyEchoState()
    _reservoir(twin, 0.9, seed=403)
    twin_opt = torch.optim.RMSprop(twin.parameters(), lr=1e-3)
    twin_norms, twin_losses = [], []
    batches = _geyser_pulses(twin_gen, 32, seed=403)
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(twin(x), y)
        loss.backward()
        twin_norms.append(grad_norm(twin))
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        twin_opt.step()
        twin_opt.zero_grad(set_to_none=True)
        twin_losses.append(float(loss.detach()))
    ctx.check(
        "the first state's gradient is over 30x the last one's",
        min(ratio0, ratio1) > 30,
    )
    ctx.check(
        "the pre-clip gradient norm is over 10x the intended-radius twin's",
        _median(ctx.grad_norms) > 10 * _median(twin_norms),
    )
    ctx.check(
        "the loss ends above the twin's", _mean(ctx.losses[-20:]) > 1.2 * _mean(twin_losses[-20:])
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- cider vat: a weight average with a stale replica for one step -------------------------------

ONSET_CIDER = 120


@scenario(
    family="cider_vat_sugar_drop_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CIDER,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the sugar drop of a cider vat over the next day from 12 standardised cellar readings, Adam at 1e-3, MSE, 220 steps. A model-soup job meant to average the live weights with the replica saved at step 110 read the path of the replica saved at step 0 instead and wrote the average back into the live model before step 120. The weights land halfway to their initialisation, the loss of that ordinary batch jumps over 3x, and Adam trains back down within a few dozen steps: one spike, recovered, on a clean batch, with no gradient, lr or data mechanism behind it.",
)
def h294_cider_vat_stale_soup(ctx: Context) -> None:
    gen = seeded(29404)
    model = Stack(12, 64, act=nn.SiLU)
    stale = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def before(step):
        if step == ONSET_CIDER:
            with torch.no_grad():
                for p, q in zip(model.parameters(), stale, strict=True):
                    p.copy_(0.5 * (p + q))

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=404), 220, F.mse_loss, before=before)
    ls = ctx.losses
    pre = _mean(ls[ONSET_CIDER - 10 : ONSET_CIDER])
    ctx.check("the loss jumps over 3x at the average", ls[ONSET_CIDER] > 3 * pre)
    ctx.check("the run recovers", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- beehive entrance: a log feature layer fed a zero count --------------------------------------

ONSET_HIVE = 90


class LogFeatures(nn.Module):
    def forward(self, x):
        return torch.log(x)


class HiveFlowNet(nn.Module):
    def __init__(self, d_in=6):
        super().__init__()
        self.logf = LogFeatures()
        self.fc1 = nn.Linear(d_in, 48)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(48, 48)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.logf(x)))))
        return self.head(h).squeeze(-1)


def _hive_counts(gen, batch, seed, zero_at=None):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g) / 2
    step = 0
    while True:
        x = torch.exp(torch.randn(batch, 6, generator=gen) * 0.6 + 3.0)  # bees a minute
        if step == zero_at:
            x[3, 0] = 0.0  # a rainy morning: no bee crossed the counter
        y = torch.tanh((torch.log(x.clamp_min(1.0)) - 3.0) @ w)
        step += 1
        yield x, y


@scenario(
    family="beehive_entrance_flow_log_feature_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("logf",),
    diverges=ONSET_HIVE,
    heldout=True,
    onset=ONSET_HIVE,
    note="A net with a log feature layer (logf = log of the raw counts, then fc1, act1, fc2, act2, head with SiLU) regressing a hive's nectar-flow index from six entrance counters (bees a minute in and out at two entrances, drones, pollen carriers), NAdam at 2e-3, MSE. The counts are positive on every sunny day and nobody clamped them before the log; at step 90 a rainy morning's counter reads exactly 0 bees for one hive, logf gives -inf, fc1 mixes -inf with finite weights of both signs into inf - inf = NaN, and the loss is NaN from that step.",
)
def h294_beehive_log_zero_count(ctx: Context) -> None:
    gen = seeded(29405)
    model = HiveFlowNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    inf_at: list[int] = []
    seen = {}

    def grab(_m, _i, out):
        seen["out"] = out.detach()

    model.logf.register_forward_hook(grab)

    def watch(step, out, x, y):
        if torch.isinf(seen["out"]).any():
            inf_at.append(step)

    _train(
        ctx,
        model,
        opt,
        _hive_counts(gen, 64, seed=405, zero_at=ONSET_HIVE),
        200,
        F.mse_loss,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("finite before the zero count", _finite(ls[:ONSET_HIVE]))
    ctx.check(
        "the loss is NaN at the zero count", len(ls) > ONSET_HIVE and math.isnan(ls[ONSET_HIVE])
    )
    ctx.check("logf produced -inf at that step", inf_at[:1] == [ONSET_HIVE])
    ctx.check("the loss fell before the fault", _fell(ls[:ONSET_HIVE]))


# -- curling ice: the last accumulation window skips its division --------------------------------

ONSET_PEBBLE = 100


@scenario(
    family="curling_ice_pebble_height_silu_regressor",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_PEBBLE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the pebble height an ice technician gets from 10 standardised readings (water temperature, can pressure, walking pace, ice and air temperature), SGD Nesterov (momentum 0.9) at 5e-3, MSE, gradient accumulation over 4 micro-batches, clipping at 1.0, 200 steps. The epoch's last window goes through a remainder branch that backpropagates the loss with reduction='sum' over the 64 rows and without the division by 4: at step 100 the gradient of an ordinary batch is 256x the usual (clipped), and the run recovers.",
)
def h294_curling_pebble_remainder_window(ctx: Context) -> None:
    gen = seeded(29406)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=406),
        200,
        F.mse_loss,
        accumulate=4,
        clip=1.0,
        weight=lambda s: 64.0 * 4 if s == ONSET_PEBBLE else 1.0,
    )
    g, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "the gradient at the remainder window is over 50x the usual",
        g[ONSET_PEBBLE] > 50 * _median(g[ONSET_PEBBLE - 20 : ONSET_PEBBLE]),
    )
    ctx.check(
        "the batch itself is ordinary (loss under 2x the usual)",
        ls[ONSET_PEBBLE] < 2 * _mean(ls[ONSET_PEBBLE - 10 : ONSET_PEBBLE]),
    )
    ctx.check(
        "the run recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[ONSET_PEBBLE - 20 : ONSET_PEBBLE])
    )
    ctx.check("finite throughout", _finite(ls))


# -- harpsichord jacks: the trunk lr typed 2e-9 ---------------------------------------------------


@scenario(
    family="harpsichord_jack_regulation_two_group_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A two-group ReLU regressor (trunk fc1, act1, fc2, act2; head) predicting how far a harpsichord jack's plectrum must be voiced from 10 standardised readings (key dip, pluck force, quill length, humidity), RAdam with two param groups, MSE, 200 steps. The trunk's lr was meant to be 2e-3 and was typed 2e-9 in the param-group list: fc1 and fc2 move by under 1e-6 of their norm per step (effectively frozen) while the head trains at 2e-3, so the loss only falls as far as a linear read-out of random features allows.",
)
def h294_harpsichord_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(29407)
    model = Stack(10, 64)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.RAdam(
        [{"params": trunk, "lr": 2e-9}, {"params": model.head.parameters(), "lr": 2e-3}]
    )
    fc1_0, fc2_0, head_0 = _flat(model.fc1), _flat(model.fc2), _flat(model.head)
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=407), 200, F.mse_loss)
    steps = len(ctx.losses)
    for name, mod, w0 in (("fc1", model.fc1, fc1_0), ("fc2", model.fc2, fc2_0)):
        ratio = float((_flat(mod) - w0).norm() / w0.norm()) / steps
        ctx.check(f"{name} moves under 1e-6 of its norm per step", ratio < 1e-6)
    head_ratio = float((_flat(model.head) - head_0).norm() / head_0.norm()) / steps
    ctx.check("the head moves over 1e-4 of its norm per step", head_ratio > 1e-4)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- kite-surf boost: warm-up to an lr typed 1.5 --------------------------------------------------

WARM_KITE = 60


def _sharpness(model, x, y, iters=12):
    params = [p for p in model.parameters()]
    loss = F.mse_loss(model(x), y)
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
    family="kite_surf_boost_height_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=15,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a kitesurfer's boost height from 8 standardised readings (wind speed, gust factor, kite size, board speed, edge angle), plain SGD, MSE, linear warm-up over 60 steps. The recipe's peak lr is 0.015 and the config says 1.5: the warm-up ramps the lr up 100x past the intended peak, lr x sharpness (the top Hessian eigenvalue, measured by power iteration in the run) crosses 2 during the warm-up, the loss oscillates and then blows up.",
)
def h294_kite_surf_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(29408)
    model = Stack(8, 32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(8), 256, 8, seed=408))
    products: list[tuple[int, float]] = []

    def before(step):
        lr = 1.5 * min(1.0, (step + 1) / WARM_KITE)
        for group in opt.param_groups:
            group["lr"] = lr
        if step % 5 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            lam = _sharpness(model, probe_x, probe_y)
            if math.isfinite(lam):
                products.append((step, lr * lam))

    _train(ctx, model, opt, _readings(gen, 64, 8, seed=408), 150, F.mse_loss, before=before)
    ls = ctx.losses
    cross = next((s for s, p in products if p > 2), None)
    ctx.check("lr x sharpness crosses 2", cross is not None)
    finite = [v for v in ls if math.isfinite(v)]
    blew = (not _finite(ls)) or max(ls) > 100 * min(finite)
    ctx.check("the loss blows up (non-finite or over 100x its low)", blew)
    first_bad = next(
        (i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * min(finite)), None
    )
    ctx.check(
        "the crossing comes before the blow-up",
        cross is not None and first_bad is not None and cross <= first_bad,
    )


# -- bark tannin vat: the hand-rolled L2 with its sign flipped ------------------------------------


@scenario(
    family="bark_tannin_vat_strength_gelu_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing a tanner's bark-liquor strength (barkometer degrees) from 10 standardised vat readings, ASGD at 5e-2, MSE plus a hand-rolled L2 term 0.5 x 0.25 x sum ||w||^2 that a refactor wrote as `loss - penalty` instead of `loss + penalty`. The flipped decay pushes every weight outwards by a factor 1 + lr x wd each step: the loss falls for the first steps, then climbs slowly to over 2.5x its low over 200 steps while the weight norm keeps growing; finite, no single event.",
)
def h294_bark_tannin_l2_sign(ctx: Context) -> None:
    gen = seeded(29409)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.ASGD(model.parameters(), lr=5e-2)
    norm0 = float(_flat(model).norm())

    def penalty():
        return -0.5 * 0.25 * sum((p * p).sum() for p in model.parameters())

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=409), 200, F.mse_loss, penalty=penalty)
    ls = ctx.losses
    low = min(range(len(ls)), key=lambda i: _mean(ls[max(0, i - 5) : i + 5]))
    low_val = _mean(ls[max(0, low - 5) : low + 5])
    ctx.check("the loss reaches its low in the first half", low < len(ls) // 2)
    ctx.check("the loss climbs to over 2.5x its low", _mean(ls[-10:]) > 2.5 * low_val)
    ctx.check("the weight norm grew over 2x", float(_flat(model).norm()) > 2 * norm0)
    ctx.check("finite throughout", _finite(ls))


# -- archery fletch damage: summed inspector tags without a clamp --------------------------------


def _fletch_tags(gen, batch, seed):
    """Five damage tags (split vane, torn cock feather, glue lift, nock crack, crest wear); two
    inspectors' multi-hot tags were summed, not OR-ed: the targets are 0, 1 or 2."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(16, 5, generator=g)
    while True:
        x = torch.randn(batch, 16, generator=gen)
        p = torch.sigmoid(x @ w / 2)
        a = (torch.rand(batch, 5, generator=gen) < p).float()
        b = (torch.rand(batch, 5, generator=gen) < p).float()
        yield x, a + b


@scenario(
    family="archery_arrow_fletch_damage_bce_tagger",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A ReLU multi-label tagger (fc1, act1, fc2, act2, head with 5 logits) tagging damage on an arrow's fletching from 16 standardised photo features, BCE with logits, Adam at 3e-3, 300 steps. The labels merge two inspectors' multi-hot tags with `a + b` where the pipeline meant `clamp(a + b, max=1)`: a tag both inspectors saw has target 2, for which BCE's gradient sigmoid(z) - 2 never vanishes, so those logits are pushed up without bound; the head's peak logit grows over 20x and is still growing at the end, and the loss goes negative. Finite, no blow-up.",
)
def h294_archery_fletch_summed_tags(ctx: Context) -> None:
    gen = seeded(29410)
    model = Stack(16, 64, out=5)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    probe_x, _ = next(_fletch_tags(torch.Generator().manual_seed(3), 256, seed=410))
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0 or step == 299:
            with torch.no_grad():
                peaks.append(float(model(probe_x).abs().max()))

    _train(
        ctx,
        model,
        opt,
        _fletch_tags(gen, 64, seed=410),
        300,
        F.binary_cross_entropy_with_logits,
        after=after,
    )
    ctx.check("the head's peak logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check(
        "the peak logit is still growing at the end", peaks[-1] > 1.2 * peaks[2 * len(peaks) // 3]
    )
    ctx.check("the loss went negative", min(ctx.losses) < 0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ------------------------------------------------------------------------------------


def _swarm_flags(gen, batch, seed):
    """120 sparse 0/1 inspection flags (queen cells seen, drone brood, congestion, ...), about
    4% set, and whether the colony swarmed within the week."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(120, generator=g) * 1.5
    while True:
        x = (torch.rand(batch, 120, generator=gen) < 0.04).float()
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(x @ w - 0.3)).float()
        yield x, y


@scenario(
    family="skep_swarm_risk_sparse_flag_net",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU net (fc1, act1, fc2, act2, head) predicting whether a skep colony swarms within the week from 120 sparse 0/1 inspection flags (about 4% set per colony), BCE with logits, Adagrad at 5e-2 (its per-coordinate rates suit rare features), clipping at 5.0, 250 steps. Healthy control.",
)
def h294_skep_swarm_adagrad_control(ctx: Context) -> None:
    gen = seeded(29411)
    model = Stack(120, 32)
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    _train(
        ctx,
        model,
        opt,
        _swarm_flags(gen, 64, seed=411),
        250,
        F.binary_cross_entropy_with_logits,
        clip=5.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, k=20, ratio=0.9))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="hurling_puck_out_zone_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A GELU classifier (fc1, act1, fc2, act2, head) predicting which of 6 zones a hurling goalkeeper's puck-out lands in from 20 standardised features (wind, score, markers' positions), cross-entropy with label smoothing 0.1, fp16 autocast + torch.amp.GradScaler, AdamW with two param groups (weight decay 0.05 on weights, 0 on biases), OneCycleLR to 3e-3, clipping at 1.0 after unscaling, 200 steps. Healthy control.",
)
def h294_hurling_puck_out_amp_control(ctx: Context) -> None:
    gen = seeded(29412)
    model = Stack(20, 64, out=6, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 20, 6, seed=412),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


def _moulin(gen, batch, seed):
    """Standardised melt readings; discharge with Student-t (df 3) noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    student = torch.distributions.StudentT(3.0)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        y = torch.tanh(x @ w / 3) + 0.3 * (x[:, 0] * x[:, 1]).clamp(-2, 2)
        yield x, y + 0.1 * student.sample((batch,))


@scenario(
    family="glacier_moulin_discharge_huber_regressor",
    optimizer="SGD(momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing a glacier moulin's discharge from 9 standardised melt readings (air temperature, insolation, rain, supraglacial stream stage), targets with Student-t (df 3) noise, Huber loss, SGD momentum 0.9 at 2e-2, gradient accumulation over 2, clipping at 1.0, ReduceLROnPlateau (factor 0.5, patience 15), 200 steps. Healthy control.",
)
def h294_glacier_moulin_control(ctx: Context) -> None:
    gen = seeded(29413)
    model = Stack(9, 64)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    _train(
        ctx,
        model,
        opt,
        _moulin(gen, 64, seed=413),
        200,
        F.huber_loss,
        accumulate=2,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))
