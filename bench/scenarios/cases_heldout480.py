"""Held-out set 480 (``h480_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a sumo dohyo clay-firmness tanh regressor (full-batch SGD, the linear-scaling rule applied
twice), a limewash cure-time ten-layer tanh regressor (orthogonal init gain typed 3 for 1), a
yo-yo spin-decay net taking log of a string-tension reading with no clamp, a duduk reed-crack
BCE tagger fed grades 0..4 as targets, a caber-toss turn-angle Huber regressor whose loss weight
is read in per mille for one step, a hornpipe step-tempo regressor fed one shard in
milliseconds, a lorimer bit-ring wear regressor whose stem lr is typed 1e-9, a wainwright
spoke-split classifier whose fc1 bias is filled with -5, a moonbow arc-band classifier with a
softmax temperature typed 0.002 for 2.0 and a diabolo spin-rate forecaster whose loss is
multiplied by 1e6 once (Adam's second moment poisoned).

Controls: a jianzi shuttlecock-call gated-linear-unit character LM (causal GLU convolutions, a
tied softmax head, AdamW, warm-up + cosine, clipping); a fletcher arrow-spine Gaussian-NLL
regressor trained with a large batch via 8-step gradient accumulation (SGD momentum,
OneCycleLR); an mbira tine-buzz ReLU Conv1d classifier (Adagrad param groups,
ReduceLROnPlateau, label smoothing 0.1, clipping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import dead_fraction, grad_norm, scenario, seeded, text_batches


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
    return torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])


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
    accumulate=1,
    attach=True,
    track=False,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``after(step)`` runs
    after the optimizer step. Stops after a non-finite loss (once ``ctx.step`` has seen it).
    With ``attach=False`` it is a reference run outside the monitor. With ``track`` it also
    returns each step's update norm."""
    if attach:
        ctx.attach(model, opt)
    losses, norms, updates = [], [], []
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
            out = model(x)
            loss = loss_fn(out, y)
            total = backprop(step, loss) if backprop is not None else loss
            (total / accumulate).backward()
            shown += float(loss.detach()) / accumulate
        norms.append(grad_norm(model))
        if attach:
            ctx.grad_norms.append(norms[-1])
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        w0 = _flat(model) if track else None
        opt.step()
        if track:
            updates.append(float((_flat(model) - w0).norm()))
        if sched is not None:
            sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    if track:
        return losses, norms, updates
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05):
    """Standardised readings and a smooth nonlinear target of about unit scale."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.2 * x @ w / math.sqrt(d_in)) + 0.5 * torch.sin(x @ v / math.sqrt(d_in))
        yield x, y + noise * torch.randn(batch, generator=gen)


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
    """Readings scattered around one prototype per class."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.1 * torch.randn(classes, d_in, generator=g)
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


def _top_hessian_eig(model, x, y, loss_fn, iters=30):
    """Largest Hessian eigenvalue of the loss at (x, y), by power iteration on HVPs."""
    params = [p for p in model.parameters()]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((t * t).sum()) for t in v))
        v = [t / n for t in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [t.detach() for t in hv]
    return eig


# -- 1. sharpness above limit: the linear-scaling rule applied twice ---------------------------------


@scenario(
    family="sumo_dohyo_clay_firmness_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Sumo dohyo clay-firmness regressor (tanh MLP on moisture, tamping and sand readings, "
    "MSE, full-batch SGD). The lr follows the linear-scaling rule base * batch / 32, but the "
    "config already held the scaled value and the rule is applied again: lr * sharpness starts "
    "over 2 and the run oscillates out of the stable region and blows up.",
)
def h480_dohyo_lr_scaled_twice(ctx) -> None:
    gen = seeded(4801)
    model = _Net(8, 32, 1, act=nn.Tanh)
    x, y = next(_readings(gen, 256, 8, 4801))
    batches = iter(lambda: (x, y), None)
    sharp0 = _top_hessian_eig(model, x, y, F.mse_loss)
    intended = 0.4 / sharp0  # the config's lr, already scaled for the full batch of 256
    lr = intended * 256 / 32  # the linear-scaling rule applied a second time
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss)
    ctx.check("lr * sharpness under 2 at the intended lr", intended * sharp0 < 2)
    ctx.check("lr * sharpness over 2 at step 0 with the lr applied", lr * sharp0 > 2)
    finite = [v for v in losses if math.isfinite(v)]
    blew = (not _finite(losses)) or max(finite[-5:]) > 100 * min(finite)
    ctx.check("the loss blows up over 100x its lowest (or non-finite)", blew)


# -- 2. exploding gradients: orthogonal init gain typed 3 for 1 --------------------------------------


class _Deep(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear(d_in if i == 0 else width, width) for i in range(depth)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.orthogonal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)

    def forward(self, x):
        for m in self.layers:
            x = torch.tanh(m(x))
        return self.head(x).squeeze(-1)


def _layer_grads(model, x, y):
    model.zero_grad()
    F.mse_loss(model(x), y).backward()
    g = [float(m.weight.grad.norm()) for m in model.layers]
    model.zero_grad()
    return g


@scenario(
    family="limewash_cure_time_deep_tanh_regressor",
    optimizer="NAdam",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Limewash cure-time regressor (ten tanh layers on humidity, lime putty and pigment "
    "readings, MSE, NAdam, gradient clipping at 1.0). The orthogonal init gain is typed 3 for "
    "1: the backward signal is amplified at every layer, so layers.0's gradient is far larger "
    "than the last layer's; clipping keeps the run from blowing up.",
)
def h480_limewash_init_gain(ctx) -> None:
    gen = seeded(4802)
    batches = _readings(gen, 64, 16, 4802)
    probe = next(batches)
    ref = _Deep(16, 32, 10, 1.0)
    model = _Deep(16, 32, 10, 3.0)
    g_ref = _layer_grads(ref, *probe)
    g = _layer_grads(model, *probe)
    opt = torch.optim.NAdam(model.parameters(), lr=1e-3)
    losses, _ = _loop(ctx, model, opt, batches, 120, F.mse_loss, clip=1.0)
    ctx.check("layers.0's gradient over 10x layers.9's at gain 3", g[0] > 10 * g[-1])
    ctx.check("under 3x at the intended gain 1", g_ref[0] < 3 * g_ref[-1])
    ctx.check("the loss stays finite (clipped)", _finite(losses))


# -- 3. nonfinite: log of a tension reading with no clamp --------------------------------------------


class _LogFeature(nn.Module):
    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _SpinNet(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.logfeat = _LogFeature()
        self.net = _Net(d_in, 32, 1, act=nn.SiLU)

    def forward(self, x):
        return self.net(self.logfeat(x))


@scenario(
    family="yo_yo_string_spin_decay_log_feature_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("logfeat",),
    diverges=100,
    heldout=True,
    note="Yo-yo spin-decay regressor (SiLU MLP on string tension, axle gap and throw speed, MSE, "
    "Adagrad). The tension reading enters as log(tension) with no clamp; at step 100 a slack "
    "string reads tension 0.0, log gives -inf and the loss is non-finite at step 100.",
    onset=100,
)
def h480_yoyo_log_tension(ctx) -> None:
    gen = seeded(4803)
    base = _readings(gen, 64, 6, 4803)

    def stream():
        for x, y in base:
            x = x.clone()
            x[:, 0] = 0.5 + torch.rand(len(x), generator=gen) * 2.0
            yield x, y + 0.3 * torch.log(x[:, 0])

    def alter(step, x, y):
        if step == 100:
            x = x.clone()
            x[3, 0] = 0.0
        return x, y

    model = _SpinNet(6)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    losses, _ = _loop(ctx, model, opt, stream(), 160, F.mse_loss, alter=alter)
    ctx.check("finite before step 100", _finite(losses[:100]))
    ctx.check(
        "the loss is non-finite at step 100", len(losses) > 100 and not math.isfinite(losses[100])
    )
    ctx.check("it trained before the fault", _mean(losses[90:100]) < 0.7 * _mean(losses[:10]))


# -- 4. output logit divergence: grades 0..4 passed to BCE as targets --------------------------------


@scenario(
    family="duduk_reed_crack_grade_bce_tagger",
    optimizer="RMSprop",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Duduk reed crack tagger (GELU MLP on reed acoustics, one BCE-with-logits output per "
    "reed section, RMSprop). The inspectors' crack grades 0..4 are passed as targets instead of "
    "grade > 0: a target over 1 has no finite optimum, so the head's logits grow without bound "
    "and the loss goes below 0.",
)
def h480_duduk_grade_targets(ctx) -> None:
    gen = seeded(4804)
    g = torch.Generator().manual_seed(4804)
    w = torch.randn(12, 6, generator=g)

    def stream():
        while True:
            x = torch.randn(64, 12, generator=gen)
            grade = torch.clamp((x @ w / 2 + 1.5).round(), 0, 4)
            yield x, grade

    model = _Net(12, 48, 6, act=nn.GELU)
    probe = next(stream())[0]
    with torch.no_grad():
        start = float(model(probe).abs().mean())
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    losses, _ = _loop(ctx, model, opt, stream(), 200, F.binary_cross_entropy_with_logits)
    with torch.no_grad():
        mid = float(model(probe).abs().mean())
    # it keeps climbing: a few more steps outside the monitor
    _loop(ctx, model, opt, stream(), 30, F.binary_cross_entropy_with_logits, attach=False)
    with torch.no_grad():
        end = float(model(probe).abs().mean())
    ctx.check("the head's mean |logit| over 20x its start", mid > 20 * start)
    ctx.check("and still climbing", end > mid)
    ctx.check("the loss goes below 0", min(losses) < 0)


# -- 5. gradient spike: a loss weight read in per mille for one step ---------------------------------


@scenario(
    family="caber_toss_turn_angle_huber_regressor",
    optimizer="SGD Nesterov",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    note="Caber-toss turn-angle regressor (tanh MLP on caber length, weight and run-up, Huber, "
    "SGD Nesterov, clip norm 5). The per-event loss weight is read from a table stored in per "
    "mille; one event at step 150 is missing the /1000, so that step's backpropagated loss is "
    "weighted 1000 for 1.0: one gradient burst, the logged loss ordinary; it recovers.",
    onset=150,
)
def h480_caber_loss_weight(ctx) -> None:
    gen = seeded(4805)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)

    def backprop(step, loss):
        return loss * (1000.0 if step == 150 else 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 4805),
        240,
        F.smooth_l1_loss,
        backprop=backprop,
        clip=5.0,
    )
    med = _median(norms[100:150])
    ctx.check("gradient at step 150 over 50x the median", norms[150] > 50 * med)
    ctx.check(
        "the logged loss at 150 ordinary (under 2x)", losses[150] < 2 * _mean(losses[140:150])
    )
    ctx.check(
        "it recovers (last 20 under 1.5x pre-fault)",
        _mean(losses[-20:]) < 1.5 * _mean(losses[130:150]),
    )
    ctx.check("finite", _finite(losses))


# -- 6. data outlier: one shard in milliseconds -------------------------------------------------------


@scenario(
    family="hornpipe_step_tempo_relu_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    note="Hornpipe step-tempo regressor (ReLU MLP on shoe-tap intervals and bar timings, MSE, SGD "
    "momentum). One shard, loaded at step 120, was exported with intervals in milliseconds "
    "instead of seconds: its inputs are 1000x too large, the loss and gradient jump for that "
    "batch, and the run recovers.",
    onset=120,
)
def h480_hornpipe_ms_shard(ctx) -> None:
    gen = seeded(4806)
    model = _Net(10, 48, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def alter(step, x, y):
        return (x * 1000.0, y) if step == 120 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4806), 240, F.mse_loss, alter=alter, clip=10.0
    )
    pre = _mean(losses[110:120])
    ctx.check("the loss at 120 over 20x the steps before", losses[120] > 20 * pre)
    ctx.check("the gradient at 120 over 10x the median", norms[120] > 10 * _median(norms[100:120]))
    ctx.check("it recovers (last 20 under 2x pre-fault)", _mean(losses[-20:]) < 2 * pre)
    ctx.check("finite", _finite(losses))


# -- 7. update ratio out of range: stem lr typed 1e-9 ------------------------------------------------


@scenario(
    family="lorimer_bit_ring_wear_two_group_regressor",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Lorimer bit-ring wear regressor (ReLU MLP on ring diameter, metal and hours ridden, "
    "Huber, Adamax with two param groups). The stem group's lr is typed 1e-9 for 1e-3: fc1 "
    "receives ordinary gradients but barely moves, while fc2 and the head train.",
)
def h480_lorimer_stem_lr(ctx) -> None:
    gen = seeded(4807)
    model = _Net(10, 48, 1)
    opt = torch.optim.Adamax(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": list(model.fc2.parameters()) + list(model.head.parameters()), "lr": 2e-3},
        ]
    )
    w1, wh = model.fc1.weight.detach().clone(), model.head.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 10, 4807), 200, F.smooth_l1_loss)
    d1 = float((model.fc1.weight.detach() - w1).norm() / w1.norm())
    dh = float((model.head.weight.detach() - wh).norm() / wh.norm())
    ctx.check("fc1 moved under 1e-5 of its norm", d1 < 1e-5)
    ctx.check("the head moved over 5% of its norm", dh > 0.05)
    ctx.check("finite", _finite(losses))


# -- 8. loss of plasticity: fc1 bias filled with -3 ---------------------------------------------------


@scenario(
    family="wainwright_spoke_split_relu_classifier",
    optimizer="RAdam",
    cause="loss_of_plasticity",
    where=("fc1", "act1"),
    diverges=None,
    heldout=True,
    note="Wainwright spoke-split classifier (ReLU MLP on oak grain, moisture and felloe fit, five "
    "split types, cross-entropy, RAdam). fc1's bias is filled with -5.0 (a copied sparse-coding "
    "init meant for another layer): nearly every fc1 unit is negative on every input, the ReLUs "
    "are dead from the start and the network cannot learn.",
)
def h480_wainwright_dead_bias(ctx) -> None:
    gen = seeded(4808)
    model = _Net(10, 48, 5)
    with torch.no_grad():
        model.fc1.bias.fill_(-5.0)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 10, 5, 4808), 200, F.cross_entropy, classifier=True
    )
    x, _ = next(_grades(gen, 512, 10, 5, 4808))
    with torch.no_grad():
        dead = dead_fraction(model.act1(model.fc1(x)))
    seeded(4808)
    ref = _Net(10, 48, 5)
    ref_opt = torch.optim.RAdam(ref.parameters(), lr=3e-3)
    gen2 = torch.Generator().manual_seed(4808)
    ref_losses, _ = _loop(
        ctx, ref, ref_opt, _grades(gen2, 64, 10, 5, 4808), 200, F.cross_entropy, attach=False
    )
    ctx.check("over 90% of fc1's units dead at the end", dead > 0.9)
    ctx.check(
        "the loss over 2x the intended run's", _mean(losses[-20:]) > 2 * _mean(ref_losses[-20:])
    )
    ctx.check("the loss near chance (over 0.8 ln 5)", _mean(losses[-20:]) > 0.8 * math.log(5))


# -- 9. softmax collapse: temperature typed 0.002 for 2.0 --------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, classes, temperature):
        super().__init__(d_in, 48, classes, act=nn.GELU)
        self.temperature = temperature

    def forward(self, x):
        return self.head(self.features(x)) / self.temperature


@scenario(
    family="moonbow_arc_band_gelu_classifier",
    optimizer="AdamW",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Moonbow arc-band classifier (GELU MLP on lunar phase, spray density and angle, six "
    "colour bands, cross-entropy, AdamW). The softmax temperature is typed 0.002 for 2.0: the "
    "logits are 1000x too large, the float32 softmax rounds target probabilities to exactly "
    "1.0 on most rows and the rest to 0.",
)
def h480_moonbow_temperature(ctx) -> None:
    gen = seeded(4809)
    model = _TempNet(10, 6, 0.002)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    losses, _ = _loop(
        ctx, model, opt, _grades(gen, 64, 10, 6, 4809), 150, F.cross_entropy, classifier=True
    )
    x, y = next(_grades(gen, 512, 10, 6, 4809))
    with torch.no_grad():
        z = model(x)
        p_bug = torch.softmax(z, -1).gather(1, y[:, None])
        p_ok = torch.softmax(z * 0.002 / 2.0, -1).gather(1, y[:, None])
    ctx.check(
        "over half the rows' target probability exactly 1.0",
        float((p_bug == 1.0).float().mean()) > 0.5,
    )
    ctx.check(
        "under 5% at temperature 2.0, same weights", float((p_ok == 1.0).float().mean()) < 0.05
    )
    ctx.check("finite", _finite(losses))


# -- 10. Adam second moment poisoned: the loss in mm^2 for m^2 once ----------------------------------


@scenario(
    family="diabolo_spin_rpm_gelu_forecaster",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    note="Diabolo spin-rate forecaster (GELU MLP on stick speed, string angle and past rpm, MSE, "
    "Adam). On the resume step 80 the loss is computed from targets in mm^2 for m^2, scaling "
    "the backpropagated loss by 1e6 for that one step: one giant gradient fills Adam's second "
    "moment and the updates stall for the next hundred steps.",
    onset=80,
)
def h480_diabolo_unit_scale(ctx) -> None:
    def run(attach, bug):
        gen = seeded(4810)
        model = _Net(10, 48, 1, act=nn.GELU)
        opt = torch.optim.Adam(model.parameters(), lr=2e-3)

        def backprop(step, loss):
            return loss * (1e6 if bug and step == 80 else 1.0)

        return _loop(
            ctx,
            model,
            opt,
            _readings(gen, 64, 10, 4810),
            240,
            F.mse_loss,
            backprop=backprop,
            attach=attach,
            track=True,
        )

    losses, norms, upd = run(True, True)
    clean, _, _ = run(False, False)
    ctx.check("gradient at 80 over 1e4x the median", norms[80] > 1e4 * _median(norms[40:80]))
    ctx.check("updates 100-180 under 1/10 of 40-80", _mean(upd[100:180]) < 0.1 * _mean(upd[40:80]))
    ctx.check(
        "the loss over 1.3x the clean run's (steps 120-200)",
        _mean(losses[120:200]) > 1.3 * _mean(clean[120:200]),
    )
    ctx.check("finite", _finite(losses))


# -- 11. control: a gated-linear-unit character LM with a tied head ----------------------------------


class _GLUConv(nn.Module):
    """Causal Conv1d producing 2*dim channels, gated as a * sigmoid(b), with a residual."""

    def __init__(self, dim, kernel):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(dim, 2 * dim, kernel)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):  # (b, t, d)
        h = self.norm(x).transpose(1, 2)
        h = F.pad(h, (self.kernel - 1, 0))
        a, b = self.conv(h).chunk(2, dim=1)
        return x + (a * torch.sigmoid(b)).transpose(1, 2)


class _GLULM(nn.Module):
    def __init__(self, vocab=128, dim=48, layers=3, kernel=4):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(_GLUConv(dim, kernel) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.tok.weight
        nn.init.normal_(self.tok.weight, std=0.05)

    def forward(self, idx):
        x = self.tok(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def _lm_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@scenario(
    family="jianzi_shuttlecock_call_glu_char_lm",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Jianzi shuttlecock-call character LM: gated linear unit convolutions (causal Conv1d, "
    "a * sigmoid(b), pre-LayerNorm residual) over characters, softmax head tied to the "
    "embedding, cross-entropy, AdamW with a 20-step warm-up and cosine decay, clip norm 1.0.",
)
def h480_jianzi_glu_lm(ctx) -> None:
    gen = seeded(4811)
    model = _GLULM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    steps = 200
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / 20) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    losses, _ = _loop(
        ctx,
        model,
        opt,
        text_batches(gen, 16, 32),
        steps,
        _lm_loss,
        classifier=False,
        clip=1.0,
        sched=sched,
    )
    ctx.check("the loss fell (last 10 under 0.7x the first 10)", _fell(losses))
    ctx.check("the head is tied to the embedding", model.head.weight is model.tok.weight)


# -- 12. control: a large batch via 8-step gradient accumulation -------------------------------------


class _SpineNLL(nn.Module):
    def __init__(self, d_in):
        super().__init__()
        self.body = _Net(d_in, 48, 2, act=nn.SiLU)

    def forward(self, x):
        return self.body(x)


def _gauss_nll(out, y):
    mu, log_var = out[:, 0], out[:, 1].clamp(-6, 6)
    return F.gaussian_nll_loss(mu, y, log_var.exp())


@scenario(
    family="fletcher_arrow_spine_large_batch_silu_regressor",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fletcher arrow-spine regressor (SiLU MLP on shaft diameter, wall and wood density, a "
    "Gaussian NLL with a predicted log-variance), a large batch of 8 x 32 rows by 8-step "
    "gradient accumulation: the optimizer steps once every 8 backward passes. SGD momentum "
    "under OneCycleLR, clip norm 2.0.",
)
def h480_fletcher_accumulate8(ctx) -> None:
    gen = seeded(4812)
    model = _SpineNLL(10)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    steps = 100
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 10, 4812),
        steps,
        _gauss_nll,
        accumulate=8,
        clip=2.0,
        sched=sched,
    )
    ctx.check("finite", _finite(losses))
    ctx.check("the loss fell by over 0.5 nats", _mean(losses[-10:]) < _mean(losses[:10]) - 0.5)


# -- 13. control: a Conv1d classifier with Adagrad param groups ---------------------------------------


class _TineConv(nn.Module):
    def __init__(self, classes=4):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 8, 5, padding=2)
        self.conv2 = nn.Conv1d(8, 16, 5, padding=2)
        self.head = nn.Linear(16, classes)

    def forward(self, x):
        h = F.relu(self.conv1(x[:, None]))
        h = F.relu(self.conv2(F.max_pool1d(h, 2)))
        return self.head(h.mean(-1))


def _tines(gen, batch=32, length=64):
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, 4, (batch,), generator=gen)
        freq = 0.15 + 0.12 * y.float()
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        x = torch.sin(freq[:, None] * t + phase) + 0.4 * torch.randn(batch, length, generator=gen)
        yield x, y


@scenario(
    family="mbira_tine_buzz_relu_conv1d_classifier",
    optimizer="Adagrad",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Mbira tine-buzz classifier (ReLU Conv1d on noisy pickup clips, four buzz kinds, "
    "cross-entropy with label smoothing 0.1, Adagrad with the head in its own param group at "
    "half the lr, ReduceLROnPlateau on the running loss, clip norm 1.0).",
)
def h480_mbira_conv_adagrad(ctx) -> None:
    gen = seeded(4813)
    model = _TineConv()
    opt = torch.optim.Adagrad(
        [
            {"params": list(model.conv1.parameters()) + list(model.conv2.parameters())},
            {"params": model.head.parameters(), "lr": 0.025},
        ],
        lr=0.05,
    )
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=20)
    run = []

    def after(step):
        if step % 10 == 9:
            plateau.step(_mean(run[-10:]))

    def loss_fn(out, y):
        loss = F.cross_entropy(out, y, label_smoothing=0.1)
        run.append(float(loss.detach()))
        return loss

    losses, _ = _loop(
        ctx, model, opt, _tines(gen), 200, loss_fn, classifier=True, clip=1.0, after=after
    )
    ctx.check("the loss fell (last 10 under 0.7x the first 10)", _fell(losses))
