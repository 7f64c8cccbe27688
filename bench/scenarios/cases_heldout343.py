"""Held-out set 343 (``h343_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a harness-racing trotter gait-break classifier whose
softmax-temperature annealing factor is typed 0.97 for 0.997 (softmax saturates), a luthier's
violin-varnish cure regressor whose trunk group's lr is typed 3e-8 for 3e-3 (trunk frozen), a
forge-bellows blast linear state-space RNN whose recurrent radius is typed 1.15 for 0.95
(gradients grow through time), a salmon-weir leap regressor whose inverse-propensity weight has
no clamp for one survey session (one gradient burst), a stonemason's lime-mortar set regressor
whose warm-up peak lr is typed 0.9 for 0.09 (past 2/sharpness), a frost-hollow ground-temperature
regressor whose logger gain correction compounds every batch (drifting target, slow climb), a
handbell peal-fault classifier resumed from a stale checkpoint (one loss spike, recovers), a
river-ice breakup regressor fed one shard with a -9999 missing-value sentinel (one corrupted
batch), a dragonfly pond-survey BCE tagger whose presence code is 2 (logits grow without bound),
a beehive overwinter Weibull survival net whose shape goes through a ReLU for a softplus (log 0),
and three controls (a fairy-ring fruiting negative-binomial count net with clamps, AdamW,
OneCycleLR and clipping; a tabla bol-stroke Conv1d classifier with label smoothing, Adagrad and
cosine annealing; a kite-surf airtime regressor under fp16 autocast with a GradScaler, warm-up,
StepLR and clipping).

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
    weight=None,
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` sees the forward pass, ``weight(step)`` scales the loss
    that is backpropagated, ``after(step)`` runs after the optimizer step. Stops after a
    non-finite loss (once ``ctx.step`` has seen it); returns the number of steps run."""
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
            total = loss * (weight(step) if weight is not None else 1.0) / accumulate
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
            sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


def _smooth_target(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = 0.9 * torch.tanh(x @ w / math.sqrt(d_in)) + 0.5 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _clusters(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around two prototypes per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, 2, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        mode = torch.randint(0, 2, (batch,), generator=gen)
        yield protos[y, mode] + spread * torch.randn(batch, d_in, generator=gen), y


class ThreeLayer(nn.Module):
    """inp -> act_in -> hid -> act_hid -> out (names chosen per model below)."""

    def __init__(self, d_in, hidden, out, act=nn.ReLU):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.act_in = act()
        self.hid = nn.Linear(hidden, hidden)
        self.act_hid = act()
        self.out = nn.Linear(hidden, out)

    def features(self, x):
        return self.act_hid(self.hid(self.act_in(self.inp(x))))

    def forward(self, x):
        o = self.out(self.features(x))
        return o.squeeze(-1) if o.shape[-1] == 1 else o


# -- harness racing: the temperature annealing factor is typed 0.97 for 0.997 --------------------


class GaitBreakClassifier(ThreeLayer):
    """A GELU net naming a trotter's gait (trot, pace, gallop break, ...) from 14 sulky-sensor
    readings; the logits are divided by an annealed temperature."""

    def __init__(self):
        super().__init__(14, 64, 6, act=nn.GELU)
        self.temperature = 1.0

    def forward(self, x):
        return self.out(self.features(x)) / self.temperature


@scenario(
    family="harness_racing_trotter_gait_break_annealed_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("out",),
    diverges=None,
    heldout=True,
    note="A hand-written GELU MLP (inp, act_in, hid, act_hid, out) naming a harness-racing trotter's gait among six classes from fourteen standardised sulky-sensor readings, NAdam at 2e-3, cross-entropy, 200 steps. The recipe anneals the softmax temperature per step as max(0.01, 0.997**step) (to about 0.55 by the end); the annealing factor was typed 0.97, so the temperature falls to the 0.01 floor by step 150 and the logits reach the softmax up to 100x too large: as the net fits, the softmax saturates and for most rows the target's float32 probability rounds to exactly 1.0 while the rest are confidently wrong; the loss stays finite.",
)
def h343_harness_racing_temperature_anneal_typo(ctx: Context) -> None:
    gen = seeded(34301)
    model = GaitBreakClassifier()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    collapsed, peaks = [], []

    def before(step):
        model.temperature = max(0.01, 0.97**step)  # meant 0.997**step

    def watch(step, out, x, y):
        collapsed.append(collapsed_fraction(out.detach(), y))
        peaks.append(float(out.detach().abs().max()))

    _train(
        ctx,
        model,
        opt,
        _clusters(gen, 64, 14, 6, 343, spread=0.8),
        200,
        F.cross_entropy,
        classifier=True,
        before=before,
        watch=watch,
    )
    ctx.check("under a tenth of rows collapsed over the first 10 steps", max(collapsed[:10]) < 0.1)
    ctx.check(
        "over half the rows' target probability is exactly 1.0 over the last 20 steps",
        _mean(collapsed[-20:]) > 0.5,
    )
    ctx.check("the largest logit grew over 20x", _mean(peaks[-20:]) > 20 * _mean(peaks[:5]))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- luthier: the trunk group's lr is typed 3e-8 for 3e-3 ---------------------------------------


class VarnishCure(nn.Module):
    """A SiLU net predicting a violin varnish coat's cure hardness from twelve readings."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(12, 64)
        self.stem_act = nn.SiLU()
        self.mid = nn.Linear(64, 64)
        self.mid_act = nn.SiLU()
        self.readout = nn.Linear(64, 1)

    def forward(self, x):
        return self.readout(self.mid_act(self.mid(self.stem_act(self.stem(x))))).squeeze(-1)


@scenario(
    family="luthier_violin_varnish_cure_two_group_regressor",
    optimizer="AdamW",
    cause="update_ratio_out_of_range",
    where=("stem", "mid"),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (stem, stem_act, mid, mid_act, readout) predicting a violin varnish coat's cure hardness (standardised) from twelve readings (oil ratio, UV hours, humidity, ...), AdamW with two parameter groups (weight decay 0.01), MSE, 200 steps. The readout group trains at 3e-3; the trunk group's (stem, mid) lr was typed 3e-8 for 3e-3 in the config, so the trunk's updates are about 1e-8 of its weights per step, it effectively never moves, and the loss falls only as far as a linear read-out of the random features allows; nothing blows up.",
)
def h343_luthier_trunk_lr_typo(ctx: Context) -> None:
    gen = seeded(34302)
    model = VarnishCure()
    config = {"trunk_lr": 3e-8, "readout_lr": 3e-3}  # trunk_lr meant 3e-3
    trunk = list(model.stem.parameters()) + list(model.mid.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": trunk, "lr": config["trunk_lr"]},
            {"params": model.readout.parameters(), "lr": config["readout_lr"]},
        ],
        weight_decay=0.01,
    )
    w1, w2, wr = (m.weight.detach().clone() for m in (model.stem, model.mid, model.readout))
    _train(ctx, model, opt, _smooth_target(gen, 64, 12, 343), 200, F.mse_loss)
    ctx.check(
        "stem and mid moved under 1e-4 of their norm over the run",
        max(_rel_change(w1, model.stem.weight), _rel_change(w2, model.mid.weight)) < 1e-4,
    )
    ctx.check("the readout moved over 10% of its norm", _rel_change(wr, model.readout.weight) > 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- forge bellows: a linear state-space RNN's recurrent radius typed 1.15 for 0.95 ---------------


class BlastCell(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.A = nn.Linear(hidden, hidden, bias=False)
        self.B = nn.Linear(d_in, hidden)

    def forward(self, x, h):
        return self.A(h) + self.B(x)


class BellowsSSM(nn.Module):
    """A linear state-space RNN reading a forge's bellows strokes (pressure, stroke rate) sample
    by sample; predicts the fire's core temperature (standardised) from the last state."""

    def __init__(self, d_in=2, hidden=24, radius=0.95):
        super().__init__()
        self.hidden = hidden
        self.cell = BlastCell(d_in, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            q, _ = torch.linalg.qr(torch.randn(hidden, hidden))
            self.cell.A.weight.copy_(radius * q)
            self.cell.B.weight.mul_(0.05)
            self.cell.B.bias.zero_()
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _strokes(gen, batch, length=48):
    while True:
        rate = 0.2 + 0.3 * torch.rand(batch, 1, generator=gen)
        t = torch.arange(length, dtype=torch.float32)
        pressure = torch.relu(torch.sin(rate * t)) + 0.1 * torch.randn(batch, length, generator=gen)
        stroke = torch.cos(rate * t)
        x = torch.stack([pressure, stroke], -1)
        yield x, 4.0 * (rate.squeeze(-1) - 0.35) + 0.5 * pressure[:, -8:].mean(1)


@scenario(
    family="forge_bellows_blast_linear_state_space_rnn",
    optimizer="Adam",
    cause="exploding_gradients",
    where=("cell.A", "cell"),
    diverges="auto",
    heldout=True,
    note="A hand-written linear state-space RNN (cell with A and B, head) reading a blacksmith's forge bellows (pressure, stroke phase) over 48 samples to predict the fire's core temperature (standardised), Adam at 3e-2, MSE, 150 steps planned. The recurrent matrix cell.A is initialised as an orthogonal matrix scaled by a radius meant to be 0.95 (a stable, decaying memory); the config's radius was typed 1.15, so every state and the backward signal are amplified 1.15x per time step: the gradient reaching the first step's state is hundreds of times the last step's, the first updates to A and B are amplified through the 48 steps, and the loss blows up by many orders of magnitude.",
)
def h343_forge_bellows_ssm_radius_typo(ctx: Context) -> None:
    gen = seeded(34303)
    model = BellowsSSM(radius=1.15)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    ratios = []

    def watch(step, out, x, y):
        if step == 0:
            loss = F.mse_loss(out, y)
            g = torch.autograd.grad(loss, [model.states[0], model.states[-1]], retain_graph=True)
            ratios.append(float(g[0].norm() / g[1].norm().clamp_min(1e-30)))

    _train(ctx, model, opt, _strokes(gen, 32), 150, F.mse_loss, watch=watch)
    ctx.check("the first state's gradient is over 500x the last state's at step 0", ratios[0] > 500)
    ctx.check(
        "the loss blows up (non-finite, or 1e6x its first value)",
        not _finite(ctx.losses) or max(ctx.losses) > 1e6 * ctx.losses[0],
    )


# -- salmon weir: one session's inverse-propensity weight has no clamp ----------------------------


ONSET_SW = 130


@scenario(
    family="salmon_weir_leap_propensity_weighted_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SW,
    note="A hand-written tanh MLP (inp, act_in, hid, act_hid, out) predicting a salmon's leap height at a weir (standardised) from ten readings (flow, fish length, water temperature, ...), SGD with Nesterov momentum 0.9 at 5e-3, MSE, 240 steps. Each survey session's batch is weighted by the inverse of its camera's detection propensity (about 0.5, weight about 2); the propensity is meant to be clamped at 0.2 and the clamp was left out, and the session trained at step 130 has a propensity of 0.004 from a camera fogged for most of the night: that step's ordinary batch is weighted 250, the gradient bursts far above the run's, the update knocks the fit, and the loss recovers afterwards.",
)
def h343_salmon_weir_propensity_no_clamp(ctx: Context) -> None:
    gen = seeded(34304)
    model = ThreeLayer(10, 64, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    pg = torch.Generator().manual_seed(3434)
    propensity = 0.4 + 0.2 * torch.rand(240, generator=pg)
    propensity[ONSET_SW] = 0.004  # fogged camera; the clamp(min=0.2) was left out

    def weight(step):
        return float(1.0 / propensity[step])

    _train(ctx, model, opt, _smooth_target(gen, 64, 10, 3431), 240, F.mse_loss, weight=weight)
    pre = _median(ctx.grad_norms[ONSET_SW - 20 : ONSET_SW])
    ctx.check(
        "the gradient at the onset is over 50x the steps before",
        ctx.grad_norms[ONSET_SW] > 50 * pre,
    )
    ctx.check(
        "the onset batch's own loss is ordinary (within 3x of before)",
        ctx.losses[ONSET_SW] < 3 * _mean(ctx.losses[ONSET_SW - 10 : ONSET_SW]),
    )
    ctx.check(
        "the gradients afterwards are back within 5x of before",
        _median(ctx.grad_norms[ONSET_SW + 30 :]) < 5 * pre,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- stonemason: the warm-up's peak lr is typed 0.9 for 0.09 -------------------------------------


def _top_eigen(model, batch, loss_fn, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(7)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u**2).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return abs(lam)


ONSET_SM = 60
WARM_SM = 150


@scenario(
    family="stonemason_lime_mortar_set_warmup_regressor",
    optimizer="ASGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=ONSET_SM,
    note="A hand-written tanh MLP (inp, act_in, hid, act_hid, out) predicting a lime mortar's set strength (standardised) from twelve readings (lime putty age, sand grading, joint depth, weather), ASGD (averaging from step 1e6, i.e. plain SGD iterates) with a linear warm-up over 150 steps to a peak lr meant to be 0.09 and typed 0.9, MSE, 250 steps planned. As the warm-up climbs, lr times the top Hessian eigenvalue (power iteration on a fixed batch, every 10 steps) passes 2 around step 60; the loss starts to oscillate and grow and the run blows up.",
)
def h343_stonemason_warmup_peak_typo(ctx: Context) -> None:
    gen = seeded(34305)
    model = ThreeLayer(12, 64, 1, act=nn.Tanh)
    peak = 0.9  # meant 0.09
    opt = torch.optim.ASGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARM_SM))
    batches = _smooth_target(gen, 128, 12, 3432)
    probe = next(batches)
    edge = {}

    def before(step):
        if step % 10 == 0 and step <= 150:
            edge[step] = opt.param_groups[0]["lr"] * _top_eigen(model, probe, F.mse_loss)

    _train(ctx, model, opt, batches, 250, F.mse_loss, before=before, sched=sched)
    ctx.check("the loss fell before the onset", _fell(ctx.losses[:ONSET_SM]))
    ctx.check(
        "lr x top eigenvalue passes 2 between the onset's previous probe and the onset",
        edge[ONSET_SM - 10] < 2.0 < edge[ONSET_SM],
    )
    ls = ctx.losses[ONSET_SM:]
    ctx.check(
        "the loss blows up after the onset (non-finite or 100x its pre-onset level)",
        not _finite(ls) or max(ls) > 100 * _mean(ctx.losses[ONSET_SM - 10 : ONSET_SM]),
    )


# -- frost hollow: the logger's gain correction compounds on a cached factor ---------------------


@scenario(
    family="frost_hollow_ground_temperature_drifting_target_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A hand-written SiLU MLP (inp, act_in, hid, act_hid, out) predicting the ground temperature in a frost hollow (standardised) from ten readings of sky cover, wind and air temperature, RMSprop at 1e-3, MSE, 260 steps. The loader applies the logger's gain correction (x1.012) with an in-place *= on a calibration factor it caches between batches instead of once, so the correction compounds and every batch's target is 1.2% larger than the last (about 20x by the end): the net fits at first, then the drifting target outruns it and the loss climbs slowly and steadily from its minimum, finite throughout.",
)
def h343_frost_hollow_compounding_gain(ctx: Context) -> None:
    gen = seeded(34306)
    model = ThreeLayer(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    calib = {"gain": 1.0}
    gains = []

    def alter(step, x, y):
        calib["gain"] *= 1.012  # meant: gain = 1.012, once
        gains.append(calib["gain"])
        return x, y * calib["gain"]

    _train(ctx, model, opt, _smooth_target(gen, 64, 10, 3433), 260, F.mse_loss, alter=alter)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, 120, 10))
    ctx.check("the loss fell at first", low < 0.6 * _mean(ls[:10]))
    ctx.check("the last 20 steps' loss is over 5x the early minimum", _mean(ls[-20:]) > 5 * low)
    ctx.check(
        "the loss climbs steadily (each 40-step window above the one before, from step 100)",
        all(_mean(ls[a + 40 : a + 80]) > _mean(ls[a : a + 40]) for a in range(100, 220, 40)),
    )
    ctx.check(
        "no single step jumps over 3x the step before (a slow climb)",
        all(b < 3 * a for a, b in zip(ls[100:], ls[101:], strict=False)),
    )
    ctx.check("the target's scale grew over 10x", gains[-1] > 10 * gains[0])
    ctx.check("finite throughout", _finite(ls))


# -- handbell peal: a resume reloads a stale checkpoint -------------------------------------------


ONSET_HB = 150


@scenario(
    family="handbell_peal_fault_checkpoint_rollback_classifier",
    optimizer="Adamax",
    cause="loss_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_HB,
    note="A hand-written ReLU MLP (inp, act_in, hid, act_hid, out) naming the fault in a handbell peal (eight kinds: clash, hawkish lead, late backstroke, ...) from sixteen timing readings, Adamax at 1e-2, cross-entropy, 260 steps. The job is pre-empted after step 149 and resumed; the resume logic loads the model weights from the checkpoint the 'latest' pointer names, which was never updated after step 10, while the optimizer state and the data stream carry on: at step 150 the loss jumps back to its step-10 level, the gradient stays ordinary, and the run recovers its fit over the following steps.",
)
def h343_handbell_stale_checkpoint(ctx: Context) -> None:
    gen = seeded(34307)
    model = ThreeLayer(16, 64, 8)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    saved = {}

    def after(step):
        if step == 10:
            saved["latest"] = {k: v.clone() for k, v in model.state_dict().items()}

    def before(step):
        if step == ONSET_HB:  # resume: 'latest' still points at step 10
            model.load_state_dict(saved["latest"])

    _train(
        ctx,
        model,
        opt,
        _clusters(gen, 64, 16, 8, 3434, spread=1.0),
        260,
        F.cross_entropy,
        classifier=True,
        before=before,
        after=after,
    )
    pre_l = _mean(ctx.losses[ONSET_HB - 40 : ONSET_HB])
    pre_g = _median(ctx.grad_norms[ONSET_HB - 20 : ONSET_HB])
    ctx.check(
        "the loss at the onset is over 3x the 40 steps before", ctx.losses[ONSET_HB] > 3 * pre_l
    )
    ctx.check(
        "the gradient at the onset is within 10x the steps before",
        ctx.grad_norms[ONSET_HB] < 10 * pre_g,
    )
    ctx.check(
        "the last 20 steps' loss is within 1.2x of the 40 steps before the onset",
        _mean(ctx.losses[-20:]) < 1.2 * pre_l,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- river ice: one shard carries the -9999 missing-value sentinel in its targets ----------------


ONSET_RI = 110


@scenario(
    family="river_ice_breakup_sentinel_shard_regressor",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_RI,
    note="A hand-written GELU MLP (inp, act_in, hid, act_hid, out) predicting a river's ice breakup day (standardised) from twelve winter readings (degree days, snow depth, discharge), SGD with momentum 0.9 at 1e-2, gradient clipping at 1.0, MSE, 220 steps. The shard loaded at step 110 comes from a gauge whose missing ice-thickness values were written as the sentinel -9999 and never masked, so six rows of that batch carry a target of -9999: that one batch's loss is millions of times the run's and its gradient far above it (clipping bounds the update), and ordinary batches afterwards bring the loss back down.",
)
def h343_river_ice_sentinel_targets(ctx: Context) -> None:
    gen = seeded(34308)
    model = ThreeLayer(12, 64, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    lows = []

    def alter(step, x, y):
        if step == ONSET_RI:
            y = y.clone()
            y[:6] = -9999.0
        lows.append(float(y.min()))
        return x, y

    _train(
        ctx,
        model,
        opt,
        _smooth_target(gen, 64, 12, 3435),
        220,
        F.mse_loss,
        alter=alter,
        clip=1.0,
    )
    pre_g = _median(ctx.grad_norms[ONSET_RI - 20 : ONSET_RI])
    pre_l = _mean(ctx.losses[ONSET_RI - 10 : ONSET_RI])
    ctx.check("only the onset batch holds the sentinel", sum(v < -100 for v in lows) == 1)
    ctx.check(
        "the gradient at the onset is over 50x the steps before",
        ctx.grad_norms[ONSET_RI] > 50 * pre_g,
    )
    ctx.check(
        "the loss at the onset is over 1000x the steps before", ctx.losses[ONSET_RI] > 1000 * pre_l
    )
    ctx.check(
        "the last 20 steps' loss is within 2x of before the onset",
        _mean(ctx.losses[-20:]) < 2 * pre_l,
    )
    ctx.check("finite throughout", _finite(ctx.losses))


# -- dragonfly survey: the presence code 2 is passed straight to BCE -----------------------------


def _ponds(gen, batch, seed):
    """Twelve standardised pond readings; six species, presence coded 0 (absent) / 2 (present)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 6, generator=g)
    while True:
        x = torch.randn(batch, 12, generator=gen)
        seen = (x @ w) / math.sqrt(12) + 0.3 * torch.randn(batch, 6, generator=gen) > 0
        yield x, 2.0 * seen.float()  # the survey sheet's code; meant seen.float()


@scenario(
    family="dragonfly_pond_survey_presence_bce_tagger",
    optimizer="SGD",
    cause="output_logit_divergence",
    where=("out",),
    diverges=None,
    heldout=True,
    note="A hand-written ReLU MLP (inp, act_in, hid, act_hid, out) tagging which of six dragonfly species a pond survey found (multi-label, BCE with logits) from twelve readings (pH, shade, emergent plants, ...), plain SGD at 0.05, 200 steps. The survey sheet codes presence as 2 (0 absent) and the loader passes the code straight to BCE as the target: for a target of 2 the loss -2 log s(z) - (1-2) log(1-s(z)) has no minimum and falls like -z, so the output head's logits for present species are pushed up without bound and the loss goes below zero and keeps falling; it stays finite.",
)
def h343_dragonfly_presence_code_two(ctx: Context) -> None:
    gen = seeded(34309)
    model = ThreeLayer(12, 64, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    peaks = []

    def watch(step, out, x, y):
        peaks.append(float(out.detach().abs().max()))

    _train(
        ctx,
        model,
        opt,
        _ponds(gen, 64, 3436),
        200,
        F.binary_cross_entropy_with_logits,
        watch=watch,
    )
    ctx.check("the largest logit grew over 20x", _mean(peaks[-10:]) > 20 * _mean(peaks[:5]))
    ctx.check(
        "the logits still grow at the end (last 20 steps above the 20 before)",
        _mean(peaks[-20:]) > 1.1 * _mean(peaks[-40:-20]),
    )
    ctx.check("the loss is below zero late in the run", _mean(ctx.losses[-20:]) < 0.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- beehive overwinter: the Weibull shape goes through a ReLU, not a softplus -------------------


class ColonySurvival(nn.Module):
    """A ReLU trunk with a Weibull scale head and shape head for a colony's time to loss."""

    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.act_in = nn.ReLU()
        self.hid = nn.Linear(hidden, hidden)
        self.act_hid = nn.ReLU()
        self.scale_head = nn.Linear(hidden, 1)
        self.shape_head = nn.Linear(hidden, 1)
        self.shape_act = nn.ReLU()  # meant nn.Softplus()

    def forward(self, x):
        h = self.act_hid(self.hid(self.act_in(self.inp(x))))
        log_scale = self.scale_head(h)
        shape = self.shape_act(self.shape_head(h))
        return torch.cat([log_scale, shape], -1)


def _colonies(gen, batch, seed, horizon=26.0):
    """Ten readings (mite load, stores, cluster size, ...); weeks to colony loss, Weibull with
    shape 0.35 (most losses early, in the autumn mite crash), censored at the end of winter (26 weeks)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        scale = torch.exp(2.8 + 0.8 * torch.tanh(x @ w / math.sqrt(10)))
        u = torch.rand(batch, generator=gen).clamp_min(1e-6)
        t = scale * (-torch.log(u)) ** (1 / 0.35)
        event = (t < horizon).float()
        yield x, torch.stack([t.clamp(max=horizon).clamp_min(0.05), event], -1)


def _weibull_nll(out, target):
    log_scale, k = out[:, 0], out[:, 1]
    t, event = target[:, 0], target[:, 1]
    z = torch.log(t) - log_scale
    log_hazard = torch.log(k) - log_scale + (k - 1) * z
    cum_hazard = torch.exp(k * z)
    return (cum_hazard - event * log_hazard).mean()


DIV_BH = 44


@scenario(
    family="beehive_colony_overwinter_weibull_survival_net",
    optimizer="Adam",
    cause="nonfinite",
    where=("shape_head", "shape_act"),
    diverges=DIV_BH,
    heldout=True,
    note="A hand-written ReLU MLP (inp, act_in, hid, act_hid, scale_head, shape_head, shape_act) modelling a honeybee colony's weeks to loss over winter as Weibull with right censoring at 26 weeks, from ten readings (mite load, stores, cluster size, ...), Adam at 1e-3, the censored Weibull negative log-likelihood written by hand (cumulative hazard minus event times log hazard), 200 steps planned, shape_head's bias started at 1.0 (shape about 1). The shape k is meant to go through a softplus and went through a ReLU: the data's true shape is 0.35 (most colonies are lost early, in the autumn mite crash), the likelihood pushes k down, one event row's shape_head output crosses zero, the ReLU returns exactly 0 and log(k) is log 0: the loss is inf at step 44 and the run stops there.",
)
def h343_beehive_weibull_shape_relu(ctx: Context) -> None:
    gen = seeded(34310)
    model = ColonySurvival()
    with torch.no_grad():
        model.shape_head.bias.fill_(1.0)
        model.shape_head.weight.mul_(0.1)
        model.scale_head.bias.fill_(2.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    low = []

    def watch(step, out, x, y):
        low.append(float(out.detach()[:, 1][y[:, 1] > 0].min()))

    n = _train(ctx, model, opt, _colonies(gen, 64, 3437), 200, _weibull_nll, watch=watch)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite at the step it stops", bad is not None and bad == n - 1)
    ctx.check("an event row's shape is exactly 0 at that step", low[-1] == 0.0)
    ctx.check("every event row's shape was positive at step 0", low[0] > 0.0)
    ctx.check("the run stops at the declared step", bad == DIV_BH)


# -- controls -------------------------------------------------------------------------------------


class FruitingCounts(nn.Module):
    """A GELU trunk with a log-mean head and a dispersion head for a negative-binomial count."""

    def __init__(self, d_in=9, hidden=48):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.act_in = nn.GELU()
        self.hid = nn.Linear(hidden, hidden)
        self.act_hid = nn.GELU()
        self.rate_head = nn.Linear(hidden, 1)
        self.disp_head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act_hid(self.hid(self.act_in(self.inp(x))))
        return torch.cat([self.rate_head(h), self.disp_head(h)], -1)


def _nb_nll(out, y):
    """Negative-binomial NLL with mean mu and dispersion r, clamped the careful way."""
    log_mu = out[:, 0].clamp(-8.0, 8.0)
    r = F.softplus(out[:, 1]).clamp(1e-3, 1e3) + 1e-4
    log_r_mu = torch.logaddexp(torch.log(r), log_mu)
    ll = (
        torch.lgamma(y + r)
        - torch.lgamma(r)
        - torch.lgamma(y + 1)
        + r * (torch.log(r) - log_r_mu)
        + y * (log_mu - log_r_mu)
    )
    return -ll.mean()


def _fruiting(gen, batch, seed):
    """Nine readings of a fairy ring's night (soil moisture, temperature, days since rain);
    mushrooms fruiting that night, negative binomial (gamma-Poisson) with dispersion 3."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(9, generator=g)
    while True:
        x = torch.randn(batch, 9, generator=gen)
        mu = torch.exp(1.8 + 0.9 * torch.tanh(x @ w / math.sqrt(9)))
        lam = torch._standard_gamma(torch.full((batch,), 3.0), generator=gen) / 3.0 * mu
        yield x, torch.poisson(lam, generator=gen)


@scenario(
    family="fairy_ring_fruiting_negative_binomial_net",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written GELU MLP (inp, act_in, hid, act_hid, rate_head, disp_head) predicting how many mushrooms a fairy ring fruits in a night (over-dispersed counts, mean about 6) from nine readings, the negative-binomial log-likelihood written by hand with careful clamps (log-mean clamped to [-8, 8], dispersion softplus clamped to [1e-3, 1e3] plus 1e-4, log(r + mu) by logaddexp), AdamW at 3e-3 (weight decay 0.01) under OneCycleLR, gradient clipping at 5.0, noisy batches of 64, 220 steps. It trains normally.",
)
def h343_fairy_ring_negative_binomial_control(ctx: Context) -> None:
    gen = seeded(34311)
    model = FruitingCounts()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=220)
    _train(ctx, model, opt, _fruiting(gen, 64, 3438), 220, _nb_nll, clip=5.0, sched=sched)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("finite throughout", _finite(ctx.losses))


class BolStrokeNet(nn.Module):
    """A ReLU Conv1d classifier of a tabla stroke's two-channel pickup trace (64 samples)."""

    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 16, 7, padding=3)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x)), 2)
        return self.head(F.relu(self.conv2(h)).mean(-1))


def _bols(gen, batch, classes, seed, length=64):
    """Stroke traces: each bol has its own pitch, decay and dayan/bayan balance."""
    g = torch.Generator().manual_seed(seed)
    pitch = 0.2 + 0.8 * torch.rand(classes, generator=g)
    decay = 0.02 + 0.15 * torch.rand(classes, generator=g)
    balance = torch.rand(classes, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        env = torch.exp(-decay[y][:, None] * t)
        ring = env * torch.sin(pitch[y][:, None] * t + phase)
        x = torch.stack([balance[y][:, None] * ring, (1 - balance[y][:, None]) * env], 1)
        yield x + 0.25 * torch.randn(batch, 2, length, generator=gen), y


@scenario(
    family="tabla_bol_stroke_label_smoothed_conv1d_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written ReLU Conv1d classifier (conv1, conv2, head) naming a tabla bol (six strokes) from a two-channel pickup trace (dayan, bayan), Adagrad at 0.05 under CosineAnnealingLR, cross-entropy with label smoothing 0.1, noisy batches of 64, 200 steps. It trains normally.",
)
def h343_tabla_bol_conv1d_control(ctx: Context) -> None:
    gen = seeded(34312)
    model = BolStrokeNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=200)
    batches = _bols(gen, 64, 6, 3439)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _train(ctx, model, opt, batches, 200, loss_fn, classifier=True, sched=sched)
    x, y = next(batches)
    with torch.no_grad():
        acc = float((model(x).argmax(-1) == y).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("held-out accuracy over 60%", acc > 0.6)
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="kite_surf_jump_airtime_fp16_accumulation_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Control: a hand-written SiLU MLP (inp, act_in, hid, act_hid, out) predicting a kitesurfer's jump airtime (standardised) from ten readings (wind, kite size, board speed, ...), Adam at 2e-3, fp16 autocast with a torch.amp.GradScaler, gradient accumulation over 2 micro-batches, clipping at 1.0 (after unscale_), a 20-step linear warm-up then StepLR halving every 60 steps, Huber loss, noisy batches, 180 steps. It trains normally.",
)
def h343_kite_surf_fp16_control(ctx: Context) -> None:
    gen = seeded(34313)
    model = ThreeLayer(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu")
    warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))
    decay = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=0.5)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, decay], milestones=[20])
    _train(
        ctx,
        model,
        opt,
        _smooth_target(gen, 32, 10, 3440, noise=0.15),
        180,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("finite throughout", _finite(ctx.losses))
