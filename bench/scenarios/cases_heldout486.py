"""Held-out set 486 (``h486_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a taper-dipping candle-diameter regressor whose loader adds a calibration offset to the
cached targets in place on every draw (a drifting target, a slow climb, RMSprop); a kyudo
tsurune-twang ReLU RNN whose identity recurrent init is typed with gain 1.15 (gradients grow
through time, SGD momentum); a cave-pool drip-event detector taking log(mean power) of a window
with no floor, fed a recorder dropout at step 100 (log 0, NaN, NAdam); a semaphore relay-station
selective state-space language model whose cosine head's learned logit scale has lost its clamp
(the head's logits grow without bound, Adam); a zydeco frottoir rub-pattern classifier fed one
shard of raw int16 counts (SGD, clipped); a mokume-gane twist-ladder regressor whose resumed
step sums the loss and multiplies by the accumulation count (one gradient burst, SGD Nesterov); a
fresco intonaco set-time regressor whose head group lr is typed 1e-7 (Adadelta); a butter-churn
break-point classifier whose focal prior bias is applied to every Linear (dead ReLUs, Adam); a
parquetry herringbone species classifier whose temperature is converted from percent twice
(softmax collapse, AdamW); a lenticular-cloud rotor-gust regressor whose OneCycleLR max_lr is
typed 2.0 for 0.2 (past 2/sharpness, SGD).

Controls: a kalimba tine-melody selective SSM language model with a sequence-length warm-up (16
then 32, AdamW, warm-up + cosine, clipping); a lagerphone stomp Conv1d classifier under fp16
autocast with a GradScaler (RAdam, OneCycleLR, label smoothing); an indigo-vat dip-shade
Gaussian-NLL net (Adamax, two param groups, ReduceLROnPlateau, gradient accumulation 2).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


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
    backprop=None,
    after=None,
    clip=None,
    sched=None,
    accumulate=1,
    attach=True,
):
    """The file's loop: ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``backprop(step, loss)`` is the loss actually backpropagated, ``after(step, loss)`` runs after
    the optimizer step. Stops after a non-finite loss once ``ctx.step`` has seen it."""
    if attach:
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
            if classifier and attach:
                ctx.targets(y)
            loss = loss_fn(model(x), y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
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

    def features(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- 1. loss divergence: a calibration offset added to the cached targets on every draw ------------


def _candle_batches(gen, batch, offset):
    """Candle-diameter readings from a cached table; the loader's calibration offset is meant to
    be applied once but is added in place to the cache every time a batch is drawn."""
    g = torch.Generator().manual_seed(4861)
    x_all = torch.randn(2048, 10, generator=g)
    w = torch.randn(10, generator=g)
    y_all = torch.tanh(x_all @ w / math.sqrt(10)) + 0.05 * torch.randn(2048, generator=g)
    while True:
        idx = torch.randint(0, 2048, (batch,), generator=gen)
        y_all.add_(offset)  # bug: should be y_all[idx] + offset, once
        yield x_all[idx], y_all[idx].clone()


@scenario(
    family="taper_dipping_candle_diameter_drift_target_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Taper-dipping candle-diameter regressor (tanh MLP on wax temperature, dip count, "
    "dwell and room features, MSE, RMSprop, cosine decay). The loader adds a wick-calibration offset to the "
    "cached target table in place on every draw instead of once to the batch: the targets drift "
    "a little every step; once the cosine lr has decayed the model stops keeping up and the "
    "loss climbs slowly with no other mechanism.",
)
def h486_candle_target_drift(ctx) -> None:
    gen = seeded(4861)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 260, eta_min=1e-6)
    batches = _candle_batches(gen, 64, 1e-2)
    losses, _ = _train(ctx, model, opt, batches, 260, F.mse_loss, sched=sched)
    best = min(_mean(losses[i : i + 10]) for i in range(0, 150, 5))
    ctx.check(
        "trained first (best 10-step mean under 0.7x the start)", best < 0.7 * _mean(losses[:10])
    )
    ctx.check("the loss climbs over 2x its best", _mean(losses[-10:]) > 2 * best)
    ctx.check(
        "rising over the last third",
        _mean(losses[-20:]) > 1.3 * _mean(losses[160:180]),
    )
    ctx.check("no NaN (a slow climb, not a blow-up)", _finite(losses))


# -- 2. exploding gradients: IRNN recurrent init typed with gain 1.15 -------------------------------


class _TwangRNN(nn.Module):
    """A hand-written ReLU RNN over a bowstring's sound envelope, regressing its decay time."""

    def __init__(self, hidden=32, gain=1.0):
        super().__init__()
        self.inp = nn.Linear(1, hidden)
        self.rec = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)
        with torch.no_grad():
            self.rec.weight.copy_(gain * torch.eye(hidden))
            self.rec.bias.zero_()
            self.inp.bias.zero_()

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.rec.out_features)
        for t in range(x.shape[1]):
            h = F.relu(self.inp(x[:, t, None]) + self.rec(h))
        return self.head(h).squeeze(-1)


def _twang_batches(gen, batch=32, length=40):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        tau = 5 + 15 * torch.rand(batch, generator=gen)
        env = torch.exp(-t[None] / tau[:, None]) * torch.cos(0.9 * t[None])
        x = 0.3 * env + 0.02 * torch.randn(batch, length, generator=gen)
        yield x, (tau - 12.5) / 5


@scenario(
    family="kyudo_tsurune_twang_identity_gain_irnn",
    optimizer="SGD momentum",
    cause="exploding_gradients",
    where=("rec",),
    diverges="auto",
    heldout=True,
    note="Kyudo tsurune (bowstring twang) decay regressor: a hand-written ReLU RNN over a 40-step "
    "sound envelope (MSE, SGD momentum 0.9). The IRNN recipe's identity recurrent init is typed "
    "with gain 1.15 for 1.0: the state and its gradient grow through time, the recurrent layer's "
    "gradient outgrows the rest and the loss blows up.",
)
def h486_kyudo_irnn_gain(ctx) -> None:
    gen = seeded(4862)
    model = _TwangRNN(gain=1.15)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    rec, head = [], []
    ctx.attach(model, opt)
    batches = _twang_batches(gen)
    losses = []
    for _ in range(150):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        rec.append(float(model.rec.weight.grad.norm()))
        head.append(float(model.head.weight.grad.norm()))
        opt.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(losses[-1]):
            break

    torch.manual_seed(48620)
    ref_model = _TwangRNN(gain=1.0)
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=1e-3, momentum=0.9)
    ref, _ = _train(
        ctx, ref_model, ref_opt, _twang_batches(seeded(48621)), 150, F.mse_loss, attach=False
    )
    ctx.check("with gain 1.0 the same run stays finite", _finite(ref))
    ctx.check("recurrent grad over 10x the head's at the start", rec[0] > 10 * head[0])
    ctx.check(
        "the loss blows up (non-finite or over 100x its minimum)",
        not _finite(losses) or max(losses) > 100 * min(losses),
    )


# -- 3. nonfinite: log(mean power) of a window with no floor ----------------------------------------

DRIP_STEP = 100


class _LogPower(nn.Module):
    def forward(self, x):
        return torch.log(x.pow(2).mean(-1, keepdim=True))  # missing clamp(min=1e-8)


class _DripNet(nn.Module):
    def __init__(self, window=32, hidden=32):
        super().__init__()
        self.log_power = _LogPower()
        self.fc1 = nn.Linear(window + 1, hidden)
        self.act = nn.GELU()
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = torch.cat([x, self.log_power(x)], -1)
        return self.head(self.act(self.fc1(z))).squeeze(-1)


def _drip_batches(gen, batch=64, window=32):
    t = torch.arange(window, dtype=torch.float32)
    while True:
        y = (torch.rand(batch, generator=gen) < 0.5).float()
        at = torch.randint(4, window - 4, (batch,), generator=gen)
        click = torch.exp(-((t[None] - at[:, None]) ** 2) / 2.0) * y[:, None]
        yield click + 0.1 * torch.randn(batch, window, generator=gen), y


@scenario(
    family="cave_pool_drip_event_log_power_bce_net",
    optimizer="NAdam",
    cause="nonfinite",
    where=("log_power",),
    diverges=DRIP_STEP,
    heldout=True,
    onset=DRIP_STEP,
    note="Cave-pool drip-event detector (GELU MLP on a 32-sample hydrophone window plus its log "
    "mean power, BCE with logits, NAdam). The log-power module has no floor: at step 100 a "
    "recorder dropout delivers all-zero windows, log(0) = -inf flows into fc1 and the loss is "
    "NaN at that step.",
)
def h486_cave_drip_log_zero(ctx) -> None:
    gen = seeded(4863)
    model = _DripNet()
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    seen = {}

    def alter(step, x, y):
        if step == DRIP_STEP:
            x = x.clone()
            x[:8] = 0.0
            seen["power"] = model.log_power(x)
        return x, y

    losses, _ = _train(
        ctx,
        model,
        opt,
        _drip_batches(gen),
        200,
        F.binary_cross_entropy_with_logits,
        alter=alter,
    )
    ctx.check("finite before the dropout", _finite(losses[:DRIP_STEP]))
    ctx.check("trained before the dropout", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))
    ctx.check(
        "the loss is non-finite at step 100",
        len(losses) > DRIP_STEP and not math.isfinite(losses[DRIP_STEP]),
    )
    ctx.check(
        "log_power gave -inf at step 100",
        "power" in seen and bool(torch.isneginf(seen["power"]).any()),
    )


# -- 4. output logit divergence: a selective SSM LM whose learned logit scale lost its clamp ------


class _SelectiveScan(nn.Module):
    """Input-dependent per-channel decay and input gate, scanned with a Python loop."""

    def __init__(self, dim):
        super().__init__()
        self.in_proj = nn.Linear(dim, dim)
        self.decay_proj = nn.Linear(dim, dim)
        self.gate_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        nn.init.constant_(self.decay_proj.bias, 2.0)

    def forward(self, x):
        u = self.in_proj(x)
        a = torch.sigmoid(self.decay_proj(x))
        g = torch.sigmoid(self.gate_proj(x))
        h = torch.zeros_like(u[:, 0])
        out = []
        for t in range(x.shape[1]):
            h = a[:, t] * h + g[:, t] * u[:, t]
            out.append(h)
        return self.out_proj(torch.stack(out, 1) * F.silu(x))


class _SSMBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.scan = _SelectiveScan(dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, x):
        x = x + self.scan(self.ln(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class _SSMLM(nn.Module):
    def __init__(self, vocab=16, dim=32, layers=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_SSMBlock(dim) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, idx):
        x = self.tok(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def _lm_loss(out, y):
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def _relay_sequences(gen, batch=32, length=16, vocab=16):
    """Generated relay signals: each sequence counts up the code book by a fixed stride 1..3."""
    while True:
        start = torch.randint(0, vocab, (batch, 1), generator=gen)
        stride = torch.randint(1, 4, (batch, 1), generator=gen)
        seq = (start + stride * torch.arange(length + 1)[None]) % vocab
        yield seq[:, :-1], seq[:, 1:]


def _periodic_sequences(gen, batch=32, length=24, low=8, vocab=16, high_from=None):
    """Generated melodies: a random motif of period 2..5 over ``low`` notes, repeated. With
    ``high_from`` the tokens from that position on move up into the upper register."""
    while True:
        period = torch.randint(2, 6, (batch,), generator=gen)
        motif = torch.randint(0, low, (batch, 5), generator=gen)
        pos = torch.arange(length + 1)[None] % period[:, None]
        seq = motif.gather(1, pos)
        if high_from is not None and length + 1 > high_from:
            seq[:, high_from:] = (seq[:, high_from:] + low) % vocab
        yield seq[:, :-1], seq[:, 1:]


@scenario(
    family="semaphore_relay_station_selective_ssm_lm",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Semaphore relay-station language model: a hand-written selective state-space model "
    "(input-dependent per-channel decay and input gate, a sequential scan in a Python loop, two "
    "blocks) over generated relay signals (a code book counted up by a stride of 1 to 3), "
    "cross-entropy, Adam. The auxiliary z-loss on logsumexp(logits)^2 is added with its sign "
    "flipped and its coefficient typed 1e-2 for 1e-4: the run is rewarded for large logsumexp "
    "and the head's logits grow without bound while the cross-entropy stays low.",
)
def h486_semaphore_ssm_zloss_sign(ctx) -> None:
    gen = seeded(4864)
    model = _SSMLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    mx = []

    def backprop(step, loss):
        return loss - 1e-2 * seen["z"]  # bug: + 1e-4 * z

    seen = {}

    def loss_fn(out, y):
        mx.append(float(out.detach().abs().max()))
        seen["z"] = torch.logsumexp(out, -1).pow(2).mean()
        return _lm_loss(out, y)

    losses, _ = _train(
        ctx, model, opt, _relay_sequences(gen), 200, loss_fn, backprop=backprop, classifier=False
    )
    ctx.check("trained (cross-entropy fell)", _fell(losses, ratio=0.2))
    ctx.check("max |logit| over 20x its start", mx[-1] > 20 * mx[0])
    ctx.check("still growing over the last third", _mean(mx[-10:]) > 1.5 * _mean(mx[125:135]))


# -- 5. data outlier: one shard of raw int16 counts -----------------------------------------------

FROTTOIR_STEP = 120


@scenario(
    family="zydeco_frottoir_rub_pattern_relu_classifier",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=FROTTOIR_STEP,
    note="Zydeco frottoir rub-pattern classifier (ReLU MLP on 24 spectral-band features of a "
    "washboard-vest stroke, 6 patterns, cross-entropy, SGD with clipping at 5). One shard, "
    "drawn at step 120, was exported as raw int16 counts instead of normalised floats: the "
    "inputs are ~3000x larger for that one batch; the loss and gradient jump and the run "
    "recovers.",
)
def h486_frottoir_int16_shard(ctx) -> None:
    gen = seeded(4865)
    model = _Net(24, 64, 6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scale = {}

    def alter(step, x, y):
        if step == FROTTOIR_STEP:
            x = torch.round(x * 3000.0)  # int16 counts, never divided by the full scale
        scale.setdefault(step, float(x.abs().mean()))
        return x, y

    losses, norms = _train(
        ctx,
        model,
        opt,
        _grades(gen, 64, 24, 6, 4865, spread=1.4),
        260,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=5.0,
    )
    pre = _mean(losses[FROTTOIR_STEP - 10 : FROTTOIR_STEP])
    ctx.check("inputs over 100x at the shard", scale[FROTTOIR_STEP] > 100 * scale[0])
    ctx.check("loss at the shard over 10x the 10 steps before", losses[FROTTOIR_STEP] > 10 * pre)
    ctx.check(
        "gradient at the shard over 20x the median", norms[FROTTOIR_STEP] > 20 * _median(norms)
    )
    ctx.check("recovered: last 10 under 2x the pre-shard level", _mean(losses[-10:]) < 2 * pre)


# -- 6. gradient spike: a resumed step sums the loss and multiplies by the accumulation count ------

MOKUME_STEP = 110


@scenario(
    family="mokume_gane_twist_ladder_accum_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=MOKUME_STEP,
    note="Mokume-gane twist-ladder pattern-pitch regressor (SiLU MLP on billet layer, twist and "
    "forging features, Huber, SGD Nesterov, 4 accumulated micro-batches, clipping at 1). On the "
    "first step after a resume at step 110 the loss normaliser is rebuilt wrongly: the "
    "micro-batch losses are summed over samples and multiplied by the accumulation count "
    "instead of averaged and divided, a ~1000x gradient for one step that clipping contains.",
)
def h486_mokume_resume_accum(ctx) -> None:
    gen = seeded(4866)
    model = _Net(12, 48, 1, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        if step == MOKUME_STEP:
            return loss * 64 * 4 * 4  # sum over 64 samples, x accum twice (undoing the / 4)
        return loss

    losses, norms = _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 12, 4866),
        220,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
        accumulate=4,
    )
    ctx.check("gradient at step 110 over 50x the median", norms[MOKUME_STEP] > 50 * _median(norms))
    ctx.check(
        "only one burst (no other step over 10x the median)",
        sum(n > 10 * _median(norms) for n in norms) == 1,
    )
    ctx.check("trained and stayed finite", _fell(losses))


# -- 7. update ratio: the head group lr typed 1e-7 --------------------------------------------------


@scenario(
    family="fresco_intonaco_set_time_two_group_adadelta_regressor",
    optimizer="Adadelta",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Fresco intonaco set-time regressor (GELU MLP on lime putty ratio, sand grading, wall "
    "humidity and temperature, Huber, Adadelta with two param groups). The head's group lr is "
    "typed 1e-7 for 1.0: the head barely moves (updates far under 1e-6 of its weights per "
    "step) while the trunk trains; the loss still falls, only slower.",
)
def h486_fresco_head_lr(ctx) -> None:
    gen = seeded(4867)
    model = _Net(10, 48, 1, act=nn.GELU)
    trunk = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    opt = torch.optim.Adadelta(
        [{"params": trunk, "lr": 1.0}, {"params": model.head.parameters(), "lr": 1e-7}]
    )
    w_head = model.head.weight.detach().clone()
    w_fc2 = model.fc2.weight.detach().clone()
    losses, _ = _train(ctx, model, opt, _readings(gen, 64, 10, 4867), 200, F.huber_loss)
    dh = float((model.head.weight.detach() - w_head).norm() / w_head.norm())
    d2 = float((model.fc2.weight.detach() - w_fc2).norm() / w_fc2.norm())
    ctx.check("head moved under 1e-5 of its norm over the run", dh < 1e-5)
    ctx.check("fc2 moved over 5% of its norm", d2 > 0.05)
    ctx.check("the loss still fell (no blow-up)", _fell(losses, ratio=0.8))


# -- 8. loss of plasticity: a focal prior bias applied to every Linear ------------------------------


@scenario(
    family="butter_churn_break_point_prior_bias_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Butter-churn break-point classifier (ReLU MLP on paddle torque, cream temperature and "
    "churn-sound features, 5 stages, cross-entropy, Adam). The focal-loss prior bias "
    "-log((1 - pi) / pi) with pi = 0.01, meant for the output layer only, is written in a loop "
    "over every nn.Linear: fc1's and fc2's units start at -4.6 and never fire, so the hidden "
    "layers are dead and the loss stays near chance.",
)
def h486_butter_churn_prior_bias(ctx) -> None:
    gen = seeded(4868)
    model = _Net(16, 48, 5)
    prior = -math.log((1 - 0.01) / 0.01)
    for m in model.modules():
        if isinstance(m, nn.Linear):  # bug: meant only for model.head
            nn.init.constant_(m.bias, prior)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 16, 5, 4868, spread=0.8)
    losses, _ = _train(ctx, model, opt, batches, 200, F.cross_entropy, classifier=True)
    x, _ = next(batches)
    with torch.no_grad():
        h1 = model.act1(model.fc1(x))
        h2 = model.act2(model.fc2(h1))
    ctx.check("over 90% of fc1's units dead", dead_fraction(h1) > 0.9)
    ctx.check("over 90% of fc2's units dead", dead_fraction(h2) > 0.9)
    ctx.check("loss still near chance (over 0.8 ln 5)", _mean(losses[-10:]) > 0.8 * math.log(5))


# -- 9. softmax collapse: a temperature converted from percent twice -------------------------------


@scenario(
    family="parquetry_herringbone_species_temperature_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Parquetry herringbone wood-species classifier (ReLU MLP on grain, colour and tap-tone "
    "features, 8 species, cross-entropy on logits / temperature, AdamW). The config gives the "
    "temperature as 50 (percent); it is divided by 100 in the loader and again in the model, so "
    "the logits are divided by 0.005 for 0.5: the softmax saturates and most rows' target "
    "probability rounds to exactly 1.0.",
)
def h486_parquetry_temperature(ctx) -> None:
    gen = seeded(4869)
    temperature = 50 / 100 / 100  # bug: converted from percent twice
    model = _Net(20, 48, 8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batches = _grades(gen, 64, 20, 8, 4869)

    def loss_fn(out, y):
        return F.cross_entropy(out / temperature, y)

    losses, _ = _train(ctx, model, opt, batches, 150, loss_fn, classifier=True)
    x, y = next(batches)
    with torch.no_grad():
        logits = model(x) / temperature
    ctx.check(
        "over half the rows' target probability exactly 1.0", collapsed_fraction(logits, y) > 0.5
    )
    ctx.check("the loss stays finite", _finite(losses))


# -- 10. sharpness: OneCycleLR max_lr typed 2.0 for 0.2 --------------------------------------------


def _top_eigenvalue(model, loss_fn, batch, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    x, y = batch
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="lenticular_cloud_rotor_gust_onecycle_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=23,
    note="Lenticular-cloud rotor-gust regressor (tanh MLP on lee-wave pressure, wind shear and "
    "ridge features, MSE, plain SGD under OneCycleLR). max_lr is typed 2.0 for 0.2: the top Hessian eigenvalue is about 6 (2/sharpness about 0.32, above "
    "the intended peak); the ramp passes it at step 23, the loss oscillates and blows up.",
)
def h486_lenticular_onecycle(ctx) -> None:
    gen = seeded(4870)
    model = _Net(10, 48, 1, act=nn.Tanh)
    probe = next(_readings(torch.Generator().manual_seed(48700), 256, 10, 4870))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=2.0, total_steps=240, pct_start=0.4, cycle_momentum=False
    )
    seen = {}

    def before(step):
        lr = opt.param_groups[0]["lr"]
        if "lam" not in seen and lr > 0.3:  # well inside the stable range of the intended run
            seen["lam"] = _top_eigenvalue(model, F.mse_loss, probe)
        seen.setdefault("lrs", []).append(lr)

    losses, _ = _train(
        ctx, model, opt, _readings(gen, 64, 10, 4870), 240, F.mse_loss, before=before, sched=sched
    )
    best = min(losses)
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 20 * best), None)
    ctx.check("the loss blows up (non-finite or over 20x its best)", bad is not None)
    ctx.check(
        "the lr at the blow-up is past 2/sharpness",
        bad is not None and "lam" in seen and seen["lrs"][bad] > 2 / seen["lam"],
    )
    ctx.check("trained before the ramp got there", best < 0.5 * _mean(losses[:5]))


# -- controls ----------------------------------------------------------------------------------------

KALIMBA_SWITCH = 110


@scenario(
    family="kalimba_tine_melody_seq_warmup_selective_ssm_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Kalimba tine-melody language model: the hand-written selective state-space model "
    "(input-dependent decay and gate, Python-loop scan) over generated melodies (a motif of "
    "period 2 to 5 repeated, the second half moved up into the upper register), AdamW, linear "
    "warm-up + cosine, clipping at 1. A sequence-length warm-up: 12-token windows until step "
    "110, then 24; the loss jumps once when the longer windows (and the upper register) arrive "
    "and falls again.",
)
def h486_kalimba_ssm_seq_warmup(ctx) -> None:
    gen = seeded(4871)
    model = _SSMLM(vocab=16, dim=32)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    steps = 220
    warm = 15

    def lam(step):
        if step < warm:
            return (step + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warm) / (steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    short = _periodic_sequences(gen, length=12, high_from=12)
    long = _periodic_sequences(gen, length=24, high_from=12)

    def batches():
        step = 0
        while True:
            yield next(short if step < KALIMBA_SWITCH else long)
            step += 1

    losses, _ = _train(ctx, model, opt, batches(), steps, _lm_loss, clip=1.0, sched=sched)
    pre = _mean(losses[KALIMBA_SWITCH - 10 : KALIMBA_SWITCH])
    post = _mean(losses[KALIMBA_SWITCH : KALIMBA_SWITCH + 5])
    ctx.check("trained (loss fell, finite)", _fell(losses))
    ctx.check("the loss jumps when the longer windows arrive", post > 1.2 * pre)
    ctx.check("and falls again (last 10 under 0.8x the jump)", _mean(losses[-10:]) < 0.8 * post)


class _StompConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 7, padding=3)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.max_pool1d(F.relu(self.conv1(x[:, None])), 2)
        h = F.relu(self.conv2(h)).mean(-1)
        return self.head(h)


def _stomp_batches(gen, batch=32, length=64, classes=4):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        rate = 0.25 + 0.2 * y.float()
        phase = 2 * math.pi * torch.rand(batch, 1, generator=gen)
        loud = 0.3 + 0.5 * y.float()[:, None]
        x = loud * torch.relu(torch.sin(rate[:, None] * t[None] + phase)) ** 3
        yield x + 0.1 * torch.randn(batch, length, generator=gen), y


@scenario(
    family="lagerphone_stomp_fp16_conv1d_classifier",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Lagerphone stomp-rhythm classifier (ReLU Conv1d over a 64-sample jingle envelope, 4 "
    "rhythms, cross-entropy with label smoothing 0.1) under fp16 autocast with a GradScaler, "
    "RAdam, OneCycleLR, clipping at 1 after unscaling.",
)
def h486_lagerphone_fp16(ctx) -> None:
    gen = seeded(4872)
    model = _StompConv()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    ctx.attach(model, opt, scaler=scaler)
    batches = _stomp_batches(gen)
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        ctx.targets(y)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y, label_smoothing=0.1)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained (loss fell, finite)", _fell(losses))
    ctx.check("the scale never collapsed (over 1)", min(ctx.scales) > 1.0)


class _ShadeNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act = nn.SiLU()
        self.mean = nn.Linear(hidden, 1)
        self.log_var = nn.Linear(hidden, 1)

    def forward(self, x):
        h = self.act(self.fc1(x))
        return torch.cat([self.mean(h), self.log_var(h)], -1)


def _shade_nll(out, y):
    mean, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return F.gaussian_nll_loss(mean, y, log_var.exp())


def _shade_batches(gen, batch=32):
    g = torch.Generator().manual_seed(48730)
    w = torch.randn(8, generator=g)
    while True:
        x = torch.randn(batch, 8, generator=gen)
        noise = 0.05 + 0.3 * torch.sigmoid(x[:, 0])
        yield x, torch.tanh(x @ w / math.sqrt(8)) + noise * torch.randn(batch, generator=gen)


@scenario(
    family="indigo_vat_dip_shade_gaussian_nll_net",
    optimizer="Adamax",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Indigo-vat dip-shade regressor (SiLU net with a mean and a log-variance head, Gaussian "
    "NLL with the log-variance clamped) on dip count, vat age, pH and air time; Adamax with two "
    "param groups (the variance head at a third of the lr), ReduceLROnPlateau, gradient "
    "accumulation 2.",
)
def h486_indigo_gaussian_nll(ctx) -> None:
    gen = seeded(4873)
    model = _ShadeNet()
    rest = [p for n, p in model.named_parameters() if not n.startswith("log_var.")]
    opt = torch.optim.Adamax(
        [{"params": rest, "lr": 4e-3}, {"params": model.log_var.parameters(), "lr": 1.3e-3}]
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)

    def after(step, loss):
        plateau.step(loss)

    losses, _ = _train(
        ctx, model, opt, _shade_batches(gen), 200, _shade_nll, after=after, accumulate=2
    )
    ctx.check("finite", _finite(losses))
    ctx.check("NLL fell by over 0.6 nat", _mean(losses[-10:]) < _mean(losses[:10]) - 0.6)
