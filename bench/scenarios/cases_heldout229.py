"""Held-out set 229 (``h229_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a hot-air-balloon burner ReLU recurrent net whose identity
recurrent init got a 1.06 gain, a bodhran tipper-stroke bidirectional LSTM tagger whose LSTM param
group got `3e-9` for 3e-3, a maple sap-run day classifier dividing its logits by a leftover
distillation temperature, a geyser eruption-interval net whose squared water-column feature
overflows fp16 under autocast once a deeper vent's logger comes in, a cooper's stave knot-count Poisson net whose
rate is kept positive with a ReLU before its log, a curling-stone draw regressor fed one shard of
release speeds in cm/s, a bobsleigh corner g-force regressor whose reweighted loss lost its
normaliser for one step, an aurora-arc brightness regressor whose warm-up peak was typed 10x too
high, a dry-stone wall hearting classifier on raw millimetre readings whose second ReLU layer
dies under NAdam, a fell-running route-choice classifier that feeds raw logits to nll_loss, and three
controls (a glacier calving-front Huber regressor with Adagrad and clipping, a hurdy-gurdy
trompette-buzz classifier under fp16 autocast + GradScaler with AdamW param groups, OneCycleLR and
label smoothing, a morris-dance stick-timing Gaussian-NLL net with SGD momentum, accumulation and
ReduceLROnPlateau).

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
    dead_fraction,
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
    returns what is backpropagated, ``after(step)`` runs after the optimizer step; stops after
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


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    norm = math.sqrt(sum(float((u * u).sum()) for u in v))
    v = [u / norm for u in v]
    eig = 0.0
    for _ in range(iters):
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        norm = math.sqrt(sum(float((h * h).sum()) for h in hv)) or 1e-30
        v = [h / norm for h in hv]
    return eig


# -- hot-air balloon: a ReLU recurrence whose identity init got a 1.06 gain ----------------------


class BurnerRNN(nn.Module):
    def __init__(self, feat=4, hidden=48, gain=1.035):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        b, t, _ = x.shape
        h = x.new_zeros(b, self.rec.in_features)
        drive = self.inp(x)
        self.states = []
        outs = []
        for i in range(t):
            h = F.relu(drive[:, i] + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
            outs.append(self.head(h))
        return torch.cat(outs, -1)


def _flights(gen, batch, length=48, seed=1):
    """Four standardised readings per 5 s of a hot-air balloon flight (burner valve open time,
    envelope temperature, ambient temperature, vertical wind) and the balloon's altitude change
    (standardised) at each frame."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        lift = torch.cumsum(x @ w, 1) / torch.arange(1, length + 1).sqrt()
        yield x, torch.tanh(0.4 * lift)


@scenario(
    family="hot_air_balloon_burner_altitude_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU recurrent net (inp, rec, head) tracking a hot-air balloon's altitude change every 5 s over 48 frames from 4 standardised readings (burner valve time, envelope temperature, ambient temperature, vertical wind), plain SGD at 3e-5, MSE. The recurrent weight should be the IRNN identity init, but the init gain in the config reads 1.035 ('a bit above 1 to remember the burner longer'): each frame multiplies the active hidden units by 1.035, so at step 0 the gradient reaching the first frame is many times the one at the last; the first SGD steps enlarge the recurrent weights further, gradients grow through time over a millionfold and the loss blows up to inf and NaN within a few steps.",
)
def h229_balloon_irnn_identity_gain(ctx: Context) -> None:
    gen = seeded(22901)
    model = BurnerRNN()
    opt = torch.optim.SGD(model.parameters(), lr=3e-5)
    growth = {}

    def after(step):
        if step == 0:
            norms = [float(h.grad.norm()) for h in model.states if h.grad is not None]
            growth["first"] = norms[0] / max(norms[-1], 1e-30) if norms else 0.0

    _train(ctx, model, opt, _flights(gen, 32), 80, F.mse_loss, after=after)
    ls, gn = ctx.losses, ctx.grad_norms
    bad = _first_bad(ls)
    ctx.check(
        "gradient at the first frame over 20x that at the last (step 0)",
        growth.get("first", 0.0) > 20,
    )
    ctx.check("loss goes non-finite", bad is not None)
    ctx.check(
        "gradient norm grew over 1e6x before the loss broke",
        bad is not None and max(gn[:bad]) > 1e6 * gn[0],
    )


# -- bodhran: a bidirectional LSTM tagger whose LSTM param group got 3e-9 for 3e-3 ---------------


class TipperTagger(nn.Module):
    def __init__(self, feat=5, hidden=32, tags=4):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden, tags)

    def forward(self, x):
        out, _ = self.lstm(torch.tanh(self.inp(x)))
        return self.head(out)


def _strokes(gen, batch, length=32, seed=2):
    """Five standardised readings per 20 ms of a bodhran player's wrist and tipper (three
    accelerations, tipper angular rate, skin contact microphone level) and the stroke tag of each
    frame: rest, down stroke, up stroke, triplet roll. A roll is only told apart by the frames
    around it, so both directions matter."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, 5, generator=g)
    while True:
        tags = torch.zeros(batch, length, dtype=torch.long)
        cur = torch.randint(0, 3, (batch,), generator=gen)
        for t in range(length):
            flip = torch.rand(batch, generator=gen) < 0.3
            cur = torch.where(flip, torch.randint(0, 3, (batch,), generator=gen), cur)
            tags[:, t] = cur
        # a roll: an up stroke with down strokes on both sides
        roll = torch.zeros_like(tags, dtype=torch.bool)
        roll[:, 1:-1] = (tags[:, 1:-1] == 2) & (tags[:, :-2] == 1) & (tags[:, 2:] == 1)
        tags = torch.where(roll, 3, tags)
        x = protos[tags.clamp(max=2)] + 0.6 * torch.randn(batch, length, 5, generator=gen)
        yield x, tags


@scenario(
    family="bodhran_tipper_stroke_bilstm_tagger",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("lstm",),
    diverges=None,
    heldout=True,
    note="A bidirectional LSTM tagger (inp, lstm, head) labelling every 20 ms frame of a bodhran player's wrist and tipper readings as rest, down stroke, up stroke or triplet roll (a roll is an up stroke between two down strokes, so it needs both directions), Adam with param groups, cross-entropy. The recipe's YAML gives the recurrent group `lstm_lr: 3e-9` (typed for 3e-3) while inp and head get 3e-3: the LSTM's weights move by about a millionth of their size per step, so the recurrent layer stays at its random init for the whole run; the loss still falls through inp and head on the LSTM's random features, but ends over 1.3x what the same run with the LSTM at 3e-3 reaches. Finite throughout.",
)
def h229_bodhran_bilstm_group_lr_typo(ctx: Context) -> None:
    steps = 200

    def run(c, lstm_lr):
        gen = seeded(22902)
        model = TipperTagger()
        opt = torch.optim.Adam(
            [
                {"params": model.inp.parameters(), "lr": 3e-3},
                {"params": model.lstm.parameters(), "lr": lstm_lr},
                {"params": model.head.parameters(), "lr": 3e-3},
            ]
        )
        start = [p.detach().clone() for p in model.lstm.parameters()]
        head0 = model.head.weight.detach().clone()

        def loss_fn(out, y):
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

        _train(c, model, opt, _strokes(gen, 32), steps, loss_fn, classifier=True)
        lstm_rel = max(
            float((p.detach() - s).norm() / s.norm())
            for p, s in zip(model.lstm.parameters(), start, strict=True)
        )
        head_rel = float((model.head.weight.detach() - head0).norm() / head0.norm())
        return lstm_rel, head_rel

    twin = _Quiet()
    run(twin, 3e-3)  # the same run with the intended rate, for the checks only
    lstm_rel, head_rel = run(ctx, 3e-9)
    ls = ctx.losses
    ctx.check("LSTM weights moved under 1e-4 of their size over the run", lstm_rel < 1e-4)
    ctx.check("head weights moved over 10% of their size", head_rel > 0.1)
    ctx.check(
        "final loss over 1.3x that of the same run with the LSTM at 3e-3",
        _mean(ls[-20:]) > 1.3 * _mean(twin.losses[-20:]),
    )
    ctx.check("finite", _finite(ls))


class _Quiet:
    """A context for a scenario's bug-free twin run: records the loss, attaches nothing."""

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


# -- maple sugaring: logits divided by a leftover distillation temperature ------------------------


class SapDayNet(nn.Module):
    def __init__(self, d_in=8, hidden=64, classes=4, temperature=0.001):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="maple_sap_run_day_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) grading a sugarbush day's sap run (none, light, good, heavy) from 8 standardised readings (overnight low, daytime high, snow depth, sap pressure, ...), Adamax at 3e-4, cross-entropy. The student model was copied from a distillation script and its forward still divides the logits by `temperature: 0.001`, the sharpening temperature the recipe meant for the teacher's soft targets: the logits reach the softmax 1000x too large, logits in the hundreds, so most rows' float32 probabilities are exactly 0 and 1; the rows it gets right carry no gradient, the wrong ones carry losses in the hundreds, and the loss stays above chance level (ln 4) where the same net without the division reaches about 0.4. Finite.",
)
def h229_maple_sap_distillation_temperature(ctx: Context) -> None:
    gen = seeded(22903)
    model = SapDayNet()
    opt = torch.optim.Adamax(model.parameters(), lr=3e-4)
    seen = {"collapsed": [], "logit": []}

    def watch(step, out, x, y):
        seen["collapsed"].append(collapsed_fraction(out.detach(), y))
        seen["logit"].append(float(out.detach().abs().max()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 8, 4, 23, noise=1.0),
        150,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check(
        "over 45% of the rows' softmax exactly 1.0 on the target (steps 50-150)",
        _mean(seen["collapsed"][50:]) > 0.45,
    )
    ctx.check("logits over 100 in magnitude", max(seen["logit"]) > 100)
    ctx.check("loss stays over 2 nats (chance is ln 4 = 1.39)", _mean(ls[-30:]) > 2.0)
    ctx.check("finite", _finite(ls))


# -- geyser: a water-column feature squared in fp16 under autocast --------------------------------


class ColumnFeature(nn.Module):
    """A learnable calibration from the pool pressure (kPa) to the water column (cm), squared and
    rescaled for the Torricelli term: (calib(p))^2 / 1e4."""

    def __init__(self):
        super().__init__()
        self.calib = nn.Linear(1, 1)
        with torch.no_grad():
            self.calib.weight.fill_(10.2)
            self.calib.bias.zero_()
        self.last = None

    def forward(self, p):
        col = self.calib(p)
        sq = col * col
        self.last = sq.detach()
        return sq / 1e4


class GeyserNet(nn.Module):
    def __init__(self, feat=5, hidden=64):
        super().__init__()
        self.column = ColumnFeature()
        self.fc1 = nn.Linear(feat + 1, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        p, rest = x[:, :1], x[:, 1:]
        h = torch.cat([rest, self.column(p).to(rest.dtype)], -1)
        return self.head(self.act2(self.fc2(self.act1(self.fc1(h))))).squeeze(-1)


def _geyser(gen, batch, deep_from=None, seed=4):
    """The pool pressure at the vent in kPa (first column) and 5 standardised readings (tremor,
    pool temperature, discharge, ...), and the time to the next eruption (standardised). From
    step ``deep_from`` on the feed switches to the deeper vent's logger: 20-32 kPa instead of
    5-19 kPa."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(5, generator=g)
    step = 0
    while True:
        deep = deep_from is not None and step >= deep_from
        lo, hi = (20.0, 32.0) if deep else (5.0, 19.0)
        p = lo + (hi - lo) * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 5, generator=gen)
        z = (p[:, 0] - 12.0) / 4.0
        y = torch.tanh(rest @ w / math.sqrt(5)) + 0.3 * torch.tanh(z)
        yield torch.cat([p, rest], 1), y + 0.05 * torch.randn(batch, generator=gen)
        step += 1


@scenario(
    family="geyser_eruption_interval_fp16_gelu_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("column", "column.calib"),
    diverges=150,
    onset=150,
    heldout=True,
    note="A GELU MLP (column.calib, fc1, act1, fc2, act2, head) predicting the time to a geyser's next eruption from the vent pool pressure (kPa) and 5 standardised readings, trained under fp16 autocast with a GradScaler, AdamW at 2e-3, MSE. A Torricelli feature converts the pressure to a water column in cm with a learnable calibration layer (x 10.2) and squares it before dividing by 1e4: under autocast the calibration's output is fp16, and so is the square. With the shallow vent's logger (5-19 kPa, column under 200 cm) the square stays under 65504; at step 150 the feed switches to the deeper vent's logger (20-32 kPa, columns up to 326 cm), the fp16 square overflows to inf, and the loss is NaN at once (the same batch in float32 is finite).",
)
def h229_geyser_fp16_squared_column(ctx: Context) -> None:
    gen = seeded(22904)
    model = GeyserNet()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu")
    seen = {"sq": [], "batch": None}

    def watch(step, out, x, y):
        seen["sq"].append(float(model.column.last.float().max()))
        seen["batch"] = (x, y)

    _train(
        ctx,
        model,
        opt,
        _geyser(gen, 64, deep_from=150),
        220,
        F.mse_loss,
        watch=watch,
        scaler=scaler,
    )
    ls = ctx.losses
    bad = _first_bad(ls)
    with torch.no_grad():
        x, y = seen["batch"]
        fp32 = float(F.mse_loss(model(x), y))
    ctx.check("loss goes NaN at step 150", bad == 150)
    ctx.check("loss fell before the switch", _fell(ls[:150], ratio=0.6))
    ctx.check("the fp16 square stayed under 65504 before", max(seen["sq"][:150]) < 65504)
    ctx.check(
        "the fp16 square is inf at step 150", len(seen["sq"]) > 150 and seen["sq"][150] == math.inf
    )
    ctx.check("the same batch in float32 gives a finite loss", math.isfinite(fp32))


# -- cooper: a Poisson rate kept positive with a ReLU before its log ------------------------------


class KnotCountNet(nn.Module):
    def __init__(self, d_in=8, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(hidden, 1)
        self.rate_act = nn.ReLU()
        with torch.no_grad():
            self.head.bias.fill_(1.5)  # start near the mean count

    def forward(self, x):
        rate = self.rate_act(self.head(self.act2(self.fc2(self.act1(self.fc1(x))))))
        return torch.log(rate).squeeze(-1)


def _staves(gen, batch, seed=5):
    """Eight standardised readings of an oak stave (ring width, ray density, moisture, ...) and
    the count of pin knots a cooper finds in it (Poisson, mean about 1.5, many zeros)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        rate = torch.exp(0.9 * x @ w / math.sqrt(8) - 0.2)
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="cooper_stave_knot_count_relu_rate_poisson_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("rate_act",),
    diverges=57,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head, rate_act) predicting how many pin knots a cooper will find in an oak stave from 8 standardised readings, Poisson NLL on the log-rate (log_input=True), RMSprop at 1e-4. The rate is kept positive with a ReLU (rate_act) and then logged, instead of a softplus or an exp: as the staves with no knots push their rate down, the ReLU output of one stave reaches exactly 0, log(0) = -inf, and the loss (0 * -inf) is NaN at step 57.",
)
def h229_cooper_relu_rate_log_zero(ctx: Context) -> None:
    gen = seeded(22905)
    model = KnotCountNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    seen = {"zeros": []}

    def watch(step, out, x, y):
        seen["zeros"].append(int((out.detach() == -math.inf).sum()))

    def loss_fn(out, y):
        return F.poisson_nll_loss(out, y, log_input=True)

    _train(ctx, model, opt, _staves(gen, 64), 300, loss_fn, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes NaN", bad is not None)
    ctx.check(
        "the rate is exactly 0 (log gives -inf) for some stave at the NaN step",
        bad is not None and seen["zeros"][bad] > 0,
    )
    ctx.check(
        "no rate was 0 before the NaN step",
        bad is not None and sum(seen["zeros"][:bad]) == 0,
    )
    ctx.check("loss finite for over 10 steps first", bad is not None and bad > 10)


# -- curling: one shard of release speeds in cm/s --------------------------------------------------


@scenario(
    family="curling_stone_draw_distance_silu_regressor",
    optimizer="SGD (momentum)",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing how far a curling stone draws from 6 standardised readings (release speed, rotation, sweeping time, pebble age, ice temperature, ...), SGD momentum 0.9 at 0.01, MSE, gradient norm clipped at 5. One shard came from a sheet whose tracker logged the release speed in cm/s instead of m/s and it was standardised with the m/s statistics: the batch at step 120 has the speed column about 100x too large, its loss is hundreds of times the usual and the clipped step throws the weights off; the run recovers within a few dozen steps. Finite.",
)
def h229_curling_speed_shard_in_cm(ctx: Context) -> None:
    gen = seeded(22906)
    model = Stack(6, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    seen = {}

    def alter(step, x, y):
        if step == 120:
            x = x.clone()
            x[:, 0] = x[:, 0] * 100.0 + 300.0  # cm/s standardised as if m/s
            seen["max"] = float(x.abs().max())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 6, 6), 220, F.mse_loss, alter=alter, clip=5.0)
    ls = ctx.losses
    ctx.check("the shard's speed column is over 50 standard deviations", seen.get("max", 0) > 50)
    ctx.check("loss at step 120 over 50x the median before", ls[120] > 50 * _median(ls[100:120]))
    ctx.check(
        "loss back within 2x its level (steps 180-220)",
        _mean(ls[180:]) < 2 * _mean(ls[100:120]),
    )
    ctx.check("loss fell before the shard", _fell(ls[:120], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- bobsleigh: a reweighted loss that lost its normaliser for one step --------------------------


@scenario(
    family="bobsleigh_corner_g_force_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=150,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the peak g-force in a bobsleigh track's corner from 10 standardised readings (entry speed, line, runner temperature, ...), SGD Nesterov at 0.02 with momentum 0.9, MSE with per-sample importance weights normalised by their sum. On the step after the checkpoint resume at step 150 the weights are loaded before the normaliser is recomputed, so that one loss is a sum over 64 samples instead of a weighted mean: the gradient is about 64x the usual for one step, the weights are thrown off and the loss jumps, then the run recovers. Finite.",
)
def h229_bobsleigh_weighted_loss_normaliser(ctx: Context) -> None:
    gen = seeded(22907)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def scale_loss(step, total):
        return total * 64.0 if step == 150 else total

    _train(ctx, model, opt, _readings(gen, 64, 10, 7), 240, F.mse_loss, scale_loss=scale_loss)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 150 over 40x the median before", gn[150] > 40 * _median(gn[130:150])
    )
    ctx.check(
        "loss after the step over 2x its level before",
        max(ls[151:156]) > 2 * _mean(ls[140:150]),
    )
    ctx.check(
        "loss back within 1.5x its level (steps 200-240)",
        _mean(ls[200:]) < 1.5 * _mean(ls[140:150]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:150], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- aurora: a warm-up whose peak rate was typed 10x too high --------------------------------------


@scenario(
    family="aurora_arc_brightness_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing an auroral arc's brightness from 8 standardised readings (solar-wind speed, Bz, density, Kp, local time, ...), plain SGD with a 40-step linear warm-up (LambdaLR), MSE. The warm-up's peak was typed 1.5 for 0.15: while the rate climbs it passes 2 / sharpness of the loss (lr x top Hessian eigenvalue over 2), the loss starts to oscillate and grow, and the run blows up.",
)
def h229_aurora_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(22908)
    model = Stack(8, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=1.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 40))
    batches = _readings(gen, 128, 8, 8)
    probe = next(batches)
    seen = {"edge": []}

    def before(step):
        if step % 5 == 0:
            lam = _sharpness(model, F.mse_loss, probe, iters=15)
            seen["edge"].append((step, opt.param_groups[0]["lr"] * lam))

    _train(ctx, model, opt, batches, 150, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    bad = _first_bad(ls)
    end = bad if bad is not None else len(ls)
    crossed = [s for s, e in seen["edge"] if e > 2.0]
    ctx.check("lr x sharpness passes 2 during the run", bool(crossed))
    ctx.check(
        "loss after the crossing over 10x its minimum before",
        bool(crossed)
        and max(ls[crossed[0] : end] + [math.inf] * (bad is not None))
        > 10 * min(ls[: crossed[0] + 1]),
    )
    ctx.check("loss fell at first", _fell(ls[:10], k=3, ratio=0.9))


# -- dry-stone walling: raw millimetre readings, NAdam at a high rate, ReLUs die ------------------


def _hearting(gen, batch, seed=9):
    """Six readings of a stone picked up by a dry-stone waller, in raw units (length, width,
    height in mm, mass in g, two face angles in degrees), and where it goes: face stone, through
    stone, hearting, cope."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(4, 6, generator=g)
    scale = torch.tensor([300.0, 180.0, 120.0, 9000.0, 40.0, 40.0])
    offset = torch.tensor([250.0, 150.0, 100.0, 8000.0, 60.0, 60.0])
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        z = protos[y] + 0.7 * torch.randn(batch, 6, generator=gen)
        yield (offset + 0.25 * scale * z).clamp(min=1.0), y


@scenario(
    family="dry_stone_wall_hearting_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) sorting a dry-stone waller's stones into face, through, hearting and cope from 6 readings left in raw units (mm, grams, degrees; the standardisation step was skipped when the loader was rewritten), NAdam at 2e-2, cross-entropy. The raw inputs are all positive and in the thousands, so the first updates are enormous (loss near 400 at step 0) and push fc2's pre-activations below zero for every stone: act2 goes from under 40% dead to over 90% dead within a few dozen steps and never comes back, and the loss stalls at chance (ln 4). Finite.",
)
def h229_dry_stone_raw_units_dead_relu(ctx: Context) -> None:
    gen = seeded(22909)
    model = Stack(6, hidden=64, out=4)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-2)
    seen = {"dead": []}

    def watch(step, out, x, y):
        with torch.no_grad():
            seen["dead"].append(dead_fraction(model.features(x)))

    _train(
        ctx,
        model,
        opt,
        _hearting(gen, 128),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls, dead = ctx.losses, seen["dead"]
    ctx.check("under 40% of act2 dead at step 0", dead[0] < 0.4)
    ctx.check("over 90% of act2 dead over the last 50 steps", _mean(dead[-50:]) > 0.9)
    ctx.check("loss stalls above 1.2 (chance ln 4 = 1.39)", _mean(ls[-30:]) > 1.2)
    ctx.check("finite", _finite(ls))


# -- fell running: raw logits fed to nll_loss -----------------------------------------------------


@scenario(
    family="fell_running_route_choice_gelu_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) choosing a fell runner's line between two checkpoints (direct, contour, ridge, valley, scree) from 12 standardised readings (gradient, ground, visibility, ...), RAdam at 3e-3. The model used to end in log_softmax; it was changed to return raw logits for a new calibration step, but the training loop kept nn.NLLLoss: the loss is minus the target's raw logit, which has no lower bound, so the head's logits grow without bound (over 20x their size at step 10) and the loss runs negative into the hundreds. Finite.",
)
def h229_fell_running_nll_on_raw_logits(ctx: Context) -> None:
    gen = seeded(22910)
    model = Stack(12, hidden=64, out=5, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    seen = {"logit": []}

    def watch(step, out, x, y):
        seen["logit"].append(float(out.detach().abs().max()))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 12, 5, 31, noise=0.8),
        200,
        F.nll_loss,
        classifier=True,
        watch=watch,
    )
    ls, lg = ctx.losses, seen["logit"]
    ctx.check("head logits grew over 20x from step 10 to the end", lg[-1] > 20 * lg[10])
    ctx.check("loss below -50 at the end", ls[-1] < -50)
    ctx.check("finite", _finite(ls))


# -- controls -------------------------------------------------------------------------------------


def _calving(gen, batch, seed=11):
    """Nine standardised readings of a tidewater glacier's front (ice velocity, fjord
    temperature, tide, melt-water discharge, ...) and the height of the next calving event
    (standardised), with heavy-tailed (Student-t, 3 dof) observation noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    v = torch.randn(9, generator=g)
    t = torch.distributions.StudentT(3.0)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        y = torch.tanh(x @ w / 3) + 0.5 * torch.sin(x @ v / 3)
        noise = t.sample((batch,))
        yield x, y + 0.1 * noise


@scenario(
    family="glacier_calving_front_height_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing the height of a tidewater glacier's next calving event from 9 standardised readings with heavy-tailed observation noise, Adagrad at 3e-2, Huber loss (delta 1), gradient norm clipped at 1. Trains normally.",
)
def h229_glacier_calving_adagrad_clip_control(ctx: Context) -> None:
    gen = seeded(22911)
    model = Stack(9, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=3e-2)
    _train(ctx, model, opt, _calving(gen, 64), 200, F.huber_loss, clip=1.0)
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.6))
    ctx.check("finite", _finite(ls))


class BuzzNet(nn.Module):
    def __init__(self, d_in=16, hidden=96, classes=6):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.norm(self.fc1(x))))))


@scenario(
    family="hurdy_gurdy_trompette_buzz_fp16_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a GELU MLP with a LayerNorm (fc1, norm, act1, fc2, act2, head) telling which of 6 crank-rhythm buzz patterns a hurdy-gurdy's trompette plays from 16 standardised spectral readings, fp16 autocast with a GradScaler, AdamW with two param groups (weight decay 0.05 on matrices, none on biases and norms), OneCycleLR peaking at 3e-3, cross-entropy with label smoothing 0.1. Trains normally.",
)
def h229_hurdy_gurdy_fp16_onecycle_control(ctx: Context) -> None:
    gen = seeded(22912)
    model = BuzzNet()
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    rest = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}],
        lr=3e-3,
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu")

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, 37, noise=0.8),
        steps,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.6))
    ctx.check("finite", _finite(ls))
    ctx.check("the scaler's scale stayed above 1", min(ctx.scales) > 1.0)


class StickTimingNet(nn.Module):
    def __init__(self, d_in=7, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), F.softplus(self.var_head(h)) + 1e-4], -1)


def _sticks(gen, batch, seed=13):
    """Seven standardised readings of a morris side's dance (tempo, figure, dancer position,
    ...) and how early or late the stick clash lands (standardised), noisier on faster tunes."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(7, generator=g)
    while True:
        x = torch.randn(batch, 7, generator=gen)
        sd = 0.1 + 0.3 * torch.sigmoid(2 * x[:, 0])
        y = torch.tanh(x @ w / math.sqrt(7)) + sd * torch.randn(batch, generator=gen)
        yield x, y


def _gaussian_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


@scenario(
    family="morris_dance_stick_clash_gaussian_nll_net",
    optimizer="SGD (momentum)",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a tanh MLP with mean and variance heads (fc1, act1, fc2, act2, mean_head, var_head, softplus variance) predicting how early or late a morris side's stick clash lands from 7 standardised readings, Gaussian NLL, SGD momentum 0.9 at 1e-2, gradient accumulation over 2 micro-batches, ReduceLROnPlateau (factor 0.5, patience 10). Trains normally.",
)
def h229_morris_stick_gaussian_nll_control(ctx: Context) -> None:
    gen = seeded(22913)
    model = StickTimingNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    _train(ctx, model, opt, _sticks(gen, 32), 200, _gaussian_nll, accumulate=2, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell by over 0.3 nats", _mean(ls[-20:]) < _mean(ls[:20]) - 0.3)
    ctx.check("finite", _finite(ls))
