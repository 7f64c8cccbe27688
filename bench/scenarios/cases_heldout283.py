"""Held-out set 283 (``h283_``): hand-written models of trades, crafts, sports, boats and natural
work not covered before: a faustball spike-zone ReLU classifier whose OneCycleLR peak was copied
from an SGD recipe into RMSprop, a felucca lateen-trim gated fp16 regressor fed an anemometer switched to mm/s, a
currach crew stroke-rate regressor with one shard's boat speed logged in cm/s, a bolas throw
classifier whose loss is nll_loss on raw logits, a pommel-horse circle-tempo tanh regressor
whose StepLR gamma was typed 10 for 0.1, a pirogue poling-depth ReLU recurrent cell whose
identity init was scaled by the input gain, a sickle-reaping sheaf-yield net that takes the log
of a moisture reading that hits 0.0, a spokeshave shaving-thickness net whose body group took a
distillation preset's lr multiplier, a dory handline haul-weight regressor whose checkpoint
hook backpropagates a summed loss once, an umiak hull-drag regressor whose resume applies a loss
weight of 1e5 for one step under Adam, and three controls (a yuloh sampan thrust SwiGLU
regressor with an EMA of the weights evaluated every 10 steps, a tumbling-pass Conv1d
classifier with OneCycleLR and label smoothing, a distaff yarn-count regressor with RAdam,
ReduceLROnPlateau, Huber and gradient accumulation).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.8) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


class _Twin:
    """A context for a bug-free twin run: records the loss, attaches nothing."""

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
    alter=None,
    after=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    backprop=None,
):
    """The file's loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a batch,
    ``after(step)`` runs after the optimizer step, ``backprop(step, loss, out, y)`` returns the
    loss actually backpropagated (the logged loss is the plain one); ``amp``: fp16 autocast;
    stops after logging a non-finite loss."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            total = backprop(step, loss, out, y) if backprop is not None else loss
            total = total / accumulate
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

    def features(self, x):
        h1 = self.act1(self.fc1(x))
        return h1, self.act2(self.fc2(h1))

    def forward(self, x):
        out = self.head(self.features(x)[1])
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _top_eig(model, loss_fn, x, y, iters=15):
    """Largest Hessian eigenvalue of the loss on (x, y), by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((h * u).sum()) for h, u in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


# -- faustball: the OneCycleLR peak copied from the SGD recipe into RMSprop ----------------------


@scenario(
    family="faustball_spike_zone_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) naming which of 6 court zones a faustball spike lands in from 12 standardised readings (hitter's arm speed, contact height, ball spin; overlapping classes), cross-entropy, OneCycleLR over 250 steps. The optimizer was switched from SGD to RMSprop but the schedule's max_lr was left at the SGD recipe's 3e-2 (the RMSprop recipe says 1e-3): on the way up to the peak the RMSprop steps push fc2's pre-activations negative for every input, and over half of act2's units die for good (the loss climbs into the tens around the peak and falls back as the rate anneals); when the schedule anneals, the dead units never come back and the loss stays over 2x a twin run with max_lr 1e-3, whose units stay alive. Finite, no blow-up.",
)
def h283_faustball_onecycle_peak_from_sgd_recipe(ctx: Context) -> None:
    probe = next(_kinds(torch.Generator().manual_seed(3), 512, 12, 6, 41, noise=1.0))[0]

    def run(c, max_lr, seed):
        gen = seeded(seed)
        model = Stack(12, hidden=64, out=6)
        opt = torch.optim.RMSprop(model.parameters(), lr=max_lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=250)
        dead: list[tuple[float, float]] = []

        def after(step):
            with torch.no_grad():
                h1, h2 = model.features(probe)
            dead.append((dead_fraction(h1), dead_fraction(h2)))

        _train(
            c,
            model,
            opt,
            _kinds(gen, 64, 12, 6, 41, noise=1.0),
            250,
            F.cross_entropy,
            classifier=True,
            sched=sched,
            after=after,
        )
        return dead

    dead = run(ctx, 3e-2, 28301)
    twin = _Twin()
    twin_dead = run(twin, 1e-3, 28301)
    ls = ctx.losses
    worst = [max(a, b) for a, b in dead]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("under 10% of the units dead at the start", worst[0] < 0.1)
    ctx.check("over 50% of a layer's units dead at the end", worst[-1] > 0.5)
    ctx.check("they stayed dead over the last 100 steps", min(worst[-100:]) > 0.4)
    ctx.check("the twin kept its units (under 20% dead)", max(max(d) for d in twin_dead) < 0.2)
    ctx.check("the loss ended over 2x the twin's", _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:]))


# -- felucca: an anemometer switched to mm/s feeds a gated product under fp16 ---------------------

ONSET_FELUCCA = 120


class WindGate(nn.Module):
    """Apparent-wind pressure goes as speed squared: a bilinear (gated) layer a(x) * b(x)."""

    def __init__(self, d_in, hidden):
        super().__init__()
        self.a = nn.Linear(d_in, hidden)
        self.b = nn.Linear(d_in, hidden)

    def forward(self, x):
        return self.a(x) * self.b(x)


class FeluccaNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.gate = WindGate(d_in, hidden)
        self.fc = nn.Linear(hidden, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act(self.fc(self.gate(x)))).squeeze(-1)


@scenario(
    family="felucca_lateen_trim_gated_fp16_regressor",
    optimizer="NAdam",
    cause="amp_overflow",
    where=("gate",),
    diverges=ONSET_FELUCCA,
    heldout=True,
    onset=ONSET_FELUCCA,
    note="A gated regressor (gate = a(x) * b(x), the apparent-wind pressure term, then fc, act, head) predicting a felucca's lateen-sail trim from 8 readings (two anemometer channels, heel, rudder load, current), NAdam at 2e-3, MSE, trained under fp16 autocast with a torch.amp.GradScaler. At step 120 the masthead anemometer's firmware is updated and its two channels arrive in mm/s instead of m/s (x1000, no rescaling): the gate's product, computed in fp16 under autocast, passes 65504 and overflows to inf, the output and the loss are non-finite at once. The same batch in fp32 is finite; nothing else changed.",
)
def h283_felucca_anemometer_in_mm_per_s(ctx: Context) -> None:
    gen = seeded(28302)
    model = FeluccaNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    seen: dict[str, torch.Tensor] = {}

    def alter(step, x, y):
        if step >= ONSET_FELUCCA:
            x = x.clone()
            x[:, :2] = 1000.0 * x[:, :2]
            seen.setdefault("x", x)
        return x, y

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 43),
        220,
        F.mse_loss,
        alter=alter,
        scaler=scaler,
        amp=True,
    )
    ls = ctx.losses
    with torch.no_grad():
        fp32_out = model(seen["x"]) if "x" in seen else torch.tensor(float("nan"))
        with torch.autocast("cpu", dtype=torch.float16):
            gate16 = model.gate(seen["x"]) if "x" in seen else torch.zeros(1)
    ctx.check("finite before the firmware update", _finite(ls[:ONSET_FELUCCA]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_FELUCCA], ratio=0.6))
    ctx.check(
        "the loss is non-finite at step 120",
        len(ls) > ONSET_FELUCCA and not math.isfinite(ls[ONSET_FELUCCA]),
    )
    ctx.check("the fp16 gate product holds inf", bool(torch.isinf(gate16).any()))
    ctx.check("the same batch in fp32 is finite", bool(torch.isfinite(fp32_out).all()))


# -- currach: one shard's boat speed logged in cm/s ----------------------------------------------

ONSET_CURRACH = 110


@scenario(
    family="currach_crew_stroke_rate_silu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CURRACH,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a currach's boat speed (standardised) from 10 readings of the crew (stroke rate, catch angle, rhythm ratio, sea state), SGD momentum 0.9 at 1e-2, MSE, gradient clipping at 1.0. One regatta's shard was logged with the boat speed in cm/s and no standardisation; the batch at step 110 carries six such rows whose targets are a few hundred instead of about 1. The loss and the gradient jump by orders of magnitude on that one batch, clipping bounds the step and the run recovers.",
)
def h283_currach_shard_speed_in_cm_per_s(ctx: Context) -> None:
    gen = seeded(28303)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def alter(step, x, y):
        if step == ONSET_CURRACH:
            y = y.clone()
            y[:6] = 100.0 * (y[:6] + 3.0)
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, 45), 220, F.mse_loss, alter=alter, clip=1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    before = ls[ONSET_CURRACH - 20 : ONSET_CURRACH]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before the shard", _fell(ls[:ONSET_CURRACH], ratio=0.5))
    ctx.check(
        "the loss at step 110 is over 100x the median before",
        ls[ONSET_CURRACH] > 100 * _median(before),
    )
    ctx.check(
        "the gradient at step 110 is over 20x the median before",
        gs[ONSET_CURRACH] > 20 * _median(gs[ONSET_CURRACH - 20 : ONSET_CURRACH]),
    )
    ctx.check(
        "the loss recovered by the end (under 2x its level before)",
        _mean(ls[-20:]) < 2 * _mean(before),
    )


# -- bolas: nll_loss on raw logits ---------------------------------------------------------------


@scenario(
    family="bolas_throw_outcome_gelu_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) naming which of 5 outcomes a bolas throw has (clean wrap, partial wrap, miss high, miss low, tangle) from 10 standardised readings of the throw, Adam at 1e-3. The loss was written F.nll_loss(model(x), y) on the raw logits: the log_softmax was lost when the model's final LogSoftmax layer was removed for an export, so the loss is -logit[target], unbounded below. The head's logits grow without bound (over 20x their starting size and still growing at the end), the loss goes negative and keeps falling. Finite over the run.",
)
def h283_bolas_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(28304)
    model = Stack(10, hidden=48, out=5, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    probe = next(_kinds(torch.Generator().manual_seed(5), 256, 10, 5, 47))[0]

    def peak():
        with torch.no_grad():
            return float(model(probe).abs().max())

    peaks = [peak()]
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 10, 5, 47),
        250,
        F.nll_loss,
        classifier=True,
        after=lambda step: peaks.append(peak()),
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the head's logits grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("they still grew over the last 50 steps", peaks[-1] > 1.2 * peaks[-51])
    ctx.check("the loss went negative", ls[-1] < 0)
    ctx.check("the loss kept falling without bound", _mean(ls[-10:]) < _mean(ls[-60:-50]) - 1.0)


# -- pommel horse: StepLR gamma typed 10 for 0.1 -------------------------------------------------

STEP_POMMEL = 100


@scenario(
    family="pommel_horse_circle_tempo_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=STEP_POMMEL,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing a gymnast's circle tempo on the pommel horse from 8 standardised readings (hand placement, hip height, shoulder lean), plain SGD at 0.1, MSE, StepLR with step_size 100. The decay factor was typed gamma=10 for gamma=0.1: at step 100 the rate jumps to 1.0 instead of dropping to 0.01, the measured lr x top Hessian eigenvalue goes from under 2 to over 2, past the stability limit, and the loss blows up. Nothing is wrong with the data or the init.",
)
def h283_pommel_steplr_gamma_typo(ctx: Context) -> None:
    gen = seeded(28305)
    model = Stack(8, hidden=32, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=STEP_POMMEL, gamma=10.0)
    px, py = next(_readings(torch.Generator().manual_seed(7), 256, 8, 49))
    products: dict[int, float] = {}

    def before(step):
        if step % 10 == 0 and step <= STEP_POMMEL + 10:
            products[step] = opt.param_groups[0]["lr"] * _top_eig(model, F.mse_loss, px, py)

    _train(ctx, model, opt, _readings(gen, 64, 8, 49), 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    low = min(ls[:STEP_POMMEL])
    blow = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("the loss fell before step 100", _fell(ls[:STEP_POMMEL], ratio=0.5))
    ctx.check(
        "lr x sharpness under 2 before step 100",
        max(v for s, v in products.items() if s < STEP_POMMEL) < 2.0,
    )
    ctx.check("lr x sharpness over 2 from step 100", products.get(STEP_POMMEL, 0.0) > 2.0)
    ctx.check(
        "the loss blew up (over 100x its low) after step 100",
        blow is not None and blow >= STEP_POMMEL,
    )


# -- pirogue: the identity init of a ReLU recurrent cell scaled by the input gain ----------------

T_PIROGUE = 24


class PoleCell(nn.Module):
    """An IRNN-style cell h' = relu(inp(x_t) + rec(h)), read from the last state."""

    def __init__(self, d_in=4, hidden=32, rec_gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(rec_gain * torch.eye(hidden))
            self.rec.bias.zero_()
            self.inp.bias.zero_()

    def states(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        hs = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            hs.append(h)
        return hs

    def forward(self, x):
        return self.head(self.states(x)[-1]).squeeze(-1)


def _poles(gen, batch):
    """Push-by-push readings of a poling stroke; the target is the water depth they imply."""
    while True:
        x = torch.randn(batch, T_PIROGUE, 4, generator=gen)
        y = 0.5 * x[:, -4:, 0].mean(1) + 0.3 * torch.tanh(x[:, :, 1].mean(1))
        yield x, y


@scenario(
    family="pirogue_bayou_poling_depth_relu_recurrent_cell",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written IRNN-style ReLU recurrent cell (inp, rec, head) reading 24 pushes of a pirogue's pole (4 readings each) and regressing the bayou's water depth, plain SGD at 1e-3 with gradient clipping at 1.0, MSE. The recurrent weight is meant to be initialised to the identity (Le et al. 2015), but the init helper multiplied it by the input gain 1.25 (rec = 1.25 * I): the state grows about 1.25x per push and the backward pass multiplies the gradient by the same factor through time, so the gradient on the first state is orders of magnitude above the last state's and the total gradient is far above the identity-init twin's. Clipping keeps it finite, the loss stays far above the twin's.",
)
def h283_pirogue_identity_init_scaled(ctx: Context) -> None:
    probe_x, probe_y = next(_poles(torch.Generator().manual_seed(9), 128))

    def state_grads(model):
        hs = model.states(probe_x)
        for h in hs:
            h.retain_grad()
        F.mse_loss(model.head(hs[-1]).squeeze(-1), probe_y).backward()
        model.zero_grad(set_to_none=True)
        return float(hs[0].grad.norm()), float(hs[-1].grad.norm())

    def run(c, gain):
        gen = seeded(28306)
        model = PoleCell(rec_gain=gain)
        first, last = state_grads(model)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        _train(c, model, opt, _poles(gen, 64), 200, F.mse_loss, clip=1.0)
        return first, last

    first, last = run(ctx, 1.25)
    twin = _Twin()
    run(twin, 1.0)
    ls, gs = ctx.losses, ctx.grad_norms
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the first state's gradient is over 30x the last one's", first > 30 * last)
    ctx.check(
        "the gradient at step 0 is over 30x the identity twin's",
        gs[0] > 30 * twin.grad_norms[0],
    )
    ctx.check("the loss ended over 3x the twin's", _mean(ls[-20:]) > 3 * _mean(twin.losses[-20:]))


# -- sickle: log of a moisture reading that hits 0.0 ---------------------------------------------

ONSET_SICKLE = 90


class LogFeatures(nn.Module):
    """log of the positive readings (moisture, straw length, ear weight), as the agronomists
    model them."""

    def forward(self, x):
        return torch.log(x)


class SheafNet(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.logf = LogFeatures()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(self.logf(x)))))
        return self.head(h).squeeze(-1)


def _sheaves(gen, batch, seed=51):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g) / math.sqrt(6)
    while True:
        z = torch.randn(batch, 6, generator=gen)
        y = torch.tanh(z @ w) + 0.05 * torch.randn(batch, generator=gen)
        yield torch.exp(0.5 * z), y


@scenario(
    family="sickle_reaping_sheaf_yield_logfeature_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("logf",),
    diverges=ONSET_SICKLE,
    heldout=True,
    onset=ONSET_SICKLE,
    note="A SiLU net that first takes the log of its 6 positive field readings (logf: straw moisture, straw length, ear weight, ...; fc1, act1, fc2, act2, head after it) and regresses the sheaf yield of a day's reaping with a sickle, Adamax at 2e-3, MSE. The log has no floor (no clamp_min or log1p): at step 90 a dry stretch's moisture probe reads exactly 0.0 for four rows, logf produces -inf, the linear layer turns it into +inf and -inf, SiLU(-inf) is 0 * -inf = NaN, and the loss is NaN at step 90.",
)
def h283_sickle_log_of_zero_moisture(ctx: Context) -> None:
    gen = seeded(28307)
    model = SheafNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen: dict[str, torch.Tensor] = {}

    def alter(step, x, y):
        if step == ONSET_SICKLE:
            x = x.clone()
            x[:4, 0] = 0.0
            seen["x"] = x
        return x, y

    _train(ctx, model, opt, _sheaves(gen, 64), 200, F.mse_loss, alter=alter)
    ls = ctx.losses
    with torch.no_grad():
        logs = model.logf(seen["x"]) if "x" in seen else torch.zeros(1)
    ctx.check("finite before step 90", _finite(ls[:ONSET_SICKLE]))
    ctx.check("the loss fell before it", _fell(ls[:ONSET_SICKLE], ratio=0.7))
    ctx.check("the loss is NaN at step 90", len(ls) > ONSET_SICKLE and math.isnan(ls[ONSET_SICKLE]))
    ctx.check("logf produced -inf on that batch", bool(torch.isneginf(logs).any()))


# -- spokeshave: the body group took a distillation preset's lr multiplier -----------------------


@scenario(
    family="spokeshave_shaving_thickness_two_group_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the thickness of a spokeshave's shaving from 10 standardised readings (blade projection, mouth width, grain angle, wood moisture), AdamW with two param groups, base lr 3e-3, MSE. The body group (fc1, fc2) was built with lr = base * 1e-5, a multiplier copied from a distillation preset that freezes a teacher's trunk, so fc1's and fc2's per-step update ratio is under 1e-6 while the head's is over 1e-4: the body is effectively frozen and the loss plateaus well above a twin with one group. Finite, no blow-up.",
)
def h283_spokeshave_body_group_lr_multiplier(ctx: Context) -> None:
    def run(c, body_mult):
        gen = seeded(28308)
        model = Stack(10, hidden=48)
        body = list(model.fc1.parameters()) + list(model.fc2.parameters())
        opt = torch.optim.AdamW(
            [
                {"params": body, "lr": 3e-3 * body_mult},
                {"params": model.head.parameters(), "lr": 3e-3},
            ],
            weight_decay=0.01,
        )
        ratios: dict[str, list[float]] = {"fc1": [], "fc2": [], "head": []}
        prev = {k: getattr(model, k).weight.detach().clone() for k in ratios}

        def after(step):
            for k in ratios:
                w = getattr(model, k).weight.detach()
                ratios[k].append(float((w - prev[k]).norm() / w.norm()))
                prev[k] = w.clone()

        _train(c, model, opt, _readings(gen, 64, 10, 53), 200, F.mse_loss, after=after)
        return ratios

    ratios = run(ctx, 1e-5)
    twin = _Twin()
    run(twin, 1.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("fc1's update ratio stayed under 1e-6", max(ratios["fc1"]) < 1e-6)
    ctx.check("fc2's update ratio stayed under 1e-6", max(ratios["fc2"]) < 1e-6)
    ctx.check("the head's median update ratio is over 1e-4", _median(ratios["head"]) > 1e-4)
    ctx.check("the loss ended over 2x the twin's", _mean(ls[-20:]) > 2 * _mean(twin.losses[-20:]))


# -- dory: the checkpoint hook backpropagates a summed loss once ---------------------------------

ONSET_DORY = 120


@scenario(
    family="dory_handline_haul_weight_silu_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_DORY,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the weight of a dory's handline haul from 10 standardised readings (depth, drift speed, bait, water temperature), SGD Nesterov momentum 0.9 at 5e-3, MSE, gradient accumulation over 2 micro-batches of 64, clipping at 5.0. On the checkpoint step 120 a hook recomputes the loss with reduction='sum' for its metric and that summed loss is the one backpropagated: the gradient of that one step is about 64x the usual on an ordinary batch (the logged mean loss is normal). Clipping bounds the step and the run goes on training.",
)
def h283_dory_checkpoint_sum_loss(ctx: Context) -> None:
    gen = seeded(28309)
    model = Stack(10, hidden=48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)

    def backprop(step, loss, out, y):
        if step == ONSET_DORY:
            return F.mse_loss(out, y, reduction="sum")
        return loss

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 55),
        220,
        F.mse_loss,
        clip=5.0,
        accumulate=2,
        backprop=backprop,
    )
    ls, gs = ctx.losses, ctx.grad_norms
    before = ls[ONSET_DORY - 20 : ONSET_DORY]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell before step 120", _fell(ls[:ONSET_DORY], ratio=0.5))
    ctx.check(
        "the gradient at step 120 is over 30x the median before",
        gs[ONSET_DORY] > 30 * _median(gs[ONSET_DORY - 20 : ONSET_DORY]),
    )
    ctx.check("the logged loss at step 120 is ordinary", ls[ONSET_DORY] < 3 * _median(before))
    ctx.check("the loss ended under 2x its level before", _mean(ls[-20:]) < 2 * _mean(before))


# -- umiak: the resume step applies a loss weight of 1e4 under Adam ------------------------------

ONSET_UMIAK = 80


@scenario(
    family="umiak_hull_drag_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_UMIAK,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the hull drag of a skin-on-frame umiak from 10 standardised readings (load, trim, speed, skin tension), Adam at 1e-3 with beta2 0.999, MSE. On the resume at step 80 the drag loss weight was read from the old config, where it was 1e5 for a loss in log-newtons, for one step: that step's gradient is about 1e5x the usual and fills exp_avg_sq; afterwards Adam divides the ordinary gradients by its square root, which decays only as 0.999^k, so the updates shrink over 5x and the loss stalls above a twin's for the rest of the run. Finite, no blow-up.",
)
def h283_umiak_resume_loss_weight(ctx: Context) -> None:
    def run(c, weight):
        gen = seeded(28310)
        model = Stack(10, hidden=48, act=nn.SiLU)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
        moves: list[float] = []
        prev = [torch.cat([p.detach().flatten() for p in model.parameters()])]
        vmax: list[float] = []

        def after(step):
            now = torch.cat([p.detach().flatten() for p in model.parameters()])
            moves.append(float((now - prev[0]).norm()))
            prev[0] = now
            vmax.append(max(float(opt.state[p]["exp_avg_sq"].max()) for p in model.parameters()))

        def backprop(step, loss, out, y):
            return weight * loss if step == ONSET_UMIAK else loss

        _train(
            c,
            model,
            opt,
            _readings(gen, 64, 10, 57),
            260,
            F.mse_loss,
            after=after,
            backprop=backprop,
        )
        return moves, vmax

    moves, vmax = run(ctx, 1e5)
    twin = _Twin()
    run(twin, 1.0)
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "exp_avg_sq's peak jumped over 1e4x at step 80",
        vmax[ONSET_UMIAK] > 1e4 * vmax[ONSET_UMIAK - 1],
    )
    ctx.check(
        "the updates after step 100 are over 5x smaller than before step 80",
        _mean(moves[100:160]) < 0.2 * _mean(moves[60:ONSET_UMIAK]),
    )
    ctx.check(
        "the loss ended over 1.5x the twin's", _mean(ls[-20:]) > 1.5 * _mean(twin.losses[-20:])
    )


# -- controls ------------------------------------------------------------------------------------


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), hand-written."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class YulohNet(nn.Module):
    def __init__(self, d_in=10, dim=32, blocks=2):
        super().__init__()
        self.inp = nn.Linear(d_in, dim)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(blocks))
        self.mlps = nn.ModuleList(SwiGLU(dim, 64) for _ in range(blocks))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 1)

    def forward(self, x):
        h = self.inp(x)
        for norm, mlp in zip(self.norms, self.mlps, strict=True):
            h = h + mlp(norm(h))
        return self.head(self.ln_f(h)).squeeze(-1)


@scenario(
    family="yuloh_sampan_thrust_swiglu_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a residual SwiGLU regressor (inp, two pre-LayerNorm hand-written SwiGLU blocks with w1, w3, w2, ln_f, head) predicting the thrust of a sampan's yuloh (sculling oar) from 10 standardised readings, AdamW at 3e-3 with weight decay 0.05, linear warm-up over 20 steps then cosine decay, clipping at 1.0, MSE on noisy targets. An EMA of the weights (decay 0.98) is kept after every step and evaluated on a held-out set every 10 steps, as practitioners do. Trains normally.",
)
def h283_yuloh_swiglu_ema(ctx: Context) -> None:
    gen = seeded(28311)
    model = YulohNet()
    ema = copy.deepcopy(model)
    for p in ema.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 240
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    hx, hy = next(_readings(torch.Generator().manual_seed(11), 512, 10, 59, noise=0.0))
    evals: list[float] = []

    def after(step):
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.mul_(0.98).add_(pm.detach(), alpha=0.02)
        if step % 10 == 0:
            ema.eval()
            with torch.no_grad():
                evals.append(float(F.mse_loss(ema(hx), hy)))

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 59, noise=0.2),
        steps,
        F.mse_loss,
        clip=1.0,
        sched=sched,
        after=after,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, k=20, ratio=0.5))
    ctx.check("the EMA's held-out loss fell over 3x", evals[-1] < evals[0] / 3)


class TumbleNet(nn.Module):
    def __init__(self, channels=3, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


def _passes(gen, batch, classes=5, length=32, flip=0.1):
    """Accelerometer traces of a tumbling pass: each element has its own frequency and axis
    mix; 10% of the labels are wrong (judges' tags)."""
    t = torch.arange(length).float()
    freqs = torch.tensor([0.15, 0.3, 0.45, 0.6, 0.8])
    mix = torch.tensor([[1, 0, 0.5], [0, 1, 0.5], [0.5, 0.5, 1], [1, 1, 0], [0, 0.5, 1.0]])
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        wave = torch.sin(freqs[y][:, None] * t + phase)
        x = mix[y][:, :, None] * wave[:, None, :]
        x = x + 0.5 * torch.randn(batch, 3, length, generator=gen)
        wrong = torch.rand(batch, generator=gen) < flip
        y = torch.where(wrong, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


@scenario(
    family="tumbling_pass_element_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a Conv1d classifier (conv1, act1, conv2, act2, mean pool, head) naming which of 5 elements (round-off, flic-flac, whip, twist, layout) a tumbling pass's 3-axis accelerometer trace shows, SGD Nesterov momentum 0.9 with OneCycleLR (max_lr 0.05) over 200 steps, cross-entropy with label smoothing 0.1, 10% wrong labels from judges' tags, clipping at 2.0. Trains normally.",
)
def h283_tumbling_onecycle_label_smoothing(ctx: Context) -> None:
    gen = seeded(28312)
    model = TumbleNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=200)
    _train(
        ctx,
        model,
        opt,
        _passes(gen, 64),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=2.0,
        sched=sched,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, k=20, ratio=0.7))


def _yarns(gen, batch, seed=61):
    """Spinning readings and the yarn count, with heavy-tailed (Student-t) noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g) / math.sqrt(8)
    t = torch.distributions.StudentT(2.5)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        noise = t.sample((batch,)) * 0.1
        yield x, torch.sin(x @ w) + 0.3 * x[:, 0] * x[:, 1] + noise


@scenario(
    family="distaff_spinning_yarn_count_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the yarn count spun from a distaff from 8 standardised readings (fibre length, twist, draft, spindle speed), RAdam at 3e-3, Huber loss on heavy-tailed (Student-t) noisy targets, gradient accumulation over 2, ReduceLROnPlateau (patience 20), clipping at 1.0. Trains normally.",
)
def h283_distaff_radam_plateau_huber(ctx: Context) -> None:
    gen = seeded(28313)
    model = Stack(8, hidden=48, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _yarns(gen, 64),
        200,
        lambda out, y: F.huber_loss(out, y, delta=1.0),
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("finite throughout", _finite(ls))
    ctx.check("the loss fell", _fell(ls, k=20, ratio=0.6))
