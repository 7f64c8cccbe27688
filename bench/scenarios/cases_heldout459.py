"""Held-out set 459 (``h459_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a sitar sympathetic-string decay 1-D SE-ResNet fed one shard with the decay in
milliseconds for seconds (one corrupted batch, SGD momentum), a sheepdog-trial outrun-time GELU
regressor whose static 2**18 loss scale is not divided back for one resumed step (Adam's second
moment filled, updates stall), a kite-fighting manja-cut classifier whose hand-written label
smoothing uses the raw logits for the log-probabilities (the head's logits grow without bound,
AdamW), a coppersmith planishing-dent ReLU regressor whose fc2 biases get a gated model's -2.0
init (its ReLUs dead for good, RMSprop), a katabatic-wind gust SiLU regressor taking
log(speed) of a calm-day zero reading (NaN, RAdam), a bonsai wiring-bend two-group regressor whose trunk lr is typed 1e-9 (NAdam), an
abseiling rope-stretch 12-layer tanh MLP initialised with std 4/sqrt(fan_in) typed for
1/sqrt(fan_in) (SGD Nesterov), a petanque boule-lie tanh regressor whose curriculum loss-weight
table has 1000 for 1.0 at one step (plain SGD), a banjo head-tension GELU classifier with a
temperature 1e-3 typed for 1.0 (Adagrad) and a chalk-stream weed-cut flow SiLU regressor whose
hand-written decoupled decay multiplies by 1 + lr * wd (Adamax).

Controls: a hot-air-balloon envelope-temperature GELU classifier with stochastic weight averaging
from step 150 (SGD momentum, cosine, then a constant SWALR, the averaged weights kept aside); an
fp16 bell-foundry partial-tuning ReLU conv1d classifier (GradScaler, Adam under OneCycleLR,
label smoothing, clipping); a cider-orchard pomace-yield LayerNorm Huber regressor (AdamW param
groups without decay on biases and norms, accumulation over 2, clipping, ReduceLROnPlateau).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import collapsed_fraction, dead_fraction, grad_norm, scenario, seeded


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel_change(before, after):
    return float((after.detach() - before).norm() / before.norm().clamp_min(1e-12))


def _params_norm(model):
    return math.sqrt(sum(float(p.detach().norm() ** 2) for p in model.parameters()))


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
    """Training loop: ``before(step)``, ``alter(step, x, y)`` changes a batch,
    ``backprop(step, loss)`` the loss actually backpropagated, ``after(step)`` after the step.
    Stops after a non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a reference
    run outside the monitor."""
    if attach:
        ctx.attach(model, opt, scaler=scaler)
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
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
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
    return losses, norms


# -- data ------------------------------------------------------------------------------------------


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.0 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _traces(gen, batch, length=32):
    """Damped plucked-string traces; the target is the decay time in seconds (about 0.2-1)."""
    t = torch.linspace(0, 1, length)
    while True:
        tau = 0.2 + 0.8 * torch.rand(batch, 1, generator=gen)
        freq = 3 + 5 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.exp(-t / tau) * torch.sin(6.28 * freq * t + phase)
        x = x + 0.03 * torch.randn(batch, length, generator=gen)
        yield x[:, None, :], tau.squeeze(1)


def _tone_classes(gen, batch, classes=6, length=32):
    """Short tones whose class is the partial (frequency band) that dominates."""
    t = torch.linspace(0, 1, length)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        f = 2.0 + 2.0 * y[:, None].float() + 0.6 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(6.28 * f * t + phase) + 0.4 * torch.randn(batch, length, generator=gen)
        yield x[:, None, :], y


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


# -- 1. data outlier: a 1-D SE-ResNet fed one shard in milliseconds ----------------------------------


class _SqueezeExcite(nn.Module):
    def __init__(self, ch, r=4):
        super().__init__()
        self.fc1 = nn.Linear(ch, ch // r)
        self.fc2 = nn.Linear(ch // r, ch)

    def forward(self, x):
        s = x.mean(-1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None]


class _SEBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv1d(ch, ch, 3, padding=1)
        self.bn1 = nn.BatchNorm1d(ch)
        self.conv2 = nn.Conv1d(ch, ch, 3, padding=1)
        self.bn2 = nn.BatchNorm1d(ch)
        self.se = _SqueezeExcite(ch)

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.se(self.bn2(self.conv2(h)))
        return F.relu(x + h)


class _SEResNet1d(nn.Module):
    """A hand-written 1-D ResNet with squeeze-and-excitation blocks."""

    def __init__(self, ch=12, blocks=2, out=1):
        super().__init__()
        self.stem = nn.Conv1d(1, ch, 5, padding=2)
        self.stem_bn = nn.BatchNorm1d(ch)
        self.blocks = nn.ModuleList(_SEBlock(ch) for _ in range(blocks))
        self.head = nn.Linear(ch, out)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem(x)))
        for b in self.blocks:
            x = b(x)
        out = self.head(x.mean(-1))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


SITAR_AT = 110


@scenario(
    family="sitar_sympathetic_string_decay_se_resnet1d_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=SITAR_AT,
    note="Sitar sympathetic-string (taraf) decay-time regressor: a hand-written 1-D ResNet with "
    "squeeze-and-excitation blocks and batch norm on plucked-string traces, MSE, SGD momentum, "
    "clipping at 1. One shard, written by a different recorder at step 110, logs the decay "
    "time in milliseconds instead of seconds: one corrupted batch, the loss and the gradient "
    "spike, the clip bounds the step and the run recovers.",
)
def h459_sitar_decay_shard_in_ms(ctx) -> None:
    gen = seeded(4591)
    model = _SEResNet1d()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        return (x, y * 1000.0) if step == SITAR_AT else (x, y)

    losses, norms = _loop(ctx, model, opt, _traces(gen, 64), 220, F.mse_loss, alter=alter, clip=1.0)
    pre_l = _median(losses[SITAR_AT - 30 : SITAR_AT])
    pre_g = _median(norms[SITAR_AT - 30 : SITAR_AT])
    ctx.check("the loss at the bad shard over 50x the median before", losses[SITAR_AT] > 50 * pre_l)
    ctx.check(
        "the gradient at the bad shard over 20x the median before", norms[SITAR_AT] > 20 * pre_g
    )
    ctx.check("trained before it", pre_l < 0.5 * _mean(losses[:10]))
    ctx.check(
        "recovers: the last 20 steps under 2x the median before", _mean(losses[-20:]) < 2 * pre_l
    )


# -- 2. Adam's second moment: a loss scale not divided back ----------------------------------------

SHEEPDOG_AT = 80


@scenario(
    family="sheepdog_trial_outrun_time_gelu_mse_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=SHEEPDOG_AT,
    note="Sheepdog-trial outrun-time regressor (GELU MLP on course, dog and flock features, MSE, "
    "Adam). On the step resumed from a checkpoint (step 80) the hand-written static loss scale "
    "of 2**18 kept from a half-precision trial is applied but not divided back: one gradient "
    "some 1e5 times too large fills Adam's second moment, and for the next hundred steps the "
    "updates are a small fraction of those before; the run crawls.",
)
def h459_sheepdog_outrun_loss_scale_left_in(ctx) -> None:
    def build():
        gen = seeded(4592)
        return gen, _Net(10, 48, 1, act=nn.GELU)

    gen, ref = build()
    ropt = torch.optim.Adam(ref.parameters(), lr=2e-3)
    ref_losses, _ = _loop(
        ctx, ref, ropt, _readings(gen, 64, 10, seed=4592), 240, F.mse_loss, attach=False
    )

    gen, model = build()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    moves = []
    last = {}

    def before(step):
        last["w"] = [p.detach().clone() for p in model.parameters()]

    def after(step):
        moves.append(
            math.sqrt(
                sum(
                    float((p.detach() - w).norm() ** 2)
                    for p, w in zip(model.parameters(), last["w"], strict=True)
                )
            )
        )

    def backprop(step, loss):
        return loss * 2.0**18 if step == SHEEPDOG_AT else loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=4592),
        240,
        F.mse_loss,
        before=before,
        after=after,
        backprop=backprop,
    )
    pre_g = _median(norms[SHEEPDOG_AT - 30 : SHEEPDOG_AT])
    pre_m = _median(moves[SHEEPDOG_AT - 30 : SHEEPDOG_AT])
    post_m = _median(moves[SHEEPDOG_AT + 20 : SHEEPDOG_AT + 140])
    ctx.check(
        "the gradient at the step over 1e4x the median before", norms[SHEEPDOG_AT] > 1e4 * pre_g
    )
    ctx.check("updates 20-140 steps later under 1/20 of those before", post_m < pre_m / 20)
    ctx.check(
        "the loss at the end over 1.5x the clean run's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )
    ctx.check("finite", _finite(losses))


# -- 3. output logits: label smoothing on raw logits -----------------------------------------------


@scenario(
    family="kite_fighting_manja_cut_smoothed_relu_classifier",
    optimizer="AdamW",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Kite-fighting (patang) manja-cut outcome classifier (ReLU MLP on line, glass-coating and "
    "wind features, AdamW). The hand-written label smoothing adds eps * mean over classes of "
    "the raw logits where it meant the log-probabilities: the softmax is unchanged by a shift, "
    "so the loss falls without bound by raising every logit, and the head's logits grow and "
    "keep growing.",
)
def h459_kite_manja_smoothing_on_raw_logits(ctx) -> None:
    gen = seeded(4593)
    model = _Net(12, 48, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    eps = 0.1
    peak = []

    def loss_fn(logits, y):
        peak.append(float(logits.detach().abs().max()))
        nll = F.cross_entropy(logits, y)
        return (1 - eps) * nll - eps * logits.mean()

    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 12, 5, seed=4593), 220, loss_fn, classifier=True
    )
    ctx.check("max |logit| over 20x its start", _mean(peak[-10:]) > 20 * _mean(peak[:5]))
    ctx.check("still growing at the end", _mean(peak[-10:]) > 1.2 * _mean(peak[-60:-50]))
    ctx.check("the 'loss' below -10", losses[-1] < -10)


# -- 4. plasticity: a gate's bias init copied onto a ReLU layer -------------------------------------


@scenario(
    family="coppersmith_planishing_dent_depth_relu_regressor",
    optimizer="RMSprop",
    cause="loss_of_plasticity",
    where=("fc2", "act2"),
    diverges=None,
    heldout=True,
    note="Coppersmith planishing dent-depth regressor (ReLU MLP on hammer, stake and sheet "
    "features, MSE, RMSprop). The init code is copied from the shop's gated model, where fc2 "
    "is a sigmoid gate started closed with its biases at -2.0; here fc2 feeds a ReLU, so every "
    "unit of act2 starts dead, gets no gradient and never revives: the loss stalls far above "
    "the default-init run's.",
)
def h459_coppersmith_gate_bias_on_relu(ctx) -> None:
    def run(bias, attach):
        gen = seeded(4594)
        model = _Net(10, 48, 1)
        if bias is not None:
            nn.init.constant_(model.fc2.bias, bias)
        opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
        x, _ = next(_readings(seeded(45940), 512, 10, seed=4594))
        dead = []

        def after(step):
            if step % 20 == 19:
                with torch.no_grad():
                    dead.append(dead_fraction(model.features(x)))

        losses, _ = _loop(
            ctx,
            model,
            opt,
            _readings(gen, 64, 10, seed=4594),
            200,
            F.mse_loss,
            after=after,
            attach=attach,
        )
        return losses, dead

    ref_losses, ref_dead = run(None, False)
    losses, dead = run(-2.0, True)
    ctx.check("over 80% of act2's units dead at every probe", min(dead) > 0.8)
    ctx.check("under 20% dead at the default init", ref_dead[-1] < 0.2)
    ctx.check(
        "the loss stalls over 1.5x the default-init run's",
        _mean(losses[-20:]) > 1.5 * _mean(ref_losses[-20:]),
    )


# -- 5. nonfinite: log of a calm-day zero ----------------------------------------------------------


class _LogSpeed(nn.Module):
    """Replaces the wind-speed column (0) by its log, with no floor."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _GustNet(nn.Module):
    def __init__(self, d_in=8, hidden=48):
        super().__init__()
        self.log_speed = _LogSpeed()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.silu(self.fc1(self.log_speed(x)))
        return self.head(F.silu(self.fc2(h))).squeeze(-1)


KATABATIC_AT = 100


@scenario(
    family="katabatic_wind_gust_peak_log_speed_silu_regressor",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_speed",),
    diverges=KATABATIC_AT,
    heldout=True,
    onset=KATABATIC_AT,
    note="Katabatic-wind gust-peak regressor (SiLU MLP, MSE, RAdam) whose first layer takes "
    "log(mean wind speed) with no floor. The batch at step 100 holds a calm-night reading of "
    "exactly 0 m/s: log 0 = -inf goes through fc1 and the loss is NaN at step 100.",
)
def h459_katabatic_log_of_calm_reading(ctx) -> None:
    gen = seeded(4595)
    model = _GustNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    base = _readings(gen, 64, 8, seed=4595)

    def batches():
        for x, y in base:
            x = x.clone()
            x[:, 0] = torch.exp(0.5 * x[:, 0])  # the speed column, positive
            yield x, y

    def alter(step, x, y):
        if step == KATABATIC_AT:
            x = x.clone()
            x[7, 0] = 0.0
        return x, y

    losses, _ = _loop(ctx, model, opt, batches(), 200, F.mse_loss, alter=alter)
    ctx.check("finite before step 100", _finite(losses[:KATABATIC_AT]))
    ctx.check(
        "the loss non-finite at step 100",
        len(losses) > KATABATIC_AT and not math.isfinite(losses[KATABATIC_AT]),
    )
    ctx.check(
        "trained before it",
        _mean(losses[KATABATIC_AT - 10 : KATABATIC_AT]) < 0.7 * _mean(losses[:10]),
    )


# -- 6. update ratio: a trunk lr typed 1e-9 --------------------------------------------------------


@scenario(
    family="bonsai_wiring_branch_bend_two_group_relu_regressor",
    optimizer="NAdam",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Bonsai wiring branch-bend regressor (ReLU MLP on wire gauge, branch diameter and "
    "season features, MSE, NAdam with two param groups). The trunk group's lr is typed 1e-9 "
    "for 1e-3: fc1 and fc2 receive gradients but barely move, only the head learns.",
)
def h459_bonsai_trunk_lr_typo(ctx) -> None:
    gen = seeded(4596)
    model = _Net(10, 48, 1)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.NAdam(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 1e-2}]
    )
    w0 = {
        n: m.weight.detach().clone()
        for n, m in (("fc1", model.fc1), ("fc2", model.fc2), ("head", model.head))
    }
    grads = []

    def after(step):
        grads.append(
            float(model.fc1.weight.grad.norm()) if model.fc1.weight.grad is not None else 0.0
        )

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, seed=4596), 200, F.mse_loss, after=after
    )
    ctx.check("fc1 moves under 1e-5 of its norm", _rel_change(w0["fc1"], model.fc1.weight) < 1e-5)
    ctx.check("fc2 moves under 1e-5 of its norm", _rel_change(w0["fc2"], model.fc2.weight) < 1e-5)
    ctx.check("the head moves over 5%", _rel_change(w0["head"], model.head.weight) > 0.05)
    ctx.check("fc1 receives gradients", _median(grads) > 1e-4)


# -- 7. exploding gradients: init std typed 4/sqrt(fan_in) -----------------------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=8, width=32, depth=12, std_gain=1.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=std_gain / math.sqrt(lin.in_features))
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="abseiling_rope_stretch_twelve_layer_tanh_mlp",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Abseiling rope-stretch regressor (12-layer tanh MLP on load, rope age and descent "
    "features, MSE, SGD Nesterov, clipping at 1). The init std is typed 4/sqrt(fan_in) for "
    "1/sqrt(fan_in): the net sits in the chaotic phase and the gradient grows back through "
    "depth, the first layer's far above the last's.",
)
def h459_abseil_init_std_typo(ctx) -> None:
    def ratio(model, x, y):
        model.zero_grad()
        F.mse_loss(model(x), y).backward()
        r = float(model.layers[0].weight.grad.norm() / model.layers[-1].weight.grad.norm())
        model.zero_grad()
        return r

    xr, yr = next(_readings(seeded(45970), 256, 8, seed=4597))
    seeded(4597)
    ref_ratio = ratio(_DeepTanh(std_gain=1.0), xr, yr)
    gen = seeded(4597)
    model = _DeepTanh(std_gain=4.0)
    start_ratio = ratio(model, xr, yr)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9, nesterov=True)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, seed=4597), 150, F.mse_loss, clip=1.0)
    ctx.check("the first layer's gradient over 20x the last's", start_ratio > 20)
    ctx.check("under 5x at std 1/sqrt(fan_in)", ref_ratio < 5)
    ctx.check("still over 10x after training", ratio(model, xr, yr) > 10)
    ctx.check("finite", _finite(losses))


# -- 8. gradient spike: a loss-weight table typed 1000 ---------------------------------------------

PETANQUE_AT = 120


@scenario(
    family="petanque_boule_lie_distance_curriculum_tanh_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=PETANQUE_AT,
    note="Petanque boule-lie distance regressor (tanh MLP on throw, terrain and boule features, "
    "MSE, plain SGD, clipping at 5). The curriculum loss-weight table has the entry for step "
    "120 typed 1000 for 1.0: one gradient burst on an ordinary batch and an ordinary logged "
    "loss, the run recovers.",
)
def h459_petanque_loss_weight_typo(ctx) -> None:
    gen = seeded(4598)
    model = _Net(10, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    weights = {s: 1.0 for s in range(300)}
    weights[PETANQUE_AT] = 1000.0

    def backprop(step, loss):
        return weights[step] * loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=4598),
        220,
        F.mse_loss,
        backprop=backprop,
        clip=5.0,
    )
    pre_g = _median(norms[PETANQUE_AT - 30 : PETANQUE_AT])
    pre_l = _median(losses[PETANQUE_AT - 30 : PETANQUE_AT])
    ctx.check(
        "the gradient at step 120 over 50x the median before", norms[PETANQUE_AT] > 50 * pre_g
    )
    ctx.check("the logged loss at step 120 ordinary (under 2x)", losses[PETANQUE_AT] < 2 * pre_l)
    ctx.check(
        "recovers: the last 20 steps under 1.5x the median before",
        _mean(losses[-20:]) < 1.5 * pre_l,
    )
    ctx.check("finite", _finite(losses))


# -- 9. softmax collapse: a temperature typed 1e-3 -------------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="banjo_head_tension_tone_temperature_gelu_classifier",
    optimizer="Adagrad",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Banjo head-tension tone-grade classifier (GELU MLP on tap-tone features, cross-entropy, "
    "Adagrad). The softmax temperature is typed 1e-3 for 1.0: the logits are multiplied by "
    "1000, the float32 softmax rounds the target's probability to exactly 1.0 on most rows.",
)
def h459_banjo_temperature_typo(ctx) -> None:
    gen = seeded(4599)
    model = _TempNet(12, 48, 6, temperature=1e-3)
    opt = torch.optim.Adagrad(model.parameters(), lr=1e-2)
    collapsed, ref = [], []
    probe = next(_grades(seeded(45990), 256, 12, 6, seed=4599))

    def after(step):
        if step % 10 == 9:
            with torch.no_grad():
                logits = model(probe[0])
                collapsed.append(collapsed_fraction(logits, probe[1]))
                ref.append(collapsed_fraction(logits * model.temperature, probe[1]))

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, seed=4599),
        160,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check(
        "over half the rows' target probability exactly 1.0 (last 5 probes)",
        _mean(collapsed[-5:]) > 0.5,
    )
    ctx.check("under 5% at temperature 1.0 on the same logits", _mean(ref[-5:]) < 0.05)
    ctx.check("finite", _finite(losses))


# -- 10. loss divergence: decoupled decay with the wrong sign --------------------------------------


@scenario(
    family="chalk_stream_weed_cut_flow_silu_regressor",
    optimizer="Adamax",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Chalk-stream weed-cut flow regressor (SiLU MLP on cut length, gauge and rainfall "
    "features, MSE, Adamax). The hand-written decoupled weight decay multiplies the weights by "
    "1 + lr * wd instead of 1 - lr * wd after each step: the weights inflate and the loss "
    "climbs slowly after an ordinary start.",
)
def h459_chalk_stream_decay_sign(ctx) -> None:
    gen = seeded(45910)
    model = _Net(10, 48, 1, act=nn.SiLU)
    lr, wd = 2e-3, 2.5
    opt = torch.optim.Adamax(model.parameters(), lr=lr)
    norms0 = _params_norm(model)

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)

    losses, _ = _loop(
        ctx, model, opt, _readings(gen, 64, 10, seed=45910), 300, F.mse_loss, after=after
    )
    k = 20
    means = [_mean(losses[i : i + k]) for i in range(0, len(losses) - k + 1, k)]
    ctx.check("the last 20 steps over 3x the lowest 20-step mean", means[-1] > 3 * min(means))
    ctx.check("climbing through the second half", means[-1] > means[len(means) // 2] > min(means))
    ctx.check("the weight norm over 2x", _params_norm(model) > 2 * norms0)


# -- controls --------------------------------------------------------------------------------------

SWA_FROM = 150


@scenario(
    family="hot_air_balloon_envelope_temp_swa_gelu_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hot-air-balloon envelope-temperature band classifier (GELU MLP, cross-entropy, SGD "
    "momentum under cosine decay, clipping at 2). From step 150 stochastic weight averaging: a "
    "constant, higher SWALR learning rate from there, the averaged weights kept aside in an "
    "AveragedModel updated every step. Control.",
)
def h459_balloon_swa_control(ctx) -> None:
    from torch.optim.swa_utils import SWALR, AveragedModel

    gen = seeded(45911)
    model = _Net(12, 64, 6, act=nn.GELU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=SWA_FROM, eta_min=0.005)
    swa_model = AveragedModel(model)
    swa_sched = SWALR(opt, swa_lr=0.03, anneal_epochs=1, anneal_strategy="linear")
    averaged = []

    def after(step):
        if step >= SWA_FROM:
            swa_model.update_parameters(model)
            averaged.append(step)
            swa_sched.step()
        else:
            cosine.step()

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 12, 6, seed=45911, spread=1.2),
        240,
        F.cross_entropy,
        classifier=True,
        after=after,
        clip=2.0,
    )
    x, y = next(_grades(seeded(45912), 512, 12, 6, seed=45911, spread=1.2))
    with torch.no_grad():
        swa_acc = float((swa_model(x).argmax(-1) == y).float().mean())
    ctx.check("trained: the loss fell", _fell(losses, ratio=0.5))
    ctx.check("the averaged weights classify over 70% of fresh rows", swa_acc > 0.7)
    ctx.check("averaged from step 150 on", len(averaged) == 240 - SWA_FROM)
    ctx.check("the SWA lr held at 0.03", abs(opt.param_groups[0]["lr"] - 0.03) < 1e-9)


class _PartialConv(nn.Module):
    def __init__(self, classes=6):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 16, 5, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        return self.head(h.mean(-1))


@scenario(
    family="bell_foundry_partial_tuning_fp16_relu_conv1d_classifier",
    optimizer="Adam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Bell-foundry partial-tuning classifier (which partial dominates a struck bell's tone: "
    "ReLU conv1d, fp16 autocast with a torch.amp.GradScaler, Adam under OneCycleLR, label "
    "smoothing 0.1, clipping at 1). Control.",
)
def h459_bell_foundry_fp16_control(ctx) -> None:
    gen = seeded(45913)
    model = _PartialConv()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    steps = 160
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _tone_classes(gen, 64),
        steps,
        loss_fn,
        classifier=True,
        sched=sched,
        scaler=scaler,
        amp=True,
        clip=1.0,
    )
    ctx.check("trained: the loss fell", _fell(losses, ratio=0.6))
    ctx.check(
        "the loss scale stayed finite and positive", all(0 < s < float("inf") for s in ctx.scales)
    )


class _PomaceNet(nn.Module):
    def __init__(self, d_in=10, hidden=48):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.gelu(self.norm(self.fc1(x)))
        return self.head(F.gelu(self.fc2(h))).squeeze(-1)


@scenario(
    family="cider_orchard_pomace_yield_layernorm_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cider-orchard pomace press-yield regressor (LayerNorm GELU MLP, Huber loss, AdamW with "
    "two param groups: decay on weights, none on biases and norms; accumulation over 2, "
    "clipping at 1, ReduceLROnPlateau on a held-out batch). Control.",
)
def h459_cider_pomace_control(ctx) -> None:
    gen = seeded(45914)
    model = _PomaceNet()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight") and "norm" not in n]
    rest = [
        p for n, p in model.named_parameters() if not (n.endswith("weight") and "norm" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": rest, "weight_decay": 0.0}], lr=3e-3
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    hx, hy = next(_readings(seeded(45915), 256, 10, seed=45914, noise=0.1))

    def held_out():
        with torch.no_grad():
            return float(F.huber_loss(model(hx), hy, delta=0.5))

    def loss_fn(out, y):
        return F.huber_loss(out, y, delta=0.5)

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=45914, noise=0.1),
        200,
        loss_fn,
        sched=sched,
        plateau=held_out,
        accumulate=2,
        clip=1.0,
    )
    ctx.check("trained: the loss fell", _fell(losses, ratio=0.5))
    ctx.check("the held-out loss fell under half its start", held_out() < 0.5 * _mean(losses[:5]))
