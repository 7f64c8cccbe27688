"""Held-out set 323 (``h323_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a kegel (ninepin) pin-fall ReLU classifier whose NAdam
learning rate is typed 1e0 for 1e-3 (ReLUs die), an obvara pit-firing kiln fp16 regressor whose
thermocouple logger switches to raw counts mid-run (fp16 overflow under a GradScaler), a tambour-lace
stitch-fault multilabel tagger whose hand-written label smoothing pushes the targets outside [0, 1]
(the head's logits grow without bound), a sabrage cork-exit speed regressor whose EMA evaluation
hook forgets to swap the live weights back (one loss spike), a wool-classing fibre-diameter
regressor fed one bale logged in nanometres (one corrupted batch), a caning-chair weave tension
regressor whose accumulation divisor is multiplied for one step (one gradient burst), a tjanting
wax-flow Poisson net whose rate link is a bare ReLU (log 0, NaN), a sea-organ tone two-group
regressor whose trunk learning rate is typed 1e-9 (trunk frozen), a rackets-court rebound tanh
regressor whose warm-up peak is typed 2.0 for 0.2 (past 2/sharpness), a sea-ice pressure-ridge
16-layer tanh MLP initialised at gain 3 (gradients grow through depth), and three controls (a
horsehair-raku crackle squeeze-and-excitation CNN under bf16 autocast and OneCycleLR, a hot-foil
stamping gated Conv1d regressor with accumulation and ReduceLROnPlateau, a paper-marbling comb
tied-weight autoencoder with warm-up and cosine).

Each fault is induced the way it happens in practice and checked with ``ctx.check``; the
controls are ordinary runs.
"""

from __future__ import annotations

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


def _first_bad(xs: list[float]) -> int | None:
    return next((i for i, v in enumerate(xs) if not math.isfinite(v)), None)


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
    clip=None,
    sched=None,
    scaler=None,
    amp=None,
    accumulate=1,
    backprop=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``backprop(step, loss, accumulate)``
    returns the micro-batch loss actually backpropagated (``loss / accumulate`` unless a bug says
    otherwise), ``after(step)`` runs after the optimizer step; ``amp`` is an autocast dtype or
    None. Stops after a non-finite loss; returns the step it stopped at."""
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
            with torch.autocast("cpu", dtype=amp or torch.float16, enabled=amp is not None):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = backprop(step, loss, accumulate) if backprop else loss / accumulate
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


def _gauges(gen, batch, d_in, seed, noise=0.05, outputs=1):
    """Standardised readings and smooth nonlinear targets of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, outputs, generator=g)
    v = torch.randn(d_in, outputs, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        z = x @ w / math.sqrt(d_in)
        y = torch.tanh(1.5 * z) + 0.5 * torch.cos(1.3 * x @ v / math.sqrt(d_in)) - 0.3
        y = y + noise * torch.randn(batch, outputs, generator=gen)
        yield x, (y.squeeze(-1) if outputs == 1 else y)


def _sorts(gen, batch, d_in, classes, seed, spread=0.9):
    """Readings scattered around one prototype per class (classes overlap a little)."""
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


def _sharpness(model, loss_fn, x, y, iters=20):
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
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


# -- kegel: NAdam's learning rate typed 1e0 for 1e-3 ---------------------------------------------


@scenario(
    family="kegel_ninepin_pinfall_pattern_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) classifying which of 8 pin-fall patterns a ninepin (kegel) throw leaves from 16 lane-sensor readings, NAdam, cross-entropy, 200 steps. The config's lr is typed 1e0 where 1e-3 was meant: the loss swings wildly in the first 100 steps, the updates throw fc2's pre-activations far negative and over 90% of act2's ReLU units never fire again; the loss settles near chance.",
)
def h323_kegel_pinfall_lr_typo(ctx: Context) -> None:
    gen = seeded(32301)
    model = Trunk(16, 64, 8)
    opt = torch.optim.NAdam(model.parameters(), lr=1e0)  # meant 1e-3
    dead1, dead2 = [], []

    def watch(step, out, x, y):
        with torch.no_grad():
            h1 = model.act1(model.fc1(x))
            dead1.append(dead_fraction(h1))
            dead2.append(dead_fraction(model.act2(model.fc2(h1))))

    _loop(
        ctx,
        model,
        opt,
        _sorts(gen, 64, 16, 8, 32311),
        200,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("under a tenth of the units dead at step 0", max(dead1[0], dead2[0]) < 0.1)
    ctx.check(
        "over half of act2's units dead over each of the last 50 steps", min(dead2[-50:]) > 0.5
    )
    ctx.check("the loss stays above 0.8 x chance late", _mean(ctx.losses[-20:]) > 0.8 * math.log(8))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- obvara: the kiln logger switches to raw thermocouple counts under fp16 autocast --------------

ONSET_OBV = 80


@scenario(
    family="obvara_pit_firing_glaze_set_fp16_silu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=ONSET_OBV,
    heldout=True,
    onset=ONSET_OBV,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting how well an obvara dip sets from 12 pit-kiln readings, Adam lr 1e-3, MSE, fp16 autocast with a GradScaler, 180 steps planned. At step 80 a firmware update of the thermocouple logger makes all 12 channels of its frame report raw unsigned 16-bit ADC counts (40000 to 65535) instead of standardised values; under fp16 fc1's outputs pass 65504 and turn inf, the loss is inf at step 80 (the same batch through the float32 model is finite) and the scaler skips the step and cuts its scale.",
)
def h323_obvara_raw_adc_counts(ctx: Context) -> None:
    gen = seeded(32302)
    model = Trunk(12, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    seen = {}

    def alter(step, x, y):
        if step >= ONSET_OBV:
            x = 40000.0 + 25535.0 * torch.sigmoid(x)  # raw ADC counts
            with torch.no_grad():
                seen["fp32"] = float(F.mse_loss(model(x), y))
                with torch.autocast("cpu", dtype=torch.float16):
                    seen["fc1_inf"] = not bool(torch.isfinite(model.fc1(x)).all())
        return x, y

    stop = _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 64, 12, 32312),
        180,
        F.mse_loss,
        alter=alter,
        scaler=scaler,
        amp=torch.float16,
    )
    ls, s = ctx.losses, ctx.scales
    ctx.check("finite before onset", _finite(ls[:ONSET_OBV]))
    ctx.check(
        "the fp16 loss is non-finite at onset",
        len(ls) > ONSET_OBV and not math.isfinite(ls[ONSET_OBV]),
    )
    ctx.check(
        "the same batch through the float32 model is finite",
        math.isfinite(seen.get("fp32", math.inf)),
    )
    ctx.check("fc1's fp16 output holds inf at onset", seen.get("fc1_inf", False))
    ctx.check(
        "the scaler cut its scale at onset", len(s) > ONSET_OBV and s[ONSET_OBV] < s[ONSET_OBV - 1]
    )
    ctx.check("stopped at onset", stop == ONSET_OBV)


# -- tambour lace: label smoothing written outside [0, 1] -----------------------------------------


@scenario(
    family="tambour_lace_stitch_fault_multilabel_gelu_tagger",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) tagging which of 6 faults (skipped chain, loose loop, ...) a tambour-lace stitch line shows from 20 hook-tension readings, Adamax lr 2e-3, BCE with logits, 240 steps. The hand-written label smoothing is y * (1 + eps) - eps / 2 where y * (1 - eps) + eps / 2 was meant (eps 0.1): the targets are 1.05 and -0.05, outside [0, 1], so the loss keeps falling as every logit moves away from zero and the head's logits grow without bound.",
)
def h323_tambour_lace_smoothing_sign(ctx: Context) -> None:
    gen = seeded(32303)
    model = Trunk(20, 64, 6, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(32313)
    w = torch.randn(20, 6, generator=g)

    def lace(batch):
        while True:
            x = torch.randn(batch, 20, generator=gen)
            y = (x @ w / math.sqrt(20) + 0.3 * torch.randn(batch, 6, generator=gen) > 0.3).float()
            yield x, y

    eps = 0.1

    def loss_fn(out, y):
        return F.binary_cross_entropy_with_logits(out, y * (1 + eps) - eps / 2)  # sign slip

    mags = []

    def watch(step, out, x, y):
        mags.append(float(out.detach().abs().mean()))

    _loop(ctx, model, opt, lace(64), 240, loss_fn, watch=watch)
    ctx.check(
        "the head's mean |logit| grows over 20x from step 0", _mean(mags[-10:]) > 20 * mags[0]
    )
    ctx.check("it is still growing late", _mean(mags[-10:]) > 1.2 * _mean(mags[150:160]))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sabrage: the EMA evaluation hook forgets to swap the live weights back ------------------------

ONSET_SAB = 120


@scenario(
    family="sabrage_cork_exit_speed_silu_regressor",
    optimizer="Adam",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SAB,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting a champagne cork's exit speed under the sabre from 10 bottle readings, Adam lr 3e-3, MSE, 240 steps, with an EMA of the weights (decay 0.995) kept for evaluation. At step 120 the evaluation hook copies the EMA weights into the model and, after a refactor, never copies the live weights back: training continues from the lagging average, the loss jumps on ordinary data and the run recovers within tens of steps.",
)
def h323_sabrage_ema_swap(ctx: Context) -> None:
    gen = seeded(32304)
    model = Trunk(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    ema = [p.detach().clone() for p in model.parameters()]

    def after(step):
        with torch.no_grad():
            for e, p in zip(ema, model.parameters(), strict=True):
                e.mul_(0.995).add_(p.detach(), alpha=0.005)
            if step == ONSET_SAB - 1:  # evaluation: swap in the EMA, never swap back
                for e, p in zip(ema, model.parameters(), strict=True):
                    p.copy_(e)

    _loop(ctx, model, opt, _gauges(gen, 64, 10, 32314), 240, F.mse_loss, after=after)
    ls = ctx.losses
    base = _median(ls[ONSET_SAB - 20 : ONSET_SAB])
    ctx.check("loss at onset over 4x the previous 20 steps' median", ls[ONSET_SAB] > 4 * base)
    ctx.check(
        "recovered: last 20 steps under 1.5x the pre-onset median", _mean(ls[-20:]) < 1.5 * base
    )
    ctx.check("finite throughout", _finite(ls))


# -- wool classing: one bale's fibre diameters logged in nanometres ---------------------------------

ONSET_WOOL = 100


@scenario(
    family="wool_classing_fibre_diameter_relu_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_WOOL,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting a fleece's clean yield from 14 standardised classing-table readings, SGD momentum 0.9 lr 1e-2, MSE, gradient clipping at 5, 220 steps. At step 100 one bale's sheet has its micron column (two features) logged in nanometres: eight rows of that batch are 1000x too large. The loss and gradient jump for that step; clipping keeps the weights sane and the run recovers.",
)
def h323_wool_bale_nanometres(ctx: Context) -> None:
    gen = seeded(32305)
    model = Trunk(14, 64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    peak = {}

    def alter(step, x, y):
        if step == ONSET_WOOL:
            x = x.clone()
            x[:8, :2] = x[:8, :2] * 1000.0
            peak["x"] = float(x.abs().max())
        return x, y

    _loop(ctx, model, opt, _gauges(gen, 64, 14, 32315), 220, F.mse_loss, alter=alter, clip=5.0)
    ls, gn = ctx.losses, ctx.grad_norms
    base = _median(ls[ONSET_WOOL - 20 : ONSET_WOOL])
    ctx.check("the bad batch holds inputs over 100x the usual scale", peak.get("x", 0) > 400)
    ctx.check("loss at onset over 20x the previous median", ls[ONSET_WOOL] > 20 * base)
    ctx.check(
        "gradient at onset over 20x the previous median",
        gn[ONSET_WOOL] > 20 * _median(gn[ONSET_WOOL - 20 : ONSET_WOOL]),
    )
    ctx.check("recovered: last 20 steps under 2x the pre-onset median", _mean(ls[-20:]) < 2 * base)


# -- caning chair: the accumulation divisor multiplied for one step --------------------------------

ONSET_CANE = 110


@scenario(
    family="caning_chair_seat_weave_tension_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_CANE,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) predicting the tension of a hand-caned chair seat's weave from 12 readings, SGD Nesterov momentum 0.9 lr 5e-3, Huber loss, accumulation over 8 micro-batches, clipping at 10, 200 steps. At step 110 the resume branch rebuilds the micro-batch loss as loss * accumulate instead of loss / accumulate: a 64x gradient on ordinary data for one step, clipped, and the run carries on.",
)
def h323_caning_accumulation_multiplied(ctx: Context) -> None:
    gen = seeded(32306)
    model = Trunk(12, 64, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)

    def backprop(step, loss, accumulate):
        if step == ONSET_CANE:
            return loss * accumulate  # meant loss / accumulate
        return loss / accumulate

    _loop(
        ctx,
        model,
        opt,
        _gauges(gen, 16, 12, 32316),
        200,
        F.huber_loss,
        accumulate=8,
        backprop=backprop,
        clip=10.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at onset over 20x the previous 20 steps' median",
        gn[ONSET_CANE] > 20 * _median(gn[ONSET_CANE - 20 : ONSET_CANE]),
    )
    ctx.check(
        "the loss at onset is ordinary (under 2x the previous median)",
        ls[ONSET_CANE] < 2 * _median(ls[ONSET_CANE - 20 : ONSET_CANE]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- tjanting: the Poisson rate link is a bare ReLU ------------------------------------------------


class WaxFlow(nn.Module):
    """tanh trunk and a rate head whose link is a bare ReLU (softplus lost in a port)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 32)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(32, 32)
        self.act2 = nn.Tanh()
        self.head = nn.Linear(32, 1)
        self.link = nn.ReLU()
        nn.init.constant_(self.head.bias, 2.0)

    def forward(self, x):
        return self.link(self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))).squeeze(-1)


@scenario(
    family="tjanting_wax_drop_count_poisson_tanh_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("link", "head"),
    diverges=43,
    heldout=True,
    note="A tanh MLP with a Poisson rate head (fc1, act1, fc2, act2, head, link) predicting how many wax drops a batik tjanting sheds per stroke from 8 readings (spout size, wax temperature, stroke speed, ...), RAdam lr 1e-2, hand-written Poisson NLL rate - y log rate, 200 steps. The rate's softplus was ported as a bare ReLU: as training pushes low-count rows' rates down, a row's rate reaches exactly 0, log 0 = -inf, 0 x -inf and y / 0 give NaN (at step 43).",
)
def h323_tjanting_relu_rate(ctx: Context) -> None:
    gen = seeded(32307)
    model = WaxFlow()
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(32317)
    w = torch.randn(8, generator=g)

    def drops(batch):
        while True:
            x = torch.randn(batch, 8, generator=gen)
            rate = torch.exp(1.2 * x @ w / math.sqrt(8) - 0.5)
            yield x, torch.poisson(rate, generator=gen)

    mins = []

    def watch(step, out, x, y):
        mins.append(float(out.detach().min()))

    def loss_fn(rate, y):
        return (rate - y * torch.log(rate)).mean()

    stop = _loop(ctx, model, opt, drops(64), 200, loss_fn, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss turns NaN", bad is not None)
    ctx.check("finite for the first 10 steps", bad is not None and bad >= 10)
    ctx.check("a rate is exactly 0 at the NaN step", bad is not None and mins[bad] == 0.0)
    ctx.check("stopped at the NaN step", bad == stop)
    ctx.check("the NaN is at step 43", bad == 43)


# -- sea organ: the trunk's learning rate typed 1e-9 ----------------------------------------------


@scenario(
    family="sea_organ_pipe_tone_two_group_gelu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, act1, fc2, act2, head) predicting the loudness of a sea organ's pipe tone from 10 wave-gauge readings, Adagrad with two parameter groups, MSE, 200 steps. The trunk group's lr is typed 1e-9 where 1e-2 was meant (the head's is 1e-2): fc1 and fc2 move by under 1e-6 of their norm while the head learns what it can on random features.",
)
def h323_sea_organ_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(32308)
    model = Trunk(10, 64, 1, act=nn.GELU)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adagrad(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-2}]
    )
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    _loop(ctx, model, opt, _gauges(gen, 64, 10, 32318), 200, F.mse_loss)
    moves = {
        n: float((p.detach() - start[n]).norm() / (start[n].norm() + 1e-12))
        for n, p in model.named_parameters()
    }
    ctx.check(
        "fc1 and fc2 weights move under 1e-6 of their norm",
        max(moves["fc1.weight"], moves["fc2.weight"]) < 1e-6,
    )
    ctx.check("the head's weight moves over 1e-2 of its norm", moves["head.weight"] > 1e-2)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- rackets court: warm-up peak typed 2.0 for 0.2 ------------------------------------------------


@scenario(
    family="rackets_court_ball_rebound_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) predicting a rackets ball's rebound height off the front wall from 10 readings, plain SGD, MSE, 200 steps, linear warm-up over 100 steps. The warm-up's peak is typed 2.0 where 0.2 was meant: the learning rate climbs past 2 / the top Hessian eigenvalue of the loss and the run blows up.",
)
def h323_rackets_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(32309)
    model = Trunk(10, 64, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batches = _gauges(gen, 64, 10, 32319)
    probe = next(batches)
    peak = 2.0  # meant 0.2
    lrs, prods = [], []

    def before(step):
        lr = peak * min(1.0, (step + 1) / 100)
        for grp in opt.param_groups:
            grp["lr"] = lr
        lrs.append(lr)
        if step % 10 == 0:
            prods.append((step, lr * _sharpness(model, F.mse_loss, *probe)))

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before)
    ls = ctx.losses
    low = min(ls[:60])
    ctx.check("lr x sharpness under 2 at step 0", prods[0][1] < 2)
    ctx.check("lr x sharpness passes 2 during the warm-up", any(p > 2 for _, p in prods))
    ctx.check(
        "the loss blows up over 100x its low (or turns non-finite)",
        not _finite(ls) or max(ls) > 100 * low,
    )
    ctx.check("it trained first: loss fell below half its start", min(ls[:20]) < 0.5 * ls[0])


# -- sea-ice pressure ridge: a 12-layer tanh MLP initialised at gain 3 ----------------------------


class DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for layer in self.layers:
            nn.init.xavier_normal_(layer.weight, gain=gain)
            nn.init.zeros_(layer.bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="sea_ice_pressure_ridge_sail_height_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 16-layer tanh MLP (layers.0 to layers.15, head) predicting a sea-ice pressure ridge's sail height from 10 floe and wind readings, SGD momentum 0.9 lr 1e-3, MSE, clipping at 1, 150 steps. The init config's gain field is 3.0 (meant calculate_gain('tanh') = 5/3): the layers run in tanh's chaotic regime and the backward signal grows layer after layer towards the input, layers.0's weight gradient many times the last layer's.",
)
def h323_pressure_ridge_init_gain(ctx: Context) -> None:
    gen = seeded(32310)
    model = DeepTanh(10, 48, 16, gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    first, last = [], []
    model.layers[0].weight.register_hook(lambda g: first.append(float(g.norm())))
    model.layers[-1].weight.register_hook(lambda g: last.append(float(g.norm())))
    _loop(ctx, model, opt, _gauges(gen, 64, 10, 32320), 150, F.mse_loss, clip=1.0)
    ratios = [a / (b + 1e-12) for a, b in zip(first, last, strict=True)]
    ctx.check("layers.0's gradient over 20x layers.15's at step 0", ratios[0] > 20)
    ctx.check("still over 10x over the last 20 steps", min(ratios[-20:]) > 10)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- controls -------------------------------------------------------------------------------------


class SEBlock(nn.Module):
    def __init__(self, ch, r=4):
        super().__init__()
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(ch, ch // r)
        self.fc2 = nn.Linear(ch // r, ch)

    def forward(self, x):
        s = self.squeeze(x).flatten(1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class CrackleSENet(nn.Module):
    """Two conv layers, each followed by a squeeze-and-excitation block, then a linear head."""

    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.se1 = SEBlock(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.se2 = SEBlock(32)
        self.head = nn.Linear(32 * 4 * 4, classes)

    def forward(self, x):
        x = self.se1(F.relu(self.conv1(x)))
        x = F.max_pool2d(self.se2(F.relu(self.conv2(x))), 2)
        return self.head(x.flatten(1))


def _crackle(gen, batch, classes=6):
    """8x8 tiles of a horsehair-raku crackle: line patterns at one of six angles, with noise."""
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        ang = y.float() * math.pi / classes
        freq = 1.2 + 0.4 * torch.rand(batch, generator=gen)
        phase = 6.28 * torch.rand(batch, generator=gen)
        proj = xx[None] * torch.cos(ang)[:, None, None] + yy[None] * torch.sin(ang)[:, None, None]
        img = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
        img = img + 0.5 * torch.randn(batch, 8, 8, generator=gen)
        yield img[:, None], y


@scenario(
    family="horsehair_raku_crackle_angle_se_cnn",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written squeeze-and-excitation CNN (conv1, se1, conv2, se2, head) classifying the dominant angle of a horsehair-raku crackle pattern from noisy 8x8 tiles, bf16 autocast, AdamW weight decay 1e-2 with OneCycleLR (max lr 5e-3), label smoothing 0.1, clipping at 1, 200 steps. A control.",
)
def h323_raku_se_cnn_bf16_onecycle(ctx: Context) -> None:
    gen = seeded(32321)
    model = CrackleSENet()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=200)
    _loop(
        ctx,
        model,
        opt,
        _crackle(gen, 32),
        200,
        lambda o, y: F.cross_entropy(o, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
        amp=torch.bfloat16,
    )
    ctx.check("trained: loss fell below 0.6x its start", _fell(ctx.losses, ratio=0.6))


class GatedConv(nn.Module):
    """A gated Conv1d layer: conv to 2C channels, GLU along channels."""

    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.conv = nn.Conv1d(c_in, 2 * c_out, k, padding=k // 2)

    def forward(self, x):
        return F.glu(self.conv(x), dim=1)


class FoilPress(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate1 = GatedConv(2, 16, 5)
        self.gate2 = GatedConv(16, 16, 5)
        self.head = nn.Linear(16, 1)

    def forward(self, x):
        return self.head(self.gate2(self.gate1(x)).mean(-1)).squeeze(-1)


def _foil(gen, batch, length=32):
    """Platen temperature and pressure traces of a hot-foil stamping press; target the foil's
    transfer quality (a smooth function of the mean heat and the pressure peak)."""
    t = torch.linspace(0, 1, length)
    while True:
        heat = torch.rand(batch, 1, generator=gen)
        press = torch.rand(batch, 1, generator=gen)
        temp = (
            heat
            + 0.2 * torch.sin(6.28 * t + 3 * heat)
            + 0.05 * torch.randn(batch, length, generator=gen)
        )
        pres = press * torch.exp(-((t - 0.5) ** 2) / 0.02) + 0.05 * torch.randn(
            batch, length, generator=gen
        )
        y = torch.tanh(2 * heat.squeeze(1) - 1) + press.squeeze(1) ** 2
        yield torch.stack([temp, pres], 1), y


@scenario(
    family="hot_foil_stamping_transfer_gated_conv1d_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written gated Conv1d regressor (gate1, gate2: Conv1d to twice the channels and GLU; head) predicting a hot-foil stamp's transfer quality from platen temperature and pressure traces, RMSprop lr 1e-3, Huber loss, accumulation over 2, ReduceLROnPlateau, clipping at 1, 200 steps. A control.",
)
def h323_hot_foil_gated_conv(ctx: Context) -> None:
    gen = seeded(32322)
    model = FoilPress()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _loop(ctx, model, opt, _foil(gen, 32), 200, F.huber_loss, accumulate=2, clip=1.0, sched=sched)
    ctx.check("trained: loss fell below 0.5x its start", _fell(ctx.losses, ratio=0.5))


class TiedAE(nn.Module):
    """A tied-weight autoencoder: the decoder uses the encoder's weights transposed."""

    def __init__(self, d_in=24, code=8):
        super().__init__()
        self.enc1 = nn.Linear(d_in, 32)
        self.enc2 = nn.Linear(32, code)
        self.dec2_bias = nn.Parameter(torch.zeros(32))
        self.dec1_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        h = torch.tanh(self.enc2(torch.tanh(self.enc1(x))))
        h = torch.tanh(F.linear(h, self.enc2.weight.t(), self.dec2_bias))
        return F.linear(h, self.enc1.weight.t(), self.dec1_bias)


def _combs(gen, batch, d=24):
    """Profiles across a paper-marbling comb pass: a few wave modes of random amplitude."""
    t = torch.linspace(0, 1, d)
    modes = torch.stack([torch.sin(6.28 * k * t + k) for k in range(1, 5)])
    while True:
        amp = torch.randn(batch, 4, generator=gen)
        x = amp @ modes + 0.05 * torch.randn(batch, d, generator=gen)
        yield x, x


@scenario(
    family="paper_marbling_comb_profile_tied_autoencoder",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="A tied-weight tanh autoencoder (enc1, enc2; the decoder reuses their weights transposed) compressing comb-pass profiles of a paper-marbling bath, SGD momentum 0.9 lr 2e-2, warm-up over 20 steps then cosine, weight decay 1e-4, clipping at 1, MSE, 240 steps. A control.",
)
def h323_marbling_tied_ae(ctx: Context) -> None:
    gen = seeded(32323)
    model = TiedAE()
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, weight_decay=1e-4)

    def lam(step):
        if step < 20:
            return (step + 1) / 20
        return 0.5 * (1 + math.cos(math.pi * (step - 20) / 220))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _loop(ctx, model, opt, _combs(gen, 64), 240, F.mse_loss, clip=1.0, sched=sched)
    ctx.check("trained: loss fell below 0.5x its start", _fell(ctx.losses, ratio=0.5))
