"""Held-out set 462 (``h462_``): hand-written models of trades, crafts, sports, instruments and
natural phenomena not covered before.

Faults: a bobbin-lace pricking-glyph MLP-Mixer (token- and channel-mixing MLPs over 2x2 patches
of the 8x8 digits) with a distillation temperature 5e-4 left in its forward (softmax collapse,
Adam), a didgeridoo drone-pressure Elman RNN whose recurrent weights are initialised orthogonal
with gain 3 typed for 1 (gradients grow back through time, Adamax), a curling-stone glide Huber
regressor fed one shard logged in millimetres (one corrupted batch, Adagrad), a thatching
reed-bundle density regressor whose accumulation divisor is applied as a multiplier for one step
(one gradient burst, SGD momentum), a geyser eruption-count Poisson net taking log of a raw linear
rate with no softplus or clamp (NaN, RMSprop), a bell-ringing rope-sally two-group regressor whose
head lr is typed 1e-9 for 1e-3 (head frozen, Adam), a glassblowing gather-heat classifier whose fc2
biases are initialised to -3 for -0.03 (dead ReLUs, NAdam), a peat-cutting turf-moisture regressor
with a hand-written weight decay of the wrong sign (slow climb, plain SGD), a sheep-shearing
fleece-weight regressor whose static 2**20 loss scale is not divided back for one step (Adam's
second moment poisoned) and an ice-fishing auger-depth regressor whose StepLR gamma is typed 10
for 0.1 (full-batch SGD past 2 / sharpness).

Controls: an origami crease-glyph convnet trained with mixup (AdamW, OneCycleLR); a hurling
sliotar-flight Gaussian-NLL net (RAdam, accumulation over 2, clipping, ReduceLROnPlateau); a raku
glaze-spectrum tied autoencoder (SGD Nesterov, warm-up then cosine, noisy inputs).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from scenarios.common import (
    collapsed_fraction,
    dead_fraction,
    digit_batches,
    digits,
    grad_norm,
    scenario,
    seeded,
)


def _finite(xs):
    return all(math.isfinite(v) for v in xs)


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _median(xs):
    s = sorted(xs)
    return s[len(s) // 2] if s else 0.0


def _fell(losses, k=10, ratio=0.8):
    return _finite(losses) and _mean(losses[-k:]) < ratio * _mean(losses[:k])


def _rel(before, after):
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
    plateau=False,
    accumulate=1,
    attach=True,
):
    """``before(step)`` first, ``alter(step, x, y)`` changes a batch, ``backprop(step, loss)``
    gives the loss backpropagated, ``after(step)`` after the optimizer step. Stops after a
    non-finite loss once ``ctx.step`` has seen it. ``attach=False``: a reference run."""
    if attach:
        ctx.attach(model, opt)
    losses, norms = [], []
    for step in range(steps):
        if before is not None:
            before(step)
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
            sched.step(shown) if plateau else sched.step()
        losses.append(shown)
        if attach:
            ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            break
    return losses, norms


def _readings(gen, batch, d_in, seed, noise=0.05, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d_in, generator=g)
    v = torch.randn(d_in, generator=g)
    while True:
        x = torch.randn(batch, d_in, generator=gen)
        y = torch.tanh(1.3 * x @ w / math.sqrt(d_in)) + 0.6 * torch.cos(x @ v / math.sqrt(d_in))
        yield x, scale * (y + noise * torch.randn(batch, generator=gen))


def _grades(gen, batch, d_in, classes, seed, spread=1.0):
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


# -- 1. softmax collapse: an MLP-Mixer with a temperature left in ---------------------------------


class _MixerBlock(nn.Module):
    def __init__(self, tokens, dim, tok_hidden, ch_hidden):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.token_mix = nn.Sequential(
            nn.Linear(tokens, tok_hidden), nn.GELU(), nn.Linear(tok_hidden, tokens)
        )
        self.ln2 = nn.LayerNorm(dim)
        self.channel_mix = nn.Sequential(
            nn.Linear(dim, ch_hidden), nn.GELU(), nn.Linear(ch_hidden, dim)
        )

    def forward(self, x):
        x = x + self.token_mix(self.ln1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.channel_mix(self.ln2(x))


class _LaceMixer(nn.Module):
    """16 tokens (2x2 patches of the 8x8 glyph), token-mixing and channel-mixing MLPs."""

    def __init__(self, dim=32, depth=2, classes=10, temperature=1.0):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.blocks = nn.ModuleList(_MixerBlock(16, dim, 32, 64) for _ in range(depth))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.temperature = temperature

    def forward(self, x):
        p = x.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
        h = self.embed(p)
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln(h).mean(1)) / self.temperature


@scenario(
    family="bobbin_lace_pricking_glyph_mlp_mixer",
    optimizer="Adam",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Bobbin-lace pricking-glyph classifier: a hand-written MLP-Mixer over 2x2 patches of "
    "the 8x8 glyphs (token-mixing and channel-mixing MLPs, LayerNorm), cross-entropy, Adam. "
    "A distillation temperature 5e-4 is left in the forward (logits / T), so the softmax "
    "saturates: many rows' target probability rounds to exactly 1.0 in float32.",
)
def h462_lace_mixer_temperature_left_in(ctx) -> None:
    gen = seeded(4621)
    model = _LaceMixer(temperature=0.0005)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    data = digit_batches(gen, 64)
    probe_x, probe_y = digits()[0][:256], digits()[1][:256]
    _loop(ctx, model, opt, data, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        end = collapsed_fraction(model(probe_x), probe_y)
        model.temperature = 1.0
        at_one = collapsed_fraction(model(probe_x), probe_y)
        model.temperature = 0.0005
    ctx.check("over 40% of rows' target probability exactly 1.0 at the end", end > 0.4)
    ctx.check("under 5% collapsed with the same weights at T = 1", at_one < 0.05)
    ctx.check("the loss is finite", _finite(ctx.losses))


# -- 2. exploding gradients: recurrent weights at gain 3 -------------------------------------------


class _DroneRNN(nn.Module):
    def __init__(self, gain):
        super().__init__()
        self.rnn = nn.RNN(4, 48, batch_first=True, nonlinearity="tanh")
        nn.init.orthogonal_(self.rnn.weight_hh_l0, gain=gain)
        self.head = nn.Linear(48, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1]).squeeze(-1)


def _drone_batches(gen, batch=32, t=40):
    while True:
        x = torch.randn(batch, t, 4, generator=gen)
        y = torch.tanh(x[:, :, 0].mean(1) * 3 + x[:, -5:, 1].mean(1))
        yield x, y


def _through_time(model, x, y):
    """|dL/dx_t| at the first and last frame of the sequence."""
    x = x.clone().requires_grad_()
    F.mse_loss(model(x), y).backward()
    g = x.grad.norm(dim=(0, 2))
    model.zero_grad(set_to_none=True)
    return float(g[0]), float(g[-1])


@scenario(
    family="didgeridoo_drone_pressure_elman_regressor",
    optimizer="Adamax",
    cause="exploding_gradients",
    where=("rnn",),
    diverges=None,
    heldout=True,
    note="Didgeridoo circular-breathing drone-pressure regressor: an Elman (tanh) RNN over 40 "
    "mouthpiece-pressure frames, MSE, Adamax, gradient clipping at 1. The recurrent weights are "
    "initialised orthogonal with gain 3 typed for 1, so the recurrence is chaotic and the "
    "gradient grows back through time (the first frame's input gradient far above the "
    "last's).",
)
def h462_didgeridoo_rnn_gain_typo(ctx) -> None:
    gen = seeded(4622)
    model = _DroneRNN(3.0)
    twin = _DroneRNN(1.0)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    data = _drone_batches(gen)
    x0, y0 = next(data)
    bad_first, bad_last = _through_time(model, x0, y0)
    ok_first, ok_last = _through_time(twin, x0, y0)
    _loop(ctx, model, opt, data, 120, F.mse_loss, clip=1.0)
    ctx.check("first frame's gradient over 1000x the last's", bad_first > 1000 * bad_last)
    ctx.check("under 1x at gain 1", ok_first < ok_last)
    ctx.check("the loss is finite", _finite(ctx.losses))


# -- 3. data outlier: one shard logged in millimetres -----------------------------------------------


@scenario(
    family="curling_stone_glide_huber_regressor",
    optimizer="Adagrad",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=100,
    note="Curling-stone glide-distance Huber regressor (ReLU MLP on sweep and release readings, "
    "Adagrad). One shard at step 100 was logged in millimetres instead of metres: its inputs "
    "and targets are 1000x; one bad batch, the run recovers.",
)
def h462_curling_glide_millimetre_shard(ctx) -> None:
    gen = seeded(4623)
    model = _Net(10, 48, 1)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)

    def alter(step, x, y):
        return (x * 1000, y * 1000) if step == 100 else (x, y)

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 10, 4623), 220, F.huber_loss, alter=alter
    )
    pre = losses[80:100]
    ctx.check("loss at 100 over 20x the median before", losses[100] > 20 * _median(pre))
    ctx.check("gradient at 100 over 10x the median", norms[100] > 10 * _median(norms[80:100]))
    ctx.check(
        "recovers: the last 10 under 1/3 of the 10 after the shard",
        _finite(losses) and _mean(losses[-10:]) < _mean(losses[101:111]) / 3,
    )


# -- 4. gradient spike: the accumulation divisor applied as a multiplier ---------------------------


@scenario(
    family="thatching_reed_bundle_density_tanh_regressor",
    optimizer="SGD momentum",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Thatching reed-bundle density regressor (tanh MLP, MSE, SGD momentum 0.9, clipping at "
    "5). At step 120 a resumed job's accumulation code multiplies the loss by the 64 micro-batch "
    "count squared instead of dividing (x4096 on one step): one gradient burst not from the "
    "data, the logged loss ordinary, the run recovers.",
)
def h462_thatch_accumulation_multiplier(ctx) -> None:
    gen = seeded(4624)
    model = _Net(8, 48, 1, act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def backprop(step, loss):
        return loss * 4096 if step == 120 else loss

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 4624), 220, F.mse_loss, backprop=backprop, clip=5.0
    )
    ctx.check("gradient at 120 over 50x the median", norms[120] > 50 * _median(norms[100:120]))
    ctx.check("logged loss at 120 ordinary", losses[120] < 3 * _median(losses[100:120]))
    ctx.check("recovers", _finite(losses) and _mean(losses[-10:]) < 3 * _mean(losses[100:120]))


# -- 5. nonfinite: log of a raw linear rate ---------------------------------------------------------


class _GeyserNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 32)
        self.act = nn.ReLU()
        self.rate = nn.Linear(32, 1)
        nn.init.constant_(self.rate.bias, 2.0)

    def forward(self, x):
        return torch.log(self.rate(self.act(self.fc1(x)))).squeeze(-1)


def _geyser_batches(gen, batch=64):
    g = torch.Generator().manual_seed(46250)
    w = torch.randn(6, generator=g)
    while True:
        x = torch.randn(batch, 6, generator=gen)
        lam = torch.exp(0.8 * torch.tanh(x @ w / 2) - 0.5)
        yield x, torch.poisson(lam, generator=gen)


def _poisson(log_rate, y):
    return F.poisson_nll_loss(log_rate, y, log_input=True)


@scenario(
    family="geyser_eruption_count_log_rate_net",
    optimizer="RMSprop",
    cause="nonfinite",
    where=("rate",),
    diverges=6,
    heldout=True,
    note="Geyser eruption-count Poisson regressor (ReLU MLP, Poisson NLL on the log rate, "
    "RMSprop). The log rate is computed as log(rate(h)) of a raw linear output with no softplus "
    "or clamp: once a row's rate goes to or below 0 the log gives -inf/NaN and the loss is NaN.",
)
def h462_geyser_log_unclamped_rate(ctx) -> None:
    gen = seeded(4625)
    model = _GeyserNet()
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    losses, _ = _loop(ctx, model, opt, _geyser_batches(gen), 200, _poisson)
    bad = next((i for i, v in enumerate(losses) if not math.isfinite(v)), None)
    ctx.check("the loss is NaN at step 6", bad == 6)
    ctx.check("finite before it", bad is not None and bad > 5 and _finite(losses[:bad]))


# -- 6. update ratio: a head lr typed 1e-9 -------------------------------------------------------


@scenario(
    family="bell_ringing_rope_sally_two_group_regressor",
    optimizer="Adam",
    cause="update_ratio_out_of_range",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Change-ringing rope-sally pull-timing regressor (ReLU MLP, MSE, Adam with two param "
    "groups: trunk at 1e-3, head at its own rate). The head's lr is typed 1e-9 for 1e-3: the "
    "head's updates are about a millionth of the trunk's relative to its weights (frozen in "
    "practice) while the trunk trains.",
)
def h462_bell_sally_head_lr_typo(ctx) -> None:
    gen = seeded(4626)
    model = _Net(8, 48, 1)
    trunk = list(model.fc1.parameters()) + list(model.fc2.parameters())
    opt = torch.optim.Adam(
        [{"params": trunk, "lr": 1e-3}, {"params": model.head.parameters(), "lr": 1e-9}]
    )
    head0, fc10 = model.head.weight.detach().clone(), model.fc1.weight.detach().clone()
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 4626), 200, F.mse_loss)
    ctx.check("head moves under 1e-5 of its norm", _rel(head0, model.head.weight) < 1e-5)
    ctx.check("fc1 moves over 5% of its norm", _rel(fc10, model.fc1.weight) > 0.05)
    ctx.check("the loss is finite", _finite(losses))


# -- 7. loss of plasticity: fc2 biases at -3 -------------------------------------------------------


@scenario(
    family="glassblowing_gather_heat_relu_classifier",
    optimizer="NAdam",
    cause="loss_of_plasticity",
    where=("fc2",),
    diverges=None,
    heldout=True,
    note="Glassblowing gather-heat classifier (ReLU MLP on glory-hole and gather readings, six "
    "heat grades, cross-entropy, NAdam). fc2's biases are initialised to -3.0 for -0.03: its "
    "ReLUs are dead from the start and never revive, and the model learns only what the head's "
    "bias can.",
)
def h462_glassblowing_dead_bias_init(ctx) -> None:
    gen = seeded(4627)
    model = _Net(12, 48, 6)
    nn.init.constant_(model.fc2.bias, -3.0)
    twin = _Net(12, 48, 6)
    nn.init.constant_(twin.fc2.bias, -0.03)
    data = _grades(gen, 64, 12, 6, seed=4627)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    x0, _ = next(data)
    with torch.no_grad():
        ok = dead_fraction(twin.fc2(twin.act1(twin.fc1(x0))))
    losses, _ = _loop(ctx, model, opt, data, 200, F.cross_entropy, classifier=True)
    x1, _ = next(data)
    with torch.no_grad():
        end = dead_fraction(model.fc2(model.act1(model.fc1(x1))))
    ctx.check("over 90% of fc2's units dead at the end", end > 0.9)
    ctx.check("under 10% dead at -0.03", ok < 0.1)
    ctx.check("the loss stays near chance", _mean(losses[-10:]) > 0.8 * math.log(6))


# -- 8. loss divergence: a weight-decay sign bug --------------------------------------------------


@scenario(
    family="peat_cutting_turf_moisture_regressor",
    optimizer="SGD",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Peat-cutting turf-moisture regressor (tanh MLP, MSE, plain SGD). The hand-written "
    "decoupled weight decay is written p += lr * wd * p instead of p -= ...: the weights grow "
    "geometrically and the loss climbs slowly after it has trained, with no spike.",
)
def h462_peat_decay_sign(ctx) -> None:
    gen = seeded(4628)
    model = _Net(8, 48, 1, act=nn.Tanh)
    lr, wd = 0.05, 0.3
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def after(step):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(p, alpha=lr * wd)

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 8, 4628), 250, F.mse_loss, after=after)
    low = min(losses)
    jumps = max(b / max(a, 1e-12) for a, b in zip(losses[:-1], losses[1:], strict=False))
    ctx.check("the last 10 over 3x the lowest", _mean(losses[-10:]) > 3 * low)
    ctx.check("the lowest comes after training", losses.index(low) > 10)
    ctx.check("no single-step jump over 5x", jumps < 5)
    ctx.check("finite", _finite(losses))


# -- 9. Adam second moment: a static loss scale not divided back -----------------------------------


def _sheep_run(ctx, poisoned, attach):
    gen = seeded(4629)
    model = _Net(8, 48, 1, act=nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    moves = []
    prev = [p.detach().clone() for p in model.parameters()]

    def backprop(step, loss):
        return loss * 2.0**20 if poisoned and step == 80 else loss

    def after(step):
        now = [p.detach().clone() for p in model.parameters()]
        moves.append(
            math.sqrt(sum(float((a - b).norm() ** 2) for a, b in zip(now, prev, strict=True)))
        )
        prev[:] = now

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 8, 4629),
        220,
        F.mse_loss,
        backprop=backprop,
        after=after,
        attach=attach,
    )
    return losses, norms, moves


@scenario(
    family="sheep_shearing_fleece_weight_gelu_regressor",
    optimizer="Adam",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    heldout=True,
    onset=80,
    note="Sheep-shearing fleece-weight regressor (GELU MLP, MSE, Adam). A static 2**20 loss "
    "scale from an fp16 config is applied at step 80 and not divided back: one giant gradient "
    "fills Adam's second moment (beta2 0.999) and the updates stall for the next hundreds of "
    "steps, so the run stops improving.",
)
def h462_sheep_static_loss_scale(ctx) -> None:
    ref, _, ref_moves = _sheep_run(ctx, False, False)
    losses, norms, moves = _sheep_run(ctx, True, True)
    ctx.check("gradient at 80 over 1e4x the median", norms[80] > 1e4 * _median(norms[60:80]))
    ctx.check(
        "updates 120-220 under 1/20 of those before",
        _mean(moves[120:220]) < _mean(moves[40:80]) / 20,
    )
    ctx.check("the clean run keeps moving", _mean(ref_moves[120:220]) > _mean(ref_moves[40:80]) / 5)
    ctx.check(
        "the loss over 1.5x the clean run's at the end",
        _mean(losses[-20:]) > 1.5 * _mean(ref[-20:]),
    )


# -- 10. sharpness: StepLR gamma typed 10 -----------------------------------------------------------


def _sharpness(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    eig = 0.0
    for _ in range(iters):
        n = math.sqrt(sum(float((u * u).sum()) for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        eig = sum(float((a * b).sum()) for a, b in zip(hv, v, strict=True))
        v = [h.detach() for h in hv]
    return eig


AUGER_STEP = 60


@scenario(
    family="ice_fishing_auger_depth_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    onset=AUGER_STEP,
    note="Ice-fishing auger-depth regressor (tanh MLP on ice thickness, snow and torque "
    "readings, MSE, full-batch SGD under StepLR). The StepLR gamma is typed 10 for 0.1: at "
    "step 60 the lr jumps 10x, past 2 / sharpness, and the loss oscillates and blows up.",
)
def h462_auger_steplr_gamma_typo(ctx) -> None:
    gen = seeded(4630)
    model = _Net(8, 48, 1, act=nn.Tanh)
    data = _readings(gen, 256, 8, seed=4630)
    x, y = next(data)
    fixed = iter(lambda: (x, y), None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=AUGER_STEP, gamma=10.0)
    lrs, sharp = [], {}

    def before(step):
        lrs.append(opt.param_groups[0]["lr"])
        if step in (AUGER_STEP - 1, AUGER_STEP):
            sharp[step] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, fixed, 150, F.mse_loss, before=before, sched=sched)
    low = min(v for v in losses if math.isfinite(v))
    blow = next((i for i, v in enumerate(losses) if not math.isfinite(v) or v > 100 * low), None)
    ctx.check("lr * sharpness under 2 before", lrs[AUGER_STEP - 1] * sharp[AUGER_STEP - 1] < 2)
    ctx.check("lr * sharpness over 2 after", lrs[AUGER_STEP] * sharp[AUGER_STEP] > 2)
    ctx.check("the loss blows up over 100x after it", blow is not None and blow > AUGER_STEP)
    ctx.check("trained before it", low < 0.5 * losses[0])


# -- controls -------------------------------------------------------------------------------------


class _CreaseNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 12, 3, padding=1)
        self.conv2 = nn.Conv2d(12, 24, 3, padding=1)
        self.head = nn.Linear(24 * 16, 10)

    def forward(self, x):
        x = F.relu(self.conv1(x.reshape(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


@scenario(
    family="origami_crease_glyph_mixup_convnet",
    optimizer="AdamW",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Origami crease-pattern glyph classifier (ReLU convnet on 8x8 glyphs, AdamW with weight "
    "decay under OneCycleLR) trained with mixup (alpha 0.4): each batch is blended with a "
    "shuffled copy at a Beta-drawn weight and the loss mixes both targets' cross-entropies, so "
    "batch losses swing with the mixing weight. A healthy control.",
)
def h462_origami_mixup_onecycle(ctx) -> None:
    gen = seeded(4631)
    model = _CreaseNet()
    steps = 200
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    beta = torch.distributions.Beta(0.4, 0.4)
    data = digit_batches(gen, 64)
    ctx.attach(model, opt)
    for _ in range(steps):
        x, y = next(data)
        lam = float(beta.sample())
        perm = torch.randperm(len(y), generator=gen)
        ctx.targets(y if lam >= 0.5 else y[perm])
        out = model(lam * x + (1 - lam) * x[perm])
        loss = lam * F.cross_entropy(out, y) + (1 - lam) * F.cross_entropy(out, y[perm])
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        sched.step()
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    x, y = digits()
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("loss fell", _fell(ctx.losses, 20))
    ctx.check("clean accuracy over 85%", acc > 0.85)


class _SliotarNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 48)
        self.fc2 = nn.Linear(48, 48)
        self.mean = nn.Linear(48, 1)
        self.log_var = nn.Linear(48, 1)

    def forward(self, x):
        h = F.silu(self.fc2(F.silu(self.fc1(x))))
        return torch.cat([self.mean(h), self.log_var(h).clamp(-8, 8)], -1)


def _gauss_nll(out, y):
    return F.gaussian_nll_loss(out[:, 0], y, out[:, 1].exp())


@scenario(
    family="hurling_sliotar_flight_gaussian_nll_net",
    optimizer="RAdam",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Hurling sliotar flight-distance regressor with a predicted variance (SiLU MLP, "
    "Gaussian NLL with a clamped log-variance, RAdam, accumulation over 2 micro-batches, "
    "clipping at 1, ReduceLROnPlateau on the loss, noisy targets). A healthy control.",
)
def h462_sliotar_gaussian_nll_plateau(ctx) -> None:
    gen = seeded(4632)
    model = _SliotarNet()
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=15)
    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 32, 8, 4632, noise=0.2),
        200,
        _gauss_nll,
        clip=1.0,
        sched=sched,
        plateau=True,
        accumulate=2,
    )
    ctx.check("loss fell", _finite(losses) and _mean(losses[-10:]) < _mean(losses[:10]) - 0.3)


class _TiedAE(nn.Module):
    def __init__(self, d=24, k=8):
        super().__init__()
        self.enc = nn.Linear(d, k)
        self.dec_bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return F.linear(torch.tanh(self.enc(x)), self.enc.weight.t(), self.dec_bias)


def _spectra(gen, batch=64, d=24):
    g = torch.Generator().manual_seed(46330)
    basis = torch.randn(5, d, generator=g)
    while True:
        clean = torch.tanh(torch.randn(batch, 5, generator=gen)) @ basis / 2
        yield clean + 0.1 * torch.randn(batch, d, generator=gen), clean


@scenario(
    family="raku_glaze_spectrum_tied_autoencoder",
    optimizer="SGD Nesterov",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Raku glaze reflectance-spectrum denoising autoencoder with tied weights (the decoder "
    "is the encoder's transpose), MSE, SGD with Nesterov momentum, linear warm-up then cosine "
    "decay, noisy inputs. A healthy control.",
)
def h462_raku_tied_autoencoder_warmup_cosine(ctx) -> None:
    gen = seeded(4633)
    model = _TiedAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    steps, warm = 250, 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)),
    )
    losses, _ = _loop(ctx, model, opt, _spectra(gen), steps, F.mse_loss, sched=sched)
    ctx.check("loss fell", _fell(losses, 10, 0.5))
