"""Held-out set 291 (``h291_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before: a lightning-rod strike-current SiLU regressor whose config
hot-reload reads a loss weight given in percent for one step (gradient spike), a snowflake
dendrite arm-length deep tanh MLP initialised with an orthogonal gain of 4 (gradients explode
through depth), a lutenist ornament GELU classifier trained with an eval-time sharpening
temperature (softmax collapse), a swamp-gas glow-duration ReLU regressor fed one log with
durations in milliseconds (data outlier), a laundry-mangle wringing two-group regressor whose
trunk lr multiplier was typed 1e-5 (update ratio), a Morse-key fist capsule-routing classifier
whose squash has no epsilon (0/0 on an idle-line window), a ribbon-lightning channel fp16 MLP fed
field-mill readings in V/m (amp overflow), a double-dutch rope-trick ReLU classifier whose Adamax
lr was typed 0.3 (dead units), a sapling-bend bow-tension GELU regressor whose loss normaliser is
reset for one step on resume (Adam's second moment poisoned), an oyster-dredge haul tanh
regressor with a hand-written L2 penalty of the wrong sign (slow divergence), and three controls
(a haka posture GELU classifier with mixup and label smoothing, a scree run-out Huber regressor
with RAdam, accumulation and ReduceLROnPlateau, a kitesail trim tied autoencoder with warm-up,
cosine decay and clipping).

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
    dead_fraction,
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


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()


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
    clip=None,
    sched=None,
    scaler=None,
    amp=False,
    accumulate=1,
    weight=None,
    penalty=None,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``watch(step, out, x, y)`` records after the forward pass, ``after(step)`` runs after
    the optimizer step, ``weight(step)`` multiplies the backpropagated loss, ``penalty()`` is
    added to it (the logged loss is the plain data loss); stops after logging a non-finite loss."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        shown = 0.0
        w = weight(step) if weight is not None else 1.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
                ctx.targets(y if y.dim() == 1 else y.argmax(-1))
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                out = model(x)
            out = out.float()
            loss = loss_fn(out, y)
            if watch is not None:
                watch(step, out, x, y)
            total = w * loss
            if penalty is not None:
                total = total + penalty()
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
        return self.act1(self.fc1(x))

    def forward(self, x):
        out = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- lightning rod: the config hot-reload reads a percent loss weight for one step -------------

ONSET_ROD = 80


@scenario(
    family="lightning_rod_strike_current_silu_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_ROD,
    note="A SiLU MLP (fc1, act1, fc2, act2, head) regressing the peak current a lightning rod's down-conductor carries from 10 standardised readings (rod height, ground resistance, storm cell distance, field strength), SGD momentum 0.9 at 5e-3, MSE, clipping at 5.0. The trainer hot-reloads its YAML config every 80 steps; the new config file wrote `loss_weight: 100` (in percent, meaning 1.0) and the reload applies it before the loader converts it, so the loss of step 80 alone is backpropagated times 100 on an ordinary batch. The gradient spikes 100x for that one step (no bad data), clipping bounds the update and the run goes on.",
)
def h291_lightning_rod_percent_weight(ctx: Context) -> None:
    gen = seeded(29101)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=1101),
        200,
        F.mse_loss,
        weight=lambda s: 100.0 if s == ONSET_ROD else 1.0,
        clip=5.0,
    )
    ls, g = ctx.losses, ctx.grad_norms
    base = _median(g[ONSET_ROD - 20 : ONSET_ROD])
    ctx.check("the gradient at step 80 is over 50x the usual", g[ONSET_ROD] > 50 * base)
    ctx.check(
        "the loss of the step-80 batch is ordinary (no bad data)",
        ls[ONSET_ROD] < 3.0 * _mean(ls[ONSET_ROD - 10 : ONSET_ROD]),
    )
    ctx.check("the loss fell", _fell(ls))


# -- snowflake dendrite: orthogonal init with gain 4, gradients explode through depth ----------


class DendriteNet(nn.Module):
    """A 12-layer tanh MLP (layers.0 .. layers.11) and a head."""

    def __init__(self, d_in=12, width=64, depth=12, gain=4.0):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.orthogonal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="snowflake_dendrite_arm_length_deep_tanh_regressor",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="A 12-layer tanh MLP (layers.0 .. layers.11, head) regressing the arm length a snowflake's dendrites reach from 12 standardised cloud-chamber readings (temperature, supersaturation, fall time), plain SGD at 1e-2, MSE. The init helper was meant to call orthogonal_ with gain calculate_gain('tanh') (5/3) but the gain argument was typed 4: every layer's Jacobian is stretched past the edge of chaos, so the backward pass grows through depth and the first layer's weight gradient is over 20x the last layer's from the first step on and stays so. No clipping; the loss falls only slowly and noisily, finite.",
)
def h291_snowflake_dendrite_gain(ctx: Context) -> None:
    gen = seeded(29102)
    model = DendriteNet()
    ratios: list[float] = []

    def after_backward_ratio():
        first = model.layers[0].weight.grad
        last = model.layers[-1].weight.grad
        if first is not None and last is not None:
            ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    class _Opt(torch.optim.SGD):
        def step(self, closure=None):
            after_backward_ratio()
            return super().step(closure)

    opt = _Opt(model.parameters(), lr=1e-2)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=1102), 150, F.mse_loss)
    ctx.check("the first layer's gradient is over 20x the last's at step 0", ratios[0] > 20)
    ctx.check("the first layer's gradient stays over 10x the last's", _median(ratios[-50:]) > 10)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- lutenist ornaments: the eval-time sharpening temperature is applied in training -----------


class OrnamentNet(nn.Module):
    def __init__(self, d_in=16, hidden=64, classes=6, temperature=1.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x))))) / self.temperature


@scenario(
    family="lutenist_ornament_kind_gelu_classifier",
    optimizer="RMSprop",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU classifier (fc1, act1, fc2, act2, head) naming which of 6 ornaments (trill, mordent, appoggiatura, slide, vibrato, bebung-like tremolo) a lutenist plays from 16 standardised timing and pitch features, RMSprop at 1e-3, cross-entropy, 300 steps. The model divides its logits by a temperature; the training config was copied from the inference config, where temperature 0.02 sharpens the decoding, so training runs with logits / 0.02: the softmax saturates, and over a quarter of the rows' float32 probabilities of the target round to exactly 1.0 (the rest of the batch gets no useful gradient either). Finite, no blow-up.",
)
def h291_lutenist_eval_temperature(ctx: Context) -> None:
    gen = seeded(29103)
    model = OrnamentNet(temperature=0.02)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    fractions: list[float] = []

    def watch(step, out, x, y):
        fractions.append(collapsed_fraction(out.detach(), y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=1103),
        300,
        F.cross_entropy,
        classifier=True,
        watch=watch,
    )
    ctx.check("over a quarter of the rows collapse to p=1.0", _mean(fractions[-20:]) > 0.25)
    ctx.check("almost no row collapsed at the start", fractions[0] < 0.1)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- swamp gas: one log's glow durations in milliseconds ----------------------------------------

ONSET_SWAMP = 120


@scenario(
    family="swamp_gas_glow_duration_relu_regressor",
    optimizer="NAdam",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SWAMP,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing how long a marsh-gas (will-o'-the-wisp) glow lasts, in standardised seconds, from 10 standardised readings (methane flux, phosphine trace, air temperature, humidity, wind), NAdam at 2e-3, MSE, no clipping. One observer's logbook recorded durations in milliseconds and was merged without conversion: the batch at step 120 carries eight rows whose targets are 1000x too large. The loss and the gradient jump by orders of magnitude on that batch; the run recovers.",
)
def h291_swamp_gas_millisecond_log(ctx: Context) -> None:
    gen = seeded(29104)
    model = Stack(10, 64)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)

    def alter(step, x, y):
        if step == ONSET_SWAMP:
            y = y.clone()
            y[:8] = y[:8] * 1000.0 + 1000.0
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=1104), 240, F.mse_loss, alter=alter)
    ls, g = ctx.losses, ctx.grad_norms
    pre = _mean(ls[ONSET_SWAMP - 20 : ONSET_SWAMP])
    ctx.check("the loss on the bad batch is over 1000x the usual", ls[ONSET_SWAMP] > 1000 * pre)
    ctx.check(
        "the gradient on the bad batch is over 100x the usual",
        g[ONSET_SWAMP] > 100 * _median(g[ONSET_SWAMP - 20 : ONSET_SWAMP]),
    )
    ctx.check("the run recovered", _mean(ls[-20:]) < 3.0 * pre)
    ctx.check("finite throughout", _finite(ls))


# -- laundry mangle: the trunk lr multiplier typed 1e-5 -----------------------------------------


@scenario(
    family="laundry_mangle_wringing_moisture_two_group_regressor",
    optimizer="SGD Nesterov",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the moisture a laundry mangle leaves in linen from 12 standardised readings (roller pressure, roller gap, feed speed, fabric weight), SGD Nesterov momentum 0.9 at 2e-2 with two param groups: the trunk (fc1) at lr * cfg['trunk_mult'], the rest at lr. The multiplier was meant as 0.5 but the config holds 1e-5 (pasted from the weight-decay line above it): fc1's updates are about a millionth of its weights per step (over 1000x smaller than fc2's), it barely moves over the run while fc2 and the head train. The loss still falls as far as the upper layers can take it.",
)
def h291_mangle_trunk_multiplier(ctx: Context) -> None:
    gen = seeded(29105)
    model = Stack(12, 64)
    cfg = {"lr": 2e-2, "weight_decay": 1e-5, "trunk_mult": 1e-5}
    rest = [p for n, p in model.named_parameters() if not n.startswith("fc1.")]
    opt = torch.optim.SGD(
        [
            {"params": model.fc1.parameters(), "lr": cfg["lr"] * cfg["trunk_mult"]},
            {"params": rest, "lr": cfg["lr"]},
        ],
        lr=cfg["lr"],
        momentum=0.9,
        nesterov=True,
    )
    fc1_0, fc2_0 = _flat(model.fc1), _flat(model.fc2)
    _train(ctx, model, opt, _readings(gen, 64, 12, seed=1105), 200, F.mse_loss)
    moved1 = float((_flat(model.fc1) - fc1_0).norm()) / float(fc1_0.norm())
    moved2 = float((_flat(model.fc2) - fc2_0).norm()) / float(fc2_0.norm())
    ctx.check("fc1 moved under 1e-4 of its norm over the run", moved1 < 1e-4)
    ctx.check("fc2 moved over 1000x more, relatively, than fc1", moved2 > 1000 * moved1)
    ctx.check("the loss still fell", _fell(ctx.losses))


# -- Morse-key fist: a capsule network whose squash has no epsilon ------------------------------

ONSET_MORSE = 90
SYMBOLS = 5


class Squash(nn.Module):
    """v = s * |s|^2 / (1 + |s|^2) / |s|, written without an epsilon."""

    def forward(self, s):
        n2 = (s * s).sum(-1, keepdim=True)
        return s * n2 / (1.0 + n2) / n2.sqrt()


class MorseCapsNet(nn.Module):
    """Primary capsules from the key-timing window (no bias), squash, then dynamic routing
    (3 iterations) to one capsule per operator-fist class; the class is the longest capsule."""

    def __init__(self, d_in=32, caps=8, cdim=4, odim=8, classes=SYMBOLS, iters=3):
        super().__init__()
        self.caps, self.cdim, self.iters = caps, cdim, iters
        self.primary = nn.Linear(d_in, caps * cdim, bias=False)
        self.primary_squash = Squash()
        self.route = nn.Parameter(0.3 * torch.randn(caps, classes, odim, cdim))
        self.class_squash = Squash()

    def forward(self, x):
        u = self.primary_squash(self.primary(x).reshape(-1, self.caps, self.cdim))
        u_hat = torch.einsum("icdk,bik->bicd", self.route, u)
        logits = torch.zeros(u_hat.shape[:3])
        for r in range(self.iters):
            c = torch.softmax(logits, dim=2)
            v = self.class_squash((c[..., None] * u_hat).sum(1))
            if r < self.iters - 1:
                logits = logits + (u_hat * v[:, None]).sum(-1)
        return v.norm(dim=-1)


def _margin_loss(lengths, y):
    t = F.one_hot(y, lengths.shape[-1]).float()
    loss = t * F.relu(0.9 - lengths) ** 2 + 0.5 * (1 - t) * F.relu(lengths - 0.1) ** 2
    return loss.sum(-1).mean()


def _key_windows(gen, batch, seed, d_in=32):
    """Key-down and gap durations (positive) of a 32-slot window; each fist class keys its own
    rhythm."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(SYMBOLS, d_in, generator=g) * 2.0
    while True:
        y = torch.randint(0, SYMBOLS, (batch,), generator=gen)
        x = protos[y] + 0.4 * torch.rand(batch, d_in, generator=gen) + 0.05
        yield x, y


@scenario(
    family="morse_key_operator_fist_capsule_routing_classifier",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("primary_squash",),
    diverges=ONSET_MORSE,
    heldout=True,
    onset=ONSET_MORSE,
    note="A hand-written capsule network (primary: a bias-free linear map of a 32-slot window of key-down and gap durations to 8 capsules of 4, primary_squash, route: dynamic routing by agreement over 3 iterations to 5 class capsules, class_squash; the class is the longest capsule, margin loss) naming which of 5 telegraph operators' fists sent a Morse window, Adagrad at 5e-2. The squash was written as s * |s|^2 / (1 + |s|^2) / |s| with no epsilon. At step 90 the batch holds a window recorded while the line was idle: every duration is 0, so the bias-free primary capsules are exactly 0 and primary_squash computes 0 * 0 / 0 = NaN; the NaN flows through routing and the loss is NaN at step 90.",
)
def h291_morse_capsule_squash_eps(ctx: Context) -> None:
    gen = seeded(29106)
    model = MorseCapsNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-2)
    bad: list[bool] = []

    def alter(step, x, y):
        if step == ONSET_MORSE:
            x = x.clone()
            x[5] = 0.0
        return x, y

    def watch(step, out, x, y):
        with torch.no_grad():
            u = model.primary_squash(model.primary(x).reshape(-1, model.caps, model.cdim))
        bad.append(bool(torch.isnan(u).any()))

    _train(
        ctx,
        model,
        opt,
        _key_windows(gen, 64, seed=1106),
        200,
        _margin_loss,
        classifier=True,
        alter=alter,
        watch=watch,
    )
    ls = ctx.losses
    ctx.check("the loss is NaN at step 90", len(ls) == ONSET_MORSE + 1 and math.isnan(ls[-1]))
    ctx.check("finite before step 90", _finite(ls[:ONSET_MORSE]))
    ctx.check("primary_squash first produced NaN at step 90", bad.index(True) == ONSET_MORSE)
    ctx.check("the loss fell before step 90", _fell(ls[:ONSET_MORSE]))


# -- ribbon lightning: field-mill readings in V/m under fp16 autocast ---------------------------


def _field_mill(gen, batch, seed):
    """Eight field-mill and sferics readings, in V/m (hundreds to thousands) instead of the
    kV/m the model was written for; the target (channel luminosity, standardised) uses kV/m."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, generator=g)
    while True:
        kv = 2.0 + torch.randn(batch, 8, generator=gen)
        y = torch.tanh((kv - 2.0) @ w / math.sqrt(8))
        yield kv * 1000.0, y


@scenario(
    family="ribbon_lightning_channel_luminosity_fp16_regressor",
    optimizer="AdamW",
    cause="amp_overflow",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) regressing the luminosity of a ribbon-lightning channel from 8 field-mill and sferics readings, AdamW at 1e-3, MSE, fp16 autocast with a torch.amp.GradScaler (initial scale 65536). The field mills were re-flashed to report V/m and the loader still assumes kV/m, so the inputs arrive 1000x too large (a few thousand): the forward pass fits in fp16, but fc1's weight gradient (readings times the upstream gradient, summed over the batch) overflows fp16 under the loss scale, so the scaler skips step after step and halves its scale down by over 1000x.",
)
def h291_ribbon_lightning_volts(ctx: Context) -> None:
    gen = seeded(29107)
    model = Stack(8, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)
    _train(
        ctx,
        model,
        opt,
        _field_mill(gen, 64, seed=1107),
        150,
        F.mse_loss,
        scaler=scaler,
        amp=True,
    )
    sc = ctx.scales
    skipped = sum(1 for a, b in zip(sc[:-1], sc[1:], strict=False) if b < a)
    ctx.check("the GradScaler's scale fell over 1000x", min(sc) < 65536.0 / 1000)
    ctx.check("the scaler skipped over 10 steps", skipped > 10)
    ctx.check("the logged loss stayed finite", _finite(ctx.losses))


# -- double dutch: the Adamax lr typed 0.3, fc1's ReLUs die -------------------------------------


@scenario(
    family="double_dutch_rope_trick_relu_classifier",
    optimizer="Adamax",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU classifier (fc1, act1, fc2, act2, head) naming which of 6 tricks (turns, crosses, double-unders, push-up, cartwheel, speed) a double-dutch jumper does from 16 standardised rope-handle accelerometer features, Adamax at 2e-3, cross-entropy. A prior-bias init helper meant for the head of a rare-trick detector (bias = -log((1 - p) / p) with p 0.01, about -4.6) was applied with model.apply to every Linear: fc1's units sit far below zero on every input, over half of them never fire, get no gradient and never recover, and the loss stays high.",
)
def h291_double_dutch_prior_bias(ctx: Context) -> None:
    gen = seeded(29108)
    model = Stack(16, 64, out=6)

    def prior_bias(m):
        if isinstance(m, nn.Linear):
            nn.init.constant_(m.bias, -math.log((1 - 0.01) / 0.01))

    model.apply(prior_bias)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    probe = next(_kinds(torch.Generator().manual_seed(8), 512, 16, 6, seed=1108))[0]
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 6, seed=1108),
        200,
        F.cross_entropy,
        classifier=True,
    )
    with torch.no_grad():
        dead1 = dead_fraction(model.features(probe))
    ctx.check("over half of fc1's units dead at the end", dead1 > 0.5)
    ctx.check("the loss stayed above 1.0", _mean(ctx.losses[-20:]) > 1.0)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- sapling bend: the loss normaliser reset on resume ------------------------------------------

ONSET_SAPLING = 50


@scenario(
    family="sapling_bend_trap_tension_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=ONSET_SAPLING,
    note="A GELU MLP (fc1, act1, fc2, act2, head) regressing the tension a bent-sapling snare holds from 10 standardised readings (sapling species, diameter, bend angle, moisture), Adam at 1e-3 (betas 0.9, 0.999), MSE, no clipping. The loss is divided by a running estimate of its own size (a loss normaliser kept as a buffer); the job resumes at step 50 and the checkpoint does not hold that buffer, so it restarts at its init value 1e-5 and the step-50 loss is backpropagated times 100,000 before the estimate catches up the next step. The one huge gradient fills Adam's second moment, which decays only as 0.999^t: for the rest of the run the updates are over 10x smaller than before and the loss, still falling before the resume, stalls.",
)
def h291_sapling_bend_normaliser_reset(ctx: Context) -> None:
    gen = seeded(29109)
    model = Stack(10, 64, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves: list[float] = []
    prev = [_flat(model)]

    def after(step):
        now = _flat(model)
        moves.append(float((now - prev[0]).norm()))
        prev[0] = now

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=1109),
        220,
        F.mse_loss,
        weight=lambda s: 1e5 if s == ONSET_SAPLING else 1.0,
        after=after,
    )
    g, ls = ctx.grad_norms, ctx.losses
    base = _median(g[ONSET_SAPLING - 20 : ONSET_SAPLING])
    ctx.check("the step-50 gradient is over 1000x the usual", g[ONSET_SAPLING] > 1000 * base)
    pre = _median(moves[ONSET_SAPLING - 20 : ONSET_SAPLING])
    ctx.check(
        "updates after the resume are over 10x smaller than before",
        _median(moves[ONSET_SAPLING + 10 : ONSET_SAPLING + 110]) < 0.1 * pre,
    )
    ctx.check(
        "the loss fell before the resume and stalls after it",
        _mean(ls[ONSET_SAPLING - 10 : ONSET_SAPLING]) < 0.8 * _mean(ls[:10])
        and _mean(ls[-20:]) > 0.8 * _mean(ls[ONSET_SAPLING + 1 : ONSET_SAPLING + 21]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- oyster dredge: the hand-written L2 penalty has the wrong sign ------------------------------


@scenario(
    family="oyster_dredge_haul_weight_tanh_regressor",
    optimizer="ASGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A tanh MLP (fc1, act1, fc2, act2, head) regressing an oyster dredge's haul weight from 10 standardised readings (tow speed, warp length, bed density, tide), ASGD at 2e-2, Huber loss. The trainer adds its own L2 penalty (ASGD's weight_decay was left at 0) and writes it as `loss = loss - wd * sum(w^2)` with wd 0.1, a sign slip: the penalty rewards large weights, the weight norm grows step after step and the data loss, after a first fall, climbs slowly for the rest of the run (no blow-up).",
)
def h291_oyster_dredge_l2_sign(ctx: Context) -> None:
    gen = seeded(29110)
    model = Stack(10, 64, act=nn.Tanh)
    opt = torch.optim.ASGD(model.parameters(), lr=2e-2)
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    norm0 = float(torch.stack([w.detach().norm() for w in weights]).norm())

    def penalty():
        return -1e-1 * sum((w * w).sum() for w in weights)

    _train(
        ctx,
        model,
        opt,
        _readings(gen, 64, 10, seed=1110),
        300,
        F.huber_loss,
        penalty=penalty,
    )
    ls = ctx.losses
    norm1 = float(torch.stack([w.detach().norm() for w in weights]).norm())
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10, 10))
    ctx.check("the weight norm grew over 3x", norm1 > 3 * norm0)
    ctx.check("the loss climbed over 2x above its low", _mean(ls[-20:]) > 2 * low)
    ctx.check(
        "the climb is slow: each 50-step mean above the previous after step 100",
        all(_mean(ls[i : i + 50]) < _mean(ls[i + 50 : i + 100]) for i in range(100, 200, 50)),
    )
    ctx.check("finite throughout", _finite(ls))


# -- controls -----------------------------------------------------------------------------------


@scenario(
    family="haka_posture_mixup_gelu_classifier",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Control: a GELU classifier (fc1, act1, fc2, act2, head) naming which of 6 haka postures a performer holds from 16 standardised joint-angle features, AdamW at 3e-3 (weight decay 0.01), OneCycleLR, mixup (alpha 0.4) and label smoothing 0.1 through soft targets, clipping at 1.0. An ordinary run.",
)
def h291_haka_posture_mixup(ctx: Context) -> None:
    gen = seeded(29111)
    model = Stack(16, 64, out=6, act=nn.GELU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    beta = torch.distributions.Beta(0.4, 0.4)

    def mixed(batches):
        for x, y in batches:
            soft = F.one_hot(y, 6).float() * 0.9 + 0.1 / 6
            lam = float(beta.sample())
            perm = torch.randperm(len(y), generator=gen)
            yield lam * x + (1 - lam) * x[perm], lam * soft + (1 - lam) * soft[perm]

    _train(
        ctx,
        model,
        opt,
        mixed(_kinds(gen, 64, 16, 6, seed=1111)),
        steps,
        F.cross_entropy,
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))


@scenario(
    family="scree_slope_runout_huber_regressor",
    optimizer="RAdam",
    cause="healthy",
    heldout=True,
    note="Control: a SiLU MLP (fc1, act1, fc2, act2, head) regressing how far a rockfall runs out on a scree slope from 10 standardised readings (slope angle, block size, fan roughness), RAdam at 2e-3, Huber loss on noisy targets, gradient accumulation over 2, ReduceLROnPlateau. An ordinary run.",
)
def h291_scree_runout_control(ctx: Context) -> None:
    gen = seeded(29112)
    model = Stack(10, 64, act=nn.SiLU)
    opt = torch.optim.RAdam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=1112, noise=0.2),
        150,
        F.huber_loss,
        sched=sched,
        accumulate=2,
    )
    ctx.check("the loss fell", _fell(ctx.losses))
    ctx.check("finite throughout", _finite(ctx.losses))


class TiedAutoencoder(nn.Module):
    def __init__(self, d_in=20, code=6):
        super().__init__()
        self.enc = nn.Linear(d_in, code)
        self.act = nn.Tanh()
        self.dec_bias = nn.Parameter(torch.zeros(d_in))

    def forward(self, x):
        return F.linear(self.act(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _trim_profiles(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(4, 20, generator=g)
    while True:
        z = torch.randn(batch, 4, generator=gen)
        x = z @ basis / 2 + 0.05 * torch.randn(batch, 20, generator=gen)
        yield x, x


@scenario(
    family="kitesail_trim_profile_tied_autoencoder",
    optimizer="SGD momentum",
    cause="healthy",
    heldout=True,
    note="Control: a tied-weight autoencoder (enc, act; the decoder reuses enc.weight transposed) compressing 20 line-tension and sail-shape readings of a kitesail's trim, SGD momentum 0.9 at 5e-2 with linear warm-up over 20 steps then cosine decay (LambdaLR), clipping at 1.0, MSE. An ordinary run.",
)
def h291_kitesail_tied_control(ctx: Context) -> None:
    gen = seeded(29113)
    model = TiedAutoencoder()
    opt = torch.optim.SGD(model.parameters(), lr=5e-2, momentum=0.9)
    steps = 200

    def lam(s):
        return (s + 1) / 20 if s < 20 else 0.5 * (1 + math.cos(math.pi * (s - 20) / (steps - 20)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    _train(ctx, model, opt, _trim_profiles(gen, 64, 1113), steps, F.mse_loss, clip=1.0, sched=sched)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))
