"""Held-out set 226 (``h226_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a fierljeppen pole-swing ReLU recurrent net whose identity
recurrent init got a 1.04 scale, an upwelling sea-temperature GRU encoder-decoder whose
epoch-boundary step sums its loss once under Adam, a gilli-danda strike-distance regressor whose
loss weight is read in percent for one step, a scagliola polish-gloss regressor whose warm-up
peaks at 10x the intended rate, a tejo mecha-hit classifier taking the log of 1 - sigmoid with no
clamp, a mudpot bubble-energy net whose squared-norm feature overflows fp16 under autocast, a
khene reed-chord cosine classifier with its scale typed 640 for 64, a clay-pipe bowl-firing
regressor whose first layer's param group got 5e-7 for 5e-2, an asperitas cloud-base regressor
fed one ceilometer shard in feet, a sipa kick-height ReLU net whose units die under NAdam at a
high rate, and three controls (a nyatiti pluck conv1d classifier with AdamW, accumulation over 4
and warm-up + cosine, an ice-circle rotation Gaussian-NLL net under fp16 autocast with a
GradScaler and RAdam, a pietra-dura inlay-gap Huber regressor with SGD Nesterov, clipping and
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


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


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


# -- fierljeppen: a ReLU recurrence whose identity init got a 1.04 scale --------------------------


class PoleRNN(nn.Module):
    def __init__(self, feat=3, hidden=48, scale=1.04):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(scale * torch.eye(hidden))
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


def _vaults(gen, batch, length=40, seed=1):
    """Three standardised readings per 50 ms of a fierljeppen vault (pole bend, climb rate,
    lean) and the pole's angle from vertical (standardised) at each frame."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        lean = torch.cumsum(x @ w, 1) / torch.arange(1, length + 1).sqrt()
        yield x, torch.tanh(0.4 * lean)


@scenario(
    family="fierljeppen_pole_swing_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU recurrent net (inp, rec, head) tracking a fierljeppen vaulter's pole angle frame by frame over 40 frames from 3 standardised readings per frame, plain SGD at 3e-4, MSE. The recurrent weight was meant to be the IRNN identity init, but the config's init scale reads 1.04 (set above 1 'to keep memory longer'): every positive hidden unit is multiplied by 1.04 each frame, so at step 0 the gradient reaching the first frame is over 20x the one at the last; the first SGD steps enlarge the recurrent weights further, the gradient norm grows over 1e6-fold and the loss blows up to inf and NaN at step 5.",
)
def h226_fierljeppen_irnn_scaled_identity(ctx: Context) -> None:
    gen = seeded(22601)
    model = PoleRNN()
    opt = torch.optim.SGD(model.parameters(), lr=3e-4)
    growth = {}

    def after(step):
        if step == 0:
            norms = [float(h.grad.norm()) for h in model.states if h.grad is not None]
            growth["first"] = norms[0] / max(norms[-1], 1e-30) if norms else 0.0

    _train(ctx, model, opt, _vaults(gen, 32), 80, F.mse_loss, after=after)
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


# -- upwelling: a GRU encoder-decoder whose epoch-boundary step sums its loss once --------------


class UpwellingSeq2Seq(nn.Module):
    def __init__(self, feat=3, hidden=32, horizon=12):
        super().__init__()
        self.horizon = horizon
        self.encoder = nn.GRU(feat, hidden, batch_first=True)
        self.decoder = nn.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        past, prev = x
        _, h = self.encoder(past)
        out, _ = self.decoder(prev.unsqueeze(-1), h)
        return self.head(out).squeeze(-1)


def _upwelling(gen, batch, past=24, horizon=12, seed=2):
    """Three standardised coastal readings per 6 hours (alongshore wind stress, swell, air
    temperature) over 6 days, and the sea-surface temperature anomaly over the next 3 days;
    the decoder is teacher-forced with the previous anomaly."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(3, generator=g)
    while True:
        x = torch.randn(batch, past + horizon, 3, generator=gen)
        drive = x @ w / math.sqrt(3)
        sst = torch.zeros(batch, past + horizon + 1)
        for t in range(past + horizon):
            sst[:, t + 1] = 0.85 * sst[:, t] - 0.3 * drive[:, t]
        target = sst[:, past + 1 :] + 0.03 * torch.randn(batch, horizon, generator=gen)
        prev = sst[:, past : past + horizon]
        yield (x[:, :past], prev), target


@scenario(
    family="upwelling_sea_temperature_gru_seq2seq",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=60,
    heldout=True,
    note="A GRU encoder-decoder (encoder, decoder, head) forecasting the sea-surface temperature anomaly of a coastal upwelling over the next 3 days (12 steps, teacher-forced) from 6 days of 3 standardised readings (alongshore wind stress, swell, air temperature), 128 windows a batch, Adam at 1e-3, MSE. The epoch-boundary step 60 runs through the validation loss helper, which uses reduction='sum': one gradient about 1500x too large fills Adam's second moment (beta2 0.999). Afterwards every update is several times smaller than before and the loss, which was falling, crawls: at the end it is over 1.5x what the same run without the bug reaches; finite.",
)
def h226_upwelling_gru_seq2seq_summed_loss(ctx: Context) -> None:
    steps, onset = 260, 60

    def run(c, buggy):
        gen = seeded(22602)
        model = UpwellingSeq2Seq()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        params = list(model.parameters())
        moves, prev = {}, {}

        def before(step):
            prev["w"] = _snapshot(params)

        def after(step):
            moves[step] = _mean(
                [
                    float((p.detach() - w).abs().mean())
                    for p, w in zip(params, prev["w"], strict=True)
                ]
            )

        def scale_loss(step, total):
            # the validation helper: F.mse_loss(..., reduction="sum") over 128 x 12 values
            return total * 128 * 12 if buggy and step == onset else total

        _train(
            c,
            model,
            opt,
            _upwelling(gen, 128),
            steps,
            F.mse_loss,
            before=before,
            after=after,
            scale_loss=scale_loss,
        )
        return moves

    twin = _Quiet()
    run(twin, buggy=False)  # the same run without the bug, for the checks only
    moves = run(ctx, buggy=True)
    ls, gn = ctx.losses, ctx.grad_norms
    before_move = _mean([moves[s] for s in range(onset - 20, onset)])
    after_move = _mean([moves[s] for s in range(onset + 30, steps)])
    ctx.check(
        "gradient at the onset over 500x the median before",
        gn[onset] > 500 * _median(gn[:onset]),
    )
    ctx.check("updates after the onset under 25% of those before", after_move < 0.25 * before_move)
    ctx.check("loss fell before the onset", _fell(ls[:onset], ratio=0.5))
    ctx.check(
        "loss at the end over 1.5x that of the same run without the bug",
        _mean(ls[-30:]) > 1.5 * _mean(twin.losses[-30:]),
    )
    ctx.check("finite", _finite(ls))


# -- gilli-danda: a loss weight read in percent for one step --------------------------------------


def _strikes(gen, batch, seed=3):
    """Ten standardised readings of a gilli-danda strike (danda speed, tip height, gilli spin,
    ...) and the carry distance of the gilli, standardised."""
    return _readings(gen, batch, 10, seed, noise=0.05)


@scenario(
    family="gilli_danda_strike_distance_regressor",
    optimizer="SGD (Nesterov)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing a gilli-danda strike's carry distance from 10 standardised readings (danda speed, tip height, gilli spin, ...), SGD Nesterov at 0.02 with momentum 0.9, MSE. The loss weight comes from a curriculum table in percent and is divided by 100 everywhere except in the branch taken when the epoch counter rolls over: at step 110 the loss is weighted 40 instead of 1, and that one gradient is about 40x the usual. The step throws the weights off and the loss jumps, then the run recovers within a few dozen steps; finite.",
)
def h226_gilli_danda_percent_loss_weight(ctx: Context) -> None:
    gen = seeded(22603)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def scale_loss(step, total):
        weight_percent = 100.0
        return total * (40.0 if step == 110 else weight_percent / 100.0)

    _train(ctx, model, opt, _strikes(gen, 64), 220, F.mse_loss, scale_loss=scale_loss)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 110 over 25x the median before", gn[110] > 25 * _median(gn[90:110]))
    ctx.check(
        "loss after the kick over 2x its level before",
        max(ls[111:116]) > 2 * _mean(ls[100:110]),
    )
    ctx.check(
        "loss back within 1.5x its level (steps 170-220)",
        _mean(ls[170:]) < 1.5 * _mean(ls[100:110]),
    )
    ctx.check("loss fell before the onset", _fell(ls[:110], ratio=0.5))
    ctx.check("finite", _finite(ls))


# -- scagliola: a warm-up whose peak rate is 10x the intended one -----------------------------------


def _sharpness(model, loss_fn, batch, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on ``batch`` by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
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


def _polish(gen, batch, seed=4):
    """Twelve standardised readings of a scagliola panel polish (selenite fraction, glue
    strength, stone grit, passes, ...) and its gloss, standardised."""
    return _readings(gen, batch, 12, seed, noise=0.05)


@scenario(
    family="scagliola_polish_gloss_regressor",
    optimizer="SGD (momentum)",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the gloss of a polished scagliola panel from 12 standardised readings (selenite fraction, glue strength, stone grit, ...), SGD with momentum 0.9, MSE, a linear warm-up over 150 steps (LambdaLR). The warm-up's peak was typed 0.8 for 0.08: the loss falls at first, lr x sharpness rides near the edge, and as the rate keeps climbing it passes the stability limit 2(1 + momentum)/sharpness (measured by power iteration on a fixed batch) and the loss, which was falling, starts to oscillate and blows up.",
)
def h226_scagliola_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(22604)
    model = Stack(12, hidden=64, act=nn.Tanh)
    peak, warm, beta = 0.8, 150, 0.9
    opt = torch.optim.SGD(model.parameters(), lr=peak, momentum=beta)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    probe = next(_polish(torch.Generator().manual_seed(4040), 256))
    record = {}

    def before(step):
        if step % 5 == 0 and not record.get("stop"):
            lr = opt.param_groups[0]["lr"]
            record[step] = lr * _sharpness(model, F.mse_loss, probe)

    def after(step):
        if not math.isfinite(ctx.losses[-1]) or ctx.losses[-1] > 1e6:
            record["stop"] = True

    _train(
        ctx, model, opt, _polish(gen, 64), 220, F.mse_loss, before=before, after=after, sched=sched
    )
    ls = ctx.losses
    limit = 2 * (1 + beta)
    low = min(ls)
    broke = next((i for i, v in enumerate(ls) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("loss blows up (over 100x its minimum)", broke is not None)
    probed = sorted(k for k in record if isinstance(k, int))
    ctx.check("lr x sharpness below the limit early (step 20)", 20 in record and record[20] < limit)
    ctx.check(
        "lr x sharpness past the limit before the blow-up",
        broke is not None and any(record[k] > limit for k in probed if k <= broke),
    )
    ctx.check(
        "loss fell before the rate passed the limit",
        _finite(ls[:40]) and _mean(ls[30:40]) < 0.7 * _mean(ls[:5]),
    )


# -- tejo: log(1 - sigmoid) with no clamp -----------------------------------------------------------


class LogProb(nn.Module):
    """Hand-written log-probabilities of a binary outcome."""

    def forward(self, z):
        p = torch.sigmoid(z)
        return torch.stack([torch.log(1 - p), torch.log(p)], -1)


class TejoNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        self.logprob = LogProb()
        self.last_logit = torch.zeros(1)

    def forward(self, x):
        z = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        self.last_logit = z.detach()
        return self.logprob(z)


def _tejo(gen, batch, seed=5):
    """Eight standardised readings of a tejo throw (distance, arc height, disc weight, clay
    moisture, ...) and whether it burst a mecha (1) or not (0); cleanly separable."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        yield x, (x @ w > 0).long()


def _binary_nll(out, y):
    # y * log p + (1 - y) * log(1 - p), written out by hand
    return -(y * out[:, 1] + (1 - y) * out[:, 0]).mean()


@scenario(
    family="tejo_mecha_burst_logprob_classifier",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("logprob",),
    diverges=36,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head, logprob) deciding whether a tejo throw bursts a mecha from 8 standardised readings, RMSprop at 3e-3, a hand-written binary NLL y*log(p) + (1-y)*log(1-p) with p = sigmoid(logit) computed in the logprob module, with no clamp (and not logsigmoid). The task is cleanly separable, the logits grow, and once a confident logit passes about 17, 1 - sigmoid rounds to exactly 0 in float32: log(0) = -inf, times the zero label gives NaN, and the loss is NaN.",
)
def h226_tejo_log_one_minus_sigmoid(ctx: Context) -> None:
    gen = seeded(22605)
    model = TejoNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    top = {}

    def watch(step, out, x, y):
        top[step] = float(model.last_logit.abs().max())

    _train(ctx, model, opt, _tejo(gen, 64), 300, _binary_nll, watch=watch, classifier=True)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes NaN", bad is not None and math.isnan(ls[bad]))
    ctx.check(
        "a logit past 16.6 (sigmoid rounds to 1) at that step", bad is not None and top[bad] > 16.6
    )
    ctx.check(
        "loss finite and falling before it",
        bad is not None and bad > 20 and _fell(ls[:bad], ratio=0.3),
    )


# -- mudpot: a squared-norm energy feature summed in fp16 under autocast ---------------------------


class Energy(nn.Module):
    """The bubble's kinetic-energy feature: the squared norm of the hidden readings."""

    def forward(self, h):
        return (h * h).sum(-1, keepdim=True)


class MudpotNet(nn.Module):
    def __init__(self, d_in=6, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.energy = Energy()
        self.fc2 = nn.Linear(hidden + 1, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        self.last_energy = 0.0

    def forward(self, x):
        h = self.act1(self.fc1(x))
        e = self.energy(h)
        self.last_energy = float(e.detach().float().max())
        h = self.act2(self.fc2(torch.cat([h, e / 1000.0], -1)))
        return self.head(h).squeeze(-1)


def _mudpot(gen, batch, seed=6):
    """Six readings of a mudpot (gas flux, mud viscosity, temperature, ...) in raw logger units
    of tens, in time order over a season in which the pot heats up and its readings climb, and
    the burst height of the next bubble in cm (standardised)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, generator=g)
    mean = torch.tensor([24.0, 8.0, 17.0, 12.0, 3.0, 40.0])
    scale = torch.tensor([6.0, 2.0, 1.6, 4.0, 1.0, 10.0])
    t = 0
    while True:
        z = torch.randn(batch, 6, generator=gen)
        y = torch.tanh(z @ w / math.sqrt(6)) + 0.05 * torch.randn(batch, generator=gen)
        yield (1.0 + t / 120) * (mean + scale * z), y
        t += 1


@scenario(
    family="mudpot_bubble_energy_fp16_net",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("energy",),
    diverges=137,
    heldout=True,
    note="A GELU net (fc1, act1, energy, fc2, act2, head) predicting the burst height of a mudpot's next bubble from 6 readings left in raw logger units (tens), AdamW at 1e-3, MSE, fp16 autocast with a default torch.amp.GradScaler. The readings come in time order over a season in which the pot heats up and they climb slowly. The energy module sums the squared hidden readings, which under autocast is done in fp16, with no cast to float32: as the readings climb the sum passes 65504 and overflows to inf at step 137, fc2 turns it into NaN and the loss is NaN.",
)
def h226_mudpot_fp16_energy_overflow(ctx: Context) -> None:
    gen = seeded(22606)
    model = MudpotNet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cpu")
    energy = {}

    def watch(step, out, x, y):
        energy[step] = model.last_energy

    _train(ctx, model, opt, _mudpot(gen, 64), 200, F.mse_loss, watch=watch, scaler=scaler)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss goes non-finite", bad is not None)
    ctx.check(
        "fp16 energy overflowed to inf at that step", bad is not None and energy[bad] == math.inf
    )
    ctx.check(
        "fp16 energy finite before it",
        bad is not None and all(math.isfinite(energy[s]) for s in range(bad)),
    )


# -- khene: a cosine classifier whose scale was typed 640 for 64 ----------------------------------


class CosineHead(nn.Module):
    def __init__(self, d, classes, scale):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(classes, d) * 0.1)
        self.scale = scale

    def forward(self, h):
        return self.scale * F.normalize(h, dim=-1) @ F.normalize(self.weight, dim=-1).T


class KheneNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=7, scale=640.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = CosineHead(hidden, classes, scale)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


@scenario(
    family="khene_reed_chord_cosine_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP with a cosine-similarity head (fc1, act1, fc2, act2, head) naming which of 7 chords a khene (Lao mouth organ) plays from 16 standardised reed spectral readings, Adamax at 2e-3, cross-entropy. The head's scale s, meant to be 64 (the CosFace default), was typed 640: the logits span hundreds, the float32 softmax rounds most rows to exactly 1.0 for one class and 0 for the rest, and the rows it gets wrong carry losses of tens to hundreds; finite, no blow-up.",
)
def h226_khene_cosine_scale_typo(ctx: Context) -> None:
    gen = seeded(22607)
    model = KheneNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    frac, span = {}, {}

    def watch(step, out, x, y):
        p = torch.softmax(out.detach().float(), -1)
        span[step] = float(out.detach().max(-1).values.sub(out.detach().min(-1).values).mean())
        frac[step] = (
            float((p.max(-1).values == 1.0).float().mean()),
            collapsed_fraction(out.detach(), y),
        )

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 7, 7, noise=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ls = ctx.losses
    late = [frac[s] for s in range(150, 200)]
    ctx.check(
        "over 60% of rows with a softmax of exactly 1.0 (steps 150-200)",
        _mean([a for a, _ in late]) > 0.6,
    )
    ctx.check("over 30% of rows give the target exactly 1.0", _mean([b for _, b in late]) > 0.3)
    ctx.check(
        "logits span over 100 on average (steps 150-200)",
        _mean([span[s] for s in range(150, 200)]) > 100,
    )
    ctx.check("finite", _finite(ls))


# -- clay pipe: the first layer's param group got 5e-7 for 5e-2 -----------------------------------


@scenario(
    family="clay_pipe_bowl_firing_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the crack risk of a clay tobacco-pipe bowl after firing from 10 standardised readings (clay moisture, kiln ramp, wall thickness, ...), Adagrad with param groups: fc1 was meant to get 5e-2 like the rest but its group reads 5e-7. fc1's updates are about a millionth of its weights per step while the other layers move at about 1e-3 of theirs; the loss still falls through the later layers and nothing blows up.",
)
def h226_clay_pipe_group_lr_typo(ctx: Context) -> None:
    gen = seeded(22608)
    model = Stack(10, hidden=64)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 5e-7},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 5e-2},
        ]
    )
    ratios = {"fc1": [], "fc2": []}
    prev = {}

    def before(step):
        prev["fc1"] = model.fc1.weight.detach().clone()
        prev["fc2"] = model.fc2.weight.detach().clone()

    def after(step):
        for name in ratios:
            w = getattr(model, name).weight.detach()
            ratios[name].append(float((w - prev[name]).norm() / w.norm()))

    _train(ctx, model, opt, _readings(gen, 64, 10, 8), 200, F.mse_loss, before=before, after=after)
    ls = ctx.losses
    ctx.check("fc1 update/weight ratio under 1e-5 (median)", _median(ratios["fc1"]) < 1e-5)
    ctx.check("fc2 update/weight ratio over 1e-3 (median)", _median(ratios["fc2"]) > 1e-3)
    ctx.check("loss fell", _fell(ls, ratio=0.8))
    ctx.check("finite", _finite(ls))


# -- asperitas: one ceilometer shard logged in feet -------------------------------------------------


@scenario(
    family="asperitas_cloud_base_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing the cloud-base height under asperitas undulations from 12 standardised readings (humidity profile, lapse rate, wind shear, ...), ASGD at 0.02 with gradient clipping at 1.0, MSE, targets in km standardised. One shard, at step 120, comes from a ceilometer that logs in feet and was not converted: its targets are thousands, the loss on that batch is over 1e5x the usual; the clipping bounds the update and the run goes on at its previous level; finite.",
)
def h226_asperitas_ceilometer_feet_shard(ctx: Context) -> None:
    gen = seeded(22609)
    model = Stack(12, hidden=48, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    seen = {}

    def alter(step, x, y):
        if step == 120:
            y = (y * 0.8 + 2.0) * 3280.84  # km to feet, and never standardised
        seen[step] = float(y.abs().mean())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 12, 9), 240, F.mse_loss, alter=alter, clip=1.0)
    ls = ctx.losses
    ctx.check(
        "targets at step 120 over 1000x the usual", seen[120] > 1000 * _median(list(seen.values()))
    )
    ctx.check("loss at step 120 over 1e4x the median before", ls[120] > 1e4 * _median(ls[:120]))
    ctx.check(
        "loss back within 1.5x its level (steps 160-240)",
        _mean(ls[160:]) < 1.5 * _mean(ls[100:120]),
    )
    ctx.check("loss fell before", _fell(ls[:120], ratio=0.6))
    ctx.check("finite", _finite(ls))


# -- sipa: ReLU units that die under NAdam at a high rate ------------------------------------------


def _sipa(gen, batch, seed=10):
    """Eight readings of a sipa (rattan-ball) kick from a foot IMU, all positive magnitudes
    (impact g, swing speed, ...), and the ball's apex height, standardised."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    v = torch.randn(8, generator=g)
    while True:
        x = torch.rand(batch, 8, generator=gen) * 30
        z = (x - 15) / 8.7
        y = torch.tanh(z @ w / math.sqrt(8)) + 0.5 * torch.sin(z @ v / math.sqrt(8))
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="sipa_kick_apex_relu_mlp",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the apex height of a sipa (rattan ball) kick from 8 positive IMU magnitudes left unstandardised (0 to 30), NAdam at 0.1 (a rate from a tabular recipe, no warm-up), MSE. The first large steps push most of fc2's units negative on every input: over 80% of act2's units die (never positive on a batch) and stay dead, and the loss stops improving at about the target's variance; finite.",
)
def h226_sipa_relu_units_die(ctx: Context) -> None:
    gen = seeded(22610)
    model = Stack(8, hidden=64)
    opt = torch.optim.NAdam(model.parameters(), lr=0.1)
    dead = {}

    def watch(step, out, x, y):
        with torch.no_grad():
            dead[step] = dead_fraction(model.act2(model.fc2(model.act1(model.fc1(x)))))

    _train(ctx, model, opt, _sipa(gen, 128), 200, F.mse_loss, watch=watch)
    ls = ctx.losses
    ctx.check("under 15% of act2's units dead at step 0", dead[0] < 0.15)
    ctx.check(
        "over 80% of act2's units dead at the end",
        _mean([dead[s] for s in range(180, 200)]) > 0.8,
    )
    ctx.check(
        "loss stopped improving (steps 150-200 vs 20-40)",
        _mean(ls[150:]) > 0.7 * _mean(ls[20:40]),
    )
    ctx.check("finite", _finite(ls))


# -- controls ---------------------------------------------------------------------------------------


class PluckConv(nn.Module):
    def __init__(self, classes=6, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2, stride=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x.unsqueeze(1)))))
        return self.head(h.mean(-1))


def _plucks(gen, batch, classes=6, length=64):
    """A nyatiti (Luo lyre) pluck recorded at low rate: a damped tone whose frequency names the
    string, with random phase, decay and noise."""
    t = torch.arange(length).float()
    freqs = torch.linspace(0.05, 0.3, classes)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        decay = 0.02 + 0.03 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * freqs[y][:, None] * t + phase) * torch.exp(-decay * t)
        yield x + 0.3 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="nyatiti_pluck_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A conv1d net (conv1, act1, conv2, act2, head) naming which of 6 nyatiti strings was plucked from a noisy damped tone, AdamW at 1e-2 with weight decay 0.05, gradient accumulation over 4 micro-batches of 32, a 20-step linear warm-up then cosine decay (SequentialLR), cross-entropy with label smoothing 0.1. An ordinary run: the loss falls and accuracy rises.",
)
def h226_nyatiti_accum_cosine_control(ctx: Context) -> None:
    gen = seeded(22611)
    model = PluckConv()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    steps = 150
    sched = torch.optim.lr_scheduler.SequentialLR(
        opt,
        [
            torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.05, total_iters=20),
            torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps - 20),
        ],
        milestones=[20],
    )
    acc = {}

    def watch(step, out, x, y):
        acc[step] = float((out.argmax(-1) == y).float().mean())

    _train(
        ctx,
        model,
        opt,
        _plucks(gen, 32),
        steps,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        watch=watch,
        sched=sched,
        accumulate=4,
    )
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, ratio=0.6))
    ctx.check("accuracy over 80% at the end", _mean([acc[s] for s in range(140, 150)]) > 0.8)
    ctx.check("finite", _finite(ls))


class RotationNLL(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


def _ice_circles(gen, batch, seed=12):
    """Eight standardised readings of a river ice circle (current speed, disc diameter, air
    temperature, ...) and its rotation period, standardised, with noise that grows with the
    current."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        mu = torch.tanh(x @ w / math.sqrt(8))
        sigma = 0.05 + 0.2 * torch.sigmoid(x[:, 0])
        yield x, mu + sigma * torch.randn(batch, generator=gen)


@scenario(
    family="ice_circle_rotation_gaussian_nll_fp16_net",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) giving a mean and a softplus variance for a river ice circle's rotation period from 8 standardised readings, Gaussian NLL, RAdam at 2e-3, fp16 autocast with a default torch.amp.GradScaler (the loss in float32). An ordinary run: the NLL falls, nothing overflows.",
)
def h226_ice_circle_fp16_control(ctx: Context) -> None:
    gen = seeded(22612)
    model = RotationNLL()
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    _train(ctx, model, opt, _ice_circles(gen, 64), 200, _gauss_nll, scaler=scaler)
    ls = ctx.losses
    ctx.check("loss fell", _finite(ls) and _mean(ls[-20:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite", _finite(ls))
    ctx.check("loss scale never fell below 1024", min(ctx.scales) >= 1024)


def _inlays(gen, batch, seed=13):
    """Ten standardised readings of a pietra-dura inlay (stone hardness, saw kerf, template
    fit, ...) and the gap at the joint, standardised, with heavy-tailed measurement noise."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    v = torch.randn(10, generator=g)
    student = torch.distributions.StudentT(2.5)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        y = torch.tanh(x @ w / math.sqrt(10)) + 0.5 * torch.sin(x @ v / math.sqrt(10))
        yield x, y + 0.1 * student.sample((batch,))


@scenario(
    family="pietra_dura_inlay_gap_huber_regressor",
    optimizer="SGD (Nesterov)",
    cause="healthy",
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the joint gap of a pietra-dura inlay from 10 standardised readings with heavy-tailed (Student-t) measurement noise, Huber loss, SGD Nesterov at 0.05 with momentum 0.9, gradient clipping at 1.0, ReduceLROnPlateau (patience 15, factor 0.5) on the training loss. An ordinary run: the loss falls, the noisy batches give only small bumps.",
)
def h226_pietra_dura_plateau_control(ctx: Context) -> None:
    gen = seeded(22613)
    model = Stack(10, hidden=64, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, patience=15, factor=0.5)
    _train(ctx, model, opt, _inlays(gen, 64), 240, F.huber_loss, clip=1.0, sched=sched)
    ls = ctx.losses
    ctx.check("loss fell", _fell(ls, k=20, ratio=0.5))
    ctx.check("finite", _finite(ls))
