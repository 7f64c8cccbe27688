"""Held-out set 404 (``h404_``): hand-written models of crafts, sports, instruments and natural
phenomena not covered before.

Faults: a Chladni-plate node-radius tanh regressor whose hand-written L2 penalty has its sign
flipped (a slow climb, RMSprop), a brinicle descent-rate tanh regressor whose LambdaLR warm-up
peak is typed 1.0 for 0.1 (past 2/sharpness, SGD), a serpent-horn breath-pressure SiLU regressor
whose resumed accumulation step backpropagates a summed, undivided loss (one gradient burst,
SGD Nesterov), a wheelwright tyre-shrink ReLU regressor on Adam at 3e-1 for 3e-4 (ReLUs die), an
Ondes-Martenot ring-modulator anomaly autoencoder fed one logger's shard in millivolts (one
corrupted batch, SGD momentum), a sastrugi snow-grain Gaussian-NLL net whose std is sqrt of a raw
variance head with no clamp (NaN, Adagrad), a nyckelharpa bow-noise classifier whose trunk group
lr is typed 1e-9 for 1e-3 (Adamax), a fulgurite fusion-depth 10-layer tanh MLP with xavier gain
typed 5.0 for 5/3 (gradients grow through depth, SGD momentum), a quoits hob-landing classifier
whose temperature is read from percent as 0.01 (softmax saturates, NAdam) and a gilding
burnisher-stroke classifier trained with nll_loss on raw logits (RAdam).

Controls: a morning-glory cloud pressure tied-decoder autoencoder (Adam with weight decay under
CosineAnnealingLR), a penitentes sublimation Conv1d classifier (SGD Nesterov under OneCycleLR,
label smoothing, clipping) and a wattle-hurdle spar-bend Huber regressor (fp16 autocast with a
GradScaler, AdamW with a no-decay group, accumulation, ReduceLROnPlateau).
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


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


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
    inspect=None,
    clip=None,
    sched=None,
    plateau=None,
    scaler=None,
    amp=False,
    accumulate=1,
):
    """The file's training loop. ``before(step)`` runs first, ``alter(step, x, y)`` changes a
    batch, ``backprop(step, loss)`` returns the loss actually backpropagated, ``inspect(step)``
    sees the gradients before clipping, ``after(step)`` runs after the optimizer step. Stops
    after a non-finite loss (once ``ctx.step`` has seen it)."""
    ctx.attach(model, opt, scaler=scaler)
    for step in range(steps):
        if before is not None:
            before(step)
        model.train()
        shown = 0.0
        for _ in range(accumulate):
            x, y = next(batches)
            if alter is not None:
                x, y = alter(step, x, y)
            if classifier:
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
        ctx.grad_norms.append(grad_norm(model))
        if inspect is not None:
            inspect(step)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
            ctx.scales.append(float(scaler.get_scale()))
        else:
            opt.step()
        if sched is not None:
            if plateau is not None:
                sched.step(plateau())
            else:
                sched.step()
        ctx.step(torch.tensor(shown))
        if after is not None:
            after(step)
        opt.zero_grad(set_to_none=True)
        if not math.isfinite(shown):
            return step + 1
    return steps


# -- data ------------------------------------------------------------------------------------------


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
    protos = 1.2 * torch.randn(classes, d_in, generator=g)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        yield protos[y] + spread * torch.randn(batch, d_in, generator=gen), y


def _windows(gen, batch, seed, length=24, channels=3, anomalous=0.0):
    """Sensor windows (flattened): per-channel hum at a fixed frequency, random phase and
    amplitude; ``anomalous`` of the rows carry a rattle (a burst at a foreign frequency)."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.2 + 0.5 * torch.rand(channels, 1, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        amp = 0.8 + 0.4 * torch.rand(batch, channels, 1, generator=gen)
        x = amp * torch.sin(freqs * t + phase) + 0.05 * torch.randn(
            batch, channels, length, generator=gen
        )
        bad = torch.rand(batch, generator=gen) < anomalous
        rattle = 0.8 * torch.sin(2.7 * t + phase) * (t > length // 2)
        x = torch.where(bad[:, None, None], x + rattle, x)
        yield x.flatten(1), bad


def _traces(gen, batch, classes, seed, length=40, channels=2):
    """Traces: each class a partial at its own frequency plus noise."""
    g = torch.Generator().manual_seed(seed)
    freqs = 0.15 + 0.7 * torch.rand(classes, channels, generator=g)
    t = torch.arange(length, dtype=torch.float32)
    while True:
        y = torch.randint(0, classes, (batch,), generator=gen)
        phase = 6.28 * torch.rand(batch, channels, 1, generator=gen)
        f = freqs[y][:, :, None] * (1 + 0.04 * torch.randn(batch, channels, 1, generator=gen))
        x = torch.sin(f * t + phase)
        yield x + 0.4 * torch.randn(batch, channels, length, generator=gen), y


class _MLP(nn.Module):
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


def _sharpness(model, loss_fn, x, y, iters=20) -> float:
    """Top Hessian eigenvalue of the loss on (x, y) by power iteration."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    v = [torch.randn_like(p) for p in params]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((u * u).sum() for u in v))
        v = [u / n for u in v]
        hv = torch.autograd.grad(grads, params, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
        v = [h.detach() for h in hv]
    return lam


# -- loss_divergence: an L2 penalty with its sign flipped --------------------------------------


@scenario(
    family="chladni_plate_node_radius_tanh_regressor",
    optimizer="RMSprop",
    cause="loss_divergence",
    where=(),
    diverges=None,
    heldout=True,
    note="Chladni-plate nodal-ring radius tanh regressor on RMSprop with a hand-written L2 "
    "penalty whose sign was flipped (loss - wd * sum(w ** 2) for loss + ...). The weights grow "
    "steadily, the tanh units saturate and the fit loss climbs slowly with no jump.",
)
def h404_chladni_node_l2_sign_flip(ctx) -> None:
    gen = seeded(4041)
    model = _MLP(10, 48, act=nn.Tanh)
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    batches = _readings(gen, 64, 10, 4041)
    w0 = _flat(model).norm()
    wd = 0.3

    def backprop(step, loss):
        penalty = sum((p**2).sum() for n, p in model.named_parameters() if "weight" in n)
        return loss - wd * penalty

    _loop(ctx, model, opt, batches, 300, F.mse_loss, backprop=backprop)
    ls = ctx.losses
    means = [_mean(ls[i : i + 20]) for i in range(0, len(ls) - 19)]
    ctx.check("finite throughout", _finite(ls))
    ctx.check("weights over 2x their start", float(_flat(model).norm()) > 2 * float(w0))
    ctx.check(
        "the last 20-step mean is over 3x the lowest 20-step mean", means[-1] > 3 * min(means)
    )
    ctx.check(
        "no step jumps over 3x the mean of the 10 before",
        all(ls[i] < 3 * _mean(ls[i - 10 : i]) for i in range(10, len(ls))),
    )


# -- sharpness_above_limit: warm-up target lr typed 1.0 for 0.1 --------------------------------


@scenario(
    family="brinicle_descent_rate_tanh_regressor",
    optimizer="SGD",
    cause="sharpness_above_limit",
    where=(),
    diverges="auto",
    heldout=True,
    note="Brinicle descent-rate tanh regressor on plain SGD with a linear warm-up (LambdaLR) to a "
    "peak typed 1.0 for 0.1. Part-way up the warm-up lr x sharpness (power iteration) passes 2 "
    "and the loss blows up; at the intended 0.1 it stays under 2.",
)
def h404_brinicle_descent_warmup_peak(ctx) -> None:
    gen = seeded(4042)
    model = _MLP(10, 48, act=nn.Tanh)
    peak = 1.0
    opt = torch.optim.SGD(model.parameters(), lr=peak)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 150))
    batches = _readings(gen, 64, 10, 4042)
    probe = next(_readings(torch.Generator().manual_seed(7), 256, 10, 4042))
    sharp = {}

    def before(step):
        if step % 10 == 0 and step <= 150:
            sharp[step] = (opt.param_groups[0]["lr"], _sharpness(model, F.mse_loss, *probe))

    _loop(ctx, model, opt, batches, 200, F.mse_loss, before=before, sched=sched)
    ls = ctx.losses
    blow = next((i for i in range(1, len(ls)) if not ls[i] < 100 * min(ls[:i])), len(ls))
    before_blow = {k: v for k, v in sharp.items() if k < blow}
    lr0, lam0 = sharp[0]
    ctx.check("lr x sharpness under 2 at step 0", lr0 * lam0 < 2)
    ctx.check(
        "lr x sharpness past 2 before the blow-up",
        any(lr * lam > 2 for lr, lam in before_blow.values()),
    )
    top = max(lam for _, lam in before_blow.values())
    ctx.check("the intended peak 0.1 x the largest sharpness stays under 2", 0.1 * top < 2)
    ctx.check("the loss blows up (over 100x its lowest) within the run", blow < len(ls))


# -- gradient_spike: accumulation resumed with reduction='sum' and no division -----------------


@scenario(
    family="serpent_horn_breath_pressure_silu_regressor",
    optimizer="SGD",
    cause="gradient_spike",
    where=(),
    diverges=None,
    heldout=True,
    onset=150,
    note="Serpent-horn breath-pressure SiLU regressor on SGD with Nesterov momentum and gradient "
    "accumulation over 4 micro-batches; the step resumed from a checkpoint at 150 goes through a "
    "second code path that backpropagates the micro-batch loss with reduction='sum' and no "
    "division by the accumulation count. One gradient burst on clean data (the logged loss is "
    "ordinary), clipped, and the run recovers.",
)
def h404_serpent_horn_accum_resume_sum(ctx) -> None:
    gen = seeded(4043)
    model = _MLP(12, 48, act=nn.SiLU)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, nesterov=True)
    batches = _readings(gen, 32, 12, 4043)
    onset = 150
    state = {"step": 0}

    def before(step):
        state["step"] = step

    def backprop(step, loss):
        if step == onset:
            return loss * 32 * 4  # sum over the micro-batch, and undoes the / accumulate
        return loss

    _loop(
        ctx,
        model,
        opt,
        batches,
        260,
        F.mse_loss,
        before=before,
        backprop=backprop,
        clip=5.0,
        accumulate=4,
    )
    g = ctx.grad_norms
    ls = ctx.losses
    pre = _median(g[onset - 50 : onset])
    ctx.check(
        "gradient over 50x the median of the 50 steps before at the onset", g[onset] > 50 * pre
    )
    ctx.check(
        "the logged loss at the onset is ordinary (under 2x the median before)",
        ls[onset] < 2 * _median(ls[onset - 50 : onset]),
    )
    ctx.check(
        "gradients back under 3x the median 20 steps later",
        _median(g[onset + 20 : onset + 40]) < 3 * pre,
    )
    ctx.check(
        "the run recovers: last 30 steps under 1.5x the 30 before the onset",
        _mean(ls[-30:]) < 1.5 * _mean(ls[onset - 30 : onset]),
    )
    ctx.check("finite throughout", _finite(ls))


# -- loss_of_plasticity: Adam lr typed 3e-1 for 3e-4 kills the ReLUs ----------------------------


def _dead(model, x) -> tuple[float, float]:
    with torch.no_grad():
        h1 = model.act1(model.fc1(x))
        h2 = model.act2(model.fc2(h1))
    return float((h1 <= 0).all(0).float().mean()), float((h2 <= 0).all(0).float().mean())


@scenario(
    family="wheelwright_tyre_shrink_gap_relu_regressor",
    optimizer="Adam",
    cause="loss_of_plasticity",
    where=("act2", "fc2"),
    diverges=None,
    heldout=True,
    note="Wheelwright hot-tyre shrink-gap ReLU regressor on Adam with lr typed 3e-1 for 3e-4. "
    "The first large updates push most of the ReLU units to never fire on the data; the dead "
    "units get no gradient and stay dead, and the loss stalls well above a healthy fit.",
)
def h404_wheelwright_tyre_adam_lr_typo(ctx) -> None:
    gen = seeded(4044)
    model = _MLP(10, 48)
    opt = torch.optim.Adam(model.parameters(), lr=3e-1)
    batches = _readings(gen, 64, 10, 4044)
    probe = next(_readings(torch.Generator().manual_seed(9), 512, 10, 4044))[0]
    dead = []

    def after(step):
        dead.append(_dead(model, probe))

    _loop(ctx, model, opt, batches, 200, F.mse_loss, after=after)
    # the intended run, off the monitor: same seed and data, lr 3e-4
    gen_ref = torch.Generator().manual_seed(4044)
    torch.manual_seed(4044)
    ref = _MLP(10, 48)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=3e-4)
    ref_batches = _readings(gen_ref, 64, 10, 4044)
    ref_losses = []
    for _ in range(200):
        x, y = next(ref_batches)
        loss = F.mse_loss(ref(x), y)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_losses.append(float(loss.detach()))
    d_ref = _dead(ref, probe)
    last = dead[-50:]
    ctx.check("over 60% of act2's units dead over the last 50 steps", min(d[1] for d in last) > 0.6)
    ctx.check("under 20% dead at the intended 3e-4", d_ref[1] < 0.2 and d_ref[0] < 0.2)
    ctx.check(
        "dead fraction at step 5 under the final one (the units died in the run)",
        dead[5][1] < dead[-1][1] or dead[0][1] < dead[-1][1],
    )
    ctx.check(
        "the loss stalls over 2x the intended run's",
        _mean(ctx.losses[-30:]) > 2 * _mean(ref_losses[-30:]),
    )


# -- data_outlier: a sensor-window autoencoder fed one logger's shard in millivolts ------------


class _WindowAE(nn.Module):
    """Encoder, bottleneck, decoder for flattened sensor windows; the reconstruction error is
    the anomaly score."""

    def __init__(self, d=72, hidden=48, code=8):
        super().__init__()
        self.enc1 = nn.Linear(d, hidden)
        self.enc_act = nn.ReLU()
        self.bottleneck = nn.Linear(hidden, code)
        self.dec1 = nn.Linear(code, hidden)
        self.dec_act = nn.ReLU()
        self.dec2 = nn.Linear(hidden, d)

    def forward(self, x):
        return self.dec2(self.dec_act(self.dec1(self.bottleneck(self.enc_act(self.enc1(x))))))


def _score(model, x) -> torch.Tensor:
    with torch.no_grad():
        return ((model(x) - x) ** 2).mean(1)


@scenario(
    family="ondes_martenot_ring_window_anomaly_autoencoder",
    optimizer="SGD",
    cause="data_outlier",
    where=(),
    diverges=None,
    heldout=True,
    onset=120,
    note="Ondes-Martenot ring-modulator anomaly autoencoder (encoder, 8-unit bottleneck, decoder, "
    "MSE reconstruction) on generated hum windows, SGD with momentum and clipping. At step 120 "
    "one logger's shard arrives in millivolts (x1000, its unit conversion skipped): one "
    "corrupted batch, the loss and gradient jump, clipping holds and the run recovers.",
)
def h404_ondes_ring_ae_millivolt_shard(ctx) -> None:
    gen = seeded(4045)
    model = _WindowAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    stream = _windows(gen, 64, 4045)
    batches = ((x, x) for x, _ in stream)
    onset = 120

    def alter(step, x, y):
        if step == onset:
            return x * 1000.0, y * 1000.0
        return x, y

    _loop(ctx, model, opt, batches, 240, F.mse_loss, alter=alter, clip=1.0)
    ls, g = ctx.losses, ctx.grad_norms
    ctx.check(
        "loss at the onset over 100x the median before",
        ls[onset] > 100 * _median(ls[onset - 40 : onset]),
    )
    ctx.check(
        "gradient at the onset over 20x the median before",
        g[onset] > 20 * _median(g[onset - 40 : onset]),
    )
    ctx.check(
        "the run recovers: last 30 steps under 1.5x the 30 before",
        _mean(ls[-30:]) < 1.5 * _mean(ls[onset - 30 : onset]),
    )
    ctx.check(
        "the loss fell before the onset", _mean(ls[onset - 20 : onset]) < 0.5 * _mean(ls[:10])
    )
    test, bad = next(_windows(torch.Generator().manual_seed(11), 256, 4045, anomalous=0.3))
    s = _score(model, test)
    ctx.check(
        "anomalous windows score higher than normal ones",
        float(s[bad].mean()) > 2 * float(s[~bad].mean()),
    )


# -- nonfinite: std = sqrt(raw) with the clamp missing --------------------------------------------


class _SqrtVar(nn.Module):
    """The predictive std: sqrt of the raw variance head. The clamp (raw.clamp_min(1e-4)) was lost
    when the head moved into its own module."""

    def forward(self, raw):
        return torch.sqrt(raw)


class _GrainNet(nn.Module):
    def __init__(self, d_in=8, hidden=32):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.Tanh()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.Tanh()
        self.mean_head = nn.Linear(hidden, 1)
        self.var_head = nn.Linear(hidden, 1)
        self.sqrt_var = _SqrtVar()
        nn.init.constant_(self.var_head.bias, 1.0)

    def forward(self, x):
        h = self.act2(self.fc2(self.act1(self.fc1(x))))
        return torch.cat([self.mean_head(h), self.sqrt_var(self.var_head(h))], -1)


def _gauss_nll(out, y):
    mu, std = out[:, 0], out[:, 1]
    return (torch.log(std) + 0.5 * ((y - mu) / std) ** 2).mean()


@scenario(
    family="sastrugi_snow_grain_sqrt_variance_nll_net",
    optimizer="Adagrad",
    cause="nonfinite",
    where=("sqrt_var",),
    diverges=77,
    heldout=True,
    note="Sastrugi snow-grain size Gaussian-NLL net on Adagrad; the std is sqrt of a raw linear "
    "variance head after its clamp was lost. As the NLL drives the variance towards the small "
    "residuals, a row's raw variance crosses zero, sqrt of a negative is NaN and the loss is NaN.",
)
def h404_sastrugi_grain_sqrt_negative(ctx) -> None:
    gen = seeded(4046)
    model = _GrainNet()
    opt = torch.optim.Adagrad(model.parameters(), lr=5e-3)
    batches = _readings(gen, 64, 8, 4046, noise=0.05)
    neg = {}

    def alter(step, x, y):
        with torch.no_grad():
            h = model.act2(model.fc2(model.act1(model.fc1(x))))
            if bool((model.var_head(h) < 0).any()) and "step" not in neg:
                neg["step"] = step
        return x, y

    ran = _loop(ctx, model, opt, batches, 250, _gauss_nll, alter=alter)
    bad = _first_bad(ctx.losses)
    ctx.check("the loss is non-finite within the run", bad is not None and ran == bad + 1)
    ctx.check("a raw variance is negative in the batch of the first NaN", neg.get("step") == bad)
    ctx.check("the losses before it are finite", bad is not None and _finite(ctx.losses[:bad]))
    ctx.check("the loss is first non-finite at step 77", bad == 77)


# -- update_ratio_out_of_range: the trunk group's lr typed 1e-9 for 1e-3 ------------------------


@scenario(
    family="nyckelharpa_bow_noise_two_group_classifier",
    optimizer="Adamax",
    cause="update_ratio_out_of_range",
    where=("fc1", "fc2"),
    diverges=None,
    heldout=True,
    note="Nyckelharpa bow-noise ReLU classifier on Adamax with two param groups (trunk, head); "
    "the trunk group's lr is typed 1e-9 for 1e-3. The trunk receives gradients but its weights "
    "barely move (updates under 1e-5 of their norm); the head alone learns, and the loss "
    "falls only as far as a linear probe on random features.",
)
def h404_nyckelharpa_bow_trunk_lr_typo(ctx) -> None:
    gen = seeded(4047)
    model = _MLP(16, 48, out=6)
    trunk = [*model.fc1.parameters(), *model.fc2.parameters()]
    opt = torch.optim.Adamax(
        [{"params": trunk, "lr": 1e-9}, {"params": model.head.parameters(), "lr": 2e-3}]
    )
    batches = _grades(gen, 64, 16, 6, 4047, spread=1.2)
    w1, w2, wh = (m.weight.detach().clone() for m in (model.fc1, model.fc2, model.head))
    gnorms = []

    def inspect(step):
        gnorms.append(float(model.fc1.weight.grad.norm()))

    _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, inspect=inspect)
    ctx.check("fc1 moved under 1e-5 of its norm", _rel_change(w1, model.fc1.weight) < 1e-5)
    ctx.check("fc2 moved under 1e-5 of its norm", _rel_change(w2, model.fc2.weight) < 1e-5)
    ctx.check("fc1 received gradients throughout", min(gnorms) > 1e-4)
    ctx.check("the head moved over 5%", _rel_change(wh, model.head.weight) > 0.05)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- exploding_gradients: xavier gain typed 5.0 for 5/3 in a deep tanh MLP -----------------------


class _DeepTanh(nn.Module):
    def __init__(self, d_in=10, width=32, depth=10, gain=5 / 3):
        super().__init__()
        sizes = [d_in] + [width] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(width, 1)
        for m in self.layers:
            nn.init.xavier_normal_(m.weight, gain=gain)
            nn.init.zeros_(m.bias)
        self.outs = []

    def forward(self, x):
        self.outs = []
        for m in self.layers:
            x = m(x)
            if x.requires_grad:
                x.retain_grad()
            self.outs.append(x)
            x = torch.tanh(x)
        return self.head(x).squeeze(-1)


def _depth_ratio(model) -> float:
    return float(model.outs[0].grad.norm() / model.outs[-1].grad.norm().clamp_min(1e-12))


@scenario(
    family="fulgurite_fusion_depth_deep_tanh_mlp",
    optimizer="SGD",
    cause="exploding_gradients",
    where=("layers.0",),
    diverges=None,
    heldout=True,
    note="Fulgurite fusion-depth 10-layer tanh MLP on SGD with momentum and clipping; the init "
    "helper's xavier gain is typed 5.0 for 5/3 (tanh's gain). The backward pass multiplies up "
    "through depth: dL/d(layers.0 output) is over 20x dL/d(layers.9 output), where the intended "
    "gain keeps the ratio under 5x.",
)
def h404_fulgurite_deep_tanh_gain_typo(ctx) -> None:
    gen = seeded(4048)
    model = _DeepTanh(gain=5.0)
    opt = torch.optim.SGD(model.parameters(), lr=5e-3, momentum=0.9)
    batches = _readings(gen, 64, 10, 4048)
    ratios = []

    def inspect(step):
        ratios.append(_depth_ratio(model))

    _loop(ctx, model, opt, batches, 150, F.mse_loss, inspect=inspect, clip=1.0)
    torch.manual_seed(4048)
    ref = _DeepTanh(gain=5 / 3)
    x, y = next(_readings(torch.Generator().manual_seed(3), 64, 10, 4048))
    F.mse_loss(ref(x), y).backward()
    ctx.check("depth gradient ratio over 20x at the start", ratios[0] > 20)
    ctx.check("median depth ratio over 10x through the run", _median(ratios) > 10)
    ctx.check("under 5x at the intended gain 5/3", _depth_ratio(ref) < 5)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- softmax_collapse: temperature read from percent --------------------------------------------


class _Temperature(nn.Module):
    def __init__(self, t):
        super().__init__()
        self.t = t

    def forward(self, z):
        return z / self.t


class _TempClassifier(nn.Module):
    def __init__(self, d_in, hidden, classes, t):
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.act1 = nn.GELU()
        self.fc2 = nn.Linear(hidden, hidden)
        self.act2 = nn.GELU()
        self.head = nn.Linear(hidden, classes)
        self.temperature = _Temperature(t)

    def logits(self, x):
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))

    def forward(self, x):
        return self.temperature(self.logits(x))


@scenario(
    family="quoits_hob_landing_temperature_classifier",
    optimizer="NAdam",
    cause="softmax_collapse",
    where=("head", "temperature"),
    diverges=None,
    heldout=True,
    note="Quoits hob-landing GELU classifier with a softmax temperature; the config stores the "
    "temperature in percent (100) and the loader divides by 10000, so the logits are divided by "
    "0.01 instead of 1.0. The softmax saturates: most rows' target probability rounds to exactly "
    "1.0 in float32, where at temperature 1.0 none do.",
)
def h404_quoits_hob_temperature_percent(ctx) -> None:
    gen = seeded(4049)
    model = _TempClassifier(12, 48, 5, t=100 / 10000)
    opt = torch.optim.NAdam(model.parameters(), lr=2e-3)
    batches = _grades(gen, 64, 12, 5, 4049, spread=0.8)
    fracs, plain = [], []

    def alter(step, x, y):
        with torch.no_grad():
            z = model.logits(x)
            fracs.append(collapsed_fraction(model.temperature(z), y))
            plain.append(collapsed_fraction(z, y))
        return x, y

    _loop(ctx, model, opt, batches, 150, F.cross_entropy, classifier=True, alter=alter)
    ctx.check("over half the rows collapsed over the last 30 steps", _mean(fracs[-30:]) > 0.5)
    ctx.check("under 5% at temperature 1.0 on the same logits", _mean(plain[-30:]) < 0.05)
    ctx.check("none collapsed at the start", fracs[0] < 0.05)


# -- output_logit_divergence: nll_loss on the raw head ------------------------------------------


@scenario(
    family="gilding_burnisher_stroke_gelu_classifier",
    optimizer="RAdam",
    cause="output_logit_divergence",
    where=("head",),
    diverges=None,
    heldout=True,
    note="Gilding burnisher-stroke GELU classifier on RAdam; the LogSoftmax moved into the export "
    "wrapper and training calls F.nll_loss on the raw head. Nothing bounds -logit[y]: the "
    "target logits grow without bound and the 'loss' falls far below zero.",
)
def h404_gilding_burnisher_nll_raw_logits(ctx) -> None:
    gen = seeded(40410)
    model = _MLP(14, 48, out=7, act=nn.GELU)
    opt = torch.optim.RAdam(model.parameters(), lr=3e-3)
    batches = _grades(gen, 64, 14, 7, 40410)
    tops = []

    def alter(step, x, y):
        with torch.no_grad():
            tops.append(float(model(x).abs().max()))
        return x, y

    _loop(ctx, model, opt, batches, 200, F.nll_loss, classifier=True, alter=alter)
    ctx.check("the largest |logit| over 20x its start", tops[-1] > 20 * tops[0])
    ctx.check("still growing over the last 50 steps", tops[-1] > 1.2 * tops[-50])
    ctx.check("the 'loss' below -10", ctx.losses[-1] < -10)


# -- healthy: a tied-decoder autoencoder, Adam with weight decay, cosine schedule ----------------


class _TiedAE(nn.Module):
    def __init__(self, d=72, hidden=32, code=8):
        super().__init__()
        self.enc1 = nn.Linear(d, hidden)
        self.enc_act = nn.Tanh()
        self.bottleneck = nn.Linear(hidden, code)
        self.dec_act = nn.Tanh()
        self.dec_b1 = nn.Parameter(torch.zeros(hidden))
        self.dec_b2 = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        z = self.bottleneck(self.enc_act(self.enc1(x)))
        h = self.dec_act(F.linear(z, self.bottleneck.weight.t(), self.dec_b1))
        return F.linear(h, self.enc1.weight.t(), self.dec_b2)


@scenario(
    family="morning_glory_cloud_pressure_tied_autoencoder",
    optimizer="Adam",
    cause="healthy",
    heldout=True,
    note="Morning-glory cloud surface-pressure window autoencoder with a tied decoder (the "
    "decoder uses the encoder's transposed weights), Adam with weight decay 1e-4 under "
    "CosineAnnealingLR, clipping. Control.",
)
def h404_morning_glory_tied_ae_cosine(ctx) -> None:
    gen = seeded(40411)
    model = _TiedAE()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = 250
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=1e-4)
    batches = ((x, x) for x, _ in _windows(gen, 64, 40411))
    _loop(ctx, model, opt, batches, steps, F.mse_loss, sched=sched, clip=1.0)
    ctx.check("the reconstruction loss fell under half its start", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))


# -- healthy: a Conv1d classifier under OneCycleLR with label smoothing ------------------------


class _ConvNet(nn.Module):
    def __init__(self, channels=2, classes=5, width=16):
        super().__init__()
        self.conv1 = nn.Conv1d(channels, width, 5, padding=2)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv1d(width, width, 5, padding=2)
        self.act2 = nn.ReLU()
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.head(h.mean(-1))


@scenario(
    family="penitentes_sublimation_conv1d_classifier",
    optimizer="SGD",
    cause="healthy",
    heldout=True,
    note="Penitentes sublimation-regime Conv1d classifier on radiometer traces, SGD with Nesterov "
    "momentum and weight decay under OneCycleLR, label smoothing 0.1, clipping. Control.",
)
def h404_penitentes_conv1d_onecycle(ctx) -> None:
    gen = seeded(40412)
    model = _ConvNet()
    opt = torch.optim.SGD(
        model.parameters(), lr=0.02, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    steps = 200
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    batches = _traces(gen, 64, 5, 40412)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=0.1)

    _loop(ctx, model, opt, batches, steps, loss_fn, classifier=True, sched=sched, clip=1.0)
    x, y = next(_traces(torch.Generator().manual_seed(5), 512, 5, 40412))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.6))
    ctx.check("held-out accuracy over 0.8", acc > 0.8)
    ctx.check("finite throughout", _finite(ctx.losses))


# -- healthy: fp16 autocast with a GradScaler, AdamW, accumulation, ReduceLROnPlateau ------------


@scenario(
    family="wattle_hurdle_spar_bend_fp16_huber_regressor",
    optimizer="AdamW",
    cause="healthy",
    heldout=True,
    note="Wattle-hurdle spar-bend SiLU Huber regressor under fp16 autocast with a GradScaler, "
    "AdamW with a no-decay bias group, accumulation over 2, ReduceLROnPlateau on a held-out "
    "batch, clipping. Control.",
)
def h404_wattle_spar_fp16_plateau(ctx) -> None:
    gen = seeded(40413)
    model = _MLP(10, 64, act=nn.SiLU)
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-2}, {"params": no_decay, "weight_decay": 0.0}],
        lr=2e-3,
    )
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=10)
    scaler = torch.amp.GradScaler("cpu")
    batches = _readings(gen, 32, 10, 40413)
    held = next(_readings(torch.Generator().manual_seed(2), 256, 10, 40413))

    def plateau():
        with torch.no_grad():
            return float(F.huber_loss(model(held[0]), held[1]))

    _loop(
        ctx,
        model,
        opt,
        batches,
        200,
        F.huber_loss,
        sched=sched,
        plateau=plateau,
        scaler=scaler,
        amp=True,
        accumulate=2,
        clip=1.0,
    )
    drops = sum(1 for a, b in zip(ctx.scales, ctx.scales[1:], strict=False) if b < a)
    ctx.check("the loss fell", _fell(ctx.losses, ratio=0.5))
    ctx.check("finite throughout", _finite(ctx.losses))
    ctx.check("the scaler backed off at most 3 times", drops <= 3)
