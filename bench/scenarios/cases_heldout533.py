"""Held-out set 533 (``h533_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a sheepdog-trial drive-gate Huber regressor whose loss weight is read as 100 (percent)
for one step after a config reload (gradient spike, clipped, SGD Nesterov); a glassblowing
punty-pressure GELU regressor under fp16 autocast + GradScaler fed pressures in pascals
(Adamax); a lobster-pot catch Poisson net taking log of a zero soak time (Adagrad); a
bell-foundry strike-note regressor fed one missing-value sentinel (RMSprop); a saddle-tree
gullet regressor whose first-layer param group lr is typed 3e-7 for 3e-3 (Adam); a sea-fret
fog IRNN whose recurrent weight is initialised 1.3 x identity (SGD momentum); a cooperage
stave-bend regressor whose StepLR gamma is typed 10 for 0.1 (plain SGD); a thatching
hazel-spar ReLU regressor whose NAdam lr is typed 0.5 for 0.005 (dead ReLUs); a beekeeping
queen-piping BCE detector on separable data with no weight decay (head logits grow, RAdam); a
dry-stone hearting-fill Gaussian-NLL regressor whose hand-written decay has its sign flipped
(slow climb, Adam).

Controls: a handbell method-touch Hugging Face BERT classifier trained with gradual unfreezing
(head first, then one encoder layer at a time, AdamW; the gradient norm jumps at each
unfreeze); a clog-dance shuffle Conv1d classifier (SGD momentum, OneCycleLR, label smoothing,
clipping, noisy signals); a blacksmith forge-weld Huber regressor (fp16 autocast + GradScaler,
Adam, two param groups, ReduceLROnPlateau, accumulation 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import bert_batches, dead_fraction, grad_norm, hf_bert, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after.detach() - before).norm() / before.norm())


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
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, out, y,
    loss)`` returns the loss actually backpropagated, ``after(step, loss)``. Stops after a
    non-finite loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        out = model(x)
        loss = loss_fn(out, y)
        total = backprop(step, out, y, loss) if backprop is not None else loss
        total.backward()
        norms.append(grad_norm(model))
        ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        if after is not None:
            after(step, losses[-1])
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
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


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / n for t in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [t.detach() for t in hv]
    return lam


# -- 1. gradient spike: a loss weight read as 100 (percent) for one step -------------------------

SHEEPDOG_ONSET = 130


@scenario(
    family="sheepdog_trial_drive_gate_miss_huber_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=SHEEPDOG_ONSET,
    note="Sheepdog-trial drive-gate miss-distance regressor (SiLU MLP on flock size, wind, "
    "handler distance, dog speed, ground slope and whistle count, Huber loss, SGD Nesterov "
    "momentum 0.9, clipping at norm 1). The loss weight comes from a config that is reloaded at "
    "step 130; the reload parses 'loss_weight: 100%' as 100 instead of 1.0 for that one step "
    "before the cached value is restored: one gradient 100x the usual on an ordinary logged "
    "loss; clipping holds the update and the run carries on.",
)
def h533_sheepdog_loss_weight_percent(ctx):
    gen = seeded(5331)
    model = _Net(6, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, out, y, loss):
        weight = 100.0 if step == SHEEPDOG_ONSET else 1.0
        return weight * loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 53310),
        240,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    o = SHEEPDOG_ONSET
    ctx.check("gradient over 30x the median at onset", norms[o] > 30 * _median(norms[o - 30 : o]))
    ctx.check("logged loss ordinary at onset", losses[o] < 2 * _median(losses[o - 30 : o]))
    ctx.check(
        "loss after onset within 1.5x of before",
        _mean(losses[o + 10 : o + 40]) < 1.5 * _mean(losses[o - 30 : o]),
    )
    ctx.check("trained and finite", _fell(losses))


# -- 2. amp overflow: pressures in pascals under fp16 autocast -----------------------------------

PUNTY_ONSET = 100


@scenario(
    family="glassblowing_punty_pressure_fp16_gelu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=PUNTY_ONSET,
    heldout=True,
    onset=PUNTY_ONSET,
    note="Glassblowing punty-seal strength regressor (GELU MLP on six blow-pipe pressure "
    "readings, gather size and glory-hole temperature, MSE, fp16 autocast + GradScaler, "
    "Adamax). At step 100 a new pressure logger writes its six readings in pascals (about 6e4) "
    "instead of standardised kilopascal deviations: every reading is still inside fp16's range "
    "(max 65504), but the first layer's fp16 output overflows 65504 to inf and the loss is non-finite (the "
    "same batch in float32 is finite).",
)
def h533_punty_pressure_pascals_fp16(ctx):
    gen = seeded(5332)
    model = _Net(8, 64, 1, act=nn.GELU)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 64, 8, 53320)
    losses, fp32_ok, fc1_inf, x_fin = [], [], [], []
    for step in range(160):
        x, y = next(data)
        if step >= PUNTY_ONSET:
            x = x.clone()
            x[:, :6] = 6.0e4 + 2.0e3 * torch.tanh(x[:, :6])
        with torch.autocast("cpu", dtype=torch.float16):
            h1 = model.fc1(x)
            h2 = model.fc2(model.act1(h1))
            out = model.head(model.act2(h2)).squeeze(-1)
        loss = F.mse_loss(out.float(), y)
        if step == PUNTY_ONSET:
            x_fin.append(bool(torch.isfinite(x.half()).all()))
            fc1_inf.append(not bool(torch.isfinite(h1).all()))
            with torch.no_grad():
                fp32_ok.append(bool(torch.isfinite(model(x)).all()))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break
    ctx.check("trained before the switch", _fell(losses[:PUNTY_ONSET]))
    ctx.check("the pascal readings fit in fp16", bool(x_fin) and x_fin[0])
    ctx.check("fp16 fc1 output overflowed at onset", bool(fc1_inf) and fc1_inf[0])
    ctx.check("the same batch is finite in float32", bool(fp32_ok) and fp32_ok[0])
    ctx.check(
        "loss non-finite at onset",
        len(losses) == PUNTY_ONSET + 1 and not math.isfinite(losses[-1]),
    )


# -- 3. nonfinite: log of a zero soak time -------------------------------------------------------

LOBSTER_ONSET = 90


class _LogSoak(nn.Module):
    """log of the soak time in hours (column 0) next to the other readings."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _CatchNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.log_soak = _LogSoak()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(self.act1(self.fc1(self.log_soak(x)))).squeeze(-1)


def _pot_hauls(gen, batch, zero_from):
    g = torch.Generator().manual_seed(53330)
    w = 0.5 * torch.randn(4, generator=g)
    step = 0
    while True:
        soak = 6.0 + 66.0 * torch.rand(batch, 1, generator=gen)
        rest = torch.randn(batch, 4, generator=gen)
        rate = torch.exp(0.4 * torch.log(soak).squeeze(1) + rest @ w - 0.5)
        y = torch.poisson(rate, generator=gen)
        if step >= zero_from:
            soak = soak.clone()
            soak[::16] = 0.0
        step += 1
        yield torch.cat([soak, rest], 1), y


@scenario(
    family="lobster_pot_soak_log_count_poisson_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("log_soak",),
    diverges=LOBSTER_ONSET,
    heldout=True,
    onset=LOBSTER_ONSET,
    note="Lobster-pot catch-count net (log soak time, then a SiLU MLP with bait age, depth, "
    "water temperature and moon phase, Poisson NLL on the log rate, Adagrad). The soak-time "
    "feature is log(hours) with no floor: at step 90 a shard from a boat that hauls and re-sets "
    "pots on the same tide records soak 0, log 0 = -inf and the loss is NaN.",
)
def h533_lobster_pot_log_zero_soak(ctx):
    gen = seeded(5333)
    model = _CatchNet(5, 32)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    inf_out = []

    def alter(step, x, y):
        if step == LOBSTER_ONSET:
            with torch.no_grad():
                inf_out.append(bool(torch.isinf(model.log_soak(x)).any()))
        return x, y

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _pot_hauls(gen, 64, LOBSTER_ONSET),
        160,
        lambda out, y: F.poisson_nll_loss(out, y, log_input=True, full=True),
        alter=alter,
    )
    ctx.check("trained and finite before onset", _fell(losses[:LOBSTER_ONSET], ratio=0.9))
    ctx.check("log_soak output infinite at onset", bool(inf_out) and inf_out[0])
    ctx.check("loss NaN at onset", len(losses) == LOBSTER_ONSET + 1 and math.isnan(losses[-1]))


# -- 4. data outlier: one missing strike note coded -999 ----------------------------------------

BELL_ONSET = 110


@scenario(
    family="bell_foundry_strike_note_hum_ratio_regressor",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=BELL_ONSET,
    note="Bell-foundry strike-note regressor (GELU MLP on lip thickness, waist profile, crown "
    "radius, tin share, mould temperature and tuning cut depth; standardised strike-note "
    "deviation, MSE, RMSprop lr 1e-3). At step 110 one bell's strike note is missing in the "
    "tuning ledger and the loader passes the missing-value code -999 through as a target: the "
    "loss and the gradient spike for that batch, then the run recovers.",
)
def h533_bell_strike_note_missing_code(ctx):
    gen = seeded(5334)
    model = _Net(6, 48, 1, act=nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == BELL_ONSET:
            y = y.clone()
            y[5] = -999.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53340), 240, F.mse_loss, alter=alter
    )
    o = BELL_ONSET
    ctx.check("loss over 50x the median at onset", losses[o] > 50 * _median(losses[o - 30 : o]))
    ctx.check("gradient over 10x the median at onset", norms[o] > 10 * _median(norms[o - 30 : o]))
    ctx.check(
        "recovers (loss 40 steps after under 2x before)",
        _mean(losses[o + 40 : o + 60]) < 2 * _mean(losses[o - 20 : o]),
    )
    ctx.check("trained before onset", _fell(losses[:o]))


# -- 5. update ratio: the first layer's group lr typed 3e-7 for 3e-3 -----------------------------


@scenario(
    family="saddle_tree_gullet_width_typo_group_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Saddle-tree gullet-width regressor (ReLU MLP on wither height, shoulder angle, back "
    "length, rider mass, panel flocking and girth, MSE, Adam in two param groups: the input "
    "layer and the rest). The input layer's lr is typed 3e-7 for 3e-3: its updates are about "
    "1e-4 of the others', fc1 stays where it was initialised while the rest trains.",
)
def h533_saddle_tree_group_lr_typo(ctx):
    gen = seeded(5335)
    model = _Net(6, 48, 1)
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.Adam(
        [{"params": model.fc1.parameters(), "lr": 3e-7}, {"params": rest, "lr": 3e-3}]
    )
    f0 = model.fc1.weight.detach().clone()
    h0 = model.fc2.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 53350), 200, F.mse_loss)
    ctx.check("fc1 moved under 1e-3 of its norm", _rel_change(model.fc1.weight, f0) < 1e-3)
    ctx.check("fc2 moved over 5%", _rel_change(model.fc2.weight, h0) > 0.05)
    ctx.check("the rest still trained (loss under 0.9x)", _fell(losses, ratio=0.9))


# -- 6. exploding gradients: an IRNN whose recurrent weight starts at 1.3 x identity -------------


class _FogIRNN(nn.Module):
    def __init__(self, d_in, hidden, classes, gain):
        super().__init__()
        self.ih = nn.Linear(d_in, hidden)
        self.hh = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        with torch.no_grad():
            self.hh.weight.copy_(gain * torch.eye(hidden))
            self.hh.bias.zero_()
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hh.out_features)
        self.states = []
        for t in range(x.shape[1]):
            h = F.relu(self.ih(x[:, t]) + self.hh(h))
            h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _fog_nights(gen, batch, length, d_in):
    g = torch.Generator().manual_seed(53360)
    w = torch.randn(d_in, generator=g)
    while True:
        x = 0.5 * torch.randn(batch, length, d_in, generator=gen)
        score = (x[:, : length // 2] @ w).mean(1) + 0.2 * torch.randn(batch, generator=gen)
        yield x, (score > 0).long()


@scenario(
    family="sea_fret_fog_roll_in_irnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("hh",),
    diverges=None,
    heldout=True,
    note="Sea-fret fog roll-in classifier, a hand-written ReLU IRNN over 24 hourly readings of "
    "sea temperature, dew point, wind and pressure (cross-entropy, SGD momentum 0.9, clipping at norm 1). The "
    "recurrent weight is initialised 1.3 x identity where the IRNN recipe says 1.0: the "
    "gradient grows through time, the first hidden state's gradient hundreds of times the last "
    "one's.",
)
def h533_sea_fret_irnn_gain(ctx):
    gen = seeded(5336)
    model = _FogIRNN(4, 32, 2, gain=1.3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    ratios = []

    def after(step, loss):
        s = model.states
        if s[0].grad is not None:
            ratios.append(float(s[0].grad.norm()) / max(float(s[-1].grad.norm()), 1e-30))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _fog_nights(gen, 32, 24, 4),
        120,
        F.cross_entropy,
        classifier=True,
        after=after,
        clip=1.0,
    )
    ctx.check("first state's gradient over 100x the last's at start", _median(ratios[:10]) > 100)
    ctx.check("still over 30x at the end", _median(ratios[-20:]) > 30)
    ctx.check("median gradient norm over 100", _median(norms) > 100)


# -- 7. sharpness above limit: StepLR gamma typed 10 for 0.1 -------------------------------------

COOPER_ONSET = 80


@scenario(
    family="cooperage_stave_steam_bend_gamma_typo_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=COOPER_ONSET,
    note="Cooperage stave steam-bend springback regressor (tanh MLP on stave thickness, oak "
    "grain angle, moisture, steaming time, fire temperature and truss force, MSE, plain SGD "
    "lr 0.08 with StepLR every 80 steps). The decay gamma is typed 10 for 0.1: at step 80 the "
    "lr jumps to 0.8, past 2/sharpness, and the loss oscillates and blows up.",
)
def h533_cooperage_steplr_gamma_typo(ctx):
    gen = seeded(5337)
    model = _Net(6, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=COOPER_ONSET, gamma=10.0)
    probe = next(_readings(torch.Generator().manual_seed(9), 256, 6, 53370))
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (COOPER_ONSET - 1, COOPER_ONSET):
            sharp[step] = _top_hessian_eig(model, F.mse_loss, *probe)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 6, 53370), 200, F.mse_loss, before=before, sched=sched
    )
    o = COOPER_ONSET
    ctx.check("lr x sharpness under 2 before onset", lrs[o - 1] * sharp[o - 1] < 2)
    ctx.check("lr x sharpness over 2 at onset", lrs[o] * sharp[o] > 2)
    ctx.check("trained before onset", _fell(losses[:o]))
    ctx.check(
        "loss blew up (non-finite or over 100x its best)",
        not _finite(losses) or max(losses[o:]) > 100 * min(losses[:o]),
    )


# -- 8. loss of plasticity: NAdam lr typed 0.5 for 0.005 -----------------------------------------


@scenario(
    family="thatching_spar_hazel_split_dead_relu_regressor",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Thatching hazel-spar split-length regressor (ReLU MLP on rod diameter, seasoning "
    "days, moisture, knot count, twist and bark thickness, MSE, NAdam). The lr is typed 0.5 for "
    "0.005 and the target is the split length in centimetres (about 60, not standardised): the "
    "first large updates push the second layer's pre-activations below zero for every input, "
    "its units die and after 200 steps the net still does worse than predicting the mean.",
)
def h533_thatching_nadam_lr_typo_dead_relus(ctx):
    gen = seeded(5338)
    model = _Net(6, 64, 1)
    opt = torch.optim.NAdam(model.parameters(), lr=0.5)
    probe_x, probe_y = next(_readings(torch.Generator().manual_seed(9), 512, 6, 53380))
    with torch.no_grad():
        dead0 = dead_fraction(model.features(probe_x))
    data = ((x, 10.0 * y + 60.0) for x, y in _readings(gen, 64, 6, 53380))
    losses, _ = _loop(ctx, model, opt, data, 200, F.mse_loss)
    with torch.no_grad():
        dead = dead_fraction(model.features(probe_x))
    ctx.check("under 10% of act2 dead at init", dead0 < 0.1)
    ctx.check("over 80% of act2 units dead at the end", dead > 0.8)
    ctx.check(
        "ends above the target variance (no better than the mean)",
        _mean(losses[-20:]) > float((10.0 * probe_y).var()),
    )
    ctx.check("finite", _finite(losses))


# -- 9. output logit divergence: BCE on separable data with no weight decay ----------------------


def _piping(gen, batch, d_in):
    g = torch.Generator().manual_seed(53390)
    w = F.normalize(torch.randn(d_in, generator=g), dim=0)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        m = x @ w
        x = x + (0.6 * torch.sign(m))[:, None] * w  # a clear margin: separable
        yield x, (m > 0).float()


@scenario(
    family="beekeeping_queen_piping_bce_logit_net",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Beekeeping queen-piping detector (GELU MLP on eight band energies of a hive "
    "microphone, BCE with logits, RAdam lr 1e-2). The labels come from a threshold on a clean "
    "recording set, so the two classes are separable with a margin, and the weight decay the "
    "recipe asks for was left at 0: once every clip is right, BCE keeps pushing and the head's "
    "logits grow without bound.",
)
def h533_queen_piping_separable_no_decay(ctx):
    gen = seeded(5339)
    model = _Net(8, 32, 1, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-2)
    probe_x, probe_y = next(_piping(torch.Generator().manual_seed(9), 512, 8))
    mags, accs = [], []

    def after(step, loss):
        with torch.no_grad():
            z = model(probe_x)
        mags.append(float(z.abs().median()))
        accs.append(float(((z > 0).float() == probe_y).float().mean()))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _piping(gen, 64, 8),
        400,
        F.binary_cross_entropy_with_logits,
        after=after,
    )
    first = next((i for i, a in enumerate(accs) if a == 1.0), len(accs) - 1)
    ctx.check("every probe clip right by step 100", first < 100)
    ctx.check(
        "median |logit| over 3x the value when every clip was right", mags[-1] > 3 * mags[first]
    )
    ctx.check("still growing over the last 100 steps (over 1.1x)", mags[-1] > 1.1 * mags[-101])
    ctx.check("median |logit| over 20x the one at step 10", mags[-1] > 20 * mags[10])
    ctx.check("finite", _finite(losses))


# -- 10. loss divergence: a hand-written decay with its sign flipped -----------------------------


class _GaussNet(nn.Module):
    def __init__(self, d_in, hidden):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.SiLU()
        self.head = nn.Linear(hidden, 2)

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return torch.stack([out[:, 0], F.softplus(out[:, 1]) + 1e-3], 1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1])


@scenario(
    family="dry_stone_hearting_fill_gaussian_nll_regressor",
    optimizer="Adam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Dry-stone wall hearting-fill regressor (SiLU MLP with a mean and a softplus variance "
    "on wall height, batter, through-stone spacing, face-stone size, soil and frost days, "
    "Gaussian NLL, Adam lr 1e-3). A hand-written decoupled weight decay after opt.step() is "
    "written p.mul_(1 + lr * wd) instead of 1 - lr * wd: the weights grow a little every step "
    "and, after the early fit, the loss climbs slowly for the rest of the run.",
)
def h533_dry_stone_decay_sign_flip(ctx):
    gen = seeded(53310)
    model = _GaussNet(6, 48)
    lr, wd = 1e-3, 8.0
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n0 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.mul_(1 + lr * wd)  # meant 1 - lr * wd

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 53311), 300, _gauss_nll, after=after)
    n1 = float(torch.cat([p.detach().flatten() for p in model.parameters()]).norm())
    best = min(range(len(losses)), key=lambda i: _mean(losses[max(i - 5, 0) : i + 5]))
    ctx.check("weights grew over 3x", n1 > 3 * n0)
    ctx.check("the best loss is in the first half", best < 150)
    ctx.check(
        "last 20 steps over 1.0 nats above the best",
        _mean(losses[-20:]) > _mean(losses[max(best - 5, 0) : best + 5]) + 1.0,
    )
    ctx.check("finite (a slow climb, not a blow-up)", _finite(losses))


# -- control 1: a HF BERT classifier trained with gradual unfreezing -----------------------------

UNFREEZE_EVERY = 40


@scenario(
    family="handbell_method_touch_gradual_unfreeze_hf_bert",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Handbell method-touch classifier: a tiny Hugging Face BERT (built from a config, "
    "2 layers, width 32) over a sequence of bell-change tokens, with its classification head, "
    "cross-entropy, AdamW with one param group per layer, lower rates for lower layers, clipping at norm 1. Gradual unfreezing as in ULMFiT: the "
    "head trains alone for 40 steps, then the last encoder layer, then the first, then the "
    "embeddings join, one every 40 steps; the gradient norm and the update size jump at each "
    "unfreeze, which is the practice, not a fault.",
)
def h533_handbell_bert_gradual_unfreeze(ctx):
    gen = seeded(53312)
    model = hf_bert(vocab=128, dim=32, layers=2, heads=2, labels=2)
    stages = [
        list(model.bert.encoder.layer[1].parameters()),
        list(model.bert.encoder.layer[0].parameters()),
        list(model.bert.embeddings.parameters()),
    ]
    head = [
        p for n, p in model.named_parameters() if not n.startswith(("bert.encoder", "bert.emb"))
    ]
    for group in stages:
        for p in group:
            p.requires_grad_(False)
    opt = torch.optim.AdamW(
        [{"params": head, "lr": 3e-3}]
        + [{"params": g, "lr": lr} for g, lr in zip(stages, (1e-3, 5e-4, 2.5e-4), strict=True)],
        weight_decay=0.01,
    )
    w0 = [g[0].detach().clone() for g in stages]
    ctx.attach(model, opt)
    data = bert_batches(gen, 32, 16, 128)
    losses = []
    for step in range(200):
        if step > 0 and step % UNFREEZE_EVERY == 0 and step // UNFREEZE_EVERY <= len(stages):
            for p in stages[step // UNFREEZE_EVERY - 1]:
                p.requires_grad_(True)
        x, y = next(data)
        ctx.targets(y)
        loss = F.cross_entropy(model(input_ids=x).logits, y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    moved = [_rel_change(g[0], w) for g, w in zip(stages, w0, strict=True)]
    ctx.check("every stage moved once unfrozen", all(m > 1e-3 for m in moved))
    ctx.check("trained (loss under 0.7x) and finite", _fell(losses))
    ctx.check("ends under 0.4 nats", _mean(losses[-20:]) < 0.4)


# -- control 2: a Conv1d classifier with OneCycleLR, label smoothing and clipping ----------------


class _ShuffleConv(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 32, 5, padding=2)
        self.head = nn.Linear(32, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _taps(gen, batch, length, classes):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        period = 4.0 + 2.0 * y.float()
        phase = 6.3 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(2 * math.pi * t / period[:, None] + phase)
        yield x + 0.6 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="clog_dance_shuffle_onecycle_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Clog-dance shuffle-step classifier (Conv1d over a noisy floor-microphone tap trace, "
    "cross-entropy with label smoothing 0.1, SGD momentum 0.9, OneCycleLR to 0.1, clipping at "
    "norm 1); an ordinary run.",
)
def h533_clog_dance_onecycle(ctx):
    gen = seeded(53313)
    model = _ShuffleConv(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=200)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _taps(gen, 32, 48, 4),
        200,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("trained (loss under 0.6x) and finite", _fell(losses, ratio=0.6))


# -- control 3: fp16 autocast + GradScaler, two groups, plateau schedule, accumulation 2 ---------


@scenario(
    family="blacksmith_forge_weld_scale_fp16_huber_regressor",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Blacksmith forge-weld strength regressor (GELU MLP on flux amount, heat colour, "
    "scale thickness, hammer blows and bar overlap, Huber loss, fp16 autocast + GradScaler, "
    "Adam in two param groups (head at half the lr), ReduceLROnPlateau, gradient accumulation "
    "over 2 micro-batches); an ordinary run.",
)
def h533_forge_weld_fp16_accum(ctx):
    gen = seeded(53314)
    model = _Net(5, 48, 1, act=nn.GELU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adam(
        [{"params": body, "lr": 2e-3}, {"params": model.head.parameters(), "lr": 1e-3}]
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    ctx.attach(model, opt, scaler=scaler)
    data = _readings(gen, 32, 5, 53315)
    losses = []
    for _step in range(180):
        total = 0.0
        for _ in range(2):
            x, y = next(data)
            with torch.autocast("cpu", dtype=torch.float16):
                out = model(x)
            loss = F.huber_loss(out.float(), y) / 2
            scaler.scale(loss).backward()
            total = total + loss.detach()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        ctx.scales.append(float(scaler.get_scale()))
        sched.step(float(total))
        losses.append(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained (loss under 0.6x) and finite", _fell(losses, ratio=0.6))
    ctx.check("scale stayed above 1", min(ctx.scales) >= 1.0)
