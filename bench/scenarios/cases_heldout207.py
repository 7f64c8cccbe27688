"""Held-out set 207 (``h207_``): hand-written models of trades, crafts, sports and natural
phenomena not covered before: a hovercraft skirt-lift tanh regressor whose linear-scaling rule
counted the accumulated batch, a tambourine jingle-roll tanh Elman RNN with the tanh gain
applied twice, a tchoukball rebound-zone ReLU classifier fed raw centimetres at Adam 3e-2, a
typefounder's sort-glyph BatchNorm CNN whose layer-wise rate decay was typed 1e-3 for 0.9, a
wigmaker hair-grade classifier with a margin head's scale 64 on unnormalised features, a
booming-dune hum-pitch net whose `log_grain` module has no floor, a canal lock-gate leak
regressor whose manual loss scale is not undone on a checkpoint step, a cheese-rolling descent
regressor fed one shard in milliseconds, a sandbar migration regressor whose benchmark is
shifted in place every step, a Brocken-spectre glory fp16 net fed an unnormalised 16-bit
camera, and three controls (an underwater-hockey pass classifier, a sugarcraft isomalt
set-time fp16 regressor, a rush-seat weave tied GRU LM).

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
    text_batches,
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
    watch=None,
    clip=None,
    sched=None,
    scaler=None,
    accumulate=1,
    scale_grads=None,
    alter=None,
):
    """The file's loop. ``before(step)`` first, ``alter(step, x, y)`` changes a batch,
    ``watch(step, out, x, y)`` after the forward pass, ``scale_grads(step)`` between backward and
    the optimizer step; stops after logging a NaN loss."""
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
            with torch.autocast("cpu", dtype=torch.float16, enabled=scaler is not None):
                out = model(x)
            loss = loss_fn(out.float(), y)
            if watch is not None:
                watch(step, out, x, y)
            total = loss / accumulate
            if scaler is not None:
                scaler.scale(total).backward()
            else:
                total.backward()
            shown += float(loss.detach()) / accumulate
        if scale_grads is not None:
            scale_grads(step)
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
        opt.zero_grad(set_to_none=True)
        if math.isnan(shown):
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]
    lam = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


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
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


# -- hovercraft: the linear-scaling rule applied to the accumulated batch ---------------------------


@scenario(
    family="hovercraft_skirt_lift_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=80,
    heldout=True,
    note="A tanh MLP (fc1, fc2, head) predicting a hovercraft's skirt lift (standardised) from "
    "10 standardised readings (fan speed, skirt pressure, payload, ...), plain SGD at 0.06 "
    "on 32-row batches, MSE (mean). At step 80 the trainer moves to 512-row batches and "
    "applies the linear-scaling rule lr = base_lr * batch / 32 copied from a summed-loss "
    "recipe; with the mean loss the sharpness does not shrink with the batch, so the rate "
    "goes 16x to 0.96 for nothing: lr x sharpness goes from below 1 to far past 2, the "
    "stability limit, and the loss blows up.",
)
def h207_hovercraft_linear_scaling_rule(ctx: Context) -> None:
    gen = seeded(20701)
    model = Stack(10, hidden=64, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.06)
    small = _readings(gen, 32, 10, seed=1)
    large = _readings(gen, 512, 10, seed=1)
    probe = next(_readings(torch.Generator().manual_seed(71), 256, 10, seed=1))
    sharp, lrs = {}, {}

    class Switch:
        def __iter__(self):
            return self

        def __next__(self):
            return next(large if opt.param_groups[0]["lr"] > 0.1 else small)

    def before(step):
        if step == 80:
            opt.param_groups[0]["lr"] = 0.06 * 512 / 32
        if step in (79, 80):
            sharp[step] = _sharpness(model, F.mse_loss, *probe)
            lrs[step] = opt.param_groups[0]["lr"]

    _train(ctx, model, opt, Switch(), 160, F.mse_loss, before=before)
    ls = ctx.losses
    ctx.check("lr x sharpness below 1 at step 79", lrs[79] * sharp[79] < 1)
    ctx.check("lr x sharpness past 2 at step 80", lrs[80] * sharp[80] > 2)
    ctx.check("loss fell before step 80", _fell(ls[:80], ratio=0.5))
    late = [v if math.isfinite(v) else 1e30 for v in ls[80:]]
    ctx.check("loss past 20x its pre-onset level after step 80", max(late) > 20 * _mean(ls[60:80]))


# -- tambourine: a tanh Elman RNN whose recurrent init applies the tanh gain twice ---------------


class Elman(nn.Module):
    """A hand-written tanh Elman RNN: h_t = tanh(inp(x_t) + rec(h_{t-1})); head on h_T."""

    def __init__(self, d_in=4, hidden=64, classes=3):
        super().__init__()
        self.hidden = hidden
        self.inp = nn.Linear(d_in, hidden)
        self.rec = nn.Linear(hidden, hidden, bias=False)
        self.head = nn.Linear(hidden, classes)
        self.states: list[torch.Tensor] = []

    def forward(self, x):
        h = torch.zeros(x.shape[0], self.hidden)
        self.states = []
        for t in range(x.shape[1]):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h)


def _rolls(gen, batch, length=40):
    """A tambourine roll as 40 frames of 4 jingle-sensor readings; the roll type (3 kinds) is
    set by the first frames' pattern, the rest is shake noise."""
    while True:
        y = torch.randint(0, 3, (batch,), generator=gen)
        x = 0.5 * torch.randn(batch, length, 4, generator=gen)
        x[:, :4, 0] += (y[:, None].float() - 1.0) * 1.5
        yield x, y


def _recurrent_init(model: Elman, twice: bool) -> None:
    gain = nn.init.calculate_gain("tanh")
    std = gain / math.sqrt(model.hidden)
    if twice:  # the helper already multiplied by the gain; the caller multiplies again
        std *= gain
    with torch.no_grad():
        model.rec.weight.normal_(0.0, std)


@scenario(
    family="tambourine_jingle_roll_elman_rnn",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("rec",),
    diverges=None,
    heldout=True,
    note="A hand-written tanh Elman RNN (inp, rec, head) telling 3 kinds of tambourine roll from "
    "40 frames of 4 jingle-sensor readings, SGD Nesterov (momentum 0.9) at 0.01, "
    "cross-entropy, clip_grad_norm_ at 1.0. The recurrent init helper returns std = "
    "gain('tanh') / sqrt(64) and its caller multiplies by gain('tanh') again: (5/3)^2 / "
    "sqrt(64), a spectral radius near 2.8; the gradient grows back through the 40 frames "
    "(the first state's gradient over 100x the last's) and the raw gradient norm is over 20x "
    "that of the correctly initialised twin; clipping keeps it finite, the loss does not "
    "fall.",
)
def h207_tambourine_rnn_gain_twice(ctx: Context) -> None:
    gen = seeded(20702)
    model = Elman()
    _recurrent_init(model, twice=True)
    twin = Elman()
    twin.load_state_dict(model.state_dict())
    _recurrent_init(twin, twice=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    probe_x, probe_y = next(_rolls(torch.Generator().manual_seed(72), 128))
    ratio = []

    def state_ratio(m):
        loss = F.cross_entropy(m(probe_x), probe_y)
        m.zero_grad()
        loss.backward()
        first = float(m.states[0].grad.norm())
        last = float(m.states[-1].grad.norm())
        g = grad_norm(m)
        m.zero_grad()
        return first / max(last, 1e-30), g

    r0, g_bad = state_ratio(model)
    _, g_twin = state_ratio(twin)
    ratio.append(r0)
    _train(ctx, model, opt, _rolls(gen, 64), 100, F.cross_entropy, classifier=True, clip=1.0)
    ctx.check("first state's gradient over 100x the last's", ratio[0] > 100)
    ctx.check("raw gradient norm over 20x the twin's at init", g_bad > 20 * g_twin)
    ctx.check("raw gradient norm stays over 5 in the run", _median(ctx.grad_norms) > 5)
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("loss does not fall below 0.8x its start", not _fell(ctx.losses, ratio=0.8))


# -- tchoukball: raw centimetres into a ReLU MLP at Adam 3e-2 ---------------------------------------


def _rebounds(gen, batch, seed):
    """Twelve raw readings of a tchoukball throw (release height, distance to the frame,
    frame hit point, ... in centimetres, all positive) around one profile per rebound zone
    (6 zones)."""
    g = torch.Generator().manual_seed(seed)
    protos = 50 + 250 * torch.rand(6, 12, generator=g)
    while True:
        y = torch.randint(0, 6, (batch,), generator=gen)
        x = (protos[y] * (1 + 0.2 * torch.randn(batch, 12, generator=gen))).clamp_min(0)
        yield x, y


@scenario(
    family="tchoukball_rebound_zone_relu_classifier",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="A ReLU MLP (fc1, act1, fc2, act2, head) predicting a tchoukball rebound zone (6 "
    "zones) from 12 throw readings, Adam at 3e-2, cross-entropy. The preprocessing's "
    "StandardScaler was fitted but its output discarded (`scaler.fit_transform(x)` without "
    "assignment): raw centimetres (50 to 300, all positive) reach fc1, every weight of an fc1 "
    "unit gets a gradient of one sign, the first Adam steps push most units below zero on "
    "every throw and they never fire again: the share of dead fc1 units goes from under 30% "
    "to over 80%, and the loss stays over 3x that of the same run on standardised "
    "readings; finite.",
)
def h207_tchoukball_raw_cm_dead_relu(ctx: Context) -> None:
    gen = seeded(20703)
    model = Stack(12, hidden=64, out=6)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    probe_x, _ = next(_rebounds(torch.Generator().manual_seed(73), 512, seed=3))
    dead = []

    def before(step):
        if step in (0, 149):
            with torch.no_grad():
                dead.append(dead_fraction(model.act1(model.fc1(probe_x))))

    _train(
        ctx,
        model,
        opt,
        _rebounds(gen, 64, seed=3),
        150,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    ctx.check("under 30% of fc1 units dead at step 0", dead[0] < 0.3)
    ctx.check("over 80% of fc1 units dead at the end", dead[1] > 0.8)
    ctx.check("dead share of fc1 grew by 50 points", dead[1] > dead[0] + 0.5)
    # the same run on the standardised readings it was meant to get (no monitor)
    twin = Stack(12, hidden=64, out=6)
    twin_opt = torch.optim.Adam(twin.parameters(), lr=3e-2)
    twin_gen = torch.Generator().manual_seed(20703)
    mu, sd = probe_x.mean(0), probe_x.std(0)
    twin_losses = []
    batches = _rebounds(twin_gen, 64, seed=3)
    for _ in range(150):
        x, y = next(batches)
        loss = F.cross_entropy(twin((x - mu) / sd), y)
        twin_opt.zero_grad()
        loss.backward()
        twin_opt.step()
        twin_losses.append(float(loss.detach()))
    ctx.check("under 30% of fc1 units dead at step 0", dead[0] < 0.3)
    ctx.check("over 80% of fc1 units dead at the end", dead[1] > 0.8)
    ctx.check("dead share of fc1 grew by 50 points", dead[1] > dead[0] + 0.5)
    ctx.check(
        "last-20 loss over 3x the standardised twin's",
        _mean(ctx.losses[-20:]) > 3 * _mean(twin_losses[-20:]),
    )
    ctx.check("loss finite throughout", _finite(ctx.losses))


# -- typefounder: a layer-wise rate decay typed 1e-3 for 0.9 freezes the BatchNorm trunk -----------


class SortGlyphNet(nn.Module):
    """A small BatchNorm CNN reading a type sort's 8x8 proof impression (10 glyphs)."""

    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.head = nn.Linear(2 * width * 16, classes)

    def forward(self, x):
        x = x.reshape(-1, 1, 8, 8)
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        return self.head(x.flatten(1))


def _proofs(gen, batch):
    from scenarios.common import digit_batches

    yield from digit_batches(gen, batch)


@scenario(
    family="typefounder_sort_glyph_bn_cnn",
    optimizer="SGD",
    cause="update_ratio_out_of_range",
    where=("conv1", "bn1", "conv2", "bn2"),
    diverges=None,
    heldout=True,
    note="A BatchNorm CNN (conv1, bn1, conv2, bn2, head) reading a type foundry's sort proofs "
    "(8x8 digits), SGD momentum 0.9 with layer-wise rate decay in param groups: head at "
    "0.05, each block below it multiplied by `layer_decay`, which the config gives as 1e-3 "
    "(meant 0.9): conv2/bn2 at 5e-5 and conv1/bn1 at 5e-8. The trunk's update/weight ratio "
    "sits below 3e-4 (conv1 below 1e-6) against the head's above 1e-3 all run: the trunk is effectively frozen "
    "at its random init while only the head learns; finite.",
)
def h207_typefounder_layer_decay_typo(ctx: Context) -> None:
    gen = seeded(20704)
    model = SortGlyphNet()
    base, decay = 0.05, 1e-3
    groups = [
        {"params": model.head.parameters(), "lr": base},
        {"params": [*model.conv2.parameters(), *model.bn2.parameters()], "lr": base * decay},
        {"params": [*model.conv1.parameters(), *model.bn1.parameters()], "lr": base * decay**2},
    ]
    opt = torch.optim.SGD(groups, lr=base, momentum=0.9)
    mods = {"conv1": model.conv1, "conv2": model.conv2, "head": model.head}
    ratios: dict[str, list[float]] = {k: [] for k in mods}
    prev = {}

    def before(step):
        for k, m in mods.items():
            w = m.weight.detach()
            if k in prev:
                ratios[k].append(float((w - prev[k]).norm() / w.norm()))
            prev[k] = w.clone()

    _train(ctx, model, opt, _proofs(gen, 64), 120, F.cross_entropy, classifier=True, before=before)
    ctx.check("conv1 update/weight ratio below 1e-6", max(ratios["conv1"]) < 1e-6)
    ctx.check("conv2 update/weight ratio below 3e-4", max(ratios["conv2"]) < 3e-4)
    ctx.check(
        "head's median ratio over 30x conv2's",
        _median(ratios["head"]) > 30 * _median(ratios["conv2"]),
    )
    ctx.check("head update/weight ratio above 1e-3", _median(ratios["head"]) > 1e-3)
    ctx.check("loss finite", _finite(ctx.losses))


# -- wigmaker: a margin head's scale 64 applied to unnormalised features ----------------------------


class HairGrader(nn.Module):
    """GELU MLP (fc1, fc2, head) grading hair for a wig (5 grades); the margin-softmax recipe
    it came from normalises features and class weights before multiplying by s = 64; this
    port keeps the s and drops the normalisation."""

    def __init__(self, d_in=16, hidden=64, classes=5, s=64.0):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)
        self.s = s

    def forward(self, x):
        return self.s * self.head(F.gelu(self.fc2(F.gelu(self.fc1(x)))))


@scenario(
    family="wigmaker_hair_grade_gelu_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) grading hair lots for a wigmaker (5 grades) from 16 "
    "standardised readings (diameter, cuticle, curl, ...), Adamax at 1e-2, cross-entropy. "
    "Ported from a margin-softmax recipe, it multiplies the head's logits by the scale s = 64 "
    "but dropped the feature and weight normalisation that made s safe: the logits spread "
    "past 15 and the float32 softmax rounds the target probability to exactly 1.0 on most "
    "rows (none at init), those rows give no gradient; finite.",
)
def h207_wigmaker_margin_scale_unnormalised(ctx: Context) -> None:
    gen = seeded(20705)
    model = HairGrader()
    opt = torch.optim.Adamax(model.parameters(), lr=1e-2)
    probe_x, probe_y = next(_kinds(torch.Generator().manual_seed(75), 512, 16, 5, seed=5))
    frac = []

    def before(step):
        if step in (0, 149):
            with torch.no_grad():
                frac.append(collapsed_fraction(model(probe_x), probe_y))

    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 16, 5, seed=5),
        150,
        F.cross_entropy,
        classifier=True,
        before=before,
    )
    with torch.no_grad():
        logits = model(probe_x)
    ctx.check("under 5% of rows saturated at step 0", frac[0] < 0.05)
    ctx.check("over half the rows' target probability exactly 1.0 at the end", frac[1] > 0.5)
    ctx.check("logit spread over 15 at the end", float(logits.std()) > 15)
    ctx.check("loss finite", _finite(ctx.losses))


# -- booming dune: a `log_grain` module with no floor meets a 0 mm sieve reading -------------------


class LogGrain(nn.Module):
    """log of the grain diameters (mm); the original clamps at 1e-3 mm, this one does not."""

    def forward(self, d):
        return torch.log(d)


class DuneHum(nn.Module):
    """Pitch of a booming dune's hum from 6 grain-size sieve readings (mm) and 6 standardised
    weather readings: log_grain -> fc1 -> SiLU -> fc2 -> SiLU -> head."""

    def __init__(self, hidden=48):
        super().__init__()
        self.log_grain = LogGrain()
        self.fc1 = nn.Linear(12, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        z = torch.cat([self.log_grain(x[:, :6]), x[:, 6:]], 1)
        return self.head(F.silu(self.fc2(F.silu(self.fc1(z))))).squeeze(-1)


def _dunes(gen, batch, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, generator=g) / math.sqrt(12)
    while True:
        grain = 0.15 + 0.3 * torch.rand(batch, 6, generator=gen)
        weather = torch.randn(batch, 6, generator=gen)
        x = torch.cat([grain, weather], 1)
        z = torch.cat([grain.log(), weather], 1)
        y = torch.sin(z @ w) + 0.05 * torch.randn(batch, generator=gen)
        yield x, y


@scenario(
    family="booming_dune_hum_pitch_log_net",
    optimizer="RAdam",
    cause="nonfinite",
    where=("log_grain",),
    diverges=70,
    onset=70,
    heldout=True,
    note="A SiLU net (log_grain, fc1, fc2, head) predicting a booming dune's hum pitch "
    "(standardised) from 6 sieve grain sizes in mm and 6 weather readings, RAdam at 3e-3, "
    "MSE. The `log_grain` module takes the log of the grain sizes; the original clamps at "
    "1e-3 mm, this port dropped the clamp. At step 70 a batch carries a sample whose clogged "
    "sieve reads exactly 0 mm: log 0 = -inf, fc1 gives inf - inf = NaN, and the loss is NaN "
    "at step 70.",
)
def h207_booming_dune_log_no_floor(ctx: Context) -> None:
    gen = seeded(20706)
    model = DuneHum()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    bad = {}

    def alter(step, x, y):
        if step == 70:
            x = x.clone()
            x[5, 2] = 0.0
        return x, y

    def hook(mod, inp, out):
        bad[len(ctx.losses)] = not bool(torch.isfinite(out).all())

    model.log_grain.register_forward_hook(hook)
    _train(ctx, model, opt, _dunes(gen, 64, seed=6), 120, F.mse_loss, alter=alter)
    ls = ctx.losses
    ctx.check("loss finite before step 70", _finite(ls[:70]))
    ctx.check("loss fell before step 70", _fell(ls[:70], ratio=0.7))
    ctx.check("loss NaN at step 70", len(ls) == 71 and math.isnan(ls[70]))
    ctx.check("log_grain output non-finite at step 70", bad.get(70, False))
    ctx.check(
        "log_grain output finite before step 70", not any(bad.get(i, True) for i in range(70))
    )


# -- canal lock: a manual static loss scale not undone on a checkpoint step ------------------------


@scenario(
    family="canal_lock_gate_leak_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) estimating a canal lock gate's leak rate (standardised) "
    "from 10 standardised readings (head difference, gate age, seal wear, ...), SGD momentum "
    "0.9 at 1e-2, MSE. The loop keeps a static loss scale of 128 from an old half-precision "
    "setup: loss x 128 before backward, gradients divided by 128 before the step; the "
    "divide sits in the `else` of `if step % 100 == 0 and step: save_checkpoint()`, so at "
    "step 100 the update uses a gradient 128x the usual from an ordinary batch. The loss "
    "jumps and the run recovers; finite.",
)
def h207_canal_lock_static_scale_skipped(ctx: Context) -> None:
    gen = seeded(20707)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    scale = 128.0

    def scale_grads(step):
        if step % 100 == 0 and step:
            return  # save_checkpoint() path: the unscale is skipped
        for p in model.parameters():
            if p.grad is not None:
                p.grad.div_(scale)

    ctx.attach(model, opt)
    batches = _readings(gen, 64, 10, seed=7)
    for step in range(180):
        x, y = next(batches)
        loss = F.mse_loss(model(x), y)
        (loss * scale).backward()
        scale_grads(step)
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    gn, ls = ctx.grad_norms, ctx.losses
    ctx.check(
        "gradient at step 100 over 50x the median of steps 80-99",
        gn[100] > 50 * _median(gn[80:100]),
    )
    ctx.check("loss fell before step 100", _fell(ls[:100], ratio=0.7))
    ctx.check("loss jumps over 3x after step 100", max(ls[101:110]) > 3 * _mean(ls[90:100]))
    ctx.check(
        "loss back under 2x its pre-onset level by the end", _mean(ls[-10:]) < 2 * _mean(ls[90:100])
    )
    ctx.check("loss finite", _finite(ls))


# -- cheese rolling: one shard's descent times in milliseconds -------------------------------------


@scenario(
    family="cheese_rolling_descent_time_relu_regressor",
    optimizer="ASGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=90,
    heldout=True,
    note="A ReLU MLP (fc1, fc2, head) predicting a cheese-rolling racer's descent time "
    "(seconds, standardised) from 10 standardised readings (slope, turf wetness, runner "
    "mass, ...), ASGD at 1e-2, MSE, clip_grad_norm_ at 5. One race's shard was exported in "
    "milliseconds and skipped the target standardisation: the batch of step 90 carries "
    "targets 1000x the others. The loss at step 90 is thousands of times the usual, one "
    "clipped update moves the head, and the run recovers; finite.",
)
def h207_cheese_rolling_ms_shard(ctx: Context) -> None:
    gen = seeded(20708)
    model = Stack(10, hidden=64)
    opt = torch.optim.ASGD(model.parameters(), lr=1e-2)
    seen = {}

    def alter(step, x, y):
        if step == 90:
            y = y * 1000.0
        seen[step] = float(y.abs().mean())
        return x, y

    _train(ctx, model, opt, _readings(gen, 64, 10, seed=8), 200, F.mse_loss, alter=alter, clip=5.0)
    ls = ctx.losses
    ctx.check("step-90 targets over 100x the usual", seen[90] > 100 * _median(list(seen.values())))
    ctx.check("loss at step 90 over 1000x the median before", ls[90] > 1000 * _median(ls[60:90]))
    ctx.check(
        "loss back under 2x its pre-onset level by the end", _mean(ls[-10:]) < 2 * _mean(ls[80:90])
    )
    ctx.check("loss finite", _finite(ls))


# -- sandbar: the survey benchmark shifted in place every step -------------------------------------


def _surveys(gen, batch, seed, offset):
    """Ten standardised readings (wave height, tide range, grain size, ...) and the sandbar
    crest position relative to the survey benchmark ``offset[0]``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(10, generator=g) / math.sqrt(10)
    while True:
        x = torch.randn(batch, 10, generator=gen)
        crest = torch.tanh(x @ w) + 0.05 * torch.randn(batch, generator=gen)
        offset += 0.015  # the tide correction added to the shared benchmark in place, each batch
        yield x, crest - offset[0]


@scenario(
    family="sandbar_migration_silu_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting a sandbar's crest position relative to the "
    "survey benchmark from 10 standardised readings, RMSprop at 1e-4, MSE. The loader "
    "applies the tide correction with `benchmark += tide` on the shared benchmark tensor "
    "instead of a copy, so the targets drift by 0.015 every batch; the model cannot follow "
    "at this rate and the loss climbs slowly and steadily, over 5x its low by the end; "
    "finite, no blow-up.",
)
def h207_sandbar_benchmark_inplace_drift(ctx: Context) -> None:
    gen = seeded(20709)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-4)
    offset = torch.zeros(1)
    _train(ctx, model, opt, _surveys(gen, 64, 9, offset), 250, F.mse_loss)
    ls = ctx.losses
    low = min(_mean(ls[i : i + 10]) for i in range(0, len(ls) - 10, 10))
    ctx.check("benchmark drifted by over 2", float(offset[0]) > 2)
    ctx.check("last-10 loss over 5x the lowest 10-step mean", _mean(ls[-10:]) > 5 * low)
    ctx.check("loss rises over the last 100 steps", _mean(ls[-20:]) > 1.5 * _mean(ls[-100:-80]))
    ctx.check("loss finite", _finite(ls))


# -- Brocken spectre: a 16-bit camera's raw counts into an fp16 net ---------------------------------


class GloryNet(nn.Module):
    """Ring radius of a Brocken-spectre glory from a 64-pixel radial profile of the image:
    fc1 -> GELU -> fc2 -> GELU -> head."""

    def __init__(self, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(64, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


def _profiles(gen, batch, raw16):
    """Radial brightness profiles with a ring at a random radius (the target, standardised);
    8-bit frames are divided by 255; ``raw16[0]`` frames come from the 16-bit camera and the
    loader's `if frame.dtype == uint8: frame /= 255` lets their raw counts through."""
    r = torch.arange(64).float()
    while True:
        centre = 16 + 32 * torch.rand(batch, 1, generator=gen)
        ring = torch.exp(-0.5 * ((r - centre) / 3) ** 2)
        frame = (0.2 + 0.7 * ring + 0.05 * torch.rand(batch, 64, generator=gen)).clamp(0, 1)
        x = frame * 65000.0 if raw16[0] else torch.round(frame * 255) / 255
        yield x, (centre.squeeze(1) - 32) / 9.2


@scenario(
    family="brocken_spectre_glory_fp16_gelu_regressor",
    optimizer="Adam",
    cause="amp_overflow",
    where=("fc1",),
    diverges=80,
    onset=80,
    heldout=True,
    note="A GELU MLP (fc1, fc2, head) reading a Brocken-spectre glory's ring radius from a "
    "64-pixel radial profile, Adam at 1e-3, MSE, fp16 autocast + GradScaler. From step 80 "
    "the frames come from a new 16-bit camera; the loader divides by 255 only `if "
    "frame.dtype == uint8`, so raw counts up to 65000 reach fc1: its float16 output passes "
    "65504 and turns inf, the loss is NaN at step 80 and the scaler halves its scale. In "
    "float32 the same batch gives a finite loss.",
)
def h207_brocken_spectre_raw16_fp16(ctx: Context) -> None:
    gen = seeded(20710)
    model = GloryNet()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    raw16 = [False]
    fc1_out = {}
    last_batch = {}

    def before(step):
        raw16[0] = step >= 80

    def watch(step, out, x, y):
        last_batch[step] = (x, y)

    def hook(mod, inp, out):
        fc1_out[len(ctx.losses)] = (out.dtype, bool(torch.isfinite(out).all()))

    model.fc1.register_forward_hook(hook)
    _train(
        ctx,
        model,
        opt,
        _profiles(gen, 64, raw16),
        160,
        F.mse_loss,
        before=before,
        watch=watch,
        scaler=scaler,
    )
    ls = ctx.losses
    with torch.no_grad():
        x, y = last_batch[80]
        fp32 = float(F.mse_loss(model(x), y))
    ctx.check("loss finite before step 80", _finite(ls[:80]))
    ctx.check("loss fell before step 80", _fell(ls[:80], ratio=0.7))
    ctx.check("loss NaN at step 80", len(ls) == 81 and math.isnan(ls[80]))
    ctx.check(
        "fc1's float16 output non-finite at step 80",
        fc1_out[80][0] == torch.float16 and not fc1_out[80][1],
    )
    ctx.check("scale halved at step 80", ctx.scales[80] == 0.5 * ctx.scales[79])
    ctx.check("the same batch in float32 gives a finite loss", math.isfinite(fp32))


# -- controls --------------------------------------------------------------------------------------


class PassNet(nn.Module):
    """GELU MLP with dropout (fc1, drop, fc2, head)."""

    def __init__(self, d_in=14, hidden=64, classes=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.drop = nn.Dropout(0.1)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(self.drop(F.gelu(self.fc1(x))))))


@scenario(
    family="underwater_hockey_puck_pass_gelu_classifier",
    optimizer="NAdam",
    cause="healthy",
    heldout=True,
    note="A GELU MLP with dropout (fc1, drop, fc2, head) naming an underwater-hockey pass "
    "(4 kinds) from 14 standardised readings, NAdam with weight decay, OneCycleLR (max 5e-3), "
    "label smoothing 0.1, clip_grad_norm_ at 1.0: an ordinary run.",
)
def h207_underwater_hockey_control(ctx: Context) -> None:
    gen = seeded(20711)
    model = PassNet()
    opt = torch.optim.NAdam(model.parameters(), lr=5e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=150)
    _train(
        ctx,
        model,
        opt,
        _kinds(gen, 64, 14, 4, seed=11),
        150,
        lambda out, y: F.cross_entropy(out, y, label_smoothing=0.1),
        classifier=True,
        clip=1.0,
        sched=sched,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("loss finite", _finite(ctx.losses))


@scenario(
    family="sugarcraft_isomalt_set_fp16_silu_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="A SiLU MLP (fc1, fc2, head) predicting isomalt sugar-work setting time "
    "(standardised) from 10 standardised readings, AdamW at 3e-3, Huber, fp16 autocast + "
    "GradScaler, accumulation over 2 micro-batches, clip_grad_norm_ at 1.0 after unscale, "
    "ReduceLROnPlateau: an ordinary mixed-precision run.",
)
def h207_sugarcraft_fp16_control(ctx: Context) -> None:
    gen = seeded(20712)
    model = Stack(10, hidden=64, act=nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    scaler = torch.amp.GradScaler("cpu")
    _train(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, seed=12),
        150,
        F.huber_loss,
        clip=1.0,
        sched=sched,
        scaler=scaler,
        accumulate=2,
    )
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("scale never fell below its start", min(ctx.scales) >= 65536.0)


class WeaveLM(nn.Module):
    """A GRU byte LM with its output head tied to the embedding (emb, gru, head)."""

    def __init__(self, vocab=128, dim=48):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, idx):
        out, _ = self.gru(self.emb(idx))
        return self.head(out)


@scenario(
    family="rush_seat_weave_tied_gru_lm",
    optimizer="Adagrad",
    cause="healthy",
    heldout=True,
    note="A GRU byte LM (emb, gru, head with the head tied to the embedding) over a chair "
    "caner's rush-seat weaving notes (standard-library text as stand-in), Adagrad at 0.05, "
    "cross-entropy, clip_grad_norm_ at 1.0: an ordinary run.",
)
def h207_rush_seat_tied_gru_control(ctx: Context) -> None:
    gen = seeded(20713)
    model = WeaveLM()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def lm(out, y):
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))

    _train(ctx, model, opt, text_batches(gen, 16, 32), 120, lm, clip=1.0)
    ctx.check("loss fell", _fell(ctx.losses, ratio=0.7))
    ctx.check("loss finite", _finite(ctx.losses))
    ctx.check("head still tied", model.head.weight is model.emb.weight)
