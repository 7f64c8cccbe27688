"""Held-out set 436 (``h436_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a daguerreotype mercury-fuming fp16 regressor fed raw ADC counts that climb as the box
warms (an fc2 activation passes fp16's 65504 and the loss goes non-finite), a race-walk
loss-of-contact BCE net whose resumed step uses a summed loss instead of the mean (one gradient
burst), a theodolite bearing-error regressor whose one debug step backpropagates a loss still
multiplied by a 2**16 loss scale (Adam's second moment is filled and the updates stall), a
hard-hat diver air-hose ReLU Elman RNN whose recurrent init gain is 2 (ReLU's variance
factor) for sqrt(2) (gradients
grow back through time), a gum-bichromate exposure net whose log ratio has no clamp (log of x/0
when a reference cell reads 0), a dinghy-jibe heel-angle Huber regressor fed one shard logged in
milliradians for radians (one corrupted batch), a drypoint burr-depth two-group regressor whose
head group's lr is typed 3e-9 for 3e-3 (a frozen head), a verdigris patina-stage cosine classifier
whose scale is typed 3000 for 30 (softmax saturates), a cartonnage layer-grade classifier trained
with nll_loss on raw logits (the head's logits grow without bound) and a caisson sinking-rate
regressor whose hand-written decoupled weight decay has its sign flipped (a slow climb).

Controls: a bookplate print-fair wide-and-deep click model (Adagrad with an L1 penalty on the wide
cross-product part, FTRL-like, and Adam on the deep part), an ambrotype plate-flaw fp16 Conv1d
classifier (GradScaler, AdamW under OneCycleLR, label smoothing, clipping) and a stonemason's lewis
lift-load GRU with a Gaussian NLL head (SGD Nesterov, warm-up then cosine, accumulation, clipping).
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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
    attach=True,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor (ctx is None)."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
    losses = []
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier and attach:
                ctx.targets(y)
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            loss = loss_fn(out.float(), y)
            total = backprop(step, loss) if backprop is not None else loss
            total = total / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scaler is not None:
            scaler.unscale_(opt)
        if attach:
            ctx.grad_norms.append(grad_norm(model))
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            if attach:
                ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _binary(gen, batch, d_in, seed, flip=0.05):
    """Binary outcomes by a hidden rule, ``flip`` of the labels noisy."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    w = w / w.norm()
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = (x @ w + 0.4 * torch.cos(2 * x[:, 2]) - 0.2 > 0.0).float()
        noisy = torch.rand(batch, generator=gen) < flip
        yield x, torch.where(noisy, 1 - y, y)


class _Net(nn.Module):
    def __init__(self, d_in, hidden=48, out=1, act=nn.ReLU):
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


DAG_WARM = 1.04  # the fuming box warms: counts climb 4% a step
DAG_BREAK = 140
CAISSON_WD = 0.5

# -- faults ----------------------------------------------------------------------------------------


@scenario(
    family="daguerreotype_mercury_fuming_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=DAG_BREAK,
    heldout=True,
    note="Daguerreotype mercury-fuming development-time regressor (ReLU MLP, MSE, AdamW, fp16 "
    "autocast with a GradScaler). The fuming box's thermocouples are fed as raw ADC counts (the "
    "standardisation step is skipped by a config flag) and the counts climb as the box warms: "
    "fc1's output passes fp16's 65504 while it is still finite in float32, and the loss goes "
    "non-finite.",
)
def h436_daguerreotype_fp16_raw_counts(ctx) -> None:
    gen = seeded(4361)
    model = _Net(8, 64, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    base = _readings(gen, 64, 8, seed=361)
    seen = {}

    def raw():
        step = 0
        while True:
            x, y = next(base)
            warm = DAG_WARM**step
            step += 1
            xr = (200.0 + 25.0 * x) * warm  # raw counts, never standardised
            seen["x"] = xr
            yield xr, y

    _loop(ctx, model, opt, raw(), 200, F.mse_loss, scaler=scaler, amp=True)
    ls = ctx.losses
    bad = _first_bad(ls)
    ctx.check("loss non-finite at some step", bad is not None)
    ctx.check("finite for the first 30 steps", bad is not None and bad >= 30)
    with torch.no_grad():
        out = model(seen["x"])
    ctx.check("the failing batch is finite in float32", bool(torch.isfinite(out).all()))
    pre = model.fc1(seen["x"]).detach()
    ctx.check("fc1's float32 output passes fp16's 65504", float(pre.abs().max()) > 65504)
    ctx.check("the failing step is the measured break", bad == DAG_BREAK)


@scenario(
    family="race_walk_loss_of_contact_accum_bce_net",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=140,
    note="Race-walk loss-of-contact detector (ReLU MLP on insole-sensor features, BCEWithLogits, "
    "SGD momentum 0.9, accumulation over 4, clipping at 2). The step resumed from a checkpoint at "
    "140 goes through a code path whose loss uses reduction='sum' instead of 'mean' over the "
    "64-row micro-batches: one step's gradient is 64x on an ordinary logged loss; clipping bounds "
    "the update and the run recovers.",
)
def h436_race_walk_sum_reduction(ctx) -> None:
    gen = seeded(4362)
    model = _Net(12, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def backprop(step, loss):
        return loss * (64.0 if step == 140 else 1.0)  # sum over the 64 rows, not the mean

    _loop(
        ctx,
        model,
        opt,
        _binary(gen, 64, 12, seed=362),
        220,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
        clip=2.0,
        accumulate=4,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check(
        "gradient at 140 over 30x the median of 100..139", gn[140] > 30 * _median(gn[100:140])
    )
    ctx.check("logged loss at 140 ordinary", ls[140] < 2 * _median(ls[100:140]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.3 * _mean(ls[120:140]))
    ctx.check("trained", _fell(ls))


@scenario(
    family="theodolite_bearing_error_adam_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=40,
    note="Theodolite bearing-error regressor (GELU MLP, MSE, Adam betas (0.9, 0.999)). A debug "
    "branch switched on for step 40 backpropagates the loss still multiplied by a 2**16 loss scale "
    "left over from an fp16 experiment (never unscaled): one gradient 65536x fills Adam's second "
    "moment, and for the rest of the run the updates are a small fraction of what they were; the "
    "loss stops falling.",
)
def h436_theodolite_unscaled_debug_step(ctx) -> None:
    def run(attach):
        gen = seeded(4363)
        model = _Net(10, 64, 1, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3, betas=(0.9, 0.999))
        moves = []
        state = {}

        def before(step):
            state["w"] = [p.detach().clone() for p in model.parameters()]

        def after(step):
            num = sum(
                float((p.detach() - w).norm() ** 2)
                for p, w in zip(model.parameters(), state["w"], strict=True)
            )
            moves.append(math.sqrt(num))

        def backprop(step, loss):
            return loss * (2.0**16 if attach and step == 40 else 1.0)

        losses = _loop(
            ctx if attach else None,
            model,
            opt,
            _readings(gen, 64, 10, seed=363),
            240,
            F.mse_loss,
            before=before,
            after=after,
            backprop=backprop,
            attach=attach,
        )
        v = max(float(s["exp_avg_sq"].max()) for s in opt.state.values())
        return losses, moves, v

    ref, ref_moves, ref_v = run(False)
    ls, moves, v = run(True)
    ctx.check("second moment over 1e6x the reference's", v > 1e6 * ref_v)
    ctx.check(
        "updates over steps 60..239 under 1/10 of steps 20..39",
        _median(moves[60:]) < 0.1 * _median(moves[20:40]),
    )
    ctx.check(
        "loss stalls: last 20 over 1.5x the reference's", _mean(ls[-20:]) > 1.5 * _mean(ref[-20:])
    )
    ctx.check("logged loss at 40 ordinary", ls[40] < 2 * _median(ls[30:40]))


class _Elman(nn.Module):
    """A hand-written ReLU Elman RNN over a pressure trace; predicts the next reading."""

    def __init__(self, d_in=3, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, 1)
        nn.init.orthogonal_(self.rec.weight, gain=gain)
        self.states = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.weight.shape[0])
        self.states = []
        for t in range(x.shape[1]):
            h = torch.relu(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _hose_traces(gen, batch=32, length=30):
    """Air-hose pressure traces from the surface pump; target: the reading after the window."""
    while True:
        t = torch.arange(length + 1, dtype=torch.float32)
        freq = 0.2 + 0.2 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        p = torch.sin(freq * t + phase) + 0.05 * torch.randn(batch, length + 1, generator=gen)
        x = torch.stack([p[:, :-1], torch.cos(freq * t[:-1] + phase), freq.expand(-1, length)], -1)
        yield x, p[:, -1]


@scenario(
    family="hard_hat_diver_air_hose_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="Standard-dress (hard-hat) diver air-hose pressure forecaster: a hand-written ReLU Elman "
    "RNN over 30 readings (MSE, SGD Nesterov, clipping at 1). The orthogonal init of the "
    "recurrent weight is given gain 2.0 (ReLU's variance factor) for sqrt(2): the gradient grows back through time "
    "by orders of magnitude and clipping keeps cutting it.",
)
def h436_hard_hat_diver_rec_gain(ctx) -> None:
    def through_time(gain):
        seeded(4364)
        m = _Elman(gain=gain)
        x, y = next(_hose_traces(torch.Generator().manual_seed(64)))
        F.mse_loss(m(x), y).backward()
        return float(m.states[0].grad.norm() / m.states[-1].grad.norm().clamp_min(1e-30))

    ref = through_time(math.sqrt(2.0))
    gen = seeded(4364)
    model = _Elman(gain=2.0)  # the variance factor 2 typed as the gain
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x0, y0 = next(_hose_traces(torch.Generator().manual_seed(64)))
    F.mse_loss(model(x0), y0).backward()
    ratio = float(model.states[0].grad.norm() / model.states[-1].grad.norm().clamp_min(1e-30))
    opt.zero_grad(set_to_none=True)
    _loop(ctx, model, opt, _hose_traces(gen), 120, F.mse_loss, clip=1.0)
    gn = ctx.grad_norms
    ctx.check("dL/dh_0 over 100x dL/dh_29 at gain 2", ratio > 100)
    ctx.check("under 10x at gain sqrt(2)", ref < 10)
    ctx.check("gradient norm over 100 (clipped to 1) in most steps", _median(gn) > 100)


class _LogRatio(nn.Module):
    """log(uv / reference) per channel: the exposure in stops against the reference cell."""

    def forward(self, uv, ref):
        return torch.log(uv / ref)  # no clamp on the reference


class _ExposureNet(nn.Module):
    def __init__(self, channels=4, hidden=32):
        super().__init__()
        self.ratio = _LogRatio()
        self.fc1 = nn.Linear(channels, hidden)
        self.act = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        uv, ref = x.chunk(2, dim=-1)
        return self.head(self.act(self.fc1(self.ratio(uv, ref)))).squeeze(-1)


@scenario(
    family="gum_bichromate_exposure_log_ratio_net",
    optimizer="Adamax",
    cause="nonfinite",
    where=("ratio",),
    diverges=90,
    heldout=True,
    onset=90,
    note="Gum-bichromate print exposure-time net (log of UV meter over reference-cell readings, "
    "GELU MLP, MSE, Adamax). At step 90 a reference cell comes loose and reads exactly 0 for a "
    "few rows; the log ratio has no clamp, log(x / 0) is inf, and the loss is non-finite at 90.",
)
def h436_gum_bichromate_log_ratio(ctx) -> None:
    gen = seeded(4365)
    model = _ExposureNet()
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    seen = {}

    def batches():
        w = torch.tensor([0.8, -0.5, 0.3, 0.6])
        while True:
            uv = 0.5 + torch.rand(64, 4, generator=gen) * 2
            ref = 0.5 + torch.rand(64, 4, generator=gen) * 2
            y = torch.log(uv / ref) @ w
            yield torch.cat([uv, ref], -1), y

    def alter(step, x, y):
        if step == 90:
            x = x.clone()
            x[:3, 5] = 0.0  # the loose reference cell
        seen["x"] = x
        return x, y

    _loop(ctx, model, opt, batches(), 160, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("finite before 90", _finite(ls[:90]))
    ctx.check("loss non-finite at 90", len(ls) == 91 and not math.isfinite(ls[90]))
    with torch.no_grad():
        uv, ref = seen["x"].chunk(2, dim=-1)
        r = model.ratio(uv, ref)
    ctx.check("the log ratio is non-finite at 90", not bool(torch.isfinite(r).all()))
    ctx.check("trained before", _mean(ls[80:90]) < 0.5 * _mean(ls[:10]))


@scenario(
    family="dinghy_jibe_heel_angle_huber_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Dinghy gybe (jibe) heel-angle regressor (SiLU MLP on IMU features, Huber, RMSprop, "
    "clipping at 1). The shard read at step 120 comes from a logger that writes angles and rates "
    "in milliradians instead of radians: one batch 1000x off; the loss and gradient jump and the "
    "run recovers.",
)
def h436_dinghy_jibe_milliradian_shard(ctx) -> None:
    gen = seeded(4366)
    model = _Net(10, 48, 1, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 120:
            return x * 1000.0, y * 1000.0
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=366),
        220,
        F.huber_loss,
        alter=alter,
        clip=1.0,
    )
    ls, gn = ctx.losses, ctx.grad_norms
    ctx.check("loss at 120 over 100x the median of 100..119", ls[120] > 100 * _median(ls[100:120]))
    ctx.check("gradient at 120 over 20x the median", gn[120] > 20 * _median(gn[100:120]))
    ctx.check("recovers", _mean(ls[-20:]) < 1.5 * _mean(ls[100:120]))
    ctx.check("trained", _fell(ls))


@scenario(
    family="drypoint_burr_depth_two_group_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Drypoint etching burr-depth regressor (ReLU MLP, MSE, NAdam with two param groups). The "
    "head group's lr is typed 3e-9 for 3e-3: the head receives gradients but does not move; the "
    "trunk trains around a frozen random head.",
)
def h436_drypoint_head_group_typo(ctx) -> None:
    gen = seeded(4367)
    model = _Net(8, 48, 1)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.NAdam(
        [{"params": trunk, "lr": 3e-3}, {"params": model.head.parameters(), "lr": 3e-9}]
    )
    head0 = model.head.weight.detach().clone()
    fc10 = model.fc1.weight.detach().clone()

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=367), 200, F.mse_loss)
    ctx.check("head moved under 1e-4 of its norm", _rel_change(head0, model.head.weight) < 1e-4)
    ctx.check("fc1 moved over 10%", _rel_change(fc10, model.fc1.weight) > 0.1)
    ctx.check("gradients flowed", _median(ctx.grad_norms) > 1e-3)


class _CosineNet(nn.Module):
    def __init__(self, d_in, hidden, classes, scale):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.ReLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(hidden, classes, bias=False)
        self.scale = scale

    def cosines(self, x):
        f = F.normalize(self.act2(self.fc2(self.act1(self.fc1(x)))), dim=-1)
        return f @ F.normalize(self.head.weight, dim=-1).T

    def forward(self, x):
        return self.scale * self.cosines(x)


@scenario(
    family="verdigris_patina_stage_cosine_classifier",
    optimizer="RAdam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Verdigris patina-stage classifier on colorimeter readings (cosine classifier, "
    "cross-entropy, RAdam). The cosine scale is typed 3000 for 30: the softmax saturates and most "
    "rows' target probability rounds to exactly 1.0 in float32.",
)
def h436_verdigris_cosine_scale_typo(ctx) -> None:
    gen = seeded(4368)
    model = _CosineNet(12, 48, 6, scale=3000.0)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    late, ref = [], []

    def alter(step, x, y):
        if step >= 170:
            with torch.no_grad():
                c = model.cosines(x)
            late.append(collapsed_fraction(3000.0 * c, y))
            ref.append(collapsed_fraction(30.0 * c, y))
        return x, y

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, seed=368),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
    )
    ctx.check("over half the rows collapsed over the last 30 steps", _mean(late) > 0.5)
    ctx.check("under 5% at scale 30 on the same cosines", _mean(ref) < 0.05)


@scenario(
    family="cartonnage_layer_grade_raw_nll_classifier",
    optimizer="Adagrad",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Cartonnage (linen-and-plaster layer) grade classifier (ReLU MLP, Adagrad) trained with "
    "F.nll_loss on the raw logits, the log_softmax forgotten: the loss is -logit[target], "
    "unbounded below, and the head's logits grow without bound.",
)
def h436_cartonnage_raw_nll(ctx) -> None:
    gen = seeded(4369)
    model = _Net(10, 48, 5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    probe = next(_grades(torch.Generator().manual_seed(9), 256, 10, 5, seed=369))
    sizes = []

    def after(step):
        if step % 20 == 0 or step == 219:
            with torch.no_grad():
                sizes.append(float(model(probe[0]).abs().max()))

    _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 5, seed=369),
        220,
        F.nll_loss,  # the bug: nll_loss on raw logits
        classifier=True,
        after=after,
    )
    ctx.check("max |logit| over 20x its start", sizes[-1] > 20 * sizes[0])
    ctx.check("still growing", sizes[-1] > 1.2 * sizes[-3])
    ctx.check("the 'loss' below -10", ctx.losses[-1] < -10)


@scenario(
    family="caisson_sinking_rate_decay_sign_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Bridge-pier caisson sinking-rate regressor (tanh MLP, MSE, plain SGD) with a "
    "hand-written decoupled weight decay applied after each step whose sign is flipped "
    "(p *= 1 + lr * wd for 1 - lr * wd): the weights inflate a little every step and the loss "
    "slowly climbs.",
)
def h436_caisson_decay_sign(ctx) -> None:
    gen = seeded(4370)
    model = _Net(8, 48, 1, act=nn.Tanh)
    lr, wd = 0.02, CAISSON_WD
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    norms = []

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the bug: 1 - lr * wd
            norms.append(float(torch.cat([p.reshape(-1) for p in model.parameters()]).norm()))

    _loop(ctx, model, opt, _readings(gen, 64, 8, seed=370), 260, F.mse_loss, after=after)
    ls = ctx.losses
    ctx.check("finite", _finite(ls))
    ctx.check(
        "last 20 over 3x the lowest 20-step mean",
        _mean(ls[-20:]) > 3 * min(_mean(ls[i : i + 20]) for i in range(0, 240, 10)),
    )
    ctx.check("climbing through the second half", _mean(ls[-30:]) > 1.5 * _mean(ls[130:160]))
    ctx.check("weight norm over 2x", norms[-1] > 2 * norms[0])


# -- healthy controls --------------------------------------------------------------------------------


class _WideDeep(nn.Module):
    """Wide (a linear model over hashed cross-product features) beside deep (an MLP over field
    embeddings), summed into one logit (Cheng et al. 2016)."""

    def __init__(self, crosses=256, fields=(40, 12, 8), dim=8, hidden=32):
        super().__init__()
        self.wide = nn.Linear(crosses, 1)
        self.embeds = nn.ModuleList(nn.Embedding(n, dim) for n in fields)
        self.deep = nn.Sequential(
            nn.Linear(dim * len(fields), hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.wide.weight)

    def forward(self, x):
        cross, cats = x
        emb = torch.cat([e(cats[:, i]) for i, e in enumerate(self.embeds)], -1)
        return (self.wide(cross) + self.head(self.deep(emb))).squeeze(-1)


class _TwoOptimizers(torch.optim.Optimizer):
    """Steps an optimizer for the wide part and one for the deep part as one optimizer."""

    def __init__(self, *opts):
        params = [p for o in opts for g in o.param_groups for p in g["params"]]
        super().__init__(params, {})
        self.opts = opts
        self.param_groups = [g for o in opts for g in o.param_groups]
        for o in opts:
            o.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        for o in self.opts:
            o.step()


def _clicks(gen, batch=128, fields=(40, 12, 8), crosses=256):
    """Print-fair listing clicks: stall, paper stock and print size, with a cross effect."""
    g = torch.Generator().manual_seed(371)
    eff = [0.8 * torch.randn(n, generator=g) for n in fields]
    cross_eff = 1.5 * torch.randn(crosses, generator=g)
    while True:
        cats = torch.stack([torch.randint(0, n, (batch,), generator=gen) for n in fields], 1)
        h = (cats[:, 0] * 31 + cats[:, 1] * 7 + cats[:, 2]) % crosses
        cross = F.one_hot(h, crosses).float()
        logit = sum(e[cats[:, i]] for i, e in enumerate(eff)) + cross_eff[h] - 0.5
        y = (torch.rand(batch, generator=gen) < torch.sigmoid(logit)).float()
        yield (cross, cats), y


@scenario(
    family="bookplate_print_fair_wide_deep_click_net",
    optimizer="Adagrad+Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bookplate print-fair listing click model, hand-written wide-and-deep (a linear part over "
    "hashed stall x stock x size crosses beside an MLP over field embeddings, one sigmoid output, "
    "BCEWithLogits). FTRL-like: Adagrad with an L1 penalty on the wide part, Adam on the deep "
    "part, stepped together. Control.",
)
def h436_bookplate_wide_deep_control(ctx) -> None:
    gen = seeded(4371)
    model = _WideDeep()
    wide = torch.optim.Adagrad(model.wide.parameters(), lr=0.05)
    deep_params = [p for n, p in model.named_parameters() if not n.startswith("wide")]
    deep = torch.optim.Adam(deep_params, lr=3e-3)
    opt = _TwoOptimizers(wide, deep)

    def backprop(step, loss):
        return loss + 1e-4 * model.wide.weight.abs().sum()  # L1 on the wide part

    _loop(
        ctx,
        model,
        opt,
        _clicks(gen),
        250,
        F.binary_cross_entropy_with_logits,
        backprop=backprop,
    )
    ctx.check("trained: loss fell 15%", _fell(ctx.losses, k=20, ratio=0.85))
    ctx.check("finite", _finite(ctx.losses))


def _plate_scans(gen, batch=32, length=48, classes=4):
    """Ambrotype plate scan-lines: clean, bubble, frilling, scratch profiles plus noise."""
    t = torch.linspace(0, 1, length)
    shapes = torch.stack(
        [
            torch.zeros(length),
            torch.exp(-((t - 0.5) ** 2) / 0.005),
            0.5 * torch.sin(40 * t) * (t > 0.7),
            (torch.abs(t - 0.3) < 0.03).float() * -1.5,
        ]
    )
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        shift = torch.randint(-6, 7, (batch,), generator=gen)
        x = torch.stack([torch.roll(shapes[c], int(s)) for c, s in zip(y, shift, strict=True)])
        yield (x + 0.3 * torch.randn(batch, length, generator=gen))[:, None], y


class _PlateConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        return self.head(self.act2(self.conv2(self.act1(self.conv1(x)))).amax(-1))


@scenario(
    family="ambrotype_plate_flaw_fp16_conv1d_classifier",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Ambrotype plate-flaw classifier on scan-lines (ReLU Conv1d, fp16 autocast with a "
    "GradScaler, AdamW under OneCycleLR, label smoothing 0.1, clipping at 1). Control.",
)
def h436_ambrotype_fp16_control(ctx) -> None:
    gen = seeded(4372)
    model = _PlateConv()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=200)
    scaler = torch.amp.GradScaler("cpu")

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(
        ctx,
        model,
        opt,
        _plate_scans(gen),
        200,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        amp=True,
    )
    ctx.check("trained: loss fell by half", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite", _finite(ctx.losses))


class _LiftGRU(nn.Module):
    def __init__(self, d_in=3, hidden=32):
        super().__init__()
        self.gru = nn.GRU(d_in, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def _gaussian_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-8, 8)
    return F.gaussian_nll_loss(mean, y, log_var.exp())


def _lift_windows(gen, batch=32, length=20):
    """Crane-hook load readings through a lewis lift; target: the load after the window."""
    while True:
        t = torch.arange(length + 1, dtype=torch.float32)
        mass = 0.5 + torch.rand(batch, 1, generator=gen)
        sway = 0.2 * torch.sin(0.5 * t + 6.28 * torch.rand(batch, 1, generator=gen))
        noise = (0.05 + 0.2 * mass) * torch.randn(batch, length + 1, generator=gen)
        load = mass * (1 - torch.exp(-t / 4)) + sway + noise
        x = torch.stack([load[:, :-1], t[:-1].expand(batch, -1) / length, sway[:, :-1]], -1)
        yield x, load[:, -1]


@scenario(
    family="stonemason_lewis_lift_load_gaussian_nll_gru",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Stonemason's lewis lift-load forecaster (GRU, Gaussian NLL of mean and log-variance, SGD "
    "Nesterov, linear warm-up then cosine decay, accumulation over 2, clipping at 1). Control.",
)
def h436_lewis_lift_gru_control(ctx) -> None:
    gen = seeded(4373)
    model = _LiftGRU()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps, warm = 200, 20

    def lam(s):
        if s < warm:
            return (s + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _loop(
        ctx,
        model,
        opt,
        _lift_windows(gen),
        steps,
        _gaussian_nll,
        clip=1.0,
        sched=sched,
        accumulate=2,
    )
    ls = ctx.losses
    ctx.check("trained: loss fell", _finite(ls) and _mean(ls[-10:]) < _mean(ls[:10]) - 0.5)
    ctx.check("finite", _finite(ls))
