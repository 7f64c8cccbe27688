"""Held-out set 511 (``h511_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a shruti-box drone-reed classifier whose loss is written -logit[target] with the
log-softmax forgotten (output logits grow, Adamax); an oystercatcher mussel-hammering tanh
regressor whose validation hook leaves one step's loss multiplied by 1e6 (Adam's second moment
poisoned, Adam); a steeplechase water-jump full-batch tanh regressor whose linear warm-up has its end
factor typed 10 for 1.0 (past 2/sharpness, SGD); a pyroclastic-surge run-out net taking sqrt
of a flow depth with no clamp (sqrt of a negative, RMSprop); a clockmaker escapement two-group
regressor whose fc1 group lr is typed 1e-9 (Adagrad); a toboggan-run split-time regressor fed one
shard in milliseconds (AdamW); a mushing sled-dog pace regressor whose resumed step forgets to
divide its weighted loss by the weight sum (SGD Nesterov); a morin-khuur bow-tone classifier whose
temperature is typed 0.002 for 2.0 (NAdam); a glazier lead-came stretch regressor whose L2 penalty
is subtracted (RAdam); a kobza tremolo hand-written Elman RNN with recurrent gain 2.5 (SGD
momentum).

Controls: a cryoseism frost-quake 1-D classifier with hand-written dynamic convolutions (AdamW,
OneCycleLR, label smoothing, clipping); a chuckwagon barrel-turn regressor whose warm-up + cosine
schedule anneals the rate to exactly 0 at the last step (Adam); a gusli string-decay Huber
regressor under fp16 autocast + GradScaler (SGD momentum, two param groups, ReduceLROnPlateau,
accumulation 2, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()]).clone()


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
    total=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
):
    """The file's loop. ``before(step)`` first; ``alter(step, x, y)`` changes a batch;
    ``total(step, out, y, loss)`` gives the backpropagated loss (the loss by default);
    ``after(step, loss)`` runs after the optimizer step. Stops after a non-finite loss once
    ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
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
            out = model(x)
            loss = loss_fn(out, y)
            back = total(step, out, y, loss) if total is not None else loss
            (back / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step, shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.4 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = act()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = act()
        self.head = nn.Linear(hidden, out)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _sharpness(model, loss_fn, iters=12):
    """Top Hessian eigenvalue of the full-batch loss by power iteration."""
    params = list(model.parameters())
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- 1. output logit divergence: the loss is -logit[target], log_softmax forgotten -----------------


@scenario(
    family="shruti_box_drone_reed_raw_logit_classifier",
    optimizer="Adamax",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Shruti-box drone-reed classifier (ReLU MLP on bellows pressure, reed-tongue gap and "
    "chamber resonance features, 6 reed sets, Adamax lr 1e-2). The loss is written "
    "-logits.gather(1, y).mean() with the log_softmax forgotten: nothing bounds it below, the "
    "head's logits grow without limit and the logged loss falls forever.",
)
def h511_shruti_raw_logit(ctx) -> None:
    gen = seeded(5111)
    model = _Net(12, 48, 6)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    xp, _ = next(_grades(torch.Generator().manual_seed(1), 256, 12, 6, 5111))
    peaks = []

    def after(step, loss):
        with torch.no_grad():
            peaks.append(float(model(xp).abs().max()))

    def raw(out, y):
        return -out.gather(1, y[:, None]).mean()  # meant F.cross_entropy(out, y)

    with torch.no_grad():
        p0 = float(model(xp).abs().max())
    losses, _ = _train(
        ctx, model, opt, _grades(gen, 64, 12, 6, 5111), 200, raw, classifier=True, after=after
    )
    n = len(peaks)
    ctx.check("max |logit| grew over 20x", peaks[-1] > 20 * p0)
    ctx.check("and is still growing (last over 1.2x at 3/4)", peaks[-1] > 1.2 * peaks[3 * n // 4])
    ctx.check("the logged loss fell below -20 (unbounded)", losses[-1] < -20)
    ctx.check("finite", _finite(losses))


# -- 2. Adam's second moment poisoned: a validation hook leaves the loss scaled by 1e6 -------------

OYSTER_ONSET = 100


@scenario(
    family="oystercatcher_mussel_hammer_time_tanh_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=OYSTER_ONSET,
    note="Oystercatcher mussel-hammering time regressor (tanh MLP on shell length, byssus "
    "strength, tide phase and bird age features, MSE, Adam lr 1e-3 beta2 0.999). A validation "
    "hook that multiplies the loss by 1e6 to print it in parts per million leaves the factor on "
    "for the training backward at step 100: one gradient 1e6x the usual fills Adam's v; for hundreds "
    "of steps after, the ordinary gradients divided by sqrt(v) give tiny updates and the loss "
    "stalls.",
)
def h511_oystercatcher_poisoned_v(ctx) -> None:
    gen = seeded(5112)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    k = OYSTER_ONSET
    snaps, vmed, moves = {}, {}, {}

    def total(step, out, y, loss):
        return loss * 1e6 if step == k else loss  # the hook's ppm scale left on

    def after(step, loss):
        now = _flat(model)
        if "last" in snaps:
            moves[step] = float((now - snaps["last"]).norm())
        snaps["last"] = now
        if step in (k - 1, k + 1):
            vmed[step] = float(
                torch.cat([opt.state[p]["exp_avg_sq"].flatten() for p in model.parameters()])
                .sqrt()
                .median()
            )

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5112), 220, F.mse_loss, total=total, after=after
    )
    before = _mean([moves[s] for s in range(k - 20, k)])
    later = _mean([moves[s] for s in range(k + 50, k + 70)])
    others = norms[k - 40 : k] + norms[k + 1 : k + 40]
    ctx.check("gradient at the hook over 1e3x the median", norms[k] > 1e3 * _median(others))
    ctx.check("Adam's median sqrt(v) over 30x after", vmed[k + 1] > 30 * vmed[k - 1])
    ctx.check("mean update size at k+50..70 under 0.2x k-20..k", later < 0.2 * before)
    ctx.check("trained before (under 0.7x the start)", _mean(losses[k - 10 : k]) < 0.7 * losses[0])
    ctx.check("finite", _finite(losses))


# -- 3. sharpness above the limit: LinearLR warm-up end_factor typed 10 for 1.0 --------------------

STEEPLE_ONSET = 31


@scenario(
    family="steeplechase_water_jump_landing_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=STEEPLE_ONSET,
    note="Steeplechase water-jump landing-distance regressor (tanh MLP on take-off speed, "
    "barrier foot angle, stride count and fatigue features, 256 fixed jumps full-batch, MSE, "
    "plain SGD at base lr 0.5/sharpness). Its hand-written linear warm-up (LambdaLR) has its end "
    "factor typed 10.0 for 1.0: the lr climbs from 0.05/sharpness to 5/sharpness over 100 steps, passes 2/sharpness "
    "around step 31 and the full-batch loss oscillates and blows up.",
)
def h511_steeplechase_warmup_factor(ctx) -> None:
    gen = seeded(5113)
    model = _Net(8, 32, 1, act=nn.Tanh)
    x, y = next(_readings(gen, 256, 8, 5113, noise=0.0))
    lam0 = _sharpness(model, lambda: F.mse_loss(model(x), y))
    opt = torch.optim.SGD(model.parameters(), lr=0.5 / lam0)
    peak = 10.0  # the warm-up's end factor, meant 1.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 + (peak - 0.1) * min(s / 100, 1.0))
    ctx.attach(model, opt)
    losses, products = [], {}
    for step in range(200):
        if step % 10 == 0:
            lam = _sharpness(model, lambda: F.mse_loss(model(x), y))
            products[step] = opt.param_groups[0]["lr"] * lam
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]) or losses[-1] > 1e6:
            break
    k = STEEPLE_ONSET
    low = min(losses[:k])
    ctx.check("lr * sharpness under 2 before the onset (step 30)", products[30] < 2)
    ctx.check("lr * sharpness over 2 just after it (step 40)", products[40] > 2)
    ctx.check("trained first (best under 0.6x the start)", low < 0.6 * losses[0])
    ctx.check(
        "the loss blew up (over 100x its best, or non-finite)",
        not _finite(losses) or max(losses[k:]) > 100 * low,
    )


# -- 4. nonfinite: sqrt of a flow depth with no clamp ----------------------------------------------

SURGE_NAN = 90


class _Celerity(nn.Module):
    """Gravity-current front speed sqrt(g' h) from the flow depth column."""

    def forward(self, x):
        speed = torch.sqrt(9.81 * 0.3 * x[:, :1])  # meant x[:, :1].clamp_min(0.0)
        return torch.cat([speed, x[:, 1:]], 1)


class _SurgeNet(nn.Module):
    def __init__(self, d_in=7, hidden=40):
        super().__init__()
        self.celerity = _Celerity()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.head(self.act(self.fc1(self.celerity(x))))


def _surge_batches(gen, batch=64, d_in=7, seed=5114):
    """Flow depth in metres (first column, 0.5-4 m) and six standardised slope/density features;
    run-out in km with a heteroscedastic spread."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in - 1, generator=g) / math.sqrt(d_in)
    while True:
        depth = 0.5 + 3.5 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, d_in - 1, generator=gen)
        mean = 0.6 * torch.sqrt(depth[:, 0]) + torch.tanh(rest @ w)
        y = mean + 0.1 * torch.randn(batch, generator=gen)
        yield torch.cat([depth, rest], 1), y


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, F.softplus(out[:, 1]) + 1e-3)


@scenario(
    family="pyroclastic_surge_runout_sqrt_celerity_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("celerity",),
    diverges=SURGE_NAN,
    heldout=True,
    onset=SURGE_NAN,
    note="Pyroclastic-surge run-out net (front speed sqrt(g' h) from the flow depth, then a SiLU "
    "MLP, Gaussian NLL on the run-out, RMSprop). The celerity module has no clamp (meant "
    "sqrt(max(h, 0))): at step 90 a radar whose datum was reset reports a depth of -0.4 m, "
    "sqrt of a negative is NaN and the loss is NaN at step 90.",
)
def h511_surge_sqrt_negative(ctx) -> None:
    gen = seeded(5114)
    model = _SurgeNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == SURGE_NAN:
            x = x.clone()
            x[11, 0] = -0.4  # the reset datum
            with torch.no_grad():
                seen["nan_out"] = bool(torch.isnan(model.celerity(x)).any())
        return x, y

    losses, _ = _train(ctx, model, opt, _surge_batches(gen), 160, _gauss_nll, alter=alter)
    ctx.check("sqrt produced NaN in celerity at the onset", seen.get("nan_out", False))
    ctx.check(
        "the loss is NaN at step 90", len(losses) > SURGE_NAN and math.isnan(losses[SURGE_NAN])
    )
    ctx.check("finite before", _finite(losses[:SURGE_NAN]))
    ctx.check(
        "trained before", _mean(losses[SURGE_NAN - 10 : SURGE_NAN]) < _mean(losses[:10]) - 0.3
    )


# -- 5. update ratio out of range: fc1's param group lr typed 1e-9 ---------------------------------


@scenario(
    family="clockmaker_escapement_beat_two_group_relu_regressor",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Clockmaker escapement beat-error regressor (ReLU MLP on pallet depth, impulse angle, "
    "pendulum length and oil-age features, MSE, Adagrad with two param groups: fc1 and the "
    "rest). fc1's group lr is typed 1e-9 for 1e-2: fc1 never moves (updates ~1e-9 of its "
    "weights) while the other layers train; the loss falls only as far as the random fc1 "
    "features allow.",
)
def h511_clockmaker_group_lr(ctx) -> None:
    gen = seeded(5115)
    model = _Net(10, 48, 1)
    opt = torch.optim.Adagrad(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},  # meant 1e-2
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 1e-2},
        ]
    )
    w1, w2 = model.fc1.weight.detach().clone(), model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5115), 200, F.mse_loss)
    r1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    r2 = float((model.fc2.weight.detach() - w2).norm() / w2.norm())
    ctx.check("fc1 moved under 1e-6 of its norm", r1 < 1e-6)
    ctx.check("fc2 moved over 5% of its norm", r2 > 0.05)
    ctx.check("finite", _finite(losses))


# -- 6. data outlier: one shard of split times in milliseconds -------------------------------------

TOBOGGAN_ONSET = 120


@scenario(
    family="toboggan_run_split_time_silu_regressor",
    optimizer="AdamW",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=TOBOGGAN_ONSET,
    note="Toboggan-run split-time regressor (SiLU MLP on runner wax, snow temperature, crew "
    "mass and corner-banking features, MSE, AdamW, clipping at norm 1). The shard served at "
    "step 120 came from a timing gate logging milliseconds instead of seconds: its targets are "
    "1000x, the loss and the gradient jump, clipping holds the step and the run recovers.",
)
def h511_toboggan_ms_shard(ctx) -> None:
    gen = seeded(5116)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    k = TOBOGGAN_ONSET

    def alter(step, x, y):
        return (x, y * 1000.0) if step == k else (x, y)

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 64, 10, 5116), 240, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _mean(losses[k - 20 : k])
    ctx.check("the loss at the shard over 1000x", losses[k] > 1000 * pre)
    ctx.check(
        "the gradient at the shard over 20x the median", norms[k] > 20 * _median(norms[k - 40 : k])
    )
    ctx.check("trained before (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("recovered (last 20 under 2x pre)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 7. gradient spike: the resumed step forgets to divide by the weight sum -----------------------

MUSHING_ONSET = 110


@scenario(
    family="mushing_sled_dog_pace_weighted_gelu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=MUSHING_ONSET,
    note="Mushing sled-dog pace regressor (GELU MLP on trail grade, snow firmness, team size "
    "and dog age features, per-sample weights by checkpoint reliability, SGD Nesterov momentum "
    "0.9, clipping at norm 2). The step after a resume at 110 runs an older loss path that "
    "returns (w * l).sum() without dividing by w.sum(): one gradient ~100x the usual while the "
    "logged (weighted mean) loss is ordinary; clipping holds the update.",
)
def h511_mushing_weight_sum(ctx) -> None:
    gen = seeded(5117)
    model = _Net(10, 48, 1, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=2e-2, momentum=0.9, nesterov=True)
    k = MUSHING_ONSET
    wgen = torch.Generator().manual_seed(51170)

    def weighted(out, y):
        w = 0.5 + torch.rand(len(y), generator=wgen)
        weighted.w = w
        per = (out - y) ** 2
        return (w * per).sum() / w.sum()

    def total(step, out, y, loss):
        if step == k:
            return (weighted.w * (out - y) ** 2).sum()  # the old path: no / w.sum()
        return loss

    losses, norms = _train(
        ctx, model, opt, _readings(gen, 128, 10, 5117), 220, weighted, total=total, clip=2.0
    )
    others = norms[k - 40 : k] + norms[k + 1 : k + 40]
    pre = _mean(losses[k - 20 : k])
    ctx.check("the gradient at the resume over 30x the median", norms[k] > 30 * _median(others))
    ctx.check("the logged loss at the resume is ordinary (under 2x)", losses[k] < 2 * pre)
    ctx.check("trained before (under 0.5x the start)", pre < 0.5 * _mean(losses[:10]))
    ctx.check("no divergence afterwards (last 20 under 2x pre)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 8. softmax collapse: temperature typed 0.002 for 2.0 ------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, out, temperature):
        super().__init__(d_in, hidden, out, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="morin_khuur_bow_tone_temperature_gelu_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Morin khuur (horsehead fiddle) bow-tone classifier (GELU MLP on bow pressure, "
    "rosin, horsehair tension and overtone features, 8 tone classes, cross-entropy, NAdam). "
    "The softmax temperature is typed 0.002 for 2.0: logits are divided by 0.002, the "
    "softmax saturates and most rows' target probability rounds to exactly 1.0 in float32.",
)
def h511_morin_khuur_temperature(ctx) -> None:
    gen = seeded(5118)
    model = _TempNet(12, 48, 8, temperature=0.002)  # meant 2.0
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 8, 5118, spread=0.8),
        150,
        F.cross_entropy,
        classifier=True,
    )
    x, y = next(_grades(torch.Generator().manual_seed(7), 256, 12, 8, 5118, spread=0.8))
    with torch.no_grad():
        logits = model(x)
    ctx.check(
        "over half the rows' target probability exactly 1.0", collapsed_fraction(logits, y) > 0.5
    )
    ctx.check(
        "under 5% at temperature 2.0",
        collapsed_fraction(logits * 0.002 / 2.0, y) < 0.05,
    )
    ctx.check("finite", _finite(losses))


# -- 9. loss divergence: the L2 penalty is subtracted ------------------------------------------------


@scenario(
    family="glazier_lead_came_stretch_l2_sign_silu_regressor",
    optimizer="RAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Glazier lead-came stretch regressor (SiLU MLP on came width, heart thickness, "
    "antimony content and stretching-vice pull features, MSE, RAdam lr 5e-3). The hand-written L2 "
    "penalty (wd 0.2) is subtracted (loss - wd * sum ||w||^2): once the fit is made the weights inflate "
    "and the loss climbs slowly, no spike, no NaN.",
)
def h511_glazier_l2_sign(ctx) -> None:
    gen = seeded(5119)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=5e-3)
    wd = 2e-1
    n0 = float(_flat(model).norm())

    def total(step, out, y, loss):
        return loss - wd * sum((p**2).sum() for p in model.parameters())  # meant +

    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 5119), 300, F.mse_loss, total=total)
    n1 = float(_flat(model).norm())
    best = min(range(len(losses) - 10), key=lambda i: _mean(losses[i : i + 10]))
    low = _mean(losses[best : best + 10])
    jumps = max(b / max(a, 1e-8) for a, b in zip(losses[:-1], losses[1:], strict=True))
    ctx.check("it first trained (best 10 under 0.5x the start)", low < 0.5 * _mean(losses[:10]))
    ctx.check("then climbed (last 20 over 2x the best 10)", _mean(losses[-20:]) > 2 * low)
    ctx.check("the weights inflated over 1.5x", n1 > 1.5 * n0)
    ctx.check("no NaN", _finite(losses))
    ctx.check("no single-step jump over 10x", jumps < 10)


# -- 10. exploding gradients: a hand-written Elman RNN with recurrent gain 2.5 ---------------------


class _ElmanCell(nn.Module):
    def __init__(self, d_in, hidden, gain):
        super().__init__()
        self.w_ih = nn.Linear(d_in, hidden)
        self.w_hh = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.w_hh.weight, gain=gain)

    def forward(self, x, h):
        return torch.tanh(self.w_ih(x) + self.w_hh(h))


class _Tremolo(nn.Module):
    def __init__(self, d_in=4, hidden=32, gain=2.5):
        super().__init__()
        self.cell = _ElmanCell(d_in, hidden, gain)
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.cell.w_hh.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _tremolo_batches(gen, batch=32, length=30, d_in=4):
    """Plucking-force traces of a kobza tremolo; the target is the mean force of the first
    frames (a long-range dependency)."""
    while True:
        x = 0.5 * torch.randn(batch, length, d_in, generator=gen)
        yield x, x[:, :5, 0].mean(1) * 2.0


@scenario(
    family="kobza_tremolo_pluck_force_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("cell.w_hh", "cell"),
    diverges=None,
    heldout=True,
    note="Kobza tremolo pluck-force regressor, a hand-written Elman RNN (tanh) over 30 frames "
    "of plucking-force traces, MSE, SGD momentum 0.9. The recurrent weights are initialised "
    "orthogonal with gain 2.5 (meant 1.0): dL/dh grows back through time, the first frames' "
    "gradient is orders of magnitude above the last's and training never gets going.",
)
def h511_kobza_recurrent_gain(ctx) -> None:
    gen = seeded(5120)
    model = _Tremolo()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    batches = _tremolo_batches(gen)
    ratio = {}

    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        if step == 0:
            g0 = float(model.states[0].grad.norm())
            g1 = float(model.states[-1].grad.norm())
            ratio["first_last"] = g0 / g1
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("dL/dh at the first frame over 10x the last", ratio["first_last"] > 10)
    ctx.check(
        "never beat the mean predictor by much (last 20 over 0.7x the target variance 0.2)",
        not _finite(losses) or _mean(losses[-20:]) > 0.7 * 0.2,
    )


# -- 11. control: a 1-D classifier with hand-written dynamic convolutions ----------------------------


class _DynamicConv1d(nn.Module):
    """K candidate kernels mixed per input by an attention over them (squeeze: mean over time,
    a small MLP, softmax with temperature), then one grouped convolution per batch."""

    def __init__(self, c_in, c_out, k, kernels=4, temperature=4.0):
        super().__init__()
        self.c_in, self.c_out, self.k, self.kernels = c_in, c_out, k, kernels
        self.weight = nn.Parameter(torch.randn(kernels, c_out, c_in, k) / math.sqrt(c_in * k))
        self.bias = nn.Parameter(torch.zeros(kernels, c_out))
        self.attn_fc1 = nn.Linear(c_in, max(4, c_in // 2))
        self.attn_fc2 = nn.Linear(max(4, c_in // 2), kernels)
        self.temperature = temperature
        self.last_attention = None

    def forward(self, x):
        b, _, t = x.shape
        a = torch.softmax(
            self.attn_fc2(F.relu(self.attn_fc1(x.mean(-1)))) / self.temperature, dim=-1
        )
        self.last_attention = a.detach()
        w = torch.einsum("bk,koil->boil", a, self.weight).reshape(b * self.c_out, self.c_in, self.k)
        bias = (a @ self.bias).reshape(-1)
        y = F.conv1d(x.reshape(1, b * self.c_in, t), w, bias, padding=self.k // 2, groups=b)
        return y.reshape(b, self.c_out, -1)


class _FrostQuakeNet(nn.Module):
    def __init__(self, classes=4, width=16):
        super().__init__()
        self.dyn1 = _DynamicConv1d(1, width, 7)
        self.bn1 = nn.BatchNorm1d(width)
        self.dyn2 = _DynamicConv1d(width, width, 5)
        self.bn2 = nn.BatchNorm1d(width)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        h = F.relu(self.bn1(self.dyn1(x[:, None])))
        h = F.max_pool1d(h, 2)
        h = F.relu(self.bn2(self.dyn2(h)))
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], 1))


def _frost_quake_traces(gen, batch=32, length=64):
    """Geophone traces of four event kinds: frost quake (sharp onset, fast decay), ice-crack
    ringing, tree crack (double pulse), traffic rumble (slow, broadband); noisy."""
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        onset = torch.randint(5, 30, (batch, 1), generator=gen).float()
        dt = (t[None] - onset).clamp_min(0)
        on = (t[None] >= onset).float()
        freq = 0.2 + 0.4 * torch.rand(batch, 1, generator=gen)
        kinds = torch.stack(
            [
                on * torch.exp(-dt / 3) * torch.sin(freq * 3 * dt),
                on * torch.exp(-dt / 15) * torch.sin(freq * dt),
                on * (torch.exp(-dt / 2) + torch.exp(-((dt - 12).clamp_min(0)) / 2) * (dt > 12)),
                0.6 * torch.sin(0.15 * t[None] + 6 * torch.rand(batch, 1, generator=gen)),
            ],
            1,
        )
        x = kinds[torch.arange(batch), y] + 0.3 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="cryoseism_frost_quake_dynamic_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cryoseism (frost quake) geophone-trace classifier with hand-written dynamic "
    "convolutions: each layer holds 4 candidate kernels mixed per input by a softmax attention "
    "over them (mean-pooled squeeze, small MLP, temperature 4), applied as one grouped Conv1d; "
    "BatchNorm, ReLU, mean+max pooling, 4 event kinds. AdamW, OneCycleLR, label smoothing 0.1, "
    "clipping at norm 1, noisy traces. Trains normally (control).",
)
def h511_cryoseism_dynamic_conv(ctx) -> None:
    gen = seeded(5121)
    model = _FrostQuakeNet()
    steps = 160
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=steps)
    losses, _ = _train(
        ctx,
        model,
        opt,
        _frost_quake_traces(gen),
        steps,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    model.eval()
    x, y = next(_frost_quake_traces(torch.Generator().manual_seed(9), batch=256))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
        spread = float(model.dyn1.last_attention.std(0).mean())
    ctx.check("the loss fell (under 0.7x the start)", _fell(losses))
    ctx.check("held-out accuracy over 0.7", acc > 0.7)
    ctx.check("the kernel attention differs between inputs", spread > 1e-3)
    ctx.check("finite", _finite(losses))


# -- 12. control: warm-up + cosine that anneals the rate to exactly 0 ------------------------------


@scenario(
    family="chuckwagon_race_barrel_turn_cosine_zero_silu_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Chuckwagon-race barrel-turn time regressor (SiLU MLP on team pull, wagon mass, "
    "track moisture and outrider timing features, MSE, Adam). A 10-step linear warm-up then "
    "a cosine that reaches exactly 0 at the last step: the updates shrink to nothing over the "
    "last steps, as scheduled (control).",
)
def h511_chuckwagon_cosine_zero(ctx) -> None:
    gen = seeded(5122)
    model = _Net(10, 48, 1, act=nn.SiLU)
    steps, warm = 200, 10
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def factor(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(s - warm, steps - 1 - warm) / (steps - 1 - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    lrs, moves, last = [], [], {"p": _flat(model)}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])

    def after(step, loss):
        now = _flat(model)
        moves.append(float((now - last["p"]).norm()))
        last["p"] = now

    losses, _ = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, 5122),
        steps,
        F.mse_loss,
        before=before,
        after=after,
        sched=sched,
    )
    ctx.check("the lr at the last step is exactly 0", lrs[-1] == 0.0)
    ctx.check("the last update is exactly 0", moves[-1] == 0.0)
    ctx.check(
        "the last 5 updates under 0.01x the mid-run ones",
        _mean(moves[-5:]) < 0.01 * _mean(moves[90:110]),
    )
    ctx.check("the loss fell (under 0.3x the start)", _fell(losses, ratio=0.3))
    ctx.check("finite", _finite(losses))


# -- 13. control: fp16 autocast + GradScaler Huber regressor -------------------------------------


@scenario(
    family="gusli_string_decay_fp16_huber_silu_regressor",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Gusli (psaltery) string-decay regressor (SiLU MLP on string gauge, length, pluck "
    "point and soundboard features, Huber loss on noisy decay times with 5% of targets "
    "mislabelled), fp16 autocast + GradScaler, SGD momentum 0.9 with two param groups (head "
    "at half the rate, no decay), ReduceLROnPlateau, gradient accumulation 2, clipping at norm "
    "1 after unscale (control).",
)
def h511_gusli_fp16_huber(ctx) -> None:
    gen = seeded(5123)
    model = _Net(10, 64, 1, act=nn.SiLU)
    opt = torch.optim.SGD(
        [
            {"params": list(model.fc1.parameters()) + list(model.fc2.parameters())},
            {"params": model.head.parameters(), "lr": 2.5e-2, "weight_decay": 0.0},
        ],
        lr=5e-2,
        momentum=0.9,
        weight_decay=1e-4,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 10, 5123, noise=0.1)
    flip = torch.Generator().manual_seed(51230)
    losses = []
    for _step in range(200):
        shown = 0.0
        for _ in range(2):
            x, y = next(batches)
            bad = torch.rand(len(y), generator=flip) < 0.05
            y = torch.where(bad, -y, y)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.huber_loss(out.float(), y, delta=0.5)
            scaler.scale(loss / 2).backward()
            shown += float(loss.detach()) / 2
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(shown)
        ctx.step(torch.tensor(shown))
        plateau.step(shown)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    ctx.check("the loss fell (under 0.5x the start)", _fell(losses, ratio=0.5))
    ctx.check("finite", _finite(losses))
    ctx.check(
        "the scale stayed finite and above 1", all(math.isfinite(s) and s >= 1 for s in ctx.scales)
    )
