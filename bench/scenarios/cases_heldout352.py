"""Held-out set 352 (``h352_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a Northumbrian smallpipes tune-mode transformer with ALiBi
attention whose muP q/k lr multiplier is inverted (attention logits grow), a sugar-boiling stage
regressor whose resumed step multiplies the loss by an old static fp16 loss scale (Adam's second
moment poisoned), a Windsor chair seat-saddling regressor whose target normaliser's running-mean
update has its sign flipped (a slow climb), a tuk-tuk fare-zone classifier whose temperature is
read as a percentage (softmax saturates), a piano-tuning unison beat-count net whose Poisson NLL
has no floor on its ReLU rate (log 0, NaN), a circumhorizontal-arc sighting BCE net fed one shard
in arcminutes (one corrupted batch), a willow-basket rim-tension Elman RNN whose recurrent gain
is applied twice (gradients grow through time), a coopering stave-bevel ReLU regressor whose lr
is typed 0.8 for 0.08 (ReLUs die), a taffy-pulling gloss-stage linear-attention classifier whose
attention lr multiplier is an integer division (frozen), a hay-swath drying regressor whose loss
is summed with an lr tuned for the mean (past 2/sharpness), and three controls (a concertina
phrase decoder with QK-norm, tied head and AdamW; a skipping-stone ripple Conv1d classifier with
SGD Nesterov, OneCycleLR and label smoothing; a virga evaporation-depth Huber regressor under fp16
autocast with a GradScaler, ASGD and ReduceLROnPlateau).

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


def _rel_change(before: torch.Tensor, after: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``, ``inspect(step)`` sees the
    gradients before clipping. Stops after a non-finite loss
    (once ``ctx.step`` has seen it); returns the number of steps run."""
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


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.4 * x @ w / math.sqrt(d_in)) + 0.6 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


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


# -- northumbrian smallpipes: the muP q/k multiplier is width_mult for 1 / width_mult ------------


class AlibiAttention(nn.Module):
    """Hand-written multi-head self-attention with ALiBi position biases (no position
    embeddings): scores q.k/sqrt(d) minus slope_h * |i - j|. Keeps the last peak |q.k/sqrt(d)|."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / heads) for i in range(heads)])
        self.register_buffer("slopes", slopes)
        self.peak = 0.0

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = (m(x).reshape(b, t, h, d // h).transpose(1, 2) for m in (self.q, self.k, self.v))
        logits = q @ k.transpose(-1, -2) / math.sqrt(d // h)
        self.peak = float(logits.detach().abs().max())
        pos = torch.arange(t)
        dist = (pos[None, :] - pos[:, None]).abs().float()
        scores = logits - self.slopes[:, None, None] * dist
        mixed = scores.softmax(-1) @ v
        return self.o(mixed.transpose(1, 2).reshape(b, t, d))


class TuneModeNamer(nn.Module):
    """Reads a 24-note chanter phrase (a mode token first) and names the tune's mode."""

    def __init__(self, vocab=17, dim=32, heads=4, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.attn = AlibiAttention(dim, heads)
        self.norm1 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        h = self.norm1(h + self.attn(h))
        h = self.norm2(h + self.ff(h))
        return self.head(h[:, 0])


def _phrases(gen, batch, seed, length=24, classes=4, notes=16):
    """A summary token (id 16) then notes drawn from one of four modes' pitch distributions."""
    g = torch.Generator().manual_seed(seed)
    probs = torch.softmax(1.5 * torch.randn(classes, notes, generator=g), -1)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = torch.multinomial(probs[y], length, replacement=True, generator=gen)
        yield torch.cat([torch.full((batch, 1), notes), x], 1), y


@scenario(
    family="northumbrian_smallpipes_tune_mode_alibi_transformer",
    optimizer="AdamW",
    cause="attention_logit_growth",
    where=("attn",),
    diverges=None,
    heldout=True,
    note="A hand-written one-block transformer (embed, attn: four-head self-attention with ALiBi position biases, scores q.k/sqrt(d) minus slope_h * |i - j| and no position embeddings, norm1, ff, norm2, head) naming a Northumbrian smallpipes tune's mode (four) from a 24-note chanter phrase read through a summary token, AdamW with two parameter groups, cross-entropy, 200 steps. The muP-style lr multiplier for the q/k group was written base_lr * width_mult where base_lr / width_mult was meant (width_mult 32): attn.q and attn.k train at 3.2e-2 (no weight decay) while the rest of the model trains at 1e-3, so the attention scores sharpen far past what the task needs: the peak |q.k/sqrt(d)| logit grows from about 1.5 to over a hundred and stays over 10x its start for the second half of the run, while the loss stays finite.",
)
def h352_smallpipes_mup_qk_multiplier_inverted(ctx: Context) -> None:
    gen = seeded(35201)
    model = TuneModeNamer()
    width_mult = 32.0
    qk = list(model.attn.q.parameters()) + list(model.attn.k.parameters())
    ids = {id(p) for p in qk}
    rest = [p for p in model.parameters() if id(p) not in ids]
    base = 1e-3
    opt = torch.optim.AdamW(
        [
            {"params": qk, "lr": base * width_mult, "weight_decay": 0.0},  # meant: / width_mult
            {"params": rest, "lr": base, "weight_decay": 0.01},
        ]
    )
    peaks = []

    def watch(step, out, x, y):
        peaks.append(model.attn.peak)

    _loop(
        ctx, model, opt, _phrases(gen, 32, 3521), 200, F.cross_entropy, classifier=True, watch=watch
    )
    ctx.check(
        "the peak q.k/sqrt(d) logit over the last 20 steps is over 20x that of the first 5",
        _mean(peaks[-20:]) > 20.0 * _mean(peaks[:5]),
    )
    ctx.check(
        "the peak logit stays over 10x that of the first 5 through the last 100 steps",
        min(peaks[-100:]) > 10.0 * _mean(peaks[:5]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sugar boiling: the resumed step multiplies the loss by the stored static loss scale ----------

SUGAR_ONSET = 100


@scenario(
    family="sugar_boiling_stage_thermometer_resume_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=SUGAR_ONSET,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head) predicting the temperature stage a confectioner's sugar syrup reaches (standardised) from twelve readings of the thermometer, pan and heat, Adam at 1e-3 (betas 0.9, 0.999), MSE, 260 steps. The run resumes at step 100 from a checkpoint of an old fp16 run whose config stored a static loss scale of 32768; the resume path multiplies that step's loss by it and never unscales (there is no scaler in this fp32 run): one ordinary batch's gradient is over 1000x, Adam's second moment takes 0.1% of its square and keeps it for thousands of steps, and once the first moment has forgotten the burst the median per-weight update stays under a tenth of its size before, while the gradients are not smaller; the loss stays finite, rises after the burst and is left far above where it was.",
)
def h352_sugar_boiling_static_loss_scale_on_resume(ctx: Context) -> None:
    gen = seeded(35202)
    model = Trunk(12, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    static_scale = 32768.0
    updates = []
    prev = {}

    def before(step):
        prev["w"] = _flat(model)

    def after(step):
        updates.append(float((_flat(model) - prev["w"]).abs().median()))

    def backprop(step, loss):
        return loss * static_scale if step == SUGAR_ONSET else loss  # never unscaled

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 3522),
        260,
        F.mse_loss,
        before=before,
        after=after,
        backprop=backprop,
    )
    g = ctx.grad_norms
    ctx.check(
        "the gradient at step 100 is over 1000x the median of steps 80-99",
        g[SUGAR_ONSET] > 1000.0 * _median(g[80:SUGAR_ONSET]),
    )
    ctx.check(
        "the median per-weight update over steps 180-259 is under 1/10 of steps 60-99",
        _median(updates[180:260]) < 0.1 * _median(updates[60:SUGAR_ONSET]),
    )
    ctx.check(
        "the gradients over steps 180-259 are not small (over 0.3x of steps 60-99)",
        _median(g[180:260]) > 0.3 * _median(g[60:SUGAR_ONSET]),
    )
    ctx.check(
        "the loss at step 100 is ordinary (the batch is clean)",
        ctx.losses[SUGAR_ONSET] < 3.0 * _median(ctx.losses[80:SUGAR_ONSET]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- windsor chair: the L2 penalty is subtracted from the loss ------------------------------------


@scenario(
    family="windsor_chair_seat_saddling_depth_running_norm_sign_tanh_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting how deep a Windsor chair seat is saddled (depth in cm, standardised by a running normaliser) from ten readings of the adze and scorp passes and the elm blank, Adamax at 5e-3, MSE, gradient accumulation over 2 micro-batches of 32, 260 steps. The normaliser's running-mean update has its sign flipped (mu -= momentum * (batch_mean - mu) for +=, momentum 0.006), so its mean drifts away from the data's mean geometrically (about 0.6% a step) and the standardised targets drift with it: the net tracks the drift at first, then falls behind, and the loss climbs slowly and steadily in the second half of the run to many times its minimum, with no single jump and no NaN.",
)
def h352_windsor_seat_target_norm_sign(ctx: Context) -> None:
    gen = seeded(35203)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.Adamax(model.parameters(), lr=5e-3)
    norm = {"mu": 0.0, "momentum": 0.0065}
    raw_mean, raw_sd = 1.5, 1.0  # depth in cm: the gouge takes 1.5 cm +- 1 cm

    def depths():
        for x, y in _readings(gen, 32, 10, 3523):
            raw = raw_mean + raw_sd * y
            m = float(raw.mean())
            norm["mu"] -= norm["momentum"] * (m - norm["mu"])  # meant: +=
            yield x, (raw - norm["mu"]) / raw_sd

    _loop(ctx, model, opt, depths(), 260, F.mse_loss, accumulate=2)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19, 20)]
    low = min(means)
    ctx.check("finite throughout", _finite(ls))
    ctx.check(
        "the last 20 steps' loss is over 5x the lowest 20-step mean", _mean(ls[-20:]) > 5.0 * low
    )
    ctx.check("the lowest 20-step mean comes in the first half", means.index(low) < len(means) // 2)
    ctx.check(
        "no step's loss is over 3x the mean of the 10 before it (a slow climb, no spike)",
        all(ls[i] < 3.0 * _mean(ls[i - 10 : i]) for i in range(10, len(ls))),
    )
    ctx.check(
        "the normaliser's mean drifted over 3 sd away from the data's mean",
        abs(norm["mu"] - raw_mean) > 3.0 * raw_sd,
    )


# -- tuk-tuk: the temperature is read from the config as a percentage -----------------------------


class FareZoneNamer(Trunk):
    """A ReLU trunk naming a tuk-tuk ride's fare zone (six) from twelve ride readings; logits
    are divided by the configured temperature."""

    def __init__(self, temperature):
        super().__init__(12, 64, out=6)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="tuk_tuk_fare_zone_percent_temperature_relu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) naming a tuk-tuk ride's fare zone (six) from twelve standardised ride readings, NAdam at 2e-3, cross-entropy, 200 steps. The logits are divided by the configured temperature: the config gives it as a plain 1 (meaning 1.0), and the loader, written for a newer schema in which temperatures are given in percent, divides it by 100, so the temperature is 0.01: the logits reach the softmax 100x too large, and as the net learns, over half the rows' float32 target probability rounds to exactly 1.0 (the wrong rows are confidently wrong); the loss stays finite.",
)
def h352_tuk_tuk_temperature_percent(ctx: Context) -> None:
    gen = seeded(35204)
    config = {"temperature": "1"}  # a plain 1.0; the loader assumes percent
    model = FareZoneNamer(float(config["temperature"]) / 100.0)  # meant: 1.0
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    collapsed = []

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, 3524, spread=0.9),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under a fifth of rows collapsed over the first 5 steps", _mean(collapsed[:5]) < 0.2)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- piano tuning: a Poisson NLL on a ReLU rate with no floor --------------------------------------


class BeatCountNLL(nn.Module):
    """Hand-written Poisson NLL: rate - y * log(rate), with no clamp of the rate."""

    def __init__(self):
        super().__init__()
        self.min_rate = 1.0

    def forward(self, rate, y):
        self.min_rate = float(rate.detach().min())
        return (rate - y * torch.log(rate) + torch.lgamma(y + 1)).mean()


class BeatRateNet(Trunk):
    """A ReLU trunk whose head gives the beat rate through a ReLU; holds its criterion."""

    def __init__(self):
        super().__init__(10, 64, out=1)
        self.rate = nn.ReLU()
        self.count_nll = BeatCountNLL()
        with torch.no_grad():
            self.head.bias.fill_(3.0)

    def forward(self, x):
        return self.rate(super().forward(x))


def _unisons(gen, batch, seed):
    """Ten readings of a unison's two strings; beats counted over five seconds (Poisson) with a
    rate that is near zero for unisons already in tune."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        rate = 3.0 * F.softplus(1.5 * x @ w / math.sqrt(10) - 1.0)
        yield x, torch.poisson(rate, generator=gen)


@scenario(
    family="piano_tuning_unison_beat_count_relu_poisson_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("count_nll",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head, then a ReLU rate) predicting the beat count a piano tuner hears over five seconds on a unison (Poisson counts, many unisons near zero beats) from ten readings of the two strings, head bias started at 3, RMSprop at 3e-4, trained on the model's own count_nll module: rate - y * log(rate) + lgamma(y + 1), written without the floor (rate.clamp_min(eps)) the library Poisson NLL applies. As the net learns that some unisons are nearly in tune, a row's ReLU rate reaches exactly 0, log(0) is -inf and the loss is NaN at that step (step 30); the run stops there.",
)
def h352_piano_beat_rate_log_zero(ctx: Context) -> None:
    gen = seeded(35205)
    model = BeatRateNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-4)
    rates = []

    def watch(step, out, x, y):
        rates.append(model.count_nll.min_rate)

    n = _loop(
        ctx,
        model,
        opt,
        _unisons(gen, 32, 3525),
        300,
        lambda out, y: model.count_nll(out, y),
        watch=watch,
    )
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite at the step the run stops", bad is not None and bad == n - 1)
    ctx.check(
        "a row's rate was exactly 0 at the first non-finite loss",
        bad is not None and rates[bad] == 0.0,
    )
    ctx.check(
        "the loss fell before it broke (the net was learning)",
        bad is not None and bad > 20 and _mean(ctx.losses[bad - 10 : bad]) < ctx.losses[0],
    )


# -- circumhorizontal arc: one observer's shard logged in arcminutes ------------------------------

ARC_ONSET = 120


@scenario(
    family="circumhorizontal_arc_sighting_arcminute_shard_bce_net",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ARC_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting whether an observer sights a circumhorizontal arc (BCE with logits) from eight standardised readings of sun elevation, arc angles and cloud, SGD momentum 0.9 at 0.05, clipping at 2.0, 240 steps. At step 120 one observer's shard arrives with its three angle columns logged in arcminutes and never standardised (x * 60 + 1200): that batch's loss and gradient are over 20x the 20 steps before, the clip bounds the update, and the run recovers.",
)
def h352_circumhorizontal_arcminute_shard(ctx: Context) -> None:
    gen = seeded(35206)
    model = Trunk(8, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g0 = torch.Generator().manual_seed(3526)
    w = torch.randn(8, generator=g0)

    def sightings():
        while True:
            x = torch.randn(64, 8, generator=gen)
            p = torch.sigmoid(2.0 * x @ w / math.sqrt(8))
            yield x, torch.bernoulli(p, generator=gen)

    def alter(step, x, y):
        if step == ARC_ONSET:
            x = x.clone()
            x[:, :3] = x[:, :3] * 60.0 + 1200.0  # sun elevation and arc angles in arcminutes
        return x, y

    _loop(
        ctx,
        model,
        opt,
        sightings(),
        240,
        F.binary_cross_entropy_with_logits,
        alter=alter,
        clip=2.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = ls[ARC_ONSET - 20 : ARC_ONSET]
    ctx.check(
        "the loss at step 120 is over 20x the median of the 20 before",
        ls[ARC_ONSET] > 20.0 * _median(pre),
    )
    ctx.check(
        "the gradient at step 120 is over 20x the median of the 20 before",
        g[ARC_ONSET] > 20.0 * _median(g[ARC_ONSET - 20 : ARC_ONSET]),
    )
    ctx.check(
        "the last 30 steps' loss is within 1.5x of the 20 before the shard",
        _mean(ls[-30:]) < 1.5 * _mean(pre),
    )
    ctx.check("finite throughout", _finite(ls))


# -- willow basket: the recurrent init uses tanh's gain on an orthogonal matrix, twice ------------


class ElmanCell(nn.Module):
    """A hand-written Elman RNN: h_t = tanh(inp(x_t) + rec(h_{t-1})); the read-out from the last
    state. Keeps the hidden states of the last pass."""

    def __init__(self, d_in=4, hidden=48, rec_gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=rec_gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.in_features)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _rims(gen, batch, seed, length=40):
    """Forty stake readings (willow thickness, moisture, spacing, twist) around the rim; the
    tension is a decayed sum of them."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(4, generator=g)
    decay = 0.9 ** torch.arange(length - 1, -1, -1).float()
    while True:
        x = torch.randn(batch, length, 4, generator=gen)
        y = torch.tanh((x @ w * decay).sum(1) / 3.0)
        yield x, y + 0.05 * torch.randn(batch, generator=gen)


@scenario(
    family="willow_basket_rim_tension_elman_rnn",
    optimizer="Adagrad",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written Elman RNN (inp, rec, tanh, head on the last state) predicting the hoop tension of a willow basket's rim (standardised) from forty stake readings (thickness, moisture, spacing, twist), Adagrad at 1e-2, clipping at 1.0, MSE, 120 steps. The recurrent weight is initialised orthogonal with gain calculate_gain('tanh') ** 2 (about 2.8: the helper already applied the tanh gain and the call site applied it again) for 1.0: the recurrence is chaotic, each step back in time multiplies the backward signal, and the gradient at the first hidden state is over 20x that at the last at the start and over 10x through the run; the clip and Adagrad keep the loss finite but it stays high and noisy.",
)
def h352_willow_rim_recurrent_gain(ctx: Context) -> None:
    gen = seeded(35207)
    gain = nn.init.calculate_gain("tanh")
    model = ElmanCell(rec_gain=gain * gain)  # the gain applied in the helper and again here
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    ratios = []

    def inspect(step):
        first = model.states[0].grad.norm()
        last = model.states[-1].grad.norm()
        ratios.append(float(first / last.clamp_min(1e-30)))

    _loop(ctx, model, opt, _rims(gen, 32, 3527), 120, F.mse_loss, clip=1.0, inspect=inspect)
    ctx.check("the gradient at h_0 is over 20x that at h_39 at step 0", ratios[0] > 20.0)
    ctx.check("the median ratio over the run is over 10x", _median(ratios) > 10.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- coopering: the stave bevel net's lr is typed 0.8 for 0.08 ------------------------------------


@scenario(
    family="coopering_barrel_stave_bevel_dead_relu_regressor",
    optimizer="SGD",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) predicting the bevel angle a cooper planes on a barrel stave (standardised) from ten readings of stave width, barrel diameter and head size, plain SGD, MSE, 200 steps. The lr was typed 0.8 for 0.08: the first large updates overshoot and kill most of fc2's ReLUs: over half of fc2's units are never positive on a batch for the last 50 steps (under a tenth at the start); those units get no gradient and stay dead, and the loss stays high and noisy while finite.",
)
def h352_coopering_stave_relus_die(ctx: Context) -> None:
    gen = seeded(35208)
    model = Trunk(10, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.8)  # meant: 0.08
    dead = []

    def watch(step, out, x, y):
        with torch.no_grad():
            dead.append(_dead(model.act2(model.fc2(model.act1(model.fc1(x))))))

    _loop(ctx, model, opt, _readings(gen, 64, 10, 3528), 200, F.mse_loss, watch=watch)
    ctx.check("under a tenth of fc2's units dead at step 0", dead[0] < 0.1)
    ctx.check("over half of fc2's units dead over the last 50 steps", min(dead[-50:]) > 0.5)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- taffy pulling: the attention block's lr multiplier uses integer division ---------------------


class LinearAttention(nn.Module):
    """Hand-written kernelised (linear) attention: phi(x) = elu(x) + 1, out = phi(q) (phi(k)^T v)
    normalised by phi(q) . sum phi(k)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = (m(x).reshape(b, t, h, d // h).transpose(1, 2) for m in (self.q, self.k, self.v))
        q, k = F.elu(q) + 1.0, F.elu(k) + 1.0
        kv = k.transpose(-1, -2) @ v
        z = q @ k.sum(2, keepdim=True).transpose(-1, -2)
        out = (q @ kv) / z
        return self.o(out.transpose(1, 2).reshape(b, t, d))


class GlossStager(nn.Module):
    """Reads 20 pulls of a taffy batch (six readings each) and names its gloss stage (five)."""

    def __init__(self, d_in=6, dim=32, heads=4, classes=5):
        super().__init__()
        self.embed = nn.Linear(d_in, dim)
        self.attn = LinearAttention(dim, heads)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        h = self.embed(x)
        h = self.norm(h + self.attn(h))
        return self.head(h.mean(1))


def _pulls(gen, batch, seed, pulls=20, classes=5):
    """Twenty pulls whose readings follow the stage's prototype with noise."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(classes, 6, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y][:, None] + 1.5 * torch.randn(batch, pulls, 6, generator=gen), y


@scenario(
    family="taffy_pulling_gloss_stage_linear_attention_classifier",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("attn", "attn.q", "attn.k", "attn.v", "attn.o"),
    diverges=None,
    heldout=True,
    note="A hand-written transformer block with kernelised (linear) attention (embed, attn: four heads, phi(x) = elu(x) + 1, out = phi(q) (phi(k)^T v) / (phi(q) . sum phi(k)), norm, head on the mean) naming a taffy batch's gloss stage (five) from twenty pulls of six readings each, RAdam at 3e-3 with two parameter groups, cross-entropy, 160 steps. The attention group's lr multiplier, tuned on a 32-wide proxy, was written base_width // width with integers (32 // 64 = 0) for base_width / width (0.5): attn.q, attn.k, attn.v and attn.o never move while the embedding and head train.",
)
def h352_taffy_attention_lr_integer_division(ctx: Context) -> None:
    gen = seeded(35209)
    model = GlossStager()
    base_width, width = 32, 64  # the lr multipliers were tuned on a 32-wide proxy
    attn = list(model.attn.parameters())
    ids = {id(p) for p in attn}
    rest = [p for p in model.parameters() if id(p) not in ids]
    lr = 3e-3
    opt = torch.optim.RAdam(
        [
            {"params": attn, "lr": lr * (base_width // width)},  # meant: base_width / width
            {"params": rest, "lr": lr},
        ]
    )
    start = {
        n: m.weight.detach().clone() for n, m in model.named_modules() if n.startswith("attn.")
    }
    wh = model.head.weight.detach().clone()
    _loop(ctx, model, opt, _pulls(gen, 32, 3529), 160, F.cross_entropy, classifier=True)
    moved = max(_rel_change(w, dict(model.named_modules())[n].weight) for n, w in start.items())
    ctx.check("the attention's q, k, v, o weights did not move over the run", moved < 1e-6)
    ctx.check("the head moved over 5% of its norm", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- hay swath: the loss is summed over the batch with an lr tuned for the mean -------------------


@scenario(
    family="hay_swath_drying_time_sum_reduction_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting how long a hay swath takes to dry (standardised) from ten readings of sun, wind, humidity and swath density, plain SGD at 0.02 tuned for a mean loss, batches of 32, 200 steps planned. The loss was written F.mse_loss(..., reduction='sum') for the mean, so the effective step is 32x: the top Hessian eigenvalue by power iteration on a fixed batch shows lr * sharpness past 2 from the start, the loss oscillates with growing amplitude and overflows to inf (step 19), where the run stops.",
)
def h352_hay_swath_sum_reduction(ctx: Context) -> None:
    gen = seeded(35210)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)  # tuned for reduction="mean"

    def loss_fn(out, y):
        return F.mse_loss(out, y, reduction="sum")  # meant: "mean"

    batches = _readings(gen, 32, 10, 35210)
    px, py = next(batches)
    crossed = []

    def before(step):
        if step % 2 == 0:
            lam = _sharpness(model, loss_fn, px, py)
            if math.isfinite(lam) and opt.param_groups[0]["lr"] * lam > 2.0:
                crossed.append(step)

    n = _loop(ctx, model, opt, batches, 200, loss_fn, before=before)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("lr * sharpness passed 2 during the run", bool(crossed))
    ctx.check(
        "the loss went non-finite or over 1000x its minimum",
        bad is not None or max(ls) > 1000.0 * min(ls),
    )
    ctx.check(
        "lr * sharpness passed 2 before the loss broke",
        bool(crossed) and crossed[0] < (bad if bad is not None else n),
    )


# -- controls --------------------------------------------------------------------------------------


class QKNormAttention(nn.Module):
    """Causal self-attention with LayerNorm on the queries and keys per head (QK-norm)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim // heads)
        self.k_norm = nn.LayerNorm(dim // heads)
        self.o = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        h = self.heads
        q, k, v = (z.reshape(b, t, h, d // h).transpose(1, 2) for z in self.qkv(x).split(d, -1))
        q, k = self.q_norm(q), self.k_norm(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, d))


class PhraseBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = QKNormAttention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 4 * dim)
        self.out = nn.Linear(4 * dim, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class BellowsPhraseLM(nn.Module):
    """A two-block pre-LN decoder over concertina button presses (push and draw per button),
    learned positions, head tied to the token embedding."""

    def __init__(self, vocab=24, dim=32, heads=4, context=24):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.ModuleList(PhraseBlock(dim, heads) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def _button_phrases(gen, batch, seed, vocab=24, length=24):
    """Phrases from a sparse Markov chain over button presses (a tune's fingering habits)."""
    g = torch.Generator().manual_seed(seed)
    trans = torch.softmax(3.0 * torch.randn(vocab, vocab, generator=g), -1)
    while True:
        seq = [torch.randint(0, vocab, (batch,), generator=gen)]
        for _ in range(length):
            seq.append(torch.multinomial(trans[seq[-1]], 1, generator=gen).squeeze(1))
        s = torch.stack(seq, 1)
        yield s[:, :-1], s[:, 1:]


@scenario(
    family="concertina_bellows_phrase_qknorm_tied_transformer",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written two-block pre-LN decoder (tok, pos, blocks.N with QK-norm attention: LayerNorm on each head's queries and keys, ln_f, head tied to tok) predicting the next button press of a concertina player's phrase from a sparse Markov chain of fingering habits, AdamW at 1e-2 (betas 0.9, 0.95; weight decay 0.1 on matrices, none on norms and biases), linear warm-up over 20 steps then cosine decay to a tenth, clipping at 1.0, cross-entropy, 300 steps.",
)
def h352_concertina_qknorm_adamw_warmup(ctx: Context) -> None:
    gen = seeded(35211)
    model = BellowsPhraseLM()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-2,
        betas=(0.9, 0.95),
    )
    steps, warm = 300, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm
            if s < warm
            else 0.1 + 0.45 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))
        ),
    )

    def lm(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    _loop(ctx, model, opt, _button_phrases(gen, 32, 35211), steps, lm, sched=sched, clip=1.0)
    ctx.check("the loss fell (last 10 under 0.7x the first 10)", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


class RippleNet(nn.Module):
    """Two ReLU Conv1d stages over a 64-sample water-surface height trace, then a head."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 7, padding=3)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16 * 16, classes)

    def forward(self, x):
        x = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        x = F.max_pool1d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def _ripples(gen, batch, classes=4):
    """A height trace after a skipped stone: the class is how many bounces (1-4) left a ripple
    train passing the gauge, as damped bursts at random times, with noise."""
    t = torch.arange(64, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = 0.3 * torch.randn(batch, 64, generator=gen)
        for i in range(classes):
            at = 6 + 14 * i + torch.randint(-3, 4, (batch, 1), generator=gen)
            burst = torch.exp(-0.5 * ((t - at) / 2.0) ** 2) * torch.sin(1.5 * (t - at))
            x = x + burst * (y[:, None] >= i).float()
        yield x, y


@scenario(
    family="skipping_stone_ripple_train_onecycle_conv1d_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written ReLU Conv1d classifier (conv1, conv2, head) naming how many bounces (one to four) of a skipped stone left ripple trains passing a gauge, from a 64-sample water-height trace with jittered arrival times and noise, SGD with Nesterov momentum 0.9 under OneCycleLR (max lr 0.05), cross-entropy with label smoothing 0.1, clipping at 1.0, 150 steps.",
)
def h352_skipping_stone_onecycle_nesterov(ctx: Context) -> None:
    gen = seeded(35212)
    model = RippleNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=150)
    _loop(
        ctx,
        model,
        opt,
        _ripples(gen, 64),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        sched=sched,
        clip=1.0,
    )
    ctx.check("the loss fell (last 10 under 0.6x the first 10)", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="virga_evaporation_depth_fp16_asgd_huber_regressor",
    optimizer="ASGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control. A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting how far below the cloud base virga evaporates (standardised) from ten readings of humidity, lapse rate and drop size, Huber loss with noisy targets, ASGD at 0.05 under fp16 autocast with a torch.amp.GradScaler, clipping at 1.0, ReduceLROnPlateau on a held-out batch's loss, 150 steps.",
)
def h352_virga_fp16_asgd_plateau(ctx: Context) -> None:
    gen = seeded(35213)
    model = Trunk(10, 64, act=nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05, t0=100)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    batches = _readings(gen, 64, 10, 35213, noise=0.3)
    vx, vy = next(batches)

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(vx), vy))

    _loop(
        ctx,
        model,
        opt,
        batches,
        150,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("the loss fell (last 10 under 0.6x the first 10)", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
