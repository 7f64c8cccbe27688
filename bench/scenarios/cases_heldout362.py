"""Held-out set 362 (``h362_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a noctiluca sea-sparkle energy-based model whose energy-magnitude
regulariser is read under a misspelt config key (energies grow without bound), a sheep-dipping
immersion-time tanh regressor whose L2 penalty is subtracted (a slow climb), a racketlon
switch-rally Conv1d Huber regressor whose epoch-end step sums the loss (one gradient burst), a
circumzenithal-arc photon-count Poisson net exponentiating its log-rate inside the fp16 autocast
region (fp16 overflow), a singing-dune hum Conv1d classifier with a hand-written one-pass variance
and no clamp (sqrt of a negative), a turret-clock beat classifier fed one shard in milliseconds
(one corrupted batch), an alpenglow hue regressor whose fc2 param group has lr typed 3e-9 (frozen
layer), a belt-of-Venus band-height regressor whose StepLR gamma is typed 10 for 0.1 (past
2/sharpness), a frontenis rally ReLU Elman net whose identity recurrent init is scaled 1.2
(gradients grow through time), a Haxey Hood sway classifier dividing its logits by the final
annealing temperature 0.01 from step 0 (softmax saturates), and three controls (an ice-push
shore pile-up energy model with spectral normalisation, an energy-magnitude regulariser and
Langevin negatives, a snow-polo chukka classifier with SGD Nesterov, OneCycleLR, label smoothing
and clipping, an ice-swimming split Huber regressor under fp16 autocast with a GradScaler,
Adagrad, accumulation and ReduceLROnPlateau).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import Context, collapsed_fraction, grad_norm, scenario, seeded


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
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss)`` returns the
    loss actually backpropagated, ``after(step)`` runs after the optimizer step, ``plateau()``
    gives the validation loss for a ReduceLROnPlateau ``sched``. Stops after a non-finite loss
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

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
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


# -- energy-based models trained contrastively -----------------------------------------------------


class EnergyNet(nn.Module):
    """fc1 -> act1 -> fc2 -> act2 -> head: one scalar energy per reading (low = plausible)."""

    def __init__(self, d_in=8, hidden=64, spectral=False):
        super().__init__()
        wrap = nn.utils.parametrizations.spectral_norm if spectral else (lambda m: m)
        self.fc1 = wrap(nn.Linear(d_in, hidden))
        self.act1 = nn.SiLU()
        self.fc2 = wrap(nn.Linear(hidden, hidden))
        self.act2 = nn.SiLU()
        self.head = wrap(nn.Linear(hidden, 1))

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))).squeeze(-1)


def _clusters(gen, batch, d_in, seed, k=5):
    """Readings from a mixture of k tight clusters (the data the energy should make low)."""
    g = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(k, d_in, generator=g)
    while True:
        c = torch.randint(0, k, (batch,), generator=gen)
        yield centres[c] + 0.3 * torch.randn(batch, d_in, generator=gen), c


def _ebm_loop(ctx, model, opt, batches, steps, alpha, negatives, gen, sched=None, clip=None):
    """Contrastive training: E(data) down, E(negatives) up, plus alpha * (E+^2 + E-^2).
    Returns the per-step mean |E| and the gap E(neg) - E(data)."""
    ctx.attach(model, opt)
    mags, gaps = [], []
    for _ in range(steps):
        x, _ = next(batches)
        neg = negatives(x)
        e_pos, e_neg = model(x), model(neg)
        loss = e_pos.mean() - e_neg.mean() + alpha * (e_pos.pow(2).mean() + e_neg.pow(2).mean())
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        mags.append(float(torch.cat([e_pos, e_neg]).detach().abs().mean()))
        gaps.append(float(e_neg.detach().mean() - e_pos.detach().mean()))
        if not math.isfinite(float(loss.detach())):
            break
    return mags, gaps


@scenario(
    family="noctiluca_sea_sparkle_bloom_energy_model",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written energy-based model (fc1, act1, fc2, act2: SiLU, head: one scalar energy) of eight readings of a Noctiluca sea-sparkle bloom (flash intensity, water temperature, swell, ...), trained contrastively with Adam at 1e-3 for 200 steps: energy of the data down, energy of uniform-noise negatives up, plus an energy-magnitude regulariser. The training script reads the regulariser's weight as cfg.get('energy_reg', 0.0) while the config spells it 'energy_l2': 1.0, so the weight is 0: the contrastive objective has no floor, the head's energies run apart without bound (mean |E| grows over 50x, the gap between negatives and data passes 100) and the loss falls linearly towards minus infinity; nothing becomes NaN within the run.",
)
def h362_noctiluca_ebm_reg_key_typo(ctx: Context) -> None:
    gen = seeded(36201)
    model = EnergyNet(8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = {"energy_l2": 1.0}
    alpha = cfg.get("energy_reg", 0.0)  # meant: cfg["energy_l2"]

    def negatives(x):
        return 6.0 * torch.rand(x.shape, generator=gen) - 3.0

    mags, gaps = _ebm_loop(
        ctx, model, opt, _clusters(gen, 128, 8, 3621), 200, alpha, negatives, gen
    )
    ctx.check("the regulariser weight in use is 0", alpha == 0.0)
    ctx.check(
        "mean |E| over the last 10 steps is over 50x that of the first 10",
        _mean(mags[-10:]) > 50.0 * _mean(mags[:10]),
    )
    ctx.check("the energy gap passes 100", max(gaps) > 100.0)
    ctx.check(
        "mean |E| still grows over the last 50 steps (no plateau)",
        _mean(mags[-10:]) > 1.3 * _mean(mags[-50:-40]),
    )
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="ice_push_shore_pileup_spectral_energy_model",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written energy-based model (fc1, act1, fc2, act2: SiLU, head: one scalar energy) of eight readings of lake-ice pushing onto a shore (wind fetch, ice thickness, pile-up height, ...), every linear layer under spectral normalisation, trained contrastively with AdamW at 1e-3 (weight decay 1e-4) and a cosine schedule for 200 steps: energy of the data down, energy of negatives up, plus the energy-magnitude regulariser 0.1 * (E+^2 + E-^2); negatives start as uniform noise and take 10 Langevin steps (step 0.05, noise 0.01) down the energy, gradients clipped at 1.0. A control.",
)
def h362_ice_push_ebm_spectral_langevin(ctx: Context) -> None:
    gen = seeded(36202)
    model = EnergyNet(8, spectral=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)

    def negatives(x):
        z = 6.0 * torch.rand(x.shape, generator=gen) - 3.0
        for _ in range(10):
            z.requires_grad_(True)
            (g,) = torch.autograd.grad(model(z).sum(), z)
            z = (z - 0.05 * g + 0.01 * torch.randn(z.shape, generator=gen)).detach()
        return z

    mags, gaps = _ebm_loop(
        ctx, model, opt, _clusters(gen, 128, 8, 3622), 200, 0.1, negatives, gen, sched, 1.0
    )
    ctx.check("the loss fell by over 0.3", _mean(ctx.losses[-10:]) < _mean(ctx.losses[:10]) - 0.3)
    ctx.check("the energy gap over the last 20 steps is over 0.5", _mean(gaps[-20:]) > 0.5)
    ctx.check("mean |E| stays under 10 throughout", max(mags) < 10.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sheep dipping: the L2 penalty is subtracted ---------------------------------------------------

SHEEP_WD = 1.0


@scenario(
    family="sheep_dipping_immersion_time_l2_tanh_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting how long a sheep must stay in the dip bath (standardised) from twelve readings of fleece length, bath strength and temperature, RMSprop at 2e-3, MSE plus an explicit L2 penalty 1.0 * sum of squared weights (a deliberately strong prior for a tiny dataset), 260 steps. The penalty was written `loss - wd * l2` (a sign slip): the weights are pushed outward every step, the tanh units saturate and the head keeps growing, so after a first dip the MSE climbs slowly and steadily to many times its minimum, with no jump and no NaN.",
)
def h362_sheep_dip_l2_sign(ctx: Context) -> None:
    gen = seeded(36203)
    model = Trunk(12, 64, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    wd = SHEEP_WD
    head0 = float(model.head.weight.detach().norm())

    def backprop(step, loss):
        l2 = sum(p.pow(2).sum() for n, p in model.named_parameters() if n.endswith("weight"))
        return loss - wd * l2  # meant: loss + wd * l2

    _loop(ctx, model, opt, _readings(gen, 64, 12, 3623), 260, F.mse_loss, backprop=backprop)
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
    ctx.check("the head's weight norm grew over 5x", float(model.head.weight.norm()) > 5.0 * head0)


# -- racketlon: the epoch-end step sums the loss ---------------------------------------------------


class StrokeConv(nn.Module):
    """conv1 -> act1 -> conv2 -> act2 -> mean over time -> head."""

    def __init__(self, channels=4, width=16, out=1):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, out)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x)))).mean(-1)
        out = self.head(h)
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _traces(gen, batch, seed, channels=4, length=32):
    """Multichannel traces whose target is a smooth function of their mean and oscillation."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(channels, generator=g)
    t = torch.linspace(0, 2 * math.pi, length)
    while True:
        amp = torch.randn(batch, channels, 1, generator=gen)
        x = amp * torch.sin(3 * t) + 0.3 * torch.randn(batch, channels, length, generator=gen)
        y = torch.tanh(amp.squeeze(-1) @ w / 2) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


RACKETLON_ONSET = 130


@scenario(
    family="racketlon_switch_rally_length_conv1d_huber_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=RACKETLON_ONSET,
    note="A hand-written ReLU Conv1d net (conv1, act1, conv2, act2, head) predicting the length of the rally after a racketlon sport switch (standardised) from a 4-channel, 32-sample trace of footwork and racket sensors, SGD with momentum 0.9 at 1e-2, Huber loss, batches of 128, 200 steps. The epoch ends at step 130 and the epoch-end branch computes the loss with reduction='sum' (written for the partial last batch, which here is a full clean batch of 128): that one step's gradient is over 50x the steps before on an ordinary batch; the run is knocked up and recovers, finite throughout.",
)
def h362_racketlon_epoch_end_sum(ctx: Context) -> None:
    gen = seeded(36204)
    model = StrokeConv()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    norms, seen = [], {}

    def watch(step, out, x, y):
        norms.append(float(x.norm()))
        seen["out"], seen["y"] = out, y

    def backprop(step, loss):
        if step == RACKETLON_ONSET:  # the epoch-end branch, written for a partial last batch
            return F.huber_loss(seen["out"], seen["y"], reduction="sum")
        return loss

    _loop(
        ctx,
        model,
        opt,
        _traces(gen, 128, 3624),
        200,
        F.huber_loss,
        watch=watch,
        backprop=backprop,
    )
    g, ls = ctx.grad_norms, ctx.losses
    pre = _median(g[RACKETLON_ONSET - 20 : RACKETLON_ONSET])
    ctx.check(
        "the gradient at step 130 is over 50x the median of steps 110-129",
        g[RACKETLON_ONSET] > 50.0 * pre,
    )
    ctx.check(
        "no other step's gradient is over 5x the median of the 20 before it",
        all(
            g[i] < 5.0 * _median(g[i - 20 : i])
            for i in range(20, len(g))
            if i != RACKETLON_ONSET and not (RACKETLON_ONSET < i <= RACKETLON_ONSET + 20)
        ),
    )
    ctx.check(
        "the batch at step 130 is ordinary (input norm within 1.3x of the median)",
        norms[RACKETLON_ONSET] < 1.3 * _median(norms),
    )
    ctx.check(
        "the loss over the last 20 steps is back under 1.5x its level before the onset",
        _mean(ls[-20:]) < 1.5 * _mean(ls[RACKETLON_ONSET - 20 : RACKETLON_ONSET]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- circumzenithal arc: exp of the log-rate inside the autocast region ----------------------------


class ToRate(nn.Module):
    """The Poisson rate from the head's log-rate, in whatever dtype it is handed."""

    def forward(self, x):
        return torch.exp(x)


class PhotonRate(Trunk):
    """Trunk whose head predicts a log-rate, exponentiated (to_rate) in the forward pass."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.to_rate = ToRate()

    def forward(self, x):
        return self.to_rate(super().forward(x))  # under autocast this is fp16: meant in fp32


@scenario(
    family="circumzenithal_arc_photon_count_fp16_poisson_net",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("to_rate", "head"),
    diverges="auto",
    heldout=True,
    note="A hand-written GELU MLP (fc1, act1, fc2, act2, head, to_rate) predicting the photon count a sky camera records through a circumzenithal arc from ten readings of sun elevation, ice-crystal habit and haze, fp16 autocast with a torch.amp.GradScaler, AdamW at 3e-3, Poisson NLL (rate - count * log rate, divided by the mean count), the head's bias initialised at the log of the mean count, 200 steps. The exponentiation of the log-rate (to_rate) was written inside the autocast region, in fp16: the counts reach about 90000, and once the net learns a log-rate above 11.09 for the brightest arcs the rate passes fp16's 65504 and becomes inf: the loss is inf at that step while the same batch in fp32 is finite.",
)
def h362_circumzenithal_exp_inside_autocast(ctx: Context) -> None:
    gen = seeded(36205)
    model = PhotonRate(10, 64, act=nn.GELU)
    with torch.no_grad():
        model.head.bias.fill_(10.4)
        model.head.weight.mul_(0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    seen = {}

    def counts():
        for x, y in _readings(gen, 64, 10, 3625, noise=0.0):
            yield x, torch.poisson(torch.exp(10.4 + 0.6 * y), generator=gen)

    def watch(step, out, x, y):
        seen["x"], seen["out"] = x, out

    def loss_fn(rate, y):
        return (rate - y * torch.log(rate)).mean() / 3.3e4

    _loop(ctx, model, opt, counts(), 200, loss_fn, watch=watch, scaler=scaler, amp=True)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss becomes non-finite", bad is not None)
    ctx.check(
        "the rate under autocast holds an inf",
        bad is not None and bool(torch.isinf(seen["out"]).any()),
    )
    with torch.no_grad():
        fp32 = torch.exp(Trunk.forward(model, seen["x"]))
    ctx.check(
        "the same batch in fp32 is finite and passes 65504",
        bool(torch.isfinite(fp32).all()) and float(fp32.max()) > 65504.0,
    )
    ctx.check("finite before the overflow", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("the overflow comes after step 10", bad is not None and bad > 10)


# -- singing dune: a one-pass variance with no clamp -----------------------------------------------


class OnePassNorm(nn.Module):
    """Per-window standardisation with the variance as E[x^2] - E[x]^2 (no clamp, no eps)."""

    def __init__(self):
        super().__init__()
        self.var = None

    def forward(self, x):
        mu = x.mean(-1, keepdim=True)
        var = (x * x).mean(-1, keepdim=True) - mu * mu
        self.var = var.detach()
        return (x - mu) / torch.sqrt(var)  # meant: var.clamp_min(0) + eps


class HumConv(nn.Module):
    """norm -> conv1 -> act1 -> conv2 -> act2 -> mean over time -> head."""

    def __init__(self, width=16, classes=3):
        super().__init__()
        self.norm = OnePassNorm()
        self.conv1 = nn.Conv1d(1, width, 7, padding=3)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 7, padding=3)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.conv1(self.norm(x)[:, None])
        return self.head(self.act2(self.conv2(self.act1(h))).mean(-1))


DUNE_STILL = 0.0003


def _hums(gen, batch, length=64):
    """Raw microphone windows (ADC counts around a DC offset of 2048) of a dune's hum at one of
    three pitches; the wind sets the loudness, and a still moment is nearly silent."""
    t = torch.arange(length, dtype=torch.float32)
    freqs = torch.tensor([0.08, 0.16, 0.3])
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        amp = 10 ** (1.5 + 1.0 * torch.rand(batch, 1, generator=gen))
        still = torch.rand(batch, 1, generator=gen) < DUNE_STILL
        amp = torch.where(still, torch.full_like(amp, 0.002), amp)
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        x = amp * torch.sin(2 * math.pi * freqs[y, None] * t + phase)
        x = 2048.0 + x + 0.02 * amp * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="singing_dune_hum_pitch_onepass_norm_conv1d_classifier",
    optimizer="NAdam",
    cause="nonfinite",
    where=("norm",),
    diverges="auto",
    heldout=True,
    note="A hand-written ReLU Conv1d classifier (norm, conv1, act1, conv2, act2, head) telling the pitch of a singing dune's hum (three classes) from raw 64-sample microphone windows in ADC counts around a DC offset of 2048, NAdam at 2e-3, cross-entropy, 200 steps (the run learns the pitches, then breaks). Its first module standardises each window with a hand-written one-pass variance, mean(x^2) - mean(x)^2, and sqrt with no clamp and no eps: when the wind drops and a window is nearly silent, the float32 cancellation of two numbers near 4.2e6 leaves a variance that rounds to zero or below, sqrt of it is 0 or NaN and the division gives NaN, and the loss is NaN from that step on.",
)
def h362_singing_dune_onepass_variance(ctx: Context) -> None:
    gen = seeded(36226)
    model = HumConv()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def watch(step, out, x, y):
        seen["x"], seen["out"], seen["var"] = x, out, model.norm.var

    _loop(ctx, model, opt, _hums(gen, 32), 200, F.cross_entropy, classifier=True, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss becomes non-finite", bad is not None)
    ctx.check("the overflow comes after step 20", bad is not None and bad > 20)
    ctx.check(
        "the one-pass variance of the bad batch has a row at or below 0 (sqrt NaN or 0/0)",
        bad is not None and bool((seen["var"] <= 0).any()),
    )
    ctx.check(
        "the two-pass variance of every row of that batch is positive",
        bad is not None and bool((seen["x"].double().var(-1) > 0).all()),
    )
    ctx.check("finite before the NaN", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check(
        "the loss fell before the NaN",
        bad is not None and _mean(ctx.losses[bad - 10 : bad]) < 0.8 * _mean(ctx.losses[:10]),
    )


# -- turret clock: one shard in milliseconds -------------------------------------------------------

TURRET_ONSET = 110


@scenario(
    family="turret_clock_winding_beat_fault_nesterov_classifier",
    optimizer="SGD Nesterov",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=TURRET_ONSET,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying the beat fault of a church turret clock (six classes: in beat, long tick, short tick, ...) from sixteen standardised timings of its escapement after winding, SGD Nesterov (momentum 0.9) at 0.05, cross-entropy, gradients clipped at 5.0, 200 steps. One parish's shard, served at step 110, was logged in milliseconds where every other is in seconds and standardised with the others' statistics: that batch's inputs are 1000x, its loss and gradient jump far above the rest, the clipped update knocks the run up, and it recovers within a few dozen steps.",
)
def h362_turret_clock_millisecond_shard(ctx: Context) -> None:
    gen = seeded(36207)
    model = Trunk(16, 64, out=6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    norms = []

    def alter(step, x, y):
        if step == TURRET_ONSET:
            x = 1000.0 * x  # this parish logged milliseconds
        norms.append(float(x.norm()))
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 16, 6, 3627, spread=1.2),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=5.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[TURRET_ONSET - 10 : TURRET_ONSET])
    ctx.check(
        "the input norm at step 110 is over 100x the median", norms[110] > 100 * _median(norms)
    )
    ctx.check("the loss at step 110 is over 20x the 10 steps before", ls[TURRET_ONSET] > 20 * pre)
    ctx.check(
        "the gradient at step 110 is over 20x the median of steps 90-109",
        g[TURRET_ONSET] > 20 * _median(g[TURRET_ONSET - 20 : TURRET_ONSET]),
    )
    ctx.check(
        "the loss over the last 20 steps is back under 2x its level before the onset (or 0.3)",
        _mean(ls[-20:]) < max(2.0 * pre, 0.3),
    )
    ctx.check("finite throughout", _finite(ls))


# -- alpenglow: fc2's param group lr typed 3e-9 ----------------------------------------------------


@scenario(
    family="alpenglow_summit_hue_param_group_silu_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting the hue of the alpenglow on a summit after sunset (standardised) from twelve readings of sun depression, aerosol, snow cover and cloud, RAdam with three param groups (fc1, fc2, head) at 3e-3 each, Huber loss, 240 steps. The fc2 group's lr was typed 3e-9 for 3e-3: fc2 is frozen (its weights move by well under a millionth of their norm over the run) while fc1 and the head learn around it; the loss falls a little and stays finite.",
)
def h362_alpenglow_group_lr_typo(ctx: Context) -> None:
    gen = seeded(36208)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(
        [
            {"params": model.fc1.parameters(), "lr": 3e-3},
            {"params": model.fc2.parameters(), "lr": 3e-9},  # meant: 3e-3
            {"params": model.head.parameters(), "lr": 3e-3},
        ]
    )
    w0 = {n: m.weight.detach().clone() for n, m in (("fc1", model.fc1), ("fc2", model.fc2))}
    h0 = model.head.weight.detach().clone()
    _loop(ctx, model, opt, _readings(gen, 64, 12, 3628), 240, F.huber_loss)
    ctx.check(
        "fc2's weights moved under 1e-6 of their norm",
        _rel_change(w0["fc2"], model.fc2.weight) < 1e-6,
    )
    ctx.check(
        "fc1's weights moved over 5% of their norm", _rel_change(w0["fc1"], model.fc1.weight) > 0.05
    )
    ctx.check(
        "the head's weights moved over 20% of their norm", _rel_change(h0, model.head.weight) > 0.2
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- belt of Venus: StepLR gamma typed 10 for 0.1 --------------------------------------------------

VENUS_ONSET = 80
VENUS_LR = 0.06


@scenario(
    family="belt_of_venus_band_height_steplr_gamma_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=VENUS_ONSET,
    note="A hand-written tanh MLP (fc1, act1, fc2, act2, head) predicting the height of the belt of Venus above the antisolar horizon (standardised) from ten readings of sun depression, aerosol optical depth and humidity, plain SGD at 0.06 (lr x sharpness about 0.4), MSE, 150 steps, a StepLR every 80 steps whose gamma was typed 10 for 0.1: at step 80 the learning rate rises tenfold, lr x the top Hessian eigenvalue goes from under 1 to past 2, and the loss oscillates and blows up within a few dozen steps.",
)
def h362_belt_of_venus_steplr_gamma(ctx: Context) -> None:
    gen = seeded(36209)
    model = Trunk(10, 64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=VENUS_LR)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=VENUS_ONSET, gamma=10.0)  # meant 0.1
    probe = next(_readings(torch.Generator().manual_seed(36290), 256, 10, 3629))
    sharp, lrs = {}, []

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step == VENUS_ONSET:
            sharp["onset"] = _sharpness(model, F.mse_loss, *probe)

    _loop(
        ctx, model, opt, _readings(gen, 64, 10, 3629), 150, F.mse_loss, before=before, sched=sched
    )
    ls = ctx.losses
    s = sharp.get("onset", float("nan"))
    ctx.check("lr x sharpness before the onset is under 1", lrs[0] * s < 1.0)
    ctx.check("lr x sharpness after the onset is over 2", lrs[VENUS_ONSET] * s > 2.0)
    ctx.check("the loss fell before the onset", _mean(ls[70:80]) < 0.8 * _mean(ls[:10]))
    ctx.check(
        "the loss after the onset blows up past 100x its level before",
        not _finite(ls[VENUS_ONSET:]) or max(ls[VENUS_ONSET:]) > 100 * _mean(ls[70:80]),
    )


# -- frontenis: an identity recurrent init scaled 1.2 ----------------------------------------------


FRONTENIS_GAIN = 1.2
FRONTENIS_DIV = 1


class Elman(nn.Module):
    """A ReLU Elman net written out: h = relu(inp(x_t) + rec(h)); head reads the last state."""

    def __init__(self, d_in=6, hidden=48, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.act = nn.ReLU()
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.rec.bias.zero_()
            self.inp.weight.normal_(0.0, 0.01)
            self.inp.bias.zero_()
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = self.act(self.inp(x[:, t]) + self.rec(h))
            h.retain_grad() if h.requires_grad else None
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _rallies(gen, batch, seed, length=30, d_in=6):
    """Sequences of shot readings; the target is a decaying sum of a projection of them."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g) / math.sqrt(d_in)
    decay = 0.8 ** torch.arange(length - 1, -1, -1, dtype=torch.float32)
    while True:
        x = torch.randn(batch, length, d_in, generator=gen)
        yield x, torch.tanh((x @ w * decay).sum(1) / 2)


@scenario(
    family="frontenis_rally_shot_count_irnn_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=FRONTENIS_DIV,
    heldout=True,
    note="A hand-written ReLU Elman net (inp, rec, act, head: the recurrence written out step by step, an IRNN with small input weights and zero biases) predicting a frontenis rally's outcome margin (standardised) from 30 shots of six readings each, plain SGD at 1e-4, MSE, 120 steps. The recurrent weight's identity init was scaled by 1.2 where the IRNN recipe says 1.0 (a gain meant for another layer pasted onto rec): the backward signal grows by about 1.2 per time step, the gradient reaching the first time step is over 100x that at the last and the first gradient norm is in the thousands; the first update throws rec so far that the loss at step 1 is over 1000x that at step 0 (the run breaks there), after which the ReLU states are dead, no gradient reaches the early time steps and the net only predicts a constant.",
)
def h362_frontenis_irnn_gain(ctx: Context) -> None:
    gen = seeded(36210)
    model = Elman(gain=FRONTENIS_GAIN)  # meant: 1.0
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    ratio = []

    def after(step):
        st = model.states
        if st[0].grad is not None and st[-1].grad is not None:
            ratio.append(float(st[0].grad.norm() / st[-1].grad.norm().clamp_min(1e-30)))

    _loop(ctx, model, opt, _rallies(gen, 32, 3620), 120, F.mse_loss, after=after)
    ls = ctx.losses
    ctx.check(
        "the gradient at the first time step is over 100x that at the last at step 0",
        bool(ratio) and ratio[0] > 100.0,
    )
    ctx.check("the gradient norm at step 0 is over 1000", ctx.grad_norms[0] > 1000.0)
    ctx.check(
        "the loss at step 1 is over 1000x that at step 0",
        not math.isfinite(ls[FRONTENIS_DIV]) or ls[FRONTENIS_DIV] > 1000.0 * ls[0],
    )
    ctx.check(
        "at the end no gradient reaches the first time step (the states are dead)",
        bool(ratio) and ratio[-1] < 1e-6,
    )


# -- Haxey Hood: the final annealing temperature used from step 0 ----------------------------------


HAXEY_SPREAD = 0.8


class Tempered(Trunk):
    def __init__(self, *args, temperature=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="haxey_hood_sway_pub_temperature_relu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head, then a division by a temperature) predicting which of four pubs the Haxey Hood sway will reach from fourteen readings of the crowd, the ground and the weather, Adamax at 2e-3, cross-entropy, 200 steps. The temperature was meant to anneal from 1.0 to 0.01 late in training; the schedule's final value 0.01 was used from step 0: the logits are 100x, the median gap between the top two logits passes 17 and the float32 softmax of over half the rows rounds the target class to exactly 1.0; the loss stays finite.",
)
def h362_haxey_hood_final_temperature(ctx: Context) -> None:
    gen = seeded(36211)
    model = Tempered(14, 64, out=4, temperature=0.01)  # meant: anneal 1.0 -> 0.01
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    col, worst = [], []

    def watch(step, out, x, y):
        col.append(collapsed_fraction(out.detach(), y))
        top2 = out.detach().topk(2, dim=-1).values
        worst.append(_median((top2[:, 0] - top2[:, 1]).tolist()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 14, 4, 36211, spread=HAXEY_SPREAD),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check(
        "over half the rows' softmax is exactly 1.0 at the target over the last 50 steps",
        _mean(col[-50:]) > 0.5,
    )
    ctx.check("under a fifth at step 0", col[0] < 0.2)
    ctx.check(
        "the median top-1 minus top-2 logit margin over the last 50 steps is over 17",
        _mean(worst[-50:]) > 17.0,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls ---------------------------------------------------------------------------------------


@scenario(
    family="snow_polo_chukka_outcome_onecycle_relu_classifier",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (fc1, act1, fc2, act2, head) classifying the outcome of a snow-polo chukka (five classes) from eighteen readings of the snow, the ponies and the score, SGD Nesterov (momentum 0.9, weight decay 5e-4) under OneCycleLR (max 0.1), label smoothing 0.1, gradients clipped at 1.0, noisy batches of 64, 200 steps. A control.",
)
def h362_snow_polo_onecycle(ctx: Context) -> None:
    gen = seeded(36212)
    model = Trunk(18, 64, out=5)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    acc = []

    def watch(step, out, x, y):
        acc.append(float((out.argmax(1) == y).float().mean()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 18, 5, 36212, spread=1.5),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        watch=watch,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("accuracy over the last 20 steps is over 0.85", _mean(acc[-20:]) > 0.85)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="ice_swimming_mile_split_fp16_accum_huber_regressor",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (fc1, act1, fc2, act2, head) predicting an ice swimmer's split over the ice mile (standardised) from twelve readings of water temperature, stroke rate and body temperature, fp16 autocast with a torch.amp.GradScaler, Adagrad at 2e-2, Huber loss, gradient accumulation over 2 micro-batches, gradients clipped at 1.0 after unscaling, ReduceLROnPlateau on a held-out batch, 200 steps. A control.",
)
def h362_ice_swimming_fp16_adagrad(ctx: Context) -> None:
    gen = seeded(36213)
    model = Trunk(12, 64, act=nn.SiLU)
    opt = torch.optim.Adagrad(model.parameters(), lr=2e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    held = next(_readings(torch.Generator().manual_seed(36299), 256, 12, 3613))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 12, 3613),
        200,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("the held-out loss ends under 0.05", plateau() < 0.05)
    ctx.check("the scale stayed at or above 1", min(ctx.scales) >= 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))
