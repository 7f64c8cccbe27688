"""Held-out set 537 (``h537_``): 10 faults over 10 causes and 3 healthy controls, all hand-written.

Faults: shinobue breath-pitch deep tanh MLP with init gain typed 3.0 (exploding_gradients, SGD
Nesterov); pahu drumhead strike-count Poisson net with log of exposure times rate and no floor
(nonfinite, Adagrad); kacapi string-tension ReLU regressor with a summed loss whose batch grows
16x on resume (sharpness_above_limit, plain SGD); sapeh fret-intonation GELU regressor with fc1's
group lr typed 1e-9 (update_ratio_out_of_range, RAdam); garamut slit-drum WaveNet with one
recording in raw int16 (data_outlier, SGD momentum); agung gong-sustain Huber regressor with a
loss weight read as 1000 for one step (gradient_spike, ASGD); gandingan gong-pattern classifier
with temperature typed 0.002 (softmax_collapse, Adamax); hasapi string-buzz tanh regressor with
decoupled weight decay sign flipped (loss_divergence, NAdam); ryuteki breath-noise SiLU regressor
with a debug loss x 1e6 for one step (adam_second_moment_poisoned, AdamW); lali drum-signal BCE
classifier with its logit penalty subtracted (output_logit_divergence, Adam).
Controls: cartwheel landing-grade BatchNorm classifier with SWA at a high constant lr, then BN
statistics recomputed (alarming-looking: the training loss jumps when SWA starts, SGD momentum);
puili rattle-strike GELU regressor (fp16 autocast + GradScaler, RMSprop, OneCycleLR); fingerstyle
guitar pattern classifier (Adadelta, label smoothing, accumulation 2, clipping, ReduceLROnPlateau).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn

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


def _grades(gen, batch, d_in, classes, seed, spread=1.0, flip=0.0):
    """Readings scattered around one prototype per class (``flip`` of the labels resampled)."""
    g = torch.Generator().manual_seed(seed)
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = protos[y] + spread * torch.randn(batch, d_in, generator=gen)
        if flip > 0:
            noisy = torch.rand(batch, generator=gen) < flip
            y = torch.where(noisy, torch.randint(0, classes, (batch,), generator=gen), y)
        yield x, y


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


# -- 1. exploding gradients: init gain typed 3.0 in a deep tanh stack -----------------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in, width, depth, gain):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for lin in self.layers:
            nn.init.xavier_normal_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        for lin in self.layers:
            x = torch.tanh(lin(x))
        return self.head(x).squeeze(-1)


@scenario(
    family="shinobue_breath_pitch_deep_tanh_mlp",
    optimizer="SGD Nesterov",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Shinobue (bamboo fife) breath-pitch regressor: a 12-layer tanh MLP on breath pressure, "
    "lip aperture, finger shading and bore temperature, MSE, SGD Nesterov lr 3e-3 momentum 0.9. "
    "The init helper's xavier gain was typed 3.0 for 1.0 (the tanh gain is 5/3): every layer "
    "multiplies the backward signal, the net sits in the chaotic phase and the gradient grows "
    "layer by layer towards the input, layers.0's weight gradient over 20x the last layer's.",
)
def h537_shinobue_init_gain_typo(ctx):
    gen = seeded(5371)
    model = _DeepTanh(8, 32, 12, gain=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=3e-3, momentum=0.9, nesterov=True)
    ratios = []

    def after(step, loss):
        first = model.layers[0].weight.grad
        last = model.layers[-1].weight.grad
        if first is not None and last is not None:
            ratios.append(float(first.norm() / last.norm()))

    losses, norms = _loop(
        ctx, model, opt, _readings(gen, 64, 8, 53710), 120, F.mse_loss, after=after
    )
    ctx.check("layers.0 weight gradient over 20x the last layer's at step 0", ratios[0] > 20)
    ctx.check("still over 10x at the median step", _median(ratios) > 10)
    ctx.check("finite", _finite(losses))


# -- 2. nonfinite: log(exposure * rate) with no floor, a zero-duration recording ------------------


class _LogRate(nn.Module):
    """log of the expected strike count: exposure (seconds) times the per-second rate."""

    def forward(self, exposure, rate):
        return torch.log(exposure * rate)


class _StrikeNet(nn.Module):
    def __init__(self, d_in, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.SiLU()
        self.fc2 = nn.Linear(hidden, 1)
        self.log_rate = _LogRate()

    def forward(self, xe):
        x, exposure = xe[:, :-1], xe[:, -1]
        rate = F.softplus(self.fc2(self.act1(self.fc1(x))).squeeze(-1))
        return self.log_rate(exposure, rate)


def _poisson_nll(log_mu, y):
    return (log_mu.exp() - y * log_mu).mean()


@scenario(
    family="pahu_drumhead_strike_count_poisson_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("log_rate",),
    diverges=80,
    onset=80,
    heldout=True,
    note="Pahu (Hawaiian sharkskin drum) strike-count Poisson net (SiLU MLP on dancer tempo, "
    "chant length, head tension, humidity; expected count = duration * softplus rate, Poisson NLL "
    "on log(duration * rate) with no floor, Adagrad lr 0.05). At step 80 a shard whose recording "
    "durations were lost is filled with 0 seconds but keeps its strike counts: log(0) = -inf in "
    "log_rate and the loss is non-finite at step 80.",
)
def h537_pahu_log_zero_duration(ctx):
    gen = seeded(5372)
    g = torch.Generator().manual_seed(53720)
    w = torch.randn(5, generator=g) * 0.4

    def batches():
        while True:
            x = torch.randn(64, 5, generator=gen)
            dur = 2 + 8 * torch.rand(64, generator=gen)
            y = torch.poisson(dur * torch.exp(x @ w), generator=gen)
            yield torch.cat([x, dur[:, None]], 1), y

    def alter(step, x, y):
        if step == 80:  # the shard with its durations lost, filled with 0
            x = x.clone()
            x[:, -1] = 0.0
        return x, y

    model = _StrikeNet(5)
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    losses, _ = _loop(ctx, model, opt, batches(), 160, _poisson_nll, alter=alter)
    ctx.check("finite before step 80", _finite(losses[:80]))
    ctx.check("loss non-finite at step 80", len(losses) > 80 and not math.isfinite(losses[80]))
    ctx.check(
        "loss fell by over 5 nats before the shard", _mean(losses[70:80]) < _mean(losses[:10]) - 5
    )


# -- 3. sharpness above the limit: summed loss, batch 16x larger on resume ------------------------


def _sharpness(model, loss_fn, x, y, iters=20):
    params = [p for p in model.parameters()]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


@scenario(
    family="kacapi_string_tension_relu_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    onset=60,
    heldout=True,
    note="Kacapi (Sundanese boat zither) string-tension regressor (ReLU MLP on string gauge, "
    "length, pitch and humidity, MSE with reduction='sum', plain SGD lr 0.01 tuned at batch 8). "
    "The job is resumed at step 60 from a config with batch 128: the summed loss makes the "
    "effective lr 16x, lr x sharpness goes from under 2 to far past 2 and the loss blows up.",
)
def h537_kacapi_summed_loss_batch_grows(ctx):
    gen = seeded(5373)
    model = _Net(6, 48, 1, nn.ReLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    small = _readings(gen, 8, 6, 53730)
    big = _readings(gen, 128, 6, 53730)
    state = {"lam": None}

    def batches():
        step = 0
        while True:
            yield next(small) if step < 60 else next(big)
            step += 1

    def sum_loss(out, y):
        return F.mse_loss(out, y, reduction="sum")

    def before(step):
        if step == 60:
            x, y = next(_readings(torch.Generator().manual_seed(1), 256, 6, 53730))
            state["lam"] = _sharpness(model, F.mse_loss, x, y)

    losses, _ = _loop(ctx, model, opt, batches(), 140, sum_loss, before=before)
    lam = state["lam"] or 0.0
    per_sample = [v / (8 if i < 60 else 128) for i, v in enumerate(losses)]
    ctx.check("lr x batch 8 x sharpness under 2 before the resume", 0.01 * 8 * lam < 2)
    ctx.check("lr x batch 128 x sharpness over 2 after it", 0.01 * 128 * lam > 2)
    ctx.check(
        "per-sample loss over 100x its pre-resume median, or non-finite",
        not _finite(per_sample) or max(per_sample[60:]) > 100 * _median(per_sample[40:60]),
    )


# -- 4. update ratio: fc1's param-group lr typed 1e-9 ---------------------------------------------


@scenario(
    family="sapeh_fret_intonation_gelu_regressor",
    optimizer="RAdam",
    cause="update_ratio_out_of_range",
    where=("fc1",),
    diverges=None,
    heldout=True,
    note="Sapeh (Bornean boat lute) fret-intonation regressor (GELU MLP on fret position, string "
    "gauge, neck relief and wood moisture, Huber, RAdam with per-layer groups). fc1's group lr "
    "was typed 1e-9 for 1e-3 in the layer-wise config: fc1 never moves (under 1e-5 of its norm) "
    "while fc2 and the head learn at 1e-3.",
)
def h537_sapeh_fc1_group_lr_typo(ctx):
    gen = seeded(5374)
    model = _Net(7, 48, 1, nn.GELU)
    opt = torch.optim.RAdam(
        [
            {"params": model.fc1.parameters(), "lr": 1e-9},
            {"params": model.fc2.parameters(), "lr": 1e-3},
            {"params": model.head.parameters(), "lr": 1e-3},
        ]
    )
    fc1_0, head_0 = _flat(model.fc1), _flat(model.head)
    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 7, 53740), 200, F.huber_loss)
    ctx.check("fc1 moved under 1e-5 of its norm", _rel(_flat(model.fc1), fc1_0) < 1e-5)
    ctx.check("head moved over 5e-2 of its norm", _rel(_flat(model.head), head_0) > 5e-2)
    ctx.check("finite", _finite(losses))


# -- 5. data outlier: WaveNet, one recording in raw int16 ------------------------------------------


class _GatedLayer(nn.Module):
    def __init__(self, ch, dilation):
        super().__init__()
        self.dilation = dilation
        self.filt = nn.Conv1d(ch, ch, 2, dilation=dilation)
        self.gate = nn.Conv1d(ch, ch, 2, dilation=dilation)
        self.res = nn.Conv1d(ch, ch, 1)
        self.skip = nn.Conv1d(ch, ch, 1)

    def forward(self, x):
        h = F.pad(x, (self.dilation, 0))
        z = torch.tanh(self.filt(h)) * torch.sigmoid(self.gate(h))
        return x + self.res(z), self.skip(z)


class _WaveNet(nn.Module):
    def __init__(self, ch=16, dilations=(1, 2, 4, 8, 16)):
        super().__init__()
        self.inp = nn.Conv1d(1, ch, 1)
        self.stack = nn.ModuleList(_GatedLayer(ch, d) for d in dilations)
        self.out1 = nn.Conv1d(ch, ch, 1)
        self.out2 = nn.Conv1d(ch, 1, 1)

    def forward(self, x):
        h = self.inp(x[:, None])
        skips = 0
        for layer in self.stack:
            h, s = layer(h)
            skips = skips + s
        return self.out2(F.relu(self.out1(F.relu(skips))))[:, 0, -1]


def _slit_drum(gen, batch, length=48):
    t = torch.arange(length + 1, dtype=torch.float32)
    while True:
        f = 0.15 + 0.25 * torch.rand(batch, 1, generator=gen)
        decay = 0.01 + 0.04 * torch.rand(batch, 1, generator=gen)
        phase = 6.28 * torch.rand(batch, 1, generator=gen)
        sig = torch.sin(f * t + phase) * torch.exp(-decay * t)
        sig = sig + 0.02 * torch.randn(batch, length + 1, generator=gen)
        yield sig[:, :-1], sig[:, -1]


@scenario(
    family="garamut_slit_drum_signal_wavenet_regressor",
    optimizer="SGD momentum",
    cause="data_outlier",
    where=(),
    diverges=None,
    onset=120,
    heldout=True,
    note="Garamut (Papua New Guinea slit drum) signal forecaster: a WaveNet-style stack of gated "
    "(tanh x sigmoid) dilated causal convolutions with residual and skip paths predicting the "
    "next sample, MSE, SGD momentum 0.9 lr 0.02, clipped at 1. At step 120 one batch comes from "
    "a recording exported as raw int16 PCM instead of float in [-1, 1]: the loss jumps over "
    "1000x and the gradient over 100x, clipping holds the update and the run recovers.",
)
def h537_garamut_wavenet_raw_pcm_shard(ctx):
    gen = seeded(5375)
    model = _WaveNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)

    def alter(step, x, y):
        if step == 120:
            return x * 32767.0, y * 32767.0
        return x, y

    losses, norms = _loop(
        ctx, model, opt, _slit_drum(gen, 32), 220, F.mse_loss, alter=alter, clip=1.0
    )
    pre = _median(losses[100:120])
    ctx.check("loss at step 120 over 1000x the pre-shard median", losses[120] > 1000 * pre)
    ctx.check(
        "gradient at step 120 over 100x its median", norms[120] > 100 * _median(norms[100:120])
    )
    ctx.check("recovers: last 20 under 2x the pre-shard median", _mean(losses[-20:]) < 2 * pre)
    ctx.check("loss fell before the shard", pre < 0.5 * _mean(losses[:10]))


# -- 6. gradient spike: loss weight read as 1000 for one step -------------------------------------


@scenario(
    family="agung_gong_sustain_silu_huber_regressor",
    optimizer="ASGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Agung (Maguindanao hanging gong) sustain-time regressor (SiLU MLP on boss height, rim "
    "depth, mallet hardness and strike force, Huber, ASGD lr 0.05, clipped at 1). At step 100 a "
    "hot-reloaded loss config reads the sustain weight '1e3' meant for a later curriculum as "
    "1000 for one step: the backpropagated gradient jumps over 50x while the logged loss is "
    "ordinary; clipping holds the update and training goes on.",
)
def h537_agung_loss_weight_hot_reload(ctx):
    gen = seeded(5376)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.ASGD(model.parameters(), lr=0.05)

    def backprop(step, loss):
        return loss * (1000.0 if step == 100 else 1.0)

    losses, norms = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 53760),
        200,
        F.huber_loss,
        backprop=backprop,
        clip=1.0,
    )
    ctx.check("gradient at step 100 over 50x its median", norms[100] > 50 * _median(norms[80:100]))
    ctx.check(
        "logged loss at step 100 under 3x its median", losses[100] < 3 * _median(losses[80:100])
    )
    ctx.check("trains: loss fell and stays finite", _fell(losses))


# -- 7. softmax collapse: temperature typed 0.002 -------------------------------------------------


class _TempNet(_Net):
    def __init__(self, d_in, hidden, classes, temperature):
        super().__init__(d_in, hidden, classes, nn.ReLU)
        self.temperature = temperature

    def forward(self, x):
        return super().forward(x) / self.temperature


@scenario(
    family="gandingan_gong_pattern_temperature_classifier",
    optimizer="Adamax",
    cause="softmax_collapse",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Gandingan (talking gong set) rhythmic-pattern classifier (ReLU MLP on onset features, "
    "6 patterns, cross-entropy on logits / T, Adamax lr 2e-3). The calibration temperature was "
    "typed 0.002 for 2.0: the logits are scaled 500x, most rows' float32 softmax gives the target "
    "probability exactly 1.0 and their gradients vanish.",
)
def h537_gandingan_temperature_typo(ctx):
    gen = seeded(5377)
    model = _TempNet(10, 48, 6, temperature=0.002)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    fractions = []
    batches = _grades(gen, 64, 10, 6, 53770, spread=0.8)
    probe = next(_grades(torch.Generator().manual_seed(7), 256, 10, 6, 53770, spread=0.8))
    losses, _ = _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True)
    with torch.no_grad():
        p = torch.softmax(model(probe[0]), -1).gather(1, probe[1][:, None])
        fractions.append(float((p == 1.0).float().mean()))
    ctx.check("over half the rows' target probability exactly 1.0", fractions[0] > 0.5)
    ctx.check("finite", _finite(losses))


# -- 8. loss divergence: decoupled weight decay with its sign flipped ------------------------------


@scenario(
    family="hasapi_string_buzz_tanh_regressor",
    optimizer="NAdam",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Hasapi (Batak boat lute) string-buzz regressor (tanh MLP on fret height, string action, "
    "plucking force and soundboard moisture, MSE, NAdam lr 2e-3). The hand-written decoupled "
    "weight decay (wd 3) is applied as p *= 1 + lr * wd instead of 1 - lr * wd: the weights grow "
    "geometrically, the net first fits, then the loss climbs slowly to several times its best "
    "without a jump.",
)
def h537_hasapi_decay_sign_flip(ctx):
    gen = seeded(5378)
    model = _Net(6, 48, 1, nn.Tanh)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    w0 = float(_flat(model).norm())

    def after(step, loss):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 2e-3 * 3.0)  # should be 1 - lr * wd

    losses, _ = _loop(ctx, model, opt, _readings(gen, 64, 6, 53780), 260, F.mse_loss, after=after)
    best = min(_mean(losses[i : i + 10]) for i in range(0, len(losses) - 10))
    ctx.check("weights grew over 3x", float(_flat(model).norm()) > 3 * w0)
    ctx.check("last 20 over 3x the best 10-step mean", _mean(losses[-20:]) > 3 * best)
    ctx.check("finite", _finite(losses))
    ctx.check(
        "no jump: no step over 3x the previous",
        all(b < 3 * a for a, b in zip(losses[40:-1], losses[41:], strict=True)),
    )


# -- 9. Adam's second moment poisoned: debug loss x 1e6 for one step ------------------------------


@scenario(
    family="ryuteki_breath_noise_silu_regressor",
    optimizer="AdamW",
    cause="adam_second_moment_poisoned",
    where=(),
    diverges=None,
    onset=100,
    heldout=True,
    note="Ryuteki (gagaku dragon flute) breath-noise regressor (SiLU MLP on embouchure, breath "
    "pressure and bore humidity, MSE, AdamW lr 3e-3 betas (0.9, 0.999)). A gradient-check hook "
    "left in the loop multiplies the loss by 1e6 on step 100: one giant gradient fills Adam's "
    "second moment (fc1's median sqrt(v) over 30x); the equally giant first moment drags the "
    "weights for a few steps while it decays, then every update is a fraction of its size "
    "before and the loss stalls well above its pre-step-100 level.",
)
def h537_ryuteki_debug_loss_scale(ctx):
    gen = seeded(5379)
    model = _Net(6, 48, 1, nn.SiLU)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    sqrt_v, moves = [], []
    prev = {"w": _flat(model)}

    def backprop(step, loss):
        return loss * (1e6 if step == 100 else 1.0)

    def after(step, loss):
        st = opt.state[model.fc1.weight]
        sqrt_v.append(float(st["exp_avg_sq"].sqrt().median()))
        w = _flat(model)
        moves.append(float((w - prev["w"]).norm()))
        prev["w"] = w

    losses, _ = _loop(
        ctx,
        model,
        opt,
        _readings(gen, 64, 6, 53790),
        180,
        F.mse_loss,
        backprop=backprop,
        after=after,
    )
    ctx.check("fc1 median sqrt(v) over 30x after step 100", sqrt_v[100] > 30 * sqrt_v[99])
    ctx.check(
        "updates over steps 130-170 under 0.2x those over 80-99",
        _mean(moves[130:170]) < 0.2 * _mean(moves[80:100]),
    )
    ctx.check(
        "stalls: last 20 over 2x the pre-step-100 median",
        _mean(losses[-20:]) > 2 * _median(losses[80:100]),
    )
    ctx.check("finite", _finite(losses))


# -- 10. output logit divergence: the logit penalty subtracted instead of added -----------------


@scenario(
    family="lali_drum_signal_beat_bce_classifier",
    optimizer="Adam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Lali (Fijian slit drum) signal-beat detector (ReLU MLP on strike spacing and loudness, "
    "BCE with logits, Adam lr 1e-2). The logit penalty meant to keep the head calibrated "
    "(1e-3 * logit^2) is subtracted instead of added: once the data are fitted the penalty "
    "rewards ever larger logits, the head's median |logit| grows over 20x and is still rising "
    "at the end while the logged BCE stays small.",
)
def h537_lali_logit_penalty_sign_flip(ctx):
    gen = seeded(53710)
    g = torch.Generator().manual_seed(537100)
    w = torch.randn(8, generator=g)
    w = w / w.norm()

    def batches():
        while True:
            x = torch.randn(64, 8, generator=gen)
            s = x @ w
            x = x + (0.8 * torch.sign(s))[:, None] * w  # a margin around the boundary
            yield x, (s > 0).float()

    probe_x, _ = next(batches())
    model = _Net(8, 32, 1, nn.ReLU)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    logits = {}
    med = []

    def forward(m, x):
        logits["z"] = m(x)
        return logits["z"]

    def backprop(step, loss):
        return loss - 1e-3 * logits["z"].pow(2).mean()  # should be + 1e-3 * z^2

    def after(step, loss):
        with torch.no_grad():
            med.append(float(model(probe_x).abs().median()))

    with torch.no_grad():
        med0 = float(model(probe_x).abs().median())
    losses, _ = _loop(
        ctx,
        model,
        opt,
        batches(),
        200,
        F.binary_cross_entropy_with_logits,
        forward=forward,
        backprop=backprop,
        after=after,
    )
    ctx.check("median |logit| at the end over 20x its initial value", med[-1] > 20 * med0)
    ctx.check("still growing: last over 1.2x the one 50 steps before", med[-1] > 1.2 * med[-51])
    ctx.check("finite", _finite(losses))


# -- 11. control (alarming-looking): SWA at a high constant lr, then BN statistics recomputed ------


class _BNNet(nn.Module):
    def __init__(self, d_in, hidden, classes):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.fc1(x)))
        return self.head(F.relu(self.bn2(self.fc2(x))))


@scenario(
    family="cartwheel_landing_grade_bn_classifier",
    optimizer="SGD momentum",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Cartwheel landing-grade classifier (BatchNorm ReLU MLP on hand and foot placement, hip "
    "angle and rotation speed, 5 grades, noisy labels, SGD momentum 0.9 lr 0.05 with cosine "
    "decay). At step 150 stochastic weight averaging starts: SWALR anneals the lr up to a high "
    "constant 0.3, so the training loss jumps and stays noisy above its pre-SWA level (alarming "
    "on a dashboard); the averaged weights, with BatchNorm statistics recomputed by update_bn, "
    "evaluate at least as well as the pre-SWA model. Healthy.",
)
def h537_cartwheel_swa_high_lr(ctx):
    gen = seeded(53711)
    model = _BNNet(10, 64, 5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150, eta_min=0.005)
    swa_model = AveragedModel(model)
    swa_sched = SWALR(opt, swa_lr=0.3, anneal_epochs=5)
    batches = _grades(gen, 64, 10, 5, 537110, spread=1.2, flip=0.1)
    held = next(_grades(torch.Generator().manual_seed(11), 512, 10, 5, 537110, spread=1.2))
    state = {}

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            out = float(F.cross_entropy(m(held[0]), held[1]))
        model.train()
        return out

    ctx.attach(model, opt)
    losses = []
    for step in range(260):
        if step == 150:
            state["pre"] = evaluate(model)
        x, y = next(batches)
        ctx.targets(y)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        ctx.grad_norms.append(grad_norm(model))
        opt.step()
        if step < 150:
            cosine.step()
        else:
            swa_model.update_parameters(model)
            swa_sched.step()
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    bn_data = (next(batches)[0] for _ in range(20))
    update_bn(bn_data, swa_model)
    swa_loss = evaluate(swa_model)
    ctx.check("trained: loss fell and finite", _fell(losses[:150]))
    ctx.check("SWA model held-out loss at most the pre-SWA model's", swa_loss <= state["pre"])
    ctx.check(
        "training loss during SWA above its pre-SWA level (the alarming part)",
        _mean(losses[170:260]) > _mean(losses[130:150]),
    )


# -- 12. control: fp16 autocast + GradScaler, RMSprop, OneCycleLR ---------------------------------


@scenario(
    family="puili_rattle_strike_fp16_gelu_regressor",
    optimizer="RMSprop",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Puili (split-bamboo rattle) strike-loudness regressor (GELU MLP on strike angle, split "
    "length, bamboo age and dancer tempo, MSE, RMSprop with OneCycleLR to 3e-3) under fp16 "
    "autocast with a torch.amp.GradScaler, standardised inputs, noisy targets. Healthy.",
)
def h537_puili_fp16_onecycle(ctx):
    gen = seeded(53712)
    model = _Net(8, 64, 1, nn.GELU)
    opt = torch.optim.RMSprop(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=200)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    ctx.attach(model, opt, scaler=scaler)
    batches = _readings(gen, 64, 8, 537120, noise=0.15)
    losses = []
    for _ in range(200):
        x, y = next(batches)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = F.mse_loss(out.float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        ctx.grad_norms.append(grad_norm(model))
        scaler.step(opt)
        scaler.update()
        sched.step()
        ctx.scales.append(float(scaler.get_scale()))
        losses.append(float(loss.detach()))
        ctx.step(loss)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained: loss fell and finite", _fell(losses, ratio=0.5))
    ctx.check(
        "loss scale finite and at least 1", all(math.isfinite(s) and s >= 1 for s in ctx.scales)
    )


# -- 13. control: Adadelta, label smoothing, accumulation, clipping, ReduceLROnPlateau -------------


@scenario(
    family="fingerstyle_guitar_pattern_gelu_classifier",
    optimizer="Adadelta",
    cause="healthy",
    where=(),
    diverges=None,
    heldout=True,
    note="Fingerstyle guitar picking-pattern classifier (GELU MLP on thumb and finger onset "
    "features, 8 patterns, 10% mislabelled, cross-entropy with label smoothing 0.1, Adadelta "
    "lr 1.0, gradient accumulation over 2 micro-batches, clipping at 1, ReduceLROnPlateau on "
    "the loss). Healthy.",
)
def h537_fingerstyle_adadelta_accumulation(ctx):
    gen = seeded(53713)
    model = _Net(12, 64, 8, nn.GELU)
    opt = torch.optim.Adadelta(model.parameters(), lr=1.0)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    ctx.attach(model, opt)
    batches = _grades(gen, 32, 12, 8, 537130, spread=1.0, flip=0.1)
    losses = []
    for _ in range(180):
        total = 0.0
        for _micro in range(2):
            x, y = next(batches)
            ctx.targets(y)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            (loss / 2).backward()
            total = total + loss.detach() / 2
        ctx.grad_norms.append(grad_norm(model))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        plateau.step(float(total))
        losses.append(float(total))
        ctx.step(total)
        opt.zero_grad(set_to_none=True)
    ctx.check("trained: loss fell and finite", _fell(losses, ratio=0.6))
