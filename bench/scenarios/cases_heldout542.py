"""Held-out set 542 (``h542_``): 10 faults over 10 causes and 3 healthy controls.

Faults: bonspiel ice-pebble height regressor fed dew point in millikelvin under fp16 autocast
(amp_overflow, Adamax); chainmaille ring-closure regressor with its hand-written decoupled weight
decay sign flipped (loss_divergence, plain SGD); saddletree flex-stiffness regressor whose StepLR
gamma is typed 3.0 for 0.3 (sharpness_above_limit, SGD Nesterov); slate-quarry roof-grade
classifier whose head param group lr is typed 5e-8 for 5e-2 (update_ratio_out_of_range, Adagrad);
conch-shell trumpet pitch classifier fed one shard of raw 0..255 counts (data_outlier, RMSprop);
sculling oarlock-pitch regressor resumed with the accumulation divisor multiplied for one step
(gradient_spike, SGD momentum); cloudburst gully-runoff regressor taking log of a dry day's zero
rainfall (nonfinite, AdamW); ear-trumpet resonance Elman RNN with recurrent init gain typed 3.0
for 0.3 (exploding_gradients, ASGD); dry-stone coping-load ReLU regressor with its first-layer bias
init parsed as -2.5 (loss_of_plasticity, Rprop); travertine-dam growth regressor with a debugging
loss multiplier of 1e5 left on for one step (adam_second_moment_poisoned, Adam).
Controls: wheat-weaving plait-tension tanh regressor whose learning rate a hand-written rule raises
10x after a plateau (the loss rises briefly, then falls: alarming-looking, RAdam); smoke-signal
puff-code Hugging Face BART seq2seq (NAdam, warm-up, clipping, label smoothing); Adadelta Huber
regressor for a carrier-pigeon homing time (ReduceLROnPlateau, accumulation 2, clipping, noisy
targets).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import grad_norm, scenario, seeded


def _finite(xs: list[float]) -> bool:
    return all(math.isfinite(v) for v in xs)


def _mean(xs: list[float]) -> float:
    return sum(xs) / max(len(xs), 1)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses: list[float], k: int = 10, ratio: float = 0.7) -> bool:
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _rel(after: torch.Tensor, before: torch.Tensor) -> float:
    return float((after - before).norm() / before.norm())


def _first_bad(losses: list[float]) -> int | None:
    return next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)


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
    forward=None,
):
    """Attach, then train: ``before(step)``, ``alter(step, x, y)``, ``backprop(step, loss)``
    returns the loss actually backpropagated, ``after(step, loss)``. Stops after a non-finite
    loss once ``ctx.step`` has seen it."""
    ctx.attach(model, opt)
    forward = forward or (lambda m, x: m(x))
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
        x, y = next(batches)
        if alter is not None:
            x, y = alter(step, x, y)
        if classifier:
            ctx.targets(y)
        loss = loss_fn(forward(model, x), y)
        total = backprop(step, loss) if backprop is not None else loss
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


def _top_hessian_eig(model, loss_fn, x, y, iters=20):
    """Largest Hessian eigenvalue of loss_fn(model(x), y) by power iteration on HVPs."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        norm = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / norm for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return eig


# -- 1. amp overflow: dew point in millikelvin under fp16 autocast --------------------------------


class _GeluNet(nn.Module):
    def __init__(self, d_in, hidden=64):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        return self.head(F.gelu(self.fc2(F.gelu(self.fc1(x))))).squeeze(-1)


@scenario(
    family="bonspiel_ice_pebble_height_fp16_gelu_regressor",
    optimizer="Adamax",
    cause="amp_overflow",
    where=("fc1",),
    diverges=90,
    onset=90,
    heldout=True,
    note="Bonspiel ice-pebble height regressor (GELU MLP on dew point, ice temperature, "
    "pebble-can water temperature, hall humidity, sweep count, MSE, Adamax, fp16 autocast + "
    "GradScaler). From step 90 the hall sensor's new firmware reports dew point in millikelvin "
    "(about 2.7e5) and the loader's standardisation is keyed on the old column name, so the raw "
    "value reaches fc1: autocast casts fc1's input to fp16 (range ends at 65504) and fc1's fp16 "
    "output is non-finite; the same batch is finite in float32; the loss is non-finite at 90.",
)
def h542_bonspiel_pebble_dew_point_in_millikelvin(ctx):
    gen = seeded(5421)
    model = _GeluNet(5)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    ctx.attach(model, opt, scaler=scaler)
    seen = {}
    model.fc1.register_forward_hook(
        lambda m, i, o: seen.__setitem__("fc1", (o.dtype, bool((~torch.isfinite(o)).any())))
    )
    losses, fc1_bad = [], []
    batches = _readings(gen, 64, 5, 54210)
    bad_x = None
    for step in range(140):
        x, y = next(batches)
        if step >= 90:
            x = x.clone()
            x[:, 0] = 2.7e5 + 3.0e3 * x[:, 0]
            bad_x = x
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        fc1_bad.append(seen["fc1"][1])
        loss = F.mse_loss(out.float(), y)
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
    ctx.check("fc1 ran in fp16", seen["fc1"][0] == torch.float16)
    ctx.check("inputs beyond fp16's range", bad_x is not None and float(bad_x.abs().max()) > 65504)
    ctx.check("loss first non-finite at step 90", _first_bad(losses) == 90)
    ctx.check("fc1's fp16 output non-finite at step 90", len(fc1_bad) > 90 and fc1_bad[90])
    ctx.check("fc1 finite before step 90", not any(fc1_bad[:90]))
    if bad_x is not None:
        with torch.no_grad():
            ctx.check("same batch finite in float32", bool(torch.isfinite(model(bad_x)).all()))
    ctx.check("trained before step 90", _fell(losses[:90]))


# -- 2. loss divergence: decoupled weight decay with its sign flipped ----------------------------


@scenario(
    family="chainmaille_ring_closure_decay_sign_tanh_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Chainmaille ring-closure strength regressor (tanh MLP on wire gauge, mandrel "
    "diameter, aspect ratio, temper, overlap and weave pattern code, MSE, plain SGD lr 0.01, wd 0.8). "
    "The hand-written decoupled weight decay is applied after each step as p *= 1 + lr * wd "
    "instead of 1 - lr * wd: the weights grow steadily, the net fits first and then the loss "
    "climbs slowly, with no jump, to several times its best.",
)
def h542_chainmaille_decay_sign_flipped(ctx):
    gen = seeded(5422)
    model = _Net(6, 48, 1, nn.Tanh)
    lr, wd = 0.01, 0.8
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    w0 = float(_flat(model).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + lr * wd)  # the bug: meant 1 - lr * wd

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 54220), 260, F.mse_loss, after=after)
    means = [_mean(losses[i : i + 10]) for i in range(0, len(losses), 10)]
    jumps = [b / a for a, b in zip(means[:-1], means[1:], strict=False) if a > 0]
    best = min(means)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("weights grew over 2x", float(_flat(model).norm()) > 2 * w0)
    ctx.check("fitted first (best 10-step mean under half the start)", best < 0.5 * means[0])
    ctx.check("loss ends over 3x its best 10-step mean", _mean(losses[-10:]) > 3 * best)
    ctx.check("no 10-step mean over 3x the previous", max(jumps) < 3.0)


# -- 3. sharpness above limit: StepLR gamma typed 3.0 for 0.3 -----------------------------------


@scenario(
    family="saddletree_flex_stiffness_steplr_tanh_regressor",
    optimizer="SGD (Nesterov)",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=180,
    heldout=True,
    note="Saddletree flex-stiffness regressor (tanh MLP on tree width, bar length, gullet "
    "height, rawhide thickness, wood density and moisture, MSE, SGD Nesterov momentum 0.9, "
    "lr 0.01). The StepLR gamma is typed 3.0 for 0.3: every 60 steps the learning rate "
    "triples instead of decaying (0.03 at 60, 0.09 at 120, 0.27 at 180); after the step-180 "
    "boost lr x top Hessian eigenvalue (about 2.5) exceeds the Nesterov stability limit "
    "(2 + 2b) / (1 + 2b), about 1.36, and the loss blows up within a few steps.",
)
def h542_saddletree_steplr_gamma_typo(ctx):
    gen = seeded(5423)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=60, gamma=3.0)  # meant 0.3
    batches = _readings(gen, 64, 6, 54230)
    probe = next(batches)
    beta = 0.9
    limit = (2 + 2 * beta) / (1 + 2 * beta)  # Nesterov: lr * eig beyond this is unstable
    products = {}

    def before(step):
        if step in (1, 119, 121, 179, 181):
            eig = _top_hessian_eig(model, F.mse_loss, *probe)
            products[step] = opt.param_groups[0]["lr"] * eig

    losses, _ = _loop(
        ctx, model, opt, batches, 300, F.mse_loss, before=before, sched=sched, clip=None
    )
    low = min(losses[:120])
    blown = [i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low]
    over = [s for s, p in products.items() if p > limit]
    ctx.check("stable at the start (lr x eig under the limit)", products.get(1, 9.9) < limit)
    ctx.check("lr x eig past the limit before the blow-up", bool(over) and bool(blown))
    ctx.check("loss blows up (over 100x its low or non-finite)", bool(blown))
    ctx.check("blow-up after the step-180 boost", bool(blown) and blown[0] >= 180)
    ctx.check("under the limit before the step-180 boost", products.get(179, 9.9) < limit)
    ctx.check("trained before the boosts", _fell(losses[:60]))


# -- 4. update ratio: head param group lr typed 5e-8 ---------------------------------------------


@scenario(
    family="slate_quarry_roof_grade_two_group_relu_classifier",
    optimizer="Adagrad",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Slate-quarry roofing-slate grade classifier (ReLU MLP on split thickness, ring tone, "
    "cleavage angle, pyrite spots, porosity, bend strength, colour and size, 5 grades, "
    "cross-entropy, Adagrad with two param groups: body lr 5e-2, head lr from the config "
    "typed 5e-8 for 5e-2). The head's updates are about 1e-8 of its weights: it never moves "
    "while the body trains; the loss falls only a little.",
)
def h542_slate_quarry_head_lr_typo(ctx):
    gen = seeded(5424)
    model = _Net(8, 48, 5, nn.ReLU)
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    opt = torch.optim.Adagrad(
        [{"params": body, "lr": 5e-2}, {"params": model.head.parameters(), "lr": 5e-8}]
    )
    head0, fc10 = _flat(model.head), _flat(model.fc1)
    ratios = []

    def after(step, loss):
        ratios.append(_rel(_flat(model.head), head_prev[0]))
        head_prev[0] = _flat(model.head)

    head_prev = [head0]
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 8, 5, 54240, spread=1.2),
        200,
        F.cross_entropy,
        classifier=True,
        after=after,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("head moved under 1e-5 overall", _rel(_flat(model.head), head0) < 1e-5)
    ctx.check("head's per-step update ratio under 1e-7", _median(ratios) < 1e-7)
    ctx.check("fc1 moved over 5%", _rel(_flat(model.fc1), fc10) > 0.05)


# -- 5. data outlier: one shard in raw 0..255 counts ---------------------------------------------


@scenario(
    family="conch_shell_trumpet_pitch_relu_classifier",
    optimizer="RMSprop",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Conch-shell trumpet pitch classifier (ReLU MLP on 10 standardised spectral band "
    "energies, 6 pitch classes, cross-entropy, RMSprop lr 1e-3, clipping at 1). The batch at "
    "step 100 comes from a shard exported as raw 0..255 ADC counts without the standardisation: "
    "its loss is over 20x the run's, its gradient over 10x; clipped, the run recovers.",
)
def h542_conch_trumpet_raw_count_shard(ctx):
    gen = seeded(5425)
    model = _Net(10, 48, 6, nn.ReLU)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)

    def alter(step, x, y):
        if step == 100:
            return (x * 40 + 128).clamp(0, 255), y
        return x, y

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _grades(gen, 64, 10, 6, 54250, spread=1.0),
        200,
        F.cross_entropy,
        classifier=True,
        alter=alter,
        clip=1.0,
    )
    ref = _median(losses[80:100])
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss at step 100 over 20x", losses[100] > 20 * ref)
    ctx.check("gradient at step 100 over 10x", norms[100] > 10 * _median(norms[80:100]))
    ctx.check("recovers (last 20 under 2x before)", _mean(losses[-20:]) < 2 * max(ref, 0.05))
    ctx.check("trained before step 100", _fell(losses[:100]))


# -- 6. gradient spike: accumulation divisor multiplied on resume --------------------------------


@scenario(
    family="sculling_oarlock_pitch_silu_regressor",
    optimizer="SGD (momentum)",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Sculling oarlock-pitch regressor (SiLU MLP on gate height, button position, spread, "
    "rower weight, stroke rate, blade depth and boat speed, MSE, SGD momentum 0.9 lr 0.01, "
    "clipping at 5, gradient accumulation 8). Resumed at step 120, the accumulation counter is "
    "not restored and the first step's loss is multiplied by 8 x 64 instead of divided: one "
    "gradient over 50x, the logged loss ordinary; clipped, the run continues normally.",
)
def h542_sculling_oarlock_resume_accum_bug(ctx):
    gen = seeded(5426)
    model = _Net(7, 48, 1, nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def backprop(step, loss):
        return loss * 512.0 if step == 120 else loss

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 7, 54260),
        220,
        F.mse_loss,
        backprop=backprop,
        clip=5.0,
    )
    around = norms[100:120] + norms[121:140]
    ctx.check("finite throughout", _finite(losses))
    ctx.check("gradient at step 120 over 50x", norms[120] > 50 * _median(around))
    ctx.check("logged loss at 120 ordinary", losses[120] < 2 * _median(losses[100:120]))
    ctx.check("no other gradient over 5x", max(around) < 5 * _median(around))
    ctx.check("trained", _fell(losses))


# -- 7. nonfinite: log of a dry day's zero rainfall ----------------------------------------------


class _LogFeature(nn.Module):
    """log of the rainfall column (the other columns pass through)."""

    def forward(self, x):
        return torch.cat([torch.log(x[:, :1]), x[:, 1:]], 1)


class _RunoffNet(nn.Module):
    def __init__(self, d_in, hidden=48):
        super().__init__()
        self.log_in = _LogFeature()
        self.fc1 = nn.Linear(d_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        h = F.gelu(self.fc1(self.log_in(x)))
        return self.head(F.gelu(self.fc2(h))).squeeze(-1)


@scenario(
    family="cloudburst_gully_runoff_log_rain_gelu_regressor",
    optimizer="AdamW",
    cause="nonfinite",
    where=("log_in",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Cloudburst gully-runoff regressor (GELU MLP on log rainfall intensity, slope, soil "
    "moisture, vegetation cover, catchment area and antecedent days, MSE, AdamW lr 2e-3). The "
    "log-rainfall feature is computed inside the model with no clamp; the batch at step 80 "
    "holds dry days with rainfall exactly 0: log 0 = -inf, fc1's output is non-finite and the "
    "loss is NaN at step 80.",
)
def h542_cloudburst_log_zero_rainfall(ctx):
    gen = seeded(5427)
    model = _RunoffNet(6)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    seen = []
    model.log_in.register_forward_hook(lambda m, i, o: seen.append(bool(torch.isinf(o).any())))
    base = _readings(gen, 64, 6, 54270)

    def rain(gen_=gen):
        while True:
            x, y = next(base)
            x = x.clone()
            x[:, 0] = torch.exp(x[:, 0])  # rainfall intensity, always positive
            yield x, y

    def alter(step, x, y):
        if step == 80:
            x = x.clone()
            x[:8, 0] = 0.0  # dry days in the gauge export
        return x, y

    losses, _ = _loop(ctx, model, opt, rain(), 150, F.mse_loss, alter=alter)
    ctx.check("loss first non-finite at step 80", _first_bad(losses) == 80)
    ctx.check("log_in output -inf at step 80", len(seen) > 80 and seen[80])
    ctx.check("log_in finite before step 80", not any(seen[:80]))
    ctx.check("trained before step 80", _fell(losses[:80]))


# -- 8. exploding gradients: recurrent init gain typed 3.0 for 0.3 -------------------------------


class _ElmanNet(nn.Module):
    """A tanh Elman cell unrolled by hand (keeps each frame's state for the gradient check)."""

    def __init__(self, d_in=4, hidden=32):
        super().__init__()
        self.rnn = nn.RNNCell(d_in, hidden, nonlinearity="tanh")
        self.head = nn.Linear(hidden, 1)
        self.states = []

    def forward(self, x):
        h = x.new_zeros(x.shape[0], self.rnn.hidden_size)
        self.states = []
        for t in range(x.shape[1]):
            h = self.rnn(x[:, t], h)
            if h.requires_grad:
                h.retain_grad()
            self.states.append(h)
        return self.head(h).squeeze(-1)


def _resonance_batches(gen, batch=32, length=24, d_in=4):
    while True:
        x = 0.3 * torch.randn(batch, length, d_in, generator=gen)
        y = torch.tanh(x[:, -6:, 0].sum(1) - 0.5 * x[:, -3:, 1].sum(1))
        yield x, y


@scenario(
    family="ear_trumpet_resonance_elman_rnn",
    optimizer="ASGD",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="Ear-trumpet resonance regressor (tanh Elman RNN over 24 frames of bell-mouth pressure, "
    "throat pressure, flare angle and horn length, MSE, ASGD lr 0.02, clipping at 1). The "
    "recurrent weights get an orthogonal init with gain typed 3.0 for 0.3: the loss gradient "
    "with respect to the first frame's state is over 100x the last frame's, the gradient "
    "norm is huge from the start; clipped, the loss stays high.",
)
def h542_ear_trumpet_recurrent_gain_typo(ctx):
    gen = seeded(5428)
    model = _ElmanNet()
    nn.init.orthogonal_(model.rnn.weight_hh, gain=3.0)  # meant 0.3
    opt = torch.optim.ASGD(model.parameters(), lr=0.02)
    ratios = []

    def after(step, loss):
        first, last = model.states[0].grad, model.states[-1].grad
        ratios.append(float(first.norm() / last.norm().clamp_min(1e-30)))

    losses, norms = _loop(
        ctx, model, opt, _resonance_batches(gen), 150, F.mse_loss, after=after, clip=1.0
    )
    ctx.check("first frame's state gradient over 100x the last's", _median(ratios[:20]) > 100)
    ctx.check("gradient norm over 10 at the start", _median(norms[:10]) > 10)
    ctx.check("loss does not fall below 70% of its start", not _fell(losses))


# -- 9. loss of plasticity: fc1 bias init parsed as -2.5 -----------------------------------------


@scenario(
    family="dry_stone_coping_load_relu_regressor",
    optimizer="Rprop",
    cause="loss_of_plasticity",
    where=("act1", "fc1"),
    diverges=None,
    heldout=True,
    note="Dry-stone wall coping-load regressor (ReLU MLP on coping stone mass, batter angle, "
    "hearting fill, through-stone spacing, frost days, wall height, stone shape and lean, MSE, "
    "full-batch Rprop). The init config's fc1 bias '-2.5e-2' is parsed as -2.5: almost every "
    "act1 unit is negative on all inputs, gets no gradient and never revives; the loss stalls "
    "near the target variance.",
)
def h542_dry_stone_coping_dead_relu_bias(ctx):
    gen = seeded(5429)
    model = _Net(8, 64, 1, nn.ReLU)
    nn.init.constant_(model.fc1.bias, -2.5)  # meant -2.5e-2
    opt = torch.optim.Rprop(model.parameters(), lr=1e-3)
    data = next(_readings(gen, 512, 8, 54290))

    def full(gen_=gen):
        while True:
            yield data

    feats = []
    model.act1.register_forward_hook(lambda m, i, o: feats.append(o.detach()))

    def dead():
        with torch.no_grad():
            feats.clear()
            model(data[0])
            return float((feats[-1] <= 0).all(0).float().mean())

    dead0 = dead()
    losses, _ = _loop(ctx, model, opt, full(), 150, F.mse_loss)
    dead1 = dead()
    ctx.check("finite throughout", _finite(losses))
    ctx.check("over 80% of act1 dead at the start", dead0 > 0.8)
    ctx.check("over 80% of act1 still dead at the end", dead1 > 0.8)
    ctx.check("loss stalls above 60% of its start", _mean(losses[-10:]) > 0.6 * losses[0])


# -- 10. adam second moment poisoned: debugging loss multiplier left on one step -----------------


@scenario(
    family="travertine_dam_growth_silu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Travertine-dam growth regressor (SiLU MLP on spring flow, CO2 degassing, water "
    "temperature, calcium, pH, moss cover and dam height, MSE, Adam lr 3e-3). A gradient-check "
    "multiplier of 1e5 on the loss, meant for a unit test, stays on for step 100: one gradient "
    "1e5x larger fills Adam's second moment (sqrt(v) grows over 100x); after the first moment's "
    "kick the updates shrink about 10x, and the loss stays stuck at about 3x its level before "
    "step 100 for the rest of the run.",
)
def h542_travertine_debug_loss_multiplier(ctx):
    gen = seeded(54210)
    model = _Net(7, 48, 1, nn.SiLU)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    updates, roots = [], []
    prev = [_flat(model)]

    def backprop(step, loss):
        return loss * 1e5 if step == 100 else loss

    def after(step, loss):
        now = _flat(model)
        updates.append(float((now - prev[0]).norm()))
        prev[0] = now
        v = opt.state[model.fc1.weight]["exp_avg_sq"]
        roots.append(float(v.sqrt().median()))

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 7, 54211, noise=0.02),
        260,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("fc1 sqrt(v) over 100x after step 100", roots[100] > 100 * roots[99])
    ctx.check(
        "updates from step 140 on over 5x smaller than before step 100",
        _mean(updates[140:]) < _mean(updates[80:100]) / 5,
    )
    ctx.check(
        "loss stays over 2x its level before step 100",
        _mean(losses[-40:]) > 2 * _mean(losses[80:100]),
    )
    ctx.check(
        "loss stops falling (last 40 over 80% of steps 100-120)",
        _mean(losses[-40:]) > 0.8 * _mean(losses[100:120]),
    )
    ctx.check("logged loss at 100 ordinary", losses[100] < 2 * _median(losses[80:100]))
    ctx.check("trained before step 100", _fell(losses[:100]))


# -- control 1: learning rate raised by a plateau rule (alarming-looking) ------------------------


@scenario(
    family="wheat_weaving_plait_tension_tanh_regressor",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Wheat-weaving plait-tension regressor (tanh MLP on straw count, straw moisture, "
    "plait pattern, hand spacing, pull angle and straw length, MSE, RAdam lr 1e-3). A "
    "hand-written rule raises the learning rate 20x once the loss has not improved by 2% for "
    "25 steps (it fires near step 200): the loss rises briefly after the raise, then falls "
    "well below the plateau. "
    "Alarming-looking, healthy.",
)
def h542_wheat_weaving_plateau_lr_raise(ctx):
    gen = seeded(54212)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3)
    raised = []
    best = [float("inf"), 0]

    def after(step, loss):
        if loss < 0.98 * best[0]:
            best[0], best[1] = loss, step
        elif step - best[1] >= 25 and not raised:
            for g in opt.param_groups:
                g["lr"] *= 20
            raised.append(step)
            best[0], best[1] = loss, step

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 54213), 280, F.mse_loss, after=after)
    ctx.check("finite throughout", _finite(losses))
    ctx.check("lr raised once after a plateau", len(raised) == 1)
    if raised:
        k = raised[0]
        plateau = _mean(losses[k - 10 : k + 1])
        peak = max(_mean(losses[i : i + 3]) for i in range(k + 1, k + 20))
        ctx.check(
            "loss rises briefly after the raise (3-step mean over 1.15x)", peak > 1.15 * plateau
        )
        ctx.check("then falls below 70% of the plateau", _mean(losses[-15:]) < 0.7 * plateau)
    ctx.check("trained", _fell(losses))


# -- control 2: Hugging Face BART seq2seq --------------------------------------------------------


def _puff_batches(gen, batch=32, length=8, vocab=16):
    """Smoke-signal puff codes: each puff follows from the last by the signalling convention,
    one in ten is a free puff; the target is the code transcribed as read."""
    while True:
        cols = [torch.randint(3, vocab, (batch, 1), generator=gen)]
        for _ in range(length - 1):
            nxt = (cols[-1] * 5 + 1) % (vocab - 3) + 3
            free = torch.rand(batch, 1, generator=gen) < 0.1
            cols.append(torch.where(free, torch.randint(3, vocab, (batch, 1), generator=gen), nxt))
        x = torch.cat(cols, 1)
        yield x, x.clone()


@scenario(
    family="smoke_signal_puff_code_bart_seq2seq",
    optimizer="NAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Smoke-signal puff-code transcriber: a tiny Hugging Face BART (1 encoder and 1 decoder "
    "layer, d_model 32) built from a config, reading an 8-puff code and writing out its "
    "transcription; cross-entropy with label smoothing 0.1, NAdam lr 3e-3, 20-step linear warm-up, "
    "clipping at 1. Healthy.",
)
def h542_smoke_signal_bart_transcription(ctx):
    from transformers import BartConfig, BartForConditionalGeneration

    gen = seeded(54214)
    config = BartConfig(
        vocab_size=16,
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=16,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        forced_eos_token_id=None,
    )
    model = BartForConditionalGeneration(config)
    opt = torch.optim.NAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 20))

    def forward(m, x):
        return m(input_ids=x, labels=x).logits

    def loss_fn(logits, y):
        return F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), y.reshape(-1), label_smoothing=0.1
        )

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _puff_batches(gen),
        150,
        loss_fn,
        classifier=True,
        clip=1.0,
        sched=sched,
        forward=forward,
    )
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell below 60% of its start", _fell(losses, ratio=0.6))


# -- control 3: Adadelta Huber regressor with ReduceLROnPlateau and accumulation -----------------


@scenario(
    family="carrier_pigeon_homing_time_huber_regressor",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Carrier-pigeon homing-time regressor (SiLU MLP on release distance, wind speed and "
    "bearing, cloud cover, bird age, loft bearing and release hour, Huber loss, Adadelta lr 1.0, "
    "gradient accumulation 2, clipping at 1, ReduceLROnPlateau on the loss, noisy clocked "
    "times). Healthy.",
)
def h542_carrier_pigeon_adadelta_accum(ctx):
    gen = seeded(54215)
    model = _Net(8, 48, 1, nn.SiLU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _readings(gen, 32, 8, 54216, noise=0.2)
    losses = []
    for step in range(240):
        total = 0.0
        for _ in range(2):
            x, y = next(batches)
            loss = F.huber_loss(model(x), y, delta=0.5)
            (loss / 2).backward()
            total += float(loss.detach()) / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        logged = torch.tensor(total)
        losses.append(total)
        ctx.step(logged)
        opt.zero_grad(set_to_none=True)
        if step % 10 == 9:
            plateau.step(_mean(losses[-10:]))
    ctx.check("finite throughout", _finite(losses))
    ctx.check("loss fell below 70% of its start", _fell(losses))
