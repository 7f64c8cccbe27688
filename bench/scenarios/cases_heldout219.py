"""Held-out set 219 (``h219_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a bioluminescent-bay photon-count Poisson net whose exp
rate overflows fp16 under autocast, a kubb baton-throw BatchNorm classifier left in eval mode
for one step after a validation pass, a bansuri breath-contour LSTM whose padded-batch path sums
its per-step loss once under AdamW, a frost-quake ReLU recurrent net whose recurrent weights got
the tanh gain, a desert-varnish exponential-NLL net taking the log of a ReLU rate, a stalagmite
drip-record conv1d net fed one shard in raw logger units, a molkky pin-score classifier whose
manual loss-scale hook was lost for one step, a corrugator flute-bond regressor whose head param
group got 1e-7 for 1e-3, a chinlone footwork classifier dividing its logits by a contrastive
temperature, a sailing-stone trail regressor whose hand-written weight decay has its sign
flipped, and three controls (a fairy-circle spacing regressor on heavy-tailed readings with
Huber, clipping and warm-up + cosine, a gateball gate-pass classifier with AdamW, OneCycleLR,
accumulation and label smoothing, a light-pillar brightness Gaussian-NLL net under fp16 autocast
with a GradScaler).

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
    post_backward=None,
    alter=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``scale_loss(step, loss)``
    returns what is backpropagated, ``post_backward(step)`` runs on the gradients before they
    are measured, ``after(step)`` after the optimizer step; stops after logging a NaN loss."""
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
        if post_backward is not None:
            post_backward(step)
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


# -- bioluminescent bay: a Poisson rate exp'd in fp16 under autocast -------------------------------


class PhotonNet(nn.Module):
    def __init__(self, d_in=8, hidden=48, mean_count=20000.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.fill_(math.log(mean_count))

    def forward(self, x):
        log_rate = self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)
        # under autocast log_rate is fp16, and so is its exp
        return torch.stack([log_rate, torch.exp(log_rate)], -1)


def _photons(gen, batch, seed=1):
    """Eight standardised readings of a bioluminescent bay (water temperature, dinoflagellate
    density, wind, moon phase, ...) and a photon count per second from a shore photometer."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        log_mu = math.log(20000.0) + 0.9 * torch.tanh(x @ w / math.sqrt(8)) * 1.6
        yield x, torch.poisson(torch.exp(log_mu), generator=gen)


def _poisson_nll(out, y):
    return (out[:, 1] - y * out[:, 0]).mean() / 1000.0


@scenario(
    family="bioluminescent_bay_photon_count_fp16_poisson_net",
    optimizer="Adam",
    cause="amp_overflow",
    where=("head",),
    diverges=31,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) whose head gives a log rate, exponentiated in the forward, predicting a shore photometer's photon count per second over a bioluminescent bay (about 20000, up to about 80000) from 8 standardised readings (water temperature, dinoflagellate density, wind, ...), Poisson NLL, Adam at 2e-3, fp16 autocast with a default torch.amp.GradScaler. The counts were left in raw units and the exp runs in fp16 under autocast: as the head learns the bright nights its rate passes 65504 and overflows to inf at step 31; from then on nearly every batch holds such a night, the gradients are inf, the scaler skips the step and halves its scale every time (down over 1e6-fold); the loss is inf and training has stopped.",
)
def h219_biolum_bay_fp16_exp_rate(ctx: Context) -> None:
    gen = seeded(21901)
    model = PhotonNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    top = {}

    def watch(step, out, x, y):
        top[step] = float(out[:, 1].detach().float().max())

    _train(ctx, model, opt, _photons(gen, 64), 150, _poisson_nll, watch=watch, scaler=scaler)
    ls, gn = ctx.losses, ctx.grad_norms
    bad = _first_bad(ls)
    ctx.check("loss first non-finite at the declared step", bad == 31)
    ctx.check("fp16 rate finite and below 65504 before it", max(top[s] for s in range(31)) < 65504)
    ctx.check("fp16 rate overflowed to inf at that step", bad is not None and top[bad] == math.inf)
    ctx.check(
        "over 80% of gradients non-finite after it",
        sum(not math.isfinite(v) for v in gn[31:]) > 0.8 * len(gn[31:]),
    )
    ctx.check("loss scale fell over 1e6-fold after it", ctx.scales[-1] < 1e-6 * ctx.scales[30])
    ctx.check(
        "loss finite and falling before it", _finite(ls[:31]) and _mean(ls[20:31]) < _mean(ls[:5])
    )


# -- kubb: a BatchNorm net left in eval mode for one step after validation -------------------------


class ThrowNet(nn.Module):
    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.bn1 = nn.BatchNorm1d(hidden, momentum=0.03)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden, momentum=0.03)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act1(self.bn1(self.fc1(x)))
        return self.head(self.act2(self.bn2(self.fc2(h)))).squeeze(-1)


def _throws(gen, batch, seed=2):
    """Nine raw readings of a kubb baton throw (distance in m, release angle in degrees, spin in
    rev/s, ...) and whether it toppled the kubb."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor([6.0, 40.0, 2.5, 1.2, 15.0, 0.8, 30.0, 3.0, 9.0])
    scale = torch.tensor([1.5, 10.0, 0.8, 0.3, 5.0, 0.2, 8.0, 1.0, 2.0])
    w = torch.randn(9, generator=g)
    while True:
        z = torch.randn(batch, 9, generator=gen)
        y = ((z @ w) / 3 + 0.3 * torch.randn(batch, generator=gen) > 0).float()
        yield mean + scale * z, y


@scenario(
    family="kubb_baton_throw_bn_classifier",
    optimizer="SGD (Nesterov)",
    cause="loss_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="A ReLU MLP with BatchNorm (fc1, bn1, act1, fc2, bn2, act2, head) deciding whether a kubb baton throw topples the kubb from 9 raw readings (distance in m, release angle in degrees, spin, ...), SGD Nesterov at 0.05, BCE with logits, BatchNorm momentum 0.03 (a Keras 0.97 ported). The validation hook at step 120 calls model.eval() and train() comes back only on the next step: that one training step runs through the lagging running statistics and the loss jumps over 1.8x; the next step is in train mode again and the loss comes back to its level; finite.",
)
def h219_kubb_eval_mode_left_on(ctx: Context) -> None:
    gen = seeded(21902)
    model = ThrowNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)

    def before(step):
        if step == 120:
            model.eval()  # the validation hook; train() comes back only on the next step
        elif step == 121:
            model.train()

    _train(
        ctx, model, opt, _throws(gen, 64), 220, F.binary_cross_entropy_with_logits, before=before
    )
    ls = ctx.losses
    ctx.check(
        "loss at step 120 over 1.8x the mean of steps 110-119", ls[120] > 1.8 * _mean(ls[110:120])
    )
    ctx.check(
        "loss back within 1.4x its pre-spike level (steps 130-160)",
        _mean(ls[130:160]) < 1.4 * _mean(ls[100:120]),
    )
    ctx.check("loss fell before the spike", _fell(ls[:120], ratio=0.8))
    ctx.check("finite", _finite(ls))


# -- bansuri: an LSTM whose padded-batch path sums the per-step loss once --------------------------


class BreathLSTM(nn.Module):
    def __init__(self, feat=4, hidden=32):
        super().__init__()
        self.lstm = nn.LSTM(feat, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h, _ = self.lstm(x)
        return self.head(h).squeeze(-1)


def _breaths(gen, batch, length=48, seed=3):
    """Four standardised breath readings per frame of a bansuri phrase (blowing pressure, lip
    aperture, finger coverage, ...) and the pitch deviation in cents/100 per frame."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        drive = torch.cumsum(x @ w, 1) / torch.arange(1, length + 1).sqrt()
        yield x, torch.tanh(0.5 * drive) + 0.05 * torch.randn(batch, length, generator=gen)


@scenario(
    family="bansuri_breath_contour_lstm",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=80,
    heldout=True,
    note="An LSTM (lstm, head) predicting a bansuri phrase's pitch deviation frame by frame from 4 standardised breath readings per frame (blowing pressure, lip aperture, finger coverage, ...), 128 phrases of 48 frames a batch, AdamW at 1e-3, MSE. At step 80 a batch goes through the padded-batch path, which computes (err ** 2 * mask).sum() and lost its division by mask.sum(): one gradient about 6000x too large fills Adam's second moment. The loss jumps, and afterwards every update is over 4x smaller than before the burst and the loss stays over twice its pre-onset level to the end; finite.",
)
def h219_bansuri_lstm_summed_pad_loss(ctx: Context) -> None:
    gen = seeded(21903)
    model = BreathLSTM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    params = list(model.parameters())
    moves, prev = {}, {}

    def before(step):
        prev["w"] = _snapshot(params)

    def after(step):
        moves[step] = _mean(
            [float((p.detach() - w).abs().mean()) for p, w in zip(params, prev["w"], strict=True)]
        )

    def scale_loss(step, total):
        # the padded-batch path: (err ** 2 * mask).sum() with the division by mask.sum() lost
        return total * 128 * 48 if step == 80 else total

    _train(
        ctx,
        model,
        opt,
        _breaths(gen, 128),
        240,
        F.mse_loss,
        before=before,
        after=after,
        scale_loss=scale_loss,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    before_move = _mean([moves[s] for s in range(60, 80)])
    after_move = _mean([moves[s] for s in range(110, 240)])
    ctx.check("gradient at step 80 over 1000x the median before", gn[80] > 1000 * _median(gn[:80]))
    ctx.check("updates after the onset under 25% of those before", after_move < 0.25 * before_move)
    ctx.check("loss fell before the onset", _fell(ls[:80], ratio=0.3))
    ctx.check(
        "loss stays over twice its pre-onset level (steps 150-240)",
        _mean(ls[150:]) > 2 * _mean(ls[70:80]),
    )
    ctx.check("finite", _finite(ls))


# -- frost quake: a ReLU recurrence initialised orthogonal with the tanh gain ---------------------


class QuakeRNN(nn.Module):
    def __init__(self, feat=3, hidden=64, gain=5.0 / 3.0):
        super().__init__()
        self.inp = nn.Linear(feat, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _tremors(gen, batch, length=24, seed=4):
    """Three standardised geophone readings per tick around a frozen lake and the frost quake's
    energy (standardised), set by the first tremor."""
    while True:
        x = torch.randn(batch, length, 3, generator=gen)
        yield x, torch.tanh(x[:, :5, 0].sum(1) / 2) + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="frost_quake_energy_relu_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU recurrent net (inp, rec, act, head) reading 24 ticks of 3 geophone readings around a frozen lake and predicting the frost quake's energy from the last state, plain SGD at 4e-3, MSE. The recurrent weight was initialised orthogonal with gain calculate_gain('tanh') = 5/3 on a ReLU recurrence: states and gradients grow through time (the gradient at the first state is about 45x that at the last), the first gradient is in the hundreds and the first step sends the loss from about 7 to about 1e4; it is inf at step 2 and NaN after.",
)
def h219_frost_quake_tanh_gain_recurrence(ctx: Context) -> None:
    gen = seeded(21904)
    model = QuakeRNN()
    opt = torch.optim.SGD(model.parameters(), lr=4e-3)
    ratio = {}

    probe = next(_tremors(torch.Generator().manual_seed(54), 128))
    loss = F.mse_loss(model(probe[0]), probe[1])
    loss.backward()
    first, last = model.states[0].grad.norm(), model.states[-1].grad.norm()
    ratio["init"] = float(first / last)
    model.zero_grad()
    _train(ctx, model, opt, _tremors(gen, 32), 150, F.mse_loss)
    ls = ctx.losses
    ctx.check("gradient at the first state over 20x that at the last at init", ratio["init"] > 20)
    ctx.check(
        "loss past 100x its first value",
        max(v if math.isfinite(v) else 1e30 for v in ls) > 100 * ls[0],
    )
    ctx.check("loss non-finite within 10 steps", _first_bad(ls) is not None and _first_bad(ls) < 10)


# -- desert varnish: an exponential NLL taking the log of a ReLU rate ------------------------------


class VarnishNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.rate_head = nn.Linear(hidden, 1)
        self.rate_act = nn.ReLU()  # meant to be nn.Softplus()
        with torch.no_grad():
            self.rate_head.weight.mul_(0.1)
            self.rate_head.bias.fill_(1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return self.rate_act(self.rate_head(h)).squeeze(-1)


def _exp_nll(rate, y):
    return (rate * y - torch.log(rate)).mean()


def _varnish(gen, batch, seed=5):
    """Eight standardised site readings (dust flux, dew days, manganese in dust, ...) and the
    time in kyr between two manganese laminae of rock varnish, exponential around a
    site-dependent mean."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        mean = torch.exp(1.2 * x @ w / math.sqrt(8))
        yield x, mean * torch.empty(batch).exponential_(generator=gen)


@scenario(
    family="desert_varnish_lamina_interval_exponential_nll_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("rate_act", "rate_head"),
    diverges=2,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, rate_head, rate_act) modelling the time between two manganese laminae of desert varnish as exponential with a predicted rate, NLL rate * y - log(rate), RMSprop at 3e-3. The rate head was meant to end in a softplus; it ends in a ReLU (rate_act). At step 2 the ReLU gives a rate of exactly 0 for one sample: log 0 is -inf and the loss is inf at step 2.",
)
def h219_desert_varnish_log_relu_rate(ctx: Context) -> None:
    gen = seeded(21905)
    model = VarnishNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    low = {}

    def watch(step, out, x, y):
        low[step] = float(out.detach().min())

    _train(ctx, model, opt, _varnish(gen, 64), 250, _exp_nll, watch=watch)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss first non-finite at step 2", bad == 2)
    ctx.check("a ReLU rate exactly 0 at that step", bad is not None and low[bad] == 0.0)
    ctx.check(
        "all rates positive before it", bad is not None and min(low[s] for s in range(bad)) > 0
    )


# -- stalagmite: one shard of drip records in raw logger counts ------------------------------------


class DripConv(nn.Module):
    def __init__(self, width=12):
        super().__init__()
        self.conv1 = nn.Conv1d(1, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, 1)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x[:, None]))))
        return self.head(h.mean(-1)).squeeze(-1)


def _drips(gen, batch, length=48):
    """A cave drip-rate record (drips per minute, standardised) and the stalagmite's growth rate
    (standardised) it feeds."""
    t = torch.arange(length) / length
    while True:
        amp = torch.randn(batch, 1, generator=gen)
        trend = torch.randn(batch, 1, generator=gen)
        x = (
            amp * torch.sin(6.28 * 3 * t)
            + trend * t
            + 0.2 * torch.randn(batch, length, generator=gen)
        )
        yield x, 0.8 * trend.squeeze(1) + 0.3 * amp.squeeze(1).abs()


@scenario(
    family="stalagmite_drip_record_conv1d",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=130,
    heldout=True,
    note="A 1-d CNN (conv1, conv2, head) reading a cave drip-rate record (48 samples, drips per minute, standardised) and predicting the growth rate of the stalagmite it feeds, NAdam at 3e-3, Huber loss. At step 130 one shard comes from a logger whose export was left in raw counts (x1000 plus an offset of 2000): one batch with the loss over 100x and the gradient thousands of times the usual; the run recovers; finite.",
)
def h219_stalagmite_raw_logger_shard(ctx: Context) -> None:
    gen = seeded(21906)
    model = DripConv()
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)

    def alter(step, x, y):
        if step == 130:
            return x * 1000.0 + 2000.0, y  # the shard in raw logger counts, not drips/min
        return x, y

    _train(ctx, model, opt, _drips(gen, 64), 230, F.huber_loss, alter=alter)
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at step 130 over 1000x the median before", gn[130] > 1000 * _median(gn[:130])
    )
    ctx.check("loss at step 130 over 100x the mean before", ls[130] > 100 * _mean(ls[110:130]))
    ctx.check("loss back under 0.2 from step 140", max(ls[140:]) < 0.2)
    ctx.check("finite", _finite(ls))


# -- molkky: a manual loss-scale hook lost for one step -------------------------------------------


def _throws_molkky(gen, batch):
    yield from _kinds(gen, batch, 10, 6, seed=7)


@scenario(
    family="molkky_pin_score_gelu_classifier",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=110,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) classifying a molkky throw's pin score class (6 classes) from 10 readings, SGD momentum 0.9 at 0.02, cross-entropy. The loop multiplies the loss by 128 (a leftover of an fp16 experiment) and divides the gradients by 128 in a hook; at step 110 the model is re-wrapped after validation and the hook is lost for that step: one gradient 128x too large (over 30x the usual); the loss jumps over 5x and comes back; finite.",
)
def h219_molkky_lost_unscale_hook(ctx: Context) -> None:
    gen = seeded(21907)
    model = Stack(10, hidden=64, out=6, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def scale_loss(step, total):
        return total * 128.0

    def post_backward(step):
        if step != 110:  # the re-wrap after validation dropped the unscale hook for one step
            for p in model.parameters():
                p.grad.div_(128.0)

    _train(
        ctx,
        model,
        opt,
        _throws_molkky(gen, 64),
        220,
        F.cross_entropy,
        classifier=True,
        scale_loss=scale_loss,
        post_backward=post_backward,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("gradient at step 110 over 30x the median before", gn[110] > 30 * _median(gn[90:110]))
    ctx.check("loss jumped over 5x after it", max(ls[111:116]) > 5 * _mean(ls[100:110]))
    ctx.check("loss recovered by the end", _mean(ls[-20:]) < 2 * _mean(ls[100:110]))
    ctx.check("finite", _finite(ls))


# -- corrugator: the head's param group at 1e-7 ----------------------------------------------------


@scenario(
    family="corrugator_flute_bond_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the bond strength of a corrugator's glued flutes (standardised) from 10 standardised readings (glue gap, steam pressure, web speed, ...), Adagrad, MSE, with two param groups: the body at 5e-2 and the head at `5e-8`, typed for 5e-2. The head barely moves (under 1e-4 of its norm over the run) while fc1 moves over 5%; the body learns around the frozen head; finite.",
)
def h219_corrugator_head_group_typo(ctx: Context) -> None:
    gen = seeded(21908)
    model = Stack(10, hidden=64, act=nn.Tanh)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adagrad(
        [{"params": body, "lr": 5e-2}, {"params": model.head.parameters(), "lr": 5e-8}]
    )
    head0 = _snapshot(model.head.parameters())
    fc0 = _snapshot(model.fc1.parameters())
    _train(ctx, model, opt, _readings(gen, 64, 10, seed=8), 200, F.mse_loss)
    ls = ctx.losses
    head_rel = float((model.head.weight.detach() - head0[0]).norm() / head0[0].norm())
    fc_rel = float((model.fc1.weight.detach() - fc0[0]).norm() / fc0[0].norm())
    ctx.check("head weights moved under 1e-4 of their norm", head_rel < 1e-4)
    ctx.check("fc1 weights moved over 5% of their norm", fc_rel > 0.05)
    ctx.check("finite", _finite(ls))


# -- chinlone: logits divided by a contrastive temperature -----------------------------------------


class FootworkNet(Stack):
    tau = 0.005  # copied from the contrastive pre-training config

    def forward(self, x):
        return self.head(self.features(x)) / self.tau


@scenario(
    family="chinlone_footwork_touch_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) classifying a chinlone player's footwork touch (8 kinds) from 12 readings, Adamax at 2e-3, cross-entropy. The forward divides the logits by tau = 0.005, a temperature copied from the contrastive pre-training config into the plain classifier: the softmax saturates and over 30% of rows give their target a probability of exactly 1.0 in float32 by the end (none at init); finite.",
)
def h219_chinlone_contrastive_temperature(ctx: Context) -> None:
    gen = seeded(21909)
    model = FootworkNet(12, hidden=64, out=8, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    probe = next(_kinds(torch.Generator().manual_seed(59), 512, 12, 8, seed=9))
    with torch.no_grad():
        c0 = collapsed_fraction(model(probe[0]), probe[1])
    _train(ctx, model, opt, _kinds(gen, 64, 12, 8, seed=9), 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        c1 = collapsed_fraction(model(probe[0]), probe[1])
    ctx.check("under 5% of rows saturated at init", c0 < 0.05)
    ctx.check("over 30% of rows give the target probability exactly 1.0 at the end", c1 > 0.3)
    ctx.check("finite", _finite(ctx.losses))


# -- sailing stones: a hand-written weight decay with its sign flipped ----------------------------


@scenario(
    family="sailing_stone_trail_length_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting the length of a Racetrack Playa sailing stone's trail (standardised) from 9 standardised readings (ice thickness, wind, mud softness, ...), plain SGD at 0.05, MSE, with a hand-written decoupled weight decay after each step written p.add_(p, alpha=lr * wd) for alpha=-lr * wd (wd 0.3): the weights grow by 1.5% a step, the loss first falls, then climbs slowly to over 3x its early minimum as the tanh units saturate; finite, no blow-up.",
)
def h219_sailing_stone_decay_sign(ctx: Context) -> None:
    gen = seeded(21910)
    model = Stack(9, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    wd = 0.3
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=0.05 * wd)  # meant p.add_(p, alpha=-lr * wd)
        norms.append(float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm()))

    _train(ctx, model, opt, _readings(gen, 64, 9, seed=10), 300, F.mse_loss, after=after)
    ls = ctx.losses
    low = min(ls[:100])
    ctx.check("weight norm grew over 3x", norms[-1] > 3 * norms[0])
    ctx.check("loss climbed over 3x its early minimum (last 30 steps)", _mean(ls[-30:]) > 3 * low)
    ctx.check("loss fell first", low < 0.6 * _mean(ls[:5]))
    ctx.check("finite", _finite(ls))


# -- controls ----------------------------------------------------------------------------------------


def _rings(gen, batch, seed=11):
    """Ten heavy-tailed readings (Student t, 2 degrees of freedom: termite-mound counts,
    rainfall anomalies, ...) and the spacing of Namib fairy circles (standardised)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    t = torch.distributions.StudentT(2.0)
    while True:
        x = t.sample((batch, 10))
        y = torch.tanh((x.clamp(-3, 3) @ w) / 4) + 0.1 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="fairy_circle_spacing_huber_regressor",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting the spacing of Namib fairy circles from ten "
    "heavy-tailed readings (Student t with 2 degrees of freedom, occasional values past 20), "
    "Adam at 3e-3, Huber loss, gradient clipping at 1.0, linear warm-up over 20 steps then "
    "cosine decay. An ordinary run: the loss falls, finite.",
)
def h219_fairy_circle_heavy_tail_control(ctx: Context) -> None:
    seeded(21911)
    gen = torch.Generator().manual_seed(21911)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    big = []

    def watch(step, out, x, y):
        big.append(float(x.abs().max()))

    _train(
        ctx, model, opt, _rings(gen, 64), steps, F.huber_loss, watch=watch, clip=1.0, sched=sched
    )
    ctx.check("inputs heavy-tailed (some reading past 20)", max(big) > 20)
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.6))


@scenario(
    family="gateball_gate_pass_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) classifying which of 5 gates a gateball stroke passes from "
    "12 readings, AdamW with weight decay on weights only (two param groups), OneCycleLR "
    "peaking at 5e-3, gradient accumulation over 4 micro-batches, label smoothing 0.1. An "
    "ordinary run: the loss falls, finite.",
)
def h219_gateball_onecycle_control(ctx: Context) -> None:
    gen = seeded(21912)
    model = Stack(12, hidden=64, out=5, act=nn.GELU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=5e-3
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=150)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 32, 12, 5, seed=12),
        150,
        loss_fn,
        classifier=True,
        sched=sched,
        accumulate=4,
    )
    ctx.check("loss fell and is finite", _fell(ctx.losses, ratio=0.6))


class PillarNet(nn.Module):
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


@scenario(
    family="light_pillar_brightness_fp16_silu_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP with a mean and a softplus variance output predicting the brightness of a "
    "light pillar over a town (standardised) from 8 standardised readings (ice-crystal "
    "density, street-light flux, air temperature, ...), RAdam at 3e-3, Gaussian NLL, fp16 "
    "autocast with a default torch.amp.GradScaler. An ordinary run: the loss falls, finite, "
    "the scale stays sane.",
)
def h219_light_pillar_fp16_control(ctx: Context) -> None:
    gen = seeded(21913)
    model = PillarNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx, model, opt, _readings(gen, 64, 8, seed=13, noise=0.1), 200, _gauss_nll, scaler=scaler
    )
    ls = ctx.losses
    ctx.check("loss fell and is finite", _finite(ls) and _mean(ls[-10:]) < _mean(ls[:10]) - 0.3)
    ctx.check("loss scale above 1 at the end", ctx.scales[-1] > 1)
