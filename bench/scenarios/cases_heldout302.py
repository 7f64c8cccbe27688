"""Held-out set 302 (``h302_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a well-sinker's seep-count Poisson net with a ReLU rate
and a hand-written log (log 0, NaN), a geocaching find-time regressor resumed from a checkpoint
without its AdamW state (one loss spike, recovers), a dilruba raga-phrase classifier whose
softmax temperature was typed 1e-3 (softmax collapse), a haymaking multi-task net (shared trunk,
an MSE moisture head and a BCE rain head) whose trunk lr key was misspelt so it trains at lr 0
(update ratio), a reed-organ stop-registration net reading a learned bank by unnormalised,
undecayed attention (attention logits grow), a railway-ballast tamping ReLU Elman RNN whose
recurrent weights got the ReLU init gain sqrt(2) (gradients grow through time), a decoy-carving
weight regressor fed one shard in grams (data outlier), a lelo-burti carry regressor whose
loss-scale lookup fell through to 100 for one step (gradient spike), an iron-gall ink fp16 MLP
fed raw centipoise viscosities (fp16 overflow), a tatara bloom-grade ReLU classifier whose
warm-up peak was typed 3e-1 (ReLUs die), and three controls (a corset-boning fp16 GELU
classifier with a GradScaler, OneCycleLR and label smoothing, an anticrepuscular-ray Huber
regressor with SGD Nesterov, warm-up and cosine decay, a wheelbarrow multilabel BCE net with
Adadelta and ReduceLROnPlateau).

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
    scale_of=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``after(step)`` runs after the
    optimizer step; ``scale_of(step)`` is the factor the summed micro-batch losses are
    multiplied by (1/accumulate unless a bug says otherwise); stops after a non-finite loss.
    Returns the step it stopped at."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        f = scale_of(step) if scale_of is not None else 1.0 / accumulate
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
            total = f * loss
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
    """fc1 -> act1 -> fc2 -> act2 -> head with activation modules (and optional dropout)."""

    def __init__(self, d_in, hidden=64, out=1, act=nn.ReLU, p_drop=0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.drop1 = nn.Dropout(p_drop)
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.drop2 = nn.Dropout(p_drop)
        self.head = nn.Linear(hidden, out)

    def features(self, x):
        return self.drop2(self.act2(self.fc2(self.drop1(self.act1(self.fc1(x))))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


DIV_WELL = 50
LR_GEO = 1e-2
LR_WELL = 5e-4


# -- well sinking: a ReLU inflow rate and a hand-written Poisson log-likelihood -----------------


class InflowNet(nn.Module):
    def __init__(self, d_in=9, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)
        self.rate = nn.ReLU()
        with torch.no_grad():
            self.head.bias.fill_(0.8)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return self.rate(self.head(h)).squeeze(-1)


def _seeps(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        lam = torch.exp(0.9 * x @ w / 3.0 - 0.7)
        yield x, torch.poisson(lam, generator=gen)


def _hand_poisson(rate, y):
    return (rate - y * torch.log(rate)).mean()


@scenario(
    family="well_sinking_water_inflow_poisson_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("rate", "head"),
    diverges=DIV_WELL,
    heldout=True,
    note="A tanh net (fc1, act1, fc2, act2, head, rate = ReLU) predicting how many water seeps a well-sinker meets per metre dug from 9 standardised readings (clay fraction, depth, water-table estimate, rainfall), Adam at 5e-4, the Poisson NLL written by hand as rate - y*log(rate) without a clamp, 200 steps. The rate goes through a ReLU where an exp/softplus was meant: rows with no seeps push their predicted rate down until the ReLU outputs exactly 0, log(0) = -inf, 0*(-inf) = NaN, and the loss is NaN at step 50.",
)
def h302_well_sinking_relu_log(ctx: Context) -> None:
    gen = seeded(30201)
    model = InflowNet()
    opt = torch.optim.Adam(model.parameters(), lr=LR_WELL)
    zeros: list[int] = []

    def watch(step, out, x, y):
        zeros.append(int((out == 0).sum()))

    _train(ctx, model, opt, _seeps(gen, 64, seed=2011), 200, _hand_poisson, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss went NaN/inf", bad is not None)
    ctx.check("a rate was exactly 0 on that step", bad is not None and zeros[bad] > 0)
    ctx.check(
        "the loss was finite before it", bad is not None and bad >= 5 and _finite(ctx.losses[:bad])
    )
    ctx.check("NaN at the recorded step", bad == DIV_WELL)


# -- geocaching: a resumed run whose optimizer state was not restored --------------------------

ONSET_GEO = 120


@scenario(
    family="geocaching_cache_find_time_regressor",
    optimizer="AdamW",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_GEO,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing how long geocachers take to find a cache (standardised) from 12 readings (terrain and difficulty ratings, canopy cover, hint length, GPS error), AdamW at 1e-2 (weight decay 0.01), MSE, 260 steps. At step 120 the job is pre-empted and resumed from its checkpoint; the resume code reloads the weights but re-creates the optimizer without loading its state dict, so the first Adam step after resuming has fresh moments (an update of about lr on every weight): the loss jumps on ordinary data for a few steps and the run recovers to where it was.",
)
def h302_geocaching_resume_without_state(ctx: Context) -> None:
    gen = seeded(30202)
    model = Stack(12, 64, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=LR_GEO, weight_decay=0.01)

    def before(step):
        if step == ONSET_GEO:
            opt.state.clear()

    _train(ctx, model, opt, _readings(gen, 64, 12, seed=2021), 260, F.mse_loss, before=before)
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_GEO - 10 : ONSET_GEO])
    peak = max(ls[ONSET_GEO : ONSET_GEO + 5])
    ctx.check("the loss jumped over 3x after the resume", peak > 3 * pre)
    ctx.check(
        "the gradient at the resume step is ordinary",
        g[ONSET_GEO] < 3 * _median(g[ONSET_GEO - 20 : ONSET_GEO]),
    )
    ctx.check("the run recovered", _mean(ls[-20:]) < 1.5 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- dilruba: the softmax temperature typed 0.001 -----------------------------------------------


class PhraseNet(nn.Module):
    def __init__(self, d_in=16, hidden=48, classes=7, temperature=1.0):
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
    family="dilruba_raga_phrase_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) classifying which raga a dilruba player's phrase belongs to (7 kinds) from 16 standardised bowing and fret-slide readings, Adamax at 2e-3, cross-entropy, 200 steps. The logits are divided by a temperature from the config, where the distillation run's 1e-3 (meant for a different key) was picked up instead of 1.0: the head's logits are multiplied by 1000, the float32 softmax of most rows gives the target exactly 1.0 and the others exactly 0, and only the wrong rows with huge losses still move the net.",
)
def h302_dilruba_temperature_typo(ctx: Context) -> None:
    gen = seeded(30203)
    model = PhraseNet(temperature=1e-3)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fracs: list[float] = []

    def watch(step, out, x, y):
        fracs.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 7, seed=2031),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over a third of rows' softmax exactly 1.0 at the end", _mean(fracs[-20:]) > 0.33)
    ctx.check("the logits are scaled 1000x", model.temperature < 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- haymaking: a shared trunk and two heads, the trunk's lr typed 0 -----------------------------


class WindrowNet(nn.Module):
    """Shared trunk; head_moist regresses the moisture (MSE), head_rain says whether the crop
    will be rained on before baling (BCE)."""

    def __init__(self, d_in=12, hidden=64):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        self.head_moist = nn.Linear(hidden, 1)
        self.head_rain = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.trunk(x)
        return torch.cat([self.head_moist(h), self.head_rain(h)], -1)


def _windrows(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g)
    v = torch.randn(12, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        moist = torch.tanh(x @ w / math.sqrt(12)) + 0.05 * torch.randn(batch, generator=gen)
        rain = (torch.sin(x @ v / math.sqrt(12) * 2.0) > 0).float()
        yield x, torch.stack([moist, rain], -1)


def _hay_loss(out, y):
    return F.mse_loss(out[:, 0], y[:, 0]) + F.binary_cross_entropy_with_logits(out[:, 1], y[:, 1])


@scenario(
    family="haymaking_windrow_multitask_net",
    optimizer="RMSprop",
    cause="update_ratio_out_of_range",
    where=("trunk", "trunk.0", "trunk.2"),
    diverges=None,
    heldout=True,
    note="A hand-written multi-task net for a hay contractor: a shared SiLU trunk (trunk.0 Linear, trunk.1 SiLU, trunk.2 Linear, trunk.3 SiLU) and two heads, head_moist regressing the windrow's moisture at baling (MSE) and head_rain predicting whether rain catches it before baling (BCE with logits), the two losses summed, RMSprop, 250 steps, param groups trunk / heads. The sweep script builds the trunk group's lr as cfg.get('trunk_lr', 0.0) and the config spells the key 'trunk_lr ' with a trailing space: the trunk trains at lr 0 and never moves (update ratio 0), the heads train at 1e-3 on frozen random features and the loss falls only as far as they can take it.",
)
def h302_haymaking_trunk_lr_zero(ctx: Context) -> None:
    gen = seeded(30204)
    model = WindrowNet()
    cfg = {"trunk_lr ": 1e-3, "head_lr": 1e-3}
    heads = list(model.head_moist.parameters()) + list(model.head_rain.parameters())
    opt = torch.optim.RMSprop(
        [
            {"params": model.trunk.parameters(), "lr": cfg.get("trunk_lr", 0.0)},
            {"params": heads, "lr": cfg["head_lr"]},
        ],
        lr=1e-3,
    )
    t0, h0 = _flat(model.trunk), _flat(model.head_moist)
    _train(ctx, model, opt, _windrows(gen, 64, seed=2041), 250, _hay_loss)
    moved_t = float((_flat(model.trunk) - t0).norm()) / float(t0.norm())
    moved_h = float((_flat(model.head_moist) - h0).norm()) / float(h0.norm())
    ctx.check("the trunk moved under 1e-6 of its norm", moved_t < 1e-6)
    ctx.check("the moisture head moved over 5% of its norm", moved_h > 0.05)
    ctx.check("the loss still fell", _fell(ctx.losses, ratio=0.9))


# -- reed organ: a learned stop bank read by attention, its keys unnormalised and undecayed ------


class StopBank(nn.Module):
    def __init__(self, dim, slots):
        super().__init__()
        self.q = nn.Linear(dim, dim, bias=False)
        self.keys = nn.Parameter(0.02 * torch.randn(slots, dim))
        self.values = nn.Parameter(0.02 * torch.randn(slots, dim))
        self.dim = dim
        nn.init.normal_(self.q.weight, std=0.02)

    def logits(self, h):
        return self.q(h) @ self.keys.T / math.sqrt(self.dim)

    def forward(self, h):
        return torch.softmax(self.logits(h), -1) @ self.values


class RegistrationNet(nn.Module):
    def __init__(self, d_in=14, dim=32, slots=12, classes=6):
        super().__init__()
        self.enc = nn.Linear(d_in, dim)
        self.stops = StopBank(dim, slots)
        self.head = nn.Linear(2 * dim, classes)

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return self.head(torch.cat([h, self.stops(h)], -1))


@scenario(
    family="reed_organ_stop_registration_attention_net",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("stops",),
    diverges=None,
    heldout=True,
    note="A hand-written classifier of which stop registration a reed-organ player will draw next (6 kinds) from 14 standardised readings of the piece (dynamics, tempo, register, swell pedal): enc (Linear + tanh), stops = a learned bank of 12 registration slots (keys, values) read by attention with the encoded passage as query (q.k/sqrt(d), no normalisation), head over [passage, read]. AdamW at 1e-2, cross-entropy, 300 steps. The param-group code put every parameter whose name contains 'stops' in the no-decay group (copied from an embedding recipe), so the bank's keys and query carry no weight decay and nothing bounds q.k: the peak attention logit over the slots grows over 20x from its small init and past 5. Finite, no blow-up.",
)
def h302_reed_organ_stop_bank(ctx: Context) -> None:
    gen = seeded(30205)
    model = RegistrationNet()
    bank = list(model.stops.parameters())
    rest = [p for n, p in model.named_parameters() if "stops" not in n]
    opt = torch.optim.AdamW(
        [{"params": rest, "weight_decay": 0.01}, {"params": bank, "weight_decay": 0.0}], lr=1e-2
    )
    probe = next(_kinds(torch.Generator().manual_seed(5), 256, 14, 6, seed=2051))[0]
    peaks: list[float] = []

    def after(step):
        if step % 10 == 0:
            with torch.no_grad():
                peaks.append(float(model.stops.logits(torch.tanh(model.enc(probe))).abs().max()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 6, seed=2051),
        300,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("the peak attention logit grew over 20x", peaks[-1] > 20 * peaks[0])
    ctx.check("the peak attention logit passed 5", peaks[-1] > 5.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- railway ballast: an Elman cell's recurrent weights initialised with the ReLU gain ----------


class TamperCell(nn.Module):
    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        with torch.no_grad():
            nn.init.orthogonal_(self.rec.weight, gain=gain)
            self.rec.bias.zero_()
            self.inp.weight.mul_(0.2)
            self.inp.bias.zero_()

    def forward(self, x, h):
        return F.relu(self.inp(x) + self.rec(h))


class TamperRNN(nn.Module):
    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.cell = TamperCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _tamping(gen, batch, frames=40):
    """40 frames of (tine vibration, squeeze pressure, sleeper depth); target: settlement."""
    while True:
        x = torch.randn(batch, frames, 3, generator=gen)
        y = torch.tanh(x[:, -8:, 0].mean(1) + 0.5 * x[:, -8:, 1].mean(1))
        yield x, y


@scenario(
    family="railway_ballast_tamping_vibration_rnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("cell.rec", "cell"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU Elman RNN (cell with inp and rec Linear layers, head on the last state) reading 40 frames of a tamping machine's tine vibration, squeeze pressure and sleeper depth to regress how far the track settles after tamping, SGD momentum 0.9 at 1e-4, MSE, clipping at 1.0, 120 steps. The init helper applies orthogonal_(w, gain=calculate_gain('relu')) to every Linear weight, the recurrent one included, so rec is sqrt(2) times an orthogonal matrix: every frame multiplies the back-propagated state gradient, the gradient reaching the first hidden state is over 20x the one at the last state and the total gradient is over 30x that of the same model with a gain-1 recurrent init; clipping keeps the run finite.",
)
def h302_railway_ballast_rec_gain(ctx: Context) -> None:
    gen = seeded(30206)
    model = TamperRNN(gain=nn.init.calculate_gain("relu"))
    ref = TamperRNN(gain=1.0)
    ref.load_state_dict(
        {k: v for k, v in model.state_dict().items() if "rec.weight" not in k}, strict=False
    )
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x0, y0 = next(_tamping(torch.Generator().manual_seed(3), 64))
    F.mse_loss(model(x0), y0).backward()
    ratio0 = float(model.states[0].grad.norm() / model.states[-1].grad.norm())
    g_bad = grad_norm(model)
    model.zero_grad()
    F.mse_loss(ref(x0), y0).backward()
    g_ref = grad_norm(ref)
    _train(ctx, model, opt, _tamping(gen, 64), 120, F.mse_loss, clip=1.0)
    ctx.check("the first state's gradient is over 20x the last's", ratio0 > 20)
    ctx.check("the gradient is over 30x a gain-1 model's", g_bad > 30 * g_ref)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- decoy carving: one shard's target weights in grams -----------------------------------------

ONSET_DECOY = 100


@scenario(
    family="decoy_carving_cedar_block_weight_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_DECOY,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the finished weight of a hand-carved duck decoy (standardised kilograms) from 10 readings of the cedar block (size, density, moisture, hollowing depth), plain SGD at 3e-2, MSE, clipping at 1.0, 220 steps. One carver's shard, read at step 100, logged the weights in grams: that batch's targets are 1000x too large. The loss and the gradient jump on that one batch, clipping bounds the step, and the run recovers.",
)
def h302_decoy_carving_gram_shard(ctx: Context) -> None:
    gen = seeded(30207)
    model = Stack(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=3e-2)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == ONSET_DECOY else (x, y)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=2071),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_DECOY - 20 : ONSET_DECOY])
    ctx.check("the loss on the bad batch is over 50x the usual", ls[ONSET_DECOY] > 50 * pre)
    ctx.check(
        "the gradient on the bad batch is over 20x the usual",
        g[ONSET_DECOY] > 20 * _median(g[ONSET_DECOY - 20 : ONSET_DECOY]),
    )
    ctx.check("the run recovered", _mean(ls[-20:]) < 2.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- lelo burti: an auxiliary-loss weight typo for one step -------------------------------------

ONSET_LELO = 80


@scenario(
    family="lelo_burti_ball_carry_distance_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_LELO,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how far a lelo burti side carries the leather ball in one push (standardised metres) from 12 readings (team sizes, pitch wetness, push angle, players in the scrum), SGD Nesterov momentum 0.9 at 5e-3, MSE, gradient accumulation over 4 micro-batches, clipping at 1.0, 180 steps. The loss-scale schedule was keyed by epoch and step; at step 80 (an epoch boundary) the lookup fell through to a default meant for a percentage (100.0) instead of 1/4: that one step backpropagates 400x the usual gradient on ordinary data. Clipping bounds the step and the run goes on training.",
)
def h302_lelo_burti_scale_fallthrough(ctx: Context) -> None:
    gen = seeded(30208)
    model = Stack(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, seed=2081),
        180,
        F.mse_loss,
        accumulate=4,
        clip=1.0,
        scale_of=lambda s: 100.0 if s == ONSET_LELO else 0.25,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_LELO - 20 : ONSET_LELO])
    ctx.check("the gradient at the bad step is over 50x the usual", g[ONSET_LELO] > 50 * base)
    ctx.check(
        "the gradient is back to normal after it",
        _median(g[ONSET_LELO + 1 : ONSET_LELO + 21]) < 3 * base,
    )
    ctx.check(
        "the loss on that step's batch is ordinary",
        ls[ONSET_LELO] < 2.0 * _mean(ls[ONSET_LELO - 10 : ONSET_LELO]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- inkmaking: raw centipoise viscosities under fp16 autocast ----------------------------------


def _inks(gen, batch, seed):
    """8 readings: viscosity in raw centipoise (~800) and seven standardised; target: flow."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        z = torch.randn(batch, 8, generator=gen)
        y = torch.tanh(z @ w / math.sqrt(8))
        x = z.clone()
        x[:, 0] = 800.0 + 150.0 * z[:, 0]
        yield x, y


@scenario(
    family="inkmaking_iron_gall_flow_fp16_mlp",
    optimizer="SGD momentum",
    cause="amp_overflow",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how freely an iron-gall ink flows from a quill (standardised) from 8 readings (viscosity, gum arabic and gall fractions, iron sulphate, temperature, ...), fp16 autocast with a torch.amp.GradScaler (init scale 65536), SGD momentum 0.9 at 1e-4, MSE, clipping at 1.0 after unscale_, 150 steps. The new viscometer's export gives viscosity in raw centipoise (~800) where the pipeline expects it standardised: under the 65536 loss scale fc1's weight gradient (an input of ~800 times the scaled upstream gradient) overflows fp16, and the scaler skips steps and halves its scale again and again, over 100x down, before the scaled gradients fit.",
)
def h302_inkmaking_raw_centipoise_fp16(ctx: Context) -> None:
    gen = seeded(30209)
    model = Stack(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    _train(
        ctx,
        model,
        opt,
        _inks(gen, 64, seed=2091),
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


# -- tatara: the warm-up peak typed 3e-1, the ReLUs die ------------------------------------------


@scenario(
    family="tatara_smelting_bloom_grade_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    onset=10,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) grading the steel bloom (kera) of a tatara smelt into 5 grades from 16 standardised readings (iron-sand feed, charcoal charge, bellows rate, furnace wall temperature), NAdam, cross-entropy, 240 steps, a linear warm-up over 20 steps to cfg['peak_lr']. The peak was typed 3e-1 for 3e-3: as the warm-up passes about 0.1 the huge normalised steps push most of fc2's units negative on every input and they never come back (their gradient is exactly 0): over half of fc2 is dead from step 60 to the end, and the net trains on with what is left.",
)
def h302_tatara_warmup_peak(ctx: Context) -> None:
    gen = seeded(30210)
    model = Stack(16, 64, out=5)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    probe = next(_kinds(torch.Generator().manual_seed(9), 512, 16, 5, seed=2101))[0]
    dead: list[float] = []

    def after(step):
        with torch.no_grad():
            a = model.act2(model.fc2(model.act1(model.fc1(probe))))
            dead.append(float((a <= 0).all(0).float().mean()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, seed=2101),
        240,
        F.cross_entropy,
        classifier=True,
        sched=sched,
        after=after,
    )
    ctx.check("under 10% of fc2's units dead at the start", dead[0] < 0.1)
    ctx.check("over half of fc2's units dead at the end", dead[-1] > 0.5)
    ctx.check("over half of fc2's units dead at every step from 60 on", min(dead[60:]) > 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls -----------------------------------------------------------------------------------


@scenario(
    family="corset_boning_fit_fp16_gelu_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP (fc1, act1, fc2, act2, head) classifying which boning a corsetier should use for a fitting (steel spiral, flat steel, whalebone substitute, cane, 4 kinds) from 14 standardised measurements, fp16 autocast with a torch.amp.GradScaler, Adam with OneCycleLR to 3e-3, label smoothing 0.1, clipping at 1.0 after unscale_, 200 steps.",
)
def h302_corset_boning_fp16_onecycle(ctx: Context) -> None:
    gen = seeded(30211)
    model = Stack(14, 64, out=4, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 4, seed=2111, noise=0.5),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("the loss scale stayed above 1000", min(ctx.scales) > 1000)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="anticrepuscular_ray_brightness_huber_regressor",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tanh MLP (fc1, act1, fc2, act2, head) regressing how bright anticrepuscular rays appear at the antisolar point from 10 standardised sky readings (sun elevation, cloud gaps, aerosol depth, humidity), noisy Student-t targets, SGD Nesterov momentum 0.9, 20-step linear warm-up then cosine decay from 2e-2, Huber loss, clipping at 1.0, 240 steps.",
)
def h302_anticrepuscular_warmup_cosine(ctx: Context) -> None:
    gen = seeded(30212)
    model = Stack(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)

    def factor(s):
        if s < 20:
            return (s + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (s - 20) / 220))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=2121, noise=0.2, heavy=True),
        240,
        nn.HuberLoss(),
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses))


def _loads(gen, batch, seed):
    """12 readings of a loaded barrow; 3 labels: tips left, tips right, handles strain."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 3, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        z = x @ w / math.sqrt(12) + 0.3 * torch.randn(batch, 3, generator=gen)
        yield x, (z > 0.3).float()


@scenario(
    family="wheelbarrow_load_tip_multilabel_bce_net",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a ReLU MLP (fc1, act1, fc2, act2, head) tagging a loaded builder's wheelbarrow with three risks (tips left, tips right, handles strain) from 12 standardised readings (load mass and position, tyre pressure, slope), multilabel BCE with logits, Adadelta at lr 1.0, ReduceLROnPlateau (factor 0.5, patience 20), 250 steps.",
)
def h302_wheelbarrow_adadelta_plateau(ctx: Context) -> None:
    gen = seeded(30213)
    model = Stack(12, 64, out=3)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _loads(gen, 64, seed=2131),
        250,
        F.binary_cross_entropy_with_logits,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
