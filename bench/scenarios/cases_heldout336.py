"""Held-out set 336 (``h336_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a jugger team-spacing net whose pairwise distances are a
hand-written sqrt without an epsilon (a tracker shard duplicates a player, a zero distance, NaN
in the backward pass), a mezcal agave-roast fault tagger whose labels were exported in percent
(BCE pushes the head's logits up without bound), an ice-stock shot classifier whose RMSprop lr is
typed 1e-1 for 1e-3 (ReLUs die), a surdo head-pitch regressor whose resume step multiplies by the
accumulation count instead of dividing (one gradient burst), a sugar-pulling ribbon ReLU RNN
whose identity init is scaled 1.15 (gradients grow through time), a rock-glacier creep regressor
fed one shard in mm/yr (one corrupted batch), a charreada rope-loop regressor whose rider
embedding group's lr is typed 3e-8 (frozen), a pulque fermentation regressor whose warm-up peak
is typed 1.5 for 0.15 (past 2/sharpness), a steinstossen throw regressor whose resume step
multiplies the loss by 1e4 instead of dividing, once (Adam's second moment poisoned), a pandeiro
stroke classifier whose temperature is typed 0.01 for 1.0 (softmax saturates), and three controls (a finska throw
geometry net with careful epsilons in every division, log, sqrt and acos; a jouhikko bow-stroke
Conv1d under fp16 autocast with a GradScaler, OneCycleLR, accumulation and label smoothing; a
kushti hold-sequence GRU cell classifier with ReduceLROnPlateau and clipping).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


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


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


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
    pre_step=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    divide=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``divide(step)`` the accumulation divisor (default
    ``accumulate``), ``pre_step(step)`` runs between backward and the step, ``after(step)`` after
    the optimizer step, ``plateau()`` gives the validation loss for a ReduceLROnPlateau ``sched``.
    Stops after a non-finite loss (once ``ctx.step`` has seen it); returns the steps run."""
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
            total = total / (divide(step) if divide is not None else accumulate)
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if pre_step is not None:
            pre_step(step)
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


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0, shift=0.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, shift + scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0, offset=0.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield offset + protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _strokes(gen, batch, classes, seed, length=48, channels=2, noise=0.3):
    """Short decaying strokes: each class has its own partials and decay."""
    g = torch.Generator().manual_seed(seed)
    freq = 0.2 + 0.7 * torch.rand(classes, channels, generator=g)
    decay = 0.01 + 0.06 * torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        x = torch.sin(freq[y][:, :, None] * t + phase) * torch.exp(-decay[y][:, None, None] * t)
        yield x + noise * torch.randn(batch, channels, length, generator=gen), y


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


class StrokeNet(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> mean pool -> head."""

    def __init__(self, channels=2, width=16, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, 2 * width, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


# -- jugger: pairwise spacing with a bare sqrt; a duplicated player gives a zero distance ----------


class PairwiseSpacing(nn.Module):
    """Distances between every pair of placed players: a hand-written sqrt with no epsilon."""

    def __init__(self, players: int) -> None:
        super().__init__()
        i, j = torch.triu_indices(players, players, 1)
        self.register_buffer("i", i)
        self.register_buffer("j", j)

    def forward(self, pos):
        d = pos[:, self.i] - pos[:, self.j]
        return torch.sqrt((d * d).sum(-1))  # d/dx sqrt at 0 is inf, times 2d = 0: NaN


class JuggerSpacing(nn.Module):
    """Places each of five players on the pitch from their tracker features, then measures."""

    def __init__(self, d_in=6, hidden=32, players=5):
        super().__init__()
        self.place = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, 2))
        self.spacing = PairwiseSpacing(players)

    def forward(self, x):
        return self.spacing(self.place(x))


def _jugger(gen, batch, seed, players=5, d_in=6):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d_in, 2, generator=g)
    i, j = torch.triu_indices(players, players, 1)
    while True:
        f = torch.randn(batch, players, d_in, generator=gen)
        pos = 2.0 * torch.tanh(f @ a / math.sqrt(d_in))
        d = pos[:, i] - pos[:, j]
        yield f, torch.sqrt((d * d).sum(-1))


ON_JS = 120


@scenario(
    family="jugger_team_spacing_pairwise_distance_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("spacing",),
    diverges=ON_JS + 1,
    onset=ON_JS,
    heldout=True,
    note="A hand-written geometric net for jugger team tactics: a shared Tanh MLP (place) puts each of five players on the pitch from six tracker features, and a parameter-free module (spacing) measures the ten pairwise distances as torch.sqrt of the summed squared differences, with no epsilon; MSE against the surveyed spacings, Adam at 3e-3, 200 steps planned. At step 120 the tracker shard duplicates one player's record into a team-mate's slot for one sample, so two placed players coincide exactly: the distance is exactly 0, the forward loss is finite, but sqrt's backward at 0 is inf and times the zero difference gives NaN gradients; Adam writes NaN into every weight and the loss is NaN from step 121, where the run stops.",
)
def h336_jugger_spacing_sqrt_zero(ctx: Context) -> None:
    gen = seeded(33601)
    model = JuggerSpacing()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    nan_grad = {}

    def alter(step, x, y):
        if step == ON_JS:
            x = x.clone()
            x[3, 2] = x[3, 1]  # the duplicated tracker record
        return x, y

    def pre_step(step):
        nan_grad[step] = any(
            not bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None
        )

    n = _loop(
        ctx, model, opt, _jugger(gen, 64, 336), 200, F.mse_loss, alter=alter, pre_step=pre_step
    )
    ls = ctx.losses
    ctx.check("the run stops at the step after the duplicate", n == ON_JS + 2)
    ctx.check(
        "the loss at the duplicate's step is finite", len(ls) > ON_JS and math.isfinite(ls[ON_JS])
    )
    ctx.check("its gradients are NaN (the backward pass made them)", nan_grad.get(ON_JS, False))
    ctx.check("no gradient was NaN before", not any(nan_grad.get(s, True) for s in range(ON_JS)))
    ctx.check("the loss is NaN at the declared step", _first_bad(ls) == ON_JS + 1)
    ctx.check("it trained before", _fell(ls[:ON_JS]))


# -- mezcal: a multilabel roast-fault tagger whose labels were exported in percent ----------------


def _roasts(gen, batch, seed, d_in=12, faults=5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, faults, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = x @ w / math.sqrt(d_in) + 0.3 * torch.randn(batch, faults, generator=gen) > 0.4
        yield x, 100.0 * y.float()  # the export wrote percent: 0 or 100, not 0 or 1


@scenario(
    family="mezcal_agave_roast_fault_multilabel_bce_net",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) tagging five faults of a mezcal pit-roast of agave (scorched, underdone, smoky, ...) from twelve standardised pit readings, BCE with logits, RAdam at 3e-3, 200 steps. The label export wrote the faults in percent (0 or 100) instead of 0/1: for a target of 100 the BCE gradient sigmoid(z) - 100 never vanishes, so the head keeps pushing the logits of every labelled fault up, the loss falls without bound below zero and the head's logits grow linearly and never settle.",
)
def h336_mezcal_roast_percent_labels(ctx: Context) -> None:
    gen = seeded(33602)
    model = Trunk(12, 64, out=5)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    peaks, tmax = [], []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))
        tmax.append(float(y.max()))

    _loop(
        ctx,
        model,
        opt,
        _roasts(gen, 64, 3362),
        200,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ctx.check("the targets really are beyond 1 (percent)", max(tmax) > 1.0)
    ctx.check("the head's peak logit grows over 20x", _mean(peaks[-10:]) > 20 * _mean(peaks[:10]))
    ctx.check("the peak logit is still growing at the end", peaks[-1] > 1.2 * peaks[-50])
    ctx.check("the loss falls below zero (impossible with 0/1 labels)", ctx.losses[-1] < 0.0)
    ctx.check("the run stays finite", _finite(ctx.losses))


# -- ice stock: RMSprop lr typed 3e-2 for 3e-4 kills the ReLUs -------------------------------------


@scenario(
    family="ice_stock_shot_outcome_relu_classifier",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1 16->128, act1, fc2, act2, head) classifying an Eisstock (ice-stock) shot's outcome into five classes from sixteen raw (uncentred, all about +2) sensor readings of the stock's glide, cross-entropy, RMSprop, 250 steps. The lr is typed 1e-1 for 1e-3: RMSprop's normalised first steps push most of fc1's units negative for every input, the dead share of act1 climbs from a few percent to well over half and stays there, and the loss stalls far above a run at the intended lr.",
)
def h336_ice_stock_rmsprop_dead_relus(ctx: Context) -> None:
    gen = seeded(33603)
    probe = next(_grades(torch.Generator().manual_seed(7), 512, 16, 5, 3363, 1.3, 2.0))[0]
    model = Trunk(16, 128, out=5)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-1)
    with torch.no_grad():
        dead0 = dead_fraction(model.fc1(probe))
    dead = []

    def after(step):
        with torch.no_grad():
            dead.append(dead_fraction(model.fc1(probe)))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 5, 3363, spread=1.3, offset=2.0),
        250,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    # the same run at the intended lr, for the loss it should have reached
    seeded(33603)
    twin = Trunk(16, 128, out=5)
    topt = torch.optim.RMSprop(twin.parameters(), lr=1e-3)
    tgen = torch.Generator().manual_seed(33603)
    tl = []
    for _, (x, y) in zip(range(250), _grades(tgen, 64, 16, 5, 3363, 1.3, 2.0), strict=False):
        loss = F.cross_entropy(twin(x), y)
        topt.zero_grad()
        loss.backward()
        topt.step()
        tl.append(float(loss.detach()))
    ctx.check("fc1's dead share starts under 10%", dead0 < 0.1)
    ctx.check("it climbs over 50%", max(dead) > 0.5)
    ctx.check("and stays over 40% through the last 50 steps", min(dead[-50:]) > 0.4)
    ctx.check(
        "the loss stalls over 1.5x the intended run's",
        _mean(ctx.losses[-20:]) > 1.5 * _mean(tl[-20:]),
    )
    ctx.check("the run stays finite", _finite(ctx.losses))


# -- surdo: the resume step multiplies by the accumulation count instead of dividing ---------------


ON_SU = 150


@scenario(
    family="surdo_head_tension_pitch_silu_regressor",
    optimizer="SGD(nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=ON_SU,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a surdo's drum-head pitch from ten standardised tension-rod and head readings, MSE, SGD with Nesterov momentum 0.9 at lr 0.02, gradient accumulation over 8 micro-batches, 250 steps. The step that resumes from a checkpoint at step 150 rebuilds the accumulation divisor wrong and multiplies each micro-batch's loss by 8 instead of dividing by 8: one step's gradient is 64x the usual, a single burst from the loss code (the data are ordinary); the loss jumps and the run recovers.",
)
def h336_surdo_accumulation_resume_burst(ctx: Context) -> None:
    gen = seeded(33604)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def divide(step):
        return 1.0 / 8.0 if step == ON_SU else 8.0

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 3364, noise=0.05),
        250,
        F.mse_loss,
        accumulate=8,
        divide=divide,
    )
    g, ls = ctx.grad_norms, ctx.losses
    before = _median(g[ON_SU - 50 : ON_SU])
    ctx.check(
        "the gradient at the resume step is over 30x the median before", g[ON_SU] > 30 * before
    )
    ctx.check(
        "no other gradient is over 5x that median",
        max(g[ON_SU - 50 : ON_SU] + g[ON_SU + 10 :]) < 5 * before,
    )
    ctx.check(
        "the run recovers: last losses within 2x of before",
        _mean(ls[-20:]) < 2 * _mean(ls[ON_SU - 20 : ON_SU]),
    )
    ctx.check("it trained and stays finite", _fell(ls))


# -- sugar pulling: an identity-initialised ReLU RNN scaled 1.15 ----------------------------------


class RibbonIRNN(nn.Module):
    """A hand-written ReLU recurrent cell over the pull's force trace, head on the last state."""

    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.rec.bias.zero_()
            nn.init.normal_(self.inp.weight, std=1e-3)
            self.inp.bias.zero_()
        self.states = []

    def forward(self, x, keep=False):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if keep:
                h.retain_grad()
                self.states.append(h)
        return self.head(h).squeeze(-1)


def _pulls(gen, batch, seed, length=40):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        y = torch.tanh((x @ w).mean(1)) + 0.5 * torch.tanh(x[:, -5:, 0].mean(1))
        yield x, y


@scenario(
    family="sugar_pulling_ribbon_thickness_relu_rnn",
    optimizer="SGD(momentum)",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU recurrent net (inp, rec, head; the IRNN recipe) reading a pulled-sugar ribbon's 40-step force/temperature/stretch trace and predicting its final thickness, MSE, SGD with momentum 0.9 at lr 1e-3, 150 steps planned, input weights N(0, 1e-3) and zero biases as the recipe says. The recurrent weight is initialised to the identity times the config's rec_gain, typed 1.15 for 0.95: the state and its backward signal grow by about 1.15 per step through time, the gradient reaching the first steps' states is hundreds of times the last step's, the loss climbs and then blows up to NaN.",
)
def h336_sugar_ribbon_irnn_gain(ctx: Context) -> None:
    gen = seeded(33605)
    model = RibbonIRNN(gain=1.15)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    probe = next(_pulls(torch.Generator().manual_seed(5), 64, 3365))
    out = model(probe[0], keep=True)
    F.mse_loss(out, probe[1]).backward()
    first = float(model.states[0].grad.norm())
    last = float(model.states[-1].grad.norm())
    model.zero_grad(set_to_none=True)
    model.states = []
    _loop(ctx, model, opt, _pulls(gen, 32, 3365), 150, F.mse_loss)
    ls = ctx.losses
    ctx.check("the gradient at the first state is over 100x the last state's", first > 100 * last)
    ctx.check(
        "the loss blows up (NaN or over 100x its start)",
        _first_bad(ls) is not None or max(ls) > 100 * ls[0],
    )


# -- rock glacier: one shard surveyed in mm/yr -----------------------------------------------------


ON_RG = 140


@scenario(
    family="rock_glacier_creep_velocity_silu_regressor",
    optimizer="SGD(momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=ON_RG,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a rock glacier's surface creep velocity in m/yr from twelve standardised terrain and temperature readings, MSE, SGD with momentum 0.9 at lr 0.02, gradient clipping at 1.0, 260 steps. The shard read at step 140 came from a survey station that logged velocities in mm/yr: its targets are 1000x, the loss of that batch is hundreds of thousands of times the usual, the clipped step knocks the weights off and the run recovers over the following steps.",
)
def h336_rock_glacier_mm_shard(ctx: Context) -> None:
    gen = seeded(33606)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        return (x, 1000.0 * y) if step == ON_RG else (x, y)

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3366, scale=0.8, shift=1.2),
        260,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    ls = ctx.losses
    base = _median(ls[ON_RG - 20 : ON_RG])
    ctx.check("the loss at the bad shard is over 50x the median before", ls[ON_RG] > 50 * base)
    ctx.check(
        "no other loss after warm-up is over 5x it",
        max(ls[30:ON_RG] + ls[ON_RG + 1 :]) < 5 * max(base, _median(ls[30:60])),
    )
    ctx.check("the run recovers: last losses within 2x of before", _mean(ls[-20:]) < 2 * base)
    ctx.check("it trained and stays finite", _fell(ls))


# -- charreada: the rider-embedding group's lr is typed 3e-8 ---------------------------------------


class LoopRegressor(nn.Module):
    def __init__(self, riders=400, dim=4, d_in=6, hidden=48):
        super().__init__()
        self.rider = nn.Embedding(riders, dim)
        self.fc1 = nn.Linear(dim + d_in, hidden)
        self.act1 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        idx, feats = x[:, 0].long(), x[:, 1:]
        h = self.act1(self.fc1(torch.cat([self.rider(idx), feats], -1)))
        return self.head(h).squeeze(-1)


def _loops(gen, batch, seed, riders=400, d_in=6):
    g = torch.Generator().manual_seed(seed)
    skill = torch.randn(riders, generator=g)
    w = torch.randn(d_in, generator=g)
    while True:
        r = torch.randint(0, riders, (batch,), generator=gen)
        f = torch.randn(batch, d_in, generator=gen)
        y = (
            skill[r]
            + 0.5 * torch.tanh(f @ w / math.sqrt(d_in))
            + 0.05 * torch.randn(batch, generator=gen)
        )
        yield torch.cat([r[:, None].float(), f], 1), y


@scenario(
    family="charreada_rope_loop_rider_embedding_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("rider",),
    diverges=None,
    heldout=True,
    note="A hand-written regressor of a charreada roper's loop time: a rider embedding (rider, 400 riders, 4 dims) joined with six standardised rope and horse readings, a GELU layer and a head, MSE, AdamW in two param groups, 250 steps. The embedding group's lr is typed 3e-8 for 3e-3 (the dense group is at 3e-3): the rider table moves under a thousandth of its norm over the run while the dense layers train, so the rider skill that carries most of the target is never learned and the loss stalls without blowing up.",
)
def h336_charreada_rider_group_lr(ctx: Context) -> None:
    gen = seeded(33607)
    model = LoopRegressor()
    opt = torch.optim.AdamW(
        [
            {"params": model.rider.parameters(), "lr": 3e-8, "weight_decay": 0.0},
            {"params": list(model.fc1.parameters()) + list(model.head.parameters()), "lr": 3e-3},
        ],
        weight_decay=0.01,
    )
    start = _snapshot(model)
    _loop(ctx, model, opt, _loops(gen, 64, 3367), 250, F.mse_loss)
    end = _snapshot(model)

    def moved(name):
        return float((end[name] - start[name]).norm() / start[name].norm())

    ctx.check("the rider table moves under 0.1% of its norm", moved("rider.weight") < 1e-3)
    ctx.check("fc1 moves over 5%", moved("fc1.weight") > 0.05)
    ctx.check(
        "the loss stalls over 0.3 (the rider skill is unlearned)", _mean(ctx.losses[-20:]) > 0.3
    )
    ctx.check("it does not blow up", _finite(ctx.losses) and max(ctx.losses) < 3 * ctx.losses[0])


# -- pulque: a warm-up peak typed 1.5 for 0.15 ------------------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=False)))
        v = [h.detach() for h in hv]
    return lam


WARM_PQ = 60


@scenario(
    family="pulque_fermentation_viscosity_silu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting a pulque vat's viscosity from ten standardised fermentation readings, MSE, plain SGD under a LambdaLR linear warm-up over 60 steps, 150 steps planned. The warm-up's peak lr is typed 1.5 for 0.15: as the warm-up climbs, the lr passes 2/sharpness (top Hessian eigenvalue by power iteration on the training batch) and the loss oscillates and blows up.",
)
def h336_pulque_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(33608)
    model = Trunk(10, 64, act=nn.SiLU)
    peak = 1.5
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARM_PQ))
    probe = next(_readings(torch.Generator().manual_seed(8), 256, 10, 3368))
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step % 5 == 0 and (not ctx.losses or math.isfinite(ctx.losses[-1])):
            sharp[step] = _sharpness(model, F.mse_loss, *probe)

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 3368), 150, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    low = [lrs[s] * sharp[s] / 2 for s in sharp]
    crossed = next((s for s in sorted(sharp) if lrs[s] > 2 / max(sharp[s], 1e-9)), None)
    blown = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * ls[0]), None)
    ctx.check("the run starts below the limit (lr < 2/sharpness)", low[0] < 1.0)
    ctx.check("the lr passes 2/sharpness during the warm-up", crossed is not None)
    ctx.check("the loss blows up (NaN or over 100x its start)", blown is not None)
    ctx.check(
        "it crosses before it blows up",
        crossed is not None and blown is not None and crossed < blown,
    )


# -- steinstossen: the resume step multiplies the loss by 1e4 once (Adam's v poisoned) -------------


ON_ST = 100


@scenario(
    family="steinstossen_stone_throw_distance_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=ON_ST,
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the distance of a Steinstossen stone put from ten standardised run-up and release readings, MSE on the distance in metres, Adam at 1e-3 (betas 0.9, 0.999), 300 steps. The loss is computed in centimetres and meant to be divided by 1e4; the code path taken on the step that resumes from a checkpoint (step 100) multiplies by 1e4 instead of dividing, once: that one gradient is about 1e8x the usual, fills Adam's second moment, and for the following hundreds of steps the updates on ordinary gradients are a small fraction of before and the loss stops falling.",
)
def h336_steinstossen_resume_loss_scale(ctx: Context) -> None:
    gen = seeded(33609)
    model = Trunk(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    prev = {"w": _snapshot(model)}
    steps = []

    def backprop(step, loss):
        return loss * 1e8 if step == ON_ST else loss

    def after(step):
        now = _snapshot(model)
        steps.append(math.sqrt(sum(float((now[n] - prev["w"][n]).pow(2).sum()) for n in now)))
        prev["w"] = now

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 3369),
        300,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    g = ctx.grad_norms
    base_g = _median(g[ON_ST - 40 : ON_ST])
    ctx.check(
        "the resume step's gradient is over 1000x the median before", g[ON_ST] > 1000 * base_g
    )
    ctx.check(
        "later gradients are ordinary (median within 3x)",
        _median(g[ON_ST + 20 : ON_ST + 100]) < 3 * base_g,
    )
    ctx.check(
        "updates 20-100 steps later are under a tenth of before",
        _mean(steps[ON_ST + 20 : ON_ST + 100]) < 0.1 * _mean(steps[ON_ST - 40 : ON_ST]),
    )
    ctx.check("the run stays finite", _finite(ctx.losses))


# -- pandeiro: temperature typed 0.01 for 1.0 saturates the softmax --------------------------------


class TemperedTrunk(Trunk):
    """A ReLU trunk whose logits are divided by the config's temperature."""

    def __init__(self, temperature, *args, **kw):
        super().__init__(*args, **kw)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="pandeiro_stroke_tempered_relu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying six pandeiro strokes (open, slap, thumb, tip, heel, jingle roll) from sixteen spectral features of a contact-mic window, cross-entropy, Adagrad at 0.01, 200 steps. The logits are divided by a temperature typed 0.01 for 1.0: they are a hundred times too large, and as the strokes are learned the float32 softmax of most rows rounds the target class to exactly 1.0 (every other probability to exactly 0), so those rows give no gradient at all.",
)
def h336_pandeiro_temperature_typo(ctx: Context) -> None:
    gen = seeded(33610)
    model = TemperedTrunk(0.01, 16, 64, out=6)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.01)
    coll = []

    def watch(step, out, x, y):
        coll.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 33610, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' target probability is exactly 1.0 at the end", _mean(coll[-20:]) > 0.5
    )
    ctx.check("few were at the first step (before any update)", coll[0] < 0.2)
    ctx.check("the loss stays finite", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


class FinskaGeometry(nn.Module):
    """From the predicted landing point: distance to the pin cluster and the angle off the throw
    line, with an epsilon in every sqrt, division and acos."""

    eps = 1e-6

    def forward(self, point):
        pins = point.new_tensor([3.5, 0.0])
        d = point - pins
        dist = torch.sqrt((d * d).sum(-1) + self.eps)
        norm = torch.sqrt((point * point).sum(-1) + self.eps)
        cos = point[:, 0] / (norm + self.eps)
        angle = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
        return torch.stack([dist, angle], -1)


class FinskaThrow(nn.Module):
    def __init__(self, d_in=6, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.landing = nn.Linear(hidden, 2)
        self.geometry = FinskaGeometry()

    def forward(self, x):
        return self.geometry(self.landing(self.act2(self.fc2(self.act1(self.fc1(x))))))


def _throws(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 2, generator=g)
    geo = FinskaGeometry()
    while True:
        x = torch.randn(batch, 6, generator=gen)
        point = torch.stack(
            [3.5 + 0.8 * torch.tanh(x @ w[:, 0] / 2.4), 0.8 * torch.tanh(x @ w[:, 1] / 2.4)], -1
        )
        yield x, geo(point)


def _finska_loss(out, y, eps=1e-6):
    # relative distance error through a log ratio, plus the angle error; every log guarded
    ratio = torch.log((out[:, 0] + eps) / (y[:, 0] + eps))
    return F.smooth_l1_loss(ratio, torch.zeros_like(ratio)) + F.smooth_l1_loss(out[:, 1], y[:, 1])


@scenario(
    family="finska_throw_landing_geometry_net",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="Control: a hand-written geometric net for finska (Finnish skittles): a SiLU trunk predicts the throwing stick's landing point, and a geometry module computes its distance to the pin cluster and the angle off the throw line, with an epsilon inside every sqrt, every division and a clamp on the acos; Huber on the log distance ratio (eps in numerator and denominator) plus Huber on the angle, NAdam at 3e-3 with a 20-step linear warm-up then cosine decay, clipping at 1.0, 250 steps, all float32. It trains normally.",
)
def h336_finska_careful_eps_control(ctx: Context) -> None:
    gen = seeded(33611)
    model = FinskaThrow()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, 250) / 250))
    )
    finite = []

    def pre_step(step):
        finite.append(all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()))

    _loop(
        ctx,
        model,
        opt,
        _throws(gen, 64, 33611),
        250,
        _finska_loss,
        sched=sched,
        clip=1.0,
        pre_step=pre_step,
    )
    ctx.check("the loss fell by over half", _fell(ctx.losses, ratio=0.5))
    ctx.check("every gradient was finite", all(finite) and len(finite) == 250)


@scenario(
    family="jouhikko_bow_stroke_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a hand-written ReLU Conv1d classifier (conv1, act1, conv2, act2, head) of five jouhikko (bowed lyre) bow strokes from two-channel windows, cross-entropy with label smoothing 0.1, AdamW (weight decay 0.05 on weights, none on biases) under OneCycleLR with max_lr 1e-2, fp16 autocast with a torch.amp.GradScaler, accumulation over 2 micro-batches, clipping at 1.0 after unscaling, 150 steps. It trains normally.",
)
def h336_jouhikko_fp16_control(ctx: Context) -> None:
    gen = seeded(33612)
    model = StrokeNet(classes=5)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=150)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _strokes(gen, 32, 5, 33612, noise=0.3),
        150,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("the loss fell by over 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check(
        "the loss scale stayed finite and positive", all(0 < s < math.inf for s in ctx.scales)
    )


class HoldGRU(nn.Module):
    """A GRU cell stepped by hand over a bout's hold sequence, head on the last state."""

    def __init__(self, d_in=4, hidden=32, classes=4):
        super().__init__()
        self.cell = nn.GRUCell(d_in, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.hidden_size)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return self.head(h)


def _bouts(gen, batch, seed, length=16, classes=4):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, length, 4, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + 1.2 * torch.randn(batch, length, 4, generator=gen), y


@scenario(
    family="kushti_hold_sequence_gru_cell_classifier",
    optimizer="Adamax",
    cause="healthy",
    heldout=True,
    note="Control: a hand-written GRU-cell classifier (cell, head) of a kushti (akhara wrestling) bout's deciding hold from 16 steps of four grip and balance readings, cross-entropy with label smoothing 0.05, Adamax at 4e-3, ReduceLROnPlateau on a held-out batch's loss (patience 10, factor 0.5), clipping at 1.0, 150 steps. It trains normally.",
)
def h336_kushti_gru_plateau_control(ctx: Context) -> None:
    gen = seeded(33613)
    model = HoldGRU()
    opt = torch.optim.Adamax(model.parameters(), lr=4e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=10, factor=0.5)
    val = next(_bouts(torch.Generator().manual_seed(13), 256, 33613))

    def plateau():
        model.eval()
        with torch.no_grad():
            return float(F.cross_entropy(model(val[0]), val[1]))

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.05)

    _loop(
        ctx,
        model,
        opt,
        _bouts(gen, 32, 33613),
        150,
        loss_fn,
        classifier=True,
        sched=sched,
        plateau=plateau,
        clip=1.0,
    )
    ctx.check("the loss fell by over 40%", _fell(ctx.losses, ratio=0.6))
    ctx.check("the held-out loss is under 1.0", plateau() < 1.0)
